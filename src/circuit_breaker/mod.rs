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
//! [`Rejection`](crate::Rejection) error in [`ErrorMode`]. A
//! [fallback](CircuitBreakerLayer::fallback_fn) may answer instead. The open
//! duration is fixed or grows with each consecutive re-open (backoff with a
//! cap and jitter, reset when the circuit closes). **Half-open**, it lets
//! `half_open_permits` trial calls through and refuses the rest; their
//! results close or re-open the circuit, and after `max_wait_in_half_open`
//! it re-opens anyway, so it never sticks.
//!
//! Every admitted call holds a [`Permit`]. A response future (or a gRPC
//! response body) dropped before the call ends gives it back as *ignored*,
//! and a result counts only in the state generation that admitted it: a
//! late answer from before a transition cannot flip the new state.
//!
//! A [`CircuitBreakerHandle`] reads the state (one atomic load: fit for a
//! readiness probe) and counts, and forces the breaker open (isolate),
//! disabled, metrics-only, or back to closed.
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
//! for responses that say nothing about the dependency). A streaming gRPC
//! response is judged when its trailers arrive: the response body is wrapped
//! in a [`ClassifyBody`] holding the permit.
//! An `Err` from the inner service is a failure. In [`ErrorMode`] every
//! `Ok` is a success and errors are judged by
//! [`CircuitBreakerBuilder::classify_error`] (failure by default).
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
//! | `rampart_circuit_breaker_calls_total` | counter | `name`, `outcome` = `success` \| `failure` \| `ignored` | recorded call outcomes |
//! | `rampart_circuit_breaker_slow_calls_total` | counter | `name` | calls slower than the slow-call threshold |
//! | `rampart_circuit_breaker_rejections_total` | counter | `name` | refused calls (including those answered by a fallback) |
//! | `rampart_circuit_breaker_transitions_total` | counter | `name`, `from`, `to` | state changes |
//!
//! `tracing` events, target `tower_rampart::circuit_breaker`:
//!
//! | event | level | fields |
//! |---|---|---|
//! | `circuit breaker state changed` (to open) | WARN | `name`, `from`, `to`, `reason`, `open_ms` |
//! | `circuit breaker state changed` (other) | INFO | `name`, `from`, `to`, `reason` |
//! | `circuit breaker refused a call` | DEBUG | `name`, `state`, `retry_after_ms` |
//!
//! The same transitions and refusals reach the callback set with
//! [`CircuitBreakerBuilder::on_event`], never under a lock.

mod config;
mod fallback;
mod future;
mod handle;
mod keyed;
mod layer;
mod state;
mod window;

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tower::{BoxError, Service};

pub use config::{Backoff, CircuitBreakerConfig, SlidingWindow};
pub use fallback::{Fallback, FallbackFn, FallbackService, NoFallback};
pub use future::{Finish, Permit, ResponseFuture};
pub use handle::CircuitBreakerHandle;
pub use keyed::{KeyedCircuitBreakerHandle, KeyedCircuitBreakerLayer};
pub use layer::{CircuitBreakerBuilder, CircuitBreakerLayer};
pub use state::{CircuitBreakerEvent, CircuitCounts, CircuitState, TransitionReason};

use crate::classify::{Classification, ClassifyBody, Outcome};
use crate::rejection::{ErrorMode, HttpMode, Protocol, ResponseBody};
use future::{Decision, decide};
pub(crate) use keyed::KeyedShared;
use state::Breaker;

/// The response body of a breaker in [`HttpMode`]: the inner body, watched
/// for gRPC trailers when the verdict waits for them, or a refusal's body.
pub type BreakerBody<B> = ResponseBody<ClassifyBody<B, Permit>>;

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

type HttpOut<B, E> = Result<Response<BreakerBody<B>>, E>;

impl<B, E> Finish<Result<Response<B>, E>> for HttpMode {
    type Output = HttpOut<B, E>;

    #[inline(always)]
    fn finish(out: Result<Response<B>, E>, permit: Permit) -> HttpOut<B, E> {
        finish_http(out, permit)
    }
}

impl<R, E: Into<BoxError>> Finish<Result<R, E>> for ErrorMode {
    type Output = Result<R, BoxError>;

    #[inline(always)]
    fn finish(out: Result<R, E>, permit: Permit) -> Result<R, BoxError> {
        finish_error(out, permit)
    }
}

#[inline(always)]
fn finish_http<B, E>(out: Result<Response<B>, E>, permit: Permit) -> HttpOut<B, E> {
    match out {
        Err(e) => {
            permit.complete(Outcome::Failure);
            Err(e)
        }
        Ok(res) => {
            let verdict = permit.lane().map(|l| {
                let c = &l.core.settings.classifier;
                (c.classify_response(&res), c.grpc_failure_codes())
            });
            match verdict {
                Some((Classification::AwaitTrailers, failures)) => {
                    Ok(res.map(|b| ResponseBody::new(ClassifyBody::deferred(b, failures, permit))))
                }
                Some((Classification::Done(outcome), _)) => {
                    permit.complete(outcome);
                    Ok(res.map(|b| ResponseBody::new(ClassifyBody::passthrough(b))))
                }
                None => Ok(res.map(|b| ResponseBody::new(ClassifyBody::passthrough(b)))),
            }
        }
    }
}

#[inline(always)]
fn finish_error<R, E: Into<BoxError>>(out: Result<R, E>, permit: Permit) -> Result<R, BoxError> {
    match out {
        Ok(r) => {
            permit.complete(Outcome::Success);
            Ok(r)
        }
        Err(e) => {
            let e: BoxError = e.into();
            let outcome = permit.classify_error(&*e);
            permit.complete(outcome);
            Err(e)
        }
    }
}

fn map_fallback_http<B, E>(out: Result<Response<B>, E>) -> HttpOut<B, E> {
    out.map(|res| res.map(|b| ResponseBody::new(ClassifyBody::passthrough(b))))
}

#[inline(always)]
pub(crate) fn call_http<S, ReqB, ResB, F>(
    breaker: &Breaker,
    inner: &mut S,
    fallback: &F,
    req: Request<ReqB>,
) -> ResponseFuture<S::Future, HttpMode>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    F: Fallback<Request<ReqB>, Response<ResB>, S::Error>,
    ResB: Send + 'static,
    S::Error: Send + 'static,
{
    match decide(breaker) {
        Decision::Go(permit) => ResponseFuture::admitted(inner.call(req), permit),
        Decision::Refuse(refusal) => {
            let rejection = breaker.rejection(refusal);
            let protocol = Protocol::of(&req);
            match fallback.fallback(req, rejection, map_fallback_http) {
                Ok(fut) => ResponseFuture::fallback(fut),
                Err((_req, rejection)) => {
                    ResponseFuture::ready(Ok(rejection.into_response(protocol)))
                }
            }
        }
    }
}

#[inline(always)]
fn call_error<S, Req, F>(
    breaker: &Breaker,
    inner: &mut S,
    fallback: &F,
    req: Req,
) -> ResponseFuture<S::Future, ErrorMode>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    F: Fallback<Req, S::Response, BoxError>,
{
    match decide(breaker) {
        Decision::Go(permit) => ResponseFuture::admitted(inner.call(req), permit),
        Decision::Refuse(refusal) => {
            let rejection = breaker.rejection(refusal);
            match fallback.fallback(req, rejection, |r| r) {
                Ok(fut) => ResponseFuture::fallback(fut),
                Err((_req, rejection)) => {
                    ResponseFuture::ready(Err(Box::new(rejection) as BoxError))
                }
            }
        }
    }
}

impl<S, ReqB, ResB, F> Service<Request<ReqB>> for CircuitBreaker<S, HttpMode, F>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    F: Fallback<Request<ReqB>, Response<ResB>, S::Error>,
    ResB: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<BreakerBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, HttpMode>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        call_http(&self.breaker, &mut self.inner, &self.fallback, req)
    }
}

impl<S, Req, F> Service<Req> for CircuitBreaker<S, ErrorMode, F>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    F: Fallback<Req, S::Response, BoxError>,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ErrorMode>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    #[inline]
    fn call(&mut self, req: Req) -> Self::Future {
        call_error(&self.breaker, &mut self.inner, &self.fallback, req)
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

impl<S, K, KF, ReqB, ResB> Service<Request<ReqB>> for KeyedCircuitBreaker<S, K, KF, HttpMode>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
    KF: Fn(&Request<ReqB>) -> K,
    K: std::hash::Hash + Eq + Clone,
    ResB: Send + 'static,
    S::Error: Send + 'static,
{
    type Response = Response<BreakerBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future, HttpMode>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let breaker = self.shared.breaker((self.key_fn)(&req));
        call_http(&breaker, &mut self.inner, &NoFallback, req)
    }
}

impl<S, K, KF, Req> Service<Req> for KeyedCircuitBreaker<S, K, KF, ErrorMode>
where
    S: Service<Req>,
    S::Error: Into<BoxError>,
    S::Response: Send + 'static,
    KF: Fn(&Req) -> K,
    K: std::hash::Hash + Eq + Clone,
{
    type Response = S::Response;
    type Error = BoxError;
    type Future = ResponseFuture<S::Future, ErrorMode>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), BoxError>> {
        self.inner.poll_ready(cx).map_err(Into::into)
    }

    fn call(&mut self, req: Req) -> Self::Future {
        let breaker = self.shared.breaker((self.key_fn)(&req));
        call_error(&breaker, &mut self.inner, &NoFallback, req)
    }
}
