//! Conformance with the trusted peers users come from: one module per peer,
//! each test citing the peer test or specification it translates, over a
//! real server where the behaviour is on the wire. Where this crate
//! deliberately differs, the test asserts our behaviour and its comment says
//! why.

#[path = "../common/mod.rs"]
mod common;

// Health probes: kube-apiserver's healthz, draft-inadarei health+json.
mod health_json;
mod kube_healthz;

// The circuit breaker: Resilience4j, gobreaker, Polly.
mod breaker_harness;
mod gobreaker;
mod polly;
mod resilience4j;
