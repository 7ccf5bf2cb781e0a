//! The `grpc.health.v1` bridge (tonic-health), behind the `tonic` feature.

use std::collections::HashMap;
use std::sync::Weak;
use std::time::Duration;

use tokio::sync::watch;
use tonic_health::ServingStatus;
use tonic_health::pb::health_server::HealthServer;
use tonic_health::server::{HealthReporter, HealthService};

use super::HealthRegistry;
use super::check::{Kind, Status};
use super::registry::RegistryInner;
use crate::ConfigError;
use crate::shutdown::Phase;

/// Builds the `grpc.health.v1.Health` service driven by a
/// [`HealthRegistry`]: the overall service (`""`) follows readiness, each
/// named service follows its checks (a failing critical check makes it
/// `NOT_SERVING`), and every service turns `NOT_SERVING` the moment the
/// registry's shutdown coordinator leaves `Running`.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// use tower_rampart::health::{Check, HealthRegistry};
///
/// let registry = HealthRegistry::builder()
///     .check(Check::readiness("db", || async { Ok::<(), String>(()) }))
///     .build()?;
/// let health_service = registry
///     .grpc_health()
///     .service("helloworld.Greeter", ["db"])
///     .build()?;
/// // tonic::transport::Server::builder().add_service(health_service) ...
/// # let _ = health_service;
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
#[must_use]
pub struct GrpcHealthBuilder {
    registry: HealthRegistry,
    services: Vec<(String, Vec<String>)>,
    poll_interval: Duration,
}

impl HealthRegistry {
    /// A builder of the `grpc.health.v1` service fed by this registry.
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn grpc_health(&self) -> GrpcHealthBuilder {
        GrpcHealthBuilder {
            registry: self.clone(),
            services: Vec::new(),
            poll_interval: Duration::from_secs(1),
        }
    }
}

impl GrpcHealthBuilder {
    /// A named gRPC service (`package.Service`) that is `SERVING` while the
    /// named checks pass (non-critical ones may fail) and shutdown has not
    /// started.
    pub fn service<I, N>(mut self, name: impl Into<String>, checks: I) -> Self
    where
        I: IntoIterator<Item = N>,
        N: Into<String>,
    {
        self.services
            .push((name.into(), checks.into_iter().map(Into::into).collect()));
        self
    }

    /// How often statuses are re-evaluated besides on every change of a
    /// background check or of the shutdown phase (default 1s; sync checks
    /// are only seen this way).
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// Validates, spawns the task that keeps the statuses current (inside a
    /// tokio runtime) and returns the tonic service.
    pub fn build(self) -> Result<HealthServer<HealthService>, ConfigError> {
        if self.poll_interval.is_zero() {
            return Err(ConfigError::new("poll_interval", "must be greater than 0"));
        }
        for (i, (name, checks)) in self.services.iter().enumerate() {
            let at = format!("services[{i}]");
            if name.is_empty() {
                return Err(ConfigError::new("name", "must not be empty").at(&at));
            }
            for c in checks {
                if !self.registry.has_check(c) {
                    return Err(ConfigError::new("checks", format!("no check named `{c}`")).at(&at));
                }
            }
        }
        let handle = tokio::runtime::Handle::try_current().map_err(|_| {
            ConfigError::new(
                "runtime",
                "the gRPC health bridge must be built inside a tokio runtime",
            )
        })?;
        let reporter = HealthReporter::new();
        let changed = self.registry.subscribe();
        let phase = self.registry.shutdown_handle().map(|s| s.subscribe());
        handle.spawn(bridge(
            self.registry.downgrade(),
            reporter.clone(),
            self.services,
            self.poll_interval,
            changed,
            phase,
        ));
        Ok(HealthServer::new(HealthService::from_health_reporter(
            reporter,
        )))
    }
}

async fn phase_changed(rx: &mut Option<watch::Receiver<Phase>>) {
    match rx {
        Some(rx) => {
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
        None => std::future::pending().await,
    }
}

async fn bridge(
    registry: Weak<RegistryInner>,
    reporter: HealthReporter,
    services: Vec<(String, Vec<String>)>,
    poll: Duration,
    mut changed: watch::Receiver<u64>,
    mut phase: Option<watch::Receiver<Phase>>,
) {
    let mut last: HashMap<String, ServingStatus> = HashMap::new();
    loop {
        let Some(inner) = registry.upgrade() else {
            return;
        };
        let reg = HealthRegistry::from_inner(inner);
        let shutting = reg.shutdown_handle().is_some_and(|s| s.is_shutting_down());
        let serving = |ok: bool| {
            if ok && !shutting {
                ServingStatus::Serving
            } else {
                ServingStatus::NotServing
            }
        };
        let mut statuses = Vec::with_capacity(services.len() + 1);
        statuses.push((
            String::new(),
            serving(!shutting && reg.probe(Kind::Readiness, &[]).await.passed()),
        ));
        for (name, checks) in &services {
            let mut ok = true;
            for c in checks {
                if let Some(r) = reg.report_by_name(c).await {
                    ok &= r.status != Status::Fail;
                }
            }
            statuses.push((name.clone(), serving(ok)));
        }
        drop(reg);
        for (name, status) in statuses {
            if last.get(&name) != Some(&status) {
                tracing::info!(
                    target: "tower_rampart::health",
                    service = %name,
                    status = ?status,
                    "grpc health status"
                );
                reporter.set_service_status(&name, status).await;
                last.insert(name, status);
            }
        }
        tokio::select! {
            _ = changed.changed() => {}
            () = phase_changed(&mut phase) => {}
            () = tokio::time::sleep(poll) => {}
        }
    }
}
