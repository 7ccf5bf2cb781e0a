//! Where quota state lives: in this process ([`MemoryStore`]) or in Redis
//! (feature `redis`), and how an operator sees the store's health.

use std::sync::Arc;
use std::time::Duration;

use super::gcra::Gcra;
use super::layer::RateLimitBuilder;
use super::memory::{MemoryStore, QuotaCells};
use crate::ConfigError;
use crate::util::keyed_map::MapMetrics;

/// The store a layer decides with.
pub(crate) enum Store {
    /// This process's memory: answers at once.
    Memory(MemoryStore),
    /// Redis, one round trip per decided request (shared with the
    /// decisions under way).
    #[cfg(feature = "redis")]
    Redis(std::sync::Arc<super::redis::RedisBackend>),
}

impl Store {
    /// The store of a checked builder: Redis if it names one, else this
    /// process's memory, each quota with `params` (keyed quotas get a table
    /// of at most `max_keys` keys, with their metrics).
    pub(crate) fn new(
        b: &RateLimitBuilder,
        layer: &Arc<str>,
        names: &[String],
        params: &[Gcra],
    ) -> Result<Self, ConfigError> {
        #[cfg(feature = "redis")]
        if b.redis.is_some() {
            return Store::redis(b, layer, names, params);
        }
        let quotas = names
            .iter()
            .zip(&b.quotas)
            .zip(params)
            .map(|((name, q), gcra)| {
                let keyed = (!q.key.is_global()).then(|| (b.max_keys, key_metrics(layer, name)));
                QuotaCells::new(*gcra, keyed)
            })
            .collect();
        Ok(Store::Memory(MemoryStore::new(quotas)))
    }

    /// Whether the state lives outside this process.
    pub(crate) fn is_remote(&self) -> bool {
        !matches!(self, Store::Memory(_))
    }

    /// The in-process tables this store keeps (the Redis store: its
    /// fallback's, if it has one).
    fn tables(&self) -> Option<&MemoryStore> {
        match self {
            Store::Memory(m) => Some(m),
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.fallback.as_ref(),
        }
    }

    /// Whether some in-process table has keys to sweep.
    pub(crate) fn is_keyed(&self) -> bool {
        self.tables().is_some_and(MemoryStore::is_keyed)
            || self.leases().is_some_and(|l| l.is_keyed())
    }

    /// Evicts the idle keys of the in-process tables; returns how many.
    pub(crate) fn sweep(&self) -> usize {
        self.tables().map_or(0, MemoryStore::sweep) + self.leases().map_or(0, |l| l.sweep())
    }

    /// Leased mode's slices, if the store has them.
    #[cfg(feature = "redis")]
    fn leases(&self) -> Option<&super::lease::Leases> {
        match self {
            Store::Memory(_) => None,
            Store::Redis(r) => r.lease.as_ref(),
        }
    }

    /// No leased mode without the `redis` feature.
    #[cfg(not(feature = "redis"))]
    #[allow(clippy::unused_self)]
    fn leases(&self) -> Option<&NoLeases> {
        None
    }

    /// Keys tracked by the main in-process store (0 for exact Redis; the
    /// slices of leased mode).
    pub(crate) fn key_count(&self) -> usize {
        match self {
            Store::Memory(m) => m.key_count(),
            #[cfg(feature = "redis")]
            Store::Redis(r) => r.lease.as_ref().map_or(0, |l| l.key_count()),
        }
    }

    /// The store's health, as the layer exposes it.
    pub(crate) fn health(&self) -> StoreHealth {
        match self {
            Store::Memory(_) => StoreHealth { remote: None },
            #[cfg(feature = "redis")]
            Store::Redis(r) => StoreHealth {
                remote: Some(r.breaker().clone()),
            },
        }
    }
}

/// The key table's metrics of quota `quota` of layer `layer`.
pub(crate) fn key_metrics(layer: &str, quota: &str) -> MapMetrics {
    let evicted = |reason: &str| {
        metrics::counter!(
            "rampart_rate_limit_evictions_total",
            &[
                ("name", layer.to_owned()),
                ("quota", quota.to_owned()),
                ("reason", reason.to_owned()),
            ]
        )
    };
    MapMetrics {
        keys: metrics::gauge!(
            "rampart_rate_limit_keys",
            &[("name", layer.to_owned()), ("quota", quota.to_owned())]
        ),
        evicted_idle: evicted("idle"),
        evicted_capacity: evicted("capacity"),
    }
}

/// How the rate limit's store is doing, from
/// [`RateLimitLayer::store_health`](super::RateLimitLayer::store_health):
/// for a readiness check, a dashboard, or to isolate Redis by hand.
///
/// The in-process store is always [`StoreState::Available`]. The Redis
/// store (feature `redis`) is guarded by a circuit breaker (named
/// `<layer>-redis` in the `rampart_circuit_breaker_*` metrics): after
/// [`RedisStore::trip_after`](super::RedisStore::trip_after) failed calls
/// it is [`Unavailable`](StoreState::Unavailable) and decisions follow the
/// [`FailurePolicy`](super::FailurePolicy) until a trial call succeeds.
///
/// ```
/// use tower_rampart::rate_limit::{Quota, RateLimitLayer, StoreState};
///
/// let layer = RateLimitLayer::builder().quota(Quota::per_second(10)).build().unwrap();
/// let health = layer.store_health();
/// assert_eq!(health.state(), StoreState::Available);
/// assert!(!health.is_remote());
/// ```
#[derive(Clone)]
pub struct StoreHealth {
    #[cfg(feature = "redis")]
    remote: Option<crate::circuit_breaker::CircuitBreakerHandle>,
    #[cfg(not(feature = "redis"))]
    remote: Option<std::convert::Infallible>,
}

/// The state of a rate limit's store (see [`StoreHealth`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StoreState {
    /// Decisions are made by the store (in process, or Redis answering;
    /// for Redis this includes a trial call after an outage).
    Available,
    /// Redis failed: decisions follow the failure policy until a trial
    /// call succeeds ([`StoreHealth::retry_in`]).
    Unavailable,
    /// Isolated by hand ([`StoreHealth::isolate`]): decisions follow the
    /// failure policy until [`StoreHealth::restore`].
    Isolated,
}

impl StoreHealth {
    /// The store's state now.
    pub fn state(&self) -> StoreState {
        #[cfg(feature = "redis")]
        if let Some(b) = &self.remote {
            use crate::circuit_breaker::CircuitState;
            return match b.state() {
                CircuitState::Open => StoreState::Unavailable,
                CircuitState::ForcedOpen => StoreState::Isolated,
                _ => StoreState::Available,
            };
        }
        StoreState::Available
    }

    /// Whether decisions are made by the store now (a readiness check
    /// that must fail while Redis is out).
    pub fn is_available(&self) -> bool {
        self.state() == StoreState::Available
    }

    /// Whether the state lives outside this process (Redis).
    pub fn is_remote(&self) -> bool {
        self.remote.is_some()
    }

    /// While [`Unavailable`](StoreState::Unavailable): the time until the
    /// next trial call to Redis; `None` otherwise.
    pub fn retry_in(&self) -> Option<Duration> {
        #[cfg(feature = "redis")]
        if let Some(b) = &self.remote {
            return b.open_remaining();
        }
        None
    }

    /// Stops calling Redis until [`restore`](Self::restore): every decision
    /// follows the failure policy (a planned Redis maintenance). No effect
    /// on the in-process store.
    pub fn isolate(&self) {
        #[cfg(feature = "redis")]
        if let Some(b) = &self.remote {
            b.force_open();
        }
    }

    /// Calls Redis again, with a clean failure count (after
    /// [`isolate`](Self::isolate), or to end an outage's wait early).
    pub fn restore(&self) {
        #[cfg(feature = "redis")]
        if let Some(b) = &self.remote {
            b.reset();
        }
    }
}

impl std::fmt::Debug for StoreHealth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StoreHealth")
            .field("remote", &self.is_remote())
            .field("state", &self.state())
            .finish()
    }
}

/// What [`Store::leases`] names without the `redis` feature: never made.
#[cfg(not(feature = "redis"))]
enum NoLeases {}

#[cfg(not(feature = "redis"))]
impl NoLeases {
    fn is_keyed(&self) -> bool {
        match *self {}
    }

    fn sweep(&self) -> usize {
        match *self {}
    }
}
