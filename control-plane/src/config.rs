//! The config service: the current config held in memory, every write validated and committed
//! under one lock, and each new version published to the config stream.
//!
//! INVARIANT: the in-memory state equals the store's head. Every write goes through
//! [`ConfigService::write`], which validates against the in-memory state, commits to the store
//! based on that state's version, and only then swaps in the new state; a failed commit leaves
//! both unchanged.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use bytes::Bytes;
use gateway_proto::model::{Parsed, SERVER_FIELDS, credential_conflicts, is_valid_id};
use gateway_proto::snapshot::dangling_references;
use gateway_proto::{Kind, ResourceKey, Violation, check_new_document, pb, validate_resource};
use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;
use tokio::sync::{Mutex, watch};

use crate::metrics::metrics;
use crate::secrets;
use crate::store::{Change, ChangeOp, CommitMeta, Store, StoreError, StoredResource, now_ms};

/// One resource of the current config.
#[derive(Clone, Debug)]
pub struct Entry {
    /// The document as written (without server-managed fields).
    pub body: Value,
    /// Its validated, typed form.
    pub parsed: Parsed,
    /// The version in which it last changed.
    pub revision: u64,
    /// First created, unix ms.
    pub created_at: i64,
    /// Last changed, unix ms.
    pub updated_at: i64,
    /// The document as the config stream carries it, encoded once on first use and shared
    /// by every version and every stream that sends this revision.
    encoded: OnceLock<Bytes>,
}

impl Entry {
    /// A resource of the current config.
    pub fn new(
        body: Value,
        parsed: Parsed,
        revision: u64,
        created_at: i64,
        updated_at: i64,
    ) -> Entry {
        Entry {
            body,
            parsed,
            revision,
            created_at,
            updated_at,
            encoded: OnceLock::new(),
        }
    }

    /// This resource as a config-stream message.
    pub fn wire(&self, key: &ResourceKey) -> pb::Resource {
        pb::Resource {
            kind: key.kind.as_str().to_owned(),
            id: key.id.clone(),
            revision: self.revision,
            body: self
                .encoded
                .get_or_init(|| Bytes::from(self.body.to_string()))
                .clone(),
        }
    }
}

/// The whole config at one version, immutable once published.
#[derive(Debug, Default)]
pub struct ConfigState {
    /// The config version.
    pub version: u64,
    /// Every resource.
    pub resources: BTreeMap<ResourceKey, Arc<Entry>>,
    /// The resources encoded for the config stream, built once per version on first use.
    wire: OnceLock<Arc<Vec<pb::Resource>>>,
}

impl ConfigState {
    /// The resources of one kind, in id order.
    pub fn of_kind(&self, kind: Kind) -> impl Iterator<Item = (&ResourceKey, &Arc<Entry>)> {
        let start = ResourceKey::new(kind, String::new());
        self.resources
            .range(start..)
            .take_while(move |(key, _)| key.kind == kind)
    }

    /// The resources as config-stream messages (shared by every stream at this version).
    pub fn wire_resources(&self) -> Arc<Vec<pb::Resource>> {
        self.wire
            .get_or_init(|| {
                Arc::new(
                    self.resources
                        .iter()
                        .map(|(key, entry)| entry.wire(key))
                        .collect(),
                )
            })
            .clone()
    }
}

/// The keys each recent version changed, so that what a data plane needs to go from one
/// version to another costs what changed, not a read of the store. Versions older than what
/// it holds are answered by the store.
#[derive(Debug, Default)]
struct ChangeHistory {
    /// Contiguous spans `(from, to]`, oldest first.
    spans: VecDeque<ChangeSpan>,
    /// Keys held over all spans.
    keys: usize,
}

#[derive(Debug)]
struct ChangeSpan {
    from: u64,
    to: u64,
    keys: Vec<ResourceKey>,
}

/// Bounds of [`ChangeHistory`]: enough for every data plane that is minutes behind.
const HISTORY_MAX_SPANS: usize = 4096;
const HISTORY_MAX_KEYS: usize = 200_000;

impl ChangeHistory {
    fn record(&mut self, from: u64, to: u64, keys: Vec<ResourceKey>) {
        if self.spans.back().is_some_and(|last| last.to != from) {
            // Not contiguous with what is held (cannot happen: versions only grow by commits
            // and catch-ups from the head); start over rather than answer wrongly.
            self.spans.clear();
            self.keys = 0;
        }
        self.keys += keys.len();
        self.spans.push_back(ChangeSpan { from, to, keys });
        while self.spans.len() > HISTORY_MAX_SPANS || self.keys > HISTORY_MAX_KEYS {
            match self.spans.pop_front() {
                Some(span) => self.keys -= span.keys.len(),
                None => break,
            }
        }
    }

    /// The keys changed in `(from, to]`, if the spans held cover exactly that range.
    fn changed(&self, from: u64, to: u64) -> Option<BTreeSet<ResourceKey>> {
        let mut keys = BTreeSet::new();
        if from == to {
            return Some(keys);
        }
        let start = self.spans.iter().position(|span| span.from == from)?;
        for span in self.spans.iter().skip(start) {
            if span.to > to {
                return None;
            }
            keys.extend(span.keys.iter().cloned());
            if span.to == to {
                return Some(keys);
            }
        }
        None
    }
}

/// The `If-Match` condition of a write.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum IfMatch {
    /// `If-Match: *` — the resource must exist.
    Any,
    /// `If-Match: "<revision>"` — the resource must be at this revision.
    Revision(u64),
    /// A create (`POST`): the resource must not exist yet. Checked with the other conditions,
    /// under the write lock, so two racing creates of one id cannot both succeed.
    Absent,
}

/// A write to the config.
#[derive(Clone, Debug)]
pub enum WriteOp {
    /// Create or replace one resource.
    Put {
        /// Which.
        key: ResourceKey,
        /// Its new document.
        document: Value,
        /// Precondition.
        if_match: Option<IfMatch>,
    },
    /// Merge a JSON merge patch (RFC 7396) into one existing resource.
    Patch {
        /// Which.
        key: ResourceKey,
        /// The patch.
        patch: Value,
        /// Precondition.
        if_match: Option<IfMatch>,
    },
    /// Delete one resource.
    Delete {
        /// Which.
        key: ResourceKey,
        /// Precondition.
        if_match: Option<IfMatch>,
    },
    /// Replace the whole config: every resource not listed is deleted.
    ReplaceAll {
        /// The new config's documents.
        documents: BTreeMap<ResourceKey, Value>,
        /// Where each document came from in the request, for error pointers.
        pointers: BTreeMap<ResourceKey, String>,
        /// `If-Match: "<version>"`: the config must still be at this version (a declarative
        /// apply based on what it read cannot overwrite a write made since).
        if_version: Option<u64>,
    },
    /// Replace several existing resources at once, each only if it is still at the revision
    /// given (the control plane's own writes, such as rehashed password digests).
    PutRevisions {
        /// Which, the new document, and the revision it must still be at.
        documents: Vec<(ResourceKey, Value, u64)>,
    },
    /// Make the config equal to an earlier version's.
    Rollback {
        /// The version to restore.
        to: u64,
    },
}

/// Why a write was refused. Nothing was written.
#[derive(Debug, Error)]
pub enum WriteError {
    /// Documents that fail their schema or semantic rules.
    #[error("the config is invalid")]
    Invalid(Vec<Violation>),
    /// The resource does not exist.
    #[error("{0} does not exist")]
    NotFound(ResourceKey),
    /// The version does not exist.
    #[error("version {0} does not exist")]
    VersionNotFound(u64),
    /// References that would not resolve after the write.
    #[error("the write would leave references that do not resolve")]
    Conflict(Vec<Violation>),
    /// `If-Match` no longer matches.
    #[error("{key} is at revision {current:?}, not the one in If-Match")]
    PreconditionFailed {
        /// The resource.
        key: ResourceKey,
        /// Its current revision, if it exists.
        current: Option<u64>,
    },
    /// A whole-config write's `If-Match` names a version the config has moved past.
    #[error("the config is at version {current}, not {expected}")]
    ConfigMoved {
        /// The version the write was based on.
        expected: u64,
        /// The current version.
        current: u64,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// One resource's difference between two configs.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct DiffEntry {
    /// Its kind.
    pub kind: Kind,
    /// Its id.
    pub id: String,
    /// What changed.
    pub op: ChangeOp,
    /// The document before (absent on create).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<Value>,
    /// The document after (absent on delete).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<Value>,
}

/// The result of a write.
#[derive(Debug)]
pub struct WriteOutcome {
    /// The version the config is at after the write (unchanged for a no-op or a dry run).
    pub version: u64,
    /// Whether a new version was written.
    pub written: bool,
    /// What changed (or would change, for a dry run).
    pub diff: Vec<DiffEntry>,
    /// The config after the write.
    pub state: Arc<ConfigState>,
}

/// Owns the current config and serialises writes to it.
pub struct ConfigService {
    store: Store,
    current: ArcSwap<ConfigState>,
    write_lock: Mutex<()>,
    published: watch::Sender<Arc<ConfigState>>,
    history: std::sync::Mutex<ChangeHistory>,
    /// Rehashed password digests from data planes, waiting to be committed together.
    rehashes: crate::rehash::Queue,
}

/// How often a replica reads the store's head even without a notification: a safety net
/// under `LISTEN/NOTIFY`, which already catches up after every reconnect.
const HEAD_POLL: Duration = Duration::from_secs(10);
/// The longest wait between attempts to reopen the notification listener.
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(2);

impl ConfigService {
    /// Loads the head config from the store.
    pub async fn load(store: Store) -> Result<ConfigService, WriteError> {
        let state = Arc::new(load_head(&store).await?);
        let (published, _) = watch::channel(state.clone());
        Ok(ConfigService {
            store,
            current: ArcSwap::new(state),
            write_lock: Mutex::new(()),
            published,
            history: std::sync::Mutex::default(),
            rehashes: crate::rehash::Queue::default(),
        })
    }

    /// The identity of the store behind this service (sent with every version).
    pub fn store_id(&self) -> &str {
        self.store.store_id()
    }

    /// The resources changed between versions `from` and `to` (`from` ≤ `to`, both in this
    /// store): from the recent history in memory, else from the store.
    pub async fn changed_keys(
        &self,
        from: u64,
        to: u64,
    ) -> Result<BTreeSet<ResourceKey>, WriteError> {
        let held = self
            .history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .changed(from, to);
        match held {
            Some(keys) => Ok(keys),
            None => Ok(self
                .store
                .changed_between(from, to)
                .await?
                .into_iter()
                .collect()),
        }
    }

    /// Makes `state` the current config and tells every stream.
    fn publish(&self, from: u64, state: Arc<ConfigState>, changed: Vec<ResourceKey>) {
        self.history
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .record(from, state.version, changed);
        self.current.store(state.clone());
        self.published.send_replace(state);
    }

    /// Brings the config in memory up to the store's head: versions other replicas committed,
    /// or that were missed while the store was away. Costs what changed since.
    async fn catch_up(&self) -> Result<u64, WriteError> {
        let _guard = self.write_lock.lock().await;
        self.catch_up_locked().await
    }

    async fn catch_up_locked(&self) -> Result<u64, WriteError> {
        let current = self.current.load_full();
        let head = self.store.head().await?;
        if head <= current.version {
            return Ok(current.version);
        }
        let states = self
            .store
            .changed_states(head, current.version, head)
            .await?;
        let mut resources = current.resources.clone();
        let mut changed = Vec::with_capacity(states.len());
        for (key, state) in states {
            match state {
                Some(stored) => {
                    let (key, entry) = entry_from_store(stored)?;
                    resources.insert(key, entry);
                }
                None => {
                    resources.remove(&key);
                }
            }
            changed.push(key);
        }
        let state = Arc::new(ConfigState {
            version: head,
            resources,
            wire: OnceLock::new(),
        });
        tracing::info!(
            from = current.version,
            to = head,
            changed = changed.len(),
            "caught up with the store"
        );
        self.publish(current.version, state, changed);
        Ok(head)
    }

    /// Follows the store for as long as the process runs: on Postgres, every version another
    /// replica commits is caught up with as soon as its notification arrives, and after every
    /// (re)connect of the listener, so a notification lost while disconnected never means a
    /// lost version. On SQLite (one control plane per file) there is nothing to follow.
    pub async fn follow_store(self: Arc<Self>) {
        let mut retry = Duration::from_millis(100);
        loop {
            let mut listener = match self.store.listen_versions().await {
                Ok(Some(listener)) => listener,
                Ok(None) => return,
                Err(error) => {
                    tracing::warn!(%error, retry_ms = retry.as_millis() as u64, "cannot listen for new config versions");
                    tokio::time::sleep(retry).await;
                    retry = (retry * 2).min(LISTEN_RETRY_MAX);
                    continue;
                }
            };
            retry = Duration::from_millis(100);
            // Listening first, then reading the head: a version committed in between is
            // either read now or heard of next.
            self.catch_up_logged().await;
            loop {
                match tokio::time::timeout(HEAD_POLL, listener.next()).await {
                    // Its own commits, and versions a catch-up already read: nothing to do.
                    Ok(Ok(Some(version))) if version != 0 && version <= self.current().version => {}
                    Ok(Ok(Some(_))) | Err(_) => self.catch_up_logged().await,
                    Ok(Ok(None)) => {
                        tracing::warn!("lost the store's notification connection; reconnecting");
                        break;
                    }
                    Ok(Err(error)) => {
                        tracing::warn!(%error, "the store's notification connection failed; reconnecting");
                        break;
                    }
                }
            }
        }
    }

    async fn catch_up_logged(&self) {
        if let Err(error) = self.catch_up().await {
            tracing::warn!(%error, "cannot catch up with the store");
        }
    }

    /// The store behind this service.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// The current config.
    pub fn current(&self) -> Arc<ConfigState> {
        self.current.load_full()
    }

    /// Takes legacy password digests a data plane rehashed after a successful login; those
    /// that arrive within about a second are committed as one version by `system:rehash`, each
    /// only if it still replaces the stored digest (see [`crate::rehash`]).
    pub fn rehash(self: &Arc<Self>, rehashed: Vec<pb::CredentialRehash>) {
        crate::rehash::submit(self, &self.rehashes, rehashed);
    }

    /// A receiver that sees every new version (and the current one first).
    pub fn subscribe(&self) -> watch::Receiver<Arc<ConfigState>> {
        self.published.subscribe()
    }

    /// Validates and applies one write as one new version (or, with `dry_run`, reports what it
    /// would change). A write that changes nothing writes no version.
    pub async fn write(
        &self,
        op: WriteOp,
        meta: &CommitMeta,
        dry_run: bool,
    ) -> Result<WriteOutcome, WriteError> {
        let started = Instant::now();
        let result = self.write_once(op, meta, dry_run).await;
        let metrics = metrics();
        match &result {
            Ok(outcome) if outcome.written => {
                metrics.versions_written.fetch_add(1, Ordering::Relaxed);
                metrics.write_duration.observe(started.elapsed());
            }
            Ok(_) => {}
            Err(_) => {
                metrics.writes_refused.fetch_add(1, Ordering::Relaxed);
            }
        }
        result
    }

    async fn write_once(
        &self,
        op: WriteOp,
        meta: &CommitMeta,
        dry_run: bool,
    ) -> Result<WriteOutcome, WriteError> {
        let _guard = self.write_lock.lock().await;
        let mut retried = false;
        loop {
            let current = self.current.load_full();
            let plan = self.plan(&current, &op).await?;
            let diff = plan.diff(&current);
            if dry_run || plan.changes.is_empty() {
                return Ok(WriteOutcome {
                    version: current.version,
                    written: false,
                    diff,
                    state: current,
                });
            }
            let changes: Vec<Change> = plan
                .changes
                .iter()
                .map(|c| Change {
                    key: c.key.clone(),
                    body: c.after.as_ref().map(|(body, _)| body.clone()),
                    created_at: c.created_at,
                    op: c.op,
                })
                .collect();
            match self.store.commit(current.version, meta, &changes).await {
                Ok(info) => {
                    let changed = plan.changes.iter().map(|c| c.key.clone()).collect();
                    let state = Arc::new(plan.apply(&current, info.version, info.created_at));
                    self.publish(current.version, state.clone(), changed);
                    return Ok(WriteOutcome {
                        version: info.version,
                        written: true,
                        diff,
                        state,
                    });
                }
                // Another writer (a later control-plane replica) moved the head: catch up
                // and try once more against the new state.
                Err(StoreError::HeadMoved { .. }) if !retried => {
                    retried = true;
                    self.catch_up_locked().await?;
                }
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Works out the resource changes `op` makes to `current`, validating each new document.
    async fn plan(&self, current: &ConfigState, op: &WriteOp) -> Result<Plan, WriteError> {
        let mut desired: Vec<(ResourceKey, Option<Value>, String)> = Vec::new();
        // What a rollback restores, admitted as each state arrives from the store (see below).
        let mut restored: Vec<(ResourceKey, Admitted, String)> = Vec::new();
        match op {
            WriteOp::Put {
                key,
                document,
                if_match,
            } => {
                check_if_match(current, key, *if_match)?;
                desired.push((key.clone(), Some(document.clone()), String::new()));
            }
            WriteOp::Patch {
                key,
                patch,
                if_match,
            } => {
                let entry = current
                    .resources
                    .get(key)
                    .ok_or_else(|| WriteError::NotFound(key.clone()))?;
                check_if_match(current, key, *if_match)?;
                let mut document = entry.body.clone();
                merge_patch(&mut document, patch);
                if key.kind == Kind::Consumers {
                    rotate_credentials(&mut document, patch);
                }
                desired.push((key.clone(), Some(document), String::new()));
            }
            WriteOp::Delete { key, if_match } => {
                if !current.resources.contains_key(key) {
                    return Err(WriteError::NotFound(key.clone()));
                }
                check_if_match(current, key, *if_match)?;
                desired.push((key.clone(), None, String::new()));
            }
            WriteOp::ReplaceAll {
                documents,
                pointers,
                if_version,
            } => {
                if let Some(expected) = *if_version
                    && expected != current.version
                {
                    return Err(WriteError::ConfigMoved {
                        expected,
                        current: current.version,
                    });
                }
                for key in current.resources.keys() {
                    if !documents.contains_key(key) {
                        desired.push((key.clone(), None, String::new()));
                    }
                }
                for (key, document) in documents {
                    let at = pointers.get(key).cloned().unwrap_or_default();
                    desired.push((key.clone(), Some(document.clone()), at));
                }
            }
            WriteOp::PutRevisions { documents } => {
                for (key, document, revision) in documents {
                    check_if_match(current, key, Some(IfMatch::Revision(*revision)))?;
                    desired.push((key.clone(), Some(document.clone()), String::new()));
                }
            }
            WriteOp::Rollback { to } => {
                if *to > current.version || (*to > 0 && self.store.version(*to).await?.is_none()) {
                    return Err(WriteError::VersionNotFound(*to));
                }
                // Each old state is admitted as its row arrives, while the database still works
                // on the next: the rollback's one step the same `PUT /config` lacks (reading
                // 10,000 states from the history) then costs barely more than its first row.
                self.store
                    .for_each_changed_state(*to, *to, current.version, |key, state| {
                        let existing = current.resources.get(&key).map(|e| &e.body);
                        let admitted = admit_desired(&key, state.map(|s| s.body), existing);
                        let at = match admitted {
                            Ok(_) => String::new(),
                            Err(_) => format!("/{}/{}", key.kind, key.id),
                        };
                        restored.push((key, admitted, at));
                    })
                    .await?;
                // Rows come in no particular order; the changes, the diff and any violations
                // keep the order of the keys, as before.
                restored.sort_unstable_by(|a, b| a.0.cmp(&b.0));
            }
        }

        let now = now_ms();
        let mut violations = Vec::new();
        let mut changes = Vec::new();
        let admitted = desired.into_iter().map(|(key, document, at)| {
            let existing = current.resources.get(&key).map(|e| &e.body);
            let admitted = admit_desired(&key, document, existing);
            (key, admitted, at)
        });
        for (key, admitted, at) in admitted.chain(restored) {
            let existing = current.resources.get(&key);
            let after = match admitted {
                Ok(after) => after,
                Err(found) => {
                    violations.extend(found.into_iter().map(|v| v.under(&at)));
                    continue;
                }
            };
            let op = match (existing, &after) {
                (None, None) => continue,
                (None, Some(_)) => ChangeOp::Create,
                (Some(_), None) => ChangeOp::Delete,
                (Some(entry), Some((body, _))) if entry.body == *body => continue,
                (Some(_), Some(_)) => ChangeOp::Update,
            };
            changes.push(PlannedChange {
                created_at: existing.map_or(now, |e| e.created_at),
                key,
                op,
                after,
            });
        }
        if !violations.is_empty() {
            return Err(WriteError::Invalid(violations));
        }
        let plan = Plan { changes };
        plan.check_references(current)?;
        Ok(plan)
    }
}

fn check_if_match(
    current: &ConfigState,
    key: &ResourceKey,
    if_match: Option<IfMatch>,
) -> Result<(), WriteError> {
    let revision = current.resources.get(key).map(|e| e.revision);
    let holds = match if_match {
        None => true,
        Some(IfMatch::Any) => revision.is_some(),
        Some(IfMatch::Revision(expected)) => revision == Some(expected),
        Some(IfMatch::Absent) if revision.is_some() => {
            return Err(WriteError::Conflict(vec![Violation::new(
                "/id",
                format!("{key} already exists; PUT replaces it"),
            )]));
        }
        Some(IfMatch::Absent) => true,
    };
    if holds {
        Ok(())
    } else {
        Err(WriteError::PreconditionFailed {
            key: key.clone(),
            current: revision,
        })
    }
}

/// A desired state admitted: `None` for a deletion, else the stored document and its typed
/// form; the document's violations if it is refused.
type Admitted = Result<Option<(Value, Parsed)>, Vec<Violation>>;

/// [`admit`] for a desired state, where `None` deletes the resource.
fn admit_desired(key: &ResourceKey, document: Option<Value>, existing: Option<&Value>) -> Admitted {
    document
        .map(|document| admit(key, document, existing))
        .transpose()
}

/// Turns a written document into the stored one: server fields stripped, redacted secrets
/// restored from `existing`, validated, credentials sealed.
fn admit(
    key: &ResourceKey,
    document: Value,
    existing: Option<&Value>,
) -> Result<(Value, Parsed), Vec<Violation>> {
    let mut body = prepare_document(key, document).map_err(|v| vec![v])?;
    secrets::restore_redacted(key.kind, &mut body, existing).map_err(|v| vec![v])?;
    let parsed = validate_resource(key.kind, &body)?;
    let refused = check_new_document(&parsed);
    if !refused.is_empty() {
        return Err(refused);
    }
    let before_sealing = body.clone();
    secrets::seal(key.kind, &mut body).map_err(|v| vec![v])?;
    if body == before_sealing {
        return Ok((body, parsed));
    }
    // Sealing only swaps plaintext for digests, which the schema also accepts.
    let parsed = validate_resource(key.kind, &body)?;
    Ok((body, parsed))
}

/// Strips server-managed fields and checks that an `id` in the body names the same resource.
fn prepare_document(key: &ResourceKey, document: Value) -> Result<Value, Violation> {
    let Value::Object(mut fields) = document else {
        return Err(Violation::new(
            "",
            "a resource document must be a JSON object",
        ));
    };
    if let Some(id) = fields.get("id")
        && id.as_str() != Some(key.id.as_str())
    {
        return Err(Violation::new(
            "/id",
            format!(
                "the body's id {id} differs from the id in the URL ({:?})",
                key.id
            ),
        ));
    }
    for field in SERVER_FIELDS {
        fields.remove(field);
    }
    Ok(Value::Object(fields))
}

/// The credentials stored as a digest of what was written: (plugin, written field, stored
/// field).
const SEALED_CREDENTIALS: [(&str, &str, &str); 2] = [
    ("key-auth", "key", "key_sha256"),
    ("basic-auth", "password", "password_hash"),
];

/// After a merge patch of a consumer: a credential the patch sets in plain text replaces the
/// stored digest of the old one. Merged as is, the document would hold both (`key` and
/// `key_sha256`), which the schema refuses, so rotating a key by PATCH failed.
fn rotate_credentials(document: &mut Value, patch: &Value) {
    for (plugin, written, stored) in SEALED_CREDENTIALS {
        let rotated = patch
            .pointer(&format!("/credentials/{plugin}/{written}"))
            .is_some_and(|value| !value.is_null());
        if rotated
            && let Some(credential) = document
                .pointer_mut(&format!("/credentials/{plugin}"))
                .and_then(Value::as_object_mut)
        {
            credential.remove(stored);
        }
    }
}

/// Applies a JSON merge patch (RFC 7396) to `target`.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(fields) = target {
        for (name, value) in patch {
            if value.is_null() {
                fields.remove(name);
            } else {
                merge_patch(fields.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

struct PlannedChange {
    key: ResourceKey,
    op: ChangeOp,
    after: Option<(Value, Parsed)>,
    created_at: i64,
}

struct Plan {
    changes: Vec<PlannedChange>,
}

impl Plan {
    /// Refuses a plan that would leave a reference dangling, in either direction: a changed
    /// resource naming something missing, or a deleted resource still named by another.
    fn check_references(&self, current: &ConfigState) -> Result<(), WriteError> {
        let changed: BTreeMap<&ResourceKey, Option<&Parsed>> = self
            .changes
            .iter()
            .map(|c| (&c.key, c.after.as_ref().map(|(_, p)| p)))
            .collect();
        let exists_after = |key: &ResourceKey| match changed.get(key) {
            Some(after) => after.is_some(),
            None => current.resources.contains_key(key),
        };
        let mut violations: Vec<Violation> = dangling_references(
            changed.iter().filter_map(|(k, p)| p.map(|p| (*k, p))),
            exists_after,
        )
        .iter()
        .map(|d| d.violation())
        .collect();

        let deleted: BTreeSet<&ResourceKey> = changed
            .iter()
            .filter(|(_, after)| after.is_none())
            .map(|(k, _)| *k)
            .collect();
        if !deleted.is_empty() {
            let unchanged = current
                .resources
                .iter()
                .filter(|(k, _)| !changed.contains_key(k))
                .map(|(k, e)| (k, &e.parsed));
            for (from, parsed) in unchanged {
                for target in parsed.references() {
                    if deleted.contains(&target) {
                        violations.push(Violation::new(
                            "",
                            format!("{target} is still referenced by {from}"),
                        ));
                    }
                }
            }
        }
        violations.extend(self.credential_conflicts(current, &changed));
        violations.extend(crate::certificates::default_conflicts(current, &changed));
        if violations.is_empty() {
            Ok(())
        } else {
            Err(WriteError::Conflict(violations))
        }
    }

    /// Credentials that a changed consumer would share with another consumer.
    fn credential_conflicts(
        &self,
        current: &ConfigState,
        changed: &BTreeMap<&ResourceKey, Option<&Parsed>>,
    ) -> Vec<Violation> {
        if !changed.keys().any(|k| k.kind == Kind::Consumers) {
            return Vec::new();
        }
        let unchanged = current
            .of_kind(Kind::Consumers)
            .filter(|(k, _)| !changed.contains_key(k))
            .map(|(k, e)| (k, &e.parsed));
        let updated = changed
            .iter()
            .filter(|(k, _)| k.kind == Kind::Consumers)
            .filter_map(|(k, p)| p.map(|p| (*k, p)));
        let consumers = unchanged.chain(updated).filter_map(|(k, p)| match p {
            Parsed::Consumer(c) => Some((k.id.as_str(), c)),
            _ => None,
        });
        credential_conflicts(consumers)
            .into_iter()
            .filter(|(id, _)| changed.contains_key(&ResourceKey::new(Kind::Consumers, id.clone())))
            .map(|(_, message)| Violation::new("/credentials", message))
            .collect()
    }
    fn diff(&self, current: &ConfigState) -> Vec<DiffEntry> {
        self.changes
            .iter()
            .map(|c| DiffEntry {
                kind: c.key.kind,
                id: c.key.id.clone(),
                op: c.op,
                before: current
                    .resources
                    .get(&c.key)
                    .map(|e| secrets::redact(c.key.kind, &e.body)),
                after: c
                    .after
                    .as_ref()
                    .map(|(body, _)| secrets::redact(c.key.kind, body)),
            })
            .collect()
    }

    fn apply(self, current: &ConfigState, version: u64, written_at: i64) -> ConfigState {
        let mut resources = current.resources.clone();
        for change in self.changes {
            match change.after {
                None => {
                    resources.remove(&change.key);
                }
                Some((body, parsed)) => {
                    let entry = Entry::new(body, parsed, version, change.created_at, written_at);
                    resources.insert(change.key, Arc::new(entry));
                }
            }
        }
        ConfigState {
            version,
            resources,
            wire: OnceLock::new(),
        }
    }
}

async fn load_head(store: &Store) -> Result<ConfigState, WriteError> {
    let version = store.head().await?;
    load_at(store, version).await
}

/// The whole config as it stood at `version` (a staged rollout sends some data planes one
/// older than the head).
pub async fn load_at(store: &Store, version: u64) -> Result<ConfigState, WriteError> {
    let mut resources = BTreeMap::new();
    for stored in store.config_at(version).await? {
        let (key, entry) = entry_from_store(stored)?;
        resources.insert(key, entry);
    }
    Ok(ConfigState {
        version,
        resources,
        wire: OnceLock::new(),
    })
}

/// A stored resource, validated, as an entry of the config in memory.
fn entry_from_store(stored: StoredResource) -> Result<(ResourceKey, Arc<Entry>), WriteError> {
    let StoredResource {
        key,
        body,
        revision,
        created_at,
        updated_at,
    } = stored;
    // A stored document that no longer passes its schema (a stricter build) is a hard error:
    // serving it would let the next publish fail on every data plane.
    let parsed = validate_resource(key.kind, &body).map_err(|violations| {
        WriteError::Store(StoreError::Corrupt(format!(
            "{key} fails validation: {violations:?}"
        )))
    })?;
    let entry = Entry::new(body, parsed, revision, created_at, updated_at);
    Ok((key, Arc::new(entry)))
}

/// Renders a resource for the API: its document plus the server-managed fields.
pub fn render(key: &ResourceKey, entry: &Entry) -> Value {
    render_parts(
        key,
        &entry.body,
        entry.revision,
        entry.created_at,
        entry.updated_at,
    )
}

/// Renders a stored resource for the API.
pub fn render_stored(resource: &StoredResource) -> Value {
    render_parts(
        &resource.key,
        &resource.body,
        resource.revision,
        resource.created_at,
        resource.updated_at,
    )
}

fn render_parts(
    key: &ResourceKey,
    body: &Value,
    revision: u64,
    created_at: i64,
    updated_at: i64,
) -> Value {
    let mut fields = Map::new();
    fields.insert("id".into(), Value::String(key.id.clone()));
    if let Value::Object(body) = secrets::redact(key.kind, body) {
        fields.extend(body);
    }
    fields.insert("created_at".into(), (created_at / 1000).into());
    fields.insert("updated_at".into(), (updated_at / 1000).into());
    fields.insert("revision".into(), revision.into());
    Value::Object(fields)
}

/// A new resource id for `POST` to a collection: time-ordered, unique enough per process.
pub fn generate_id() -> String {
    let id = format!("{:011x}{:05x}", now_ms(), fastrand::u32(..0x10_0000));
    debug_assert!(is_valid_id(&id));
    id
}

impl ConfigService {
    /// What changed from version `from` to version `to` (either may be the older one).
    /// Costs what changed between them, not the size of the config.
    pub async fn diff_versions(&self, from: u64, to: u64) -> Result<Vec<DiffEntry>, WriteError> {
        let head = self.current.load().version;
        for version in [from, to] {
            if version > head {
                return Err(WriteError::VersionNotFound(version));
            }
        }
        let (low, high) = (from.min(to), from.max(to));
        let mut before = self.store.changed_states(from, low, high).await?;
        let mut after = self.store.changed_states(to, low, high).await?;
        let keys: Vec<ResourceKey> = before.keys().cloned().collect();
        let mut diff = Vec::new();
        for key in keys {
            let before = before
                .remove(&key)
                .flatten()
                .map(|r| secrets::redact(key.kind, &r.body));
            let after = after
                .remove(&key)
                .flatten()
                .map(|r| secrets::redact(key.kind, &r.body));
            let op = match (&before, &after) {
                (None, Some(_)) => ChangeOp::Create,
                (Some(_), None) => ChangeOp::Delete,
                (Some(b), Some(a)) if b != a => ChangeOp::Update,
                _ => continue,
            };
            diff.push(DiffEntry {
                kind: key.kind,
                id: key.id,
                op,
                before,
                after,
            });
        }
        Ok(diff)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7396() {
        let cases = [
            (json!({"a": "b"}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": "b"}),
                json!({"b": "c"}),
                json!({"a": "b", "b": "c"}),
            ),
            (json!({"a": "b"}), json!({"a": null}), json!({})),
            (json!({"a": ["b"]}), json!({"a": "c"}), json!({"a": "c"})),
            (
                json!({"a": {"b": "c"}}),
                json!({"a": {"b": "d", "c": null}}),
                json!({"a": {"b": "d"}}),
            ),
            (json!(["a"]), json!({"a": "b"}), json!({"a": "b"})),
            (json!({"a": "b"}), json!(["c"]), json!(["c"])),
            (
                json!({"e": null}),
                json!({"a": 1}),
                json!({"e": null, "a": 1}),
            ),
        ];
        for (mut target, patch, expected) in cases {
            merge_patch(&mut target, &patch);
            assert_eq!(target, expected, "patch {patch}");
        }
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = generate_id();
        let b = generate_id();
        assert!(is_valid_id(&a));
        assert_ne!(a, b);
    }
}
