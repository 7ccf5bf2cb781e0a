//! Adaptive concurrency limiting: admit at most *limit* requests in flight,
//! refuse the rest at once, and learn the limit from latency.
//!
//! A rate limit protects the service from its clients; a concurrency limit
//! protects it from its own capacity. When more work arrives than the
//! service can do, queues grow inside it, every request gets slow, timeouts
//! fire and goodput collapses. [`ConcurrencyLimitLayer`] keeps the number
//! of requests in flight at or below a *limit* and answers the rest at once
//! (like tower's `LoadShed`, never parking in `poll_ready`):
//!
//! | caller | answer |
//! |---|---|
//! | HTTP | `503 Service Unavailable`, `Retry-After` (the [`retry_after`](ConcurrencyLimitLayerBuilder::retry_after) setting, default 1 s) and a short `application/problem+json` body |
//! | gRPC (`content-type: application/grpc*`) | trailers-only, `grpc-status: 14` (`UNAVAILABLE`), `grpc-retry-pushback-ms` |
//! | any service, [`into_error_mode`](ConcurrencyLimitLayer::into_error_mode) | `Err(BoxError)` holding a [`Rejection`] of kind [`Overloaded`](crate::RejectionKind::Overloaded) |
//!
//! The limit is fixed ([`Fixed`], a bulkhead: [`ConcurrencyLimitLayer::fixed`])
//! or learned by a [`LimitAlgorithm`] from what admitted requests
//! experienced (see [`limit`]). Admission is one atomic compare-and-swap of
//! the in-flight count against the published limit; the algorithm runs
//! when a request ends, under a short `std` lock (never for a fixed limit),
//! and publishes its new limit through an atomic.
//!
//! # What the algorithm learns
//!
//! Each admitted request holds a slot until its response future completes
//! (the response *headers*: a streaming body is not counted, as with
//! tower's `ConcurrencyLimit`) or is dropped, and is reported to the
//! algorithm as one [`Sample`] (its round-trip time from admission, the
//! in-flight count at admission, and an [`Outcome`]):
//!
//! | what happened | outcome |
//! |---|---|
//! | a response that is not an overload signal (any other status, 4xx and 5xx included) | [`Success`](Outcome::Success): the RTT is a latency sample |
//! | the **server's own** timeout inside fired (a [`Refused`] marker of kind `TimedOut` that is the service's fault), or the future was dropped after the server's [`Deadline`] (an outer timeout layer gave up on it), or the inner service failed with `tokio::time::error::Elapsed` (a `tokio::time::timeout` or [`Deadline::bound`] that ran out) | [`Dropped`](Outcome::Dropped): back off |
//! | the inner service answered **503**, or, to a gRPC request, `UNAVAILABLE` (14) or `RESOURCE_EXHAUSTED` (8) in the response headers (a trailers-only answer, which is how tonic answers an error status), or an inner concurrency limit of this crate refused it | [`Dropped`](Outcome::Dropped): something downstream is overloaded |
//! | the future was dropped before completing (the client went away), or a panic unwound through the layer (with a panic-catching layer inside, as in the config stack, the 500 it answers is a response like any other: a success) | [`Ignored`](Outcome::Ignored) |
//! | a refusal by another layer of this crate that is not about capacity (rate limit, open breaker, draining, a timeout whose budget the **caller** chose), or an error that is not a timeout | [`Ignored`](Outcome::Ignored) |
//!
//! Ignored outcomes are not given to the algorithm (no lock is taken). A
//! [`Fixed`] limit learns nothing from samples: it reads no clock and takes
//! no lock, and the RTT metrics stay empty. A
//! client cannot shrink the limit for everyone: its own tiny `grpc-timeout`
//! or budget header, its cancellations and its refusals by a rate limit are
//! all ignored. A handler that answers 503 for reasons that are not
//! overload (maintenance mode, say) does shrink the limit: answer another
//! status there.
//!
//! # Waiting in a queue
//!
//! With [`queue`](ConcurrencyLimitLayerBuilder::queue) a request that finds
//! no free slot waits up to `max_wait` (never past its own [`Deadline`], if
//! an outer timeout set one) in a queue of at most `max_len` requests, and
//! is refused when the queue is full or the wait runs out. A freed slot is
//! handed to a waiter directly (no new arrival can take it first), in
//! [`QueueOrder::Lifo`] order by default (Netflix's recommendation for
//! servers: under sustained overload the oldest waiters time out while
//! fresh requests get through quickly) or [`QueueOrder::Fifo`]. A waiter
//! whose client goes away leaves the queue at once. The time spent waiting
//! is not part of the RTT sample. A waiting request costs one allocation
//! and a timer (the service it will call is cloned into it: the layer's
//! service needs `S: Clone`, as axum and tonic services are).
//!
//! # Partitions
//!
//! With [`partition`](ConcurrencyLimitLayerBuilder::partition) each
//! [`Criticality`] class (`critical`, `default`, `sheddable`) gets a
//! guaranteed share of the limit, the rule of Netflix's partitioned limiter:
//! while the total is under the limit any class may borrow the free slots;
//! at the limit, a class still under its guaranteed share is admitted (the
//! total may then exceed the limit by at most the shares, until borrowers
//! finish), and a class over its share is refused. With the default shares
//! (`critical` 50 %, `default` 30 %, `sheddable` 0) sheddable traffic is
//! refused first under pressure and critical traffic always has half the
//! limit.
//!
//! The class comes from a closure
//! ([`classify`](ConcurrencyLimitLayerBuilder::classify), which can read
//! what an authentication layer put into the request extensions) or from a
//! header ([`criticality_header`](ConcurrencyLimitLayerBuilder::criticality_header),
//! values `critical`, `default`, `sheddable`; anything else is `default`).
//! **A header is the client's word.** By default it can only *lower* a
//! request's class (a batch job marking itself `sheddable`); a request
//! claiming `critical` is treated as `default`. Let the header select
//! `critical` ([`trust_criticality_header`](ConcurrencyLimitLayerBuilder::trust_criticality_header))
//! only when a proxy you run sets it and strips whatever clients sent.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use http::{Request, Response};
//! use tower::{Layer, Service, ServiceExt};
//! use tower_rampart::concurrency::{ConcurrencyLimitLayer, QueueOrder};
//!
//! # #[tokio::main(flavor = "current_thread", start_paused = true)]
//! # async fn main() {
//! let layer = ConcurrencyLimitLayer::builder()
//!     .name("api")
//!     .limit(tower_rampart::concurrency::Fixed::new(1))
//!     .build()
//!     .unwrap();
//! let mut svc = layer.layer(tower::service_fn(|_req: Request<String>| async {
//!     tokio::time::sleep(Duration::from_millis(100)).await;
//!     Ok::<_, std::convert::Infallible>(Response::new(String::from("done")))
//! }));
//!
//! let first = svc.ready().await.unwrap().call(Request::new(String::new()));
//! // One request in flight: the second is refused at once.
//! let second = svc.ready().await.unwrap().call(Request::new(String::new())).await.unwrap();
//! assert_eq!(second.status(), 503);
//! assert_eq!(second.headers()["retry-after"], "1");
//! assert_eq!(first.await.unwrap().status(), 200);
//! assert_eq!(layer.in_flight(), 0);
//! # }
//! ```
//!
//! # Where it goes in the stack
//!
//! After the rate limit, so abusive clients are refused before they take a
//! slot, and outside the circuit breaker and the timeout, so the server's
//! timeout is observed as a [`Dropped`](Outcome::Dropped) sample (and a
//! breaker's refusal, which costs nothing, is ignored). The stack builder
//! (`[concurrency]` in the config) puts it there; probes and `/metrics` are
//! answered before it and never limited.
//!
//! # Metrics and events
//!
//! Metric handles are registered when the layer is built: install the
//! `metrics` recorder before building layers.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `rampart_concurrency_limit` | gauge | `name` | the published limit |
//! | `rampart_concurrency_in_flight` | gauge | `name` | requests holding a slot (the limit's own count, set every 250 ms) |
//! | `rampart_concurrency_queued` | gauge | `name` | requests waiting in the queue |
//! | `rampart_concurrency_rejections_total` | counter | `name`, `partition`, `reason` = `limit` \| `queue_full` \| `queue_timeout` | refusals, by class (`default` without partitions) |
//! | `rampart_concurrency_samples_total` | counter | `name`, `outcome` = `success` \| `dropped` \| `ignored` | finished requests, by what the algorithm was told (counted per thread, added every 250 ms) |
//! | `rampart_concurrency_rtt_seconds` | histogram | `name` | round-trip time of successful requests (from admission), with an adaptive limit |
//! | `rampart_concurrency_min_rtt_seconds` | gauge | `name` | the smallest RTT seen in the last 10 s window, with an adaptive limit |
//! | `rampart_concurrency_limit_changes_total` | counter | `name` | times the algorithm changed the limit |
//!
//! | event (target `tower_rampart::concurrency`) | level | fields |
//! |---|---|---|
//! | `concurrency limit changed` | `DEBUG` | `name`, `from`, `to`, `in_flight` (at most one per second per layer: `from` is the limit of the previous event) |

mod future;
mod layer;
pub mod limit;
mod partition;
mod queue;
mod state;

#[cfg(feature = "config")]
mod config;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;
use tower::{BoxError, Service};

#[cfg(feature = "config")]
pub use self::config::{
    ConcurrencyConfig, FixedConfig, LimitConfig, PartitionsConfig, QueueConfig,
};
pub use self::future::ResponseFuture;
pub use self::layer::{ConcurrencyLimitLayer, ConcurrencyLimitLayerBuilder, DEFAULT_NAME};
pub use self::partition::{Criticality, RequestInfo};
pub use self::queue::QueueOrder;
pub use limit::{Aimd, Fixed, Gradient2, LimitAlgorithm, Outcome, Sample, Vegas};

pub(crate) use self::future::Queued;
use self::queue::Enqueued;
use self::state::Reason;
pub(crate) use self::state::{Permit, Shared};
use crate::metrics_help::{Help, MetricKind};
use crate::rejection::{ErrorMode, HttpMode, Mode, Protocol, Refused, Rejection, RejectionKind};
use crate::timeout::{Deadline, DeadlineSource};
use crate::util::lanes::Laned;
use metrics::Unit;

/// The `# HELP` text and unit of every metric this module records,
/// described to the recorder when the layer registers its metrics.
pub(crate) const METRICS: &[Help] = &[
    Help {
        name: "rampart_concurrency_limit",
        kind: MetricKind::Gauge,
        unit: Some(Unit::Count),
        text: "The concurrency limit currently published.",
    },
    Help {
        name: "rampart_concurrency_in_flight",
        kind: MetricKind::Gauge,
        unit: Some(Unit::Count),
        text: "Requests holding a slot of the concurrency limit (sampled every 250 ms).",
    },
    Help {
        name: "rampart_concurrency_queued",
        kind: MetricKind::Gauge,
        unit: Some(Unit::Count),
        text: "Requests waiting in the concurrency limit's queue.",
    },
    Help {
        name: "rampart_concurrency_rejections_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Requests refused by the concurrency limit, by partition and reason.",
    },
    Help {
        name: "rampart_concurrency_samples_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Finished requests, by the outcome given to the limit algorithm.",
    },
    Help {
        name: "rampart_concurrency_rtt_seconds",
        kind: MetricKind::Histogram,
        unit: Some(Unit::Seconds),
        text: "Round-trip time of successful requests, from admission.",
    },
    Help {
        name: "rampart_concurrency_min_rtt_seconds",
        kind: MetricKind::Gauge,
        unit: Some(Unit::Seconds),
        text: "The smallest round-trip time seen in the last 10 s window.",
    },
    Help {
        name: "rampart_concurrency_limit_changes_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Times the limit algorithm changed the concurrency limit.",
    },
];

/// What the concurrency limit reads from a request: its headers and
/// extensions (for the [`Criticality`] classifier) and the server's
/// [`Deadline`] an outer timeout layer attached. Implemented for
/// `http::Request<B>`; implement it (every method has a default) to use
/// the layer in [`ErrorMode`] with another request type.
pub trait LimitedRequest {
    /// The request's headers and extensions, if it has them.
    #[inline]
    fn info(&self) -> Option<RequestInfo<'_>> {
        None
    }

    /// The deadline an outer timeout layer attached, if any.
    #[inline]
    fn deadline(&self) -> Option<Deadline> {
        None
    }
}

impl<B> LimitedRequest for Request<B> {
    #[inline]
    fn info(&self) -> Option<RequestInfo<'_>> {
        Some(RequestInfo {
            headers: self.headers(),
            extensions: self.extensions(),
        })
    }

    #[inline]
    fn deadline(&self) -> Option<Deadline> {
        Deadline::of(self)
    }
}

mod sealed {
    use super::Outcome;

    /// How a mode's finished call becomes an [`Outcome`] for the limit
    /// algorithm. Implemented for [`HttpMode`](crate::rejection::HttpMode)
    /// and [`ErrorMode`](crate::rejection::ErrorMode) only.
    pub trait Observe<Res, E, C> {
        /// The outcome of `result`, for a request of context `cx` (the
        /// mode's [`Context`](crate::rejection::Mode::Context)).
        fn outcome(result: &Result<Res, E>, cx: C) -> Outcome;
    }
}

pub(crate) use sealed::Observe;

/// The outcome of a refusal by a layer of this crate inside.
#[inline]
fn refused_outcome(kind: RejectionKind, service_fault: bool) -> Outcome {
    match kind {
        RejectionKind::TimedOut if service_fault => Outcome::Dropped,
        RejectionKind::Overloaded => Outcome::Dropped,
        _ => Outcome::Ignored,
    }
}

/// The outcome of an inner service's error: a refusal by its kind, a
/// tower timeout as dropped, anything else ignored.
#[cold]
fn error_outcome<E: 'static>(e: &E) -> Outcome {
    let any: &dyn std::any::Any = e;
    let boxed = any.downcast_ref::<BoxError>();
    let rejection = any
        .downcast_ref::<Rejection>()
        .or_else(|| boxed.and_then(|b| Rejection::find(b.as_ref())));
    if let Some(r) = rejection {
        return refused_outcome(r.kind(), r.is_service_fault());
    }
    let elapsed = any.is::<tokio::time::error::Elapsed>()
        || boxed.is_some_and(|b| b.is::<tokio::time::error::Elapsed>());
    if elapsed {
        Outcome::Dropped
    } else {
        Outcome::Ignored
    }
}

impl<B, E: 'static> Observe<Response<B>, E, Protocol> for HttpMode {
    #[inline]
    fn outcome(result: &Result<Response<B>, E>, protocol: Protocol) -> Outcome {
        let res = match result {
            Ok(res) => res,
            Err(e) => return error_outcome(e),
        };
        if let Some(refused) = res.extensions().get::<Refused>() {
            return refused_outcome(refused.kind(), refused.is_service_fault());
        }
        if res.status() == http::StatusCode::SERVICE_UNAVAILABLE {
            return Outcome::Dropped;
        }
        if protocol != Protocol::Grpc {
            return Outcome::Success;
        }
        // gRPC: a trailers-only error answer carries its status in the
        // headers ("14" UNAVAILABLE, "8" RESOURCE_EXHAUSTED).
        match crate::util::header::get(res.headers(), &crate::grpc::GRPC_STATUS) {
            Some(v) if matches!(v.as_bytes(), b"14" | b"8") => Outcome::Dropped,
            _ => Outcome::Success,
        }
    }
}

impl<R, E: 'static> Observe<R, E, ()> for ErrorMode {
    #[inline]
    fn outcome(result: &Result<R, E>, (): ()) -> Outcome {
        match result {
            Ok(_) => Outcome::Success,
            Err(e) => error_outcome(e),
        }
    }
}

/// The concurrency limit service: see [`ConcurrencyLimitLayer`] and the
/// [module docs](self).
pub struct ConcurrencyLimit<S, M = HttpMode> {
    inner: S,
    shared: Arc<Laned<Shared>>,
    _mode: PhantomData<fn() -> M>,
}

impl<S, M> ConcurrencyLimit<S, M> {
    pub(crate) fn from_shared(inner: S, shared: Arc<Laned<Shared>>) -> Self {
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

impl<S, M, Req> Service<Req> for ConcurrencyLimit<S, M>
where
    Req: LimitedRequest,
    S: Service<Req> + Clone,
    S::Error: Into<M::Error>,
    M: Mode<Req, S::Response, S::Error>
        + Observe<S::Response, S::Error, <M as Mode<Req, S::Response, S::Error>>::Context>,
{
    type Response = M::Response;
    type Error = M::Error;
    type Future = ResponseFuture<S::Future, S, Req, M, M::Context>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        let cx = M::context(&req);
        match try_admit(&self.shared, &req) {
            Ok(permit) => ResponseFuture::admitted(self.inner.call(req), permit, cx),
            Err(wait) => self.queue(req, wait, cx),
        }
    }
}

/// A request that found no free slot at once: what the queue needs to know.
pub(crate) struct Wait {
    class: Criticality,
    server_deadline: Option<u64>,
    deadline: Option<Deadline>,
}

/// The fast path: a free slot now (nobody waits for one, or there is no
/// queue), or what [`enqueue`] needs. Used by the concurrency limit and by
/// the stack's front.
#[inline]
pub(crate) fn try_admit<Req: LimitedRequest>(
    shared: &Laned<Shared>,
    req: &Req,
) -> Result<Permit, Wait> {
    let class = match &shared.partitions {
        Some(p) => p.classifier.classify(req.info()),
        None => Criticality::Default,
    };
    let deadline = req.deadline();
    let server_deadline = deadline
        .filter(|d| d.source() == DeadlineSource::Server)
        .map(|d| shared.clock.since_epoch(d.nanos()));
    let queue = shared.queue.as_ref();
    if !queue.is_some_and(|q| q.is_occupied()) && shared.try_acquire(class) {
        return Ok(Shared::permit(shared, class, server_deadline));
    }
    Err(Wait {
        class,
        server_deadline,
        deadline,
    })
}

/// What the queue did with a request that found no free slot.
pub(crate) enum Queueing {
    /// A slot was free after all.
    Granted(Permit),
    /// Waiting for one.
    Queued(Queued),
    /// No queue, a full queue, or a wait already over.
    Refused(Rejection),
}

/// The slow path: queue the request, or refuse it.
#[cold]
pub(crate) fn enqueue(shared: &Arc<Laned<Shared>>, wait: Wait) -> Queueing {
    let Wait {
        class,
        server_deadline,
        deadline,
    } = wait;
    let Some(queue) = shared.queue.as_ref() else {
        return Queueing::Refused(shared.rejection(class, Reason::Limit));
    };
    let until = queue_wait(queue.max_wait, deadline);
    if until <= Instant::now() {
        return Queueing::Refused(shared.rejection(class, Reason::QueueTimeout));
    }
    // The waker is only used if the request waits: the future's own waker
    // replaces it on its first poll.
    match queue.enqueue(shared, class, std::task::Waker::noop()) {
        Enqueued::Granted => Queueing::Granted(Shared::permit(shared, class, server_deadline)),
        Enqueued::Full => Queueing::Refused(shared.rejection(class, Reason::QueueFull)),
        Enqueued::Waiting(slot) => Queueing::Queued(Queued::new(
            Arc::clone(shared),
            slot,
            class,
            server_deadline,
            until,
        )),
    }
}

/// How long a request may wait: the queue's maximum, never past the
/// request's deadline.
#[inline]
fn queue_wait(max_wait: std::time::Duration, deadline: Option<Deadline>) -> Instant {
    let until = Instant::now() + max_wait;
    match deadline {
        Some(d) if d.instant() < until => d.instant(),
        _ => until,
    }
}

impl<S, M> ConcurrencyLimit<S, M> {
    /// The slow path: the request queues (or is refused when the queue is
    /// full or its wait is already over).
    #[cold]
    fn queue<Req, C>(
        &mut self,
        req: Req,
        wait: Wait,
        cx: C,
    ) -> ResponseFuture<S::Future, S, Req, M, C>
    where
        S: Service<Req> + Clone,
    {
        match enqueue(&self.shared, wait) {
            Queueing::Granted(permit) => ResponseFuture::admitted(self.inner.call(req), permit, cx),
            Queueing::Refused(rejection) => ResponseFuture::rejected(rejection, cx),
            Queueing::Queued(queued) => {
                // Take the service that was polled ready; leave a clone.
                let clone = self.inner.clone();
                let svc = std::mem::replace(&mut self.inner, clone);
                ResponseFuture::waiting(queued, svc, req, cx)
            }
        }
    }
}

impl<S: Clone, M> Clone for ConcurrencyLimit<S, M> {
    fn clone(&self) -> Self {
        Self::from_shared(self.inner.clone(), Arc::clone(&self.shared))
    }
}

impl<S: fmt::Debug, M> fmt::Debug for ConcurrencyLimit<S, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimit")
            .field("inner", &self.inner)
            .field("name", &self.shared.name)
            .field("limit", &self.shared.limit())
            .field("in_flight", &self.shared.in_flight())
            .finish()
    }
}
