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

/// Runs `f` (a layer's first call) inside a runtime that lives as long as
/// the process and is never driven: the call starts what a server's first
/// request starts, the task that adds up the layer's per-thread counters
/// (`util::tally` in the crate), which then counts as started for every
/// later call, in a runtime or not, as it is for a server's requests.
pub fn first_call<T>(f: impl FnOnce() -> T) -> T {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    let rt = RT.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("a runtime")
    });
    let _guard = rt.enter();
    f()
}

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
