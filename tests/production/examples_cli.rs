//! The example programs as a user runs them: `--help` answers with the
//! usage on stdout and exit 0 (like every Go `flag` or clap program), an
//! unknown argument exits 2 with the usage on stderr, the `grpc` client
//! mode exits 1 when it cannot make its call, and the `production`
//! program's `/metrics` describes every `rampart_` metric and exports the
//! duration histograms as Prometheus histograms (`_bucket` series).
#![cfg(unix)]

use crate::common;

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn binary(name: &str) -> PathBuf {
    common::example_binary(name)
}

fn run(name: &str, args: &[&str]) -> Output {
    Command::new(binary(name))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn help_prints_usage_on_stdout_and_exits_0() {
    for (name, flags) in [
        ("production", &["--config", "--listen"][..]),
        (
            "grpc",
            &["--config", "--listen", "--call", "--sleep-ms"][..],
        ),
    ] {
        for help in ["--help", "-h"] {
            let out = run(name, &[help]);
            let stdout = text(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{name} {help}: {out:?}");
            assert!(
                stdout.starts_with(&format!("usage: {name} ")),
                "{name} {help}: {stdout}"
            );
            for flag in flags {
                assert!(
                    stdout.contains(flag),
                    "{name} {help} lacks {flag}: {stdout}"
                );
            }
            assert!(
                out.stderr.is_empty(),
                "{name} {help}: {}",
                text(&out.stderr)
            );
        }
        // --help wins over the other arguments, even a bad config path.
        let out = run(name, &["--config", "/nonexistent.toml", "--help"]);
        assert_eq!(out.status.code(), Some(0), "{name}: {out:?}");
    }
}

#[test]
fn unknown_arguments_exit_2_with_the_usage_on_stderr() {
    for name in ["production", "grpc"] {
        let out = run(name, &["--bogus"]);
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
        let stderr = text(&out.stderr);
        assert!(stderr.contains("unknown argument `--bogus`"), "{stderr}");
        assert!(stderr.contains(&format!("usage: {name} ")), "{stderr}");
        assert!(out.stdout.is_empty(), "{name}: {}", text(&out.stdout));
        // A flag without its value.
        let out = run(name, &["--listen"]);
        assert_eq!(out.status.code(), Some(2), "{name}: {out:?}");
    }
}

#[test]
fn grpc_call_exits_1_when_the_server_cannot_be_reached() {
    // A port nothing listens on: bind one, note it, close it.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let out = run("grpc", &["--call", &format!("127.0.0.1:{port}")]);
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert!(text(&out.stderr).contains("error:"), "{out:?}");
}

/// The `production` process; killed if the test fails before it exits.
struct Process(Child);

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test]
async fn production_metrics_have_help_and_histogram_buckets() {
    let mut child = Command::new(binary("production"))
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args([
            "--config",
            "examples/configs/production.toml",
            "--listen",
            "127.0.0.1:0",
        ])
        .env("RAMPART_SHUTDOWN__SHUTDOWN_DELAY", "0s")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let lines = common::stdout_lines(&mut child);
    let process = Process(child);
    let line = lines.recv_timeout(Duration::from_secs(60)).unwrap();
    let addr = line
        .strip_prefix("rampart-listening ")
        .unwrap_or_else(|| panic!("unexpected first line {line:?}"))
        .parse()
        .unwrap();

    // Traffic that records into the histograms: probes run the checks.
    assert_eq!(common::get(addr, "/readyz").await.status, 200);
    assert_eq!(common::get(addr, "/api/ok").await.status, 200);
    let metrics = common::get(addr, "/metrics").await;
    assert_eq!(metrics.status, 200);
    let body = metrics.body;

    let families: std::collections::BTreeSet<&str> = body
        .lines()
        .filter(|l| l.starts_with("rampart_"))
        .map(|l| l.split(['{', ' ']).next().unwrap())
        .map(|n| {
            ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| n.strip_suffix(s))
                .unwrap_or(n)
        })
        .collect();
    assert!(families.len() >= 10, "{body}");
    for family in &families {
        assert!(
            body.contains(&format!("# HELP {family} ")),
            "{family} has no HELP line:\n{body}"
        );
        assert!(
            body.contains(&format!("# TYPE {family} ")),
            "{family} has no TYPE line:\n{body}"
        );
    }
    for histogram in [
        "rampart_health_check_duration_seconds",
        "rampart_drain_duration_seconds",
    ] {
        if !families.contains(histogram) {
            // The drain histogram appears once a drain was recorded.
            assert_eq!(histogram, "rampart_drain_duration_seconds", "{body}");
            continue;
        }
        assert!(
            body.contains(&format!("# TYPE {histogram} histogram")),
            "{histogram} is not a histogram:\n{body}"
        );
        assert!(
            body.contains(&format!("{histogram}_bucket{{")),
            "{histogram} has no buckets:\n{body}"
        );
        assert!(body.contains("le=\"+Inf\""), "{body}");
    }

    let ok = Command::new("kill")
        .args(["-TERM", &process.0.id().to_string()])
        .status()
        .unwrap()
        .success();
    assert!(ok);
    let mut process = process;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = process.0.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "still running 30s after SIGTERM");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(status.success(), "{status:?}");
}
