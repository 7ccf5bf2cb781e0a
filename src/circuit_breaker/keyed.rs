//! Keyed breakers: one breaker per upstream host, route or tenant.

use std::borrow::Borrow;
use std::cell::RefCell;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::util::clock::EpochClock;
use tower::Layer;

use super::handle::CircuitBreakerHandle;
use super::state::{Breaker, Settings};
use crate::rejection::{ErrorMode, HttpMode};
use crate::util::keyed_map::{Expiring, KeyedMap, MapMetrics};

struct Entry {
    breaker: Breaker,
    /// When the key has been unused for `key_idle_timeout` (nanoseconds
    /// since the layer's epoch); pushed back on every use.
    idle_at: AtomicU64,
}

impl Expiring for Arc<Entry> {
    fn idle_at(&self) -> u64 {
        self.idle_at.load(Ordering::Relaxed)
    }
}

/// The first few `str`-keyed entries this thread used (the stack's
/// per-route breakers): a hit reads no lock, hashes nothing and writes no
/// shared line (the entry is used by reference, not cloned). An entry is
/// used only while its map's [`generation`](KeyedMap::generation) is the
/// one it was copied at: any removal from the map (idle sweep, capacity
/// eviction) makes every copy stale, so a cached breaker is always the
/// map's. A slot goes to another key only once stale, so a thread that
/// uses more keys than it has slots allocates nothing for the rest.
/// Kept for the per-route rows of `benches/compare/benches/stack.rs`
/// (benches/README.md, "Clones per request, and two threads").
#[cfg_attr(not(feature = "config"), allow(dead_code))] // used by the stack's per-route breakers
struct Cached {
    map: u64,
    generation: u64,
    key: Box<str>,
    entry: Arc<Entry>,
}

/// Entries each thread keeps ([`Cached`]).
#[cfg_attr(not(feature = "config"), allow(dead_code))] // used by the stack's per-route breakers
const CACHED: usize = 8;

thread_local! {
    static CACHE: RefCell<Vec<Cached>> = const { RefCell::new(Vec::new()) };
}

/// Map numbers for [`Cached::map`] (never reused, unlike addresses).
static NEXT_MAP: AtomicU64 = AtomicU64::new(1);

pub(crate) struct KeyedShared<K> {
    settings: Arc<Settings>,
    /// Bounded by `max_keys`; a full shard evicts the idle keys of a
    /// sample, else its least recently used key (see `util::keyed_map`).
    map: KeyedMap<K, Arc<Entry>, RandomState>,
    /// This map's number in the per-thread caches.
    #[cfg_attr(not(feature = "config"), allow(dead_code))]
    // used by the stack's per-route breakers
    id: u64,
    clock: EpochClock,
    last_sweep: AtomicU64,
    /// Lanes per key's breaker.
    lanes: usize,
}

impl<K: Hash + Eq + Clone> KeyedShared<K> {
    /// Breakers over a map of up to 64 shards (many keys, few of them hot
    /// at once), or of one shard (`sharded = false`: few keys, all hot,
    /// one hash per lookup instead of two).
    pub(crate) fn new(settings: Arc<Settings>, sharded: bool) -> Self {
        Self {
            // Many keys: one lane each (a lane is 128 bytes). Few hot keys
            // (routes): a lane per thread, as an unkeyed breaker has, so
            // concurrent requests on one route do not all count references
            // on one cache line.
            lanes: if sharded { 1 } else { Breaker::default_lanes() },
            id: NEXT_MAP.fetch_add(1, Ordering::Relaxed),
            map: KeyedMap::with_max_shards(
                settings.config.max_keys,
                if sharded { usize::MAX } else { 1 },
                RandomState::new(),
                MapMetrics::noop(),
            ),
            settings,
            clock: EpochClock::new(),
            last_sweep: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        self.clock.now()
    }

    /// `f` of the breaker of `key` (created on first use, under the key
    /// `owned(key)`), called while the key's shard is read-locked: `f`
    /// must be short (take a permit, not call a service). `key` may be a
    /// borrowed form of `K` (as `&str` for [`RouteKey`](crate::config::RouteKey)),
    /// so a lookup of a known key builds no owned key, and `f` can decide
    /// without a clone of the breaker.
    #[inline]
    pub(crate) fn with_breaker<Q, R>(
        &self,
        key: &Q,
        owned: impl FnOnce(&Q) -> K,
        f: impl Fn(&Breaker) -> R,
    ) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.with_entry(key, owned, |e| f(&e.breaker))
    }

    /// `f` of the entry of `key`, touched (see [`touch`](Self::touch)).
    #[inline]
    fn with_entry<Q, R>(
        &self,
        key: &Q,
        owned: impl FnOnce(&Q) -> K,
        f: impl Fn(&Arc<Entry>) -> R,
    ) -> R
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let now = self.now();
        let touch = |e: &Arc<Entry>| {
            self.touch(e, now);
            f(e)
        };
        if let Some(out) = self.map.with(key, touch) {
            return out;
        }
        // A new key: first drop the keys idle for the timeout, at most once
        // per timeout (one shard lock at a time).
        let idle = self.idle_nanos();
        let last = self.last_sweep.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= idle
            && self
                .last_sweep
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.map.sweep(now);
        }
        self.map.with_or_insert(
            owned(key),
            now,
            || {
                Arc::new(Entry {
                    breaker: Breaker::new(self.settings.clone(), self.lanes),
                    idle_at: AtomicU64::new(now.saturating_add(idle)),
                })
            },
            touch,
        )
    }

    /// A breaker with this map's settings (name, listener) and lanes, kept
    /// outside the map by its owner (the stack's declared routes): never
    /// evicted, and not among the map's keys.
    #[cfg_attr(not(feature = "config"), allow(dead_code))] // used by the stack's per-route breakers
    pub(crate) fn breaker_outside(&self) -> Breaker {
        Breaker::new(self.settings.clone(), self.lanes)
    }

    fn idle_nanos(&self) -> u64 {
        u64::try_from(self.settings.config.key_idle_timeout.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Marks `e` used at `now`. A key's expiry moves only when it has
    /// fallen within the idle timeout of now, and then a little beyond it
    /// (1 ms, or a sixteenth of a shorter timeout): a busy key is written
    /// about once per millisecond, not on every call (a cache line every
    /// thread would otherwise write). A key never expires before it was
    /// idle for the whole timeout, and at most that little after.
    #[inline]
    fn touch(&self, e: &Entry, now: u64) {
        let idle = self.idle_nanos();
        let idle_at = now.saturating_add(idle);
        if e.idle_at.load(Ordering::Relaxed) < idle_at {
            let slack = (idle / 16).min(1_000_000);
            e.idle_at
                .store(idle_at.saturating_add(slack), Ordering::Relaxed);
        }
    }
}

impl<K: Hash + Eq + Clone + Borrow<str>> KeyedShared<K> {
    /// [`with_breaker`](Self::with_breaker) through this thread's cache of
    /// the first entries it uses ([`Cached`]), for maps of few keys that
    /// are all hot (the stack's routes). `f` runs while the cache is
    /// borrowed: it must not look up a breaker itself.
    #[inline]
    #[cfg_attr(not(feature = "config"), allow(dead_code))] // used by the stack's per-route breakers
    pub(crate) fn with_breaker_cached<R>(
        &self,
        key: &str,
        owned: impl FnOnce(&str) -> K,
        f: impl Fn(&Breaker) -> R,
    ) -> R {
        // Read before the lookup below: an entry remembered with it is
        // dropped by any removal that may have happened since.
        let generation = self.map.generation();
        let hit = CACHE.with(|cache| {
            let cache = cache.borrow();
            let c = cache.iter().find(|c| c.map == self.id && *c.key == *key)?;
            if c.generation != generation {
                return None;
            }
            self.touch(&c.entry, self.now());
            Some(f(&c.entry.breaker))
        });
        if let Some(out) = hit {
            return out;
        }
        let entry = self.with_entry(key, owned, Arc::clone);
        let out = f(&entry.breaker);
        // Remembered in this key's slot, else in a slot of this map that a
        // removal made stale, else in a free slot; with every slot taken,
        // not at all (no slot is evicted for another: a thread that uses
        // more routes than it has slots takes the map's path for the rest,
        // instead of allocating a slot's key on every request).
        CACHE.with(|cache| {
            let slots = &mut *cache.borrow_mut();
            if let Some(c) = slots
                .iter_mut()
                .find(|c| c.map == self.id && *c.key == *key)
            {
                c.generation = generation;
                c.entry = entry;
                return;
            }
            let fresh = Cached {
                map: self.id,
                generation,
                key: key.into(),
                entry,
            };
            if let Some(c) = slots
                .iter_mut()
                .find(|c| c.map == self.id && c.generation != generation)
            {
                *c = fresh;
            } else if slots.len() < CACHED {
                slots.push(fresh);
            }
        });
        out
    }
}

/// Applies one circuit breaker per key taken from the request (upstream
/// host, route, tenant), created lazily.
///
/// At most `max_keys` breakers are kept; when a new key arrives, keys idle
/// longer than `key_idle_timeout` are evicted first, then, if still full,
/// the least recently used one. An evicted key starts again closed. All
/// keys share the settings, the name and the metrics (the state gauge is not
/// reported for keyed breakers: read a key's state with
/// [`KeyedCircuitBreakerHandle::get`]).
///
/// ```
/// use http::Request;
/// use tower_rampart::circuit_breaker::CircuitBreakerLayer;
///
/// // One breaker per upstream host.
/// let layer = CircuitBreakerLayer::builder()
///     .name("upstreams")
///     .max_keys(1000)
///     .build_keyed(|req: &Request<String>| {
///         req.uri().host().unwrap_or_default().to_owned()
///     })
///     .unwrap();
/// assert_eq!(layer.handle().len(), 0);
/// ```
pub struct KeyedCircuitBreakerLayer<K, KF, M = HttpMode> {
    pub(crate) shared: Arc<KeyedShared<K>>,
    pub(crate) key_fn: KF,
    _mode: PhantomData<fn() -> M>,
}

impl<K, KF: Clone, M> Clone for KeyedCircuitBreakerLayer<K, KF, M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            key_fn: self.key_fn.clone(),
            _mode: PhantomData,
        }
    }
}

impl<K, KF, M> fmt::Debug for KeyedCircuitBreakerLayer<K, KF, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerLayer")
            .field("name", &self.shared.settings.name)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone, KF> KeyedCircuitBreakerLayer<K, KF> {
    pub(crate) fn new(settings: Arc<Settings>, key_fn: KF, sharded: bool) -> Self {
        Self {
            shared: Arc::new(KeyedShared::new(settings, sharded)),
            key_fn,
            _mode: PhantomData,
        }
    }
}

impl<K, KF, M> KeyedCircuitBreakerLayer<K, KF, M> {
    /// Refusals become errors instead of responses.
    pub fn into_error_mode(self) -> KeyedCircuitBreakerLayer<K, KF, ErrorMode> {
        KeyedCircuitBreakerLayer {
            shared: self.shared,
            key_fn: self.key_fn,
            _mode: PhantomData,
        }
    }

    /// A handle to the keyed breakers.
    pub fn handle(&self) -> KeyedCircuitBreakerHandle<K> {
        KeyedCircuitBreakerHandle {
            shared: self.shared.clone(),
        }
    }
}

impl<S, K, KF: Clone, M> Layer<S> for KeyedCircuitBreakerLayer<K, KF, M> {
    type Service = super::KeyedCircuitBreaker<S, K, KF, M>;

    fn layer(&self, inner: S) -> Self::Service {
        super::KeyedCircuitBreaker::from_parts(inner, self.shared.clone(), self.key_fn.clone())
    }
}

/// Reads the breakers of a [`KeyedCircuitBreakerLayer`].
pub struct KeyedCircuitBreakerHandle<K> {
    shared: Arc<KeyedShared<K>>,
}

impl<K> Clone for KeyedCircuitBreakerHandle<K> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
        }
    }
}

impl<K> fmt::Debug for KeyedCircuitBreakerHandle<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreakerHandle")
            .field("name", &self.shared.settings.name)
            .finish_non_exhaustive()
    }
}

impl<K: Hash + Eq + Clone> KeyedCircuitBreakerHandle<K> {
    /// The handle of `key`'s breaker, if it exists now.
    pub fn get(&self, key: &K) -> Option<CircuitBreakerHandle> {
        self.shared
            .map
            .with(key, |e| CircuitBreakerHandle::new(e.breaker.core().clone()))
    }

    /// The keys that have a breaker now.
    pub fn keys(&self) -> Vec<K> {
        let mut keys = Vec::with_capacity(self.shared.map.len());
        self.shared.map.for_each(|k, _| keys.push(k.clone()));
        keys
    }

    /// How many keys have a breaker now.
    pub fn len(&self) -> usize {
        self.shared.map.len()
    }

    /// Whether no key has a breaker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::circuit_breaker::{CircuitState, decide_keyed};

    fn routes() -> Arc<KeyedShared<String>> {
        crate::circuit_breaker::CircuitBreakerLayer::builder()
            .unsharded()
            .build_keyed(|_: &()| String::new())
            .unwrap()
            .shared
    }

    /// The per-thread cache gives the map's breaker, and never one the map
    /// has dropped: after an eviction the next request gets the new
    /// breaker, not the cached one.
    #[test]
    fn cached_lookups_follow_removals() {
        let shared = routes();
        let handle = KeyedCircuitBreakerHandle {
            shared: Arc::clone(&shared),
        };
        let made = std::cell::Cell::new(0);
        let lookup = || {
            shared.with_breaker_cached(
                "/api/x",
                |k| {
                    made.set(made.get() + 1);
                    k.to_owned()
                },
                decide_keyed,
            )
        };
        assert!(lookup().is_ok());
        assert!(lookup().is_ok());
        assert_eq!(made.get(), 1);
        // The map's breaker is the one the cache decides with.
        handle.get(&"/api/x".to_owned()).unwrap().force_open();
        assert!(lookup().is_err());
        // Evicted (as an idle sweep would): the cached copy is not used;
        // the route gets a new, closed breaker.
        assert_eq!(shared.map.sweep(u64::MAX), 1);
        assert!(lookup().is_ok());
        assert_eq!(made.get(), 2);
        assert_eq!(
            handle.get(&"/api/x".to_owned()).unwrap().state(),
            CircuitState::Closed
        );
        // More routes than slots: the rest are found in the map, each the
        // map's own breaker, and the cached ones stay cached.
        let others: Vec<String> = (0..2 * CACHED).map(|i| format!("/api/{i}")).collect();
        for key in &others {
            for _ in 0..2 {
                let decided = shared.with_breaker_cached(key, str::to_owned, decide_keyed);
                assert!(decided.is_ok());
            }
        }
        handle.get(&others[2 * CACHED - 1]).unwrap().force_open();
        let last = shared.with_breaker_cached(&others[2 * CACHED - 1], str::to_owned, decide_keyed);
        assert!(last.is_err());
        assert!(lookup().is_ok());
        assert_eq!(made.get(), 2);
        // Another map's same key is another breaker.
        let other = routes();
        let decided = other.with_breaker_cached("/api/x", str::to_owned, decide_keyed);
        assert!(decided.is_ok());
        handle.get(&"/api/x".to_owned()).unwrap().force_open();
        assert!(
            other
                .with_breaker_cached("/api/x", str::to_owned, decide_keyed)
                .is_ok()
        );
        assert!(lookup().is_err());
    }
}
