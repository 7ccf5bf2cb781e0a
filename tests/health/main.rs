//! Health probes: the registry's caching, timeouts and formats on paused
//! time, then real HTTP and gRPC servers; a breaker as a readiness check.

#[path = "../common/mod.rs"]
mod common;

/// The registry and the `/livez`, `/readyz`, `grpc.health.v1` probes.
mod registry_and_probes;

/// A circuit breaker registered as a readiness check: `/readyz` follows it.
mod breaker_as_readiness;
