//! The moves a handle makes by hand: force a state, reset, open for a
//! while.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::transition::{Timer, TransitionReason};
use super::{CircuitState, Core, lock, nanos};

impl Core {
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
            if let Some(fast) = &self.fast {
                fast.clear();
            }
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
}
