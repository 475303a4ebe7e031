//! Staged rollouts: with a rollout policy, a new config version reaches the fleet stage by
//! stage instead of at once, and halts by itself when the canary goes bad.
//!
//! Everything lives in the store (`store::rollouts`): the policy, and one row per rollout whose
//! id is the version it rolls out. Every replica runs [`Rollouts::run`], which every
//! [`TICK`] (and at once on a new head) reads the policy, the newest rollout and the fleet, and
//! then: starts a rollout for a head newer than any rolled out (from the last version that
//! completed; a rollout still in progress is aborted, "superseded"), halts one whose canary
//! NACKed or answers 5xx more than the previous version's data planes, and moves one whose stage
//! has baked to the next stage. Every move is a conditional UPDATE on (id, state, stage), so
//! replicas that make the same move at once agree and only one counts it.
//!
//! What each data plane should serve is the [`Plan`] the tick publishes: the config streams
//! (`crate::xds`) send each data plane its target instead of the head. Without a policy the
//! plan is [`Plan::Head`]: every version goes everywhere at once, as without rollouts.
//!
//! A stage's cohort is chosen when the stage starts and recorded with the rollout (see
//! `gateway_proto::schema::rollout_policy`): a hash cohort is the first round(P% of them) in
//! the order of a hash of their node ids, so the same data planes go first every time; each
//! stage keeps the previous stage's cohort and adds to it. A data plane that joins mid-stage is
//! in no cohort, so it stays on the previous version until the last (100%) stage; a canary that
//! restarts keeps its place, since its node id is recorded.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use gateway_proto::schema::{Cohort, RolloutPolicy};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};
use tokio::sync::watch;

use crate::config::{ConfigService, ConfigState, WriteError, load_at};
use crate::fleet::{DataPlane, Fleet};
use crate::metrics::metrics;
use crate::store::{RolloutRecord, StoreError, now_ms};

/// How often every replica looks at the rollouts.
pub const TICK: Duration = Duration::from_millis(250);

/// A rollout's state, as stored and shown.
pub mod state {
    /// Stages still to go.
    pub const IN_PROGRESS: &str = "in_progress";
    /// Every data plane is on its version.
    pub const COMPLETED: &str = "completed";
    /// Halted by itself: every data plane back on the previous version.
    pub const HALTED: &str = "halted";
    /// Aborted by a user, or superseded by a newer version.
    pub const ABORTED: &str = "aborted";
}

/// Which version each data plane should serve.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Plan {
    /// No policy: the head, everywhere.
    #[default]
    Head,
    /// Every data plane on this version (the last completed one, or where a halted or aborted
    /// rollout went back to).
    Pinned(u64),
    /// A rollout in progress: the data planes named are on `version`, the rest on `previous`.
    Staged {
        /// The version rolled out.
        version: u64,
        /// The version the others stay on.
        previous: u64,
        /// Node ids on `version`.
        on_new: BTreeSet<String>,
    },
}

impl Plan {
    /// The version data plane `node_id` should serve, given this replica's `head` (never above
    /// it: a replica behind the store sends what it has, and catches up).
    pub fn target(&self, node_id: &str, head: u64) -> u64 {
        let target = match self {
            Plan::Head => head,
            Plan::Pinned(version) => *version,
            Plan::Staged {
                version,
                previous,
                on_new,
            } => {
                if on_new.contains(node_id) {
                    *version
                } else {
                    *previous
                }
            }
        };
        target.min(head)
    }
}

/// A rollout as the admin API shows it.
#[derive(Clone, Debug, Serialize)]
pub struct RolloutView {
    /// Its id: the version it rolls out.
    pub id: u64,
    /// The version rolled out.
    pub version: u64,
    /// Where it started from, and where halted and aborted rollouts go back to.
    pub previous_version: u64,
    /// `in_progress`, `completed`, `halted` or `aborted`.
    pub state: String,
    /// The stage reached: its index and percent (or label selector).
    pub stage: Value,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// Why it halted or was aborted.
    pub halt_reason: Option<String>,
    /// The policy it follows.
    pub policy: Value,
    /// Connected data planes per version they serve (`"none"`: nothing yet).
    pub data_planes: BTreeMap<String, Vec<String>>,
    /// While in progress: the node ids the stage puts on the version, as recorded when it
    /// started (a data plane that joined since is not among them).
    pub cohort: Option<Vec<String>>,
}

/// Why a rollout action was refused.
#[derive(Debug, thiserror::Error)]
pub enum ActionError {
    /// No rollout with that id.
    #[error("no rollout {0}")]
    NotFound(u64),
    /// The rollout is not in progress.
    #[error("rollout {id} is {state}, not in progress")]
    NotInProgress {
        /// The rollout.
        id: u64,
        /// Its state.
        state: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// The rollouts of this replica's store, and the plan its config streams follow.
pub struct Rollouts {
    config: Arc<ConfigService>,
    fleet: Arc<Fleet>,
    plan: watch::Sender<Plan>,
    /// The last version below the head that a stream needed, read once for every stream.
    older: tokio::sync::Mutex<Option<Arc<ConfigState>>>,
    /// Wakes the driver now (after a policy change or an action).
    poke: tokio::sync::Notify,
}

impl Rollouts {
    /// The rollouts of `config`'s store over `fleet`; drive them with [`Rollouts::run`].
    pub fn new(config: Arc<ConfigService>, fleet: Arc<Fleet>) -> Rollouts {
        Rollouts {
            config,
            fleet,
            plan: watch::Sender::new(Plan::Head),
            older: tokio::sync::Mutex::new(None),
            poke: tokio::sync::Notify::new(),
        }
    }

    /// The config at `version`: the head, or an older version read from the store once and
    /// kept while streams need it.
    pub async fn state_at(&self, version: u64) -> Result<Arc<ConfigState>, WriteError> {
        let head = self.config.current();
        if head.version == version {
            return Ok(head);
        }
        let mut older = self.older.lock().await;
        if let Some(state) = older.as_ref().filter(|s| s.version == version) {
            return Ok(state.clone());
        }
        let state = Arc::new(load_at(self.config.store(), version).await?);
        *older = Some(state.clone());
        Ok(state)
    }

    /// The plan, and each change of it.
    pub fn plan(&self) -> watch::Receiver<Plan> {
        self.plan.subscribe()
    }

    /// Looks at the rollouts every [`TICK`] and on every new head, for as long as the process
    /// runs. A store error leaves the plan as it was until the store answers again.
    pub async fn run(&self) {
        let mut versions = self.config.subscribe();
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                () = self.poke.notified() => {}
                changed = versions.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
            }
            match self.step().await {
                Ok(plan) => {
                    self.plan.send_if_modified(|current| {
                        let changed = *current != plan;
                        *current = plan;
                        changed
                    });
                }
                Err(error) => tracing::debug!(%error, "cannot look at the rollouts"),
            }
        }
    }

    /// One look: starts, halts and moves rollouts as due, and returns the plan.
    pub async fn step(&self) -> Result<Plan, StoreError> {
        let store = self.config.store();
        let Some(policy_row) = store.rollout_policy().await? else {
            return Ok(Plan::Head);
        };
        let head = self.config.current().version;
        let mut latest = store.rollouts(1).await?.pop();
        let planes = self.fleet.list().await?;
        let rolled = latest.as_ref().map_or(0, |r| r.version);
        if head > rolled.max(policy_row.baseline_version) {
            let previous = store
                .last_completed_rollout()
                .await?
                .unwrap_or(0)
                .max(policy_row.baseline_version);
            if let Some(running) = latest.as_ref().filter(|r| r.state == state::IN_PROGRESS) {
                let reason = format!("superseded by version {head}");
                store
                    .move_rollout(
                        running.version,
                        (state::IN_PROGRESS, running.stage),
                        (state::ABORTED, running.stage),
                        Some(&reason),
                        None,
                    )
                    .await?;
            }
            let [base_requests, base_errors_5xx] = traffic_on(&planes, previous, |_| true);
            let first = serde_json::from_str::<RolloutPolicy>(&policy_row.body)
                .ok()
                .map(|policy| cohort(&policy, 0, &planes, &BTreeSet::new()));
            let now = now_ms();
            let record = RolloutRecord {
                version: head,
                previous_version: previous,
                state: state::IN_PROGRESS.to_owned(),
                stage: 0,
                policy: policy_row.body.clone(),
                created_at: now,
                updated_at: now,
                stage_started_at: now,
                halt_reason: None,
                base_requests,
                base_errors_5xx,
                cohort: first,
            };
            if store.insert_rollout(&record).await? {
                metrics().rollouts_started.fetch_add(1, Ordering::Relaxed);
                tracing::info!(version = head, previous, "rollout started");
            }
            latest = store.rollout(head).await?;
        }
        let Some(rollout) = latest else {
            return Ok(Plan::Pinned(policy_row.baseline_version));
        };
        if rollout.state == state::IN_PROGRESS {
            return self.advance(&rollout, &planes).await;
        }
        Ok(settled_plan(&rollout))
    }

    /// Halts `rollout` if its canary went bad, else moves it on once its stage has baked;
    /// returns the plan after that.
    async fn advance(
        &self,
        rollout: &RolloutRecord,
        planes: &[DataPlane],
    ) -> Result<Plan, StoreError> {
        let store = self.config.store();
        let Ok(policy) = serde_json::from_str::<RolloutPolicy>(&rollout.policy) else {
            tracing::warn!(
                id = rollout.version,
                "a rollout's policy cannot be read; halting it"
            );
            self.halt(rollout, "its policy cannot be read").await?;
            return Ok(Plan::Pinned(rollout.previous_version));
        };
        let stage = usize::try_from(rollout.stage).unwrap_or(usize::MAX);
        let on_new = recorded_cohort(rollout, &policy, planes);
        if let Some(reason) = halt_reason(&policy, rollout, planes, &on_new) {
            self.halt(rollout, &reason).await?;
            return Ok(Plan::Pinned(rollout.previous_version));
        }
        let last = policy.last_stage();
        let baked = policy
            .stages
            .get(stage)
            .is_none_or(|s| now_ms() - rollout.stage_started_at >= to_ms(s.bake_s));
        let next = if stage >= last {
            Some(last)
        } else if baked {
            Some(stage + 1)
        } else {
            None
        };
        if let Some(next) = next {
            let to = if next >= last {
                state::COMPLETED
            } else {
                state::IN_PROGRESS
            };
            // The next stage's cohort keeps this one's and adds to it from the fleet now.
            let next_cohort =
                (to == state::IN_PROGRESS).then(|| cohort(&policy, next, planes, &on_new));
            let moved = store
                .move_rollout(
                    rollout.version,
                    (state::IN_PROGRESS, rollout.stage),
                    (to, next as u64),
                    None,
                    next_cohort.as_ref(),
                )
                .await?;
            if !moved {
                // Another replica moved it first (or halted it): follow what it recorded.
                return Ok(match store.rollout(rollout.version).await? {
                    Some(now) if now.state == state::IN_PROGRESS => {
                        staged_plan(&now, recorded_cohort(&now, &policy, planes))
                    }
                    Some(now) => settled_plan(&now),
                    None => Plan::Pinned(rollout.previous_version),
                });
            }
            tracing::info!(
                version = rollout.version,
                stage = next,
                state = to,
                "rollout moved on"
            );
            return Ok(match next_cohort {
                Some(on_new) => staged_plan(rollout, on_new),
                None => {
                    metrics().rollouts_completed.fetch_add(1, Ordering::Relaxed);
                    Plan::Pinned(rollout.version)
                }
            });
        }
        Ok(staged_plan(rollout, on_new))
    }

    async fn halt(&self, rollout: &RolloutRecord, reason: &str) -> Result<(), StoreError> {
        let moved = self
            .config
            .store()
            .move_rollout(
                rollout.version,
                (state::IN_PROGRESS, rollout.stage),
                (state::HALTED, rollout.stage),
                Some(reason),
                None,
            )
            .await?;
        if moved {
            metrics().rollouts_halted.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(version = rollout.version, %reason, "rollout halted; the canary goes back");
        }
        Ok(())
    }

    /// `promote`: skips the rest of the bake, every data plane to the rollout's version.
    pub async fn promote(&self, id: u64) -> Result<RolloutView, ActionError> {
        self.act(id, state::COMPLETED, None).await
    }

    /// `abort`: every data plane back to the previous version.
    pub async fn abort(&self, id: u64) -> Result<RolloutView, ActionError> {
        self.act(id, state::ABORTED, Some("aborted")).await
    }

    async fn act(
        &self,
        id: u64,
        to: &str,
        reason: Option<&str>,
    ) -> Result<RolloutView, ActionError> {
        let store = self.config.store();
        let rollout = store.rollout(id).await?.ok_or(ActionError::NotFound(id))?;
        if rollout.state != state::IN_PROGRESS {
            return Err(ActionError::NotInProgress {
                id,
                state: rollout.state,
            });
        }
        let last = serde_json::from_str::<RolloutPolicy>(&rollout.policy)
            .map_or(rollout.stage, |p| p.last_stage() as u64);
        let to_stage = if to == state::COMPLETED {
            last
        } else {
            rollout.stage
        };
        let moved = store
            .move_rollout(
                id,
                (state::IN_PROGRESS, rollout.stage),
                (to, to_stage),
                reason,
                None,
            )
            .await?;
        if !moved {
            // Moved meanwhile (a stage change, a halt): say what it is now.
            let now = store.rollout(id).await?.ok_or(ActionError::NotFound(id))?;
            if now.state != state::IN_PROGRESS {
                return Err(ActionError::NotInProgress {
                    id,
                    state: now.state,
                });
            }
            return Box::pin(self.act(id, to, reason)).await;
        }
        if to == state::COMPLETED {
            metrics().rollouts_completed.fetch_add(1, Ordering::Relaxed);
        }
        tracing::info!(id, state = to, "rollout {to} by a user");
        self.poke.notify_one();
        self.view(id).await?.ok_or(ActionError::NotFound(id))
    }

    /// Wakes the driver (after a policy change).
    pub fn poke(&self) {
        self.poke.notify_one();
    }

    /// Rollouts, newest first.
    pub async fn list(&self, limit: u32) -> Result<Vec<RolloutView>, StoreError> {
        let rows = self.config.store().rollouts(limit).await?;
        let planes = self.fleet.list().await?;
        Ok(rows.iter().map(|r| view(r, &planes)).collect())
    }

    /// One rollout.
    pub async fn view(&self, id: u64) -> Result<Option<RolloutView>, StoreError> {
        let Some(row) = self.config.store().rollout(id).await? else {
            return Ok(None);
        };
        let planes = self.fleet.list().await?;
        Ok(Some(view(&row, &planes)))
    }
}

fn view(row: &RolloutRecord, planes: &[DataPlane]) -> RolloutView {
    let policy: Value = serde_json::from_str(&row.policy).unwrap_or(Value::Null);
    let stage_doc = policy["stages"]
        .get(usize::try_from(row.stage).unwrap_or(usize::MAX))
        .cloned()
        .unwrap_or(Value::Null);
    let mut stage = serde_json::json!({"index": row.stage});
    for field in ["percent", "labels"] {
        if let Some(value) = stage_doc.get(field) {
            stage[field] = value.clone();
        }
    }
    let mut data_planes: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for plane in planes.iter().filter(|p| p.connected) {
        let version = plane
            .applied_version
            .map_or_else(|| "none".to_owned(), |v| v.to_string());
        data_planes
            .entry(version)
            .or_default()
            .push(plane.node_id.clone());
    }
    RolloutView {
        id: row.version,
        version: row.version,
        previous_version: row.previous_version,
        state: row.state.clone(),
        stage,
        created_at: row.created_at / 1000,
        updated_at: row.updated_at / 1000,
        halt_reason: row.halt_reason.clone(),
        policy,
        data_planes,
        cohort: row
            .cohort
            .as_ref()
            .filter(|_| row.state == state::IN_PROGRESS)
            .map(|cohort| cohort.iter().cloned().collect()),
    }
}

/// The plan of a rollout in progress: `on_new` on its version, the rest on the previous one.
fn staged_plan(rollout: &RolloutRecord, on_new: BTreeSet<String>) -> Plan {
    Plan::Staged {
        version: rollout.version,
        previous: rollout.previous_version,
        on_new,
    }
}

/// The plan of a rollout no longer in progress: its version once completed, else (halted or
/// aborted) the version it started from.
fn settled_plan(rollout: &RolloutRecord) -> Plan {
    if rollout.state == state::COMPLETED {
        Plan::Pinned(rollout.version)
    } else {
        Plan::Pinned(rollout.previous_version)
    }
}

/// The cohort of `rollout`'s stage as recorded when it started; for a rollout stored before
/// cohorts were recorded, chosen from the fleet now.
fn recorded_cohort(
    rollout: &RolloutRecord,
    policy: &RolloutPolicy,
    planes: &[DataPlane],
) -> BTreeSet<String> {
    rollout.cohort.clone().unwrap_or_else(|| {
        let stage = usize::try_from(rollout.stage).unwrap_or(usize::MAX);
        cohort(policy, stage, planes, &BTreeSet::new())
    })
}

/// The node ids on the new version when `stage` starts: `kept` (the previous stage's cohort,
/// which a stage never shrinks) and the connected data planes the stage adds.
fn cohort(
    policy: &RolloutPolicy,
    stage: usize,
    planes: &[DataPlane],
    kept: &BTreeSet<String>,
) -> BTreeSet<String> {
    let mut chosen = kept.clone();
    let live = planes.iter().filter(|p| p.connected);
    if stage >= policy.last_stage() {
        chosen.extend(live.map(|p| p.node_id.clone()));
        return chosen;
    }
    match policy.cohort {
        Cohort::Hash => {
            let percent = policy
                .stages
                .get(stage)
                .and_then(|s| s.percent)
                .map_or(100, u64::from);
            let mut candidates: Vec<&str> = live
                .map(|p| p.node_id.as_str())
                .filter(|id| !kept.contains(*id))
                .collect();
            candidates.sort_by_key(|id| (stable_hash(id), *id));
            candidates.dedup();
            // Of the fleet (the connected data planes and the cohort so far), round(percent%),
            // at least one.
            let total = (candidates.len() + kept.len()) as u64;
            let take = usize::try_from(((percent * total + 50) / 100).max(1)).unwrap_or(usize::MAX);
            let missing = take.saturating_sub(chosen.len());
            chosen.extend(candidates.into_iter().take(missing).map(str::to_owned));
        }
        Cohort::Labels => {
            let selectors: Vec<&BTreeMap<String, String>> = policy.stages[..=stage]
                .iter()
                .filter_map(|s| s.labels.as_ref())
                .collect();
            chosen.extend(
                live.filter(|p| {
                    selectors
                        .iter()
                        .any(|selector| selector.iter().all(|(k, v)| p.labels.get(k) == Some(v)))
                })
                .map(|p| p.node_id.clone()),
            );
        }
    }
    chosen
}

/// The first 8 bytes of SHA-256(node id): an order of the fleet that does not change between
/// rollouts or processes.
fn stable_hash(node_id: &str) -> u64 {
    let digest = Sha256::digest(node_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// Requests and 5xx answers on `version` reported by the data planes `which` selects.
fn traffic_on(planes: &[DataPlane], version: u64, which: impl Fn(&DataPlane) -> bool) -> [u64; 2] {
    planes
        .iter()
        .filter(|p| which(p))
        .flat_map(|p| p.traffic.iter().filter(|t| t.version == version))
        .fold([0, 0], |[r, e], t| {
            [r.saturating_add(t.requests), e.saturating_add(t.errors_5xx)]
        })
}

/// Why the rollout must halt, if it must: a connected data plane rejected its version, or the
/// canary's 5xx rate is above the previous version's (since the rollout began) by more than
/// the policy allows, once the canary served `min_requests`.
fn halt_reason(
    policy: &RolloutPolicy,
    rollout: &RolloutRecord,
    planes: &[DataPlane],
    on_new: &BTreeSet<String>,
) -> Option<String> {
    if policy.halt_on.nack
        && let Some(plane) = planes.iter().find(|p| {
            p.connected
                && p.last_rejected
                    .as_ref()
                    .is_some_and(|r| r.version == rollout.version)
        })
    {
        let error = plane
            .last_rejected
            .as_ref()
            .map(|r| r.error.as_str())
            .unwrap_or_default();
        return Some(format!(
            "data plane {} rejected version {}: {error}",
            plane.node_id, rollout.version
        ));
    }
    let increase = policy.halt_on.error_rate_increase?;
    let [requests, errors] = traffic_on(planes, rollout.version, |p| on_new.contains(&p.node_id));
    if requests < policy.halt_on.min_requests {
        return None;
    }
    let [all_requests, all_errors] = traffic_on(planes, rollout.previous_version, |_| true);
    let before_requests = all_requests.saturating_sub(rollout.base_requests);
    let before_errors = all_errors.saturating_sub(rollout.base_errors_5xx);
    let rate = |errors: u64, requests: u64| {
        if requests == 0 {
            0.0
        } else {
            errors as f64 / requests as f64
        }
    };
    let canary = rate(errors, requests);
    let previous = rate(before_errors, before_requests);
    (canary - previous > increase).then(|| {
        format!(
            "the canary's 5xx rate {canary:.3} over {requests} requests exceeds the previous \
             version's {previous:.3} over {before_requests} by more than {increase}"
        )
    })
}

fn to_ms(seconds: u64) -> i64 {
    i64::try_from(seconds.saturating_mul(1000)).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{IfMatch, WriteOp};
    use crate::fleet::{Hello, VersionTraffic};
    use crate::store::tests::sqlite_store;
    use crate::store::{CommitMeta, Store};
    use gateway_proto::{Kind, ResourceKey};
    use serde_json::json;

    fn plane(node: &str, traffic: &[(u64, u64, u64)]) -> DataPlane {
        DataPlane {
            node_id: node.to_owned(),
            instance_id: "i".to_owned(),
            address: None,
            build_version: "0".to_owned(),
            control_plane_id: "cp".to_owned(),
            connected: true,
            connected_at: 0,
            last_seen: 0,
            applied_version: None,
            config_source: None,
            last_rejected: None,
            duplicate_node_id: false,
            labels: BTreeMap::from([("zone".to_owned(), node[..1].to_owned())]),
            traffic: traffic
                .iter()
                .map(|&(version, requests, errors_5xx)| VersionTraffic {
                    version,
                    requests,
                    errors_5xx,
                })
                .collect(),
        }
    }

    fn policy(document: Value) -> RolloutPolicy {
        gateway_proto::schema::validate_rollout_policy(&document).unwrap()
    }

    #[test]
    fn hash_cohorts_take_a_stable_rounded_share_and_label_cohorts_their_selectors() {
        let planes: Vec<DataPlane> = ["a1", "a2", "b1", "b2", "c1", "c2"]
            .iter()
            .map(|n| plane(n, &[]))
            .collect();
        let none = BTreeSet::new();
        let hash = policy(json!({"stages": [{"percent": 34}, {"percent": 100}]}));
        let first = cohort(&hash, 0, &planes, &none);
        assert_eq!(first.len(), 2);
        let mut reversed = planes.clone();
        reversed.reverse();
        assert_eq!(
            cohort(&hash, 0, &reversed, &none),
            first,
            "the order of the fleet does not matter"
        );
        assert_eq!(cohort(&hash, 1, &planes, &none).len(), 6);
        // A stage keeps the previous stage's cohort, chosen from a smaller fleet, and adds to it.
        let three = policy(json!({"stages": [{"percent": 20}, {"percent": 50}, {"percent": 100}]}));
        let early = cohort(&three, 0, &planes[..3], &none);
        let later = cohort(&three, 1, &planes, &early);
        assert_eq!((early.len(), later.len()), (1, 3));
        assert!(later.is_superset(&early));
        let labels = policy(json!({"cohort": {"by": "labels"}, "stages": [
            {"labels": {"zone": "a"}}, {"labels": {"zone": "b"}}, {"percent": 100}]}));
        let names = |set: BTreeSet<String>| set.into_iter().collect::<Vec<_>>();
        assert_eq!(names(cohort(&labels, 0, &planes, &none)), ["a1", "a2"]);
        assert_eq!(
            names(cohort(&labels, 1, &planes, &none)),
            ["a1", "a2", "b1", "b2"]
        );
    }

    #[test]
    fn a_canary_answering_more_5xx_than_the_rest_halts_once_it_served_enough() {
        let policy = policy(json!({"stages": [{"percent": 50}, {"percent": 100}],
            "halt_on": {"error_rate_increase": 0.1, "min_requests": 10}}));
        let rollout = RolloutRecord {
            version: 2,
            previous_version: 1,
            state: state::IN_PROGRESS.to_owned(),
            stage: 0,
            policy: String::new(),
            created_at: 0,
            updated_at: 0,
            stage_started_at: 0,
            halt_reason: None,
            base_requests: 100,
            base_errors_5xx: 1,
            cohort: None,
        };
        let canary = BTreeSet::from(["a1".to_owned()]);
        let few = [
            plane("a1", &[(1, 50, 0), (2, 9, 9)]),
            plane("b1", &[(1, 150, 1)]),
        ];
        assert_eq!(halt_reason(&policy, &rollout, &few, &canary), None);
        let bad = [
            plane("a1", &[(1, 50, 0), (2, 20, 5)]),
            plane("b1", &[(1, 150, 1)]),
        ];
        assert!(halt_reason(&policy, &rollout, &bad, &canary).is_some());
        let fine = [plane("a1", &[(2, 20, 1)]), plane("b1", &[(1, 150, 1)])];
        assert_eq!(halt_reason(&policy, &rollout, &fine, &canary), None);
        let mut nacked = fine.clone();
        nacked[1].last_rejected = Some(crate::fleet::Rejection {
            version: 2,
            error: "disabled plugin".to_owned(),
            at: 0,
        });
        assert!(
            halt_reason(&policy, &rollout, &nacked, &canary)
                .is_some_and(|r| r.contains("b1 rejected version 2"))
        );
    }

    /// A replica's driver over `store`, with a fleet view of its own.
    async fn driver(store: Store) -> (Arc<ConfigService>, Arc<Fleet>, Rollouts) {
        let config = Arc::new(ConfigService::load(store.clone()).await.unwrap());
        let fleet = Arc::new(Fleet::new(store, "cp", Duration::from_secs(3600)));
        let rollouts = Rollouts::new(config.clone(), fleet.clone());
        (config, fleet, rollouts)
    }

    /// Writes one upstream (a new version each time `port` changes); the version.
    async fn write(config: &ConfigService, port: u16) -> u64 {
        let op = WriteOp::Put {
            key: ResourceKey::new(Kind::Upstreams, "u".to_owned()),
            document: json!({"nodes": [{"host": "127.0.0.1", "port": port}]}),
            if_match: None::<IfMatch>,
        };
        let meta = CommitMeta {
            author: "test".into(),
            message: None,
        };
        config.write(op, &meta, false).await.unwrap().version
    }

    /// Opens a stream for `node` (process `instance`) and writes the fleet view.
    async fn join(fleet: &Fleet, node: &str, instance: &str) -> crate::fleet::StreamHandle {
        let handle = fleet.connected(&Hello {
            node_id: node.to_owned(),
            instance_id: instance.to_owned(),
            build_version: "0".to_owned(),
            address: None,
            serving: None,
            config_source: None,
            labels: BTreeMap::new(),
        });
        fleet.flush().await.unwrap();
        handle
    }

    fn staged(plan: &Plan) -> (u64, u64, BTreeSet<String>) {
        match plan {
            Plan::Staged {
                version,
                previous,
                on_new,
            } => (*version, *previous, on_new.clone()),
            other => panic!("not staged: {other:?}"),
        }
    }

    /// A stage's cohort is fixed when it starts: data planes that join mid-stage stay on the
    /// previous version, a canary that restarts keeps its place, and only the last stage
    /// (here by promote) takes everyone. Then a write during a rollout supersedes it.
    async fn a_stage_keeps_its_cohort_and_a_new_write_supersedes_it(store: Store) {
        let (config, fleet, rollouts) = driver(store.clone()).await;
        let base = write(&config, 1).await;
        for i in 0..4 {
            join(&fleet, &format!("dp-{i}"), "first").await;
        }
        let policy = json!({"stages": [{"percent": 50, "bake_s": 3600}, {"percent": 100}]});
        store
            .put_rollout_policy(&policy.to_string(), base)
            .await
            .unwrap();
        assert_eq!(rollouts.step().await.unwrap(), Plan::Pinned(base));

        let next = write(&config, 2).await;
        let plan = rollouts.step().await.unwrap();
        let (version, previous, canary) = staged(&plan);
        assert_eq!((version, previous, canary.len()), (next, base, 2));
        let stored = store.rollout(next).await.unwrap().unwrap();
        assert_eq!(
            stored.cohort.as_ref(),
            Some(&canary),
            "recorded when it started"
        );

        // Four more join: 50% of eight would be four, but the stage keeps its two.
        for i in 4..8 {
            join(&fleet, &format!("dp-{i}"), "first").await;
        }
        let canary_node = canary.first().unwrap().clone();
        // A canary restarts: a new process under its node id.
        let old = join(&fleet, &canary_node, "first").await;
        fleet.disconnected(&old);
        join(&fleet, &canary_node, "second").await;
        let plan = rollouts.step().await.unwrap();
        assert_eq!(staged(&plan).2, canary);
        assert_eq!(plan.target(&canary_node, next), next);
        for i in 4..8 {
            assert_eq!(
                plan.target(&format!("dp-{i}"), next),
                base,
                "dp-{i} joined mid-stage"
            );
        }
        let view = rollouts.view(next).await.unwrap().unwrap();
        assert_eq!(view.cohort, Some(canary.iter().cloned().collect()));

        // The last stage is everyone's, newcomers included.
        rollouts.promote(next).await.unwrap();
        let plan = rollouts.step().await.unwrap();
        assert_eq!(plan, Plan::Pinned(next));
        assert_eq!(plan.target("dp-7", next), next);

        // A write during a rollout: the running one is aborted, the new one starts from the
        // last completed version.
        let third = write(&config, 3).await;
        assert_eq!(staged(&rollouts.step().await.unwrap()).0, third);
        let fourth = write(&config, 4).await;
        let (version, previous, _) = staged(&rollouts.step().await.unwrap());
        assert_eq!((version, previous), (fourth, next));
        let superseded = store.rollout(third).await.unwrap().unwrap();
        assert_eq!(superseded.state, state::ABORTED);
        assert_eq!(
            superseded.halt_reason,
            Some(format!("superseded by version {fourth}"))
        );
        assert_eq!(
            store
                .rollout(fourth)
                .await
                .unwrap()
                .unwrap()
                .previous_version,
            next
        );
        assert!(matches!(
            rollouts.promote(third).await,
            Err(ActionError::NotInProgress { .. })
        ));
        // Aborted: everyone back to the last completed version.
        rollouts.abort(fourth).await.unwrap();
        assert_eq!(rollouts.step().await.unwrap(), Plan::Pinned(next));
    }

    #[tokio::test]
    async fn a_stage_keeps_its_cohort_on_sqlite() {
        a_stage_keeps_its_cohort_and_a_new_write_supersedes_it(sqlite_store().await).await;
    }

    #[sqlx::test(migrations = false)]
    async fn a_stage_keeps_its_cohort_on_postgres(pool: sqlx::PgPool) {
        let store = crate::store::tests::postgres_store(pool).await;
        a_stage_keeps_its_cohort_and_a_new_write_supersedes_it(store.clone()).await;
        store.close().await;
    }

    #[test]
    fn a_plan_sends_each_data_plane_its_cohorts_version_never_above_the_head() {
        let staged = Plan::Staged {
            version: 5,
            previous: 3,
            on_new: BTreeSet::from(["a".to_owned()]),
        };
        assert_eq!(staged.target("a", 5), 5);
        assert_eq!(staged.target("b", 5), 3);
        assert_eq!(staged.target("a", 4), 4);
        assert_eq!(Plan::Head.target("b", 7), 7);
        assert_eq!(Plan::Pinned(3).target("b", 7), 3);
    }
}
