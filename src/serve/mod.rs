//! The server loop: one entry point for axum, tonic and any tower HTTP
//! service, tied to the [`Shutdown`] coordinator (feature `serve`).
//!
//! [`serve`] (or [`Server::serve`] with settings) serves a service on a
//! [`TcpListener`] with hyper-util's HTTP/1.1 + h2c connection builder: the
//! same bytes on the wire as `axum::serve` or tonic's server, with the
//! lifecycle done right and connection hygiene on by default.
//!
//! ```
//! use axum::{Router, routing::get};
//! use tower_rampart::serve::serve;
//! use tower_rampart::shutdown::Shutdown;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = Shutdown::builder()
//!     # .signals(false).shutdown_delay(std::time::Duration::ZERO)
//!     .build()?;
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(shutdown.drain_layer());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! # shutdown.trigger();
//! // Runs until the shutdown is done (SIGTERM, then delay, drain, hooks).
//! let report = serve(listener, app, &shutdown).await;
//! assert_eq!(report.aborted, 0);
//! # Ok(())
//! # }
//! ```
//!
//! The service receives `Request<hyper::body::Incoming>`: an axum
//! `Router`, tonic's `Routes` (`tonic::service::Routes`, also layered with
//! `tower::ServiceBuilder`), or any `Service<Request<Incoming>>` whose
//! response body is an [`http_body::Body`]. The peer address reaches it as
//! a plain [`SocketAddr`] request extension and, with the `axum` feature,
//! as axum's `ConnectInfo<SocketAddr>`: client-IP rate limiting works under
//! tonic with no extra code.
//!
//! # The lifecycle
//!
//! ```text
//! SIGTERM       +shutdown_delay            +drain_timeout   +abort_grace  hooks
//!    |  requested  |        draining              |  abort     |   ...     | done
//!    |  accept,    | stop accepting: take the     | abort what | hard-close|
//!    |  serve      | listen backlog, close the    | is left    | the rest  |
//!    |  h1: close  | listener (new connects are   | (503 /     |           |
//!    |  h2: GOAWAY | refused); idle connections   | UNAVAILABLE)          |
//!    |             | get connection_grace to send |            |           |
//!    |             | a request (answered, close)  |            |           |
//! ```
//!
//! - **Shutdown requested** (the delay): accepting and serving go on;
//!   HTTP/1.1 answers carry `Connection: close` and HTTP/2 connections get
//!   GOAWAY, so clients move to other instances by themselves.
//! - **Draining**: the loop stops accepting, but first takes every
//!   connection the kernel already accepted (the listen backlog), then
//!   closes the listener, so new connections are refused, never left
//!   hanging. A connection with no request in progress (from the backlog,
//!   or idle) gets [`connection_grace`](ServerConfig::connection_grace) to
//!   send one; it is answered (the drain layer admits it) with
//!   `Connection: close`. A connection whose request arrived is never
//!   closed without an answer. The coordinator's drain waits for these
//!   connections too.
//! - **At the drain deadline** what is left is aborted by the drain layer
//!   (answered 503 / `UNAVAILABLE`), connections are closed gracefully, and
//!   hard-closed after `abort_grace`. Then the hooks run and the future
//!   returns the [`ShutdownReport`].
//!
//! # Connection hygiene
//!
//! Each setting is in [`ServerConfig`] (the `[server]` section of the
//! config file): `header_read_timeout` (slowloris, 10s), `keep_alive_timeout`
//! (60s), `max_connections` with `at_max_connections` (`pause` accepting or
//! `refuse`), `http2_max_concurrent_streams` (200), HTTP/2 keep-alive pings
//! (every 30s, 20s to answer), `tcp_nodelay`.
//!
//! # Cost
//!
//! Per request: two request extensions (the peer address) and a marker,
//! one phase read, two relaxed counters and a reference count for the idle
//! limits. No timer per request: the header read and keep-alive limits are
//! checked by one ticker per connection. A service that is ready at once is
//! called in place, without a clone.
//!
//! # Metrics and events
//!
//! `name` is the server's name (default `server`).
//!
//! | metric | kind | labels | meaning |
//! |---|---|---|---|
//! | `rampart_connections` | gauge | `name` | connections open |
//! | `rampart_connections_accepted_total` | counter | `name` | connections accepted |
//! | `rampart_connections_refused_total` | counter | `name` | connections closed at once at `max_connections` (`refuse`) |
//! | `rampart_accept_paused_total` | counter | `name` | times accepting paused at `max_connections` (`pause`) |
//! | `rampart_connections_backlog_total` | counter | `name` | connections taken from the listen backlog when draining started |
//! | `rampart_connection_timeouts_total` | counter | `name`, `kind` (`header_read`, `keep_alive`) | connections closed by a timeout |
//! | `rampart_connections_aborted_total` | counter | `name` | connections hard-closed after the drain deadline |
//!
//! | event (target `tower_rampart::serve`) | level | fields |
//! |---|---|---|
//! | `listener closed` | INFO | `name`, `addr`, `backlog` |
//! | `max connections reached: accepting paused` | WARN | `name`, `max` |
//! | `accept failed` | WARN | `name`, `error` |
//! | `connection error` | DEBUG | `name`, `peer`, `error` |
//! | `connection timed out` | DEBUG | `name`, `peer`, `kind` (`header_read`, `keep_alive`) |
//! | `connection closed at the drain deadline` | DEBUG | `name`, `peer` |

mod config;
mod conn;
mod service;

use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::{Counter, Gauge};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{BoxError, Service};

pub use config::{AtMaxConnections, ServerConfig};

use crate::ConfigError;
use crate::shutdown::{Shutdown, ShutdownReport, State};
use conn::Hold;

/// Serves `service` on `listener` with the default [`ServerConfig`] until
/// `shutdown` is done; see the [module docs](self).
pub fn serve<S, B>(listener: TcpListener, service: S, shutdown: &Shutdown) -> Serve<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    Server::default().serve(listener, service, shutdown)
}

/// A validated server configuration: call [`serve`](Self::serve) with it.
#[derive(Clone, Default)]
pub struct Server {
    config: ServerConfig,
}

impl fmt::Debug for Server {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Server")
            .field("config", &self.config)
            .finish()
    }
}

impl Server {
    /// A builder with the defaults.
    pub fn builder() -> ServerBuilder {
        ServerBuilder::default()
    }

    pub(crate) fn from_config(config: ServerConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        Ok(Self { config })
    }

    /// The settings.
    pub fn config(&self) -> &ServerConfig {
        &self.config
    }

    /// Serves `service` on `listener` until `shutdown` is done. Await the
    /// returned [`Serve`] (it resolves with the report); the listener is
    /// used from the first poll.
    pub fn serve<S, B>(self, listener: TcpListener, service: S, shutdown: &Shutdown) -> Serve<S>
    where
        S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
        S::Future: Send + 'static,
        S::Error: Into<BoxError>,
        B: Body + Send + 'static,
        B::Data: Send,
        B::Error: Into<BoxError>,
    {
        Serve {
            server: self,
            listener,
            service,
            shutdown: shutdown.clone(),
        }
    }
}

/// Builds a [`Server`]; every setting is validated by
/// [`build`](Self::build). The settings are those of [`ServerConfig`].
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ServerBuilder {
    config: ServerConfig,
}

impl ServerBuilder {
    /// The name that labels metrics and events (default `server`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// How long an HTTP/1 client may take to send a request's headers,
    /// from the connection's start or the previous response (default 10s;
    /// must be > 0).
    pub fn header_read_timeout(mut self, timeout: Duration) -> Self {
        self.config.header_read_timeout = timeout;
        self
    }

    /// Close a connection idle (no request in progress) this long
    /// (default 60s; 0 disables).
    pub fn keep_alive_timeout(mut self, timeout: Duration) -> Self {
        self.config.keep_alive_timeout = timeout;
        self
    }

    /// At most this many connections open at once (default: no limit).
    pub fn max_connections(mut self, max: usize) -> Self {
        self.config.max_connections = Some(max);
        self
    }

    /// What to do at `max_connections` (default [`AtMaxConnections::Pause`]).
    pub fn at_max_connections(mut self, at_max: AtMaxConnections) -> Self {
        self.config.at_max_connections = at_max;
        self
    }

    /// How long a connection with no request in progress gets to send one
    /// once draining starts (default 5s).
    pub fn connection_grace(mut self, grace: Duration) -> Self {
        self.config.connection_grace = grace;
        self
    }

    /// Set `TCP_NODELAY` on accepted connections (default true).
    pub fn tcp_nodelay(mut self, enabled: bool) -> Self {
        self.config.tcp_nodelay = enabled;
        self
    }

    /// HTTP/2 `SETTINGS_MAX_CONCURRENT_STREAMS` (default 200).
    pub fn http2_max_concurrent_streams(mut self, max: u32) -> Self {
        self.config.http2_max_concurrent_streams = max;
        self
    }

    /// HTTP/2 keep-alive PING interval (default 30s; 0 disables) and the
    /// time to answer one (default 20s).
    pub fn http2_keep_alive(mut self, interval: Duration, timeout: Duration) -> Self {
        self.config.http2_keep_alive_interval = interval;
        self.config.http2_keep_alive_timeout = timeout;
        self
    }

    /// Validates the settings.
    pub fn build(self) -> Result<Server, ConfigError> {
        Server::from_config(self.config)
    }
}

/// The future of [`serve`]: await it (it implements [`IntoFuture`]) to run
/// the server; it resolves with the [`ShutdownReport`] once the shutdown is
/// done.
#[must_use = "a server does nothing unless awaited"]
pub struct Serve<S> {
    server: Server,
    listener: TcpListener,
    service: S,
    shutdown: Shutdown,
}

impl<S> fmt::Debug for Serve<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Serve")
            .field("server", &self.server)
            .field("listener", &self.listener)
            .field("shutdown", &self.shutdown)
            .finish_non_exhaustive()
    }
}

impl<S> Serve<S> {
    /// The address the listener is bound to.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }
}

impl<S, B> IntoFuture for Serve<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    type Output = ShutdownReport;
    type IntoFuture = Pin<Box<dyn Future<Output = ShutdownReport> + Send + 'static>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self))
    }
}

/// Metric handles, registered once per server.
pub(crate) struct Metrics {
    pub(crate) connections: Gauge,
    accepted: Counter,
    refused: Counter,
    paused: Counter,
    backlog: Counter,
    pub(crate) header_read_timeouts: Counter,
    pub(crate) keep_alive_timeouts: Counter,
    pub(crate) aborted: Counter,
}

impl Metrics {
    fn new(name: &str) -> Self {
        crate::metrics_help::describe();
        let n = name.to_owned();
        Self {
            connections: metrics::gauge!("rampart_connections", "name" => n.clone()),
            accepted: metrics::counter!("rampart_connections_accepted_total", "name" => n.clone()),
            refused: metrics::counter!("rampart_connections_refused_total", "name" => n.clone()),
            paused: metrics::counter!("rampart_accept_paused_total", "name" => n.clone()),
            backlog: metrics::counter!("rampart_connections_backlog_total", "name" => n.clone()),
            header_read_timeouts: metrics::counter!(
                "rampart_connection_timeouts_total",
                "name" => n.clone(),
                "kind" => "header_read"
            ),
            keep_alive_timeouts: metrics::counter!(
                "rampart_connection_timeouts_total",
                "name" => n.clone(),
                "kind" => "keep_alive"
            ),
            aborted: metrics::counter!("rampart_connections_aborted_total", "name" => n),
        }
    }
}

/// What every connection task of one server shares.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) builder: auto::Builder<TokioExecutor>,
    pub(crate) shutdown: Shutdown,
    pub(crate) state: Arc<State>,
    pub(crate) metrics: Metrics,
    drain_started: OnceLock<Instant>,
}

impl Shared {
    /// When the drain ends (the abort): `drain_timeout` after the first
    /// task saw draining start.
    pub(crate) fn drain_deadline(&self) -> Instant {
        *self.drain_started.get_or_init(Instant::now) + self.shutdown.config().drain_timeout
    }

    pub(crate) fn connection_error(
        &self,
        peer: SocketAddr,
        error: &(dyn std::error::Error + 'static),
    ) {
        let header_timeout = error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout);
        if header_timeout {
            self.metrics.header_read_timeouts.increment(1);
            tracing::debug!(
                target: "tower_rampart::serve",
                name = %self.config.name,
                %peer,
                "header read timeout"
            );
        } else {
            tracing::debug!(
                target: "tower_rampart::serve",
                name = %self.config.name,
                %peer,
                error = %error,
                "connection error"
            );
        }
    }
}

fn builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The header read timeout is the connection task's ticker: hyper's
        // own would arm (and allocate) a timer for every request.
        .header_read_timeout(None)
        .keep_alive(true);
    let interval =
        (!config.http2_keep_alive_interval.is_zero()).then_some(config.http2_keep_alive_interval);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.http2_max_concurrent_streams)
        .keep_alive_interval(interval)
        .keep_alive_timeout(config.http2_keep_alive_timeout);
    builder
}

/// Accept errors that concern one connection only.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

async fn run<S, B>(serve: Serve<S>) -> ShutdownReport
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let Serve {
        server,
        listener,
        service,
        shutdown,
    } = serve;
    let config = server.config;
    let shared = Arc::new(Shared {
        builder: builder(&config),
        metrics: Metrics::new(&config.name),
        state: Arc::clone(shutdown.state()),
        shutdown: shutdown.clone(),
        drain_started: OnceLock::new(),
        config,
    });
    let name = shared.config.name.as_str();
    let addr = listener.local_addr().ok();
    // The drain waits for the listener too, so the connections taken from
    // its backlog are counted before the coordinator looks.
    let listener_hold = Hold::listener(&shared);
    let limit = shared
        .config
        .max_connections
        .map(|max| Arc::new(Semaphore::new(max)));
    let draining = shutdown.draining();
    tokio::pin!(draining);

    'accept: loop {
        let mut permit = None;
        if let Some(limit) = &limit {
            if shared.config.at_max_connections == AtMaxConnections::Pause {
                if limit.available_permits() == 0 {
                    shared.metrics.paused.increment(1);
                    tracing::warn!(
                        target: "tower_rampart::serve",
                        name,
                        max = shared.config.max_connections,
                        "max connections reached: accepting paused"
                    );
                }
                tokio::select! {
                    biased;
                    () = &mut draining => break 'accept,
                    p = Arc::clone(limit).acquire_owned() => {
                        permit = Some(p.expect("the semaphore is never closed"));
                    }
                }
            }
        }
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut draining => break 'accept,
            res = listener.accept() => match res {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, say: back off, keep serving
                    // what is open.
                    tracing::warn!(target: "tower_rampart::serve", name, error = %e, "accept failed");
                    tokio::select! {
                        () = &mut draining => break 'accept,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        if permit.is_none() {
            if let Some(limit) = &limit {
                match Arc::clone(limit).try_acquire_owned() {
                    Ok(p) => permit = Some(p),
                    Err(_) => {
                        shared.metrics.refused.increment(1);
                        drop(stream);
                        continue;
                    }
                }
            }
        }
        spawn(&shared, permit, stream, peer, &service);
    }

    shared.drain_started.get_or_init(Instant::now);
    // Draining: take what the kernel already accepted, then close the
    // listener: from now on connecting is refused, never left hanging.
    // tokio's `accept` would trust the readiness its reactor last saw and
    // miss connections queued since; the std listener asks the kernel each
    // time, so the window between the last accept and the close is a few
    // system calls.
    let mut backlog = 0u64;
    match listener.into_std() {
        Ok(std_listener) => {
            loop {
                match std_listener.accept() {
                    Ok((stream, peer)) => {
                        let stream = stream
                            .set_nonblocking(true)
                            .and_then(|()| tokio::net::TcpStream::from_std(stream));
                        if let Ok(stream) = stream {
                            backlog += 1;
                            // Owed an answer: served even above max_connections.
                            spawn(&shared, None, stream, peer, &service);
                        }
                    }
                    Err(e) if is_connection_error(&e) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // WouldBlock: the backlog is empty.
                    Err(_) => break,
                }
            }
            drop(std_listener);
        }
        Err(e) => {
            tracing::warn!(target: "tower_rampart::serve", name, error = %e, "accept failed");
        }
    }
    shared.metrics.backlog.increment(backlog);
    tracing::info!(
        target: "tower_rampart::serve",
        name,
        addr = ?addr,
        backlog,
        "listener closed"
    );
    drop(listener_hold);
    shutdown.done().await
}

fn spawn<S, B>(
    shared: &Arc<Shared>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    service: &S,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    shared.metrics.accepted.increment(1);
    let hold = Hold::connection(shared, permit);
    tokio::spawn(conn::serve_connection(
        Arc::clone(shared),
        hold,
        stream,
        peer,
        service.clone(),
    ));
}
