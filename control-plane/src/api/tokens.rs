//! `/api/v1/tokens`: admin API tokens with roles. A token is shown once, when made; the store
//! keeps its SHA-256 only. Tokens are not config: no versions, never streamed. Only the
//! `admin` role reaches these handlers (`auth::permits`).

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use gateway_proto::Violation;
use gateway_proto::model::is_valid_id;
use serde_json::{Value, json};

use super::auth::{ROLES, digest, generate_token};
use super::error::ApiError;
use super::{ApiPath, AppState, JsonBody};
use crate::store::{TokenRecord, TokenRemoval};

/// `GET /api/v1/tokens`: names, roles and times; never a token or its digest.
pub(super) async fn list(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let items: Vec<Value> = state
        .config
        .store()
        .tokens()
        .await?
        .iter()
        .map(|token| {
            json!({
                "name": token.name,
                "role": token.role,
                "created_at": token.created_at / 1000,
                "last_used_at": token.last_used_at.map(|at| at / 1000),
            })
        })
        .collect();
    Ok(Json(json!({ "items": items })))
}

/// `POST /api/v1/tokens` `{"name", "role"}`: 201 with the token, the only time it is shown.
pub(super) async fn create(
    State(state): State<AppState>,
    JsonBody(body): JsonBody,
) -> Result<Response, ApiError> {
    let (name, role) = parse_new_token(&body).map_err(ApiError::SchemaViolation)?;
    let token = generate_token()?;
    let record = TokenRecord::new(name, digest(&token), role);
    if !state.config.store().create_token(&record).await? {
        return Err(ApiError::Conflict(vec![Violation::new(
            "/name",
            format!("a token named {name:?} exists: revoke it first to replace it"),
        )]));
    }
    tracing::info!(token = %name, %role, "token created");
    let mut response = (
        StatusCode::CREATED,
        Json(json!({
            "name": name,
            "role": role,
            "token": token,
            "created_at": record.created_at / 1000,
        })),
    )
        .into_response();
    // The only copy of the token: no cache may keep it.
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(response)
}

/// `DELETE /api/v1/tokens/{name}`: revoked at once on every replica (they read the store on
/// each call). The last admin token stays: without it nobody could make tokens again.
pub(super) async fn revoke(
    State(state): State<AppState>,
    ApiPath(name): ApiPath<String>,
) -> Result<StatusCode, ApiError> {
    match state.config.store().remove_token(&name).await? {
        TokenRemoval::Removed => {
            tracing::info!(token = %name, "token revoked");
            Ok(StatusCode::NO_CONTENT)
        }
        TokenRemoval::NotFound => Err(ApiError::NotFound(format!("no token named {name:?}"))),
        TokenRemoval::LastAdmin => Err(ApiError::Conflict(vec![Violation::new(
            "",
            format!("{name:?} is the last admin token: make another admin token first"),
        )])),
    }
}

/// The name and role of a new token, or every violation with its pointer.
fn parse_new_token(body: &Value) -> Result<(&str, &str), Vec<Violation>> {
    let Some(fields) = body.as_object() else {
        return Err(vec![Violation::new("", "must be an object")]);
    };
    let mut violations: Vec<Violation> = fields
        .keys()
        .filter(|key| !matches!(key.as_str(), "name" | "role"))
        .map(|key| Violation::new(format!("/{key}"), "unknown property"))
        .collect();
    let name = fields.get("name").and_then(Value::as_str);
    match name {
        Some(name) if is_valid_id(name) => {}
        Some(_) => violations.push(Violation::new("/name", "must match [A-Za-z0-9._-]{1,64}")),
        None => violations.push(Violation::new("/name", "a string is required")),
    }
    let role = fields.get("role").and_then(Value::as_str);
    if !role.is_some_and(|role| ROLES.contains(&role)) {
        violations.push(Violation::new(
            "/role",
            format!("must be one of {}", ROLES.join(", ")),
        ));
    }
    match (name, role) {
        (Some(name), Some(role)) if violations.is_empty() => Ok((name, role)),
        _ => Err(violations),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_token_needs_a_valid_name_and_a_known_role() {
        assert_eq!(
            parse_new_token(&json!({"name": "ci", "role": "editor"})).ok(),
            Some(("ci", "editor"))
        );
        let pointers = |body: Value| -> Vec<String> {
            parse_new_token(&body)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.pointer)
                .collect()
        };
        assert_eq!(pointers(json!({"role": "root"})), ["/name", "/role"]);
        assert_eq!(
            pointers(json!({"name": "a b", "role": "viewer"})),
            ["/name"]
        );
        assert_eq!(
            pointers(json!({"name": "x", "role": "viewer", "token": "mine"})),
            ["/token"]
        );
        assert_eq!(pointers(json!([])), [""]);
    }
}
