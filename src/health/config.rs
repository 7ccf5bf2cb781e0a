//! Probe paths, deserialisable behind the `config` feature.

use super::{HealthRegistry, Kind, ProbeLayer};
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
    ///
    /// Paths may nest (`/health` for readiness, `/health/live` for
    /// liveness): a request is routed to the probe whose path it matches
    /// exactly, and `<probe path>/<name>` asks for one check. A nested path
    /// that is also the path of one of the other probe's checks
    /// (`/health/db` for liveness while readiness at `/health` has a check
    /// `db`) would hide that check, so it is an error naming the field.
    pub fn build(self, registry: &HealthRegistry) -> Result<ProbeLayer, ConfigError> {
        self.validate()?;
        self.validate_against(registry)?;
        Ok(ProbeLayer::from_parts(registry.clone(), self))
    }

    fn paths(&self) -> [(&'static str, &str, Kind); 3] {
        [
            ("liveness_path", &self.liveness_path, Kind::Liveness),
            ("readiness_path", &self.readiness_path, Kind::Readiness),
            ("startup_path", &self.startup_path, Kind::Startup),
        ]
    }

    /// Rejects a probe path that is also another probe's single-check path.
    fn validate_against(&self, registry: &HealthRegistry) -> Result<(), ConfigError> {
        for (field, path, _) in self.paths() {
            let Some((dir, name)) = path.rsplit_once('/') else {
                continue;
            };
            for (_, other, kind) in self.paths() {
                if !other.is_empty() && other == dir && registry.check_names(kind).contains(&name) {
                    return Err(ConfigError::new(
                        field,
                        format!(
                            "`{path}` is also the path of the {kind} check `{name}` under `{other}`: rename the check or move the probe"
                        ),
                    ));
                }
            }
        }
        Ok(())
    }
}
