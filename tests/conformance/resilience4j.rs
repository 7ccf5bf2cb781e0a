//! Resilience4j's circuit breaker, translated.
//!
//! Source: `resilience4j/resilience4j`,
//! `resilience4j-circuitbreaker/src/test/java/io/github/resilience4j/circuitbreaker/internal/CircuitBreakerStateMachineTest.java`
//! (each test names the JUnit test it translates), and the Resilience4j
//! CircuitBreaker documentation for the settings that file leaves out
//! (`automaticTransitionFromOpenToHalfOpenEnabled`,
//! `maxWaitDurationInHalfOpenState`, `transitionToOpenStateFor`).
//!
//! The settings mirror that test's `setUp`: failure rate 50 %, 4 calls
//! permitted in half-open, calls slower than 4 s are slow, slow-call rate
//! 50 %, a window of 5 calls judged once full, 5 s wait in open. Where R4j
//! records with `onError`/`onSuccess`, these tests send real requests.

use std::time::Duration;

use axum::http::StatusCode;
use tower_rampart::circuit_breaker::{
    CircuitBreakerBuilder, CircuitBreakerEvent, CircuitBreakerLayer, CircuitState as S,
    TransitionReason as R,
};

use crate::breaker_harness::{Dep, advance, retry_after, settle};

fn r4j() -> CircuitBreakerBuilder {
    CircuitBreakerLayer::builder()
        .name("testName")
        .failure_rate_threshold(50.0)
        .half_open_permits(4)
        .slow_call_duration_threshold(Duration::from_secs(4))
        .slow_call_rate_threshold(50.0)
        .count_window(5)
        .minimum_calls(5)
        .open_duration(Duration::from_secs(5))
}

const SECS: fn(u64) -> Duration = Duration::from_secs;
const MS: fn(u64) -> Duration = Duration::from_millis;

/// Trips the breaker with five failures.
async fn trip(dep: &Dep) {
    assert_eq!(dep.statuses(&["/fail"; 5]).await, [500; 5]);
    assert_eq!(dep.state(), S::Open);
}

// shouldOpenAfterFailureRateThresholdExceeded
#[tokio::test(start_paused = true)]
async fn opens_when_the_failure_rate_reaches_the_threshold() {
    let dep = Dep::start(r4j()).await;
    for (i, path) in ["/fail", "/fail", "/fail", "/ok"].iter().enumerate() {
        dep.status(path).await;
        let c = dep.handle.counts();
        assert_eq!(c.state, S::Closed);
        assert_eq!(c.calls as usize, i + 1);
        assert_eq!(c.failures, (i + 1).min(3) as u64);
        // R4j reports -1 until the window holds the minimum: we say None.
        assert_eq!(c.failure_rate, None);
    }
    dep.status("/ok").await;
    let c = dep.handle.counts();
    assert_eq!(c.state, S::Open);
    assert_eq!(
        (c.calls, c.failures, c.failure_rate, c.not_permitted),
        (5, 3, Some(60.0), 0)
    );
    assert_eq!(dep.moves(), [(S::Closed, S::Open, R::FailureRate)]);
    // A refused call is a "not permitted" call; the window that tripped
    // the circuit stays visible while it is open.
    let refused = dep.get("/ok").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after(&refused), Some(5));
    let c = dep.handle.counts();
    assert_eq!(
        (c.calls, c.failures, c.failure_rate, c.not_permitted),
        (5, 3, Some(60.0), 1)
    );
}

// shouldOpenAfterSlowCallRateThresholdExceeded
#[tokio::test(start_paused = true)]
async fn opens_when_the_slow_call_rate_reaches_the_threshold() {
    let dep = Dep::start(r4j()).await;
    // slow failure, slow success, fast failure, fast success ...
    dep.statuses(&["/slowfail", "/slow", "/fail", "/ok"]).await;
    assert_eq!(dep.state(), S::Closed);
    // ... and a slow success: 3 of 5 slow (60 %), 2 of 5 failed (40 %).
    dep.status("/slow").await;
    let c = dep.handle.counts();
    assert_eq!(c.state, S::Open);
    assert_eq!((c.calls, c.slow_calls, c.failures), (5, 3, 2));
    assert_eq!(c.slow_call_rate, Some(60.0));
    assert_eq!(c.failure_rate, Some(40.0));
    assert_eq!(dep.moves(), [(S::Closed, S::Open, R::SlowCallRate)]);
}

// The `minimumNumberOfCalls` setting: no rate is judged before it.
#[tokio::test(start_paused = true)]
async fn no_rate_is_judged_below_the_minimum_number_of_calls() {
    let dep = Dep::start(r4j().count_window(10).minimum_calls(5)).await;
    dep.statuses(&["/fail"; 4]).await;
    let c = dep.handle.counts();
    assert_eq!((c.state, c.calls, c.failure_rate), (S::Closed, 4, None));
    dep.status("/ok").await; // the 5th call: 4 of 5 failed
    assert_eq!(dep.state(), S::Open);
}

// shouldThrowCallNotPermittedExceptionWhenStateIsOpen
#[tokio::test(start_paused = true)]
async fn open_refuses_and_counts_the_call_as_not_permitted() {
    let dep = Dep::start(r4j()).await;
    dep.handle.open(SECS(5));
    let refused = dep.get("/ok").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(retry_after(&refused), Some(5));
    assert_eq!(dep.handle.counts().not_permitted, 1);
}

// shouldThrowCallNotPermittedExceptionWhenStateIsForcedOpen,
// shouldForceOpenCircuitBreaker
#[tokio::test(start_paused = true)]
async fn forced_open_refuses_and_never_half_opens() {
    let dep = Dep::start(r4j()).await;
    dep.statuses(&["/ok", "/fail"]).await;
    dep.handle.force_open();
    let refused = dep.get("/ok").await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
    // R4j's CallNotPermittedException carries no time; over HTTP a 503
    // without Retry-After invites immediate retries, so an isolated
    // circuit asks callers to come back after one wait duration.
    assert_eq!(retry_after(&refused), Some(5));
    advance(SECS(6)).await;
    assert_eq!(dep.status("/ok").await, 503);
    let c = dep.handle.counts();
    // Forced open starts with fresh metrics, as in R4j.
    assert_eq!((c.state, c.calls, c.not_permitted), (S::ForcedOpen, 0, 2));
}

// shouldOnlyPermitFourCallsInHalfOpenState,
// shouldThrowCallNotPermittedExceptionWhenNotFurtherTestCallsArePermitted,
// shouldIncreaseCounterOnReleasePermission
#[tokio::test(start_paused = true)]
async fn half_open_permits_four_trials_and_reuses_a_released_permit() {
    let dep = Dep::start(r4j()).await;
    for round in 0..2 {
        dep.handle.open(SECS(5));
        advance(SECS(5)).await;
        let trials: Vec<_> = (0..4).map(|_| dep.spawn("/hold")).collect();
        dep.wait_arrived(4 * (round + 1) + round).await;
        assert_eq!(dep.state(), S::HalfOpen);
        let refused = dep.get("/ok").await;
        assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE);
        // Refused in half-open: come back in a second, the trials decide
        // soon (R4j gives no time).
        assert_eq!(retry_after(&refused), Some(1));
        assert_eq!(dep.handle.counts().not_permitted, 1);
        // A trial whose client went away gives its permit back.
        trials[0].abort();
        dep.wait_cancelled(round + 1).await;
        let again = dep.spawn("/hold");
        dep.wait_arrived(4 * (round + 1) + round + 1).await;
        assert_eq!(dep.state(), S::HalfOpen);
        assert_eq!(dep.status("/ok").await, 503);
        dep.release(4);
        for t in trials.into_iter().skip(1).chain([again]) {
            assert_eq!(t.await.unwrap().status, StatusCode::OK);
        }
        assert_eq!(dep.state(), S::Closed);
    }
}

// shouldTransitionToHalfOpenAfterWaitDuration. R4j's default
// (`automaticTransitionFromOpenToHalfOpenEnabled = false`): the first call
// after the wait starts half-open, and the metrics start afresh.
#[tokio::test(start_paused = true)]
async fn the_first_call_after_the_wait_starts_half_open() {
    let dep = Dep::start(r4j()).await;
    trip(&dep).await;
    assert_eq!(dep.status("/ok").await, 503);
    advance(SECS(3)).await;
    let refused = dep.get("/ok").await;
    assert_eq!(retry_after(&refused), Some(2));
    assert_eq!(dep.handle.counts().not_permitted, 2);
    assert_eq!(dep.get("/readyz").await.status, 503);
    advance(SECS(3)).await;
    // Nobody called: still open, but the next call would be a trial, and
    // the readiness probe lets traffic come (an unready replica gets no
    // calls and would stay open for good).
    assert_eq!(dep.state(), S::Open);
    assert_eq!(dep.handle.open_remaining(), Some(Duration::ZERO));
    assert_eq!(dep.get("/readyz").await.status, 200);
    assert_eq!(dep.status("/ok").await, 200);
    let c = dep.handle.counts();
    assert_eq!(
        (c.state, c.calls, c.failures, c.not_permitted),
        (S::HalfOpen, 1, 0, 0)
    );
    assert_eq!(
        dep.moves(),
        [
            (S::Closed, S::Open, R::FailureRate),
            (S::Open, S::HalfOpen, R::OpenDurationElapsed)
        ]
    );
    let rejected: Vec<_> = dep
        .events()
        .into_iter()
        .filter_map(|e| match e {
            CircuitBreakerEvent::Rejected {
                state, retry_after, ..
            } => Some((state, retry_after)),
            _ => None,
        })
        .collect();
    assert_eq!(
        rejected,
        [(S::Open, Some(SECS(5))), (S::Open, Some(SECS(2)))]
    );
}

// A quiet period after the wait is not a failure: it must neither re-open
// the circuit nor grow the wait (R4j's `waitIntervalFunctionInOpenState`
// only advances on an opening).
#[tokio::test(start_paused = true)]
async fn a_quiet_period_never_reopens_or_grows_the_wait() {
    let dep = Dep::start(r4j().backoff(2.0, SECS(60), 0.0)).await;
    trip(&dep).await;
    advance(SECS(3_600)).await;
    assert_eq!(dep.state(), S::Open);
    assert_eq!(dep.moves().len(), 1);
    // The trials fail: the first earned re-open doubles the wait once.
    dep.statuses(&["/fail"; 4]).await;
    assert_eq!(dep.state(), S::Open);
    assert_eq!(dep.openings(), [SECS(5), SECS(10)]);
    advance(SECS(10)).await;
    assert_eq!(dep.statuses(&["/ok"; 4]).await, [200; 4]);
    assert_eq!(dep.state(), S::Closed);
    trip(&dep).await;
    assert_eq!(
        dep.openings(),
        [SECS(5), SECS(10), SECS(5)],
        "reset on close"
    );
}

// `automaticTransitionFromOpenToHalfOpenEnabled = true`: a timer moves the
// circuit to half-open without a call. R4j's `maxWaitDurationInHalfOpenState`
// would then re-open it after the max wait even with no call at all; we
// deliberately do not: a half-open circuit with no trial in flight is not
// stuck, and re-opening it would refuse the first caller for nothing.
#[tokio::test(start_paused = true)]
async fn automatic_transition_half_opens_on_time_and_a_quiet_half_open_stays() {
    let dep = Dep::start(
        r4j()
            .auto_half_open(true)
            .max_wait_in_half_open(SECS(30))
            .backoff(2.0, SECS(60), 0.0),
    )
    .await;
    trip(&dep).await;
    advance(SECS(5) - Duration::from_millis(1)).await;
    assert_eq!(dep.state(), S::Open);
    advance(Duration::from_millis(1)).await;
    assert_eq!(dep.state(), S::HalfOpen);
    advance(SECS(300)).await;
    assert_eq!(dep.state(), S::HalfOpen);
    assert_eq!(dep.moves().len(), 2);
    // When trials do fail, the backoff grows from the base: the quiet
    // half-open period earned nothing.
    dep.statuses(&["/fail"; 4]).await;
    assert_eq!(dep.openings(), [SECS(5), SECS(10)]);
}

// `maxWaitDurationInHalfOpenState`: counted from the moment half-open
// started, which by default is the first call after the wait; a trial
// still in flight then re-opens the circuit (and that re-open was earned:
// the backoff grows). Its late result does not count.
#[tokio::test(start_paused = true)]
async fn half_open_max_wait_counts_from_the_first_trial() {
    let dep = Dep::start(
        r4j()
            .max_wait_in_half_open(SECS(30))
            .backoff(2.0, SECS(60), 0.0),
    )
    .await;
    trip(&dep).await;
    advance(SECS(5) + SECS(100)).await;
    let stuck = dep.spawn("/hold");
    dep.wait_arrived(1).await;
    assert_eq!(dep.state(), S::HalfOpen);
    advance(SECS(30) - Duration::from_millis(1)).await;
    assert_eq!(dep.state(), S::HalfOpen);
    advance(Duration::from_millis(1)).await;
    assert_eq!(dep.state(), S::Open);
    assert_eq!(
        dep.moves().last(),
        Some(&(S::HalfOpen, S::Open, R::HalfOpenMaxWait))
    );
    assert_eq!(dep.openings(), [SECS(5), SECS(10)]);
    dep.release(1);
    assert_eq!(stuck.await.unwrap().status, StatusCode::OK);
    assert_eq!(dep.state(), S::Open);
}

// `maxWaitDurationInHalfOpenState` again: R4j re-opens when it elapses
// whatever happened. We re-open only over a trial still in flight: trials
// that all ended (here two successes of four) mean the dependency answers
// and the circuit merely waits for more calls, so it stays half-open; the
// next trial arms the max wait again.
#[tokio::test(start_paused = true)]
async fn half_open_with_no_trial_in_flight_waits_for_the_next_call() {
    let dep = Dep::start(r4j().max_wait_in_half_open(SECS(30))).await;
    trip(&dep).await;
    advance(SECS(5)).await;
    assert_eq!(dep.statuses(&["/ok", "/ok"]).await, [200, 200]);
    advance(SECS(120)).await;
    assert_eq!(dep.state(), S::HalfOpen);
    assert_eq!(dep.handle.counts().calls, 2);
    let stuck = dep.spawn("/hold");
    dep.wait_arrived(1).await;
    advance(SECS(30) - MS(1)).await;
    assert_eq!(dep.state(), S::HalfOpen);
    advance(MS(1)).await;
    assert_eq!(dep.state(), S::Open);
    assert_eq!(
        dep.moves().last(),
        Some(&(S::HalfOpen, S::Open, R::HalfOpenMaxWait))
    );
    dep.release(1);
    stuck.await.unwrap();
    assert_eq!(dep.state(), S::Open);
}

// shouldTransitionBackToOpenStateWhenFailureRateIsAboveThreshold
#[tokio::test(start_paused = true)]
async fn failed_trials_reopen_and_their_counts_stay_visible() {
    let dep = Dep::start(r4j()).await;
    dep.handle.open(SECS(5));
    advance(SECS(5)).await;
    dep.statuses(&["/fail", "/fail", "/ok"]).await;
    let c = dep.handle.counts();
    // Half-open reports the trials, not the window that tripped it.
    assert_eq!((c.state, c.calls, c.failures), (S::HalfOpen, 3, 2));
    dep.status("/fail").await;
    let c = dep.handle.counts();
    assert_eq!(
        (c.state, c.calls, c.failures, c.failure_rate),
        (S::Open, 4, 3, Some(75.0))
    );
    assert_eq!(
        dep.moves().last(),
        Some(&(S::HalfOpen, S::Open, R::TrialsFailed))
    );
}

// shouldTransitionBackToOpenStateWhenSlowCallRateIsAboveThreshold
#[tokio::test(start_paused = true)]
async fn slow_trials_reopen() {
    let dep = Dep::start(r4j()).await;
    dep.handle.open(SECS(5));
    advance(SECS(5)).await;
    dep.statuses(&["/slow", "/slow", "/slow", "/ok"]).await;
    let c = dep.handle.counts();
    assert_eq!(c.state, S::Open);
    assert_eq!(c.slow_calls, 3);
    assert_eq!(c.slow_call_rate, Some(75.0));
    assert_eq!(c.failure_rate, Some(0.0));
}

// shouldTransitionBackToClosedStateWhenFailureIsBelowThreshold
#[tokio::test(start_paused = true)]
async fn successful_trials_close_with_a_fresh_window() {
    let dep = Dep::start(r4j()).await;
    dep.handle.open(SECS(5));
    advance(SECS(5)).await;
    dep.statuses(&["/fail", "/ok", "/ok", "/ok"]).await;
    let c = dep.handle.counts();
    assert_eq!((c.state, c.calls, c.failure_rate), (S::Closed, 0, None));
    assert_eq!(
        dep.moves().last(),
        Some(&(S::HalfOpen, S::Closed, R::TrialsSucceeded))
    );
    dep.status("/ok").await;
    assert_eq!(dep.handle.counts().calls, 1);
}

// shouldReleasePermissionWhenExceptionIgnored,
// shouldIgnoreExceptionsAndThenTransitionToClosed (R4j ignores
// NumberFormatException; we ignore a status)
#[tokio::test(start_paused = true)]
async fn ignored_trials_release_their_permit() {
    let dep = Dep::start(r4j().ignore_status(StatusCode::IM_A_TEAPOT)).await;
    dep.handle.open(SECS(5));
    advance(SECS(5)).await;
    dep.statuses(&["/teapot"; 4]).await;
    let c = dep.handle.counts();
    assert_eq!((c.state, c.calls), (S::HalfOpen, 0));
    dep.statuses(&["/ok"; 3]).await;
    dep.status("/teapot").await;
    let c = dep.handle.counts();
    assert_eq!((c.state, c.calls), (S::HalfOpen, 3));
    dep.status("/fail").await; // 1 of 4: below 50 %
    assert_eq!(dep.state(), S::Closed);
}

// shouldResetMetrics, shouldResetClosedState, shouldResetToClosedState
#[tokio::test(start_paused = true)]
async fn reset_forgets_the_metrics_from_any_state() {
    let dep = Dep::start(r4j()).await;
    dep.statuses(&["/ok", "/fail"]).await;
    let c = dep.handle.counts();
    assert_eq!((c.calls, c.failures), (2, 1));
    dep.handle.reset();
    let c = dep.handle.counts();
    assert_eq!((c.state, c.calls, c.failures), (S::Closed, 0, 0));
    // R4j publishes a Reset event here; closed to closed is no transition
    // for us, so the listener hears nothing.
    assert!(dep.events().is_empty());
    dep.handle.open(SECS(5));
    dep.handle.reset();
    assert_eq!(dep.state(), S::Closed);
    assert_eq!(
        dep.moves(),
        [
            (S::Closed, S::Open, R::Manual),
            (S::Open, S::Closed, R::Manual)
        ]
    );
}

// shouldNotAllowTransitionFromClosedToClosed: R4j throws
// IllegalStateTransitionException. A handle call must not fail an
// operator's script, so moving to the current state does nothing: no
// event, and calls in flight still count (the generation is unchanged).
#[tokio::test(start_paused = true)]
async fn moving_to_the_current_state_is_a_no_op() {
    let dep = Dep::start(r4j()).await;
    let in_flight = dep.spawn("/holdfail");
    dep.wait_arrived(1).await;
    dep.handle.close();
    dep.release(1);
    assert_eq!(in_flight.await.unwrap().status.as_u16(), 500);
    assert_eq!(dep.handle.counts().failures, 1, "still counted");
    assert!(dep.events().is_empty());

    dep.handle.metrics_only();
    let in_flight = dep.spawn("/holdfail");
    dep.wait_arrived(2).await;
    dep.handle.metrics_only();
    dep.release(1);
    in_flight.await.unwrap();
    assert_eq!(dep.handle.counts().failures, 1);

    dep.handle.force_open();
    dep.handle.force_open();
    dep.handle.disable();
    dep.handle.disable();
    assert_eq!(
        dep.moves(),
        [
            (S::Closed, S::MetricsOnly, R::Manual),
            (S::MetricsOnly, S::ForcedOpen, R::Manual),
            (S::ForcedOpen, S::Disabled, R::Manual),
        ]
    );
}

// shouldDisableCircuitBreaker
#[tokio::test(start_paused = true)]
async fn disabled_lets_everything_through_and_records_nothing() {
    let dep = Dep::start(r4j()).await;
    dep.statuses(&["/fail", "/fail"]).await;
    dep.handle.disable();
    assert_eq!(dep.handle.counts().calls, 0);
    let statuses = dep
        .statuses(&["/ok", "/fail", "/fail", "/fail", "/fail"])
        .await;
    assert_eq!(statuses, [200, 500, 500, 500, 500]);
    let c = dep.handle.counts();
    assert_eq!((c.state, c.calls, c.failures), (S::Disabled, 0, 0));
}

// shouldRecordMetricsInMetricsOnlyState,
// shouldResetMetricsAfterMetricsOnlyStateTransition: the failure rate
// exceeded event fires once, no transition happens.
#[tokio::test(start_paused = true)]
async fn metrics_only_records_never_trips_and_alerts_once() {
    let dep = Dep::start(r4j()).await;
    dep.statuses(&["/ok", "/ok"]).await;
    dep.handle.metrics_only();
    assert_eq!(dep.handle.counts().calls, 0);
    dep.statuses(&["/fail", "/fail", "/fail", "/ok", "/ok"])
        .await;
    let c = dep.handle.counts();
    assert_eq!(
        (c.state, c.calls, c.failures, c.failure_rate),
        (S::MetricsOnly, 5, 3, Some(60.0))
    );
    let exceeded = |dep: &Dep| -> Vec<(S, R)> {
        dep.events()
            .into_iter()
            .filter_map(|e| match e {
                CircuitBreakerEvent::ThresholdExceeded { state, reason, .. } => {
                    Some((state, reason))
                }
                _ => None,
            })
            .collect()
    };
    assert_eq!(exceeded(&dep), [(S::MetricsOnly, R::FailureRate)]);
    dep.status("/fail").await;
    assert_eq!(exceeded(&dep).len(), 1, "once per crossing");
    assert_eq!(dep.moves(), [(S::Closed, S::MetricsOnly, R::Manual)]);
    // Back under the threshold, then over again: a new alert.
    dep.statuses(&["/ok"; 5]).await;
    dep.statuses(&["/fail"; 3]).await;
    assert_eq!(exceeded(&dep).len(), 2);
    assert_eq!(dep.state(), S::MetricsOnly);
}

// The TIME_BASED sliding window of the test's setUp: calls older than
// the window no longer count.
#[tokio::test(start_paused = true)]
async fn time_based_window_forgets_old_calls() {
    let dep = Dep::start(r4j().time_window(SECS(5), 5)).await;
    dep.statuses(&["/fail"; 4]).await;
    advance(SECS(5)).await;
    dep.status("/fail").await;
    let c = dep.handle.counts();
    assert_eq!((c.state, c.calls), (S::Closed, 1));
    dep.statuses(&["/fail"; 4]).await;
    assert_eq!(dep.state(), S::Open);
}

// `transitionToOpenStateFor(Duration)`: open for a given time, then trials.
#[tokio::test(start_paused = true)]
async fn open_for_a_given_time_then_trials() {
    let dep = Dep::start(r4j()).await;
    dep.handle.open(SECS(30));
    assert_eq!(retry_after(&dep.get("/ok").await), Some(30));
    advance(SECS(10)).await;
    // Already open: only the end moves (no event, no new generation).
    dep.handle.open(SECS(5));
    assert_eq!(retry_after(&dep.get("/ok").await), Some(5));
    assert_eq!(dep.moves(), [(S::Closed, S::Open, R::Manual)]);
    assert_eq!(dep.openings(), [SECS(30)]);
    advance(SECS(5)).await;
    assert_eq!(dep.status("/ok").await, 200);
    assert_eq!(dep.state(), S::HalfOpen);
}

// shouldTransitionToHalfOpenAfterWaitInterval (an exponential
// `waitIntervalFunctionInOpenState`, R4j's default multiplier 1.5): each
// re-open after failed trials waits longer.
#[tokio::test(start_paused = true)]
async fn wait_interval_grows_on_each_reopen() {
    let dep = Dep::start(r4j().backoff(1.5, SECS(60), 0.0)).await;
    trip(&dep).await;
    for wait in [5_000, 7_500] {
        advance(Duration::from_millis(wait) - Duration::from_millis(1)).await;
        assert_eq!(dep.status("/ok").await, 503);
        advance(Duration::from_millis(1)).await;
        dep.statuses(&["/fail"; 4]).await;
        assert_eq!(dep.state(), S::Open);
    }
    assert_eq!(
        dep.openings(),
        [
            SECS(5),
            Duration::from_millis(7_500),
            Duration::from_millis(11_250)
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn every_transition_is_published() {
    let dep = Dep::start(r4j()).await;
    trip(&dep).await;
    advance(SECS(5)).await;
    dep.statuses(&["/ok"; 4]).await;
    settle().await;
    assert_eq!(
        dep.moves(),
        [
            (S::Closed, S::Open, R::FailureRate),
            (S::Open, S::HalfOpen, R::OpenDurationElapsed),
            (S::HalfOpen, S::Closed, R::TrialsSucceeded),
        ]
    );
}
