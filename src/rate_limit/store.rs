//! Where quota state lives, and the all-or-nothing decision over several
//! quotas.
//!
//! The layer asks a [`Store`] for one [`Verdict`] per request
//! ([`Store::acquire`]). Today there is one store, in memory: a governor
//! [`RateLimiter`] per quota over a custom `governor::state::StateStore`
//! (bounded, sharded, with idle eviction). The GCRA arithmetic is
//! governor's; this file only decides where the theoretical arrival times
//! (TATs) are kept and how several quotas commit together.
//!
//! All-or-nothing: with one quota, governor's own compare-and-swap commits
//! the decision. With several, every quota is first *peeked* (governor's
//! GCRA evaluated against the current TAT, nothing written); only when all
//! admit are the new TATs committed, each by a compare-and-swap from the
//! peeked value. A CAS that loses a race rolls back the quotas already
//! committed and the transaction starts again, so a refused request
//! consumes from no quota.

use std::cell::Cell;
use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hash, Hasher};
use std::num::NonZeroU32;
use std::ops::Add;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use governor::RateLimiter;
use governor::clock::{Clock, Reference};
use governor::middleware::NoOpMiddleware;
use governor::nanos::Nanos;
use governor::state::StateStore;
use metrics::{Counter, Gauge};

/// governor's clock over [`tokio::time::Instant`], so limits follow tokio's
/// (pausable, in tests) time.
#[derive(Debug, Clone, Copy, Default)]
pub struct TokioClock;

/// A [`tokio::time::Instant`] as a governor clock reading.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TokioInstant(pub tokio::time::Instant);

impl Add<Nanos> for TokioInstant {
    type Output = Self;

    #[inline]
    fn add(self, other: Nanos) -> Self {
        Self(self.0 + Duration::from(other))
    }
}

impl Reference for TokioInstant {
    #[inline]
    fn duration_since(&self, earlier: Self) -> Nanos {
        self.0.saturating_duration_since(earlier.0).into()
    }

    #[inline]
    fn saturating_sub(&self, duration: Nanos) -> Self {
        Self(self.0.checked_sub(duration.into()).unwrap_or(self.0))
    }
}

impl Clock for TokioClock {
    type Instant = TokioInstant;

    #[inline]
    fn now(&self) -> TokioInstant {
        TokioInstant(tokio::time::Instant::now())
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ProbeMode {
    /// Decide and write (one quota).
    Commit,
    /// Decide, write nothing (phase one of a multi-quota transaction).
    Peek,
    /// Only learn the current time on the limiter's time line.
    Clock,
}

/// What the store saw for one quota: the TAT before, the TAT after (equal
/// on refusal) and, when asked, "now", all on the limiter's time line.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Measured {
    pub(crate) prev: u64,
    pub(crate) next: u64,
    pub(crate) now: u64,
}

/// The key governor hands to the state store: a fingerprint plus how to
/// treat this call, and a slot for what the store saw.
#[derive(Clone)]
pub(crate) struct Probe {
    fp: u64,
    mode: ProbeMode,
    /// `cost * t` in nanoseconds: lets the store recover "now" from governor's
    /// decision for a fresh key.
    weight: u64,
    want_now: bool,
    out: Cell<Measured>,
}

impl PartialEq for Probe {
    fn eq(&self, other: &Self) -> bool {
        self.fp == other.fp
    }
}

impl Eq for Probe {}

impl Hash for Probe {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.fp.hash(state);
    }
}

/// The fingerprints are already uniform: the map hashes them as they are.
#[derive(Default)]
pub(crate) struct IdHasher(u64);

impl Hasher for IdHasher {
    #[inline]
    fn finish(&self) -> u64 {
        self.0
    }
    #[inline]
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }
    #[inline]
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

type Shard = RwLock<HashMap<u64, AtomicU64, BuildHasherDefault<IdHasher>>>;

/// Counters of one keyed table.
pub(crate) struct TableMetrics {
    pub(crate) keys: Gauge,
    pub(crate) evicted_idle: Counter,
    pub(crate) evicted_capacity: Counter,
}

/// A bounded, sharded map from key fingerprint to TAT.
pub(crate) struct Table {
    shards: Box<[Shard]>,
    shard_bits: u32,
    shard_cap: usize,
    len: AtomicUsize,
    metrics: TableMetrics,
}

/// How many entries a full shard looks at to make room (the most idle one
/// of them goes).
const EVICTION_SAMPLE: usize = 16;

impl Table {
    pub(crate) fn new(max_keys: usize, metrics: TableMetrics) -> Self {
        let mut shards = 1usize;
        while shards < 64 && shards * 2 * 16 <= max_keys {
            shards *= 2;
        }
        let shard_cap = (max_keys / shards).max(1);
        Self {
            shards: (0..shards)
                .map(|_| RwLock::new(HashMap::default()))
                .collect(),
            shard_bits: shards.trailing_zeros(),
            shard_cap,
            len: AtomicUsize::new(0),
            metrics,
        }
    }

    #[inline]
    fn shard(&self, fp: u64) -> &Shard {
        // Middle bits: the map uses the low bits (bucket) and the top 7 (tag).
        let idx = if self.shard_bits == 0 {
            0
        } else {
            ((fp >> 32) as usize) & ((1 << self.shard_bits) - 1)
        };
        &self.shards[idx]
    }

    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// Makes room in a full shard: drops the idle entries among a small
    /// sample, or else the most idle of them.
    fn make_room(&self, map: &mut HashMap<u64, AtomicU64, BuildHasherDefault<IdHasher>>, now: u64) {
        if map.len() < self.shard_cap {
            return;
        }
        let mut idle = [0u64; EVICTION_SAMPLE];
        let mut n_idle = 0;
        let mut oldest: Option<(u64, u64)> = None;
        for (k, v) in map.iter().take(EVICTION_SAMPLE) {
            let tat = v.load(Ordering::Relaxed);
            if tat <= now {
                idle[n_idle] = *k;
                n_idle += 1;
            } else if oldest.is_none_or(|(_, t)| tat < t) {
                oldest = Some((*k, tat));
            }
        }
        for k in &idle[..n_idle] {
            map.remove(k);
        }
        if n_idle > 0 {
            self.removed(n_idle);
            self.metrics.evicted_idle.increment(n_idle as u64);
        }
        if map.len() >= self.shard_cap {
            if let Some((k, _)) = oldest {
                map.remove(&k);
                self.removed(1);
                self.metrics.evicted_capacity.increment(1);
            }
        }
    }

    fn removed(&self, n: usize) {
        self.len.fetch_sub(n, Ordering::Relaxed);
        self.metrics.keys.decrement(n as f64);
    }

    fn inserted(&self) {
        self.len.fetch_add(1, Ordering::Relaxed);
        self.metrics.keys.increment(1.0);
    }

    /// Removes every key whose TAT is not after `now` (such a key behaves
    /// exactly like an absent one). Returns how many went.
    pub(crate) fn sweep(&self, now: u64) -> usize {
        let mut total = 0;
        for shard in self.shards.iter() {
            let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
            let before = map.len();
            map.retain(|_, v| v.load(Ordering::Relaxed) > now);
            total += before - map.len();
        }
        if total > 0 {
            self.removed(total);
            self.metrics.evicted_idle.increment(total as u64);
        }
        total
    }
}

/// The cells of one quota: one TAT for a global key, a table otherwise.
pub(crate) enum Cells {
    Single(AtomicU64),
    Keyed(Table),
}

/// The `StateStore` governor's limiter writes through.
pub(crate) struct CellsHandle(Arc<Cells>);

#[inline]
fn tat_opt(v: u64) -> Option<Nanos> {
    if v == 0 { None } else { Some(Nanos::from(v)) }
}

#[inline]
fn run_cell<T, F, E>(cell: &AtomicU64, probe: &Probe, f: &F) -> Result<T, E>
where
    F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
{
    let mut prev = cell.load(Ordering::Acquire);
    if probe.mode == ProbeMode::Peek {
        let mut m = Measured {
            prev,
            next: prev,
            now: 0,
        };
        let res = f(tat_opt(prev));
        if let Ok((_, next)) = &res {
            m.next = next.as_u64();
        }
        probe.out.set(m);
        return res.map(|(t, _)| t);
    }
    loop {
        match f(tat_opt(prev)) {
            Ok((res, next)) => {
                let next = next.as_u64();
                match cell.compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => {
                        probe.out.set(Measured { prev, next, now: 0 });
                        return Ok(res);
                    }
                    Err(actual) => prev = actual,
                }
            }
            Err(e) => {
                probe.out.set(Measured {
                    prev,
                    next: prev,
                    now: 0,
                });
                return Err(e);
            }
        }
    }
}

impl StateStore for CellsHandle {
    type Key = Probe;

    fn measure_and_replace<T, F, E>(&self, probe: &Probe, f: F) -> Result<T, E>
    where
        F: Fn(Option<Nanos>) -> Result<(T, Nanos), E>,
    {
        // For a fresh key governor's next TAT is `now + weight`: so "now" on
        // the limiter's time line costs one more evaluation of its closure.
        let now = if probe.want_now || probe.mode == ProbeMode::Clock {
            f(None)
                .ok()
                .map_or(0, |(_, next)| next.as_u64().saturating_sub(probe.weight))
        } else {
            0
        };
        if probe.mode == ProbeMode::Clock {
            probe.out.set(Measured {
                prev: 0,
                next: 0,
                now,
            });
            return f(None).map(|(t, _)| t);
        }
        let result = match &*self.0 {
            Cells::Single(cell) => run_cell(cell, probe, &f),
            Cells::Keyed(table) => {
                let shard = table.shard(probe.fp);
                let found = {
                    let map = shard.read().unwrap_or_else(|e| e.into_inner());
                    map.get(&probe.fp).map(|cell| run_cell(cell, probe, &f))
                };
                match found {
                    Some(r) => r,
                    None if probe.mode == ProbeMode::Peek => {
                        // A fresh key: decide, insert nothing yet.
                        let res = f(None);
                        let next = res.as_ref().map_or(0, |(_, n)| n.as_u64());
                        probe.out.set(Measured { prev: 0, next, now });
                        res.map(|(t, _)| t)
                    }
                    None => {
                        let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
                        if !map.contains_key(&probe.fp) {
                            let now = if now == 0 {
                                f(None)
                                    .ok()
                                    .map_or(0, |(_, n)| n.as_u64().saturating_sub(probe.weight))
                            } else {
                                now
                            };
                            table.make_room(&mut map, now);
                            map.insert(probe.fp, AtomicU64::new(0));
                            table.inserted();
                        }
                        match map.get(&probe.fp) {
                            Some(cell) => run_cell(cell, probe, &f),
                            None => f(None).map(|(t, _)| t),
                        }
                    }
                }
            }
        };
        let mut m = probe.out.get();
        m.now = now;
        probe.out.set(m);
        result
    }
}

impl Cells {
    /// The TAT stored for `fp` (0: never seen, or evicted: a full bucket).
    fn read(&self, fp: u64) -> u64 {
        match self {
            Cells::Single(cell) => cell.load(Ordering::Acquire),
            Cells::Keyed(table) => table
                .shard(fp)
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .get(&fp)
                .map_or(0, |cell| cell.load(Ordering::Acquire)),
        }
    }

    /// Phase two: writes `next` if the TAT is still `prev`.
    fn commit(&self, fp: u64, prev: u64, next: u64, now: u64) -> bool {
        match self {
            Cells::Single(cell) => cell
                .compare_exchange(prev, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok(),
            Cells::Keyed(table) => {
                let shard = table.shard(fp);
                {
                    let map = shard.read().unwrap_or_else(|e| e.into_inner());
                    if let Some(cell) = map.get(&fp) {
                        return cell
                            .compare_exchange(prev, next, Ordering::AcqRel, Ordering::Acquire)
                            .is_ok();
                    }
                }
                if prev != 0 {
                    // Evicted since the peek: the peek is stale.
                    return false;
                }
                let mut map = shard.write().unwrap_or_else(|e| e.into_inner());
                if map.contains_key(&fp) {
                    return false;
                }
                table.make_room(&mut map, now);
                map.insert(fp, AtomicU64::new(next));
                table.inserted();
                true
            }
        }
    }

    /// Undoes a commit: back to `prev` if nobody wrote since, else takes
    /// this request's weight (`next - max(prev, now)`) back out of the TAT.
    fn rollback(&self, fp: u64, m: Measured) {
        let Measured { prev, next, now } = m;
        let undo = |cell: &AtomicU64| {
            if cell
                .compare_exchange(next, prev, Ordering::AcqRel, Ordering::Acquire)
                .is_err()
            {
                let weight = next.saturating_sub(prev.max(now));
                let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
                    Some(cur.saturating_sub(weight).max(prev))
                });
            }
        };
        match self {
            Cells::Single(cell) => undo(cell),
            Cells::Keyed(table) => {
                let map = table.shard(fp).read().unwrap_or_else(|e| e.into_inner());
                if let Some(cell) = map.get(&fp) {
                    undo(cell);
                }
            }
        }
    }
}

type Limiter = RateLimiter<Probe, CellsHandle, TokioClock, NoOpMiddleware<TokioInstant>>;

/// One quota's governor limiter and cells.
pub(crate) struct QuotaCells {
    limiter: Limiter,
    cells: Arc<Cells>,
    /// Nanoseconds per unit.
    pub(crate) t: u64,
    /// Burst tolerance: `t * (burst - 1)`.
    pub(crate) tau: u64,
    pub(crate) burst: u32,
}

impl QuotaCells {
    pub(crate) fn new(quota: governor::Quota, keyed: Option<(usize, TableMetrics)>) -> Self {
        let cells = Arc::new(match keyed {
            None => Cells::Single(AtomicU64::new(0)),
            Some((max, metrics)) => Cells::Keyed(Table::new(max, metrics)),
        });
        let t = u64::try_from(quota.replenish_interval().as_nanos())
            .unwrap_or(u64::MAX)
            .max(1);
        let burst = quota.burst_size().get();
        Self {
            limiter: RateLimiter::new(quota, CellsHandle(Arc::clone(&cells)), TokioClock),
            cells,
            t,
            tau: t.saturating_mul(u64::from(burst - 1)),
            burst,
        }
    }

    pub(crate) fn table(&self) -> Option<&Table> {
        match &*self.cells {
            Cells::Keyed(t) => Some(t),
            Cells::Single(_) => None,
        }
    }

    /// "Now" on this limiter's time line.
    pub(crate) fn now(&self) -> u64 {
        let probe = Probe {
            fp: 0,
            mode: ProbeMode::Clock,
            weight: self.t,
            want_now: true,
            out: Cell::new(Measured::default()),
        };
        let _ = self.limiter.check_key(&probe);
        probe.out.get().now
    }

    /// The state of a TAT at `now`: what remains of the burst, the
    /// effective window and how long until the bucket is full again.
    pub(crate) fn snapshot(&self, tat: u64, now: u64) -> Snapshot {
        let cap = self.tau.saturating_add(self.t);
        let avail = now.saturating_add(cap).saturating_sub(tat).min(cap);
        Snapshot {
            remaining: u32::try_from(avail / self.t).unwrap_or(u32::MAX),
            // Take all that remains now: the next unit is usable when the
            // partial one under way is whole (a full bucket: one interval).
            window: Duration::from_nanos(self.t - avail % self.t),
            full: Duration::from_nanos(tat.saturating_sub(now)),
        }
    }

    /// How long until `cost` units could be taken, for a TAT at `now`
    /// (GCRA: when `tat + cost * t - (tau + t)` is no longer after `now`).
    pub(crate) fn wait_for(&self, tat: u64, now: u64, cost: u32) -> Duration {
        let allow_at = tat
            .max(now)
            .saturating_add(self.t.saturating_mul(u64::from(cost)))
            .saturating_sub(self.tau.saturating_add(self.t));
        Duration::from_nanos(allow_at.saturating_sub(now))
    }
}

/// One quota's state at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Units that can be taken now.
    pub(crate) remaining: u32,
    /// The IETF effective window: within it no more than `remaining` can
    /// be taken (the time until one more unit is usable after taking them).
    pub(crate) window: Duration,
    /// Until the bucket is full again.
    pub(crate) full: Duration,
}

/// One quota's part of a request.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Slot {
    /// Whether the quota applies to this request.
    pub(crate) active: bool,
    pub(crate) fp: u64,
    /// What the store saw (filled by `acquire`).
    pub(crate) measured: Measured,
}

/// The store's answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Every active quota admitted the request and was charged.
    Admitted,
    /// Quota `quota` has no room now; `wait` until it may.
    Exhausted { quota: usize, wait: Duration },
    /// The cost exceeds quota `quota`'s burst: never admissible.
    TooCostly { quota: usize },
}

/// Where quota state is kept. The layer only talks to this.
///
/// The in-memory store answers at once. A remote store (Redis, one round
/// trip) will add an `acquire` that returns a future; the layer's
/// `ResponseFuture` already has a state machine that a "deciding" state
/// slots into, and everything before (keys, cost, allow-lists) and after
/// (headers, refusals, metrics) works on `Slot`s and `Verdict`s only.
pub(crate) trait Store: Send + Sync + 'static {
    /// Charges `cost` to every active slot, all or nothing.
    fn acquire(&self, slots: &mut [Slot], cost: NonZeroU32, want_now: bool) -> Verdict;
    /// Quota `i`'s parameters and time line, for headers.
    fn quota(&self, i: usize) -> &QuotaCells;
    /// Evicts idle keys; returns how many.
    fn sweep(&self) -> usize;
    /// Keys currently tracked, over all quotas.
    fn key_count(&self) -> usize;
}

/// Quota state in this process's memory.
pub(crate) struct MemoryStore {
    pub(crate) quotas: Box<[QuotaCells]>,
}

impl MemoryStore {
    /// Fills every active slot's `measured` with the quota's state as it
    /// is (nothing taken): for refusals decided before GCRA runs, and for
    /// reading a key's state.
    pub(crate) fn measure(&self, slots: &mut [Slot]) {
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.active {
                let q = &self.quotas[i];
                let tat = q.cells.read(slot.fp);
                slot.measured = Measured {
                    prev: tat,
                    next: tat,
                    now: q.now(),
                };
            }
        }
    }

    fn probe(&self, i: usize, fp: u64, mode: ProbeMode, cost: NonZeroU32, want_now: bool) -> Probe {
        Probe {
            fp,
            mode,
            weight: self.quotas[i].t.saturating_mul(u64::from(cost.get())),
            want_now,
            out: Cell::new(Measured::default()),
        }
    }
}

impl Store for MemoryStore {
    fn acquire(&self, slots: &mut [Slot], cost: NonZeroU32, want_now: bool) -> Verdict {
        // Never admissible first: no misleading wait for the others, but
        // the state as it is, for the `RateLimit` field.
        for (i, slot) in slots.iter().enumerate() {
            if slot.active && cost.get() > self.quotas[i].burst {
                self.measure(slots);
                return Verdict::TooCostly { quota: i };
            }
        }
        let active = slots.iter().filter(|s| s.active).count();
        if active == 1 {
            let i = slots.iter().position(|s| s.active).unwrap_or(0);
            let q = &self.quotas[i];
            let probe = self.probe(i, slots[i].fp, ProbeMode::Commit, cost, want_now);
            let res = q.limiter.check_key_n(&probe, cost);
            slots[i].measured = probe.out.get();
            return match res {
                Ok(Ok(())) => Verdict::Admitted,
                Ok(Err(not_until)) => Verdict::Exhausted {
                    quota: i,
                    wait: not_until.wait_time_from(TokioClock.now()),
                },
                Err(_) => Verdict::TooCostly { quota: i },
            };
        }
        'transaction: loop {
            // Every quota is peeked, so a refusal waits for the quota that
            // needs longest to admit this cost: a client obeying the wait is
            // not refused again by another quota (ties: the first).
            let mut refused: Option<(usize, Duration)> = None;
            for (i, slot) in slots.iter_mut().enumerate() {
                if !slot.active {
                    continue;
                }
                let probe = self.probe(i, slot.fp, ProbeMode::Peek, cost, true);
                let res = self.quotas[i].limiter.check_key_n(&probe, cost);
                slot.measured = probe.out.get();
                match res {
                    Ok(Ok(())) => {}
                    Ok(Err(not_until)) => {
                        let wait = not_until.wait_time_from(TokioClock.now());
                        if refused.is_none_or(|(_, w)| wait > w) {
                            refused = Some((i, wait));
                        }
                    }
                    Err(_) => return Verdict::TooCostly { quota: i },
                }
            }
            if let Some((quota, wait)) = refused {
                return Verdict::Exhausted { quota, wait };
            }
            for i in 0..slots.len() {
                let s = slots[i];
                if !s.active {
                    continue;
                }
                let m = s.measured;
                if !self.quotas[i].cells.commit(s.fp, m.prev, m.next, m.now) {
                    for (j, done) in slots[..i].iter().enumerate() {
                        if done.active {
                            self.quotas[j].cells.rollback(done.fp, done.measured);
                        }
                    }
                    continue 'transaction;
                }
            }
            return Verdict::Admitted;
        }
    }

    fn quota(&self, i: usize) -> &QuotaCells {
        &self.quotas[i]
    }

    fn sweep(&self) -> usize {
        self.quotas
            .iter()
            .filter_map(|q| q.table().map(|t| t.sweep(q.now())))
            .sum()
    }

    fn key_count(&self) -> usize {
        self.quotas
            .iter()
            .filter_map(|q| q.table().map(Table::len))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> TableMetrics {
        TableMetrics {
            keys: Gauge::noop(),
            evicted_idle: Counter::noop(),
            evicted_capacity: Counter::noop(),
        }
    }

    fn store(quotas: &[(u32, u32, bool)]) -> MemoryStore {
        MemoryStore {
            quotas: quotas
                .iter()
                .map(|&(per_sec, burst, keyed)| {
                    let q = governor::Quota::per_second(NonZeroU32::new(per_sec).unwrap())
                        .allow_burst(NonZeroU32::new(burst).unwrap());
                    QuotaCells::new(q, keyed.then(|| (1000, metrics())))
                })
                .collect(),
        }
    }

    const ONE: NonZeroU32 = NonZeroU32::MIN;

    #[tokio::test(start_paused = true)]
    async fn multi_quota_is_all_or_nothing() {
        let s = store(&[(10, 3, true), (10, 5, false)]);
        let slot = |fp| Slot {
            active: true,
            fp,
            measured: Measured::default(),
        };
        // Key 1 takes its 3; key 2 takes 2 of the global 5.
        for _ in 0..3 {
            assert_eq!(
                s.acquire(&mut [slot(1), slot(0)], ONE, false),
                Verdict::Admitted
            );
        }
        assert!(matches!(
            s.acquire(&mut [slot(1), slot(0)], ONE, false),
            Verdict::Exhausted { quota: 0, .. }
        ));
        for _ in 0..2 {
            assert_eq!(
                s.acquire(&mut [slot(2), slot(0)], ONE, false),
                Verdict::Admitted
            );
        }
        // Global is empty: key 3 is refused by quota 1 and consumes nothing
        // from quota 0.
        assert!(matches!(
            s.acquire(&mut [slot(3), slot(0)], ONE, false),
            Verdict::Exhausted { quota: 1, .. }
        ));
        let mut alone = [slot(3), Slot::default()];
        for _ in 0..3 {
            assert_eq!(s.acquire(&mut alone, ONE, false), Verdict::Admitted);
        }
        assert!(matches!(
            s.acquire(&mut alone, ONE, false),
            Verdict::Exhausted { quota: 0, .. }
        ));
        assert_eq!(
            s.acquire(&mut [slot(4), slot(0)], NonZeroU32::new(4).unwrap(), false),
            Verdict::TooCostly { quota: 0 }
        );
    }

    #[test]
    fn all_or_nothing_under_contention() {
        let hourly = |burst| {
            governor::Quota::per_hour(NonZeroU32::MIN).allow_burst(NonZeroU32::new(burst).unwrap())
        };
        let s = std::sync::Arc::new(MemoryStore {
            quotas: vec![
                QuotaCells::new(hourly(300), Some((100, metrics()))),
                QuotaCells::new(hourly(500), None),
            ]
            .into(),
        });
        let threads: Vec<_> = (1..=2u64)
            .map(|fp| {
                let s = std::sync::Arc::clone(&s);
                std::thread::spawn(move || {
                    let mut admitted = 0;
                    for _ in 0..1000 {
                        let slot = |fp| Slot {
                            active: true,
                            fp,
                            measured: Measured::default(),
                        };
                        let mut slots = [slot(fp), slot(0)];
                        if s.acquire(&mut slots, ONE, false) == Verdict::Admitted {
                            admitted += 1;
                        }
                    }
                    admitted
                })
            })
            .collect();
        let admitted: Vec<u32> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(admitted.iter().sum::<u32>(), 500, "{admitted:?}");
        // Refusals (and rolled-back commits) took nothing from the per-key
        // quota: each key has exactly 300 - admitted left.
        for (fp, took) in (1..=2u64).zip(&admitted) {
            assert!(*took <= 300);
            let mut left = 0;
            let mut slots = [
                Slot {
                    active: true,
                    fp,
                    measured: Measured::default(),
                },
                Slot::default(),
            ];
            while s.acquire(&mut slots, ONE, false) == Verdict::Admitted {
                left += 1;
            }
            assert_eq!(left, 300 - took, "key {fp}");
        }
    }

    #[tokio::test(start_paused = true)]
    async fn rollback_restores_prev() {
        let s = store(&[(10, 3, false)]);
        let cells = &s.quotas[0].cells;
        let m = |prev, next, now| Measured { prev, next, now };
        assert!(cells.commit(0, 0, 500, 0));
        cells.rollback(0, m(0, 500, 400));
        let Cells::Single(c) = &**cells else { panic!() };
        assert_eq!(c.load(Ordering::Relaxed), 0);
        assert!(cells.commit(0, 0, 500, 0));
        c.store(700, Ordering::Relaxed); // someone else wrote after us
        // Our weight was 500 - max(100, 400) = 100.
        cells.rollback(0, m(100, 500, 400));
        assert_eq!(c.load(Ordering::Relaxed), 600);
    }

    #[tokio::test(start_paused = true)]
    async fn table_is_bounded_and_sweeps() {
        let s = store(&[(1, 1, true)]);
        let table = s.quotas[0].table().unwrap();
        let mut slot = [Slot::default()];
        for fp in 0..5000u64 {
            slot[0] = Slot {
                active: true,
                fp: fp.wrapping_mul(0x9E37_79B9_7F4A_7C15),
                measured: Measured::default(),
            };
            assert_eq!(s.acquire(&mut slot, ONE, false), Verdict::Admitted);
            assert!(table.len() <= 1000);
        }
        assert!(table.len() > 900, "{}", table.len());
        tokio::time::advance(Duration::from_secs(2)).await;
        let before = table.len();
        assert_eq!(s.sweep(), before);
        assert_eq!(table.len(), 0);
    }
}
