//! Inner services shared by the benches: an always-ready one and one that is
//! `Pending` once before it answers.
#![allow(dead_code)]

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use tower::Service;

/// The request type of the bench services.
pub type Req = Request<()>;
/// The response type of the bench services.
pub type Res = Response<Empty<Bytes>>;

/// Ready on the first poll.
pub fn ready_service() -> impl Service<
    Req,
    Response = Res,
    Error = Infallible,
    Future = std::future::Ready<Result<Res, Infallible>>,
> + Clone {
    tower::service_fn(|_req: Req| std::future::ready(Ok(Response::new(Empty::new()))))
}

/// `Pending` on the first poll (waking itself), ready on the second.
pub struct PendingOnce(bool);

impl Future for PendingOnce {
    type Output = Result<Res, Infallible>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        if self.0 {
            Poll::Ready(Ok(Response::new(Empty::new())))
        } else {
            self.0 = true;
            cx.waker().wake_by_ref();
            Poll::Pending
        }
    }
}

/// A service whose futures are [`PendingOnce`].
pub fn pending_once_service()
-> impl Service<Req, Response = Res, Error = Infallible, Future = PendingOnce> + Clone {
    tower::service_fn(|_req: Req| PendingOnce(false))
}
