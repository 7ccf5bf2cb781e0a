//! Resilience and lifecycle middleware for [`tower`] services.
//!
//! `tower-rampart` protects axum and tonic servers, and any tower service,
//! with one set of layers that share their state by construction and answer
//! refusals in the caller's protocol (see [`rejection`]):
//!
//! - [`circuit_breaker`]: stop calling a failing dependency, probe it, recover;
//! - [`rate_limit`]: keyed, multi-quota GCRA limits with bounded memory;
//! - [`timeout`]: request timeouts with deadline propagation;
//! - [`shutdown`]: graceful shutdown with a drain layer;
//! - [`health`]: Kubernetes-style probes wired to shutdown and breakers.
//!
//! Shared pieces: [`rejection`] (what a layer refused, as HTTP, gRPC or a
//! typed error), [`classify`] (was a call a success?) and [`ConfigError`]
//! (invalid settings, named by field).
#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod circuit_breaker;
pub mod classify;
#[cfg(feature = "config")]
#[cfg_attr(docsrs, doc(cfg(feature = "config")))]
pub mod config;
#[cfg(feature = "config")]
mod config_util;
mod error;
pub mod health;
pub mod rate_limit;
pub mod rejection;
pub mod shutdown;
pub mod timeout;

pub use error::ConfigError;
pub use rejection::{Rejection, RejectionKind};
