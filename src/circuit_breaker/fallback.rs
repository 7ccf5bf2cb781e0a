//! Answering refused calls another way: a cache, a default.

use std::fmt;
use std::future::{Future, poll_fn};

use tower::Service;

use super::future::BoxFuture;
use crate::Rejection;

/// What a breaker does with a call it refuses, instead of answering the
/// refusal. Implemented by [`NoFallback`] (the default: answer the
/// refusal), [`FallbackFn`] and [`FallbackService`].
#[allow(clippy::result_large_err)] // the refusal path, never the happy path
pub trait Fallback<Req, Res, E>: Clone {
    /// Whether [`fallback`](Self::fallback) may answer at all: `false` for
    /// [`NoFallback`] only, so that a refusal without a fallback is answered
    /// at once, without moving the request in and out of the call.
    const ANSWERS: bool = true;

    /// Answers `req`, refused for `rejection`; or hands both back to have
    /// the refusal answered as usual.
    fn fallback<T, Map>(
        &self,
        req: Req,
        rejection: Rejection,
        map: Map,
    ) -> Result<BoxFuture<T>, (Req, Rejection)>
    where
        Map: FnOnce(Result<Res, E>) -> T + Send + 'static,
        T: 'static;
}

/// No fallback: refusals are answered as refusals.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoFallback;

impl<Req, Res, E> Fallback<Req, Res, E> for NoFallback {
    const ANSWERS: bool = false;

    fn fallback<T, Map>(
        &self,
        req: Req,
        rejection: Rejection,
        _map: Map,
    ) -> Result<BoxFuture<T>, (Req, Rejection)>
    where
        Map: FnOnce(Result<Res, E>) -> T + Send + 'static,
        T: 'static,
    {
        Err((req, rejection))
    }
}

/// A fallback closure: `Fn(Req, Rejection) -> impl Future<Output =
/// Result<Res, E>>`, made by
/// [`CircuitBreakerLayer::fallback_fn`](super::CircuitBreakerLayer::fallback_fn).
#[derive(Clone)]
pub struct FallbackFn<F>(pub(crate) F);

impl<F> fmt::Debug for FallbackFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("FallbackFn")
    }
}

impl<Req, Res, E, F, Fut> Fallback<Req, Res, E> for FallbackFn<F>
where
    F: Fn(Req, Rejection) -> Fut + Clone,
    Fut: Future<Output = Result<Res, E>> + Send + 'static,
    Res: Send + 'static,
    E: Send + 'static,
{
    fn fallback<T, Map>(
        &self,
        req: Req,
        rejection: Rejection,
        map: Map,
    ) -> Result<BoxFuture<T>, (Req, Rejection)>
    where
        Map: FnOnce(Result<Res, E>) -> T + Send + 'static,
        T: 'static,
    {
        let fut = (self.0)(req, rejection);
        Ok(Box::pin(async move { map(fut.await) }))
    }
}

/// A fallback service, called (after `poll_ready`) with the refused
/// request; made by
/// [`CircuitBreakerLayer::fallback_service`](super::CircuitBreakerLayer::fallback_service).
#[derive(Clone, Debug)]
pub struct FallbackService<S>(pub(crate) S);

impl<Req, Res, E, S> Fallback<Req, Res, E> for FallbackService<S>
where
    S: Service<Req, Response = Res, Error = E> + Clone + Send + 'static,
    S::Future: Send + 'static,
    Req: Send + 'static,
    Res: Send + 'static,
    E: Send + 'static,
{
    fn fallback<T, Map>(
        &self,
        req: Req,
        _rejection: Rejection,
        map: Map,
    ) -> Result<BoxFuture<T>, (Req, Rejection)>
    where
        Map: FnOnce(Result<Res, E>) -> T + Send + 'static,
        T: 'static,
    {
        let mut svc = self.0.clone();
        Ok(Box::pin(async move {
            let out = match poll_fn(|cx| svc.poll_ready(cx)).await {
                Ok(()) => svc.call(req).await,
                Err(e) => Err(e),
            };
            map(out)
        }))
    }
}
