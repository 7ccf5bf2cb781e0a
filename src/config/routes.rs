//! The stack's circuit breaker, shared or kept per route.

use std::borrow::Borrow;
use std::fmt;
use std::hash::{Hash, Hasher};
use std::sync::{Arc, OnceLock};

use http::Request;

use crate::circuit_breaker::{
    Breaker, CircuitBreakerBuilder, CircuitBreakerConfig, CircuitBreakerEvent,
    CircuitBreakerHandle, CircuitBreakerLayer, CircuitState, KeyedCircuitBreakerHandle,
    KeyedShared, Permit, decide_keyed, decided,
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
    /// The number of `req`'s declared route, if it has one: a declared
    /// gRPC method's (in declared order), else a declared path template's
    /// (after the methods, in [`RoutePaths::position`]'s order). What
    /// [`names`](Self::names) lists in the same order.
    #[inline]
    fn declared<B>(&self, req: &Request<B>) -> Option<usize> {
        let path = req.uri().path();
        if let Some(i) = self.grpc.iter().position(|m| **m == *path) {
            return Some(i);
        }
        self.paths.position(path).map(|i| self.grpc.len() + i)
    }

    /// Every declared route, numbered as [`declared`](Self::declared)
    /// numbers them.
    fn names(&self) -> impl Iterator<Item = &Arc<str>> {
        self.grpc.iter().chain(self.paths.names())
    }

    /// The route of a request with no declared route, borrowed: what
    /// [`other_key`](Self::other_key) would name (`RouteKey` borrows as
    /// this `str`), for a lookup that builds no key.
    #[inline]
    fn other<B>(req: &Request<B>) -> &str {
        #[cfg(feature = "axum")]
        if let Some(m) = req.extensions().get::<axum::extract::MatchedPath>() {
            return m.as_str();
        }
        let _ = req;
        RouteKey::UNMATCHED
    }

    /// The route of a request with no declared route as a key of its own
    /// (a new route's breaker): no allocation (a reference count at most).
    #[inline]
    fn other_key<B>(req: &Request<B>) -> RouteKey {
        #[cfg(feature = "axum")]
        if let Some(m) = req.extensions().get::<axum::extract::MatchedPath>() {
            return RouteKey(Repr::Matched(m.clone()));
        }
        let _ = req;
        RouteKey(Repr::Unmatched)
    }
}

/// A declared route's breaker: made with the stack, never evicted.
struct Declared {
    route: Arc<str>,
    breaker: Breaker,
    /// Declared twice (a path template spelled as a declared gRPC method):
    /// the first one's breaker, not listed again.
    alias: bool,
}

impl Declared {
    /// The declared routes' breakers, numbered as the table numbers the
    /// routes.
    fn all(table: &RouteTable, others: &KeyedShared<RouteKey>) -> Arc<[Self]> {
        let mut all: Vec<Self> = Vec::new();
        for route in table.names() {
            let first = all.iter().find(|d| d.route == *route);
            let declared = match first {
                Some(first) => Self {
                    route: Arc::clone(route),
                    breaker: first.breaker.clone(),
                    alias: true,
                },
                None => Self {
                    route: Arc::clone(route),
                    breaker: others.breaker_outside(),
                    alias: false,
                },
            };
            all.push(declared);
        }
        all.into()
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
    table: RouteTable,
    /// The declared routes' breakers, found by the route's number: no
    /// lookup by name, no lock, no clock reading.
    declared: Arc<[Declared]>,
    /// The other routes' breakers (axum's matched paths not declared, and
    /// `unmatched`), each made on its route's first request, in a keyed map
    /// read through each thread's cache.
    others: Arc<KeyedShared<RouteKey>>,
}

impl PerRoute {
    /// The breaker's decision for a request with no declared route: the
    /// declared breaker of the same name if axum names one (a route the
    /// table did not match as axum did), else the route's own in the map.
    /// Not inlined: the declared routes' path stays small.
    #[inline(never)]
    fn decide_other<B>(&self, req: &Request<B>) -> Result<Permit, Box<Rejection>> {
        let route = RouteTable::other(req);
        if let Some(d) = self.declared.iter().find(|d| *d.route == *route) {
            return decided(&d.breaker).map_err(|(refusal, b)| Box::new(b.rejection(refusal)));
        }
        self.others
            .with_breaker_cached(route, |_| RouteTable::other_key(req), decide_keyed)
            .map_err(|(refusal, b)| Box::new(b.rejection(refusal)))
    }
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
        let cell: Arc<OnceLock<RouteBreakers>> = Arc::new(OnceLock::new());
        let name: Arc<str> = config.name.as_str().into();
        let listener = {
            let cell = Arc::clone(&cell);
            move |event: &CircuitBreakerEvent| {
                if matches!(event, CircuitBreakerEvent::Transition { .. }) {
                    if let Some(routes) = cell.get() {
                        report_states(routes);
                    }
                }
            }
        };
        let layer = builder
            .on_event(listener)
            // Routes are few and each is hot: one shard, one hash per call.
            .unsharded()
            .build_keyed(|_: &()| RouteKey(Repr::Unmatched))?;
        let table = RouteTable {
            grpc: routes
                .grpc_methods
                .iter()
                .map(|m| Arc::from(m.as_str()))
                .collect(),
            paths: Arc::clone(paths),
        };
        let declared = Declared::all(&table, &layer.shared);
        let handles = RouteBreakers {
            declared: Arc::clone(&declared),
            others: layer.handle(),
            name,
        };
        let _ = cell.set(handles.clone());
        crate::metrics_help::describe(METRICS);
        // Every declared route's gauge from the start (closed), and the
        // shared one.
        report_states(&handles);
        Ok((
            Self::PerRoute(Arc::new(PerRoute {
                table,
                declared,
                others: layer.shared,
            })),
            Breakers::PerRoute(handles),
        ))
    }

    /// The breaker's decision for `req`: a permit, or the refusal (built
    /// here, with the breaker's name and retry time, so that the caller
    /// needs no breaker of its own to answer; with one breaker per route,
    /// on that path only). With one breaker per route, a declared route's
    /// breaker is found by the route's number, any other route's by the
    /// borrowed route (a key is built only for a new route); either
    /// decides in place: neither the route nor the breaker is cloned.
    #[inline]
    pub(crate) fn decide<B>(&self, req: &Request<B>) -> Result<Permit, Box<Rejection>> {
        match self {
            Self::Shared(layer) => {
                decided(&layer.breaker).map_err(|(refusal, b)| Box::new(b.rejection(refusal)))
            }
            Self::PerRoute(routes) => match routes.table.declared(req) {
                Some(i) => decided(&routes.declared[i].breaker)
                    .map_err(|(refusal, b)| Box::new(b.rejection(refusal))),
                None => routes.decide_other(req),
            },
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
fn report_states(routes: &RouteBreakers) {
    let mut worst = CircuitState::Closed;
    let rank = |s: CircuitState| match s {
        CircuitState::Open => 3,
        CircuitState::ForcedOpen => 2,
        CircuitState::HalfOpen => 1,
        _ => 0,
    };
    routes.each(|route, breaker| {
        let state = breaker.state();
        metrics::gauge!(
            "rampart_circuit_breaker_route_state",
            "name" => routes.name.to_string(),
            "route" => route.to_owned()
        )
        .set(f64::from(state as u8));
        if rank(state) > rank(worst) {
            worst = state;
        }
    });
    metrics::gauge!("rampart_circuit_breaker_state", "name" => routes.name.to_string())
        .set(f64::from(worst as u8));
}

/// The breakers of a stack built with `routes.per_route_breaker = true`:
/// one per route. A declared route's (`routes.paths`,
/// `routes.grpc_methods`) is made with the stack and kept for its
/// lifetime; any other route's (an axum route template not declared,
/// [`RouteKey::UNMATCHED`]) on the route's first request, and forgotten
/// once idle for `key_idle_timeout` or to make room under `max_keys`.
#[derive(Clone)]
pub struct RouteBreakers {
    declared: Arc<[Declared]>,
    others: KeyedCircuitBreakerHandle<RouteKey>,
    name: Arc<str>,
}

impl RouteBreakers {
    /// The breaker of `route` (an axum route template such as
    /// `/api/sleep/{ms}`, a declared gRPC method, or
    /// [`RouteKey::UNMATCHED`]): a declared route's always, any other
    /// route's if it has seen a request (and has not been forgotten since).
    pub fn get(&self, route: &str) -> Option<CircuitBreakerHandle> {
        match self.declared.iter().find(|d| *d.route == *route) {
            Some(d) => Some(CircuitBreakerHandle::new(d.breaker.core().clone())),
            None => self.others.get(&RouteKey(Repr::Named(Arc::from(route)))),
        }
    }

    /// `f` of every route that has a breaker now, with its breaker: the
    /// declared ones first.
    fn each(&self, mut f: impl FnMut(&str, CircuitBreakerHandle)) {
        for d in self.declared.iter().filter(|d| !d.alias) {
            f(
                &d.route,
                CircuitBreakerHandle::new(d.breaker.core().clone()),
            );
        }
        for key in self.others.keys() {
            if let Some(handle) = self.others.get(&key) {
                f(key.as_str(), handle);
            }
        }
    }

    /// The routes that have a breaker now (every declared route, and the
    /// others that have seen a request), sorted.
    pub fn routes(&self) -> Vec<String> {
        let mut routes = Vec::with_capacity(self.len());
        self.each(|route, _| routes.push(route.to_owned()));
        routes.sort();
        routes
    }

    /// The routes whose circuit is open or forced open, sorted.
    pub fn open_routes(&self) -> Vec<String> {
        let mut open = Vec::new();
        self.each(|route, breaker| {
            if matches!(
                breaker.state(),
                CircuitState::Open | CircuitState::ForcedOpen
            ) {
                open.push(route.to_owned());
            }
        });
        open.sort();
        open
    }

    /// How many routes have a breaker now.
    pub fn len(&self) -> usize {
        self.declared.iter().filter(|d| !d.alias).count() + self.others.len()
    }

    /// Whether no route has a breaker (no route is declared and none has
    /// seen a request).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
            .field("routes", &self.len())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn per_route(grpc: &[&str], paths: &[&str]) -> (Arc<PerRoute>, RouteBreakers) {
        let routes = RoutesConfig {
            per_route_breaker: true,
            grpc_methods: grpc.iter().map(|m| (*m).to_owned()).collect(),
            paths: paths.iter().map(|p| (*p).to_owned()).collect(),
        };
        let paths = Arc::new(RoutePaths::new(&routes.paths).unwrap());
        let (layer, breakers) =
            BreakerLayer::build(&CircuitBreakerConfig::default(), &routes, &paths).unwrap();
        let (BreakerLayer::PerRoute(layer), Breakers::PerRoute(handles)) = (layer, breakers) else {
            panic!("per route")
        };
        (layer, handles)
    }

    #[test]
    fn keys_compare_by_route() {
        let req = |path: &str| Request::post(path).body(()).unwrap();
        let unknown = RouteTable::other_key(&req("/demo.Greeter/Other"));
        assert!(unknown.is_unmatched());
        assert_eq!(unknown, RouteTable::other_key(&req("/made/up")));
        assert_eq!(RouteKey(Repr::Named(Arc::from("unmatched"))), unknown);
        assert_eq!(unknown.to_string(), "unmatched");
        let named = RouteKey(Repr::Named(Arc::from("/demo.Greeter/SayHello")));
        assert!(!named.is_unmatched());
        // The borrowed route names what the key names.
        for path in ["/demo.Greeter/Other", "/made/up"] {
            assert_eq!(
                RouteTable::other(&req(path)),
                RouteTable::other_key(&req(path)).as_str()
            );
        }
    }

    /// Declared routes are numbered methods first, then templates, and a
    /// request's number names its route.
    #[test]
    fn declared_routes_are_found_by_number() {
        let (layer, handles) = per_route(
            &["/demo.Greeter/SayHello", "/demo.Greeter/SayBye"],
            &["/api/{id}", "/api/ok"],
        );
        let names: Vec<&Arc<str>> = layer.table.names().collect();
        let req = |path: &str| Request::post(path).body(()).unwrap();
        for (path, route) in [
            ("/demo.Greeter/SayBye", "/demo.Greeter/SayBye"),
            ("/demo.Greeter/SayHello", "/demo.Greeter/SayHello"),
            ("/api/ok", "/api/ok"),
            ("/api/7", "/api/{id}"),
        ] {
            let i = layer.table.declared(&req(path)).unwrap();
            assert_eq!(&**names[i], route, "{path}");
            assert_eq!(*layer.declared[i].route, *route, "{path}");
        }
        assert_eq!(layer.table.declared(&req("/demo.Greeter/Other")), None);
        assert_eq!(layer.table.declared(&req("/api/7/x")), None);
        // Every declared route has its breaker from the start.
        assert_eq!(
            handles.routes(),
            [
                "/api/ok",
                "/api/{id}",
                "/demo.Greeter/SayBye",
                "/demo.Greeter/SayHello"
            ]
        );
        assert!(handles.get("/api/{id}").is_some());
        assert!(handles.get(RouteKey::UNMATCHED).is_none());
    }

    /// A declared route decides on its own breaker, outside the map: the
    /// map holds only the routes that are not declared, each made once.
    #[test]
    fn declared_routes_stay_out_of_the_map() {
        let (layer, handles) = per_route(&["/demo.Greeter/SayHello"], &["/api/ok"]);
        let layer = BreakerLayer::PerRoute(layer);
        for path in ["/demo.Greeter/SayHello", "/api/ok"] {
            for _ in 0..3 {
                let permit = layer
                    .decide(&Request::post(path).body(()).unwrap())
                    .unwrap();
                permit.complete(crate::classify::Outcome::Success);
            }
        }
        assert_eq!(handles.others.len(), 0);
        assert_eq!(handles.get("/api/ok").unwrap().counts().calls, 3);
        assert_eq!(
            handles
                .get("/demo.Greeter/SayHello")
                .unwrap()
                .counts()
                .calls,
            3
        );
        for _ in 0..3 {
            let permit = layer
                .decide(&Request::post("/nope").body(()).unwrap())
                .unwrap();
            permit.complete(crate::classify::Outcome::Success);
        }
        assert_eq!(handles.others.len(), 1);
        assert_eq!(handles.len(), 3);
        assert_eq!(handles.get(RouteKey::UNMATCHED).unwrap().counts().calls, 3);
    }

    /// A path template spelled as a declared gRPC method is one route with
    /// one breaker, listed once.
    #[test]
    fn a_route_declared_twice_is_one_breaker() {
        let (layer, handles) = per_route(&["/demo.Greeter/SayHello"], &["/demo.Greeter/SayHello"]);
        assert_eq!(handles.routes(), ["/demo.Greeter/SayHello"]);
        assert_eq!(handles.len(), 1);
        assert!(Arc::ptr_eq(
            layer.declared[0].breaker.core(),
            layer.declared[1].breaker.core()
        ));
    }
}
