//! [`ResponseFuture`]: the inner service's future holding its slot, a wait
//! in the queue, or a refusal.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::{Instant, Sleep};

use super::Observe;
use super::partition::Criticality;
use super::queue::Slot;
use super::state::{Permit, Reason, Shared};
use crate::rejection::{HttpMode, Mode, Protocol};

pin_project! {
    /// The response future of [`ConcurrencyLimit`](super::ConcurrencyLimit).
    ///
    /// Holds the request's slot while the inner future runs and releases it
    /// when the inner future completes or is dropped (cancellation, panic),
    /// feeding the limit algorithm the outcome. A request waiting in the
    /// queue (`S` is the service it will call, `Req` the request) is boxed:
    /// only waiting requests pay for the box.
    pub struct ResponseFuture<F, S, Req, M = HttpMode, C = Protocol> {
        #[pin]
        state: State<F>,
        permit: Option<Permit>,
        waiting: Option<Pin<Box<Waiting<S, Req>>>>,
        cx: C,
        _mode: PhantomData<fn(Req) -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running { #[pin] future: F },
        Waiting,
        Rejected { shared: Arc<Shared>, class: Criticality, reason: Reason },
        Done,
    }
}

pin_project! {
    /// A request waiting in the queue: the service to call, the request,
    /// the timer of its maximum wait and its place in the queue.
    pub(crate) struct Waiting<S, Req> {
        #[pin]
        sleep: Sleep,
        ticket: Ticket,
        svc: S,
        req: Option<Req>,
    }
}

/// A place in the queue: leaves it when dropped, giving back a slot granted
/// but never used.
struct Ticket {
    shared: Arc<Shared>,
    slot: Option<Slot>,
    class: Criticality,
    deadline: Option<u64>,
}

impl Drop for Ticket {
    fn drop(&mut self) {
        if let Some(slot) = self.slot.take() {
            let queue = self
                .shared
                .queue
                .as_ref()
                .expect("a waiting request has a queue");
            if queue.leave(&slot) {
                self.shared.release(self.class);
            }
            self.shared.metrics.queued.decrement(1.0);
        }
    }
}

impl<F, S, Req, M, C> ResponseFuture<F, S, Req, M, C> {
    #[inline]
    pub(crate) fn admitted(future: F, permit: Permit, cx: C) -> Self {
        Self {
            state: State::Running { future },
            permit: Some(permit),
            waiting: None,
            cx,
            _mode: PhantomData,
        }
    }

    #[cold]
    pub(crate) fn rejected(shared: Arc<Shared>, class: Criticality, reason: Reason, cx: C) -> Self {
        Self {
            state: State::Rejected {
                shared,
                class,
                reason,
            },
            permit: None,
            waiting: None,
            cx,
            _mode: PhantomData,
        }
    }

    /// A request queued behind `slot`, waiting until `until` at most.
    #[cold]
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn waiting(
        shared: Arc<Shared>,
        slot: Slot,
        class: Criticality,
        deadline: Option<u64>,
        until: Instant,
        svc: S,
        req: Req,
        cx: C,
    ) -> Self {
        shared.metrics.queued.increment(1.0);
        Self {
            state: State::Waiting,
            permit: None,
            waiting: Some(Box::pin(Waiting {
                sleep: tokio::time::sleep_until(until),
                ticket: Ticket {
                    shared,
                    slot: Some(slot),
                    class,
                    deadline,
                },
                svc,
                req: Some(req),
            })),
            cx,
            _mode: PhantomData,
        }
    }
}

impl<F, S, Req, M, C, Res, E> Future for ResponseFuture<F, S, Req, M, C>
where
    S: tower::Service<Req, Future = F, Response = Res, Error = E>,
    F: Future<Output = Result<Res, E>>,
    M: Mode<Req, Res, E, Context = C> + Observe<Res, E, C>,
    C: Copy,
{
    type Output = Result<M::Response, M::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        loop {
            match this.state.as_mut().project() {
                StateProj::Running { future } => {
                    let result = std::task::ready!(future.poll(cx));
                    if let Some(permit) = this.permit.take() {
                        permit.complete(M::outcome(&result, *this.cx));
                    }
                    this.state.set(State::Done);
                    return Poll::Ready(M::admitted(result));
                }
                StateProj::Waiting => {
                    let waiting = this.waiting.as_mut().expect("waiting state").as_mut();
                    let w = waiting.project();
                    let slot = w.ticket.slot.as_ref().expect("in the queue");
                    let shared = Arc::clone(&w.ticket.shared);
                    let queue = shared
                        .queue
                        .as_ref()
                        .expect("a waiting request has a queue");
                    let mut granted = queue.poll_slot(slot, cx.waker());
                    if !granted {
                        if w.sleep.poll(cx).is_pending() {
                            return Poll::Pending;
                        }
                        // Time is up; a grant may still have raced in.
                        let slot = w.ticket.slot.take().expect("in the queue");
                        shared.metrics.queued.decrement(1.0);
                        granted = queue.leave(&slot);
                        if !granted {
                            let class = w.ticket.class;
                            this.waiting.take();
                            this.state.set(State::Rejected {
                                shared,
                                class,
                                reason: Reason::QueueTimeout,
                            });
                            continue;
                        }
                    } else {
                        w.ticket.slot.take();
                        shared.metrics.queued.decrement(1.0);
                    }
                    // Granted: the slot is ours; the service was ready when
                    // it was taken into this future.
                    let permit = shared.permit(w.ticket.class, w.ticket.deadline);
                    let req = w.req.take().expect("request not yet sent");
                    let future = w.svc.call(req);
                    *this.permit = Some(permit);
                    this.waiting.take();
                    this.state.set(State::Running { future });
                }
                StateProj::Rejected {
                    shared,
                    class,
                    reason,
                } => {
                    let rejection = shared.rejection(*class, *reason);
                    this.state.set(State::Done);
                    return Poll::Ready(M::rejected(*this.cx, rejection));
                }
                StateProj::Done => panic!("ResponseFuture polled after completion"),
            }
        }
    }
}

impl<F, S, Req, M, C: fmt::Debug> fmt::Debug for ResponseFuture<F, S, Req, M, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Running { .. } => "Running",
            State::Waiting => "Waiting",
            State::Rejected { .. } => "Rejected",
            State::Done => "Done",
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("cx", &self.cx)
            .finish_non_exhaustive()
    }
}
