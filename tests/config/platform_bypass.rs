//! The platform's endpoints (`/metrics`, the probes, `grpc.health.v1`) sit
//! outside every protection of the stack, over real servers: an axum server
//! with a real HTTP/1.1 client, and a tonic server answering a tonic client
//! (h2c) and a Kubernetes-like HTTP/1.1 `/readyz` on the same port.
//!
//! While a breaker is open and a limiter is exhausted, a scrape answers 200
//! and is counted by nothing; `grpc.health.v1/Check` answers what `/readyz`
//! answers at that moment (the same registry, the same verdict), during
//! shutdown too. The bypass is an exact path match: a client cannot route
//! application traffic around the protections.
//!
//! The peer: the kube-apiserver serves `/livez`, `/readyz` and `/healthz`
//! outside its own load protection (API Priority and Fairness sends them to
//! the `exempt` priority level through the mandatory `probes` FlowSchema),
//! for the same reason: a probe refused by overload protection reports the
//! protection, not the server.
#![cfg(all(feature = "config", feature = "axum", feature = "tonic"))]

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::Full;
use tokio::sync::Notify;
use tonic::server::NamedService;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower_rampart::config::{RampartConfig, Stack};

fn config(extra: &str) -> RampartConfig {
    RampartConfig::from_toml(&format!(
        r#"
        [shutdown]
        shutdown_delay = "0s"
        drain_timeout = "10s"
        signals = false
        {extra}
        "#
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The limiter: one request a minute for everybody; the breaker is a
/// critical readiness check, so `/readyz` follows it.
const GUARDED: &str = r#"
    [health]
    breaker_readiness = "fail"
    grpc_poll_interval = "10m"
    [circuit_breaker]
    name = "api"
    [rate_limit]
    quotas = [{ rate = "1/m", burst = 1, key = "global" }]
    [platform]
    paths = ["/metrics", "/debug/hold"]
"#;

/// What the handlers saw.
#[derive(Default)]
struct Seen {
    scrapes: AtomicUsize,
    held: AtomicUsize,
    release: Notify,
}

/// `/api/ok`, `/api/hold` and `/debug/hold` (counted in `held`, answer when
/// `release` is notified), `/metrics` (counted in `scrapes`).
fn app(seen: Arc<Seen>) -> Router {
    let hold = |seen: Arc<Seen>| async move {
        seen.held.fetch_add(1, Ordering::SeqCst);
        seen.release.notified().await;
        "released"
    };
    let (s1, s2, scrapes) = (seen.clone(), seen.clone(), seen);
    Router::new()
        .route("/api/ok", get(|| async { "ok" }))
        .route("/api/hold", get(move || hold(s1.clone())))
        .route("/debug/hold", get(move || hold(s2.clone())))
        .route(
            "/metrics",
            get(move || {
                scrapes.scrapes.fetch_add(1, Ordering::SeqCst);
                async { "rampart_up 1\n" }
            }),
        )
}

async fn serve_axum(stack: &Stack, seen: Arc<Seen>) -> SocketAddr {
    common::serve(app(seen).layer(stack.layer())).await
}

/// Waits until `n` requests reached a hold handler.
async fn held(seen: &Seen, n: usize) {
    while seen.held.load(Ordering::SeqCst) < n {
        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    }
}

#[tokio::test]
async fn scrapes_answer_while_the_breaker_is_open_and_the_limit_is_spent() {
    let stack = config(GUARDED).stack().build().unwrap();
    let seen = Arc::new(Seen::default());
    let addr = serve_axum(&stack, seen.clone()).await;
    let breaker = stack.circuit_breaker().unwrap();

    // Scrapes spend nothing: the one request a minute is still there.
    for _ in 0..10 {
        assert_eq!(common::get(addr, "/metrics").await.status, StatusCode::OK);
    }
    assert_eq!(common::get(addr, "/api/ok").await.status, StatusCode::OK);
    assert_eq!(
        common::get(addr, "/api/ok").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );

    // The breaker saw the one admitted request only (scrapes and the
    // limiter's refusal are not counted).
    assert_eq!(breaker.counts().calls, 1);

    // The limit is spent and the breaker open: the application is refused,
    // the scrape and the probes answer, and /readyz tells the truth.
    breaker.force_open();
    let r = common::get(addr, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "rampart_up 1\n");
    assert_eq!(common::get(addr, "/livez").await.status, StatusCode::OK);
    let r = common::get(addr, "/readyz?verbose").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(r.body.contains("[-]api failed"), "{}", r.body);
    assert_eq!(
        common::get(addr, "/api/ok").await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(seen.scrapes.load(Ordering::SeqCst), 11);
    // Forced open, it refused nothing but the application's request.
    assert_eq!(breaker.counts().not_permitted, 0);

    // Once the limiter lets requests through again, the open breaker is
    // what refuses them; scrapes still answer.
    breaker.reset();
    assert_eq!(breaker.counts().calls, 0);
    assert_eq!(common::get(addr, "/metrics").await.status, StatusCode::OK);
    assert_eq!(breaker.counts().calls, 0, "a scrape is not a call");
}

#[tokio::test]
async fn the_bypass_is_an_exact_path() {
    let stack = config(GUARDED).stack().build().unwrap();
    let addr = serve_axum(&stack, Arc::default()).await;
    assert_eq!(common::get(addr, "/api/ok").await.status, StatusCode::OK);
    // The limit is spent: anything that is not exactly a platform path is
    // refused, whatever it looks like.
    for path in [
        "/metrics/../api/ok",
        "/metrics/",
        "/metricsx",
        "/METRICS",
        "/api/ok?/metrics",
        "/api/ok#/metrics",
        "/metrics%2F..%2Fapi%2Fok",
        "/grpc.health.v1.Health/Other",
        "/grpc.health.v1.Health/",
    ] {
        let r = common::get(addr, path).await;
        assert_eq!(
            r.status,
            StatusCode::TOO_MANY_REQUESTS,
            "{path}: {}",
            r.body
        );
    }
    // The query string is not part of the path.
    assert_eq!(
        common::get(addr, "/metrics?x=1").await.status,
        StatusCode::OK
    );
}

#[tokio::test]
async fn scrapes_are_not_in_flight_and_answer_while_draining() {
    let stack = config(GUARDED).stack().build().unwrap();
    let seen = Arc::new(Seen::default());
    let addr = serve_axum(&stack, seen.clone()).await;

    // A platform request in flight is not counted by the drain...
    let request = tokio::spawn(common::get(addr, "/debug/hold"));
    held(&seen, 1).await;
    assert_eq!(stack.shutdown().in_flight(), 0);
    seen.release.notify_one();
    assert_eq!(request.await.unwrap().body, "released");
    // ...an application request is.
    let request = tokio::spawn(common::get(addr, "/api/hold"));
    held(&seen, 2).await;
    assert_eq!(stack.shutdown().in_flight(), 1);
    seen.release.notify_one();
    assert_eq!(request.await.unwrap().status, StatusCode::OK);

    // Draining (this server keeps its listener open): the application is
    // refused, readiness fails, the scrape answers.
    stack.shutdown().trigger();
    stack.shutdown().draining().await;
    let r = common::get(addr, "/api/ok").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert_eq!(
        common::get(addr, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(common::get(addr, "/metrics").await.status, StatusCode::OK);
    let report = stack.shutdown().done().await;
    assert_eq!(report.aborted, 0);
}

// ---------------------------------------------------------------- tonic --

/// `demo.Greeter`: every method answers a trailers-only `OK`.
#[derive(Clone)]
struct Greeter;

impl NamedService for Greeter {
    const NAME: &'static str = "demo.Greeter";
}

impl tower::Service<http::Request<tonic::body::Body>> for Greeter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _req: http::Request<tonic::body::Body>) -> Self::Future {
        std::future::ready(Ok(tonic::Status::ok("").into_http()))
    }
}

/// A tonic server with the stack around `grpc.health.v1` and `demo.Greeter`,
/// answering HTTP/1.1 too (Kubernetes' `httpGet` probes). Its listener stays
/// open through the shutdown, to see what each phase answers.
async fn serve_tonic(stack: &Stack) -> SocketAddr {
    let health = stack
        .grpc_health()
        .service(Greeter::NAME, Vec::<String>::new())
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tonic::transport::Server::builder()
        .accept_http1(true)
        .layer(stack.layer())
        .add_service(health)
        .add_service(Greeter)
        .serve_with_incoming(incoming);
    tokio::spawn(async move { server.await.unwrap() });
    addr
}

async fn check(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> ServingStatus {
    client
        .check(HealthCheckRequest {
            service: service.to_owned(),
        })
        .await
        .unwrap_or_else(|s| panic!("Check({service:?}) failed: {s:?}"))
        .into_inner()
        .status()
}

/// `/readyz` over HTTP/1.1 and `Check("")` over h2c agree.
async fn agree(addr: SocketAddr, client: &mut HealthClient<tonic::transport::Channel>) -> bool {
    let readyz = common::get(addr, "/readyz").await.status;
    let grpc = check(client, "").await;
    let ready = match readyz {
        StatusCode::OK => true,
        StatusCode::SERVICE_UNAVAILABLE => false,
        other => panic!("/readyz answered {other}"),
    };
    assert_eq!(
        grpc == ServingStatus::Serving,
        ready,
        "/readyz {readyz} but Check {grpc:?}"
    );
    ready
}

/// An HTTP/1.1 gRPC-shaped call to `demo.Greeter/SayHello`: its
/// `grpc-status` (or the HTTP status when refused as plain HTTP).
async fn say_hello(addr: SocketAddr) -> String {
    let req = http::Request::post(format!("http://{addr}/demo.Greeter/SayHello"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let r = common::send(&common::client(), req).await;
    r.headers
        .get("grpc-status")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_else(|| r.status.to_string())
}

#[tokio::test]
async fn grpc_check_answers_what_readyz_answers() {
    let stack = config(GUARDED).stack().build().unwrap();
    let addr = serve_tonic(&stack).await;
    let mut client = HealthClient::new(common::grpc_channel(addr).await);

    assert!(agree(addr, &mut client).await);
    // An unknown service is NOT_FOUND, as the protocol says.
    let err = client
        .check(HealthCheckRequest {
            service: "no.Such".to_owned(),
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::NotFound);

    // The limit is spent: the application gets RESOURCE_EXHAUSTED, health
    // checks are never limited and still agree with /readyz.
    assert_eq!(say_hello(addr).await, "0");
    assert_eq!(say_hello(addr).await, "8");
    for _ in 0..20 {
        assert!(agree(addr, &mut client).await);
    }

    // The breaker opens: Check says NOT_SERVING at once (the poll interval
    // is an hour: Check reads the registry when called), like /readyz.
    stack.circuit_breaker().unwrap().force_open();
    assert!(!agree(addr, &mut client).await);
    stack.circuit_breaker().unwrap().reset();
    assert!(agree(addr, &mut client).await);
    assert_eq!(stack.circuit_breaker().unwrap().counts().calls, 0);
}

#[tokio::test]
async fn grpc_check_agrees_with_readyz_during_shutdown() {
    // Shutdown requested (a long delay: the test ends before it does).
    let mut delayed = config(GUARDED);
    delayed.shutdown.shutdown_delay = std::time::Duration::from_secs(600);
    let stack = delayed.stack().build().unwrap();
    let addr = serve_tonic(&stack).await;
    let mut client = HealthClient::new(common::grpc_channel(addr).await);
    assert!(agree(addr, &mut client).await);
    stack.shutdown().trigger();
    assert!(!agree(addr, &mut client).await);
    assert_eq!(say_hello(addr).await, "0", "still served during the delay");

    // Draining: the application is refused (UNAVAILABLE), Check is not:
    // it answers NOT_SERVING, like /readyz.
    let stack = config(GUARDED).stack().build().unwrap();
    let addr = serve_tonic(&stack).await;
    let mut client = HealthClient::new(common::grpc_channel(addr).await);
    stack.shutdown().trigger();
    stack.shutdown().draining().await;
    assert_eq!(say_hello(addr).await, "14");
    assert!(!agree(addr, &mut client).await);
    assert_eq!(
        check(&mut client, "demo.Greeter").await,
        ServingStatus::NotServing
    );
}

#[tokio::test]
async fn the_grpc_health_bypass_can_be_turned_off() {
    let stack = config(&format!("{GUARDED}\ngrpc_health = false"))
        .stack()
        .build()
        .unwrap();
    let addr = serve_tonic(&stack).await;
    let mut client = HealthClient::new(common::grpc_channel(addr).await);
    assert_eq!(check(&mut client, "").await, ServingStatus::Serving);
    // Behind the limiter now: the second call is refused.
    let err = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
}
