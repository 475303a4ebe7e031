//! `basic-auth`: identifies the consumer by HTTP Basic credentials (RFC 7617).

use base64::Engine;
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderValue, StatusCode, request};
use serde_json::Value;

use super::key_auth::identify;
use super::{Access, Plugin, Reject, RequestCtx, reject};
use gateway_proto::plugins::auth::BasicAuthConfig;

/// A compiled `basic-auth`.
#[derive(Debug)]
pub struct BasicAuth {
    priority: i32,
    hide_credentials: bool,
}

impl BasicAuth {
    /// Compiles a validated config.
    pub fn build(priority: i32, config: &Value) -> Result<BasicAuth, String> {
        let config: BasicAuthConfig =
            serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        Ok(BasicAuth {
            priority,
            hide_credentials: config.hide_credentials,
        })
    }
}

fn challenge(message: &str) -> Reject {
    let mut response = reject(StatusCode::UNAUTHORIZED, "unauthorized", message);
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"gateway\", charset=\"UTF-8\""),
    );
    response
}

/// The user name and password of a `Basic` authorization header.
fn credentials(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        "basic-auth"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, request: &mut request::Parts) -> Access {
        let Some(value) = request.headers.get(AUTHORIZATION) else {
            return Access::Reject(challenge("missing basic credentials"));
        };
        let Some((user, password)) = credentials(value) else {
            return Access::Reject(challenge("malformed basic credentials"));
        };
        let consumer = ctx.consumers.by_basic_username.get(&user).cloned();
        let verified = consumer.filter(|c| {
            c.spec
                .credentials
                .basic_auth
                .as_ref()
                .is_some_and(|b| b.verify(&password))
        });
        let Some(consumer) = verified else {
            return Access::Reject(challenge("invalid user name or password"));
        };
        if self.hide_credentials {
            request.headers.remove(AUTHORIZATION);
        }
        identify(ctx, request, &consumer);
        Access::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn basic_credentials_parse_or_are_refused() {
        let ok = HeaderValue::from_static("Basic YWxpY2U6cDpx");
        assert_eq!(credentials(&ok), Some(("alice".into(), "p:q".into())));
        for bad in ["Bearer x", "Basic !!!", "Basic", "Basic YWxpY2U=", ""] {
            assert_eq!(credentials(&HeaderValue::from_static(bad)), None, "{bad}");
        }
    }
}
