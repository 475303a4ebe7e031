//! `request-id`: gives every request an id — the client's own if it sent a usable one, else a
//! new UUID v4 — sets it on the upstream request and echoes it in the response.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::proxy_rewrite::HEADER_NAME_PATTERN;

/// The config schema.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "header_name": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": HEADER_NAME_PATTERN, "default": "X-Request-Id"},
            "include_in_response": {"type": "boolean", "default": true},
            "algorithm": {"enum": ["uuid"], "default": "uuid"}
        },
        "additionalProperties": false
    })
}

/// The typed config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The header carrying the id.
    #[serde(default = "default_header")]
    pub header_name: String,
    /// Echo the id in the response.
    #[serde(default = "default_true")]
    pub include_in_response: bool,
    /// How ids are generated (only `uuid`, v4).
    #[serde(default = "default_algorithm")]
    pub algorithm: String,
}

fn default_header() -> String {
    "X-Request-Id".into()
}

fn default_true() -> bool {
    true
}

fn default_algorithm() -> String {
    "uuid".into()
}
