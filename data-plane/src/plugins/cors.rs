//! `cors`: Cross-Origin Resource Sharing.
//!
//! Runs in the rewrite phase (priority 4000, before authentication): a preflight — `OPTIONS`
//! with `Origin` and `Access-Control-Request-Method` — is answered by the gateway with 200 and
//! the CORS headers and never proxied, so a browser can ask before it sends credentials. Every
//! other request with an `Origin` is proxied and its answer (whoever produced it, refusals
//! included, so a browser can read a 401) gets `Access-Control-Allow-Origin` and friends. An
//! origin that is not allowed gets no CORS headers: the browser then blocks the response.
//!
//! When the allowed origin is echoed (not `*`), `Vary: Origin` is added so caches keep one
//! answer per origin.

use bytes::Bytes;
use http::header::{
    ACCESS_CONTROL_ALLOW_CREDENTIALS, ACCESS_CONTROL_ALLOW_HEADERS, ACCESS_CONTROL_ALLOW_METHODS,
    ACCESS_CONTROL_ALLOW_ORIGIN, ACCESS_CONTROL_EXPOSE_HEADERS, ACCESS_CONTROL_MAX_AGE,
    ACCESS_CONTROL_REQUEST_HEADERS, ACCESS_CONTROL_REQUEST_METHOD, CONTENT_LENGTH, ORIGIN, VARY,
};
use http::{HeaderMap, HeaderValue, Method, Response, StatusCode, request};
use http_body_util::Full;
use regex::bytes::Regex;
use serde_json::Value;

use super::{Plugin, Reject, RequestCtx, ResponseView};
use gateway_proto::plugins::cors::{Config, List};
use gateway_proto::schema::compile_regex;

/// How one `allow_*` field answers.
#[derive(Debug)]
enum Allowed {
    /// `*`: sent as `*`.
    Star,
    /// `**`: the request's own value echoed back.
    Echo,
    /// A fixed list, joined.
    List(Option<HeaderValue>),
}

impl Allowed {
    fn compile(list: &List, field: &str) -> Result<Allowed, String> {
        let items = list.items();
        if items.iter().any(|i| i == "**") {
            Ok(Allowed::Echo)
        } else if items.iter().any(|i| i == "*") {
            Ok(Allowed::Star)
        } else if items.is_empty() {
            Ok(Allowed::List(None))
        } else {
            HeaderValue::try_from(items.join(","))
                .map(|v| Allowed::List(Some(v)))
                .map_err(|_| format!("{field}: not a header value"))
        }
    }

    fn value(&self, echoed: Option<&HeaderValue>) -> Option<HeaderValue> {
        match self {
            Allowed::Star => Some(HeaderValue::from_static("*")),
            Allowed::Echo => echoed.cloned(),
            Allowed::List(value) => value.clone(),
        }
    }
}

/// A compiled `cors`.
#[derive(Debug)]
pub struct Cors {
    priority: i32,
    origins: Allowed,
    /// Allowed origins (compared case-insensitively).
    exact_origins: Vec<String>,
    origin_regexes: Vec<Regex>,
    methods: Allowed,
    headers: Allowed,
    expose: Option<HeaderValue>,
    max_age: Option<HeaderValue>,
    credentials: bool,
}

impl Cors {
    /// Compiles a validated config.
    pub fn build(priority: i32, config: &Value) -> Result<Cors, String> {
        let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let origins = Allowed::compile(&config.allow_origins, "allow_origins")?;
        let exact_origins = config
            .allow_origins
            .items()
            .into_iter()
            .filter(|o| o != "*" && o != "**")
            .collect();
        let origin_regexes = config
            .allow_origins_by_regex
            .iter()
            .map(|pattern| compile_regex(&format!("^(?:{pattern})$")))
            .collect::<Result<Vec<_>, _>>()?;
        let expose = match Allowed::compile(&config.expose_headers, "expose_headers")? {
            Allowed::Star | Allowed::Echo => Some(HeaderValue::from_static("*")),
            Allowed::List(value) => value,
        };
        if config.allow_credential
            && [
                &config.allow_origins,
                &config.allow_methods,
                &config.allow_headers,
            ]
            .iter()
            .any(|l| l.items().iter().any(|i| i == "*"))
        {
            return Err("\"*\" cannot be used with allow_credential: true".into());
        }
        Ok(Cors {
            priority,
            origins,
            exact_origins,
            origin_regexes,
            methods: Allowed::compile(&config.allow_methods, "allow_methods")?,
            headers: Allowed::compile(&config.allow_headers, "allow_headers")?,
            expose,
            max_age: (config.max_age >= 0).then(|| HeaderValue::from(config.max_age)),
            credentials: config.allow_credential,
        })
    }

    /// The `Access-Control-Allow-Origin` for a request from `origin`, if it is allowed.
    fn allow_origin(&self, origin: &HeaderValue) -> Option<HeaderValue> {
        let listed = || {
            let origin_bytes = origin.as_bytes();
            self.exact_origins
                .iter()
                .any(|o| o.as_bytes().eq_ignore_ascii_case(origin_bytes))
                .then(|| origin.clone())
        };
        let by_regex = || {
            self.origin_regexes
                .iter()
                .any(|r| r.is_match(origin.as_bytes()))
                .then(|| origin.clone())
        };
        match self.origins {
            Allowed::Echo => Some(origin.clone()),
            Allowed::Star => Some(HeaderValue::from_static("*")),
            Allowed::List(_) => listed().or_else(by_regex),
        }
    }
}

/// Whether a request is a CORS preflight.
pub fn is_preflight(request: &request::Parts) -> bool {
    request.method == Method::OPTIONS
        && request.headers.contains_key(ORIGIN)
        && request.headers.contains_key(ACCESS_CONTROL_REQUEST_METHOD)
}

impl Plugin for Cors {
    fn name(&self) -> &'static str {
        "cors"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn answers_preflight(&self) -> bool {
        true
    }

    fn rewrite(
        &self,
        ctx: &mut RequestCtx<'_>,
        request: &mut request::Parts,
    ) -> Result<(), Reject> {
        let preflight = is_preflight(request);
        let headers = &request.headers;
        if let Some(allowed) = headers.get(ORIGIN).and_then(|o| self.allow_origin(o)) {
            let out = &mut ctx.response_headers;
            out.insert(ACCESS_CONTROL_ALLOW_ORIGIN, allowed);
            if self.credentials {
                out.insert(
                    ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
            }
            if preflight {
                let methods = self
                    .methods
                    .value(headers.get(ACCESS_CONTROL_REQUEST_METHOD));
                let allow_headers = self
                    .headers
                    .value(headers.get(ACCESS_CONTROL_REQUEST_HEADERS));
                for (name, value) in [
                    (ACCESS_CONTROL_ALLOW_METHODS, methods),
                    (ACCESS_CONTROL_ALLOW_HEADERS, allow_headers),
                    (ACCESS_CONTROL_MAX_AGE, self.max_age.clone()),
                ] {
                    if let Some(value) = value {
                        out.insert(name, value);
                    }
                }
            } else if let Some(expose) = &self.expose {
                out.insert(ACCESS_CONTROL_EXPOSE_HEADERS, expose.clone());
            }
        }
        if preflight {
            // Answered here, allowed or not: a preflight is the gateway's business, and an
            // origin that is not allowed simply gets no CORS headers.
            let mut response: Reject = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = StatusCode::OK;
            response
                .headers_mut()
                .insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
            return Err(response);
        }
        Ok(())
    }

    fn response_headers(&self, _ctx: &mut RequestCtx<'_>, response: &mut ResponseView<'_>) {
        // The access phase's headers are on the answer by now.
        let echoed = response
            .headers()
            .get(ACCESS_CONTROL_ALLOW_ORIGIN)
            .is_some_and(|v| v != "*");
        if echoed && !varies_by_origin(response.headers()) {
            response
                .headers_mut()
                .append(VARY, HeaderValue::from_static("Origin"));
        }
    }
}

fn varies_by_origin(headers: &HeaderMap) -> bool {
    headers
        .get_all(VARY)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .any(|v| v.trim().eq_ignore_ascii_case("origin") || v.trim() == "*")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn origins_by_list_regex_star_and_echo() {
        let cors = Cors::build(
            4000,
            &json!({"allow_origins": ["https://a.example"], "allow_origins_by_regex": ["https://.*\\.b\\.example"]}),
        )
        .unwrap();
        let origin = |o: &'static str| cors.allow_origin(&HeaderValue::from_static(o));
        assert_eq!(origin("https://A.example").unwrap(), "https://A.example");
        assert_eq!(
            origin("https://x.b.example").unwrap(),
            "https://x.b.example"
        );
        assert!(
            origin("https://x.b.example.evil").is_none(),
            "regexes are anchored"
        );
        assert!(origin("https://c.example").is_none());
        let any = Cors::build(4000, &json!({})).unwrap();
        assert_eq!(
            any.allow_origin(&HeaderValue::from_static("https://z"))
                .unwrap(),
            "*"
        );
        assert!(Cors::build(4000, &json!({"allow_credential": true})).is_err());
        let echo = Cors::build(
            4000,
            &json!({"allow_credential": true, "allow_origins": "**", "allow_methods": "GET", "allow_headers": "**"}),
        )
        .unwrap();
        assert_eq!(
            echo.allow_origin(&HeaderValue::from_static("https://z"))
                .unwrap(),
            "https://z"
        );
    }
}
