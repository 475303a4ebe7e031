//! The data-plane fleet as every replica sees it: one row per data-plane process, written by
//! the replica that holds its config stream (see `crate::fleet`).

use std::collections::BTreeMap;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError, to_i64, to_u64};

/// A version a data plane refused, and why.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RejectionRecord {
    /// The refused version.
    pub version: u64,
    /// The data plane's reason.
    pub error: String,
    /// When, unix ms.
    pub at: i64,
}

/// One data-plane process's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DataPlaneRecord {
    /// Its node id (`--node-id`).
    pub node_id: String,
    /// Random per process start.
    pub instance_id: String,
    /// The config stream this row describes; an older stream cannot overwrite a newer one.
    pub stream_id: String,
    /// The address its stream comes from.
    pub address: Option<String>,
    /// Its build version.
    pub build_version: String,
    /// The replica holding (or last holding) its stream, as the fleet view names it.
    pub control_plane_id: String,
    /// That replica's process, which refreshes `last_seen` while the stream is open.
    pub cp_instance: String,
    /// Whether its stream was open when last written.
    pub connected: bool,
    /// When its stream opened, unix ms.
    pub connected_at: i64,
    /// When it was last known alive, unix ms.
    pub last_seen: i64,
    /// The version it serves.
    pub applied_version: Option<u64>,
    /// Where that config came from: `stream` or `cache`.
    pub config_source: Option<String>,
    /// The last version it refused.
    pub rejected: Option<RejectionRecord>,
    /// Its `--labels`.
    pub labels: BTreeMap<String, String>,
    /// Its latest traffic report: per config version, `[requests, errors_5xx]` served since
    /// the process started.
    pub traffic: BTreeMap<u64, [u64; 2]>,
}

const COLUMNS: &str = "node_id, instance_id, stream_id, address, build_version, control_plane_id, \
     cp_instance, connected, connected_at, last_seen, applied_version, config_source, \
     rejected_version, rejected_error, rejected_at, labels, traffic";

impl Store {
    /// Writes a data plane's row. A newer stream of the same process is never overwritten by
    /// an older one (a replica that lost the stream but has not noticed yet). A rejection is
    /// never erased: a process that reconnects is first written knowing none, and the version
    /// it rejected must still not be sent to it again.
    pub async fn put_data_plane(&self, record: &DataPlaneRecord) -> Result<()> {
        let rejected = record.rejected.as_ref();
        sqlx::query(&format!(
            "INSERT INTO data_planes ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17) \
             ON CONFLICT (node_id, instance_id) DO UPDATE SET \
               stream_id = excluded.stream_id, address = excluded.address, \
               build_version = excluded.build_version, \
               control_plane_id = excluded.control_plane_id, cp_instance = excluded.cp_instance, \
               connected = excluded.connected, connected_at = excluded.connected_at, \
               last_seen = excluded.last_seen, applied_version = excluded.applied_version, \
               config_source = excluded.config_source, \
               rejected_version = COALESCE(excluded.rejected_version, data_planes.rejected_version), \
               rejected_error = COALESCE(excluded.rejected_error, data_planes.rejected_error), \
               rejected_at = COALESCE(excluded.rejected_at, data_planes.rejected_at), \
               labels = excluded.labels, traffic = excluded.traffic \
             WHERE data_planes.stream_id = excluded.stream_id \
                OR data_planes.connected_at <= excluded.connected_at"
        ))
        .bind(&record.node_id)
        .bind(&record.instance_id)
        .bind(&record.stream_id)
        .bind(record.address.clone())
        .bind(&record.build_version)
        .bind(&record.control_plane_id)
        .bind(&record.cp_instance)
        .bind(i64::from(record.connected))
        .bind(record.connected_at)
        .bind(record.last_seen)
        .bind(record.applied_version.map(to_i64).transpose()?)
        .bind(record.config_source.clone())
        .bind(rejected.map(|r| to_i64(r.version)).transpose()?)
        .bind(rejected.map(|r| r.error.clone()))
        .bind(rejected.map(|r| r.at))
        .bind(json_text(&record.labels)?)
        .bind(json_text(&record.traffic)?)
        .execute(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        Ok(())
    }

    /// Every row, by node id then instance.
    pub async fn data_planes(&self) -> Result<Vec<DataPlaneRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM data_planes ORDER BY node_id, instance_id"
        ))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        rows.iter().map(decode_data_plane).collect()
    }

    /// The rows of every process that used `node_id`.
    pub async fn data_planes_named(&self, node_id: &str) -> Result<Vec<DataPlaneRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM data_planes WHERE node_id = $1 ORDER BY instance_id"
        ))
        .bind(node_id)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        rows.iter().map(decode_data_plane).collect()
    }

    /// Removes one process's row.
    pub async fn delete_data_plane(&self, node_id: &str, instance_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM data_planes WHERE node_id = $1 AND instance_id = $2")
            .bind(node_id)
            .bind(instance_id)
            .execute(&self.pool)
            .await
            .map_err(StoreError::classify)?;
        Ok(())
    }

    /// Marks every open stream of replica process `cp_instance` alive at `now` (unix ms).
    pub async fn touch_data_planes(&self, cp_instance: &str, now: i64) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE data_planes SET last_seen = $1 WHERE cp_instance = $2 AND connected = 1",
        )
        .bind(now)
        .bind(cp_instance)
        .execute(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        Ok(done.rows_affected())
    }

    /// How many rows describe an open stream refreshed after `seen_after` (unix ms): the live
    /// data planes, as `crate::fleet` counts them.
    pub async fn count_live_data_planes(&self, seen_after: i64) -> Result<u64> {
        let row = sqlx::query(
            "SELECT COUNT(*) AS live FROM data_planes WHERE connected = 1 AND last_seen > $1",
        )
        .bind(seen_after)
        .fetch_one(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        let live: i64 = row.try_get("live").map_err(StoreError::classify)?;
        to_u64(live, "count of live data planes")
    }

    /// Removes the rows of data planes not seen since `seen_before` (unix ms); how many.
    pub async fn prune_data_planes(&self, seen_before: i64) -> Result<u64> {
        let done = sqlx::query("DELETE FROM data_planes WHERE last_seen < $1")
            .bind(seen_before)
            .execute(&self.pool)
            .await
            .map_err(StoreError::classify)?;
        Ok(done.rows_affected())
    }
}

fn decode_data_plane(row: &AnyRow) -> Result<DataPlaneRecord> {
    let optional_version = |column: &str| -> Result<Option<u64>> {
        row.try_get::<Option<i64>, _>(column)?
            .map(|v| to_u64(v, column))
            .transpose()
    };
    let rejected = match optional_version("rejected_version")? {
        Some(version) => Some(RejectionRecord {
            version,
            error: row
                .try_get::<Option<String>, _>("rejected_error")?
                .unwrap_or_default(),
            at: row
                .try_get::<Option<i64>, _>("rejected_at")?
                .unwrap_or_default(),
        }),
        None => None,
    };
    Ok(DataPlaneRecord {
        node_id: row.try_get("node_id")?,
        instance_id: row.try_get("instance_id")?,
        stream_id: row.try_get("stream_id")?,
        address: row.try_get("address")?,
        build_version: row.try_get("build_version")?,
        control_plane_id: row.try_get("control_plane_id")?,
        cp_instance: row.try_get("cp_instance")?,
        connected: row.try_get::<i64, _>("connected")? != 0,
        connected_at: row.try_get("connected_at")?,
        last_seen: row.try_get("last_seen")?,
        applied_version: optional_version("applied_version")?,
        config_source: row.try_get("config_source")?,
        rejected,
        labels: json_column(row, "labels")?,
        traffic: json_column(row, "traffic")?,
    })
}

/// A map as its JSON text; none when empty (a row from before the column reads the same).
fn json_text<K: serde::Serialize, V: serde::Serialize>(
    map: &BTreeMap<K, V>,
) -> Result<Option<String>> {
    if map.is_empty() {
        return Ok(None);
    }
    serde_json::to_string(map)
        .map(Some)
        .map_err(|e| StoreError::Corrupt(format!("cannot encode a fleet row: {e}")))
}

/// A JSON map column; NULL reads as empty.
fn json_column<T: serde::de::DeserializeOwned + Default>(row: &AnyRow, column: &str) -> Result<T> {
    match row.try_get::<Option<String>, _>(column)? {
        None => Ok(T::default()),
        Some(text) => serde_json::from_str(&text)
            .map_err(|e| StoreError::Corrupt(format!("data_planes.{column}: {e}"))),
    }
}
