//! Rounding a `Duration` up to whole units, for headers that carry whole
//! seconds (`Retry-After`, the IETF `RateLimit` fields) or milliseconds
//! (`grpc-retry-pushback-ms`): rounding down would tell a client to come
//! back before it may.

use std::time::Duration;

/// Whole seconds, rounded up (0 stays 0).
#[inline]
pub(crate) fn secs_ceil(d: Duration) -> u64 {
    d.as_secs().saturating_add(u64::from(d.subsec_nanos() > 0))
}

/// Whole milliseconds, rounded up (0 stays 0), saturating at `u64::MAX`.
#[inline]
pub(crate) fn millis_ceil(d: Duration) -> u64 {
    u64::try_from(d.as_nanos().div_ceil(1_000_000)).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rounds_up_never_down() {
        assert_eq!(secs_ceil(Duration::ZERO), 0);
        assert_eq!(secs_ceil(Duration::from_nanos(1)), 1);
        assert_eq!(secs_ceil(Duration::from_secs(2)), 2);
        assert_eq!(secs_ceil(Duration::from_millis(2001)), 3);
        assert_eq!(secs_ceil(Duration::MAX), u64::MAX);
        assert_eq!(millis_ceil(Duration::ZERO), 0);
        assert_eq!(millis_ceil(Duration::from_nanos(1)), 1);
        assert_eq!(millis_ceil(Duration::from_micros(1500)), 2);
        assert_eq!(millis_ceil(Duration::from_millis(7)), 7);
        assert_eq!(millis_ceil(Duration::MAX), u64::MAX);
    }
}
