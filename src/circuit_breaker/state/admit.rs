//! Admission: whether a call may go through, and the refusal if not.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use super::transition::{Timer, TransitionReason};
use super::{CircuitBreakerEvent, CircuitState, Core, HALF_OPEN_RETRY_AFTER, TARGET, lock, nanos};
use crate::rejection::{Rejection, RejectionKind};

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

impl Core {
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
        self.not_permitted.add_one();
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
