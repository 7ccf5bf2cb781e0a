//! Settings of a circuit breaker, their defaults and their validation.
//!
//! About 310 lines of code; the rest (past 500 in all) are the unit tests
//! of the validation, kept next to the rules they check.

use std::time::Duration;

use crate::ConfigError;
use crate::config_util::{DAY, HOUR, at_most};

/// How the breaker remembers recent calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(
    feature = "config",
    serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)
)]
pub enum SlidingWindow {
    /// The last `size` calls.
    Count {
        /// How many calls the window holds.
        size: u32,
    },
    /// The calls of the last `duration`, kept in `buckets` buckets of
    /// `duration / buckets` each: memory is proportional to the bucket count,
    /// not to the number of calls. The oldest bucket is dropped whole when a
    /// new one starts.
    Time {
        /// How far back the window reaches (at most 24 h).
        #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
        duration: Duration,
        /// How many buckets the window is cut into (default 10).
        #[cfg_attr(feature = "config", serde(default = "default_buckets"))]
        buckets: u32,
    },
}

#[cfg(feature = "config")]
fn default_buckets() -> u32 {
    10
}

impl Default for SlidingWindow {
    fn default() -> Self {
        SlidingWindow::Count { size: 100 }
    }
}

/// Exponential growth of the open duration on each consecutive re-open.
///
/// The `n`-th consecutive opening (counting from 0) lasts
/// `open_duration * multiplier^n`, capped at `max`, then spread by
/// `± jitter` (a fraction: `0.1` is ±10 %). The count resets once the
/// circuit closes.
#[derive(Debug, Clone, Copy, PartialEq)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(deny_unknown_fields))]
pub struct Backoff {
    /// Growth factor per re-open, at least 1 (default 2).
    #[cfg_attr(feature = "config", serde(default = "default_multiplier"))]
    pub multiplier: f64,
    /// The longest an opening may last (at most 24 h).
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub max: Duration,
    /// Random spread, a fraction in `[0, 1)` (default 0).
    #[cfg_attr(feature = "config", serde(default))]
    pub jitter: f64,
}

#[cfg(feature = "config")]
fn default_multiplier() -> f64 {
    2.0
}

/// All settings of a circuit breaker, deserialisable from a config file
/// (behind the `config` feature) and validated by [`build`](Self::build).
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::circuit_breaker::{CircuitBreakerConfig, SlidingWindow};
///
/// let config = CircuitBreakerConfig {
///     name: "payments".into(),
///     window: SlidingWindow::Count { size: 20 },
///     minimum_calls: 10,
///     open_duration: Duration::from_secs(5),
///     ..CircuitBreakerConfig::default()
/// };
/// let layer = config.clone().build().unwrap();
/// assert_eq!(layer.handle().name(), "payments");
///
/// let bad = CircuitBreakerConfig { minimum_calls: 50, ..config };
/// assert_eq!(bad.build().unwrap_err().field(), "minimum_calls");
/// ```
///
/// In TOML (with the `config` feature):
///
/// ```toml
/// name = "payments"
/// failure_rate_threshold = 50.0
/// slow_call_duration_threshold = "2s"
/// window = { type = "time", duration = "60s", buckets = 12 }
/// minimum_calls = 20
/// open_duration = "5s"
/// backoff = { multiplier = 2.0, max = "2m", jitter = 0.1 }
/// half_open_permits = 3
/// ignore_statuses = [429]
/// ```
#[derive(Debug, Clone, PartialEq)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
pub struct CircuitBreakerConfig {
    /// The name labelling metrics, events and refusals (default
    /// `"circuit_breaker"`).
    pub name: String,
    /// Trip when the failure rate, in percent, is at least this (default 50).
    pub failure_rate_threshold: f32,
    /// Trip when the slow-call rate, in percent, is at least this (default
    /// 100). Only used with a slow-call duration threshold.
    pub slow_call_rate_threshold: f32,
    /// A call is slow when it takes longer than this (default: none, no call
    /// is slow and the breaker never reads the clock on the happy path; at
    /// most 1 h).
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::opt_duration"))]
    pub slow_call_duration_threshold: Option<Duration>,
    /// Trip after this many failures in a row, whatever the window says
    /// (default: off).
    pub consecutive_failures: Option<u32>,
    /// The sliding window (default: the last 100 calls).
    pub window: SlidingWindow,
    /// Rates are judged only once the window holds this many calls
    /// (default 10).
    pub minimum_calls: u32,
    /// How long the circuit stays open before trial calls (default 30 s, at
    /// most 1 h).
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub open_duration: Duration,
    /// Move from open to half-open on a timer, as soon as the open duration
    /// is over (default `false`: the first call after it starts half-open,
    /// as in Resilience4j). Turn it on when something reads the state
    /// without sending calls, e.g. a dashboard; either way a quiet period
    /// never re-opens the circuit or grows the backoff.
    pub auto_half_open: bool,
    /// Grow the open duration on consecutive re-opens (default: fixed).
    pub backoff: Option<Backoff>,
    /// Trial calls let through in half-open (default 5).
    pub half_open_permits: u32,
    /// The longest a half-open circuit waits for a trial call in flight
    /// (default 60 s, at most 1 h), counted from the first trial: if one is still
    /// running then, the circuit re-opens, so hung trials can never stick
    /// it. A half-open circuit with no trial in flight is not stuck and
    /// stays half-open until the next call.
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub max_wait_in_half_open: Duration,
    /// HTTP statuses that say nothing about the service's health (e.g.
    /// `[429]`): such responses are neither successes nor failures, whatever
    /// the classifier says (default: none). Added to the classifier set
    /// with [`CircuitBreakerBuilder::classifier`](super::CircuitBreakerBuilder::classifier).
    pub ignore_statuses: Vec<u16>,
    /// Keyed breakers only: the most keys kept at once (default 10 000).
    /// With the stack's per-route breakers, the routes not declared in
    /// `routes` only: a declared route's breaker is kept apart.
    pub max_keys: usize,
    /// Keyed breakers only: a key unused this long may be evicted
    /// (default 10 min, at most 24 h). With the stack's per-route
    /// breakers, a declared route's breaker is never evicted.
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub key_idle_timeout: Duration,
}

impl Default for CircuitBreakerConfig {
    fn default() -> Self {
        Self {
            name: "circuit_breaker".into(),
            failure_rate_threshold: 50.0,
            slow_call_rate_threshold: 100.0,
            slow_call_duration_threshold: None,
            consecutive_failures: None,
            window: SlidingWindow::default(),
            minimum_calls: 10,
            open_duration: Duration::from_secs(30),
            auto_half_open: false,
            backoff: None,
            half_open_permits: 5,
            max_wait_in_half_open: Duration::from_secs(60),
            ignore_statuses: Vec::new(),
            max_keys: 10_000,
            key_idle_timeout: Duration::from_secs(600),
        }
    }
}

fn rate(field: &'static str, v: f32) -> Result<(), ConfigError> {
    if v.is_finite() && v > 0.0 && v <= 100.0 {
        Ok(())
    } else {
        Err(ConfigError::new(field, "must be in (0, 100]"))
    }
}

use crate::config_util::positive;

impl CircuitBreakerConfig {
    /// Checks every setting; the error names the first bad field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        rate("failure_rate_threshold", self.failure_rate_threshold)?;
        rate("slow_call_rate_threshold", self.slow_call_rate_threshold)?;
        if let Some(d) = self.slow_call_duration_threshold {
            positive("slow_call_duration_threshold", d)?;
            at_most("slow_call_duration_threshold", d, HOUR)?;
        }
        if self.consecutive_failures == Some(0) {
            return Err(ConfigError::new(
                "consecutive_failures",
                "must be greater than 0",
            ));
        }
        match self.window {
            SlidingWindow::Count { size } => {
                if size == 0 {
                    return Err(ConfigError::new("window.size", "must be greater than 0"));
                }
                if size > 1_000_000 {
                    return Err(ConfigError::new("window.size", "must be at most 1000000"));
                }
                if self.minimum_calls > size {
                    return Err(ConfigError::new(
                        "minimum_calls",
                        "must not exceed the count window's size",
                    ));
                }
            }
            SlidingWindow::Time { duration, buckets } => {
                positive("window.duration", duration)?;
                at_most("window.duration", duration, DAY)?;
                if buckets == 0 || buckets > 10_000 {
                    return Err(ConfigError::new("window.buckets", "must be in 1..=10000"));
                }
                if duration.as_nanos() < u128::from(buckets) {
                    return Err(ConfigError::new(
                        "window.buckets",
                        "must not exceed the window's duration in nanoseconds",
                    ));
                }
            }
        }
        if self.minimum_calls == 0 {
            return Err(ConfigError::new("minimum_calls", "must be at least 1"));
        }
        positive("open_duration", self.open_duration)?;
        at_most("open_duration", self.open_duration, HOUR)?;
        if let Some(b) = &self.backoff {
            if !(b.multiplier.is_finite() && b.multiplier >= 1.0) {
                return Err(ConfigError::new("backoff.multiplier", "must be at least 1"));
            }
            at_most("backoff.max", b.max, DAY)?;
            if b.max < self.open_duration {
                return Err(ConfigError::new(
                    "backoff.max",
                    "must be at least open_duration",
                ));
            }
            if !(b.jitter.is_finite() && (0.0..1.0).contains(&b.jitter)) {
                return Err(ConfigError::new("backoff.jitter", "must be in [0, 1)"));
            }
        }
        if self.half_open_permits == 0 {
            return Err(ConfigError::new(
                "half_open_permits",
                "must be greater than 0",
            ));
        }
        positive("max_wait_in_half_open", self.max_wait_in_half_open)?;
        at_most("max_wait_in_half_open", self.max_wait_in_half_open, HOUR)?;
        if self
            .ignore_statuses
            .iter()
            .any(|s| http::StatusCode::from_u16(*s).is_err())
        {
            return Err(ConfigError::new(
                "ignore_statuses",
                "must hold HTTP statuses (100 to 999)",
            ));
        }
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be greater than 0"));
        }
        positive("key_idle_timeout", self.key_idle_timeout)?;
        at_most("key_idle_timeout", self.key_idle_timeout, DAY)?;
        Ok(())
    }

    /// Validates the settings and builds the layer (in [`HttpMode`]).
    ///
    /// [`HttpMode`]: crate::rejection::HttpMode
    pub fn build(self) -> Result<super::CircuitBreakerLayer, ConfigError> {
        super::CircuitBreakerBuilder::from_config(self).build()
    }
}

impl TryFrom<CircuitBreakerConfig> for super::CircuitBreakerLayer {
    type Error = ConfigError;

    fn try_from(config: CircuitBreakerConfig) -> Result<Self, ConfigError> {
        config.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(c: CircuitBreakerConfig) -> String {
        c.validate().unwrap_err().field().to_owned()
    }

    #[test]
    fn defaults_are_valid() {
        CircuitBreakerConfig::default().validate().unwrap();
    }

    #[test]
    fn errors_name_the_field() {
        let d = CircuitBreakerConfig::default;
        for bad in [0.0, -1.0, 100.5, f32::NAN] {
            let c = CircuitBreakerConfig {
                failure_rate_threshold: bad,
                ..d()
            };
            assert_eq!(field(c), "failure_rate_threshold");
        }
        let c = CircuitBreakerConfig {
            failure_rate_threshold: 100.0,
            ..d()
        };
        c.validate().unwrap();
        let c = CircuitBreakerConfig {
            slow_call_rate_threshold: 0.0,
            ..d()
        };
        assert_eq!(field(c), "slow_call_rate_threshold");
        let c = CircuitBreakerConfig {
            window: SlidingWindow::Count { size: 0 },
            ..d()
        };
        assert_eq!(field(c), "window.size");
        let c = CircuitBreakerConfig {
            window: SlidingWindow::Count { size: 5 },
            minimum_calls: 6,
            ..d()
        };
        assert_eq!(field(c), "minimum_calls");
        let c = CircuitBreakerConfig {
            minimum_calls: 0,
            ..d()
        };
        assert_eq!(field(c), "minimum_calls");
        let c = CircuitBreakerConfig {
            window: SlidingWindow::Time {
                duration: Duration::ZERO,
                buckets: 10,
            },
            ..d()
        };
        assert_eq!(field(c), "window.duration");
        let c = CircuitBreakerConfig {
            window: SlidingWindow::Time {
                duration: Duration::from_secs(1),
                buckets: 0,
            },
            ..d()
        };
        assert_eq!(field(c), "window.buckets");
        let c = CircuitBreakerConfig {
            open_duration: Duration::ZERO,
            ..d()
        };
        assert_eq!(field(c), "open_duration");
        let c = CircuitBreakerConfig {
            slow_call_duration_threshold: Some(Duration::ZERO),
            ..d()
        };
        assert_eq!(field(c), "slow_call_duration_threshold");
        let c = CircuitBreakerConfig {
            max_wait_in_half_open: Duration::ZERO,
            ..d()
        };
        assert_eq!(field(c), "max_wait_in_half_open");
        let c = CircuitBreakerConfig {
            half_open_permits: 0,
            ..d()
        };
        assert_eq!(field(c), "half_open_permits");
        let c = CircuitBreakerConfig {
            consecutive_failures: Some(0),
            ..d()
        };
        assert_eq!(field(c), "consecutive_failures");
        let b = Backoff {
            multiplier: 2.0,
            max: Duration::from_secs(60),
            jitter: 0.0,
        };
        let c = CircuitBreakerConfig {
            backoff: Some(Backoff {
                multiplier: 0.5,
                ..b
            }),
            ..d()
        };
        assert_eq!(field(c), "backoff.multiplier");
        let c = CircuitBreakerConfig {
            backoff: Some(Backoff {
                max: Duration::from_secs(1),
                ..b
            }),
            ..d()
        };
        assert_eq!(field(c), "backoff.max");
        let c = CircuitBreakerConfig {
            backoff: Some(Backoff { jitter: 1.0, ..b }),
            ..d()
        };
        assert_eq!(field(c), "backoff.jitter");
        for bad in [0, 99, 1000, u16::MAX] {
            let c = CircuitBreakerConfig {
                ignore_statuses: vec![429, bad],
                ..d()
            };
            assert_eq!(field(c), "ignore_statuses");
        }
        let c = CircuitBreakerConfig { max_keys: 0, ..d() };
        assert_eq!(field(c), "max_keys");
        let c = CircuitBreakerConfig {
            name: String::new(),
            ..d()
        };
        assert_eq!(field(c), "name");
    }

    #[test]
    fn durations_have_upper_bounds() {
        let d = CircuitBreakerConfig::default;
        let big = Duration::from_secs(100 * 3600);
        let cases = [
            (
                CircuitBreakerConfig {
                    open_duration: big,
                    ..d()
                },
                "open_duration",
            ),
            (
                CircuitBreakerConfig {
                    slow_call_duration_threshold: Some(big),
                    ..d()
                },
                "slow_call_duration_threshold",
            ),
            (
                CircuitBreakerConfig {
                    window: SlidingWindow::Time {
                        duration: big,
                        buckets: 10,
                    },
                    ..d()
                },
                "window.duration",
            ),
            (
                CircuitBreakerConfig {
                    backoff: Some(Backoff {
                        multiplier: 2.0,
                        max: big,
                        jitter: 0.0,
                    }),
                    ..d()
                },
                "backoff.max",
            ),
            (
                CircuitBreakerConfig {
                    max_wait_in_half_open: big,
                    ..d()
                },
                "max_wait_in_half_open",
            ),
            (
                CircuitBreakerConfig {
                    key_idle_timeout: big,
                    ..d()
                },
                "key_idle_timeout",
            ),
        ];
        for (c, want) in cases {
            let e = c.validate().unwrap_err();
            assert_eq!(e.field(), want);
            assert!(e.message().starts_with("must be at most"), "{e}");
        }
        // The bounds themselves are allowed.
        CircuitBreakerConfig {
            open_duration: Duration::from_secs(3600),
            backoff: Some(Backoff {
                multiplier: 2.0,
                max: Duration::from_secs(86_400),
                jitter: 0.0,
            }),
            ..d()
        }
        .validate()
        .unwrap();
    }

    #[cfg(feature = "config")]
    #[test]
    fn deserialises() {
        let c: CircuitBreakerConfig = serde_json::from_str(
            r#"{"name":"db","slow_call_duration_threshold":"250ms",
                "window":{"type":"time","duration":"60s","buckets":12},
                "minimum_calls":5,"open_duration":"5s",
                "backoff":{"max":"2m","jitter":0.1}}"#,
        )
        .unwrap();
        assert_eq!(c.name, "db");
        assert_eq!(
            c.slow_call_duration_threshold,
            Some(Duration::from_millis(250))
        );
        assert_eq!(
            c.window,
            SlidingWindow::Time {
                duration: Duration::from_secs(60),
                buckets: 12
            }
        );
        assert_eq!(c.backoff.unwrap().multiplier, 2.0);
        assert!(!c.auto_half_open);
        assert!(c.ignore_statuses.is_empty());
        c.validate().unwrap();
        let c: CircuitBreakerConfig =
            serde_json::from_str(r#"{"auto_half_open":true,"ignore_statuses":[429,503]}"#).unwrap();
        assert!(c.auto_half_open);
        assert_eq!(c.ignore_statuses, [429, 503]);
        let c: CircuitBreakerConfig =
            serde_json::from_str(r#"{"window":{"type":"count","size":7},"minimum_calls":7}"#)
                .unwrap();
        assert_eq!(c.window, SlidingWindow::Count { size: 7 });
        assert!(serde_json::from_str::<CircuitBreakerConfig>(r#"{"nope":1}"#).is_err());
    }
}
