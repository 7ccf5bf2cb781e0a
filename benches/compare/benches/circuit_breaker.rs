//! The circuit breaker's cost per call, against the bare service and the
//! breakers people would use instead (tower-resilience, failsafe), in one
//! run; plus 1- and 2-thread contended throughput for each.
//!
//! `cargo bench --all-features --bench circuit_breaker -- --warm-up-time 1 --measurement-time 3`

use std::future::{Future, Ready, ready};
use std::hint::black_box;
use std::pin::pin;
use std::sync::{Arc, Barrier};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use http::{Request, Response};
use http_body_util::Empty;
use tower::{Layer, Service};
use tower_rampart::circuit_breaker::CircuitBreakerLayer;

type Req = Request<()>;
type Res = Response<Empty<Bytes>>;

#[derive(Clone)]
struct Bare {
    fail: bool,
}

impl Service<Req> for Bare {
    type Response = Res;
    type Error = std::io::Error;
    type Future = Ready<Result<Res, std::io::Error>>;
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }
    fn call(&mut self, _req: Req) -> Self::Future {
        if self.fail {
            ready(Err(std::io::Error::other("down")))
        } else {
            ready(Ok(Response::new(Empty::new())))
        }
    }
}

/// Polls a future until it is ready, without an executor. Every service
/// here is ready at once, except tower-resilience's under contention (its
/// async mutex): then this spins, which is what the contention costs.
#[inline]
fn now<F: Future>(f: F) -> F::Output {
    let mut cx = Context::from_waker(Waker::noop());
    let mut f = pin!(f);
    loop {
        if let Poll::Ready(v) = f.as_mut().poll(&mut cx) {
            return v;
        }
        std::hint::spin_loop();
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

/// One call: `poll_ready`, `call`, poll the future, drop the response.
#[inline]
fn one<S: Service<Req>>(svc: &mut S) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    let _ = svc.poll_ready(&mut cx);
    let out = now(svc.call(Request::new(())));
    black_box(out).is_ok()
}

/// A service made fresh for each thread (a clone of a shared one).
trait Bench: Send + 'static {
    fn call_once(&mut self) -> bool;
}

struct Tower<S>(S);
impl<S: Service<Req> + Send + 'static> Bench for Tower<S> {
    #[inline]
    fn call_once(&mut self) -> bool {
        one(&mut self.0)
    }
}

/// failsafe is not a tower layer: wrap the inner future the way its docs do.
#[derive(Clone)]
struct Failsafe<CB> {
    cb: CB,
    inner: Bare,
}
impl<CB: failsafe::futures::CircuitBreaker + Send + 'static> Bench for Failsafe<CB> {
    #[inline]
    fn call_once(&mut self) -> bool {
        let fut = self.inner.call(Request::new(()));
        black_box(now(self.cb.call(fut))).is_ok()
    }
}

fn contended<B, F>(c: &mut Criterion, name: &str, make: F)
where
    B: Bench,
    F: Fn() -> B + Sync,
{
    if std::env::var_os("BENCH_CALLS").is_some() {
        return;
    }
    let mut g = c.benchmark_group(format!("circuit_breaker/contended/{name}"));
    for threads in [1u64, 2] {
        g.throughput(Throughput::Elements(threads));
        g.bench_function(format!("{threads}-thread"), |b| {
            b.iter_custom(|iters| {
                let barrier = Arc::new(Barrier::new(threads as usize + 1));
                let handles: Vec<_> = (0..threads)
                    .map(|_| {
                        let mut svc = make();
                        let barrier = barrier.clone();
                        std::thread::spawn(move || {
                            barrier.wait();
                            for _ in 0..iters {
                                svc.call_once();
                            }
                        })
                    })
                    .collect();
                barrier.wait();
                let start = Instant::now();
                for h in handles {
                    h.join().unwrap();
                }
                start.elapsed()
            })
        });
    }
    g.finish();
}

fn open_rampart() -> CircuitBreakerLayer {
    let layer = CircuitBreakerLayer::builder()
        .name("bench")
        .count_window(1)
        .minimum_calls(1)
        .open_duration(Duration::from_secs(3600))
        .build()
        .unwrap();
    let mut svc = layer.clone().into_error_mode().layer(Bare { fail: true });
    one(&mut svc);
    assert!(layer.handle().state().is_refusing());
    layer
}

fn benches(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Setup inside the runtime (timers, tower-resilience's handle); the
    // measurements outside it, as on a worker thread with a plain clock.
    let guard = rt.enter();

    // Ours.
    let closed = CircuitBreakerLayer::builder()
        .name("bench")
        .build()
        .unwrap();
    let open = open_rampart();
    // tower-resilience, default settings.
    let (tr_closed, _) = tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
        .build_with_handle()
        .unwrap();
    let (tr_open, tr_open_handle) =
        tower_resilience::circuitbreaker::CircuitBreakerLayer::builder()
            .wait_duration_in_open(Duration::from_secs(3600))
            .build_with_handle()
            .unwrap();
    rt.block_on(tr_open_handle.force_open());
    // failsafe, default policy; and one opened by a failure.
    let fs_closed = failsafe::Config::new().build();
    let fs_open = failsafe::Config::new()
        .failure_policy(failsafe::failure_policy::consecutive_failures(
            1,
            failsafe::backoff::constant(Duration::from_secs(3600)),
        ))
        .build();
    fs_open.on_error();
    assert!(!fs_open.is_call_permitted());
    // A server's first request through the breaker starts the task that
    // adds up its per-thread call counts (`util::tally`), which runs from
    // then on; one call here does the same (the task stays started on this
    // runtime), so that the rows measure what a server's requests pay.
    one(&mut closed.layer(Bare { fail: false }));

    drop(guard);
    let bare = Bare { fail: false };
    {
        let mut g = c.benchmark_group("circuit_breaker/call");
        let mut s = bare.clone();
        if !counting("bare", || {
            black_box(one(&mut s));
        }) {
            g.bench_function("bare", |b| b.iter(|| one(&mut s)));
        }
        let mut s = closed.layer(bare.clone());
        if !counting("rampart_closed", || {
            black_box(one(&mut s));
        }) {
            g.bench_function("rampart_closed", |b| b.iter(|| one(&mut s)));
        }
        let mut s = closed.clone().into_error_mode().layer(bare.clone());
        if !counting("rampart_closed_error_mode", || {
            black_box(one(&mut s));
        }) {
            g.bench_function("rampart_closed_error_mode", |b| b.iter(|| one(&mut s)));
        }
        let mut s = open.clone().into_error_mode().layer(bare.clone());
        if !counting("rampart_open_typed_error", || {
            black_box(one(&mut s));
        }) {
            g.bench_function("rampart_open_typed_error", |b| b.iter(|| one(&mut s)));
        }
        let mut s = open.layer(bare.clone());
        if !counting("rampart_open_http_response", || {
            black_box(one(&mut s));
        }) {
            g.bench_function("rampart_open_http_response", |b| b.iter(|| one(&mut s)));
        }
        let mut s = tr_closed.layer(bare.clone());
        if !counting("tower_resilience_closed", || {
            black_box(one(&mut s));
        }) {
            g.bench_function("tower_resilience_closed", |b| b.iter(|| one(&mut s)));
        }
        let mut s = tr_open.layer(bare.clone());
        if !counting("tower_resilience_open", || {
            black_box(one(&mut s));
        }) {
            g.bench_function("tower_resilience_open", |b| b.iter(|| one(&mut s)));
        }
        let mut s = Failsafe {
            cb: fs_closed.clone(),
            inner: bare.clone(),
        };
        if !counting("failsafe_closed", || {
            black_box(s.call_once());
        }) {
            g.bench_function("failsafe_closed", |b| b.iter(|| s.call_once()));
        }
        let mut s = Failsafe {
            cb: fs_open.clone(),
            inner: bare.clone(),
        };
        if !counting("failsafe_open", || {
            black_box(s.call_once());
        }) {
            g.bench_function("failsafe_open", |b| b.iter(|| s.call_once()));
        }
        g.finish();
    }

    contended(c, "bare", || Tower(bare.clone()));
    let svc = closed.layer(bare.clone());
    contended(c, "rampart_closed", || Tower(svc.clone()));
    let svc = open.clone().into_error_mode().layer(bare.clone());
    contended(c, "rampart_open_typed_error", || Tower(svc.clone()));
    let svc = tr_closed.layer(bare.clone());
    contended(c, "tower_resilience_closed", || Tower(svc.clone()));
    let fs = fs_closed.clone();
    contended(c, "failsafe_closed", || Failsafe {
        cb: fs.clone(),
        inner: bare.clone(),
    });
}

criterion_group!(group, benches);
criterion_main!(group);
