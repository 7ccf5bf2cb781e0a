//! Graceful shutdown: a coordinator and the drain layer it waits on.
//!
//! A [`Shutdown`] coordinator is built once (cheap to clone) and moves
//! through [`Phase`]s when `SIGTERM`, `SIGINT` or [`Shutdown::trigger`]
//! starts it:
//!
//! 1. **shutdown requested**: readiness fails at once (the health
//!    registry's built-in `shutdown` check), requests are still served for
//!    `shutdown_delay` (Kubernetes removes the pod from its endpoints while
//!    SIGTERM is delivered: the two race) and HTTP/1 answers carry
//!    `Connection: close` so clients move to other instances. `SIGINT` uses
//!    `sigint_delay` (0 by default) so Ctrl-C in a terminal does not wait;
//! 2. **draining**: [`Shutdown::draining`] resolves and the listener stops
//!    accepting; in-flight requests have `drain_timeout` to finish. With the
//!    crate's own server loop (`tower_rampart::serve`, feature `serve`) the
//!    connections already queued in the listen backlog are taken and
//!    answered first, then the listener closes, and requests arriving on
//!    connections the server still holds are answered (the drain waits for
//!    those connections too). Under another server (axum's
//!    `with_graceful_shutdown`, tonic's `serve_with_shutdown`), new requests
//!    get 503 with `Retry-After` and `Connection: close` (gRPC
//!    `UNAVAILABLE`). Then whatever is left, a handler that
//!    never returns or an open stream included, is aborted: its response
//!    future is dropped and answered 503 (gRPC `UNAVAILABLE`), or its body
//!    is cut off (gRPC: `grpc-status: 14` trailers; otherwise an error, so
//!    the connection closes);
//! 3. cleanup hooks ([`Shutdown::on_shutdown`]) run one by one, each bounded
//!    by its timeout;
//! 4. **done**: a [`ShutdownReport`] (what started it, how long each phase
//!    took, how many requests finished or were aborted, each hook) is
//!    returned by [`Shutdown::done`] and emitted as a tracing event.
//!
//! `tower_rampart::serve` runs these phases for axum and tonic alike (see
//! its docs for the timeline). Under axum's or tonic's own server loop,
//! [`Shutdown::run_server`] runs the server future until it ends or the
//! shutdown is done, whichever comes first: their graceful shutdown waits
//! for every connection, and a client that stopped reading would hold them
//! forever.
//!
//! A second signal while shutting down exits the process at once
//! (`force_exit_code`, default 1). After a programmatic trigger, the first
//! signal is only logged and the next one forces the exit.
//!
//! # Long-lived streams
//!
//! A response stream (gRPC server streaming, server-sent events, a long
//! poll) is in flight until it ends: left open, it holds the drain until
//! `drain_timeout` and is then aborted, and the pod exits late. End it when
//! draining starts instead, with [`Shutdown::until_draining`]: the stream
//! ends cleanly (gRPC status `OK`; an HTTP body's last chunk) at the moment
//! the listener closes, the drain finishes and the process exits after its
//! `shutdown_delay`, not at the drain deadline. A task that feeds a channel
//! can do the same with `tokio::select!` on [`Shutdown::draining`]. The
//! `grpc.health.v1` `Watch` streams served by the health registry (feature
//! `tonic`) end this way by themselves.
//!
//! The [`DrainLayer`] ([`Shutdown::drain_layer`]) counts requests in flight
//! (from the call until the response body ends or is dropped): that count is
//! what the coordinator waits on. On the happy path it costs two atomic
//! operations on the count and one phase read; it takes a short lock only
//! when the inner future or body is pending, to register for the abort.
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower_rampart::shutdown::{Phase, Shutdown};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = Shutdown::builder()
//!     .shutdown_delay(Duration::from_secs(5))
//!     .drain_timeout(Duration::from_secs(20))
//!     # .signals(false).shutdown_delay(Duration::ZERO)
//!     .build()?;
//! shutdown.on_shutdown("flush", async { /* flush telemetry */ });
//!
//! let app = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(shutdown.drain_layer());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
//! let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.draining());
//! # shutdown.trigger();
//! // Bounded even if a client stops reading (axum would wait for it).
//! let report = shutdown.run_server(server).await?;
//! assert_eq!(shutdown.phase(), Phase::Done);
//! assert_eq!(report.aborted, 0);
//! # Ok(())
//! # }
//! ```
//!
//! # Metrics and events
//!
//! Install the `metrics` recorder before building the coordinator: handles
//! are registered once, at build time. `name` is the coordinator's name.
//!
//! | metric | kind | labels | meaning |
//! |---|---|---|---|
//! | `rampart_in_flight_requests` | gauge | `name` | requests in flight through the drain layers (the drain's own count, set every 250 ms and when draining starts and ends) |
//! | `rampart_shutdown_phase` | gauge | `name` | 0 running, 1 shutdown requested, 2 draining, 3 done |
//! | `rampart_drain_duration_seconds` | histogram | `name` | how long the drain took (abort included) |
//! | `rampart_drain_aborted_total` | counter | `name` | requests aborted at the drain deadline |
//! | `rampart_requests_refused_total` | counter | `name`, `kind="draining"` | requests refused while draining |
//!
//! | event (target `tower_rampart::shutdown`) | level | fields |
//! |---|---|---|
//! | `shutdown requested` | INFO | `name`, `trigger` |
//! | `shutdown phase` | INFO | `name`, `phase`, `in_flight` |
//! | `drain deadline reached: aborting in-flight requests` | WARN | `name`, `in_flight` |
//! | `cleanup hook failed` | WARN | `name`, `hook`, `outcome`, `duration_ms` |
//! | `shutdown complete` | INFO (WARN if anything was aborted or a hook failed) | `name`, `trigger`, `delay_ms`, `drain_ms`, `hooks_ms`, `total_ms`, `in_flight_at_drain`, `finished`, `aborted`, `hooks`, `hooks_failed` |
//! | `second signal: exiting now` | ERROR | `name`, `signal`, `code` |
//! | `signal during shutdown: already shutting down, a second one forces the exit` | WARN | `name`, `signal` |
//! | `cannot listen to signal` | WARN | `signal`, `error` |

mod abort;
mod config;
mod coordinator;
mod drive;
mod future;
mod layer;
mod phase;
mod report;
mod signals;
mod state;
mod stream;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{HeaderValue, Request, Response, Version, header};
use tower::{BoxError, Service};

pub use config::ShutdownConfig;
pub use coordinator::{Shutdown, ShutdownBuilder};
pub use future::{DrainBody, ResponseFuture};
pub use layer::DrainLayer;
pub use phase::{Phase, Trigger};
pub use report::{HookOutcome, HookReport, ShutdownReport};
pub use stream::UntilDraining;

use crate::rejection::{ErrorMode, HttpMode, Protocol, ProtocolPin, ResponseBody};
use crate::util::lanes::Laned;
#[cfg(feature = "config")] // the stack's front
pub(crate) use future::{aborted, poll_admitted, poll_unless_aborted};
pub(crate) use state::Guard;
pub(crate) use state::State;

/// Request extension set by the `serve` loop on every request: it closes
/// its connections gracefully once draining starts (the listener first), so
/// a request that still arrives on one was sent to a connection the server
/// accepted and owes an answer; the drain layer admits it.
#[derive(Debug, Clone, Copy)]
#[cfg_attr(not(feature = "serve"), allow(dead_code))]
pub(crate) struct Owed;

/// Counts requests in flight for the [`Shutdown`] coordinator, marks
/// answers `Connection: close` once shutdown is requested, refuses new
/// requests while draining (except those the crate's `serve` loop still
/// owes an answer: they arrive on connections it accepted and closes
/// itself) and aborts what is left at the drain deadline. Built by
/// [`DrainLayer`].
pub struct Drain<S, M = HttpMode> {
    inner: S,
    state: Arc<Laned<State>>,
    _mode: PhantomData<fn() -> M>,
}

impl<S, M> Drain<S, M> {
    pub(crate) fn new(inner: S, state: Arc<Laned<State>>) -> Self {
        Self {
            inner,
            state,
            _mode: PhantomData,
        }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, M> Clone for Drain<S, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            state: Arc::clone(&self.state),
            _mode: PhantomData,
        }
    }
}

impl<S, M> fmt::Debug for Drain<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Drain")
            .field("name", &self.state.name)
            .finish_non_exhaustive()
    }
}

impl<S, M, Req> Service<Req> for Drain<S, M>
where
    S: Service<Req>,
    M: DrainMode<Req, S::Response, S::Error>,
    S::Error: Into<M::Error>,
{
    type Response = M::Response;
    type Error = M::Error;
    type Future = ResponseFuture<S::Future, Req, M, M::Context>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let cx = M::context(&req);
        let facts = M::facts(&req, cx);
        match self.state.admit_unless_draining(|| M::owed(&req)) {
            Some(guard) => {
                // The layers below read the protocol from the pin.
                let _pin = M::pin(&req, cx);
                ResponseFuture::admitted(self.inner.call(req), guard, cx, facts)
            }
            None => ResponseFuture::rejected(self.state.draining_rejection(facts.http1), cx, facts),
        }
    }
}

mod sealed {
    use super::Guard;
    use crate::rejection::Mode;
    use crate::rejection::ProtocolPin;

    /// What the drain layer learns from a request before it moves into the
    /// inner service.
    #[derive(Debug, Clone, Copy)]
    pub struct Facts {
        /// HTTP/1.x: answers carry `Connection: close` once shutdown starts.
        pub(crate) http1: bool,
        /// A gRPC request: a body cut off at the drain deadline ends with
        /// `grpc-status` trailers.
        pub(crate) grpc: bool,
    }

    /// The drain layer's part of a [`Mode`]: what it reads from the request
    /// and how an admitted answer keeps the request counted until it ends.
    /// Implemented by [`HttpMode`](crate::rejection::HttpMode) (the body is
    /// wrapped in a `DrainBody`) and [`ErrorMode`](crate::rejection::ErrorMode)
    /// (the request is done when the inner future is).
    pub trait DrainMode<Req, Res, E>: Mode<Req, Self::Tracked, E> {
        /// The inner service's response, made to hold the request's guard.
        type Tracked;

        /// What the drain layer needs to know about `req` (`cx` is the
        /// mode's context, already captured: the protocol is read once).
        fn facts(req: &Req, cx: <Self as Mode<Req, Self::Tracked, E>>::Context) -> Facts;

        /// Whether `req` came on a connection the crate's `serve` loop
        /// accepted and still owes an answer (it is admitted while
        /// draining). Only asked while draining.
        fn owed(req: &Req) -> bool;

        /// Pins the protocol of `req` (already read into `cx`) for the
        /// inner service's `call`.
        fn pin(req: &Req, cx: <Self as Mode<Req, Self::Tracked, E>>::Context) -> ProtocolPin;

        /// The layer's answer to an admitted request: the response made to
        /// hold `guard` (or `guard` dropped: the request is done), mapped
        /// as the mode maps answers.
        fn finish(
            result: Result<Res, E>,
            guard: Guard,
            facts: Facts,
        ) -> Result<Self::Response, Self::Error>;
    }
}

pub(crate) use sealed::{DrainMode, Facts};

use crate::metrics_help::{Help, MetricKind};
use metrics::Unit;

/// The `# HELP` text and unit of every metric this module records,
/// described to the recorder when the layer registers its metrics.
pub(crate) const METRICS: &[Help] = &[
    Help {
        name: "rampart_in_flight_requests",
        kind: MetricKind::Gauge,
        unit: Some(Unit::Count),
        text: "Requests in flight through the drain layer (sampled every 250 ms).",
    },
    Help {
        name: "rampart_shutdown_phase",
        kind: MetricKind::Gauge,
        unit: None,
        text: "Shutdown phase: 0 running, 1 shutdown requested, 2 draining, 3 done.",
    },
    Help {
        name: "rampart_drain_duration_seconds",
        kind: MetricKind::Histogram,
        unit: Some(Unit::Seconds),
        text: "How long draining in-flight requests took at shutdown.",
    },
    Help {
        name: "rampart_drain_aborted_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Requests aborted at the drain deadline.",
    },
    Help {
        name: "rampart_requests_refused_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Requests refused by the drain layer, by kind (draining).",
    },
];

impl<ReqB, ResB, E> DrainMode<Request<ReqB>, Response<ResB>, E> for HttpMode {
    type Tracked = Response<DrainBody<ResB>>;

    #[inline]
    fn facts(req: &Request<ReqB>, protocol: Protocol) -> Facts {
        http_facts(req, protocol)
    }

    #[inline]
    fn owed(req: &Request<ReqB>) -> bool {
        is_owed(req)
    }

    #[inline]
    fn pin(req: &Request<ReqB>, protocol: Protocol) -> ProtocolPin {
        protocol.pin(req.headers())
    }

    // Forced inline: not inlined, `finish` read the inner service's
    // response back through a pointer just after the inner future wrote it
    // (a 16-byte load over two 8-byte stores, stalled on store
    // forwarding). `benches/README.md`, drain row (2026-11-30 22:05,
    // alternated runs): `ready/rampart_drain` +47.0 -> +37.5 ns,
    // 1 077 -> 1 026 instructions per call; pending once +82.5 -> +65.5 ns.
    // `track`, forced too, measured worse (1 061 instructions, no faster).
    #[inline(always)]
    fn finish(
        result: Result<Response<ResB>, E>,
        guard: Guard,
        facts: Facts,
    ) -> Result<Response<ResponseBody<DrainBody<ResB>>>, E> {
        Ok(track(result?, guard, facts, ResponseBody::new))
    }
}

/// What the drain needs to know about an HTTP request.
#[inline]
pub(crate) fn http_facts<B>(req: &Request<B>, protocol: Protocol) -> Facts {
    Facts {
        http1: req.version() <= Version::HTTP_11,
        grpc: protocol == Protocol::Grpc,
    }
}

/// Did `req` come on a connection the crate's `serve` loop accepted and
/// still owes an answer (admitted while draining)?
#[inline]
pub(crate) fn is_owed<B>(req: &Request<B>) -> bool {
    req.extensions().get::<Owed>().is_some()
}

/// An admitted HTTP answer made to hold its request's guard until its body
/// ends: `Connection: close` on HTTP/1 once shutdown has started, the body
/// wrapped in a [`DrainBody`] and then by `wrap`, in one rebuild of the
/// response (each rebuild is a copy of the whole response).
#[inline]
pub(crate) fn track<B, T>(
    mut res: Response<B>,
    guard: Guard,
    facts: Facts,
    wrap: impl FnOnce(DrainBody<B>) -> T,
) -> Response<T> {
    close_if_stopping(&mut res, &guard, facts);
    res.map(|body| wrap(DrainBody::new(body, guard, facts.grpc)))
}

/// Once shutdown has started, an HTTP/1 answer closes its connection.
#[inline]
pub(crate) fn close_if_stopping<B>(res: &mut Response<B>, guard: &Guard, facts: Facts) {
    if facts.http1 && guard.state().phase() >= Phase::ShutdownRequested {
        res.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
}

impl<Req, Res, E: Into<BoxError>> DrainMode<Req, Res, E> for ErrorMode {
    type Tracked = Res;

    #[inline]
    fn facts(_: &Req, (): ()) -> Facts {
        Facts {
            http1: false,
            grpc: false,
        }
    }

    #[inline]
    fn owed(_: &Req) -> bool {
        false
    }

    #[inline]
    fn pin(_: &Req, (): ()) -> ProtocolPin {
        ProtocolPin::NONE
    }

    #[inline]
    fn finish(result: Result<Res, E>, guard: Guard, _: Facts) -> Result<Res, BoxError> {
        drop(guard);
        result.map_err(Into::into)
    }
}
