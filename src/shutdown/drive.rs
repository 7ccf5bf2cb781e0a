//! The shutdown sequence, one named step after the other: wait for the
//! trigger, `delay` (still serving), `stop_accepting`, `drain`, `abort`
//! what is left at the deadline, `run_hooks`, then `finish` with the
//! report.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use tokio::time::Instant;

use super::coordinator::{Hook, Inner};
use super::phase::{Phase, Trigger};
use super::report::{HookOutcome, HookReport, ShutdownReport, emit};
use super::signals::{Signals, spawn_force_exit};
use crate::util::sampled::Sampled;

/// The coordinator's task: runs the whole sequence once.
pub(super) async fn drive(inner: Arc<Inner>, mut signals: Signals) {
    let Some((trigger, started)) = wait_for_trigger(&inner, &mut signals).await else {
        return;
    };
    let force = spawn_force_exit(
        signals,
        trigger,
        Arc::clone(&inner.state.name),
        inner.config.force_exit_code,
    );
    delay(&inner, trigger).await;
    let drain_start = Instant::now();
    let completed_before = inner.state.completed.load(Ordering::Relaxed);
    let in_flight_at_drain = stop_accepting(&inner);
    inner.state.publish();
    let drained = drain(&inner, drain_start).await;
    if !drained {
        abort(&inner).await;
    }
    let drain_took = drain_start.elapsed();
    inner.drain_histogram.record(drain_took.as_secs_f64());
    // The in-flight gauge is sampled (`util::sampled`): exact at the end
    // of the drain, as at its start.
    inner.state.publish();
    let finished = inner.state.completed.load(Ordering::Relaxed) - completed_before;
    let aborted = inner.state.aborted.load(Ordering::Relaxed);
    let left_in_flight = inner.state.in_flight();
    let hooks_start = Instant::now();
    let hooks = run_hooks(&inner).await;
    let report = ShutdownReport {
        trigger,
        delay: drain_start - started,
        drain: drain_took,
        hooks_duration: hooks_start.elapsed(),
        total: started.elapsed(),
        in_flight_at_drain,
        finished,
        aborted,
        left_in_flight,
        drain_timed_out: !drained,
        hooks,
    };
    finish(&inner, report);
    // The process may keep running (tests, embedded servers): stop
    // listening for a forcing signal once everything is over.
    force.abort();
}

/// Waits for a programmatic trigger or the first signal; `None` if the
/// coordinator is gone first.
async fn wait_for_trigger(inner: &Inner, signals: &mut Signals) -> Option<(Trigger, Instant)> {
    let mut trigger_rx = inner.trigger_tx.subscribe();
    tokio::select! {
        t = trigger_rx.wait_for(Option::is_some) => match t {
            Ok(t) => Some(t.expect("checked by wait_for")),
            Err(_) => None,
        },
        t = signals.recv() => {
            inner.request(t);
            Some(inner.trigger_tx.borrow().expect("set by request"))
        }
    }
}

/// Keeps serving while readiness fails (`shutdown_delay`, or
/// `sigint_delay` after Ctrl-C): endpoint removal races the signal.
async fn delay(inner: &Inner, trigger: Trigger) {
    let delay: Duration = if trigger == Trigger::Sigint {
        inner.config.sigint_delay
    } else {
        inner.config.shutdown_delay
    };
    if !delay.is_zero() {
        tokio::time::sleep(delay).await;
    }
}

/// Enters [`Phase::Draining`]: listeners stop accepting, new work is
/// refused. Returns how many requests were in flight at that moment.
fn stop_accepting(inner: &Inner) -> usize {
    inner.set_phase(Phase::Draining);
    inner.state.in_flight()
}

/// Waits for the in-flight requests until `drain_timeout`; true if all
/// finished.
async fn drain(inner: &Inner, drain_start: Instant) -> bool {
    inner
        .wait_idle(drain_start + inner.config.drain_timeout)
        .await
}

/// The drain deadline passed: fires the abort signal (every counted
/// future and body answers or cuts itself off) and gives them
/// `abort_grace` to go.
async fn abort(inner: &Inner) {
    tracing::warn!(
        target: "tower_rampart::shutdown",
        name = %inner.state.name,
        in_flight = inner.state.in_flight(),
        "drain deadline reached: aborting in-flight requests"
    );
    inner.state.abort.fire();
    inner
        .wait_idle(Instant::now() + inner.config.abort_grace)
        .await;
}

/// Runs the cleanup hooks one by one, each bounded by its timeout; no hook
/// can be registered any more.
async fn run_hooks(inner: &Inner) -> Vec<HookReport> {
    let hooks = crate::util::lock(&inner.hooks).take().unwrap_or_default();
    let mut reports = Vec::with_capacity(hooks.len());
    for hook in hooks {
        reports.push(run_hook(&inner.state.name, hook).await);
    }
    reports
}

async fn run_hook(name: &str, hook: Hook) -> HookReport {
    let start = Instant::now();
    let mut task = tokio::spawn(hook.future);
    let outcome = match tokio::time::timeout(hook.timeout, &mut task).await {
        Ok(Ok(())) => HookOutcome::Completed,
        Ok(Err(e)) if e.is_panic() => HookOutcome::Panicked,
        Ok(Err(_)) => HookOutcome::TimedOut,
        Err(_) => {
            task.abort();
            HookOutcome::TimedOut
        }
    };
    let duration = start.elapsed();
    if outcome != HookOutcome::Completed {
        tracing::warn!(
            target: "tower_rampart::shutdown",
            name,
            hook = %hook.name,
            outcome = ?outcome,
            duration_ms = duration.as_millis() as u64,
            "cleanup hook failed"
        );
    }
    HookReport {
        name: hook.name,
        outcome,
        duration,
    }
}

/// Emits the report, enters [`Phase::Done`] and publishes the report.
fn finish(inner: &Inner, report: ShutdownReport) {
    emit(&inner.state.name, &report);
    inner.set_phase(Phase::Done);
    inner.report_tx.send_replace(Some(report));
}
