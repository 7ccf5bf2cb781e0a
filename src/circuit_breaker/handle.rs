//! A cloneable handle to read and steer a breaker at run time.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::state::{CircuitCounts, CircuitState, Core};

/// Reads a breaker's state and counts, and steers it by hand.
///
/// Cheap to clone; it keeps the breaker alive. [`state`](Self::state) is one
/// atomic load, so a readiness check may poll it freely.
///
/// Each manual method is named after the state it moves to:
/// [`open`](Self::open) (for a while), [`force_open`](Self::force_open)
/// (until told otherwise), [`close`](Self::close),
/// [`disable`](Self::disable), [`metrics_only`](Self::metrics_only);
/// [`reset`](Self::reset) also forgets the counts. Moving to the state the
/// breaker is already in does nothing: no event, and calls in flight still
/// count.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};
///
/// let layer = CircuitBreakerLayer::builder().name("db").build().unwrap();
/// let handle = layer.handle();
/// assert_eq!(handle.state(), CircuitState::Closed);
/// handle.force_open(); // isolate the dependency by hand
/// assert_eq!(handle.state(), CircuitState::ForcedOpen);
/// handle.open(Duration::from_secs(30)); // or for a while, then trial calls
/// assert_eq!(handle.state(), CircuitState::Open);
/// handle.close();
/// assert_eq!(handle.state(), CircuitState::Closed);
/// handle.reset();
/// assert_eq!(handle.counts().calls, 0);
/// ```
#[derive(Clone)]
pub struct CircuitBreakerHandle {
    core: Arc<Core>,
}

impl CircuitBreakerHandle {
    pub(crate) fn new(core: Arc<Core>) -> Self {
        Self { core }
    }

    /// The current state (one atomic load).
    ///
    /// An open circuit whose open duration is over still reads `Open` until
    /// a call arrives and starts half-open (Resilience4j's default), unless
    /// the breaker was built with
    /// [`auto_half_open`](super::CircuitBreakerBuilder::auto_half_open)
    /// (then its timer moves it, inside a tokio runtime).
    /// [`open_remaining`](Self::open_remaining) tells the two apart: it is
    /// zero once the next call would be a trial.
    #[inline]
    pub fn state(&self) -> CircuitState {
        self.core.state()
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        self.core.name()
    }

    /// The state and the counts behind it: the sliding window when closed,
    /// metrics-only or open (the window that tripped it), the trial calls
    /// when half-open; and the calls refused since the state last changed.
    pub fn counts(&self) -> CircuitCounts {
        self.core.snapshot()
    }

    /// How long an open circuit stays open (zero once the open duration is
    /// over and the next call would start half-open); `None` when it is not
    /// open.
    pub fn open_remaining(&self) -> Option<Duration> {
        self.core.open_remaining()
    }

    /// Opens the circuit for `duration`; then trial calls decide, as after
    /// any opening (Resilience4j's `transitionToOpenStateFor`, Polly's
    /// manual break for a while). Refused callers are told the time left.
    /// Already open, it only moves the end of the open time. Does not grow
    /// the backoff.
    pub fn open(&self, duration: Duration) {
        self.core.open_for(duration);
    }

    /// Isolates the dependency: every call is refused until
    /// [`close`](Self::close) or [`reset`](Self::reset) (Polly's
    /// `IsolateAsync`, Resilience4j's forced-open). Refused callers are told
    /// to retry after one `open_duration`.
    pub fn force_open(&self) {
        self.core.force(CircuitState::ForcedOpen);
    }

    /// Closes the circuit (Polly's `CloseAsync`): a fresh window, the
    /// backoff reset. Already closed, it does nothing.
    pub fn close(&self) {
        self.core.force(CircuitState::Closed);
    }

    /// Lets every call through and records nothing, until closed.
    pub fn disable(&self) {
        self.core.force(CircuitState::Disabled);
    }

    /// Records calls (metrics, counts) but never trips, until closed. When
    /// a rule is met it emits
    /// [`CircuitBreakerEvent::ThresholdExceeded`](super::CircuitBreakerEvent::ThresholdExceeded),
    /// so a breaker tried out in shadow can alert.
    pub fn metrics_only(&self) {
        self.core.force(CircuitState::MetricsOnly);
    }

    /// Back to closed with an empty window and the backoff reset, from any
    /// state; already closed, it forgets the window (no event). Results of
    /// calls admitted in another state are not counted.
    pub fn reset(&self) {
        self.core.reset();
    }
}

impl fmt::Debug for CircuitBreakerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerHandle")
            .field("name", &self.name())
            .field("state", &self.state())
            .finish()
    }
}
