//! Admin API tokens with roles, on two control-plane replicas sharing one Postgres: a token
//! made through one replica works on both, its role bounds what it may do, its name is the
//! author of its versions, and a revocation holds on every replica from the next call.

use gateway_e2e::ControlPlane;
use serde_json::{Value, json};
use sqlx::ConnectOptions;

/// Calls `cp` with `token`; returns the status and the JSON body (Null when empty).
async fn call_as(
    cp: &ControlPlane,
    token: &str,
    method: &str,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("method");
    let mut request = reqwest::Client::new()
        .request(method, format!("{}{path}", cp.admin_url))
        .bearer_auth(token);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.expect("admin API reachable");
    let status = response.status().as_u16();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Makes a token through `cp` with the admin token; returns it.
async fn make_token(cp: &ControlPlane, name: &str, role: &str) -> String {
    let (status, body) = cp
        .call(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": name, "role": role})),
        )
        .await
        .into_status_and_body();
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["role"], role);
    body["token"].as_str().expect("the token, once").to_owned()
}

trait StatusAndBody {
    fn into_status_and_body(self) -> (u16, Value);
}

impl StatusAndBody for (u16, Option<u64>, Value) {
    fn into_status_and_body(self) -> (u16, Value) {
        (self.0, self.2)
    }
}

#[sqlx::test(migrations = false)]
async fn roles_bound_each_token_and_a_revocation_holds_on_every_replica(pool: sqlx::PgPool) {
    let url = pool.connect_options().to_url_lossy().to_string();
    pool.close().await;
    let a = ControlPlane::start_with(&url, None, &["--control-plane-id", "cp-a"]);
    let b = ControlPlane::start_with(&url, None, &["--control-plane-id", "cp-b"]);
    let upstream = json!({"nodes": [{"host": "127.0.0.1", "port": 9}]});

    let viewer = make_token(&a, "dashboards", "viewer").await;
    let editor = make_token(&a, "ci-deploy", "editor").await;

    // A viewer reads, on either replica, and may validate; every write is 403 and writes nothing.
    for cp in [&a, &b] {
        assert_eq!(
            call_as(cp, &viewer, "GET", "/api/v1/routes", None).await.0,
            200
        );
        let (status, _) = call_as(
            cp,
            &viewer,
            "POST",
            "/api/v1/validate/upstream",
            Some(upstream.clone()),
        )
        .await;
        assert_eq!(status, 200);
        let (status, body) = call_as(
            cp,
            &viewer,
            "PUT",
            "/api/v1/upstreams/u",
            Some(upstream.clone()),
        )
        .await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"]["code"], "forbidden");
        assert_eq!(
            call_as(cp, &viewer, "GET", "/api/v1/tokens", None).await.0,
            403
        );
    }
    assert_eq!(
        call_as(&a, &viewer, "GET", "/api/v1/upstreams/u", None)
            .await
            .0,
        404
    );

    // An editor writes and rolls back, and its name is the versions' author; it cannot touch tokens.
    let (status, body) = call_as(
        &b,
        &editor,
        "PUT",
        "/api/v1/upstreams/u",
        Some(upstream.clone()),
    )
    .await;
    assert_eq!(status, 201, "{body}");
    let written = body["revision"].as_u64().expect("revision");
    let (_, version) = call_as(
        &a,
        &editor,
        "GET",
        &format!("/api/v1/versions/{written}"),
        None,
    )
    .await;
    assert_eq!(version["author"], "ci-deploy", "{version}");
    let (status, body) = call_as(
        &a,
        &editor,
        "POST",
        "/api/v1/tokens",
        Some(json!({"name": "mine", "role": "admin"})),
    )
    .await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        call_as(&a, &editor, "DELETE", "/api/v1/tokens/dashboards", None)
            .await
            .0,
        403
    );

    // The list shows names, roles and use, never a token.
    let (_, _, list) = a.call("GET", "/api/v1/tokens", None).await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|t| t["name"].as_str())
        .collect();
    assert_eq!(names, ["admin", "ci-deploy", "dashboards"]);
    assert!(!list.to_string().contains(&editor), "no token in the list");
    let used = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "ci-deploy")
        .unwrap();
    assert!(
        used["last_used_at"].is_u64() || used["last_used_at"].is_i64(),
        "{used}"
    );

    // Bad requests: a taken name, an unknown role.
    let (status, _, body) = a
        .call(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "ci-deploy", "role": "viewer"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let (status, _, body) = a
        .call(
            "POST",
            "/api/v1/tokens",
            Some(json!({"name": "x", "role": "root"})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["pointer"], "/role");

    // Revoked through b: refused by both replicas on the very next call.
    let (status, _, _) = b.call("DELETE", "/api/v1/tokens/ci-deploy", None).await;
    assert_eq!(status, 204);
    for cp in [&a, &b] {
        let (status, body) = call_as(cp, &editor, "GET", "/api/v1/routes", None).await;
        assert_eq!(status, 401, "{body}");
    }
    // The last admin token cannot be revoked.
    let (status, _, body) = a.call("DELETE", "/api/v1/tokens/admin", None).await;
    assert_eq!(status, 409, "{body}");
}

#[tokio::test]
async fn the_admin_api_is_served_over_tls_when_given_a_certificate() {
    let dir = std::env::temp_dir().join(gateway_e2e::unique("admin-tls"));
    let dir_arg = dir.to_string_lossy().to_string();
    let (code, output) = gateway_e2e::run_to_exit(
        "control-plane",
        &["certs", "--dir", &dir_arg, "--server-name", "127.0.0.1"],
    );
    assert_eq!(code, Some(0), "{output}");
    let cert = dir.join("control-plane.crt").to_string_lossy().to_string();
    let key = dir.join("control-plane.key").to_string_lossy().to_string();
    let ca = dir.join("ca.crt").to_string_lossy().to_string();
    let cp = ControlPlane::start_with(
        &gateway_e2e::sqlite_url(),
        None,
        &["--admin-tls-cert", &cert, "--admin-tls-key", &key],
    );
    assert!(cp.admin_url.starts_with("https://"), "{}", cp.admin_url);

    let curl = |url: String, extra: &[&str]| {
        let mut command = std::process::Command::new("curl");
        command.args(["-sS", "--max-time", "5", "-o", "-", "-w", "\n%{http_code}"]);
        command.args(extra).arg(url);
        let output = command.output().expect("curl runs");
        String::from_utf8_lossy(&output.stdout).to_string()
    };
    let token = format!("Authorization: Bearer {}", cp.token);
    let answer = curl(
        format!("{}/api/v1/status", cp.admin_url),
        &["--cacert", &ca, "-H", &token],
    );
    assert!(answer.ends_with("\n200"), "{answer}");
    assert!(answer.contains("\"version\""), "{answer}");
    // Plain HTTP to the TLS port gets no answer; a client that does not trust the CA, none.
    let plain = curl(
        cp.admin_url.replace("https://", "http://") + "/healthz",
        &[],
    );
    assert!(!plain.ends_with("\n200"), "{plain}");
    let untrusted = curl(format!("{}/healthz", cp.admin_url), &[]);
    assert!(!untrusted.ends_with("\n200"), "{untrusted}");

    // gatewayctl speaks HTTPS too: trusting the CA it reads the status; without it, it refuses.
    let gatewayctl = |extra: &[&str]| {
        let output = std::process::Command::new(gateway_e2e::binary("gatewayctl"))
            .args(["--server", &cp.admin_url])
            .args(extra)
            .arg("status")
            .env("GATEWAY_TOKEN", &cp.token)
            .env_remove("GATEWAY_CACERT")
            .output()
            .expect("gatewayctl runs");
        let text = String::from_utf8_lossy(&output.stdout).to_string()
            + &String::from_utf8_lossy(&output.stderr);
        (output.status.code(), text)
    };
    let (code, text) = gatewayctl(&["--cacert", &ca]);
    assert_eq!(code, Some(0), "{text}");
    assert!(text.contains("version"), "{text}");
    let (code, text) = gatewayctl(&[]);
    assert_eq!(code, Some(1), "{text}");
    let _ = std::fs::remove_dir_all(dir);
}
