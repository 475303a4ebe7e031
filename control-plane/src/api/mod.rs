//! The admin REST API (axum), as `../shared/spec/admin-api.md` describes it.
//!
//! Handlers parse and authorise; every write goes through [`ConfigService::write`], which
//! validates and commits it as one config version. Every error renders in one JSON shape
//! ([`error::ApiError`]), including the extractor rejections axum would otherwise answer in
//! plain text.

pub mod auth;
pub mod error;
mod openapi;
mod rollouts;
mod tokens;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, FromRequest, FromRequestParts, Path, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Extension, Json, Router, middleware};
use gateway_proto::model::is_valid_id;
use gateway_proto::plugins;
use gateway_proto::schema::{check_server_fields, schema_of, validate_patch};
use gateway_proto::{Kind, ResourceKey, Violation, validate_resource};
use serde_json::{Value, json};

use crate::config::{
    ConfigService, ConfigState, IfMatch, WriteError, WriteOp, WriteOutcome, generate_id, render,
    render_stored,
};
use crate::fleet::Fleet;
use crate::metrics::{FleetGauges, metrics};
use crate::store::{ChangeOp, CommitMeta, VersionInfo};
use auth::{Caller, Tokens, require_token};
use error::ApiError;

/// Largest body accepted by resource endpoints.
pub const RESOURCE_BODY_LIMIT: usize = 1024 * 1024;
/// Largest body accepted by `PUT /api/v1/config` (a whole config).
pub const CONFIG_BODY_LIMIT: usize = 64 * 1024 * 1024;
/// The header carrying the config version a response reflects.
pub const CONFIG_VERSION_HEADER: &str = "x-config-version";
/// The header carrying a write's change message.
pub const CHANGE_MESSAGE_HEADER: &str = "x-change-message";
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
const MAX_MESSAGE_LEN: usize = 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    /// The config and its writes.
    pub config: Arc<ConfigService>,
    /// The data planes seen.
    pub fleet: Arc<Fleet>,
    /// Staged rollouts.
    pub rollouts: Arc<crate::rollout::Rollouts>,
}

/// Builds the admin API router.
pub fn router(state: AppState, tokens: Arc<Tokens>) -> Router {
    let api = Router::new()
        .route("/api/v1/versions", get(list_versions))
        .route("/api/v1/versions/{version}", get(get_version))
        .route("/api/v1/versions/{version}/config", get(version_config))
        .route("/api/v1/versions/{version}/diff", get(version_diff))
        .route("/api/v1/versions/{version}/rollback", post(rollback))
        .route(
            "/api/v1/config",
            get(export_config)
                .put(replace_config)
                .layer(DefaultBodyLimit::max(CONFIG_BODY_LIMIT)),
        )
        .route("/api/v1/data-planes", get(list_data_planes))
        .route("/api/v1/status", get(status))
        .route(
            "/api/v1/rollout-policy",
            get(rollouts::get_policy)
                .put(rollouts::put_policy)
                .delete(rollouts::delete_policy),
        )
        .route("/api/v1/rollouts", get(rollouts::list))
        .route("/api/v1/rollouts/{id}", get(rollouts::get_one))
        .route("/api/v1/rollouts/{id}/promote", post(rollouts::promote))
        .route("/api/v1/rollouts/{id}/abort", post(rollouts::abort))
        .route("/api/v1/schemas/plugins", get(plugin_schemas))
        .route("/api/v1/schemas/plugins/{name}", get(plugin_schema))
        .route("/api/v1/schemas/{kind}", get(kind_schema))
        .route("/api/v1/validate/{kind}", post(validate))
        .route("/api/v1/openapi.json", get(openapi::document))
        .route("/api/v1/tokens", get(tokens::list).post(tokens::create))
        .route("/api/v1/tokens/{name}", delete(tokens::revoke))
        .route("/api/v1/{kind}", get(list).post(create))
        .route(
            "/api/v1/{kind}/{id}",
            get(get_one)
                .put(put_one)
                .patch(patch_one)
                .delete(delete_one),
        )
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        // A layer, not a route layer: unknown paths and methods need a token too, so that
        // an anonymous caller cannot map the API by its 404s and 405s.
        .layer(middleware::from_fn_with_state(tokens, require_token))
        .layer(DefaultBodyLimit::max(RESOURCE_BODY_LIMIT))
        .with_state(state.clone());
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        // Like the health checks, without a token: Prometheus scrapes it, and it tells counts
        // only. The admin port's NetworkPolicy decides who reaches it.
        .route("/metrics", get(prometheus))
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
        .merge(api)
}

async fn not_found() -> ApiError {
    ApiError::NotFound("no such endpoint".into())
}

async fn method_not_allowed() -> Response {
    let mut response =
        ApiError::BadRequest("method not allowed on this endpoint".into()).into_response();
    *response.status_mut() = StatusCode::METHOD_NOT_ALLOWED;
    response
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn prometheus(State(state): State<AppState>) -> Response {
    let version = state.config.current().version;
    let fleet = state
        .fleet
        .summary(version)
        .await
        .ok()
        .map(|fleet| FleetGauges {
            connected: fleet.connected,
            applied_current: fleet.applied_current,
            rejected_current: fleet.rejected_current,
        });
    (
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; version=0.0.4"),
        )],
        metrics().render(version, fleet),
    )
        .into_response()
}

async fn readyz(State(state): State<AppState>) -> Response {
    match state.config.store().head().await {
        Ok(_) => Json(json!({"status": "ready"})).into_response(),
        Err(error) => ApiError::from(error).into_response(),
    }
}

/// A JSON request body; rejections share the API's error shape (400 or 413).
pub struct JsonBody(pub Value);

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, Self::Rejection> {
        let bytes = Bytes::from_request(request, state)
            .await
            .map_err(|rejection| {
                if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
                    ApiError::PayloadTooLarge(rejection.body_text())
                } else {
                    ApiError::BadRequest(rejection.body_text())
                }
            })?;
        serde_json::from_slice(&bytes)
            .map(JsonBody)
            .map_err(|e| ApiError::InvalidJson(format!("the body is not valid JSON: {e}")))
    }
}

/// Query parameters; a malformed query string is a 400 in the API's error shape.
pub struct QueryParams(pub HashMap<String, String>);

impl<S: Send + Sync> FromRequestParts<S> for QueryParams {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        axum::extract::Query::<HashMap<String, String>>::from_request_parts(parts, state)
            .await
            .map(|q| QueryParams(q.0))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

/// Path parameters; rejections (`%FF` in an id) share the API's error shape.
pub struct ApiPath<T>(pub T);

impl<S: Send + Sync, T> FromRequestParts<S> for ApiPath<T>
where
    T: serde::de::DeserializeOwned + Send,
{
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|path| ApiPath(path.0))
            .map_err(|e| ApiError::BadRequest(e.body_text()))
    }
}

impl QueryParams {
    fn limit(&self) -> Result<usize, ApiError> {
        match self.0.get("limit") {
            None => Ok(DEFAULT_PAGE),
            Some(raw) => match raw.parse::<usize>() {
                Ok(n) if (1..=MAX_PAGE).contains(&n) => Ok(n),
                _ => Err(ApiError::BadRequest(format!(
                    "limit must be an integer from 1 to {MAX_PAGE}, got {raw:?}"
                ))),
            },
        }
    }

    fn flag(&self, name: &str) -> Result<bool, ApiError> {
        match self.0.get(name).map(String::as_str) {
            None | Some("false") | Some("0") => Ok(false),
            Some("true") | Some("1") | Some("") => Ok(true),
            Some(other) => Err(ApiError::BadRequest(format!(
                "{name} must be true or false, got {other:?}"
            ))),
        }
    }

    fn version(&self, name: &str) -> Result<Option<u64>, ApiError> {
        self.0.get(name).map(|raw| parse_version(raw)).transpose()
    }
}

fn parse_version(raw: &str) -> Result<u64, ApiError> {
    // Stores keep versions as signed 64-bit integers: a larger number is no version at all.
    raw.parse::<u64>()
        .ok()
        .filter(|version| i64::try_from(*version).is_ok())
        .ok_or_else(|| ApiError::BadRequest(format!("{raw:?} is not a config version")))
}

fn collection(name: &str) -> Result<Kind, ApiError> {
    Kind::ALL
        .into_iter()
        .find(|k| k.as_str() == name)
        .ok_or_else(|| ApiError::NotFound(format!("unknown resource kind {name:?}")))
}

fn resource_key(kind: &str, id: &str) -> Result<ResourceKey, ApiError> {
    let kind = collection(kind)?;
    if !is_valid_id(id) {
        return Err(ApiError::SchemaViolation(vec![Violation::new(
            "/id",
            format!("{id:?} is not a valid id: 1 to 64 of [A-Za-z0-9._-]"),
        )]));
    }
    Ok(ResourceKey::new(kind, id))
}

fn if_match(headers: &HeaderMap) -> Result<Option<IfMatch>, ApiError> {
    let Some(value) = headers.get(header::IF_MATCH) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| ApiError::BadRequest("If-Match is not ASCII".into()))?
        .trim();
    if value == "*" {
        return Ok(Some(IfMatch::Any));
    }
    let tag = value.trim_start_matches("W/").trim_matches('"');
    // An entity tag that is not one of ours can never match: that is a 412, not a 400.
    Ok(Some(IfMatch::Revision(
        tag.parse::<u64>().unwrap_or(u64::MAX),
    )))
}

fn commit_meta(caller: &Caller, headers: &HeaderMap) -> Result<CommitMeta, ApiError> {
    let message = match headers.get(CHANGE_MESSAGE_HEADER) {
        None => None,
        Some(value) => {
            let text = value
                .to_str()
                .map_err(|_| ApiError::BadRequest("X-Change-Message must be ASCII".into()))?;
            if text.len() > MAX_MESSAGE_LEN {
                return Err(ApiError::BadRequest(format!(
                    "X-Change-Message is longer than {MAX_MESSAGE_LEN} bytes"
                )));
            }
            Some(text.to_owned())
        }
    };
    Ok(CommitMeta {
        author: caller.name.clone(),
        message,
    })
}

fn with_version(mut response: Response, version: u64) -> Response {
    response
        .headers_mut()
        .insert(CONFIG_VERSION_HEADER, HeaderValue::from(version));
    response
}

fn etag(revision: u64) -> HeaderValue {
    HeaderValue::from_str(&format!("\"{revision}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// Applies a single-resource write and answers with the stored resource.
async fn write_resource(
    state: &AppState,
    caller: &Caller,
    headers: &HeaderMap,
    op: WriteOp,
    key: &ResourceKey,
) -> Result<Response, ApiError> {
    let outcome = state
        .config
        .write(op, &commit_meta(caller, headers)?, false)
        .await?;
    resource_response(&outcome, key)
}

/// The answer to a single-resource write: the stored resource, its ETag and the version.
fn resource_response(outcome: &WriteOutcome, key: &ResourceKey) -> Result<Response, ApiError> {
    let entry = outcome.state.resources.get(key).ok_or(ApiError::Internal)?;
    let created = outcome
        .diff
        .iter()
        .any(|d| d.op == ChangeOp::Create && d.kind == key.kind && d.id == key.id);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut response = (status, Json(render(key, entry))).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(entry.revision));
    if created
        && let Ok(location) = HeaderValue::from_str(&format!("/api/v1/{}/{}", key.kind, key.id))
    {
        response.headers_mut().insert(header::LOCATION, location);
    }
    Ok(with_version(response, outcome.version))
}

async fn list(
    State(state): State<AppState>,
    ApiPath(kind): ApiPath<String>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let kind = collection(&kind)?;
    let limit = query.limit()?;
    let config = state.config.current();
    let cursor = query.0.get("cursor").cloned().unwrap_or_default();
    let mut items: Vec<Value> = config
        .of_kind(kind)
        .filter(|(key, _)| key.id > cursor)
        .take(limit + 1)
        .map(|(key, entry)| render(key, entry))
        .collect();
    let next_cursor = if items.len() > limit {
        items.truncate(limit);
        items
            .last()
            .and_then(|i| i["id"].as_str())
            .map(str::to_owned)
    } else {
        None
    };
    Ok(with_version(
        Json(json!({"items": items, "next_cursor": next_cursor})).into_response(),
        config.version,
    ))
}

async fn get_one(
    State(state): State<AppState>,
    ApiPath((kind, id)): ApiPath<(String, String)>,
) -> Result<Response, ApiError> {
    let key = resource_key(&kind, &id).map_err(|_| not_found_key(&kind, &id))?;
    let config = state.config.current();
    let entry = config
        .resources
        .get(&key)
        .ok_or_else(|| not_found_key(&kind, &id))?;
    let mut response = Json(render(&key, entry)).into_response();
    response
        .headers_mut()
        .insert(header::ETAG, etag(entry.revision));
    Ok(with_version(response, config.version))
}

fn not_found_key(kind: &str, id: &str) -> ApiError {
    ApiError::NotFound(format!("{kind}/{id} does not exist"))
}

async fn create(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(kind): ApiPath<String>,
    headers: HeaderMap,
    JsonBody(document): JsonBody,
) -> Result<Response, ApiError> {
    let kind = collection(&kind)?;
    refuse_mistyped_server_fields(&document, "")?;
    let id = match document.get("id") {
        Some(Value::String(id)) => id.clone(),
        Some(_) => {
            return Err(ApiError::SchemaViolation(vec![Violation::new(
                "/id",
                "id must be a string",
            )]));
        }
        None => generate_id(),
    };
    let key = resource_key(kind.as_str(), &id)?;
    let op = WriteOp::Put {
        key: key.clone(),
        document,
        if_match: Some(IfMatch::Absent),
    };
    write_resource(&state, &caller, &headers, op, &key).await
}

async fn put_one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((kind, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    JsonBody(document): JsonBody,
) -> Result<Response, ApiError> {
    let key = resource_key(&kind, &id)?;
    refuse_mistyped_server_fields(&document, "")?;
    let op = WriteOp::Put {
        key: key.clone(),
        document,
        if_match: if_match(&headers)?,
    };
    write_resource(&state, &caller, &headers, op, &key).await
}

async fn patch_one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((kind, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
    JsonBody(patch): JsonBody,
) -> Result<Response, ApiError> {
    let key = resource_key(&kind, &id).map_err(|_| not_found_key(&kind, &id))?;
    // The patch itself first: what is wrong with it whatever is stored is a 400.
    let violations = validate_patch(key.kind, &patch);
    if !violations.is_empty() {
        return Err(ApiError::SchemaViolation(violations));
    }
    if let Some(Value::String(body_id)) = patch.get("id")
        && *body_id != key.id
    {
        return Err(ApiError::SchemaViolation(vec![Violation::new(
            "/id",
            format!(
                "the body's id {body_id:?} differs from the id in the URL ({:?})",
                key.id
            ),
        )]));
    }
    let op = WriteOp::Patch {
        key: key.clone(),
        patch,
        if_match: if_match(&headers)?,
    };
    let meta = commit_meta(&caller, &headers)?;
    match state.config.write(op, &meta, false).await {
        Ok(outcome) => resource_response(&outcome, &key),
        // A well-formed patch whose merged result breaks the schema cannot be applied to the
        // resource as it stands: RFC 5789 §2.2's 409, not a 400 about the request.
        Err(WriteError::Invalid(violations)) if Violation::all_references(&violations) => {
            Err(ApiError::Conflict(violations))
        }
        Err(WriteError::Invalid(violations)) => Err(ApiError::PatchResultInvalid(violations)),
        Err(error) => Err(error.into()),
    }
}

/// Refuses server-managed fields of the wrong type (400): they are ignored when well-typed,
/// as the schema says, so that a GET's answer can be written back.
fn refuse_mistyped_server_fields(document: &Value, at: &str) -> Result<(), ApiError> {
    let violations = check_server_fields(document, at);
    if violations.is_empty() {
        Ok(())
    } else {
        Err(ApiError::SchemaViolation(violations))
    }
}

async fn delete_one(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath((kind, id)): ApiPath<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let key = resource_key(&kind, &id).map_err(|_| not_found_key(&kind, &id))?;
    let op = WriteOp::Delete {
        key: key.clone(),
        if_match: if_match(&headers)?,
    };
    let outcome = state
        .config
        .write(op, &commit_meta(&caller, &headers)?, false)
        .await?;
    Ok(with_version(
        Json(json!({"kind": key.kind, "id": key.id, "deleted": true, "version": outcome.version}))
            .into_response(),
        outcome.version,
    ))
}

fn version_view(info: &VersionInfo) -> Value {
    json!({
        "version": info.version,
        "created_at": info.created_at / 1000,
        "author": info.author,
        "message": info.message,
        "changes": info.changes,
    })
}

async fn list_versions(
    State(state): State<AppState>,
    query: QueryParams,
) -> Result<Response, ApiError> {
    let limit = query.limit()?;
    let before = query.version("cursor")?;
    let page = state
        .config
        .store()
        .list_versions(before, limit as u32)
        .await?;
    let next_cursor = (page.len() == limit)
        .then(|| page.last().map(|v| v.version.to_string()))
        .flatten()
        .filter(|v| v != "1");
    let items: Vec<Value> = page.iter().map(version_view).collect();
    Ok(with_version(
        Json(json!({"items": items, "next_cursor": next_cursor})).into_response(),
        state.config.current().version,
    ))
}

async fn existing_version(state: &AppState, raw: &str) -> Result<VersionInfo, ApiError> {
    let version = parse_version(raw)
        .map_err(|_| ApiError::NotFound(format!("version {raw:?} does not exist")))?;
    state
        .config
        .store()
        .version(version)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("version {version} does not exist")))
}

async fn get_version(
    State(state): State<AppState>,
    ApiPath(version): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    Ok(Json(version_view(
        &existing_version(&state, &version).await?,
    )))
}

async fn version_config(
    State(state): State<AppState>,
    ApiPath(version): ApiPath<String>,
) -> Result<Json<Value>, ApiError> {
    let info = existing_version(&state, &version).await?;
    let resources = state.config.store().config_at(info.version).await?;
    let mut document = serde_json::Map::new();
    document.insert("version".into(), info.version.into());
    for kind in Kind::ALL {
        let items: Vec<Value> = resources
            .iter()
            .filter(|r| r.key.kind == kind)
            .map(render_stored)
            .collect();
        document.insert(kind.as_str().into(), items.into());
    }
    Ok(Json(Value::Object(document)))
}

async fn version_diff(
    State(state): State<AppState>,
    ApiPath(version): ApiPath<String>,
    query: QueryParams,
) -> Result<Json<Value>, ApiError> {
    let to = existing_version(&state, &version).await?.version;
    let from = query.version("from")?.unwrap_or(to.saturating_sub(1));
    if from > 0 {
        existing_version(&state, &from.to_string()).await?;
    }
    let changes = state.config.diff_versions(from, to).await?;
    Ok(Json(json!({"from": from, "to": to, "changes": changes})))
}

async fn rollback(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    ApiPath(version): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let to = existing_version(&state, &version).await?.version;
    let mut meta = commit_meta(&caller, &headers)?;
    meta.message
        .get_or_insert_with(|| format!("rollback to version {to}"));
    let outcome = state
        .config
        .write(WriteOp::Rollback { to }, &meta, false)
        .await?;
    Ok(with_version(
        Json(json!({
            "version": outcome.version,
            "rolled_back_to": to,
            "written": outcome.written,
            "changes": outcome.diff,
        }))
        .into_response(),
        outcome.version,
    ))
}

fn export(config: &ConfigState) -> Value {
    let mut document = serde_json::Map::new();
    document.insert("version".into(), config.version.into());
    for kind in Kind::ALL {
        let items: Vec<Value> = config
            .of_kind(kind)
            .map(|(key, entry)| render(key, entry))
            .collect();
        document.insert(kind.as_str().into(), items.into());
    }
    Value::Object(document)
}

async fn export_config(State(state): State<AppState>) -> Response {
    let config = state.config.current();
    let mut response = with_version(Json(export(&config)).into_response(), config.version);
    response
        .headers_mut()
        .insert(header::ETAG, etag(config.version));
    response
}

/// Turns a whole-config document into a [`WriteOp::ReplaceAll`] based on `if_version`,
/// reporting every structural problem.
fn parse_config_document(document: Value, if_version: Option<u64>) -> Result<WriteOp, ApiError> {
    let Value::Object(sections) = document else {
        return Err(ApiError::SchemaViolation(vec![Violation::new(
            "",
            "the config must be an object: {\"upstreams\": [...], \"routes\": [...]}",
        )]));
    };
    let mut violations = Vec::new();
    let mut documents = BTreeMap::new();
    let mut pointers = BTreeMap::new();
    for (name, items) in sections {
        if name == "version" {
            // What an export says; ignored, but only when it could be one.
            if items.as_u64().is_none_or(|v| i64::try_from(v).is_err()) {
                violations.push(Violation::new(
                    "/version",
                    "version is server-managed: an integer from 0, ignored on input",
                ));
            }
            continue;
        }
        let Some(kind) = Kind::ALL.into_iter().find(|k| k.as_str() == name) else {
            violations.push(Violation::new(
                format!("/{name}"),
                format!("unknown resource kind {name:?}"),
            ));
            continue;
        };
        let Value::Array(items) = items else {
            violations.push(Violation::new(
                format!("/{name}"),
                "must be an array of resources",
            ));
            continue;
        };
        for (index, item) in items.into_iter().enumerate() {
            let at = format!("/{name}/{index}");
            let Some(id) = item.get("id").and_then(Value::as_str).map(str::to_owned) else {
                violations.push(Violation::new(
                    format!("{at}/id"),
                    "every resource needs a string id",
                ));
                continue;
            };
            if !is_valid_id(&id) {
                violations.push(Violation::new(
                    format!("{at}/id"),
                    format!("{id:?} is not a valid id: 1 to 64 of [A-Za-z0-9._-]"),
                ));
                continue;
            }
            violations.extend(check_server_fields(&item, &at));
            let key = ResourceKey::new(kind, id);
            if documents.insert(key.clone(), item).is_some() {
                // Ids must be unique: a uniqueness rule, which no schema says of an array.
                violations.push(Violation::reference(
                    format!("{at}/id"),
                    format!("{key} appears twice"),
                ));
            }
            pointers.insert(key, at);
        }
    }
    if violations.is_empty() {
        Ok(WriteOp::ReplaceAll {
            documents,
            pointers,
            if_version,
        })
    } else {
        Err(ApiError::refused(violations))
    }
}

async fn replace_config(
    State(state): State<AppState>,
    Extension(caller): Extension<Caller>,
    headers: HeaderMap,
    query: QueryParams,
    JsonBody(document): JsonBody,
) -> Result<Response, ApiError> {
    let dry_run = query.flag("dry_run")?;
    // The whole config's entity tag is its version (GET /config answers it as its ETag);
    // `*` holds always, since the config always exists.
    let if_version = match if_match(&headers)? {
        None | Some(IfMatch::Any) => None,
        Some(IfMatch::Revision(version)) => Some(version),
        Some(IfMatch::Absent) => None,
    };
    let op = parse_config_document(document, if_version)?;
    let outcome = state
        .config
        .write(op, &commit_meta(&caller, &headers)?, dry_run)
        .await?;
    Ok(with_version(
        Json(json!({
            "version": outcome.version,
            "dry_run": dry_run,
            "written": outcome.written,
            "changes": outcome.diff,
        }))
        .into_response(),
        outcome.version,
    ))
}

async fn list_data_planes(State(state): State<AppState>) -> Result<Json<Value>, ApiError> {
    let items = state.fleet.list().await?;
    Ok(Json(json!({ "items": items })))
}

/// The version this replica serves and the fleet's counts. While the store is unreachable
/// it still answers (the version it holds), with `store_reachable: false` and no counts.
/// `certificates_expiring`: the certificates every data plane serves that expire within 14
/// days (or have), soonest first.
async fn status(State(state): State<AppState>) -> Json<Value> {
    let config = state.config.current();
    let version = config.version;
    let fleet = state.fleet.summary(version).await;
    let now = crate::store::now_ms() / 1000;
    let expiring = crate::certificates::expiring(&config, now);
    Json(json!({
        "version": version,
        "data_planes": fleet.as_ref().ok().map(|fleet| json!({
            "connected": fleet.connected,
            "applied_current": fleet.applied_current,
            "rejected_current": fleet.rejected_current,
        })),
        "store": format!("{:?}", state.config.store().backend()).to_lowercase(),
        "store_reachable": fleet.is_ok(),
        "store_id": state.config.store_id(),
        "control_plane_id": state.fleet.control_plane_id(),
        "certificates_expiring": expiring,
        "rollout": rollouts::status_of(&state).await,
    }))
}

async fn kind_schema(ApiPath(kind): ApiPath<String>) -> Result<Json<Value>, ApiError> {
    if kind == "rollout-policy" {
        return Ok(Json(gateway_proto::schema::rollout_policy_schema().clone()));
    }
    let kind =
        Kind::parse(&kind).ok_or_else(|| ApiError::NotFound(format!("no schema for {kind:?}")))?;
    Ok(Json(schema_of(kind).clone()))
}

async fn plugin_schemas() -> Json<Value> {
    let items: Vec<Value> = plugins::PLUGINS
        .iter()
        .map(|p| json!({"name": p.name, "priority": p.priority, "description": p.description}))
        .collect();
    Json(json!({ "items": items }))
}

async fn plugin_schema(ApiPath(name): ApiPath<String>) -> Result<Json<Value>, ApiError> {
    plugins::plugin(&name)
        .map(|def| Json(plugins::schema_document(def)))
        .ok_or_else(|| ApiError::NotFound(format!("no plugin named {name:?}")))
}

async fn validate(
    State(state): State<AppState>,
    ApiPath(kind): ApiPath<String>,
    JsonBody(document): JsonBody,
) -> Result<Json<Value>, ApiError> {
    let kind = Kind::parse(&kind)
        .ok_or_else(|| ApiError::NotFound(format!("unknown resource kind {kind:?}")))?;
    let mut body = document;
    refuse_mistyped_server_fields(&body, "")?;
    if let Value::Object(fields) = &mut body {
        for field in gateway_proto::model::SERVER_FIELDS {
            fields.remove(field);
        }
    }
    let parsed = validate_resource(kind, &body).map_err(ApiError::refused)?;
    let refused = gateway_proto::check_new_document(&parsed);
    if !refused.is_empty() {
        return Err(ApiError::refused(refused));
    }
    let config = state.config.current();
    let missing: Vec<Violation> = parsed
        .references()
        .into_iter()
        .filter(|target| !config.resources.contains_key(target))
        .flat_map(|target| {
            // Located where the document names it, as a write reports it.
            gateway_proto::snapshot::reference_pointers(&parsed, &target)
                .into_iter()
                .map(move |pointer| Violation::new(pointer, format!("{target} does not exist")))
        })
        .collect();
    if !missing.is_empty() {
        return Err(ApiError::Conflict(missing));
    }
    Ok(Json(json!({"valid": true})))
}
