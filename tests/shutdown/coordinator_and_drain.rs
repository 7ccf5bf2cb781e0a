//! Shutdown coordinator and drain layer: phase timing on paused time, then
//! real servers on loopback.
use crate::common;
use crate::common::Endless;

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::{Body, Frame};
use http_body_util::{BodyExt, Full};
use tokio::sync::Notify;
use tokio::time::Instant;
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_rampart::health::{HealthRegistry, ProbeLayer};
use tower_rampart::shutdown::{HookOutcome, Phase, Shutdown, Trigger};
use tower_rampart::{Rejection, RejectionKind};

fn coordinator(delay: Duration, drain: Duration) -> Shutdown {
    Shutdown::builder()
        .signals(false)
        .shutdown_delay(delay)
        .drain_timeout(drain)
        .abort_grace(Duration::from_millis(100))
        .build()
        .unwrap()
}

/// Lets spawned tasks run without advancing paused time much.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

fn req() -> Request<Full<Bytes>> {
    Request::new(Full::new(Bytes::new()))
}

/// An inner service whose responses wait for `gate`.
fn gated(
    gate: Arc<Notify>,
) -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send,
> + Clone {
    tower::service_fn(move |_req: Request<Full<Bytes>>| {
        let gate = gate.clone();
        async move {
            gate.notified().await;
            Ok::<_, Infallible>(Response::new(Full::new(Bytes::from_static(b"done"))))
        }
    })
}

#[tokio::test(start_paused = true)]
async fn phases_follow_the_configured_timing() {
    let sd = coordinator(Duration::from_secs(5), Duration::from_secs(10));
    let mut rx = sd.subscribe();
    assert_eq!(sd.phase(), Phase::Running);
    let start = Instant::now();
    assert!(sd.trigger());
    assert_eq!(sd.phase(), Phase::ShutdownRequested, "at once, not later");
    assert!(!sd.trigger(), "a second trigger changes nothing");
    rx.changed().await.unwrap();
    assert_eq!(*rx.borrow_and_update(), Phase::ShutdownRequested);
    assert_eq!(sd.trigger_cause(), Some(Trigger::Programmatic));

    sd.draining().await;
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    let report = sd.done().await;
    assert_eq!(sd.phase(), Phase::Done);
    assert_eq!(report.trigger, Trigger::Programmatic);
    assert_eq!(report.delay, Duration::from_secs(5));
    assert_eq!(report.drain, Duration::ZERO, "nothing in flight");
    assert_eq!((report.finished, report.aborted), (0, 0));
    assert!(!report.drain_timed_out);
    assert_eq!(sd.report(), Some(report));
}

#[tokio::test(start_paused = true)]
async fn zero_delay_drains_at_once() {
    let sd = coordinator(Duration::ZERO, Duration::from_secs(10));
    let start = Instant::now();
    sd.trigger();
    let report = sd.done().await;
    assert_eq!(start.elapsed(), Duration::ZERO);
    assert_eq!(report.delay, Duration::ZERO);
}

#[tokio::test(start_paused = true)]
async fn drain_waits_for_in_flight_requests() {
    let sd = coordinator(Duration::from_secs(1), Duration::from_secs(30));
    let gate = Arc::new(Notify::new());
    let svc = sd.drain_layer().layer(gated(gate.clone()));
    let call = tokio::spawn(svc.clone().oneshot(req()));
    settle().await;
    assert_eq!(sd.in_flight(), 1);

    sd.trigger();
    sd.draining().await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(sd.phase(), Phase::Draining, "still waiting for the request");
    gate.notify_one();
    let res = call.await.unwrap().unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(
        res.headers()["connection"],
        "close",
        "answered after shutdown started"
    );
    // Counted until the body is done.
    assert_eq!(sd.in_flight(), 1);
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert_eq!(&body[..], b"done");
    let report = sd.done().await;
    assert_eq!(sd.in_flight(), 0);
    assert_eq!(report.in_flight_at_drain, 1);
    assert_eq!((report.finished, report.aborted), (1, 0));
    assert_eq!(report.drain, Duration::from_secs(3));
}

#[tokio::test(start_paused = true)]
async fn requests_while_shutdown_is_requested_are_served_with_connection_close() {
    let sd = coordinator(Duration::from_secs(5), Duration::from_secs(5));
    let svc = sd.drain_layer().layer(common::ok_service());
    let res = svc.clone().oneshot(req()).await.unwrap();
    assert!(res.headers().get("connection").is_none());

    sd.trigger();
    sd.requested().await;
    let res = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["connection"], "close");
    // HTTP/2 has no Connection header.
    let mut h2 = req();
    *h2.version_mut() = http::Version::HTTP_2;
    let res = svc.clone().oneshot(h2).await.unwrap();
    assert!(res.headers().get("connection").is_none());
}

#[tokio::test(start_paused = true)]
async fn requests_while_draining_are_refused() {
    let sd = coordinator(Duration::ZERO, Duration::from_secs(30));
    let gate = Arc::new(Notify::new());
    let svc = sd.drain_layer().layer(gated(gate.clone()));
    // One request holds the drain open.
    let held = tokio::spawn(svc.clone().oneshot(req()));
    settle().await;
    sd.trigger();
    sd.draining().await;

    let res = svc.clone().oneshot(req()).await.unwrap();
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["retry-after"], "1");
    assert_eq!(res.headers()["connection"], "close");
    assert_eq!(res.headers()["content-type"], "application/problem+json");

    let grpc = Request::builder()
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let res = svc.clone().oneshot(grpc).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.headers()["grpc-status"], "14");
    assert!(res.headers().get("connection").is_none());

    // ErrorMode: a typed rejection.
    let err_svc = sd
        .drain_layer()
        .into_error_mode()
        .layer(common::ok_service());
    let err: BoxError = err_svc.oneshot(req()).await.unwrap_err();
    let rejection = err.downcast_ref::<Rejection>().unwrap();
    assert_eq!(rejection.kind(), RejectionKind::Draining);
    assert_eq!(rejection.layer(), "shutdown");

    gate.notify_one();
    assert_eq!(held.await.unwrap().unwrap().status(), StatusCode::OK);
    let report = sd.done().await;
    assert_eq!((report.finished, report.aborted), (1, 0));
}

#[tokio::test(start_paused = true)]
async fn a_handler_that_never_returns_is_aborted_at_the_deadline() {
    let sd = coordinator(Duration::from_secs(1), Duration::from_secs(10));
    let never = tower::service_fn(|_req: Request<Full<Bytes>>| {
        std::future::pending::<Result<Response<Full<Bytes>>, Infallible>>()
    });
    let svc = sd.drain_layer().layer(never);
    let call = tokio::spawn(svc.oneshot(req()));
    settle().await;
    let start = Instant::now();
    sd.trigger();
    let res = call.await.unwrap().unwrap();
    assert_eq!(
        start.elapsed(),
        Duration::from_secs(11),
        "delay + drain_timeout"
    );
    assert_eq!(res.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(res.headers()["connection"], "close");
    let body = res.into_body().collect().await.unwrap().to_bytes();
    assert!(String::from_utf8_lossy(&body).contains("aborted at the drain deadline"));
    let report = sd.done().await;
    assert!(report.drain_timed_out);
    assert_eq!(report.drain, Duration::from_secs(10));
    assert_eq!((report.finished, report.aborted), (0, 1));
    assert_eq!(report.left_in_flight, 0);
    assert_eq!(sd.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn an_open_stream_is_cut_at_the_deadline() {
    let sd = coordinator(Duration::ZERO, Duration::from_secs(5));
    let stream = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        Ok::<_, Infallible>(Response::new(Endless::new()))
    });
    let svc = sd.drain_layer().layer(stream);
    let res = svc.oneshot(req()).await.unwrap();
    let mut body = res.into_body();
    let first = body.frame().await.unwrap().unwrap();
    assert_eq!(first.into_data().unwrap(), "tick");
    sd.trigger();
    let start = Instant::now();
    let err = body.frame().await.unwrap().unwrap_err();
    assert_eq!(start.elapsed(), Duration::from_secs(5));
    let rejection = err.downcast_ref::<Rejection>().unwrap();
    assert_eq!(rejection.kind(), RejectionKind::Draining);
    assert!(body.is_end_stream());
    drop(body);
    let report = sd.done().await;
    assert_eq!(report.aborted, 1);
}

#[tokio::test(start_paused = true)]
async fn an_open_grpc_stream_ends_with_unavailable_trailers() {
    let sd = coordinator(Duration::ZERO, Duration::from_secs(5));
    let stream = tower::service_fn(|_req: Request<Full<Bytes>>| async {
        let mut res = Response::new(Endless::new());
        res.headers_mut()
            .insert("content-type", "application/grpc".parse().unwrap());
        Ok::<_, Infallible>(res)
    });
    let svc = sd.drain_layer().layer(stream);
    let grpc = Request::builder()
        .version(http::Version::HTTP_2)
        .header("content-type", "application/grpc")
        .body(Full::new(Bytes::new()))
        .unwrap();
    let mut body = svc.oneshot(grpc).await.unwrap().into_body();
    assert!(body.frame().await.unwrap().unwrap().is_data());
    sd.trigger();
    let trailers = body
        .frame()
        .await
        .unwrap()
        .unwrap()
        .into_trailers()
        .unwrap();
    assert_eq!(trailers["grpc-status"], "14");
    assert!(body.is_end_stream());
    assert!(body.frame().await.is_none());
    drop(body);
    assert_eq!(sd.done().await.aborted, 1);
}

#[tokio::test(start_paused = true)]
async fn hooks_run_in_order_each_bounded() {
    let sd = Shutdown::builder()
        .signals(false)
        .shutdown_delay(Duration::ZERO)
        .hook_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let o = order.clone();
    assert!(sd.on_shutdown("flush", async move {
        tokio::time::sleep(Duration::from_millis(500)).await;
        o.lock().unwrap().push("flush");
    }));
    assert!(sd.on_shutdown("hang", std::future::pending::<()>()));
    assert!(sd.on_shutdown("boom", async { panic!("hook panicked on purpose") }));
    let o = order.clone();
    assert!(
        sd.on_shutdown_with_timeout("last", Duration::from_secs(1), async move {
            o.lock().unwrap().push("last");
        })
    );
    let start = Instant::now();
    sd.trigger();
    let report = sd.done().await;
    assert_eq!(start.elapsed(), Duration::from_millis(2500));
    assert_eq!(*order.lock().unwrap(), ["flush", "last"]);
    let outcomes: Vec<_> = report
        .hooks
        .iter()
        .map(|h| (h.name.as_str(), h.outcome))
        .collect();
    assert_eq!(
        outcomes,
        [
            ("flush", HookOutcome::Completed),
            ("hang", HookOutcome::TimedOut),
            ("boom", HookOutcome::Panicked),
            ("last", HookOutcome::Completed),
        ]
    );
    assert_eq!(report.hooks[1].duration, Duration::from_secs(2));
    assert_eq!(report.hooks_duration, Duration::from_millis(2500));
    assert!(!sd.on_shutdown("late", async {}), "hooks already ran");
}

// ---------------------------------------------------------------------------
// Real servers on loopback (real time, generous non-asserting bounds).

struct Server {
    addr: std::net::SocketAddr,
    done: tokio::task::JoinHandle<()>,
}

/// Serves `app` behind the probe and drain layers; the listener closes when
/// `stop` resolves.
async fn serve_until(
    app: Router,
    sd: &Shutdown,
    stop: impl Future<Output = ()> + Send + 'static,
) -> Server {
    let health = HealthRegistry::builder().shutdown(sd).build().unwrap();
    let app = app.layer(sd.drain_layer()).layer(ProbeLayer::new(&health));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let done = tokio::spawn(async move {
        axum::serve(listener, app)
            .with_graceful_shutdown(stop)
            .await
            .unwrap();
    });
    Server { addr, done }
}

async fn wait_in_flight(sd: &Shutdown, n: usize) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while sd.in_flight() != n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("request never arrived");
}

#[tokio::test]
async fn a_long_request_completes_while_readyz_already_fails() {
    let sd = coordinator(Duration::from_millis(300), Duration::from_secs(10));
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let app = Router::new().route("/", get(|| async { "hi" })).route(
        "/slow",
        get(move || {
            let g = g.clone();
            async move {
                g.notified().await;
                "slow done"
            }
        }),
    );
    let server = serve_until(app, &sd, sd.draining()).await;
    let addr = server.addr;
    assert_eq!(common::get(addr, "/readyz").await.status, StatusCode::OK);

    let slow = tokio::spawn(async move { common::get(addr, "/slow").await });
    wait_in_flight(&sd, 1).await;
    sd.trigger();
    sd.requested().await;

    // Readiness fails at once; the server still serves, asking to close.
    let ready = common::get(addr, "/readyz?verbose").await;
    assert_eq!(ready.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        ready.body,
        "[-]shutdown failed: reason withheld\nreadyz check failed\n"
    );
    let hi = common::get(addr, "/").await;
    assert_eq!(hi.status, StatusCode::OK);
    assert_eq!(hi.header("connection"), "close");
    assert_eq!(common::get(addr, "/livez").await.status, StatusCode::OK);

    sd.draining().await;
    gate.notify_one();
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, StatusCode::OK);
    assert_eq!(slow.body, "slow done");
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .expect("server did not stop")
        .unwrap();
    let report = sd.done().await;
    assert_eq!((report.finished, report.aborted), (1, 0));
}

#[tokio::test]
async fn a_request_during_draining_gets_503_with_connection_close() {
    let sd = coordinator(Duration::ZERO, Duration::from_secs(10));
    let gate = Arc::new(Notify::new());
    let g = gate.clone();
    let app = Router::new().route("/", get(|| async { "hi" })).route(
        "/slow",
        get(move || {
            let g = g.clone();
            async move {
                g.notified().await;
                "slow done"
            }
        }),
    );
    // This server keeps its listener open until the shutdown is done, so a
    // request can arrive while draining (as over a load balancer's pooled
    // connection, or an HTTP/2 stream racing the GOAWAY).
    let done = sd.done();
    let server = serve_until(app, &sd, async move {
        done.await;
    })
    .await;
    let addr = server.addr;
    let slow = tokio::spawn(async move { common::get(addr, "/slow").await });
    wait_in_flight(&sd, 1).await;
    sd.trigger();
    sd.draining().await;

    let refused = common::get(addr, "/").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(refused.header("connection"), "close");
    assert_eq!(refused.header("retry-after"), "1");
    assert_eq!(refused.json()["type"], "urn:tower-rampart:problem:draining");

    gate.notify_one();
    assert_eq!(slow.await.unwrap().status, StatusCode::OK);
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .expect("server did not stop")
        .unwrap();
}

#[tokio::test]
async fn a_hanging_handler_is_aborted_and_the_server_exits_in_time() {
    let sd = coordinator(Duration::ZERO, Duration::from_millis(300));
    let app = Router::new()
        .route("/hang", get(std::future::pending::<&'static str>))
        .route(
            "/stream",
            get(|| async { axum::body::Body::new(Endless::new()) }),
        );
    let server = serve_until(app, &sd, sd.draining()).await;
    let addr = server.addr;
    let hang = tokio::spawn(async move { common::get(addr, "/hang").await });
    // An open stream: headers and a first chunk arrive, then nothing.
    let res = common::client()
        .request(
            Request::get(format!("http://{addr}/stream"))
                .body(Full::new(Bytes::new()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    let mut stream = res.into_body();
    assert_eq!(
        stream.frame().await.unwrap().unwrap().into_data().unwrap(),
        "tick"
    );
    wait_in_flight(&sd, 2).await;

    sd.trigger();
    let exited = tokio::time::timeout(Duration::from_secs(10), server.done).await;
    exited
        .expect("server did not exit after the drain deadline")
        .unwrap();
    let hang = hang.await.unwrap();
    assert_eq!(hang.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(hang.header("connection"), "close");
    // The stream ends in an error (the connection is cut), not in a clean end.
    let rest = tokio::time::timeout(Duration::from_secs(10), stream.collect())
        .await
        .unwrap();
    assert!(rest.is_err());
    let report = sd.done().await;
    assert!(report.drain_timed_out);
    assert_eq!(report.aborted, 2);
}

// ---------------------------------------------------------------------------
// Metrics.

fn metric<'a>(
    snap: &'a [(
        metrics_util::CompositeKey,
        Option<metrics::Unit>,
        Option<metrics::SharedString>,
        metrics_util::debugging::DebugValue,
    )],
    name: &str,
    label: Option<(&str, &str)>,
) -> Option<&'a metrics_util::debugging::DebugValue> {
    snap.iter()
        .find(|(k, ..)| {
            k.key().name() == name
                && label.is_none_or(|(lk, lv)| {
                    k.key().labels().any(|l| l.key() == lk && l.value() == lv)
                })
        })
        .map(|(.., v)| v)
}

#[tokio::test(start_paused = true)]
async fn metrics_are_recorded() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let (sd, reg) = metrics::with_local_recorder(&recorder, || {
        let sd = Shutdown::builder()
            .name("api")
            .signals(false)
            .shutdown_delay(Duration::ZERO)
            .build()
            .unwrap();
        let reg = HealthRegistry::builder().shutdown(&sd).build().unwrap();
        (sd, reg)
    });
    let gate = Arc::new(Notify::new());
    let svc = sd.drain_layer().layer(gated(gate.clone()));
    let held = tokio::spawn(svc.clone().oneshot(req()));
    settle().await;
    let snap = snapshotter.snapshot().into_vec();
    let gauge = |snap: &[_], name, label| match metric(snap, name, label) {
        Some(DebugValue::Gauge(v)) => v.into_inner(),
        other => panic!("{name}: {other:?}"),
    };
    assert_eq!(
        gauge(&snap, "rampart_in_flight_requests", Some(("name", "api"))),
        1.0
    );
    assert_eq!(gauge(&snap, "rampart_shutdown_phase", None), 0.0);
    // The snapshot took the gauge's value (this recorder swaps it for 0);
    // the request still held, the drain's sampler sets it again within a
    // period (250 ms).
    tokio::time::sleep(Duration::from_millis(300)).await;
    let snap = snapshotter.snapshot().into_vec();
    assert_eq!(
        gauge(&snap, "rampart_in_flight_requests", Some(("name", "api"))),
        1.0
    );

    sd.trigger();
    assert!(
        !reg.probe(tower_rampart::health::Kind::Readiness, &[])
            .await
            .passed()
    );
    sd.draining().await;
    let _ = svc.clone().oneshot(req()).await.unwrap(); // refused
    gate.notify_one();
    drop(held.await.unwrap().unwrap());
    sd.done().await;
    let snap = snapshotter.snapshot().into_vec();
    // The in-flight gauge is the drain's count, set when the drain ends
    // (and every 250 ms while requests come and go): none left.
    assert_eq!(gauge(&snap, "rampart_in_flight_requests", None), 0.0);
    assert_eq!(gauge(&snap, "rampart_shutdown_phase", None), 3.0);
    assert_eq!(
        gauge(
            &snap,
            "rampart_health_check_status",
            Some(("check", "shutdown"))
        ),
        0.0
    );
    assert!(matches!(
        metric(&snap, "rampart_drain_duration_seconds", None),
        Some(DebugValue::Histogram(v)) if v.len() == 1
    ));
    assert!(matches!(
        metric(&snap, "rampart_health_check_duration_seconds", None),
        Some(DebugValue::Histogram(v)) if !v.is_empty()
    ));
    assert!(matches!(
        metric(
            &snap,
            "rampart_requests_refused_total",
            Some(("kind", "draining"))
        ),
        Some(DebugValue::Counter(1))
    ));
}

#[cfg(feature = "tonic")]
#[tokio::test]
async fn grpc_through_the_drain_layer_on_a_tonic_server() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let sd = coordinator(Duration::ZERO, Duration::from_millis(500));
    let (_reporter, health) = tonic_health::server::health_reporter();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    // The listener stays open until the shutdown is done, so a call can
    // arrive while draining (as an HTTP/2 stream racing the GOAWAY).
    let done = sd.done();
    let server = tokio::spawn(
        tonic::transport::Server::builder()
            .layer(sd.drain_layer())
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, async move {
                done.await;
            }),
    );
    let mut client = HealthClient::new(common::grpc_channel(addr).await);
    let req = || HealthCheckRequest {
        service: String::new(),
    };
    assert!(client.check(req()).await.is_ok());

    // A Watch stream stays open: it holds the drain until the deadline.
    let mut watch = client.watch(req()).await.unwrap().into_inner();
    assert!(watch.message().await.unwrap().is_some());
    wait_in_flight(&sd, 1).await;
    sd.trigger();
    sd.draining().await;

    let refused = client.check(req()).await.unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable);
    assert_eq!(refused.message(), "the server is shutting down");

    // At the deadline the stream is cut with UNAVAILABLE trailers.
    let cut = tokio::time::timeout(Duration::from_secs(10), watch.message())
        .await
        .expect("stream not cut")
        .unwrap_err();
    assert_eq!(cut.code(), tonic::Code::Unavailable);
    let report = sd.done().await;
    assert_eq!(report.aborted, 1);
    tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("server did not stop")
        .unwrap()
        .unwrap();
}

/// A body that yields 64 KiB chunks forever.
struct Firehose;
impl Body for Firehose {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        static CHUNK: [u8; 65536] = [b'x'; 65536];
        Poll::Ready(Some(Ok(Frame::data(Bytes::from_static(&CHUNK)))))
    }
}

#[tokio::test]
async fn a_client_that_stops_reading_cannot_hold_the_exit() {
    use tokio::io::AsyncWriteExt;

    let sd = coordinator(Duration::ZERO, Duration::from_millis(300));
    let app = Router::new()
        .route(
            "/firehose",
            get(|| async { axum::body::Body::new(Firehose) }),
        )
        .layer(sd.drain_layer());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = axum::serve(listener, app).with_graceful_shutdown(sd.draining());
    let run = {
        let sd = sd.clone();
        tokio::spawn(async move { sd.run_server(server).await })
    };
    // Ask for the endless body, then never read: the socket buffers fill
    // and the server stops polling the body.
    let mut stuck = tokio::net::TcpStream::connect(addr).await.unwrap();
    stuck
        .write_all(b"GET /firehose HTTP/1.1\r\nhost: x\r\n\r\n")
        .await
        .unwrap();
    wait_in_flight(&sd, 1).await;
    tokio::time::sleep(Duration::from_millis(200)).await; // let the buffers fill
    sd.trigger();
    let report = tokio::time::timeout(Duration::from_secs(10), run)
        .await
        .expect("run_server did not return")
        .unwrap()
        .unwrap();
    assert!(report.drain_timed_out);
    assert_eq!(report.trigger, Trigger::Programmatic);
    // Normally the stuck body is never polled again (left in flight, and
    // awaiting the server alone would hang); if the buffers had not filled
    // it was cut instead. Either way `run_server` returned.
    assert_eq!(report.left_in_flight + report.aborted as usize, 1);
    drop(stuck);
}

/// Hanging requests spread over a multi-threaded runtime's workers
/// register for the abort on their threads' lanes of the signal; every one
/// of them is answered at the drain deadline, whichever lane it is on.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn hanging_requests_on_every_worker_are_aborted_at_the_deadline() {
    const HANGING: usize = 16;
    let sd = coordinator(Duration::ZERO, Duration::from_millis(300));
    let app = Router::new().route("/hang", get(std::future::pending::<&'static str>));
    let server = serve_until(app, &sd, sd.draining()).await;
    let addr = server.addr;
    // One connection each: hyper serves each on a task of its own, which
    // the runtime spreads over its workers.
    let hanging: Vec<_> = (0..HANGING)
        .map(|_| tokio::spawn(async move { common::get(addr, "/hang").await }))
        .collect();
    wait_in_flight(&sd, HANGING).await;

    sd.trigger();
    tokio::time::timeout(Duration::from_secs(10), server.done)
        .await
        .expect("server did not exit after the drain deadline")
        .unwrap();
    for h in hanging {
        let res = h.await.unwrap();
        assert_eq!(res.status, StatusCode::SERVICE_UNAVAILABLE);
        assert!(
            res.body.contains("aborted at the drain deadline"),
            "{}",
            res.body
        );
    }
    let report = sd.done().await;
    assert!(report.drain_timed_out);
    assert_eq!(report.aborted, HANGING as u64);
}
