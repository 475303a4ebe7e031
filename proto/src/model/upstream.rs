//! Upstreams: groups of backend nodes and how to reach and balance them.

use serde::{Deserialize, Serialize};

/// A group of backend nodes and how to reach them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Upstream {
    /// The backends; at least one.
    pub nodes: Vec<UpstreamNode>,
    /// Protocol spoken to the nodes.
    #[serde(default)]
    pub scheme: Scheme,
    /// Balancing algorithm.
    #[serde(default)]
    pub lb: LoadBalance,
    /// Connect and read timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Which `Host` header the upstream request carries.
    #[serde(default)]
    pub pass_host: PassHost,
    /// The `Host` sent when `pass_host` is `rewrite`.
    #[serde(default)]
    pub upstream_host: Option<String>,
}

/// One backend of an upstream.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpstreamNode {
    /// Host name or IP address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// Relative share of requests; 0 drains the node.
    #[serde(default = "default_weight")]
    pub weight: u32,
}

fn default_weight() -> u32 {
    1
}

/// Protocol spoken to upstream nodes.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scheme {
    /// Plain HTTP/1.1.
    #[default]
    Http,
}

/// Balancing algorithm.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalance {
    /// Smooth weighted round robin.
    #[default]
    RoundRobin,
}

/// Upstream timeouts, in milliseconds.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    /// Time allowed to establish a TCP connection.
    #[serde(default = "default_connect_ms")]
    pub connect_ms: u64,
    /// Time allowed for the response headers to arrive once the request is sent.
    #[serde(default = "default_read_ms")]
    pub read_ms: u64,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect_ms: default_connect_ms(),
            read_ms: default_read_ms(),
        }
    }
}

/// Default connect timeout (APISIX and Kong both default to 60 s for every timeout; a connect
/// that takes more than 5 s on a data-centre network has failed).
pub const DEFAULT_CONNECT_MS: u64 = 5_000;
/// Default read timeout, as in APISIX and Kong.
pub const DEFAULT_READ_MS: u64 = 60_000;

fn default_connect_ms() -> u64 {
    DEFAULT_CONNECT_MS
}

fn default_read_ms() -> u64 {
    DEFAULT_READ_MS
}

/// Which `Host` header the upstream request carries.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PassHost {
    /// The client's `Host`, unchanged.
    #[default]
    Pass,
    /// The chosen node's `host:port`.
    Node,
    /// The upstream's `upstream_host`.
    Rewrite,
}
