//! A real tonic server behind the concurrency limit, called by a tonic
//! client: a call over the limit fails with `UNAVAILABLE` (what gRPC
//! clients retry elsewhere), and the next one after the load is served.
#![cfg(feature = "tonic")]

use std::net::SocketAddr;
use std::time::Duration;

use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::pb::{HealthCheckRequest, HealthCheckResponse};
use tower_rampart::concurrency::ConcurrencyLimitLayer;

use crate::common;

/// A health service whose every check takes 300 ms.
struct SlowHealth;

#[tonic::async_trait]
impl Health for SlowHealth {
    async fn check(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<HealthCheckResponse>, tonic::Status> {
        tokio::time::sleep(Duration::from_millis(300)).await;
        Ok(tonic::Response::new(HealthCheckResponse {
            status: ServingStatus::Serving as i32,
        }))
    }

    type WatchStream =
        tonic::codegen::tokio_stream::Empty<Result<HealthCheckResponse, tonic::Status>>;

    async fn watch(
        &self,
        _: tonic::Request<HealthCheckRequest>,
    ) -> Result<tonic::Response<Self::WatchStream>, tonic::Status> {
        Ok(tonic::Response::new(tonic::codegen::tokio_stream::empty()))
    }
}

async fn serve(layer: ConcurrencyLimitLayer) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    let server = tonic::transport::Server::builder()
        .layer(layer)
        .add_service(HealthServer::new(SlowHealth))
        .serve_with_incoming(incoming);
    tokio::spawn(async move { server.await.unwrap() });
    addr
}

fn check() -> tonic::Request<HealthCheckRequest> {
    tonic::Request::new(HealthCheckRequest {
        service: String::new(),
    })
}

#[tokio::test]
async fn over_the_limit_a_grpc_client_gets_unavailable() {
    let layer = ConcurrencyLimitLayer::fixed(1);
    let addr = serve(layer.clone()).await;
    let mut client = HealthClient::new(common::grpc_channel(addr).await);
    let mut busy = client.clone();
    let first = tokio::spawn(async move { busy.check(check()).await });
    // Wait until the first call holds the slot.
    for _ in 0..100 {
        if layer.in_flight() == 1 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(layer.in_flight(), 1);
    let status = client.check(check()).await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::Unavailable);
    assert_eq!(
        status.metadata().get("grpc-retry-pushback-ms").unwrap(),
        "1000"
    );
    let served = first.await.unwrap().unwrap();
    assert_eq!(served.get_ref().status, ServingStatus::Serving as i32);
    // The load is gone: served again.
    assert!(client.check(check()).await.is_ok());
    assert_eq!(layer.in_flight(), 0);
}
