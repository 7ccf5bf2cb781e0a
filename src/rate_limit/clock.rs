//! A `governor` clock over tokio's time, for applications that run
//! `governor` limiters of their own next to this crate's and want them to
//! follow paused time in tests. The layer itself does not use it: its
//! store reads [`tokio::time::Instant`] directly (see `gcra.rs`).

use std::ops::Add;
use std::time::Duration;

use governor::clock::{Clock, Reference};
use governor::nanos::Nanos;

/// governor's clock over [`tokio::time::Instant`], so limits follow tokio's
/// (pausable, in tests) time.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

/// A [`tokio::time::Instant`] as a governor clock reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokioInstant(pub tokio::time::Instant);

impl Add<Nanos> for TokioInstant {
    type Output = Self;

    #[inline]
    fn add(self, other: Nanos) -> Self {
        Self(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    #[inline]
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    #[inline]
    fn saturating_sub(&self, duration: Nanos) -> Self {
        Self(self.0.checked_sub(duration.into()).unwrap_or(self.0))
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;

    #[inline]
    fn now(&self) -> TokioInstant {
        TokioInstant(tokio::time::Instant::now())
    }
}
