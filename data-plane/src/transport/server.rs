//! The accept loop shared by the proxy and status listeners, with graceful shutdown, and
//! hyper's server: HTTP/1.1 with keep-alive and HTTP/2 with prior knowledge (h2c) on one port.

use std::convert::Infallible;
use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use http::{Request, Response};
use http_body::Body;
use hyper::body::Incoming;
use hyper::service::Service;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use std::sync::LazyLock;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

/// A client that has not sent its request headers within this time is cut off, so idle or
/// slow-loris connections cannot pile up.
pub const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to pause accepting after an accept error: most are resource exhaustion (too many
/// open files), which spinning on `accept` would only make worse.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Tells a connection when the listener shuts down, and keeps the listener's drain waiting
/// until the connection's task drops it.
#[derive(Clone, Debug)]
pub struct Stop {
    requested: watch::Receiver<bool>,
    _alive: mpsc::Sender<()>,
}

impl Stop {
    /// Completes once shutdown is requested.
    pub async fn requested(&mut self) {
        // A dropped sender also means the listener is gone.
        let _ = self.requested.wait_for(|stop| *stop).await;
    }

    /// Completes once shutdown is requested, owning its receiver: a future that can be kept
    /// and polled across many waits, so its waiter is registered once.
    pub async fn into_requested(mut self) {
        self.requested().await;
    }

    /// Whether shutdown has been requested. Asked after every request a connection serves:
    /// while nothing was sent on the channel this is one atomic load of its version, where
    /// reading the value takes the channel's lock.
    pub fn is_requested(&self) -> bool {
        match self.requested.has_changed() {
            Ok(false) => false,
            // Sent since this receiver was made, or the listener is gone.
            Ok(true) | Err(_) => *self.requested.borrow(),
        }
    }
}

/// Serves connections from `listener` until `shutdown` completes, then stops accepting and
/// waits for every open connection to finish its in-flight requests.
///
/// `connection` runs one accepted connection to its end; it is spawned with the client's
/// address and a [`Stop`] to watch.
pub async fn serve<F, C>(
    name: &'static str,
    listener: TcpListener,
    connection: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(TcpStream, SocketAddr, Stop) -> C,
    C: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let (alive_tx, mut alive_rx) = mpsc::channel::<()>(1);
    let mut shutdown = std::pin::pin!(shutdown);
    loop {
        let (stream, remote) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    warn!(listener = name, %error, "accept failed");
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        // Small responses must not wait for Nagle's algorithm.
        if let Err(error) = stream.set_nodelay(true) {
            debug!(listener = name, %error, "set_nodelay failed");
        }
        let stop = Stop {
            requested: stop_rx.clone(),
            _alive: alive_tx.clone(),
        };
        tokio::spawn(connection(stream, remote, stop));
    }

    drop(listener);
    info!(listener = name, "draining connections");
    let _ = stop_tx.send(true);
    drop(alive_tx);
    // Every connection task holds a sender: `None` once the last one has ended.
    let _ = alive_rx.recv().await;
    info!(listener = name, "stopped");
}

/// hyper's server settings, shared by every connection it serves.
static HYPER: LazyLock<auto::Builder<TokioExecutor>> = LazyLock::new(|| {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());
    builder
});

/// Serves one connection with hyper: HTTP/1.1 with keep-alive, or HTTP/2 with prior knowledge
/// (h2c), until the client is done or `stop` asks for a graceful end.
pub async fn serve_hyper<I, S, B>(io: I, service: S, remote: SocketAddr, mut stop: Stop)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    // With upgrades: a WebSocket handshake's 101 hands the connection to the proxy's tunnel.
    let connection = HYPER.serve_connection_with_upgrades(TokioIo::new(io), service);
    let mut connection = std::pin::pin!(connection);
    let result = tokio::select! {
        result = connection.as_mut() => result,
        () = stop.requested() => {
            connection.as_mut().graceful_shutdown();
            connection.await
        }
    };
    if let Err(error) = result {
        debug!(%remote, %error, "connection ended with an error");
    }
}
