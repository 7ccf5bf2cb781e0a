//! The `# HELP` text and unit of every metric the crate records, described
//! to the current `metrics` recorder whenever a layer registers its
//! metrics.
//!
//! Each module lists its own metrics (a `METRICS` constant next to its
//! docs) and describes them with [`describe`] when its layer registers its
//! metrics, so a new layer touches no list outside its folder; a test over
//! the Prometheus exporter (`tests/metrics/`) checks that every metric of
//! the crate docs' table is rendered with a `# HELP` line.
//!
//! Not a `std::sync::Once`: layers are also built before the recorder is
//! installed (`RampartConfig::load` builds the rate limit and the timeout
//! to validate them), and a once-per-process description would go to the
//! no-op recorder and be lost. Describing is cheap (twenty map inserts in
//! the recorder), happens when a layer is built, never per request, and is
//! idempotent.

use metrics::{Unit, describe_counter, describe_gauge, describe_histogram};

/// What a metric is, for its `# HELP` line.
#[derive(Debug, Clone, Copy)]
pub(crate) enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One metric's description: name, kind, unit and meaning.
#[derive(Debug)]
pub(crate) struct Help {
    pub(crate) name: &'static str,
    pub(crate) kind: MetricKind,
    pub(crate) unit: Option<Unit>,
    pub(crate) text: &'static str,
}

/// Describes `metrics` to the current recorder (idempotent; called when a
/// layer is built, never per request).
pub(crate) fn describe(metrics: &[Help]) {
    for m in metrics {
        match (m.kind, m.unit) {
            (MetricKind::Counter, Some(u)) => describe_counter!(m.name, u, m.text),
            (MetricKind::Counter, None) => describe_counter!(m.name, m.text),
            (MetricKind::Gauge, Some(u)) => describe_gauge!(m.name, u, m.text),
            (MetricKind::Gauge, None) => describe_gauge!(m.name, m.text),
            (MetricKind::Histogram, Some(u)) => describe_histogram!(m.name, u, m.text),
            (MetricKind::Histogram, None) => describe_histogram!(m.name, m.text),
        }
    }
}
