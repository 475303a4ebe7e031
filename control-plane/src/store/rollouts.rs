//! Staged rollouts in the store: the one policy row and one row per rollout, so that every
//! replica drives and answers for the same rollouts (see `crate::rollout`).

use std::collections::BTreeSet;

use sqlx::Row;
use sqlx::any::AnyRow;

use super::{Result, Store, StoreError, now_ms, to_i64, to_u64};

/// The rollout policy as stored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyRecord {
    /// The policy document (JSON text), validated when written.
    pub body: String,
    /// The head when the policy was first set: served until a rollout completes.
    pub baseline_version: u64,
    /// When it was last written, unix ms.
    pub updated_at: i64,
}

/// One rollout's row.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RolloutRecord {
    /// The config version rolled out; also the rollout's id.
    pub version: u64,
    /// The last version that completed before it: where halted and aborted rollouts go back.
    pub previous_version: u64,
    /// `in_progress`, `completed`, `halted` or `aborted`.
    pub state: String,
    /// The stage index reached.
    pub stage: u64,
    /// The policy as it stood at the start (JSON text).
    pub policy: String,
    /// Unix ms.
    pub created_at: i64,
    /// Unix ms.
    pub updated_at: i64,
    /// When the current stage started, unix ms.
    pub stage_started_at: i64,
    /// Why it halted or was aborted.
    pub halt_reason: Option<String>,
    /// The fleet's requests on `previous_version` when it started.
    pub base_requests: u64,
    /// The fleet's 5xx answers on `previous_version` when it started.
    pub base_errors_5xx: u64,
    /// The node ids on `version` at the current stage, recorded when the stage started; `None`
    /// for a rollout stored before cohorts were recorded.
    pub cohort: Option<BTreeSet<String>>,
}

const COLUMNS: &str = "id, previous_version, state, stage, policy, created_at, updated_at, \
     stage_started_at, halt_reason, base_requests, base_errors_5xx, cohort";

impl Store {
    /// The rollout policy, if one is set.
    pub async fn rollout_policy(&self) -> Result<Option<PolicyRecord>> {
        let row = sqlx::query(
            "SELECT body, baseline_version, updated_at FROM rollout_policy WHERE id = 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        row.map(|row| {
            Ok(PolicyRecord {
                body: row.try_get("body")?,
                baseline_version: to_u64(row.try_get("baseline_version")?, "baseline version")?,
                updated_at: row.try_get("updated_at")?,
            })
        })
        .transpose()
    }

    /// Sets the policy. `head` becomes the baseline only when no policy was set: replacing a
    /// policy keeps what the fleet is on.
    pub async fn put_rollout_policy(&self, body: &str, head: u64) -> Result<()> {
        sqlx::query(
            "INSERT INTO rollout_policy (id, body, baseline_version, updated_at) \
             VALUES (1, $1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
        )
        .bind(body)
        .bind(to_i64(head)?)
        .bind(now_ms())
        .execute(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        Ok(())
    }

    /// Removes the policy; whether there was one.
    pub async fn delete_rollout_policy(&self) -> Result<bool> {
        let done = sqlx::query("DELETE FROM rollout_policy WHERE id = 1")
            .execute(&self.pool)
            .await
            .map_err(StoreError::classify)?;
        Ok(done.rows_affected() > 0)
    }

    /// Creates a rollout unless one of its version exists; whether this call created it.
    pub async fn insert_rollout(&self, record: &RolloutRecord) -> Result<bool> {
        let done = sqlx::query(&format!(
            "INSERT INTO rollouts ({COLUMNS}) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12) \
             ON CONFLICT (id) DO NOTHING"
        ))
        .bind(to_i64(record.version)?)
        .bind(to_i64(record.previous_version)?)
        .bind(&record.state)
        .bind(to_i64(record.stage)?)
        .bind(&record.policy)
        .bind(record.created_at)
        .bind(record.updated_at)
        .bind(record.stage_started_at)
        .bind(record.halt_reason.clone())
        .bind(to_i64(record.base_requests)?)
        .bind(to_i64(record.base_errors_5xx)?)
        .bind(record.cohort.as_ref().map(encode_cohort))
        .execute(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        Ok(done.rows_affected() > 0)
    }

    /// Rollouts, newest first, at most `limit`.
    pub async fn rollouts(&self, limit: u32) -> Result<Vec<RolloutRecord>> {
        let rows = sqlx::query(&format!(
            "SELECT {COLUMNS} FROM rollouts ORDER BY id DESC LIMIT $1"
        ))
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        rows.iter().map(decode).collect()
    }

    /// One rollout.
    pub async fn rollout(&self, id: u64) -> Result<Option<RolloutRecord>> {
        let row = sqlx::query(&format!("SELECT {COLUMNS} FROM rollouts WHERE id = $1"))
            .bind(to_i64(id)?)
            .fetch_optional(&self.pool)
            .await
            .map_err(StoreError::classify)?;
        row.as_ref().map(decode).transpose()
    }

    /// The newest completed rollout's version.
    pub async fn last_completed_rollout(&self) -> Result<Option<u64>> {
        let row = sqlx::query(
            "SELECT id FROM rollouts WHERE state = 'completed' ORDER BY id DESC LIMIT 1",
        )
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        row.map(|row| to_u64(row.try_get("id")?, "rollout id"))
            .transpose()
    }

    /// Moves rollout `id` from (`state`, `stage`) to (`to_state`, `to_stage`), with a reason
    /// for a halt or an abort, and the new stage's cohort when it starts one. Only if it still
    /// is where the caller saw it: of several replicas making the same move, one succeeds, and
    /// its cohort is the one recorded. Whether this call moved it.
    pub async fn move_rollout(
        &self,
        id: u64,
        (state, stage): (&str, u64),
        (to_state, to_stage): (&str, u64),
        reason: Option<&str>,
        cohort: Option<&BTreeSet<String>>,
    ) -> Result<bool> {
        let now = now_ms();
        let done = sqlx::query(
            "UPDATE rollouts SET state = $1, stage = $2, updated_at = $3, \
               stage_started_at = CASE WHEN stage = $2 THEN stage_started_at ELSE $3 END, \
               halt_reason = COALESCE($4, halt_reason), cohort = COALESCE($8, cohort) \
             WHERE id = $5 AND state = $6 AND stage = $7",
        )
        .bind(to_state)
        .bind(to_i64(to_stage)?)
        .bind(now)
        .bind(reason.map(str::to_owned))
        .bind(to_i64(id)?)
        .bind(state)
        .bind(to_i64(stage)?)
        .bind(cohort.map(encode_cohort))
        .execute(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        Ok(done.rows_affected() > 0)
    }
}

fn decode(row: &AnyRow) -> Result<RolloutRecord> {
    let unsigned = |column: &str| -> Result<u64> { to_u64(row.try_get(column)?, column) };
    Ok(RolloutRecord {
        version: unsigned("id")?,
        previous_version: unsigned("previous_version")?,
        state: row.try_get("state")?,
        stage: unsigned("stage")?,
        policy: row.try_get("policy")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
        stage_started_at: row.try_get("stage_started_at")?,
        halt_reason: row.try_get("halt_reason")?,
        base_requests: unsigned("base_requests")?,
        base_errors_5xx: unsigned("base_errors_5xx")?,
        cohort: row
            .try_get::<Option<String>, _>("cohort")?
            .map(|text| {
                serde_json::from_str(&text)
                    .map_err(|e| StoreError::Corrupt(format!("a rollout's cohort: {e}")))
            })
            .transpose()?,
    })
}

/// A cohort as stored: a JSON array of node ids, sorted.
fn encode_cohort(cohort: &BTreeSet<String>) -> String {
    serde_json::Value::from(cohort.iter().map(String::as_str).collect::<Vec<_>>()).to_string()
}
