//! `response-rewrite`: changes the answer the client gets — `status_code`, headers (`add`,
//! `set`, `remove`) and `body` — whoever produced it (upstream, gateway error or plugin
//! refusal), as APISIX does without `vars`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::proxy_rewrite::{HeaderOps, header_ops_schema};

/// The config schema.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "status_code": {"type": "integer", "minimum": 200, "maximum": 598},
            "body": {"type": "string", "maxLength": 1048576},
            "headers": header_ops_schema()
        },
        "additionalProperties": false
    })
}

/// The typed config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// The status sent instead of the original.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status_code: Option<u16>,
    /// The body sent instead of the original (`Content-Length` follows it;
    /// `Content-Encoding` is dropped).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// Header changes.
    #[serde(default)]
    pub headers: HeaderOps,
}
