//! `proxy-rewrite`: changes the request before it goes upstream (rewrite phase, so the
//! plugins after it — authentication, limits — already see the rewritten request, as in
//! APISIX).
//!
//! - `uri` replaces the path; the client's query string is kept (joined with `&` when the new
//!   uri carries its own).
//! - `regex_uri` `[pattern, replacement]` replaces the first match in the path (`$1`,
//!   `${name}`); a path the pattern does not match is left alone. `uri` wins over it.
//! - `host` becomes the upstream `Host` through `RequestCtx::host_override`.
//! - `method` replaces the method.
//! - `headers`: `remove`, then `set`, then `add`.

use http::header::HeaderName;
use http::uri::PathAndQuery;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, request};
use regex::bytes::Regex;
use serde_json::Value;

use super::{Plugin, Reject, RequestCtx, reject};
use gateway_proto::plugins::proxy_rewrite::{Config, HeaderOps};
use gateway_proto::schema::compile_regex;

/// Header changes, compiled: names and values checked once.
#[derive(Debug, Default)]
pub struct CompiledHeaderOps {
    remove: Vec<HeaderName>,
    set: Vec<(HeaderName, HeaderValue)>,
    add: Vec<(HeaderName, HeaderValue)>,
}

impl CompiledHeaderOps {
    /// Compiles `headers` of a `proxy-rewrite` or `response-rewrite` config.
    pub fn compile(ops: &HeaderOps) -> Result<CompiledHeaderOps, String> {
        let name = |n: &String| {
            HeaderName::from_bytes(n.as_bytes()).map_err(|_| format!("{n:?} is not a header name"))
        };
        let pair = |(n, v): (&String, &String)| {
            Ok((
                name(n)?,
                HeaderValue::try_from(v.as_str())
                    .map_err(|_| format!("header {n:?}: {v:?} is not a header value"))?,
            ))
        };
        Ok(CompiledHeaderOps {
            remove: ops.remove.iter().map(name).collect::<Result<_, _>>()?,
            set: ops.set.iter().map(pair).collect::<Result<_, String>>()?,
            add: ops.add.iter().map(pair).collect::<Result<_, String>>()?,
        })
    }

    /// Applies the changes to `headers`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        for name in &self.remove {
            headers.remove(name);
        }
        for (name, value) in &self.set {
            headers.insert(name.clone(), value.clone());
        }
        for (name, value) in &self.add {
            headers.append(name.clone(), value.clone());
        }
    }

    /// Whether there is nothing to do.
    pub fn is_empty(&self) -> bool {
        self.remove.is_empty() && self.set.is_empty() && self.add.is_empty()
    }
}

/// `replacement` with PCRE's (and APISIX's `ngx.re.sub`'s) reading of `$N`: the group number
/// is the digits alone, so `$1_$2` is group 1, `_`, group 2. The regex crate would read `$1_`
/// as a group named `1_` (which does not exist, so empty): each `$N` becomes `${N}`.
pub(crate) fn pcre_replacement(replacement: &str) -> String {
    let mut out = String::with_capacity(replacement.len() + 8);
    let mut rest = replacement;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        let after = &rest[at + 1..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            out.push_str("${");
            out.push_str(&after[..digits]);
            out.push('}');
            rest = &after[digits..];
        } else if let Some(tail) = after.strip_prefix('$') {
            // `$$` is a literal `$`: kept whole, so its second `$` starts nothing.
            out.push_str("$$");
            rest = tail;
        } else {
            out.push('$');
            rest = after;
        }
    }
    out.push_str(rest);
    out
}

/// How the path changes.
#[derive(Debug)]
enum PathRewrite {
    None,
    Fixed(String),
    Regex(Regex, String),
}

/// A compiled `proxy-rewrite`.
#[derive(Debug)]
pub struct ProxyRewrite {
    priority: i32,
    path: PathRewrite,
    host: Option<HeaderValue>,
    method: Option<Method>,
    headers: CompiledHeaderOps,
}

impl ProxyRewrite {
    /// Compiles a validated config.
    pub fn build(priority: i32, config: &Value) -> Result<ProxyRewrite, String> {
        let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let path = match (&config.uri, config.regex_uri.as_deref()) {
            (Some(uri), _) => {
                PathAndQuery::try_from(uri.as_str())
                    .map_err(|_| format!("uri {uri:?} is not a URI path"))?;
                PathRewrite::Fixed(uri.clone())
            }
            (None, Some([pattern, replacement])) => {
                PathRewrite::Regex(compile_regex(pattern)?, pcre_replacement(replacement))
            }
            (None, Some(_)) => return Err("regex_uri is [pattern, replacement]".into()),
            (None, None) => PathRewrite::None,
        };
        let host = config
            .host
            .as_deref()
            .map(|h| {
                HeaderValue::try_from(h).map_err(|_| format!("host {h:?} is not a header value"))
            })
            .transpose()?;
        let method = config
            .method
            .as_deref()
            .map(|m| Method::from_bytes(m.as_bytes()).map_err(|_| format!("method {m:?}")))
            .transpose()?;
        Ok(ProxyRewrite {
            priority,
            path,
            host,
            method,
            headers: CompiledHeaderOps::compile(&config.headers)?,
        })
    }

    /// The rewritten path-and-query of `uri`, if the path changes.
    fn rewrite_uri(&self, uri: &Uri) -> Option<String> {
        let path = match &self.path {
            PathRewrite::None => return None,
            PathRewrite::Fixed(path) => path.clone(),
            PathRewrite::Regex(regex, replacement) => {
                let old = uri.path().as_bytes();
                if !regex.is_match(old) {
                    return None;
                }
                String::from_utf8_lossy(&regex.replace(old, replacement.as_bytes())).into_owned()
            }
        };
        Some(match uri.query() {
            None => path,
            Some(query) if path.contains('?') => format!("{path}&{query}"),
            Some(query) => format!("{path}?{query}"),
        })
    }
}

impl Plugin for ProxyRewrite {
    fn name(&self) -> &'static str {
        "proxy-rewrite"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn rewrite(
        &self,
        ctx: &mut RequestCtx<'_>,
        request: &mut request::Parts,
    ) -> Result<(), Reject> {
        if let Some(path_and_query) = self.rewrite_uri(&request.uri) {
            // A regex replacement can produce anything; one that is not a URI is a config
            // mistake the admin must see, not a request to send half-rewritten.
            let invalid = || {
                reject(
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "rewrite_failed",
                    "proxy-rewrite produced an invalid URI",
                )
            };
            let path_and_query = PathAndQuery::try_from(path_and_query).map_err(|_| invalid())?;
            let mut parts = request.uri.clone().into_parts();
            parts.path_and_query = Some(path_and_query);
            request.uri = Uri::from_parts(parts).map_err(|_| invalid())?;
        }
        if let Some(method) = &self.method {
            request.method = method.clone();
        }
        if let Some(host) = &self.host {
            ctx.host_override = Some(host.clone());
        }
        self.headers.apply(&mut request.headers);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn rewritten(config: Value, uri: &str) -> Option<String> {
        ProxyRewrite::build(1008, &config)
            .unwrap()
            .rewrite_uri(&uri.parse().unwrap())
    }

    #[test]
    fn group_numbers_end_where_their_digits_do() {
        let regex = json!({"regex_uri": ["^/api/(\\w+)/(.*)", "/$1_$2"]});
        assert_eq!(rewritten(regex, "/api/a/b").as_deref(), Some("/a_b"));
        let named = json!({"regex_uri": ["^/api/(?P<v>\\w+)/(.*)", "/${v}x/$2$$/$"]});
        assert_eq!(rewritten(named, "/api/a/b").as_deref(), Some("/ax/b$/$"));
    }

    #[test]
    fn uri_and_regex_uri_keep_the_query() {
        assert_eq!(
            rewritten(json!({"uri": "/new"}), "/old?a=1").as_deref(),
            Some("/new?a=1")
        );
        assert_eq!(
            rewritten(json!({"uri": "/new?b=2"}), "/old?a=1").as_deref(),
            Some("/new?b=2&a=1")
        );
        let regex = json!({"regex_uri": ["^/api/(v\\d)/(.*)", "/$2/$1"]});
        assert_eq!(
            rewritten(regex.clone(), "/api/v2/users?x").as_deref(),
            Some("/users/v2?x")
        );
        assert_eq!(rewritten(regex, "/other"), None);
        assert_eq!(rewritten(json!({"method": "POST"}), "/a"), None);
        assert!(ProxyRewrite::build(1, &json!({"regex_uri": ["(", "x"]})).is_err());
    }

    #[test]
    fn header_ops_remove_then_set_then_add() {
        let ops: HeaderOps = serde_json::from_value(
            json!({"remove": ["x-a"], "set": {"x-b": "set"}, "add": {"x-b": "added", "x-c": "c"}}),
        )
        .unwrap();
        let ops = CompiledHeaderOps::compile(&ops).unwrap();
        let mut headers = HeaderMap::new();
        headers.insert("x-a", HeaderValue::from_static("1"));
        headers.insert("x-b", HeaderValue::from_static("old"));
        ops.apply(&mut headers);
        assert!(!headers.contains_key("x-a"));
        let b: Vec<_> = headers.get_all("x-b").iter().collect();
        assert_eq!(b, ["set", "added"]);
        assert_eq!(headers["x-c"], "c");
    }
}
