//! A circuit breaker in front of a flaky dependency, in an axum server.
//!
//! ```text
//! cargo run --example circuit_breaker       # listens on 127.0.0.1:3000
//! cargo run --example circuit_breaker -- 127.0.0.1:8080
//! ```
//!
//! `GET /pay` calls a simulated payment provider that fails one call in ten
//! while healthy, and every call once you take it down with
//! `POST /chaos/down`. After enough failures the breaker opens and `/pay`
//! answers 503 with `Retry-After` at once, without calling the provider;
//! after the open duration it lets a few trial calls through and closes
//! again when they succeed (`POST /chaos/up`). `GET /breaker` shows the
//! state. Ctrl-C stops the server.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::routing::{get, post};
use tower_rampart::circuit_breaker::{
    CircuitBreakerEvent, CircuitBreakerHandle, CircuitBreakerLayer,
};

/// The simulated payment provider.
#[derive(Clone, Default)]
struct Provider {
    down: Arc<AtomicBool>,
    calls: Arc<AtomicU64>,
}

impl Provider {
    async fn charge(&self) -> Result<String, String> {
        let n = self.calls.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::time::sleep(Duration::from_millis(20)).await;
        if self.down.load(Ordering::Relaxed) {
            Err("provider unreachable".into())
        } else if n % 10 == 0 {
            Err("provider hiccup".into())
        } else {
            Ok(format!("payment #{n} accepted"))
        }
    }
}

async fn pay(State(provider): State<Provider>) -> (StatusCode, String) {
    match provider.charge().await {
        Ok(msg) => (StatusCode::OK, msg + "\n"),
        Err(e) => (StatusCode::BAD_GATEWAY, e + "\n"),
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:3000")
        .parse()?;

    let breaker = CircuitBreakerLayer::builder()
        .name("payments")
        .count_window(20)
        .minimum_calls(10)
        .failure_rate_threshold(50.0)
        .consecutive_failures(5)
        .open_duration(Duration::from_secs(10))
        .backoff(2.0, Duration::from_secs(60), 0.1)
        .half_open_permits(3)
        .on_event(|event| {
            if let CircuitBreakerEvent::Transition {
                from, to, reason, ..
            } = event
            {
                println!("breaker: {from} -> {to} ({reason})");
            }
        })
        .build()?;
    let handle = breaker.handle();

    let provider = Provider::default();
    let app = Router::new()
        .route("/pay", get(pay).layer(breaker))
        .route("/breaker", get(show).with_state(handle))
        .route(
            "/chaos/down",
            post(|State(p): State<Provider>| async move {
                p.down.store(true, Ordering::Relaxed);
                "provider is down\n"
            }),
        )
        .route(
            "/chaos/up",
            post(|State(p): State<Provider>| async move {
                p.down.store(false, Ordering::Relaxed);
                "provider is up\n"
            }),
        )
        .with_state(provider);

    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    println!("listening on http://{addr}");
    println!("try:");
    println!("  curl -i http://{addr}/pay");
    println!("  curl -X POST http://{addr}/chaos/down");
    println!(
        "  for i in $(seq 15); do curl -s -o /dev/null -w '%{{http_code}}\\n' http://{addr}/pay; done"
    );
    println!("  curl -i http://{addr}/pay          # 503, Retry-After, problem+json");
    println!("  curl http://{addr}/breaker");
    println!("  curl -X POST http://{addr}/chaos/up   # then wait for Retry-After and call /pay");
    println!("Ctrl-C to stop.");
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
            println!("shutting down");
        })
        .await?;
    Ok(())
}

async fn show(
    State(handle): State<CircuitBreakerHandle>,
) -> ([(axum::http::HeaderName, &'static str); 1], String) {
    let c = handle.counts();
    let body = serde_json::json!({
        "name": handle.name(),
        "state": c.state.as_str(),
        "calls": c.calls,
        "failures": c.failures,
        "failure_rate": c.failure_rate,
        "consecutive_failures": c.consecutive_failures,
        "open_remaining_ms": handle.open_remaining().map(|d| d.as_millis() as u64),
    });
    ([(CONTENT_TYPE, "application/json")], format!("{body}\n"))
}
