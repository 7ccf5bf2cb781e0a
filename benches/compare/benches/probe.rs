//! The lifecycle layers on non-probe requests, next to the bare service and
//! the nearest alternative for counting in-flight work (tower's
//! `ConcurrencyLimit`), in one run.
//!
//! Every iteration builds a fresh request (no allocation), calls
//! the service, polls the future with a task's waker and drops the response
//! (for the drain layer the in-flight count is released when the response
//! body is dropped, so the drop is part of the cost). Two inner services:
//!
//! - `ready`: the response is ready on the first poll;
//! - `pending_once`: the first poll is `Pending` (the drain layer then
//!   registers for the abort signal: a short lock), the second is ready.
//!
//! Each sample is the fastest 256-iteration chunk (see `fastest_chunk`).
//!
//! Contended: two threads calling through one shared layer (`iter_custom`).
//!
//! Run: `cargo bench --all-features --bench probe -- --warm-up-time 1 --measurement-time 3`

use std::future::Future;
use std::hint::black_box;
use std::pin::pin;
use std::sync::Arc;
use std::task::{Context, Poll, Wake, Waker};
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use http::{Request, Uri};

use tower::{Layer, Service};
use tower_rampart::health::{Check, HealthRegistry, Kind, ProbeLayer};
use tower_rampart::shutdown::Shutdown;

mod support;
use support::{Req, pending_once_service, ready_service};

/// A request to a non-probe path. `Uri::from_static` and an empty header
/// map do not allocate, so building it costs a few ns in every variant.
#[inline]
fn request() -> Req {
    let mut req = Request::new(());
    *req.uri_mut() = Uri::from_static("/api/v1/orders/42");
    req
}

/// Calls `svc` (after `poll_ready`) and polls the future to completion with
/// the thread's [`Task`] waker, then drops the response.
#[inline]
fn call<S>(svc: &mut S, req: Req)
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    TASK.with(|task| {
        let mut cx = Context::from_waker(task);
        match svc.poll_ready(&mut cx) {
            Poll::Ready(r) => r.unwrap(),
            Poll::Pending => unreachable!("always ready"),
        }
        let mut fut = pin!(svc.call(req));
        loop {
            if let Poll::Ready(res) = fut.as_mut().poll(&mut cx) {
                drop(black_box(res.unwrap()));
                return;
            }
        }
    })
}

/// The waker of the bench's "task": reference-counted, as a runtime's is
/// (tokio's), so that a layer which keeps a clone of it pays what it would
/// under a server (an atomic add, and a subtract when dropped), which a
/// noop waker would hide. Waking it does nothing: every poll loops.
struct Task;

impl Wake for Task {
    fn wake(self: Arc<Self>) {}
}

thread_local! {
    static TASK: Waker = Waker::from(Arc::new(Task));
}

/// Runs `iters` iterations in chunks of 256 and reports `iters` times the
/// fastest chunk's per-iteration time. The two cores of the bench machine
/// are shared with other builds and preemption only ever adds time, so the
/// fastest short chunk is the closest to the real cost.
fn fastest_chunk(iters: u64, mut f: impl FnMut()) -> Duration {
    const CHUNK: u64 = 256;
    let chunks = iters.div_ceil(CHUNK).max(5);
    let mut best = Duration::MAX;
    for _ in 0..chunks {
        let start = Instant::now();
        for _ in 0..CHUNK {
            f();
        }
        best = best.min(start.elapsed());
    }
    best.mul_f64(iters as f64 / CHUNK as f64)
}

fn bench_one<S>(c: &mut Criterion, group: &str, name: &str, mut svc: S)
where
    S: Service<Req>,
    S::Error: std::fmt::Debug,
{
    // `BENCH_CALLS=<group>/<name>,<calls>`: instead of measuring, run that
    // row `calls` times and exit, for instruction counts (`valgrind
    // --tool=cachegrind --cache-sim=no`; subtract a run with fewer calls),
    // which the load of a shared machine does not disturb. The other rows
    // are skipped.
    if let Ok(spec) = std::env::var("BENCH_CALLS") {
        let (row, n) = spec.split_once(',').expect("BENCH_CALLS=<row>,<calls>");
        if row == format!("{group}/{name}") {
            for _ in 0..n.parse::<u64>().expect("a call count") {
                call(&mut svc, request());
            }
            std::process::exit(0);
        }
        return;
    }
    let mut g = c.benchmark_group(group);
    g.bench_function(name, |b| {
        b.iter_custom(|iters| fastest_chunk(iters, || call(&mut svc, request())))
    });
    g.finish();
}

fn lifecycle(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .build()
        .unwrap();
    let _guard = rt.enter();
    let shutdown = Shutdown::builder().signals(false).build().unwrap();
    let registry = HealthRegistry::builder()
        .shutdown(&shutdown)
        .check(Check::sync(
            "flag",
            Kind::Readiness,
            || Ok::<(), String>(()),
        ))
        .build()
        .unwrap();
    let probe = ProbeLayer::new(&registry);
    let drain = shutdown.drain_layer();

    for (group, pending) in [("ready", false), ("pending_once", true)] {
        macro_rules! all {
            ($inner:expr) => {
                bench_one(c, group, "bare", $inner);
                bench_one(c, group, "rampart_probe", probe.layer($inner));
                bench_one(c, group, "rampart_drain", drain.layer($inner));
                bench_one(
                    c,
                    group,
                    "rampart_probe+drain",
                    probe.layer(drain.layer($inner)),
                );
                bench_one(
                    c,
                    group,
                    "tower_concurrency_limit",
                    tower::limit::ConcurrencyLimitLayer::new(1 << 20).layer($inner),
                );
            };
        }
        if pending {
            all!(pending_once_service());
        } else {
            all!(ready_service());
        }
    }

    if std::env::var("BENCH_CALLS").is_ok() {
        return;
    }
    // Two threads through one shared layer.
    let mut g = c.benchmark_group("contended_2_threads");
    fn two_threads<S>(svc: S, iters: u64) -> Duration
    where
        S: Service<Req> + Clone + Send + 'static,
        S::Error: std::fmt::Debug,
    {
        let start = Instant::now();
        let handles: Vec<_> = (0..2)
            .map(|_| {
                let mut svc = svc.clone();
                std::thread::spawn(move || {
                    for _ in 0..iters {
                        call(&mut svc, request());
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        start.elapsed()
    }
    g.bench_function("bare", |b| {
        b.iter_custom(|iters| two_threads(ready_service(), iters))
    });
    g.bench_function("rampart_probe+drain", |b| {
        let svc = probe.layer(drain.layer(ready_service()));
        b.iter_custom(|iters| two_threads(svc.clone(), iters))
    });
    // Pending once: the drain registers each request for the abort signal
    // (and gives its slot back) while the other thread does the same.
    g.bench_function("pending_once/bare", |b| {
        b.iter_custom(|iters| two_threads(pending_once_service(), iters))
    });
    g.bench_function("pending_once/rampart_drain", |b| {
        let svc = drain.layer(pending_once_service());
        b.iter_custom(|iters| two_threads(svc.clone(), iters))
    });
    g.finish();
}

criterion_group!(benches, lifecycle);
criterion_main!(benches);
