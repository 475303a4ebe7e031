//! TLS at the edge: `certificates` through the admin API, served by a data plane's
//! `--tls-listen` by SNI (exact, wildcard, default), replaced without a restart, HTTP/2 by
//! ALPN, and `redirect`'s `http_to_https`.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;

use gateway_e2e::{
    ControlPlane, DataPlane, FakeUpstream, Reply, ScriptedUpstream, error_pointers, eventually,
    sqlite_url, unique,
};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use serde_json::{Value, json};
use tokio::net::TcpStream;

/// A CA for the run and leaves it signs.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

/// A leaf: the `cert` field (leaf then CA, PEM), its key, and the leaf's DER.
struct Leaf {
    chain_pem: String,
    key_pem: String,
    der: Vec<u8>,
}

impl Ca {
    fn new() -> Ca {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        // rcgen names every certificate alike by default; a leaf named as its CA reads as
        // self-signed to OpenSSL (curl).
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "gateway e2e test CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap();
        Ca { issuer }
    }

    fn pem(&self) -> String {
        self.issuer.pem()
    }

    fn leaf(&self, names: &[&str]) -> Leaf {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
                .unwrap();
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.issuer).unwrap();
        Leaf {
            chain_pem: format!("{}{}", cert.pem(), self.pem()),
            key_pem: key.serialize_pem(),
            der: cert.der().to_vec(),
        }
    }
}

fn document(snis: &[&str], leaf: &Leaf, default: bool) -> Value {
    json!({"snis": snis, "cert": leaf.chain_pem, "key": leaf.key_pem, "default": default})
}

/// Accepts any certificate: the tests compare what was served with what they wrote.
#[derive(Debug)]
struct AnyCertificate;

impl ServerCertVerifier for AnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// What a handshake with the data plane ended with: the chain served and the ALPN protocol.
struct Handshake {
    chain: Vec<Vec<u8>>,
    alpn: Option<Vec<u8>>,
}

/// A handshake with `addr`, sending `sni` (none: an IP address, which sends no SNI) and
/// offering `alpn`.
async fn handshake(
    addr: SocketAddr,
    sni: Option<&str>,
    alpn: &[&[u8]],
) -> Result<Handshake, String> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCertificate))
        .with_no_client_auth();
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    let connector = tokio_rustls::TlsConnector::from(Arc::new(config));
    let name = match sni {
        Some(sni) => ServerName::try_from(sni.to_owned()).unwrap(),
        None => ServerName::IpAddress(addr.ip().into()),
    };
    let tcp = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
    let tls = connector
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let (_, session) = tls.get_ref();
    Ok(Handshake {
        chain: session
            .peer_certificates()
            .unwrap_or_default()
            .iter()
            .map(|c| c.to_vec())
            .collect(),
        alpn: session.alpn_protocol().map(<[u8]>::to_vec),
    })
}

/// The leaf a handshake for `sni` is served.
async fn served_leaf(addr: SocketAddr, sni: Option<&str>) -> Option<Vec<u8>> {
    handshake(addr, sni, &[b"http/1.1"])
        .await
        .ok()
        .and_then(|h| h.chain.into_iter().next())
}

fn tls_addr(dp: &DataPlane) -> SocketAddr {
    let url = dp.tls_url().expect("the data plane printed tls_url");
    url.trim_start_matches("https://").parse().unwrap()
}

/// `curl` through the TLS listener as `name` (resolved to it), trusting `ca`: the HTTP
/// version it spoke and the status. On a blocking thread: the fake upstreams run on the
/// test's own runtime.
async fn curl(
    addr: SocketAddr,
    name: &str,
    ca: &std::path::Path,
    path: &str,
    http2: bool,
) -> String {
    let (name, ca, path) = (name.to_owned(), ca.to_owned(), path.to_owned());
    tokio::task::spawn_blocking(move || curl_blocking(addr, &name, &ca, &path, http2))
        .await
        .unwrap()
}

fn curl_blocking(
    addr: SocketAddr,
    name: &str,
    ca: &std::path::Path,
    path: &str,
    http2: bool,
) -> String {
    let port = addr.port();
    let output = Command::new("curl")
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_version} %{http_code}",
            "--max-time",
            "10",
            if http2 { "--http2" } else { "--http1.1" },
            "--cacert",
            ca.to_str().unwrap(),
            "--resolve",
            &format!("{name}:{port}:127.0.0.1"),
            &format!("https://{name}:{port}{path}"),
        ])
        .output()
        .expect("curl runs");
    String::from_utf8_lossy(&output.stdout).into_owned() + &String::from_utf8_lossy(&output.stderr)
}

async fn setup() -> (ControlPlane, DataPlane, FakeUpstream) {
    let cp = ControlPlane::start(&sqlite_url(), None);
    let upstream = FakeUpstream::start("tls-upstream").await;
    cp.write(
        "PUT",
        "/api/v1/routes/hello",
        Some(json!({"paths": ["/hello"], "upstream": upstream.upstream()})),
    )
    .await;
    let dp = DataPlane::start_with(
        &cp.xds_url,
        &unique("tls"),
        &["--tls-listen", "127.0.0.1:0"],
    );
    (cp, dp, upstream)
}

#[tokio::test]
async fn certificates_are_served_by_sni_replaced_live_and_speak_h2() {
    let (cp, dp, upstream) = setup().await;
    let addr = tls_addr(&dp);
    let ca = Ca::new();
    let a = ca.leaf(&["a.test"]);
    let b = ca.leaf(&["b.test"]);
    cp.write(
        "PUT",
        "/api/v1/certificates/a",
        Some(document(&["a.test"], &a, false)),
    )
    .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/certificates/b",
            Some(document(&["b.test"], &b, false)),
        )
        .await;
    dp.applied(version).await;

    // Two SNIs, two certificates, each with its chain whole.
    let first = handshake(addr, Some("a.test"), &[b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(first.chain.len(), 2, "leaf and CA");
    assert_eq!(first.chain[0], a.der);
    assert_eq!(served_leaf(addr, Some("B.TEST")).await, Some(b.der.clone()));
    // No match and no default: the handshake fails, and is counted.
    assert!(handshake(addr, Some("c.test"), &[]).await.is_err());
    assert!(handshake(addr, None, &[]).await.is_err());
    eventually("the failed handshakes counted", || async {
        dp.metric("gateway_tls_handshake_failures_total")
            .await
            .filter(|n| *n >= 2.0)
    })
    .await;
    assert!(
        dp.metric("gateway_tls_certificate_expiry_seconds{id=\"a\"}")
            .await
            .is_some()
    );

    // Requests go the plaintext listener's way: HTTP/1.1 and HTTP/2 by ALPN.
    let dir = std::env::temp_dir().join(unique("tls-ca"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    assert_eq!(
        curl(addr, "a.test", &ca_file, "/hello", false).await,
        "1.1 200"
    );
    assert_eq!(
        curl(addr, "b.test", &ca_file, "/hello", true).await,
        "2 200"
    );
    // The node hears that the client spoke TLS.
    let last = upstream.received.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.headers["x-forwarded-proto"], "https");
    let h2 = handshake(addr, Some("a.test"), &[b"h2", b"http/1.1"])
        .await
        .unwrap();
    assert_eq!(h2.alpn.as_deref(), Some(&b"h2"[..]));

    // A certificate replaced through the admin API is served on the next handshake, by the
    // same process.
    let pid = dp.process.pid();
    let renewed = ca.leaf(&["a.test"]);
    let version = cp
        .write(
            "PUT",
            "/api/v1/certificates/a",
            Some(document(&["a.test"], &renewed, false)),
        )
        .await;
    dp.applied(version).await;
    assert_eq!(
        served_leaf(addr, Some("a.test")).await,
        Some(renewed.der.clone())
    );
    assert_eq!(dp.process.pid(), pid);
    assert_eq!(
        curl(addr, "a.test", &ca_file, "/hello", false).await,
        "1.1 200"
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test]
async fn wildcards_and_the_default_certificate() {
    let (cp, dp, _upstream) = setup().await;
    let addr = tls_addr(&dp);
    let ca = Ca::new();
    let exact = ca.leaf(&["api.example.test"]);
    let wild = ca.leaf(&["*.example.test"]);
    let fallback = ca.leaf(&["fallback.test"]);
    cp.write(
        "PUT",
        "/api/v1/certificates/exact",
        Some(document(&["api.example.test"], &exact, false)),
    )
    .await;
    cp.write(
        "PUT",
        "/api/v1/certificates/wild",
        Some(document(&["*.example.test"], &wild, false)),
    )
    .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/certificates/fallback",
            Some(document(&["fallback.test"], &fallback, true)),
        )
        .await;
    dp.applied(version).await;

    assert_eq!(
        served_leaf(addr, Some("api.example.test")).await,
        Some(exact.der.clone())
    );
    assert_eq!(
        served_leaf(addr, Some("www.example.test")).await,
        Some(wild.der.clone())
    );
    // A wildcard covers one label: deeper names get the default, as does no SNI at all.
    assert_eq!(
        served_leaf(addr, Some("a.b.example.test")).await,
        Some(fallback.der.clone())
    );
    assert_eq!(
        served_leaf(addr, Some("nothing.test")).await,
        Some(fallback.der.clone())
    );
    assert_eq!(served_leaf(addr, None).await, Some(fallback.der.clone()));

    // A second default is a conflict between resources.
    let other = ca.leaf(&["other.test"]);
    let (status, _, body) = cp
        .call(
            "PUT",
            "/api/v1/certificates/other",
            Some(document(&["other.test"], &other, true)),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_pointers(&body), ["/default"]);
}

#[tokio::test]
async fn bad_certificates_are_refused_with_pointers_and_keys_never_read_back() {
    let cp = ControlPlane::start(&sqlite_url(), None);
    let ca = Ca::new();
    let a = ca.leaf(&["a.test", "*.wild.test"]);
    let other = ca.leaf(&["a.test"]);

    let mut mismatched = document(&["a.test"], &a, false);
    mismatched["key"] = other.key_pem.clone().into();
    let (status, _, body) = cp
        .call("PUT", "/api/v1/certificates/bad", Some(mismatched))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_pointers(&body), ["/key"]);

    let uncovered = document(
        &["a.test", "b.test", "x.wild.test", "x.y.wild.test"],
        &a,
        false,
    );
    let (status, _, body) = cp
        .call("PUT", "/api/v1/certificates/bad", Some(uncovered))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_pointers(&body), ["/snis/1", "/snis/3"]);

    let mut garbage = document(&["a.test"], &a, false);
    garbage["cert"] = "-----BEGIN CERTIFICATE-----\nnope\n-----END CERTIFICATE-----\n".into();
    let (status, _, body) = cp
        .call("PUT", "/api/v1/certificates/bad", Some(garbage))
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(error_pointers(&body), ["/cert"]);

    // Reads, lists, exports, diffs and versions never carry the key.
    let (status, version, written) = cp
        .call(
            "PUT",
            "/api/v1/certificates/a",
            Some(document(&["a.test"], &a, false)),
        )
        .await;
    assert_eq!(status, 201, "{written}");
    assert_eq!(written["key"], "<redacted>");
    assert!(written["not_after"].as_i64().unwrap() > 0);
    let version = version.unwrap();
    let mut reads = Vec::new();
    for path in [
        "/api/v1/certificates/a".to_owned(),
        "/api/v1/certificates".to_owned(),
        "/api/v1/config".to_owned(),
        format!("/api/v1/versions/{version}"),
        format!("/api/v1/versions/{version}/config"),
        format!("/api/v1/versions/{version}/diff"),
    ] {
        let (status, _, body) = cp.call("GET", &path, None).await;
        assert_eq!(status, 200, "{path}: {body}");
        reads.push((path, body.to_string()));
    }
    for (path, body) in &reads {
        assert!(
            !body.contains("PRIVATE KEY"),
            "{path} shows the key: {body}"
        );
    }
    // What a read answers, written back, keeps the stored key and changes nothing.
    let (_, _, read) = cp.call("GET", "/api/v1/certificates/a", None).await;
    let (status, after, _) = cp.call("PUT", "/api/v1/certificates/a", Some(read)).await;
    assert_eq!(status, 200);
    assert_eq!(after, Some(version), "no new version");
    let (_, _, exported) = cp.call("GET", "/api/v1/config", None).await;
    let (status, _, reply) = cp.call("PUT", "/api/v1/config", Some(exported)).await;
    assert_eq!(status, 200, "{reply}");
    assert_eq!(reply["written"], false, "{reply}");
    // The placeholder with no key stored names nothing.
    let mut orphan = document(&["a.test"], &a, false);
    orphan["key"] = "<redacted>".into();
    let (status, _, body) = cp
        .call("PUT", "/api/v1/certificates/orphan", Some(orphan))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(error_pointers(&body), ["/key"]);
}

#[tokio::test]
async fn redirect_sends_plain_http_to_the_tls_listener() {
    let (cp, dp, _upstream) = setup().await;
    let addr = tls_addr(&dp);
    let ca = Ca::new();
    let leaf = ca.leaf(&["secure.test"]);
    cp.write(
        "PUT",
        "/api/v1/certificates/secure",
        Some(document(&["secure.test"], &leaf, true)),
    )
    .await;
    let echo = ScriptedUpstream::start(|_| Reply::json(json!({"ok": true}))).await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/routes/secure",
            Some(json!({
                "paths": ["/secure/*"],
                "upstream": echo.upstream(),
                "plugins": {"redirect": {"http_to_https": true}}
            })),
        )
        .await;
    dp.applied(version).await;

    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let response = client
        .get(format!("{}/secure/page?x=1&y=2", dp.proxy_url))
        .header("host", "secure.test")
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 301);
    assert_eq!(
        response.headers()["location"],
        format!("https://secure.test:{}/secure/page?x=1&y=2", addr.port()).as_str()
    );

    // Over TLS the same route proxies.
    let dir = std::env::temp_dir().join(unique("tls-ca"));
    std::fs::create_dir_all(&dir).unwrap();
    let ca_file = dir.join("ca.pem");
    std::fs::write(&ca_file, ca.pem()).unwrap();
    assert_eq!(
        curl(addr, "secure.test", &ca_file, "/secure/page", false).await,
        "1.1 200"
    );
    assert_eq!(
        curl(addr, "secure.test", &ca_file, "/secure/page", true).await,
        "2 200"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
