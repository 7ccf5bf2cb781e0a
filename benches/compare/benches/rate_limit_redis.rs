//! In-process vs Redis-backed rate limit, in one run, against local
//! `redis-server`s started by the bench (skipped with a message when it is
//! missing): first issue 16's table (decisions per second with 64 tasks,
//! p50/p99 per decision one at a time, for in-process, exact Redis, exact
//! Redis over TLS, a 3-node Redis Cluster and leased mode; TLS needs the
//! `openssl` command, the cluster `redis-cli`, each row skipped with a
//! message without them), then admit and refuse latency, throughput with 2
//! and 64 concurrent tasks, and Redis round trips per request (INFO
//! commandstats).
//! `cargo bench -p tower-rampart-benches --bench rate_limit_redis -- --warm-up-time 1 --measurement-time 3`
use std::convert::Infallible;
use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_rampart::rate_limit::{
    FailurePolicy, Lease, Quota, RateLimitLayer, RedisMode, RedisStore, RedisTls,
};

type Req = Request<()>;

struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn start_redis() -> Option<(Server, String)> {
    let bin = "/usr/bin/redis-server";
    if !std::path::Path::new(bin).exists() {
        eprintln!("SKIPPED: {bin} not found; the Redis bench needs a local redis-server");
        return None;
    }
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .ok()?
        .local_addr()
        .ok()?
        .port();
    let child = Command::new(bin)
        .args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            eprintln!("SKIPPED: redis-server did not start");
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Some((server, format!("redis://127.0.0.1:{port}/")))
}

fn inner() -> impl Service<
    Req,
    Response = Response<String>,
    Error = Infallible,
    Future = std::future::Ready<Result<Response<String>, Infallible>>,
> + Clone
+ Send
+ 'static {
    tower::service_fn(|_req: Req| std::future::ready(Ok(Response::new(String::new()))))
}

fn layer(url: Option<&str>, rate: &str) -> RateLimitLayer {
    layer_on(url.map(RedisStore::new), rate)
}

fn layer_on(store: Option<RedisStore>, rate: &str) -> RateLimitLayer {
    let mut b = RateLimitLayer::builder()
        .name("bench")
        .quota(Quota::new(rate.parse().unwrap()));
    if let Some(store) = store {
        b = b.redis(store.failure_policy(FailurePolicy::FailClosed));
    }
    b.build().unwrap()
}

/// A table row's store: fail closed (a failed call is a 429, which the
/// row refuses), with a timeout no loaded machine reaches.
fn table_store(store: RedisStore) -> Option<RedisStore> {
    Some(store.timeout(Duration::from_secs(1)))
}

/// A temporary directory, removed on drop.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(what: &str) -> Self {
        let dir = std::env::temp_dir().join(format!("rampart-bench-{what}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn wait_port(port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

/// A TLS-only `redis-server` with a CA and server certificate made by the
/// `openssl` command: the server, its directory, and the CA's PEM.
fn start_tls_redis() -> Option<(Server, TempDir, u16, Vec<u8>)> {
    let dir = TempDir::new("tls");
    let d = |f: &str| dir.0.join(f).to_string_lossy().into_owned();
    let ok = |args: &[&str]| {
        Command::new("openssl")
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    };
    std::fs::write(d("san.cnf"), "subjectAltName=IP:127.0.0.1,DNS:localhost\n").ok()?;
    let made = ok(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "1",
        "-subj",
        "/CN=bench CA",
        "-keyout",
        &d("ca.key"),
        "-out",
        &d("ca.pem"),
    ]) && ok(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=localhost",
        "-keyout",
        &d("server.key"),
        "-out",
        &d("server.csr"),
    ]) && ok(&[
        "x509",
        "-req",
        "-in",
        &d("server.csr"),
        "-CA",
        &d("ca.pem"),
        "-CAkey",
        &d("ca.key"),
        "-CAcreateserial",
        "-days",
        "1",
        "-extfile",
        &d("san.cnf"),
        "-out",
        &d("server.pem"),
    ]);
    if !made {
        eprintln!("SKIPPED: the TLS row needs the `openssl` command");
        return None;
    }
    let port = free_port();
    let child = Command::new("/usr/bin/redis-server")
        .args([
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
        ])
        .args([
            "--tls-cert-file",
            &d("server.pem"),
            "--tls-key-file",
            &d("server.key"),
        ])
        .args([
            "--tls-ca-cert-file",
            &d("ca.pem"),
            "--tls-auth-clients",
            "no",
        ])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    let server = Server(child);
    if !wait_port(port) {
        eprintln!("SKIPPED: redis-server did not start with TLS");
        return None;
    }
    let ca = std::fs::read(d("ca.pem")).ok()?;
    Some((server, dir, port, ca))
}

/// A 3-master Redis Cluster on loopback (`redis-cli --cluster create`):
/// the servers, their directory, and the seed URLs.
fn start_cluster() -> Option<(Vec<Server>, TempDir, Vec<String>)> {
    let dir = TempDir::new("cluster");
    let mut servers = Vec::new();
    let mut ports = Vec::new();
    for i in 0..3 {
        let port = free_port();
        let node_dir = dir.0.join(format!("n{i}"));
        std::fs::create_dir_all(&node_dir).ok()?;
        let child = Command::new("/usr/bin/redis-server")
            .current_dir(&node_dir)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args([
                "--cluster-enabled",
                "yes",
                "--cluster-config-file",
                "nodes.conf",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .ok()?;
        servers.push(Server(child));
        if !wait_port(port) {
            return None;
        }
        ports.push(port);
    }
    let nodes: Vec<String> = ports.iter().map(|p| format!("127.0.0.1:{p}")).collect();
    let created = Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&nodes)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !created {
        eprintln!("SKIPPED: the cluster row needs `redis-cli --cluster create`");
        return None;
    }
    let urls: Vec<String> = ports
        .iter()
        .map(|p| format!("redis://127.0.0.1:{p}/"))
        .collect();
    // Every node agrees the cluster is up.
    let deadline = Instant::now() + Duration::from_secs(20);
    for url in &urls {
        loop {
            let state: Option<String> = redis::Client::open(url.as_str())
                .ok()
                .and_then(|c| c.get_connection().ok())
                .and_then(|mut c| redis::cmd("CLUSTER").arg("INFO").query(&mut c).ok());
            if state.is_some_and(|s| s.contains("cluster_state:ok")) {
                break;
            }
            if Instant::now() > deadline {
                eprintln!("SKIPPED: the cluster did not come up");
                return None;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    Some((servers, dir, urls))
}

/// One row of issue 16's table: decisions per second with 64 tasks (2 s),
/// then p50/p99 of 20 000 decisions one at a time.
fn table_row(rt: &tokio::runtime::Runtime, label: &str, l: &RateLimitLayer) -> u64 {
    let mut svc = l.layer(inner());
    // Warm: connected (lazily, by the first call), script loaded, leases
    // sized; then every decision must be Redis's (200), not the failure
    // policy's.
    rt.block_on(async {
        let mut tries = 0;
        while one(&mut svc).await != 200 {
            tries += 1;
            assert!(tries < 100, "{label}: no answer from the store");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for _ in 0..2000 {
            assert_eq!(one(&mut svc).await, 200, "{label}");
        }
    });
    let tasks = 64;
    let run = Duration::from_secs(2);
    let done = rt.block_on(async {
        let start = tokio::time::Instant::now();
        let handles: Vec<_> = (0..tasks)
            .map(|_| {
                let mut svc = l.layer(inner());
                tokio::spawn(async move {
                    let mut n = 0u64;
                    while start.elapsed() < run {
                        assert_eq!(black_box(one(&mut svc).await), 200);
                        n += 1;
                    }
                    n
                })
            })
            .collect();
        let mut n = 0;
        for h in handles {
            n += h.await.unwrap();
        }
        (n, n as f64 / start.elapsed().as_secs_f64())
    });
    let (ran, done) = done;
    let mut lat: Vec<Duration> = rt.block_on(async {
        let mut lat = Vec::with_capacity(20_000);
        for _ in 0..20_000 {
            let t = Instant::now();
            black_box(one(&mut svc).await);
            lat.push(t.elapsed());
        }
        lat
    });
    lat.sort_unstable();
    let pct = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "| {label} | {:.0} | {:.2} us | {:.2} us |",
        done,
        pct(0.50).as_secs_f64() * 1e6,
        pct(0.99).as_secs_f64() * 1e6
    );
    // Every decision of the row: warm-up, the 64 tasks, one at a time.
    2001 + ran + 20_000
}

/// Issue 16's table, every row in this one run.
fn table(rt: &tokio::runtime::Runtime, url: &str) {
    let _guard = rt.enter();
    let rate = "1000000000/s";
    println!("| store | decisions/s, 64 tasks | p50, one at a time | p99, one at a time |");
    println!("|---|---|---|---|");
    table_row(rt, "in-process", &layer(None, rate));
    let exact = layer_on(table_store(RedisStore::new(url)), rate);
    table_row(rt, "exact Redis", &exact);
    match start_tls_redis() {
        Some((_server, _dir, port, ca)) => {
            let store = RedisStore::new(format!("rediss://127.0.0.1:{port}/"))
                .tls(RedisTls::new().ca_pem(ca));
            table_row(
                rt,
                "exact Redis over TLS",
                &layer_on(table_store(store), rate),
            );
        }
        None => println!("| exact Redis over TLS | skipped | | |"),
    }
    match start_cluster() {
        Some((_servers, _dir, urls)) => {
            let store = RedisStore::cluster(urls);
            table_row(
                rt,
                "exact Redis Cluster (3 masters)",
                &layer_on(table_store(store), rate),
            );
        }
        None => println!("| exact Redis Cluster | skipped | | |"),
    }
    for max in [100, 1000] {
        let lease = Lease::new().max(max);
        let leased = layer_on(
            table_store(RedisStore::new(url).mode(RedisMode::Leased(lease))),
            rate,
        );
        let before = calls(url, &["evalsha", "eval", "script|load"]);
        let label = format!("leased (lease_max {max})");
        let decisions = table_row(rt, &label, &leased);
        let trips = calls(url, &["evalsha", "eval", "script|load"]) - before;
        println!(
            "({label}: {trips} round trips for {decisions} decisions, {:.4} per decision)",
            trips as f64 / decisions as f64
        );
    }
}

async fn one<S>(svc: &mut S) -> u16
where
    S: Service<Req, Response = Response<tower_rampart::rejection::ResponseBody<String>>>,
    S::Error: std::fmt::Debug,
{
    svc.ready()
        .await
        .unwrap()
        .call(Request::new(()))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Calls of one command (`INFO commandstats`), by its stat name.
fn calls(url: &str, names: &[&str]) -> u64 {
    let mut c = redis::Client::open(url).unwrap().get_connection().unwrap();
    let info: String = redis::cmd("INFO")
        .arg("commandstats")
        .query(&mut c)
        .unwrap();
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

/// Round trips (top-level commands a client sent: `EVALSHA`, `EVAL`,
/// `SCRIPT LOAD`) and the commands run inside the script (`TIME`, `GET`,
/// `SET`), per request, over `n` requests.
fn per_request(url: &str, n: u64, run: impl FnOnce()) -> (f64, f64) {
    let top = ["evalsha", "eval", "script|load"];
    let inner = ["time", "get", "set"];
    let (t0, i0) = (calls(url, &top), calls(url, &inner));
    run();
    let (t1, i1) = (calls(url, &top), calls(url, &inner));
    ((t1 - t0) as f64 / n as f64, (i1 - i0) as f64 / n as f64)
}

fn main() {
    let Some((_server, url)) = start_redis() else {
        return;
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    table(&rt, &url);
    let _guard = rt.enter();
    let mut c = Criterion::default().configure_from_args();

    // Round trips per request, after the script is loaded.
    {
        let n = 1000;
        for (what, rate, want) in [("admitted", "1000000000/s", 200), ("refused", "1/h", 429)] {
            let l = layer(Some(&url), rate);
            let mut svc = l.layer(inner());
            rt.block_on(one(&mut svc));
            let (trips, inside) = per_request(&url, n, || {
                rt.block_on(async {
                    for _ in 0..n {
                        assert_eq!(one(&mut svc).await, want);
                    }
                })
            });
            println!(
                "redis round trips per {what} request: {trips:.3} (commands inside the script: {inside:.3})"
            );
        }
    }

    let mut g = c.benchmark_group("rate_limit_redis");
    let leased = || Some(RedisStore::new(url.as_str()).mode(RedisMode::Leased(Lease::new())));
    for (label, store) in [
        ("in_process", None),
        ("redis", Some(RedisStore::new(url.as_str()))),
        ("leased", leased()),
    ] {
        let admit = layer_on(store.clone(), "1000000000/s");
        let mut svc = admit.layer(inner());
        g.bench_function(format!("{label}/admit"), |b| {
            b.iter(|| black_box(rt.block_on(one(&mut svc))))
        });
        let refuse = layer_on(store.clone(), "1/h");
        let mut svc = refuse.layer(inner());
        rt.block_on(one(&mut svc));
        g.bench_function(format!("{label}/refuse"), |b| {
            b.iter(|| black_box(rt.block_on(one(&mut svc))))
        });
        for tasks in [2usize, 64] {
            let l = layer_on(store.clone(), "1000000000/s");
            g.bench_function(format!("{label}/throughput_{tasks}_tasks"), |b| {
                b.iter_custom(|iters| {
                    let per = (iters as usize).div_ceil(tasks);
                    let start = Instant::now();
                    rt.block_on(async {
                        let handles: Vec<_> = (0..tasks)
                            .map(|_| {
                                let mut svc = l.layer(inner());
                                tokio::spawn(async move {
                                    for _ in 0..per {
                                        black_box(one(&mut svc).await);
                                    }
                                })
                            })
                            .collect();
                        for h in handles {
                            h.await.unwrap();
                        }
                    });
                    // Per request (criterion divides by iters).
                    start.elapsed().mul_f64(iters as f64 / (per * tasks) as f64)
                })
            });
        }
    }
    g.finish();
    c.final_summary();
}
