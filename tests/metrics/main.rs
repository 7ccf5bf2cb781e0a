//! Every documented metric, as a Prometheus scraper sees it. One test in its
//! own binary: it installs the process-global recorder.

#[path = "../common/mod.rs"]
mod common;

/// `# HELP` lines, units and histogram buckets for every `rampart_` family.
mod every_metric_described;
