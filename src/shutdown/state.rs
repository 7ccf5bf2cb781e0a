//! State shared by the coordinator and every drain layer built from it.

use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::task::Waker;
use std::time::Duration;

use http::{HeaderValue, header};
use metrics::{Counter, Gauge};
use tokio::sync::Notify;

use super::Phase;
use super::abort::{AbortSignal, NO_KEY, NO_WAKER, WakerId, identity};
use crate::util::lanes::{Lane, Laned};
use crate::util::sampled::{Sampled, Sampler};
use crate::{Rejection, RejectionKind};

/// One cache-line-padded slot of the in-flight count.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Slot(AtomicUsize);

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) name: Arc<str>,
    phase: AtomicU8,
    /// Requests in flight, counted on per-thread slots (`util::lanes`
    /// numbers): a request adds to its thread's slot and takes away from
    /// the same slot when it ends, so concurrent requests on different
    /// threads write different cache lines. The count is the sum, read in
    /// slot order. The last slot counts the requests admitted once
    /// draining has started (owed an answer): the sum is not a snapshot,
    /// and such a request, added to a slot already read while another
    /// ended on a slot not read yet, would be missed; on the last slot it
    /// is read after every other.
    in_flight: Box<[Slot]>,
    /// Listeners and connections held open by `serve` loops: the drain
    /// waits for them too, so a connection taken from the listen backlog
    /// after the delay is answered before the hooks run.
    serving: AtomicUsize,
    /// Requests that completed while draining (or later).
    pub(crate) completed: AtomicU64,
    /// Requests cut off by the abort signal.
    pub(crate) aborted: AtomicU64,
    /// Notified when the in-flight count drops to zero while draining.
    pub(crate) idle: Notify,
    pub(crate) abort: AbortSignal,
    retry_after: Duration,
    /// `rampart_in_flight_requests`, set from [`State::in_flight`] by the
    /// sampler's task (`util::sampled`), not on every request.
    in_flight_gauge: Gauge,
    sampler: Sampler,
    refused: Counter,
    aborted_counter: Counter,
}

impl State {
    pub(crate) fn new(name: Arc<str>, retry_after: Duration) -> Self {
        crate::metrics_help::describe(super::METRICS);
        let label = name.to_string();
        Self {
            in_flight_gauge: metrics::gauge!("rampart_in_flight_requests", "name" => label.clone()),
            refused: metrics::counter!(
                "rampart_requests_refused_total",
                "name" => label.clone(),
                "kind" => RejectionKind::Draining.as_str()
            ),
            aborted_counter: metrics::counter!("rampart_drain_aborted_total", "name" => label),
            name,
            phase: AtomicU8::new(Phase::Running as u8),
            in_flight: (0..=crate::util::lanes::count())
                .map(|_| Slot::default())
                .collect(),
            serving: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            idle: Notify::new(),
            abort: AbortSignal::default(),
            retry_after,
            sampler: Sampler::default(),
        }
    }

    #[inline]
    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// Requests in flight: the sum of the slots.
    #[inline]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight
            .iter()
            .map(|s| s.0.load(Ordering::SeqCst))
            .sum()
    }

    /// This thread's slot of the in-flight count, or the last slot for a
    /// request admitted while draining.
    #[inline]
    fn slot(&self, draining: bool) -> usize {
        let late = self.in_flight.len() - 1;
        if draining {
            return late;
        }
        // The other slots' count is a power of two.
        crate::util::lanes::index() & (late - 1)
    }

    /// Requests in flight plus the listeners and connections held by
    /// `serve` loops: the drain is over when this reaches 0.
    #[inline]
    pub(crate) fn is_idle(&self) -> bool {
        self.in_flight() == 0 && self.serving.load(Ordering::SeqCst) == 0
    }

    /// A `serve` loop holds a listener or a connection open.
    #[cfg_attr(not(feature = "serve"), allow(dead_code))]
    pub(crate) fn hold(&self) {
        self.serving.fetch_add(1, Ordering::SeqCst);
    }

    /// A listener or connection held by a `serve` loop is closed.
    #[cfg_attr(not(feature = "serve"), allow(dead_code))]
    pub(crate) fn unhold(&self) {
        if self.serving.fetch_sub(1, Ordering::SeqCst) == 1 && self.phase() >= Phase::Draining {
            self.idle.notify_one();
        }
    }
}

impl Laned<State> {
    /// Admits a request unless the server is draining and `accepted` says
    /// the connection it came on may not be served any more (`serve` marks
    /// requests on connections it still owes an answer). The guard keeps
    /// the state alive through this thread's lane.
    #[inline]
    pub(crate) fn admit_unless_draining(&self, accepted: impl Fn() -> bool) -> Option<Guard> {
        let draining = self.phase() >= Phase::Draining;
        if draining && !accepted() {
            self.refused.increment(1);
            return None;
        }
        let slot = self.slot(draining);
        self.in_flight[slot].0.fetch_add(1, Ordering::SeqCst);
        // The coordinator stores the phase, then reads the count (every
        // slot); we add to a slot, then read the phase: one of us sees the
        // other.
        if self.phase() >= Phase::Draining && !accepted() {
            self.release(slot);
            self.refused.increment(1);
            return None;
        }
        Sampler::changed(&**self, || self.downgrade());
        Some(Guard {
            state: self.lane(),
            // Slots are one per thread lane and one more: few.
            slot: slot as u32,
            key: NO_KEY,
            registered: NO_WAKER,
            aborted: false,
        })
    }
}

impl Sampled for State {
    fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    fn publish(&self) {
        self.in_flight_gauge.set(self.in_flight() as f64);
    }
}

impl State {
    /// Ends a request counted on `slot`. When that slot empties while
    /// draining, the sum is read: of two requests ending at once on two
    /// slots, the one whose read comes last sees both subtractions (every
    /// access here is `SeqCst`), so the drain is woken.
    #[inline]
    fn release(&self, slot: usize) {
        if self.in_flight[slot].0.fetch_sub(1, Ordering::SeqCst) == 1
            && self.phase() >= Phase::Draining
            && self.serving.load(Ordering::SeqCst) == 0
            && self.in_flight() == 0
        {
            self.idle.notify_one();
        }
    }

    /// The answer to a request that arrives while draining.
    #[cold]
    pub(crate) fn draining_rejection(&self, http1: bool) -> Rejection {
        let r = Rejection::new(RejectionKind::Draining, Arc::clone(&self.name))
            .with_retry_after(self.retry_after)
            .with_detail("the server is shutting down");
        close_if(r, http1)
    }

    /// The answer of a request cut off at the drain deadline.
    #[cold]
    pub(crate) fn aborted_rejection(&self, http1: bool) -> Rejection {
        let r = Rejection::new(RejectionKind::Draining, Arc::clone(&self.name))
            .with_retry_after(self.retry_after)
            .with_detail("aborted at the drain deadline");
        close_if(r, http1)
    }
}

fn close_if(r: Rejection, http1: bool) -> Rejection {
    if http1 {
        r.with_header(header::CONNECTION, HeaderValue::from_static("close"))
    } else {
        r
    }
}

/// One admitted request: counted in flight until dropped.
#[derive(Debug)]
pub struct Guard {
    state: Arc<Lane<State>>,
    /// The in-flight slot the request was counted on (a `u32`, so that the
    /// guard, in every admitted request's future, takes 40 bytes, not 48):
    /// the thread's lane number, which also picks the abort signal's lane
    /// for a pending request (no second thread-local read).
    slot: u32,
    key: usize,
    /// The identity of the waker slot `key` holds, so that polls by the
    /// same task skip the abort signal's lock without the guard holding a
    /// second clone of the waker (a clone and a drop, two atomic
    /// read-modify-writes on the task, saved on every request whose inner
    /// future is pending: the drain row pending once, `benches/README.md`).
    /// The slot's waker keeps its addresses in use until the signal fires,
    /// and `fire` sets its flag first: a waker of the same identity seen
    /// later wakes the same task, or the flag is read as set.
    registered: WakerId,
    aborted: bool,
}

impl Guard {
    #[inline]
    pub(crate) fn state(&self) -> &State {
        &self.state
    }

    /// Has the abort signal fired? Marks the request aborted if so.
    #[inline]
    pub(crate) fn check_aborted(&mut self) -> bool {
        if self.state.abort.is_fired() {
            self.aborted = true;
        }
        self.aborted
    }

    /// Registers the task's waker with the abort signal; true if it fired
    /// (the request is then marked aborted).
    pub(crate) fn register(&mut self, waker: &Waker) -> bool {
        let fired = if self.registered == identity(waker) {
            // Already registered by this task: `fire` sets the flag before it
            // wakes the registered wakers, so reading the flag is enough.
            self.state.abort.is_fired()
        } else {
            self.state.abort.register(
                &mut self.key,
                self.slot as usize,
                &mut self.registered,
                waker,
            )
        };
        if fired {
            self.aborted = true;
        }
        self.aborted
    }
}

impl Drop for Guard {
    #[inline]
    fn drop(&mut self) {
        let state = &self.state;
        state.abort.unregister(self.key);
        if self.aborted {
            state.aborted.fetch_add(1, Ordering::Relaxed);
            state.aborted_counter.increment(1);
        } else if state.phase() >= Phase::Draining {
            state.completed.fetch_add(1, Ordering::Relaxed);
        }
        state.release(self.slot as usize);
        Sampler::changed(&***state, || state.downgrade());
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll};

    use super::*;

    /// Requests counted on two threads' slots and ended on two threads at
    /// once while draining: the count is their sum, and the drain is woken
    /// (a permit is stored for its wait) once both are gone.
    #[test]
    fn requests_on_two_slots_wake_the_drain() {
        for _ in 0..200 {
            let state = Arc::new(Laned::new(State::new(
                "test".into(),
                Duration::from_secs(1),
            )));
            let admit = || {
                let state = Arc::clone(&state);
                std::thread::spawn(move || state.admit_unless_draining(|| false).unwrap())
                    .join()
                    .unwrap()
            };
            let (a, b) = (admit(), admit());
            assert_eq!(state.in_flight(), 2);
            state.set_phase(Phase::Draining);
            // Refused now: the count is unchanged.
            assert!(state.admit_unless_draining(|| false).is_none());
            assert_eq!(state.in_flight(), 2);
            // Owed an answer: admitted, on the slot read last, and counted
            // until it ends.
            let owed = state.admit_unless_draining(|| true).unwrap();
            assert_eq!(owed.slot as usize, state.in_flight.len() - 1);
            assert_eq!(state.in_flight(), 3);
            drop(owed);
            assert_eq!(state.in_flight(), 2);
            let barrier = Arc::new(std::sync::Barrier::new(2));
            let ends: Vec<_> = [a, b]
                .into_iter()
                .map(|guard| {
                    let barrier = Arc::clone(&barrier);
                    std::thread::spawn(move || {
                        barrier.wait();
                        drop(guard);
                    })
                })
                .collect();
            for end in ends {
                end.join().unwrap();
            }
            assert_eq!(state.in_flight(), 0);
            assert!(state.is_idle());
            let notified = state.idle.notified();
            let mut notified = std::pin::pin!(notified);
            let mut cx = Context::from_waker(Waker::noop());
            assert_eq!(notified.as_mut().poll(&mut cx), Poll::Ready(()));
        }
    }

    /// A guard polled by one task, then by another (a future moved between
    /// tasks), then again by the second: the abort wakes the task that
    /// polled last, and polls by the same task take no second slot.
    #[test]
    fn the_abort_wakes_the_task_that_polled_last() {
        use std::sync::atomic::AtomicUsize;
        use std::task::Wake;

        struct Count(AtomicUsize);
        impl Wake for Count {
            fn wake(self: Arc<Self>) {
                self.0.fetch_add(1, Ordering::SeqCst);
            }
        }
        let state = Arc::new(Laned::new(State::new(
            "test".into(),
            Duration::from_secs(1),
        )));
        let mut guard = state.admit_unless_draining(|| false).unwrap();
        let (first, second) = (
            Arc::new(Count(AtomicUsize::new(0))),
            Arc::new(Count(AtomicUsize::new(0))),
        );
        let (w1, w2) = (Waker::from(first.clone()), Waker::from(second.clone()));
        assert!(!guard.register(&w1));
        assert!(!guard.register(&w1));
        assert_eq!(state.abort.registered(), 1);
        assert!(!guard.register(&w2));
        assert!(!guard.register(&w2));
        // A clone of the second task's waker is the same task's.
        assert!(!guard.register(&w2.clone()));
        assert_eq!(state.abort.registered(), 1, "one slot per request");
        state.abort.fire();
        assert_eq!(first.0.load(Ordering::SeqCst), 0);
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        // Polled again after the abort, by either task: it is aborted.
        assert!(guard.register(&w2));
        assert!(guard.register(&w1));
        drop(guard);
        assert_eq!(state.abort.registered(), 0);
        assert_eq!(state.aborted.load(Ordering::Relaxed), 1);
    }
}
