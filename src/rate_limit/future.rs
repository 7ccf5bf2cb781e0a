//! The rate limit's response future.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{Request, Response};
use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};
use tower::Service;

use super::engine::{Decision, Shared, Slots};
use super::headers::Rendered;
use crate::Rejection;
use crate::rejection::Mode;

/// A request waiting for room (waiting mode only; boxed, off the happy path).
pub(crate) struct Waiting<S, ReqB> {
    pub(crate) sleep: Pin<Box<Sleep>>,
    pub(crate) deadline: Instant,
    pub(crate) service: Option<S>,
    pub(crate) request: Option<Request<ReqB>>,
    pub(crate) slots: Slots,
    pub(crate) shared: Arc<Shared>,
}

/// A request whose decision the Redis store is making (boxed: off the
/// in-process path).
#[cfg(feature = "redis")]
pub(crate) struct Deciding<S, ReqB> {
    pub(crate) future: super::redis::Deciding,
    pub(crate) service: Option<S>,
    pub(crate) request: Option<Request<ReqB>>,
    pub(crate) shared: Arc<Shared>,
}

/// A request the rate limit has neither admitted nor refused yet: waiting
/// for room, or for the Redis store's answer. Holds a ready copy of the
/// inner service and the request, handed back once admitted. Used by the
/// rate limit's future and by the stack's front.
pub(crate) enum Later<S, ReqB> {
    /// Waiting mode: asleep until the quota has room.
    Waiting(Box<Waiting<S, ReqB>>),
    /// The Redis store is deciding.
    #[cfg(feature = "redis")]
    Deciding(Box<Deciding<S, ReqB>>),
}

/// The ready inner service, the request and the headers for its response,
/// or the refusal: what a [`Later`] ends in.
pub(crate) type Settled<S, ReqB> =
    Result<(S, Request<ReqB>, Option<Box<Rendered>>), Box<Rejection>>;

impl<S, ReqB> Later<S, ReqB>
where
    S: Service<Request<ReqB>>,
{
    /// Drives the decision; once admitted, hands back the ready inner
    /// service and the request, for the caller to call.
    pub(crate) fn poll_settle(&mut self, cx: &mut Context<'_>) -> Poll<Settled<S, ReqB>> {
        match self {
            #[cfg(feature = "redis")]
            Self::Deciding(deciding) => {
                let (slots, outcome) = ready!(deciding.future.as_mut().poll(cx));
                Poll::Ready(match deciding.shared.finish_remote(&slots, outcome) {
                    Decision::Refuse(rejection) => Err(rejection),
                    Decision::Admit(headers) => {
                        let (Some(service), Some(request)) =
                            (deciding.service.take(), deciding.request.take())
                        else {
                            panic!("polled after completion");
                        };
                        Ok((service, request, headers))
                    }
                    _ => unreachable!("the redis store neither waits nor defers"),
                })
            }
            Self::Waiting(waiting) => loop {
                ready!(waiting.sleep.as_mut().poll(cx));
                let waiting = &mut **waiting;
                let decision = match waiting.shared.acquire(&mut waiting.slots) {
                    Decision::Wait { wait, quota, .. }
                        if Instant::now() + wait > waiting.deadline =>
                    {
                        waiting.shared.refuse_exhausted(&waiting.slots, quota, wait)
                    }
                    other => other,
                };
                match decision {
                    Decision::Admit(headers) => {
                        let (Some(service), Some(request)) =
                            (waiting.service.take(), waiting.request.take())
                        else {
                            panic!("polled after completion");
                        };
                        return Poll::Ready(Ok((service, request, headers)));
                    }
                    Decision::Wait { wait, .. } => {
                        waiting.sleep.as_mut().reset(Instant::now() + wait);
                    }
                    #[cfg(feature = "redis")]
                    Decision::Deciding(_) => {
                        unreachable!("waiting mode never uses the redis store")
                    }
                    Decision::Refuse(rejection) => return Poll::Ready(Err(rejection)),
                }
            },
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F, S, ReqB, C> {
        Called { #[pin] future: F, headers: Option<Box<Rendered>> },
        Rejected { rejection: Option<Box<Rejection>>, cx: C },
        Later { later: Later<S, ReqB>, cx: C },
    }
}

pin_project! {
    /// The response future of [`RateLimit`](super::RateLimit).
    pub struct ResponseFuture<S, ReqB, M>
    where
        S: Service<Request<ReqB>>,
        M: Mode<Request<ReqB>, S::Response, S::Error>,
    {
        #[pin]
        state: State<S::Future, S, ReqB, M::Context>,
    }
}

impl<S, ReqB, M> ResponseFuture<S, ReqB, M>
where
    S: Service<Request<ReqB>>,
    M: Mode<Request<ReqB>, S::Response, S::Error>,
{
    #[inline]
    pub(crate) fn called(future: S::Future, headers: Option<Box<Rendered>>) -> Self {
        Self {
            state: State::Called { future, headers },
        }
    }

    pub(crate) fn rejected(rejection: Box<Rejection>, cx: M::Context) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(rejection),
                cx,
            },
        }
    }

    pub(crate) fn later(later: Later<S, ReqB>, cx: M::Context) -> Self {
        Self {
            state: State::Later { later, cx },
        }
    }
}

impl<S, ReqB, ResB, M> Future for ResponseFuture<S, ReqB, M>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    M: Mode<Request<ReqB>, Response<ResB>, S::Error>,
{
    type Output = Result<M::Response, M::Error>;

    /// An admitted request's poll inline; a refusal or a wait out of line.
    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if let StateProj::Called { future, headers } = self.as_mut().project().state.project() {
            let mut result = ready!(future.poll(cx));
            if let Some(h) = headers.take() {
                if let Ok(res) = &mut result {
                    h.apply(res.headers_mut());
                }
            }
            return Poll::Ready(M::admitted(result));
        }
        self.poll_other(cx)
    }
}

impl<S, ReqB, ResB, M> ResponseFuture<S, ReqB, M>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    M: Mode<Request<ReqB>, Response<ResB>, S::Error>,
{
    /// A refused or waiting request's poll (and an admitted one's, once
    /// its wait is over).
    #[cold]
    fn poll_other(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<M::Response, M::Error>> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Called { future, headers } => {
                    let mut result = ready!(future.poll(cx));
                    if let Some(h) = headers.take() {
                        if let Ok(res) = &mut result {
                            h.apply(res.headers_mut());
                        }
                    }
                    return Poll::Ready(M::admitted(result));
                }
                StateProj::Rejected { rejection, cx } => {
                    let rejection = rejection
                        .take()
                        .expect("ResponseFuture polled after completion");
                    return Poll::Ready(M::rejected(*cx, *rejection));
                }
                StateProj::Later { later, cx: context } => {
                    let context = *context;
                    match ready!(later.poll_settle(cx)) {
                        Ok((mut service, request, headers)) => {
                            let future = service.call(request);
                            this.state.set(State::Called { future, headers });
                        }
                        Err(rejection) => this.state.set(State::Rejected {
                            rejection: Some(rejection),
                            cx: context,
                        }),
                    }
                }
            }
        }
    }
}

impl<S, ReqB, M> fmt::Debug for ResponseFuture<S, ReqB, M>
where
    S: Service<Request<ReqB>>,
    M: Mode<Request<ReqB>, S::Response, S::Error>,
{
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("rate_limit::ResponseFuture")
    }
}
