//! [`ResponseFuture`]: the inner service's future raced against the
//! deadline.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use pin_project_lite::pin_project;
use tokio::time::Sleep;

use super::Binding;
use super::deadline::{Deadline, DeadlineSource};
use super::error::TimeoutCause;
use super::state::Shared;
use crate::rejection::{HttpMode, Mode, Protocol};
use crate::util::lanes::Lane;

pin_project! {
    /// The response future of [`Timeout`](super::Timeout).
    ///
    /// Polls the inner future first; when it is not ready, races it against
    /// a `tokio::time::Sleep` held inline (created on the first `Pending`, so
    /// an immediately ready response never touches the timer). When the
    /// sleep fires the inner future is dropped and the refusal is answered
    /// through the mode `M`, with the request context `C` captured in
    /// `call` (the protocol in [`HttpMode`]). `Req` is the request type.
    pub struct ResponseFuture<F, Req, M = HttpMode, C = Protocol> {
        #[pin]
        state: State<F>,
        cx: C,
        shared: Arc<Lane<Shared>>,
        _mode: PhantomData<fn(Req) -> M>,
    }
}

pin_project! {
    #[project = StateProj]
    enum State<F> {
        Running {
            #[pin]
            inner: F,
            #[pin]
            sleep: Option<Sleep>,
            deadline: Deadline,
        },
        // The budget was spent on arrival: the inner service was not called.
        Spent {
            source: DeadlineSource,
            binding: Binding,
        },
        // Answered; the inner future (if any) is gone.
        Done,
    }
}

impl<F, Req, M, C> ResponseFuture<F, Req, M, C> {
    #[inline]
    pub(crate) fn running(inner: F, deadline: Deadline, cx: C, shared: Arc<Lane<Shared>>) -> Self {
        Self {
            state: State::Running {
                inner,
                sleep: None,
                deadline,
            },
            cx,
            shared,
            _mode: PhantomData,
        }
    }

    pub(crate) fn spent(
        cx: C,
        shared: Arc<Lane<Shared>>,
        source: DeadlineSource,
        binding: Binding,
    ) -> Self {
        Self {
            state: State::Spent { source, binding },
            cx,
            shared,
            _mode: PhantomData,
        }
    }
}

impl<F, Req, M, C, Res, E> Future for ResponseFuture<F, Req, M, C>
where
    F: Future<Output = Result<Res, E>>,
    M: Mode<Req, Res, E, Context = C>,
    C: Copy,
{
    type Output = Result<M::Response, M::Error>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        match this.state.as_mut().project() {
            StateProj::Running {
                inner,
                mut sleep,
                deadline,
            } => {
                let scope = super::deadline::enter(*deadline);
                let polled = inner.poll(cx);
                drop(scope);
                if let Poll::Ready(result) = polled {
                    return Poll::Ready(M::admitted(result));
                }
                if sleep.is_none() {
                    sleep.set(Some(tokio::time::sleep_until(deadline.instant())));
                }
                if let Some(sleep) = sleep.as_pin_mut() {
                    if sleep.poll(cx).is_pending() {
                        return Poll::Pending;
                    }
                }
                // Time is up: drop the inner future now (the cancellation).
                let source = deadline.source();
                this.state.set(State::Done);
                Poll::Ready(M::rejected(*this.cx, this.shared.elapsed(source)))
            }
            StateProj::Spent { source, binding } => {
                let (source, binding) = (*source, *binding);
                this.state.set(State::Done);
                // Counted and logged in `call`.
                let rejection =
                    this.shared
                        .rejection(TimeoutCause::BudgetSpent, source, Some(binding));
                Poll::Ready(M::rejected(*this.cx, rejection))
            }
            StateProj::Done => panic!("ResponseFuture polled after completion"),
        }
    }
}

impl<F, Req, M, C: fmt::Debug> fmt::Debug for ResponseFuture<F, Req, M, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = match &self.state {
            State::Running { deadline, .. } => format!(
                "Running (deadline {:?}, {})",
                deadline.instant(),
                deadline.source().as_str()
            ),
            State::Spent { source, .. } => format!("Spent ({})", source.as_str()),
            State::Done => "Done".to_owned(),
        };
        f.debug_struct("ResponseFuture")
            .field("state", &state)
            .field("cx", &self.cx)
            .field("name", &self.shared.name)
            .finish()
    }
}
