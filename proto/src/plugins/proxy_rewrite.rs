//! `proxy-rewrite`: changes the request before it goes upstream — `uri` (or `regex_uri` with
//! `$1`-style captures), `host`, `method` and headers (`add`, `set`, `remove`), as in APISIX.
//!
//! `uri` replaces the path; the client's query string is kept (appended with `&` when the new
//! uri has one of its own). `regex_uri` is `[pattern, replacement]`: when the pattern matches
//! the path, the first match is replaced (`$1`, `${name}`); otherwise the path is unchanged.
//! `uri` wins when both are set.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::schema::{Violation, compile_regex};

/// A header name.
pub const HEADER_NAME_PATTERN: &str = "^[!#$%&'*+.^_`|~0-9A-Za-z-]+$";

/// The schema of `headers`: `{"add": {name: value}, "set": {name: value}, "remove": [name]}`.
pub fn header_ops_schema() -> Value {
    let values = json!({
        "type": "object",
        "maxProperties": 64,
        "propertyNames": {"pattern": HEADER_NAME_PATTERN, "maxLength": 256},
        "additionalProperties": {"type": "string", "maxLength": 4096, "pattern": "^[^\\x00-\\x08\\x0a-\\x1f\\x7f]*$"}
    });
    json!({
        "type": "object",
        "properties": {
            "add": values,
            "set": values,
            "remove": {
                "type": "array", "maxItems": 64,
                "items": {"type": "string", "pattern": HEADER_NAME_PATTERN, "maxLength": 256}
            }
        },
        "additionalProperties": false
    })
}

/// Header changes, applied in the order remove, set, add (as APISIX does).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeaderOps {
    /// Appended, keeping values already there.
    #[serde(default)]
    pub add: BTreeMap<String, String>,
    /// Replace any values already there.
    #[serde(default)]
    pub set: BTreeMap<String, String>,
    /// Removed.
    #[serde(default)]
    pub remove: Vec<String>,
}

/// The config schema.
pub fn schema() -> Value {
    let mut pattern = crate::schema::regex_value_schema();
    pattern["minLength"] = 1.into();
    pattern["maxLength"] = 4096.into();
    json!({
        "type": "object",
        "properties": {
            "uri": {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^/[^\\s]*$"},
            "regex_uri": {
                "type": "array", "minItems": 2, "maxItems": 2,
                "description": "[pattern, replacement]: the first match of pattern in the path is replaced ($1, ${name}).",
                "prefixItems": [pattern, {"type": "string", "minLength": 1, "maxLength": 4096}],
                "items": false
            },
            "host": {"type": "string", "minLength": 1, "maxLength": 255, "pattern": "^[A-Za-z0-9.:\\[\\]-]+$"},
            "method": {"enum": ["GET", "POST", "PUT", "HEAD", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT", "MKCOL", "COPY", "MOVE", "PROPFIND", "LOCK", "UNLOCK"]},
            "headers": header_ops_schema()
        },
        "additionalProperties": false
    })
}

/// The typed config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The new path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `[pattern, replacement]` applied to the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_uri: Option<Vec<String>>,
    /// The upstream `Host` (wins over the upstream's `pass_host`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The upstream method.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    /// Header changes.
    #[serde(default)]
    pub headers: HeaderOps,
}

/// The rule the schema cannot say: `regex_uri`'s pattern compiles with the data plane's engine.
pub fn check(config: &Value, at: &str, out: &mut Vec<Violation>) {
    check_regex_uri(config, at, out);
}

/// `regex_uri`'s pattern (`[pattern, replacement]`, as `proxy-rewrite` and `redirect` take it)
/// compiles with the data plane's engine.
pub fn check_regex_uri(config: &Value, at: &str, out: &mut Vec<Violation>) {
    if let Some(pattern) = config.pointer("/regex_uri/0").and_then(Value::as_str)
        && let Err(message) = compile_regex(pattern)
    {
        out.push(Violation::new(format!("{at}/regex_uri/0"), message));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Kind;
    use crate::schema::validate_resource;

    fn pointers(name: &str, plugin: serde_json::Value) -> Vec<String> {
        let route = json!({"paths": ["/"], "upstream_id": "u", "plugins": {name: plugin}});
        match validate_resource(Kind::Routes, &route) {
            Ok(_) => Vec::new(),
            Err(violations) => violations.into_iter().map(|v| v.pointer).collect(),
        }
    }

    #[test]
    fn rewrites_are_checked_with_pointers() {
        let good = json!({"uri": "/x", "host": "a.svc", "method": "POST",
                          "headers": {"add": {"x-a": "1"}, "set": {"x-b": ""}, "remove": ["x-c"]}});
        assert!(pointers("proxy-rewrite", good).is_empty());
        assert_eq!(
            pointers("proxy-rewrite", json!({"regex_uri": ["(", "/"]})),
            ["/plugins/proxy-rewrite/regex_uri/0"]
        );
        assert!(!pointers("proxy-rewrite", json!({"regex_uri": ["^/a"]})).is_empty());
        assert!(!pointers("proxy-rewrite", json!({"uri": "no-slash"})).is_empty());
        assert!(
            !pointers(
                "proxy-rewrite",
                json!({"headers": {"set": {"bad name": "v"}}})
            )
            .is_empty()
        );
        assert!(
            !pointers(
                "proxy-rewrite",
                json!({"headers": {"set": {"x": "a\r\nb"}}})
            )
            .is_empty()
        );
        assert!(!pointers("proxy-rewrite", json!({"headers": {"x-a": "flat"}})).is_empty());
        assert!(
            pointers(
                "response-rewrite",
                json!({"status_code": 200, "body": "hi", "headers": {"remove": ["server"]}})
            )
            .is_empty()
        );
        assert!(!pointers("response-rewrite", json!({"status_code": 99})).is_empty());
        assert!(!pointers("response-rewrite", json!({"vars": []})).is_empty());
        assert!(pointers("request-id", json!({})).is_empty());
        assert!(!pointers("request-id", json!({"algorithm": "nanoid"})).is_empty());
        assert!(
            pointers(
                "limit-req",
                json!({"rate": 0.5, "burst": 0, "key": "consumer"})
            )
            .is_empty()
        );
        assert!(
            !pointers(
                "limit-req",
                json!({"rate": 0, "burst": 0, "key": "consumer"})
            )
            .is_empty()
        );
        assert!(!pointers("limit-req", json!({"rate": 1, "key": "consumer"})).is_empty());
        assert!(pointers("api-breaker", json!({"break_response_code": 502})).is_empty());
        assert!(
            !pointers(
                "api-breaker",
                json!({"break_response_code": 502, "unhealthy": {"http_statuses": [404]}})
            )
            .is_empty()
        );
        assert!(pointers("prometheus", json!({"prefer_name": true})).is_empty());
        assert!(!pointers("prometheus", json!({"x": 1})).is_empty());
    }
}
