//! The bridge from hyper's connection to the tower service: peer address,
//! `Connection: close` once shutdown is requested, request accounting for
//! the idle timeout.

use std::cell::RefCell;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use http::{HeaderValue, Request, Response, Version, header};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use pin_project_lite::pin_project;
use tower::{BoxError, Service};

use super::conn::{Active, ConnShared};
use crate::shutdown::{Owed, Phase};

/// The service hyper calls for one connection.
///
/// hyper calls it through `&self`; tower services need `&mut self` and
/// readiness. When the service is ready at once (axum's `Router`, tonic's
/// `Routes` and most stacks always are), it is called in place: no clone of
/// the service per request. Otherwise a clone waits for readiness in the
/// response future, as `tower::util::Oneshot` would.
pub(crate) struct HyperService<S> {
    inner: RefCell<S>,
    conn: Arc<ConnShared>,
    /// The extensions every request on this connection gets, cloned into
    /// each ([`extensions`]).
    extensions: http::Extensions,
}

/// The extensions every request on a connection from `peer` gets: the
/// peer (as a `SocketAddr` and, with the `axum` feature, as axum's
/// `ConnectInfo`) and the drain's [`Owed`] marker.
///
/// Built once per connection, in a map grown to eight buckets, and cloned
/// into each request (a clone keeps the map's size): inserted one by one,
/// the map starts with room for three, and a router's own entries (axum
/// adds `MatchedPath` and its path parameters) made it grow, a second
/// table and a rehash, on every request. ~300 fewer server instructions
/// per request (`benches/README.md`, "The request's extensions").
fn extensions(peer: SocketAddr) -> http::Extensions {
    /// Placeholders that grow the map, removed again.
    #[derive(Clone, Copy)]
    struct Room<const N: usize>;
    let mut ext = http::Extensions::new();
    ext.insert(peer);
    #[cfg(feature = "axum")]
    ext.insert(axum::extract::ConnectInfo(peer));
    // This loop closes its connections gracefully once draining starts
    // (the listener first): a request that still arrives on one is owed
    // an answer, not the drain layer's refusal. Set on every request: the
    // phase may change before the drain layer runs.
    ext.insert(Owed);
    ext.insert(Room::<0>);
    ext.insert(Room::<1>);
    ext.insert(Room::<2>);
    ext.insert(Room::<3>);
    ext.remove::<Room<0>>();
    ext.remove::<Room<1>>();
    ext.remove::<Room<2>>();
    ext.remove::<Room<3>>();
    ext
}

impl<S> HyperService<S> {
    pub(crate) fn new(inner: S, peer: SocketAddr, conn: Arc<ConnShared>) -> Self {
        Self {
            inner: RefCell::new(inner),
            conn,
            extensions: extensions(peer),
        }
    }
}

impl<S, B> hyper::service::Service<Request<Incoming>> for HyperService<S>
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone,
    S::Error: Into<BoxError>,
{
    type Response = Response<ServeBody<B>>;
    type Error = BoxError;
    type Future = ResponseFuture<S>;

    fn call(&self, mut req: Request<Incoming>) -> Self::Future {
        let http1 = req.version() <= Version::HTTP_11;
        self.conn.seen(http1);
        req.extensions_mut().extend(self.extensions.clone());
        let active = self.conn.start();
        let mut inner = self.inner.borrow_mut();
        let mut cx = Context::from_waker(Waker::noop());
        let state = match inner.poll_ready(&mut cx) {
            Poll::Ready(Ok(())) => State::Called {
                future: inner.call(req),
            },
            Poll::Ready(Err(e)) => State::Failed {
                error: Some(e.into()),
            },
            Poll::Pending => State::NotReady {
                service: inner.clone(),
                request: Some(req),
            },
        };
        ResponseFuture {
            state,
            active: Some(active),
            http1,
        }
    }
}

pin_project! {
    #[project = StateProj]
    enum State<S: Service<Request<Incoming>>> {
        Called { #[pin] future: S::Future },
        NotReady { service: S, request: Option<Request<Incoming>> },
        Failed { error: Option<BoxError> },
    }
}

pin_project! {
    /// The response future of [`HyperService`].
    pub(crate) struct ResponseFuture<S: Service<Request<Incoming>>> {
        #[pin]
        state: State<S>,
        active: Option<Active>,
        http1: bool,
    }
}

impl<S, B> Future for ResponseFuture<S>
where
    S: Service<Request<Incoming>, Response = Response<B>>,
    S::Error: Into<BoxError>,
{
    type Output = Result<Response<ServeBody<B>>, BoxError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let result = loop {
            match this.state.as_mut().project() {
                StateProj::Called { future } => {
                    break std::task::ready!(future.poll(cx)).map_err(Into::into);
                }
                StateProj::NotReady { service, request } => {
                    if let Err(e) = std::task::ready!(service.poll_ready(cx)) {
                        break Err(e.into());
                    }
                    let req = request.take().expect("polled after completion");
                    let future = service.call(req);
                    this.state.set(State::Called { future });
                }
                StateProj::Failed { error } => {
                    break Err(error.take().expect("polled after completion"));
                }
            }
        };
        let active = this.active.take().expect("polled after completion");
        // Once shutdown is requested, HTTP/1 clients are told to move to
        // another instance by themselves.
        let close = *this.http1 && active.phase() >= Phase::ShutdownRequested;
        Poll::Ready(result.map(|res| {
            let mut res = res.map(|inner| ServeBody {
                inner,
                _active: active,
            });
            if close {
                res.headers_mut()
                    .insert(header::CONNECTION, HeaderValue::from_static("close"));
            }
            res
        }))
    }
}

pin_project! {
    /// The response body: the service's body, counted as a request in
    /// progress on its connection until it ends or is dropped.
    pub(crate) struct ServeBody<B> {
        #[pin]
        inner: B,
        _active: Active,
    }
}

impl<B: Body> Body for ServeBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    #[inline]
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().inner.poll_frame(cx)
    }

    #[inline]
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    #[inline]
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
