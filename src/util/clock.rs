//! The clock every layer reads: tokio's time, read fast.
//!
//! One reading of `std::time::Instant` (what `tokio::time::Instant::now()`
//! is outside paused-time tests) costs ~55 ns on the VMs the benches run on;
//! the CPU's time-stamp counter (through `quanta`, calibrated once per
//! process) about half of that. [`now`] returns a `tokio::time::Instant`
//! extrapolated from the counter between *anchors*: readings of tokio's own
//! clock, taken per thread at most every [`REFRESH_NANOS`] of counter time.
//!
//! # Paused time
//!
//! tokio's clock can be paused (its `test-util` feature, in this crate's
//! tests and in its users' tests), and then every reading must be exactly
//! tokio's. No cargo feature says so (a crate cannot see its dependencies'
//! features), so the clock finds out at run time: each anchor reads tokio's
//! clock twice in a row. A running clock moves between two readings (they
//! are nanoseconds apart); a paused one cannot (only `advance` or the
//! runtime's auto-advance move it, and neither runs in between). Two equal
//! readings put the thread in *follow* mode: every reading is tokio's (two
//! reads, so a resumed clock is noticed at once) until the clock runs again.
//! A platform whose monotonic clock is coarse enough to return the same
//! value twice is put in follow mode too: correct, only slower.
//!
//! The one case this misses: a thread that read the clock while tokio's
//! time was running, and then pauses it (`tokio::time::pause()` in the
//! middle of a test) and advances it less than [`REFRESH_NANOS`] of real time
//! later. Building a layer ([`EpochClock::new`]) forgets the thread's anchor,
//! so `#[tokio::test(start_paused = true)]` and "build, pause, advance, call"
//! are exact; pausing right after traffic went through is not, for up to one
//! refresh period.
//!
//! # Sharing one reading across the stack
//!
//! [`pin`] reads the clock once and fixes this thread's reading to it while
//! its guard lives: an outer layer that needs the time calls its inner
//! service under the guard, and the layers below take the same reading
//! instead of reading the clock again (one clock reading per request for
//! the whole stack).
//!
//! Readings are kept as `u64` nanoseconds since a process-wide base (a
//! `tokio::time::Instant` ten years before the first reading), so the fast
//! path is a counter read, a multiply and a shift, and an addition.

use std::cell::Cell;
use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;

/// How long (nanoseconds of counter time) an anchor serves before tokio's
/// clock is read again.
pub(crate) const REFRESH_NANOS: u64 = 1_000_000;

/// The process's counter, calibrated against the monotonic clock once.
fn counter() -> &'static quanta::Clock {
    static COUNTER: OnceLock<quanta::Clock> = OnceLock::new();
    COUNTER.get_or_init(quanta::Clock::new)
}

/// The zero of the clock's nanoseconds: ten years before the first
/// reading (before any instant a paused test clock can show), or the first
/// reading itself where the platform's instants cannot go that far back.
fn base() -> Instant {
    static BASE: OnceLock<Instant> = OnceLock::new();
    *BASE.get_or_init(|| {
        let now = Instant::now();
        now.checked_sub(Duration::from_secs(10 * 365 * 86_400))
            .unwrap_or(now)
    })
}

/// `at` as nanoseconds since [`base`] (0 if before it): the unit of a
/// [`Deadline`](crate::timeout::Deadline).
#[inline]
pub(crate) fn to_nanos(at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(base()).as_nanos()).unwrap_or(u64::MAX)
}

#[derive(Clone, Copy)]
enum Mode {
    /// No anchor (new thread, or a layer was just built): probe first.
    Unknown,
    /// tokio's clock runs: extrapolate from the anchor, tokio's clock (as
    /// nanoseconds since [`base`]) at counter reading `raw`.
    Fast { nanos: u64, raw: u64 },
    /// tokio's clock is paused (or too coarse to tell): read it every time.
    Follow,
}

/// No pinned reading.
const UNPINNED: u64 = u64::MAX;

thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::Unknown) };
    static PINNED: Cell<u64> = const { Cell::new(UNPINNED) };
}

/// tokio's clock, now, as nanoseconds since the process's base (see the
/// module docs for how it is read).
#[inline]
pub(crate) fn now_nanos() -> u64 {
    let pinned = PINNED.with(Cell::get);
    if pinned != UNPINNED {
        return pinned;
    }
    let counter = counter();
    let raw = counter.raw();
    MODE.with(|mode| {
        if let Mode::Fast { nanos, raw: at } = mode.get() {
            let since = counter.delta_as_nanos(at, raw);
            if since < REFRESH_NANOS {
                return nanos + since;
            }
        }
        reanchor(mode, counter)
    })
}

/// tokio's clock, now (see the module docs for how it is read).
#[inline]
pub(crate) fn now() -> Instant {
    instant_at(now_nanos())
}

/// The instant `nanos` after the process's base ([`to_nanos`]'s inverse).
#[inline]
pub(crate) fn instant_at(nanos: u64) -> Instant {
    base() + Duration::from_nanos(nanos)
}

/// Reads tokio's clock twice and decides this thread's mode.
#[cold]
#[inline(never)]
fn reanchor(mode: &Cell<Mode>, counter: &quanta::Clock) -> u64 {
    let first = Instant::now();
    let second = Instant::now();
    let nanos = to_nanos(second);
    if first == second {
        mode.set(Mode::Follow);
    } else {
        mode.set(Mode::Fast {
            nanos,
            raw: counter.raw(),
        });
    }
    nanos
}

/// Reads the clock once and fixes this thread's reading to it until the
/// guard is dropped (also on unwind), which restores the previous state.
/// A guard rather than a closure, so that what the caller computes in the
/// scope (an inner future) is not copied out of a closure's return value.
#[inline]
pub(crate) fn pin() -> Pin {
    let at = now_nanos();
    Pin(PINNED.with(|p| p.replace(at)))
}

/// The scope of [`pin`]: restores the previous reading when dropped.
#[must_use = "the reading is pinned only while the guard lives"]
pub(crate) struct Pin(u64);

impl Drop for Pin {
    #[inline]
    fn drop(&mut self) {
        PINNED.with(|p| p.set(self.0));
    }
}

/// Forgets this thread's anchor: the next reading probes tokio's clock.
fn forget_anchor() {
    MODE.with(|mode| mode.set(Mode::Unknown));
}

/// Nanoseconds since the instant it was created.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EpochClock {
    epoch: Instant,
    /// `epoch` as nanoseconds since the process's base.
    epoch_nanos: u64,
}

impl EpochClock {
    /// A clock whose zero is now. Also calibrates the process's counter (the
    /// first time, up to ~200 ms, at build time rather than on a request)
    /// and forgets this thread's anchor (see the module docs).
    pub(crate) fn new() -> Self {
        let _ = counter();
        forget_anchor();
        let epoch = Instant::now();
        Self {
            epoch,
            epoch_nanos: to_nanos(epoch),
        }
    }

    /// Nanoseconds since the epoch (saturating; never before it).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        now_nanos().saturating_sub(self.epoch_nanos)
    }

    /// `nanos` since the process's base ([`to_nanos`], [`now_nanos`]) as
    /// nanoseconds since the epoch (0 if before it).
    #[inline]
    pub(crate) fn since_epoch(&self, nanos: u64) -> u64 {
        nanos.saturating_sub(self.epoch_nanos)
    }

    /// The instant `nanos` after the epoch.
    #[inline]
    pub(crate) fn instant(&self, nanos: u64) -> Instant {
        self.epoch + Duration::from_nanos(nanos)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{EpochClock, now, pin};

    #[tokio::test(start_paused = true)]
    async fn counts_nanoseconds_from_its_epoch() {
        let clock = EpochClock::new();
        assert_eq!(clock.now(), 0);
        tokio::time::advance(Duration::from_millis(1500)).await;
        assert_eq!(clock.now(), 1_500_000_000);
        assert_eq!(clock.instant(clock.now()), tokio::time::Instant::now());
        let before = clock.instant(0) - Duration::from_secs(1);
        assert_eq!(clock.since_epoch(super::to_nanos(before)), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn follows_paused_time_exactly() {
        for _ in 0..3 {
            assert_eq!(now(), tokio::time::Instant::now());
            tokio::time::advance(Duration::from_nanos(1)).await;
            assert_eq!(now(), tokio::time::Instant::now());
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
    }

    #[tokio::test]
    async fn follows_running_time_and_notices_a_resume_and_a_pause() {
        // Running: within a refresh period of tokio's clock, never behind
        // a reading of it taken before.
        for _ in 0..1000 {
            let before = tokio::time::Instant::now();
            let ours = now();
            assert!(ours + Duration::from_millis(2) >= before);
            assert!(ours <= tokio::time::Instant::now() + Duration::from_millis(2));
        }
        // Paused after a layer was built: exact.
        let _ = EpochClock::new();
        tokio::time::pause();
        tokio::time::advance(Duration::from_secs(7)).await;
        assert_eq!(now(), tokio::time::Instant::now());
        // Resumed: follows the running clock again, from where it stood.
        tokio::time::resume();
        let a = now();
        std::thread::sleep(Duration::from_millis(3));
        let b = now();
        assert!(b > a, "the clock runs again after resume");
        let tokio_now = tokio::time::Instant::now();
        assert!(b <= tokio_now + Duration::from_millis(2));
        assert!(b + Duration::from_millis(2) >= tokio_now);
    }

    #[tokio::test(start_paused = true)]
    async fn a_pinned_reading_is_what_the_layers_below_see() {
        let clock = EpochClock::new();
        let at = now();
        let seen = {
            let _pin = pin();
            std::thread::sleep(Duration::from_millis(2));
            let inner = {
                let _inner = pin();
                now()
            };
            (now(), clock.now(), inner)
        };
        assert_eq!(seen, (at, 0, at));
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(now(), tokio::time::Instant::now(), "restored on return");
        assert_eq!(clock.now(), 5_000_000_000);
    }
}
