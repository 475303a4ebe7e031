//! The admin API through its axum router (`oneshot`), on the embedded SQLite store and on a
//! fresh Postgres database per test.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{Method, Request, StatusCode};
use control_plane::api::{self, AppState, auth};
use control_plane::config::ConfigService;
use control_plane::fleet::Fleet;
use control_plane::rollout::Rollouts;
use control_plane::store::Store;
use http_body_util::BodyExt;
use serde_json::{Value, json};
use sqlx::ConnectOptions;
use tower::ServiceExt;

const TOKEN: &str = "test-token";

struct Api {
    router: Router,
    store: Store,
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Reply {
    fn version(&self) -> Option<u64> {
        self.headers
            .get("x-config-version")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    }

    /// Asserts the one error shape and returns the detail pointers.
    fn error(&self, status: StatusCode, code: &str) -> Vec<String> {
        assert_eq!(self.status, status, "{}", self.body);
        assert_eq!(self.body["error"]["code"], code, "{}", self.body);
        assert!(self.body["error"]["message"].is_string(), "{}", self.body);
        self.body["error"]["details"]
            .as_array()
            .map(|d| {
                d.iter()
                    .map(|v| v["pointer"].as_str().unwrap_or("?").to_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

impl Api {
    async fn new(store: Store) -> Api {
        auth::bootstrap(&store, Some(TOKEN)).await.unwrap();
        let tokens = Arc::new(auth::Tokens::new(store.clone()));
        let config = Arc::new(ConfigService::load(store.clone()).await.unwrap());
        let router = api::router(
            {
                let fleet = Arc::new(Fleet::new(
                    store.clone(),
                    "cp-test",
                    Duration::from_secs(3600),
                ));
                let rollouts = Arc::new(Rollouts::new(config.clone(), fleet.clone()));
                AppState {
                    config,
                    fleet,
                    rollouts,
                }
            },
            tokens,
        );
        Api { router, store }
    }

    async fn sqlite() -> Api {
        let path = std::env::temp_dir().join(format!(
            "gateway-api-test-{}-{}.db",
            std::process::id(),
            fastrand_u64()
        ));
        Api::new(
            Store::connect(&format!("sqlite://{}?mode=rwc", path.display()))
                .await
                .unwrap(),
        )
        .await
    }

    async fn postgres(pool: sqlx::PgPool) -> Api {
        let url = pool.connect_options().to_url_lossy();
        pool.close().await;
        Api::new(Store::connect(url.as_str()).await.unwrap()).await
    }

    async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        let body = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| panic!("not JSON: {}", String::from_utf8_lossy(&bytes)))
        };
        Reply {
            status,
            headers,
            body,
        }
    }

    fn request(method: Method, path: &str) -> axum::http::request::Builder {
        Request::builder()
            .method(method)
            .uri(path)
            .header("authorization", format!("Bearer {TOKEN}"))
            .header("content-type", "application/json")
    }

    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Reply {
        let body = body.map_or(Body::empty(), |b| Body::from(b.to_string()));
        self.send(Api::request(method, path).body(body).unwrap())
            .await
    }

    async fn with_header(
        &self,
        method: Method,
        path: &str,
        header: (&str, &str),
        body: Value,
    ) -> Reply {
        self.send(
            Api::request(method, path)
                .header(header.0, header.1)
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
    }

    /// The current version and the number of versions in the history.
    async fn history(&self) -> (u64, usize) {
        let status = self.call(Method::GET, "/api/v1/status", None).await;
        let versions = self.store.list_versions(None, 1000).await.unwrap();
        (status.body["version"].as_u64().unwrap(), versions.len())
    }
}

fn fastrand_u64() -> u64 {
    use std::hash::{BuildHasher, RandomState};
    RandomState::new().hash_one(std::time::SystemTime::now())
}

fn upstream(port: u16) -> Value {
    json!({"nodes": [{"host": "127.0.0.1", "port": port}]})
}

#[tokio::test]
async fn every_error_has_one_shape_and_changes_nothing() {
    let api = Api::sqlite().await;
    assert_eq!(
        api.call(Method::PUT, "/api/v1/upstreams/u1", Some(upstream(1)))
            .await
            .status,
        StatusCode::CREATED
    );
    assert_eq!(
        api.call(
            Method::PUT,
            "/api/v1/routes/r1",
            Some(json!({"paths": ["/a"], "upstream_id": "u1"}))
        )
        .await
        .status,
        StatusCode::CREATED
    );
    let before = api.history().await;
    assert_eq!(before, (2, 2));

    // 401: no token, a wrong token, a wrong scheme.
    for authorization in [None, Some("Bearer nope"), Some(&*format!("Basic {TOKEN}"))] {
        let mut request = Request::builder()
            .method(Method::PUT)
            .uri("/api/v1/upstreams/u9");
        if let Some(value) = authorization {
            request = request.header("authorization", value);
        }
        let reply = api
            .send(request.body(Body::from(upstream(2).to_string())).unwrap())
            .await;
        reply.error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Unknown paths and methods too: no token, no map of the API by its 404s and 405s.
    for (method, path) in [
        (Method::GET, "/api/v1/a/b/c"),
        (Method::DELETE, "/api/v1/versions"),
        (Method::GET, "/nowhere"),
    ] {
        let request = Request::builder().method(method).uri(path);
        let reply = api.send(request.body(Body::empty()).unwrap()).await;
        reply.error(StatusCode::UNAUTHORIZED, "unauthorized");
    }
    // Health checks stay open.
    let health = Request::builder()
        .uri("/healthz")
        .body(Body::empty())
        .unwrap();
    assert_eq!(api.send(health).await.status, StatusCode::OK);

    // 400: a path parameter that is not UTF-8, in the JSON shape.
    api.call(Method::GET, "/api/v1/routes/%FF", None)
        .await
        .error(StatusCode::BAD_REQUEST, "bad_request");

    // 400: not JSON.
    let reply = api
        .send(
            Api::request(Method::PUT, "/api/v1/upstreams/u9")
                .body(Body::from("{nodes"))
                .unwrap(),
        )
        .await;
    reply.error(StatusCode::BAD_REQUEST, "invalid_json");

    // 400: every schema violation with its pointer.
    let reply = api
        .call(
            Method::PUT,
            "/api/v1/upstreams/u9",
            Some(json!({"nodes": [{"host": "h", "port": 70000}], "lb": "bogus", "x": 1})),
        )
        .await;
    let pointers = reply.error(StatusCode::BAD_REQUEST, "schema_violation");
    for expected in ["/nodes/0/port", "/lb", ""] {
        assert!(pointers.contains(&expected.to_owned()), "{pointers:?}");
    }
    let reply = api
        .call(
            Method::PUT,
            "/api/v1/routes/r1",
            Some(json!({"paths": ["nope"], "upstream_id": "u1", "methods": ["GET", "FETCH"]})),
        )
        .await;
    let pointers = reply.error(StatusCode::BAD_REQUEST, "schema_violation");
    assert_eq!(pointers, ["/methods/1", "/paths/0"]);
    // A node listed twice: a rule for writes (stored documents that break it still load), and
    // a uniqueness rule no schema can say, so a conflict rather than a schema violation.
    let reply = api
        .call(
            Method::PUT,
            "/api/v1/upstreams/u9",
            Some(json!({"nodes": [{"host": "h", "port": 1}, {"host": "H", "port": 1}]})),
        )
        .await;
    assert_eq!(
        reply.error(StatusCode::CONFLICT, "reference_conflict"),
        ["/nodes/1"]
    );
    let reply = api
        .call(
            Method::PUT,
            "/api/v1/routes/r2",
            Some(json!({"id": "other", "paths": ["/"], "upstream_id": "u1"})),
        )
        .await;
    assert_eq!(
        reply.error(StatusCode::BAD_REQUEST, "schema_violation"),
        ["/id"]
    );
    let reply = api
        .call(
            Method::PUT,
            "/api/v1/config",
            Some(json!({"upstreams": [{"id": "u1", "nodes": []}], "routes": [{"paths": ["/"]}], "listeners": []})),
        )
        .await;
    let pointers = reply.error(StatusCode::BAD_REQUEST, "schema_violation");
    assert_eq!(pointers, ["/listeners", "/routes/0/id"]);
    let reply = api
        .call(
            Method::PUT,
            "/api/v1/config",
            Some(json!({"upstreams": [{"id": "u1", "nodes": []}], "routes": []})),
        )
        .await;
    assert_eq!(
        reply.error(StatusCode::BAD_REQUEST, "schema_violation"),
        ["/upstreams/0/nodes"]
    );
    api.call(Method::GET, "/api/v1/routes?limit=0", None)
        .await
        .error(StatusCode::BAD_REQUEST, "bad_request");
    api.call(
        Method::GET,
        "/api/v1/versions?cursor=18446744073709551615",
        None,
    )
    .await
    .error(StatusCode::BAD_REQUEST, "bad_request");

    // 404: unknown ids, kinds and versions.
    for (method, path) in [
        (Method::GET, "/api/v1/routes/missing"),
        (Method::DELETE, "/api/v1/routes/missing"),
        (Method::GET, "/api/v1/widgets"),
        (Method::GET, "/api/v1/versions/99"),
        (Method::POST, "/api/v1/versions/99/rollback"),
        (Method::GET, "/api/v1/versions/99/config"),
        // Beyond what a store can hold: no such version either (was a 500).
        (Method::GET, "/api/v1/versions/9223372036854775808"),
        (
            Method::POST,
            "/api/v1/versions/18446744073709551615/rollback",
        ),
        (Method::GET, "/api/v1/nowhere/at/all"),
    ] {
        api.call(method, path, None)
            .await
            .error(StatusCode::NOT_FOUND, "not_found");
    }
    api.call(
        Method::PATCH,
        "/api/v1/routes/missing",
        Some(json!({"priority": 1})),
    )
    .await
    .error(StatusCode::NOT_FOUND, "not_found");

    // 409: a reference that does not resolve; a delete of something referenced; a POST
    // of an id that exists.
    let reply = api
        .call(
            Method::PUT,
            "/api/v1/routes/r2",
            Some(json!({"paths": ["/b"], "upstream_id": "ghost"})),
        )
        .await;
    assert_eq!(
        reply.error(StatusCode::CONFLICT, "reference_conflict"),
        ["/upstream_id"]
    );
    api.call(Method::DELETE, "/api/v1/upstreams/u1", None)
        .await
        .error(StatusCode::CONFLICT, "reference_conflict");
    api.call(
        Method::PUT,
        "/api/v1/config",
        Some(json!({"upstreams": [], "routes": [{"id": "r1", "paths": ["/a"], "upstream_id": "u1"}]})),
    )
    .await
    .error(StatusCode::CONFLICT, "reference_conflict");
    api.call(
        Method::POST,
        "/api/v1/upstreams",
        Some(json!({"id": "u1", "nodes": [{"host": "h", "port": 1}]})),
    )
    .await
    .error(StatusCode::CONFLICT, "reference_conflict");

    // 412: a stale If-Match, and If-Match on something that does not exist.
    api.with_header(
        Method::PUT,
        "/api/v1/upstreams/u1",
        ("if-match", "\"7\""),
        upstream(3),
    )
    .await
    .error(StatusCode::PRECONDITION_FAILED, "precondition_failed");
    api.with_header(
        Method::PUT,
        "/api/v1/upstreams/new",
        ("if-match", "*"),
        upstream(3),
    )
    .await
    .error(StatusCode::PRECONDITION_FAILED, "precondition_failed");

    // 413: a body over the limit.
    let huge = json!({"nodes": [{"host": "h".repeat(api::RESOURCE_BODY_LIMIT), "port": 1}]});
    api.call(Method::PUT, "/api/v1/upstreams/u9", Some(huge))
        .await
        .error(StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large");

    // 405 keeps the shape too.
    let reply = api.call(Method::DELETE, "/api/v1/versions", None).await;
    assert_eq!(reply.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(reply.body["error"]["code"].is_string());

    assert_eq!(
        api.history().await,
        before,
        "a failed call changed the config"
    );
    let r1 = api.call(Method::GET, "/api/v1/routes/r1", None).await;
    assert_eq!(r1.body["revision"], 2);
}

async fn resources_and_versions(api: Api) {
    // Create: 201, ETag, X-Config-Version, server fields.
    let created = api
        .with_header(
            Method::PUT,
            "/api/v1/upstreams/u1",
            ("x-change-message", "first upstream"),
            json!({"nodes": [{"host": "127.0.0.1", "port": 8081}], "labels": {"team": "a"}}),
        )
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    assert_eq!(created.version(), Some(1));
    assert_eq!(created.headers["etag"], "\"1\"");
    assert_eq!(created.body["id"], "u1");
    assert_eq!(created.body["revision"], 1);
    assert!(created.body["created_at"].as_i64().unwrap() > 1_700_000_000);

    // A route, then a replace with If-Match, then a no-op write that writes no version.
    let route = json!({"paths": ["/a"], "upstream_id": "u1"});
    let reply = api
        .call(Method::PUT, "/api/v1/routes/r1", Some(route))
        .await;
    assert_eq!(reply.version(), Some(2));
    let reply = api
        .with_header(
            Method::PUT,
            "/api/v1/routes/r1",
            ("if-match", "\"2\""),
            json!({"paths": ["/b"], "upstream_id": "u1"}),
        )
        .await;
    assert_eq!(reply.status, StatusCode::OK);
    assert_eq!(reply.version(), Some(3));
    let same = api
        .call(Method::PUT, "/api/v1/routes/r1", Some(reply.body.clone()))
        .await;
    assert_eq!(same.status, StatusCode::OK);
    assert_eq!(same.version(), Some(3), "a no-op write made a version");

    // PATCH merges; null removes.
    let patched = api
        .call(
            Method::PATCH,
            "/api/v1/routes/r1",
            Some(json!({"priority": 5, "methods": ["GET"]})),
        )
        .await;
    assert_eq!(patched.body["priority"], 5);
    assert_eq!(patched.body["paths"], json!(["/b"]));
    assert_eq!(patched.version(), Some(4));
    let patched = api
        .call(
            Method::PATCH,
            "/api/v1/routes/r1",
            Some(json!({"methods": null})),
        )
        .await;
    assert!(patched.body.get("methods").is_none());

    // POST generates an id.
    let posted = api
        .call(Method::POST, "/api/v1/upstreams", Some(upstream(9)))
        .await;
    assert_eq!(posted.status, StatusCode::CREATED);
    let generated = posted.body["id"].as_str().unwrap().to_owned();
    assert_eq!(
        posted.headers["location"],
        format!("/api/v1/upstreams/{generated}").as_str()
    );

    // Paging with a cursor.
    for i in 0..3 {
        api.call(
            Method::PUT,
            &format!("/api/v1/upstreams/p{i}"),
            Some(upstream(1)),
        )
        .await;
    }
    let page = api
        .call(Method::GET, "/api/v1/upstreams?limit=2", None)
        .await;
    assert_eq!(page.body["items"].as_array().unwrap().len(), 2);
    let cursor = page.body["next_cursor"].as_str().unwrap().to_owned();
    let rest = api
        .call(
            Method::GET,
            &format!("/api/v1/upstreams?limit=10&cursor={cursor}"),
            None,
        )
        .await;
    assert_eq!(rest.body["items"].as_array().unwrap().len(), 3);
    assert!(rest.body["next_cursor"].is_null());

    // Delete.
    let deleted = api
        .call(
            Method::DELETE,
            &format!("/api/v1/upstreams/{generated}"),
            None,
        )
        .await;
    assert_eq!(deleted.status, StatusCode::OK);
    assert_eq!(deleted.body["deleted"], true);
    let head = deleted.version().unwrap();
    assert_eq!(head, 10);

    // Versions: list newest first with paging, one version, config at a version, diff.
    let versions = api
        .call(Method::GET, "/api/v1/versions?limit=3", None)
        .await;
    let numbers: Vec<u64> = versions.body["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [10, 9, 8]);
    assert_eq!(versions.body["next_cursor"], "8");
    let first = api.call(Method::GET, "/api/v1/versions/1", None).await;
    assert_eq!(first.body["author"], "admin");
    assert_eq!(first.body["message"], "first upstream");
    assert_eq!(
        first.body["changes"],
        json!([{"kind": "upstreams", "id": "u1", "op": "create"}])
    );
    let at2 = api
        .call(Method::GET, "/api/v1/versions/2/config", None)
        .await;
    assert_eq!(at2.body["routes"][0]["paths"], json!(["/a"]));
    assert_eq!(at2.body["upstreams"].as_array().unwrap().len(), 1);
    let diff = api
        .call(Method::GET, "/api/v1/versions/4/diff?from=2", None)
        .await;
    assert_eq!(diff.body["changes"].as_array().unwrap().len(), 1);
    assert_eq!(diff.body["changes"][0]["op"], "update");
    assert_eq!(diff.body["changes"][0]["before"]["paths"], json!(["/a"]));
    assert_eq!(diff.body["changes"][0]["after"]["paths"], json!(["/b"]));

    // Roll back to version 2 in one call: a new version equal to version 2.
    let rolled = api
        .call(Method::POST, "/api/v1/versions/2/rollback", None)
        .await;
    assert_eq!(rolled.status, StatusCode::OK, "{}", rolled.body);
    assert_eq!(rolled.body["version"], head + 1);
    let now = api.call(Method::GET, "/api/v1/config", None).await;
    let then = api
        .call(Method::GET, "/api/v1/versions/2/config", None)
        .await;
    let strip = |doc: &Value| -> Vec<Value> {
        ["upstreams", "routes"]
            .iter()
            .flat_map(|k| doc[k].as_array().unwrap().clone())
            .map(|mut r| {
                for f in ["revision", "created_at", "updated_at"] {
                    r.as_object_mut().unwrap().remove(f);
                }
                r
            })
            .collect()
    };
    assert_eq!(strip(&now.body), strip(&then.body));
    let again = api
        .call(Method::POST, "/api/v1/versions/2/rollback", None)
        .await;
    assert_eq!(again.body["written"], false);
    assert_eq!(again.body["version"], head + 1);

    // Replace the whole config: dry run answers the diff and writes nothing.
    let whole = json!({
        "upstreams": [{"id": "solo", "nodes": [{"host": "127.0.0.1", "port": 7000}]}],
        "routes": [{"id": "only", "paths": ["/only"], "upstream_id": "solo"}]
    });
    let dry = api
        .call(
            Method::PUT,
            "/api/v1/config?dry_run=true",
            Some(whole.clone()),
        )
        .await;
    assert_eq!(dry.body["written"], false);
    assert_eq!(dry.body["version"], head + 1);
    assert_eq!(dry.body["changes"].as_array().unwrap().len(), 4);
    let real = api.call(Method::PUT, "/api/v1/config", Some(whole)).await;
    assert_eq!(real.body["version"], head + 2);
    let exported = api.call(Method::GET, "/api/v1/config", None).await;
    assert_eq!(exported.body["routes"][0]["id"], "only");
    assert_eq!(exported.body["upstreams"].as_array().unwrap().len(), 1);

    // Schemas, validation, OpenAPI.
    let schema = api.call(Method::GET, "/api/v1/schemas/route", None).await;
    assert_eq!(schema.body["title"], "route");
    let ok = api
        .call(
            Method::POST,
            "/api/v1/validate/route",
            Some(json!({"paths": ["/x"], "upstream_id": "solo"})),
        )
        .await;
    assert_eq!(ok.status, StatusCode::OK);
    api.call(
        Method::POST,
        "/api/v1/validate/route",
        Some(json!({"paths": 1})),
    )
    .await
    .error(StatusCode::BAD_REQUEST, "schema_violation");
    let openapi = api.call(Method::GET, "/api/v1/openapi.json", None).await;
    assert_eq!(openapi.body["openapi"], "3.1.0");
    assert!(openapi.body["paths"]["/api/v1/routes/{id}"]["put"].is_object());
    // Every `{name}` in a path template is declared (schemathesis refuses the document
    // otherwise), at the path's level.
    let paths = openapi.body["paths"].as_object().expect("paths");
    for (template, item) in paths {
        let declared: Vec<&str> = item["parameters"]
            .as_array()
            .map(|params| params.iter().filter_map(|p| p["name"].as_str()).collect())
            .unwrap_or_default();
        for name in template
            .split('{')
            .skip(1)
            .filter_map(|rest| rest.split_once('}'))
        {
            assert!(
                declared.contains(&name.0),
                "{template}: parameter {:?} is not declared",
                name.0
            );
        }
    }
    assert!(paths["/api/v1/schemas/plugins/{name}"]["get"].is_object());
    let kinds = &paths["/api/v1/schemas/{kind}"]["parameters"][0]["schema"]["enum"];
    assert!(
        kinds
            .as_array()
            .is_some_and(|k| k.contains(&json!("route")))
    );
    let health = api
        .send(Request::get("/healthz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(health.status, StatusCode::OK);
    let ready = api
        .send(Request::get("/readyz").body(Body::empty()).unwrap())
        .await;
    assert_eq!(ready.status, StatusCode::OK);
}

#[tokio::test]
async fn resources_and_versions_on_sqlite() {
    resources_and_versions(Api::sqlite().await).await;
}

#[sqlx::test(migrations = false)]
async fn resources_and_versions_on_postgres(pool: sqlx::PgPool) {
    let api = Api::postgres(pool).await;
    let store = api.store.clone();
    resources_and_versions(api).await;
    store.close().await;
}

#[sqlx::test(migrations = false)]
async fn racing_creates_of_one_id_make_one_resource_and_409s(pool: sqlx::PgPool) {
    let api = Arc::new(Api::postgres(pool).await);
    let mut tasks = Vec::new();
    for port in 1..=8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let body = json!({"id": "u1", "nodes": [{"host": "h", "port": port}]});
            api.call(Method::POST, "/api/v1/upstreams", Some(body))
                .await
                .status
        }));
    }
    let mut statuses = Vec::new();
    for task in tasks {
        statuses.push(task.await.unwrap());
    }
    let created = statuses
        .iter()
        .filter(|s| **s == StatusCode::CREATED)
        .count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::CONFLICT)
        .count();
    assert_eq!((created, refused), (1, 7), "{statuses:?}");
    let stored = api.call(Method::GET, "/api/v1/upstreams/u1", None).await;
    assert_eq!(
        stored.body["revision"], 1,
        "never overwritten: {}",
        stored.body
    );
    api.store.close().await;
}

#[sqlx::test(migrations = false)]
async fn concurrent_writers_with_if_match_lose_no_update(pool: sqlx::PgPool) {
    let api = Arc::new(Api::postgres(pool).await);
    api.call(
        Method::PUT,
        "/api/v1/upstreams/u",
        Some(json!({"nodes": [{"host": "h", "port": 1}], "labels": {"n": "0"}})),
    )
    .await;
    // 8 writers each increment a counter 5 times with read-modify-write under If-Match,
    // retrying on 412. No increment may be lost and versions must strictly increase.
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut versions = Vec::new();
            let mut done = 0;
            while done < 5 {
                let current = api.call(Method::GET, "/api/v1/upstreams/u", None).await;
                let etag = current.headers["etag"].to_str().unwrap().to_owned();
                let n: u64 = current.body["labels"]["n"]
                    .as_str()
                    .unwrap()
                    .parse()
                    .unwrap();
                let mut next = current.body.clone();
                next["labels"]["n"] = json!((n + 1).to_string());
                let reply = api
                    .with_header(
                        Method::PUT,
                        "/api/v1/upstreams/u",
                        ("if-match", &etag),
                        next,
                    )
                    .await;
                match reply.status {
                    StatusCode::OK => {
                        versions.push(reply.version().unwrap());
                        done += 1;
                    }
                    StatusCode::PRECONDITION_FAILED => {}
                    other => panic!("unexpected {other}: {}", reply.body),
                }
            }
            versions
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await.unwrap());
    }
    all.sort_unstable();
    all.dedup();
    assert_eq!(all.len(), 40, "two writes got the same version");
    let last = api.call(Method::GET, "/api/v1/upstreams/u", None).await;
    assert_eq!(last.body["labels"]["n"], "40");
    assert_eq!(last.body["revision"], 41);
    api.store.close().await;
}

#[tokio::test]
async fn a_patch_rotates_a_credential_written_in_plain_text() {
    let api = Api::sqlite().await;
    let consumer = json!({"credentials": {
        "key-auth": {"key": "old-key-123"},
        "basic-auth": {"username": "carol", "password": "old-password"}}});
    let created = api
        .call(Method::PUT, "/api/v1/consumers/carol", Some(consumer))
        .await;
    assert_eq!(created.status, StatusCode::CREATED, "{}", created.body);
    let before = created.body["credentials"].clone();
    let rotated = api
        .call(
            Method::PATCH,
            "/api/v1/consumers/carol",
            Some(json!({"credentials": {
                "key-auth": {"key": "new-key-456"},
                "basic-auth": {"password": "new-password"}}})),
        )
        .await;
    assert_eq!(rotated.status, StatusCode::OK, "{}", rotated.body);
    let after = &rotated.body["credentials"];
    assert_ne!(
        after["key-auth"]["key_sha256"],
        before["key-auth"]["key_sha256"]
    );
    assert_ne!(
        after["basic-auth"]["password_hash"],
        before["basic-auth"]["password_hash"]
    );
    assert_eq!(
        after["basic-auth"]["username"], "carol",
        "the rest of it kept"
    );
    let text = rotated.body.to_string();
    assert!(
        !text.contains("new-key-456") && !text.contains("new-password"),
        "{text}"
    );
}

#[tokio::test]
async fn a_whole_config_write_based_on_a_stale_version_is_refused() {
    let api = Api::sqlite().await;
    api.call(Method::PUT, "/api/v1/upstreams/a", Some(upstream(1)))
        .await;
    let read = api.call(Method::GET, "/api/v1/config", None).await;
    let etag = read.headers["etag"].to_str().unwrap().to_owned();
    let based_on = read.version().unwrap();
    assert_eq!(etag, format!("\"{based_on}\""));

    // Someone else writes after the read: an apply based on the read must not undo it.
    api.call(Method::PUT, "/api/v1/upstreams/b", Some(upstream(2)))
        .await;
    let before = api.history().await;
    let document = json!({"upstreams": [{"id": "a", "nodes": [{"host": "127.0.0.1", "port": 3}]}]});
    let stale = api
        .with_header(
            Method::PUT,
            "/api/v1/config",
            ("if-match", &etag),
            document.clone(),
        )
        .await;
    stale.error(StatusCode::PRECONDITION_FAILED, "precondition_failed");
    assert_eq!(api.history().await, before, "nothing written");

    let fresh = api.call(Method::GET, "/api/v1/config", None).await;
    let etag = fresh.headers["etag"].to_str().unwrap().to_owned();
    let written = api
        .with_header(Method::PUT, "/api/v1/config", ("if-match", &etag), document)
        .await;
    assert_eq!(written.status, StatusCode::OK, "{}", written.body);
    assert_eq!(written.body["written"], true);
}
