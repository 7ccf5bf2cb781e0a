//! The stack built from a config: the order of the layers, seen from the
//! outside. Timeouts and panics reach the breaker as failures; rate-limit
//! refusals never reach it; probes bypass every layer; draining refuses;
//! gRPC callers get gRPC answers.
#![cfg(feature = "config")]

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{Layer, Service, ServiceExt};
use tower_rampart::circuit_breaker::CircuitState;
use tower_rampart::config::RampartConfig;
use tower_rampart::health::{Check, Kind};

/// The base of every test: no signals, no delay.
const BASE: &str = r#"
    [shutdown]
    shutdown_delay = "0s"
    drain_timeout = "10s"
    signals = false
"#;

fn config(extra: &str) -> RampartConfig {
    RampartConfig::from_toml(&format!("{BASE}\n{extra}")).unwrap_or_else(|e| panic!("{e}"))
}

/// The application: `/ok`, `/slow` (10 s), `/panic`, `/fail` (500); counts
/// its calls.
fn app(
    calls: Arc<AtomicUsize>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send {
    tower::service_fn(move |req: Request<Full<Bytes>>| {
        calls.fetch_add(1, Ordering::SeqCst);
        async move {
            match req.uri().path() {
                "/slow" => tokio::time::sleep(Duration::from_secs(10)).await,
                "/panic" => panic!("handler bug"),
                "/fail" => {
                    let mut res = Response::new(Full::from("no"));
                    *res.status_mut() = StatusCode::INTERNAL_SERVER_ERROR;
                    return Ok(res);
                }
                _ => {}
            }
            Ok(Response::new(Full::from("ok")))
        }
    })
}

struct Reply {
    status: StatusCode,
    headers: http::HeaderMap,
    body: String,
}

async fn call<S, B>(svc: &S, path: &str, headers: &[(&str, &str)]) -> Reply
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>, Error = Infallible> + Clone,
    B: http_body::Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut req = Request::get(path);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let res = svc
        .clone()
        .oneshot(req.body(Full::default()).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let collected = body.collect().await.unwrap();
    let mut headers = parts.headers;
    if let Some(trailers) = collected.trailers() {
        headers.extend(trailers.clone());
    }
    Reply {
        status: parts.status,
        headers,
        body: String::from_utf8_lossy(&collected.to_bytes()).into_owned(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_timeout_reaches_the_breaker_as_a_failure() {
    let config = config(
        r#"
        [circuit_breaker]
        name = "api"
        consecutive_failures = 2
        [timeout]
        timeout = "100ms"
        "#,
    );
    let stack = config.stack().build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = stack.layer().layer(app(calls.clone()));

    for _ in 0..2 {
        let r = call(&svc, "/slow", &[]).await;
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(r.body.contains("timed-out"), "{}", r.body);
    }
    assert_eq!(stack.circuit_breaker().unwrap().state(), CircuitState::Open);
    // Now the breaker refuses before the timeout or the app see anything.
    let r = call(&svc, "/ok", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.headers.contains_key("retry-after"));
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn a_panic_answers_500_and_counts_as_a_failure() {
    let config = config("[circuit_breaker]\nconsecutive_failures = 1");
    let stack = config.stack().build().unwrap();
    let svc = stack.layer().layer(app(Arc::default()));
    let r = call(&svc, "/panic", &[]).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(stack.circuit_breaker().unwrap().counts().failures, 1);
    assert_eq!(stack.circuit_breaker().unwrap().state(), CircuitState::Open);
}

/// The stack's own panic catcher (it replaced tower-http's, which boxed
/// every body): an HTTP caller gets a 500 problem, a gRPC caller a gRPC
/// `INTERNAL`; both count as failures and the service keeps answering.
#[tokio::test]
async fn a_panic_answers_in_the_callers_protocol() {
    let config = config("[circuit_breaker]\nconsecutive_failures = 3");
    let stack = config.stack().build().unwrap();
    let svc = stack.layer().layer(app(Arc::default()));

    let r = call(&svc, "/panic", &[]).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(r.headers["content-type"], "application/problem+json");
    assert!(r.body.contains("panicked"), "{}", r.body);

    let r = call(&svc, "/panic", &[("content-type", "application/grpc")]).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["grpc-status"], "13");
    assert!(r.body.is_empty());

    assert_eq!(stack.circuit_breaker().unwrap().counts().failures, 2);
    assert_eq!(call(&svc, "/ok", &[]).await.status, StatusCode::OK);
}

#[tokio::test(start_paused = true)]
async fn rate_limit_refusals_never_reach_the_breaker() {
    let config = config(
        r#"
        [rate_limit]
        quotas = [{ rate = "1/s", burst = 1 }]
        [circuit_breaker]
        consecutive_failures = 1
        "#,
    );
    let stack = config.stack().build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = stack.layer().layer(app(calls.clone()));

    assert_eq!(call(&svc, "/ok", &[]).await.status, StatusCode::OK);
    for _ in 0..5 {
        let r = call(&svc, "/fail", &[]).await;
        assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS);
        assert!(r.headers.contains_key("retry-after"));
    }
    // One call recorded (the success); five refusals, none a failure.
    let counts = stack.circuit_breaker().unwrap().counts();
    assert_eq!((counts.calls, counts.failures), (1, 0));
    assert_eq!(
        stack.circuit_breaker().unwrap().state(),
        CircuitState::Closed
    );
    assert_eq!(calls.load(Ordering::SeqCst), 1);
}

#[tokio::test(start_paused = true)]
async fn probes_bypass_every_layer() {
    let config = config(
        r#"
        [rate_limit]
        quotas = [{ rate = "1/s", burst = 1 }]
        "#,
    );
    let stack = config.stack().build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = stack.layer().layer(app(calls.clone()));
    assert_eq!(call(&svc, "/ok", &[]).await.status, StatusCode::OK);
    assert_eq!(
        call(&svc, "/ok", &[]).await.status,
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(stack.circuit_breaker().unwrap().counts().calls, 1);
    stack.circuit_breaker().unwrap().force_open();
    for path in ["/livez", "/readyz", "/startupz", "/readyz", "/livez"] {
        let r = call(&svc, path, &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{path}: {}", r.body);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 1);
    // The forced-open breaker never saw the probes (none refused).
    assert_eq!(stack.circuit_breaker().unwrap().counts().not_permitted, 0);
    assert_eq!(stack.shutdown().in_flight(), 0);
}

#[tokio::test]
async fn the_breaker_is_a_readiness_check_when_asked() {
    for (mode, status, line) in [
        ("fail", StatusCode::SERVICE_UNAVAILABLE, "[-]api failed"),
        ("warn", StatusCode::OK, "[!]api warn"),
    ] {
        let config = config(&format!(
            "[health]\nbreaker_readiness = \"{mode}\"\n[circuit_breaker]\nname = \"api\""
        ));
        let stack = config.stack().build().unwrap();
        let svc = stack.layer().layer(app(Arc::default()));
        let r = call(&svc, "/readyz?verbose", &[]).await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        assert!(r.body.contains("[+]api ok"), "{}", r.body);
        stack.circuit_breaker().unwrap().force_open();
        let r = call(&svc, "/readyz?verbose", &[]).await;
        assert_eq!(r.status, status, "{mode}: {}", r.body);
        assert!(r.body.contains(line), "{mode}: {}", r.body);
        // Liveness never depends on the breaker.
        assert_eq!(call(&svc, "/livez", &[]).await.status, StatusCode::OK);
    }
    // Off (the default): not a check at all.
    let stack = config("").stack().build().unwrap();
    assert!(!stack.health().has_check("circuit_breaker"));
}

#[tokio::test]
async fn program_checks_join_the_registry() {
    let config = config("");
    let stack = config
        .stack()
        .check(Check::sync("db", Kind::Readiness, || Err::<(), _>("down")))
        .build()
        .unwrap();
    let svc = stack.layer().layer(app(Arc::default()));
    let r = call(&svc, "/readyz?verbose", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.contains("[-]db failed"), "{}", r.body);
    // A bad check name is reported with its key path.
    let err = config
        .stack()
        .check(Check::sync("bad name", Kind::Readiness, || {
            Ok::<(), String>(())
        }))
        .build()
        .unwrap_err();
    assert!(
        err.iter().next().unwrap().field().starts_with("health."),
        "{err}"
    );
}

#[tokio::test]
async fn draining_refuses_new_requests_and_readiness_fails() {
    let stack = config("").stack().build().unwrap();
    let svc = stack.layer().layer(app(Arc::default()));
    stack.shutdown().trigger();
    stack.shutdown().draining().await;
    let r = call(&svc, "/ok", &[]).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(
        r.body.contains("draining") || r.body.contains("shutting down"),
        "{}",
        r.body
    );
    assert_eq!(
        call(&svc, "/readyz", &[]).await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    assert_eq!(call(&svc, "/livez", &[]).await.status, StatusCode::OK);
    let report = stack.shutdown().done().await;
    assert_eq!(report.aborted, 0);
}

#[tokio::test(start_paused = true)]
async fn grpc_callers_get_grpc_answers() {
    let config = config(
        r#"
        [rate_limit]
        quotas = [{ rate = "1/s", burst = 1 }]
        [circuit_breaker]
        consecutive_failures = 1
        [timeout]
        timeout = "100ms"
        "#,
    );
    let stack = config.stack().build().unwrap();
    let svc = stack.layer().layer(app(Arc::default()));
    let grpc = [("content-type", "application/grpc")];

    // The timeout: DEADLINE_EXCEEDED (4), trailers-only.
    let r = call(&svc, "/slow", &grpc).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.headers["grpc-status"], "4");
    // The breaker, opened by that timeout: UNAVAILABLE (14).
    tokio::time::advance(Duration::from_secs(1)).await;
    let r = call(&svc, "/ok", &grpc).await;
    assert_eq!(r.headers["grpc-status"], "14");
    // The rate limit, once its one unit is spent: RESOURCE_EXHAUSTED (8).
    let r = call(&svc, "/ok", &grpc).await;
    assert_eq!(r.headers["grpc-status"], "8");
}

/// The drain layer reads the protocol once and pins it for the layers
/// below while it calls them: each request is answered in its own protocol,
/// whatever came before it on the same thread.
#[tokio::test(start_paused = true)]
async fn each_request_is_answered_in_its_own_protocol() {
    let config = config(
        r#"
        [timeout]
        timeout = "100ms"
        "#,
    );
    let stack = config.stack().build().unwrap();
    let svc = stack.layer().layer(app(Arc::default()));
    let grpc = [("content-type", "application/grpc")];
    let json = [("content-type", "application/json")];
    for _ in 0..3 {
        let r = call(&svc, "/slow", &grpc).await;
        assert_eq!(r.status, StatusCode::OK);
        assert_eq!(r.headers["grpc-status"], "4");
        let r = call(&svc, "/slow", &json).await;
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(r.headers.get("grpc-status").is_none());
        let r = call(&svc, "/slow", &[]).await;
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
    }
}

#[tokio::test]
async fn without_a_rate_limit_section_nothing_is_limited() {
    let stack = config("").stack().build().unwrap();
    let calls = Arc::new(AtomicUsize::new(0));
    let svc = stack.layer().layer(app(calls.clone()));
    for _ in 0..100 {
        assert_eq!(call(&svc, "/ok", &[]).await.status, StatusCode::OK);
    }
    assert_eq!(calls.load(Ordering::SeqCst), 100);
}

/// The stack's front drains as the drain layer does: a request in flight
/// when shutdown starts holds the drain until it is answered (with
/// `Connection: close` on HTTP/1.1), and a response body still open at
/// the drain deadline is cut off there and counted as aborted.
#[tokio::test(start_paused = true)]
async fn in_flight_requests_hold_the_drain_and_open_bodies_are_cut_at_its_deadline() {
    use tokio::time::Instant;

    use crate::common::Endless;

    let app = tower::service_fn(|req: Request<Full<Bytes>>| async move {
        if req.uri().path() == "/slow" {
            tokio::time::sleep(Duration::from_secs(3)).await;
        }
        Ok::<_, Infallible>(Response::new(Endless::new()))
    });
    let config = config(
        r#"
        [timeout]
        timeout = "5s"
        "#,
    );
    let stack = config.stack().build().unwrap();
    let svc = stack.layer().layer(app);
    let get = |path: &str| Request::get(path).body(Full::default()).unwrap();

    // A stream, open, and a slow request, in flight, when shutdown starts.
    let stream = svc.clone().oneshot(get("/stream")).await.unwrap();
    assert_eq!(stream.headers().get("connection"), None);
    let mut stream = stream.into_body();
    let first = stream.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "tick");
    let slow = tokio::spawn(svc.clone().oneshot(get("/slow")));
    tokio::task::yield_now().await;
    assert_eq!(stack.shutdown().in_flight(), 2);
    let start = Instant::now();
    stack.shutdown().trigger();

    // The slow one is answered, told to close its connection, and its
    // (ended) body lets go of the drain.
    let slow = slow.await.unwrap().unwrap();
    assert_eq!(slow.status(), StatusCode::OK);
    assert_eq!(slow.headers()["connection"], "close");
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    drop(slow);
    assert_eq!(stack.shutdown().in_flight(), 1);

    // The stream holds the drain to its deadline (10 s), then ends with an
    // error: the client sees a cut response, not a complete one.
    let err = stream.frame().await.unwrap().unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert!(err.to_string().contains("drain"), "{err}");
    drop(stream);
    let report = stack.shutdown().done().await;
    assert_eq!((report.finished, report.aborted), (1, 1), "{report:?}");
    assert_eq!(report.in_flight_at_drain, 2);
}
