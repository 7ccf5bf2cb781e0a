//! What the timeout layer answers when the time is up.
//!
//! The refusal is a [`Rejection`] of kind
//! [`TimedOut`](RejectionKind::TimedOut): 504 (or the configured status) with
//! a problem+json body for HTTP, `DEADLINE_EXCEEDED` for gRPC, or the
//! `Rejection` itself inside a `BoxError` in
//! [`ErrorMode`](crate::rejection::ErrorMode).

use std::error::Error;

use crate::rejection::{Rejection, RejectionKind};

/// Why a request ran out of time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TimeoutCause {
    /// The deadline passed while the inner service was working; its future
    /// was dropped.
    Elapsed,
    /// The caller's budget (less the safety margin), or an outer layer's
    /// deadline, was already spent when the request arrived; the inner
    /// service was not called.
    BudgetSpent,
}

impl TimeoutCause {
    /// A stable snake_case name, used as the `cause` metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            TimeoutCause::Elapsed => "elapsed",
            TimeoutCause::BudgetSpent => "budget_spent",
        }
    }

    /// The detail the refusal carries (the problem `detail`, the
    /// `grpc-message`).
    pub const fn detail(self) -> &'static str {
        match self {
            TimeoutCause::Elapsed => "the request did not finish before its deadline",
            TimeoutCause::BudgetSpent => "the request's deadline had passed when it arrived",
        }
    }
}

/// Whether `err` (for example the `BoxError` of a layer in
/// [`ErrorMode`](crate::rejection::ErrorMode)) is a timeout refusal from this
/// crate.
///
/// ```
/// use tower::BoxError;
/// use tower_rampart::{Rejection, RejectionKind, timeout::is_timeout};
///
/// let err: BoxError = Rejection::new(RejectionKind::TimedOut, "api").into();
/// assert!(is_timeout(err.as_ref()));
/// let other: BoxError = "boom".into();
/// assert!(!is_timeout(other.as_ref()));
/// ```
pub fn is_timeout(err: &(dyn Error + Send + Sync + 'static)) -> bool {
    err.downcast_ref::<Rejection>()
        .is_some_and(|r| r.kind() == RejectionKind::TimedOut)
}
