//! Conformance with the trusted peers users come from: one module per peer,
//! each test citing the peer test or specification it translates
//! (repository, file, test name or section), over a real server where the
//! behaviour is on the wire. Where this crate deliberately differs, the test
//! asserts our behaviour and its comment says why. Timing runs on paused
//! tokio time.

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

// The rate limit: redis-cell, go-redis/redis_rate, Envoy's token bucket, the
// IETF RateLimit header fields.
mod rate_limit_support;

mod envoy;
mod ratelimit_headers;
mod redis_cell;
mod redis_rate;
