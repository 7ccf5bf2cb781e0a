//! The rate limit as the stack runs it: its decision is taken by the
//! stack's front, after the drain has counted the request and before the
//! layers below. What the layer does on its own must hold there too:
//! waiting mode waits (counted in flight, so shutdown waits for it too),
//! refuses what would wait too long, sends the `RateLimit` fields on
//! admitted answers when asked, and a request still waiting at the drain
//! deadline is answered as aborted.
#![cfg(feature = "config")]

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_rampart::config::RampartConfig;

use crate::common::ok_service;

fn config(rate_limit: &str) -> RampartConfig {
    crate::stack_config(&format!("[rate_limit]\n{rate_limit}"))
}

fn get() -> Request<Full<Bytes>> {
    Request::get("/api").body(Full::default()).unwrap()
}

#[tokio::test(start_paused = true)]
async fn waiting_mode_waits_for_room_and_refuses_a_longer_wait_at_once() {
    let waiting = config(
        r#"
        wait = "1500ms"
        admitted_headers = true
        quotas = [{ rate = "1/s", burst = 1 }]
        "#,
    );
    let stack = waiting.stack().build().unwrap();
    let svc = stack.layer().layer(ok_service());

    // Admitted at once, with the `RateLimit` fields (asked for).
    let first = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    assert!(
        first.headers().contains_key("ratelimit"),
        "{:?}",
        first.headers()
    );
    drop(first);

    // The next one waits a second for room, counted in flight meanwhile.
    let start = Instant::now();
    let second = tokio::spawn(svc.clone().oneshot(get()));
    tokio::task::yield_now().await;
    assert_eq!(stack.shutdown().in_flight(), 1);
    let second = second.await.unwrap().unwrap();
    assert_eq!(second.status(), StatusCode::OK);
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    let body = second.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, "ok");
    assert_eq!(stack.shutdown().in_flight(), 0);

    // With room only after more than `wait`: refused at once.
    let short = config(
        r#"
        wait = "500ms"
        quotas = [{ rate = "1/s", burst = 1 }]
        "#,
    );
    let stack = short.stack().build().unwrap();
    let svc = stack.layer().layer(ok_service());
    let first = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(first.status(), StatusCode::OK);
    let start = Instant::now();
    let second = svc.clone().oneshot(get()).await.unwrap();
    assert_eq!(second.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(second.headers()["retry-after"], "1");
    assert_eq!(start.elapsed(), Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn a_request_still_waiting_at_the_drain_deadline_is_answered_as_aborted() {
    let config = config(
        r#"
        wait = "2m"
        quotas = [{ rate = "1/m", burst = 1 }]
        "#,
    );
    let stack = config.stack().build().unwrap();
    let svc = stack.layer().layer(ok_service());
    assert_eq!(
        svc.clone().oneshot(get()).await.unwrap().status(),
        StatusCode::OK
    );

    // Waits a minute for room; shutdown starts meanwhile, and the drain
    // (10 s) ends before the wait does.
    let waiting = tokio::spawn(svc.clone().oneshot(get()));
    tokio::task::yield_now().await;
    let start = Instant::now();
    stack.shutdown().trigger();
    let res = waiting.await.unwrap().unwrap();
    assert_eq!(start.elapsed(), Duration::from_secs(10));
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["connection"], "close");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(
        String::from_utf8_lossy(&body).contains("aborted at the drain deadline"),
        "{body:?}"
    );
    let report = stack.shutdown().done().await;
    assert_eq!((report.finished, report.aborted), (0, 1), "{report:?}");
}

/// A quota keyed by `route`, the stack wrapped around the whole router with
/// the routes declared (`routes.paths`): each declared route is one bucket
/// whatever its concrete path, and paths naming no route share one
/// `unmatched` bucket. A client varying the path (`/api/items/1`, `/2`,
/// ..., or made-up paths) gets no bucket of its own; before routes could be
/// declared, a stack outside the router counted such a quota by the raw
/// path, one bucket per path.
#[cfg(all(feature = "axum", feature = "serve"))]
#[tokio::test]
async fn a_route_keyed_quota_counts_declared_routes_never_raw_paths() {
    use axum::routing::get as route_get;

    let config = crate::stack_config(
        r#"
        [routes]
        paths = ["/api/ok", "/api/items/{id}"]
        [rate_limit]
        quotas = [{ rate = "1/h", burst = 2, key = "route" }]
        "#,
    );
    let stack = config.stack().build().unwrap();
    let app = axum::Router::new()
        .route("/api/ok", route_get(|| async { "ok" }))
        .route("/api/items/{id}", route_get(|| async { "item" }))
        .fallback(|| async { (StatusCode::NOT_FOUND, "no such route") });
    let addr = crate::common::serve_around(&stack, app).await;

    let status = |path: String| async move { crate::common::get(addr, &path).await.status };
    // One bucket for every item: two admitted, then refused.
    assert_eq!(status("/api/items/1".into()).await, StatusCode::OK);
    assert_eq!(status("/api/items/2".into()).await, StatusCode::OK);
    let r = crate::common::get(addr, "/api/items/3").await;
    assert_eq!(r.status, StatusCode::TOO_MANY_REQUESTS, "{}", r.body);
    assert!(
        r.body.contains("route"),
        "the refusal names the quota: {}",
        r.body
    );
    // Another declared route has its own.
    assert_eq!(status("/api/ok".into()).await, StatusCode::OK);
    // Made-up paths share one bucket, `unmatched`.
    assert_eq!(status("/x/1".into()).await, StatusCode::NOT_FOUND);
    assert_eq!(status("/y/2".into()).await, StatusCode::NOT_FOUND);
    for i in 3..10 {
        assert_eq!(
            status(format!("/z/{i}")).await,
            StatusCode::TOO_MANY_REQUESTS
        );
    }
    // Still two admitted per route: `/api/ok` once more, then refused.
    assert_eq!(status("/api/ok".into()).await, StatusCode::OK);
    assert_eq!(
        status("/api/ok".into()).await,
        StatusCode::TOO_MANY_REQUESTS
    );
}
