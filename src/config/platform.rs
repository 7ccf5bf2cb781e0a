//! The stack's front: the probes (answered here, from the health
//! registry), the platform's endpoints (`/metrics`, `grpc.health.v1`),
//! routed around the protections by exact path, and the drain (every other
//! request counted in flight, or refused while draining).

use std::fmt;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{BoxError, Service};

use super::PlatformConfig;
use crate::Rejection;
use crate::concurrency::{
    Observe, Permit, Queued, Queueing, Shared as ConcurrencyShared, Wait, enqueue, try_admit,
};
use crate::health::{ProbeAnswer, ProbeShared, probe_answer};
use crate::rate_limit::headers::Rendered;
use crate::rate_limit::{Decision, Later, Shared as RateLimitShared, defer};
use crate::rejection::{HttpMode, Protocol, ResponseBody};
use crate::shutdown::{
    DrainBody, Facts, Guard, State as DrainState, aborted, close_if_stopping, http_facts, is_owed,
    poll_admitted, poll_unless_aborted, track,
};
use crate::util::lanes::Laned;
use crate::util::poison::lock;

/// The methods of `grpc.health.v1.Health`, matched exactly.
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

/// The stack's outermost service: answers the probes (`probes.*_path`) as
/// [`Probe`](crate::health::Probe) does, sends the platform's endpoints
/// (`platform.paths`, `grpc.health.v1`) to `B`, the application with panic
/// catching only, and every other request to `P`, the application behind
/// the remaining protections, through the drain (counted in flight until
/// its answer's body ends, or refused while draining, as
/// [`Drain`](crate::shutdown::Drain) does), then the rate limit and the
/// concurrency limit when the config has them (as
/// [`RateLimit`](crate::rate_limit::RateLimit) and
/// [`ConcurrencyLimit`](crate::concurrency::ConcurrencyLimit) do). Made by
/// [`RampartLayer`](super::RampartLayer).
///
/// One service (one future, one `Arc`) for these jobs rather than a layer
/// for each: axum clones the stack for every request under
/// `Router::layer`, and each layer adds a reference count, a move of the
/// inner future and a rebuild of the response.
///
/// The bypass copy is shared by every clone behind a `std` mutex, held only
/// while it is called (never across an await): axum clones a route's
/// service for every request (`Router::layer`), and the bypass, an axum
/// `Route` itself there, would otherwise be a boxed clone per request.
/// When it is not ready at once, a clone waits for readiness in the
/// response future, as `tower::util::Oneshot` would.
pub struct Platform<P, B> {
    protected: P,
    /// The probes, the paths, the drain, the limits and the bypass behind
    /// one `Arc`: a clone of the service counts one reference.
    shared: Arc<Shared<B>>,
}

struct Shared<B> {
    probes: Arc<ProbeShared>,
    paths: Arc<PlatformPaths>,
    drain: Arc<Laned<DrainState>>,
    rate_limit: Option<Arc<RateLimitShared>>,
    concurrency: Option<Arc<ConcurrencyShared>>,
    bypass: Mutex<B>,
}

/// What the front serves with, besides the two services.
pub(crate) struct Parts {
    pub(crate) paths: Arc<PlatformPaths>,
    pub(crate) probes: Arc<ProbeShared>,
    pub(crate) drain: Arc<Laned<DrainState>>,
    pub(crate) rate_limit: Option<Arc<RateLimitShared>>,
    pub(crate) concurrency: Option<Arc<ConcurrencyShared>>,
}

impl<P, B> Platform<P, B> {
    pub(crate) fn new(protected: P, bypass: B, parts: Parts) -> Self {
        let Parts {
            paths,
            probes,
            drain,
            rate_limit,
            concurrency,
        } = parts;
        Self {
            protected,
            shared: Arc::new(Shared {
                probes,
                paths,
                drain,
                rate_limit,
                concurrency,
                bypass: Mutex::new(bypass),
            }),
        }
    }

    /// The protected service.
    pub fn get_ref(&self) -> &P {
        &self.protected
    }
}

impl<P: Clone, B> Clone for Platform<P, B> {
    fn clone(&self) -> Self {
        Self {
            protected: self.protected.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<P, B> fmt::Debug for Platform<P, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Platform")
            .field("paths", &self.shared.paths)
            .finish_non_exhaustive()
    }
}

impl<P, B, ReqB, PB, BB> Service<Request<ReqB>> for Platform<P, B>
where
    P: Service<Request<ReqB>, Response = Response<PB>> + Clone,
    P::Error: 'static,
    B: Service<Request<ReqB>, Response = Response<BB>, Error = P::Error> + Clone,
{
    type Response = Response<ResponseBody<PlatformBody<PB, BB>>>;
    type Error = P::Error;
    type Future = PlatformFuture<P, B, ReqB>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // The bypass's readiness is checked when a request goes to it.
        self.protected.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if let Some(answer) = probe_answer(&self.shared.probes, &req) {
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
        PlatformFuture::protected(self.protected.call(req), permit, admitted)
    }
}

/// What an admitted request's future carries besides the inner future.
struct Admitted {
    /// The drain's count of the request, until its answer's body ends.
    guard: Guard,
    facts: Facts,
    protocol: Protocol,
    /// The rate limit's headers for the answer.
    headers: Option<Box<Rendered>>,
}

impl<P, B> Platform<P, B> {
    #[cold]
    fn call_bypass<ReqB>(&mut self, req: Request<ReqB>) -> PlatformFuture<P, B, ReqB>
    where
        P: Service<Request<ReqB>>,
        B: Service<Request<ReqB>> + Clone,
    {
        let mut bypass = lock(&self.shared.bypass);
        let mut cx = Context::from_waker(Waker::noop());
        let other = match bypass.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => Other::Bypass {
                future: bypass.call(req),
            },
            Poll::Ready(Err(error)) => Other::Failed { error: Some(error) },
            Poll::Pending => Other::NotReady {
                service: bypass.clone(),
                request: Some(req),
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
    ) -> PlatformFuture<P, B, ReqB>
    where
        P: Service<Request<ReqB>> + Clone,
        B: Service<Request<ReqB>>,
    {
        let rate_limit = self.shared.rate_limit.as_ref().expect("deciding");
        let other = match defer(rate_limit, &mut self.protected, req, decision) {
            Ok(later) => Other::Later {
                later,
                concurrency: self.shared.concurrency.clone(),
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
    ) -> PlatformFuture<P, B, ReqB>
    where
        P: Service<Request<ReqB>> + Clone,
        B: Service<Request<ReqB>>,
    {
        let limit = self.shared.concurrency.as_ref().expect("limiting");
        match enqueue(limit, wait) {
            Queueing::Granted(permit) => {
                PlatformFuture::protected(self.protected.call(req), Some(permit), admitted)
            }
            queueing => {
                // Take the service that was polled ready; leave a clone.
                let fresh = self.protected.clone();
                let service = std::mem::replace(&mut self.protected, fresh);
                PlatformFuture::waiting(queued(queueing, service, req), admitted)
            }
        }
    }
}

/// The state of a request the concurrency limit queued or refused.
fn queued<P, B, ReqB>(queueing: Queueing, service: P, request: Request<ReqB>) -> Other<P, B, ReqB>
where
    P: Service<Request<ReqB>>,
    B: Service<Request<ReqB>>,
{
    match queueing {
        Queueing::Queued(queued) => Other::Queued {
            waiting: Box::pin(QueuedCall {
                queued,
                service,
                request: Some(request),
            }),
        },
        Queueing::Refused(rejection) => Other::Refused {
            rejection: Some(Box::new(rejection)),
        },
        Queueing::Granted(_) => unreachable!("a granted slot is used at once"),
    }
}

pin_project_lite::pin_project! {
    /// A request waiting in the concurrency limit's queue, with the ready
    /// service to call once it has a slot.
    struct QueuedCall<P, ReqB> {
        #[pin]
        queued: Queued,
        service: P,
        request: Option<Request<ReqB>>,
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Platform`].
    pub struct PlatformFuture<P: Service<Request<ReqB>>, B: Service<Request<ReqB>>, ReqB> {
        // The protected request's future in a field of its own rather than
        // in a variant of `other`: it is moved into place once, not into a
        // variant first (the drain's future does the same). Dropped first,
        // then the concurrency slot, then the drain's count.
        #[pin]
        protected: Option<P::Future>,
        // The concurrency limit's slot, until the inner future ends.
        permit: Option<Permit>,
        // The drain's count of the request, until its answer's body ends.
        guard: Option<Guard>,
        facts: Facts,
        protocol: Protocol,
        // The rate limit's headers for an admitted answer.
        headers: Option<Box<Rendered>>,
        #[pin]
        other: Other<P, B, ReqB>,
    }
}

pin_project_lite::pin_project! {
    #[project = OtherProj]
    enum Other<P: Service<Request<ReqB>>, B: Service<Request<ReqB>>, ReqB> {
        // A protected request: its future is in `protected`.
        None,
        // Refused by the drain (no guard) or a limit (the guard, let go
        // once the refusal is built).
        Refused { rejection: Option<Box<Rejection>> },
        // Waiting for the rate limit's decision.
        Later { later: Later<P, ReqB>, concurrency: Option<Arc<ConcurrencyShared>> },
        // Waiting in the concurrency limit's queue.
        Queued { waiting: Pin<Box<QueuedCall<P, ReqB>>> },
        Probe { answer: ProbeAnswer },
        Bypass { #[pin] future: B::Future },
        NotReady { service: B, request: Option<Request<ReqB>> },
        Failed { error: Option<B::Error> },
    }
}

impl<P: Service<Request<ReqB>>, B: Service<Request<ReqB>>, ReqB> PlatformFuture<P, B, ReqB> {
    #[inline]
    fn protected(future: P::Future, permit: Option<Permit>, admitted: Admitted) -> Self {
        Self {
            protected: Some(future),
            permit,
            guard: Some(admitted.guard),
            facts: admitted.facts,
            protocol: admitted.protocol,
            headers: admitted.headers,
            other: Other::None,
        }
    }

    fn waiting(other: Other<P, B, ReqB>, admitted: Admitted) -> Self {
        Self {
            protected: None,
            permit: None,
            guard: Some(admitted.guard),
            facts: admitted.facts,
            protocol: admitted.protocol,
            headers: admitted.headers,
            other,
        }
    }

    fn other(other: Other<P, B, ReqB>, protocol: Protocol) -> Self {
        Self {
            protected: None,
            permit: None,
            guard: None,
            facts: Facts {
                http1: false,
                grpc: false,
            },
            protocol,
            headers: None,
            other,
        }
    }
}

impl<P: Service<Request<ReqB>>, B: Service<Request<ReqB>>, ReqB> fmt::Debug
    for PlatformFuture<P, B, ReqB>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlatformFuture")
    }
}

impl<P, B, ReqB, PB, BB, E> Future for PlatformFuture<P, B, ReqB>
where
    P: Service<Request<ReqB>, Response = Response<PB>, Error = E>,
    B: Service<Request<ReqB>, Response = Response<BB>, Error = E>,
    E: 'static,
{
    type Output = Result<Response<ResponseBody<PlatformBody<PB, BB>>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(future) = this.protected.as_mut().as_pin_mut() {
                return Poll::Ready(
                    match std::task::ready!(poll_admitted(future, this.guard, this.facts.http1, cx))
                    {
                        Ok((mut result, guard)) => {
                            if let Some(permit) = this.permit.take() {
                                permit.complete(HttpMode::outcome(&result, *this.protocol));
                            }
                            if let (Some(headers), Ok(res)) = (this.headers.take(), &mut result) {
                                headers.apply(res.headers_mut());
                            }
                            result.map(|res| {
                                track(res, guard, *this.facts, |body| {
                                    ResponseBody::new(PlatformBody {
                                        inner: BodyEither::Protected { body },
                                    })
                                })
                            })
                        }
                        Err(rejection) => Ok(rejection.into_response(*this.protocol)),
                    },
                );
            }
            return match this.other.as_mut().project() {
                OtherProj::None => panic!("polled after completion"),
                OtherProj::Refused { rejection } => {
                    let rejection = rejection.take().expect("polled after completion");
                    let mut res = rejection.into_response(*this.protocol);
                    if let Some(headers) = this.headers.take() {
                        headers.apply(res.headers_mut());
                    }
                    if let Some(guard) = this.guard.take() {
                        close_if_stopping(&mut res, &guard, *this.facts);
                    }
                    Poll::Ready(Ok(res))
                }
                OtherProj::Later { later, concurrency } => {
                    let guard = this.guard.as_mut().expect("polled after completion");
                    match std::task::ready!(poll_unless_aborted(guard, cx, |cx| {
                        later.poll_settle(cx)
                    })) {
                        Some(Ok((mut service, request, headers))) => {
                            *this.headers = headers;
                            let permit = match concurrency.as_ref() {
                                None => None,
                                Some(limit) => match try_admit(limit, &request) {
                                    Ok(permit) => Some(permit),
                                    Err(wait) => match enqueue(limit, wait) {
                                        Queueing::Granted(permit) => Some(permit),
                                        queueing => {
                                            this.other.set(queued(queueing, service, request));
                                            continue;
                                        }
                                    },
                                },
                            };
                            this.protected.set(Some(service.call(request)));
                            *this.permit = permit;
                            this.other.set(Other::None);
                            continue;
                        }
                        Some(Err(rejection)) => {
                            this.other.set(Other::Refused {
                                rejection: Some(rejection),
                            });
                            continue;
                        }
                        None => {
                            let rejection = aborted(this.guard, this.facts.http1);
                            Poll::Ready(Ok(rejection.into_response(*this.protocol)))
                        }
                    }
                }
                OtherProj::Queued { waiting } => {
                    let guard = this.guard.as_mut().expect("polled after completion");
                    let waiting = waiting.as_mut().project();
                    match std::task::ready!(poll_unless_aborted(guard, cx, |cx| {
                        waiting.queued.poll_granted(cx)
                    })) {
                        Some(Ok(permit)) => {
                            let request = waiting.request.take().expect("polled after completion");
                            let future = waiting.service.call(request);
                            this.protected.set(Some(future));
                            *this.permit = Some(permit);
                            this.other.set(Other::None);
                            continue;
                        }
                        Some(Err(rejection)) => {
                            this.other.set(Other::Refused {
                                rejection: Some(Box::new(rejection)),
                            });
                            continue;
                        }
                        None => {
                            let rejection = aborted(this.guard, this.facts.http1);
                            Poll::Ready(Ok(rejection.into_response(*this.protocol)))
                        }
                    }
                }
                OtherProj::Probe { answer } => answer
                    .as_mut()
                    .poll(cx)
                    .map(|res| Ok(res.map(ResponseBody::full))),
                OtherProj::Bypass { future } => future.poll(cx).map(|r| {
                    r.map(|res| {
                        res.map(|body| {
                            ResponseBody::new(PlatformBody {
                                inner: BodyEither::Bypass { body },
                            })
                        })
                    })
                }),
                OtherProj::NotReady { service, request } => {
                    if let Err(e) = std::task::ready!(service.poll_ready(cx)) {
                        return Poll::Ready(Err(e));
                    }
                    let req = request.take().expect("polled after completion");
                    let future = service.call(req);
                    this.other.set(Other::Bypass { future });
                    continue;
                }
                OtherProj::Failed { error } => {
                    Poll::Ready(Err(error.take().expect("polled after completion")))
                }
            };
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body of [`Platform`]: the protected service's body
    /// (counted by the drain until it ends) or the platform endpoint's.
    pub struct PlatformBody<P, B> {
        #[pin]
        inner: BodyEither<P, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = BodyProj]
    enum BodyEither<P, B> {
        Protected { #[pin] body: DrainBody<P> },
        Bypass { #[pin] body: B },
    }
}

impl<P, B> fmt::Debug for PlatformBody<P, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlatformBody")
    }
}

impl<P, B> Body for PlatformBody<P, B>
where
    P: Body<Data = Bytes>,
    P::Error: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().inner.project() {
            BodyProj::Protected { body } => body.poll_frame(cx).map_err(Into::into),
            BodyProj::Bypass { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.inner {
            BodyEither::Protected { body } => body.is_end_stream(),
            BodyEither::Bypass { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            BodyEither::Protected { body } => body.size_hint(),
            BodyEither::Bypass { body } => body.size_hint(),
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
