//! The breaker's judgement of a finished call, per [`Mode`](crate::rejection::Mode).
//!
//! The breaker has one `Service` impl and one response future for both
//! modes; what differs is how a result is judged and mapped, and that is
//! [`Judge`], implemented for [`HttpMode`] and [`ErrorMode`] only (the
//! trait is public so it can bound the public impls, but it lives in a
//! private module: nothing outside the crate can name or implement it).
//!
//! Both modes apply the same blame rules first: a refusal by a layer of this
//! crate (a [`Refused`] marker in the response extensions, or a
//! [`Rejection`] error) counts as a failure only when the service itself
//! caused it, and is ignored otherwise. Then
//!
//! - [`HttpMode`]: an `Err` is a failure; a response is judged by the
//!   breaker's [`Classifier`](crate::classify::Classifier), and a streaming
//!   gRPC response defers its verdict to the trailers through a
//!   [`ClassifyBody`] that holds the permit;
//! - [`ErrorMode`]: every `Ok` is a success; an error is judged by the
//!   breaker's error classifier (a failure by default).

use http::{Request, Response};
use tower::BoxError;

use super::future::Permit;
use crate::classify::{Classification, ClassifyBody, Outcome};
use crate::rejection::{ErrorMode, HttpMode, Mode, Protocol, Refused, Rejection, ResponseBody};

/// The response body of a breaker in [`HttpMode`]: the inner body, watched
/// for gRPC trailers when the verdict waits for them, or a refusal's body.
pub type BreakerBody<B> = ResponseBody<ClassifyBody<B, Permit>>;

/// How a breaker in one mode maps the inner service's result (`Res`, `E`)
/// to its own and reports the call's outcome. Implemented for [`HttpMode`]
/// and [`ErrorMode`] only.
pub trait Judge<Res, E> {
    /// The breaker's response type.
    type Response;
    /// The breaker's error type.
    type Error;
    /// What a refusal needs to know about the request: the mode's
    /// [`Mode::Context`](crate::rejection::Mode::Context).
    type Context: Copy;

    /// Maps the inner service's result, reporting its outcome through
    /// `permit`.
    fn judge(result: Result<Res, E>, permit: &mut Permit) -> Result<Self::Response, Self::Error>;

    /// Maps a fallback's answer (nothing is reported: the call was refused).
    fn fallback(result: Result<Res, Self::Error>) -> Result<Self::Response, Self::Error>;

    /// Answers a refusal.
    fn rejected(cx: Self::Context, rejection: Rejection) -> Result<Self::Response, Self::Error>;

    /// Maps an error of the inner service's `poll_ready`.
    fn ready_error(err: E) -> Self::Error;
}

/// The outcome of a refusal by a layer of this crate: a failure only when
/// the service itself caused it (the server's own timeout), otherwise
/// ignored.
#[inline]
fn refusal_outcome(service_fault: bool) -> Outcome {
    if service_fault {
        Outcome::Failure
    } else {
        Outcome::Ignored
    }
}

/// The outcome of an error from the inner service of a breaker in
/// [`HttpMode`]: a [`Rejection`] (plain or in a `BoxError`) is judged by its
/// fault, anything else is a failure.
#[cold]
fn http_error_outcome<E: 'static>(e: &E) -> Outcome {
    let any: &dyn std::any::Any = e;
    let rejection = any.downcast_ref::<Rejection>().or_else(|| {
        any.downcast_ref::<BoxError>()
            .and_then(|b| Rejection::find(b.as_ref()))
    });
    match rejection {
        Some(r) => refusal_outcome(r.is_service_fault()),
        None => Outcome::Failure,
    }
}

#[inline]
fn passthrough<B>(res: Response<B>) -> Response<BreakerBody<B>> {
    res.map(|b| ResponseBody::new(ClassifyBody::passthrough(b)))
}

/// [`HttpMode`]'s judgement of `result`, its body wrapped by `wrap` first:
/// the response is judged by its head and its body wrapped in one step,
/// one move of the response instead of one per wrapper (the stack's guarded
/// call wraps the application's body in its own answer type on the way).
#[inline(always)] // receipt: `future.rs` module docs, "Inlining"
pub(crate) fn judge_http<X, B, E: 'static>(
    result: Result<Response<X>, E>,
    permit: &mut Permit,
    wrap: impl FnOnce(X) -> B,
) -> Result<Response<BreakerBody<B>>, E> {
    let res = match result {
        Ok(res) => res,
        Err(e) => {
            permit.report(http_error_outcome(&e));
            return Err(e);
        }
    };
    // A refusal by an inner layer of this crate is judged by whose fault
    // it was, never by its status (an empty `Extensions` is one branch).
    if let Some(refused) = res.extensions().get::<Refused>() {
        permit.report(refusal_outcome(refused.is_service_fault()));
        return Ok(res.map(|b| ResponseBody::new(ClassifyBody::passthrough(wrap(b)))));
    }
    let verdict = permit.lane().map(|l| {
        let c = &l.core.settings.classifier;
        (c.classify_response(&res), c.grpc_failure_codes())
    });
    let watch = match verdict {
        Some((Classification::AwaitTrailers, failures)) => Some((failures, permit.take())),
        Some((Classification::Done(outcome), _)) => {
            permit.report(outcome);
            None
        }
        // A disabled breaker: nothing to report.
        None => None,
    };
    Ok(res.map(|b| {
        let b = wrap(b);
        ResponseBody::new(match watch {
            Some((failures, permit)) => ClassifyBody::deferred(b, failures, permit),
            None => ClassifyBody::passthrough(b),
        })
    }))
}

impl<B, E: 'static> Judge<Response<B>, E> for HttpMode {
    type Response = Response<BreakerBody<B>>;
    type Error = E;
    type Context = Protocol;

    #[inline(always)] // receipt: `future.rs` module docs, "Inlining"
    fn judge(result: Result<Response<B>, E>, permit: &mut Permit) -> Result<Self::Response, E> {
        judge_http(result, permit, |b| b)
    }

    #[inline]
    fn fallback(result: Result<Response<B>, E>) -> Result<Self::Response, E> {
        result.map(passthrough)
    }

    #[inline]
    fn rejected(cx: Protocol, rejection: Rejection) -> Result<Self::Response, E> {
        // The refusal is answered by the mode, as in every layer (the
        // request type plays no part in the answer).
        <HttpMode as Mode<Request<()>, Response<ClassifyBody<B, Permit>>, E>>::rejected(
            cx, rejection,
        )
    }

    #[inline]
    fn ready_error(err: E) -> E {
        err
    }
}

impl<R, E: Into<BoxError>> Judge<R, E> for ErrorMode {
    type Response = R;
    type Error = BoxError;
    type Context = ();

    #[inline(always)] // receipt: `future.rs` module docs, "Inlining"
    fn judge(result: Result<R, E>, permit: &mut Permit) -> Result<R, BoxError> {
        match result {
            Ok(r) => {
                permit.report(Outcome::Success);
                Ok(r)
            }
            Err(e) => {
                let e: BoxError = e.into();
                let outcome = match Rejection::find(e.as_ref()) {
                    Some(r) => refusal_outcome(r.is_service_fault()),
                    None => permit.classify_error(&*e),
                };
                permit.report(outcome);
                Err(e)
            }
        }
    }

    #[inline]
    fn fallback(result: Result<R, BoxError>) -> Result<R, BoxError> {
        result
    }

    #[inline]
    fn rejected((): (), rejection: Rejection) -> Result<R, BoxError> {
        <ErrorMode as Mode<(), R, BoxError>>::rejected((), rejection)
    }

    #[inline]
    fn ready_error(err: E) -> BoxError {
        err.into()
    }
}

#[cfg(test)]
mod tests {
    use std::fmt;

    use super::*;
    use crate::circuit_breaker::{CircuitBreakerLayer, CircuitCounts, future};
    use crate::rejection::RejectionKind;

    /// A fresh breaker (never trips here) and a permit it admitted.
    fn admitted() -> (CircuitBreakerLayer, Permit) {
        let layer = CircuitBreakerLayer::builder()
            .count_window(100)
            .minimum_calls(100)
            .build()
            .unwrap();
        match future::decide(&layer.breaker) {
            future::Decision::Go(permit) => (layer, permit),
            future::Decision::Refuse(_) => unreachable!("a closed breaker admits"),
        }
    }

    fn counted(layer: &CircuitBreakerLayer) -> (u64, u64) {
        let CircuitCounts {
            calls, failures, ..
        } = layer.handle().counts();
        (calls, failures)
    }

    #[derive(Debug)]
    struct Plain;
    impl fmt::Display for Plain {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("plain")
        }
    }
    impl std::error::Error for Plain {}

    fn refusal(service_fault: bool) -> Rejection {
        Rejection::new(RejectionKind::TimedOut, "inner").with_service_fault(service_fault)
    }

    /// The blame rules are the same in both modes: a refusal counts (as a
    /// failure) only when it is the service's fault; any other error is a
    /// failure; a success is a success.
    #[test]
    fn both_modes_blame_alike() {
        // (calls, failures) recorded for each answer; an ignored call is
        // not counted at all.
        let ignored = (0, 0);
        let failure = (1, 1);
        let success = (1, 0);

        for (fault, expected) in [(false, ignored), (true, failure)] {
            // HttpMode: the refusal as a response with its marker ...
            let (layer, mut permit) = admitted();
            let res = refusal(fault).into_response::<()>(Protocol::Http);
            let out = <HttpMode as Judge<_, BoxError>>::judge(Ok(res), &mut permit);
            assert!(out.is_ok());
            assert_eq!(counted(&layer), expected, "http response, fault {fault}");
            // ... or as an error (plain, and inside a `BoxError`).
            let (layer, mut permit) = admitted();
            let out = <HttpMode as Judge<Response<()>, _>>::judge(Err(refusal(fault)), &mut permit);
            assert!(out.is_err());
            assert_eq!(counted(&layer), expected, "http error, fault {fault}");
            let (layer, mut permit) = admitted();
            let boxed: BoxError = Box::new(refusal(fault));
            let _ = <HttpMode as Judge<Response<()>, _>>::judge(Err(boxed), &mut permit);
            assert_eq!(counted(&layer), expected, "http boxed, fault {fault}");
            // ErrorMode: the refusal as an error.
            let (layer, mut permit) = admitted();
            let out = <ErrorMode as Judge<(), _>>::judge(Err(refusal(fault)), &mut permit);
            assert!(Rejection::find(out.unwrap_err().as_ref()).is_some());
            assert_eq!(counted(&layer), expected, "error mode, fault {fault}");
        }

        let (layer, mut permit) = admitted();
        let _ = <HttpMode as Judge<Response<()>, _>>::judge(Err(Plain), &mut permit);
        assert_eq!(counted(&layer), failure);
        let (layer, mut permit) = admitted();
        let _ = <ErrorMode as Judge<(), _>>::judge(Err(Plain), &mut permit);
        assert_eq!(counted(&layer), failure);

        let (layer, mut permit) = admitted();
        let _ = <HttpMode as Judge<_, Plain>>::judge(Ok(Response::new(())), &mut permit);
        assert_eq!(counted(&layer), success);
        let (layer, mut permit) = admitted();
        let _ = <ErrorMode as Judge<(), Plain>>::judge(Ok(()), &mut permit);
        assert_eq!(counted(&layer), success);
    }

    /// A panic while the call is judged (here in the error classifier)
    /// records the call once, as a failure, and goes on: the response
    /// future judges through its permit where it lies, and the permit's
    /// unwind guard still holds it.
    #[test]
    fn a_panic_while_judging_counts_one_failure() {
        use std::future::Future;
        use std::task::{Context, Waker};
        use tower::{Layer, Service};

        let layer = CircuitBreakerLayer::builder()
            .count_window(100)
            .minimum_calls(100)
            .classify_error(|_| panic!("classifier"))
            .build()
            .unwrap();
        let handle = layer.handle();
        let inner = tower::service_fn(|(): ()| std::future::ready(Err::<(), Plain>(Plain)));
        let mut svc = layer.into_error_mode().layer(inner);
        let mut cx = Context::from_waker(Waker::noop());
        assert!(svc.poll_ready(&mut cx).is_ready());
        let mut fut = Box::pin(svc.call(()));
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            let _ = fut.as_mut().poll(&mut cx);
        }));
        assert!(caught.is_err(), "the classifier's panic goes on");
        drop(fut);
        let CircuitCounts {
            calls, failures, ..
        } = handle.counts();
        assert_eq!((calls, failures), (1, 1));
    }

    /// Refusals are answered by the mode: a response with the marker in
    /// HttpMode (in the caller's protocol), the `Rejection` in ErrorMode.
    #[test]
    fn refusals_are_answered_by_the_mode() {
        for protocol in [Protocol::Http, Protocol::Grpc] {
            let res = <HttpMode as Judge<Response<()>, Plain>>::rejected(protocol, refusal(false))
                .unwrap();
            assert!(res.extensions().get::<Refused>().is_some());
            let grpc = res.headers().contains_key(crate::grpc::GRPC_STATUS);
            assert_eq!(grpc, protocol == Protocol::Grpc);
        }
        let err = <ErrorMode as Judge<(), Plain>>::rejected((), refusal(false)).unwrap_err();
        assert_eq!(
            err.downcast_ref::<Rejection>().map(Rejection::kind),
            Some(RejectionKind::TimedOut)
        );
    }
}
