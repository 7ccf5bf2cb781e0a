//! The zero-drop proof (issue 11): the real `production` and `grpc` example
//! binaries, served by `tower_rampart::serve`, each get a `SIGTERM` in the
//! middle of bounded load, `CYCLES` times over:
//!
//! - 128 HTTP/1.1 keep-alive connections (one per worker, sequential
//!   requests) and 32 h2c connections with 4 concurrent streams each,
//!   against `production`;
//! - 16 gRPC clients (one tonic channel each, 2 concurrent calls) against
//!   `grpc`.
//!
//! A request is **lost** when its client saw a reset, a close without a
//! response, a truncated body or a status it did not ask for. A connection
//! refused after the listener closed is not lost: a real client retries on
//! another replica (here, it waits and tries again until the process is
//! gone). Asserted over all cycles: 0 lost; each process exits 0 within
//! `delay + drain + abort_grace + 1s`; each shutdown report agrees with
//! what the clients counted (`production`: every 200 the clients got is a
//! handler that completed, and none was abandoned; both: nothing aborted,
//! everything in flight at the drain finished).
//!
//! Load stays on loopback and is bounded: about 0.8 s before the signal,
//! then the 1 s delay and the drain, per cycle.
#![cfg(unix)]

#[path = "../common/mod.rs"]
mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use tonic_prost::ProstCodec;

const CYCLES: usize = 5;
const DELAY: Duration = Duration::from_secs(1);
const DRAIN: Duration = Duration::from_secs(5);
const ABORT_GRACE: Duration = Duration::from_secs(1);
const LOAD_BEFORE_SIGNAL: Duration = Duration::from_millis(800);
const H1_CONNECTIONS: usize = 128;
const H2_CONNECTIONS: usize = 32;
const H2_STREAMS: usize = 4;
const GRPC_CLIENTS: usize = 16;
const GRPC_CALLS: usize = 2;

/// A running example, with test timings and limits no load reaches.
type Process = common::Running;

fn start(name: &'static str) -> Process {
    let mut command = Command::new(common::example_binary(name));
    command
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "--config",
            "examples/configs/production.toml",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RAMPART_SHUTDOWN__SHUTDOWN_DELAY", "1s")
        .env("RAMPART_SHUTDOWN__DRAIN_TIMEOUT", "5s")
        .env("RAMPART_SHUTDOWN__ABORT_GRACE", "1s")
        .env("RAMPART_SERVER__CONNECTION_GRACE", "1s")
        // Limits no test load reaches (the limiter stays in place).
        .env("RAMPART_RATE_LIMIT__QUOTAS__0__RATE", "1000000/s")
        .env("RAMPART_RATE_LIMIT__QUOTAS__0__BURST", "100000")
        .env("RAMPART_RATE_LIMIT__QUOTAS__1__RATE", "1000000/s")
        .env("RAMPART_RATE_LIMIT__QUOTAS__1__BURST", "100000")
        .env("RUST_LOG", "warn")
        .stderr(Stdio::inherit());
    common::Running::spawn(name, command)
}

/// `demo.HelloRequest` of the `grpc` example.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloRequest {
    #[prost(string, tag = "1")]
    name: String,
    #[prost(uint64, tag = "2")]
    sleep_ms: u64,
    #[prost(bool, tag = "3")]
    fail: bool,
}

/// `demo.HelloReply` of the `grpc` example.
#[derive(Clone, PartialEq, prost::Message)]
struct HelloReply {
    #[prost(string, tag = "1")]
    message: String,
}

/// What the clients saw, over every cycle.
#[derive(Default)]
struct Tally {
    /// Complete, expected answers, per protocol.
    h1_ok: AtomicU64,
    h2_ok: AtomicU64,
    grpc_ok: AtomicU64,
    /// Complete answers to requests sent after the signal.
    ok_after_signal: AtomicU64,
    /// Connections refused once the listener had closed (not lost).
    refused: AtomicU64,
    /// Requests the client knows were never processed (retried), per
    /// protocol.
    not_sent_h1: AtomicU64,
    not_sent_h2: AtomicU64,
    not_sent_grpc: AtomicU64,
    /// Requests failed with their HTTP/2 connection's GOAWAY
    /// ([`Outcome::GoneAway`]): h2c, and gRPC.
    gone_away_h2: AtomicU64,
    gone_away_grpc: AtomicU64,
    /// Lost requests, described.
    lost: Mutex<Vec<String>>,
}

impl Tally {
    fn lose(&self, what: String) {
        self.lost.lock().unwrap().push(what);
    }
}

type HttpClient = Client<HttpConnector, Empty<Bytes>>;

/// How a request ended, when it was not lost.
enum Outcome {
    /// A complete, expected answer.
    Ok,
    /// The connection was refused: the listener had closed.
    Refused,
    /// Never processed by the server, and the client knows it: the request
    /// failed before a connection was ready for it, was still queued when
    /// its HTTP/2 connection went away, or its stream was refused
    /// (`REFUSED_STREAM`). RFC 9113 §6.8 makes these safe to retry, and
    /// gRPC clients retry them transparently (gRPC proposal A6,
    /// "transparent retries"); hyper-util's client retries the first kind
    /// on HTTP/1 itself. The worker retries (its next request). A stream
    /// GOAWAY put above the last stream id is safe to retry too, but hyper
    /// reports it with an error it also uses for a stream that was sent
    /// ([`Outcome::GoneAway`]).
    NotSent,
    /// An HTTP/2 request (h2c or gRPC) hyper failed with the connection's
    /// GOAWAY (`NO_ERROR`): usually not sent (above the last stream id),
    /// but hyper's HTTP/2 client reports the same error in one race where
    /// the request was sent: `ClientTask` (hyper 1.x, `proto/h2/client.rs`)
    /// hands the request to h2, whose stream is queued for sending, then
    /// polls the connection's readiness again and, if the GOAWAY has just
    /// arrived (another worker thread drives the connection), fails the
    /// request with it and drops its response future. The HEADERS h2 had
    /// queued may go out all the same (then an RST_STREAM); the server,
    /// whose final GOAWAY counts that stream, serves it (or cancels it on
    /// the RST_STREAM). RFC 9113 §6.8: only a stream above the last stream
    /// id is known unprocessed, and hyper's error does not say which side
    /// of it the stream was. The per-cycle check allows the server one
    /// handler per such report, no more.
    GoneAway,
}

fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |e| e.source())
}

/// Was this transport error a refused connect (the listener is closed)?
fn refused(e: &(dyn std::error::Error + 'static)) -> bool {
    chain(e).any(|err| {
        err.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::ConnectionRefused)
    })
}

/// See [`Outcome::NotSent`].
fn not_sent(e: &(dyn std::error::Error + 'static)) -> bool {
    chain(e).any(|err| {
        err.downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
            || err
                .downcast_ref::<h2::Error>()
                .is_some_and(|h2| h2.is_remote() && h2.reason() == Some(h2::Reason::REFUSED_STREAM))
    })
}

/// See [`Outcome::GoneAway`].
fn gone_away(e: &(dyn std::error::Error + 'static)) -> bool {
    chain(e).any(|err| {
        err.downcast_ref::<h2::Error>().is_some_and(|h2| {
            h2.is_remote() && h2.is_go_away() && h2.reason() == Some(h2::Reason::NO_ERROR)
        })
    })
}

/// One HTTP request, classified; `Err` is a lost request.
async fn http_call(client: &HttpClient, addr: SocketAddr, n: u64) -> Result<Outcome, String> {
    // Every sixth request stays in flight 150 ms, so requests are in
    // flight when draining starts.
    let (path, body) = if n % 6 == 0 {
        ("/api/sleep/150", "slept 150ms\n")
    } else {
        ("/api/ok", "ok\n")
    };
    let req = Request::get(format!("http://{addr}{path}"))
        .body(Empty::new())
        .unwrap();
    let res = match tokio::time::timeout(Duration::from_secs(10), client.request(req)).await {
        Err(_) => return Err(format!("{path}: no response in 10s")),
        Ok(Err(e)) if e.is_connect() && refused(&e) => return Ok(Outcome::Refused),
        // Failed before the request was written (hyper-util's pool gave up
        // a connect it no longer needed, say).
        Ok(Err(e)) if e.is_connect() || not_sent(&e) => return Ok(Outcome::NotSent),
        Ok(Err(e)) if gone_away(&e) => return Ok(Outcome::GoneAway),
        Ok(Err(e)) => return Err(format!("{path}: {e:?}")),
        Ok(Ok(res)) => res,
    };
    let status = res.status();
    let bytes = match tokio::time::timeout(Duration::from_secs(10), res.into_body().collect()).await
    {
        Err(_) => return Err(format!("{path}: body not finished in 10s")),
        Ok(Err(e)) => return Err(format!("{path}: truncated body: {e:?}")),
        Ok(Ok(b)) => b.to_bytes(),
    };
    if status != StatusCode::OK || bytes != body.as_bytes() {
        return Err(format!(
            "{path}: {status} {:?}",
            String::from_utf8_lossy(&bytes)
        ));
    }
    Ok(Outcome::Ok)
}

/// One gRPC call, classified like [`http_call`].
async fn grpc_call(
    grpc: &mut tonic::client::Grpc<tonic::transport::Channel>,
    n: u64,
) -> Result<Outcome, String> {
    let sleep_ms = if n % 6 == 0 { 150 } else { 0 };
    let name = format!("c{n}");
    if let Err(e) = grpc.ready().await {
        return if refused(&e) {
            Ok(Outcome::Refused)
        } else if not_sent(&e) {
            Ok(Outcome::NotSent)
        } else if gone_away(&e) {
            Ok(Outcome::GoneAway)
        } else {
            Err(format!("not ready: {e:?}"))
        };
    }
    let mut req = tonic::Request::new(HelloRequest {
        name: name.clone(),
        sleep_ms,
        fail: false,
    });
    req.set_timeout(Duration::from_secs(10));
    let call = grpc.unary(
        req,
        http::uri::PathAndQuery::from_static("/demo.Greeter/SayHello"),
        ProstCodec::<HelloRequest, HelloReply>::default(),
    );
    match tokio::time::timeout(Duration::from_secs(10), call).await {
        Err(_) => Err("SayHello: no answer in 10s".to_owned()),
        Ok(Ok(reply)) if reply.get_ref().message == format!("hello, {name}") => Ok(Outcome::Ok),
        Ok(Ok(reply)) => Err(format!("SayHello: wrong reply {:?}", reply.get_ref())),
        Ok(Err(status)) => {
            let source = std::error::Error::source(&status);
            if status.code() == tonic::Code::Unavailable && source.is_some_and(refused) {
                Ok(Outcome::Refused)
            } else if source.is_some_and(not_sent) {
                Ok(Outcome::NotSent)
            } else if source.is_some_and(gone_away) {
                Ok(Outcome::GoneAway)
            } else {
                Err(format!("SayHello: {status:?}"))
            }
        }
    }
}

/// Records one result; after a refused connect the worker waits a little
/// before trying again (a real client would try another replica).
async fn record(
    tally: &Tally,
    ok: &AtomicU64,
    result: Result<Outcome, String>,
    sent: Instant,
    signalled: &Mutex<Option<Instant>>,
    what: &str,
) {
    match result {
        Ok(Outcome::Ok) => {
            ok.fetch_add(1, Ordering::Relaxed);
            if signalled.lock().unwrap().is_some_and(|t| sent >= t) {
                tally.ok_after_signal.fetch_add(1, Ordering::Relaxed);
            }
        }
        Ok(Outcome::Refused) => {
            tally.refused.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Outcome::NotSent) => {
            let counter = match what {
                "h1" => &tally.not_sent_h1,
                "h2c" => &tally.not_sent_h2,
                _ => &tally.not_sent_grpc,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Ok(Outcome::GoneAway) => {
            let counter = match what {
                "grpc" => &tally.gone_away_grpc,
                _ => &tally.gone_away_h2,
            };
            counter.fetch_add(1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        Err(e) => tally.lose(format!("{what}: {e}")),
    }
}

struct Cycle {
    http_requests: u64,
    grpc_requests: u64,
    refused: u64,
    gone_away: u64,
    gone_away_grpc: u64,
}

async fn cycle(index: usize, tally: Arc<Tally>) -> Cycle {
    let mut http = start("production");
    let mut grpc = start("grpc");
    let http_addr: SocketAddr = http
        .expect("rampart-listening ", Duration::from_secs(60))
        .parse()
        .unwrap();
    let grpc_addr: SocketAddr = grpc
        .expect("rampart-listening ", Duration::from_secs(60))
        .parse()
        .unwrap();
    let before = (
        tally.h1_ok.load(Ordering::Relaxed) + tally.h2_ok.load(Ordering::Relaxed),
        tally.grpc_ok.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.gone_away_h2.load(Ordering::Relaxed),
        tally.gone_away_grpc.load(Ordering::Relaxed),
    );

    let stop = Arc::new(AtomicBool::new(false));
    let signalled: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
    let mut workers = Vec::new();

    for w in 0..H1_CONNECTIONS {
        let (tally, stop, signalled) = (tally.clone(), stop.clone(), signalled.clone());
        workers.push(tokio::spawn(async move {
            // One keep-alive connection at a time per worker.
            let client: HttpClient = Client::builder(TokioExecutor::new()).build_http();
            let mut n = w as u64;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let sent = Instant::now();
                let result = http_call(&client, http_addr, n).await;
                record(&tally, &tally.h1_ok, result, sent, &signalled, "h1").await;
            }
        }));
    }
    for c in 0..H2_CONNECTIONS {
        // One h2c connection shared by its streams.
        let client: HttpClient = Client::builder(TokioExecutor::new())
            .http2_only(true)
            .build_http();
        for s in 0..H2_STREAMS {
            let (tally, stop, signalled) = (tally.clone(), stop.clone(), signalled.clone());
            let client = client.clone();
            workers.push(tokio::spawn(async move {
                let mut n = (c * H2_STREAMS + s) as u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let sent = Instant::now();
                    let result = http_call(&client, http_addr, n).await;
                    record(&tally, &tally.h2_ok, result, sent, &signalled, "h2c").await;
                }
            }));
        }
    }
    for c in 0..GRPC_CLIENTS {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{grpc_addr}"))
            .unwrap()
            .connect_lazy();
        for s in 0..GRPC_CALLS {
            let (tally, stop, signalled) = (tally.clone(), stop.clone(), signalled.clone());
            let mut grpc = tonic::client::Grpc::new(channel.clone());
            workers.push(tokio::spawn(async move {
                let mut n = (c * GRPC_CALLS + s) as u64;
                while !stop.load(Ordering::Relaxed) {
                    n += 1;
                    let sent = Instant::now();
                    let result = grpc_call(&mut grpc, n).await;
                    record(&tally, &tally.grpc_ok, result, sent, &signalled, "grpc").await;
                }
            }));
        }
    }

    tokio::time::sleep(LOAD_BEFORE_SIGNAL).await;
    http.signal("-TERM");
    grpc.signal("-TERM");
    let signal_at = Instant::now();
    *signalled.lock().unwrap() = Some(signal_at);

    let budget = DELAY + DRAIN + ABORT_GRACE + Duration::from_secs(1);
    let (mut http, mut grpc, http_status, grpc_status) = tokio::task::spawn_blocking(move || {
        let h = http.wait(budget);
        let left = budget.saturating_sub(signal_at.elapsed());
        let g = grpc.wait(left);
        (http, grpc, h, g)
    })
    .await
    .unwrap();
    let exited_after = signal_at.elapsed();
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap();
    }
    for (name, status) in [("production", http_status), ("grpc", grpc_status)] {
        let status =
            status.unwrap_or_else(|| panic!("{name} still running {budget:?} after SIGTERM"));
        assert!(status.success(), "{name} exit status {status:?}");
    }
    assert!(
        exited_after <= budget,
        "exited {exited_after:?} after SIGTERM"
    );

    let http_report: serde_json::Value =
        serde_json::from_str(&http.expect("rampart-shutdown-report ", Duration::from_secs(5)))
            .unwrap();
    let grpc_report: serde_json::Value =
        serde_json::from_str(&grpc.expect("rampart-shutdown-report ", Duration::from_secs(5)))
            .unwrap();
    let after = (
        tally.h1_ok.load(Ordering::Relaxed) + tally.h2_ok.load(Ordering::Relaxed),
        tally.grpc_ok.load(Ordering::Relaxed),
        tally.refused.load(Ordering::Relaxed),
        tally.gone_away_h2.load(Ordering::Relaxed),
        tally.gone_away_grpc.load(Ordering::Relaxed),
    );
    let done = Cycle {
        http_requests: after.0 - before.0,
        grpc_requests: after.1 - before.1,
        refused: after.2 - before.2,
        gone_away: after.3 - before.3,
        gone_away_grpc: after.4 - before.4,
    };
    eprintln!(
        "cycle {index}: http {} ok, grpc {} ok, {} refused connects, requests failed with GOAWAY ({} h2c, {} gRPC), exited {exited_after:?} after SIGTERM\n  production: {http_report}\n  grpc: {grpc_report}",
        done.http_requests, done.grpc_requests, done.refused, done.gone_away, done.gone_away_grpc
    );

    for report in [&http_report, &grpc_report] {
        assert_eq!(report["trigger"], "sigterm", "{report}");
        assert_eq!(report["aborted"], 0, "{report}");
        assert_eq!(report["left_in_flight"], 0, "{report}");
        assert_eq!(report["drain_timed_out"], false, "{report}");
        // Those in flight when draining began finished, and so did the
        // requests answered on connections the server still owed.
        assert!(
            report["finished"].as_u64().unwrap() >= report["in_flight_at_drain"].as_u64().unwrap(),
            "{report}"
        );
    }
    // Every 200 a client got is a handler that returned; every handler
    // that started and did not end in a 200 the clients counted (the
    // server answered it, or cancelled it on the client's word) is one of
    // the h2c requests hyper reported as gone away (`Outcome::GoneAway`):
    // with none of those, exactly the answers the clients counted.
    let started = http_report["api_started"].as_u64().unwrap();
    let completed = http_report["api_completed"].as_u64().unwrap();
    assert!(
        done.http_requests <= completed && completed <= started,
        "production served {http_report} but the clients counted {} answers",
        done.http_requests
    );
    assert!(
        started - done.http_requests <= done.gone_away,
        "production started {started} handlers, the clients counted {} answers and {} \
         requests failed with GOAWAY: {http_report}",
        done.http_requests,
        done.gone_away
    );
    // Likewise for gRPC, over tonic's (hyper's) HTTP/2 client.
    let greeted = grpc_report["greeted"].as_u64().unwrap();
    assert!(
        done.grpc_requests <= greeted && greeted - done.grpc_requests <= done.gone_away_grpc,
        "grpc served {grpc_report} but the clients counted {} answers and {} calls failed \
         with GOAWAY",
        done.grpc_requests,
        done.gone_away_grpc
    );
    done
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_loses_nothing_over_five_cycles() {
    let tally = Arc::new(Tally::default());
    let (mut http, mut grpc, mut refused) = (0, 0, 0);
    for i in 0..CYCLES {
        let c = cycle(i, tally.clone()).await;
        http += c.http_requests;
        grpc += c.grpc_requests;
        refused += c.refused;
        let lost = tally.lost.lock().unwrap();
        assert!(
            lost.is_empty(),
            "cycle {i}: {} lost: {:?}",
            lost.len(),
            &lost[..lost.len().min(20)]
        );
    }
    eprintln!(
        "zero-drop totals over {CYCLES} cycles: {} requests answered ({http} HTTP/1.1 + h2c, {grpc} gRPC), {} of them after SIGTERM; {refused} refused connections; requests not sent on a connection going away (retried): {} HTTP/1.1, {} h2c, {} gRPC; {} h2c and {} gRPC requests failed with the connection's GOAWAY; 0 lost",
        http + grpc,
        tally.ok_after_signal.load(Ordering::Relaxed),
        tally.not_sent_h1.load(Ordering::Relaxed),
        tally.not_sent_h2.load(Ordering::Relaxed),
        tally.not_sent_grpc.load(Ordering::Relaxed),
        tally.gone_away_h2.load(Ordering::Relaxed),
        tally.gone_away_grpc.load(Ordering::Relaxed),
    );
    assert!(
        tally.h1_ok.load(Ordering::Relaxed) > 0,
        "no HTTP/1.1 load got through"
    );
    assert!(
        tally.h2_ok.load(Ordering::Relaxed) > 0,
        "no h2c load got through"
    );
    assert!(
        tally.grpc_ok.load(Ordering::Relaxed) > 0,
        "no gRPC load got through"
    );
    assert!(
        tally.ok_after_signal.load(Ordering::Relaxed) > 0,
        "nothing was served after the signal"
    );
}
