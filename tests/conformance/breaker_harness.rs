//! A circuit breaker in front of a fake dependency, served by a real axum
//! server on loopback, for the breaker conformance modules.
//!
//! The dependency answers by path: `/ok` 200, `/fail` 500, `/slow` 200
//! after 5 s, `/slowfail` 500 after 5 s, `/teapot` 418, `/busy` 429, and
//! `/hold` (200) / `/holdfail` (500) once the test releases them, so a call
//! can stay in flight without a timer that paused time would skip to.
//! `/readyz` is the readiness probe following the breaker.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tower_rampart::circuit_breaker::{
    CircuitBreakerBuilder, CircuitBreakerEvent, CircuitBreakerHandle, CircuitState,
    TransitionReason,
};
use tower_rampart::health::{Check, HealthRegistry, ProbeLayer};

use crate::common::{self, Reply};

/// The time a `/slow` call takes.
pub const SLOW: Duration = Duration::from_secs(5);

/// One transition as the event callback saw it.
pub type Move = (CircuitState, CircuitState, TransitionReason);

struct Held {
    gate: Semaphore,
    arrived: AtomicUsize,
    cancelled: AtomicUsize,
}

/// Counts a held call whose future was dropped before it was released.
struct CancelGuard(Arc<Held>, bool);

impl Drop for CancelGuard {
    fn drop(&mut self) {
        if !self.1 {
            self.0.cancelled.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn hold(held: Arc<Held>, status: StatusCode) -> StatusCode {
    held.arrived.fetch_add(1, Ordering::SeqCst);
    let mut guard = CancelGuard(held.clone(), false);
    held.gate.acquire().await.unwrap().forget();
    guard.1 = true;
    status
}

/// The served breaker and what it reported.
pub struct Dep {
    pub addr: SocketAddr,
    pub handle: CircuitBreakerHandle,
    events: Arc<Mutex<Vec<CircuitBreakerEvent>>>,
    held: Arc<Held>,
}

impl Dep {
    /// Builds the breaker from `builder` (recording its events) and serves
    /// it in front of the fake dependency.
    pub async fn start(builder: CircuitBreakerBuilder) -> Dep {
        let events: Arc<Mutex<Vec<CircuitBreakerEvent>>> = Arc::default();
        let sink = events.clone();
        let layer = builder
            .on_event(move |e| sink.lock().unwrap().push(e.clone()))
            .build()
            .expect("valid breaker settings");
        let handle = layer.handle();
        let registry = HealthRegistry::builder()
            .check(Check::circuit_breaker(&handle))
            .build()
            .unwrap();
        let held = Arc::new(Held {
            gate: Semaphore::new(0),
            arrived: AtomicUsize::new(0),
            cancelled: AtomicUsize::new(0),
        });
        let (h1, h2) = (held.clone(), held.clone());
        let app = Router::new()
            .route("/ok", get(|| async { StatusCode::OK }))
            .route("/fail", get(|| async { StatusCode::INTERNAL_SERVER_ERROR }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(SLOW).await;
                    StatusCode::OK
                }),
            )
            .route(
                "/slowfail",
                get(|| async {
                    tokio::time::sleep(SLOW).await;
                    StatusCode::INTERNAL_SERVER_ERROR
                }),
            )
            .route("/teapot", get(|| async { StatusCode::IM_A_TEAPOT }))
            .route("/busy", get(|| async { StatusCode::TOO_MANY_REQUESTS }))
            .route("/hold", get(move || hold(h1.clone(), StatusCode::OK)))
            .route(
                "/holdfail",
                get(move || hold(h2.clone(), StatusCode::INTERNAL_SERVER_ERROR)),
            )
            .layer(layer)
            .layer(ProbeLayer::new(&registry));
        let addr = common::serve(app).await;
        Dep {
            addr,
            handle,
            events,
            held,
        }
    }

    /// `GET path`, the whole answer.
    pub async fn get(&self, path: &str) -> Reply {
        common::get(self.addr, path).await
    }

    /// `GET path`, the status.
    pub async fn status(&self, path: &str) -> u16 {
        self.get(path).await.status.as_u16()
    }

    /// One call after the other, their statuses.
    pub async fn statuses(&self, paths: &[&str]) -> Vec<u16> {
        let mut out = Vec::with_capacity(paths.len());
        for p in paths {
            out.push(self.status(p).await);
        }
        out
    }

    /// `GET path` on its own task (for `/hold`, `/slow`, ...).
    pub fn spawn(&self, path: &'static str) -> JoinHandle<Reply> {
        let addr = self.addr;
        tokio::spawn(async move { common::get(addr, path).await })
    }

    /// Waits (without letting paused time move) until `n` held calls in
    /// all reached the dependency.
    pub async fn wait_arrived(&self, n: usize) {
        until(|| self.held.arrived.load(Ordering::SeqCst) >= n).await;
    }

    /// Lets `n` held calls finish.
    pub fn release(&self, n: usize) {
        self.held.gate.add_permits(n);
    }

    /// Waits until `n` held calls in all were dropped unfinished (the
    /// client went away); the breaker's permit is dropped with them.
    pub async fn wait_cancelled(&self, n: usize) {
        until(|| self.held.cancelled.load(Ordering::SeqCst) >= n).await;
    }

    /// Every event so far.
    pub fn events(&self) -> Vec<CircuitBreakerEvent> {
        self.events.lock().unwrap().clone()
    }

    /// The transitions so far.
    pub fn moves(&self) -> Vec<Move> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                CircuitBreakerEvent::Transition {
                    from, to, reason, ..
                } => Some((from, to, reason)),
                _ => None,
            })
            .collect()
    }

    /// How long each opening lasted, in order.
    pub fn openings(&self) -> Vec<Duration> {
        self.events()
            .into_iter()
            .filter_map(|e| match e {
                CircuitBreakerEvent::Transition {
                    to: CircuitState::Open,
                    open_for,
                    ..
                } => open_for,
                _ => None,
            })
            .collect()
    }

    /// The breaker's state.
    pub fn state(&self) -> CircuitState {
        self.handle.state()
    }
}

/// The `Retry-After` of an answer, in seconds.
pub fn retry_after(reply: &Reply) -> Option<u64> {
    reply
        .headers
        .get("retry-after")
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

/// Yields until `cond` holds. Yielding keeps the runtime busy, so paused
/// time does not jump ahead while loopback I/O is delivered.
pub async fn until(mut cond: impl FnMut() -> bool) {
    for _ in 0..200_000 {
        if cond() {
            return;
        }
        tokio::task::yield_now().await;
    }
    panic!("condition not reached");
}

/// Lets spawned tasks (the breaker's timers) run.
pub async fn settle() {
    for _ in 0..100 {
        tokio::task::yield_now().await;
    }
}

/// Moves paused time forward and lets timers run.
pub async fn advance(d: Duration) {
    tokio::time::advance(d).await;
    settle().await;
}
