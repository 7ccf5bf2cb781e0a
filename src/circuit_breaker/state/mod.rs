//! The state machine shared by every clone of a breaker.
//!
//! The state and its generation live in one `AtomicU64` (state in the low
//! 3 bits, generation above), so the happy path reads one atomic. Every
//! transition bumps the generation; a permit remembers the word that
//! admitted it, and its result counts only if the word is unchanged.
//! Transitions and half-open bookkeeping run under a short `std` mutex; the
//! sliding window has its own. A full count window holding only fast
//! successes is flagged clean, so one more fast success writes nothing.
//!
//! One [`Core`] per breaker; its methods are grouped by what they do:
//!
//! - this file: the state word ([`CircuitState`]), the shared settings and
//!   metric handles, and the [`Core`] itself;
//! - `admit.rs`: whether a call may go through, and the refusal if not;
//! - `record.rs`: recording a call's outcome, the tripping rules, and the
//!   [`CircuitCounts`] a handle reports;
//! - `transition.rs`: moving between states, the backoff, the timers, and
//!   the [`CircuitBreakerEvent`]s and [`TransitionReason`]s they emit;
//! - `manual.rs`: the moves a handle makes by hand;
//! - `lanes.rs`: the [`Breaker`] services hold, reaching the core through
//!   per-thread lanes.

mod admit;
mod fast;
mod lanes;
mod manual;
mod record;
mod transition;

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use crate::util::clock::EpochClock;
use crate::util::lanes::LaneCount;
use crate::util::tally::Tallies;
use metrics::{Counter, Gauge};

use super::config::CircuitBreakerConfig;
use super::window::Window;
use crate::classify::{Classifier, Outcome};

pub(crate) use admit::{Admission, Refusal};
pub(crate) use lanes::{Breaker, Lane};
pub use record::CircuitCounts;
pub use transition::{CircuitBreakerEvent, TransitionReason};

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
    pub(super) fn from_word(word: u64) -> Self {
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

/// The state word: the generation above the 3 low bits of the state.
#[inline]
fn word(state: CircuitState, generation: u64) -> u64 {
    (generation << 3) | state as u64
}

/// `d` in nanoseconds, saturating (the core keeps times as nanoseconds since
/// its epoch).
#[inline]
fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

pub(crate) type Listener = Arc<dyn Fn(&CircuitBreakerEvent) + Send + Sync>;
pub(crate) type ErrorClassifier =
    Arc<dyn Fn(&(dyn std::error::Error + Send + Sync + 'static)) -> Outcome + Send + Sync>;

/// The metric handles of one layer, registered once when it is built.
pub(crate) struct Metrics {
    state: Gauge,
    /// `rampart_circuit_breaker_calls_total` by outcome and
    /// `rampart_circuit_breaker_slow_calls_total`, counted per thread
    /// (`util::tally`): indexed by [`CALL_SUCCESS`], [`CALL_FAILURE`],
    /// [`CALL_IGNORED`] and [`CALL_SLOW`].
    calls: Tallies<4>,
    rejections: Counter,
}

const CALL_SUCCESS: usize = 0;
const CALL_FAILURE: usize = 1;
const CALL_IGNORED: usize = 2;
const CALL_SLOW: usize = 3;

impl Metrics {
    fn new(name: &Arc<str>) -> Self {
        crate::metrics_help::describe(crate::circuit_breaker::METRICS);
        let n = name.to_string();
        Self {
            state: metrics::gauge!("rampart_circuit_breaker_state", "name" => n.clone()),
            calls: Tallies::new([
                metrics::counter!("rampart_circuit_breaker_calls_total", "name" => n.clone(), "outcome" => "success"),
                metrics::counter!("rampart_circuit_breaker_calls_total", "name" => n.clone(), "outcome" => "failure"),
                metrics::counter!("rampart_circuit_breaker_calls_total", "name" => n.clone(), "outcome" => "ignored"),
                metrics::counter!("rampart_circuit_breaker_slow_calls_total", "name" => n.clone()),
            ]),
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
        let slow_nanos = config.slow_call_duration_threshold.map(nanos);
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
    /// Calls refused since the state last changed, counted per lane: the
    /// one shared counter they had made two threads refusing at once write
    /// the line every call reads the state from (benches/README.md,
    /// "Circuit breaker": the open row's two-thread scaling).
    not_permitted: LaneCount,
    /// Metrics-only mode: a rule is met and its event was emitted.
    exceeded: AtomicBool,
    clock: EpochClock,
    pub(crate) settings: Arc<Settings>,
    window: Mutex<Window>,
    /// A time window's successes counted without its lock (`fast.rs`).
    fast: Option<fast::FastSuccesses>,
    inner: Mutex<Inner>,
    me: Weak<Core>,
}

// A panic elsewhere (e.g. in a user classifier) must not wedge the breaker.
pub(super) use crate::util::lock;

impl Core {
    /// A breaker's core; a time window gets `slots` (a power of two: the
    /// breaker's lanes) for its successes counted without the lock.
    pub(crate) fn new(settings: Arc<Settings>, slots: usize) -> Arc<Self> {
        let window = Window::new(settings.config.window);
        let fast = window
            .bucket_nanos()
            .map(|nanos| fast::FastSuccesses::new(nanos, slots));
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
            not_permitted: LaneCount::new(slots),
            exceeded: AtomicBool::new(false),
            clock: EpochClock::new(),
            settings,
            window: Mutex::new(window),
            fast,
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
        self.clock.now()
    }

    pub(crate) fn name(&self) -> &Arc<str> {
        &self.settings.name
    }
}
