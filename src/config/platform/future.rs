//! The front's response future (the protected request's future, or one
//! of the front's own answers and waits) and its response body.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{BoxError, Service};

use super::Shared;
use super::guarded::{Guarded, GuardedBody};
use crate::Rejection;
use crate::concurrency::{Observe, Permit, Queued, Queueing, enqueue, try_admit};
use crate::health::ProbeAnswer;
use crate::rate_limit::Later;
use crate::rate_limit::headers::Rendered;
use crate::rejection::{HttpMode, Protocol, ResponseBody};
use crate::shutdown::{
    DrainBody, Facts, Guard, aborted, close_if_stopping, poll_admitted, poll_unless_aborted, track,
};

/// What an admitted request's future carries besides the inner future.
pub(super) struct Admitted {
    /// The drain's count of the request, until its answer's body ends.
    pub(super) guard: Guard,
    pub(super) facts: Facts,
    pub(super) protocol: Protocol,
    /// The rate limit's headers for the answer.
    pub(super) headers: Option<Box<Rendered>>,
}

/// The state of a request the concurrency limit queued or refused.
/// `service` gives the ready service to call once a slot is granted; it is
/// asked only if the request waits (a refusal takes no copy of it).
pub(super) fn queued<S, B, ReqB>(
    queueing: Queueing,
    service: impl FnOnce() -> S,
    request: Request<ReqB>,
    shared: Arc<Shared<B>>,
) -> Other<S, B, ReqB>
where
    S: Service<Request<ReqB>>,
    B: Service<Request<ReqB>>,
{
    match queueing {
        Queueing::Queued(queued) => Other::Queued {
            waiting: Box::pin(QueuedCall {
                queued,
                service: service(),
                request: Some(request),
                shared,
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
    /// service to call once it has a slot (through the breaker and the
    /// timeout of `shared`).
    struct QueuedCall<S, B, ReqB> {
        #[pin]
        queued: Queued,
        service: S,
        request: Option<Request<ReqB>>,
        shared: Arc<Shared<B>>,
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Platform`](super::Platform).
    pub struct PlatformFuture<S: Service<Request<ReqB>>, B: Service<Request<ReqB>>, ReqB> {
        // The protected request's future in a field of its own rather than
        // in a variant of `other`: it is moved into place once, not into a
        // variant first (the drain's future does the same). Dropped first,
        // then the concurrency slot, then the drain's count.
        #[pin]
        protected: Option<Guarded<S::Future>>,
        // The concurrency limit's slot, until the inner future ends.
        permit: Option<Permit>,
        // The drain's count of the request, until its answer's body ends.
        guard: Option<Guard>,
        facts: Facts,
        protocol: Protocol,
        // The rate limit's headers for an admitted answer.
        headers: Option<Box<Rendered>>,
        #[pin]
        other: Other<S, B, ReqB>,
    }
}

pin_project_lite::pin_project! {
    #[project = OtherProj]
    pub(super) enum Other<S: Service<Request<ReqB>>, B: Service<Request<ReqB>>, ReqB> {
        // A protected request: its future is in `protected`.
        None,
        // Refused by the drain (no guard) or a limit (the guard, let go
        // once the refusal is built).
        Refused { rejection: Option<Box<Rejection>> },
        // Waiting for the rate limit's decision (and the front's state, to
        // call the service through once admitted).
        Later { waiting: Box<(Later<S, ReqB>, Arc<Shared<B>>)> },
        // Waiting in the concurrency limit's queue.
        Queued { waiting: Pin<Box<QueuedCall<S, B, ReqB>>> },
        Probe { answer: Box<ProbeAnswer> },
        // A platform endpoint (`/metrics`): its future, and below the
        // service not ready yet with the request, are boxed. Every variant
        // here holds one pointer at most: these paths are rare (or, for
        // `Later`, wait on Redis or a refusal anyway), and a variant's size
        // is every request's (a larger future is more to move, and under
        // HTTP/2, where each stream is a task of its own, a larger task to
        // allocate: `benches/README.md`, "The front's future").
        Bypass { future: Pin<Box<B::Future>> },
        NotReady { waiting: Box<(B, Option<Request<ReqB>>)> },
        Failed { error: Option<B::Error> },
    }
}

impl<S: Service<Request<ReqB>>, B: Service<Request<ReqB>>, ReqB> PlatformFuture<S, B, ReqB> {
    #[inline]
    pub(super) fn protected(
        future: Guarded<S::Future>,
        permit: Option<Permit>,
        admitted: Admitted,
    ) -> Self {
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

    pub(super) fn waiting(other: Other<S, B, ReqB>, admitted: Admitted) -> Self {
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

    pub(super) fn other(other: Other<S, B, ReqB>, protocol: Protocol) -> Self {
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

impl<S: Service<Request<ReqB>>, B: Service<Request<ReqB>>, ReqB> fmt::Debug
    for PlatformFuture<S, B, ReqB>
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlatformFuture")
    }
}

impl<S, B, ReqB, SB, BB, E> Future for PlatformFuture<S, B, ReqB>
where
    S: Service<Request<ReqB>, Response = Response<SB>, Error = E>,
    B: Service<Request<ReqB>, Response = Response<BB>, Error = E>,
    E: 'static,
{
    type Output = Result<Response<ResponseBody<PlatformBody<GuardedBody<SB>, BB>>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            if let Some(future) = this.protected.as_mut().as_pin_mut() {
                let (protocol, facts) = (*this.protocol, *this.facts);
                return poll_admitted(
                    future,
                    this.guard,
                    facts.http1,
                    cx,
                    |mut result, guard| {
                        if let Some(permit) = this.permit.take() {
                            permit.complete(HttpMode::outcome(&result, protocol));
                        }
                        if let (Some(headers), Ok(res)) = (this.headers.take(), &mut result) {
                            headers.apply(res.headers_mut());
                        }
                        result.map(|res| {
                            track(res, guard, facts, |body| {
                                ResponseBody::new(PlatformBody {
                                    inner: BodyEither::Protected { body },
                                })
                            })
                        })
                    },
                    |rejection| Ok(rejection.into_response(protocol)),
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
                OtherProj::Later { waiting } => {
                    let (later, shared) = &mut **waiting;
                    let guard = this.guard.as_mut().expect("polled after completion");
                    match std::task::ready!(poll_unless_aborted(guard, cx, |cx| {
                        later.poll_settle(cx)
                    })) {
                        Some(Ok((mut service, request, headers))) => {
                            *this.headers = headers;
                            let permit = match shared.concurrency.as_ref() {
                                None => None,
                                Some(limit) => match try_admit(limit, &request) {
                                    Ok(permit) => Some(permit),
                                    Err(wait) => match enqueue(limit, wait) {
                                        Queueing::Granted(permit) => Some(permit),
                                        queueing => {
                                            let shared = Arc::clone(shared);
                                            let other =
                                                queued(queueing, || service, request, shared);
                                            this.other.set(other);
                                            continue;
                                        }
                                    },
                                },
                            };
                            let future = shared.guard.call(&mut service, request, *this.protocol);
                            this.protected.set(Some(future));
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
                            let future =
                                waiting
                                    .shared
                                    .guard
                                    .call(waiting.service, request, *this.protocol);
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
                    .as_mut()
                    .poll(cx)
                    .map(|res| Ok(res.map(ResponseBody::full))),
                OtherProj::Bypass { future } => future.as_mut().poll(cx).map(|r| {
                    r.map(|res| {
                        res.map(|body| {
                            ResponseBody::new(PlatformBody {
                                inner: BodyEither::Bypass { body },
                            })
                        })
                    })
                }),
                OtherProj::NotReady { waiting } => {
                    let (service, request) = &mut **waiting;
                    if let Err(e) = std::task::ready!(service.poll_ready(cx)) {
                        return Poll::Ready(Err(e));
                    }
                    let req = request.take().expect("polled after completion");
                    let future = Box::pin(service.call(req));
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
    /// The response body of [`Platform`](super::Platform): the protected service's body
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
