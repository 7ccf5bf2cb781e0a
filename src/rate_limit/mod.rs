//! Rate limiting with GCRA (the algorithm of `governor` and redis-cell):
//! keyed, several quotas at once, bounded memory, honest headers.
//!
//! A [`RateLimitLayer`] holds one or more [`Quota`]s (`10 per second per
//! client IP, burst 20` and `1000 per second overall`). A request is admitted
//! only when every quota admits it, and then consumes from all of them; when
//! any refuses, it consumes from none, and the refusal waits (`Retry-After`)
//! for the quota that needs longest to admit the request's cost, and names
//! it: a client that obeys the wait is not refused again by another quota.
//!
//! ```
//! use std::net::SocketAddr;
//! use http::{Request, Response};
//! use tower::{Service, ServiceExt, service_fn};
//! use tower_rampart::rate_limit::{ClientIp, ClientIpHeader, KeyExtractor, Quota, RateLimitLayer};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let layer = RateLimitLayer::builder()
//!     .name("api")
//!     // Per client IP: 2 per second, at most 2 at once.
//!     .quota(Quota::per_second(2).key(KeyExtractor::client_ip()))
//!     // Everybody together: 1000 per second.
//!     .quota(Quota::per_second(1000).name("global"))
//!     // Behind a load balancer in 10.0.0.0/8 that appends X-Forwarded-For:
//!     // believe that header, from that network only.
//!     .client_ip(
//!         ClientIp::new()
//!             .header(ClientIpHeader::XForwardedFor)
//!             .trusted_proxies(["10.0.0.0/8"])?,
//!     )
//!     .build()?;
//!
//! let mut svc = tower::ServiceBuilder::new()
//!     .layer(layer)
//!     .service(service_fn(|_req: Request<String>| async {
//!         Ok::<_, std::convert::Infallible>(Response::new(String::from("hello")))
//!     }));
//!
//! let request = || {
//!     Request::builder()
//!         .header("x-forwarded-for", "203.0.113.7")
//!         .extension(SocketAddr::from(([10, 0, 0, 1], 5000))) // the proxy
//!         .body(String::new())
//!         .unwrap()
//! };
//! for _ in 0..2 {
//!     let res = svc.ready().await?.call(request()).await?;
//!     assert_eq!(res.status(), 200);
//! }
//! let res = svc.ready().await?.call(request()).await?;
//! assert_eq!(res.status(), 429);
//! assert_eq!(res.headers()["retry-after"], "1");
//! assert_eq!(
//!     res.headers()["ratelimit-policy"],
//!     r#""client-ip";q=2;w=1, "global";q=1000;w=1"#
//! );
//! let live = res.headers()["ratelimit"].to_str()?;
//! assert!(live.starts_with(r#""client-ip";r=0;t=1, "global";r="#));
//! # Ok(())
//! # }
//! ```
//!
//! # What a refusal looks like
//!
//! HTTP: `429 Too Many Requests`, `Retry-After` (whole seconds, rounded up,
//! at least 1), the [IETF fields](headers) `RateLimit-Policy` and `RateLimit`
//! (one item per quota, each as it stays after the refusal: what really
//! remains, which is above 0 when the request costs more than that),
//! optionally `x-ratelimit-*`, and an
//! `application/problem+json` body naming the quota. gRPC (request
//! `content-type: application/grpc*`): a trailers-only response with
//! `grpc-status: 8` (`RESOURCE_EXHAUSTED`), `grpc-retry-pushback-ms` and the
//! same rate-limit headers. A request costing more than a quota's burst is
//! refused without `Retry-After` (it can never be admitted) but with both
//! fields; a request with
//! no key under [`MissingKey::Reject`] gets 400 / `INVALID_ARGUMENT`. With
//! [`RateLimitLayer::into_error_mode`] the refusal is a
//! [`Rejection`](crate::Rejection) inside a `BoxError` instead.
//!
//! # Keys, proxies, memory
//!
//! Quotas are counted by a [`KeyExtractor`]: global, client IP (the peer
//! address, or behind trusted proxies the one forwarding header the
//! operator names; see [`ClientIp`] for the trust model), a header value, the route or path, or a
//! closure. Keyed state is kept per key fingerprint in a bounded table
//! ([`RateLimitBuilder::max_keys`]); idle keys (whose bucket is full again,
//! so forgetting them changes nothing) are evicted by a background task, and
//! a full table evicts the most idle of a small sample. Both are counted.
//!
//! # Across replicas: Redis (feature `redis`)
//!
//! A per-process limit is per replica. With [`RateLimitBuilder::redis`] (or
//! a `store` section in the config) the GCRA state lives in Redis and every
//! replica shares one limit, with the same quotas, keys, headers and
//! metrics. Use it when the limit is a fleet-wide promise; it costs one
//! Redis round trip per decided request (one `EVALSHA` of an atomic Lua
//! script that reads Redis's `TIME`, writes every quota or none and sets a
//! TTL so idle keys expire), tens to hundreds of microseconds instead of a
//! few hundred nanoseconds. Each call has a short timeout and a circuit
//! breaker guards the connection; when Redis is slow or down a
//! [`FailurePolicy`] admits, refuses, or limits in process with a share of
//! each quota. See [`RedisStore`]; [`RateLimitLayer::store_health`] tells
//! whether Redis answers. The store reaches one server, over TLS too
//! (`rediss://`, a private CA, client certificates: feature `redis-tls`),
//! or a Redis Cluster ([`RedisStore::cluster`]: hash-tagged keys keep each
//! decision on one slot, still one round trip).
//!
//! Leased mode ([`RedisMode::Leased`], `mode = "leased"`) trades accuracy
//! for latency: each replica leases a slice of a quota (up to
//! [`Lease::max`] units, sized to its own traffic) in one round trip and
//! decides locally until the slice runs low, so most decisions cost what an
//! in-process decision costs; the fleet may admit up to replicas x
//! `lease_max` per key beyond the limit, and the headers describe this
//! replica's view. Exact mode stays the default.
//!
//! # Other modes
//!
//! - [`RateLimitBuilder::dry_run`]: count and trace what would be refused,
//!   refuse nothing.
//! - [`RateLimitBuilder::allow_keys`] / [`allow_cidrs`](RateLimitBuilder::allow_cidrs):
//!   never limited (CIDRs match the client's own address, before
//!   [`ClientIp::ipv6_prefix`] masks it into a key).
//! - [`RateLimitLayer::peek`]: what each quota holds for a key, consuming
//!   nothing.
//! - [`RateLimitBuilder::wait`]: for outbound calls, wait up to a maximum
//!   delay for room, then refuse.
//!
//! # Metrics and events
//!
//! Install the `metrics` recorder before building layers: handles are
//! registered once, at build.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `rampart_rate_limit_admitted_total` | counter | `name` | requests admitted (including dry-run would-be refusals; counted per thread, added every 250 ms) |
//! | `rampart_rate_limit_refused_total` | counter | `name`, `quota`, `reason` | requests refused; `reason` is `exhausted`, `too-costly`, `missing-key` or `store-unavailable` (Redis store, fail closed) |
//! | `rampart_rate_limit_dry_run_refusals_total` | counter | `name`, `quota`, `reason` | requests dry-run mode would have refused |
//! | `rampart_rate_limit_allowlisted_total` | counter | `name` | requests let through by the allow-lists (counted per thread, added every 250 ms) |
//! | `rampart_rate_limit_keys` | gauge | `name`, `quota` | keys tracked by a keyed quota (in-process store; leased mode's slices) |
//! | `rampart_rate_limit_evictions_total` | counter | `name`, `quota`, `reason` | keys evicted; `reason` is `idle` or `capacity` |
//! | `rampart_rate_limit_decisions_total` | counter | `name`, `path` | Redis store only: decisions by path, `redis`, `fallback`, `fail_open` or `fail_closed`; leased mode: `lease` (from this replica's slice, no round trip) or `lease_refresh` (after a refresh the request waited for) |
//! | `rampart_rate_limit_lease_refreshes_total` | counter | `name` | leased mode: lease script calls (round trips), ahead of need or on a miss |
//!
//! | event | target | level | fields |
//! |---|---|---|---|
//! | `rate limit refused a request` | `tower_rampart::rate_limit` | DEBUG | `name`, `quota`, `reason`, `retry_after_ms`, `dry_run` |
//! | `rate limit store unavailable, using the failure policy` | `tower_rampart::rate_limit` | WARN | `name`, `from`, `to` (Redis store) |
//! | `rate limit store recovered` | `tower_rampart::rate_limit` | INFO | `name`, `from`, `to` (Redis store) |
//! | `rate limit store call failed` | `tower_rampart::rate_limit` | DEBUG | `name`, `error` (Redis store) |

// The rooms, for a newcomer: `layer.rs` the layer and its builder (the
// checks); `engine.rs` the shared state and the decision for a request;
// `future.rs` the response future; `gcra.rs` the arithmetic (pure);
// `store.rs` where state lives (`Store`: in process or Redis) and its
// health; `memory.rs` the in-process store on the shared bounded
// `util::keyed_map`; `redis.rs` the Redis store and its Lua script;
// `lease.rs` its leased mode (slices of a quota leased from Redis, spent
// in process); `key.rs` key extractors and fingerprints; `client_ip.rs` the
// trusted-proxy walk; `quota.rs`, `headers.rs`, `error.rs`, `config.rs`.
mod client_ip;
mod clock;
#[cfg(feature = "config")]
mod config;
mod engine;
mod error;
mod future;
mod gcra;
pub mod headers;
mod key;
mod layer;
#[cfg(feature = "redis")]
mod lease;
mod memory;
mod quota;
#[cfg(feature = "redis")]
mod redis;
mod store;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::Service;

pub use client_ip::{ClientIp, ClientIpHeader};
pub use clock::{TokioClock, TokioInstant};
#[cfg(feature = "config")]
pub use config::{
    FailureConfig, QuotaConfig, RateLimitConfig, RedisConfig, RedisModeConfig, RedisTlsConfig,
    StoreConfig,
};
pub use error::RefusalReason;
pub use future::ResponseFuture;
pub use key::{Key, KeyExtractor, RequestInfo};
pub use layer::{MissingKey, QuotaState, RateLimitBuilder, RateLimitLayer};
#[cfg(feature = "redis")]
pub use lease::{Lease, RedisMode};
pub use quota::{Quota, Rate};
#[cfg(feature = "redis-tls")]
pub use redis::RedisTls;
#[cfg(feature = "redis")]
pub use redis::{FailurePolicy, RedisStore};
pub use store::{StoreHealth, StoreState};

pub(crate) use self::engine::{Decision, Shared};
pub(crate) use self::future::Later;
use self::future::Waiting;
use crate::rejection::{HttpMode, Mode};

use crate::metrics_help::{Help, MetricKind};
use metrics::Unit;

/// The `# HELP` text and unit of every metric this module records,
/// described to the recorder when the layer registers its metrics.
pub(crate) const METRICS: &[Help] = &[
    Help {
        name: "rampart_rate_limit_admitted_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Requests admitted by the rate limit.",
    },
    Help {
        name: "rampart_rate_limit_refused_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Requests refused by the rate limit, by quota and reason.",
    },
    Help {
        name: "rampart_rate_limit_dry_run_refusals_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Requests a dry-run rate limit would have refused, by quota and reason.",
    },
    Help {
        name: "rampart_rate_limit_allowlisted_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Requests that skipped the rate limit through its allow list.",
    },
    Help {
        name: "rampart_rate_limit_keys",
        kind: MetricKind::Gauge,
        unit: Some(Unit::Count),
        text: "Keys currently tracked by a keyed rate-limit quota.",
    },
    Help {
        name: "rampart_rate_limit_evictions_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Rate-limit keys evicted, by quota and reason (idle, capacity).",
    },
    Help {
        name: "rampart_rate_limit_decisions_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Rate-limit decisions of the Redis store, by the path they took (redis, fallback, fail_open, fail_closed, lease, lease_refresh).",
    },
    Help {
        name: "rampart_rate_limit_lease_refreshes_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Lease refreshes (Redis round trips) of a rate limit's Redis store in leased mode.",
    },
];

/// The most quotas one layer may have.
pub const MAX_QUOTAS: usize = 8;

/// The rate-limited service made by [`RateLimitLayer`].
///
/// The inner service must be `Clone` (axum and tonic services are): in
/// waiting mode a waiting request holds the ready inner service and leaves a
/// clone in its place.
pub struct RateLimit<S, M = HttpMode> {
    inner: S,
    shared: Arc<Shared>,
    _mode: PhantomData<fn() -> M>,
}

impl<S, M> RateLimit<S, M> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Shared>) -> Self {
        Self {
            inner,
            shared,
            _mode: PhantomData,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, M> Clone for RateLimit<S, M> {
    fn clone(&self) -> Self {
        Self::from_shared(self.inner.clone(), Arc::clone(&self.shared))
    }
}

impl<S: fmt::Debug, M> fmt::Debug for RateLimit<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RateLimit")
            .field("name", &self.shared.name)
            .field("inner", &self.inner)
            .finish()
    }
}

impl<S, ReqB, ResB, M> Service<Request<ReqB>> for RateLimit<S, M>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
    M: Mode<Request<ReqB>, Response<ResB>, S::Error>,
{
    type Response = M::Response;
    type Error = M::Error;
    type Future = ResponseFuture<S, ReqB, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self.inner.poll_ready(cx) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(())),
            Poll::Ready(Err(e)) => Poll::Ready(M::admitted(Err(e)).map(|_| ())),
            Poll::Pending => Poll::Pending,
        }
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        // One clock reading for the decision and every layer below.
        let _clock = crate::util::clock::pin();
        if self.shared.admit_global() {
            return ResponseFuture::called(self.inner.call(req), None);
        }
        self.decide_and_call(req)
    }
}

impl<S, M> RateLimit<S, M> {
    /// [`Service::call`] for a request the limit must look at. Not inlined:
    /// a request lent to the decision is copied, once, here and not on the
    /// way of a request [`Shared::admit_global`] admits.
    #[inline(never)]
    fn decide_and_call<ReqB, ResB>(&mut self, req: Request<ReqB>) -> ResponseFuture<S, ReqB, M>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>> + Clone,
        M: Mode<Request<ReqB>, Response<ResB>, S::Error>,
    {
        match self.shared.decide(&req) {
            Decision::Admit(headers) => ResponseFuture::called(self.inner.call(req), headers),
            decision => {
                let cx = M::context(&req);
                match defer(&self.shared, &mut self.inner, req, decision) {
                    Ok(later) => ResponseFuture::later(later, cx),
                    Err(rejection) => ResponseFuture::rejected(rejection, cx),
                }
            }
        }
    }
}

/// A request the rate limit did not admit at once (`decision` is not
/// `Admit`): its refusal, or the [`Later`] that will settle it, holding the
/// ready `inner` (replaced in place by a clone) and the request. Used by the
/// rate limit and by the stack's front.
pub(crate) fn defer<S, ReqB>(
    shared: &Arc<Shared>,
    inner: &mut S,
    req: Request<ReqB>,
    decision: Decision,
) -> Result<Later<S, ReqB>, Box<crate::Rejection>>
where
    S: Service<Request<ReqB>> + Clone,
{
    let mut take_ready = || {
        let fresh = inner.clone();
        std::mem::replace(inner, fresh)
    };
    match decision {
        Decision::Admit(_) => unreachable!("an admitted request is called in place"),
        Decision::Refuse(rejection) => Err(rejection),
        #[cfg(feature = "redis")]
        Decision::Deciding(future) => Ok(Later::Deciding(Box::new(future::Deciding {
            future,
            service: Some(take_ready()),
            request: Some(req),
            shared: Arc::clone(shared),
        }))),
        Decision::Wait { wait, slots, .. } => {
            let max = shared.wait.unwrap_or(wait);
            let now = crate::util::clock::now();
            Ok(Later::Waiting(Box::new(Waiting {
                sleep: Box::pin(tokio::time::sleep_until(now + wait)),
                deadline: now + max,
                service: Some(take_ready()),
                request: Some(req),
                slots: slots.map(|s| *s).unwrap_or_default(),
                shared: Arc::clone(shared),
            })))
        }
    }
}
