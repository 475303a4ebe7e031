//! `jwt-auth`: identifies the consumer by a signed JSON Web Token (RFC 7519), HS256 or RS256.
//!
//! The token's `key` claim (or `iss` when there is no `key`) names the consumer's `jwt-auth`
//! credential; the signature must verify with that credential's secret or public key and its
//! algorithm; `exp` and `nbf` are enforced (with the configured clock skew). Keys are parsed
//! once per snapshot, never per request.

use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use hmac::{Hmac, Mac};
use http::header::{COOKIE, HeaderName};
use http::{StatusCode, request};
use rsa::pkcs1::DecodeRsaPublicKey;
use rsa::pkcs1v15::{Signature, VerifyingKey};
use rsa::pkcs8::DecodePublicKey;
use rsa::signature::Verifier as _;
use serde_json::Value;
use sha2::Sha256;

use super::key_auth::identify;
use super::util::{query_arg, remove_cookie, without_query_arg};
use super::{Access, Plugin, RequestCtx, reject};
use gateway_proto::plugins::auth::{JwtAlgorithm, JwtAuthConfig, JwtCredential};

/// A compiled `jwt-auth`.
#[derive(Debug)]
pub struct JwtAuth {
    priority: i32,
    header: HeaderName,
    query: String,
    cookie: String,
    hide_credentials: bool,
    clock_skew_s: u64,
}

/// Checks signatures for one consumer's credential.
#[derive(Clone, Debug)]
pub enum Verifier {
    /// HMAC-SHA256 with a shared secret.
    Hs256(Vec<u8>),
    /// RSASSA-PKCS1-v1_5 with SHA-256.
    Rs256(VerifyingKey<Sha256>),
}

impl Verifier {
    /// Builds the verifier of a credential; fails on an unusable key.
    pub fn new(credential: &JwtCredential) -> Result<Verifier, String> {
        match credential.algorithm {
            JwtAlgorithm::HS256 => credential
                .secret
                .as_ref()
                .map(|s| Verifier::Hs256(s.as_bytes().to_vec()))
                .ok_or_else(|| "HS256 needs a secret".to_owned()),
            JwtAlgorithm::RS256 => {
                let pem = credential
                    .public_key
                    .as_deref()
                    .ok_or_else(|| "RS256 needs a public_key".to_owned())?;
                let key = rsa::RsaPublicKey::from_public_key_pem(pem)
                    .or_else(|_| rsa::RsaPublicKey::from_pkcs1_pem(pem))
                    .map_err(|e| format!("public_key is not an RSA public key in PEM: {e}"))?;
                Ok(Verifier::Rs256(VerifyingKey::new(key)))
            }
        }
    }

    fn algorithm(&self) -> &'static str {
        match self {
            Verifier::Hs256(_) => "HS256",
            Verifier::Rs256(_) => "RS256",
        }
    }

    fn verify(&self, signing_input: &[u8], signature: &[u8]) -> bool {
        match self {
            Verifier::Hs256(secret) => {
                let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
                    return false;
                };
                mac.update(signing_input);
                mac.verify_slice(signature).is_ok()
            }
            Verifier::Rs256(key) => Signature::try_from(signature)
                .map(|s| key.verify(signing_input, &s).is_ok())
                .unwrap_or(false),
        }
    }
}

impl JwtAuth {
    /// Compiles a validated config.
    pub fn build(priority: i32, config: &Value) -> Result<JwtAuth, String> {
        let config: JwtAuthConfig =
            serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let header = HeaderName::from_bytes(config.header.as_bytes())
            .map_err(|_| format!("{:?} is not a header name", config.header))?;
        Ok(JwtAuth {
            priority,
            header,
            query: config.query,
            cookie: config.cookie,
            hide_credentials: config.hide_credentials,
            clock_skew_s: config.clock_skew_s,
        })
    }

    /// The token the request presents, and where it was found.
    fn token(&self, request: &request::Parts) -> Option<(String, TokenSource)> {
        if let Some(value) = request
            .headers
            .get(&self.header)
            .and_then(|v| v.to_str().ok())
        {
            let token = match value.split_once(' ') {
                Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
                _ => value.trim(),
            };
            return Some((token.to_owned(), TokenSource::Header));
        }
        if let Some(token) = query_arg(&request.uri, &self.query) {
            return Some((token, TokenSource::Query));
        }
        request
            .headers
            .get_all(COOKIE)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(';'))
            .find_map(|pair| {
                let (name, value) = pair.trim().split_once('=')?;
                (name == self.cookie).then(|| (value.to_owned(), TokenSource::Cookie))
            })
    }
}

/// Where a request's token was.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
enum TokenSource {
    Header,
    Query,
    Cookie,
}

/// Why a token was refused.
fn check(
    token: &str,
    ctx: &RequestCtx<'_>,
    clock_skew_s: u64,
) -> Result<std::sync::Arc<super::ConsumerRuntime>, &'static str> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(signature), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("malformed token");
    };
    let decode = |part: &str| URL_SAFE_NO_PAD.decode(part).map_err(|_| "malformed token");
    let header: Value = serde_json::from_slice(&decode(header)?).map_err(|_| "malformed token")?;
    let claims: Value = serde_json::from_slice(&decode(payload)?).map_err(|_| "malformed token")?;
    let signature = decode(signature)?;
    let key = claims
        .get("key")
        .or_else(|| claims.get("iss"))
        .and_then(Value::as_str)
        .ok_or("the token names no key (claim \"key\" or \"iss\")")?;
    let consumer = ctx
        .consumers
        .by_jwt_key
        .get(key)
        .ok_or("no consumer has this token's key")?;
    let verifier = consumer
        .jwt
        .as_ref()
        .ok_or("no consumer has this token's key")?;
    if header.get("alg").and_then(Value::as_str) != Some(verifier.algorithm()) {
        return Err("the token's algorithm is not the consumer's");
    }
    let signing_input = &token[..token.rfind('.').ok_or("malformed token")?];
    if !verifier.verify(signing_input.as_bytes(), &signature) {
        return Err("invalid signature");
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default();
    if let Some(exp) = claims.get("exp") {
        let exp = exp.as_u64().ok_or("exp is not a number")?;
        if now > exp.saturating_add(clock_skew_s) {
            return Err("the token has expired");
        }
    }
    if let Some(nbf) = claims.get("nbf") {
        let nbf = nbf.as_u64().ok_or("nbf is not a number")?;
        if now.saturating_add(clock_skew_s) < nbf {
            return Err("the token is not valid yet");
        }
    }
    Ok(std::sync::Arc::clone(consumer))
}

impl Plugin for JwtAuth {
    fn name(&self) -> &'static str {
        "jwt-auth"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, request: &mut request::Parts) -> Access {
        let Some((token, source)) = self.token(request) else {
            return Access::Reject(reject(
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "missing token",
            ));
        };
        match check(&token, ctx, self.clock_skew_s) {
            Ok(consumer) => {
                // Wherever it came from, the token stays out of the node's requests and logs.
                if self.hide_credentials {
                    match source {
                        TokenSource::Header => drop(request.headers.remove(&self.header)),
                        TokenSource::Query => {
                            request.uri = without_query_arg(&request.uri, &self.query);
                        }
                        TokenSource::Cookie => remove_cookie(&mut request.headers, &self.cookie),
                    }
                }
                identify(ctx, request, &consumer);
                Access::Continue
            }
            Err(reason) => Access::Reject(reject(StatusCode::UNAUTHORIZED, "unauthorized", reason)),
        }
    }
}
