//! Gauges that follow a count the layer keeps anyway, published by a
//! task every [`PERIOD`] rather than written on every change.
//!
//! The drain and the concurrency limit count the requests in flight for
//! their own decisions. Mirroring every change into the recorder's gauge
//! too, an increment when a request starts and a decrement when it ends,
//! costs two recorder operations per request for each of them: with
//! `metrics-exporter-prometheus`, each a dynamic call and two atomic
//! read-modify-writes on the handle's lines, four of the stack's seven per
//! request and about a point of a real server's throughput
//! (`benches/README.md`, "In-flight gauges, sampled"). A gauge is read by
//! sampling it (a scrape every 15 s or more), so the layer's own count is
//! set on it instead, every [`PERIOD`], by one task per layer state: the
//! value a scrape reads is at most [`PERIOD`] old, and never stale once
//! traffic stops.
//!
//! The task starts with the first change seen inside a tokio runtime (a
//! layer may be built before there is one), holds the state weakly (it
//! ends when the layer is dropped), and is started again if its runtime
//! shut down under it. With no runtime, each change sets the gauge at once.
//!
//! ```text
//! request path:  count += 1 ... count -= 1      (the layer's own atomics)
//!                sampler.changed(..)            (one relaxed load: running?)
//! sampler task:  every PERIOD: gauge.set(count)
//! ```

use std::sync::Weak;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::time::MissedTickBehavior;

/// How often a sampled gauge is set from its count.
pub(crate) const PERIOD: Duration = Duration::from_millis(250);

/// A layer state whose gauges a [`Sampler`] publishes.
pub(crate) trait Sampled: Send + Sync + 'static {
    /// The state's sampler.
    fn sampler(&self) -> &Sampler;
    /// Sets the gauges from the counts, now.
    fn publish(&self);
}

/// Whether the publishing task of a [`Sampled`] state runs.
#[derive(Debug, Default)]
pub(crate) struct Sampler {
    running: AtomicBool,
}

impl Sampler {
    /// Whether the publishing task runs (one relaxed load): a change seen
    /// while it does needs no call to [`Sampler::changed`].
    #[inline]
    pub(crate) fn is_running(&self) -> bool {
        self.running.load(Ordering::Relaxed)
    }

    /// A count of `value` changed: starts the publishing task if it does
    /// not run (`weak` is only called to spawn it).
    #[inline]
    pub(crate) fn changed<T: Sampled>(value: &T, weak: impl FnOnce() -> Weak<T>) {
        if !value.sampler().is_running() && !start(value, weak) {
            value.publish();
        }
    }

    /// Whether the publishing task of `value` runs, started now if it does
    /// not and a tokio runtime can run it (`weak` is only called to spawn
    /// it); false, publishing nothing, where none can.
    #[inline]
    pub(crate) fn running<T: Sampled>(value: &T, weak: impl FnOnce() -> Weak<T>) -> bool {
        value.sampler().is_running() || start(value, weak)
    }
}

/// Starts the publishing task of `value` unless it runs: false when no
/// tokio runtime can run it.
#[cold]
#[inline(never)]
fn start<T: Sampled>(value: &T, weak: impl FnOnce() -> Weak<T>) -> bool {
    // Asked first: without a runtime, a change costs this read of tokio's
    // thread-local context and no atomic write.
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return false;
    };
    let running = &value.sampler().running;
    if running
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Relaxed)
        .is_ok()
    {
        handle.spawn(run(Stop(weak())));
    }
    true
}

/// Marks the task stopped when it ends, however it ends (its runtime
/// shutting down drops it), so that the next change starts another.
struct Stop<T: Sampled>(Weak<T>);

impl<T: Sampled> Drop for Stop<T> {
    fn drop(&mut self) {
        if let Some(value) = self.0.upgrade() {
            value.sampler().running.store(false, Ordering::Release);
        }
    }
}

async fn run<T: Sampled>(stop: Stop<T>) {
    let mut tick = tokio::time::interval(PERIOD);
    tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        // The first tick is at once (on the timer's next millisecond): the
        // change that started the task is published without waiting.
        tick.tick().await;
        let Some(value) = stop.0.upgrade() else {
            return;
        };
        value.publish();
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use super::*;

    #[derive(Default)]
    struct Counted {
        sampler: Sampler,
        count: AtomicUsize,
        published: AtomicUsize,
        last: AtomicUsize,
    }

    impl Sampled for Counted {
        fn sampler(&self) -> &Sampler {
            &self.sampler
        }
        fn publish(&self) {
            self.published.fetch_add(1, Ordering::SeqCst);
            self.last
                .store(self.count.load(Ordering::SeqCst), Ordering::SeqCst);
        }
    }

    fn change(c: &Arc<Counted>, by: isize) {
        if by > 0 {
            c.count.fetch_add(by as usize, Ordering::SeqCst);
        } else {
            c.count.fetch_sub(by.unsigned_abs(), Ordering::SeqCst);
        }
        Sampler::changed(&**c, || Arc::downgrade(c));
    }

    /// The first change publishes at once, later ones within a period, and
    /// the value after traffic stops is the count: nothing stale.
    #[tokio::test(start_paused = true)]
    async fn publishes_each_period_and_settles() {
        let c = Arc::new(Counted::default());
        change(&c, 1);
        tokio::task::yield_now().await;
        assert_eq!(c.last.load(Ordering::SeqCst), 1);
        change(&c, 2);
        change(&c, -3);
        // Not yet: the next tick is a period away.
        tokio::task::yield_now().await;
        assert_eq!(c.last.load(Ordering::SeqCst), 1);
        // Just past the next tick (the task and this one are due at the
        // same instant otherwise).
        tokio::time::sleep(PERIOD + Duration::from_millis(1)).await;
        assert_eq!(c.last.load(Ordering::SeqCst), 0);
        let published = c.published.load(Ordering::SeqCst);
        tokio::time::sleep(PERIOD * 4).await;
        assert_eq!(c.published.load(Ordering::SeqCst), published + 4);
    }

    /// One task per state however many changes; it ends when the state is
    /// dropped.
    #[tokio::test(start_paused = true)]
    async fn one_task_ending_with_the_state() {
        let c = Arc::new(Counted::default());
        for _ in 0..100 {
            change(&c, 1);
        }
        tokio::task::yield_now().await;
        assert_eq!(c.published.load(Ordering::SeqCst), 1);
        let weak = Arc::downgrade(&c);
        drop(c);
        tokio::time::sleep(PERIOD * 2).await;
        assert!(weak.upgrade().is_none());
        let metrics = tokio::runtime::Handle::current().metrics();
        assert_eq!(metrics.num_alive_tasks(), 0);
    }

    /// A runtime shut down under the task: the next change, in another
    /// runtime, starts a new one.
    #[test]
    fn restarts_in_a_new_runtime() {
        let c = Arc::new(Counted::default());
        for round in 1..=2 {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .build()
                .unwrap();
            rt.block_on(async {
                change(&c, 1);
                // The first tick is due at once, on the timer's next
                // millisecond.
                tokio::time::sleep(Duration::from_millis(10)).await;
            });
            assert_eq!(c.last.load(Ordering::SeqCst), round);
            drop(rt);
            assert!(!c.sampler.running.load(Ordering::SeqCst));
        }
    }

    /// With no runtime, each change is published at once.
    #[test]
    fn without_a_runtime_each_change_is_published() {
        let c = Arc::new(Counted::default());
        change(&c, 2);
        assert_eq!(c.last.load(Ordering::SeqCst), 2);
        change(&c, -1);
        assert_eq!(c.last.load(Ordering::SeqCst), 1);
        assert_eq!(c.published.load(Ordering::SeqCst), 2);
    }
}
