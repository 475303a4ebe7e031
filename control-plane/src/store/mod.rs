//! The versioned config store: append-only history on Postgres or an embedded SQLite file.
//!
//! The layout is MVCC, like etcd: each write appends one `config_versions` row and one
//! `resource_revisions` row per changed resource (a NULL body is a tombstone). So a write costs
//! what it changes, the config at any version is one indexed query, and a diff or a rollback
//! touches only the resources that changed between the two versions — never a full copy of the
//! config per version.
//!
//! Only this module writes SQL. Both backends run the same statements through sqlx's `Any`
//! driver (every statement here is portable: `$N` placeholders, BIGINT and TEXT columns, times
//! as unix milliseconds).

use std::collections::BTreeMap;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use futures_util::TryStreamExt;
use gateway_proto::{Kind, ResourceKey};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::any::{AnyPoolOptions, AnyRow};
use sqlx::{AnyPool, Row};
use thiserror::Error;

mod fleet;
mod listen;
mod rollouts;
#[cfg(test)]
pub(crate) mod tests;
mod tokens;

pub use fleet::{DataPlaneRecord, RejectionRecord};
pub use listen::VersionListener;
pub use rollouts::{PolicyRecord, RolloutRecord};
pub use tokens::{TokenRecord, TokenRemoval};

/// The Postgres channel on which every commit announces its version (sent by the committing
/// transaction, so a listener hears of a version only once it is visible).
const VERSION_CHANNEL: &str = "gateway_config_versions";

/// Which database a [`Store`] runs on.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Backend {
    /// Postgres: the production store, shareable by several control-plane replicas.
    Postgres,
    /// An embedded SQLite file: the zero-setup default.
    Sqlite,
}

/// A store failure.
#[derive(Debug, Error)]
pub enum StoreError {
    /// The head moved since the write was prepared (another writer got there first).
    #[error("the config changed concurrently: expected head {expected}, found {found}")]
    HeadMoved {
        /// The version the write was based on.
        expected: u64,
        /// The head found in the store.
        found: u64,
    },
    /// The database cannot be reached.
    #[error("the config store is unreachable: {0}")]
    Unavailable(String),
    /// Stored data that cannot be read back (corruption or a bug).
    #[error("the config store holds invalid data: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("config store error: {0}")]
    Database(#[from] sqlx::Error),
    /// The schema migration failed.
    #[error("config store migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
}

impl StoreError {
    fn classify(error: sqlx::Error) -> StoreError {
        match error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed => {
                StoreError::Unavailable(error.to_string())
            }
            other => StoreError::Database(other),
        }
    }
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

/// What a change did to one resource.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChangeOp {
    /// The resource did not exist before.
    Create,
    /// The resource existed and its document changed.
    Update,
    /// The resource was removed.
    Delete,
}

/// One resource change of a write, as recorded in a version.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChangeSummary {
    /// The resource's kind.
    pub kind: Kind,
    /// The resource's id.
    pub id: String,
    /// What happened to it.
    pub op: ChangeOp,
}

/// One resource change to write.
#[derive(Clone, Debug)]
pub struct Change {
    /// The resource.
    pub key: ResourceKey,
    /// Its new document, or `None` to delete it.
    pub body: Option<Value>,
    /// When the resource was first created (kept across updates), unix ms.
    pub created_at: i64,
    /// Create, update or delete.
    pub op: ChangeOp,
}

/// Who made a write and why.
#[derive(Clone, Debug, Default)]
pub struct CommitMeta {
    /// The admin token's name.
    pub author: String,
    /// The optional change message (`X-Change-Message`).
    pub message: Option<String>,
}

/// One config version's metadata.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionInfo {
    /// The version number.
    pub version: u64,
    /// When it was written, unix ms.
    pub created_at: i64,
    /// Who wrote it.
    pub author: String,
    /// Why, if said.
    pub message: Option<String>,
    /// The resources it changed.
    pub changes: Vec<ChangeSummary>,
}

/// A resource as stored at some version.
#[derive(Clone, Debug, PartialEq)]
pub struct StoredResource {
    /// Kind and id.
    pub key: ResourceKey,
    /// The document (without server-managed fields).
    pub body: Value,
    /// The version in which it last changed.
    pub revision: u64,
    /// When it was first created, unix ms.
    pub created_at: i64,
    /// When it last changed, unix ms.
    pub updated_at: i64,
}

/// Rows per multi-row INSERT: well under both backends' bind-parameter limits.
const INSERT_CHUNK: usize = 500;

/// The versioned config store.
#[derive(Clone, Debug)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The URL it was opened with (a Postgres listener opens its own connection).
    url: Arc<str>,
    /// This store's identity (`store_identity`), fixed when the schema was created.
    store_id: Arc<str>,
}

/// The current time in unix milliseconds.
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or_default()
}

fn to_u64(value: i64, what: &str) -> Result<u64> {
    u64::try_from(value).map_err(|_| StoreError::Corrupt(format!("negative {what}: {value}")))
}

fn to_i64(value: u64) -> Result<i64> {
    i64::try_from(value).map_err(|_| StoreError::Corrupt(format!("version out of range: {value}")))
}

impl Store {
    /// Opens the store at `url` (`postgres://…` or `sqlite://…`) and applies pending migrations.
    pub async fn connect(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("postgres:") || url.starts_with("postgresql:") {
            Backend::Postgres
        } else if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else {
            return Err(StoreError::Unavailable(format!(
                "unsupported database URL {url:?}: expected postgres://… or sqlite://…"
            )));
        };
        let mut options = AnyPoolOptions::new().acquire_timeout(Duration::from_secs(5));
        options = match backend {
            Backend::Postgres => options.max_connections(16),
            Backend::Sqlite => options.max_connections(4).after_connect(|conn, _| {
                Box::pin(async move {
                    // WAL lets readers run beside the single writer; the busy timeout absorbs
                    // the brief lock while a write commits.
                    sqlx::query("PRAGMA journal_mode = WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout = 5000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA foreign_keys = ON")
                        .execute(&mut *conn)
                        .await?;
                    Ok(())
                })
            }),
        };
        let pool = options.connect(url).await.map_err(StoreError::classify)?;
        let mut migrator = match backend {
            Backend::Postgres => sqlx::migrate!("../migrations/postgres"),
            Backend::Sqlite => sqlx::migrate!("../migrations/sqlite"),
        };
        // Migrations only add (tables, nullable columns), so a replica one release behind
        // runs on a schema a newer replica migrated: a rolling upgrade (or a rollback of the
        // binary) does not stop at "applied migration missing".
        migrator.set_ignore_missing(true);
        migrator.run(&pool).await?;
        let row = sqlx::query("SELECT store_id FROM store_identity WHERE id = 1")
            .fetch_one(&pool)
            .await
            .map_err(StoreError::classify)?;
        let store_id: String = row.try_get("store_id")?;
        Ok(Store {
            pool,
            backend,
            url: url.into(),
            store_id: store_id.into(),
        })
    }

    /// Which backend this store runs on.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// This store's identity: the same for every replica on it, different for any other
    /// store (a new database, or another SQLite file), even one with the same versions.
    pub fn store_id(&self) -> &str {
        &self.store_id
    }

    /// The newest version (0 for an empty history).
    pub async fn head(&self) -> Result<u64> {
        let row = sqlx::query("SELECT version FROM config_head WHERE id = 1")
            .fetch_one(&self.pool)
            .await
            .map_err(StoreError::classify)?;
        to_u64(row.try_get("version")?, "head")
    }

    /// Appends one version holding `changes`, if the head is still `base`.
    ///
    /// Either everything is written or nothing is: on any error the head stays at `base`.
    pub async fn commit(
        &self,
        base: u64,
        meta: &CommitMeta,
        changes: &[Change],
    ) -> Result<VersionInfo> {
        let mut tx = self.pool.begin().await.map_err(StoreError::classify)?;
        // Moving the head row is the write lock: a concurrent writer on the same base blocks
        // here, then finds the row changed and matches nothing.
        let moved = sqlx::query(
            "UPDATE config_head SET version = version + 1 WHERE id = 1 AND version = $1 RETURNING version",
        )
        .bind(to_i64(base)?)
        .fetch_optional(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
        let Some(moved) = moved else {
            drop(tx);
            let found = self.head().await?;
            return Err(StoreError::HeadMoved {
                expected: base,
                found,
            });
        };
        let version = to_u64(moved.try_get("version")?, "version")?;
        let info = VersionInfo {
            version,
            created_at: now_ms(),
            author: meta.author.clone(),
            message: meta.message.clone(),
            changes: changes
                .iter()
                .map(|c| ChangeSummary {
                    kind: c.key.kind,
                    id: c.key.id.clone(),
                    op: c.op,
                })
                .collect(),
        };
        let changes_json =
            serde_json::to_string(&info.changes).map_err(|e| StoreError::Corrupt(e.to_string()))?;
        sqlx::query(
            "INSERT INTO config_versions (version, created_at, author, message, changes) VALUES ($1, $2, $3, $4, $5)",
        )
        .bind(to_i64(version)?)
        .bind(info.created_at)
        .bind(&info.author)
        .bind(info.message.clone())
        .bind(changes_json)
        .execute(&mut *tx)
        .await
        .map_err(StoreError::classify)?;
        if self.backend == Backend::Postgres {
            // Delivered when (and only if) the transaction commits, after the rows are visible.
            sqlx::query("SELECT pg_notify($1, $2)")
                .bind(VERSION_CHANNEL)
                .bind(version.to_string())
                .execute(&mut *tx)
                .await
                .map_err(StoreError::classify)?;
        }
        for chunk in changes.chunks(INSERT_CHUNK) {
            let mut sql = String::from(
                "INSERT INTO resource_revisions (kind, id, version, body, created_at) VALUES ",
            );
            for i in 0..chunk.len() {
                let n = i * 5;
                if i > 0 {
                    sql.push_str(", ");
                }
                sql.push_str(&format!(
                    "(${}, ${}, ${}, ${}, ${})",
                    n + 1,
                    n + 2,
                    n + 3,
                    n + 4,
                    n + 5
                ));
            }
            let mut query = sqlx::query(&sql);
            for change in chunk {
                query = query
                    .bind(change.key.kind.as_str())
                    .bind(change.key.id.clone())
                    .bind(to_i64(version)?)
                    .bind(change.body.as_ref().map(Value::to_string))
                    .bind(change.created_at);
            }
            query
                .execute(&mut *tx)
                .await
                .map_err(StoreError::classify)?;
        }
        tx.commit().await.map_err(StoreError::classify)?;
        Ok(info)
    }

    /// Every resource as it stood at `version`.
    pub async fn config_at(&self, version: u64) -> Result<Vec<StoredResource>> {
        let rows = sqlx::query(
            "SELECT r.kind, r.id, r.version, r.body, r.created_at, v.created_at AS updated_at \
             FROM resource_revisions r \
             JOIN (SELECT kind, id, MAX(version) AS version FROM resource_revisions \
                   WHERE version <= $1 GROUP BY kind, id) latest \
               ON r.kind = latest.kind AND r.id = latest.id AND r.version = latest.version \
             JOIN config_versions v ON v.version = r.version \
             WHERE r.body IS NOT NULL \
             ORDER BY r.kind, r.id",
        )
        .bind(to_i64(version)?)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        rows.iter()
            .filter_map(|row| decode_resource(row).transpose())
            .collect()
    }

    /// The state at version `at` of every resource that changed in versions `(from, to]`:
    /// `None` where it did not exist at `at`. One query, whatever the number of resources (a
    /// rollback of a 10,000-route config reads 10,000 states this way).
    pub async fn changed_states(
        &self,
        at: u64,
        from: u64,
        to: u64,
    ) -> Result<BTreeMap<ResourceKey, Option<StoredResource>>> {
        let mut states = BTreeMap::new();
        self.for_each_changed_state(at, from, to, |key, state| {
            states.insert(key, state);
        })
        .await?;
        Ok(states)
    }

    /// [`Store::changed_states`], each state handed to `each` as its row arrives (in no
    /// particular order), so that the caller's work on one state overlaps the database's on
    /// the next: a rollback validates 10,000 documents while the query still runs, where
    /// collecting them first made it wait for the whole result before starting.
    pub async fn for_each_changed_state(
        &self,
        at: u64,
        from: u64,
        to: u64,
        mut each: impl FnMut(ResourceKey, Option<StoredResource>),
    ) -> Result<()> {
        let mut rows = sqlx::query(
            "SELECT c.kind, c.id, r.version, r.body, r.created_at, v.created_at AS updated_at \
             FROM (SELECT DISTINCT kind, id FROM resource_revisions \
                   WHERE version > $2 AND version <= $3) c \
             LEFT JOIN resource_revisions r ON r.kind = c.kind AND r.id = c.id \
               AND r.version = (SELECT MAX(r2.version) FROM resource_revisions r2 \
                                WHERE r2.kind = c.kind AND r2.id = c.id AND r2.version <= $1) \
             LEFT JOIN config_versions v ON v.version = r.version",
        )
        .bind(to_i64(at)?)
        .bind(to_i64(from)?)
        .bind(to_i64(to)?)
        .fetch(&self.pool);
        while let Some(row) = rows.try_next().await.map_err(StoreError::classify)? {
            let key = decode_key(&row)?;
            let existed = row.try_get::<Option<i64>, _>("version")?.is_some();
            let state = if existed {
                decode_resource(&row)?
            } else {
                None
            };
            each(key, state);
        }
        Ok(())
    }

    /// The resources that changed in versions `(from, to]`.
    pub async fn changed_between(&self, from: u64, to: u64) -> Result<Vec<ResourceKey>> {
        let rows = sqlx::query(
            "SELECT DISTINCT kind, id FROM resource_revisions WHERE version > $1 AND version <= $2 ORDER BY kind, id",
        )
        .bind(to_i64(from)?)
        .bind(to_i64(to)?)
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        rows.iter().map(decode_key).collect()
    }

    /// Versions older than `before` (or the newest, if `None`), newest first.
    pub async fn list_versions(&self, before: Option<u64>, limit: u32) -> Result<Vec<VersionInfo>> {
        let before = match before {
            Some(v) => to_i64(v)?,
            None => i64::MAX,
        };
        let rows = sqlx::query(
            "SELECT version, created_at, author, message, changes FROM config_versions \
             WHERE version < $1 ORDER BY version DESC LIMIT $2",
        )
        .bind(before)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        rows.iter().map(decode_version).collect()
    }

    /// One version's metadata.
    pub async fn version(&self, version: u64) -> Result<Option<VersionInfo>> {
        let row = sqlx::query(
            "SELECT version, created_at, author, message, changes FROM config_versions WHERE version = $1",
        )
        .bind(to_i64(version)?)
        .fetch_optional(&self.pool)
        .await
        .map_err(StoreError::classify)?;
        row.as_ref().map(decode_version).transpose()
    }
}

fn decode_key(row: &AnyRow) -> Result<ResourceKey> {
    let kind: String = row.try_get("kind")?;
    let kind =
        Kind::parse(&kind).ok_or_else(|| StoreError::Corrupt(format!("unknown kind {kind:?}")))?;
    Ok(ResourceKey::new(kind, row.try_get::<String, _>("id")?))
}

fn decode_resource(row: &AnyRow) -> Result<Option<StoredResource>> {
    let key = decode_key(row)?;
    let Some(body) = row.try_get::<Option<String>, _>("body")? else {
        return Ok(None);
    };
    let body = Value::from_str(&body).map_err(|e| StoreError::Corrupt(format!("{key}: {e}")))?;
    Ok(Some(StoredResource {
        key,
        body,
        revision: to_u64(row.try_get("version")?, "revision")?,
        created_at: row.try_get("created_at")?,
        updated_at: row.try_get("updated_at")?,
    }))
}

fn decode_version(row: &AnyRow) -> Result<VersionInfo> {
    let changes: String = row.try_get("changes")?;
    Ok(VersionInfo {
        version: to_u64(row.try_get("version")?, "version")?,
        created_at: row.try_get("created_at")?,
        author: row.try_get("author")?,
        message: row.try_get("message")?,
        changes: serde_json::from_str(&changes)
            .map_err(|e| StoreError::Corrupt(format!("changes of a version: {e}")))?,
    })
}

impl Store {
    /// Closes every connection (tests use it so their database can be dropped).
    pub async fn close(&self) {
        self.pool.close().await;
    }
}
