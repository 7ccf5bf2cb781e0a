// Past ~500 lines: about 740 lines of code (the Lua script, the guard that
// trips on Redis failures and the failure policies belong together), the
// rest its unit tests.
//! A Redis-backed quota store (feature `redis`): one limit shared by every
//! replica.
//!
//! # When to use it
//!
//! The in-process store limits each replica on its own: with N replicas a
//! `100/s` quota lets `N * 100/s` through. When the limit must hold for the
//! whole fleet (a tenant's contract, a fragile downstream), keep the GCRA
//! state in Redis instead: [`RateLimitBuilder::redis`](super::RateLimitBuilder::redis)
//! or `"store": { "type": "redis", ... }` in the config.
//!
//! # What it costs
//!
//! One Redis round trip per decided request (admitted or refused): one
//! `EVALSHA` of a small Lua script that reads Redis's own `TIME` (replica
//! clocks never matter), applies GCRA to every quota of the request, writes
//! all of them or none, and sets a TTL so idle keys expire by themselves.
//! On loopback that is tens of microseconds instead of a few hundred
//! nanoseconds, plus one boxed future and a few small allocations (key
//! names) per request; see `benches/README.md`. Requests that need no
//! decision (allow-listed, free) never reach Redis; one too costly for a
//! burst is refused whatever Redis says but still read (nothing written),
//! so its refusal reports what remains. The in-process path is unchanged by
//! this module.
//!
//! # Keys
//!
//! `<prefix>:<layer>:<quota>:{<key>}` for a layer with one quota (keys spread
//! over a Redis Cluster), `<prefix>:{<layer>}:<quota>:<key>` for a layer with
//! several quotas (every key of the layer in one hash slot, so the one
//! script may touch all of them). A key holds the quota's theoretical
//! arrival time in nanoseconds since the Unix epoch, as text.
//!
//! # When Redis is slow or down
//!
//! Every call has a short timeout ([`RedisStore::timeout`], default 50ms),
//! and a circuit breaker (this crate's, in error mode) guards the connection:
//! after [`RedisStore::trip_after`] consecutive failures it opens and
//! requests stop waiting for Redis at all (microseconds, not the timeout)
//! until a trial call after [`RedisStore::open_duration`] succeeds. Meanwhile
//! the [`FailurePolicy`] decides: admit, refuse, or use an in-process limiter
//! with a share of each quota. The connection
//! ([`redis::aio::ConnectionManager`]: multiplexed, reconnects by itself)
//! needs no care. Every change of path is logged (`tower_rampart::rate_limit`,
//! WARN when leaving Redis, INFO when back) and counted in
//! `rampart_rate_limit_decisions_total{name, path}`.

// Over ~500 lines: the store's settings, its Lua script, the connection
// behind a breaker, the layer's side of a remote decision, and the test
// that runs the script against `gcra.rs` (about 150 lines) read as one
// unit, all behind the `redis` feature.

use std::future::Future;
use std::num::NonZeroU32;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::Duration;

use metrics::Counter;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tower::{BoxError, Service};

use super::engine::{ANONYMOUS, Decision, Shared, Slots};
use super::error::RefusalReason;
use super::gcra::Gcra;
use super::key::{KeyRef, RequestInfo};
use super::lease::{Leases, RedisMode};
use super::layer::RateLimitBuilder;
use super::memory::{Measured, MemoryStore, QuotaCells, Verdict};
use super::store::Store;
use crate::ConfigError;
use crate::circuit_breaker::{CircuitBreaker, CircuitBreakerHandle, CircuitBreakerLayer};
use crate::rejection::ErrorMode;
use crate::util::keyed_map::MapMetrics;

/// What the rate limit does when Redis cannot answer in time (down, slow,
/// or the breaker guarding it is open).
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum FailurePolicy {
    /// Admit every request (availability first; the default).
    FailOpen,
    /// Refuse every request: 429 with `Retry-After` until the breaker
    /// guarding Redis tries it again (at least 1s), counted and traced like
    /// every refusal (reason `store-unavailable`; dry-run mode only counts).
    FailClosed,
    /// Decide in this process with `share` (in `(0, 1]`) of each quota's
    /// rate and burst: with 4 replicas, `0.25` keeps the fleet near the
    /// global limit.
    Fallback {
        /// This replica's share of each quota.
        share: f64,
    },
}

/// Settings of the Redis store; give it to
/// [`RateLimitBuilder::redis`](super::RateLimitBuilder::redis).
///
/// Use it when a limit must hold for all replicas together. It costs one
/// Redis round trip per decided request (one `EVALSHA`), a boxed future and
/// the key names per request; keys are
/// `<prefix>:<layer>:<quota>:{<key>}` (one quota) or
/// `<prefix>:{<layer>}:<quota>:<key>` (several: one hash slot, so the one
/// atomic script may touch them all) and expire when their bucket is full
/// again. The layer must be built inside a tokio runtime (the connection,
/// a multiplexed `ConnectionManager`, is made lazily and reconnects by
/// itself). A circuit breaker named `<layer>-redis` guards it
/// ([`RateLimitLayer::store_health`](super::RateLimitLayer::store_health)).
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::rate_limit::{FailurePolicy, RedisStore};
///
/// let store = RedisStore::new("redis://127.0.0.1:6379/")
///     .prefix("myapp")
///     .timeout(Duration::from_millis(20))
///     .failure_policy(FailurePolicy::Fallback { share: 0.25 });
/// # drop(store);
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStore {
    pub(crate) url: String,
    pub(crate) prefix: String,
    pub(crate) timeout: Duration,
    pub(crate) failure: FailurePolicy,
    pub(crate) trip_after: u32,
    pub(crate) open_duration: Duration,
    pub(crate) mode: RedisMode,
}

impl RedisStore {
    /// A store on the Redis at `url` (`redis://host:port/db`,
    /// `rediss://...` is not enabled).
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: "rampart".into(),
            timeout: Duration::from_millis(50),
            failure: FailurePolicy::FailOpen,
            trip_after: 3,
            open_duration: Duration::from_secs(1),
            mode: RedisMode::Exact,
        }
    }

    /// Exact (the default: one round trip per decided request) or leased
    /// (slices of each quota decided locally, at most replicas x
    /// [`Lease::max`](super::Lease::max) per key beyond the limit; see
    /// [`RedisMode`](super::RedisMode)).
    pub fn mode(mut self, mode: RedisMode) -> Self {
        self.mode = mode;
        self
    }

    /// The first part of every key name (default `rampart`; no `{`, `}`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The most one call to Redis may take (default 50ms).
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// What happens when Redis cannot answer (default
    /// [`FailurePolicy::FailOpen`]).
    pub fn failure_policy(mut self, policy: FailurePolicy) -> Self {
        self.failure = policy;
        self
    }

    /// Consecutive failed calls that open the breaker (default 3).
    pub fn trip_after(mut self, failures: u32) -> Self {
        self.trip_after = failures;
        self
    }

    /// How long the open breaker keeps requests away from Redis before a
    /// trial call (default 1s).
    pub fn open_duration(mut self, d: Duration) -> Self {
        self.open_duration = d;
        self
    }

    /// Every problem with these settings for layer `layer`, each named by
    /// its key path (no connection made).
    pub(crate) fn problems(&self, layer: &str) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if self.prefix.is_empty() || self.prefix.contains(['{', '}']) {
            problems.push(ConfigError::new(
                "store.prefix",
                "must be non-empty, without `{` or `}`",
            ));
        }
        if layer.contains(['{', '}']) {
            problems.push(ConfigError::new(
                "name",
                "must not contain `{` or `}` with the redis store",
            ));
        }
        if self.timeout.is_zero() {
            problems.push(ConfigError::new(
                "store.timeout",
                crate::config_util::MUST_BE_POSITIVE,
            ));
        }
        problems.extend(
            crate::config_util::at_most("store.timeout", self.timeout, crate::config_util::MINUTE)
                .err(),
        );
        problems.extend(
            crate::config_util::at_most(
                "store.open_duration",
                self.open_duration,
                crate::config_util::HOUR,
            )
            .err(),
        );
        if self.trip_after == 0 {
            problems.push(ConfigError::new(
                "store.trip_after",
                crate::config_util::MUST_BE_POSITIVE,
            ));
        }
        if let FailurePolicy::Fallback { share } = self.failure {
            if !(share > 0.0 && share <= 1.0) {
                problems.push(ConfigError::new(
                    "store.fallback_share",
                    "must be in (0, 1]",
                ));
            }
        }
        if let RedisMode::Leased(lease) = &self.mode {
            problems.extend(lease.problems());
        }
        // Parsing only: no connection is made.
        if let Err(e) = redis::Client::open(self.url.as_str()) {
            problems.push(ConfigError::new("store.url", e.to_string()));
        }
        problems
    }
}

const SCRIPT: &str = r"
-- ARGV[1] = cost; then per key: t (ns per unit), cap (burst * t, ns).
-- Returns {refused (1-based, 0 = admitted), now, wait, prev1, next1, ...}:
-- a refusal names the quota that needs longest to admit the cost, and waits
-- for it, so a client obeying the wait is not refused by another quota.
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000000 + tonumber(time[2]) * 1000
local cost = tonumber(ARGV[1])
local out = {0, now, 0}
local nexts = {}
for i = 1, #KEYS do
  local t = tonumber(ARGV[2 * i])
  local cap = tonumber(ARGV[2 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  local base = tat
  if base < now then base = now end
  local new = base + cost * t
  local allow_at = new - cap
  nexts[i] = new
  out[2 + 2 * i] = tat
  out[3 + 2 * i] = new
  if allow_at > now and allow_at - now > out[3] then
    out[1] = i
    out[3] = allow_at - now
  end
end
if out[1] == 0 then
  for i = 1, #KEYS do
    local ms = math.ceil((nexts[i] - now) / 1000000)
    if ms < 1 then ms = 1 end
    redis.call('SET', KEYS[i], string.format('%.0f', nexts[i]), 'PX', ms)
  end
else
  for i = 1, #KEYS do out[3 + 2 * i] = out[2 + 2 * i] end
end
return out
";

/// The tower service the breaker wraps: one script call with a timeout.
#[derive(Clone)]
pub(crate) struct RedisCall {
    conn: ConnectionManager,
    timeout: Duration,
    script: Arc<redis::Script>,
    lease_script: Arc<redis::Script>,
}

/// One script invocation: key names and arguments.
pub(crate) struct Invocation {
    keys: Vec<Vec<u8>>,
    args: Vec<u64>,
    /// The lease script (leased mode), not the GCRA one.
    lease: bool,
}

impl Invocation {
    /// A call of the lease script ([`super::lease::SCRIPT`]).
    pub(crate) fn lease(keys: Vec<Vec<u8>>, args: Vec<u64>) -> Self {
        Self {
            keys,
            args,
            lease: true,
        }
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl Service<Invocation> for RedisCall {
    type Response = Vec<i64>;
    type Error = BoxError;
    type Future = BoxFuture<Result<Vec<i64>, BoxError>>;

    fn poll_ready(
        &mut self,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), BoxError>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, inv: Invocation) -> Self::Future {
        let mut conn = self.conn.clone();
        let script = Arc::clone(if inv.lease {
            &self.lease_script
        } else {
            &self.script
        });
        let timeout = self.timeout;
        Box::pin(async move {
            let mut call = script.prepare_invoke();
            for k in &inv.keys {
                call.key(k.as_slice());
            }
            for a in &inv.args {
                call.arg(*a);
            }
            // EVALSHA; on NOSCRIPT the client loads the script and retries.
            match tokio::time::timeout(timeout, call.invoke_async::<Vec<i64>>(&mut conn)).await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(e)) => Err(Box::new(e) as BoxError),
                Err(_) => Err("redis call timed out".into()),
            }
        })
    }
}

/// The path a decision took (the `path` label).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(crate) enum Path {
    Redis = 0,
    Fallback = 1,
    FailOpen = 2,
    FailClosed = 3,
    /// Leased mode: decided from this replica's slice, no round trip.
    Lease = 4,
    /// Leased mode: decided after a refresh of a short slice.
    LeaseRefresh = 5,
}

impl Path {
    const ALL: [Path; 6] = [
        Path::Redis,
        Path::Fallback,
        Path::FailOpen,
        Path::FailClosed,
        Path::Lease,
        Path::LeaseRefresh,
    ];

    /// Whether Redis (or a slice leased from it) decided.
    fn healthy(self) -> bool {
        matches!(self, Path::Redis | Path::Lease | Path::LeaseRefresh)
    }

    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Path::Redis => "redis",
            Path::Fallback => "fallback",
            Path::FailOpen => "fail_open",
            Path::FailClosed => "fail_closed",
            Path::Lease => "lease",
            Path::LeaseRefresh => "lease_refresh",
        }
    }
}

/// The Redis store deciding one request: owns its slots and yields them
/// back with the outcome.
pub(crate) type Deciding = BoxFuture<(Slots, RemoteOutcome)>;

/// What the store answered for one request.
pub(crate) struct RemoteOutcome {
    pub(crate) verdict: Verdict,
    pub(crate) path: Path,
}

/// The Redis store as the layer holds it.
pub(crate) struct RedisBackend {
    pub(crate) name: Arc<str>,
    service: CircuitBreaker<RedisCall, ErrorMode>,
    breaker: CircuitBreakerHandle,
    key_heads: Box<[Vec<u8>]>,
    hash_tag_key: bool,
    pub(crate) failure: FailurePolicy,
    pub(crate) fallback: Option<MemoryStore>,
    decisions: [Counter; Path::ALL.len()],
    last_path: AtomicU8,
    /// One Redis call's timeout.
    pub(crate) timeout: Duration,
    /// Leased mode's slices (`None`: exact mode).
    pub(crate) lease: Option<Leases>,
    /// Lease script calls (leased mode).
    pub(crate) lease_refreshes: Counter,
}

impl RedisBackend {
    /// Connects lazily (needs a tokio runtime) and builds the breaker.
    pub(crate) fn new(
        cfg: &RedisStore,
        layer: &Arc<str>,
        quota_names: &[String],
        fallback: Option<MemoryStore>,
        lease: Option<Leases>,
    ) -> Result<Self, ConfigError> {
        if let Some(problem) = cfg.problems(layer).into_iter().next() {
            return Err(problem);
        }
        if tokio::runtime::Handle::try_current().is_err() {
            return Err(ConfigError::new(
                "store",
                "the redis store must be built inside a tokio runtime",
            ));
        }
        let client = redis::Client::open(cfg.url.as_str())
            .map_err(|e| ConfigError::new("store.url", e.to_string()))?;
        let conn_cfg = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(cfg.timeout.max(Duration::from_millis(100))))
            .set_response_timeout(Some(cfg.timeout))
            .set_number_of_retries(1)
            .set_max_delay(Duration::from_millis(500));
        let conn = ConnectionManager::new_lazy_with_config(client, conn_cfg)
            .map_err(|e| ConfigError::new("store.url", e.to_string()))?;
        let breaker_layer = CircuitBreakerLayer::builder()
            .name(format!("{layer}-redis"))
            .consecutive_failures(cfg.trip_after)
            .count_window(20)
            .minimum_calls(20)
            .failure_rate_threshold(100.0)
            .open_duration(cfg.open_duration)
            .half_open_permits(1)
            .build()
            .map_err(|e| e.at("store"))?;
        let breaker = breaker_layer.handle();
        let service = tower::Layer::layer(
            &breaker_layer.into_error_mode(),
            RedisCall {
                conn,
                timeout: cfg.timeout,
                script: Arc::new(redis::Script::new(SCRIPT)),
                lease_script: Arc::new(redis::Script::new(super::lease::SCRIPT)),
            },
        );
        let multi = quota_names.len() > 1;
        let key_heads = quota_names
            .iter()
            .map(|q| {
                if multi {
                    format!("{}:{{{layer}}}:{q}:", cfg.prefix).into_bytes()
                } else {
                    format!("{}:{layer}:{q}:{{", cfg.prefix).into_bytes()
                }
            })
            .collect();
        let decisions = Path::ALL.map(|p| {
            metrics::counter!(
                "rampart_rate_limit_decisions_total",
                &[("name", layer.to_string()), ("path", p.as_str().to_owned())]
            )
        });
        Ok(Self {
            name: Arc::clone(layer),
            service,
            breaker,
            key_heads,
            hash_tag_key: !multi,
            failure: cfg.failure,
            fallback,
            decisions,
            last_path: AtomicU8::new(Path::Redis as u8),
            timeout: cfg.timeout,
            lease_refreshes: if lease.is_some() {
                metrics::counter!(
                    "rampart_rate_limit_lease_refreshes_total",
                    &[("name", layer.to_string())]
                )
            } else {
                Counter::noop()
            },
            lease,
        })
    }

    /// The breaker guarding the connection.
    pub(crate) fn breaker(&self) -> &CircuitBreakerHandle {
        &self.breaker
    }

    /// The Redis key name of quota `i` for `key`.
    pub(crate) fn key_name(&self, i: usize, key: KeyRef<'_>) -> Vec<u8> {
        use std::io::Write;
        let mut out = self.key_heads[i].clone();
        match key {
            KeyRef::Ip(ip) => {
                let _ = write!(out, "{ip}");
            }
            KeyRef::Number(n) => {
                let _ = write!(out, "{n}");
            }
            KeyRef::Bytes(b) => out.extend_from_slice(b),
        }
        if self.hash_tag_key {
            out.push(b'}');
        }
        out
    }

    /// Counts a decision taken from a leased slice (no round trip; a
    /// change of path is seen by the calls to Redis).
    #[inline]
    pub(crate) fn record_lease(&self) {
        self.decisions[Path::Lease as usize].increment(1);
    }

    /// Counts a decision's path and logs a change between Redis (or its
    /// leases) and a failure policy.
    pub(crate) fn record(&self, path: Path) {
        self.decisions[path as usize].increment(1);
        let prev = self.last_path.swap(path as u8, Ordering::Relaxed);
        let prev = Path::ALL[usize::from(prev)];
        if prev != path && !(prev.healthy() && path.healthy()) {
            let from = prev.as_str();
            if path.healthy() {
                tracing::info!(
                    target: "tower_rampart::rate_limit",
                    name = %self.name,
                    from,
                    to = path.as_str(),
                    "rate limit store recovered"
                );
            } else {
                tracing::warn!(
                    target: "tower_rampart::rate_limit",
                    name = %self.name,
                    from,
                    to = path.as_str(),
                    "rate limit store unavailable, using the failure policy"
                );
            }
        }
    }

    /// One script call through the breaker (an error at once when the
    /// breaker is open).
    pub(crate) fn run(
        &self,
        inv: Invocation,
    ) -> impl Future<Output = Result<Vec<i64>, BoxError>> + Send + 'static {
        // The breaker forwards readiness to `RedisCall`, which is always
        // ready: polled once, with a no-op waker, before the call.
        let mut svc = self.service.clone();
        let mut cx = std::task::Context::from_waker(std::task::Waker::noop());
        let call = match svc.poll_ready(&mut cx) {
            std::task::Poll::Ready(Ok(())) => {
                let call: BoxFuture<Result<Vec<i64>, BoxError>> = Box::pin(svc.call(inv));
                Some(call)
            }
            _ => None,
        };
        async move {
            match call {
                Some(call) => call.await,
                None => Err(BoxError::from("the redis call was not ready")),
            }
        }
    }

    /// Starts the decision for `slots` (keys: the Redis key of each active
    /// slot, in order). The future owns all it needs.
    pub(crate) fn acquire(
        self: &Arc<Self>,
        slots: Slots,
        keys: Vec<Vec<u8>>,
        t_cap: Vec<(u64, u64)>,
        cost: NonZeroU32,
        too_costly: Option<usize>,
    ) -> Deciding {
        let this = Arc::clone(self);
        let mut args = Vec::with_capacity(1 + 2 * t_cap.len());
        args.push(u64::from(cost.get()));
        for (t, cap) in &t_cap {
            args.push(*t);
            args.push(*cap);
        }
        let call = self.run(Invocation {
            keys,
            args,
            lease: false,
        });
        Box::pin(async move {
            let mut slots = slots;
            let result = call.await;
            match result {
                Ok(v) if v.len() >= 3 => {
                    let refused = v[0];
                    let now = u64::try_from(v[1]).unwrap_or(0);
                    let wait = u64::try_from(v[2]).unwrap_or(0);
                    let mut n = 0;
                    let mut refused_quota = None;
                    for (i, s) in slots.slots[..slots.len].iter_mut().enumerate() {
                        if !s.active {
                            continue;
                        }
                        n += 1;
                        let at = 1 + 2 * n;
                        s.measured = Measured {
                            prev: v.get(at).map_or(0, |x| u64::try_from(*x).unwrap_or(0)),
                            next: v.get(at + 1).map_or(0, |x| u64::try_from(*x).unwrap_or(0)),
                            now,
                        };
                        if i64::try_from(n).is_ok_and(|n| n == refused) {
                            refused_quota = Some(i);
                        }
                    }
                    this.record(Path::Redis);
                    let verdict = match (too_costly, refused_quota) {
                        (Some(quota), _) => Verdict::TooCostly { quota },
                        (None, None) => Verdict::Admitted,
                        (None, Some(quota)) => Verdict::Exhausted {
                            quota,
                            wait: Duration::from_nanos(wait),
                        },
                    };
                    (
                        slots,
                        RemoteOutcome {
                            verdict,
                            path: Path::Redis,
                        },
                    )
                }
                other => {
                    if let Err(e) = &other {
                        tracing::debug!(
                            target: "tower_rampart::rate_limit",
                            name = %this.name,
                            error = %e,
                            "rate limit store call failed"
                        );
                    }
                    let (path, verdict) = match (this.failure, &this.fallback) {
                        (FailurePolicy::Fallback { .. }, Some(store)) => (
                            Path::Fallback,
                            store.acquire(&mut slots.slots[..slots.len], cost),
                        ),
                        // The layer builds the refusal (its wait is the
                        // breaker's remaining open time).
                        (FailurePolicy::FailClosed, _) => (
                            Path::FailClosed,
                            too_costly
                                .map_or(Verdict::Admitted, |quota| Verdict::TooCostly { quota }),
                        ),
                        _ => (
                            Path::FailOpen,
                            too_costly
                                .map_or(Verdict::Admitted, |quota| Verdict::TooCostly { quota }),
                        ),
                    };
                    this.record(path);
                    (slots, RemoteOutcome { verdict, path })
                }
            }
        })
    }
}

/// The layer's side of the Redis store: the request's key names and
/// parameters in, the layer's decision out.
impl Shared {
    /// The Redis path: keys, cost and allow-lists as in process, then a
    /// future that asks Redis.
    #[cold]
    pub(crate) fn decide_remote<B>(
        &self,
        req: &http::Request<B>,
        redis: &Arc<RedisBackend>,
    ) -> Decision {
        if let Some(leases) = &redis.lease {
            return self.decide_leased(req, redis, leases);
        }
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
            let q = &self.params[i];
            if cost.get() > q.burst && too_costly.is_none() {
                too_costly = Some(i);
            }
            let name = self.quotas[i]
                .key
                .with_key(&info, |k| redis.key_name(i, k))
                .unwrap_or_else(|| redis.key_name(i, KeyRef::Bytes(ANONYMOUS)));
            keys.push(name);
            t_cap.push((q.t, q.cap()));
        }
        if keys.is_empty() {
            return self.admit();
        }
        Decision::Deciding(redis.acquire(slots, keys, t_cap, cost, too_costly))
    }

    /// Turns the Redis store's answer into a decision.
    pub(crate) fn finish_remote(&self, slots: &Slots, outcome: RemoteOutcome) -> Decision {
        let Store::Redis(redis) = &self.store else {
            unreachable!("only the redis store decides remotely");
        };
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
                &self.params,
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
                let wait = redis
                    .breaker()
                    .open_remaining()
                    .filter(|d| *d > Duration::from_secs(1))
                    .unwrap_or(Duration::from_secs(1));
                self.refusal(
                    &self.params,
                    slots,
                    first_active(),
                    RefusalReason::StoreUnavailable,
                    Some(wait),
                    cost,
                    false,
                )
            }
            (Path::FailOpen, _) => self.admit(),
            (Path::Fallback, verdict) => {
                let params = redis
                    .fallback
                    .as_ref()
                    .map_or(&self.params[..], MemoryStore::params);
                self.finish(params, slots, verdict, false, cost)
            }
            (Path::Redis | Path::Lease | Path::LeaseRefresh, verdict) => {
                self.finish(&self.params, slots, verdict, false, cost)
            }
        }
    }
}

impl Store {
    /// The Redis store of a checked builder, with its in-process fallback
    /// (scaled to the replica's share) when the policy asks for one.
    pub(crate) fn redis(
        b: &RateLimitBuilder,
        layer: &Arc<str>,
        names: &[String],
        params: &[Gcra],
    ) -> Result<Self, ConfigError> {
        let Some(cfg) = &b.redis else {
            unreachable!("called with a redis store");
        };
        let fallback = match cfg.failure {
            FailurePolicy::Fallback { share } if share > 0.0 && share <= 1.0 => {
                let quotas = b
                    .quotas
                    .iter()
                    .zip(params)
                    .map(|(q, p)| {
                        // `as` saturates: a tiny share makes a very slow
                        // quota, never an overflow.
                        let t = (p.t as f64 / share) as u64;
                        let burst = ((f64::from(p.burst) * share).floor() as u32).max(1);
                        let keyed = (!q.key.is_global()).then(|| (b.max_keys, MapMetrics::noop()));
                        QuotaCells::new(Gcra::new(t, burst), keyed)
                    })
                    .collect();
                Some(MemoryStore::new(quotas))
            }
            _ => None,
        };
        let lease = match &cfg.mode {
            RedisMode::Exact => None,
            RedisMode::Leased(lease) => Some(Leases::new(
                lease,
                b.quotas
                    .iter()
                    .zip(params)
                    .zip(names)
                    .map(|((q, p), name)| {
                        let keyed = (!q.key.is_global())
                            .then(|| (b.max_keys, super::store::key_metrics(layer, name)));
                        (*p, keyed)
                    })
                    .collect(),
            )),
        };
        Ok(Store::Redis(Arc::new(RedisBackend::new(
            cfg, layer, names, fallback, lease,
        )?)))
    }
}

#[cfg(test)]
mod tests {
    //! The Lua script against [`gcra::step_all`]: the same states through
    //! both, every answer compared. Needs a `redis-server` binary (skipped,
    //! saying so, without one; failing under CI), like
    //! `tests/rate_limit_redis.rs`.

    use super::super::gcra::{self, Gcra, Outcome};
    use super::SCRIPT;

    /// A throwaway `redis-server` on a free loopback port.
    struct Server(std::process::Child, u16);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    fn server() -> Option<Server> {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "redis-server".to_owned());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .ok()?
            .local_addr()
            .ok()?
            .port();
        let child = std::process::Command::new(&bin)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn();
        let Ok(child) = child else {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server not found ({bin})"
            );
            eprintln!("SKIPPED: redis-server not found ({bin})");
            return None;
        };
        let server = Server(child, port);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        Some(server)
    }

    /// xorshift64: a fixed, reproducible sequence.
    fn next(state: &mut u64) -> u64 {
        *state ^= *state << 13;
        *state ^= *state >> 7;
        *state ^= *state << 17;
        *state
    }

    // Every duration is a multiple of 1024 ns: the script computes in Lua
    // numbers (doubles), exact for such values at today's epoch
    // nanoseconds (below 2^61, spacing 256), so answers must match exactly.
    const UNIT: u64 = 1024;

    #[tokio::test(flavor = "current_thread")]
    async fn lua_script_matches_the_rust_step_function() {
        let Some(srv) = server() else { return };
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", srv.1)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let script = redis::Script::new(SCRIPT);
        let mut rng = 0x9E37_79B9_7F4A_7C15u64;
        let (mut admitted, mut refused) = (0, 0);
        for case in 0..300 {
            let n = 1 + (next(&mut rng) % 3) as usize;
            let quotas: Vec<Gcra> = (0..n)
                .map(|_| {
                    let t = UNIT * [1, 977, 976_563][(next(&mut rng) % 3) as usize];
                    Gcra::new(t, 1 + (next(&mut rng) % 5) as u32)
                })
                .collect();
            let min_burst = quotas.iter().map(|q| q.burst).min().unwrap();
            let cost = 1 + (next(&mut rng) % u64::from(min_burst)) as u32;
            let (sec, usec): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
            let base = (sec * 1_000_000_000 + usec * 1000) / UNIT * UNIT;
            let keys: Vec<String> = (0..n).map(|i| format!("{{x}}:{case}:{i}")).collect();
            let mut invoke = script.prepare_invoke();
            invoke.arg(cost);
            for (q, key) in quotas.iter().zip(&keys) {
                // Absent, in the past, or up to two bursts ahead of now.
                let r = next(&mut rng) % 4;
                if r > 0 {
                    let ahead = (next(&mut rng) % (2 * q.cap() / UNIT + 1)) * UNIT;
                    let tat = if r == 1 { base - ahead } else { base + ahead };
                    let _: () = redis::cmd("SET")
                        .arg(key)
                        .arg(tat)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                }
                invoke.key(key).arg(q.t).arg(q.cap());
            }
            let out: Vec<i64> = invoke.invoke_async(&mut conn).await.unwrap();
            let now = out[1] as u64;
            let tats: Vec<u64> = (0..n).map(|i| out[3 + 2 * i] as u64).collect();
            let mut nexts = vec![0; n];
            let rust = gcra::step_all(&quotas, &tats, &mut nexts, now, cost);
            let lua_nexts: Vec<u64> = (0..n).map(|i| out[4 + 2 * i] as u64).collect();
            let ctx = format!("case {case}: {quotas:?} cost {cost} tats {tats:?} now {now}");
            match rust {
                Outcome::Admit => {
                    admitted += 1;
                    assert_eq!(out[0], 0, "{ctx}");
                    assert_eq!(lua_nexts, nexts, "{ctx}");
                    for (key, next) in keys.iter().zip(&nexts) {
                        // Written as returned (a key whose bucket is full
                        // again within its 1ms TTL may already be gone).
                        let stored: Option<u64> = redis::cmd("GET")
                            .arg(key)
                            .query_async(&mut conn)
                            .await
                            .unwrap();
                        assert!(stored.is_none_or(|v| v == *next), "{ctx}");
                    }
                }
                Outcome::Refuse { quota, wait } => {
                    refused += 1;
                    assert_eq!(out[0], quota as i64 + 1, "{ctx}");
                    assert_eq!(out[2] as u64, wait, "{ctx}");
                    // Nothing written: the TATs are reported unchanged.
                    assert_eq!(lua_nexts, tats, "{ctx}");
                }
                Outcome::TooCostly { .. } => unreachable!("cost is within every burst"),
            }
        }
        // Both answers were exercised.
        assert!(
            admitted > 50 && refused > 50,
            "{admitted} admitted, {refused} refused"
        );
    }
}
