//! The gRPC rule: which `grpc-status` codes are failures ([`GrpcCodeSet`])
//! and the verdict of a status read from the headers or the trailers.

use std::fmt;

use http::HeaderMap;

use super::Outcome;
use crate::grpc::{GRPC_STATUS, GrpcCode};

/// A set of gRPC codes, stored as a bit mask (it is `Copy` and costs one
/// instruction to test).
///
/// ```
/// use tower_rampart::classify::{GrpcCode, GrpcCodeSet};
///
/// let set = GrpcCodeSet::default();
/// assert!(set.contains(GrpcCode::Unavailable));
/// assert!(!set.contains(GrpcCode::NotFound));
/// let custom = GrpcCodeSet::empty().with(GrpcCode::Internal);
/// assert!(custom.contains(GrpcCode::Internal) && !custom.contains(GrpcCode::Unavailable));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct GrpcCodeSet(u32);

impl GrpcCodeSet {
    /// No codes.
    pub const fn empty() -> Self {
        Self(0)
    }

    /// The default failure codes: UNKNOWN, DEADLINE_EXCEEDED,
    /// RESOURCE_EXHAUSTED, INTERNAL, UNAVAILABLE, DATA_LOSS.
    pub const fn default_failures() -> Self {
        Self::empty()
            .with(GrpcCode::Unknown)
            .with(GrpcCode::DeadlineExceeded)
            .with(GrpcCode::ResourceExhausted)
            .with(GrpcCode::Internal)
            .with(GrpcCode::Unavailable)
            .with(GrpcCode::DataLoss)
    }

    /// This set plus `code`.
    #[must_use]
    pub const fn with(self, code: GrpcCode) -> Self {
        Self(self.0 | 1 << code as u32)
    }

    /// This set without `code`.
    #[must_use]
    pub const fn without(self, code: GrpcCode) -> Self {
        Self(self.0 & !(1 << code as u32))
    }

    /// Whether `code` is in the set.
    pub const fn contains(self, code: GrpcCode) -> bool {
        self.0 & (1 << code as u32) != 0
    }
}

impl Default for GrpcCodeSet {
    fn default() -> Self {
        Self::default_failures()
    }
}

impl FromIterator<GrpcCode> for GrpcCodeSet {
    fn from_iter<I: IntoIterator<Item = GrpcCode>>(iter: I) -> Self {
        iter.into_iter().fold(Self::empty(), Self::with)
    }
}

impl fmt::Debug for GrpcCodeSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries(
                (0..=16)
                    .filter_map(GrpcCode::from_u8)
                    .filter(|c| self.contains(*c)),
            )
            .finish()
    }
}

pub(super) fn classify_grpc(failures: GrpcCodeSet, code: GrpcCode) -> Outcome {
    if failures.contains(code) {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

pub(super) fn classify_trailers(failures: GrpcCodeSet, trailers: Option<&HeaderMap>) -> Outcome {
    match trailers.and_then(|t| t.get(GRPC_STATUS)) {
        Some(v) => classify_grpc(failures, GrpcCode::from_header_value(v)),
        None => Outcome::Failure,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::StatusSet;
    use http::StatusCode;

    #[test]
    fn default_sets() {
        let s = GrpcCodeSet::default();
        for c in (0..=16).filter_map(GrpcCode::from_u8) {
            let expected = matches!(
                c,
                GrpcCode::Unknown
                    | GrpcCode::DeadlineExceeded
                    | GrpcCode::ResourceExhausted
                    | GrpcCode::Internal
                    | GrpcCode::Unavailable
                    | GrpcCode::DataLoss
            );
            assert_eq!(s.contains(c), expected, "{c}");
        }
        let h = StatusSet::default();
        for code in 100..1000u16 {
            let st = StatusCode::from_u16(code).unwrap();
            assert_eq!(h.contains(st), (500..600).contains(&code), "{code}");
        }
    }
}
