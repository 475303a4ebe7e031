//! `redirect`: answers with a redirect in the rewrite phase instead of proxying (APISIX's
//! semantics; the config is read in `gateway_proto::plugins::redirect`).
//!
//! Whether a request came over TLS is the transport's word ([`crate::transport::tls::Tls`] on
//! the request), or a proxy's in front (`X-Forwarded-Proto: https`, as APISIX reads it).

use bytes::Bytes;
use http::header::{HOST, LOCATION};
use http::{HeaderValue, Method, Response, StatusCode, request};
use http_body_util::Full;
use regex::bytes::Regex;
use serde_json::Value;

use super::proxy_rewrite::pcre_replacement;
use super::{BuildEnv, Plugin, Reject, RequestCtx, reject};
use crate::transport::headers::X_FORWARDED_PROTO;
use crate::transport::tls::Tls;
use gateway_proto::plugins::redirect::{Config, Part, Var, parse_template};
use gateway_proto::schema::compile_regex;

/// Where the redirect goes.
#[derive(Debug)]
enum Target {
    /// The same URL over https, for requests that are not.
    Https,
    /// A template.
    Template(Vec<Part>),
    /// The path with the first match replaced, when it matches.
    Regex(Regex, String),
    /// `http_to_https: false` alone: nothing to do.
    Nothing,
}

/// A compiled `redirect`.
#[derive(Debug)]
pub struct Redirect {
    priority: i32,
    target: Target,
    status: Option<StatusCode>,
    append_query: bool,
    /// `:<port>` of the TLS listener, empty for 443 or none.
    https_port: String,
}

impl Redirect {
    /// Compiles a validated config; `env` says where the TLS listener is.
    pub fn build(priority: i32, config: &Value, env: &BuildEnv) -> Result<Redirect, String> {
        let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let target = match (&config.uri, config.regex_uri.as_deref()) {
            (Some(uri), _) => {
                let parts = parse_template(uri)?;
                for part in &parts {
                    if let Part::Literal(text) = part {
                        HeaderValue::try_from(text.as_str())
                            .map_err(|_| format!("uri {uri:?} cannot be a Location"))?;
                    }
                }
                Target::Template(parts)
            }
            (None, Some([pattern, replacement])) => {
                Target::Regex(compile_regex(pattern)?, pcre_replacement(replacement))
            }
            (None, Some(_)) => return Err("regex_uri is [pattern, replacement]".into()),
            (None, None) if config.http_to_https => Target::Https,
            (None, None) => Target::Nothing,
        };
        let status = config
            .ret_code
            .map(|code| {
                StatusCode::from_u16(code)
                    .ok()
                    .filter(StatusCode::is_redirection)
                    .ok_or_else(|| format!("ret_code {code} is not a redirect status"))
            })
            .transpose()?;
        let https_port = match env.tls_port {
            None | Some(443) => String::new(),
            Some(port) => format!(":{port}"),
        };
        Ok(Redirect {
            priority,
            target,
            status,
            append_query: config.append_query_string,
            https_port,
        })
    }

    /// The `Location` for `request`, or `None` when this request is not redirected.
    fn location(&self, request: &request::Parts) -> Option<String> {
        let path = request.uri.path();
        let query = request.uri.query();
        let tls = request.extensions.get::<Tls>().is_some()
            || request
                .headers
                .get(&X_FORWARDED_PROTO)
                .is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
        let mut location = match &self.target {
            Target::Nothing => return None,
            Target::Https if tls => return None,
            Target::Https => {
                let host = host(request)?;
                let mut location = format!("https://{host}{}{path}", self.https_port);
                if let Some(query) = query {
                    location.push('?');
                    location.push_str(query);
                }
                return Some(location);
            }
            Target::Template(parts) => {
                let mut out = String::new();
                for part in parts {
                    match part {
                        Part::Literal(text) => out.push_str(text),
                        Part::Var(Var::Uri) => out.push_str(path),
                        Part::Var(Var::RequestUri) => {
                            out.push_str(path);
                            if let Some(query) = query {
                                out.push('?');
                                out.push_str(query);
                            }
                        }
                        Part::Var(Var::Host) => out.push_str(host(request).unwrap_or_default()),
                        Part::Var(Var::Scheme) => out.push_str(if tls { "https" } else { "http" }),
                        Part::Var(Var::Args) => out.push_str(query.unwrap_or_default()),
                    }
                }
                out
            }
            Target::Regex(regex, replacement) => {
                if !regex.is_match(path.as_bytes()) {
                    return None;
                }
                String::from_utf8_lossy(&regex.replace(path.as_bytes(), replacement.as_bytes()))
                    .into_owned()
            }
        };
        if self.append_query
            && let Some(query) = query
        {
            location.push(if location.contains('?') { '&' } else { '?' });
            location.push_str(query);
        }
        Some(location)
    }
}

impl Redirect {
    /// `ret_code`, else APISIX's: 301 to https for GET and HEAD, 308 for other methods (only
    /// a 307 or 308 keeps a request's method and body), 302 otherwise.
    fn status_for(&self, method: &Method) -> StatusCode {
        self.status.unwrap_or(match (&self.target, method) {
            (Target::Https, &Method::GET | &Method::HEAD) => StatusCode::MOVED_PERMANENTLY,
            (Target::Https, _) => StatusCode::PERMANENT_REDIRECT,
            _ => StatusCode::FOUND,
        })
    }
}

/// The host the client asked for, without its port: `Host`, or an HTTP/2 `:authority`.
fn host(request: &request::Parts) -> Option<&str> {
    let authority = match request.headers.get(HOST) {
        Some(host) => host.to_str().ok()?,
        None => request.uri.authority()?.as_str(),
    };
    if authority.starts_with('[') {
        // An IPv6 literal keeps its brackets.
        return authority.find(']').map(|end| &authority[..=end]);
    }
    match authority.rsplit_once(':') {
        Some((host, port)) if port.bytes().all(|b| b.is_ascii_digit()) => Some(host),
        _ => Some(authority),
    }
    .filter(|host| !host.is_empty())
}

impl Plugin for Redirect {
    fn name(&self) -> &'static str {
        "redirect"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn rewrite(
        &self,
        _ctx: &mut RequestCtx<'_>,
        request: &mut request::Parts,
    ) -> Result<(), Reject> {
        let Some(location) = self.location(request) else {
            return Ok(());
        };
        let status = self.status_for(&request.method);
        let Ok(location) = HeaderValue::try_from(location) else {
            return Err(reject(
                StatusCode::INTERNAL_SERVER_ERROR,
                "redirect_failed",
                "redirect produced an invalid Location",
            ));
        };
        let mut response = Response::new(Full::new(Bytes::new()));
        *response.status_mut() = status;
        response.headers_mut().insert(LOCATION, location);
        Err(response)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Request;
    use serde_json::json;

    fn redirect(config: Value, tls_port: Option<u16>) -> Redirect {
        let env = BuildEnv {
            tls_port,
            ..BuildEnv::default()
        };
        Redirect::build(900, &config, &env).unwrap()
    }

    fn parts(uri: &str, host: &str, tls: bool) -> request::Parts {
        let mut request = Request::get(uri).header(HOST, host).body(()).unwrap();
        if tls {
            request.extensions_mut().insert(Tls);
        }
        request.into_parts().0
    }

    #[test]
    fn http_to_https_keeps_host_path_and_query_and_only_for_plaintext() {
        let plugin = redirect(json!({"http_to_https": true}), Some(9443));
        assert_eq!(
            plugin
                .location(&parts("/a/b?x=1", "api.test:9080", false))
                .as_deref(),
            Some("https://api.test:9443/a/b?x=1")
        );
        assert_eq!(plugin.location(&parts("/a", "api.test", true)), None);
        let mut forwarded = parts("/a", "api.test", false);
        forwarded
            .headers
            .insert(&X_FORWARDED_PROTO, HeaderValue::from_static("https"));
        assert_eq!(plugin.location(&forwarded), None);
        let standard = redirect(json!({"http_to_https": true}), Some(443));
        assert_eq!(
            standard.location(&parts("/", "[::1]:80", false)).as_deref(),
            Some("https://[::1]/")
        );
    }

    #[test]
    fn templates_and_regexes() {
        let plugin = redirect(
            json!({"uri": "https://$host/v2$uri?from=$scheme&$args"}),
            None,
        );
        assert_eq!(
            plugin
                .location(&parts("/a?q=1", "h.test:81", false))
                .as_deref(),
            Some("https://h.test/v2/a?from=http&q=1")
        );
        let plugin = redirect(
            json!({"regex_uri": ["^/old/(.*)", "/new/$1"], "append_query_string": true}),
            None,
        );
        assert_eq!(
            plugin
                .location(&parts("/old/x/y?q=1", "h", false))
                .as_deref(),
            Some("/new/x/y?q=1")
        );
        assert_eq!(plugin.location(&parts("/other", "h", false)), None);
    }

    #[test]
    fn status_codes_follow_apisix() {
        let ctx_less = |plugin: &Redirect, method: Method| plugin.status_for(&method);
        let https = redirect(json!({"http_to_https": true}), None);
        assert_eq!(ctx_less(&https, Method::GET), StatusCode::MOVED_PERMANENTLY);
        assert_eq!(
            ctx_less(&https, Method::POST),
            StatusCode::PERMANENT_REDIRECT
        );
        let found = redirect(json!({"uri": "/b"}), None);
        assert_eq!(ctx_less(&found, Method::GET), StatusCode::FOUND);
        let chosen = redirect(json!({"http_to_https": true, "ret_code": 302}), None);
        assert_eq!(ctx_less(&chosen, Method::GET), StatusCode::FOUND);
    }
}
