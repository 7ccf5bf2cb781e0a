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
//!   hanging. On Linux the kernel is first told to start no new handshake
//!   (a socket filter drops connection requests for the 50 ms it takes
//!   handshakes under way to land in the backlog): a client connecting in
//!   that moment retries its request to connect a second later and is
//!   refused, where the close would otherwise have reset a connection the
//!   kernel completed for it, perhaps with its request already sent.
//!   A connection with no request in progress (from the backlog,
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
//! limits. An axum `Router` is given its (unit) state once, as
//! `axum::serve` does: a `Router<()>` that never was would apply its
//! route layers again on every request. No timer per request: the header read and keep-alive limits are
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

mod accept;
mod config;
mod conn;
mod service;
mod state;

use std::fmt;
use std::future::{Future, IntoFuture};
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use tokio::net::TcpListener;
use tower::{BoxError, Service};

pub use config::{AtMaxConnections, ServerConfig};

use crate::ConfigError;
use crate::shutdown::{Shutdown, ShutdownReport};

use crate::metrics_help::{Help, MetricKind};
use metrics::Unit;

/// The `# HELP` text and unit of every metric this module records,
/// described to the recorder when the layer registers its metrics.
pub(crate) const METRICS: &[Help] = &[
    Help {
        name: "rampart_connections",
        kind: MetricKind::Gauge,
        unit: Some(Unit::Count),
        text: "Connections the serve loop holds open.",
    },
    Help {
        name: "rampart_connections_accepted_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Connections the serve loop accepted.",
    },
    Help {
        name: "rampart_connections_refused_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Connections closed at once because max_connections was reached (at_max_connections = \"refuse\").",
    },
    Help {
        name: "rampart_accept_paused_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Times the serve loop paused accepting because max_connections was reached.",
    },
    Help {
        name: "rampart_connections_backlog_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Connections taken from the listen backlog when the listener closed, and answered.",
    },
    Help {
        name: "rampart_connection_timeouts_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Connections closed by a timeout, by kind (header_read, keep_alive).",
    },
    Help {
        name: "rampart_connections_aborted_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Connections still open at the drain deadline, closed by force.",
    },
];

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
            service: finalize_router(service),
            shutdown: shutdown.clone(),
        }
    }
}

/// An axum `Router<()>` that was never given its state turns its handlers
/// into routes, applying every `Router::layer` again, on every request;
/// `with_state(())` does it once (`axum::serve` does the same through
/// `into_make_service`). Any other service is returned unchanged.
#[cfg(feature = "axum")]
fn finalize_router<S: 'static>(service: S) -> S {
    let any: Box<dyn std::any::Any> = Box::new(service);
    let any = match any.downcast::<axum::Router>() {
        Ok(router) => Box::new(router.with_state::<()>(())) as Box<dyn std::any::Any>,
        Err(other) => other,
    };
    *any.downcast::<S>().expect("the same type")
}

#[cfg(not(feature = "axum"))]
fn finalize_router<S>(service: S) -> S {
    service
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
    /// time to answer one (default 20s). While on, it costs every HTTP/2
    /// request a little, whatever the interval (about 2 % of h2c
    /// throughput on a small handler: see
    /// [`ServerConfig::http2_keep_alive_interval`]).
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
        Box::pin(accept::run(self))
    }
}
