//! The coordinator's settings, deserialisable behind the `config` feature.

use std::time::Duration;

use super::Shutdown;
use crate::ConfigError;
use crate::config_util::{HOUR, MINUTE, at_most};

/// Settings of a [`Shutdown`] coordinator.
///
/// With the `config` feature it deserialises from a file (durations as
/// `"250ms"`, `"5s"`; unknown keys are errors):
///
/// ```toml
/// [shutdown]
/// shutdown_delay = "5s"
/// drain_timeout = "20s"
/// hook_timeout = "5s"
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(deny_unknown_fields, default))]
#[non_exhaustive]
pub struct ShutdownConfig {
    /// The name that labels metrics and events (default `shutdown`).
    pub name: String,
    /// Time between the trigger and draining (default 5s; 0 allowed; at
    /// most 10m).
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub shutdown_delay: Duration,
    /// The delay used when `SIGINT` triggered (default 0; at most 10m).
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub sigint_delay: Duration,
    /// How long in-flight requests may take once draining (default 20s; at
    /// most 1h).
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub drain_timeout: Duration,
    /// How long to wait for aborted requests to unwind (default 1s; at most
    /// 10m).
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub abort_grace: Duration,
    /// Default time limit of each cleanup hook (default 5s; at most 10m).
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub hook_timeout: Duration,
    /// `Retry-After` of requests refused while draining (default 1s; at most
    /// 1h).
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub retry_after: Duration,
    /// Listen to `SIGTERM` and `SIGINT` (default true).
    pub signals: bool,
    /// Exit code when a second signal forces the exit (default 1; a process
    /// exit status is one byte, so it must be in `0..=255`).
    pub force_exit_code: i32,
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            name: "shutdown".to_owned(),
            shutdown_delay: Duration::from_secs(5),
            sigint_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(20),
            abort_grace: Duration::from_secs(1),
            hook_timeout: Duration::from_secs(5),
            retry_after: Duration::from_secs(1),
            signals: true,
            force_exit_code: 1,
        }
    }
}

impl ShutdownConfig {
    /// Checks every setting without building anything (no task, signal
    /// handler or metric is registered); the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new(
                "name",
                crate::config_util::MUST_NOT_BE_EMPTY,
            ));
        }
        if self.drain_timeout.is_zero() {
            return Err(ConfigError::new(
                "drain_timeout",
                crate::config_util::MUST_BE_POSITIVE,
            ));
        }
        if self.hook_timeout.is_zero() {
            return Err(ConfigError::new(
                "hook_timeout",
                crate::config_util::MUST_BE_POSITIVE,
            ));
        }
        at_most("shutdown_delay", self.shutdown_delay, 10 * MINUTE)?;
        at_most("sigint_delay", self.sigint_delay, 10 * MINUTE)?;
        at_most("drain_timeout", self.drain_timeout, HOUR)?;
        at_most("abort_grace", self.abort_grace, 10 * MINUTE)?;
        at_most("hook_timeout", self.hook_timeout, 10 * MINUTE)?;
        at_most("retry_after", self.retry_after, HOUR)?;
        if !(0..=255).contains(&self.force_exit_code) {
            return Err(ConfigError::new(
                "force_exit_code",
                format!(
                    "must be in 0..=255, a process exit status is one byte (found {})",
                    self.force_exit_code
                ),
            ));
        }
        Ok(())
    }

    /// Validates the settings and builds the coordinator (inside a tokio
    /// runtime, like [`ShutdownBuilder::build`](super::ShutdownBuilder::build)).
    pub fn build(self) -> Result<Shutdown, ConfigError> {
        Shutdown::from_config(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn validation_names_the_field() {
        let err = Shutdown::builder()
            .drain_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "drain_timeout");
        let err = Shutdown::builder()
            .hook_timeout(Duration::ZERO)
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "hook_timeout");
        let err = Shutdown::builder().name("").build().unwrap_err();
        assert_eq!(err.field(), "name");
        for code in [-1, 256, i32::MIN, i32::MAX] {
            let err = Shutdown::builder()
                .force_exit_code(code)
                .build()
                .unwrap_err();
            assert_eq!(err.field(), "force_exit_code", "{code}");
        }
        let err = Shutdown::builder()
            .drain_timeout(Duration::from_secs(3601))
            .build()
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "drain_timeout: must be at most 1h (found 1h1s)"
        );
        let err = Shutdown::builder()
            .shutdown_delay(Duration::from_secs(601))
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "shutdown_delay");
        for code in [0, 255] {
            assert!(
                Shutdown::builder()
                    .force_exit_code(code)
                    .signals(false)
                    .build()
                    .is_ok()
            );
        }
        assert!(
            Shutdown::builder()
                .shutdown_delay(Duration::ZERO)
                .signals(false)
                .build()
                .is_ok()
        );
    }

    #[test]
    fn needs_a_runtime() {
        let err = ShutdownConfig::default().build().unwrap_err();
        assert_eq!(err.field(), "runtime");
    }

    #[cfg(feature = "config")]
    #[test]
    fn deserialises() {
        let c: ShutdownConfig = serde_json::from_str(
            r#"{"shutdown_delay":"0s","drain_timeout":"250ms","signals":false}"#,
        )
        .unwrap();
        assert_eq!(c.shutdown_delay, Duration::ZERO);
        assert_eq!(c.drain_timeout, Duration::from_millis(250));
        assert!(!c.signals);
        assert_eq!(c.hook_timeout, Duration::from_secs(5));
        assert!(serde_json::from_str::<ShutdownConfig>(r#"{"drain":"1s"}"#).is_err());
    }
}
