//! Bearer-token authentication. Tokens are stored as SHA-256 digests only; a request's token is
//! hashed and looked up, so neither the store nor memory holds a usable token.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::store::{Store, StoreError, TokenRecord};

/// The role with every permission.
pub const ROLE_ADMIN: &str = "admin";
/// A role that may only read.
pub const ROLE_VIEWER: &str = "viewer";

/// Who made a request: the token's name, recorded as a version's author.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// The token's role.
    pub role: String,
}

/// The known tokens, by digest.
#[derive(Clone, Debug, Default)]
pub struct Tokens {
    by_digest: HashMap<String, Caller>,
}

impl Tokens {
    /// Builds the lookup from stored records.
    pub fn new(records: Vec<TokenRecord>) -> Tokens {
        Tokens {
            by_digest: records
                .into_iter()
                .map(|r| {
                    (
                        r.sha256,
                        Caller {
                            name: r.name,
                            role: r.role,
                        },
                    )
                })
                .collect(),
        }
    }

    fn caller(&self, token: &str) -> Option<&Caller> {
        self.by_digest.get(&digest(token))
    }
}

/// SHA-256 of a token, lowercase hex.
pub fn digest(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}

/// What startup did about the bootstrap token.
#[derive(Debug, PartialEq, Eq)]
pub enum Bootstrap {
    /// The token given by flag or environment is stored (replacing the previous `admin` token).
    FromFlag,
    /// The store had no token: this one was generated; it is shown once and never again.
    Generated(String),
    /// The store already had tokens and none was given.
    Existing,
}

/// Ensures an admin token exists: the given one, else a generated one if the store has none.
pub async fn bootstrap(store: &Store, given: Option<&str>) -> Result<Bootstrap, StoreError> {
    let (token, outcome) = match given {
        Some(token) => (token.to_owned(), Bootstrap::FromFlag),
        None if store.tokens().await?.is_empty() => {
            let token = generate_token()?;
            (token.clone(), Bootstrap::Generated(token))
        }
        None => return Ok(Bootstrap::Existing),
    };
    store
        .put_token(&TokenRecord {
            name: ROLE_ADMIN.into(),
            sha256: digest(&token),
            role: ROLE_ADMIN.into(),
        })
        .await?;
    Ok(outcome)
}

fn generate_token() -> Result<String, StoreError> {
    let mut bytes = [0u8; 24];
    getrandom::fill(&mut bytes)
        .map_err(|e| StoreError::Unavailable(format!("no randomness for a token: {e}")))?;
    Ok(format!("gw_{}", hex::encode(bytes)))
}

/// Middleware: refuses calls without a known bearer token (401) or whose role forbids them (403).
pub async fn require_token(
    State(tokens): State<Arc<Tokens>>,
    mut request: Request,
    next: Next,
) -> Result<Response, ApiError> {
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            let (scheme, token) = v.split_once(' ')?;
            scheme.eq_ignore_ascii_case("bearer").then(|| token.trim())
        })
        .ok_or(ApiError::Unauthorized)?;
    let caller = tokens.caller(token).ok_or(ApiError::Unauthorized)?.clone();
    let reads_only = matches!(*request.method(), Method::GET | Method::HEAD);
    if caller.role != ROLE_ADMIN && !(caller.role == ROLE_VIEWER && reads_only) {
        return Err(ApiError::Forbidden(format!(
            "the {:?} role may not {} this resource",
            caller.role,
            request.method()
        )));
    }
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}
