// Past ~500 lines: the registry's builder, cache and probe evaluation
// share one private state; about 50 lines are doc comments.
//! The check registry: cached results, background runs, probe evaluation.

use std::collections::HashSet;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;
use std::time::{Duration, SystemTime};

use metrics::{Gauge, Histogram};
use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::check::{Check, CheckResult, Kind, Runner, Schedule, Status};
use super::report::{CheckReport, ProbeReport};
use crate::ConfigError;
use crate::shutdown::Shutdown;

/// The last result of a check.
#[derive(Debug, Clone, Default)]
struct Cached {
    /// `None` until the first run.
    result: Option<Result<(), Arc<str>>>,
    at: Option<Instant>,
    wall: Option<SystemTime>,
    duration: Duration,
    latched: bool,
}

pub(crate) struct Entry {
    pub(crate) check: Check,
    cache: Mutex<Cached>,
    refresh: tokio::sync::Mutex<()>,
    status_gauge: Gauge,
    duration_hist: Histogram,
}

impl Entry {
    fn cached(&self) -> Cached {
        crate::util::lock(&self.cache).clone()
    }

    fn status_of(&self, result: &Result<(), Arc<str>>) -> Status {
        match result {
            Ok(()) => Status::Pass,
            Err(_) if self.check.critical => Status::Fail,
            Err(_) => Status::Warn,
        }
    }

    /// Stores a result; returns true if pass/fail changed.
    fn store(&self, result: CheckResult, duration: Duration) -> bool {
        let result = result.map_err(Arc::<str>::from);
        let status = self.status_of(&result);
        self.status_gauge.set(status.as_gauge());
        self.duration_hist.record(duration.as_secs_f64());
        let mut c = crate::util::lock(&self.cache);
        let changed = c.result.as_ref().map(Result::is_ok) != Some(result.is_ok());
        if result.is_ok() && self.check.kind == Kind::Startup {
            c.latched = true;
        }
        if changed {
            tracing::info!(
                target: "tower_rampart::health",
                check = %self.check.name,
                kind = self.check.kind.as_str(),
                status = status.as_str(),
                error = result.as_ref().err().map(|e| &**e),
                "health check changed"
            );
        }
        c.result = Some(result);
        c.at = Some(Instant::now());
        c.wall = Some(SystemTime::now());
        c.duration = duration;
        changed
    }

    /// Runs an async check once, bounded by its timeout, in its own task (a
    /// panic fails the check instead of killing the caller).
    async fn run_async(&self) -> bool {
        let Runner::Async(run) = &self.check.runner else {
            return false;
        };
        let start = Instant::now();
        let mut task = tokio::spawn(run());
        let result = match tokio::time::timeout(self.check.timeout, &mut task).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) if e.is_panic() => Err("check panicked".to_owned()),
            Ok(Err(_)) => Err("check cancelled".to_owned()),
            Err(_) => {
                task.abort();
                Err(format!("timed out after {:?}", self.check.timeout))
            }
        };
        self.store(result, start.elapsed())
    }

    /// The check's current state when it can be had without waiting: the
    /// cache (background checks, fresh on-demand ones, excluded checks) or
    /// a synchronous run. `None` when an on-demand check is stale and must
    /// run first.
    fn ready(&self, excluded: bool) -> Option<Cached> {
        if excluded {
            return Some(self.cached());
        }
        match (&self.check.runner, self.check.schedule) {
            (Runner::Sync(run), _) => {
                let c = self.cached();
                if c.latched {
                    return Some(c);
                }
                let start = Instant::now();
                let result = run();
                self.store(result, start.elapsed());
                Some(self.cached())
            }
            (Runner::Async(_), Schedule::OnDemand(ttl)) => {
                let c = self.cached();
                Self::fresh(&c, ttl).then_some(c)
            }
            (Runner::Async(_), Schedule::Background(_)) => Some(self.cached()),
        }
    }

    fn fresh(c: &Cached, ttl: Duration) -> bool {
        c.latched || c.at.is_some_and(|at| at.elapsed() < ttl)
    }

    /// Runs a stale on-demand check (one run at a time: a concurrent
    /// caller waits for the run in progress, which its timeout bounds) and
    /// returns the new state.
    async fn refreshed(&self) -> Cached {
        let _one_at_a_time = self.refresh.lock().await;
        let c = self.cached();
        if let Schedule::OnDemand(ttl) = self.check.schedule {
            if Self::fresh(&c, ttl) {
                return c;
            }
        }
        self.run_async().await;
        self.cached()
    }

    async fn report(&self, excluded: bool) -> CheckReport {
        let c = match self.ready(excluded) {
            Some(c) => c,
            None => self.refreshed().await,
        };
        self.report_from(&c, excluded)
    }

    fn report_from(&self, c: &Cached, excluded: bool) -> CheckReport {
        let (status, error) = match &c.result {
            None => (
                if self.check.critical {
                    Status::Fail
                } else {
                    Status::Warn
                },
                Some(Arc::from("not checked yet")),
            ),
            Some(r) => (self.status_of(r), r.clone().err()),
        };
        CheckReport {
            name: Arc::clone(&self.check.name),
            kind: self.check.kind,
            status,
            critical: self.check.critical,
            component_type: self.check.component_type.clone(),
            excluded,
            error,
            duration: c.duration,
            checked_at: c.wall,
        }
    }
}

/// Polls every future until all are done, concurrently on this task, and
/// returns their outputs in order. Small and dependency-free: probes join
/// a handful of check runs.
async fn join_all<F: Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, out) in futures.iter_mut().zip(outputs.iter_mut()) {
            if out.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *out = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outputs.into_iter().flatten().collect()
}

pub(crate) struct RegistryInner {
    pub(crate) name: Arc<str>,
    pub(crate) entries: Vec<Arc<Entry>>,
    pub(crate) shutdown: Option<Shutdown>,
    /// Bumped whenever a background check flips between pass and fail.
    pub(crate) changed: Arc<watch::Sender<u64>>,
    tasks: Vec<AbortHandle>,
}

impl Drop for RegistryInner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// The health check registry: named checks, their cached results, and the
/// probes' verdicts. Cheap to clone (one `Arc`); background checks stop when
/// the last clone is dropped.
///
/// See the [module docs](crate::health).
#[derive(Clone)]
pub struct HealthRegistry {
    pub(crate) inner: Arc<RegistryInner>,
}

impl fmt::Debug for HealthRegistry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthRegistry")
            .field("name", &self.inner.name)
            .field(
                "checks",
                &self
                    .inner
                    .entries
                    .iter()
                    .map(|e| &e.check)
                    .collect::<Vec<_>>(),
            )
            .finish_non_exhaustive()
    }
}

/// Builds a [`HealthRegistry`].
#[derive(Debug, Default)]
#[must_use]
pub struct HealthRegistryBuilder {
    name: Option<String>,
    checks: Vec<Check>,
    shutdown: Option<Shutdown>,
}

impl HealthRegistryBuilder {
    /// The name that labels metrics (default `health`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// Adds a check. Names are unique, non-empty and made of ASCII letters,
    /// digits and `-_.:`.
    pub fn check(mut self, check: Check) -> Self {
        self.checks.push(check);
        self
    }

    /// Adds the built-in readiness check `shutdown`, which fails as soon as
    /// `shutdown` leaves [`Phase::Running`](crate::shutdown::Phase::Running).
    pub fn shutdown(mut self, shutdown: &Shutdown) -> Self {
        self.shutdown = Some(shutdown.clone());
        self
    }

    /// Validates the checks and starts the background ones (which needs a
    /// tokio runtime).
    pub fn build(self) -> Result<HealthRegistry, ConfigError> {
        let name: Arc<str> = Arc::from(self.name.as_deref().unwrap_or("health"));
        if name.is_empty() {
            return Err(ConfigError::new(
                "name",
                crate::config_util::MUST_NOT_BE_EMPTY,
            ));
        }
        let mut checks = self.checks;
        if let Some(sd) = &self.shutdown {
            let sd = sd.clone();
            checks.insert(
                0,
                Check::sync("shutdown", Kind::Readiness, move || {
                    if sd.is_shutting_down() {
                        Err(format!("shutting down ({})", sd.phase()))
                    } else {
                        Ok(())
                    }
                }),
            );
        }
        let mut seen = HashSet::new();
        for (i, c) in checks.iter().enumerate() {
            let at = format!("checks[{i}]");
            if !valid_check_name(&c.name) {
                return Err(ConfigError::new(
                    "name",
                    "must be non-empty ASCII letters, digits and `-_.:`",
                )
                .at(&at));
            }
            if !seen.insert(Arc::clone(&c.name)) {
                return Err(
                    ConfigError::new("name", format!("duplicate check name `{}`", c.name)).at(&at),
                );
            }
            if !c.component_type.is_valid() {
                return Err(ConfigError::new(
                    "component_type",
                    "must be `component`, `datastore`, `system` or an absolute URI without spaces or quotes",
                )
                .at(&at));
            }
            if c.timeout.is_zero() {
                return Err(
                    ConfigError::new("timeout", crate::config_util::MUST_BE_POSITIVE).at(&at),
                );
            }
            if let (Runner::Async(_), Schedule::Background(i)) = (&c.runner, c.schedule) {
                if i.is_zero() {
                    return Err(
                        ConfigError::new("interval", crate::config_util::MUST_BE_POSITIVE).at(&at),
                    );
                }
            }
        }
        let needs_runtime = checks.iter().any(Check::is_background);
        let handle = match tokio::runtime::Handle::try_current() {
            Ok(h) => Some(h),
            Err(_) if needs_runtime => {
                return Err(ConfigError::new(
                    "runtime",
                    "background checks must be started inside a tokio runtime",
                ));
            }
            Err(_) => None,
        };
        crate::metrics_help::describe(super::METRICS);
        let label = name.to_string();
        let entries: Vec<Arc<Entry>> = checks
            .into_iter()
            .map(|check| {
                let labels = [
                    ("name", label.clone()),
                    ("check", check.name.to_string()),
                    ("kind", check.kind.as_str().to_owned()),
                ];
                Arc::new(Entry {
                    status_gauge: metrics::gauge!("rampart_health_check_status", &labels),
                    duration_hist: metrics::histogram!(
                        "rampart_health_check_duration_seconds",
                        &labels
                    ),
                    check,
                    cache: Mutex::new(Cached::default()),
                    refresh: tokio::sync::Mutex::new(()),
                })
            })
            .collect();
        let changed = Arc::new(watch::channel(0u64).0);
        let mut tasks = Vec::new();
        if let Some(handle) = handle {
            for e in entries.iter().filter(|e| e.check.is_background()) {
                let task = handle.spawn(background(Arc::downgrade(e), Arc::clone(&changed)));
                tasks.push(task.abort_handle());
            }
        }
        Ok(HealthRegistry {
            inner: Arc::new(RegistryInner {
                name,
                entries,
                shutdown: self.shutdown,
                changed,
                tasks,
            }),
        })
    }
}

async fn background(entry: Weak<Entry>, changed: Arc<watch::Sender<u64>>) {
    loop {
        let Some(e) = entry.upgrade() else { return };
        if e.run_async().await {
            changed.send_modify(|v| *v = v.wrapping_add(1));
        }
        let Schedule::Background(interval) = e.check.schedule else {
            return;
        };
        if e.cached().latched {
            return;
        }
        drop(e);
        tokio::time::sleep(interval).await;
    }
}

impl HealthRegistry {
    /// A builder.
    pub fn builder() -> HealthRegistryBuilder {
        HealthRegistryBuilder::default()
    }

    /// The registry's name.
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The shutdown coordinator behind the built-in `shutdown` check.
    pub fn shutdown_handle(&self) -> Option<&Shutdown> {
        self.inner.shutdown.as_ref()
    }

    /// The names of the checks a probe runs, in registration order.
    pub fn check_names(&self, probe: Kind) -> Vec<&str> {
        self.inner
            .entries
            .iter()
            .filter(|e| in_probe(probe, e.check.kind))
            .map(|e| &*e.check.name)
            .collect()
    }

    /// Evaluates a probe: every check of `probe` (readiness includes the
    /// liveness checks) from its cached result (sync and stale on-demand
    /// checks run now), minus `exclude`. Stale on-demand checks run
    /// concurrently, each bounded by its own timeout, so the probe takes as
    /// long as the slowest of them, not their sum.
    pub async fn probe(&self, probe: Kind, exclude: &[&str]) -> ProbeReport {
        let mut slots: Vec<Option<CheckReport>> = Vec::new();
        let mut stale = Vec::new();
        for e in self
            .inner
            .entries
            .iter()
            .filter(|e| in_probe(probe, e.check.kind))
        {
            let excluded = exclude.contains(&&*e.check.name);
            match e.ready(excluded) {
                Some(c) => slots.push(Some(e.report_from(&c, excluded))),
                None => {
                    // Filled in below, once the run is done.
                    stale.push((slots.len(), e));
                    slots.push(None);
                }
            }
        }
        if !stale.is_empty() {
            let runs = stale.iter().map(|(_, e)| e.refreshed());
            let states = join_all(runs.collect()).await;
            for ((i, e), c) in stale.iter().zip(states) {
                slots[*i] = Some(e.report_from(&c, false));
            }
        }
        let checks: Vec<CheckReport> = slots.into_iter().flatten().collect();
        let status = checks
            .iter()
            .filter(|c| !c.excluded)
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Pass);
        let mut unknown: Vec<String> = Vec::new();
        for x in exclude {
            if !checks.iter().any(|c| &*c.name == *x) && !unknown.iter().any(|u| u == x) {
                unknown.push((*x).to_owned());
            }
        }
        ProbeReport {
            probe,
            status,
            checks,
            unknown_excludes: unknown,
        }
    }

    /// Evaluates one check of `probe` by name (`None` if the probe has no
    /// such check). Its error text is real, unlike the probe listing.
    pub async fn check(&self, probe: Kind, name: &str) -> Option<CheckReport> {
        let e = self
            .inner
            .entries
            .iter()
            .find(|e| in_probe(probe, e.check.kind) && &*e.check.name == name)?;
        Some(e.report(false).await)
    }

    /// Runs every async check now (background ones included), all at once,
    /// and waits for them: useful at startup and in tests.
    pub async fn refresh(&self) {
        let runs = self
            .inner
            .entries
            .iter()
            .filter(|e| matches!(e.check.runner, Runner::Async(_)) && !e.cached().latched)
            .map(|e| e.run_async());
        let changed = join_all(runs.collect()).await;
        if changed.into_iter().any(|c| c) {
            self.inner.changed.send_modify(|v| *v = v.wrapping_add(1));
        }
    }

    /// Is there a check named `name` (of any kind)?
    pub fn has_check(&self, name: &str) -> bool {
        self.inner.entries.iter().any(|e| &*e.check.name == name)
    }

    #[cfg(feature = "tonic")]
    pub(crate) async fn report_by_name(&self, name: &str) -> Option<CheckReport> {
        let e = self.inner.entries.iter().find(|e| &*e.check.name == name)?;
        Some(e.report(false).await)
    }

    /// A receiver bumped whenever a background check flips between pass and
    /// fail.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.changed.subscribe()
    }
}

/// Does `probe` run checks of `kind`?
fn in_probe(probe: Kind, kind: Kind) -> bool {
    probe == kind || (probe == Kind::Readiness && kind == Kind::Liveness)
}

/// Health check names: ASCII letters, digits and `-_.:`, not empty (they
/// appear in probe paths such as `/readyz/<name>`).
pub(crate) fn valid_check_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.:".contains(&b))
}
