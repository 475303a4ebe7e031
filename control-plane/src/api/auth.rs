//! Bearer-token authentication and roles. Tokens are stored as SHA-256 digests only; a
//! request's token is hashed and looked up in the store on every call, so a token revoked
//! through any replica is refused by every replica from the next call on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{Method, header};
use axum::middleware::Next;
use axum::response::Response;
use sha2::{Digest, Sha256};

use super::error::ApiError;
use crate::store::{Store, StoreError, TokenRecord, now_ms};

/// The role with every permission, tokens included.
pub const ROLE_ADMIN: &str = "admin";
/// A role that may change config and roll back, but not manage tokens.
pub const ROLE_EDITOR: &str = "editor";
/// A role that may only read.
pub const ROLE_VIEWER: &str = "viewer";
/// Every role, most powerful first.
pub const ROLES: [&str; 3] = [ROLE_ADMIN, ROLE_EDITOR, ROLE_VIEWER];

/// How often one replica records a token's `last_used_at`: reads stay reads.
const TOUCH_EVERY: Duration = Duration::from_secs(60);

/// Who made a request: the token's name, recorded as a version's author.
#[derive(Clone, Debug)]
pub struct Caller {
    /// The token's name.
    pub name: String,
    /// The token's role.
    pub role: String,
}

/// Token lookup: the store on every call; the last answer per digest only while the store is
/// unreachable (so reads keep working through an outage, when no token can be revoked). A
/// token not seen before the outage gets 503.
#[derive(Debug)]
pub struct Tokens {
    store: Store,
    last_known: Mutex<HashMap<String, Known>>,
}

#[derive(Debug)]
struct Known {
    caller: Caller,
    touched: Instant,
}

impl Tokens {
    /// Looks tokens up in `store`.
    pub fn new(store: Store) -> Tokens {
        Tokens {
            store,
            last_known: Mutex::new(HashMap::new()),
        }
    }

    async fn caller(&self, token: &str) -> Result<Option<Caller>, ApiError> {
        let digest = digest(token);
        let record = match self.store.token_by_digest(&digest).await {
            Ok(record) => record,
            Err(StoreError::Unavailable(reason)) => {
                let known = self.last_known.lock().unwrap_or_else(|p| p.into_inner());
                // A token this replica has not seen yet cannot be told from a wrong one while
                // the store is away: 503, not 401, so a client retries rather than gives up.
                return match known.get(&digest) {
                    Some(known) => Ok(Some(known.caller.clone())),
                    None => Err(StoreError::Unavailable(reason).into()),
                };
            }
            Err(error) => return Err(error.into()),
        };
        let mut known = self.last_known.lock().unwrap_or_else(|p| p.into_inner());
        let Some(TokenRecord { name, role, .. }) = record else {
            known.remove(&digest);
            return Ok(None);
        };
        let caller = Caller { name, role };
        let touch = match known.get_mut(&digest) {
            Some(entry) => {
                entry.caller = caller.clone();
                let due = entry.touched.elapsed() >= TOUCH_EVERY;
                if due {
                    entry.touched = Instant::now();
                }
                due
            }
            None => {
                known.insert(
                    digest,
                    Known {
                        caller: caller.clone(),
                        touched: Instant::now(),
                    },
                );
                true
            }
        };
        drop(known);
        if touch {
            let (store, name) = (self.store.clone(), caller.name.clone());
            // Off the request: a slow store delays the record, not the call.
            tokio::spawn(async move {
                if let Err(error) = store.touch_token(&name, now_ms()).await {
                    tracing::debug!(%error, token = %name, "could not record last_used_at");
                }
            });
        }
        Ok(Some(caller))
    }
}

/// Whether `role` may make this call. Tokens are the admin's alone; editors change config;
/// viewers read (and validate, which writes nothing).
pub fn permits(role: &str, method: &Method, path: &str) -> bool {
    let reads = matches!(*method, Method::GET | Method::HEAD);
    let tokens = path == "/api/v1/tokens" || path.starts_with("/api/v1/tokens/");
    let validates = *method == Method::POST && path.starts_with("/api/v1/validate/");
    match role {
        ROLE_ADMIN => true,
        ROLE_EDITOR => !tokens,
        ROLE_VIEWER => !tokens && (reads || validates),
        _ => false,
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
        .put_token(&TokenRecord::new(ROLE_ADMIN, digest(&token), ROLE_ADMIN))
        .await?;
    Ok(outcome)
}

/// A new random token: `gw_` and 48 hex digits (192 bits).
pub fn generate_token() -> Result<String, StoreError> {
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
    let caller = tokens.caller(token).await?.ok_or(ApiError::Unauthorized)?;
    if !permits(&caller.role, request.method(), request.uri().path()) {
        return Err(ApiError::Forbidden(format!(
            "the {:?} role may not {} {}",
            caller.role,
            request.method(),
            request.uri().path()
        )));
    }
    request.extensions_mut().insert(caller);
    Ok(next.run(request).await)
}
