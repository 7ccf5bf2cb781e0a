//! The state machine shared by every clone of a breaker.
//!
//! The state and its generation live in one `AtomicU64` (state in the low
//! 3 bits, generation above), so the happy path reads one atomic. Every
//! transition bumps the generation; a permit remembers the word that
//! admitted it, and its result counts only if the word is unchanged.
//! Transitions and half-open bookkeeping run under a short `std` mutex; the
//! sliding window has its own. A full count window holding only fast
//! successes is flagged clean, so one more fast success writes nothing.

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use metrics::{Counter, Gauge};
use tokio::time::Instant;

use super::config::{Backoff, CircuitBreakerConfig};
use super::window::{FAILURE, SLOW, Tally, Window};
use crate::classify::{Classifier, Outcome};
use crate::rejection::{Rejection, RejectionKind};

const TARGET: &str = "tower_rampart::circuit_breaker";

/// The state of a circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum CircuitState {
    /// Calls flow and are recorded; the breaker trips when a rule says so.
    Closed = 0,
    /// Calls are refused until the open duration has elapsed.
    Open = 1,
    /// A few trial calls are let through; their results close or re-open
    /// the circuit.
    HalfOpen = 2,
    /// Manually isolated: every call is refused until reset.
    ForcedOpen = 3,
    /// Manually disabled: every call is let through and nothing is recorded.
    Disabled = 4,
    /// Calls are recorded (metrics, counts) but the breaker never trips.
    MetricsOnly = 5,
}

impl CircuitState {
    const ALL: [CircuitState; 6] = [
        CircuitState::Closed,
        CircuitState::Open,
        CircuitState::HalfOpen,
        CircuitState::ForcedOpen,
        CircuitState::Disabled,
        CircuitState::MetricsOnly,
    ];

    #[inline]
    fn from_word(word: u64) -> Self {
        Self::ALL[(word & 7) as usize % 6]
    }

    /// A stable snake_case name (`closed`, `half_open`, ...), used in
    /// events and metric labels.
    pub const fn as_str(self) -> &'static str {
        match self {
            CircuitState::Closed => "closed",
            CircuitState::Open => "open",
            CircuitState::HalfOpen => "half_open",
            CircuitState::ForcedOpen => "forced_open",
            CircuitState::Disabled => "disabled",
            CircuitState::MetricsOnly => "metrics_only",
        }
    }

    /// Whether calls are refused in this state (open or forced open;
    /// half-open refuses only once its trial permits are taken).
    pub const fn is_refusing(self) -> bool {
        matches!(self, CircuitState::Open | CircuitState::ForcedOpen)
    }
}

impl fmt::Display for CircuitState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[inline]
fn word(state: CircuitState, generation: u64) -> u64 {
    (generation << 3) | state as u64
}

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
    /// The open duration elapsed: trial calls may go through.
    OpenDurationElapsed,
    /// The trial calls succeeded.
    TrialsSucceeded,
    /// The trial calls failed.
    TrialsFailed,
    /// The half-open state waited too long for its trial calls.
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
/// [`CircuitBreakerBuilder::on_event`](super::CircuitBreakerBuilder::on_event).
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

pub(crate) type Listener = Arc<dyn Fn(&CircuitBreakerEvent) + Send + Sync>;
pub(crate) type ErrorClassifier =
    Arc<dyn Fn(&(dyn std::error::Error + Send + Sync + 'static)) -> Outcome + Send + Sync>;

/// The metric handles of one layer, registered once when it is built.
pub(crate) struct Metrics {
    state: Gauge,
    success: Counter,
    failure: Counter,
    ignored: Counter,
    slow: Counter,
    rejections: Counter,
}

impl Metrics {
    fn new(name: &Arc<str>) -> Self {
        crate::metrics_help::describe();
        let n = name.to_string();
        Self {
            state: metrics::gauge!("rampart_circuit_breaker_state", "name" => n.clone()),
            success: metrics::counter!("rampart_circuit_breaker_calls_total", "name" => n.clone(), "outcome" => "success"),
            failure: metrics::counter!("rampart_circuit_breaker_calls_total", "name" => n.clone(), "outcome" => "failure"),
            ignored: metrics::counter!("rampart_circuit_breaker_calls_total", "name" => n.clone(), "outcome" => "ignored"),
            slow: metrics::counter!("rampart_circuit_breaker_slow_calls_total", "name" => n.clone()),
            rejections: metrics::counter!("rampart_circuit_breaker_rejections_total", "name" => n),
        }
    }
}

/// Settings shared by a layer's breaker (or by every key of a keyed one).
pub(crate) struct Settings {
    pub(crate) name: Arc<str>,
    pub(crate) config: CircuitBreakerConfig,
    slow_nanos: Option<u64>,
    needs_clock: bool,
    pub(crate) classifier: Classifier,
    pub(crate) error_classifier: Option<ErrorClassifier>,
    listener: Option<Listener>,
    metrics: Metrics,
    /// Keyed breakers do not drive the state gauge (one gauge, many keys).
    report_state: bool,
}

impl Settings {
    pub(crate) fn new(
        config: CircuitBreakerConfig,
        classifier: Classifier,
        error_classifier: Option<ErrorClassifier>,
        listener: Option<Listener>,
        report_state: bool,
    ) -> Self {
        let name: Arc<str> = config.name.as_str().into();
        let slow_nanos = config
            .slow_call_duration_threshold
            .map(|d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
        let needs_clock = slow_nanos.is_some()
            || matches!(config.window, super::config::SlidingWindow::Time { .. });
        let metrics = Metrics::new(&name);
        Self {
            name,
            config,
            slow_nanos,
            needs_clock,
            classifier,
            error_classifier,
            listener,
            metrics,
            report_state,
        }
    }
}

struct HalfOpen {
    available: u32,
    calls: u32,
    failures: u32,
    slow: u32,
}

struct Inner {
    /// Consecutive openings since the circuit last closed.
    reopens: u32,
    half: HalfOpen,
    rng: u64,
}

/// Per-breaker shared state.
pub(crate) struct Core {
    word: AtomicU64,
    clean: AtomicBool,
    consecutive: AtomicU32,
    open_until: AtomicU64,
    half_open_until: AtomicU64,
    epoch: Instant,
    pub(crate) settings: Arc<Settings>,
    window: Mutex<Window>,
    inner: Mutex<Inner>,
    me: Weak<Core>,
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic elsewhere (e.g. in a user classifier) must not wedge the breaker.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// What `admit` decided.
pub(crate) enum Admission {
    /// Go ahead; the permit's word and start time.
    Admitted { word: u64, start: u64 },
    /// Go ahead, record nothing (disabled).
    Untracked,
    /// Refused (the `Rejection` is built later, off the hot path).
    Rejected(Refusal),
}

/// Why a call was refused: small, so the admission stays cheap to move.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Refusal {
    retry_after: Option<Duration>,
    detail: &'static str,
}

/// A pending event, emitted after the locks are released.
type Pending = Option<CircuitBreakerEvent>;

impl Core {
    pub(crate) fn new(settings: Arc<Settings>) -> Arc<Self> {
        let window = Window::new(settings.config.window);
        // Seed the jitter from the clock and the settings' address, so that
        // breakers (and processes) spread their re-opens differently.
        let seed = {
            let addr = Arc::as_ptr(&settings) as u64;
            let nanos = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.subsec_nanos() as u64 ^ d.as_secs());
            (addr ^ nanos.rotate_left(32)) ^ 0x9E37_79B9_7F4A_7C15
        };
        let core = Arc::new_cyclic(|me| Core {
            word: AtomicU64::new(word(CircuitState::Closed, 0)),
            clean: AtomicBool::new(false),
            consecutive: AtomicU32::new(0),
            open_until: AtomicU64::new(0),
            half_open_until: AtomicU64::new(0),
            epoch: Instant::now(),
            settings,
            window: Mutex::new(window),
            inner: Mutex::new(Inner {
                reopens: 0,
                half: HalfOpen {
                    available: 0,
                    calls: 0,
                    failures: 0,
                    slow: 0,
                },
                rng: seed | 1,
            }),
            me: me.clone(),
        });
        if core.settings.report_state {
            core.settings.metrics.state.set(0.0);
        }
        core
    }

    #[inline]
    pub(crate) fn state(&self) -> CircuitState {
        CircuitState::from_word(self.word.load(Ordering::Acquire))
    }

    #[inline]
    fn now(&self) -> u64 {
        let d = Instant::now().saturating_duration_since(self.epoch);
        u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.settings.name
    }

    /// Decides whether a call may go through.
    #[inline]
    pub(crate) fn admit(&self) -> Admission {
        let w = self.word.load(Ordering::Acquire);
        match CircuitState::from_word(w) {
            CircuitState::Closed | CircuitState::MetricsOnly => Admission::Admitted {
                word: w,
                start: if self.settings.needs_clock {
                    self.now()
                } else {
                    0
                },
            },
            CircuitState::Disabled => Admission::Untracked,
            _ => self.admit_slow(w),
        }
    }

    #[cold]
    fn admit_slow(&self, mut w: u64) -> Admission {
        // At most a few rounds: each one follows a transition.
        for _ in 0..4 {
            match CircuitState::from_word(w) {
                CircuitState::Closed | CircuitState::MetricsOnly | CircuitState::Disabled => {
                    return self.admit();
                }
                CircuitState::ForcedOpen => {
                    return self.reject(CircuitState::ForcedOpen, None, "the circuit is isolated");
                }
                CircuitState::Open => {
                    let now = self.now();
                    let until = self.open_until.load(Ordering::Acquire);
                    if now < until {
                        return self.reject(
                            CircuitState::Open,
                            Some(Duration::from_nanos(until - now)),
                            "the circuit is open",
                        );
                    }
                    self.to_half_open(w);
                }
                CircuitState::HalfOpen => {
                    let now = self.now();
                    if now >= self.half_open_until.load(Ordering::Acquire) {
                        self.transition(w, CircuitState::Open, TransitionReason::HalfOpenMaxWait);
                    } else {
                        let mut inner = lock(&self.inner);
                        if self.word.load(Ordering::Acquire) == w {
                            if inner.half.available > 0 {
                                inner.half.available -= 1;
                                return Admission::Admitted {
                                    word: w,
                                    start: now,
                                };
                            }
                            drop(inner);
                            return self.reject(
                                CircuitState::HalfOpen,
                                None,
                                "the circuit is half-open and its trial calls are taken",
                            );
                        }
                    }
                }
            }
            w = self.word.load(Ordering::Acquire);
        }
        self.reject(self.state(), None, "the circuit is not closed")
    }

    fn reject(
        &self,
        state: CircuitState,
        retry_after: Option<Duration>,
        detail: &'static str,
    ) -> Admission {
        let s = &self.settings;
        s.metrics.rejections.increment(1);
        tracing::debug!(target: TARGET, name = %s.name, state = state.as_str(), retry_after_ms = retry_after.map(|d| d.as_millis() as u64), "circuit breaker refused a call");
        if let Some(l) = &s.listener {
            l(&CircuitBreakerEvent::Rejected {
                name: s.name.clone(),
                state,
                retry_after,
            });
        }
        Admission::Rejected(Refusal {
            retry_after,
            detail,
        })
    }

    /// The `Rejection` answering a refusal, naming the layer with `name`
    /// (a lane's own copy of the name, so that refusals on different threads
    /// do not share one reference count).
    #[cold]
    #[inline(never)]
    pub(crate) fn rejection(r: Refusal, name: Arc<str>) -> Rejection {
        Rejection::new(RejectionKind::CircuitOpen, name)
            .with_retry_after_opt(r.retry_after)
            .with_detail(r.detail)
    }

    /// Records the result of a call admitted under `w`, started at `start`.
    #[inline]
    pub(crate) fn record(&self, w: u64, start: u64, outcome: Outcome) {
        // The happy path: a success that cannot be slow, in the closed state,
        // with nothing to reset and a clean full window: one counter, no write.
        if outcome == Outcome::Success
            && self.settings.slow_nanos.is_none()
            && w & 7 == CircuitState::Closed as u64
            && self.consecutive.load(Ordering::Relaxed) == 0
            && self.clean.load(Ordering::Relaxed)
        {
            self.settings.metrics.success.increment(1);
            return;
        }
        self.record_slow(w, start, outcome);
    }

    fn record_slow(&self, w: u64, start: u64, outcome: Outcome) {
        let s = &*self.settings;
        let state = CircuitState::from_word(w);
        if outcome == Outcome::Ignored {
            s.metrics.ignored.increment(1);
            if state == CircuitState::HalfOpen {
                let mut inner = lock(&self.inner);
                if self.word.load(Ordering::Acquire) == w {
                    inner.half.available += 1;
                }
            }
            return;
        }
        let slow = match s.slow_nanos {
            Some(t) => self.now().saturating_sub(start) > t,
            None => false,
        };
        let failure = outcome == Outcome::Failure;
        if failure {
            s.metrics.failure.increment(1);
        } else {
            s.metrics.success.increment(1);
        }
        if slow {
            s.metrics.slow.increment(1);
        }
        let flags = (u8::from(failure) * FAILURE) | (u8::from(slow) * SLOW);
        match state {
            CircuitState::Closed | CircuitState::MetricsOnly => self.record_closed(w, flags),
            CircuitState::HalfOpen => self.record_half_open(w, flags),
            _ => {}
        }
    }

    #[inline]
    fn record_closed(&self, w: u64, flags: u8) {
        if flags == 0 {
            // Fast success: reset the failure streak, then nothing to do if
            // the window cannot change.
            if self.consecutive.load(Ordering::Relaxed) != 0
                && self.word.load(Ordering::Acquire) == w
            {
                self.consecutive.store(0, Ordering::Relaxed);
            }
            if self.clean.load(Ordering::Relaxed) {
                return;
            }
        }
        self.record_closed_slow(w, flags);
    }

    fn record_closed_slow(&self, w: u64, flags: u8) {
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
            let now = if self.settings.needs_clock {
                self.now()
            } else {
                0
            };
            let mut window = lock(&self.window);
            if self.word.load(Ordering::Acquire) != w {
                return; // a late result: the state moved on
            }
            window.record(now, flags);
            self.clean
                .store(window.is_clean_and_full(), Ordering::Relaxed);
            if reason.is_none() {
                reason = self.judge(window.tally(now));
            }
        }
        if let Some(reason) = reason {
            if CircuitState::from_word(w) == CircuitState::Closed {
                self.transition(w, CircuitState::Open, reason);
            }
        }
    }

    fn judge(&self, t: Tally) -> Option<TransitionReason> {
        let cfg = &self.settings.config;
        if t.calls == 0 || t.calls < cfg.minimum_calls {
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

    fn to_half_open(&self, w: u64) {
        self.transition(
            w,
            CircuitState::HalfOpen,
            TransitionReason::OpenDurationElapsed,
        );
    }

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

    /// Moves from the state in `expected` (exactly that word, or any word
    /// when `None`) to `to`. Returns whether it happened.
    fn transition_from(
        &self,
        expected: Option<u64>,
        to: CircuitState,
        reason: TransitionReason,
    ) -> bool {
        let event: Pending;
        let new_word: u64;
        let mut open_until: Option<u64> = None;
        let mut half_until: Option<u64> = None;
        {
            let mut inner = lock(&self.inner);
            let cur = self.word.load(Ordering::Acquire);
            if expected.is_some_and(|e| e != cur) {
                return false;
            }
            let from = CircuitState::from_word(cur);
            let generation = (cur >> 3) + 1;
            new_word = word(to, generation);
            let now = self.now();
            let mut open_for = None;
            match to {
                CircuitState::Open => {
                    if from == CircuitState::HalfOpen {
                        inner.reopens = inner.reopens.saturating_add(1);
                    }
                    let d = self.open_duration(&mut inner);
                    open_for = Some(d);
                    let until = now.saturating_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX));
                    self.open_until.store(until, Ordering::Release);
                    open_until = Some(until);
                }
                CircuitState::HalfOpen => {
                    let cfg = &self.settings.config;
                    inner.half = HalfOpen {
                        available: cfg.half_open_permits,
                        calls: 0,
                        failures: 0,
                        slow: 0,
                    };
                    let until = now.saturating_add(
                        u64::try_from(cfg.max_wait_in_half_open.as_nanos()).unwrap_or(u64::MAX),
                    );
                    self.half_open_until.store(until, Ordering::Release);
                    half_until = Some(until);
                }
                CircuitState::Closed | CircuitState::MetricsOnly => {
                    if to == CircuitState::Closed {
                        inner.reopens = 0;
                    }
                    let mut window = lock(&self.window);
                    window.clear();
                    self.clean.store(false, Ordering::Relaxed);
                    self.consecutive.store(0, Ordering::Relaxed);
                }
                CircuitState::ForcedOpen | CircuitState::Disabled => {
                    if reason == TransitionReason::Manual {
                        inner.reopens = 0;
                    }
                }
            }
            self.word.store(new_word, Ordering::Release);
            event = Some(CircuitBreakerEvent::Transition {
                name: self.settings.name.clone(),
                from,
                to,
                reason,
                open_for,
            });
        }
        self.emit(event);
        if let Some(until) = open_until {
            self.schedule(
                until,
                new_word,
                CircuitState::HalfOpen,
                TransitionReason::OpenDurationElapsed,
            );
        }
        if let Some(until) = half_until {
            self.schedule(
                until,
                new_word,
                CircuitState::Open,
                TransitionReason::HalfOpenMaxWait,
            );
        }
        true
    }

    fn transition(&self, expected: u64, to: CircuitState, reason: TransitionReason) {
        self.transition_from(Some(expected), to, reason);
    }

    /// A manual move (from a handle), whatever the current state.
    pub(crate) fn force(&self, to: CircuitState) {
        self.transition_from(None, to, TransitionReason::Manual);
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

    /// Moves the state on time when a tokio runtime is there, so that a
    /// handle (e.g. a readiness check) sees `HalfOpen` without waiting for a
    /// call. Without a runtime the move happens lazily on the next call.
    fn schedule(&self, at: u64, expected: u64, to: CircuitState, reason: TransitionReason) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.me.clone();
        let deadline = self.epoch + Duration::from_nanos(at);
        rt.spawn(async move {
            tokio::time::sleep_until(deadline).await;
            if let Some(core) = me.upgrade() {
                core.transition(expected, to, reason);
            }
        });
    }

    /// The counts a handle reports.
    pub(crate) fn snapshot(&self) -> CircuitCounts {
        let now = self.now();
        let t = lock(&self.window).tally(now);
        let cfg = &self.settings.config;
        let rate = |n: u32| {
            (t.calls >= cfg.minimum_calls && t.calls > 0).then(|| n as f32 * 100.0 / t.calls as f32)
        };
        CircuitCounts {
            state: self.state(),
            calls: t.calls,
            failures: t.failures,
            slow_calls: t.slow,
            failure_rate: rate(t.failures),
            slow_call_rate: rate(t.slow),
            consecutive_failures: self.consecutive.load(Ordering::Relaxed),
        }
    }

    /// When an open circuit lets trial calls through, if it is open.
    pub(crate) fn open_remaining(&self) -> Option<Duration> {
        if self.state() != CircuitState::Open {
            return None;
        }
        let until = self.open_until.load(Ordering::Acquire);
        Some(Duration::from_nanos(until.saturating_sub(self.now())))
    }
}

/// What a breaker's sliding window holds, as seen by a
/// [`CircuitBreakerHandle`](super::CircuitBreakerHandle).
#[derive(Debug, Clone, Copy, PartialEq)]
#[non_exhaustive]
pub struct CircuitCounts {
    /// The state.
    pub state: CircuitState,
    /// Calls in the window (successes and failures; ignored calls are not
    /// counted).
    pub calls: u32,
    /// Failed calls in the window.
    pub failures: u32,
    /// Slow calls in the window (failed or not).
    pub slow_calls: u32,
    /// The failure rate in percent, once the window holds the minimum
    /// number of calls.
    pub failure_rate: Option<f32>,
    /// The slow-call rate in percent, once the window holds the minimum
    /// number of calls.
    pub slow_call_rate: Option<f32>,
    /// Failures in a row.
    pub consecutive_failures: u32,
}

/// One breaker as services hold it: the core, reached through one of a few
/// padded lanes so that concurrent calls on different threads do not all
/// bump the same reference count.
#[derive(Clone)]
pub(crate) struct Breaker(Arc<Lanes>);

struct Lanes {
    core: Arc<Core>,
    lanes: Box<[Arc<Lane>]>,
}

/// A cache-line-padded owner of the core: a permit clones its lane, not the
/// core, so two threads admitting calls touch different counters.
#[repr(align(128))]
pub(crate) struct Lane {
    pub(crate) core: Arc<Core>,
    name: Arc<str>,
}

/// This thread's lane number (threads take numbers in turn).
#[inline]
fn lane_index() -> usize {
    use std::cell::Cell;
    static NEXT: AtomicU32 = AtomicU32::new(0);
    thread_local! {
        static LANE: Cell<u32> = const { Cell::new(u32::MAX) };
    }
    let mut i = LANE.with(Cell::get);
    if i == u32::MAX {
        i = NEXT.fetch_add(1, Ordering::Relaxed) & 0xFFFF;
        LANE.with(|c| c.set(i));
    }
    i as usize
}

impl Breaker {
    pub(crate) fn new(settings: Arc<Settings>, lanes: usize) -> Self {
        let core = Core::new(settings);
        let lanes = (0..lanes.max(1).next_power_of_two())
            .map(|_| {
                Arc::new(Lane {
                    name: Arc::from(&*core.settings.name),
                    core: core.clone(),
                })
            })
            .collect();
        Self(Arc::new(Lanes { core, lanes }))
    }

    /// The number of lanes a layer's breaker gets: the machine's parallelism
    /// rounded up to a power of two, at most 16.
    pub(crate) fn default_lanes() -> usize {
        std::thread::available_parallelism()
            .map_or(4, |n| n.get().min(16))
            .next_power_of_two()
    }

    #[inline]
    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.0.core
    }

    #[inline]
    fn lane_ref(&self) -> &Arc<Lane> {
        let lanes = &self.0.lanes;
        // `lanes.len()` is a power of two.
        &lanes[lane_index() & (lanes.len() - 1)]
    }

    #[inline]
    pub(crate) fn lane(&self) -> Arc<Lane> {
        self.lane_ref().clone()
    }

    /// The `Rejection` for a refusal of this breaker.
    pub(crate) fn rejection(&self, r: Refusal) -> Rejection {
        Core::rejection(r, self.lane_ref().name.clone())
    }
}
