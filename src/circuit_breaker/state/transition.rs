//! Transitions: moving between states (a new generation each time), the
//! open duration and its backoff, the timers, and the events they emit.

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::super::config::Backoff;
use super::record::CircuitCounts;
use super::{CircuitState, Core, HalfOpen, Inner, TARGET, lock, nanos, word};

/// Why the breaker changed state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum TransitionReason {
    /// The failure rate reached its threshold.
    FailureRate,
    /// The slow-call rate reached its threshold.
    SlowCallRate,
    /// Too many failures in a row.
    ConsecutiveFailures,
    /// The open duration elapsed: trial calls may go through (on the first
    /// call after it, or on time with `auto_half_open`).
    OpenDurationElapsed,
    /// The trial calls succeeded.
    TrialsSucceeded,
    /// The trial calls failed.
    TrialsFailed,
    /// A trial call was still in flight `max_wait_in_half_open` after the
    /// first trial started.
    HalfOpenMaxWait,
    /// A handle forced the state.
    Manual,
}

impl TransitionReason {
    /// A stable snake_case name, used in events.
    pub const fn as_str(self) -> &'static str {
        match self {
            TransitionReason::FailureRate => "failure_rate",
            TransitionReason::SlowCallRate => "slow_call_rate",
            TransitionReason::ConsecutiveFailures => "consecutive_failures",
            TransitionReason::OpenDurationElapsed => "open_duration_elapsed",
            TransitionReason::TrialsSucceeded => "trials_succeeded",
            TransitionReason::TrialsFailed => "trials_failed",
            TransitionReason::HalfOpenMaxWait => "half_open_max_wait",
            TransitionReason::Manual => "manual",
        }
    }
}

impl fmt::Display for TransitionReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Something a breaker did, given to the callback set with
/// [`CircuitBreakerBuilder::on_event`](crate::circuit_breaker::CircuitBreakerBuilder::on_event).
/// The callback never runs under one of the breaker's locks.
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum CircuitBreakerEvent {
    /// The state changed.
    Transition {
        /// The breaker's name.
        name: Arc<str>,
        /// The state before.
        from: CircuitState,
        /// The state after.
        to: CircuitState,
        /// Why.
        reason: TransitionReason,
        /// For a transition to open: how long it stays open.
        open_for: Option<Duration>,
    },
    /// A tripping rule was met while the breaker is in metrics-only mode:
    /// the event that would have opened the circuit, so that a breaker
    /// tried out in shadow can alert. Emitted once each time the window
    /// crosses a rule, again only after it went back under every rule (or
    /// the state changed). In the closed state the
    /// [`Transition`](Self::Transition) to open carries the reason instead.
    ThresholdExceeded {
        /// The breaker's name.
        name: Arc<str>,
        /// The state (metrics-only).
        state: CircuitState,
        /// The rule that was met.
        reason: TransitionReason,
        /// The counts at that moment.
        counts: CircuitCounts,
    },
    /// A call was refused (or answered by the fallback).
    Rejected {
        /// The breaker's name.
        name: Arc<str>,
        /// The state that refused it.
        state: CircuitState,
        /// When the caller may try again, if known.
        retry_after: Option<Duration>,
    },
}

/// A pending event, emitted after the locks are released.
type Pending = Option<CircuitBreakerEvent>;

/// What a breaker's timer task checks when it fires.
#[derive(Clone, Copy)]
pub(super) enum Timer {
    /// Open -> half-open (only with `auto_half_open`).
    OpenElapsed,
    /// The half-open max wait.
    HalfOpenWait,
}

impl Core {
    fn open_duration(&self, inner: &mut Inner) -> Duration {
        let cfg = &self.settings.config;
        let base = cfg.open_duration;
        let Some(Backoff {
            multiplier,
            max,
            jitter,
        }) = cfg.backoff
        else {
            return base;
        };
        let grown = base.as_secs_f64() * multiplier.powi(inner.reopens.min(1000) as i32);
        let mut secs = grown.min(max.as_secs_f64());
        if jitter > 0.0 {
            // xorshift64*: good enough to spread re-opens, no dependency.
            let mut x = inner.rng;
            x ^= x >> 12;
            x ^= x << 25;
            x ^= x >> 27;
            inner.rng = x;
            let unit = (x.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64;
            secs *= 1.0 + jitter * (2.0 * unit - 1.0);
        }
        // Jitter spreads re-opens but never past the cap, and a huge cap
        // never overflows a Duration.
        let secs = secs.min(max.as_secs_f64()).max(1e-9);
        Duration::try_from_secs_f64(secs).unwrap_or(max)
    }

    /// Moves from the state in `expected` (exactly that word, or any other
    /// state when `None`) to `to`, if `guard` (run under the lock with the
    /// half-open bookkeeping and the current time) agrees. `open_for`
    /// overrides the open duration (a timed manual open). Returns whether
    /// it happened.
    pub(super) fn transition_from(
        &self,
        expected: Option<u64>,
        to: CircuitState,
        reason: TransitionReason,
        open_for: Option<Duration>,
        guard: impl FnOnce(&mut Inner, u64) -> bool,
    ) -> bool {
        let event: Pending;
        let new_word: u64;
        let mut open_until: Option<u64> = None;
        {
            let mut inner = lock(&self.inner);
            let cur = self.word.load(Ordering::Acquire);
            let from = CircuitState::from_word(cur);
            match expected {
                Some(e) if e != cur => return false,
                // A manual move to the state the breaker is in is no move:
                // no event, and results in flight stay valid.
                None if from == to => return false,
                _ => {}
            }
            let now = self.now();
            if !guard(&mut inner, now) {
                return false;
            }
            let generation = (cur >> 3) + 1;
            new_word = word(to, generation);
            let mut opened_for = None;
            match to {
                CircuitState::Open => {
                    let d = match open_for {
                        Some(d) => d,
                        None => {
                            // Only a re-open that some trial call earned
                            // grows the backoff.
                            let permits = self.settings.config.half_open_permits;
                            if from == CircuitState::HalfOpen && inner.half.available < permits {
                                inner.reopens = inner.reopens.saturating_add(1);
                            }
                            self.open_duration(&mut inner)
                        }
                    };
                    opened_for = Some(d);
                    inner.open_after_trials = from == CircuitState::HalfOpen;
                    let until = now.saturating_add(nanos(d));
                    self.open_until.store(until, Ordering::Release);
                    open_until = Some(until);
                }
                CircuitState::HalfOpen => {
                    inner.half = HalfOpen::new(self.settings.config.half_open_permits);
                }
                CircuitState::Closed
                | CircuitState::MetricsOnly
                | CircuitState::ForcedOpen
                | CircuitState::Disabled => {
                    // Each of these starts counting afresh (forced open and
                    // disabled count nothing at all).
                    if to != CircuitState::MetricsOnly {
                        inner.reopens = 0;
                    }
                    let mut window = lock(&self.window);
                    window.clear();
                    self.clean.store(false, Ordering::Relaxed);
                    if let Some(fast) = &self.fast {
                        fast.clear();
                    }
                    self.consecutive.store(0, Ordering::Relaxed);
                }
            }
            self.not_permitted.reset();
            self.exceeded.store(false, Ordering::Relaxed);
            self.word.store(new_word, Ordering::Release);
            event = Some(CircuitBreakerEvent::Transition {
                name: self.settings.name.clone(),
                from,
                to,
                reason,
                open_for: opened_for,
            });
        }
        self.emit(event);
        if let Some(until) = open_until {
            if self.settings.config.auto_half_open {
                self.schedule(until, new_word, Timer::OpenElapsed);
            }
        }
        true
    }

    pub(super) fn transition(&self, expected: u64, to: CircuitState, reason: TransitionReason) {
        self.transition_from(Some(expected), to, reason, None, |_, _| true);
    }

    pub(super) fn transition_if(
        &self,
        expected: u64,
        to: CircuitState,
        reason: TransitionReason,
        guard: impl FnOnce(&mut Inner, u64) -> bool,
    ) {
        self.transition_from(Some(expected), to, reason, None, guard);
    }

    fn emit(&self, event: Pending) {
        let Some(event) = event else { return };
        let s = &self.settings;
        if let CircuitBreakerEvent::Transition {
            from,
            to,
            reason,
            open_for,
            ..
        } = &event
        {
            if s.report_state {
                s.metrics.state.set(f64::from(*to as u8));
            }
            metrics::counter!("rampart_circuit_breaker_transitions_total", "name" => s.name.to_string(), "from" => from.as_str(), "to" => to.as_str()).increment(1);
            let open_ms = open_for.map(|d| d.as_millis() as u64);
            if *to == CircuitState::Open {
                tracing::warn!(target: TARGET, name = %s.name, from = from.as_str(), to = to.as_str(), reason = reason.as_str(), open_ms, "circuit breaker state changed");
            } else {
                tracing::info!(target: TARGET, name = %s.name, from = from.as_str(), to = to.as_str(), reason = reason.as_str(), open_ms, "circuit breaker state changed");
            }
        }
        if let Some(l) = &s.listener {
            l(&event);
        }
    }

    /// Runs `timer` at `at` when a tokio runtime is there: the automatic
    /// open -> half-open move (opt-in), and the half-open max wait. Without
    /// a runtime both happen lazily, on the next call.
    pub(super) fn schedule(&self, at: u64, expected: u64, timer: Timer) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.me.clone();
        let deadline = self.clock.instant(at);
        rt.spawn(async move {
            tokio::time::sleep_until(deadline).await;
            if let Some(core) = me.upgrade() {
                core.on_timer(expected, timer);
            }
        });
    }

    fn on_timer(&self, expected: u64, timer: Timer) {
        match timer {
            Timer::OpenElapsed => {
                // `open_for` may have moved the end of the open time.
                let until = self.open_until.load(Ordering::Acquire);
                self.transition_if(
                    expected,
                    CircuitState::HalfOpen,
                    TransitionReason::OpenDurationElapsed,
                    |_, now| now >= until,
                );
            }
            Timer::HalfOpenWait => {
                let permits = self.settings.config.half_open_permits;
                self.transition_if(
                    expected,
                    CircuitState::Open,
                    TransitionReason::HalfOpenMaxWait,
                    |inner, now| {
                        let h = &mut inner.half;
                        if h.deadline.is_none_or(|d| now < d) {
                            return false; // re-armed later
                        }
                        if h.in_flight(permits) > 0 {
                            return true; // a trial is stuck: re-open
                        }
                        // Quiet, not stuck: the next trial re-arms it.
                        h.deadline = None;
                        false
                    },
                );
            }
        }
    }
}
