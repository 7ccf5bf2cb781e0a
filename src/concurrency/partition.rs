//! Criticality classes and the partitioned admission rule: a guaranteed
//! share of the limit per class, borrowing of unused capacity, sheddable
//! traffic refused first.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use http::{Extensions, HeaderMap, HeaderName};

/// The traffic class of a request, for [partitioned](super#partitions)
/// admission.
///
/// Ordered from the least to the most important: `Sheddable < Default <
/// Critical`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub enum Criticality {
    /// Batch or background work: refused first under pressure.
    Sheddable = 0,
    /// Ordinary traffic.
    #[default]
    Default = 1,
    /// Interactive traffic that must get through.
    Critical = 2,
}

impl Criticality {
    /// Every class, in index order.
    pub const ALL: [Criticality; 3] = [
        Criticality::Sheddable,
        Criticality::Default,
        Criticality::Critical,
    ];

    /// The class's name as written in headers, configs and the `partition`
    /// metric label: `sheddable`, `default`, `critical`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Criticality::Sheddable => "sheddable",
            Criticality::Default => "default",
            Criticality::Critical => "critical",
        }
    }

    /// Parses a header value (exact, lowercase ASCII); anything else is
    /// `None` (treated as absent).
    pub fn from_bytes(value: &[u8]) -> Option<Self> {
        match value {
            b"sheddable" => Some(Criticality::Sheddable),
            b"default" => Some(Criticality::Default),
            b"critical" => Some(Criticality::Critical),
            _ => None,
        }
    }

    #[inline]
    pub(crate) const fn index(self) -> usize {
        self as usize
    }
}

impl fmt::Display for Criticality {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Criticality {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Self::from_bytes(s.as_bytes()).ok_or_else(|| {
            format!("`{s}` is not a criticality (use critical, default or sheddable)")
        })
    }
}

/// What a criticality classifier sees of a request: its headers and
/// extensions (where an authentication layer puts the caller's identity).
#[derive(Debug, Clone, Copy)]
#[non_exhaustive]
pub struct RequestInfo<'a> {
    /// The request headers.
    pub headers: &'a HeaderMap,
    /// The request extensions.
    pub extensions: &'a Extensions,
}

impl<'a> RequestInfo<'a> {
    /// A view of a request's headers and extensions (for
    /// [`LimitedRequest`](super::LimitedRequest) implementations).
    pub fn new(headers: &'a HeaderMap, extensions: &'a Extensions) -> Self {
        Self {
            headers,
            extensions,
        }
    }
}

type ClassifyFn = dyn Fn(&RequestInfo<'_>) -> Criticality + Send + Sync;

/// How a request's class is chosen.
#[derive(Clone)]
pub(crate) enum Classifier {
    /// Every request is `Default`.
    None,
    /// A header, capped at `max` (a client may lower its class, never raise
    /// it above `max`).
    Header { name: HeaderName, max: Criticality },
    /// A closure.
    Custom(Arc<ClassifyFn>),
}

impl Classifier {
    pub(crate) fn custom<F>(f: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> Criticality + Send + Sync + 'static,
    {
        Classifier::Custom(Arc::new(f))
    }

    /// The class of a request with these headers and extensions (a
    /// missing or malformed header is `Default`, then capped).
    #[inline]
    pub(crate) fn classify(&self, info: Option<RequestInfo<'_>>) -> Criticality {
        let Some(info) = info else {
            return Criticality::Default;
        };
        match self {
            Classifier::None => Criticality::Default,
            Classifier::Header { name, max } => crate::util::header::get(info.headers, name)
                .and_then(|v| Criticality::from_bytes(v.as_bytes()))
                .unwrap_or(Criticality::Default)
                .min(*max),
            Classifier::Custom(f) => f(&info),
        }
    }
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Classifier::None => f.write_str("None"),
            Classifier::Header { name, max } => f
                .debug_struct("Header")
                .field("name", name)
                .field("max", max)
                .finish(),
            Classifier::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// The shares and in-flight counts of the three classes.
#[derive(Debug)]
pub(crate) struct Partitions {
    /// Guaranteed share of the limit, in thousandths.
    pub(crate) shares: [u32; 3],
    pub(crate) in_flight: [AtomicUsize; 3],
    pub(crate) classifier: Classifier,
}

impl Partitions {
    pub(crate) fn new(shares: [u32; 3], classifier: Classifier) -> Self {
        Self {
            shares,
            in_flight: Default::default(),
            classifier,
        }
    }

    /// The class's guaranteed number of slots at `limit` (rounded up, as
    /// Netflix's partitioned limiter does, so a non-zero share always
    /// guarantees at least one slot).
    #[inline]
    pub(crate) fn guaranteed(&self, class: Criticality, limit: usize) -> usize {
        let share = self.shares[class.index()] as usize;
        (limit.saturating_mul(share)).div_ceil(1000)
    }

    /// Takes a slot of `class` if its guaranteed share has room; the caller
    /// then counts it in the total. Undone with [`release`](Self::release).
    #[inline]
    pub(crate) fn try_guaranteed(&self, class: Criticality, limit: usize) -> bool {
        let g = self.guaranteed(class, limit);
        if g == 0 {
            return false;
        }
        self.in_flight[class.index()]
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < g).then_some(n + 1)
            })
            .is_ok()
    }

    /// Counts a slot of `class` taken by borrowing (the total had room).
    #[inline]
    pub(crate) fn add(&self, class: Criticality) {
        self.in_flight[class.index()].fetch_add(1, Ordering::AcqRel);
    }

    #[inline]
    pub(crate) fn release(&self, class: Criticality) {
        self.in_flight[class.index()].fetch_sub(1, Ordering::AcqRel);
    }

    pub(crate) fn in_flight(&self, class: Criticality) -> usize {
        self.in_flight[class.index()].load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_values_are_exact_and_capped() {
        let c = Classifier::Header {
            name: HeaderName::from_static("x-criticality"),
            max: Criticality::Default,
        };
        let ext = Extensions::new();
        let class = |v: &str| {
            let mut h = HeaderMap::new();
            h.insert("x-criticality", v.parse().unwrap());
            c.classify(Some(RequestInfo {
                headers: &h,
                extensions: &ext,
            }))
        };
        assert_eq!(class("sheddable"), Criticality::Sheddable);
        assert_eq!(class("default"), Criticality::Default);
        // A client cannot raise itself above the cap.
        assert_eq!(class("critical"), Criticality::Default);
        // Malformed values are absent.
        assert_eq!(class("CRITICAL"), Criticality::Default);
        assert_eq!(class("shed"), Criticality::Default);
        assert_eq!(class(""), Criticality::Default);
    }

    #[test]
    fn guaranteed_share_rounds_up() {
        let p = Partitions::new([0, 300, 500], Classifier::None);
        assert_eq!(p.guaranteed(Criticality::Sheddable, 10), 0);
        assert_eq!(p.guaranteed(Criticality::Default, 10), 3);
        assert_eq!(p.guaranteed(Criticality::Critical, 1), 1);
        assert_eq!(p.guaranteed(Criticality::Critical, 7), 4);
        assert!(p.try_guaranteed(Criticality::Critical, 2));
        assert!(!p.try_guaranteed(Criticality::Critical, 2));
        p.release(Criticality::Critical);
        assert_eq!(p.in_flight(Criticality::Critical), 0);
    }
}
