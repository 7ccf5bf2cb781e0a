//! [`Aimd`]: additive increase, multiplicative decrease, driven by drops.

use std::time::Duration;

use super::{LimitAlgorithm, Outcome, Sample, check_bounds, check_range};
use crate::ConfigError;

/// Additive increase, multiplicative decrease: the limit grows by one for
/// every success that found the limit in use, and shrinks by
/// `backoff_ratio` on every drop (a timeout, a downstream refusal) or
/// success slower than `timeout`.
///
/// This is the loss-based algorithm of Netflix's concurrency-limits
/// (`AIMDLimit.java`), with its defaults: `initial_limit` 20, `min_limit`
/// 20, `max_limit` 200, `backoff_ratio` 0.9, `timeout` 5 s. It needs no
/// latency baseline, so it never probes; it only moves when requests fail
/// or become very slow, so under overload it lets latency grow up to the
/// point where requests time out. Prefer [`Vegas`](super::Vegas) or
/// [`Gradient2`](super::Gradient2) to keep latency low; use `Aimd` where the service signals overload
/// itself (429/503 from a downstream, timeouts).
///
/// "In use" is Netflix's rule against growing while idle: a success grows
/// the limit only if it was admitted with at least half the limit in
/// flight.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::concurrency::limit::{Aimd, LimitAlgorithm, Outcome, Sample};
///
/// let mut aimd = Aimd::builder().initial_limit(30).build()?;
/// let drop = Sample { rtt: Duration::from_millis(5), in_flight: 30, outcome: Outcome::Dropped };
/// assert_eq!(aimd.update(&drop), 27);
/// # Ok::<(), tower_rampart::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Aimd {
    initial: usize,
    limit: usize,
    min_limit: usize,
    max_limit: usize,
    backoff_ratio: f64,
    timeout: Duration,
}

impl Aimd {
    /// A builder starting from the defaults.
    pub fn builder() -> AimdBuilder {
        AimdBuilder::default()
    }

    /// The current limit.
    pub fn limit(&self) -> usize {
        self.limit
    }
}

impl Default for Aimd {
    /// Netflix's defaults (see the type docs).
    fn default() -> Self {
        Self::from_valid(&AimdConfig::default())
    }
}

impl LimitAlgorithm for Aimd {
    fn initial_limit(&self) -> usize {
        self.initial
    }

    fn update(&mut self, sample: &Sample) -> usize {
        let limit = match sample.outcome {
            Outcome::Ignored => return self.limit,
            Outcome::Dropped => self.backed_off(),
            Outcome::Success if sample.rtt > self.timeout => self.backed_off(),
            Outcome::Success if sample.in_flight.saturating_mul(2) >= self.limit => {
                self.limit.saturating_add(1)
            }
            Outcome::Success => self.limit,
        };
        self.limit = limit.clamp(self.min_limit, self.max_limit);
        self.limit
    }
}

impl Aimd {
    fn backed_off(&self) -> usize {
        (self.limit as f64 * self.backoff_ratio) as usize
    }

    fn from_valid(config: &AimdConfig) -> Self {
        Self {
            initial: config.initial_limit,
            limit: config.initial_limit,
            min_limit: config.min_limit,
            max_limit: config.max_limit,
            backoff_ratio: config.backoff_ratio,
            timeout: config.timeout,
        }
    }
}

/// The settings of an [`Aimd`] limit, as read from a config file (every
/// field optional; the defaults are Netflix's).
///
/// ```
/// # #[cfg(feature = "config")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_rampart::concurrency::limit::{AimdConfig, LimitAlgorithm};
///
/// let config: AimdConfig = serde_json::from_str(r#"{ "max_limit": 500, "timeout": "2s" }"#)?;
/// let aimd = config.build()?;
/// assert_eq!(aimd.initial_limit(), 20);
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "config"))]
/// # fn main() {}
/// ```
#[derive(Clone, Debug, PartialEq)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct AimdConfig {
    /// The limit before any sample (default 20).
    pub initial_limit: usize,
    /// The limit never goes below this (default 20, at least 1).
    pub min_limit: usize,
    /// The limit never goes above this (default 200).
    pub max_limit: usize,
    /// The factor applied on a drop, in `[0.5, 1.0)` (default 0.9).
    pub backoff_ratio: f64,
    /// A success slower than this counts as a drop (default `"5s"`, at most
    /// `"1h"`).
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub timeout: Duration,
}

impl Default for AimdConfig {
    fn default() -> Self {
        Self {
            initial_limit: 20,
            min_limit: 20,
            max_limit: 200,
            backoff_ratio: 0.9,
            timeout: Duration::from_secs(5),
        }
    }
}

impl AimdConfig {
    /// Checks every setting; the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_bounds(self.initial_limit, self.min_limit, self.max_limit)?;
        check_range("backoff_ratio", self.backoff_ratio, 0.5, 1.0, false)?;
        crate::config_util::positive("timeout", self.timeout)?;
        crate::config_util::at_most("timeout", self.timeout, crate::config_util::HOUR)
    }

    /// Builds the algorithm (validated first).
    pub fn build(&self) -> Result<Aimd, ConfigError> {
        self.validate()?;
        Ok(Aimd::from_valid(self))
    }
}

/// Builds an [`Aimd`] limit; [`build`](Self::build) validates.
#[derive(Clone, Debug, Default)]
pub struct AimdBuilder {
    config: AimdConfig,
}

impl AimdBuilder {
    /// The limit before any sample (default 20).
    pub fn initial_limit(mut self, limit: usize) -> Self {
        self.config.initial_limit = limit;
        self
    }

    /// The lowest limit (default 20, at least 1).
    pub fn min_limit(mut self, limit: usize) -> Self {
        self.config.min_limit = limit;
        self
    }

    /// The highest limit (default 200).
    pub fn max_limit(mut self, limit: usize) -> Self {
        self.config.max_limit = limit;
        self
    }

    /// The factor applied on a drop, in `[0.5, 1.0)` (default 0.9).
    pub fn backoff_ratio(mut self, ratio: f64) -> Self {
        self.config.backoff_ratio = ratio;
        self
    }

    /// A success slower than this counts as a drop (default 5 s).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self
    }

    /// The algorithm, or the first invalid setting.
    pub fn build(self) -> Result<Aimd, ConfigError> {
        self.config.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::concurrency::limit::test_support::{dropped, ignored, ok};

    // The scenarios of Netflix's `AIMDLimitTest.java`
    // (concurrency-limits-core/src/test/java/com/netflix/concurrency/limits/limit/).

    #[test]
    fn netflix_default_initial_limit() {
        let aimd = Aimd::builder()
            .initial_limit(10)
            .min_limit(10)
            .build()
            .unwrap();
        assert_eq!(aimd.initial_limit(), 10);
        assert_eq!(Aimd::default().initial_limit(), 20);
    }

    #[test]
    fn netflix_increase_on_success() {
        let mut aimd = Aimd::builder().initial_limit(20).build().unwrap();
        assert_eq!(aimd.update(&ok(1, 10)), 21);
    }

    #[test]
    fn netflix_decrease_on_drops() {
        let mut aimd = Aimd::builder().initial_limit(30).build().unwrap();
        assert_eq!(aimd.update(&dropped(0, 0)), 27);
    }

    #[test]
    fn netflix_success_overflow_stays_at_max() {
        let mut aimd = Aimd::builder()
            .initial_limit(21)
            .max_limit(21)
            .min_limit(1)
            .build()
            .unwrap();
        assert_eq!(aimd.update(&ok(1, 10)), 21);
    }

    #[test]
    fn grows_under_steady_low_latency_up_to_max() {
        let mut aimd = Aimd::default();
        for _ in 0..1000 {
            let limit = aimd.limit();
            aimd.update(&ok(10, limit));
        }
        assert_eq!(aimd.limit(), 200);
    }

    #[test]
    fn does_not_grow_while_idle() {
        let mut aimd = Aimd::default();
        for _ in 0..100 {
            aimd.update(&ok(10, 9));
        }
        assert_eq!(aimd.limit(), 20);
    }

    #[test]
    fn latency_above_timeout_is_a_drop() {
        let mut aimd = Aimd::builder()
            .initial_limit(100)
            .timeout(Duration::from_millis(50))
            .build()
            .unwrap();
        assert_eq!(aimd.update(&ok(50, 100)), 101);
        assert_eq!(aimd.update(&ok(51, 100)), 90);
    }

    #[test]
    fn drops_back_off_to_min_and_no_further() {
        let mut aimd = Aimd::builder().initial_limit(200).build().unwrap();
        for _ in 0..100 {
            aimd.update(&dropped(5, 200));
        }
        assert_eq!(aimd.limit(), 20);
    }

    #[test]
    fn ignored_is_no_sample() {
        let mut aimd = Aimd::builder().initial_limit(50).build().unwrap();
        for _ in 0..100 {
            assert_eq!(aimd.update(&ignored(10_000, 50)), 50);
        }
    }

    #[test]
    fn builder_names_the_bad_field() {
        let e = |b: AimdBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(e(Aimd::builder().initial_limit(10)), "initial_limit");
        assert_eq!(e(Aimd::builder().min_limit(0)), "min_limit");
        assert_eq!(e(Aimd::builder().max_limit(10)), "max_limit");
        assert_eq!(e(Aimd::builder().backoff_ratio(1.0)), "backoff_ratio");
        assert_eq!(e(Aimd::builder().backoff_ratio(0.4)), "backoff_ratio");
        assert_eq!(e(Aimd::builder().backoff_ratio(f64::NAN)), "backoff_ratio");
        assert_eq!(e(Aimd::builder().timeout(Duration::ZERO)), "timeout");
        assert_eq!(
            e(Aimd::builder().timeout(Duration::from_secs(7200))),
            "timeout"
        );
    }

    #[cfg(feature = "config")]
    #[test]
    fn config_reads_durations_and_refuses_unknown_fields() {
        let c: AimdConfig =
            serde_json::from_str(r#"{"timeout": "250ms", "backoff_ratio": 0.5}"#).unwrap();
        assert_eq!(c.timeout, Duration::from_millis(250));
        assert_eq!(c.min_limit, 20);
        assert!(c.build().is_ok());
        assert!(serde_json::from_str::<AimdConfig>(r#"{"limit": 3}"#).is_err());
        let c: AimdConfig = serde_json::from_str(r#"{"max_limit": 5}"#).unwrap();
        assert_eq!(c.validate().unwrap_err().field(), "max_limit");
    }
}
