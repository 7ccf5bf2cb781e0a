// Past ~500 lines: about 390 lines of code, the rest its unit tests.
//! The in-process store: quota state in this process's memory, and the
//! all-or-nothing decision over several quotas.
//!
//! Each quota keeps its theoretical arrival times (TATs, nanoseconds since
//! the store's creation on tokio's clock, so paused-time tests drive it)
//! in atomic cells: one cell for a global quota, a bounded
//! [`KeyedMap`](crate::util::keyed_map) from key fingerprint to cell for a
//! keyed one. The arithmetic is [`Gcra::step`]; this file only decides
//! where the TATs are kept and how several quotas commit together.
//!
//! All-or-nothing: with one quota, a compare-and-swap loop on its cell
//! commits the decision. With several, every quota is first evaluated
//! against its current TAT with nothing written ([`gcra::step_each`]); only
//! when all admit are the new TATs committed, each by a compare-and-swap
//! from the value read. A CAS that loses a race rolls back the quotas
//! already committed and the transaction starts again, so a refused
//! request consumes from no quota.

// Over ~500 lines because of its tests (about 170), among them the
// two-thread all-or-nothing check.

use std::cell::Cell;
use std::hash::{BuildHasherDefault, Hasher};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::MAX_QUOTAS;
use super::gcra::{self, Gcra, Outcome, Step};
use crate::util::keyed_map::{Expiring, KeyedMap, MapMetrics};

/// The fingerprints are already seeded hashes (see `key::Fingerprinter`):
/// the table uses them as they are rather than hashing a hash again.
#[derive(Default, Clone, Copy)]
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

/// One key's TAT; idle (its bucket full again) from the TAT on.
pub(crate) struct Tat(AtomicU64);

impl Expiring for Tat {
    fn idle_at(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A keyed quota's table: key fingerprint to TAT.
pub(crate) type Table = KeyedMap<u64, Tat, BuildHasherDefault<IdHasher>>;

/// What the store saw for one quota: the TAT before, the TAT after (equal
/// on refusal) and "now", all on the store's time line.
#[derive(Clone, Copy, Default, Debug)]
pub(crate) struct Measured {
    pub(crate) prev: u64,
    pub(crate) next: u64,
    pub(crate) now: u64,
}

/// The cells of one quota: one TAT for a global key, a table otherwise.
pub(crate) enum Cells {
    Single(Tat),
    Keyed(Table),
}

/// A CAS loop applying `step` to `cell`: what was seen, and the new TAT
/// if the step admitted.
#[inline]
fn update(cell: &AtomicU64, step: impl Fn(u64) -> Step) -> (u64, Step) {
    let mut prev = cell.load(Ordering::Acquire);
    loop {
        match step(prev) {
            Step::Admit { next } => {
                match cell.compare_exchange_weak(prev, next, Ordering::AcqRel, Ordering::Acquire) {
                    Ok(_) => return (prev, Step::Admit { next }),
                    Err(actual) => prev = actual,
                }
            }
            other => return (prev, other),
        }
    }
}

impl Cells {
    /// The TAT stored for `fp` (0: never seen, or evicted: a full bucket).
    fn read(&self, fp: u64) -> u64 {
        match self {
            Cells::Single(cell) => cell.0.load(Ordering::Acquire),
            Cells::Keyed(table) => table
                .with(&fp, |cell| cell.0.load(Ordering::Acquire))
                .unwrap_or(0),
        }
    }

    /// Applies `step` to `fp`'s TAT (a new key starts at 0), atomically.
    #[inline]
    fn update(&self, fp: u64, now: u64, step: impl Fn(u64) -> Step) -> (u64, Step) {
        match self {
            Cells::Single(cell) => update(&cell.0, step),
            Cells::Keyed(table) => table.with_or_insert(
                fp,
                now,
                || Tat(AtomicU64::new(0)),
                |cell| update(&cell.0, step),
            ),
        }
    }

    /// Phase two: writes `next` if the TAT is still `prev`.
    fn commit(&self, fp: u64, prev: u64, next: u64, now: u64) -> bool {
        let cas = |cell: &Tat| {
            cell.0
                .compare_exchange(prev, next, Ordering::AcqRel, Ordering::Acquire)
                .is_ok()
        };
        match self {
            Cells::Single(cell) => cas(cell),
            Cells::Keyed(table) => match table.with(&fp, cas) {
                Some(done) => done,
                // Evicted since it was read: what was read is stale.
                None if prev != 0 => false,
                None => table.insert(fp, now, Tat(AtomicU64::new(next))),
            },
        }
    }

    /// Undoes a commit: back to `prev` if nobody wrote since, else takes
    /// this request's weight (`next - max(prev, now)`) back out of the TAT.
    fn rollback(&self, fp: u64, m: Measured) {
        match self {
            Cells::Single(cell) => undo(&cell.0, m),
            Cells::Keyed(table) => {
                table.with(&fp, |cell| undo(&cell.0, m));
            }
        }
    }
}

/// Undoes one commit of `m.prev -> m.next` on `cell`: back to `prev` if
/// nobody wrote since, else takes this request's weight
/// (`next - max(prev, now)`) back out of the TAT.
fn undo(cell: &AtomicU64, m: Measured) {
    let Measured { prev, next, now } = m;
    if cell
        .compare_exchange(next, prev, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        let weight = next.saturating_sub(prev.max(now));
        let _ = cell.fetch_update(Ordering::AcqRel, Ordering::Acquire, |cur| {
            Some(cur.saturating_sub(weight).max(prev))
        });
    }
}

/// One quota's parameters and cells.
pub(crate) struct QuotaCells {
    pub(crate) gcra: Gcra,
    cells: Cells,
}

impl QuotaCells {
    /// A quota's cells: keyed (at most `max_keys` keys) or global.
    pub(crate) fn new(gcra: Gcra, keyed: Option<(usize, MapMetrics)>) -> Self {
        let cells = match keyed {
            None => Cells::Single(Tat(AtomicU64::new(0))),
            Some((max, metrics)) => {
                Cells::Keyed(KeyedMap::new(max, BuildHasherDefault::default(), metrics))
            }
        };
        Self { gcra, cells }
    }

    pub(crate) fn table(&self) -> Option<&Table> {
        match &self.cells {
            Cells::Keyed(t) => Some(t),
            Cells::Single(_) => None,
        }
    }
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

/// Quota state in this process's memory.
pub(crate) struct MemoryStore {
    clock: crate::util::clock::EpochClock,
    params: Box<[Gcra]>,
    quotas: Box<[QuotaCells]>,
    /// Whether at most one quota is keyed: then every cell a request
    /// touches is reachable under one shard lock ([`Self::admit_plain`]).
    one_keyed: bool,
}

impl MemoryStore {
    /// A store over `quotas`, its time line starting now.
    pub(crate) fn new(quotas: Vec<QuotaCells>) -> Self {
        Self {
            clock: crate::util::clock::EpochClock::new(),
            params: quotas.iter().map(|q| q.gcra).collect(),
            one_keyed: quotas.iter().filter(|q| q.table().is_some()).count() <= 1,
            quotas: quotas.into(),
        }
    }

    /// Whether [`Self::admit_plain`] can step this store's quotas: at most
    /// one of them is keyed.
    pub(crate) fn has_plain_shape(&self) -> bool {
        self.one_keyed
    }

    /// "Now" on the store's time line: nanoseconds since its creation.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        self.clock.now()
    }

    /// Each quota's parameters.
    pub(crate) fn params(&self) -> &[Gcra] {
        &self.params
    }

    /// Fills every active slot's `measured` with the quota's state as it
    /// is (nothing taken): for refusals decided before GCRA runs, and for
    /// reading a key's state.
    pub(crate) fn measure(&self, slots: &mut [Slot]) {
        let now = self.now();
        for (q, slot) in self.quotas.iter().zip(slots.iter_mut()) {
            if slot.active {
                let tat = q.cells.read(slot.fp);
                slot.measured = Measured {
                    prev: tat,
                    next: tat,
                    now,
                };
            }
        }
    }

    /// Charges `cost` to every active slot, all or nothing, and fills each
    /// active slot's `measured`.
    pub(crate) fn acquire(&self, slots: &mut [Slot], cost: NonZeroU32) -> Verdict {
        let cost = cost.get();
        // Never admissible first: no misleading wait for the others, but
        // the state as it is, for the `RateLimit` field.
        for (i, slot) in slots.iter().enumerate() {
            if slot.active && cost > self.quotas[i].gcra.burst {
                self.measure(slots);
                return Verdict::TooCostly { quota: i };
            }
        }
        let now = self.now();
        let mut active = slots.iter().enumerate().filter(|(_, s)| s.active);
        match (active.next(), active.next()) {
            (None, _) => Verdict::Admitted,
            (Some((i, _)), None) => self.acquire_one(i, &mut slots[i], cost, now),
            _ => self.acquire_all(slots, cost, now),
        }
    }

    /// Every quota's step for one request of cost 1, the keyed quota (at
    /// most one: [`Self::has_plain_shape`]) under key `fp`: whether all
    /// admitted (and were charged). Otherwise nothing is taken from any
    /// quota (a new key may be left in the table at a full bucket, as
    /// one quota's refusal leaves it).
    ///
    /// The whole transaction runs under the keyed quota's shard lock, so
    /// its cell is found once, and cannot be evicted between the read and
    /// the commit; the global cells need no lock.
    #[inline]
    pub(crate) fn admit_plain(&self, fp: u64) -> bool {
        debug_assert!(self.one_keyed, "admit_plain on two keyed quotas");
        let now = self.now();
        if let [q] = &*self.quotas {
            // One quota: its own CAS loop commits.
            let (_, step) = q.cells.update(fp, now, |tat| q.gcra.step(tat, now, 1));
            return matches!(step, Step::Admit { .. });
        }
        match self.quotas.iter().find_map(QuotaCells::table) {
            None => self.admit_cells(None, now),
            Some(table) => table.with_or_insert(
                fp,
                now,
                || Tat(AtomicU64::new(0)),
                |tat| self.admit_cells(Some(&tat.0), now),
            ),
        }
    }

    /// Quota `i`'s cell for [`Self::admit_plain`]: a global quota's own, or
    /// `keyed`, the one keyed quota's cell for the request's key.
    #[inline]
    fn plain_cell<'a>(&'a self, i: usize, keyed: Option<&'a AtomicU64>) -> &'a AtomicU64 {
        match &self.quotas[i].cells {
            Cells::Single(tat) => &tat.0,
            Cells::Keyed(_) => keyed.expect("the store's one keyed quota's cell"),
        }
    }

    /// [`Self::admit_plain`]'s transaction over several quotas: step every
    /// quota from its cell with nothing written, then commit each by a
    /// compare-and-swap from the value read; a lost race rolls back the
    /// quotas committed and starts again.
    #[inline]
    fn admit_cells(&self, keyed: Option<&AtomicU64>, now: u64) -> bool {
        let n = self.quotas.len();
        'transaction: loop {
            let mut seen = [(0, 0); MAX_QUOTAS];
            for (i, seen) in seen[..n].iter_mut().enumerate() {
                let prev = self.plain_cell(i, keyed).load(Ordering::Acquire);
                match self.params[i].step(prev, now, 1) {
                    Step::Admit { next } => *seen = (prev, next),
                    Step::Wait { .. } | Step::TooCostly => return false,
                }
            }
            for (i, &(prev, next)) in seen[..n].iter().enumerate() {
                let cell = self.plain_cell(i, keyed);
                if cell
                    .compare_exchange(prev, next, Ordering::AcqRel, Ordering::Acquire)
                    .is_err()
                {
                    for (d, &(prev, next)) in seen[..i].iter().enumerate() {
                        undo(self.plain_cell(d, keyed), Measured { prev, next, now });
                    }
                    continue 'transaction;
                }
            }
            return true;
        }
    }

    /// One active quota: its own CAS commits.
    #[inline]
    fn acquire_one(&self, i: usize, slot: &mut Slot, cost: u32, now: u64) -> Verdict {
        let q = &self.quotas[i];
        let (prev, step) = q
            .cells
            .update(slot.fp, now, |tat| q.gcra.step(tat, now, cost));
        let (next, verdict) = match step {
            Step::Admit { next } => (next, Verdict::Admitted),
            Step::Wait { wait } => (
                prev,
                Verdict::Exhausted {
                    quota: i,
                    wait: Duration::from_nanos(wait),
                },
            ),
            Step::TooCostly => (prev, Verdict::TooCostly { quota: i }),
        };
        slot.measured = Measured { prev, next, now };
        verdict
    }

    /// Several active quotas: read all, decide with [`gcra::step_each`]
    /// over the slots where they are (each slot's `measured` filled as it
    /// is stepped), then commit all or roll back and start again.
    fn acquire_all(&self, slots: &mut [Slot], cost: u32, now: u64) -> Verdict {
        // The three steps read and write the same slots.
        let slots = Cell::from_mut(slots).as_slice_of_cells();
        'transaction: loop {
            let outcome = gcra::step_each(
                slots.len(),
                now,
                cost,
                |i| slots[i].get().active.then(|| self.quotas[i].gcra),
                |i| self.quotas[i].cells.read(slots[i].get().fp),
                |i, prev, next| {
                    let mut s = slots[i].get();
                    s.measured = Measured { prev, next, now };
                    slots[i].set(s);
                },
            );
            match outcome {
                Outcome::TooCostly { quota } => return Verdict::TooCostly { quota },
                Outcome::Refuse { quota, wait } => {
                    return Verdict::Exhausted {
                        quota,
                        wait: Duration::from_nanos(wait),
                    };
                }
                Outcome::Admit => {}
            }
            for (i, slot) in slots.iter().enumerate() {
                let s = slot.get();
                if !s.active {
                    continue;
                }
                let m = s.measured;
                if !self.quotas[i].cells.commit(s.fp, m.prev, m.next, now) {
                    for (done, d) in slots[..i].iter().enumerate() {
                        let d = d.get();
                        if d.active {
                            self.quotas[done].cells.rollback(d.fp, d.measured);
                        }
                    }
                    continue 'transaction;
                }
            }
            return Verdict::Admitted;
        }
    }

    /// Evicts idle keys (their bucket full again); returns how many.
    pub(crate) fn sweep(&self) -> usize {
        let now = self.now();
        self.quotas
            .iter()
            .filter_map(|q| q.table().map(|t| t.sweep(now)))
            .sum()
    }

    /// Keys currently tracked, over all quotas.
    pub(crate) fn key_count(&self) -> usize {
        self.quotas
            .iter()
            .filter_map(|q| q.table().map(Table::len))
            .sum()
    }

    /// Whether some quota is keyed (has keys to sweep).
    pub(crate) fn is_keyed(&self) -> bool {
        self.quotas.iter().any(|q| q.table().is_some())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn metrics() -> MapMetrics {
        MapMetrics::noop()
    }

    fn store(quotas: &[(u32, u32, bool)]) -> MemoryStore {
        MemoryStore::new(
            quotas
                .iter()
                .map(|&(per_sec, burst, keyed)| {
                    let q = Gcra::new(1_000_000_000 / u64::from(per_sec), burst);
                    QuotaCells::new(q, keyed.then(|| (1000, metrics())))
                })
                .collect(),
        )
    }

    const ONE: NonZeroU32 = NonZeroU32::MIN;

    #[tokio::test(start_paused = true)]
    async fn multi_quota_is_all_or_nothing() {
        let s = store(&[(10, 3, true), (10, 5, false)]);
        // Key 1 takes its 3; key 2 takes 2 of the global 5.
        for _ in 0..3 {
            assert_eq!(s.acquire(&mut [slot(1), slot(0)], ONE), Verdict::Admitted);
        }
        assert!(matches!(
            s.acquire(&mut [slot(1), slot(0)], ONE),
            Verdict::Exhausted { quota: 0, .. }
        ));
        for _ in 0..2 {
            assert_eq!(s.acquire(&mut [slot(2), slot(0)], ONE), Verdict::Admitted);
        }
        // Global is empty: key 3 is refused by quota 1 and consumes nothing
        // from quota 0.
        assert!(matches!(
            s.acquire(&mut [slot(3), slot(0)], ONE),
            Verdict::Exhausted { quota: 1, .. }
        ));
        let mut alone = [slot(3), Slot::default()];
        for _ in 0..3 {
            assert_eq!(s.acquire(&mut alone, ONE), Verdict::Admitted);
        }
        assert!(matches!(
            s.acquire(&mut alone, ONE),
            Verdict::Exhausted { quota: 0, .. }
        ));
        assert_eq!(
            s.acquire(&mut [slot(4), slot(0)], NonZeroU32::new(4).unwrap()),
            Verdict::TooCostly { quota: 0 }
        );
    }

    fn slot(fp: u64) -> Slot {
        Slot {
            active: true,
            fp,
            measured: Measured::default(),
        }
    }

    /// One request of key `fp` through the whole transaction, with a
    /// per-key and a global quota.
    fn acquire_both(s: &MemoryStore, fp: u64) -> bool {
        s.acquire(&mut [slot(fp), slot(0)], ONE) == Verdict::Admitted
    }

    /// Keys 1 and 2 on two threads, 1 000 requests each through `admit`,
    /// against a per-key quota of 300 and a global one of 500: exactly the
    /// global quota's 500 are admitted, and refusals (and commits rolled
    /// back after a lost race) took nothing from the per-key quota: each
    /// key has exactly 300 - admitted left.
    fn all_or_nothing_on_two_threads(admit: fn(&MemoryStore, u64) -> bool) -> MemoryStore {
        let hourly = |burst| Gcra::new(3_600_000_000_000, burst);
        let s = std::sync::Arc::new(MemoryStore::new(vec![
            QuotaCells::new(hourly(300), Some((100, metrics()))),
            QuotaCells::new(hourly(500), None),
        ]));
        let threads: Vec<_> = (1..=2u64)
            .map(|fp| {
                let s = std::sync::Arc::clone(&s);
                std::thread::spawn(move || (0..1000).filter(|_| admit(&s, fp)).count())
            })
            .collect();
        let admitted: Vec<usize> = threads.into_iter().map(|t| t.join().unwrap()).collect();
        assert_eq!(admitted.iter().sum::<usize>(), 500, "{admitted:?}");
        let s = std::sync::Arc::into_inner(s).unwrap();
        for (fp, took) in (1..=2u64).zip(&admitted) {
            assert!(*took <= 300);
            // The per-key quota alone (the global one is spent).
            let mut alone = [slot(fp), Slot::default()];
            let left = std::iter::repeat_with(|| s.acquire(&mut alone, ONE))
                .take_while(|v| *v == Verdict::Admitted)
                .count();
            assert_eq!(left, 300 - took, "key {fp}");
        }
        s
    }

    #[test]
    fn all_or_nothing_under_contention() {
        all_or_nothing_on_two_threads(acquire_both);
    }

    /// The short path's transaction (the keyed quota's cell found once,
    /// the step under its shard lock) holds the same line.
    #[test]
    fn plain_shape_is_all_or_nothing_under_contention() {
        let s = all_or_nothing_on_two_threads(MemoryStore::admit_plain);
        assert!(s.has_plain_shape());
        let hourly = |burst| Gcra::new(3_600_000_000_000, burst);
        // Two keyed quotas: not this path's shape.
        let two_keyed = MemoryStore::new(vec![
            QuotaCells::new(hourly(1), Some((10, metrics()))),
            QuotaCells::new(hourly(1), Some((10, metrics()))),
        ]);
        assert!(!two_keyed.has_plain_shape());
    }

    #[tokio::test(start_paused = true)]
    async fn rollback_restores_prev() {
        let s = store(&[(10, 3, false)]);
        let cells = &s.quotas[0].cells;
        let m = |prev, next, now| Measured { prev, next, now };
        assert!(cells.commit(0, 0, 500, 0));
        cells.rollback(0, m(0, 500, 400));
        let Cells::Single(Tat(c)) = cells else {
            panic!()
        };
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
            assert_eq!(s.acquire(&mut slot, ONE), Verdict::Admitted);
            assert!(table.len() <= 1000);
        }
        assert!(table.len() > 900, "{}", table.len());
        tokio::time::advance(Duration::from_secs(2)).await;
        let before = table.len();
        assert_eq!(s.sweep(), before);
        assert_eq!(table.len(), 0);
    }
}
