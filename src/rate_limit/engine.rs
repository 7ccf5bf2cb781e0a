// Past ~500 lines: the whole per-request decision (allow-lists, cost, keys,
// the store's verdict, the refusal with its headers, metrics, tracing) is
// one path read top to bottom; split, the request path would be scattered.
//! The rate limit's engine: the state every clone of the layer shares,
//! and the decision for one request (allow-lists, cost, keys, the store's
//! verdict, the refusal and its headers, metrics and tracing).
//!
//! The layer ([`super::layer`]) checks the settings and calls
//! [`Shared::new`]; the service ([`super::RateLimit`]) calls
//! [`Shared::decide`] once per request; the response future calls
//! [`Shared::acquire`] again in waiting mode. The arithmetic is
//! [`super::gcra`], where the state lives is [`super::store`].
//! (Over the ~500-line guide: the decision and the refusal it builds read
//! best together; the Redis glue lives in `redis.rs`.)

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use ipnet::IpNet;
use metrics::Counter;

use super::MAX_QUOTAS;
use super::client_ip::{ClientIp, parse_cidrs};
use super::error::RefusalReason;
use super::gcra::Gcra;
use super::headers::{HeaderTemplate, Item, Rendered};
use super::key::{Fingerprinter, Key, KeyExtractor, KeyRef, RequestInfo, fingerprint};
use super::layer::{CostFn, MissingKey, QuotaState, RateLimitBuilder};
use super::memory::{MemoryStore, Slot, Verdict};
use super::store::Store;
use crate::util::tally::Tallies;
use crate::{ConfigError, Rejection, RejectionKind};

/// Per-quota data the layer needs besides the store.
pub(crate) struct QuotaInfo {
    pub(crate) name: Arc<str>,
    /// The refusal detail, rendered once and shared by every refusal.
    exhausted: Arc<str>,
    pub(crate) key: KeyExtractor,
    refused: [Counter; RefusalReason::ALL.len()],
    dry_run: [Counter; RefusalReason::ALL.len()],
}

/// The state every clone of the layer and its services shares.
pub(crate) struct Shared {
    pub(crate) name: Arc<str>,
    pub(crate) quotas: Box<[QuotaInfo]>,
    /// Each quota's GCRA parameters, as configured.
    pub(crate) params: Box<[Gcra]>,
    pub(crate) store: Store,
    pub(crate) hasher: Fingerprinter,
    anonymous: u64,
    pub(crate) client_ip: ClientIp,
    missing_key: MissingKey,
    cost: Option<Arc<CostFn>>,
    dry_run: bool,
    admitted_headers: bool,
    /// In-process quotas, at most one of them keyed, and nothing else to
    /// decide (no allow-list, no cost function, no headers on admitted
    /// answers): a request is stepped against the quotas at once
    /// ([`Shared::admit_plain`]).
    plain: bool,
    /// The keyed quota's index when `plain` (`None`: all are global).
    plain_key: Option<usize>,
    headers: HeaderTemplate,
    allow_keys: Box<[u64]>,
    allow_cidrs: Box<[IpNet]>,
    /// When the client IP is masked (an IPv6 prefix below 128): the same
    /// resolution unmasked, for the allow-list, which names addresses.
    allow_ip: Option<ClientIp>,
    pub(crate) wait: Option<Duration>,
    /// `rampart_rate_limit_admitted_total` and
    /// `rampart_rate_limit_allowlisted_total`, counted per thread
    /// (`util::tally`): indexed by [`ADMITTED`] and [`ALLOWLISTED`].
    admissions: Tallies<2>,
}

const ADMITTED: usize = 0;
const ALLOWLISTED: usize = 1;

/// One request's quota slots: a fixed array of [`MAX_QUOTAS`], so deciding
/// a request allocates nothing (the crate's happy-path rule, not a speed
/// trick).
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Slots {
    pub(crate) slots: [Slot; MAX_QUOTAS],
    pub(crate) len: usize,
    pub(crate) cost: Option<NonZeroU32>,
}

/// What the layer does with a request.
pub(crate) enum Decision {
    /// Call the inner service (with these headers on the response).
    Admit(Option<Box<Rendered>>),
    /// Answer this refusal (boxed: keeps the admitted path's values small).
    Refuse(Box<Rejection>),
    /// Waiting mode: quota `quota` has room again after `wait`; the
    /// request's slots, to retry with (boxed: off the happy path).
    Wait {
        wait: Duration,
        quota: usize,
        slots: Option<Box<Slots>>,
    },
    /// The Redis store is deciding (boxed future: off the in-process path).
    #[cfg(feature = "redis")]
    Deciding(super::redis::Deciding),
}

impl Shared {
    /// The shared state of a checked builder (see
    /// [`RateLimitBuilder::build`]): metric handles registered once, the
    /// store made, the idle sweep spawned.
    pub(crate) fn new(b: RateLimitBuilder) -> Result<Arc<Self>, ConfigError> {
        crate::metrics_help::describe(super::METRICS);
        let layer: Arc<str> = Arc::from(b.name.as_ref());
        let allow_cidrs = parse_cidrs(&b.allow_cidrs, "allow_cidrs")?;
        let names: Vec<String> = b
            .quotas
            .iter()
            .map(|q| q.display_name().into_owned())
            .collect();
        let mut params = Vec::with_capacity(b.quotas.len());
        for (i, q) in b.quotas.iter().enumerate() {
            params.push(q.gcra().map_err(|e| e.at(&format!("quotas[{i}]")))?);
        }
        let store = Store::new(&b, &layer, &names, &params)?;
        let infos = names
            .iter()
            .zip(&b.quotas)
            .map(|(qname, q)| QuotaInfo::new(&layer, qname, q.key.clone(), store.is_remote()))
            .collect();
        let headers = HeaderTemplate::new(
            &names
                .iter()
                .zip(&b.quotas)
                .map(|(n, q)| (n.clone(), q.rate))
                .collect::<Vec<_>>(),
            b.legacy_headers,
        );
        let hasher = Fingerprinter::new();
        let mut allow_keys: Vec<u64> = b
            .allow_keys
            .iter()
            .map(|k| fingerprint(&hasher, k.as_ref()))
            .collect();
        allow_keys.sort_unstable();
        allow_keys.dedup();
        let anonymous = fingerprint(&hasher, KeyRef::Bytes(ANONYMOUS));
        let name_label = [("name", layer.to_string())];
        let allow_ip = (!allow_cidrs.is_empty())
            .then(|| b.client_ip.unmasked())
            .flatten();
        let plain = matches!(&store, Store::Memory(m) if m.has_plain_shape())
            && allow_cidrs.is_empty()
            && allow_keys.is_empty()
            && b.cost.is_none()
            && !b.admitted_headers;
        let shared = Arc::new(Shared {
            name: Arc::clone(&layer),
            quotas: infos,
            params: params.into(),
            store,
            hasher,
            anonymous,
            client_ip: b.client_ip,
            missing_key: b.missing_key,
            cost: b.cost,
            dry_run: b.dry_run,
            admitted_headers: b.admitted_headers,
            plain,
            plain_key: b.quotas.iter().position(|q| !q.key.is_global()),
            headers,
            allow_keys: allow_keys.into(),
            allow_ip,
            allow_cidrs: allow_cidrs.into(),
            wait: b.wait,
            admissions: Tallies::new([
                metrics::counter!("rampart_rate_limit_admitted_total", &name_label),
                metrics::counter!("rampart_rate_limit_allowlisted_total", &name_label),
            ]),
        });
        if let Some(every) = b.idle_sweep {
            if shared.store.is_keyed() {
                spawn_sweeper(&shared, every);
            }
        }
        Ok(shared)
    }
}

/// The key of requests without one under [`MissingKey::Anonymous`].
pub(crate) const ANONYMOUS: &[u8] = b"\0tower-rampart anonymous\0";

impl QuotaInfo {
    fn new(layer: &str, qname: &str, key: KeyExtractor, remote: bool) -> Self {
        let per_reason = |metric: &'static str| {
            RefusalReason::ALL.map(|r| {
                if r == RefusalReason::StoreUnavailable && !remote {
                    // In process there is no store to be unavailable:
                    // no series that can only ever read 0.
                    return Counter::noop();
                }
                metrics::counter!(
                    metric,
                    &[
                        ("name", layer.to_owned()),
                        ("quota", qname.to_owned()),
                        ("reason", r.as_str().to_owned()),
                    ]
                )
            })
        };
        QuotaInfo {
            name: Arc::from(qname),
            exhausted: Arc::from(format!("rate limit quota `{qname}` exhausted")),
            key,
            refused: per_reason("rampart_rate_limit_refused_total"),
            dry_run: per_reason("rampart_rate_limit_dry_run_refusals_total"),
        }
    }
}

impl Shared {
    /// Admits a request, without rate-limit headers (counted as admitted).
    pub(crate) fn admit(&self) -> Decision {
        self.admissions.increment(ADMITTED);
        Decision::Admit(None)
    }

    pub(crate) fn allowlisted(&self) -> Decision {
        self.admissions.increment(ALLOWLISTED);
        Decision::Admit(None)
    }

    /// Admits a request to a limit that needs nothing from it (a `plain`
    /// in-memory limit of global quotas only), without looking at the
    /// request: inlined where the request is called, so that the request is
    /// not lent to an out-of-line call before it moves to the inner service
    /// (that costs a copy of the whole request). False: [`decide`](Self::decide)
    /// the request (a refusal is stepped again there; a step that does not
    /// admit writes nothing).
    #[inline]
    pub(crate) fn admit_global(&self) -> bool {
        if !self.plain || self.plain_key.is_some() {
            return false;
        }
        #[allow(clippy::infallible_destructuring_match)]
        let store = match &self.store {
            Store::Memory(store) => store,
            #[cfg(feature = "redis")]
            Store::Redis(_) => return false,
        };
        let admitted = store.admit_plain(0);
        if admitted {
            self.admissions.increment(ADMITTED);
        }
        admitted
    }

    /// Keys, cost and allow-lists, then the store's verdict.
    pub(crate) fn decide<B>(&self, req: &http::Request<B>) -> Decision {
        // One arm without the `redis` feature.
        #[allow(clippy::infallible_destructuring_match)]
        let store = match &self.store {
            Store::Memory(store) => store,
            #[cfg(feature = "redis")]
            Store::Redis(redis) => return self.decide_remote(req, redis),
        };
        if self.plain {
            if let Some(admitted) = self.admit_plain(req, store) {
                return admitted;
            }
        }
        let mut slots = Slots::default();
        match self.decide_with(req, store, &mut slots) {
            Decision::Wait { wait, quota, .. } => Decision::Wait {
                wait,
                quota,
                slots: Some(Box::new(slots)),
            },
            other => other,
        }
    }

    /// A `plain` limit's request, stepped against its quotas at once:
    /// admitted, or `None` for the whole way (a refusal, with its headers;
    /// a missing key), which steps it again. A step that does not admit
    /// takes nothing, so the second step decides as if the first had not
    /// been.
    #[inline]
    fn admit_plain<B>(&self, req: &http::Request<B>, store: &MemoryStore) -> Option<Decision> {
        let fp = match self.plain_key {
            None => 0,
            Some(i) => {
                let info = RequestInfo::new(req, &self.client_ip);
                self.quotas[i]
                    .key
                    .with_key(&info, |k| fingerprint(&self.hasher, k))?
            }
        };
        store.admit_plain(fp).then(|| self.admit())
    }

    fn decide_with<B>(
        &self,
        req: &http::Request<B>,
        store: &MemoryStore,
        slots: &mut Slots,
    ) -> Decision {
        let info = RequestInfo::new(req, &self.client_ip);
        match self.prepare(&info, slots) {
            Some(d) => d,
            None => self.acquire_from(store, slots, true),
        }
    }

    /// Allow-lists, cost and keys; `None` when the store must decide.
    #[inline]
    pub(crate) fn prepare(&self, info: &RequestInfo<'_>, slots: &mut Slots) -> Option<Decision> {
        self.prepare_with(info, slots, |_, _| {})
    }

    /// [`prepare`](Self::prepare), handing `key` each quota's key as it is
    /// extracted, in quota order (a global quota's: empty; an anonymous
    /// one's: [`ANONYMOUS`]): the Redis store names its keys by them
    /// without extracting them again.
    #[inline]
    pub(crate) fn prepare_with(
        &self,
        info: &RequestInfo<'_>,
        slots: &mut Slots,
        mut key: impl FnMut(usize, KeyRef<'_>),
    ) -> Option<Decision> {
        if !self.allow_cidrs.is_empty() {
            // The allow-list names addresses: match the client's own, not
            // the IPv6 network its quota key is masked to.
            let ip = match &self.allow_ip {
                None => info.client_ip(),
                Some(unmasked) => unmasked.resolve(info.headers, info.extensions),
            };
            if ip.is_some_and(|ip| self.cidr_allowed(ip)) {
                return Some(self.allowlisted());
            }
        }
        let cost = match &self.cost {
            None => NonZeroU32::MIN,
            Some(f) => match NonZeroU32::new(f(info)) {
                Some(c) => c,
                None => return Some(self.admit()),
            },
        };
        slots.len = self.quotas.len();
        slots.cost = Some(cost);
        for (i, q) in self.quotas.iter().enumerate() {
            let slot = &mut slots.slots[i];
            if q.key.is_global() {
                slot.active = true;
                key(i, KeyRef::Bytes(b""));
                continue;
            }
            let fp = q.key.with_key(info, |k| {
                key(i, k);
                fingerprint(&self.hasher, k)
            });
            match fp {
                Some(fp) => {
                    if !self.allow_keys.is_empty() && self.allow_keys.binary_search(&fp).is_ok() {
                        return Some(self.allowlisted());
                    }
                    slot.active = true;
                    slot.fp = fp;
                }
                None => match self.missing_key {
                    MissingKey::Anonymous => {
                        slot.active = true;
                        slot.fp = self.anonymous;
                        key(i, KeyRef::Bytes(ANONYMOUS));
                    }
                    MissingKey::Allow => {}
                    MissingKey::Reject => {
                        let rejection =
                            Rejection::new(RejectionKind::InvalidRequest, Arc::clone(&self.name))
                                .with_detail(format!(
                                    "the request has no key for rate limit quota `{}`",
                                    q.name
                                ));
                        if let Some(d) = self.refused(i, RefusalReason::MissingKey, None, rejection)
                        {
                            return Some(d);
                        }
                    }
                },
            }
        }
        None
    }

    /// Every quota's state for `key` (global quotas: for everybody).
    pub(crate) fn peek(&self, key: &Key) -> Option<Vec<QuotaState>> {
        // One arm without the `redis` feature.
        #[allow(clippy::infallible_destructuring_match)]
        let store = match &self.store {
            Store::Memory(store) => store,
            // Reads process memory only.
            #[cfg(feature = "redis")]
            Store::Redis(_) => return None,
        };
        let fp = fingerprint(&self.hasher, key.as_ref());
        let mut slots = Slots {
            len: self.quotas.len(),
            ..Slots::default()
        };
        for (i, q) in self.quotas.iter().enumerate() {
            slots.slots[i].active = true;
            if !q.key.is_global() {
                slots.slots[i].fp = fp;
            }
        }
        store.measure(&mut slots.slots[..slots.len]);
        let states = slots.slots[..slots.len]
            .iter()
            .zip(self.quotas.iter())
            .zip(self.params.iter())
            .map(|((s, info), q)| {
                let m = s.measured;
                let snap = q.snapshot(m.prev, m.now);
                QuotaState {
                    name: Arc::clone(&info.name),
                    limit: q.burst,
                    remaining: snap.remaining,
                    reset: snap.full,
                    window: snap.window,
                    retry_after: q.wait_for(m.prev, m.now, 1),
                }
            })
            .collect();
        Some(states)
    }

    fn cidr_allowed(&self, ip: IpAddr) -> bool {
        self.allow_cidrs.iter().any(|n| n.contains(&ip))
    }

    /// Waiting mode: asks the in-process store again for a request that
    /// waited.
    pub(crate) fn acquire(&self, slots: &mut Slots) -> Decision {
        match &self.store {
            Store::Memory(store) => self.acquire_from(store, slots, true),
            // `RateLimitBuilder::validate` refuses waiting mode with Redis.
            #[cfg(feature = "redis")]
            Store::Redis(_) => unreachable!("no waiting mode with the redis store"),
        }
    }

    /// Asks `store` and turns its verdict into a decision. `may_wait`:
    /// waiting mode may answer [`Decision::Wait`].
    pub(crate) fn acquire_from(
        &self,
        store: &MemoryStore,
        slots: &mut Slots,
        may_wait: bool,
    ) -> Decision {
        let Some(cost) = slots.cost else {
            return Decision::Admit(None);
        };
        if !slots.slots[..slots.len].iter().any(|s| s.active) {
            return self.admit();
        }
        let verdict = store.acquire(&mut slots.slots[..slots.len], cost);
        self.finish(store.params(), slots, verdict, may_wait, cost)
    }

    /// A verdict as a decision; `params`: the GCRA parameters the store
    /// decided with (the Redis fallback's are scaled down).
    #[inline]
    pub(crate) fn finish(
        &self,
        params: &[Gcra],
        slots: &Slots,
        verdict: Verdict,
        may_wait: bool,
        cost: NonZeroU32,
    ) -> Decision {
        match verdict {
            Verdict::Admitted => {
                self.admissions.increment(ADMITTED);
                if self.admitted_headers {
                    let items = self.items(params, slots, false);
                    Decision::Admit(Some(Box::new(
                        self.headers
                            .render(&items[..self.active_count(slots)], None),
                    )))
                } else {
                    Decision::Admit(None)
                }
            }
            Verdict::Exhausted { quota, wait } => {
                if may_wait && !self.dry_run && self.wait.is_some_and(|max| wait <= max) {
                    return Decision::Wait {
                        wait,
                        quota,
                        slots: None,
                    };
                }
                self.refusal(
                    params,
                    slots,
                    quota,
                    RefusalReason::Exhausted,
                    Some(wait),
                    cost,
                    true,
                )
            }
            Verdict::TooCostly { quota } => self.refusal(
                params,
                slots,
                quota,
                RefusalReason::TooCostly,
                None,
                cost,
                true,
            ),
        }
    }

    /// The refusal of a request that waited as long as it may.
    pub(crate) fn refuse_exhausted(&self, slots: &Slots, quota: usize, wait: Duration) -> Decision {
        let cost = slots.cost.unwrap_or(NonZeroU32::MIN);
        self.refusal(
            &self.params,
            slots,
            quota,
            RefusalReason::Exhausted,
            Some(wait),
            cost,
            true,
        )
    }

    fn active_count(&self, slots: &Slots) -> usize {
        slots.slots[..slots.len].iter().filter(|s| s.active).count()
    }

    /// The `RateLimit` items of the active quotas. A refusal reports each
    /// quota as it stays (nothing was taken): what really remains, which
    /// may be above 0 when the request costs more than that (redis-cell's
    /// `CL.THROTTLE` does the same).
    fn items(&self, params: &[Gcra], slots: &Slots, refused: bool) -> [Item; MAX_QUOTAS] {
        let mut items = [Item {
            quota: 0,
            remaining: 0,
            window: Duration::ZERO,
            full: Duration::ZERO,
        }; MAX_QUOTAS];
        let mut n = 0;
        for (i, s) in slots.slots[..slots.len].iter().enumerate() {
            if !s.active {
                continue;
            }
            let m = s.measured;
            // A refusal reports the state as it stays (nothing was taken).
            let tat = if refused { m.prev } else { m.next };
            let snap = params[i].snapshot(tat, m.now);
            items[n] = Item {
                quota: i,
                remaining: snap.remaining,
                window: snap.window,
                full: snap.full,
            };
            n += 1;
        }
        items
    }

    /// Builds, counts and traces a refusal by `quota`. `live`: the slots
    /// hold the quotas' state (else only `RateLimit-Policy` is sent).
    #[allow(clippy::too_many_arguments)]
    #[cold]
    #[inline(never)]
    pub(crate) fn refusal(
        &self,
        params: &[Gcra],
        slots: &Slots,
        quota: usize,
        reason: RefusalReason,
        wait: Option<Duration>,
        cost: NonZeroU32,
        live: bool,
    ) -> Decision {
        let name = &self.quotas[quota].name;
        // Whole milliseconds, rounded up: gRPC's `grpc-retry-pushback-ms`
        // (and the event's `retry_after_ms`) never tell a client to come
        // back before the quota has room (`Retry-After` rounds up anyway).
        let wait = wait.map(|w| Duration::from_millis(crate::util::round::millis_ceil(w)));
        let rejection = Rejection::new(RejectionKind::RateLimited, Arc::clone(&self.name))
            .with_retry_after_opt(wait);
        let mut rejection = match reason {
            RefusalReason::TooCostly => rejection.with_detail(format!(
                "the request costs {cost} but rate limit quota `{name}` allows at most {} at once; it can never be admitted",
                params[quota].burst
            )),
            RefusalReason::StoreUnavailable => {
                rejection.with_detail("the rate limit store is unavailable")
            }
            _ => rejection.with_shared_detail(Arc::clone(&self.quotas[quota].exhausted)),
        };
        let rendered = if live {
            let items = self.items(params, slots, true);
            self.headers
                .render(&items[..self.active_count(slots)], Some(quota))
        } else {
            self.headers.render(&[], Some(quota))
        };
        let headers = rejection.headers_mut();
        headers.reserve(5);
        rendered.apply(headers);
        match self.refused(quota, reason, wait, rejection) {
            Some(d) => d,
            None => Decision::Admit(None),
        }
    }

    /// Counts and traces a refusal; `None` in dry-run mode (admit instead).
    fn refused(
        &self,
        quota: usize,
        reason: RefusalReason,
        wait: Option<Duration>,
        rejection: Rejection,
    ) -> Option<Decision> {
        let q = &self.quotas[quota];
        let retry_after_ms = wait.map_or(0, |w| u64::try_from(w.as_millis()).unwrap_or(u64::MAX));
        tracing::debug!(
            target: "tower_rampart::rate_limit",
            name = %self.name,
            quota = %q.name,
            reason = reason.as_str(),
            retry_after_ms,
            dry_run = self.dry_run,
            "rate limit refused a request"
        );
        if self.dry_run {
            q.dry_run[reason.index()].increment(1);
            self.admissions.increment(ADMITTED);
            None
        } else {
            q.refused[reason.index()].increment(1);
            Some(Decision::Refuse(Box::new(rejection)))
        }
    }
}

fn spawn_sweeper(shared: &Arc<Shared>, every: Duration) {
    let Ok(handle) = tokio::runtime::Handle::try_current() else {
        return;
    };
    let weak = Arc::downgrade(shared);
    handle.spawn(async move {
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        interval.tick().await;
        loop {
            interval.tick().await;
            let Some(shared) = weak.upgrade() else {
                return;
            };
            shared.store.sweep();
        }
    });
}
