//! What the control plane knows about every data plane it has seen: connection, last contact,
//! the version it applied and the last version it rejected.
//!
//! Held in memory per control-plane replica; a data plane that reconnects is recognised by its
//! node id. Each stream gets a number so that a stale stream ending after a newer one started
//! does not mark the node disconnected.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};

use serde::Serialize;

use crate::store::now_ms;

/// A version a data plane refused, and why.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Rejection {
    /// The refused version.
    pub version: u64,
    /// The data plane's reason (its NACK's `error_detail`).
    pub error: String,
    /// When, unix seconds.
    pub at: i64,
}

/// One data plane as the fleet view shows it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DataPlane {
    /// Its node id.
    pub node_id: String,
    /// The address its stream comes from.
    pub address: Option<String>,
    /// Its build version.
    pub build_version: String,
    /// The control-plane replica it is (or was last) connected to.
    pub control_plane_id: String,
    /// Whether its stream is open.
    pub connected: bool,
    /// When its current (or last) stream opened, unix seconds.
    pub connected_at: i64,
    /// When it last sent anything, unix seconds.
    pub last_seen: i64,
    /// The version it serves, once it has ACKed one.
    pub applied_version: Option<u64>,
    /// The last version it rejected.
    pub last_rejected: Option<Rejection>,
    #[serde(skip)]
    stream: u64,
}

/// Fleet counts for `/api/v1/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FleetSummary {
    /// Data planes with an open stream.
    pub connected: usize,
    /// Connected data planes serving the given version.
    pub applied_current: usize,
}

/// Identifies one stream of one data plane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamHandle {
    node_id: String,
    stream: u64,
}

impl StreamHandle {
    /// The data plane's node id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }
}

/// Every data plane seen by this control plane.
#[derive(Debug, Default)]
pub struct Fleet {
    nodes: Mutex<BTreeMap<String, DataPlane>>,
    next_stream: AtomicU64,
}

fn now_s() -> i64 {
    now_ms() / 1000
}

impl Fleet {
    fn update(&self, handle: &StreamHandle, f: impl FnOnce(&mut DataPlane)) {
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(node) = nodes.get_mut(&handle.node_id)
            && node.stream == handle.stream
        {
            node.last_seen = now_s();
            f(node);
        }
    }

    /// Records a new stream from `node_id`, which serves `serving` (as its first request
    /// says: a restarted data plane serves nothing, whatever its predecessor applied), and
    /// returns its handle.
    pub fn connected(
        &self,
        node_id: &str,
        build_version: &str,
        address: Option<SocketAddr>,
        control_plane_id: &str,
        serving: Option<u64>,
    ) -> StreamHandle {
        let stream = self.next_stream.fetch_add(1, Ordering::Relaxed) + 1;
        let now = now_s();
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let previous = nodes.remove(node_id);
        nodes.insert(
            node_id.to_owned(),
            DataPlane {
                node_id: node_id.to_owned(),
                address: address.map(|a| a.to_string()),
                build_version: build_version.to_owned(),
                control_plane_id: control_plane_id.to_owned(),
                connected: true,
                connected_at: now,
                last_seen: now,
                applied_version: serving,
                last_rejected: previous.and_then(|p| p.last_rejected),
                stream,
            },
        );
        StreamHandle {
            node_id: node_id.to_owned(),
            stream,
        }
    }

    /// Records that the data plane now serves `version`.
    pub fn acked(&self, handle: &StreamHandle, version: u64) {
        self.update(handle, |node| node.applied_version = Some(version));
    }

    /// Records that the data plane refused `version`, and what it still serves (none: it
    /// serves no config at all).
    pub fn nacked(&self, handle: &StreamHandle, version: u64, serving: Option<u64>, error: &str) {
        self.update(handle, |node| {
            node.applied_version = serving;
            node.last_rejected = Some(Rejection {
                version,
                error: error.to_owned(),
                at: now_s(),
            });
        });
    }

    /// Records any message from the data plane.
    pub fn seen(&self, handle: &StreamHandle) {
        self.update(handle, |_| {});
    }

    /// Records that the stream closed.
    pub fn disconnected(&self, handle: &StreamHandle) {
        self.update(handle, |node| node.connected = false);
    }

    /// Every data plane seen, by node id.
    pub fn list(&self) -> Vec<DataPlane> {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes.values().cloned().collect()
    }

    /// How many data planes are connected, and how many of those serve `version`.
    pub fn summary(&self, version: u64) -> FleetSummary {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let connected: Vec<&DataPlane> = nodes.values().filter(|n| n.connected).collect();
        FleetSummary {
            connected: connected.len(),
            applied_current: connected
                .iter()
                .filter(|n| n.applied_version == Some(version))
                .count(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_stale_stream_cannot_overwrite_a_newer_one() {
        let fleet = Fleet::default();
        let old = fleet.connected("dp", "0.1.0", None, "cp", None);
        fleet.acked(&old, 3);
        let new = fleet.connected("dp", "0.1.0", None, "cp", Some(3));
        fleet.disconnected(&old);
        fleet.acked(&old, 9);
        let nodes = fleet.list();
        assert_eq!(nodes.len(), 1);
        assert!(nodes[0].connected);
        assert_eq!(nodes[0].applied_version, Some(3));
        fleet.nacked(&new, 4, Some(3), "bad");
        assert_eq!(fleet.list()[0].last_rejected.as_ref().unwrap().version, 4);
        assert_eq!(
            fleet.summary(3),
            FleetSummary {
                connected: 1,
                applied_current: 1
            }
        );
        fleet.disconnected(&new);
        assert_eq!(fleet.summary(3).connected, 0);
    }

    #[test]
    fn a_restarted_data_plane_is_shown_serving_what_it_says_it_serves() {
        let fleet = Fleet::default();
        let first = fleet.connected("dp", "0.1.0", None, "cp", None);
        fleet.acked(&first, 10);
        // Restarted: it serves nothing, and refuses version 10 (a plugin it lacks).
        let restarted = fleet.connected("dp", "0.2.0", None, "cp", None);
        assert_eq!(fleet.list()[0].applied_version, None);
        fleet.nacked(&restarted, 10, None, "unknown plugin");
        assert_eq!(fleet.list()[0].applied_version, None);
        assert_eq!(fleet.summary(10).applied_current, 0);
    }
}
