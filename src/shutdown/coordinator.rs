//! The shutdown coordinator: triggers, phases, drain, hooks and the report.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use metrics::{Gauge, Histogram};
use tokio::sync::watch;
use tokio::time::Instant;

use super::config::ShutdownConfig;
use super::layer::DrainLayer;
use super::state::State;
use crate::ConfigError;

/// Where the process is in its shutdown.
///
/// Phases only move forward: `Running` -> `ShutdownRequested` -> `Draining`
/// -> `Done`. Observe them with [`Shutdown::phase`] (an atomic read) or
/// [`Shutdown::subscribe`] (a `tokio::sync::watch` channel).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum Phase {
    /// Serving normally.
    Running = 0,
    /// Shutdown was requested: readiness fails, requests are still served
    /// (HTTP/1 answers carry `Connection: close`) for `shutdown_delay`.
    ShutdownRequested = 1,
    /// The listener stops accepting, new requests get 503 / UNAVAILABLE,
    /// in-flight requests finish (up to `drain_timeout`, then are aborted).
    Draining = 2,
    /// Drain and cleanup hooks are over; the report is available.
    Done = 3,
}

impl Phase {
    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            0 => Phase::Running,
            1 => Phase::ShutdownRequested,
            2 => Phase::Draining,
            _ => Phase::Done,
        }
    }

    /// A stable snake_case name (`running`, `shutdown_requested`,
    /// `draining`, `done`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Phase::Running => "running",
            Phase::ShutdownRequested => "shutdown_requested",
            Phase::Draining => "draining",
            Phase::Done => "done",
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What started the shutdown.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Trigger {
    /// `SIGTERM` (what Kubernetes sends).
    Sigterm,
    /// `SIGINT` (Ctrl-C); skips `shutdown_delay` unless `sigint_delay` says
    /// otherwise.
    Sigint,
    /// [`Shutdown::trigger`].
    Programmatic,
}

impl Trigger {
    /// A stable name (`sigterm`, `sigint`, `programmatic`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Trigger::Sigterm => "sigterm",
            Trigger::Sigint => "sigint",
            Trigger::Programmatic => "programmatic",
        }
    }
}

impl fmt::Display for Trigger {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one cleanup hook ended.
#[non_exhaustive]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookOutcome {
    /// It finished in time.
    Completed,
    /// It ran out of time and was cancelled.
    TimedOut,
    /// It panicked.
    Panicked,
}

/// The record of one cleanup hook.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HookReport {
    /// The name it was registered with.
    pub name: String,
    /// How it ended.
    pub outcome: HookOutcome,
    /// How long it ran.
    pub duration: Duration,
}

/// What a shutdown did: returned by [`Shutdown::done`] and emitted as the
/// `shutdown complete` tracing event.
#[non_exhaustive]
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShutdownReport {
    /// What started it.
    pub trigger: Trigger,
    /// Time spent in [`Phase::ShutdownRequested`] (the shutdown delay).
    pub delay: Duration,
    /// Time spent in [`Phase::Draining`], abort included.
    pub drain: Duration,
    /// Time spent running cleanup hooks.
    pub hooks_duration: Duration,
    /// From the trigger to [`Phase::Done`].
    pub total: Duration,
    /// Requests in flight when draining began.
    pub in_flight_at_drain: usize,
    /// Requests that completed while draining: those in flight when it
    /// began, and those the `serve` loop answered on
    /// connections it had accepted before the listener closed.
    pub finished: u64,
    /// Requests cut off at the drain deadline.
    pub aborted: u64,
    /// Requests still counted in flight when the coordinator gave up
    /// waiting for the aborted ones (normally 0).
    pub left_in_flight: usize,
    /// Did the drain hit `drain_timeout`?
    pub drain_timed_out: bool,
    /// Every cleanup hook, in the order they ran.
    pub hooks: Vec<HookReport>,
}

type HookFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

struct Hook {
    name: String,
    timeout: Duration,
    future: HookFuture,
}

pub(crate) struct Inner {
    pub(crate) state: Arc<State>,
    config: ShutdownConfig,
    phase_tx: watch::Sender<Phase>,
    trigger_tx: watch::Sender<Option<(Trigger, Instant)>>,
    report_tx: watch::Sender<Option<ShutdownReport>>,
    hooks: Mutex<Option<Vec<Hook>>>,
    phase_gauge: Gauge,
    drain_histogram: Histogram,
}

/// The shutdown coordinator: built once, cheap to clone (one `Arc`).
///
/// Building it spawns the task that runs the shutdown sequence and, unless
/// disabled, installs `SIGTERM` and `SIGINT` handlers, so it must be built
/// inside a tokio runtime. See the [module docs](crate::shutdown).
#[derive(Clone)]
pub struct Shutdown {
    pub(crate) inner: Arc<Inner>,
}

impl fmt::Debug for Shutdown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shutdown")
            .field("name", &self.inner.state.name)
            .field("phase", &self.phase())
            .field("in_flight", &self.in_flight())
            .finish_non_exhaustive()
    }
}

/// Builds a [`Shutdown`] coordinator; every setting is validated by
/// [`build`](Self::build).
#[derive(Debug, Clone, Default)]
#[must_use]
pub struct ShutdownBuilder {
    config: ShutdownConfig,
}

impl ShutdownBuilder {
    /// The name that labels metrics and events (default `shutdown`).
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.config.name = name.into();
        self
    }

    /// Time between the trigger and draining, during which requests are
    /// still served while readiness fails (default 5s; 0 allowed).
    pub fn shutdown_delay(mut self, delay: Duration) -> Self {
        self.config.shutdown_delay = delay;
        self
    }

    /// The delay used instead of `shutdown_delay` when `SIGINT` started the
    /// shutdown (default 0: Ctrl-C in a terminal does not wait).
    pub fn sigint_delay(mut self, delay: Duration) -> Self {
        self.config.sigint_delay = delay;
        self
    }

    /// How long in-flight requests may take to finish once draining
    /// (default 20s; must be > 0).
    pub fn drain_timeout(mut self, timeout: Duration) -> Self {
        self.config.drain_timeout = timeout;
        self
    }

    /// After aborting what is left, how long to wait for the aborted
    /// requests to unwind (default 1s).
    pub fn abort_grace(mut self, grace: Duration) -> Self {
        self.config.abort_grace = grace;
        self
    }

    /// The default time limit of each cleanup hook (default 5s; must be > 0).
    pub fn hook_timeout(mut self, timeout: Duration) -> Self {
        self.config.hook_timeout = timeout;
        self
    }

    /// `Retry-After` of requests refused while draining (default 1s).
    pub fn retry_after(mut self, retry_after: Duration) -> Self {
        self.config.retry_after = retry_after;
        self
    }

    /// Listen to `SIGTERM` and `SIGINT` (default true). Disable it in tests
    /// and when the program handles signals itself (then call
    /// [`Shutdown::trigger`]).
    pub fn signals(mut self, enabled: bool) -> Self {
        self.config.signals = enabled;
        self
    }

    /// The process exit code used when a second signal forces an immediate
    /// exit (default 1; [`build`](Self::build) refuses a code outside
    /// `0..=255`).
    pub fn force_exit_code(mut self, code: i32) -> Self {
        self.config.force_exit_code = code;
        self
    }

    /// Validates the settings, installs the signal handlers and spawns the
    /// coordinator task. Must be called inside a tokio runtime.
    pub fn build(self) -> Result<Shutdown, ConfigError> {
        Shutdown::from_config(self.config)
    }
}

impl Shutdown {
    /// A builder with the defaults.
    pub fn builder() -> ShutdownBuilder {
        ShutdownBuilder::default()
    }

    pub(crate) fn from_config(config: ShutdownConfig) -> Result<Self, ConfigError> {
        config.validate()?;
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            ConfigError::new(
                "runtime",
                "the shutdown coordinator must be built inside a tokio runtime",
            )
        })?;
        let name: Arc<str> = Arc::from(config.name.as_str());
        let state = Arc::new(State::new(Arc::clone(&name), config.retry_after));
        let signals = if config.signals {
            Signals::install()
        } else {
            Signals::none()
        };
        crate::metrics_help::describe();
        let label = config.name.clone();
        let inner = Arc::new(Inner {
            state,
            phase_tx: watch::channel(Phase::Running).0,
            trigger_tx: watch::channel(None).0,
            report_tx: watch::channel(None).0,
            hooks: Mutex::new(Some(Vec::new())),
            phase_gauge: metrics::gauge!("rampart_shutdown_phase", "name" => label.clone()),
            drain_histogram: metrics::histogram!("rampart_drain_duration_seconds", "name" => label),
            config,
        });
        inner.phase_gauge.set(0.0);
        handle.spawn(drive(Arc::clone(&inner), signals));
        Ok(Self { inner })
    }

    /// The state shared with the drain layers and the `serve` loops.
    #[cfg_attr(not(feature = "serve"), allow(dead_code))]
    pub(crate) fn state(&self) -> &Arc<State> {
        &self.inner.state
    }

    /// The settings it was built with.
    #[cfg_attr(not(feature = "serve"), allow(dead_code))]
    pub(crate) fn config(&self) -> &ShutdownConfig {
        &self.inner.config
    }

    /// The name that labels metrics and events.
    pub fn name(&self) -> &str {
        &self.inner.state.name
    }

    /// The current phase (an atomic read).
    #[inline]
    pub fn phase(&self) -> Phase {
        self.inner.state.phase()
    }

    /// Has shutdown started (any phase but [`Phase::Running`])?
    #[inline]
    pub fn is_shutting_down(&self) -> bool {
        self.phase() != Phase::Running
    }

    /// A receiver of every phase change.
    pub fn subscribe(&self) -> watch::Receiver<Phase> {
        self.inner.phase_tx.subscribe()
    }

    /// Requests in flight through the drain layers of this coordinator.
    pub fn in_flight(&self) -> usize {
        self.inner.state.in_flight()
    }

    /// Starts the shutdown programmatically. Returns false if it had already
    /// started.
    pub fn trigger(&self) -> bool {
        self.inner.request(Trigger::Programmatic)
    }

    /// What started the shutdown, once started.
    pub fn trigger_cause(&self) -> Option<Trigger> {
        self.inner.trigger_tx.borrow().map(|(t, _)| t)
    }

    /// Resolves once shutdown was requested.
    pub fn requested(&self) -> impl Future<Output = ()> + Send + 'static {
        self.reached(Phase::ShutdownRequested)
    }

    /// Resolves when draining starts. The crate's `serve` loop follows it
    /// by itself; hand it to axum's `serve(..).with_graceful_shutdown(..)`
    /// or tonic's `serve_with_shutdown(..)` so their listener stops
    /// accepting then.
    pub fn draining(&self) -> impl Future<Output = ()> + Send + 'static {
        self.reached(Phase::Draining)
    }

    fn reached(&self, phase: Phase) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.subscribe();
        async move {
            // The sender lives as long as the coordinator task; if it is
            // gone, nothing will ever change, and resolving is the safe end.
            let _ = rx.wait_for(|p| *p >= phase).await;
        }
    }

    /// Ends `stream` when draining starts: items flow until then, and the
    /// stream ends (`None`) the moment [`draining`](Self::draining)
    /// resolves, so a long-lived response (gRPC server streaming,
    /// server-sent events) finishes cleanly instead of holding the drain
    /// until its deadline and being aborted.
    ///
    /// ```
    /// use std::future::poll_fn;
    /// use std::pin::pin;
    /// use std::time::Duration;
    /// use futures_core::Stream;
    /// use tower_rampart::shutdown::Shutdown;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let shutdown = Shutdown::builder()
    ///     .shutdown_delay(Duration::ZERO)
    ///     .signals(false)
    ///     .build()?;
    /// // In a tonic handler: `Ok(Response::new(shutdown.until_draining(updates)))`.
    /// let mut updates = pin!(shutdown.until_draining(ticks()));
    /// assert_eq!(poll_fn(|cx| updates.as_mut().poll_next(cx)).await, Some(1));
    /// shutdown.trigger();
    /// shutdown.draining().await;
    /// assert_eq!(poll_fn(|cx| updates.as_mut().poll_next(cx)).await, None);
    /// # Ok(())
    /// # }
    /// # fn ticks() -> impl Stream<Item = u32> {
    /// #     struct Ticks(u32);
    /// #     impl Stream for Ticks {
    /// #         type Item = u32;
    /// #         fn poll_next(mut self: std::pin::Pin<&mut Self>, _: &mut std::task::Context<'_>) -> std::task::Poll<Option<u32>> {
    /// #             self.0 += 1;
    /// #             std::task::Poll::Ready(Some(self.0))
    /// #         }
    /// #     }
    /// #     Ticks(0)
    /// # }
    /// ```
    pub fn until_draining<S>(&self, stream: S) -> super::UntilDraining<S>
    where
        S: futures_core::Stream,
    {
        super::UntilDraining::new(stream, self)
    }

    /// Resolves with the report once the shutdown is [`Phase::Done`].
    pub fn done(&self) -> impl Future<Output = ShutdownReport> + Send + 'static {
        let mut rx = self.inner.report_tx.subscribe();
        async move {
            let report = match rx.wait_for(Option::is_some).await {
                Ok(r) => r.clone(),
                Err(_) => None,
            };
            match report {
                Some(r) => r,
                None => std::future::pending().await,
            }
        }
    }

    /// For servers other than the crate's own `serve` loop (which needs
    /// none of this): runs a server until it ends **or** the shutdown is
    /// done, whichever comes first, and returns the report: the process exits in bounded
    /// time (delay + drain + abort grace + hooks) even when a connection is
    /// stuck (a client that stopped reading holds axum's and tonic's
    /// graceful shutdown forever). `server` is the server future with its
    /// graceful shutdown wired to [`draining`](Self::draining). If it fails,
    /// the error is returned at once; if it ends by itself while still
    /// running, a shutdown is triggered so the hooks run.
    ///
    /// ```no_run
    /// # async fn f(listener: tokio::net::TcpListener, app: axum::Router) -> std::io::Result<()> {
    /// # let shutdown = tower_rampart::shutdown::Shutdown::builder().build().unwrap();
    /// let server = axum::serve(listener, app).with_graceful_shutdown(shutdown.draining());
    /// let report = shutdown.run_server(server).await?;
    /// # let _ = report;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn run_server<F, E>(&self, server: F) -> Result<ShutdownReport, E>
    where
        F: std::future::IntoFuture<Output = Result<(), E>>,
    {
        let done = self.done();
        tokio::pin!(done);
        tokio::select! {
            res = server.into_future() => {
                res?;
                self.trigger();
                Ok(done.await)
            }
            report = &mut done => Ok(report),
        }
    }

    /// The report, once [`Phase::Done`].
    pub fn report(&self) -> Option<ShutdownReport> {
        self.inner.report_tx.borrow().clone()
    }

    /// Registers a cleanup hook, run after the drain and bounded by
    /// `hook_timeout`. Hooks run one after the other, in registration
    /// order. Returns false (and drops the future) if hooks already ran.
    pub fn on_shutdown<F>(&self, name: impl Into<String>, hook: F) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        self.on_shutdown_with_timeout(name, self.inner.config.hook_timeout, hook)
    }

    /// Like [`on_shutdown`](Self::on_shutdown) with its own time limit.
    pub fn on_shutdown_with_timeout<F>(
        &self,
        name: impl Into<String>,
        timeout: Duration,
        hook: F,
    ) -> bool
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let mut hooks = self
            .inner
            .hooks
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        match hooks.as_mut() {
            Some(list) => {
                list.push(Hook {
                    name: name.into(),
                    timeout,
                    future: Box::pin(hook),
                });
                true
            }
            None => false,
        }
    }

    /// The drain layer: counts in-flight requests (what the coordinator
    /// waits on), adds `Connection: close` once shutdown is requested and
    /// refuses new requests while draining (not those the `serve` loop
    /// still owes an answer). Every layer built here shares
    /// this coordinator's state.
    pub fn drain_layer(&self) -> DrainLayer {
        DrainLayer::new(Arc::clone(&self.inner.state))
    }
}

impl Inner {
    /// Starts the shutdown (once): readiness fails from this very moment.
    fn request(&self, trigger: Trigger) -> bool {
        let won = self.trigger_tx.send_if_modified(|t| {
            if t.is_none() {
                *t = Some((trigger, Instant::now()));
                true
            } else {
                false
            }
        });
        if won {
            self.set_phase(Phase::ShutdownRequested);
            tracing::info!(
                target: "tower_rampart::shutdown",
                name = %self.state.name,
                trigger = trigger.as_str(),
                "shutdown requested"
            );
        }
        won
    }

    fn set_phase(&self, phase: Phase) {
        self.state.set_phase(phase);
        self.phase_gauge.set(f64::from(phase as u8));
        self.phase_tx.send_replace(phase);
        tracing::info!(
            target: "tower_rampart::shutdown",
            name = %self.state.name,
            phase = phase.as_str(),
            in_flight = self.state.in_flight(),
            "shutdown phase"
        );
    }

    /// Waits until nothing is in flight or `deadline` passes; true if idle.
    async fn wait_idle(&self, deadline: Instant) -> bool {
        loop {
            let notified = self.state.idle.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.state.is_idle() {
                return true;
            }
            tokio::select! {
                () = notified => {}
                () = tokio::time::sleep_until(deadline) => return self.state.is_idle(),
            }
        }
    }
}

/// The installed signal streams.
struct Signals {
    #[cfg(unix)]
    term: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    int: Option<tokio::signal::unix::Signal>,
    #[cfg(not(unix))]
    enabled: bool,
}

impl Signals {
    fn none() -> Self {
        Self {
            #[cfg(unix)]
            term: None,
            #[cfg(unix)]
            int: None,
            #[cfg(not(unix))]
            enabled: false,
        }
    }

    fn install() -> Self {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let install = |kind: SignalKind, what: &str| match signal(kind) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::warn!(
                        target: "tower_rampart::shutdown",
                        signal = what,
                        error = %e,
                        "cannot listen to signal"
                    );
                    None
                }
            };
            Self {
                term: install(SignalKind::terminate(), "SIGTERM"),
                int: install(SignalKind::interrupt(), "SIGINT"),
            }
        }
        #[cfg(not(unix))]
        {
            Self { enabled: true }
        }
    }

    /// The next signal; pending forever if none is installed.
    async fn recv(&mut self) -> Trigger {
        #[cfg(unix)]
        {
            async fn next(s: &mut Option<tokio::signal::unix::Signal>) {
                match s {
                    Some(s) => {
                        if s.recv().await.is_none() {
                            std::future::pending::<()>().await;
                        }
                    }
                    None => std::future::pending().await,
                }
            }
            tokio::select! {
                () = next(&mut self.term) => Trigger::Sigterm,
                () = next(&mut self.int) => Trigger::Sigint,
            }
        }
        #[cfg(not(unix))]
        {
            if self.enabled && tokio::signal::ctrl_c().await.is_ok() {
                Trigger::Sigint
            } else {
                std::future::pending().await
            }
        }
    }
}

async fn drive(inner: Arc<Inner>, mut signals: Signals) {
    let mut trigger_rx = inner.trigger_tx.subscribe();
    let (trigger, started) = tokio::select! {
        t = trigger_rx.wait_for(Option::is_some) => match t {
            Ok(t) => t.expect("checked by wait_for"),
            Err(_) => return,
        },
        t = signals.recv() => {
            inner.request(t);
            inner.trigger_tx.borrow().expect("set by request")
        }
    };

    // A second signal forces an immediate exit. After a programmatic
    // trigger the first signal (Kubernetes' SIGTERM, say) is only the first.
    let force_code = inner.config.force_exit_code;
    let force_name = Arc::clone(&inner.state.name);
    let force = tokio::spawn(async move {
        if trigger == Trigger::Programmatic {
            let first = signals.recv().await;
            tracing::warn!(
                target: "tower_rampart::shutdown",
                name = %force_name,
                signal = first.as_str(),
                "signal during shutdown: already shutting down, a second one forces the exit"
            );
        }
        let second = signals.recv().await;
        tracing::error!(
            target: "tower_rampart::shutdown",
            name = %force_name,
            signal = second.as_str(),
            code = force_code,
            "second signal: exiting now"
        );
        std::process::exit(force_code);
    });

    let delay = if trigger == Trigger::Sigint {
        inner.config.sigint_delay
    } else {
        inner.config.shutdown_delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }

    let drain_start = Instant::now();
    let completed_before = inner.state.completed.load(Ordering::Relaxed);
    inner.set_phase(Phase::Draining);
    let in_flight_at_drain = inner.state.in_flight();
    let drained = inner
        .wait_idle(drain_start + inner.config.drain_timeout)
        .await;
    if !drained {
        tracing::warn!(
            target: "tower_rampart::shutdown",
            name = %inner.state.name,
            in_flight = inner.state.in_flight(),
            "drain deadline reached: aborting in-flight requests"
        );
        inner.state.abort.fire();
        inner
            .wait_idle(Instant::now() + inner.config.abort_grace)
            .await;
    }
    let drain = drain_start.elapsed();
    inner.drain_histogram.record(drain.as_secs_f64());
    let finished = inner.state.completed.load(Ordering::Relaxed) - completed_before;
    let aborted = inner.state.aborted.load(Ordering::Relaxed);
    let left_in_flight = inner.state.in_flight();

    let hooks_start = Instant::now();
    let hooks = inner
        .hooks
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .take()
        .unwrap_or_default();
    let mut hook_reports = Vec::with_capacity(hooks.len());
    for hook in hooks {
        hook_reports.push(run_hook(&inner.state.name, hook).await);
    }
    let hooks_duration = hooks_start.elapsed();

    let report = ShutdownReport {
        trigger,
        delay: drain_start - started,
        drain,
        hooks_duration,
        total: started.elapsed(),
        in_flight_at_drain,
        finished,
        aborted,
        left_in_flight,
        drain_timed_out: !drained,
        hooks: hook_reports,
    };
    emit(&inner.state.name, &report);
    inner.set_phase(Phase::Done);
    inner.report_tx.send_replace(Some(report));
    // The process may keep running (tests, embedded servers): stop
    // listening for a forcing signal once everything is over.
    force.abort();
}

async fn run_hook(name: &str, hook: Hook) -> HookReport {
    let start = Instant::now();
    let mut task = tokio::spawn(hook.future);
    let outcome = match tokio::time::timeout(hook.timeout, &mut task).await {
        Ok(Ok(())) => HookOutcome::Completed,
        Ok(Err(e)) if e.is_panic() => HookOutcome::Panicked,
        Ok(Err(_)) => HookOutcome::TimedOut,
        Err(_) => {
            task.abort();
            HookOutcome::TimedOut
        }
    };
    let duration = start.elapsed();
    if outcome != HookOutcome::Completed {
        tracing::warn!(
            target: "tower_rampart::shutdown",
            name,
            hook = %hook.name,
            outcome = ?outcome,
            duration_ms = duration.as_millis() as u64,
            "cleanup hook failed"
        );
    }
    HookReport {
        name: hook.name,
        outcome,
        duration,
    }
}

fn emit(name: &str, r: &ShutdownReport) {
    let hooks_failed = r
        .hooks
        .iter()
        .filter(|h| h.outcome != HookOutcome::Completed)
        .count();
    macro_rules! event {
        ($level:ident) => {
            tracing::$level!(
                target: "tower_rampart::shutdown",
                name,
                trigger = r.trigger.as_str(),
                delay_ms = r.delay.as_millis() as u64,
                drain_ms = r.drain.as_millis() as u64,
                hooks_ms = r.hooks_duration.as_millis() as u64,
                total_ms = r.total.as_millis() as u64,
                in_flight_at_drain = r.in_flight_at_drain,
                finished = r.finished,
                aborted = r.aborted,
                hooks = r.hooks.len(),
                hooks_failed,
                "shutdown complete"
            )
        };
    }
    if r.aborted > 0 || hooks_failed > 0 || r.left_in_flight > 0 {
        event!(warn);
    } else {
        event!(info);
    }
}
