// Past ~500 lines: the design notes, the lease script, the local slices
// and the miss path read as one unit (the Redis store's approximate mode),
// and their paused-time unit tests take about 250 lines.
//! Leased tokens: the Redis store's approximate mode
//! ([`RedisMode::Leased`]). Each replica takes a slice of a quota from
//! Redis in one round trip and decides locally until the slice runs low.
//!
//! # What a lease is, in GCRA terms
//!
//! A quota's state in Redis is one theoretical arrival time (TAT, see
//! [`super::gcra`]). A *lease* of `n` units is one atomic script call that
//! advances the key's TAT by `n` emission intervals (`n * t`), exactly as
//! `n` admitted requests of cost 1 would, and hands the `n` units to the
//! replica. The replica keeps them in a local *slice* (one per quota and
//! key, an atomic counter) and admits requests from it with no round trip.
//! The script grants what the bucket holds, up to what was asked (a
//! partial grant when the bucket is low, nothing when it is empty), so
//! Redis's side stays plain GCRA: across the fleet, Redis never hands out
//! more than the limit; only *when* the units are spent moves.
//!
//! A token bucket slice would say the same in other words; GCRA keeps the
//! one-number state, the TTL that expires idle keys and the script's
//! `TIME`-based clock of the exact mode, and lets the exact and leased
//! modes share keys (an operator may switch a fleet from one to the other
//! replica by replica).
//!
//! # How big a lease is
//!
//! Each slice measures its replica's rate on that key (units spent between
//! two refreshes) and asks for enough to cover [`Lease::horizon`] of that
//! traffic (default 100ms), within [`Lease::min`]..=[`Lease::max`] (default
//! 1..=100, and never more than the quota's burst). A key a replica sees
//! once a minute leases [`Lease::min`] units at a time (with the default of
//! 1, a round trip per request, as in exact mode: round trips do not matter
//! at that rate, and no unit is wasted); a key it sees 10 000 times a
//! second leases 100 at a time.
//!
//! # Refreshing ahead of need
//!
//! When a request leaves the slice with what the measured rate spends in
//! two round trips (the last refresh's duration; at least one unit, at
//! most half the target), and that rate would spend a full lease within
//! half its life, that request spawns one background refresh (a flag per
//! slice: one refresh in flight, never a herd), asking for what brings the
//! slice back to its target. A lease is then nearly a full target's worth
//! of units, so round trips per request stay near 1 / lease size. A
//! request that finds the slice short waits for the refresh in flight, or
//! makes one itself; the others wait for it (a `tokio::sync::Notify`, not a
//! lock). A request waits for Redis only on a miss.
//!
//! # Expiry, and a replica that dies
//!
//! A slice is good for [`Lease::ttl`] (default 1s) after its last refresh;
//! then its unspent units are dropped, never returned: returning units
//! could count them twice (spent here, returned there). A replica that
//! dies holding a slice returns nothing either: its units were taken from
//! the bucket when leased, the bucket refills at the quota's rate as
//! usual, so the fleet loses at most one lease per replica and key, for no
//! longer than those units take to refill.
//!
//! # The over-admission bound
//!
//! Exact mode admits at most `burst + d / t` units in any interval of
//! length `d`. Leased mode adds what the replicas held unspent when the
//! interval began: at most **replicas x max lease size** (per key), where
//! the max lease size is `min(lease_max, burst)`, or the cost of a request
//! that costs more. Over a long run the rate is the quota's rate; the
//! excess is a burst of at most that many units. [`Lease::max`] is the
//! knob: `lease_max = 1` is exact accuracy with exact mode's round trips.
//!
//! # What a client sees
//!
//! `RateLimit` and `x-ratelimit-*` describe this replica's view: the bucket
//! as Redis answered its last refresh, plus the units of its slice, minus
//! what it spent since. Other replicas' spending since that refresh is not
//! seen, so `remaining` may be optimistic by up to what they spent (never
//! by more than the bound above), and a refusal may come with a higher
//! `remaining` on another replica. `Retry-After` is the wait this replica
//! knows of: Redis's TAT only moves forward, so a client that waits it is
//! not refused for lack of units this replica could have seen.
//!
//! A request the slice cannot serve is refused by the replica itself while
//! its view says the bucket lacks the units (near the limit of a quota
//! that refills half a lease within the lease horizon: half a lease, so a
//! refresh is never for a crumb): a client hammering a spent key costs
//! no round trip (exact mode costs one per refusal), and its `Retry-After`
//! is when this replica will ask Redis again.
//!
//! # Round trips
//!
//! Below the limit, about one per lease: a busy replica's lease is
//! [`Lease::max`] units (topped up a round trip or two before it runs out),
//! so round trips per request are near 1 / `lease_max` (between that and
//! twice that when a refresh takes long against the replica's rate). At the
//! limit the bucket refills at the quota's rate and replicas lease what has
//! dripped in, half a lease or more at a time. Both are measured in
//! `tests/rate_limit/lease_fleet.rs` and `benches/README.md`.
//!
//! # Memory
//!
//! Slices are per key: a keyed quota's slices live in the same bounded
//! table as the in-process store's keys ([`RateLimitBuilder::max_keys`],
//! sampled eviction, the idle sweep, the `rampart_rate_limit_keys` gauge).
//! A slice is idle once its lease expired and the bucket, as last seen, is
//! full again; evicting a busy slice drops its units (as an expiry does).
//!
//! # When Redis is slow or down
//!
//! A refresh is a Redis call like any other: the same timeout, the same
//! breaker (`<layer>-redis`). While a slice lasts, decisions need no Redis
//! and go on (`path = "lease"`). A request that needs a refresh which
//! fails (or which the open breaker does not make) follows the
//! [`FailurePolicy`](super::FailurePolicy): admit, refuse, or decide in
//! process with the fallback's share.
//!
//! [`RateLimitBuilder::max_keys`]: super::RateLimitBuilder::max_keys

use std::hash::BuildHasherDefault;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::MAX_QUOTAS;
use super::engine::{ANONYMOUS, Decision, Shared, Slots};
use super::gcra::Gcra;
use super::key::{KeyRef, RequestInfo};
use super::memory::{IdHasher, Measured, Slot, Verdict};
use super::redis::{FailurePolicy, Path, RedisBackend, RemoteOutcome};
use crate::ConfigError;
use crate::config_util::{HOUR, MINUTE, MUST_BE_POSITIVE, at_most};
use crate::util::keyed_map::{Expiring, KeyedMap, MapMetrics};

/// How the Redis store decides: every request in Redis (the default), or
/// from slices leased from Redis (approximate; see [`Lease`]).
///
/// **Exact** (the default): one round trip per decided request; the fleet
/// never admits more than the limit.
///
/// **Leased**: a replica takes a *lease* of `n` units of a quota and key in
/// one round trip (the script advances the key's GCRA state in Redis by `n`
/// emission intervals, as `n` admitted requests would, granting what the
/// bucket holds up to `n`) and admits requests from that local slice with
/// no round trip. The lease size follows the replica's observed rate on
/// the key (enough for [`Lease::horizon`] of its traffic, within
/// [`Lease::min`]..=[`Lease::max`] and the burst); one refresh per slice is
/// in flight at a time, started ahead of need by a busy slice.
///
/// - **Accuracy**: in any interval the fleet admits at most what exact mode
///   would, plus what the replicas held unspent when it began: at most
///   replicas x `min(lease_max, burst)` units per key. Over a long run the
///   rate is the quota's.
/// - **Expiry**: a slice is dropped [`Lease::ttl`] after its last refresh;
///   unspent units are never returned (they could be counted twice). A
///   replica that dies holding a lease returns nothing either: the bucket
///   refills at the quota's rate as usual.
/// - **Headers**: `RateLimit` and `x-ratelimit-*` describe this replica's
///   view (Redis's answer at its last refresh, plus its slice, minus what it
///   spent), so `remaining` may be optimistic by what other replicas spent
///   since. A request the slice cannot serve is refused locally while that
///   view says the bucket lacks the units (near the limit of a fast quota,
///   half a lease): hammering a spent key costs no round trip.
/// - **Failures**: while a slice lasts, decisions need no Redis (`path =
///   "lease"`); a refresh that fails, times out or meets the open breaker
///   hands the request to the [`FailurePolicy`](super::FailurePolicy).
/// - **Memory**: slices are per key, in the same bounded table as the
///   in-process store's keys (`max_keys`, eviction, idle sweep).
///
/// ```
/// use tower_rampart::rate_limit::{Lease, RedisMode, RedisStore};
///
/// let store = RedisStore::new("redis://127.0.0.1:6379/")
///     .mode(RedisMode::Leased(Lease::new().max(50)));
/// # drop(store);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Default)]
#[non_exhaustive]
pub enum RedisMode {
    /// One Redis round trip per decided request; the fleet never admits
    /// more than the limit.
    #[default]
    Exact,
    /// Each replica leases slices of a quota and decides locally; the
    /// fleet may admit up to replicas x the max lease size beyond the
    /// limit, and most decisions cost no round trip.
    Leased(Lease),
}

/// The settings of leased mode ([`RedisMode::Leased`]): how big a slice a
/// replica takes from Redis, and for how long it may spend it. See
/// [`RedisMode::Leased`] for what a lease is and the over-admission bound
/// (replicas x `max` per key).
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::rate_limit::Lease;
///
/// // Cover 50ms of each replica's traffic, 10 to 200 units at a time,
/// // unspent units dropped 2s after a refresh.
/// let lease = Lease::new()
///     .min(10)
///     .max(200)
///     .horizon(Duration::from_millis(50))
///     .ttl(Duration::from_secs(2));
/// # drop(lease);
/// ```
#[derive(Debug, Clone, Copy, PartialEq)]
#[must_use]
pub struct Lease {
    pub(crate) min: u32,
    pub(crate) max: u32,
    pub(crate) horizon: Duration,
    pub(crate) ttl: Duration,
}

impl Default for Lease {
    fn default() -> Self {
        Self::new()
    }
}

impl Lease {
    /// The defaults: 1 to 100 units, sized for 100ms of traffic, good
    /// for 1s.
    pub fn new() -> Self {
        Self {
            min: 1,
            max: 100,
            horizon: Duration::from_millis(100),
            ttl: Duration::from_secs(1),
        }
    }

    /// The fewest units one lease asks for (default 1).
    pub fn min(mut self, units: u32) -> Self {
        self.min = units;
        self
    }

    /// The most units one lease holds (default 100; capped at each
    /// quota's burst): each replica may admit up to this many per key
    /// beyond the limit.
    pub fn max(mut self, units: u32) -> Self {
        self.max = units;
        self
    }

    /// How much of a replica's observed traffic a lease covers (default
    /// 100ms).
    pub fn horizon(mut self, d: Duration) -> Self {
        self.horizon = d;
        self
    }

    /// How long a slice stays good after its last refresh (default 1s);
    /// then its unspent units are dropped.
    pub fn ttl(mut self, d: Duration) -> Self {
        self.ttl = d;
        self
    }

    /// Every problem with these settings, named by key path.
    pub(crate) fn problems(&self) -> Vec<ConfigError> {
        let mut problems = Vec::new();
        if self.min == 0 {
            problems.push(ConfigError::new("store.lease_min", MUST_BE_POSITIVE));
        }
        if self.max == 0 {
            problems.push(ConfigError::new("store.lease_max", MUST_BE_POSITIVE));
        } else if self.max < self.min {
            problems.push(ConfigError::new(
                "store.lease_max",
                format!("must be at least lease_min ({})", self.min),
            ));
        }
        if self.horizon.is_zero() {
            problems.push(ConfigError::new("store.lease_horizon", MUST_BE_POSITIVE));
        }
        problems.extend(at_most("store.lease_horizon", self.horizon, MINUTE).err());
        if self.ttl.is_zero() {
            problems.push(ConfigError::new("store.lease_ttl", MUST_BE_POSITIVE));
        } else if self.ttl < self.horizon {
            problems.push(ConfigError::new(
                "store.lease_ttl",
                "must be at least lease_horizon (a lease must live as long as it is meant to last)",
            ));
        }
        problems.extend(at_most("store.lease_ttl", self.ttl, HOUR).err());
        problems
    }
}

/// The lease script. `ARGV[1]` = units the waiting request needs (0 for a
/// refresh ahead of need); then per key: `t` (ns per unit), `cap` (burst *
/// t, ns), `want` (units asked). Each key grants what its bucket holds, up
/// to `want`, and advances its TAT by that many intervals; if some key
/// cannot grant `need`, none grants anything and the answer names the key
/// that needs longest. Returns `{refused (1-based, 0 = none), now, wait,
/// tat1, granted1, ...}` (`tat`: the TAT after the grant, at least `now`).
pub(crate) const SCRIPT: &str = r"
local time = redis.call('TIME')
local now = tonumber(time[1]) * 1000000000 + tonumber(time[2]) * 1000
local need = tonumber(ARGV[1])
local out = {0, now, 0}
local bases = {}
local grants = {}
for i = 1, #KEYS do
  local t = tonumber(ARGV[3 * i - 1])
  local cap = tonumber(ARGV[3 * i])
  local want = tonumber(ARGV[3 * i + 1])
  local tat = tonumber(redis.call('GET', KEYS[i]) or '0') or 0
  if tat < now then tat = now end
  local avail = math.floor((now + cap - tat) / t)
  if avail < 0 then avail = 0 end
  local grant = want
  if grant > avail then grant = avail end
  if grant < need then
    local wait = tat + need * t - cap - now
    if wait > out[3] then
      out[1] = i
      out[3] = wait
    end
  end
  bases[i] = tat
  grants[i] = grant
end
for i = 1, #KEYS do
  local grant = grants[i]
  if out[1] ~= 0 then grant = 0 end
  local new = bases[i] + grant * tonumber(ARGV[3 * i - 1])
  if grant > 0 then
    local ms = math.ceil((new - now) / 1000000)
    if ms < 1 then ms = 1 end
    redis.call('SET', KEYS[i], string.format('%.0f', new), 'PX', ms)
  end
  out[2 + 2 * i] = new
  out[3 + 2 * i] = grant
end
return out
";

/// The floor of the window a slice's rate is measured over: a refresh
/// right after another does not make a huge estimate.
const MIN_ELAPSED: u64 = 1_000_000;

/// The fewest tries of the miss path before it asks Redis for this
/// request alone (after its deadline, one Redis timeout).
const MIN_ROUNDS: usize = 2;

/// One quota and key's slice on this replica. Shared through `Arc` so the
/// miss path can wait for a refresh without holding the table's lock.
pub(crate) struct Cell {
    /// Units left in the slice (void once `expires` has passed).
    tokens: AtomicU64,
    /// Local ns after which the slice is void.
    expires: AtomicU64,
    /// The key's TAT as Redis last answered, on the local clock (0: not
    /// asked yet). Includes the units of the slice.
    view: AtomicU64,
    /// The lease size this slice aims for.
    target: AtomicU64,
    /// The measured rate, units per second (`f64` bits).
    rate: AtomicU64,
    /// Units spent since `since`.
    spent: AtomicU64,
    /// Local ns of the last refresh's start.
    since: AtomicU64,
    /// How long the last refresh took, ns.
    rtt: AtomicU64,
    /// A refresh is in flight.
    refreshing: AtomicBool,
    /// Wakes the requests waiting for the refresh in flight.
    notify: Notify,
}

impl Cell {
    fn new(target: u64) -> Self {
        Self {
            tokens: AtomicU64::new(0),
            expires: AtomicU64::new(0),
            view: AtomicU64::new(0),
            target: AtomicU64::new(target),
            rate: AtomicU64::new(0f64.to_bits()),
            spent: AtomicU64::new(0),
            since: AtomicU64::new(0),
            rtt: AtomicU64::new(0),
            refreshing: AtomicBool::new(false),
            notify: Notify::new(),
        }
    }

    /// The units of the slice at `now` (0 once expired).
    #[inline]
    fn live(&self, now: u64) -> u64 {
        if now < self.expires.load(Ordering::Acquire) {
            self.tokens.load(Ordering::Acquire)
        } else {
            0
        }
    }

    /// Takes `cost` units from a live slice; the units before, or `None`
    /// when the slice is short (or expired).
    #[inline]
    fn take(&self, cost: u64, now: u64) -> Option<u64> {
        if now >= self.expires.load(Ordering::Acquire) {
            return None;
        }
        let before = self
            .tokens
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(cost))
            .ok()?;
        self.spent.fetch_add(cost, Ordering::Relaxed);
        Some(before)
    }

    /// Puts back units taken by a request that another quota refused.
    fn untake(&self, cost: u64) {
        self.tokens.fetch_add(cost, Ordering::AcqRel);
        let _ = self
            .spent
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| {
                Some(n.saturating_sub(cost))
            });
    }

    /// Whether a request that left `after` units should start a refresh
    /// ahead of need: at the measured rate the slice would run out within
    /// two round trips (the last refresh's), and a full lease would be
    /// spent within half its life (a slow key leases on demand and wastes
    /// nothing). Claims the refresh when it should.
    #[inline]
    fn claim_ahead(&self, after: u64, now: u64, ttl: u64, q: &Quota) -> bool {
        let target = self.target.load(Ordering::Relaxed);
        if after > target / 2 || self.refreshing.load(Ordering::Relaxed) {
            return false;
        }
        let rate = f64::from_bits(self.rate.load(Ordering::Relaxed));
        if rate * (ttl as f64 / 1e9) < 2.0 * target as f64 {
            return false;
        }
        // `as` saturates; at least one unit, at most half the lease.
        let rtt = self.rtt.load(Ordering::Relaxed) as f64;
        let low = ((rate * 2.0 * rtt / 1e9).ceil() as u64).clamp(1, (target / 2).max(1));
        if after > low {
            return false;
        }
        // Not while the bucket, as last seen, lacks half a lease: the
        // answer would be a crumb.
        if self.view_wait(self.batch(target), now, q) > 0 {
            return false;
        }
        self.claim()
    }

    /// What a refresh waits to be worth: half the target lease (at least
    /// one unit).
    #[inline]
    fn batch(&self, target: u64) -> u64 {
        (target / 2).max(1)
    }

    /// Claims the one refresh in flight; `false` if another has it.
    fn claim(&self) -> bool {
        self.refreshing
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    /// Starts a claimed refresh at `now`: measures the rate since the
    /// last one, sizes the next lease and returns the units to ask for
    /// (at least `need`; 0: the slice is full enough, nothing to ask).
    fn begin(&self, now: u64, need: u64, size: &Sizing, q: &Quota) -> u64 {
        let since = self.since.swap(now, Ordering::Relaxed);
        let spent = self.spent.swap(0, Ordering::Relaxed);
        let elapsed = now.saturating_sub(since).max(MIN_ELAPSED);
        let mut rate = f64::from_bits(self.rate.load(Ordering::Relaxed));
        if since != 0 || spent != 0 {
            rate = spent as f64 * 1e9 / elapsed as f64;
            self.rate.store(rate.to_bits(), Ordering::Relaxed);
        }
        // `as` saturates: a huge estimate is the max lease.
        let wanted = (rate * size.horizon as f64 / 1e9).ceil() as u64;
        let target = wanted.clamp(q.min, q.max);
        self.target.store(target, Ordering::Relaxed);
        target.saturating_sub(self.live(now)).max(need)
    }

    /// Ends a refresh with Redis's answer: `granted` units, the key's TAT
    /// on the local clock (`view`), at local `now`.
    fn apply(&self, now: u64, granted: u64, view: u64, ttl: u64) {
        let started = self.since.load(Ordering::Relaxed);
        self.rtt
            .store(now.saturating_sub(started), Ordering::Relaxed);
        if granted > 0 {
            if self.expires.load(Ordering::Acquire) <= now {
                self.tokens.store(0, Ordering::Release);
            }
            self.expires
                .store(now.saturating_add(ttl), Ordering::Release);
            self.tokens.fetch_add(granted, Ordering::AcqRel);
        }
        self.view.store(view, Ordering::Release);
        self.release();
    }

    /// Ends a refresh (answered or not) and wakes its waiters.
    fn release(&self) {
        self.refreshing.store(false, Ordering::Release);
        self.notify.notify_waiters();
    }

    /// The wait before Redis, as this slice last saw it, can supply the
    /// `need` units the slice lacks (0: it may have them now).
    fn view_wait(&self, need: u64, now: u64, q: &Quota) -> u64 {
        let view = self.view.load(Ordering::Acquire);
        view.saturating_add(need.saturating_mul(q.gcra.t))
            .saturating_sub(q.gcra.cap())
            .saturating_sub(now)
    }

    /// The key's TAT as this replica sees it with `live` units in hand
    /// (for the `RateLimit` fields): Redis's last answer, units of the
    /// slice given back.
    fn seen_tat(&self, live: u64, q: &Quota) -> u64 {
        self.view
            .load(Ordering::Acquire)
            .saturating_sub(live.saturating_mul(q.gcra.t))
    }
}

impl Expiring for Arc<Cell> {
    fn idle_at(&self) -> u64 {
        if self.refreshing.load(Ordering::Relaxed) {
            return u64::MAX;
        }
        let view = self.view.load(Ordering::Relaxed);
        if self.tokens.load(Ordering::Relaxed) > 0 {
            view.max(self.expires.load(Ordering::Relaxed))
        } else {
            view
        }
    }
}

/// Lease sizing on the local clock.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sizing {
    /// ns of traffic a lease covers.
    horizon: u64,
    /// ns a slice stays good.
    ttl: u64,
}

/// A keyed quota's slices.
type Table = KeyedMap<u64, Arc<Cell>, BuildHasherDefault<IdHasher>>;

/// One quota's lease parameters and slices.
pub(crate) struct Quota {
    gcra: Gcra,
    /// The lease size bounds, within the burst.
    min: u64,
    max: u64,
    cells: Cells,
}

enum Cells {
    Single(Arc<Cell>),
    Keyed(Table),
}

#[cfg(test)]
impl Quota {
    fn cells_single(&self) -> &Arc<Cell> {
        match &self.cells {
            Cells::Single(c) => c,
            Cells::Keyed(_) => panic!("keyed"),
        }
    }
}

/// What the slices say about a request.
#[derive(Debug, PartialEq)]
pub(crate) enum Local {
    /// Taken from every quota's slice.
    Admitted,
    /// Quota `quota`'s bucket, as last seen, has no room for `wait` ns.
    Refused { quota: usize, wait: u64 },
    /// Quota `quota`'s slice is short: ask Redis.
    Short { quota: usize },
}

/// Every quota's slices on this replica.
pub(crate) struct Leases {
    epoch: Instant,
    size: Sizing,
    quotas: Box<[Quota]>,
}

impl Leases {
    /// The slices of quotas `params` (keyed quotas: a table of at most
    /// `max_keys` with `metrics`).
    pub(crate) fn new(lease: &Lease, params: Vec<(Gcra, Option<(usize, MapMetrics)>)>) -> Self {
        let nanos = |d: Duration| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        let quotas = params
            .into_iter()
            .map(|(gcra, keyed)| {
                let burst = u64::from(gcra.burst);
                let max = u64::from(lease.max).min(burst);
                let min = u64::from(lease.min).min(max);
                let cells = match keyed {
                    None => Cells::Single(Arc::new(Cell::new(min))),
                    Some((max_keys, metrics)) => Cells::Keyed(KeyedMap::new(
                        max_keys,
                        BuildHasherDefault::default(),
                        metrics,
                    )),
                };
                Quota {
                    gcra,
                    min,
                    max,
                    cells,
                }
            })
            .collect();
        Self {
            epoch: Instant::now(),
            size: Sizing {
                horizon: nanos(lease.horizon),
                ttl: nanos(lease.ttl),
            },
            quotas,
        }
    }

    /// "Now" on the slices' clock: ns since creation (tokio's clock, so
    /// paused-time tests drive it), from 1.
    #[inline]
    pub(crate) fn now(&self) -> u64 {
        u64::try_from(
            Instant::now()
                .saturating_duration_since(self.epoch)
                .as_nanos(),
        )
        .unwrap_or(u64::MAX)
        .saturating_add(1)
    }

    /// `f` of quota `i`'s slice for `fp`, if there is one.
    #[inline]
    fn with<R>(&self, i: usize, fp: u64, f: impl FnOnce(&Arc<Cell>) -> R) -> Option<R> {
        match &self.quotas[i].cells {
            Cells::Single(cell) => Some(f(cell)),
            Cells::Keyed(table) => table.with(&fp, f),
        }
    }

    /// Quota `i`'s slice for `fp`, made if absent.
    fn cell(&self, i: usize, fp: u64, now: u64) -> Arc<Cell> {
        let q = &self.quotas[i];
        match &q.cells {
            Cells::Single(cell) => Arc::clone(cell),
            Cells::Keyed(table) => {
                table.with_or_insert(fp, now, || Arc::new(Cell::new(q.min)), Arc::clone)
            }
        }
    }

    /// Fills every active slot's `measured` with this replica's view,
    /// taking nothing (a request refused before the slices are asked).
    pub(crate) fn measure(&self, slots: &mut [Slot]) {
        let now = self.now();
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.active {
                let q = &self.quotas[i];
                let tat = self
                    .with(i, slot.fp, |c| c.seen_tat(c.live(now), q))
                    .unwrap_or(0);
                slot.measured = Measured {
                    prev: tat,
                    next: tat,
                    now,
                };
            }
        }
    }

    /// Takes `cost` from every active slot's slice, all or nothing, and
    /// fills each active slot's `measured` with this replica's view.
    /// `ahead`: the slots (bit per quota) whose slice should be refreshed
    /// ahead of need now, each refresh claimed.
    pub(crate) fn take(&self, slots: &mut [Slot], cost: u64, ahead: &mut u32) -> Local {
        let now = self.now();
        // First look: every slice has the units, or the view says when.
        let mut refused: Option<(usize, u64)> = None;
        let mut short = None;
        for (i, slot) in slots.iter_mut().enumerate() {
            if !slot.active {
                continue;
            }
            let q = &self.quotas[i];
            let (live, tat, wait) = self
                .with(i, slot.fp, |c| {
                    let live = c.live(now);
                    let need = cost.saturating_sub(live);
                    // Near the limit a slice is refilled when the bucket,
                    // as last seen, holds half a lease, if that comes at
                    // most a lease horizon after the units needed (a fast
                    // quota): refusals meanwhile cost no round trip, and
                    // no refresh is for a crumb. A slow quota's units are
                    // asked for as soon as they are there.
                    let wait = if need == 0 {
                        0
                    } else {
                        let batch = c.batch(c.target.load(Ordering::Relaxed));
                        let for_need = c.view_wait(need, now, q);
                        let for_batch = c.view_wait(need.max(batch), now, q);
                        if for_batch - for_need <= self.size.horizon {
                            for_batch
                        } else {
                            for_need
                        }
                    };
                    (live, c.seen_tat(live, q), wait)
                })
                .unwrap_or((0, 0, 0));
            slot.measured = Measured {
                prev: tat,
                next: tat,
                now,
            };
            if wait > 0 {
                if refused.is_none_or(|(_, w)| wait > w) {
                    refused = Some((i, wait));
                }
            } else if live < cost && short.is_none() {
                short = Some(i);
            }
        }
        if let Some((quota, wait)) = refused {
            return Local::Refused { quota, wait };
        }
        if let Some(quota) = short {
            return Local::Short { quota };
        }
        // Then take, putting back on a lost race.
        for i in 0..slots.len() {
            if !slots[i].active {
                continue;
            }
            let q = &self.quotas[i];
            let taken = self
                .with(i, slots[i].fp, |c| {
                    let before = c.take(cost, now)?;
                    if c.claim_ahead(before - cost, now, self.size.ttl, q) {
                        *ahead |= 1 << i;
                    }
                    Some((c.seen_tat(before, q), c.seen_tat(before - cost, q)))
                })
                .flatten();
            match taken {
                Some((prev, next)) => slots[i].measured = Measured { prev, next, now },
                None => {
                    for (j, s) in slots[..i].iter().enumerate() {
                        if s.active {
                            self.with(j, s.fp, |c| c.untake(cost));
                        }
                    }
                    // The claimed refreshes still run: the slices are low.
                    return Local::Short { quota: i };
                }
            }
        }
        Local::Admitted
    }
}

/// A refresh to make: which quota and key, the Redis key name.
struct Refresh {
    quota: usize,
    cell: Arc<Cell>,
    name: Vec<u8>,
}

impl RedisBackend {
    /// One call of the lease script for one slice: asks for what the slice
    /// needs (at least `need` units), applies the answer. `Err` when Redis
    /// did not answer.
    async fn refresh(&self, leases: &Leases, r: &Refresh, need: u64) -> Result<(), ()> {
        let q = &leases.quotas[r.quota];
        let want = r.cell.begin(leases.now(), need, &leases.size, q);
        if want == 0 {
            r.cell.release();
            return Ok(());
        }
        self.lease_refreshes.increment(1);
        let mut cmd = self.lease_command(1, 4);
        cmd.arg(r.name.as_slice())
            .arg(need)
            .arg(q.gcra.t)
            .arg(q.gcra.cap())
            .arg(want);
        match self.call_lease(&cmd).await {
            Ok(v) if v.len() >= 5 => {
                let now = leases.now();
                let redis_now = u64::try_from(v[1]).unwrap_or(0);
                let tat = u64::try_from(v[3]).unwrap_or(0);
                let granted = u64::try_from(v[4]).unwrap_or(0);
                let view = now.saturating_add(tat.saturating_sub(redis_now));
                r.cell.apply(now, granted, view, leases.size.ttl);
                Ok(())
            }
            other => {
                if let Err(e) = &other {
                    tracing::debug!(
                        target: "tower_rampart::rate_limit",
                        name = %self.name,
                        error = %e,
                        "rate limit store call failed"
                    );
                }
                r.cell.release();
                Err(())
            }
        }
    }

    /// A refresh ahead of need, in the background.
    fn spawn_refresh(self: &Arc<Self>, r: Refresh) {
        let Ok(handle) = tokio::runtime::Handle::try_current() else {
            r.cell.release();
            return;
        };
        let this = Arc::clone(self);
        handle.spawn(async move {
            let Some(leases) = this.lease.as_ref() else {
                return;
            };
            let _ = this.refresh(leases, &r, 0).await;
        });
    }

    /// The miss path: some slice is short. Refreshes it (or waits for the
    /// refresh in flight) and tries again; past one Redis timeout (and
    /// [`MIN_ROUNDS`] tries) asks Redis for this request's units alone.
    async fn acquire_leased(
        self: Arc<Self>,
        mut slots: Slots,
        names: Vec<Option<Vec<u8>>>,
        cost: NonZeroU32,
    ) -> (Slots, RemoteOutcome) {
        let Some(leases) = self.lease.as_ref() else {
            unreachable!("the leased path has leases");
        };
        let units = u64::from(cost.get());
        let len = slots.len;
        // Waiting for refreshes others make, for up to one Redis timeout:
        // each refresh serves a lease's worth of waiters, so a herd of
        // misses costs a round trip per lease, not per request.
        let deadline = tokio::time::Instant::now() + self.timeout;
        let mut round = 0;
        loop {
            round += 1;
            if round > MIN_ROUNDS && tokio::time::Instant::now() >= deadline {
                break;
            }
            let mut ahead = 0;
            let quota = match leases.take(&mut slots.slots[..len], units, &mut ahead) {
                Local::Admitted => {
                    self.refresh_ahead(leases, &slots, &names, ahead);
                    return self.leased(slots, Verdict::Admitted);
                }
                Local::Refused { quota, wait } => {
                    self.refresh_ahead(leases, &slots, &names, ahead);
                    let wait = Duration::from_nanos(wait);
                    return self.leased(slots, Verdict::Exhausted { quota, wait });
                }
                Local::Short { quota } => {
                    self.refresh_ahead(leases, &slots, &names, ahead);
                    quota
                }
            };
            let slot = slots.slots[quota];
            let cell = leases.cell(quota, slot.fp, leases.now());
            let waiter = Arc::clone(&cell);
            let notified = waiter.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if cell.claim() {
                let need = units.saturating_sub(cell.live(leases.now()));
                if need == 0 {
                    // Refreshed meanwhile: try the slices again.
                    cell.release();
                    continue;
                }
                let r = Refresh {
                    quota,
                    cell,
                    name: names[quota].clone().unwrap_or_default(),
                };
                if self.refresh(leases, &r, need).await.is_err() {
                    return self.lease_failed(slots, cost);
                }
            } else {
                // Bounded: the refresh in flight has Redis's timeout.
                let _ = tokio::time::timeout_at(deadline, notified).await;
            }
        }
        self.exact_leased(slots, &names, cost).await
    }

    /// Claimed refreshes ahead of need, spawned.
    fn refresh_ahead(
        self: &Arc<Self>,
        leases: &Leases,
        slots: &Slots,
        names: &[Option<Vec<u8>>],
        ahead: u32,
    ) {
        for (i, slot) in slots.slots[..slots.len].iter().enumerate() {
            if ahead & (1 << i) != 0 {
                let cell = leases.cell(i, slot.fp, leases.now());
                self.spawn_refresh(Refresh {
                    quota: i,
                    cell,
                    name: names[i].clone().unwrap_or_default(),
                });
            }
        }
    }

    /// This request's units alone, from Redis (the miss path lost every
    /// race for a refreshed slice): one call for every quota, all or
    /// nothing, like exact mode.
    async fn exact_leased(
        &self,
        mut slots: Slots,
        names: &[Option<Vec<u8>>],
        cost: NonZeroU32,
    ) -> (Slots, RemoteOutcome) {
        let Some(leases) = self.lease.as_ref() else {
            unreachable!("the leased path has leases");
        };
        let units = u64::from(cost.get());
        let mut index = [0usize; MAX_QUOTAS];
        let mut n = 0;
        for (i, s) in slots.slots[..slots.len].iter().enumerate() {
            if s.active {
                index[n] = i;
                n += 1;
            }
        }
        let mut cmd = self.lease_command(n, 1 + 3 * n);
        for &i in &index[..n] {
            cmd.arg(names[i].as_deref().unwrap_or_default());
        }
        cmd.arg(units);
        for &i in &index[..n] {
            let q = &leases.quotas[i].gcra;
            cmd.arg(q.t).arg(q.cap()).arg(units);
        }
        self.lease_refreshes.increment(1);
        match self.call_lease(&cmd).await {
            Ok(v) if v.len() >= 3 => {
                let now = leases.now();
                let redis_now = u64::try_from(v[1]).unwrap_or(0);
                let refused = usize::try_from(v[0]).unwrap_or(0);
                for (j, &i) in index[..(v.len() - 3) / 2].iter().enumerate() {
                    let tat = u64::try_from(v[3 + 2 * j]).unwrap_or(0);
                    let next = now.saturating_add(tat.saturating_sub(redis_now));
                    let prev = if refused == 0 {
                        next.saturating_sub(units * leases.quotas[i].gcra.t)
                    } else {
                        next
                    };
                    slots.slots[i].measured = Measured { prev, next, now };
                }
                if refused == 0 {
                    self.leased(slots, Verdict::Admitted)
                } else {
                    let wait = u64::try_from(v[2]).unwrap_or(0);
                    let verdict = Verdict::Exhausted {
                        quota: index[refused - 1],
                        wait: Duration::from_nanos(wait),
                    };
                    self.leased(slots, verdict)
                }
            }
            _ => self.lease_failed(slots, cost),
        }
    }

    /// A decision the miss path made with Redis's answer.
    fn leased(&self, slots: Slots, verdict: Verdict) -> (Slots, RemoteOutcome) {
        self.record(Path::LeaseRefresh);
        let path = Path::LeaseRefresh;
        (slots, RemoteOutcome { verdict, path })
    }

    /// A refresh failed: the failure policy decides.
    fn lease_failed(&self, mut slots: Slots, cost: NonZeroU32) -> (Slots, RemoteOutcome) {
        let (path, verdict) = match (self.failure, &self.fallback) {
            (FailurePolicy::Fallback { .. }, Some(store)) => (
                Path::Fallback,
                store.acquire(&mut slots.slots[..slots.len], cost),
            ),
            (FailurePolicy::FailClosed, _) => (Path::FailClosed, Verdict::Admitted),
            _ => (Path::FailOpen, Verdict::Admitted),
        };
        self.record(path);
        (slots, RemoteOutcome { verdict, path })
    }
}

/// The layer's side of leased mode.
impl Shared {
    /// Leased mode: keys, cost and allow-lists as always, then the slices;
    /// Redis only on a miss.
    pub(crate) fn decide_leased<B>(
        &self,
        req: &http::Request<B>,
        redis: &Arc<RedisBackend>,
        leases: &Leases,
    ) -> Decision {
        let info = RequestInfo::new(req, &self.client_ip);
        let mut slots = Slots::default();
        if let Some(d) = self.prepare(&info, &mut slots) {
            return d;
        }
        let Some(cost) = slots.cost else {
            return Decision::Admit(None);
        };
        if !slots.slots[..slots.len].iter().any(|s| s.active) {
            return self.admit();
        }
        let units = u64::from(cost.get());
        let mut ahead = 0u32;
        let too_costly =
            (0..slots.len).find(|&i| slots.slots[i].active && cost.get() > self.params[i].burst);
        let local = match too_costly {
            // Never admissible: the state as seen, nothing taken.
            Some(quota) => {
                leases.measure(&mut slots.slots[..slots.len]);
                return self.finish(
                    &self.params,
                    &slots,
                    Verdict::TooCostly { quota },
                    false,
                    cost,
                );
            }
            None => leases.take(&mut slots.slots[..slots.len], units, &mut ahead),
        };
        // The names exact mode gives the same keys (a fleet may switch
        // modes replica by replica): a global quota's key is empty.
        let name = |i: usize| {
            let key = &self.quotas[i].key;
            if key.is_global() {
                return redis.key_name(i, KeyRef::Bytes(b""));
            }
            key.with_key(&info, |k| redis.key_name(i, k))
                .unwrap_or_else(|| redis.key_name(i, KeyRef::Bytes(ANONYMOUS)))
        };
        if ahead != 0 {
            for (i, slot) in slots.slots[..slots.len].iter().enumerate() {
                if ahead & (1 << i) != 0 {
                    redis.spawn_refresh(Refresh {
                        quota: i,
                        cell: leases.cell(i, slot.fp, leases.now()),
                        name: name(i),
                    });
                }
            }
        }
        let verdict = match local {
            Local::Admitted => Verdict::Admitted,
            Local::Refused { quota, wait } => Verdict::Exhausted {
                quota,
                wait: Duration::from_nanos(wait),
            },
            Local::Short { .. } => {
                let names = (0..slots.len)
                    .map(|i| slots.slots[i].active.then(|| name(i)))
                    .collect();
                let this = Arc::clone(redis);
                return Decision::Deciding(Box::pin(this.acquire_leased(slots, names, cost)));
            }
        };
        redis.record_lease();
        self.finish(&self.params, &slots, verdict, false, cost)
    }
}

impl Leases {
    /// Drops the idle slices (lease expired, bucket full again as last
    /// seen); returns how many.
    pub(crate) fn sweep(&self) -> usize {
        let now = self.now();
        self.quotas
            .iter()
            .map(|q| match &q.cells {
                Cells::Keyed(t) => t.sweep(now),
                Cells::Single(_) => 0,
            })
            .sum()
    }

    /// Whether some quota keeps slices per key.
    pub(crate) fn is_keyed(&self) -> bool {
        self.quotas
            .iter()
            .any(|q| matches!(q.cells, Cells::Keyed(_)))
    }

    /// Slices kept, over all keyed quotas.
    pub(crate) fn key_count(&self) -> usize {
        self.quotas
            .iter()
            .map(|q| match &q.cells {
                Cells::Keyed(t) => t.len(),
                Cells::Single(_) => 0,
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    //! The slices on paused time, against a Redis simulated by the same
    //! GCRA arithmetic as the lease script (the script itself runs against
    //! a real `redis-server` in `tests/rate_limit/redis_lease.rs`).

    use super::super::redis::tests::server;
    use super::*;

    const MS: u64 = 1_000_000;

    /// One key's TAT, as the lease script keeps it (on the slices' clock).
    #[derive(Default)]
    struct FakeRedis {
        tat: u64,
        calls: u64,
    }

    impl FakeRedis {
        /// The lease script for one key: grants up to `want` (nothing if
        /// fewer than `need`); the TAT after.
        fn lease(&mut self, q: &Gcra, now: u64, need: u64, want: u64) -> (u64, u64) {
            self.calls += 1;
            let tat = self.tat.max(now);
            let avail = (now + q.cap()).saturating_sub(tat) / q.t;
            let grant = if avail < need { 0 } else { want.min(avail) };
            self.tat = tat + grant * q.t;
            (grant, self.tat)
        }
    }

    fn leases(lease: Lease, quotas: &[(u64, u32, bool)]) -> Leases {
        Leases::new(
            &lease,
            quotas
                .iter()
                .map(|&(t, burst, keyed)| {
                    (
                        Gcra::new(t, burst),
                        keyed.then(|| (1000, MapMetrics::noop())),
                    )
                })
                .collect(),
        )
    }

    fn slots(n: usize, fp: u64) -> Vec<Slot> {
        (0..n)
            .map(|_| Slot {
                active: true,
                fp,
                measured: Measured::default(),
            })
            .collect()
    }

    /// A refresh of quota `i`'s slice for `fp` against `redis`, as
    /// `RedisBackend::refresh` makes it (claimed here unless `claimed`).
    fn refresh(
        l: &Leases,
        redis: &mut FakeRedis,
        i: usize,
        fp: u64,
        need: u64,
        claimed: bool,
    ) -> u64 {
        let cell = l.cell(i, fp, l.now());
        assert!(claimed || cell.claim(), "one refresh in flight");
        let q = &l.quotas[i];
        let want = cell.begin(l.now(), need, &l.size, q);
        if want == 0 {
            cell.release();
            return 0;
        }
        let (granted, tat) = redis.lease(&q.gcra, l.now(), need, want);
        cell.apply(l.now(), granted, tat, l.size.ttl);
        granted
    }

    /// One request of cost 1 on a one-quota replica: from the slice, or
    /// after a refresh (as the miss path does); refreshes ahead at once.
    fn request(l: &Leases, redis: &mut FakeRedis, fp: u64) -> bool {
        for _ in 0..3 {
            let mut s = slots(1, fp);
            let mut ahead = 0;
            let local = l.take(&mut s, 1, &mut ahead);
            if ahead != 0 {
                refresh(l, redis, 0, fp, 0, true);
            }
            match local {
                Local::Admitted => return true,
                Local::Refused { .. } => return false,
                Local::Short { .. } => {
                    refresh(l, redis, 0, fp, 1, false);
                }
            }
        }
        false
    }

    #[tokio::test(start_paused = true)]
    async fn a_slice_admits_locally_until_spent() {
        // 1000/s (1ms per unit), burst 100; leases of exactly 10.
        let l = leases(Lease::new().min(10).max(10), &[(MS, 100, false)]);
        let mut redis = FakeRedis::default();
        let mut s = slots(1, 0);
        let mut ahead = 0;
        assert_eq!(l.take(&mut s, 1, &mut ahead), Local::Short { quota: 0 });
        assert_eq!(refresh(&l, &mut redis, 0, 0, 1, false), 10);
        for left in (0..10).rev() {
            assert_eq!(l.take(&mut s, 1, &mut ahead), Local::Admitted);
            // The view: the bucket as Redis answered, the slice given back.
            let m = s[0].measured;
            let snap = Gcra::new(MS, 100).snapshot(m.next, m.now);
            assert_eq!(snap.remaining, 90 + left, "{m:?}");
        }
        assert_eq!(l.take(&mut s, 1, &mut ahead), Local::Short { quota: 0 });
        assert_eq!(ahead, 0, "no rate measured yet: no refresh ahead");
        assert_eq!(redis.calls, 1);
        // Costs come out whole or not at all.
        refresh(&l, &mut redis, 0, 0, 1, false);
        assert_eq!(l.take(&mut s, 11, &mut ahead), Local::Short { quota: 0 });
        assert_eq!(l.take(&mut s, 10, &mut ahead), Local::Admitted);
    }

    #[tokio::test(start_paused = true)]
    async fn an_expired_slice_is_dropped_not_returned() {
        let l = leases(
            Lease::new().min(10).max(10).ttl(Duration::from_secs(1)),
            &[(MS, 100, true)],
        );
        let mut redis = FakeRedis::default();
        assert_eq!(refresh(&l, &mut redis, 0, 7, 1, false), 10);
        let mut s = slots(1, 7);
        let mut ahead = 0;
        assert_eq!(l.take(&mut s, 1, &mut ahead), Local::Admitted);
        tokio::time::advance(Duration::from_millis(1001)).await;
        // 9 units left, but void: nothing is spent, nothing goes back.
        assert_eq!(l.take(&mut s, 1, &mut ahead), Local::Short { quota: 0 });
        let tat_before = redis.tat;
        assert_eq!(refresh(&l, &mut redis, 0, 7, 1, false), 10);
        assert_eq!(redis.tat, tat_before.max(l.now()) + 10 * MS);
        // The new slice is the new lease alone.
        for _ in 0..10 {
            assert_eq!(l.take(&mut s, 1, &mut ahead), Local::Admitted);
        }
        assert_eq!(l.take(&mut s, 1, &mut ahead), Local::Short { quota: 0 });
        // Spent, and the bucket full again (10ms later): idle, swept.
        assert_eq!(l.key_count(), 1);
        tokio::time::advance(Duration::from_millis(5)).await;
        assert_eq!(l.sweep(), 0, "the bucket is not full yet");
        tokio::time::advance(Duration::from_millis(6)).await;
        assert_eq!(l.sweep(), 1);
        assert_eq!(l.key_count(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn the_lease_size_follows_the_observed_rate() {
        // 1 000 000/s (1us per unit), burst 10 000: never the limit here.
        let l = leases(
            Lease::new()
                .min(2)
                .max(500)
                .horizon(Duration::from_millis(100)),
            &[(1000, 10_000, true)],
        );
        let mut redis = FakeRedis::default();
        let target = |fp| l.cell(0, fp, l.now()).target.load(Ordering::Relaxed);
        // Key 1: 1000 requests/s for 2s; key 2: 1 request/s.
        for ms in 0..2000u64 {
            assert!(request(&l, &mut redis, 1));
            if ms % 1000 == 0 {
                assert!(request(&l, &mut redis, 2));
            }
            tokio::time::advance(Duration::from_millis(1)).await;
        }
        // 100ms of 1000/s.
        assert!((95..=105).contains(&target(1)), "{}", target(1));
        assert_eq!(target(2), 2, "a slow key leases the minimum");
        // ~2000 requests in leases of ~100 (refreshed at half): about 40
        // round trips, far below one per request.
        assert!(redis.calls < 60, "{} round trips", redis.calls);
        // A burst: the rate is capped by `max`.
        for _ in 0..5000 {
            request(&l, &mut redis, 1);
            tokio::time::advance(Duration::from_micros(10)).await;
        }
        assert_eq!(target(1), 500);
    }

    #[tokio::test(start_paused = true)]
    async fn one_refresh_ahead_in_flight_and_none_for_a_slow_key() {
        let l = leases(Lease::new().min(1).max(20), &[(1000, 1000, false)]);
        let mut redis = FakeRedis::default();
        // Measure a rate of 10 000/s: two refreshes 1ms apart, 10 spent.
        refresh(&l, &mut redis, 0, 0, 1, false);
        let mut s = slots(1, 0);
        let mut ahead = 0;
        assert_eq!(l.take(&mut s, 1, &mut ahead), Local::Admitted);
        tokio::time::advance(Duration::from_millis(1)).await;
        l.quotas[0]
            .cells_single()
            .spent
            .store(10, Ordering::Relaxed);
        refresh(&l, &mut redis, 0, 0, 1, false);
        let cell = Arc::clone(l.quotas[0].cells_single());
        assert_eq!(cell.target.load(Ordering::Relaxed), 20);
        assert_eq!(cell.live(l.now()), 20);
        // The refresh took no time here: the watermark is one unit.
        let mut claims = 0;
        for left in (1..20).rev() {
            ahead = 0;
            assert_eq!(l.take(&mut s, 1, &mut ahead), Local::Admitted);
            assert_eq!(ahead != 0, left == 1, "{left}");
            claims += ahead.count_ones();
        }
        assert!(cell.refreshing.load(Ordering::Relaxed));
        // In flight: the last unit claims nothing more.
        ahead = 0;
        assert_eq!(l.take(&mut s, 1, &mut ahead), Local::Admitted);
        claims += ahead.count_ones();
        assert_eq!(claims, 1);
        // It ends, topping the slice up to the target (0 + 20).
        refresh(&l, &mut redis, 0, 0, 0, true);
        assert_eq!(cell.live(l.now()), 20);
        assert!(!cell.refreshing.load(Ordering::Relaxed));

        // A key seen once a second never refreshes ahead: its lease would
        // expire unspent (a unit lost to the fleet each time).
        let slow = leases(Lease::new().min(1).max(20), &[(1000, 1000, false)]);
        let mut redis = FakeRedis::default();
        for n in 1..=5 {
            assert!(request(&slow, &mut redis, 0));
            assert_eq!(redis.calls, n, "one lease per request, none ahead");
            assert_eq!(slow.quotas[0].cells_single().live(slow.now()), 0);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn an_empty_bucket_is_refused_locally_until_the_view_has_room() {
        // 10/s (100ms per unit), burst 4; leases of 1..=4.
        let l = leases(Lease::new().min(1).max(4), &[(100 * MS, 4, true)]);
        let mut redis = FakeRedis::default();
        let mut admitted = 0;
        for _ in 0..10 {
            admitted += u32::from(request(&l, &mut redis, 3));
        }
        assert_eq!(admitted, 4, "the burst, and no more");
        let calls = redis.calls;
        // Hammering the spent key: refused without asking Redis, with the
        // wait the view knows of.
        let mut s = slots(1, 3);
        let mut ahead = 0;
        for _ in 0..1000 {
            match l.take(&mut s, 1, &mut ahead) {
                Local::Refused { quota: 0, wait } => assert!(wait > 0 && wait <= 400 * MS),
                other => panic!("{other:?}"),
            }
        }
        assert_eq!(redis.calls, calls);
        // The refusal reports what remains as last seen: nothing.
        let m = s[0].measured;
        assert_eq!(Gcra::new(100 * MS, 4).snapshot(m.prev, m.now).remaining, 0);
        // Room again after the wait: back to Redis.
        let Local::Refused { wait, .. } = l.take(&mut s, 1, &mut ahead) else {
            unreachable!()
        };
        tokio::time::advance(Duration::from_nanos(wait)).await;
        assert!(request(&l, &mut redis, 3));
        assert_eq!(redis.calls, calls + 1);
    }

    #[tokio::test(start_paused = true)]
    async fn several_quotas_take_all_or_nothing() {
        let l = leases(
            Lease::new().min(5).max(5),
            &[(MS, 100, true), (MS, 100, false)],
        );
        let mut per_key = FakeRedis::default();
        let mut global = FakeRedis::default();
        refresh(&l, &mut per_key, 0, 1, 1, false);
        let mut s = slots(2, 1);
        let mut ahead = 0;
        // The global slice is short: nothing taken from the keyed one.
        assert_eq!(l.take(&mut s, 2, &mut ahead), Local::Short { quota: 1 });
        assert_eq!(l.cell(0, 1, l.now()).live(l.now()), 5);
        refresh(&l, &mut global, 1, 0, 2, false);
        assert_eq!(l.take(&mut s, 2, &mut ahead), Local::Admitted);
        assert_eq!(l.take(&mut s, 2, &mut ahead), Local::Admitted);
        assert_eq!(l.cell(0, 1, l.now()).live(l.now()), 1);
        assert_eq!(l.cell(1, 0, l.now()).live(l.now()), 1);
        // A lost race on the second slice puts the first one's units back.
        l.cell(1, 0, l.now()).tokens.store(0, Ordering::Relaxed);
        l.cell(0, 1, l.now()).tokens.store(3, Ordering::Relaxed);
        l.cell(1, 0, l.now()).tokens.store(3, Ordering::Relaxed);
        assert_eq!(l.take(&mut s, 3, &mut ahead), Local::Admitted);
        assert_eq!(l.take(&mut s, 1, &mut ahead), Local::Short { quota: 0 });
    }

    #[tokio::test(start_paused = true)]
    async fn replicas_stay_within_the_documented_bound() {
        // Three replicas at 2000 requests/s each against 1000/s, burst
        // 200, leases of at most 50: over 3s the fleet admits at most
        // burst + rate * 3s + replicas * lease_max.
        let lease = Lease::new().max(50);
        let fleet: Vec<Leases> = (0..3).map(|_| leases(lease, &[(MS, 200, false)])).collect();
        let mut redis = FakeRedis::default();
        let (mut admitted, mut requests) = (0u64, 0u64);
        for _ in 0..6000 {
            for l in &fleet {
                requests += 1;
                admitted += u64::from(request(l, &mut redis, 0));
            }
            tokio::time::advance(Duration::from_micros(500)).await;
        }
        let bound = 200 + 3000 + 3 * 50;
        assert!(admitted <= bound, "{admitted} > {bound}");
        // Not starved either: the limit is mostly used.
        assert!(admitted >= 2700, "{admitted}");
        // Refusals cost no round trip; grants come in batches.
        let trips = redis.calls as f64 / requests as f64;
        assert!(trips < 0.05, "{trips} round trips per request");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn the_lease_script_grants_as_gcra_says() {
        let Some(srv) = server() else { return };
        let client = redis::Client::open(format!("redis://127.0.0.1:{}/", srv.1)).unwrap();
        let mut conn = client.get_multiplexed_async_connection().await.unwrap();
        let script = redis::Script::new(SCRIPT);
        // 1024ns multiples: exact in the script's doubles (see redis.rs).
        let t = 1024 * 976_563; // ~1s per unit
        let q = Gcra::new(t, 5);
        // (units already used per key (None: absent), need, want per key)
        // -> (refused key, grant per key).
        type Case = (
            &'static [Option<u64>],
            u64,
            &'static [u64],
            usize,
            &'static [u64],
        );
        let cases: &[Case] = &[
            (&[None], 1, &[3], 0, &[3]),
            // Partial: the bucket holds 5.
            (&[None], 1, &[10], 0, &[5]),
            (&[Some(3)], 1, &[10], 0, &[2]),
            // Fewer than needed: nothing, the wait named.
            (&[Some(4)], 2, &[10], 1, &[0]),
            // A refresh ahead of need on an empty bucket: nothing, no refusal.
            (&[Some(5)], 0, &[10], 0, &[0]),
            // Several keys: all or nothing on `need`.
            (&[Some(0), Some(4)], 2, &[2, 2], 2, &[0, 0]),
            (&[Some(1), None], 2, &[2, 3], 0, &[2, 3]),
        ];
        for (case, &(used, need, want, refused, grants)) in cases.iter().enumerate() {
            let (sec, usec): (u64, u64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
            let base = (sec * 1_000_000_000 + usec * 1000) / 1024 * 1024;
            let keys: Vec<String> = (0..used.len())
                .map(|i| format!("{{l}}:{case}:{i}"))
                .collect();
            let mut invoke = script.prepare_invoke();
            invoke.arg(need);
            for (i, key) in keys.iter().enumerate() {
                if let Some(u) = used[i] {
                    // `u` units used, as of a moment ago.
                    let _: () = redis::cmd("SET")
                        .arg(key)
                        .arg(base + u * t)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                }
                invoke.key(key).arg(q.t).arg(q.cap()).arg(want[i]);
            }
            let out: Vec<i64> = invoke.invoke_async(&mut conn).await.unwrap();
            let ctx = format!("case {case}: {out:?}");
            assert_eq!(out[0] as usize, refused, "{ctx}");
            let now = out[1] as u64;
            for (i, key) in keys.iter().enumerate() {
                let granted = out[4 + 2 * i] as u64;
                assert_eq!(granted, grants[i], "{ctx}");
                let before = used[i].map_or(0, |u| base + u * t).max(now);
                assert_eq!(out[3 + 2 * i] as u64, before + granted * t, "{ctx}");
                let stored: Option<u64> = redis::cmd("GET")
                    .arg(key)
                    .query_async(&mut conn)
                    .await
                    .unwrap();
                if granted > 0 {
                    assert_eq!(stored, Some(before + granted * t), "{ctx}");
                    let pttl: i64 = redis::cmd("PTTL")
                        .arg(key)
                        .query_async(&mut conn)
                        .await
                        .unwrap();
                    assert!(pttl > 0, "{ctx}: idle keys expire");
                } else {
                    assert_eq!(
                        stored,
                        used[i].map(|u| base + u * t),
                        "{ctx}: nothing written"
                    );
                }
            }
            if refused != 0 {
                // The wait for `need` units of the refusing key.
                let i = refused - 1;
                let tat = used[i].map_or(0, |u| base + u * t).max(now);
                assert_eq!(out[2] as u64, tat + need * t - q.cap() - now, "{ctx}");
            }
        }
    }
}
