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
    /// half-open refuses only once its trial permits are taken, and an open
    /// circuit whose open duration is over admits the next call as a
    /// trial).
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

#[inline]
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
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

/// The trial calls of one half-open generation. `available + calls +
/// in-flight = half_open_permits`.
struct HalfOpen {
    available: u32,
    calls: u32,
    failures: u32,
    slow: u32,
    consecutive: u32,
    /// When a trial still in flight at this time re-opens the circuit
    /// (`max_wait_in_half_open` after the first trial was admitted).
    deadline: Option<u64>,
}

impl HalfOpen {
    fn new(permits: u32) -> Self {
        Self {
            available: permits,
            calls: 0,
            failures: 0,
            slow: 0,
            consecutive: 0,
            deadline: None,
        }
    }

    fn in_flight(&self, permits: u32) -> u32 {
        permits.saturating_sub(self.available + self.calls)
    }
}

/// What a breaker's timer task checks when it fires.
#[derive(Clone, Copy)]
enum Timer {
    /// Open -> half-open (only with `auto_half_open`).
    OpenElapsed,
    /// The half-open max wait.
    HalfOpenWait,
}

/// How long a caller refused in half-open is asked to wait: the trial calls
/// usually decide within one request's time, and one second is the smallest
/// `Retry-After` there is.
pub(crate) const HALF_OPEN_RETRY_AFTER: Duration = Duration::from_secs(1);

struct Inner {
    /// Consecutive openings since the circuit last closed.
    reopens: u32,
    /// Open after failed trials: `counts()` shows those trials.
    open_after_trials: bool,
    half: HalfOpen,
    rng: u64,
}

/// Per-breaker shared state.
pub(crate) struct Core {
    word: AtomicU64,
    clean: AtomicBool,
    consecutive: AtomicU32,
    open_until: AtomicU64,
    /// Calls refused since the state last changed.
    not_permitted: AtomicU64,
    /// Metrics-only mode: a rule is met and its event was emitted.
    exceeded: AtomicBool,
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
            not_permitted: AtomicU64::new(0),
            exceeded: AtomicBool::new(false),
            epoch: Instant::now(),
            settings,
            window: Mutex::new(window),
            inner: Mutex::new(Inner {
                reopens: 0,
                open_after_trials: false,
                half: HalfOpen::new(0),
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
                    // Isolation has no end time: ask callers to come back
                    // after one open duration, the pace at which an open
                    // circuit would try again.
                    return self.reject(
                        CircuitState::ForcedOpen,
                        Some(self.settings.config.open_duration),
                        "the circuit is isolated",
                    );
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
                    // The first call after the open duration starts the
                    // half-open state (and becomes its first trial), unless
                    // `open_for` just moved the end of the open time.
                    self.transition_if(
                        w,
                        CircuitState::HalfOpen,
                        TransitionReason::OpenDurationElapsed,
                        |_, now| now >= self.open_until.load(Ordering::Acquire),
                    );
                }
                CircuitState::HalfOpen => {
                    let now = self.now();
                    let permits = self.settings.config.half_open_permits;
                    let mut inner = lock(&self.inner);
                    if self.word.load(Ordering::Acquire) == w {
                        let h = &mut inner.half;
                        let mut expired = false;
                        if h.deadline.is_some_and(|d| now >= d) {
                            if h.in_flight(permits) > 0 {
                                expired = true;
                            } else {
                                // Quiet, not stuck: the next trial re-arms it.
                                h.deadline = None;
                            }
                        }
                        if expired {
                            drop(inner);
                            self.transition_if(
                                w,
                                CircuitState::Open,
                                TransitionReason::HalfOpenMaxWait,
                                |_, _| true,
                            );
                        } else if h.available > 0 {
                            h.available -= 1;
                            let arm = h.deadline.is_none().then(|| {
                                let at = now.saturating_add(nanos(
                                    self.settings.config.max_wait_in_half_open,
                                ));
                                h.deadline = Some(at);
                                at
                            });
                            drop(inner);
                            if let Some(at) = arm {
                                self.schedule(at, w, Timer::HalfOpenWait);
                            }
                            return Admission::Admitted {
                                word: w,
                                start: now,
                            };
                        } else {
                            drop(inner);
                            return self.reject(
                                CircuitState::HalfOpen,
                                Some(HALF_OPEN_RETRY_AFTER),
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
        self.not_permitted.fetch_add(1, Ordering::Relaxed);
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
    fn transition_from(
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
                    self.consecutive.store(0, Ordering::Relaxed);
                }
            }
            self.not_permitted.store(0, Ordering::Relaxed);
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

    fn transition(&self, expected: u64, to: CircuitState, reason: TransitionReason) {
        self.transition_from(Some(expected), to, reason, None, |_, _| true);
    }

    fn transition_if(
        &self,
        expected: u64,
        to: CircuitState,
        reason: TransitionReason,
        guard: impl FnOnce(&mut Inner, u64) -> bool,
    ) {
        self.transition_from(Some(expected), to, reason, None, guard);
    }

    /// A manual move (from a handle), whatever the current state; none when
    /// the breaker is already in `to`.
    pub(crate) fn force(&self, to: CircuitState) -> bool {
        self.transition_from(None, to, TransitionReason::Manual, None, |_, _| true)
    }

    /// Closed with an empty window and the backoff reset, from any state.
    /// Already closed, it forgets the window without a transition.
    pub(crate) fn reset(&self) {
        if self.force(CircuitState::Closed) {
            return;
        }
        let mut inner = lock(&self.inner);
        if self.state() == CircuitState::Closed {
            inner.reopens = 0;
            let mut window = lock(&self.window);
            window.clear();
            self.clean.store(false, Ordering::Relaxed);
            self.consecutive.store(0, Ordering::Relaxed);
        }
    }

    /// Open for `d`, then half-open as after any opening. Already open, it
    /// only moves the end of the open time (no event, no new generation).
    pub(crate) fn open_for(&self, d: Duration) {
        if self.transition_from(
            None,
            CircuitState::Open,
            TransitionReason::Manual,
            Some(d),
            |_, _| true,
        ) {
            return;
        }
        let rearm = {
            let _inner = lock(&self.inner);
            let w = self.word.load(Ordering::Acquire);
            (CircuitState::from_word(w) == CircuitState::Open).then(|| {
                let until = self.now().saturating_add(nanos(d));
                self.open_until.store(until, Ordering::Release);
                (until, w)
            })
        };
        if let Some((until, w)) = rearm {
            if self.settings.config.auto_half_open {
                self.schedule(until, w, Timer::OpenElapsed);
            }
        }
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
    fn schedule(&self, at: u64, expected: u64, timer: Timer) {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let me = self.me.clone();
        let deadline = self.epoch + Duration::from_nanos(at);
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

    /// The counts a handle reports: in half-open the trial calls, otherwise
    /// the sliding window (in open, the window that tripped it).
    pub(crate) fn snapshot(&self) -> CircuitCounts {
        let cfg = &self.settings.config;
        let not_permitted = self.not_permitted.load(Ordering::Relaxed);
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
                    calls: h.calls,
                    failures: h.failures,
                    slow_calls: h.slow,
                    failure_rate: rate(h.failures),
                    slow_call_rate: rate(h.slow),
                    consecutive_failures: h.consecutive,
                    not_permitted,
                };
            }
        }
        let now = self.now();
        let t = lock(&self.window).tally(now);
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
            not_permitted,
        }
    }

    /// How long an open circuit stays open (zero once its open time is
    /// over and it waits for a call to start half-open); `None` when it is
    /// not open.
    pub(crate) fn open_remaining(&self) -> Option<Duration> {
        if self.state() != CircuitState::Open {
            return None;
        }
        let until = self.open_until.load(Ordering::Acquire);
        Some(Duration::from_nanos(until.saturating_sub(self.now())))
    }
}

/// What a breaker has seen, as a
/// [`CircuitBreakerHandle`](super::CircuitBreakerHandle) reports it: the
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
    /// Failures in a row (in half-open: among the trial calls).
    pub consecutive_failures: u32,
    /// Calls refused since the state last changed (R4j's "not permitted
    /// calls"): in open, how many callers the open circuit turned away.
    pub not_permitted: u64,
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
