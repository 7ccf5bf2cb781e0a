//! A tonic gRPC service behind the whole tower-rampart stack, built from the
//! same config file as the `production` example, with `grpc.health.v1`.
//!
//! ```text
//! # the server
//! cargo run --example grpc --all-features -- \
//!     --config examples/configs/production.toml --listen 127.0.0.1:50051
//! # a client: the health service, then demo.Greeter/SayHello
//! cargo run --example grpc --all-features -- --call 127.0.0.1:50051 --name Ada
//! cargo run --example grpc --all-features -- --call 127.0.0.1:50051 --sleep-ms 8000   # DEADLINE_EXCEEDED
//! cargo run --example grpc --all-features -- --call 127.0.0.1:50051 --fail            # INTERNAL, trips the breaker
//! ```
//!
//! With grpcurl (no reflection: give it the service by hand):
//! `grpcurl -plaintext 127.0.0.1:50051 grpc.health.v1.Health/Check`.
//!
//! The service is written by hand: prost messages with
//! `#[derive(prost::Message)]` and a `tonic::server::Grpc` unary handler with
//! `tonic_prost::ProstCodec`, so no `protoc` is needed. The equivalent proto:
//!
//! ```proto
//! package demo;
//! service Greeter { rpc SayHello(HelloRequest) returns (HelloReply); }
//! message HelloRequest { string name = 1; uint64 sleep_ms = 2; bool fail = 3; }
//! message HelloReply { string message = 1; }
//! ```
//!
//! Refusals reach gRPC clients as statuses: `RESOURCE_EXHAUSTED` (rate
//! limit), `UNAVAILABLE` (open breaker, draining), `DEADLINE_EXCEEDED`
//! (timeout, also bounded by the client's `grpc-timeout`). The server also
//! answers HTTP/1.1 (it is served by `tower_rampart::serve`, which also
//! hands the peer address to the rate limit), so Kubernetes' `httpGet`
//! probes reach `/livez`, `/readyz`, `/startupz`; a `grpc:` probe uses
//! `grpc.health.v1` instead. Both are served outside the protections
//! (`[platform]`): `Check` answers what `/readyz` answers, at the moment of
//! the call, while a breaker is open or a client is rate limited; a `Watch`
//! stream turns `NOT_SERVING` when shutdown starts and ends when draining
//! starts. `demo.Greeter/SayHello` has a breaker of its own (`[routes]`).
use std::convert::Infallible;
use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tonic::body::Body;
use tonic::codegen::http;
use tonic::server::NamedService;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_client::HealthClient;
use tonic_prost::ProstCodec;
use tower::Service;
use tower_rampart::config::RampartConfig;

/// `demo.HelloRequest`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloRequest {
    /// Who to greet.
    #[prost(string, tag = "1")]
    pub name: String,
    /// Sleep this long before answering (to watch the timeout).
    #[prost(uint64, tag = "2")]
    pub sleep_ms: u64,
    /// Answer INTERNAL (to watch the breaker open).
    #[prost(bool, tag = "3")]
    pub fail: bool,
}

/// `demo.HelloReply`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HelloReply {
    /// The greeting.
    #[prost(string, tag = "1")]
    pub message: String,
}

const SAY_HELLO: &str = "/demo.Greeter/SayHello";

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// The `demo.Greeter` service as a tower service, like tonic's generated
/// servers.
#[derive(Clone, Default)]
struct Greeter;

impl NamedService for Greeter {
    const NAME: &'static str = "demo.Greeter";
}

impl Service<http::Request<Body>> for Greeter {
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<Body>) -> Self::Future {
        if req.uri().path() == SAY_HELLO {
            Box::pin(async move {
                let mut grpc =
                    tonic::server::Grpc::new(ProstCodec::<HelloReply, HelloRequest>::default());
                Ok(grpc.unary(SayHello, req).await)
            })
        } else {
            Box::pin(async { Ok(tonic::Status::unimplemented("no such method").into_http()) })
        }
    }
}

struct SayHello;

/// Greetings answered, reported at exit to compare with what clients saw.
static GREETED: AtomicU64 = AtomicU64::new(0);

impl tonic::server::UnaryService<HelloRequest> for SayHello {
    type Response = HelloReply;
    type Future = BoxFuture<Result<tonic::Response<HelloReply>, tonic::Status>>;

    fn call(&mut self, request: tonic::Request<HelloRequest>) -> Self::Future {
        let req = request.into_inner();
        Box::pin(async move {
            if req.sleep_ms > 0 {
                tokio::time::sleep(Duration::from_millis(req.sleep_ms.min(600_000))).await;
            }
            if req.fail {
                return Err(tonic::Status::internal("failed on purpose"));
            }
            GREETED.fetch_add(1, Ordering::Relaxed);
            Ok(tonic::Response::new(HelloReply {
                message: format!("hello, {}", req.name),
            }))
        })
    }
}

enum Mode {
    Serve {
        config: String,
        listen: Option<String>,
    },
    Call {
        addr: SocketAddr,
        request: HelloRequest,
    },
}

const USAGE: &str = "\
usage: grpc [--config FILE] [--listen ADDR]
       grpc --call ADDR [--name NAME] [--sleep-ms MS] [--fail]

  --config FILE   the TOML settings (default examples/configs/production.toml)
  --listen ADDR   the address to listen on, overriding the file's `listen`
  --call ADDR     be a client: check grpc.health.v1, then call SayHello;
                  exits 1 if a call fails
  --name NAME     who SayHello greets (default world)
  --sleep-ms MS   make the server sleep before answering (see the timeout)
  --fail          make the server answer INTERNAL (see the breaker open)
  -h, --help      print this help and exit";

/// The arguments; `--help` prints the usage on stdout and exits 0.
fn parse_args() -> Result<Mode, String> {
    let mut config = "examples/configs/production.toml".to_owned();
    let mut listen = None;
    let mut call = None;
    let mut request = HelloRequest {
        name: "world".to_owned(),
        ..HelloRequest::default()
    };
    let mut it = std::env::args().skip(1);
    while let Some(arg) = it.next() {
        let mut value = |what: &str| it.next().ok_or(format!("{arg} needs {what}"));
        match arg.as_str() {
            "--config" => config = value("a path")?,
            "--listen" => listen = Some(value("an address")?),
            "--call" => {
                let addr = value("an address")?;
                call = Some(
                    addr.parse()
                        .map_err(|_| format!("--call: bad address `{addr}`"))?,
                );
            }
            "--name" => request.name = value("a name")?,
            "--sleep-ms" => {
                request.sleep_ms = value("milliseconds")?
                    .parse()
                    .map_err(|_| "--sleep-ms: not a number")?;
            }
            "--fail" => request.fail = true,
            "-h" | "--help" => {
                let mut out = std::io::stdout().lock();
                let _ = writeln!(out, "{USAGE}");
                let _ = out.flush();
                std::process::exit(0);
            }
            _ => return Err(format!("unknown argument `{arg}`\n{USAGE}")),
        }
    }
    Ok(match call {
        Some(addr) => Mode::Call { addr, request },
        None => Mode::Serve { config, listen },
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let mode = match parse_args() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match mode {
        Mode::Call { addr, request } => call(addr, request).await,
        Mode::Serve { config, listen } => {
            let mut c = match RampartConfig::load(&config) {
                Ok(c) => c,
                Err(errors) => {
                    eprintln!("{config}: {errors}");
                    return ExitCode::from(2);
                }
            };
            if let Some(listen) = listen {
                c.listen = listen;
                if let Err(errors) = c.validate() {
                    eprintln!("--listen: {errors}");
                    return ExitCode::from(2);
                }
            }
            serve(c).await
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn serve(config: RampartConfig) -> Result<(), Box<dyn std::error::Error>> {
    let stack = config.stack().build()?;
    // grpc.health.v1: "" answers what /readyz answers; demo.Greeter too (no
    // checks of its own); everything NOT_SERVING once shutdown starts. The
    // stack serves it outside the protections (`platform.grpc_health`).
    let health = stack
        .grpc_health()
        .service(Greeter::NAME, Vec::<String>::new())
        .build()?;

    let listener = tokio::net::TcpListener::bind(config.listen_addr()).await?;
    let addr = listener.local_addr()?;
    tracing::info!(%addr, "listening");
    {
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "rampart-listening {addr}");
        let _ = out.flush();
    }
    let routes = tonic::service::Routes::new(health).add_service(Greeter);
    // HTTP/1.1 and h2c on one port (Kubernetes' httpGet probes reach the
    // stack too); the peer address reaches the rate limit with no extra code.
    let app = tower::ServiceBuilder::new()
        .layer(stack.layer())
        .service(routes);
    let report = config
        .server()?
        .serve(listener, app, stack.shutdown())
        .await;
    tracing::info!(
        trigger = %report.trigger,
        finished = report.finished,
        aborted = report.aborted,
        "stopped"
    );
    let line = serde_json::json!({
        "trigger": report.trigger.to_string(),
        "delay_ms": report.delay.as_millis() as u64,
        "drain_ms": report.drain.as_millis() as u64,
        "in_flight_at_drain": report.in_flight_at_drain,
        "finished": report.finished,
        "aborted": report.aborted,
        "left_in_flight": report.left_in_flight,
        "drain_timed_out": report.drain_timed_out,
        "greeted": GREETED.load(Ordering::Relaxed),
    });
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "rampart-shutdown-report {line}");
    let _ = out.flush();
    Ok(())
}

async fn call(addr: SocketAddr, request: HelloRequest) -> Result<(), Box<dyn std::error::Error>> {
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))?
        .connect()
        .await?;

    let mut health = HealthClient::new(channel.clone());
    for service in ["", Greeter::NAME] {
        let status = health
            .check(HealthCheckRequest {
                service: service.to_owned(),
            })
            .await?
            .into_inner()
            .status();
        println!("health {:?}: {}", service, status.as_str_name());
    }

    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await?;
    let mut req = tonic::Request::new(request);
    req.set_timeout(Duration::from_secs(30));
    let reply = grpc
        .unary(
            req,
            http::uri::PathAndQuery::from_static(SAY_HELLO),
            ProstCodec::<HelloRequest, HelloReply>::default(),
        )
        .await;
    match reply {
        Ok(reply) => {
            println!("SayHello: {}", reply.into_inner().message);
            Ok(())
        }
        Err(status) => {
            println!("SayHello: {:?}: {}", status.code(), status.message());
            // A failed call is a failed run: scripts and CI see exit 1.
            Err(format!("SayHello failed: {:?}", status.code()).into())
        }
    }
}
