//! The verdict of a streaming gRPC response, read from its trailers when
//! the body ends.

use std::fmt;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::grpc::classify_trailers;
use super::{GrpcCodeSet, Outcome};

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
    use http::{HeaderMap, HeaderValue};
    use http_body_util::{BodyExt, Full};
    use std::sync::{Arc, Mutex};

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
