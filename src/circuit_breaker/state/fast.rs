//! Fast successes of a time window: counted per thread, without the
//! window's lock.
//!
//! A time window records every call in its bucket, so every call would
//! take the window's mutex: on two threads a line both cores write on
//! every call. Most calls are successes that cannot change the verdict: in
//! the closed state, once the window holds `minimum_calls` calls and no
//! rule is met, one more success only lowers the failure and slow-call
//! rates, and only a new bucket (old calls leaving the window) can raise
//! them again. So the locked path, after it has judged the window, *opens*
//! the fast path for this state generation and this bucket: until either
//! changes, a success that is neither failed nor slow is counted on its
//! thread's slot (one compare-and-swap on a line of its own) instead of in
//! the window. Every locked visit (a failure, a slow call, a thread's first
//! call in a new bucket, a slot's count full, a handle's read) first folds
//! the slots' counts into their buckets, then decides as before; so the
//! breaker trips on exactly the calls it tripped on with the lock alone.
//!
//! A slot holds `generation (15 bits) | 1 | period (32 bits) | count (16
//! bits)`: counts of another generation are dropped when folded (a result
//! counts only in the generation that admitted it), and a clear (a
//! transition, a reset) empties the slots and closes the fast path.

use std::sync::atomic::{AtomicU64, Ordering};

use super::super::window::Window;
use super::CircuitState;

const COUNT_BITS: u32 = 16;
const COUNT_MASK: u64 = (1 << COUNT_BITS) - 1;
const PERIOD_BITS: u32 = 32;
const PERIOD_MASK: u64 = (1 << PERIOD_BITS) - 1;
/// Set in every tag, so that no tag is 0 (an empty slot, a closed path).
const MARK: u64 = 1 << (COUNT_BITS + PERIOD_BITS);
const GENERATION_SHIFT: u32 = COUNT_BITS + PERIOD_BITS + 1;

/// One thread's count, on a line of its own.
#[repr(align(128))]
struct Slot(AtomicU64);

/// The slots of one time-window breaker.
pub(crate) struct FastSuccesses {
    /// The tag (generation and period) the fast path is open for; 0: shut.
    open: AtomicU64,
    slots: Box<[Slot]>,
    bucket_nanos: u64,
}

impl FastSuccesses {
    /// `slots` slots (a power of two: one per lane of the breaker, so a
    /// keyed breaker of many keys keeps one) for a time window with buckets
    /// of `bucket_nanos`.
    pub(crate) fn new(bucket_nanos: u64, slots: usize) -> Self {
        debug_assert!(slots.is_power_of_two());
        Self {
            open: AtomicU64::new(0),
            slots: (0..slots).map(|_| Slot(AtomicU64::new(0))).collect(),
            bucket_nanos: bucket_nanos.max(1),
        }
    }

    /// The window's period of `now` (as `TimeRing` numbers them).
    #[inline]
    fn period(&self, now: u64) -> u64 {
        now / self.bucket_nanos + 1
    }

    /// The tag of state word `w`'s generation and `period`.
    #[inline]
    fn tag(w: u64, period: u64) -> u64 {
        ((w >> 3) << GENERATION_SHIFT) | MARK | ((period & PERIOD_MASK) << COUNT_BITS)
    }

    /// Counts a success (neither failed nor slow) of a call admitted under
    /// `w`, ending at `now`, if the fast path is open for them; `false`:
    /// record it under the lock.
    #[inline]
    pub(crate) fn try_count(&self, w: u64, now: u64) -> bool {
        let tag = Self::tag(w, self.period(now));
        if self.open.load(Ordering::Relaxed) != tag {
            return false;
        }
        // `slots.len()` is a power of two.
        let slot = &self.slots[crate::util::lanes::index() & (self.slots.len() - 1)].0;
        let current = slot.load(Ordering::Relaxed);
        let next = if current == 0 {
            tag | 1
        } else if current & !COUNT_MASK == tag && current & COUNT_MASK < COUNT_MASK {
            current + 1
        } else {
            // Another bucket's or generation's count, or a full one: the
            // locked path folds it first.
            return false;
        };
        slot.compare_exchange(current, next, Ordering::Relaxed, Ordering::Relaxed)
            .is_ok()
    }

    /// Folds every slot's count into `window` (its lock held, the breaker
    /// in state word `w`, at `now`): counts of `w`'s generation go to their
    /// bucket, others are dropped.
    pub(crate) fn fold(&self, window: &mut Window, w: u64, now: u64) {
        let generation = Self::tag(w, 0) & !(MARK | (PERIOD_MASK << COUNT_BITS));
        let head = self.period(now);
        for slot in self.slots.iter() {
            // Most slots are empty: read before writing the line.
            if slot.0.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let v = slot.0.swap(0, Ordering::Relaxed);
            if v & !(MARK | (PERIOD_MASK << COUNT_BITS) | COUNT_MASK) != generation {
                continue;
            }
            // The latest period at or before `head` with these low bits,
            // or the next one: a thread whose clock reading came a little
            // later than this one's may already count in it.
            let low = (v >> COUNT_BITS) & PERIOD_MASK;
            let ahead = low.wrapping_sub(head) & PERIOD_MASK;
            let period = if ahead <= 1 {
                head + ahead
            } else {
                head.saturating_sub(head.wrapping_sub(low) & PERIOD_MASK)
            };
            if period == 0 {
                continue;
            }
            #[allow(clippy::cast_possible_truncation)] // 16 bits
            window.record_successes(period, (v & COUNT_MASK) as u32);
        }
    }

    /// After the locked path judged the window at `now` (`calls` in it, a
    /// rule met or not, in state word `w`): opens the fast path for `w`'s
    /// generation and `now`'s bucket if one more success cannot change the
    /// verdict, else shuts it.
    pub(crate) fn judged(&self, w: u64, now: u64, calls: u64, minimum_calls: u32, met: bool) {
        let open = CircuitState::from_word(w) == CircuitState::Closed
            && !met
            && calls >= u64::from(minimum_calls.max(1));
        let tag = if open {
            Self::tag(w, self.period(now))
        } else {
            0
        };
        if self.open.load(Ordering::Relaxed) != tag {
            self.open.store(tag, Ordering::Relaxed);
        }
    }

    /// Shuts the fast path and drops every count (the window was cleared).
    pub(crate) fn clear(&self) {
        self.open.store(0, Ordering::Relaxed);
        for slot in self.slots.iter() {
            if slot.0.load(Ordering::Relaxed) != 0 {
                slot.0.store(0, Ordering::Relaxed);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::super::super::config::SlidingWindow;
    use super::super::word;
    use super::*;

    const SECOND: u64 = 1_000_000_000;

    fn window() -> (Window, FastSuccesses) {
        let window = Window::new(SlidingWindow::Time {
            duration: Duration::from_secs(10),
            buckets: 10,
        });
        let fast = FastSuccesses::new(window.bucket_nanos().unwrap(), 1);
        (window, fast)
    }

    #[test]
    fn counts_only_while_open_for_the_generation_and_bucket() {
        let (mut window, fast) = window();
        let w = word(CircuitState::Closed, 7);
        assert!(!fast.try_count(w, 0), "shut until judged");
        fast.judged(w, 0, 9, 10, false);
        assert!(!fast.try_count(w, 0), "below the minimum");
        fast.judged(w, 0, 10, 10, true);
        assert!(!fast.try_count(w, 0), "a rule met");
        fast.judged(word(CircuitState::MetricsOnly, 7), 0, 10, 10, false);
        assert!(!fast.try_count(w, 0), "metrics-only judges every call");
        fast.judged(w, 0, 10, 10, false);
        assert!(fast.try_count(w, 0));
        assert!(fast.try_count(w, SECOND - 1));
        assert!(!fast.try_count(w, SECOND), "the next bucket");
        assert!(
            !fast.try_count(word(CircuitState::Closed, 8), 0),
            "another generation"
        );
        fast.fold(&mut window, w, SECOND - 1);
        assert_eq!(window.tally(SECOND - 1).calls, 2);
        // Folded: empty again, and still open.
        fast.fold(&mut window, w, SECOND - 1);
        assert_eq!(window.tally(SECOND - 1).calls, 2);
        assert!(fast.try_count(w, 0));
        fast.clear();
        assert!(!fast.try_count(w, 0), "a clear shuts it");
        fast.fold(&mut window, w, 0);
        assert_eq!(window.tally(0).calls, 2, "and drops the counts");
    }

    #[test]
    fn folds_into_the_bucket_of_the_count() {
        let (mut window, fast) = window();
        let w = word(CircuitState::Closed, 1);
        // Counted in the second bucket, folded by a thread still in the
        // first: they land in the second.
        fast.judged(w, SECOND, 10, 10, false);
        assert!(fast.try_count(w, SECOND));
        fast.fold(&mut window, w, SECOND - 1);
        assert_eq!(window.tally(SECOND).calls, 1);
        // Counted in the second bucket, folded 10 s later: gone with it.
        assert!(fast.try_count(w, SECOND));
        fast.fold(&mut window, w, 11 * SECOND);
        assert_eq!(window.tally(11 * SECOND).calls, 0);
        // Counted under another generation: dropped.
        assert!(fast.try_count(w, SECOND));
        fast.fold(&mut window, word(CircuitState::Closed, 2), SECOND);
        assert_eq!(window.tally(SECOND).calls, 0);
    }

    #[test]
    fn a_full_count_goes_to_the_lock() {
        let (_, fast) = window();
        let w = word(CircuitState::Closed, 3);
        fast.judged(w, 0, 10, 10, false);
        fast.slots[0].0.store(
            FastSuccesses::tag(w, 1) | (COUNT_MASK - 1),
            Ordering::Relaxed,
        );
        assert!(fast.try_count(w, 0));
        assert!(!fast.try_count(w, 0), "full");
    }
}
