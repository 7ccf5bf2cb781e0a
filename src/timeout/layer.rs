//! [`TimeoutLayer`] and its builder.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use http::{HeaderName, StatusCode};
use tower::Layer;

use super::deadline::DeadlineSource;
use super::error::TimeoutCause;
use super::state::Shared;
use super::{Timeout, TimeoutConfig};
use crate::ConfigError;
use crate::rejection::{ErrorMode, HttpMode};
use crate::util::lanes::Laned;

/// The default layer name (the `name` label of metrics and events).
pub const DEFAULT_NAME: &str = "timeout";

/// Bounds the time to a response and propagates the caller's deadline.
///
/// Built with [`TimeoutLayer::new`] or [`TimeoutLayer::builder`]. Every
/// service it builds shares one state (settings and metric handles), so
/// applying it with axum's `Router::layer` costs nothing per route. See the
/// [module docs](super) for what it does.
pub struct TimeoutLayer<M = HttpMode> {
    shared: Arc<Laned<Shared>>,
    _mode: PhantomData<fn() -> M>,
}

impl TimeoutLayer {
    /// A layer named `"timeout"` that answers after at most `timeout`,
    /// honouring a shorter `grpc-timeout` from gRPC callers and putting the
    /// [`Deadline`](super::Deadline) into the request extensions.
    ///
    /// Fails if `timeout` is zero.
    pub fn new(timeout: Duration) -> Result<Self, ConfigError> {
        Self::builder().timeout(timeout).build()
    }

    /// A builder for every setting.
    pub fn builder() -> TimeoutLayerBuilder {
        TimeoutLayerBuilder::default()
    }
}

impl<M> TimeoutLayer<M> {
    /// Switches refusals to errors: the service returns a boxed
    /// [`Rejection`](crate::Rejection) of kind
    /// [`TimedOut`](crate::RejectionKind::TimedOut) in a
    /// `BoxError` instead of an HTTP or gRPC response.
    pub fn into_error_mode(self) -> TimeoutLayer<ErrorMode> {
        TimeoutLayer {
            shared: self.shared,
            _mode: PhantomData,
        }
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The server's maximum time to a response.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// The state every service of the layer shares (the stack's front
    /// decides with it).
    #[cfg(feature = "config")]
    pub(crate) fn shared(&self) -> &Arc<Laned<Shared>> {
        &self.shared
    }
}

impl<M> Clone for TimeoutLayer<M> {
    fn clone(&self) -> Self {
        Self {
            shared: self.shared.clone(),
            _mode: PhantomData,
        }
    }
}

impl<M> fmt::Debug for TimeoutLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TimeoutLayer")
            .field("name", &self.shared.name)
            .field("timeout", &self.shared.timeout)
            .field("safety_margin", &self.shared.safety_margin)
            .field("grpc_timeout", &self.shared.grpc_timeout)
            .field("budget_header", &self.shared.budget_header)
            .field("status", &self.shared.status)
            .field("deadline_extension", &self.shared.deadline_extension)
            .finish()
    }
}

impl<S, M> Layer<S> for TimeoutLayer<M> {
    type Service = Timeout<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        Timeout::from_shared(inner, self.shared.clone())
    }
}

/// Builds a [`TimeoutLayer`], validating every setting.
///
/// ```
/// use std::time::Duration;
/// use http::{HeaderName, StatusCode};
/// use tower_rampart::timeout::TimeoutLayer;
///
/// let layer = TimeoutLayer::builder()
///     .name("payments")
///     .timeout(Duration::from_secs(2))
///     .safety_margin(Duration::from_millis(50))
///     .budget_header(HeaderName::from_static("x-request-timeout-ms"))
///     .status(StatusCode::SERVICE_UNAVAILABLE)
///     .build()
///     .unwrap();
/// assert_eq!(layer.name(), "payments");
///
/// let err = TimeoutLayer::builder()
///     .timeout(Duration::from_millis(100))
///     .safety_margin(Duration::from_millis(100))
///     .build()
///     .unwrap_err();
/// assert_eq!(err.field(), "safety_margin");
/// ```
#[derive(Debug, Clone)]
pub struct TimeoutLayerBuilder {
    config: TimeoutConfig,
    timeout_set: bool,
}

impl Default for TimeoutLayerBuilder {
    fn default() -> Self {
        Self {
            config: TimeoutConfig::unset(),
            timeout_set: false,
        }
    }
}

impl TimeoutLayerBuilder {
    /// The name that labels metrics and events (default `"timeout"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// The server's maximum time to a response (required, greater than 0,
    /// at most one hour).
    #[must_use]
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.config.timeout = timeout;
        self.timeout_set = true;
        self
    }

    /// Subtracted from the caller's budget (`grpc-timeout` or the
    /// [`budget_header`](Self::budget_header)) to leave time for the answer
    /// to travel back (default 0; must be less than `timeout`). It does not
    /// shorten the server's own `timeout`.
    #[must_use]
    pub fn safety_margin(mut self, margin: Duration) -> Self {
        self.config.safety_margin = Some(margin);
        self
    }

    /// Whether the `grpc-timeout` header of a gRPC request (`content-type:
    /// application/grpc*`) shortens the deadline (default `true`). Plain
    /// HTTP requests use the [`budget_header`](Self::budget_header).
    #[must_use]
    pub fn honor_grpc_timeout(mut self, honor: bool) -> Self {
        self.config.grpc_timeout = honor;
        self
    }

    /// A request header carrying the caller's budget in whole milliseconds
    /// (for example `x-request-timeout-ms`; default none). When both this
    /// and `grpc-timeout` are present the smaller budget wins.
    #[must_use]
    pub fn budget_header(mut self, name: HeaderName) -> Self {
        self.config.budget_header = Some(name.as_str().to_owned());
        self
    }

    /// The HTTP status of the answer (default 504 Gateway Timeout; 503 and
    /// 408 are common alternatives). gRPC callers always get
    /// `DEADLINE_EXCEEDED`. Must be a 4xx or 5xx status.
    #[must_use]
    pub fn status(mut self, status: StatusCode) -> Self {
        self.config.status = Some(status.as_u16());
        self
    }

    /// Whether the effective [`Deadline`](super::Deadline) is also put into
    /// the request extensions (default `false`).
    ///
    /// Handlers and inner timeout layers always see the deadline through
    /// [`Deadline::current`](super::Deadline::current) and
    /// [`Deadline::of`](super::Deadline::of), which cost nothing. Turn this
    /// on for code that can only read extensions (axum's
    /// `Extension<Deadline>`, a task spawned with the request): it costs one
    /// small allocation per request (http's `Extensions` boxes every value,
    /// and allocates its map on the first insert).
    #[must_use]
    pub fn deadline_extension(mut self, insert: bool) -> Self {
        self.config.deadline_extension = insert;
        self
    }

    /// Validates the settings and builds the layer (and registers its
    /// metrics with the installed recorder).
    pub fn build(self) -> Result<TimeoutLayer, ConfigError> {
        if !self.timeout_set {
            return Err(ConfigError::new("timeout", "must be set"));
        }
        TimeoutLayer::from_config(&self.config)
    }
}

impl TimeoutLayer {
    /// The layer of a config, validated first.
    pub(crate) fn from_config(config: &TimeoutConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let budget_header = config.budget_header()?;
        let status = config.status()?;
        crate::metrics_help::describe(super::METRICS);
        let name: Arc<str> = Arc::from(config.name.as_str());
        let counter = |cause: TimeoutCause, source: DeadlineSource| {
            metrics::counter!(
                "rampart_timeouts_total",
                "name" => name.to_string(),
                "cause" => cause.as_str(),
                "source" => source.as_str(),
            )
        };
        let counters = |cause| {
            [
                counter(cause, DeadlineSource::Server),
                counter(cause, DeadlineSource::Caller),
            ]
        };
        let shared = Shared {
            elapsed: counters(TimeoutCause::Elapsed),
            budget_spent: counters(TimeoutCause::BudgetSpent),
            name,
            timeout: config.timeout,
            safety_margin: config.safety_margin.unwrap_or_default(),
            grpc_timeout: config.grpc_timeout,
            budget_header,
            status,
            deadline_extension: config.deadline_extension,
        };
        Ok(TimeoutLayer {
            shared: Arc::new(Laned::new(shared)),
            _mode: PhantomData,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let b = || TimeoutLayer::builder().timeout(Duration::from_secs(1));
        let field = |r: Result<TimeoutLayer, ConfigError>| r.unwrap_err().field().to_owned();
        assert_eq!(field(TimeoutLayer::builder().build()), "timeout");
        assert_eq!(field(TimeoutLayer::new(Duration::ZERO)), "timeout");
        assert_eq!(field(b().name("").build()), "name");
        assert_eq!(
            field(b().safety_margin(Duration::from_secs(1)).build()),
            "safety_margin"
        );
        assert_eq!(
            field(b().safety_margin(Duration::from_secs(2)).build()),
            "safety_margin"
        );
        assert_eq!(field(b().status(StatusCode::OK).build()), "status");
        assert!(
            b().safety_margin(Duration::from_millis(999))
                .build()
                .is_ok()
        );
        assert!(b().status(StatusCode::REQUEST_TIMEOUT).build().is_ok());
    }
}
