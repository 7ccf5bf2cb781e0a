//! The timeout layer: its timing rules on paused time, `grpc-timeout`
//! parsing, and real servers with real clients.

#[path = "../common/mod.rs"]
mod common;

/// Deadlines, propagation and budgets on paused time, without sockets.
mod rules;

/// `grpc-timeout` values: a table of valid and invalid headers, and a
/// property test that arbitrary bytes never panic.
mod grpc_timeout_parse;

/// The layer in front of real axum (HTTP/1.1) and tonic (HTTP/2) servers.
mod real_servers;
