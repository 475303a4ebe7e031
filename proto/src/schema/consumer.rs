//! The consumer and global-rule schemas. Their rules across fields are all in the schemas (a
//! JWT credential's key material in `credentials_schema`, a global rule's first plugin here).

use serde_json::{Value, json};

use super::common_properties;
use crate::plugins::auth::credentials_schema;
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
        "examples": [{
            "username": "alice",
            "credentials": {"key-auth": {"key": "alice-secret-key"}},
            "plugins": {"limit-count": {"count": 100, "time_window": 60, "key": "consumer", "rejected_code": 429}}
        }],
        "type": "object",
        "properties": props,
        "additionalProperties": false
    })
}

/// The global-rule kind's schema.
pub(super) fn global_rule_schema() -> Value {
    let mut props = common_properties();
    let mut plugins = plugins_property();
    // On the property itself rather than in a rule: generators read a property's own bounds.
    plugins["minProperties"] = 1.into();
    plugins["description"] = "Plugin name → config; a global rule needs at least one.".into();
    props.insert("plugins".into(), plugins);
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "global-rule",
        "examples": [{"plugins": {"prometheus": {}}}],
        "type": "object",
        "properties": props,
        "required": ["plugins"],
        "additionalProperties": false
    })
}
