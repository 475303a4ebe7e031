//! The upstream client: pooled transports (plain HTTP/1.1, h2c, or TLS with ALPN), with
//! per-request connect and read deadlines.
//!
//! Plain HTTP/1.1 exchanges run on [`super::h1`], whose idle connections live with each node.
//! TLS, h2c and upgrades (WebSocket) run on hyper's pooled client: one [`UpstreamClient`]
//! serves every upstream with the same transport settings (scheme, TLS, keep-alive pool),
//! connections are keyed by node address inside it, and the runtime compiler hands the same
//! client to the next snapshot's upstreams, so a config push keeps connections warm.

use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryFutureExt as _;
use futures_util::future;
use gateway_proto::model::{KeepalivePool, PassHost, Scheme, Upstream, UpstreamTls};
use http::header::UPGRADE;
use http::{Request, Response};
use http_body_util::Either;
use hyper::body::Incoming;
use hyper_rustls::{
    ConfigBuilderExt as _, FixedServerNameResolver, HttpsConnector, HttpsConnectorBuilder,
};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::{HttpConnector, capture_connection};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use rustls::pki_types::ServerName;

use super::body::{HyperBody, UpstreamBody, UpstreamResponseBody};
use super::headers::HopHeaders;
use super::{TCP_KEEPALIVE, h1};
use crate::error::{ProxyError, TimeoutPhase};
use crate::transport::deadline;

/// The transport settings that decide which client an upstream uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransportKey {
    scheme: Scheme,
    tls: UpstreamTls,
    /// The server name for SNI and verification when it is fixed by config.
    server_name: Option<String>,
    pool: KeepalivePool,
}

impl TransportKey {
    /// The transport an upstream definition asks for.
    pub fn of(spec: &Upstream) -> TransportKey {
        let tls = spec.tls.clone().unwrap_or_default();
        let server_name = match (spec.scheme, &tls.sni, spec.pass_host) {
            (Scheme::Https, Some(sni), _) => Some(sni.clone()),
            // The Host sent upstream is fixed: it is the name the node serves.
            (Scheme::Https, None, PassHost::Rewrite) => spec.upstream_host.clone(),
            _ => None,
        };
        TransportKey {
            scheme: spec.scheme,
            tls,
            server_name,
            pool: spec.keepalive_pool.unwrap_or_default(),
        }
    }
}

#[derive(Clone, Debug)]
enum Inner {
    /// `scheme: http`: [`h1`] within these pool limits; hyper's client for upgrades.
    Http1 {
        limits: h1::PoolLimits,
        upgrades: Client<HttpConnector, UpstreamBody>,
    },
    /// `scheme: h2c`.
    Plain(Client<HttpConnector, UpstreamBody>),
    /// `scheme: https`, HTTP/1.1 or HTTP/2 by ALPN; upgrades over HTTP/1.1 only, since an
    /// HTTP/2 connection cannot carry a `Connection: upgrade` handshake.
    Tls(Box<TlsClients>),
}

/// `scheme: https`'s two clients.
#[derive(Clone, Debug)]
struct TlsClients {
    /// HTTP/1.1 or HTTP/2 by ALPN.
    client: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
    /// HTTP/1.1 only, for upgrades.
    upgrades: Client<HttpsConnector<HttpConnector>, UpstreamBody>,
}

/// Sends requests to upstream nodes over one pool.
#[derive(Clone, Debug)]
pub struct UpstreamClient {
    inner: Inner,
}

/// Why a transport could not be built.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct TransportError(String);

impl UpstreamClient {
    /// The pool limits of the in-task HTTP/1.1 client, when that is what carries requests
    /// without an upgrade (`scheme: http`): a caller may then send through [`h1::send_head`].
    pub fn h1_limits(&self) -> Option<h1::PoolLimits> {
        match &self.inner {
            Inner::Http1 { limits, .. } => Some(*limits),
            Inner::Plain(_) | Inner::Tls(_) => None,
        }
    }

    /// Builds the client a transport key describes.
    pub fn build(key: &TransportKey) -> Result<UpstreamClient, TransportError> {
        let mut http = HttpConnector::new();
        http.set_nodelay(true);
        http.set_keepalive(Some(TCP_KEEPALIVE));
        // No connector-wide connect timeout: each upstream has its own, enforced in `send`.
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_timer(TokioTimer::new())
            .pool_idle_timeout(Duration::from_millis(key.pool.idle_timeout_ms))
            .pool_max_idle_per_host(key.pool.size);
        let inner = match key.scheme {
            Scheme::Http => Inner::Http1 {
                limits: h1::PoolLimits {
                    size: key.pool.size,
                    idle_timeout: Duration::from_millis(key.pool.idle_timeout_ms),
                },
                upgrades: builder.build(http),
            },
            Scheme::H2c => {
                builder.http2_only(true).timer(TokioTimer::new());
                Inner::Plain(builder.build(http))
            }
            Scheme::Https => {
                http.enforce_http(false);
                let server_name = match &key.server_name {
                    Some(name) => Some(ServerName::try_from(name.clone()).map_err(|e| {
                        TransportError(format!("invalid TLS server name {name:?}: {e}"))
                    })?),
                    None => None,
                };
                let https = || -> Result<_, TransportError> {
                    let https = HttpsConnectorBuilder::new()
                        .with_tls_config(tls_config(&key.tls)?)
                        .https_only();
                    Ok(match &server_name {
                        Some(name) => https
                            .with_server_name_resolver(FixedServerNameResolver::new(name.clone())),
                        None => https,
                    })
                };
                builder.timer(TokioTimer::new());
                Inner::Tls(Box::new(TlsClients {
                    // ALPN offers h2 and http/1.1; the node picks.
                    client: builder
                        .build(https()?.enable_all_versions().wrap_connector(http.clone())),
                    upgrades: builder.build(https()?.enable_http1().wrap_connector(http)),
                }))
            }
        };
        Ok(UpstreamClient { inner })
    }

    /// Sends `request` (its URI names the node at `address`, whose idle HTTP/1.1 connections
    /// are `pool`) and waits for the response headers; the body
    /// is streamed afterwards by whoever polls it. The response carries no hop-by-hop headers.
    /// `hop`: the headers this hop adds, written into the head by [`h1`] and into the map for
    /// hyper. `form` asks for the response headers as the node sent them
    /// ([`h1::HeadForm::Passed`]) or for none ([`h1::HeadForm::Ignored`]); only plain HTTP/1.1
    /// exchanges honour either, hyper's fill the map.
    ///
    /// Two deadlines apply, because the connector's own timeout is one value for the whole
    /// pool: establishing the connection (or taking one from the pool, which is immediate) must
    /// finish within `connect_timeout`, and from then on the response headers must arrive
    /// within `read_timeout`. A connection failure is reported by the client itself
    /// (`is_connect`), which tells "refused" (502) apart from "too slow" (504).
    ///
    /// Not an `async fn`: the plain HTTP/1.1 exchange is returned as it is, so its future is
    /// not wrapped (and moved) once more; hyper's exchanges are boxed.
    #[expect(
        clippy::too_many_arguments,
        reason = "taken apart per request; a struct for them would be built and moved per request"
    )]
    pub fn send<'a>(
        &'a self,
        request: Request<UpstreamBody>,
        hop: Option<&'a HopHeaders>,
        address: &'a str,
        pool: &'a Arc<h1::Pool>,
        form: h1::HeadForm,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> impl Future<Output = Result<Response<UpstreamResponseBody>, ProxyError>> + 'a {
        let client = match &self.inner {
            Inner::Http1 { limits, .. } if !request.headers().contains_key(UPGRADE) => {
                let exchange = h1::send(
                    pool,
                    *limits,
                    address,
                    request,
                    hop,
                    form,
                    connect_timeout,
                    read_timeout,
                );
                return future::Either::Left(
                    exchange.map_ok(|response| response.map(Either::Right)),
                );
            }
            Inner::Http1 { upgrades, .. } => Hyper::Plain(upgrades),
            Inner::Plain(client) => Hyper::Plain(client),
            Inner::Tls(tls) if request.headers().contains_key(UPGRADE) => Hyper::Tls(&tls.upgrades),
            Inner::Tls(tls) => Hyper::Tls(&tls.client),
        };
        future::Either::Right(Box::pin(async move {
            let mut request = request;
            if let Some(hop) = hop {
                hop.apply(request.headers_mut());
            }
            let mut response = client
                .send(request, address, connect_timeout, read_timeout)
                .await?;
            // h1 leaves them out while parsing; hyper keeps every header it received.
            super::headers::remove_hop_by_hop(response.headers_mut());
            Ok(response.map(|body| {
                Either::Left(Either::Left(Box::new(HyperBody::new(body, read_timeout))))
            }))
        }))
    }
}

/// One of hyper's clients, borrowed for an exchange.
enum Hyper<'a> {
    Plain(&'a Client<HttpConnector, UpstreamBody>),
    Tls(&'a Client<HttpsConnector<HttpConnector>, UpstreamBody>),
}

impl Hyper<'_> {
    async fn send(
        self,
        mut request: Request<UpstreamBody>,
        node: &str,
        connect_timeout: Duration,
        read_timeout: Duration,
    ) -> Result<Response<Incoming>, ProxyError> {
        let mut connection = capture_connection(&mut request);
        let mut response = pin!(async {
            match self {
                Hyper::Plain(client) => client.request(request).await,
                Hyper::Tls(client) => client.request(request).await,
            }
        });
        // One timer for both deadlines, moved rather than replaced when the connection is up:
        // a timer registration per request is a measurable share of a proxied request's cost.
        let mut timer = pin!(deadline::timer(deadline::after(connect_timeout)));
        tokio::select! {
            // Poll the exchange first: when it is already done, its own result is the truth.
            biased;
            result = &mut response => {
                return result.map_err(|e| ProxyError::from_upstream(node, e));
            }
            _ = connection.wait_for_connection_metadata() => {}
            () = &mut timer => {
                return Err(ProxyError::UpstreamTimeout {
                    node: node.to_owned(),
                    phase: TimeoutPhase::Connect,
                    after: connect_timeout,
                });
            }
        }
        timer.as_mut().reset(deadline::after(read_timeout));
        tokio::select! {
            biased;
            result = &mut response => result.map_err(|e| ProxyError::from_upstream(node, e)),
            () = &mut timer => Err(ProxyError::UpstreamTimeout {
                node: node.to_owned(),
                phase: TimeoutPhase::ResponseHeaders,
                after: read_timeout,
            }),
        }
    }
}

/// rustls settings: the web PKI roots (Mozilla's, compiled in, so a container without a CA
/// bundle still verifies), or no verification at all when `verify` is false.
fn tls_config(tls: &UpstreamTls) -> Result<rustls::ClientConfig, TransportError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .map_err(|e| TransportError(format!("TLS setup failed: {e}")))?;
    let config = if tls.verify {
        builder.with_webpki_roots().with_no_client_auth()
    } else {
        builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(NoVerification(provider)))
            .with_no_client_auth()
    };
    Ok(config)
}

/// Accepts any certificate (`tls.verify: false`), still checking that the handshake signatures
/// are valid for the presented key.
#[derive(Debug)]
struct NoVerification(Arc<rustls::crypto::CryptoProvider>);

impl rustls::client::danger::ServerCertVerifier for NoVerification {
    fn verify_server_cert(
        &self,
        _end_entity: &rustls::pki_types::CertificateDer<'_>,
        _intermediates: &[rustls::pki_types::CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: rustls::pki_types::UnixTime,
    ) -> Result<rustls::client::danger::ServerCertVerified, rustls::Error> {
        Ok(rustls::client::danger::ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &rustls::pki_types::CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<rustls::client::danger::HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
