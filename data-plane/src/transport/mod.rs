//! The transport: HTTP/1.1 and HTTP/2 on the wire, below everything that knows what a request
//! is for.
//!
//! - [`h1`]: the plain HTTP/1.1 upstream client that runs in the request's task (codec,
//!   exchange, pool, body).
//! - [`client`]: [`client::UpstreamClient`], which picks [`h1`] or hyper's pooled clients (TLS
//!   with ALPN, h2c, upgrades) per transport settings, and enforces the connect and read
//!   deadlines.
//! - [`body`]: the request and response bodies that cross it.
//! - [`headers`]: hop-by-hop rules and the headers a hop sets.
//! - [`server`]: the accept loop with graceful drain, and hyper's server for what the proxy's
//!   own HTTP/1.1 loop hands over.
//! - [`query`]: query-component decoding.
//! - [`deadline`]: every time limit, as an instant armed on tokio's timer.
//! - [`tls`]: rustls's server settings for client connections and the handshake.
//!
//! It knows no route, plugin or balancer: it is handed a node's address and pool, deadlines,
//! and a [`Hold`] to keep until a response body ends (a node's in-flight count, to the caller).

pub mod body;
pub mod client;
pub mod deadline;
pub mod h1;
pub mod headers;
pub mod query;
pub mod server;
pub mod tls;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use http::Method;

/// Work counted while a response body is read (a node's in-flight requests): released once,
/// when the [`Hold`] on it is dropped.
pub trait Release: Send + Sync + fmt::Debug {
    /// The exchange this was held for is over.
    fn release(&self);
}

/// Keeps a [`Release`] counted until dropped. It travels with the response body, which
/// outlives the exchange that started it (for [`h1`], inside the pooled connection, and is
/// dropped before the connection goes back to the pool).
#[derive(Debug)]
pub struct Hold(Arc<dyn Release>);

impl Hold {
    /// Holds `counted`; its count must already include this exchange.
    pub fn new(counted: Arc<dyn Release>) -> Hold {
        Hold(counted)
    }
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.0.release();
    }
}

/// TCP keep-alive probes on upstream connections (both clients'), so a pooled connection to a
/// vanished host is noticed by the kernel rather than by the next request.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Methods that RFC 9110 §9.2.2 defines as idempotent.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE | Method::PUT | Method::DELETE
    )
}
