//! The platform's endpoints (`/metrics`, `grpc.health.v1`), routed around
//! the protections by exact path.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use tower::{BoxError, Service};

use super::PlatformConfig;

/// The methods of `grpc.health.v1.Health`, matched exactly.
const GRPC_HEALTH_METHODS: [&str; 3] = [
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.health.v1.Health/List",
];

/// The exact paths that bypass the protections.
pub(crate) struct PlatformPaths {
    paths: Box<[Box<str>]>,
    grpc_health: bool,
}

impl PlatformPaths {
    pub(crate) fn new(config: &PlatformConfig) -> Self {
        Self {
            paths: config.paths.iter().map(|p| p.as_str().into()).collect(),
            grpc_health: config.grpc_health,
        }
    }

    /// Is `path` one of the platform's endpoints? Exact comparisons only
    /// (a length check first), no allocation.
    #[inline]
    pub(crate) fn matches(&self, path: &str) -> bool {
        self.paths.iter().any(|p| **p == *path)
            || (self.grpc_health
                && path.starts_with("/grpc.health.v1.Health/")
                && GRPC_HEALTH_METHODS.contains(&path))
    }
}

impl fmt::Debug for PlatformPaths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PlatformPaths")
            .field("paths", &self.paths)
            .field("grpc_health", &self.grpc_health)
            .finish()
    }
}

/// Sends the platform's endpoints (`platform.paths`, `grpc.health.v1`) to
/// `B`, the application with panic catching only, and every other request
/// to `P`, the application behind the protections. Made by
/// [`RampartLayer`](super::RampartLayer).
pub struct Platform<P, B> {
    protected: P,
    bypass: B,
    paths: Arc<PlatformPaths>,
}

impl<P, B> Platform<P, B> {
    pub(crate) fn new(protected: P, bypass: B, paths: Arc<PlatformPaths>) -> Self {
        Self {
            protected,
            bypass,
            paths,
        }
    }

    /// The protected service.
    pub fn get_ref(&self) -> &P {
        &self.protected
    }
}

impl<P: Clone, B: Clone> Clone for Platform<P, B> {
    fn clone(&self) -> Self {
        Self {
            protected: self.protected.clone(),
            bypass: self.bypass.clone(),
            paths: Arc::clone(&self.paths),
        }
    }
}

impl<P, B> fmt::Debug for Platform<P, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Platform")
            .field("paths", &self.paths)
            .finish_non_exhaustive()
    }
}

impl<P, B, ReqB, PB, BB> Service<Request<ReqB>> for Platform<P, B>
where
    P: Service<Request<ReqB>, Response = Response<PB>>,
    B: Service<Request<ReqB>, Response = Response<BB>, Error = P::Error>,
{
    type Response = Response<PlatformBody<PB, BB>>;
    type Error = P::Error;
    type Future = PlatformFuture<P::Future, B::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Either may take the next call. Both wrap clones of the same
        // application service, which axum and tonic keep always ready.
        match self.protected.poll_ready(cx)? {
            Poll::Ready(()) => self.bypass.poll_ready(cx),
            Poll::Pending => Poll::Pending,
        }
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if self.paths.matches(req.uri().path()) {
            PlatformFuture {
                inner: Either::Bypass {
                    future: self.bypass.call(req),
                },
            }
        } else {
            PlatformFuture {
                inner: Either::Protected {
                    future: self.protected.call(req),
                },
            }
        }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Platform`].
    pub struct PlatformFuture<P, B> {
        #[pin]
        inner: Either<P, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = EitherProj]
    enum Either<P, B> {
        Protected { #[pin] future: P },
        Bypass { #[pin] future: B },
    }
}

impl<P, B> fmt::Debug for PlatformFuture<P, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlatformFuture")
    }
}

impl<P, B, PB, BB, E> Future for PlatformFuture<P, B>
where
    P: Future<Output = Result<Response<PB>, E>>,
    B: Future<Output = Result<Response<BB>, E>>,
{
    type Output = Result<Response<PlatformBody<PB, BB>>, E>;

    #[inline]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().inner.project() {
            EitherProj::Protected { future } => future.poll(cx).map(|r| {
                r.map(|res| {
                    res.map(|body| PlatformBody {
                        inner: BodyEither::Protected { body },
                    })
                })
            }),
            EitherProj::Bypass { future } => future.poll(cx).map(|r| {
                r.map(|res| {
                    res.map(|body| PlatformBody {
                        inner: BodyEither::Bypass { body },
                    })
                })
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// The response body of [`Platform`]: the protected service's body or
    /// the platform endpoint's.
    pub struct PlatformBody<P, B> {
        #[pin]
        inner: BodyEither<P, B>,
    }
}

pin_project_lite::pin_project! {
    #[project = BodyProj]
    enum BodyEither<P, B> {
        Protected { #[pin] body: P },
        Bypass { #[pin] body: B },
    }
}

impl<P, B> fmt::Debug for PlatformBody<P, B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("PlatformBody")
    }
}

impl<P, B> Body for PlatformBody<P, B>
where
    P: Body<Data = Bytes>,
    P::Error: Into<BoxError>,
    B: Body<Data = Bytes>,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.project().inner.project() {
            BodyProj::Protected { body } => body.poll_frame(cx).map_err(Into::into),
            BodyProj::Bypass { body } => body.poll_frame(cx).map_err(Into::into),
        }
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        match &self.inner {
            BodyEither::Protected { body } => body.is_end_stream(),
            BodyEither::Bypass { body } => body.is_end_stream(),
        }
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        match &self.inner {
            BodyEither::Protected { body } => body.size_hint(),
            BodyEither::Bypass { body } => body.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_paths_only() {
        let p = PlatformPaths::new(&PlatformConfig::default());
        assert!(p.matches("/metrics"));
        for other in [
            "/metrics/",
            "/metrics/x",
            "/metricsx",
            "/metrics/../api/x",
            "/METRICS",
            "/",
            "",
            "/grpc.health.v1.Health/",
            "/grpc.health.v1.Health/Check/x",
            "/grpc.health.v1.Health/Other",
            "/grpc.health.v1.Healthz/Check",
        ] {
            assert!(!p.matches(other), "{other}");
        }
        for m in GRPC_HEALTH_METHODS {
            assert!(p.matches(m));
        }
        let p = PlatformPaths::new(&PlatformConfig {
            paths: vec![],
            grpc_health: false,
        });
        assert!(!p.matches("/metrics"));
        assert!(!p.matches("/grpc.health.v1.Health/Check"));
    }
}
