// Past ~500 lines: about 730 lines of code and docs (the kinds table, both
// answer formats, the sealed `Mode`, the response body), the rest tests.
//! What a layer refused, and how the refusal is answered.
//!
//! Every layer in this crate refuses work the same way: it builds a
//! [`Rejection`] (what kind, which layer, an optional retry-after, a short
//! detail) and answers it in the caller's protocol:
//!
//! | kind | HTTP | gRPC (trailers-only, HTTP 200) |
//! |---|---|---|
//! | [`CircuitOpen`](RejectionKind::CircuitOpen) | 503 | 14 `UNAVAILABLE` |
//! | [`Draining`](RejectionKind::Draining) | 503 | 14 `UNAVAILABLE` |
//! | [`RateLimited`](RejectionKind::RateLimited) | 429 | 8 `RESOURCE_EXHAUSTED` |
//! | [`TimedOut`](RejectionKind::TimedOut) | 504 | 4 `DEADLINE_EXCEEDED` |
//! | [`InvalidRequest`](RejectionKind::InvalidRequest) | 400 | 3 `INVALID_ARGUMENT` |
//! | [`Overloaded`](RejectionKind::Overloaded) | 503 | 14 `UNAVAILABLE` |
//!
//! Every answer also carries a [`Refused`] marker in its response
//! *extensions* (never on the wire, so a client cannot forge it): which kind
//! of refusal it is and whether the service itself was at fault. An outer
//! circuit breaker reads it and leaves refusals that are not the service's
//! fault out of its statistics (see [`Rejection::is_service_fault`]).
//!
//! HTTP answers carry `Retry-After` (whole seconds, rounded up, never 0) when
//! the layer knows when to come back, and a small RFC 9457
//! `application/problem+json` body. gRPC answers carry `grpc-status`,
//! `grpc-message` and, when known, `grpc-retry-pushback-ms`. A request is
//! gRPC when its `content-type` starts with `application/grpc`.
//!
//! Which of the two a layer produces is its [`Mode`]: [`HttpMode`] (the
//! default) answers with a response, so an axum `Router` stays `Infallible`
//! and needs no `HandleErrorLayer`; [`ErrorMode`] returns the `Rejection`
//! inside a `BoxError` for services that do not speak HTTP:
//!
//! ```
//! use std::time::Duration;
//! use tower::BoxError;
//! use tower_rampart::{Rejection, RejectionKind};
//!
//! let err: BoxError = Rejection::new(RejectionKind::CircuitOpen, "payments")
//!     .with_retry_after(Duration::from_millis(1500))
//!     .into();
//! let rejection = err.downcast_ref::<Rejection>().expect("refused by a rampart layer");
//! assert_eq!(rejection.kind(), RejectionKind::CircuitOpen);
//! assert_eq!(rejection.retry_after_secs(), Some(2));
//! ```

use std::borrow::Cow;
use std::cell::Cell;
use std::fmt::{self, Write as _};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, Entry, HeaderName};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tower::BoxError;

use crate::grpc::{GRPC_MESSAGE, GRPC_STATUS, GrpcCode, encode_grpc_message, is_grpc};

/// The reason a layer refused a request.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectionKind {
    /// A circuit breaker is open (or half-open with no trial permit left).
    CircuitOpen,
    /// A rate limit refused the request.
    RateLimited,
    /// The request ran out of time.
    TimedOut,
    /// The server is shutting down and takes no new work.
    Draining,
    /// The request cannot be processed as sent (for example a rate limit
    /// that requires a key the request does not carry).
    InvalidRequest,
    /// A concurrency limit is reached: the service has as many requests in
    /// flight as it can absorb (and its queue, if any, is full or the wait
    /// ran out).
    Overloaded,
}

impl RejectionKind {
    /// The HTTP status a refusal of this kind gets by default.
    pub const fn status(self) -> StatusCode {
        match self {
            RejectionKind::CircuitOpen | RejectionKind::Draining | RejectionKind::Overloaded => {
                StatusCode::SERVICE_UNAVAILABLE
            }
            RejectionKind::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            RejectionKind::TimedOut => StatusCode::GATEWAY_TIMEOUT,
            RejectionKind::InvalidRequest => StatusCode::BAD_REQUEST,
        }
    }

    /// The gRPC status a refusal of this kind gets.
    pub const fn grpc_code(self) -> GrpcCode {
        match self {
            RejectionKind::CircuitOpen | RejectionKind::Draining | RejectionKind::Overloaded => {
                GrpcCode::Unavailable
            }
            RejectionKind::RateLimited => GrpcCode::ResourceExhausted,
            RejectionKind::TimedOut => GrpcCode::DeadlineExceeded,
            RejectionKind::InvalidRequest => GrpcCode::InvalidArgument,
        }
    }

    /// A short human title, used as the problem `title`.
    pub const fn title(self) -> &'static str {
        match self {
            RejectionKind::CircuitOpen => "Circuit open",
            RejectionKind::RateLimited => "Rate limited",
            RejectionKind::TimedOut => "Timed out",
            RejectionKind::Draining => "Shutting down",
            RejectionKind::InvalidRequest => "Invalid request",
            RejectionKind::Overloaded => "Overloaded",
        }
    }

    /// A stable kebab-case name (`circuit-open`, ...), used in the problem
    /// `type` URI and as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            RejectionKind::CircuitOpen => "circuit-open",
            RejectionKind::RateLimited => "rate-limited",
            RejectionKind::TimedOut => "timed-out",
            RejectionKind::Draining => "draining",
            RejectionKind::InvalidRequest => "invalid-request",
            RejectionKind::Overloaded => "overloaded",
        }
    }

    /// The RFC 9457 problem `type` URI for this kind.
    pub const fn problem_type(self) -> &'static str {
        match self {
            RejectionKind::CircuitOpen => "urn:tower-rampart:problem:circuit-open",
            RejectionKind::RateLimited => "urn:tower-rampart:problem:rate-limited",
            RejectionKind::TimedOut => "urn:tower-rampart:problem:timed-out",
            RejectionKind::Draining => "urn:tower-rampart:problem:draining",
            RejectionKind::InvalidRequest => "urn:tower-rampart:problem:invalid-request",
            RejectionKind::Overloaded => "urn:tower-rampart:problem:overloaded",
        }
    }
}

impl fmt::Display for RejectionKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a layer refused and why.
///
/// Built by the layers on their refusal path (never on the happy path), and
/// turned into an HTTP or gRPC response with [`Rejection::into_response`], or
/// returned as an error in [`ErrorMode`]. It implements
/// [`std::error::Error`], so it can be found with `downcast_ref` in a
/// `BoxError`.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::rejection::{Protocol, Rejection, RejectionKind};
///
/// let res = Rejection::new(RejectionKind::RateLimited, "api")
///     .with_retry_after(Duration::from_millis(200))
///     .with_detail("quota `per-ip` exhausted")
///     .into_response::<http_body_util::Empty<bytes::Bytes>>(Protocol::Http);
/// assert_eq!(res.status(), 429);
/// assert_eq!(res.headers()["retry-after"], "1");
/// assert_eq!(res.headers()["content-type"], "application/problem+json");
/// ```
#[derive(Clone)]
pub struct Rejection {
    // Small on purpose (72 bytes on 64-bit targets): a refusal in
    // `ErrorMode` boxes it, and every layer moves it on its refusal path.
    // The extra headers, rare, live behind their own box.
    kind: RejectionKind,
    service_fault: bool,
    status: Option<StatusCode>,
    layer: Arc<str>,
    retry_after: Option<Duration>,
    detail: Detail,
    headers: Option<Box<HeaderMap>>,
}

/// The explanation of a [`Rejection`]: a static string, an owned one, or one
/// shared with the layer that refuses (no copy per refusal).
#[derive(Clone)]
enum Detail {
    Static(&'static str),
    Owned(String),
    Shared(Arc<str>),
}

impl Detail {
    #[inline]
    fn as_str(&self) -> &str {
        match self {
            Detail::Static(s) => s,
            Detail::Owned(s) => s,
            Detail::Shared(s) => s,
        }
    }
}

/// No extra headers (what [`Rejection::headers`] lends when none were
/// added).
fn empty_headers() -> &'static HeaderMap {
    static EMPTY: std::sync::OnceLock<HeaderMap> = std::sync::OnceLock::new();
    EMPTY.get_or_init(HeaderMap::new)
}

impl Rejection {
    /// A refusal of `kind` by the layer named `layer` (the name that labels
    /// its metrics).
    pub fn new(kind: RejectionKind, layer: impl Into<Arc<str>>) -> Self {
        Self {
            kind,
            service_fault: false,
            status: None,
            layer: layer.into(),
            retry_after: None,
            detail: Detail::Static(""),
            headers: None,
        }
    }

    /// Marks the refusal as the protected service's own fault (default: not
    /// its fault).
    ///
    /// Only the timeout layer sets it, when the server's own configured
    /// budget ran out. A circuit breaker outside the refusing layer counts
    /// such a refusal as a failure; every other refusal (a rate limit, a
    /// drain, an open breaker, a deadline the caller chose) is recorded as
    /// *ignored*, so that no client can trip a breaker for everyone.
    #[must_use]
    pub fn with_service_fault(mut self, service_fault: bool) -> Self {
        self.service_fault = service_fault;
        self
    }

    /// Whether the protected service itself caused the refusal (see
    /// [`with_service_fault`](Self::with_service_fault)).
    ///
    /// ```
    /// use tower_rampart::{Rejection, RejectionKind};
    ///
    /// assert!(!Rejection::new(RejectionKind::RateLimited, "api").is_service_fault());
    /// let own_timeout = Rejection::new(RejectionKind::TimedOut, "api").with_service_fault(true);
    /// assert!(own_timeout.is_service_fault());
    /// ```
    pub fn is_service_fault(&self) -> bool {
        self.service_fault
    }

    /// The marker the answer carries in its response extensions.
    pub fn marker(&self) -> Refused {
        Refused {
            kind: self.kind,
            service_fault: self.service_fault,
        }
    }

    /// When the caller may try again. Sent as `Retry-After` (rounded up to
    /// whole seconds, at least 1) and `grpc-retry-pushback-ms`.
    #[must_use]
    pub fn with_retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = Some(retry_after);
        self
    }

    /// Like [`with_retry_after`](Self::with_retry_after), from an `Option`.
    #[must_use]
    pub fn with_retry_after_opt(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// A short explanation for the caller (the problem `detail` and the
    /// `grpc-message`). Keep secrets out of it: it goes on the wire.
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = match detail.into() {
            Cow::Borrowed(s) => Detail::Static(s),
            Cow::Owned(s) => Detail::Owned(s),
        };
        self
    }

    /// Like [`with_detail`](Self::with_detail), sharing a layer's own text
    /// (no copy per refusal).
    #[must_use]
    pub(crate) fn with_shared_detail(mut self, detail: Arc<str>) -> Self {
        self.detail = Detail::Shared(detail);
        self
    }

    /// Answers HTTP callers with `status` instead of the kind's default (a
    /// timeout layer configured to answer 503 or 408, for example). gRPC
    /// answers are unaffected.
    #[must_use]
    pub fn with_status(mut self, status: StatusCode) -> Self {
        self.status = Some(status);
        self
    }

    /// Adds a header to the answer, in either protocol (`RateLimit` fields,
    /// `Connection: close`, ...).
    #[must_use]
    pub fn with_header(mut self, name: HeaderName, value: HeaderValue) -> Self {
        self.headers_mut().append(name, value);
        self
    }

    /// The extra headers the answer will carry.
    pub fn headers_mut(&mut self) -> &mut HeaderMap {
        self.headers.get_or_insert_with(Box::default)
    }

    /// The extra headers the answer will carry.
    pub fn headers(&self) -> &HeaderMap {
        self.headers.as_deref().unwrap_or_else(|| empty_headers())
    }

    /// Why the request was refused.
    pub fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// The name of the layer that refused it.
    pub fn layer(&self) -> &str {
        &self.layer
    }

    /// When the caller may try again, if the layer knows.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// [`retry_after`](Self::retry_after) as the `Retry-After` header counts
    /// it: whole seconds, rounded up, never 0.
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.retry_after.map(retry_after_secs)
    }

    /// The explanation for the caller.
    pub fn detail(&self) -> &str {
        self.detail.as_str()
    }

    /// The HTTP status of the answer.
    pub fn status(&self) -> StatusCode {
        self.status.unwrap_or(self.kind.status())
    }

    /// The gRPC status of the answer.
    pub fn grpc_code(&self) -> GrpcCode {
        self.kind.grpc_code()
    }

    /// The answer, as a response in `protocol`, with the [`Refused`]
    /// marker in its extensions.
    pub fn into_response<B>(self, protocol: Protocol) -> Response<ResponseBody<B>> {
        let marker = self.marker();
        let mut res = match protocol {
            Protocol::Http => self.into_http_response(),
            Protocol::Grpc => self.into_grpc_response(),
        };
        res.extensions_mut().insert(marker);
        res
    }

    /// The first `Rejection` in `err` or in its chain of
    /// [`source`](std::error::Error::source)s.
    ///
    /// ```
    /// use tower::BoxError;
    /// use tower_rampart::{Rejection, RejectionKind};
    ///
    /// let err: BoxError = Rejection::new(RejectionKind::Draining, "drain").into();
    /// assert_eq!(Rejection::find(err.as_ref()).unwrap().kind(), RejectionKind::Draining);
    /// ```
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a Rejection> {
        let mut next = Some(err);
        while let Some(e) = next {
            if let Some(r) = e.downcast_ref::<Rejection>() {
                return Some(r);
            }
            next = e.source();
        }
        None
    }

    /// The `application/problem+json` text of the HTTP answer.
    pub fn problem_json(&self) -> String {
        let detail = self.detail.as_str();
        let head = problem_head(self.kind);
        // Exactly the text's length when the detail needs no escaping (the
        // usual case: a quote in a quota's name, say, grows the buffer):
        // the answer's body then takes this buffer as it is, without
        // shrinking it.
        let detail_len = if detail.is_empty() {
            0
        } else {
            ",\"detail\":\"".len() + detail.len() + 1
        };
        let mut out = String::with_capacity(head.len() + 3 + detail_len + 1);
        out.push_str(head);
        out.push_str(self.status().as_str());
        if !detail.is_empty() {
            out.push_str(",\"detail\":\"");
            push_json_escaped(&mut out, detail);
            out.push('"');
        }
        out.push('}');
        out
    }

    // The refusal path: kept out of the response futures' `poll`.
    #[cold]
    #[inline(never)]
    fn into_http_response<B>(self) -> Response<ResponseBody<B>> {
        let status = self.status();
        // A boxed slice (the buffer shrunk to its text, in place) becomes
        // `Bytes` as it is; a `String` with room left would take a shared
        // handle, one more allocation.
        let body = Bytes::from(self.problem_json().into_bytes().into_boxed_slice());
        let retry_after = self.retry_after_secs();
        // The extra headers become the answer's map (no second map, no
        // merge); the defaults fill in what they do not set.
        let mut headers = self.headers.map_or_else(HeaderMap::new, |h| *h);
        if let Entry::Vacant(e) = headers.entry(header::CONTENT_TYPE) {
            e.insert(HeaderValue::from_static("application/problem+json"));
        }
        if let Some(secs) = retry_after {
            if let Entry::Vacant(e) = headers.entry(header::RETRY_AFTER) {
                e.insert(secs_header_value(secs));
            }
        }
        let mut res = Response::new(ResponseBody::full(body));
        *res.status_mut() = status;
        *res.headers_mut() = headers;
        res
    }

    // The refusal path: kept out of the response futures' `poll`.
    #[cold]
    #[inline(never)]
    fn into_grpc_response<B>(self) -> Response<ResponseBody<B>> {
        let code = self.grpc_code();
        let message = match self.detail.as_str() {
            "" => self.kind.title(),
            detail => detail,
        };
        let message = HeaderValue::try_from(encode_grpc_message(message)).ok();
        let mut headers = self.headers.map_or_else(HeaderMap::new, |h| *h);
        if let Entry::Vacant(e) = headers.entry(header::CONTENT_TYPE) {
            e.insert(HeaderValue::from_static("application/grpc"));
        }
        if let Entry::Vacant(e) = headers.entry(GRPC_STATUS) {
            e.insert(code.to_header_value());
        }
        if let Some(v) = message {
            if let Entry::Vacant(e) = headers.entry(GRPC_MESSAGE) {
                e.insert(v);
            }
        }
        if let Some(after) = self.retry_after {
            let ms = u64::try_from(after.as_millis()).unwrap_or(u64::MAX).max(1);
            if let Entry::Vacant(e) = headers.entry("grpc-retry-pushback-ms") {
                e.insert(crate::util::digits::header_value(ms));
            }
        }
        let mut res = Response::new(ResponseBody::full(Bytes::new()));
        *res.headers_mut() = headers;
        res
    }
}

/// The start of a problem+json body of `kind`, up to the status number.
const fn problem_head(kind: RejectionKind) -> &'static str {
    macro_rules! head {
        ($name:literal, $title:literal) => {
            concat!(
                "{\"type\":\"urn:tower-rampart:problem:",
                $name,
                "\",\"title\":\"",
                $title,
                "\",\"status\":"
            )
        };
    }
    match kind {
        RejectionKind::CircuitOpen => head!("circuit-open", "Circuit open"),
        RejectionKind::RateLimited => head!("rate-limited", "Rate limited"),
        RejectionKind::TimedOut => head!("timed-out", "Timed out"),
        RejectionKind::Draining => head!("draining", "Shutting down"),
        RejectionKind::InvalidRequest => head!("invalid-request", "Invalid request"),
        RejectionKind::Overloaded => head!("overloaded", "Overloaded"),
    }
}

/// A whole number of seconds as a header value; the common small ones
/// without building a string.
fn secs_header_value(secs: u64) -> HeaderValue {
    const SMALL: [&str; 61] = [
        "0", "1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12", "13", "14", "15", "16",
        "17", "18", "19", "20", "21", "22", "23", "24", "25", "26", "27", "28", "29", "30", "31",
        "32", "33", "34", "35", "36", "37", "38", "39", "40", "41", "42", "43", "44", "45", "46",
        "47", "48", "49", "50", "51", "52", "53", "54", "55", "56", "57", "58", "59", "60",
    ];
    if secs <= 60 {
        HeaderValue::from_static(SMALL[secs as usize])
    } else {
        crate::util::digits::header_value(secs)
    }
}

/// Whole seconds, rounded up, never 0 (the `Retry-After` rule).
pub(crate) fn retry_after_secs(d: Duration) -> u64 {
    crate::util::round::secs_ceil(d).max(1)
}

pub(crate) fn push_json_escaped(out: &mut String, s: &str) {
    // Most texts need no escaping: one branch-free pass finds out.
    if !s.bytes().fold(false, |any, b| {
        any | (b < 0x20) | (b == b'"') | (b == b'\\')
    }) {
        out.push_str(s);
        return;
    }
    // Copy unescaped runs whole; only quotes, backslashes and control
    // characters need escaping (all ASCII, so byte indices are char
    // boundaries).
    let mut start = 0;
    for (i, b) in s.bytes().enumerate() {
        let escaped = match b {
            b'"' => "\\\"",
            b'\\' => "\\\\",
            b'\n' => "\\n",
            b'\r' => "\\r",
            b'\t' => "\\t",
            0..=0x1f => "",
            _ => continue,
        };
        out.push_str(&s[start..i]);
        if escaped.is_empty() {
            let _ = write!(out, "\\u{b:04x}");
        } else {
            out.push_str(escaped);
        }
        start = i + 1;
    }
    out.push_str(&s[start..]);
}

impl fmt::Debug for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Rejection")
            .field("kind", &self.kind)
            .field("layer", &self.layer)
            .field("retry_after", &self.retry_after)
            .field("detail", &self.detail())
            .field("status", &self.status())
            .field("service_fault", &self.service_fault)
            .finish_non_exhaustive()
    }
}

impl fmt::Display for Rejection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (layer `{}`)",
            self.kind.title().to_lowercase(),
            self.layer
        )?;
        if !self.detail().is_empty() {
            write!(f, ": {}", self.detail())?;
        }
        if let Some(after) = self.retry_after {
            write!(f, "; retry after {after:?}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Rejection {}

/// Marks a response as a refusal by a layer of this crate; found in the
/// response *extensions* of every answer [`Rejection::into_response`]
/// builds.
///
/// Extensions never travel on the wire, so a client cannot forge one. A
/// [circuit breaker](crate::circuit_breaker) reads it before classifying the
/// response: a refusal that is not the service's fault (a rate limit, a
/// drain, an inner breaker, a deadline the caller chose) is recorded as
/// *ignored*, one that is (the server's own timeout) as a failure. Your own
/// layers may read it, or insert one to have their refusals treated the
/// same way.
///
/// ```
/// use http::Response;
/// use tower_rampart::rejection::{Protocol, Refused, Rejection, RejectionKind};
///
/// let res = Rejection::new(RejectionKind::RateLimited, "api")
///     .into_response::<http_body_util::Empty<bytes::Bytes>>(Protocol::Http);
/// let marker = res.extensions().get::<Refused>().unwrap();
/// assert_eq!(marker.kind(), RejectionKind::RateLimited);
/// assert!(!marker.is_service_fault());
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Refused {
    kind: RejectionKind,
    service_fault: bool,
}

impl Refused {
    /// A marker for a refusal of `kind`, caused by the service itself or
    /// not.
    pub const fn new(kind: RejectionKind, service_fault: bool) -> Self {
        Self {
            kind,
            service_fault,
        }
    }

    /// Why the request was refused.
    pub const fn kind(&self) -> RejectionKind {
        self.kind
    }

    /// Whether the protected service itself caused the refusal.
    pub const fn is_service_fault(&self) -> bool {
        self.service_fault
    }
}

/// The protocol a refusal is answered in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Protocol {
    /// Plain HTTP: a status, `Retry-After` and a problem+json body.
    #[default]
    Http,
    /// gRPC: a trailers-only response with `grpc-status`.
    Grpc,
}

impl Protocol {
    /// The protocol of `req`: gRPC when its `content-type` starts with
    /// `application/grpc`.
    #[inline]
    pub fn of<B>(req: &Request<B>) -> Self {
        Self::from_headers(req.headers())
    }

    /// The protocol of a request with these headers.
    #[inline]
    pub fn from_headers(headers: &HeaderMap) -> Self {
        if let Some(key) = headers_key(headers) {
            let (pinned, protocol) = PINNED_PROTOCOL.with(Cell::get);
            if pinned == Some(key) {
                return protocol;
            }
        }
        if is_grpc(headers) {
            Protocol::Grpc
        } else {
            Protocol::Http
        }
    }

    /// Pins `self` as the protocol of the request with these `headers`
    /// while the guard lives: an outer layer that already looked the
    /// protocol up holds the guard around its inner service's `call`, and
    /// the layers below read it instead of searching the headers again
    /// (one `content-type` lookup per request for the whole stack).
    #[inline]
    pub(crate) fn pin(self, headers: &HeaderMap) -> ProtocolPin {
        let key = headers_key(headers);
        ProtocolPin(Some(PINNED_PROTOCOL.with(|c| c.replace((key, self)))))
    }
}

thread_local! {
    /// The protocol pinned by [`Protocol::pin`], with the key of the
    /// request's headers it belongs to (`None`: nothing pinned).
    static PINNED_PROTOCOL: Cell<(Option<HeadersKey>, Protocol)> =
        const { Cell::new((None, Protocol::Http)) };
}

/// Where a request's first header value lives (in the header map's heap
/// storage) and where that value's bytes live: both survive moves of the
/// request, and a request made while another is pinned has storage of its
/// own, so its key differs.
type HeadersKey = (usize, usize);

/// The key of these headers; `None` for a request without headers (its
/// lookup is cheap: nothing is pinned for it).
#[inline]
fn headers_key(headers: &HeaderMap) -> Option<HeadersKey> {
    headers.iter().next().map(|(_, v)| {
        (
            std::ptr::from_ref(v) as usize,
            v.as_bytes().as_ptr() as usize,
        )
    })
}

pub(crate) use pin::ProtocolPin;

mod pin {
    use super::{Cell, HeadersKey, PINNED_PROTOCOL, Protocol};

    /// Restores the previously pinned protocol when dropped (see
    /// [`Protocol::pin`]); [`ProtocolPin::NONE`] pins nothing. Public in a
    /// private module: the drain layer's sealed mode trait names it, no
    /// user can.
    #[must_use = "the protocol is pinned only while the guard lives"]
    pub struct ProtocolPin(pub(super) Option<(Option<HeadersKey>, Protocol)>);

    impl ProtocolPin {
        /// A guard that pinned nothing (modes that have no protocol).
        pub(crate) const NONE: ProtocolPin = ProtocolPin(None);
    }

    impl Drop for ProtocolPin {
        #[inline]
        fn drop(&mut self) {
            if let Some(previous) = self.0 {
                PINNED_PROTOCOL.with(|c: &Cell<(Option<HeadersKey>, Protocol)>| c.set(previous));
            }
        }
    }
}

mod sealed {
    pub trait Sealed {}
    impl Sealed for super::HttpMode {}
    impl Sealed for super::ErrorMode {}
}

/// How a layer's service answers when it refuses a request, and what its
/// `Response` and `Error` types are. Implemented by [`HttpMode`] and
/// [`ErrorMode`] only.
pub trait Mode<Req, Res, E>: sealed::Sealed {
    /// The service's response type.
    type Response;
    /// The service's error type.
    type Error;
    /// What a refusal needs to know about the request, captured before the
    /// request moves into the inner service.
    type Context: Copy + Send + Sync + Unpin + 'static;

    /// Captures the context of `req`.
    fn context(req: &Req) -> Self::Context;
    /// Maps the inner service's result.
    fn admitted(result: Result<Res, E>) -> Result<Self::Response, Self::Error>;
    /// Answers a refusal.
    fn rejected(cx: Self::Context, rejection: Rejection) -> Result<Self::Response, Self::Error>;
}

/// Refusals are answered with an HTTP or gRPC response (the default).
///
/// The service's error type stays the inner service's, so an axum `Router`
/// stays `Infallible`; its response body becomes [`ResponseBody<B>`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HttpMode;

/// Refusals are returned as an error: a [`Rejection`] inside a `BoxError`,
/// for services that do not speak HTTP.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ErrorMode;

impl<ReqB, ResB, E> Mode<Request<ReqB>, Response<ResB>, E> for HttpMode {
    type Response = Response<ResponseBody<ResB>>;
    type Error = E;
    type Context = Protocol;

    #[inline]
    fn context(req: &Request<ReqB>) -> Protocol {
        Protocol::of(req)
    }

    #[inline]
    fn admitted(result: Result<Response<ResB>, E>) -> Result<Self::Response, E> {
        result.map(|res| res.map(ResponseBody::new))
    }

    #[inline]
    fn rejected(cx: Protocol, rejection: Rejection) -> Result<Self::Response, E> {
        Ok(rejection.into_response(cx))
    }
}

impl<Req, Res, E: Into<BoxError>> Mode<Req, Res, E> for ErrorMode {
    type Response = Res;
    type Error = BoxError;
    type Context = ();

    #[inline]
    fn context(_: &Req) {}

    #[inline]
    fn admitted(result: Result<Res, E>) -> Result<Res, BoxError> {
        result.map_err(Into::into)
    }

    #[inline]
    fn rejected(_: (), rejection: Rejection) -> Result<Res, BoxError> {
        Err(Box::new(rejection))
    }
}

pin_project! {
    /// The response body of a layer in [`HttpMode`]: the inner service's body
    /// when the request was admitted, or the refusal's small body.
    pub struct ResponseBody<B> {
        #[pin]
        inner: BodyInner<B>,
    }
}

pin_project! {
    #[project = BodyInnerProj]
    enum BodyInner<B> {
        Inner { #[pin] body: B },
        // Empty once sent (an empty `Bytes` is static, no allocation). Not
        // an `Option<Bytes>`: the option would take the spare value of the
        // `Bytes` and leave the variant's tag 8 bytes of its own, 40 bytes
        // around a boxed body instead of 32 (`benches/README.md`, "A
        // smaller answer body").
        Full { data: Bytes },
    }
}

impl<B> ResponseBody<B> {
    /// Wraps the inner service's body.
    #[inline]
    pub fn new(body: B) -> Self {
        Self {
            inner: BodyInner::Inner { body },
        }
    }

    /// A complete body of `data` (used for refusals).
    pub fn full(data: Bytes) -> Self {
        Self {
            inner: BodyInner::Full { data },
        }
    }

    /// The inner service's body, if this is one.
    pub fn into_inner(self) -> Option<B> {
        match self.inner {
            BodyInner::Inner { body } => Some(body),
            BodyInner::Full { .. } => None,
        }
    }
}

impl<B> Body for ResponseBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().inner.project() {
            BodyInnerProj::Inner { body } => body.poll_frame(cx),
            BodyInnerProj::Full { data } => Poll::Ready(if data.is_empty() {
                None
            } else {
                Some(Ok(Frame::data(std::mem::take(data))))
            }),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.inner {
            BodyInner::Inner { body } => body.is_end_stream(),
            BodyInner::Full { data } => data.is_empty(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            BodyInner::Inner { body } => body.size_hint(),
            BodyInner::Full { data } => SizeHint::with_exact(data.len() as u64),
        }
    }
}

impl<B> fmt::Debug for ResponseBody<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.inner {
            BodyInner::Inner { .. } => f.write_str("ResponseBody::Inner"),
            BodyInner::Full { data } => f.debug_tuple("ResponseBody::Full").field(data).finish(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Empty};

    async fn body_text<B: Body<Data = Bytes>>(b: B) -> String
    where
        B::Error: fmt::Debug,
    {
        String::from_utf8(b.collect().await.unwrap().to_bytes().to_vec()).unwrap()
    }

    #[test]
    fn retry_after_rounding() {
        assert_eq!(retry_after_secs(Duration::ZERO), 1);
        assert_eq!(retry_after_secs(Duration::from_nanos(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_secs(1)), 1);
        assert_eq!(retry_after_secs(Duration::from_millis(1001)), 2);
        assert_eq!(retry_after_secs(Duration::from_secs(30)), 30);
    }

    #[tokio::test]
    async fn http_answers() {
        for (kind, status) in [
            (RejectionKind::CircuitOpen, 503),
            (RejectionKind::Draining, 503),
            (RejectionKind::RateLimited, 429),
            (RejectionKind::TimedOut, 504),
            (RejectionKind::InvalidRequest, 400),
            (RejectionKind::Overloaded, 503),
        ] {
            let res = Rejection::new(kind, "x")
                .with_detail("why \"quoted\"\n")
                .into_response::<Empty<Bytes>>(Protocol::Http);
            assert_eq!(res.status(), status);
            assert_eq!(res.headers()["content-type"], "application/problem+json");
            assert!(res.headers().get("retry-after").is_none());
            let body = body_text(res.into_body()).await;
            let json: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(json["status"], status);
            assert_eq!(json["title"], kind.title());
            assert_eq!(json["type"], kind.problem_type());
            assert_eq!(json["detail"], "why \"quoted\"\n");
        }
    }

    #[tokio::test]
    async fn http_status_override_and_headers() {
        let res = Rejection::new(RejectionKind::TimedOut, "t")
            .with_status(StatusCode::REQUEST_TIMEOUT)
            .with_retry_after(Duration::from_millis(2500))
            .with_header(header::CONNECTION, HeaderValue::from_static("close"))
            .with_header(
                HeaderName::from_static("ratelimit"),
                HeaderValue::from_static("a"),
            )
            .with_header(
                HeaderName::from_static("ratelimit"),
                HeaderValue::from_static("b"),
            )
            .into_response::<Empty<Bytes>>(Protocol::Http);
        assert_eq!(res.status(), 408);
        assert_eq!(res.headers()["retry-after"], "3");
        assert_eq!(res.headers()["connection"], "close");
        let all: Vec<_> = res.headers().get_all("ratelimit").iter().collect();
        assert_eq!(all, ["a", "b"]);
        let json: serde_json::Value =
            serde_json::from_str(&body_text(res.into_body()).await).unwrap();
        assert_eq!(json["status"], 408);
        assert!(json.get("detail").is_none());
    }

    #[tokio::test]
    async fn grpc_answers() {
        for (kind, code) in [
            (RejectionKind::CircuitOpen, "14"),
            (RejectionKind::Draining, "14"),
            (RejectionKind::RateLimited, "8"),
            (RejectionKind::TimedOut, "4"),
            (RejectionKind::InvalidRequest, "3"),
            (RejectionKind::Overloaded, "14"),
        ] {
            let res = Rejection::new(kind, "x")
                .with_retry_after(Duration::from_millis(1500))
                .with_detail("100% busy ☃")
                .into_response::<Empty<Bytes>>(Protocol::Grpc);
            assert_eq!(res.status(), 200);
            assert_eq!(res.headers()["content-type"], "application/grpc");
            assert_eq!(res.headers()["grpc-status"], code);
            assert_eq!(res.headers()["grpc-message"], "100%25 busy %E2%98%83");
            assert_eq!(res.headers()["grpc-retry-pushback-ms"], "1500");
            assert!(res.body().is_end_stream());
            assert_eq!(body_text(res.into_body()).await, "");
        }
        let res = Rejection::new(RejectionKind::CircuitOpen, "x")
            .into_response::<Empty<Bytes>>(Protocol::Grpc);
        assert_eq!(res.headers()["grpc-message"], "Circuit open");
    }

    #[test]
    fn protocol_detection() {
        let req = |ct: Option<&str>| {
            let mut b = Request::builder();
            if let Some(ct) = ct {
                b = b.header("content-type", ct);
            }
            b.body(()).unwrap()
        };
        assert_eq!(Protocol::of(&req(None)), Protocol::Http);
        assert_eq!(Protocol::of(&req(Some("application/json"))), Protocol::Http);
        assert_eq!(Protocol::of(&req(Some("application/grpc"))), Protocol::Grpc);
        assert_eq!(
            Protocol::of(&req(Some("application/grpc+proto"))),
            Protocol::Grpc
        );
    }

    #[test]
    fn a_pinned_protocol_follows_its_request_only() {
        let grpc = || {
            Request::builder()
                .header("content-type", "application/grpc")
                .body(())
                .unwrap()
        };
        let outer = grpc();
        // Pinned wrong on purpose, to see who reads the pin.
        let pin = Protocol::Http.pin(outer.headers());
        let moved = Box::new(outer);
        assert_eq!(
            Protocol::of(&moved),
            Protocol::Http,
            "the same request, moved"
        );
        assert_eq!(Protocol::of(&grpc()), Protocol::Grpc, "another request");
        let no_headers = Request::new(());
        assert_eq!(Protocol::of(&no_headers), Protocol::Http);
        drop(pin);
        assert_eq!(Protocol::of(&moved), Protocol::Grpc, "unpinned");
        let outer_pin = Protocol::Http.pin(moved.headers());
        {
            let inner = grpc();
            let _inner_pin = Protocol::Grpc.pin(inner.headers());
            assert_eq!(Protocol::of(&inner), Protocol::Grpc);
            assert_eq!(Protocol::of(&moved), Protocol::Grpc, "looked up again");
        }
        assert_eq!(
            Protocol::of(&moved),
            Protocol::Http,
            "the outer pin is back"
        );
        drop(outer_pin);
    }

    #[test]
    fn error_mode_boxes_the_rejection() {
        let r: Result<(), BoxError> = <ErrorMode as Mode<(), (), std::io::Error>>::rejected(
            (),
            Rejection::new(RejectionKind::RateLimited, "l"),
        );
        let err = r.unwrap_err();
        let rej = err.downcast_ref::<Rejection>().unwrap();
        assert_eq!(rej.kind(), RejectionKind::RateLimited);
        assert_eq!(rej.layer(), "l");
        assert_eq!(err.to_string(), "rate limited (layer `l`)");
    }

    #[test]
    fn problem_json_escapes_round_trip() {
        for detail in [
            "plain",
            "q\"uote",
            "back\\slash",
            "ctl\u{1}\u{1f}",
            "tab\tnl\n",
            "ünï☃",
            "\"\"",
            "end\\",
        ] {
            let json = Rejection::new(RejectionKind::TimedOut, "t")
                .with_detail(detail)
                .problem_json();
            let v: serde_json::Value = serde_json::from_str(&json).unwrap();
            assert_eq!(v["detail"], detail, "{json}");
        }
    }

    /// A detail without characters to escape (every one the crate writes)
    /// is sized exactly, so the answer's body takes the buffer as it is.
    #[test]
    fn problem_json_is_sized_exactly() {
        for kind in [
            RejectionKind::CircuitOpen,
            RejectionKind::RateLimited,
            RejectionKind::TimedOut,
            RejectionKind::Draining,
            RejectionKind::InvalidRequest,
            RejectionKind::Overloaded,
        ] {
            for detail in ["", "rate limit quota `per-ip` exhausted", "ünï☃"] {
                let json = Rejection::new(kind, "t").with_detail(detail).problem_json();
                assert_eq!(json.capacity(), json.len(), "{json}");
            }
        }
    }

    #[test]
    fn answers_carry_the_marker_in_both_protocols() {
        for protocol in [Protocol::Http, Protocol::Grpc] {
            for fault in [false, true] {
                let res = Rejection::new(RejectionKind::TimedOut, "t")
                    .with_service_fault(fault)
                    .into_response::<Empty<Bytes>>(protocol);
                let marker = res.extensions().get::<Refused>().copied();
                assert_eq!(
                    marker,
                    Some(Refused::new(RejectionKind::TimedOut, fault)),
                    "{protocol:?}"
                );
            }
        }
        // Never on the wire.
        let res = Rejection::new(RejectionKind::Draining, "d")
            .with_service_fault(true)
            .into_response::<Empty<Bytes>>(Protocol::Http);
        assert!(
            res.headers()
                .iter()
                .all(|(_, v)| !v.as_bytes().windows(5).any(|w| w == b"fault"))
        );
        assert!(!Rejection::new(RejectionKind::CircuitOpen, "c").is_service_fault());
    }

    #[test]
    fn find_walks_the_source_chain() {
        #[derive(Debug)]
        struct Wrapper(Rejection);
        impl fmt::Display for Wrapper {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("wrapped")
            }
        }
        impl std::error::Error for Wrapper {
            fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
                Some(&self.0)
            }
        }
        let err: BoxError = Box::new(Wrapper(
            Rejection::new(RejectionKind::TimedOut, "t").with_service_fault(true),
        ));
        let found = Rejection::find(err.as_ref()).unwrap();
        assert!(found.is_service_fault());
        let other: BoxError = "boom".into();
        assert!(Rejection::find(other.as_ref()).is_none());
    }

    #[test]
    fn small_enough_to_box_cheaply() {
        // Boxed on every `ErrorMode` refusal and moved on every refusal
        // path: keep the extra headers behind their own box.
        #[cfg(target_pointer_width = "64")]
        assert!(std::mem::size_of::<Rejection>() <= 72);
        let r = Rejection::new(RejectionKind::CircuitOpen, "c");
        assert!(r.headers().is_empty());
        assert_eq!(r.detail(), "");
        let shared: Arc<str> = Arc::from("quota `q` exhausted");
        let r = r.with_shared_detail(Arc::clone(&shared));
        assert_eq!(r.detail(), &*shared);
        assert_eq!(r.clone().detail(), &*shared);
    }

    #[test]
    fn a_full_body_is_sent_once_and_needs_no_tag_of_its_own() {
        use http_body_util::combinators::UnsyncBoxBody;
        use std::task::Waker;
        // The variant's tag lives in a spare value of its `Bytes`: around a
        // boxed body (16 bytes) the answer's body takes 32, not 40.
        #[cfg(target_pointer_width = "64")]
        assert_eq!(
            std::mem::size_of::<ResponseBody<UnsyncBoxBody<Bytes, BoxError>>>(),
            32
        );
        let mut cx = Context::from_waker(Waker::noop());
        let mut body = std::pin::pin!(ResponseBody::<Empty<Bytes>>::full(Bytes::from_static(
            b"abc"
        )));
        assert!(!body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(3));
        let Poll::Ready(Some(Ok(frame))) = body.as_mut().poll_frame(&mut cx) else {
            panic!("one frame");
        };
        assert_eq!(frame.into_data().unwrap(), "abc");
        assert!(body.is_end_stream());
        assert_eq!(body.size_hint().exact(), Some(0));
        assert!(matches!(
            body.as_mut().poll_frame(&mut cx),
            Poll::Ready(None)
        ));
        let mut empty = std::pin::pin!(ResponseBody::<Empty<Bytes>>::full(Bytes::new()));
        assert!(empty.is_end_stream());
        assert!(matches!(
            empty.as_mut().poll_frame(&mut cx),
            Poll::Ready(None)
        ));
    }

    #[tokio::test]
    async fn own_headers_win_over_the_defaults() {
        let res = Rejection::new(RejectionKind::RateLimited, "l")
            .with_retry_after(Duration::from_secs(2))
            .with_header(header::CONTENT_TYPE, HeaderValue::from_static("text/plain"))
            .with_header(header::RETRY_AFTER, HeaderValue::from_static("7"))
            .into_response::<Empty<Bytes>>(Protocol::Http);
        let all: Vec<_> = res.headers().get_all("content-type").iter().collect();
        assert_eq!(all, ["text/plain"]);
        let all: Vec<_> = res.headers().get_all("retry-after").iter().collect();
        assert_eq!(all, ["7"]);
        let res = Rejection::new(RejectionKind::RateLimited, "l")
            .with_header(GRPC_STATUS, HeaderValue::from_static("13"))
            .into_response::<Empty<Bytes>>(Protocol::Grpc);
        let all: Vec<_> = res.headers().get_all("grpc-status").iter().collect();
        assert_eq!(all, ["13"]);
        assert_eq!(res.headers()["grpc-message"], "Rate limited");
    }

    #[test]
    fn seconds_header_values() {
        for secs in [0, 1, 9, 10, 59, 60, 61, 3600, u64::MAX] {
            assert_eq!(secs_header_value(secs), secs.to_string().as_str());
        }
    }

    #[test]
    fn problem_head_matches_the_kind() {
        for kind in [
            RejectionKind::CircuitOpen,
            RejectionKind::Draining,
            RejectionKind::RateLimited,
            RejectionKind::TimedOut,
            RejectionKind::InvalidRequest,
            RejectionKind::Overloaded,
        ] {
            assert_eq!(
                problem_head(kind),
                format!(
                    "{{\"type\":\"{}\",\"title\":\"{}\",\"status\":",
                    kind.problem_type(),
                    kind.title()
                )
            );
        }
    }

    #[test]
    fn display() {
        let r = Rejection::new(RejectionKind::CircuitOpen, "db")
            .with_detail("3 consecutive failures")
            .with_retry_after(Duration::from_secs(5));
        assert_eq!(
            r.to_string(),
            "circuit open (layer `db`): 3 consecutive failures; retry after 5s"
        );
    }
}
