//! The request firewall plugins (issue 26), end to end: `uri-blocker` and `request-validation`
//! written through the admin API and enforced by a real data plane, and basic-auth credentials
//! stored under a slow KDF.

use gateway_e2e::{
    ControlPlane, DataPlane, FakeUpstream, Reply, ScriptedUpstream, error_pointers, sqlite_url,
    unique,
};
use serde_json::{Value, json};

/// A control plane and a data plane serving `/p/*` with `plugins` to `upstream`.
async fn gateway(upstream: Value, plugins: Value) -> (ControlPlane, DataPlane) {
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, &unique("dp"));
    cp.write("PUT", "/api/v1/upstreams/app", Some(upstream))
        .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/routes/p",
            Some(json!({"paths": ["/p/*"], "upstream_id": "app", "plugins": plugins})),
        )
        .await;
    dp.applied(version).await;
    (cp, dp)
}

/// Sends `method path` with `body` (and `content-type: application/json`) through the proxy;
/// returns the status and the answer as JSON (or text).
async fn send_body(dp: &DataPlane, method: &str, path: &str, body: Vec<u8>) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let response = reqwest::Client::new()
        .request(method, format!("{}{path}", dp.proxy_url))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .expect("the proxy answers");
    let status = response.status().as_u16();
    let bytes = response.bytes().await.unwrap_or_default();
    let body = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into()));
    (status, body)
}

#[tokio::test]
async fn uri_blocker_refuses_matching_paths_and_queries_and_passes_the_rest() {
    let upstream = FakeUpstream::start("app").await;
    let (cp, dp) = gateway(
        upstream.upstream(),
        json!({"uri-blocker": {"block_rules": ["^/p/admin", "<script", "\\.\\./"], "rejected_code": 451, "case_insensitive": true}}),
    )
    .await;

    let (status, body) = dp.get("/p/admin/users").await;
    assert_eq!(status, 451, "{body}");
    assert_eq!(body["error"]["code"], "uri_blocked");
    assert_eq!(dp.get("/p/ADMIN").await.0, 451, "case_insensitive");
    // The query as the client encoded it and decoded alike.
    assert_eq!(dp.get("/p/search?q=%3Cscript%3Ealert(1)").await.0, 451);
    assert_eq!(dp.get("/p/search?q=%3cSCRIPT").await.0, 451);
    // The path the router sees: `/p/x/../admin` is `/p/admin` once normalised.
    assert_eq!(dp.get("/p/x/../admin").await.0, 451);
    assert_eq!(upstream.count(), 0, "nothing blocked reached the upstream");

    let (status, body) = dp.get("/p/search?q=scripts").await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        dp.get("/p/administrators-guide").await.0,
        451,
        "a prefix rule"
    );
    assert_eq!(dp.get("/p/users/admin").await.0, 200);
    assert_eq!(upstream.count(), 2);

    // A rule that does not compile is refused on write with its pointer; the route is kept.
    let (status, _, body) = cp
        .call(
            "PUT",
            "/api/v1/routes/p",
            Some(json!({"paths": ["/p/*"], "upstream_id": "app",
                "plugins": {"uri-blocker": {"block_rules": ["ok", "a(?=b)"], "rejected_msg": "no"}}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        error_pointers(&body),
        ["/plugins/uri-blocker/block_rules/1"]
    );
    assert_eq!(dp.get("/p/admin").await.0, 451);

    // `rejected_msg` is the refusal's message.
    let version = cp
        .write(
            "PUT",
            "/api/v1/routes/p",
            Some(json!({"paths": ["/p/*"], "upstream_id": "app",
                "plugins": {"uri-blocker": {"block_rules": ["secret"], "rejected_msg": "not here"}}})),
        )
        .await;
    dp.applied(version).await;
    let (status, body) = dp.get("/p/secret").await;
    assert_eq!(
        (status, &body["error"]["message"]),
        (403, &json!("not here"))
    );
}

#[tokio::test]
async fn request_validation_checks_headers_and_bodies_and_forwards_a_valid_body_unchanged() {
    let upstream = ScriptedUpstream::start(|_| Reply::json(json!({"ok": true}))).await;
    let (cp, dp) = gateway(
        upstream.upstream(),
        json!({"request-validation": {
            "header_schema": {"properties": {"x-api-version": {"enum": ["1", "2"]}}},
            "body_schema": {"type": "object", "required": ["name"], "additionalProperties": false,
                "properties": {"name": {"type": "string", "minLength": 1}, "age": {"type": "integer", "minimum": 0}}},
            "max_body_bytes": 256
        }}),
    )
    .await;

    // A valid body reaches the upstream byte for byte.
    let valid = br#"{ "name": "ada",  "age": 36 }"#.to_vec();
    let (status, body) = send_body(&dp, "POST", "/p/people", valid.clone()).await;
    assert_eq!(status, 200, "{body}");
    let exchange = upstream.exchange("/p/people").expect("forwarded");
    assert_eq!(exchange.body.as_ref(), valid.as_slice());
    assert_eq!(
        exchange.request.headers["content-length"],
        valid.len().to_string()
    );

    // Every violation, each with its pointer.
    let (status, body) = send_body(
        &dp,
        "POST",
        "/p/people",
        br#"{"age": -1, "extra": true}"#.to_vec(),
    )
    .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["code"], "request_invalid");
    let mut pointers: Vec<&str> = body["error"]["details"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d["pointer"].as_str().unwrap())
        .collect();
    pointers.sort_unstable();
    assert_eq!(pointers, ["", "", "/age"], "{body}");

    // Not JSON; too large (413, announced or not); a header that violates its schema.
    let (status, body) = send_body(&dp, "POST", "/p/people", b"name=ada".to_vec()).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = send_body(&dp, "POST", "/p/people", vec![b' '; 257]).await;
    assert_eq!(status, 413, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert_eq!(
        chunked_post(&dp, "/p/people", 300).await,
        413,
        "a chunked body is counted as it comes"
    );
    let (status, _, body) = dp.send("GET", "/p/people", &[("x-api-version", "3")]).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["details"][0]["in"], "headers");
    assert_eq!(body["error"]["details"][0]["pointer"], "/x-api-version");
    assert_eq!(upstream.exchanges.lock().unwrap().len(), 1);

    // A schema that does not compile is refused on write with the pointer of the keyword.
    let (status, _, body) = cp
        .call(
            "PUT",
            "/api/v1/routes/p",
            Some(json!({"paths": ["/p/*"], "upstream_id": "app",
                "plugins": {"request-validation": {"body_schema": {"properties": {"a": {"type": "strnig"}}}}}})),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        error_pointers(&body),
        ["/plugins/request-validation/body_schema/properties/a/type"]
    );
}

/// Posts `len` spaces with `Transfer-Encoding: chunked` (no `Content-Length`) over a raw
/// connection; returns the status of the answer.
async fn chunked_post(dp: &DataPlane, path: &str, len: usize) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let authority = dp.proxy_url.trim_start_matches("http://");
    let mut stream = tokio::net::TcpStream::connect(authority).await.unwrap();
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nhost: {authority}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in vec![b' '; len].chunks(100) {
        request.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        request.extend_from_slice(chunk);
        request.extend_from_slice(b"\r\n");
    }
    request.extend_from_slice(b"0\r\n\r\n");
    stream.write_all(&request).await.unwrap();
    let mut answer = Vec::new();
    let _ = stream.read_to_end(&mut answer).await;
    let answer = String::from_utf8_lossy(&answer);
    answer
        .split(' ')
        .nth(1)
        .and_then(|status| status.parse().ok())
        .unwrap_or(0)
}

#[tokio::test]
async fn basic_auth_passwords_are_stored_under_argon2id_and_verified_once_per_credentials() {
    use base64::Engine as _;
    use base64::engine::general_purpose::STANDARD;
    use sha2::{Digest as _, Sha256};

    let upstream = FakeUpstream::start("app").await;
    let (cp, dp) = gateway(upstream.upstream(), json!({"basic-auth": {}})).await;
    cp.write(
        "PUT",
        "/api/v1/consumers/ada",
        Some(json!({"credentials": {"basic-auth": {"username": "ada", "password": "correct horse"}}})),
    )
    .await;
    // A digest of the earlier form, written as stored: salted SHA-256.
    let salt = [9u8; 16];
    let digest = Sha256::new()
        .chain_update(salt)
        .chain_update(b"legacy-pw")
        .finalize();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    let legacy = format!("sha256${}${}", hex(&salt), hex(&digest));
    let version = cp
        .write(
            "PUT",
            "/api/v1/consumers/old",
            Some(json!({"credentials": {"basic-auth": {"username": "old", "password_hash": legacy}}})),
        )
        .await;
    dp.applied(version).await;

    let (_, _, stored) = cp.call("GET", "/api/v1/consumers/ada", None).await;
    let hash = stored["credentials"]["basic-auth"]["password_hash"]
        .as_str()
        .unwrap();
    assert!(
        hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"),
        "{hash}"
    );
    assert!(!stored.to_string().contains("correct horse"));

    let basic = |user: &str, pw: &str| format!("Basic {}", STANDARD.encode(format!("{user}:{pw}")));
    let kdf_runs = || async {
        dp.metric("gateway_basic_auth_kdf_runs_total")
            .await
            .expect("the metric is exported")
    };
    let before = kdf_runs().await;
    let good = basic("ada", "correct horse");
    for _ in 0..10 {
        let (status, _, body) = dp.send("GET", "/p/x", &[("authorization", &good)]).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(
        kdf_runs().await - before,
        1.0,
        "ten logins with the same credentials: one KDF run"
    );
    let last = upstream.received.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.headers["x-consumer-username"], "ada");

    for _ in 0..2 {
        let bad = basic("ada", "wrong horse");
        assert_eq!(
            dp.send("GET", "/p/x", &[("authorization", &bad)]).await.0,
            401
        );
    }
    assert_eq!(
        kdf_runs().await - before,
        3.0,
        "a failure is never remembered"
    );
    assert_eq!(
        dp.send("GET", "/p/x", &[("authorization", &good)]).await.0,
        200
    );

    // The earlier digest still authenticates, inline (no KDF run).
    let old = basic("old", "legacy-pw");
    assert_eq!(
        dp.send("GET", "/p/x", &[("authorization", &old)]).await.0,
        200
    );
    let wrong = basic("old", "legacy-px");
    assert_eq!(
        dp.send("GET", "/p/x", &[("authorization", &wrong)]).await.0,
        401
    );
    assert_eq!(kdf_runs().await - before, 3.0);
}
