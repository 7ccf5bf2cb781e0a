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
    // Draining: stop new handshakes (`stop_handshakes`), take what the
    // kernel already accepted, then close the listener: from now on
    // connecting is refused, never reset. tokio's `accept` would trust the
    // readiness its reactor last saw and miss connections queued since; the
    // std listener asks the kernel each time.
    let mut backlog = 0u64;
    match listener.into_std() {
        Ok(std_listener) => {
            if stop_handshakes(&std_listener) {
                // Handshakes already under way still complete (their last
                // ACK passes the filter): give them a moment to reach the
                // backlog before it is taken.
                tokio::time::sleep(HANDSHAKE_GRACE).await;
            }
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

/// How long handshakes already under way get to complete once new ones are
/// no longer answered: a round trip inside a data centre, with room.
const HANDSHAKE_GRACE: Duration = Duration::from_millis(50);

/// Stops the kernel from starting new handshakes on `listener`: a socket
/// filter drops connection requests (a SYN without ACK) and lets everything
/// else through. The kernel completes handshakes on a listener's behalf, so
/// without it a client connecting between the last `accept` and the close
/// lands in the backlog and the close resets it, after it may have sent its
/// request; with it, that client gets no answer, retries its SYN (after a
/// second) and finds the port closed: a refusal, which every client may
/// retry. Linux only; elsewhere the close keeps its few-system-call window.
#[cfg(any(target_os = "linux", target_os = "android"))]
fn stop_handshakes(listener: &std::net::TcpListener) -> bool {
    use socket2::{SockFilter, SockRef};
    // Classic BPF over the TCP header (where a TCP socket's filter starts).
    const LD_B_ABS: u16 = 0x30; // A = byte at k
    const AND_K: u16 = 0x54; // A &= k
    const JEQ_K: u16 = 0x15; // A == k ? jt : jf
    const RET_K: u16 = 0x06; // keep k bytes (0: drop)
    const FLAGS: u32 = 13; // the flags byte
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    let program = [
        SockFilter::new(LD_B_ABS, 0, 0, FLAGS),
        SockFilter::new(AND_K, 0, 0, SYN | ACK),
        SockFilter::new(JEQ_K, 0, 1, SYN),
        SockFilter::new(RET_K, 0, 0, 0),
        SockFilter::new(RET_K, 0, 0, u32::MAX),
    ];
    match SockRef::from(listener).attach_filter(&program) {
        Ok(()) => true,
        Err(e) => {
            tracing::debug!(target: "tower_rampart::serve", error = %e, "no SYN filter on the listener");
            false
        }
    }
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn stop_handshakes(_: &std::net::TcpListener) -> bool {
    false
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

#[cfg(all(test, any(target_os = "linux", target_os = "android")))]
mod tests {
    use std::io::ErrorKind;
    use std::net::{TcpListener, TcpStream};
    use std::time::Duration;

    use super::stop_handshakes;

    /// With the filter on, a connection already in the backlog is still
    /// taken, and a new one is not completed by the kernel (its SYN gets no
    /// answer); once the listener closes, connecting is refused.
    #[test]
    fn the_filter_keeps_the_backlog_and_answers_no_new_handshake() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let queued = TcpStream::connect(addr).unwrap();

        assert!(stop_handshakes(&listener));
        let late = TcpStream::connect_timeout(&addr, Duration::from_millis(300));
        let err = late.expect_err("a handshake was completed after the filter");
        assert_eq!(err.kind(), ErrorKind::TimedOut, "{err}");

        let (taken, _) = listener.accept().expect("the queued connection");
        assert_eq!(taken.peer_addr().unwrap(), queued.local_addr().unwrap());
        assert_eq!(
            listener.accept().map(|_| ()).unwrap_err().kind(),
            ErrorKind::WouldBlock
        );
        drop(listener);
        let err = TcpStream::connect(addr).expect_err("the port is closed");
        assert_eq!(err.kind(), ErrorKind::ConnectionRefused, "{err}");
    }
}
