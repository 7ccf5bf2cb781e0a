//! The stack builder: one layer applying every layer of the crate in the
//! right order, built from a [`RampartConfig`].

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use tower::Layer;

use super::catch_panic::{CatchPanic, CatchPanicLayer};
use super::platform::{Guard, Parts, Platform, PlatformPaths};
use super::routes::{BreakerLayer, Breakers, RouteBreakers};
use super::{BreakerReadiness, ConfigErrors, RampartConfig};
use crate::circuit_breaker::CircuitBreakerHandle;
use crate::concurrency::ConcurrencyLimitLayer;
use crate::health::{Check, HealthRegistry, ProbeLayer};
use crate::rate_limit::RateLimitLayer;
use crate::shutdown::{DrainLayer, Shutdown};
use crate::timeout::TimeoutLayer;

/// Builds a [`Stack`] from a [`RampartConfig`]: made by
/// [`RampartConfig::stack`].
#[must_use]
pub struct StackBuilder<'a> {
    config: &'a RampartConfig,
    checks: Vec<Check>,
}

impl fmt::Debug for StackBuilder<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StackBuilder")
            .field("config", self.config)
            .field("checks", &self.checks)
            .finish()
    }
}

impl<'a> StackBuilder<'a> {
    pub(super) fn new(config: &'a RampartConfig) -> Self {
        Self {
            config,
            checks: Vec::new(),
        }
    }

    /// Adds a health check of the program (a database, a cache) to the
    /// registry the probes read.
    pub fn check(mut self, check: Check) -> Self {
        self.checks.push(check);
        self
    }

    /// Validates the config and builds every layer, the shutdown
    /// coordinator (which installs the signal handlers unless
    /// `shutdown.signals = false`) and the health registry.
    ///
    /// Needs a tokio runtime. Install the `metrics` recorder first: the
    /// layers register their metrics when they are built.
    pub fn build(self) -> Result<Stack, ConfigErrors> {
        let config = self.config;
        config.validate()?;
        let shutdown = config
            .shutdown
            .clone()
            .build()
            .map_err(|e| ConfigErrors::from(e.at("shutdown")))?;
        // The declared routes, for the per-route breakers and the rate
        // limit's `route` key (`validate` above reported any problem).
        let paths = config
            .routes
            .route_paths()
            .map_err(|mut e| ConfigErrors::from(e.swap_remove(0).at("routes")))?;
        let (breaker, breakers) =
            BreakerLayer::build(&config.circuit_breaker, &config.routes, &paths)
                .map_err(|e| ConfigErrors::from(e.at("circuit_breaker")))?;
        let timeout = config
            .timeout
            .build()
            .map_err(|e| ConfigErrors::from(e.at("timeout")))?;
        let rate_limit = match &config.rate_limit {
            Some(rl) => Some(
                rl.build_with_routes(&paths)
                    .map_err(|e| ConfigErrors::from(e.at("rate_limit")))?,
            ),
            None => None,
        };

        let concurrency = match &config.concurrency {
            Some(c) => Some(
                c.build()
                    .map_err(|e| ConfigErrors::from(e.at("concurrency")))?,
            ),
            None => None,
        };

        let mut registry = HealthRegistry::builder()
            .name(config.health.name.clone())
            .shutdown(&shutdown);
        match config.health.breaker_readiness {
            BreakerReadiness::Off => {}
            BreakerReadiness::Warn => {
                registry = registry.check(breakers.check().non_critical());
            }
            BreakerReadiness::Fail => {
                registry = registry.check(breakers.check());
            }
        }
        for check in self.checks {
            registry = registry.check(check);
        }
        let health = registry
            .build()
            .map_err(|e| ConfigErrors::from(e.at("health")))?;
        let probe = config
            .probes
            .clone()
            .build(&health)
            .map_err(|e| ConfigErrors::from(e.at("probes")))?;

        Ok(Stack {
            layer: RampartLayer {
                probe,
                platform: Arc::new(PlatformPaths::new(&config.platform)),
                drain: shutdown.drain_layer(),
                rate_limit,
                concurrency,
                breaker,
                timeout,
                catch_panic: CatchPanicLayer,
            },
            shutdown,
            health,
            breakers,
            grpc_poll_interval: config.health.grpc_poll_interval,
        })
    }
}

/// The built stack: the [layer](Self::layer) and the handles a program
/// needs (shutdown coordinator, health registry, breaker handles).
#[derive(Clone, Debug)]
pub struct Stack {
    layer: RampartLayer,
    shutdown: Shutdown,
    health: HealthRegistry,
    breakers: Breakers,
    #[cfg_attr(not(feature = "tonic"), allow(dead_code))] // read by `grpc_health`
    grpc_poll_interval: Duration,
}

impl Stack {
    /// The layer to put around the whole application (axum's
    /// `Router::layer`, tonic's `Server::builder().layer`). Every clone and
    /// every `layer()` call shares the same state.
    pub fn layer(&self) -> RampartLayer {
        self.layer.clone()
    }

    /// The shutdown coordinator: hand [`Shutdown::draining`] to the server's
    /// graceful shutdown and run it with [`Shutdown::run_server`].
    pub fn shutdown(&self) -> &Shutdown {
        &self.shutdown
    }

    /// The health registry the probes read.
    pub fn health(&self) -> &HealthRegistry {
        &self.health
    }

    /// The circuit breaker's handle (state, counts, manual control), or
    /// `None` when the stack keeps one breaker per route
    /// (`routes.per_route_breaker`): see
    /// [`route_breakers`](Self::route_breakers).
    pub fn circuit_breaker(&self) -> Option<&CircuitBreakerHandle> {
        match &self.breakers {
            Breakers::Shared(handle) => Some(handle),
            Breakers::PerRoute(_) => None,
        }
    }

    /// The breakers kept per route (`routes.per_route_breaker = true`), or
    /// `None` when one breaker guards every request.
    pub fn route_breakers(&self) -> Option<&RouteBreakers> {
        match &self.breakers {
            Breakers::Shared(_) => None,
            Breakers::PerRoute(routes) => Some(routes),
        }
    }

    /// The `grpc.health.v1` service reading the registry: `Check` answers
    /// what `/readyz` answers at that moment, `Watch` streams re-read the
    /// synchronous checks every `health.grpc_poll_interval` and end when
    /// draining starts; add named services with
    /// [`GrpcHealthBuilder::service`](crate::health::GrpcHealthBuilder::service).
    #[cfg(feature = "tonic")]
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn grpc_health(&self) -> crate::health::GrpcHealthBuilder {
        self.health
            .grpc_health()
            .poll_interval(self.grpc_poll_interval)
    }
}

/// Every layer of the stack, applied outermost first: probes, the
/// platform's endpoints (around everything below), drain, rate limit,
/// concurrency limit, circuit breaker, timeout, panic catching. Built by
/// [`StackBuilder::build`]; see the [module docs](super#the-stack).
#[derive(Clone)]
pub struct RampartLayer {
    probe: ProbeLayer,
    platform: Arc<PlatformPaths>,
    drain: DrainLayer,
    rate_limit: Option<RateLimitLayer>,
    concurrency: Option<ConcurrencyLimitLayer>,
    breaker: BreakerLayer,
    timeout: TimeoutLayer,
    catch_panic: CatchPanicLayer,
}

impl fmt::Debug for RampartLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RampartLayer")
            .field("probe", &self.probe)
            .field("platform", &self.platform)
            .field("drain", &self.drain)
            .field("rate_limit", &self.rate_limit.as_ref().map(|l| l.name()))
            .field("concurrency", &self.concurrency.as_ref().map(|l| l.name()))
            .field("breaker", &self.breaker.name())
            .field("timeout", &self.timeout.name())
            .finish_non_exhaustive()
    }
}

/// The service made by [`RampartLayer`] around `S`: one service doing the
/// work of every layer ([`Platform`]), with `S` behind the protections and
/// a copy of `S` for the platform's endpoints (with panic catching only).
pub type RampartService<S> = Platform<S, CatchPanic<S>>;

/// `S` is cloned once per `layer()` call (not per request): one copy for
/// the platform's endpoints, one behind the protections.
impl<S: Clone> Layer<S> for RampartLayer {
    type Service = RampartService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        let bypass = self.catch_panic.layer(inner.clone());
        // The front drains, then rate-limits, then limits concurrency (after
        // the rate limit: abusive clients are refused before they take a
        // slot; outside the breaker and the timeout: the server's timeout is
        // a dropped sample, a breaker's free refusal is ignored), then the
        // breaker decides, the timeout sets the deadline and the panic
        // catcher calls the application.
        Platform::new(
            inner,
            bypass,
            Parts {
                paths: Arc::clone(&self.platform),
                probes: Arc::clone(&self.probe.shared),
                drain: Arc::clone(self.drain.state()),
                rate_limit: self.rate_limit.as_ref().map(|rl| Arc::clone(&rl.shared)),
                concurrency: self.concurrency.as_ref().map(|c| Arc::clone(c.shared())),
                guard: Guard {
                    breaker: self.breaker.clone(),
                    timeout: Arc::clone(self.timeout.shared()),
                },
            },
        )
    }
}
