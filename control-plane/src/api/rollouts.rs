//! `/api/v1/rollout-policy` and `/api/v1/rollouts`: staged rollouts (see `crate::rollout`).
//! The policy is not config: writing it makes no version and streams nothing.

use axum::Json;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use gateway_proto::Violation;
use gateway_proto::schema::validate_rollout_policy;
use serde_json::{Value, json};

use super::error::ApiError;
use super::{ApiPath, AppState, JsonBody};
use crate::rollout::{ActionError, state};

/// How many rollouts `GET /api/v1/rollouts` lists, newest first.
const LIST_LIMIT: u32 = 100;

/// `GET /api/v1/rollout-policy`.
pub async fn get_policy(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let policy = app
        .config
        .store()
        .rollout_policy()
        .await?
        .ok_or_else(|| ApiError::NotFound("no rollout policy is set".into()))?;
    let body: Value = serde_json::from_str(&policy.body).map_err(|error| {
        tracing::error!(%error, "the stored rollout policy is not JSON");
        ApiError::Internal
    })?;
    Ok(Json(body))
}

/// `PUT /api/v1/rollout-policy`: validated (400 when the served schema refuses it, 409 for the
/// stage rules it cannot say, every violation with its pointer), stored with its defaults
/// filled in; 201 when there was none, else 200. The first policy pins the fleet to the head.
pub async fn put_policy(
    State(app): State<AppState>,
    JsonBody(document): JsonBody,
) -> Result<Response, ApiError> {
    let policy = validate_rollout_policy(&document).map_err(ApiError::refused)?;
    let stored = serde_json::to_value(&policy).map_err(|_| ApiError::Internal)?;
    let store = app.config.store();
    let existed = store.rollout_policy().await?.is_some();
    store
        .put_rollout_policy(&stored.to_string(), app.config.current().version)
        .await?;
    app.rollouts.poke();
    let status = if existed {
        StatusCode::OK
    } else {
        StatusCode::CREATED
    };
    Ok((status, Json(stored)).into_response())
}

/// `DELETE /api/v1/rollout-policy`: every version goes everywhere at once again; a rollout in
/// progress is aborted first (its canary keeps nothing the rest does not get).
pub async fn delete_policy(State(app): State<AppState>) -> Result<StatusCode, ApiError> {
    let store = app.config.store();
    if !store.delete_rollout_policy().await? {
        return Err(ApiError::NotFound("no rollout policy is set".into()));
    }
    for rollout in store.rollouts(1).await? {
        if rollout.state == state::IN_PROGRESS {
            store
                .move_rollout(
                    rollout.version,
                    (state::IN_PROGRESS, rollout.stage),
                    (state::ABORTED, rollout.stage),
                    Some("the rollout policy was removed"),
                    None,
                )
                .await?;
        }
    }
    app.rollouts.poke();
    Ok(StatusCode::NO_CONTENT)
}

/// `GET /api/v1/rollouts`: newest first.
pub async fn list(State(app): State<AppState>) -> Result<Json<Value>, ApiError> {
    let items = app.rollouts.list(LIST_LIMIT).await?;
    Ok(Json(json!({ "items": items })))
}

/// `GET /api/v1/rollouts/{id}`.
pub async fn get_one(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    let view = app
        .rollouts
        .view(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("no rollout {id}")))?;
    Ok(Json(json!(view)))
}

/// `POST /api/v1/rollouts/{id}/promote`.
pub async fn promote(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(json!(app.rollouts.promote(id).await?)))
}

/// `POST /api/v1/rollouts/{id}/abort`.
pub async fn abort(
    State(app): State<AppState>,
    ApiPath(id): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = parse_id(&id)?;
    Ok(Json(json!(app.rollouts.abort(id).await?)))
}

/// The latest rollout while it is in progress or halted, for `GET /api/v1/status`.
pub async fn status_of(app: &AppState) -> Option<Value> {
    let latest = app.rollouts.list(1).await.ok()?.pop()?;
    matches!(latest.state.as_str(), state::IN_PROGRESS | state::HALTED).then(|| {
        json!({
            "id": latest.id,
            "state": latest.state,
            "stage": latest.stage,
            "halt_reason": latest.halt_reason,
        })
    })
}

/// A rollout id is the version it rolls out; anything else names no rollout.
fn parse_id(id: &str) -> Result<u64, ApiError> {
    id.parse()
        .map_err(|_| ApiError::NotFound(format!("no rollout {id:?}")))
}

impl From<ActionError> for ApiError {
    fn from(error: ActionError) -> Self {
        match error {
            ActionError::NotFound(id) => ApiError::NotFound(format!("no rollout {id}")),
            error @ ActionError::NotInProgress { .. } => {
                ApiError::Conflict(vec![Violation::new("", error.to_string())])
            }
            ActionError::Store(error) => error.into(),
        }
    }
}
