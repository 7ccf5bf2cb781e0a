//! Keyed breakers: one breaker per upstream host, route or tenant.

use std::collections::HashMap;
use std::fmt;
use std::hash::Hash;
use std::marker::PhantomData;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use tokio::time::Instant;
use tower::Layer;

use super::handle::CircuitBreakerHandle;
use super::state::{Breaker, Settings};
use crate::rejection::{ErrorMode, HttpMode};

struct Entry {
    breaker: Breaker,
    last_used: AtomicU64,
}

pub(crate) struct KeyedShared<K> {
    settings: Arc<Settings>,
    map: RwLock<HashMap<K, Entry>>,
    epoch: Instant,
    last_sweep: AtomicU64,
}

impl<K: Hash + Eq + Clone> KeyedShared<K> {
    fn now(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.epoch)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
    }

    /// The breaker of `key`, created on first use.
    pub(crate) fn breaker(&self, key: K) -> Breaker {
        let now = self.now();
        {
            let map = self.map.read().unwrap_or_else(|e| e.into_inner());
            if let Some(e) = map.get(&key) {
                e.last_used.store(now, Ordering::Relaxed);
                return e.breaker.clone();
            }
        }
        let cfg = &self.settings.config;
        let idle = u64::try_from(cfg.key_idle_timeout.as_nanos()).unwrap_or(u64::MAX);
        let mut map = self.map.write().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = map.get(&key) {
            e.last_used.store(now, Ordering::Relaxed);
            return e.breaker.clone();
        }
        let due = now.saturating_sub(self.last_sweep.load(Ordering::Relaxed)) >= idle;
        if due || map.len() >= cfg.max_keys {
            map.retain(|_, e| now.saturating_sub(e.last_used.load(Ordering::Relaxed)) < idle);
            self.last_sweep.store(now, Ordering::Relaxed);
        }
        while map.len() >= cfg.max_keys {
            // Still full of recently used keys: drop the least recently used.
            let oldest = map
                .iter()
                .min_by_key(|(_, e)| e.last_used.load(Ordering::Relaxed))
                .map(|(k, _)| k.clone());
            match oldest {
                Some(k) => {
                    map.remove(&k);
                }
                None => break,
            }
        }
        let breaker = Breaker::new(self.settings.clone(), 1);
        map.insert(
            key,
            Entry {
                breaker: breaker.clone(),
                last_used: AtomicU64::new(now),
            },
        );
        breaker
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

impl<K, KF> KeyedCircuitBreakerLayer<K, KF> {
    pub(crate) fn new(settings: Arc<Settings>, key_fn: KF) -> Self {
        Self {
            shared: Arc::new(KeyedShared {
                settings,
                map: RwLock::new(HashMap::new()),
                epoch: Instant::now(),
                last_sweep: AtomicU64::new(0),
            }),
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
        let map = self.shared.map.read().unwrap_or_else(|e| e.into_inner());
        map.get(key)
            .map(|e| CircuitBreakerHandle::new(e.breaker.core().clone()))
    }

    /// The keys that have a breaker now.
    pub fn keys(&self) -> Vec<K> {
        let map = self.shared.map.read().unwrap_or_else(|e| e.into_inner());
        map.keys().cloned().collect()
    }

    /// How many keys have a breaker now.
    pub fn len(&self) -> usize {
        self.shared
            .map
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .len()
    }

    /// Whether no key has a breaker.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
