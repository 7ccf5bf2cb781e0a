//! kube-apiserver's healthz handlers
//! (`staging/src/k8s.io/apiserver/pkg/server/healthz/healthz_test.go`,
//! `testMultipleChecks`, run by `TestMultipleChecks` on `/healthz` and by
//! `TestMultiplePathChecks` on a custom path), translated row by row to a
//! real axum server on loopback and a real hyper client.
//!
//! The table there installs the `ping` check, plus a `bad` check failing
//! with "this will fail" in half the rows, and asserts status, content
//! type and exact body. Deliberate differences, asserted as ours:
//!
//! - **503, not 500, when a probe fails.** kubelet counts any status from
//!   400 up as a failure, so both work for Kubernetes; 503 is what load
//!   balancers and the draft health+json mapping expect of "not able to
//!   serve", and a 500 from a probe reads as a bug in the probe.
//! - **A single failing check answers `[-]bad failed: this will fail`**
//!   (503) where kube answers `internal server error: this will fail`: the
//!   same line shape as the listing, naming the check.
//! - **The closing line names the probe kind (`readyz check passed`)**,
//!   not the last path segment: kube derives it from the path
//!   (`/ready` -> `ready check passed`), ours stays the same when the path
//!   is customised, so alerts matching the line keep working.

use std::net::SocketAddr;

use http::StatusCode;
use tower_rampart::health::{Check, HealthRegistry, Kind, ProbeLayer};
use tower_rampart::shutdown::Shutdown;

use crate::common;

/// kube's `PingHealthz` (always ok) and, when asked, `bad`.
async fn server(readiness_path: &str, bad: bool) -> SocketAddr {
    let mut b = HealthRegistry::builder().check(Check::sync("ping", Kind::Readiness, || {
        Ok::<(), String>(())
    }));
    if bad {
        b = b.check(Check::sync("bad", Kind::Readiness, || {
            Err::<(), _>("this will fail")
        }));
    }
    let reg = b.build().unwrap();
    let layer = ProbeLayer::builder(&reg)
        .readiness_path(readiness_path)
        .build()
        .unwrap();
    let app = axum::Router::new()
        .fallback(|| async { (StatusCode::NOT_FOUND, "app") })
        .layer(layer);
    common::serve(app).await
}

/// One row of `testMultipleChecks`: the suffix after the probe path, the
/// body, the status, and whether `bad` is installed.
struct Row {
    suffix: &'static str,
    body: &'static str,
    status: StatusCode,
    bad: bool,
}

const fn row(suffix: &'static str, body: &'static str, status: u16, bad: bool) -> Row {
    Row {
        suffix,
        body,
        status: match StatusCode::from_u16(status) {
            Ok(s) => s,
            Err(_) => panic!("bad status"),
        },
        bad,
    }
}

/// The table, with `%s` = `readyz` (see the module docs for the three
/// differences, marked `ours:`).
const ROWS: &[Row] = &[
    row("?verbose", "[+]ping ok\nreadyz check passed\n", 200, false),
    row("?exclude=dontexist", "ok", 200, false),
    row("?exclude=bad", "ok", 200, true),
    row(
        "?verbose=true&exclude=bad",
        "[+]ping ok\n[+]bad excluded: ok\nreadyz check passed\n",
        200,
        true,
    ),
    row(
        "?verbose=true&exclude=dontexist",
        "[+]ping ok\nwarn: some health checks cannot be excluded: no matches for \"dontexist\"\nreadyz check passed\n",
        200,
        false,
    ),
    row("/ping", "ok", 200, false),
    row("", "ok", 200, false),
    // ours: 503 (kube 500).
    row(
        "?verbose",
        "[+]ping ok\n[-]bad failed: reason withheld\nreadyz check failed\n",
        503,
        true,
    ),
    row("/ping", "ok", 200, true),
    // ours: 503 and the listing's line shape (kube 500
    // "internal server error: this will fail\n").
    row("/bad", "[-]bad failed: this will fail\n", 503, true),
    // ours: 503 (kube 500).
    row(
        "",
        "[+]ping ok\n[-]bad failed: reason withheld\nreadyz check failed\n",
        503,
        true,
    ),
];

async fn run_table(path: &str) {
    for (i, r) in ROWS.iter().enumerate() {
        let addr = server(path, r.bad).await;
        let reply = common::get(addr, &format!("{path}{}", r.suffix)).await;
        assert_eq!(reply.status, r.status, "row {i} `{path}{}`", r.suffix);
        assert_eq!(reply.body, r.body, "row {i} `{path}{}`", r.suffix);
        assert_eq!(
            reply.header("content-type"),
            "text/plain; charset=utf-8",
            "row {i}"
        );
    }
}

/// `TestMultipleChecks`: the table on the default path.
#[tokio::test]
async fn multiple_checks() {
    run_table("/readyz").await;
}

/// `TestMultiplePathChecks`: the same table on a custom path (kube uses
/// `/ready`). ours: the closing line still says `readyz`.
#[tokio::test]
async fn multiple_path_checks() {
    run_table("/ready").await;
}

/// `TestInstallHandler` / `TestInstallPathHandler`: a probe with no checks
/// but the defaults answers 200 `ok` in `text/plain; charset=utf-8`, on
/// the default paths and on custom ones, side by side.
#[tokio::test]
async fn install_handler_and_path_handler() {
    let reg = HealthRegistry::builder().build().unwrap();
    let app = axum::Router::new()
        .fallback(|| async { "app" })
        .layer(ProbeLayer::new(&reg));
    let addr = common::serve(app).await;
    for path in ["/livez", "/readyz", "/startupz"] {
        let r = common::get(addr, path).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "ok"),
            "{path}"
        );
        assert_eq!(r.header("content-type"), "text/plain; charset=utf-8");
    }
    let layer = ProbeLayer::builder(&reg)
        .liveness_path("/healthz/test")
        .readiness_path("/healthz/ready")
        .build()
        .unwrap();
    let addr = common::serve(
        axum::Router::new()
            .fallback(|| async { "app" })
            .layer(layer),
    )
    .await;
    for path in ["/healthz/test", "/healthz/ready"] {
        let r = common::get(addr, path).await;
        assert_eq!(
            (r.status, r.body.as_str()),
            (StatusCode::OK, "ok"),
            "{path}"
        );
        assert_eq!(r.header("content-type"), "text/plain; charset=utf-8");
    }
}

/// `TestGetExcludedChecks`: `?exclude=` repeats; `?verbose=true` excludes
/// nothing; each named check is excluded.
#[tokio::test]
async fn excluded_checks_repeat() {
    let reg = HealthRegistry::builder()
        .check(Check::sync("ping", Kind::Readiness, || Err::<(), _>("x")))
        .check(Check::sync("log", Kind::Readiness, || Err::<(), _>("x")))
        .build()
        .unwrap();
    let addr = common::serve(
        axum::Router::new()
            .fallback(|| async { "app" })
            .layer(ProbeLayer::new(&reg)),
    )
    .await;
    let r = common::get(addr, "/readyz?verbose=true").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let r = common::get(addr, "/readyz?exclude=ping").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.body,
        "[+]ping excluded: ok\n[-]log failed: reason withheld\nreadyz check failed\n"
    );
    let r = common::get(addr, "/readyz?exclude=ping&exclude=log").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
}

/// kube-apiserver's `/readyz` carries a `shutdown` check (`[+]shutdown ok`
/// in `/readyz?verbose`) that fails once graceful termination starts,
/// while `/livez` keeps passing; its readyz runs the livez checks too.
/// Ours: the same check name, order and listings.
#[tokio::test]
async fn shutdown_fails_readyz_only() {
    let sd = Shutdown::builder().signals(false).build().unwrap();
    let reg = HealthRegistry::builder()
        .shutdown(&sd)
        .check(Check::sync("ping", Kind::Liveness, || Ok::<(), String>(())))
        .build()
        .unwrap();
    let addr = common::serve(
        axum::Router::new()
            .fallback(|| async { "app" })
            .layer(ProbeLayer::new(&reg)),
    )
    .await;
    assert_eq!(
        common::get(addr, "/readyz?verbose").await.body,
        "[+]shutdown ok\n[+]ping ok\nreadyz check passed\n"
    );
    sd.trigger();
    let r = common::get(addr, "/readyz?verbose").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.body,
        "[-]shutdown failed: reason withheld\n[+]ping ok\nreadyz check failed\n"
    );
    let r = common::get(addr, "/livez?verbose").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "[+]ping ok\nlivez check passed\n")
    );
}
