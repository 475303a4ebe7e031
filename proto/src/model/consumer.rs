//! Consumers (who is calling: credentials and per-consumer plugins) and global rules (plugins
//! that run on every route).

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};
use serde_json::Value;

pub use crate::plugins::auth::Credentials;

/// A client identity with its credentials and plugins.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Consumer {
    /// Display name; defaults to the consumer's id.
    #[serde(default)]
    pub username: Option<String>,
    /// Credentials per authentication scheme.
    #[serde(default)]
    pub credentials: Credentials,
    /// Plugins applied to this consumer's requests; they win over the route's and global ones.
    #[serde(default)]
    pub plugins: BTreeMap<String, Value>,
}

/// Plugins that run on every route.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GlobalRule {
    /// Plugin name → config.
    pub plugins: BTreeMap<String, Value>,
}

/// Credentials that would identify two consumers at once, as `(consumer, message)` pairs.
///
/// An API key, a basic-auth user name and a JWT key must each belong to one consumer only;
/// otherwise which consumer a request is would depend on iteration order.
pub fn credential_conflicts<'a>(
    consumers: impl IntoIterator<Item = (&'a str, &'a Consumer)>,
) -> Vec<(String, String)> {
    let mut seen: HashMap<(&'static str, String), &str> = HashMap::new();
    let mut conflicts = Vec::new();
    for (id, consumer) in consumers {
        let credentials = &consumer.credentials;
        let mut claims: Vec<(&'static str, String)> = Vec::new();
        if let Some(digest) = credentials.key_auth.as_ref().and_then(|k| k.digest()) {
            claims.push(("key-auth key", digest));
        }
        if let Some(basic) = &credentials.basic_auth {
            claims.push(("basic-auth username", basic.username.clone()));
        }
        if let Some(jwt) = &credentials.jwt_auth {
            claims.push(("jwt-auth key", jwt.key.clone()));
        }
        for claim in claims {
            let what = claim.0;
            if let Some(other) = seen.get(&claim) {
                if *other != id {
                    conflicts.push((
                        id.to_owned(),
                        format!("consumers/{id} uses the same {what} as consumers/{other}"),
                    ));
                }
            } else {
                seen.insert(claim, id);
            }
        }
    }
    conflicts
}
