use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower_rampart::concurrency::{ConcurrencyLimitLayer, Criticality, Fixed};

use crate::common;

async fn slow() -> &'static str {
    tokio::time::sleep(Duration::from_millis(300)).await;
    "done"
}

async fn server(layer: ConcurrencyLimitLayer) -> SocketAddr {
    common::serve(Router::new().route("/", get(slow)).layer(layer)).await
}

/// Sends `n` requests at once (each with `headers`) and returns the replies.
async fn burst(
    addr: SocketAddr,
    n: usize,
    headers: &'static [(&'static str, &'static str)],
) -> Vec<common::Reply> {
    let handles: Vec<_> = (0..n)
        .map(|_| tokio::spawn(async move { common::get_with(addr, "/", headers).await }))
        .collect();
    let mut replies = Vec::new();
    for h in handles {
        replies.push(h.await.unwrap());
    }
    replies
}

#[tokio::test]
async fn overload_is_refused_with_retry_after_then_recovers() {
    let layer = ConcurrencyLimitLayer::fixed(4);
    let addr = server(layer.clone()).await;
    let replies = burst(addr, 16, &[]).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    let refused: Vec<_> = replies.iter().filter(|r| r.status == 503).collect();
    assert_eq!(ok + refused.len(), 16);
    // At most 4 at a time; a late connection may find a slot freed.
    assert!((1..=8).contains(&ok), "{ok} admitted");
    assert!(refused.len() >= 8, "{} refused", refused.len());
    for r in &refused {
        assert_eq!(r.header("retry-after"), "1");
        assert_eq!(r.header("content-type"), "application/problem+json");
        assert!(r.body.len() < 300, "{}", r.body);
        assert_eq!(r.json()["title"], "Overloaded");
    }
    // A gRPC caller in the same overload gets UNAVAILABLE.
    let hold = tokio::spawn(burst(addr, 4, &[]));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let grpc = common::get_with(addr, "/", &[("content-type", "application/grpc")]).await;
    assert_eq!(grpc.status, 200);
    assert_eq!(grpc.header("grpc-status"), "14");
    hold.await.unwrap();
    // The load is gone: every request is served again.
    assert_eq!(layer.in_flight(), 0);
    for r in burst(addr, 4, &[]).await {
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "done");
    }
}

#[tokio::test]
async fn attacker_claiming_critical_cannot_exceed_the_limit() {
    // Critical is guaranteed half the limit on top of borrowers, but the
    // header is not trusted (the default): a client claiming `critical` is
    // `default`, so a flood of such requests gets the limit, never more.
    let layer = ConcurrencyLimitLayer::builder()
        .limit(Fixed::new(4))
        .partition(Criticality::Critical, 0.5)
        .partition(Criticality::Default, 0.0)
        .criticality_header(http::HeaderName::from_static("x-criticality"))
        .build()
        .unwrap();
    let addr = server(layer.clone()).await;
    let replies = burst(addr, 12, &[("x-criticality", "critical")]).await;
    let ok = replies.iter().filter(|r| r.status == 200).count();
    assert!(ok <= 4, "{ok} admitted, the limit is 4");
    assert!(replies.iter().all(|r| r.status == 200 || r.status == 503));
    assert_eq!(layer.in_flight_of(Criticality::Critical), 0);
}

/// A metric's name, labels and value.
type Row = (String, Vec<(String, String)>, DebugValue);

fn metric(snapshot: &[Row], name: &str, labels: &[(&str, &str)]) -> f64 {
    snapshot
        .iter()
        .filter(|(n, l, _)| {
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| l.iter().any(|(a, b)| a == k && b == v))
        })
        .map(|(_, _, v)| match v {
            DebugValue::Counter(c) => *c as f64,
            DebugValue::Gauge(g) => g.into_inner(),
            DebugValue::Histogram(h) => h.len() as f64,
        })
        .sum()
}

#[tokio::test]
async fn operator_sees_limit_in_flight_and_refusals() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        ConcurrencyLimitLayer::builder()
            .name("api")
            // Adaptive in type (RTTs are measured), fixed at 2 in value.
            .limit(crate::rules::Recorder::default().algorithm(2))
            .build()
            .unwrap()
    });
    let addr = server(layer.clone()).await;
    let replies = burst(addr, 8, &[]).await;
    let refused = replies.iter().filter(|r| r.status == 503).count();
    assert!(refused >= 1);
    // The in-flight gauge is the layer's count, set every 250 ms: past two
    // of those, it must read what is in flight now, nothing.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let snap: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| {
            let key = k.key();
            let labels = key
                .labels()
                .map(|l| (l.key().to_owned(), l.value().to_owned()))
                .collect();
            (key.name().to_owned(), labels, v)
        })
        .collect();
    let api = [("name", "api")];
    assert_eq!(metric(&snap, "rampart_concurrency_limit", &api), 2.0);
    assert_eq!(metric(&snap, "rampart_concurrency_in_flight", &api), 0.0);
    assert_eq!(
        metric(
            &snap,
            "rampart_concurrency_rejections_total",
            &[
                ("name", "api"),
                ("partition", "default"),
                ("reason", "limit")
            ]
        ),
        refused as f64
    );
    let served = (8 - refused) as f64;
    assert_eq!(
        metric(
            &snap,
            "rampart_concurrency_samples_total",
            &[("name", "api"), ("outcome", "success")]
        ),
        served
    );
    assert_eq!(
        metric(&snap, "rampart_concurrency_rtt_seconds", &api),
        served
    );
    assert!(metric(&snap, "rampart_concurrency_min_rtt_seconds", &api) >= 0.3);
}
