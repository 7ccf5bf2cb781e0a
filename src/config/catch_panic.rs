//! The stack's panic catcher: a panicking handler answers 500 (gRPC:
//! `INTERNAL`) and the connection survives. Unlike tower-http's
//! `CatchPanic`, it does not box the response body: the admitted path
//! allocates nothing.

use std::any::Any;
use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode, header};
use pin_project_lite::pin_project;
use tower::{Layer, Service};

use crate::grpc::{GRPC_MESSAGE, GRPC_STATUS, GrpcCode};
use crate::rejection::{Protocol, ResponseBody};

/// The HTTP answer's body.
const PROBLEM: &str = r#"{"type":"about:blank","title":"Internal Server Error","status":500,"detail":"the service panicked"}"#;

/// Wraps a service in [`CatchPanic`]: the innermost layer of the stack.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct CatchPanicLayer;

impl<S> Layer<S> for CatchPanicLayer {
    type Service = CatchPanic<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CatchPanic { inner }
    }
}

/// Catches a panic of the inner service, in `call` or while its response
/// future is polled, and answers it in the caller's protocol: HTTP 500
/// with a small `application/problem+json` body, or for a gRPC request a
/// trailers-only answer with `grpc-status` 13 (`INTERNAL`). The panic is
/// logged once (event `service panicked`, target
/// `tower_rampart::config`, level ERROR, field `panic`: its message).
///
/// The response body is the inner one wrapped in [`ResponseBody`] (no
/// box); a panic while the body is being read is not caught (it is the
/// server's to handle, as with tower-http's `CatchPanic`). Made by the
/// stack ([`RampartLayer`](super::RampartLayer)), innermost, so a panic
/// counts as a failure for the circuit breaker.
#[derive(Clone)]
pub struct CatchPanic<S> {
    inner: S,
}

impl<S> fmt::Debug for CatchPanic<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatchPanic").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for CatchPanic<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = CatchPanicFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let protocol = Protocol::of(&req);
        let inner = &mut self.inner;
        match catch_unwind(AssertUnwindSafe(|| inner.call(req))) {
            Ok(future) => CatchPanicFuture {
                state: State::Running { future },
                protocol,
            },
            Err(panic) => {
                log(&*panic);
                CatchPanicFuture {
                    state: State::Panicked,
                    protocol,
                }
            }
        }
    }
}

pin_project! {
    /// The response future of [`CatchPanic`].
    pub struct CatchPanicFuture<F> {
        #[pin]
        state: State<F>,
        protocol: Protocol,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] future: F },
        Panicked,
        Done,
    }
}

impl<F> fmt::Debug for CatchPanicFuture<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CatchPanicFuture")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for CatchPanicFuture<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<ResponseBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match this.state.as_mut().project() {
            StateProj::Running { future } => {
                match catch_unwind(AssertUnwindSafe(|| future.poll(cx))) {
                    Ok(Poll::Pending) => Poll::Pending,
                    Ok(Poll::Ready(result)) => {
                        this.state.set(State::Done);
                        Poll::Ready(result.map(|res| res.map(ResponseBody::new)))
                    }
                    Err(panic) => {
                        // The panicked future is dropped here, before the
                        // answer leaves.
                        this.state.set(State::Done);
                        log(&*panic);
                        Poll::Ready(Ok(answer(*this.protocol)))
                    }
                }
            }
            StateProj::Panicked => {
                this.state.set(State::Done);
                Poll::Ready(Ok(answer(*this.protocol)))
            }
            StateProj::Done => panic!("CatchPanicFuture polled after completion"),
        }
    }
}

/// Logs a caught panic, once.
#[cold]
pub(super) fn log(panic: &(dyn Any + Send)) {
    let message = panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("(not a string)");
    tracing::error!(
        target: "tower_rampart::config",
        panic = message,
        "service panicked"
    );
}

/// The answer to a panic, in the caller's protocol.
#[cold]
pub(super) fn answer<B>(protocol: Protocol) -> Response<ResponseBody<B>> {
    match protocol {
        Protocol::Http => {
            let mut res = Response::new(ResponseBody::full(Bytes::from_static(PROBLEM.as_bytes())));
            *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/problem+json"),
            );
            res
        }
        Protocol::Grpc => {
            let mut res = Response::new(ResponseBody::full(Bytes::new()));
            let headers = res.headers_mut();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/grpc"),
            );
            headers.insert(GRPC_STATUS, GrpcCode::Internal.to_header_value());
            headers.insert(
                GRPC_MESSAGE,
                HeaderValue::from_static("the service panicked"),
            );
            res
        }
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::{BodyExt, Empty};
    use tower::ServiceExt;

    use super::*;

    fn req(grpc: bool) -> Request<()> {
        let mut b = Request::get("/x");
        if grpc {
            b = b.header("content-type", "application/grpc+proto");
        }
        b.body(()).unwrap()
    }

    async fn body<B: http_body::Body<Data = Bytes>>(res: Response<ResponseBody<B>>) -> Bytes
    where
        B::Error: fmt::Debug,
    {
        res.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_panic_in_call_answers_500_problem_json() {
        let svc = CatchPanicLayer.layer(tower::service_fn(
            |_: Request<()>| -> std::future::Ready<Result<Response<Empty<Bytes>>, Infallible>> {
                panic!("in call")
            },
        ));
        let res = svc.oneshot(req(false)).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR);
        assert_eq!(res.headers()["content-type"], "application/problem+json");
        assert_eq!(body(res).await, PROBLEM.as_bytes());
    }

    #[tokio::test]
    async fn a_panic_in_the_future_answers_grpc_internal_to_a_grpc_caller() {
        let svc = CatchPanicLayer.layer(tower::service_fn(|_: Request<()>| async {
            if true {
                panic!("in the future");
            }
            Ok::<_, Infallible>(Response::new(Empty::<Bytes>::new()))
        }));
        let res = svc.oneshot(req(true)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(res.headers()["grpc-status"], "13");
        assert_eq!(res.headers()["grpc-message"], "the service panicked");
        assert!(body(res).await.is_empty());
    }

    #[tokio::test]
    async fn no_panic_passes_the_response_through() {
        let svc = CatchPanicLayer.layer(tower::service_fn(|_: Request<()>| async {
            Ok::<_, Infallible>(Response::new(http_body_util::Full::new(
                Bytes::from_static(b"hi"),
            )))
        }));
        let res = svc.oneshot(req(false)).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK);
        assert_eq!(body(res).await, &b"hi"[..]);
    }
}
