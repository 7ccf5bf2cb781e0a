//! Per-thread lanes: shared state that a request's future or guard keeps
//! alive through a reference count on a cache line of its thread's own,
//! not on the one line every thread writes.
//!
//! A layer's state lives behind one `Arc`; a future that must keep it
//! alive past `call` (the timeout's, to answer when its timer fires) or a
//! guard that ends with the response body (the drain's guard, the
//! concurrency limit's permit) would clone that `Arc` for every request:
//! an increment and a decrement of one counter that every core writes.
//! Through lanes, the clone counts on the calling thread's lane instead.
//! Kept for the `*_2_threads` rows of `benches/compare/benches/stack.rs`
//! (benches/README.md, "Clones per request, and two threads").

use std::ops::Deref;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

/// This thread's lane number (threads take numbers in turn).
#[inline]
pub(crate) fn index() -> usize {
    use std::cell::Cell;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    thread_local! {
        static LANE: Cell<u32> = const { Cell::new(u32::MAX) };
    }
    let mut i = LANE.with(Cell::get);
    if i == u32::MAX {
        i = NEXT.fetch_add(1, Ordering::Relaxed) & 0xFFFF;
        LANE.with(|c| c.set(i));
    }
    i as usize
}

/// The number of lanes: the machine's parallelism rounded up to a power of
/// two, at most 16.
pub(crate) fn count() -> usize {
    std::thread::available_parallelism()
        .map_or(4, |n| n.get().min(16))
        .next_power_of_two()
}

/// `T`, and a few padded lanes that each own it.
pub(crate) struct Laned<T> {
    value: Arc<T>,
    /// The threads' lanes (`mask + 1` of them, a power of two), then, with
    /// [`Laned::with_spare`], one more that no thread picks.
    lanes: Box<[Arc<Lane<T>>]>,
    mask: usize,
}

/// A cache-line-padded owner of a [`Laned`] value.
#[repr(align(128))]
pub(crate) struct Lane<T>(Arc<T>);

impl<T> Laned<T> {
    pub(crate) fn new(value: T) -> Self {
        Self::with_lanes(value, count())
    }

    /// Like [`Laned::new`], with one more lane that no thread picks, for
    /// [`Laned::spare`].
    pub(crate) fn with_spare(value: T) -> Self {
        Self::with_lanes(value, count() + 1)
    }

    fn with_lanes(value: T, n: usize) -> Self {
        let value = Arc::new(value);
        Self {
            lanes: (0..n).map(|_| Arc::new(Lane(Arc::clone(&value)))).collect(),
            mask: count() - 1,
            value,
        }
    }

    /// This thread's lane: a clone counts on that lane.
    #[inline]
    pub(crate) fn lane(&self) -> Arc<Lane<T>> {
        Arc::clone(&self.lanes[self.number()])
    }

    /// This thread's lane number: its place in [`Laned::weak_lanes`].
    #[inline]
    pub(crate) fn number(&self) -> usize {
        index() & self.mask
    }

    /// The lane numbered `n`.
    #[inline]
    pub(crate) fn lane_at(&self, n: usize) -> Arc<Lane<T>> {
        Arc::clone(&self.lanes[n])
    }

    /// The number of the lane no thread picks (made by
    /// [`Laned::with_spare`]; otherwise the last thread's lane).
    #[inline]
    pub(crate) fn spare(&self) -> usize {
        self.lanes.len() - 1
    }

    /// Weak references to every lane, in order: each one's
    /// [`Weak::strong_count`] is 1 (this `Laned`'s) plus its clones.
    pub(crate) fn weak_lanes(&self) -> Box<[Weak<Lane<T>>]> {
        self.lanes.iter().map(Arc::downgrade).collect()
    }

    /// A weak reference to `T` (for a task that must not keep it alive).
    pub(crate) fn downgrade(&self) -> Weak<T> {
        Arc::downgrade(&self.value)
    }
}

impl<T> Lane<T> {
    /// A weak reference to `T` (for a task that must not keep it alive).
    pub(crate) fn downgrade(&self) -> Weak<T> {
        Arc::downgrade(&self.0)
    }

    /// `T` itself, kept alive without this lane.
    pub(crate) fn value(&self) -> Arc<T> {
        Arc::clone(&self.0)
    }
}

impl<T> Deref for Laned<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.value
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Laned<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.value, f)
    }
}

impl<T: std::fmt::Debug> std::fmt::Debug for Lane<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(&*self.0, f)
    }
}

impl<T> Deref for Lane<T> {
    type Target = T;

    #[inline]
    fn deref(&self) -> &T {
        &self.0
    }
}

/// A count that many threads add to: one cache-line-padded slot per lane,
/// so that two threads counting at once write different lines; the count
/// is the sum of the slots (not a snapshot: a count made while the slots
/// are read may or may not be in it). With one lane (a keyed breaker's
/// per-key state), one unpadded counter: no 128 bytes per key.
pub(crate) enum LaneCount {
    One(AtomicU64),
    Many(Box<[CountSlot]>),
}

#[derive(Default)]
#[repr(align(128))]
pub(crate) struct CountSlot(AtomicU64);

impl LaneCount {
    /// A count of zero, with `lanes` slots (a power of two).
    pub(crate) fn new(lanes: usize) -> Self {
        debug_assert!(lanes.is_power_of_two());
        if lanes <= 1 {
            return Self::One(AtomicU64::new(0));
        }
        Self::Many((0..lanes).map(|_| CountSlot::default()).collect())
    }

    /// Adds one on this thread's slot.
    #[inline]
    pub(crate) fn add_one(&self) {
        let slot = match self {
            Self::One(n) => n,
            // `len()` is a power of two.
            Self::Many(slots) => &slots[index() & (slots.len() - 1)].0,
        };
        slot.fetch_add(1, Ordering::Relaxed);
    }

    fn slots(&self) -> impl Iterator<Item = &AtomicU64> {
        let (one, many) = match self {
            Self::One(n) => (Some(n), &[][..]),
            Self::Many(slots) => (None, &slots[..]),
        };
        one.into_iter().chain(many.iter().map(|s| &s.0))
    }

    /// The count: the sum of the slots.
    pub(crate) fn sum(&self) -> u64 {
        self.slots()
            .fold(0u64, |n, s| n.wrapping_add(s.load(Ordering::Relaxed)))
    }

    /// Starts again from zero.
    pub(crate) fn reset(&self) {
        for s in self.slots() {
            s.store(0, Ordering::Relaxed);
        }
    }
}

impl std::fmt::Debug for LaneCount {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_tuple("LaneCount").field(&self.sum()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lane_is_the_value_and_keeps_it_alive() {
        let laned = Laned::new(String::from("state"));
        assert!(laned.lanes.len().is_power_of_two());
        let lane = laned.lane();
        // The same lane on the same thread; another thread may get another.
        assert!(Arc::ptr_eq(&lane, &laned.lane()));
        let other = std::thread::scope(|s| s.spawn(|| laned.lane()).join().unwrap());
        assert_eq!(&**other, "state");
        drop(laned);
        assert_eq!(&**lane, "state");
    }

    #[test]
    fn a_lane_count_sums_every_thread_and_resets() {
        for lanes in [1, 4] {
            lane_count_sums_and_resets(LaneCount::new(lanes));
        }
    }

    fn lane_count_sums_and_resets(count: LaneCount) {
        std::thread::scope(|s| {
            for _ in 0..8 {
                s.spawn(|| {
                    for _ in 0..1000 {
                        count.add_one();
                    }
                });
            }
        });
        assert_eq!(count.sum(), 8000);
        count.reset();
        assert_eq!(count.sum(), 0);
        count.add_one();
        assert_eq!(count.sum(), 1);
    }
}
