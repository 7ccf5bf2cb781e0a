//! The whole stack on the happy path (probes, drain, rate limit, circuit
//! breaker, timeout, panic catching, built from a config) against the bare
//! service, in one run; with the same layers composed by hand without
//! tower-http's `CatchPanicLayer` (to show its share), tower-resilience's
//! circuit breaker alone for scale, and the same protections built from
//! the crates people use instead (`peers_stack`: tower_governor's global
//! quota, tower-resilience's breaker over the last 100 calls, tower-http's
//! `Timeout` and `CatchPanic`, axum's `HandleErrorLayer` answering their
//! errors; no drain, probes or metrics).
//!
//! `cargo bench --all-features --bench stack -- --warm-up-time 1 --measurement-time 3`
//!
//! Every future is polled with a noop waker until it is ready (once, except
//! in the `*pending_once*` rows, whose inner future is pending on its first
//! poll): the numbers are the layers' cost, not an executor's. A tokio
//! runtime is entered because the timeout arms a timer and the coordinator
//! needs one; the `*pending_once*` rows call from tasks on a
//! multi-threaded runtime's workers, where a server's requests run, with
//! tower's `Timeout` alone beside them (it arms a timer on every call; the
//! stack's timeout arms one when the inner future is pending: on two
//! workers, both pay tokio's timer lock).

use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::Barrier;
use std::task::{Context, Poll, Waker};
use std::time::Instant;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body::Body;
use http_body_util::{Empty, Full};
use tower::{Layer, Service};
use tower_rampart::config::RampartConfig;

mod support;
use support::pending_once_service;

type Req = Request<()>;
type Res = Response<Empty<Bytes>>;

#[derive(Clone)]
struct Bare;

impl Service<Req> for Bare {
    type Response = Res;
    type Error = std::convert::Infallible;
    type Future = Ready<Result<Res, Self::Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _req: Req) -> Self::Future {
        ready(Ok(Response::new(Empty::new())))
    }
}

/// `BENCH_CALLS=<row>,<calls>`: instead of measuring, run that row `calls`
/// times and exit, for instruction counts (`valgrind --tool=cachegrind
/// --cache-sim=no`; subtract a run with fewer calls), which the load of a
/// shared machine does not disturb. The other rows are skipped.
fn counting(name: &str, mut call: impl FnMut()) -> bool {
    let Ok(spec) = std::env::var("BENCH_CALLS") else {
        return false;
    };
    let (row, n) = spec.split_once(',').expect("BENCH_CALLS=<row>,<calls>");
    if row == name {
        for _ in 0..n.parse::<u64>().expect("a call count") {
            call();
        }
        std::process::exit(0);
    }
    true
}

/// One call: `poll_ready`, `call`, poll the future once, drop the response
/// (which ends the drain layer's count).
#[inline]
fn one<S: Service<Req>>(svc: &mut S) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let _ = svc.poll_ready(&mut cx);
    let mut f = pin!(svc.call(Request::new(())));
    loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            return black_box(out).is_ok();
        }
        std::hint::spin_loop();
    }
}

/// The bare service with a one-frame body (a handler's "hello"), for the
/// rows that read the answer's body as a server does.
#[derive(Clone)]
struct Hello;

impl Service<Req> for Hello {
    type Response = Response<Full<Bytes>>;
    type Error = std::convert::Infallible;
    type Future = Ready<Result<Self::Response, Self::Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _req: Req) -> Self::Future {
        ready(Ok(Response::new(Full::new(Bytes::from_static(b"hello")))))
    }
}

/// One call as a server makes it: [`one`]'s call and poll, then the
/// answer's body read as hyper reads it (its size hint, then frames until
/// it says it has ended), then dropped: what the body's wrappers cost,
/// which [`one`] leaves out.
#[inline]
fn served<S, B>(svc: &mut S) -> bool
where
    S: Service<Req, Response = Response<B>>,
    B: Body<Data = Bytes>,
{
    let mut cx = Context::from_waker(Waker::noop());
    let _ = svc.poll_ready(&mut cx);
    let mut f = pin!(svc.call(Request::new(())));
    let res = loop {
        if let Poll::Ready(out) = f.as_mut().poll(&mut cx) {
            break out;
        }
        std::hint::spin_loop();
    };
    let Ok(res) = res else { return false };
    let mut body = pin!(res.into_body());
    black_box(body.size_hint());
    let mut frames = 0;
    while !body.is_end_stream() {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => frames += usize::from(black_box(frame).is_data()),
            Poll::Ready(_) => break,
            Poll::Pending => std::hint::spin_loop(),
        }
    }
    frames == 1
}

const CONFIG: &str = r#"
    [shutdown]
    signals = false
    [rate_limit]
    quotas = [{ rate = "1000000000/s", burst = 1000000 }]
    [circuit_breaker]
    window = { type = "count", size = 100 }
    [timeout]
    timeout = "5s"
"#;

const CONFIG_NO_RATE_LIMIT: &str = r#"
    [shutdown]
    signals = false
    [circuit_breaker]
    window = { type = "count", size = 100 }
    [timeout]
    timeout = "5s"
"#;

/// `calls` calls on each of two threads at once, each call on a clone of
/// `proto` made for it (axum's route service, shared by every connection
/// and cloned for every request): the clones' reference counts are the
/// shared state's, written by both threads. Returns when both are done.
/// With `per_call = false`, each thread makes one clone first and calls it
/// (a service per connection, called in place, as `tower_rampart::serve`
/// calls a stack wrapped around the whole router): what is left is the
/// layers' own shared writes.
fn two_threads<S>(proto: &S, handle: &tokio::runtime::Handle, calls: u64, per_call: bool)
where
    S: Service<Req> + Clone + Send + Sync,
{
    let barrier = Barrier::new(2);
    std::thread::scope(|scope| {
        for _ in 0..2 {
            scope.spawn(|| {
                let _rt = handle.enter();
                let mut own = proto.clone();
                barrier.wait();
                for _ in 0..calls {
                    if per_call {
                        black_box(one(&mut proto.clone()));
                    } else {
                        black_box(one(&mut own));
                    }
                }
            });
        }
    });
}

/// A criterion row of `run(iters)`, timed whole (or, under
/// `BENCH_CALLS=<name>,<n>`, `run(n)` and exit).
fn timed_row(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    run: impl Fn(u64),
) {
    match std::env::var("BENCH_CALLS") {
        Err(_) => {
            g.bench_function(name, |b| {
                b.iter_custom(|iters| {
                    let start = Instant::now();
                    run(iters);
                    start.elapsed()
                })
            });
        }
        Ok(spec) => {
            if let Some(n) = spec.strip_prefix(name).and_then(|n| n.strip_prefix(',')) {
                run(n.parse().expect("a call count"));
                std::process::exit(0);
            }
        }
    }
}

/// A row ([`timed_row`]: n calls on each thread) of `proto` called on two
/// threads at once.
fn two_thread_row<S>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    proto: &S,
    handle: &tokio::runtime::Handle,
    per_call: bool,
) where
    S: Service<Req> + Clone + Send + Sync,
{
    timed_row(g, name, |n| two_threads(proto, handle, n, per_call));
}

/// A row ([`timed_row`]: n calls on each task) of `proto` called by
/// `tasks` tasks at once on `rt`'s workers, each with its own clone, as a
/// server's connections call it.
fn task_row<S>(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    proto: &S,
    rt: &tokio::runtime::Runtime,
    tasks: usize,
) where
    S: Service<Req> + Clone + Send + Sync + 'static,
{
    timed_row(g, name, |calls| {
        let (done, finished) = std::sync::mpsc::channel();
        for _ in 0..tasks {
            let (mut own, done) = (proto.clone(), done.clone());
            rt.spawn(async move {
                for _ in 0..calls {
                    black_box(one(&mut own));
                }
                done.send(()).unwrap();
            });
        }
        for _ in 0..tasks {
            finished.recv().unwrap();
        }
    });
}

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let config = RampartConfig::from_toml(CONFIG).unwrap();
    let stack = config.stack().build().unwrap();
    let per_route = RampartConfig::from_toml(&format!(
        "{CONFIG}\n    [routes]\n    per_route_breaker = true"
    ))
    .unwrap();
    assert!(per_route.routes.per_route_breaker);
    let stack_per_route = per_route.stack().build().unwrap();
    // The production example's shape: one breaker per declared route, the
    // stack around the router (no clone per call).
    let declared = RampartConfig::from_toml(&format!(
        "{CONFIG}\n    [routes]\n    per_route_breaker = true\n    \
         paths = [\"/api/ok\", \"/api/fail\", \"/api/sleep/{{ms}}\", \"/\"]"
    ))
    .unwrap();
    let stack_declared = declared.stack().build().unwrap();
    let no_rl = RampartConfig::from_toml(CONFIG_NO_RATE_LIMIT).unwrap();
    let stack_no_rl = no_rl.stack().build().unwrap();
    let with_ext = RampartConfig::from_toml(&CONFIG.replace(
        "timeout = \"5s\"",
        "timeout = \"5s\"\n    deadline_extension = true",
    ))
    .unwrap();
    assert!(with_ext.timeout.deadline_extension);
    let stack_with_ext = with_ext.stack().build().unwrap();
    // The production example's shape: a concurrency limit too (fixed, far
    // above what one thread reaches, so the queue stays empty).
    let with_conc = RampartConfig::from_toml(&format!(
        "{CONFIG}\n    [concurrency]\n    limit = {{ algorithm = \"fixed\", limit = 1000 }}"
    ))
    .unwrap();
    assert!(with_conc.concurrency.is_some());
    let stack_with_conc = with_conc.stack().build().unwrap();
    // The same limit without the rate limit's global quota (one cell every
    // thread writes), for the two-thread row: what the limit itself shares.
    let conc_no_rl = RampartConfig::from_toml(&format!(
        "{CONFIG_NO_RATE_LIMIT}\n    [concurrency]\n    limit = {{ algorithm = \"fixed\", limit = 1000 }}"
    ))
    .unwrap();
    assert!(conc_no_rl.concurrency.is_some() && conc_no_rl.rate_limit.is_none());
    let stack_conc_no_rl = conc_no_rl.stack().build().unwrap();
    // The same, its metrics registered with a Prometheus recorder (the
    // other rows have none, so their counters do nothing): what the
    // per-request counters cost where an operator reads them, on one
    // thread and on two (the breaker's calls and the concurrency limit's
    // samples, counted per thread: `util::tally`).
    let prometheus = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
    let stack_recorded =
        metrics::with_local_recorder(&prometheus, || conc_no_rl.stack().build().unwrap());
    // The production example's breaker: a 30-second time window and a
    // slow-call threshold (every call is recorded in its bucket under the
    // window's lock, with a clock reading for its duration).
    let time_window = RampartConfig::from_toml(&CONFIG.replace(
        "window = { type = \"count\", size = 100 }",
        "window = { type = \"time\", duration = \"30s\", buckets = 10 }\n    \
         slow_call_duration_threshold = \"2s\"",
    ))
    .unwrap();
    assert!(
        time_window
            .circuit_breaker
            .slow_call_duration_threshold
            .is_some()
    );
    let stack_time_window = time_window.stack().build().unwrap();

    // The same layers by hand, without CatchPanicLayer.
    let probe = config.probes.clone().build(stack.health()).unwrap();
    let drain = stack.shutdown().drain_layer();
    let rl = config.rate_limit.as_ref().unwrap().build().unwrap();
    let breaker = config.circuit_breaker.clone().build().unwrap();
    let timeout = config.timeout.build().unwrap();
    let (tr, _) = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .build_with_handle()
        .unwrap();

    let mut g = c.benchmark_group("stack_happy_path");
    let mut s = Bare;
    if !counting("bare", || {
        black_box(one(&mut s));
    }) {
        g.bench_function("bare", |b| b.iter(|| one(&mut s)));
    }
    let mut s = stack.layer().layer(Bare);
    if !counting("rampart_stack", || {
        black_box(one(&mut s));
    }) {
        g.bench_function("rampart_stack", |b| b.iter(|| one(&mut s)));
    }
    // The same two, the answer's body read as a server reads it.
    let mut s = Hello;
    if !counting("bare_served", || {
        black_box(served(&mut s));
    }) {
        g.bench_function("bare_served", |b| b.iter(|| served(&mut s)));
    }
    let mut s = stack.layer().layer(Hello);
    assert!(served(&mut s), "one data frame through the stack");
    if !counting("rampart_stack_served", || {
        black_box(served(&mut s));
    }) {
        g.bench_function("rampart_stack_served", |b| b.iter(|| served(&mut s)));
    }
    // One breaker per declared route (`routes.paths`), the request's route
    // (`/`) found among four templates: what the per-route breakers cost
    // over one shared breaker (`rampart_stack`) around the router.
    let mut s = stack_declared.layer().layer(Bare);
    if !counting("rampart_stack_per_declared_route", || {
        black_box(one(&mut s));
    }) {
        g.bench_function("rampart_stack_per_declared_route", |b| {
            b.iter(|| one(&mut s))
        });
    }
    // The concurrency limit without the rate limit, with and without a
    // Prometheus recorder: one thread's share of the two-thread rows.
    let mut s = stack_conc_no_rl.layer().layer(Bare);
    if !counting("rampart_stack_concurrency_without_rate_limit", || {
        black_box(one(&mut s));
    }) {
        g.bench_function("rampart_stack_concurrency_without_rate_limit", |b| {
            b.iter(|| one(&mut s))
        });
    }
    let mut s = stack_recorded.layer().layer(Bare);
    if !counting("rampart_stack_recorded", || {
        black_box(one(&mut s));
    }) {
        g.bench_function("rampart_stack_recorded", |b| b.iter(|| one(&mut s)));
    }
    // axum's `Router::layer` clones a route's service for every request
    // and calls the clone once: the same here, with the clone's drop.
    let s = Bare;
    if !counting("bare_cloned_per_call", || {
        black_box(one(&mut s.clone()));
    }) {
        g.bench_function("bare_cloned_per_call", |b| b.iter(|| one(&mut s.clone())));
    }
    let s = stack.layer().layer(Bare);
    if !counting("rampart_stack_cloned_per_call", || {
        black_box(one(&mut s.clone()));
    }) {
        g.bench_function("rampart_stack_cloned_per_call", |b| {
            b.iter(|| one(&mut s.clone()))
        });
    }
    // One breaker per route (`routes.per_route_breaker`, as the production
    // example has it), looked up on every call; the request has no route
    // here (no axum `MatchedPath`), so every call finds the `unmatched`
    // route's breaker.
    let s = stack_per_route.layer().layer(Bare);
    if !counting("rampart_stack_per_route_cloned_per_call", || {
        black_box(one(&mut s.clone()));
    }) {
        g.bench_function("rampart_stack_per_route_cloned_per_call", |b| {
            b.iter(|| one(&mut s.clone()))
        });
    }
    // The same on two threads at once (each call on one thread; time per
    // call on each thread, so the bare row would stay flat if nothing
    // were shared). `BENCH_CALLS=<row>,<n>`: n calls on each thread.
    for (name, proto, per_call) in [
        (
            "rampart_stack_per_route_cloned_per_call_2_threads",
            &stack_per_route,
            true,
        ),
        ("rampart_stack_cloned_per_call_2_threads", &stack, true),
        ("rampart_stack_2_threads", &stack, false),
        ("rampart_stack_per_route_2_threads", &stack_per_route, false),
        (
            "rampart_stack_time_window_2_threads",
            &stack_time_window,
            false,
        ),
        (
            "rampart_stack_without_rate_limit_2_threads",
            &stack_no_rl,
            false,
        ),
        (
            "rampart_stack_concurrency_without_rate_limit_2_threads",
            &stack_conc_no_rl,
            false,
        ),
        ("rampart_stack_recorded_2_threads", &stack_recorded, false),
    ] {
        two_thread_row(
            &mut g,
            name,
            &proto.layer().layer(Bare),
            rt.handle(),
            per_call,
        );
    }
    // The bare service on two threads: the scaling the stack's rows compare
    // with (issue 14: two-thread / one-thread throughput within 10 % of
    // bare's, in the same run).
    two_thread_row(&mut g, "bare_2_threads", &Bare, rt.handle(), false);
    // An inner future pending once (a handler that awaits something): the
    // front registers the request for the drain deadline's abort and the
    // timeout arms a timer, on one thread and on two at once (what of that
    // is shared). Timers on a multi-threaded runtime's handle, whose timer
    // wheels are sharded as a server's are.
    let mt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    // The anchor: tower's `Timeout` alone, which arms a timer on every call.
    let pending_stack = stack_no_rl.layer().layer(pending_once_service());
    let tower_timeout = tower::timeout::TimeoutLayer::new(std::time::Duration::from_secs(5))
        .layer(pending_once_service());
    for tasks in [1, 2] {
        let suffix = if tasks == 2 { "_2_threads" } else { "" };
        task_row(
            &mut g,
            &format!("bare_pending_once{suffix}"),
            &pending_once_service(),
            &mt,
            tasks,
        );
        task_row(
            &mut g,
            &format!("rampart_stack_without_rate_limit_pending_once{suffix}"),
            &pending_stack,
            &mt,
            tasks,
        );
        task_row(
            &mut g,
            &format!("tower_timeout_alone_pending_once{suffix}"),
            &tower_timeout,
            &mt,
            tasks,
        );
    }
    let mut s = stack_no_rl.layer().layer(Bare);
    if !counting("rampart_stack_without_rate_limit", || {
        black_box(one(&mut s));
    }) {
        g.bench_function("rampart_stack_without_rate_limit", |b| {
            b.iter(|| one(&mut s))
        });
    }
    let mut s = stack_time_window.layer().layer(Bare);
    if !counting("rampart_stack_time_window", || {
        black_box(one(&mut s));
    }) {
        g.bench_function("rampart_stack_time_window", |b| b.iter(|| one(&mut s)));
    }
    let mut s = stack_with_conc.layer().layer(Bare);
    if !counting("rampart_stack_with_concurrency_limit", || {
        black_box(one(&mut s));
    }) {
        g.bench_function("rampart_stack_with_concurrency_limit", |b| {
            b.iter(|| one(&mut s))
        });
    }
    let mut s = stack_with_ext.layer().layer(Bare);
    if !counting("rampart_stack_with_deadline_extension", || {
        black_box(one(&mut s));
    }) {
        g.bench_function("rampart_stack_with_deadline_extension", |b| {
            b.iter(|| one(&mut s))
        });
    }
    let mut s = probe.layer(drain.layer(rl.layer(breaker.layer(timeout.layer(Bare)))));
    if !counting("rampart_layers_without_catch_panic", || {
        black_box(one(&mut s));
    }) {
        g.bench_function("rampart_layers_without_catch_panic", |b| {
            b.iter(|| one(&mut s))
        });
    }
    let mut s = peers_stack();
    if !counting("peers_stack", || {
        black_box(one(&mut s));
    }) {
        g.bench_function("peers_stack", |b| b.iter(|| one(&mut s)));
    }
    let mut s = tr.layer(Bare);
    if !counting("tower_resilience_breaker_alone", || {
        black_box(one(&mut s));
    }) {
        g.bench_function("tower_resilience_breaker_alone", |b| b.iter(|| one(&mut s)));
    }
    g.finish();
}

/// `CONFIG`'s protections from the crates people use instead, outermost
/// first as the stack orders them: the real-server bench's `peers` without
/// its per-client quota and concurrency limit, which `CONFIG` has not.
fn peers_stack()
-> impl Service<Req, Response = axum::response::Response, Error = std::convert::Infallible> {
    use axum::error_handling::HandleErrorLayer;
    use tower::ServiceBuilder;
    use tower_governor::GovernorLayer;
    use tower_governor::key_extractor::GlobalKeyExtractor;
    use tower_resilience::circuitbreaker::CircuitBreakerError;

    let global = tower_rampart_benches::roomy_governor!(GlobalKeyExtractor);
    let breaker = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .sliding_window_size(100)
        .classify_response(|res: &axum::response::Response| res.status().is_server_error())
        .build()
        .unwrap();
    ServiceBuilder::new()
        .layer(HandleErrorLayer::new(
            |error: CircuitBreakerError<_>| async move {
                (http::StatusCode::SERVICE_UNAVAILABLE, error.to_string())
            },
        ))
        .layer(GovernorLayer::new(global))
        .layer(breaker)
        // The body as axum answers it, for the breaker's classifier and
        // tower_governor's refusal.
        .map_response(|res: Response<_>| res.map(axum::body::Body::new))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            http::StatusCode::GATEWAY_TIMEOUT,
            std::time::Duration::from_secs(5),
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .service(Bare)
}

criterion_group!(benches, bench);
criterion_main!(benches);
