//! The concurrency limit per call, next to the bare service and tower's
//! `ConcurrencyLimit` + `LoadShed` (the pair that refuses instead of
//! waiting), in one run.
//!
//! - `admit`: a free slot; the response is ready on the first poll (the
//!   cost of admission, the permit and its release);
//! - `refuse`: the only slot is held by a request kept pending, so every
//!   call is refused: ours in `HttpMode` (a 503 response with its
//!   problem+json body) and in `ErrorMode` (a typed `Rejection`), tower's
//!   as `LoadShed`'s `Overloaded` error.
//!
//! tower-resilience's bulkhead is not in the run: its feature pulls a crate
//! not yet in the workspace's lockfile.
//!
//! Run: `cargo bench --all-features --bench concurrency -- --warm-up-time 1 --measurement-time 3`

use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::pin::{Pin, pin};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, criterion_group};
use http::{Request, Response};
use http_body_util::Empty;
use tower::{Layer, Service};
use tower_rampart::concurrency::ConcurrencyLimitLayer;

type Req = Request<()>;
type Res = Response<Empty<Bytes>>;

/// Answers at once, unless the request carries `Hold`: then its future
/// never completes (it holds its slot for the whole run).
#[derive(Clone, Copy)]
struct Holdable;

#[derive(Clone, Copy)]
struct Hold;

struct HoldFuture(bool);

impl Future for HoldFuture {
    type Output = Result<Res, Infallible>;

    fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
        if self.0 {
            Poll::Pending
        } else {
            Poll::Ready(Ok(Response::new(Empty::new())))
        }
    }
}

impl Service<Req> for Holdable {
    type Response = Res;
    type Error = Infallible;
    type Future = HoldFuture;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Req) -> HoldFuture {
        HoldFuture(req.extensions().get::<Hold>().is_some())
    }
}

/// One call: `poll_ready` (a refusal by tower's pair happens here, as an
/// error) then `call` and polls until ready.
#[inline(always)]
fn call_once<S: Service<Req>>(svc: &mut S) {
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(Ok(())) => {}
        Poll::Ready(Err(e)) => {
            black_box(e);
            return;
        }
        Poll::Pending => panic!("not ready"),
    }
    let mut fut = pin!(svc.call(black_box(Request::new(()))));
    loop {
        if let Poll::Ready(res) = fut.as_mut().poll(&mut cx) {
            black_box(res.is_ok());
            return;
        }
    }
}

/// Starts a request that holds its slot forever; returns its future (keep
/// it alive).
fn hold<S: Service<Req>>(svc: &mut S) -> Pin<Box<S::Future>> {
    let mut cx = Context::from_waker(Waker::noop());
    assert!(svc.poll_ready(&mut cx).is_ready());
    let mut req = Request::new(());
    req.extensions_mut().insert(Hold);
    let mut fut = Box::pin(svc.call(req));
    assert!(fut.as_mut().poll(&mut cx).is_pending());
    fut
}

fn tower_pair(limit: usize) -> impl Service<Req> {
    tower::ServiceBuilder::new()
        .load_shed()
        .concurrency_limit(limit)
        .service(Holdable)
}

fn per_call(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();

    let mut g = c.benchmark_group("concurrency/admit");
    let mut bare = Holdable;
    g.bench_function("bare", |b| b.iter(|| call_once(&mut bare)));
    let mut ours = ConcurrencyLimitLayer::fixed(1000).layer(Holdable);
    g.bench_function("rampart_fixed", |b| b.iter(|| call_once(&mut ours)));
    let mut adaptive = ConcurrencyLimitLayer::builder()
        .limit(tower_rampart::concurrency::Gradient2::default())
        .build()
        .unwrap()
        .layer(Holdable);
    g.bench_function("rampart_gradient2", |b| b.iter(|| call_once(&mut adaptive)));
    let mut tower = tower_pair(1000);
    g.bench_function("tower_concurrency_limit_load_shed", |b| {
        b.iter(|| call_once(&mut tower))
    });
    g.finish();

    // Two threads admitting through one shared limit, each with its own
    // clone (a connection's): what the limit's shared state costs when both
    // write it, the adaptive algorithm's sample on every completion among
    // it. Time per pair of calls (one on each thread).
    let mut g = c.benchmark_group("concurrency/admit_2_threads");
    two_threads(&mut g, "bare", Holdable);
    two_threads(
        &mut g,
        "rampart_fixed",
        ConcurrencyLimitLayer::fixed(1000).layer(Holdable),
    );
    two_threads(
        &mut g,
        "rampart_gradient2",
        ConcurrencyLimitLayer::builder()
            .limit(tower_rampart::concurrency::Gradient2::default())
            .build()
            .unwrap()
            .layer(Holdable),
    );
    two_threads(
        &mut g,
        "tower_concurrency_limit_load_shed",
        tower::ServiceBuilder::new()
            .load_shed()
            .concurrency_limit(1000)
            .service(Holdable),
    );
    g.finish();

    let mut g = c.benchmark_group("concurrency/refuse");
    let mut ours = ConcurrencyLimitLayer::fixed(1).layer(Holdable);
    let _held = hold(&mut ours);
    g.bench_function("rampart_http", |b| b.iter(|| call_once(&mut ours)));
    let mut ours_err = ConcurrencyLimitLayer::fixed(1)
        .into_error_mode()
        .layer(Holdable);
    let _held_err = hold(&mut ours_err);
    g.bench_function("rampart_error_mode", |b| {
        b.iter(|| call_once(&mut ours_err))
    });
    let mut tower = tower_pair(1);
    let _held_tower = hold(&mut tower);
    g.bench_function("tower_concurrency_limit_load_shed", |b| {
        b.iter(|| call_once(&mut tower))
    });
    g.finish();
}

/// A row of `svc` called on two threads at once, each with its own clone,
/// inside the current runtime (entered on both).
fn two_threads<S>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    svc: S,
) where
    S: Service<Req> + Clone + Send,
{
    let handle = tokio::runtime::Handle::current();
    g.bench_function(name, |b| {
        b.iter_custom(|iters| {
            let barrier = std::sync::Barrier::new(2);
            let start = std::sync::Mutex::new(None);
            std::thread::scope(|scope| {
                for _ in 0..2 {
                    let mut own = svc.clone();
                    let (handle, barrier, start) = (&handle, &barrier, &start);
                    scope.spawn(move || {
                        let _rt = handle.enter();
                        if barrier.wait().is_leader() {
                            *start.lock().unwrap() = Some(std::time::Instant::now());
                        }
                        for _ in 0..iters {
                            call_once(&mut own);
                        }
                    });
                }
            });
            start.into_inner().unwrap().expect("started").elapsed()
        })
    });
}

criterion_group!(benches, per_call);

/// `CONCURRENCY_BENCH_CALLS=<variant>,<calls>`: instead of criterion, make
/// `calls` calls through one variant and exit; run under
/// `perf stat -e instructions:u` at two call counts for instructions per
/// call, which the machine's load does not disturb. Variants: `bare`,
/// `fixed`, `gradient2`, `tower` (admit); `refuse_http`, `refuse_error`,
/// `refuse_tower` (refuse).
fn count_calls(spec: &str) {
    let (variant, calls) = spec.split_once(',').expect("<variant>,<calls>");
    let calls: u64 = calls.parse().expect("<calls>");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    fn run<S: Service<Req>>(svc: &mut S, calls: u64) {
        for _ in 0..calls {
            call_once(svc);
        }
    }
    match variant {
        "bare" => run(&mut Holdable, calls),
        "fixed" => run(
            &mut ConcurrencyLimitLayer::fixed(1000).layer(Holdable),
            calls,
        ),
        "gradient2" => run(
            &mut ConcurrencyLimitLayer::builder()
                .limit(tower_rampart::concurrency::Gradient2::default())
                .build()
                .unwrap()
                .layer(Holdable),
            calls,
        ),
        "tower" => run(&mut tower_pair(1000), calls),
        "refuse_http" => {
            let mut svc = ConcurrencyLimitLayer::fixed(1).layer(Holdable);
            let _held = hold(&mut svc);
            run(&mut svc, calls);
        }
        "refuse_error" => {
            let mut svc = ConcurrencyLimitLayer::fixed(1)
                .into_error_mode()
                .layer(Holdable);
            let _held = hold(&mut svc);
            run(&mut svc, calls);
        }
        "refuse_tower" => {
            let mut svc = tower_pair(1);
            let _held = hold(&mut svc);
            run(&mut svc, calls);
        }
        other => panic!("unknown variant `{other}`"),
    }
}

fn main() {
    if let Ok(spec) = std::env::var("CONCURRENCY_BENCH_CALLS") {
        count_calls(&spec);
        return;
    }
    benches();
    Criterion::default().configure_from_args().final_summary();
}
