//! The plugin framework and the authentication and rate-limiting plugins, end to end: consumers
//! and plugins written through the admin API, requests through real data planes.

use base64::Engine;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use gateway_e2e::{ControlPlane, DataPlane, FakeUpstream, error_pointers, sqlite_url, unique};
use hmac::{Hmac, Mac};
use rsa::pkcs1v15::SigningKey;
use rsa::pkcs8::DecodePrivateKey;
use rsa::signature::{SignatureEncoding, Signer};
use serde_json::{Value, json};
use sha2::Sha256;

const RS256_PRIVATE: &str = include_str!("../fixtures/jwt-rs256-test.key");
const RS256_PUBLIC: &str = include_str!("../fixtures/jwt-rs256-test.pub");

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn hs256(claims: &Value, secret: &str) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(json!({"alg": "HS256", "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(input.as_bytes());
    format!(
        "{input}.{}",
        URL_SAFE_NO_PAD.encode(mac.finalize().into_bytes())
    )
}

fn rs256(claims: &Value) -> String {
    let input = format!(
        "{}.{}",
        URL_SAFE_NO_PAD.encode(json!({"alg": "RS256", "typ": "JWT"}).to_string()),
        URL_SAFE_NO_PAD.encode(claims.to_string())
    );
    let key = rsa::RsaPrivateKey::from_pkcs8_pem(RS256_PRIVATE).unwrap();
    let signature = SigningKey::<Sha256>::new(key).sign(input.as_bytes());
    format!("{input}.{}", URL_SAFE_NO_PAD.encode(signature.to_bytes()))
}

/// A control plane, a data plane and an upstream, with `route` (plugins included) at `/p/*`.
async fn gateway(route_plugins: Value) -> (ControlPlane, DataPlane, FakeUpstream) {
    let upstream = FakeUpstream::start("app").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, &unique("dp"));
    cp.write("PUT", "/api/v1/upstreams/app", Some(upstream.upstream()))
        .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/routes/p",
            Some(json!({"paths": ["/p/*"], "upstream_id": "app", "plugins": route_plugins})),
        )
        .await;
    dp.applied(version).await;
    (cp, dp, upstream)
}

#[tokio::test]
async fn key_auth_and_limit_count_the_third_request_in_a_window_of_two_is_refused() {
    let (cp, dp, upstream) = gateway(json!({
        "key-auth": {},
        "limit-count": {"count": 2, "time_window": 86400, "key": "consumer", "rejected_code": 429}
    }))
    .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/consumers/alice",
            Some(json!({"username": "alice", "credentials": {"key-auth": {"key": "alice-secret-key"}}})),
        )
        .await;
    dp.applied(version).await;

    // Refuse path: no key, a wrong key.
    let (status, _, body) = dp.send("GET", "/p/x", &[]).await;
    assert_eq!(
        (status, body["error"]["code"].as_str()),
        (401, Some("unauthorized"))
    );
    let (status, _, _) = dp.send("GET", "/p/x", &[("apikey", "wrong-key-123")]).await;
    assert_eq!(status, 401);
    assert_eq!(
        upstream.count(),
        0,
        "refused requests never reach the upstream"
    );

    // Allow path: the header or the query argument; the upstream learns the consumer.
    let (status, headers, _) = dp
        .send("GET", "/p/x", &[("apikey", "alice-secret-key")])
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["x-ratelimit-remaining"], "1");
    let last = upstream.received.lock().unwrap().last().cloned().unwrap();
    assert_eq!(last.headers["x-consumer-username"], "alice");
    let (status, _, _) = dp.send("GET", "/p/x?apikey=alice-secret-key", &[]).await;
    assert_eq!(status, 200);

    // The third request in the window gets the configured rejected code.
    let (status, headers, body) = dp
        .send("GET", "/p/x", &[("apikey", "alice-secret-key")])
        .await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["error"]["code"], "rate_limited");
    assert_eq!(headers["x-ratelimit-remaining"], "0");
    assert_eq!(upstream.count(), 2);

    // The key is stored hashed and never returned in plain text.
    let (_, _, consumer) = cp.call("GET", "/api/v1/consumers/alice", None).await;
    assert!(
        !consumer.to_string().contains("alice-secret-key"),
        "{consumer}"
    );
    assert!(consumer["credentials"]["key-auth"]["key_sha256"].is_string());
}

#[tokio::test]
async fn basic_auth_allows_the_right_password_only() {
    let (cp, dp, upstream) = gateway(json!({"basic-auth": {"hide_credentials": true}})).await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/consumers/bob",
            Some(json!({"credentials": {"basic-auth": {"username": "bob", "password": "pa:ss"}}})),
        )
        .await;
    dp.applied(version).await;
    let good = format!("Basic {}", STANDARD.encode("bob:pa:ss"));
    let bad = format!("Basic {}", STANDARD.encode("bob:nope"));

    let (status, headers, _) = dp.send("GET", "/p/", &[]).await;
    assert_eq!(status, 401);
    assert!(
        headers["www-authenticate"]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    assert_eq!(
        dp.send("GET", "/p/", &[("authorization", &bad)]).await.0,
        401
    );
    assert_eq!(
        dp.send("GET", "/p/", &[("authorization", &good)]).await.0,
        200
    );
    let last = upstream.received.lock().unwrap().last().cloned().unwrap();
    assert!(
        !last.headers.contains_key("authorization"),
        "hide_credentials"
    );
    assert_eq!(last.headers["x-consumer-username"], "bob");

    let (_, _, consumer) = cp.call("GET", "/api/v1/consumers/bob", None).await;
    assert!(!consumer.to_string().contains("pa:ss"));
}

#[tokio::test]
async fn jwt_auth_checks_signature_expiry_and_algorithm() {
    let (cp, dp, _upstream) = gateway(json!({"jwt-auth": {}})).await;
    cp.write(
        "PUT",
        "/api/v1/consumers/carol",
        Some(json!({"credentials": {"jwt-auth": {"key": "carol-key", "secret": "carol-hmac-secret"}}})),
    )
    .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/consumers/dave",
            Some(json!({"credentials": {"jwt-auth": {"key": "dave-key", "algorithm": "RS256", "public_key": RS256_PUBLIC}}})),
        )
        .await;
    dp.applied(version).await;
    let bearer = |token: String| format!("Bearer {token}");

    let valid = hs256(
        &json!({"key": "carol-key", "exp": now() + 600}),
        "carol-hmac-secret",
    );
    assert_eq!(
        dp.send("GET", "/p/a", &[("authorization", &bearer(valid.clone()))])
            .await
            .0,
        200
    );
    assert_eq!(
        dp.send("GET", &format!("/p/a?jwt={valid}"), &[]).await.0,
        200
    );
    let rsa_valid = rs256(&json!({"key": "dave-key", "nbf": now() - 5}));
    assert_eq!(
        dp.send("GET", "/p/a", &[("authorization", &bearer(rsa_valid))])
            .await
            .0,
        200
    );

    let refused = [
        hs256(
            &json!({"key": "carol-key", "exp": now() - 600}),
            "carol-hmac-secret",
        ),
        hs256(
            &json!({"key": "carol-key", "nbf": now() + 600}),
            "carol-hmac-secret",
        ),
        hs256(&json!({"key": "carol-key"}), "the-wrong-secret"),
        hs256(&json!({"key": "nobody"}), "carol-hmac-secret"),
        // An HS256 token for the RS256 consumer, signed with its public key as the secret.
        hs256(&json!({"key": "dave-key"}), RS256_PUBLIC),
        "not.a.token".to_owned(),
        "garbage".to_owned(),
    ];
    for token in refused {
        let (status, _, body) = dp
            .send("GET", "/p/a", &[("authorization", &bearer(token.clone()))])
            .await;
        assert_eq!(status, 401, "{token}: {body}");
    }
    assert_eq!(dp.send("GET", "/p/a", &[]).await.0, 401);

    // The HMAC secret is redacted on reads, and writing the redacted value back keeps it.
    let (_, _, carol) = cp.call("GET", "/api/v1/consumers/carol", None).await;
    assert_eq!(carol["credentials"]["jwt-auth"]["secret"], "<redacted>");
    let version = cp
        .write("PUT", "/api/v1/consumers/carol", Some(carol))
        .await;
    dp.applied(version).await;
    let still = hs256(&json!({"key": "carol-key"}), "carol-hmac-secret");
    assert_eq!(
        dp.send("GET", "/p/a", &[("authorization", &bearer(still))])
            .await
            .0,
        200
    );
}

#[tokio::test]
async fn jwt_auth_hides_the_token_wherever_it_came_from() {
    let (cp, dp, upstream) = gateway(json!({"jwt-auth": {"hide_credentials": true}})).await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/consumers/carol",
            Some(json!({"credentials": {"jwt-auth": {"key": "carol-key", "secret": "carol-hmac-secret"}}})),
        )
        .await;
    dp.applied(version).await;
    let token = hs256(
        &json!({"key": "carol-key", "exp": now() + 600}),
        "carol-hmac-secret",
    );
    let cookie = format!("theme=dark; jwt={token}");
    let sent = [
        (format!("/p/a?x=1&jwt={token}"), None),
        ("/p/a?x=1".to_owned(), Some(cookie.as_str())),
    ];
    for (path, cookie) in sent {
        let headers: Vec<(&str, &str)> = cookie.iter().map(|c| ("cookie", *c)).collect();
        assert_eq!(dp.send("GET", &path, &headers).await.0, 200, "{path}");
        let last = upstream.received.lock().unwrap().last().cloned().unwrap();
        assert_eq!(last.uri, "/p/a?x=1");
        let cookies = last.headers.get("cookie").cloned().unwrap_or_default();
        assert!(!cookies.contains(&token), "{cookies}");
        assert_eq!(last.headers["x-consumer-username"], "carol");
    }
}

#[tokio::test]
async fn global_rules_apply_everywhere_and_consumer_plugins_win() {
    let upstream = FakeUpstream::start("app").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, "dp-levels");
    cp.write("PUT", "/api/v1/upstreams/app", Some(upstream.upstream()))
        .await;
    cp.write(
        "PUT",
        "/api/v1/routes/open",
        Some(json!({"paths": ["/open"], "upstream_id": "app"})),
    )
    .await;
    cp.write(
        "PUT",
        "/api/v1/routes/keyed",
        Some(json!({"paths": ["/keyed"], "upstream_id": "app", "plugins": {
            "key-auth": {},
            "limit-count": {"count": 1, "time_window": 86400, "key": "consumer", "rejected_code": 429}
        }})),
    )
    .await;
    // The gold consumer's own limit-count replaces the route's.
    cp.write(
        "PUT",
        "/api/v1/consumers/gold",
        Some(json!({"credentials": {"key-auth": {"key": "gold-key-12345"}}, "plugins": {
            "limit-count": {"count": 3, "time_window": 86400, "key": "consumer", "rejected_code": 429}
        }})),
    )
    .await;
    let version = cp
        .write(
            "PUT",
            "/api/v1/global-rules/everywhere",
            Some(json!({"plugins": {"limit-count": {"count": 2, "time_window": 86400, "key": "route", "rejected_code": 503}}})),
        )
        .await;
    dp.applied(version).await;

    // The global rule limits a route that has no plugins of its own.
    assert_eq!(dp.send("GET", "/open", &[]).await.0, 200);
    assert_eq!(dp.send("GET", "/open", &[]).await.0, 200);
    assert_eq!(dp.send("GET", "/open", &[]).await.0, 503);
    // On the keyed route the route's limit (1) would refuse the second call; gold's own (3) wins.
    for _ in 0..3 {
        assert_eq!(
            dp.send("GET", "/keyed", &[("apikey", "gold-key-12345")])
                .await
                .0,
            200
        );
    }
    assert_eq!(
        dp.send("GET", "/keyed", &[("apikey", "gold-key-12345")])
            .await
            .0,
        429
    );
}

#[tokio::test]
async fn limit_count_with_redis_is_one_budget_shared_by_two_data_planes() {
    let upstream = FakeUpstream::start("app").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let redis = ["--redis-url", "redis://127.0.0.1:6379"];
    let dp1 = DataPlane::start_with(&cp.xds_url, "dp-redis-1", &redis);
    let dp2 = DataPlane::start_with(&cp.xds_url, "dp-redis-2", &redis);
    // A unique route id names a fresh counter in the shared Redis.
    let route = unique("shared");
    cp.write("PUT", "/api/v1/upstreams/app", Some(upstream.upstream()))
        .await;
    let version = cp
        .write(
            "PUT",
            &format!("/api/v1/routes/{route}"),
            Some(json!({"paths": ["/shared"], "upstream_id": "app", "plugins": {
                "limit-count": {"count": 3, "time_window": 86400, "key": "route", "rejected_code": 429}
            }})),
        )
        .await;
    dp1.applied(version).await;
    dp2.applied(version).await;

    assert_eq!(dp1.send("GET", "/shared", &[]).await.0, 200);
    assert_eq!(dp2.send("GET", "/shared", &[]).await.0, 200);
    assert_eq!(dp1.send("GET", "/shared", &[]).await.0, 200);
    // Each data plane alone has seen at most two requests; together they used the budget.
    let (status, headers, _) = dp2.send("GET", "/shared", &[]).await;
    assert_eq!(status, 429);
    assert_eq!(headers["x-ratelimit-limit"], "3");
    assert_eq!(dp1.send("GET", "/shared", &[]).await.0, 429);
    assert_eq!(upstream.count(), 3);
}

#[tokio::test]
async fn plugin_configs_are_validated_on_write_with_pointers() {
    let cp = ControlPlane::start(&sqlite_url(), None);
    cp.write(
        "PUT",
        "/api/v1/upstreams/app",
        Some(json!({"nodes": [{"host": "127.0.0.1", "port": 9}]})),
    )
    .await;
    let before = cp.call("GET", "/api/v1/status", None).await.2["version"].clone();
    let cases = [
        (
            json!({"limit-count": {"count": -1, "time_window": 1, "key": "route", "rejected_code": 429}}),
            "/plugins/limit-count/count",
        ),
        (
            json!({"limit-count": {"count": 1, "time_window": 1, "key": "route", "rejected_code": 429, "policy": "cluster"}}),
            "/plugins/limit-count/policy",
        ),
        (
            json!({"limit-count": {"count": 1, "time_window": 1, "key": "route"}}),
            "/plugins/limit-count",
        ),
        (json!({"no-such-plugin": {}}), "/plugins"),
        (
            json!({"key-auth": {"header": 7}}),
            "/plugins/key-auth/header",
        ),
    ];
    for (plugins, pointer) in cases {
        let (status, _, body) = cp
            .call(
                "PUT",
                "/api/v1/routes/r",
                Some(json!({"paths": ["/"], "upstream_id": "app", "plugins": plugins})),
            )
            .await;
        assert_eq!(status, 400, "{body}");
        let pointers = error_pointers(&body);
        assert!(pointers.contains(&pointer), "{pointer} not in {pointers:?}");
    }
    let (status, _, body) = cp
        .call(
            "PUT",
            "/api/v1/consumers/x",
            Some(json!({"credentials": {"jwt-auth": {"key": "k"}}})),
        )
        .await;
    assert_eq!(
        (status, body["error"]["details"][0]["pointer"].as_str()),
        (400, Some("/credentials/jwt-auth/secret"))
    );
    // Two consumers cannot share a key.
    cp.write(
        "PUT",
        "/api/v1/consumers/a",
        Some(json!({"credentials": {"key-auth": {"key": "same-key-123"}}})),
    )
    .await;
    let (status, _, _) = cp
        .call(
            "PUT",
            "/api/v1/consumers/b",
            Some(json!({"credentials": {"key-auth": {"key": "same-key-123"}}})),
        )
        .await;
    assert_eq!(status, 409);
    let after = cp.call("GET", "/api/v1/status", None).await.2["version"].clone();
    assert_eq!(
        after.as_u64(),
        before.as_u64().map(|v| v + 1),
        "only consumer a was written"
    );

    // Schemas are served; limit-count's is the four required properties and the optional
    // policy.
    let (_, _, list) = cp.call("GET", "/api/v1/schemas/plugins", None).await;
    let names: Vec<&str> = list["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|p| p["name"].as_str())
        .collect();
    for name in ["key-auth", "basic-auth", "jwt-auth", "limit-count"] {
        assert!(names.contains(&name), "{names:?}");
    }
    let (status, _, schema) = cp
        .call("GET", "/api/v1/schemas/plugins/limit-count", None)
        .await;
    assert_eq!(status, 200);
    let mut properties: Vec<&String> = schema["properties"].as_object().unwrap().keys().collect();
    properties.sort();
    assert_eq!(
        properties,
        ["count", "key", "policy", "rejected_code", "time_window"]
    );
    assert_eq!(
        schema["properties"]["policy"]["enum"],
        json!(["local", "fleet", "redis"])
    );
    assert_eq!(schema["additionalProperties"], false);
    assert_eq!(schema["required"].as_array().unwrap().len(), 4);
    // Bounded by the largest integer every JSON reader holds exactly, so that no count the
    // schema accepts overflows the typed config.
    assert_eq!(
        schema["properties"]["count"],
        json!({"type": "integer", "minimum": 0, "maximum": 9_007_199_254_740_991_u64})
    );
    assert_eq!(
        schema["properties"]["rejected_code"],
        json!({"type": "integer", "minimum": 200, "maximum": 600})
    );
    assert_eq!(
        cp.call("GET", "/api/v1/schemas/plugins/nope", None).await.0,
        404
    );
}
