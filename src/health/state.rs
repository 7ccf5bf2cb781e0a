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
    /// The probe paths' second bytes (the one after the leading `/`), a
    /// bit each: a request path whose second byte is none of them is no
    /// probe's, known from one load and a bit test, as most paths are.
    /// Every bit is set when a probe path is shorter than two bytes (`/`).
    second: [u64; 4],
}

impl Shared {
    pub(crate) fn new(registry: HealthRegistry, config: ProbeConfig) -> Self {
        let mut second = [0u64; 4];
        for path in [
            &config.liveness_path,
            &config.readiness_path,
            &config.startup_path,
        ] {
            match path.as_bytes() {
                [] => {}
                [_, b, ..] => second[usize::from(*b >> 6)] |= 1 << (*b & 63),
                [_] => second = [u64::MAX; 4],
            }
        }
        Self {
            registry,
            second,
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
    /// length checks and byte comparisons, no allocation; a path whose
    /// second byte is no probe path's (most) is told apart by that byte.
    #[inline]
    pub(crate) fn match_path<'a>(&self, path: &'a str) -> Option<(Kind, Option<&'a str>)> {
        if self.may_match(path) {
            self.match_past_second(path)
        } else {
            None
        }
    }

    /// False when `path` is certainly no probe's: its second byte is no
    /// probe path's second byte. One load and a bit test, the only check
    /// most requests take. A path shorter than two bytes (`/`) is a probe's
    /// only if it is the probe path, and every bit is set for a probe path
    /// that short: it is looked up as the byte 0.
    #[inline]
    pub(crate) fn may_match(&self, path: &str) -> bool {
        let b = path.as_bytes().get(1).copied().unwrap_or(0);
        self.second[usize::from(b >> 6)] & (1 << (b & 63)) != 0
    }

    /// [`match_path`](Self::match_path) for a path whose second byte is
    /// some probe path's.
    #[inline(never)]
    fn match_past_second<'a>(&self, path: &'a str) -> Option<(Kind, Option<&'a str>)> {
        if let Some(kind) = self.exact(path) {
            return Some((kind, None));
        }
        // `path` is a probe path, `/` and a name without `/`: no scan of a
        // path that does not start like one (most requests fail at the
        // byte after the probe path's length).
        let under = |p: &str| {
            let rest = path.strip_prefix(p).filter(|_| !p.is_empty())?;
            let name = rest.strip_prefix('/')?;
            (!name.contains('/')).then_some(name)
        };
        let (kind, name) = [
            (&self.ready, Kind::Readiness),
            (&self.live, Kind::Liveness),
            (&self.startup, Kind::Startup),
        ]
        .into_iter()
        .find_map(|(p, kind)| {
            // The cheap test first: the byte after the probe path.
            (path.as_bytes().get(p.len()) == Some(&b'/'))
                .then(|| under(p))
                .flatten()
                .map(|name| (kind, name))
        })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// The rule as first written (split at the last `/`), kept to check the
    /// faster one against.
    fn reference<'a>(s: &Shared, path: &'a str) -> Option<(Kind, Option<&'a str>)> {
        if let Some(kind) = s.exact(path) {
            return Some((kind, None));
        }
        let (dir, name) = path.rsplit_once('/')?;
        let kind = s.exact(dir)?;
        Some((kind, (!name.is_empty()).then_some(name)))
    }

    #[test]
    fn match_path_agrees_with_the_split_at_the_last_slash() {
        let registry = HealthRegistry::builder().build().unwrap();
        let configs = [
            ("/livez", "/readyz", "/startupz"),
            ("/health/live", "/health", ""),
            ("/health", "/health/ready", "/health/startup"),
            ("/", "/r", ""),
            ("/a/", "/b", "/c"),
        ];
        let paths = [
            "",
            "/",
            "//",
            "/livez",
            "/livez/",
            "/livez/db",
            "/livez/db/",
            "/livez//db",
            "/livezz",
            "/readyz/x/y",
            "/readyz",
            "/startupz/a",
            "/api/v1/orders/42",
            "/health",
            "/health/",
            "/health/live",
            "/health/live/",
            "/health/live/x",
            "/health/db",
            "/health/ready",
            "/health/ready/db",
            "/health/startup/x/y",
            "/r",
            "/r/",
            "/r/x",
            "/x",
            "/a/",
            "/a//",
            "/a//n",
            "/a/n",
            "/b/n",
            "/c/",
        ];
        for (live, ready, startup) in configs {
            let s = Shared::new(
                registry.clone(),
                ProbeConfig {
                    liveness_path: live.into(),
                    readiness_path: ready.into(),
                    startup_path: startup.into(),
                },
            );
            for path in paths {
                assert_eq!(
                    s.match_path(path),
                    reference(&s, path),
                    "{path:?} with {live:?} {ready:?} {startup:?}"
                );
            }
        }
    }
}
