//! The plugin registry: every plugin's name, priority and config schema.
//!
//! The schema of a `plugins` map (on routes, consumers and global rules) is composed from this
//! registry, so the control plane refuses an unknown plugin or a bad config on write with a
//! pointer such as `/plugins/limit-count/count`, and the data plane refuses the same snapshot
//! again when it compiles it. The typed configs live here too, so both sides read a config the
//! same way; what a plugin *does* lives in the data plane.
//!
//! Priority decides the order within a phase: higher runs first (the APISIX convention, with
//! APISIX's numbers where the plugin exists there). The chart is in ARCHITECTURE.md.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

pub mod api_breaker;
pub mod auth;
pub mod batch_requests;
pub mod cors;
pub mod ip_restriction;
pub mod limit_count;
pub mod limit_req;
pub mod prometheus;
pub mod proxy_cache;
pub mod proxy_rewrite;
pub mod redirect;
pub mod request_id;
pub mod request_validation;
pub mod response_rewrite;
pub mod traffic_split;
pub mod uri_blocker;

/// One plugin known to this build.
#[derive(Debug)]
pub struct PluginDef {
    /// The name used as the key in a `plugins` map.
    pub name: &'static str,
    /// Order within a phase: higher runs first.
    pub priority: i32,
    /// What it does, one line (served with the schema).
    pub description: &'static str,
    /// The JSON Schema of its config.
    pub schema: fn() -> Value,
}

/// Every plugin this build knows, by descending priority.
pub static PLUGINS: &[PluginDef] = &[
    PluginDef {
        name: "request-id",
        priority: 12015,
        description: "Gives every request an id (the client's or a new UUID), sent upstream and echoed back.",
        schema: request_id::schema,
    },
    PluginDef {
        name: "batch-requests",
        priority: 4010,
        description: "Turns the route into an endpoint that runs a client-defined list of requests through the gateway and answers all their responses.",
        schema: batch_requests::schema,
    },
    PluginDef {
        name: "cors",
        priority: 4000,
        description: "Answers CORS preflights at the gateway and adds CORS headers to answers.",
        schema: cors::schema,
    },
    PluginDef {
        name: "ip-restriction",
        priority: 3000,
        description: "Allows (whitelist) or refuses (blacklist) clients by IPv4/IPv6 CIDR block.",
        schema: ip_restriction::schema,
    },
    PluginDef {
        name: "uri-blocker",
        priority: 2900,
        description: "Refuses requests whose normalised path and query match one of block_rules (regular expressions).",
        schema: uri_blocker::schema,
    },
    PluginDef {
        name: "request-validation",
        priority: 2800,
        description: "Checks the request's headers and JSON body against JSON Schemas; refuses a request that violates them, listing every violation.",
        schema: request_validation::schema,
    },
    PluginDef {
        name: "basic-auth",
        priority: 2520,
        description: "Authenticates a consumer by HTTP Basic credentials.",
        schema: auth::basic_auth_schema,
    },
    PluginDef {
        name: "jwt-auth",
        priority: 2510,
        description: "Authenticates a consumer by a signed JWT (HS256 or RS256).",
        schema: auth::jwt_auth_schema,
    },
    PluginDef {
        name: "key-auth",
        priority: 2500,
        description: "Authenticates a consumer by an API key in a header or query argument.",
        schema: auth::key_auth_schema,
    },
    PluginDef {
        name: "proxy-cache",
        priority: 1085,
        description: "Answers from a bounded in-memory cache of the data plane: keys from templates, Cache-Control and Vary honoured, one upstream request per missing key, PURGE with a key.",
        schema: proxy_cache::schema,
    },
    PluginDef {
        name: "proxy-rewrite",
        priority: 1008,
        description: "Rewrites the upstream request: uri or regex_uri, host, method, headers.",
        schema: proxy_rewrite::schema,
    },
    PluginDef {
        name: "api-breaker",
        priority: 1005,
        description: "Circuit breaker: answers break_response_code after repeated unhealthy upstream statuses.",
        schema: api_breaker::schema,
    },
    PluginDef {
        name: "limit-count",
        priority: 1002,
        description: "Allows at most `count` requests per `time_window` seconds per key.",
        schema: limit_count::schema,
    },
    PluginDef {
        name: "limit-req",
        priority: 1001,
        description: "Leaky bucket: `rate` requests per second per key, `burst` more delayed, the rest refused.",
        schema: limit_req::schema,
    },
    PluginDef {
        name: "traffic-split",
        priority: 966,
        description: "Sends requests to other upstreams by weight and by header/query match (canaries).",
        schema: traffic_split::schema,
    },
    PluginDef {
        name: "redirect",
        priority: 900,
        description: "Answers with a redirect: http_to_https, a uri template, or regex_uri on the path.",
        schema: redirect::schema,
    },
    PluginDef {
        name: "response-rewrite",
        priority: 899,
        description: "Rewrites the answer: status, headers, body.",
        schema: response_rewrite::schema,
    },
    PluginDef {
        name: "prometheus",
        priority: 500,
        description: "Per-route request counters and latency histograms on the data plane's /metrics.",
        schema: prometheus::schema,
    },
];

/// The plugin named `name`, if this build has it.
pub fn plugin(name: &str) -> Option<&'static PluginDef> {
    PLUGINS.iter().find(|p| p.name == name)
}

/// The rule of a `plugins` map that its schema cannot say: regular expressions compile with
/// the data plane's engine (the schemas mark them `format: regex`). Each violation is located
/// under `at` (`/plugins`).
pub fn check(plugins: &BTreeMap<String, Value>, at: &str, out: &mut Vec<crate::schema::Violation>) {
    for (name, config) in plugins {
        let at = format!("{at}/{name}");
        match name.as_str() {
            "cors" => cors::check(config, &at, out),
            "proxy-rewrite" => proxy_rewrite::check(config, &at, out),
            "redirect" => redirect::check(config, &at, out),
            "traffic-split" => traffic_split::check(config, &at, out),
            "uri-blocker" => uri_blocker::check(config, &at, out),
            "request-validation" => request_validation::check(config, &at, out),
            _ => {}
        }
    }
}

/// The schema of a `plugins` map: known names only, each with its own config schema.
pub fn plugins_property() -> Value {
    let properties: Map<String, Value> = PLUGINS
        .iter()
        .map(|p| (p.name.to_owned(), (p.schema)()))
        .collect();
    json!({
        "type": "object",
        "description": "Plugin name → config. Unknown names are refused.",
        "properties": properties,
        "additionalProperties": false
    })
}

/// A plugin's schema document as served by `GET /api/v1/schemas/plugins/{name}`.
pub fn schema_document(def: &PluginDef) -> Value {
    let mut schema = (def.schema)();
    if let Value::Object(fields) = &mut schema {
        fields.insert("title".into(), def.name.into());
        fields.insert("description".into(), def.description.into());
        fields.insert(
            "$schema".into(),
            "https://json-schema.org/draft/2020-12/schema".into(),
        );
        fields.insert("x-priority".into(), def.priority.into());
    }
    schema
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_plugin_schema_compiles_and_the_registry_is_ordered() {
        for def in PLUGINS {
            jsonschema::validator_for(&schema_document(def))
                .unwrap_or_else(|e| panic!("{}: {e}", def.name));
        }
        for pair in PLUGINS.windows(2) {
            assert!(
                pair[0].priority > pair[1].priority,
                "{} / {}",
                pair[0].name,
                pair[1].name
            );
        }
    }
}
