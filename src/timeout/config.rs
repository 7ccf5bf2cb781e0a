//! The config of the timeout layer (deserialisable with the `config`
//! feature).

use std::time::Duration;

use http::{HeaderName, StatusCode};

use super::TimeoutLayer;
use crate::ConfigError;

/// The settings of a [`TimeoutLayer`], as read from a config file.
///
/// ```
/// # #[cfg(feature = "config")]
/// # fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_rampart::timeout::TimeoutConfig;
///
/// let config: TimeoutConfig = serde_json::from_str(r#"{
///     "name": "api",
///     "timeout": "2s",
///     "safety_margin": "20ms",
///     "budget_header": "x-request-timeout-ms",
///     "status": 503
/// }"#)?;
/// let layer = config.build()?;
/// assert_eq!(layer.name(), "api");
/// # Ok(())
/// # }
/// # #[cfg(not(feature = "config"))]
/// # fn main() {}
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(deny_unknown_fields))]
pub struct TimeoutConfig {
    /// The name that labels metrics and events (default `"timeout"`).
    #[cfg_attr(feature = "config", serde(default = "default_name"))]
    pub name: String,
    /// The server's maximum time to a response (`"250ms"`, `"5s"`; at most
    /// `"1h"`).
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub timeout: Duration,
    /// Subtracted from the caller's budget (default `"0s"`).
    #[cfg_attr(
        feature = "config",
        serde(default, with = "crate::config_util::opt_duration")
    )]
    pub safety_margin: Option<Duration>,
    /// Whether `grpc-timeout` shortens the deadline of gRPC requests
    /// (default `true`).
    #[cfg_attr(feature = "config", serde(default = "default_true"))]
    pub grpc_timeout: bool,
    /// A request header carrying the caller's budget in milliseconds.
    #[cfg_attr(feature = "config", serde(default))]
    pub budget_header: Option<String>,
    /// The HTTP status of the answer (default 504).
    #[cfg_attr(feature = "config", serde(default))]
    pub status: Option<u16>,
    /// Whether the `Deadline` also goes into the request extensions
    /// (default `false`: handlers read `Deadline::current()`).
    #[cfg_attr(feature = "config", serde(default))]
    pub deadline_extension: bool,
}

#[cfg(feature = "config")]
fn default_name() -> String {
    super::DEFAULT_NAME.to_owned()
}

#[cfg(feature = "config")]
fn default_true() -> bool {
    true
}

impl TimeoutConfig {
    /// A config with the defaults and no `timeout` yet (0: refused by
    /// [`validate`](Self::validate)).
    pub(crate) fn unset() -> Self {
        Self {
            name: super::DEFAULT_NAME.to_owned(),
            timeout: Duration::ZERO,
            safety_margin: None,
            grpc_timeout: true,
            budget_header: None,
            status: None,
            deadline_extension: false,
        }
    }

    /// Checks every setting without building anything (no metric is
    /// registered); the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.budget_header()?;
        self.status()?;
        if self.name.is_empty() {
            return Err(ConfigError::new(
                "name",
                crate::config_util::MUST_NOT_BE_EMPTY,
            ));
        }
        crate::config_util::positive("timeout", self.timeout)?;
        crate::config_util::at_most("timeout", self.timeout, crate::config_util::HOUR)?;
        if self.safety_margin.unwrap_or_default() >= self.timeout {
            return Err(ConfigError::new(
                "safety_margin",
                "must be less than `timeout`",
            ));
        }
        Ok(())
    }

    /// The budget header, parsed.
    pub(crate) fn budget_header(&self) -> Result<Option<HeaderName>, ConfigError> {
        self.budget_header
            .as_deref()
            .map(|h| {
                HeaderName::try_from(h)
                    .map_err(|_| ConfigError::new("budget_header", "must be a valid header name"))
            })
            .transpose()
    }

    /// The refusal status, parsed.
    pub(crate) fn status(&self) -> Result<Option<StatusCode>, ConfigError> {
        let Some(status) = self.status else {
            return Ok(None);
        };
        match StatusCode::from_u16(status) {
            Ok(s) if s.is_client_error() || s.is_server_error() => Ok(Some(s)),
            _ => Err(ConfigError::new("status", "must be a 4xx or 5xx status")),
        }
    }

    /// Builds the layer (validated first).
    pub fn build(&self) -> Result<TimeoutLayer, ConfigError> {
        TimeoutLayer::from_config(self)
    }
}

impl TryFrom<TimeoutConfig> for TimeoutLayer {
    type Error = ConfigError;

    fn try_from(config: TimeoutConfig) -> Result<Self, Self::Error> {
        config.build()
    }
}

impl TryFrom<&TimeoutConfig> for TimeoutLayer {
    type Error = ConfigError;

    fn try_from(config: &TimeoutConfig) -> Result<Self, Self::Error> {
        config.build()
    }
}

#[cfg(all(test, feature = "config"))]
mod tests {
    use super::*;

    fn parse(json: &str) -> Result<TimeoutConfig, serde_json::Error> {
        serde_json::from_str(json)
    }

    #[test]
    fn defaults_and_errors() {
        let c = parse(r#"{"timeout": "1s"}"#).unwrap();
        let layer = c.build().unwrap();
        assert_eq!(layer.name(), "timeout");
        assert_eq!(layer.timeout(), Duration::from_secs(1));

        assert!(parse(r#"{"timeout": "1s", "timout": "2s"}"#).is_err());
        assert!(parse(r#"{"timeout": "-1s"}"#).is_err());
        let field = |j: &str| parse(j).unwrap().build().unwrap_err().field().to_owned();
        assert_eq!(field(r#"{"timeout": "0s"}"#), "timeout");
        assert_eq!(
            field(r#"{"timeout": "1s", "safety_margin": "1s"}"#),
            "safety_margin"
        );
        assert_eq!(field(r#"{"timeout": "61m"}"#), "timeout");
        assert!(parse(r#"{"timeout": "1h"}"#).unwrap().build().is_ok());
        assert_eq!(field(r#"{"timeout": "1s", "status": 200}"#), "status");
        assert_eq!(field(r#"{"timeout": "1s", "status": 9999}"#), "status");
        assert_eq!(
            field(r#"{"timeout": "1s", "budget_header": "bad header"}"#),
            "budget_header"
        );
    }
}
