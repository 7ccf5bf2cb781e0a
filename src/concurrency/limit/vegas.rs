//! [`Vegas`]: TCP Vegas applied to concurrency, the queue estimated from
//! the RTT against the no-load RTT.

use super::{Jitter, LimitAlgorithm, Outcome, Sample, check_bounds, check_range, nanos, whole};
use crate::ConfigError;

/// TCP Vegas for requests: from each RTT and the no-load RTT (the smallest
/// seen), estimate how many requests are queued,
/// `queue = ceil(limit * (1 - rtt_noload / rtt))`, and keep it between
/// `alpha` and `beta`.
///
/// This is Netflix's `VegasLimit.java` (concurrency-limits), with its
/// defaults: `initial_limit` 20, `max_limit` 1000, `smoothing` 1.0,
/// `alpha = 3 * log10(limit)`, `beta = 6 * log10(limit)`, threshold
/// `log10(limit)` (each `log10` at least 1). Per success admitted with at
/// least half the limit in flight:
///
/// - `queue <= threshold`: grow fast, `limit + beta`;
/// - `queue < alpha`: grow, `limit + log10(limit)`;
/// - `queue > beta`: shrink, `limit - log10(limit)`;
/// - otherwise the limit is right.
///
/// The new limit is clamped to the bounds, then smoothed:
/// `(1 - smoothing) * limit + smoothing * new`.
///
/// Re-probing, as Netflix does it: every `probe_multiplier * limit`
/// successes (shortened at random by up to `probe_jitter`, default half,
/// so replicas do not probe together) the next RTT replaces the no-load
/// RTT, and smaller RTTs lower it again from there. A service that got
/// permanently slower is therefore re-learned within about
/// `probe_multiplier` round trips.
///
/// Deviations from Netflix, for this crate's outcome contract: a
/// [`Dropped`](Outcome::Dropped) request multiplies the limit by
/// `backoff_ratio` (0.9, as [`Aimd`](super::Aimd)) instead of subtracting
/// `log10(limit)`, a strong back-off; an [`Ignored`](Outcome::Ignored) one
/// is no sample; and a `min_limit` bound exists (default 1, Netflix's
/// floor).
///
/// Vegas reads every sample against the *smallest* RTT, so a service whose
/// latency varies a lot from request to request looks queued when it is
/// not and the limit settles low; [`Gradient2`](super::Gradient2) compares
/// against a median and tolerates variance. The overload experiment in
/// `benches/README.md` shows both.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::concurrency::limit::{LimitAlgorithm, Outcome, Sample, Vegas};
///
/// let mut vegas = Vegas::builder().initial_limit(10).build()?;
/// let sample = |ms, in_flight| Sample {
///     rtt: Duration::from_millis(ms),
///     in_flight,
///     outcome: Outcome::Success,
/// };
/// vegas.update(&sample(10, 10)); // the first RTT is the no-load RTT
/// assert_eq!(vegas.update(&sample(10, 10)), 16); // no queue: + beta
/// # Ok::<(), tower_rampart::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Vegas {
    config: VegasConfig,
    limit: f64,
    rtt_noload: f64,
    probe_count: u64,
    probe_at: f64,
    jitter: Jitter,
}

/// Netflix's `Log10RootIntFunction`: `floor(log10(n))`, at least 1.
fn log10(limit: f64) -> f64 {
    limit.max(1.0).log10().floor().max(1.0)
}

impl Vegas {
    /// A builder starting from the defaults.
    pub fn builder() -> VegasBuilder {
        VegasBuilder::default()
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        whole(self.limit)
    }

    /// The no-load RTT the queue is estimated against (zero before the
    /// first sample).
    pub fn rtt_noload(&self) -> std::time::Duration {
        std::time::Duration::from_nanos(self.rtt_noload as u64)
    }

    fn from_valid(config: &VegasConfig) -> Self {
        let mut vegas = Self {
            config: config.clone(),
            limit: config.initial_limit as f64,
            rtt_noload: 0.0,
            probe_count: 0,
            probe_at: 0.0,
            jitter: Jitter::new(),
        };
        vegas.reset_probe();
        vegas
    }

    fn reset_probe(&mut self) {
        self.probe_count = 0;
        self.probe_at = self.jitter.shorten(
            self.config.probe_multiplier as f64,
            self.config.probe_jitter,
        );
    }

    fn set(&mut self, new: f64) -> usize {
        let clamped = new.clamp(self.config.min_limit as f64, self.config.max_limit as f64);
        let s = self.config.smoothing;
        self.limit = (1.0 - s) * self.limit + s * clamped;
        self.limit()
    }
}

impl Default for Vegas {
    /// Netflix's defaults (see the type docs).
    fn default() -> Self {
        Self::from_valid(&VegasConfig::default())
    }
}

impl LimitAlgorithm for Vegas {
    fn initial_limit(&self) -> usize {
        self.config.initial_limit
    }

    fn update(&mut self, sample: &Sample) -> usize {
        match sample.outcome {
            Outcome::Ignored => return self.limit(),
            Outcome::Dropped => {
                // A drop shrinks without smoothing: it is the strong signal.
                self.limit = (self.limit * self.config.backoff_ratio)
                    .clamp(self.config.min_limit as f64, self.config.max_limit as f64);
                return self.limit();
            }
            Outcome::Success => {}
        }
        let rtt = nanos(sample.rtt);
        self.probe_count += 1;
        if self.probe_count as f64 >= self.probe_at * self.limit {
            self.reset_probe();
            self.rtt_noload = rtt;
            return self.limit();
        }
        if self.rtt_noload == 0.0 || rtt < self.rtt_noload {
            self.rtt_noload = rtt;
            return self.limit();
        }
        // Netflix's guard against growing while idle.
        if (sample.in_flight as f64) * 2.0 < self.limit {
            return self.limit();
        }
        let limit = self.limit;
        let queue = (limit * (1.0 - self.rtt_noload / rtt)).ceil();
        let log = log10(limit);
        let alpha = self.config.alpha.map_or(3.0 * log, |a| a as f64);
        let beta = self.config.beta.map_or(6.0 * log, |b| b as f64);
        let new = if queue <= log {
            limit + beta
        } else if queue < alpha {
            limit + log
        } else if queue > beta {
            limit - log
        } else {
            return self.limit();
        };
        self.set(new)
    }
}

/// The settings of a [`Vegas`] limit, as read from a config file (every
/// field optional; the defaults are Netflix's).
///
/// ```
/// # #[cfg(feature = "config")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_rampart::concurrency::limit::VegasConfig;
///
/// let config: VegasConfig = serde_json::from_str(r#"{ "max_limit": 300, "smoothing": 0.5 }"#)?;
/// assert_eq!(config.build()?.limit(), 20);
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "config"))]
/// # fn main() {}
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct VegasConfig {
    /// The limit before any sample (default 20).
    pub initial_limit: usize,
    /// The limit never goes below this (default 1).
    pub min_limit: usize,
    /// The limit never goes above this (default 1000).
    pub max_limit: usize,
    /// How much of each new estimate is taken, in `(0, 1]` (default 1.0:
    /// all of it).
    pub smoothing: f64,
    /// Grow while fewer requests than this are queued (default
    /// `3 * log10(limit)`).
    pub alpha: Option<usize>,
    /// Shrink while more requests than this are queued (default
    /// `6 * log10(limit)`; at least `alpha`).
    pub beta: Option<usize>,
    /// Re-take the no-load RTT every `probe_multiplier * limit` successes
    /// (default 30, at least 1).
    pub probe_multiplier: u32,
    /// The fraction of that interval taken off at random, in `[0, 1)`
    /// (default 0.5).
    pub probe_jitter: f64,
    /// The factor applied on a drop, in `[0.5, 1.0)` (default 0.9).
    pub backoff_ratio: f64,
}

impl Default for VegasConfig {
    fn default() -> Self {
        Self {
            initial_limit: 20,
            min_limit: 1,
            max_limit: 1000,
            smoothing: 1.0,
            alpha: None,
            beta: None,
            probe_multiplier: 30,
            probe_jitter: 0.5,
            backoff_ratio: 0.9,
        }
    }
}

impl VegasConfig {
    /// Checks every setting; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_bounds(self.initial_limit, self.min_limit, self.max_limit)?;
        if self.smoothing <= 0.0 {
            return Err(ConfigError::new("smoothing", "must be in (0, 1]"));
        }
        check_range("smoothing", self.smoothing, 0.0, 1.0, true)?;
        if let (Some(alpha), Some(beta)) = (self.alpha, self.beta) {
            if beta < alpha {
                return Err(ConfigError::new(
                    "beta",
                    format!("must be at least `alpha` ({alpha}), found {beta}"),
                ));
            }
        }
        if self.probe_multiplier == 0 {
            return Err(ConfigError::new(
                "probe_multiplier",
                crate::config_util::MUST_BE_POSITIVE,
            ));
        }
        check_range("probe_jitter", self.probe_jitter, 0.0, 1.0, false)?;
        check_range("backoff_ratio", self.backoff_ratio, 0.5, 1.0, false)
    }

    /// Builds the algorithm (validated first).
    pub fn build(&self) -> Result<Vegas, ConfigError> {
        self.validate()?;
        Ok(Vegas::from_valid(self))
    }
}

/// Builds a [`Vegas`] limit; [`build`](Self::build) validates.
#[derive(Clone, Debug, Default)]
pub struct VegasBuilder {
    config: VegasConfig,
}

impl VegasBuilder {
    /// The limit before any sample (default 20).
    pub fn initial_limit(mut self, limit: usize) -> Self {
        self.config.initial_limit = limit;
        self
    }

    /// The lowest limit (default 1).
    pub fn min_limit(mut self, limit: usize) -> Self {
        self.config.min_limit = limit;
        self
    }

    /// The highest limit (default 1000).
    pub fn max_limit(mut self, limit: usize) -> Self {
        self.config.max_limit = limit;
        self
    }

    /// How much of each new estimate is taken, in `(0, 1]` (default 1.0).
    pub fn smoothing(mut self, smoothing: f64) -> Self {
        self.config.smoothing = smoothing;
        self
    }

    /// A fixed `alpha` instead of `3 * log10(limit)`.
    pub fn alpha(mut self, alpha: usize) -> Self {
        self.config.alpha = Some(alpha);
        self
    }

    /// A fixed `beta` instead of `6 * log10(limit)`.
    pub fn beta(mut self, beta: usize) -> Self {
        self.config.beta = Some(beta);
        self
    }

    /// Re-take the no-load RTT every `multiplier * limit` successes
    /// (default 30).
    pub fn probe_multiplier(mut self, multiplier: u32) -> Self {
        self.config.probe_multiplier = multiplier;
        self
    }

    /// The fraction of the probe interval taken off at random, in `[0, 1)`
    /// (default 0.5; 0 makes probing exactly periodic).
    pub fn probe_jitter(mut self, jitter: f64) -> Self {
        self.config.probe_jitter = jitter;
        self
    }

    /// The factor applied on a drop, in `[0.5, 1.0)` (default 0.9).
    pub fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.config.backoff_ratio = ratio;
        self
    }

    /// The algorithm, or the first invalid setting.
    pub fn build(self) -> Result<Vegas, ConfigError> {
        self.config.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::concurrency::limit::test_support::{dropped, ignored, ok};

    /// Netflix's `VegasLimitTest.create()`.
    fn netflix() -> Vegas {
        Vegas::builder()
            .alpha(3)
            .beta(6)
            .smoothing(1.0)
            .initial_limit(10)
            .max_limit(20)
            .build()
            .unwrap()
    }

    // The scenarios of Netflix's `VegasLimitTest.java`
    // (concurrency-limits-core/src/test/java/com/netflix/concurrency/limits/limit/).

    #[test]
    fn netflix_large_limit_increase() {
        let mut v = Vegas::builder()
            .initial_limit(10_000)
            .max_limit(20_000)
            .build()
            .unwrap();
        assert_eq!(v.update(&ok(10_000, 5000)), 10_000);
        assert_eq!(v.update(&ok(10_000, 6000)), 10_024);
    }

    #[test]
    fn netflix_increase_limit() {
        let mut v = netflix();
        assert_eq!(v.update(&ok(10, 10)), 10);
        assert_eq!(v.update(&ok(10, 11)), 16);
    }

    #[test]
    fn netflix_decrease_limit() {
        let mut v = netflix();
        assert_eq!(v.update(&ok(10, 10)), 10);
        assert_eq!(v.update(&ok(50, 11)), 9);
    }

    #[test]
    fn netflix_no_change_if_within_thresholds() {
        let mut v = netflix();
        assert_eq!(v.update(&ok(10, 10)), 10);
        assert_eq!(v.update(&ok(14, 14)), 10);
    }

    #[test]
    fn netflix_decrease_smoothing() {
        // Netflix halves with a custom decrease function; with the default
        // one (`- log10`) the smoothing arithmetic is the same check:
        // 100 -> (100 + 98) / 2 = 99 -> (99 + 97) / 2 = 98.
        let mut v = Vegas::builder()
            .smoothing(0.5)
            .initial_limit(100)
            .max_limit(200)
            .probe_jitter(0.0)
            .build()
            .unwrap();
        assert_eq!(v.update(&ok(10, 100)), 100);
        assert_eq!(v.update(&ok(20, 100)), 99);
        assert_eq!(v.update(&ok(20, 100)), 98);
    }

    #[test]
    fn grows_under_steady_low_latency() {
        let mut v = Vegas::default();
        for _ in 0..50 {
            let l = v.limit();
            v.update(&ok(10, l));
        }
        assert!(v.limit() > 200, "{}", v.limit());
    }

    #[test]
    fn shrinks_when_latency_rises() {
        let mut v = Vegas::builder().initial_limit(100).build().unwrap();
        v.update(&ok(10, 100));
        for _ in 0..100 {
            let l = v.limit();
            v.update(&ok(30, l));
        }
        assert!(v.limit() < 40, "{}", v.limit());
    }

    #[test]
    fn drops_back_off_strongly_and_respect_min() {
        let mut v = Vegas::builder()
            .initial_limit(100)
            .min_limit(10)
            .build()
            .unwrap();
        assert_eq!(v.update(&dropped(10, 100)), 90);
        for _ in 0..100 {
            v.update(&dropped(10, 100));
        }
        assert_eq!(v.limit(), 10);
    }

    #[test]
    fn ignored_is_no_sample() {
        let mut v = netflix();
        v.update(&ok(10, 10));
        for _ in 0..1000 {
            assert_eq!(v.update(&ignored(1, 10)), 10);
        }
        assert_eq!(v.rtt_noload(), std::time::Duration::from_millis(10));
    }

    #[test]
    fn respects_max() {
        let mut v = netflix();
        for _ in 0..100 {
            v.update(&ok(10, 20));
        }
        assert_eq!(v.limit(), 20);
    }

    #[test]
    fn reprobes_the_noload_rtt_of_a_service_that_got_slower() {
        let mut v = Vegas::builder()
            .initial_limit(20)
            .probe_jitter(0.0)
            .build()
            .unwrap();
        v.update(&ok(10, 20));
        // The service is now 4x slower for good: the limit falls at first...
        let mut lowest = usize::MAX;
        for _ in 0..2000 {
            let l = v.limit();
            v.update(&ok(40, l));
            lowest = lowest.min(v.limit());
        }
        assert!(lowest < 10, "{lowest}");
        // ...until a probe takes 40 ms as the no-load RTT and it recovers.
        assert_eq!(v.rtt_noload(), std::time::Duration::from_millis(40));
        assert!(v.limit() > 100, "{}", v.limit());
    }

    #[test]
    fn builder_names_the_bad_field() {
        let e = |b: VegasBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(e(Vegas::builder().initial_limit(2000)), "initial_limit");
        assert_eq!(e(Vegas::builder().smoothing(0.0)), "smoothing");
        assert_eq!(e(Vegas::builder().smoothing(1.5)), "smoothing");
        assert_eq!(e(Vegas::builder().alpha(5).beta(4)), "beta");
        assert_eq!(e(Vegas::builder().probe_multiplier(0)), "probe_multiplier");
        assert_eq!(e(Vegas::builder().probe_jitter(1.0)), "probe_jitter");
        assert_eq!(e(Vegas::builder().backoff_ratio(0.1)), "backoff_ratio");
    }

    #[cfg(feature = "config")]
    #[test]
    fn config_refuses_unknown_fields() {
        let c: VegasConfig = serde_json::from_str(r#"{"alpha": 2, "beta": 4}"#).unwrap();
        assert_eq!((c.alpha, c.beta), (Some(2), Some(4)));
        assert!(c.build().is_ok());
        assert!(serde_json::from_str::<VegasConfig>(r#"{"tolerance": 2.0}"#).is_err());
    }
}
