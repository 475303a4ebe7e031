//! `limit-req`: a leaky bucket per key — `rate` requests per second, with up to `burst`
//! excess requests delayed (or let through at once with `nodelay`), the rest refused.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::limit_count::KEYS;

/// The config schema.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "rate": {"type": "number", "exclusiveMinimum": 0, "maximum": 1.0e9},
            "burst": {"type": "number", "minimum": 0, "maximum": 1.0e9},
            "key": {"enum": KEYS},
            "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 503},
            "nodelay": {"type": "boolean", "default": false}
        },
        "required": ["rate", "burst", "key"],
        "additionalProperties": false
    })
}

/// The typed config.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Config {
    /// Requests per second let through steadily.
    pub rate: f64,
    /// Requests over the rate that are delayed instead of refused.
    pub burst: f64,
    /// What requests are limited by: one of the `limit-count` keys.
    pub key: String,
    /// The status of a refusal.
    #[serde(default = "default_code")]
    pub rejected_code: u16,
    /// Let requests within the burst through at once instead of delaying them.
    #[serde(default)]
    pub nodelay: bool,
}

fn default_code() -> u16 {
    503
}
