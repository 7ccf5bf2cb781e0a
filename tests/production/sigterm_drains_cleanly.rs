//! The zero-drop proof: the `production` example, built by cargo next to
//! this test's binary, runs as a real process on a loopback port with
//! `examples/configs/production.toml`; steady load from 16 keep-alive
//! connections; a real `SIGTERM` in the middle.
//!
//! Asserted: `/readyz` fails right after the signal while `/livez` passes
//! and requests are still served; every request the server accepted got a
//! complete response (no reset, no truncated body, no unexpected status);
//! the process exits 0 within `shutdown_delay + drain_timeout + 1s`; the
//! shutdown report it prints matches what the clients saw.
//!
//! Connection errors once the listener has closed are expected (there is no
//! load balancer to move the clients to another replica) and counted apart.
#![cfg(unix)]

use crate::common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;

const DELAY: Duration = Duration::from_secs(1);
const DRAIN: Duration = Duration::from_secs(5);
const WORKERS: usize = 16;

/// The `production` example, with test timings.
type Server = common::Running;

fn start() -> Server {
    start_with(&[])
}

/// Started with extra `RAMPART_*` overrides (applied after the defaults of
/// [`start`]).
fn start_with(env: &[(&str, &str)]) -> Server {
    let mut command = Command::new(common::example_binary("production"));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "--config",
            "examples/configs/production.toml",
            "--listen",
            "127.0.0.1:0",
        ])
        // The documented override scheme: shorter timings for a test, and
        // limits no test load reaches (the limiter stays in place).
        .env("RAMPART_SHUTDOWN__SHUTDOWN_DELAY", "1s")
        .env("RAMPART_SHUTDOWN__DRAIN_TIMEOUT", "5s")
        .env("RAMPART_RATE_LIMIT__QUOTAS__0__RATE", "1000000/s")
        .env("RAMPART_RATE_LIMIT__QUOTAS__1__RATE", "1000000/s")
        .env("RUST_LOG", "info")
        .envs(env.iter().copied())
        .stderr(Stdio::inherit());
    common::Running::spawn("production", command)
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

fn client() -> HttpClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// A fresh connection each time (for probes).
fn one_shot_client() -> HttpClient {
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(0)
        .build_http()
}

/// A transport error: `(could not connect, description)`.
type Failed = (bool, String);

async fn get(
    client: &HttpClient,
    addr: SocketAddr,
    path: &str,
) -> Result<(StatusCode, String), Failed> {
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let res = tokio::time::timeout(Duration::from_secs(10), client.request(req))
        .await
        .map_err(|_| (false, "no response in 10s".to_owned()))?
        .map_err(|e| (e.is_connect(), format!("{e:?}")))?;
    let status = res.status();
    let body = tokio::time::timeout(Duration::from_secs(10), res.into_body().collect())
        .await
        .map_err(|_| (false, "body not finished in 10s".to_owned()))?
        .map_err(|e| (false, format!("body error: {e:?}")))?;
    Ok((
        status,
        String::from_utf8_lossy(&body.to_bytes()).into_owned(),
    ))
}

#[derive(Default, Debug)]
struct Tally {
    /// Complete 200 answers with the expected body.
    ok: u64,
    /// 200s received after the signal (served during the delay and drain).
    ok_after_signal: u64,
    /// Intended refusals (429 / 503 with a problem+json body).
    refused: u64,
    /// Could not connect (the listener had closed).
    connect_errors: u64,
    /// Other transport errors once the listener was closing: the request
    /// never reached the server (a connection still in the accept backlog
    /// when the listener closed). Checked against the server's counts.
    late_errors: Vec<String>,
    /// Everything else: a failure of the test.
    failures: Vec<String>,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_drops_nothing() {
    let mut server = start();
    let addr: SocketAddr = server
        .expect("rampart-listening ", Duration::from_secs(60))
        .parse()
        .unwrap();

    // Ready before the load starts.
    let probe = one_shot_client();
    let started = Instant::now();
    loop {
        if let Ok((StatusCode::OK, _)) = get(&probe, addr, "/readyz").await {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(10), "never ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let tally = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    // Set when SIGTERM is sent: (when, and the instant the listener may close).
    let signalled: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut workers = Vec::new();
    for w in 0..WORKERS {
        let (tally, stop, signalled) = (tally.clone(), stop.clone(), signalled.clone());
        workers.push(tokio::spawn(async move {
            let client = client(); // one keep-alive connection per worker
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                // Mostly fast calls; every eighth one stays in flight 300 ms,
                // so some are in flight when draining begins.
                let (path, body) = if (n + w as u64) % 8 == 0 {
                    ("/api/sleep/300", "slept 300ms\n")
                } else {
                    ("/api/ok", "ok\n")
                };
                let sent = Instant::now();
                let result = get(&client, addr, path).await;
                let since_signal = signalled
                    .lock()
                    .unwrap()
                    .map(|t| sent.saturating_duration_since(t));
                let mut pause = false;
                {
                    let mut t = tally.lock().unwrap();
                    match result {
                        Ok((StatusCode::OK, text)) if text == body => {
                            t.ok += 1;
                            if since_signal.is_some() {
                                t.ok_after_signal += 1;
                            }
                        }
                        Ok((
                            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE,
                            text,
                        )) if text.contains("\"type\"") => {
                            t.refused += 1;
                        }
                        Ok((status, text)) => t.failures.push(format!("{path}: {status} {text:?}")),
                        Err((true, _)) => {
                            t.connect_errors += 1;
                            pause = true;
                        }
                        Err((false, e)) => {
                            // The listener closes `DELAY` after the signal.
                            let closing = since_signal
                                .is_some_and(|d| d + Duration::from_millis(100) >= DELAY);
                            if closing {
                                t.late_errors.push(format!("{path}: {e}"));
                            } else {
                                t.failures.push(format!(
                                    "{path} ({since_signal:?} after the signal): {e}"
                                ));
                            }
                        }
                    }
                }
                if pause {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }));
    }

    // Steady load, then the signal in the middle.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        tally.lock().unwrap().ok > 0,
        "no load got through: {:?}",
        tally.lock().unwrap()
    );
    server.signal("-TERM");
    let signal_at = Instant::now();
    *signalled.lock().unwrap() = Some(signal_at);
    // One call certain to be in flight when draining begins, `DELAY` after
    // the signal: the workers' 300 ms calls start together and run in step,
    // so about one time in ten all of them are between two calls at that
    // instant and the drain would find nothing to wait for.
    let spanning = {
        let tally = tally.clone();
        tokio::spawn(async move {
            let result = get(&client(), addr, "/api/sleep/2000").await;
            let mut t = tally.lock().unwrap();
            match result {
                Ok((StatusCode::OK, text)) if text == "slept 2000ms\n" => {
                    t.ok += 1;
                    t.ok_after_signal += 1;
                }
                other => t
                    .failures
                    .push(format!("/api/sleep/2000 (sent at the signal): {other:?}")),
            }
        })
    };

    // Readiness fails at once; liveness still passes; the server still serves.
    let mut ready_failed = None;
    while signal_at.elapsed() < Duration::from_millis(500) {
        if let Ok((StatusCode::SERVICE_UNAVAILABLE, text)) =
            get(&probe, addr, "/readyz?verbose").await
        {
            ready_failed = Some((signal_at.elapsed(), text));
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let (after, text) = ready_failed.expect("/readyz still passing 500ms after SIGTERM");
    assert!(text.contains("[-]shutdown failed"), "{text}");
    let live = get(&probe, addr, "/livez").await;
    assert!(
        matches!(live, Ok((StatusCode::OK, _))),
        "/livez during shutdown: {live:?}"
    );
    assert!(
        signal_at.elapsed() < DELAY,
        "probes took the whole delay ({after:?})"
    );

    // The process exits 0 in time.
    let bound = DELAY + DRAIN + Duration::from_secs(1);
    let status = tokio::task::spawn_blocking(move || {
        let status = server.wait(bound);
        (server, status)
    })
    .await
    .unwrap();
    let (mut server, status) = status;
    let exited_after = signal_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    spanning.await.unwrap();
    let status = status.unwrap_or_else(|| panic!("still running {bound:?} after SIGTERM"));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        exited_after <= bound,
        "exited {exited_after:?} after SIGTERM"
    );

    // The report matches what the clients saw.
    let report: serde_json::Value =
        serde_json::from_str(&server.expect("rampart-shutdown-report ", Duration::from_secs(5)))
            .unwrap();
    let tally = tally.lock().unwrap();
    eprintln!("client: {tally:?}\nserver: {report}\nexited {exited_after:?} after SIGTERM");

    assert!(
        tally.failures.is_empty(),
        "failed requests: {:?}",
        tally.failures
    );
    assert!(tally.ok_after_signal > 0, "nothing served after the signal");
    assert_eq!(report["trigger"], "sigterm");
    assert!(report["delay_ms"].as_u64().unwrap() >= 1000, "{report}");
    assert_eq!(report["aborted"], 0, "{report}");
    assert_eq!(report["left_in_flight"], 0, "{report}");
    assert_eq!(report["drain_timed_out"], false, "{report}");
    // Everything in flight when draining began finished; the serve loop also
    // answers the requests of connections it took from the listen backlog
    // after that moment, so `finished` may be larger (never smaller).
    assert!(
        report["finished"].as_u64().unwrap() >= report["in_flight_at_drain"].as_u64().unwrap(),
        "{report}"
    );
    assert!(
        report["in_flight_at_drain"].as_u64().unwrap() > 0,
        "nothing was in flight when draining began: the drain was not exercised ({report})"
    );
    // Every handler call that started returned, and every response reached
    // its client complete: the late transport errors never reached a
    // handler.
    assert_eq!(report["api_started"], report["api_completed"], "{report}");
    assert_eq!(
        report["api_completed"].as_u64().unwrap(),
        tally.ok,
        "{report} vs {tally:?}"
    );
}

/// The example's default shape (`[platform]`, `[routes]` in
/// `production.toml`): `/api/fail` opening its breaker leaves the other
/// routes answering; once a client has spent its quota too, `/metrics` and
/// the probes still answer, and the scrape shows the open route (the alert
/// on `rampart_circuit_breaker_state` can fire).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_route_and_a_spent_limit_leave_metrics_and_probes_answering() {
    let mut server = start_with(&[
        // 30 requests per client, then one a minute.
        ("RAMPART_RATE_LIMIT__QUOTAS__0__RATE", "1/m"),
        ("RAMPART_RATE_LIMIT__QUOTAS__0__BURST", "30"),
    ]);
    let addr: SocketAddr = server
        .expect("rampart-listening ", Duration::from_secs(60))
        .parse()
        .unwrap();
    let c = client();
    // Before any request, the scrape already shows every declared route's
    // breaker, closed: the operator's dashboards list the routes from the
    // start.
    let (status, metrics) = get(&c, addr, "/metrics").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    for route in ["/api/ok", "/api/fail", "/api/sleep/{ms}"] {
        let closed =
            format!("rampart_circuit_breaker_route_state{{name=\"api\",route=\"{route}\"}} 0");
        assert!(metrics.contains(&closed), "{route}: {metrics}");
    }
    // Every API route of the example first: each must find its own breaker
    // among the templates `production.toml` declares (the stack wraps the
    // whole router, so a route left out of `routes.paths` would share the
    // `unmatched` breaker, which the scrape below would then list).
    let (status, _) = get(&c, addr, "/api/ok").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, _) = get(&c, addr, "/api/sleep/1").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    let mut sent = 2;
    // The breaker judges 20 calls at least: 20 failures open /api/fail.
    for _ in 0..20 {
        let (status, _) = get(&c, addr, "/api/fail").await.unwrap();
        assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
        sent += 1;
    }
    let (status, body) = get(&c, addr, "/api/fail").await.unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    sent += 1;
    let (status, body) = get(&c, addr, "/api/ok").await.unwrap();
    assert_eq!((status, body.as_str()), (StatusCode::OK, "ok\n"));
    let (status, _) = get(&c, addr, "/api/sleep/1").await.unwrap();
    assert_eq!(status, StatusCode::OK);
    sent += 2;
    // Spend the rest of the quota.
    while sent < 30 {
        get(&c, addr, "/api/ok").await.unwrap();
        sent += 1;
    }
    let (status, _) = get(&c, addr, "/api/ok").await.unwrap();
    assert_eq!(status, StatusCode::TOO_MANY_REQUESTS);

    for _ in 0..5 {
        let (status, metrics) = get(&c, addr, "/metrics").await.unwrap();
        assert_eq!(status, StatusCode::OK);
        assert!(
            metrics.contains("rampart_circuit_breaker_state{name=\"api\"} 1"),
            "{metrics}"
        );
        assert!(
            metrics.contains(
                "rampart_circuit_breaker_route_state{name=\"api\",route=\"/api/fail\"} 1"
            ),
            "{metrics}"
        );
        for route in ["/api/ok", "/api/sleep/{ms}"] {
            let closed =
                format!("rampart_circuit_breaker_route_state{{name=\"api\",route=\"{route}\"}} 0");
            assert!(metrics.contains(&closed), "{route}: {metrics}");
        }
        assert!(!metrics.contains("route=\"unmatched\""), "{metrics}");
    }
    let (status, body) = get(&c, addr, "/readyz?verbose").await.unwrap();
    assert_eq!(status, StatusCode::OK, "breaker_readiness = warn: {body}");
    assert!(body.contains("[!]api warn"), "{body}");
    assert_eq!(get(&c, addr, "/livez").await.unwrap().0, StatusCode::OK);
    server.signal("-KILL");
}
