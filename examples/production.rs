//! The production program: an axum service behind the whole tower-rampart
//! stack, built from a config file.
//!
//! ```text
//! cargo run --example production --all-features -- \
//!     --config examples/configs/production.toml --listen 127.0.0.1:3000
//! ```
//!
//! Routes: `GET /api/ok` (fast), `GET /api/fail` (always 500: watch its
//! breaker open while the other routes keep answering, `[routes]`),
//! `GET /api/sleep/{ms}` (watch the timeout), `GET /metrics` (Prometheus
//! text), and the probes (`/livez`, `/readyz`, `/startupz` by default).
//! `/metrics` and the probes are the platform's endpoints (`[platform]`):
//! the stack serves them outside the drain, the rate limit, the breakers
//! and the timeout, so a scrape answers while a breaker is open, a client
//! has spent its quota or the server is draining.
//!
//! `SIGTERM` starts the graceful shutdown: readiness fails at once,
//! requests are served for `shutdown.shutdown_delay` (HTTP/1 answers carry
//! `Connection: close`, HTTP/2 connections get GOAWAY), then the listener
//! closes (connections already in its backlog are still answered) and
//! in-flight requests get `shutdown.drain_timeout` to finish. The server
//! loop is `tower_rampart::serve`, with the `[server]` settings.
//!
//! Settings come from the file, then the `RAMPART_*` environment variables
//! (`RAMPART_TIMEOUT__TIMEOUT=2s`), then `--listen`. An invalid file stops
//! the program with every problem listed, before anything listens.
//!
//! Lines on stdout a supervisor (or a test) can parse:
//! `rampart-listening <addr>` once the listener is bound, and
//! `rampart-shutdown-report {json}` when the shutdown is done.
use std::io::Write as _;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tower_rampart::config::RampartConfig;

/// Bucket bounds of the duration histograms, 1 ms to 60 s: check runs
/// (bounded by their timeout) and drains (bounded by `drain_timeout`).
const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
];

struct Args {
    config: String,
    listen: Option<String>,
}

const USAGE: &str = "\
usage: production [--config FILE] [--listen ADDR]

  --config FILE   the TOML settings (default examples/configs/production.toml)
  --listen ADDR   the address to listen on, overriding the file's `listen`
  -h, --help      print this help and exit

Every key can also be set from the environment: RAMPART_ + the key path in
upper case, `__` between levels (RAMPART_TIMEOUT__TIMEOUT=2s).";

/// The arguments; `--help` prints the usage on stdout and exits 0.
fn args() -> Result<Args, String> {
    let mut config = "examples/configs/production.toml".to_owned();
    let mut listen = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" => config = it.next().ok_or("--config needs a path")?,
            "--listen" => listen = Some(it.next().ok_or("--listen needs an address")?),
            "-h" | "--help" => {
                say(USAGE);
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument `{other}`\n{USAGE}")),
        }
    }
    Ok(Args { config, listen })
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// What the handlers did, to compare with what clients saw.
#[derive(Default)]
struct Served {
    /// `/api/*` handler calls started.
    started: AtomicU64,
    /// `/api/*` handler calls that returned a response.
    completed: AtomicU64,
}

impl Served {
    fn start(&self) -> Completion<'_> {
        self.started.fetch_add(1, Ordering::Relaxed);
        Completion(self)
    }
}

/// Counts the response when the handler returns (not when it is dropped).
struct Completion<'a>(&'a Served);

impl Completion<'_> {
    fn done(self) {
        self.0.completed.fetch_add(1, Ordering::Relaxed);
    }
}

#[derive(Clone)]
struct AppState {
    served: Arc<Served>,
    metrics: PrometheusHandle,
}

async fn ok(State(s): State<AppState>) -> &'static str {
    s.served.start().done();
    "ok\n"
}

async fn fail(State(s): State<AppState>) -> (StatusCode, &'static str) {
    s.served.start().done();
    (StatusCode::INTERNAL_SERVER_ERROR, "failed on purpose\n")
}

async fn sleep(State(s): State<AppState>, Path(ms): Path<u64>) -> String {
    let call = s.served.start();
    tokio::time::sleep(Duration::from_millis(ms.min(600_000))).await;
    call.done();
    format!("slept {ms}ms\n")
}

async fn render_metrics(State(s): State<AppState>) -> String {
    s.metrics.run_upkeep();
    s.metrics.render()
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();

    // The config: the file, the RAMPART_* overrides, then --listen.
    let mut config = match RampartConfig::load(&args.config) {
        Ok(c) => c,
        Err(errors) => {
            eprintln!("{}: {errors}", args.config);
            return ExitCode::from(2);
        }
    };
    if let Some(listen) = args.listen {
        config.listen = listen;
        if let Err(errors) = config.validate() {
            eprintln!("--listen: {errors}");
            return ExitCode::from(2);
        }
    }

    match run(config).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(config: RampartConfig) -> Result<(), Box<dyn std::error::Error>> {
    // The recorder first: the layers register (and describe) their metrics
    // when built. Buckets make the `_seconds` histograms real Prometheus
    // histograms (`_bucket` series, so `histogram_quantile` works) instead
    // of the exporter's default summaries.
    let metrics = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Suffix("_seconds".to_owned()), SECONDS_BUCKETS)?
        .install_recorder()?;
    let stack = config.stack().build()?;

    let served = Arc::new(Served::default());
    let router = Router::new()
        .route("/api/ok", get(ok))
        .route("/api/fail", get(fail))
        .route("/api/sleep/{ms}", get(sleep))
        // Served outside the protections: `platform.paths`.
        .route("/metrics", get(render_metrics))
        .with_state(AppState {
            served: served.clone(),
            metrics,
        });
    // The stack wraps the whole router: one service, called in place for
    // every request. Its per-route breakers find a request's route among
    // the templates `routes.paths` declares (keep that list in step with
    // the routes above: a route left out shares the `unmatched` breaker).
    // `router.layer(stack.layer())` would work without the list (axum's
    // matched path names the route inside the router), but axum then
    // clones a route's service, the stack with it, for every request:
    // ~1 000 instructions and three allocations more per request
    // (`benches/README.md`, "Under a real server").
    let app = tower::Layer::layer(&stack.layer(), router);

    let listener = tokio::net::TcpListener::bind(config.listen_addr()).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    say(&format!("rampart-listening {addr}"));

    // The peer address reaches the rate limit as `ConnectInfo`; the
    // listener closes after the delay, its backlog still answered.
    let report = config
        .server()?
        .serve(listener, app, stack.shutdown())
        .await;

    let line = serde_json::json!({
        "trigger": report.trigger.to_string(),
        "delay_ms": report.delay.as_millis() as u64,
        "drain_ms": report.drain.as_millis() as u64,
        "total_ms": report.total.as_millis() as u64,
        "in_flight_at_drain": report.in_flight_at_drain,
        "finished": report.finished,
        "aborted": report.aborted,
        "left_in_flight": report.left_in_flight,
        "drain_timed_out": report.drain_timed_out,
        "hooks_failed": report.hooks.iter().filter(|h| h.outcome != tower_rampart::shutdown::HookOutcome::Completed).count(),
        "api_started": served.started.load(Ordering::Relaxed),
        "api_completed": served.completed.load(Ordering::Relaxed),
    });
    say(&format!("rampart-shutdown-report {line}"));
    Ok(())
}
