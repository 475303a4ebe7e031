//! Legacy password digests, end to end: a consumer stored with an earlier salted-SHA-256
//! digest logs in once through a data plane, and the control plane stores the password under
//! argon2id as a new version by `system:rehash`.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use gateway_e2e::{ControlPlane, DataPlane, FakeUpstream, eventually, sqlite_url, unique};
use serde_json::json;
use sha2::{Digest as _, Sha256};

/// `sha256$<salt hex>$<SHA-256(salt ‖ password) hex>`, the earlier stored form.
fn legacy_digest(password: &str) -> String {
    let salt = [5u8; 16];
    let digest = Sha256::new()
        .chain_update(salt)
        .chain_update(password.as_bytes())
        .finalize();
    let hex = |bytes: &[u8]| bytes.iter().map(|b| format!("{b:02x}")).collect::<String>();
    format!("sha256${}${}", hex(&salt), hex(&digest))
}

fn basic(user: &str, password: &str) -> String {
    format!("Basic {}", STANDARD.encode(format!("{user}:{password}")))
}

#[tokio::test]
async fn a_legacy_digest_is_stored_under_argon2id_after_one_successful_login() {
    let upstream = FakeUpstream::start("app").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, &unique("rehash"));
    cp.write("PUT", "/api/v1/upstreams/app", Some(upstream.upstream()))
        .await;
    cp.write(
        "PUT",
        "/api/v1/routes/p",
        Some(json!({"paths": ["/p/*"], "upstream_id": "app", "plugins": {"basic-auth": {}}})),
    )
    .await;
    let legacy = legacy_digest("old-secret");
    let seeded = cp
        .write(
            "PUT",
            "/api/v1/consumers/lee",
            Some(json!({"credentials": {"basic-auth": {"username": "lee", "password_hash": legacy}}})),
        )
        .await;
    dp.applied(seeded).await;

    // A wrong password is refused and rehashes nothing. (Absence takes a wait: longer than the
    // control plane's one-second batch and a debug build's KDF run.)
    let (status, _, _) = dp
        .send("GET", "/p/x", &[("authorization", &basic("lee", "guess"))])
        .await;
    assert_eq!(status, 401);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (_, head, _) = cp.call("GET", "/api/v1/consumers/lee", None).await;
    assert_eq!(head, Some(seeded), "a failed login wrote a version");

    // One successful login: a new version by system:rehash holds an argon2id digest.
    let good = basic("lee", "old-secret");
    let (status, _, body) = dp.send("GET", "/p/x", &[("authorization", &good)]).await;
    assert_eq!(status, 200, "{body}");
    let stored = eventually("the digest rehashed under argon2id", || async {
        let (_, _, consumer) = cp.call("GET", "/api/v1/consumers/lee", None).await;
        consumer["credentials"]["basic-auth"]["password_hash"]
            .as_str()
            .filter(|hash| hash.starts_with("$argon2id$v=19$m=19456,t=2,p=1$"))
            .map(str::to_owned)
    })
    .await;
    let (status, _, version) = cp
        .call("GET", &format!("/api/v1/versions/{}", seeded + 1), None)
        .await;
    assert_eq!(status, 200, "{version}");
    assert_eq!(version["author"], "system:rehash", "{version}");
    assert_eq!(
        version["message"], "rehash 1 legacy password digest",
        "{version}"
    );
    let (_, head, _) = cp.call("GET", "/api/v1/consumers/lee", None).await;
    assert_eq!(head, Some(seeded + 1), "one version, no repeats");
    assert_ne!(stored, legacy);

    // The data plane takes the new digest, and the same password still logs in (now through
    // the KDF).
    dp.applied(seeded + 1).await;
    let runs = dp.metric("gateway_basic_auth_kdf_runs_total").await;
    let (status, _, body) = dp.send("GET", "/p/x", &[("authorization", &good)]).await;
    assert_eq!(status, 200, "{body}");
    assert!(dp.metric("gateway_basic_auth_kdf_runs_total").await > runs);
    let (status, _, _) = dp
        .send("GET", "/p/x", &[("authorization", &basic("lee", "guess"))])
        .await;
    assert_eq!(status, 401);
}
