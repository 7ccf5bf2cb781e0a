//! Heap allocations per admitted request through the whole stack (issue
//! 14): the stack as `examples/production.rs` builds it from
//! `examples/configs/production.toml` (probes, platform paths, drain, rate
//! limit with a per-client and a global quota, a breaker per route,
//! timeout with the `Deadline` extension, panic catching), the Prometheus
//! recorder installed, around an inner service that is ready at once and
//! allocates nothing itself.
//!
//! A counting global allocator (so this is a test binary of its own,
//! `[[test]] name = "alloc"`) counts, on the test's thread only, every
//! `alloc`/`realloc` made during `poll_ready`, `call`, polling the
//! response future to completion, reading the response body to its end
//! and dropping the response, for `N` requests after a warm-up. The requests
//! are built before counting, with the extensions the `serve` loop gives
//! every request (the peer address as `SocketAddr` and axum's
//! `ConnectInfo`).
//!
//! The expected count is asserted exactly; each allocation that remains has
//! its reason next to the number.
#![cfg(all(feature = "config", feature = "axum"))]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body::Body;
use http_body_util::Full;
use tower::{Layer, Service};
use tower_rampart::config::RampartConfig;

struct Counting;

thread_local! {
    /// Counting on this thread (other threads, such as tokio's, are not
    /// the request path under test).
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static COUNT: Cell<u64> = const { Cell::new(0) };
}

fn note() {
    // `try_with`: the allocator also runs while thread-locals are torn down.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = COUNT.try_with(|c| c.set(c.get() + 1));
        }
    });
}

// SAFETY: every call is forwarded unchanged to `System`; counting touches
// only `const`-initialised thread-locals, which never allocate.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc(layout) }
    }
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note();
        // SAFETY: forwarded with the caller's layout.
        unsafe { System.alloc_zeroed(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note();
        // SAFETY: forwarded unchanged.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static ALLOC: Counting = Counting;

/// Allocations made by `f` on this thread.
fn count<T>(f: impl FnOnce() -> T) -> (T, u64) {
    COUNT.with(|c| c.set(0));
    COUNTING.with(|on| on.set(true));
    let out = f();
    COUNTING.with(|on| on.set(false));
    (out, COUNT.with(Cell::get))
}

/// The production config, with quotas no test run can spend and no signal
/// handlers.
fn production_config() -> RampartConfig {
    let file = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/configs/production.toml"
    );
    let mut config = RampartConfig::load(file).unwrap_or_else(|e| panic!("{e}"));
    config.shutdown.signals = false;
    for q in &mut config.rate_limit.as_mut().unwrap().quotas {
        q.rate = "100000000/s".to_owned();
        q.burst = Some(1_000_000);
    }
    config
}

/// The answer of [`app`].
type Answer = std::future::Ready<Result<Response<Full<Bytes>>, Infallible>>;

/// Ready at once; the response body is a static `Bytes` (no allocation).
fn app() -> impl Service<
    Request<Full<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = Answer,
> + Clone {
    tower::service_fn(|_req: Request<Full<Bytes>>| {
        std::future::ready(Ok(Response::new(Full::new(Bytes::from_static(b"ok\n")))))
    })
}

/// A request as the `serve` loop hands it to the service.
fn request(path: &'static str) -> Request<Full<Bytes>> {
    let peer: SocketAddr = "192.0.2.7:50000".parse().unwrap();
    let mut req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
    req.extensions_mut().insert(peer);
    req.extensions_mut()
        .insert(axum::extract::ConnectInfo(peer));
    req
}

/// `poll_ready`, `call`, the future to completion and the body to its end,
/// polled with a no-op waker (everything here is ready at once); returns
/// the status and the body's length.
fn one<S, B>(svc: &mut S, req: Request<Full<Bytes>>) -> (StatusCode, usize)
where
    S: Service<Request<Full<Bytes>>, Response = Response<B>>,
    S::Error: std::fmt::Debug,
    B: Body<Data = Bytes>,
    B::Error: std::fmt::Debug,
{
    let mut cx = Context::from_waker(Waker::noop());
    match svc.poll_ready(&mut cx) {
        Poll::Ready(r) => r.unwrap(),
        Poll::Pending => panic!("the stack must be ready"),
    }
    let mut fut = pin!(svc.call(req));
    let res = loop {
        if let Poll::Ready(r) = fut.as_mut().poll(&mut cx) {
            break r.unwrap();
        }
    };
    let status = res.status();
    let mut body = pin!(res.into_body());
    let mut len = 0;
    loop {
        match body.as_mut().poll_frame(&mut cx) {
            Poll::Ready(Some(frame)) => {
                if let Ok(data) = frame.unwrap().into_data() {
                    len += data.len();
                }
            }
            Poll::Ready(None) => break,
            Poll::Pending => panic!("the body is ready at once"),
        }
    }
    (status, len)
}

const N: usize = 1000;

/// Allocations for `N` admitted requests to `path` through the stack built
/// from `config`, after a warm-up (the client's rate-limit key, the
/// route's breaker, thread-local lanes).
fn allocations_per_request(config: &RampartConfig, path: &'static str) -> u64 {
    let stack = config.stack().build().unwrap();
    let mut svc = stack.layer().layer(app());
    for _ in 0..100 {
        assert_eq!(one(&mut svc, request(path)), (StatusCode::OK, 3));
    }
    let requests: Vec<_> = (0..N).map(|_| request(path)).collect();
    let (ok, allocations) = count(|| {
        requests
            .into_iter()
            .map(|req| one(&mut svc, req))
            .filter(|r| *r == (StatusCode::OK, 3))
            .count()
    });
    assert_eq!(ok, N, "every request admitted and answered");
    assert_eq!(
        allocations % N as u64,
        0,
        "{allocations} allocations for {N} requests: not the same for each"
    );
    allocations / N as u64
}

#[tokio::test(flavor = "current_thread")]
async fn the_full_stack_allocates_nothing_per_admitted_request() {
    // The recorder of the example: metric handles are registered when the
    // layers are built, and recording through them must not allocate.
    let _recorder = metrics_exporter_prometheus::PrometheusBuilder::new()
        .install_recorder()
        .unwrap();
    let config = production_config();

    // The one allocation left, and only when the config asks for it:
    // `timeout.deadline_extension = true` (opt-in; production.toml shows
    // it, off) puts the `Deadline` into the request's `http::Extensions`, which boxes
    // every value (src/timeout/deadline.rs, `set_deadline`). The serve
    // loop's peer-address extensions already created the map and its
    // table, so it is the value's box only.
    let deadline_box = u64::from(config.timeout.deadline_extension);
    assert_eq!(allocations_per_request(&config, "/api/ok"), deadline_box);

    // Without the extension: zero, through every other layer (probes,
    // platform paths, drain, both quotas of the rate limit, the route's
    // breaker, the timeout, the panic catcher) and the body.
    let mut no_extension = config.clone();
    no_extension.timeout.deadline_extension = false;
    assert_eq!(allocations_per_request(&no_extension, "/api/ok"), 0);

    // One breaker for every request instead of one per route: zero too.
    no_extension.routes.per_route_breaker = false;
    assert_eq!(allocations_per_request(&no_extension, "/api/ok"), 0);

    // The platform's endpoints (`/metrics`), outside the protections, with
    // panic catching only: one, the endpoint's future, boxed so that this
    // rare variant does not make every admitted request's future larger
    // (by the size of the application's future: `benches/README.md`,
    // "The front's future").
    assert_eq!(allocations_per_request(&no_extension, "/metrics"), 1);
}

/// The same handler in an axum `Router`, bare and with the stack, the two
/// ways it can be applied. Shows what the stack costs *through axum* on
/// top of the zero above: axum itself allocates per request (the handler's
/// boxed future, the boxed response body, its route service's boxed clone),
/// and a stack applied with `Router::layer` is part of the route service
/// that axum clones for every request.
#[tokio::test(flavor = "current_thread")]
async fn through_an_axum_router() {
    use axum::Router;
    use axum::routing::get;

    let mut config = production_config();
    config.timeout.deadline_extension = false;
    let router0 = || Router::new().route("/api/ok", get(|| async { "ok\n" }));
    let router = || router0().with_state(());

    let measure = |mut svc: axum::routing::RouterIntoService<Full<Bytes>>| {
        for _ in 0..100 {
            assert_eq!(one(&mut svc, request("/api/ok")), (StatusCode::OK, 3));
        }
        let requests: Vec<_> = (0..N).map(|_| request("/api/ok")).collect();
        let (_, n) = count(|| {
            for req in requests {
                assert_eq!(one(&mut svc, req), (StatusCode::OK, 3));
            }
        });
        assert_eq!(n % N as u64, 0, "{n} allocations for {N} requests");
        n / N as u64
    };
    let bare = measure(router().into_service());
    let lazy = measure(router0().layer(stack_for_lazy(&config)).into_service());
    let bare_lazy = measure(router0().into_service());
    // A `Router<()>` that was never given its state (no `.with_state(())`,
    // which `axum::serve` and `tower_rampart::serve` call for you) turns
    // its handlers into routes, applying every route layer, on every
    // request: the stack's `layer()` itself runs per request (its
    // shared bypass, axum's boxing of the new route) on top of the three
    // below.
    assert_eq!(lazy, bare_lazy + 6, "bare lazy router: {bare_lazy}");

    // `Router::layer` (the way to key per-route breakers by axum's matched
    // path without declaring `routes.paths`): three more, all axum's way of calling a route, none in
    // the stack's own code. axum clones the route's service for every
    // request, and the stack's service holds the application (a boxed
    // axum `Route`): 1 boxed clone (the platform bypass copy is shared,
    // not cloned). That copy is then called as a `Route` itself: its
    // boxed future, 1. The stack's response body is boxed into axum's
    // `Body`, 1.
    let stack = config.stack().build().unwrap();
    let per_route = measure(router().layer(stack.layer()).into_service());
    assert_eq!(per_route, bare + 3, "bare router: {bare}");

    // Around the whole router (as the production example does: its
    // breakers per route found by the templates `routes.paths` declares),
    // the stack is called in place: nothing more than the bare router.
    assert!(config.routes.per_route_breaker && !config.routes.paths.is_empty());
    let stack = config.stack().build().unwrap();
    let svc = stack.layer().layer(router());
    let mut svc = svc;
    for _ in 0..100 {
        assert_eq!(one(&mut svc, request("/api/ok")), (StatusCode::OK, 3));
    }
    let requests: Vec<_> = (0..N).map(|_| request("/api/ok")).collect();
    let (_, around) = count(|| {
        for req in requests {
            assert_eq!(one(&mut svc, req), (StatusCode::OK, 3));
        }
    });
    assert_eq!(around, bare * N as u64, "bare router: {bare}");
}

fn stack_for_lazy(config: &RampartConfig) -> tower_rampart::config::RampartLayer {
    config.stack().build().unwrap().layer()
}
