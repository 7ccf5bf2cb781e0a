//! The stack built from a config file: the shipped files parse and validate,
//! the layers are in the documented order, the platform endpoints sit
//! outside every protection, and every refusal is the one shared answer.

#[path = "../common/mod.rs"]
mod common;

/// A stack config for the tests here: no signals, no shutdown delay, a
/// 10 s drain and a 5 s timeout, then `sections` (TOML).
#[cfg(feature = "config")]
fn stack_config(sections: &str) -> tower_rampart::config::RampartConfig {
    base_config(&format!("[timeout]\ntimeout = \"5s\"\n{sections}"))
}

/// A stack config with no signals, no shutdown delay and a 10 s drain,
/// then `sections` (TOML; the timeout's section too).
#[cfg(feature = "config")]
fn base_config(sections: &str) -> tower_rampart::config::RampartConfig {
    let toml = format!(
        r#"
        [shutdown]
        shutdown_delay = "0s"
        drain_timeout = "10s"
        signals = false
        {sections}
        "#
    );
    tower_rampart::config::RampartConfig::from_toml(&toml).unwrap_or_else(|e| panic!("{e}"))
}

/// The TOML format: shipped files, key paths in errors, env overrides.
mod files_and_validation;

/// The order of the layers, seen from the outside.
mod stack_order;

/// `/metrics`, the probes and `grpc.health.v1` bypass every protection, by
/// exact path.
mod platform_bypass;

/// The shared `Rejection` reaches a real client intact.
mod rejection_answer;

/// The rate limit in the stack (its front decides): waiting mode, the
/// `RateLimit` fields on admitted answers, a wait cut off by the drain.
mod rate_limit_in_the_stack;

/// The concurrency limit in the stack (its front admits): a queue that
/// admits in turn and refuses when full, its waiters counted in flight.
mod concurrency_in_the_stack;

/// The circuit breaker, the timeout and the panic catcher in the stack
/// (below its front, in one call): on every way to the application.
mod guards_in_the_stack;
