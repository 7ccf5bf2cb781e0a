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

enum Step<T> {
    Done(T, Guard),
    Refused(Rejection),
}

impl<F: Future, M> ResponseFuture<F, M> {
    #[inline]
    fn poll_step(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Step<F::Output>> {
        let this = self.project();
        match this.kind.project() {
            KindProj::Rejected { rejection } => Poll::Ready(Step::Refused(
                *rejection.take().expect("polled after completion"),
            )),
            KindProj::Inner { future, guard } => {
                let g = guard.as_mut().expect("polled after completion");
                if !g.check_aborted() {
                    match future.poll(cx) {
                        Poll::Ready(out) => {
                            let g = guard.take().expect("present");
                            return Poll::Ready(Step::Done(out, g));
                        }
                        Poll::Pending => {
                            if !g.register(cx.waker()) {
                                return Poll::Pending;
                            }
                        }
                    }
                }
                // Aborted at the drain deadline: drop the guard (counted as
                // aborted) and answer; the inner future is dropped with us.
                let g = guard.take().expect("present");
                let rejection = g.state().aborted_rejection(*this.http1);
                drop(g);
                Poll::Ready(Step::Refused(rejection))
            }
        }
    }
}

impl<F, B, E> Future for ResponseFuture<F, HttpMode>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<DrainBody<B>>>, E>;

    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let step = std::task::ready!(self.as_mut().poll_step(cx));
        Poll::Ready(match step {
            Step::Refused(r) => Ok(r.into_response(self.protocol)),
            Step::Done(Ok(res), guard) => {
                let close = self.http1 && guard.state().phase() >= Phase::ShutdownRequested;
                let grpc = self.protocol == Protocol::Grpc;
                let mut res = res.map(|b| ResponseBody::new(DrainBody::new(b, guard, grpc)));
                if close {
                    res.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
                Ok(res)
            }
            Step::Done(Err(e), _guard) => Err(e),
        })
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
        Poll::Ready(match std::task::ready!(self.poll_step(cx)) {
            Step::Refused(r) => Err(Box::new(r)),
            Step::Done(out, _guard) => out.map_err(Into::into),
        })
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
