//! Cache keys and bypass conditions: `cache_key` and `cache_bypass` items (parsed by
//! `gateway_proto::plugins::proxy_cache`) read against a request after its request phases.

use std::borrow::Cow;

use gateway_proto::plugins::proxy_cache::{KeyPart, Var};
use http::header::HOST;
use http::request;

use crate::plugins::util::query_arg;
use crate::transport::tls::Tls;

/// The value of `var` for `request`; `method` stands in for the request's own (a `PURGE`
/// names the entry its `GET` made).
pub fn value<'a>(var: &Var, request: &'a request::Parts, method: &'a str) -> Cow<'a, str> {
    match var {
        Var::Host => Cow::Borrowed(host(request)),
        Var::Uri => Cow::Borrowed(request.uri.path()),
        Var::RequestUri => match request.uri.path_and_query() {
            Some(path_and_query) => Cow::Borrowed(path_and_query.as_str()),
            None => Cow::Borrowed(request.uri.path()),
        },
        Var::Scheme => Cow::Borrowed(if request.extensions.get::<Tls>().is_some() {
            "https"
        } else {
            "http"
        }),
        Var::Method => Cow::Borrowed(method),
        Var::Arg(name) => query_arg(&request.uri, name).map_or(Cow::Borrowed(""), Cow::Owned),
        Var::Header(name) => request
            .headers
            .get(name.as_str())
            .map_or(Cow::Borrowed(""), |v| String::from_utf8_lossy(v.as_bytes())),
    }
}

/// nginx's `$host`: the host the client asked for (the URI's authority, else `Host`), without
/// its port. Its case is kept: the router's host match is case-insensitive, but two spellings
/// are two keys rather than a lowercased copy per request.
fn host(request: &request::Parts) -> &str {
    let authority = match request.uri.authority() {
        Some(authority) => authority.as_str(),
        None => request
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .unwrap_or(""),
    };
    let without_user = authority.rsplit('@').next().unwrap_or(authority);
    match without_user.rsplit_once(':') {
        // `[::1]:80` → `[::1]`; `[::1]` has no port to strip.
        Some((host, port)) if !port.contains(']') => host,
        _ => without_user,
    }
}

/// The key `parts` make for `request`: their values concatenated, as APISIX does.
pub fn render(parts: &[KeyPart], request: &request::Parts, method: &str) -> String {
    let mut key = String::with_capacity(64);
    for part in parts {
        match part {
            KeyPart::Literal(text) => key.push_str(text),
            KeyPart::Var(var) => key.push_str(&value(var, request, method)),
        }
    }
    key
}

/// Whether one of `vars` is set for `request`: non-empty and not `0` (nginx's
/// `proxy_cache_bypass`).
pub fn bypassed(vars: &[Var], request: &request::Parts) -> bool {
    vars.iter().any(|var| {
        let value = value(var, request, request.method.as_str());
        !value.is_empty() && value != "0"
    })
}

#[cfg(test)]
mod tests {
    use http::Request;

    use super::*;

    fn parts(uri: &str, headers: &[(&str, &str)]) -> request::Parts {
        let mut builder = Request::get(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap().into_parts().0
    }

    fn key(items: &[&str], request: &request::Parts) -> String {
        let parts: Vec<KeyPart> = items.iter().map(|i| KeyPart::parse(i).unwrap()).collect();
        render(&parts, request, request.method.as_str())
    }

    #[test]
    fn key_templates_read_the_request() {
        let request = parts(
            "/a/b?item=14&x=%20y",
            &[("host", "shop.example:8080"), ("accept-language", "de")],
        );
        let cases: &[(&[&str], &str)] = &[
            (
                &["$host", "$request_uri"],
                "shop.example/a/b?item=14&x=%20y",
            ),
            (&["$uri"], "/a/b"),
            (
                &["$scheme", "://", "$host", "$uri"],
                "http://shop.example/a/b",
            ),
            (&["$request_method", " ", "$uri"], "GET /a/b"),
            (&["$arg_item", "|", "$arg_x", "|", "$arg_missing"], "14| y|"),
            (&["$http_accept_language", "$http_x_absent"], "de"),
        ];
        for (items, expected) in cases {
            assert_eq!(key(items, &request), *expected, "{items:?}");
        }
    }

    #[test]
    fn the_host_loses_its_port_but_not_an_ipv6_address() {
        for (value, expected) in [
            ("a.example", "a.example"),
            ("a.example:80", "a.example"),
            ("[::1]:8080", "[::1]"),
            ("[::1]", "[::1]"),
            ("", ""),
        ] {
            assert_eq!(host(&parts("/", &[("host", value)])), expected, "{value}");
        }
        // An absolute-form request names its host in the URI, which wins over `Host`.
        assert_eq!(
            host(&parts("http://b.example:81/x", &[("host", "a.example")])),
            "b.example"
        );
    }

    #[test]
    fn a_set_bypass_variable_is_non_empty_and_not_zero() {
        let vars = [Var::Arg("nocache".into()), Var::Header("x-no-cache".into())];
        assert!(!bypassed(&vars, &parts("/?a=1", &[])));
        assert!(!bypassed(&vars, &parts("/?nocache=", &[])));
        assert!(!bypassed(&vars, &parts("/?nocache=0", &[])));
        assert!(bypassed(&vars, &parts("/?nocache=1", &[])));
        assert!(bypassed(&vars, &parts("/", &[("x-no-cache", "yes")])));
    }
}
