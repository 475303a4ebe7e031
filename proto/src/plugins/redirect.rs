//! `redirect`: answers a request with a redirect instead of proxying it, as APISIX's plugin
//! does.
//!
//! - `http_to_https: true`: a request that did not come over TLS (and whose
//!   `X-Forwarded-Proto` does not say `https`) goes to `https://<host>[:<tls port>]<path>?<query>`,
//!   with 301 for GET and HEAD and 308 for other methods (they keep their body), unless
//!   `ret_code` says otherwise. The port is the data plane's `--tls-listen` port, left out when
//!   it is 443 or there is no TLS listener.
//! - `uri`: the `Location`, a template with `$uri` (the path), `$request_uri` (path and
//!   query), `$host`, `$scheme` and `$args` (the query).
//! - `regex_uri`: `[pattern, replacement]`: when the pattern matches the path, the first match
//!   replaced (`$1`, `${name}`) is the `Location`; otherwise the request goes on.
//! - `ret_code` (default 302 for `uri` and `regex_uri`); `append_query_string` appends the
//!   client's query to a `uri` or `regex_uri` target.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::schema::{Violation, rule};

/// A variable of a `uri` template.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Var {
    /// `$uri`: the request's path.
    Uri,
    /// `$request_uri`: the path and the query (`?…` when there is one).
    RequestUri,
    /// `$host`: the request's host, without a port.
    Host,
    /// `$scheme`: `http` or `https`.
    Scheme,
    /// `$args` (also `$query_string`): the query, without `?`.
    Args,
}

/// A piece of a `uri` template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Part {
    /// Copied as is.
    Literal(String),
    /// Replaced with the request's value.
    Var(Var),
}

/// Parses a `uri` template. `$` followed by a name that is not a variable is refused; `$$` is
/// a `$`.
pub fn parse_template(template: &str) -> Result<Vec<Part>, String> {
    let mut parts = Vec::new();
    let mut literal = String::new();
    let mut rest = template;
    while let Some(at) = rest.find('$') {
        literal.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        if let Some(tail) = after.strip_prefix('$') {
            literal.push('$');
            rest = tail;
            continue;
        }
        let name_len = after
            .bytes()
            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'_')
            .count();
        let var = match &after[..name_len] {
            "uri" => Var::Uri,
            "request_uri" => Var::RequestUri,
            "host" => Var::Host,
            "scheme" => Var::Scheme,
            "args" | "query_string" => Var::Args,
            other => {
                return Err(format!(
                    "${other} is not a variable: $uri, $request_uri, $host, $scheme, $args ($$ for a $)"
                ));
            }
        };
        if !literal.is_empty() {
            parts.push(Part::Literal(std::mem::take(&mut literal)));
        }
        parts.push(Part::Var(var));
        rest = &after[name_len..];
    }
    literal.push_str(rest);
    if !literal.is_empty() {
        parts.push(Part::Literal(literal));
    }
    Ok(parts)
}

/// The config schema.
pub fn schema() -> Value {
    let mut pattern = crate::schema::regex_value_schema();
    pattern["minLength"] = 1.into();
    pattern["maxLength"] = 4096.into();
    json!({
        "type": "object",
        "properties": {
            "http_to_https": {"type": "boolean", "description": "Send requests that did not come over TLS to the same URL over https."},
            "uri": {
                "type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^[^\\s]+$",
                "description": "The Location: a template with $uri, $request_uri, $host, $scheme, $args."
            },
            "regex_uri": {
                "type": "array", "minItems": 2, "maxItems": 2,
                "description": "[pattern, replacement]: when pattern matches the path, the Location is the path with the first match replaced ($1, ${name}).",
                "prefixItems": [pattern, {"type": "string", "minLength": 1, "maxLength": 4096, "pattern": "^[^\\s]+$"}],
                "items": false
            },
            "ret_code": {
                "type": "integer", "minimum": 300, "maximum": 399,
                "description": "The redirect's status: 302 by default for uri and regex_uri; for http_to_https 301 (GET, HEAD) or 308 (other methods)."
            },
            "append_query_string": {"type": "boolean", "default": false, "description": "Append the client's query to a uri or regex_uri Location."}
        },
        "allOf": [
            rule(
                "one of http_to_https, uri and regex_uri is required",
                json!({"anyOf": [{"required": ["http_to_https"]}, {"required": ["uri"]}, {"required": ["regex_uri"]}]})
            ),
            rule(
                "uri rules out regex_uri and http_to_https",
                json!({"if": {"required": ["uri"]}, "then": {"properties": {"regex_uri": false, "http_to_https": false}}})
            ),
            rule(
                "regex_uri rules out http_to_https",
                json!({"if": {"required": ["regex_uri"]}, "then": {"properties": {"http_to_https": false}}})
            ),
            rule(
                "http_to_https keeps the query already: append_query_string is for uri and regex_uri",
                json!({"if": {"required": ["http_to_https"]}, "then": {"properties": {"append_query_string": false}}})
            )
        ],
        "additionalProperties": false
    })
}

/// The typed config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Redirect plaintext requests to https.
    #[serde(default)]
    pub http_to_https: bool,
    /// The Location template.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uri: Option<String>,
    /// `[pattern, replacement]` applied to the path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub regex_uri: Option<Vec<String>>,
    /// The status.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ret_code: Option<u16>,
    /// Append the client's query to the Location.
    #[serde(default)]
    pub append_query_string: bool,
}

/// The rules the schema cannot say: `regex_uri`'s pattern compiles with the data plane's
/// engine, and `uri` names only variables there are.
pub fn check(config: &Value, at: &str, out: &mut Vec<Violation>) {
    super::proxy_rewrite::check_regex_uri(config, at, out);
    if let Some(uri) = config.get("uri").and_then(Value::as_str)
        && let Err(message) = parse_template(uri)
    {
        out.push(Violation::new(format!("{at}/uri"), message));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Kind;
    use crate::schema::validate_resource;

    fn pointers(plugin: Value) -> Vec<String> {
        let route = json!({"paths": ["/"], "upstream_id": "u", "plugins": {"redirect": plugin}});
        match validate_resource(Kind::Routes, &route) {
            Ok(_) => Vec::new(),
            Err(violations) => violations.into_iter().map(|v| v.pointer).collect(),
        }
    }

    #[test]
    fn configs_are_checked_with_pointers() {
        for good in [
            json!({"http_to_https": true}),
            json!({"http_to_https": true, "ret_code": 302}),
            json!({"uri": "https://$host/new$request_uri", "ret_code": 301}),
            json!({"regex_uri": ["^/old/(.*)", "/new/$1"], "append_query_string": true}),
        ] {
            assert!(pointers(good.clone()).is_empty(), "{good}");
        }
        assert!(!pointers(json!({})).is_empty());
        assert!(!pointers(json!({"uri": "/a", "http_to_https": true})).is_empty());
        assert!(!pointers(json!({"uri": "/a", "ret_code": 200})).is_empty());
        assert_eq!(
            pointers(json!({"uri": "/a/$nope"})),
            ["/plugins/redirect/uri"]
        );
        assert_eq!(
            pointers(json!({"regex_uri": ["(", "/"]})),
            ["/plugins/redirect/regex_uri/0"]
        );
    }

    #[test]
    fn templates_parse_into_literals_and_variables() {
        assert_eq!(
            parse_template("https://$host:8443$request_uri?x=$$1").unwrap(),
            [
                Part::Literal("https://".into()),
                Part::Var(Var::Host),
                Part::Literal(":8443".into()),
                Part::Var(Var::RequestUri),
                Part::Literal("?x=$1".into()),
            ]
        );
        assert!(parse_template("/$1").is_err());
        assert!(parse_template("/$").is_err());
    }
}
