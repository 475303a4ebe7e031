//! The admin API over HTTP: the only way `gatewayctl` reaches a control plane.
//!
//! Every failure becomes a [`CtlError`]; an answer in the API's error shape
//! (`{"error": {"code", "message", "details": [{"pointer", "message"}]}}`) is kept whole so it
//! can be shown field by field.

use std::fmt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
pub use http::Method;
use http::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue, IF_MATCH};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::TokioExecutor;
use rustls::pki_types::CertificateDer;
use rustls::pki_types::pem::PemObject;
use serde_json::Value;

/// The header carrying the config version an answer reflects.
const CONFIG_VERSION_HEADER: &str = "x-config-version";
/// The header carrying a write's change message.
const CHANGE_MESSAGE_HEADER: &str = "x-change-message";
/// How long one call may take: a whole-config write of a large config is the slowest.
const CALL_TIMEOUT: Duration = Duration::from_secs(120);

/// One problem found in the input files, located as precisely as it can be.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Problem {
    /// The file (or `-` for standard input); empty when the problem is not in one file.
    pub file: String,
    /// The resource (`routes/r1`), if the problem is in one.
    pub resource: Option<String>,
    /// JSON pointer within the resource (or within the file when no resource is known).
    pub pointer: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts: Vec<&str> = Vec::new();
        if !self.file.is_empty() {
            parts.push(&self.file);
        }
        if let Some(resource) = &self.resource {
            parts.push(resource);
        }
        let pointer = if self.pointer.is_empty() {
            None
        } else {
            Some(self.pointer.as_str())
        };
        parts.extend(pointer);
        if parts.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", parts.join(": "), self.message)
        }
    }
}

/// One `details` entry of an API error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Detail {
    /// JSON pointer into the request body (or into the resource it names).
    pub pointer: String,
    /// What is wrong there.
    pub message: String,
    /// Where that pointer is in the user's files, when the caller could work it out.
    pub located: Option<String>,
}

/// An answer in the admin API's error shape.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiFailure {
    /// The HTTP status.
    pub status: u16,
    /// The error code (`schema_violation`, `reference_conflict`, …).
    pub code: String,
    /// The message.
    pub message: String,
    /// Every detail.
    pub details: Vec<Detail>,
    /// What was asked (`PUT /api/v1/config`).
    pub request: String,
}

impl ApiFailure {
    fn from_answer(request: String, status: u16, body: &Value, raw: &str) -> ApiFailure {
        let error = &body["error"];
        let code = error["code"].as_str().map(str::to_owned);
        let message = error["message"].as_str().map(str::to_owned);
        let details = error["details"]
            .as_array()
            .map(|details| {
                details
                    .iter()
                    .map(|d| Detail {
                        pointer: d["pointer"].as_str().unwrap_or_default().to_owned(),
                        message: d["message"].as_str().unwrap_or_default().to_owned(),
                        located: None,
                    })
                    .collect()
            })
            .unwrap_or_default();
        match (code, message) {
            (Some(code), Some(message)) => ApiFailure {
                status,
                code,
                message,
                details,
                request,
            },
            // Not the API's shape (a proxy in between, another server on that port).
            _ => ApiFailure {
                status,
                code: format!("http_{status}"),
                message: summary(raw),
                details: Vec::new(),
                request,
            },
        }
    }
}

impl fmt::Display for ApiFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} answered {} {}: {}",
            self.request, self.status, self.code, self.message
        )?;
        for detail in &self.details {
            let pointer = if detail.pointer.is_empty() {
                "(whole document)"
            } else {
                &detail.pointer
            };
            match &detail.located {
                Some(located) => write!(f, "\n  {located}: {}", detail.message)?,
                None => write!(f, "\n  {pointer}: {}", detail.message)?,
            }
        }
        Ok(())
    }
}

/// Why a command failed. Every variant means exit status 1.
#[derive(Debug)]
pub enum CtlError {
    /// The admin API answered with an error.
    Api(ApiFailure),
    /// The admin API could not be reached, or answered something that is not JSON.
    Transport(String),
    /// Bad arguments, or files that cannot be read or parsed.
    Input(String),
    /// Resources that fail validation, each located in its file.
    Invalid(Vec<Problem>),
    /// An endpoint this control plane does not serve (an older build).
    NotServed(&'static str),
}

impl fmt::Display for CtlError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CtlError::Api(failure) => write!(f, "{failure}"),
            CtlError::Transport(message) | CtlError::Input(message) => f.write_str(message),
            CtlError::Invalid(problems) => {
                write!(f, "{} problem(s) found", problems.len())?;
                for problem in problems {
                    write!(f, "\n  {problem}")?;
                }
                Ok(())
            }
            CtlError::NotServed(path) => write!(f, "this control plane does not serve {path}"),
        }
    }
}

/// The certificates of a PEM file of CA certificates; an error names the file.
fn read_ca_file(path: &Path) -> Result<Vec<CertificateDer<'static>>, CtlError> {
    let unreadable =
        |e: &dyn fmt::Display| CtlError::Input(format!("--cacert {}: {e}", path.display()));
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| unreadable(&e))?;
    if certs.is_empty() {
        return Err(unreadable(&"no PEM certificate in it"));
    }
    Ok(certs)
}

/// The TLS client config for an https:// server: the webpki roots (Mozilla's), or only the CA
/// certificates of `ca_file`. ring, like every other TLS peer in the tree.
fn tls_config(ca_file: Option<&Path>) -> Result<rustls::ClientConfig, CtlError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            for cert in read_ca_file(path)? {
                roots
                    .add(cert)
                    .map_err(|e| CtlError::Input(format!("--cacert {}: {e}", path.display())))?;
            }
        }
        None => roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| CtlError::Transport(format!("cannot set up TLS: {e}")))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(config)
}

/// A successful answer.
#[derive(Debug)]
pub struct Reply {
    /// The config version the answer reflects (`X-Config-Version`), if given.
    pub version: Option<u64>,
    /// The JSON body (`null` when empty).
    pub body: Value,
}

/// A client of one control plane's admin API.
pub struct AdminClient {
    base: String,
    token: Option<String>,
    http: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl AdminClient {
    /// A client of the admin API at `server` (`http://` or `https://host:port`; a bare
    /// `host:port` means plain HTTP), sending `token` as the bearer token. HTTPS servers are
    /// trusted by the webpki (Mozilla) roots, or only by the PEM CA certificates in `ca_file` if given
    /// (a private CA, as `--admin-tls-cert` often is).
    pub fn new(
        server: &str,
        token: Option<String>,
        ca_file: Option<&Path>,
    ) -> Result<AdminClient, CtlError> {
        let server = server.trim().trim_end_matches('/');
        let base = if server.starts_with("https://") || server.starts_with("http://") {
            server.to_owned()
        } else if server.contains("://") {
            return Err(CtlError::Input(format!(
                "{server}: --server must be an http:// or https:// URL"
            )));
        } else {
            format!("http://{server}")
        };
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls_config(
                ca_file.filter(|_| base.starts_with("https://")),
            )?)
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new()).build(connector);
        Ok(AdminClient {
            base,
            token: token.filter(|t| !t.is_empty()),
            http,
        })
    }

    /// The server's base URL, as given.
    pub fn server(&self) -> &str {
        &self.base
    }

    /// `GET path`; any status but 2xx is an error.
    pub async fn get(&self, path: &str) -> Result<Reply, CtlError> {
        self.call(Method::GET, path, None, None).await
    }

    /// Calls `method path` with an optional JSON body and change message; any status but 2xx
    /// is an error.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        message: Option<&str>,
    ) -> Result<Reply, CtlError> {
        self.call_if_match(method, path, body, message, None).await
    }

    /// Like [`AdminClient::call`], with `If-Match: "<if_match>"`: the server answers 412 and
    /// writes nothing when what it names has moved on (for `PUT /api/v1/config`, the version
    /// the plan was made from).
    pub async fn call_if_match(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
        message: Option<&str>,
        if_match: Option<u64>,
    ) -> Result<Reply, CtlError> {
        let request_name = format!("{method} {}", path.split('?').next().unwrap_or(path));
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base));
        if let Some(token) = &self.token {
            let value = HeaderValue::try_from(format!("Bearer {token}"))
                .map_err(|_| CtlError::Input("the token must be printable ASCII".into()))?;
            request = request.header(AUTHORIZATION, value);
        }
        if let Some(tag) = if_match {
            request = request.header(IF_MATCH, format!("\"{tag}\""));
        }
        if let Some(message) = message {
            let value = HeaderValue::from_str(message).map_err(|_| {
                CtlError::Input(
                    "--message must be printable ASCII (it travels as the X-Change-Message header)"
                        .into(),
                )
            })?;
            request = request.header(CHANGE_MESSAGE_HEADER, value);
        }
        let body =
            match body {
                Some(body) => {
                    request = request.header(CONTENT_TYPE, "application/json");
                    Bytes::from(serde_json::to_vec(body).map_err(|e| {
                        CtlError::Input(format!("cannot encode the request body: {e}"))
                    })?)
                }
                None => Bytes::new(),
            };
        let request = request.body(Full::new(body)).map_err(|e| {
            CtlError::Input(format!("{request_name}: cannot make the request: {e}"))
        })?;
        let exchange = async {
            let response = self.http.request(request).await.map_err(|e| {
                CtlError::Transport(format!(
                    "cannot reach the admin API at {}: {}",
                    self.base,
                    error_chain(&e)
                ))
            })?;
            let (head, body) = response.into_parts();
            let bytes = body.collect().await.map_err(|e| {
                CtlError::Transport(format!(
                    "{request_name}: the answer broke off: {}",
                    error_chain(&e)
                ))
            })?;
            Ok::<_, CtlError>((head, bytes.to_bytes()))
        };
        let (head, bytes) = tokio::time::timeout(CALL_TIMEOUT, exchange)
            .await
            .map_err(|_| {
                CtlError::Transport(format!(
                    "{request_name}: no answer within {} s",
                    CALL_TIMEOUT.as_secs()
                ))
            })??;
        let status = head.status.as_u16();
        let version = head
            .headers
            .get(CONFIG_VERSION_HEADER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok());
        let raw = String::from_utf8_lossy(&bytes);
        let parsed: Result<Value, _> = if raw.trim().is_empty() {
            Ok(Value::Null)
        } else {
            serde_json::from_str(&raw)
        };
        if !(200..300).contains(&status) {
            let body = parsed.unwrap_or(Value::Null);
            let mut failure = ApiFailure::from_answer(request_name, status, &body, &raw);
            if status == 401 && self.token.is_none() {
                failure
                    .message
                    .push_str(" (no token given: set GATEWAY_TOKEN or --token)");
            }
            return Err(CtlError::Api(failure));
        }
        let body = parsed.map_err(|e| {
            CtlError::Transport(format!(
                "{request_name}: the answer is not JSON ({e}): {}",
                summary(&raw)
            ))
        })?;
        Ok(Reply { version, body })
    }

    /// Like [`AdminClient::call`], for an endpoint that older control planes lack: a 404
    /// means "not served" when `collection` itself answers 404 too (an unknown id in a served
    /// collection stays the API's own 404).
    pub async fn call_optional(
        &self,
        collection: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Reply, CtlError> {
        match self.call(method, path, body, None).await {
            Err(CtlError::Api(failure)) if failure.status == 404 => {
                let served = if path == collection {
                    false
                } else {
                    !matches!(
                        self.get(collection).await,
                        Err(CtlError::Api(ApiFailure { status: 404, .. }))
                    )
                };
                if served {
                    Err(CtlError::Api(failure))
                } else {
                    Err(CtlError::NotServed(collection))
                }
            }
            other => other,
        }
    }
}

/// An error with its causes, which is where hyper keeps the useful part
/// ("connection refused").
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// The start of a body that is not the API's, for an error message.
fn summary(raw: &str) -> String {
    const LIMIT: usize = 200;
    let trimmed = raw.trim();
    if trimmed.is_empty() {
        return "(empty body)".into();
    }
    match trimmed.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &trimmed[..cut]),
        None => trimmed.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn api_errors_keep_code_message_and_every_detail() {
        let body = json!({"error": {"code": "schema_violation", "message": "2 schema violation(s)",
            "details": [{"pointer": "/routes/0/paths", "message": "bad"}, {"pointer": "", "message": "worse"}]}});
        let failure =
            ApiFailure::from_answer("PUT /api/v1/config".into(), 400, &body, &body.to_string());
        assert_eq!(failure.code, "schema_violation");
        let text = failure.to_string();
        assert!(
            text.contains("400 schema_violation: 2 schema violation(s)"),
            "{text}"
        );
        assert!(text.contains("/routes/0/paths: bad"), "{text}");
        assert!(text.contains("(whole document): worse"), "{text}");
    }

    #[test]
    fn foreign_error_bodies_are_summarised() {
        let failure = ApiFailure::from_answer(
            "GET /x".into(),
            502,
            &Value::Null,
            "<html>bad gateway</html>",
        );
        assert_eq!(failure.code, "http_502");
        assert_eq!(failure.message, "<html>bad gateway</html>");
    }

    #[test]
    fn servers_are_http_or_https_urls() {
        assert_eq!(
            AdminClient::new("127.0.0.1:9180/", None, None)
                .unwrap()
                .server(),
            "http://127.0.0.1:9180"
        );
        assert_eq!(
            AdminClient::new("https://cp:9180", None, None)
                .unwrap()
                .server(),
            "https://cp:9180"
        );
        assert!(AdminClient::new("ftp://cp", None, None).is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_refused_with_its_name() {
        let dir = std::env::temp_dir().join(format!("gatewayctl-ca-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let error = AdminClient::new("https://cp:9180", None, Some(&empty))
            .err()
            .expect("refused")
            .to_string();
        assert!(error.contains("empty.pem"), "{error}");
        let missing = dir.join("missing.pem");
        assert!(AdminClient::new("https://cp:9180", None, Some(&missing)).is_err());
        // Plain HTTP never reads it.
        assert!(AdminClient::new("http://cp:9180", None, Some(&missing)).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
