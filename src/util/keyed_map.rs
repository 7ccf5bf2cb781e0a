//! A bounded, sharded map with sampled eviction: the key table of the rate
//! limiter (key fingerprint -> theoretical arrival time) and of keyed
//! circuit breakers (key -> breaker).
//!
//! Every value says when it becomes *idle* ([`Expiring::idle_at`], a
//! reading of the owner's nanosecond clock): a rate-limit bucket is idle
//! once it is full again (forgetting it changes nothing), a keyed breaker
//! once it has been unused for its idle timeout.
//!
//! - **Bounded.** The map holds at most `max_keys` entries, split evenly
//!   over up to 64 shards (each with its own `RwLock`, chosen by hash), so
//!   one hot key's writers never block the other shards.
//! - **Eviction never scans every key under a lock.** A new key in a full
//!   shard looks at a sample of [`EVICTION_SAMPLE`] entries of that shard:
//!   the idle ones go; if none is idle, the one that becomes idle first
//!   (the least recently used, for breakers) goes. A shard of at most
//!   `EVICTION_SAMPLE` entries is therefore exact LRU.
//! - **Idle sweep.** [`KeyedMap::sweep`] drops every idle entry, one shard
//!   (one lock) at a time.
//!
//! Lookups take a shard's read lock; only inserting a new key takes its
//! write lock. Values are shared through `&V`, so they hold their mutable
//! state in atomics.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::{BuildHasher, Hash};
use std::sync::RwLock;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use metrics::{Counter, Gauge};

use super::poison::{read, write};

/// How many entries of a full shard are looked at to make room.
pub(crate) const EVICTION_SAMPLE: usize = 16;

/// The most shards a map is split into.
const MAX_SHARDS: usize = 64;

/// Fewest entries a shard is given before the map is split further.
const MIN_SHARD_CAP: usize = 16;

/// A value that becomes idle at some instant of the owner's clock.
pub(crate) trait Expiring {
    /// The instant (nanoseconds on the owner's clock) from which the entry
    /// is idle; an entry whose `idle_at` is not after "now" may be dropped.
    fn idle_at(&self) -> u64;
}

/// What a map reports about itself (no-op handles when unobserved).
pub(crate) struct MapMetrics {
    /// Entries held.
    pub(crate) keys: Gauge,
    /// Entries dropped because they were idle.
    pub(crate) evicted_idle: Counter,
    /// Entries dropped to make room while not idle.
    pub(crate) evicted_capacity: Counter,
}

impl MapMetrics {
    /// Handles that record nothing.
    pub(crate) fn noop() -> Self {
        Self {
            keys: Gauge::noop(),
            evicted_idle: Counter::noop(),
            evicted_capacity: Counter::noop(),
        }
    }
}

type Shard<K, V, S> = RwLock<HashMap<K, V, S>>;

/// A bounded, sharded map (see the [module docs](self)).
pub(crate) struct KeyedMap<K, V, S> {
    shards: Box<[Shard<K, V, S>]>,
    hasher: S,
    shard_cap: usize,
    len: AtomicUsize,
    /// See [`generation`](Self::generation).
    generation: AtomicU64,
    metrics: MapMetrics,
}

impl<K, V, S> KeyedMap<K, V, S>
where
    K: Hash + Eq + Clone,
    V: Expiring,
    S: BuildHasher + Clone,
{
    /// A map of at most `max_keys` (at least 1) entries.
    pub(crate) fn new(max_keys: usize, hasher: S, metrics: MapMetrics) -> Self {
        Self::with_max_shards(max_keys, MAX_SHARDS, hasher, metrics)
    }

    /// A map of at most `max_keys` entries over at most `max_shards` shards.
    /// One shard saves the shard's hash on every lookup: the right choice
    /// for few keys that are all hot (a stack's routes), where shards would
    /// spread nothing.
    pub(crate) fn with_max_shards(
        max_keys: usize,
        max_shards: usize,
        hasher: S,
        metrics: MapMetrics,
    ) -> Self {
        let max_keys = max_keys.max(1);
        let max_shards = max_shards.clamp(1, MAX_SHARDS);
        let mut shards = 1usize;
        while shards < max_shards && shards * 2 * MIN_SHARD_CAP <= max_keys {
            shards *= 2;
        }
        Self {
            shards: (0..shards)
                .map(|_| RwLock::new(HashMap::with_hasher(hasher.clone())))
                .collect(),
            hasher,
            shard_cap: max_keys / shards,
            len: AtomicUsize::new(0),
            generation: AtomicU64::new(0),
            metrics,
        }
    }

    #[inline]
    fn shard<Q: Hash + ?Sized>(&self, key: &Q) -> &Shard<K, V, S> {
        if self.shards.len() == 1 {
            return &self.shards[0];
        }
        // Middle bits: the map itself uses the low bits (bucket) and the
        // top 7 (control tag) of the same hash.
        let h = self.hasher.hash_one(key);
        &self.shards[((h >> 32) as usize) & (self.shards.len() - 1)]
    }

    /// Entries held now.
    pub(crate) fn len(&self) -> usize {
        self.len.load(Ordering::Relaxed)
    }

    /// `f` of `key`'s value, if it is present. `key` may be a borrowed
    /// form of the key type (`&str` for a key that borrows as one), so a
    /// lookup need not build an owned key.
    #[inline]
    pub(crate) fn with<Q, R>(&self, key: &Q, f: impl FnOnce(&V) -> R) -> Option<R>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let map = read(self.shard(key));
        map.get(key).map(f)
    }

    /// `f` of `key`'s value, inserting `make()` first if it is absent
    /// (making room as [`insert`](Self::insert) does).
    #[inline]
    pub(crate) fn with_or_insert<R>(
        &self,
        key: K,
        now: u64,
        make: impl FnOnce() -> V,
        f: impl FnOnce(&V) -> R,
    ) -> R {
        let shard = self.shard(&key);
        {
            let map = read(shard);
            if let Some(v) = map.get(&key) {
                return f(v);
            }
        }
        let mut map = write(shard);
        if let Some(v) = map.get(&key) {
            return f(v);
        }
        self.make_room(&mut map, now);
        let v = map.entry(key).or_insert_with(make);
        self.inserted();
        f(v)
    }

    /// Inserts `value` under `key` if the key is absent; `false` (and
    /// nothing changed) if it is present. In a full shard, a sample of
    /// entries makes room (idle ones at `now`, else the first to idle).
    pub(crate) fn insert(&self, key: K, now: u64, value: V) -> bool {
        let mut map = write(self.shard(&key));
        if map.contains_key(&key) {
            return false;
        }
        self.make_room(&mut map, now);
        map.insert(key, value);
        self.inserted();
        true
    }

    /// Drops the entries idle at `now`, one shard at a time; returns how
    /// many went.
    pub(crate) fn sweep(&self, now: u64) -> usize {
        let mut total = 0;
        for shard in self.shards.iter() {
            let mut map = write(shard);
            let before = map.len();
            map.retain(|_, v| v.idle_at() > now);
            total += before - map.len();
        }
        if total > 0 {
            self.removed(total);
            self.metrics.evicted_idle.increment(total as u64);
        }
        total
    }

    /// Calls `f` on every entry, one shard (read lock) at a time.
    pub(crate) fn for_each(&self, mut f: impl FnMut(&K, &V)) {
        for shard in self.shards.iter() {
            for (k, v) in read(shard).iter() {
                f(k, v);
            }
        }
    }

    /// Makes room in a full shard: drops the idle entries of a sample, or
    /// else the one of the sample that becomes idle first.
    fn make_room(&self, map: &mut HashMap<K, V, S>, now: u64) {
        if map.len() < self.shard_cap {
            return;
        }
        let mut idle: [Option<K>; EVICTION_SAMPLE] = std::array::from_fn(|_| None);
        let mut n_idle = 0;
        let mut first: Option<(&K, u64)> = None;
        for (k, v) in map.iter().take(EVICTION_SAMPLE) {
            let at = v.idle_at();
            if at <= now {
                idle[n_idle] = Some(k.clone());
                n_idle += 1;
            } else if first.is_none_or(|(_, t)| at < t) {
                first = Some((k, at));
            }
        }
        if n_idle == 0 {
            if let Some((k, _)) = first {
                let k = k.clone();
                map.remove(&k);
                self.removed(1);
                self.metrics.evicted_capacity.increment(1);
            }
            return;
        }
        for k in idle.iter().flatten() {
            map.remove(k);
        }
        self.removed(n_idle);
        self.metrics.evicted_idle.increment(n_idle as u64);
    }

    /// Bumped after every removal: a copy of an entry taken when it was
    /// `g` is still the map's if the generation is still `g`.
    #[inline]
    #[cfg_attr(not(feature = "config"), allow(dead_code))] // used by the per-route breakers' cache
    pub(crate) fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }

    fn removed(&self, n: usize) {
        if n > 0 {
            self.generation.fetch_add(1, Ordering::Release);
            self.len.fetch_sub(n, Ordering::Relaxed);
            self.metrics.keys.decrement(n as f64);
        }
    }

    fn inserted(&self) {
        self.len.fetch_add(1, Ordering::Relaxed);
        self.metrics.keys.increment(1.0);
    }
}

#[cfg(test)]
mod tests {
    use std::collections::hash_map::RandomState;
    use std::sync::atomic::AtomicU64;

    use super::*;

    struct At(AtomicU64);

    impl Expiring for At {
        fn idle_at(&self) -> u64 {
            self.0.load(Ordering::Relaxed)
        }
    }

    fn map(max: usize) -> KeyedMap<u64, At, RandomState> {
        KeyedMap::new(max, RandomState::new(), MapMetrics::noop())
    }

    #[test]
    fn small_maps_evict_exactly_the_first_to_idle() {
        let m = map(3);
        for (k, at) in [(1, 30), (2, 10), (3, 20)] {
            assert!(m.insert(k, 0, At(AtomicU64::new(at))));
        }
        assert!(
            !m.insert(1, 0, At(AtomicU64::new(99))),
            "present: unchanged"
        );
        assert_eq!(m.with(&1, |v| v.idle_at()), Some(30));
        // Full, nothing idle at 5: key 2 (idle first) goes.
        m.with_or_insert(4, 5, || At(AtomicU64::new(40)), |_| ());
        assert_eq!(m.len(), 3);
        assert!(m.with(&2, |_| ()).is_none());
        // At 35 keys 1 and 3 are idle: both go to make room for one.
        assert!(m.insert(5, 35, At(AtomicU64::new(50))));
        let mut keys = Vec::new();
        m.for_each(|k, _| keys.push(*k));
        keys.sort_unstable();
        assert_eq!(keys, [4, 5]);
    }

    #[test]
    fn large_maps_stay_bounded_and_sweep_shard_by_shard() {
        let m = map(1000);
        assert!(m.shards.len() > 1);
        for k in 0..20_000u64 {
            m.with_or_insert(k, k, || At(AtomicU64::new(k + 500)), |_| ());
            assert!(m.len() <= 1000);
        }
        assert!(m.len() > 900, "{}", m.len());
        let mut live = 0;
        m.for_each(|_, v| live += usize::from(v.idle_at() > 19_800));
        let before = m.len();
        assert_eq!(m.sweep(19_800), before - live);
        assert_eq!(m.len(), live);
    }

    #[test]
    fn one_shard_holds_every_key_up_to_the_bound() {
        let m: KeyedMap<u64, At, RandomState> =
            KeyedMap::with_max_shards(1000, 1, RandomState::new(), MapMetrics::noop());
        assert_eq!(m.shards.len(), 1);
        for k in 0..5_000u64 {
            m.with_or_insert(k, k, || At(AtomicU64::new(k + 500)), |_| ());
            assert!(m.len() <= 1000);
        }
        assert_eq!(m.len(), 1000);
        assert_eq!(m.with(&4_999, |v| v.idle_at()), Some(5_499));
    }
}
