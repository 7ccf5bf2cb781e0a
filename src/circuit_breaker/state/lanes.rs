//! The breaker as services hold it: the core, reached through per-thread
//! lanes.

use std::sync::Arc;

use super::admit::Refusal;
use super::{Core, Settings};
use crate::rejection::Rejection;

/// One breaker as services hold it: the core, reached through one of a few
/// padded lanes so that concurrent calls on different threads do not all
/// bump the same reference count.
///
/// Kept for a measured win (`benches/README.md`, "Circuit breaker", the
/// contended table and the note under it): with the lane's own copy of the
/// name, the open typed-error row went from 0.60x to 1.0-1.1x of the
/// 1-thread throughput on 2 threads, and the closed path writes no shared
/// memory (2 / 1 up to 1.39x, with the bare service itself at 1.13x-1.34x
/// on that shared machine).
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

impl Breaker {
    pub(crate) fn new(settings: Arc<Settings>, lanes: usize) -> Self {
        let lanes = lanes.max(1).next_power_of_two();
        let core = Core::new(settings, lanes);
        let lanes = (0..lanes)
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
        crate::util::lanes::count()
    }

    #[inline]
    pub(crate) fn core(&self) -> &Arc<Core> {
        &self.0.core
    }

    #[inline]
    fn lane_ref(&self) -> &Arc<Lane> {
        let lanes = &self.0.lanes;
        // `lanes.len()` is a power of two.
        &lanes[crate::util::lanes::index() & (lanes.len() - 1)]
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
