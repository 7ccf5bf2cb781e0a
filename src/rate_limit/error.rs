//! Why a rate limit refused a request.
//!
//! Refusals themselves are [`crate::Rejection`]s (kind
//! [`RateLimited`](crate::RejectionKind::RateLimited), or
//! [`InvalidRequest`](crate::RejectionKind::InvalidRequest) for a missing
//! key under [`MissingKey::Reject`](super::MissingKey::Reject)); this is the
//! finer reason, used as the `reason` label of the refusal metrics and in
//! the refusal's `tracing` event.

use std::fmt;

/// Why a request was (or, in dry-run mode, would have been) refused.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RefusalReason {
    /// The quota has no room now; `Retry-After` says when it will.
    Exhausted,
    /// The request costs more than the quota's burst: it can never be
    /// admitted, so no `Retry-After` is sent.
    TooCostly,
    /// The request carries no key for the quota and the layer rejects such
    /// requests (HTTP 400 / gRPC `INVALID_ARGUMENT`).
    MissingKey,
    /// The quota store (Redis) could not decide and the layer fails closed
    /// (`FailurePolicy::FailClosed`, feature `redis`);
    /// `Retry-After` is the time until the store is tried again.
    StoreUnavailable,
}

impl RefusalReason {
    pub(crate) const ALL: [RefusalReason; 4] = [
        RefusalReason::Exhausted,
        RefusalReason::TooCostly,
        RefusalReason::MissingKey,
        RefusalReason::StoreUnavailable,
    ];

    /// A stable kebab-case name (`exhausted`, `too-costly`, `missing-key`,
    /// `store-unavailable`).
    pub const fn as_str(self) -> &'static str {
        match self {
            RefusalReason::Exhausted => "exhausted",
            RefusalReason::TooCostly => "too-costly",
            RefusalReason::MissingKey => "missing-key",
            RefusalReason::StoreUnavailable => "store-unavailable",
        }
    }

    pub(crate) const fn index(self) -> usize {
        match self {
            RefusalReason::Exhausted => 0,
            RefusalReason::TooCostly => 1,
            RefusalReason::MissingKey => 2,
            RefusalReason::StoreUnavailable => 3,
        }
    }
}

impl fmt::Display for RefusalReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
