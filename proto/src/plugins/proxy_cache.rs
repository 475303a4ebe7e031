//! `proxy-cache`: answers from a bounded in-memory cache of the data plane (APISIX's plugin of
//! that name with its `memory` strategy: `cache_ttl`, `cache_method`, `cache_http_status`,
//! `cache_key`, `cache_control`, `cache_bypass`), plus `max_size_mb` (the bound),
//! `stale_if_error_s` (RFC 5861's `stale-if-error`, set by the admin) and `purge_key` (the
//! secret a `PURGE` must carry in `X-Purge-Key`).
//!
//! The variables of `cache_key` and `cache_bypass` are parsed here ([`Var::parse`]), so the
//! schema's pattern and the data plane's compiler read them the same way.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The header a `PURGE` carries the configured `purge_key` in.
pub const PURGE_KEY_HEADER: &str = "x-purge-key";

/// Where a resource's `plugins` map keeps proxy-cache's `purge_key`: a secret the control
/// plane redacts on reads, like a JWT secret.
pub const PURGE_KEY_POINTER: &str = "/plugins/proxy-cache/purge_key";

/// The variables a key or bypass item may name (nginx's names, as APISIX takes them).
const VAR_PATTERN: &str = r"\$(host|uri|request_uri|scheme|request_method|arg_[A-Za-z0-9_.~-]{1,64}|http_[A-Za-z0-9_]{1,64})";

/// The config schema.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "cache_ttl": {
                "type": "integer", "minimum": 1, "maximum": 31_536_000, "default": 300,
                "description": "Seconds an answer stays fresh (with cache_control: unless the node's Cache-Control says otherwise)."
            },
            "cache_method": {
                "type": "array", "minItems": 1, "uniqueItems": true,
                "items": {"enum": ["GET", "HEAD"]},
                "default": ["GET", "HEAD"],
                "description": "Methods answered from the cache; a HEAD is answered from a GET's entry and never stored."
            },
            "cache_http_status": {
                "type": "array", "minItems": 1, "maxItems": 64, "uniqueItems": true,
                "items": {"type": "integer", "minimum": 200, "maximum": 599},
                "default": [200, 301, 404],
                "description": "Statuses whose answers are stored."
            },
            "cache_key": {
                "type": "array", "minItems": 1, "maxItems": 32,
                "items": {
                    "type": "string", "minLength": 1, "maxLength": 256,
                    "pattern": format!("^({VAR_PATTERN}|[^$]*)$"),
                    "description": "A variable ($host, $uri, $request_uri, $scheme, $request_method, $arg_NAME, $http_NAME) or literal text without `$`."
                },
                "default": ["$host", "$request_uri"],
                "description": "The pieces of an entry's key, concatenated."
            },
            "cache_control": {
                "type": "boolean", "default": false,
                "description": "Honour Cache-Control (no-store, no-cache, private, max-age, s-maxage) of requests and answers, and Authorization (RFC 9111)."
            },
            "cache_bypass": {
                "type": "array", "maxItems": 32,
                "items": {"type": "string", "pattern": format!("^{VAR_PATTERN}$")},
                "default": [],
                "description": "Variables; when one is non-empty (and not \"0\") the request bypasses the cache."
            },
            "max_size_mb": {
                "type": "integer", "minimum": 1, "maximum": 4096, "default": 64,
                "description": "The bound on the cache's memory: keys, headers and bodies."
            },
            "stale_if_error_s": {
                "type": "integer", "minimum": 0, "maximum": 86_400, "default": 0,
                "description": "Seconds past its expiry an entry may still be served (STALE) when the upstream fails: connect error, timeout or 5xx."
            },
            "purge_key": {
                "type": "string", "minLength": 8, "maxLength": 256, "pattern": "^[!-~]+$",
                "description": "The secret a PURGE must carry in X-Purge-Key to remove an entry; without it PURGE is refused. Redacted on reads; writing \"<redacted>\" back keeps the stored key."
            }
        },
        "additionalProperties": false
    })
}

/// The typed config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Seconds an answer stays fresh.
    #[serde(default = "default_ttl")]
    pub cache_ttl: u64,
    /// Methods answered from the cache.
    #[serde(default = "default_methods")]
    pub cache_method: Vec<String>,
    /// Statuses whose answers are stored.
    #[serde(default = "default_statuses")]
    pub cache_http_status: Vec<u16>,
    /// The key's pieces.
    #[serde(default = "default_key")]
    pub cache_key: Vec<String>,
    /// Honour `Cache-Control`.
    #[serde(default)]
    pub cache_control: bool,
    /// Variables that bypass the cache when non-empty.
    #[serde(default)]
    pub cache_bypass: Vec<String>,
    /// The bound, in MiB.
    #[serde(default = "default_size")]
    pub max_size_mb: u64,
    /// Seconds an expired entry may be served when the upstream fails.
    #[serde(default)]
    pub stale_if_error_s: u64,
    /// The secret of `PURGE`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub purge_key: Option<String>,
}

fn default_ttl() -> u64 {
    300
}

fn default_methods() -> Vec<String> {
    vec!["GET".into(), "HEAD".into()]
}

fn default_statuses() -> Vec<u16> {
    vec![200, 301, 404]
}

fn default_key() -> Vec<String> {
    vec!["$host".into(), "$request_uri".into()]
}

fn default_size() -> u64 {
    64
}

/// A variable of a key or bypass item.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Var {
    /// `$host`: the host the client asked for, without its port.
    Host,
    /// `$uri`: the normalised path.
    Uri,
    /// `$request_uri`: the normalised path and the query as sent.
    RequestUri,
    /// `$scheme`: `http` or `https`.
    Scheme,
    /// `$request_method`.
    Method,
    /// `$arg_NAME`: the first value of query argument NAME (raw).
    Arg(String),
    /// `$http_NAME`: request header NAME, `_` read as `-` (nginx's convention), lowercased.
    Header(String),
}

impl Var {
    /// The variable `text` names (`$host`, `$arg_id`, …), or `None` when it names none.
    pub fn parse(text: &str) -> Option<Var> {
        let name = text.strip_prefix('$')?;
        let var = match name {
            "host" => Var::Host,
            "uri" => Var::Uri,
            "request_uri" => Var::RequestUri,
            "scheme" => Var::Scheme,
            "request_method" => Var::Method,
            _ => {
                if let Some(arg) = name.strip_prefix("arg_") {
                    let ok = arg
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"_.~-".contains(&b));
                    (!arg.is_empty() && arg.len() <= 64 && ok).then(|| Var::Arg(arg.to_owned()))?
                } else if let Some(header) = name.strip_prefix("http_") {
                    let ok = header
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_');
                    (!header.is_empty() && header.len() <= 64 && ok)
                        .then(|| Var::Header(header.to_ascii_lowercase().replace('_', "-")))?
                } else {
                    return None;
                }
            }
        };
        Some(var)
    }
}

/// A piece of a cache key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyPart {
    /// Text copied as is.
    Literal(String),
    /// A value of the request.
    Var(Var),
}

impl KeyPart {
    /// Reads one `cache_key` item: a variable when it starts with `$`, else literal text.
    /// `None`: a `$` item that names no variable.
    pub fn parse(text: &str) -> Option<KeyPart> {
        if text.starts_with('$') {
            Var::parse(text).map(KeyPart::Var)
        } else if text.contains('$') {
            None
        } else {
            Some(KeyPart::Literal(text.to_owned()))
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::Kind;
    use crate::schema::validate_resource;

    fn pointers(plugin: serde_json::Value) -> Vec<String> {
        let route = json!({"paths": ["/"], "upstream_id": "u", "plugins": {"proxy-cache": plugin}});
        match validate_resource(Kind::Routes, &route) {
            Ok(_) => Vec::new(),
            Err(violations) => violations.into_iter().map(|v| v.pointer).collect(),
        }
    }

    #[test]
    fn the_schema_takes_the_documented_config_and_refuses_the_rest() {
        assert!(pointers(json!({})).is_empty());
        assert!(
            pointers(json!({"cache_ttl": 300, "cache_method": ["GET", "HEAD"],
                "cache_http_status": [200, 301, 404], "cache_key": ["$host", "$request_uri", "|v1"],
                "cache_control": true, "cache_bypass": ["$arg_nocache", "$http_x_no_cache"],
                "max_size_mb": 64, "stale_if_error_s": 30, "purge_key": "s3cret-purge"}))
            .is_empty()
        );
        assert_eq!(
            pointers(json!({"cache_key": ["$hots"]})),
            ["/plugins/proxy-cache/cache_key/0"]
        );
        assert_eq!(
            pointers(json!({"cache_bypass": ["nocache"]})),
            ["/plugins/proxy-cache/cache_bypass/0"]
        );
        assert_eq!(
            pointers(json!({"cache_method": ["POST"]})),
            ["/plugins/proxy-cache/cache_method/0"]
        );
        assert_eq!(
            pointers(json!({"max_size_mb": 0})),
            ["/plugins/proxy-cache/max_size_mb"]
        );
        assert_eq!(
            pointers(json!({"purge_key": "short"})),
            ["/plugins/proxy-cache/purge_key"]
        );
        assert!(!pointers(json!({"other": 1})).is_empty());
        let config: Config = serde_json::from_value(json!({})).unwrap();
        assert_eq!(
            (
                config.cache_ttl,
                config.cache_method,
                config.cache_http_status,
                config.cache_key,
                config.max_size_mb
            ),
            (
                300,
                vec!["GET".to_owned(), "HEAD".to_owned()],
                vec![200, 301, 404],
                vec!["$host".to_owned(), "$request_uri".to_owned()],
                64
            )
        );
    }

    #[test]
    fn the_pattern_and_the_parser_agree_on_every_item() {
        let item = jsonschema::validator_for(&schema()["properties"]["cache_key"]["items"])
            .expect("compiles");
        for text in [
            "$host",
            "$uri",
            "$request_uri",
            "$scheme",
            "$request_method",
            "$arg_id",
            "$arg_a.b~c-d",
            "$http_accept_language",
            "$http_X_Tenant",
            "literal",
            "|",
            "$",
            "$hostx",
            "$arg_",
            "$http_a-b",
            "a$host",
            "$arg_a b",
        ] {
            assert_eq!(
                item.is_valid(&json!(text)),
                KeyPart::parse(text).is_some(),
                "{text}"
            );
        }
        assert_eq!(
            Var::parse("$http_X_Tenant"),
            Some(Var::Header("x-tenant".into()))
        );
        assert_eq!(Var::parse("$arg_id"), Some(Var::Arg("id".into())));
    }
}
