//! The accept loop: takes connections until draining starts (pausing at
//! `max_connections`), answers the listen backlog, closes the listener and
//! waits for the connections it accepted.

use std::io;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use tokio::sync::Semaphore;
use tokio::time::Instant;
use tower::{BoxError, Service};

use super::conn::{self, Hold};
use super::state::{Metrics, Shared, builder};
use super::{AtMaxConnections, Serve};
use crate::shutdown::ShutdownReport;

/// Accept errors that concern one connection only.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
    )
}

pub(super) async fn run<S, B>(serve: Serve<S>) -> ShutdownReport
where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let Serve {
        server,
        listener,
        service,
        shutdown,
    } = serve;
    let config = server.config;
    let shared = Arc::new(Shared {
        builder: builder(&config),
        metrics: Metrics::new(&config.name),
        state: Arc::clone(shutdown.state()),
        shutdown: shutdown.clone(),
        drain_started: OnceLock::new(),
        config,
    });
    let name = shared.config.name.as_str();
    let addr = listener.local_addr().ok();
    // The drain waits for the listener too, so the connections taken from
    // its backlog are counted before the coordinator looks.
    let listener_hold = Hold::listener(&shared);
    let limit = shared
        .config
        .max_connections
        .map(|max| Arc::new(Semaphore::new(max)));
    let draining = shutdown.draining();
    tokio::pin!(draining);

    'accept: loop {
        let mut permit = None;
        if let Some(limit) = &limit {
            if shared.config.at_max_connections == AtMaxConnections::Pause {
                if limit.available_permits() == 0 {
                    shared.metrics.paused.increment(1);
                    tracing::warn!(
                        target: "tower_rampart::serve",
                        name,
                        max = shared.config.max_connections,
                        "max connections reached: accepting paused"
                    );
                }
                tokio::select! {
                    biased;
                    () = &mut draining => break 'accept,
                    p = Arc::clone(limit).acquire_owned() => {
                        permit = Some(p.expect("the semaphore is never closed"));
                    }
                }
            }
        }
        let (stream, peer) = tokio::select! {
            biased;
            () = &mut draining => break 'accept,
            res = listener.accept() => match res {
                Ok(accepted) => accepted,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors, say: back off, keep serving
                    // what is open.
                    tracing::warn!(target: "tower_rampart::serve", name, error = %e, "accept failed");
                    tokio::select! {
                        () = &mut draining => break 'accept,
                        () = tokio::time::sleep(Duration::from_millis(100)) => continue,
                    }
                }
            },
        };
        if permit.is_none() {
            if let Some(limit) = &limit {
                match Arc::clone(limit).try_acquire_owned() {
                    Ok(p) => permit = Some(p),
                    Err(_) => {
                        shared.metrics.refused.increment(1);
                        drop(stream);
                        continue;
                    }
                }
            }
        }
        spawn(&shared, permit, stream, peer, &service);
    }

    shared.drain_started.get_or_init(Instant::now);
    // Draining: take what the kernel already accepted, then close the
    // listener: from now on connecting is refused, never left hanging.
    // tokio's `accept` would trust the readiness its reactor last saw and
    // miss connections queued since; the std listener asks the kernel each
    // time, so the window between the last accept and the close is a few
    // system calls.
    let mut backlog = 0u64;
    match listener.into_std() {
        Ok(std_listener) => {
            loop {
                match std_listener.accept() {
                    Ok((stream, peer)) => {
                        let stream = stream
                            .set_nonblocking(true)
                            .and_then(|()| tokio::net::TcpStream::from_std(stream));
                        if let Ok(stream) = stream {
                            backlog += 1;
                            // Owed an answer: served even above max_connections.
                            spawn(&shared, None, stream, peer, &service);
                        }
                    }
                    Err(e) if is_connection_error(&e) => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // WouldBlock: the backlog is empty.
                    Err(_) => break,
                }
            }
            drop(std_listener);
        }
        Err(e) => {
            tracing::warn!(target: "tower_rampart::serve", name, error = %e, "accept failed");
        }
    }
    shared.metrics.backlog.increment(backlog);
    tracing::info!(
        target: "tower_rampart::serve",
        name,
        addr = ?addr,
        backlog,
        "listener closed"
    );
    drop(listener_hold);
    shutdown.done().await
}

fn spawn<S, B>(
    shared: &Arc<Shared>,
    permit: Option<tokio::sync::OwnedSemaphorePermit>,
    stream: tokio::net::TcpStream,
    peer: SocketAddr,
    service: &S,
) where
    S: Service<Request<Incoming>, Response = Response<B>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    shared.metrics.accepted.increment(1);
    let hold = Hold::connection(shared, permit);
    tokio::spawn(conn::serve_connection(
        Arc::clone(shared),
        hold,
        stream,
        peer,
        service.clone(),
    ));
}
