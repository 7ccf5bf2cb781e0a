//! A cloneable handle to read and steer a breaker at run time.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::state::{CircuitCounts, CircuitState, Core};

/// Reads a breaker's state and counts, and forces or resets it.
///
/// Cheap to clone; it keeps the breaker alive. [`state`](Self::state) is one
/// atomic load, so a readiness check may poll it freely.
///
/// ```
/// use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};
///
/// let layer = CircuitBreakerLayer::builder().name("db").build().unwrap();
/// let handle = layer.handle();
/// assert_eq!(handle.state(), CircuitState::Closed);
/// handle.force_open(); // isolate the dependency by hand
/// assert_eq!(handle.state(), CircuitState::ForcedOpen);
/// handle.reset();
/// assert_eq!(handle.state(), CircuitState::Closed);
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

    /// The current state (one atomic load). An open circuit whose open
    /// duration has elapsed reads `HalfOpen` once the breaker's timer task
    /// has run (inside a tokio runtime), or after the next call.
    #[inline]
    pub fn state(&self) -> CircuitState {
        self.core.state()
    }

    /// The breaker's name.
    pub fn name(&self) -> &str {
        self.core.name()
    }

    /// The state and what the sliding window holds now.
    pub fn counts(&self) -> CircuitCounts {
        self.core.snapshot()
    }

    /// How long an open circuit stays open; `None` when it is not open.
    pub fn open_remaining(&self) -> Option<Duration> {
        self.core.open_remaining()
    }

    /// Isolates the dependency: every call is refused until
    /// [`reset`](Self::reset) (Polly's manual isolate, Resilience4j's
    /// forced-open).
    pub fn force_open(&self) {
        self.core.force(CircuitState::ForcedOpen);
    }

    /// Lets every call through and records nothing, until reset.
    pub fn disable(&self) {
        self.core.force(CircuitState::Disabled);
    }

    /// Records calls (metrics, counts) but never trips, until reset.
    pub fn metrics_only(&self) {
        self.core.force(CircuitState::MetricsOnly);
    }

    /// Back to closed with an empty window and the backoff reset. Results
    /// of calls admitted before the reset are not counted.
    pub fn reset(&self) {
        self.core.force(CircuitState::Closed);
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
