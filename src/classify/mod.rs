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
//!
//! One classifier per file, as in tower-http's `classify`: this file holds
//! the [`Outcome`], the [`Classification`] and the [`Classifier`] that
//! combines the rules; `status.rs` the HTTP [`StatusSet`]; `grpc.rs` the
//! [`GrpcCodeSet`] and the verdict of a gRPC status or trailers; `body.rs`
//! the [`ClassifyBody`] that waits for the trailers of a streaming gRPC
//! response. The gRPC vocabulary itself ([`GrpcCode`], [`is_grpc`]) lives in
//! the leaf [`grpc`](crate::grpc) module and is re-exported here.

mod body;
mod grpc;
mod status;

use std::fmt;
use std::sync::Arc;

use http::{HeaderMap, Response, StatusCode};

pub use self::body::{ClassifyBody, OnOutcome};
pub use self::grpc::GrpcCodeSet;
pub use self::status::StatusSet;
pub use crate::grpc::{GrpcCode, is_grpc};

use self::grpc::{classify_grpc, classify_trailers};
use crate::grpc::GRPC_STATUS;

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
            return match crate::util::header::get(headers, &GRPC_STATUS) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use http::HeaderValue;

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
}
