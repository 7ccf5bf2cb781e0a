//! A child process for the signal tests (`tests/shutdown/real_signals.rs`): an
//! axum server with probes and graceful shutdown that prints its address,
//! every phase and its report on stdout, one line each.
//!
//! `RAMPART_DELAY_MS` sets `shutdown_delay` (default 200);
//! `RAMPART_TRIGGER=1` triggers the shutdown programmatically once listening.
use std::io::Write as _;
use std::time::Duration;

use axum::{Router, routing::get};
use tower_rampart::health::{HealthRegistry, ProbeLayer};
use tower_rampart::shutdown::Shutdown;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let delay: u64 = std::env::var("RAMPART_DELAY_MS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let shutdown = Shutdown::builder()
        .shutdown_delay(Duration::from_millis(delay))
        .drain_timeout(Duration::from_secs(2))
        .build()?;
    let health = HealthRegistry::builder().shutdown(&shutdown).build()?;
    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(shutdown.drain_layer())
        .layer(ProbeLayer::new(&health));

    let phases = shutdown.clone();
    tokio::spawn(async move {
        phases.requested().await;
        say("phase shutdown_requested");
        phases.draining().await;
        say("phase draining");
    });

    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    say(&format!("listening {}", listener.local_addr()?));
    if std::env::var("RAMPART_TRIGGER").as_deref() == Ok("1") {
        shutdown.trigger();
    }
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.draining());
    let report = shutdown.run_server(server).await?;
    say(&format!(
        "report trigger={} finished={} aborted={} delay_ms={}",
        report.trigger,
        report.finished,
        report.aborted,
        report.delay.as_millis()
    ));
    Ok(())
}
