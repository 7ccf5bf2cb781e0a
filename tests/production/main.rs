//! The example programs as real processes (built by cargo next to this
//! test's binary): their command lines, a `SIGTERM` under load, the gRPC
//! example's client mode.
//!
//! `zero_drop.rs` in this folder is its own test binary (`zero_drop` in
//! `Cargo.toml`): its bounded load must not share the two cores of a CI
//! machine with the other real-time tests of this folder.

#[path = "../common/mod.rs"]
mod common;

/// `--help`, unknown arguments, the gRPC client's exit code, `/metrics`.
mod examples_cli;

/// The `production` example drains cleanly on a real `SIGTERM` under load.
mod sigterm_drains_cleanly;

/// The `grpc` example, server and `--call` client.
mod grpc_example;

/// The README's quickstart is `examples/quickstart.rs`; no hidden lines.
mod readme_front_door;
