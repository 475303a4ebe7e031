//! The store suite, run against both backends: each case is an `async fn(Store)` and the macro
//! below instantiates it once on a fresh Postgres database (`#[sqlx::test]`) and once on a
//! fresh SQLite file.

use super::*;
use serde_json::json;
use sqlx::ConnectOptions;
use sqlx::PgPool;

/// A fresh SQLite store in its own temporary file.
pub(crate) async fn sqlite_store() -> Store {
    let path = std::env::temp_dir().join(format!(
        "gateway-store-test-{}-{}.db",
        std::process::id(),
        fastrand::u64(..)
    ));
    Store::connect(&format!("sqlite://{}?mode=rwc", path.display()))
        .await
        .expect("sqlite store opens")
}

/// A store on the fresh Postgres database `#[sqlx::test]` made for this test.
pub(crate) async fn postgres_store(pool: PgPool) -> Store {
    let url = pool.connect_options().to_url_lossy();
    pool.close().await;
    Store::connect(url.as_str())
        .await
        .expect("postgres store opens")
}

macro_rules! both_backends {
    ($($case:ident),* $(,)?) => {
        mod on_sqlite {
            $(
                #[tokio::test]
                async fn $case() {
                    let store = super::sqlite_store().await;
                    super::$case(store.clone()).await;
                    store.close().await;
                }
            )*
        }
        mod on_postgres {
            $(
                #[sqlx::test(migrations = false)]
                async fn $case(pool: sqlx::PgPool) {
                    let store = super::postgres_store(pool).await;
                    super::$case(store.clone()).await;
                    store.close().await;
                }
            )*
        }
    };
}

both_backends!(
    writes_read_back_at_every_version,
    diff_lists_only_what_changed,
    rollback_restores_an_old_state,
    a_stale_base_is_refused_and_writes_nothing,
    a_failed_write_leaves_nothing_behind,
    versions_page_newest_first,
    tokens_are_stored_by_digest,
    tokens_are_created_once_and_the_last_admin_stays,
    a_schema_migrated_by_a_newer_release_still_opens,
    the_rollout_policy_keeps_its_first_baseline,
    rollouts_move_once_from_where_they_were_seen,
);

fn key(kind: Kind, id: &str) -> ResourceKey {
    ResourceKey::new(kind, id)
}

fn put(kind: Kind, id: &str, body: Value, op: ChangeOp) -> Change {
    Change {
        key: key(kind, id),
        body: Some(body),
        created_at: 1,
        op,
    }
}

fn delete(kind: Kind, id: &str) -> Change {
    Change {
        key: key(kind, id),
        body: None,
        created_at: 1,
        op: ChangeOp::Delete,
    }
}

fn meta() -> CommitMeta {
    CommitMeta {
        author: "admin".into(),
        message: Some("test".into()),
    }
}

fn ids(resources: &[StoredResource]) -> Vec<String> {
    resources.iter().map(|r| r.key.to_string()).collect()
}

async fn writes_read_back_at_every_version(store: Store) {
    assert_eq!(store.head().await.unwrap(), 0);
    let up = json!({"nodes": [{"host": "127.0.0.1", "port": 1}]});
    let v1 = store
        .commit(
            0,
            &meta(),
            &[put(Kind::Upstreams, "u", up.clone(), ChangeOp::Create)],
        )
        .await
        .unwrap();
    assert_eq!(v1.version, 1);
    let v2 = store
        .commit(
            1,
            &meta(),
            &[put(
                Kind::Routes,
                "r",
                json!({"paths": ["/"], "upstream_id": "u"}),
                ChangeOp::Create,
            )],
        )
        .await
        .unwrap();
    assert_eq!(v2.version, 2);
    let v3 = store
        .commit(2, &meta(), &[delete(Kind::Routes, "r")])
        .await
        .unwrap();
    assert_eq!(v3.version, 3);
    assert_eq!(store.head().await.unwrap(), 3);

    assert_eq!(ids(&store.config_at(1).await.unwrap()), ["upstreams/u"]);
    let at2 = store.config_at(2).await.unwrap();
    // Ordered by kind name, then id.
    assert_eq!(ids(&at2), ["routes/r", "upstreams/u"]);
    assert_eq!(at2[1].body, up);
    assert_eq!(at2[1].revision, 1);
    assert_eq!(at2[0].revision, 2);
    assert_eq!(ids(&store.config_at(3).await.unwrap()), ["upstreams/u"]);
    assert!(store.config_at(0).await.unwrap().is_empty());

    let info = store.version(2).await.unwrap().unwrap();
    assert_eq!(info.author, "admin");
    assert_eq!(info.message.as_deref(), Some("test"));
    assert_eq!(
        info.changes,
        [ChangeSummary {
            kind: Kind::Routes,
            id: "r".into(),
            op: ChangeOp::Create
        }]
    );
    assert!(store.version(9).await.unwrap().is_none());
}

async fn diff_lists_only_what_changed(store: Store) {
    let mut changes = Vec::new();
    for i in 0..1200 {
        changes.push(put(
            Kind::Upstreams,
            &format!("u{i}"),
            json!({"nodes": [{"host": "h", "port": 1}]}),
            ChangeOp::Create,
        ));
    }
    store.commit(0, &meta(), &changes).await.unwrap();
    store
        .commit(
            1,
            &meta(),
            &[put(
                Kind::Upstreams,
                "u7",
                json!({"nodes": [{"host": "h", "port": 2}]}),
                ChangeOp::Update,
            )],
        )
        .await
        .unwrap();
    store
        .commit(2, &meta(), &[delete(Kind::Upstreams, "u9")])
        .await
        .unwrap();
    assert_eq!(store.config_at(1).await.unwrap().len(), 1200);
    assert_eq!(store.config_at(3).await.unwrap().len(), 1199);

    let changed = store.changed_between(1, 3).await.unwrap();
    assert_eq!(
        changed,
        [key(Kind::Upstreams, "u7"), key(Kind::Upstreams, "u9")]
    );
    let before = store.changed_states(1, 1, 3).await.unwrap();
    let after = store.changed_states(3, 1, 3).await.unwrap();
    assert_eq!(
        before[&changed[0]].as_ref().unwrap().body["nodes"][0]["port"],
        1
    );
    assert_eq!(
        after[&changed[0]].as_ref().unwrap().body["nodes"][0]["port"],
        2
    );
    assert!(before[&changed[1]].is_some());
    assert!(after[&changed[1]].is_none());
    assert!(store.changed_between(3, 3).await.unwrap().is_empty());
}

async fn rollback_restores_an_old_state(store: Store) {
    let a = json!({"nodes": [{"host": "a", "port": 1}]});
    let b = json!({"nodes": [{"host": "b", "port": 1}]});
    store
        .commit(
            0,
            &meta(),
            &[put(Kind::Upstreams, "u", a.clone(), ChangeOp::Create)],
        )
        .await
        .unwrap();
    store
        .commit(
            1,
            &meta(),
            &[
                put(Kind::Upstreams, "u", b, ChangeOp::Update),
                put(Kind::Upstreams, "extra", a.clone(), ChangeOp::Create),
            ],
        )
        .await
        .unwrap();
    // A rollback is a forward write of the old states of what changed since.
    let changed = store.changed_between(1, 2).await.unwrap();
    let old = store.changed_states(1, 1, 2).await.unwrap();
    assert_eq!(old.keys().cloned().collect::<Vec<_>>(), changed);
    let restore: Vec<Change> = old
        .into_iter()
        .map(|(key, state)| Change {
            op: if state.is_some() {
                ChangeOp::Update
            } else {
                ChangeOp::Delete
            },
            body: state.map(|s| s.body),
            created_at: 1,
            key,
        })
        .collect();
    let v3 = store.commit(2, &meta(), &restore).await.unwrap();
    assert_eq!(v3.version, 3);
    let at1: Vec<Value> = store
        .config_at(1)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.body)
        .collect();
    let at3: Vec<Value> = store
        .config_at(3)
        .await
        .unwrap()
        .into_iter()
        .map(|r| r.body)
        .collect();
    assert_eq!(at1, at3);
    assert_eq!(at3, [a]);
}

async fn a_stale_base_is_refused_and_writes_nothing(store: Store) {
    let up = json!({"nodes": [{"host": "a", "port": 1}]});
    store
        .commit(
            0,
            &meta(),
            &[put(Kind::Upstreams, "u", up.clone(), ChangeOp::Create)],
        )
        .await
        .unwrap();
    let error = store
        .commit(
            0,
            &meta(),
            &[put(Kind::Upstreams, "v", up, ChangeOp::Create)],
        )
        .await
        .unwrap_err();
    assert!(
        matches!(
            error,
            StoreError::HeadMoved {
                expected: 0,
                found: 1
            }
        ),
        "{error:?}"
    );
    assert_eq!(store.head().await.unwrap(), 1);
    assert_eq!(ids(&store.config_at(1).await.unwrap()), ["upstreams/u"]);
    assert!(store.version(2).await.unwrap().is_none());
}

async fn a_failed_write_leaves_nothing_behind(store: Store) {
    let up = json!({"nodes": [{"host": "a", "port": 1}]});
    // The same resource twice in one version violates the primary key after the head row and
    // the version row were already written in the transaction: all of it must roll back.
    let error = store
        .commit(
            0,
            &meta(),
            &[
                put(Kind::Upstreams, "u", up.clone(), ChangeOp::Create),
                put(Kind::Upstreams, "u", up, ChangeOp::Create),
            ],
        )
        .await
        .unwrap_err();
    assert!(matches!(error, StoreError::Database(_)), "{error:?}");
    assert_eq!(store.head().await.unwrap(), 0);
    assert!(store.version(1).await.unwrap().is_none());
    assert!(store.config_at(1).await.unwrap().is_empty());
    assert!(store.list_versions(None, 10).await.unwrap().is_empty());
}

async fn versions_page_newest_first(store: Store) {
    for base in 0..5u64 {
        store
            .commit(
                base,
                &meta(),
                &[put(
                    Kind::Upstreams,
                    "u",
                    json!({"n": base}),
                    ChangeOp::Update,
                )],
            )
            .await
            .unwrap();
    }
    let first: Vec<u64> = store
        .list_versions(None, 2)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(first, [5, 4]);
    let next: Vec<u64> = store
        .list_versions(Some(4), 10)
        .await
        .unwrap()
        .iter()
        .map(|v| v.version)
        .collect();
    assert_eq!(next, [3, 2, 1]);
}

async fn tokens_are_stored_by_digest(store: Store) {
    assert!(store.tokens().await.unwrap().is_empty());
    let token = TokenRecord::new("admin", "ab".repeat(32), "admin");
    store.put_token(&token).await.unwrap();
    let rotated = TokenRecord {
        sha256: "cd".repeat(32),
        ..token
    };
    store.put_token(&rotated).await.unwrap();
    assert_eq!(
        store.tokens().await.unwrap(),
        std::slice::from_ref(&rotated)
    );
    assert_eq!(
        store.token_by_digest(&rotated.sha256).await.unwrap(),
        Some(rotated)
    );
    assert_eq!(store.token_by_digest(&"ab".repeat(32)).await.unwrap(), None);
}

async fn tokens_are_created_once_and_the_last_admin_stays(store: Store) {
    let admin = TokenRecord::new("root", "01".repeat(32), "admin");
    let ci = TokenRecord::new("ci", "02".repeat(32), "editor");
    assert!(store.create_token(&admin).await.unwrap());
    assert!(store.create_token(&ci).await.unwrap());
    let taken = TokenRecord::new("ci", "03".repeat(32), "viewer");
    assert!(
        !store.create_token(&taken).await.unwrap(),
        "the name is taken"
    );
    assert_eq!(
        store.token_by_digest(&ci.sha256).await.unwrap(),
        Some(ci.clone()),
        "nothing overwritten"
    );

    store.touch_token("ci", 42).await.unwrap();
    let touched = store.token_by_digest(&ci.sha256).await.unwrap().unwrap();
    assert_eq!(touched.last_used_at, Some(42));

    assert_eq!(
        store.remove_token("root").await.unwrap(),
        TokenRemoval::LastAdmin
    );
    assert_eq!(
        store.remove_token("ci").await.unwrap(),
        TokenRemoval::Removed
    );
    assert_eq!(
        store.remove_token("ci").await.unwrap(),
        TokenRemoval::NotFound
    );
    let second = TokenRecord::new("root-2", "04".repeat(32), "admin");
    assert!(store.create_token(&second).await.unwrap());
    assert_eq!(
        store.remove_token("root").await.unwrap(),
        TokenRemoval::Removed
    );
    assert_eq!(store.tokens().await.unwrap(), [second]);
}

async fn a_schema_migrated_by_a_newer_release_still_opens(store: Store) {
    let checksum = match store.backend {
        Backend::Postgres => "'\\x00'::bytea",
        Backend::Sqlite => "x'00'",
    };
    sqlx::query(&format!(
        "INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) \
         VALUES (99999, 'from a newer release', TRUE, {checksum}, 0)"
    ))
    .execute(&store.pool)
    .await
    .unwrap();
    let reopened = Store::connect(&store.url)
        .await
        .expect("an older release opens it");
    assert_eq!(reopened.store_id(), store.store_id());
    reopened.close().await;
}

async fn the_rollout_policy_keeps_its_first_baseline(store: Store) {
    assert_eq!(store.rollout_policy().await.unwrap(), None);
    store.put_rollout_policy("{\"a\":1}", 3).await.unwrap();
    // Replacing the policy keeps what the fleet is on: the baseline stays.
    store.put_rollout_policy("{\"a\":2}", 9).await.unwrap();
    let policy = store.rollout_policy().await.unwrap().unwrap();
    assert_eq!(
        (policy.body.as_str(), policy.baseline_version),
        ("{\"a\":2}", 3)
    );
    assert!(store.delete_rollout_policy().await.unwrap());
    assert!(!store.delete_rollout_policy().await.unwrap());
    assert_eq!(store.rollout_policy().await.unwrap(), None);
}

/// Every transition the driver (`crate::rollout`) makes, as the store takes it: a start, a
/// stage change two replicas race for, a halt, a promote, a supersession and an abort; each a
/// conditional move from where the caller saw the rollout.
async fn rollouts_move_once_from_where_they_were_seen(store: Store) {
    use crate::rollout::state::{ABORTED, COMPLETED, HALTED, IN_PROGRESS};
    let nodes = |ids: &[&str]| -> std::collections::BTreeSet<String> {
        ids.iter().map(|id| (*id).to_owned()).collect()
    };
    let start = |version: u64, previous_version: u64| RolloutRecord {
        version,
        previous_version,
        state: IN_PROGRESS.to_owned(),
        stage: 0,
        policy: "{}".to_owned(),
        created_at: 1,
        updated_at: 1,
        stage_started_at: 1,
        halt_reason: None,
        base_requests: 10,
        base_errors_5xx: 1,
        cohort: Some(nodes(&["dp-a"])),
    };

    // Start: one row per version, so a second replica's start of the same one is a no-op.
    let first = start(4, 3);
    assert!(store.insert_rollout(&first).await.unwrap());
    assert!(!store.insert_rollout(&start(4, 2)).await.unwrap());
    assert_eq!(store.rollout(4).await.unwrap(), Some(first));

    // Advance: two replicas make the same move at once with the cohorts each chose; one
    // wins, and its cohort is the stage's.
    let (one, two) = (store.clone(), store.clone());
    let (a, b) = (nodes(&["dp-a", "dp-b"]), nodes(&["dp-a", "dp-c"]));
    let (won_a, won_b) = tokio::join!(
        one.move_rollout(4, (IN_PROGRESS, 0), (IN_PROGRESS, 1), None, Some(&a)),
        two.move_rollout(4, (IN_PROGRESS, 0), (IN_PROGRESS, 1), None, Some(&b)),
    );
    let (won_a, won_b) = (won_a.unwrap(), won_b.unwrap());
    assert!(
        won_a != won_b,
        "exactly one replica moves it: {won_a} {won_b}"
    );
    let moved = store.rollout(4).await.unwrap().unwrap();
    assert_eq!(moved.stage, 1);
    assert!(moved.stage_started_at > 1, "a new stage starts its bake");
    assert_eq!(moved.cohort, Some(if won_a { a } else { b }));

    // Halt: a move from a stage already left does nothing; from the current one it halts,
    // keeping the cohort, and a halted rollout moves no more.
    assert!(
        !store
            .move_rollout(4, (IN_PROGRESS, 0), (HALTED, 0), Some("stale"), None)
            .await
            .unwrap()
    );
    assert!(
        store
            .move_rollout(
                4,
                (IN_PROGRESS, 1),
                (HALTED, 1),
                Some("dp-b rejected 4"),
                None
            )
            .await
            .unwrap()
    );
    let halted = store.rollout(4).await.unwrap().unwrap();
    assert_eq!(
        (halted.state.as_str(), halted.halt_reason.as_deref()),
        (HALTED, Some("dp-b rejected 4"))
    );
    assert_eq!(halted.cohort, moved.cohort);
    assert_eq!(halted.stage_started_at, moved.stage_started_at);
    assert!(
        !store
            .move_rollout(4, (IN_PROGRESS, 1), (COMPLETED, 2), None, None)
            .await
            .unwrap()
    );
    assert_eq!(store.last_completed_rollout().await.unwrap(), None);

    // Promote: straight to the last stage, completed; it is what the next rollout starts from.
    assert!(store.insert_rollout(&start(5, 3)).await.unwrap());
    assert!(
        store
            .move_rollout(5, (IN_PROGRESS, 0), (COMPLETED, 2), None, None)
            .await
            .unwrap()
    );
    assert_eq!(store.last_completed_rollout().await.unwrap(), Some(5));

    // Superseded by a new write: the running one is aborted with the reason, the new one
    // starts from the last completed version.
    assert!(store.insert_rollout(&start(6, 5)).await.unwrap());
    assert!(
        store
            .move_rollout(
                6,
                (IN_PROGRESS, 0),
                (ABORTED, 0),
                Some("superseded by version 7"),
                None
            )
            .await
            .unwrap()
    );
    assert!(store.insert_rollout(&start(7, 5)).await.unwrap());

    // Abort: by a user, from where it is.
    assert!(
        store
            .move_rollout(7, (IN_PROGRESS, 0), (ABORTED, 0), Some("aborted"), None)
            .await
            .unwrap()
    );
    let all = store.rollouts(10).await.unwrap();
    let summary: Vec<(u64, &str, Option<&str>)> = all
        .iter()
        .map(|r| (r.version, r.state.as_str(), r.halt_reason.as_deref()))
        .collect();
    assert_eq!(
        summary,
        [
            (7, ABORTED, Some("aborted")),
            (6, ABORTED, Some("superseded by version 7")),
            (5, COMPLETED, None),
            (4, HALTED, Some("dp-b rejected 4")),
        ]
    );
    assert_eq!(store.rollouts(1).await.unwrap().len(), 1, "the limit holds");
    assert_eq!(store.last_completed_rollout().await.unwrap(), Some(5));
}
