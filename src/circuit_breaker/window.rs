//! Sliding windows: what the breaker remembers of recent calls.

use super::config::SlidingWindow;

/// A recorded call: bit 0 = failure, bit 1 = slow.
pub(crate) const FAILURE: u8 = 1;
pub(crate) const SLOW: u8 = 2;

/// Aggregate of a window.
///
/// `u64`: a time window may last a day, and a busy breaker sees more than
/// `u32::MAX` calls in one (50 000 a second do).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) calls: u64,
    pub(crate) failures: u64,
    pub(crate) slow: u64,
}

pub(crate) enum Window {
    Count(CountRing),
    Time(TimeRing),
}

impl Window {
    pub(crate) fn new(kind: SlidingWindow) -> Self {
        match kind {
            SlidingWindow::Count { size } => Window::Count(CountRing {
                slots: vec![0; size as usize].into_boxed_slice(),
                pos: 0,
                len: 0,
                tally: Tally::default(),
            }),
            SlidingWindow::Time { duration, buckets } => {
                let bucket_nanos = (duration.as_nanos() / u128::from(buckets)).max(1);
                Window::Time(TimeRing::new(
                    buckets,
                    u64::try_from(bucket_nanos).unwrap_or(u64::MAX),
                ))
            }
        }
    }

    /// Records one call at `now` (nanoseconds since the breaker's epoch).
    pub(crate) fn record(&mut self, now: u64, flags: u8) {
        match self {
            Window::Count(r) => r.record(flags),
            Window::Time(r) => r.record(now, flags),
        }
    }

    /// A time window's bucket length in nanoseconds (`None`: a count
    /// window).
    pub(crate) fn bucket_nanos(&self) -> Option<u64> {
        match self {
            Window::Count(_) => None,
            Window::Time(r) => Some(r.bucket_nanos),
        }
    }

    /// Records `n` successes, neither failed nor slow, of a time window's
    /// `period` (`now / bucket_nanos + 1`), counted without the lock
    /// (`state::fast`); dropped if the period has left the window. A count
    /// window has no such successes.
    pub(crate) fn record_successes(&mut self, period: u64, n: u32) {
        if let Window::Time(r) = self {
            r.add(
                period,
                Tally {
                    calls: u64::from(n),
                    failures: 0,
                    slow: 0,
                },
            );
        }
    }

    /// The calls in the window at `now` (moves a time window's end there).
    pub(crate) fn tally(&mut self, now: u64) -> Tally {
        match self {
            Window::Count(r) => r.tally,
            Window::Time(r) => r.tally(now),
        }
    }

    /// Forgets every call.
    pub(crate) fn clear(&mut self) {
        match self {
            Window::Count(r) => {
                r.pos = 0;
                r.len = 0;
                r.tally = Tally::default();
            }
            Window::Time(r) => r.clear(),
        }
    }

    /// A count window that is full and holds no failure and no slow call:
    /// one more fast success changes nothing in it.
    pub(crate) fn is_clean_and_full(&self) -> bool {
        match self {
            Window::Count(r) => {
                r.len == r.slots.len() && r.tally.failures == 0 && r.tally.slow == 0
            }
            Window::Time(_) => false,
        }
    }
}

/// The last N calls, one byte each.
pub(crate) struct CountRing {
    slots: Box<[u8]>,
    pos: usize,
    len: usize,
    tally: Tally,
}

impl CountRing {
    fn record(&mut self, flags: u8) {
        if self.len == self.slots.len() {
            let old = self.slots[self.pos];
            self.tally.failures -= u64::from(old & FAILURE != 0);
            self.tally.slow -= u64::from(old & SLOW != 0);
        } else {
            self.len += 1;
            self.tally.calls += 1;
        }
        self.slots[self.pos] = flags;
        self.tally.failures += u64::from(flags & FAILURE != 0);
        self.tally.slow += u64::from(flags & SLOW != 0);
        self.pos += 1;
        if self.pos == self.slots.len() {
            self.pos = 0;
        }
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Bucket {
    /// Which period this bucket holds (`now / bucket_nanos`), plus one so
    /// that 0 means "never used".
    period: u64,
    tally: Tally,
}

impl Tally {
    fn add(&mut self, other: Tally) {
        self.calls += other.calls;
        self.failures += other.failures;
        self.slow += other.slow;
    }

    fn sub(&mut self, other: Tally) {
        self.calls -= other.calls;
        self.failures -= other.failures;
        self.slow -= other.slow;
    }
}

/// The calls of the last T, in buckets, with a running total: recording
/// and reading cost O(1) (plus one step per bucket the time moved past),
/// not a sum over every bucket under the breaker's lock.
pub(crate) struct TimeRing {
    buckets: Box<[Bucket]>,
    bucket_nanos: u64,
    /// The latest period the ring has moved to (0: none yet). The buckets
    /// of periods `head - n + 1 ..= head` are the window.
    head: u64,
    /// The sum of the window's buckets.
    total: Tally,
}

impl TimeRing {
    fn new(buckets: u32, bucket_nanos: u64) -> Self {
        Self {
            buckets: vec![Bucket::default(); buckets as usize].into_boxed_slice(),
            bucket_nanos,
            head: 0,
            total: Tally::default(),
        }
    }

    fn period(&self, now: u64) -> u64 {
        now / self.bucket_nanos + 1
    }

    /// Moves the window's end to `period`, dropping the buckets that leave.
    fn advance(&mut self, period: u64) {
        if period <= self.head {
            return;
        }
        let n = self.buckets.len() as u64;
        if period - self.head >= n {
            self.clear();
        } else {
            for p in self.head + 1..=period {
                let b = &mut self.buckets[(p % n) as usize];
                if b.period != 0 {
                    self.total.sub(b.tally);
                    *b = Bucket::default();
                }
            }
        }
        self.head = period;
    }

    fn clear(&mut self) {
        self.buckets.fill(Bucket::default());
        self.total = Tally::default();
    }

    fn record(&mut self, now: u64, flags: u8) {
        let call = Tally {
            calls: 1,
            failures: u64::from(flags & FAILURE != 0),
            slow: u64::from(flags & SLOW != 0),
        };
        self.add(self.period(now), call);
    }

    /// Adds `call` to the bucket of `period`.
    fn add(&mut self, period: u64, call: Tally) {
        self.advance(period);
        let n = self.buckets.len() as u64;
        if period + n <= self.head {
            // Read before a newer call moved the window past it (clock
            // readings of concurrent calls arrive slightly out of order):
            // already outside the window.
            return;
        }
        let b = &mut self.buckets[(period % n) as usize];
        if b.period != period {
            // Only an empty bucket or one outside the window can sit here.
            if b.period != 0 {
                self.total.sub(b.tally);
            }
            *b = Bucket {
                period,
                tally: Tally::default(),
            };
        }
        b.tally.add(call);
        self.total.add(call);
    }

    fn tally(&mut self, now: u64) -> Tally {
        let period = self.period(now);
        self.advance(period);
        self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn count_ring_evicts_oldest() {
        let mut w = Window::new(SlidingWindow::Count { size: 3 });
        w.record(0, FAILURE);
        w.record(0, 0);
        assert!(!w.is_clean_and_full());
        w.record(0, SLOW);
        assert_eq!(
            w.tally(0),
            Tally {
                calls: 3,
                failures: 1,
                slow: 1
            }
        );
        w.record(0, 0); // evicts the failure
        assert_eq!(
            w.tally(0),
            Tally {
                calls: 3,
                failures: 0,
                slow: 1
            }
        );
        w.record(0, 0);
        w.record(0, 0); // evicts the slow call
        assert!(w.is_clean_and_full());
        w.clear();
        assert_eq!(w.tally(0), Tally::default());
        assert!(!w.is_clean_and_full());
    }

    /// The longest window the config allows (a day) at 50 000 successes a
    /// second holds 4.32e9 calls, more than `u32::MAX`: counted exactly,
    /// folded as the fast path folds them (at most 65 535 at a time), and
    /// given back as its buckets leave.
    #[test]
    fn a_busy_day_long_window_counts_past_u32() {
        let day = 86_400 * 1_000_000_000u64;
        let mut w = Window::new(SlidingWindow::Time {
            duration: Duration::from_nanos(day),
            buckets: 10,
        });
        let bucket = w.bucket_nanos().unwrap();
        let folds = 35_000u64;
        for period in [1, 2] {
            for _ in 0..folds {
                w.record_successes(period, 65_535);
            }
        }
        w.record(bucket + 1, FAILURE);
        let successes = 2 * folds * 65_535;
        assert!(successes > u64::from(u32::MAX));
        assert_eq!(
            w.tally(bucket + 1),
            Tally {
                calls: successes + 1,
                failures: 1,
                slow: 0
            }
        );
        // The first bucket leaves the window; then the second, with the
        // failure.
        assert_eq!(w.tally(10 * bucket).calls, folds * 65_535 + 1);
        assert_eq!(w.tally(11 * bucket), Tally::default());
    }

    #[test]
    fn time_ring_rolls_buckets() {
        let s = 1_000_000_000;
        let mut w = Window::new(SlidingWindow::Time {
            duration: Duration::from_secs(10),
            buckets: 10,
        });
        w.record(0, FAILURE);
        w.record(s / 2, 0);
        w.record(5 * s, 0);
        assert_eq!(w.tally(9 * s).calls, 3);
        assert_eq!(w.tally(9 * s + s - 1).failures, 1);
        // At 10 s the first bucket (0..1 s) leaves the window.
        assert_eq!(
            w.tally(10 * s),
            Tally {
                calls: 1,
                failures: 0,
                slow: 0
            }
        );
        // A new call in the reused slot replaces the stale bucket.
        w.record(10 * s, SLOW);
        assert_eq!(w.tally(10 * s).slow, 1);
        assert_eq!(w.tally(10 * s).calls, 2);
        assert_eq!(w.tally(30 * s), Tally::default());
    }

    /// The running total equals a sum over the calls still in the window,
    /// for calls arriving in order, slightly out of order, and after gaps
    /// longer than the window.
    #[test]
    fn time_ring_running_total_matches_a_recount() {
        let bucket = 100u64;
        let n = 8u64;
        let mut w = Window::new(SlidingWindow::Time {
            duration: Duration::from_nanos(bucket * n),
            buckets: n as u32,
        });
        let mut calls: Vec<(u64, u8)> = Vec::new();
        let mut now = 0u64;
        let mut seed = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..20_000 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            now += match seed % 100 {
                0 => bucket * n * 2, // a gap longer than the window
                1..=20 => bucket,
                _ => seed % 7,
            };
            // Up to 50 ns late (a reading taken before another call's).
            let at = now.saturating_sub((seed >> 8) % 50);
            let flags = ((seed >> 16) % 4) as u8;
            w.record(at, flags);
            calls.push((at, flags));
            let head = calls.iter().map(|c| c.0).max().unwrap_or(0) / bucket;
            calls.retain(|(t, _)| t / bucket + n > head);
            let expect = calls
                .iter()
                .filter(|(t, _)| t / bucket + n > head && t / bucket <= head)
                .fold(Tally::default(), |mut t, (_, f)| {
                    t.calls += 1;
                    t.failures += u64::from(f & FAILURE != 0);
                    t.slow += u64::from(f & SLOW != 0);
                    t
                });
            assert_eq!(w.tally(at), expect, "at {at}");
        }
    }
}
