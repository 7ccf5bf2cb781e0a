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
//! Last group: two threads calling clones of one service at once.
//!
//! Run: `cargo bench --all-features --bench timeout -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use criterion::{Criterion, criterion_group};
use http::{Request, StatusCode};

use tower::{Layer, Service};
use tower_rampart::timeout::TimeoutLayer;

mod support;
use support::{Req, Res, pending_once_service, ready_service};

/// Calls `svc` with a fresh request and polls the future to completion
/// with a noop waker (once for `ready`, twice for `pending_once`).
#[inline(always)]
fn call_once<S>(svc: &mut S, req: fn() -> Req)
where
    S: Service<Req>,
{
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut fut = pin!(svc.call(black_box(req())));
    loop {
        if let Poll::Ready(res) = fut.as_mut().poll(&mut cx) {
            black_box(res.is_ok());
            return;
        }
    }
}

const TIMEOUT: Duration = Duration::from_secs(30);

/// A request straight from the connection: no extensions yet.
fn fresh_request() -> Req {
    Request::new(())
}

/// A request that already carries an extension (as when the router has
/// inserted its own, e.g. axum's `OriginalUri` and `MatchedPath` with its
/// default features), so the extensions map exists.
fn routed_request() -> Req {
    let mut req = Request::new(());
    req.extensions_mut().insert(7u32);
    req
}

fn group<S, F>(c: &mut Criterion, group: &str, make: F, req: fn() -> Req)
where
    S: Service<Req, Response = Res, Error = Infallible> + Clone,
    F: Fn() -> S,
{
    let mut g = c.benchmark_group(group);
    let mut bare = make();
    g.bench_function("bare", |b| b.iter(|| call_once(&mut bare, req)));

    let mut ours = TimeoutLayer::new(TIMEOUT).unwrap().layer(make());
    g.bench_function("rampart", |b| b.iter(|| call_once(&mut ours, req)));

    let mut ours_ext = TimeoutLayer::builder()
        .timeout(TIMEOUT)
        .deadline_extension(true)
        .build()
        .unwrap()
        .layer(make());
    g.bench_function("rampart_with_extension", |b| {
        b.iter(|| call_once(&mut ours_ext, req))
    });

    let mut ours_err = TimeoutLayer::new(TIMEOUT)
        .unwrap()
        .into_error_mode()
        .layer(make());
    g.bench_function("rampart_error_mode", |b| {
        b.iter(|| call_once(&mut ours_err, req))
    });

    let mut tower_timeout = tower::timeout::TimeoutLayer::new(TIMEOUT).layer(make());
    g.bench_function("tower_timeout", |b| {
        b.iter(|| call_once(&mut tower_timeout, req))
    });

    let mut tower_http =
        tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, TIMEOUT)
            .layer(make());
    g.bench_function("tower_http_timeout", |b| {
        b.iter(|| call_once(&mut tower_http, req))
    });
    g.finish();
}

/// Two threads calling clones of one service (sharing one layer state and
/// one runtime), each making half the calls: time per call, both threads
/// together.
fn contended<S>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    svc: S,
    rt: &tokio::runtime::Runtime,
) where
    S: Service<Req> + Clone + Send + 'static,
{
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let per_thread = iters.div_ceil(2);
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(2));
            let threads: Vec<_> = (0..2)
                .map(|_| {
                    let mut svc = svc.clone();
                    let handle = rt.handle().clone();
                    let barrier = barrier.clone();
                    std::thread::spawn(move || {
                        let _guard = handle.enter();
                        barrier.wait();
                        let start = std::time::Instant::now();
                        for _ in 0..per_thread {
                            call_once(&mut svc, fresh_request);
                        }
                        start.elapsed()
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| t.join().unwrap())
                .max()
                .unwrap()
        })
    });
}

fn contended_group(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_time()
        .build()
        .unwrap();
    let mut g = c.benchmark_group("timeout/ready_2_threads");
    contended(&mut g, "bare", ready_service(), &rt);
    contended(
        &mut g,
        "rampart",
        TimeoutLayer::new(TIMEOUT).unwrap().layer(ready_service()),
        &rt,
    );
    contended(
        &mut g,
        "rampart_with_extension",
        TimeoutLayer::builder()
            .timeout(TIMEOUT)
            .deadline_extension(true)
            .build()
            .unwrap()
            .layer(ready_service()),
        &rt,
    );
    contended(
        &mut g,
        "tower_timeout",
        tower::timeout::TimeoutLayer::new(TIMEOUT).layer(ready_service()),
        &rt,
    );
    contended(
        &mut g,
        "tower_http_timeout",
        tower_http::timeout::TimeoutLayer::with_status_code(StatusCode::REQUEST_TIMEOUT, TIMEOUT)
            .layer(ready_service()),
        &rt,
    );
    g.finish();
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    group(c, "timeout/ready", ready_service, fresh_request);
    group(c, "timeout/ready_routed", ready_service, routed_request);
    group(
        c,
        "timeout/pending_once",
        pending_once_service,
        fresh_request,
    );
    drop(_guard);
    contended_group(c);
}

criterion_group!(timeout, benches);

/// `TIMEOUT_BENCH_CALLS=<variant>,<calls>[,routed|pending]`: instead of
/// criterion, make `calls` calls through one variant (ready service and
/// fresh requests; `routed`: routed requests; `pending`: the pending-once
/// service) and exit. Run under `perf stat -e instructions:u` at two call counts to get
/// instructions per call, a figure the machine's load does not disturb.
fn count_calls(spec: &str) {
    let mut parts = spec.split(',');
    let variant = parts.next().unwrap_or_default().to_owned();
    let calls: u64 = parts
        .next()
        .and_then(|n| n.parse().ok())
        .expect("<variant>,<calls>[,routed|pending]");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    match parts.next() {
        Some("routed") => count_with(&variant, calls, ready_service, routed_request),
        Some("pending") => count_with(&variant, calls, pending_once_service, fresh_request),
        _ => count_with(&variant, calls, ready_service, fresh_request),
    }
}

fn count_with<S, F>(variant: &str, calls: u64, make: F, req: fn() -> Req)
where
    S: Service<Req, Response = Res, Error = Infallible> + Clone,
    F: Fn() -> S,
{
    fn run<S: Service<Req>>(mut svc: S, calls: u64, req: fn() -> Req) {
        for _ in 0..calls {
            call_once(&mut svc, req);
        }
    }
    let svc = make();
    match variant {
        "bare" => run(svc, calls, req),
        "rampart" => run(TimeoutLayer::new(TIMEOUT).unwrap().layer(svc), calls, req),
        "rampart_with_extension" => run(
            TimeoutLayer::builder()
                .timeout(TIMEOUT)
                .deadline_extension(true)
                .build()
                .unwrap()
                .layer(svc),
            calls,
            req,
        ),
        "rampart_error_mode" => run(
            TimeoutLayer::new(TIMEOUT)
                .unwrap()
                .into_error_mode()
                .layer(svc),
            calls,
            req,
        ),
        "tower_timeout" => run(
            tower::timeout::TimeoutLayer::new(TIMEOUT).layer(svc),
            calls,
            req,
        ),
        "tower_http_timeout" => run(
            tower_http::timeout::TimeoutLayer::with_status_code(
                StatusCode::REQUEST_TIMEOUT,
                TIMEOUT,
            )
            .layer(svc),
            calls,
            req,
        ),
        other => panic!("unknown variant {other}"),
    }
}

fn main() {
    if let Ok(spec) = std::env::var("TIMEOUT_BENCH_CALLS") {
        count_calls(&spec);
        return;
    }
    timeout();
    criterion::Criterion::default()
        .configure_from_args()
        .final_summary();
}
