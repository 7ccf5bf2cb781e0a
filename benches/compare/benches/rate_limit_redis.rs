//! In-process vs Redis-backed rate limit, in one run, against a local
//! `redis-server` started by the bench (skipped with a message when it is
//! missing): admit and refuse latency, throughput with 2 and 64 concurrent
//! tasks, and Redis round trips per request (INFO commandstats).
//! `cargo bench --all-features --bench rate_limit_redis -- --warm-up-time 1 --measurement-time 3`
use std::convert::Infallible;
use std::hint::black_box;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use http::{Request, Response};
use tower::{Layer, Service, ServiceExt};
use tower_rampart::rate_limit::{FailurePolicy, Quota, RateLimitLayer, RedisStore};

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
    let mut b = RateLimitLayer::builder()
        .name("bench")
        .quota(Quota::new(rate.parse().unwrap()));
    if let Some(url) = url {
        b = b.redis(RedisStore::new(url).failure_policy(FailurePolicy::FailClosed));
    }
    b.build().unwrap()
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
    for (label, url) in [("in_process", None), ("redis", Some(url.as_str()))] {
        let admit = layer(url, "1000000000/s");
        let mut svc = admit.layer(inner());
        g.bench_function(format!("{label}/admit"), |b| {
            b.iter(|| black_box(rt.block_on(one(&mut svc))))
        });
        let refuse = layer(url, "1/h");
        let mut svc = refuse.layer(inner());
        rt.block_on(one(&mut svc));
        g.bench_function(format!("{label}/refuse"), |b| {
            b.iter(|| black_box(rt.block_on(one(&mut svc))))
        });
        for tasks in [2usize, 64] {
            let l = layer(url, "1000000000/s");
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
