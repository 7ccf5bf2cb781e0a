//! The epoch clock: a `tokio` instant taken once, and the time since it as
//! whole nanoseconds in a `u64`, so shared state can keep timestamps in
//! atomics (584 years fit). It reads `tokio::time::Instant`, so paused-time
//! tests drive it.

use tokio::time::Instant;

/// Nanoseconds since the instant it was created.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EpochClock {
    epoch: Instant,
}

impl EpochClock {
    /// A clock whose zero is now.
    pub(crate) fn new() -> Self {
        Self {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since the epoch (saturating; never before it).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.nanos_at(Instant::now())
    }

    /// `at` as nanoseconds since the epoch (0 if before it).
    #[inline]
    pub(crate) fn nanos_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
    }

    /// The instant `nanos` after the epoch.
    #[inline]
    pub(crate) fn instant(&self, nanos: u64) -> Instant {
        self.epoch + std::time::Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::EpochClock;

    #[tokio::test(start_paused = true)]
    async fn counts_nanoseconds_from_its_epoch() {
        let clock = EpochClock::new();
        assert_eq!(clock.now(), 0);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now(), 1_500_000_000);
        assert_eq!(clock.instant(clock.now()), tokio::time::Instant::now());
        let before = clock.instant(0) - Duration::from_secs(1);
        assert_eq!(clock.nanos_at(before), 0);
    }
}
