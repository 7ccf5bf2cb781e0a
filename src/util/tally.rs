//! Counters counted per thread and added to the recorder every
//! [`PERIOD`](super::sampled::PERIOD), rather than on every event.
//!
//! Three counters move on every admitted request through the stack:
//! `rampart_rate_limit_admitted_total`, `rampart_circuit_breaker_calls_total`
//! and `rampart_concurrency_samples_total`. With
//! `metrics-exporter-prometheus`, each increment is a dynamic call and two
//! atomic read-modify-writes on lines every core writes (the value and the
//! handle's generation). Here an event is a plain load and store on a slot
//! that only the calling thread writes; a task per [`Tallies`]
//! (`util::sampled`) sums the threads' slots every period and adds what is
//! new to the recorder's counter. A scrape sees every event, at most one
//! period late (and not late at all once the `Tallies` is dropped: its
//! last events are added then).
//!
//! ```text
//! event:         sampler running?                 (one relaxed load)
//!                this thread's slot += 1          (a load and a store)
//! sampler task:  every PERIOD: counter += Σ slots − published
//! thread exit:   its slots are folded into the registry's retired sums
//! ```
//!
//! Adding the difference (rather than setting the counter's value) keeps a
//! counter right when something else adds to the same series too (two
//! layers given one name share the recorder's counter), and with recorders
//! that take a counter's value when they read it.
//!
//! Where a thread cannot count (its thread-locals already destroyed, or
//! every slot number taken), or no tokio runtime can run the task, the
//! event goes to the recorder at once, as before (without a runtime, after
//! a read of tokio's thread-local context that finds none).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use metrics::Counter;

use super::lock;
use super::sampled::{Sampled, Sampler};

/// Slot numbers: a thread that counts has a table of this many (8 KiB);
/// a counter beyond them counts at once.
const SLOTS: usize = 1024;
/// The slot number of a counter that has none (counted at once).
const NONE: u32 = u32::MAX;

/// A thread's slots, one per counter, written by that thread only; padded
/// so that two threads' tables never share a cache line.
#[repr(align(128))]
struct Table([AtomicU64; SLOTS]);

impl Default for Table {
    fn default() -> Self {
        Self(std::array::from_fn(|_| AtomicU64::new(0)))
    }
}

impl Table {
    /// Counts one event on slot `n`: only this table's thread writes it.
    #[inline]
    fn add(&self, n: u32) {
        let slot = &self.0[n as usize];
        slot.store(
            slot.load(Ordering::Relaxed).wrapping_add(1),
            Ordering::Relaxed,
        );
    }

    fn get(&self, n: u32) -> u64 {
        self.0[n as usize].load(Ordering::Relaxed)
    }

    fn zero(&self, n: u32) {
        self.0[n as usize].store(0, Ordering::Relaxed);
    }
}

/// Every live thread's table, the sums of the threads that ended, and the
/// slot numbers free for the next counter.
#[derive(Default)]
struct Registry {
    live: Vec<Arc<Table>>,
    /// By slot number: what threads that ended counted there.
    retired: Vec<u64>,
    free: Vec<u32>,
    next: u32,
}

fn registry() -> &'static Mutex<Registry> {
    static REGISTRY: OnceLock<Mutex<Registry>> = OnceLock::new();
    REGISTRY.get_or_init(Mutex::default)
}

impl Registry {
    fn total(&self, n: u32) -> u64 {
        let retired = self.retired.get(n as usize).copied().unwrap_or(0);
        self.live
            .iter()
            .fold(retired, |sum, t| sum.wrapping_add(t.get(n)))
    }

    fn take_number(&mut self) -> u32 {
        if let Some(n) = self.free.pop() {
            return n;
        }
        if (self.next as usize) < SLOTS {
            self.next += 1;
            return self.next - 1;
        }
        NONE
    }

    /// Gives slot `n` back, zeroed everywhere for its next counter.
    fn give_back(&mut self, n: u32) {
        for t in &self.live {
            t.zero(n);
        }
        if let Some(r) = self.retired.get_mut(n as usize) {
            *r = 0;
        }
        self.free.push(n);
    }
}

/// This thread's table, registered while the thread lives; its counts are
/// folded into the registry's retired sums when the thread ends.
struct Local(Arc<Table>);

impl Local {
    fn register() -> Self {
        let table = Arc::new(Table::default());
        lock(registry()).live.push(Arc::clone(&table));
        Self(table)
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let mut reg = lock(registry());
        let Some(at) = reg.live.iter().position(|t| Arc::ptr_eq(t, &self.0)) else {
            return;
        };
        reg.live.swap_remove(at);
        let Registry { retired, next, .. } = &mut *reg;
        retired.resize(*next as usize, 0);
        for (n, sum) in retired.iter_mut().enumerate() {
            *sum = sum.wrapping_add(self.0.get(n as u32));
        }
    }
}

thread_local! {
    static LOCAL: Local = Local::register();
}

/// `N` counters of one layer, counted per thread and added to the
/// recorder's counters by one task (see the module docs).
pub(crate) struct Tallies<const N: usize>(Arc<Inner<N>>);

struct Inner<const N: usize> {
    /// Each counter's slot number ([`NONE`]: counted at once).
    slots: [u32; N],
    counters: [Counter; N],
    /// What the recorder's counters were given so far.
    published: [AtomicU64; N],
    sampler: Sampler,
}

impl<const N: usize> Tallies<N> {
    /// Counts on `counters` (registered with the recorder by the caller).
    pub(crate) fn new(counters: [Counter; N]) -> Self {
        let slots = {
            let mut reg = lock(registry());
            std::array::from_fn(|_| reg.take_number())
        };
        Self(Arc::new(Inner {
            slots,
            counters,
            published: std::array::from_fn(|_| AtomicU64::new(0)),
            sampler: Sampler::default(),
        }))
    }

    /// Counts one event on counter `i`.
    #[inline]
    pub(crate) fn increment(&self, i: usize) {
        let inner = &*self.0;
        let n = inner.slots[i];
        // Counted on this thread's slot while the task runs to add it up
        // (events left there when a runtime shuts down under the task are
        // added by the next task, or when the counters are dropped).
        let counted = n != NONE
            && Sampler::running(inner, || Arc::downgrade(&self.0))
            && LOCAL.try_with(|l| l.0.add(n)).is_ok();
        if !counted {
            inner.counters[i].increment(1);
        }
    }
}

impl<const N: usize> std::fmt::Debug for Tallies<N> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Tallies")
            .field("slots", &self.0.slots)
            .finish_non_exhaustive()
    }
}

impl<const N: usize> Sampled for Inner<N> {
    fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    fn publish(&self) {
        let totals: [u64; N] = {
            let reg = lock(registry());
            std::array::from_fn(|i| match self.slots[i] {
                NONE => 0,
                n => reg.total(n),
            })
        };
        for ((total, published), counter) in totals.iter().zip(&self.published).zip(&self.counters)
        {
            // Only what no earlier publish added, whoever publishes (the
            // task, a later task after a runtime shut down, the drop).
            let before = published.fetch_max(*total, Ordering::AcqRel);
            if *total > before {
                counter.increment(total - before);
            }
        }
    }
}

impl<const N: usize> Drop for Inner<N> {
    fn drop(&mut self) {
        self.publish();
        let mut reg = lock(registry());
        for n in self.slots {
            if n != NONE {
                reg.give_back(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};

    use super::super::sampled::PERIOD;
    use super::*;

    /// What the recorder's counters `a_total` and `b_total` were given
    /// since the last snapshot (this recorder hands a counter's value over
    /// and starts it again from 0).
    fn take(snap: &Snapshotter) -> (u64, u64) {
        let mut got = (0, 0);
        for (key, _, _, value) in snap.snapshot().into_vec() {
            if let DebugValue::Counter(v) = value {
                match key.key().name() {
                    "a_total" => got.0 += v,
                    "b_total" => got.1 += v,
                    _ => {}
                }
            }
        }
        got
    }

    fn counters(recorder: &DebuggingRecorder) -> [Counter; 2] {
        metrics::with_local_recorder(recorder, || {
            [metrics::counter!("a_total"), metrics::counter!("b_total")]
        })
    }

    /// Events counted on this thread and on threads that have ended since
    /// are all added, each counter its own, within a period; none twice.
    #[tokio::test(start_paused = true)]
    async fn every_thread_s_events_reach_the_recorder_within_a_period() {
        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let t = Arc::new(Tallies::new(counters(&recorder)));
        assert!(t.0.slots.iter().all(|&n| n != NONE));
        t.increment(0);
        tokio::task::yield_now().await;
        assert_eq!(take(&snap), (1, 0), "the first is added at once");
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let t = Arc::clone(&t);
                std::thread::spawn(move || {
                    for _ in 0..1000 {
                        t.increment(0);
                    }
                    t.increment(1);
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        t.increment(1);
        assert_eq!(take(&snap), (0, 0), "not before the next period");
        tokio::time::sleep(PERIOD + Duration::from_millis(1)).await;
        assert_eq!(take(&snap), (4000, 5));
        tokio::time::sleep(PERIOD * 3).await;
        assert_eq!(take(&snap), (0, 0));
        // The last events are added when the counters are dropped.
        t.increment(1);
        drop(Arc::into_inner(t).unwrap());
        assert_eq!(take(&snap), (0, 1));
    }

    /// A slot given back is zero for the next counter that takes it, on
    /// the live threads' tables and in the retired sums.
    #[test]
    fn a_slot_given_back_starts_again_at_zero() {
        let mut reg = Registry::default();
        let table = Arc::new(Table::default());
        reg.live.push(Arc::clone(&table));
        let n = reg.take_number();
        let m = reg.take_number();
        assert_ne!(n, m);
        for _ in 0..5 {
            table.add(n);
        }
        table.add(m);
        reg.retired = vec![7; reg.next as usize];
        assert_eq!(reg.total(n), 12);
        reg.give_back(n);
        assert_eq!(reg.take_number(), n);
        assert_eq!(reg.total(n), 0);
        assert_eq!(reg.total(m), 8);
    }

    /// With every slot number taken, a counter counts at once; so does
    /// every counter where no runtime can run the task.
    #[test]
    fn counted_at_once_without_a_slot_or_a_runtime() {
        let mut reg = Registry {
            next: SLOTS as u32,
            ..Registry::default()
        };
        assert_eq!(reg.take_number(), NONE);

        let recorder = DebuggingRecorder::new();
        let snap = recorder.snapshotter();
        let t = Tallies::new(counters(&recorder));
        t.increment(0);
        t.increment(0);
        assert_eq!(take(&snap), (2, 0));
        let full = Tallies(Arc::new(Inner {
            slots: [NONE; 2],
            counters: counters(&recorder),
            published: std::array::from_fn(|_| AtomicU64::new(0)),
            sampler: Sampler::default(),
        }));
        full.increment(1);
        assert_eq!(take(&snap), (0, 1));
    }
}
