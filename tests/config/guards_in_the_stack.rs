//! The circuit breaker, the timeout and the panic catcher as the stack runs
//! them: in one call and one future below its front, on every way a
//! request reaches the application (at once, after waiting for the rate
//! limit, after queueing for a concurrency slot). What each layer does on
//! its own must hold there: the handler sees its deadline while it is
//! called and while it runs, a deadline that passes answers 504 and counts
//! as the service's failure, a caller's spent budget is refused before the
//! handler and is not, a panic in `call` or in the handler answers 500 and
//! counts, and a gRPC failure sent in the trailers counts once the body
//! ends.
#![cfg(feature = "config")]

use std::convert::Infallible;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, Service, ServiceExt};
use tower_rampart::circuit_breaker::CircuitState;
use tower_rampart::config::{RampartService, Stack};
use tower_rampart::timeout::{Deadline, DeadlineSource};

/// `/hold` takes two seconds, `/slow` ten; `/in-call` panics in `call`,
/// `/in-future` in its future; anything else answers at once. Counts its
/// calls.
#[derive(Clone, Default)]
struct App {
    calls: Arc<AtomicUsize>,
}

impl Service<Request<Full<Bytes>>> for App {
    type Response = Response<Full<Bytes>>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Full<Bytes>>) -> Self::Future {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let path = req.uri().path().to_owned();
        if path == "/in-call" {
            panic!("bug in call");
        }
        Box::pin(async move {
            match path.as_str() {
                "/hold" => tokio::time::sleep(Duration::from_secs(2)).await,
                "/slow" => tokio::time::sleep(Duration::from_secs(10)).await,
                "/in-future" => panic!("bug in the handler"),
                _ => {}
            }
            Ok(Response::new(Full::from(path)))
        })
    }
}

fn get(path: &str) -> Request<Full<Bytes>> {
    Request::get(path).body(Full::default()).unwrap()
}

/// The stack `config` builds, around a fresh [`App`]: the stack (for its
/// handles), the app (for its calls) and the service.
fn around_app(config: &tower_rampart::config::RampartConfig) -> (Stack, App, RampartService<App>) {
    let stack = config.stack().build().unwrap();
    let app = App::default();
    let svc = stack.layer().layer(app.clone());
    (stack, app, svc)
}

/// A request that waited for the rate limit is called under its own
/// deadline, counted from when it is called: it times out five seconds
/// after its wait ended, and the breaker counts that as a failure.
#[tokio::test(start_paused = true)]
async fn a_request_that_waited_for_the_rate_limit_is_timed_and_judged() {
    let config = crate::stack_config(
        r#"
        [rate_limit]
        wait = "2s"
        quotas = [{ rate = "1/s", burst = 1 }]
        [circuit_breaker]
        consecutive_failures = 1
        "#,
    );
    let (stack, app, svc) = around_app(&config);
    let start = Instant::now();

    let first = svc.clone().oneshot(get("/ok")).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    // No room for a second: it waits one second, then runs into the
    // timeout five seconds later.
    let second = svc.clone().oneshot(get("/slow")).await.unwrap();
    assert_eq!(second.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(start.elapsed(), Duration::from_secs(6));
    let breaker = stack.circuit_breaker().unwrap();
    assert_eq!(breaker.counts().failures, 1);
    assert_eq!(breaker.state(), CircuitState::Open);
    assert_eq!(app.calls.load(Ordering::SeqCst), 2);
    // Their bodies are counted in flight until they end (here: dropped).
    drop((first, second));
    assert_eq!(stack.shutdown().in_flight(), 0);
}

/// A request that queued for a concurrency slot is called under its own
/// deadline too, and judged by the breaker; then the open breaker refuses
/// before the application is called.
#[tokio::test(start_paused = true)]
async fn a_request_that_queued_for_a_slot_is_timed_and_judged() {
    let config = crate::stack_config(
        r#"
        [concurrency]
        limit = { algorithm = "fixed", limit = 1 }
        queue = { max_len = 4, max_wait = "5s" }
        [circuit_breaker]
        consecutive_failures = 1
        "#,
    );
    let (stack, app, svc) = around_app(&config);
    let start = Instant::now();

    let holding = tokio::spawn(svc.clone().oneshot(get("/hold")));
    tokio::task::yield_now().await;
    let queued = svc.clone().oneshot(get("/slow")).await.unwrap();
    assert_eq!(queued.status(), StatusCode::GATEWAY_TIMEOUT);
    // Two seconds in the queue, then five of its own.
    assert_eq!(start.elapsed(), Duration::from_secs(7));
    assert_eq!(holding.await.unwrap().unwrap().status(), StatusCode::OK);
    let breaker = stack.circuit_breaker().unwrap();
    assert_eq!(breaker.counts().failures, 1);

    let refused = svc.clone().oneshot(get("/ok")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(refused.headers().contains_key("retry-after"));
    assert_eq!(app.calls.load(Ordering::SeqCst), 2);
    drop((queued, refused));
    assert_eq!(stack.shutdown().in_flight(), 0);
}

/// The deadlines a handler saw: in `call` (through `Deadline::current` and
/// the request's extensions) and while its future ran.
#[derive(Clone, Default)]
struct Seen(Arc<Mutex<Log>>);

/// Where the handler looked, and the deadline it saw there.
type Log = Vec<(&'static str, Option<Deadline>)>;

impl Seen {
    fn take(&self) -> Log {
        std::mem::take(&mut self.0.lock().unwrap())
    }
}

/// The handler sees the effective deadline (here the caller's budget less
/// nothing: `budget_header`) when it is called, in its request's
/// extensions (`deadline_extension`) and while its future runs; and no
/// deadline is left behind on the thread once the stack has answered.
#[tokio::test(start_paused = true)]
async fn the_handler_sees_its_deadline_when_called_and_while_it_runs() {
    let config = crate::base_config(
        r#"
        [timeout]
        timeout = "5s"
        budget_header = "x-request-timeout-ms"
        deadline_extension = true
        "#,
    );
    let stack = config.stack().build().unwrap();
    let seen = Seen::default();
    let app = {
        let seen = seen.clone();
        tower::service_fn(move |req: Request<Full<Bytes>>| {
            let mut log = seen.0.lock().unwrap();
            log.push(("call", Deadline::current()));
            log.push(("extension", req.extensions().get::<Deadline>().copied()));
            drop(log);
            let seen = seen.clone();
            async move {
                tokio::time::sleep(Duration::from_millis(100)).await;
                seen.0.lock().unwrap().push(("poll", Deadline::current()));
                Ok::<_, Infallible>(Response::new(Full::<Bytes>::default()))
            }
        })
    };
    let svc = stack.layer().layer(app);

    let check = |start: Instant, budget: Duration, source: DeadlineSource| {
        let log = seen.take();
        assert_eq!(log.len(), 3, "{log:?}");
        for (at, deadline) in log {
            let deadline = deadline.unwrap_or_else(|| panic!("no deadline at {at}"));
            assert_eq!(deadline.instant(), start + budget, "{at}");
            assert_eq!(deadline.source(), source, "{at}");
        }
    };

    let start = Instant::now();
    let req = Request::get("/x")
        .header("x-request-timeout-ms", "300")
        .body(Full::default())
        .unwrap();
    let res = svc.clone().oneshot(req).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(Deadline::current(), None, "left behind on the thread");
    check(start, Duration::from_millis(300), DeadlineSource::Caller);

    // Without a budget (or with a malformed one): the server's own five
    // seconds.
    let start = Instant::now();
    let req = Request::get("/x")
        .header("x-request-timeout-ms", "soon")
        .body(Full::default())
        .unwrap();
    svc.clone().oneshot(req).await.unwrap();
    assert_eq!(Deadline::current(), None, "left behind on the thread");
    check(start, Duration::from_secs(5), DeadlineSource::Server);
}

/// A 5 s timeout that honours the client's `x-request-timeout-ms`, and a
/// breaker that opens after `consecutive_failures` failures in a row.
fn budget_config(consecutive_failures: u32) -> tower_rampart::config::RampartConfig {
    crate::base_config(&format!(
        r#"
        [timeout]
        timeout = "5s"
        budget_header = "x-request-timeout-ms"
        [circuit_breaker]
        consecutive_failures = {consecutive_failures}
        "#
    ))
}

/// A caller whose budget is already spent is refused before the handler,
/// and the refusal is not the service's failure: a client sending
/// `x-request-timeout-ms: 0` cannot open the breaker for everyone.
#[tokio::test(start_paused = true)]
async fn a_spent_caller_budget_is_refused_before_the_handler_and_is_no_failure() {
    let config = budget_config(1);
    let (stack, app, svc) = around_app(&config);
    for _ in 0..20 {
        let req = Request::get("/ok")
            .header("x-request-timeout-ms", "0")
            .body(Full::default())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
        let body = res.into_body().collect().await.unwrap().to_bytes();
        let body = String::from_utf8_lossy(&body);
        assert!(body.contains("the caller's budget is zero"), "{body}");
    }
    assert_eq!(app.calls.load(Ordering::SeqCst), 0);
    let breaker = stack.circuit_breaker().unwrap();
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(breaker.counts().failures, 0);
    let res = svc.clone().oneshot(get("/ok")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
}

/// A panic in the application's `call` or in its future answers 500 (gRPC:
/// `INTERNAL`) and counts as one failure each; the stack keeps serving.
#[tokio::test]
async fn a_panic_in_call_or_in_the_future_answers_500_and_counts() {
    let config = crate::stack_config("[circuit_breaker]\nconsecutive_failures = 5");
    let stack = config.stack().build().unwrap();
    let svc = stack.layer().layer(App::default());
    let breaker = stack.circuit_breaker().unwrap();
    for (path, failures) in [("/in-call", 1), ("/in-future", 3)] {
        let res = svc.clone().oneshot(get(path)).await.unwrap();
        assert_eq!(res.status(), StatusCode::INTERNAL_SERVER_ERROR, "{path}");
        assert_eq!(
            res.headers()["content-type"],
            "application/problem+json",
            "{path}"
        );
        assert_eq!(breaker.counts().failures, failures, "{path}");
        let req = Request::post(path)
            .header("content-type", "application/grpc")
            .body(Full::default())
            .unwrap();
        let res = svc.clone().oneshot(req).await.unwrap();
        assert_eq!(res.status(), StatusCode::OK, "{path}");
        assert_eq!(res.headers()["grpc-status"], "13", "{path}");
    }
    assert_eq!(breaker.counts().failures, 4);
    let res = svc.clone().oneshot(get("/ok")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    drop(res);
    assert_eq!(stack.shutdown().in_flight(), 0);
}

/// A gRPC failure sent in the trailers (not trailers-only) is judged once
/// the body has been read: the breaker waits for it, then counts one
/// failure; a success in the trailers counts as one.
#[tokio::test(start_paused = true)]
async fn a_grpc_status_in_the_trailers_is_judged_once_the_body_ends() {
    let config = crate::stack_config("[circuit_breaker]\nconsecutive_failures = 5");
    let stack = config.stack().build().unwrap();
    let app = tower::service_fn(|req: Request<Full<Bytes>>| async move {
        let status = req.uri().path().trim_start_matches('/').to_owned();
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", HeaderValue::try_from(status).unwrap());
        let mut res = Response::new(crate::common::GrpcUnary {
            message: Some(Bytes::from_static(&[0, 0, 0, 0, 0])),
            trailers: Some(trailers),
        });
        res.headers_mut()
            .insert("content-type", HeaderValue::from_static("application/grpc"));
        Ok::<_, Infallible>(res)
    });
    let svc = stack.layer().layer(app);
    let breaker = stack.circuit_breaker().unwrap();
    let grpc = |path: &str| {
        Request::post(path)
            .header("content-type", "application/grpc")
            .body(Full::default())
            .unwrap()
    };

    let res = svc.clone().oneshot(grpc("/14")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        breaker.counts().calls,
        0,
        "the verdict waits for the trailers"
    );
    let trailers = res.into_body().collect().await.unwrap();
    assert_eq!(trailers.trailers().unwrap()["grpc-status"], "14");
    let counts = breaker.counts();
    assert_eq!((counts.calls, counts.failures), (1, 1), "{counts:?}");

    let res = svc.clone().oneshot(grpc("/0")).await.unwrap();
    res.into_body().collect().await.unwrap();
    let counts = breaker.counts();
    assert_eq!((counts.calls, counts.failures), (2, 1), "{counts:?}");
    assert_eq!(stack.shutdown().in_flight(), 0);
}

/// An attacker over a real server (axum, HTTP/1.1, the stack applied with
/// `Router::layer` as the production example does): requests whose budget
/// is spent on arrival, from one connection or many, are refused before
/// the handler and cannot open the breaker every client shares; a panic
/// in one handler answers 500 and the next request on the same
/// connection is served.
#[cfg(feature = "axum")]
#[tokio::test]
async fn a_hostile_budget_cannot_open_the_breaker_over_a_real_server() {
    use axum::routing::get as route;

    let config = budget_config(3);
    let stack = config.stack().build().unwrap();
    let handled = Arc::new(AtomicUsize::new(0));
    let app = {
        let handled = Arc::clone(&handled);
        axum::Router::new()
            .route(
                "/api",
                route(move || {
                    handled.fetch_add(1, Ordering::SeqCst);
                    async { "ok" }
                }),
            )
            .route(
                "/boom",
                route(|| async {
                    if true {
                        panic!("handler bug");
                    }
                    "unreachable"
                }),
            )
            .layer(stack.layer())
    };
    let addr = crate::common::serve(app).await;
    let client = crate::common::client();
    let spent = || {
        Request::get(format!("http://{addr}/api"))
            .header("x-request-timeout-ms", "0")
            .body(Full::default())
            .unwrap()
    };
    for _ in 0..50 {
        let r = crate::common::send(&client, spent()).await;
        assert_eq!(r.status, StatusCode::GATEWAY_TIMEOUT);
        assert!(r.body.contains("the caller's budget is zero"), "{}", r.body);
    }
    // The same from 50 connections at once.
    let mut many = tokio::task::JoinSet::new();
    for _ in 0..50 {
        let req = spent();
        many.spawn(async move { crate::common::send(&crate::common::client(), req).await });
    }
    while let Some(r) = many.join_next().await {
        assert_eq!(r.unwrap().status, StatusCode::GATEWAY_TIMEOUT);
    }
    assert_eq!(
        handled.load(Ordering::SeqCst),
        0,
        "refused before the handler"
    );
    let breaker = stack.circuit_breaker().unwrap();
    assert_eq!(breaker.state(), CircuitState::Closed);
    assert_eq!(breaker.counts().failures, 0);

    let r = crate::common::get(addr, "/api").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    // On the connection the attacker used.
    let plain = |path: &str| {
        Request::get(format!("http://{addr}{path}"))
            .body(Full::default())
            .unwrap()
    };
    let r = crate::common::send(&client, plain("/boom")).await;
    assert_eq!(r.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(breaker.counts().failures, 1);
    let r = crate::common::send(&client, plain("/api")).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
}
