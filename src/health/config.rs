//! Probe paths, deserialisable behind the `config` feature.

use super::{HealthRegistry, ProbeLayer};
use crate::ConfigError;

/// The paths the [`ProbeLayer`] answers. An empty path disables that probe.
///
/// ```toml
/// [probes]
/// liveness_path = "/livez"
/// readiness_path = "/readyz"
/// startup_path = ""        # no startup probe
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(deny_unknown_fields, default))]
#[non_exhaustive]
pub struct ProbeConfig {
    /// Default `/livez`.
    pub liveness_path: String,
    /// Default `/readyz`.
    pub readiness_path: String,
    /// Default `/startupz`.
    pub startup_path: String,
}

impl Default for ProbeConfig {
    fn default() -> Self {
        Self {
            liveness_path: "/livez".to_owned(),
            readiness_path: "/readyz".to_owned(),
            startup_path: "/startupz".to_owned(),
        }
    }
}

impl ProbeConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let mut seen: Vec<&str> = Vec::new();
        for (field, p) in [
            ("liveness_path", &self.liveness_path),
            ("readiness_path", &self.readiness_path),
            ("startup_path", &self.startup_path),
        ] {
            if p.is_empty() {
                continue;
            }
            if !p.starts_with('/') || p.len() < 2 || p.ends_with('/') {
                return Err(ConfigError::new(
                    field,
                    "must start with `/`, not end with `/`, and not be `/` alone",
                ));
            }
            if p.bytes()
                .any(|b| b == b'?' || b == b'#' || !b.is_ascii_graphic())
            {
                return Err(ConfigError::new(
                    field,
                    "must be printable ASCII without `?` or `#`",
                ));
            }
            if seen.contains(&p.as_str()) {
                return Err(ConfigError::new(field, "is used by another probe"));
            }
            seen.push(p);
        }
        Ok(())
    }

    /// Validates the paths and builds the layer over `registry`.
    pub fn build(self, registry: &HealthRegistry) -> Result<ProbeLayer, ConfigError> {
        self.validate()?;
        Ok(ProbeLayer::from_parts(registry.clone(), self))
    }
}
