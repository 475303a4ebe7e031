//! `traffic-split`: sends a share of a route's traffic to other upstreams — by weight (a
//! canary), by request attributes (a header, a query argument), or both.
//!
//! `rules` are tried in order; the first whose `match` holds decides. `match` is a list of
//! alternatives (any may hold; an absent or empty list always holds), each a set of header and
//! query conditions that must all hold — the same `{name, op, value}` conditions as a route's
//! `headers` and `query`. The matching rule's `weighted_upstreams` then share its requests by
//! weight; an entry without `upstream_id` stands for the route's own upstream. When no rule
//! matches, the route's own upstream serves the request.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::model::MatchCondition;
use crate::schema::{ID_PATTERN, Violation, compile_regex};

use super::proxy_rewrite::HEADER_NAME_PATTERN;

/// The config schema.
pub fn schema() -> Value {
    let conditions = crate::schema::conditions_schema;
    json!({
        "type": "object",
        "properties": {
            "rules": {
                "type": "array",
                "minItems": 1,
                "maxItems": 64,
                "items": {
                    "type": "object",
                    "properties": {
                        "match": {
                            "type": "array",
                            "maxItems": 64,
                            "items": {
                                "type": "object",
                                "properties": {
                                    "headers": conditions(Some(HEADER_NAME_PATTERN)),
                                    "query": conditions(None)
                                },
                                "additionalProperties": false
                            }
                        },
                        "weighted_upstreams": {
                            "type": "array",
                            "minItems": 1,
                            "maxItems": 16,
                            "items": {
                                "type": "object",
                                "properties": {
                                    "upstream_id": {"type": "string", "pattern": ID_PATTERN},
                                    "weight": {"type": "integer", "minimum": 0, "maximum": 100, "default": 1}
                                },
                                "additionalProperties": false
                            }
                        }
                    },
                    "required": ["weighted_upstreams"],
                    "additionalProperties": false
                }
            }
        },
        "required": ["rules"],
        "additionalProperties": false
    })
}

/// The typed config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Tried in order; the first that matches decides.
    pub rules: Vec<Rule>,
}

/// One rule.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rule {
    /// Alternatives; empty: every request.
    #[serde(default, rename = "match")]
    pub matches: Vec<Match>,
    /// Where matching requests go, by weight.
    pub weighted_upstreams: Vec<WeightedUpstream>,
}

/// One alternative of a rule's `match`: every condition must hold.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Match {
    /// Conditions on request headers.
    #[serde(default)]
    pub headers: Vec<MatchCondition>,
    /// Conditions on query arguments.
    #[serde(default)]
    pub query: Vec<MatchCondition>,
}

/// An upstream and its share.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct WeightedUpstream {
    /// A named upstream; absent: the route's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upstream_id: Option<String>,
    /// Its share (0: none).
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// The upstream ids a `plugins` map's `traffic-split` names (they must exist).
pub fn upstream_ids(plugins: &BTreeMap<String, Value>) -> Vec<String> {
    let Some(config) = plugins.get("traffic-split") else {
        return Vec::new();
    };
    let rules = config.get("rules").and_then(Value::as_array);
    rules
        .into_iter()
        .flatten()
        .filter_map(|rule| rule.get("weighted_upstreams").and_then(Value::as_array))
        .flatten()
        .filter_map(|entry| entry.get("upstream_id").and_then(Value::as_str))
        .map(str::to_owned)
        .collect()
}

/// The rule the schema cannot say: `regex` conditions compile with the data plane's engine.
pub fn check(config: &Value, at: &str, out: &mut Vec<Violation>) {
    let Ok(config) = serde_json::from_value::<Config>(config.clone()) else {
        return;
    };
    for (r, rule) in config.rules.iter().enumerate() {
        for (m, alternative) in rule.matches.iter().enumerate() {
            for (field, conditions) in [
                ("headers", &alternative.headers),
                ("query", &alternative.query),
            ] {
                for (i, condition) in conditions.iter().enumerate() {
                    if let (crate::model::MatchOp::Regex, Some(pattern)) =
                        (condition.op, &condition.value)
                        && let Err(message) = compile_regex(pattern)
                    {
                        out.push(Violation::new(
                            format!("{at}/rules/{r}/match/{m}/{field}/{i}/value"),
                            message,
                        ));
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::model::Parsed;
    use crate::schema::validate_resource;
    use crate::{Kind, ResourceKey};

    #[test]
    fn upstream_ids_are_references_and_conditions_are_checked() {
        let route = json!({"paths": ["/"], "upstream_id": "stable", "plugins": {"traffic-split": {"rules": [
            {"match": [{"headers": [{"name": "x-canary", "op": "exists"}]}], "weighted_upstreams": [{"upstream_id": "canary"}]},
            {"weighted_upstreams": [{"upstream_id": "b", "weight": 5}, {"weight": 95}]}
        ]}}});
        let parsed = validate_resource(Kind::Routes, &route).unwrap();
        let refs: Vec<ResourceKey> = ["b", "canary", "stable"]
            .into_iter()
            .map(|id| ResourceKey::new(Kind::Upstreams, id))
            .collect();
        assert_eq!(parsed.references(), refs);
        let rule = json!({"plugins": {"traffic-split": {"rules": [{"weighted_upstreams": [{"upstream_id": "g"}]}]}}});
        let Ok(rule @ Parsed::GlobalRule(_)) = validate_resource(Kind::GlobalRules, &rule) else {
            panic!("a valid global rule")
        };
        assert_eq!(rule.references(), [ResourceKey::new(Kind::Upstreams, "g")]);

        let bad = json!({"paths": ["/"], "upstream_id": "u", "plugins": {"traffic-split": {"rules": [
            {"match": [{"query": [{"name": "v", "op": "regex", "value": "("}]}], "weighted_upstreams": [{}]}
        ]}}});
        let pointers: Vec<String> = validate_resource(Kind::Routes, &bad)
            .unwrap_err()
            .into_iter()
            .map(|v| v.pointer)
            .collect();
        assert_eq!(
            pointers,
            ["/plugins/traffic-split/rules/0/match/0/query/0/value"]
        );
        for refused in [
            json!({"rules": []}),
            json!({"rules": [{"weighted_upstreams": []}]}),
            json!({"rules": [{"weighted_upstreams": [{"weight": 101}]}]}),
            json!({"rules": [{"match": [{"headers": [{"name": "x", "op": "eq"}]}], "weighted_upstreams": [{}]}]}),
        ] {
            let route =
                json!({"paths": ["/"], "upstream_id": "u", "plugins": {"traffic-split": refused}});
            assert!(validate_resource(Kind::Routes, &route).is_err(), "{route}");
        }
    }
}
