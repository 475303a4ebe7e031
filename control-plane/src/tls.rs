//! TLS for the config stream and the admin API: the server's certificate, client-certificate
//! verification (mTLS, the stream only), an accept loop that logs every failed handshake, and
//! `control-plane certs`, which makes a private CA with a server and a client certificate for
//! trying it out.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;

/// How long a peer may take to complete its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Why TLS could not be set up.
#[derive(Debug, Error)]
pub enum TlsError {
    /// A file could not be read or holds no usable PEM.
    #[error("{path}: {reason}")]
    File {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// rustls refused the material (a key that does not match its certificate, say).
    #[error("TLS configuration: {0}")]
    Config(String),
    /// Making certificates failed.
    #[error("making certificates: {0}")]
    Generate(String),
}

fn file_error(path: &Path, reason: impl ToString) -> TlsError {
    TlsError::File {
        path: path.to_owned(),
        reason: reason.to_string(),
    }
}

/// Every certificate in a PEM file (a chain: leaf first).
fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(path, e))?;
    if certs.is_empty() {
        return Err(file_error(path, "no CERTIFICATE in the file"));
    }
    Ok(certs)
}

/// The private key in a PEM file (PKCS#8, PKCS#1 or SEC1).
fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| file_error(path, e))
}

/// The config stream's server configuration: its certificate chain and key, and, with
/// `client_ca`, a required client certificate signed by that CA. ALPN `h2` (gRPC).
pub fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<rustls::ServerConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in load_certs(ca)? {
                roots.add(cert).map_err(|e| file_error(ca, e))?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|e| TlsError::Config(e.to_string()))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder
        .with_single_cert(load_certs(cert)?, load_key(key)?)
        .map_err(|e| TlsError::Config(format!("{}: {e}", cert.display())))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

/// The admin API's server configuration: its certificate chain and key, HTTP/1.1 by ALPN
/// (the admin API speaks nothing else), no client certificates (bearer tokens authenticate).
pub fn admin_server_config(cert: &Path, key: &Path) -> Result<rustls::ServerConfig, TlsError> {
    let mut config = server_config(cert, key, None)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// A TLS listener for `axum::serve`: connections whose handshake succeeded, with their peer.
pub struct AdminTlsListener {
    local: SocketAddr,
    incoming: ReceiverStream<io::Result<TlsStream<TcpStream>>>,
}

impl AdminTlsListener {
    /// Serves TLS with `config` on `listener`.
    pub fn new(listener: TcpListener, config: rustls::ServerConfig) -> io::Result<Self> {
        Ok(AdminTlsListener {
            local: listener.local_addr()?,
            incoming: accept(listener, config, "admin API"),
        })
    }
}

impl axum::serve::Listener for AdminTlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        use tokio_stream::StreamExt as _;
        loop {
            match self.incoming.next().await {
                Some(Ok(stream)) => {
                    let peer = stream.get_ref().0.peer_addr().unwrap_or(self.local);
                    return (stream, peer);
                }
                Some(Err(_)) => continue,
                // The accept loop ends only when this listener is dropped.
                None => std::future::pending::<()>().await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        Ok(self.local)
    }
}

/// Accepts connections on `listener` and yields those whose TLS handshake succeeds. A failed
/// handshake (no client certificate, one from another CA, plain text) is logged with the
/// peer's address and `what` listener it was, and closed: that peer gets nothing.
pub fn accept(
    listener: TcpListener,
    config: rustls::ServerConfig,
    what: &'static str,
) -> ReceiverStream<io::Result<TlsStream<TcpStream>>> {
    let acceptor = TlsAcceptor::from(Arc::new(config));
    let (accepted, incoming) = mpsc::channel(64);
    tokio::spawn(async move {
        loop {
            let (stream, peer) = match listener.accept().await {
                Ok(connection) => connection,
                Err(error) => {
                    tracing::warn!(%error, listener = what, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            if accepted.is_closed() {
                return;
            }
            let _ = stream.set_nodelay(true);
            let acceptor = acceptor.clone();
            let accepted = accepted.clone();
            tokio::spawn(async move {
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(tls)) => {
                        let _ = accepted.send(Ok(tls)).await;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%peer, %error, listener = what, "TLS handshake refused");
                    }
                    Err(_) => {
                        tracing::warn!(%peer, listener = what, "TLS handshake timed out");
                    }
                }
            });
        }
    });
    ReceiverStream::new(incoming)
}

/// Certificates written by [`generate`].
#[derive(Debug)]
pub struct Generated {
    /// Every file written.
    pub files: Vec<PathBuf>,
}

/// Makes a private CA and, signed by it, a server certificate for `server_names` (the names
/// data planes use in `https://NAME:PORT`) and a client certificate for data plane
/// `client_name`; writes them as PEM files into `dir`: `ca.crt`, `ca.key`, `control-plane.crt`,
/// `control-plane.key`, `data-plane.crt`, `data-plane.key`. Keys are written owner-only.
pub fn generate(
    dir: &Path,
    server_names: &[String],
    client_name: &str,
) -> Result<Generated, TlsError> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose,
    };
    let error = |e: rcgen::Error| TlsError::Generate(e.to_string());
    std::fs::create_dir_all(dir).map_err(|e| file_error(dir, e))?;

    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(error)?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "gateway config-stream CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate().map_err(error)?;
    let ca_key_pem = ca_key.serialize_pem();
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(error)?;

    let leaf = |names: Vec<String>, common_name: &str, purpose: ExtendedKeyUsagePurpose| {
        let mut params = CertificateParams::new(names).map_err(error)?;
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![purpose];
        let key = KeyPair::generate().map_err(error)?;
        let cert = params.signed_by(&key, &ca).map_err(error)?;
        Ok::<_, TlsError>((cert.pem(), key.serialize_pem()))
    };
    let (server_cert, server_key) = leaf(
        server_names.to_vec(),
        "gateway control plane",
        ExtendedKeyUsagePurpose::ServerAuth,
    )?;
    let (client_cert, client_key) = leaf(
        vec![client_name.to_owned()],
        client_name,
        ExtendedKeyUsagePurpose::ClientAuth,
    )?;

    let mut files = Vec::new();
    for (name, contents, secret) in [
        ("ca.crt", ca.pem(), false),
        ("ca.key", ca_key_pem, true),
        ("control-plane.crt", server_cert, false),
        ("control-plane.key", server_key, true),
        ("data-plane.crt", client_cert, false),
        ("data-plane.key", client_key, true),
    ] {
        let path = dir.join(name);
        write_file(&path, contents.as_bytes(), secret).map_err(|e| file_error(&path, e))?;
        files.push(path);
    }
    Ok(Generated { files })
}

fn write_file(path: &Path, contents: &[u8], secret: bool) -> io::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = secret;
    options.open(path)?.write_all(contents)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_certificates_make_a_working_server_config() {
        let dir = std::env::temp_dir().join(format!("gateway-certs-{}", fastrand::u64(..)));
        let made = generate(&dir, &["localhost".to_owned()], "dp-1").unwrap();
        assert_eq!(made.files.len(), 6);
        server_config(
            &dir.join("control-plane.crt"),
            &dir.join("control-plane.key"),
            Some(&dir.join("ca.crt")),
        )
        .unwrap();
        // A key that is not the certificate's is refused.
        let mismatched = server_config(
            &dir.join("control-plane.crt"),
            &dir.join("data-plane.key"),
            None,
        );
        assert!(mismatched.is_err());
        let missing = server_config(&dir.join("nope.crt"), &dir.join("nope.key"), None);
        assert!(matches!(missing, Err(TlsError::File { .. })));
        let _ = std::fs::remove_dir_all(dir);
    }
}
