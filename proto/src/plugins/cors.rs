//! `cors`: Cross-Origin Resource Sharing, with preflights answered by the gateway.
//!
//! As in APISIX, `allow_origins`, `allow_methods`, `allow_headers` and `expose_headers` take a
//! comma-separated string; a JSON array of strings is accepted too. `*` means "any" (sent as
//! `*`); `**` means "any, even with credentials" (the request's own origin, method list or
//! headers are echoed back). With `allow_credential: true`, a plain `*` is refused: browsers
//! ignore `*` on credentialed requests, so such a config could never work.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::schema::{Violation, compile_regex};

/// The config schema.
pub fn schema() -> Value {
    let list = |default: &str| {
        json!({
            "oneOf": [
                {"type": "string", "maxLength": 4096, "pattern": "^[^\r\n]*$"},
                {"type": "array", "maxItems": 256, "items": {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": "^[^\r\n,]*$"}}
            ],
            "default": default
        })
    };
    json!({
        "type": "object",
        "properties": {
            "allow_origins": list("*"),
            "allow_origins_by_regex": {
                "type": "array", "minItems": 1, "maxItems": 64,
                "items": {"type": "string", "minLength": 1, "maxLength": 4096}
            },
            "allow_methods": list("*"),
            "allow_headers": list("*"),
            "expose_headers": list(""),
            "max_age": {"type": "integer", "minimum": -1, "maximum": 86400, "default": 5},
            "allow_credential": {"type": "boolean", "default": false}
        },
        "additionalProperties": false
    })
}

/// A comma-separated string or a list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum List {
    /// `"a,b"`.
    Joined(String),
    /// `["a", "b"]`.
    Items(Vec<String>),
}

impl List {
    /// The entries, trimmed, empty ones dropped.
    pub fn items(&self) -> Vec<String> {
        let raw: Vec<&str> = match self {
            List::Joined(text) => text.split(',').collect(),
            List::Items(items) => items.iter().map(String::as_str).collect(),
        };
        raw.into_iter()
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect()
    }
}

fn star() -> List {
    List::Joined("*".into())
}

fn empty() -> List {
    List::Joined(String::new())
}

/// The typed config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Origins allowed (`scheme://host[:port]`), `*` or `**`.
    #[serde(default = "star")]
    pub allow_origins: List,
    /// Origins allowed if one of these regular expressions matches the whole origin.
    #[serde(default)]
    pub allow_origins_by_regex: Vec<String>,
    /// Methods allowed, `*` or `**`.
    #[serde(default = "star")]
    pub allow_methods: List,
    /// Request headers allowed, `*` or `**`.
    #[serde(default = "star")]
    pub allow_headers: List,
    /// Response headers the browser may read.
    #[serde(default = "empty")]
    pub expose_headers: List,
    /// How long a preflight answer may be cached, seconds (-1: no `Access-Control-Max-Age`).
    #[serde(default = "default_max_age")]
    pub max_age: i64,
    /// Allow credentials (cookies, `Authorization`).
    #[serde(default)]
    pub allow_credential: bool,
}

fn default_max_age() -> i64 {
    5
}

/// Semantic rules: regular expressions compile; no `*` together with credentials.
pub fn check(config: &Value, at: &str, out: &mut Vec<Violation>) {
    let Ok(config) = serde_json::from_value::<Config>(config.clone()) else {
        return;
    };
    for (i, pattern) in config.allow_origins_by_regex.iter().enumerate() {
        if let Err(message) = compile_regex(&format!("^(?:{pattern})$")) {
            out.push(Violation::new(
                format!("{at}/allow_origins_by_regex/{i}"),
                message,
            ));
        }
    }
    if config.allow_credential {
        for (field, list) in [
            ("allow_origins", &config.allow_origins),
            ("allow_methods", &config.allow_methods),
            ("allow_headers", &config.allow_headers),
            ("expose_headers", &config.expose_headers),
        ] {
            if list.items().iter().any(|item| item == "*") {
                out.push(Violation::new(
                    format!("{at}/{field}"),
                    "\"*\" cannot be used with allow_credential: true (browsers ignore it); \
                     list the values, or use \"**\" to echo the request's",
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Kind;
    use crate::schema::validate_resource;

    fn pointers(plugin: serde_json::Value) -> Vec<String> {
        let route = json!({"paths": ["/"], "upstream_id": "u", "plugins": {"cors": plugin}});
        match validate_resource(Kind::Routes, &route) {
            Ok(_) => Vec::new(),
            Err(violations) => violations.into_iter().map(|v| v.pointer).collect(),
        }
    }

    #[test]
    fn lists_regexes_and_credentials() {
        assert!(pointers(json!({})).is_empty());
        assert!(
            pointers(
                json!({"allow_origins": ["https://a", "https://b"], "allow_methods": "GET,POST"})
            )
            .is_empty()
        );
        assert!(pointers(json!({"allow_credential": true, "allow_origins": "**", "allow_methods": "GET", "allow_headers": "**"})).is_empty());
        assert_eq!(
            pointers(json!({"allow_credential": true, "allow_origins": "https://a"})),
            ["/plugins/cors/allow_methods", "/plugins/cors/allow_headers"]
        );
        assert_eq!(
            pointers(json!({"allow_origins_by_regex": ["ok", "("]})),
            ["/plugins/cors/allow_origins_by_regex/1"]
        );
        assert!(!pointers(json!({"max_age": "5"})).is_empty());
        assert!(!pointers(json!({"origins": "*"})).is_empty());
        let config: super::Config =
            serde_json::from_value(json!({"allow_origins": " a , ,b"})).unwrap();
        assert_eq!(config.allow_origins.items(), ["a", "b"]);
        assert_eq!(config.max_age, 5);
    }
}
