//! `GET /api/v1/openapi.json`: the OpenAPI 3.1 description of this API, built from the same
//! JSON Schemas the API enforces, so the two cannot drift apart.
//!
//! It says what the server does, not what it might: every status an operation can answer
//! (201 and 200 for a `PUT` that creates or replaces, 412 for a stale `If-Match`, 413 for a body
//! over the limit, 503 while the store is unreachable), the headers it sets (`ETag`,
//! `X-Config-Version`, `Location`), and request bodies that reference the schemas the server
//! validates them against. `scripts/schemathesis.sh` holds the two to each other in CI.

use axum::Json;
use gateway_proto::Kind;
use gateway_proto::plugins::PLUGINS;
use gateway_proto::schema::{merge_patch_schema, rollout_policy_schema, schema_of};
use serde_json::{Map, Value, json};

use super::auth::ROLES;
use super::{CONFIG_BODY_LIMIT, MAX_PAGE, RESOURCE_BODY_LIMIT};

/// What each error status means here; every one answers the [`super::error::ApiError`] shape.
fn error_response(status: &str) -> Value {
    let description = match status {
        "400" => {
            "Bad request: a body that is not JSON, a bad query parameter or header, or a \
             document the schema refuses (every violation listed with its JSON pointer). A \
             regular expression must also compile in Rust's syntax, which `format: regex` \
             (ECMA-262) cannot say. A certificate's PEM must also parse, its key match its \
             leaf certificate, and each of its SNIs be one of that certificate's names (exactly, \
             or through a wildcard per RFC 6125), which no schema can say either: pointers \
             /cert, /key and /snis/N."
        }
        "401" => "A valid bearer token is required.",
        "403" => "The token's role forbids the call.",
        "404" => "No such resource, version or endpoint.",
        "409" => {
            "Conflict: the document is well formed but what it names does not resolve — \
             another resource (upstream_id, a traffic-split upstream, a batch sub-request's \
             upstream), another part of the document ({resp.NAME…} naming no other \
             sub-request, {param.NAME} that a route path does not capture, sub-requests \
             waiting for each other in a cycle) — or a name it uses is not unique (sub-request \
             names, a path's :segment names, a node's host and port, a consumer credential, \
             an id already taken on POST, a second default certificate, a certificate key, \
             JWT secret or purge_key written as \"<redacted>\" with none stored); a delete of something still \
             referenced; for PATCH, \
             a patch whose merged result the kind's schema refuses (RFC 5789 §2.2); a rollout \
             policy whose stages do not ascend to a last {\"percent\": 100} or do not take the \
             cohort's form (a percent for hash cohorts, labels for label cohorts); a rollout \
             action on a rollout no longer in progress. Every violation is listed with its JSON \
             pointer."
        }
        "412" => "If-Match no longer matches the resource's revision; nothing was written.",
        "413" => "The body exceeds the limit.",
        "503" => "The config store cannot be reached, or changed concurrently; retry.",
        _ => "Error.",
    };
    json!({"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}})
}

fn header(name: &str) -> Value {
    json!({"$ref": format!("#/components/headers/{name}")})
}

/// A JSON answer of `schema`, with the headers named.
fn answer(description: &str, schema: Value, headers: &[&str]) -> Value {
    let mut answer = json!({
        "description": description,
        "content": {"application/json": {"schema": schema}}
    });
    if !headers.is_empty() {
        let headers: Map<String, Value> = headers
            .iter()
            .map(|name| ((*name).to_owned(), header(name)))
            .collect();
        answer["headers"] = Value::Object(headers);
    }
    answer
}

fn schema_ref(name: &str) -> Value {
    json!({"$ref": format!("#/components/schemas/{name}")})
}

/// An operation: its summary and description, successful answers, error statuses, and the
/// JSON body it takes, if any.
fn operation(
    summary: &str,
    description: &str,
    ok: Vec<(&str, Value)>,
    errors: &[&str],
    body: Option<Value>,
) -> Value {
    let mut responses: Map<String, Value> = ok
        .into_iter()
        .map(|(status, answer)| (status.to_owned(), answer))
        .collect();
    for status in ["401", "403"].iter().chain(errors) {
        responses.insert((*status).to_owned(), error_response(status));
    }
    let mut op = json!({"summary": summary, "responses": responses});
    if !description.is_empty() {
        op["description"] = description.into();
    }
    if let Some(schema) = body {
        op["requestBody"] =
            json!({"required": true, "content": {"application/json": {"schema": schema}}});
    }
    op
}

fn change_message_param() -> Value {
    json!({"$ref": "#/components/parameters/ChangeMessage"})
}

const IF_MATCH: &str = "Optimistic concurrency: send `If-Match: \"<revision>\"` (the resource's \
    ETag) to write only over that revision, or `If-Match: *` to require that the resource \
    exists; a mismatch answers 412 and writes nothing.";

/// The operations on one kind's collection and on one of its resources.
fn kind_paths(kind: Kind, paths: &mut Map<String, Value>) {
    let name = kind.singular();
    let stored = schema_ref(&format!("{name}-stored"));
    let written = json!({"description": format!("The stored {name}, with its server-managed fields."), "schema": stored});
    let stored_answer = |description: &str, headers: &[&str]| {
        answer(description, written["schema"].clone(), headers)
    };
    let created = stored_answer(
        &format!("Created: the stored {name}."),
        &["ETag", "X-Config-Version", "Location"],
    );
    let page = json!({
        "type": "object",
        "required": ["items", "next_cursor"],
        "properties": {
            "items": {"type": "array", "items": written["schema"].clone()},
            "next_cursor": {"type": ["string", "null"], "description": "Pass as ?cursor= for the next page; null on the last."}
        }
    });
    let write_errors = ["400", "409", "413", "503"];
    paths.insert(
        format!("/api/v1/{kind}"),
        json!({
            "get": {
                "parameters": [
                    {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": super::DEFAULT_PAGE}},
                    {"name": "cursor", "in": "query", "required": false, "schema": {"type": "string"}, "description": "The next_cursor of the previous page."}
                ],
                "summary": format!("List {kind}, by id"),
                "responses": operation(
                    "", "",
                    vec![("200", answer(&format!("A page of {kind}."), page, &["X-Config-Version"]))],
                    &["400"], None,
                )["responses"]
            },
            "post": with_parameters(operation(
                &format!("Create a {name}"),
                "The id is the body's `id`, or a generated one when absent (answered in the body and in Location). An id already taken answers 409: PUT replaces.",
                vec![("201", created.clone())],
                &write_errors,
                Some(schema_ref(name)),
            ), vec![change_message_param()]),
        }),
    );
    let mut put_errors = write_errors.to_vec();
    put_errors.push("412");
    let mut patch_errors = put_errors.clone();
    patch_errors.push("404");
    paths.insert(
        format!("/api/v1/{kind}/{{id}}"),
        json!({
            "parameters": [{"name": "id", "in": "path", "required": true, "schema": {"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"}}],
            "get": operation(
                &format!("Get a {name}"), "",
                vec![("200", stored_answer(&format!("The {name}."), &["ETag", "X-Config-Version"]))],
                &["404"], None,
            ),
            "put": with_parameters(operation(
                &format!("Create or replace a {name}"),
                &format!("201 when it creates, 200 when it replaces. {IF_MATCH}"),
                vec![
                    ("200", stored_answer(&format!("Replaced: the stored {name}."), &["ETag", "X-Config-Version"])),
                    ("201", created),
                ],
                &put_errors,
                Some(json!({"allOf": [
                    schema_ref(name),
                    {"properties": {"id": {"readOnly": true, "description": "The URL's id: a body id must equal it."}}}
                ]})),
            ), vec![change_message_param()]),
            "patch": with_parameters(operation(
                &format!("Merge-patch a {name} (RFC 7396)"),
                &format!("The patch is checked against its schema (400), then the merged document against the {name} schema (409 when the result breaks it). {IF_MATCH}"),
                vec![("200", stored_answer(&format!("The patched {name}."), &["ETag", "X-Config-Version"]))],
                &patch_errors,
                Some(schema_ref(&format!("{name}-patch"))),
            ), vec![change_message_param()]),
            "delete": with_parameters(operation(
                &format!("Delete a {name}"),
                &format!("A {name} another resource still references cannot be deleted (409). {IF_MATCH}"),
                vec![("200", answer(
                    "Deleted.",
                    json!({
                        "type": "object",
                        "required": ["kind", "id", "deleted", "version"],
                        "properties": {
                            "kind": {"const": kind.as_str()},
                            "id": {"type": "string"},
                            "deleted": {"const": true},
                            "version": {"type": "integer", "minimum": 1}
                        }
                    }),
                    &["X-Config-Version"],
                ))],
                &["400", "404", "409", "412", "503"],
                None,
            ), vec![change_message_param()]),
        }),
    );
    paths.insert(
        format!("/api/v1/validate/{name}"),
        json!({"post": operation(
            &format!("Validate a {name} without writing"),
            &format!("The same checks as a write: the {name} schema (400), then the rules it cannot say and references to the current config (409). `/api/v1/validate/{kind}` is the same endpoint."),
            vec![("200", answer("Valid.", json!({"type": "object", "required": ["valid"], "properties": {"valid": {"const": true}}}), &[]))],
            &["400", "409", "413"],
            Some(schema_ref(name)),
        )}),
    );
}

fn with_parameters(mut op: Value, parameters: Vec<Value>) -> Value {
    op["parameters"] = Value::Array(parameters);
    op
}

/// The whole config as `GET /api/v1/config` exports it and `PUT` replaces it.
fn config_schema(stored: bool) -> Value {
    let mut properties = Map::new();
    properties.insert(
        "version".into(),
        json!({"type": "integer", "minimum": 0, "readOnly": true, "description": "The version exported; ignored on PUT."}),
    );
    for kind in Kind::ALL {
        let item = if stored {
            schema_ref(&format!("{}-stored", kind.singular()))
        } else {
            json!({"allOf": [schema_ref(kind.singular()), {"required": ["id"]}]})
        };
        properties.insert(
            kind.as_str().into(),
            json!({"type": "array", "items": item, "description": format!("Every {}; ids unique (409 otherwise).", kind.singular())}),
        );
    }
    let mut schema =
        json!({"type": "object", "properties": properties, "additionalProperties": false});
    if stored {
        let mut required = vec!["version".to_owned()];
        required.extend(Kind::ALL.iter().map(|k| k.as_str().to_owned()));
        schema["required"] = json!(required);
    }
    schema
}

fn version_paths(paths: &mut Map<String, Value>) {
    let version_param = json!([{"name": "version", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}}]);
    let version = schema_ref("Version");
    let changes = json!({"type": "array", "items": schema_ref("Change")});
    paths.insert(
        "/api/v1/versions".into(),
        json!({"get": {
            "parameters": [
                {"name": "limit", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 1, "maximum": MAX_PAGE, "default": super::DEFAULT_PAGE}},
                {"name": "cursor", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": i64::MAX}, "description": "The next_cursor of the previous page: versions below it."}
            ],
            "summary": "List config versions, newest first",
            "responses": operation("", "", vec![("200", answer("A page of versions.", json!({
                "type": "object",
                "required": ["items", "next_cursor"],
                "properties": {"items": {"type": "array", "items": version}, "next_cursor": {"type": ["string", "null"]}}
            }), &["X-Config-Version"]))], &["400", "503"], None)["responses"]
        }}),
    );
    paths.insert(
        "/api/v1/versions/{version}".into(),
        json!({"parameters": version_param, "get": operation("One version's metadata and changes", "", vec![("200", answer("The version.", version, &[]))], &["404", "503"], None)}),
    );
    paths.insert(
        "/api/v1/versions/{version}/config".into(),
        json!({"parameters": version_param, "get": operation("The whole config at a version", "", vec![("200", answer("The config.", config_schema(true), &[]))], &["404", "503"], None)}),
    );
    paths.insert(
        "/api/v1/versions/{version}/diff".into(),
        json!({
            "parameters": version_param,
            "get": {
                "parameters": [{"name": "from", "in": "query", "required": false, "schema": {"type": "integer", "minimum": 0, "maximum": i64::MAX}, "description": "The version to compare with; the one before by default."}],
                "summary": "What changed between two versions",
                "responses": operation("", "", vec![("200", answer("The changes.", json!({
                    "type": "object",
                    "required": ["from", "to", "changes"],
                    "properties": {"from": {"type": "integer"}, "to": {"type": "integer"}, "changes": changes}
                }), &[]))], &["400", "404", "503"], None)["responses"]
            }
        }),
    );
    paths.insert(
        "/api/v1/versions/{version}/rollback".into(),
        json!({
            "parameters": version_param,
            "post": with_parameters(operation(
                "Make a new version whose config equals this one",
                "Validated like any write; a rollback that changes nothing writes no version.",
                vec![("200", answer("Rolled back.", json!({
                    "type": "object",
                    "required": ["version", "rolled_back_to", "written", "changes"],
                    "properties": {"version": {"type": "integer"}, "rolled_back_to": {"type": "integer"}, "written": {"type": "boolean"}, "changes": changes}
                }), &["X-Config-Version"]))],
                &["400", "404", "409", "503"],
                None,
            ), vec![change_message_param()])
        }),
    );
    paths.insert(
        "/api/v1/config".into(),
        json!({
            "get": operation("Export the whole config", "The `ETag` is the config's version: send it back as `If-Match` on `PUT` to write only over what was read.", vec![("200", answer("The config.", config_schema(true), &["ETag", "X-Config-Version"]))], &[], None),
            "put": with_parameters(operation(
                "Replace the whole config as one version",
                &format!("Declarative: resources left out are deleted. `?dry_run=true` answers the changes without writing. `If-Match: \"<version>\"` (the `ETag` of `GET`) writes only if the config is still at that version, else 412 and nothing written. The body may be up to {CONFIG_BODY_LIMIT} bytes."),
                vec![("200", answer("Replaced (or, with dry_run, what would change).", json!({
                    "type": "object",
                    "required": ["version", "dry_run", "written", "changes"],
                    "properties": {"version": {"type": "integer"}, "dry_run": {"type": "boolean"}, "written": {"type": "boolean"}, "changes": changes}
                }), &["X-Config-Version"]))],
                &["400", "409", "412", "413", "503"],
                Some(config_schema(false)),
            ), vec![
                change_message_param(),
                json!({"name": "dry_run", "in": "query", "required": false, "schema": {"type": "boolean", "default": false}})
            ])
        }),
    );
}

/// `/api/v1/tokens`: admin tokens, not config (no versions); the admin role's alone.
fn token_paths(paths: &mut Map<String, Value>) {
    let name = json!({"type": "string", "pattern": "^[A-Za-z0-9._-]{1,64}$"});
    let role = json!({"enum": ROLES});
    paths.insert(
        "/api/v1/tokens".into(),
        json!({
            "get": operation("List tokens: names, roles and times, never a token", "", vec![("200", answer("The tokens.", json!({
                "type": "object",
                "required": ["items"],
                "properties": {"items": {"type": "array", "items": {
                    "type": "object",
                    "required": ["name", "role", "created_at", "last_used_at"],
                    "properties": {
                        "name": name,
                        "role": role,
                        "created_at": {"type": "integer", "description": "Unix seconds."},
                        "last_used_at": {"type": ["integer", "null"], "description": "Unix seconds."}
                    }
                }}}
            }), &[]))], &["503"], None),
            "post": operation(
                "Make a token",
                "The token is in the answer, and only there: the store keeps its SHA-256. A name already taken answers 409.",
                vec![("201", json!({
                    "description": "Made.",
                    "headers": {"Cache-Control": {"required": true, "schema": {"const": "no-store"}}},
                    "content": {"application/json": {"schema": {
                        "type": "object",
                        "required": ["name", "role", "token", "created_at"],
                        "properties": {"name": name, "role": role, "token": {"type": "string"}, "created_at": {"type": "integer"}}
                    }}}
                }))],
                &["400", "409", "413", "503"],
                Some(json!({
                    "type": "object",
                    "required": ["name", "role"],
                    "properties": {"name": name, "role": role},
                    "additionalProperties": false
                })),
            ),
        }),
    );
    paths.insert(
        "/api/v1/tokens/{name}".into(),
        json!({
            "parameters": [{"name": "name", "in": "path", "required": true, "schema": name}],
            "delete": operation(
                "Revoke a token, at once on every replica",
                "The last admin token cannot be revoked (409).",
                vec![("204", json!({"description": "Revoked."}))],
                &["404", "409", "503"],
                None,
            ),
        }),
    );
}

/// `/api/v1/rollout-policy` and `/api/v1/rollouts`: staged rollouts. The policy is not config
/// (no versions, never streamed); reads are every role's, writes and actions an editor's.
fn rollout_paths(paths: &mut Map<String, Value>) {
    let policy = schema_ref("rollout-policy");
    let stored = |description: &str| answer(description, policy.clone(), &[]);
    paths.insert(
        "/api/v1/rollout-policy".into(),
        json!({
            "get": operation("The rollout policy", "404 while none is set.", vec![("200", stored("The policy, its defaults filled in."))], &["404", "503"], None),
            "put": operation(
                "Set the rollout policy",
                "201 when none was set (the fleet stays on the current head until a rollout completes), 200 when it replaces one (a rollout in progress keeps the policy it started with). The served schema refuses with 400; the stage rules it cannot say (percents ascending, the last stage {\"percent\": 100}, each stage in the cohort's form) answer 409.",
                vec![
                    ("200", stored("Replaced: the policy, its defaults filled in.")),
                    ("201", stored("Set: the policy, its defaults filled in.")),
                ],
                &["400", "409", "413", "503"],
                Some(policy.clone()),
            ),
            "delete": operation(
                "Remove the rollout policy",
                "Every version goes everywhere at once again; a rollout in progress is aborted.",
                vec![("204", json!({"description": "Removed."}))],
                &["404", "503"],
                None,
            ),
        }),
    );
    let rollout = schema_ref("Rollout");
    paths.insert(
        "/api/v1/rollouts".into(),
        json!({"get": operation("Rollouts, newest first (at most 100)", "", vec![("200", answer("The rollouts.", json!({
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": rollout}}
        }), &[]))], &["503"], None)}),
    );
    let id = json!([{"name": "id", "in": "path", "required": true, "schema": {"type": "integer", "minimum": 1}, "description": "The rollout's id: the version it rolls out."}]);
    paths.insert(
        "/api/v1/rollouts/{id}".into(),
        json!({"parameters": id, "get": operation("One rollout", "", vec![("200", answer("The rollout.", rollout.clone(), &[]))], &["404", "503"], None)}),
    );
    for (action, summary, description) in [
        (
            "promote",
            "Skip the rest of the bake",
            "Every data plane to the rollout's version; the rollout completes. 409 when it is no longer in progress.",
        ),
        (
            "abort",
            "Abort a rollout",
            "Every data plane back to the previous version, sent whole and marked rollback. 409 when it is no longer in progress.",
        ),
    ] {
        paths.insert(
            format!("/api/v1/rollouts/{{id}}/{action}"),
            json!({"parameters": id, "post": operation(summary, description, vec![("200", answer("The rollout, moved.", rollout.clone(), &[]))], &["404", "409", "503"], None)}),
        );
    }
}

/// A rollout stage as shown: its index and the policy's percent or label selector.
fn rollout_stage_schema() -> Value {
    json!({
        "type": "object",
        "required": ["index"],
        "properties": {
            "index": {"type": "integer", "minimum": 0},
            "percent": {"type": "integer", "minimum": 1, "maximum": 100},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}}
        }
    })
}

/// A data plane as `GET /api/v1/data-planes` shows it.
fn data_plane_schema() -> Value {
    let seconds = json!({"type": "integer", "description": "Unix seconds."});
    json!({
        "type": "object",
        "required": ["node_id", "instance_id", "address", "build_version", "control_plane_id", "connected", "connected_at", "last_seen", "applied_version", "config_source", "last_rejected", "duplicate_node_id", "labels", "traffic"],
        "properties": {
            "node_id": {"type": "string"},
            "instance_id": {"type": "string", "description": "Random per process start."},
            "address": {"type": ["string", "null"]},
            "build_version": {"type": "string"},
            "control_plane_id": {"type": "string", "description": "The replica its stream is (or was last) on."},
            "connected": {"type": "boolean"},
            "connected_at": seconds,
            "last_seen": seconds,
            "applied_version": {"type": ["integer", "null"], "minimum": 0},
            "config_source": {"enum": ["stream", "cache", null]},
            "last_rejected": {"oneOf": [{"type": "null"}, {
                "type": "object",
                "required": ["version", "error", "at"],
                "properties": {"version": {"type": "integer"}, "error": {"type": "string"}, "at": seconds}
            }]},
            "duplicate_node_id": {"type": "boolean", "description": "Another live data plane uses the same node id."},
            "labels": {"type": "object", "additionalProperties": {"type": "string"}, "description": "Its --labels."},
            "traffic": {
                "type": "array",
                "description": "Its latest report: requests and 5xx answers per config version since the process started, oldest version first.",
                "items": {
                    "type": "object",
                    "required": ["version", "requests", "errors_5xx"],
                    "properties": {"version": {"type": "integer"}, "requests": {"type": "integer", "minimum": 0}, "errors_5xx": {"type": "integer", "minimum": 0}}
                }
            }
        }
    })
}

fn component_schemas() -> Map<String, Value> {
    let mut schemas = Map::new();
    for kind in Kind::ALL {
        let name = kind.singular();
        schemas.insert(name.to_owned(), schema_of(kind).clone());
        schemas.insert(format!("{name}-patch"), merge_patch_schema(kind).clone());
        schemas.insert(
            format!("{name}-stored"),
            json!({"allOf": [schema_ref(name), {"required": ["id", "created_at", "updated_at", "revision"]}]}),
        );
    }
    schemas.insert(
        "Error".into(),
        json!({
            "type": "object",
            "required": ["error"],
            "properties": {"error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"enum": ["bad_request", "invalid_json", "schema_violation", "unauthorized", "forbidden", "not_found", "reference_conflict", "precondition_failed", "payload_too_large", "store_unavailable", "internal"]},
                    "message": {"type": "string"},
                    "details": {"type": "array", "items": {
                        "type": "object",
                        "required": ["pointer", "message"],
                        "properties": {"pointer": {"type": "string", "description": "JSON pointer (RFC 6901) into the request body."}, "message": {"type": "string"}}
                    }}
                }
            }}
        }),
    );
    schemas.insert("rollout-policy".into(), rollout_policy_schema().clone());
    schemas.insert(
        "Rollout".into(),
        json!({
            "type": "object",
            "required": ["id", "version", "previous_version", "state", "stage", "created_at", "updated_at", "halt_reason", "policy", "data_planes", "cohort"],
            "properties": {
                "id": {"type": "integer", "description": "The version it rolls out."},
                "version": {"type": "integer"},
                "previous_version": {"type": "integer", "description": "Where it started from, and where a halted or aborted rollout goes back to."},
                "state": {"enum": ["in_progress", "completed", "halted", "aborted"]},
                "stage": rollout_stage_schema(),
                "created_at": {"type": "integer", "description": "Unix seconds."},
                "updated_at": {"type": "integer", "description": "Unix seconds."},
                "halt_reason": {"type": ["string", "null"], "description": "Why it halted, or was aborted or superseded."},
                "policy": {"description": "The policy as it stood when the rollout started."},
                "data_planes": {"type": "object", "description": "Connected data planes' node ids per version they serve (\"none\": nothing yet).", "additionalProperties": {"type": "array", "items": {"type": "string"}}},
                "cohort": {"type": ["array", "null"], "items": {"type": "string"}, "description": "While in progress: the node ids the stage puts on the version, recorded when it started (a data plane that joined since stays on previous_version until the last stage); null otherwise."}
            }
        }),
    );
    schemas.insert("DataPlane".into(), data_plane_schema());
    schemas.insert(
        "Change".into(),
        json!({
            "type": "object",
            "required": ["kind", "id", "op"],
            "properties": {
                "kind": {"enum": Kind::ALL.map(Kind::as_str)},
                "id": {"type": "string"},
                "op": {"enum": ["create", "update", "delete"]}
            }
        }),
    );
    schemas.insert(
        "Version".into(),
        json!({
            "type": "object",
            "required": ["version", "created_at", "author", "message", "changes"],
            "properties": {
                "version": {"type": "integer", "minimum": 1},
                "created_at": {"type": "integer", "description": "Unix seconds."},
                "author": {"type": "string", "description": "The writing token's name."},
                "message": {"type": ["string", "null"], "description": "The write's X-Change-Message."},
                "changes": {"type": "array", "items": schema_ref("Change")}
            }
        }),
    );
    schemas
}

/// Serves the OpenAPI document.
pub async fn document() -> Json<Value> {
    let mut paths = Map::new();
    for kind in Kind::ALL {
        kind_paths(kind, &mut paths);
    }
    version_paths(&mut paths);
    paths.insert(
        "/api/v1/data-planes".into(),
        json!({"get": operation("Every data plane seen by any replica", "", vec![("200", answer("The fleet.", json!({"type": "object", "required": ["items"], "properties": {"items": {"type": "array", "items": schema_ref("DataPlane")}}}), &[]))], &["503"], None)}),
    );
    paths.insert(
        "/api/v1/status".into(),
        json!({"get": operation("Current version and fleet convergence", "", vec![("200", answer("The status.", json!({
            "type": "object",
            "required": ["version", "store_reachable"],
            "properties": {
                "version": {"type": "integer"},
                "store_reachable": {"type": "boolean"},
                "rollout": {
                    "description": "The newest rollout while it is in progress or halted; null otherwise.",
                    "oneOf": [{"type": "null"}, {
                        "type": "object",
                        "required": ["id", "state", "stage", "halt_reason"],
                        "properties": {
                            "id": {"type": "integer"},
                            "state": {"enum": ["in_progress", "halted"]},
                            "stage": rollout_stage_schema(),
                            "halt_reason": {"type": ["string", "null"]}
                        }
                    }]
                },
                "certificates_expiring": {
                    "type": "array",
                    "description": "Certificates that expire within 14 days, or have, soonest first.",
                    "items": {
                        "type": "object",
                        "required": ["id", "not_after", "days_left"],
                        "properties": {"id": {"type": "string"}, "not_after": {"type": "integer"}, "days_left": {"type": "integer"}}
                    }
                }
            }
        }), &[]))], &[], None)}),
    );
    let mut kind_names: Vec<&str> = Kind::ALL
        .iter()
        .flat_map(|kind| [kind.as_str(), kind.singular()])
        .collect();
    kind_names.push("rollout-policy");
    paths.insert(
        "/api/v1/schemas/{kind}".into(),
        json!({
            "parameters": [{"name": "kind", "in": "path", "required": true, "schema": {"type": "string", "enum": kind_names}}],
            "get": operation("The JSON Schema of a kind", "The same schema the server enforces on every write.", vec![("200", answer("A JSON Schema (2020-12).", json!({"type": "object"}), &[]))], &["404"], None)
        }),
    );
    paths.insert(
        "/api/v1/schemas/plugins".into(),
        json!({"get": operation("Every plugin of this build", "", vec![("200", answer("The plugins.", json!({
            "type": "object",
            "required": ["items"],
            "properties": {"items": {"type": "array", "items": {
                "type": "object",
                "required": ["name", "priority", "description"],
                "properties": {"name": {"type": "string"}, "priority": {"type": "integer"}, "description": {"type": "string"}}
            }}}
        }), &[]))], &[], None)}),
    );
    let plugin_names: Vec<&str> = PLUGINS.iter().map(|p| p.name).collect();
    paths.insert(
        "/api/v1/schemas/plugins/{name}".into(),
        json!({
            "parameters": [{"name": "name", "in": "path", "required": true, "schema": {"type": "string", "enum": plugin_names}}],
            "get": operation("A plugin's config schema", "The same schema the server enforces on every write, with x-priority.", vec![("200", answer("A JSON Schema (2020-12).", json!({"type": "object"}), &[]))], &["404"], None),
        }),
    );
    token_paths(&mut paths);
    rollout_paths(&mut paths);
    paths.insert(
        "/api/v1/openapi.json".into(),
        json!({"get": operation("This document", "", vec![("200", answer("OpenAPI 3.1.", json!({"type": "object"}), &[]))], &[], None)}),
    );
    paths.insert(
        "/metrics".into(),
        json!({"get": {
            "summary": "The control plane's Prometheus metrics",
            "security": [],
            "responses": {"200": {"description": "Prometheus text format.", "content": {"text/plain": {"schema": {"type": "string"}}}}}
        }}),
    );
    for (path, summary) in [
        ("/healthz", "Liveness"),
        ("/readyz", "Readiness: the store answers"),
    ] {
        let mut responses = Map::new();
        responses.insert(
            "200".into(),
            answer(
                "Up.",
                json!({"type": "object", "required": ["status"], "properties": {"status": {"type": "string"}}}),
                &[],
            ),
        );
        if path == "/readyz" {
            responses.insert("503".into(), error_response("503"));
        }
        paths.insert(
            path.into(),
            json!({"get": {"summary": summary, "security": [], "responses": responses}}),
        );
    }
    Json(json!({
        "openapi": "3.1.0",
        "info": {
            "title": "Gateway admin API",
            "version": env!("CARGO_PKG_VERSION"),
            "description": format!("JSON in and out; every error in one shape (Error). Resource bodies up to {RESOURCE_BODY_LIMIT} bytes. Server-managed fields (created_at, updated_at, revision) are accepted on input so that what a GET answers can be written back, and ignored; of the wrong type they are refused (400), as APISIX and Kong do.")
        },
        "security": [{"bearer": []}],
        "paths": paths,
        "components": {
            "schemas": component_schemas(),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "headers": {
                "ETag": {"description": "The resource's revision, quoted: send it back in If-Match.", "required": true, "schema": {"type": "string", "pattern": "^\"[0-9]+\"$"}},
                "X-Config-Version": {"description": "The config version the answer reflects (after a write: the version it produced).", "required": true, "schema": {"type": "integer", "minimum": 0}},
                "Location": {"description": "The created resource's URL.", "required": true, "schema": {"type": "string"}}
            },
            "parameters": {
                "ChangeMessage": {
                    "name": "X-Change-Message", "in": "header", "required": false,
                    "description": "Recorded with the version this write makes.",
                    "schema": {"type": "string", "maxLength": super::MAX_MESSAGE_LEN, "pattern": "^[\\t\\x20-\\x7E]*$"}
                }
            }
        }
    }))
}
