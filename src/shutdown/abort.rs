//! A one-shot abort signal that in-flight futures and bodies race against.
//!
//! Registration is lazy: a future registers its waker only when its inner
//! future is pending, so requests that complete at once never touch the lock.
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

#[derive(Debug, Default)]
pub(crate) struct AbortSignal {
    fired: AtomicBool,
    slots: Mutex<Slots>,
}

#[derive(Debug, Default)]
struct Slots {
    wakers: Vec<Option<Waker>>,
    free: Vec<usize>,
}

impl AbortSignal {
    fn lock(&self) -> MutexGuard<'_, Slots> {
        crate::util::lock(&self.slots)
    }

    /// Has the signal fired?
    #[inline]
    pub(crate) fn is_fired(&self) -> bool {
        self.fired.load(Ordering::SeqCst)
    }

    /// Registers (or refreshes) `waker` in the slot `key`, then says whether
    /// the signal has fired. Checking after registering makes the pair race
    /// free with [`fire`](Self::fire). `registered` is set to the identity
    /// of the waker the slot now holds (see [`identity`]).
    pub(crate) fn register(
        &self,
        key: &mut usize,
        registered: &mut WakerId,
        waker: &Waker,
    ) -> bool {
        {
            let mut slots = self.lock();
            let slot = if *key == NO_KEY {
                *key = match slots.free.pop() {
                    Some(k) => k,
                    None => {
                        slots.wakers.push(None);
                        slots.wakers.len() - 1
                    }
                };
                &mut slots.wakers[*key]
            } else {
                &mut slots.wakers[*key]
            };
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
        let mut slots = self.lock();
        slots.wakers[key] = None;
        slots.free.push(key);
    }

    /// Fires the signal and wakes every registered waiter.
    pub(crate) fn fire(&self) {
        self.fired.store(true, Ordering::SeqCst);
        let wakers: Vec<Waker> = self
            .lock()
            .wakers
            .iter_mut()
            .filter_map(Option::take)
            .collect();
        for w in wakers {
            w.wake();
        }
    }

    /// How many slots are registered (tests).
    #[cfg(test)]
    pub(crate) fn registered(&self) -> usize {
        self.lock().wakers.iter().filter(|w| w.is_some()).count()
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
        assert!(!sig.register(&mut a, &mut id, &waker));
        assert_eq!(id, identity(&waker), "the slot holds a clone of the waker");
        assert!(!sig.register(&mut a, &mut id, &waker));
        assert!(!sig.register(&mut b, &mut id, &waker));
        assert_eq!(sig.registered(), 2);
        // Another task's waker takes the slot's place and its identity.
        let other = Waker::from(Arc::new(Count(AtomicUsize::new(0))));
        assert!(!sig.register(&mut b, &mut id, &other));
        assert_eq!(id, identity(&other));
        assert_ne!(identity(&other), identity(&waker));
        assert!(!sig.register(&mut b, &mut id, &waker));
        assert_eq!(id, identity(&waker));
        sig.unregister(b);
        assert_eq!(sig.registered(), 1);
        let mut c = NO_KEY;
        assert!(!sig.register(&mut c, &mut id, &waker));
        assert_eq!(c, b, "a freed slot is reused");
        sig.fire();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(sig.is_fired());
        assert!(sig.register(&mut a, &mut id, &waker));
        sig.unregister(a);
        sig.unregister(c);
    }
}
