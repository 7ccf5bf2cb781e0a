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
//! [`pinned`] runs a closure with this thread's reading fixed to a given
//! instant: an outer layer that has read the clock calls its inner service
//! inside it, and the layers below take the same instant instead of reading
//! the clock again (one clock reading per request for the whole stack).

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

/// This thread's anchor.
#[derive(Clone, Copy)]
struct Anchor {
    /// tokio's clock at the anchor.
    at: Instant,
    /// The counter at the anchor.
    raw: u64,
}

#[derive(Clone, Copy)]
enum Mode {
    /// No anchor (new thread, or a layer was just built): probe first.
    Unknown,
    /// tokio's clock runs: extrapolate from the anchor.
    Fast(Anchor),
    /// tokio's clock is paused (or too coarse to tell): read it every time.
    Follow,
}

thread_local! {
    static MODE: Cell<Mode> = const { Cell::new(Mode::Unknown) };
    static PINNED: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// tokio's clock, now (see the module docs for how it is read).
#[inline]
pub(crate) fn now() -> Instant {
    if let Some(at) = PINNED.with(Cell::get) {
        return at;
    }
    let counter = counter();
    let raw = counter.raw();
    MODE.with(|mode| {
        if let Mode::Fast(anchor) = mode.get() {
            let since = counter.delta_as_nanos(anchor.raw, raw);
            if since < REFRESH_NANOS {
                return anchor.at + Duration::from_nanos(since);
            }
        }
        reanchor(mode, counter)
    })
}

/// Reads tokio's clock twice and decides this thread's mode.
#[cold]
#[inline(never)]
fn reanchor(mode: &Cell<Mode>, counter: &quanta::Clock) -> Instant {
    let first = Instant::now();
    let second = Instant::now();
    if first == second {
        mode.set(Mode::Follow);
    } else {
        mode.set(Mode::Fast(Anchor {
            at: second,
            raw: counter.raw(),
        }));
    }
    second
}

/// Runs `f` with this thread's clock reading fixed at `at` (the instant an
/// outer layer has just read), so the layers it calls do not read the clock
/// again. Restores the previous state on return (also on unwind).
#[inline]
pub(crate) fn pinned<R>(at: Instant, f: impl FnOnce() -> R) -> R {
    struct Restore(Option<Instant>);
    impl Drop for Restore {
        #[inline]
        fn drop(&mut self) {
            PINNED.with(|p| p.set(self.0));
        }
    }
    let _restore = Restore(PINNED.with(|p| p.replace(Some(at))));
    f()
}

/// Forgets this thread's anchor: the next reading probes tokio's clock.
fn forget_anchor() {
    MODE.with(|mode| mode.set(Mode::Unknown));
}

/// Nanoseconds since the instant it was created.
#[derive(Debug, Clone, Copy)]
pub(crate) struct EpochClock {
    epoch: Instant,
}

impl EpochClock {
    /// A clock whose zero is now. Also calibrates the process's counter (the
    /// first time, up to ~200 ms, at build time rather than on a request)
    /// and forgets this thread's anchor (see the module docs).
    pub(crate) fn new() -> Self {
        let _ = counter();
        forget_anchor();
        Self {
            epoch: Instant::now(),
        }
    }

    /// Nanoseconds since the epoch (saturating; never before it).
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.nanos_at(now())
    }

    /// `at` as nanoseconds since the epoch (0 if before it).
    #[inline]
    pub(crate) fn nanos_at(&self, at: Instant) -> u64 {
        u64::try_from(at.saturating_duration_since(self.epoch).as_nanos()).unwrap_or(u64::MAX)
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

    use super::{EpochClock, now, pinned};

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
        let at = tokio::time::Instant::now() + Duration::from_secs(5);
        let seen = pinned(at, || (now(), pinned(at + Duration::from_secs(1), now)));
        assert_eq!(seen, (at, at + Duration::from_secs(1)));
        assert_eq!(now(), tokio::time::Instant::now(), "restored on return");
    }
}
