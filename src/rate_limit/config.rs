//! `serde` configuration (feature `config`).

// Over ~500 lines because of its tests (about 250), one per key path.

use std::sync::Arc;
use std::time::Duration;

use super::client_ip::{ClientIp, ClientIpHeader};
use super::key::{Key, KeyExtractor};
use super::layer::{MissingKey, RateLimitBuilder, RateLimitLayer};
use super::quota::{Quota, Rate};
use crate::ConfigError;
use crate::util::route_paths::RoutePaths;

/// One quota in a config file.
///
/// ```toml
/// rate = "100/s"
/// burst = 20
/// key = "client_ip"   # global | client_ip | path | route | header:<name>
/// name = "per-ip"
/// ```
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuotaConfig {
    /// The rate, as `"<count>/<unit>"` (`"100/s"`, `"1000/h"`).
    pub rate: String,
    /// Units that may be taken at once (default: the rate's count).
    #[serde(default)]
    pub burst: Option<u32>,
    /// What the quota is counted by (default `global`).
    #[serde(default)]
    pub key: Option<String>,
    /// The quota's name (default: the key's name).
    #[serde(default)]
    pub name: Option<String>,
}

/// A rate limit layer in a config file.
///
/// ```
/// # #[cfg(feature = "config")] {
/// use tower_rampart::rate_limit::RateLimitConfig;
///
/// let config: RateLimitConfig = serde_json::from_str(r#"{
///     "name": "api",
///     "quotas": [
///         { "rate": "10/s", "burst": 20, "key": "client_ip" },
///         { "rate": "1000/s", "name": "global" }
///     ],
///     "client_ip_header": "x-forwarded-for",
///     "trusted_proxies": ["10.0.0.0/8"],
///     "max_keys": 50000
/// }"#).unwrap();
/// let layer = config.build().unwrap();
/// assert_eq!(layer.name(), "api");
/// # }
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimitConfig {
    /// The layer's name (default `rate_limit`).
    #[serde(default)]
    pub name: Option<String>,
    /// The quotas (at least one).
    pub quotas: Vec<QuotaConfig>,
    /// The one forwarding header the trusted proxies write: `forwarded`,
    /// `x-forwarded-for`, `x-real-ip`, or another header holding one
    /// address (`cf-connecting-ip`). Every other forwarding header is
    /// ignored. Default: none, the client is the peer address. Requires
    /// `trusted_proxies` (see [`ClientIp`] for the trust model).
    #[serde(default)]
    pub client_ip_header: Option<String>,
    /// The proxies that write `client_ip_header` (CIDRs or addresses); its
    /// value is believed only from these peers. Requires
    /// `client_ip_header`.
    #[serde(default)]
    pub trusted_proxies: Vec<String>,
    /// Forwarding entries walked at most (default 5).
    #[serde(default)]
    pub max_hops: Option<usize>,
    /// Key IPv6 clients by this prefix length (default 128).
    #[serde(default)]
    pub ipv6_prefix: Option<u8>,
    /// What happens to requests with no key: `anonymous` (default), `allow`
    /// or `reject`.
    #[serde(default)]
    pub missing_key: MissingKey,
    /// Keys kept at most per keyed quota (default 100 000).
    #[serde(default)]
    pub max_keys: Option<usize>,
    /// How often idle keys are evicted (default "60s", at most "1h"). `"off"` (or
    /// `"0s"`, read as `Some(Duration::ZERO)`) switches the sweep off: keys
    /// then leave only when `max_keys` is reached, least recently used
    /// first.
    #[serde(default, deserialize_with = "idle_sweep")]
    pub idle_sweep: Option<Duration>,
    /// Count what would be refused, refuse nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Send the `RateLimit` fields on admitted responses too.
    #[serde(default)]
    pub admitted_headers: bool,
    /// Send `x-ratelimit-*` too.
    #[serde(default)]
    pub legacy_headers: bool,
    /// Keys never limited (matched as text).
    #[serde(default)]
    pub allow_keys: Vec<String>,
    /// Client networks never limited.
    #[serde(default)]
    pub allow_cidrs: Vec<String>,
    /// Waiting mode: wait up to this long for room (e.g. "500ms", at most
    /// "10m").
    #[serde(default, with = "crate::config_util::opt_duration")]
    pub wait: Option<Duration>,
    /// Where quota state lives: in this process (the default) or in Redis.
    #[serde(default)]
    pub store: StoreConfig,
}

/// Where a rate limit keeps its quota state.
///
/// ```json
/// { "type": "in_process" }
/// { "type": "redis", "url": "redis://redis:6379/", "prefix": "myapp",
///   "timeout": "50ms", "failure": "fallback", "fallback_share": 0.25 }
/// { "type": "redis", "url": "redis://redis:6379/", "mode": "leased",
///   "lease_max": 100, "lease_horizon": "100ms", "lease_ttl": "1s" }
/// ```
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
// Read once at start-up: a few hundred bytes inline cost nothing, and a
// `Box` would make every `match` on the section awkward.
#[allow(clippy::large_enum_variant)]
pub enum StoreConfig {
    /// In this process's memory (the default).
    #[default]
    InProcess,
    /// In Redis, shared by every replica (needs the `redis` feature).
    Redis(RedisConfig),
}

/// What to do when Redis cannot answer in time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FailureConfig {
    /// Admit every request (the default).
    #[default]
    FailOpen,
    /// Refuse every request.
    FailClosed,
    /// Decide in process with `fallback_share` of each quota.
    Fallback,
}

/// The Redis store's settings: one server (`url`) or a Redis Cluster
/// (`cluster`), exactly one of them.
///
/// ```json
/// { "type": "redis", "url": "rediss://redis.internal:6380/",
///   "tls": { "ca_file": "/etc/redis-tls/ca.pem",
///            "client_cert_file": "/etc/redis-tls/client.pem",
///            "client_key_file": "/etc/redis-tls/client.key" } }
/// { "type": "redis", "cluster": ["redis://10.0.0.1:6379", "redis://10.0.0.2:6379"] }
/// ```
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisConfig {
    /// One server: `redis://host:port/db`, or `rediss://...` for TLS
    /// (feature `redis-tls`).
    #[serde(default)]
    pub url: Option<String>,
    /// A Redis Cluster: seed node URLs (`redis://host:port`, or all
    /// `rediss://`); the client finds the other nodes.
    #[serde(default)]
    pub cluster: Vec<String>,
    /// TLS for `rediss://` URLs (feature `redis-tls`): PEM files, read
    /// when the layer is built (a missing or unreadable file is an error
    /// naming its key).
    #[serde(default)]
    pub tls: Option<RedisTlsConfig>,
    /// First part of every key name (default `rampart`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// Timeout of one call to Redis (default "50ms", at most "1m").
    #[serde(default, with = "crate::config_util::opt_duration")]
    pub timeout: Option<Duration>,
    /// `fail_open` (default), `fail_closed` or `fallback`.
    #[serde(default)]
    pub failure: FailureConfig,
    /// With `fallback`: this replica's share of each quota, in (0, 1].
    #[serde(default)]
    pub fallback_share: Option<f64>,
    /// Consecutive failures that open the breaker guarding Redis (default 3).
    #[serde(default)]
    pub trip_after: Option<u32>,
    /// How long the open breaker keeps requests away from Redis (default
    /// "1s", at most "1h").
    #[serde(default, with = "crate::config_util::opt_duration")]
    pub open_duration: Option<Duration>,
    /// `exact` (default: one round trip per decided request) or `leased`
    /// (each replica decides from slices leased from Redis; the fleet may
    /// admit up to replicas x `lease_max` per key beyond the limit).
    #[serde(default)]
    pub mode: RedisModeConfig,
    /// Leased mode: the fewest units one lease asks for (default 1).
    #[serde(default)]
    pub lease_min: Option<u32>,
    /// Leased mode: the most units one lease holds (default 100, capped
    /// at each quota's burst).
    #[serde(default)]
    pub lease_max: Option<u32>,
    /// Leased mode: how much of a replica's observed traffic a lease
    /// covers (default "100ms", at most "1m").
    #[serde(default, with = "crate::config_util::opt_duration")]
    pub lease_horizon: Option<Duration>,
    /// Leased mode: how long a slice stays good after its last refresh
    /// (default "1s", at most "1h", at least `lease_horizon`).
    #[serde(default, with = "crate::config_util::opt_duration")]
    pub lease_ttl: Option<Duration>,
}

/// How the Redis store decides (`store.mode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RedisModeConfig {
    /// One round trip per decided request (the default).
    #[default]
    Exact,
    /// Slices leased from Redis, decided locally.
    Leased,
}

/// TLS settings of the Redis store (`store.tls`): PEM files.
#[derive(Debug, Clone, Default, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisTlsConfig {
    /// The CA certificate(s) to trust instead of the system's roots.
    #[serde(default)]
    pub ca_file: Option<std::path::PathBuf>,
    /// This client's certificate chain, for mutual TLS (with
    /// `client_key_file`).
    #[serde(default)]
    pub client_cert_file: Option<std::path::PathBuf>,
    /// The private key of `client_cert_file`.
    #[serde(default)]
    pub client_key_file: Option<std::path::PathBuf>,
}

/// `idle_sweep`: a duration, or `"off"` (= `"0s"`).
fn idle_sweep<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    use serde::Deserialize as _;
    let text = String::deserialize(d)?;
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(Some(Duration::ZERO));
    }
    crate::config_util::parse_duration(&text)
        .map(Some)
        .map_err(|e| serde::de::Error::custom(format!("{e}, or \"off\"")))
}

impl RateLimitConfig {
    /// Validates the config and builds the layer; errors name the field
    /// (`quotas[1].rate`). The first problem [`validate`](Self::validate)
    /// reports is the one returned.
    pub fn build(&self) -> Result<RateLimitLayer, ConfigError> {
        self.build_with_routes(&Arc::default())
    }

    /// [`build`](Self::build), with the stack's declared routes
    /// (`routes.paths`) for the quotas keyed by `route`.
    pub(crate) fn build_with_routes(
        &self,
        paths: &Arc<RoutePaths>,
    ) -> Result<RateLimitLayer, ConfigError> {
        let (mut builder, mut problems) = self.builder();
        if !problems.is_empty() {
            return Err(problems.swap_remove(0));
        }
        if !paths.is_empty() {
            for quota in &mut builder.quotas {
                quota.key.declare_routes(paths);
            }
        }
        builder.build()
    }

    /// Checks every setting without building anything (no metrics
    /// registered, no task spawned, no Redis connection, no runtime needed)
    /// and reports every problem, each named by its key path relative to
    /// this section (`quotas[1].burst`, `store.timeout`).
    ///
    /// ```
    /// # #[cfg(feature = "config")] {
    /// use tower_rampart::rate_limit::RateLimitConfig;
    ///
    /// let config: RateLimitConfig = serde_json::from_str(r#"{
    ///     "quotas": [{ "rate": "ten/s" }, { "rate": "5/s", "burst": 0, "name": "b" }],
    ///     "max_keys": 0
    /// }"#).unwrap();
    /// let problems = config.validate().unwrap_err();
    /// let fields: Vec<&str> = problems.iter().map(|e| e.field()).collect();
    /// assert_eq!(fields, ["quotas[0].rate", "quotas[1].burst", "max_keys"]);
    /// # }
    /// ```
    pub fn validate(&self) -> Result<(), Vec<ConfigError>> {
        let (builder, mut problems) = self.builder();
        problems.extend(builder.problems());
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems)
        }
    }

    /// The builder this section describes, and the problems met turning
    /// it into one (a setting with a problem is left at its default, so
    /// the builder's own checks still run on the rest).
    fn builder(&self) -> (RateLimitBuilder, Vec<ConfigError>) {
        let mut problems: Vec<ConfigError> = Vec::new();
        let mut b = RateLimitLayer::builder();
        if let Some(name) = &self.name {
            b = b.name(name.clone());
        }
        for (i, q) in self.quotas.iter().enumerate() {
            let at = format!("quotas[{i}]");
            let rate = match q.rate.parse::<Rate>() {
                Ok(rate) => rate,
                Err(e) => {
                    problems.push(ConfigError::new("rate", e).at(&at));
                    // Stands in for the broken rate, so the quota's other
                    // settings are still checked.
                    Rate::per_second(1)
                }
            };
            let mut quota = Quota::new(rate);
            if let Some(burst) = q.burst {
                quota = quota.burst(burst);
            }
            if let Some(key) = &q.key {
                match key.parse::<KeyExtractor>() {
                    Ok(key) => quota = quota.key(key),
                    Err(e) => {
                        problems.push(e.at(&at));
                        // A stand-in name: the broken key must not also
                        // read as a second quota named `global`.
                        quota = quota.name(at.clone());
                    }
                }
            }
            if let Some(name) = &q.name {
                quota = quota.name(name.clone());
            }
            b = b.quota(quota);
        }
        let mut ip = ClientIp::new();
        match ip.clone().trusted_proxies(&self.trusted_proxies) {
            Ok(with) => ip = with,
            Err(e) => problems.push(e),
        }
        if let Some(h) = &self.client_ip_header {
            match h.parse::<ClientIpHeader>() {
                Ok(h) => ip = ip.header(h),
                Err(e) => problems.push(e),
            }
        }
        if let Some(h) = self.max_hops {
            match ip.clone().max_hops(h) {
                Ok(with) => ip = with,
                Err(e) => problems.push(e),
            }
        }
        if let Some(p) = self.ipv6_prefix {
            match ip.clone().ipv6_prefix(p) {
                Ok(with) => ip = with,
                Err(e) => problems.push(e),
            }
        }
        let ip_ok = problems.iter().all(|e| {
            ![
                "trusted_proxies",
                "client_ip_header",
                "max_hops",
                "ipv6_prefix",
            ]
            .iter()
            .any(|f| e.field().starts_with(f))
        });
        if ip_ok {
            // A half-set client IP would add a second, misleading problem.
            b = b.client_ip(ip);
        }
        b = b
            .missing_key(self.missing_key)
            .idle_sweep(match self.idle_sweep {
                None => Some(Duration::from_secs(60)),
                Some(d) if d.is_zero() => None,
                Some(d) => Some(d),
            })
            .dry_run(self.dry_run)
            .admitted_headers(self.admitted_headers)
            .legacy_headers(self.legacy_headers)
            .allow_keys(self.allow_keys.iter().map(|k| Key::from(k.clone())))
            .allow_cidrs(self.allow_cidrs.iter().cloned());
        if let Some(m) = self.max_keys {
            b = b.max_keys(m);
        }
        if let Some(w) = self.wait {
            b = b.wait(w);
        }
        match &self.store {
            StoreConfig::InProcess => {}
            #[cfg(feature = "redis")]
            StoreConfig::Redis(r) => {
                use super::redis::{FailurePolicy, RedisStore};
                let failure = match r.failure {
                    FailureConfig::FailOpen => FailurePolicy::FailOpen,
                    FailureConfig::FailClosed => FailurePolicy::FailClosed,
                    FailureConfig::Fallback => match r.fallback_share {
                        Some(share) => FailurePolicy::Fallback { share },
                        None => {
                            problems.push(ConfigError::new(
                                "store.fallback_share",
                                "required with `fallback`",
                            ));
                            FailurePolicy::FailOpen
                        }
                    },
                };
                let mut store = match (&r.url, r.cluster.is_empty()) {
                    (Some(url), true) => RedisStore::new(url.clone()),
                    (None, false) => RedisStore::cluster(r.cluster.iter().cloned()),
                    (url, _) => {
                        problems.push(ConfigError::new(
                            "store.url",
                            if url.is_some() {
                                "set either `url` or `cluster`, not both"
                            } else {
                                "required (or `cluster`)"
                            },
                        ));
                        // A stand-in, so the other settings are checked.
                        RedisStore::new(url.clone().unwrap_or_else(|| "redis://localhost/".into()))
                    }
                }
                .failure_policy(failure);
                if let Some(tls) = &r.tls {
                    store = redis_tls(store, tls, &mut problems);
                }
                if let Some(p) = &r.prefix {
                    store = store.prefix(p.clone());
                }
                if let Some(t) = r.timeout {
                    store = store.timeout(t);
                }
                if let Some(n) = r.trip_after {
                    store = store.trip_after(n);
                }
                if let Some(d) = r.open_duration {
                    store = store.open_duration(d);
                }
                match r.mode {
                    RedisModeConfig::Exact => {
                        for (set, field) in [
                            (r.lease_min.is_some(), "store.lease_min"),
                            (r.lease_max.is_some(), "store.lease_max"),
                            (r.lease_horizon.is_some(), "store.lease_horizon"),
                            (r.lease_ttl.is_some(), "store.lease_ttl"),
                        ] {
                            if set {
                                problems
                                    .push(ConfigError::new(field, "only with `mode = \"leased\"`"));
                            }
                        }
                    }
                    RedisModeConfig::Leased => {
                        use super::lease::{Lease, RedisMode};
                        let mut lease = Lease::new();
                        if let Some(n) = r.lease_min {
                            lease = lease.min(n);
                        }
                        if let Some(n) = r.lease_max {
                            lease = lease.max(n);
                        }
                        if let Some(d) = r.lease_horizon {
                            lease = lease.horizon(d);
                        }
                        if let Some(d) = r.lease_ttl {
                            lease = lease.ttl(d);
                        }
                        store = store.mode(RedisMode::Leased(lease));
                    }
                }
                b = b.redis(store);
            }
            #[cfg(not(feature = "redis"))]
            StoreConfig::Redis(_) => problems.push(ConfigError::new(
                "store",
                "the redis store needs the `redis` feature",
            )),
        }
        (b, problems)
    }
}

/// Reads the `store.tls` files into `store`'s TLS settings; a missing or
/// unreadable file, or a certificate without its key, is a problem named
/// by its key.
#[cfg(feature = "redis")]
fn redis_tls(
    store: super::redis::RedisStore,
    tls: &RedisTlsConfig,
    problems: &mut Vec<ConfigError>,
) -> super::redis::RedisStore {
    let mut read = |field: &str, path: &Option<std::path::PathBuf>| -> Option<Vec<u8>> {
        let path = path.as_ref()?;
        std::fs::read(path)
            .map_err(|e| {
                problems.push(ConfigError::new(
                    format!("store.tls.{field}"),
                    format!("cannot read `{}`: {e}", path.display()),
                ));
            })
            .ok()
    };
    let ca = read("ca_file", &tls.ca_file);
    let cert = read("client_cert_file", &tls.client_cert_file);
    let key = read("client_key_file", &tls.client_key_file);
    match (
        tls.client_cert_file.is_some(),
        tls.client_key_file.is_some(),
    ) {
        (true, false) => problems.push(ConfigError::new(
            "store.tls.client_key_file",
            "required with `client_cert_file`",
        )),
        (false, true) => problems.push(ConfigError::new(
            "store.tls.client_cert_file",
            "required with `client_key_file`",
        )),
        _ => {}
    }
    #[cfg(feature = "redis-tls")]
    {
        let mut settings = super::redis::RedisTls::new();
        if let Some(ca) = ca {
            settings = settings.ca_pem(ca);
        }
        if let (Some(cert), Some(key)) = (cert, key) {
            settings = settings.client_cert_pem(cert, key);
        }
        store.tls(settings)
    }
    #[cfg(not(feature = "redis-tls"))]
    {
        let _ = (ca, cert, key);
        problems.push(ConfigError::new(
            "store.tls",
            "TLS to Redis needs the `redis-tls` feature",
        ));
        store
    }
}

impl TryFrom<RateLimitConfig> for RateLimitLayer {
    type Error = ConfigError;

    fn try_from(config: RateLimitConfig) -> Result<Self, ConfigError> {
        config.build()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> ConfigError {
        serde_json::from_str::<RateLimitConfig>(json)
            .unwrap()
            .build()
            .unwrap_err()
    }

    #[test]
    fn errors_name_fields() {
        assert_eq!(
            err(r#"{"quotas":[{"rate":"0/s"}]}"#).field(),
            "quotas[0].rate"
        );
        assert_eq!(
            err(r#"{"quotas":[{"rate":"1/s"},{"rate":"5/s","burst":0,"name":"b"}]}"#).field(),
            "quotas[1].burst"
        );
        assert_eq!(
            err(r#"{"quotas":[{"rate":"ten/s"}]}"#).field(),
            "quotas[0].rate"
        );
        assert_eq!(
            err(r#"{"quotas":[{"rate":"1/s"}],"trusted_proxies":["10.0.0.0/99"]}"#).field(),
            "trusted_proxies[0]"
        );
        assert_eq!(
            err(r#"{"quotas":[{"rate":"1/s"}],"trusted_proxies":["10.0.0.0/8"]}"#).field(),
            "client_ip_header"
        );
        assert_eq!(
            err(r#"{"quotas":[{"rate":"1/s"}],"client_ip_header":"x-real-ip"}"#).field(),
            "trusted_proxies"
        );
        assert_eq!(
            err(r#"{"quotas":[{"rate":"1/s"}],"client_ip_header":"x real ip","trusted_proxies":["10.0.0.1"]}"#).field(),
            "client_ip_header"
        );
        assert_eq!(
            err(r#"{"quotas":[{"rate":"1/s"}],"client_ip_header":"forwarded","trusted_proxies":["10.0.0.1","0.0.0.0/0"]}"#).field(),
            "trusted_proxies[1]"
        );
        assert_eq!(
            err(r#"{"quotas":[{"rate":"1/s"}],"idle_sweep":"2h"}"#).field(),
            "idle_sweep"
        );
        assert_eq!(
            err(r#"{"quotas":[{"rate":"1/s"}],"wait":"11m"}"#).field(),
            "wait"
        );
        assert_eq!(
            err(r#"{"quotas":[{"rate":"1/s"}],"store":{"type":"redis","url":"redis://127.0.0.1:1/","timeout":"5m"}}"#).field(),
            "store.timeout"
        );
        assert_eq!(
            err(r#"{"quotas":[{"rate":"1/s"}],"store":{"type":"redis","url":"redis://127.0.0.1:1/","open_duration":"2h"}}"#).field(),
            "store.open_duration"
        );
        assert_eq!(
            err(r#"{"quotas":[{"rate":"1/s"}],"allow_cidrs":["x"]}"#).field(),
            "allow_cidrs[0]"
        );
        assert_eq!(
            err(r#"{"quotas":[{"rate":"1/s","key":"cookie"}]}"#).field(),
            "quotas[0].key"
        );
        assert_eq!(err(r#"{"quotas":[]}"#).field(), "quotas");
        assert_eq!(
            err(r#"{"quotas":[{"rate":"1/s"}],"max_keys":0}"#).field(),
            "max_keys"
        );
        assert!(serde_json::from_str::<RateLimitConfig>(r#"{"quotas":[],"bogus":1}"#).is_err());
    }

    #[test]
    fn store_section() {
        let c: RateLimitConfig = serde_json::from_str(
            r#"{"quotas":[{"rate":"1/s"}],"store":{"type":"redis","url":"redis://127.0.0.1:1/",
                "prefix":"app","timeout":"20ms","failure":"fallback","fallback_share":0.5}}"#,
        )
        .unwrap();
        let StoreConfig::Redis(r) = &c.store else {
            panic!("not redis")
        };
        assert_eq!(r.failure, FailureConfig::Fallback);
        assert_eq!(r.timeout, Some(Duration::from_millis(20)));
        let c: RateLimitConfig = serde_json::from_str(r#"{"quotas":[{"rate":"1/s"}]}"#).unwrap();
        assert!(matches!(c.store, StoreConfig::InProcess));
        assert!(
            serde_json::from_str::<RateLimitConfig>(
                r#"{"quotas":[],"store":{"type":"redis","url":"x","bogus":1}}"#
            )
            .is_err()
        );
        #[cfg(feature = "redis")]
        assert_eq!(
            err(r#"{"quotas":[{"rate":"1/s"}],"store":{"type":"redis","url":"redis://127.0.0.1:1/","failure":"fallback"}}"#).field(),
            "store.fallback_share"
        );
    }

    #[test]
    fn builds() {
        let c: RateLimitConfig = serde_json::from_str(
            r#"{"quotas":[{"rate":"100/s","burst":20,"key":"header:x-api-key"}],
                "missing_key":"reject","idle_sweep":"5s","wait":"250ms"}"#,
        )
        .unwrap();
        assert_eq!(c.missing_key, MissingKey::Reject);
        assert_eq!(c.wait, Some(Duration::from_millis(250)));
        assert!(RateLimitLayer::try_from(c).is_ok());
        let c: RateLimitConfig = serde_json::from_str(
            r#"{"quotas":[{"rate":"1/s","key":"client_ip"}],
                "client_ip_header":"CF-Connecting-IP","trusted_proxies":["173.245.48.0/20"]}"#,
        )
        .unwrap();
        assert!(c.build().is_ok());
    }

    #[test]
    fn validate_reports_every_problem_and_builds_nothing() {
        let c: RateLimitConfig = serde_json::from_str(
            r#"{"name":"","quotas":[{"rate":"ten/s","key":"cookie"},{"rate":"1/s","burst":0}],
                "trusted_proxies":["10.0.0.0/99"],"client_ip_header":"x-real-ip",
                "max_keys":0,"wait":"11m","allow_cidrs":["x"]}"#,
        )
        .unwrap();
        let fields: Vec<String> = c
            .validate()
            .unwrap_err()
            .iter()
            .map(|e| e.field().to_owned())
            .collect();
        assert_eq!(
            fields,
            [
                "quotas[0].rate",
                "quotas[0].key",
                "trusted_proxies[0]",
                "name",
                "quotas[1].burst",
                "max_keys",
                "wait",
                "allow_cidrs[0]",
            ]
        );
        // The first one is what `build` returns.
        assert_eq!(c.build().unwrap_err().field(), "quotas[0].rate");
    }

    #[cfg(feature = "redis")]
    #[test]
    fn validate_needs_no_runtime_and_no_connection() {
        // No tokio runtime here: building would fail, checking must not.
        let c: RateLimitConfig = serde_json::from_str(
            r#"{"quotas":[{"rate":"1/s"}],"store":{"type":"redis","url":"redis://127.0.0.1:1/",
                "failure":"fallback","fallback_share":0.5}}"#,
        )
        .unwrap();
        assert_eq!(c.validate(), Ok(()));
        assert_eq!(c.build().unwrap_err().field(), "store");
        let bad: RateLimitConfig = serde_json::from_str(
            r#"{"name":"a{b}","quotas":[{"rate":"1/s"}],"store":{"type":"redis","url":"nope://",
                "prefix":"","timeout":"0s","trip_after":0,"failure":"fallback","fallback_share":2.0}}"#,
        )
        .unwrap();
        let fields: Vec<String> = bad
            .validate()
            .unwrap_err()
            .iter()
            .map(|e| e.field().to_owned())
            .collect();
        assert_eq!(
            fields,
            [
                "store.prefix",
                "name",
                "store.timeout",
                "store.trip_after",
                "store.fallback_share",
                "store.url",
            ]
        );
    }

    #[cfg(feature = "redis")]
    #[test]
    fn url_or_cluster() {
        let problems = |store: &str| -> Vec<String> {
            let c: RateLimitConfig = serde_json::from_str(&format!(
                r#"{{"quotas":[{{"rate":"1/s"}}],"store":{{"type":"redis"{store}}}}}"#
            ))
            .unwrap();
            c.validate()
                .err()
                .unwrap_or_default()
                .iter()
                .map(|e| e.field().to_owned())
                .collect()
        };
        assert_eq!(
            problems(r#","cluster":["redis://10.0.0.1:6379","redis://10.0.0.2:6379"]"#),
            Vec::<String>::new()
        );
        assert_eq!(problems(""), ["store.url"]);
        assert_eq!(
            problems(r#","url":"redis://127.0.0.1:1/","cluster":["redis://10.0.0.1:6379"]"#),
            ["store.url"]
        );
        assert_eq!(
            problems(r#","cluster":["redis://10.0.0.1:6379","nope://x"]"#),
            ["store.cluster[1]"]
        );
        assert_eq!(problems(r#","cluster":[]"#), ["store.url"]);
    }

    #[cfg(feature = "redis")]
    #[test]
    fn leased_mode_keys_are_validated_by_name() {
        let store = |extra: &str| {
            format!(
                r#"{{"quotas":[{{"rate":"1/s"}}],"store":{{"type":"redis","url":"redis://127.0.0.1:1/"{extra}}}}}"#
            )
        };
        let fields = |extra: &str| -> Vec<String> {
            serde_json::from_str::<RateLimitConfig>(&store(extra))
                .unwrap()
                .validate()
                .err()
                .unwrap_or_default()
                .iter()
                .map(|e| e.field().to_owned())
                .collect()
        };
        assert!(fields(r#","mode":"leased""#).is_empty());
        assert!(
            fields(r#","mode":"leased","lease_min":5,"lease_max":500,"lease_horizon":"20ms","lease_ttl":"2s""#)
                .is_empty()
        );
        assert_eq!(
            fields(r#","mode":"leased","lease_min":0,"lease_horizon":"0s""#),
            ["store.lease_min", "store.lease_horizon"]
        );
        assert_eq!(
            fields(r#","mode":"leased","lease_min":10,"lease_max":5"#),
            ["store.lease_max"]
        );
        assert_eq!(
            fields(r#","mode":"leased","lease_max":0,"lease_ttl":"2h""#),
            ["store.lease_max", "store.lease_ttl"]
        );
        assert_eq!(
            fields(r#","mode":"leased","lease_horizon":"2s","lease_ttl":"1s""#),
            ["store.lease_ttl"]
        );
        assert_eq!(
            fields(r#","mode":"leased","lease_horizon":"2m","lease_ttl":"1h""#),
            ["store.lease_horizon"]
        );
        // Lease settings without leased mode are a mistake, not ignored.
        assert_eq!(fields(r#","lease_max":50"#), ["store.lease_max"]);
        assert!(serde_json::from_str::<RateLimitConfig>(&store(r#","mode":"sloppy""#)).is_err());
    }
}
