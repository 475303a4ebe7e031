//! The upstream client: one shared connection pool, with per-request connect and read
//! deadlines.

use std::pin::pin;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{HttpConnector, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use crate::error::{ProxyError, TimeoutPhase};

/// An idle pooled connection is closed after this long. Most servers close idle keep-alive
/// connections sooner (nginx: 75 s); a longer timeout here would only meet closed sockets.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// TCP keep-alive probes on upstream connections, so a pooled connection to a vanished host is
/// noticed by the kernel rather than by the next request.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);

/// Sends requests to upstream nodes over one pool shared by every upstream and every config
/// version (connections are keyed by node address, so a snapshot swap keeps them warm).
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Incoming>,
}

impl Default for UpstreamClient {
    fn default() -> Self {
        UpstreamClient::new()
    }
}

impl UpstreamClient {
    /// Builds the client and its (empty) pool.
    pub fn new() -> UpstreamClient {
        let mut connector = HttpConnector::new();
        connector.set_nodelay(true);
        connector.set_keepalive(Some(TCP_KEEPALIVE));
        // No connector-wide connect timeout: each upstream has its own, enforced in `send`.
        let client = Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .build(connector);
        UpstreamClient { client }
    }

    /// Sends `request` (its URI names the node) and waits for the response headers; the body
    /// is streamed afterwards by whoever polls it.
    ///
    /// Two deadlines apply, because the connector's own timeout is one value for the whole
    /// pool: establishing the connection (or taking one from the pool, which is immediate) must
    /// finish within `connect_timeout`, and from then on the response headers must arrive
    /// within `read_timeout`. A connection failure is reported by the client itself
    /// (`is_connect`), which tells "refused" (502) apart from "too slow" (504).
    pub async fn send(
        &self,
        mut request: Request<Incoming>,
        node: &str,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut connection = capture_connection(&mut request);
        let mut response = pin!(self.client.request(request));
        tokio::select! {
            // Poll the exchange first: when it is already done, its own result is the truth.
            biased;
            result = &mut response => {
                return result.map_err(|e| ProxyError::from_upstream(node, e));
            }
            _ = connection.wait_for_connection_metadata() => {}
            () = tokio::time::sleep(connect_timeout) => {
                return Err(ProxyError::UpstreamTimeout {
                    node: node.to_owned(),
                    phase: TimeoutPhase::Connect,
                    after: connect_timeout,
                });
            }
        }
        match tokio::time::timeout(read_timeout, response).await {
            Ok(result) => result.map_err(|e| ProxyError::from_upstream(node, e)),
            Err(_) => Err(ProxyError::UpstreamTimeout {
                node: node.to_owned(),
                phase: TimeoutPhase::ResponseHeaders,
                after: read_timeout,
            }),
        }
    }
}
