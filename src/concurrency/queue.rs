//! The optional bounded wait queue: requests that find no free slot wait
//! up to a maximum time for one, in FIFO or LIFO order, instead of being
//! refused at once.
//!
//! A freed slot is handed to a waiter under the queue's lock (the waiter is
//! marked granted and woken; the in-flight count already includes it), so a
//! new arrival cannot take it first while anyone waits. A waiter that goes
//! away leaves the queue, and gives back a slot it was granted but never
//! used.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Waker;
use std::time::Duration;

use super::partition::Criticality;
use super::state::Shared;
use crate::util::lock;

/// Which waiter gets a freed slot first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(rename_all = "lowercase"))]
pub enum QueueOrder {
    /// The newest waiter (the default, and what Netflix recommends for
    /// servers): under sustained overload the oldest waiters, whose callers
    /// are the likeliest to have given up, time out, while fresh requests
    /// are served with a short wait.
    #[default]
    Lifo,
    /// The oldest waiter: first come, first served.
    Fifo,
}

/// One waiter's grant flag, shared by its entry and its future.
pub(crate) type Slot = Arc<AtomicBool>;

#[derive(Debug)]
struct Entry {
    slot: Slot,
    class: Criticality,
    waker: Waker,
}

/// The queue, owned by the layer's [`Shared`] state.
#[derive(Debug)]
pub(crate) struct Queue {
    pub(crate) max_len: usize,
    pub(crate) max_wait: Duration,
    pub(crate) order: QueueOrder,
    /// Waiters in the queue: read without the lock on the admit and
    /// release paths (0 skips the queue entirely).
    len: AtomicUsize,
    waiters: Mutex<VecDeque<Entry>>,
}

/// What [`Queue::enqueue`] did.
pub(crate) enum Enqueued {
    /// A slot was free after all: the caller holds it.
    Granted,
    /// Waiting: the slot flag turns true when a slot is granted.
    Waiting(Slot),
    /// The queue is full.
    Full,
}

impl Queue {
    pub(crate) fn new(max_len: usize, max_wait: Duration, order: QueueOrder) -> Self {
        Self {
            max_len,
            max_wait,
            order,
            len: AtomicUsize::new(0),
            waiters: Mutex::new(VecDeque::with_capacity(max_len.min(1024))),
        }
    }

    /// Whether anyone waits (new arrivals then queue behind them).
    #[inline]
    pub(crate) fn is_occupied(&self) -> bool {
        self.len.load(Ordering::SeqCst) > 0
    }

    /// Waiters in the queue.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::SeqCst)
    }

    /// Queues a request of `class` (woken through `waker`), then hands out
    /// whatever slots are free, possibly to this very request.
    pub(crate) fn enqueue(&self, shared: &Shared, class: Criticality, waker: &Waker) -> Enqueued {
        let mut waiters = lock(&self.waiters);
        if waiters.len() >= self.max_len {
            // A full queue still hands out a slot freed meanwhile.
            self.grant_locked(shared, &mut waiters);
            if waiters.len() >= self.max_len {
                return Enqueued::Full;
            }
        }
        let slot: Slot = Arc::new(AtomicBool::new(false));
        waiters.push_back(Entry {
            slot: Arc::clone(&slot),
            class,
            waker: waker.clone(),
        });
        // Published before the grant attempt below: a releaser decrements
        // the in-flight count and then reads the length, so either it sees
        // this waiter or this grant attempt sees its free slot.
        self.len.store(waiters.len(), Ordering::SeqCst);
        self.grant_locked(shared, &mut waiters);
        if slot.load(Ordering::Acquire) {
            Enqueued::Granted
        } else {
            Enqueued::Waiting(slot)
        }
    }

    /// Hands free slots to waiters, in the queue's order; a waiter whose
    /// class finds no room is skipped for the next.
    pub(crate) fn grant(&self, shared: &Shared) {
        let mut waiters = lock(&self.waiters);
        self.grant_locked(shared, &mut waiters);
    }

    fn grant_locked(&self, shared: &Shared, waiters: &mut VecDeque<Entry>) {
        let partitioned = shared.partitions.is_some();
        let mut i = 0;
        while i < waiters.len() {
            let idx = match self.order {
                QueueOrder::Fifo => i,
                QueueOrder::Lifo => waiters.len() - 1 - i,
            };
            if shared.try_acquire(waiters[idx].class) {
                let entry = waiters.remove(idx).expect("index in range");
                entry.slot.store(true, Ordering::Release);
                entry.waker.wake();
                // Same position again: the next entry moved into it.
                continue;
            }
            if !partitioned {
                // Without classes every waiter needs the same room.
                break;
            }
            i += 1;
        }
        self.len.store(waiters.len(), Ordering::SeqCst);
    }

    /// Updates the waker of a waiting `slot`; true if it was granted.
    pub(crate) fn poll_slot(&self, slot: &Slot, waker: &Waker) -> bool {
        if slot.load(Ordering::Acquire) {
            return true;
        }
        let mut waiters = lock(&self.waiters);
        if slot.load(Ordering::Acquire) {
            return true;
        }
        if let Some(e) = waiters.iter_mut().find(|e| Arc::ptr_eq(&e.slot, slot)) {
            if !e.waker.will_wake(waker) {
                e.waker = waker.clone();
            }
        }
        false
    }

    /// Takes a waiting `slot` out of the queue (its wait expired, or its
    /// future was dropped). True if it had been granted meanwhile: the
    /// caller then holds a slot.
    pub(crate) fn leave(&self, slot: &Slot) -> bool {
        let mut waiters = lock(&self.waiters);
        if slot.load(Ordering::Acquire) {
            return true;
        }
        if let Some(i) = waiters.iter().position(|e| Arc::ptr_eq(&e.slot, slot)) {
            waiters.remove(i);
        }
        self.len.store(waiters.len(), Ordering::SeqCst);
        false
    }
}
