//! The data-plane fleet: every data plane any control-plane replica has seen, kept in the
//! store so that every replica answers for the whole fleet.
//!
//! A replica records the streams it holds in memory first (the config stream never waits for
//! the store) and a writer task copies every change to the store's `data_planes` rows, retrying
//! while the store is away. While a stream is open its replica refreshes the row's `last_seen`
//! every `HEARTBEAT`; a row whose replica stopped refreshing it (killed) counts as
//! disconnected after `LIVENESS`. Rows not seen for the retention window are pruned.
//!
//! A data plane is one process: its node id (`--node-id`) plus an instance id it draws at
//! start. A restarted process replaces the rows of its node id that are no longer live; two
//! live processes with one node id keep a row each, both marked `duplicate_node_id`.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{Notify, watch};

use crate::store::{DataPlaneRecord, RejectionRecord, Store, StoreError, now_ms};

/// How often a replica marks its open streams alive in the store.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// A row not refreshed for this long counts as disconnected (its replica is gone).
const LIVENESS: Duration = Duration::from_secs(15);
/// How long a replica waits for the store when a data plane connects before it goes on
/// without the data plane's history.
const PRIOR_TIMEOUT: Duration = Duration::from_secs(1);
/// How often rows older than the retention window are pruned.
const PRUNE_EVERY: Duration = Duration::from_secs(60);
/// How often the live data planes are counted in the store: a data plane joining or leaving
/// through any replica reaches every replica's streams within about this (plus the writer's
/// own delay), and a killed replica's data planes once their rows age past [`LIVENESS`].
const LIVE_COUNT_EVERY: Duration = Duration::from_secs(1);

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
    /// Random per process start: tells a restart from a second process with the same id.
    pub instance_id: String,
    /// The address its stream comes from.
    pub address: Option<String>,
    /// Its build version.
    pub build_version: String,
    /// The control-plane replica it is (or was last) connected to.
    pub control_plane_id: String,
    /// Whether its stream is open (and its replica alive).
    pub connected: bool,
    /// When its current (or last) stream opened, unix seconds.
    pub connected_at: i64,
    /// When it was last known alive, unix seconds.
    pub last_seen: i64,
    /// The version it serves, once it has said so.
    pub applied_version: Option<u64>,
    /// Where that config came from: `stream`, or `cache` (its disk cache, read while no
    /// control plane answered).
    pub config_source: Option<String>,
    /// The last version it rejected.
    pub last_rejected: Option<Rejection>,
    /// Another live data plane uses the same node id (a misconfiguration: give each its own).
    pub duplicate_node_id: bool,
    /// Its `--labels`.
    pub labels: BTreeMap<String, String>,
    /// Its latest traffic report, per config version it still counts, oldest first: requests
    /// and 5xx answers since the process started.
    pub traffic: Vec<VersionTraffic>,
}

/// Requests one data-plane process served with one config version, as it last reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct VersionTraffic {
    /// The config version.
    pub version: u64,
    /// Requests answered.
    pub requests: u64,
    /// Of those, answered 5xx.
    pub errors_5xx: u64,
}

/// Fleet counts for `/api/v1/status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct FleetSummary {
    /// Data planes with an open stream.
    pub connected: usize,
    /// Connected data planes serving the given version.
    pub applied_current: usize,
    /// Connected data planes that rejected the given version.
    pub rejected_current: usize,
}

/// What a data plane says of itself when its stream opens.
#[derive(Clone, Debug)]
pub struct Hello {
    /// Its node id.
    pub node_id: String,
    /// Its process's instance id.
    pub instance_id: String,
    /// Its build version.
    pub build_version: String,
    /// Where its stream comes from.
    pub address: Option<SocketAddr>,
    /// The version it serves now (none for a fresh process).
    pub serving: Option<u64>,
    /// Where that config came from.
    pub config_source: Option<String>,
    /// Its `--labels`.
    pub labels: BTreeMap<String, String>,
}

/// Identifies one stream of one data-plane process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StreamHandle {
    key: (String, String),
    stream_id: String,
}

impl StreamHandle {
    /// The data plane's node id.
    pub fn node_id(&self) -> &str {
        &self.key.0
    }
}

/// This replica's view of the fleet, and its writer to the store.
#[derive(Debug)]
pub struct Fleet {
    store: Store,
    control_plane_id: String,
    /// This replica's process (random per start).
    cp_instance: String,
    retention: Duration,
    /// The rows of the streams this replica holds, and of closed ones not yet written.
    local: Mutex<Local>,
    wake_writer: Notify,
    /// How many data planes are live across every replica, as last counted in the store
    /// (0 until first counted).
    live: watch::Sender<u32>,
}

#[derive(Debug, Default)]
struct Local {
    records: BTreeMap<(String, String), DataPlaneRecord>,
    dirty: BTreeSet<(String, String)>,
}

impl Fleet {
    /// The fleet of the replica `control_plane_id`, kept in `store`; rows unseen for
    /// `retention` are pruned.
    pub fn new(store: Store, control_plane_id: &str, retention: Duration) -> Fleet {
        Fleet {
            store,
            control_plane_id: control_plane_id.to_owned(),
            cp_instance: random_id(),
            retention,
            local: Mutex::default(),
            wake_writer: Notify::new(),
            live: watch::Sender::new(0),
        }
    }

    /// This replica's name in the fleet view.
    pub fn control_plane_id(&self) -> &str {
        &self.control_plane_id
    }

    fn local(&self) -> std::sync::MutexGuard<'_, Local> {
        self.local.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a new stream and returns its handle.
    pub fn connected(&self, hello: &Hello) -> StreamHandle {
        let now = now_ms();
        let stream_id = random_id();
        let instance_id = if hello.instance_id.is_empty() {
            // A data plane too old to send one: each stream counts as its own process.
            stream_id.clone()
        } else {
            hello.instance_id.clone()
        };
        let key = (hello.node_id.clone(), instance_id.clone());
        let record = DataPlaneRecord {
            node_id: hello.node_id.clone(),
            instance_id,
            stream_id: stream_id.clone(),
            address: hello.address.map(|a| a.to_string()),
            build_version: hello.build_version.clone(),
            control_plane_id: self.control_plane_id.clone(),
            cp_instance: self.cp_instance.clone(),
            connected: true,
            connected_at: now,
            last_seen: now,
            applied_version: hello.serving,
            config_source: hello.config_source.clone(),
            rejected: None,
            labels: hello.labels.clone(),
            traffic: BTreeMap::new(),
        };
        let mut local = self.local();
        local.records.insert(key.clone(), record);
        local.dirty.insert(key.clone());
        drop(local);
        self.wake_writer.notify_one();
        StreamHandle { key, stream_id }
    }

    /// What the store knows of the data plane behind `handle` from before this stream: the
    /// version it last rejected with this same build (not to be sent again). Rows of earlier
    /// processes with its node id that are no longer live are removed (a restart replaces
    /// them); a live one is reported as a duplicate. Waits at most a second for the store:
    /// without it the stream goes on, knowing nothing.
    pub async fn prior(&self, handle: &StreamHandle) -> Option<u64> {
        let rows = tokio::time::timeout(
            PRIOR_TIMEOUT,
            self.store.data_planes_named(handle.node_id()),
        )
        .await;
        let rows = match rows {
            Ok(Ok(rows)) => rows,
            Ok(Err(error)) => {
                tracing::warn!(node = handle.node_id(), %error, "cannot read the data plane's history");
                return None;
            }
            Err(_) => return None,
        };
        let build = self
            .local()
            .records
            .get(&handle.key)
            .map(|r| r.build_version.clone())
            .unwrap_or_default();
        let now = now_ms();
        let mut withheld = None;
        let mut carried = None;
        for row in rows {
            let same_build = row.build_version == build;
            if same_build
                && let Some(rejected) = &row.rejected
                && carried
                    .as_ref()
                    .is_none_or(|c: &RejectionRecord| c.at < rejected.at)
            {
                carried = Some(rejected.clone());
                withheld = Some(rejected.version);
            }
            if row.instance_id == handle.key.1 {
                continue;
            }
            if is_live(&row, now) {
                tracing::warn!(
                    node = handle.node_id(),
                    other_address = ?row.address,
                    other_replica = %row.control_plane_id,
                    "two live data planes use one node id; give each its own --node-id"
                );
            } else if let Err(error) = self
                .store
                .delete_data_plane(&row.node_id, &row.instance_id)
                .await
            {
                tracing::debug!(%error, "cannot remove a replaced data plane's row");
            }
        }
        // Same process, same build: its rejection stays on the view.
        if let Some(rejected) = carried {
            self.update(handle, |record| {
                if record.rejected.is_none() {
                    record.rejected = Some(rejected);
                }
            });
        }
        withheld
    }

    fn update(&self, handle: &StreamHandle, change: impl FnOnce(&mut DataPlaneRecord)) {
        let mut local = self.local();
        let Some(record) = local.records.get_mut(&handle.key) else {
            return;
        };
        if record.stream_id != handle.stream_id {
            return;
        }
        record.last_seen = now_ms();
        change(record);
        local.dirty.insert(handle.key.clone());
        drop(local);
        self.wake_writer.notify_one();
    }

    /// Records that the data plane now serves `version` from its stream.
    pub fn acked(&self, handle: &StreamHandle, version: u64) {
        self.update(handle, |record| {
            record.applied_version = Some(version);
            record.config_source = Some("stream".to_owned());
        });
    }

    /// Records that the data plane refused `version`, and what it still serves (none: it
    /// serves no config at all).
    pub fn nacked(&self, handle: &StreamHandle, version: u64, serving: Option<u64>, error: &str) {
        self.update(handle, |record| {
            record.applied_version = serving;
            record.rejected = Some(RejectionRecord {
                version,
                error: error.to_owned(),
                at: now_ms(),
            });
        });
    }

    /// Records a traffic report: the process's cumulative counts per config version. Counts
    /// that did not change are not written again.
    pub fn reported(&self, handle: &StreamHandle, traffic: &[gateway_proto::pb::VersionTraffic]) {
        let traffic: BTreeMap<u64, [u64; 2]> = traffic
            .iter()
            .filter_map(|t| Some((t.version.parse().ok()?, [t.requests, t.errors_5xx])))
            .collect();
        let unchanged = self
            .local()
            .records
            .get(&handle.key)
            .is_some_and(|r| r.traffic == traffic);
        if !unchanged {
            self.update(handle, |record| record.traffic = traffic);
        }
    }

    /// Records that the stream closed.
    pub fn disconnected(&self, handle: &StreamHandle) {
        self.update(handle, |record| record.connected = false);
    }

    /// Copies every change to the store, refreshes this replica's open streams and prunes old
    /// rows, for as long as the process runs. A failed write is retried: the fleet view
    /// catches up once the store is back.
    pub async fn run_writer(&self) {
        let mut heartbeat = tokio::time::interval(HEARTBEAT);
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_prune = None::<tokio::time::Instant>;
        loop {
            tokio::select! {
                () = self.wake_writer.notified() => {}
                _ = heartbeat.tick() => {
                    let now = now_ms();
                    if let Err(error) = self.store.touch_data_planes(&self.cp_instance, now).await {
                        tracing::debug!(%error, "cannot refresh the fleet's rows");
                    }
                    if last_prune.is_none_or(|at| at.elapsed() >= PRUNE_EVERY) {
                        last_prune = Some(tokio::time::Instant::now());
                        self.prune(now).await;
                    }
                }
            }
            if let Err(error) = self.flush().await {
                tracing::debug!(%error, "cannot write the fleet view; retrying");
                tokio::time::sleep(Duration::from_millis(500)).await;
                self.wake_writer.notify_one();
            }
        }
    }

    async fn prune(&self, now: i64) {
        let cutoff =
            now.saturating_sub(i64::try_from(self.retention.as_millis()).unwrap_or(i64::MAX));
        match self.store.prune_data_planes(cutoff).await {
            Ok(0) => {}
            Ok(pruned) => tracing::info!(
                pruned,
                "removed data planes gone longer than the retention window"
            ),
            Err(error) => tracing::debug!(%error, "cannot prune the fleet view"),
        }
    }

    /// Writes every changed row; closed streams leave memory once written.
    pub async fn flush(&self) -> Result<(), StoreError> {
        loop {
            let next = {
                let mut local = self.local();
                let Some(key) = local.dirty.pop_first() else {
                    return Ok(());
                };
                local.records.get(&key).cloned().map(|record| (key, record))
            };
            let Some((key, record)) = next else { continue };
            if let Err(error) = self.store.put_data_plane(&record).await {
                self.local().dirty.insert(key);
                return Err(error);
            }
            let mut local = self.local();
            let written_and_closed = !local.dirty.contains(&key)
                && local
                    .records
                    .get(&key)
                    .is_some_and(|r| !r.connected && r.stream_id == record.stream_id);
            if written_and_closed {
                local.records.remove(&key);
            }
        }
    }

    /// How many data planes are live across every replica (0 until first counted); the
    /// receiver sees each change, for `limit-count`'s `fleet` policy.
    pub fn live_data_planes(&self) -> watch::Receiver<u32> {
        self.live.subscribe()
    }

    /// Counts the live data planes in the store every second, for as long as the
    /// process runs, and publishes the count when it changes. While the store is away the last
    /// count stands.
    pub async fn run_live_count(&self) {
        let mut tick = tokio::time::interval(LIVE_COUNT_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.count_live().await;
        }
    }

    /// Counts the live data planes once and publishes a change.
    async fn count_live(&self) {
        let liveness = i64::try_from(LIVENESS.as_millis()).unwrap_or(i64::MAX);
        match self
            .store
            .count_live_data_planes(now_ms().saturating_sub(liveness))
            .await
        {
            Ok(live) => {
                let live = u32::try_from(live).unwrap_or(u32::MAX);
                self.live.send_if_modified(|last| {
                    let changed = *last != live;
                    *last = live;
                    changed
                });
            }
            Err(error) => tracing::debug!(%error, "cannot count the live data planes"),
        }
    }

    /// Every data plane any replica has seen, by node id.
    pub async fn list(&self) -> Result<Vec<DataPlane>, StoreError> {
        let rows = self.store.data_planes().await?;
        let now = now_ms();
        let mut live_per_node: BTreeMap<&str, usize> = BTreeMap::new();
        for row in rows.iter().filter(|row| is_live(row, now)) {
            *live_per_node.entry(row.node_id.as_str()).or_default() += 1;
        }
        Ok(rows
            .iter()
            .map(|row| {
                let connected = is_live(row, now);
                DataPlane {
                    node_id: row.node_id.clone(),
                    instance_id: row.instance_id.clone(),
                    address: row.address.clone(),
                    build_version: row.build_version.clone(),
                    control_plane_id: row.control_plane_id.clone(),
                    connected,
                    connected_at: row.connected_at / 1000,
                    last_seen: row.last_seen / 1000,
                    applied_version: row.applied_version,
                    config_source: row.config_source.clone(),
                    last_rejected: row.rejected.as_ref().map(|r| Rejection {
                        version: r.version,
                        error: r.error.clone(),
                        at: r.at / 1000,
                    }),
                    duplicate_node_id: connected
                        && live_per_node.get(row.node_id.as_str()) > Some(&1),
                    labels: row.labels.clone(),
                    traffic: row
                        .traffic
                        .iter()
                        .map(|(&version, &[requests, errors_5xx])| VersionTraffic {
                            version,
                            requests,
                            errors_5xx,
                        })
                        .collect(),
                }
            })
            .collect())
    }

    /// How many data planes are connected, how many of those serve `version`, and how many
    /// rejected it.
    pub async fn summary(&self, version: u64) -> Result<FleetSummary, StoreError> {
        let planes = self.list().await?;
        let connected = planes.iter().filter(|p| p.connected);
        Ok(FleetSummary {
            connected: connected.clone().count(),
            applied_current: connected
                .clone()
                .filter(|p| p.applied_version == Some(version))
                .count(),
            rejected_current: connected
                .filter(|p| {
                    p.last_rejected
                        .as_ref()
                        .is_some_and(|r| r.version == version)
                })
                .count(),
        })
    }
}

/// Whether a row describes an open stream of a replica that is still alive.
fn is_live(row: &DataPlaneRecord, now: i64) -> bool {
    let liveness = i64::try_from(LIVENESS.as_millis()).unwrap_or(i64::MAX);
    row.connected && now.saturating_sub(row.last_seen) < liveness
}

/// 128 random bits, hex.
fn random_id() -> String {
    format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::tests::sqlite_store;

    fn hello(node: &str, instance: &str, serving: Option<u64>) -> Hello {
        Hello {
            node_id: node.to_owned(),
            instance_id: instance.to_owned(),
            build_version: "0.1.0".to_owned(),
            address: None,
            serving,
            config_source: None,
            labels: BTreeMap::new(),
        }
    }

    async fn fleet() -> Fleet {
        Fleet::new(sqlite_store().await, "cp", Duration::from_secs(3600))
    }

    #[tokio::test]
    async fn a_stale_stream_cannot_overwrite_a_newer_one() {
        let fleet = fleet().await;
        let old = fleet.connected(&hello("dp", "i1", None));
        fleet.acked(&old, 3);
        let new = fleet.connected(&hello("dp", "i1", Some(3)));
        fleet.disconnected(&old);
        fleet.acked(&old, 9);
        fleet.flush().await.unwrap();
        let nodes = fleet.list().await.unwrap();
        assert_eq!(nodes.len(), 1);
        assert!(nodes[0].connected);
        assert_eq!(nodes[0].applied_version, Some(3));
        fleet.nacked(&new, 4, Some(3), "bad");
        fleet.flush().await.unwrap();
        assert_eq!(
            fleet.list().await.unwrap()[0]
                .last_rejected
                .as_ref()
                .unwrap()
                .version,
            4
        );
        assert_eq!(
            fleet.summary(3).await.unwrap(),
            FleetSummary {
                connected: 1,
                applied_current: 1,
                rejected_current: 0,
            }
        );
        assert_eq!(fleet.summary(4).await.unwrap().rejected_current, 1);
        fleet.disconnected(&new);
        fleet.flush().await.unwrap();
        assert_eq!(fleet.summary(3).await.unwrap().connected, 0);
    }

    #[tokio::test]
    async fn a_restarted_data_plane_replaces_its_row_and_keeps_its_rejection() {
        let fleet = fleet().await;
        let first = fleet.connected(&hello("dp", "i1", None));
        fleet.acked(&first, 10);
        fleet.nacked(&first, 11, Some(10), "unknown plugin");
        fleet.disconnected(&first);
        fleet.flush().await.unwrap();
        // Restarted: a new process serves nothing, and its build refused version 11 before.
        let restarted = fleet.connected(&hello("dp", "i2", None));
        assert_eq!(fleet.prior(&restarted).await, Some(11));
        fleet.flush().await.unwrap();
        let nodes = fleet.list().await.unwrap();
        assert_eq!(nodes.len(), 1, "{nodes:?}");
        assert_eq!(nodes[0].instance_id, "i2");
        assert_eq!(nodes[0].applied_version, None);
        assert_eq!(nodes[0].last_rejected.as_ref().unwrap().version, 11);
        assert!(!nodes[0].duplicate_node_id);
    }

    #[tokio::test]
    async fn a_reconnecting_process_keeps_its_rejection_even_if_its_new_row_is_written_first() {
        // Another replica (a new `Fleet` on the same store) takes the stream of the same
        // process; its writer may store the new row before `prior` reads it.
        let store = sqlite_store().await;
        let before = Fleet::new(store.clone(), "cp-a", Duration::from_secs(3600));
        let first = before.connected(&hello("dp", "i1", None));
        before.acked(&first, 10);
        before.nacked(&first, 11, Some(10), "unknown plugin");
        before.flush().await.unwrap();
        let after = Fleet::new(store, "cp-b", Duration::from_secs(3600));
        let again = after.connected(&hello("dp", "i1", Some(10)));
        after.flush().await.unwrap();
        assert_eq!(after.prior(&again).await, Some(11));
        let nodes = after.list().await.unwrap();
        assert_eq!(nodes[0].control_plane_id, "cp-b");
        assert_eq!(nodes[0].last_rejected.as_ref().unwrap().version, 11);
    }

    #[tokio::test]
    async fn labels_and_the_latest_traffic_report_are_kept_with_the_row() {
        let store = sqlite_store().await;
        let fleet = Fleet::new(store.clone(), "cp-a", Duration::from_secs(3600));
        let mut hi = hello("dp", "i1", Some(4));
        hi.labels.insert("zone".to_owned(), "a".to_owned());
        let handle = fleet.connected(&hi);
        let report = |version: &str, requests, errors_5xx| gateway_proto::pb::VersionTraffic {
            version: version.to_owned(),
            requests,
            errors_5xx,
        };
        fleet.reported(&handle, &[report("4", 10, 1)]);
        fleet.reported(
            &handle,
            &[report("4", 12, 1), report("5", 3, 0), report("x", 1, 1)],
        );
        fleet.flush().await.unwrap();
        // Another replica reads what this one wrote.
        let other = Fleet::new(store, "cp-b", Duration::from_secs(3600));
        let nodes = other.list().await.unwrap();
        assert_eq!(nodes[0].labels.get("zone").map(String::as_str), Some("a"));
        assert_eq!(
            nodes[0].traffic,
            [
                VersionTraffic {
                    version: 4,
                    requests: 12,
                    errors_5xx: 1
                },
                VersionTraffic {
                    version: 5,
                    requests: 3,
                    errors_5xx: 0
                },
            ]
        );
    }

    #[tokio::test]
    async fn two_live_data_planes_with_one_node_id_are_both_shown_and_flagged() {
        let fleet = fleet().await;
        let a = fleet.connected(&hello("dp", "i1", Some(1)));
        let b = fleet.connected(&hello("dp", "i2", Some(1)));
        assert_eq!(fleet.prior(&a).await, None);
        assert_eq!(fleet.prior(&b).await, None);
        fleet.flush().await.unwrap();
        let nodes = fleet.list().await.unwrap();
        assert_eq!(nodes.len(), 2);
        assert!(nodes.iter().all(|n| n.connected && n.duplicate_node_id));
    }

    #[tokio::test]
    async fn the_live_count_follows_streams_of_every_replica() {
        let store = sqlite_store().await;
        let a = Fleet::new(store.clone(), "cp-a", Duration::from_secs(3600));
        let b = Fleet::new(store, "cp-b", Duration::from_secs(3600));
        let mut live = a.live_data_planes();
        assert_eq!(*live.borrow_and_update(), 0, "not counted yet");
        let one = a.connected(&hello("one", "i1", None));
        let _two = b.connected(&hello("two", "i1", None));
        a.flush().await.unwrap();
        b.flush().await.unwrap();
        a.count_live().await;
        assert!(live.has_changed().unwrap());
        assert_eq!(*live.borrow_and_update(), 2, "b's stream counts on a");
        a.count_live().await;
        assert!(!live.has_changed().unwrap(), "the same count is no change");
        a.disconnected(&one);
        a.flush().await.unwrap();
        a.count_live().await;
        assert_eq!(*live.borrow_and_update(), 1);
    }

    #[tokio::test]
    async fn rows_gone_longer_than_the_retention_window_are_pruned() {
        let store = sqlite_store().await;
        let fleet = Fleet::new(store.clone(), "cp", Duration::from_secs(3600));
        let gone = fleet.connected(&hello("gone", "i1", None));
        fleet.disconnected(&gone);
        let _here = fleet.connected(&hello("here", "i1", None));
        fleet.flush().await.unwrap();
        // Two hours later, with a one-hour window.
        fleet.prune(now_ms() + 2 * 3600 * 1000).await;
        assert!(fleet.list().await.unwrap().is_empty());
        // A replica's heartbeat keeps its open streams, and only those, alive.
        let _here = fleet.connected(&hello("here", "i2", None));
        fleet.flush().await.unwrap();
        let later = now_ms() + 2 * 3600 * 1000;
        store
            .touch_data_planes(&fleet.cp_instance, later)
            .await
            .unwrap();
        fleet.prune(later).await;
        let names: Vec<String> = fleet
            .list()
            .await
            .unwrap()
            .into_iter()
            .map(|n| n.node_id)
            .collect();
        assert_eq!(names, ["here"]);
    }
}
