//! The admin API's one error shape:
//! `{"error": {"code": "...", "message": "...", "details": [{"pointer": "...", "message": "..."}]}}`.

use axum::Json;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gateway_proto::Violation;
use serde_json::json;

use crate::config::WriteError;
use crate::store::StoreError;

/// An admin API failure; every variant renders in the one error shape.
#[derive(Debug)]
pub enum ApiError {
    /// 400: a bad query parameter or header.
    BadRequest(String),
    /// 400: a body that is not JSON.
    InvalidJson(String),
    /// 400: documents failing their schema, every violation with its pointer.
    SchemaViolation(Vec<Violation>),
    /// 401: no token, or an unknown one.
    Unauthorized,
    /// 403: the token's role forbids the call.
    Forbidden(String),
    /// 404: no such resource, version or route.
    NotFound(String),
    /// 409: a reference that does not resolve (to another resource or within the document), a
    /// name that is not unique, or a delete of something still referenced.
    Conflict(Vec<Violation>),
    /// 409: a well-formed merge patch whose result the kind's schema refuses: it cannot be
    /// applied to the resource as it stands (RFC 5789 §2.2).
    PatchResultInvalid(Vec<Violation>),
    /// 412: `If-Match` no longer matches.
    PreconditionFailed(String),
    /// 413: the body exceeds the limit.
    PayloadTooLarge(String),
    /// 503: the store cannot be reached.
    Unavailable(String),
    /// 500: a bug or corrupt data; details go to the log, not the client.
    Internal,
}

impl ApiError {
    /// A document refused for `violations`: 409 when they are all about what it refers to or
    /// must be unique among (its shape is fine), else 400.
    pub fn refused(violations: Vec<Violation>) -> ApiError {
        if Violation::all_references(&violations) {
            ApiError::Conflict(violations)
        } else {
            ApiError::SchemaViolation(violations)
        }
    }

    fn parts(&self) -> (StatusCode, &'static str, String, &[Violation]) {
        match self {
            ApiError::BadRequest(m) => (StatusCode::BAD_REQUEST, "bad_request", m.clone(), &[]),
            ApiError::InvalidJson(m) => (StatusCode::BAD_REQUEST, "invalid_json", m.clone(), &[]),
            ApiError::SchemaViolation(v) => (
                StatusCode::BAD_REQUEST,
                "schema_violation",
                format!("{} schema violation(s)", v.len()),
                v,
            ),
            ApiError::Unauthorized => (
                StatusCode::UNAUTHORIZED,
                "unauthorized",
                "a valid bearer token is required (Authorization: Bearer <token>)".into(),
                &[],
            ),
            ApiError::Forbidden(m) => (StatusCode::FORBIDDEN, "forbidden", m.clone(), &[]),
            ApiError::NotFound(m) => (StatusCode::NOT_FOUND, "not_found", m.clone(), &[]),
            ApiError::Conflict(v) => (
                StatusCode::CONFLICT,
                "reference_conflict",
                v.iter()
                    .map(|v| v.message.as_str())
                    .collect::<Vec<_>>()
                    .join("; "),
                v,
            ),
            ApiError::PatchResultInvalid(v) => (
                StatusCode::CONFLICT,
                "schema_violation",
                format!(
                    "the patched document would break its schema: {} violation(s)",
                    v.len()
                ),
                v,
            ),
            ApiError::PreconditionFailed(m) => (
                StatusCode::PRECONDITION_FAILED,
                "precondition_failed",
                m.clone(),
                &[],
            ),
            ApiError::PayloadTooLarge(m) => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload_too_large",
                m.clone(),
                &[],
            ),
            ApiError::Unavailable(m) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "store_unavailable",
                m.clone(),
                &[],
            ),
            ApiError::Internal => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "internal error; see the control-plane log".into(),
                &[],
            ),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, message, details) = self.parts();
        let mut error = json!({"code": code, "message": message});
        if !details.is_empty() {
            error["details"] = json!(details);
        }
        (status, Json(json!({ "error": error }))).into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::Unavailable(message) => ApiError::Unavailable(message),
            StoreError::HeadMoved { .. } => {
                ApiError::Unavailable("the config changed concurrently; retry the request".into())
            }
            other => {
                tracing::error!(error = %other, "config store failure");
                ApiError::Internal
            }
        }
    }
}

impl From<WriteError> for ApiError {
    fn from(error: WriteError) -> Self {
        match error {
            WriteError::Invalid(violations) => ApiError::refused(violations),
            WriteError::NotFound(key) => ApiError::NotFound(format!("{key} does not exist")),
            WriteError::VersionNotFound(v) => {
                ApiError::NotFound(format!("version {v} does not exist"))
            }
            WriteError::Conflict(violations) => ApiError::Conflict(violations),
            WriteError::PreconditionFailed { key, current } => {
                ApiError::PreconditionFailed(match current {
                    Some(revision) => format!(
                        "{key} is at revision {revision}; If-Match does not match (ETag \"{revision}\")"
                    ),
                    None => format!("{key} does not exist; If-Match cannot match"),
                })
            }
            WriteError::ConfigMoved { expected, current } => ApiError::PreconditionFailed(format!(
                "the config is at version {current}, not {expected}: read it again (ETag \"{current}\") and retry"
            )),
            WriteError::Store(error) => error.into(),
        }
    }
}
