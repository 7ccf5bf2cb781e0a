//! The request deadline: the [`Deadline`] request extension handlers read,
//! and the budget headers it is read from. The `grpc-timeout` parsing and
//! formatting live in the leaf [`grpc`](crate::grpc) module and are
//! re-exported here at their former paths.

use std::cell::Cell;
use std::fmt;
use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Request};
use tokio::time::Instant;

pub use crate::grpc::{GRPC_TIMEOUT, format_grpc_timeout, parse_grpc_timeout};

/// When the work for a request must be finished.
///
/// The timeout layer puts one into the request extensions (unless told not
/// to, see
/// [`TimeoutLayerBuilder::deadline_extension`](super::TimeoutLayerBuilder::deadline_extension)):
/// the earliest of the layer's own maximum, the caller's budget (less the
/// safety margin) and the deadline of any outer timeout layer. Handlers read
/// it to bound their own downstream calls, so that work stops when nobody is
/// waiting for it any more:
///
/// ```
/// use std::time::Duration;
/// use http::{HeaderMap, Request};
/// use tower_rampart::timeout::Deadline;
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// # let mut req = Request::new(());
/// # req.extensions_mut().insert(Deadline::after(Duration::from_secs(2)));
/// // In a handler (axum: `Extension(deadline): Extension<Deadline>`).
/// let deadline = Deadline::of(&req).expect("behind a timeout layer");
///
/// // Tell the downstream service how long it has...
/// let mut outbound = HeaderMap::new();
/// deadline.insert_grpc_timeout(&mut outbound);
/// deadline.insert_millis(&mut outbound, http::HeaderName::from_static("x-request-timeout-ms"));
/// assert!(outbound.contains_key("grpc-timeout"));
///
/// // ...and stop waiting for it when the time is up.
/// let answer = deadline.bound(async { 42 }).await;
/// assert_eq!(answer.ok(), Some(42));
/// # }
/// ```
///
/// A deadline also says whose budget it is ([`DeadlineSource`]): the
/// server's own (a timeout layer's configured maximum) or the caller's (a
/// `grpc-timeout` or budget header). When the time runs out, only the
/// server's own budget makes the timeout count against the service in a
/// circuit breaker. Deadlines order by instant; at the same instant the
/// server's comes first (the service was as late as its own limit allows).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline {
    /// The instant, as nanoseconds of tokio's clock since the process's
    /// base (`util::clock`): what the stack reads its clock as, so that the
    /// request path adds and compares integers, not `Instant`s (seconds and
    /// nanoseconds, normalised on every addition). Exact both ways for any
    /// instant a timeout can name; ordered as the instants are.
    at: u64,
    source: DeadlineSource,
}

impl fmt::Debug for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Deadline")
            .field("at", &self.instant())
            .field("source", &self.source)
            .finish()
    }
}

/// Whose budget a [`Deadline`] is.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DeadlineSource {
    /// The server's own: a timeout layer's configured maximum, or a deadline
    /// built by the application. Running out of it is the service's fault.
    Server,
    /// The caller's: its `grpc-timeout` or budget header (less the safety
    /// margin) was shorter than the server's own limit. Running out of it is
    /// not the service's fault.
    Caller,
}

impl DeadlineSource {
    /// A stable lowercase name (`server`, `caller`), used as a metrics label.
    pub const fn as_str(self) -> &'static str {
        match self {
            DeadlineSource::Server => "server",
            DeadlineSource::Caller => "caller",
        }
    }
}

impl Deadline {
    /// The server's deadline at `instant`.
    ///
    /// Held as nanoseconds of the crate's clock, whose zero is ten years
    /// before the process first read it (or that first reading, where the
    /// platform's instants cannot go that far back): an instant earlier
    /// than that is kept as that zero, a deadline long passed either way.
    #[inline]
    pub fn at(instant: Instant) -> Self {
        Self::from_nanos(crate::util::clock::to_nanos(instant))
    }

    /// The server's deadline at `at` nanoseconds of the crate's clock
    /// (`util::clock::now_nanos`).
    #[inline]
    pub(crate) fn from_nanos(at: u64) -> Self {
        Self {
            at,
            source: DeadlineSource::Server,
        }
    }

    /// The instant as nanoseconds of the crate's clock.
    #[inline]
    pub(crate) fn nanos(&self) -> u64 {
        self.at
    }

    /// The server's deadline `budget` from now (saturating far in the
    /// future).
    pub fn after(budget: Duration) -> Self {
        let now = crate::util::clock::to_nanos(Instant::now());
        Self::from_nanos(nanos_after(now, budget))
    }

    /// The same instant, attributed to `source`.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_rampart::timeout::{Deadline, DeadlineSource};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let server = Deadline::after(Duration::from_secs(1));
    /// assert_eq!(server.source(), DeadlineSource::Server);
    /// let caller = server.with_source(DeadlineSource::Caller);
    /// assert_eq!(caller.instant(), server.instant());
    /// // At the same instant the server's budget binds.
    /// assert_eq!(caller.min(server), server);
    /// # }
    /// ```
    #[inline]
    #[must_use]
    pub fn with_source(self, source: DeadlineSource) -> Self {
        Self { source, ..self }
    }

    /// Whose budget this is.
    #[inline]
    pub fn source(&self) -> DeadlineSource {
        self.source
    }

    /// The deadline of `req`: the earlier of the one in its extensions (a
    /// layer built with
    /// [`deadline_extension(true)`](super::TimeoutLayerBuilder::deadline_extension),
    /// or put there by the application) and [`Deadline::current`].
    #[inline]
    pub fn of<B>(req: &Request<B>) -> Option<Self> {
        match (req.extensions().get::<Self>().copied(), Self::current()) {
            (Some(ext), Some(current)) => Some(ext.min(current)),
            (ext, current) => ext.or(current),
        }
    }

    /// The deadline of the innermost timeout layer whose service is running
    /// on this thread right now: set while the layer calls its inner
    /// service and while it polls the inner response future, so a handler
    /// (and everything it awaits in place, an inner timeout layer
    /// included) reads it without the request at hand and without an
    /// allocation. `None` outside a timeout layer, and in a task the handler
    /// spawns (copy the value into it).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower::{Layer, Service, ServiceExt, BoxError};
    /// use tower_rampart::timeout::{Deadline, TimeoutLayer};
    ///
    /// # #[tokio::main(flavor = "current_thread", start_paused = true)]
    /// # async fn main() {
    /// let layer = TimeoutLayer::new(Duration::from_secs(2)).unwrap().into_error_mode();
    /// let mut svc = layer.layer(tower::service_fn(|_req: http::Request<()>| async {
    ///     let left = Deadline::current().map(|d| d.remaining());
    ///     Ok::<_, BoxError>(http::Response::new(format!("{left:?}")))
    /// }));
    /// let res = svc.ready().await.unwrap().call(http::Request::new(())).await.unwrap();
    /// assert_eq!(res.into_body(), "Some(2s)");
    /// assert_eq!(Deadline::current(), None);
    /// # }
    /// ```
    #[inline]
    pub fn current() -> Option<Self> {
        CURRENT.with(Cell::get)
    }

    /// The instant the work must be finished by.
    #[inline]
    pub fn instant(&self) -> Instant {
        crate::util::clock::instant_at(self.at)
    }

    /// The time left, zero once the deadline has passed.
    pub fn remaining(&self) -> Duration {
        self.instant().saturating_duration_since(Instant::now())
    }

    /// Whether the deadline has passed.
    pub fn is_expired(&self) -> bool {
        self.instant() <= Instant::now()
    }

    /// The earlier of two deadlines.
    #[inline]
    #[must_use]
    pub fn min(self, other: Self) -> Self {
        std::cmp::min(self, other)
    }

    /// Bounds `future` by this deadline: it resolves to `Err(Elapsed)` (and
    /// `future` is dropped) if it is not finished in time.
    pub fn bound<F: std::future::Future>(&self, future: F) -> tokio::time::Timeout<F> {
        tokio::time::timeout_at(self.instant(), future)
    }

    /// The remaining budget as a `grpc-timeout` value (rounded up to the
    /// finest unit that fits in 8 digits; `0n` once expired).
    pub fn grpc_timeout(&self) -> HeaderValue {
        format_grpc_timeout(self.remaining())
    }

    /// Writes the remaining budget as `grpc-timeout` into `headers` (an
    /// outbound gRPC request's), replacing any value there. With tonic,
    /// `tonic::Request::set_timeout(deadline.remaining())` does the same.
    pub fn insert_grpc_timeout(&self, headers: &mut HeaderMap) {
        headers.insert(GRPC_TIMEOUT, self.grpc_timeout());
    }

    /// Writes the remaining budget in whole milliseconds (rounded down, so a
    /// downstream never believes it has more time than there is) into the
    /// header `name` of an outbound request, replacing any value there.
    pub fn insert_millis(&self, headers: &mut HeaderMap, name: HeaderName) {
        let ms = u64::try_from(self.remaining().as_millis()).unwrap_or(u64::MAX);
        headers.insert(name, crate::util::digits::header_value(ms));
    }
}

/// An axum extractor: the handler's [`Deadline::current`] (or the one in
/// the request extensions). A handler not behind a timeout layer is a
/// routing mistake, answered with 500 and a short body.
///
/// ```
/// use tower_rampart::timeout::Deadline;
///
/// async fn handler(deadline: Deadline) -> String {
///     format!("{} ms left", deadline.remaining().as_millis())
/// }
/// # let _ = axum::Router::<()>::new().route("/", axum::routing::get(handler));
/// ```
#[cfg(feature = "axum")]
impl<S: Send + Sync> axum::extract::FromRequestParts<S> for Deadline {
    type Rejection = (http::StatusCode, &'static str);

    async fn from_request_parts(
        parts: &mut http::request::Parts,
        _state: &S,
    ) -> Result<Self, Self::Rejection> {
        let ext = parts.extensions.get::<Self>().copied();
        match (ext, Self::current()) {
            (Some(ext), Some(current)) => Ok(ext.min(current)),
            (Some(d), None) | (None, Some(d)) => Ok(d),
            (None, None) => Err((
                http::StatusCode::INTERNAL_SERVER_ERROR,
                "no deadline: the handler is not behind a timeout layer",
            )),
        }
    }
}

thread_local! {
    static CURRENT: Cell<Option<Deadline>> = const { Cell::new(None) };
}

/// Makes `deadline` this thread's [`Deadline::current`] until the guard is
/// dropped (also on unwind), which restores the previous one. A guard
/// rather than a closure: what the caller computes in the scope (an inner
/// future, a poll's output) goes straight where it is used, not through a
/// closure's return value (one copy fewer of a future per request).
#[inline]
pub(crate) fn enter(deadline: Deadline) -> Scope {
    Scope(CURRENT.with(|c| c.replace(Some(deadline))))
}

/// The scope of [`enter`]: restores the previous deadline when dropped.
#[must_use = "the deadline is current only while the guard lives"]
pub(crate) struct Scope(Option<Deadline>);

impl Drop for Scope {
    #[inline]
    fn drop(&mut self) {
        CURRENT.with(|c| c.set(self.0));
    }
}

/// A request the timeout layer can read a caller's budget from and hand a
/// [`Deadline`] to.
///
/// Implemented for [`http::Request`]: the budget comes from its headers, the
/// deadline goes into its extensions. To put the layer in front of a
/// service whose requests are not HTTP, implement it for the request type;
/// the provided methods carry nothing, so an empty `impl` gives a plain
/// timeout:
///
/// ```
/// use std::time::Duration;
/// use tower::{Service, ServiceExt, Layer, BoxError};
/// use tower_rampart::timeout::{DeadlineCarrier, TimeoutLayer, is_timeout};
///
/// struct Query(u32);
/// impl DeadlineCarrier for Query {}
///
/// # #[tokio::main(flavor = "current_thread", start_paused = true)]
/// # async fn main() {
/// let layer = TimeoutLayer::new(Duration::from_millis(100)).unwrap().into_error_mode();
/// let mut svc = layer.layer(tower::service_fn(|Query(n): Query| async move {
///     tokio::time::sleep(Duration::from_secs(n.into())).await;
///     Ok::<_, BoxError>(n)
/// }));
/// let err = svc.ready().await.unwrap().call(Query(5)).await.unwrap_err();
/// assert!(is_timeout(err.as_ref()));
/// # }
/// ```
pub trait DeadlineCarrier {
    /// The headers carrying the caller's budget, if any.
    #[inline]
    fn budget_headers(&self) -> Option<&HeaderMap> {
        None
    }

    /// A deadline already attached by an outer layer, if any (by default
    /// the outer layer's [`Deadline::current`]).
    #[inline]
    fn deadline(&self) -> Option<Deadline> {
        Deadline::current()
    }

    /// Attaches the effective deadline to a request that carries none.
    #[inline]
    fn set_deadline(&mut self, deadline: Deadline) {
        let _ = deadline;
    }

    /// Replaces the deadline an outer layer attached (the request's
    /// [`deadline`](Self::deadline) was `Some`). By default the same as
    /// [`set_deadline`](Self::set_deadline).
    #[inline]
    fn replace_deadline(&mut self, deadline: Deadline) {
        self.set_deadline(deadline);
    }
}

impl<B> DeadlineCarrier for Request<B> {
    #[inline]
    fn budget_headers(&self) -> Option<&HeaderMap> {
        Some(self.headers())
    }

    #[inline]
    fn deadline(&self) -> Option<Deadline> {
        Deadline::of(self)
    }

    #[inline]
    fn set_deadline(&mut self, deadline: Deadline) {
        self.extensions_mut().insert(deadline);
    }

    #[inline]
    fn replace_deadline(&mut self, deadline: Deadline) {
        // Overwrite the outer layer's value in place: no allocation.
        match self.extensions_mut().get_mut::<Deadline>() {
            Some(slot) => *slot = deadline,
            None => self.set_deadline(deadline),
        }
    }
}

/// The longest budget a deadline is set by: about 30 years, later than any
/// timeout that matters (a client may send `99999999H`, about 11 400
/// years).
const MAX_BUDGET_NANOS: u64 = 30 * 365 * 86_400 * 1_000_000_000;

/// `now + budget` in the crate clock's nanoseconds, the budget capped at
/// [`MAX_BUDGET_NANOS`].
#[inline]
pub(crate) fn nanos_after(now: u64, budget: Duration) -> u64 {
    let budget =
        u64::try_from(budget.as_nanos()).map_or(MAX_BUDGET_NANOS, |n| n.min(MAX_BUDGET_NANOS));
    now.saturating_add(budget)
}

/// Parses a budget header carrying whole milliseconds (ASCII digits only, at
/// most 12 of them, about 31 years).
pub(crate) fn parse_millis(value: &[u8]) -> Option<Duration> {
    crate::util::digits::parse_u64(value, 12).map(Duration::from_millis)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn millis() {
        assert_eq!(parse_millis(b"0"), Some(Duration::ZERO));
        assert_eq!(parse_millis(b"1500"), Some(Duration::from_millis(1500)));
        for bad in [
            &b""[..],
            b"-1",
            b"+1",
            b"1.5",
            b" 1",
            b"1 ",
            b"1ms",
            b"9999999999999",
        ] {
            assert_eq!(parse_millis(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn saturating_budgets() {
        let now = crate::util::clock::to_nanos(Instant::now());
        assert_eq!(nanos_after(now, Duration::MAX), now + MAX_BUDGET_NANOS);
        assert_eq!(nanos_after(now, Duration::ZERO), now);
        assert_eq!(
            nanos_after(now, Duration::from_millis(1500)),
            now + 1_500_000_000
        );
        assert_eq!(nanos_after(u64::MAX - 1, Duration::from_secs(1)), u64::MAX);
    }

    /// A deadline keeps its instant exactly, orders as its instants do (the
    /// server's first at the same instant), and shows the instant.
    #[tokio::test(start_paused = true)]
    async fn instants_round_trip_and_order() {
        let now = Instant::now();
        for d in [
            Duration::ZERO,
            Duration::from_nanos(1),
            Duration::from_millis(250),
            Duration::from_secs(86_400 * 365),
        ] {
            assert_eq!(Deadline::at(now + d).instant(), now + d);
        }
        let soon = Deadline::at(now + Duration::from_millis(1));
        let later = Deadline::at(now + Duration::from_millis(2));
        assert!(soon < later);
        assert!(soon < soon.with_source(DeadlineSource::Caller));
        assert_eq!(soon.min(later), soon);
        assert_eq!(Deadline::after(Duration::from_millis(1)), soon);
        assert_eq!(soon.remaining(), Duration::from_millis(1));
        assert!(!soon.is_expired());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(soon.is_expired());
        assert!(format!("{soon:?}").contains("Instant"));
    }
}
