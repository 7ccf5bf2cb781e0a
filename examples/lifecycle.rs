//! An axum server with Kubernetes probes and graceful shutdown.
//!
//! `cargo run --example lifecycle --all-features`, then
//! `curl localhost:3000/readyz?verbose` and stop it with Ctrl-C (no delay)
//! or `kill -TERM <pid>` (5s delay, during which /readyz fails).
use std::time::Duration;

use axum::{Router, routing::get};
use tower_rampart::health::{Check, HealthRegistry, ProbeLayer};
use tower_rampart::shutdown::Shutdown;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt::init();

    // SIGTERM: /readyz fails at once, requests are served for 5s, then the
    // listener closes and in-flight requests get 20s before being aborted.
    let shutdown = Shutdown::builder()
        .shutdown_delay(Duration::from_secs(5))
        .drain_timeout(Duration::from_secs(20))
        .build()?;
    let health = HealthRegistry::builder()
        .shutdown(&shutdown) // readiness check `shutdown`
        .check(
            Check::readiness("db", || async {
                Ok::<(), String>(()) /* ping it */
            })
            .timeout(Duration::from_secs(1))
            .interval(Duration::from_secs(5)),
        )
        .build()?;

    let app = Router::new()
        .route("/", get(|| async { "hello" }))
        .layer(shutdown.drain_layer()) // counts in-flight, refuses while draining
        .layer(ProbeLayer::new(&health)); // /livez /readyz /startupz, outermost

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.draining());
    // Until the server ends or the shutdown is done: bounded even when a
    // client stops reading. Also logged as `shutdown complete`.
    let report = shutdown.run_server(server).await?;
    println!("finished {} / aborted {}", report.finished, report.aborted);
    Ok(())
}
