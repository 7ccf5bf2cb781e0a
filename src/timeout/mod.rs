//! Request timeouts with deadline propagation.
//!
//! [`TimeoutLayer`] bounds the time until a response. When the time runs
//! out, the inner service's future is **dropped** (that is the
//! cancellation: whatever it was awaiting is abandoned at its next `.await`)
//! and the caller is answered in its protocol:
//!
//! | caller | answer |
//! |---|---|
//! | HTTP | `504 Gateway Timeout` (or the [configured status](TimeoutLayerBuilder::status), e.g. 503 or 408) with an `application/problem+json` body |
//! | gRPC (`content-type: application/grpc*`) | trailers-only, `grpc-status: 4` (`DEADLINE_EXCEEDED`) |
//! | any service, [`into_error_mode`](TimeoutLayer::into_error_mode) | `Err(BoxError)` holding a [`Rejection`](crate::Rejection) of kind [`TimedOut`](crate::RejectionKind::TimedOut) ([`is_timeout`]) |
//!
//! **Blocking code cannot be interrupted.** The timeout runs in the same
//! task as the handler, and dropping a future only stops it at an `.await`.
//! A handler that blocks the thread (synchronous I/O, a long computation,
//! `std::thread::sleep`) cannot be stopped, and the timeout cannot even
//! answer until the blocking call returns. Work moved to
//! `tokio::task::spawn_blocking` lets the timeout answer on time, but the
//! blocking work itself runs to completion: check [`Deadline::is_expired`]
//! in it to give up early. Tasks the handler `spawn`s are not cancelled
//! either.
//!
//! # Deadline propagation
//!
//! The effective deadline of a request is the earliest of
//!
//! - now + the layer's [`timeout`](TimeoutLayerBuilder::timeout) (the server's maximum);
//! - now + the caller's budget less the
//!   [`safety_margin`](TimeoutLayerBuilder::safety_margin), where the budget
//!   is the `grpc-timeout` header of a gRPC request (`content-type:
//!   application/grpc*`; at most 8 digits and a unit: `H`, `M`, `S`, `m`,
//!   `u`, `n`; on by default) and, if configured, a
//!   [`budget_header`](TimeoutLayerBuilder::budget_header) carrying whole
//!   milliseconds (any request);
//! - the [`Deadline`] of an outer timeout layer ([`Deadline::of`]: its
//!   [`current`](Deadline::current) deadline, or the one in the request
//!   extensions), so nested timeouts take the earliest deadline.
//!
//! A request whose deadline has already passed (a spent budget, or a budget
//! no larger than the margin) is answered at once: the inner service is not
//! called, and the detail says why (for example "the caller's budget (5ms)
//! is within the safety margin (10ms)"). A malformed budget header is
//! treated as absent, with a `debug` event; it never fails the request.
//!
//! # Whose budget ran out
//!
//! The answer is the same whichever budget bound the deadline, but the
//! blame is not. When the binding budget is the server's own (this layer's
//! `timeout`, or an outer timeout layer's), the refusal is the service's
//! fault ([`Rejection::is_service_fault`](crate::Rejection::is_service_fault)):
//! a [circuit breaker](crate::circuit_breaker) around the layer counts it as
//! a failure. When it is the caller's (a `grpc-timeout` or budget header
//! shorter than the server's limit, or within the safety margin; or an
//! outer layer's deadline that was itself the caller's), it is not, and the
//! breaker records the call as *ignored*: a client cannot trip a breaker for
//! everyone by sending tiny deadlines. At the same instant the server's
//! budget binds. The [`Deadline`] a handler reads says which it is
//! ([`Deadline::source`]).
//!
//! Set `timeout` to what the service must achieve: a slow dependency shows
//! as timeouts of the server's budget whatever deadlines clients send.
//!
//! Handlers read the effective deadline with [`Deadline::current`] (or
//! [`Deadline::of`] on the request; in axum, a `deadline: Deadline`
//! argument): the layer sets it while it calls its inner service and while
//! it polls the response future, which costs no allocation. A task the
//! handler spawns does not inherit it: copy the value in. For code that
//! only reads request extensions (axum's `Extension<Deadline>`),
//! [`deadline_extension(true)`](TimeoutLayerBuilder::deadline_extension)
//! inserts it there as well (one allocation per request). Handlers use it
//! to bound their downstream calls ([`Deadline::bound`]) and to tell
//! downstream services how long they have ([`Deadline::insert_grpc_timeout`],
//! [`Deadline::insert_millis`]).
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{HeaderName, Request, Response};
//! use tower::{Layer, Service, ServiceExt};
//! use tower_rampart::timeout::{Deadline, TimeoutLayer};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = TimeoutLayer::builder()
//!     .timeout(Duration::from_secs(1))
//!     .budget_header(HeaderName::from_static("x-request-timeout-ms"))
//!     .build()
//!     .unwrap();
//! let mut svc = layer.layer(tower::service_fn(|req: Request<String>| async move {
//!     // The handler sees the effective deadline: the caller's 300ms here.
//!     let deadline = Deadline::of(&req).unwrap();
//!     assert_eq!(deadline.remaining(), Duration::from_millis(300));
//!     // Slower than that: the layer answers instead.
//!     tokio::time::sleep(Duration::from_secs(5)).await;
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("late")))
//! }));
//!
//! let req = Request::builder()
//!     .header("x-request-timeout-ms", "300")
//!     .body(String::new())
//!     .unwrap();
//! let res = svc.ready().await.unwrap().call(req).await.unwrap();
//! assert_eq!(res.status(), 504);
//! assert_eq!(res.headers()["content-type"], "application/problem+json");
//! # }
//! ```
//!
//! With axum, `Router::layer(layer)` protects every route (one shared
//! state, whatever the number of routes); `route_layer` or
//! `get(handler).layer(layer)` protects one route with its own timeout.
//!
//! # Metrics and events
//!
//! Metric handles are registered when the layer is built: install the
//! `metrics` recorder before building layers.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `rampart_timeouts_total` | counter | `name`, `cause` = `elapsed` \| `budget_spent`, `source` = `server` \| `caller` | requests answered by the timeout (`elapsed`: the deadline passed while the inner service worked; `budget_spent`: the deadline had passed on arrival, the inner service was not called; `source`: whose budget it was, see [`DeadlineSource`]) |
//!
//! | event (target `tower_rampart::timeout`) | level | fields |
//! |---|---|---|
//! | `request timed out` | `DEBUG` | `name`, `cause`, `source` |
//! | `malformed budget header ignored` | `DEBUG` | `name`, `header`, `value` |

pub(crate) mod deadline;
mod error;
mod future;
mod layer;
mod state;

mod config;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

pub use self::deadline::{
    Deadline, DeadlineCarrier, DeadlineSource, GRPC_TIMEOUT, format_grpc_timeout,
    parse_grpc_timeout,
};
pub use self::error::{TimeoutCause, is_timeout};
pub use self::future::ResponseFuture;
pub use self::layer::{DEFAULT_NAME, TimeoutLayer, TimeoutLayerBuilder};
use self::sealed::ProtocolHint;
pub(crate) use self::state::Binding;
pub(crate) use self::state::Shared;
use crate::rejection::{HttpMode, Mode};
use crate::util::lanes::Laned;

pub use self::config::TimeoutConfig;

use crate::metrics_help::{Help, MetricKind};
use metrics::Unit;

/// The `# HELP` text and unit of every metric this module records,
/// described to the recorder when the layer registers its metrics.
pub(crate) const METRICS: &[Help] = &[Help {
    name: "rampart_timeouts_total",
    kind: MetricKind::Counter,
    unit: Some(Unit::Count),
    text: "Requests answered by the timeout layer, by cause (elapsed, budget_spent).",
}];

/// The timeout service: see [`TimeoutLayer`] and the [module docs](self).
pub struct Timeout<S, M = HttpMode> {
    inner: S,
    shared: Arc<Laned<Shared>>,
    _mode: PhantomData<fn() -> M>,
}

impl<S, M> Timeout<S, M> {
    fn from_shared(inner: S, shared: Arc<Laned<Shared>>) -> Self {
        Self {
            inner,
            shared,
            _mode: PhantomData,
        }
    }

    /// The wrapped service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The wrapped service.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    /// Unwraps the service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, M, Req> Service<Req> for Timeout<S, M>
where
    Req: DeadlineCarrier,
    S: Service<Req>,
    S::Error: Into<M::Error>,
    M: Mode<Req, S::Response, S::Error>,
    M::Context: ProtocolHint,
{
    type Response = M::Response;
    type Error = M::Error;
    type Future = ResponseFuture<S::Future, Req, M, M::Context>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, mut req: Req) -> Self::Future {
        let cx = M::context(&req);
        match self.shared.admit(&mut req, cx.is_grpc()) {
            Ok(deadline) => {
                let scope = self::deadline::enter(deadline);
                let future = self.inner.call(req);
                drop(scope);
                // The future keeps the state alive through this thread's
                // lane: no count on the line every thread writes.
                ResponseFuture::running(future, deadline, cx, self.shared.lane())
            }
            Err((source, binding)) => {
                ResponseFuture::spent(cx, self.shared.lane(), source, binding)
            }
        }
    }
}

mod sealed {
    use crate::rejection::Protocol;

    /// What a mode's request context tells about the request's protocol,
    /// so the protocol is looked up once per request.
    pub trait ProtocolHint {
        /// `Some(true)` for gRPC, `Some(false)` for plain HTTP, `None` when
        /// the context does not say.
        fn is_grpc(&self) -> Option<bool>;
    }

    impl ProtocolHint for Protocol {
        #[inline]
        fn is_grpc(&self) -> Option<bool> {
            Some(*self == Protocol::Grpc)
        }
    }

    impl ProtocolHint for () {
        #[inline]
        fn is_grpc(&self) -> Option<bool> {
            None
        }
    }
}

impl<S: Clone, M> Clone for Timeout<S, M> {
    fn clone(&self) -> Self {
        Self::from_shared(self.inner.clone(), self.shared.clone())
    }
}

impl<S: fmt::Debug, M> fmt::Debug for Timeout<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Timeout")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}
