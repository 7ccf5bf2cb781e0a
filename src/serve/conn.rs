//! One connection: hyper-util's auto (HTTP/1.1 + h2c) connection, driven
//! through the shutdown phases.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{Notify, OwnedSemaphorePermit, oneshot};
use tokio::time::{Instant, sleep_until};
use tower::{BoxError, Service};

use super::service::HyperService;
use super::state::Shared;
use crate::shutdown::{Phase, State};
use crate::util::lanes::Laned;

const UNKNOWN: u8 = 0;
const HTTP1: u8 = 1;
const HTTP2: u8 = 2;

/// What the service side of a connection tells its task: the protocol, and
/// requests started and ended (for the idle timeout).
pub(crate) struct ConnShared {
    state: Arc<Laned<State>>,
    proto: AtomicU8,
    started: AtomicU64,
    ended: AtomicU64,
    /// Notified when the first HTTP/2 request shows the protocol.
    h2_seen: Notify,
}

impl ConnShared {
    fn new(state: Arc<Laned<State>>) -> Self {
        Self {
            state,
            proto: AtomicU8::new(UNKNOWN),
            started: AtomicU64::new(0),
            ended: AtomicU64::new(0),
            h2_seen: Notify::new(),
        }
    }

    #[inline]
    pub(crate) fn phase(&self) -> Phase {
        self.state.phase()
    }

    /// Records the protocol on the first request.
    #[inline]
    pub(crate) fn seen(&self, http1: bool) {
        if self.proto.load(Ordering::Relaxed) == UNKNOWN {
            if http1 {
                self.proto.store(HTTP1, Ordering::Relaxed);
            } else {
                self.proto.store(HTTP2, Ordering::Relaxed);
                self.h2_seen.notify_one();
            }
        }
    }

    /// A request starts; it ends when the returned value is dropped (with
    /// the response body, or with the future if no response came).
    #[inline]
    pub(crate) fn start(self: &Arc<Self>) -> Active {
        self.started.fetch_add(1, Ordering::Relaxed);
        Active(Arc::clone(self))
    }

    fn is_h2(&self) -> bool {
        self.proto.load(Ordering::Relaxed) == HTTP2
    }

    /// No request in progress.
    fn is_idle(&self) -> bool {
        self.started.load(Ordering::Relaxed) == self.ended.load(Ordering::Relaxed)
    }
}

/// A request in progress on its connection.
pub(crate) struct Active(Arc<ConnShared>);

impl Active {
    #[inline]
    pub(crate) fn phase(&self) -> Phase {
        self.0.phase()
    }
}

impl Drop for Active {
    #[inline]
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::Relaxed);
    }
}

/// Counts an open connection (or the listener) for the drain and the
/// `rampart_connections` gauge, from before it is spawned until it closes.
pub(crate) struct Hold {
    shared: Arc<Shared>,
    connection: bool,
    _permit: Option<OwnedSemaphorePermit>,
}

impl Hold {
    pub(crate) fn listener(shared: &Arc<Shared>) -> Self {
        shared.state.hold();
        Self {
            shared: Arc::clone(shared),
            connection: false,
            _permit: None,
        }
    }

    pub(crate) fn connection(shared: &Arc<Shared>, permit: Option<OwnedSemaphorePermit>) -> Self {
        shared.state.hold();
        shared.metrics.connections.increment(1.0);
        Self {
            shared: Arc::clone(shared),
            connection: true,
            _permit: permit,
        }
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        if self.connection {
            self.shared.metrics.connections.decrement(1.0);
        }
        // The permit is released after this (field order), which is fine:
        // the drain only waits on the count.
        self.shared.state.unhold();
    }
}

/// Serves one accepted connection until it closes, following the phases:
///
/// - shutdown requested: HTTP/2 connections get GOAWAY (HTTP/1 answers
///   carry `Connection: close`, see the service);
/// - draining: a connection with no request in progress gets
///   `connection_grace` to send one, then is closed gracefully (hyper
///   finishes a request in progress first);
/// - the drain deadline: graceful close of what is left (the drain layer
///   answers aborted requests), then a hard close after `abort_grace`.
pub(crate) async fn serve_connection<S, B>(
    shared: Arc<Shared>,
    hold: Hold,
    stream: TcpStream,
    peer: SocketAddr,
    service: S,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let _hold = hold;
    if shared.config.tcp_nodelay {
        let _ = stream.set_nodelay(true);
    }
    let (io, mut returned) = Io::new(stream);
    let hard_close = drive(&shared, io, peer, service).await;
    // hyper is done with the socket (and has dropped it, unless an upgrade
    // took it): close it without a reset.
    if let (false, Ok(stream)) = (hard_close, returned.try_recv()) {
        linger(stream).await;
    }
}

/// How long a closed connection is drained of what the client still sends,
/// so that closing it does not reset it (Go's `net/http` waits 500 ms the
/// same way before closing).
const LINGER: Duration = Duration::from_millis(500);

/// Half-closes the socket, then reads and discards until the client
/// closes too (or `LINGER` passes). Closing a socket with unread data
/// makes the kernel send a reset, which can destroy the last response (or
/// an HTTP/2 GOAWAY) before the client reads it.
async fn linger(mut stream: TcpStream) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let _ = stream.shutdown().await;
    let mut buf = [0u8; 1024];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// The connection's IO for hyper: the socket, handed back to the task when
/// hyper drops it, for [`linger`].
struct Io {
    stream: Option<TcpStream>,
    back: Option<oneshot::Sender<TcpStream>>,
}

impl Io {
    fn new(stream: TcpStream) -> (Self, oneshot::Receiver<TcpStream>) {
        let (tx, rx) = oneshot::channel();
        (
            Self {
                stream: Some(stream),
                back: Some(tx),
            },
            rx,
        )
    }

    fn stream(self: Pin<&mut Self>) -> Pin<&mut TcpStream> {
        Pin::new(
            self.get_mut()
                .stream
                .as_mut()
                .expect("the stream is taken on drop only"),
        )
    }
}

impl Drop for Io {
    fn drop(&mut self) {
        if let (Some(stream), Some(back)) = (self.stream.take(), self.back.take()) {
            let _ = back.send(stream);
        }
    }
}

impl AsyncRead for Io {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Io {
    #[inline]
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write(cx, buf)
    }

    #[inline]
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.stream().poll_write_vectored(cx, bufs)
    }

    #[inline]
    fn is_write_vectored(&self) -> bool {
        self.stream
            .as_ref()
            .is_some_and(TcpStream::is_write_vectored)
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_flush(cx)
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.stream().poll_shutdown(cx)
    }
}

/// Runs hyper's connection through the phases; true if it was cut off at
/// the hard-close deadline (or the coordinator gave up), false if it ended
/// by itself.
async fn drive<S, B>(shared: &Arc<Shared>, io: Io, peer: SocketAddr, service: S) -> bool
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let conn_shared = Arc::new(ConnShared::new(Arc::clone(&shared.state)));
    let service = HyperService::new(service, peer, Arc::clone(&conn_shared));
    let conn = shared
        .builder
        .serve_connection_with_upgrades(TokioIo::new(io), service);
    tokio::pin!(conn);

    let mut phases = shared.shutdown.subscribe();
    let mut phases_open = true;
    let mut phase = *phases.borrow_and_update();
    // Has hyper been asked to close (GOAWAY for HTTP/2)?
    let mut closing = false;
    let mut grace_at: Option<Instant> = None;
    let mut abort_at: Option<Instant> = None;
    let mut hard_close_at: Option<Instant> = None;

    // Idle limits, checked by one ticker (no timer per request): on
    // HTTP/1 (and before the protocol is known) `header_read_timeout` runs
    // while no request is in progress, as hyper's own timer would (waiting
    // for the headers of the first or the next request); the keep-alive
    // timeout on both protocols.
    let header_limit = shared.config.header_read_timeout;
    let idle_limit = shared.config.keep_alive_timeout;
    let shortest = if idle_limit.is_zero() {
        header_limit
    } else {
        header_limit.min(idle_limit)
    };
    let tick = (shortest / IDLE_TICKS).max(Duration::from_millis(1));
    let mut ticker = tokio::time::interval_at(Instant::now() + tick, tick);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut idle_ticks = 0u32;
    let mut last_started = 0u64;

    loop {
        if phase == Phase::Done {
            // The coordinator gave up waiting: nothing is owed any more.
            break;
        }
        if phase >= Phase::ShutdownRequested && !closing && conn_shared.is_h2() {
            // GOAWAY: the client opens no new streams here and moves on;
            // streams it already opened are served.
            conn.as_mut().graceful_shutdown();
            closing = true;
        }
        if phase >= Phase::Draining && hard_close_at.is_none() {
            let deadline = shared.drain_deadline();
            grace_at = Some(deadline.min(Instant::now() + shared.config.connection_grace));
            abort_at = Some(deadline);
            hard_close_at = Some(deadline + shared.shutdown.config().abort_grace);
        }
        let waiting_for_proto = phase >= Phase::ShutdownRequested
            && !closing
            && conn_shared.proto.load(Ordering::Relaxed) == UNKNOWN;
        tokio::select! {
            biased;
            res = conn.as_mut() => {
                if let Err(e) = res {
                    shared.connection_error(peer, &*e);
                }
                return false;
            }
            changed = phases.changed(), if phases_open => match changed {
                Ok(()) => phase = *phases.borrow_and_update(),
                Err(_) => phases_open = false,
            },
            () = conn_shared.h2_seen.notified(), if waiting_for_proto => {}
            () = sleep_until(grace_at.unwrap_or_else(far)), if grace_at.is_some() && !closing => {
                if conn_shared.is_idle() && !conn_shared.is_h2() {
                    // No request came (hyper would keep waiting for the
                    // headers of a first request): close, lingering.
                    return false;
                }
                conn.as_mut().graceful_shutdown();
                closing = true;
            }
            () = sleep_until(abort_at.unwrap_or_else(far)), if abort_at.is_some() => {
                abort_at = None;
                if !closing {
                    conn.as_mut().graceful_shutdown();
                    closing = true;
                }
            }
            () = sleep_until(hard_close_at.unwrap_or_else(far)), if hard_close_at.is_some() => {
                shared.metrics.aborted.increment(1);
                break;
            }
            _ = ticker.tick(), if !closing => {
                let started = conn_shared.started.load(Ordering::Relaxed);
                let ended = conn_shared.ended.load(Ordering::Relaxed);
                if started == ended && started == last_started {
                    idle_ticks += 1;
                    // Idle at least this long (at most one tick more).
                    let idle_for = tick * idle_ticks;
                    let header_read = !conn_shared.is_h2() && idle_for >= header_limit;
                    let keep_alive = !idle_limit.is_zero() && idle_for >= idle_limit;
                    if header_read || keep_alive {
                        if header_read {
                            shared.metrics.header_read_timeouts.increment(1);
                        } else {
                            shared.metrics.keep_alive_timeouts.increment(1);
                        }
                        tracing::debug!(
                            target: "tower_rampart::serve",
                            name = %shared.config.name,
                            %peer,
                            kind = if header_read { "header_read" } else { "keep_alive" },
                            "connection timed out"
                        );
                        if !conn_shared.is_h2() {
                            // Nothing in progress: hyper's graceful close
                            // would wait for the headers it is reading
                            // (slowloris); close now, lingering.
                            return false;
                        }
                        conn.as_mut().graceful_shutdown();
                        closing = true;
                    }
                } else {
                    idle_ticks = 0;
                    last_started = started;
                }
            }
        }
    }
    tracing::debug!(
        target: "tower_rampart::serve",
        name = %shared.config.name,
        %peer,
        "connection closed at the drain deadline"
    );
    true
}

/// The idle limits are checked this many times per the shortest of them: a
/// connection is closed after between 1 and 1.25 times that limit idle.
const IDLE_TICKS: u32 = 4;

fn far() -> Instant {
    Instant::now() + Duration::from_secs(86_400 * 365)
}
