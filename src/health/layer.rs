//! The probe layer.

use std::fmt;
use std::sync::Arc;

use tower::Layer;

use super::state::Shared;
use super::{HealthRegistry, Probe, ProbeConfig};
use crate::ConfigError;

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
        Self {
            shared: Arc::new(Shared::new(registry, config)),
        }
    }
}

impl fmt::Debug for ProbeLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ProbeLayer")
            .field("liveness_path", &self.shared.live())
            .field("readiness_path", &self.shared.ready())
            .field("startup_path", &self.shared.startup())
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
