//! The whole stack on the happy path (probes, drain, rate limit, circuit
//! breaker, timeout, panic catching, built from a config) against the bare
//! service, in one run; with the same layers composed by hand without
//! tower-http's `CatchPanicLayer` (to show its share), and
//! tower-resilience's circuit breaker alone for scale.
//!
//! `cargo bench --all-features --bench stack -- --warm-up-time 1 --measurement-time 3`
//!
//! Every future is polled once with a noop waker (all are ready at once):
//! the numbers are the layers' cost, not an executor's. A tokio runtime is
//! entered because the timeout arms a timer and the coordinator needs one.

use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use tower::{Layer, Service};
use tower_rampart::config::RampartConfig;

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

fn bench(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let config = RampartConfig::from_toml(CONFIG).unwrap();
    let stack = config.stack().build().unwrap();
    let no_rl = RampartConfig::from_toml(CONFIG_NO_RATE_LIMIT).unwrap();
    let stack_no_rl = no_rl.stack().build().unwrap();
    let with_ext = RampartConfig::from_toml(&CONFIG.replace(
        "timeout = \"5s\"",
        "timeout = \"5s\"\n    deadline_extension = true",
    ))
    .unwrap();
    assert!(with_ext.timeout.deadline_extension);
    let stack_with_ext = with_ext.stack().build().unwrap();

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
    let mut s = stack_no_rl.layer().layer(Bare);
    if !counting("rampart_stack_without_rate_limit", || {
        black_box(one(&mut s));
    }) {
        g.bench_function("rampart_stack_without_rate_limit", |b| {
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
    let mut s = tr.layer(Bare);
    if !counting("tower_resilience_breaker_alone", || {
        black_box(one(&mut s));
    }) {
        g.bench_function("tower_resilience_breaker_alone", |b| b.iter(|| one(&mut s)));
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
