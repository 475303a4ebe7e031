//! `api-breaker`: a circuit breaker on upstream statuses, as in APISIX.
//!
//! After `unhealthy.failures` consecutive unhealthy statuses the route answers
//! `break_response_code` without calling the upstream, for 2 s; each further run of failures
//! doubles the break (4 s, 8 s, …) up to `max_breaker_sec`. Once a break is over, requests go
//! through again (half-open): `healthy.successes` healthy statuses close the circuit and reset
//! the backoff; another unhealthy status re-opens it.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The config schema.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "break_response_code": {"type": "integer", "minimum": 200, "maximum": 599},
            "break_response_body": {"type": "string", "maxLength": 65536},
            "max_breaker_sec": {"type": "integer", "minimum": 3, "maximum": 86400, "default": 300},
            "unhealthy": {
                "type": "object",
                "properties": {
                    "http_statuses": {
                        "type": "array", "minItems": 1, "maxItems": 64, "uniqueItems": true,
                        "items": {"type": "integer", "minimum": 500, "maximum": 599},
                        "default": [500]
                    },
                    "failures": {"type": "integer", "minimum": 1, "maximum": 1000000, "default": 3}
                },
                "additionalProperties": false,
                "default": {}
            },
            "healthy": {
                "type": "object",
                "properties": {
                    "http_statuses": {
                        "type": "array", "minItems": 1, "maxItems": 64, "uniqueItems": true,
                        "items": {"type": "integer", "minimum": 200, "maximum": 499},
                        "default": [200]
                    },
                    "successes": {"type": "integer", "minimum": 1, "maximum": 1000000, "default": 3}
                },
                "additionalProperties": false,
                "default": {}
            }
        },
        "required": ["break_response_code"],
        "additionalProperties": false
    })
}

/// The typed config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The status answered while the circuit is open.
    pub break_response_code: u16,
    /// The body answered while the circuit is open (default: the JSON error shape).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub break_response_body: Option<String>,
    /// The longest break, seconds.
    #[serde(default = "default_max")]
    pub max_breaker_sec: u64,
    /// What opens the circuit.
    #[serde(default)]
    pub unhealthy: Unhealthy,
    /// What closes it.
    #[serde(default)]
    pub healthy: Healthy,
}

/// What opens the circuit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Unhealthy {
    /// Statuses counted as failures.
    #[serde(default = "default_unhealthy_statuses")]
    pub http_statuses: Vec<u16>,
    /// Consecutive failures that open the circuit.
    #[serde(default = "default_three")]
    pub failures: u32,
}

impl Default for Unhealthy {
    fn default() -> Self {
        Unhealthy {
            http_statuses: default_unhealthy_statuses(),
            failures: 3,
        }
    }
}

/// What closes the circuit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Healthy {
    /// Statuses counted as successes.
    #[serde(default = "default_healthy_statuses")]
    pub http_statuses: Vec<u16>,
    /// Successes after a break that close the circuit.
    #[serde(default = "default_three")]
    pub successes: u32,
}

impl Default for Healthy {
    fn default() -> Self {
        Healthy {
            http_statuses: default_healthy_statuses(),
            successes: 3,
        }
    }
}

fn default_max() -> u64 {
    300
}

fn default_three() -> u32 {
    3
}

fn default_unhealthy_statuses() -> Vec<u16> {
    vec![500]
}

fn default_healthy_statuses() -> Vec<u16> {
    vec![200]
}
