//! `tower_rampart::serve` over real sockets: the peer address, connection
//! hygiene (slowloris, idle timeout, max connections) and each shutdown
//! phase, for axum and tonic.
#![cfg(all(feature = "serve", feature = "axum", feature = "tonic"))]

use crate::common;

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use axum::routing::get;
use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tower_rampart::rate_limit::{KeyExtractor, MissingKey, Quota, RateLimitLayer};
use tower_rampart::serve::{AtMaxConnections, Server, serve};
use tower_rampart::shutdown::{Phase, Shutdown, ShutdownReport};

fn shutdown(delay: Duration) -> Shutdown {
    Shutdown::builder()
        .signals(false)
        .shutdown_delay(delay)
        .drain_timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn app(shutdown: &Shutdown) -> Router {
    Router::new()
        .route("/", get(|| async { "ok" }))
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_millis(500)).await;
                "slow"
            }),
        )
        .route(
            "/peer",
            get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }),
        )
        .layer(shutdown.drain_layer())
}

/// Starts `server` with `app`; returns its address and the task.
async fn start(
    server: Server,
    app: Router,
    shutdown: &Shutdown,
) -> (SocketAddr, JoinHandle<ShutdownReport>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(server.serve(listener, app, shutdown).into_future());
    (addr, task)
}

/// A raw HTTP/1.1 exchange on `stream`: status line + headers (lower
/// case) + body (by Content-Length).
async fn exchange(stream: &mut TcpStream, path: &str) -> Option<(String, String)> {
    let req = format!("GET {path} HTTP/1.1\r\nhost: test\r\n\r\n");
    stream.write_all(req.as_bytes()).await.ok()?;
    read_response(stream).await
}

async fn read_response(stream: &mut TcpStream) -> Option<(String, String)> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 1024];
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
            let len: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            while buf.len() < end + 4 + len {
                let n = stream.read(&mut chunk).await.ok()?;
                if n == 0 {
                    return None;
                }
                buf.extend_from_slice(&chunk[..n]);
            }
            let body = String::from_utf8_lossy(&buf[end + 4..end + 4 + len]).into_owned();
            return Some((head, body));
        }
        let n = stream.read(&mut chunk).await.ok()?;
        if n == 0 {
            return None;
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// Reads until the server closes the connection (EOF or reset).
async fn closed(stream: &mut TcpStream) -> bool {
    let mut chunk = [0u8; 256];
    matches!(stream.read(&mut chunk).await, Ok(0) | Err(_))
}

async fn wait_phase(shutdown: &Shutdown, phase: Phase) {
    let mut rx = shutdown.subscribe();
    rx.wait_for(|p| *p >= phase).await.unwrap();
}

#[tokio::test]
async fn the_peer_address_reaches_axum_and_plain_services() {
    let sd = shutdown(Duration::ZERO);
    let (addr, task) = start(Server::default(), app(&sd), &sd).await;
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    let (head, body) = exchange(&mut stream, "/peer").await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, local.to_string());

    // A plain tower service sees the `SocketAddr` extension.
    let plain = tower::service_fn(|req: Request<hyper::body::Incoming>| async move {
        let peer = req.extensions().get::<SocketAddr>().copied();
        Ok::<_, std::convert::Infallible>(http::Response::new(http_body_util::Full::new(
            Bytes::from(format!("{peer:?}")),
        )))
    });
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let plain_addr = listener.local_addr().unwrap();
    let plain_task = tokio::spawn(serve(listener, plain, &sd).into_future());
    let mut stream = TcpStream::connect(plain_addr).await.unwrap();
    let local = stream.local_addr().unwrap();
    let (_, body) = exchange(&mut stream, "/").await.unwrap();
    assert_eq!(body, format!("Some({local})"));

    drop(stream);
    sd.trigger();
    task.await.unwrap();
    plain_task.await.unwrap();
}

/// A client-IP rate limit under tonic, with no peer-address code: with
/// `missing_key = reject`, a request without the peer address would be
/// INVALID_ARGUMENT; here the first call passes and the second is limited.
#[tokio::test]
async fn client_ip_rate_limiting_works_under_tonic() {
    let sd = shutdown(Duration::ZERO);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let routes = tonic::service::Routes::new(health);
    let limit = RateLimitLayer::builder()
        .quota(Quota::per_minute(1).burst(1).key(KeyExtractor::client_ip()))
        .missing_key(MissingKey::Reject)
        .build()
        .unwrap();
    let svc = tower::ServiceBuilder::new()
        .layer(limit)
        .layer(sd.drain_layer())
        .service(routes);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve(listener, svc, &sd).into_future());

    let mut client =
        tonic_health::pb::health_client::HealthClient::new(common::grpc_channel(addr).await);
    let check = || tonic_health::pb::HealthCheckRequest {
        service: String::new(),
    };
    let first = client.check(check()).await;
    assert!(first.is_ok(), "{first:?}");
    let second = client.check(check()).await.unwrap_err();
    assert_eq!(second.code(), tonic::Code::ResourceExhausted, "{second:?}");

    drop(client);
    sd.trigger();
    task.await.unwrap();
}

/// Slowloris: half a request line, then nothing. The connection is closed
/// by `header_read_timeout`, not held open (Go's `ReadHeaderTimeout`, whose
/// `TestServerTimeouts`-style checks this mirrors: a slow client is cut, a
/// prompt one on the same server is served).
#[tokio::test(start_paused = true)]
async fn slow_header_clients_are_closed_by_the_header_read_timeout() {
    let sd = shutdown(Duration::ZERO);
    let server = Server::builder()
        .header_read_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let (addr, task) = start(server, app(&sd), &sd).await;

    let mut slow = TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET / HT").await.unwrap();
    let sent = Instant::now();
    assert!(closed(&mut slow).await, "the slow client was answered");
    let after = sent.elapsed();
    assert!(after >= Duration::from_secs(2), "closed after {after:?}");
    assert!(after < Duration::from_secs(3), "closed after {after:?}");

    // A client that connects and sends nothing is closed the same way
    // (before the protocol is even known).
    let mut silent = TcpStream::connect(addr).await.unwrap();
    let opened = Instant::now();
    assert!(closed(&mut silent).await, "the silent client got an answer");
    let after = opened.elapsed();
    assert!(after >= Duration::from_secs(2), "closed after {after:?}");
    assert!(after < Duration::from_secs(3), "closed after {after:?}");

    // A client that sends its headers in time is served.
    let mut fine = TcpStream::connect(addr).await.unwrap();
    fine.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
    tokio::time::sleep(Duration::from_secs(1)).await;
    fine.write_all(b"host: test\r\n\r\n").await.unwrap();
    let (head, body) = read_response(&mut fine).await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "ok");

    drop(fine);
    sd.trigger();
    task.await.unwrap();
}

/// An idle HTTP/2 connection is closed (GOAWAY) after `keep_alive_timeout`
/// (at most 1.25 times it); one with requests going on is not. Real time:
/// paused time would jump over the HTTP/2 exchanges in flight on the
/// socket; only lower bounds and a generous liveness bound are asserted.
#[tokio::test]
async fn idle_http2_connections_are_closed_after_the_keep_alive_timeout() {
    const IDLE: Duration = Duration::from_millis(400);
    let sd = shutdown(Duration::ZERO);
    let server = Server::builder().keep_alive_timeout(IDLE).build().unwrap();
    let (addr, task) = start(server, app(&sd), &sd).await;

    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut send, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    // Busy for 1.2 s (a request every 100 ms): longer than the timeout.
    for _ in 0..12 {
        let res = send
            .send_request(
                Request::get(format!("http://{addr}/"))
                    .body(Empty::<Bytes>::new())
                    .unwrap(),
            )
            .await
            .expect("closed while in use");
        assert_eq!(res.status(), StatusCode::OK);
        res.into_body().collect().await.unwrap();
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(!conn.is_finished(), "closed while in use");
    let idle_from = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), conn)
        .await
        .expect("an idle connection stays open")
        .unwrap()
        .unwrap();
    let idle = idle_from.elapsed() + Duration::from_millis(100);
    assert!(idle >= IDLE, "closed after {idle:?} idle");

    sd.trigger();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn at_max_connections_refuse_closes_the_extra_connection() {
    let sd = shutdown(Duration::ZERO);
    let server = Server::builder()
        .max_connections(1)
        .at_max_connections(AtMaxConnections::Refuse)
        .build()
        .unwrap();
    let (addr, task) = start(server, app(&sd), &sd).await;

    let mut first = TcpStream::connect(addr).await.unwrap();
    let (head, _) = exchange(&mut first, "/").await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let mut second = TcpStream::connect(addr).await.unwrap();
    assert!(
        exchange(&mut second, "/").await.is_none(),
        "over the limit, yet served"
    );
    // Once the first closes, there is room again.
    drop(first);
    let mut served = None;
    for _ in 0..50 {
        let mut third = TcpStream::connect(addr).await.unwrap();
        if let Some(r) = exchange(&mut third, "/").await {
            served = Some(r);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(served.is_some_and(|(h, _)| h.starts_with("http/1.1 200")));

    sd.trigger();
    task.await.unwrap();
}

/// Shutdown requested: still serving, HTTP/1.1 answers carry
/// `Connection: close` (and the connection closes after it), HTTP/2
/// connections get GOAWAY and end once their streams are done.
#[tokio::test(start_paused = true)]
async fn during_the_delay_http1_gets_connection_close_and_http2_goaway() {
    let sd = shutdown(Duration::from_secs(30));
    let (addr, task) = start(Server::default(), app(&sd), &sd).await;

    let mut h1 = TcpStream::connect(addr).await.unwrap();
    let (head, _) = exchange(&mut h1, "/").await.unwrap();
    assert!(!head.contains("connection: close"), "{head}");

    let io = hyper_util::rt::TokioIo::new(TcpStream::connect(addr).await.unwrap());
    let (mut h2, conn) =
        hyper::client::conn::http2::handshake(hyper_util::rt::TokioExecutor::new(), io)
            .await
            .unwrap();
    let conn = tokio::spawn(conn);
    let get = |path: &str| {
        Request::get(format!("http://{addr}{path}"))
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let res = h2.send_request(get("/")).await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    // A stream in progress when shutdown is requested...
    let slow = h2.send_request(get("/slow"));

    sd.trigger();
    let (head, body) = exchange(&mut h1, "/").await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, "ok");
    assert!(closed(&mut h1).await);

    // ...is answered, then the connection ends (GOAWAY), well before the
    // delay is over.
    let res = slow.await.unwrap();
    assert_eq!(res.status(), StatusCode::OK);
    assert_eq!(res.into_body().collect().await.unwrap().to_bytes(), "slow");
    tokio::time::timeout(Duration::from_secs(5), conn)
        .await
        .expect("no GOAWAY during the delay")
        .unwrap()
        .unwrap();
    assert_eq!(sd.phase(), Phase::ShutdownRequested);

    // New connections are still accepted and served during the delay.
    let mut late = TcpStream::connect(addr).await.unwrap();
    let (head, _) = exchange(&mut late, "/").await.unwrap();
    assert!(head.starts_with("http/1.1 200") && head.contains("connection: close"));

    task.await.unwrap();
}

/// When draining starts the listener closes (connecting is refused, not
/// left hanging: tonic's server kept it open), while the request in flight
/// is still answered. axum and tonic alike.
#[tokio::test]
async fn after_the_delay_the_port_refuses_connections_while_in_flight_work_finishes() {
    // axum
    let sd = shutdown(Duration::ZERO);
    let (addr, task) = start(Server::default(), app(&sd), &sd).await;
    let mut busy = TcpStream::connect(addr).await.unwrap();
    busy.write_all(b"GET /slow HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await;
    sd.trigger();
    wait_phase(&sd, Phase::Draining).await;
    let refused = refused_soon(addr).await;
    assert!(refused, "the axum listener is still open while draining");
    let (head, body) = read_response(&mut busy).await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(body, "slow");
    let report = task.await.unwrap();
    assert_eq!(report.aborted, 0);
    assert_eq!(report.in_flight_at_drain, 1);

    // tonic: a greeter that takes its time, behind the drain layer.
    let sd = shutdown(Duration::ZERO);
    let (_reporter, health) = tonic_health::server::health_reporter();
    let routes = tonic::service::Routes::new(health);
    let svc = tower::ServiceBuilder::new()
        .layer(sd.drain_layer())
        .service(routes);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let task = tokio::spawn(serve(listener, svc, &sd).into_future());
    let mut client =
        tonic_health::pb::health_client::HealthClient::new(common::grpc_channel(addr).await);
    // A watch stream stays open: in flight until the drain aborts it, or
    // the client drops it.
    let mut watch = client
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    assert!(watch.message().await.unwrap().is_some());
    sd.trigger();
    wait_phase(&sd, Phase::Draining).await;
    assert!(
        refused_soon(addr).await,
        "the tonic listener is still open while draining"
    );
    drop(watch);
    drop(client);
    let report = task.await.unwrap();
    assert_eq!(report.left_in_flight, 0);
}

/// Connects until refused (the listener closes as soon as the loop sees
/// draining start); false if still accepting after 2 s.
async fn refused_soon(addr: SocketAddr) -> bool {
    for _ in 0..200 {
        match TcpStream::connect(addr).await {
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return true,
            _ => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
    false
}

/// Nothing the kernel accepted is abandoned: with accepting paused at
/// `max_connections`, a second client waits in the listen backlog with its
/// request sent. When draining starts it is taken from the backlog and
/// answered (`Connection: close`), not reset by the closing listener.
#[tokio::test]
async fn connections_in_the_backlog_when_draining_starts_are_answered() {
    let sd = shutdown(Duration::ZERO);
    let server = Server::builder()
        .max_connections(1)
        .connection_grace(Duration::from_millis(300))
        .build()
        .unwrap();
    let (addr, task) = start(server, app(&sd), &sd).await;
    let mut first = TcpStream::connect(addr).await.unwrap();
    let (head, _) = exchange(&mut first, "/").await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");

    // The kernel completes the handshake; the server does not accept.
    let mut queued = TcpStream::connect(addr).await.unwrap();
    queued
        .write_all(b"GET / HTTP/1.1\r\nhost: test\r\n\r\n")
        .await
        .unwrap();
    let mut chunk = [0u8; 16];
    let waited = tokio::time::timeout(Duration::from_millis(200), queued.read(&mut chunk)).await;
    assert!(waited.is_err(), "answered above max_connections");

    sd.trigger();
    let (head, body) = read_response(&mut queued)
        .await
        .expect("reset from the backlog");
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, "ok");
    // The idle first connection is closed after the grace period.
    assert!(closed(&mut first).await);
    let report = task.await.unwrap();
    assert_eq!(report.aborted, 0);
    assert!(report.finished >= 1, "{report:?}");
}

/// A connection with no request when draining starts gets
/// `connection_grace` to send one: it is answered (not refused by the
/// drain layer), with `Connection: close`. After the grace, a silent one
/// is closed. (Go's `Server.Shutdown` spares new connections 5 s.)
#[tokio::test(start_paused = true)]
async fn idle_connections_get_a_grace_period_to_send_a_request() {
    let sd = shutdown(Duration::ZERO);
    let server = Server::builder()
        .connection_grace(Duration::from_secs(2))
        .build()
        .unwrap();
    let (addr, task) = start(server, app(&sd), &sd).await;
    let mut talker = TcpStream::connect(addr).await.unwrap();
    let mut silent = TcpStream::connect(addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;

    sd.trigger();
    wait_phase(&sd, Phase::Draining).await;
    let drain_start = Instant::now();
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (head, body) = exchange(&mut talker, "/").await.unwrap();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert!(head.contains("connection: close"), "{head}");
    assert_eq!(body, "ok");

    assert!(closed(&mut silent).await);
    let after = drain_start.elapsed();
    assert!(
        after >= Duration::from_secs(2) && after < Duration::from_secs(3),
        "silent connection closed {after:?} after draining began"
    );
    let report = task.await.unwrap();
    assert_eq!(report.finished, 1, "{report:?}");
    assert!(!report.drain_timed_out);
}

/// The `[server]` section: keys, environment overrides, errors named by
/// their key path.
#[cfg(feature = "config")]
#[test]
fn the_server_section_of_the_config_file() {
    use tower_rampart::config::RampartConfig;

    let c = RampartConfig::from_toml_with_env(
        r#"
        [server]
        header_read_timeout = "3s"
        at_max_connections = "refuse"
        "#,
        [("RAMPART_SERVER__MAX_CONNECTIONS", "64")],
    )
    .unwrap();
    assert_eq!(c.server.header_read_timeout, Duration::from_secs(3));
    assert_eq!(c.server.max_connections, Some(64));
    assert_eq!(c.server.at_max_connections, AtMaxConnections::Refuse);
    assert_eq!(c.server.connection_grace, Duration::from_secs(5));
    let server = c.server().unwrap();
    assert_eq!(server.config().max_connections, Some(64));

    let errors = RampartConfig::from_toml("[server]\nmax_connections = 0\n").unwrap_err();
    let fields: Vec<&str> = errors.iter().map(|e| e.field()).collect();
    assert_eq!(fields, ["server.max_connections"]);
    let errors = RampartConfig::from_toml("[server]\nheader_timeout = \"1s\"\n").unwrap_err();
    assert!(errors.to_string().contains("header_timeout"), "{errors}");

    // The shipped file has every key.
    let shipped = RampartConfig::load(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/configs/production.toml"
    ))
    .unwrap();
    assert_eq!(shipped.server.max_connections, Some(10_000));
}

/// Counts how many times it wraps a service.
#[derive(Clone)]
struct CountingLayer(std::sync::Arc<std::sync::atomic::AtomicUsize>);

impl<S> tower::Layer<S> for CountingLayer {
    type Service = S;
    fn layer(&self, inner: S) -> S {
        self.0.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        inner
    }
}

/// A `Router<()>` never given its state re-applies its route layers on
/// every request (axum turns handlers into routes at call time); `serve`
/// gives it its state once, as `axum::serve` does, so a stack applied
/// with `Router::layer` is built once, not once per request.
#[tokio::test]
async fn route_layers_of_a_stateless_router_are_applied_once() {
    use std::sync::atomic::Ordering;
    let layered = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let app = Router::new()
        .route("/", get(|| async { "ok" }))
        .layer(CountingLayer(layered.clone()));
    let sd = shutdown(Duration::ZERO);
    let (addr, task) = start(Server::default(), app, &sd).await;
    let before = layered.load(Ordering::SeqCst);
    for _ in 0..5 {
        assert_eq!(common::get(addr, "/").await.status, StatusCode::OK);
    }
    assert_eq!(
        layered.load(Ordering::SeqCst),
        before,
        "layers applied per request"
    );
    sd.trigger();
    task.await.unwrap();
}
