//! `tower_rampart::serve` next to `axum::serve`, in one run: the same axum
//! handler, the same hyper client, the same loopback load, rounds
//! alternated (axum, rampart, axum, rampart, ...) so machine noise hits
//! both alike.
//!
//! ```sh
//! cargo bench --all-features --bench serve
//! ```
//!
//! The load: `CONNECTIONS` HTTP/1.1 keep-alive connections, each sending
//! `GET /` back to back for `ROUND`; the server and the client run on
//! separate tokio runtimes (two worker threads each). Printed: requests per
//! second and latency percentiles per round, then the medians. Not a
//! criterion bench: criterion measures a function call, this measures a
//! server over sockets.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::Router;
use axum::routing::get;
use bytes::Bytes;
use http::Request;
use http_body_util::{BodyExt, Empty};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

const CONNECTIONS: usize = 32;
const ROUND: Duration = Duration::from_secs(2);
const ROUNDS: usize = 5;

fn app() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

/// The servers compared, each on the server runtime.
const SERVERS: [&str; 3] = [
    "axum::serve",
    "axum::serve + ConnectInfo",
    "tower_rampart::serve",
];

/// Starts the servers on their own runtime; returns their addresses, in
/// the order of [`SERVERS`].
fn servers(rt: &tokio::runtime::Runtime) -> [SocketAddr; 3] {
    rt.block_on(async {
        use axum::serve::ListenerExt;
        let bind = || async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            // The same socket option as `serve`'s default `tcp_nodelay`.
            let listener = listener.tap_io(|tcp| {
                let _ = tcp.set_nodelay(true);
            });
            (listener, addr)
        };
        let (plain, plain_addr) = bind().await;
        tokio::spawn(async move { axum::serve(plain, app()).await.unwrap() });
        // What the examples did before `serve`: the peer address for the
        // rate limit.
        let (info, info_addr) = bind().await;
        tokio::spawn(async move {
            axum::serve(
                info,
                app().into_make_service_with_connect_info::<SocketAddr>(),
            )
            .await
            .unwrap()
        });

        let shutdown = tower_rampart::Shutdown::builder()
            .signals(false)
            .build()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(tower_rampart::serve(listener, app(), &shutdown).into_future());
        [plain_addr, info_addr, addr]
    })
}

struct Round {
    requests: u64,
    latencies: Vec<Duration>,
}

/// `CONNECTIONS` keep-alive connections, back-to-back `GET /` for `ROUND`.
async fn load(addr: SocketAddr) -> Round {
    let until = Instant::now() + ROUND;
    let mut tasks = Vec::new();
    for _ in 0..CONNECTIONS {
        tasks.push(tokio::spawn(async move {
            let stream = TcpStream::connect(addr).await.unwrap();
            stream.set_nodelay(true).unwrap();
            let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .unwrap();
            tokio::spawn(conn);
            let mut latencies = Vec::with_capacity(50_000);
            while Instant::now() < until {
                let start = Instant::now();
                send.ready().await.unwrap();
                let res = send
                    .send_request(
                        Request::get("/")
                            .header("host", "bench")
                            .body(Empty::<Bytes>::new())
                            .unwrap(),
                    )
                    .await
                    .unwrap();
                let body = res.into_body().collect().await.unwrap().to_bytes();
                assert_eq!(&body[..], b"ok");
                latencies.push(start.elapsed());
            }
            latencies
        }));
    }
    let mut latencies = Vec::new();
    for t in tasks {
        latencies.extend(t.await.unwrap());
    }
    latencies.sort_unstable();
    Round {
        requests: latencies.len() as u64,
        latencies,
    }
}

/// CPU time used so far by the server runtime's threads. Less disturbed
/// by other processes than throughput: it is what the server spent, whoever
/// else ran.
fn server_cpu() -> Option<Duration> {
    tower_rampart_benches::threads_cpu(SERVER_THREAD)
}

const SERVER_THREAD: &str = "bench-server";

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing
    // we need: a short smoke run is enough there.
    let quick = !std::env::args().any(|a| a == "--bench");
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .thread_name(SERVER_THREAD)
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let addrs = servers(&server_rt);
    if quick {
        client_rt.block_on(async {
            for addr in addrs {
                let stream = TcpStream::connect(addr).await.unwrap();
                let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                    .await
                    .unwrap();
                tokio::spawn(conn);
                let res = send
                    .send_request(Request::get("/").body(Empty::<Bytes>::new()).unwrap())
                    .await
                    .unwrap();
                assert!(res.status().is_success());
            }
        });
        return;
    }

    println!(
        "{CONNECTIONS} keep-alive HTTP/1.1 connections, GET / back to back, {ROUND:?} per round\n"
    );
    println!("| round | server | requests/s | server CPU per request | p50 | p99 | p99.9 |");
    println!("|---|---|---|---|---|---|---|");
    let mut rates: [Vec<f64>; 3] = Default::default();
    let mut p50s: [Vec<Duration>; 3] = Default::default();
    let mut cpus: [Vec<f64>; 3] = Default::default();
    // A warm-up round each, not reported.
    for addr in addrs {
        client_rt.block_on(load(addr));
    }
    for round in 1..=ROUNDS {
        for (i, addr) in addrs.into_iter().enumerate() {
            let cpu_before = server_cpu().unwrap_or_default();
            let r = client_rt.block_on(load(addr));
            let cpu = server_cpu().unwrap_or_default().saturating_sub(cpu_before);
            let rate = r.requests as f64 / ROUND.as_secs_f64();
            rates[i].push(rate);
            let cpu_us = cpu.as_secs_f64() * 1e6 / r.requests as f64;
            cpus[i].push(cpu_us);
            let p50 = percentile(&r.latencies, 0.5);
            p50s[i].push(p50);
            println!(
                "| {round} | `{}` | {rate:.0} | {cpu_us:.2} µs | {p50:?} | {:?} | {:?} |",
                SERVERS[i],
                percentile(&r.latencies, 0.99),
                percentile(&r.latencies, 0.999),
            );
        }
    }
    println!(
        "\n| server | median requests/s | vs `axum::serve` | median server CPU per request | median p50 |"
    );
    println!("|---|---|---|---|---|");
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    let base = median(&mut rates[0].clone());
    for i in 0..3 {
        let m = median(&mut rates[i]);
        let cpu = median(&mut cpus[i]);
        p50s[i].sort_unstable();
        println!(
            "| `{}` | {m:.0} | {:+.1} % | {cpu:.2} µs | {:?} |",
            SERVERS[i],
            (m / base - 1.0) * 100.0,
            p50s[i][p50s[i].len() / 2]
        );
    }
}
