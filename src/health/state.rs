//! The probe layer's engine: what every service of a [`ProbeLayer`]
//! shares ([`Shared`]: the registry and the probe paths) and the decision,
//! which probe a request path asks for.
//!
//! [`ProbeLayer`]: super::ProbeLayer

use super::check::Kind;
use super::{HealthRegistry, ProbeConfig};

/// The registry and the probe paths, shared by every service of a layer.
pub(crate) struct Shared {
    pub(crate) registry: HealthRegistry,
    live: Box<str>,
    ready: Box<str>,
    startup: Box<str>,
}

impl Shared {
    pub(crate) fn new(registry: HealthRegistry, config: ProbeConfig) -> Self {
        Self {
            registry,
            live: config.liveness_path.into(),
            ready: config.readiness_path.into(),
            startup: config.startup_path.into(),
        }
    }

    /// The liveness path (empty: disabled).
    pub(crate) fn live(&self) -> &str {
        &self.live
    }

    /// The readiness path (empty: disabled).
    pub(crate) fn ready(&self) -> &str {
        &self.ready
    }

    /// The startup path (empty: disabled).
    pub(crate) fn startup(&self) -> &str {
        &self.startup
    }

    /// Which probe (and which single check) `path` asks for: a probe path
    /// exactly (a trailing `/` allowed), or a probe path, `/` and one
    /// segment (the check's name). Paths may nest (`/health` and
    /// `/health/live`): the exact match wins, so `/health/live` is the
    /// liveness probe and `/health/db` the readiness check `db`. A few
    /// length checks and byte comparisons, no allocation.
    #[inline]
    pub(crate) fn match_path<'a>(&self, path: &'a str) -> Option<(Kind, Option<&'a str>)> {
        if let Some(kind) = self.exact(path) {
            return Some((kind, None));
        }
        let (dir, name) = path.rsplit_once('/')?;
        let kind = self.exact(dir)?;
        Some((kind, (!name.is_empty()).then_some(name)))
    }

    /// The probe whose path is exactly `path` (paths are distinct).
    #[inline]
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
