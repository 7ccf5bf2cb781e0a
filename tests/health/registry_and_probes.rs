//! Health registry and probes: caching, timeouts and formats on paused time,
//! then real servers (HTTP and gRPC) on loopback.
use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::{BodyExt, Full};
use tokio::time::Instant;
use tower::{Layer, ServiceExt};
use tower_rampart::health::{
    Check, HealthRegistry, Kind, ProbeConfig, ProbeLayer, ProbeReport, Status,
};
use tower_rampart::shutdown::Shutdown;

fn counter() -> Arc<AtomicUsize> {
    Arc::new(AtomicUsize::new(0))
}

async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

/// A probe, asserting it answers without paused time moving.
async fn probe_now(reg: &HealthRegistry, kind: Kind, exclude: &[&str]) -> ProbeReport {
    let start = Instant::now();
    let report = reg.probe(kind, exclude).await;
    assert_eq!(start.elapsed(), Duration::ZERO, "a probe never waits");
    report
}

#[tokio::test(start_paused = true)]
async fn a_hanging_check_fails_with_timed_out() {
    let reg = HealthRegistry::builder()
        .check(
            Check::readiness("db", std::future::pending::<Result<(), String>>)
                .timeout(Duration::from_secs(1)),
        )
        .build()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1001)).await;
    let report = probe_now(&reg, Kind::Readiness, &[]).await;
    assert_eq!(report.status, Status::Fail);
    let db = reg.check(Kind::Readiness, "db").await.unwrap();
    assert_eq!(db.error.as_deref(), Some("timed out after 1s"));
    assert_eq!(db.duration, Duration::from_secs(1));
    assert_eq!(db.to_text(), "[-]db failed: timed out after 1s\n");
}

#[tokio::test(start_paused = true)]
async fn a_slow_check_never_slows_a_probe() {
    let runs = counter();
    let r = runs.clone();
    let reg = HealthRegistry::builder()
        .check(
            Check::readiness("slow", move || {
                r.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    Ok::<(), String>(())
                }
            })
            .timeout(Duration::from_secs(60))
            .interval(Duration::from_secs(10)),
        )
        .build()
        .unwrap();
    settle().await;
    // Before the first result: failing, answered at once.
    let report = probe_now(&reg, Kind::Readiness, &[]).await;
    assert_eq!(report.status, Status::Fail);
    assert_eq!(report.checks[0].error.as_deref(), Some("not checked yet"));

    tokio::time::sleep(Duration::from_secs(31)).await;
    assert!(probe_now(&reg, Kind::Readiness, &[]).await.passed());
    // Second run starts at 40s and lasts until 70s: probes answer from the
    // cache meanwhile, and never start a run themselves.
    tokio::time::sleep(Duration::from_secs(14)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 2);
    for _ in 0..100 {
        assert!(probe_now(&reg, Kind::Readiness, &[]).await.passed());
    }
    assert_eq!(runs.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn on_demand_checks_run_when_stale_one_at_a_time() {
    let runs = counter();
    let r = runs.clone();
    let reg = HealthRegistry::builder()
        .check(
            Check::readiness("remote", move || {
                r.fetch_add(1, Ordering::SeqCst);
                async {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    Ok::<(), String>(())
                }
            })
            .ttl(Duration::from_secs(5)),
        )
        .build()
        .unwrap();
    settle().await;
    assert_eq!(runs.load(Ordering::SeqCst), 0, "no background task");
    let probes: Vec<_> = (0..5)
        .map(|_| {
            let reg = reg.clone();
            tokio::spawn(async move { reg.probe(Kind::Readiness, &[]).await })
        })
        .collect();
    for p in probes {
        assert!(p.await.unwrap().passed());
    }
    assert_eq!(
        runs.load(Ordering::SeqCst),
        1,
        "one run for concurrent probes"
    );
    assert!(probe_now(&reg, Kind::Readiness, &[]).await.passed());
    assert_eq!(runs.load(Ordering::SeqCst), 1, "fresh within the TTL");
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert!(reg.probe(Kind::Readiness, &[]).await.passed());
    assert_eq!(runs.load(Ordering::SeqCst), 2, "stale after the TTL");
}

#[tokio::test(start_paused = true)]
async fn startup_checks_latch_once_passed() {
    let runs = counter();
    let r = runs.clone();
    // Fails twice, passes on the third run, would fail afterwards.
    let warming = Check::startup("warm-cache", move || {
        let n = r.fetch_add(1, Ordering::SeqCst) + 1;
        async move {
            if n == 3 {
                Ok(())
            } else {
                Err(format!("run {n}"))
            }
        }
    })
    .interval(Duration::from_secs(1));
    let migrated = Arc::new(AtomicBool::new(false));
    let m = migrated.clone();
    let sync = Check::sync("migrations", Kind::Startup, move || {
        if m.load(Ordering::SeqCst) {
            Ok(())
        } else {
            Err("pending")
        }
    });
    let reg = HealthRegistry::builder()
        .check(warming)
        .check(sync)
        .build()
        .unwrap();
    settle().await;
    assert!(!reg.probe(Kind::Startup, &[]).await.passed());
    migrated.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3);
    assert!(reg.probe(Kind::Startup, &[]).await.passed());
    migrated.store(false, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert_eq!(runs.load(Ordering::SeqCst), 3, "no run after latching");
    let report = reg.probe(Kind::Startup, &[]).await;
    assert!(report.passed(), "{report:?}");
    // Startup checks are not part of the other probes.
    assert!(reg.check_names(Kind::Readiness).is_empty());
}

#[tokio::test(start_paused = true)]
async fn a_panicking_check_fails() {
    let reg = HealthRegistry::builder()
        .check(Check::liveness("boom", || async {
            if true {
                panic!("check panicked on purpose");
            }
            Ok::<(), String>(())
        }))
        .build()
        .unwrap();
    reg.refresh().await;
    let c = reg.check(Kind::Liveness, "boom").await.unwrap();
    assert_eq!(c.error.as_deref(), Some("check panicked"));
}

/// A registry with: `shutdown` (built in), `db` (critical, failing),
/// `cache` (non-critical, failing), `deadlock` (liveness, passing).
async fn fixture(shutdown: &Shutdown, db_up: Arc<AtomicBool>) -> HealthRegistry {
    let reg = HealthRegistry::builder()
        .shutdown(shutdown)
        .check(Check::liveness("deadlock", || async {
            Ok::<(), String>(())
        }))
        .check(Check::readiness("db", move || {
            let up = db_up.load(Ordering::SeqCst);
            async move {
                if up {
                    Ok(())
                } else {
                    Err("connection refused: 10.0.0.7:5432")
                }
            }
        }))
        .check(Check::readiness("cache", || async { Err("redis down") }).non_critical())
        .build()
        .unwrap();
    reg.refresh().await;
    reg
}

async fn call(layer: &ProbeLayer, uri: &str, accept: Option<&str>) -> common::Reply {
    let svc = layer.layer(common::ok_service());
    let mut req = Request::get(uri);
    if let Some(a) = accept {
        req = req.header("accept", a);
    }
    let res = svc
        .oneshot(req.body(Full::new(Bytes::new())).unwrap())
        .await
        .unwrap();
    let (parts, body) = res.into_parts();
    let body = body.collect().await.unwrap().to_bytes();
    common::Reply {
        status: parts.status,
        headers: parts.headers,
        body: String::from_utf8(body.to_vec()).unwrap(),
    }
}

#[tokio::test(start_paused = true)]
async fn kube_text_verbose_exclude_and_single_checks() {
    let sd = Shutdown::builder().signals(false).build().unwrap();
    let db_up = Arc::new(AtomicBool::new(false));
    let reg = fixture(&sd, db_up.clone()).await;
    let layer = ProbeLayer::new(&reg);

    // Failing: the listing, reasons withheld, even without ?verbose.
    let r = call(&layer, "/readyz", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("content-type"), "text/plain; charset=utf-8");
    assert_eq!(r.header("cache-control"), "no-store");
    assert_eq!(
        r.body,
        "[+]shutdown ok\n[+]deadlock ok\n[-]db failed: reason withheld\n\
         [!]cache warn: reason withheld\nreadyz check failed\n"
    );

    // Excluding the failing check: passing, so just `ok`...
    let r = call(&layer, "/readyz?exclude=db", None).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    // ...or the listing with ?verbose; unknown names are warned about.
    let r = call(
        &layer,
        "/readyz?verbose&exclude=db&exclude=nope&exclude=ghost",
        None,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(
        r.body,
        "[+]shutdown ok\n[+]deadlock ok\n[+]db excluded: ok\n\
         [!]cache warn: reason withheld\n\
         warn: some health checks cannot be excluded: no matches for \"nope\",\"ghost\"\n\
         readyz check passed\n"
    );

    // One check, with its real error; non-critical failing checks too.
    let r = call(&layer, "/readyz/db", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body, "[-]db failed: connection refused: 10.0.0.7:5432\n");
    let r = call(&layer, "/readyz/cache", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.body, "[-]cache failed: redis down\n");
    let r = call(&layer, "/readyz/shutdown", None).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    assert_eq!(
        call(&layer, "/readyz/nope", None).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        call(&layer, "/livez/db", None).await.status,
        StatusCode::NOT_FOUND,
        "liveness has no dependency"
    );

    // Liveness never includes dependencies or shutdown.
    let r = call(&layer, "/livez?verbose", None).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body, "[+]deadlock ok\nlivez check passed\n");
    let r = call(&layer, "/startupz", None).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));

    // Not a probe: straight to the inner service.
    for path in ["/", "/readyzz", "/api/readyz", "/live"] {
        let r = call(&layer, path, None).await;
        assert_eq!(r.body, "ok", "{path}");
        assert!(r.headers.get("cache-control").is_none(), "{path}");
    }

    // The dependency recovers: ready.
    db_up.store(true, Ordering::SeqCst);
    reg.refresh().await;
    let r = call(&layer, "/readyz", None).await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));

    // Shutdown starts: not ready at once, still alive.
    sd.trigger();
    let r = call(&layer, "/readyz?verbose", None).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.body.starts_with("[-]shutdown failed: reason withheld\n"));
    assert_eq!(call(&layer, "/livez", None).await.status, StatusCode::OK);
    let r = call(&layer, "/readyz/shutdown", None).await;
    assert!(r.body.starts_with("[-]shutdown failed: shutting down"));
}

#[tokio::test(start_paused = true)]
async fn health_json() {
    let sd = Shutdown::builder().signals(false).build().unwrap();
    let reg = fixture(&sd, Arc::new(AtomicBool::new(false))).await;
    let layer = ProbeLayer::new(&reg);

    let r = call(
        &layer,
        "/readyz?exclude=deadlock&exclude=nope",
        Some("text/html, application/health+json;q=0.9"),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.header("content-type"), "application/health+json");
    let j = r.json();
    assert_eq!(j["status"], "fail");
    assert_eq!(j["description"], "readyz");
    let checks = j["checks"].as_object().unwrap();
    let keys: Vec<_> = checks.keys().map(String::as_str).collect();
    assert_eq!(keys.len(), 3, "excluded checks are left out: {keys:?}");
    let db = &j["checks"]["db:responseTime"][0];
    assert_eq!(db["componentId"], "db");
    assert_eq!(db["componentType"], "component");
    assert_eq!(db["status"], "fail");
    assert_eq!(db["output"], "reason withheld");
    assert_eq!(db["observedUnit"], "ms");
    let time = db["time"].as_str().unwrap();
    assert_eq!(time.len(), "2026-01-01T00:00:00.000Z".len());
    assert!(time.ends_with('Z') && time.as_bytes()[10] == b'T', "{time}");
    assert_eq!(j["checks"]["cache:responseTime"][0]["status"], "warn");
    assert_eq!(j["checks"]["shutdown:responseTime"][0]["status"], "pass");
    assert!(
        j["checks"]["shutdown:responseTime"][0]
            .get("output")
            .is_none()
    );
    assert_eq!(j["notes"][0], "cannot exclude `nope`: no such check");

    // One check: the real error.
    let r = call(&layer, "/readyz/db", Some("application/health+json")).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    let j = r.json();
    assert_eq!(j["status"], "fail");
    assert_eq!(
        j["checks"]["db:responseTime"][0]["output"],
        "connection refused: 10.0.0.7:5432"
    );

    // Passing, with a warning: 200 and `warn`.
    let r = call(
        &layer,
        "/readyz?exclude=db",
        Some("application/health+json"),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["status"], "warn");
}

#[tokio::test(start_paused = true)]
async fn custom_paths_and_validation() {
    let reg = HealthRegistry::builder()
        .check(Check::sync("ok", Kind::Liveness, || Ok::<(), String>(())))
        .build()
        .unwrap();
    let layer = ProbeLayer::builder(&reg)
        .liveness_path("/health/live")
        .readiness_path("/health/ready")
        .startup_path("")
        .build()
        .unwrap();
    assert_eq!(call(&layer, "/health/live", None).await.body, "ok");
    assert_eq!(
        call(&layer, "/health/ready?verbose", None).await.body,
        "[+]ok ok\nreadyz check passed\n"
    );
    assert_eq!(call(&layer, "/health/live/ok", None).await.body, "ok");
    // Disabled and old paths go to the app (which answers "ok" too, but
    // without the probe's headers).
    for path in ["/startupz", "/livez"] {
        let r = call(&layer, path, None).await;
        assert!(r.headers.get("cache-control").is_none(), "{path}");
    }

    for (bad, field) in [
        (
            ProbeLayer::builder(&reg).liveness_path("livez"),
            "liveness_path",
        ),
        (
            ProbeLayer::builder(&reg).readiness_path("/readyz/"),
            "readiness_path",
        ),
        (
            ProbeLayer::builder(&reg).startup_path("/livez"),
            "startup_path",
        ),
        (
            ProbeLayer::builder(&reg).liveness_path("/a?b"),
            "liveness_path",
        ),
    ] {
        assert_eq!(bad.build().unwrap_err().field(), field);
    }
    let err = HealthRegistry::builder()
        .check(Check::sync("a", Kind::Liveness, || Ok::<(), String>(())))
        .check(Check::sync("a", Kind::Readiness, || Ok::<(), String>(())))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "checks[1].name");
    let err = HealthRegistry::builder()
        .check(Check::sync("a b", Kind::Liveness, || Ok::<(), String>(())))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "checks[0].name");
    let err = HealthRegistry::builder()
        .check(Check::readiness("t", || async { Ok::<(), String>(()) }).timeout(Duration::ZERO))
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "checks[0].timeout");
    let cfg = ProbeConfig::default();
    assert_eq!(cfg.readiness_path, "/readyz");
}

#[cfg(feature = "config")]
#[test]
fn probe_config_deserialises() {
    let c: ProbeConfig =
        serde_json::from_str(r#"{"readiness_path":"/ready","startup_path":""}"#).unwrap();
    assert_eq!(c.readiness_path, "/ready");
    assert_eq!(c.liveness_path, "/livez");
    assert!(serde_json::from_str::<ProbeConfig>(r#"{"ready":"/r"}"#).is_err());
}

// ---------------------------------------------------------------------------
// Real servers on loopback.

#[tokio::test]
async fn probes_over_a_real_server() {
    let sd = Shutdown::builder().signals(false).build().unwrap();
    let reg = fixture(&sd, Arc::new(AtomicBool::new(true))).await;
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "app" }))
        .layer(sd.drain_layer())
        .layer(ProbeLayer::new(&reg));
    let addr = common::serve(app).await;
    let r = common::get(addr, "/readyz").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    let r = common::get(addr, "/readyz?verbose").await;
    assert_eq!(
        r.body,
        "[+]shutdown ok\n[+]deadlock ok\n[+]db ok\n[!]cache warn: reason withheld\nreadyz check passed\n"
    );
    let r = common::get_with(addr, "/livez", &[("accept", "application/health+json")]).await;
    assert_eq!(r.json()["status"], "pass");
    assert_eq!(common::get(addr, "/").await.body, "app");
    // Probe traffic is not counted in flight.
    assert_eq!(sd.in_flight(), 0);
}

#[cfg(feature = "tonic")]
#[tokio::test]
async fn grpc_health_follows_checks_and_shutdown() {
    use tonic_health::pb::HealthCheckRequest;
    use tonic_health::pb::health_check_response::ServingStatus;
    use tonic_health::pb::health_client::HealthClient;

    let sd = Shutdown::builder()
        .signals(false)
        .shutdown_delay(Duration::from_secs(30))
        .build()
        .unwrap();
    let flag = Arc::new(AtomicBool::new(true));
    let f = flag.clone();
    let reg = HealthRegistry::builder()
        .shutdown(&sd)
        .check(Check::sync(
            "payments-breaker",
            Kind::Readiness,
            move || {
                if f.load(Ordering::SeqCst) {
                    Ok(())
                } else {
                    Err("circuit open")
                }
            },
        ))
        .check(Check::readiness("db", || async { Ok::<(), String>(()) }))
        .build()
        .unwrap();
    reg.refresh().await;
    assert!(
        reg.grpc_health()
            .service("x.Y", ["missing"])
            .build()
            .is_err()
    );
    let health = reg
        .grpc_health()
        .service("shop.Payments", ["payments-breaker", "db"])
        .service("shop.Catalog", ["db"])
        .poll_interval(Duration::from_millis(20))
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let stop = sd.draining();
    tokio::spawn(async move {
        tonic::transport::Server::builder()
            .add_service(health)
            .serve_with_incoming_shutdown(incoming, stop)
            .await
            .unwrap();
    });
    let mut client = HealthClient::new(common::grpc_channel(addr).await);

    async fn status_of(client: &mut HealthClient<tonic::transport::Channel>, svc: &str) -> i32 {
        client
            .check(HealthCheckRequest {
                service: svc.to_owned(),
            })
            .await
            .map(|r| r.into_inner().status)
            .unwrap_or(-1)
    }
    async fn wait_for(
        client: &mut HealthClient<tonic::transport::Channel>,
        svc: &str,
        want: ServingStatus,
    ) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let got = status_of(client, svc).await;
            if got == want as i32 {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "{svc}: status {got}, want {want:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    for svc in ["", "shop.Payments", "shop.Catalog"] {
        wait_for(&mut client, svc, ServingStatus::Serving).await;
    }
    // The breaker opens: that service and the overall status follow.
    flag.store(false, Ordering::SeqCst);
    wait_for(&mut client, "shop.Payments", ServingStatus::NotServing).await;
    wait_for(&mut client, "", ServingStatus::NotServing).await;
    assert_eq!(
        status_of(&mut client, "shop.Catalog").await,
        ServingStatus::Serving as i32
    );
    flag.store(true, Ordering::SeqCst);
    wait_for(&mut client, "", ServingStatus::Serving).await;

    // Shutdown starts: every service turns NOT_SERVING (the server keeps
    // serving during the 30s delay).
    sd.trigger();
    for svc in ["", "shop.Payments", "shop.Catalog"] {
        wait_for(&mut client, svc, ServingStatus::NotServing).await;
    }
}

// ---------------------------------------------------------------------------
// Issue 12.

/// Kubelet gives a probe 1 s by default (`timeoutSeconds: 1`): stale
/// on-demand checks run concurrently, so two checks of 800 ms answer in
/// 800 ms, not 1.6 s; each run is still bounded by its own timeout.
#[tokio::test(start_paused = true)]
async fn stale_on_demand_checks_run_concurrently() {
    let slow = |name: &'static str, ms: u64, runs: Arc<AtomicUsize>| {
        Check::readiness(name, move || {
            runs.fetch_add(1, Ordering::SeqCst);
            async move {
                tokio::time::sleep(Duration::from_millis(ms)).await;
                Ok::<(), String>(())
            }
        })
        .ttl(Duration::from_secs(5))
        .timeout(Duration::from_secs(1))
    };
    let runs = counter();
    let reg = HealthRegistry::builder()
        .check(slow("db", 800, runs.clone()))
        .check(Check::sync(
            "flag",
            Kind::Readiness,
            || Ok::<(), String>(()),
        ))
        .check(slow("search", 800, runs.clone()))
        .check(slow("hangs", 60_000, runs.clone()))
        .build()
        .unwrap();

    let start = Instant::now();
    let report = reg.probe(Kind::Readiness, &["hangs"]).await;
    assert_eq!(start.elapsed(), Duration::from_millis(800), "not 1.6s");
    assert!(report.passed());
    let names: Vec<&str> = report.checks.iter().map(|c| &*c.name).collect();
    assert_eq!(
        names,
        ["db", "flag", "search", "hangs"],
        "registration order"
    );
    assert!(report.checks[0].checked_at.is_some());
    assert_eq!(report.checks[2].duration, Duration::from_millis(800));
    assert!(report.checks[3].excluded);
    assert_eq!(
        runs.load(Ordering::SeqCst),
        2,
        "an excluded check does not run"
    );

    // Fresh now: no waiting at all.
    assert!(probe_now(&reg, Kind::Readiness, &["hangs"]).await.passed());

    // Stale again, with the hanging one included: the probe is bounded by
    // the longest timeout (1 s), not by the sum of the runs.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let start = Instant::now();
    let report = reg.probe(Kind::Readiness, &[]).await;
    assert_eq!(start.elapsed(), Duration::from_secs(1));
    assert!(!report.passed());
    assert_eq!(
        report.checks[3].error.as_deref(),
        Some("timed out after 1s")
    );
    assert_eq!(report.checks[0].status, Status::Pass);

    // `refresh` runs them all at once as well.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let start = Instant::now();
    reg.refresh().await;
    assert_eq!(start.elapsed(), Duration::from_secs(1));
}

/// Nested probe paths route by exact match: `/health` is readiness,
/// `/health/live` liveness (not the readiness check `live`), and
/// `<probe path>/<name>` the single check, over a real server.
#[tokio::test]
async fn nested_probe_paths_route_to_the_right_probe() {
    let reg = HealthRegistry::builder()
        .check(Check::sync(
            "heart",
            Kind::Liveness,
            || Ok::<(), String>(()),
        ))
        .check(Check::sync("db", Kind::Readiness, || Err::<(), _>("down")))
        .check(Check::sync("boot", Kind::Startup, || Ok::<(), String>(())))
        .build()
        .unwrap();
    let layer = ProbeLayer::builder(&reg)
        .readiness_path("/health")
        .liveness_path("/health/live")
        .startup_path("/health/live/startup")
        .build()
        .unwrap();
    let app = axum::Router::new()
        .fallback(|| async { (StatusCode::IM_A_TEAPOT, "app") })
        .layer(layer);
    let addr = common::serve(app).await;

    let r = common::get(addr, "/health/live?verbose").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::OK, "[+]heart ok\nlivez check passed\n")
    );
    let r = common::get(addr, "/health?verbose").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(
        r.body,
        "[+]heart ok\n[-]db failed: reason withheld\nreadyz check failed\n"
    );
    let r = common::get(addr, "/health/live/startup").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    // Single checks under each probe.
    let r = common::get(addr, "/health/db").await;
    assert_eq!(
        (r.status, r.body.as_str()),
        (StatusCode::SERVICE_UNAVAILABLE, "[-]db failed: down\n")
    );
    let r = common::get(addr, "/health/live/heart").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    let r = common::get(addr, "/health/live/startup/boot").await;
    assert_eq!((r.status, r.body.as_str()), (StatusCode::OK, "ok"));
    // `db` is not a liveness check.
    assert_eq!(
        common::get(addr, "/health/live/db").await.status,
        StatusCode::NOT_FOUND
    );
    // Trailing slash: the probe itself.
    assert_eq!(common::get(addr, "/health/live/").await.body, "ok");
    // Deeper paths and look-alikes belong to the app.
    for path in [
        "/health/a/b",
        "/healthz",
        "/health-live",
        "/health/live/x/y",
    ] {
        assert_eq!(
            common::get(addr, path).await.status,
            StatusCode::IM_A_TEAPOT,
            "{path}"
        );
    }

    // Truly ambiguous: liveness at `/health/db` would hide the readiness
    // check `db` (`/health/db`); the error names the field.
    let err = ProbeLayer::builder(&reg)
        .readiness_path("/health")
        .liveness_path("/health/db")
        .build()
        .unwrap_err();
    assert_eq!(err.field(), "liveness_path");
    assert!(err.message().contains("check `db`"), "{err}");
    // Not ambiguous: no readiness check is named `live`.
    assert!(
        ProbeLayer::builder(&reg)
            .readiness_path("/health")
            .liveness_path("/health/other")
            .build()
            .is_ok()
    );
}

/// `componentType` uses the draft's vocabulary (`component`, `datastore`,
/// `system`) or a URI; anything else is refused when the registry is built.
#[tokio::test]
async fn component_types_follow_the_draft() {
    use tower_rampart::health::ComponentType;
    let breaker = tower_rampart::CircuitBreakerLayer::builder()
        .name("payments")
        .build()
        .unwrap();
    let reg = HealthRegistry::builder()
        .check(Check::sync("worker", Kind::Liveness, || {
            Ok::<(), String>(())
        }))
        .check(
            Check::sync("db", Kind::Readiness, || Ok::<(), String>(()))
                .component_type(ComponentType::Datastore),
        )
        .check(Check::circuit_breaker(&breaker.handle()))
        .check(
            Check::sync("queue", Kind::Readiness, || Ok::<(), String>(()))
                .component_type(ComponentType::uri("urn:example:queue")),
        )
        .build()
        .unwrap();
    let layer = ProbeLayer::new(&reg);
    let j = call(&layer, "/readyz", Some("application/health+json"))
        .await
        .json();
    let ty = |key: &str| j["checks"][key][0]["componentType"].clone();
    assert_eq!(ty("worker:responseTime"), "component");
    assert_eq!(ty("db:responseTime"), "datastore");
    assert_eq!(ty("payments:responseTime"), "system");
    assert_eq!(ty("queue:responseTime"), "urn:example:queue");

    for bad in [
        "queue",
        "urn:has space",
        "no-scheme",
        "1x:y",
        "urn:\"q\"",
        "urn:",
    ] {
        let err = HealthRegistry::builder()
            .check(
                Check::sync("q", Kind::Readiness, || Ok::<(), String>(()))
                    .component_type(ComponentType::uri(bad)),
            )
            .build()
            .unwrap_err();
        assert_eq!(err.field(), "checks[0].component_type", "{bad}");
    }
}
