//! Where a shutdown is ([`Phase`]) and what started it ([`Trigger`]).

use std::fmt;

/// Where the process is in its shutdown.
///
/// Phases only move forward: `Running` -> `ShutdownRequested` -> `Draining`
/// -> `Done`. Observe them with [`Shutdown::phase`](super::Shutdown::phase) (an atomic read) or
/// [`Shutdown::subscribe`](super::Shutdown::subscribe) (a `tokio::sync::watch` channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Phase {
    /// Serving normally.
    Running = 0,
    /// Shutdown was requested: readiness fails, requests are still served
    /// (HTTP/1 answers carry `Connection: close`) for `shutdown_delay`.
    ShutdownRequested = 1,
    /// The listener stops accepting, new requests get 503 / UNAVAILABLE,
    /// in-flight requests finish (up to `drain_timeout`, then are aborted).
    Draining = 2,
    /// Drain and cleanup hooks are over; the report is available.
    Done = 3,
}

impl Phase {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::Running,
            1 => Phase::ShutdownRequested,
            2 => Phase::Draining,
            _ => Phase::Done,
        }
    }

    /// A stable snake_case name (`running`, `shutdown_requested`,
    /// `draining`, `done`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::ShutdownRequested => "shutdown_requested",
            Phase::Draining => "draining",
            Phase::Done => "done",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What started the shutdown.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// `SIGTERM` (what Kubernetes sends).
    Sigterm,
    /// `SIGINT` (Ctrl-C); skips `shutdown_delay` unless `sigint_delay` says
    /// otherwise.
    Sigint,
    /// [`Shutdown::trigger`](super::Shutdown::trigger).
    Programmatic,
}

impl Trigger {
    /// A stable name (`sigterm`, `sigint`, `programmatic`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Trigger::Sigterm => "sigterm",
            Trigger::Sigint => "sigint",
            Trigger::Programmatic => "programmatic",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
