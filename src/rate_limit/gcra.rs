//! GCRA (the generic cell rate algorithm) as pure functions over integer
//! nanoseconds: the whole rate-limit decision, with no clock, lock or map.
//!
//! A quota's state is one number, its *theoretical arrival time* (TAT): the
//! instant at which its bucket would be full again. `0` (never seen, or
//! forgotten) is a full bucket. With `t` nanoseconds per unit and a burst
//! of `b` units (`cap = b * t`), a request of `cost` units at `now` is
//! admitted when `max(tat, now) + cost * t - cap <= now`, and then the TAT
//! becomes `max(tat, now) + cost * t`; otherwise it may come back after
//! `max(tat, now) + cost * t - cap - now`. This is the arithmetic of
//! `governor` and of redis-cell's `CL.THROTTLE`.
//!
//! [`step_each`] puts several quotas together, all or nothing: the request
//! is admitted only if every quota admits it, and a refusal names the quota
//! that needs longest (so a client that waits that long is not refused by
//! another quota; ties: the first).
//!
//! The in-process store ([`super::store`]) applies [`Gcra::step`] to its
//! atomic cells; the Redis store's Lua script applies the same rule to Redis
//! keys in one atomic call. A test (`tests/rate_limit_redis.rs`) runs the
//! same sequences through both and compares every answer.

use std::time::Duration;

/// One quota's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Gcra {
    /// Nanoseconds per unit (at least 1).
    pub(crate) t: u64,
    /// Units the bucket holds (at least 1).
    pub(crate) burst: u32,
}

/// What one quota says about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Step {
    /// Admitted: the quota's new TAT.
    Admit {
        /// The TAT to store.
        next: u64,
    },
    /// Not now: room comes after `wait` nanoseconds.
    Wait {
        /// Nanoseconds from "now".
        wait: u64,
    },
    /// The cost is above the burst: never admissible.
    TooCostly,
}

impl Gcra {
    /// A quota of one unit every `t` nanoseconds, `burst` at once.
    pub(crate) fn new(t: u64, burst: u32) -> Self {
        Self {
            t: t.max(1),
            burst: burst.max(1),
        }
    }

    /// `burst * t`: how far ahead of "now" the TAT may run.
    #[inline]
    pub(crate) fn cap(&self) -> u64 {
        self.t.saturating_mul(u64::from(self.burst))
    }

    /// The decision for `cost` units at `now`, given the stored `tat`.
    #[inline]
    pub(crate) fn step(&self, tat: u64, now: u64, cost: u32) -> Step {
        if cost > self.burst {
            return Step::TooCostly;
        }
        let next = tat
            .max(now)
            .saturating_add(self.t.saturating_mul(u64::from(cost)));
        let allow_at = next.saturating_sub(self.cap());
        if allow_at > now {
            Step::Wait {
                wait: allow_at - now,
            }
        } else {
            Step::Admit { next }
        }
    }

    /// The state of `tat` at `now`: what remains of the burst, the
    /// effective window and how long until the bucket is full again.
    pub(crate) fn snapshot(&self, tat: u64, now: u64) -> Snapshot {
        let cap = self.cap();
        let avail = now.saturating_add(cap).saturating_sub(tat).min(cap);
        Snapshot {
            remaining: u32::try_from(avail / self.t).unwrap_or(u32::MAX),
            // Take all that remains now: the next unit is usable when the
            // partial one under way is whole (a full bucket: one interval).
            window: Duration::from_nanos(self.t - avail % self.t),
            full: Duration::from_nanos(tat.saturating_sub(now)),
        }
    }

    /// How long until `cost` units could be taken, for `tat` at `now`
    /// (zero when they could now).
    pub(crate) fn wait_for(&self, tat: u64, now: u64, cost: u32) -> Duration {
        let allow_at = tat
            .max(now)
            .saturating_add(self.t.saturating_mul(u64::from(cost)))
            .saturating_sub(self.cap());
        Duration::from_nanos(allow_at.saturating_sub(now))
    }
}

/// One quota's state at some instant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Snapshot {
    /// Units that can be taken now.
    pub(crate) remaining: u32,
    /// The IETF effective window: within it no more than `remaining` can
    /// be taken (the time until one more unit is usable after taking them).
    pub(crate) window: Duration,
    /// Until the bucket is full again.
    pub(crate) full: Duration,
}

/// What several quotas say together about a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// Every quota admits; each one's new TAT is its `Step::Admit` value.
    Admit,
    /// Quota `quota` (an index into the input) needs longest: `wait`
    /// nanoseconds. Nothing may be written.
    Refuse {
        /// The refusing quota.
        quota: usize,
        /// Nanoseconds from "now".
        wait: u64,
    },
    /// Quota `quota`'s burst is below the cost (the first such quota).
    TooCostly {
        /// The quota that can never admit the cost.
        quota: usize,
    },
}

/// [`step_each`] over slices, for tests: `quotas[i]` with stored TAT
/// `tats[i]`. Writes each admitting quota's new TAT into `nexts[i]` (the
/// old TAT for a refusing one); the caller stores them only on
/// [`Outcome::Admit`].
#[cfg(test)]
pub(crate) fn step_all(
    quotas: &[Gcra],
    tats: &[u64],
    nexts: &mut [u64],
    now: u64,
    cost: u32,
) -> Outcome {
    step_each(
        quotas.len(),
        now,
        cost,
        |i| Some(quotas[i]),
        |i| tats[i],
        |i, _, next| nexts[i] = next,
    )
}

/// All or nothing over `n` places where the quotas are: `params(i)` is the
/// quota at place `i` (`None`: none there, skipped), `tat(i)` its stored
/// TAT (read once, after every quota's cost is known to fit), and `next`
/// receives each quota's stored and new TAT (the stored one again for a
/// refusing quota). A store steps its own slots where they are with it,
/// with no copies into arrays first.
#[inline]
pub(crate) fn step_each(
    n: usize,
    now: u64,
    cost: u32,
    params: impl Fn(usize) -> Option<Gcra>,
    mut tat: impl FnMut(usize) -> u64,
    mut next: impl FnMut(usize, u64, u64),
) -> Outcome {
    // Never admissible first: no misleading wait for the others.
    if let Some(quota) = (0..n).position(|i| params(i).is_some_and(|q| cost > q.burst)) {
        return Outcome::TooCostly { quota };
    }
    let mut refused: Option<(usize, u64)> = None;
    for i in 0..n {
        let Some(q) = params(i) else { continue };
        let stored = tat(i);
        match q.step(stored, now, cost) {
            Step::Admit { next: new } => next(i, stored, new),
            Step::Wait { wait } => {
                next(i, stored, stored);
                if refused.is_none_or(|(_, w)| wait > w) {
                    refused = Some((i, wait));
                }
            }
            Step::TooCostly => return Outcome::TooCostly { quota: i },
        }
    }
    match refused {
        Some((quota, wait)) => Outcome::Refuse { quota, wait },
        None => Outcome::Admit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    #[test]
    fn burst_then_one_per_interval() {
        // 1 per second, burst 3 (redis-cell's README example shape).
        let q = Gcra::new(SEC, 3);
        let mut tat = 0;
        let now = 10 * SEC;
        for _ in 0..3 {
            match q.step(tat, now, 1) {
                Step::Admit { next } => tat = next,
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(tat, now + 3 * SEC);
        assert_eq!(q.step(tat, now, 1), Step::Wait { wait: SEC });
        assert_eq!(q.step(tat, now + SEC / 2, 1), Step::Wait { wait: SEC / 2 });
        assert!(matches!(q.step(tat, now + SEC, 1), Step::Admit { .. }));
        assert_eq!(q.step(tat, now, 4), Step::TooCostly);
        // A cost of 2 needs two units' room.
        assert_eq!(q.step(tat, now + SEC, 2), Step::Wait { wait: SEC });
    }

    #[test]
    fn a_zero_tat_is_a_full_bucket_even_at_time_zero() {
        let q = Gcra::new(SEC, 2);
        assert_eq!(q.step(0, 0, 2), Step::Admit { next: 2 * SEC });
        let s = q.snapshot(0, 0);
        assert_eq!((s.remaining, s.full), (2, Duration::ZERO));
        assert_eq!(s.window, Duration::from_secs(1));
    }

    #[test]
    fn snapshot_and_wait_agree_with_step() {
        let q = Gcra::new(250_000_000, 4);
        let now = 7 * SEC;
        let tat = now + 600_000_000; // 2.4 units used
        let s = q.snapshot(tat, now);
        assert_eq!(s.remaining, 1);
        assert_eq!(s.full, Duration::from_millis(600));
        assert_eq!(s.window, Duration::from_millis(100));
        for cost in 1..=4 {
            let wait = q.wait_for(tat, now, cost);
            match q.step(tat, now, cost) {
                Step::Admit { .. } => assert_eq!(wait, Duration::ZERO),
                Step::Wait { wait: w } => assert_eq!(wait, Duration::from_nanos(w)),
                Step::TooCostly => unreachable!(),
            }
        }
    }

    #[test]
    fn step_all_names_the_longest_wait_and_writes_nothing_on_refusal() {
        let qs = [Gcra::new(SEC, 1), Gcra::new(SEC, 1), Gcra::new(SEC, 5)];
        let now = 100 * SEC;
        let tats = [now + SEC / 2, now + SEC, 0];
        let mut nexts = [0; 3];
        assert_eq!(
            step_all(&qs, &tats, &mut nexts, now, 1),
            Outcome::Refuse {
                quota: 1,
                wait: SEC
            }
        );
        assert_eq!(nexts[..2], tats[..2]);
        // Ties: the first.
        let tats = [now + SEC, now + SEC, 0];
        assert!(matches!(
            step_all(&qs, &tats, &mut nexts, now, 1),
            Outcome::Refuse { quota: 0, .. }
        ));
        // Too costly before any wait.
        assert_eq!(
            step_all(&qs, &tats, &mut nexts, now, 2),
            Outcome::TooCostly { quota: 0 }
        );
        assert_eq!(
            step_all(&qs, &[0, 0, 0], &mut nexts, now, 1),
            Outcome::Admit
        );
        assert_eq!(nexts, [now + SEC, now + SEC, now + SEC]);
    }
}
