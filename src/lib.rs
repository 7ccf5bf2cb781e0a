//! Resilience and lifecycle middleware for [`tower`] services.
//!
//! `tower-rampart` protects axum and tonic servers, and any tower service,
//! with one set of layers that share their state by construction and answer
//! refusals in the caller's protocol:
//!
//! - [`circuit_breaker`]: stop calling a failing dependency, probe it, recover;
//! - [`rate_limit`]: keyed, multi-quota GCRA limits with bounded memory and
//!   the IETF `RateLimit` headers;
//! - [`timeout`]: request timeouts with deadline propagation (`grpc-timeout`);
//! - [`concurrency`]: a concurrency limit, fixed or learned from latency,
//!   that sheds what the service cannot absorb;
//! - [`shutdown`]: graceful shutdown (SIGTERM, delay, drain, abort, hooks)
//!   with a drain layer;
//! - [`health`]: Kubernetes-style probes wired to shutdown and breakers;
//! - [`serve`](mod@serve) (feature `serve`): the server loop for axum,
//!   tonic and any tower HTTP service, tied to the shutdown phases
//!   (zero-drop restarts) with connection hygiene on by default.
//!
//! Shared pieces: [`rejection`] (what a layer refused, answered as HTTP,
//! gRPC or a typed error), [`classify`] (was a call a success?) and
//! [`ConfigError`] (invalid settings, named by field).
//!
//! # One stack for the whole router
//!
//! Outermost first: probes (answered before anything can refuse them), the
//! drain layer, the rate limit (the cheapest refusal first, so refused
//! requests never reach the breaker's statistics), the
//! [concurrency limit](concurrency) where one is wanted (it sheds what the
//! service cannot absorb), the circuit breaker, and
//! the timeout inside it (so a timeout counts as a failure). axum applies the
//! *last* `.layer(...)` outermost:
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower_rampart::{
//!     CircuitBreakerLayer, HealthRegistry, ProbeLayer, Quota, RateLimitLayer, Shutdown,
//!     TimeoutLayer,
//! };
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = Shutdown::builder().build()?; // inside a tokio runtime
//! let breaker = CircuitBreakerLayer::builder().name("api").build()?;
//! let health = HealthRegistry::builder().shutdown(&shutdown).build()?;
//!
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(TimeoutLayer::new(Duration::from_secs(2))?)
//!     .layer(breaker)
//!     .layer(RateLimitLayer::builder().quota(Quota::per_second(100)).build()?)
//!     .layer(shutdown.drain_layer())
//!     .layer(ProbeLayer::new(&health));
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! Every refusal is a [`Rejection`]: in the default
//! [`HttpMode`](rejection::HttpMode) it becomes a response (the router stays
//! `Infallible`, no `HandleErrorLayer`); with each layer's
//! `into_error_mode()` it is returned inside a `BoxError` for services that
//! do not speak HTTP.
//!
//! # Metrics and events
//!
//! Metrics go through the [`metrics`] facade, named `rampart_*` and labelled
//! `name` with the layer's name. Handles are registered when a layer is
//! built: **install the recorder before building layers**.
//!
//! What moves on every request is kept off the recorder's shared lines:
//! the in-flight gauges are the layers' own counts, set every 250 ms, and
//! the per-request counters (`rampart_circuit_breaker_calls_total` and
//! `_slow_calls_total`, `rampart_rate_limit_admitted_total` and
//! `_allowlisted_total`, `rampart_concurrency_samples_total`) are counted
//! per thread and added to the recorder every 250 ms, by a small task per
//! layer inside the tokio runtime: a scrape sees every event, at most
//! 250 ms late (the last ones when the layer is dropped). Without a tokio
//! runtime each event reaches the recorder at once.
//!
//! | metric | type | labels | module |
//! |---|---|---|---|
//! | `rampart_circuit_breaker_state` | gauge | `name` | [`circuit_breaker`] |
//! | `rampart_circuit_breaker_calls_total` | counter | `name`, `outcome` | [`circuit_breaker`] |
//! | `rampart_circuit_breaker_slow_calls_total` | counter | `name` | [`circuit_breaker`] |
//! | `rampart_circuit_breaker_rejections_total` | counter | `name` | [`circuit_breaker`] |
//! | `rampart_circuit_breaker_transitions_total` | counter | `name`, `from`, `to` | [`circuit_breaker`] |
//! | `rampart_circuit_breaker_threshold_exceeded_total` | counter | `name`, `reason` | [`circuit_breaker`] (metrics-only mode) |
//! | `rampart_circuit_breaker_route_state` | gauge | `name`, `route` | `config` (the stack's per-route breakers) |
//! | `rampart_rate_limit_admitted_total` | counter | `name` | [`rate_limit`] |
//! | `rampart_rate_limit_refused_total` | counter | `name`, `quota`, `reason` | [`rate_limit`] |
//! | `rampart_rate_limit_dry_run_refusals_total` | counter | `name`, `quota`, `reason` | [`rate_limit`] |
//! | `rampart_rate_limit_allowlisted_total` | counter | `name` | [`rate_limit`] |
//! | `rampart_rate_limit_keys` | gauge | `name`, `quota` | [`rate_limit`] |
//! | `rampart_rate_limit_evictions_total` | counter | `name`, `quota`, `reason` | [`rate_limit`] |
//! | `rampart_rate_limit_decisions_total` | counter | `name`, `path` | [`rate_limit`] (Redis store) |
//! | `rampart_concurrency_limit` | gauge | `name` | [`concurrency`] |
//! | `rampart_concurrency_in_flight` | gauge | `name` | [`concurrency`] |
//! | `rampart_concurrency_queued` | gauge | `name` | [`concurrency`] |
//! | `rampart_concurrency_rejections_total` | counter | `name`, `partition`, `reason` | [`concurrency`] |
//! | `rampart_concurrency_samples_total` | counter | `name`, `outcome` | [`concurrency`] |
//! | `rampart_concurrency_rtt_seconds` | histogram | `name` | [`concurrency`] |
//! | `rampart_concurrency_min_rtt_seconds` | gauge | `name` | [`concurrency`] |
//! | `rampart_concurrency_limit_changes_total` | counter | `name` | [`concurrency`] |
//! | `rampart_timeouts_total` | counter | `name`, `cause`, `source` | [`timeout`] |
//! | `rampart_in_flight_requests` | gauge | `name` | [`shutdown`] |
//! | `rampart_shutdown_phase` | gauge | `name` | [`shutdown`] |
//! | `rampart_drain_duration_seconds` | histogram | `name` | [`shutdown`] |
//! | `rampart_drain_aborted_total` | counter | `name` | [`shutdown`] |
//! | `rampart_requests_refused_total` | counter | `name`, `kind` | [`shutdown`] |
//! | `rampart_health_check_status` | gauge | `name`, `check`, `kind` | [`health`] |
//! | `rampart_health_check_duration_seconds` | histogram | `name`, `check`, `kind` | [`health`] |
//! | `rampart_connections` | gauge | `name` | [`serve`](mod@serve) |
//! | `rampart_connections_accepted_total` | counter | `name` | [`serve`](mod@serve) |
//! | `rampart_connections_refused_total` | counter | `name` | [`serve`](mod@serve) |
//! | `rampart_accept_paused_total` | counter | `name` | [`serve`](mod@serve) |
//! | `rampart_connections_backlog_total` | counter | `name` | [`serve`](mod@serve) |
//! | `rampart_connection_timeouts_total` | counter | `name`, `kind` | [`serve`](mod@serve) |
//! | `rampart_connections_aborted_total` | counter | `name` | [`serve`](mod@serve) |
//!
//! `tracing` events use the module path as target
//! (`tower_rampart::circuit_breaker`, `tower_rampart::rate_limit`,
//! `tower_rampart::concurrency`, `tower_rampart::timeout`, `tower_rampart::shutdown`,
//! `tower_rampart::health`, `tower_rampart::serve`); each module's docs list its events, levels and
//! fields.
//!
//! # Feature flags
//!
//! | feature | what it adds |
//! |---|---|
//! | `axum` | the client IP from axum's `ConnectInfo<SocketAddr>` for rate-limit keys |
//! | `tonic` | the `grpc.health.v1` bridge ([`HealthRegistry::grpc_health`]) |
//! | `redis` | a Redis-backed store for the rate limit ([`RedisStore`]): one limit shared by every replica, on one server or a Redis Cluster |
//! | `redis-tls` | TLS to Redis (`rediss://`, a custom CA, client certificates: `rate_limit::RedisTls`) through rustls with the `ring` provider; implies `redis` |
//! | `serve` | the server loop ([`serve()`](fn@serve), [`Server`]): HTTP/1.1 + h2c over hyper-util, the shutdown phases, connection hygiene, the peer address for rate-limit keys |
//! | `config` | `serde::Deserialize` configs for every layer, TOML loading with `RAMPART_*` overrides, and the stack builder ([`RampartConfig`]) |
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod circuit_breaker;
pub mod classify;
pub mod concurrency;
#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub mod config;
mod config_util;
mod error;
pub mod grpc;
pub mod health;
mod metrics_help;
pub mod rate_limit;
pub mod rejection;
#[cfg(feature = "serve")]
#[cfg_attr(docsrs, doc(cfg(feature = "serve")))]
pub mod serve;
pub mod shutdown;
pub mod timeout;
mod util;

pub use circuit_breaker::{CircuitBreakerHandle, CircuitBreakerLayer, CircuitState};
pub use concurrency::ConcurrencyLimitLayer;
#[cfg(feature = "config")]
pub use config::{RampartConfig, Stack};
pub use error::ConfigError;
pub use health::{Check, HealthRegistry, ProbeLayer};
#[cfg(feature = "redis")]
pub use rate_limit::{FailurePolicy, RedisStore};
pub use rate_limit::{Quota, Rate, RateLimitLayer};
pub use rejection::{Rejection, RejectionKind};
#[cfg(feature = "serve")]
pub use serve::{Server, serve};
pub use shutdown::{DrainLayer, Shutdown};
pub use timeout::{Deadline, TimeoutLayer};
