//! The concurrency limit's engine: the shared state behind the layer's
//! `Arc` (the published limit, the in-flight count, the algorithm, the
//! queue and the classes), the admission decision, and the [`Permit`] an
//! admitted request holds until it ends.

use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram};

use super::limit::{LimitAlgorithm, Outcome, Sample};
use super::partition::{Criticality, Partitions};
use super::queue::Queue;
use crate::rejection::{Rejection, RejectionKind};
use crate::util::clock::EpochClock;
use crate::util::lanes::{Lane, Laned};
use crate::util::lock;
use crate::util::sampled::{Sampled, Sampler};
use crate::util::tally::Tallies;

/// Limit-change events are logged at most this often.
const EVENT_INTERVAL_NS: u64 = 1_000_000_000;
/// The minimum-RTT gauge reports the smallest RTT of windows this long.
const MIN_RTT_WINDOW_NS: u64 = 10_000_000_000;

/// Why a request was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Reason {
    /// No free slot and no queue.
    Limit,
    /// No free slot and the queue is full.
    QueueFull,
    /// The wait in the queue ran out.
    QueueTimeout,
}

impl Reason {
    pub(crate) const ALL: [Reason; 3] = [Reason::Limit, Reason::QueueFull, Reason::QueueTimeout];

    pub(crate) const fn as_str(self) -> &'static str {
        match self {
            Reason::Limit => "limit",
            Reason::QueueFull => "queue_full",
            Reason::QueueTimeout => "queue_timeout",
        }
    }

    const fn detail(self) -> &'static str {
        match self {
            Reason::Limit => "the service is at its concurrency limit",
            Reason::QueueFull => "the service is at its concurrency limit and its queue is full",
            Reason::QueueTimeout => "no slot freed up within the queue's maximum wait",
        }
    }
}

/// The metric handles, registered once when the layer is built.
#[derive(Debug)]
pub(crate) struct Metrics {
    pub(crate) limit: Gauge,
    pub(crate) in_flight: Gauge,
    /// `[class][reason]`.
    pub(crate) rejections: [[Counter; 3]; 3],
    /// `rampart_concurrency_samples_total` by outcome, `[success, dropped,
    /// ignored]`, counted per thread (`util::tally`).
    pub(crate) samples: Tallies<3>,
    pub(crate) rtt: Histogram,
    pub(crate) min_rtt: Gauge,
    pub(crate) limit_changes: Counter,
    pub(crate) queued: Gauge,
}

impl Metrics {
    pub(crate) fn register(name: &str) -> Self {
        crate::metrics_help::describe(super::METRICS);
        let label = || name.to_owned();
        let rejections = Criticality::ALL.map(|class| {
            Reason::ALL.map(|reason| {
                metrics::counter!(
                    "rampart_concurrency_rejections_total",
                    "name" => label(),
                    "partition" => class.as_str(),
                    "reason" => reason.as_str(),
                )
            })
        });
        let samples = ["success", "dropped", "ignored"].map(|outcome| {
            metrics::counter!(
                "rampart_concurrency_samples_total",
                "name" => label(),
                "outcome" => outcome,
            )
        });
        Self {
            limit: metrics::gauge!("rampart_concurrency_limit", "name" => label()),
            in_flight: metrics::gauge!("rampart_concurrency_in_flight", "name" => label()),
            rejections,
            samples: Tallies::new(samples),
            rtt: metrics::histogram!("rampart_concurrency_rtt_seconds", "name" => label()),
            min_rtt: metrics::gauge!("rampart_concurrency_min_rtt_seconds", "name" => label()),
            limit_changes: metrics::counter!(
                "rampart_concurrency_limit_changes_total",
                "name" => label()
            ),
            queued: metrics::gauge!("rampart_concurrency_queued", "name" => label()),
        }
    }
}

/// The state every service of a layer shares.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    /// The published limit (at least 1): what the admit path compares with.
    limit: AtomicUsize,
    in_flight: AtomicUsize,
    /// `None` for a fixed limit: samples change nothing, so no lock is
    /// taken when a request ends.
    algorithm: Option<Mutex<Box<dyn LimitAlgorithm>>>,
    pub(crate) clock: EpochClock,
    pub(crate) retry_after: Duration,
    pub(crate) queue: Option<Queue>,
    pub(crate) partitions: Option<Partitions>,
    pub(crate) metrics: Metrics,
    /// Smallest RTT (ns) of the current window, and the window's start.
    window_min_rtt: AtomicU64,
    window_start: AtomicU64,
    /// When the last limit-change event was logged (ns, `u64::MAX`: never)
    /// and the limit it reported.
    last_event: AtomicU64,
    event_limit: AtomicUsize,
    /// Publishes `in_flight` to `rampart_concurrency_in_flight`
    /// (`util::sampled`): no recorder call per request.
    sampler: Sampler,
}

impl Sampled for Shared {
    fn sampler(&self) -> &Sampler {
        &self.sampler
    }

    fn publish(&self) {
        self.metrics.in_flight.set(self.in_flight() as f64);
    }
}

impl std::fmt::Debug for Shared {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Shared")
            .field("name", &self.name)
            .field("limit", &self.limit())
            .field("in_flight", &self.in_flight())
            .field("adaptive", &self.algorithm.is_some())
            .field("retry_after", &self.retry_after)
            .field("queue", &self.queue)
            .field("partitions", &self.partitions)
            .finish_non_exhaustive()
    }
}

impl Shared {
    pub(crate) fn new(
        name: Arc<str>,
        algorithm: Box<dyn LimitAlgorithm>,
        fixed: bool,
        retry_after: Duration,
        queue: Option<Queue>,
        partitions: Option<Partitions>,
    ) -> Self {
        let initial = algorithm.initial_limit().max(1);
        let metrics = Metrics::register(&name);
        metrics.limit.set(initial as f64);
        Self {
            event_limit: AtomicUsize::new(initial),
            limit: AtomicUsize::new(initial),
            in_flight: AtomicUsize::new(0),
            algorithm: (!fixed).then(|| Mutex::new(algorithm)),
            clock: EpochClock::new(),
            retry_after,
            queue,
            partitions,
            metrics,
            window_min_rtt: AtomicU64::new(u64::MAX),
            window_start: AtomicU64::new(0),
            last_event: AtomicU64::new(u64::MAX),
            sampler: Sampler::default(),
            name,
        }
    }

    #[inline]
    pub(crate) fn limit(&self) -> usize {
        self.limit.load(Ordering::Acquire)
    }

    #[inline]
    pub(crate) fn in_flight(&self) -> usize {
        self.in_flight.load(Ordering::Acquire)
    }

    /// Takes a slot for a request of `class` if the published limit (and
    /// the class's guaranteed share) allows. Counted in flight if so.
    #[inline]
    pub(crate) fn try_acquire(&self, class: Criticality) -> bool {
        let limit = self.limit();
        if let Some(p) = &self.partitions {
            // Within its guaranteed share a class is admitted even past the
            // limit (Netflix's partitioned limiter); beyond it, it borrows
            // while the total has room.
            if p.try_guaranteed(class, limit) {
                self.in_flight.fetch_add(1, Ordering::SeqCst);
                return true;
            }
            if self.try_total(limit) {
                p.add(class);
                return true;
            }
            return false;
        }
        self.try_total(limit)
    }

    #[inline]
    fn try_total(&self, limit: usize) -> bool {
        let mut n = self.in_flight.load(Ordering::Relaxed);
        while n < limit {
            match self.in_flight.compare_exchange_weak(
                n,
                n + 1,
                Ordering::SeqCst,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => n = now,
            }
        }
        false
    }

    /// A permit for a request of `class` that just took a slot. It keeps
    /// the state alive through this thread's lane (see `util::lanes`): no
    /// reference count that every thread writes.
    #[inline]
    pub(crate) fn permit(
        shared: &Laned<Self>,
        class: Criticality,
        deadline: Option<u64>,
    ) -> Permit {
        let this = &**shared;
        Sampler::changed(this, || shared.downgrade());
        Permit {
            shared: shared.lane(),
            // A fixed limit learns nothing from the RTT: no clock read
            // (`benches/compare/benches/concurrency.rs`, `admit` rows: two
            // clock reads cost more than tower's whole pair).
            start: if this.algorithm.is_some() {
                this.clock.now()
            } else {
                0
            },
            in_flight: u32::try_from(this.in_flight()).unwrap_or(u32::MAX),
            class,
            deadline: deadline.unwrap_or(NO_DEADLINE),
            outcome: None,
        }
    }

    /// Gives a slot back, handing it to a waiter if anyone waits.
    #[inline]
    pub(crate) fn release(&self, class: Criticality) {
        if let Some(p) = &self.partitions {
            p.release(class);
        }
        self.in_flight.fetch_sub(1, Ordering::SeqCst);
        if let Some(q) = &self.queue {
            if q.is_occupied() {
                q.grant(self);
            }
        }
    }

    /// Counts a refusal and builds its answer.
    #[cold]
    pub(crate) fn rejection(&self, class: Criticality, reason: Reason) -> Rejection {
        self.metrics.rejections[class.index()][reason as usize].increment(1);
        Rejection::new(RejectionKind::Overloaded, Arc::clone(&self.name))
            .with_retry_after(self.retry_after)
            .with_detail(reason.detail())
    }

    /// Feeds a finished request to the algorithm and publishes its limit.
    fn finish(&self, start: u64, in_flight: usize, outcome: Outcome) {
        let i = match outcome {
            Outcome::Success => 0,
            Outcome::Dropped => 1,
            _ => 2,
        };
        self.metrics.samples.increment(i);
        if outcome == Outcome::Ignored {
            return;
        }
        let Some(algorithm) = &self.algorithm else {
            return;
        };
        let now = self.clock.now();
        let rtt_ns = now.saturating_sub(start);
        let rtt = Duration::from_nanos(rtt_ns);
        if outcome == Outcome::Success {
            self.metrics.rtt.record(rtt.as_secs_f64());
            self.observe_min_rtt(now, rtt_ns);
        }
        let sample = Sample {
            rtt,
            in_flight,
            outcome,
        };
        let new = lock(algorithm).update(&sample).max(1);
        self.publish(now, new);
    }

    /// Publishes a new limit: the admit path sees it at once.
    fn publish(&self, now: u64, new: usize) {
        // Most samples leave the limit as it was: a plain load tells them
        // apart without writing the line every admission reads.
        if self.limit.load(Ordering::Acquire) == new {
            return;
        }
        let old = self.limit.swap(new, Ordering::AcqRel);
        if old == new {
            return;
        }
        self.metrics.limit.set(new as f64);
        self.metrics.limit_changes.increment(1);
        self.log_change(now, new);
        if new > old {
            if let Some(q) = &self.queue {
                if q.is_occupied() {
                    q.grant(self);
                }
            }
        }
    }

    /// Logs the limit change, at most once per second.
    fn log_change(&self, now: u64, new: usize) {
        let last = self.last_event.load(Ordering::Relaxed);
        if last != u64::MAX && now.saturating_sub(last) < EVENT_INTERVAL_NS {
            return;
        }
        if self
            .last_event
            .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
            .is_err()
        {
            return;
        }
        let from = self.event_limit.swap(new, Ordering::Relaxed);
        tracing::debug!(
            target: "tower_rampart::concurrency",
            name = %self.name,
            from,
            to = new,
            in_flight = self.in_flight(),
            "concurrency limit changed"
        );
    }

    /// Tracks the smallest RTT of the current window; the gauge shows the
    /// smallest of the window that just ended (or the current one, while it
    /// only goes down).
    fn observe_min_rtt(&self, now: u64, rtt_ns: u64) {
        let start = self.window_start.load(Ordering::Relaxed);
        if now.saturating_sub(start) >= MIN_RTT_WINDOW_NS
            && self
                .window_start
                .compare_exchange(start, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.window_min_rtt.store(rtt_ns, Ordering::Relaxed);
            self.metrics.min_rtt.set(rtt_ns as f64 / 1e9);
            return;
        }
        // Most samples are no new minimum: a plain load tells them apart
        // without writing the line every thread's samples read (with the
        // same for `publish`: `concurrency/admit_2_threads/rampart_gradient2`
        // 281.6 -> 253.8 ns per pair, medians of five alternated runs,
        // `benches/README.md`, "Concurrency limit").
        if rtt_ns >= self.window_min_rtt.load(Ordering::Relaxed) {
            return;
        }
        let prev = self.window_min_rtt.fetch_min(rtt_ns, Ordering::Relaxed);
        if rtt_ns < prev {
            self.metrics.min_rtt.set(rtt_ns as f64 / 1e9);
        }
    }
}

/// An admitted request's slot: released when dropped, feeding the
/// algorithm the request's outcome (a drop before an outcome was set is a
/// cancellation: ignored, unless the request's server deadline had passed).
#[derive(Debug)]
pub(crate) struct Permit {
    shared: Arc<Lane<Shared>>,
    start: u64,
    // The fields are kept small (32 bytes, and `Option<Permit>` too): a
    // permit lives in every admitted request's future, which the stack's
    // callers move and, under HTTP/2, allocate as a task.
    in_flight: u32,
    class: Criticality,
    /// The server's deadline for this request (ns on the clock), or
    /// `NO_DEADLINE` if no outer timeout layer set one.
    deadline: u64,
    outcome: Option<Outcome>,
}

/// A permit's `deadline` when it has none.
const NO_DEADLINE: u64 = u64::MAX;

impl Permit {
    /// Ends the request with `outcome`.
    #[inline]
    pub(crate) fn complete(mut self, outcome: Outcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for Permit {
    #[inline]
    fn drop(&mut self) {
        let shared = &*self.shared;
        let outcome = match self.outcome {
            Some(outcome) => outcome,
            // Unwinding from a panic: nothing was learned, and the
            // algorithm is not run while panicking.
            None if std::thread::panicking() => Outcome::Ignored,
            // Dropped at or after the server's deadline: an outer timeout
            // gave up on it, a strong overload signal.
            None if self.deadline != NO_DEADLINE && shared.clock.now() >= self.deadline => {
                Outcome::Dropped
            }
            None => Outcome::Ignored,
        };
        shared.finish(self.start, self.in_flight as usize, outcome);
        shared.release(self.class);
        Sampler::changed(&**shared, || self.shared.downgrade());
    }
}
