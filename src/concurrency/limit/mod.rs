//! Limit algorithms: how many requests may be in flight, learned from what
//! admitted requests experienced.
//!
//! The layer owns admission (an atomic in-flight count checked against
//! [`LimitAlgorithm::limit`]); an algorithm only sees one [`Sample`] per
//! finished request and answers the new limit. The layer calls
//! [`LimitAlgorithm::update`] under a short synchronous lock, once per
//! finished request, never on the admit path.

use std::time::Duration;

/// What became of one admitted request, as a limit algorithm sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// The service answered: the round-trip time is a latency sample.
    Success,
    /// The request timed out, or something downstream refused it as
    /// overloaded: a strong signal to back off.
    Dropped,
    /// The caller went away (cancellation) or the outcome says nothing about
    /// the service's capacity: no sample.
    Ignored,
}

/// One finished request, as handed to a [`LimitAlgorithm`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Sample {
    /// Time from admission to the response (or the drop).
    pub rtt: Duration,
    /// Requests in flight when this one was admitted, itself included.
    pub in_flight: usize,
    /// What became of it.
    pub outcome: Outcome,
}

/// A concurrency limit algorithm: fixed, or learned from latency.
///
/// Implementations keep their own state; the layer serialises calls to
/// [`update`](Self::update) and publishes the returned limit to the admit
/// path through an atomic.
pub trait LimitAlgorithm: Send + 'static {
    /// The limit before any sample arrives.
    fn initial_limit(&self) -> usize;

    /// Feeds one finished request; returns the limit from now on (at least 1).
    fn update(&mut self, sample: &Sample) -> usize;
}

/// A fixed limit (a bulkhead): samples never move it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fixed {
    limit: usize,
}

impl Fixed {
    /// A limit of `limit` requests in flight (at least 1).
    pub fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
        }
    }
}

impl LimitAlgorithm for Fixed {
    fn initial_limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, _sample: &Sample) -> usize {
        self.limit
    }
}
