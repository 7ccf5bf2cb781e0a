//! What every connection task of one server shares ([`Shared`]): the
//! settings, the hyper connection builder, the shutdown state and the
//! metric handles.

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use hyper_util::rt::{TokioExecutor, TokioTimer};
use hyper_util::server::conn::auto;
use metrics::{Counter, Gauge};
use tokio::time::Instant;

use super::ServerConfig;
use crate::shutdown::{Shutdown, State};
use crate::util::lanes::Laned;

/// Metric handles, registered once per server.
pub(crate) struct Metrics {
    pub(crate) connections: Gauge,
    pub(super) accepted: Counter,
    pub(super) refused: Counter,
    pub(super) paused: Counter,
    pub(super) backlog: Counter,
    pub(crate) header_read_timeouts: Counter,
    pub(crate) keep_alive_timeouts: Counter,
    pub(crate) aborted: Counter,
}

impl Metrics {
    pub(super) fn new(name: &str) -> Self {
        crate::metrics_help::describe(super::METRICS);
        let n = name.to_owned();
        Self {
            connections: metrics::gauge!("rampart_connections", "name" => n.clone()),
            accepted: metrics::counter!("rampart_connections_accepted_total", "name" => n.clone()),
            refused: metrics::counter!("rampart_connections_refused_total", "name" => n.clone()),
            paused: metrics::counter!("rampart_accept_paused_total", "name" => n.clone()),
            backlog: metrics::counter!("rampart_connections_backlog_total", "name" => n.clone()),
            header_read_timeouts: metrics::counter!(
                "rampart_connection_timeouts_total",
                "name" => n.clone(),
                "kind" => "header_read"
            ),
            keep_alive_timeouts: metrics::counter!(
                "rampart_connection_timeouts_total",
                "name" => n.clone(),
                "kind" => "keep_alive"
            ),
            aborted: metrics::counter!("rampart_connections_aborted_total", "name" => n),
        }
    }
}

/// What every connection task of one server shares.
pub(crate) struct Shared {
    pub(crate) config: ServerConfig,
    pub(crate) builder: auto::Builder<TokioExecutor>,
    pub(crate) shutdown: Shutdown,
    pub(crate) state: Arc<Laned<State>>,
    pub(crate) metrics: Metrics,
    pub(super) drain_started: OnceLock<Instant>,
}

impl Shared {
    /// When the drain ends (the abort): `drain_timeout` after the first
    /// task saw draining start.
    pub(crate) fn drain_deadline(&self) -> Instant {
        *self.drain_started.get_or_init(Instant::now) + self.shutdown.config().drain_timeout
    }

    pub(crate) fn connection_error(
        &self,
        peer: SocketAddr,
        error: &(dyn std::error::Error + 'static),
    ) {
        let header_timeout = error
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout);
        if header_timeout {
            self.metrics.header_read_timeouts.increment(1);
            tracing::debug!(
                target: "tower_rampart::serve",
                name = %self.config.name,
                %peer,
                "header read timeout"
            );
        } else {
            tracing::debug!(
                target: "tower_rampart::serve",
                name = %self.config.name,
                %peer,
                error = %error,
                "connection error"
            );
        }
    }
}

pub(super) fn builder(config: &ServerConfig) -> auto::Builder<TokioExecutor> {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        // The header read timeout is the connection task's ticker: hyper's
        // own would arm (and allocate) a timer for every request.
        .header_read_timeout(None)
        .keep_alive(true);
    let interval =
        (!config.http2_keep_alive_interval.is_zero()).then_some(config.http2_keep_alive_interval);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(config.http2_max_concurrent_streams)
        .keep_alive_interval(interval)
        .keep_alive_timeout(config.http2_keep_alive_timeout);
    builder
}
