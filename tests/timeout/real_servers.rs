//! The timeout layer in front of real servers on loopback, with real
//! clients: axum over HTTP/1.1 and tonic over HTTP/2. Real time, with
//! short timeouts and no assertions on speed.
use crate::common;

use std::time::Duration;

use axum::Router;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use bytes::Bytes;
use http::{HeaderName, Request};
use http_body_util::Full;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower_rampart::timeout::{Deadline, TimeoutLayer, parse_grpc_timeout};

const BUDGET: HeaderName = HeaderName::from_static("x-request-timeout-ms");

async fn never() -> &'static str {
    tokio::time::sleep(Duration::from_secs(3600)).await;
    "never"
}

/// The handler's remaining budget, in milliseconds.
async fn remaining(deadline: Deadline) -> String {
    deadline.remaining().as_millis().to_string()
}

fn app() -> Router {
    let per_route = TimeoutLayer::builder()
        .name("slow-route")
        .timeout(Duration::from_millis(100))
        .status(http::StatusCode::SERVICE_UNAVAILABLE)
        .build()
        .unwrap();
    let router_wide = TimeoutLayer::builder()
        .name("api")
        .timeout(Duration::from_millis(1500))
        .safety_margin(Duration::from_millis(10))
        .budget_header(BUDGET)
        .build()
        .unwrap();
    Router::new()
        .route("/slow", get(never))
        .route("/fast", get(|| async { "fast" }))
        .route("/deadline", get(remaining))
        // One route with its own, shorter timeout and status.
        .route("/route-limited", get(never).layer(per_route))
        .layer(router_wide)
}

#[tokio::test]
async fn http_answers_through_a_real_server() {
    let addr = common::serve(app()).await;

    let reply = common::get(addr, "/fast").await;
    assert_eq!(reply.status, 200);
    assert_eq!(reply.body, "fast");

    // The router-wide maximum.
    let reply = common::get(addr, "/slow").await;
    assert_eq!(reply.status, 504);
    assert_eq!(reply.header("content-type"), "application/problem+json");
    let json = reply.json();
    assert_eq!(json["status"], 504);
    assert_eq!(json["title"], "Timed out");
    assert_eq!(
        json["detail"],
        "the request did not finish before its deadline"
    );

    // The client's shorter budget.
    let reply = common::get_with(addr, "/slow", &[("x-request-timeout-ms", "200")]).await;
    assert_eq!(reply.status, 504);

    // A spent budget (no more than the margin) is refused at once.
    let reply = common::get_with(addr, "/fast", &[("x-request-timeout-ms", "5")]).await;
    assert_eq!(reply.status, 504);
    assert_eq!(
        reply.json()["detail"],
        "the caller's budget (5ms) is within the safety margin (10ms)"
    );

    // The per-route layer answers with its own status.
    let reply = common::get(addr, "/route-limited").await;
    assert_eq!(reply.status, 503);
    assert_eq!(reply.json()["status"], 503);
}

#[tokio::test]
async fn handlers_see_the_effective_deadline() {
    let addr = common::serve(app()).await;

    let reply = common::get(addr, "/deadline").await;
    let ms: u64 = reply.body.parse().unwrap();
    assert!(ms <= 1500 && ms > 0, "{ms}");

    let reply = common::get_with(addr, "/deadline", &[("x-request-timeout-ms", "400")]).await;
    let ms: u64 = reply.body.parse().unwrap();
    assert!(ms <= 390 && ms > 0, "budget less margin, got {ms}");

    // A malformed budget is ignored: the server maximum applies.
    let reply = common::get_with(addr, "/deadline", &[("x-request-timeout-ms", "soon")]).await;
    assert_eq!(reply.status, 200);
    let ms: u64 = reply.body.parse().unwrap();
    assert!(ms > 400 && ms <= 1500, "{ms}");
}

#[tokio::test]
async fn the_deadline_propagates_to_a_downstream_call() {
    // Downstream: reports the budgets it was given.
    let downstream = Router::new().route(
        "/echo",
        get(|headers: HeaderMap| async move {
            let get = |name: &str| {
                headers
                    .get(name)
                    .map(|v| v.to_str().unwrap().to_owned())
                    .unwrap_or_default()
            };
            format!("{} {}", get("x-request-timeout-ms"), get("grpc-timeout"))
        }),
    );
    let downstream = common::serve(downstream).await;

    // Upstream: calls downstream within its own deadline, telling it how
    // long it has.
    let upstream = Router::new()
        .route(
            "/call",
            get(move |deadline: Deadline| async move {
                let mut req = Request::get(format!("http://{downstream}/echo"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                deadline.insert_millis(req.headers_mut(), BUDGET);
                deadline.insert_grpc_timeout(req.headers_mut());
                match deadline.bound(common::send(&common::client(), req)).await {
                    Ok(reply) => reply.body,
                    Err(_elapsed) => "downstream too slow".to_owned(),
                }
            }),
        )
        .layer(
            TimeoutLayer::builder()
                .timeout(Duration::from_secs(5))
                .safety_margin(Duration::from_millis(50))
                .budget_header(BUDGET)
                .build()
                .unwrap(),
        );
    let upstream = common::serve(upstream).await;

    let reply = common::get_with(upstream, "/call", &[("x-request-timeout-ms", "800")]).await;
    assert_eq!(reply.status, 200);
    let (ms, grpc) = reply.body.split_once(' ').unwrap();
    let ms: u64 = ms.parse().unwrap();
    assert!(ms > 0 && ms <= 750, "downstream was given {ms} ms");
    let grpc = parse_grpc_timeout(grpc.as_bytes()).unwrap();
    assert!(
        grpc > Duration::ZERO && grpc <= Duration::from_millis(750),
        "{grpc:?}"
    );
}

/// A gRPC server: the standard health service plus a unary method that
/// never answers, behind the timeout layer.
async fn grpc_server() -> std::net::SocketAddr {
    let (_reporter, health) = tonic_health::server::health_reporter();
    let router = tonic::service::Routes::new(health)
        .into_axum_router()
        .route("/test.Slow/Call", post(never))
        .layer(
            TimeoutLayer::builder()
                .name("grpc")
                .timeout(Duration::from_millis(200))
                .safety_margin(Duration::from_millis(50))
                .build()
                .unwrap(),
        );
    common::serve_tonic(tonic::service::Routes::from(router)).await
}

#[tokio::test]
async fn grpc_answers_through_a_real_tonic_client() {
    let addr = grpc_server().await;
    let channel = common::grpc_channel(addr).await;

    // The happy path passes through.
    let mut health = HealthClient::new(channel.clone());
    let res = health
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap();
    assert_eq!(res.into_inner().status(), ServingStatus::Serving);

    // A slow method gets DEADLINE_EXCEEDED from the layer.
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let status = grpc
        .unary(
            tonic::Request::new(()),
            http::uri::PathAndQuery::from_static("/test.Slow/Call"),
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert_eq!(
        status.message(),
        "the request did not finish before its deadline"
    );

    // A client budget within the safety margin is refused at once, without
    // calling the service.
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(Duration::from_millis(30));
    let status = health.check(req).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded);
    assert_eq!(
        status.message(),
        "the caller's budget (30ms) is within the safety margin (50ms)"
    );

    // A roomy client budget: served.
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    });
    req.set_timeout(Duration::from_secs(5));
    assert!(health.check(req).await.is_ok());
}
