//! Named health checks: kind, timeout, criticality and schedule.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// Which probe a check belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Kind {
    /// `/livez`: is the process healthy enough to keep running? Never put
    /// a dependency here (a database outage must not restart every pod).
    Liveness,
    /// `/readyz`: should the pod get traffic? Readiness also runs every
    /// liveness check, like the kube-apiserver's `/readyz`.
    Readiness,
    /// `/startupz`: has the process finished starting? Startup checks latch
    /// once they pass.
    Startup,
}

impl Kind {
    /// The kube-apiserver name of the probe (`livez`, `readyz`, `startupz`),
    /// used in the closing `<probe> check passed` line.
    pub const fn probe_name(self) -> &'static str {
        match self {
            Kind::Liveness => "livez",
            Kind::Readiness => "readyz",
            Kind::Startup => "startupz",
        }
    }

    /// A stable name (`liveness`, `readiness`, `startup`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Kind::Liveness => "liveness",
            Kind::Readiness => "readiness",
            Kind::Startup => "startup",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The health of a check or a probe, as `application/health+json` names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Status {
    /// Healthy.
    Pass,
    /// A non-critical check fails: reported, but the probe still passes.
    Warn,
    /// Unhealthy.
    Fail,
}

impl Status {
    /// `pass`, `warn` or `fail`.
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Pass => "pass",
            Status::Warn => "warn",
            Status::Fail => "fail",
        }
    }

    /// The value of the `rampart_health_check_status` gauge: 1 pass,
    /// 0.5 warn, 0 fail.
    pub const fn as_gauge(self) -> f64 {
        match self {
            Status::Pass => 1.0,
            Status::Warn => 0.5,
            Status::Fail => 0.0,
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a check looks at, as `application/health+json`'s `componentType`
/// names it (draft-inadarei-api-health-check, section 4.2): one of the
/// draft's three words, or a URI naming a type of your own.
///
/// ```
/// use tower_rampart::health::{Check, ComponentType};
///
/// let db = Check::readiness("db", || async { Ok::<(), String>(()) })
///     .component_type(ComponentType::Datastore);
/// let queue = Check::readiness("queue", || async { Ok::<(), String>(()) })
///     .component_type(ComponentType::uri("urn:example:message-queue"));
/// assert_eq!(db.get_component_type().as_str(), "datastore");
/// assert_eq!(queue.get_component_type().as_str(), "urn:example:message-queue");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum ComponentType {
    /// A part of this service (the default): a worker, a cache in memory,
    /// the shutdown state.
    #[default]
    Component,
    /// A database or another store the service reads or writes.
    Datastore,
    /// Another system the service calls (an API, a queue, the dependency a
    /// circuit breaker guards).
    System,
    /// A URI naming a type of your own (`urn:...`, `https://...`). Checked
    /// when the registry is built: it must have a scheme and no spaces,
    /// quotes, backslashes or control characters.
    Uri(Arc<str>),
}

impl ComponentType {
    /// A URI type, checked by
    /// [`HealthRegistryBuilder::build`](super::HealthRegistryBuilder::build).
    pub fn uri(uri: impl Into<Arc<str>>) -> Self {
        Self::Uri(uri.into())
    }

    /// The value written as `componentType`.
    pub fn as_str(&self) -> &str {
        match self {
            Self::Component => "component",
            Self::Datastore => "datastore",
            Self::System => "system",
            Self::Uri(u) => u,
        }
    }

    /// Is it one of the draft's words, or an absolute URI (a scheme, then
    /// printable ASCII without spaces, quotes or backslashes)?
    pub(crate) fn is_valid(&self) -> bool {
        let Self::Uri(u) = self else { return true };
        let Some((scheme, rest)) = u.split_once(':') else {
            return false;
        };
        let mut sb = scheme.bytes();
        sb.next().is_some_and(|b| b.is_ascii_alphabetic())
            && sb.all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
            && !rest.is_empty()
            && rest
                .bytes()
                .all(|b| b.is_ascii_graphic() && !b"\\\"<>`{}|^".contains(&b))
    }
}

impl fmt::Display for ComponentType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The outcome of one run of a check: `Ok(())` or the error text.
pub type CheckResult = Result<(), String>;

pub(crate) type CheckFuture = Pin<Box<dyn Future<Output = CheckResult> + Send + 'static>>;
pub(crate) type AsyncRunner = Arc<dyn Fn() -> CheckFuture + Send + Sync>;
pub(crate) type SyncRunner = Arc<dyn Fn() -> CheckResult + Send + Sync>;

#[derive(Clone)]
pub(crate) enum Runner {
    Async(AsyncRunner),
    Sync(SyncRunner),
}

/// When an async check runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Schedule {
    /// In a background task every `interval`; probes read the cache.
    Background(Duration),
    /// At probe time when the cached result is older than the TTL.
    OnDemand(Duration),
}

/// A named health check.
///
/// - [`Check::new`] (or [`liveness`](Check::liveness),
///   [`readiness`](Check::readiness), [`startup`](Check::startup)): an
///   async function, run in the background every
///   [`interval`](Check::interval) (default 10s) so probes answer from the
///   cached result, or on demand with a [`ttl`](Check::ttl);
/// - [`Check::sync`]: a cheap synchronous function evaluated at probe time
///   with no background task (an atomic read such as a breaker's state).
///
/// Every constructor takes the name first, then the [`Kind`] where it has
/// one, then the function.
///
/// Every run is bounded by [`timeout`](Check::timeout) (default 1s; a check
/// that hangs fails with `timed out after ...`). A
/// [`non_critical`](Check::non_critical) check that fails makes its probe
/// report `warn` and still pass.
///
/// ```
/// use std::time::Duration;
/// use tower_rampart::health::{Check, Kind};
///
/// let db = Check::readiness("db", || async { Ok::<(), std::io::Error>(()) })
///     .timeout(Duration::from_millis(500))
///     .interval(Duration::from_secs(5));
/// let cache = Check::readiness("cache", || async { Err("connection refused") })
///     .non_critical();
/// let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(true));
/// let open = Check::sync("feature-store", Kind::Readiness, move || {
///     if flag.load(std::sync::atomic::Ordering::Relaxed) { Ok(()) } else { Err("closed") }
/// });
/// # let _ = (db, cache, open);
/// ```
#[derive(Clone)]
#[must_use]
pub struct Check {
    pub(crate) name: Arc<str>,
    pub(crate) kind: Kind,
    pub(crate) timeout: Duration,
    pub(crate) critical: bool,
    pub(crate) component_type: ComponentType,
    pub(crate) schedule: Schedule,
    pub(crate) runner: Runner,
}

impl Check {
    /// An async check of `kind`. `check` returns `Ok(())` when healthy; the
    /// error's text is the reason (shown only by `/<probe>/<name>`).
    pub fn new<F, Fut, E>(name: impl Into<Arc<str>>, kind: Kind, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + 'static,
    {
        let runner: AsyncRunner = Arc::new(move || {
            let fut = check();
            Box::pin(async move { fut.await.map_err(|e| e.to_string()) })
        });
        Self {
            name: name.into(),
            kind,
            timeout: Duration::from_secs(1),
            critical: true,
            component_type: ComponentType::Component,
            schedule: Schedule::Background(Duration::from_secs(10)),
            runner: Runner::Async(runner),
        }
    }

    /// An async liveness check (never a dependency).
    pub fn liveness<F, Fut, E>(name: impl Into<Arc<str>>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + 'static,
    {
        Self::new(name, Kind::Liveness, check)
    }

    /// An async readiness check.
    pub fn readiness<F, Fut, E>(name: impl Into<Arc<str>>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + 'static,
    {
        Self::new(name, Kind::Readiness, check)
    }

    /// An async startup check (latches once it passes).
    pub fn startup<F, Fut, E>(name: impl Into<Arc<str>>, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<(), E>> + Send + 'static,
        E: fmt::Display + 'static,
    {
        Self::new(name, Kind::Startup, check)
    }

    /// A synchronous check evaluated at probe time, with no background task
    /// and no cache: for cheap in-memory reads (an atomic flag, a circuit
    /// breaker handle's `state()`). It must not block.
    pub fn sync<F, E>(name: impl Into<Arc<str>>, kind: Kind, check: F) -> Self
    where
        F: Fn() -> Result<(), E> + Send + Sync + 'static,
        E: fmt::Display,
    {
        let runner: SyncRunner = Arc::new(move || check().map_err(|e| e.to_string()));
        Self {
            name: name.into(),
            kind,
            timeout: Duration::from_secs(1),
            critical: true,
            component_type: ComponentType::Component,
            schedule: Schedule::OnDemand(Duration::ZERO),
            runner: Runner::Sync(runner),
        }
    }

    /// A readiness check that follows a circuit breaker (opt-in): it fails
    /// while the breaker is open or forced open, and passes while it is
    /// closed, half-open (trial calls must be able to reach this replica to
    /// close the circuit), disabled or metrics-only. An open breaker whose
    /// open duration is over passes too: by default it only starts
    /// half-open on the next call, and an unready replica gets no calls, so
    /// failing there would keep it out of rotation for good. It is named after the
    /// breaker, reads one atomic per probe, and is critical unless made
    /// [`non_critical`](Self::non_critical) (then an open breaker reports
    /// `warn` and the service stays ready).
    ///
    /// Make a breaker critical only when this replica is useless without
    /// the dependency *and* other replicas may still reach it: if every
    /// replica's breaker guards the same shared dependency, they all turn
    /// unready together and the load balancer has nowhere to send traffic,
    /// where fast 503s from the breaker would have served better.
    ///
    /// ```
    /// use tower_rampart::circuit_breaker::CircuitBreakerLayer;
    /// use tower_rampart::health::{Check, HealthRegistry, Kind};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let breaker = CircuitBreakerLayer::builder().name("payments").build()?;
    /// let registry = HealthRegistry::builder()
    ///     .check(Check::circuit_breaker(&breaker.handle()))
    ///     .build()?;
    /// assert!(registry.probe(Kind::Readiness, &[]).await.passed());
    /// breaker.handle().force_open();
    /// let report = registry.probe(Kind::Readiness, &[]).await;
    /// assert!(!report.passed());
    /// assert_eq!(report.to_text(true), "[-]payments failed: reason withheld\nreadyz check failed\n");
    /// # Ok(())
    /// # }
    /// ```
    pub fn circuit_breaker(handle: &crate::circuit_breaker::CircuitBreakerHandle) -> Self {
        use crate::circuit_breaker::CircuitState;
        let handle = handle.clone();
        let name: Arc<str> = Arc::from(handle.name());
        let check = Self::sync(name, Kind::Readiness, move || match handle.state() {
            CircuitState::Open => match handle.open_remaining() {
                // The next call is a trial: let it come.
                Some(left) if left.is_zero() => Ok(()),
                Some(left) => Err(format!("circuit open, half-open in {}ms", left.as_millis())),
                None => Err("circuit open".to_owned()),
            },
            CircuitState::ForcedOpen => Err("circuit forced open".to_owned()),
            CircuitState::Closed
            | CircuitState::HalfOpen
            | CircuitState::Disabled
            | CircuitState::MetricsOnly => Ok(()),
        });
        check.component_type(ComponentType::System)
    }

    /// Time limit of one run (default 1s). Ignored by [`sync`](Self::sync)
    /// checks.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Run in the background every `interval` (the default, every 10s).
    /// No effect on [`sync`](Self::sync) checks.
    pub fn interval(mut self, interval: Duration) -> Self {
        if let Runner::Async(_) = self.runner {
            self.schedule = Schedule::Background(interval);
        }
        self
    }

    /// Run on demand instead: at probe time, when the cached result is
    /// older than `ttl` (one run at a time; concurrent probes wait for it,
    /// bounded by the timeout). No effect on [`sync`](Self::sync) checks.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        if let Runner::Async(_) = self.runner {
            self.schedule = Schedule::OnDemand(ttl);
        }
        self
    }

    /// A failing non-critical check reports `warn` and keeps the probe
    /// passing.
    pub fn non_critical(mut self) -> Self {
        self.critical = false;
        self
    }

    /// What the check looks at, reported as `componentType` in
    /// `application/health+json` (default [`ComponentType::Component`];
    /// [`circuit_breaker`](Self::circuit_breaker) checks are
    /// [`ComponentType::System`]).
    pub fn component_type(mut self, component_type: ComponentType) -> Self {
        self.component_type = component_type;
        self
    }

    /// Sets criticality explicitly (default true).
    pub fn critical(mut self, critical: bool) -> Self {
        self.critical = critical;
        self
    }

    /// The check's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The check's kind.
    pub fn kind(&self) -> Kind {
        self.kind
    }

    /// Is it critical?
    pub fn is_critical(&self) -> bool {
        self.critical
    }

    /// What the check looks at (its `componentType`).
    pub fn get_component_type(&self) -> &ComponentType {
        &self.component_type
    }

    pub(crate) fn is_background(&self) -> bool {
        matches!(
            (&self.runner, self.schedule),
            (Runner::Async(_), Schedule::Background(_))
        )
    }
}

impl fmt::Debug for Check {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let schedule = match (&self.runner, self.schedule) {
            (Runner::Sync(_), _) => "sync".to_owned(),
            (_, Schedule::Background(i)) => format!("every {i:?}"),
            (_, Schedule::OnDemand(t)) => format!("on demand, ttl {t:?}"),
        };
        f.debug_struct("Check")
            .field("name", &self.name)
            .field("kind", &self.kind)
            .field("timeout", &self.timeout)
            .field("critical", &self.critical)
            .field("component_type", &self.component_type)
            .field("schedule", &schedule)
            .finish()
    }
}
