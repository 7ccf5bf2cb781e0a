//! Every documented metric, as a Prometheus scraper sees it (one test that
//! installs the process-global recorder), and the per-request counters
//! over a real server (a recorder of its own).

#[path = "../common/mod.rs"]
mod common;

/// `# HELP` lines, units and histogram buckets for every `rampart_` family.
mod every_metric_described;

/// The per-request counters, counted per thread, over a real server.
mod counted_per_thread;
