//! Conformance: this crate's behaviour next to the peers users move from.
//!
//! One module per peer. Each test translates a peer's own test or spec
//! example and cites it (repository, file, test name or section); where this
//! crate deliberately differs, the test asserts our behaviour and its
//! comment says why. Timing runs on paused tokio time; tests over a real
//! server use quotas slow enough that real time cannot move the numbers.

#[path = "../common/mod.rs"]
mod common;

mod rate_limit_support;

mod envoy;
mod ratelimit_headers;
mod redis_cell;
mod redis_rate;
