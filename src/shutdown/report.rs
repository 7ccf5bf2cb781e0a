//! What a shutdown did: the [`ShutdownReport`] and its tracing event.

use std::time::Duration;

use super::phase::Trigger;

/// How one cleanup hook ended.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookOutcome {
    /// It finished in time.
    Completed,
    /// It ran out of time and was cancelled.
    TimedOut,
    /// It panicked.
    Panicked,
}

/// The record of one cleanup hook.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookReport {
    /// The name it was registered with.
    pub name: String,
    /// How it ended.
    pub outcome: HookOutcome,
    /// How long it ran.
    pub duration: Duration,
}

/// What a shutdown did: returned by [`Shutdown::done`](super::Shutdown::done) and emitted as the
/// `shutdown complete` tracing event.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// What started it.
    pub trigger: Trigger,
    /// Time spent in [`Phase::ShutdownRequested`](super::Phase::ShutdownRequested) (the shutdown delay).
    pub delay: Duration,
    /// Time spent in [`Phase::Draining`](super::Phase::Draining), abort included.
    pub drain: Duration,
    /// Time spent running cleanup hooks.
    pub hooks_duration: Duration,
    /// From the trigger to [`Phase::Done`](super::Phase::Done).
    pub total: Duration,
    /// Requests in flight when draining began.
    pub in_flight_at_drain: usize,
    /// Requests that completed while draining: those in flight when it
    /// began, and those the `serve` loop answered on
    /// connections it had accepted before the listener closed.
    pub finished: u64,
    /// Requests cut off at the drain deadline.
    pub aborted: u64,
    /// Requests still counted in flight when the coordinator gave up
    /// waiting for the aborted ones (normally 0).
    pub left_in_flight: usize,
    /// Did the drain hit `drain_timeout`?
    pub drain_timed_out: bool,
    /// Every cleanup hook, in the order they ran.
    pub hooks: Vec<HookReport>,
}

pub(super) fn emit(name: &str, r: &ShutdownReport) {
    let hooks_failed = r
        .hooks
        .iter()
        .filter(|h| h.outcome != HookOutcome::Completed)
        .count();
    macro_rules! event {
        ($level:ident) => {
            tracing::$level!(
                target: "tower_rampart::shutdown",
                name,
                trigger = r.trigger.as_str(),
                delay_ms = r.delay.as_millis() as u64,
                drain_ms = r.drain.as_millis() as u64,
                hooks_ms = r.hooks_duration.as_millis() as u64,
                total_ms = r.total.as_millis() as u64,
                in_flight_at_drain = r.in_flight_at_drain,
                finished = r.finished,
                aborted = r.aborted,
                hooks = r.hooks.len(),
                hooks_failed,
                "shutdown complete"
            )
        };
    }
    if r.aborted > 0 || hooks_failed > 0 || r.left_in_flight > 0 {
        event!(warn);
    } else {
        event!(info);
    }
}
