//! Graceful shutdown: the coordinator's phases on paused time, the drain
//! layer over real servers, real signals to a real child process, and
//! long-lived streams that must not hold a rollout.

#[path = "../common/mod.rs"]
mod common;

/// Phase timing and the drain layer.
mod coordinator_and_drain;

/// `SIGTERM` / `SIGINT` to `examples/lifecycle_child.rs` as a real process.
mod real_signals;

/// `grpc.health.v1/Watch` and `Shutdown::until_draining` end streams when
/// draining starts.
mod streams_end_at_draining;
