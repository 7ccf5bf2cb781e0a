//! Conformance with the trusted peers: each module translates one peer's
//! tests or documented behaviour into tests over a real server, citing the
//! test it translates. Where this crate deliberately differs, the test
//! asserts our behaviour and its comment says why.

#[path = "../common/mod.rs"]
mod common;

// The circuit breaker: Resilience4j, gobreaker, Polly.
mod breaker_harness;
mod gobreaker;
mod polly;
mod resilience4j;
