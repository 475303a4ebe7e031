//! `cors`: Cross-Origin Resource Sharing, with preflights answered by the gateway.
//!
//! As in APISIX, `allow_origins`, `allow_methods`, `allow_headers` and `expose_headers` take a
//! comma-separated string; a JSON array of strings is accepted too. `*` means "any" (sent as
//! `*`); `**` means "any, even with credentials" (the request's own origin, method list or
//! headers are echoed back). With `allow_credential: true`, a plain `*` is refused: browsers
//! ignore `*` on credentialed requests, so such a config could never work. The schema says so
//! (a rule across fields), so a client validating against it is refused the same way.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::schema::{Violation, compile_regex};

/// The config schema.
pub fn schema() -> Value {
    let list = |default: &str| {
        // A string or an array: each keyword below applies to one of the two types only.
        json!({
            "type": ["string", "array"],
            "maxLength": 4096,
            "pattern": "^[^\r\n]*$",
            "maxItems": 256,
            "items": {"type": "string", "minLength": 1, "maxLength": 1024, "pattern": "^[^\r\n,]*$"},
            "default": default
        })
    };
    let no_star =
        json!({"pattern": no_star_pattern(true), "items": {"pattern": no_star_pattern(false)}});
    let mut regex = crate::schema::regex_value_schema();
    regex["minLength"] = 1.into();
    regex["maxLength"] = 4096.into();
    json!({
        "type": "object",
        "properties": {
            "allow_origins": list("*"),
            "allow_origins_by_regex": {
                "type": "array", "minItems": 1, "maxItems": 64,
                "description": "Origins allowed if one of these regular expressions matches the whole origin.",
                "items": regex
            },
            "allow_methods": list("*"),
            "allow_headers": list("*"),
            "expose_headers": list(""),
            "max_age": {"type": "integer", "minimum": -1, "maximum": 86400, "default": 5},
            "allow_credential": {"type": "boolean", "default": false}
        },
        "additionalProperties": false,
        "allOf": [crate::schema::rule(
            "\"*\" cannot be used with allow_credential: true (browsers ignore it); list the \
             values, or use \"**\" to echo the request's (allow_origins, allow_methods and \
             allow_headers default to \"*\", so they must be given)",
            json!({
                "if": {"properties": {"allow_credential": {"const": true}}, "required": ["allow_credential"]},
                "then": {
                    "required": ["allow_origins", "allow_methods", "allow_headers"],
                    "properties": {
                        "allow_origins": no_star,
                        "allow_methods": no_star,
                        "allow_headers": no_star,
                        "expose_headers": no_star
                    }
                }
            }),
        )]
    })
}

/// The characters [`List::items`] trims: Rust's white space, which ECMA-262's `\s` is not (it
/// lacks U+0085), as the body of a regex class.
const SPACE: &str =
    "\\t\\n\\u000B\\f\\r \\u0085\\u00A0\\u1680\\u2000-\\u200A\\u2028\\u2029\\u202F\\u205F\\u3000";

/// The pattern of a list none of whose entries is `*` once trimmed: `joined`, a comma-separated
/// string; else one entry of an array. Said without look-around or `not`, so that generators
/// draw from it directly: an entry is not `*` when it holds a character other than space and
/// `*`, or no `*` at all, or two of them.
fn no_star_pattern(joined: bool) -> String {
    let entry =
        format!("([^,]*[^,*{SPACE}][^,]*|[{SPACE}]*|[{SPACE}]*\\*[{SPACE}]*\\*[*{SPACE}]*)");
    if joined {
        format!("^{entry}(,{entry})*$")
    } else {
        format!("^{entry}$")
    }
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

/// The rule the schema cannot say: the regular expressions compile with the data plane's
/// engine (the schema marks them `format: regex`).
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
