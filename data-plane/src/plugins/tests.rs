//! The plugin chain: order by priority, levels overlaid (consumer > route > global rule), and
//! compile errors for plugins a data plane lacks.

use super::*;
use crate::test_support::snapshot;
use serde_json::json;

fn names(chain: &PluginChain) -> Vec<&'static str> {
    chain.plugins.iter().map(|p| p.name()).collect()
}

#[test]
fn chains_run_by_descending_priority_and_routes_override_global_rules() {
    let snapshot = snapshot(
        1,
        &[
            (
                "global-rules",
                "g",
                json!({"plugins": {"limit-count": {"count": 100, "time_window": 60, "key": "remote_addr", "rejected_code": 429}}}),
            ),
            (
                "consumers",
                "alice",
                json!({"credentials": {"key-auth": {"key": "alice-key-1"}}}),
            ),
        ],
    );
    let plugins = CompiledPlugins::compile(&snapshot, &BuildEnv::default()).unwrap();
    let route_plugins = serde_json::from_value(json!({
        "limit-count": {"count": 1, "time_window": 60, "key": "route", "rejected_code": 503},
        "key-auth": {}
    }))
    .unwrap();
    let chain = plugins.route_chain("r", &route_plugins).unwrap();
    assert_eq!(names(&chain), ["key-auth", "limit-count"]);
    assert!(
        format!("{:?}", chain.plugins[1]).contains("count: 1"),
        "the route's config wins"
    );
    let bare = plugins.route_chain("bare", &BTreeMap::new()).unwrap();
    assert_eq!(
        names(&bare),
        ["limit-count"],
        "global rules apply to every route"
    );
    assert!(plugins.consumers.by_key_digest.contains_key(
        &gateway_proto::plugins::auth::key_digest_bytes("alice-key-1")
    ));
}

#[test]
fn a_consumer_overlay_replaces_same_named_plugins() {
    let env = BuildEnv::default();
    let config = |count: u64| json!({"count": count, "time_window": 1, "key": "consumer", "rejected_code": 429});
    let route = PluginChain::from_map(
        [
            (
                "key-auth",
                build("key-auth", &json!({}), "routes/r", &env).unwrap(),
            ),
            (
                "limit-count",
                build("limit-count", &config(1), "routes/r", &env).unwrap(),
            ),
        ]
        .into_iter()
        .collect(),
    );
    let consumer = [build("limit-count", &config(50), "consumers/c", &env).unwrap()];
    let overlaid = route.overlay(&consumer);
    assert_eq!(names(&overlaid), ["key-auth", "limit-count"]);
    assert!(format!("{:?}", overlaid.plugins[1]).contains("count: 50"));
}

#[test]
fn unknown_plugins_and_unusable_keys_are_compile_errors() {
    assert!(
        build(
            "no-such-plugin",
            &json!({}),
            "routes/r",
            &BuildEnv::default()
        )
        .is_err()
    );
    let consumer: gateway_proto::model::Consumer = serde_json::from_value(json!({
        "credentials": {"jwt-auth": {"key": "k", "algorithm": "RS256", "public_key": "not a pem"}}
    }))
    .unwrap();
    let jwt = consumer.credentials.jwt_auth.unwrap();
    assert!(jwt_auth::Verifier::new(&jwt).is_err());
}
