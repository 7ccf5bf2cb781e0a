//! State shared by the coordinator and every drain layer built from it.

use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering, fence};
use std::sync::{Arc, OnceLock, Weak};
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

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) name: Arc<str>,
    phase: AtomicU8,
    /// The lanes of the [`Laned`] that holds this state (set once, by
    /// [`State::laned`]). Requests in flight are counted by them: an
    /// admitted request's [`Guard`] holds a clone of its thread's lane,
    /// so the count is each lane's reference count less the `Laned`'s
    /// own, summed in lane order (two atomic read-modify-writes per
    /// request, the clone and its drop, where a count of its own beside
    /// the clone took four), and concurrent requests on different threads
    /// write different cache lines. The last lane, which no thread picks,
    /// counts the requests admitted once draining has started (owed an
    /// answer): the sum is not a snapshot, and such a request, counted on
    /// a lane already read while another ended on a lane not read yet,
    /// would be missed; on the last lane it is read after every other.
    lanes: OnceLock<Box<[Weak<Lane<State>>]>>,
    /// Listeners and connections held open by `serve` loops: the drain
    /// waits for them too, so a connection taken from the listen backlog
    /// after the delay is answered before the hooks run.
    serving: AtomicUsize,
    /// Requests that completed while draining (or later).
    pub(crate) completed: AtomicU64,
    /// Requests cut off by the abort signal.
    pub(crate) aborted: AtomicU64,
    /// Notified when a request ends while draining (its count given
    /// back first), and when the last listener or connection held by a
    /// `serve` loop closes: the drain then reads whether it is idle.
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
    /// The state, held by per-thread lanes that count its requests in
    /// flight.
    pub(crate) fn laned(name: Arc<str>, retry_after: Duration) -> Laned<Self> {
        let laned = Laned::with_spare(Self::new(name, retry_after));
        let lanes = laned.weak_lanes();
        laned.lanes.set(lanes).expect("set once, here");
        laned
    }

    fn new(name: Arc<str>, retry_after: Duration) -> Self {
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
            lanes: OnceLock::new(),
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

    /// Stores `phase`, then takes and gives back a reference on every
    /// lane. A request clones its lane (a relaxed increment), then, after
    /// an acquire fence, reads the phase: if its increment comes after
    /// this give-back (a release decrement) on that lane, it reads the new
    /// phase; if before, the count read after this sees it. Either way a
    /// request admitted as if still running is counted.
    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
        for lane in self.lanes() {
            drop(lane.upgrade());
        }
    }

    fn lanes(&self) -> &[Weak<Lane<State>>] {
        self.lanes.get().map_or(&[], |l| &l[..])
    }

    /// Requests in flight: the sum of the lanes' reference counts, less
    /// the `Laned`'s own. Exact while the coordinator, a drain layer or a
    /// `serve` loop holds the state; once every one of them is gone, the
    /// requests still in flight each lane counts one short.
    pub(crate) fn in_flight(&self) -> usize {
        let n = self
            .lanes()
            .iter()
            .map(|l| l.strong_count().saturating_sub(1))
            .sum();
        // What the ended requests did happens before what the reader does
        // next (a `Guard`'s reference is given back with release).
        fence(Ordering::Acquire);
        n
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
        let slot = if draining {
            self.spare()
        } else {
            self.number()
        };
        // Counted in flight (see `State::lanes`).
        let lane = self.lane_at(slot);
        // The coordinator stores the phase, then takes and gives back a
        // reference on every lane (`State::set_phase`); we take one, then
        // read the phase: one of us sees the other.
        fence(Ordering::Acquire);
        if self.phase() >= Phase::Draining && !accepted() {
            release_slow(lane, true);
            self.refused.increment(1);
            return None;
        }
        Sampler::changed(&**self, || self.downgrade());
        Some(Guard {
            state: Some(lane),
            // Lanes are one per thread lane and one more: few.
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

/// Ends a request counted on `lane` when it must be followed by more
/// than giving the reference back: while draining, the drain is woken to
/// read the count (the `Notify` orders the two); when the gauge's task
/// does not run, the change is published (`util::sampled`).
#[cold]
#[inline(never)]
fn release_slow(lane: Arc<Lane<State>>, draining: bool) {
    let state = lane.value();
    drop(lane);
    if draining {
        state.idle.notify_one();
    }
    Sampler::changed(&*state, || Arc::downgrade(&state));
}

impl State {
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
    /// The lane the request is counted on, until the guard is dropped
    /// (`None` only inside `drop`, which gives it back before it wakes
    /// the drain).
    state: Option<Arc<Lane<State>>>,
    /// The number of that lane (a `u32`, so that the guard, in every
    /// admitted request's future, takes 40 bytes, not 48), which also
    /// picks the abort signal's lane for a pending request (no second
    /// thread-local read).
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
        self.state
            .as_deref()
            .expect("held until the guard is dropped")
    }

    /// Has the abort signal fired? Marks the request aborted if so.
    #[inline]
    pub(crate) fn check_aborted(&mut self) -> bool {
        if self.state().abort.is_fired() {
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
            self.state().abort.is_fired()
        } else {
            let lane = self
                .state
                .as_deref()
                .expect("held until the guard is dropped");
            lane.abort.register(
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
        let Some(lane) = self.state.take() else {
            return;
        };
        lane.abort.unregister(self.key);
        let draining = lane.phase() >= Phase::Draining;
        if self.aborted {
            lane.aborted.fetch_add(1, Ordering::Relaxed);
            lane.aborted_counter.increment(1);
        } else if draining {
            lane.completed.fetch_add(1, Ordering::Relaxed);
        }
        if draining || !lane.sampler.is_running() {
            release_slow(lane, draining);
        }
        // Otherwise the request's lane reference is given back here: one
        // atomic decrement.
    }
}

#[cfg(test)]
mod tests {
    use std::future::Future;
    use std::task::{Context, Poll};

    use super::*;

    /// Threads admit requests while draining starts: every request admitted
    /// (as running: nothing here is owed an answer) is in the count read
    /// right after the phase changed, for the drain would otherwise finish
    /// while it runs. Guards are kept, so none ends before the read.
    #[test]
    fn no_request_admitted_as_running_escapes_the_count() {
        use std::sync::Barrier;
        for _ in 0..100 {
            let state = Arc::new(State::laned("test".into(), Duration::from_secs(1)));
            let start = Arc::new(Barrier::new(3));
            let admitting: Vec<_> = (0..2)
                .map(|_| {
                    let (state, start) = (Arc::clone(&state), Arc::clone(&start));
                    std::thread::spawn(move || {
                        start.wait();
                        let mut held = Vec::new();
                        while let Some(guard) = state.admit_unless_draining(|| false) {
                            held.push(guard);
                        }
                        held
                    })
                })
                .collect();
            start.wait();
            std::thread::yield_now();
            state.set_phase(Phase::Draining);
            let counted = state.in_flight();
            let held: Vec<Guard> = admitting
                .into_iter()
                .flat_map(|t| t.join().unwrap())
                .collect();
            assert!(
                counted >= held.len(),
                "{} requests admitted, {counted} counted when draining started",
                held.len()
            );
            assert_eq!(state.in_flight(), held.len());
        }
    }

    /// Requests counted on two threads' lanes and ended on two threads at
    /// once while draining: the count is their sum, and the drain is woken
    /// (a permit is stored for its wait) once both are gone.
    #[test]
    fn requests_on_two_lanes_wake_the_drain() {
        for _ in 0..200 {
            let state = Arc::new(State::laned("test".into(), Duration::from_secs(1)));
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
            // Owed an answer: admitted, on the lane read last, and counted
            // until it ends.
            let owed = state.admit_unless_draining(|| true).unwrap();
            assert_eq!(owed.slot as usize, state.spare());
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

    /// With no runtime to run the gauge's task, each change is published
    /// at once, after the count changed: the last request out leaves 0.
    #[test]
    fn without_a_runtime_the_gauge_follows_each_request() {
        use metrics_util::debugging::{DebugValue, DebuggingRecorder};

        let recorder = DebuggingRecorder::new();
        let state = metrics::with_local_recorder(&recorder, || {
            Arc::new(State::laned("test".into(), Duration::from_secs(1)))
        });
        let gauge = || {
            recorder
                .snapshotter()
                .snapshot()
                .into_vec()
                .into_iter()
                .find_map(|(key, _, _, value)| match value {
                    DebugValue::Gauge(v) if key.key().name() == "rampart_in_flight_requests" => {
                        Some(v.into_inner())
                    }
                    _ => None,
                })
        };
        let a = state.admit_unless_draining(|| false).unwrap();
        assert_eq!(gauge(), Some(1.0));
        let b = state.admit_unless_draining(|| false).unwrap();
        assert_eq!(gauge(), Some(2.0));
        drop(a);
        assert_eq!(gauge(), Some(1.0));
        drop(b);
        assert_eq!(gauge(), Some(0.0));
        assert_eq!(state.in_flight(), 0);
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
        let state = Arc::new(State::laned("test".into(), Duration::from_secs(1)));
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
