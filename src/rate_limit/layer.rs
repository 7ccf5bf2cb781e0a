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
    /// against the resolved client IP).
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
        let layer: Arc<str> = Arc::from(self.name.as_ref());
        let mut names: Vec<String> = Vec::with_capacity(self.quotas.len());
        let mut infos = Vec::with_capacity(self.quotas.len());
        let mut cells = Vec::with_capacity(self.quotas.len());
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
    refused: [Counter; 3],
    dry_run: [Counter; 3],
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
        for (i, s) in slots.slots[..slots.len].iter().enumerate() {
            if !s.active {
                continue;
            }
            let q = self.store.quota(i);
            if cost.get() > q.burst {
                return self.refusal(&self.store, &slots, i, RefusalReason::TooCostly, None, cost);
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
        Decision::Deciding(redis.acquire(slots, keys, t_cap, cost))
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
        match outcome.path {
            Path::FailClosed => {
                let rejection = Rejection::new(RejectionKind::RateLimited, Arc::clone(&self.name))
                    .with_retry_after(Duration::from_secs(1))
                    .with_detail("the rate limit store is unavailable");
                Decision::Refuse(Box::new(rejection))
            }
            Path::FailOpen => {
                self.admitted.increment(1);
                Decision::Admit(None)
            }
            Path::Fallback => {
                let store = self
                    .redis
                    .as_ref()
                    .and_then(|r| r.fallback.as_ref())
                    .unwrap_or(&self.store);
                self.finish(store, slots, outcome.verdict, false, cost)
            }
            Path::Redis => self.finish(&self.store, slots, outcome.verdict, false, cost),
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
            if let Some(ip) = info.client_ip() {
                if self.cidr_allowed(ip) {
                    return Some(self.allowlisted());
                }
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
                    let items = self.items(store, slots, None);
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
                )
            }
            Verdict::TooCostly { quota } => {
                self.refusal(store, slots, quota, RefusalReason::TooCostly, None, cost)
            }
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
        )
    }

    fn active_count(&self, slots: &Slots) -> usize {
        slots.slots[..slots.len].iter().filter(|s| s.active).count()
    }

    /// The `RateLimit` items of the active quotas (refusing quota at 0).
    fn items(
        &self,
        store: &MemoryStore,
        slots: &Slots,
        refused: Option<usize>,
    ) -> [Item; MAX_QUOTAS] {
        let mut items = [Item {
            quota: 0,
            remaining: 0,
            reset: Duration::ZERO,
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
            let tat = if refused.is_some() { m.prev } else { m.next };
            let (remaining, reset) = q.snapshot(tat, now);
            items[n] = Item {
                quota: i,
                remaining: if refused == Some(i) { 0 } else { remaining },
                reset,
            };
            n += 1;
        }
        items
    }

    fn refusal(
        &self,
        store: &MemoryStore,
        slots: &Slots,
        quota: usize,
        reason: RefusalReason,
        wait: Option<Duration>,
        cost: NonZeroU32,
    ) -> Decision {
        let name = &self.quotas[quota].name;
        let detail = match reason {
            RefusalReason::TooCostly => format!(
                "the request costs {cost} but rate limit quota `{name}` allows at most {} at once; it can never be admitted",
                store.quota(quota).burst
            ),
            _ => self.quotas[quota].exhausted.clone(),
        };
        let mut rejection = Rejection::new(RejectionKind::RateLimited, Arc::clone(&self.name))
            .with_retry_after_opt(wait)
            .with_detail(detail);
        let rendered = if reason == RefusalReason::TooCostly {
            self.headers.render(&[], Some(quota))
        } else {
            let items = self.items(store, slots, Some(quota));
            self.headers
                .render(&items[..self.active_count(slots)], Some(quota))
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
}

impl<S, M> Layer<S> for RateLimitLayer<M> {
    type Service = RateLimit<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        RateLimit::from_shared(inner, Arc::clone(&self.shared))
    }
}
