//! The circuit breaker's rules, on paused tokio time (no sockets).

use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use tokio::time::{advance, sleep};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_rampart::circuit_breaker::{
    BreakerBody, CircuitBreakerBuilder, CircuitBreakerEvent, CircuitBreakerHandle,
    CircuitBreakerLayer, CircuitCounts, CircuitState, TransitionReason,
};
use tower_rampart::classify::{Classifier, Outcome};
use tower_rampart::{Rejection, RejectionKind};

/// What the fake dependency does, from the request body:
/// `ok`, `fail` (500), `slow` (200 after 200 ms), `slowfail` (500 after
/// 200 ms), `hang` (200 after 1 h), `teapot` (418).
fn dependency() -> impl Service<
    Request<String>,
    Response = Response<String>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<String>, Infallible>> + Send,
> + Clone
+ Send {
    tower::service_fn(|req: Request<String>| async move {
        let (status, wait) = match req.body().as_str() {
            "ok" => (200, 0),
            "fail" => (500, 0),
            "slow" => (200, 200),
            "slowfail" => (500, 200),
            "hang" => (200, 3_600_000),
            "teapot" => (418, 0),
            other => panic!("unknown instruction {other}"),
        };
        if wait > 0 {
            sleep(Duration::from_millis(wait)).await;
        }
        let mut res = Response::new(format!("{status}"));
        *res.status_mut() = StatusCode::from_u16(status).unwrap();
        Ok(res)
    })
}

fn builder() -> CircuitBreakerBuilder {
    CircuitBreakerLayer::builder()
        .name("dep")
        .count_window(4)
        .minimum_calls(4)
        .failure_rate_threshold(50.0)
        .open_duration(Duration::from_secs(10))
        .half_open_permits(2)
}

type Svc = tower::util::BoxCloneSyncService<Request<String>, Reply, Infallible>;

#[derive(Debug)]
struct Reply {
    status: u16,
    retry_after: Option<String>,
    body: String,
}

fn service(layer: &CircuitBreakerLayer) -> Svc {
    let svc = layer.layer(dependency()).map_response(|res| {
        let (parts, body) = res.into_parts();
        let retry_after = parts
            .headers
            .get("retry-after")
            .map(|v| v.to_str().unwrap().to_owned());
        (parts.status.as_u16(), retry_after, body)
    });
    tower::util::BoxCloneSyncService::new(svc.and_then(
        |(status, retry_after, body): (u16, Option<String>, BreakerBody<String>)| async move {
            let body = body.collect().await.unwrap().to_bytes();
            Ok::<_, Infallible>(Reply {
                status,
                retry_after,
                body: String::from_utf8(body.to_vec()).unwrap(),
            })
        },
    ))
}

async fn call(svc: &Svc, what: &str) -> Reply {
    svc.clone()
        .oneshot(Request::new(what.to_owned()))
        .await
        .unwrap()
}

async fn calls(svc: &Svc, whats: &[&str]) -> Vec<u16> {
    let mut out = Vec::new();
    for w in whats {
        out.push(call(svc, w).await.status);
    }
    out
}

/// Lets spawned tasks (the breaker's timers) run.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(start_paused = true)]
async fn trips_exactly_at_the_failure_rate_threshold() {
    let layer = builder().build().unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    // 1 failure in 4 = 25 %: stays closed.
    calls(&svc, &["ok", "ok", "ok", "fail"]).await;
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(h.counts().failure_rate, Some(25.0));
    // The window slides: the oldest ok leaves, 2 of 4 = 50 % = threshold.
    calls(&svc, &["fail"]).await;
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn minimum_calls_not_met_keeps_it_closed() {
    let layer = builder().count_window(10).minimum_calls(5).build().unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    calls(&svc, &["fail", "fail", "fail", "fail"]).await;
    assert_eq!(h.state(), CircuitState::Closed);
    let c = h.counts();
    assert_eq!((c.calls, c.failures, c.failure_rate), (4, 4, None));
    calls(&svc, &["ok"]).await; // 5th call: 80 %
    assert_eq!(h.state(), CircuitState::Open);
}

#[tokio::test(start_paused = true)]
async fn open_refuses_with_the_remaining_time_then_half_opens() {
    // Opt-in timer (the default waits for a call: see tests/conformance).
    let layer = builder().auto_half_open(true).build().unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    calls(&svc, &["fail", "fail", "fail", "fail"]).await;
    assert_eq!(h.state(), CircuitState::Open);

    let r = call(&svc, "ok").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.retry_after.as_deref(), Some("10"));
    let json: serde_json::Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(json["type"], "urn:tower-rampart:problem:circuit-open");

    advance(Duration::from_millis(7_500)).await;
    let r = call(&svc, "ok").await;
    assert_eq!(r.retry_after.as_deref(), Some("3"));
    assert_eq!(h.open_remaining(), Some(Duration::from_millis(2_500)));

    // The timer moves it to half-open without any call.
    advance(Duration::from_millis(2_500)).await;
    settle().await;
    assert_eq!(h.state(), CircuitState::HalfOpen);
    // Two successful trials close it.
    assert_eq!(calls(&svc, &["ok", "ok"]).await, [200, 200]);
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(h.counts().calls, 0, "closing starts a fresh window");
}

#[tokio::test(start_paused = true)]
async fn open_moves_lazily_on_a_call_too() {
    let layer = builder().build().unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    calls(&svc, &["fail", "fail", "fail", "fail"]).await;
    advance(Duration::from_secs(10)).await;
    // No settle(): the call itself notices the open time is over.
    assert_eq!(call(&svc, "ok").await.status, 200);
    assert_eq!(h.state(), CircuitState::HalfOpen);
}

async fn trip_and_half_open(svc: &Svc, open_for: Duration) {
    calls(svc, &["fail", "fail", "fail", "fail"]).await;
    advance(open_for).await;
    settle().await;
}

#[tokio::test(start_paused = true)]
async fn half_open_lets_only_its_permits_through() {
    let layer = builder().auto_half_open(true).build().unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    trip_and_half_open(&svc, Duration::from_secs(10)).await;
    assert_eq!(h.state(), CircuitState::HalfOpen);
    let a = tokio::spawn(call_owned(svc.clone(), "slow"));
    let b = tokio::spawn(call_owned(svc.clone(), "slow"));
    settle().await;
    // Both permits are taken: the third call is refused, told to come back
    // in a second (the trials decide soon).
    let r = call(&svc, "ok").await;
    assert_eq!(r.status, 503);
    assert_eq!(r.retry_after.as_deref(), Some("1"));
    assert_eq!(a.await.unwrap().status, 200);
    assert_eq!(b.await.unwrap().status, 200);
    assert_eq!(h.state(), CircuitState::Closed);
}

async fn call_owned(svc: Svc, what: &'static str) -> Reply {
    call(&svc, what).await
}

#[tokio::test(start_paused = true)]
async fn failed_trials_reopen_with_growing_backoff_that_resets_on_close() {
    let opens = Arc::new(Mutex::new(Vec::new()));
    let seen = opens.clone();
    let layer = builder()
        .auto_half_open(true)
        .open_duration(Duration::from_secs(1))
        .backoff(2.0, Duration::from_secs(5), 0.0)
        .on_event(move |e| {
            if let CircuitBreakerEvent::Transition {
                to: CircuitState::Open,
                open_for,
                ..
            } = e
            {
                seen.lock().unwrap().push(open_for.unwrap());
            }
        })
        .build()
        .unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    trip_and_half_open(&svc, Duration::from_secs(1)).await;
    for expected in [2, 4, 5, 5] {
        assert_eq!(h.state(), CircuitState::HalfOpen);
        calls(&svc, &["fail", "ok"]).await; // 50 % of the trials failed
        assert_eq!(h.state(), CircuitState::Open);
        assert_eq!(h.open_remaining(), Some(Duration::from_secs(expected)));
        advance(Duration::from_secs(expected)).await;
        settle().await;
    }
    calls(&svc, &["ok", "ok"]).await;
    assert_eq!(h.state(), CircuitState::Closed);
    calls(&svc, &["fail", "fail", "fail", "fail"]).await;
    assert_eq!(
        h.open_remaining(),
        Some(Duration::from_secs(1)),
        "reset on close"
    );
    let opens: Vec<u64> = opens.lock().unwrap().iter().map(|d| d.as_secs()).collect();
    assert_eq!(opens, [1, 2, 4, 5, 5, 1]);
}

#[tokio::test(start_paused = true)]
async fn jitter_stays_within_its_bounds() {
    let layer = builder()
        .open_duration(Duration::from_secs(10))
        .backoff(1.0, Duration::from_secs(10), 0.5)
        .build()
        .unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    let mut seen = Vec::new();
    trip_and_half_open(&svc, Duration::ZERO).await;
    let first = h.open_remaining().unwrap();
    seen.push(first);
    for _ in 0..10 {
        advance(Duration::from_secs(15)).await;
        settle().await;
        calls(&svc, &["fail", "fail"]).await;
        seen.push(h.open_remaining().unwrap());
    }
    for d in &seen {
        assert!(
            *d >= Duration::from_secs(5) && *d <= Duration::from_secs(15),
            "{d:?}"
        );
    }
    assert!(
        seen.iter().any(|d| *d != seen[0]),
        "jitter varies: {seen:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn half_open_max_wait_reopens_and_late_trials_do_not_count() {
    let layer = builder()
        .auto_half_open(true)
        .max_wait_in_half_open(Duration::from_secs(30))
        .build()
        .unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    trip_and_half_open(&svc, Duration::from_secs(10)).await;
    let hung_a = tokio::spawn(call_owned(svc.clone(), "hang"));
    let hung_b = tokio::spawn(call_owned(svc.clone(), "hang"));
    settle().await;
    assert_eq!(call(&svc, "ok").await.status, 503);
    advance(Duration::from_secs(30)).await;
    settle().await;
    assert_eq!(
        h.state(),
        CircuitState::Open,
        "it never sticks in half-open"
    );
    // The hung trials finish much later, during a later generation.
    advance(Duration::from_secs(10)).await;
    settle().await;
    assert_eq!(h.state(), CircuitState::HalfOpen);
    advance(Duration::from_secs(3_600)).await;
    assert_eq!(hung_a.await.unwrap().status, 200);
    assert_eq!(hung_b.await.unwrap().status, 200);
    // ... but their successes did not close the new half-open (which, with
    // no trial of its own in flight, is quiet, not stuck: it stays).
    assert_eq!(h.state(), CircuitState::HalfOpen);
    assert_eq!(h.counts().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn dropped_futures_release_their_permit_as_ignored() {
    let layer = builder().half_open_permits(1).build().unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    // Closed: a dropped call is not counted.
    drop(svc.clone().oneshot(Request::new("fail".to_owned())));
    let mut fut = Box::pin(svc.clone().oneshot(Request::new("hang".to_owned())));
    assert!(futures_poll_once(fut.as_mut()).await.is_none());
    drop(fut);
    assert_eq!(h.counts().calls, 0);

    trip_and_half_open(&svc, Duration::from_secs(10)).await;
    let mut trial = Box::pin(svc.clone().oneshot(Request::new("hang".to_owned())));
    assert!(futures_poll_once(trial.as_mut()).await.is_none());
    assert_eq!(
        call(&svc, "ok").await.status,
        503,
        "the only permit is taken"
    );
    drop(trial); // client gone: the permit comes back
    assert_eq!(call(&svc, "ok").await.status, 200);
    assert_eq!(h.state(), CircuitState::Closed);
}

async fn futures_poll_once<F: Future + Unpin>(mut f: F) -> Option<F::Output> {
    std::future::poll_fn(|cx| {
        std::task::Poll::Ready(match std::pin::Pin::new(&mut f).poll(cx) {
            std::task::Poll::Ready(v) => Some(v),
            std::task::Poll::Pending => None,
        })
    })
    .await
}

#[tokio::test(start_paused = true)]
async fn late_results_do_not_touch_the_new_state() {
    let layer = builder().build().unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    // Two slow failures admitted while closed ...
    let late_a = tokio::spawn(call_owned(svc.clone(), "slowfail"));
    let late_b = tokio::spawn(call_owned(svc.clone(), "slowfail"));
    settle().await;
    // ... then the breaker trips and is reset by hand.
    calls(&svc, &["fail", "fail", "fail", "fail"]).await;
    assert_eq!(h.state(), CircuitState::Open);
    h.reset();
    calls(&svc, &["ok", "ok"]).await;
    advance(Duration::from_millis(200)).await;
    assert_eq!(late_a.await.unwrap().status, 500);
    assert_eq!(late_b.await.unwrap().status, 500);
    let c = h.counts();
    assert_eq!((c.state, c.calls, c.failures), (CircuitState::Closed, 2, 0));
    // Had they counted, 2 of 4 would have tripped it.
    calls(&svc, &["ok", "ok"]).await;
    assert_eq!(h.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn slow_call_rate_trips() {
    let layer = builder()
        .slow_call_duration_threshold(Duration::from_millis(100))
        .slow_call_rate_threshold(50.0)
        .build()
        .unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    // Sequential slow calls: each takes 200 ms of paused time.
    calls(&svc, &["ok", "slow", "ok"]).await;
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(h.counts().slow_calls, 1);
    calls(&svc, &["slow"]).await;
    assert_eq!(h.state(), CircuitState::Open);
    assert_eq!(h.counts().slow_call_rate, Some(50.0));
}

#[tokio::test(start_paused = true)]
async fn slow_call_is_strictly_longer_than_the_threshold() {
    let layer = builder()
        .slow_call_duration_threshold(Duration::from_millis(200))
        .slow_call_rate_threshold(25.0)
        .build()
        .unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    calls(&svc, &["slow", "slow", "slow", "slow"]).await; // exactly 200 ms
    assert_eq!(h.counts().slow_calls, 0);
    assert_eq!(h.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn consecutive_failures_trip_regardless_of_the_window() {
    let reasons = Arc::new(Mutex::new(Vec::new()));
    let seen = reasons.clone();
    let layer = builder()
        .count_window(100)
        .minimum_calls(100)
        .consecutive_failures(3)
        .on_event(move |e| {
            if let CircuitBreakerEvent::Transition { reason, .. } = e {
                seen.lock().unwrap().push(*reason);
            }
        })
        .build()
        .unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    calls(&svc, &["fail", "fail", "ok", "fail", "fail"]).await;
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(h.counts().consecutive_failures, 2);
    calls(&svc, &["fail"]).await;
    assert_eq!(h.state(), CircuitState::Open);
    assert_eq!(
        *reasons.lock().unwrap(),
        [TransitionReason::ConsecutiveFailures]
    );
}

/// A breaker with a time window of `secs` seconds in `buckets` buckets
/// judging from `minimum_calls` calls on (the rest from [`builder`]): its
/// handle and service.
fn time_window(secs: u64, buckets: u32, minimum_calls: u32) -> (CircuitBreakerHandle, Svc) {
    let layer = builder()
        .time_window(Duration::from_secs(secs), buckets)
        .minimum_calls(minimum_calls)
        .build()
        .unwrap();
    (layer.handle(), service(&layer))
}

#[tokio::test(start_paused = true)]
async fn time_window_rolls_buckets_over() {
    let (h, svc) = time_window(10, 10, 2);
    calls(&svc, &["fail"]).await;
    advance(Duration::from_millis(9_999)).await;
    assert_eq!(h.counts().failures, 1, "still inside the last 10 s");
    advance(Duration::from_millis(1)).await;
    assert_eq!(h.counts().calls, 0, "its bucket rolled out");
    calls(&svc, &["ok", "fail"]).await; // 1 of 2 = 50 %
    assert_eq!(h.state(), CircuitState::Open);
}

/// A time window counts the successes that cannot change its verdict
/// without its lock (per thread, folded into their buckets whenever the
/// lock is taken): every one of them still counts, in its own bucket, and
/// the breaker trips on exactly the call it would trip on otherwise.
#[tokio::test(start_paused = true)]
async fn time_window_successes_all_count_and_trip_on_the_same_call() {
    let (h, svc) = time_window(30, 10, 10);
    // 20 successes: from the 10th on, the window can take more without a
    // new verdict.
    calls(&svc, &["ok"; 20]).await;
    assert_eq!(h.counts().calls, 20);
    // 19 failures: 19 of 39 < 50 %, closed; the 20th makes 20 of 40.
    calls(&svc, &["fail"; 19]).await;
    assert_eq!(h.state(), CircuitState::Closed, "{:?}", h.counts());
    calls(&svc, &["fail"]).await;
    assert_eq!(h.state(), CircuitState::Open);
    assert_eq!((h.counts().calls, h.counts().failures), (40, 20));
}

/// The success that brings a time window to `minimum_calls` can trip it
/// (Resilience4j judges the rates after every call once the minimum is
/// reached): below the minimum every call is judged.
#[tokio::test(start_paused = true)]
async fn time_window_trips_on_the_success_that_reaches_the_minimum() {
    let (h, svc) = time_window(30, 10, 10);
    calls(&svc, &["fail"; 5]).await;
    calls(&svc, &["ok"; 4]).await;
    assert_eq!(h.state(), CircuitState::Closed);
    calls(&svc, &["ok"]).await; // 5 of 10
    assert_eq!(h.state(), CircuitState::Open);
}

/// Successes counted without the lock sit in the bucket of their time and
/// leave the window with it; old calls leaving can raise the failure rate
/// again, and the next call sees it.
#[tokio::test(start_paused = true)]
async fn time_window_successes_leave_with_their_bucket() {
    let (h, svc) = time_window(10, 10, 4);
    calls(&svc, &["ok"; 30]).await;
    advance(Duration::from_secs(5)).await;
    calls(&svc, &["fail", "ok", "ok", "fail"]).await;
    assert_eq!((h.counts().calls, h.counts().failures), (34, 2));
    // The 30 early successes leave: 2 failures of 4 calls remain.
    advance(Duration::from_secs(5)).await;
    assert_eq!((h.counts().calls, h.counts().failures), (4, 2));
    // A success now: 2 of 5 = 40 %, still closed; a failure: 3 of 6.
    calls(&svc, &["ok"]).await;
    assert_eq!(h.state(), CircuitState::Closed);
    calls(&svc, &["fail"]).await;
    assert_eq!(h.state(), CircuitState::Open);
}

/// Two threads adding successes to one time window at once: none is lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn time_window_successes_on_many_threads_add_up() {
    let layer = builder()
        .time_window(Duration::from_secs(3600), 1)
        .minimum_calls(10)
        .build()
        .unwrap();
    let c = four_tasks(&layer, 2_000, 100).await;
    assert_eq!((c.calls, c.failures), (8_000, 80));
}

#[tokio::test(start_paused = true)]
async fn time_window_with_few_calls_stays_closed() {
    let (h, svc) = time_window(10, 5, 3);
    for _ in 0..5 {
        calls(&svc, &["fail"]).await;
        advance(Duration::from_secs(6)).await; // never 3 calls within 10 s
    }
    assert_eq!(h.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn manual_modes() {
    let layer = builder().build().unwrap();
    let h = layer.handle();
    let svc = service(&layer);

    h.force_open();
    let r = call(&svc, "ok").await;
    // No end time: callers are asked to come back after one open duration.
    assert_eq!((r.status, r.retry_after.as_deref()), (503, Some("10")));
    advance(Duration::from_secs(3_600)).await;
    settle().await;
    assert_eq!(
        h.state(),
        CircuitState::ForcedOpen,
        "isolation does not expire"
    );

    h.disable();
    calls(&svc, &["fail"; 10]).await;
    assert_eq!(h.state(), CircuitState::Disabled);
    assert_eq!(h.counts().calls, 0, "disabled records nothing");

    h.metrics_only();
    calls(&svc, &["fail"; 10]).await;
    assert_eq!(h.state(), CircuitState::MetricsOnly);
    assert_eq!(h.counts().failures, 4, "recorded, never tripped");

    h.reset();
    assert_eq!(h.state(), CircuitState::Closed);
    assert_eq!(h.counts().calls, 0);
}

#[tokio::test(start_paused = true)]
async fn ignored_outcomes_are_not_counted() {
    let layer = builder()
        .classifier(
            Classifier::default().http_fn(|status, _| match status.as_u16() {
                418 => Outcome::Ignored,
                s if s >= 500 => Outcome::Failure,
                _ => Outcome::Success,
            }),
        )
        .build()
        .unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    calls(&svc, &["teapot", "teapot", "fail", "teapot"]).await;
    let c = h.counts();
    assert_eq!((c.calls, c.failures), (1, 1));
    assert_eq!(h.state(), CircuitState::Closed);
}

#[tokio::test(start_paused = true)]
async fn clones_and_layer_calls_share_one_breaker() {
    let layer = builder().build().unwrap();
    let h = layer.handle();
    let a = service(&layer);
    let b = service(&layer.clone());
    calls(&a, &["fail", "fail"]).await;
    calls(&b, &["fail", "fail"]).await;
    assert_eq!(h.state(), CircuitState::Open);
    assert_eq!(call(&a, "ok").await.status, 503);
    // A new layer value is a new breaker.
    let other = service(&builder().build().unwrap());
    assert_eq!(call(&other, "ok").await.status, 200);
}

#[tokio::test(start_paused = true)]
async fn events_reach_the_callback_outside_the_locks() {
    let events = Arc::new(Mutex::new(Vec::new()));
    let seen = events.clone();
    let slot: Arc<Mutex<Option<tower_rampart::circuit_breaker::CircuitBreakerHandle>>> =
        Arc::default();
    let slot2 = slot.clone();
    let layer = builder()
        .on_event(move |e| {
            // Using the handle from the callback must not deadlock.
            if let Some(h) = slot2.lock().unwrap().as_ref() {
                let _ = h.counts();
            }
            seen.lock().unwrap().push(e.clone());
        })
        .build()
        .unwrap();
    *slot.lock().unwrap() = Some(layer.handle());
    let svc = service(&layer);
    calls(&svc, &["fail", "fail", "fail", "fail", "ok"]).await;
    let events = events.lock().unwrap();
    assert!(matches!(
        &events[0],
        CircuitBreakerEvent::Transition { name, from: CircuitState::Closed, to: CircuitState::Open, reason: TransitionReason::FailureRate, open_for: Some(d) }
            if &**name == "dep" && *d == Duration::from_secs(10)
    ));
    assert!(matches!(
        &events[1],
        CircuitBreakerEvent::Rejected {
            state: CircuitState::Open,
            retry_after: Some(_),
            ..
        }
    ));
}

#[tokio::test(start_paused = true)]
async fn fallback_answers_instead_of_refusing() {
    let layer = builder().build().unwrap().fallback_fn(
        |_req: Request<String>, rejection: Rejection| async move {
            assert_eq!(rejection.kind(), RejectionKind::CircuitOpen);
            Ok::<_, Infallible>(Response::new(format!("cached ({})", rejection.layer())))
        },
    );
    let h = layer.handle();
    let svc = layer.layer(dependency());
    for _ in 0..4 {
        let res = svc
            .clone()
            .oneshot(Request::new("fail".into()))
            .await
            .unwrap();
        assert_eq!(res.status(), 500);
    }
    assert_eq!(h.state(), CircuitState::Open);
    let res = svc
        .clone()
        .oneshot(Request::new("ok".into()))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from_static(b"cached (dep)"));
    assert_eq!(h.counts().calls, 4, "fallback answers are not recorded");
}

#[tokio::test(start_paused = true)]
async fn fallback_service_answers_instead_of_refusing() {
    let cache = tower::service_fn(|_req: Request<String>| async {
        Ok::<_, Infallible>(Response::new("from cache".to_owned()))
    });
    let layer = builder().build().unwrap().fallback_service(cache);
    layer.handle().force_open();
    let svc = layer.layer(dependency());
    let res = svc.oneshot(Request::new("ok".into())).await.unwrap();
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(body, Bytes::from_static(b"from cache"));
}

#[derive(Debug)]
struct Boom(&'static str);
impl std::fmt::Display for Boom {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}
impl std::error::Error for Boom {}

#[tokio::test(start_paused = true)]
async fn error_mode_types_refusals_and_classifies_errors() {
    let layer = builder()
        .classify_error(|e| match e.downcast_ref::<Boom>() {
            Some(Boom("bad request")) => Outcome::Ignored,
            _ => Outcome::Failure,
        })
        .build()
        .unwrap()
        .into_error_mode();
    let h = layer.handle();
    let svc = layer.layer(tower::service_fn(|what: &'static str| async move {
        match what {
            "ok" => Ok(1u32),
            other => Err(Boom(other)),
        }
    }));
    for what in ["bad request", "bad request", "ok"] {
        let _ = svc.clone().oneshot(what).await;
    }
    assert_eq!(h.counts().calls, 1);
    // With the success, three failures fill the window of 4: 75 %.
    for _ in 0..3 {
        let err = svc.clone().oneshot("down").await.unwrap_err();
        assert!(err.downcast_ref::<Boom>().is_some());
    }
    assert_eq!(h.state(), CircuitState::Open);
    let err: BoxError = svc.clone().oneshot("ok").await.unwrap_err();
    let rejection = err.downcast_ref::<Rejection>().expect("a typed refusal");
    assert_eq!(rejection.kind(), RejectionKind::CircuitOpen);
    assert_eq!(rejection.layer(), "dep");
    assert_eq!(rejection.retry_after(), Some(Duration::from_secs(10)));
}

#[tokio::test(start_paused = true)]
async fn many_concurrent_tasks_add_up() {
    let layer = builder()
        .count_window(1_000)
        .minimum_calls(1_000)
        .build()
        .unwrap();
    let h = layer.handle();
    let svc = service(&layer);
    let mut tasks = Vec::new();
    for t in 0..8 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..50 {
                let what = if (t + i) % 5 == 0 { "slowfail" } else { "slow" };
                call(&svc, what).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let c = h.counts();
    assert_eq!((c.calls, c.failures), (400, 80));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_threads_add_up() {
    let layer = builder()
        .count_window(4_000)
        .minimum_calls(4_000)
        .build()
        .unwrap();
    let c = four_tasks(&layer, 500, 4).await;
    assert_eq!((c.calls, c.failures), (2_000, 500));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_on_many_threads_add_up_and_start_again_on_a_move() {
    let layer = builder().count_window(10).build().unwrap();
    let h = layer.handle();
    h.open(Duration::from_secs(3600));
    let c = four_tasks(&layer, 500, 1).await;
    assert_eq!((c.calls, c.not_permitted), (0, 2_000));
    h.close();
    assert_eq!(h.counts().not_permitted, 0, "counted since the last move");
    h.force_open();
    let c = four_tasks(&layer, 3, 1).await;
    assert_eq!(c.not_permitted, 12);
}

/// Four tasks (on the runtime's threads) call `layer`'s breaker `per_task`
/// times each, one call in `fail_every` a failure; the counts after.
async fn four_tasks(layer: &CircuitBreakerLayer, per_task: u32, fail_every: u32) -> CircuitCounts {
    let svc = service(layer);
    let mut tasks = Vec::new();
    for t in 0..4 {
        let svc = svc.clone();
        tasks.push(tokio::spawn(async move {
            for i in 0..per_task {
                let fail = (t + i) % fail_every == 0;
                call(&svc, if fail { "fail" } else { "ok" }).await;
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    layer.handle().counts()
}

#[tokio::test(start_paused = true)]
async fn keyed_breakers_are_separate_bounded_and_evicted_when_idle() {
    let layer = builder()
        .max_keys(2)
        .key_idle_timeout(Duration::from_secs(60))
        .build_keyed(|req: &Request<String>| {
            req.headers()
                .get("x-upstream")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("none")
                .to_owned()
        })
        .unwrap();
    let keys = layer.handle();
    let svc = layer.layer(dependency());
    let send = |up: &'static str, what: &'static str| {
        let svc = svc.clone();
        async move {
            let req = Request::builder()
                .header("x-upstream", up)
                .body(what.to_owned())
                .unwrap();
            svc.oneshot(req).await.unwrap().status().as_u16()
        }
    };
    assert!(keys.is_empty(), "created lazily");
    for _ in 0..4 {
        send("a", "fail").await;
    }
    assert_eq!(send("a", "ok").await, 503);
    assert_eq!(send("b", "ok").await, 200, "b has its own breaker");
    assert_eq!(keys.len(), 2);
    assert_eq!(
        keys.get(&"a".to_owned()).unwrap().state(),
        CircuitState::Open
    );

    // Full: a third key evicts the least recently used one (a).
    advance(Duration::from_secs(1)).await;
    send("b", "ok").await;
    send("c", "ok").await;
    let mut k = keys.keys();
    k.sort();
    assert_eq!(k, ["b", "c"]);
    assert_eq!(send("a", "ok").await, 200, "an evicted key starts closed");

    // Idle keys go when the next new key arrives after the idle timeout.
    advance(Duration::from_secs(61)).await;
    send("d", "ok").await;
    assert_eq!(keys.keys(), ["d"]);
}

#[tokio::test(start_paused = true)]
async fn keyed_error_mode() {
    let layer = builder()
        .build_keyed(|req: &(&'static str, bool)| req.0)
        .unwrap()
        .into_error_mode();
    let keys = layer.handle();
    let svc = layer.layer(tower::service_fn(
        |(_, ok): (&'static str, bool)| async move { if ok { Ok(()) } else { Err(Boom("down")) } },
    ));
    for _ in 0..4 {
        let _ = svc.clone().oneshot(("x", false)).await;
    }
    let err = svc.clone().oneshot(("x", true)).await.unwrap_err();
    assert!(err.downcast_ref::<Rejection>().is_some());
    svc.clone().oneshot(("y", true)).await.unwrap();
    assert_eq!(keys.get(&"x").unwrap().state(), CircuitState::Open);
}

#[test]
fn config_errors_name_the_field() {
    let e = CircuitBreakerLayer::builder()
        .count_window(5)
        .minimum_calls(6)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "minimum_calls");
    let e = CircuitBreakerLayer::builder()
        .count_window(0)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "window.size");
    let e = CircuitBreakerLayer::builder()
        .open_duration(Duration::ZERO)
        .build()
        .unwrap_err();
    assert_eq!(e.field(), "open_duration");
    let e = CircuitBreakerLayer::builder()
        .failure_rate_threshold(101.0)
        .build()
        .unwrap_err();
    assert_eq!(e.to_string(), "failure_rate_threshold: must be in (0, 100]");
    let e = CircuitBreakerLayer::builder()
        .max_keys(0)
        .build_keyed(|r: &u8| *r)
        .unwrap_err();
    assert_eq!(e.field(), "max_keys");
}

/// A typed refusal (ErrorMode) tells when to try again in every refusing
/// state: the open time left, one second in a full half-open, one open
/// duration when isolated (Polly attaches a retry-after to its
/// BrokenCircuitException; see tests/conformance/polly.rs).
#[tokio::test(start_paused = true)]
async fn typed_refusals_carry_a_retry_after_in_every_refusing_state() {
    let layer = builder()
        .half_open_permits(1)
        .build()
        .unwrap()
        .into_error_mode();
    let h = layer.handle();
    let svc = layer.layer(tower::service_fn(|wait: u64| async move {
        sleep(Duration::from_secs(wait)).await;
        Ok::<_, Infallible>(())
    }));
    let refusal = |svc: &tower::util::BoxCloneSyncService<u64, (), BoxError>| {
        let svc = svc.clone();
        async move {
            let err = svc.oneshot(0).await.unwrap_err();
            let r = err.downcast_ref::<Rejection>().expect("a typed refusal");
            (r.retry_after(), r.detail().to_owned())
        }
    };
    let svc = tower::util::BoxCloneSyncService::new(svc);
    h.open(Duration::from_secs(7));
    assert_eq!(refusal(&svc).await.0, Some(Duration::from_secs(7)));
    advance(Duration::from_secs(7)).await;
    let trial = tokio::spawn(svc.clone().oneshot(60));
    settle().await;
    assert_eq!(h.state(), CircuitState::HalfOpen);
    let (retry, detail) = refusal(&svc).await;
    assert_eq!(retry, Some(Duration::from_secs(1)));
    assert!(detail.contains("half-open"), "{detail}");
    h.force_open();
    let (retry, detail) = refusal(&svc).await;
    assert_eq!(retry, Some(Duration::from_secs(10)), "one open duration");
    assert!(detail.contains("isolated"), "{detail}");
    assert_eq!(h.counts().not_permitted, 1, "counted since the last move");
    advance(Duration::from_secs(60)).await;
    trial.await.unwrap().unwrap();
    assert_eq!(
        h.state(),
        CircuitState::ForcedOpen,
        "the late trial is void"
    );
}
