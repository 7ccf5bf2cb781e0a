//! The stack's circuit breaker, shared or kept per route.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use http::Request;

use crate::circuit_breaker::{
    CircuitBreakerBuilder, CircuitBreakerConfig, CircuitBreakerEvent, CircuitBreakerHandle,
    CircuitBreakerLayer, CircuitState, KeyedCircuitBreakerHandle, KeyedShared, Permit,
    decide_keyed, decided,
};
use crate::health::{Check, Kind};
use crate::{ConfigError, Rejection};

use super::RoutesConfig;
use crate::util::route_paths::{self, RoutePaths};

use crate::metrics_help::{Help, MetricKind};

/// The `# HELP` text and unit of every metric this module records,
/// described to the recorder when the layer registers its metrics.
pub(crate) const METRICS: &[Help] = &[Help {
    name: "rampart_circuit_breaker_route_state",
    kind: MetricKind::Gauge,
    unit: None,
    text: "State of one route's circuit breaker in the stack's per-route mode (same codes as rampart_circuit_breaker_state).",
}];

/// The route a request belongs to, as the per-route breaker sees it:
/// axum's matched path (the route template, such as `/api/sleep/{ms}`), a
/// declared gRPC method, or [`unmatched`](Self::UNMATCHED) for everything
/// else. Compared and hashed by [`as_str`](Self::as_str).
///
/// A client cannot make up a route: unknown paths and undeclared gRPC
/// methods all share the `unmatched` breaker.
#[derive(Clone)]
pub struct RouteKey(Repr);

#[derive(Clone)]
enum Repr {
    #[cfg(feature = "axum")]
    Matched(axum::extract::MatchedPath),
    Named(Arc<str>),
    Unmatched,
}

impl RouteKey {
    /// The name of the breaker shared by requests with no route.
    pub const UNMATCHED: &'static str = route_paths::UNMATCHED;

    /// The route, or `unmatched`.
    pub fn as_str(&self) -> &str {
        match &self.0 {
            #[cfg(feature = "axum")]
            Repr::Matched(m) => m.as_str(),
            Repr::Named(n) => n,
            Repr::Unmatched => Self::UNMATCHED,
        }
    }

    /// Is this the breaker of requests with no route?
    pub fn is_unmatched(&self) -> bool {
        self.as_str() == Self::UNMATCHED
    }
}

impl PartialEq for RouteKey {
    fn eq(&self, other: &Self) -> bool {
        self.as_str() == other.as_str()
    }
}

impl Eq for RouteKey {}

impl Hash for RouteKey {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.as_str().hash(state);
    }
}

/// A route's breaker is found by the route's `str` (hashed and compared as
/// the key is).
impl Borrow<str> for RouteKey {
    fn borrow(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for RouteKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The declared routes: which gRPC methods and which HTTP route templates
/// have a breaker of their own (found in that order, then axum's matched
/// path).
pub(crate) struct RouteTable {
    grpc: Box<[Arc<str>]>,
    paths: Arc<RoutePaths>,
}

impl RouteTable {
    /// The route of `req`, borrowed: what [`key`](Self::key) would name
    /// (`RouteKey` borrows as this `str`), for a lookup that builds no key.
    #[inline]
    fn route<'a, B>(&'a self, req: &'a Request<B>) -> &'a str {
        let path = req.uri().path();
        if let Some(m) = self.grpc.iter().find(|m| ***m == *path) {
            return m;
        }
        if let Some(t) = self.paths.find(path) {
            return t;
        }
        #[cfg(feature = "axum")]
        if let Some(m) = req.extensions().get::<axum::extract::MatchedPath>() {
            return m.as_str();
        }
        RouteKey::UNMATCHED
    }

    /// The route of `req` as a key of its own (a new route's breaker):
    /// no allocation (a reference count at most).
    #[inline]
    fn key<B>(&self, req: &Request<B>) -> RouteKey {
        let path = req.uri().path();
        if let Some(m) = self.grpc.iter().find(|m| ***m == *path) {
            return RouteKey(Repr::Named(Arc::clone(m)));
        }
        if let Some(t) = self.paths.find(path) {
            return RouteKey(Repr::Named(Arc::clone(t)));
        }
        #[cfg(feature = "axum")]
        if let Some(m) = req.extensions().get::<axum::extract::MatchedPath>() {
            return RouteKey(Repr::Matched(m.clone()));
        }
        RouteKey(Repr::Unmatched)
    }
}

/// The stack's breaker, built from the config.
#[derive(Clone)]
pub(crate) enum BreakerLayer {
    Shared(CircuitBreakerLayer),
    PerRoute(Arc<PerRoute>),
}

/// The per-route breakers and the declared routes, behind one `Arc`: a
/// clone of the stack's service (axum clones a route's service for every
/// request) counts one reference here, not two.
pub(crate) struct PerRoute {
    breakers: Arc<KeyedShared<RouteKey>>,
    table: RouteTable,
}

impl BreakerLayer {
    /// The shared breaker, or one per route (with the state gauges kept by
    /// an event listener, since keyed breakers do not drive them).
    pub(crate) fn build(
        config: &CircuitBreakerConfig,
        routes: &RoutesConfig,
        paths: &Arc<RoutePaths>,
    ) -> Result<(Self, Breakers), ConfigError> {
        let builder = CircuitBreakerBuilder::from_config(config.clone());
        if !routes.per_route_breaker {
            let layer = builder.build()?;
            let handle = layer.handle();
            return Ok((Self::Shared(layer), Breakers::Shared(handle)));
        }
        let cell: Arc<OnceLock<KeyedCircuitBreakerHandle<RouteKey>>> = Arc::new(OnceLock::new());
        let name: Arc<str> = config.name.as_str().into();
        let listener = {
            let cell = Arc::clone(&cell);
            let name = Arc::clone(&name);
            move |event: &CircuitBreakerEvent| {
                if matches!(event, CircuitBreakerEvent::Transition { .. }) {
                    if let Some(handle) = cell.get() {
                        report_states(&name, handle);
                    }
                }
            }
        };
        let layer = builder
            .on_event(listener)
            // Routes are few and each is hot: one shard, one hash per call.
            .unsharded()
            .build_keyed(|_: &()| RouteKey(Repr::Unmatched))?;
        let handle = layer.handle();
        let _ = cell.set(handle.clone());
        crate::metrics_help::describe(METRICS);
        metrics::gauge!("rampart_circuit_breaker_state", "name" => name.to_string()).set(0.0);
        let table = RouteTable {
            grpc: routes
                .grpc_methods
                .iter()
                .map(|m| Arc::from(m.as_str()))
                .collect(),
            paths: Arc::clone(paths),
        };
        Ok((
            Self::PerRoute(Arc::new(PerRoute {
                breakers: layer.shared,
                table,
            })),
            Breakers::PerRoute(RouteBreakers { handle, name }),
        ))
    }

    /// The breaker's decision for `req`: a permit, or the refusal (built
    /// on that path only). With one breaker per route, the route's breaker
    /// is found by the borrowed route (a key is built only for a new route)
    /// and decides under the lookup: neither the route nor the breaker is
    /// cloned.
    #[inline]
    pub(crate) fn decide<B>(&self, req: &Request<B>) -> Result<Permit, Box<Rejection>> {
        match self {
            Self::Shared(layer) => {
                decided(&layer.breaker).map_err(|(refusal, b)| Box::new(b.rejection(refusal)))
            }
            Self::PerRoute(routes) => {
                let table = &routes.table;
                routes
                    .breakers
                    .with_breaker_cached(table.route(req), |_| table.key(req), decide_keyed)
                    .map_err(|(refusal, b)| Box::new(b.rejection(refusal)))
            }
        }
    }

    pub(crate) fn name(&self) -> &str {
        match self {
            Self::Shared(layer) => layer.breaker.core().name(),
            Self::PerRoute(_) => "per-route",
        }
    }
}

/// The handles of the stack's breaker(s).
#[derive(Clone, Debug)]
pub(crate) enum Breakers {
    Shared(CircuitBreakerHandle),
    PerRoute(RouteBreakers),
}

impl Breakers {
    /// The readiness check following the breaker(s): with one breaker per
    /// route, it fails while any route's circuit is open and names them.
    pub(crate) fn check(&self) -> Check {
        match self {
            Self::Shared(handle) => Check::circuit_breaker(handle),
            Self::PerRoute(routes) => {
                let routes = routes.clone();
                Check::sync(Arc::clone(&routes.name), Kind::Readiness, move || {
                    let open = routes.open_routes();
                    if open.is_empty() {
                        Ok(())
                    } else {
                        Err(format!("circuit open for {}", open.join(", ")))
                    }
                })
            }
        }
    }
}

/// Sets `rampart_circuit_breaker_route_state{name, route}` for every route
/// and `rampart_circuit_breaker_state{name}` to the worst of them (open,
/// then forced open, then half-open, else closed), so the alert on the
/// shared gauge still fires with one breaker per route.
fn report_states(name: &Arc<str>, handle: &KeyedCircuitBreakerHandle<RouteKey>) {
    let mut worst = CircuitState::Closed;
    let rank = |s: CircuitState| match s {
        CircuitState::Open => 3,
        CircuitState::ForcedOpen => 2,
        CircuitState::HalfOpen => 1,
        _ => 0,
    };
    for key in handle.keys() {
        let Some(breaker) = handle.get(&key) else {
            continue;
        };
        let state = breaker.state();
        metrics::gauge!(
            "rampart_circuit_breaker_route_state",
            "name" => name.to_string(),
            "route" => key.as_str().to_owned()
        )
        .set(f64::from(state as u8));
        if rank(state) > rank(worst) {
            worst = state;
        }
    }
    metrics::gauge!("rampart_circuit_breaker_state", "name" => name.to_string())
        .set(f64::from(worst as u8));
}

/// The breakers of a stack built with `routes.per_route_breaker = true`:
/// one per route, created on the route's first request.
#[derive(Clone)]
pub struct RouteBreakers {
    handle: KeyedCircuitBreakerHandle<RouteKey>,
    name: Arc<str>,
}

impl RouteBreakers {
    /// The breaker of `route` (an axum route template such as
    /// `/api/sleep/{ms}`, a declared gRPC method, or
    /// [`RouteKey::UNMATCHED`]), if it has seen a request.
    pub fn get(&self, route: &str) -> Option<CircuitBreakerHandle> {
        self.handle.get(&RouteKey(Repr::Named(Arc::from(route))))
    }

    /// The routes that have a breaker now, sorted.
    pub fn routes(&self) -> Vec<String> {
        let mut routes: Vec<String> = self
            .handle
            .keys()
            .iter()
            .map(|k| k.as_str().to_owned())
            .collect();
        routes.sort();
        routes
    }

    /// The routes whose circuit is open or forced open, sorted.
    pub fn open_routes(&self) -> Vec<String> {
        let mut open: Vec<String> = self
            .handle
            .keys()
            .into_iter()
            .filter(|k| {
                self.handle.get(k).is_some_and(|h| {
                    matches!(h.state(), CircuitState::Open | CircuitState::ForcedOpen)
                })
            })
            .map(|k| k.as_str().to_owned())
            .collect();
        open.sort();
        open
    }

    /// How many routes have a breaker now.
    pub fn len(&self) -> usize {
        self.handle.len()
    }

    /// Whether no route has a breaker yet.
    pub fn is_empty(&self) -> bool {
        self.handle.is_empty()
    }

    /// The breakers' name (labels their metrics).
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl fmt::Debug for RouteBreakers {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteBreakers")
            .field("name", &self.name)
            .field("routes", &self.handle.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_by_route() {
        let table = RouteTable {
            grpc: vec![Arc::from("/demo.Greeter/SayHello")].into_boxed_slice(),
            paths: Arc::default(),
        };
        let req = |path: &str| Request::post(path).body(()).unwrap();
        let k = table.key(&req("/demo.Greeter/SayHello"));
        assert_eq!(k.as_str(), "/demo.Greeter/SayHello");
        assert!(!k.is_unmatched());
        let unknown = table.key(&req("/demo.Greeter/Other"));
        assert!(unknown.is_unmatched());
        assert_eq!(unknown, table.key(&req("/made/up")));
        assert_eq!(RouteKey(Repr::Named(Arc::from("unmatched"))), unknown);
        assert_eq!(unknown.to_string(), "unmatched");
        // The borrowed route names what the key names.
        for path in ["/demo.Greeter/SayHello", "/demo.Greeter/Other", "/made/up"] {
            assert_eq!(table.route(&req(path)), table.key(&req(path)).as_str());
        }
    }

    /// A known route is found by its borrowed `str`: the owned key is made
    /// once, for the route's first request, and every request decides on
    /// that one breaker.
    #[test]
    fn a_known_route_is_found_without_a_key() {
        let config = CircuitBreakerConfig::default();
        let routes = RoutesConfig {
            per_route_breaker: true,
            grpc_methods: vec!["/demo.Greeter/SayHello".to_owned()],
            paths: Vec::new(),
        };
        let (layer, breakers) = BreakerLayer::build(&config, &routes, &Arc::default()).unwrap();
        let BreakerLayer::PerRoute(routes) = layer else {
            panic!("per route")
        };
        let Breakers::PerRoute(handles) = breakers else {
            panic!("per route")
        };
        let req = Request::post("/demo.Greeter/SayHello").body(()).unwrap();
        let made = std::cell::Cell::new(0);
        for _ in 0..3 {
            let decision = routes.breakers.with_breaker(
                routes.table.route(&req),
                |_| {
                    made.set(made.get() + 1);
                    routes.table.key(&req)
                },
                decide_keyed,
            );
            assert!(decision.is_ok());
        }
        assert_eq!(made.get(), 1);
        assert_eq!(handles.handle.len(), 1);
    }
}
