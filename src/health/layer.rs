//! The probe layer.

use std::fmt;
use std::sync::Arc;

use tower::Layer;

use super::check::Kind;
use super::{HealthRegistry, Probe, ProbeConfig};
use crate::ConfigError;

pub(crate) struct Shared {
    pub(crate) registry: HealthRegistry,
    /// The byte after the leading `/` of each enabled path: most requests
    /// are told apart from the probes by this one byte.
    first: [u8; 3],
    live: Box<str>,
    ready: Box<str>,
    startup: Box<str>,
}

impl Shared {
    /// Which probe (and which single check) `path` asks for: a probe path
    /// exactly (a trailing `/` allowed), or a probe path, `/` and one
    /// segment (the check's name). Paths may nest (`/health` and
    /// `/health/live`): the exact match wins, so `/health/live` is the
    /// liveness probe and `/health/db` the readiness check `db`. A few
    /// length checks and byte comparisons, no allocation.
    #[inline]
    pub(crate) fn match_path<'a>(&self, path: &'a str) -> Option<(Kind, Option<&'a str>)> {
        match path.as_bytes().get(1) {
            Some(b) if self.first.contains(b) => {}
            _ => return None,
        }
        if let Some(kind) = self.exact(path) {
            return Some((kind, None));
        }
        let (dir, name) = path.rsplit_once('/')?;
        let kind = self.exact(dir)?;
        Some((kind, (!name.is_empty()).then_some(name)))
    }

    /// The probe whose path is exactly `path` (paths are distinct).
    #[inline(always)]
    fn exact(&self, path: &str) -> Option<Kind> {
        let is = |p: &str| !p.is_empty() && p == path;
        if is(&self.ready) {
            Some(Kind::Readiness)
        } else if is(&self.live) {
            Some(Kind::Liveness)
        } else if is(&self.startup) {
            Some(Kind::Startup)
        } else {
            None
        }
    }
}

/// Answers the probe paths (`/livez`, `/readyz`, `/startupz` by default)
/// from a [`HealthRegistry`] before the request reaches anything else; every
/// other request goes to the inner service untouched. Put it outermost.
#[derive(Clone)]
pub struct ProbeLayer {
    pub(crate) shared: Arc<Shared>,
}

impl ProbeLayer {
    /// The layer with the default paths.
    pub fn new(registry: &HealthRegistry) -> Self {
        Self::from_parts(registry.clone(), ProbeConfig::default())
    }

    /// A builder to change the paths.
    pub fn builder(registry: &HealthRegistry) -> ProbeLayerBuilder {
        ProbeLayerBuilder {
            registry: registry.clone(),
            config: ProbeConfig::default(),
        }
    }

    pub(crate) fn from_parts(registry: HealthRegistry, config: ProbeConfig) -> Self {
        let second = |p: &str| p.as_bytes().get(1).copied().unwrap_or(0);
        Self {
            shared: Arc::new(Shared {
                first: [
                    second(&config.liveness_path),
                    second(&config.readiness_path),
                    second(&config.startup_path),
                ],
                registry,
                live: config.liveness_path.into(),
                ready: config.readiness_path.into(),
                startup: config.startup_path.into(),
            }),
        }
    }
}

impl fmt::Debug for ProbeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeLayer")
            .field("liveness_path", &self.shared.live)
            .field("readiness_path", &self.shared.ready)
            .field("startup_path", &self.shared.startup)
            .finish_non_exhaustive()
    }
}

impl<S> Layer<S> for ProbeLayer {
    type Service = Probe<S>;

    fn layer(&self, inner: S) -> Probe<S> {
        Probe::new(inner, Arc::clone(&self.shared))
    }
}

/// Builds a [`ProbeLayer`] with custom paths.
#[derive(Debug)]
#[must_use]
pub struct ProbeLayerBuilder {
    registry: HealthRegistry,
    config: ProbeConfig,
}

impl ProbeLayerBuilder {
    /// The liveness path (default `/livez`; empty disables it).
    pub fn liveness_path(mut self, path: impl Into<String>) -> Self {
        self.config.liveness_path = path.into();
        self
    }

    /// The readiness path (default `/readyz`; empty disables it).
    pub fn readiness_path(mut self, path: impl Into<String>) -> Self {
        self.config.readiness_path = path.into();
        self
    }

    /// The startup path (default `/startupz`; empty disables it).
    pub fn startup_path(mut self, path: impl Into<String>) -> Self {
        self.config.startup_path = path.into();
        self
    }

    /// Validates the paths.
    pub fn build(self) -> Result<ProbeLayer, ConfigError> {
        self.config.build(&self.registry)
    }
}
