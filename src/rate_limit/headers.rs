//! The IETF `RateLimit-Policy` and `RateLimit` fields
//! (draft-ietf-httpapi-ratelimit-headers), and the legacy `x-ratelimit-*`
//! headers.
//!
//! Both fields are structured-field lists with one item per quota, named by
//! the quota's name:
//!
//! ```text
//! RateLimit-Policy: "client-ip";q=10;w=1, "global";q=1000;w=1
//! RateLimit: "client-ip";r=0;t=1, "global";r=997;t=1
//! ```
//!
//! `q`/`w` are the quota's rate (`q` units per `w` seconds; a period that is
//! not a whole number of seconds is scaled to whole seconds, rounded down).
//! `r` is what can be taken right now (the remaining burst) and `t` the
//! draft's *effective window* in seconds, rounded up: the time within which
//! no more than `r` can be taken, i.e. until one more unit is usable after
//! taking the `r` (GCRA refills continuously, one unit every `w / q`). On a
//! refusal the quotas that refused have `t` no later than `Retry-After`, as
//! the draft asks (§6), and a client that waits `Retry-After` is admitted
//! (absent other traffic): it covers every quota and the request's cost.
//!
//! The legacy headers (`x-ratelimit-limit`, `-remaining`, `-reset`) describe
//! one quota: the one that refused, else the one with the least remaining;
//! their `reset` is the seconds until that quota is full again.

use std::fmt::Write as _;
use std::time::Duration;

use http::header::HeaderName;
use http::{HeaderMap, HeaderValue};

use super::quota::Rate;
use crate::util::digits::{self, push as push_u64};

/// `ratelimit-policy`.
pub const RATELIMIT_POLICY: HeaderName = HeaderName::from_static("ratelimit-policy");
/// `ratelimit`.
pub const RATELIMIT: HeaderName = HeaderName::from_static("ratelimit");
/// `x-ratelimit-limit`.
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
/// `x-ratelimit-remaining`.
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
/// `x-ratelimit-reset`.
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// `(q, w)` of a rate: `q` units per `w` whole seconds.
pub(crate) fn policy_qw(rate: Rate) -> (u64, u64) {
    let per = rate.per();
    let w = per.as_secs() + u64::from(per.subsec_nanos() > 0);
    let q = (u128::from(rate.count()) * u128::from(w) * 1_000_000_000) / per.as_nanos().max(1);
    (u64::try_from(q).unwrap_or(u64::MAX), w.max(1))
}

/// Whole seconds, rounded up (0 stays 0).
pub(crate) use crate::util::round::secs_ceil as ceil_secs;

/// One quota's live state, for the `RateLimit` field.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Item {
    pub(crate) quota: usize,
    pub(crate) remaining: u32,
    /// `t`: the effective window.
    pub(crate) window: Duration,
    /// `x-ratelimit-reset`: until the quota is full again.
    pub(crate) full: Duration,
}

/// The pre-rendered parts of a layer's headers.
#[derive(Debug)]
pub(crate) struct HeaderTemplate {
    policy: HeaderValue,
    /// `"name";r=` per quota.
    prefixes: Box<[String]>,
    limits: Box<[u64]>,
    legacy: bool,
}

/// The headers of one answer.
#[derive(Debug)]
pub(crate) struct Rendered {
    policy: HeaderValue,
    ratelimit: Option<HeaderValue>,
    legacy: Option<[HeaderValue; 3]>,
}

impl HeaderTemplate {
    pub(crate) fn new(quotas: &[(String, Rate)], legacy: bool) -> Self {
        let mut policy = String::new();
        let mut prefixes = Vec::with_capacity(quotas.len());
        let mut limits = Vec::with_capacity(quotas.len());
        for (i, (name, rate)) in quotas.iter().enumerate() {
            let (q, w) = policy_qw(*rate);
            if i > 0 {
                policy.push_str(", ");
            }
            let _ = write!(policy, "\"{name}\";q={q};w={w}");
            prefixes.push(format!("\"{name}\";r="));
            limits.push(q);
        }
        Self {
            // Names are validated printable ASCII.
            policy: HeaderValue::try_from(policy).unwrap_or(HeaderValue::from_static("")),
            prefixes: prefixes.into(),
            limits: limits.into(),
            legacy,
        }
    }

    /// `RateLimit-Policy`.
    #[cfg(test)]
    pub(crate) fn policy(&self) -> &HeaderValue {
        &self.policy
    }

    /// Renders the answer's headers. `focus` is the quota the legacy headers
    /// describe (the refusing one), else the one with the least remaining.
    pub(crate) fn render(&self, items: &[Item], focus: Option<usize>) -> Rendered {
        // Bytes, not a `String`: the header value validates them anyway.
        // Exactly as many as it takes: a full buffer becomes the header
        // value's bytes as it is (`Bytes` needs a shared handle, one more
        // allocation, for a buffer with room left).
        let len: usize = items
            .iter()
            .map(|item| {
                self.prefixes[item.quota].len()
                    + digits::count(u64::from(item.remaining))
                    + b";t=".len()
                    + digits::count(ceil_secs(item.window))
            })
            .sum::<usize>()
            + b", ".len() * items.len().saturating_sub(1);
        let mut out = Vec::with_capacity(len);
        for (n, item) in items.iter().enumerate() {
            if n > 0 {
                out.extend_from_slice(b", ");
            }
            out.extend_from_slice(self.prefixes[item.quota].as_bytes());
            push_u64(&mut out, u64::from(item.remaining));
            out.extend_from_slice(b";t=");
            push_u64(&mut out, ceil_secs(item.window));
        }
        let legacy = if self.legacy {
            let focus = focus
                .and_then(|q| items.iter().find(|i| i.quota == q))
                .or_else(|| items.iter().min_by_key(|i| i.remaining));
            focus.map(|i| {
                [
                    digits::header_value(self.limits[i.quota]),
                    digits::header_value(u64::from(i.remaining)),
                    digits::header_value(ceil_secs(i.full)),
                ]
            })
        } else {
            None
        };
        Rendered {
            policy: self.policy.clone(),
            ratelimit: if items.is_empty() {
                None
            } else {
                HeaderValue::try_from(out).ok()
            },
            legacy,
        }
    }
}

impl Rendered {
    /// Writes the headers into `headers`.
    pub(crate) fn apply(self, headers: &mut HeaderMap) {
        headers.insert(RATELIMIT_POLICY, self.policy);
        if let Some(v) = self.ratelimit {
            headers.insert(RATELIMIT, v);
        }
        if let Some([limit, remaining, reset]) = self.legacy {
            headers.insert(X_RATELIMIT_LIMIT, limit);
            headers.insert(X_RATELIMIT_REMAINING, remaining);
            headers.insert(X_RATELIMIT_RESET, reset);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_mapping() {
        assert_eq!(policy_qw(Rate::per_second(100)), (100, 1));
        assert_eq!(policy_qw(Rate::per_hour(1000)), (1000, 3600));
        assert_eq!(policy_qw(Rate::new(5, Duration::from_millis(250))), (20, 1));
        assert_eq!(policy_qw(Rate::new(3, Duration::from_millis(1500))), (4, 2));
        assert_eq!(ceil_secs(Duration::ZERO), 0);
        assert_eq!(ceil_secs(Duration::from_millis(1001)), 2);
        for n in [0, 7, 10, 1234, u64::MAX] {
            let mut s = Vec::new();
            push_u64(&mut s, n);
            assert_eq!(s, n.to_string().as_bytes());
        }
    }

    #[test]
    fn renders() {
        let t = HeaderTemplate::new(
            &[
                ("per-ip".into(), Rate::per_second(10)),
                ("global".into(), Rate::per_minute(600)),
            ],
            true,
        );
        assert_eq!(t.policy(), "\"per-ip\";q=10;w=1, \"global\";q=600;w=60");
        let r = t.render(
            &[
                Item {
                    quota: 0,
                    remaining: 0,
                    window: Duration::from_millis(1500),
                    full: Duration::from_millis(2500),
                },
                Item {
                    quota: 1,
                    remaining: 7,
                    window: Duration::from_millis(10),
                    full: Duration::from_millis(30),
                },
            ],
            Some(0),
        );
        let mut h = HeaderMap::new();
        r.apply(&mut h);
        assert_eq!(h["ratelimit"], "\"per-ip\";r=0;t=2, \"global\";r=7;t=1");
        assert_eq!(h["x-ratelimit-limit"], "10");
        assert_eq!(h["x-ratelimit-remaining"], "0");
        assert_eq!(h["x-ratelimit-reset"], "3");
    }
}
