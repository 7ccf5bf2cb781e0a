//! The production program: an axum service behind the whole tower-rampart
//! stack, built from a config file.
//!
//! ```text
//! cargo run --example production --all-features -- \
//!     --config examples/configs/production.toml --listen 127.0.0.1:3000
//! ```
//!
//! Routes: `GET /api/ok` (fast), `GET /api/fail` (always 500: watch the
//! breaker open), `GET /api/sleep/{ms}` (watch the timeout), `GET /metrics`
//! (Prometheus text), and the probes (`/livez`, `/readyz`, `/startupz` by
//! default). `SIGTERM` starts the graceful shutdown: readiness fails at once,
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
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tower_rampart::config::RampartConfig;

struct Args {
    config: String,
    listen: Option<String>,
}

fn args() -> Result<Args, String> {
    let mut config = "examples/configs/production.toml".to_owned();
    let mut listen = None;
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        match arg.as_str() {
            "--config" => config = it.next().ok_or("--config needs a path")?,
            "--listen" => listen = Some(it.next().ok_or("--listen needs an address")?),
            "-h" | "--help" => {
                return Err("usage: production [--config FILE] [--listen ADDR]".to_owned());
            }
            other => return Err(format!("unknown argument `{other}` (try --help)")),
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
    // The recorder first: the layers register their metrics when built.
    let metrics = PrometheusBuilder::new().install_recorder()?;
    let stack = config.stack().build()?;

    let served = Arc::new(Served::default());
    let app = Router::new()
        .route("/api/ok", get(ok))
        .route("/api/fail", get(fail))
        .route("/api/sleep/{ms}", get(sleep))
        .route("/metrics", get(render_metrics))
        .with_state(AppState {
            served: served.clone(),
            metrics,
        })
        .layer(stack.layer());

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
