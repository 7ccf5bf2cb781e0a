//! The drain layer's response future and body.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::BoxError;

use super::Phase;
use super::state::Guard;
use crate::Rejection;
use crate::rejection::{ErrorMode, HttpMode, Protocol, ResponseBody};

pin_project! {
    /// The response future of [`Drain`](super::Drain): the inner future,
    /// raced against the coordinator's abort signal, or a refusal.
    pub struct ResponseFuture<F, M = HttpMode> {
        #[pin]
        kind: Kind<F>,
        protocol: Protocol,
        http1: bool,
        _mode: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F> {
        Inner { #[pin] future: F, guard: Option<Guard> },
        Rejected { rejection: Option<Box<Rejection>> },
    }
}

impl<F, M> ResponseFuture<F, M> {
    #[inline]
    pub(crate) fn admitted(future: F, guard: Guard, protocol: Protocol, http1: bool) -> Self {
        Self {
            kind: Kind::Inner {
                future,
                guard: Some(guard),
            },
            protocol,
            http1,
            _mode: PhantomData,
        }
    }

    #[cold]
    #[inline(never)]
    pub(crate) fn rejected(rejection: Rejection, protocol: Protocol, http1: bool) -> Self {
        Self {
            kind: Kind::Rejected {
                rejection: Some(Box::new(rejection)),
            },
            protocol,
            http1,
            _mode: PhantomData,
        }
    }
}

/// Aborted at the drain deadline: drops the guard (counted as aborted) and
/// builds the answer; the inner future is dropped with the response future.
#[cold]
#[inline(never)]
fn abort(guard: &mut Option<Guard>, http1: bool) -> Rejection {
    let g = guard.take().expect("present");
    g.state().aborted_rejection(http1)
}

/// The refusal as a response (off the hot path).
#[cold]
#[inline(never)]
fn refusal<B>(rejection: Rejection, protocol: Protocol) -> Response<ResponseBody<DrainBody<B>>> {
    rejection.into_response(protocol)
}

impl<F, B, E> Future for ResponseFuture<F, HttpMode>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<DrainBody<B>>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Rejected { rejection } => Poll::Ready(Ok(refusal(
                *rejection.take().expect("polled after completion"),
                *this.protocol,
            ))),
            KindProj::Inner { future, guard } => {
                let g = guard.as_mut().expect("polled after completion");
                if !g.check_aborted() {
                    match future.poll(cx) {
                        Poll::Ready(Ok(res)) => {
                            let g = guard.take().expect("present");
                            let close =
                                *this.http1 && g.state().phase() >= Phase::ShutdownRequested;
                            let grpc = *this.protocol == Protocol::Grpc;
                            let (mut parts, body) = res.into_parts();
                            if close {
                                parts
                                    .headers
                                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
                            }
                            let body = ResponseBody::new(DrainBody::new(body, g, grpc));
                            return Poll::Ready(Ok(Response::from_parts(parts, body)));
                        }
                        Poll::Ready(Err(e)) => {
                            guard.take();
                            return Poll::Ready(Err(e));
                        }
                        Poll::Pending => {
                            if !g.register(cx.waker()) {
                                return Poll::Pending;
                            }
                        }
                    }
                }
                Poll::Ready(Ok(refusal(abort(guard, *this.http1), *this.protocol)))
            }
        }
    }
}

impl<F, T, E> Future for ResponseFuture<F, ErrorMode>
where
    F: Future<Output = Result<T, E>>,
    E: Into<BoxError>,
{
    type Output = Result<T, BoxError>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Rejected { rejection } => {
                Poll::Ready(Err(rejection.take().expect("polled after completion")))
            }
            KindProj::Inner { future, guard } => {
                let g = guard.as_mut().expect("polled after completion");
                if !g.check_aborted() {
                    match future.poll(cx) {
                        Poll::Ready(out) => {
                            guard.take();
                            return Poll::Ready(out.map_err(Into::into));
                        }
                        Poll::Pending => {
                            if !g.register(cx.waker()) {
                                return Poll::Pending;
                            }
                        }
                    }
                }
                Poll::Ready(Err(Box::new(abort(guard, *this.http1))))
            }
        }
    }
}

impl<F, M> fmt::Debug for ResponseFuture<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture")
            .field("protocol", &self.protocol)
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
