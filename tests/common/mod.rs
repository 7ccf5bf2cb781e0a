//! Shared test harness: a real axum or tonic server on a loopback socket and
//! a real HTTP client (hyper's), used by every integration test file.
#![allow(dead_code, unreachable_pub)]

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

/// Serves `app` with the config's stack wrapped around the whole router
/// (no `Router::layer`: the stack sees no matched path), under
/// `tower_rampart::serve`, on `127.0.0.1:0`; returns its address.
#[cfg(all(feature = "config", feature = "axum", feature = "serve"))]
pub async fn serve_around(stack: &tower_rampart::config::Stack, app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let service = tower::Layer::layer(&stack.layer(), app);
    let serve = tower_rampart::serve(listener, service, stack.shutdown());
    tokio::spawn(std::future::IntoFuture::into_future(serve));
    addr
}

/// Serves `app` on `127.0.0.1:0` (with `ConnectInfo<SocketAddr>`) and
/// returns its address. The server lives until the runtime ends.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(
            listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .await
        .unwrap();
    });
    addr
}

/// Serves a tower HTTP service (a tonic `Routes`, a layered router, ...)
/// over HTTP/2 on `127.0.0.1:0` through tonic's server, and returns its
/// address.
pub async fn serve_tonic(routes: tonic::service::Routes) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_routes(routes)
            .serve_with_incoming(incoming)
            .await
            .unwrap();
    });
    addr
}

/// A tonic channel to `addr`.
pub async fn grpc_channel(addr: SocketAddr) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

/// A plain HTTP/1.1 client.
pub fn client() -> Client<HttpConnector, Full<Bytes>> {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A finished response: status, headers, whole body as text.
#[derive(Debug)]
pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl Reply {
    /// A header as a string ("" when absent).
    pub fn header(&self, name: &str) -> &str {
        self.headers
            .get(name)
            .map(|v| v.to_str().unwrap())
            .unwrap_or("")
    }

    /// The body parsed as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }
}

/// Sends `req` with `client` and reads the whole response.
pub async fn send(client: &Client<HttpConnector, Full<Bytes>>, req: Request<Full<Bytes>>) -> Reply {
    let res = client.request(req).await.expect("request failed");
    let (parts, body) = res.into_parts();
    let body = body.collect().await.expect("body failed").to_bytes();
    Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

/// `GET http://{addr}{path}` with extra headers.
pub async fn get_with(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut req = Request::get(format!("http://{addr}{path}"));
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    send(&client(), req.body(Full::new(Bytes::new())).unwrap()).await
}

/// `GET http://{addr}{path}`.
pub async fn get(addr: SocketAddr, path: &str) -> Reply {
    get_with(addr, path, &[]).await
}

/// The request and response types of [`ok_service`].
pub type TestRequest = Request<Full<Bytes>>;
/// The response of [`ok_service`].
pub type TestResponse = http::Response<Full<Bytes>>;

/// An always-ready service answering 200 "ok", for unit-style tests.
pub fn ok_service() -> impl tower::Service<
    TestRequest,
    Response = TestResponse,
    Error = Infallible,
    Future = std::future::Ready<Result<TestResponse, Infallible>>,
> + Clone {
    tower::service_fn(|_req: TestRequest| {
        std::future::ready(Ok(http::Response::new(Full::new(Bytes::from_static(
            b"ok",
        )))))
    })
}

/// A response body that yields one chunk, `tick`, then never ends (a
/// stream a client keeps open).
pub struct Endless(bool);

impl Endless {
    /// A new endless body.
    pub fn new() -> Self {
        Self(false)
    }
}

impl http_body::Body for Endless {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if std::mem::replace(&mut self.0, true) {
            std::task::Poll::Pending
        } else {
            std::task::Poll::Ready(Some(Ok(http_body::Frame::data(Bytes::from_static(
                b"tick",
            )))))
        }
    }
}

/// A gRPC answer's body: one message (if any), then `trailers` (its
/// `grpc-status`: not trailers-only, so a breaker must read them).
pub struct GrpcUnary {
    pub message: Option<Bytes>,
    pub trailers: Option<HeaderMap>,
}

impl http_body::Body for GrpcUnary {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Bytes>, Infallible>>> {
        if let Some(m) = self.message.take() {
            return std::task::Poll::Ready(Some(Ok(http_body::Frame::data(m))));
        }
        std::task::Poll::Ready(
            self.trailers
                .take()
                .map(|t| Ok(http_body::Frame::trailers(t))),
        )
    }
}

/// Reads a child process's stdout line by line on a thread, so a test can
/// wait for a line with a timeout (`recv_timeout`) without blocking on the
/// pipe. Takes the child's stdout (it must be `Stdio::piped()`).
pub fn stdout_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    use std::io::{BufRead, BufReader};
    let out = child.stdout.take().expect("stdout must be piped");
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// `target/<profile>/examples/<name>`: `cargo test` builds the examples
/// first; when only one test was asked for, build it here.
pub fn example_binary(name: &str) -> std::path::PathBuf {
    let exe = std::env::current_exe().unwrap();
    let bin = exe
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("examples")
        .join(name);
    if !bin.exists() {
        let status = std::process::Command::new(env!("CARGO"))
            .args(["build", "--example", name, "--all-features"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cannot run cargo");
        assert!(status.success(), "cannot build the {name} example");
    }
    bin
}

/// A running example program, its stdout read line by line; killed if the
/// test fails before it exits.
pub struct Running {
    name: String,
    child: Option<std::process::Child>,
    lines: std::sync::mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    /// Spawns `command` (named `name` in failure messages) with its stdout
    /// piped to the test.
    pub fn spawn(name: &str, mut command: std::process::Command) -> Self {
        let mut child = command
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let lines = stdout_lines(&mut child);
        Self {
            name: name.to_owned(),
            child: Some(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().unwrap().id()
    }

    /// The rest of the first stdout line starting with `prefix`.
    pub fn expect(&mut self, prefix: &str, within: std::time::Duration) -> String {
        let deadline = std::time::Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if let Some(rest) = line.strip_prefix(prefix) {
                        return rest.trim().to_owned();
                    }
                }
                Err(_) => panic!("{}: no `{prefix}` line; saw {:?}", self.name, self.seen),
            }
        }
    }

    /// Sends `sig` (`-TERM`, `-INT`) with `kill`.
    pub fn signal(&self, sig: &str) {
        let ok = std::process::Command::new("kill")
            .args([sig, &self.pid().to_string()])
            .status()
            .unwrap()
            .success();
        assert!(ok, "kill {sig} failed");
    }

    /// Waits for the exit, up to `within`.
    pub fn wait(&mut self, within: std::time::Duration) -> Option<std::process::ExitStatus> {
        let deadline = std::time::Instant::now() + within;
        let child = self.child.as_mut().unwrap();
        loop {
            if let Some(status) = child.try_wait().unwrap() {
                self.child = None;
                return Some(status);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A `redis-server` child process on a loopback port (no persistence),
/// killed on drop; `stop` and `restart` (same port) simulate an outage.
/// For the Redis-backed rate-limit tests.
pub struct RedisProcess {
    bin: String,
    /// Its port on 127.0.0.1.
    pub port: u16,
    child: Option<std::process::Child>,
}

impl RedisProcess {
    /// Starts one on a free port, or returns `None` (saying so) when the
    /// binary (`REDIS_SERVER`, `/usr/bin/redis-server`, or on `PATH`) is
    /// missing outside CI. Under CI (`CI` set) a missing binary fails.
    pub fn start() -> Option<Self> {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| "/usr/bin/redis-server".into());
        let found = std::path::Path::new(&bin)
            .exists()
            .then(|| bin.clone())
            .or_else(|| {
                std::env::var_os("PATH").and_then(|paths| {
                    std::env::split_paths(&paths)
                        .map(|p| p.join("redis-server"))
                        .find(|p| p.exists())
                        .map(|p| p.to_string_lossy().into_owned())
                })
            });
        let Some(bin) = found else {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server not found ({bin}): CI must install it"
            );
            eprintln!("SKIPPED: redis-server not found ({bin})");
            return None;
        };
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Self {
            bin,
            port,
            child: None,
        };
        s.restart();
        Some(s)
    }

    /// Starts the server (again) on its port and waits until it accepts.
    pub fn restart(&mut self) {
        let child = std::process::Command::new(&self.bin)
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    /// Kills the server (an outage).
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// `redis://127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        self.stop();
    }
}
