//! The rollout policy (`PUT /api/v1/rollout-policy`): how a new config version reaches the
//! fleet in stages. Not a config kind: it is not versioned and never streamed.
//!
//! Cohorts: `{"by": "hash"}` orders the data planes by a stable hash of their node id, and a
//! stage of `percent` P puts the first round(P% of the connected data planes) (at least one) on
//! the new version, so the same data planes always go first. `{"by": "labels"}`: every stage
//! but the last gives `labels`, a selector (every key equal), and a stage's cohort is every data
//! plane matching its selector or an earlier stage's; the last stage is `{"percent": 100}`.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{CompiledSchema, Violation, compile, exactly_one_of, schema_violations};

/// The most stages a policy may have.
pub const MAX_STAGES: usize = 20;

/// A validated rollout policy.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutPolicy {
    /// The stages, in order; the last one is 100%.
    pub stages: Vec<RolloutStage>,
    /// How each stage's data planes are chosen.
    #[serde(default)]
    pub cohort: Cohort,
    /// When a rollout halts by itself.
    #[serde(default)]
    pub halt_on: HaltOn,
}

/// One stage of a rollout.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RolloutStage {
    /// The share of the fleet on the new version (hash cohorts, and the last stage).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<u8>,
    /// The data planes added by this stage (label cohorts): every key must be equal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub labels: Option<BTreeMap<String, String>>,
    /// How long the stage bakes before the next one starts, in seconds.
    #[serde(default = "default_bake_s")]
    pub bake_s: u64,
}

/// How the data planes of a stage are chosen.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "by", rename_all = "lowercase")]
pub enum Cohort {
    /// By a stable hash of the node id.
    #[default]
    Hash,
    /// By the stages' label selectors.
    Labels,
}

/// When a rollout halts by itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct HaltOn {
    /// A data plane on the new version NACKs it.
    #[serde(default = "yes")]
    pub nack: bool,
    /// The canary's 5xx rate exceeds the rate of the data planes still on the previous version
    /// by more than this (0.05: five points); none: traffic never halts a rollout.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_rate_increase: Option<f64>,
    /// Requests the canary must have served on the new version before its rate counts.
    #[serde(default = "default_min_requests")]
    pub min_requests: u64,
}

impl Default for HaltOn {
    fn default() -> Self {
        HaltOn {
            nack: true,
            error_rate_increase: None,
            min_requests: default_min_requests(),
        }
    }
}

fn yes() -> bool {
    true
}

fn default_bake_s() -> u64 {
    60
}

fn default_min_requests() -> u64 {
    100
}

fn build_schema() -> Value {
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "rollout-policy",
        "description": "How a new config version reaches the fleet: stage by stage, halting by \
                        itself when the canary goes bad. Not versioned, never streamed.",
        "type": "object",
        "additionalProperties": false,
        "required": ["stages"],
        "properties": {
            "stages": {
                "description": "In order; percents ascending, the last stage {\"percent\": 100}.",
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_STAGES,
                "items": {
                    "type": "object",
                    "additionalProperties": false,
                    "properties": {
                        "percent": {"type": "integer", "minimum": 1, "maximum": 100},
                        "labels": {
                            "description": "Label cohorts: the data planes whose --labels hold \
                                            every one of these.",
                            "type": "object",
                            "minProperties": 1,
                            "maxProperties": 16,
                            "propertyNames": {"pattern": "^[A-Za-z0-9._/-]{1,63}$"},
                            "additionalProperties": {
                                "type": "string", "minLength": 1, "maxLength": 256
                            }
                        },
                        "bake_s": {
                            "type": "integer", "minimum": 0, "maximum": 86400, "default": 60
                        }
                    },
                    "allOf": [exactly_one_of("percent", "labels")]
                }
            },
            "cohort": {
                "type": "object",
                "additionalProperties": false,
                "required": ["by"],
                "properties": {"by": {"enum": ["hash", "labels"]}},
                "default": {"by": "hash"}
            },
            "halt_on": {
                "type": "object",
                "additionalProperties": false,
                "properties": {
                    "nack": {"type": "boolean", "default": true},
                    "error_rate_increase": {"type": "number", "minimum": 0, "maximum": 1},
                    "min_requests": {
                        "type": "integer", "minimum": 1, "maximum": 1_000_000_000u64,
                        "default": 100
                    }
                }
            }
        }
    })
}

static SCHEMA: LazyLock<CompiledSchema> = LazyLock::new(|| compile(build_schema()));

/// The policy's JSON Schema, as `GET /api/v1/schemas/rollout-policy` serves it.
pub fn rollout_policy_schema() -> &'static Value {
    &SCHEMA.document
}

/// Validates a policy document: the schema, then what no schema can say (percents ascending,
/// the last stage 100%, each stage's form matching the cohort). Every violation has its
/// pointer; those of the second kind are [`Violation::reference`] ones, so that the admin API
/// answers them 409 (the document has the served schema's shape) and keeps 400 for what the
/// schema refuses.
pub fn validate_rollout_policy(document: &Value) -> Result<RolloutPolicy, Vec<Violation>> {
    let violations = schema_violations(&SCHEMA, document, "");
    if !violations.is_empty() {
        return Err(violations);
    }
    let policy: RolloutPolicy = serde_json::from_value(document.clone())
        .map_err(|e| vec![Violation::new("", e.to_string())])?;
    let mut violations = Vec::new();
    let last = policy.stages.len() - 1;
    let mut previous = 0;
    for (index, stage) in policy.stages.iter().enumerate() {
        let at = format!("/stages/{index}");
        if index == last {
            if stage.percent != Some(100) {
                violations.push(Violation::reference(
                    at,
                    "the last stage is {\"percent\": 100}: every data plane",
                ));
            }
            continue;
        }
        match (policy.cohort, stage.percent) {
            (Cohort::Hash, Some(percent)) => {
                if percent <= previous || percent == 100 {
                    violations.push(Violation::reference(
                        format!("{at}/percent"),
                        "percents ascend, and only the last stage is 100",
                    ));
                }
                previous = percent;
            }
            (Cohort::Hash, None) => violations.push(Violation::reference(
                format!("{at}/labels"),
                "hash cohorts give each stage a percent, not labels",
            )),
            (Cohort::Labels, Some(_)) => violations.push(Violation::reference(
                format!("{at}/percent"),
                "label cohorts give every stage but the last labels, not a percent",
            )),
            (Cohort::Labels, None) => {}
        }
    }
    if violations.is_empty() {
        Ok(policy)
    } else {
        Err(violations)
    }
}

impl RolloutPolicy {
    /// The index of the last stage (100%).
    pub fn last_stage(&self) -> usize {
        self.stages.len().saturating_sub(1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointers(document: Value) -> Vec<String> {
        validate_rollout_policy(&document)
            .err()
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.pointer)
            .collect()
    }

    #[test]
    fn the_spec_example_is_a_policy() {
        let policy = validate_rollout_policy(&json!({
            "stages": [{"percent": 10, "bake_s": 60}, {"percent": 50, "bake_s": 60}, {"percent": 100}],
            "halt_on": {"nack": true, "error_rate_increase": 0.05, "min_requests": 200}
        }))
        .unwrap();
        assert_eq!(policy.cohort, Cohort::Hash);
        assert_eq!(policy.stages[2].bake_s, 60);
        assert_eq!(policy.halt_on.error_rate_increase, Some(0.05));
        assert_eq!(policy.last_stage(), 2);
        let labels = validate_rollout_policy(&json!({
            "cohort": {"by": "labels"},
            "stages": [{"labels": {"zone": "a"}, "bake_s": 5}, {"percent": 100}]
        }))
        .unwrap();
        assert_eq!(labels.halt_on, HaltOn::default());
    }

    #[test]
    fn bad_policies_are_refused_with_their_pointers() {
        assert_eq!(pointers(json!({"stages": []})), ["/stages"]);
        assert_eq!(
            pointers(json!({"stages": [{"percent": 50}, {"percent": 20}, {"percent": 100}]})),
            ["/stages/1/percent"]
        );
        assert_eq!(
            pointers(json!({"stages": [{"percent": 50}]})),
            ["/stages/0"]
        );
        assert_eq!(
            pointers(json!({"stages": [{"percent": 10, "labels": {"a": "b"}}, {"percent": 100}]})),
            ["/stages/0/labels"]
        );
        assert_eq!(
            pointers(
                json!({"cohort": {"by": "labels"}, "stages": [{"percent": 10}, {"percent": 100}]})
            ),
            ["/stages/0/percent"]
        );
        assert_eq!(
            pointers(json!({"stages": [{"percent": 100}], "halt_on": {"min_requests": 0}})),
            ["/halt_on/min_requests"]
        );
        assert_eq!(
            pointers(json!({"stages": [{"percent": 100}], "x": 1})),
            [""]
        );
    }

    #[test]
    fn only_what_the_schema_cannot_say_is_a_reference_rule() {
        let rules = |document: Value| {
            validate_rollout_policy(&document)
                .err()
                .unwrap_or_default()
                .into_iter()
                .map(|v| v.rule)
                .collect::<Vec<_>>()
        };
        assert_eq!(
            rules(json!({"stages": [{"percent": 50}, {"percent": 20}, {"percent": 100}]})),
            [crate::schema::Rule::Reference]
        );
        assert_eq!(
            rules(json!({"stages": [{"percent": 0}, {"percent": 100}]})),
            [crate::schema::Rule::Schema]
        );
    }
}
