//! gobreaker, translated.
//!
//! Source: `sony/gobreaker`, `v2/gobreaker_test.go` (each test names the Go
//! test it translates). gobreaker's `Settings` map onto ours like this:
//! `MaxRequests` = `half_open_permits`, `Timeout` = `open_duration`,
//! `Interval` (the cyclic period that clears the closed state's counts) = a
//! one-bucket time window of that length, `ReadyToTrip` = the failure-rate
//! and consecutive-failure rules, `IsExcluded` = ignored statuses,
//! `IsSuccessful` = the classifier.
//!
//! Deliberate differences, asserted below:
//! - gobreaker clears its counts on every state change; ours keep the window
//!   that tripped the circuit visible while it is open (the operator sees
//!   why), and show the trial calls while half-open.
//! - gobreaker's `State()` moves to half-open when read after `Timeout`;
//!   ours stays open until the next call (Resilience4j's and Polly's rule)
//!   unless `auto_half_open` is set.
//! - gobreaker re-opens on the first failed trial; ours judge the trials
//!   together by the failure rate once all permits are used (Resilience4j's
//!   rule), so one unlucky trial among several does not re-open it.
//! - TestPanicInRequest (a panic counts as a failure) lives with the panic
//!   handling, not here.

use std::time::Duration;

use axum::http::StatusCode;
use tower_rampart::circuit_breaker::{
    CircuitBreakerBuilder, CircuitBreakerLayer, CircuitState as S, TransitionReason as R,
};
use tower_rampart::classify::{Classifier, Outcome};

use crate::breaker_harness::{Dep, advance, retry_after};

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// gobreaker's defaults: trip after more than 5 failures in a row, one
/// trial call, 60 s open, counts never cleared while closed (no rate rule:
/// a window that cannot fill within these tests).
fn defaults() -> CircuitBreakerBuilder {
    CircuitBreakerLayer::builder()
        .name("default")
        .consecutive_failures(6)
        .count_window(100)
        .minimum_calls(100)
        .failure_rate_threshold(100.0)
        .half_open_permits(1)
        .open_duration(SECS(60))
}

/// gobreaker's `newCustom`: MaxRequests 3, Interval 30 s, Timeout 90 s,
/// trip at 3 requests with a failure ratio of at least 0.6, errExcluded
/// excluded (here: 418).
fn custom() -> CircuitBreakerBuilder {
    CircuitBreakerLayer::builder()
        .name("cb")
        .half_open_permits(3)
        .time_window(SECS(30), 1)
        .minimum_calls(3)
        .failure_rate_threshold(60.0)
        .open_duration(SECS(90))
        .ignore_status(StatusCode::IM_A_TEAPOT)
}

// TestDefaultCircuitBreaker
#[tokio::test(start_paused = true)]
async fn default_settings_trip_on_consecutive_failures() {
    let dep = Dep::start(defaults()).await;
    dep.statuses(&["/fail"; 5]).await;
    let c = dep.handle.counts();
    assert_eq!(
        (c.state, c.calls, c.failures, c.consecutive_failures),
        (S::Closed, 5, 5, 5)
    );
    dep.status("/ok").await;
    let c = dep.handle.counts();
    assert_eq!((c.calls, c.consecutive_failures), (6, 0));
    dep.status("/fail").await;
    assert_eq!(dep.handle.counts().consecutive_failures, 1);

    // Closed to open: the sixth failure in a row.
    dep.statuses(&["/fail"; 5]).await;
    let c = dep.handle.counts();
    assert_eq!(c.state, S::Open);
    // gobreaker's counts are zero here; ours show what tripped it.
    assert_eq!((c.calls, c.failures, c.consecutive_failures), (12, 11, 6));
    assert_eq!(dep.moves(), [(S::Closed, S::Open, R::ConsecutiveFailures)]);
    assert_eq!(dep.statuses(&["/ok", "/fail"]).await, [503, 503]);

    advance(SECS(60) - MS(1)).await;
    assert_eq!(dep.state(), S::Open);
    advance(SECS(1)).await;
    // gobreaker reads half-open here; ours waits for the call.
    assert_eq!(dep.state(), S::Open);
    assert_eq!(dep.handle.open_remaining(), Some(Duration::ZERO));

    // Half-open to open: the one trial fails.
    assert_eq!(dep.status("/fail").await, 500);
    assert_eq!(dep.state(), S::Open);

    // Half-open admits `MaxRequests` = 1 trial; others are refused.
    advance(SECS(60) + Duration::from_nanos(1)).await;
    let trial = dep.spawn("/hold");
    dep.wait_arrived(1).await;
    let refused = dep.get("/ok").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after(&refused), Some(1));

    // Half-open to closed: the trial succeeds; counts start afresh.
    dep.release(1);
    assert_eq!(trial.await.unwrap().status, StatusCode::OK);
    let c = dep.handle.counts();
    assert_eq!(
        (c.state, c.calls, c.consecutive_failures),
        (S::Closed, 0, 0)
    );
}

// TestCustomCircuitBreaker
#[tokio::test(start_paused = true)]
async fn custom_settings_interval_ratio_and_max_requests() {
    let dep = Dep::start(custom()).await;
    for _ in 0..5 {
        dep.statuses(&["/ok", "/fail", "/teapot"]).await;
    }
    let c = dep.handle.counts();
    // Excluded calls are not counted at all.
    assert_eq!(
        (c.state, c.calls, c.failures, c.consecutive_failures),
        (S::Closed, 10, 5, 1)
    );
    advance(SECS(30) - MS(1)).await;
    dep.status("/ok").await;
    let c = dep.handle.counts();
    assert_eq!((c.calls, c.consecutive_failures), (11, 0));

    // Over the interval: the counts start again.
    advance(SECS(1)).await;
    dep.status("/fail").await;
    let c = dep.handle.counts();
    assert_eq!((c.state, c.calls, c.failures), (S::Closed, 1, 1));

    // Closed to open: 2 of 3 failed (>= 0.6).
    dep.statuses(&["/ok", "/fail"]).await;
    assert_eq!(dep.state(), S::Open);
    assert_eq!(dep.moves(), [(S::Closed, S::Open, R::FailureRate)]);

    advance(SECS(90) + Duration::from_nanos(1)).await;
    // Excluded calls are neutral in half-open: they give their permit back.
    assert_eq!(dep.statuses(&["/teapot"; 4]).await, [418; 4]);
    assert_eq!(dep.state(), S::HalfOpen);
    // gobreaker re-opens on this first failed trial. We judge the three
    // trials together: 1 of 3 failed, under 60 %, so the circuit closes.
    dep.status("/fail").await;
    assert_eq!(dep.state(), S::HalfOpen);
    dep.statuses(&["/ok", "/ok"]).await;
    assert_eq!(dep.state(), S::Closed);

    // Successes do not close it before `MaxRequests` trials ended ...
    dep.statuses(&["/ok", "/fail", "/fail"]).await;
    assert_eq!(dep.state(), S::Open);
    advance(SECS(90)).await;
    dep.statuses(&["/ok", "/ok"]).await;
    let c = dep.handle.counts();
    assert_eq!((c.state, c.calls, c.failures), (S::HalfOpen, 2, 0));
    let third = dep.spawn("/hold");
    dep.wait_arrived(1).await;
    // ... and a call over `MaxRequests` is refused (ErrTooManyRequests).
    assert_eq!(dep.status("/ok").await, 503);
    dep.release(1);
    assert_eq!(third.await.unwrap().status, StatusCode::OK);
    let c = dep.handle.counts();
    assert_eq!((c.state, c.calls), (S::Closed, 0));
    assert_eq!(
        dep.moves().last(),
        Some(&(S::HalfOpen, S::Closed, R::TrialsSucceeded))
    );
}

// TestGeneration: a result from an older generation has no effect. Our
// generations change with the state (a sliding window needs none to roll
// over), so the late call here spans a trip.
#[tokio::test(start_paused = true)]
async fn results_from_an_older_generation_have_no_effect() {
    let dep = Dep::start(custom()).await;
    let late = dep.spawn("/hold");
    dep.wait_arrived(1).await;
    dep.statuses(&["/ok", "/fail", "/fail"]).await;
    assert_eq!(dep.state(), S::Open);
    advance(SECS(90)).await;
    dep.status("/ok").await;
    assert_eq!(dep.handle.counts().calls, 1);
    dep.release(1);
    assert_eq!(late.await.unwrap().status, StatusCode::OK);
    let c = dep.handle.counts();
    assert_eq!((c.state, c.calls), (S::HalfOpen, 1), "not a trial");
}

// TestGeneration's interval rollover: gobreaker discards a call that
// started before the interval ended. Ours counts a call when it ends (as
// Resilience4j does), in the window of that moment.
#[tokio::test(start_paused = true)]
async fn a_call_spanning_the_interval_counts_when_it_ends() {
    let dep = Dep::start(custom()).await;
    advance(SECS(29)).await;
    dep.status("/ok").await;
    let call = dep.spawn("/hold");
    dep.wait_arrived(1).await;
    advance(SECS(1)).await; // over the interval
    assert_eq!(dep.handle.counts().calls, 0);
    dep.release(1);
    call.await.unwrap();
    assert_eq!(dep.handle.counts().calls, 1);
}

// TestCustomIsSuccessful, TestIsExcludedAndIsSuccessfulCombination
#[tokio::test(start_paused = true)]
async fn is_successful_and_is_excluded() {
    // IsSuccessful says every call succeeded.
    let all_good =
        Dep::start(defaults().classifier(Classifier::default().http_fn(|_, _| Outcome::Success)))
            .await;
    all_good.statuses(&["/fail"; 6]).await;
    let c = all_good.handle.counts();
    assert_eq!((c.state, c.calls, c.failures), (S::Closed, 6, 0));

    let dep = Dep::start(defaults().ignore_status(StatusCode::IM_A_TEAPOT)).await;
    dep.statuses(&["/teapot"; 3]).await;
    assert_eq!(dep.handle.counts().calls, 0, "excluded: not counted");
    dep.statuses(&["/ok"; 3]).await;
    let c = dep.handle.counts();
    assert_eq!((c.calls, c.failures), (3, 0));
    dep.statuses(&["/fail"; 2]).await;
    let c = dep.handle.counts();
    assert_eq!((c.calls, c.failures, c.consecutive_failures), (5, 2, 2));
}

// TestCircuitBreakerInParallel (bounded: 4 tasks of 25 calls on loopback)
#[tokio::test(start_paused = true)]
async fn parallel_calls_add_up() {
    let dep = Dep::start(custom().count_window(1_000).minimum_calls(1_000)).await;
    let tasks: Vec<_> = (0..4)
        .map(|_| {
            let addr = dep.addr;
            tokio::spawn(async move {
                for i in 0..25 {
                    let path = if i % 2 == 0 { "/ok" } else { "/teapot" };
                    crate::common::get(addr, path).await;
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let c = dep.handle.counts();
    // 4 tasks x 13 successes; the 48 excluded calls are not counted.
    assert_eq!((c.state, c.calls, c.failures), (S::Closed, 4 * 13, 0));
}

// gobreaker's `State()` reads half-open once `Timeout` has passed, without a
// request: `auto_half_open` gives a handle that view.
#[tokio::test(start_paused = true)]
async fn auto_half_open_reads_like_gobreaker_state() {
    let dep = Dep::start(defaults().auto_half_open(true)).await;
    dep.statuses(&["/fail"; 6]).await;
    assert_eq!(dep.state(), S::Open);
    advance(SECS(60)).await;
    assert_eq!(dep.state(), S::HalfOpen);
    assert_eq!(dep.status("/ok").await, 200);
    assert_eq!(dep.state(), S::Closed);
}
