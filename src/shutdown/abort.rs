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
    /// free with [`fire`](Self::fire).
    pub(crate) fn register(&self, key: &mut usize, waker: &Waker) -> bool {
        {
            let mut slots = self.lock();
            if *key == NO_KEY {
                *key = match slots.free.pop() {
                    Some(k) => {
                        slots.wakers[k] = Some(waker.clone());
                        k
                    }
                    None => {
                        slots.wakers.push(Some(waker.clone()));
                        slots.wakers.len() - 1
                    }
                };
            } else {
                let slot = &mut slots.wakers[*key];
                match slot {
                    Some(w) if w.will_wake(waker) => {}
                    _ => *slot = Some(waker.clone()),
                }
            }
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
        assert!(!sig.register(&mut a, &waker));
        assert!(!sig.register(&mut a, &waker));
        assert!(!sig.register(&mut b, &waker));
        assert_eq!(sig.registered(), 2);
        sig.unregister(b);
        assert_eq!(sig.registered(), 1);
        let mut c = NO_KEY;
        assert!(!sig.register(&mut c, &waker));
        assert_eq!(c, b, "a freed slot is reused");
        sig.fire();
        assert_eq!(count.0.load(Ordering::SeqCst), 2);
        assert!(sig.is_fired());
        assert!(sig.register(&mut a, &waker));
        sig.unregister(a);
        sig.unregister(c);
    }
}
