//! The drain layer's response future and body.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::BoxError;

use super::state::Guard;
use super::{DrainMode, Facts};
use crate::Rejection;
use crate::rejection::{HttpMode, Protocol};

pin_project! {
    /// The response future of [`Drain`](super::Drain): the inner future,
    /// raced against the coordinator's abort signal, or a refusal.
    pub struct ResponseFuture<F, Req, M = HttpMode, C = Protocol> {
        // Flat fields rather than an enum of the two cases: the inner
        // future is moved into place once, not into a variant first.
        #[pin]
        future: Option<F>,
        guard: Option<Guard>,
        rejection: Option<Box<Rejection>>,
        cx: C,
        facts: Facts,
        _mode: PhantomData<fn(Req) -> M>,
    }
}

impl<F, Req, M, C> ResponseFuture<F, Req, M, C> {
    #[inline]
    pub(crate) fn admitted(future: F, guard: Guard, cx: C, facts: Facts) -> Self {
        Self {
            future: Some(future),
            guard: Some(guard),
            rejection: None,
            cx,
            facts,
            _mode: PhantomData,
        }
    }

    pub(crate) fn rejected(rejection: Rejection, cx: C, facts: Facts) -> Self {
        Self {
            future: None,
            guard: None,
            rejection: Some(Box::new(rejection)),
            cx,
            facts,
            _mode: PhantomData,
        }
    }
}

impl<F, Req, M, C, Res, E> Future for ResponseFuture<F, Req, M, C>
where
    F: Future<Output = Result<Res, E>>,
    M: DrainMode<Req, Res, E, Context = C>,
    C: Copy,
{
    type Output = Result<M::Response, M::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        if let Some(rejection) = this.rejection.take() {
            return Poll::Ready(M::rejected(*this.cx, *rejection));
        }
        let Some(future) = this.future.as_pin_mut() else {
            panic!("polled after completion");
        };
        let (facts, mode_cx) = (*this.facts, *this.cx);
        poll_admitted(
            future,
            this.guard,
            facts.http1,
            cx,
            |result, guard| M::finish(result, guard, facts),
            |rejection| M::rejected(mode_cx, rejection),
        )
    }
}

/// Polls an admitted request's inner future, raced against the
/// coordinator's abort signal: `done` makes the answer from its output and
/// the request's guard, or, aborted at the drain deadline, `refused` from
/// the refusal (see [`aborted`]). Shared by the drain layer and the stack's
/// front. The answer is made in place: the output is not moved through an
/// intermediate `Option` or tuple (a response is 144 bytes and more, each
/// move a `memcpy`).
#[inline]
pub(crate) fn poll_admitted<F: Future, R>(
    future: Pin<&mut F>,
    guard: &mut Option<Guard>,
    http1: bool,
    cx: &mut Context<'_>,
    done: impl FnOnce(F::Output, Guard) -> R,
    refused: impl FnOnce(Rejection) -> R,
) -> Poll<R> {
    let g = guard.as_mut().expect("polled after completion");
    if !g.check_aborted() {
        match future.poll(cx) {
            Poll::Ready(output) => {
                return Poll::Ready(done(output, guard.take().expect("present")));
            }
            Poll::Pending => {
                if !g.register(cx.waker()) {
                    return Poll::Pending;
                }
            }
        }
    }
    Poll::Ready(refused(aborted(guard, http1)))
}

/// Polls `poll` for an admitted request unless the drain deadline has
/// aborted it (then `None`); while it is pending, the task is woken by the
/// abort too. The stack's front polls its waiting requests with it.
#[cfg(feature = "config")]
#[inline]
pub(crate) fn poll_unless_aborted<T>(
    guard: &mut Guard,
    cx: &mut Context<'_>,
    poll: impl FnOnce(&mut Context<'_>) -> Poll<T>,
) -> Poll<Option<T>> {
    if !guard.check_aborted() {
        match poll(cx) {
            Poll::Ready(output) => return Poll::Ready(Some(output)),
            Poll::Pending => {
                if !guard.register(cx.waker()) {
                    return Poll::Pending;
                }
            }
        }
    }
    Poll::Ready(None)
}

/// The answer to a request aborted at the drain deadline: its guard is
/// dropped (counted as aborted); the caller drops the inner future with
/// its own.
pub(crate) fn aborted(guard: &mut Option<Guard>, http1: bool) -> Rejection {
    let g = guard.take().expect("polled after completion");
    let rejection = g.state().aborted_rejection(http1);
    drop(g);
    rejection
}

impl<F, Req, M, C: fmt::Debug> fmt::Debug for ResponseFuture<F, Req, M, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("cx", &self.cx)
            .finish_non_exhaustive()
    }
}

pin_project! {
    /// A response body that keeps its request counted in flight until it
    /// ends or is dropped, and is cut off if the drain deadline aborts it
    /// (an open stream cannot hold the exit): a gRPC response then ends with
    /// `grpc-status: 14` (UNAVAILABLE) trailers, any other with an error
    /// (the connection is closed, so the client sees a truncated response).
    pub struct DrainBody<B> {
        #[pin]
        body: B,
        guard: Option<Guard>,
        grpc: bool,
        aborted: bool,
    }
}

impl<B> DrainBody<B> {
    #[inline]
    pub(crate) fn new(body: B, guard: Guard, grpc: bool) -> Self {
        Self {
            body,
            guard: Some(guard),
            grpc,
            aborted: false,
        }
    }
}

impl<B> Body for DrainBody<B>
where
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let mut this = self.project();
        if *this.aborted {
            return Poll::Ready(None);
        }
        let Some(g) = this.guard.as_mut() else {
            return this.body.poll_frame(cx).map_err(Into::into);
        };
        if !g.check_aborted() {
            match this.body.as_mut().poll_frame(cx) {
                Poll::Ready(Some(Ok(frame))) => {
                    if this.body.is_end_stream() {
                        this.guard.take();
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Poll::Ready(other) => {
                    this.guard.take();
                    return Poll::Ready(other.map(|r| r.map_err(Into::into)));
                }
                Poll::Pending => {
                    if !g.register(cx.waker()) {
                        return Poll::Pending;
                    }
                }
            }
        }
        let g = this.guard.take().expect("present");
        let rejection = g.state().aborted_rejection(false);
        drop(g);
        *this.aborted = true;
        if *this.grpc {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", rejection.grpc_code().to_header_value());
            trailers.insert(
                "grpc-message",
                HeaderValue::from_static("aborted at the drain deadline"),
            );
            return Poll::Ready(Some(Ok(Frame::trailers(trailers))));
        }
        Poll::Ready(Some(Err(Box::new(rejection))))
    }

    fn is_end_stream(&self) -> bool {
        self.aborted || self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B> fmt::Debug for DrainBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DrainBody")
            .field("counted", &self.guard.is_some())
            .field("aborted", &self.aborted)
            .finish_non_exhaustive()
    }
}
