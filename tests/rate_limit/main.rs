//! The rate limit: timing rules on paused time, real servers and clients,
//! the client-IP trust model, and the Redis store against a real
//! `redis-server`.

#[path = "../common/mod.rs"]
mod common;

/// GCRA timing, headers, keys and refusals, then real axum and tonic servers.
mod limits;

/// Issue 10: the client IP has one source of truth, trusted only from
/// configured proxies; clients told apart by their addresses (a flooding
/// client under the production example's two quotas).
mod client_ip_trust;

/// The Redis-backed store (global limits across replicas), its failure
/// policy and guard, against a real `redis-server` on loopback.
mod redis_store;

/// `redis-server` processes in temporary directories (TLS, Cluster).
mod redis_procs;

/// Issue 16: the Redis store over TLS, against a TLS-only `redis-server`
/// and certificates the test generates.
mod redis_tls;

/// Leased mode of the Redis store (issue 16): round trips, a dead
/// replica's lease, outages mid-lease, refusals without round trips.
mod redis_lease;
