#![cfg(all(feature = "config", feature = "axum", feature = "serve"))]
//! The counters that move on every request (the rate limit's admissions,
//! the breaker's calls, the concurrency limit's samples) are counted on
//! each thread's own slots and added to the recorder every 250 ms
//! (`util::tally`). Over a real server on a multi-threaded runtime, as a
//! Prometheus scrape reads them: every request a client was answered is
//! counted exactly once, whichever worker served it, and nothing is
//! counted twice by later periods.

use crate::common;

use std::time::Duration;

use axum::Router;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusBuilder;
use tower_rampart::config::RampartConfig;

const CONFIG: &str = r#"
    [shutdown]
    signals = false
    [rate_limit]
    name = "api"
    quotas = [
        { name = "global", rate = "1000000/s", burst = 1000000, key = "global" },
        { name = "per_ip", rate = "1000000/s", burst = 1000000, key = "client_ip" },
    ]
    [circuit_breaker]
    name = "api"
    [concurrency]
    name = "api"
    limit = { algorithm = "fixed", limit = 1000 }
"#;

/// The sum of the rendered series of `family` whose labels contain
/// `label` (a `name="value"` pair, or "" for any).
fn sum(text: &str, family: &str, label: &str) -> u64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")) && l.contains(label))
        .map(|l| {
            let value = l.rsplit(' ').next().unwrap_or_default();
            value.parse::<f64>().unwrap_or_else(|_| panic!("{l}")) as u64
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_answered_request_is_counted_once_whichever_thread_served_it() {
    let recorder = PrometheusBuilder::new().build_recorder();
    let scrape = recorder.handle();
    let config = RampartConfig::from_toml(CONFIG).unwrap_or_else(|e| panic!("{e}"));
    let stack = metrics::with_local_recorder(&recorder, || config.stack().build().unwrap());
    let app = Router::new().route("/api/ok", get(|| async { "ok" }));
    let addr = common::serve_around(&stack, app).await;

    // Eight clients at once, each request on a connection of its own (the
    // server's workers take them in turn).
    const CLIENTS: u64 = 8;
    const EACH: u64 = 40;
    let mut clients = tokio::task::JoinSet::new();
    for _ in 0..CLIENTS {
        clients.spawn(async move {
            for _ in 0..EACH {
                assert_eq!(common::get(addr, "/api/ok").await.status, 200);
            }
        });
    }
    while let Some(done) = clients.join_next().await {
        done.unwrap();
    }
    let sent = CLIENTS * EACH;

    let counts = || {
        let text = scrape.render();
        [
            sum(&text, "rampart_rate_limit_admitted_total", "name=\"api\""),
            sum(
                &text,
                "rampart_circuit_breaker_calls_total",
                "outcome=\"success\"",
            ),
            sum(
                &text,
                "rampart_concurrency_samples_total",
                "outcome=\"success\"",
            ),
        ]
    };
    // Added within a period or two of the last answer (the bound here is
    // generous: a loaded machine may run the adding task late).
    let mut seen = counts();
    for _ in 0..100 {
        if seen == [sent; 3] {
            break;
        }
        assert!(seen.iter().all(|&n| n <= sent), "counted twice: {seen:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
        seen = counts();
    }
    assert_eq!(seen, [sent; 3], "admitted, breaker successes, samples");
    // Later periods add nothing more.
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert_eq!(counts(), [sent; 3]);
}
