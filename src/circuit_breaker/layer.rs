//! The layer and its builder.

use std::fmt;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::CircuitBreaker;
use super::config::{Backoff, CircuitBreakerConfig, SlidingWindow};
use super::fallback::{FallbackFn, FallbackService, NoFallback};
use super::handle::CircuitBreakerHandle;
use super::keyed::KeyedCircuitBreakerLayer;
use super::state::{Breaker, CircuitBreakerEvent, ErrorClassifier, Listener, Settings};
use crate::ConfigError;
use crate::classify::{Classifier, Outcome, StatusSet};
use crate::rejection::{ErrorMode, HttpMode};

/// Applies a circuit breaker to a service.
///
/// Every service this layer makes, and every clone of them, shares one
/// breaker: applying it with axum's `Router::layer` (which clones it per
/// route) still gives one breaker. For separate breakers build separate
/// layers, or use a [`KeyedCircuitBreakerLayer`].
///
/// `M` is the [`Mode`](crate::rejection::Mode) (refusals as HTTP/gRPC
/// responses, or as errors), `F` the [fallback](super::Fallback).
pub struct CircuitBreakerLayer<M = HttpMode, F = NoFallback> {
    pub(crate) breaker: Breaker,
    pub(crate) fallback: F,
    _mode: PhantomData<fn() -> M>,
}

impl<M, F: Clone> Clone for CircuitBreakerLayer<M, F> {
    fn clone(&self) -> Self {
        Self {
            breaker: self.breaker.clone(),
            fallback: self.fallback.clone(),
            _mode: PhantomData,
        }
    }
}

impl<M, F> fmt::Debug for CircuitBreakerLayer<M, F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerLayer")
            .field("name", &self.breaker.core().name())
            .field("state", &self.breaker.core().state())
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerLayer {
    /// A builder with the default settings (see [`CircuitBreakerConfig`]).
    pub fn builder() -> CircuitBreakerBuilder {
        CircuitBreakerBuilder::from_config(CircuitBreakerConfig::default())
    }
}

impl<M, F> CircuitBreakerLayer<M, F> {
    /// A handle to read and steer this layer's breaker.
    pub fn handle(&self) -> CircuitBreakerHandle {
        CircuitBreakerHandle::new(self.breaker.core().clone())
    }

    /// Refusals become errors (a [`Rejection`](crate::Rejection) in a
    /// `BoxError`) instead of responses, for services that do not speak
    /// HTTP. The breaker is the same one.
    pub fn into_error_mode(self) -> CircuitBreakerLayer<ErrorMode, F> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            fallback: self.fallback,
            _mode: PhantomData,
        }
    }

    /// Answers refused calls with `f(request, rejection)` instead (serve
    /// from a cache, a default value). The future's output has the inner
    /// service's response and error types (in [`ErrorMode`], `BoxError`).
    /// Fallback answers are not recorded by the breaker.
    pub fn fallback_fn<G>(self, f: G) -> CircuitBreakerLayer<M, FallbackFn<G>> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            fallback: FallbackFn(f),
            _mode: PhantomData,
        }
    }

    /// Answers refused calls by calling `service` instead.
    pub fn fallback_service<S>(self, service: S) -> CircuitBreakerLayer<M, FallbackService<S>> {
        CircuitBreakerLayer {
            breaker: self.breaker,
            fallback: FallbackService(service),
            _mode: PhantomData,
        }
    }
}

impl<S, M, F: Clone> Layer<S> for CircuitBreakerLayer<M, F> {
    type Service = CircuitBreaker<S, M, F>;

    fn layer(&self, inner: S) -> Self::Service {
        CircuitBreaker::from_parts(inner, self.breaker.clone(), self.fallback.clone())
    }
}

/// Builds a [`CircuitBreakerLayer`] (or a [`KeyedCircuitBreakerLayer`]),
/// validating every setting.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::circuit_breaker::CircuitBreakerLayer;
///
/// let layer = CircuitBreakerLayer::builder()
///     .name("inventory")
///     .count_window(50)
///     .minimum_calls(20)
///     .failure_rate_threshold(25.0)
///     .slow_call_duration_threshold(Duration::from_secs(2))
///     .consecutive_failures(5)
///     .open_duration(Duration::from_secs(5))
///     .backoff(2.0, Duration::from_secs(120), 0.1)
///     .build()
///     .unwrap();
/// # drop(layer);
///
/// let err = CircuitBreakerLayer::builder().failure_rate_threshold(0.0).build().unwrap_err();
/// assert_eq!(err.field(), "failure_rate_threshold");
/// ```
#[must_use]
pub struct CircuitBreakerBuilder {
    config: CircuitBreakerConfig,
    classifier: Classifier,
    error_classifier: Option<ErrorClassifier>,
    listener: Option<Listener>,
    /// Keyed breakers over up to 64 shards (the default) or one.
    sharded: bool,
}

impl fmt::Debug for CircuitBreakerBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CircuitBreakerBuilder")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl CircuitBreakerBuilder {
    /// A builder starting from `config`.
    pub fn from_config(config: CircuitBreakerConfig) -> Self {
        Self {
            config,
            classifier: Classifier::default(),
            error_classifier: None,
            listener: None,
            sharded: true,
        }
    }

    /// The name labelling metrics, events and refusals.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Trip when the failure rate (percent) is at least this.
    pub fn failure_rate_threshold(mut self, percent: f32) -> Self {
        self.config.failure_rate_threshold = percent;
        self
    }

    /// Trip when the slow-call rate (percent) is at least this.
    pub fn slow_call_rate_threshold(mut self, percent: f32) -> Self {
        self.config.slow_call_rate_threshold = percent;
        self
    }

    /// A call taking longer than this is slow.
    pub fn slow_call_duration_threshold(mut self, threshold: Duration) -> Self {
        self.config.slow_call_duration_threshold = Some(threshold);
        self
    }

    /// Trip after this many failures in a row.
    pub fn consecutive_failures(mut self, n: u32) -> Self {
        self.config.consecutive_failures = Some(n);
        self
    }

    /// Judge the last `size` calls.
    pub fn count_window(mut self, size: u32) -> Self {
        self.config.window = SlidingWindow::Count { size };
        self
    }

    /// Judge the calls of the last `duration`, kept in `buckets` buckets.
    pub fn time_window(mut self, duration: Duration, buckets: u32) -> Self {
        self.config.window = SlidingWindow::Time { duration, buckets };
        self
    }

    /// Rates count only once the window holds this many calls.
    pub fn minimum_calls(mut self, n: u32) -> Self {
        self.config.minimum_calls = n;
        self
    }

    /// How long the circuit stays open (the first time, with a backoff).
    pub fn open_duration(mut self, d: Duration) -> Self {
        self.config.open_duration = d;
        self
    }

    /// Grow the open duration by `multiplier` on each consecutive re-open,
    /// up to `max`, spread by `± jitter` (a fraction in `[0, 1)`).
    pub fn backoff(mut self, multiplier: f64, max: Duration, jitter: f64) -> Self {
        self.config.backoff = Some(Backoff {
            multiplier,
            max,
            jitter,
        });
        self
    }

    /// Trial calls let through in half-open.
    pub fn half_open_permits(mut self, n: u32) -> Self {
        self.config.half_open_permits = n;
        self
    }

    /// The longest a half-open circuit waits for a trial call in flight
    /// before re-opening (see
    /// [`CircuitBreakerConfig::max_wait_in_half_open`]).
    pub fn max_wait_in_half_open(mut self, d: Duration) -> Self {
        self.config.max_wait_in_half_open = d;
        self
    }

    /// Move from open to half-open on a timer as soon as the open duration
    /// is over, instead of on the first call after it (the default). See
    /// [`CircuitBreakerConfig::auto_half_open`].
    pub fn auto_half_open(mut self, enabled: bool) -> Self {
        self.config.auto_half_open = enabled;
        self
    }

    /// Responses with this HTTP status are neither successes nor failures
    /// (e.g. `StatusCode::TOO_MANY_REQUESTS`), on top of whatever
    /// [`classifier`](Self::classifier) is set. May be called repeatedly.
    pub fn ignore_status(mut self, status: http::StatusCode) -> Self {
        let code = status.as_u16();
        if !self.config.ignore_statuses.contains(&code) {
            self.config.ignore_statuses.push(code);
        }
        self
    }

    /// Keyed breakers: the most keys kept at once.
    pub fn max_keys(mut self, n: usize) -> Self {
        self.config.max_keys = n;
        self
    }

    /// Keyed breakers: a key unused this long may be evicted.
    pub fn key_idle_timeout(mut self, d: Duration) -> Self {
        self.config.key_idle_timeout = d;
        self
    }

    /// How HTTP and gRPC responses are judged (in [`HttpMode`]); the
    /// default counts 5xx and the usual gRPC failure codes. A classifier
    /// may return [`Outcome::Ignored`] for responses that say nothing about
    /// the service's health; to leave out a few statuses and keep the rest,
    /// [`ignore_status`](Self::ignore_status) is enough.
    pub fn classifier(mut self, classifier: Classifier) -> Self {
        self.classifier = classifier;
        self
    }

    /// How errors are judged in [`ErrorMode`] (by default every error is a
    /// failure): return [`Outcome::Ignored`] for errors that are the
    /// caller's fault, [`Outcome::Success`] for ones that prove the service
    /// alive.
    pub fn classify_error<F>(mut self, f: F) -> Self
    where
        F: Fn(&(dyn std::error::Error + Send + Sync + 'static)) -> Outcome + Send + Sync + 'static,
    {
        self.error_classifier = Some(Arc::new(f));
        self
    }

    /// Calls `f` on every transition and refusal. It runs on the calling
    /// task, never under one of the breaker's locks, so it may use a handle;
    /// keep it short.
    pub fn on_event<F>(mut self, f: F) -> Self
    where
        F: Fn(&CircuitBreakerEvent) + Send + Sync + 'static,
    {
        self.listener = Some(Arc::new(f));
        self
    }

    /// The settings so far.
    pub fn config(&self) -> &CircuitBreakerConfig {
        &self.config
    }

    fn settings(self, report_state: bool) -> Result<Arc<Settings>, ConfigError> {
        self.config.validate()?;
        let ignored = self
            .config
            .ignore_statuses
            .iter()
            .filter_map(|s| http::StatusCode::from_u16(*s).ok())
            .fold(self.classifier.ignored_statuses(), StatusSet::with);
        let classifier = self.classifier.ignore_statuses(ignored);
        Ok(Arc::new(Settings::new(
            self.config,
            classifier,
            self.error_classifier,
            self.listener,
            report_state,
        )))
    }

    /// Validates the settings and builds the layer. Install the `metrics`
    /// recorder before this: the layer registers its metrics here.
    pub fn build(self) -> Result<CircuitBreakerLayer, ConfigError> {
        let settings = self.settings(true)?;
        Ok(CircuitBreakerLayer {
            breaker: Breaker::new(settings, Breaker::default_lanes()),
            fallback: NoFallback,
            _mode: PhantomData,
        })
    }

    /// Validates the settings and builds a keyed layer: one breaker per key
    /// that `key_fn` takes from the request, created on first use, at most
    /// [`max_keys`](Self::max_keys) of them.
    pub fn build_keyed<Req, K, KF>(
        self,
        key_fn: KF,
    ) -> Result<KeyedCircuitBreakerLayer<K, KF>, ConfigError>
    where
        KF: Fn(&Req) -> K + Clone,
        K: std::hash::Hash + Eq + Clone,
    {
        let sharded = self.sharded;
        let settings = self.settings(false)?;
        Ok(KeyedCircuitBreakerLayer::new(settings, key_fn, sharded))
    }

    /// Keyed breakers for few keys that are all hot (the stack's routes):
    /// one shard, so a lookup hashes the key once instead of twice.
    #[cfg_attr(not(feature = "config"), allow(dead_code))] // used by the stack's per-route breakers
    pub(crate) fn unsharded(mut self) -> Self {
        self.sharded = false;
        self
    }
}
