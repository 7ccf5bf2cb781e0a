//! A circuit breaker: stop calling a failing dependency, probe it, recover.
//!
//! The breaker watches the outcome of every call (an `Err`, a 5xx, a
//! failing gRPC status, in the response head or in the trailers; see
//! [`classify`](crate::classify)) in a sliding window and trips when
//!
//! - the failure rate reaches `failure_rate_threshold` (percent), or
//! - the slow-call rate reaches `slow_call_rate_threshold` (a call is slow
//!   when it takes longer than `slow_call_duration_threshold`), or
//! - `consecutive_failures` calls failed in a row,
//!
//! rates being judged only once the window holds `minimum_calls` calls. The
//! window is the last N calls ([`SlidingWindow::Count`]) or the last T in
//! buckets ([`SlidingWindow::Time`]).
//!
//! **Open**, it refuses every call at once with the remaining open time as
//! retry-after: HTTP 503 + `Retry-After` + `application/problem+json`, or
//! gRPC `UNAVAILABLE` (trailers-only) for gRPC requests, or a
//! [`Rejection`](crate::Rejection) error in [`ErrorMode`](crate::rejection::ErrorMode). A
//! [fallback](CircuitBreakerLayer::fallback_fn) may answer instead. The open
//! duration is fixed or grows with each consecutive re-open after failed
//! trials (backoff with a cap and jitter, reset when the circuit closes).
//!
//! The first call after the open duration starts **half-open**
//! (Resilience4j's and Polly's default: a quiet period never re-opens the
//! circuit or grows the backoff); with
//! [`auto_half_open`](CircuitBreakerBuilder::auto_half_open) a timer moves
//! it as soon as the open duration is over. Half-open, it lets
//! `half_open_permits` trial calls through and refuses the rest with a
//! one-second retry-after (the trials usually decide within one request's
//! time); once every trial has ended, their failure and slow-call rates
//! close or re-open the circuit. If a trial is still in flight
//! `max_wait_in_half_open` after the first one started, the circuit
//! re-opens, so hung trials never stick it; a half-open circuit with no
//! trial in flight waits for the next call.
//!
//! Every admitted call holds a [`Permit`]. A response future (or a gRPC
//! response body) dropped before the call ends gives it back as *ignored*,
//! and a result counts only in the state generation that admitted it: a
//! late answer from before a transition cannot flip the new state.
//!
//! A [`CircuitBreakerHandle`] reads the state (one atomic load: fit for a
//! readiness probe) and counts (the window, or the trials when half-open,
//! and the calls refused since the last transition), and moves the breaker
//! by hand: [`open`](CircuitBreakerHandle::open) for a while,
//! [`force_open`](CircuitBreakerHandle::force_open) (isolate: refusals ask
//! callers to retry after one open duration),
//! [`close`](CircuitBreakerHandle::close),
//! [`disable`](CircuitBreakerHandle::disable),
//! [`metrics_only`](CircuitBreakerHandle::metrics_only) (records, never
//! trips, emits [`CircuitBreakerEvent::ThresholdExceeded`] when it would
//! have), [`reset`](CircuitBreakerHandle::reset). Moving to the current
//! state does nothing (no event; calls in flight still count).
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get, http::StatusCode};
//! use tower_rampart::circuit_breaker::{CircuitBreakerLayer, CircuitState};
//!
//! let breaker = CircuitBreakerLayer::builder()
//!     .name("payments")
//!     .count_window(20)
//!     .minimum_calls(10)
//!     .failure_rate_threshold(50.0)
//!     .open_duration(Duration::from_secs(10))
//!     .build()
//!     .expect("valid settings");
//! let handle = breaker.handle();
//!
//! let app: Router = Router::new()
//!     .route("/pay", get(|| async { (StatusCode::BAD_GATEWAY, "upstream down") }))
//!     .layer(breaker); // one breaker for every route, no HandleErrorLayer
//! assert_eq!(handle.state(), CircuitState::Closed);
//! # drop(app);
//! ```
//!
//! State is shared by every clone and every `layer()` call of one layer
//! value. For one breaker per upstream host, route or tenant, see
//! [`KeyedCircuitBreakerLayer`] (built with
//! [`CircuitBreakerBuilder::build_keyed`]).
//!
//! # Outcomes
//!
//! In [`HttpMode`] (the default) responses are judged by the
//! [`Classifier`](crate::classify::Classifier) set with
//! [`CircuitBreakerBuilder::classifier`] (5xx and the usual gRPC failure
//! codes by default; it may answer [`Outcome::Ignored`](crate::classify::Outcome)
//! for responses that say nothing about the dependency, and
//! [`ignore_status`](CircuitBreakerBuilder::ignore_status) leaves out a few
//! statuses whatever the classifier says). A streaming gRPC
//! response is judged when its trailers arrive: the response body is wrapped
//! in a [`ClassifyBody`](crate::classify::ClassifyBody) holding the permit.
//! An `Err` from the inner service is a failure. In [`ErrorMode`](crate::rejection::ErrorMode) every
//! `Ok` is a success and errors are judged by
//! [`CircuitBreakerBuilder::classify_error`] (failure by default).
//!
//! # What counts: only what the service caused
//!
//! A breaker shared by every client must not be something one client can
//! trip. So, before any classifier runs:
//!
//! - **Refusals by inner layers of this crate are ignored**: a rate limit's
//!   429, a drain's 503, a nested breaker's 503 (or their gRPC statuses, or
//!   their [`Rejection`](crate::Rejection) errors) never count. They carry a
//!   [`Refused`](crate::rejection::Refused) marker in the response extensions (never on the wire, so a
//!   client cannot forge it) with [`is_service_fault`](crate::rejection::Refused::is_service_fault)
//!   false.
//! - **A timeout counts only when the server's own budget ran out.** When a
//!   [timeout layer](crate::timeout) inside the breaker refuses because the
//!   client's `grpc-timeout` or budget header was shorter than the server's
//!   `timeout` (or was already spent on arrival), the caller still gets 504
//!   / `DEADLINE_EXCEEDED`, and the breaker records the call as *ignored*. A
//!   timeout of the server's configured budget (or of an outer timeout
//!   layer's own budget) is a failure, whatever the classifier says of its
//!   status.
//! - **A panic counts once.** A panic that unwinds through the breaker (in
//!   the inner service's `call`, its future, or a streaming gRPC body) is
//!   recorded as one failure and goes on unwinding, as gobreaker does; with a
//!   panic catcher inside (tower-http's `CatchPanicLayer`), its 500 is the
//!   one failure.
//!
//! Your own layers can have their refusals treated the same way by
//! inserting a [`Refused`](crate::rejection::Refused) into the response extensions (or returning a
//! [`Rejection`](crate::Rejection) error).
//!
//! # Metrics and events
//!
//! Metrics go through the `metrics` facade, labelled `name` (the layer's
//! name). Install the recorder **before** building the layer: the handles
//! are registered once, when it is built.
//!
//! | metric | type | labels | meaning |
//! |---|---|---|---|
//! | `rampart_circuit_breaker_state` | gauge | `name` | 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled, 5 metrics-only (not set by keyed breakers) |
//! | `rampart_circuit_breaker_calls_total` | counter | `name`, `outcome` = `success` \| `failure` \| `ignored` | recorded call outcomes (`ignored` includes inner refusals and client-chosen timeouts; counted per thread, added every 250 ms) |
//! | `rampart_circuit_breaker_slow_calls_total` | counter | `name` | calls slower than the slow-call threshold (counted per thread, added every 250 ms) |
//! | `rampart_circuit_breaker_rejections_total` | counter | `name` | refused calls (including those answered by a fallback) |
//! | `rampart_circuit_breaker_transitions_total` | counter | `name`, `from`, `to` | state changes |
//! | `rampart_circuit_breaker_threshold_exceeded_total` | counter | `name`, `reason` | metrics-only mode met a tripping rule (once per crossing) |
//!
//! `tracing` events, target `tower_rampart::circuit_breaker`:
//!
//! | event | level | fields |
//! |---|---|---|
//! | `circuit breaker state changed` (to open) | WARN | `name`, `from`, `to`, `reason`, `open_ms` |
//! | `circuit breaker state changed` (other) | INFO | `name`, `from`, `to`, `reason` |
//! | `circuit breaker refused a call` | DEBUG | `name`, `state`, `retry_after_ms` |
//! | `circuit breaker threshold exceeded (metrics-only: the circuit stays closed)` | WARN | `name`, `state`, `reason`, `calls`, `failures`, `slow_calls` |
//!
//! The same transitions, refusals and threshold crossings reach the callback set with
//! [`CircuitBreakerBuilder::on_event`], never under a lock.
//!
//! # Where things are
//!
//! This file holds the services ([`CircuitBreaker`], [`KeyedCircuitBreaker`])
//! and their one `Service` impl each, for both modes; `layer.rs` the layers'
//! builder; `future.rs` the [`ResponseFuture`] and the [`Permit`];
//! `judge.rs` how each mode judges a result; `state/` the engine (the state
//! machine every clone shares); `window.rs` the sliding windows;
//! `keyed.rs`, `handle.rs`, `fallback.rs` and `config.rs` what their names
//! say.

mod config;
mod fallback;
mod future;
mod handle;
mod judge;
mod keyed;
mod layer;
mod state;
mod window;

use std::borrow::Borrow;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use tower::Service;

pub use config::{Backoff, CircuitBreakerConfig, SlidingWindow};
pub use fallback::{Fallback, FallbackFn, FallbackService, NoFallback};
pub use future::{Permit, ResponseFuture};
pub use handle::CircuitBreakerHandle;
pub use judge::BreakerBody;
pub use keyed::{KeyedCircuitBreakerHandle, KeyedCircuitBreakerLayer};
pub use layer::{CircuitBreakerBuilder, CircuitBreakerLayer};
pub use state::{CircuitBreakerEvent, CircuitCounts, CircuitState, TransitionReason};

use crate::rejection::{HttpMode, Mode};
pub(crate) use future::{Decision, decide};
pub(crate) use judge::Judge;
#[cfg(feature = "config")] // the stack's guarded call
pub(crate) use judge::judge_http;
pub(crate) use keyed::KeyedShared;
pub(crate) use state::{Breaker, Refusal};

use crate::metrics_help::{Help, MetricKind};
use metrics::Unit;

/// The `# HELP` text and unit of every metric this module records,
/// described to the recorder when the layer registers its metrics.
pub(crate) const METRICS: &[Help] = &[
    Help {
        name: "rampart_circuit_breaker_state",
        kind: MetricKind::Gauge,
        unit: None,
        text: "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled, 5 metrics-only.",
    },
    Help {
        name: "rampart_circuit_breaker_calls_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Calls whose outcome the circuit breaker recorded, by outcome (success, failure, ignored).",
    },
    Help {
        name: "rampart_circuit_breaker_slow_calls_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Calls slower than the circuit breaker's slow-call threshold.",
    },
    Help {
        name: "rampart_circuit_breaker_rejections_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Calls refused by the circuit breaker (including those answered by a fallback).",
    },
    Help {
        name: "rampart_circuit_breaker_transitions_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Circuit breaker state changes, by from and to state.",
    },
    Help {
        name: "rampart_circuit_breaker_threshold_exceeded_total",
        kind: MetricKind::Counter,
        unit: Some(Unit::Count),
        text: "Times a metrics-only circuit breaker met a tripping rule (once per crossing), by reason.",
    },
];

/// A service protected by a circuit breaker; made by [`CircuitBreakerLayer`].
pub struct CircuitBreaker<S, M = HttpMode, F = NoFallback> {
    inner: S,
    breaker: Breaker,
    fallback: F,
    _mode: PhantomData<fn() -> M>,
}

impl<S, M, F> CircuitBreaker<S, M, F> {
    pub(crate) fn from_parts(inner: S, breaker: Breaker, fallback: F) -> Self {
        Self {
            inner,
            breaker,
            fallback,
            _mode: PhantomData,
        }
    }

    /// A handle to this service's breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.breaker.core().clone())
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone, M, F: Clone> Clone for CircuitBreaker<S, M, F> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            breaker: self.breaker.clone(),
            fallback: self.fallback.clone(),
            _mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, M, F> fmt::Debug for CircuitBreaker<S, M, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreaker")
            .field("inner", &self.inner)
            .field("name", &self.breaker.core().name())
            .field("state", &self.breaker.core().state())
            .finish_non_exhaustive()
    }
}

/// The response type of a breaker in mode `M` over `S` called with `Req`.
type BreakerResponse<M, S, Req> =
    <M as Judge<<S as Service<Req>>::Response, <S as Service<Req>>::Error>>::Response;
/// The error type of a breaker in mode `M` over `S` called with `Req`.
type BreakerError<M, S, Req> =
    <M as Judge<<S as Service<Req>>::Response, <S as Service<Req>>::Error>>::Error;

/// A breaker's decision for one request: a permit, or the refusal with
/// the breaker that refused, to build the rejection from (borrowed; for a
/// keyed breaker, decided under its lookup, a clone taken on that path
/// only, once the lock is released).
pub(crate) type Decided<B> = Result<Permit, (Refusal, B)>;

/// [`Decided`] of a keyed breaker ([`KeyedShared::with_breaker`]).
pub(crate) type KeyedDecision = Decided<Breaker>;

/// [`Decided`] of `breaker`, borrowed.
#[inline(always)] // receipt: `refuse`'s docs
pub(crate) fn decided(breaker: &Breaker) -> Decided<&Breaker> {
    match decide(breaker) {
        Decision::Go(permit) => Ok(permit),
        Decision::Refuse(refusal) => Err((refusal, breaker)),
    }
}

/// [`KeyedDecision`] of `breaker`.
#[inline]
pub(crate) fn decide_keyed(breaker: &Breaker) -> KeyedDecision {
    match decide(breaker) {
        Decision::Go(permit) => Ok(permit),
        Decision::Refuse(refusal) => Err((refusal, breaker.clone())),
    }
}

/// Admits `req` to `inner` with the decision's permit, or refuses it (with
/// the fallback's answer if there is one): the one `call` of every breaker
/// service.
#[inline]
pub(crate) fn call<S, Req, M, F, B: Borrow<Breaker>>(
    decision: Decided<B>,
    inner: &mut S,
    fallback: &F,
    req: Req,
) -> ResponseFuture<S::Future, M>
where
    S: Service<Req>,
    M: Mode<Req, S::Response, S::Error>
        + Judge<S::Response, S::Error, Context = <M as Mode<Req, S::Response, S::Error>>::Context>,
    F: Fallback<Req, S::Response, BreakerError<M, S, Req>>,
    S::Response: 'static,
    BreakerResponse<M, S, Req>: 'static,
    BreakerError<M, S, Req>: 'static,
{
    match decision {
        Ok(permit) => ResponseFuture::admitted(inner.call(req), permit),
        Err((refusal, breaker)) => {
            refuse::<S, Req, M, F>(breaker.borrow().rejection(refusal), fallback, req)
        }
    }
}

/// The answer to a refused request: the fallback's, or the rejection in
/// the mode's form. Apart from [`call`] so that the admitted path stays
/// small enough to inline, with [`decided`] always inlined
/// (`rampart_closed` in the breaker bench: 660 instructions per call with
/// one function, 642 with this one apart, 627 with `decided` inlined too;
/// the same as separate `call`s for borrowed and keyed breakers).
#[inline]
fn refuse<S, Req, M, F>(
    rejection: crate::rejection::Rejection,
    fallback: &F,
    req: Req,
) -> ResponseFuture<S::Future, M>
where
    S: Service<Req>,
    M: Mode<Req, S::Response, S::Error>
        + Judge<S::Response, S::Error, Context = <M as Mode<Req, S::Response, S::Error>>::Context>,
    F: Fallback<Req, S::Response, BreakerError<M, S, Req>>,
    S::Response: 'static,
    BreakerResponse<M, S, Req>: 'static,
    BreakerError<M, S, Req>: 'static,
{
    let cx = <M as Mode<Req, S::Response, S::Error>>::context(&req);
    if !F::ANSWERS {
        return ResponseFuture::ready(<M as Judge<S::Response, S::Error>>::rejected(cx, rejection));
    }
    let map = |out| <M as Judge<S::Response, S::Error>>::fallback(out);
    match fallback.fallback(req, rejection, map) {
        Ok(fut) => ResponseFuture::fallback(fut),
        Err((_req, rejection)) => {
            ResponseFuture::ready(<M as Judge<S::Response, S::Error>>::rejected(cx, rejection))
        }
    }
}

impl<S, Req, M, F> Service<Req> for CircuitBreaker<S, M, F>
where
    S: Service<Req>,
    M: Mode<Req, S::Response, S::Error>
        + Judge<S::Response, S::Error, Context = <M as Mode<Req, S::Response, S::Error>>::Context>,
    F: Fallback<Req, S::Response, BreakerError<M, S, Req>>,
    S::Response: 'static,
    BreakerResponse<M, S, Req>: 'static,
    BreakerError<M, S, Req>: 'static,
{
    type Response = BreakerResponse<M, S, Req>;
    type Error = BreakerError<M, S, Req>;
    type Future = ResponseFuture<S::Future, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(<M as Judge<S::Response, S::Error>>::ready_error)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        call(decided(&self.breaker), &mut self.inner, &self.fallback, req)
    }
}

/// A service protected by one breaker per key; made by
/// [`KeyedCircuitBreakerLayer`].
pub struct KeyedCircuitBreaker<S, K, KF, M = HttpMode> {
    inner: S,
    shared: Arc<KeyedShared<K>>,
    key_fn: KF,
    _mode: PhantomData<fn() -> M>,
}

impl<S, K, KF, M> KeyedCircuitBreaker<S, K, KF, M> {
    pub(crate) fn from_parts(inner: S, shared: Arc<KeyedShared<K>>, key_fn: KF) -> Self {
        Self {
            inner,
            shared,
            key_fn,
            _mode: PhantomData,
        }
    }
}

impl<S: Clone, K, KF: Clone, M> Clone for KeyedCircuitBreaker<S, K, KF, M> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: self.shared.clone(),
            key_fn: self.key_fn.clone(),
            _mode: PhantomData,
        }
    }
}

impl<S: fmt::Debug, K, KF, M> fmt::Debug for KeyedCircuitBreaker<S, K, KF, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KeyedCircuitBreaker")
            .field("inner", &self.inner)
            .finish_non_exhaustive()
    }
}

impl<S, K, KF, Req, M> Service<Req> for KeyedCircuitBreaker<S, K, KF, M>
where
    S: Service<Req>,
    KF: Fn(&Req) -> K,
    K: std::hash::Hash + Eq + Clone,
    M: Mode<Req, S::Response, S::Error>
        + Judge<S::Response, S::Error, Context = <M as Mode<Req, S::Response, S::Error>>::Context>,
    S::Response: 'static,
    BreakerResponse<M, S, Req>: 'static,
    BreakerError<M, S, Req>: 'static,
{
    type Response = BreakerResponse<M, S, Req>;
    type Error = BreakerError<M, S, Req>;
    type Future = ResponseFuture<S::Future, M>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner
            .poll_ready(cx)
            .map_err(<M as Judge<S::Response, S::Error>>::ready_error)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let key = (self.key_fn)(&req);
        let decision = self.shared.with_breaker(&key, K::clone, decide_keyed);
        call(decision, &mut self.inner, &NoFallback, req)
    }
}
