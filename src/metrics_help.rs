//! The `# HELP` text and unit of every metric the crate records, described
//! to the current `metrics` recorder whenever a layer registers its
//! metrics.
//!
//! Each layer's metric registration calls [`describe`] in one line; this
//! file is the one list of names, kinds, units and meanings, kept equal to
//! the table in the crate docs (a test over the Prometheus exporter checks
//! that every `rampart_` metric rendered has a `# HELP` line).
//!
//! Not a `std::sync::Once`: layers are also built before the recorder is
//! installed (`RampartConfig::load` builds the rate limit and the timeout
//! to validate them), and a once-per-process description would go to the
//! no-op recorder and be lost. Describing is cheap (twenty map inserts in
//! the recorder), happens when a layer is built, never per request, and is
//! idempotent.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// Describes every metric of the crate to the current recorder.
pub(crate) fn describe() {
    describe_all();
}

/// Every metric, in the order of the crate docs' table.
#[cfg(test)]
const NAMES: [&str; 29] = [
    "rampart_circuit_breaker_state",
    "rampart_circuit_breaker_calls_total",
    "rampart_circuit_breaker_slow_calls_total",
    "rampart_circuit_breaker_rejections_total",
    "rampart_circuit_breaker_transitions_total",
    "rampart_circuit_breaker_threshold_exceeded_total",
    "rampart_circuit_breaker_route_state",
    "rampart_rate_limit_admitted_total",
    "rampart_rate_limit_refused_total",
    "rampart_rate_limit_dry_run_refusals_total",
    "rampart_rate_limit_allowlisted_total",
    "rampart_rate_limit_keys",
    "rampart_rate_limit_evictions_total",
    "rampart_rate_limit_decisions_total",
    "rampart_timeouts_total",
    "rampart_in_flight_requests",
    "rampart_shutdown_phase",
    "rampart_drain_duration_seconds",
    "rampart_drain_aborted_total",
    "rampart_requests_refused_total",
    "rampart_health_check_status",
    "rampart_health_check_duration_seconds",
    "rampart_connections",
    "rampart_connections_accepted_total",
    "rampart_connections_refused_total",
    "rampart_accept_paused_total",
    "rampart_connections_backlog_total",
    "rampart_connection_timeouts_total",
    "rampart_connections_aborted_total",
];

fn describe_all() {
    // circuit_breaker
    describe_gauge!(
        "rampart_circuit_breaker_state",
        "Circuit breaker state: 0 closed, 1 open, 2 half-open, 3 forced open, 4 disabled, 5 metrics-only."
    );
    describe_counter!(
        "rampart_circuit_breaker_calls_total",
        Unit::Count,
        "Calls whose outcome the circuit breaker recorded, by outcome (success, failure, ignored)."
    );
    describe_counter!(
        "rampart_circuit_breaker_slow_calls_total",
        Unit::Count,
        "Calls slower than the circuit breaker's slow-call threshold."
    );
    describe_counter!(
        "rampart_circuit_breaker_rejections_total",
        Unit::Count,
        "Calls refused by the circuit breaker (including those answered by a fallback)."
    );
    describe_counter!(
        "rampart_circuit_breaker_transitions_total",
        Unit::Count,
        "Circuit breaker state changes, by from and to state."
    );
    describe_counter!(
        "rampart_circuit_breaker_threshold_exceeded_total",
        Unit::Count,
        "Times a metrics-only circuit breaker met a tripping rule (once per crossing), by reason."
    );
    describe_gauge!(
        "rampart_circuit_breaker_route_state",
        "State of one route's circuit breaker in the stack's per-route mode (same codes as rampart_circuit_breaker_state)."
    );
    // rate_limit
    describe_counter!(
        "rampart_rate_limit_admitted_total",
        Unit::Count,
        "Requests admitted by the rate limit."
    );
    describe_counter!(
        "rampart_rate_limit_refused_total",
        Unit::Count,
        "Requests refused by the rate limit, by quota and reason."
    );
    describe_counter!(
        "rampart_rate_limit_dry_run_refusals_total",
        Unit::Count,
        "Requests a dry-run rate limit would have refused, by quota and reason."
    );
    describe_counter!(
        "rampart_rate_limit_allowlisted_total",
        Unit::Count,
        "Requests that skipped the rate limit through its allow list."
    );
    describe_gauge!(
        "rampart_rate_limit_keys",
        Unit::Count,
        "Keys currently tracked by a keyed rate-limit quota."
    );
    describe_counter!(
        "rampart_rate_limit_evictions_total",
        Unit::Count,
        "Rate-limit keys evicted, by quota and reason (idle, capacity)."
    );
    describe_counter!(
        "rampart_rate_limit_decisions_total",
        Unit::Count,
        "Rate-limit decisions of the Redis store, by the path they took (redis, fallback, fail_open, fail_closed)."
    );
    // timeout
    describe_counter!(
        "rampart_timeouts_total",
        Unit::Count,
        "Requests answered by the timeout layer, by cause (elapsed, budget_spent)."
    );
    // shutdown
    describe_gauge!(
        "rampart_in_flight_requests",
        Unit::Count,
        "Requests in flight through the drain layer."
    );
    describe_gauge!(
        "rampart_shutdown_phase",
        "Shutdown phase: 0 running, 1 shutdown requested, 2 draining, 3 done."
    );
    describe_histogram!(
        "rampart_drain_duration_seconds",
        Unit::Seconds,
        "How long draining in-flight requests took at shutdown."
    );
    describe_counter!(
        "rampart_drain_aborted_total",
        Unit::Count,
        "Requests aborted at the drain deadline."
    );
    describe_counter!(
        "rampart_requests_refused_total",
        Unit::Count,
        "Requests refused by the drain layer, by kind (draining)."
    );
    // health
    describe_gauge!(
        "rampart_health_check_status",
        "Last result of a health check: 1 pass, 0.5 warn, 0 fail."
    );
    describe_histogram!(
        "rampart_health_check_duration_seconds",
        Unit::Seconds,
        "Duration of each health check run."
    );
    // serve
    describe_gauge!(
        "rampart_connections",
        Unit::Count,
        "Connections the serve loop holds open."
    );
    describe_counter!(
        "rampart_connections_accepted_total",
        Unit::Count,
        "Connections the serve loop accepted."
    );
    describe_counter!(
        "rampart_connections_refused_total",
        Unit::Count,
        "Connections closed at once because max_connections was reached (at_max_connections = \"refuse\")."
    );
    describe_counter!(
        "rampart_accept_paused_total",
        Unit::Count,
        "Times the serve loop paused accepting because max_connections was reached."
    );
    describe_counter!(
        "rampart_connections_backlog_total",
        Unit::Count,
        "Connections taken from the listen backlog when the listener closed, and answered."
    );
    describe_counter!(
        "rampart_connection_timeouts_total",
        Unit::Count,
        "Connections closed by a timeout, by kind (header_read, keep_alive)."
    );
    describe_counter!(
        "rampart_connections_aborted_total",
        Unit::Count,
        "Connections still open at the drain deadline, closed by force."
    );
}

#[cfg(test)]
mod tests {
    use super::NAMES;

    /// The list above is the crate docs' table, row for row, and
    /// `describe_all` describes each of them.
    #[test]
    fn every_metric_of_the_docs_table_is_described() {
        let lib = include_str!("lib.rs");
        let table: Vec<&str> = lib
            .lines()
            .filter_map(|l| l.strip_prefix("//! | `rampart_"))
            .filter_map(|l| l.split('`').next())
            .collect();
        let names: Vec<String> = NAMES
            .iter()
            .map(|n| n["rampart_".len()..].to_owned())
            .collect();
        assert_eq!(table, names);
        let this = include_str!("metrics_help.rs");
        let body = &this[this.find("fn describe_all").unwrap()..];
        for n in NAMES {
            assert!(body.contains(&format!("\"{n}\",")), "{n} is not described");
        }
    }
}
