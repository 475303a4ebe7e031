//! `prometheus`: per-route request counters and latency histograms on the data plane's
//! `/metrics`.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The config schema.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "prefer_name": {"type": "boolean", "default": false}
        },
        "additionalProperties": false
    })
}

/// The typed config.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Also label the metrics with the route's name (its `name` label, else its id).
    #[serde(default)]
    pub prefer_name: bool,
}
