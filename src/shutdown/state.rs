//! State shared by the coordinator and every drain layer built from it.

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::task::Waker;
use std::time::Duration;

use http::{HeaderValue, header};
use metrics::{Counter, Gauge};
use tokio::sync::Notify;

use super::Phase;
use super::abort::{AbortSignal, NO_KEY};
use crate::{Rejection, RejectionKind};

#[derive(Debug)]
pub(crate) struct State {
    pub(crate) name: Arc<str>,
    phase: AtomicU8,
    /// The in-flight count of the fast path: every admitted request holds
    /// a strong reference to this token, which is its whole guard (one
    /// reference-count increment and one decrement per request). Until
    /// draining starts the coordinator holds one more (its [`Anchor`]), so
    /// the count never reaches zero on its own; once it does, the token's
    /// `Drop` wakes the drain.
    token: Weak<Token>,
    /// Is the coordinator's [`Anchor`] still counted in the token's
    /// references?
    anchored: AtomicBool,
    /// Requests admitted after the token is gone (requests still owed an
    /// answer after the drain went idle once, or drain layers that outlive
    /// their coordinator): the slow path, an explicit count.
    in_flight: AtomicUsize,
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
    in_flight_gauge: Gauge,
    refused: Counter,
    aborted_counter: Counter,
}

/// The fast path's in-flight token (see [`State`]'s `token`).
#[derive(Debug)]
pub(crate) struct Token {
    state: Arc<State>,
}

impl Drop for Token {
    fn drop(&mut self) {
        // The anchor is gone and so is the last request holding the token.
        self.state.idle.notify_one();
    }
}

/// The coordinator's reference to the token: released when draining
/// starts, so that the last request to finish drops the token.
#[derive(Debug)]
pub(crate) struct Anchor {
    token: Arc<Token>,
}

impl Drop for Anchor {
    fn drop(&mut self) {
        // Before the reference is released: `in_flight` may count one too
        // many for a moment, never one too few.
        self.token.state.anchored.store(false, Ordering::SeqCst);
    }
}

impl State {
    /// The state and the anchor that keeps its fast-path token alive until
    /// the coordinator releases it.
    pub(crate) fn new(name: Arc<str>, retry_after: Duration) -> (Arc<Self>, Anchor) {
        let token = Arc::new_cyclic(|token| Token {
            state: Arc::new(Self::with_token(name, retry_after, token.clone())),
        });
        (Arc::clone(&token.state), Anchor { token })
    }

    fn with_token(name: Arc<str>, retry_after: Duration, token: Weak<Token>) -> Self {
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
            token,
            anchored: AtomicBool::new(true),
            in_flight: AtomicUsize::new(0),
            serving: AtomicUsize::new(0),
            completed: AtomicU64::new(0),
            aborted: AtomicU64::new(0),
            idle: Notify::new(),
            abort: AbortSignal::default(),
            retry_after,
        }
    }

    #[inline]
    pub(crate) fn phase(&self) -> Phase {
        Phase::from_u8(self.phase.load(Ordering::SeqCst))
    }

    pub(crate) fn set_phase(&self, phase: Phase) {
        self.phase.store(phase as u8, Ordering::SeqCst);
    }

    /// Requests in flight (exact whenever no request or anchor is being
    /// released at the same moment).
    pub(crate) fn in_flight(&self) -> usize {
        let anchored = usize::from(self.anchored.load(Ordering::SeqCst));
        let tokens = self.token.strong_count().saturating_sub(anchored);
        tokens + self.in_flight.load(Ordering::SeqCst)
    }

    /// Nothing in flight and no listener or connection held by a `serve`
    /// loop: the drain is over. Only true once the anchor is released.
    pub(crate) fn is_idle(&self) -> bool {
        self.token.strong_count() == 0
            && self.in_flight.load(Ordering::SeqCst) == 0
            && self.serving.load(Ordering::SeqCst) == 0
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

    /// Admits a request unless the server is draining and `accepted` says
    /// the connection it came on may not be served any more (`serve` marks
    /// requests on connections it still owes an answer).
    #[inline]
    pub(crate) fn admit_unless_draining(
        self: &Arc<Self>,
        accepted: impl Fn() -> bool,
    ) -> Option<Guard> {
        if self.phase() >= Phase::Draining && !accepted() {
            self.refused.increment(1);
            return None;
        }
        let hold = match self.token.upgrade() {
            Some(token) => Hold::Token(token),
            None => Self::hold_direct(self),
        };
        // The coordinator stores the phase, then releases its anchor (or
        // reads the count); we take a reference (or add to the count), then
        // read the phase: one of us sees the other.
        if self.phase() >= Phase::Draining && !accepted() {
            drop(hold);
            self.refused.increment(1);
            return None;
        }
        self.in_flight_gauge.increment(1.0);
        Some(Guard {
            hold,
            key: NO_KEY,
            waker: None,
            aborted: false,
        })
    }

    #[cold]
    fn hold_direct(self: &Arc<Self>) -> Hold {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        Hold::Direct(Arc::clone(self))
    }

    fn release(&self) {
        if self.in_flight.fetch_sub(1, Ordering::SeqCst) == 1
            && self.phase() >= Phase::Draining
            && self.serving.load(Ordering::SeqCst) == 0
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

/// What keeps a request counted in flight and its state alive.
#[derive(Debug)]
enum Hold {
    /// The fast path: a reference to the token.
    Token(Arc<Token>),
    /// The slow path: the explicit count.
    Direct(Arc<State>),
}

impl Drop for Hold {
    #[inline]
    fn drop(&mut self) {
        if let Hold::Direct(state) = self {
            state.release();
        }
    }
}

/// One admitted request: counted in flight until dropped.
#[derive(Debug)]
pub struct Guard {
    hold: Hold,
    key: usize,
    /// The waker registered in slot `key`, so that polls by the same task
    /// skip the abort signal's lock.
    waker: Option<Waker>,
    aborted: bool,
}

impl Guard {
    #[inline]
    pub(crate) fn state(&self) -> &State {
        match &self.hold {
            Hold::Token(token) => &token.state,
            Hold::Direct(state) => state,
        }
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
        let fired = match &self.waker {
            // Already registered by this task: `fire` sets the flag before it
            // wakes the registered wakers, so reading the flag is enough.
            Some(w) if w.will_wake(waker) => self.state().abort.is_fired(),
            _ => {
                self.waker = Some(waker.clone());
                let state = match &self.hold {
                    Hold::Token(token) => &token.state,
                    Hold::Direct(state) => state,
                };
                state.abort.register(&mut self.key, waker)
            }
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
        let state = self.state();
        state.abort.unregister(self.key);
        if self.aborted {
            state.aborted.fetch_add(1, Ordering::Relaxed);
            state.aborted_counter.increment(1);
        } else if state.phase() >= Phase::Draining {
            state.completed.fetch_add(1, Ordering::Relaxed);
        }
        state.in_flight_gauge.decrement(1.0);
        // `hold` is dropped next: one reference released (the token's
        // `Drop` wakes the drain if it was the last), or the count.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_flight_moves_from_the_token_to_the_count_once_the_drain_is_idle() {
        let (state, anchor) = State::new(Arc::from("t"), Duration::from_secs(1));
        let a = state.admit_unless_draining(|| false).expect("running");
        let b = state.admit_unless_draining(|| false).expect("running");
        assert_eq!(state.in_flight(), 2);
        assert!(!state.is_idle(), "never idle while anchored");
        drop(b);
        assert_eq!(state.in_flight(), 1);

        // What the coordinator does when draining starts.
        state.set_phase(Phase::Draining);
        drop(anchor);
        assert_eq!(state.in_flight(), 1);
        assert!(!state.is_idle());
        assert!(state.admit_unless_draining(|| false).is_none(), "refused");
        assert_eq!(state.in_flight(), 1, "a refusal is not counted");
        drop(a);
        assert_eq!(state.in_flight(), 0);
        assert!(state.is_idle());

        // A request still owed an answer after the token is gone: counted
        // on the slow path, and the drain is busy again until it ends.
        let c = state.admit_unless_draining(|| true).expect("owed");
        assert_eq!(state.in_flight(), 1);
        assert!(!state.is_idle());
        drop(c);
        assert_eq!(state.in_flight(), 0);
        assert!(state.is_idle());
        assert_eq!(state.completed.load(Ordering::Relaxed), 2);
    }

    #[test]
    fn a_drain_layer_outliving_its_coordinator_still_counts() {
        let (state, anchor) = State::new(Arc::from("t"), Duration::from_secs(1));
        drop(anchor);
        let a = state.admit_unless_draining(|| false).expect("running");
        assert_eq!(state.in_flight(), 1);
        drop(a);
        assert_eq!(state.in_flight(), 0);
    }
}
