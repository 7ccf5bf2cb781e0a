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
use crate::Rejection;
use crate::rejection::{HttpMode, Mode, Protocol};
use crate::util::lanes::Laned;

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
        Rejected { rejection: Option<Box<Rejection>> },
        Done,
    }
}

pin_project! {
    /// A request waiting in the queue: its place, the service to call and
    /// the request.
    pub(crate) struct Waiting<S, Req> {
        #[pin]
        queued: Queued,
        svc: S,
        req: Option<Req>,
    }
}

pin_project! {
    /// A place in the queue and the timer of its maximum wait; settles to
    /// a slot ([`Permit`]) or a refusal. Used by the concurrency limit's
    /// future and by the stack's front.
    pub(crate) struct Queued {
        #[pin]
        sleep: Sleep,
        ticket: Ticket,
    }
}

/// A place in the queue: leaves it when dropped, giving back a slot granted
/// but never used.
struct Ticket {
    shared: Arc<Laned<Shared>>,
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

impl Queued {
    pub(crate) fn new(
        shared: Arc<Laned<Shared>>,
        slot: Slot,
        class: Criticality,
        deadline: Option<u64>,
        until: Instant,
    ) -> Self {
        shared.metrics.queued.increment(1.0);
        Self {
            sleep: tokio::time::sleep_until(until),
            ticket: Ticket {
                shared,
                slot: Some(slot),
                class,
                deadline,
            },
        }
    }

    /// Waits for a slot: the permit once one is granted, or the refusal
    /// once the wait is over without one.
    pub(crate) fn poll_granted(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Result<Permit, Rejection>> {
        let this = self.project();
        let ticket = this.ticket;
        let slot = ticket.slot.as_ref().expect("in the queue");
        let shared = Arc::clone(&ticket.shared);
        let queue = shared
            .queue
            .as_ref()
            .expect("a waiting request has a queue");
        if queue.poll_slot(slot, cx.waker()) {
            ticket.slot.take();
        } else {
            if this.sleep.poll(cx).is_pending() {
                return Poll::Pending;
            }
            let slot = ticket.slot.take().expect("in the queue");
            if !queue.leave(&slot) {
                shared.metrics.queued.decrement(1.0);
                return Poll::Ready(Err(shared.rejection(ticket.class, Reason::QueueTimeout)));
            }
        }
        shared.metrics.queued.decrement(1.0);
        Poll::Ready(Ok(Shared::permit(&shared, ticket.class, ticket.deadline)))
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
    pub(crate) fn rejected(rejection: Rejection, cx: C) -> Self {
        Self {
            state: State::Rejected {
                rejection: Some(Box::new(rejection)),
            },
            permit: None,
            waiting: None,
            cx,
            _mode: PhantomData,
        }
    }

    #[cold]
    pub(crate) fn waiting(queued: Queued, svc: S, req: Req, cx: C) -> Self {
        Self {
            state: State::Waiting,
            permit: None,
            waiting: Some(Box::pin(Waiting {
                queued,
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
                    match std::task::ready!(w.queued.poll_granted(cx)) {
                        Ok(permit) => {
                            let req = w.req.take().expect("request not yet sent");
                            let future = w.svc.call(req);
                            *this.permit = Some(permit);
                            this.waiting.take();
                            this.state.set(State::Running { future });
                        }
                        Err(rejection) => {
                            this.waiting.take();
                            this.state.set(State::Rejected {
                                rejection: Some(Box::new(rejection)),
                            });
                        }
                    }
                }
                StateProj::Rejected { rejection } => {
                    let rejection = rejection.take().expect("polled after completion");
                    this.state.set(State::Done);
                    return Poll::Ready(M::rejected(*this.cx, *rejection));
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
