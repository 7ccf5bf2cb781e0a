//! Rate limit: timing rules on paused time (no sockets), then a real axum
//! server and a real tonic client on loopback.
use crate::common;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full};
use metrics_util::debugging::{DebugValue, DebuggingRecorder, Snapshotter};
use tower::{BoxError, Layer, Service, ServiceExt};
use tower_rampart::rate_limit::{
    ClientIp, ClientIpHeader, Key, KeyExtractor, MissingKey, Quota, Rate, RateLimitBuilder,
    RateLimitLayer,
};
use tower_rampart::rejection::ResponseBody;
use tower_rampart::{Rejection, RejectionKind};

use common::{TestRequest, ok_service};

type Res = Response<ResponseBody<Full<Bytes>>>;

fn builder() -> RateLimitBuilder {
    RateLimitLayer::builder().idle_sweep(None)
}

fn service(
    layer: &RateLimitLayer,
) -> impl Service<TestRequest, Response = Res, Error = Infallible> + Clone {
    layer.layer(ok_service())
}

/// A request from `peer` with `headers`.
fn req_from(peer: &str, headers: &[(&str, &str)]) -> TestRequest {
    let mut b = Request::get("http://test/things");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    let mut req = b.body(Full::new(Bytes::new())).unwrap();
    req.extensions_mut()
        .insert(SocketAddr::new(peer.parse::<IpAddr>().unwrap(), 4000));
    req
}

fn req(headers: &[(&str, &str)]) -> TestRequest {
    req_from("192.0.2.1", headers)
}

async fn send<S>(svc: &mut S, req: TestRequest) -> Res
where
    S: Service<TestRequest, Response = Res, Error = Infallible>,
{
    svc.ready().await.unwrap().call(req).await.unwrap()
}

async fn status<S>(svc: &mut S, req: TestRequest) -> u16
where
    S: Service<TestRequest, Response = Res, Error = Infallible>,
{
    send(svc, req).await.status().as_u16()
}

async fn body_json(res: Res) -> serde_json::Value {
    let bytes = res.into_body().collect().await.unwrap().to_bytes();
    serde_json::from_slice(&bytes).unwrap()
}

/// A structured-field list header, parsed with `sfv`: name -> params.
fn sf_list(value: &str) -> Vec<(String, BTreeMap<String, i64>)> {
    let list: sfv::List = sfv::Parser::new(value)
        .parse()
        .unwrap_or_else(|e| panic!("not a structured-field list ({e}): {value}"));
    list.into_iter()
        .map(|entry| match entry {
            sfv::ListEntry::Item(item) => {
                let name = item
                    .bare_item
                    .as_string()
                    .expect("a string item")
                    .as_str()
                    .to_owned();
                let params = item
                    .params
                    .iter()
                    .map(|(k, v)| {
                        (
                            k.as_str().to_owned(),
                            i64::from(v.as_integer().expect("an integer parameter")),
                        )
                    })
                    .collect();
                (name, params)
            }
            sfv::ListEntry::InnerList(_) => panic!("unexpected inner list in {value}"),
        })
        .collect()
}

fn header<'a>(res: &'a Res, name: &str) -> &'a str {
    res.headers().get(name).map_or("", |v| v.to_str().unwrap())
}

#[tokio::test(start_paused = true)]
async fn burst_then_refill_exactly() {
    // 10 per second: one unit every 100ms; burst 3.
    let layer = builder()
        .quota(Quota::per_second(10).burst(3))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    for _ in 0..3 {
        assert_eq!(status(&mut svc, req(&[])).await, 200);
    }
    let res = send(&mut svc, req(&[])).await;
    assert_eq!(res.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(header(&res, "retry-after"), "1");
    tokio::time::advance(Duration::from_millis(99)).await;
    assert_eq!(status(&mut svc, req(&[])).await, 429);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(status(&mut svc, req(&[])).await, 200);
    assert_eq!(status(&mut svc, req(&[])).await, 429);
    // A full refill takes burst * 100ms.
    tokio::time::advance(Duration::from_millis(300)).await;
    for _ in 0..3 {
        assert_eq!(status(&mut svc, req(&[])).await, 200);
    }
    assert_eq!(status(&mut svc, req(&[])).await, 429);
}

/// A limit with nothing else to decide (no allow-list, cost function or
/// admitted headers; in process; at most one keyed quota) steps a request
/// against its quotas at once (its short path); the same limit sent the
/// whole way (a cost function that always says 1) answers every request
/// alike: the same statuses, `Retry-After` and `RateLimit` fields and
/// refusal body, through refusals and refills. Shapes: one global quota,
/// one keyed, a keyed and a global one (the production example's), two
/// global ones; with two quotas each of them refuses at times, and a
/// refusal takes nothing from the other.
#[tokio::test(start_paused = true)]
async fn short_path_decides_like_the_whole_way() {
    fn per(rate: u32, burst: u32, name: &'static str) -> Quota {
        Quota::per_second(rate).burst(burst).name(name)
    }
    fn by_ip(q: Quota) -> Quota {
        q.key(KeyExtractor::client_ip())
    }
    type Quotas = fn() -> Vec<Quota>;
    let shapes: [(&str, Quotas); 4] = [
        ("global", || vec![per(10, 3, "a")]),
        ("keyed", || vec![by_ip(per(10, 3, "a"))]),
        ("keyed and global", || {
            vec![by_ip(per(10, 3, "a")), per(16, 4, "b")]
        }),
        ("two global", || vec![per(10, 6, "a"), per(20, 2, "b")]),
    ];
    for (shape, quotas) in shapes {
        let make = |whole: bool| {
            let b = quotas().into_iter().fold(builder(), |b, q| b.quota(q));
            let b = if whole { b.cost(|_| 1) } else { b };
            b.build().unwrap()
        };
        let (short, whole) = (make(false), make(true));
        let (mut a, mut b) = (service(&short), service(&whole));
        let mut refused = 0;
        let mut refusers = std::collections::BTreeSet::new();
        for i in 0..120u64 {
            let peer = ["192.0.2.1", "192.0.2.2"][usize::from(i % 3 == 0)];
            let ra = send(&mut a, req_from(peer, &[])).await;
            let rb = send(&mut b, req_from(peer, &[])).await;
            assert_eq!(ra.status(), rb.status(), "{shape}, request {i}");
            for h in ["retry-after", "ratelimit", "ratelimit-policy"] {
                assert_eq!(header(&ra, h), header(&rb, h), "{shape}, request {i}: {h}");
            }
            if ra.status() == StatusCode::TOO_MANY_REQUESTS {
                refused += 1;
                let detail = body_json(ra).await["detail"].clone();
                assert_eq!(
                    detail,
                    body_json(rb).await["detail"],
                    "{shape}, request {i}"
                );
                refusers.insert(detail.to_string());
            }
            tokio::time::advance(Duration::from_millis(i % 7 * 13)).await;
        }
        // Both ways were exercised: admissions and refusals, by each quota.
        assert!(refused > 10 && refused < 100, "{shape}: {refused} refused");
        assert_eq!(refusers.len(), quotas().len(), "{shape}: {refusers:?}");
    }
}

#[tokio::test(start_paused = true)]
async fn retry_after_rounds_up_slow_quotas() {
    let layer = builder().quota(Quota::per_minute(1)).build().unwrap();
    let mut svc = service(&layer);
    assert_eq!(status(&mut svc, req(&[])).await, 200);
    tokio::time::advance(Duration::from_millis(500)).await;
    let res = send(&mut svc, req(&[])).await;
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "retry-after"), "60"); // 59.5s, rounded up
}

#[tokio::test(start_paused = true)]
async fn multi_quota_all_or_nothing() {
    let layer = builder()
        .name("api")
        .quota(
            Quota::per_minute(1)
                .burst(2)
                .key(KeyExtractor::header("x-client").unwrap()),
        )
        .quota(Quota::per_second(10).burst(3).name("global"))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let a = || req(&[("x-client", "a")]);
    let b = || req(&[("x-client", "b")]);
    assert_eq!(status(&mut svc, a()).await, 200);
    assert_eq!(status(&mut svc, a()).await, 200);
    assert_eq!(status(&mut svc, b()).await, 200);
    // Global is empty now: b is refused by it, and b's own quota keeps its unit.
    let res = send(&mut svc, b()).await;
    assert_eq!(res.status(), 429);
    let live = sf_list(header(&res, "ratelimit"));
    assert_eq!(live[0].0, "header-x-client");
    assert_eq!(live[0].1["r"], 1);
    assert_eq!(live[1].0, "global");
    assert_eq!(live[1].1["r"], 0);
    let json = body_json(res).await;
    assert_eq!(json["detail"], "rate limit quota `global` exhausted");
    // a is refused by its own quota (global would have room after 1s).
    tokio::time::advance(Duration::from_secs(1)).await;
    let res = send(&mut svc, a()).await;
    assert_eq!(res.status(), 429);
    assert_eq!(
        body_json(res).await["detail"],
        "rate limit quota `header-x-client` exhausted"
    );
    // The refusals consumed nothing: global still holds 3, b still holds 1.
    assert_eq!(status(&mut svc, b()).await, 200);
    assert_eq!(status(&mut svc, req(&[("x-client", "c")])).await, 200);
    assert_eq!(status(&mut svc, req(&[("x-client", "d")])).await, 200);
    let res = send(&mut svc, b()).await;
    assert_eq!(res.status(), 429);
}

#[tokio::test(start_paused = true)]
async fn cost_above_burst_is_never_admissible() {
    let layer = builder()
        .quota(Quota::per_second(10).burst(5))
        .cost(|r| {
            r.headers
                .get("x-cost")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .unwrap_or(1)
        })
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let res = send(&mut svc, req(&[("x-cost", "6")])).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_none());
    assert!(res.headers().get("ratelimit-policy").is_some());
    let json = body_json(res).await;
    assert!(
        json["detail"]
            .as_str()
            .unwrap()
            .contains("can never be admitted"),
        "{json}"
    );
    // The refusal consumed nothing: a full burst goes through.
    assert_eq!(status(&mut svc, req(&[("x-cost", "5")])).await, 200);
    let res = send(&mut svc, req(&[("x-cost", "2")])).await;
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "retry-after"), "1");
    // Cost 0 is free.
    assert_eq!(status(&mut svc, req(&[("x-cost", "0")])).await, 200);
}

#[tokio::test(start_paused = true)]
async fn trusted_proxy_walking_resists_spoofing() {
    let layer = builder()
        .quota(Quota::per_minute(1).burst(1).key(KeyExtractor::client_ip()))
        .client_ip(
            ClientIp::new()
                .header(ClientIpHeader::XForwardedFor)
                .trusted_proxies(["10.0.0.0/8"])
                .unwrap(),
        )
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let via_proxy = |xff: &str| req_from("10.0.0.1", &[("x-forwarded-for", xff)]);

    // The client is the first untrusted address from the right.
    assert_eq!(
        status(&mut svc, via_proxy("1.1.1.1, 203.0.113.5, 10.0.0.7")).await,
        200
    );
    // Changing the client-written (leftmost) entries does not change the key.
    assert_eq!(
        status(&mut svc, via_proxy("9.9.9.9, 203.0.113.5")).await,
        429
    );
    assert_eq!(status(&mut svc, via_proxy("203.0.113.5")).await, 429);
    // A header the operator did not name is ignored, whatever it says.
    let fwd = req_from(
        "10.0.0.1",
        &[
            ("forwarded", "for=8.8.8.8"),
            ("x-real-ip", "8.8.4.4"),
            ("x-forwarded-for", "203.0.113.5"),
        ],
    );
    assert_eq!(status(&mut svc, fwd).await, 429);
    // Another real client behind the same proxy has its own key.
    assert_eq!(status(&mut svc, via_proxy("203.0.113.6")).await, 200);

    // An untrusted peer's forwarding headers are ignored: keyed by the peer.
    let direct = |xff: &str| req_from("198.51.100.1", &[("x-forwarded-for", xff)]);
    assert_eq!(status(&mut svc, direct("203.0.113.77")).await, 200);
    assert_eq!(status(&mut svc, direct("203.0.113.78")).await, 429);
    assert_eq!(
        status(
            &mut svc,
            req_from("198.51.100.1", &[("x-real-ip", "1.2.3.4")])
        )
        .await,
        429
    );

    // Garbage is treated as absent: the trusted proxy itself is the key.
    assert_eq!(status(&mut svc, via_proxy("not-an-ip")).await, 200);
    assert_eq!(status(&mut svc, via_proxy("%%%, ,")).await, 429);
    assert_eq!(
        status(
            &mut svc,
            req_from("10.0.0.1", &[("forwarded", "for=_hidden")])
        )
        .await,
        429
    );
    assert_eq!(status(&mut svc, req_from("10.0.0.1", &[])).await, 429);
}

type Snapshot = Vec<(metrics_util::CompositeKey, DebugValue)>;

/// Everything recorded since the last snapshot (counters and gauges are
/// drained by `Snapshotter::snapshot`, so take one per check point).
fn snapshot(snap: &Snapshotter) -> Snapshot {
    snap.snapshot()
        .into_vec()
        .into_iter()
        .map(|(key, _, _, value)| (key, value))
        .collect()
}

fn counter(snap: &Snapshot, name: &str, labels: &[(&str, &str)]) -> u64 {
    snap.iter()
        .filter(|(key, _)| {
            key.key().name() == name
                && labels
                    .iter()
                    .all(|(k, v)| key.key().labels().any(|l| l.key() == *k && l.value() == *v))
        })
        .map(|(_, value)| match value {
            DebugValue::Counter(c) => *c,
            DebugValue::Gauge(g) => g.into_inner() as u64,
            DebugValue::Histogram(_) => 0,
        })
        .sum()
}

#[tokio::test(start_paused = true)]
async fn eviction_keeps_memory_bounded() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        builder()
            .name("bounded")
            .quota(Quota::per_second(1).key(KeyExtractor::client_ip()))
            .max_keys(100)
            .build()
            .unwrap()
    });
    let mut svc = service(&layer);
    for i in 0..1000u32 {
        let ip = IpAddr::from([198, 18, (i >> 8) as u8, i as u8]).to_string();
        assert_eq!(status(&mut svc, req_from(&ip, &[])).await, 200);
        assert!(layer.key_count() <= 100);
    }
    assert!(layer.key_count() >= 90, "{}", layer.key_count());
    let m = snapshot(&snap);
    let by_capacity = counter(
        &m,
        "rampart_rate_limit_evictions_total",
        &[("name", "bounded"), ("reason", "capacity")],
    );
    assert_eq!(by_capacity as usize + layer.key_count(), 1000);
    assert_eq!(
        counter(&m, "rampart_rate_limit_keys", &[("name", "bounded")]) as usize,
        layer.key_count()
    );
    // Once their buckets are full again the keys are idle and go.
    tokio::time::advance(Duration::from_secs(1)).await;
    let kept = layer.key_count();
    assert_eq!(layer.evict_idle(), kept);
    assert_eq!(layer.key_count(), 0);
    assert_eq!(
        counter(
            &snapshot(&snap),
            "rampart_rate_limit_evictions_total",
            &[("name", "bounded"), ("reason", "idle")]
        ) as usize,
        kept
    );
}

#[tokio::test(start_paused = true)]
async fn background_sweep_evicts_idle_keys() {
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_second(10).key(KeyExtractor::client_ip()))
        .idle_sweep(Some(Duration::from_secs(5)))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    for i in 0..50u8 {
        let ip = IpAddr::from([198, 18, 0, i]).to_string();
        assert_eq!(status(&mut svc, req_from(&ip, &[])).await, 200);
    }
    assert_eq!(layer.key_count(), 50);
    tokio::time::sleep(Duration::from_secs(11)).await;
    assert_eq!(layer.key_count(), 0);
}

#[tokio::test(start_paused = true)]
async fn dry_run_counts_but_refuses_nothing() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        builder()
            .name("dry")
            .quota(Quota::per_minute(1).name("tight"))
            .dry_run(true)
            .build()
            .unwrap()
    });
    let mut svc = service(&layer);
    for _ in 0..5 {
        assert_eq!(status(&mut svc, req(&[])).await, 200);
    }
    // Admissions are counted per thread and added to the recorder every
    // 250 ms; refusals at once.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let snap = snapshot(&snap);
    assert_eq!(
        counter(
            &snap,
            "rampart_rate_limit_dry_run_refusals_total",
            &[("name", "dry"), ("quota", "tight"), ("reason", "exhausted")]
        ),
        4
    );
    assert_eq!(
        counter(
            &snap,
            "rampart_rate_limit_refused_total",
            &[("name", "dry")]
        ),
        0
    );
    assert_eq!(
        counter(
            &snap,
            "rampart_rate_limit_admitted_total",
            &[("name", "dry")]
        ),
        5
    );
}

#[tokio::test(start_paused = true)]
async fn refusal_metrics_name_the_quota() {
    let recorder = DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let layer = metrics::with_local_recorder(&recorder, || {
        builder()
            .name("m")
            .quota(Quota::per_minute(1).name("one"))
            .build()
            .unwrap()
    });
    let mut svc = service(&layer);
    assert_eq!(status(&mut svc, req(&[])).await, 200);
    assert_eq!(status(&mut svc, req(&[])).await, 429);
    assert_eq!(status(&mut svc, req(&[])).await, 429);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let snap = snapshot(&snap);
    assert_eq!(
        counter(
            &snap,
            "rampart_rate_limit_refused_total",
            &[("name", "m"), ("quota", "one"), ("reason", "exhausted")]
        ),
        2
    );
    assert_eq!(
        counter(&snap, "rampart_rate_limit_admitted_total", &[("name", "m")]),
        1
    );
}

#[tokio::test(start_paused = true)]
async fn headers_parse_as_structured_fields() {
    let layer = builder()
        .quota(
            Quota::per_second(2)
                .burst(2)
                .key(KeyExtractor::client_ip())
                .name("per-ip"),
        )
        .quota(Quota::new(Rate::per_hour(1000)).name("hourly"))
        .admitted_headers(true)
        .legacy_headers(true)
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let res = send(&mut svc, req(&[])).await;
    assert_eq!(res.status(), 200);
    let policy = sf_list(header(&res, "ratelimit-policy"));
    assert_eq!(policy.len(), 2);
    assert_eq!(policy[0].0, "per-ip");
    assert_eq!(policy[0].1["q"], 2);
    assert_eq!(policy[0].1["w"], 1);
    assert_eq!(policy[1].0, "hourly");
    assert_eq!(policy[1].1["q"], 1000);
    assert_eq!(policy[1].1["w"], 3600);
    let live = sf_list(header(&res, "ratelimit"));
    assert_eq!(
        live[0],
        (
            "per-ip".into(),
            BTreeMap::from([("r".into(), 1), ("t".into(), 1)])
        )
    );
    assert_eq!(live[1].0, "hourly");
    assert_eq!(live[1].1["r"], 999);
    assert_eq!(live[1].1["t"], 4); // one unit is 3.6s
    assert_eq!(header(&res, "x-ratelimit-limit"), "2");
    assert_eq!(header(&res, "x-ratelimit-remaining"), "1");
    assert_eq!(header(&res, "x-ratelimit-reset"), "1");

    assert_eq!(status(&mut svc, req(&[])).await, 200);
    let res = send(&mut svc, req(&[])).await;
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "retry-after"), "1");
    let live = sf_list(header(&res, "ratelimit"));
    assert_eq!(live[0].1["r"], 0);
    assert_eq!(live[0].1["t"], 1);
    assert_eq!(live[1].1["r"], 998);
    assert_eq!(header(&res, "x-ratelimit-remaining"), "0");
    assert_eq!(res.headers()["content-type"], "application/problem+json");
}

#[tokio::test(start_paused = true)]
async fn missing_key_fallbacks() {
    let key = || KeyExtractor::header("x-api-key").unwrap();
    // Anonymous: requests without the header share one key.
    let layer = builder()
        .quota(Quota::per_minute(1).key(key()))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert_eq!(status(&mut svc, req(&[])).await, 200);
    assert_eq!(status(&mut svc, req(&[("x-api-key", "")])).await, 429);
    assert_eq!(status(&mut svc, req(&[("x-api-key", "k1")])).await, 200);

    // Allow: the quota does not apply.
    let layer = builder()
        .quota(Quota::per_minute(1).key(key()))
        .missing_key(MissingKey::Allow)
        .build()
        .unwrap();
    let mut svc = service(&layer);
    for _ in 0..3 {
        assert_eq!(status(&mut svc, req(&[])).await, 200);
    }

    // Reject: 400 naming the quota.
    let layer = builder()
        .quota(Quota::per_minute(1).key(key()).name("api-key"))
        .missing_key(MissingKey::Reject)
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let res = send(&mut svc, req(&[])).await;
    assert_eq!(res.status(), 400);
    assert!(
        body_json(res).await["detail"]
            .as_str()
            .unwrap()
            .contains("`api-key`")
    );
    let grpc = send(&mut svc, req(&[("content-type", "application/grpc")])).await;
    assert_eq!(header(&grpc, "grpc-status"), "3");
    assert_eq!(status(&mut svc, req(&[("x-api-key", "k")])).await, 200);
}

#[tokio::test(start_paused = true)]
async fn allow_lists_bypass_the_limit() {
    let layer = builder()
        .quota(Quota::per_minute(1).key(KeyExtractor::header("x-api-key").unwrap()))
        .quota(Quota::per_minute(1).key(KeyExtractor::client_ip()))
        .allow_keys([Key::from("internal")])
        .allow_cidrs(["192.168.0.0/16"])
        .build()
        .unwrap();
    let mut svc = service(&layer);
    for _ in 0..3 {
        assert_eq!(
            status(&mut svc, req(&[("x-api-key", "internal")])).await,
            200
        );
        assert_eq!(
            status(&mut svc, req_from("192.168.4.4", &[("x-api-key", "x")])).await,
            200
        );
    }
    assert_eq!(status(&mut svc, req(&[("x-api-key", "other")])).await, 200);
    assert_eq!(status(&mut svc, req(&[("x-api-key", "other")])).await, 429);
}

#[tokio::test(start_paused = true)]
async fn grpc_refusal_is_resource_exhausted_with_headers() {
    let layer = builder().quota(Quota::per_minute(1)).build().unwrap();
    let mut svc = service(&layer);
    let grpc = || req(&[("content-type", "application/grpc")]);
    assert_eq!(status(&mut svc, grpc()).await, 200);
    let res = send(&mut svc, grpc()).await;
    assert_eq!(res.status(), 200);
    assert_eq!(header(&res, "grpc-status"), "8");
    assert_eq!(header(&res, "grpc-retry-pushback-ms"), "60000");
    assert_eq!(header(&res, "ratelimit"), "\"global\";r=0;t=60");
}

#[tokio::test(start_paused = true)]
async fn waiting_mode_waits_then_refuses() {
    let layer = builder()
        .quota(Quota::per_second(10).burst(1))
        .wait(Duration::from_millis(250))
        .build()
        .unwrap();
    let svc = service(&layer);
    let start = tokio::time::Instant::now();
    // Three at once: the 2nd gets room at 100ms, the 3rd at 200ms.
    let calls = (0..3).map(|_| svc.clone().oneshot(req(&[])));
    let results = futures_join(calls).await;
    for (i, (res, at)) in results.iter().enumerate() {
        assert_eq!(res.status(), 200);
        assert_eq!(*at - start, Duration::from_millis(100 * i as u64));
    }
    // Now (200ms) the bucket has room again at 300ms, 400ms, 500ms...: of
    // four at once, two fit within 250ms (by 450ms), two are refused.
    let results = futures_join((0..4).map(|_| svc.clone().oneshot(req(&[])))).await;
    let statuses: Vec<u16> = results.iter().map(|(r, _)| r.status().as_u16()).collect();
    assert_eq!(
        statuses.iter().filter(|&&s| s == 200).count(),
        2,
        "{statuses:?}"
    );
    assert_eq!(
        statuses.iter().filter(|&&s| s == 429).count(),
        2,
        "{statuses:?}"
    );
    let refused = results.iter().find(|(r, _)| r.status() == 429).unwrap();
    assert_eq!(refused.1 - start, Duration::from_millis(400));

    // Longer than the max delay: refused at once.
    let layer = builder()
        .quota(Quota::per_minute(1))
        .wait(Duration::from_millis(250))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert_eq!(status(&mut svc, req(&[])).await, 200);
    let before = tokio::time::Instant::now();
    assert_eq!(status(&mut svc, req(&[])).await, 429);
    assert_eq!(tokio::time::Instant::now(), before);
}

/// Runs the calls concurrently on this task; each result with the (paused)
/// time it finished.
async fn futures_join<F>(calls: impl Iterator<Item = F>) -> Vec<(Res, tokio::time::Instant)>
where
    F: std::future::Future<Output = Result<Res, Infallible>>,
{
    let mut pending: Vec<_> = calls.map(Box::pin).map(Some).collect();
    let mut out: Vec<Option<(Res, tokio::time::Instant)>> = pending.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        for (i, slot) in pending.iter_mut().enumerate() {
            if let Some(f) = slot {
                if let std::task::Poll::Ready(res) = f.as_mut().poll(cx) {
                    out[i] = Some((res.unwrap(), tokio::time::Instant::now()));
                    *slot = None;
                }
            }
        }
        if pending.iter().all(Option::is_none) {
            std::task::Poll::Ready(())
        } else {
            std::task::Poll::Pending
        }
    })
    .await;
    out.into_iter().map(Option::unwrap).collect()
}

#[tokio::test(start_paused = true)]
async fn error_mode_returns_a_rejection() {
    let layer = builder()
        .quota(Quota::per_minute(1).name("q"))
        .build()
        .unwrap()
        .into_error_mode();
    let mut svc = layer.layer(ok_service());
    let ok = svc.ready().await.unwrap().call(req(&[])).await.unwrap();
    assert_eq!(ok.status(), 200);
    let err: BoxError = svc.ready().await.unwrap().call(req(&[])).await.unwrap_err();
    let rejection = err.downcast_ref::<Rejection>().unwrap();
    assert_eq!(rejection.kind(), RejectionKind::RateLimited);
    assert_eq!(rejection.retry_after_secs(), Some(60));
    assert_eq!(rejection.headers()["ratelimit"], "\"q\";r=0;t=60");
}

#[tokio::test(start_paused = true)]
async fn clones_and_layer_calls_share_state() {
    let layer = builder().quota(Quota::per_minute(2)).build().unwrap();
    let mut one = service(&layer);
    let mut two = layer.clone().layer(ok_service());
    let mut three = one.clone();
    assert_eq!(status(&mut one, req(&[])).await, 200);
    assert_eq!(status(&mut two, req(&[])).await, 200);
    assert_eq!(status(&mut three, req(&[])).await, 429);
}

#[test]
fn builder_errors_name_the_field() {
    let err = |b: RateLimitBuilder| b.build().unwrap_err().field().to_owned();
    assert_eq!(err(builder()), "quotas");
    assert_eq!(err(builder().quota(Quota::per_second(0))), "quotas[0].rate");
    assert_eq!(
        err(builder()
            .quota(Quota::per_second(1))
            .quota(Quota::per_second(1).burst(0).name("b"))),
        "quotas[1].burst"
    );
    assert_eq!(
        err(builder()
            .quota(Quota::per_second(1))
            .quota(Quota::per_second(2))),
        "quotas[1].name"
    );
    assert_eq!(
        err(builder().quota(Quota::per_second(1)).max_keys(0)),
        "max_keys"
    );
    assert_eq!(
        err(builder()
            .quota(Quota::per_second(1))
            .allow_cidrs(["10.0.0.0/8", "10.0.0.0/40"])),
        "allow_cidrs[1]"
    );
    assert_eq!(
        ClientIp::new()
            .trusted_proxies(["bad"])
            .unwrap_err()
            .field(),
        "trusted_proxies[0]"
    );
    assert_eq!(
        KeyExtractor::header("bad header").unwrap_err().field(),
        "key"
    );
}

// ---- Real sockets (real time, generous bounds, no speed assertions) ----

#[tokio::test]
async fn axum_server_limits_per_client_ip() {
    let layer = RateLimitLayer::builder()
        .name("http")
        .quota(
            Quota::per_minute(2)
                .key(KeyExtractor::client_ip())
                .name("per-ip"),
        )
        .admitted_headers(true)
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/a", axum::routing::get(|| async { "a" }))
        .route("/b", axum::routing::get(|| async { "b" }))
        .layer(layer);
    let addr = common::serve(app).await;
    let first = common::get(addr, "/a").await;
    assert_eq!(first.status, 200);
    assert_eq!(first.body, "a");
    assert_eq!(first.header("ratelimit"), "\"per-ip\";r=1;t=30");
    // Another route shares the same state (one limiter, not one per route).
    assert_eq!(common::get(addr, "/b").await.status, 200);
    let refused = common::get(addr, "/a").await;
    assert_eq!(refused.status, 429);
    let retry: u64 = refused.header("retry-after").parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(refused.header("ratelimit-policy"), "\"per-ip\";q=2;w=60");
    let live = sf_list(refused.header("ratelimit"));
    assert_eq!(live[0].0, "per-ip");
    assert_eq!(live[0].1["r"], 0);
    let json = refused.json();
    assert_eq!(json["status"], 429);
    assert_eq!(json["detail"], "rate limit quota `per-ip` exhausted");
}

#[tokio::test]
async fn tonic_client_gets_resource_exhausted() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_client::HealthClient;

    let (_reporter, health) = tonic_health::server::health_reporter();
    let layer = RateLimitLayer::builder()
        .name("grpc")
        .quota(Quota::per_minute(2).name("calls"))
        .build()
        .unwrap();
    let router = tonic::service::Routes::new(health)
        .into_axum_router()
        .layer(layer);
    let addr = common::serve_tonic(tonic::service::Routes::from(router)).await;
    let mut client = HealthClient::new(common::grpc_channel(addr).await);
    for _ in 0..2 {
        let ok = client
            .check(HealthCheckRequest {
                service: String::new(),
            })
            .await
            .unwrap();
        assert_eq!(ok.into_inner().status, 1); // SERVING
    }
    let status = client
        .check(HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::ResourceExhausted);
    assert_eq!(status.message(), "rate limit quota `calls` exhausted");
    let live = status
        .metadata()
        .get("ratelimit")
        .expect("RateLimit header on the gRPC refusal")
        .to_str()
        .unwrap();
    let live = sf_list(live);
    assert_eq!(live[0].0, "calls");
    assert_eq!(live[0].1["r"], 0);
    let pushback: u64 = status
        .metadata()
        .get("grpc-retry-pushback-ms")
        .unwrap()
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(pushback > 0 && pushback <= 60_000, "{pushback}");
}

/// A `tracing` writer into a shared buffer.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(start_paused = true)]
async fn refusal_emits_a_tracing_event() {
    let captured = Captured::default();
    let writer = captured.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_env_filter("tower_rampart::rate_limit=debug")
        .with_ansi(false)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);
    // `tracing` caches each callsite's interest process-wide, computed on
    // the thread that first reaches it: a sibling test without a subscriber
    // can cache "never" for the refusal event. Reach it here, recompute the
    // interest on this thread (with this subscriber), then start clean.
    let warm = builder().quota(Quota::per_hour(1)).build().unwrap();
    let mut warm = service(&warm);
    status(&mut warm, req(&[])).await;
    status(&mut warm, req(&[])).await;
    tracing::callsite::rebuild_interest_cache();
    captured.0.lock().unwrap().clear();
    let layer = builder()
        .name("traced")
        .quota(Quota::per_minute(1).name("tight"))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert_eq!(status(&mut svc, req(&[])).await, 200);
    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logged.is_empty(), "{logged}");
    assert_eq!(status(&mut svc, req(&[])).await, 429);
    let logged = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    assert!(logged.contains("rate limit refused a request"), "{logged}");
    assert!(logged.contains("DEBUG"), "{logged}");
    assert!(logged.contains("tower_rampart::rate_limit"), "{logged}");
    for field in [
        "name=traced",
        "quota=tight",
        "reason=\"exhausted\"",
        "retry_after_ms=60000",
        "dry_run=false",
    ] {
        assert!(logged.contains(field), "{field} not in {logged}");
    }
}

/// The cost header most tests below use (`x-cost`, default 1).
fn cost_header(r: &tower_rampart::rate_limit::RequestInfo<'_>) -> u32 {
    r.headers
        .get("x-cost")
        .and_then(|v| v.to_str().ok()?.parse().ok())
        .unwrap_or(1)
}

#[tokio::test(start_paused = true)]
async fn retry_after_covers_every_exhausted_quota() {
    // A 1/s and a 1/min quota, both spent by one request: the refusal must
    // wait for the slower one, else a client obeying `Retry-After: 1` is
    // refused again (and again, 59 times).
    let layer = builder()
        .quota(Quota::per_second(1).name("per-second"))
        .quota(Quota::per_minute(1).name("per-minute"))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert_eq!(status(&mut svc, req(&[])).await, 200);
    tokio::time::advance(Duration::from_millis(250)).await;
    let res = send(&mut svc, req(&[])).await;
    assert_eq!(res.status(), 429);
    assert_eq!(header(&res, "retry-after"), "60"); // 59.75s, rounded up
    // Each quota reports its own reset; the longest one is Retry-After.
    assert_eq!(
        header(&res, "ratelimit"),
        r#""per-second";r=0;t=1, "per-minute";r=0;t=60"#
    );
    assert_eq!(
        body_json(res).await["detail"],
        "rate limit quota `per-minute` exhausted"
    );
    // Obeying the first quota's wait is not enough...
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(status(&mut svc, req(&[])).await, 429);
    // ...obeying the one sent is.
    tokio::time::advance(Duration::from_millis(58_750)).await;
    assert_eq!(status(&mut svc, req(&[])).await, 200);
}

#[tokio::test(start_paused = true)]
async fn retry_after_is_the_time_until_the_cost_fits_everywhere() {
    // Per key 10/min (6s a unit), burst 10; global 60/min (1s a unit),
    // burst 8. After a cost-8 request, a cost-4 one is refused by both.
    let layer = builder()
        .quota(
            Quota::per_minute(10)
                .key(KeyExtractor::header("x-client").unwrap())
                .name("per-client"),
        )
        .quota(Quota::per_minute(60).burst(8).name("global"))
        .cost(cost_header)
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let a = |cost: &'static str| req(&[("x-client", "a"), ("x-cost", cost)]);
    assert_eq!(status(&mut svc, a("8")).await, 200);
    let res = send(&mut svc, a("4")).await;
    assert_eq!(res.status(), 429);
    // per-client needs 2 more units (12s), global needs 4 (4s): 12s.
    assert_eq!(header(&res, "retry-after"), "12");
    let live = sf_list(header(&res, "ratelimit"));
    assert_eq!(live[0].0, "per-client");
    // Effective windows: one unit each away; Retry-After is not earlier
    // than either (draft-ietf-httpapi-ratelimit-headers §6).
    assert_eq!(live[0].1["r"], 2);
    assert_eq!(live[0].1["t"], 6);
    assert_eq!(live[1].0, "global");
    assert_eq!(live[1].1["r"], 0);
    assert_eq!(live[1].1["t"], 1);
    tokio::time::advance(Duration::from_millis(11_999)).await;
    assert_eq!(status(&mut svc, a("4")).await, 429);
    tokio::time::advance(Duration::from_millis(1)).await;
    assert_eq!(status(&mut svc, a("4")).await, 200);
}

#[tokio::test(start_paused = true)]
async fn refusal_reports_what_really_remains() {
    // redis-cell: a request costing more than what is left is refused, and
    // the answer still says what is left (not 0).
    let layer = builder()
        .quota(Quota::per_minute(10).name("q"))
        .cost(cost_header)
        .legacy_headers(true)
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert_eq!(status(&mut svc, req(&[("x-cost", "8")])).await, 200);
    let res = send(&mut svc, req(&[("x-cost", "5")])).await;
    assert_eq!(res.status(), 429);
    // `t`, the effective window: the 2 now, a third only after 6s.
    assert_eq!(header(&res, "ratelimit"), r#""q";r=2;t=6"#);
    assert_eq!(header(&res, "x-ratelimit-remaining"), "2");
    assert_eq!(header(&res, "x-ratelimit-reset"), "48"); // full again
    // 3 units missing, 6s each.
    assert_eq!(header(&res, "retry-after"), "18");
    // What remains is really there: cost 2 goes through, then nothing.
    assert_eq!(status(&mut svc, req(&[("x-cost", "2")])).await, 200);
    let res = send(&mut svc, req(&[])).await;
    assert_eq!(header(&res, "ratelimit"), r#""q";r=0;t=6"#);
    assert_eq!(header(&res, "retry-after"), "6");
}

#[tokio::test(start_paused = true)]
async fn too_costly_refusal_still_reports_what_remains() {
    let layer = builder()
        .quota(
            Quota::per_minute(10)
                .burst(5)
                .key(KeyExtractor::header("x-client").unwrap())
                .name("per-client"),
        )
        .quota(Quota::per_minute(100).name("global"))
        .cost(cost_header)
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let a = |cost: &'static str| req(&[("x-client", "a"), ("x-cost", cost)]);
    assert_eq!(status(&mut svc, a("2")).await, 200);
    let res = send(&mut svc, a("6")).await;
    assert_eq!(res.status(), 429);
    assert!(res.headers().get("retry-after").is_none());
    assert_eq!(
        header(&res, "ratelimit-policy"),
        r#""per-client";q=10;w=60, "global";q=100;w=60"#
    );
    // Both quotas, as they are (the refusal took nothing).
    let live = sf_list(header(&res, "ratelimit"));
    assert_eq!(live.len(), 2);
    assert_eq!((live[0].0.as_str(), live[0].1["r"]), ("per-client", 3));
    assert_eq!((live[1].0.as_str(), live[1].1["r"]), ("global", 98));
    // A fresh key is reported full.
    let res = send(&mut svc, req(&[("x-client", "b"), ("x-cost", "6")])).await;
    let live = sf_list(header(&res, "ratelimit"));
    assert_eq!((live[0].1["r"], live[0].1["t"]), (5, 6));
}

#[tokio::test(start_paused = true)]
async fn allow_cidrs_match_the_unmasked_ipv6_address() {
    // Quotas key IPv6 clients by their /64, but the allow-list names
    // addresses: a /128 entry admits that address only.
    let layer = builder()
        .quota(Quota::per_minute(1).key(KeyExtractor::client_ip()))
        .client_ip(ClientIp::new().ipv6_prefix(64).unwrap())
        // The monitoring host, a whole partner /64, and the network address
        // of a customer /64 (which every client of that /64 masks to).
        .allow_cidrs(["2001:db8::10", "2001:db8:1::/64", "2001:db8:2::/128"])
        .build()
        .unwrap();
    let mut svc = service(&layer);
    for _ in 0..3 {
        assert_eq!(status(&mut svc, req_from("2001:db8::10", &[])).await, 200);
        assert_eq!(status(&mut svc, req_from("2001:db8:1::77", &[])).await, 200);
    }
    // A neighbour of the monitoring host shares its /64 key but not its
    // allow-list entry.
    assert_eq!(status(&mut svc, req_from("2001:db8::11", &[])).await, 200);
    assert_eq!(status(&mut svc, req_from("2001:db8::12", &[])).await, 429);
    // A client whose masked key equals an allow-listed address is limited.
    assert_eq!(status(&mut svc, req_from("2001:db8:2::99", &[])).await, 200);
    assert_eq!(status(&mut svc, req_from("2001:db8:2::99", &[])).await, 429);
    // The exact allow-listed address is admitted even though its /64 is
    // spent.
    assert_eq!(status(&mut svc, req_from("2001:db8:2::", &[])).await, 200);
}

#[tokio::test(start_paused = true)]
async fn allow_cidrs_use_the_trusted_forwarded_address_unmasked() {
    let layer = builder()
        .quota(Quota::per_minute(1).key(KeyExtractor::client_ip()))
        .client_ip(
            ClientIp::new()
                .ipv6_prefix(48)
                .unwrap()
                .trusted_proxies(["10.0.0.0/8"])
                .unwrap()
                .header(ClientIpHeader::XForwardedFor),
        )
        .allow_cidrs(["2001:db8::5"])
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let via_proxy = |client: &str| req_from("10.0.0.1", &[("x-forwarded-for", client)]);
    for _ in 0..3 {
        assert_eq!(status(&mut svc, via_proxy("2001:db8::5")).await, 200);
    }
    assert_eq!(status(&mut svc, via_proxy("2001:db8::6")).await, 200);
    assert_eq!(status(&mut svc, via_proxy("2001:db8::6")).await, 429);
    // An untrusted peer cannot claim the allow-listed address.
    assert_eq!(
        status(
            &mut svc,
            req_from("198.51.100.1", &[("x-forwarded-for", "2001:db8::5")])
        )
        .await,
        200
    );
    assert_eq!(
        status(
            &mut svc,
            req_from("198.51.100.1", &[("x-forwarded-for", "2001:db8::5")])
        )
        .await,
        429
    );
}

#[tokio::test(start_paused = true)]
async fn peek_reads_without_consuming() {
    use tower_rampart::rate_limit::QuotaState;

    let layer = builder()
        .quota(
            Quota::per_minute(10)
                .key(KeyExtractor::header("x-client").unwrap())
                .name("per-client"),
        )
        .quota(Quota::per_second(100).burst(50).name("global"))
        .cost(cost_header)
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let states = |key: &'static str| layer.peek(&Key::from(key)).unwrap();
    let fresh = states("a");
    assert_eq!(fresh.len(), 2);
    assert_eq!(fresh[0].name(), "per-client");
    assert_eq!(
        (fresh[0].limit(), fresh[0].remaining(), fresh[0].reset()),
        (10, 10, Duration::ZERO)
    );
    assert_eq!(fresh[0].retry_after(), Duration::ZERO);
    assert_eq!(fresh[1].name(), "global");
    assert_eq!(fresh[1].remaining(), 50);

    assert_eq!(
        status(&mut svc, req(&[("x-client", "a"), ("x-cost", "10")])).await,
        200
    );
    let spent: Vec<QuotaState> = states("a");
    assert_eq!(spent[0].remaining(), 0);
    assert_eq!(spent[0].reset(), Duration::from_secs(60));
    assert_eq!(spent[0].retry_after(), Duration::from_secs(6));
    assert_eq!(spent[1].remaining(), 40);
    // Peeking many times consumed nothing, and agrees with the refusal.
    assert_eq!(states("a"), spent);
    let res = send(&mut svc, req(&[("x-client", "a")])).await;
    assert_eq!(header(&res, "retry-after"), "6");
    assert_eq!(
        header(&res, "ratelimit"),
        r#""per-client";r=0;t=6, "global";r=40;t=1"#
    );
    // Another key only sees the global quota move.
    let b = states("b");
    assert_eq!((b[0].remaining(), b[1].remaining()), (10, 40));
    // Time refills what peek reports, exactly as the limiter would admit.
    tokio::time::advance(Duration::from_secs(6)).await;
    let later = states("a");
    assert_eq!(later[0].remaining(), 1);
    assert_eq!(later[0].retry_after(), Duration::ZERO);
    assert_eq!(later[0].reset(), Duration::from_secs(54));
    assert_eq!(later[1].remaining(), 50);
    assert_eq!(status(&mut svc, req(&[("x-client", "a")])).await, 200);
    assert_eq!(status(&mut svc, req(&[("x-client", "a")])).await, 429);
}

#[tokio::test]
async fn peek_over_a_real_server_sees_the_client_ip_key() {
    let layer = RateLimitLayer::builder()
        .quota(
            Quota::per_hour(5)
                .key(KeyExtractor::client_ip())
                .name("per-ip"),
        )
        .build()
        .unwrap();
    let admin = layer.clone();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "hello" }))
        .layer(layer);
    let addr = common::serve(app).await;
    for _ in 0..3 {
        assert_eq!(common::get(addr, "/").await.status, 200);
    }
    let me = admin.peek(&Key::Ip("127.0.0.1".parse().unwrap())).unwrap();
    assert_eq!(me[0].remaining(), 2);
    let reset = me[0].reset();
    assert!(
        reset > Duration::from_secs(3 * 720 - 60) && reset <= Duration::from_secs(3 * 720),
        "{reset:?}"
    );
    let other = admin.peek(&Key::Ip("127.0.0.2".parse().unwrap())).unwrap();
    assert_eq!(other[0].remaining(), 5);
    assert_eq!(common::get(addr, "/").await.status, 200);
    assert_eq!(common::get(addr, "/").await.status, 200);
    assert_eq!(common::get(addr, "/").await.status, 429);
}

#[tokio::test]
async fn obedient_client_over_a_real_server_is_not_refused_twice() {
    // Two quotas (per client IP, and global) over a real server: the
    // Retry-After a refused client receives is long enough for both.
    let layer = RateLimitLayer::builder()
        .quota(Quota::per_minute(1).name("global"))
        .quota(
            Quota::per_hour(1)
                .key(KeyExtractor::client_ip())
                .name("per-ip"),
        )
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "hello" }))
        .layer(layer);
    let addr = common::serve(app).await;
    assert_eq!(common::get(addr, "/").await.status, 200);
    let refused = common::get(addr, "/").await;
    assert_eq!(refused.status, 429);
    // Both are spent; global comes first and alone would say 60s, but the
    // per-ip quota needs an hour.
    let retry: u64 = refused.header("retry-after").parse().unwrap();
    assert!((3599..=3600).contains(&retry), "{retry}");
    // Retry-After is not earlier than any refusing quota's effective window
    // (draft-ietf-httpapi-ratelimit-headers §6), and equals the longest.
    let live = sf_list(refused.header("ratelimit"));
    let max_t = live.iter().map(|(_, p)| p["t"]).max().unwrap();
    assert_eq!(u64::try_from(max_t).unwrap(), retry, "{live:?}");
    assert_eq!(
        refused.json()["detail"],
        "rate limit quota `per-ip` exhausted"
    );
}

#[tokio::test(start_paused = true)]
async fn waiting_mode_is_not_parked_for_a_quota_that_cannot_make_it() {
    // Outbound client, wait up to 1s. The fast quota would have room in
    // 0.5s but the slow one only in 60s: refused at once (fail fast) with
    // the real wait, not parked for 0.5s and then refused anyway.
    let layer = builder()
        .quota(Quota::per_second(2).burst(1).name("fast"))
        .quota(Quota::per_minute(1).name("slow"))
        .wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert_eq!(status(&mut svc, req(&[])).await, 200);
    let before = tokio::time::Instant::now();
    let res = send(&mut svc, req(&[])).await;
    assert_eq!(res.status(), 429);
    assert_eq!(tokio::time::Instant::now(), before);
    assert_eq!(header(&res, "retry-after"), "60");
    // Both have room within the wait: one wait for the slower (one wakeup).
    let layer = builder()
        .quota(Quota::per_second(4).burst(1).name("fast"))
        .quota(Quota::per_second(2).burst(1).name("slow"))
        .wait(Duration::from_secs(1))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    assert_eq!(status(&mut svc, req(&[])).await, 200);
    assert_eq!(status(&mut svc, req(&[])).await, 200);
    assert_eq!(
        tokio::time::Instant::now() - before,
        Duration::from_millis(500)
    );
}

#[tokio::test(start_paused = true)]
async fn grpc_pushback_is_never_early() {
    // One unit every 1.5ms: a gRPC client told to come back in 1ms (the
    // wait rounded down) would be refused again; rounded up, it is not.
    let layer = builder()
        .quota(Quota::new(Rate::new(2, Duration::from_millis(3))).burst(1))
        .build()
        .unwrap();
    let mut svc = service(&layer);
    let grpc = || req(&[("content-type", "application/grpc")]);
    assert_eq!(status(&mut svc, grpc()).await, 200);
    let res = send(&mut svc, grpc()).await;
    assert_eq!(header(&res, "grpc-status"), "8");
    assert_eq!(header(&res, "grpc-retry-pushback-ms"), "2");
    tokio::time::advance(Duration::from_millis(1)).await;
    let res = send(&mut svc, grpc()).await;
    assert_eq!(header(&res, "grpc-status"), "8");
    assert_eq!(header(&res, "grpc-retry-pushback-ms"), "1");
    tokio::time::advance(Duration::from_millis(1)).await;
    let res = send(&mut svc, grpc()).await;
    assert_eq!(res.status(), 200);
    assert!(res.headers().get("grpc-status").is_none());
}
