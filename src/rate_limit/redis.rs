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
//! nanoseconds, plus one boxed future and the command's buffer per
//! request (each key is extracted once and its Redis name written straight
//! into the `EVALSHA`); see `benches/README.md`. Requests that need no
//! decision (allow-listed, free) never reach Redis; one too costly for a
//! burst is refused whatever Redis says but still read (nothing written),
//! so its refusal reports what remains. The in-process path is unchanged by
//! this module.
//!
//! Leased mode ([`RedisMode::Leased`](super::RedisMode::Leased)) decides
//! most requests from a slice each replica leases from Redis, with no round
//! trip, at the price of a bounded over-admission (replicas x the max lease
//! size per key); its design is in `lease.rs`.
//!
//! # Keys
//!
//! `<prefix>:<layer>:<quota>:{<key>}` for a layer with one quota (keys spread
//! over a Redis Cluster), `<prefix>:{<layer>}:<quota>:<key>` for a layer with
//! several quotas (every key of the layer in one hash slot, so the one
//! script may touch all of them). A key holds the quota's theoretical
//! arrival time in nanoseconds since the Unix epoch, as text.
//!
//! # TLS (feature `redis-tls`)
//!
//! `rediss://` URLs connect through rustls (with the `ring` provider,
//! installed as the process default when none is). `RedisTls` names a
//! private CA and a client certificate for mutual TLS
//! (`store.tls.ca_file`, `client_cert_file`, `client_key_file` in the
//! config). A failed handshake is a failed call: the breaker and the
//! failure policy treat it like Redis being down.
//!
//! # Redis Cluster
//!
//! [`RedisStore::cluster`] (`store.cluster` in the config) talks to a
//! cluster through the `redis` crate's async cluster client, which keeps
//! the slot map, follows `MOVED`/`ASK` and finds a promoted replica after a
//! failover. The keys' hash tags (above) keep each decision's keys in one
//! slot, so the script runs atomically on one node, in one round trip. A
//! layer with several quotas puts all its keys in one slot, so one master
//! carries it. While a master is down its slots' decisions follow the
//! failure policy; the promoted replica has the state replicated before the
//! crash (asynchronous replication: the last writes may be lost).
//!
//! # When Redis is slow or down
//!
//! Every call has a short timeout ([`RedisStore::timeout`], default 50ms),
//! and a circuit breaker (this crate's, in error mode) guards the connection:
//! after [`RedisStore::trip_after`] consecutive failures it opens and
//! requests stop waiting for Redis at all (microseconds, not the timeout)
//! until a trial call after [`RedisStore::open_duration`] succeeds. Meanwhile
//! the [`FailurePolicy`] decides: admit, refuse, or use an in-process limiter
//! with a share of each quota. The connection (a multiplexed
//! [`redis::aio::ConnectionManager`], or the cluster client; both
//! reconnect by themselves) needs no care. Every change of path is logged (`tower_rampart::rate_limit`,
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
use redis::cluster::{ClusterClient, ClusterClientBuilder};
use redis::cluster_async::ClusterConnection;
use tower::BoxError;

use super::engine::{Decision, Shared, Slots};
use super::error::RefusalReason;
use super::gcra::Gcra;
use super::key::{KeyRef, RequestInfo};
use super::layer::RateLimitBuilder;
use super::lease::{Leases, RedisMode};
use super::memory::{Measured, MemoryStore, QuotaCells, Verdict};
use super::store::Store;
use crate::ConfigError;
use crate::circuit_breaker::{self, Breaker, CircuitBreakerHandle, CircuitBreakerLayer, Permit};
use crate::classify::Outcome;
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

/// Where the store's Redis is: one server, or a Redis Cluster.
#[derive(Debug, Clone)]
pub(crate) enum Target {
    /// One server (`redis://` or `rediss://`).
    Single(String),
    /// A Redis Cluster, through these seed nodes.
    Cluster(Vec<String>),
}

/// Settings of the Redis store; give it to
/// [`RateLimitBuilder::redis`](super::RateLimitBuilder::redis).
///
/// Use it when a limit must hold for all replicas together. It costs one
/// Redis round trip per decided request (one `EVALSHA`) and one boxed
/// future per request; keys are
/// `<prefix>:<layer>:<quota>:{<key>}` (one quota) or
/// `<prefix>:{<layer>}:<quota>:<key>` (several: one hash slot, so the one
/// atomic script may touch them all) and expire when their bucket is full
/// again. The layer must be built inside a tokio runtime (the connection,
/// a multiplexed `ConnectionManager` or the cluster client, is made lazily
/// and reconnects by itself). A circuit breaker named `<layer>-redis`
/// guards it
/// ([`RateLimitLayer::store_health`](super::RateLimitLayer::store_health)).
///
/// One server, plain text or TLS (`rediss://`, feature `redis-tls`, see
/// `RedisStore::tls`), or a Redis Cluster ([`RedisStore::cluster`]):
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::rate_limit::{FailurePolicy, RedisStore};
///
/// let store = RedisStore::new("redis://127.0.0.1:6379/")
///     .prefix("myapp")
///     .timeout(Duration::from_millis(20))
///     .failure_policy(FailurePolicy::Fallback { share: 0.25 });
/// let cluster = RedisStore::cluster(["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"]);
/// # drop((store, cluster));
/// ```
#[derive(Debug, Clone)]
#[must_use]
pub struct RedisStore {
    pub(crate) target: Target,
    #[cfg(feature = "redis-tls")]
    pub(crate) tls: Option<RedisTls>,
    pub(crate) prefix: String,
    pub(crate) timeout: Duration,
    pub(crate) failure: FailurePolicy,
    pub(crate) trip_after: u32,
    pub(crate) open_duration: Duration,
    pub(crate) mode: RedisMode,
}

impl RedisStore {
    /// A store on the Redis at `url`: `redis://[user:password@]host:port/db`,
    /// or `rediss://...` for TLS (feature `redis-tls`; the system's roots
    /// unless [`tls`](Self::tls) names a CA).
    pub fn new(url: impl Into<String>) -> Self {
        Self::with_target(Target::Single(url.into()))
    }

    /// A store on the Redis Cluster reached through `nodes` (seed URLs,
    /// `redis://host:port` or all `rediss://`; the client discovers the
    /// other nodes, follows `MOVED`/`ASK` redirections and a failover by
    /// itself). The keys' hash tags keep each decision's keys in one slot,
    /// so the one script still runs atomically on one node.
    pub fn cluster<I>(nodes: I) -> Self
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self::with_target(Target::Cluster(nodes.into_iter().map(Into::into).collect()))
    }

    fn with_target(target: Target) -> Self {
        Self {
            target,
            #[cfg(feature = "redis-tls")]
            tls: None,
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

    /// TLS settings for `rediss://` URLs (feature `redis-tls`): a custom
    /// CA instead of the system's roots, a client certificate for mutual
    /// TLS.
    ///
    /// ```no_run
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use tower_rampart::rate_limit::{RedisStore, RedisTls};
    ///
    /// let store = RedisStore::new("rediss://redis.internal:6380/").tls(
    ///     RedisTls::new()
    ///         .ca_pem(std::fs::read("/etc/redis-tls/ca.pem")?)
    ///         .client_cert_pem(
    ///             std::fs::read("/etc/redis-tls/client.pem")?,
    ///             std::fs::read("/etc/redis-tls/client.key")?,
    ///         ),
    /// );
    /// # drop(store);
    /// # Ok(())
    /// # }
    /// ```
    #[cfg(feature = "redis-tls")]
    pub fn tls(mut self, tls: RedisTls) -> Self {
        self.tls = Some(tls);
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
        #[cfg(feature = "redis-tls")]
        if let Some(tls) = &self.tls {
            let pem = tls.problems();
            if !pem.is_empty() {
                problems.extend(pem);
                return problems;
            }
        }
        // Parsing only: no connection is made.
        problems.extend(RedisConnection::check(self).err());
        problems
    }
}

/// TLS settings of the Redis store (feature `redis-tls`), for `rediss://`
/// URLs: whom to trust and who this client is. Certificates and keys are
/// PEM text; the config file names PEM files instead (`store.tls.ca_file`,
/// `store.tls.client_cert_file`, `store.tls.client_key_file`).
///
/// Without a CA the system's roots are trusted. The connection uses rustls
/// with the process's default `CryptoProvider`; when none is installed the
/// store installs `ring`'s.
#[cfg(feature = "redis-tls")]
#[derive(Clone, Default)]
#[must_use]
pub struct RedisTls {
    pub(crate) ca: Option<Vec<u8>>,
    pub(crate) client: Option<(Vec<u8>, Vec<u8>)>,
}

#[cfg(feature = "redis-tls")]
impl RedisTls {
    /// The system's roots, no client certificate.
    pub fn new() -> Self {
        Self::default()
    }

    /// Trust only the CA certificate(s) in `pem` (a private CA).
    pub fn ca_pem(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.ca = Some(pem.into());
        self
    }

    /// Present this certificate chain and private key (PEM; mutual TLS,
    /// `tls-auth-clients yes` on the server).
    pub fn client_cert_pem(mut self, cert: impl Into<Vec<u8>>, key: impl Into<Vec<u8>>) -> Self {
        self.client = Some((cert.into(), key.into()));
        self
    }

    /// The PEM text is well formed: each problem named by its config key.
    fn problems(&self) -> Vec<ConfigError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let certs = |field: &'static str, pem: &[u8]| -> Option<ConfigError> {
            let mut n = 0;
            for cert in CertificateDer::pem_slice_iter(pem) {
                if let Err(e) = cert {
                    return Some(ConfigError::new(
                        field,
                        format!("not a PEM certificate: {e}"),
                    ));
                }
                n += 1;
            }
            (n == 0).then(|| ConfigError::new(field, "holds no PEM certificate"))
        };
        let mut problems = Vec::new();
        if let Some(ca) = &self.ca {
            problems.extend(certs("store.tls.ca_file", ca));
        }
        if let Some((cert, key)) = &self.client {
            problems.extend(certs("store.tls.client_cert_file", cert));
            if let Err(e) = PrivateKeyDer::from_pem_slice(key) {
                problems.push(ConfigError::new(
                    "store.tls.client_key_file",
                    format!("not a PEM private key: {e}"),
                ));
            }
        }
        problems
    }

    fn certificates(&self) -> redis::TlsCertificates {
        redis::TlsCertificates {
            client_tls: self
                .client
                .as_ref()
                .map(|(cert, key)| redis::ClientTlsConfig {
                    client_cert: cert.clone(),
                    client_key: key.clone(),
                }),
            root_cert: self.ca.clone(),
        }
    }
}

#[cfg(feature = "redis-tls")]
impl std::fmt::Debug for RedisTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("RedisTls")
            .field("ca", &self.ca.is_some())
            .field("client_cert", &self.client.is_some())
            .finish()
    }
}

/// The connection the store talks through: one server (plain text or
/// TLS, a multiplexed [`ConnectionManager`] that reconnects by itself) or
/// a Redis Cluster (the `redis` crate's async cluster client: slot map,
/// `MOVED`/`ASK`, failover). Cheap to clone: clones share the connection.
///
/// Everything that talks to Redis goes through [`run`](Self::run), so a
/// new kind of connection changes nothing above it.
#[derive(Clone)]
pub(crate) enum RedisConnection {
    /// One server.
    Single(ConnectionManager),
    /// A Redis Cluster, connected on first use.
    Cluster(Arc<LazyCluster>),
}

/// The cluster client and its connection, made on the first call (the
/// layer is built synchronously; the cluster client connects only
/// asynchronously). A failed first connection is tried again by the next
/// call.
pub(crate) struct LazyCluster {
    client: ClusterClient,
    conn: tokio::sync::OnceCell<ClusterConnection>,
}

impl RedisConnection {
    /// Parses the settings' URLs and TLS material into clients, without
    /// connecting.
    fn clients(cfg: &RedisStore) -> Result<Clients, ConfigError> {
        let url_field = match cfg.target {
            Target::Single(_) => "store.url",
            Target::Cluster(_) => "store.cluster",
        };
        #[cfg(feature = "redis-tls")]
        if let Some(tls) = &cfg.tls {
            if let Some(problem) = tls.problems().into_iter().next() {
                return Err(problem);
            }
            let plain = match &cfg.target {
                Target::Single(url) => !url.starts_with("rediss://"),
                Target::Cluster(nodes) => nodes.iter().any(|u| !u.starts_with("rediss://")),
            };
            if plain {
                return Err(ConfigError::new(
                    url_field,
                    "TLS settings need `rediss://` URLs",
                ));
            }
        }
        let err = |e: redis::RedisError| ConfigError::new(url_field, e.to_string());
        match &cfg.target {
            Target::Single(url) => {
                #[cfg(feature = "redis-tls")]
                if let Some(tls) = &cfg.tls {
                    return redis::Client::build_with_tls(url.as_str(), tls.certificates())
                        .map(Clients::Single)
                        .map_err(err);
                }
                redis::Client::open(url.as_str())
                    .map(Clients::Single)
                    .map_err(err)
            }
            Target::Cluster(nodes) => {
                if nodes.is_empty() {
                    return Err(ConfigError::new(url_field, "needs at least one seed node"));
                }
                for (i, node) in nodes.iter().enumerate() {
                    if let Err(e) = redis::Client::open(node.as_str()) {
                        return Err(ConfigError::new(format!("{url_field}[{i}]"), e.to_string()));
                    }
                }
                let b = ClusterClientBuilder::new(nodes.iter().map(String::as_str))
                    // A redirection (`MOVED`, `ASK`) or a refreshed slot map
                    // is followed within the call's timeout; past it the
                    // breaker and the failure policy take over.
                    .retries(2)
                    .min_retry_wait(2)
                    .max_retry_wait(cfg.timeout.as_millis().max(10) as u64)
                    .connection_timeout(cfg.timeout.max(Duration::from_millis(100)))
                    .response_timeout(cfg.timeout);
                #[cfg(feature = "redis-tls")]
                let b = match &cfg.tls {
                    Some(tls) => b.certs(tls.certificates()),
                    None => b,
                };
                b.build().map(Clients::Cluster).map_err(err)
            }
        }
    }

    /// Whether [`open`](Self::open) would accept these settings (no
    /// connection made).
    fn check(cfg: &RedisStore) -> Result<(), ConfigError> {
        Self::clients(cfg).map(drop)
    }

    /// The connection for `cfg`, made lazily (inside a tokio runtime).
    pub(crate) fn open(cfg: &RedisStore) -> Result<Self, ConfigError> {
        let clients = Self::clients(cfg)?;
        #[cfg(feature = "redis-tls")]
        {
            let tls = match &cfg.target {
                Target::Single(url) => url.starts_with("rediss://"),
                Target::Cluster(nodes) => nodes.iter().any(|u| u.starts_with("rediss://")),
            };
            if tls && rustls::crypto::CryptoProvider::get_default().is_none() {
                // Lost a race with another installer: theirs is used.
                let _ = rustls::crypto::ring::default_provider().install_default();
            }
        }
        match clients {
            Clients::Single(client) => {
                let conn_cfg = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(cfg.timeout.max(Duration::from_millis(100))))
                    .set_response_timeout(Some(cfg.timeout))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_millis(500));
                ConnectionManager::new_lazy_with_config(client, conn_cfg)
                    .map(RedisConnection::Single)
                    .map_err(|e| ConfigError::new("store.url", e.to_string()))
            }
            Clients::Cluster(client) => Ok(RedisConnection::Cluster(Arc::new(LazyCluster {
                client,
                conn: tokio::sync::OnceCell::new(),
            }))),
        }
    }

    /// Runs `cmd` in one round trip (on a cluster: on the node serving its
    /// key's slot). An `EVALSHA` of `script` that finds the script missing
    /// (`NOSCRIPT`: a new or restarted server, a failed-over replica)
    /// loads it and runs again. No timeout here: the caller bounds the
    /// whole call.
    pub(crate) async fn run<T: redis::FromRedisValue>(
        &self,
        cmd: &redis::Cmd,
        script: Option<&redis::Script>,
    ) -> redis::RedisResult<T> {
        match self {
            RedisConnection::Single(conn) => run_on(&mut conn.clone(), cmd, script).await,
            RedisConnection::Cluster(lazy) => {
                let conn = lazy
                    .conn
                    .get_or_try_init(|| lazy.client.get_async_connection())
                    .await?;
                run_on(&mut conn.clone(), cmd, script).await
            }
        }
    }
}

/// What the settings parse into.
enum Clients {
    Single(redis::Client),
    Cluster(ClusterClient),
}

async fn run_on<C, T>(
    conn: &mut C,
    cmd: &redis::Cmd,
    script: Option<&redis::Script>,
) -> redis::RedisResult<T>
where
    C: redis::aio::ConnectionLike,
    T: redis::FromRedisValue,
{
    match cmd.query_async(conn).await {
        Err(e)
            if script.is_some()
                && e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::NoScript) =>
        {
            if let Some(script) = script {
                script.load_async(conn).await?;
            }
            cmd.query_async(conn).await
        }
        other => other,
    }
}

/// An `EVALSHA` of `script` with room for `keys` keys and `args`
/// arguments, key names and arguments to be appended.
pub(crate) fn evalsha(
    script: &redis::Script,
    keys: usize,
    args: usize,
    bytes: usize,
) -> redis::Cmd {
    let mut cmd = redis::Cmd::with_capacity(2 + keys + args, 64 + bytes);
    cmd.arg("EVALSHA").arg(script.get_hash()).arg(keys);
    cmd
}

const SCRIPT: &str = r"
-- ARGV[1] = cost; then per key: t (ns per unit), cap (burst * t, ns);
-- t = 0 marks a quota this request skips (no key, `missing_key = allow`):
-- its key is neither read nor written.
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
  if t > 0 then
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
  else
    out[2 + 2 * i] = 0
    out[3 + 2 * i] = 0
  end
end
if out[1] == 0 then
  for i = 1, #KEYS do
    if nexts[i] then
      local ms = math.ceil((nexts[i] - now) / 1000000)
      if ms < 1 then ms = 1 end
      redis.call('SET', KEYS[i], string.format('%.0f', nexts[i]), 'PX', ms)
    end
  end
else
  for i = 1, #KEYS do out[3 + 2 * i] = out[2 + 2 * i] end
end
return out
";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

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
/// back with the outcome (the one box of the Redis path).
pub(crate) type Deciding = BoxFuture<(Slots, RemoteOutcome)>;

/// What the store answered for one request.
pub(crate) struct RemoteOutcome {
    pub(crate) verdict: Verdict,
    pub(crate) path: Path,
}

/// The Redis store as the layer holds it.
pub(crate) struct RedisBackend {
    pub(crate) name: Arc<str>,
    conn: RedisConnection,
    script: redis::Script,
    /// Leased mode's script ([`super::lease::SCRIPT`]).
    lease_script: redis::Script,
    /// One Redis call's timeout.
    pub(crate) timeout: Duration,
    /// Guards the connection: admits each call (a [`Permit`] that records
    /// its outcome) or refuses it while open.
    guard: Breaker,
    breaker: CircuitBreakerHandle,
    key_heads: Box<[Vec<u8>]>,
    hash_tag_key: bool,
    pub(crate) failure: FailurePolicy,
    pub(crate) fallback: Option<MemoryStore>,
    decisions: [Counter; Path::ALL.len()],
    last_path: AtomicU8,
    /// Leased mode's slices (`None`: exact mode).
    pub(crate) lease: Option<Leases>,
    /// Lease script calls (leased mode).
    pub(crate) lease_refreshes: Counter,
}

/// One quota's Redis key name, written straight into the command.
struct KeyName<'a> {
    head: &'a [u8],
    key: KeyRef<'a>,
    close_tag: bool,
}

impl redis::ToRedisArgs for KeyName<'_> {
    fn write_redis_args<W: ?Sized + redis::RedisWrite>(&self, out: &mut W) {
        use std::io::Write;
        let mut w = out.writer_for_next_arg();
        let _ = w.write_all(self.head);
        let _ = match self.key {
            KeyRef::Ip(ip) => write!(w, "{ip}"),
            KeyRef::Number(n) => write!(w, "{n}"),
            KeyRef::Bytes(b) => w.write_all(b),
        };
        if self.close_tag {
            let _ = w.write_all(b"}");
        }
    }
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
        let conn = RedisConnection::open(cfg)?;
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
            conn,
            script: redis::Script::new(SCRIPT),
            lease_script: redis::Script::new(super::lease::SCRIPT),
            timeout: cfg.timeout,
            breaker: breaker_layer.handle(),
            guard: breaker_layer.breaker,
            key_heads,
            hash_tag_key: !multi,
            failure: cfg.failure,
            fallback,
            decisions,
            last_path: AtomicU8::new(Path::Redis as u8),
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

    /// The decision's command: `EVALSHA <sha> <quotas>`, key names next.
    fn command(&self) -> redis::Cmd {
        let n = self.key_heads.len();
        let bytes: usize = self.key_heads.iter().map(|h| h.len() + 48).sum();
        evalsha(&self.script, n, 1 + 2 * n, bytes + 24 * (1 + 2 * n))
    }

    /// Appends quota `i`'s key name for `key`.
    fn push_key(&self, cmd: &mut redis::Cmd, i: usize, key: KeyRef<'_>) {
        cmd.arg(KeyName {
            head: &self.key_heads[i],
            key,
            close_tag: self.hash_tag_key,
        });
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

    /// A call of the lease script (leased mode) through the breaker,
    /// within the timeout.
    pub(crate) async fn call_lease(&self, cmd: &redis::Cmd) -> Result<Vec<i64>, BoxError> {
        self.call(self.permit(), cmd, &self.lease_script).await
    }

    /// An `EVALSHA` of the lease script for `keys` keys and `args`
    /// arguments (to be appended).
    pub(crate) fn lease_command(&self, keys: usize, args: usize) -> redis::Cmd {
        evalsha(&self.lease_script, keys, args, 64 * keys + 24 * args)
    }

    /// Quota `i`'s Redis key name for `key`, as bytes (leased mode keeps
    /// it for refreshes in the background).
    pub(crate) fn key_name(&self, i: usize, key: KeyRef<'_>) -> Vec<u8> {
        use redis::ToRedisArgs;
        KeyName {
            head: &self.key_heads[i],
            key,
            close_tag: self.hash_tag_key,
        }
        .to_redis_args()
        .pop()
        .unwrap_or_default()
    }

    /// The breaker's answer for one call, taken before the request moves
    /// on: a permit that records the call's outcome, or `None` while the
    /// breaker is open.
    pub(crate) fn permit(&self) -> Option<Permit> {
        match circuit_breaker::decide(&self.guard) {
            circuit_breaker::Decision::Go(permit) => Some(permit),
            circuit_breaker::Decision::Refuse(_) => None,
        }
    }

    /// One call to Redis (`cmd`, an `EVALSHA` of `script`) under `permit`,
    /// within the timeout; its outcome is recorded by the breaker. Every
    /// mode of the store talks to Redis through this.
    pub(crate) async fn call<T: redis::FromRedisValue>(
        &self,
        permit: Option<Permit>,
        cmd: &redis::Cmd,
        script: &redis::Script,
    ) -> Result<T, BoxError> {
        let Some(permit) = permit else {
            return Err("the breaker guarding redis is open".into());
        };
        match tokio::time::timeout(self.timeout, self.conn.run(cmd, Some(script))).await {
            Ok(Ok(v)) => {
                permit.complete(Outcome::Success);
                Ok(v)
            }
            Ok(Err(e)) => {
                permit.complete(Outcome::Failure);
                Err(Box::new(e))
            }
            Err(_) => {
                permit.complete(Outcome::Failure);
                Err("redis call timed out".into())
            }
        }
    }

    /// Starts the decision for `slots`: `cmd` holds the key of every quota
    /// of the layer (a skipped one's too); the cost and each quota's
    /// parameters are appended here. The future owns all it needs.
    fn acquire(
        self: &Arc<Self>,
        slots: Slots,
        mut cmd: redis::Cmd,
        params: &[Gcra],
        cost: NonZeroU32,
        too_costly: Option<usize>,
    ) -> Deciding {
        cmd.arg(cost.get());
        for (s, q) in slots.slots[..slots.len].iter().zip(params) {
            if s.active {
                cmd.arg(q.t).arg(q.cap());
            } else {
                cmd.arg(0).arg(0);
            }
        }
        let permit = self.permit();
        let this = Arc::clone(self);
        Box::pin(async move {
            let mut slots = slots;
            let result = this.call::<Vec<i64>>(permit, &cmd, &this.script).await;
            match result {
                Ok(v) if v.len() >= 3 + 2 * slots.len => {
                    let refused = v[0];
                    let now = u64::try_from(v[1]).unwrap_or(0);
                    let wait = u64::try_from(v[2]).unwrap_or(0);
                    let mut refused_quota = None;
                    for (i, s) in slots.slots[..slots.len].iter_mut().enumerate() {
                        if !s.active {
                            continue;
                        }
                        let at = 3 + 2 * i;
                        s.measured = Measured {
                            prev: u64::try_from(v[at]).unwrap_or(0),
                            next: u64::try_from(v[at + 1]).unwrap_or(0),
                            now,
                        };
                        if i64::try_from(i + 1).is_ok_and(|n| n == refused) {
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
                    match &other {
                        Err(e) => tracing::debug!(
                            target: "tower_rampart::rate_limit",
                            name = %this.name,
                            error = %e,
                            "rate limit store call failed"
                        ),
                        Ok(v) => tracing::debug!(
                            target: "tower_rampart::rate_limit",
                            name = %this.name,
                            error = %format_args!("unexpected answer of {} values", v.len()),
                            "rate limit store call failed"
                        ),
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
    /// The Redis path: keys, cost and allow-lists as in process (each key
    /// extracted once, its Redis name written straight into the command),
    /// then a future that asks Redis.
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
        let mut cmd = redis.command();
        // Every quota gets a key name, in order: a quota the request skips
        // (no key, `missing_key = allow`) its bare head (one hash slot with
        // the others: several quotas share the `{layer}` tag), never read.
        let mut named = 0;
        if let Some(d) = self.prepare_with(&info, &mut slots, |i, key| {
            while named < i {
                redis.push_key(&mut cmd, named, KeyRef::Bytes(b""));
                named += 1;
            }
            redis.push_key(&mut cmd, i, key);
            named = i + 1;
        }) {
            return d;
        }
        let Some(cost) = slots.cost else {
            return Decision::Admit(None);
        };
        if !slots.slots[..slots.len].iter().any(|s| s.active) {
            return self.admit();
        }
        while named < slots.len {
            redis.push_key(&mut cmd, named, KeyRef::Bytes(b""));
            named += 1;
        }
        // A request costlier than a burst is refused whatever Redis says,
        // but still asked about (nothing is written), so its refusal
        // reports what remains, as in process.
        let too_costly = slots.slots[..slots.len]
            .iter()
            .zip(self.params.iter())
            .position(|(s, q)| s.active && cost.get() > q.burst);
        Decision::Deciding(redis.acquire(slots, cmd, &self.params, cost, too_costly))
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
pub(super) mod tests {
    //! The Lua script against [`gcra::step_all`]: the same states through
    //! both, every answer compared. Needs a `redis-server` binary (skipped,
    //! saying so, without one; failing under CI), like
    //! `tests/rate_limit_redis.rs`.

    use super::super::gcra::{self, Gcra, Outcome};
    use super::SCRIPT;

    /// A throwaway `redis-server` on a free loopback port (the lease's
    /// tests use it too).
    pub(in crate::rate_limit) struct Server(std::process::Child, pub(in crate::rate_limit) u16);

    impl Drop for Server {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }

    pub(in crate::rate_limit) fn server() -> Option<Server> {
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
