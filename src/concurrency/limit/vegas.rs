//! [`Vegas`]: TCP Vegas applied to concurrency, the queue estimated from
//! the RTT against the no-load RTT.

use std::time::Duration;

use super::baseline::{MinRtt, ProbeSettings, Window};
use super::{LimitAlgorithm, Sample, check_bounds, check_range, whole};
use crate::ConfigError;

/// TCP Vegas for requests: from the RTT and the no-load RTT, estimate how
/// many requests are queued, `queue = ceil(limit * (1 - rtt_noload / rtt))`,
/// and keep it between `alpha` and `beta`.
///
/// The control law and its defaults are Netflix's `VegasLimit.java`
/// (concurrency-limits): `initial_limit` 20, `max_limit` 1000, `smoothing`
/// 1.0, `alpha = 3 * log10(limit)`, `beta = 6 * log10(limit)`, threshold
/// `log10(limit)` (each `log10` at least 1). Once per round trip in which
/// at least half the limit was in flight:
///
/// - `queue <= threshold`: grow fast, `limit + beta`;
/// - `queue < alpha`: grow, `limit + log10(limit)`;
/// - `queue > beta`: shrink, `limit - log10(limit)`;
/// - otherwise the limit is right.
///
/// The new limit is clamped to the bounds, then smoothed:
/// `(1 - smoothing) * limit + smoothing * new`.
///
/// # Where it differs from Netflix
///
/// Netflix's class updates on every sample, against the smallest RTT ever
/// seen, re-taken every `30 * limit` samples from whatever the next sample
/// is. Measured in the overload experiment (`benches/README.md`,
/// "Overload"), that wastes capacity: with service times spread over 15 to
/// 25 ms the fastest sample is 15 ms, most uncongested samples then look
/// queued, and the limit settled near 30 for a service of 50 workers (58 %
/// of capacity at every overload). So, as [`Gradient2`](super::Gradient2):
///
/// - `rtt` is the **mean RTT of a round trip** (a window of `limit`
///   samples; Netflix's `WindowedLimit`, Envoy's sampling window), and the
///   limit moves once per round trip;
/// - `rtt_noload` is the **median RTT at pinned low concurrency**, Envoy's
///   minRTT: the limit is pinned to `probe_limit` (3) until `probe_samples`
///   (50) requests admitted with at most that many in flight have
///   completed; then it resumes where it was. This happens at the start
///   (so [`initial_limit`](LimitAlgorithm::initial_limit) is
///   `probe_limit`), every `probe_interval` round trips (2000, shortened
///   at random by up to `probe_jitter`, 0.1), and early when the limit has
///   sat at `min_limit` for 5 round trips: a service that got permanently
///   slower is re-learned within `probe_interval` round trips at most. Netflix's re-probe, which takes the next RTT as
///   the no-load RTT, would under sustained overload take a queued RTT and
///   let latency ratchet upward with every probe;
/// - a [`Dropped`](super::Outcome::Dropped) request multiplies the limit by
///   `backoff_ratio` (0.9, as [`Aimd`](super::Aimd)) once per round trip,
///   instead of subtracting `log10(limit)`: a strong back-off; an
///   [`Ignored`](super::Outcome::Ignored) one is no sample; and a `min_limit`
///   bound exists (default 1, Netflix's floor).
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
/// assert_eq!(vegas.initial_limit(), 3); // measuring the no-load RTT first
/// for _ in 0..50 {
///     vegas.update(&sample(10, 1));
/// }
/// assert_eq!(vegas.limit(), 10);
/// // One round trip (10 samples) with no queue: + beta (6 * log10(10)).
/// for _ in 0..10 {
///     vegas.update(&sample(10, 10));
/// }
/// assert_eq!(vegas.limit(), 16);
/// # Ok::<(), tower_rampart::ConfigError>(())
/// ```
#[derive(Clone, Debug)]
pub struct Vegas {
    config: VegasConfig,
    limit: f64,
    rtt_noload: MinRtt,
    window: Window,
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
        if self.rtt_noload.is_probing() {
            self.rtt_noload.probe_limit()
        } else {
            whole(self.limit)
        }
    }

    /// The no-load RTT the queue is estimated against (`None` until the
    /// first probe ends).
    pub fn rtt_noload(&self) -> Option<Duration> {
        self.rtt_noload.get()
    }

    /// Whether the no-load RTT is being measured (the limit is pinned to
    /// `probe_limit`).
    pub fn is_probing(&self) -> bool {
        self.rtt_noload.is_probing()
    }

    fn from_valid(config: &VegasConfig) -> Self {
        Self {
            config: config.clone(),
            limit: config.initial_limit as f64,
            rtt_noload: MinRtt::new(config.probe_settings()),
            window: Window::default(),
        }
    }

    fn clamp(&self, limit: f64) -> f64 {
        limit.clamp(self.config.min_limit as f64, self.config.max_limit as f64)
    }

    /// One round trip's worth of samples is in: move the limit once.
    fn end_window(&mut self) {
        let window = std::mem::take(&mut self.window);
        let Some(noload) = self.rtt_noload.nanos() else {
            unreachable!("not probing, so a no-load RTT was measured");
        };
        let in_use = window.in_use(self.limit);
        if window.drops > 0 {
            // One back-off per round trip, however many requests of it
            // were dropped (TCP's one reduction per window); no smoothing.
            self.limit = self.clamp(self.limit * self.config.backoff_ratio);
        } else if let (true, Some(rtt)) = (in_use, window.mean_rtt()) {
            let limit = self.limit;
            let queue = (limit * (1.0 - noload / rtt)).ceil();
            let log = log10(limit);
            let alpha = self.config.alpha.map_or(3.0 * log, |a| a as f64);
            let beta = self.config.beta.map_or(6.0 * log, |b| b as f64);
            let new = if queue <= log {
                Some(limit + beta)
            } else if queue < alpha {
                Some(limit + log)
            } else if queue > beta {
                Some(limit - log)
            } else {
                None
            };
            if let Some(new) = new {
                let s = self.config.smoothing;
                self.limit = (1.0 - s) * limit + s * self.clamp(new);
            }
        }
        let stuck = self.limit <= self.config.min_limit as f64 && (in_use || window.drops > 0);
        self.rtt_noload.end_round(stuck);
    }
}

impl Default for Vegas {
    /// Netflix's defaults with Envoy's probing (see the type docs).
    fn default() -> Self {
        Self::from_valid(&VegasConfig::default())
    }
}

impl LimitAlgorithm for Vegas {
    /// `probe_limit`: the algorithm starts by measuring the no-load RTT.
    fn initial_limit(&self) -> usize {
        self.rtt_noload.probe_limit()
    }

    fn update(&mut self, sample: &Sample) -> usize {
        if self.rtt_noload.is_probing() {
            self.rtt_noload.feed(sample);
        } else if self.window.add(sample, whole(self.limit)) {
            self.end_window();
        }
        self.limit()
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
/// assert!(config.build()?.is_probing());
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
    /// The limit while the no-load RTT is measured (default 3, at least 1,
    /// at most `max_limit`).
    pub probe_limit: usize,
    /// Successes at `probe_limit` whose median is the no-load RTT (default
    /// 50).
    pub probe_samples: usize,
    /// Round trips between measurements (default 2000).
    pub probe_interval: u32,
    /// The fraction of that interval taken off at random, in `[0, 1)`
    /// (default 0.1).
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
            probe_limit: 3,
            probe_samples: 50,
            probe_interval: 2000,
            probe_jitter: 0.1,
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
        check_range("backoff_ratio", self.backoff_ratio, 0.5, 1.0, false)?;
        self.probe_settings().validate(self.max_limit)
    }

    fn probe_settings(&self) -> ProbeSettings {
        ProbeSettings {
            limit: self.probe_limit,
            samples: self.probe_samples,
            interval: self.probe_interval,
            jitter: self.probe_jitter,
        }
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

    /// The limit while the no-load RTT is measured (default 3).
    pub fn probe_limit(mut self, limit: usize) -> Self {
        self.config.probe_limit = limit;
        self
    }

    /// Successes whose median is the no-load RTT (default 50).
    pub fn probe_samples(mut self, samples: usize) -> Self {
        self.config.probe_samples = samples;
        self
    }

    /// Round trips between measurements (default 2000).
    pub fn probe_interval(mut self, rounds: u32) -> Self {
        self.config.probe_interval = rounds;
        self
    }

    /// The fraction of the probe interval taken off at random, in `[0, 1)`
    /// (default 0.1; 0 makes probing exactly periodic).
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
    use crate::concurrency::limit::Outcome;
    use crate::concurrency::limit::test_support::{dropped, ignored, ok};

    /// `builder` with its no-load RTT measured at `ms`.
    fn measured(builder: VegasBuilder, ms: u64) -> Vegas {
        let mut v = builder.probe_jitter(0.0).build().unwrap();
        for _ in 0..50 {
            v.update(&ok(ms, 1));
        }
        assert!(!v.is_probing());
        v
    }

    /// Feeds one round trip (`limit` samples) of `rtt_ms` with `in_flight`.
    fn round(v: &mut Vegas, rtt_ms: u64, in_flight: usize) -> usize {
        for _ in 0..v.limit() {
            v.update(&ok(rtt_ms, in_flight));
        }
        v.limit()
    }

    /// Netflix's `VegasLimitTest.create()`, its no-load RTT 10 ms.
    fn netflix() -> Vegas {
        measured(
            Vegas::builder()
                .alpha(3)
                .beta(6)
                .smoothing(1.0)
                .initial_limit(10)
                .max_limit(20),
            10,
        )
    }

    // The scenarios of Netflix's `VegasLimitTest.java`
    // (concurrency-limits-core/src/test/java/com/netflix/concurrency/limits/limit/),
    // one Netflix sample becoming one round trip of samples; Netflix's
    // first sample (which sets the no-load RTT) becoming the probe.

    #[test]
    fn netflix_large_limit_increase() {
        let mut v = measured(
            Vegas::builder().initial_limit(10_000).max_limit(20_000),
            10_000,
        );
        assert_eq!(v.limit(), 10_000);
        assert_eq!(round(&mut v, 10_000, 6000), 10_024);
    }

    #[test]
    fn netflix_increase_limit() {
        let mut v = netflix();
        assert_eq!(v.limit(), 10);
        assert_eq!(round(&mut v, 10, 11), 16);
    }

    #[test]
    fn netflix_decrease_limit() {
        let mut v = netflix();
        assert_eq!(round(&mut v, 50, 11), 9);
    }

    #[test]
    fn netflix_no_change_if_within_thresholds() {
        let mut v = netflix();
        assert_eq!(round(&mut v, 14, 14), 10);
    }

    #[test]
    fn netflix_decrease_smoothing() {
        // Netflix halves with a custom decrease function; with the default
        // one (`- log10`) the smoothing arithmetic is the same check:
        // 100 -> (100 + 98) / 2 = 99 -> (99 + 98) / 2 = 98.5.
        let mut v = measured(
            Vegas::builder()
                .smoothing(0.5)
                .initial_limit(100)
                .max_limit(200),
            10,
        );
        assert_eq!(round(&mut v, 20, 100), 99);
        assert_eq!(round(&mut v, 20, 100), 98);
    }

    #[test]
    fn moves_once_per_round_trip() {
        let mut v = netflix();
        for _ in 0..9 {
            assert_eq!(v.update(&ok(10, 10)), 10);
        }
        assert_eq!(v.update(&ok(10, 10)), 16);
    }

    #[test]
    fn grows_under_steady_low_latency() {
        let mut v = measured(Vegas::builder(), 10);
        let mut last = v.limit();
        for _ in 0..30 {
            let l = v.limit();
            let now = round(&mut v, 10, l);
            assert!(now > last, "{now} > {last}");
            last = now;
        }
        assert!(last > 200, "{last}");
    }

    #[test]
    fn does_not_grow_while_idle() {
        let mut v = measured(Vegas::builder(), 10);
        for _ in 0..20 {
            round(&mut v, 10, 9);
        }
        assert_eq!(v.limit(), 20);
    }

    #[test]
    fn shrinks_when_latency_rises() {
        let mut v = measured(Vegas::builder().initial_limit(100), 10);
        let mut last = v.limit();
        for _ in 0..20 {
            let l = v.limit();
            let now = round(&mut v, 30, l);
            assert!(now < last, "{now} < {last}");
            last = now;
        }
        assert!(last < 85, "{last}");
    }

    #[test]
    fn settles_with_a_short_queue() {
        // 50 workers taking 10 ms: with `limit` in flight the RTT is
        // 10 ms * max(1, limit / 50). Vegas keeps alpha..beta queued.
        let mut v = measured(Vegas::builder(), 10);
        for _ in 0..200 {
            let l = v.limit();
            let rtt = Duration::from_secs_f64(0.010 * (l as f64 / 50.0).max(1.0));
            for _ in 0..l {
                v.update(&Sample {
                    rtt,
                    in_flight: l,
                    outcome: Outcome::Success,
                });
            }
        }
        let l = v.limit();
        assert!((50..=60).contains(&l), "{l}");
    }

    #[test]
    fn drops_back_off_strongly_once_per_round_trip_and_respect_min() {
        let mut v = measured(Vegas::builder().initial_limit(100).min_limit(10), 10);
        for i in 0..100 {
            if i % 10 == 0 {
                v.update(&dropped(10, 100));
            } else {
                v.update(&ok(10, 100));
            }
        }
        assert_eq!(v.limit(), 90);
        while v.limit() > 10 {
            let l = v.limit();
            for _ in 0..l {
                v.update(&dropped(10, l));
            }
        }
        assert_eq!(v.limit(), 10);
    }

    #[test]
    fn ignored_is_no_sample() {
        let mut v = netflix();
        for _ in 0..1000 {
            assert_eq!(v.update(&ignored(1, 10)), 10);
        }
        assert_eq!(v.rtt_noload(), Some(Duration::from_millis(10)));
    }

    #[test]
    fn respects_max() {
        let mut v = netflix();
        for _ in 0..10 {
            round(&mut v, 10, 20);
        }
        assert_eq!(v.limit(), 20);
    }

    #[test]
    fn relearns_a_service_that_got_permanently_slower() {
        let mut v = measured(Vegas::builder().probe_interval(200), 10);
        // The service is now 4x slower for good. Vegas reads the extra
        // latency as a queue and shrinks to where `queue` is within
        // alpha..beta (about 8), until the next probe re-measures the
        // no-load RTT and the limit grows again.
        let mut rounds = 0;
        while !v.is_probing() {
            let l = v.limit();
            round(&mut v, 40, l);
            rounds += 1;
            assert!(rounds <= 200, "no probe after {rounds} round trips");
        }
        assert!(v.limit() <= 3);
        for _ in 0..50 {
            v.update(&ok(40, 1));
        }
        assert_eq!(v.rtt_noload(), Some(Duration::from_millis(40)));
        for _ in 0..30 {
            let l = v.limit();
            round(&mut v, 40, l);
        }
        assert!(v.limit() > 100, "{}", v.limit());
    }

    #[test]
    fn relearns_early_when_stuck_at_min() {
        let mut v = measured(Vegas::builder().min_limit(15), 10);
        let mut rounds = 0;
        while !v.is_probing() {
            let l = v.limit();
            round(&mut v, 40, l);
            rounds += 1;
            assert!(rounds <= 20, "no probe after {rounds} round trips");
        }
    }

    #[test]
    fn reprobes_periodically() {
        let mut v = measured(Vegas::builder().max_limit(20).probe_interval(10), 10);
        let mut samples = 0;
        while !v.is_probing() {
            v.update(&ok(10, 20));
            samples += 1;
            assert!(samples <= 200, "no probe after {samples} samples");
        }
        assert_eq!(samples, 200);
        for _ in 0..50 {
            v.update(&ok(4, 3));
        }
        assert_eq!(v.rtt_noload(), Some(Duration::from_millis(4)));
    }

    #[test]
    fn builder_names_the_bad_field() {
        let e = |b: VegasBuilder| b.build().unwrap_err().field().to_owned();
        assert_eq!(e(Vegas::builder().initial_limit(2000)), "initial_limit");
        assert_eq!(e(Vegas::builder().smoothing(0.0)), "smoothing");
        assert_eq!(e(Vegas::builder().smoothing(1.5)), "smoothing");
        assert_eq!(e(Vegas::builder().alpha(5).beta(4)), "beta");
        assert_eq!(e(Vegas::builder().probe_limit(0)), "probe_limit");
        assert_eq!(e(Vegas::builder().probe_samples(0)), "probe_samples");
        assert_eq!(e(Vegas::builder().probe_interval(0)), "probe_interval");
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
