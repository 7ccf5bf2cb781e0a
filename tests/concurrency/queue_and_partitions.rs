use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use tower::{Layer, Service, ServiceExt};
use tower_rampart::concurrency::{ConcurrencyLimitLayer, Criticality, Fixed, QueueOrder};

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

fn req_with(id: &str, class: Option<&str>) -> Req {
    let mut b = Request::builder().header("x-id", id);
    if let Some(c) = class {
        b = b.header("x-criticality", c);
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// A handler taking `ms`, logging the order in which requests start.
fn logging(
    ms: u64,
    log: Arc<Mutex<Vec<String>>>,
) -> impl Service<
    Req,
    Response = Res,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Res, Infallible>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |req: Req| {
        let log = Arc::clone(&log);
        async move {
            let id = req.headers()["x-id"].to_str().unwrap().to_owned();
            log.lock().unwrap().push(id);
            tokio::time::sleep(Duration::from_millis(ms)).await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::new())))
        }
    })
}

/// Starts a request now (spawned), returning its status when it ends.
fn start<S, B>(svc: &S, r: Req) -> tokio::task::JoinHandle<u16>
where
    S: Service<Req, Response = Response<B>, Error = Infallible> + Clone + Send + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    let svc = svc.clone();
    tokio::spawn(async move { svc.oneshot(r).await.unwrap().status().as_u16() })
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

async fn order_of(order: QueueOrder) -> Vec<String> {
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = ConcurrencyLimitLayer::builder()
        .limit(Fixed::new(1))
        .queue(10, Duration::from_secs(1))
        .queue_order(order)
        .build()
        .unwrap();
    let svc = layer.layer(logging(10, Arc::clone(&log)));
    let mut handles = vec![start(&svc, req_with("first", None))];
    settle().await;
    for id in ["a", "b", "c"] {
        handles.push(start(&svc, req_with(id, None)));
        settle().await;
    }
    assert_eq!(layer.queued(), 3);
    for h in handles {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(layer.queued(), 0);
    assert_eq!(layer.in_flight(), 0);
    log.lock().unwrap().clone()
}

#[tokio::test(start_paused = true)]
async fn queue_fifo_serves_the_oldest_first() {
    assert_eq!(order_of(QueueOrder::Fifo).await, ["first", "a", "b", "c"]);
}

#[tokio::test(start_paused = true)]
async fn queue_lifo_serves_the_newest_first() {
    // Netflix's LIFO for servers: the newest waiter is likeliest to still
    // have a caller. Translates concurrency-limits'
    // `LifoBlockingLimiterTest.verifyFifoOrder` (which checks the reverse
    // order of arrival).
    assert_eq!(order_of(QueueOrder::Lifo).await, ["first", "c", "b", "a"]);
}

#[tokio::test(start_paused = true)]
async fn queue_wait_expires_and_a_full_queue_refuses() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = ConcurrencyLimitLayer::builder()
        .limit(Fixed::new(1))
        .queue(1, Duration::from_millis(50))
        .build()
        .unwrap();
    let svc = layer.layer(logging(200, Arc::clone(&log)));
    let busy = start(&svc, req_with("busy", None));
    settle().await;
    let t0 = tokio::time::Instant::now();
    let waiter = start(&svc, req_with("waiter", None));
    settle().await;
    assert_eq!(layer.queued(), 1);
    // The queue holds one: the next is refused at once.
    let full = start(&svc, req_with("full", None));
    assert_eq!(full.await.unwrap(), 503);
    assert_eq!(t0.elapsed(), Duration::ZERO);
    // The waiter gives up after 50 ms.
    assert_eq!(waiter.await.unwrap(), 503);
    assert_eq!(t0.elapsed(), Duration::from_millis(50));
    assert_eq!(layer.queued(), 0);
    assert_eq!(busy.await.unwrap(), 200);
    assert_eq!(*log.lock().unwrap(), ["busy"]);
}

#[tokio::test(start_paused = true)]
async fn a_waiter_that_goes_away_frees_its_place() {
    let log = Arc::new(Mutex::new(Vec::new()));
    let layer = ConcurrencyLimitLayer::builder()
        .limit(Fixed::new(1))
        .queue(1, Duration::from_secs(1))
        .build()
        .unwrap();
    let svc = layer.layer(logging(100, Arc::clone(&log)));
    let busy = start(&svc, req_with("busy", None));
    settle().await;
    let gone = start(&svc, req_with("gone", None));
    settle().await;
    assert_eq!(layer.queued(), 1);
    gone.abort();
    settle().await;
    assert_eq!(layer.queued(), 0);
    // Its place is free for the next one, which gets the slot.
    let next = start(&svc, req_with("next", None));
    settle().await;
    assert_eq!(layer.queued(), 1);
    assert_eq!(busy.await.unwrap(), 200);
    assert_eq!(next.await.unwrap(), 200);
    assert_eq!(*log.lock().unwrap(), ["busy", "next"]);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn the_wait_never_outlasts_the_requests_deadline() {
    let layer = ConcurrencyLimitLayer::builder()
        .limit(Fixed::new(1))
        .queue(4, Duration::from_secs(10))
        .build()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let limited = layer.layer(logging(1000, log));
    // The timeout outside sets a 300 ms deadline; waiting longer is useless.
    let svc = tower_rampart::TimeoutLayer::new(Duration::from_millis(300))
        .unwrap()
        .layer(limited);
    let busy = start(&svc, req_with("busy", None));
    settle().await;
    let t0 = tokio::time::Instant::now();
    let waiter = start(&svc, req_with("waiter", None));
    let status = waiter.await.unwrap();
    assert_eq!(t0.elapsed(), Duration::from_millis(300));
    // Refused by our queue at the deadline or answered 504 by the timeout:
    // either way it did not wait longer.
    assert!(status == 503 || status == 504, "{status}");
    assert_eq!(busy.await.unwrap(), 504);
}

fn partitioned(trust: bool) -> ConcurrencyLimitLayer {
    ConcurrencyLimitLayer::builder()
        .limit(Fixed::new(10))
        .partition(Criticality::Critical, 0.5)
        .partition(Criticality::Default, 0.2)
        .partition(Criticality::Sheddable, 0.0)
        .criticality_header(http::HeaderName::from_static("x-criticality"))
        .trust_criticality_header(trust)
        .build()
        .unwrap()
}

#[tokio::test(start_paused = true)]
async fn classes_borrow_free_capacity_and_sheddable_is_refused_first() {
    let layer = partitioned(true);
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = layer.layer(logging(100, log));
    // Sheddable batch traffic borrows the whole idle limit.
    let mut batch = Vec::new();
    for i in 0..10 {
        batch.push(start(&svc, req_with(&format!("s{i}"), Some("sheddable"))));
    }
    settle().await;
    assert_eq!(layer.in_flight_of(Criticality::Sheddable), 10);
    // At the limit: more sheddable is refused...
    assert_eq!(
        start(&svc, req_with("s", Some("sheddable"))).await.unwrap(),
        503
    );
    // ...critical still gets its guaranteed 5 slots, default its 2.
    let crit: Vec<_> = (0..6)
        .map(|i| start(&svc, req_with(&format!("c{i}"), Some("critical"))))
        .collect();
    let dflt: Vec<_> = (0..3)
        .map(|i| start(&svc, req_with(&format!("d{i}"), None)))
        .collect();
    let mut crit_ok = 0;
    for h in crit {
        crit_ok += usize::from(h.await.unwrap() == 200);
    }
    let mut dflt_ok = 0;
    for h in dflt {
        dflt_ok += usize::from(h.await.unwrap() == 200);
    }
    assert_eq!((crit_ok, dflt_ok), (5, 2));
    for h in batch {
        assert_eq!(h.await.unwrap(), 200);
    }
    assert_eq!(layer.in_flight(), 0);
    for class in Criticality::ALL {
        assert_eq!(layer.in_flight_of(class), 0);
    }
}

#[tokio::test(start_paused = true)]
async fn attacker_cannot_claim_critical_through_an_untrusted_header() {
    // The header is not trusted (the default): `critical` counts as
    // `default`, so a flood of self-declared critical requests gets the
    // default share only, and genuine critical traffic (chosen by the
    // operator's classifier, not the client) keeps its guarantee.
    let layer = partitioned(false);
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = layer.layer(logging(100, log));
    let mut flood = Vec::new();
    for i in 0..20 {
        flood.push(start(&svc, req_with(&format!("x{i}"), Some("critical"))));
        settle().await;
    }
    assert_eq!(layer.in_flight_of(Criticality::Critical), 0);
    assert_eq!(layer.in_flight_of(Criticality::Default), 10);
    let mut ok = 0;
    for h in flood {
        ok += usize::from(h.await.unwrap() == 200);
    }
    // The whole idle limit, by borrowing; never the critical share on top.
    assert_eq!(ok, 10);
    // A client may still lower its own class.
    let h = start(&svc, req_with("batch", Some("sheddable")));
    settle().await;
    assert_eq!(layer.in_flight_of(Criticality::Sheddable), 1);
    assert_eq!(h.await.unwrap(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_classifier_closure_reads_what_authentication_put_in_extensions() {
    #[derive(Clone)]
    struct Interactive;
    let layer = ConcurrencyLimitLayer::builder()
        .limit(Fixed::new(2))
        .partition(Criticality::Critical, 0.5)
        .classify(|r| {
            if r.extensions.get::<Interactive>().is_some() {
                Criticality::Critical
            } else {
                Criticality::Sheddable
            }
        })
        .build()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = layer.layer(logging(100, log));
    let a = start(&svc, req_with("a", None));
    let b = start(&svc, req_with("b", None));
    settle().await;
    assert_eq!(start(&svc, req_with("c", None)).await.unwrap(), 503);
    let mut r = req_with("i", None);
    r.extensions_mut().insert(Interactive);
    assert_eq!(start(&svc, r).await.unwrap(), 200);
    assert_eq!(a.await.unwrap(), 200);
    assert_eq!(b.await.unwrap(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_raised_limit_admits_waiters_at_once() {
    // concurrency-limits' `LifoBlockingLimiterTest.adaptWhenLimitIncreases`:
    // a limit raised while the limiter is full admits without waiting for a
    // release.
    let rec = crate::rules::Recorder::default();
    let layer = ConcurrencyLimitLayer::builder()
        .limit(rec.algorithm(2))
        .queue(10, Duration::from_secs(1))
        .build()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let svc = layer.layer(logging(100, Arc::clone(&log)));
    let quick = layer.layer(logging(1, Arc::clone(&log)));
    let a = start(&svc, req_with("a", None));
    let b = start(&quick, req_with("b", None));
    settle().await;
    let waiter = start(&svc, req_with("w", None));
    settle().await;
    // `b` ends after 1 ms; the algorithm raises the limit to 3 on its
    // sample: the raise admits the waiter, `b`'s release frees one more.
    *rec.next_limit.lock().unwrap() = Some(3);
    assert_eq!(b.await.unwrap(), 200);
    settle().await;
    assert_eq!(layer.limit(), 3);
    assert_eq!(layer.queued(), 0);
    // One more fits at once, without a release.
    let t0 = tokio::time::Instant::now();
    let c = start(&svc, req_with("c", None));
    settle().await;
    assert_eq!(layer.in_flight(), 3);
    assert_eq!(t0.elapsed(), Duration::ZERO);
    for h in [a, waiter, c] {
        assert_eq!(h.await.unwrap(), 200);
    }
}

#[tokio::test(start_paused = true)]
async fn no_slot_is_lost_when_a_release_races_the_wait_expiry() {
    // concurrency-limits' `LifoBlockingLimiterTest.timeoutAcquireRaceCondition`:
    // a slot released at the instant waiters time out is either taken by
    // one of them or given back, never lost.
    let layer = ConcurrencyLimitLayer::builder()
        .limit(Fixed::new(4))
        .queue(1000, Duration::from_millis(10))
        .build()
        .unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let long = layer.layer(logging(1_000_000, Arc::clone(&log)));
    let _held: Vec<_> = (0..3)
        .map(|i| start(&long, req_with(&format!("h{i}"), None)))
        .collect();
    settle().await;
    for round in 0..10 {
        // The last slot, released exactly when the waiters give up.
        let last = layer.layer(logging(10, Arc::clone(&log)));
        let one = start(&last, req_with("last", None));
        settle().await;
        let waiters: Vec<_> = (0..10)
            .map(|i| start(&last, req_with(&format!("w{round}-{i}"), None)))
            .collect();
        let mut served = 0;
        for w in waiters {
            served += usize::from(w.await.unwrap() == 200);
        }
        assert_eq!(one.await.unwrap(), 200);
        settle().await;
        assert!(served <= 10);
        assert_eq!(layer.queued(), 0, "round {round}");
        assert_eq!(
            layer.in_flight(),
            3,
            "round {round}: a slot was lost or leaked"
        );
    }
}
