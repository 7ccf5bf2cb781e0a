//! Limit algorithms: how many requests may be in flight, learned from what
//! admitted requests experienced.
//!
//! The layer owns admission (an atomic in-flight count checked against the
//! limit the algorithm last returned); an algorithm only sees one
//! [`Sample`] per finished request and answers the new limit. The layer calls
//! [`LimitAlgorithm::update`] under a short synchronous lock, once per
//! finished request, never on the admit path.
//!
//! | algorithm | learns from | baseline | starting point |
//! |---|---|---|---|
//! | [`Fixed`] | nothing (a bulkhead) | - | - |
//! | [`Aimd`] | drops (timeouts, downstream refusals) and a latency ceiling | none | Netflix `AIMDLimit` |
//! | [`Vegas`] | the queue estimated from each round trip's mean RTT against the no-load RTT | median RTT at pinned low concurrency, re-probed every `probe_interval` round trips | Netflix `VegasLimit`, Envoy's minRTT |
//! | [`Gradient2`] | the ratio of the baseline RTT to each round trip's mean RTT | the same | Netflix `Gradient2Limit`, Envoy's adaptive concurrency filter |
//!
//! Every algorithm treats the outcomes the same way: a
//! [`Success`](Outcome::Success) is a latency sample, a
//! [`Dropped`](Outcome::Dropped) request (a timeout, a downstream refusal)
//! multiplies the limit by a `backoff_ratio` (at once for [`Aimd`], once
//! per round trip for the latency-driven two), and an
//! [`Ignored`](Outcome::Ignored) one (a client's cancellation) is no sample
//! at all: a client that hangs up cannot move the limit.
//!
//! # Time without timestamps
//!
//! A [`Sample`] carries a duration, not a clock reading, so the periodic
//! parts (re-probing the baseline) count samples. Divided by the limit, a
//! count of samples is a count of round trips: with `limit` requests in
//! flight, about `limit` complete per round trip (Little's law). So
//! [`Vegas`] and [`Gradient2`] gather `limit` samples (one round trip) and
//! move the limit once on their mean RTT, and re-probe their baseline every
//! `probe_interval` such windows. The round trip is the unit congestion
//! control thinks in, it needs no clock on the update path, and it stops
//! when traffic stops, which is right: with no traffic nothing can have
//! changed that a probe would see.
//!
//! # Defaults
//!
//! Each algorithm's `default()` is the Netflix library's defaults, except
//! where a deviation is documented on the type (and measured in the
//! overload experiment, `benches/README.md`).

use std::time::Duration;

use crate::ConfigError;

mod aimd;
mod baseline;
mod gradient2;
mod vegas;

pub use aimd::{Aimd, AimdBuilder, AimdConfig};
pub use gradient2::{Gradient2, Gradient2Builder, Gradient2Config};
pub use vegas::{Vegas, VegasBuilder, VegasConfig};

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

/// The largest `max_limit` an algorithm accepts: a million requests in
/// flight is beyond any one process, so a larger value is a typo.
pub const MAX_LIMIT: usize = 1_000_000;

/// Checks `min_limit <= initial_limit <= max_limit`, `min_limit >= 1` and
/// `max_limit <= MAX_LIMIT`, naming the offending field.
pub(crate) fn check_bounds(initial: usize, min: usize, max: usize) -> Result<(), ConfigError> {
    if min == 0 {
        return Err(ConfigError::new(
            "min_limit",
            crate::config_util::MUST_BE_POSITIVE,
        ));
    }
    if max > MAX_LIMIT {
        return Err(ConfigError::new(
            "max_limit",
            format!("must be at most {MAX_LIMIT} (found {max})"),
        ));
    }
    if max < min {
        return Err(ConfigError::new(
            "max_limit",
            format!("must be at least `min_limit` ({min}), found {max}"),
        ));
    }
    if initial < min || initial > max {
        return Err(ConfigError::new(
            "initial_limit",
            format!("must be between `min_limit` ({min}) and `max_limit` ({max}), found {initial}"),
        ));
    }
    Ok(())
}

/// Checks that `value` lies in `[low, high)` (or `[low, high]` when
/// `high_inclusive`), naming `field`; NaN is refused.
pub(crate) fn check_range(
    field: &'static str,
    value: f64,
    low: f64,
    high: f64,
    high_inclusive: bool,
) -> Result<(), ConfigError> {
    let ok = value >= low && (value < high || (high_inclusive && value <= high));
    if ok {
        Ok(())
    } else {
        let close = if high_inclusive { ']' } else { ')' };
        Err(ConfigError::new(
            field,
            format!("must be in [{low}, {high}{close}, found {value}"),
        ))
    }
}

/// A duration as nanoseconds in an `f64` (at least 1, so ratios are finite).
#[inline]
pub(crate) fn nanos(d: Duration) -> f64 {
    (d.as_nanos() as f64).max(1.0)
}

/// A float limit as the integer limit the layer enforces (at least 1).
#[inline]
pub(crate) fn whole(limit: f64) -> usize {
    (limit as usize).max(1)
}

/// A small pseudo-random source for probe jitter (splitmix64), seeded from
/// the process's random hasher keys so that replicas do not probe in step.
#[derive(Clone, Debug)]
pub(crate) struct Jitter {
    state: u64,
}

impl Jitter {
    pub(crate) fn new() -> Self {
        use std::hash::{BuildHasher, RandomState};
        Self {
            state: RandomState::new().hash_one(0x5eed_u64),
        }
    }

    /// A uniform float in `[0, 1)`.
    pub(crate) fn next_unit(&mut self) -> f64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }

    /// `base` shortened by up to `fraction` of itself, at random.
    pub(crate) fn shorten(&mut self, base: f64, fraction: f64) -> f64 {
        base * (1.0 - fraction * self.next_unit())
    }
}

#[cfg(test)]
pub(crate) mod test_support {
    use super::{Outcome, Sample};
    use std::time::Duration;

    pub(crate) fn ok(rtt_ms: u64, in_flight: usize) -> Sample {
        Sample {
            rtt: Duration::from_millis(rtt_ms),
            in_flight,
            outcome: Outcome::Success,
        }
    }

    pub(crate) fn dropped(rtt_ms: u64, in_flight: usize) -> Sample {
        Sample {
            rtt: Duration::from_millis(rtt_ms),
            in_flight,
            outcome: Outcome::Dropped,
        }
    }

    pub(crate) fn ignored(rtt_ms: u64, in_flight: usize) -> Sample {
        Sample {
            rtt: Duration::from_millis(rtt_ms),
            in_flight,
            outcome: Outcome::Ignored,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounds_name_the_field() {
        assert!(check_bounds(20, 20, 200).is_ok());
        assert_eq!(check_bounds(20, 0, 200).unwrap_err().field(), "min_limit");
        assert_eq!(check_bounds(20, 30, 25).unwrap_err().field(), "max_limit");
        assert_eq!(
            check_bounds(20, 1, MAX_LIMIT + 1).unwrap_err().field(),
            "max_limit"
        );
        let e = check_bounds(10, 20, 200).unwrap_err();
        assert_eq!(
            e.to_string(),
            "initial_limit: must be between `min_limit` (20) and `max_limit` (200), found 10"
        );
        assert!(check_range("x", f64::NAN, 0.0, 1.0, true).is_err());
        assert!(check_range("x", 1.0, 0.5, 1.0, false).is_err());
        assert!(check_range("x", 1.0, 0.5, 1.0, true).is_ok());
    }

    #[test]
    fn jitter_is_uniform_in_the_unit_interval() {
        let mut j = Jitter::new();
        let xs: Vec<f64> = (0..10_000).map(|_| j.next_unit()).collect();
        assert!(xs.iter().all(|x| (0.0..1.0).contains(x)));
        let mean = xs.iter().sum::<f64>() / xs.len() as f64;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
        assert_eq!(j.shorten(100.0, 0.0), 100.0);
    }
}
