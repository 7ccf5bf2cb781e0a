//! Configuration errors shared by every layer's builder.

use std::borrow::Cow;
use std::fmt;

/// An invalid setting, found when a layer is built.
///
/// Every builder in this crate validates its settings and returns this error
/// instead of panicking or silently clamping. The error names the field that
/// is wrong (as a key path, so it matches the config file when the layer was
/// built from one) and says what is wrong with it.
///
/// ```
/// use tower_rampart::ConfigError;
///
/// let err = ConfigError::new("burst", "must be greater than 0").at("rate_limit.quotas[1]");
/// assert_eq!(err.field(), "rate_limit.quotas[1].burst");
/// assert_eq!(err.to_string(), "rate_limit.quotas[1].burst: must be greater than 0");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    field: Cow<'static, str>,
    message: Cow<'static, str>,
}

impl ConfigError {
    /// A problem with `field`, described by `message` (lower case, no full stop).
    pub fn new(field: impl Into<Cow<'static, str>>, message: impl Into<Cow<'static, str>>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }

    /// Puts the field under `prefix`: `burst` at `rate_limit.quotas[1]`
    /// becomes `rate_limit.quotas[1].burst`.
    #[must_use]
    pub fn at(self, prefix: &str) -> Self {
        let field = if prefix.is_empty() {
            self.field
        } else if self.field.is_empty() {
            Cow::Owned(prefix.to_owned())
        } else {
            Cow::Owned(format!("{prefix}.{}", self.field))
        };
        Self { field, ..self }
    }

    /// The key path of the offending field.
    pub fn field(&self) -> &str {
        &self.field
    }

    /// What is wrong with it.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_compose() {
        let e = ConfigError::new("threshold", "must be in (0, 100]")
            .at("circuit_breaker")
            .at("");
        assert_eq!(e.field(), "circuit_breaker.threshold");
        assert_eq!(e.message(), "must be in (0, 100]");
        assert_eq!(ConfigError::new("", "x").at("a").field(), "a");
    }
}
