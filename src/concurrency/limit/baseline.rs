//! What the latency-driven algorithms ([`Vegas`](super::Vegas),
//! [`Gradient2`](super::Gradient2)) share: a round trip's samples summed
//! ([`Window`]), and the minRTT measured at pinned low concurrency and
//! re-probed ([`MinRtt`]), after Envoy's adaptive concurrency filter.

use std::time::Duration;

use super::{Jitter, Outcome, Sample, nanos};
use crate::ConfigError;

/// Round trips at `min_limit` (while the limit is in use) after which the
/// minRTT is re-measured (Envoy: 5 sampling windows).
const ROUNDS_AT_MIN_BEFORE_PROBE: u32 = 5;

/// How the minRTT is measured.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(crate) struct ProbeSettings {
    /// The limit while measuring.
    pub(crate) limit: usize,
    /// Successes at that limit whose median is the minRTT.
    pub(crate) samples: usize,
    /// Round trips between measurements.
    pub(crate) interval: u32,
    /// The fraction of the interval taken off at random.
    pub(crate) jitter: f64,
}

impl ProbeSettings {
    /// Checks the settings against `max_limit`, naming the field.
    pub(crate) fn validate(&self, max_limit: usize) -> Result<(), ConfigError> {
        if self.limit == 0 || self.limit > max_limit {
            return Err(ConfigError::new(
                "probe_limit",
                format!(
                    "must be between 1 and `max_limit` ({max_limit}), found {}",
                    self.limit
                ),
            ));
        }
        if self.samples == 0 || self.samples > 10_000 {
            return Err(ConfigError::new(
                "probe_samples",
                format!("must be between 1 and 10000, found {}", self.samples),
            ));
        }
        if self.interval == 0 {
            return Err(ConfigError::new(
                "probe_interval",
                crate::config_util::MUST_BE_POSITIVE,
            ));
        }
        super::check_range("probe_jitter", self.jitter, 0.0, 1.0, false)
    }
}

/// The minRTT: measured when created, every `interval` round trips, and
/// when the limit is stuck at its minimum.
///
/// While probing, only successes admitted with at most `limit` in flight
/// count: the requests admitted before the limit was pinned are still
/// draining and would measure the queue, not the service.
#[derive(Clone, Debug)]
pub(crate) struct MinRtt {
    settings: ProbeSettings,
    min_rtt: Option<f64>,
    /// While probing: the samples so far (capacity `samples`, allocated once).
    probe: Vec<Duration>,
    probing: bool,
    rounds: u32,
    rounds_to_probe: f64,
    rounds_at_min: u32,
    jitter: Jitter,
}

impl MinRtt {
    /// Starts by probing.
    pub(crate) fn new(settings: ProbeSettings) -> Self {
        Self {
            settings,
            min_rtt: None,
            probe: Vec::with_capacity(settings.samples),
            probing: true,
            rounds: 0,
            rounds_to_probe: 0.0,
            rounds_at_min: 0,
            jitter: Jitter::new(),
        }
    }

    /// Whether the limit must stay pinned to [`probe_limit`](Self::probe_limit).
    pub(crate) fn is_probing(&self) -> bool {
        self.probing
    }

    /// The limit while probing.
    pub(crate) fn probe_limit(&self) -> usize {
        self.settings.limit
    }

    /// The minRTT in nanoseconds (`None` before the first probe ends).
    pub(crate) fn nanos(&self) -> Option<f64> {
        self.min_rtt
    }

    /// The minRTT.
    pub(crate) fn get(&self) -> Option<Duration> {
        self.min_rtt.map(|n| Duration::from_nanos(n as u64))
    }

    /// Feeds a sample while probing; `true` when the probe just ended.
    pub(crate) fn feed(&mut self, sample: &Sample) -> bool {
        debug_assert!(self.probing);
        if sample.outcome != Outcome::Success || sample.in_flight > self.settings.limit {
            return false;
        }
        self.probe.push(sample.rtt);
        if self.probe.len() < self.settings.samples {
            return false;
        }
        let mid = self.probe.len() / 2;
        let (_, median, _) = self.probe.select_nth_unstable(mid);
        self.min_rtt = Some(nanos(*median));
        self.probe.clear();
        self.probing = false;
        self.rounds = 0;
        self.rounds_at_min = 0;
        self.rounds_to_probe = self
            .jitter
            .shorten(f64::from(self.settings.interval), self.settings.jitter);
        true
    }

    /// Counts a round trip outside a probe (`stuck`: the limit sat at its
    /// minimum while in use); `true` when a probe starts now.
    pub(crate) fn end_round(&mut self, stuck: bool) -> bool {
        self.rounds += 1;
        self.rounds_at_min = if stuck { self.rounds_at_min + 1 } else { 0 };
        if f64::from(self.rounds) >= self.rounds_to_probe
            || self.rounds_at_min >= ROUNDS_AT_MIN_BEFORE_PROBE
        {
            self.probing = true;
        }
        self.probing
    }
}

/// One round trip's samples, summed.
#[derive(Clone, Debug, Default)]
pub(crate) struct Window {
    pub(crate) successes: usize,
    pub(crate) drops: usize,
    rtt_sum: f64,
    pub(crate) max_in_flight: usize,
}

impl Window {
    /// Adds a success or a drop; `true` once the window holds `size`.
    pub(crate) fn add(&mut self, sample: &Sample, size: usize) -> bool {
        match sample.outcome {
            Outcome::Ignored => return false,
            Outcome::Dropped => self.drops += 1,
            Outcome::Success => {
                self.successes += 1;
                self.rtt_sum += nanos(sample.rtt);
            }
        }
        self.max_in_flight = self.max_in_flight.max(sample.in_flight);
        self.successes + self.drops >= size
    }

    /// The mean RTT of the successes, in nanoseconds.
    pub(crate) fn mean_rtt(&self) -> Option<f64> {
        (self.successes > 0).then(|| self.rtt_sum / self.successes as f64)
    }

    /// Whether the limit was in use: at least half of it in flight at some
    /// point (Netflix's guard against growing while idle).
    pub(crate) fn in_use(&self, limit: f64) -> bool {
        self.max_in_flight as f64 >= limit / 2.0
    }
}
