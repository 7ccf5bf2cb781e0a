//! [`ConcurrencyLimitLayer`] and its builder.

use std::any::TypeId;
use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use http::HeaderName;
use tower::Layer;

use super::ConcurrencyLimit;
use super::limit::{Fixed, Gradient2, LimitAlgorithm};
use super::partition::{Classifier, Criticality, Partitions, RequestInfo};
use super::queue::{Queue, QueueOrder};
use super::state::Shared;
use crate::ConfigError;
use crate::config_util::{HOUR, MINUTE, MUST_NOT_BE_EMPTY, at_most, positive};
use crate::rejection::{ErrorMode, HttpMode};
use crate::util::lanes::Laned;

/// The default layer name (the `name` label of metrics and events).
pub const DEFAULT_NAME: &str = "concurrency";

/// The default guaranteed shares of the classes, in thousandths:
/// `[sheddable, default, critical]`.
pub(crate) const DEFAULT_SHARES: [u32; 3] = [0, 300, 500];

/// The largest queue length accepted.
pub(crate) const MAX_QUEUE_LEN: usize = 100_000;

/// Admits at most *limit* requests in flight and refuses the rest at once.
///
/// Built with [`ConcurrencyLimitLayer::fixed`] or
/// [`ConcurrencyLimitLayer::builder`]. Every service it builds shares one
/// state (the limit, the in-flight count, the algorithm), so applying it
/// with axum's `Router::layer` gives one limit for the whole router. See
/// the [module docs](super) for what it does.
pub struct ConcurrencyLimitLayer<M = HttpMode> {
    shared: Arc<Laned<Shared>>,
    _mode: PhantomData<fn() -> M>,
}

impl ConcurrencyLimitLayer {
    /// A bulkhead: at most `limit` requests in flight (a `limit` of 0 is
    /// taken as 1), refusals at once, named `"concurrency"`.
    ///
    /// ```
    /// use tower_rampart::concurrency::ConcurrencyLimitLayer;
    ///
    /// let layer = ConcurrencyLimitLayer::fixed(64);
    /// assert_eq!(layer.limit(), 64);
    /// ```
    pub fn fixed(limit: usize) -> Self {
        Self::builder()
            .limit(Fixed::new(limit))
            .build()
            .expect("the default settings are valid")
    }

    /// A builder for every setting.
    pub fn builder() -> ConcurrencyLimitLayerBuilder {
        ConcurrencyLimitLayerBuilder::default()
    }
}

impl<M> ConcurrencyLimitLayer<M> {
    /// Switches refusals to errors: the service returns a boxed
    /// [`Rejection`](crate::Rejection) of kind
    /// [`Overloaded`](crate::RejectionKind::Overloaded) in a `BoxError`
    /// instead of an HTTP or gRPC response.
    pub fn into_error_mode(self) -> ConcurrencyLimitLayer<ErrorMode> {
        ConcurrencyLimitLayer {
            shared: self.shared,
            _mode: PhantomData,
        }
    }

    /// The layer's name.
    pub fn name(&self) -> &str {
        &self.shared.name
    }

    /// The limit currently published.
    pub fn limit(&self) -> usize {
        self.shared.limit()
    }

    /// Requests holding a slot now.
    pub fn in_flight(&self) -> usize {
        self.shared.in_flight()
    }

    /// Requests waiting in the queue now (0 without a queue).
    pub fn queued(&self) -> usize {
        self.shared.queue.as_ref().map_or(0, |q| q.len())
    }

    /// Requests of `class` holding a slot now (with partitions; otherwise
    /// every request is counted as [`Criticality::Default`] and this is
    /// [`in_flight`](Self::in_flight) for it, 0 for the others).
    pub fn in_flight_of(&self, class: Criticality) -> usize {
        match &self.shared.partitions {
            Some(p) => p.in_flight(class),
            None if class == Criticality::Default => self.in_flight(),
            None => 0,
        }
    }
}

impl<M> Clone for ConcurrencyLimitLayer<M> {
    fn clone(&self) -> Self {
        Self {
            shared: Arc::clone(&self.shared),
            _mode: PhantomData,
        }
    }
}

impl<M> fmt::Debug for ConcurrencyLimitLayer<M> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayer")
            .field("shared", &self.shared)
            .finish()
    }
}

impl<S, M> Layer<S> for ConcurrencyLimitLayer<M> {
    type Service = ConcurrencyLimit<S, M>;

    fn layer(&self, inner: S) -> Self::Service {
        ConcurrencyLimit::from_shared(inner, Arc::clone(&self.shared))
    }
}

impl<M> ConcurrencyLimitLayer<M> {
    /// The limit's state, for the stack's front (which admits requests
    /// itself rather than through a `ConcurrencyLimit` service).
    #[cfg(feature = "config")]
    pub(crate) fn shared(&self) -> &Arc<Laned<Shared>> {
        &self.shared
    }
}

/// Builds a [`ConcurrencyLimitLayer`], validating every setting.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::concurrency::{ConcurrencyLimitLayer, Criticality, Fixed, QueueOrder};
///
/// let layer = ConcurrencyLimitLayer::builder()
///     .name("api")
///     .limit(Fixed::new(100))
///     .retry_after(Duration::from_secs(2))
///     .queue(50, Duration::from_millis(20))
///     .queue_order(QueueOrder::Lifo)
///     .partition(Criticality::Critical, 0.5)
///     .criticality_header(http::HeaderName::from_static("x-criticality"))
///     .build()
///     .unwrap();
/// assert_eq!(layer.limit(), 100);
///
/// let err = ConcurrencyLimitLayer::builder()
///     .partition(Criticality::Critical, 0.8)
///     .partition(Criticality::Default, 0.5)
///     .build()
///     .unwrap_err();
/// assert_eq!(err.field(), "partitions");
/// ```
pub struct ConcurrencyLimitLayerBuilder {
    name: String,
    algorithm: Option<(Box<dyn LimitAlgorithm>, bool)>,
    retry_after: Duration,
    queue: Option<(usize, Duration)>,
    order: QueueOrder,
    shares: Option<[f64; 3]>,
    classifier: Classifier,
    header_max: Criticality,
}

impl Default for ConcurrencyLimitLayerBuilder {
    fn default() -> Self {
        Self {
            name: DEFAULT_NAME.to_owned(),
            algorithm: None,
            retry_after: Duration::from_secs(1),
            queue: None,
            order: QueueOrder::default(),
            shares: None,
            classifier: Classifier::None,
            header_max: Criticality::Default,
        }
    }
}

impl fmt::Debug for ConcurrencyLimitLayerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ConcurrencyLimitLayerBuilder")
            .field("name", &self.name)
            .field("algorithm_set", &self.algorithm.is_some())
            .field("retry_after", &self.retry_after)
            .field("queue", &self.queue)
            .field("order", &self.order)
            .field("shares", &self.shares)
            .field("classifier", &self.classifier)
            .field("header_max", &self.header_max)
            .finish()
    }
}

impl ConcurrencyLimitLayerBuilder {
    /// The name that labels metrics and events (default `"concurrency"`).
    #[must_use]
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }

    /// The limit algorithm (default: [`Gradient2`] with its defaults, as in
    /// the `[concurrency]` config section). A [`Fixed`] limit reads no clock
    /// and takes no lock when requests end.
    #[must_use]
    pub fn limit<A: LimitAlgorithm>(mut self, algorithm: A) -> Self {
        let fixed = TypeId::of::<A>() == TypeId::of::<Fixed>();
        self.algorithm = Some((Box::new(algorithm), fixed));
        self
    }

    /// `Retry-After` of the refusals (default 1 s; greater than 0, at most
    /// one hour): how long a refused client should wait.
    #[must_use]
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.retry_after = retry_after;
        self
    }

    /// Lets up to `max_len` requests (1 to 100 000) wait up to `max_wait`
    /// (greater than 0, at most one minute) for a slot instead of being
    /// refused at once. Keep `max_wait` short: a few RTTs.
    #[must_use]
    pub fn queue(mut self, max_len: usize, max_wait: Duration) -> Self {
        self.queue = Some((max_len, max_wait));
        self
    }

    /// Which waiter gets a freed slot first (default
    /// [`QueueOrder::Lifo`]).
    #[must_use]
    pub fn queue_order(mut self, order: QueueOrder) -> Self {
        self.order = order;
        self
    }

    /// Guarantees `class` a `share` (0.0 to 1.0) of the limit and turns
    /// partitions on. Classes not set keep their default share (critical
    /// 0.5, default 0.3, sheddable 0); the shares may add up to 1 at most.
    #[must_use]
    pub fn partition(mut self, class: Criticality, share: f64) -> Self {
        let shares = self
            .shares
            .get_or_insert_with(|| DEFAULT_SHARES.map(|s| f64::from(s) / 1000.0));
        shares[class.index()] = share;
        self
    }

    /// Reads each request's class from the header `name` (`critical`,
    /// `default` or `sheddable`; anything else is `default`) and turns
    /// partitions on with the default shares unless set. The header can
    /// only lower a request's class unless
    /// [`trust_criticality_header`](Self::trust_criticality_header) is set.
    #[must_use]
    pub fn criticality_header(mut self, name: HeaderName) -> Self {
        self.classifier = Classifier::Header {
            name,
            max: Criticality::Default,
        };
        self
    }

    /// Lets the criticality header select `critical` (default `false`:
    /// a request claiming `critical` counts as `default`). Only set it when
    /// a proxy you run sets the header and removes any value a client sent:
    /// otherwise any client can claim the critical share.
    #[must_use]
    pub fn trust_criticality_header(mut self, trust: bool) -> Self {
        self.header_max = if trust {
            Criticality::Critical
        } else {
            Criticality::Default
        };
        self
    }

    /// Chooses each request's class with a closure (over its headers and
    /// extensions, where an authentication layer may have put the caller's
    /// identity), and turns partitions on with the default shares unless
    /// set.
    ///
    /// ```
    /// use tower_rampart::concurrency::{ConcurrencyLimitLayer, Criticality};
    ///
    /// #[derive(Clone)]
    /// struct Tenant { batch: bool }
    ///
    /// let layer = ConcurrencyLimitLayer::builder()
    ///     .classify(|req| match req.extensions.get::<Tenant>() {
    ///         Some(t) if t.batch => Criticality::Sheddable,
    ///         Some(_) => Criticality::Critical,
    ///         None => Criticality::Default,
    ///     })
    ///     .build()
    ///     .unwrap();
    /// # let _ = layer;
    /// ```
    #[must_use]
    pub fn classify<F>(mut self, f: F) -> Self
    where
        F: Fn(&RequestInfo<'_>) -> Criticality + Send + Sync + 'static,
    {
        self.classifier = Classifier::custom(f);
        self
    }

    /// Validates the settings and builds the layer (and registers its
    /// metrics with the installed recorder).
    pub fn build(self) -> Result<ConcurrencyLimitLayer, ConfigError> {
        if self.name.is_empty() {
            return Err(ConfigError::new("name", MUST_NOT_BE_EMPTY));
        }
        positive("retry_after", self.retry_after)?;
        at_most("retry_after", self.retry_after, HOUR)?;
        let queue = match self.queue {
            None => None,
            Some((max_len, max_wait)) => {
                if max_len == 0 || max_len > MAX_QUEUE_LEN {
                    return Err(ConfigError::new(
                        "queue.max_len",
                        format!("must be between 1 and {MAX_QUEUE_LEN} (found {max_len})"),
                    ));
                }
                positive("queue.max_wait", max_wait)?;
                at_most("queue.max_wait", max_wait, MINUTE)?;
                Some(Queue::new(max_len, max_wait, self.order))
            }
        };
        let shares = match (self.shares, &self.classifier) {
            (Some(s), _) => Some(s),
            (None, Classifier::None) => None,
            (None, _) => Some(DEFAULT_SHARES.map(|s| f64::from(s) / 1000.0)),
        };
        let partitions = match shares {
            None => None,
            Some(shares) => Some(Partitions::new(
                validate_shares(shares)?,
                match self.classifier {
                    Classifier::Header { name, .. } => Classifier::Header {
                        name,
                        max: self.header_max,
                    },
                    other => other,
                },
            )),
        };
        let (algorithm, fixed) = match self.algorithm {
            Some(a) => a,
            None => (
                Box::new(Gradient2::default()) as Box<dyn LimitAlgorithm>,
                false,
            ),
        };
        if algorithm.initial_limit() == 0 {
            return Err(ConfigError::new(
                "limit",
                "the initial limit must be at least 1",
            ));
        }
        let shared = Shared::new(
            Arc::from(self.name.as_str()),
            algorithm,
            fixed,
            self.retry_after,
            queue,
            partitions,
        );
        Ok(ConcurrencyLimitLayer {
            shared: Arc::new(Laned::new(shared)),
            _mode: PhantomData,
        })
    }
}

/// The shares in thousandths, each in `[0, 1]`, adding up to 1 at most.
pub(crate) fn validate_shares(shares: [f64; 3]) -> Result<[u32; 3], ConfigError> {
    for class in Criticality::ALL {
        let s = shares[class.index()];
        if !(0.0..=1.0).contains(&s) {
            return Err(ConfigError::new(
                format!("partitions.{}", class.as_str()),
                format!("must be between 0 and 1 (found {s})"),
            ));
        }
    }
    let permille = shares.map(|s| (s * 1000.0).round() as u32);
    let sum: u32 = permille.iter().sum();
    if sum > 1000 {
        return Err(ConfigError::new(
            "partitions",
            format!(
                "the shares add up to {} (more than 1)",
                f64::from(sum) / 1000.0
            ),
        ));
    }
    Ok(permille)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        let field =
            |r: Result<ConcurrencyLimitLayer, ConfigError>| r.unwrap_err().field().to_owned();
        let b = ConcurrencyLimitLayer::builder;
        assert_eq!(field(b().name("").build()), "name");
        assert_eq!(
            field(b().retry_after(Duration::ZERO).build()),
            "retry_after"
        );
        assert_eq!(field(b().retry_after(2 * HOUR).build()), "retry_after");
        assert_eq!(
            field(b().queue(0, Duration::from_millis(5)).build()),
            "queue.max_len"
        );
        assert_eq!(
            field(b().queue(10, Duration::ZERO).build()),
            "queue.max_wait"
        );
        assert_eq!(field(b().queue(10, 2 * MINUTE).build()), "queue.max_wait");
        assert_eq!(
            field(b().partition(Criticality::Sheddable, -0.1).build()),
            "partitions.sheddable"
        );
        assert_eq!(
            field(b().partition(Criticality::Critical, 0.9).build()),
            "partitions"
        );
        assert!(b().partition(Criticality::Critical, 0.7).build().is_ok());
        struct Zero;
        impl LimitAlgorithm for Zero {
            fn initial_limit(&self) -> usize {
                0
            }
            fn update(&mut self, _: &super::super::Sample) -> usize {
                1
            }
        }
        assert_eq!(field(b().limit(Zero).build()), "limit");
    }

    #[test]
    fn fixed_of_zero_is_one() {
        assert_eq!(ConcurrencyLimitLayer::fixed(0).limit(), 1);
    }
}
