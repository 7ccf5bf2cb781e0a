//! The `grpc.health.v1` service over the registry (tonic-health's
//! messages), behind the `tonic` feature.

use std::collections::HashMap;
use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tonic::codegen::tokio_stream::Stream;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};

use super::HealthRegistry;
use super::check::{Kind, Status};
use crate::ConfigError;
use crate::shutdown::Phase;

/// Builds the `grpc.health.v1.Health` service reading a
/// [`HealthRegistry`]: the overall service (`""`) answers what the
/// readiness probe (`/readyz`) answers, each named service follows its
/// checks (a failing critical check makes it `NOT_SERVING`), every service
/// is `NOT_SERVING` from the moment the registry's shutdown coordinator
/// leaves `Running`, and an unknown service is `NOT_FOUND`.
///
/// `Check` evaluates the registry when it is called (no polling delay).
/// `Watch` sends the status at once and on every change (background checks
/// and the shutdown phase are followed as they change, synchronous checks
/// such as a breaker's every [`poll_interval`](Self::poll_interval)); it
/// sends `NOT_SERVING` when shutdown is requested and **ends** (status `OK`)
/// when draining starts, so a watching client (a Kubernetes `grpc:` probe,
/// a client-side load balancer) does not hold the connection, and with it
/// the rollout, until the drain deadline.
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
    max_watches: usize,
}

/// The default of [`GrpcHealthBuilder::max_watches`].
pub const DEFAULT_MAX_WATCHES: usize = 1024;

impl HealthRegistry {
    /// A builder of the `grpc.health.v1` service fed by this registry.
    #[cfg_attr(docsrs, doc(cfg(feature = "tonic")))]
    pub fn grpc_health(&self) -> GrpcHealthBuilder {
        GrpcHealthBuilder {
            registry: self.clone(),
            services: Vec::new(),
            poll_interval: Duration::from_secs(1),
            max_watches: DEFAULT_MAX_WATCHES,
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

    /// How often `Watch` streams re-evaluate the status besides on every
    /// change of a background check or of the shutdown phase (default 1s;
    /// synchronous checks are only seen this way). `Check` always evaluates
    /// at the moment of the call.
    pub fn poll_interval(mut self, interval: Duration) -> Self {
        self.poll_interval = interval;
        self
    }

    /// The most `Watch` streams open at once (default
    /// [`DEFAULT_MAX_WATCHES`]); one more is refused with
    /// `RESOURCE_EXHAUSTED`. The health service is outside the rate limit,
    /// and each stream costs a small task: this bounds what clients can
    /// make it cost.
    pub fn max_watches(mut self, n: usize) -> Self {
        self.max_watches = n;
        self
    }

    /// Validates and returns the tonic service.
    pub fn build(self) -> Result<HealthServer<GrpcHealth>, ConfigError> {
        if self.poll_interval.is_zero() {
            return Err(ConfigError::new(
                "poll_interval",
                crate::config_util::MUST_BE_POSITIVE,
            ));
        }
        if self.max_watches == 0 {
            return Err(ConfigError::new(
                "max_watches",
                crate::config_util::MUST_BE_POSITIVE,
            ));
        }
        let mut services = HashMap::with_capacity(self.services.len());
        for (i, (name, checks)) in self.services.into_iter().enumerate() {
            let at = format!("services[{i}]");
            if name.is_empty() {
                return Err(
                    ConfigError::new("name", crate::config_util::MUST_NOT_BE_EMPTY).at(&at),
                );
            }
            for c in &checks {
                if !self.registry.has_check(c) {
                    return Err(ConfigError::new("checks", format!("no check named `{c}`")).at(&at));
                }
            }
            if services.insert(name, checks).is_some() {
                return Err(ConfigError::new("name", "is listed twice").at(&at));
            }
        }
        Ok(HealthServer::new(GrpcHealth {
            inner: Arc::new(Inner {
                registry: self.registry,
                services,
                poll: self.poll_interval,
                max_watches: self.max_watches,
                watches: AtomicUsize::new(0),
            }),
        }))
    }
}

/// The `grpc.health.v1.Health` service over a [`HealthRegistry`], built by
/// [`GrpcHealthBuilder`]. `Check` evaluates the registry at the moment of
/// the call, so it answers what `/readyz` answers; `Watch` streams end
/// (status `OK`) when the shutdown coordinator starts draining.
#[derive(Clone)]
pub struct GrpcHealth {
    inner: Arc<Inner>,
}

struct Inner {
    registry: HealthRegistry,
    services: HashMap<String, Vec<String>>,
    poll: Duration,
    max_watches: usize,
    watches: AtomicUsize,
}

/// One open `Watch` stream, counted until its task ends.
struct WatchSlot(Arc<Inner>);

impl WatchSlot {
    fn take(inner: &Arc<Inner>) -> Option<Self> {
        inner
            .watches
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < inner.max_watches).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(Arc::clone(inner)))
    }
}

impl Drop for WatchSlot {
    fn drop(&mut self) {
        self.0.watches.fetch_sub(1, Ordering::AcqRel);
    }
}

impl fmt::Debug for GrpcHealth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcHealth")
            .field("registry", &self.inner.registry.name())
            .field("services", &self.inner.services.len())
            .field("poll_interval", &self.inner.poll)
            .finish()
    }
}

impl Inner {
    /// The status of `service` now; `None` if it is unknown.
    async fn status(&self, service: &str) -> Option<ServingStatus> {
        let reg = &self.registry;
        let ok = if service.is_empty() {
            reg.probe(Kind::Readiness, &[]).await.passed()
        } else {
            let checks = self.services.get(service)?;
            let mut ok = true;
            for c in checks {
                if let Some(r) = reg.report_by_name(c).await {
                    ok &= r.status != Status::Fail;
                }
            }
            ok
        };
        let shutting = reg.shutdown_handle().is_some_and(|s| s.is_shutting_down());
        Some(if ok && !shutting {
            ServingStatus::Serving
        } else {
            ServingStatus::NotServing
        })
    }

    fn draining(&self) -> bool {
        self.registry
            .shutdown_handle()
            .is_some_and(|s| s.phase() >= Phase::Draining)
    }
}

fn response(status: ServingStatus) -> HealthCheckResponse {
    HealthCheckResponse {
        status: status as i32,
    }
}

#[tonic::async_trait]
impl Health for GrpcHealth {
    async fn check(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        let service = &request.get_ref().service;
        match self.inner.status(service).await {
            Some(status) => Ok(tonic::Response::new(response(status))),
            // The name is not echoed: it is the client's, of any length.
            None => Err(tonic::Status::not_found("unknown service")),
        }
    }

    type WatchStream = WatchStream;

    async fn watch(
        &self,
        request: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<WatchStream>, tonic::Status> {
        let service = request.into_inner().service;
        let (tx, rx) = mpsc::channel(1);
        let Some(slot) = WatchSlot::take(&self.inner) else {
            return Err(tonic::Status::resource_exhausted(
                "too many grpc.health.v1 Watch streams",
            ));
        };
        tokio::spawn(watch(slot, service, tx));
        Ok(tonic::Response::new(WatchStream { rx }))
    }
}

/// Sends the status of `service` on every change: at once, on every change
/// of a background check or of the shutdown phase, and every poll interval
/// (synchronous checks are only seen so). `NOT_SERVING` once shutdown is
/// requested; the stream ends when draining starts.
async fn watch(
    slot: WatchSlot,
    service: String,
    tx: mpsc::Sender<Result<HealthCheckResponse, tonic::Status>>,
) {
    let inner = &slot.0;
    let mut changed = inner.registry.subscribe();
    let mut phase = inner.registry.shutdown_handle().map(|s| s.subscribe());
    let mut last = None;
    loop {
        let draining = inner.draining();
        let status = match inner.status(&service).await {
            Some(_) if draining => ServingStatus::NotServing,
            Some(s) => s,
            None => ServingStatus::ServiceUnknown,
        };
        if last != Some(status) {
            if tx.send(Ok(response(status))).await.is_err() {
                return;
            }
            last = Some(status);
        }
        if draining {
            // Dropping the sender ends the stream with status OK, so the
            // client reconnects elsewhere and the connection can close.
            tracing::debug!(
                target: "tower_rampart::health",
                service = %service,
                "grpc health watch ended: draining"
            );
            return;
        }
        tokio::select! {
            _ = changed.changed() => {}
            () = phase_changed(&mut phase) => {}
            () = tokio::time::sleep(inner.poll) => {}
            () = tx.closed() => return,
        }
    }
}

/// The response stream of `Watch`.
pub struct WatchStream {
    rx: mpsc::Receiver<Result<HealthCheckResponse, tonic::Status>>,
}

impl fmt::Debug for WatchStream {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WatchStream").finish_non_exhaustive()
    }
}

impl Stream for WatchStream {
    type Item = Result<HealthCheckResponse, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.rx.poll_recv(cx)
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
