//! The timeout layer on the happy path, next to the bare service, tower's
//! `Timeout` and tower-http's `TimeoutLayer`, in one run.
//!
//! Every iteration builds a fresh request (no extensions yet, as a request
//! straight from hyper), calls the service and polls the future once with a
//! noop waker. Two inner services:
//!
//! - `ready`: the response is ready on the first poll;
//! - `pending_once`: the first poll is `Pending`, the second is ready (a
//!   handler that awaits something), so the timer entry gets created.
//!
//! A tokio runtime is entered (`rt.enter()`) because creating a
//! `tokio::time::Sleep` needs one.
//!
//! Run: `cargo bench --all-features --bench timeout -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response, StatusCode};
use http_body_util::Empty;
use tower::{Layer, Service};
use tower_rampart::timeout::TimeoutLayer;

type Req = Request<()>;
type Res = Response<Empty<Bytes>>;

/// Ready on the first poll.
fn ready_service() -> impl Service<
    Req,
    Response = Res,
    Error = Infallible,
    Future = std::future::Ready<Result<Res, Infallible>>,
> + Clone {
    tower::service_fn(|_req: Req| std::future::ready(Ok(Response::new(Empty::new()))))
}

/// `Pending` on the first poll (waking itself), ready on the second.
struct PendingOnce(bool);

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

fn pending_once_service()
-> impl Service<Req, Response = Res, Error = Infallible, Future = PendingOnce> + Clone {
    tower::service_fn(|_req: Req| PendingOnce(false))
}

/// Calls `svc` with a fresh request and polls the future to completion
/// with a noop waker (once for `ready`, twice for `pending_once`).
#[inline(always)]
fn call_once<S>(svc: &mut S)
where
    S: Service<Req>,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = pin!(svc.call(black_box(Request::new(()))));
    loop {
        if let Poll::Ready(res) = fut.as_mut().poll(&mut cx) {
            black_box(res.is_ok());
            return;
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

fn group<S, F>(c: &mut Criterion, group: &str, make: F)
where
    S: Service<Req, Response = Res, Error = Infallible> + Clone,
    F: Fn() -> S,
{
    let mut g = c.benchmark_group(group);
    let mut bare = make();
    g.bench_function("bare", |b| b.iter(|| call_once(&mut bare)));

    let mut ours = TimeoutLayer::new(TIMEOUT).unwrap().layer(make());
    g.bench_function("rampart", |b| b.iter(|| call_once(&mut ours)));

    let mut ours_no_ext = TimeoutLayer::builder()
        .timeout(TIMEOUT)
        .deadline_extension(false)
        .build()
        .unwrap()
        .layer(make());
    g.bench_function("rampart_no_extension", |b| {
        b.iter(|| call_once(&mut ours_no_ext))
    });

    let mut ours_err = TimeoutLayer::new(TIMEOUT)
        .unwrap()
        .into_error_mode()
        .layer(make());
    g.bench_function("rampart_error_mode", |b| {
        b.iter(|| call_once(&mut ours_err))
    });

    let mut tower_timeout = tower::timeout::TimeoutLayer::new(TIMEOUT).layer(make());
    g.bench_function("tower_timeout", |b| {
        b.iter(|| call_once(&mut tower_timeout))
    });

    let mut tower_http =
        tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, TIMEOUT)
            .layer(make());
    g.bench_function("tower_http_timeout", |b| {
        b.iter(|| call_once(&mut tower_http))
    });
    g.finish();
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    group(c, "timeout/ready", ready_service);
    group(c, "timeout/pending_once", pending_once_service);
}

criterion_group!(timeout, benches);
criterion_main!(timeout);
