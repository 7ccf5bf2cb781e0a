//! The breaker's metrics, with a recorder installed before the layer is
//! built (this file installs the global recorder, so it is its own binary).

use std::convert::Infallible;
use std::time::Duration;

use http::{Request, Response};
use metrics_util::debugging::{DebugValue, DebuggingRecorder};
use tower::{Layer, ServiceExt};
use tower_rampart::circuit_breaker::CircuitBreakerLayer;

fn value(
    snapshot: &[(metrics_util::CompositeKey, DebugValue)],
    name: &str,
    labels: &[(&str, &str)],
) -> Option<String> {
    snapshot.iter().find_map(|(k, v)| {
        let key = k.key();
        let matches = key.name() == name
            && labels
                .iter()
                .all(|(l, val)| key.labels().any(|x| x.key() == *l && x.value() == *val));
        matches.then(|| format!("{v:?}"))
    })
}

#[tokio::test(start_paused = true)]
async fn state_gauge_calls_rejections_and_transitions() {
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    recorder.install().unwrap();

    let layer = CircuitBreakerLayer::builder()
        .name("m")
        .count_window(2)
        .minimum_calls(2)
        .slow_call_duration_threshold(Duration::from_millis(50))
        .open_duration(Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = layer.layer(tower::service_fn(|req: Request<&'static str>| async move {
        let status = if *req.body() == "fail" { 500 } else { 200 };
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut res = Response::new(String::new());
        *res.status_mut() = http::StatusCode::from_u16(status).unwrap();
        Ok::<_, Infallible>(res)
    }));
    for what in ["ok", "fail", "ok"] {
        let _ = svc.clone().oneshot(Request::new(what)).await.unwrap();
    }
    // A breaker in metrics-only mode counts the crossing that would have
    // opened it, so an operator can alert on it.
    let shadow = CircuitBreakerLayer::builder()
        .name("shadow")
        .count_window(2)
        .minimum_calls(2)
        .build()
        .unwrap();
    shadow.handle().metrics_only();
    let shadow_svc = shadow.layer(tower::service_fn(|_req: Request<()>| async {
        let mut res = Response::new(String::new());
        *res.status_mut() = http::StatusCode::BAD_GATEWAY;
        Ok::<_, Infallible>(res)
    }));
    for _ in 0..3 {
        let _ = shadow_svc.clone().oneshot(Request::new(())).await.unwrap();
    }
    // Calls are counted per thread and added to the recorder every 250 ms
    // (the open breaker's 1 s is not up yet).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let snap: Vec<_> = snapshotter
        .snapshot()
        .into_vec()
        .into_iter()
        .map(|(k, _, _, v)| (k, v))
        .collect();
    let calls = |outcome| {
        value(
            &snap,
            "rampart_circuit_breaker_calls_total",
            &[("name", "m"), ("outcome", outcome)],
        )
    };
    assert_eq!(
        calls("success"),
        Some(format!("{:?}", DebugValue::Counter(1)))
    );
    assert_eq!(
        calls("failure"),
        Some(format!("{:?}", DebugValue::Counter(1)))
    );
    assert_eq!(
        value(
            &snap,
            "rampart_circuit_breaker_slow_calls_total",
            &[("name", "m")]
        ),
        Some(format!("{:?}", DebugValue::Counter(2)))
    );
    assert_eq!(
        value(
            &snap,
            "rampart_circuit_breaker_rejections_total",
            &[("name", "m")]
        ),
        Some(format!("{:?}", DebugValue::Counter(1)))
    );
    assert_eq!(
        value(
            &snap,
            "rampart_circuit_breaker_transitions_total",
            &[("name", "m"), ("from", "closed"), ("to", "open")]
        ),
        Some(format!("{:?}", DebugValue::Counter(1)))
    );
    assert_eq!(
        value(
            &snap,
            "rampart_circuit_breaker_threshold_exceeded_total",
            &[("name", "shadow"), ("reason", "failure_rate")]
        ),
        Some(format!("{:?}", DebugValue::Counter(1)))
    );
    assert_eq!(
        value(
            &snap,
            "rampart_circuit_breaker_state",
            &[("name", "shadow")]
        ),
        Some(format!("{:?}", DebugValue::Gauge(5.0.into())))
    );
    assert_eq!(
        value(&snap, "rampart_circuit_breaker_state", &[("name", "m")]),
        Some(format!("{:?}", DebugValue::Gauge(1.0.into())))
    );
}
