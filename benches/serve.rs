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
const ROUND: Duration = Duration::from_secs(3);
const ROUNDS: usize = 3;

fn app() -> Router {
    Router::new().route("/", get(|| async { "ok" }))
}

/// Starts both servers on their own runtime; returns their addresses.
fn servers(rt: &tokio::runtime::Runtime) -> (SocketAddr, SocketAddr) {
    rt.block_on(async {
        use axum::serve::ListenerExt;
        let axum_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let axum_addr = axum_listener.local_addr().unwrap();
        // The same socket option as `serve`'s default `tcp_nodelay`.
        let axum_listener = axum_listener.tap_io(|tcp| {
            let _ = tcp.set_nodelay(true);
        });
        tokio::spawn(async move { axum::serve(axum_listener, app()).await.unwrap() });

        let shutdown = tower_rampart::Shutdown::builder()
            .signals(false)
            .build()
            .unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(tower_rampart::serve(listener, app(), &shutdown).into_future());
        (axum_addr, addr)
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
        .enable_all()
        .build()
        .unwrap();
    let client_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let (axum_addr, rampart_addr) = servers(&server_rt);
    if quick {
        client_rt.block_on(async {
            for addr in [axum_addr, rampart_addr] {
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
    println!("| round | server | requests/s | p50 | p99 | p99.9 |");
    println!("|---|---|---|---|---|---|");
    let mut rates: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    // A warm-up round each, not reported.
    client_rt.block_on(load(axum_addr));
    client_rt.block_on(load(rampart_addr));
    for round in 1..=ROUNDS {
        for (i, (name, addr)) in [
            ("axum::serve", axum_addr),
            ("tower_rampart::serve", rampart_addr),
        ]
        .into_iter()
        .enumerate()
        {
            let r = client_rt.block_on(load(addr));
            let rate = r.requests as f64 / ROUND.as_secs_f64();
            rates[i].push(rate);
            println!(
                "| {round} | `{name}` | {rate:.0} | {:?} | {:?} | {:?} |",
                percentile(&r.latencies, 0.5),
                percentile(&r.latencies, 0.99),
                percentile(&r.latencies, 0.999),
            );
        }
    }
    for r in &mut rates {
        r.sort_by(f64::total_cmp);
    }
    let median = |r: &Vec<f64>| r[r.len() / 2];
    println!(
        "\nmedian requests/s: axum::serve {:.0}, tower_rampart::serve {:.0} ({:+.1} %)",
        median(&rates[0]),
        median(&rates[1]),
        (median(&rates[1]) / median(&rates[0]) - 1.0) * 100.0
    );
}
