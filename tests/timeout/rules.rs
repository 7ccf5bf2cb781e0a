//! Timing rules of the timeout layer, on paused time, without sockets.

use std::convert::Infallible;
use std::future::{Future, poll_fn};
use std::io::Write;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::Poll;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::{Instant, advance};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_rampart::rejection::ResponseBody;
use tower_rampart::timeout::{Deadline, DeadlineSource, TimeoutLayer, is_timeout};
use tower_rampart::{Rejection, RejectionKind};

type Req = Request<Full<Bytes>>;
type Res = Response<Full<Bytes>>;

const MS: Duration = Duration::from_millis(1);

/// What the inner service saw.
#[derive(Clone, Default)]
struct Probe {
    calls: Arc<AtomicUsize>,
    dropped: Arc<AtomicUsize>,
    deadline: Arc<Mutex<Option<Duration>>>,
}

impl Probe {
    fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }
    fn dropped(&self) -> usize {
        self.dropped.load(Ordering::SeqCst)
    }
    /// The remaining time the handler saw in its `Deadline`, at its call.
    fn seen_remaining(&self) -> Option<Duration> {
        *self.deadline.lock().unwrap()
    }
}

struct DropGuard(Arc<AtomicUsize>);
impl Drop for DropGuard {
    fn drop(&mut self) {
        self.0.fetch_add(1, Ordering::SeqCst);
    }
}

/// A handler that answers after `work`, recording what it saw.
fn slow(
    probe: &Probe,
    work: Duration,
) -> impl Service<Req, Response = Res, Error = Infallible, Future: Send> + Clone + use<> {
    let probe = probe.clone();
    tower::service_fn(move |req: Req| {
        probe.calls.fetch_add(1, Ordering::SeqCst);
        *probe.deadline.lock().unwrap() = Deadline::of(&req).map(|d| d.remaining());
        let guard = DropGuard(probe.dropped.clone());
        async move {
            tokio::time::sleep(work).await;
            drop(guard);
            Ok(Response::new(Full::new(Bytes::from_static(b"done"))))
        }
    })
}

/// A request with `headers`. `grpc-timeout` is honoured on gRPC requests
/// only, so a request carrying it is sent as gRPC.
fn request(headers: &[(&str, &str)]) -> Req {
    let mut b = Request::post("/");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if headers.iter().any(|(k, _)| *k == "grpc-timeout") {
        b = b.header("content-type", "application/grpc");
    }
    b.body(Full::new(Bytes::new())).unwrap()
}

/// The refusal's detail, from a problem+json body or a gRPC answer;
/// panics if `res` is not a timeout answer.
async fn timeout_detail(res: Response<ResponseBody<Full<Bytes>>>) -> String {
    if res.headers().get("content-type").unwrap() == "application/grpc" {
        assert_eq!(res.status(), 200);
        assert_eq!(res.headers()["grpc-status"], "4");
        res.headers()["grpc-message"].to_str().unwrap().to_owned()
    } else {
        assert_eq!(res.status(), 504);
        body_json(res).await["detail"].as_str().unwrap().to_owned()
    }
}

/// Polls `fut` once.
async fn poll_once<F: Future + Unpin>(fut: &mut F) -> Poll<F::Output> {
    poll_fn(|cx| Poll::Ready(Pin::new(&mut *fut).poll(cx))).await
}

/// Drives `fut` on paused time in 1 ms steps and returns when it finished,
/// measured from `start`, with its output.
async fn finish_time<F: Future + Unpin>(start: Instant, mut fut: F) -> (Duration, F::Output) {
    loop {
        if let Poll::Ready(out) = poll_once(&mut fut).await {
            return (start.elapsed(), out);
        }
        advance(MS).await;
    }
}

async fn body_json(res: Response<ResponseBody<Full<Bytes>>>) -> serde_json::Value {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

fn layer(timeout: Duration) -> TimeoutLayer {
    TimeoutLayer::new(timeout).unwrap()
}

#[tokio::test(start_paused = true)]
async fn fires_exactly_at_the_deadline_and_drops_the_inner_future() {
    let probe = Probe::default();
    let mut svc = layer(100 * MS).layer(slow(&probe, Duration::from_secs(3600)));
    let mut fut = Box::pin(svc.ready().await.unwrap().call(request(&[])));

    assert!(poll_once(&mut fut).await.is_pending());
    advance(99 * MS).await;
    assert!(
        poll_once(&mut fut).await.is_pending(),
        "fired before the deadline"
    );
    assert_eq!(probe.dropped(), 0);
    advance(MS).await;
    let Poll::Ready(res) = poll_once(&mut fut).await else {
        panic!("did not fire at the deadline");
    };
    // The inner future is dropped as the answer is given, not later.
    assert_eq!(probe.dropped(), 1);
    let res = res.unwrap();
    assert_eq!(res.status(), StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(res.headers()["content-type"], "application/problem+json");
    let json = body_json(res).await;
    assert_eq!(json["status"], 504);
    assert_eq!(json["type"], "urn:tower-rampart:problem:timed-out");
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn fast_responses_pass_through() {
    let probe = Probe::default();
    let mut svc = layer(100 * MS).layer(slow(&probe, 99 * MS));
    let start = Instant::now();
    let fut = Box::pin(svc.ready().await.unwrap().call(request(&[])));
    let (took, res) = finish_time(start, fut).await;
    assert_eq!(took, 99 * MS);
    let res = res.unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(
        res.into_body().collect().await.unwrap().to_bytes(),
        "done".as_bytes()
    );
    // No budget from the client: the handler sees the server's maximum.
    assert_eq!(probe.seen_remaining(), Some(100 * MS));
}

/// Runs a never-finishing request with `headers` through `layer` and
/// returns when it was answered, and what the handler saw as its deadline.
async fn timed_out_after(layer: TimeoutLayer, headers: &[(&str, &str)]) -> (Duration, Probe) {
    let probe = Probe::default();
    let mut svc = layer.layer(slow(&probe, Duration::from_secs(3600)));
    let start = Instant::now();
    let fut = Box::pin(svc.ready().await.unwrap().call(request(headers)));
    let (took, res) = finish_time(start, fut).await;
    timeout_detail(res.unwrap()).await;
    (took, probe)
}

#[tokio::test(start_paused = true)]
async fn client_budget_shorter_than_the_server_maximum_wins() {
    let (took, probe) =
        timed_out_after(layer(Duration::from_secs(1)), &[("grpc-timeout", "200m")]).await;
    assert_eq!(took, 200 * MS);
    assert_eq!(probe.seen_remaining(), Some(200 * MS));

    let (took, _) = timed_out_after(
        layer(Duration::from_secs(1)),
        &[("grpc-timeout", "250000u")],
    )
    .await;
    assert_eq!(took, 250 * MS);
}

#[tokio::test(start_paused = true)]
async fn client_budget_longer_than_the_server_maximum_is_capped() {
    let (took, probe) = timed_out_after(layer(300 * MS), &[("grpc-timeout", "10S")]).await;
    assert_eq!(took, 300 * MS);
    assert_eq!(probe.seen_remaining(), Some(300 * MS));
    let (took, _) = timed_out_after(layer(300 * MS), &[("grpc-timeout", "99999999H")]).await;
    assert_eq!(took, 300 * MS);
}

#[tokio::test(start_paused = true)]
async fn safety_margin_is_taken_from_the_client_budget_only() {
    let with_margin = || {
        TimeoutLayer::builder()
            .timeout(Duration::from_secs(1))
            .safety_margin(50 * MS)
            .budget_header(HeaderName::from_static("x-request-timeout-ms"))
            .build()
            .unwrap()
    };
    let (took, probe) = timed_out_after(with_margin(), &[("grpc-timeout", "200m")]).await;
    assert_eq!(took, 150 * MS);
    assert_eq!(probe.seen_remaining(), Some(150 * MS));

    // The HTTP budget header, in milliseconds.
    let (took, _) = timed_out_after(with_margin(), &[("x-request-timeout-ms", "300")]).await;
    assert_eq!(took, 250 * MS);

    // Both: the smaller budget wins.
    let (took, _) = timed_out_after(
        with_margin(),
        &[("x-request-timeout-ms", "300"), ("grpc-timeout", "100m")],
    )
    .await;
    assert_eq!(took, 50 * MS);

    // No client budget: the server maximum, untouched by the margin.
    let (took, _) = timed_out_after(with_margin(), &[]).await;
    assert_eq!(took, Duration::from_secs(1));
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_counts_on_grpc_requests_only() {
    let probe = Probe::default();
    let mut svc = layer(300 * MS).layer(slow(&probe, Duration::from_secs(3600)));
    let plain = Request::get("/")
        .header("grpc-timeout", "10m")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let start = Instant::now();
    let fut = Box::pin(svc.ready().await.unwrap().call(plain));
    let (took, res) = finish_time(start, fut).await;
    assert_eq!(took, 300 * MS);
    assert_eq!(res.unwrap().status(), 504);

    // In error mode too (where the mode does not capture the protocol).
    let mut svc = layer(300 * MS)
        .into_error_mode()
        .layer(slow(&probe, Duration::from_secs(3600)));
    for (content_type, expected) in [
        ("text/plain", 300 * MS),
        ("application/grpc+proto", 10 * MS),
    ] {
        let req = Request::get("/")
            .header("grpc-timeout", "10m")
            .header("content-type", content_type)
            .body(Full::new(Bytes::new()))
            .unwrap();
        let start = Instant::now();
        let fut = Box::pin(svc.ready().await.unwrap().call(req));
        let (took, res) = finish_time(start, fut).await;
        assert_eq!(took, expected, "{content_type}");
        assert!(is_timeout(res.unwrap_err().as_ref()));
    }
}

#[tokio::test(start_paused = true)]
async fn grpc_timeout_can_be_ignored() {
    let layer = TimeoutLayer::builder()
        .timeout(300 * MS)
        .honor_grpc_timeout(false)
        .build()
        .unwrap();
    let (took, _) = timed_out_after(layer, &[("grpc-timeout", "10m")]).await;
    assert_eq!(took, 300 * MS);
}

#[tokio::test(start_paused = true)]
async fn spent_budgets_are_answered_at_once_without_calling_the_inner_service() {
    let margin = || {
        TimeoutLayer::builder()
            .timeout(Duration::from_secs(1))
            .safety_margin(50 * MS)
            .budget_header(HeaderName::from_static("x-request-timeout-ms"))
            .build()
            .unwrap()
    };
    // The detail says what happened (issue 12): the caller's budget, not a
    // deadline that passed.
    let within =
        |budget: &str| format!("the caller's budget ({budget}) is within the safety margin (50ms)");
    for (headers, detail) in [
        (
            &[("grpc-timeout", "0n")][..],
            "the caller's budget is zero".to_owned(),
        ),
        (
            &[("grpc-timeout", "0S")],
            "the caller's budget is zero".into(),
        ),
        (&[("grpc-timeout", "50m")], within("50ms")), // exactly the margin
        (&[("grpc-timeout", "30m")], within("30ms")), // less than the margin
        (&[("grpc-timeout", "1500u")], within("1.5ms")),
        (
            &[("x-request-timeout-ms", "0")],
            "the caller's budget is zero".into(),
        ),
        (&[("x-request-timeout-ms", "20")], within("20ms")),
    ] {
        let probe = Probe::default();
        let mut svc = margin().layer(slow(&probe, Duration::from_secs(3600)));
        let mut fut = Box::pin(svc.ready().await.unwrap().call(request(headers)));
        let Poll::Ready(res) = poll_once(&mut fut).await else {
            panic!("{headers:?}: not answered at once");
        };
        assert_eq!(probe.calls(), 0, "{headers:?}: inner service called");
        assert_eq!(timeout_detail(res.unwrap()).await, detail, "{headers:?}");
    }

    // A budget one nanosecond above the margin is not spent.
    let probe = Probe::default();
    let mut svc = margin().layer(slow(&probe, Duration::from_secs(3600)));
    let mut fut = Box::pin(
        svc.ready()
            .await
            .unwrap()
            .call(request(&[("grpc-timeout", "50000001n")])),
    );
    assert!(poll_once(&mut fut).await.is_pending());
    assert_eq!(probe.calls(), 1);
}

#[tokio::test(start_paused = true)]
async fn an_expired_outer_deadline_skips_the_inner_service() {
    let probe = Probe::default();
    let mut svc = layer(Duration::from_secs(1)).layer(slow(&probe, MS));
    let mut req = request(&[]);
    req.extensions_mut().insert(Deadline::after(10 * MS));
    advance(10 * MS).await;
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    assert_eq!(res.status(), 504);
    assert_eq!(probe.calls(), 0);
}

#[tokio::test(start_paused = true)]
async fn malformed_budget_headers_are_absent_and_logged() {
    let logs = Arc::new(Mutex::new(Vec::<u8>::new()));
    let writer = {
        let logs = logs.clone();
        move || LogWriter(logs.clone())
    };
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::DEBUG)
        .with_writer(writer)
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let grpc_bad = [
        "",
        "m",
        "10",
        "123456789m",
        "-1S",
        "+1S",
        "1.5S",
        "10s",
        "10h",
        "10 m",
        " 10m",
        "1mm",
        "\u{ff11}S",
    ];
    let millis_bad = ["", "-1", "+1", "1.5", "10ms", " 10", "1e3", "9999999999999"];
    let cases = grpc_bad
        .iter()
        .map(|v| ("grpc-timeout", *v))
        .chain(millis_bad.iter().map(|v| ("x-request-timeout-ms", *v)));
    for (header, bad) in cases {
        let layer = TimeoutLayer::builder()
            .name("api")
            .timeout(300 * MS)
            .budget_header(HeaderName::from_static("x-request-timeout-ms"))
            .build()
            .unwrap();
        let (took, probe) = timed_out_after(layer, &[(header, bad)]).await;
        assert_eq!(took, 300 * MS, "{header}: {bad:?}");
        assert_eq!(probe.seen_remaining(), Some(300 * MS), "{header}: {bad:?}");
    }
    let logs = String::from_utf8(logs.lock().unwrap().clone()).unwrap();
    assert!(logs.contains("malformed budget header ignored"), "{logs}");
    assert!(logs.contains("header=grpc-timeout"), "{logs}");
    assert!(logs.contains("header=x-request-timeout-ms"), "{logs}");
    assert!(logs.contains("name=api"), "{logs}");
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);
impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn named(name: &str, timeout: Duration) -> TimeoutLayer<tower_rampart::rejection::ErrorMode> {
    TimeoutLayer::builder()
        .name(name)
        .timeout(timeout)
        .build()
        .unwrap()
        .into_error_mode()
}

/// Runs a never-finishing request through `outer(inner(handler))` in error
/// mode; returns when it failed, which layer answered, and the handler's
/// deadline.
async fn nested(outer: Duration, inner: Duration) -> (Duration, String, Option<Duration>) {
    let probe = Probe::default();
    let svc = named("inner", inner).layer(slow(&probe, Duration::from_secs(3600)));
    let mut svc = named("outer", outer).layer(svc);
    let start = Instant::now();
    let fut = Box::pin(svc.ready().await.unwrap().call(request(&[])));
    let (took, res) = finish_time(start, fut).await;
    let err: BoxError = res.unwrap_err();
    let rejection = err.downcast_ref::<Rejection>().unwrap();
    assert_eq!(rejection.kind(), RejectionKind::TimedOut);
    (took, rejection.layer().to_owned(), probe.seen_remaining())
}

#[tokio::test(start_paused = true)]
async fn nested_timeouts_take_the_earliest_deadline() {
    // The outer deadline is earlier: the inner layer adopts it from the
    // extension and the handler sees it.
    let (took, by, seen) = nested(100 * MS, Duration::from_secs(1)).await;
    assert_eq!(took, 100 * MS);
    assert_eq!(seen, Some(100 * MS));
    assert_eq!(by, "inner", "the inner layer knew the outer deadline");

    // The inner deadline is earlier.
    let (took, by, seen) = nested(Duration::from_secs(1), 100 * MS).await;
    assert_eq!(took, 100 * MS);
    assert_eq!(seen, Some(100 * MS));
    assert_eq!(by, "inner");
}

/// Without the extension the inner layer still sees the outer deadline
/// (through `Deadline::current`, set while the outer layer calls and polls
/// its inner service): it answers at the outer deadline itself, and the
/// handler sees the earlier deadline, as with the extension.
#[tokio::test(start_paused = true)]
async fn nested_without_the_extension_still_sees_the_outer_deadline() {
    let probe = Probe::default();
    let outer = TimeoutLayer::builder()
        .name("outer")
        .timeout(100 * MS)
        .deadline_extension(false)
        .build()
        .unwrap()
        .into_error_mode();
    let mut svc = outer.layer(
        named("inner", Duration::from_secs(1)).layer(slow(&probe, Duration::from_secs(3600))),
    );
    let start = Instant::now();
    let fut = Box::pin(svc.ready().await.unwrap().call(request(&[])));
    let (took, res) = finish_time(start, fut).await;
    assert_eq!(took, 100 * MS);
    let err = res.unwrap_err();
    assert_eq!(err.downcast_ref::<Rejection>().unwrap().layer(), "inner");
    assert_eq!(probe.seen_remaining(), Some(100 * MS));
    assert_eq!(Deadline::current(), None, "no deadline outside the layers");
}

#[tokio::test(start_paused = true)]
async fn status_is_configurable_and_grpc_gets_deadline_exceeded() {
    for status in [StatusCode::SERVICE_UNAVAILABLE, StatusCode::REQUEST_TIMEOUT] {
        let layer = TimeoutLayer::builder()
            .timeout(10 * MS)
            .status(status)
            .build()
            .unwrap();
        let probe = Probe::default();
        let svc = layer.layer(slow(&probe, Duration::from_secs(1)));
        let res = svc.oneshot(request(&[])).await.unwrap();
        assert_eq!(res.status(), status);
        assert_eq!(body_json(res).await["status"], status.as_u16());
    }

    // gRPC callers get DEADLINE_EXCEEDED whatever the HTTP status.
    let layer = TimeoutLayer::builder()
        .timeout(10 * MS)
        .status(StatusCode::SERVICE_UNAVAILABLE)
        .build()
        .unwrap();
    let probe = Probe::default();
    let svc = layer.layer(slow(&probe, Duration::from_secs(1)));
    let res = svc
        .oneshot(request(&[("content-type", "application/grpc+proto")]))
        .await
        .unwrap();
    assert_eq!(res.status(), 200);
    assert_eq!(res.headers()["content-type"], "application/grpc");
    assert_eq!(res.headers()["grpc-status"], "4");
    assert!(res.headers().contains_key("grpc-message"));
}

#[tokio::test(start_paused = true)]
async fn error_mode_returns_a_typed_error_and_inner_errors_pass_through() {
    let probe = Probe::default();
    let svc = layer(10 * MS)
        .into_error_mode()
        .layer(slow(&probe, Duration::from_secs(1)));
    let err = svc.oneshot(request(&[])).await.unwrap_err();
    assert!(is_timeout(err.as_ref()));
    let rejection = err.downcast_ref::<Rejection>().unwrap();
    assert_eq!(rejection.layer(), "timeout");
    assert_eq!(
        rejection.grpc_code(),
        tower_rampart::classify::GrpcCode::DeadlineExceeded
    );

    let failing =
        tower::service_fn(|_: Req| async { Err::<Res, _>(std::io::Error::other("boom")) });
    let err = layer(10 * MS)
        .into_error_mode()
        .layer(failing)
        .oneshot(request(&[]))
        .await
        .unwrap_err();
    assert!(!is_timeout(err.as_ref()));
    assert_eq!(err.to_string(), "boom");
}

#[tokio::test(start_paused = true)]
async fn timeouts_are_counted_by_name_and_cause() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    // Handles are registered when the layer is built.
    let layer = metrics::with_local_recorder(&recorder, || {
        TimeoutLayer::builder()
            .name("payments")
            .timeout(10 * MS)
            .build()
            .unwrap()
    });
    let probe = Probe::default();
    let mut svc = layer.layer(slow(&probe, Duration::from_secs(1)));
    for headers in [&[][..], &[], &[("grpc-timeout", "0m")]] {
        let res = svc
            .ready()
            .await
            .unwrap()
            .call(request(headers))
            .await
            .unwrap();
        timeout_detail(res).await;
    }
    let fast = Probe::default();
    let mut ok = layer_named_payments_fast(&recorder).layer(slow(&fast, MS));
    assert_eq!(
        ok.ready()
            .await
            .unwrap()
            .call(request(&[]))
            .await
            .unwrap()
            .status(),
        200
    );

    let mut counts = std::collections::BTreeMap::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        assert_eq!(key.name(), "rampart_timeouts_total");
        let labels: Vec<_> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let DebugValue::Counter(n) = value else {
            panic!("not a counter")
        };
        counts.insert(labels.join(","), n);
    }
    // `source`: whose budget ran out (the server's own maximum, or the
    // caller's `grpc-timeout` of 0).
    assert_eq!(
        counts.get("name=payments,cause=elapsed,source=server"),
        Some(&2)
    );
    assert_eq!(
        counts.get("name=payments,cause=budget_spent,source=caller"),
        Some(&1)
    );
    assert_eq!(
        counts.get("name=payments,cause=elapsed,source=caller"),
        Some(&0)
    );
}

fn layer_named_payments_fast(
    recorder: &metrics_util::debugging::DebuggingRecorder,
) -> TimeoutLayer {
    metrics::with_local_recorder(recorder, || {
        TimeoutLayer::builder()
            .name("payments")
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap()
    })
}

#[tokio::test(start_paused = true)]
async fn deadline_helpers_bound_and_write_the_remaining_budget() {
    let name = HeaderName::from_static("x-request-timeout-ms");
    let deadline = Deadline::after(250 * MS);
    let mut headers = http::HeaderMap::new();
    deadline.insert_grpc_timeout(&mut headers);
    deadline.insert_millis(&mut headers, name.clone());
    assert_eq!(headers["grpc-timeout"], "250000u");
    assert_eq!(headers["x-request-timeout-ms"], "250");

    advance(100 * MS).await;
    assert_eq!(deadline.remaining(), 150 * MS);
    deadline.insert_millis(&mut headers, name.clone());
    assert_eq!(headers["x-request-timeout-ms"], "150");
    assert_eq!(deadline.bound(async { 7 }).await.ok(), Some(7));

    // A slow outbound call is cut exactly at the deadline.
    let start = Instant::now();
    let outbound = deadline.bound(tokio::time::sleep(Duration::from_secs(10)));
    assert!(outbound.await.is_err());
    assert_eq!(start.elapsed(), 150 * MS);

    assert!(deadline.is_expired());
    assert_eq!(deadline.remaining(), Duration::ZERO);
    deadline.insert_grpc_timeout(&mut headers);
    deadline.insert_millis(&mut headers, name);
    assert_eq!(headers["grpc-timeout"], "0n");
    assert_eq!(headers["x-request-timeout-ms"], "0");
    assert_eq!(
        Deadline::after(MS).min(Deadline::after(2 * MS)),
        Deadline::after(MS)
    );
}

/// A handler that records whose budget its `Deadline` is, then works for
/// `work`.
fn source_probe(
    seen: &Arc<Mutex<Option<DeadlineSource>>>,
    work: Duration,
) -> impl Service<Req, Response = Res, Error = Infallible, Future: Send> + Clone + use<> {
    let seen = seen.clone();
    tower::service_fn(move |req: Req| {
        *seen.lock().unwrap() = Deadline::of(&req).map(|d| d.source());
        async move {
            tokio::time::sleep(work).await;
            Ok(Response::new(Full::new(Bytes::from_static(b"done"))))
        }
    })
}

fn attributed(timeout: Duration) -> tower_rampart::timeout::TimeoutLayerBuilder {
    TimeoutLayer::builder()
        .timeout(timeout)
        .budget_header(HeaderName::from_static("x-request-timeout-ms"))
}

/// Whose budget bound the deadline: the handler's `Deadline::source`, and
/// whether the refusal is the service's fault (issue 10: only the server's
/// own budget counts against the service).
#[tokio::test(start_paused = true)]
async fn the_binding_budget_is_attributed() {
    use DeadlineSource::{Caller, Server};
    for (headers, source) in [
        // No client budget: the server's maximum.
        (&[][..], Server),
        // A shorter client budget binds.
        (&[("x-request-timeout-ms", "100")], Caller),
        (&[("grpc-timeout", "1m")], Caller), // one MILLIsecond
        (
            &[("grpc-timeout", "100m"), ("x-request-timeout-ms", "900")],
            Caller,
        ),
        // A longer client budget does not.
        (&[("x-request-timeout-ms", "5000")], Server),
        (&[("grpc-timeout", "2S")], Server),
        // A tie: the service was as late as its own limit allows.
        (&[("x-request-timeout-ms", "1000")], Server),
        // Malformed budgets are absent.
        (&[("x-request-timeout-ms", "-1")], Server),
    ] {
        let seen = Arc::new(Mutex::new(None));
        let layer = attributed(Duration::from_secs(1))
            .build()
            .unwrap()
            .into_error_mode();
        let svc = layer.layer(source_probe(&seen, Duration::from_secs(10)));
        let err = svc.oneshot(request(headers)).await.unwrap_err();
        let rejection = err.downcast_ref::<Rejection>().unwrap();
        assert_eq!(rejection.kind(), RejectionKind::TimedOut);
        assert_eq!(*seen.lock().unwrap(), Some(source), "{headers:?}");
        assert_eq!(
            rejection.is_service_fault(),
            source == Server,
            "{headers:?}"
        );
    }
}

/// Nested timeouts: an outer layer's deadline keeps its attribution. An
/// outer server budget is still the server's; a caller's budget read by an
/// outer layer is still the caller's.
#[tokio::test(start_paused = true)]
async fn nested_timeouts_keep_the_outer_attribution() {
    for (outer_timeout, headers, fault) in [
        // The outer server maximum (200ms) binds the inner layer (1s).
        (200 * MS, &[][..], true),
        // The caller's 100ms, read by the outer layer, binds the inner one.
        (
            Duration::from_secs(5),
            &[("x-request-timeout-ms", "100")],
            false,
        ),
        // The inner layer's own maximum binds: the server's.
        (
            Duration::from_secs(5),
            &[("x-request-timeout-ms", "3000")],
            true,
        ),
    ] {
        let seen = Arc::new(Mutex::new(None));
        let outer = attributed(outer_timeout)
            .name("outer")
            .build()
            .unwrap()
            .into_error_mode();
        // The inner layer reads no budget header: only the outer deadline.
        let inner = TimeoutLayer::builder()
            .name("inner")
            .timeout(Duration::from_secs(1))
            .build()
            .unwrap()
            .into_error_mode();
        let svc = outer.layer(inner.layer(source_probe(&seen, Duration::from_secs(10))));
        let err = svc.oneshot(request(headers)).await.unwrap_err();
        let rejection = err.downcast_ref::<Rejection>().unwrap();
        // The inner layer sees the same deadline and answers first.
        assert_eq!(rejection.layer(), "inner", "{headers:?}");
        assert_eq!(rejection.is_service_fault(), fault, "{headers:?}");
        let expected = if fault {
            DeadlineSource::Server
        } else {
            DeadlineSource::Caller
        };
        assert_eq!(*seen.lock().unwrap(), Some(expected));
    }
}

/// Spent on arrival: the caller's budget is not the service's fault; an
/// outer server deadline already spent (the server's own work used it up)
/// is.
#[tokio::test(start_paused = true)]
async fn spent_on_arrival_is_attributed() {
    let layer = || {
        attributed(Duration::from_secs(1))
            .safety_margin(10 * MS)
            .build()
            .unwrap()
            .into_error_mode()
    };
    let probe = Probe::default();
    let spent = |req: Req| {
        let svc = layer().layer(slow(&probe, MS));
        async move {
            let err = svc.oneshot(req).await.unwrap_err();
            let r = err.downcast_ref::<Rejection>().unwrap();
            (r.is_service_fault(), r.detail().to_owned())
        }
    };
    assert_eq!(
        spent(request(&[("x-request-timeout-ms", "0")])).await,
        (false, "the caller's budget is zero".to_owned())
    );
    assert_eq!(
        spent(request(&[("grpc-timeout", "1m")])).await,
        (
            false,
            "the caller's budget (1ms) is within the safety margin (10ms)".to_owned()
        )
    );
    for (source, fault) in [
        (DeadlineSource::Server, true),
        (DeadlineSource::Caller, false),
    ] {
        let mut req = request(&[]);
        req.extensions_mut()
            .insert(Deadline::at(Instant::now()).with_source(source));
        assert_eq!(
            spent(req).await,
            (
                fault,
                "the request's deadline had passed when it arrived".to_owned()
            ),
            "{source:?}"
        );
    }
    assert_eq!(probe.calls(), 0);
}

/// In `HttpMode` the answer carries the `Refused` marker (in the response
/// extensions, never on the wire) with the same attribution.
#[tokio::test(start_paused = true)]
async fn http_answers_carry_the_marker() {
    use tower_rampart::rejection::Refused;
    for (headers, fault) in [(&[][..], true), (&[("x-request-timeout-ms", "50")], false)] {
        let probe = Probe::default();
        let svc = attributed(Duration::from_secs(1))
            .build()
            .unwrap()
            .layer(slow(&probe, Duration::from_secs(10)));
        let res = svc.oneshot(request(headers)).await.unwrap();
        assert_eq!(res.status(), 504);
        let marker = res.extensions().get::<Refused>().copied().unwrap();
        assert_eq!(marker.kind(), RejectionKind::TimedOut);
        assert_eq!(marker.is_service_fault(), fault, "{headers:?}");
    }
    // An answer from the service carries none.
    let probe = Probe::default();
    let svc = attributed(Duration::from_secs(1))
        .build()
        .unwrap()
        .layer(slow(&probe, MS));
    let res = svc.oneshot(request(&[])).await.unwrap();
    assert_eq!(res.status(), 200);
    assert!(res.extensions().get::<Refused>().is_none());
}

/// The default puts nothing into the request extensions (no allocation per
/// request); the handler reads its deadline through `Deadline::current`,
/// in `call` and in every poll of its future, and only there: not after
/// the layer returned, so a request handled next on the same thread never
/// sees a stale deadline. `deadline_extension(true)` inserts it as well,
/// for code that reads only extensions.
#[tokio::test(start_paused = true)]
async fn the_extension_is_inserted_only_when_asked() {
    for insert in [false, true] {
        let layer = TimeoutLayer::builder()
            .timeout(Duration::from_secs(2))
            .deadline_extension(insert)
            .build()
            .unwrap();
        let mut svc = layer.layer(tower::service_fn(|req: Req| {
            let in_extensions = req.extensions().get::<Deadline>().is_some();
            let in_call = Deadline::current().map(|d| d.remaining());
            async move {
                tokio::time::sleep(500 * MS).await;
                let in_poll = Deadline::current().map(|d| d.remaining());
                let body = format!("{in_extensions} {in_call:?} {in_poll:?}");
                Ok::<_, Infallible>(Response::new(Full::new(Bytes::from(body))))
            }
        }));
        let res = svc.ready().await.unwrap().call(request(&[])).await.unwrap();
        let body = res.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(body, format!("{insert} Some(2s) Some(1.5s)").as_bytes());
        assert_eq!(Deadline::current(), None);
    }
}
