//! Every layer in front of an axum router: `cargo run --example quickstart`,
//! then `curl -i 127.0.0.1:3000/` and `curl -i 127.0.0.1:3000/readyz`.
//! Ctrl-C (or SIGTERM) drains and stops it. An address argument
//! (`-- 127.0.0.1:8080`) replaces the default one.

use std::time::Duration;

use axum::{Router, routing::get};
use tower_rampart::{
    CircuitBreakerLayer, HealthRegistry, ProbeLayer, Quota, RateLimitLayer, Shutdown, TimeoutLayer,
};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr = std::env::args().nth(1).unwrap_or("127.0.0.1:3000".into());

    let shutdown = Shutdown::builder().build()?; // SIGTERM / SIGINT
    let limit = RateLimitLayer::builder().quota(Quota::per_second(100));
    let limit = limit.build()?; // one global quota: 100 a second, burst 100
    let breaker = CircuitBreakerLayer::builder().name("api").build()?;
    let health = HealthRegistry::builder()
        .shutdown(&shutdown) // /readyz fails once shutdown starts
        .build()?;

    // axum applies the last `.layer` outermost: probes, drain, rate limit,
    // breaker, timeout, then your handlers.
    let app = Router::new()
        .route("/", get(|| async { "hello\n" }))
        .layer(TimeoutLayer::new(Duration::from_secs(2))?)
        .layer(breaker)
        .layer(limit)
        .layer(shutdown.drain_layer())
        .layer(ProbeLayer::new(&health));

    let listener = tokio::net::TcpListener::bind(&addr).await?;
    println!("listening on http://{}", listener.local_addr()?);
    let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.draining());
    let report = shutdown.run_server(server).await?; // bounded, even with stuck clients
    println!("{report:?}");
    Ok(())
}
