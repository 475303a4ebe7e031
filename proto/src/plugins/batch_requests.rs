//! `batch-requests`: a route that takes a client-defined list of requests, runs each through
//! the gateway's own router and plugins, and answers all their responses in one array.
//!
//! The plugin config only bounds what a client may ask for; the batch itself is the request
//! body, [`BatchBody`].

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// Default most items in one batch.
pub const DEFAULT_MAX_ITEMS: usize = 16;
/// Default cap on the batch body, and on each item's response body read into memory (1 MiB, as
/// APISIX's `max_body_size`).
pub const DEFAULT_MAX_BODY_BYTES: usize = 1 << 20;
/// Default deadline of a batch, and the most a client may ask for (30 s, as APISIX).
pub const DEFAULT_TIMEOUT_MS: u64 = 30_000;

/// The config schema.
pub fn schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "max_items": {"type": "integer", "minimum": 1, "maximum": 256, "default": DEFAULT_MAX_ITEMS},
            "max_body_bytes": {"type": "integer", "minimum": 1, "maximum": 67108864, "default": DEFAULT_MAX_BODY_BYTES},
            "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 3600000, "default": DEFAULT_TIMEOUT_MS}
        },
        "additionalProperties": false
    })
}

/// The typed config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Most items in one batch; more is a 400.
    #[serde(default = "default_max_items")]
    pub max_items: usize,
    /// Cap on the batch body (more is a 413) and on each item's response body.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    /// The deadline of a batch that names none, and the most one may name.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_max_items() -> usize {
    DEFAULT_MAX_ITEMS
}

fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

fn default_timeout_ms() -> u64 {
    DEFAULT_TIMEOUT_MS
}

/// What a client posts to a `batch-requests` route.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchBody {
    /// The requests, answered in the same order.
    pub requests: Vec<BatchItem>,
    /// Deadline of the whole batch (capped by the plugin's `timeout_ms`).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Headers every item carries (an item's own headers win).
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

/// One request of a batch.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BatchItem {
    /// The method; `GET` when absent.
    #[serde(default)]
    pub method: Option<String>,
    /// Path and query, as a client would send them (`/users/1?full=true`).
    pub path: String,
    /// Headers of this item.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The body: a string is sent as is, any other JSON value as `application/json`.
    #[serde(default)]
    pub body: Option<Value>,
}
