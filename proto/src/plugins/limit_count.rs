//! `limit-count`: a fixed-window request counter.
//!
//! Four required properties (issue 3) and an optional `policy` saying where the count is kept:
//! `local` (each data plane counts alone), `fleet` (each data plane admits its share of `count`,
//! the number of live data planes pushed by the control plane) or `redis` (one budget shared
//! through the data planes' `--redis-url`). Left out, the deployment decides: `redis` on a data
//! plane started with `--redis-url`, `local` on one without.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// What a request is counted by.
pub const KEYS: [&str; 7] = [
    "remote_addr",
    "consumer",
    "route",
    "http_x_real_ip",
    "http_x_forwarded_for",
    "http_x_user_id",
    "http_x_api_key",
];

/// The largest integer every JSON reader holds exactly (2^53 - 1): a bound the schema states,
/// so that no schema-valid count overflows the typed config.
const MAX_SAFE_INTEGER: u64 = (1 << 53) - 1;

/// The config schema.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "count": {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER},
            "time_window": {"type": "integer", "minimum": 0, "maximum": MAX_SAFE_INTEGER},
            "key": {"enum": KEYS},
            "rejected_code": {"type": "integer", "minimum": 200, "maximum": 600},
            "policy": {
                "enum": POLICIES,
                "description": "local: each data plane counts alone; fleet: each admits count / live data planes; redis: one budget through --redis-url. Left out: redis when the data plane has --redis-url, else local."
            }
        },
        "required": ["count", "time_window", "key", "rejected_code"],
        "additionalProperties": false
    })
}

/// Where a count is kept, as the schema names them.
pub const POLICIES: [&str; 3] = ["local", "fleet", "redis"];

/// Where a count is kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Policy {
    /// Each data plane counts alone: the fleet admits up to `count` per data plane.
    Local,
    /// Each data plane admits its share of `count` (`count` ÷ live data planes, rounded up):
    /// the fleet admits about `count`, with no shared store.
    Fleet,
    /// One count shared by every data plane through Redis (`--redis-url`).
    Redis,
}

/// The typed config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Requests allowed per window.
    pub count: u64,
    /// Window length in seconds (0: every request is over the limit unless count allows it
    /// within the same instant — treated as a 1-second window).
    pub time_window: u64,
    /// What requests are counted by: one of [`KEYS`].
    pub key: String,
    /// The status answered past the limit.
    pub rejected_code: u16,
    /// Where the count is kept; `None`: Redis when the data plane has one, else local.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy: Option<Policy>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_policy_the_schema_allows_is_one_the_config_reads() {
        let validator = jsonschema::validator_for(&schema()).expect("the schema compiles");
        let base = json!({"count": 1, "time_window": 1, "key": "route", "rejected_code": 429});
        for name in POLICIES.iter().copied().chain(["cluster", "Fleet", ""]) {
            let mut config = base.clone();
            config["policy"] = json!(name);
            let parsed = serde_json::from_value::<Config>(config.clone());
            assert_eq!(validator.is_valid(&config), parsed.is_ok(), "{name:?}");
            if let Ok(parsed) = parsed {
                assert_eq!(serde_json::to_value(&parsed).unwrap(), config);
            }
        }
        let left_out: Config = serde_json::from_value(base.clone()).unwrap();
        assert_eq!(left_out.policy, None);
        assert_eq!(serde_json::to_value(&left_out).unwrap(), base);
    }
}
