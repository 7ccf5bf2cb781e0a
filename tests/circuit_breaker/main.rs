//! The circuit breaker: its rules on paused time, then real servers and
//! clients (axum over HTTP/1.1 and h2c, tonic over HTTP/2).
//!
//! `metrics_global_recorder.rs` in this folder is its own test binary
//! (`circuit_breaker_metrics` in `Cargo.toml`): it installs the process-global
//! metrics recorder.

#[path = "../common/mod.rs"]
mod common;

/// Opening, half-open trials, backoff, windows and events, on paused time.
mod rules;

/// The breaker over real sockets: HTTP status and gRPC trailer classification.
mod over_the_wire;

/// Issue 10: only failures the service caused count; a hostile client's
/// deadline or another layer's refusal cannot open a shared breaker.
mod counts_only_service_failures;

/// `routes.per_route_breaker`: one breaker per declared route, a bounded
/// `unmatched` breaker for everything else.
mod one_breaker_per_route;
