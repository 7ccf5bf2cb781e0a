//! The layer and its builder: settings, their checks, and the handles an
//! application reads the layer's state through. The shared state and the
//! decision are the engine's ([`super::engine`]).

use std::borrow::Cow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::client_ip::{ClientIp, parse_cidrs};
use super::engine::Shared;
use super::key::{Key, RequestInfo};
use super::quota::Quota;
use super::store::StoreHealth;
use super::{MAX_QUOTAS, RateLimit};
use crate::ConfigError;
use crate::config_util::{HOUR, MINUTE, at_most};
use crate::rejection::{ErrorMode, HttpMode};

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
    /// ([`RejectionKind::InvalidRequest`](crate::RejectionKind::InvalidRequest)).
    Reject,
}

pub(super) type CostFn = dyn Fn(&RequestInfo<'_>) -> u32 + Send + Sync;

/// Builds a [`RateLimitLayer`]; every setting is checked by
/// [`build`](Self::build).
#[must_use]
pub struct RateLimitBuilder {
    pub(super) name: Cow<'static, str>,
    pub(super) quotas: Vec<Quota>,
    pub(super) client_ip: ClientIp,
    pub(super) missing_key: MissingKey,
    pub(super) cost: Option<Arc<CostFn>>,
    pub(super) max_keys: usize,
    pub(super) idle_sweep: Option<Duration>,
    pub(super) dry_run: bool,
    pub(super) admitted_headers: bool,
    pub(super) legacy_headers: bool,
    pub(super) allow_keys: Vec<Key>,
    pub(super) allow_cidrs: Vec<String>,
    pub(super) wait: Option<Duration>,
    #[cfg(feature = "redis")]
    pub(super) redis: Option<super::redis::RedisStore>,
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

    /// Checks the settings and builds the layer (the first problem
    /// found is returned).
    pub fn build(self) -> Result<RateLimitLayer, ConfigError> {
        if let Some(problem) = self.problems().into_iter().next() {
            return Err(problem);
        }
        Ok(RateLimitLayer {
            shared: Shared::new(self)?,
            _mode: PhantomData,
        })
    }

    /// Every problem with the settings, each named by its key path: the
    /// checks [`build`](Self::build) makes, without building anything.
    pub(crate) fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        let mut ok = |r: Result<(), ConfigError>| {
            if let Err(e) = r {
                problems.push(e);
            }
        };
        if self.name.is_empty() {
            ok(Err(ConfigError::new("name", "must not be empty")));
        }
        if self.quotas.is_empty() {
            ok(Err(ConfigError::new(
                "quotas",
                "at least one quota is required",
            )));
        }
        if self.quotas.len() > MAX_QUOTAS {
            ok(Err(ConfigError::new(
                "quotas",
                format!("at most {MAX_QUOTAS} quotas per layer"),
            )));
        }
        let mut names: Vec<Cow<'_, str>> = Vec::with_capacity(self.quotas.len());
        for (i, q) in self.quotas.iter().enumerate() {
            let at = format!("quotas[{i}]");
            ok(q.gcra().map(drop).map_err(|e| e.at(&at)));
            let name = q.display_name();
            if names.contains(&name) {
                ok(Err(ConfigError::new(
                    "name",
                    format!("`{name}` is already the name of another quota"),
                )
                .at(&at)));
            }
            names.push(name);
        }
        if self.max_keys == 0 {
            ok(Err(ConfigError::new(
                "max_keys",
                crate::config_util::MUST_BE_POSITIVE,
            )));
        }
        match self.idle_sweep {
            Some(d) if d.is_zero() => ok(Err(ConfigError::new(
                "idle_sweep",
                crate::config_util::MUST_BE_POSITIVE,
            ))),
            Some(d) => ok(at_most("idle_sweep", d, HOUR)),
            None => {}
        }
        match self.wait {
            Some(d) if d.is_zero() => ok(Err(ConfigError::new(
                "wait",
                crate::config_util::MUST_BE_POSITIVE,
            ))),
            Some(d) => ok(at_most("wait", d, 10 * MINUTE)),
            None => {}
        }
        ok(self.client_ip.validate());
        ok(parse_cidrs(&self.allow_cidrs, "allow_cidrs").map(drop));
        #[cfg(feature = "redis")]
        if let Some(store) = &self.redis {
            if self.wait.is_some() {
                ok(Err(ConfigError::new(
                    "wait",
                    "waiting mode is not available with the redis store",
                )));
            }
            problems.extend(store.problems(&self.name));
        }
        problems
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

    /// Refusals become errors (a boxed [`Rejection`](crate::Rejection)) instead of responses.
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
        self.shared.store.sweep()
    }

    /// The health of the store that keeps quota state (always available
    /// in process; with Redis, whether Redis answers): read it for a
    /// readiness probe, or isolate Redis by hand.
    pub fn store_health(&self) -> StoreHealth {
        self.shared.store.health()
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
        self.shared.peek(key)
    }
}

/// What one quota holds for a key, read by [`RateLimitLayer::peek`]
/// without consuming anything: the numbers behind the `RateLimit` field's
/// `r` and `t` and `x-ratelimit-reset` (unrounded), and the `Retry-After` a
/// request of cost 1 would get.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaState {
    pub(super) name: Arc<str>,
    pub(super) limit: u32,
    pub(super) remaining: u32,
    pub(super) reset: Duration,
    pub(super) window: Duration,
    pub(super) retry_after: Duration,
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
