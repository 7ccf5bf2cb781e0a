//! A circuit breaker registered as a readiness check, over a real server:
//! the breaker trips on real 5xx answers and `/readyz` follows it.
use crate::common;

use std::time::Duration;

use axum::{Router, http::StatusCode, routing::get};
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use tower_rampart::health::{Check, HealthRegistry, ProbeLayer};

#[tokio::test]
async fn readiness_follows_the_breaker() {
    let breaker = CircuitBreakerLayer::builder()
        .name("payments")
        .consecutive_failures(2)
        .open_duration(Duration::from_secs(60))
        .build()
        .unwrap();
    let handle = breaker.handle();
    let registry = HealthRegistry::builder()
        .check(Check::circuit_breaker(&handle))
        .build()
        .unwrap();
    let app = Router::new()
        .route(
            "/fail",
            get(|| async { (StatusCode::BAD_GATEWAY, "upstream down") }),
        )
        .layer(breaker)
        .layer(ProbeLayer::new(&registry));
    let addr = common::serve(app).await;

    assert_eq!(common::get(addr, "/readyz").await.status, 200);
    assert_eq!(common::get(addr, "/fail").await.status, 502);
    assert_eq!(common::get(addr, "/fail").await.status, 502);
    assert_eq!(handle.state(), CircuitState::Open);
    // The breaker now refuses, and the replica reports itself unready.
    assert_eq!(common::get(addr, "/fail").await.status, 503);
    let ready = common::get(addr, "/readyz?verbose").await;
    assert_eq!(ready.status, 503);
    assert_eq!(
        ready.body,
        "[-]payments failed: reason withheld\nreadyz check failed\n"
    );
    let one = common::get(addr, "/readyz/payments").await;
    assert_eq!(one.status, 503);
    assert!(
        one.body.contains("circuit open, half-open in"),
        "{}",
        one.body
    );
    // Liveness never depends on a dependency.
    assert_eq!(common::get(addr, "/livez").await.status, 200);

    handle.reset();
    assert_eq!(common::get(addr, "/readyz").await.body, "ok");
    handle.force_open();
    let one = common::get(addr, "/readyz/payments").await;
    assert!(one.body.contains("circuit forced open"), "{}", one.body);
}

#[tokio::test]
async fn a_non_critical_breaker_only_warns() {
    let breaker = CircuitBreakerLayer::builder()
        .name("recommendations")
        .build()
        .unwrap();
    let handle = breaker.handle();
    let registry = HealthRegistry::builder()
        .check(Check::circuit_breaker(&handle).non_critical())
        .build()
        .unwrap();
    let addr = common::serve(Router::new().layer(ProbeLayer::new(&registry))).await;
    handle.force_open();
    let ready = common::get(addr, "/readyz?verbose").await;
    assert_eq!(ready.status, 200);
    assert!(
        ready.body.starts_with("[!]recommendations warn"),
        "{}",
        ready.body
    );
    // Half-open lets trial traffic reach the replica, so it stays ready.
    handle.reset();
    assert_eq!(common::get(addr, "/readyz").await.status, 200);
}

/// By default an open breaker starts half-open on the first call after its
/// open duration. Its state still reads open until then, but readiness must
/// pass: an unready replica gets no calls, so it would never try again.
#[tokio::test(start_paused = true)]
async fn an_open_breaker_past_its_open_time_is_ready_without_traffic() {
    for auto in [false, true] {
        let breaker = CircuitBreakerLayer::builder()
            .name("payments")
            .consecutive_failures(1)
            .open_duration(Duration::from_secs(30))
            .auto_half_open(auto)
            .half_open_permits(1)
            .build()
            .unwrap();
        let handle = breaker.handle();
        let registry = HealthRegistry::builder()
            .check(Check::circuit_breaker(&handle))
            .build()
            .unwrap();
        let app = Router::new()
            .route("/fail", get(|| async { StatusCode::BAD_GATEWAY }))
            .route("/ok", get(|| async { "ok" }))
            .layer(breaker)
            .layer(ProbeLayer::new(&registry));
        let addr = common::serve(app).await;
        assert_eq!(common::get(addr, "/fail").await.status, 502);
        assert_eq!(common::get(addr, "/readyz").await.status, 503);
        tokio::time::advance(Duration::from_secs(30)).await;
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        let expected = if auto {
            CircuitState::HalfOpen
        } else {
            CircuitState::Open
        };
        assert_eq!(handle.state(), expected, "auto_half_open = {auto}");
        assert_eq!(common::get(addr, "/readyz").await.status, 200);
        // The trial call gets through and closes the circuit.
        assert_eq!(common::get(addr, "/ok").await.status, 200);
        assert_eq!(handle.state(), CircuitState::Closed);
    }
}
