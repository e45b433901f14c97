//! Serving a router on a listener within bounds, so that clients without a token cannot exhaust
//! keyhole: at most `max_connections` at once (beyond that, keyhole stops accepting and new
//! connections wait in the kernel's backlog), a request head read within `header_read_timeout`,
//! and a connection that neither sends nor reads for `idle_timeout` closed.
//!
//! Written over hyper's connection builder rather than `axum::serve`, which has no connection cap
//! and no timeouts: a client that sends half a request head would otherwise hold a connection and
//! a file descriptor for ever.

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_io_timeout::TimeoutStream;
use tokio_util::sync::CancellationToken;

/// How long connections still open at shutdown get to finish their request.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// The bounds of one listener.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bounds {
    /// Connections served at once.
    pub max_connections: usize,
    /// Time to read a request head, from the first byte awaited.
    pub header_read_timeout: Duration,
    /// Time a connection may go without reading or writing a byte.
    pub idle_timeout: Duration,
}

/// Serves `router` on `listener` within `bounds` until `shutdown` completes; then stops
/// accepting, lets open connections finish their request for up to [`SHUTDOWN_GRACE`], and
/// closes the rest.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    bounds: Bounds,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(bounds.max_connections.max(1)));
    let stopping = CancellationToken::new();
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // A slot first, then the connection: at the cap keyhole does not accept at all, so a
        // flood costs the kernel's backlog rather than keyhole's file descriptors and memory.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            slot = slots.clone().acquire_owned() => match slot {
                Ok(slot) => slot,
                Err(_) => break,
            },
        };
        let accepted = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _)) => stream,
            // Out of file descriptors, or a connection reset before it was accepted: wait a
            // little rather than spin, and go on serving the connections already open.
            Err(error) => {
                tracing::warn!(%error, "Cannot accept a connection.");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let mut stream = TimeoutStream::new(stream);
        stream.set_read_timeout(Some(bounds.idle_timeout));
        stream.set_write_timeout(Some(bounds.idle_timeout));
        let service = TowerToHyperService::new(router.clone());
        let stopping = stopping.clone();
        connections.spawn(async move {
            let _slot = slot;
            let mut http = hyper::server::conn::http1::Builder::new();
            http.timer(TokioTimer::new()).header_read_timeout(bounds.header_read_timeout);
            let connection = http.serve_connection(TokioIo::new(Box::pin(stream)), service);
            tokio::pin!(connection);
            // Errors are the client's doing (a timeout, a reset, a malformed head): nothing to
            // report but the closed connection.
            tokio::select! {
                _ = connection.as_mut() => {}
                () = stopping.cancelled() => {
                    connection.as_mut().graceful_shutdown();
                    let _ = connection.await;
                }
            }
        });
    }
    drop(listener);
    stopping.cancel();
    let _ = tokio::time::timeout(SHUTDOWN_GRACE, async { while connections.join_next().await.is_some() {} })
        .await;
    connections.shutdown().await;
    Ok(())
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::*;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const BOUNDS: Bounds = Bounds {
        max_connections: 2,
        header_read_timeout: Duration::from_millis(300),
        idle_timeout: Duration::from_millis(600),
    };

    /// Serves a one-route router within [`BOUNDS`]; its address and the stop signal.
    async fn served() -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let router = Router::new().route("/", get(|| async { "ok" })).route(
            "/upload",
            axum::routing::post(|body: axum::body::Bytes| async move { body.len().to_string() }),
        );
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, router, BOUNDS, async {
            let _ = stopped.await;
        }));
        (address, stop)
    }

    /// Reads until the server closes the connection or `within` passes; whether it closed and
    /// what it sent.
    async fn read_to_close(stream: &mut TcpStream, within: Duration) -> (bool, String) {
        let mut got = Vec::new();
        let closed = tokio::time::timeout(within, async {
            let mut buffer = [0u8; 1024];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => got.extend_from_slice(&buffer[..n]),
                }
            }
        })
        .await
        .is_ok();
        (closed, String::from_utf8_lossy(&got).into_owned())
    }

    #[tokio::test]
    async fn a_half_sent_request_head_is_closed_after_the_header_read_timeout() {
        let (address, _stop) = served().await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n").await.unwrap();
        let started = std::time::Instant::now();
        let (closed, _) = read_to_close(&mut stream, Duration::from_secs(5)).await;
        assert!(closed, "still open after 5 s");
        assert!(started.elapsed() >= Duration::from_millis(250), "closed before the timeout");
    }

    #[tokio::test]
    async fn a_body_that_stops_coming_is_closed_after_the_idle_timeout() {
        let (address, _stop) = served().await;
        let mut stream = TcpStream::connect(address).await.unwrap();
        stream
            .write_all(b"POST /upload HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n0123456789")
            .await
            .unwrap();
        let (closed, _) = read_to_close(&mut stream, Duration::from_secs(5)).await;
        assert!(closed, "a stalled body kept its connection for 5 s");
    }

    #[tokio::test]
    async fn beyond_the_cap_connections_wait_until_a_slot_frees() {
        let (address, _stop) = served().await;
        // Two connections take both slots with half a head each.
        let mut holders = Vec::new();
        for _ in 0..2 {
            let mut stream = TcpStream::connect(address).await.unwrap();
            stream.write_all(b"GET / HTTP/1.1\r\n").await.unwrap();
            holders.push(stream);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        // A third, complete request is not served while they hold them...
        let mut third = TcpStream::connect(address).await.unwrap();
        third.write_all(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").await.unwrap();
        let (closed, answer) = read_to_close(&mut third, Duration::from_millis(150)).await;
        assert!(!closed && answer.is_empty(), "served beyond the cap: {answer:?}");
        // ...and is once the header-read timeout has closed them.
        let (closed, answer) = read_to_close(&mut third, Duration::from_secs(5)).await;
        assert!(closed && answer.starts_with("HTTP/1.1 200"), "{answer:?}");
        drop(holders);
    }
}
