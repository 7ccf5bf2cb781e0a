//! Probe paths, deserialisable behind the `config` feature.

use std::time::Duration;

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
    /// Checks every setting without building anything (no task, signal
    /// handler or metric is registered); the error names the field.
    pub fn validate(&self) -> Result<(), ConfigError> {
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

/// Whether an open circuit breaker fails the readiness probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(rename_all = "snake_case"))]
pub enum BreakerReadiness {
    /// The breaker is not a readiness check (default). An open breaker
    /// usually means a dependency every replica shares is down: failing
    /// readiness on all of them at once would take the whole service out
    /// of its load balancer, turning fast refusals into connection errors.
    #[default]
    Off,
    /// A non-critical readiness check: `/readyz?verbose` shows
    /// `[!]<name> warn` while the circuit is open, the probe still passes.
    Warn,
    /// A critical readiness check: the pod is unready while the circuit is
    /// open (for a dependency only this replica uses).
    Fail,
}

/// The health registry's options (the probe paths are in
/// [`ProbeConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(default, deny_unknown_fields))]
#[non_exhaustive]
pub struct HealthConfig {
    /// The registry's name, labelling its metrics (default `health`).
    pub name: String,
    /// Register the circuit breaker as a readiness check named after it
    /// (default `off`).
    pub breaker_readiness: BreakerReadiness,
    /// How often `grpc.health.v1` `Watch` streams re-read the synchronous
    /// checks, such as the breaker's (default 1s, at most 10m); `Check` reads them when
    /// called.
    #[cfg_attr(feature = "config", serde(with = "crate::config_util::duration"))]
    pub grpc_poll_interval: Duration,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            name: "health".to_owned(),
            breaker_readiness: BreakerReadiness::Off,
            grpc_poll_interval: Duration::from_secs(1),
        }
    }
}

impl HealthConfig {
    /// Checks every setting without building anything; the error names the
    /// field (the first problem; `RampartConfig::validate`, feature
    /// `config`, reports them all).
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.problems().into_iter().next().map_or(Ok(()), Err)
    }

    /// Every problem, each naming its field.
    pub(crate) fn problems(&self) -> Vec<ConfigError> {
        let mut errors = Vec::new();
        if self.name.is_empty() {
            errors.push(ConfigError::new(
                "name",
                crate::config_util::MUST_NOT_BE_EMPTY,
            ));
        }
        let poll = "grpc_poll_interval";
        if let Err(e) = crate::config_util::positive(poll, self.grpc_poll_interval) {
            errors.push(e);
        }
        if let Err(e) = crate::config_util::at_most(
            poll,
            self.grpc_poll_interval,
            10 * crate::config_util::MINUTE,
        ) {
            errors.push(e);
        }
        errors
    }
}
