//! The layer, its builder and the state its services share.

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use metrics::Counter;
use tower::Layer;

use super::RateLimit;
use super::error::RefusalReason;
use super::headers::{HeaderTemplate, Item, Rendered};
use super::key::{
    ClientIp, Fingerprinter, Key, KeyExtractor, KeyRef, RequestInfo, fingerprint, parse_cidrs,
};
use super::quota::Quota;
use super::store::{MemoryStore, QuotaCells, Slot, Store, TableMetrics, Verdict};
use crate::config_util::{HOUR, MINUTE, at_most};
use crate::rejection::{ErrorMode, HttpMode};
use crate::{ConfigError, Rejection, RejectionKind};

/// The most quotas one layer may have.
pub const MAX_QUOTAS: usize = 8;

/// What happens to a request that has no key for a quota (a header key whose
/// header is missing, a custom extractor that returned `None`, a client IP
/// with no peer address).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "config", derive(serde::Deserialize))]
#[cfg_attr(feature = "config", serde(rename_all = "snake_case"))]
pub enum MissingKey {
    /// Counted under one shared anonymous key (the default).
    #[default]
    Anonymous,
    /// The quota does not apply to the request.
    Allow,
    /// Refused with HTTP 400 / gRPC `INVALID_ARGUMENT`
    /// ([`RejectionKind::InvalidRequest`]).
    Reject,
}

type CostFn = dyn Fn(&RequestInfo<'_>) -> u32 + Send + Sync;

/// Builds a [`RateLimitLayer`]; every setting is checked by
/// [`build`](Self::build).
#[must_use]
pub struct RateLimitBuilder {
    name: Cow<'static, str>,
    quotas: Vec<Quota>,
    client_ip: ClientIp,
    missing_key: MissingKey,
    cost: Option<Arc<CostFn>>,
    max_keys: usize,
    idle_sweep: Option<Duration>,
    dry_run: bool,
    admitted_headers: bool,
    legacy_headers: bool,
    allow_keys: Vec<Key>,
    allow_cidrs: Vec<String>,
    wait: Option<Duration>,
    #[cfg(feature = "redis")]
    redis: Option<super::redis::RedisStore>,
}

impl fmt::Debug for RateLimitBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitBuilder")
            .field("name", &self.name)
            .field("quotas", &self.quotas)
            .field("max_keys", &self.max_keys)
            .finish_non_exhaustive()
    }
}

impl Default for RateLimitBuilder {
    fn default() -> Self {
        Self {
            name: Cow::Borrowed("rate_limit"),
            quotas: Vec::new(),
            client_ip: ClientIp::new(),
            missing_key: MissingKey::Anonymous,
            cost: None,
            max_keys: 100_000,
            idle_sweep: Some(Duration::from_secs(60)),
            dry_run: false,
            admitted_headers: false,
            legacy_headers: false,
            allow_keys: Vec::new(),
            allow_cidrs: Vec::new(),
            wait: None,
            #[cfg(feature = "redis")]
            redis: None,
        }
    }
}

impl RateLimitBuilder {
    /// The layer's name: the `name` label of its metrics and the `layer` of
    /// its refusals (default `rate_limit`).
    pub fn name(mut self, name: impl Into<Cow<'static, str>>) -> Self {
        self.name = name.into();
        self
    }

    /// Adds a quota. A request is admitted only when every quota admits it,
    /// and consumes from none otherwise.
    pub fn quota(mut self, quota: Quota) -> Self {
        self.quotas.push(quota);
        self
    }

    /// How client IPs are found: the peer address (the default), or the
    /// one forwarding header trusted proxies write (see [`ClientIp`]).
    /// [`build`](Self::build) refuses trusted proxies without a header and
    /// a header without trusted proxies.
    pub fn client_ip(mut self, client_ip: ClientIp) -> Self {
        self.client_ip = client_ip;
        self
    }

    /// What happens to requests with no key (default
    /// [`MissingKey::Anonymous`]).
    pub fn missing_key(mut self, missing_key: MissingKey) -> Self {
        self.missing_key = missing_key;
        self
    }

    /// The cost (weight) of a request, in quota units (default 1). A cost of
    /// 0 is free: the request is admitted without being counted.
    pub fn cost<F>(mut self, cost: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> u32 + Send + Sync + 'static,
    {
        self.cost = Some(Arc::new(cost));
        self
    }

    /// The most keys kept per keyed quota (default 100 000). When full, the
    /// most idle of a small sample of keys is evicted to make room.
    pub fn max_keys(mut self, max_keys: usize) -> Self {
        self.max_keys = max_keys;
        self
    }

    /// How often idle keys (whose bucket is full again) are evicted in the
    /// background; `None` turns the background task off (default 60s, at
    /// most 1h). The task is spawned on the tokio runtime current at
    /// [`build`](Self::build) (none is spawned outside a runtime; use
    /// [`RateLimitLayer::evict_idle`]).
    pub fn idle_sweep(mut self, every: Option<Duration>) -> Self {
        self.idle_sweep = every;
        self
    }

    /// Count and report what would be refused, refuse nothing.
    pub fn dry_run(mut self, dry_run: bool) -> Self {
        self.dry_run = dry_run;
        self
    }

    /// Also send `RateLimit-Policy` / `RateLimit` on admitted responses
    /// (refusals always carry them). Costs one small allocation per request.
    pub fn admitted_headers(mut self, on: bool) -> Self {
        self.admitted_headers = on;
        self
    }

    /// Also send `x-ratelimit-limit`, `x-ratelimit-remaining` and
    /// `x-ratelimit-reset`.
    pub fn legacy_headers(mut self, on: bool) -> Self {
        self.legacy_headers = on;
        self
    }

    /// Keys that are never limited (an internal API key, a health checker's
    /// tenant). Matched against every quota's key.
    pub fn allow_keys<I, K>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = K>,
        K: Into<Key>,
    {
        self.allow_keys.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Client networks that are never limited (CIDRs or addresses, checked
    /// against the resolved client IP before any
    /// [`ClientIp::ipv6_prefix`] masking: `2001:db8::1/128` admits that
    /// address only, not its whole /64).
    pub fn allow_cidrs<I, T>(mut self, cidrs: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.allow_cidrs.extend(cidrs.into_iter().map(Into::into));
        self
    }

    /// Waiting mode, for outbound (client-side) use: a request that would be
    /// refused waits up to `max_delay` for room instead, and is refused only
    /// if none comes in time (`max_delay` at most 10 minutes). Waiting
    /// requests hold a clone of the inner service.
    pub fn wait(mut self, max_delay: Duration) -> Self {
        self.wait = Some(max_delay);
        self
    }

    /// Keeps quota state in Redis, shared by every replica (feature
    /// `redis`; see [`RedisStore`](super::RedisStore)). Must be built inside
    /// a tokio runtime; waiting mode is not available with it.
    #[cfg(feature = "redis")]
    pub fn redis(mut self, store: super::redis::RedisStore) -> Self {
        self.redis = Some(store);
        self
    }

    /// Checks the settings and builds the layer.
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", "must not be empty"));
        }
        if self.quotas.is_empty() {
            return Err(ConfigError::new("quotas", "at least one quota is required"));
        }
        if self.quotas.len() > MAX_QUOTAS {
            return Err(ConfigError::new(
                "quotas",
                format!("at most {MAX_QUOTAS} quotas per layer"),
            ));
        }
        if self.max_keys == 0 {
            return Err(ConfigError::new("max_keys", "must be greater than 0"));
        }
        if self.idle_sweep.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new("idle_sweep", "must be greater than 0"));
        }
        if self.wait.is_some_and(|d| d.is_zero()) {
            return Err(ConfigError::new("wait", "must be greater than 0"));
        }
        if let Some(d) = self.idle_sweep {
            at_most("idle_sweep", d, HOUR)?;
        }
        if let Some(d) = self.wait {
            at_most("wait", d, 10 * MINUTE)?;
        }
        self.client_ip.validate()?;
        let allow_cidrs = parse_cidrs(&self.allow_cidrs, "allow_cidrs")?;
        crate::metrics_help::describe();
        let layer: Arc<str> = Arc::from(self.name.as_ref());
        let mut names: Vec<String> = Vec::with_capacity(self.quotas.len());
        let mut infos = Vec::with_capacity(self.quotas.len());
        let mut cells = Vec::with_capacity(self.quotas.len());
        #[cfg(feature = "redis")]
        let remote_store = self.redis.is_some();
        #[cfg(not(feature = "redis"))]
        let remote_store = false;
        for (i, q) in self.quotas.iter().enumerate() {
            let at = format!("quotas[{i}]");
            let gq = q.governor_quota().map_err(|e| e.at(&at))?;
            let qname = q.display_name().into_owned();
            if names.contains(&qname) {
                return Err(ConfigError::new(
                    "name",
                    format!("`{qname}` is already the name of another quota"),
                )
                .at(&at));
            }
            let labels = [("name", layer.to_string()), ("quota", qname.clone())];
            let keyed = (!q.key.is_global()).then(|| {
                (
                    self.max_keys,
                    TableMetrics {
                        keys: metrics::gauge!("rampart_rate_limit_keys", &labels),
                        evicted_idle: metrics::counter!(
                            "rampart_rate_limit_evictions_total",
                            &[
                                ("name", layer.to_string()),
                                ("quota", qname.clone()),
                                ("reason", "idle".to_owned()),
                            ]
                        ),
                        evicted_capacity: metrics::counter!(
                            "rampart_rate_limit_evictions_total",
                            &[
                                ("name", layer.to_string()),
                                ("quota", qname.clone()),
                                ("reason", "capacity".to_owned()),
                            ]
                        ),
                    },
                )
            });
            cells.push(QuotaCells::new(gq, keyed));
            let per_reason = |metric: &'static str| {
                RefusalReason::ALL.map(|r| {
                    if r == RefusalReason::StoreUnavailable && !remote_store {
                        // In process there is no store to be unavailable:
                        // no series that can only ever read 0.
                        return Counter::noop();
                    }
                    metrics::counter!(
                        metric,
                        &[
                            ("name", layer.to_string()),
                            ("quota", qname.clone()),
                            ("reason", r.as_str().to_owned()),
                        ]
                    )
                })
            };
            infos.push(QuotaInfo {
                name: Arc::from(qname.as_str()),
                exhausted: format!("rate limit quota `{qname}` exhausted"),
                key: q.key.clone(),
                refused: per_reason("rampart_rate_limit_refused_total"),
                dry_run: per_reason("rampart_rate_limit_dry_run_refusals_total"),
            });
            names.push(qname);
        }
        let headers = HeaderTemplate::new(
            &names
                .iter()
                .zip(&self.quotas)
                .map(|(n, q)| (n.clone(), q.rate))
                .collect::<Vec<_>>(),
            self.legacy_headers,
        );
        let hasher = Fingerprinter::new();
        let mut allow_keys: Vec<u64> = self
            .allow_keys
            .iter()
            .map(|k| fingerprint(&hasher, k.as_ref()))
            .collect();
        allow_keys.sort_unstable();
        allow_keys.dedup();
        let anonymous = fingerprint(&hasher, KeyRef::Bytes(b"\0tower-rampart anonymous\0"));
        let name_label = [("name", layer.to_string())];
        #[cfg(feature = "redis")]
        let redis = match &self.redis {
            None => None,
            Some(cfg) => {
                if self.wait.is_some() {
                    return Err(ConfigError::new(
                        "wait",
                        "waiting mode is not available with the redis store",
                    ));
                }
                let fallback = match cfg.failure {
                    super::redis::FailurePolicy::Fallback { share }
                        if share > 0.0 && share <= 1.0 =>
                    {
                        let mut cells = Vec::with_capacity(self.quotas.len());
                        for (i, q) in self.quotas.iter().enumerate() {
                            let gq = q
                                .governor_quota()
                                .map_err(|e| e.at(&format!("quotas[{i}]")))?;
                            let period = gq.replenish_interval().div_f64(share);
                            let burst = ((f64::from(q.burst_size()) * share).floor() as u32).max(1);
                            let scaled = governor::Quota::with_period(period)
                                .ok_or_else(|| {
                                    ConfigError::new("store.fallback_share", "too small")
                                })?
                                .allow_burst(NonZeroU32::new(burst).unwrap_or(NonZeroU32::MIN));
                            let keyed = (!q.key.is_global()).then(|| {
                                (
                                    self.max_keys,
                                    TableMetrics {
                                        keys: metrics::Gauge::noop(),
                                        evicted_idle: Counter::noop(),
                                        evicted_capacity: Counter::noop(),
                                    },
                                )
                            });
                            cells.push(QuotaCells::new(scaled, keyed));
                        }
                        Some(MemoryStore {
                            quotas: cells.into(),
                        })
                    }
                    _ => None,
                };
                Some(Arc::new(super::redis::RedisBackend::new(
                    cfg, &layer, &names, fallback,
                )?))
            }
        };
        let allow_ip = (!allow_cidrs.is_empty())
            .then(|| unmasked(&self.client_ip))
            .flatten();
        let shared = Arc::new(Shared {
            #[cfg(feature = "redis")]
            redis,
            name: Arc::clone(&layer),
            quotas: infos.into(),
            store: MemoryStore {
                quotas: cells.into(),
            },
            hasher,
            anonymous,
            client_ip: self.client_ip,
            missing_key: self.missing_key,
            cost: self.cost,
            dry_run: self.dry_run,
            admitted_headers: self.admitted_headers,
            headers,
            allow_keys: allow_keys.into(),
            allow_ip,
            allow_cidrs: allow_cidrs.into(),
            wait: self.wait,
            admitted: metrics::counter!("rampart_rate_limit_admitted_total", &name_label),
            allowlisted: metrics::counter!("rampart_rate_limit_allowlisted_total", &name_label),
        });
        if let Some(every) = self.idle_sweep {
            if shared.store.key_count_capable() || shared.has_fallback() {
                spawn_sweeper(&shared, every);
            }
        }
        Ok(RateLimitLayer {
            shared,
            _mode: PhantomData,
        })
    }
}

/// `client_ip` without IPv6 prefix masking, when it masks. Whether it masks
/// is seen from outside: the all-ones IPv6 peer resolves to itself only
/// unmasked (without forwarding headers, the peer is the client).
fn unmasked(client_ip: &ClientIp) -> Option<ClientIp> {
    let mut probe = http::Extensions::new();
    probe.insert(std::net::SocketAddr::from((
        std::net::Ipv6Addr::from(u128::MAX),
        1,
    )));
    let peer = IpAddr::from(std::net::Ipv6Addr::from(u128::MAX));
    let masks = client_ip.resolve(&http::HeaderMap::new(), &probe) != Some(peer);
    masks
        .then(|| client_ip.clone().ipv6_prefix(128).ok())
        .flatten()
}

fn spawn_sweeper(shared: &Arc<Shared>, every: Duration) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(shared);
    handle.spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            let Some(shared) = weak.upgrade() else {
                return;
            };
            shared.sweep();
        }
    });
}

/// Per-quota data the layer needs besides the store.
pub(crate) struct QuotaInfo {
    pub(crate) name: Arc<str>,
    /// The refusal detail, rendered once.
    exhausted: String,
    key: KeyExtractor,
    refused: [Counter; RefusalReason::ALL.len()],
    dry_run: [Counter; RefusalReason::ALL.len()],
}

/// The state every clone of the layer and its services shares.
pub(crate) struct Shared {
    #[cfg(feature = "redis")]
    pub(crate) redis: Option<Arc<super::redis::RedisBackend>>,
    pub(crate) name: Arc<str>,
    pub(crate) quotas: Box<[QuotaInfo]>,
    pub(crate) store: MemoryStore,
    hasher: Fingerprinter,
    anonymous: u64,
    client_ip: ClientIp,
    missing_key: MissingKey,
    cost: Option<Arc<CostFn>>,
    dry_run: bool,
    admitted_headers: bool,
    headers: HeaderTemplate,
    allow_keys: Box<[u64]>,
    allow_cidrs: Box<[IpNet]>,
    /// When the client IP is masked (an IPv6 prefix below 128): the same
    /// resolution unmasked, for the allow-list, which names addresses.
    allow_ip: Option<ClientIp>,
    pub(crate) wait: Option<Duration>,
    admitted: Counter,
    allowlisted: Counter,
}

impl Shared {
    fn has_fallback(&self) -> bool {
        #[cfg(feature = "redis")]
        if let Some(r) = &self.redis {
            return r.fallback.as_ref().is_some_and(|f| f.key_count_capable());
        }
        false
    }

    /// Sweeps the in-process tables (and the Redis fallback's).
    pub(crate) fn sweep(&self) -> usize {
        #[cfg(feature = "redis")]
        if let Some(f) = self.redis.as_ref().and_then(|r| r.fallback.as_ref()) {
            return self.store.sweep() + f.sweep();
        }
        self.store.sweep()
    }
}

impl MemoryStore {
    fn key_count_capable(&self) -> bool {
        self.quotas.iter().any(|q| q.table().is_some())
    }
}

/// One request's quota slots.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Slots {
    pub(crate) slots: [Slot; MAX_QUOTAS],
    pub(crate) len: usize,
    pub(crate) cost: Option<NonZeroU32>,
}

/// What the layer does with a request.
pub(crate) enum Decision {
    /// Call the inner service (with these headers on the response).
    Admit(Option<Box<Rendered>>),
    /// Answer this refusal (boxed: keeps the admitted path's values small).
    Refuse(Box<Rejection>),
    /// Waiting mode: quota `quota` has room again after `wait`; the
    /// request's slots, to retry with (boxed: off the happy path).
    Wait {
        wait: Duration,
        quota: usize,
        slots: Option<Box<Slots>>,
    },
    /// The Redis store is deciding (boxed future: off the in-process path).
    #[cfg(feature = "redis")]
    Deciding(super::redis::Deciding),
}

impl Shared {
    fn allowlisted(&self) -> Decision {
        self.allowlisted.increment(1);
        Decision::Admit(None)
    }

    /// Keys, cost and allow-lists, then the store's verdict.
    pub(crate) fn decide<B>(&self, req: &http::Request<B>) -> Decision {
        #[cfg(feature = "redis")]
        if let Some(redis) = &self.redis {
            return self.decide_remote(req, redis);
        }
        let mut slots = Slots::default();
        match self.decide_with(req, &mut slots) {
            Decision::Wait { wait, quota, .. } => Decision::Wait {
                wait,
                quota,
                slots: Some(Box::new(slots)),
            },
            other => other,
        }
    }

    /// The Redis path: keys, cost and allow-lists as in process, then a
    /// future that asks Redis.
    #[cfg(feature = "redis")]
    #[cold]
    fn decide_remote<B>(
        &self,
        req: &http::Request<B>,
        redis: &Arc<super::redis::RedisBackend>,
    ) -> Decision {
        let info = RequestInfo::new(req, &self.client_ip);
        let mut slots = Slots::default();
        if let Some(d) = self.prepare(&info, &mut slots) {
            return d;
        }
        let Some(cost) = slots.cost else {
            return Decision::Admit(None);
        };
        let mut keys = Vec::with_capacity(slots.len);
        let mut t_cap = Vec::with_capacity(slots.len);
        // A request costlier than a burst is refused whatever Redis says,
        // but still asked about (nothing is written), so its refusal
        // reports what remains, as in process.
        let mut too_costly = None;
        for (i, s) in slots.slots[..slots.len].iter().enumerate() {
            if !s.active {
                continue;
            }
            let q = self.store.quota(i);
            if cost.get() > q.burst && too_costly.is_none() {
                too_costly = Some(i);
            }
            let name = self.quotas[i]
                .key
                .with_key(&info, |k| redis.key_name(i, k))
                .unwrap_or_else(|| {
                    redis.key_name(i, KeyRef::Bytes(b"\0tower-rampart anonymous\0"))
                });
            keys.push(name);
            t_cap.push((q.t, q.tau.saturating_add(q.t)));
        }
        if keys.is_empty() {
            self.admitted.increment(1);
            return Decision::Admit(None);
        }
        Decision::Deciding(redis.acquire(slots, keys, t_cap, cost, too_costly))
    }

    /// Turns the Redis store's answer into a decision.
    #[cfg(feature = "redis")]
    pub(crate) fn finish_remote(
        &self,
        slots: &Slots,
        outcome: super::redis::RemoteOutcome,
    ) -> Decision {
        use super::redis::Path;
        let cost = slots.cost.unwrap_or(NonZeroU32::MIN);
        let first_active = || {
            slots.slots[..slots.len]
                .iter()
                .position(|s| s.active)
                .unwrap_or(0)
        };
        match (outcome.path, outcome.verdict) {
            // Never admissible, whatever the store's state: refused without
            // the live state when the store could not tell it.
            (Path::FailClosed | Path::FailOpen, Verdict::TooCostly { quota }) => self.refusal(
                &self.store,
                slots,
                quota,
                RefusalReason::TooCostly,
                None,
                cost,
                false,
            ),
            (Path::FailClosed, _) => {
                // Retry when the breaker guarding Redis lets a call through
                // again (at least 1s: the breaker may still be closed).
                let wait = self
                    .redis
                    .as_ref()
                    .and_then(|r| r.breaker().open_remaining())
                    .filter(|d| *d > Duration::from_secs(1))
                    .unwrap_or(Duration::from_secs(1));
                self.refusal(
                    &self.store,
                    slots,
                    first_active(),
                    RefusalReason::StoreUnavailable,
                    Some(wait),
                    cost,
                    false,
                )
            }
            (Path::FailOpen, _) => {
                self.admitted.increment(1);
                Decision::Admit(None)
            }
            (Path::Fallback, verdict) => {
                let store = self
                    .redis
                    .as_ref()
                    .and_then(|r| r.fallback.as_ref())
                    .unwrap_or(&self.store);
                self.finish(store, slots, verdict, false, cost)
            }
            (Path::Redis, verdict) => self.finish(&self.store, slots, verdict, false, cost),
        }
    }

    fn decide_with<B>(&self, req: &http::Request<B>, slots: &mut Slots) -> Decision {
        let info = RequestInfo::new(req, &self.client_ip);
        match self.prepare(&info, slots) {
            Some(d) => d,
            None => self.acquire(slots, true),
        }
    }

    /// Allow-lists, cost and keys; `None` when the store must decide.
    #[inline]
    fn prepare(&self, info: &RequestInfo<'_>, slots: &mut Slots) -> Option<Decision> {
        if !self.allow_cidrs.is_empty() {
            // The allow-list names addresses: match the client's own, not
            // the IPv6 network its quota key is masked to.
            let ip = match &self.allow_ip {
                None => info.client_ip(),
                Some(unmasked) => unmasked.resolve(info.headers, info.extensions),
            };
            if ip.is_some_and(|ip| self.cidr_allowed(ip)) {
                return Some(self.allowlisted());
            }
        }
        let cost = match &self.cost {
            None => NonZeroU32::MIN,
            Some(f) => match NonZeroU32::new(f(info)) {
                Some(c) => c,
                None => {
                    self.admitted.increment(1);
                    return Some(Decision::Admit(None));
                }
            },
        };
        slots.len = self.quotas.len();
        slots.cost = Some(cost);
        for (i, q) in self.quotas.iter().enumerate() {
            let slot = &mut slots.slots[i];
            if q.key.is_global() {
                slot.active = true;
                continue;
            }
            match q.key.fingerprint(info, &self.hasher) {
                Some(fp) => {
                    if !self.allow_keys.is_empty() && self.allow_keys.binary_search(&fp).is_ok() {
                        return Some(self.allowlisted());
                    }
                    slot.active = true;
                    slot.fp = fp;
                }
                None => match self.missing_key {
                    MissingKey::Anonymous => {
                        slot.active = true;
                        slot.fp = self.anonymous;
                    }
                    MissingKey::Allow => {}
                    MissingKey::Reject => {
                        let rejection =
                            Rejection::new(RejectionKind::InvalidRequest, Arc::clone(&self.name))
                                .with_detail(format!(
                                    "the request has no key for rate limit quota `{}`",
                                    q.name
                                ));
                        if let Some(d) = self.refused(i, RefusalReason::MissingKey, None, rejection)
                        {
                            return Some(d);
                        }
                    }
                },
            }
        }
        None
    }

    /// Every quota's state for `key` (global quotas: for everybody).
    fn peek(&self, key: &Key) -> Vec<QuotaState> {
        let fp = fingerprint(&self.hasher, key.as_ref());
        let mut slots = Slots {
            len: self.quotas.len(),
            ..Slots::default()
        };
        for (i, q) in self.quotas.iter().enumerate() {
            slots.slots[i].active = true;
            if !q.key.is_global() {
                slots.slots[i].fp = fp;
            }
        }
        self.store.measure(&mut slots.slots[..slots.len]);
        slots.slots[..slots.len]
            .iter()
            .zip(self.quotas.iter())
            .enumerate()
            .map(|(i, (s, info))| {
                let q = self.store.quota(i);
                let m = s.measured;
                let snap = q.snapshot(m.prev, m.now);
                QuotaState {
                    name: Arc::clone(&info.name),
                    limit: q.burst,
                    remaining: snap.remaining,
                    reset: snap.full,
                    window: snap.window,
                    retry_after: q.wait_for(m.prev, m.now, 1),
                }
            })
            .collect()
    }

    fn cidr_allowed(&self, ip: IpAddr) -> bool {
        self.allow_cidrs.iter().any(|n| n.contains(&ip))
    }

    /// Asks the store and turns its verdict into a decision. `may_wait`:
    /// waiting mode may answer [`Decision::Wait`].
    pub(crate) fn acquire(&self, slots: &mut Slots, may_wait: bool) -> Decision {
        let Some(cost) = slots.cost else {
            return Decision::Admit(None);
        };
        if !slots.slots[..slots.len].iter().any(|s| s.active) {
            self.admitted.increment(1);
            return Decision::Admit(None);
        }
        // "Now" on the limiter's time line is only needed for headers on an
        // admitted response; refusals read it from the quota's clock.
        let verdict =
            self.store
                .acquire(&mut slots.slots[..slots.len], cost, self.admitted_headers);
        self.finish(&self.store, slots, verdict, may_wait, cost)
    }

    /// A verdict of `store` as a decision.
    #[inline]
    fn finish(
        &self,
        store: &MemoryStore,
        slots: &Slots,
        verdict: Verdict,
        may_wait: bool,
        cost: NonZeroU32,
    ) -> Decision {
        match verdict {
            Verdict::Admitted => {
                self.admitted.increment(1);
                if self.admitted_headers {
                    let items = self.items(store, slots, false);
                    Decision::Admit(Some(Box::new(
                        self.headers
                            .render(&items[..self.active_count(slots)], None),
                    )))
                } else {
                    Decision::Admit(None)
                }
            }
            Verdict::Exhausted { quota, wait } => {
                if may_wait && !self.dry_run && self.wait.is_some_and(|max| wait <= max) {
                    return Decision::Wait {
                        wait,
                        quota,
                        slots: None,
                    };
                }
                self.refusal(
                    store,
                    slots,
                    quota,
                    RefusalReason::Exhausted,
                    Some(wait),
                    cost,
                    true,
                )
            }
            Verdict::TooCostly { quota } => self.refusal(
                store,
                slots,
                quota,
                RefusalReason::TooCostly,
                None,
                cost,
                true,
            ),
        }
    }

    /// The refusal of a request that waited as long as it may.
    pub(crate) fn refuse_exhausted(&self, slots: &Slots, quota: usize, wait: Duration) -> Decision {
        let cost = slots.cost.unwrap_or(NonZeroU32::MIN);
        self.refusal(
            &self.store,
            slots,
            quota,
            RefusalReason::Exhausted,
            Some(wait),
            cost,
            true,
        )
    }

    fn active_count(&self, slots: &Slots) -> usize {
        slots.slots[..slots.len].iter().filter(|s| s.active).count()
    }

    /// The `RateLimit` items of the active quotas. A refusal reports each
    /// quota as it stays (nothing was taken): what really remains, which
    /// may be above 0 when the request costs more than that (redis-cell's
    /// `CL.THROTTLE` does the same).
    fn items(&self, store: &MemoryStore, slots: &Slots, refused: bool) -> [Item; MAX_QUOTAS] {
        let mut items = [Item {
            quota: 0,
            remaining: 0,
            window: Duration::ZERO,
            full: Duration::ZERO,
        }; MAX_QUOTAS];
        let mut n = 0;
        for (i, s) in slots.slots[..slots.len].iter().enumerate() {
            if !s.active {
                continue;
            }
            let q = store.quota(i);
            let m = s.measured;
            let now = if m.now == 0 { q.now() } else { m.now };
            // A refusal reports the state as it stays (nothing was taken).
            let tat = if refused { m.prev } else { m.next };
            let snap = q.snapshot(tat, now);
            items[n] = Item {
                quota: i,
                remaining: snap.remaining,
                window: snap.window,
                full: snap.full,
            };
            n += 1;
        }
        items
    }

    /// Builds, counts and traces a refusal by `quota`. `live`: the slots
    /// hold the quotas' state (else only `RateLimit-Policy` is sent).
    #[allow(clippy::too_many_arguments)]
    fn refusal(
        &self,
        store: &MemoryStore,
        slots: &Slots,
        quota: usize,
        reason: RefusalReason,
        wait: Option<Duration>,
        cost: NonZeroU32,
        live: bool,
    ) -> Decision {
        let name = &self.quotas[quota].name;
        let detail = match reason {
            RefusalReason::TooCostly => format!(
                "the request costs {cost} but rate limit quota `{name}` allows at most {} at once; it can never be admitted",
                store.quota(quota).burst
            ),
            RefusalReason::StoreUnavailable => "the rate limit store is unavailable".to_owned(),
            _ => self.quotas[quota].exhausted.clone(),
        };
        // Whole milliseconds, rounded up: gRPC's `grpc-retry-pushback-ms`
        // (and the event's `retry_after_ms`) never tell a client to come
        // back before the quota has room (`Retry-After` rounds up anyway).
        let wait = wait.map(|w| {
            let ms = w.as_nanos().div_ceil(1_000_000);
            Duration::from_millis(u64::try_from(ms).unwrap_or(u64::MAX))
        });
        let mut rejection = Rejection::new(RejectionKind::RateLimited, Arc::clone(&self.name))
            .with_retry_after_opt(wait)
            .with_detail(detail);
        let rendered = if live {
            let items = self.items(store, slots, true);
            self.headers
                .render(&items[..self.active_count(slots)], Some(quota))
        } else {
            self.headers.render(&[], Some(quota))
        };
        let headers = rejection.headers_mut();
        headers.reserve(5);
        rendered.apply(headers);
        match self.refused(quota, reason, wait, rejection) {
            Some(d) => d,
            None => Decision::Admit(None),
        }
    }

    /// Counts and traces a refusal; `None` in dry-run mode (admit instead).
    fn refused(
        &self,
        quota: usize,
        reason: RefusalReason,
        wait: Option<Duration>,
        rejection: Rejection,
    ) -> Option<Decision> {
        let q = &self.quotas[quota];
        let retry_after_ms = wait.map_or(0, |w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX));
        tracing::debug!(
            target: "tower_rampart::rate_limit",
            name = %self.name,
            quota = %q.name,
            reason = reason.as_str(),
            retry_after_ms,
            dry_run = self.dry_run,
            "rate limit refused a request"
        );
        if self.dry_run {
            q.dry_run[reason.index()].increment(1);
            self.admitted.increment(1);
            None
        } else {
            q.refused[reason.index()].increment(1);
            Some(Decision::Refuse(Box::new(rejection)))
        }
    }
}

/// Applies the rate limit to a service (see the [module docs](super)).
///
/// Every clone, and every service it makes, shares one state.
pub struct RateLimitLayer<M = HttpMode> {
    pub(crate) shared: Arc<Shared>,
    _mode: PhantomData<fn() -> M>,
}

impl<M> Clone for RateLimitLayer<M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

impl<M> fmt::Debug for RateLimitLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimitLayer")
            .field("name", &self.shared.name)
            .field("quotas", &self.shared.quotas.len())
            .finish_non_exhaustive()
    }
}

impl RateLimitLayer {
    /// Starts a builder.
    pub fn builder() -> RateLimitBuilder {
        RateLimitBuilder::default()
    }

    /// Refusals become errors (a boxed [`Rejection`]) instead of responses.
    pub fn into_error_mode(self) -> RateLimitLayer<ErrorMode> {
        RateLimitLayer {
            shared: self.shared,
            _mode: PhantomData,
        }
    }
}

impl<M> RateLimitLayer<M> {
    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// Evicts keys whose bucket is full again (they behave exactly like
    /// absent keys) now, and returns how many went. The background sweep
    /// does this periodically.
    pub fn evict_idle(&self) -> usize {
        self.shared.sweep()
    }

    /// The circuit breaker guarding the Redis connection (feature `redis`;
    /// `None` for the in-process store): read its state for a readiness
    /// probe, or force it open to isolate Redis by hand.
    #[cfg(feature = "redis")]
    pub fn redis_breaker(&self) -> Option<crate::circuit_breaker::CircuitBreakerHandle> {
        self.shared.redis.as_ref().map(|r| r.breaker().clone())
    }

    /// How many keys are tracked, over all keyed quotas.
    pub fn key_count(&self) -> usize {
        self.shared.store.key_count()
    }

    /// Reads what each quota holds for `key` now, consuming nothing (an
    /// admin endpoint, a quota dashboard, a client asking "how much is
    /// left?"). One [`QuotaState`] per quota, in the builder's order: a
    /// keyed quota is read for `key` (the same key its extractor yields: a
    /// header's value as text, a client IP as [`Key::Ip`], masked to the
    /// [`ClientIp::ipv6_prefix`] network if one is set), a global quota
    /// for everybody.
    ///
    /// `None` when the state lives in Redis (feature `redis`): this reads
    /// process memory only.
    ///
    /// ```
    /// use std::time::Duration;
    /// use http::{Request, Response};
    /// use tower::{Service, ServiceExt, service_fn};
    /// use tower_rampart::rate_limit::{Key, KeyExtractor, Quota, RateLimitLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let layer = RateLimitLayer::builder()
    ///     .quota(Quota::per_minute(10).key(KeyExtractor::header("x-tenant")?).name("tenant"))
    ///     .build()?;
    /// let mut svc = tower::ServiceBuilder::new()
    ///     .layer(layer.clone())
    ///     .service(service_fn(|_req: Request<String>| async {
    ///         Ok::<_, std::convert::Infallible>(Response::new(String::new()))
    ///     }));
    /// for _ in 0..3 {
    ///     let req = Request::builder().header("x-tenant", "acme").body(String::new())?;
    ///     svc.ready().await?.call(req).await?;
    /// }
    ///
    /// let states = layer.peek(&Key::from("acme")).expect("in-process store");
    /// assert_eq!(states[0].name(), "tenant");
    /// assert_eq!(states[0].limit(), 10);
    /// assert_eq!(states[0].remaining(), 7);
    /// assert_eq!(states[0].retry_after(), Duration::ZERO); // one more fits now
    /// assert!(states[0].reset() <= Duration::from_secs(18)); // 3 units of 6s
    /// // Reading consumed nothing; another tenant is untouched.
    /// assert_eq!(layer.peek(&Key::from("acme")).unwrap()[0].remaining(), 7);
    /// assert_eq!(layer.peek(&Key::from("other")).unwrap()[0].remaining(), 10);
    /// # Ok(())
    /// # }
    /// ```
    pub fn peek(&self, key: &Key) -> Option<Vec<QuotaState>> {
        #[cfg(feature = "redis")]
        if self.shared.redis.is_some() {
            return None;
        }
        Some(self.shared.peek(key))
    }
}

/// What one quota holds for a key, read by [`RateLimitLayer::peek`]
/// without consuming anything: the numbers behind the `RateLimit` field's
/// `r` and `t` and `x-ratelimit-reset` (unrounded), and the `Retry-After` a
/// request of cost 1 would get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaState {
    name: Arc<str>,
    limit: u32,
    remaining: u32,
    reset: Duration,
    window: Duration,
    retry_after: Duration,
}

impl QuotaState {
    /// The quota's name (as in `RateLimit-Policy`).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The burst: the most units the quota holds.
    pub fn limit(&self) -> u32 {
        self.limit
    }

    /// Units that can be taken right now.
    pub fn remaining(&self) -> u32 {
        self.remaining
    }

    /// Time until the quota is full again (zero when it is).
    pub fn reset(&self) -> Duration {
        self.reset
    }

    /// The IETF effective window (`t`): within it no more than
    /// [`remaining`](Self::remaining) units can be taken; the time until
    /// one more is usable after taking them.
    pub fn window(&self) -> Duration {
        self.window
    }

    /// Time until a request of cost 1 would be admitted (zero when one
    /// would be now).
    pub fn retry_after(&self) -> Duration {
        self.retry_after
    }
}

impl<S, M> Layer<S> for RateLimitLayer<M> {
    type Service = RateLimit<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_shared(inner, Arc::clone(&self.shared))
    }
}
