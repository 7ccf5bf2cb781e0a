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
use crate::circuit_breaker::{BreakerBody, Permit, judge_http};
use crate::rejection::{Protocol, ResponseBody};
use crate::timeout::deadline::enter;
use crate::timeout::{Deadline, DeadlineSource, Shared as TimeoutShared, TimeoutCause};
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
    ///
    /// Always inlined into the front's `call`, so that the guarded future
    /// is built in place in the front's own rather than moved into it
    /// (receipt: `benches/README.md`, "The guarded call, inline").
    #[inline(always)]
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
                    protocol,
                };
                return Guarded::answer(state, Permit::untracked());
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
                    protocol,
                };
                return Guarded::answer(state, permit);
            }
        };
        let scope = enter(deadline);
        let called = catch_unwind(AssertUnwindSafe(|| inner.call(req)));
        drop(scope);
        match called {
            Ok(future) => Guarded {
                state: State::Running {
                    future,
                    timer: Timer::Unarmed { deadline },
                    // The future keeps the timeout's state alive through
                    // this thread's lane (for its refusal).
                    timeout: self.timeout.lane(),
                    protocol,
                },
                permit,
            },
            Err(panic) => {
                log(&*panic);
                Guarded::answer(State::Panicked { protocol }, permit)
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
        // The breaker's permit: the outcome is reported through it once
        // (an untracked one, recording nothing, when the breaker refused:
        // not an `Option`, which would take 8 bytes more).
        permit: Permit,
    }
}

pin_project_lite::pin_project! {
    #[project = StateProj]
    // Each variant carries the request's protocol, in the bytes its
    // alignment leaves free, rather than `Guarded` in 8 more.
    enum State<F> {
        Running {
            #[pin]
            future: F,
            #[pin]
            timer: Timer,
            timeout: Arc<Lane<TimeoutShared>>,
            protocol: Protocol,
        },
        // Refused by the breaker (no permit) or by the timeout, the budget
        // spent on arrival (the breaker judges that refusal).
        Refused { rejection: Option<Box<Rejection>>, protocol: Protocol },
        // The application panicked in `call`.
        Panicked { protocol: Protocol },
        Done,
    }
}

pin_project_lite::pin_project! {
    /// The request's deadline: its instant until the application's future
    /// is first pending, then the `Sleep` armed for it, which holds the
    /// instant, in the same bytes (an admitted request's future is 16 bytes
    /// smaller than with both side by side).
    #[project = TimerProj]
    enum Timer {
        Unarmed { deadline: Deadline },
        Armed {
            #[pin]
            sleep: Sleep,
            source: DeadlineSource,
        },
    }
}

impl Timer {
    #[inline]
    fn deadline(self: Pin<&mut Self>) -> Deadline {
        match self.project() {
            TimerProj::Unarmed { deadline } => *deadline,
            TimerProj::Armed { sleep, source } => {
                Deadline::at(sleep.deadline()).with_source(*source)
            }
        }
    }
}

impl<F> Guarded<F> {
    #[cold]
    fn answer(state: State<F>, permit: Permit) -> Self {
        Self { state, permit }
    }
}

impl<F> fmt::Debug for Guarded<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Guarded").finish_non_exhaustive()
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
        let answer: Response<ResponseBody<B>> = match this.state.as_mut().project() {
            StateProj::Running {
                future,
                mut timer,
                timeout,
                protocol,
            } => {
                let protocol = *protocol;
                let deadline = timer.as_mut().deadline();
                let scope = enter(deadline);
                let polled = catch_unwind(AssertUnwindSafe(|| future.poll(cx)));
                drop(scope);
                match polled {
                    Ok(Poll::Ready(result)) => {
                        this.state.set(State::Done);
                        return Poll::Ready(judge_http(result, this.permit, ResponseBody::new));
                    }
                    Ok(Poll::Pending) => {
                        if let TimerProj::Unarmed { .. } = timer.as_mut().project() {
                            timer.set(Timer::Armed {
                                sleep: tokio::time::sleep_until(deadline.instant()),
                                source: deadline.source(),
                            });
                        }
                        if let TimerProj::Armed { sleep, .. } = timer.project() {
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
            StateProj::Refused {
                rejection,
                protocol,
            } => {
                let rejection = rejection.take().expect("polled after completion");
                if this.permit.lane().is_none() {
                    // The breaker's own refusal (or a disabled breaker's):
                    // nothing to judge.
                    let res = rejection.into_response(*protocol);
                    this.state.set(State::Done);
                    return Poll::Ready(Ok(res));
                }
                rejection.into_response(*protocol)
            }
            StateProj::Panicked { protocol } => answer(*protocol),
            StateProj::Done => panic!("polled after completion"),
        };
        this.state.set(State::Done);
        Poll::Ready(judge_http(Ok(answer), this.permit, |b| b))
    }
}
