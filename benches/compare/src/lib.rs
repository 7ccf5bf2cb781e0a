//! Criterion benches for `tower-rampart`, compared in one run with the bare
//! service and the crates people use instead (tower's own layers,
//! tower-http, failsafe, tower-resilience, tower_governor). No library code:
//! the benches are in `benches/`, their results in `../README.md`.
//!
//! ```sh
//! cargo bench -p tower-rampart-benches                  # every bench
//! cargo bench -p tower-rampart-benches --bench timeout  # one of them
//! ```
