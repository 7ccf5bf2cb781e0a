//! The circuit breaker over real sockets: an axum server with a real HTTP
//! client, and gRPC with a real tonic client (trailers-only and trailer
//! classification).
use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use axum::{Router, body::Body, http::StatusCode, routing::get, routing::post};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use tower_rampart::classify::{Classifier, GrpcCode, GrpcCodeSet};

#[derive(Clone, Default)]
struct Upstream {
    failing: Arc<AtomicBool>,
    hits: Arc<AtomicUsize>,
}

fn breaker(name: &str) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name(name)
        .count_window(4)
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .open_duration(Duration::from_secs(30))
        .build()
        .unwrap()
}

#[tokio::test]
async fn http_refusal_through_a_real_server_and_one_breaker_for_all_routes() {
    let up = Upstream::default();
    let layer = breaker("payments");
    let handle = layer.handle();
    let u = up.clone();
    let app = Router::new()
        .route(
            "/pay",
            get(move || {
                let u = u.clone();
                async move {
                    u.hits.fetch_add(1, Ordering::SeqCst);
                    if u.failing.load(Ordering::SeqCst) {
                        (StatusCode::BAD_GATEWAY, "upstream down")
                    } else {
                        (StatusCode::OK, "paid")
                    }
                }
            }),
        )
        .route("/status", get(|| async { "fine" }))
        .layer(layer);
    let addr = common::serve(app).await;

    let ok = common::get(addr, "/pay").await;
    assert_eq!((ok.status.as_u16(), ok.body.as_str()), (200, "paid"));
    common::get(addr, "/status").await;
    up.failing.store(true, Ordering::SeqCst);
    assert_eq!(common::get(addr, "/pay").await.status, 502);
    assert_eq!(handle.state(), CircuitState::Closed);
    // The 4th call, on any route, fills the window: 2 of 4 failed.
    assert_eq!(common::get(addr, "/pay").await.status, 502);
    assert_eq!(handle.state(), CircuitState::Open);

    let hits = up.hits.load(Ordering::SeqCst);
    for path in ["/pay", "/status"] {
        let r = common::get(addr, path).await;
        assert_eq!(r.status, 503, "{path}: one breaker for every route");
        let retry: u64 = r.header("retry-after").parse().unwrap();
        assert!((1..=30).contains(&retry), "{retry}");
        assert_eq!(r.header("content-type"), "application/problem+json");
        let json = r.json();
        assert_eq!(json["type"], "urn:tower-rampart:problem:circuit-open");
        assert_eq!(json["title"], "Circuit open");
        assert_eq!(json["status"], 503);
        assert_eq!(json["detail"], "the circuit is open");
    }
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        hits,
        "refused before the handler"
    );

    // gRPC callers of the same router get a trailers-only answer.
    let r = common::get_with(addr, "/pay", &[("content-type", "application/grpc")]).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("content-type"), "application/grpc");
    assert_eq!(r.header("grpc-status"), "14");
    assert_eq!(r.header("grpc-message"), "the circuit is open");
    assert!(!r.header("grpc-retry-pushback-ms").is_empty());
    assert_eq!(r.body, "");
    // What an operator reads: every refusal counted, whatever its protocol.
    assert_eq!(handle.counts().not_permitted, 3);
}

/// An operator's count of refusals while the server's worker threads
/// refuse at once (each counts on its own slot): all of them, and none
/// left over once the breaker moves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_on_every_server_thread_are_all_counted() {
    let layer = breaker("inventory");
    let handle = layer.handle();
    let app = Router::new()
        .route("/stock", get(|| async { "in stock" }))
        .layer(layer);
    let addr = common::serve(app).await;
    handle.open(Duration::from_secs(60));
    let connections: Vec<_> = (0..8)
        .map(|_| {
            tokio::spawn(async move {
                let client = common::client();
                for _ in 0..10 {
                    let req = http::Request::get(format!("http://{addr}/stock"))
                        .body(http_body_util::Full::new(Bytes::new()))
                        .unwrap();
                    assert_eq!(common::send(&client, req).await.status, 503);
                }
            })
        })
        .collect();
    for c in connections {
        c.await.unwrap();
    }
    assert_eq!(handle.counts().not_permitted, 80);
    handle.close();
    assert_eq!(handle.counts().not_permitted, 0);
    assert_eq!(common::get(addr, "/stock").await.status, 200);
}

fn health_reply(status: &'static str) -> Response<Body> {
    // HealthCheckResponse { status: SERVING }: field 1, varint 1.
    let message = Bytes::from_static(&[0, 0, 0, 0, 2, 0x08, 0x01]);
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from_static(status));
    if status != "0" {
        trailers.insert("grpc-message", HeaderValue::from_static("backend lost"));
    }
    let mut res = Response::new(Body::new(common::GrpcUnary {
        message: (status == "0").then_some(message),
        trailers: Some(trailers),
    }));
    res.headers_mut()
        .insert("content-type", HeaderValue::from_static("application/grpc"));
    res
}

#[tokio::test]
async fn grpc_failures_in_trailers_trip_it_and_a_tonic_client_sees_unavailable() {
    let up = Upstream::default();
    let layer = breaker("grpc-upstream");
    let handle = layer.handle();
    let u = up.clone();
    let app = Router::new()
        .route(
            "/grpc.health.v1.Health/Check",
            post(move || {
                let u = u.clone();
                async move {
                    u.hits.fetch_add(1, Ordering::SeqCst);
                    health_reply(if u.failing.load(Ordering::SeqCst) {
                        "14"
                    } else {
                        "0"
                    })
                }
            }),
        )
        .layer(layer);
    let addr = common::serve(app).await;
    let mut client = HealthClient::new(common::grpc_channel(addr).await);
    let check = || HealthCheckRequest {
        service: String::new(),
    };

    for _ in 0..2 {
        let res = client.check(check()).await.unwrap();
        assert_eq!(res.into_inner().status, 1);
    }
    up.failing.store(true, Ordering::SeqCst);
    let st = client.check(check()).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::Unavailable);
    assert_eq!(st.message(), "backend lost");
    assert_eq!(handle.counts().failures, 1, "read from the trailers");
    client.check(check()).await.unwrap_err();
    assert_eq!(handle.state(), CircuitState::Open);

    let hits = up.hits.load(Ordering::SeqCst);
    let st = client.check(check()).await.unwrap_err();
    assert_eq!(st.code(), tonic::Code::Unavailable);
    assert_eq!(st.message(), "the circuit is open");
    let pushback: u64 = st
        .metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pushback > 0 && pushback <= 30_000);
    assert_eq!(
        up.hits.load(Ordering::SeqCst),
        hits,
        "refused by the breaker"
    );
}

#[tokio::test]
async fn trailers_only_status_from_a_real_tonic_server_is_classified() {
    let (_reporter, health) = tonic_health::server::health_reporter();
    // NOT_FOUND (unknown service) counts as a failure for this breaker.
    let layer = CircuitBreakerLayer::builder()
        .name("health")
        .count_window(2)
        .minimum_calls(2)
        .classifier(
            Classifier::default().grpc_failures(GrpcCodeSet::default().with(GrpcCode::NotFound)),
        )
        .build()
        .unwrap();
    let handle = layer.handle();
    let app = tonic::service::Routes::new(health)
        .into_axum_router()
        .layer(layer);
    let addr = common::serve(app).await;
    let mut client = HealthClient::new(common::grpc_channel(addr).await);

    client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    let c = handle.counts();
    assert_eq!((c.calls, c.failures), (1, 0));
    let st = client
        .check(HealthCheckRequest {
            service: "no.such.Service".into(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::NotFound);
    assert_eq!(handle.state(), CircuitState::Open);
    let st = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(st.code(), tonic::Code::Unavailable);
}
