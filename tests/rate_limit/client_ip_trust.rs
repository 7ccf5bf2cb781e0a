//! The client IP has exactly one source of truth (issue 10, point 2): the
//! peer address, or the one forwarding header the operator names, believed
//! only from trusted proxies. Every other forwarding header is ignored, so a
//! client behind a proxy cannot pick its rate-limit key by sending a header
//! the proxy does not write.
//!
//! Over a real axum server (`ConnectInfo<SocketAddr>`) and a real hyper
//! client. The peer 127.0.0.1 plays the trusted proxy; a client connecting
//! from 127.0.0.2 or 127.0.0.3 plays a direct (untrusted) client.
//!
//! The model is the one of nginx's `realip` module (`real_ip_header` names
//! exactly one header, `set_real_ip_from` the trusted proxies,
//! `real_ip_recursive` walks a list from the right) and of Envoy's original
//! IP detection (`xff_num_trusted_hops` for X-Forwarded-For, the
//! `custom_header` extension for a single-address header such as
//! `CF-Connecting-IP`): one header, never a fallback to another.
#![cfg(feature = "axum")]

use crate::common;

use std::net::{IpAddr, SocketAddr};

use bytes::Bytes;
use http::{Request, StatusCode};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tower_rampart::rate_limit::{ClientIp, ClientIpHeader, KeyExtractor, Quota, RateLimitLayer};

/// The forwarding headers a proxy may write, and a client may forge.
const HEADERS: [&str; 4] = [
    "forwarded",
    "x-forwarded-for",
    "x-real-ip",
    "cf-connecting-ip",
];

/// Burst 3 per client IP, no refill during the test.
fn server_layer(client_ip: ClientIp) -> RateLimitLayer {
    RateLimitLayer::builder()
        .name("per-ip")
        .quota(
            Quota::per_minute(3)
                .burst(3)
                .key(KeyExtractor::client_ip())
                .name("client"),
        )
        .client_ip(client_ip)
        .build()
        .unwrap()
}

async fn serve(client_ip: ClientIp) -> SocketAddr {
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(server_layer(client_ip));
    common::serve(app).await
}

fn behind_proxy(header: &str) -> ClientIp {
    ClientIp::new()
        .header(header.parse::<ClientIpHeader>().unwrap())
        .trusted_proxies(["127.0.0.1"])
        .unwrap()
}

/// A hyper client whose connections come from `local`.
fn client_from(local: &str) -> Client<HttpConnector, Full<Bytes>> {
    let mut connector = HttpConnector::new();
    connector.set_local_address(Some(local.parse::<IpAddr>().unwrap()));
    Client::builder(TokioExecutor::new()).build(connector)
}

async fn get(
    client: &Client<HttpConnector, Full<Bytes>>,
    addr: SocketAddr,
    headers: &[(&str, String)],
) -> StatusCode {
    let mut req = Request::get(format!("http://{addr}/"));
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    common::send(client, req.body(Full::new(Bytes::new())).unwrap())
        .await
        .status
}

/// What a proxy writes into `header` for the real client `client`: list
/// headers get the proxy's entry appended to whatever the client sent
/// (`client_part`), single-address headers are set, the client's copy
/// discarded.
fn proxy_writes(header: &str, client: IpAddr, client_part: &str) -> String {
    let node = match client {
        IpAddr::V4(v4) => v4.to_string(),
        IpAddr::V6(v6) => format!("[{v6}]"),
    };
    match header {
        "forwarded" => format!("{client_part}, for=\"{node}:4711\";proto=https"),
        "x-forwarded-for" => format!("{client_part}, {client}"),
        _ => client.to_string(),
    }
}

/// A forged value of `header`, different for each `i`.
fn forged(header: &str, i: usize) -> String {
    match header {
        "forwarded" => format!("for=198.51.100.{i};proto=http"),
        "x-forwarded-for" => format!("198.51.100.{i}, 192.0.2.{i}"),
        _ => format!("198.51.100.{i}"),
    }
}

/// For every ordered pair (P named by the operator and written by the
/// proxy, C forged by the client), the client varies C (and what it puts
/// in front of the proxy's entry in P) on every request: the key never
/// changes, so exactly 3 of 8 are admitted. Before this rule, a proxy
/// appending X-Forwarded-For let a client add `Forwarded` and pick its key:
/// 8 of 8 admitted against a burst of 3.
#[tokio::test]
async fn a_header_the_proxy_does_not_write_never_changes_the_key() {
    let proxy = client_from("127.0.0.1");
    let mut n = 0u8;
    for p in HEADERS {
        let addr = serve(behind_proxy(p)).await;
        for c in HEADERS.into_iter().filter(|c| *c != p) {
            n += 1;
            // One real client per pair (IPv6 for Forwarded, to read a
            // bracketed node with a port).
            let real: IpAddr = if p == "forwarded" {
                format!("2001:db8::{n}").parse().unwrap()
            } else {
                format!("203.0.113.{n}").parse().unwrap()
            };
            let mut statuses = Vec::new();
            for i in 0..8 {
                let headers = [
                    (c, forged(c, i)),
                    (p, proxy_writes(p, real, &forged(p, 100 + i))),
                ];
                statuses.push(get(&proxy, addr, &headers).await.as_u16());
            }
            assert_eq!(
                statuses,
                [200, 200, 200, 429, 429, 429, 429, 429],
                "named {p}, client forges {c}"
            );
            // The named header is read: another real client behind the same
            // proxy has its own bucket (so the 3 of 8 above is not just
            // everyone sharing the proxy's key).
            let other: IpAddr = format!("192.0.2.{n}").parse().unwrap();
            let headers = [(c, forged(c, 0)), (p, proxy_writes(p, other, "unknown"))];
            assert_eq!(
                get(&proxy, addr, &headers).await,
                200,
                "named {p}, client forges {c}: another client"
            );
        }
    }
    assert_eq!(n, 12);
}

/// With no header named, only the peer counts: every forwarding header is
/// ignored, even from 127.0.0.1.
#[tokio::test]
async fn no_header_named_means_the_peer_only() {
    let addr = serve(ClientIp::new()).await;
    let from_one = client_from("127.0.0.1");
    let mut statuses = Vec::new();
    for i in 0..8 {
        let headers: Vec<(&str, String)> = HEADERS.iter().map(|h| (*h, forged(h, i))).collect();
        statuses.push(get(&from_one, addr, &headers).await.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429]);
    // Keyed by the peer: another address has its own bucket.
    let from_two = client_from("127.0.0.2");
    assert_eq!(get(&from_two, addr, &[]).await, 200);
}

/// A peer outside the trusted proxies is the client, whatever it sends in
/// the named header; the trusted proxy is still believed.
#[tokio::test]
async fn the_named_header_is_believed_from_trusted_proxies_only() {
    let addr = serve(behind_proxy("x-forwarded-for")).await;
    let direct = client_from("127.0.0.3");
    let mut statuses = Vec::new();
    for i in 0..8 {
        let headers = [("x-forwarded-for", forged("x-forwarded-for", i))];
        statuses.push(get(&direct, addr, &headers).await.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429, 429, 429]);
    let proxy = client_from("127.0.0.1");
    let headers = [("x-forwarded-for", "203.0.113.200".to_owned())];
    assert_eq!(get(&proxy, addr, &headers).await, 200);
}

/// A garbled, duplicated or obfuscated value from the proxy is absent: the
/// key falls back to the last trusted view (the proxy itself), never to a
/// value the client wrote, and the server answers (no panic).
#[tokio::test]
async fn malformed_values_fall_back_to_the_proxy() {
    let addr = serve(behind_proxy("cf-connecting-ip")).await;
    let proxy = client_from("127.0.0.1");
    let bad = [
        "not an address",
        "203.0.113.1, 203.0.113.2",
        "",
        "[::1",
        "_hidden",
    ];
    let mut statuses = Vec::new();
    for v in bad {
        let headers = [
            ("cf-connecting-ip", v.to_owned()),
            ("x-forwarded-for", "198.51.100.1".to_owned()),
        ];
        statuses.push(get(&proxy, addr, &headers).await.as_u16());
    }
    // Two lines of a single-address header: absent too.
    let req = Request::get(format!("http://{addr}/"))
        .header("cf-connecting-ip", "203.0.113.1")
        .header("cf-connecting-ip", "203.0.113.2")
        .body(Full::new(Bytes::new()))
        .unwrap();
    statuses.push(common::send(&proxy, req).await.status.as_u16());
    // All six share one key (the proxy's): three admitted.
    assert_eq!(statuses, [200, 200, 200, 429, 429, 429]);
    let ok = [("cf-connecting-ip", "203.0.113.1".to_owned())];
    assert_eq!(get(&proxy, addr, &ok).await, 200);

    let addr = serve(behind_proxy("forwarded")).await;
    let mut statuses = Vec::new();
    for v in ["for=_hidden", "for=unknown", "proto=https", "for=\"1.2.3.4"] {
        let headers = [("forwarded", v.to_owned())];
        statuses.push(get(&proxy, addr, &headers).await.as_u16());
    }
    assert_eq!(statuses, [200, 200, 200, 429]);
}

/// Trust that means nothing, or trusts everyone, is refused when the layer
/// is built, naming the field.
#[test]
fn nonsense_trust_is_refused_at_build() {
    let build = |ip: ClientIp| {
        RateLimitLayer::builder()
            .quota(Quota::per_second(1).key(KeyExtractor::client_ip()))
            .client_ip(ip)
            .build()
            .map(drop)
            .unwrap_err()
            .field()
            .to_owned()
    };
    // Trusted proxies, but which header do they write?
    let proxies_only = ClientIp::new().trusted_proxies(["10.0.0.0/8"]).unwrap();
    assert_eq!(build(proxies_only), "client_ip_header");
    // A header believed from anyone lets every client choose its key.
    let header_only = ClientIp::new().header(ClientIpHeader::XForwardedFor);
    assert_eq!(build(header_only), "trusted_proxies");
    assert_eq!(
        ClientIp::new()
            .trusted_proxies(["10.0.0.0/8", "0.0.0.0/0"])
            .unwrap_err()
            .field(),
        "trusted_proxies[1]"
    );
}

/// The production example's shape (a per-client quota and a global one,
/// which the layer steps at once) over a real server, with a flooding
/// client: its own quota refuses it, naming that quota, and its refused
/// requests take nothing from the global quota, so other clients (other
/// source addresses) are admitted until the global quota itself runs out,
/// and then each refusal names the global quota. No refill during the
/// test (per minute).
#[tokio::test]
async fn a_flooding_client_spends_only_its_own_quota() {
    let layer = RateLimitLayer::builder()
        .name("api")
        .quota(
            Quota::per_minute(3)
                .burst(3)
                .key(KeyExtractor::client_ip())
                .name("per-client"),
        )
        .quota(Quota::per_minute(10).burst(10).name("global"))
        .build()
        .unwrap();
    let app = axum::Router::new()
        .route("/", axum::routing::get(|| async { "ok" }))
        .layer(layer);
    let addr = common::serve(app).await;
    async fn send(client: &Client<HttpConnector, Full<Bytes>>, addr: SocketAddr) -> common::Reply {
        let req = Request::get(format!("http://{addr}/"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        common::send(client, req).await
    }
    let detail = |reply: &common::Reply| reply.json()["detail"].as_str().unwrap().to_owned();

    // The flood: 3 admitted, then 27 refusals by its own quota.
    let attacker = client_from("127.0.0.2");
    for i in 0..30 {
        let reply = send(&attacker, addr).await;
        if i < 3 {
            assert_eq!(reply.status, StatusCode::OK, "flood request {i}");
        } else {
            assert_eq!(
                reply.status,
                StatusCode::TOO_MANY_REQUESTS,
                "flood request {i}"
            );
            assert_eq!(detail(&reply), "rate limit quota `per-client` exhausted");
            assert!(!reply.header("retry-after").is_empty());
        }
    }
    // The global quota lost only the 3 admissions: 7 more, from others.
    let mut admitted = 0;
    for local in ["127.0.0.3", "127.0.0.4", "127.0.0.5"] {
        let client = client_from(local);
        for _ in 0..3 {
            let reply = send(&client, addr).await;
            match reply.status {
                StatusCode::OK => admitted += 1,
                StatusCode::TOO_MANY_REQUESTS => {
                    assert_eq!(detail(&reply), "rate limit quota `global` exhausted");
                }
                other => panic!("{local}: {other}"),
            }
        }
    }
    assert_eq!(admitted, 7);
}
