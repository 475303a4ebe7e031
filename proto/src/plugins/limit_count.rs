//! `limit-count`: a fixed-window request counter.
//!
//! The schema is exactly the four required properties and nothing else (issue 3). Whether the
//! counter is local to each data plane or shared by all of them through Redis is therefore a
//! deployment choice, not a per-route one: a data plane started with `--redis-url` shares its
//! counters there; one without counts locally.

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
            "rejected_code": {"type": "integer", "minimum": 200, "maximum": 600}
        },
        "required": ["count", "time_window", "key", "rejected_code"],
        "additionalProperties": false
    })
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
}
