//! `request-validation`: checks the request's headers (access phase, at APISIX's priority
//! 2800) and its JSON body (request body phase) against the config's JSON Schemas, compiled
//! once per snapshot.
//!
//! The headers are seen as an object of lowercase name → value (a repeated header's values
//! joined with `", "`, a value that is not UTF-8 read lossily). With a `body_schema` the
//! plugin declares `max_body_bytes` as its request body bound: the request path reads the body
//! whole (413 beyond it), this plugin parses it as JSON (a body that is not JSON is refused)
//! and checks it, and the body goes upstream unchanged. A refusal is `rejected_code` (default
//! 400) with the JSON error shape, code `request_invalid`, and one entry per violation in
//! `details`: `{"in": "headers" | "body", "pointer": <JSON pointer within it>, "message"}`.

use bytes::Bytes;
use http::{HeaderMap, StatusCode, request};
use serde_json::{Map, Value, json};

use super::{Access, Plugin, Reject, RequestCtx};
use crate::error::json_body;
use gateway_proto::plugins::request_validation::{CompiledSchema, Config};

/// A compiled `request-validation`.
#[derive(Debug)]
pub struct RequestValidation {
    priority: i32,
    headers: Option<CompiledSchema>,
    body: Option<CompiledSchema>,
    rejected: StatusCode,
    message: Option<String>,
    max_body_bytes: u64,
}

impl RequestValidation {
    /// Compiles a validated config; a schema that does not compile fails the snapshot.
    pub fn build(priority: i32, config: &Value) -> Result<RequestValidation, String> {
        let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let compile = |field: &str, schema: &Option<Value>| {
            schema
                .as_ref()
                .map(CompiledSchema::compile)
                .transpose()
                .map_err(|(pointer, reason)| format!("{field}{pointer}: {reason}"))
        };
        let rejected = StatusCode::from_u16(config.rejected_code)
            .map_err(|_| format!("rejected_code {} is not a status", config.rejected_code))?;
        Ok(RequestValidation {
            priority,
            headers: compile("header_schema", &config.header_schema)?,
            body: compile("body_schema", &config.body_schema)?,
            rejected,
            message: config.rejected_msg,
            max_body_bytes: config.max_body_bytes,
        })
    }

    /// The refusal: every violation listed under `details`.
    fn refuse(&self, place: &str, violations: Vec<(String, String)>) -> Reject {
        let message = self.message.clone().unwrap_or_else(|| {
            format!(
                "the request's {place} violate{} the route's schema ({} violation{})",
                if place == "headers" { "" } else { "s" },
                violations.len(),
                if violations.len() == 1 { "" } else { "s" }
            )
        });
        let details: Vec<Value> = violations
            .into_iter()
            .map(|(pointer, message)| json!({"in": place, "pointer": pointer, "message": message}))
            .collect();
        json_body(
            self.rejected,
            &json!({"error": {"code": "request_invalid", "message": message, "details": details}}),
        )
    }
}

/// The headers as the header schema sees them: lowercase name → value.
pub fn headers_document(headers: &HeaderMap) -> Value {
    let mut object = Map::new();
    for name in headers.keys() {
        let mut values = headers
            .get_all(name)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()));
        let mut joined = values.next().map(|v| v.into_owned()).unwrap_or_default();
        for value in values {
            joined.push_str(", ");
            joined.push_str(&value);
        }
        object.insert(name.as_str().to_owned(), Value::String(joined));
    }
    Value::Object(object)
}

impl Plugin for RequestValidation {
    fn name(&self) -> &'static str {
        "request-validation"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn access(&self, _ctx: &mut RequestCtx<'_>, request: &mut request::Parts) -> Access {
        let Some(schema) = &self.headers else {
            return Access::Continue;
        };
        let violations = schema.violations(&headers_document(&request.headers));
        if violations.is_empty() {
            Access::Continue
        } else {
            Access::Reject(self.refuse("headers", violations))
        }
    }

    fn request_body_limit(&self) -> Option<u64> {
        self.body.as_ref().map(|_| self.max_body_bytes)
    }

    fn request_body(
        &self,
        _ctx: &mut RequestCtx<'_>,
        _request: &request::Parts,
        body: &Bytes,
    ) -> Result<(), Reject> {
        let Some(schema) = &self.body else {
            return Ok(());
        };
        let document: Value = serde_json::from_slice(body).map_err(|error| {
            self.refuse(
                "body",
                vec![(String::new(), format!("the body is not JSON: {error}"))],
            )
        })?;
        let violations = schema.violations(&document);
        if violations.is_empty() {
            Ok(())
        } else {
            Err(self.refuse("body", violations))
        }
    }
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;
    use http_body_util::BodyExt;

    use super::*;

    fn plugin(config: Value) -> RequestValidation {
        RequestValidation::build(2800, &config).unwrap()
    }

    async fn details(response: Reject) -> (StatusCode, Value) {
        let status = response.status();
        let body = response.into_body().collect().await.unwrap().to_bytes();
        (status, serde_json::from_slice(&body).unwrap())
    }

    #[test]
    fn headers_are_an_object_of_lowercase_names() {
        let mut headers = HeaderMap::new();
        headers.append("X-Tag", HeaderValue::from_static("a"));
        headers.append("x-tag", HeaderValue::from_static("b"));
        headers.insert("accept", HeaderValue::from_static("*/*"));
        assert_eq!(
            headers_document(&headers),
            json!({"x-tag": "a, b", "accept": "*/*"})
        );
    }

    #[tokio::test]
    async fn every_body_violation_is_listed_with_its_pointer() {
        let p = plugin(
            json!({"body_schema": {"type": "object", "required": ["name"],
            "properties": {"name": {"type": "string"}, "age": {"type": "integer", "minimum": 0}}}}),
        );
        assert_eq!(p.request_body_limit(), Some(1 << 20));
        let check = |body: &'static str| {
            let schema = p.body.as_ref().unwrap();
            let document: Value = serde_json::from_str(body).unwrap();
            schema.violations(&document)
        };
        assert!(check(r#"{"name": "a", "age": 3}"#).is_empty());
        let found: Vec<String> = check(r#"{"name": 1, "age": -1}"#)
            .into_iter()
            .map(|(p, _)| p)
            .collect();
        assert_eq!(found, ["/age", "/name"]);
        let (status, body) = details(p.refuse("body", check(r#"{"age": "x"}"#))).await;
        assert_eq!(status, StatusCode::BAD_REQUEST);
        assert_eq!(body["error"]["code"], "request_invalid");
        let pointers: Vec<&str> = body["error"]["details"]
            .as_array()
            .unwrap()
            .iter()
            .map(|d| d["pointer"].as_str().unwrap())
            .collect();
        assert_eq!(pointers, ["", "/age"], "{body}");
    }

    #[tokio::test]
    async fn the_refusal_takes_the_configured_status_and_message() {
        let p = plugin(
            json!({"header_schema": {"required": ["x-version"]}, "rejected_code": 422, "rejected_msg": "bad"}),
        );
        assert_eq!(
            p.request_body_limit(),
            None,
            "no body_schema: the body streams"
        );
        let violations = p
            .headers
            .as_ref()
            .unwrap()
            .violations(&headers_document(&HeaderMap::new()));
        let (status, body) = details(p.refuse("headers", violations)).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY);
        assert_eq!(body["error"]["message"], "bad");
        assert_eq!(body["error"]["details"][0]["in"], "headers");
    }

    #[test]
    fn a_schema_that_slipped_through_fails_the_compile() {
        let error = RequestValidation::build(
            2800,
            &json!({"body_schema": {"properties": {"a": {"type": 5}}}}),
        )
        .unwrap_err();
        assert!(
            error.starts_with("body_schema/properties/a/type: "),
            "{error}"
        );
    }
}
