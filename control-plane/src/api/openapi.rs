//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 description of this API, built from the same
//! JSON Schemas the API enforces, so the two cannot drift apart.

use axum::Json;
use gateway_proto::Kind;
use gateway_proto::schema::schema_of;
use serde_json::{Map, Value, json};

fn error_responses(codes: &[&str]) -> Map<String, Value> {
    codes
        .iter()
        .map(|code| {
            (
                (*code).to_owned(),
                json!({"description": "error", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}),
            )
        })
        .collect()
}

fn operation(summary: &str, ok: &str, body: Option<Value>, errors: &[&str]) -> Value {
    let mut responses = error_responses(errors);
    responses.insert(
        ok.to_owned(),
        json!({"description": "success", "content": {"application/json": {}}}),
    );
    responses.insert(
        "401".to_owned(),
        json!({"$ref": "#/components/responses/Unauthorized"}),
    );
    let mut op = json!({"summary": summary, "responses": responses});
    if let Some(schema) = body {
        op["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    op
}

/// Serves the OpenAPI document.
pub async fn document() -> Json<Value> {
    let mut paths = Map::new();
    let mut schemas = Map::new();
    for kind in Kind::ALL {
        let name = kind.singular();
        schemas.insert(name.to_owned(), schema_of(kind).clone());
        let reference = json!({"$ref": format!("#/components/schemas/{name}")});
        paths.insert(
            format!("/api/v1/{kind}"),
            json!({
                "get": operation(&format!("List {kind}"), "200", None, &["400"]),
                "post": operation(&format!("Create a {name} with a generated id"), "201", Some(reference.clone()), &["400", "409", "413"]),
            }),
        );
        paths.insert(
            format!("/api/v1/{kind}/{{id}}"),
            json!({
                "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}}],
                "get": operation(&format!("Get a {name}"), "200", None, &["404"]),
                "put": operation(&format!("Create or replace a {name}"), "200", Some(reference.clone()), &["400", "409", "412", "413"]),
                "patch": operation(&format!("Merge-patch a {name} (RFC 7396)"), "200", Some(json!({"type": "object"})), &["400", "404", "409", "412", "413"]),
                "delete": operation(&format!("Delete a {name}"), "200", None, &["404", "409", "412"]),
            }),
        );
    }
    let version_param = json!([{"name": "version", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}}]);
    paths.insert(
        "/api/v1/versions".into(),
        json!({"get": operation("List config versions, newest first", "200", None, &["400"])}),
    );
    paths.insert("/api/v1/versions/{version}".into(), json!({"parameters": version_param, "get": operation("One version's metadata and changes", "200", None, &["404"])}));
    paths.insert("/api/v1/versions/{version}/config".into(), json!({"parameters": version_param, "get": operation("The whole config at a version", "200", None, &["404"])}));
    paths.insert("/api/v1/versions/{version}/diff".into(), json!({"parameters": version_param, "get": operation("What changed between two versions (?from=)", "200", None, &["400", "404"])}));
    paths.insert("/api/v1/versions/{version}/rollback".into(), json!({"parameters": version_param, "post": operation("Make a new version equal to this one", "200", None, &["400", "404", "409"])}));
    paths.insert("/api/v1/config".into(), json!({
        "get": operation("Export the whole config", "200", None, &[]),
        "put": operation("Replace the whole config as one version (?dry_run=true answers the diff)", "200", Some(json!({"type": "object"})), &["400", "409", "413"]),
    }));
    paths.insert(
        "/api/v1/data-planes".into(),
        json!({"get": operation("Every data plane seen", "200", None, &[])}),
    );
    paths.insert(
        "/api/v1/status".into(),
        json!({"get": operation("Current version and fleet convergence", "200", None, &[])}),
    );
    // A kind by its plural or singular name (`routes`, `route`), as `Kind::parse` takes it.
    let kind_names: Vec<&str> = Kind::ALL
        .iter()
        .flat_map(|kind| [kind.as_str(), kind.singular()])
        .collect();
    let kind_param = json!([{"name": "kind", "in": "path", "required": true, "schema": {"type": "string", "enum": kind_names}}]);
    paths.insert(
        "/api/v1/schemas/{kind}".into(),
        json!({"parameters": kind_param, "get": operation("JSON Schema of a kind", "200", None, &["404"])}),
    );
    paths.insert(
        "/api/v1/schemas/plugins".into(),
        json!({"get": operation("Every plugin: name, priority, description", "200", None, &[])}),
    );
    paths.insert(
        "/api/v1/schemas/plugins/{name}".into(),
        json!({
            "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string"}}],
            "get": operation("A plugin's config schema", "200", None, &["404"]),
        }),
    );
    paths.insert("/api/v1/validate/{kind}".into(), json!({"parameters": kind_param, "post": operation("Validate a document without writing", "200", Some(json!({"type": "object"})), &["400", "404", "409"])}));
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string"},
                    "message": {"type": "string"},
                    "details": {"type": "array", "items": {"type": "object", "properties": {"pointer": {"type": "string"}, "message": {"type": "string"}}}}
                }
            }}
        }),
    );
    Json(json!({
        "openapi": "3.1.0",
        "info": {"title": "Gateway admin API", "version": env!("CARGO_PKG_VERSION")},
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "responses": {"Unauthorized": {"description": "missing or unknown token", "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}}
        }
    }))
}
