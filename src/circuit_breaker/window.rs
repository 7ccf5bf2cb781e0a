//! Sliding windows: what the breaker remembers of recent calls.

use super::config::SlidingWindow;

/// A recorded call: bit 0 = failure, bit 1 = slow.
pub(crate) const FAILURE: u8 = 1;
pub(crate) const SLOW: u8 = 2;

/// Aggregate of a window.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Tally {
    pub(crate) calls: u32,
    pub(crate) failures: u32,
    pub(crate) slow: u32,
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
                Window::Time(TimeRing {
                    buckets: vec![Bucket::default(); buckets as usize].into_boxed_slice(),
                    bucket_nanos: u64::try_from(bucket_nanos).unwrap_or(u64::MAX),
                })
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

    /// The calls in the window at `now`.
    pub(crate) fn tally(&self, now: u64) -> Tally {
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
            Window::Time(r) => r.buckets.fill(Bucket::default()),
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
            self.tally.failures -= u32::from(old & FAILURE != 0);
            self.tally.slow -= u32::from(old & SLOW != 0);
        } else {
            self.len += 1;
            self.tally.calls += 1;
        }
        self.slots[self.pos] = flags;
        self.tally.failures += u32::from(flags & FAILURE != 0);
        self.tally.slow += u32::from(flags & SLOW != 0);
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

/// The calls of the last T, in buckets.
pub(crate) struct TimeRing {
    buckets: Box<[Bucket]>,
    bucket_nanos: u64,
}

impl TimeRing {
    fn record(&mut self, now: u64, flags: u8) {
        let period = now / self.bucket_nanos + 1;
        let n = self.buckets.len() as u64;
        let b = &mut self.buckets[(period % n) as usize];
        if b.period != period {
            *b = Bucket {
                period,
                tally: Tally::default(),
            };
        }
        b.tally.calls += 1;
        b.tally.failures += u32::from(flags & FAILURE != 0);
        b.tally.slow += u32::from(flags & SLOW != 0);
    }

    fn tally(&self, now: u64) -> Tally {
        let period = now / self.bucket_nanos + 1;
        let n = self.buckets.len() as u64;
        let mut t = Tally::default();
        for b in self.buckets.iter() {
            if b.period != 0 && b.period <= period && b.period + n > period {
                t.calls += b.tally.calls;
                t.failures += b.tally.failures;
                t.slow += b.tally.slow;
            }
        }
        t
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
}
