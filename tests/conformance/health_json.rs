//! `application/health+json`, as draft-inadarei-api-health-check-06
//! ("Health Check Response Format for HTTP APIs") defines it, over a real
//! axum server and a real hyper client. Each test names the section it
//! checks.
//!
//! Deliberate differences, asserted as ours:
//!
//! - **Check names may contain `:`** (section 4 says a `componentName`
//!   must not): names are also probe paths and metric labels, where `:`
//!   is common (`db:primary`). The measurement is always the last part of
//!   the key, so a client splits the key at its last colon.
//! - **A failing check's `output` is `reason withheld` in the probe
//!   listing** (section 4.8 allows the raw error): errors can carry
//!   hostnames and credentials, and probes are often reachable by more
//!   people than logs; `/<probe>/<name>` shows the real error, like
//!   kube-apiserver's per-check paths.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use http::StatusCode;
use serde_json::Value;
use tower_rampart::health::{Check, ComponentType, HealthRegistry, Kind, ProbeLayer};

use crate::common;

const ACCEPT: (&str, &str) = ("accept", "application/health+json");

struct Fixture {
    addr: std::net::SocketAddr,
    db_up: Arc<AtomicBool>,
    cache_up: Arc<AtomicBool>,
}

/// Readiness: `db` (critical, a datastore), `cache` (non-critical), and
/// the liveness check `worker`.
async fn fixture() -> Fixture {
    let db_up = Arc::new(AtomicBool::new(true));
    let cache_up = Arc::new(AtomicBool::new(true));
    let (d, c) = (db_up.clone(), cache_up.clone());
    let reg = HealthRegistry::builder()
        .check(Check::sync("worker", Kind::Liveness, || {
            Ok::<(), String>(())
        }))
        .check(
            Check::sync("db", Kind::Readiness, move || {
                if d.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("connection refused by 10.0.0.7:5432")
                }
            })
            .component_type(ComponentType::Datastore),
        )
        .check(
            Check::sync("cache", Kind::Readiness, move || {
                if c.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("timeout")
                }
            })
            .component_type(ComponentType::System)
            .non_critical(),
        )
        .build()
        .unwrap();
    let app = axum::Router::new()
        .fallback(|| async { "app" })
        .layer(ProbeLayer::new(&reg));
    Fixture {
        addr: common::serve(app).await,
        db_up,
        cache_up,
    }
}

async fn get_json(addr: std::net::SocketAddr, path: &str) -> (StatusCode, Value) {
    let r = common::get_with(addr, path, &[ACCEPT]).await;
    // Section 3: the media type.
    assert_eq!(
        r.header("content-type"),
        "application/health+json",
        "{path}"
    );
    (r.status, r.json())
}

/// Section 3.1: `status` is `pass`, `warn` or `fail`; `pass` and `warn`
/// answer 2xx, `fail` 4xx-5xx (ours: 503).
#[tokio::test]
async fn status_and_http_status_mapping() {
    let f = fixture().await;
    let (code, j) = get_json(f.addr, "/readyz").await;
    assert_eq!((code, &j["status"]), (StatusCode::OK, &Value::from("pass")));

    f.cache_up.store(false, Ordering::SeqCst);
    let (code, j) = get_json(f.addr, "/readyz").await;
    assert_eq!((code, &j["status"]), (StatusCode::OK, &Value::from("warn")));

    f.db_up.store(false, Ordering::SeqCst);
    let (code, j) = get_json(f.addr, "/readyz").await;
    assert_eq!(
        (code, &j["status"]),
        (StatusCode::SERVICE_UNAVAILABLE, &Value::from("fail"))
    );
    // Liveness does not include the dependencies.
    let (code, j) = get_json(f.addr, "/livez").await;
    assert_eq!((code, &j["status"]), (StatusCode::OK, &Value::from("pass")));
}

/// Section 4: `checks` maps `{componentName}:{measurementName}` to an array
/// of objects (one here: no nodes); the measurement is `responseTime`, one
/// the draft predefines, matching `observedValue`. Sections 4.1-4.4, 4.7:
/// `componentId`, `componentType` (`component` | `datastore` | `system` or
/// a URI), `observedValue` (a number) with `observedUnit`, and `time`, the
/// ISO 8601 date-time of the reading.
#[tokio::test]
async fn checks_object_keys_and_fields() {
    let f = fixture().await;
    let (_, j) = get_json(f.addr, "/readyz").await;
    assert_eq!(j["description"], "readyz");
    let checks = j["checks"].as_object().unwrap();
    let keys: Vec<&str> = checks.keys().map(String::as_str).collect();
    let mut sorted = keys.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        [
            "cache:responseTime",
            "db:responseTime",
            "worker:responseTime"
        ]
    );
    for (key, list) in checks {
        let list = list.as_array().unwrap();
        assert_eq!(list.len(), 1, "{key}");
        let c = &list[0];
        let (name, measurement) = key.rsplit_once(':').unwrap();
        assert_eq!(measurement, "responseTime");
        assert_eq!(c["componentId"], name);
        assert!(
            ["component", "datastore", "system"].contains(&c["componentType"].as_str().unwrap()),
            "{c}"
        );
        assert!(c["observedValue"].as_f64().unwrap() >= 0.0, "{c}");
        assert_eq!(c["observedUnit"], "ms");
        assert_eq!(c["status"], "pass");
        let time = c["time"].as_str().unwrap();
        // 2026-11-29T07:45:12.345Z
        assert_eq!(time.len(), 24, "{time}");
        assert_eq!(&time[4..5], "-");
        assert_eq!(&time[10..11], "T");
        assert!(time.ends_with('Z'), "{time}");
        // Section 4.8: `output` is omitted when passing.
        assert!(c.get("output").is_none(), "{c}");
    }
    assert_eq!(checks["db:responseTime"][0]["componentType"], "datastore");
    assert_eq!(checks["cache:responseTime"][0]["componentType"], "system");
    assert_eq!(
        checks["worker:responseTime"][0]["componentType"],
        "component"
    );
}

/// Sections 4.5 and 4.8: each check has its own `status`; a failing one
/// carries `output`. ours: `reason withheld` in the listing, the real
/// error at `/readyz/<name>` (see the module docs).
#[tokio::test]
async fn failing_checks_and_output() {
    let f = fixture().await;
    f.db_up.store(false, Ordering::SeqCst);
    f.cache_up.store(false, Ordering::SeqCst);
    let (_, j) = get_json(f.addr, "/readyz").await;
    let db = &j["checks"]["db:responseTime"][0];
    assert_eq!(db["status"], "fail");
    assert_eq!(db["output"], "reason withheld");
    let cache = &j["checks"]["cache:responseTime"][0];
    assert_eq!(cache["status"], "warn");
    assert_eq!(cache["output"], "reason withheld");

    let (code, j) = get_json(f.addr, "/readyz/db").await;
    assert_eq!(code, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(j["status"], "fail");
    assert_eq!(
        j["checks"]["db:responseTime"][0]["output"],
        "connection refused by 10.0.0.7:5432"
    );
}

/// Section 3.4: `notes`, an array of strings; ours: names that
/// `?exclude=` could not match. Excluded checks are left out of `checks`.
#[tokio::test]
async fn notes_and_exclusions() {
    let f = fixture().await;
    f.db_up.store(false, Ordering::SeqCst);
    let (code, j) = get_json(f.addr, "/readyz?exclude=db&exclude=nope").await;
    assert_eq!((code, &j["status"]), (StatusCode::OK, &Value::from("pass")));
    assert!(j["checks"].get("db:responseTime").is_none(), "{j}");
    let notes = j["notes"].as_array().unwrap();
    assert_eq!(notes.len(), 1);
    assert!(notes[0].as_str().unwrap().contains("nope"), "{j}");
}

/// Section 4 asks for a `componentName` without `:`; ours takes `:` in
/// check names (see the module docs), and the measurement stays the key's
/// last part. An error text with quotes, backslashes and newlines cannot
/// break the document: it is escaped.
#[tokio::test]
async fn colons_in_names_keep_the_measurement_last() {
    let reg = HealthRegistry::builder()
        .check(Check::sync("db:primary", Kind::Readiness, || {
            Err::<(), _>("quote \" and \\ backslash\n")
        }))
        .build()
        .unwrap();
    let addr = common::serve(
        axum::Router::new()
            .fallback(|| async { "app" })
            .layer(ProbeLayer::new(&reg)),
    )
    .await;
    let (_, j) = get_json(addr, "/readyz").await;
    let key = j["checks"]
        .as_object()
        .unwrap()
        .keys()
        .next()
        .unwrap()
        .clone();
    assert_eq!(key, "db:primary:responseTime");
    assert_eq!(key.rsplit_once(':').unwrap().0, "db:primary");
    let (_, j) = get_json(addr, "/readyz/db:primary").await;
    assert_eq!(
        j["checks"]["db:primary:responseTime"][0]["output"],
        "quote \" and \\ backslash\n"
    );
}
