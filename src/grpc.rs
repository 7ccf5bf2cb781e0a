//! The gRPC vocabulary every layer shares: status codes, how a gRPC
//! request is recognised, the `grpc-message` encoding and the
//! `grpc-timeout` header.
//!
//! A leaf module: it depends on `http` and the crate-private `util` leaf
//! (digit parsing) only, never on another module of this crate, so the refusal answers ([`rejection`](crate::rejection)),
//! the classifiers ([`classify`](crate::classify)) and the deadline
//! ([`timeout`](crate::timeout)) all read it without reading each other.
//! The items are also re-exported at their former paths
//! (`classify::GrpcCode`, `classify::is_grpc`, `timeout::GRPC_TIMEOUT`,
//! `timeout::parse_grpc_timeout`, `timeout::format_grpc_timeout`).
//!
//! ```
//! use std::time::Duration;
//! use http::HeaderMap;
//! use tower_rampart::grpc::{self, GrpcCode};
//!
//! let mut headers = HeaderMap::new();
//! headers.insert("content-type", "application/grpc+proto".parse().unwrap());
//! assert!(grpc::is_grpc(&headers));
//! assert_eq!(GrpcCode::Unavailable.to_header_value(), "14");
//! assert_eq!(grpc::parse_grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
//! assert_eq!(grpc::encode_grpc_message("50% off"), "50%25 off");
//! ```

use std::fmt::{self, Write as _};
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, header};

/// The gRPC status header (or trailer) name, `grpc-status`.
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");

/// The gRPC status message header (or trailer) name, `grpc-message`.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// The gRPC timeout header name, `grpc-timeout`.
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");

/// The largest value a `grpc-timeout` may carry: 8 ASCII digits.
const GRPC_TIMEOUT_MAX_VALUE: u64 = 99_999_999;

/// A gRPC status code, as carried in the `grpc-status` header or trailer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
#[allow(missing_docs)] // the names are the gRPC specification's
pub enum GrpcCode {
    Ok = 0,
    Cancelled = 1,
    Unknown = 2,
    InvalidArgument = 3,
    DeadlineExceeded = 4,
    NotFound = 5,
    AlreadyExists = 6,
    PermissionDenied = 7,
    ResourceExhausted = 8,
    FailedPrecondition = 9,
    Aborted = 10,
    OutOfRange = 11,
    Unimplemented = 12,
    Internal = 13,
    Unavailable = 14,
    DataLoss = 15,
    Unauthenticated = 16,
}

impl GrpcCode {
    const ALL: [GrpcCode; 17] = [
        GrpcCode::Ok,
        GrpcCode::Cancelled,
        GrpcCode::Unknown,
        GrpcCode::InvalidArgument,
        GrpcCode::DeadlineExceeded,
        GrpcCode::NotFound,
        GrpcCode::AlreadyExists,
        GrpcCode::PermissionDenied,
        GrpcCode::ResourceExhausted,
        GrpcCode::FailedPrecondition,
        GrpcCode::Aborted,
        GrpcCode::OutOfRange,
        GrpcCode::Unimplemented,
        GrpcCode::Internal,
        GrpcCode::Unavailable,
        GrpcCode::DataLoss,
        GrpcCode::Unauthenticated,
    ];

    /// The code with this number, if there is one.
    pub const fn from_u8(n: u8) -> Option<Self> {
        if (n as usize) < Self::ALL.len() {
            Some(Self::ALL[n as usize])
        } else {
            None
        }
    }

    /// Reads a `grpc-status` value. Anything that is not a known code
    /// (including garbage from a misbehaving peer) reads as `Unknown`, as
    /// gRPC clients do.
    pub fn from_header_value(value: &HeaderValue) -> Self {
        match value.as_bytes() {
            [d @ b'0'..=b'9'] => Self::from_u8(d - b'0').unwrap_or(Self::Unknown),
            [b'1', d @ b'0'..=b'6'] => Self::from_u8(10 + d - b'0').unwrap_or(Self::Unknown),
            _ => Self::Unknown,
        }
    }

    /// The value to put in a `grpc-status` header.
    pub fn to_header_value(self) -> HeaderValue {
        const VALUES: [&str; 17] = [
            "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15",
            "16",
        ];
        HeaderValue::from_static(VALUES[self as usize])
    }

    /// The specification's name, e.g. `UNAVAILABLE`.
    pub const fn name(self) -> &'static str {
        match self {
            GrpcCode::Ok => "OK",
            GrpcCode::Cancelled => "CANCELLED",
            GrpcCode::Unknown => "UNKNOWN",
            GrpcCode::InvalidArgument => "INVALID_ARGUMENT",
            GrpcCode::DeadlineExceeded => "DEADLINE_EXCEEDED",
            GrpcCode::NotFound => "NOT_FOUND",
            GrpcCode::AlreadyExists => "ALREADY_EXISTS",
            GrpcCode::PermissionDenied => "PERMISSION_DENIED",
            GrpcCode::ResourceExhausted => "RESOURCE_EXHAUSTED",
            GrpcCode::FailedPrecondition => "FAILED_PRECONDITION",
            GrpcCode::Aborted => "ABORTED",
            GrpcCode::OutOfRange => "OUT_OF_RANGE",
            GrpcCode::Unimplemented => "UNIMPLEMENTED",
            GrpcCode::Internal => "INTERNAL",
            GrpcCode::Unavailable => "UNAVAILABLE",
            GrpcCode::DataLoss => "DATA_LOSS",
            GrpcCode::Unauthenticated => "UNAUTHENTICATED",
        }
    }

    /// Parses a specification name (`"UNAVAILABLE"`, case-insensitive) or a
    /// number (`"14"`).
    pub fn parse(s: &str) -> Option<Self> {
        if let Ok(n) = s.parse::<u8>() {
            return Self::from_u8(n);
        }
        Self::ALL
            .into_iter()
            .find(|c| c.name().eq_ignore_ascii_case(s))
    }
}

impl fmt::Display for GrpcCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Whether these headers carry a gRPC `content-type` (`application/grpc`,
/// `application/grpc+proto`, `application/grpc-web`, ...).
#[inline]
pub fn is_grpc(headers: &HeaderMap) -> bool {
    crate::util::header::get(headers, &header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

/// Percent-encodes a `grpc-message` as the gRPC specification asks: bytes
/// outside printable ASCII, and `%` itself, become `%XX`.
///
/// ```
/// use tower_rampart::grpc::encode_grpc_message;
///
/// assert_eq!(encode_grpc_message("100% busy ☃"), "100%25 busy %E2%98%83");
/// ```
pub fn encode_grpc_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    for b in message.bytes() {
        if (0x20..=0x7e).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// Parses a `grpc-timeout` value: at most 8 ASCII digits followed by one
/// unit, `H` (hours), `M` (minutes), `S` (seconds), `m` (milliseconds), `u`
/// (microseconds) or `n` (nanoseconds). Anything else is `None`.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::grpc::parse_grpc_timeout;
///
/// assert_eq!(parse_grpc_timeout(b"250m"), Some(Duration::from_millis(250)));
/// assert_eq!(parse_grpc_timeout(b"3S"), Some(Duration::from_secs(3)));
/// assert_eq!(parse_grpc_timeout(b"123456789S"), None); // 9 digits
/// assert_eq!(parse_grpc_timeout(b"5s"), None); // unknown unit
/// ```
pub fn parse_grpc_timeout(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    // At most 8 digits (the gRPC spec's TimeoutValue).
    let n = crate::util::digits::parse_u64(digits, 8)?;
    Some(match unit {
        b'H' => Duration::from_secs(n * 3600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// Formats `budget` as a `grpc-timeout` value: the finest unit whose value
/// fits in 8 digits, rounded up (as grpc-go does), so `1s` is `1000000u` and
/// a week is `604800S`.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::grpc::format_grpc_timeout;
///
/// assert_eq!(format_grpc_timeout(Duration::from_millis(250)), "250000u");
/// assert_eq!(format_grpc_timeout(Duration::from_secs(3600 * 24 * 7)), "604800S");
/// ```
pub fn format_grpc_timeout(budget: Duration) -> HeaderValue {
    const UNITS: [(u128, u8); 6] = [
        (1, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ];
    let nanos = budget.as_nanos();
    let mut out = (GRPC_TIMEOUT_MAX_VALUE, b'H');
    for (per, unit) in UNITS {
        let value = nanos.div_ceil(per);
        if value <= u128::from(GRPC_TIMEOUT_MAX_VALUE) {
            out = (value as u64, unit);
            break;
        }
    }
    HeaderValue::try_from(format!("{}{}", out.0, out.1 as char))
        .expect("digits and a unit letter are a valid header value")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_status_values() {
        for n in 0..=16u8 {
            let code = GrpcCode::from_u8(n).unwrap();
            assert_eq!(GrpcCode::from_header_value(&code.to_header_value()), code);
            assert_eq!(GrpcCode::parse(code.name()), Some(code));
            assert_eq!(GrpcCode::parse(&n.to_string()), Some(code));
        }
        for junk in ["", "17", "-1", "0x1", "abc", "014", "1 "] {
            assert_eq!(
                GrpcCode::from_header_value(&HeaderValue::from_str(junk).unwrap()),
                GrpcCode::Unknown,
                "{junk:?}"
            );
        }
        assert_eq!(GrpcCode::parse("unavailable"), Some(GrpcCode::Unavailable));
        assert_eq!(GrpcCode::parse("17"), None);
    }

    #[test]
    fn grpc_content_types() {
        let with = |ct: &'static str| {
            let mut h = HeaderMap::new();
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            is_grpc(&h)
        };
        assert!(with("application/grpc"));
        assert!(with("application/grpc+proto"));
        assert!(with("application/grpc-web"));
        assert!(!with("application/json"));
        assert!(!with("text/application/grpc"));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn message_encoding() {
        assert_eq!(encode_grpc_message("plain text"), "plain text");
        assert_eq!(encode_grpc_message("100% busy ☃"), "100%25 busy %E2%98%83");
        assert_eq!(encode_grpc_message("a\nb\u{7f}"), "a%0Ab%7F");
        // Always a valid header value, whatever the input.
        for s in ["\u{0}\u{1f}", "ünï", "%%", "\r\n"] {
            assert!(
                HeaderValue::try_from(encode_grpc_message(s)).is_ok(),
                "{s:?}"
            );
        }
    }

    #[test]
    fn timeout_format_round_trips() {
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_nanos(99_999_999),
            Duration::from_nanos(100_000_000),
            Duration::from_millis(1500),
            Duration::from_secs(99_999_999),
            Duration::from_secs(100_000_000),
            Duration::from_secs(u64::MAX),
        ] {
            let v = format_grpc_timeout(d);
            let back = parse_grpc_timeout(v.as_bytes()).unwrap();
            assert!(v.len() <= 9, "{v:?}");
            // Never less than asked (rounded up), except when capped.
            assert!(back >= d || back == Duration::from_secs(99_999_999 * 3600));
        }
        assert_eq!(format_grpc_timeout(Duration::ZERO), "0n");
        assert_eq!(
            format_grpc_timeout(Duration::from_nanos(100_000_001)),
            "100001u"
        );
        assert_eq!(
            format_grpc_timeout(Duration::from_secs(u64::MAX)),
            "99999999H"
        );
    }
}
