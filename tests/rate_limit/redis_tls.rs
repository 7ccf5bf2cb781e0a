//! Issue 16: the Redis store over TLS (`rediss://`), against a real
//! `redis-server` with only a TLS port (`--port 0 --tls-port P`) and
//! certificates this test generates (a CA, the server's, a client's for
//! mutual TLS, and a second CA nobody trusts). Real time; no assertion
//! depends on speed.
#![cfg(all(feature = "redis-tls", feature = "config", feature = "axum"))]

use crate::common;
use crate::redis_procs::{self, RedisProc, TempDir};

use std::time::Duration;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair,
};
use tower_rampart::rate_limit::{
    FailurePolicy, KeyExtractor, Quota, RateLimitConfig, RateLimitLayer, RedisStore, RedisTls,
    StoreState,
};

/// PEM text of a CA, and what it signed.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (String, String) {
    let mut params =
        CertificateParams::new(names.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>()).unwrap();
    params.distinguished_name.push(DnType::CommonName, names[0]);
    params.extended_key_usages = vec![usage];
    let key = KeyPair::generate().unwrap();
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert.pem(), key.serialize_pem())
}

fn pki() -> Pki {
    let ca = ca("rampart test CA");
    let (server_cert, server_key) = leaf(
        &ca,
        &["localhost", "127.0.0.1"],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(
        &ca,
        &["rampart-client"],
        ExtendedKeyUsagePurpose::ClientAuth,
    );
    Pki {
        ca: ca.pem(),
        server_cert,
        server_key,
        client_cert,
        client_key,
    }
}

/// A TLS-only `redis-server` requiring client certificates signed by the
/// test CA, with the PEM files in its directory.
struct TlsRedis {
    dir: TempDir,
    pki: Pki,
    proc: RedisProc,
}

impl TlsRedis {
    fn start() -> Option<Self> {
        let bin = redis_procs::redis_server_bin()?;
        let pki = pki();
        let dir = TempDir::new("redis-tls");
        let cert = dir.write("server.pem", &pki.server_cert);
        let key = dir.write("server.key", &pki.server_key);
        let ca = dir.write("ca.pem", &pki.ca);
        dir.write("client.pem", &pki.client_cert);
        dir.write("client.key", &pki.client_key);
        dir.write("wrong-ca.pem", ca_pem_nobody_trusts());
        let proc = RedisProc::start(&bin, dir.path(), |port| {
            [
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--tls-cert-file",
                &cert.to_string_lossy(),
                "--tls-key-file",
                &key.to_string_lossy(),
                "--tls-ca-cert-file",
                &ca.to_string_lossy(),
                "--tls-auth-clients",
                "yes",
            ]
            .map(str::to_owned)
            .to_vec()
        });
        Some(Self { dir, pki, proc })
    }

    fn url(&self) -> String {
        format!("rediss://127.0.0.1:{}/", self.proc.port)
    }

    fn file(&self, name: &str) -> String {
        self.dir.path().join(name).to_string_lossy().into_owned()
    }

    /// The test's own client (mutual TLS, the right CA).
    async fn admin(&self) -> redis::aio::MultiplexedConnection {
        redis::Client::build_with_tls(
            self.url(),
            redis::TlsCertificates {
                client_tls: Some(redis::ClientTlsConfig {
                    client_cert: self.pki.client_cert.clone().into_bytes(),
                    client_key: self.pki.client_key.clone().into_bytes(),
                }),
                root_cert: Some(self.pki.ca.clone().into_bytes()),
            },
        )
        .unwrap()
        .get_multiplexed_async_connection()
        .await
        .unwrap()
    }

    /// Round trips the server has answered since the last reset.
    async fn round_trips(&self) -> u64 {
        let info: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut self.admin().await)
            .await
            .unwrap();
        redis_procs::command_calls(&info, &redis_procs::ROUND_TRIPS)
    }

    async fn reset_stats(&self) {
        let () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut self.admin().await)
            .await
            .unwrap();
    }
}

fn ca_pem_nobody_trusts() -> String {
    ca("some other CA").pem()
}

/// The config section an operator would write: the three PEM files.
fn config(redis: &TlsRedis, name: &str, limit: &str, extra: serde_json::Value) -> RateLimitConfig {
    let mut store = serde_json::json!({
        "type": "redis",
        "url": redis.url(),
        "prefix": "tls",
        "timeout": "500ms",
        "trip_after": 2,
        "open_duration": "30s",
        "tls": {
            "ca_file": redis.file("ca.pem"),
            "client_cert_file": redis.file("client.pem"),
            "client_key_file": redis.file("client.key"),
        }
    });
    for (k, v) in extra.as_object().unwrap() {
        store[k] = v.clone();
    }
    serde_json::from_value(serde_json::json!({
        "name": name,
        "quotas": [{ "rate": limit, "key": "header:x-key", "name": "per-key" }],
        "store": store,
    }))
    .unwrap()
}

fn app(layer: RateLimitLayer) -> axum::Router {
    axum::Router::new()
        .route("/", axum::routing::get(|| async { "hello" }))
        .layer(layer)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_two_replicas_share_one_limit_in_one_round_trip_each() {
    let Some(redis) = TlsRedis::start() else {
        return;
    };
    // Two replicas from one config file, each behind its own server.
    let cfg = config(&redis, "api", "10/h", serde_json::json!({}));
    let a = common::serve(app(cfg.build().unwrap())).await;
    let b = common::serve(app(cfg.build().unwrap())).await;
    // Loads the script (first call: NOSCRIPT, SCRIPT LOAD, EVALSHA).
    assert_eq!(
        common::get_with(a, "/", &[("x-key", "warm-up")])
            .await
            .status,
        200
    );
    assert_eq!(
        common::get_with(b, "/", &[("x-key", "warm-up")])
            .await
            .status,
        200
    );
    redis.reset_stats().await;
    let mut admitted = 0;
    let mut refusal = None;
    for i in 0..30 {
        let r = common::get_with(if i % 2 == 0 { a } else { b }, "/", &[("x-key", "k")]).await;
        match r.status.as_u16() {
            200 => admitted += 1,
            429 => {
                refusal.get_or_insert(r);
            }
            other => panic!("status {other}"),
        }
    }
    assert_eq!(admitted, 10, "two replicas share one limit of 10 over TLS");
    let refusal = refusal.unwrap();
    assert_eq!(
        refusal.header("ratelimit-policy"),
        r#""per-key";q=10;w=3600"#
    );
    assert!(
        refusal
            .header("ratelimit")
            .starts_with(r#""per-key";r=0;t="#)
    );
    // One round trip per decision, admitted or refused.
    assert_eq!(redis.round_trips().await, 30);
    let exists: bool = redis::cmd("EXISTS")
        .arg("tls:api:per-key:{k}")
        .query_async(&mut redis.admin().await)
        .await
        .unwrap();
    assert!(exists);
}

/// What one replica that cannot complete the TLS handshake answers, over
/// a real server, under `policy`.
async fn handshake_fails(
    redis: &TlsRedis,
    store: serde_json::Value,
    failure: serde_json::Value,
    want: &[u16],
    path: &str,
) {
    let recorder = metrics_util::debugging::DebuggingRecorder::new();
    let snap = recorder.snapshotter();
    let mut extra = store;
    for (k, v) in failure.as_object().unwrap() {
        extra[k] = v.clone();
    }
    let layer = metrics::with_local_recorder(&recorder, || {
        config(redis, "api", "2/h", extra).build().unwrap()
    });
    let health = layer.store_health();
    let addr = common::serve(app(layer)).await;
    let mut seen = Vec::new();
    let mut bodies = Vec::new();
    for _ in 0..want.len() {
        let r = common::get_with(addr, "/", &[("x-key", "k")]).await;
        seen.push(r.status.as_u16());
        bodies.push(r.body);
    }
    assert_eq!(seen, want, "{path}: {bodies:?}");
    // Two failed handshakes opened the breaker: Redis is not tried again
    // for 30s, and an operator sees why.
    assert_eq!(health.state(), StoreState::Unavailable, "{path}");
    if path == "fail_closed" {
        assert!(
            bodies
                .iter()
                .all(|b| b.contains("the rate limit store is unavailable")),
            "{bodies:?}"
        );
    }
    let decisions: u64 = snap
        .snapshot()
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
        .sum();
    assert_eq!(decisions, want.len() as u64, "{path}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_ca_fails_as_each_policy_says() {
    let Some(redis) = TlsRedis::start() else {
        return;
    };
    // The server's certificate is not signed by the CA this replica
    // trusts: no connection, whatever the policy; the policy decides.
    let wrong = serde_json::json!({ "tls": {
        "ca_file": redis.file("wrong-ca.pem"),
        "client_cert_file": redis.file("client.pem"),
        "client_key_file": redis.file("client.key"),
    }});
    let open = serde_json::json!({ "failure": "fail_open" });
    handshake_fails(
        &redis,
        wrong.clone(),
        open,
        &[200, 200, 200, 200],
        "fail_open",
    )
    .await;
    let closed = serde_json::json!({ "failure": "fail_closed" });
    handshake_fails(
        &redis,
        wrong.clone(),
        closed,
        &[429, 429, 429, 429],
        "fail_closed",
    )
    .await;
    // Half of burst 2 in process: one request, then refusals.
    let fallback = serde_json::json!({ "failure": "fallback", "fallback_share": 0.5 });
    handshake_fails(&redis, wrong, fallback, &[200, 429, 429, 429], "fallback").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_requiring_client_certificates_refuses_a_replica_without_one() {
    let Some(redis) = TlsRedis::start() else {
        return;
    };
    // The right CA, no client certificate: the server (tls-auth-clients
    // yes) ends the handshake; fail closed holds.
    let no_client_cert = serde_json::json!({ "tls": { "ca_file": redis.file("ca.pem") } });
    let closed = serde_json::json!({ "failure": "fail_closed" });
    handshake_fails(
        &redis,
        no_client_cert,
        closed,
        &[429, 429, 429],
        "fail_closed",
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_builder_takes_pem_text() {
    let Some(redis) = TlsRedis::start() else {
        return;
    };
    let layer = RateLimitLayer::builder()
        .name("built")
        .quota(
            Quota::new("3/h".parse().unwrap())
                .key(KeyExtractor::header("x-key").unwrap())
                .name("per-key"),
        )
        .redis(
            RedisStore::new(redis.url())
                .timeout(Duration::from_millis(500))
                .failure_policy(FailurePolicy::FailClosed)
                .tls(
                    RedisTls::new()
                        .ca_pem(redis.pki.ca.clone())
                        .client_cert_pem(
                            redis.pki.client_cert.clone(),
                            redis.pki.client_key.clone(),
                        ),
                ),
        )
        .build()
        .unwrap();
    let addr = common::serve(app(layer)).await;
    let statuses: Vec<u16> = {
        let mut v = Vec::new();
        for _ in 0..4 {
            v.push(
                common::get_with(addr, "/", &[("x-key", "b")])
                    .await
                    .status
                    .as_u16(),
            );
        }
        v
    };
    assert_eq!(statuses, [200, 200, 200, 429]);
}

#[test]
fn tls_files_are_checked_at_build_time_naming_the_field() {
    let dir = TempDir::new("redis-tls-config");
    let pki = pki();
    let ca = dir.write("ca.pem", &pki.ca);
    let cert = dir.write("client.pem", &pki.client_cert);
    let key = dir.write("client.key", &pki.client_key);
    let garbage = dir.write("garbage.pem", "not a certificate");
    let missing = dir.path().join("missing.pem");
    let check = |url: &str, tls: serde_json::Value| -> Vec<String> {
        let c: RateLimitConfig = serde_json::from_value(serde_json::json!({
            "quotas": [{ "rate": "1/s" }],
            "store": { "type": "redis", "url": url, "tls": tls }
        }))
        .unwrap();
        // No runtime here: checking reads the files but connects nowhere.
        match c.validate() {
            Ok(()) => Vec::new(),
            Err(problems) => problems
                .iter()
                .map(|e| format!("{}: {e}", e.field()))
                .collect(),
        }
    };
    let tls_url = "rediss://127.0.0.1:1/";
    assert_eq!(
        check(
            tls_url,
            serde_json::json!({ "ca_file": ca, "client_cert_file": cert, "client_key_file": key })
        ),
        Vec::<String>::new()
    );
    let missing_ca = check(tls_url, serde_json::json!({ "ca_file": missing }));
    assert_eq!(missing_ca.len(), 1, "{missing_ca:?}");
    assert!(
        missing_ca[0].starts_with("store.tls.ca_file: ") && missing_ca[0].contains("missing.pem"),
        "{missing_ca:?}"
    );
    let bad = check(
        tls_url,
        serde_json::json!({ "ca_file": ca, "client_cert_file": garbage, "client_key_file": garbage }),
    );
    let fields: Vec<&str> = bad.iter().map(|p| p.split(':').next().unwrap()).collect();
    assert_eq!(
        fields,
        ["store.tls.client_cert_file", "store.tls.client_key_file"],
        "{bad:?}"
    );
    // A certificate needs its key, and the reverse.
    let half = check(tls_url, serde_json::json!({ "client_cert_file": cert }));
    assert_eq!(half.len(), 1, "{half:?}");
    assert!(
        half[0].starts_with("store.tls.client_key_file: "),
        "{half:?}"
    );
    // TLS settings on a plain-text URL would be silently unused.
    let plain = check("redis://127.0.0.1:1/", serde_json::json!({ "ca_file": ca }));
    assert_eq!(plain.len(), 1, "{plain:?}");
    assert!(plain[0].starts_with("store.url: "), "{plain:?}");
}
