//! The config of the concurrency limit (feature `config`): the
//! `[concurrency]` section of a config file.

use std::time::Duration;

use http::HeaderName;

use super::ConcurrencyLimitLayer;
use super::layer::{DEFAULT_NAME, MAX_QUEUE_LEN, validate_shares};
use super::limit::{AimdConfig, Fixed, Gradient2Config, VegasConfig};
use super::partition::Criticality;
use super::queue::QueueOrder;
use crate::ConfigError;
use crate::config_util::{HOUR, MINUTE, MUST_NOT_BE_EMPTY, at_most, positive};

/// The settings of a [`ConcurrencyLimitLayer`], as read from a config
/// file. Every key is optional: the default is a Gradient2 limit with
/// Netflix's defaults, no queue and no partitions.
///
/// ```toml
/// [concurrency]
/// name = "api"
/// retry_after = "1s"
///
/// [concurrency.limit]
/// algorithm = "gradient2"      # fixed | aimd | vegas | gradient2
/// max_limit = 500              # the algorithm's own keys
///
/// [concurrency.queue]          # optional: wait instead of refusing at once
/// max_len = 50
/// max_wait = "20ms"
/// order = "lifo"               # lifo | fifo
///
/// [concurrency.partitions]     # optional: shares of the limit per class
/// header = "x-criticality"     # set by a trusted proxy only, see trust_header
/// trust_header = false
/// critical = 0.5
/// default = 0.3
/// sheddable = 0.0
/// ```
///
/// ```
/// use tower_rampart::concurrency::ConcurrencyConfig;
///
/// let config: ConcurrencyConfig = toml::from_str(r#"
///     limit = { algorithm = "fixed", limit = 64 }
///     queue = { max_len = 10, max_wait = "5ms" }
/// "#).unwrap();
/// let layer = config.build().unwrap();
/// assert_eq!(layer.limit(), 64);
/// ```
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyConfig {
    /// The name that labels metrics and events (default `"concurrency"`).
    #[serde(default = "default_name")]
    pub name: String,
    /// `Retry-After` of the refusals (default `"1s"`).
    #[serde(default = "default_retry_after", with = "crate::config_util::duration")]
    pub retry_after: Duration,
    /// The limit algorithm and its settings (default Gradient2).
    #[serde(default)]
    pub limit: LimitConfig,
    /// The wait queue; without it, refusals are immediate.
    #[serde(default)]
    pub queue: Option<QueueConfig>,
    /// Shares of the limit per criticality class; without it, one class.
    #[serde(default)]
    pub partitions: Option<PartitionsConfig>,
}

fn default_name() -> String {
    DEFAULT_NAME.to_owned()
}

fn default_retry_after() -> Duration {
    Duration::from_secs(1)
}

impl Default for ConcurrencyConfig {
    fn default() -> Self {
        Self {
            name: default_name(),
            retry_after: default_retry_after(),
            limit: LimitConfig::default(),
            queue: None,
            partitions: None,
        }
    }
}

/// The limit algorithm, chosen by the `algorithm` key; the other keys are
/// the algorithm's own (see [`AimdConfig`], [`VegasConfig`],
/// [`Gradient2Config`]).
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(tag = "algorithm", rename_all = "lowercase")]
pub enum LimitConfig {
    /// A fixed limit (a bulkhead).
    Fixed(FixedConfig),
    /// Additive increase, multiplicative decrease.
    Aimd(AimdConfig),
    /// TCP Vegas: queueing estimated from RTT against the no-load RTT.
    Vegas(VegasConfig),
    /// Netflix's Gradient2 (the default).
    Gradient2(Gradient2Config),
}

impl Default for LimitConfig {
    fn default() -> Self {
        LimitConfig::Gradient2(Gradient2Config::default())
    }
}

/// A fixed limit's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FixedConfig {
    /// Requests in flight at most (at least 1).
    pub limit: usize,
}

/// The wait queue's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QueueConfig {
    /// Requests waiting at most (1 to 100 000).
    pub max_len: usize,
    /// The longest wait (`"20ms"`; at most one minute).
    #[serde(with = "crate::config_util::duration")]
    pub max_wait: Duration,
    /// Which waiter is served first (default `"lifo"`).
    #[serde(default)]
    pub order: QueueOrder,
}

/// The criticality classes' settings.
#[derive(Debug, Clone, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PartitionsConfig {
    /// The header carrying the class (`critical`, `default`,
    /// `sheddable`); without it every request is `default`.
    #[serde(default)]
    pub header: Option<String>,
    /// Whether the header may select `critical` (default `false`: only a
    /// proxy you run that strips clients' values should be trusted).
    #[serde(default)]
    pub trust_header: bool,
    /// The guaranteed share of `critical` (default 0.5).
    #[serde(default = "default_critical")]
    pub critical: f64,
    /// The guaranteed share of `default` (default 0.3).
    #[serde(default = "default_default")]
    pub default: f64,
    /// The guaranteed share of `sheddable` (default 0).
    #[serde(default)]
    pub sheddable: f64,
}

fn default_critical() -> f64 {
    0.5
}

fn default_default() -> f64 {
    0.3
}

impl ConcurrencyConfig {
    /// Checks every setting without building anything (no metric is
    /// registered); the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", MUST_NOT_BE_EMPTY));
        }
        positive("retry_after", self.retry_after)?;
        at_most("retry_after", self.retry_after, HOUR)?;
        match &self.limit {
            LimitConfig::Fixed(f) if f.limit == 0 => {
                return Err(ConfigError::new("limit.limit", "must be at least 1"));
            }
            LimitConfig::Fixed(_) => {}
            LimitConfig::Aimd(c) => c.validate().map_err(|e| e.at("limit"))?,
            LimitConfig::Vegas(c) => c.validate().map_err(|e| e.at("limit"))?,
            LimitConfig::Gradient2(c) => c.validate().map_err(|e| e.at("limit"))?,
        }
        if let Some(q) = &self.queue {
            if q.max_len == 0 || q.max_len > MAX_QUEUE_LEN {
                return Err(ConfigError::new(
                    "queue.max_len",
                    format!(
                        "must be between 1 and {MAX_QUEUE_LEN} (found {})",
                        q.max_len
                    ),
                ));
            }
            positive("queue.max_wait", q.max_wait)?;
            at_most("queue.max_wait", q.max_wait, MINUTE)?;
        }
        if let Some(p) = &self.partitions {
            if let Some(h) = &p.header {
                HeaderName::try_from(h.as_str()).map_err(|_| {
                    ConfigError::new("partitions.header", "must be a valid header name")
                })?;
            }
            validate_shares(shares(p))?;
        }
        Ok(())
    }

    /// Validates the settings and builds the layer.
    pub fn build(&self) -> Result<ConcurrencyLimitLayer, ConfigError> {
        self.validate()?;
        let b = ConcurrencyLimitLayer::builder()
            .name(self.name.clone())
            .retry_after(self.retry_after);
        let mut b = match &self.limit {
            LimitConfig::Fixed(f) => b.limit(Fixed::new(f.limit)),
            LimitConfig::Aimd(c) => b.limit(c.build().map_err(|e| e.at("limit"))?),
            LimitConfig::Vegas(c) => b.limit(c.build().map_err(|e| e.at("limit"))?),
            LimitConfig::Gradient2(c) => b.limit(c.build().map_err(|e| e.at("limit"))?),
        };
        if let Some(q) = &self.queue {
            b = b.queue(q.max_len, q.max_wait).queue_order(q.order);
        }
        if let Some(p) = &self.partitions {
            let s = shares(p);
            for class in Criticality::ALL {
                b = b.partition(class, s[class.index()]);
            }
            if let Some(h) = &p.header {
                let name = HeaderName::try_from(h.as_str()).map_err(|_| {
                    ConfigError::new("partitions.header", "must be a valid header name")
                })?;
                b = b
                    .criticality_header(name)
                    .trust_criticality_header(p.trust_header);
            }
        }
        b.build()
    }
}

fn shares(p: &PartitionsConfig) -> [f64; 3] {
    [p.sheddable, p.default, p.critical]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<ConcurrencyConfig, String> {
        toml::from_str(s).map_err(|e| e.to_string())
    }

    #[test]
    fn every_algorithm_and_section_parses() {
        let c = parse("").unwrap();
        assert_eq!(c, ConcurrencyConfig::default());
        assert!(matches!(c.limit, LimitConfig::Gradient2(_)));
        for algo in [
            "\"fixed\"\nlimit = 3",
            "\"aimd\"",
            "\"vegas\"",
            "\"gradient2\"",
        ] {
            let c = parse(&format!("[limit]\nalgorithm = {algo}\n")).unwrap();
            c.build().unwrap();
        }
        let c = parse(
            "[queue]\nmax_len = 5\nmax_wait = \"10ms\"\norder = \"fifo\"\n\
             [partitions]\nheader = \"x-criticality\"\ncritical = 0.4\n",
        )
        .unwrap();
        let q = c.queue.unwrap();
        assert_eq!(
            (q.max_len, q.max_wait, q.order),
            (5, Duration::from_millis(10), QueueOrder::Fifo)
        );
        assert_eq!(c.partitions.as_ref().unwrap().default, 0.3);
        c.build().unwrap();
    }

    #[test]
    fn unknown_keys_are_errors() {
        assert!(parse("limt = 3").is_err());
        assert!(parse("[limit]\nalgorithm = \"fixed\"\nlimit = 3\nextra = 1").is_err());
        assert!(parse("[limit]\nalgorithm = \"cubic\"").is_err());
        assert!(parse("[queue]\nmax_len = 1\nmax_wait = \"1s\"\nsize = 2").is_err());
        assert!(parse("[partitions]\nvip = 0.1").is_err());
    }

    #[test]
    fn validation_names_the_field() {
        let field = |s: &str| parse(s).unwrap().validate().unwrap_err().field().to_owned();
        assert_eq!(field("name = \"\""), "name");
        assert_eq!(field("retry_after = \"0s\""), "retry_after");
        assert_eq!(
            field("[limit]\nalgorithm = \"fixed\"\nlimit = 0"),
            "limit.limit"
        );
        assert_eq!(
            field("[queue]\nmax_len = 0\nmax_wait = \"1s\""),
            "queue.max_len"
        );
        assert_eq!(
            field("[queue]\nmax_len = 1\nmax_wait = \"2m\""),
            "queue.max_wait"
        );
        assert_eq!(
            field("[partitions]\nheader = \"bad header\""),
            "partitions.header"
        );
        assert_eq!(field("[partitions]\ncritical = 0.9"), "partitions");
        assert_eq!(
            field("[partitions]\nsheddable = 2.0"),
            "partitions.sheddable"
        );
        assert!(field("[limit]\nalgorithm = \"aimd\"\nmin_limit = 0").starts_with("limit."));
    }
}
