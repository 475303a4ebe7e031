//! Legacy password digests replaced after a successful login (issue 26).
//!
//! A data plane that verified a password against an earlier salted-SHA-256 digest hashes it
//! under argon2id and reports `(consumer, old digest, new digest)` on its config stream. The
//! control plane trusts none of it beyond this: a rehash is committed only when the new digest
//! is an argon2id PHC string with this build's parameters, the old one is a legacy digest, and
//! the consumer's stored digest is still that old one. What arrives within [`BATCH_WINDOW`] is
//! committed as one config version by [`AUTHOR`] through the normal write path, each consumer
//! under its revision: a consumer changed meanwhile is dropped, and the rest tried again. When
//! several data planes (or replicas) send the same rehash, the first one committed wins and the
//! others find the digest already replaced: nothing is written, no empty version.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway_proto::plugins::auth::{is_current_password_hash, is_legacy_password_hash};
use gateway_proto::{Kind, ResourceKey, pb};
use serde_json::Value;

use crate::config::{ConfigService, ConfigState, WriteError, WriteOp};
use crate::store::CommitMeta;

/// The author of the versions that store rehashed digests.
pub const AUTHOR: &str = "system:rehash";
/// How long rehashes are gathered before they are committed together.
pub const BATCH_WINDOW: Duration = Duration::from_secs(1);
/// Rehashes waiting at most; beyond that they are dropped (the data plane rehashes again on a
/// later login).
pub const MAX_WAITING: usize = 4096;
/// Attempts at one batch when consumers keep changing under it.
const ATTEMPTS: usize = 3;

/// Where a basic-auth credential keeps its digest.
const PASSWORD_HASH: &str = "/credentials/basic-auth/password_hash";

/// Rehashes waiting for their batch to be committed.
#[derive(Debug, Default)]
pub struct Queue {
    waiting: Arc<Mutex<Vec<pb::CredentialRehash>>>,
}

/// Queues `rehashed` on `queue`; the first of a batch starts its commit, [`BATCH_WINDOW`] later.
pub fn submit(config: &Arc<ConfigService>, queue: &Queue, rehashed: Vec<pb::CredentialRehash>) {
    if rehashed.is_empty() {
        return;
    }
    let mut waiting = queue.waiting.lock().unwrap_or_else(|e| e.into_inner());
    let first = waiting.is_empty();
    let room = MAX_WAITING.saturating_sub(waiting.len());
    if rehashed.len() > room {
        tracing::warn!(
            dropped = rehashed.len() - room,
            "too many rehashed password digests waiting; dropping some"
        );
    }
    waiting.extend(rehashed.into_iter().take(room));
    drop(waiting);
    if first {
        let config = Arc::clone(config);
        let waiting = Arc::clone(&queue.waiting);
        tokio::spawn(async move {
            tokio::time::sleep(BATCH_WINDOW).await;
            let batch = std::mem::take(&mut *waiting.lock().unwrap_or_else(|e| e.into_inner()));
            commit(&config, &batch).await;
        });
    }
}

/// Commits the acceptable rehashes of `batch` as one version; the version written, if any.
pub async fn commit(config: &ConfigService, batch: &[pb::CredentialRehash]) -> Option<u64> {
    for _ in 0..ATTEMPTS {
        let documents = replacements(&config.current(), batch);
        if documents.is_empty() {
            return None;
        }
        let count = documents.len();
        let meta = CommitMeta {
            author: AUTHOR.to_owned(),
            message: Some(format!(
                "rehash {count} legacy password digest{}",
                if count == 1 { "" } else { "s" }
            )),
        };
        match config
            .write(WriteOp::PutRevisions { documents }, &meta, false)
            .await
        {
            Ok(outcome) => {
                tracing::info!(
                    version = outcome.version,
                    count,
                    "stored rehashed password digests"
                );
                return outcome.written.then_some(outcome.version);
            }
            // A consumer changed since it was read: read again, and drop what no longer holds.
            Err(WriteError::PreconditionFailed { .. }) => {}
            Err(error) => {
                tracing::warn!(%error, count, "cannot store rehashed password digests");
                return None;
            }
        }
    }
    tracing::warn!("consumers kept changing; rehashed password digests not stored");
    None
}

/// The consumers `batch` may change in `current`: each with its new document and the revision
/// it was read at. Anything else is left out (a bad digest with a warning).
fn replacements(
    current: &ConfigState,
    batch: &[pb::CredentialRehash],
) -> Vec<(ResourceKey, Value, u64)> {
    let mut documents = BTreeMap::new();
    for rehash in batch {
        if rehash.plugin != "basic-auth"
            || !is_legacy_password_hash(&rehash.old_digest)
            || !is_current_password_hash(&rehash.new_digest)
        {
            tracing::warn!(
                consumer = %rehash.consumer,
                plugin = %rehash.plugin,
                "ignoring a rehash that is not a legacy basic-auth digest replaced by this \
                 build's argon2id"
            );
            continue;
        }
        let key = ResourceKey::new(Kind::Consumers, rehash.consumer.clone());
        if documents.contains_key(&key) {
            continue;
        }
        let Some(entry) = current.resources.get(&key) else {
            continue;
        };
        if entry.body.pointer(PASSWORD_HASH).and_then(Value::as_str)
            != Some(rehash.old_digest.as_str())
        {
            // Rehashed already, or the password was written since.
            continue;
        }
        let mut body = entry.body.clone();
        if let Some(stored) = body.pointer_mut(PASSWORD_HASH) {
            *stored = Value::String(rehash.new_digest.clone());
        }
        documents.insert(key, (body, entry.revision));
    }
    documents
        .into_iter()
        .map(|(key, (body, revision))| (key, body, revision))
        .collect()
}

#[cfg(test)]
mod tests {
    use gateway_proto::plugins::auth::{hash_password, hash_password_sha256, verify_password};
    use serde_json::json;

    use super::*;
    use crate::config::IfMatch;
    use crate::store::tests::sqlite_store;

    async fn put(config: &ConfigService, id: &str, document: Value) -> u64 {
        let op = WriteOp::Put {
            key: ResourceKey::new(Kind::Consumers, id.to_owned()),
            document,
            if_match: None::<IfMatch>,
        };
        let meta = CommitMeta {
            author: "test".into(),
            message: None,
        };
        config.write(op, &meta, false).await.unwrap().version
    }

    fn legacy(id: &str, password: &str) -> Value {
        json!({"credentials": {"basic-auth": {"username": id,
            "password_hash": hash_password_sha256(password, &[4; 16])}}})
    }

    fn rehash(id: &str, old: &str, new: &str) -> pb::CredentialRehash {
        pb::CredentialRehash {
            consumer: id.into(),
            plugin: "basic-auth".into(),
            old_digest: old.into(),
            new_digest: new.into(),
        }
    }

    fn stored(config: &ConfigService, id: &str) -> String {
        let key = ResourceKey::new(Kind::Consumers, id.to_owned());
        config.current().resources[&key]
            .body
            .pointer(PASSWORD_HASH)
            .and_then(Value::as_str)
            .unwrap()
            .to_owned()
    }

    #[tokio::test]
    async fn acceptable_rehashes_are_one_version_and_repeats_write_nothing() {
        let config = ConfigService::load(sqlite_store().await).await.unwrap();
        put(&config, "ann", legacy("ann", "pw-a")).await;
        put(&config, "ben", legacy("ben", "pw-b")).await;
        put(&config, "cat", legacy("cat", "pw-c")).await;
        let before = config.current().version;
        let (ann, ben, cat) = (
            stored(&config, "ann"),
            stored(&config, "ben"),
            stored(&config, "cat"),
        );
        let new_ann = hash_password("pw-a", &[5; 16]);
        let new_ben = hash_password("pw-b", &[6; 16]);
        let batch = [
            rehash("ann", &ann, &new_ann),
            rehash("ben", &ben, &new_ben),
            // Refused: a cheaper KDF, a digest that is no PHC string, an unknown consumer, a
            // stale old digest, another plugin.
            rehash("cat", &cat, &new_ann.replace("m=19456,t=2", "m=1024,t=1")),
            rehash("cat", &cat, "plain"),
            rehash("nobody", &cat, &new_ann),
            rehash("ben", &ann, &new_ann),
            pb::CredentialRehash {
                plugin: "key-auth".into(),
                ..rehash("cat", &cat, &new_ann)
            },
        ];
        let version = commit(&config, &batch).await.expect("a version");
        assert_eq!(version, before + 1);
        let info = config.store().version(version).await.unwrap().unwrap();
        assert_eq!(info.author, AUTHOR);
        assert_eq!(
            info.message.as_deref(),
            Some("rehash 2 legacy password digests")
        );
        assert_eq!(stored(&config, "ann"), new_ann);
        assert!(verify_password(&stored(&config, "ben"), "pw-b"));
        assert_eq!(stored(&config, "cat"), cat, "untouched");
        // Another data plane's report of the same logins: nothing left to replace.
        assert_eq!(commit(&config, &batch).await, None);
        assert_eq!(config.current().version, version);
    }

    #[tokio::test]
    async fn a_consumer_written_since_keeps_its_new_password() {
        let config = ConfigService::load(sqlite_store().await).await.unwrap();
        put(&config, "dan", legacy("dan", "old")).await;
        let old = stored(&config, "dan");
        put(
            &config,
            "dan",
            json!({"credentials": {"basic-auth": {"username": "dan", "password": "new"}}}),
        )
        .await;
        let version = config.current().version;
        let late = rehash("dan", &old, &hash_password("old", &[7; 16]));
        assert_eq!(commit(&config, &[late]).await, None);
        assert_eq!(config.current().version, version);
        assert!(verify_password(&stored(&config, "dan"), "new"));
    }

    #[tokio::test]
    async fn put_revisions_writes_all_or_nothing() {
        // What `commit` relies on to drop a consumer changed under it and try the rest again.
        let config = ConfigService::load(sqlite_store().await).await.unwrap();
        let first = put(&config, "eve", legacy("eve", "a")).await;
        let second = put(&config, "fay", legacy("fay", "b")).await;
        let key = |id: &str| ResourceKey::new(Kind::Consumers, id.to_owned());
        let document =
            |id: &str| json!({"credentials": {"basic-auth": {"username": id, "password": "c"}}});
        let stale = WriteOp::PutRevisions {
            documents: vec![
                (key("eve"), document("eve"), first),
                (key("fay"), document("fay"), first),
            ],
        };
        let meta = CommitMeta::default();
        let refused = config.write(stale, &meta, false).await;
        assert!(
            matches!(refused, Err(WriteError::PreconditionFailed { .. })),
            "{refused:?}"
        );
        assert_eq!(config.current().version, second);
        let fresh = WriteOp::PutRevisions {
            documents: vec![
                (key("eve"), document("eve"), first),
                (key("fay"), document("fay"), second),
            ],
        };
        let written = config.write(fresh, &meta, false).await.unwrap();
        assert_eq!(written.version, second + 1);
        assert!(
            verify_password(&stored(&config, "fay"), "c"),
            "sealed as usual"
        );
    }
}
