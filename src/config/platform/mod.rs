//! The stack's front: the probes (answered here, from the health
//! registry), the platform's endpoints (`/metrics`, `grpc.health.v1`),
//! routed around the protections by exact path, and for every other request
//! the drain, the rate limit and the concurrency limit, then the circuit
//! breaker, the timeout and the panic catcher (`guarded.rs`), each through
//! that layer's own code. The response future and body are in `future.rs`.

mod future;
mod guarded;

use std::fmt;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use http::{Request, Response};
use tower::Service;

use super::PlatformConfig;
use crate::concurrency::{Queueing, Shared as ConcurrencyShared, Wait, enqueue, try_admit};
use crate::health::{ProbeShared, probe_answer};
use crate::rate_limit::{Decision, Shared as RateLimitShared, defer};
use crate::rejection::{Protocol, ResponseBody};
use crate::shutdown::{State as DrainState, http_facts, is_owed};
use crate::util::lanes::Laned;
use crate::util::poison::lock;

use self::future::{Admitted, Other, queued};
pub use self::future::{PlatformBody, PlatformFuture};
pub(crate) use self::guarded::Guard;
pub use self::guarded::GuardedBody;

const GRPC_HEALTH_METHODS: [&str; 3] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
];

/// The exact paths that bypass the protections.
pub(crate) struct PlatformPaths {
    paths: Box<[Box<str>]>,
    grpc_health: bool,
}

impl PlatformPaths {
    pub(crate) fn new(config: &PlatformConfig) -> Self {
        Self {
            paths: config.paths.iter().map(|p| p.as_str().into()).collect(),
            grpc_health: config.grpc_health,
        }
    }

    /// Is `path` one of the platform's endpoints? Exact comparisons only
    /// (a length check first), no allocation.
    #[inline]
    pub(crate) fn matches(&self, path: &str) -> bool {
        self.paths.iter().any(|p| **p == *path)
            || (self.grpc_health
                && path.starts_with("/grpc.health.v1.Health/")
                && GRPC_HEALTH_METHODS.contains(&path))
    }
}

impl fmt::Debug for PlatformPaths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformPaths")
            .field("paths", &self.paths)
            .field("grpc_health", &self.grpc_health)
            .finish()
    }
}

/// The stack: answers the probes (`probes.*_path`) as
/// [`Probe`](crate::health::Probe) does, sends the platform's endpoints
/// (`platform.paths`, `grpc.health.v1`) to `B`, the application with panic
/// catching only, and every other request to `S`, the application, through
/// the drain (counted in flight until its answer's body ends, or refused
/// while draining, as [`Drain`](crate::shutdown::Drain) does), the rate
/// limit and the concurrency limit when the config has them (as
/// [`RateLimit`](crate::rate_limit::RateLimit) and
/// [`ConcurrencyLimit`](crate::concurrency::ConcurrencyLimit) do), the
/// circuit breaker (one, or one per route: [`RouteKey`](super::RouteKey)),
/// the timeout (as [`Timeout`](crate::timeout::Timeout) does) and a panic
/// catcher (as [`CatchPanic`](super::CatchPanic) does). Made by
/// [`RampartLayer`](super::RampartLayer).
///
/// One service (one future, one `Arc`) for these jobs rather than a layer
/// for each: axum clones the stack for every request under
/// `Router::layer`, and each layer would add a reference count, a move of
/// the inner future and a rebuild of the response.
///
/// The bypass copy is shared by every clone behind a `std` mutex, held only
/// while it is called (never across an await): axum clones a route's
/// service for every request (`Router::layer`), and the bypass, an axum
/// `Route` itself there, would otherwise be a boxed clone per request.
/// When it is not ready at once, a clone waits for readiness in the
/// response future, as `tower::util::Oneshot` would.
pub struct Platform<S, B> {
    protected: S,
    /// The probes, the paths, the drain, the limits, the breaker, the
    /// timeout and the bypass behind one `Arc`: a clone of the service
    /// counts one reference.
    shared: Arc<Shared<B>>,
}

struct Shared<B> {
    probes: Arc<ProbeShared>,
    paths: Arc<PlatformPaths>,
    drain: Arc<Laned<DrainState>>,
    rate_limit: Option<Arc<RateLimitShared>>,
    concurrency: Option<Arc<Laned<ConcurrencyShared>>>,
    guard: Guard,
    bypass: Mutex<B>,
}

/// What the front serves with, besides the two services.
pub(crate) struct Parts {
    pub(crate) paths: Arc<PlatformPaths>,
    pub(crate) probes: Arc<ProbeShared>,
    pub(crate) drain: Arc<Laned<DrainState>>,
    pub(crate) rate_limit: Option<Arc<RateLimitShared>>,
    pub(crate) concurrency: Option<Arc<Laned<ConcurrencyShared>>>,
    pub(crate) guard: Guard,
}

impl<S, B> Platform<S, B> {
    pub(crate) fn new(protected: S, bypass: B, parts: Parts) -> Self {
        let Parts {
            paths,
            probes,
            drain,
            rate_limit,
            concurrency,
            guard,
        } = parts;
        Self {
            protected,
            shared: Arc::new(Shared {
                probes,
                paths,
                drain,
                rate_limit,
                concurrency,
                guard,
                bypass: Mutex::new(bypass),
            }),
        }
    }

    /// The application behind the protections.
    pub fn get_ref(&self) -> &S {
        &self.protected
    }
}

impl<S: Clone, B> Clone for Platform<S, B> {
    fn clone(&self) -> Self {
        Self {
            protected: self.protected.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S, B> fmt::Debug for Platform<S, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Platform")
            .field("paths", &self.shared.paths)
            .finish_non_exhaustive()
    }
}

impl<S, B, ReqB, SB, BB> Service<Request<ReqB>> for Platform<S, B>
where
    S: Service<Request<ReqB>, Response = Response<SB>> + Clone,
    S::Error: 'static,
    B: Service<Request<ReqB>, Response = Response<BB>, Error = S::Error> + Clone,
{
    type Response = Response<ResponseBody<PlatformBody<GuardedBody<SB>, BB>>>;
    type Error = S::Error;
    type Future = PlatformFuture<S, B, ReqB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The bypass's readiness is checked when a request goes to it.
        self.protected.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if let Some(answer) = probe_answer(&self.shared.probes, &req) {
            let answer = Box::new(answer);
            return PlatformFuture::other(Other::Probe { answer }, Protocol::Http);
        }
        if self.shared.paths.matches(req.uri().path()) {
            return self.call_bypass(req);
        }
        let protocol = Protocol::of(&req);
        let facts = http_facts(&req, protocol);
        let Some(guard) = self.shared.drain.admit_unless_draining(|| is_owed(&req)) else {
            let rejection = self.shared.drain.draining_rejection(facts.http1);
            return PlatformFuture::other(
                Other::Refused {
                    rejection: Some(Box::new(rejection)),
                },
                protocol,
            );
        };
        let mut admitted = Admitted {
            guard,
            facts,
            protocol,
            headers: None,
        };
        // The layers below read the protocol from the pin.
        let _pin = protocol.pin(req.headers());
        // With a rate limit: one clock reading for its decision and every
        // layer below.
        let _clock = self
            .shared
            .rate_limit
            .as_ref()
            .map(|_| crate::util::clock::pin());
        if let Some(rate_limit) = &self.shared.rate_limit {
            match rate_limit.decide(&req) {
                Decision::Admit(headers) => admitted.headers = headers,
                decision => return self.call_deferred(req, decision, admitted),
            }
        }
        let permit = match &self.shared.concurrency {
            None => None,
            Some(limit) => match try_admit(limit, &req) {
                Ok(permit) => Some(permit),
                Err(wait) => return self.call_queued(req, wait, admitted),
            },
        };
        let future = self.shared.guard.call(&mut self.protected, req, protocol);
        PlatformFuture::protected(future, permit, admitted)
    }
}

impl<S, B> Platform<S, B> {
    #[cold]
    fn call_bypass<ReqB>(&mut self, req: Request<ReqB>) -> PlatformFuture<S, B, ReqB>
    where
        S: Service<Request<ReqB>>,
        B: Service<Request<ReqB>> + Clone,
    {
        let mut bypass = lock(&self.shared.bypass);
        let mut cx = Context::from_waker(Waker::noop());
        let other = match bypass.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Other::Bypass {
                future: Box::pin(bypass.call(req)),
            },
            Poll::Ready(Err(error)) => Other::Failed { error: Some(error) },
            Poll::Pending => Other::NotReady {
                waiting: Box::new((bypass.clone(), Some(req))),
            },
        };
        PlatformFuture::other(other, Protocol::Http)
    }

    /// A request the rate limit did not admit at once: refused, or left to
    /// wait (still counted in flight by the drain).
    #[cold]
    fn call_deferred<ReqB>(
        &mut self,
        req: Request<ReqB>,
        decision: Decision,
        admitted: Admitted,
    ) -> PlatformFuture<S, B, ReqB>
    where
        S: Service<Request<ReqB>> + Clone,
        B: Service<Request<ReqB>>,
    {
        let rate_limit = self.shared.rate_limit.as_ref().expect("deciding");
        let other = match defer(rate_limit, &mut self.protected, req, decision) {
            Ok(later) => Other::Later {
                waiting: Box::new((later, Arc::clone(&self.shared))),
            },
            Err(rejection) => Other::Refused {
                rejection: Some(rejection),
            },
        };
        PlatformFuture::waiting(other, admitted)
    }

    /// A request the concurrency limit had no free slot for: queued or
    /// refused.
    #[cold]
    fn call_queued<ReqB>(
        &mut self,
        req: Request<ReqB>,
        wait: Wait,
        admitted: Admitted,
    ) -> PlatformFuture<S, B, ReqB>
    where
        S: Service<Request<ReqB>> + Clone,
        B: Service<Request<ReqB>>,
    {
        let limit = self.shared.concurrency.as_ref().expect("limiting");
        match enqueue(limit, wait) {
            Queueing::Granted(permit) => {
                let protocol = admitted.protocol;
                let future = self.shared.guard.call(&mut self.protected, req, protocol);
                PlatformFuture::protected(future, Some(permit), admitted)
            }
            queueing => {
                // A waiting request takes the service that was polled ready
                // and leaves a clone.
                let ready = || {
                    let fresh = self.protected.clone();
                    std::mem::replace(&mut self.protected, fresh)
                };
                let shared = Arc::clone(&self.shared);
                PlatformFuture::waiting(queued(queueing, ready, req, shared), admitted)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_paths_only() {
        let p = PlatformPaths::new(&PlatformConfig::default());
        assert!(p.matches("/metrics"));
        for other in [
            "/metrics/",
            "/metrics/x",
            "/metricsx",
            "/metrics/../api/x",
            "/METRICS",
            "/",
            "",
            "/grpc.health.v1.Health/",
            "/grpc.health.v1.Health/Check/x",
            "/grpc.health.v1.Health/Other",
            "/grpc.health.v1.Healthz/Check",
        ] {
            assert!(!p.matches(other), "{other}");
        }
        for m in GRPC_HEALTH_METHODS {
            assert!(p.matches(m));
        }
        let p = PlatformPaths::new(&PlatformConfig {
            paths: vec![],
            grpc_health: false,
        });
        assert!(!p.matches("/metrics"));
        assert!(!p.matches("/grpc.health.v1.Health/Check"));
    }
}
