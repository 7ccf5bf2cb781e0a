use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_rampart::concurrency::{ConcurrencyLimitLayer, Fixed, LimitAlgorithm, Outcome, Sample};
use tower_rampart::rejection::Refused;
use tower_rampart::{Rejection, RejectionKind, TimeoutLayer};

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

/// A fixed limit that records every sample it is given, and can be told
/// to move the limit.
#[derive(Clone, Default)]
pub(crate) struct Recorder {
    pub(crate) samples: Arc<Mutex<Vec<Sample>>>,
    pub(crate) next_limit: Arc<Mutex<Option<usize>>>,
}

pub(crate) struct Recording {
    limit: usize,
    rec: Recorder,
}

impl Recorder {
    pub(crate) fn algorithm(&self, limit: usize) -> Recording {
        Recording {
            limit,
            rec: self.clone(),
        }
    }

    pub(crate) fn outcomes(&self) -> Vec<Outcome> {
        self.samples
            .lock()
            .unwrap()
            .iter()
            .map(|s| s.outcome)
            .collect()
    }
}

impl LimitAlgorithm for Recording {
    fn initial_limit(&self) -> usize {
        self.limit
    }

    fn update(&mut self, sample: &Sample) -> usize {
        self.rec.samples.lock().unwrap().push(*sample);
        if let Some(l) = self.rec.next_limit.lock().unwrap().take() {
            self.limit = l;
        }
        self.limit
    }
}

fn req() -> Req {
    Request::new(Full::new(Bytes::new()))
}

fn grpc_req() -> Req {
    Request::builder()
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap()
}

/// A handler that sleeps `ms` then answers `status` (and `grpc-status`
/// when given).
fn slow(
    ms: u64,
    status: u16,
    grpc: Option<&'static str>,
) -> impl Service<
    Req,
    Response = Res,
    Error = Infallible,
    Future = impl std::future::Future<Output = Result<Res, Infallible>> + Send,
> + Clone {
    tower::service_fn(move |_req: Req| async move {
        tokio::time::sleep(Duration::from_millis(ms)).await;
        let mut res = Response::builder().status(status);
        if let Some(g) = grpc {
            res = res.header("grpc-status", g);
        }
        Ok::<_, Infallible>(res.body(Full::new(Bytes::from_static(b"ok"))).unwrap())
    })
}

#[tokio::test(start_paused = true)]
async fn admits_up_to_the_limit_and_refuses_the_rest_at_once() {
    let layer = ConcurrencyLimitLayer::fixed(2);
    let mut svc = layer.layer(slow(100, 200, None));
    let a = tokio::spawn(svc.ready().await.unwrap().call(req()));
    let b = tokio::spawn(svc.ready().await.unwrap().call(req()));
    tokio::task::yield_now().await;
    assert_eq!(layer.in_flight(), 2);

    // HTTP: 503, Retry-After, a short problem+json body, the marker.
    let start = tokio::time::Instant::now();
    let res = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(start.elapsed(), Duration::ZERO, "refused at once");
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    assert_eq!(
        res.extensions().get::<Refused>().unwrap().kind(),
        RejectionKind::Overloaded
    );
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(body.len() < 300, "{}", body.len());
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["type"], "urn:tower-rampart:problem:overloaded");

    // gRPC: trailers-only UNAVAILABLE with the retry pushback.
    let res = svc.ready().await.unwrap().call(grpc_req()).await.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["grpc-status"], "14");
    assert_eq!(res.headers()["grpc-retry-pushback-ms"], "1000");

    assert_eq!(a.await.unwrap().unwrap().status(), 200);
    assert_eq!(b.await.unwrap().unwrap().status(), 200);
    assert_eq!(layer.in_flight(), 0);
    // Free again.
    let res = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(res.status(), 200);
}

#[tokio::test(start_paused = true)]
async fn error_mode_refuses_with_a_typed_error() {
    let layer = ConcurrencyLimitLayer::builder()
        .name("typed")
        .limit(Fixed::new(1))
        .retry_after(Duration::from_millis(2500))
        .build()
        .unwrap()
        .into_error_mode();
    let mut svc = layer.layer(tower::service_fn(|x: Req| async move {
        tokio::time::sleep(Duration::from_millis(10)).await;
        Ok::<_, BoxError>(x)
    }));
    let first = svc.ready().await.unwrap().call(req());
    let err = svc.ready().await.unwrap().call(req()).await.unwrap_err();
    let r = err.downcast_ref::<Rejection>().unwrap();
    assert_eq!(r.kind(), RejectionKind::Overloaded);
    assert_eq!(r.layer(), "typed");
    assert_eq!(r.retry_after_secs(), Some(3));
    assert!(first.await.is_ok());
}

#[tokio::test(start_paused = true)]
async fn one_limit_for_every_clone_and_every_layer_call() {
    // axum's Router::layer clones the service per route: still one limit.
    let layer = ConcurrencyLimitLayer::fixed(1);
    let mut a = layer.layer(slow(50, 200, None));
    let mut b = layer.layer(slow(50, 200, None)).clone();
    let first = tokio::spawn(a.ready().await.unwrap().call(req()));
    tokio::task::yield_now().await;
    let res = b.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(res.status(), 503);
    assert_eq!(first.await.unwrap().unwrap().status(), 200);
}

#[tokio::test(start_paused = true)]
async fn a_cancelled_request_frees_its_slot_and_is_ignored() {
    let rec = Recorder::default();
    let layer = ConcurrencyLimitLayer::builder()
        .limit(rec.algorithm(1))
        .build()
        .unwrap();
    let mut svc = layer.layer(slow(1000, 200, None));
    let fut = svc.ready().await.unwrap().call(req());
    assert_eq!(layer.in_flight(), 1);
    // The client goes away after 10 ms.
    assert!(
        tokio::time::timeout(Duration::from_millis(10), fut)
            .await
            .is_err()
    );
    assert_eq!(layer.in_flight(), 0);
    assert!(rec.outcomes().is_empty(), "cancellations teach nothing");
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(req())
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(start_paused = true)]
async fn a_panicking_handler_frees_its_slot() {
    let rec = Recorder::default();
    let layer = ConcurrencyLimitLayer::builder()
        .limit(rec.algorithm(1))
        .build()
        .unwrap();
    let svc = layer.layer(tower::service_fn(|_: Req| async move {
        tokio::time::sleep(Duration::from_millis(5)).await;
        if true {
            panic!("handler bug");
        }
        Ok::<Res, Infallible>(Response::new(Full::new(Bytes::new())))
    }));
    let mut s = svc.clone();
    let joined = tokio::spawn(async move { s.ready().await.unwrap().call(req()).await }).await;
    assert!(joined.unwrap_err().is_panic());
    assert_eq!(layer.in_flight(), 0);
    assert!(rec.outcomes().is_empty());
}

#[tokio::test(start_paused = true)]
async fn outcomes_fed_to_the_algorithm() {
    async fn outcome_of<S>(svc: S, req: Req) -> (Outcome, Duration)
    where
        S: Service<Req, Response = Res, Error = Infallible> + Clone + Send + 'static,
        S::Future: Send,
    {
        let rec = Recorder::default();
        let layer = ConcurrencyLimitLayer::builder()
            .limit(rec.algorithm(10))
            .build()
            .unwrap();
        let _ = layer.layer(svc).oneshot(req).await;
        let samples = rec.samples.lock().unwrap();
        assert_eq!(samples.len(), 1);
        assert_eq!(samples[0].in_flight, 1);
        (samples[0].outcome, samples[0].rtt)
    }
    // Success, with the RTT measured from admission.
    assert_eq!(
        outcome_of(slow(120, 200, None), req()).await,
        (Outcome::Success, Duration::from_millis(120))
    );
    // 4xx and 500 are answers, not overload.
    assert_eq!(
        outcome_of(slow(1, 404, None), req()).await.0,
        Outcome::Success
    );
    assert_eq!(
        outcome_of(slow(1, 500, None), req()).await.0,
        Outcome::Success
    );
    // Downstream overload: 503, gRPC UNAVAILABLE / RESOURCE_EXHAUSTED.
    assert_eq!(
        outcome_of(slow(1, 503, None), req()).await.0,
        Outcome::Dropped
    );
    assert_eq!(
        outcome_of(slow(1, 200, Some("14")), grpc_req()).await.0,
        Outcome::Dropped
    );
    assert_eq!(
        outcome_of(slow(1, 200, Some("8")), grpc_req()).await.0,
        Outcome::Dropped
    );
    assert_eq!(
        outcome_of(slow(1, 200, Some("5")), grpc_req()).await.0,
        Outcome::Success
    );
    // `grpc-status` is read for gRPC callers only: on a plain HTTP answer
    // it is just a header.
    assert_eq!(
        outcome_of(slow(1, 200, Some("14")), req()).await.0,
        Outcome::Success
    );
}

type Timed<S> = tower_rampart::timeout::Timeout<S>;

#[tokio::test(start_paused = true)]
async fn the_servers_timeout_is_dropped_the_callers_is_ignored() {
    // The timeout layer inside: its own budget ran out (the service's
    // fault) -> Dropped; the caller's tiny grpc-timeout -> Ignored, so a
    // client cannot shrink the limit for everyone.
    let rec = Recorder::default();
    let layer = ConcurrencyLimitLayer::builder()
        .limit(rec.algorithm(10))
        .build()
        .unwrap();
    let timeout = TimeoutLayer::new(Duration::from_millis(100)).unwrap();
    let svc: Timed<_> = timeout.layer(slow(1000, 200, None));
    let mut svc = layer.layer(svc);
    let res = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(res.status(), 504);
    let attacker = Request::builder()
        .header("content-type", "application/grpc")
        .header("grpc-timeout", "1m")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = svc.ready().await.unwrap().call(attacker).await.unwrap();
    assert_eq!(res.headers()["grpc-status"], "4");
    // Ignored outcomes are not given to the algorithm at all.
    assert_eq!(rec.outcomes(), [Outcome::Dropped]);
    assert_eq!(
        rec.samples.lock().unwrap()[0].rtt,
        Duration::from_millis(100)
    );
}

#[tokio::test(start_paused = true)]
async fn dropped_by_an_outer_timeout_after_the_servers_deadline_is_dropped() {
    // The timeout layer outside: it drops our future at its deadline.
    let rec = Recorder::default();
    let layer = ConcurrencyLimitLayer::builder()
        .limit(rec.algorithm(10))
        .build()
        .unwrap();
    let svc = layer.layer(slow(1000, 200, None));
    let mut svc = TimeoutLayer::new(Duration::from_millis(200))
        .unwrap()
        .layer(svc);
    let res = svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(res.status(), 504);
    assert_eq!(rec.outcomes(), [Outcome::Dropped]);
    assert_eq!(layer.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn other_layers_refusals_are_ignored() {
    // An inner rate limit's refusal is not about capacity.
    let rec = Recorder::default();
    let layer = ConcurrencyLimitLayer::builder()
        .limit(rec.algorithm(10))
        .build()
        .unwrap();
    let rl = tower_rampart::RateLimitLayer::builder()
        .quota(tower_rampart::Quota::per_second(1))
        .build()
        .unwrap();
    let mut svc = layer.layer(rl.layer(slow(1, 200, None)));
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(req())
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        svc.ready()
            .await
            .unwrap()
            .call(req())
            .await
            .unwrap()
            .status(),
        429
    );
    assert_eq!(rec.outcomes(), [Outcome::Success]);
}

#[tokio::test(start_paused = true)]
async fn the_algorithms_limit_is_published_to_the_admit_path() {
    let rec = Recorder::default();
    let layer = ConcurrencyLimitLayer::builder()
        .limit(rec.algorithm(1))
        .build()
        .unwrap();
    let mut svc = layer.layer(slow(10, 200, None));
    assert_eq!(layer.limit(), 1);
    *rec.next_limit.lock().unwrap() = Some(3);
    svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(layer.limit(), 3);
    let calls: Vec<_> = (0..4)
        .map(|_| {
            let mut s = svc.clone();
            tokio::spawn(
                async move { s.ready().await.unwrap().call(req()).await.unwrap().status() },
            )
        })
        .collect();
    let mut statuses = Vec::new();
    for c in calls {
        statuses.push(c.await.unwrap().as_u16());
    }
    statuses.sort_unstable();
    assert_eq!(statuses, [200, 200, 200, 503]);
    // And down again: an algorithm answering 0 is held at 1.
    *rec.next_limit.lock().unwrap() = Some(0);
    svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(layer.limit(), 1);
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn limit_changes_are_logged_at_most_once_a_second() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    let rec = Recorder::default();
    let layer = ConcurrencyLimitLayer::builder()
        .name("logged")
        .limit(rec.algorithm(5))
        .build()
        .unwrap();
    let mut svc = layer.layer(slow(10, 200, None));
    // Three changes within a second, then one more a second later.
    for limit in [6, 7, 8] {
        *rec.next_limit.lock().unwrap() = Some(limit);
        svc.ready().await.unwrap().call(req()).await.unwrap();
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    *rec.next_limit.lock().unwrap() = Some(4);
    svc.ready().await.unwrap().call(req()).await.unwrap();
    assert_eq!(layer.limit(), 4);
    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let events: Vec<_> = text
        .lines()
        .filter(|l| l.contains("concurrency limit changed"))
        .collect();
    assert_eq!(events.len(), 2, "{text}");
    assert!(
        events[0].contains("from=5") && events[0].contains("to=6"),
        "{text}"
    );
    // The second event reports the change since the first: 6 -> 4.
    assert!(
        events[1].contains("from=6") && events[1].contains("to=4"),
        "{text}"
    );
    assert!(events[1].contains("name=logged"), "{text}");
}
