//! The Redis-backed rate limit against a real `redis-server` (started by each
//! test on a free loopback port, killed afterwards). Real time: bounds are
//! tolerant and no assertion depends on scheduling speed.
#![cfg(all(feature = "redis", feature = "config", feature = "axum"))]

use crate::common;

use std::convert::Infallible;
use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use http::{Request, Response};
use tower::{Service, ServiceExt, service_fn};
use tower_rampart::rate_limit::{
    FailurePolicy, KeyExtractor, Quota, RateLimitConfig, RateLimitLayer, RedisStore, StoreState,
};

const REDIS: &str = "/usr/bin/redis-server";

/// A `redis-server` child process on a fixed loopback port; killed on drop.
struct RedisServer {
    /// The binary found by `start` (`REDIS_SERVER`, Debian's path, or PATH),
    /// reused on restart.
    bin: String,
    port: u16,
    child: Option<Child>,
}

impl RedisServer {
    /// Starts one, or returns `None` (after saying so) when the binary is
    /// missing outside CI. Under CI a missing binary fails the test.
    fn start() -> Option<Self> {
        let bin = std::env::var("REDIS_SERVER").unwrap_or_else(|_| REDIS.to_owned());
        let Some(bin) = std::path::Path::new(&bin)
            .exists()
            .then(|| bin.clone())
            .or_else(|| which("redis-server"))
        else {
            if std::env::var_os("CI").is_some() {
                panic!(
                    "redis-server not found ({bin}): CI must install it (.ci/run installs Debian's redis-server)"
                );
            }
            eprintln!("SKIPPED: redis-server not found ({bin}); install it to run the Redis tests");
            return None;
        };
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = Self {
            bin,
            port,
            child: None,
        };
        s.spawn();
        Some(s)
    }

    fn spawn(&mut self) {
        let child = Command::new(&self.bin)
            .args([
                "--port",
                &self.port.to_string(),
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
            .expect("start redis-server");
        self.child = Some(child);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    async fn conn(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::open(self.url())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn which(name: &str) -> Option<String> {
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|p| p.join(name))
            .find(|p| p.exists())
            .map(|p| p.to_string_lossy().into_owned())
    })
}

/// The rate limit around an always-ready inner service (the lease tests
/// use these helpers too).
pub(crate) type Svc = tower_rampart::rate_limit::RateLimit<
    tower::util::ServiceFn<
        fn(Request<String>) -> std::future::Ready<Result<Response<String>, Infallible>>,
    >,
>;

fn ok(_req: Request<String>) -> std::future::Ready<Result<Response<String>, Infallible>> {
    std::future::ready(Ok(Response::new(String::new())))
}

pub(crate) fn svc(layer: &RateLimitLayer) -> Svc {
    tower::Layer::layer(layer, service_fn(ok as fn(_) -> _))
}

fn req(key: &str) -> Request<String> {
    Request::builder()
        .header("x-key", key)
        .body(String::new())
        .unwrap()
}

pub(crate) async fn status(svc: &mut Svc, key: &str) -> u16 {
    svc.ready()
        .await
        .unwrap()
        .call(req(key))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// Keys `k0`..`k7`, four concurrent tasks each sending ten requests per
/// key: what each key got admitted.
pub(crate) async fn eight_keys_at_once(l: &RateLimitLayer) -> Vec<u32> {
    let counts: Arc<Vec<AtomicU32>> = Arc::new((0..8).map(|_| AtomicU32::new(0)).collect());
    let mut tasks = Vec::new();
    for k in 0..8usize {
        for _ in 0..4 {
            let mut s = svc(l);
            let counts = Arc::clone(&counts);
            tasks.push(tokio::spawn(async move {
                for _ in 0..10 {
                    if status(&mut s, &format!("k{k}")).await == 200 {
                        counts[k].fetch_add(1, Ordering::Relaxed);
                    }
                }
            }));
        }
    }
    for t in tasks {
        t.await.unwrap();
    }
    counts.iter().map(|c| c.load(Ordering::Relaxed)).collect()
}

fn layer(url: &str, quotas: &[Quota], policy: FailurePolicy) -> RateLimitLayer {
    let mut b = RateLimitLayer::builder().name("api").redis(
        RedisStore::new(url)
            .prefix("t")
            .timeout(Duration::from_millis(100))
            .trip_after(2)
            .open_duration(Duration::from_millis(300))
            .failure_policy(policy),
    );
    for q in quotas {
        b = b.quota(q.clone());
    }
    b.build().unwrap()
}

fn per_key(rate: &str, burst: u32) -> Quota {
    Quota::new(rate.parse().unwrap())
        .burst(burst)
        .key(KeyExtractor::header("x-key").unwrap())
        .name("per-key")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_one_limit_exactly() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Two layers = two replicas, built from one config as an operator would.
    let config: RateLimitConfig = serde_json::from_value(serde_json::json!({
        "name": "api",
        "quotas": [{ "rate": "10/h", "key": "header:x-key", "name": "per-key" }],
        "store": { "type": "redis", "url": redis.url(), "prefix": "t" }
    }))
    .unwrap();
    let (a, b) = (config.build().unwrap(), config.build().unwrap());
    let (mut a, mut b) = (svc(&a), svc(&b));
    let mut admitted = 0;
    for i in 0..30 {
        let s = if i % 2 == 0 { &mut a } else { &mut b };
        if status(s, "k1").await == 200 {
            admitted += 1;
        }
    }
    assert_eq!(admitted, 10, "two replicas share one limit of 10");
    // Another key has its own 10, and the key name is cluster-friendly.
    assert_eq!(status(&mut b, "k2").await, 200);
    let mut c = redis.conn().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg("t:api:per-key:{k1}")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(exists);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn burst_and_refill_as_in_process() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 10/s (one unit per 100ms), burst 3.
    let l = layer(
        &redis.url(),
        &[per_key("10/s", 3)],
        FailurePolicy::FailClosed,
    );
    let mut s = svc(&l);
    let mut admitted = 0;
    let mut refusal = None;
    for _ in 0..6 {
        let res = s.ready().await.unwrap().call(req("k")).await.unwrap();
        if res.status() == 200 {
            admitted += 1;
        } else {
            refusal.get_or_insert(res);
        }
    }
    // The burst is 3; at most one more unit can have dripped in meanwhile.
    assert!((3..=4).contains(&admitted), "admitted {admitted}");
    let refusal = refusal.expect("a refusal");
    assert_eq!(refusal.status(), 429);
    assert_eq!(refusal.headers()["retry-after"], "1");
    assert_eq!(
        refusal.headers()["ratelimit-policy"],
        r#""per-key";q=10;w=1"#
    );
    let live = refusal.headers()["ratelimit"].to_str().unwrap();
    assert!(live.starts_with(r#""per-key";r=0;t="#), "{live}");
    // Refill: after 450ms at least 3 units (up to the burst) are back.
    tokio::time::sleep(Duration::from_millis(450)).await;
    let mut again = 0;
    for _ in 0..6 {
        if status(&mut s, "k").await == 200 {
            again += 1;
        }
    }
    assert!((3..=4).contains(&again), "admitted after refill {again}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_quota_is_atomic_under_concurrency() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Per key: 30 of an hourly quota; together: 50.
    let global = Quota::new("100/h".parse().unwrap())
        .burst(50)
        .name("global");
    let l = layer(
        &redis.url(),
        &[per_key("100/h", 30), global],
        FailurePolicy::FailClosed,
    );
    let per = eight_keys_at_once(&l).await;
    assert_eq!(per.iter().sum::<u32>(), 50, "{per:?}");
    assert!(per.iter().all(|&n| n <= 30), "{per:?}");
    // Refused requests consumed nothing: each key's TAT is exactly its
    // admitted count of units (36s each) ahead of Redis's clock.
    let mut c = redis.conn().await;
    let (secs, micros): (u64, u64) = redis::cmd("TIME").query_async(&mut c).await.unwrap();
    let now = secs as f64 + micros as f64 / 1e6;
    for (k, &n) in per.iter().enumerate() {
        let tat: Option<f64> = redis::cmd("GET")
            .arg(format!("t:{{api}}:per-key:k{k}"))
            .query_async(&mut c)
            .await
            .unwrap();
        if n == 0 {
            continue;
        }
        let ahead = tat.unwrap() / 1e9 - now;
        let want = f64::from(n) * 36.0;
        assert!((ahead - want).abs() < 5.0, "k{k}: {ahead} vs {want}");
    }
    let tat: f64 = redis::cmd("GET")
        .arg("t:{api}:global:")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((tat / 1e9 - now - 50.0 * 36.0).abs() < 5.0);
}

/// Stops Redis, checks the policy holds, restarts Redis on the same port and
/// waits for the limiter to use it again.
async fn outage(policy: FailurePolicy, during: &[u16], path: &str) {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let l = metrics::with_local_recorder(&recorder, || {
        layer(&redis.url(), &[per_key("2/h", 2)], policy)
    });
    let health = l.store_health();
    assert!(health.is_remote());
    let mut s = svc(&l);
    assert_eq!(status(&mut s, "k").await, 200);
    assert_eq!(status(&mut s, "k").await, 200);
    assert_eq!(status(&mut s, "k").await, 429);
    redis.stop();
    let mut seen = Vec::new();
    for _ in 0..during.len() {
        seen.push(status(&mut s, "k").await);
    }
    assert_eq!(seen, during, "{policy:?}");
    assert_eq!(health.state(), StoreState::Unavailable, "{policy:?}");
    // Open: requests do not wait for Redis, and the policy still holds.
    assert_eq!(status(&mut s, "k").await, *during.last().unwrap());
    // Every decision during the outage took the policy's path.
    let decisions = |path: &str| -> u64 {
        snap.snapshot()
            .into_vec()
            .into_iter()
            .filter(|(k, ..)| {
                k.key().name() == "rampart_rate_limit_decisions_total"
                    && k.key()
                        .labels()
                        .any(|l| l.key() == "path" && l.value() == path)
            })
            .map(|(.., v)| match v {
                metrics_util::debugging::DebugValue::Counter(c) => c,
                _ => 0,
            })
            .sum()
    };
    assert_eq!(decisions(path), during.len() as u64 + 1, "{policy:?}");
    redis.spawn();
    // Recovery: the breaker's trial call reaches the new Redis (empty: the
    // key starts over), after which Redis decides again.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
    loop {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let st = status(&mut s, "fresh").await;
        if health.state() == StoreState::Available && st == 200 {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{policy:?}: no recovery"
        );
    }
    let mut c = redis.conn().await;
    let exists: bool = redis::cmd("EXISTS")
        .arg("t:api:per-key:{fresh}")
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(exists, "{policy:?}: decided by Redis again");
    assert_eq!(status(&mut s, "new").await, 200);
    assert_eq!(status(&mut s, "new").await, 200);
    assert_eq!(status(&mut s, "new").await, 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fail_open() {
    outage(FailurePolicy::FailOpen, &[200, 200, 200, 200], "fail_open").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fail_closed() {
    outage(
        FailurePolicy::FailClosed,
        &[429, 429, 429, 429],
        "fail_closed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outage_fallback_to_a_share() {
    // Half of burst 2: one request per key in process.
    outage(
        FailurePolicy::Fallback { share: 0.5 },
        &[200, 429, 429, 429],
        "fallback",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_keys_expire() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 10/s, burst 2: one request leaves the bucket full again after 100ms.
    let l = layer(
        &redis.url(),
        &[per_key("10/s", 2)],
        FailurePolicy::FailClosed,
    );
    let mut s = svc(&l);
    assert_eq!(status(&mut s, "idle").await, 200);
    let mut c = redis.conn().await;
    let key = "t:api:per-key:{idle}";
    let pttl: i64 = redis::cmd("PTTL")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!((1..=100).contains(&pttl), "pttl {pttl}");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let exists: bool = redis::cmd("EXISTS")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert!(!exists, "the idle key expired");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusal_over_a_real_server() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let l = layer(
        &redis.url(),
        &[Quota::new("1/h".parse().unwrap()).name("global")],
        FailurePolicy::FailClosed,
    );
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "hello" }))
        .layer(l);
    let addr = common::serve(app).await;
    assert_eq!(common::get(addr, "/").await.status, 200);
    let r = common::get(addr, "/").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), "3600");
    assert_eq!(r.header("ratelimit-policy"), r#""global";q=1;w=3600"#);
    assert!(r.header("ratelimit").starts_with(r#""global";r=0;t="#));
    assert_eq!(r.json()["status"], 429);
}

/// The stack built from a config with the Redis store: its front takes the
/// rate limit's decision, which Redis makes (a future the front drives
/// before it calls the layers below), over a real server and a real Redis.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_decides_on_redis_over_a_real_server() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    let config = tower_rampart::config::RampartConfig::from_toml(&format!(
        r#"
        [shutdown]
        signals = false
        [rate_limit]
        admitted_headers = true
        quotas = [{{ rate = "2/h", burst = 2, name = "global" }}]
        store = {{ type = "redis", url = "{}", failure = "fail_closed" }}
        "#,
        redis.url()
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    let stack = config.stack().build().unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "hello" }))
        .layer(stack.layer());
    let addr = common::serve(app).await;
    for left in ["1", "0"] {
        let r = common::get(addr, "/").await;
        assert_eq!(r.status, 200);
        assert_eq!(r.body, "hello");
        assert!(
            r.header("ratelimit")
                .starts_with(&format!(r#""global";r={left};t="#)),
            "{}",
            r.header("ratelimit")
        );
    }
    let r = common::get(addr, "/").await;
    assert_eq!(r.status, 429);
    assert_eq!(r.header("retry-after"), "1800");
    assert_eq!(r.json()["status"], 429);
    assert_eq!(stack.shutdown().in_flight(), 0);
}

/// A builder on `url` with a per-request cost from `x-cost` (default 1).
fn costed(
    url: &str,
    policy: FailurePolicy,
    open: Duration,
) -> tower_rampart::rate_limit::RateLimitBuilder {
    RateLimitLayer::builder()
        .name("api")
        .idle_sweep(None)
        .redis(
            RedisStore::new(url)
                .prefix("t")
                .timeout(Duration::from_millis(100))
                .trip_after(1)
                .open_duration(open)
                .failure_policy(policy),
        )
        .cost(|r| {
            r.headers
                .get("x-cost")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1)
        })
}

/// A response's head and its body as text.
struct Got {
    head: http::response::Parts,
    body: String,
}

impl Got {
    fn status(&self) -> u16 {
        self.head.status.as_u16()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.head.headers.get(name).map(|v| v.to_str().unwrap())
    }
}

async fn send_cost(svc: &mut Svc, key: &str, cost: u32) -> Got {
    use http_body_util::BodyExt;
    let req = Request::builder()
        .header("x-key", key)
        .header("x-cost", cost.to_string())
        .body(String::new())
        .unwrap();
    let res = svc.ready().await.unwrap().call(req).await.unwrap();
    let (head, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    Got {
        head,
        body: String::from_utf8_lossy(&body).into_owned(),
    }
}

fn hdr<'a>(res: &'a Got, name: &str) -> &'a str {
    res.header(name).unwrap_or("")
}

pub(crate) type Snap = Vec<(
    metrics_util::CompositeKey,
    Option<metrics::Unit>,
    Option<metrics::SharedString>,
    metrics_util::debugging::DebugValue,
)>;

/// A counter's value in `snap` (one snapshot per check point: taking one
/// drains the counters).
pub(crate) fn counter(snap: &Snap, name: &str, labels: &[(&str, &str)]) -> u64 {
    snap.iter()
        .filter(|(k, ..)| {
            k.key().name() == name
                && labels
                    .iter()
                    .all(|(n, v)| k.key().labels().any(|l| l.key() == *n && l.value() == *v))
        })
        .map(|(.., v)| match v {
            metrics_util::debugging::DebugValue::Counter(c) => *c,
            _ => 0,
        })
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_covers_every_exhausted_quota_in_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Global first (1/min), then per key (1/h): one request spends both.
    // Waiting the global quota's minute would be refused again.
    let l = costed(
        &redis.url(),
        FailurePolicy::FailClosed,
        Duration::from_secs(1),
    )
    .quota(Quota::per_minute(1).name("global"))
    .quota(per_key("1/h", 1))
    .build()
    .unwrap();
    let mut s = svc(&l);
    assert_eq!(send_cost(&mut s, "k", 1).await.status(), 200);
    let res = send_cost(&mut s, "k", 1).await;
    assert_eq!(res.status(), 429);
    let retry: u64 = hdr(&res, "retry-after").parse().unwrap();
    assert!((3599..=3600).contains(&retry), "{retry}");
    let live = hdr(&res, "ratelimit");
    assert!(
        live.starts_with(r#""global";r=0;t="#) && live.contains(r#", "per-key";r=0;t=3600"#),
        "{live}"
    );
    assert!(res.body.contains("rate limit quota `per-key` exhausted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_report_what_remains_in_redis() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // 10 per hour (one unit per 360s), burst 10.
    let l = costed(
        &redis.url(),
        FailurePolicy::FailClosed,
        Duration::from_secs(1),
    )
    .quota(per_key("10/h", 10))
    .build()
    .unwrap();
    let mut s = svc(&l);
    assert_eq!(send_cost(&mut s, "k", 8).await.status(), 200);
    // redis-cell: cost 5 with 2 left is refused, and reports the 2.
    let res = send_cost(&mut s, "k", 5).await;
    assert_eq!(res.status(), 429);
    assert!(hdr(&res, "ratelimit").starts_with(r#""per-key";r=2;t="#));
    let retry: u64 = hdr(&res, "retry-after").parse().unwrap();
    assert!((1079..=1080).contains(&retry), "3 units of 360s: {retry}");
    // Never admissible: no Retry-After, but what remains, and nothing
    // written.
    let mut c = redis.conn().await;
    let key = "t:api:per-key:{k}";
    let before: String = redis::cmd("GET")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
    let res = send_cost(&mut s, "k", 11).await;
    assert_eq!(res.status(), 429);
    assert!(res.header("retry-after").is_none());
    assert!(hdr(&res, "ratelimit").starts_with(r#""per-key";r=2;t="#));
    assert!(res.body.contains("can never be admitted"));
    let after: String = redis::cmd("GET")
        .arg(key)
        .query_async(&mut c)
        .await
        .unwrap();
    assert_eq!(before, after);
    // The two units are really there.
    assert_eq!(send_cost(&mut s, "k", 2).await.status(), 200);
    assert_eq!(send_cost(&mut s, "k", 1).await.status(), 429);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_closed_refusal_is_counted_and_waits_for_the_breaker() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let (l, dry) = metrics::with_local_recorder(&recorder, || {
        let build = |name: &'static str, dry_run: bool| {
            costed(
                &redis.url(),
                FailurePolicy::FailClosed,
                Duration::from_secs(30),
            )
            .name(name)
            .dry_run(dry_run)
            .quota(per_key("100/h", 100))
            .build()
            .unwrap()
        };
        (build("api", false), build("dry", true))
    });
    let (mut s, mut d) = (svc(&l), svc(&dry));
    assert_eq!(send_cost(&mut s, "k", 1).await.status(), 200);
    assert_eq!(send_cost(&mut d, "k", 1).await.status(), 200);
    redis.stop();
    // The failed call opens the breaker (trip_after 1): the client is told
    // to come back when Redis will be tried again, not in 1s.
    for _ in 0..3 {
        let res = send_cost(&mut s, "k", 1).await;
        assert_eq!(res.status(), 429);
        let retry: u64 = hdr(&res, "retry-after").parse().unwrap();
        assert!((25..=30).contains(&retry), "{retry}");
        assert_eq!(hdr(&res, "ratelimit-policy"), r#""per-key";q=100;w=3600"#);
        // Redis's state is unknown: no made-up remaining.
        assert!(res.header("ratelimit").is_none());
        assert!(res.body.contains("the rate limit store is unavailable"));
    }
    assert_eq!(l.store_health().state(), StoreState::Unavailable);
    // Dry run: refused only on paper.
    assert_eq!(send_cost(&mut d, "k", 1).await.status(), 200);
    // Counted like every refusal, by the first quota of the request.
    let snap = snap.snapshot().into_vec();
    let refused = counter(
        &snap,
        "rampart_rate_limit_refused_total",
        &[
            ("name", "api"),
            ("quota", "per-key"),
            ("reason", "store-unavailable"),
        ],
    );
    let dry_refused = counter(
        &snap,
        "rampart_rate_limit_dry_run_refusals_total",
        &[("name", "dry"), ("reason", "store-unavailable")],
    );
    assert_eq!((refused, dry_refused), (3, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fail_open_never_admits_a_request_that_can_never_be_admitted() {
    let Some(mut redis) = RedisServer::start() else {
        return;
    };
    let l = costed(
        &redis.url(),
        FailurePolicy::FailOpen,
        Duration::from_secs(30),
    )
    .quota(per_key("10/h", 10))
    .build()
    .unwrap();
    let mut s = svc(&l);
    assert_eq!(send_cost(&mut s, "k", 1).await.status(), 200);
    redis.stop();
    assert_eq!(send_cost(&mut s, "k", 10).await.status(), 200);
    let res = send_cost(&mut s, "k", 11).await;
    assert_eq!(res.status(), 429);
    assert!(res.header("retry-after").is_none());
    assert!(res.header("ratelimit").is_none());
    assert!(res.body.contains("can never be admitted"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_store_answers_like_the_in_process_store() {
    let Some(redis) = RedisServer::start() else {
        return;
    };
    // Hourly quotas: the milliseconds this test takes move no number.
    let quotas = || {
        [
            per_key("10/h", 10),
            Quota::new("100/h".parse().unwrap())
                .burst(12)
                .name("global"),
        ]
    };
    let mut remote = costed(
        &redis.url(),
        FailurePolicy::FailClosed,
        Duration::from_secs(1),
    )
    .admitted_headers(true)
    .legacy_headers(true);
    let mut local = RateLimitLayer::builder()
        .name("api")
        .idle_sweep(None)
        .admitted_headers(true)
        .legacy_headers(true)
        .cost(|r| {
            r.headers
                .get("x-cost")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1)
        });
    for q in quotas() {
        remote = remote.quota(q.clone());
        local = local.quota(q);
    }
    let (remote, local) = (remote.build().unwrap(), local.build().unwrap());
    // Reading without consuming is in-process only: Redis's state is not
    // read synchronously.
    let key = tower_rampart::rate_limit::Key::from("a");
    assert!(remote.peek(&key).is_none());
    assert_eq!(local.peek(&key).unwrap()[0].remaining(), 10);
    let (mut r, mut l) = (svc(&remote), svc(&local));
    // Admits, refusals by either quota or both, too costly, free.
    let script: [(&str, u32); 14] = [
        ("a", 1),
        ("a", 2),
        ("a", 7),
        ("a", 1),
        ("b", 5),
        ("a", 11),
        ("b", 13),
        ("b", 0),
        ("c", 3),
        ("b", 3),
        ("c", 1),
        ("b", 1),
        ("c", 9),
        ("a", 1),
    ];
    for (step, (key, cost)) in script.into_iter().enumerate() {
        let (x, y) = (
            send_cost(&mut r, key, cost).await,
            send_cost(&mut l, key, cost).await,
        );
        let ctx = format!(
            "step {step} ({key}, {cost}): redis {:?} / memory {:?}",
            x.head, y.head
        );
        assert_eq!(x.status(), y.status(), "{ctx}");
        for h in [
            "ratelimit-policy",
            "x-ratelimit-limit",
            "x-ratelimit-remaining",
        ] {
            assert_eq!(x.header(h), y.header(h), "{h}: {ctx}");
        }
        let secs = |g: &Got, h: &str| g.header(h).map(|v| v.parse::<i64>().unwrap());
        for h in ["retry-after", "x-ratelimit-reset"] {
            match (secs(&x, h), secs(&y, h)) {
                (Some(a), Some(b)) => assert!((a - b).abs() <= 1, "{h}: {ctx}"),
                (a, b) => assert_eq!(a, b, "{h}: {ctx}"),
            }
        }
        // `RateLimit`: same items and remaining; windows within a second.
        let items = |g: &Got| -> Vec<(String, i64, i64)> {
            let Some(v) = g.header("ratelimit") else {
                return Vec::new();
            };
            let list: sfv::List = sfv::Parser::new(v).parse().unwrap();
            list.into_iter()
                .map(|e| match e {
                    sfv::ListEntry::Item(i) => {
                        let name = i.bare_item.as_string().unwrap().as_str().to_owned();
                        let p = |k: &str| i64::from(i.params.get(k).unwrap().as_integer().unwrap());
                        (name, p("r"), p("t"))
                    }
                    sfv::ListEntry::InnerList(_) => panic!("{v}"),
                })
                .collect()
        };
        let (xi, yi) = (items(&x), items(&y));
        assert_eq!(xi.len(), yi.len(), "{ctx}");
        for ((xn, xr, xt), (yn, yr, yt)) in xi.iter().zip(&yi) {
            assert_eq!((xn, xr), (yn, yr), "{ctx}");
            assert!((xt - yt).abs() <= 1, "{ctx}");
        }
    }
}
