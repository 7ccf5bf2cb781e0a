//! Health checks and Kubernetes probes, wired to shutdown.
//!
//! A [`HealthRegistry`] holds named [`Check`]s, each with a [`Kind`]
//! (liveness, readiness, startup), a timeout and a criticality:
//!
//! - async checks run in the background every `interval` and probes answer
//!   from the cached result, so a probe never waits for a database (a slow
//!   or hanging check cannot slow a probe, and probes cannot stampede the
//!   dependency); on-demand checks with a `ttl` are the alternative;
//! - [`Check::sync`] checks are cheap synchronous reads evaluated at probe
//!   time (a flag, a circuit breaker handle's state);
//! - a run that exceeds its timeout fails with `timed out after ...`; a
//!   failing non-critical check reports `warn` and keeps the probe passing;
//!   startup checks latch once they pass;
//! - [`HealthRegistryBuilder::shutdown`] adds the built-in readiness check
//!   `shutdown`, which fails the moment shutdown starts. Liveness never
//!   includes it, nor any dependency: readiness runs the liveness checks
//!   plus its own, like the kube-apiserver's `/readyz`.
//!
//! The [`ProbeLayer`] answers `/livez`, `/readyz` and `/startupz`
//! (configurable) in front of everything else, following the
//! kube-apiserver's conventions:
//!
//! | request | answer |
//! |---|---|
//! | `GET /readyz` | 200 `ok`, or 503 with the listing below |
//! | `GET /readyz?verbose` | `[+]name ok` / `[!]name warn: reason withheld` / `[-]name failed: reason withheld` lines, then `readyz check passed` or `readyz check failed` |
//! | `GET /readyz?exclude=db&exclude=cache` | the probe without those checks (`[+]db excluded: ok`); unknown names add `warn: some health checks cannot be excluded: no matches for "x"` |
//! | `GET /readyz/db` | that check alone: 200 `ok`, or 503 `[-]db failed: <real error>` (a failing non-critical check too); 404 if the probe has no such check |
//! | `Accept: application/health+json` | the same verdict as `application/health+json` (`status`, `checks` keyed `name:responseTime`, each with `componentType`, `status`, `time`, `observedValue` in ms and `output`) |
//!
//! ```
//! use std::time::Duration;
//! use axum::{Router, routing::get};
//! use tower_rampart::health::{Check, HealthRegistry, Kind, ProbeLayer};
//! use tower_rampart::shutdown::Shutdown;
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let shutdown = Shutdown::builder().signals(false).build()?;
//! let registry = HealthRegistry::builder()
//!     .shutdown(&shutdown)
//!     .check(
//!         Check::readiness("db", || async { Ok::<(), String>(()) })
//!             .timeout(Duration::from_millis(500))
//!             .interval(Duration::from_secs(5)),
//!     )
//!     .check(Check::sync("flags", Kind::Readiness, || Ok::<(), String>(())).non_critical())
//!     .build()?;
//! let app: Router = Router::new()
//!     .route("/", get(|| async { "hello" }))
//!     .layer(shutdown.drain_layer())
//!     .layer(ProbeLayer::new(&registry));
//!
//! registry.refresh().await; // run the async checks once, now
//! let report = registry.probe(Kind::Readiness, &[]).await;
//! assert!(report.passed());
//! assert_eq!(report.to_text(true), "[+]shutdown ok\n[+]db ok\n[+]flags ok\nreadyz check passed\n");
//! shutdown.trigger();
//! let report = registry.probe(Kind::Readiness, &[]).await;
//! assert!(!report.passed());
//! # let _ = app;
//! # Ok(())
//! # }
//! ```
//!
//! Behind the `tonic` feature, [`HealthRegistry::grpc_health`] serves the
//! same registry as `grpc.health.v1` (with tonic-health's messages): `Check`
//! evaluates the registry when called, so it answers what `/readyz`
//! answers at that moment; `Watch` streams get every change, `NOT_SERVING`
//! when shutdown is requested, and are ended (status OK) when draining
//! starts. Serve it outside the protections (the config stack does, see
//! `[platform]`): a health check refused by a breaker or a rate limit
//! reports the protection, not the server.
//!
//! # Metrics and events
//!
//! Install the `metrics` recorder before building the registry (handles are
//! registered once). `name` is the registry's name.
//!
//! | metric | kind | labels | meaning |
//! |---|---|---|---|
//! | `rampart_health_check_status` | gauge | `name`, `check`, `kind` | last result: 1 pass, 0.5 warn, 0 fail |
//! | `rampart_health_check_duration_seconds` | histogram | `name`, `check`, `kind` | duration of each run |
//!
//! | event (target `tower_rampart::health`) | level | fields |
//! |---|---|---|
//! | `health check changed` | INFO | `check`, `kind`, `status`, `error` |
//! | `grpc health watch ended: draining` | DEBUG | `service` |

mod check;
mod config;
mod future;
#[cfg(feature = "tonic")]
mod grpc;
mod layer;
pub(crate) mod registry;
mod report;
mod state;
#[cfg(feature = "config")] // the stack's front
pub(crate) use state::Shared as ProbeShared;

use std::fmt;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use tower::Service;

pub use check::{Check, CheckResult, ComponentType, Kind, Status};
pub use config::{BreakerReadiness, HealthConfig, ProbeConfig};
pub(crate) use future::ProbeAnswer;
pub use future::ResponseFuture;
#[cfg(feature = "tonic")]
pub use grpc::{DEFAULT_MAX_WATCHES, GrpcHealth, GrpcHealthBuilder, WatchStream};
pub use layer::{ProbeLayer, ProbeLayerBuilder};
pub use registry::{HealthRegistry, HealthRegistryBuilder};
pub use report::{CheckReport, ProbeReport};

use crate::rejection::ResponseBody;
use state::Shared;

use crate::metrics_help::{Help, MetricKind};
use metrics::Unit;

/// The `# HELP` text and unit of every metric this module records,
/// described to the recorder when the layer registers its metrics.
pub(crate) const METRICS: &[Help] = &[
    Help {
        name: "rampart_health_check_status",
        kind: MetricKind::Gauge,
        unit: None,
        text: "Last result of a health check: 1 pass, 0.5 warn, 0 fail.",
    },
    Help {
        name: "rampart_health_check_duration_seconds",
        kind: MetricKind::Histogram,
        unit: Some(Unit::Seconds),
        text: "Duration of each health check run.",
    },
];

/// Answers the probe paths from a [`HealthRegistry`]; passes everything
/// else to the inner service after one path comparison. Built by
/// [`ProbeLayer`].
pub struct Probe<S> {
    inner: S,
    shared: Arc<Shared>,
}

impl<S> Probe<S> {
    pub(crate) fn new(inner: S, shared: Arc<Shared>) -> Self {
        Self { inner, shared }
    }

    /// The inner service.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    /// The inner service.
    pub fn into_inner(self) -> S {
        self.inner
    }
}

impl<S: Clone> Clone for Probe<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            shared: Arc::clone(&self.shared),
        }
    }
}

impl<S> fmt::Debug for Probe<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Probe").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for Probe<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>>,
{
    type Response = Response<ResponseBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S::Future>;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    #[inline]
    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        if self.shared.may_match(req.uri().path()) {
            return self.call_may_be_probe(req);
        }
        ResponseFuture::inner(self.inner.call(req))
    }
}

impl<S> Probe<S> {
    /// [`Service::call`] for a request whose path may be a probe's. Not
    /// inlined: the request is lent here to build a probe's answer, and a
    /// request lent to an out-of-line call is first copied (the whole
    /// `Request`, ~220 bytes), which a request that goes straight to the
    /// inner service (most) does not pay.
    #[inline(never)]
    fn call_may_be_probe<ReqB, ResB>(&mut self, req: Request<ReqB>) -> ResponseFuture<S::Future>
    where
        S: Service<Request<ReqB>, Response = Response<ResB>>,
    {
        match probe_answer(&self.shared, &req) {
            None => ResponseFuture::inner(self.inner.call(req)),
            Some(answer) => ResponseFuture::probe(answer),
        }
    }
}

/// The answer to `req` if its path is one of the probes' (one path
/// comparison otherwise): what [`Probe`] answers, and the stack's front
/// service (`config::Platform`), which answers the probes itself.
#[inline(always)]
pub(crate) fn probe_answer<B>(shared: &Shared, req: &Request<B>) -> Option<ProbeAnswer> {
    let (kind, name) = shared.match_path(req.uri().path())?;
    Some(probe(shared, kind, name, req))
}

#[cold]
fn probe<B>(shared: &Shared, kind: Kind, name: Option<&str>, req: &Request<B>) -> ProbeAnswer {
    let query = ProbeQuery::parse(req.uri().query());
    let json = wants_health_json(req.headers());
    let registry = shared.registry.clone();
    let name = name.map(percent_decode);
    Box::pin(async move { answer(registry, kind, name, query, json).await })
}

#[derive(Debug, Default)]
struct ProbeQuery {
    verbose: bool,
    exclude: Vec<String>,
}

/// The most `?exclude=` values a probe request honours; more are ignored.
const MAX_EXCLUDES: usize = 32;

impl ProbeQuery {
    fn parse(query: Option<&str>) -> Self {
        let mut q = Self::default();
        for pair in query.unwrap_or("").split('&') {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            match k {
                "verbose" => q.verbose = true,
                // Bounded: probes bypass the limiters, and each exclude is
                // compared against every check.
                "exclude" if q.exclude.len() < MAX_EXCLUDES => {
                    if let Some(v) = percent_decode(v) {
                        if !v.is_empty() {
                            q.exclude.push(v);
                        }
                    }
                }
                _ => {}
            }
        }
        q
    }
}

/// Percent-decodes a query value or path segment; `None` if the result is
/// not UTF-8 (bad input is treated as absent).
fn percent_decode(s: &str) -> Option<String> {
    if !s.contains(['%', '+']) {
        return Some(s.to_owned());
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let hex = Some(&b[i + 1..i + 3])
                    .filter(|h| h.iter().all(u8::is_ascii_hexdigit))
                    .and_then(|h| std::str::from_utf8(h).ok());
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    None => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

/// Does `Accept` ask for `application/health+json`? Unreadable values are
/// ignored.
fn wants_health_json(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|m| {
            m.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .eq_ignore_ascii_case("application/health+json")
        })
}

async fn answer(
    registry: HealthRegistry,
    kind: Kind,
    name: Option<Option<String>>,
    query: ProbeQuery,
    json: bool,
) -> Response<Bytes> {
    let (status, body) = match name {
        None => {
            let exclude: Vec<&str> = query.exclude.iter().map(String::as_str).collect();
            let report = registry.probe(kind, &exclude).await;
            let body = if json {
                report.to_health_json()
            } else {
                report.to_text(query.verbose)
            };
            (pass_status(report.passed()), body)
        }
        Some(Some(name)) => match registry.check(kind, &name).await {
            Some(report) => {
                let body = if json {
                    report.to_health_json()
                } else {
                    report.to_text()
                };
                (pass_status(report.passed()), body)
            }
            None => {
                return text_response(
                    StatusCode::NOT_FOUND,
                    format!("no check named `{name}` in {}\n", kind.probe_name()),
                    false,
                );
            }
        },
        Some(None) => {
            return text_response(
                StatusCode::BAD_REQUEST,
                "check name is not valid UTF-8\n".to_owned(),
                false,
            );
        }
    };
    text_response(status, body, json)
}

fn pass_status(passed: bool) -> StatusCode {
    if passed {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    }
}

fn text_response(status: StatusCode, body: String, json: bool) -> Response<Bytes> {
    let mut res = Response::new(Bytes::from(body));
    *res.status_mut() = status;
    let h = res.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(if json {
            "application/health+json"
        } else {
            "text/plain; charset=utf-8"
        }),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    res
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_parsing() {
        let q = ProbeQuery::parse(Some("verbose&exclude=db&exclude=a%2Db&exclude=&x=1"));
        assert!(q.verbose);
        assert_eq!(q.exclude, ["db", "a-b"]);
        let q = ProbeQuery::parse(Some("verbose=false&exclude=%FF"));
        assert!(q.verbose, "kube: the key's presence is what counts");
        assert!(q.exclude.is_empty(), "bad input is absent");
        assert!(!ProbeQuery::parse(None).verbose);
        assert_eq!(percent_decode("100%").as_deref(), Some("100%"));
        assert_eq!(percent_decode("%4").as_deref(), Some("%4"));
        assert_eq!(percent_decode("%zz").as_deref(), Some("%zz"));
    }

    #[test]
    fn accept_parsing() {
        let mut h = HeaderMap::new();
        assert!(!wants_health_json(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_static("text/plain, Application/Health+JSON; q=0.9"),
        );
        assert!(wants_health_json(&h));
        h.insert(
            header::ACCEPT,
            HeaderValue::from_bytes(b"application/health+json\xff").unwrap(),
        );
        assert!(!wants_health_json(&h));
    }
}
