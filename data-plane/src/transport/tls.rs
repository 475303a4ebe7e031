//! TLS for client connections: rustls's server settings (the ring provider, as the rest of the
//! workspace; ALPN `h2` then `http/1.1`; the certificate from the resolver it is handed, so it
//! knows no config) and the handshake under a deadline.

use std::io;
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::server::{ResolvesServerCert, ServerSessionMemoryCache};
use tokio::net::TcpStream;
use tokio_rustls::TlsAcceptor;

use super::deadline;

pub use tokio_rustls::server::TlsStream;

/// A client that has not finished its handshake within this time is cut off.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Sessions kept for resumption (TLS 1.2 ids, TLS 1.3 tickets of the stateful kind).
const SESSION_CACHE: usize = 4096;

/// A request extension: the request came over TLS. Plugins read it (`redirect`'s
/// `http_to_https`), and the hop sets `X-Forwarded-Proto: https` from it. A plaintext request
/// carries no extension at all, so it costs that path nothing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tls;

/// The server settings of a TLS listener whose certificates `resolver` picks per handshake.
pub fn server_config(resolver: Arc<dyn ResolvesServerCert>) -> Arc<ServerConfig> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        // ring implements every default version: a failure would be a build without them.
        .expect("the ring provider supports TLS 1.2 and 1.3")
        .with_no_client_auth()
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    config.session_storage = ServerSessionMemoryCache::new(SESSION_CACHE);
    Arc::new(config)
}

/// Runs the server side of a handshake on `stream`, within [`HANDSHAKE_TIMEOUT`].
pub async fn accept(
    config: &Arc<ServerConfig>,
    stream: TcpStream,
) -> io::Result<TlsStream<TcpStream>> {
    let acceptor = TlsAcceptor::from(Arc::clone(config));
    match deadline::within(deadline::after(HANDSHAKE_TIMEOUT), acceptor.accept(stream)).await {
        Ok(result) => result,
        Err(deadline::Elapsed) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the TLS handshake did not finish in time",
        )),
    }
}
