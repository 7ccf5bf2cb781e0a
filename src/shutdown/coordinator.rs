//! The shutdown coordinator: its handle ([`Shutdown`]), its builder and
//! the state its steps share ([`Inner`]). The sequence itself is in
//! `drive.rs`, the signals in `signals.rs`, the report in `report.rs`.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use metrics::{Gauge, Histogram};
use tokio::sync::watch;
use tokio::time::Instant;

use super::config::ShutdownConfig;
use super::drive::drive;
use super::layer::DrainLayer;
use super::phase::{Phase, Trigger};
use super::report::ShutdownReport;
use super::signals::Signals;
use super::state::State;
use crate::ConfigError;
use crate::util::lanes::Laned;

type HookFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// A cleanup hook, waiting for its turn.
pub(super) struct Hook {
    pub(super) name: String,
    pub(super) timeout: Duration,
    pub(super) future: HookFuture,
}

/// What the coordinator's handle and its `drive` task share.
pub(crate) struct Inner {
    pub(crate) state: Arc<Laned<State>>,
    pub(super) config: ShutdownConfig,
    phase_tx: watch::Sender<Phase>,
    pub(super) trigger_tx: watch::Sender<Option<(Trigger, Instant)>>,
    pub(super) report_tx: watch::Sender<Option<ShutdownReport>>,
    pub(super) hooks: Mutex<Option<Vec<Hook>>>,
    phase_gauge: Gauge,
    pub(super) drain_histogram: Histogram,
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
        let state = Arc::new(State::laned(Arc::clone(&name), config.retry_after));
        let signals = if config.signals {
            Signals::install()
        } else {
            Signals::none()
        };
        crate::metrics_help::describe(super::METRICS);
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
    pub(crate) fn state(&self) -> &Arc<Laned<State>> {
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
        let mut hooks = crate::util::lock(&self.inner.hooks);
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
    pub(super) fn request(&self, trigger: Trigger) -> bool {
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

    pub(super) fn set_phase(&self, phase: Phase) {
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
    pub(super) async fn wait_idle(&self, deadline: Instant) -> bool {
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
