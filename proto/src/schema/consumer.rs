//! The consumer and global-rule schemas and their semantic rules.

use serde_json::{Value, json};

use super::{Violation, common_properties};
use crate::model::{Consumer, GlobalRule};
use crate::plugins::auth::{JwtAlgorithm, credentials_schema};
use crate::plugins::plugins_property;

/// The consumer kind's schema.
pub(super) fn consumer_schema() -> Value {
    let mut props = common_properties();
    props.insert(
        "username".into(),
        json!({"type": "string", "pattern": "^[A-Za-z0-9._@-]{1,128}$"}),
    );
    props.insert("credentials".into(), credentials_schema());
    props.insert("plugins".into(), plugins_property());
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "consumer",
        "type": "object",
        "properties": props,
        "additionalProperties": false
    })
}

/// The global-rule kind's schema.
pub(super) fn global_rule_schema() -> Value {
    let mut props = common_properties();
    props.insert("plugins".into(), plugins_property());
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "global-rule",
        "type": "object",
        "properties": props,
        "required": ["plugins"],
        "additionalProperties": false
    })
}

/// Semantic rules of a consumer.
pub(super) fn check_consumer(consumer: &Consumer, out: &mut Vec<Violation>) {
    if let Some(jwt) = &consumer.credentials.jwt_auth {
        match jwt.algorithm {
            JwtAlgorithm::HS256 if jwt.secret.is_none() => out.push(Violation::new(
                "/credentials/jwt-auth/secret",
                "HS256 needs a secret",
            )),
            JwtAlgorithm::RS256 if jwt.public_key.is_none() => out.push(Violation::new(
                "/credentials/jwt-auth/public_key",
                "RS256 needs a public_key (PEM)",
            )),
            _ => {}
        }
    }
}

/// Semantic rules of a global rule.
pub(super) fn check_global_rule(rule: &GlobalRule, out: &mut Vec<Violation>) {
    if rule.plugins.is_empty() {
        out.push(Violation::new(
            "/plugins",
            "a global rule needs at least one plugin",
        ));
    }
}
