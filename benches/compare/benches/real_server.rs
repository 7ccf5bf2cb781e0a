//! The production stack under a real server and a real client (issue 14):
//! the `production` example's handler bare, and behind the whole stack as
//! `examples/production.rs` assembles it (config file, Prometheus recorder
//! installed, `tower_rampart::serve`), over HTTP/1.1 and h2c.
//!
//! ```sh
//! cargo bench -p tower-rampart-benches --bench real_server
//! ```
//!
//! Servers (all in this process, on the server runtime):
//!
//! - `axum::serve`: the handler with no middleware under `axum::serve`
//!   (what the issue compared with);
//! - `serve`: the same router under `tower_rampart::serve` with the
//!   config's `[server]` settings, no middleware: the fair baseline for the
//!   stack, which is served by the same loop;
//! - `stack`: the whole stack wrapped around the router (as the example
//!   does: its per-route breakers found by the templates of
//!   `routes.paths`), built from `examples/configs/production.toml` with
//!   the rate limits raised so nothing is refused (`shutdown.signals =
//!   false` too), under the same loop;
//! - `peers`: the protections `production.toml` asks for, built from the
//!   crates people use instead, around the whole router under the same
//!   loop (the anchor of the stack's row): tower_governor twice (a global
//!   quota, and one per peer address), tower's `LoadShed` over
//!   `ConcurrencyLimit` (1 000), tower-resilience's circuit breaker with
//!   the config's thresholds and slow-call threshold (5xx is a failure)
//!   over a window of the last 100 calls, tower-http's `Timeout` (504 after
//!   5 s) and `CatchPanic`, with axum's `HandleErrorLayer` answering their
//!   errors. Limits raised as for the stack. What it does not have, and so
//!   does not pay for: a drain, probes, platform paths, criticality
//!   partitions, a queue, a breaker per route, the caller's budget, any
//!   metric. Not the config's 30-second time window: tower-resilience keeps
//!   a record of every call in a time window and counts them all again on
//!   every call, so its cost grows with the request rate (`peers time
//!   window`, below).
//!
//! Every answer, from every server, is checked to be `200 ok`.
//!
//! With `REAL_SERVER_ABLATE=1`, the stack minus one thing at a time, as the
//! config can say it: `stack -rate_limit` (no `[rate_limit]`), `stack
//! -concurrency` (no `[concurrency]`), `stack -per_route` (one shared
//! breaker), `stack -time_window` (the breaker over a count window, no
//! slow-call threshold), `stack -budget_header` (the timeout without
//! `budget_header`), `stack lean` (all five at once: the stack's frame,
//! its front, drain, probes, one breaker, timeout and panic catcher, with
//! their metrics), and `stack Router::layer`: the stack
//! applied per route with `Router::layer`, its breakers keyed by axum's
//! matched path (no `routes.paths`); and `peers time window`, `peers` with
//! the config's 30-second time window. `REAL_SERVER_NO_RECORDER=1`
//! runs without the Prometheus recorder (the `metrics` facade's no-op),
//! for the recorder's share; `REAL_SERVER_CALL_RECORDER=1` with a recorder
//! whose handles are real dynamic calls that do nothing, for the share of
//! the calls themselves. `REAL_SERVER_ONLY=stack` runs only the named
//! servers (comma-separated), to profile one of them. `REAL_SERVER_LISTEN=1`
//! starts the servers and no client: it prints each server's URL and name
//! and serves until killed, for a load generator in another process
//! (`benches/compare/load.sh`: wrk and h2load).
//!
//! The load: a closed loop of `CONNECTIONS` requests in flight from one
//! hyper client, `GET /api/ok` back to back for `ROUND` per server, the
//! servers alternated round after round so the machine's drift hits them
//! alike. HTTP/1.1: `CONNECTIONS` keep-alive connections, one request at a
//! time each (wrk's model); h2c: `H2_CONNECTIONS` connections with
//! `CONNECTIONS / H2_CONNECTIONS` streams each (h2load's `-c -m`).
//!
//! The server runtime and the client runtime have one worker thread each
//! (`REAL_SERVER_THREADS` sets the server's), pinned with `taskset` to CPU
//! 0 (server) and CPU 1 (client, and the thread driving it) when the
//! machine has two CPUs or more, so the client's work is not counted
//! against the server. Printed per round: requests per second, server CPU
//! per request (the server threads' user + system time from
//! `/proc/self/task`), p50 and p99; then per protocol the medians, the
//! median of the per-round ratios against `serve`, and the middle half of
//! the throughput ratios (first to third quartile: how far one round's
//! ratio moves on this machine). Not a criterion bench: it measures a
//! server over sockets. Tuning: `REAL_SERVER_CONNECTIONS`,
//! `REAL_SERVER_SECS`, `REAL_SERVER_ROUNDS`.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::{TokioExecutor, TokioIo};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpStream;
use tower_rampart::circuit_breaker::SlidingWindow;
use tower_rampart::config::RampartConfig;

const SERVER_THREAD: &str = "rs-server";
const CLIENT_THREAD: &str = "rs-client";
const PATH: &str = "/api/ok";

/// The same buckets as `examples/production.rs`.
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

// ---------------------------------------------------------------------------
// The application: the handlers of `examples/production.rs`.

#[derive(Default)]
struct Served {
    started: AtomicU64,
    completed: AtomicU64,
}

#[derive(Clone)]
struct AppState {
    served: Arc<Served>,
    metrics: Option<PrometheusHandle>,
}

/// `/api/ok` calls of every server, printed at the end (for instruction
/// counts per request under `valgrind`).
static HANDLED: AtomicU64 = AtomicU64::new(0);

async fn ok(State(s): State<AppState>) -> &'static str {
    HANDLED.fetch_add(1, Ordering::Relaxed);
    s.served.started.fetch_add(1, Ordering::Relaxed);
    s.served.completed.fetch_add(1, Ordering::Relaxed);
    "ok\n"
}

async fn fail(State(s): State<AppState>) -> (StatusCode, &'static str) {
    s.served.started.fetch_add(1, Ordering::Relaxed);
    s.served.completed.fetch_add(1, Ordering::Relaxed);
    (StatusCode::INTERNAL_SERVER_ERROR, "failed on purpose\n")
}

async fn sleep(State(s): State<AppState>, Path(ms): Path<u64>) -> String {
    s.served.started.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
    s.served.completed.fetch_add(1, Ordering::Relaxed);
    format!("slept {ms}ms\n")
}

async fn render_metrics(State(s): State<AppState>) -> String {
    match s.metrics {
        Some(m) => {
            m.run_upkeep();
            m.render()
        }
        None => String::new(),
    }
}

fn router(metrics: Option<PrometheusHandle>) -> Router {
    Router::new()
        .route("/api/ok", get(ok))
        .route("/api/fail", get(fail))
        .route("/api/sleep/{ms}", get(sleep))
        .route("/metrics", get(render_metrics))
        .with_state(AppState {
            served: Arc::new(Served::default()),
            metrics,
        })
}

/// `examples/configs/production.toml`, with the limits raised so that
/// nothing is refused and no signal handler installed.
fn production_config() -> RampartConfig {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/configs/production.toml"
    );
    let mut config = RampartConfig::load(file).expect("examples/configs/production.toml");
    config.shutdown.signals = false;
    let rl = config
        .rate_limit
        .as_mut()
        .expect("production.toml has [rate_limit]");
    for q in &mut rl.quotas {
        q.rate = "100000000/s".to_owned();
        q.burst = Some(1_000_000);
    }
    config
}

/// The breaker over a count window, without a slow-call threshold.
fn count_window(config: &mut RampartConfig) {
    let cb = &mut config.circuit_breaker;
    cb.window = SlidingWindow::Count { size: 100 };
    cb.slow_call_duration_threshold = None;
}

// ---------------------------------------------------------------------------
// The servers.

#[derive(Clone, Copy, PartialEq)]
enum Kind {
    Axum,
    Serve,
    Stack(Ablation),
    /// The crates people use instead; with the config's time window or
    /// over the last 100 calls.
    Peers {
        time_window: bool,
    },
}

#[derive(Clone, Copy, PartialEq)]
enum Ablation {
    None,
    NoRateLimit,
    NoConcurrency,
    SharedBreaker,
    /// The breaker over the last 100 calls, no slow-call threshold: no
    /// clock reading for the call's duration, no per-thread bucket count.
    CountWindow,
    /// The timeout without `budget_header` (one header lookup less).
    NoBudgetHeader,
    /// All five of the above at once: what the stack's own frame costs
    /// (front, drain, probes, one breaker, timeout, panic catcher, metrics).
    Lean,
    /// Applied with `Router::layer` instead of around the whole router,
    /// the per-route breakers keyed by axum's matched path (no
    /// `routes.paths`): axum clones a route's service (boxed), the stack
    /// with it, for every request.
    RouterLayer,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Axum => "axum::serve",
            Kind::Serve => "serve",
            Kind::Stack(Ablation::None) => "stack",
            Kind::Stack(Ablation::NoRateLimit) => "stack -rate_limit",
            Kind::Stack(Ablation::NoConcurrency) => "stack -concurrency",
            Kind::Stack(Ablation::SharedBreaker) => "stack -per_route",
            Kind::Stack(Ablation::CountWindow) => "stack -time_window",
            Kind::Stack(Ablation::NoBudgetHeader) => "stack -budget_header",
            Kind::Stack(Ablation::Lean) => "stack lean",
            Kind::Stack(Ablation::RouterLayer) => "stack Router::layer",
            Kind::Peers { time_window: false } => "peers",
            Kind::Peers { time_window: true } => "peers time window",
        }
    }
}

/// Starts one server of `kind` on the current (server) runtime.
async fn start(kind: Kind, metrics: Option<PrometheusHandle>) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut config = production_config();
    match kind {
        Kind::Axum => {
            use axum::serve::ListenerExt;
            // `TCP_NODELAY`, as `[server] tcp_nodelay = true`.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            tokio::spawn(async move { axum::serve(listener, router(metrics)).await.unwrap() });
        }
        Kind::Serve => {
            let shutdown = tower_rampart::Shutdown::builder()
                .signals(false)
                .build()
                .unwrap();
            let server = config.server().unwrap();
            tokio::spawn(async move {
                server
                    .serve(listener, router(metrics), &shutdown)
                    .into_future()
                    .await
            });
        }
        Kind::Peers { time_window } => {
            let shutdown = tower_rampart::Shutdown::builder()
                .signals(false)
                .build()
                .unwrap();
            let server = config.server().unwrap();
            let app = peers(router(metrics), time_window);
            tokio::spawn(async move { server.serve(listener, app, &shutdown).into_future().await });
        }
        Kind::Stack(ablation) => {
            match ablation {
                Ablation::None | Ablation::RouterLayer => {}
                Ablation::NoRateLimit => config.rate_limit = None,
                Ablation::NoConcurrency => config.concurrency = None,
                Ablation::SharedBreaker => config.routes.per_route_breaker = false,
                Ablation::CountWindow => count_window(&mut config),
                Ablation::NoBudgetHeader => config.timeout.budget_header = None,
                Ablation::Lean => {
                    config.rate_limit = None;
                    config.concurrency = None;
                    config.routes.per_route_breaker = false;
                    count_window(&mut config);
                    config.timeout.budget_header = None;
                }
            }
            if ablation == Ablation::RouterLayer {
                config.routes.paths.clear();
            }
            let stack = config.stack().build().unwrap();
            let server = config.server().unwrap();
            // As `examples/production.rs`: the stack from the config wraps
            // the whole router, under the config's server.
            let shutdown = stack.shutdown();
            if ablation == Ablation::RouterLayer {
                let app = router(metrics).layer(stack.layer());
                tokio::spawn(server.serve(listener, app, shutdown).into_future());
            } else {
                let app = tower::Layer::layer(&stack.layer(), router(metrics));
                tokio::spawn(server.serve(listener, app, shutdown).into_future());
            }
        }
    }
    addr
}

/// The protections `production.toml` asks for, from the crates people use
/// instead, outermost first as the stack orders them (module docs, `peers`).
fn peers(
    app: Router,
    time_window: bool,
) -> impl tower::Service<
    Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = std::convert::Infallible,
    Future = impl Send,
> + Clone
+ Send
+ 'static {
    use axum::error_handling::HandleErrorLayer;
    use axum::response::Response;
    use tower::{BoxError, ServiceBuilder};
    use tower_governor::GovernorLayer;
    use tower_governor::key_extractor::{GlobalKeyExtractor, PeerIpKeyExtractor};
    use tower_resilience::circuitbreaker::{CircuitBreakerLayer, SlidingWindowType};

    // Raised as the stack's are: nothing is refused. The per-client one
    // keys on the peer address (`ConnectInfo`, which `serve` inserts).
    let global = tower_rampart_benches::roomy_governor!(GlobalKeyExtractor);
    let per_client = tower_rampart_benches::roomy_governor!(PeerIpKeyExtractor);
    // `[circuit_breaker]` of production.toml, as far as tower-resilience
    // says it.
    let window = if time_window {
        CircuitBreakerLayer::builder()
            .sliding_window_type(SlidingWindowType::TimeBased)
            .sliding_window_duration(Duration::from_secs(30))
    } else {
        CircuitBreakerLayer::builder()
            .sliding_window_type(SlidingWindowType::CountBased)
            .sliding_window_size(100)
    };
    let breaker = window
        .failure_rate_threshold(0.5)
        .minimum_number_of_calls(20)
        .wait_duration_in_open(Duration::from_secs(10))
        .permitted_calls_in_half_open(5)
        .slow_call_duration_threshold(Duration::from_secs(2))
        .slow_call_rate_threshold(0.8)
        .classify_response(|res: &Response| res.status().is_server_error())
        .build()
        .unwrap();
    ServiceBuilder::new()
        .layer(HandleErrorLayer::new(|error: BoxError| async move {
            (StatusCode::SERVICE_UNAVAILABLE, error.to_string())
        }))
        .layer(GovernorLayer::new(global))
        .layer(GovernorLayer::new(per_client))
        .load_shed()
        .concurrency_limit(1000)
        .layer(breaker)
        // The body as axum answers it, for the breaker's classifier and
        // tower_governor's refusal.
        .map_response(|res: http::Response<_>| res.map(axum::body::Body::new))
        .layer(tower_http::timeout::TimeoutLayer::with_status_code(
            StatusCode::GATEWAY_TIMEOUT,
            Duration::from_secs(5),
        ))
        .layer(tower_http::catch_panic::CatchPanicLayer::new())
        .service(app)
}

// ---------------------------------------------------------------------------
// The client.

#[derive(Clone, Copy, PartialEq)]
enum Proto {
    H1,
    H2,
}

impl Proto {
    fn name(self) -> &'static str {
        match self {
            Proto::H1 => "HTTP/1.1",
            Proto::H2 => "h2c",
        }
    }
}

fn request() -> Request<Empty<Bytes>> {
    Request::get(format!("http://bench{PATH}"))
        .header("host", "bench")
        .body(Empty::new())
        .unwrap()
}

/// One side of a client connection.
enum Sender {
    H1(hyper::client::conn::http1::SendRequest<Empty<Bytes>>),
    H2(hyper::client::conn::http2::SendRequest<Empty<Bytes>>),
}

impl Sender {
    async fn send(&mut self) -> hyper::Result<http::Response<hyper::body::Incoming>> {
        match self {
            Sender::H1(s) => {
                s.ready().await?;
                s.send_request(request()).await
            }
            Sender::H2(s) => {
                s.ready().await?;
                s.send_request(request()).await
            }
        }
    }
}

/// Back-to-back requests on `send` until `until`; every answer must be
/// `200 ok`. Returns the latencies.
async fn closed_loop(until: Instant, mut send: Sender) -> Vec<Duration> {
    let mut latencies = Vec::with_capacity(100_000);
    while Instant::now() < until {
        let start = Instant::now();
        let res = send.send().await.expect("request failed");
        assert_eq!(res.status(), 200, "refused or failed: nothing may be");
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(&body[..], b"ok\n");
        latencies.push(start.elapsed());
    }
    latencies
}

async fn connect(addr: SocketAddr) -> TokioIo<TcpStream> {
    let stream = TcpStream::connect(addr).await.unwrap();
    stream.set_nodelay(true).unwrap();
    TokioIo::new(stream)
}

struct Load {
    connections: usize,
    h2_connections: usize,
    round: Duration,
}

/// One round against `addr`: sorted latencies of every request.
async fn load(addr: SocketAddr, proto: Proto, l: &Load) -> Vec<Duration> {
    let until = Instant::now() + l.round;
    let mut tasks = Vec::new();
    match proto {
        Proto::H1 => {
            for _ in 0..l.connections {
                let io = connect(addr).await;
                let (send, conn) = hyper::client::conn::http1::handshake(io).await.unwrap();
                tokio::spawn(conn);
                tasks.push(tokio::spawn(closed_loop(until, Sender::H1(send))));
            }
        }
        Proto::H2 => {
            let streams = (l.connections / l.h2_connections).max(1);
            for _ in 0..l.h2_connections {
                let io = connect(addr).await;
                let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .unwrap();
                tokio::spawn(conn);
                for _ in 0..streams {
                    let send = Sender::H2(send.clone());
                    tasks.push(tokio::spawn(closed_loop(until, send)));
                }
            }
        }
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    latencies.sort_unstable();
    latencies
}

// ---------------------------------------------------------------------------
// Measuring.

/// Pins the threads named `name` (and `extra` thread ids) to `cpu` with
/// `taskset`; says whether it could.
fn pin(name: &str, extra: &[String], cpu: usize) -> bool {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return false;
    };
    let mut tids: Vec<String> = extra.to_vec();
    for task in tasks.flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() == name {
            tids.push(task.file_name().to_string_lossy().into_owned());
        }
    }
    tids.iter().all(|tid| {
        std::process::Command::new("taskset")
            .args(["-pc", &cpu.to_string(), tid])
            .stdout(std::process::Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    })
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

/// The first and third quartiles: the middle half of `v`, as far as one
/// run of rounds can tell how much a ratio moves.
fn quartiles(mut v: Vec<f64>) -> (f64, f64) {
    v.sort_by(f64::total_cmp);
    let at = |p: f64| v[((v.len() as f64 - 1.0) * p).round() as usize];
    (at(0.25), at(0.75))
}

struct Sample {
    rate: f64,
    cpu_us: f64,
    p50: Duration,
    p99: Duration,
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not: one
    // request to every server is enough there.
    let quick = !std::env::args().any(|a| a == "--bench");
    let server_threads = env_or("REAL_SERVER_THREADS", 1usize);
    let load_cfg = Load {
        connections: env_or("REAL_SERVER_CONNECTIONS", 64usize),
        h2_connections: 8,
        round: Duration::from_secs_f64(env_or("REAL_SERVER_SECS", 2.0)),
    };
    let rounds = env_or("REAL_SERVER_ROUNDS", 5usize);

    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(server_threads)
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name(CLIENT_THREAD)
        .enable_all()
        .build()
        .unwrap();

    // The example's subscriber (`info`, or `RUST_LOG`). Without one, this
    // crate's dependency graph (tower_governor turns on axum's default
    // `tower-log`, hence tracing's `log` feature) would send every one of
    // hyper's and h2's disabled spans through tracing's `log` fallback:
    // ~9k instructions per h2c request, on both servers, that neither the
    // example nor the root crate's graph pays.
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    // The recorder first, as in the example: the layers register their
    // metrics when built.
    let call_recorder = flag("REAL_SERVER_CALL_RECORDER");
    if call_recorder {
        metrics::set_global_recorder(CallRecorder(std::sync::Arc::new(Nothing))).unwrap();
    }
    let recorder = !call_recorder && !flag("REAL_SERVER_NO_RECORDER");
    let metrics = recorder.then(|| {
        PrometheusBuilder::new()
            .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)
            .unwrap()
            .install_recorder()
            .unwrap()
    });

    let mut kinds = vec![
        Kind::Axum,
        Kind::Serve,
        Kind::Stack(Ablation::None),
        Kind::Peers { time_window: false },
    ];
    if flag("REAL_SERVER_ABLATE") {
        kinds.extend([
            Kind::Stack(Ablation::NoRateLimit),
            Kind::Stack(Ablation::NoConcurrency),
            Kind::Stack(Ablation::SharedBreaker),
            Kind::Stack(Ablation::CountWindow),
            Kind::Stack(Ablation::NoBudgetHeader),
            Kind::Stack(Ablation::Lean),
            Kind::Stack(Ablation::RouterLayer),
            Kind::Peers { time_window: true },
        ]);
    }
    // `REAL_SERVER_ONLY=stack` (names, comma-separated): only these, for a
    // profile of one server (`perf record`); no ratios without `serve`.
    if let Ok(only) = std::env::var("REAL_SERVER_ONLY") {
        kinds.retain(|k| only.split(',').any(|n| n.trim() == k.name()));
    }
    let addrs: Vec<SocketAddr> = server_rt.block_on(async {
        let mut addrs = Vec::new();
        for &k in &kinds {
            addrs.push(start(k, metrics.clone()).await);
        }
        addrs
    });

    // `REAL_SERVER_LISTEN=1`: no client of ours. The servers stay up, the
    // server thread pinned to CPU 0, for a load generator in another
    // process (`benches/compare/load.sh` drives them with wrk and h2load).
    // One line per server on standard output: its URL, a tab, its name.
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    if flag("REAL_SERVER_LISTEN") && !quick {
        use std::io::Write;
        let pinned = cpus >= 2 && pin(SERVER_THREAD, &[], 0);
        let mut out = std::io::stdout().lock();
        for (k, addr) in kinds.iter().zip(&addrs) {
            writeln!(out, "http://{addr}{PATH}\t{}", k.name()).unwrap();
        }
        out.flush().unwrap();
        drop(out);
        eprintln!(
            "serving until killed; server thread `{SERVER_THREAD}` {}",
            if pinned {
                "pinned to CPU 0"
            } else {
                "not pinned"
            }
        );
        loop {
            std::thread::park();
        }
    }

    if quick {
        let quick_load = Load {
            connections: 2,
            h2_connections: 1,
            round: Duration::from_millis(50),
        };
        client_rt.block_on(async {
            for &addr in &addrs {
                for proto in [Proto::H1, Proto::H2] {
                    assert!(!load(addr, proto, &quick_load).await.is_empty());
                }
            }
        });
        return;
    }

    let pinned = cpus >= 2 && {
        // The client's worker and this thread (which drives `block_on`).
        let me = std::fs::read_link("/proc/thread-self")
            .ok()
            .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
        pin(SERVER_THREAD, &[], 0) && pin(CLIENT_THREAD, &me.into_iter().collect::<Vec<_>>(), 1)
    };
    println!(
        "{} requests in flight (HTTP/1.1: {0} connections; h2c: {} connections x {} streams), \
         GET {PATH}, {:?} per round, {rounds} rounds; server: {server_threads} worker thread(s), \
         client: 1; {}; recorder: {}\n",
        load_cfg.connections,
        load_cfg.h2_connections,
        load_cfg.connections / load_cfg.h2_connections,
        load_cfg.round,
        if pinned {
            "server pinned to CPU 0, client to CPU 1 (taskset)"
        } else {
            "not pinned"
        },
        if recorder {
            "Prometheus"
        } else if call_recorder {
            "calls that do nothing (REAL_SERVER_CALL_RECORDER)"
        } else {
            "none (REAL_SERVER_NO_RECORDER)"
        },
    );

    // `REAL_SERVER_PROTO=h1` or `h2`: one protocol only.
    let protos: Vec<Proto> = match std::env::var("REAL_SERVER_PROTO").as_deref() {
        Ok("h1") => vec![Proto::H1],
        Ok("h2") => vec![Proto::H2],
        _ => vec![Proto::H1, Proto::H2],
    };
    for &proto in &protos {
        println!("### {}\n", proto.name());
        println!("| round | server | requests/s | server CPU per request | p50 | p99 |");
        println!("|---|---|---|---|---|---|");
        // A warm-up round each, not reported.
        for &addr in &addrs {
            client_rt.block_on(load(
                addr,
                proto,
                &Load {
                    round: Duration::from_millis(500),
                    ..load_cfg
                },
            ));
        }
        let mut samples: Vec<Vec<Sample>> = kinds.iter().map(|_| Vec::new()).collect();
        for round in 1..=rounds {
            for (i, &addr) in addrs.iter().enumerate() {
                let before = tower_rampart_benches::threads_cpu(SERVER_THREAD).unwrap_or_default();
                let lat = client_rt.block_on(load(addr, proto, &load_cfg));
                let cpu = tower_rampart_benches::threads_cpu(SERVER_THREAD)
                    .unwrap_or_default()
                    .saturating_sub(before);
                let s = Sample {
                    rate: lat.len() as f64 / load_cfg.round.as_secs_f64(),
                    cpu_us: us(cpu) / lat.len() as f64,
                    p50: percentile(&lat, 0.5),
                    p99: percentile(&lat, 0.99),
                };
                println!(
                    "| {round} | `{}` | {:.0} | {:.2} µs | {:.0} µs | {:.0} µs |",
                    kinds[i].name(),
                    s.rate,
                    s.cpu_us,
                    us(s.p50),
                    us(s.p99),
                );
                samples[i].push(s);
            }
        }
        let Some(base) = kinds.iter().position(|&k| k == Kind::Serve) else {
            continue;
        };
        println!(
            "\n{} medians over the rounds; ratios are the median of the per-round ratios \
             against `serve` (same round), and the middle half of those ratios (first to \
             third quartile):\n",
            proto.name()
        );
        println!(
            "| server | requests/s | x `serve` | middle half | p50 | p99 | p99 x `serve` | server CPU per request | x `serve` |"
        );
        println!("|---|---|---|---|---|---|---|---|---|");
        for (i, k) in kinds.iter().enumerate() {
            let ratios = |f: &dyn Fn(&Sample) -> f64| -> Vec<f64> {
                samples[i]
                    .iter()
                    .zip(&samples[base])
                    .map(|(s, b)| f(s) / f(b))
                    .collect()
            };
            let ratio = |f: &dyn Fn(&Sample) -> f64| median(ratios(f));
            let (low, high) = quartiles(ratios(&|s| s.rate));
            let s = &samples[i];
            println!(
                "| `{}` | {:.0} | {:.3} | {:.3} to {:.3} | {:.0} µs | {:.0} µs | {:.3} | {:.2} µs | {:.3} |",
                k.name(),
                median(s.iter().map(|s| s.rate).collect()),
                ratio(&|s| s.rate),
                low,
                high,
                median(s.iter().map(|s| us(s.p50)).collect()),
                median(s.iter().map(|s| us(s.p99)).collect()),
                ratio(&|s| us(s.p99)),
                median(s.iter().map(|s| s.cpu_us).collect()),
                ratio(&|s| s.cpu_us),
            );
        }
        println!();
    }
    println!(
        "handler calls, every server, warm-up included: {}",
        HANDLED.load(Ordering::Relaxed)
    );
}

/// A recorder whose every handle is a call that does nothing
/// (`REAL_SERVER_CALL_RECORDER=1`): what the stack's calls into a recorder
/// cost apart from an exporter's own work.
struct CallRecorder(std::sync::Arc<Nothing>);

/// The handles of [`CallRecorder`].
struct Nothing;

impl metrics::CounterFn for Nothing {
    fn increment(&self, _: u64) {}
    fn absolute(&self, _: u64) {}
}

impl metrics::GaugeFn for Nothing {
    fn increment(&self, _: f64) {}
    fn decrement(&self, _: f64) {}
    fn set(&self, _: f64) {}
}

impl metrics::HistogramFn for Nothing {
    fn record(&self, _: f64) {}
}

impl metrics::Recorder for CallRecorder {
    fn describe_counter(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_gauge(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn describe_histogram(
        &self,
        _: metrics::KeyName,
        _: Option<metrics::Unit>,
        _: metrics::SharedString,
    ) {
    }
    fn register_counter(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Counter {
        metrics::Counter::from_arc(self.0.clone())
    }
    fn register_gauge(&self, _: &metrics::Key, _: &metrics::Metadata<'_>) -> metrics::Gauge {
        metrics::Gauge::from_arc(self.0.clone())
    }
    fn register_histogram(
        &self,
        _: &metrics::Key,
        _: &metrics::Metadata<'_>,
    ) -> metrics::Histogram {
        metrics::Histogram::from_arc(self.0.clone())
    }
}
