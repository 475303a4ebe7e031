//! The accept loop shared by the proxy and status listeners: HTTP/1.1 with keep-alive and
//! HTTP/2 with prior knowledge (h2c) on one port, and graceful shutdown.

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
use hyper_util::server::graceful::GracefulShutdown;
use tokio::net::TcpListener;
use tracing::{debug, info, warn};

/// A client that has not sent its request headers within this time is cut off, so idle or
/// slow-loris connections cannot pile up.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// How long to pause accepting after an accept error: most are resource exhaustion (too many
/// open files), which spinning on `accept` would only make worse.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// Serves connections from `listener` until `shutdown` completes, then stops accepting and
/// waits for every open connection to finish its in-flight requests.
///
/// `make_service` is called once per connection with the client's address.
pub async fn serve<F, S, B>(
    name: &'static str,
    listener: TcpListener,
    make_service: F,
    shutdown: impl Future<Output = ()>,
) where
    F: Fn(SocketAddr) -> S,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
    B: Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn StdError + Send + Sync>>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .keep_alive(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_READ_TIMEOUT);
    builder.http2().timer(TokioTimer::new());

    let graceful = GracefulShutdown::new();
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
        // With upgrades: a WebSocket handshake's 101 hands the connection to the proxy's tunnel.
        let connection = builder
            .serve_connection_with_upgrades(TokioIo::new(stream), make_service(remote))
            .into_owned();
        let connection = graceful.watch(connection);
        tokio::spawn(async move {
            if let Err(error) = connection.await {
                debug!(listener = name, %remote, %error, "connection ended with an error");
            }
        });
    }

    drop(listener);
    info!(
        listener = name,
        connections = graceful.count(),
        "draining connections"
    );
    graceful.shutdown().await;
    info!(listener = name, "stopped");
}
