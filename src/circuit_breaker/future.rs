//! The response future and the permit every admitted call holds.
//!
//! # Inlining and judging in place: the speed tricks here, and their receipts
//!
//! Six functions on the admitted path carry `#[inline(always)]` with this
//! receipt: here `Permit::report` (first measured as [`Permit::complete`],
//! which now calls it), `ResponseFuture::admitted`, `ResponseFuture::poll`
//! and `decide`, and `Judge::judge` of both modes in `judge.rs` (`HttpMode`'s
//! body is `judge_http`, shared with the stack's guarded call and forced
//! with it). `decided` in `mod.rs`, which wraps `decide`, carries its own
//! receipt (`refuse`'s docs). Measured
//! with the harness of the `circuit_breaker/call/rampart_closed*` rows of
//! `benches/README.md` (`poll_ready` + `call` + one poll, an immediately
//! ready inner service) in a fixed loop under cachegrind, instructions per
//! call, plain `#[inline]` -> `#[inline(always)]`: closed `HttpMode` 635 ->
//! 610, closed `ErrorMode` 520 -> 489, open typed error 1008 -> 993 (the
//! bare service: 237), so 6 % (`HttpMode`) and 11 % (`ErrorMode`) of the
//! breaker's own cost on the closed rows the issue #2 target is about, 2 %
//! on the open row; see "Inlining" under "Circuit breaker" in
//! `benches/README.md`. Nothing else on this path is forced.
//!
//! The other trick, with its receipt on `Permit::report`: the response
//! future judges the call through its permit where it lies instead of
//! moving the permit out first.

use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use futures_core::TryFuture;
use pin_project_lite::pin_project;

use super::judge::Judge;
use super::state::{Admission, Breaker, Lane, Refusal};
use crate::classify::{OnOutcome, Outcome};

/// The breaker's hold on one admitted call.
///
/// It reports the call's [`Outcome`] exactly once. Dropped before that (the
/// response future or a streaming gRPC body dropped early: the client went
/// away, an outer timeout fired), it reports [`Outcome::Ignored`], which
/// gives a half-open trial permit back. A panic that unwinds through the
/// call (the inner service's `call`, its future or a streaming gRPC body)
/// reports one [`Outcome::Failure`] and the panic goes on, as gobreaker
/// does. The result counts only if the
/// breaker is still in the state generation that admitted the call.
pub struct Permit {
    lane: Option<Arc<Lane>>,
    word: u64,
    start: u64,
}

impl Permit {
    #[inline]
    pub(crate) fn from_admission(breaker: &Breaker, word: u64, start: u64) -> Self {
        Self {
            lane: Some(breaker.lane()),
            word,
            start,
        }
    }

    /// A permit that records nothing (a disabled breaker).
    #[inline]
    pub(crate) fn untracked() -> Self {
        Self {
            lane: None,
            word: 0,
            start: 0,
        }
    }

    /// Reports the call's outcome.
    #[inline]
    pub fn complete(mut self, outcome: Outcome) {
        self.report(outcome);
    }

    /// Reports the call's outcome from where the permit lies; it records
    /// nothing after that. The response future judges through this, not by
    /// moving its permit out: for an inner future ready at once, that move
    /// read the permit back as one 16-byte load just after `call` wrote it
    /// as two 8-byte stores, and stalled on store forwarding (alternated
    /// criterion runs of `circuit_breaker/call/rampart_closed_error_mode`:
    /// +31.4 to +31.9 ns over bare with the move, +23.4 to +24.4 without;
    /// `rampart_closed` +46.3 to +47.9 and +37.5 to +40.0).
    #[inline(always)] // receipt: module docs, "Inlining"
    pub(crate) fn report(&mut self, outcome: Outcome) {
        if let Some(lane) = self.lane.take() {
            lane.core.record(self.word, self.start, outcome);
        }
    }

    /// Moves the permit out, leaving one that records nothing.
    #[inline]
    pub(crate) fn take(&mut self) -> Self {
        std::mem::replace(self, Self::untracked())
    }

    /// The error classifier of the breaker (ErrorMode), if any.
    pub(crate) fn classify_error(
        &self,
        err: &(dyn std::error::Error + Send + Sync + 'static),
    ) -> Outcome {
        match self
            .lane
            .as_ref()
            .and_then(|l| l.core.settings.error_classifier.as_ref())
        {
            Some(f) => f(err),
            None => Outcome::Failure,
        }
    }

    pub(crate) fn lane(&self) -> Option<&Arc<Lane>> {
        self.lane.as_ref()
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        if let Some(lane) = self.lane.take() {
            // Dropped by a panic unwinding through the call (the inner
            // service's `call` panicked): one failure, and the panic goes on.
            let outcome = if std::thread::panicking() {
                Outcome::Failure
            } else {
                Outcome::Ignored
            };
            lane.core.record(self.word, self.start, outcome);
        }
    }
}

/// Held on the stack while the inner future is polled: if the poll panics,
/// the unwinding drops it and the call is recorded as one failure (the
/// executor catches the panic and drops the future only later, when
/// `std::thread::panicking()` is false again).
struct UnwindGuard<'a>(&'a mut Option<Permit>);

impl Drop for UnwindGuard<'_> {
    #[inline]
    fn drop(&mut self) {
        if self.0.is_some() && std::thread::panicking() {
            if let Some(permit) = self.0.take() {
                permit.complete(Outcome::Failure);
            }
        }
    }
}

impl OnOutcome for Permit {
    fn on_outcome(self, outcome: Outcome) {
        self.complete(outcome);
    }
}

impl fmt::Debug for Permit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Permit")
            .field("tracked", &self.lane.is_some())
            .finish()
    }
}

/// A boxed fallback future (the refusal path only).
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

pin_project! {
    /// The response future of [`CircuitBreaker`](super::CircuitBreaker) and
    /// [`KeyedCircuitBreaker`](super::KeyedCircuitBreaker): the inner call
    /// (holding its [`Permit`]), a refusal answered at once, or the fallback.
    pub struct ResponseFuture<F, M>
    where
        F: TryFuture,
        M: Judge<F::Ok, F::Error>,
    {
        #[pin]
        kind: Kind<F, Result<M::Response, M::Error>>,
        _mode: PhantomData<fn() -> M>,
    }
}

pin_project! {
    #[project = KindProj]
    enum Kind<F, T> {
        Admitted {
            #[pin]
            fut: F,
            // `Some` from `admitted` on (judged in place, it becomes
            // untracked). A plain `Permit` here, the guard checking its
            // lane, measured slower on `rampart_closed_error_mode`: +27 to
            // +28 ns against +23 to +24 (alternated runs, 21:21; faster on
            // `rampart_closed`, +31 to +34 against +38 to +45).
            permit: Option<Permit>,
        },
        Ready {
            out: Option<T>,
        },
        Fallback {
            fut: BoxFuture<T>,
        },
    }
}

/// The output of a breaker's response future: the inner result as the mode
/// judged and mapped it.
type Judged<F, M> = Result<
    <M as Judge<<F as TryFuture>::Ok, <F as TryFuture>::Error>>::Response,
    <M as Judge<<F as TryFuture>::Ok, <F as TryFuture>::Error>>::Error,
>;

impl<F: TryFuture, M: Judge<F::Ok, F::Error>> ResponseFuture<F, M> {
    #[inline(always)] // receipt: module docs, "Inlining"
    pub(crate) fn admitted(fut: F, permit: Permit) -> Self {
        Self {
            kind: Kind::Admitted {
                fut,
                permit: Some(permit),
            },
            _mode: PhantomData,
        }
    }

    pub(crate) fn ready(out: Judged<F, M>) -> Self {
        Self {
            kind: Kind::Ready { out: Some(out) },
            _mode: PhantomData,
        }
    }

    pub(crate) fn fallback(fut: BoxFuture<Judged<F, M>>) -> Self {
        Self {
            kind: Kind::Fallback { fut },
            _mode: PhantomData,
        }
    }
}

impl<F: TryFuture, M: Judge<F::Ok, F::Error>> Future for ResponseFuture<F, M> {
    type Output = Judged<F, M>;

    #[inline(always)] // receipt: module docs, "Inlining"
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().kind.project() {
            KindProj::Admitted { fut, permit } => {
                let guard = UnwindGuard(permit);
                let out = ready!(fut.try_poll(cx));
                let permit = guard.0.as_mut().expect("polled after completion");
                Poll::Ready(M::judge(out, permit))
            }
            KindProj::Ready { out } => Poll::Ready(out.take().expect("polled after completion")),
            KindProj::Fallback { fut } => fut.as_mut().poll(cx),
        }
    }
}

impl<F: TryFuture, M: Judge<F::Ok, F::Error>> fmt::Debug for ResponseFuture<F, M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("circuit_breaker::ResponseFuture")
    }
}

/// What the service does with a call, decided before the request moves.
pub(crate) enum Decision {
    Go(Permit),
    Refuse(Refusal),
}

#[inline(always)] // receipt: module docs, "Inlining"
pub(crate) fn decide(breaker: &Breaker) -> Decision {
    match breaker.core().admit() {
        Admission::Admitted { word, start } => {
            Decision::Go(Permit::from_admission(breaker, word, start))
        }
        Admission::Untracked => Decision::Go(Permit::untracked()),
        Admission::Rejected(r) => Decision::Refuse(r),
    }
}
