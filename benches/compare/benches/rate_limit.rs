//! Rate limit layer cost, next to the bare service, tower_governor and
//! tower's `RateLimit`, in one run; plus the resident memory of 1 000 000
//! keys. `cargo bench --all-features --bench rate_limit -- --warm-up-time 1 --measurement-time 3`
use std::convert::Infallible;
use std::future::Future;
use std::hint::black_box;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::ConnectInfo;
use criterion::Criterion;
use http::{Request, Response};
use tower::{Layer, Service};
use tower_rampart::rate_limit::{KeyExtractor, Quota, RateLimitLayer};

mod support;

type Req = Request<()>;

fn inner() -> impl Service<
    Req,
    Response = Response<Body>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<Body>, Infallible>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Req| std::future::ready(Ok(Response::new(Body::empty()))))
}

fn ip(i: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(0x0A00_0000 + i))
}

fn request(i: u32) -> Req {
    let mut req = Request::new(());
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::new(ip(i), 40_000)));
    req
}

/// `poll_ready` + `call` + one poll with a noop waker: the layer, not an
/// executor. Returns the status.
#[inline]
fn once<S, B>(svc: &mut S, req: Req) -> u16
where
    S: Service<Req, Response = Response<B>>,
    S::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(r) => r.unwrap(),
        Poll::Pending => panic!("not ready"),
    }
    let fut = pin!(svc.call(req));
    match fut.poll(&mut cx) {
        Poll::Ready(Ok(res)) => res.status().as_u16(),
        Poll::Ready(Err(e)) => panic!("{e:?}"),
        Poll::Pending => panic!("pending"),
    }
}

/// A quota that never refuses in a bench.
fn roomy() -> Quota {
    Quota::per_second(1_000_000_000).burst(1_000_000_000)
}

fn ours(key: Option<KeyExtractor>, max_keys: usize) -> RateLimitLayer {
    let mut q = roomy().name("bench");
    if let Some(k) = key {
        q = q.key(k);
    }
    started(
        RateLimitLayer::builder()
            .name("bench")
            .quota(q)
            .max_keys(max_keys)
            .idle_sweep(None)
            .build()
            .unwrap(),
    )
}

/// `layer`, after a first call (see `support::first_call`).
fn started(layer: RateLimitLayer) -> RateLimitLayer {
    support::first_call(|| once(&mut layer.clone().layer(inner()), request(0)));
    layer
}

/// The production example's shape: a global quota and one per client IP
/// (over `max_keys` keys), decided together.
fn global_and_ip(max_keys: usize) -> RateLimitLayer {
    started(
        RateLimitLayer::builder()
            .name("bench")
            .quota(roomy().name("global"))
            .quota(roomy().name("per_ip").key(KeyExtractor::client_ip()))
            .max_keys(max_keys)
            .idle_sweep(None)
            .build()
            .unwrap(),
    )
}

fn bench_admit(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit/admit");
    g.bench_function("bare", |b| {
        let mut svc = inner();
        b.iter(|| once(&mut svc, request(1)))
    });
    g.bench_function("ours global", |b| {
        let mut svc = ours(None, 1).layer(inner());
        b.iter(|| once(&mut svc, request(1)))
    });
    g.bench_function("ours global, 2 quotas", |b| {
        let layer = RateLimitLayer::builder()
            .quota(roomy().name("a"))
            .quota(roomy().name("b"))
            .idle_sweep(None)
            .build()
            .unwrap();
        let mut svc = layer.layer(inner());
        b.iter(|| once(&mut svc, request(1)))
    });
    g.bench_function("ours global + client ip, 10000 keys", |b| {
        let mut svc = global_and_ip(10_000).layer(inner());
        for i in 0..10_000 {
            once(&mut svc, request(i));
        }
        let mut i = 0u32;
        b.iter(|| {
            i = (i + 7919) % 10_000;
            once(&mut svc, request(i))
        })
    });
    g.bench_function("tower_governor global", |b| {
        let config = tower_rampart_benches::roomy_governor!(
            tower_governor::key_extractor::GlobalKeyExtractor
        );
        let mut svc = tower_governor::GovernorLayer::new(config).layer(inner());
        b.iter(|| once(&mut svc, request(1)))
    });
    g.bench_function("tower RateLimit", |b| {
        // Its timer needs a runtime at construction only.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let guard = rt.enter();
        let mut svc =
            tower::limit::RateLimitLayer::new(u64::MAX, Duration::from_secs(1)).layer(inner());
        drop(guard);
        b.iter(|| once(&mut svc, request(1)))
    });
    // `cargo test --benches` runs each bench once: skip the 1 000 000-key
    // set-up there.
    let sizes: &[u32] = if std::env::args().any(|a| a == "--bench") {
        &[1, 10_000, 1_000_000]
    } else {
        &[1, 10_000]
    };
    for &n in sizes {
        g.bench_function(format!("ours client ip, {n} keys"), |b| {
            let mut svc = ours(Some(KeyExtractor::client_ip()), n as usize).layer(inner());
            for i in 0..n {
                once(&mut svc, request(i));
            }
            let mut i = 0u32;
            b.iter(|| {
                i = (i + 7919) % n;
                once(&mut svc, request(i))
            })
        });
        g.bench_function(format!("tower_governor peer ip, {n} keys"), |b| {
            let config = tower_rampart_benches::roomy_governor!(
                tower_governor::key_extractor::PeerIpKeyExtractor
            );
            let mut svc = tower_governor::GovernorLayer::new(config).layer(inner());
            for i in 0..n {
                once(&mut svc, request(i));
            }
            let mut i = 0u32;
            b.iter(|| {
                i = (i + 7919) % n;
                once(&mut svc, request(i))
            })
        });
    }
    g.finish();
}

fn bench_refuse(c: &mut Criterion) {
    let mut g = c.benchmark_group("rate_limit/refuse");
    for (name, legacy) in [
        ("ours, full headers", false),
        ("ours, full + legacy headers", true),
    ] {
        g.bench_function(name, |b| {
            let mut svc = refusing(legacy).layer(inner());
            assert_eq!(once(&mut svc, request(1)), 200);
            b.iter(|| {
                let status = once(&mut svc, request(1));
                debug_assert_eq!(status, 429);
                status
            })
        });
    }
    g.bench_function("tower_governor", |b| {
        let config = tower_governor::governor::GovernorConfigBuilder::default()
            .per_second(3600)
            .burst_size(1)
            .finish()
            .unwrap();
        let mut svc = tower_governor::GovernorLayer::new(config).layer(inner());
        assert_eq!(once(&mut svc, request(1)), 200);
        b.iter(|| once(&mut svc, request(1)))
    });
    g.finish();
}

/// Two threads hammering one shared state; time per request.
fn contended<S, B>(c: &mut Criterion, name: &str, make: impl Fn() -> S)
where
    S: Service<Req, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
{
    let svc = make();
    c.bench_function(&format!("rate_limit/contended 2 threads/{name}"), |b| {
        b.iter_custom(|iters| {
            let per = iters / 2 + 1;
            let start = Instant::now();
            let threads: Vec<_> = (0..2u32)
                .map(|t| {
                    let mut svc = svc.clone();
                    std::thread::spawn(move || {
                        for i in 0..per {
                            black_box(once(&mut svc, request(t * 1000 + (i % 1000) as u32)));
                        }
                    })
                })
                .collect();
            for t in threads {
                t.join().unwrap();
            }
            start.elapsed().mul_f64(iters as f64 / (2 * per) as f64)
        })
    });
}

fn bench_contended(c: &mut Criterion) {
    contended(c, "bare", inner);
    contended(c, "ours global", || ours(None, 1).layer(inner()));
    contended(c, "ours client ip", || {
        ours(Some(KeyExtractor::client_ip()), 100_000).layer(inner())
    });
    contended(c, "tower_governor global", || {
        let config = tower_rampart_benches::roomy_governor!(
            tower_governor::key_extractor::GlobalKeyExtractor
        );
        tower_governor::GovernorLayer::new(config).layer(inner())
    });
}

fn rss_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let pages: u64 = statm
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    pages * 4096
}

/// Resident memory of 1 000 000 keys, and of 2 000 000 distinct keys sent
/// through a table capped at 1 000 000.
fn memory_report() {
    let mb = |b: u64| b as f64 / (1024.0 * 1024.0);
    let before = rss_bytes();
    let layer = ours(Some(KeyExtractor::client_ip()), 1_000_000);
    let mut svc = layer.layer(inner());
    for i in 0..1_000_000 {
        once(&mut svc, request(i));
    }
    let after_1m = rss_bytes();
    let keys_1m = layer.key_count();
    for i in 1_000_000..2_000_000 {
        once(&mut svc, request(i));
    }
    let after_2m = rss_bytes();
    let keys_2m = layer.key_count();
    println!(
        "memory: {keys_1m} keys: +{:.1} MiB resident ({:.0} B/key); \
         after 2 000 000 distinct keys with max_keys 1 000 000: {keys_2m} keys, +{:.1} MiB resident",
        mb(after_1m.saturating_sub(before)),
        after_1m.saturating_sub(before) as f64 / keys_1m.max(1) as f64,
        mb(after_2m.saturating_sub(before)),
    );
    drop(svc);
    drop(layer);
}

/// `RL_LOOP=<variant>`: run 2 000 000 calls of one variant and exit, for
/// `perf stat -e instructions,cycles` (instruction counts are not disturbed
/// by other load on the machine, unlike wall-clock time). Keyed variants
/// first insert their keys, so subtract the `RL_LOOP=<variant> RL_N=0` run.
fn fixed_loop(variant: &str) {
    let n: u32 = std::env::var("RL_N")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2_000_000);
    fn run<S, B>(mut svc: S, keys: u32, n: u32)
    where
        S: Service<Req, Response = Response<B>>,
        S::Error: std::fmt::Debug,
    {
        for i in 0..keys {
            once(&mut svc, request(i));
        }
        let mut k = 0u32;
        for _ in 0..n {
            k = (k + 7919) % keys.max(1);
            black_box(once(&mut svc, request(k)));
        }
    }
    let governor_ip = || {
        let config = tower_rampart_benches::roomy_governor!(
            tower_governor::key_extractor::PeerIpKeyExtractor
        );
        tower_governor::GovernorLayer::new(config).layer(inner())
    };
    let ip = |keys: usize| ours(Some(KeyExtractor::client_ip()), keys).layer(inner());
    match variant {
        "bare" => run(inner(), 0, n),
        "ours-global" => run(ours(None, 1).layer(inner()), 0, n),
        "ours-2-quotas" => run(
            RateLimitLayer::builder()
                .quota(roomy().name("a"))
                .quota(roomy().name("b"))
                .idle_sweep(None)
                .build()
                .unwrap()
                .layer(inner()),
            0,
            n,
        ),
        "ours-global-and-ip-10k" => run(global_and_ip(10_000).layer(inner()), 10_000, n),
        "ours-ip-1" => run(ip(1), 1, n),
        "ours-ip-10k" => run(ip(10_000), 10_000, n),
        "ours-ip-1m" => run(ip(1_000_000), 1_000_000, n),
        "ours-refuse" => run(refusing(false).layer(inner()), 1, n),
        "ours-refuse-legacy" => run(refusing(true).layer(inner()), 1, n),
        "governor-global" => {
            let config = tower_rampart_benches::roomy_governor!(
                tower_governor::key_extractor::GlobalKeyExtractor
            );
            run(
                tower_governor::GovernorLayer::new(config).layer(inner()),
                0,
                n,
            )
        }
        "governor-ip-1" => run(governor_ip(), 1, n),
        "governor-ip-10k" => run(governor_ip(), 10_000, n),
        "governor-ip-1m" => run(governor_ip(), 1_000_000, n),
        "governor-refuse" => {
            let config = tower_governor::governor::GovernorConfigBuilder::default()
                .per_second(3600)
                .burst_size(1)
                .finish()
                .unwrap();
            run(
                tower_governor::GovernorLayer::new(config).layer(inner()),
                1,
                n,
            )
        }
        "tower" => {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            let guard = rt.enter();
            let svc =
                tower::limit::RateLimitLayer::new(u64::MAX, Duration::from_secs(1)).layer(inner());
            drop(guard);
            run(svc, 0, n)
        }
        other => panic!("unknown RL_LOOP variant {other}"),
    }
}

/// Two quotas, the per-IP one exhausted for key 0: refusals carry
/// `Retry-After`, `RateLimit-Policy` and `RateLimit` (two items each), plus
/// `x-ratelimit-*` when `legacy`.
fn refusing(legacy: bool) -> RateLimitLayer {
    RateLimitLayer::builder()
        .name("bench")
        .quota(
            Quota::per_hour(1)
                .burst(1)
                .key(KeyExtractor::client_ip())
                .name("per-ip"),
        )
        .quota(Quota::per_second(1_000_000).name("global"))
        .legacy_headers(legacy)
        .idle_sweep(None)
        .build()
        .unwrap()
}

fn main() {
    if let Ok(v) = std::env::var("RL_LOOP") {
        fixed_loop(&v);
        return;
    }
    // No runtime is entered: with the `test-util` feature (on in
    // dev-dependencies) tokio's `Instant::now()` inside a runtime reads a
    // mutex-guarded mock clock, which is not what production pays.
    // The memory report runs in full `cargo bench` runs only (not with a
    // name filter, not under `cargo test --benches`).
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--bench")
        && args
            .iter()
            .all(|a| a.starts_with('-') || a.parse::<f64>().is_ok())
    {
        memory_report();
    }
    let mut c = Criterion::default().configure_from_args();
    bench_admit(&mut c);
    bench_refuse(&mut c);
    bench_contended(&mut c);
    c.final_summary();
}
