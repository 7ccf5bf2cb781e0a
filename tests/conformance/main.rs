//! Conformance with the peers users come from: one module per peer, each
//! test citing the peer test or specification it translates. Where this
//! crate deliberately differs, the test asserts our behaviour and its
//! comment says why.

#[path = "../common/mod.rs"]
mod common;

mod health_json;
mod kube_healthz;
