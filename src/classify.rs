//! Was a finished call a success?
//!
//! The circuit breaker (and anything else that keeps statistics) asks a
//! [`Classifier`] for the [`Outcome`] of each call:
//!
//! - an `Err` from the inner service is a failure;
//! - an HTTP response is a failure when its status is in the configured set
//!   (5xx by default), or as a user closure decides;
//! - a gRPC response (`content-type: application/grpc*`) is judged by its
//!   `grpc-status`: read from the response headers for a trailers-only
//!   response, otherwise from the trailers when the body ends
//!   ([`ClassifyBody`] does that). Failure codes are configurable; the
//!   default is UNKNOWN, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, INTERNAL,
//!   UNAVAILABLE and DATA_LOSS.
//!
//! ```
//! use http::{Response, StatusCode};
//! use tower_rampart::classify::{Classification, Classifier, Outcome};
//!
//! let classifier = Classifier::default();
//! let res = Response::builder().status(StatusCode::BAD_GATEWAY).body(()).unwrap();
//! assert_eq!(classifier.classify_response(&res), Classification::Done(Outcome::Failure));
//!
//! let grpc = Response::builder()
//!     .header("content-type", "application/grpc")
//!     .body(())
//!     .unwrap();
//! // Streaming gRPC: the verdict comes with the trailers.
//! assert_eq!(classifier.classify_response(&grpc), Classification::AwaitTrailers);
//! ```

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};

use http::{HeaderMap, HeaderValue, Response, StatusCode, header};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

/// The verdict on one finished call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// The call succeeded.
    Success,
    /// The call failed; a breaker counts it against the service.
    Failure,
    /// Neither: the call is not counted (a client that went away, a
    /// refusal that was not the service's fault, or a response the user
    /// marked as irrelevant).
    Ignored,
}

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
            .entries(GrpcCode::ALL.iter().filter(|c| self.contains(**c)))
            .finish()
    }
}

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

/// What [`Classifier::classify_response`] could tell from the response head.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Classification {
    /// The verdict is known now.
    Done(Outcome),
    /// A streaming gRPC response: the verdict comes with the trailers, when
    /// the body ends (see [`ClassifyBody`]).
    AwaitTrailers,
}

type StatusFn = dyn Fn(StatusCode, &HeaderMap) -> Outcome + Send + Sync;

#[derive(Clone)]
enum HttpRule {
    Set(StatusSet),
    Fn(Arc<StatusFn>),
}

/// Decides the [`Outcome`] of HTTP and gRPC calls. Cheap to clone.
///
/// ```
/// use http::{Response, StatusCode};
/// use tower_rampart::classify::{Classification, Classifier, GrpcCode, GrpcCodeSet, Outcome};
///
/// // 429 from the upstream is not its fault: ignore it; 5xx are failures.
/// let classifier = Classifier::default().http_fn(|status, _headers| {
///     if status == StatusCode::TOO_MANY_REQUESTS {
///         Outcome::Ignored
///     } else if status.is_server_error() {
///         Outcome::Failure
///     } else {
///         Outcome::Success
///     }
/// });
/// let res = Response::builder().status(429).body(()).unwrap();
/// assert_eq!(classifier.classify_response(&res), Classification::Done(Outcome::Ignored));
///
/// // A trailers-only gRPC answer is judged from its headers.
/// let grpc = Response::builder()
///     .header("content-type", "application/grpc")
///     .header("grpc-status", "14")
///     .body(())
///     .unwrap();
/// assert_eq!(classifier.classify_response(&grpc), Classification::Done(Outcome::Failure));
/// ```
#[derive(Clone)]
pub struct Classifier {
    http: HttpRule,
    ignored: StatusSet,
    grpc: GrpcCodeSet,
}

impl Default for Classifier {
    fn default() -> Self {
        Self {
            http: HttpRule::Set(StatusSet::server_errors()),
            ignored: StatusSet::empty(),
            grpc: GrpcCodeSet::default_failures(),
        }
    }
}

impl fmt::Debug for Classifier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Classifier");
        match &self.http {
            HttpRule::Set(set) => d.field("http_failures", set),
            HttpRule::Fn(_) => d.field("http_failures", &"<closure>"),
        };
        d.field("ignored_statuses", &self.ignored)
            .field("grpc_failures", &self.grpc)
            .finish()
    }
}

impl Classifier {
    /// 5xx and the default gRPC failure codes are failures.
    pub fn new() -> Self {
        Self::default()
    }

    /// HTTP responses with a status in `set` are failures, all others
    /// successes.
    #[must_use]
    pub fn http_failures(mut self, set: StatusSet) -> Self {
        self.http = HttpRule::Set(set);
        self
    }

    /// A closure decides the outcome of plain HTTP responses from the status
    /// and headers (return [`Outcome::Ignored`] to leave a response out of
    /// the statistics).
    #[must_use]
    pub fn http_fn<F>(mut self, f: F) -> Self
    where
        F: Fn(StatusCode, &HeaderMap) -> Outcome + Send + Sync + 'static,
    {
        self.http = HttpRule::Fn(Arc::new(f));
        self
    }

    /// HTTP responses with a status in `set` are [`Outcome::Ignored`]:
    /// neither successes nor failures, whatever the failure set or the
    /// closure says. For answers that say nothing about the service's
    /// health (a 429 from its own rate limit, a 503 from a maintenance
    /// switch) without replacing the rest of the rules. Replaces the
    /// previous ignore set.
    ///
    /// ```
    /// use http::{Response, StatusCode};
    /// use tower_rampart::classify::{Classification, Classifier, Outcome, StatusSet};
    ///
    /// let classifier = Classifier::default()
    ///     .ignore_statuses(StatusSet::empty().with(StatusCode::SERVICE_UNAVAILABLE));
    /// let judge = |status: u16| {
    ///     let res = Response::builder().status(status).body(()).unwrap();
    ///     classifier.classify_response(&res)
    /// };
    /// assert_eq!(judge(503), Classification::Done(Outcome::Ignored));
    /// assert_eq!(judge(502), Classification::Done(Outcome::Failure));
    /// assert_eq!(judge(200), Classification::Done(Outcome::Success));
    /// ```
    #[must_use]
    pub fn ignore_statuses(mut self, set: StatusSet) -> Self {
        self.ignored = set;
        self
    }

    /// The HTTP statuses this classifier ignores.
    pub fn ignored_statuses(&self) -> StatusSet {
        self.ignored
    }

    /// gRPC responses whose `grpc-status` is in `set` are failures.
    #[must_use]
    pub fn grpc_failures(mut self, set: GrpcCodeSet) -> Self {
        self.grpc = set;
        self
    }

    /// The configured gRPC failure codes.
    pub fn grpc_failure_codes(&self) -> GrpcCodeSet {
        self.grpc
    }

    /// Judges a response from its head. gRPC responses are recognised by
    /// their `content-type`; a trailers-only one (with `grpc-status` in the
    /// headers) is judged at once, a streaming one must wait for its trailers.
    pub fn classify_response<B>(&self, res: &Response<B>) -> Classification {
        let status = res.status();
        let headers = res.headers();
        if status == StatusCode::OK && is_grpc(headers) {
            return match headers.get(GRPC_STATUS) {
                Some(v) => Classification::Done(self.classify_grpc(GrpcCode::from_header_value(v))),
                None => Classification::AwaitTrailers,
            };
        }
        if self.ignored.contains(status) {
            return Classification::Done(Outcome::Ignored);
        }
        Classification::Done(match &self.http {
            HttpRule::Set(set) => {
                if set.contains(status) {
                    Outcome::Failure
                } else {
                    Outcome::Success
                }
            }
            HttpRule::Fn(f) => f(status, headers),
        })
    }

    /// Judges a gRPC status code.
    #[inline]
    pub fn classify_grpc(&self, code: GrpcCode) -> Outcome {
        classify_grpc(self.grpc, code)
    }

    /// Judges the end of a streaming gRPC body: the `grpc-status` trailer, or
    /// a failure when the stream ended without one (clients report that as
    /// an error too).
    pub fn classify_trailers(&self, trailers: Option<&HeaderMap>) -> Outcome {
        classify_trailers(self.grpc, trailers)
    }
}

const GRPC_STATUS: &str = "grpc-status";

/// Whether these headers carry a gRPC `content-type` (`application/grpc`,
/// `application/grpc+proto`, `application/grpc-web`, ...).
#[inline]
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"))
}

fn classify_grpc(failures: GrpcCodeSet, code: GrpcCode) -> Outcome {
    if failures.contains(code) {
        Outcome::Failure
    } else {
        Outcome::Success
    }
}

fn classify_trailers(failures: GrpcCodeSet, trailers: Option<&HeaderMap>) -> Outcome {
    match trailers.and_then(|t| t.get(GRPC_STATUS)) {
        Some(v) => classify_grpc(failures, GrpcCode::from_header_value(v)),
        None => Outcome::Failure,
    }
}

/// Receives the outcome of a call whose verdict was deferred to the end of
/// its body. Called exactly once.
pub trait OnOutcome {
    /// The call ended with `outcome`.
    fn on_outcome(self, outcome: Outcome);
}

impl<F: FnOnce(Outcome)> OnOutcome for F {
    fn on_outcome(self, outcome: Outcome) {
        self(outcome)
    }
}

pin_project! {
    /// A response body that reports the call's [`Outcome`] when it ends.
    ///
    /// Made with [`ClassifyBody::deferred`] for a streaming gRPC response, it
    /// reads `grpc-status` from the trailers: an error frame or a stream
    /// without status is a failure, and a body dropped before its end (the
    /// client went away) is [`Outcome::Ignored`]. A panic while the body is
    /// polled (or that drops it while unwinding) is a failure. Made with
    /// [`ClassifyBody::passthrough`] it forwards the body and reports
    /// nothing, so a service can return one body type for both cases.
    ///
    /// ```
    /// use bytes::Bytes;
    /// use http_body_util::{BodyExt, Full};
    /// use std::sync::{Arc, Mutex};
    /// use tower_rampart::classify::{ClassifyBody, GrpcCodeSet, Outcome};
    ///
    /// # tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(async {
    /// let seen = Arc::new(Mutex::new(None));
    /// let sink = seen.clone();
    /// // A gRPC stream that ends without a `grpc-status` trailer is a failure.
    /// let body = ClassifyBody::deferred(
    ///     Full::new(Bytes::from_static(b"partial")),
    ///     GrpcCodeSet::default(),
    ///     move |outcome| *sink.lock().unwrap() = Some(outcome),
    /// );
    /// body.collect().await.unwrap();
    /// assert_eq!(*seen.lock().unwrap(), Some(Outcome::Failure));
    /// # });
    /// ```
    pub struct ClassifyBody<B, F: OnOutcome> {
        #[pin]
        body: B,
        failures: GrpcCodeSet,
        pending: Option<F>,
    }

    impl<B, F: OnOutcome> PinnedDrop for ClassifyBody<B, F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(sink) = this.project().pending.take() {
                // Dropped by a panic unwinding through the body: a failure.
                sink.on_outcome(if std::thread::panicking() {
                    Outcome::Failure
                } else {
                    Outcome::Ignored
                });
            }
        }
    }
}

/// Held on the stack while the body is polled: a panic in the poll reports
/// a failure as it unwinds (the server drops the body only after catching
/// the panic, when nothing is unwinding any more).
struct UnwindGuard<'a, F: OnOutcome>(&'a mut Option<F>);

impl<F: OnOutcome> Drop for UnwindGuard<'_, F> {
    #[inline]
    fn drop(&mut self) {
        if self.0.is_some() && std::thread::panicking() {
            if let Some(sink) = self.0.take() {
                sink.on_outcome(Outcome::Failure);
            }
        }
    }
}

impl<B, F: OnOutcome> ClassifyBody<B, F> {
    /// Reports the outcome to `sink` when the body ends, judged by
    /// `failures`.
    pub fn deferred(body: B, failures: GrpcCodeSet, sink: F) -> Self {
        Self {
            body,
            failures,
            pending: Some(sink),
        }
    }

    /// Forwards the body and reports nothing.
    pub fn passthrough(body: B) -> Self {
        Self {
            body,
            failures: GrpcCodeSet::empty(),
            pending: None,
        }
    }

    /// The wrapped body.
    pub fn get_ref(&self) -> &B {
        &self.body
    }
}

impl<B: Body, F: OnOutcome> Body for ClassifyBody<B, F> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let pending = UnwindGuard(this.pending);
        let frame = ready!(this.body.poll_frame(cx));
        if pending.0.is_some() {
            let outcome = match &frame {
                Some(Ok(f)) => f
                    .trailers_ref()
                    .map(|t| classify_trailers(*this.failures, Some(t))),
                Some(Err(_)) => Some(Outcome::Failure),
                None => Some(Outcome::Failure),
            };
            if let Some(outcome) = outcome {
                if let Some(sink) = pending.0.take() {
                    sink.on_outcome(outcome);
                }
            }
        }
        Poll::Ready(frame)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        // While a verdict waits for the trailers, keep the body polled to
        // its real end: a server that stops polling early would drop the
        // verdict as "ignored" instead of reading the missing status.
        self.pending.is_none() && self.body.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

impl<B: fmt::Debug, F: OnOutcome> fmt::Debug for ClassifyBody<B, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClassifyBody")
            .field("body", &self.body)
            .field("pending", &self.pending.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;
    use http_body_util::{BodyExt, Full};
    use std::sync::Mutex;

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
    fn ignored_statuses_win_over_the_failure_set_and_the_closure() {
        let judge = |c: &Classifier, status: u16| {
            let res = Response::builder().status(status).body(()).unwrap();
            c.classify_response(&res)
        };
        let ignore = StatusSet::empty()
            .with(StatusCode::TOO_MANY_REQUESTS)
            .with(StatusCode::SERVICE_UNAVAILABLE);
        let by_set = Classifier::default().ignore_statuses(ignore);
        let by_fn = Classifier::default()
            .http_fn(|_, _| Outcome::Failure)
            .ignore_statuses(ignore);
        for c in [&by_set, &by_fn] {
            assert_eq!(judge(c, 429), Classification::Done(Outcome::Ignored));
            assert_eq!(judge(c, 503), Classification::Done(Outcome::Ignored));
            assert_eq!(judge(c, 500), Classification::Done(Outcome::Failure));
            assert_eq!(c.ignored_statuses(), ignore);
        }
        assert_eq!(judge(&by_set, 200), Classification::Done(Outcome::Success));
        // Replacing the rule keeps the ignore set.
        let c = by_set.http_failures(StatusSet::empty().with(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(judge(&c, 429), Classification::Done(Outcome::Ignored));
        // gRPC answers are judged by their grpc-status, not the ignore set.
        let grpc = Response::builder()
            .header("content-type", "application/grpc")
            .header("grpc-status", "14")
            .body(())
            .unwrap();
        let c = Classifier::default().ignore_statuses(StatusSet::empty().with(StatusCode::OK));
        assert_eq!(
            c.classify_response(&grpc),
            Classification::Done(Outcome::Failure)
        );
        assert!(format!("{c:?}").contains("ignored_statuses"));
    }

    #[test]
    fn default_sets() {
        let s = GrpcCodeSet::default();
        for c in GrpcCode::ALL {
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

    fn res(status: u16, headers: &[(&str, &str)]) -> Response<()> {
        let mut b = Response::builder().status(status);
        for (k, v) in headers {
            b = b.header(*k, *v);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn http_classification() {
        let c = Classifier::default();
        assert_eq!(
            c.classify_response(&res(200, &[])),
            Classification::Done(Outcome::Success)
        );
        assert_eq!(
            c.classify_response(&res(404, &[])),
            Classification::Done(Outcome::Success)
        );
        assert_eq!(
            c.classify_response(&res(500, &[])),
            Classification::Done(Outcome::Failure)
        );
        assert_eq!(
            c.classify_response(&res(599, &[])),
            Classification::Done(Outcome::Failure)
        );
        let c = c.http_failures(StatusSet::empty().with(StatusCode::TOO_MANY_REQUESTS));
        assert_eq!(
            c.classify_response(&res(429, &[])),
            Classification::Done(Outcome::Failure)
        );
        assert_eq!(
            c.classify_response(&res(503, &[])),
            Classification::Done(Outcome::Success)
        );
    }

    #[test]
    fn grpc_classification_from_headers() {
        let c = Classifier::default();
        let grpc = |status: &str| {
            res(
                200,
                &[
                    ("content-type", "application/grpc+proto"),
                    ("grpc-status", status),
                ],
            )
        };
        assert_eq!(
            c.classify_response(&grpc("0")),
            Classification::Done(Outcome::Success)
        );
        assert_eq!(
            c.classify_response(&grpc("5")),
            Classification::Done(Outcome::Success)
        );
        assert_eq!(
            c.classify_response(&grpc("14")),
            Classification::Done(Outcome::Failure)
        );
        assert_eq!(
            c.classify_response(&grpc("garbage")),
            Classification::Done(Outcome::Failure)
        );
        assert_eq!(
            c.classify_response(&res(200, &[("content-type", "application/grpc")])),
            Classification::AwaitTrailers
        );
        // A gRPC content type on a non-200 response is judged as HTTP.
        assert_eq!(
            c.classify_response(&res(502, &[("content-type", "application/grpc")])),
            Classification::Done(Outcome::Failure)
        );
        let custom = c.grpc_failures(GrpcCodeSet::empty().with(GrpcCode::NotFound));
        assert_eq!(
            custom.classify_response(&grpc("5")),
            Classification::Done(Outcome::Failure)
        );
        assert_eq!(
            custom.classify_response(&grpc("14")),
            Classification::Done(Outcome::Success)
        );
    }

    #[test]
    fn trailers() {
        let c = Classifier::default();
        let mut t = HeaderMap::new();
        assert_eq!(c.classify_trailers(Some(&t)), Outcome::Failure);
        assert_eq!(c.classify_trailers(None), Outcome::Failure);
        t.insert("grpc-status", HeaderValue::from_static("0"));
        assert_eq!(c.classify_trailers(Some(&t)), Outcome::Success);
        t.insert("grpc-status", HeaderValue::from_static("4"));
        assert_eq!(c.classify_trailers(Some(&t)), Outcome::Failure);
    }

    fn recorder() -> (
        Arc<Mutex<Vec<Outcome>>>,
        impl FnOnce(Outcome) + Send + 'static,
    ) {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let sink = seen.clone();
        (seen, move |o| sink.lock().unwrap().push(o))
    }

    /// A body that yields one data frame, then the given trailers.
    struct WithTrailers(Option<Bytes>, Option<HeaderMap>);
    impl Body for WithTrailers {
        type Data = Bytes;
        type Error = std::io::Error;
        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            if let Some(d) = self.0.take() {
                return Poll::Ready(Some(Ok(Frame::data(d))));
            }
            Poll::Ready(self.1.take().map(|t| Ok(Frame::trailers(t))))
        }
    }

    #[tokio::test]
    async fn body_reports_trailers_once() {
        let mut t = HeaderMap::new();
        t.insert("grpc-status", HeaderValue::from_static("13"));
        let (seen, sink) = recorder();
        let body = ClassifyBody::deferred(
            WithTrailers(Some(Bytes::from_static(b"hi")), Some(t)),
            GrpcCodeSet::default(),
            sink,
        );
        let collected = body.collect().await.unwrap();
        assert_eq!(collected.trailers().unwrap()["grpc-status"], "13");
        assert_eq!(*seen.lock().unwrap(), vec![Outcome::Failure]);

        let mut ok = HeaderMap::new();
        ok.insert("grpc-status", HeaderValue::from_static("0"));
        let (seen, sink) = recorder();
        let body =
            ClassifyBody::deferred(WithTrailers(None, Some(ok)), GrpcCodeSet::default(), sink);
        body.collect().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![Outcome::Success]);
    }

    #[tokio::test]
    async fn body_without_status_fails_and_drop_is_ignored() {
        let (seen, sink) = recorder();
        let body = ClassifyBody::deferred(
            Full::new(Bytes::from_static(b"x")),
            GrpcCodeSet::default(),
            sink,
        );
        body.collect().await.unwrap();
        assert_eq!(*seen.lock().unwrap(), vec![Outcome::Failure]);

        let (seen, sink) = recorder();
        let body = ClassifyBody::deferred(
            Full::new(Bytes::from_static(b"x")),
            GrpcCodeSet::default(),
            sink,
        );
        drop(body);
        assert_eq!(*seen.lock().unwrap(), vec![Outcome::Ignored]);

        let (seen, sink) = recorder();
        let mut body = ClassifyBody::deferred(
            Full::new(Bytes::from_static(b"x")),
            GrpcCodeSet::default(),
            sink,
        );
        // One data frame read, then the client goes away.
        let _ = body.frame().await;
        drop(body);
        assert_eq!(*seen.lock().unwrap(), vec![Outcome::Ignored]);
    }

    #[tokio::test]
    async fn passthrough_reports_nothing() {
        let body: ClassifyBody<_, fn(Outcome)> =
            ClassifyBody::passthrough(Full::new(Bytes::from_static(b"abc")));
        assert_eq!(body.size_hint().exact(), Some(3));
        let data = body.collect().await.unwrap().to_bytes();
        assert_eq!(&data[..], b"abc");
    }
}
