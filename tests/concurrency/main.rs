//! The concurrency limit: its rules on paused time (admission, refusal in
//! each protocol, slots released on completion, cancellation and panic,
//! the outcomes fed to the algorithm, the queue, the partitions), then a
//! real axum server overloaded by a real client.

#[path = "../common/mod.rs"]
mod common;

/// Admission, refusal, release and outcomes, on paused time.
mod rules;

/// The wait queue and the criticality partitions, on paused time.
mod queue_and_partitions;

/// A real axum server with a slow handler, overloaded and recovering; the
/// attacker's criticality header; what an operator's metrics show.
mod real_server;

/// The `[concurrency]` config section in the stack: the platform's
/// endpoints are never limited.
mod in_the_stack;

/// A real tonic server and client: `UNAVAILABLE` over the limit.
mod grpc;
