//! The HTTP rule: a set of failing (or ignored) statuses.

use std::fmt;

use http::StatusCode;

/// A set of HTTP status codes (100 to 999), stored as a bit set.
///
/// ```
/// use http::StatusCode;
/// use tower_rampart::classify::StatusSet;
///
/// let set = StatusSet::server_errors().without(StatusCode::NOT_IMPLEMENTED).with(StatusCode::TOO_MANY_REQUESTS);
/// assert!(set.contains(StatusCode::BAD_GATEWAY));
/// assert!(set.contains(StatusCode::TOO_MANY_REQUESTS));
/// assert!(!set.contains(StatusCode::NOT_IMPLEMENTED));
/// ```
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct StatusSet([u64; 15]);

impl StatusSet {
    /// No statuses.
    pub const fn empty() -> Self {
        Self([0; 15])
    }

    /// Every status from 500 to 599 (the default failure set).
    pub const fn server_errors() -> Self {
        let mut set = Self::empty();
        let mut code = 500;
        while code < 600 {
            set = set.with_u16(code);
            code += 1;
        }
        set
    }

    const fn with_u16(mut self, code: u16) -> Self {
        let i = (code - 100) as usize;
        self.0[i / 64] |= 1 << (i % 64);
        self
    }

    /// This set plus `status`.
    #[must_use]
    pub const fn with(self, status: StatusCode) -> Self {
        self.with_u16(status.as_u16())
    }

    /// This set without `status`.
    #[must_use]
    pub const fn without(mut self, status: StatusCode) -> Self {
        let i = (status.as_u16() - 100) as usize;
        self.0[i / 64] &= !(1 << (i % 64));
        self
    }

    /// Whether `status` is in the set.
    #[inline]
    pub const fn contains(&self, status: StatusCode) -> bool {
        let i = (status.as_u16() - 100) as usize;
        self.0[i / 64] & (1 << (i % 64)) != 0
    }
}

impl Default for StatusSet {
    fn default() -> Self {
        Self::server_errors()
    }
}

impl FromIterator<StatusCode> for StatusSet {
    fn from_iter<I: IntoIterator<Item = StatusCode>>(iter: I) -> Self {
        iter.into_iter().fold(Self::empty(), Self::with)
    }
}

impl fmt::Debug for StatusSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set()
            .entries((100u16..1000).filter(|c| {
                let i = (c - 100) as usize;
                self.0[i / 64] & (1 << (i % 64)) != 0
            }))
            .finish()
    }
}
