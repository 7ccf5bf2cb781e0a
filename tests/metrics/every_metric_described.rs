//! Every metric the crate documents, rendered by the Prometheus exporter
//! (`metrics-exporter-prometheus`) as a scraper sees it: each `rampart_`
//! family has a `# HELP` line (and its unit where it has one), and the
//! `_seconds` histograms are histograms with `_bucket` series once the
//! exporter is given buckets, so `histogram_quantile` works.
//!
//! One test in its own binary: the recorder is process-global.

use crate::common;

use std::collections::BTreeSet;
use std::future::IntoFuture as _;
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder};
use tower_rampart::health::{Check, HealthRegistry, ProbeLayer};
use tower_rampart::rate_limit::KeyExtractor;
use tower_rampart::{CircuitBreakerLayer, Quota, RateLimitLayer, Shutdown, TimeoutLayer};

/// The crate docs' metric table (`src/lib.rs`), without the Redis store's
/// `rampart_rate_limit_decisions_total` (it needs a Redis server) and
/// `rampart_circuit_breaker_route_state` (the config stack's per-route
/// breakers, rendered in `tests/production/sigterm_drains_cleanly.rs`); both
/// are described all the same (the unit test in `src/metrics_help.rs` checks the list).
fn documented() -> BTreeSet<String> {
    include_str!("../../src/lib.rs")
        .lines()
        .filter_map(|l| l.strip_prefix("//! | `"))
        .filter_map(|l| l.split('`').next())
        .filter(|n| {
            n.starts_with("rampart_")
                && *n != "rampart_rate_limit_decisions_total"
                && *n != "rampart_circuit_breaker_route_state"
        })
        .map(str::to_owned)
        .collect()
}

#[tokio::test]
async fn every_metric_has_help_and_histograms_have_buckets() {
    let recorder = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Suffix("_seconds".to_owned()),
            &[0.001, 0.01, 0.1, 1.0, 10.0],
        )
        .unwrap()
        .build_recorder();
    let handle = recorder.handle();
    metrics::set_global_recorder(recorder).unwrap();

    // Every layer, built after the recorder (as the docs ask).
    let shutdown = Shutdown::builder()
        .signals(false)
        .shutdown_delay(Duration::ZERO)
        .build()
        .unwrap();
    let registry = HealthRegistry::builder()
        .shutdown(&shutdown)
        .check(Check::readiness("db", || async { Ok::<(), String>(()) }))
        .build()
        .unwrap();
    registry.refresh().await;
    let breaker = CircuitBreakerLayer::builder().name("api").build().unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(TimeoutLayer::new(Duration::from_secs(5)).unwrap())
        .layer(breaker.clone())
        .layer(
            // Adaptive, so the RTT metrics are recorded too.
            tower_rampart::ConcurrencyLimitLayer::builder()
                .limit(tower_rampart::concurrency::Gradient2::default())
                .build()
                .unwrap(),
        )
        .layer(
            RateLimitLayer::builder()
                .quota(Quota::per_second(100).key(KeyExtractor::client_ip()))
                .build()
                .unwrap(),
        )
        .layer(shutdown.drain_layer())
        .layer(ProbeLayer::new(&registry));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    // The crate's own serve loop, so its connection metrics are rendered.
    let server = tokio::spawn(tower_rampart::serve(listener, app, &shutdown).into_future());
    assert_eq!(common::get(addr, "/").await.status, 200);
    assert_eq!(common::get(addr, "/readyz").await.status, 200);
    // A transition (counted when it happens).
    breaker.handle().force_open();
    breaker.handle().reset();
    // A metrics-only breaker meeting a tripping rule.
    let watcher = CircuitBreakerLayer::builder()
        .name("watch")
        .consecutive_failures(1)
        .build()
        .unwrap();
    watcher.handle().metrics_only();
    let failing = tower::service_fn(|_: http::Request<()>| async {
        Ok::<_, std::convert::Infallible>(http::Response::builder().status(500).body(()).unwrap())
    });
    let res = tower::ServiceExt::oneshot(
        tower::Layer::layer(&watcher, failing),
        http::Request::new(()),
    )
    .await
    .unwrap();
    assert_eq!(res.status(), 500);
    // A drain, for the drain histogram.
    shutdown.trigger();
    let report = server.await.unwrap();
    assert_eq!(report.aborted, 0);

    let body = handle.render();
    let help: BTreeSet<String> = body
        .lines()
        .filter_map(|l| l.strip_prefix("# HELP "))
        .filter_map(|l| l.split(' ').next())
        .map(str::to_owned)
        .collect();
    let rendered: BTreeSet<String> = body
        .lines()
        .filter(|l| l.starts_with("rampart_"))
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
                .to_owned()
        })
        .collect();
    let documented = documented();
    assert_eq!(documented.len(), 35);
    let missing: Vec<_> = documented.difference(&rendered).collect();
    assert!(missing.is_empty(), "not rendered: {missing:?}\n{body}");
    let undocumented: Vec<_> = rendered.difference(&documented).collect();
    assert!(undocumented.is_empty(), "not in the docs: {undocumented:?}");
    let no_help: Vec<_> = rendered.difference(&help).collect();
    assert!(no_help.is_empty(), "no # HELP: {no_help:?}\n{body}");

    for histogram in [
        "rampart_drain_duration_seconds",
        "rampart_health_check_duration_seconds",
        "rampart_concurrency_rtt_seconds",
    ] {
        assert!(
            body.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram}:\n{body}"
        );
        assert!(
            body.contains(&format!("{histogram}_bucket{{")) && body.contains("le=\"+Inf\""),
            "{histogram} has no buckets:\n{body}"
        );
    }
    // The text is the crate's description.
    assert!(
        body.contains(
            "# HELP rampart_drain_duration_seconds How long draining in-flight requests took at shutdown."
        ),
        "{body}"
    );
}
