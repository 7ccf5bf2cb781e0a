//! The `[concurrency]` section in the config stack, over a real server:
//! the stack refuses what exceeds the limit, while the probes and
//! `/metrics` (the platform's endpoints) answer and are never counted.
#![cfg(all(feature = "config", feature = "axum"))]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use tokio::sync::Notify;
use tower_rampart::config::RampartConfig;

use crate::common;

#[tokio::test]
async fn the_stack_limits_the_app_but_never_the_platform() {
    let config = RampartConfig::from_toml(
        r#"
        [shutdown]
        shutdown_delay = "0s"
        drain_timeout = "10s"
        signals = false
        [concurrency]
        name = "api"
        limit = { algorithm = "fixed", limit = 1 }
        "#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let stack = config.stack().build().unwrap();
    let release = Arc::new(Notify::new());
    let r = Arc::clone(&release);
    let app = Router::new()
        .route(
            "/hold",
            get(move || {
                let r = Arc::clone(&r);
                async move {
                    r.notified().await;
                    "released"
                }
            }),
        )
        .route("/ok", get(|| async { "ok" }))
        .route("/metrics", get(|| async { "# metrics" }))
        .layer(stack.layer());
    let addr = common::serve(app).await;

    let held = tokio::spawn(async move { common::get(addr, "/hold").await });
    // Wait until the held request has its slot.
    let mut refused = None;
    for _ in 0..100 {
        let r = common::get(addr, "/ok").await;
        if r.status == 503 {
            refused = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let refused = refused.expect("the limit of 1 refuses a second request");
    assert_eq!(
        refused.json()["type"],
        "urn:tower-rampart:problem:overloaded"
    );
    assert_eq!(refused.header("retry-after"), "1");
    // The platform answers while the limit is spent.
    assert_eq!(common::get(addr, "/livez").await.status, 200);
    assert_eq!(common::get(addr, "/readyz").await.status, 200);
    assert_eq!(common::get(addr, "/metrics").await.status, 200);
    release.notify_one();
    assert_eq!(held.await.unwrap().body, "released");
    assert_eq!(common::get(addr, "/ok").await.status, 200);
}

#[test]
fn a_bad_section_is_refused_naming_the_key() {
    let err = RampartConfig::from_toml(
        r#"
        [concurrency]
        queue = { max_len = 0, max_wait = "5ms" }
        "#,
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("concurrency.queue.max_len"), "{err}");
}
