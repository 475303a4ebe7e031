//! The TLS listener (`--tls-listen`): each connection's handshake, with the certificate the
//! installed runtime picks by SNI, then the same request path as the plaintext listener
//! ([`super::downstream::serve_stream`]; HTTP/2 by ALPN goes on to hyper's server).
//!
//! The certificate is looked up in the runtime installed when the handshake reads the
//! client's hello: a certificate replaced by a new config version is served from the next
//! handshake on, without a restart, and a handshake in flight keeps the one it was given.

use std::future::Future;
use std::sync::Arc;

use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use tokio::net::TcpListener;
use tracing::debug;

use super::{Proxy, downstream};
use crate::state::State;
use crate::transport::tls;

/// Picks a handshake's certificate from the runtime being served.
#[derive(Debug)]
pub struct Resolver {
    state: Arc<State>,
}

impl Resolver {
    /// A resolver reading `state`'s runtime on every handshake.
    pub fn new(state: Arc<State>) -> Resolver {
        Resolver { state }
    }
}

impl ResolvesServerCert for Resolver {
    fn resolve(&self, hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        self.state
            .runtime()
            .certificates
            .resolve(hello.server_name())
    }
}

/// Serves TLS client traffic from `listener` until `shutdown` completes, then lets in-flight
/// requests finish.
pub async fn serve_tls(listener: TcpListener, proxy: Proxy, shutdown: impl Future<Output = ()>) {
    let config = tls::server_config(Arc::new(Resolver::new(Arc::clone(&proxy.state))));
    let proxy = Arc::new(proxy);
    let connection = move |stream, remote, stop| {
        let proxy = Arc::clone(&proxy);
        let config = Arc::clone(&config);
        async move {
            match tls::accept(&config, stream).await {
                Ok(stream) => downstream::serve_stream(proxy, stream, remote, stop, true).await,
                Err(error) => {
                    proxy.state.metrics.record_tls_handshake_failure();
                    debug!(%remote, %error, "TLS handshake failed");
                }
            }
        }
    };
    crate::transport::server::serve("tls", listener, connection, shutdown).await;
}
