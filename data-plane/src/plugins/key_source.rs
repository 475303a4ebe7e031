//! What a rate limit counts requests by: the fixed key list of `limit-count` and `limit-req`.

use http::header::HeaderName;
use http::request;

use super::RequestCtx;

/// A parsed `key`.
#[derive(Clone, Debug)]
pub enum KeySource {
    /// The client's IP address.
    RemoteAddr,
    /// The consumer an auth plugin identified (the client address when there is none).
    Consumer,
    /// The route: one budget for every client.
    Route,
    /// A request header (`http_x_api_key` → `x-api-key`; the client address when absent).
    Header(HeaderName),
}

impl KeySource {
    /// Parses one of the keys the schemas allow.
    pub fn parse(key: &str) -> Result<KeySource, String> {
        Ok(match key {
            "remote_addr" => KeySource::RemoteAddr,
            "consumer" => KeySource::Consumer,
            "route" => KeySource::Route,
            other => match other.strip_prefix("http_") {
                Some(header) => KeySource::Header(
                    HeaderName::from_bytes(header.replace('_', "-").as_bytes())
                        .map_err(|_| format!("bad key {other:?}"))?,
                ),
                None => return Err(format!("unknown key {other:?}")),
            },
        })
    }

    /// The value a request is counted under. Each kind has its own prefix, so a header value
    /// that spells an address (`X-User-Id: 198.51.100.7`) is not that address's counter.
    pub fn value(&self, ctx: &RequestCtx<'_>, request: &request::Parts) -> String {
        let remote = || format!("ip:{}", ctx.client.ip());
        match self {
            KeySource::RemoteAddr => remote(),
            KeySource::Consumer => ctx
                .consumer
                .as_ref()
                .map_or_else(remote, |c| format!("consumer:{}", c.id)),
            KeySource::Route => format!("route:{}", ctx.route.id),
            KeySource::Header(name) => request
                .headers
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map_or_else(remote, |value| format!("header:{value}")),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::plugins::{Consumers, RouteRef};
    use crate::test_support::compiled_route;
    use serde_json::json;

    #[test]
    fn a_header_value_that_spells_an_address_is_not_that_addresss_key() {
        let route = compiled_route("r", 1, json!({"paths": ["/r"]}));
        let consumers = Consumers::default();
        let spec = RouteRef {
            id: &route.id,
            spec: &route.spec,
        };
        let ctx = RequestCtx::new(
            spec,
            &route.plugins,
            &[],
            "198.51.100.7:4000".parse().unwrap(),
            &consumers,
        );
        let header = KeySource::parse("http_x_user_id").unwrap();
        let spoofing = http::Request::builder()
            .header("x-user-id", "198.51.100.7")
            .body(())
            .unwrap()
            .into_parts()
            .0;
        let anonymous = http::Request::new(()).into_parts().0;
        assert_ne!(
            header.value(&ctx, &spoofing),
            header.value(&ctx, &anonymous)
        );
        assert_eq!(
            header.value(&ctx, &anonymous),
            KeySource::RemoteAddr.value(&ctx, &anonymous),
            "no header: counted by address"
        );
        assert_ne!(
            KeySource::Route.value(&ctx, &anonymous),
            KeySource::parse("http_x_route").unwrap().value(
                &ctx,
                &http::Request::builder()
                    .header("x-route", "r")
                    .body(())
                    .unwrap()
                    .into_parts()
                    .0
            ),
        );
    }
}
