//! A one-shot abort signal that in-flight futures and bodies race against.
//!
//! Registration is lazy: a future registers its waker only when its inner
//! future is pending, so requests that complete at once never touch a lock;
//! one that is pending takes its thread's lane's lock (to register, and to
//! give its slot back), which no other thread's requests wait for.
//! Each registration owns a slot (a key) and replaces its waker in place, so a
//! long stream polled many times keeps one slot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::Waker;

/// No slot owned yet.
pub(crate) const NO_KEY: usize = usize::MAX;

/// A waker's identity: its data and vtable addresses, what
/// [`Waker::will_wake`] compares. A vtable's address is never 0, so
/// [`NO_WAKER`] is no waker's.
pub(crate) type WakerId = (usize, usize);

/// The identity of no waker.
pub(crate) const NO_WAKER: WakerId = (0, 0);

/// `waker`'s identity. Two wakers of the same identity wake the same task
/// (`will_wake`); the identity of a waker a slot holds stays its own until
/// the slot lets the waker go, as the addresses stay in use until then.
#[inline]
pub(crate) fn identity(waker: &Waker) -> WakerId {
    (
        waker.data() as usize,
        std::ptr::from_ref(waker.vtable()) as usize,
    )
}

/// The abort signal: a flag, and the wakers of the requests pending on it
/// in slots spread over per-thread lanes (`util::lanes` numbers), so that
/// requests registering on two threads at once take two locks, not one
/// that both wait for (the `contended_2_threads/pending_once` rows of
/// `benches/compare/benches/probe.rs`, `benches/README.md`).
#[derive(Debug)]
pub(crate) struct AbortSignal {
    fired: AtomicBool,
    lanes: Box<[Lane]>,
}

/// One lane's slots, on a cache line of its own.
#[derive(Debug, Default)]
#[repr(align(128))]
struct Lane(Mutex<Slots>);

#[derive(Debug, Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

/// A key is a slot's index in its lane, shifted, and the lane's number in
/// the low bits (at most 16 lanes: `util::lanes::count`).
const LANE_BITS: u32 = 4;

impl Default for AbortSignal {
    fn default() -> Self {
        let lanes = crate::util::lanes::count();
        debug_assert!(lanes.is_power_of_two() && lanes <= 1 << LANE_BITS);
        Self {
            fired: AtomicBool::new(false),
            lanes: (0..lanes).map(|_| Lane::default()).collect(),
        }
    }
}

impl AbortSignal {
    /// The slots of lane `lane` (a number below the lane count).
    fn lock(&self, lane: usize) -> MutexGuard<'_, Slots> {
        crate::util::lock(&self.lanes[lane].0)
    }

    /// Has the signal fired?
    #[inline]
    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Registers (or refreshes) `waker` in the slot `key` (a new one, in
    /// lane `lane` modulo the lane count, if `key` is [`NO_KEY`]: the
    /// caller's thread's, which the drain's guard has at hand), then says
    /// whether the signal has fired. Checking after registering makes the
    /// pair race free with [`fire`](Self::fire). `registered` is set to the
    /// identity of the waker the slot now holds (see [`identity`]).
    pub(crate) fn register(
        &self,
        key: &mut usize,
        lane: usize,
        registered: &mut WakerId,
        waker: &Waker,
    ) -> bool {
        {
            let lane = if *key == NO_KEY {
                // The lane count is a power of two.
                lane & (self.lanes.len() - 1)
            } else {
                *key & ((1 << LANE_BITS) - 1)
            };
            let mut slots = self.lock(lane);
            if *key == NO_KEY {
                let index = match slots.free.pop() {
                    Some(i) => i,
                    None => {
                        slots.wakers.push(None);
                        slots.wakers.len() - 1
                    }
                };
                *key = (index << LANE_BITS) | lane;
            }
            let slot = &mut slots.wakers[*key >> LANE_BITS];
            let held = match slot {
                Some(w) if w.will_wake(waker) => w,
                _ => slot.insert(waker.clone()),
            };
            *registered = identity(held);
        }
        self.is_fired()
    }

    /// Gives the slot back.
    #[inline]
    pub(crate) fn unregister(&self, key: usize) {
        if key != NO_KEY {
            self.unregister_slot(key);
        }
    }

    fn unregister_slot(&self, key: usize) {
        let mut slots = self.lock(key & ((1 << LANE_BITS) - 1));
        let index = key >> LANE_BITS;
        slots.wakers[index] = None;
        slots.free.push(index);
    }

    /// Fires the signal and wakes every registered waiter.
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        for lane in 0..self.lanes.len() {
            let wakers: Vec<Waker> = self
                .lock(lane)
                .wakers
                .iter_mut()
                .filter_map(Option::take)
                .collect();
            for w in wakers {
                w.wake();
            }
        }
    }

    /// How many slots are registered (tests).
    #[cfg(test)]
    pub(crate) fn registered(&self) -> usize {
        (0..self.lanes.len())
            .map(|lane| {
                self.lock(lane)
                    .wakers
                    .iter()
                    .filter(|w| w.is_some())
                    .count()
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::task::Wake;

    struct Count(AtomicUsize);
    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[test]
    fn registers_once_per_key_and_wakes_on_fire() {
        let sig = AbortSignal::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        let (mut a, mut b) = (NO_KEY, NO_KEY);
        let mut id = NO_WAKER;
        assert!(!sig.register(&mut a, 0, &mut id, &waker));
        assert_eq!(id, identity(&waker), "the slot holds a clone of the waker");
        assert!(!sig.register(&mut a, 0, &mut id, &waker));
        assert!(!sig.register(&mut b, 0, &mut id, &waker));
        assert_eq!(sig.registered(), 2);
        // Another task's waker takes the slot's place and its identity.
        let other = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        assert!(!sig.register(&mut b, 0, &mut id, &other));
        assert_eq!(id, identity(&other));
        assert_ne!(identity(&other), identity(&waker));
        assert!(!sig.register(&mut b, 0, &mut id, &waker));
        assert_eq!(id, identity(&waker));
        sig.unregister(b);
        assert_eq!(sig.registered(), 1);
        let mut c = NO_KEY;
        assert!(!sig.register(&mut c, 0, &mut id, &waker));
        assert_eq!(c, b, "a freed slot is reused");
        sig.fire();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(sig.is_fired());
        assert!(sig.register(&mut a, 0, &mut id, &waker));
        sig.unregister(a);
        sig.unregister(c);
    }

    #[test]
    fn fire_wakes_every_lane() {
        let sig = AbortSignal::default();
        let count = Arc::new(Count(AtomicUsize::new(0)));
        let waker = Waker::from(count.clone());
        // One registration from each of eight threads (threads take lane
        // numbers in turn, so they spread over the lanes), kept.
        let keys: Vec<usize> = std::thread::scope(|s| {
            let spawned: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        let (mut key, mut id) = (NO_KEY, NO_WAKER);
                        let lane = crate::util::lanes::index();
                        assert!(!sig.register(&mut key, lane, &mut id, &waker));
                        key
                    })
                })
                .collect();
            spawned.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(sig.registered(), 8);
        let lanes: std::collections::HashSet<usize> =
            keys.iter().map(|k| k & ((1 << LANE_BITS) - 1)).collect();
        assert!(
            lanes.len() > 1 || sig.lanes.len() == 1,
            "spread over the lanes"
        );
        // A slot is given back on its own lane, from any thread.
        sig.unregister(keys[0]);
        assert_eq!(sig.registered(), 7);
        sig.fire();
        assert_eq!(count.0.load(Ordering::SeqCst), 7);
        assert_eq!(sig.registered(), 0);
        for key in &keys[1..] {
            sig.unregister(*key);
        }
    }
}
