//! Issue 10, point 1: a circuit breaker counts only the failures the service
//! itself caused. A client that chooses a tiny deadline, or that runs into
//! another layer's refusal, must not be able to open a breaker that every
//! other client shares.
//!
//! Real servers on loopback (axum over HTTP/1.1 and h2c, tonic over HTTP/2)
//! with real clients (hyper, tonic), plus service-level tests for the panic
//! and error-mode paths. Socket tests run on real time with short budgets
//! and never assert on speed; the others run on paused time.
use crate::common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use http_body::Frame;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tokio::task::JoinSet;
use tonic::metadata::MetadataValue;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_http::catch_panic::CatchPanicLayer;
use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};
use tower_rampart::classify::{Classifier, StatusSet};
use tower_rampart::rate_limit::{Quota, RateLimitLayer};
use tower_rampart::shutdown::Shutdown;
use tower_rampart::timeout::TimeoutLayer;

const BUDGET: HeaderName = HeaderName::from_static("x-request-timeout-ms");
/// How long `/work` (and the gRPC service `slow`) takes.
const WORK: Duration = Duration::from_millis(300);

/// One breaker shared by every client, quick to trip: 5 calls with half of
/// them failed, or 3 failures in a row. Before issue 10, 20 requests with a
/// spent budget opened it.
fn breaker(name: &str) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name(name)
        .count_window(20)
        .minimum_calls(5)
        .failure_rate_threshold(50.0)
        .consecutive_failures(3)
        .open_duration(Duration::from_secs(30))
        .build()
        .unwrap()
}

/// The server's own budget is `server`; callers may shorten it with
/// `x-request-timeout-ms` (and `grpc-timeout` on gRPC requests).
fn timeout(server: Duration) -> TimeoutLayer {
    TimeoutLayer::builder()
        .name("api")
        .timeout(server)
        .budget_header(BUDGET)
        .build()
        .unwrap()
}

/// Breaker (outer) -> timeout (inner) -> `/work` (slow) and `/fast`.
fn app(server_timeout: Duration, breaker: CircuitBreakerLayer) -> Router {
    Router::new()
        .route(
            "/work",
            get(|| async {
                tokio::time::sleep(WORK).await;
                "done"
            }),
        )
        .route("/fast", get(|| async { "fast" }))
        .layer(timeout(server_timeout))
        .layer(breaker)
}

type HttpClient = Client<HttpConnector, Full<Bytes>>;

/// An HTTP/2 client over cleartext (prior knowledge, h2c).
fn h2c_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

fn request(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Request<Full<Bytes>> {
    let mut b = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// Sends `n` copies of a request, `parallel` at a time, and counts the
/// answers by `"<status> <grpc-status or ->"`.
async fn blast(
    client: &HttpClient,
    addr: SocketAddr,
    path: &'static str,
    headers: &'static [(&'static str, &'static str)],
    n: usize,
    parallel: usize,
) -> BTreeMap<String, usize> {
    blast_with(client, n, parallel, move || request(addr, path, headers)).await
}

/// Sends `n` requests made by `make`, `parallel` at a time, and counts the
/// answers by `"<status> <grpc-status or ->"`.
async fn blast_with<F>(
    client: &HttpClient,
    n: usize,
    parallel: usize,
    make: F,
) -> BTreeMap<String, usize>
where
    F: Fn() -> Request<Full<Bytes>> + Clone + Send + 'static,
{
    let mut tasks = JoinSet::new();
    for worker in 0..parallel {
        let client = client.clone();
        let make = make.clone();
        let share = n / parallel + usize::from(worker < n % parallel);
        tasks.spawn(async move {
            let mut seen = Vec::with_capacity(share);
            for _ in 0..share {
                let reply = common::send(&client, make()).await;
                let grpc = reply.header("grpc-status");
                let grpc = if grpc.is_empty() { "-" } else { grpc };
                seen.push(format!("{} {grpc}", reply.status.as_u16()));
            }
            seen
        });
    }
    let mut counts = BTreeMap::new();
    while let Some(seen) = tasks.join_next().await {
        for key in seen.unwrap() {
            *counts.entry(key).or_default() += 1;
        }
    }
    counts
}

fn only(key: &str, n: usize) -> BTreeMap<String, usize> {
    BTreeMap::from([(key.to_owned(), n)])
}

#[tokio::test]
async fn client_budgets_cannot_open_the_shared_breaker_over_http1_and_h2c() {
    let layer = breaker("shared");
    let handle = layer.handle();
    let addr = common::serve(app(Duration::from_secs(5), layer)).await;
    let (h1, h2) = (common::client(), h2c_client());

    // The answer says what happened.
    let reply = common::get_with(addr, "/work", &[("x-request-timeout-ms", "0")]).await;
    assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(reply.json()["detail"], "the caller's budget is zero");

    // A budget spent on arrival, well inside one client's rate: 1,000 over
    // HTTP/1.1 and 200 more over h2c. The handler is never called.
    let spent: &[(&str, &str)] = &[("x-request-timeout-ms", "0")];
    assert_eq!(
        blast(&h1, addr, "/work", spent, 1000, 8).await,
        only("504 -", 1000)
    );
    assert_eq!(
        blast(&h2, addr, "/work", spent, 200, 20).await,
        only("504 -", 200)
    );

    // A budget shorter than the handler: the timeout fires while it works.
    let short: &[(&str, &str)] = &[("x-request-timeout-ms", "20")];
    assert_eq!(
        blast(&h2, addr, "/work", short, 20, 20).await,
        only("504 -", 20)
    );
    assert_eq!(
        blast(&h1, addr, "/work", short, 10, 10).await,
        only("504 -", 10)
    );

    assert_eq!(handle.state(), CircuitState::Closed);
    let c = handle.counts();
    assert_eq!(
        (c.calls, c.failures, c.consecutive_failures),
        (0, 0, 0),
        "recorded as ignored: {c:?}"
    );

    // Every other client is still served.
    let ok = common::get(addr, "/fast").await;
    assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "fast"));
    let ok = common::send(&h2, request(addr, "/work", &[])).await;
    assert_eq!((ok.status, ok.body.as_str()), (StatusCode::OK, "done"));
    let c = handle.counts();
    assert_eq!((c.calls, c.failures), (2, 0));
}

#[tokio::test]
async fn the_servers_own_timeout_still_counts_and_opens_the_breaker() {
    let layer = breaker("own-budget");
    let handle = layer.handle();
    // The server allows 50ms; `/work` takes 300ms.
    let addr = common::serve(app(Duration::from_millis(50), layer)).await;

    // A generous client budget does not bind, so it does not excuse the
    // service either.
    for headers in [&[][..], &[("x-request-timeout-ms", "10000")], &[]] {
        let reply = common::get_with(addr, "/work", headers).await;
        assert_eq!(reply.status, StatusCode::GATEWAY_TIMEOUT);
        assert_eq!(
            reply.json()["detail"],
            "the request did not finish before its deadline"
        );
    }
    // 3 failures in a row.
    assert_eq!(handle.state(), CircuitState::Open);
    assert_eq!(handle.counts().failures, 3);
    let refused = common::get(addr, "/fast").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        refused.json()["type"],
        "urn:tower-rampart:problem:circuit-open"
    );
}

/// How long the gRPC service `slow` takes.
const GRPC_WORK: Duration = Duration::from_secs(2);

/// A gRPC health service whose `slow` service answers after [`GRPC_WORK`].
struct SlowHealth;

#[tonic::async_trait]
impl Health for SlowHealth {
    async fn check(
        &self,
        req: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        if req.get_ref().service == "slow" {
            tokio::time::sleep(GRPC_WORK).await;
        }
        Ok(tonic::Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream =
        tonic::codegen::tokio_stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Ok(tonic::Response::new(tonic::codegen::tokio_stream::empty()))
    }
}

/// A real tonic server: breaker (outer) -> timeout (inner) -> [`SlowHealth`].
async fn serve_grpc(breaker: CircuitBreakerLayer, timeout: TimeoutLayer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tonic::transport::Server::builder()
        .layer(tower::ServiceBuilder::new().layer(breaker).layer(timeout))
        .add_service(HealthServer::new(SlowHealth))
        .serve_with_incoming(incoming);
    tokio::spawn(async move { server.await.unwrap() });
    addr
}

/// `service` checked with `grpc-timeout: <grpc_timeout>` (raw, as a client
/// sends it), or without one.
fn check(service: &str, grpc_timeout: Option<&'static str>) -> tonic::Request<HealthCheckRequest> {
    let mut req = tonic::Request::new(HealthCheckRequest {
        service: service.to_owned(),
    });
    if let Some(t) = grpc_timeout {
        req.metadata_mut()
            .insert("grpc-timeout", MetadataValue::from_static(t));
    }
    req
}

/// A unary `Health/Check` as a gRPC client sends it over h2c, with
/// `grpc-timeout: <grpc_timeout>` (an empty message: the server never reads
/// it when the deadline is spent).
fn raw_grpc_check(addr: SocketAddr, grpc_timeout: &str) -> Request<Full<Bytes>> {
    Request::post(format!("http://{addr}/grpc.health.v1.Health/Check"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .header("grpc-timeout", grpc_timeout)
        .body(Full::new(Bytes::from_static(&[0, 0, 0, 0, 0])))
        .unwrap()
}

#[tokio::test]
async fn grpc_deadlines_cannot_open_the_shared_breaker() {
    let layer = breaker("grpc-shared");
    let handle = layer.handle();
    let timeout = TimeoutLayer::builder()
        .name("grpc")
        .timeout(Duration::from_secs(5))
        .safety_margin(Duration::from_secs(1))
        .build()
        .unwrap();
    let addr = serve_grpc(layer, timeout).await;

    // `grpc-timeout: 1m` is one MILLIsecond: within the 1s margin, spent
    // on arrival. 1,000 of them over HTTP/2 (a tonic client enforces such a
    // deadline itself and may give up first, so these go through a plain
    // h2c client that reads the trailers-only answer).
    let h2 = h2c_client();
    let reply = common::send(&h2, raw_grpc_check(addr, "1m")).await;
    assert_eq!(reply.header("grpc-status"), "4");
    assert_eq!(
        reply.header("grpc-message"),
        "the caller's budget (1ms) is within the safety margin (1s)"
    );
    let counts = blast_with(&h2, 1000, 20, move || raw_grpc_check(addr, "1m")).await;
    assert_eq!(counts, only("200 4", 1000));

    // A tonic client: a deadline within the margin, and one shorter than
    // the work (the server answers a second before the client would give up;
    // tonic clients enforce their deadline themselves).
    let mut client = HealthClient::new(common::grpc_channel(addr).await);
    for _ in 0..20 {
        let status = client.check(check("", Some("500m"))).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert_eq!(
            status.message(),
            "the caller's budget (500ms) is within the safety margin (1s)"
        );
    }
    let mut slow = JoinSet::new();
    for _ in 0..5 {
        let mut client = client.clone();
        slow.spawn(async move { client.check(check("slow", Some("1300m"))).await });
    }
    while let Some(done) = slow.join_next().await {
        let status = done.unwrap().unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
        assert_eq!(
            status.message(),
            "the request did not finish before its deadline"
        );
    }

    assert_eq!(handle.state(), CircuitState::Closed);
    let c = handle.counts();
    assert_eq!((c.calls, c.failures), (0, 0), "{c:?}");

    // The next ordinary calls are served.
    let res = client.check(check("", None)).await.unwrap();
    assert_eq!(res.get_ref().status, ServingStatus::Serving as i32);
    let res = client.check(check("", Some("5S"))).await.unwrap();
    assert_eq!(res.get_ref().status, ServingStatus::Serving as i32);
    assert_eq!(handle.counts().calls, 2);
}

#[tokio::test]
async fn grpc_server_budget_timeouts_still_count() {
    let layer = breaker("grpc-own-budget");
    let handle = layer.handle();
    let timeout = TimeoutLayer::builder()
        .name("grpc")
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let addr = serve_grpc(layer, timeout).await;
    let mut client = HealthClient::new(common::grpc_channel(addr).await);
    // No deadline, and one longer than the server's: the server's binds.
    for deadline in [None, Some("10S"), None] {
        let status = client.check(check("slow", deadline)).await.unwrap_err();
        assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{deadline:?}");
    }
    assert_eq!(handle.state(), CircuitState::Open);
    let status = client.check(check("", None)).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(status.message(), "the circuit is open");
}

// Resilience4j's `ignoreExceptions` (an ignored error counts as neither a
// success nor a failure) applied to the refusals of this crate's own layers:
// they say nothing about the protected service.
#[tokio::test]
async fn refusals_of_inner_layers_are_never_counted() {
    // This breaker counts 429 as a failure: an upstream's 429 counts, the
    // rate limit's own 429 does not.
    let outer = CircuitBreakerLayer::builder()
        .name("outer")
        .count_window(20)
        .minimum_calls(5)
        .failure_rate_threshold(50.0)
        .consecutive_failures(3)
        .classifier(
            Classifier::default()
                .http_failures(StatusSet::server_errors().with(StatusCode::TOO_MANY_REQUESTS)),
        )
        .build()
        .unwrap();
    let handle = outer.handle();
    let limit = RateLimitLayer::builder()
        .name("limit")
        .quota(Quota::per_minute(1).burst(1))
        .build()
        .unwrap();
    let shutdown = Shutdown::builder()
        .signals(false)
        .shutdown_delay(Duration::ZERO)
        .drain_timeout(Duration::from_secs(30))
        .build()
        .unwrap();
    let inner = breaker("inner");
    let inner_handle = inner.handle();
    inner_handle.force_open();
    let ok = || async { "ok" };
    let app = Router::new()
        .route("/limited", get(ok).layer(limit))
        .route("/draining", get(ok).layer(shutdown.drain_layer()))
        .route("/isolated", get(ok).layer(inner))
        .route(
            "/upstream-429",
            get(|| async { (StatusCode::TOO_MANY_REQUESTS, "upstream busy") }),
        )
        .layer(outer);
    let addr = common::serve(app).await;
    let h1 = common::client();
    let grpc: &[(&str, &str)] = &[("content-type", "application/grpc")];

    // Rate limited: one admitted, then 429 (HTTP) and RESOURCE_EXHAUSTED
    // (gRPC, a failure code for the default classifier).
    assert_eq!(common::get(addr, "/limited").await.status, StatusCode::OK);
    assert_eq!(
        blast(&h1, addr, "/limited", &[], 30, 5).await,
        only("429 -", 30)
    );
    assert_eq!(
        blast(&h1, addr, "/limited", grpc, 30, 5).await,
        only("200 8", 30)
    );

    // A forced-open inner breaker: 503 and UNAVAILABLE.
    assert_eq!(
        blast(&h1, addr, "/isolated", &[], 30, 5).await,
        only("503 -", 30)
    );
    assert_eq!(
        blast(&h1, addr, "/isolated", grpc, 30, 5).await,
        only("200 14", 30)
    );

    // Draining: 503 and UNAVAILABLE.
    shutdown.trigger();
    shutdown.draining().await;
    assert_eq!(
        blast(&h1, addr, "/draining", &[], 30, 5).await,
        only("503 -", 30)
    );
    assert_eq!(
        blast(&h1, addr, "/draining", grpc, 30, 5).await,
        only("200 14", 30)
    );

    assert_eq!(handle.state(), CircuitState::Closed);
    let c = handle.counts();
    assert_eq!((c.calls, c.failures), (1, 0), "{c:?}");
    assert_eq!(inner_handle.state(), CircuitState::ForcedOpen);

    // The classifier is live: the upstream's own 429 counts.
    let reply = common::get(addr, "/upstream-429").await;
    assert_eq!(reply.status, StatusCode::TOO_MANY_REQUESTS);
    let c = handle.counts();
    assert_eq!((c.calls, c.failures), (2, 1), "{c:?}");

    // Once the inner breaker is reset, its route is served and counted.
    inner_handle.reset();
    assert_eq!(common::get(addr, "/isolated").await.status, StatusCode::OK);
    assert_eq!(handle.counts().calls, 3);
}

type Req = Request<Full<Bytes>>;

fn plain_request(budget_ms: Option<&str>) -> Req {
    let mut b = Request::get("/");
    if let Some(ms) = budget_ms {
        b = b.header(BUDGET, ms);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

fn slow_service()
-> impl Service<Req, Response = Response<Full<Bytes>>, Error = Infallible, Future: Send>
+ Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Req| async {
        tokio::time::sleep(WORK).await;
        Ok(Response::new(Full::new(Bytes::from_static(b"done"))))
    })
}

/// Error mode: a `Rejection` returned as an error is judged by its fault,
/// whether the breaker is in `ErrorMode` or in `HttpMode` above a timeout in
/// `ErrorMode`.
#[tokio::test(start_paused = true)]
async fn rejections_returned_as_errors_are_judged_by_their_fault() {
    // ErrorMode breaker over an ErrorMode timeout.
    let outer = breaker("errors").into_error_mode();
    let handle = outer.handle();
    let svc = outer.layer(
        timeout(Duration::from_millis(50))
            .into_error_mode()
            .layer(slow_service()),
    );
    for budget in ["0", "10"].repeat(20) {
        let err = svc
            .clone()
            .oneshot(plain_request(Some(budget)))
            .await
            .unwrap_err();
        assert!(tower_rampart::timeout::is_timeout(err.as_ref()));
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.counts().calls, 0);
    for _ in 0..3 {
        svc.clone().oneshot(plain_request(None)).await.unwrap_err();
    }
    assert_eq!(handle.state(), CircuitState::Open);

    // HttpMode breaker over an ErrorMode timeout: the error is a `BoxError`.
    let outer = breaker("mixed");
    let handle = outer.handle();
    let svc = outer.layer(
        timeout(Duration::from_millis(50))
            .into_error_mode()
            .layer(slow_service()),
    );
    for budget in ["0", "10"].repeat(20) {
        let err: BoxError = svc
            .clone()
            .oneshot(plain_request(Some(budget)))
            .await
            .unwrap_err();
        assert!(tower_rampart::timeout::is_timeout(err.as_ref()));
    }
    assert_eq!(handle.state(), CircuitState::Closed);
    assert_eq!(handle.counts().calls, 0);
    for _ in 0..3 {
        svc.clone().oneshot(plain_request(None)).await.unwrap_err();
    }
    assert_eq!(handle.state(), CircuitState::Open);
}

/// A breaker that never trips on its own here: every call stays countable.
fn patient(name: &str) -> CircuitBreakerLayer {
    CircuitBreakerLayer::builder()
        .name(name)
        .count_window(100)
        .minimum_calls(100)
        .consecutive_failures(100)
        .build()
        .unwrap()
}

async fn panics() -> &'static str {
    panic!("handler bug")
}

// gobreaker's `TestPanicInRequest` (a panic inside `Execute` counts as one
// failure and is re-raised), translated to a tower stack over a real server.
#[tokio::test]
async fn a_panic_caught_inside_counts_once() {
    let layer = patient("caught");
    let handle = layer.handle();
    let app = Router::new()
        .route("/panic", get(panics))
        .route("/fast", get(|| async { "fast" }))
        .layer(CatchPanicLayer::new())
        .layer(layer);
    let addr = common::serve(app).await;
    for _ in 0..2 {
        let reply = common::get(addr, "/panic").await;
        assert_eq!(reply.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    assert_eq!(common::get(addr, "/fast").await.status, StatusCode::OK);
    let c = handle.counts();
    assert_eq!((c.calls, c.failures), (3, 2), "{c:?}");
}

#[tokio::test]
async fn a_panic_without_a_catcher_counts_once_and_goes_on() {
    let layer = patient("uncaught");
    let handle = layer.handle();
    let app = Router::new()
        .route("/panic", get(panics))
        .route("/fast", get(|| async { "fast" }))
        .layer(layer);
    let addr = common::serve(app).await;
    // The panic kills the connection's task: the client sees no answer.
    let res = common::client().request(request(addr, "/panic", &[])).await;
    assert!(res.is_err(), "{res:?}");
    assert_eq!(common::get(addr, "/fast").await.status, StatusCode::OK);
    let c = handle.counts();
    assert_eq!((c.calls, c.failures), (2, 1), "{c:?}");
}

/// A service whose `call` itself panics (before any future exists).
#[derive(Clone)]
struct PanicsInCall;

impl Service<Req> for PanicsInCall {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = std::future::Ready<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Req) -> Self::Future {
        panic!("bug in call")
    }
}

/// A streaming gRPC body whose poll panics.
struct PanickingBody;

impl http_body::Body for PanickingBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        panic!("bug in the body")
    }
}

// gobreaker's `TestPanicInRequest`: after one panicking request the counts
// are one request, one failure, one consecutive failure.
#[tokio::test(start_paused = true)]
async fn panics_in_call_future_and_body_count_once_each() {
    // In the future: the panic reaches the task's `JoinError`.
    let layer = patient("future");
    let handle = layer.handle();
    let svc = layer.layer(tower::service_fn(|_: Req| async {
        panic!("bug in the future");
        #[allow(unreachable_code)]
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let err = tokio::spawn(svc.oneshot(plain_request(None)))
        .await
        .unwrap_err();
    assert!(err.is_panic());
    let c = handle.counts();
    assert_eq!((c.calls, c.failures), (1, 1), "{c:?}");

    // In `call`.
    let layer = patient("call");
    let handle = layer.handle();
    let mut svc = layer.layer(PanicsInCall);
    let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        drop(svc.call(plain_request(None)));
    }));
    assert!(caught.is_err());
    let c = handle.counts();
    assert_eq!((c.calls, c.failures), (1, 1), "{c:?}");

    // In a streaming gRPC body, after the response head.
    let layer = patient("body");
    let handle = layer.handle();
    let svc = layer.layer(tower::service_fn(|_: Req| async {
        let mut res = Response::new(PanickingBody);
        res.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        Ok::<_, Infallible>(res)
    }));
    let res = svc.oneshot(plain_request(None)).await.unwrap();
    assert_eq!(
        handle.counts().calls,
        0,
        "the verdict waits for the trailers"
    );
    let err = tokio::spawn(res.into_body().collect()).await.unwrap_err();
    assert!(err.is_panic());
    let c = handle.counts();
    assert_eq!((c.calls, c.failures), (1, 1), "{c:?}");
}

#[tokio::test(start_paused = true)]
async fn a_panicking_half_open_trial_reopens_and_a_keyed_breaker_counts_it() {
    let layer = CircuitBreakerLayer::builder()
        .name("trial")
        .consecutive_failures(1)
        .open_duration(Duration::from_secs(1))
        .half_open_permits(1)
        .build()
        .unwrap();
    let handle = layer.handle();
    let svc = layer.layer(tower::service_fn(|req: Req| async move {
        if req.headers().contains_key("x-panic") {
            panic!("bug in the trial");
        }
        let mut res = Response::new(Full::new(Bytes::new()));
        *res.status_mut() = StatusCode::BAD_GATEWAY;
        Ok::<_, Infallible>(res)
    }));
    svc.clone().oneshot(plain_request(None)).await.unwrap();
    assert_eq!(handle.state(), CircuitState::Open);
    tokio::time::advance(Duration::from_millis(1001)).await;
    let trial = Request::get("/")
        .header("x-panic", "1")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let err = tokio::spawn(svc.clone().oneshot(trial)).await.unwrap_err();
    assert!(err.is_panic());
    // The trial failed: open again, not stuck half-open without a permit.
    assert_eq!(handle.state(), CircuitState::Open);
    let refused = svc.clone().oneshot(plain_request(None)).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);

    // Keyed: the panic counts against its key only.
    let layer = CircuitBreakerLayer::builder()
        .name("keyed")
        .count_window(100)
        .minimum_calls(100)
        .consecutive_failures(100)
        .build_keyed(|req: &Req| req.uri().path().to_owned())
        .unwrap();
    let handles = layer.handle();
    let svc = layer.layer(tower::service_fn(|req: Req| async move {
        if req.uri().path() == "/bug" {
            panic!("bug");
        }
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let bug = Request::get("/bug").body(Full::new(Bytes::new())).unwrap();
    assert!(
        tokio::spawn(svc.clone().oneshot(bug))
            .await
            .unwrap_err()
            .is_panic()
    );
    svc.clone().oneshot(plain_request(None)).await.unwrap();
    let c = handles.get(&"/bug".to_owned()).unwrap().counts();
    assert_eq!((c.calls, c.failures), (1, 1), "{c:?}");
    let c = handles.get(&"/".to_owned()).unwrap().counts();
    assert_eq!((c.calls, c.failures), (1, 0), "{c:?}");
}

/// Polls `fut` once inside `catch_unwind`, as an executor or a
/// `catch_unwind` combinator does; the caller drops the future only later,
/// when nothing is unwinding any more (tokio, in contrast, drops a panicked
/// task's future during the unwinding).
fn poll_catching<F: std::future::Future + Unpin>(fut: &mut F) -> bool {
    let mut cx = Context::from_waker(std::task::Waker::noop());
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let _ = Pin::new(fut).poll(&mut cx);
    }))
    .is_err()
}

#[tokio::test(start_paused = true)]
async fn a_panic_caught_outside_and_dropped_later_counts_once() {
    // The response future.
    let layer = patient("outside");
    let handle = layer.handle();
    let mut svc = layer.layer(tower::service_fn(|_: Req| async {
        panic!("bug in the future");
        #[allow(unreachable_code)]
        Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let mut fut = Box::pin(svc.call(plain_request(None)));
    assert!(poll_catching(&mut fut));
    let c = handle.counts();
    assert_eq!(
        (c.calls, c.failures),
        (1, 1),
        "recorded while unwinding: {c:?}"
    );
    drop(fut);
    assert_eq!(handle.counts().calls, 1, "and only once");

    // A streaming gRPC body.
    let layer = patient("outside-body");
    let handle = layer.handle();
    let svc = layer.layer(tower::service_fn(|_: Req| async {
        let mut res = Response::new(PanickingBody);
        res.headers_mut().insert(
            "content-type",
            http::HeaderValue::from_static("application/grpc"),
        );
        Ok::<_, Infallible>(res)
    }));
    let res = svc.oneshot(plain_request(None)).await.unwrap();
    let mut body = res.into_body();
    let mut frame = body.frame();
    assert!(poll_catching(&mut frame));
    let c = handle.counts();
    assert_eq!((c.calls, c.failures), (1, 1), "{c:?}");
    drop(body);
    assert_eq!(handle.counts().calls, 1);
}

/// The marker decides, not the status: a timeout configured to answer 408
/// (a 4xx the default classifier would call a success) still counts when
/// the server's own budget ran out, and is still ignored when the
/// caller's did.
#[tokio::test(start_paused = true)]
async fn a_server_budget_timeout_counts_whatever_its_status() {
    let layer = breaker("408");
    let handle = layer.handle();
    let timeout = TimeoutLayer::builder()
        .timeout(Duration::from_millis(50))
        .budget_header(BUDGET)
        .status(StatusCode::REQUEST_TIMEOUT)
        .build()
        .unwrap();
    let svc = layer.layer(timeout.layer(slow_service()));
    for _ in 0..10 {
        let res = svc
            .clone()
            .oneshot(plain_request(Some("10")))
            .await
            .unwrap();
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    }
    assert_eq!(handle.counts().calls, 0);
    for _ in 0..3 {
        let res = svc.clone().oneshot(plain_request(None)).await.unwrap();
        assert_eq!(res.status(), StatusCode::REQUEST_TIMEOUT);
    }
    assert_eq!(handle.state(), CircuitState::Open);
}
