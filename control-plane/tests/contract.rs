//! The admin API says what it does (issue 28): the OpenAPI document lists the statuses and
//! headers the server answers, the schemas it serves are the ones it enforces, server-managed
//! fields are typed, and a document the schema accepts is refused only with 409 for what a
//! schema cannot say. `scripts/schemathesis.sh` checks the same from the outside, generated.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use control_plane::api::{self, AppState, auth};
use control_plane::config::ConfigService;
use control_plane::fleet::Fleet;
use control_plane::rollout::Rollouts;
use control_plane::store::Store;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use tower::ServiceExt;

const TOKEN: &str = "contract-token";

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Value,
}

impl Reply {
    /// Asserts the status and the error code, and returns the detail pointers.
    fn error(&self, status: StatusCode, code: &str) -> Vec<String> {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.body["error"]["code"], code, "{}", self.body);
        self.body["error"]["details"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|d| d["pointer"].as_str().unwrap_or("?").to_owned())
            .collect()
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
}

async fn api() -> Router {
    let path = std::env::temp_dir().join(format!(
        "gateway-contract-{}-{}.db",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos())
    ));
    let store = Store::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .unwrap();
    auth::bootstrap(&store, Some(TOKEN)).await.unwrap();
    let tokens = Arc::new(auth::Tokens::new(store.clone()));
    let config = Arc::new(ConfigService::load(store.clone()).await.unwrap());
    let fleet = Arc::new(Fleet::new(store, "cp-contract", Duration::from_secs(3600)));
    let rollouts = Arc::new(Rollouts::new(config.clone(), fleet.clone()));
    api::router(
        AppState {
            config,
            fleet,
            rollouts,
        },
        tokens,
    )
}

async fn call(api: &Router, method: Method, path: &str, body: Option<Value>) -> Reply {
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header("authorization", format!("Bearer {TOKEN}"))
        .header("content-type", "application/json")
        .body(body.map_or(Body::empty(), |b| Body::from(b.to_string())))
        .unwrap();
    let response = api.clone().oneshot(request).await.unwrap();
    let status = response.status();
    let headers = response.headers().clone();
    let bytes = response.into_body().collect().await.unwrap().to_bytes();
    let body = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    Reply {
        status,
        headers,
        body,
    }
}

fn upstream() -> Value {
    json!({"nodes": [{"host": "127.0.0.1", "port": 8080}]})
}

#[tokio::test]
async fn put_answers_201_when_it_creates_and_200_when_it_replaces_as_documented() {
    let api = api().await;
    let created = call(&api, Method::PUT, "/api/v1/upstreams/u1", Some(upstream())).await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.header("location"), Some("/api/v1/upstreams/u1"));
    assert_eq!(created.header("etag"), Some("\"1\""));
    assert_eq!(created.header("x-config-version"), Some("1"));
    let replaced = call(
        &api,
        Method::PUT,
        "/api/v1/upstreams/u1",
        Some(json!({"nodes": [{"host": "127.0.0.1", "port": 8081}]})),
    )
    .await;
    assert_eq!(replaced.status, StatusCode::OK, "{}", replaced.body);
    assert_eq!(replaced.header("etag"), Some("\"2\""));

    let document = call(&api, Method::GET, "/api/v1/openapi.json", None)
        .await
        .body;
    let put = &document["paths"]["/api/v1/upstreams/{id}"]["put"];
    for status in [
        "200", "201", "400", "401", "403", "409", "412", "413", "503",
    ] {
        assert!(
            put["responses"][status].is_object(),
            "PUT does not document {status}"
        );
    }
    assert!(put["responses"]["201"]["headers"]["Location"].is_object());
    assert!(put["responses"]["200"]["headers"]["ETag"].is_object());
    assert!(put["responses"]["200"]["headers"]["X-Config-Version"].is_object());
    assert_eq!(
        document["paths"]["/api/v1/upstreams"]["post"]["responses"]["201"]["headers"]["Location"],
        json!({"$ref": "#/components/headers/Location"})
    );
}

#[tokio::test]
async fn the_document_serves_the_schemas_the_server_enforces() {
    let api = api().await;
    let document = call(&api, Method::GET, "/api/v1/openapi.json", None)
        .await
        .body;
    for kind in ["upstream", "route", "consumer", "global-rule"] {
        let served = call(&api, Method::GET, &format!("/api/v1/schemas/{kind}"), None).await;
        assert_eq!(
            document["components"]["schemas"][kind], served.body,
            "{kind}"
        );
        let body = |path: &str, method: &str| {
            document["paths"][path][method]["requestBody"]["content"]["application/json"]["schema"]
                .to_string()
        };
        let plural = if kind == "global-rule" {
            "global-rules".to_owned()
        } else {
            format!("{kind}s")
        };
        assert!(body(&format!("/api/v1/{plural}"), "post").contains(&format!("schemas/{kind}\"")));
        assert!(
            body(&format!("/api/v1/{plural}/{{id}}"), "put").contains(&format!("schemas/{kind}\""))
        );
        assert!(
            body(&format!("/api/v1/{plural}/{{id}}"), "patch")
                .contains(&format!("schemas/{kind}-patch\""))
        );
        assert!(
            body(&format!("/api/v1/validate/{kind}"), "post")
                .contains(&format!("schemas/{kind}\""))
        );
    }
    // Every authenticated operation documents the token's answers; every error is one shape.
    let paths = document["paths"].as_object().unwrap();
    for (path, item) in paths {
        for (method, operation) in item.as_object().unwrap() {
            let Some(responses) = operation["responses"].as_object() else {
                continue;
            };
            if !path.starts_with("/api/") {
                continue;
            }
            for status in ["401", "403"] {
                assert!(responses.contains_key(status), "{method} {path}: {status}");
            }
            for (status, response) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        response["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/Error",
                        "{method} {path} {status}"
                    );
                }
            }
        }
    }
}

#[tokio::test]
async fn server_managed_fields_are_ignored_when_typed_and_refused_otherwise() {
    let api = api().await;
    call(&api, Method::PUT, "/api/v1/upstreams/u1", Some(upstream())).await;
    // What a GET answers can be written back as it is.
    let read = call(&api, Method::GET, "/api/v1/upstreams/u1", None)
        .await
        .body;
    let mut back = read.clone();
    back["nodes"][0]["port"] = 9090.into();
    let written = call(&api, Method::PUT, "/api/v1/upstreams/u1", Some(back)).await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.body);
    assert_eq!(written.body["created_at"], read["created_at"]);
    assert_eq!(
        written.body["revision"], 2,
        "the body's revision is ignored"
    );

    let mut mistyped = read.clone();
    mistyped["revision"] = "3".into();
    let reply = call(&api, Method::PUT, "/api/v1/upstreams/u1", Some(mistyped)).await;
    assert_eq!(
        reply.error(StatusCode::BAD_REQUEST, "schema_violation"),
        ["/revision"]
    );
    let reply = call(
        &api,
        Method::POST,
        "/api/v1/upstreams",
        Some(json!({"nodes": [{"host": "h", "port": 1}], "created_at": "yesterday"})),
    )
    .await;
    assert_eq!(
        reply.error(StatusCode::BAD_REQUEST, "schema_violation"),
        ["/created_at"]
    );
    let reply = call(
        &api,
        Method::PATCH,
        "/api/v1/upstreams/u1",
        Some(json!({"updated_at": -1})),
    )
    .await;
    assert_eq!(
        reply.error(StatusCode::BAD_REQUEST, "schema_violation"),
        ["/updated_at"]
    );
    let reply = call(
        &api,
        Method::POST,
        "/api/v1/validate/upstream",
        Some(json!({"id": 5, "nodes": [{"host": "h", "port": 1}]})),
    )
    .await;
    assert_eq!(
        reply.error(StatusCode::BAD_REQUEST, "schema_violation"),
        ["/id"]
    );
    let reply = call(&api, Method::PUT, "/api/v1/config", Some(json!({"version": "7", "upstreams": [{"id": "u1", "nodes": [{"host": "h", "port": 1}], "revision": true}]}))).await;
    assert_eq!(
        reply.error(StatusCode::BAD_REQUEST, "schema_violation"),
        ["/upstreams/0/revision", "/version"]
    );
    // Nothing above was written.
    let now = call(&api, Method::GET, "/api/v1/upstreams/u1", None).await;
    assert_eq!(now.body["revision"], 2);
}

#[tokio::test]
async fn what_no_schema_can_say_is_a_conflict_and_the_rest_a_schema_violation() {
    let api = api().await;
    call(&api, Method::PUT, "/api/v1/upstreams/api", Some(upstream())).await;
    let sub = |name: &str, path: &str| json!({"name": name, "upstream_id": "api", "path": path});
    // Schema-valid, but a reference within the document does not resolve.
    let ghost =
        json!({"paths": ["/p/:id"], "batch": {"requests": [sub("a", "/{resp.ghost./id}")]}});
    let reply = call(&api, Method::PUT, "/api/v1/routes/r1", Some(ghost.clone())).await;
    assert_eq!(
        reply.error(StatusCode::CONFLICT, "reference_conflict"),
        ["/batch/requests/0/path"]
    );
    let reply = call(&api, Method::POST, "/api/v1/validate/route", Some(ghost)).await;
    assert_eq!(
        reply.error(StatusCode::CONFLICT, "reference_conflict"),
        ["/batch/requests/0/path"]
    );
    // Two sub-requests of one name, two resources of one id.
    let twice = json!({"paths": ["/p"], "batch": {"requests": [sub("a", "/x"), sub("a", "/y")]}});
    let reply = call(&api, Method::PUT, "/api/v1/routes/r1", Some(twice)).await;
    assert_eq!(
        reply.error(StatusCode::CONFLICT, "reference_conflict"),
        ["/batch/requests/1/name"]
    );
    let reply = call(
        &api,
        Method::PUT,
        "/api/v1/config",
        Some(json!({"upstreams": [
            {"id": "api", "nodes": [{"host": "h", "port": 1}]},
            {"id": "api", "nodes": [{"host": "h", "port": 2}]}
        ]})),
    )
    .await;
    assert_eq!(
        reply.error(StatusCode::CONFLICT, "reference_conflict"),
        ["/upstreams/1/id"]
    );
    // A rule across fields is the schema's: 400, with the rule's words.
    let reply = call(
        &api,
        Method::PUT,
        "/api/v1/upstreams/u2",
        Some(json!({"nodes": [{"host": "h", "port": 1}], "hash_on": {"source": "uri"}})),
    )
    .await;
    assert_eq!(
        reply.error(StatusCode::BAD_REQUEST, "schema_violation"),
        ["/hash_on"]
    );
    assert!(
        reply.body["error"]["details"][0]["message"]
            .as_str()
            .unwrap()
            .contains("consistent_hash")
    );
    // A JSON number without a fraction is an integer, to the schema and to the server.
    let reply = call(
        &api,
        Method::PUT,
        "/api/v1/upstreams/u3",
        Some(json!({"nodes": [{"host": "h", "port": 80.0}]})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::CREATED, "{}", reply.body);
}

#[tokio::test]
async fn the_rollout_policy_is_refused_400_by_its_served_schema_and_409_by_its_stage_rules() {
    let api = api().await;
    let document = call(&api, Method::GET, "/api/v1/openapi.json", None)
        .await
        .body;
    let served = call(&api, Method::GET, "/api/v1/schemas/rollout-policy", None).await;
    assert_eq!(served.status, StatusCode::OK);
    assert_eq!(
        document["components"]["schemas"]["rollout-policy"],
        served.body
    );
    let kinds = &document["paths"]["/api/v1/schemas/{kind}"]["parameters"][0]["schema"]["enum"];
    assert!(kinds.as_array().unwrap().contains(&json!("rollout-policy")));
    let put = &document["paths"]["/api/v1/rollout-policy"]["put"];
    for status in ["200", "201", "400", "409", "413", "503"] {
        assert!(
            put["responses"][status].is_object(),
            "PUT does not document {status}"
        );
    }

    let put = |policy: Value| call(&api, Method::PUT, "/api/v1/rollout-policy", Some(policy));
    // The schema refuses a percent of 0: 400.
    let reply = put(json!({"stages": [{"percent": 0}, {"percent": 100}]})).await;
    assert_eq!(
        reply.error(StatusCode::BAD_REQUEST, "schema_violation"),
        ["/stages/0/percent"]
    );
    // Each stage is schema-valid; their order is what no schema says: 409, nothing stored.
    let reply = put(json!({"stages": [{"percent": 50}, {"percent": 20}, {"percent": 100}]})).await;
    assert_eq!(
        reply.error(StatusCode::CONFLICT, "reference_conflict"),
        ["/stages/1/percent"]
    );
    let none = call(&api, Method::GET, "/api/v1/rollout-policy", None).await;
    none.error(StatusCode::NOT_FOUND, "not_found");
    let set = put(json!({"stages": [{"percent": 20}, {"percent": 100}]})).await;
    assert_eq!(set.status, StatusCode::CREATED, "{}", set.body);
    assert_eq!(
        set.body["halt_on"]["min_requests"], 100,
        "defaults filled in"
    );
    // A rollout id is a version: anything else, or a version never rolled out, is no rollout.
    for path in ["/api/v1/rollouts/x", "/api/v1/rollouts/7"] {
        call(&api, Method::GET, path, None)
            .await
            .error(StatusCode::NOT_FOUND, "not_found");
    }
    call(&api, Method::POST, "/api/v1/rollouts/7/promote", None)
        .await
        .error(StatusCode::NOT_FOUND, "not_found");
}

#[tokio::test]
async fn a_patch_is_checked_itself_then_by_its_result() {
    let api = api().await;
    call(&api, Method::PUT, "/api/v1/upstreams/u1", Some(upstream())).await;
    // Wrong whatever is stored: 400.
    for (patch, pointer) in [
        (json!({"lb": 5}), "/lb"),
        (json!({"unknown": 1}), "/unknown"),
        (json!({"id": "other"}), "/id"),
    ] {
        let reply = call(
            &api,
            Method::PATCH,
            "/api/v1/upstreams/u1",
            Some(patch.clone()),
        )
        .await;
        assert_eq!(
            reply.error(StatusCode::BAD_REQUEST, "schema_violation"),
            [pointer],
            "{patch}"
        );
    }
    // Well formed, but the merged upstream would break a rule: it cannot be applied (409).
    let reply = call(
        &api,
        Method::PATCH,
        "/api/v1/upstreams/u1",
        Some(json!({"lb": "consistent_hash"})),
    )
    .await;
    assert_eq!(
        reply.error(StatusCode::CONFLICT, "schema_violation"),
        ["/hash_on"]
    );
    // Nulls remove, objects merge.
    let reply = call(
        &api,
        Method::PATCH,
        "/api/v1/upstreams/u1",
        Some(json!({"lb": "consistent_hash", "hash_on": {"source": "uri"}, "unknown": null})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    let reply = call(
        &api,
        Method::PATCH,
        "/api/v1/upstreams/u1",
        Some(json!({"lb": null, "hash_on": null})),
    )
    .await;
    assert_eq!(reply.status, StatusCode::OK, "{}", reply.body);
    assert!(reply.body.get("hash_on").is_none(), "{}", reply.body);
}
