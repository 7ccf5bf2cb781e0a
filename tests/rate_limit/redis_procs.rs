//! `redis-server` processes for the TLS and Cluster tests: found like the
//! other Redis tests do (`REDIS_SERVER`, Debian's path, `PATH`; a missing
//! binary skips the test, saying so, except under `CI`, where it fails),
//! each in its own temporary directory, killed (and the directory removed)
//! on drop.
#![allow(dead_code)]

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// The `redis-server` binary, or `None` (after saying so) when it is
/// missing outside CI. Under CI a missing binary fails the test.
pub fn redis_server_bin() -> Option<PathBuf> {
    find(
        "REDIS_SERVER",
        "/usr/bin/redis-server",
        "redis-server",
        "redis-server",
    )
}

/// `redis-cli`, found next to `redis-server` or on `PATH` (same rules).
pub fn redis_cli_bin() -> Option<PathBuf> {
    find(
        "REDIS_CLI",
        "/usr/bin/redis-cli",
        "redis-cli",
        "redis-tools",
    )
}

fn find(env: &str, debian: &str, name: &str, package: &str) -> Option<PathBuf> {
    let wanted = std::env::var(env).unwrap_or_else(|_| debian.to_owned());
    let found = Some(PathBuf::from(&wanted))
        .filter(|p| p.exists())
        .or_else(|| {
            std::env::var_os("PATH").and_then(|paths| {
                std::env::split_paths(&paths)
                    .map(|p| p.join(name))
                    .find(|p| p.exists())
            })
        });
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "{name} not found ({wanted}): CI must install it (.ci/run installs Debian's {package})"
        );
        eprintln!("SKIPPED: {name} not found ({wanted}); install it to run the Redis tests");
    }
    found
}

/// A free loopback port (bound then released: a test starts its server on
/// it at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(what: &str) -> Self {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rampart-{what}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    pub fn path(&self) -> &Path {
        &self.0
    }

    /// Writes `contents` to `name` in the directory; returns its path.
    pub fn write(&self, name: &str, contents: impl AsRef<[u8]>) -> PathBuf {
        let p = self.0.join(name);
        std::fs::write(&p, contents).unwrap();
        p
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// One `redis-server` child, started with its arguments in directory
/// `dir`, listening on `port` (TCP or TLS); killed on drop. Its log is
/// `redis.log` in `dir`, shown when it does not start.
pub struct RedisProc {
    bin: PathBuf,
    pub port: u16,
    dir: PathBuf,
    args: Vec<String>,
    child: Option<Child>,
}

impl RedisProc {
    /// Starts `bin` on a free loopback port with the arguments `args`
    /// makes for it (plus `--dir`, `--logfile`, no persistence) and waits
    /// until the port accepts connections. A server that exits at once
    /// (another process took the port between the probe and the bind) is
    /// started again on another port.
    pub fn start(bin: &Path, dir: &Path, args: impl Fn(u16) -> Vec<String>) -> Self {
        let mut tries = 0;
        loop {
            let port = free_port();
            let mut p = Self {
                bin: bin.to_owned(),
                port,
                dir: dir.to_owned(),
                args: args(port),
                child: None,
            };
            match p.try_spawn() {
                Ok(()) => return p,
                Err(why) if tries < 4 => {
                    eprintln!("redis-server on {port}: {why}; another port");
                    tries += 1;
                }
                Err(why) => panic!("redis-server on {port} did not start: {why}"),
            }
        }
    }

    /// Starts it again after [`kill`](Self::kill): same port, directory
    /// and arguments.
    pub fn spawn(&mut self) {
        if let Err(why) = self.try_spawn() {
            panic!("redis-server on {} did not start: {why}", self.port);
        }
    }

    fn try_spawn(&mut self) -> Result<(), String> {
        std::fs::create_dir_all(&self.dir).unwrap();
        let stderr = std::fs::File::create(self.dir.join("stderr.log")).unwrap();
        let mut child = Command::new(&self.bin)
            .args(["--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&self.dir)
            .args(["--logfile", "redis.log"])
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("start redis-server");
        let log = |dir: &Path| {
            ["redis.log", "stderr.log"]
                .map(|f| std::fs::read_to_string(dir.join(f)).unwrap_or_default())
                .join("")
        };
        // Generous: the CI machine may be busy compiling beside us.
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!("exited ({status}):\n{}", log(&self.dir)));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!("no answer in 30s:\n{}", log(&self.dir)));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        self.child = Some(child);
        Ok(())
    }

    /// Kills it at once (SIGKILL: a crash, not a shutdown).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }
}

impl Drop for RedisProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Calls of the named commands since the last reset, from
/// `INFO commandstats` text (`cmdstat_<name>:calls=N,...`).
pub fn command_calls(info: &str, names: &[&str]) -> u64 {
    info.lines()
        .filter(|l| {
            names
                .iter()
                .any(|n| l.starts_with(&format!("cmdstat_{n}:")))
        })
        .filter_map(|l| l.split("calls=").nth(1))
        .filter_map(|s| s.split(',').next())
        .filter_map(|n| n.parse::<u64>().ok())
        .sum()
}

/// The round trips a client can make for one decision: the script call,
/// and its loading after a `NOSCRIPT`.
pub const ROUND_TRIPS: [&str; 3] = ["evalsha", "eval", "script|load"];

/// Round trips the rate limit made to the Redis at `url`: calls of the
/// commands a client sends to run a script ([`ROUND_TRIPS`]).
pub async fn round_trips(url: &str) -> u64 {
    let mut c = redis::Client::open(url)
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut c)
        .await
        .unwrap();
    command_calls(&info, &ROUND_TRIPS)
}
