//! The shared rejection answers, over a real server and client.
use crate::common;

use axum::{Router, routing::get};
use tower_rampart::rejection::{Protocol, Rejection, RejectionKind, ResponseBody};

#[tokio::test]
async fn rejection_reaches_a_real_client_intact() {
    let app = Router::new().route(
        "/refused",
        get(|| async {
            Rejection::new(RejectionKind::RateLimited, "api")
                .with_retry_after(std::time::Duration::from_millis(1200))
                .with_detail("quota `per-ip` exhausted")
                .into_response::<axum::body::Body>(Protocol::Http)
                .map(axum::body::Body::new::<ResponseBody<axum::body::Body>>)
        }),
    );
    let addr = common::serve(app).await;
    let reply = common::get(addr, "/refused").await;
    assert_eq!(reply.status, 429);
    assert_eq!(reply.header("retry-after"), "2");
    assert_eq!(reply.header("content-type"), "application/problem+json");
    let json = reply.json();
    assert_eq!(json["status"], 429);
    assert_eq!(json["detail"], "quota `per-ip` exhausted");
}
