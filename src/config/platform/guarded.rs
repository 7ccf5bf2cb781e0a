//! What an admitted request goes through below the front's admission: the
//! circuit breaker (one, or one per route), the timeout and the panic
//! catcher, in that order, each through that layer's own code, in one call
//! and one future rather than three nested services (one move of the
//! application's future and of its response instead of three, and no
//! reference count of their own when axum clones the stack per request).

use std::fmt;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response};
use tokio::time::Sleep;
use tower::Service;

use super::super::catch_panic::{answer, log};
use super::super::routes::BreakerLayer;
use crate::Rejection;
use crate::circuit_breaker::{BreakerBody, Judge, Permit};
use crate::rejection::{HttpMode, Protocol, ResponseBody};
use crate::timeout::deadline::enter;
use crate::timeout::{Deadline, Shared as TimeoutShared, TimeoutCause};
use crate::util::lanes::{Lane, Laned};

/// The body of a guarded answer: the application's (or the timeout's or
/// the panic catcher's answer), watched by the breaker for gRPC trailers
/// when its verdict waits for them; or the breaker's refusal.
pub type GuardedBody<B> = BreakerBody<ResponseBody<B>>;

/// The breaker and the timeout of the stack.
pub(crate) struct Guard {
    pub(crate) breaker: BreakerLayer,
    pub(crate) timeout: Arc<Laned<TimeoutShared>>,
}

impl Guard {
    /// Calls `inner` with `req` if the breaker admits it and its budget is
    /// not spent, under its deadline ([`Deadline::current`]), catching a
    /// panic of the call.
    #[inline]
    pub(super) fn call<S, ReqB>(
        &self,
        inner: &mut S,
        mut req: Request<ReqB>,
        protocol: Protocol,
    ) -> Guarded<S::Future>
    where
        S: Service<Request<ReqB>>,
    {
        let permit = match self.breaker.decide(&req) {
            Ok(permit) => permit,
            Err(rejection) => {
                let state = State::Refused {
                    rejection: Some(rejection),
                };
                return Guarded::answer(state, None, protocol);
            }
        };
        let deadline = match self
            .timeout
            .admit(&mut req, Some(protocol == Protocol::Grpc))
        {
            Ok(deadline) => deadline,
            Err((source, binding)) => {
                let rejection =
                    self.timeout
                        .rejection(TimeoutCause::BudgetSpent, source, Some(binding));
                let state = State::Refused {
                    rejection: Some(Box::new(rejection)),
                };
                return Guarded::answer(state, Some(permit), protocol);
            }
        };
        let scope = enter(deadline);
        let called = catch_unwind(AssertUnwindSafe(|| inner.call(req)));
        drop(scope);
        match called {
            Ok(future) => Guarded {
                state: State::Running {
                    future,
                    sleep: None,
                    deadline,
                    // The future keeps the timeout's state alive through
                    // this thread's lane (for its refusal).
                    timeout: self.timeout.lane(),
                },
                permit: Some(permit),
                protocol,
            },
            Err(panic) => {
                log(&*panic);
                Guarded::answer(State::Panicked, Some(permit), protocol)
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of a guarded call: the application's future raced against
    /// its deadline (a `Sleep` armed only once it is pending), polled under
    /// the deadline and a panic catcher, its result judged by the breaker;
    /// or an answer made at once.
    pub(crate) struct Guarded<F> {
        #[pin]
        state: State<F>,
        // The breaker's permit: the outcome is reported through it once.
        permit: Option<Permit>,
        protocol: Protocol,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running {
            #[pin]
            future: F,
            #[pin]
            sleep: Option<Sleep>,
            deadline: Deadline,
            timeout: Arc<Lane<TimeoutShared>>,
        },
        // Refused by the breaker (no permit) or by the timeout, the budget
        // spent on arrival (the breaker judges that refusal).
        Refused { rejection: Option<Box<Rejection>> },
        // The application panicked in `call`.
        Panicked,
        Done,
    }
}

impl<F> Guarded<F> {
    #[cold]
    fn answer(state: State<F>, permit: Option<Permit>, protocol: Protocol) -> Self {
        Self {
            state,
            permit,
            protocol,
        }
    }
}

impl<F> fmt::Debug for Guarded<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded")
            .field("protocol", &self.protocol)
            .finish_non_exhaustive()
    }
}

impl<F, B, E> Future for Guarded<F>
where
    F: Future<Output = Result<Response<B>, E>>,
    E: 'static,
{
    type Output = Result<Response<GuardedBody<B>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let protocol = *this.protocol;
        let answer: Response<ResponseBody<B>> = match this.state.as_mut().project() {
            StateProj::Running {
                future,
                mut sleep,
                deadline,
                timeout,
            } => {
                let scope = enter(*deadline);
                let polled = catch_unwind(AssertUnwindSafe(|| future.poll(cx)));
                drop(scope);
                match polled {
                    Ok(Poll::Ready(result)) => {
                        this.state.set(State::Done);
                        let result = result.map(|res| res.map(ResponseBody::new));
                        return Poll::Ready(judge(result, this.permit));
                    }
                    Ok(Poll::Pending) => {
                        if sleep.is_none() {
                            sleep.set(Some(tokio::time::sleep_until(deadline.instant())));
                        }
                        if let Some(sleep) = sleep.as_pin_mut() {
                            if sleep.poll(cx).is_pending() {
                                return Poll::Pending;
                            }
                        }
                        // Time is up: the application's future is dropped
                        // below (the cancellation), before the answer leaves.
                        timeout.elapsed(deadline.source()).into_response(protocol)
                    }
                    Err(panic) => {
                        log(&*panic);
                        answer(protocol)
                    }
                }
            }
            StateProj::Refused { rejection } => {
                let rejection = rejection.take().expect("polled after completion");
                if this.permit.is_none() {
                    // The breaker's own refusal: nothing to judge.
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(rejection.into_response(protocol)));
                }
                rejection.into_response(protocol)
            }
            StateProj::Panicked => answer(protocol),
            StateProj::Done => panic!("polled after completion"),
        };
        this.state.set(State::Done);
        Poll::Ready(judge(Ok(answer), this.permit))
    }
}

/// The breaker's verdict on a result, reported through the permit.
#[inline]
fn judge<B, E: 'static>(
    result: Result<Response<ResponseBody<B>>, E>,
    permit: &mut Option<Permit>,
) -> Result<Response<GuardedBody<B>>, E> {
    let permit = permit.take().expect("polled after completion");
    <HttpMode as Judge<Response<ResponseBody<B>>, E>>::judge(result, permit)
}
