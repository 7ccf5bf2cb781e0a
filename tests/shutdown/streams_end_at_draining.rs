//! Long-lived streams do not hold a rollout, over a real tonic server and
//! client (h2c): a `grpc.health.v1/Watch` stream receives `NOT_SERVING` when
//! shutdown is requested and is ended (status OK) when draining starts; an
//! application's server-streaming RPC wrapped in
//! `Shutdown::until_draining` ends at the same moment, so the server stops
//! after its delay with nothing aborted, not at the drain deadline.
//!
//! The contrast: the same stream without the helper is held until the drain
//! deadline and aborted (`UNAVAILABLE`), as Go's `http.Server.Shutdown`
//! leaves hijacked and streaming connections to the program.
//!
//! `Watch` follows the gRPC health-checking protocol
//! (grpc/grpc `doc/health-checking.md`): the current status at once, then
//! every change; an unknown service is `SERVICE_UNKNOWN` without ending the
//! call. Turning every service `NOT_SERVING` at shutdown is what grpc-go's
//! `health.Server.Shutdown` does (its `TestShutdown` in
//! `health/server_internal_test.go`); ending the stream at drain is this
//! crate's addition, so a watcher does not hold the connection.
#![cfg(all(feature = "config", feature = "tonic"))]

use crate::common;

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use futures_core::Stream;
use tonic::server::NamedService;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tower_rampart::config::{RampartConfig, Stack};
use tower_rampart::shutdown::{Shutdown, ShutdownReport, UntilDraining};

const TICKS: &str = "/demo.Ticker/Ticks";

/// `demo.Tick`.
#[derive(Clone, PartialEq, prost::Message)]
struct Tick {
    #[prost(uint64, tag = "1")]
    n: u64,
}

/// A tick every 20 ms, forever.
struct Ticks {
    interval: tokio::time::Interval,
    n: u64,
}

impl Ticks {
    fn new() -> Self {
        Self {
            interval: tokio::time::interval(Duration::from_millis(20)),
            n: 0,
        }
    }
}

impl Stream for Ticks {
    type Item = Result<Tick, tonic::Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        match self.interval.poll_tick(cx) {
            Poll::Ready(_) => {
                self.n += 1;
                Poll::Ready(Some(Ok(Tick { n: self.n })))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

/// `demo.Ticker/Ticks`, a server-streaming RPC; with `shutdown`, its stream
/// ends when draining starts.
#[derive(Clone)]
struct Ticker {
    shutdown: Option<Shutdown>,
}

impl NamedService for Ticker {
    const NAME: &'static str = "demo.Ticker";
}

type BoxFuture<T> = Pin<Box<dyn std::future::Future<Output = T> + Send>>;
type TickStream = Pin<Box<dyn Stream<Item = Result<Tick, tonic::Status>> + Send>>;

impl tower::Service<http::Request<tonic::body::Body>> for Ticker {
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let shutdown = self.shutdown.clone();
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(tonic_prost::ProstCodec::<Tick, ()>::default());
            Ok(grpc.server_streaming(Handler { shutdown }, req).await)
        })
    }
}

struct Handler {
    shutdown: Option<Shutdown>,
}

impl tonic::server::ServerStreamingService<()> for Handler {
    type Response = Tick;
    type ResponseStream = TickStream;
    type Future = std::future::Ready<Result<tonic::Response<TickStream>, tonic::Status>>;

    fn call(&mut self, _: tonic::Request<()>) -> Self::Future {
        let stream: TickStream = match &self.shutdown {
            // The documented way: the stream ends when draining starts.
            Some(shutdown) => {
                let s: UntilDraining<Ticks> = shutdown.until_draining(Ticks::new());
                Box::pin(s)
            }
            None => Box::pin(Ticks::new()),
        };
        std::future::ready(Ok(tonic::Response::new(stream)))
    }
}

fn config(delay: &str, drain: &str) -> RampartConfig {
    RampartConfig::from_toml(&format!(
        r#"
        [shutdown]
        shutdown_delay = "{delay}"
        drain_timeout = "{drain}"
        abort_grace = "100ms"
        signals = false
        [timeout]
        timeout = "{drain}"
        "#
    ))
    .unwrap_or_else(|e| panic!("{e}"))
}

/// The server as a program runs it: graceful shutdown wired to
/// `draining()`, bounded by `run_server`.
async fn serve(
    stack: &Stack,
    helper: bool,
    max_watches: usize,
) -> (
    std::net::SocketAddr,
    tokio::task::JoinHandle<ShutdownReport>,
) {
    let health = stack
        .grpc_health()
        .max_watches(max_watches)
        .build()
        .unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let ticker = Ticker {
        shutdown: helper.then(|| stack.shutdown().clone()),
    };
    let server = tonic::transport::Server::builder()
        .layer(stack.layer())
        .add_service(health)
        .add_service(ticker)
        .serve_with_incoming_shutdown(incoming, stack.shutdown().draining());
    let shutdown = stack.shutdown().clone();
    let task = tokio::spawn(async move { shutdown.run_server(server).await.unwrap() });
    (addr, task)
}

async fn ticks(channel: &tonic::transport::Channel) -> tonic::Streaming<Tick> {
    let mut grpc = tonic::client::Grpc::new(channel.clone());
    grpc.ready().await.unwrap();
    grpc.server_streaming(
        tonic::Request::new(()),
        http::uri::PathAndQuery::from_static(TICKS),
        tonic_prost::ProstCodec::<(), Tick>::default(),
    )
    .await
    .unwrap()
    .into_inner()
}

#[tokio::test]
async fn watch_and_app_streams_end_when_draining_starts() {
    let stack = config("200ms", "30s").stack().build().unwrap();
    let (addr, server) = serve(&stack, true, 16).await;
    let channel = common::grpc_channel(addr).await;

    let mut watch = HealthClient::new(channel.clone())
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let mut ticks = ticks(&channel).await;
    assert_eq!(ticks.message().await.unwrap().unwrap().n, 1);
    assert_eq!(ticks.message().await.unwrap().unwrap().n, 2);

    stack.shutdown().trigger();
    // Shutdown requested: the watcher hears NOT_SERVING at once...
    let next = watch.message().await.unwrap().unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    // ...and the stream ends cleanly (status OK) when draining starts.
    assert!(watch.message().await.unwrap().is_none());
    assert!(stack.shutdown().phase() >= tower_rampart::shutdown::Phase::Draining);

    // The application's stream kept ticking through the delay, then ended
    // cleanly too.
    let mut last = 2;
    while let Some(tick) = ticks.message().await.expect("ended with OK") {
        last = tick.n;
    }
    assert!(last > 2, "ticks flowed during the shutdown delay");

    // The server stops after its delay, far from the 30 s drain deadline,
    // with nothing aborted.
    let report = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .expect("the server stops once the streams ended")
        .unwrap();
    assert_eq!(report.aborted, 0);
    assert!(!report.drain_timed_out);
    assert_eq!(report.left_in_flight, 0);
}

#[tokio::test]
async fn without_the_helper_a_stream_holds_the_drain_until_its_deadline() {
    let stack = config("0s", "1s").stack().build().unwrap();
    let (addr, server) = serve(&stack, false, 16).await;
    let channel = common::grpc_channel(addr).await;
    let mut ticks = ticks(&channel).await;
    assert_eq!(ticks.message().await.unwrap().unwrap().n, 1);

    stack.shutdown().trigger();
    let status = loop {
        match ticks.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended by itself"),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), tonic::Code::Unavailable);
    let report = tokio::time::timeout(Duration::from_secs(10), server)
        .await
        .unwrap()
        .unwrap();
    assert!(report.drain_timed_out);
    assert_eq!(report.aborted, 1);
}

/// The health service is outside the rate limit: the number of `Watch`
/// streams open at once is bounded instead, and a closed stream frees its
/// place.
#[tokio::test]
async fn watch_streams_are_bounded() {
    let stack = config("0s", "5s").stack().build().unwrap();
    let (addr, _server) = serve(&stack, true, 2).await;
    let channel = common::grpc_channel(addr).await;
    let mut client = HealthClient::new(channel);
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut w = client
            .watch(HealthCheckRequest::default())
            .await
            .unwrap()
            .into_inner();
        assert_eq!(
            w.message().await.unwrap().unwrap().status(),
            ServingStatus::Serving
        );
        open.push(w);
    }
    let err = client
        .watch(HealthCheckRequest::default())
        .await
        .unwrap_err();
    assert_eq!(err.code(), tonic::Code::ResourceExhausted);
    // Check is not a stream: still answered.
    let status = client
        .check(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner()
        .status();
    assert_eq!(status, ServingStatus::Serving);

    // The client goes away from one stream: its place is freed.
    drop(open.pop());
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        match client.watch(HealthCheckRequest::default()).await {
            Ok(_) => break,
            Err(e) => {
                assert_eq!(e.code(), tonic::Code::ResourceExhausted);
                assert!(tokio::time::Instant::now() < deadline, "never freed");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
}

/// The protocol's `Watch`: the current status at once, every change after
/// (a synchronous check, the breaker's, seen within the poll interval), and
/// `SERVICE_UNKNOWN` for an unknown service without ending the call.
#[tokio::test]
async fn watch_sends_every_change() {
    let stack = RampartConfig::from_toml(
        r#"
        [shutdown]
        shutdown_delay = "0s"
        signals = false
        [health]
        breaker_readiness = "fail"
        grpc_poll_interval = "20ms"
        "#,
    )
    .unwrap()
    .stack()
    .build()
    .unwrap();
    let (addr, _server) = serve(&stack, true, 16).await;
    let mut client = HealthClient::new(common::grpc_channel(addr).await);
    let mut watch = client
        .watch(HealthCheckRequest::default())
        .await
        .unwrap()
        .into_inner();
    let mut next = async || watch.message().await.unwrap().unwrap().status();
    assert_eq!(next().await, ServingStatus::Serving);
    let breaker = stack.circuit_breaker().unwrap();
    breaker.force_open();
    assert_eq!(next().await, ServingStatus::NotServing);
    breaker.reset();
    assert_eq!(next().await, ServingStatus::Serving);

    let mut unknown = client
        .watch(HealthCheckRequest {
            service: "no.Such".to_owned(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = unknown.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::ServiceUnknown);
    // Still open: nothing more, no end.
    let more = tokio::time::timeout(Duration::from_millis(200), unknown.message()).await;
    assert!(more.is_err(), "the call stays open: {more:?}");
}
