//! Recording: a call's outcome into the window (or the half-open trials),
//! the tripping rules, and the counts a handle reports.

use std::sync::atomic::Ordering;

use super::super::window::{FAILURE, SLOW, Tally};
use super::transition::TransitionReason;
use super::{
    CALL_FAILURE, CALL_IGNORED, CALL_SLOW, CALL_SUCCESS, CircuitBreakerEvent, CircuitState, Core,
    TARGET, lock,
};
use crate::classify::Outcome;

impl Core {
    /// Records the result of a call admitted under `w`, started at `start`.
    #[inline]
    pub(crate) fn record(&self, w: u64, start: u64, outcome: Outcome) {
        // The happy path: a success that cannot be slow, in the closed state,
        // with nothing to reset and a clean full window: one counter, no write
        // and no lock. Kept for the contended rows of `benches/README.md`
        // ("Circuit breaker"): without it every success would take the
        // window's mutex, which two threads would then share.
        if outcome == Outcome::Success
            && self.settings.slow_nanos.is_none()
            && w & 7 == CircuitState::Closed as u64
            && self.consecutive.load(Ordering::Relaxed) == 0
            && self.clean.load(Ordering::Relaxed)
        {
            self.settings.metrics.calls.increment(CALL_SUCCESS);
            return;
        }
        self.record_slow(w, start, outcome);
    }

    fn record_slow(&self, w: u64, start: u64, outcome: Outcome) {
        let s = &*self.settings;
        let state = CircuitState::from_word(w);
        if outcome == Outcome::Ignored {
            s.metrics.calls.increment(CALL_IGNORED);
            if state == CircuitState::HalfOpen {
                let mut inner = lock(&self.inner);
                if self.word.load(Ordering::Acquire) == w {
                    inner.half.available += 1;
                }
            }
            return;
        }
        // One clock reading for the call's duration and its bucket.
        let now = if s.needs_clock { self.now() } else { 0 };
        let slow = match s.slow_nanos {
            Some(t) => now.saturating_sub(start) > t,
            None => false,
        };
        let failure = outcome == Outcome::Failure;
        if failure {
            s.metrics.calls.increment(CALL_FAILURE);
        } else {
            s.metrics.calls.increment(CALL_SUCCESS);
        }
        if slow {
            s.metrics.calls.increment(CALL_SLOW);
        }
        let flags = (u8::from(failure) * FAILURE) | (u8::from(slow) * SLOW);
        match state {
            CircuitState::Closed | CircuitState::MetricsOnly => self.record_closed(w, flags, now),
            CircuitState::HalfOpen => self.record_half_open(w, flags),
            _ => {}
        }
    }

    #[inline]
    fn record_closed(&self, w: u64, flags: u8, now: u64) {
        if flags == 0 {
            // Fast success: reset the failure streak, then nothing to do if
            // the window cannot change, or (a time window) counted on this
            // thread's slot if it cannot change the verdict.
            if self.consecutive.load(Ordering::Relaxed) != 0
                && self.word.load(Ordering::Acquire) == w
            {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            if self.clean.load(Ordering::Relaxed) {
                return;
            }
            if self.fast.as_ref().is_some_and(|f| f.try_count(w, now)) {
                return;
            }
        }
        self.record_closed_slow(w, flags, now);
    }

    fn record_closed_slow(&self, w: u64, flags: u8, now: u64) {
        let cfg = &self.settings.config;
        let mut reason = None;
        if flags & FAILURE != 0 {
            if self.word.load(Ordering::Acquire) != w {
                return;
            }
            let n = self.consecutive.fetch_add(1, Ordering::Relaxed) + 1;
            if cfg.consecutive_failures.is_some_and(|limit| n >= limit) {
                reason = Some(TransitionReason::ConsecutiveFailures);
            }
        }
        {
            let mut window = lock(&self.window);
            if self.word.load(Ordering::Acquire) != w {
                return; // a late result: the state moved on
            }
            if let Some(fast) = &self.fast {
                fast.fold(&mut window, w, now);
            }
            window.record(now, flags);
            self.clean
                .store(window.is_clean_and_full(), Ordering::Relaxed);
            let tally = window.tally(now);
            if reason.is_none() {
                reason = self.tripping_rule(tally);
            }
            if let Some(fast) = &self.fast {
                fast.judged(w, now, tally.calls, cfg.minimum_calls, reason.is_some());
            }
        }
        match (CircuitState::from_word(w), reason) {
            (CircuitState::Closed, Some(reason)) => {
                self.transition(w, CircuitState::Open, reason);
            }
            (CircuitState::MetricsOnly, Some(reason))
                if !self.exceeded.swap(true, Ordering::AcqRel) =>
            {
                self.threshold_exceeded(w, reason);
            }
            (CircuitState::MetricsOnly, None)
                if self.exceeded.load(Ordering::Relaxed)
                    && self.word.load(Ordering::Acquire) == w =>
            {
                // Back under every rule: the next crossing alerts again.
                self.exceeded.store(false, Ordering::Release);
            }
            _ => {}
        }
    }

    /// Metrics-only mode met a rule: tell the operator what would have
    /// opened the circuit.
    #[cold]
    fn threshold_exceeded(&self, w: u64, reason: TransitionReason) {
        if self.word.load(Ordering::Acquire) != w {
            return;
        }
        let s = &self.settings;
        let counts = self.snapshot();
        metrics::counter!("rampart_circuit_breaker_threshold_exceeded_total", "name" => s.name.to_string(), "reason" => reason.as_str()).increment(1);
        tracing::warn!(target: TARGET, name = %s.name, state = CircuitState::MetricsOnly.as_str(), reason = reason.as_str(), calls = counts.calls, failures = counts.failures, slow_calls = counts.slow_calls, "circuit breaker threshold exceeded (metrics-only: the circuit stays closed)");
        if let Some(l) = &s.listener {
            l(&CircuitBreakerEvent::ThresholdExceeded {
                name: s.name.clone(),
                state: CircuitState::MetricsOnly,
                reason,
                counts,
            });
        }
    }

    /// The rule the window meets, if any (rates only once it holds
    /// `minimum_calls` calls).
    fn tripping_rule(&self, t: Tally) -> Option<TransitionReason> {
        let cfg = &self.settings.config;
        if t.calls == 0 || t.calls < u64::from(cfg.minimum_calls) {
            return None;
        }
        let calls = t.calls as f32;
        if t.failures as f32 * 100.0 / calls >= cfg.failure_rate_threshold {
            return Some(TransitionReason::FailureRate);
        }
        if self.settings.slow_nanos.is_some()
            && t.slow as f32 * 100.0 / calls >= cfg.slow_call_rate_threshold
        {
            return Some(TransitionReason::SlowCallRate);
        }
        None
    }

    fn record_half_open(&self, w: u64, flags: u8) {
        let cfg = &self.settings.config;
        let verdict = {
            let mut inner = lock(&self.inner);
            if self.word.load(Ordering::Acquire) != w {
                return;
            }
            let h = &mut inner.half;
            h.calls += 1;
            h.failures += u32::from(flags & FAILURE != 0);
            h.slow += u32::from(flags & SLOW != 0);
            if flags & FAILURE != 0 {
                h.consecutive += 1;
            } else {
                h.consecutive = 0;
            }
            if h.calls < cfg.half_open_permits {
                None
            } else {
                let calls = h.calls as f32;
                let failed = h.failures as f32 * 100.0 / calls >= cfg.failure_rate_threshold
                    || (self.settings.slow_nanos.is_some()
                        && h.slow as f32 * 100.0 / calls >= cfg.slow_call_rate_threshold);
                Some(failed)
            }
        };
        match verdict {
            Some(true) => self.transition(w, CircuitState::Open, TransitionReason::TrialsFailed),
            Some(false) => {
                self.transition(w, CircuitState::Closed, TransitionReason::TrialsSucceeded)
            }
            None => {}
        }
    }

    /// The counts a handle reports: in half-open the trial calls, otherwise
    /// the sliding window (in open, the window that tripped it).
    pub(crate) fn snapshot(&self) -> CircuitCounts {
        let cfg = &self.settings.config;
        let not_permitted = self.not_permitted.sum();
        {
            let inner = lock(&self.inner);
            let state = self.state();
            if state == CircuitState::HalfOpen
                || (state == CircuitState::Open && inner.open_after_trials)
            {
                let h = &inner.half;
                let rate = |n: u32| {
                    (h.calls >= cfg.half_open_permits && h.calls > 0)
                        .then(|| n as f32 * 100.0 / h.calls as f32)
                };
                return CircuitCounts {
                    state,
                    calls: h.calls.into(),
                    failures: h.failures.into(),
                    slow_calls: h.slow.into(),
                    failure_rate: rate(h.failures),
                    slow_call_rate: rate(h.slow),
                    consecutive_failures: h.consecutive,
                    not_permitted,
                };
            }
        }
        let now = self.now();
        let t = {
            let mut window = lock(&self.window);
            if let Some(fast) = &self.fast {
                fast.fold(&mut window, self.word.load(Ordering::Acquire), now);
            }
            window.tally(now)
        };
        let rate = |n: u64| {
            (t.calls >= u64::from(cfg.minimum_calls) && t.calls > 0)
                .then(|| n as f32 * 100.0 / t.calls as f32)
        };
        CircuitCounts {
            state: self.state(),
            calls: t.calls,
            failures: t.failures,
            slow_calls: t.slow,
            failure_rate: rate(t.failures),
            slow_call_rate: rate(t.slow),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
            not_permitted,
        }
    }
}

/// What a breaker has seen, as a
/// [`CircuitBreakerHandle`](crate::circuit_breaker::CircuitBreakerHandle) reports it: the
/// sliding window when closed or metrics-only; in open, the calls that
/// opened it (the window, or the failed trials); the trial calls when
/// half-open (their rates once every permit was used); nothing in forced
/// open and disabled, which start afresh.
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct CircuitCounts {
    /// The state.
    pub state: CircuitState,
    /// Calls in the window (successes and failures; ignored calls are not
    /// counted).
    pub calls: u64,
    /// Failed calls in the window.
    pub failures: u64,
    /// Slow calls in the window (failed or not).
    pub slow_calls: u64,
    /// The failure rate in percent, once the window holds the minimum
    /// number of calls.
    pub failure_rate: Option<f32>,
    /// The slow-call rate in percent, once the window holds the minimum
    /// number of calls.
    pub slow_call_rate: Option<f32>,
    /// Failures in a row (in half-open: among the trial calls).
    pub consecutive_failures: u32,
    /// Calls refused since the state last changed (R4j's "not permitted
    /// calls"): in open, how many callers the open circuit turned away.
    pub not_permitted: u64,
}
