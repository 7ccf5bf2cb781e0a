//! The concurrency limit as the stack runs it: its slots are taken by the
//! stack's front, after the drain and the rate limit, before the layers
//! below. What the layer does on its own must hold there too: a full limit
//! queues, a queued request gets the slot its predecessor frees, a full
//! queue refuses at once, and queued requests are in flight for the drain.
#![cfg(feature = "config")]

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};

/// `/hold` takes two seconds, `/long` four; anything else answers at once,
/// with its path.
fn app() -> impl tower::Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future: Send,
> + Clone
+ Send {
    tower::service_fn(|req: Request<Full<Bytes>>| async move {
        match req.uri().path() {
            "/hold" => tokio::time::sleep(Duration::from_secs(2)).await,
            "/long" => tokio::time::sleep(Duration::from_secs(4)).await,
            _ => {}
        }
        Ok::<_, Infallible>(Response::new(Full::from(req.uri().path().to_owned())))
    })
}

#[tokio::test(start_paused = true)]
async fn a_full_limit_queues_in_turn_and_a_full_queue_refuses_at_once() {
    let config = crate::stack_config(
        r#"
        [rate_limit]
        admitted_headers = true
        quotas = [{ rate = "100/s", burst = 100 }]
        [concurrency]
        limit = { algorithm = "fixed", limit = 1 }
        queue = { max_len = 1, max_wait = "3s" }
        "#,
    );
    let stack = config.stack().build().unwrap();
    let svc = stack.layer().layer(app());
    let get = |path: &str| Request::get(path).body(Full::default()).unwrap();
    let start = Instant::now();

    // The one slot is taken; the next request waits in the queue (counted
    // in flight by the drain meanwhile); the queue (one place) is full, so
    // a third one is refused at once.
    let holding = tokio::spawn(svc.clone().oneshot(get("/hold")));
    tokio::task::yield_now().await;
    let queued = tokio::spawn(svc.clone().oneshot(get("/queued")));
    tokio::task::yield_now().await;
    assert_eq!(stack.shutdown().in_flight(), 2);
    let refused = svc.clone().oneshot(get("/refused")).await.unwrap();
    assert_eq!(refused.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.headers()["retry-after"], "1");
    // Admitted by the rate limit before the queue refused it: its fields.
    assert!(refused.headers().contains_key("ratelimit"));
    let body = refused.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("overloaded"),
        "{body:?}"
    );
    assert_eq!(start.elapsed(), Duration::ZERO);

    // The slot goes to the queued request when the first one ends.
    let held = holding.await.unwrap().unwrap();
    assert_eq!(held.status(), StatusCode::OK);
    drop(held);
    let queued = queued.await.unwrap().unwrap();
    assert_eq!(queued.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    assert!(queued.headers().contains_key("ratelimit"));
    let body = queued.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "/queued");
    assert_eq!(stack.shutdown().in_flight(), 0);

    // A request that cannot get a slot within the queue's wait (3 s) is
    // refused when the wait is over.
    let holding = tokio::spawn(svc.clone().oneshot(get("/long")));
    tokio::task::yield_now().await;
    let start = Instant::now();
    let late = svc.clone().oneshot(get("/late")).await.unwrap();
    assert_eq!(late.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(start.elapsed(), Duration::from_secs(3));
    assert_eq!(holding.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(4));
}

/// A request that waits for the rate limit then finds the concurrency limit
/// full waits in its queue too: both in the front, in that order.
#[tokio::test(start_paused = true)]
async fn a_request_waits_for_the_rate_limit_then_for_a_slot() {
    let config = crate::stack_config(
        r#"
        [rate_limit]
        wait = "2s"
        quotas = [{ rate = "1/s", burst = 1 }]
        [concurrency]
        limit = { algorithm = "fixed", limit = 1 }
        queue = { max_len = 4, max_wait = "5s" }
        "#,
    );
    let stack = config.stack().build().unwrap();
    let svc = stack.layer().layer(app());
    let get = |path: &str| Request::get(path).body(Full::default()).unwrap();
    let start = Instant::now();

    // The first takes the quota's one unit and the one slot for 2 s; the
    // second has room in the quota after 1 s, then waits for the slot.
    let holding = tokio::spawn(svc.clone().oneshot(get("/hold")));
    tokio::task::yield_now().await;
    let second = svc.clone().oneshot(get("/second")).await.unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(2));
    let body = second.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "/second");
    assert_eq!(holding.await.unwrap().unwrap().status(), StatusCode::OK);
    assert_eq!(stack.shutdown().in_flight(), 0);
}
