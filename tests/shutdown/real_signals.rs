//! Real signals sent to a real child process (`examples/lifecycle_child.rs`,
//! built by cargo next to this test's binary).
#![cfg(unix)]
use crate::common;

use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use http::StatusCode;

/// `target/<profile>/examples/lifecycle_child`: cargo builds examples for
/// `cargo test`; when only this test was asked for, build it.
fn child_binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().unwrap().parent().unwrap();
    let bin = profile_dir.join("examples").join("lifecycle_child");
    if !bin.exists() {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--example", "lifecycle_child", "--all-features"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .status()
            .expect("cannot run cargo");
        assert!(status.success(), "cannot build the child example");
    }
    assert!(bin.exists(), "{} missing", bin.display());
    bin
}

struct Proc {
    child: Child,
    lines: mpsc::Receiver<String>,
    seen: Vec<String>,
}

impl Proc {
    fn spawn(delay_ms: u64) -> Self {
        Self::spawn_with(delay_ms, false)
    }

    fn spawn_with(delay_ms: u64, trigger: bool) -> Self {
        let mut child = Command::new(child_binary())
            .env("RAMPART_DELAY_MS", delay_ms.to_string())
            .env("RAMPART_TRIGGER", if trigger { "1" } else { "0" })
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let lines = common::stdout_lines(&mut child);
        Self {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// The first line starting with `prefix` (waiting up to 20s).
    fn expect(&mut self, prefix: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!("no `{prefix}` line; saw {:?}", self.seen),
            }
        }
    }

    fn signal(&self, sig: &str) {
        let status = Command::new("kill")
            .args([sig, &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// Waits for the exit (up to 20s).
    fn wait(&mut self) -> ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(Instant::now() < deadline, "child did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rest(&mut self) -> Vec<String> {
        while let Ok(line) = self.lines.recv_timeout(Duration::from_secs(5)) {
            self.seen.push(line);
        }
        self.seen.clone()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn field<'a>(line: &'a str, key: &str) -> &'a str {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {key} in {line}"))
}

#[tokio::test]
async fn sigterm_goes_through_the_phases_and_exits_0() {
    let mut p = Proc::spawn(1000);
    let addr: std::net::SocketAddr = p
        .expect("listening ")
        .trim_start_matches("listening ")
        .parse()
        .unwrap();
    assert_eq!(common::get(addr, "/readyz").await.status, StatusCode::OK);
    assert_eq!(common::get(addr, "/").await.body, "hello");

    p.signal("-TERM");
    p.expect("phase shutdown_requested");
    // During the delay: still serving, but not ready.
    assert_eq!(
        common::get(addr, "/readyz").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let hi = common::get(addr, "/").await;
    assert_eq!(hi.status, StatusCode::OK);
    assert_eq!(hi.header("connection"), "close");
    p.expect("phase draining");

    let status = p.wait();
    assert!(status.success(), "exit status {status:?}");
    let seen = p.rest();
    let report = seen
        .iter()
        .find(|l| l.starts_with("report "))
        .unwrap_or_else(|| panic!("no report in {seen:?}"));
    assert_eq!(field(report, "trigger"), "sigterm");
    assert_eq!(field(report, "aborted"), "0");
    assert!(field(report, "delay_ms").parse::<u64>().unwrap() >= 1000);
}

#[tokio::test]
async fn sigint_skips_the_delay() {
    let mut p = Proc::spawn(600_000);
    p.expect("listening ");
    p.signal("-INT");
    let status = p.wait();
    assert!(status.success(), "exit status {status:?}");
    let seen = p.rest();
    let report = seen.iter().find(|l| l.starts_with("report ")).unwrap();
    assert_eq!(field(report, "trigger"), "sigint");
    // No 600s wait: the delay is skipped (allowing for scheduling).
    assert!(field(report, "delay_ms").parse::<u64>().unwrap() < 100);
}

#[tokio::test]
async fn a_second_signal_exits_at_once() {
    let mut p = Proc::spawn(600_000);
    p.expect("listening ");
    p.signal("-TERM");
    p.expect("phase shutdown_requested");
    p.signal("-TERM");
    let status = p.wait();
    assert_eq!(status.code(), Some(1), "forced exit code");
    let seen = p.rest();
    assert!(
        !seen.iter().any(|l| l.starts_with("report ")),
        "no orderly end: {seen:?}"
    );
}

#[tokio::test]
async fn after_a_programmatic_trigger_the_first_signal_does_not_force() {
    let mut p = Proc::spawn_with(600_000, true);
    let addr: std::net::SocketAddr = p
        .expect("listening ")
        .trim_start_matches("listening ")
        .parse()
        .unwrap();
    p.expect("phase shutdown_requested");
    p.signal("-TERM");
    // Give the child time to handle the signal: it must still be serving.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        p.child.try_wait().unwrap().is_none(),
        "exited on the first signal"
    );
    assert_eq!(common::get(addr, "/livez").await.status, StatusCode::OK);
    p.signal("-TERM");
    assert_eq!(
        p.wait().code(),
        Some(1),
        "the second signal forces the exit"
    );
}
