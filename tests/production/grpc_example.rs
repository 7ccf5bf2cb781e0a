//! The `grpc` example, as two real processes: the server (built from
//! `examples/configs/production.toml`) and its `--call` client mode. The
//! health service answers, the greeting passes the stack, the timeout
//! answers DEADLINE_EXCEEDED, and SIGTERM stops the server cleanly.
#![cfg(unix)]

use crate::common;
use std::io::{BufRead, BufReader};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn binary() -> PathBuf {
    common::example_binary("grpc")
}

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the `--call` client; `succeeds` is the exit status expected: a call
/// that fails exits 1, so a script can tell.
fn call(addr: &str, args: &[&str], succeeds: bool) -> String {
    let out = Command::new(binary())
        .args(["--call", addr])
        .args(args)
        .output()
        .unwrap();
    if succeeds {
        assert!(out.status.success(), "{out:?}");
    } else {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
    }
    String::from_utf8(out.stdout).unwrap()
}

#[test]
fn grpc_example_serves_behind_the_stack() {
    let mut child = Command::new(binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "--config",
            "examples/configs/production.toml",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RAMPART_SHUTDOWN__SHUTDOWN_DELAY", "0s")
        .env("RAMPART_TIMEOUT__TIMEOUT", "300ms")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("rampart-listening ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .trim()
        .to_owned();

    let out = call(&addr, &["--name", "Ada"], true);
    assert!(out.contains("health \"\": SERVING"), "{out}");
    assert!(out.contains("health \"demo.Greeter\": SERVING"), "{out}");
    assert!(out.contains("SayHello: hello, Ada"), "{out}");
    let out = call(&addr, &["--sleep-ms", "5000"], false);
    assert!(out.contains("SayHello: DeadlineExceeded"), "{out}");
    let out = call(&addr, &["--fail"], false);
    assert!(
        out.contains("SayHello: Internal: failed on purpose"),
        "{out}"
    );
    // 20 calls at least before the breaker judges: open SayHello's.
    for _ in 0..19 {
        call(&addr, &["--fail"], false);
    }
    // Its breaker is open; grpc.health.v1 is outside the protections and
    // answers what /readyz answers (breaker_readiness = "warn": serving), so
    // a Kubernetes `grpc:` probe does not fail on every replica at once.
    let out = call(&addr, &["--name", "Ada"], false);
    assert!(out.contains("health \"\": SERVING"), "{out}");
    assert!(out.contains("SayHello: Unavailable"), "{out}");

    let ok = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running 10s after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "{status:?}");
}

/// The rollout: a client watching `grpc.health.v1` (a client-side
/// load balancer, a mesh) used to hold the server until the drain deadline
/// and be counted as aborted. Now the watcher hears `NOT_SERVING` on
/// SIGTERM, its stream ends (status OK) when draining starts, and the
/// process exits after its delay, long before the 20 s drain deadline.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watching_client_does_not_hold_the_rollout() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let mut child = Command::new(binary())
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "--config",
            "examples/configs/production.toml",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RAMPART_SHUTDOWN__SHUTDOWN_DELAY", "500ms")
        .env("RAMPART_SHUTDOWN__DRAIN_TIMEOUT", "20s")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let mut server = Server(child);
    let mut line = String::new();
    BufReader::new(stdout).read_line(&mut line).unwrap();
    let addr = line
        .strip_prefix("rampart-listening ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .trim()
        .to_owned();

    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut watch = HealthClient::new(channel)
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);

    let signalled = Instant::now();
    let ok = Command::new("kill")
        .args(["-TERM", &server.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    assert!(
        watch.message().await.expect("ended with OK").is_none(),
        "the server ends the stream when draining starts"
    );

    // Far from the 20 s drain deadline (the bound leaves room for a slow
    // machine; the old behaviour was the full 20 s).
    let status = loop {
        if let Some(status) = server.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < Duration::from_secs(10),
            "still running 10s after SIGTERM: the watcher held the drain"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
}
