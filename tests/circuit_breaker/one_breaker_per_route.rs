//! One circuit breaker per route (`routes.per_route_breaker`), over real
//! servers: an axum router driven by HTTP/1.1 and h2c clients, and a tonic
//! server driven by a tonic client.
//!
//! A failing route opens only its own breaker; made-up paths and unknown
//! gRPC methods share one `unmatched` breaker, so a hostile client can
//! neither create breakers without bound nor evict a real route's breaker.
//! (Envoy's outlier detection and Resilience4j's per-backend breakers keep
//! state per upstream the operator declared, never per client input.)
#![cfg(all(
    feature = "config",
    feature = "axum",
    feature = "tonic",
    feature = "serve"
))]

use crate::common;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Path;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;
use tonic::server::NamedService;
use tower_rampart::circuit_breaker::CircuitState;
use tower_rampart::config::{RampartConfig, RouteKey};

fn config(extra: &str) -> RampartConfig {
    config_keys(8, extra)
}

/// [`config`] with room for `max_keys` routes' breakers.
fn config_keys(max_keys: usize, extra: &str) -> RampartConfig {
    RampartConfig::from_toml(&format!(
        r#"
        [shutdown]
        shutdown_delay = "0s"
        drain_timeout = "10s"
        signals = false
        [health]
        breaker_readiness = "warn"
        [circuit_breaker]
        name = "api"
        consecutive_failures = 3
        open_duration = "1h"
        max_keys = {max_keys}
        [routes]
        per_route_breaker = true
        {extra}
        "#
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The production example's routes; anything else is a 500 (so made-up
/// paths are failures the `unmatched` breaker counts).
fn app() -> Router {
    Router::new()
        .route("/api/ok", get(|| async { "ok" }))
        .route(
            "/api/fail",
            get(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "failed on purpose") }),
        )
        .route(
            "/api/sleep/{ms}",
            get(|Path(ms): Path<u64>| async move {
                tokio::time::sleep(Duration::from_millis(ms.min(100))).await;
                format!("slept {ms}ms")
            }),
        )
        .fallback(|| async { (StatusCode::INTERNAL_SERVER_ERROR, "no such route") })
}

/// Three failures in a row open `/api/fail`'s circuit: it then refuses,
/// with `Retry-After`, over HTTP/1.1 and h2c.
async fn open_api_fail(addr: SocketAddr) {
    for _ in 0..3 {
        let r = common::get(addr, "/api/fail").await;
        assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    }
    let r = common::get(addr, "/api/fail").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    assert!(!r.header("retry-after").is_empty());
    let r = h2c_get(addr, "/api/fail").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
}

/// A made-up path's answer: the fallback's 500 (a failure the `unmatched`
/// breaker counts), or its refusal once open.
fn refused_by_unmatched(status: StatusCode, path: &str) -> bool {
    match status {
        StatusCode::INTERNAL_SERVER_ERROR => false,
        StatusCode::SERVICE_UNAVAILABLE => true,
        other => panic!("{path}: {other}"),
    }
}

async fn h2c_get(addr: SocketAddr, path: &str) -> common::Reply {
    let client = Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http();
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Full::new(Bytes::new()))
        .unwrap();
    common::send(&client, req).await
}

#[tokio::test]
async fn a_failing_route_opens_only_its_own_breaker() {
    let stack = config("").stack().build().unwrap();
    assert!(stack.circuit_breaker().is_none());
    let routes = stack.route_breakers().unwrap().clone();
    let addr = common::serve(app().layer(stack.layer())).await;

    assert_eq!(common::get(addr, "/api/ok").await.status, StatusCode::OK);
    // Three failures in a row open /api/fail's circuit...
    open_api_fail(addr).await;
    assert_eq!(routes.get("/api/fail").unwrap().state(), CircuitState::Open);

    // ...and only that one: the other routes answer, over both protocols.
    for _ in 0..5 {
        assert_eq!(common::get(addr, "/api/ok").await.status, StatusCode::OK);
        assert_eq!(h2c_get(addr, "/api/ok").await.status, StatusCode::OK);
        let r = common::get(addr, "/api/sleep/1").await;
        assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "slept 1ms"));
        assert_eq!(h2c_get(addr, "/api/sleep/2").await.status, StatusCode::OK);
    }
    // The key is the route template, not the path.
    assert_eq!(routes.routes(), ["/api/fail", "/api/ok", "/api/sleep/{ms}"]);
    assert_eq!(routes.open_routes(), ["/api/fail"]);
    assert_eq!(routes.get("/api/ok").unwrap().counts().calls, 11);

    // The operator sees which route is open; the pod stays ready ("warn").
    let r = common::get(addr, "/readyz?verbose").await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert!(r.body.contains("[!]api warn"), "{}", r.body);
    let r = common::get(addr, "/readyz/api").await;
    assert!(r.body.contains("circuit open for /api/fail"), "{}", r.body);
}

#[tokio::test]
async fn made_up_paths_share_one_bounded_breaker() {
    let stack = config("").stack().build().unwrap();
    let routes = stack.route_breakers().unwrap().clone();
    let addr = common::serve(app().layer(stack.layer())).await;

    // Real routes first, /api/fail opened.
    for _ in 0..4 {
        common::get(addr, "/api/fail").await;
    }
    assert_eq!(common::get(addr, "/api/ok").await.status, StatusCode::OK);
    assert_eq!(routes.len(), 2);

    // 1,000 distinct made-up paths, each a failure (the fallback's 500),
    // over one keep-alive connection.
    let client = common::client();
    let mut refused = 0;
    for i in 0..1000 {
        let req = Request::get(format!("http://{addr}/x/{i}?q={i}"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let r = common::send(&client, req).await;
        refused += usize::from(refused_by_unmatched(r.status, &format!("/x/{i}")));
    }
    // They made one breaker, which opened; max_keys (8) was never reached,
    // so no real route was evicted.
    assert_eq!(refused, 997);
    assert_eq!(routes.len(), 3);
    assert_eq!(routes.open_routes(), ["/api/fail", RouteKey::UNMATCHED]);
    assert_eq!(
        routes.get(RouteKey::UNMATCHED).unwrap().state(),
        CircuitState::Open
    );
    // The real routes are as they were.
    assert_eq!(common::get(addr, "/api/ok").await.status, StatusCode::OK);
    assert_eq!(
        common::get(addr, "/api/fail").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(
        common::get(addr, "/api/sleep/1").await.status,
        StatusCode::OK
    );
    // The platform's endpoints are in no breaker at all.
    assert_eq!(common::get(addr, "/livez").await.status, StatusCode::OK);
    assert_eq!(routes.len(), 4);
}

// ------------------------------------------- declared routes (`paths`) --

#[tokio::test]
async fn declared_paths_keep_a_breaker_per_route_around_the_whole_router() {
    let stack = config(r#"paths = ["/api/ok", "/api/fail", "/api/sleep/{ms}"]"#)
        .stack()
        .build()
        .unwrap();
    let routes = stack.route_breakers().unwrap().clone();
    let addr = common::serve_around(&stack, app()).await;

    open_api_fail(addr).await;
    // Only /api/fail's: the other routes answer, over both protocols, and
    // every /api/sleep/N is the one route `/api/sleep/{ms}`.
    for ms in 0..4 {
        assert_eq!(common::get(addr, "/api/ok").await.status, StatusCode::OK);
        assert_eq!(h2c_get(addr, "/api/ok").await.status, StatusCode::OK);
        let r = common::get(addr, &format!("/api/sleep/{ms}")).await;
        assert_eq!(r.body, format!("slept {ms}ms"));
    }
    assert_eq!(routes.routes(), ["/api/fail", "/api/ok", "/api/sleep/{ms}"]);
    assert_eq!(routes.open_routes(), ["/api/fail"]);
    assert_eq!(routes.get("/api/ok").unwrap().counts().calls, 8);
    assert_eq!(routes.get("/api/sleep/{ms}").unwrap().counts().calls, 4);

    // Made-up paths, even under a declared prefix, share `unmatched`:
    // they open it, and no declared route notices.
    let mut refused = 0;
    for i in 0..50 {
        let path = if i % 2 == 0 {
            format!("/x/{i}")
        } else {
            format!("/api/sleep/{i}/more")
        };
        let status = common::get(addr, &path).await.status;
        refused += usize::from(refused_by_unmatched(status, &path));
    }
    assert_eq!(refused, 47);
    assert_eq!(routes.len(), 4);
    assert_eq!(routes.open_routes(), ["/api/fail", RouteKey::UNMATCHED]);
    assert_eq!(common::get(addr, "/api/ok").await.status, StatusCode::OK);
    assert_eq!(
        common::get(addr, "/api/sleep/5").await.status,
        StatusCode::OK
    );
}

/// A declared route's breaker is made with the stack and kept: with room
/// for one other route only (`max_keys = 1`), two undeclared routes evict
/// each other on every request, and the declared route's open circuit
/// stays open (an operator's gauges and `/readyz` name it all along).
#[tokio::test]
async fn a_declared_routes_breaker_is_never_evicted() {
    let stack = config_keys(1, r#"paths = ["/api/fail"]"#)
        .stack()
        .build()
        .unwrap();
    let routes = stack.route_breakers().unwrap().clone();
    // Listed before any request.
    assert_eq!(routes.routes(), ["/api/fail"]);
    // Inside the router: axum's matched path names the undeclared routes.
    let addr = common::serve(app().layer(stack.layer())).await;

    open_api_fail(addr).await;
    for ms in 0..10 {
        assert_eq!(common::get(addr, "/api/ok").await.status, StatusCode::OK);
        let r = common::get(addr, &format!("/api/sleep/{ms}")).await;
        assert_eq!(r.status, StatusCode::OK);
    }
    // One other route kept at a time; /api/fail still open.
    assert_eq!(routes.len(), 2);
    assert_eq!(routes.routes(), ["/api/fail", "/api/sleep/{ms}"]);
    assert_eq!(routes.get("/api/fail").unwrap().state(), CircuitState::Open);
    let r = common::get(addr, "/api/fail").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE, "{}", r.body);
    let r = common::get(addr, "/readyz/api").await;
    assert!(r.body.contains("circuit open for /api/fail"), "{}", r.body);
}

/// The stack picks the route axum's router picks: every request's
/// breaker is the one named by the matched path axum hands the handler
/// (the stack wraps the router, so it cannot read it), on templates that
/// overlap (a literal, a parameter and a catch-all at one segment, a
/// trailing slash, the root).
#[tokio::test]
async fn declared_paths_are_matched_as_axum_matches_them() {
    use axum::extract::MatchedPath;
    let templates = [
        "/",
        "/a",
        "/a/",
        "/users/new",
        "/users/{id}",
        "/users/{id}/posts",
        "/users/{id}/{*rest}",
        "/x/{b}",
        "/{a}/b",
        "/files/{*path}",
    ];
    // Declared most general first: the stack orders them itself.
    let declared: Vec<String> = templates.iter().rev().map(|t| format!("{t:?}")).collect();
    let declared = declared.join(", ");
    let stack = config(&format!("paths = [{declared}]"))
        .stack()
        .build()
        .unwrap();
    let routes = stack.route_breakers().unwrap().clone();
    let app = templates
        .iter()
        .fold(Router::new(), |r, t| {
            r.route(
                t,
                get(|m: MatchedPath| async move { m.as_str().to_owned() }),
            )
        })
        .fallback(|| async { (StatusCode::NOT_FOUND, "none") });
    let addr = common::serve_around(&stack, app).await;

    let calls = |route: &str| routes.get(route).map_or(0, |b| b.counts().calls);
    let paths = [
        "/",
        "/a",
        "/a/",
        "/users/new",
        "/users/7",
        "/users/",
        "/users/7/posts",
        "/users/7/likes",
        "/users/7/likes/9",
        "/users/new/posts",
        "/x/b",
        "/y/b",
        "/x/y",
        "/files/a/b/c",
        "/files/",
        "/files",
        "/nope",
        "/a/b",
        "/a/c",
    ];
    let mut seen = 0;
    for path in paths {
        let r = common::get(addr, path).await;
        let route = if r.status == StatusCode::NOT_FOUND {
            RouteKey::UNMATCHED.to_owned()
        } else {
            assert_eq!(r.status, StatusCode::OK, "{path}");
            seen += 1;
            r.body
        };
        let before = calls(&route);
        let again = common::get(addr, path).await;
        assert_eq!(again.status, r.status, "{path}");
        assert_eq!(
            calls(&route),
            before + 1,
            "{path}: axum routed it to {route}"
        );
    }
    // Not a list of 404s: most paths matched a template.
    assert_eq!(seen, 14);
}

#[test]
fn bad_route_templates_name_their_key() {
    let err = RampartConfig::from_toml(
        r#"
        [routes]
        per_route_breaker = true
        paths = ["/api/ok", "api/x", "/a/{id}/{*rest}", "/a/:id", "/a/{name}/{*all}", "/api/ok"]
        "#,
    )
    .unwrap_err();
    let fields: Vec<&str> = err.iter().map(|e| e.field()).collect();
    assert_eq!(
        fields,
        [
            "routes.paths[1]",
            "routes.paths[3]",
            "routes.paths[4]",
            "routes.paths[5]"
        ],
        "{err}"
    );
    let text = err.to_string();
    assert!(text.contains("write `{id}`"), "{text}");
    assert!(text.contains("only the parameters' names differ"), "{text}");
}

// ---------------------------------------------------------------- tonic --

/// `demo.Greeter`: `SayHello` answers OK; every other method answers
/// INTERNAL, a failure the breakers count (so made-up methods can open the
/// `unmatched` breaker).
#[derive(Clone)]
struct Greeter;

impl NamedService for Greeter {
    const NAME: &'static str = "demo.Greeter";
}

type BoxFuture<T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for Greeter {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        if req.uri().path() == "/demo.Greeter/SayHello" {
            Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(tonic_prost::ProstCodec::<(), ()>::default());
                Ok(grpc.unary(Hello, req).await)
            })
        } else {
            Box::pin(async { Ok(tonic::Status::internal("failed").into_http()) })
        }
    }
}

struct Hello;

impl tonic::server::UnaryService<()> for Hello {
    type Response = ();
    type Future = std::future::Ready<Result<tonic::Response<()>, tonic::Status>>;

    fn call(&mut self, _: tonic::Request<()>) -> Self::Future {
        std::future::ready(Ok(tonic::Response::new(())))
    }
}

async fn unary(channel: &tonic::transport::Channel, method: &str) -> tonic::Code {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    let path = http::uri::PathAndQuery::try_from(method).unwrap();
    // An empty message in, an empty message out (`()` as prost's unit).
    let res: Result<tonic::Response<()>, tonic::Status> = grpc
        .unary(
            tonic::Request::new(()),
            path,
            tonic_prost::ProstCodec::<(), ()>::default(),
        )
        .await;
    match res {
        Ok(_) => tonic::Code::Ok,
        Err(s) => s.code(),
    }
}

#[tokio::test]
async fn grpc_methods_have_their_own_breaker_only_when_declared() {
    let stack = config(r#"grpc_methods = ["/demo.Greeter/SayHello", "/demo.Greeter/Fail"]"#)
        .stack()
        .build()
        .unwrap();
    let routes = stack.route_breakers().unwrap().clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tonic::transport::Server::builder()
        .layer(stack.layer())
        .add_service(Greeter)
        .serve_with_incoming(incoming);
    tokio::spawn(async move { server.await.unwrap() });
    let channel = common::grpc_channel(addr).await;

    assert_eq!(
        unary(&channel, "/demo.Greeter/SayHello").await,
        tonic::Code::Ok
    );
    for _ in 0..3 {
        assert_eq!(
            unary(&channel, "/demo.Greeter/Fail").await,
            tonic::Code::Internal
        );
    }
    assert_eq!(
        unary(&channel, "/demo.Greeter/Fail").await,
        tonic::Code::Unavailable
    );
    assert_eq!(
        unary(&channel, "/demo.Greeter/SayHello").await,
        tonic::Code::Ok
    );

    // 1,000 made-up methods: one shared breaker, which they open; the
    // declared methods keep theirs.
    let mut unavailable = 0;
    for i in 0..1000 {
        match unary(&channel, &format!("/demo.Greeter/M{i}")).await {
            tonic::Code::Internal => {}
            tonic::Code::Unavailable => unavailable += 1,
            other => panic!("M{i}: {other:?}"),
        }
    }
    assert_eq!(unavailable, 997);
    assert_eq!(
        routes.routes(),
        [
            "/demo.Greeter/Fail",
            "/demo.Greeter/SayHello",
            RouteKey::UNMATCHED
        ]
    );
    assert_eq!(
        unary(&channel, "/demo.Greeter/SayHello").await,
        tonic::Code::Ok
    );
    assert_eq!(
        routes.get("/demo.Greeter/SayHello").unwrap().state(),
        CircuitState::Closed
    );
}

#[test]
fn bad_route_settings_name_their_key() {
    let err = RampartConfig::from_toml(
        r#"
        [routes]
        grpc_methods = ["/demo.Greeter/SayHello", "demo.Greeter/X", "/a/b/c", "/demo.Greeter/SayHello"]
        [platform]
        paths = ["/metrics", "metrics", "/readyz", "/metrics", "/a?b"]
        "#,
    )
    .unwrap_err();
    let fields: Vec<&str> = err.iter().map(|e| e.field()).collect();
    assert_eq!(
        fields,
        [
            "platform.paths[1]",
            "platform.paths[2]",
            "platform.paths[3]",
            "platform.paths[4]",
            "routes.grpc_methods[1]",
            "routes.grpc_methods[2]",
            "routes.grpc_methods[3]",
        ],
        "{err}"
    );
    assert!(err.to_string().contains("probes.readiness_path"), "{err}");
}
