//! `tower_rampart::serve` over real sockets, for axum and tonic.

#[path = "../common/mod.rs"]
mod common;

/// The peer address, connection hygiene (slowloris, idle timeout, max
/// connections) and each shutdown phase.
mod connections_and_phases;
