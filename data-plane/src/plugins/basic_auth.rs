//! `basic-auth`: identifies the consumer by HTTP Basic credentials (RFC 7617).
//!
//! Passwords are stored as argon2id hashes (see `gateway_proto::plugins::auth`): one
//! verification is some 20 ms of a core and 19 MiB. It never runs on the async workers: a
//! [`Verifier`] (one per process, in the [`super::BuildEnv`]) runs it on tokio's blocking pool,
//! at most [`Verifier::MAX_RUNNING`] at once (memory stays bounded whatever the burst) and at
//! most [`Verifier::MAX_WAITING`] waiting (beyond that a login is answered 503 at once). A
//! successful verification is remembered for [`CACHE_TTL_MS`] under an HMAC-SHA-256, with a
//! random key of this process, of (consumer, stored hash, presented password): a client that
//! sends the same credentials on every request pays the KDF once, the cache holds no password
//! nor anything to test guesses against offline, and a changed password (a new stored hash)
//! misses. A failed verification is never remembered. Earlier salted-SHA-256 digests are
//! checked inline (they are cheap). After a successful login against one, the password is
//! hashed under argon2id on the same bounded pool and handed to the config stream's reports
//! ([`Verifier::on_rehash`]); the control plane stores it as a new config version. One rehash
//! per credential is in flight at a time: a credential rehashed less than
//! [`REHASH_AGAIN_AFTER_MS`] ago is not rehashed again (the control plane may still be
//! committing it, or dropped it because the consumer changed meanwhile).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use base64::Engine;
use hmac::{Hmac, Mac};
use http::header::{AUTHORIZATION, WWW_AUTHENTICATE};
use http::{HeaderMap, HeaderValue, StatusCode, request};
use serde_json::Value;
use sha2::Sha256;
use tokio::sync::Semaphore;

use super::key_auth::identify;
use super::{Access, BuildEnv, ConsumerRuntime, Plugin, Reject, RequestCtx, reject};
use crate::clock::coarse_now_ms;
use gateway_proto::pb;
use gateway_proto::plugins::auth::{BasicAuthConfig, hash_password, is_legacy_password_hash};

/// How long a successful verification is remembered.
pub const CACHE_TTL_MS: u64 = 5 * 60 * 1000;
/// Remembered verifications at most (32 bytes and an expiry each: ~1.5 MB when full).
pub const CACHE_CAPACITY: usize = 32_768;
/// How long after a legacy digest's rehash a login may rehash it again (when the control
/// plane did not replace it: a lost report, or a consumer that changed meanwhile).
pub const REHASH_AGAIN_AFTER_MS: u64 = 60 * 1000;
/// Legacy credentials being rehashed at most; beyond that a login rehashes nothing (the next
/// one will).
pub const MAX_REHASHING: usize = 1024;

/// Where rehashed legacy digests go: the config stream's reports.
type RehashSink = Box<dyn Fn(pb::CredentialRehash) + Send + Sync>;

/// A compiled `basic-auth`.
#[derive(Debug)]
pub struct BasicAuth {
    priority: i32,
    hide_credentials: bool,
    verifier: Arc<Verifier>,
}

impl BasicAuth {
    /// Compiles a validated config.
    pub fn build(priority: i32, config: &Value, env: &BuildEnv) -> Result<BasicAuth, String> {
        let config: BasicAuthConfig =
            serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        Ok(BasicAuth {
            priority,
            hide_credentials: config.hide_credentials,
            verifier: Arc::clone(&env.basic_auth),
        })
    }
}

/// Runs slow password verifications off the async workers and remembers the successful ones.
/// One per process: it outlives snapshots, so a config push keeps the cache.
pub struct Verifier {
    /// The HMAC key of the cache's keys: random, this process's only.
    key: [u8; 32],
    /// Cache key → coarse expiry (ms).
    verified: Mutex<HashMap<[u8; 32], u64>>,
    running: Arc<Semaphore>,
    waiting: AtomicUsize,
    kdf_runs: AtomicU64,
    cache_hits: AtomicU64,
    refused_busy: AtomicU64,
    /// Set once the data plane's reports exist; without it nothing is rehashed.
    rehash_sink: OnceLock<RehashSink>,
    /// (consumer id, legacy digest) → coarse time (ms) its rehash may run again.
    rehashing: Mutex<HashMap<(String, String), u64>>,
}

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("kdf_runs", &self.kdf_runs)
            .field("rehash_sink", &self.rehash_sink.get().is_some())
            .finish_non_exhaustive()
    }
}

impl Default for Verifier {
    fn default() -> Self {
        let mut key = [0u8; 32];
        // Without the OS's randomness the process could not make TLS keys either; a zero key
        // would still only key this process's cache, never a credential.
        if getrandom::fill(&mut key).is_err() {
            tracing::error!("no randomness for the basic-auth cache key");
        }
        Verifier {
            key,
            verified: Mutex::new(HashMap::new()),
            running: Arc::new(Semaphore::new(Verifier::MAX_RUNNING)),
            waiting: AtomicUsize::new(0),
            kdf_runs: AtomicU64::new(0),
            cache_hits: AtomicU64::new(0),
            refused_busy: AtomicU64::new(0),
            rehash_sink: OnceLock::new(),
            rehashing: Mutex::new(HashMap::new()),
        }
    }
}

/// The outcome of a verification that may have to wait for the KDF.
pub enum Verdict {
    /// Known at once.
    Now(bool),
    /// Running on the blocking pool.
    Later(futures_util::future::BoxFuture<'static, Result<bool, Busy>>),
}

/// Too many verifications waiting already.
#[derive(Debug)]
pub struct Busy;

impl Verifier {
    /// KDF runs at once: two, each on a blocking thread with 19 MiB, whatever the core count
    /// (the proxy's workers keep the cores; a burst of logins queues here).
    pub const MAX_RUNNING: usize = 2;
    /// Verifications waiting for a run; beyond that a login is refused (503) at once.
    pub const MAX_WAITING: usize = 256;

    /// Verifies `password` against `consumer`'s basic-auth credential.
    pub fn verify(self: &Arc<Self>, consumer: &ConsumerRuntime, password: &str) -> Verdict {
        let Some(credential) = consumer.spec.credentials.basic_auth.as_ref() else {
            return Verdict::Now(false);
        };
        if !credential.is_slow() {
            let verified = credential.verify(password);
            if verified && let Some(stored) = credential.password_hash.as_deref() {
                self.rehash_legacy(&consumer.id, stored, password);
            }
            return Verdict::Now(verified);
        }
        let cache_key = self.cache_key(&consumer.id, credential.password_hash.as_deref(), password);
        if self.remembered(&cache_key) {
            self.cache_hits.fetch_add(1, Ordering::Relaxed);
            return Verdict::Now(true);
        }
        if self.waiting.fetch_add(1, Ordering::AcqRel) >= Verifier::MAX_WAITING {
            self.waiting.fetch_sub(1, Ordering::AcqRel);
            self.refused_busy.fetch_add(1, Ordering::Relaxed);
            return Verdict::Later(Box::pin(async { Err(Busy) }));
        }
        let this = Arc::clone(self);
        let credential = credential.clone();
        let password = password.to_owned();
        Verdict::Later(Box::pin(async move {
            let permit = Arc::clone(&this.running).acquire_owned().await;
            this.waiting.fetch_sub(1, Ordering::AcqRel);
            let Ok(permit) = permit else {
                return Err(Busy);
            };
            let runner = Arc::clone(&this);
            let verified = tokio::task::spawn_blocking(move || {
                let _permit = permit;
                runner.kdf_runs.fetch_add(1, Ordering::Relaxed);
                credential.verify(&password)
            })
            .await
            .unwrap_or(false);
            if verified {
                this.remember(cache_key);
            }
            Ok(verified)
        }))
    }

    /// Sends every legacy digest rehashed from now on to `sink` (the config stream's reports).
    /// Set once; later calls are ignored.
    pub fn on_rehash(&self, sink: impl Fn(pb::CredentialRehash) + Send + Sync + 'static) {
        let _ = self.rehash_sink.set(Box::new(sink));
    }

    /// After a successful login against `stored`: when it is a legacy digest, hashes `password`
    /// under argon2id on the KDF's pool and hands the result to the sink, unless that
    /// credential was rehashed recently. Needs a tokio runtime and a sink; without either,
    /// nothing happens.
    fn rehash_legacy(self: &Arc<Self>, consumer: &str, stored: &str, password: &str) {
        if !is_legacy_password_hash(stored) || self.rehash_sink.get().is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let now = coarse_now_ms();
        let key = (consumer.to_owned(), stored.to_owned());
        {
            let mut rehashing = self.rehashing.lock().unwrap_or_else(|e| e.into_inner());
            if rehashing.get(&key).is_some_and(|&again| again > now) {
                return;
            }
            if rehashing.len() >= MAX_REHASHING {
                rehashing.retain(|_, &mut again| again > now);
                if rehashing.len() >= MAX_REHASHING {
                    return;
                }
            }
            rehashing.insert(key.clone(), now + REHASH_AGAIN_AFTER_MS);
        }
        let mut salt = [0u8; 16];
        if getrandom::fill(&mut salt).is_err() {
            tracing::error!("no randomness for a password salt; the legacy digest stays");
            return;
        }
        let this = Arc::clone(self);
        let password = password.to_owned();
        runtime.spawn(async move {
            let hashed = match Arc::clone(&this.running).acquire_owned().await {
                Ok(permit) => tokio::task::spawn_blocking(move || {
                    let _permit = permit;
                    hash_password(&password, &salt)
                })
                .await
                .ok(),
                Err(_) => None,
            };
            let (consumer, old_digest) = key;
            match (hashed, this.rehash_sink.get()) {
                (Some(new_digest), Some(sink)) => sink(pb::CredentialRehash {
                    consumer,
                    plugin: "basic-auth".to_owned(),
                    old_digest,
                    new_digest,
                }),
                // Not rehashed: the next login may try again.
                _ => {
                    this.rehashing
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .remove(&(consumer, old_digest));
                }
            }
        });
    }

    /// HMAC-SHA-256 of (consumer id, stored hash, password), each length-prefixed.
    fn cache_key(&self, consumer: &str, stored: Option<&str>, password: &str) -> [u8; 32] {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(&self.key)
            .expect("HMAC takes a key of any length");
        for part in [consumer, stored.unwrap_or_default(), password] {
            mac.update(&(part.len() as u64).to_be_bytes());
            mac.update(part.as_bytes());
        }
        mac.finalize().into_bytes().into()
    }

    fn remembered(&self, key: &[u8; 32]) -> bool {
        let verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        verified
            .get(key)
            .is_some_and(|&expires| expires > coarse_now_ms())
    }

    fn remember(&self, key: [u8; 32]) {
        let now = coarse_now_ms();
        let mut verified = self.verified.lock().unwrap_or_else(|e| e.into_inner());
        if verified.len() >= CACHE_CAPACITY {
            verified.retain(|_, &mut expires| expires > now);
            // Still full of live entries: start over (each costs its client one more KDF run).
            if verified.len() >= CACHE_CAPACITY {
                verified.clear();
            }
        }
        verified.insert(key, now + CACHE_TTL_MS);
    }

    /// KDF runs so far.
    pub fn kdf_runs(&self) -> u64 {
        self.kdf_runs.load(Ordering::Relaxed)
    }

    /// Appends the verifier's counters to a `/metrics` text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write as _;
        // Writing to a String cannot fail; the result is ignored for that reason.
        let _ = write!(
            out,
            "# HELP gateway_basic_auth_kdf_runs_total basic-auth password verifications that ran \
             the KDF (argon2id).\n\
             # TYPE gateway_basic_auth_kdf_runs_total counter\n\
             gateway_basic_auth_kdf_runs_total {}\n\
             # HELP gateway_basic_auth_cache_hits_total basic-auth logins accepted from the cache \
             of successful verifications.\n\
             # TYPE gateway_basic_auth_cache_hits_total counter\n\
             gateway_basic_auth_cache_hits_total {}\n\
             # HELP gateway_basic_auth_busy_total basic-auth logins refused (503) because too \
             many verifications were waiting.\n\
             # TYPE gateway_basic_auth_busy_total counter\n\
             gateway_basic_auth_busy_total {}\n",
            self.kdf_runs(),
            self.cache_hits.load(Ordering::Relaxed),
            self.refused_busy.load(Ordering::Relaxed),
        );
    }
}

fn challenge(message: &str) -> Reject {
    let mut response = reject(StatusCode::UNAUTHORIZED, "unauthorized", message);
    response.headers_mut().insert(
        WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"gateway\", charset=\"UTF-8\""),
    );
    response
}

/// The user name and password of a `Basic` authorization header.
fn credentials(value: &HeaderValue) -> Option<(String, String)> {
    let text = value.to_str().ok()?;
    let (scheme, encoded) = text.trim().split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let decoded = base64::engine::general_purpose::STANDARD
        .decode(encoded.trim())
        .ok()?;
    let decoded = String::from_utf8(decoded).ok()?;
    let (user, password) = decoded.split_once(':')?;
    Some((user.to_owned(), password.to_owned()))
}

impl Plugin for BasicAuth {
    fn name(&self) -> &'static str {
        "basic-auth"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, request: &mut request::Parts) -> Access {
        let Some(value) = request.headers.get(AUTHORIZATION) else {
            return Access::Reject(challenge("missing basic credentials"));
        };
        let Some((user, password)) = credentials(value) else {
            return Access::Reject(challenge("malformed basic credentials"));
        };
        let Some(consumer) = ctx.consumers.by_basic_username.get(&user).cloned() else {
            return Access::Reject(challenge("invalid user name or password"));
        };
        match self.verifier.verify(&consumer, &password) {
            Verdict::Now(false) => Access::Reject(challenge("invalid user name or password")),
            Verdict::Now(true) => {
                if self.hide_credentials {
                    request.headers.remove(AUTHORIZATION);
                }
                identify(ctx, request, &consumer);
                Access::Continue
            }
            Verdict::Later(verdict) => {
                // The header goes now (the request is refused anyway if the password is
                // wrong); the consumer is identified only once the verdict is in.
                if self.hide_credentials {
                    request.headers.remove(AUTHORIZATION);
                }
                let check = Box::pin(async move {
                    match verdict.await {
                        Ok(true) => Ok(HeaderMap::new()),
                        Ok(false) => Err(challenge("invalid user name or password")),
                        Err(Busy) => Err(reject(
                            StatusCode::SERVICE_UNAVAILABLE,
                            "busy",
                            "too many logins are being verified; retry shortly",
                        )),
                    }
                });
                Access::Identify(check, consumer)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use gateway_proto::model::Consumer;
    use gateway_proto::plugins::auth::{hash_password, hash_password_sha256};
    use serde_json::json;

    use super::*;

    #[test]
    fn basic_credentials_parse_or_are_refused() {
        let ok = HeaderValue::from_static("Basic YWxpY2U6cDpx");
        assert_eq!(credentials(&ok), Some(("alice".into(), "p:q".into())));
        for bad in ["Bearer x", "Basic !!!", "Basic", "Basic YWxpY2U=", ""] {
            assert_eq!(credentials(&HeaderValue::from_static(bad)), None, "{bad}");
        }
    }

    fn consumer(id: &str, password_hash: &str) -> ConsumerRuntime {
        let spec: Consumer = serde_json::from_value(json!({"credentials": {"basic-auth":
            {"username": id, "password_hash": password_hash}}}))
        .unwrap();
        ConsumerRuntime {
            id: id.into(),
            username: id.into(),
            plugins: Vec::new(),
            jwt: None,
            spec,
        }
    }

    async fn verdict(verifier: &Arc<Verifier>, consumer: &ConsumerRuntime, pw: &str) -> bool {
        match verifier.verify(consumer, pw) {
            Verdict::Now(verified) => verified,
            Verdict::Later(later) => later.await.unwrap(),
        }
    }

    #[tokio::test]
    async fn a_slow_hash_runs_once_per_credentials_and_failures_are_never_remembered() {
        let verifier = Arc::new(Verifier::default());
        let alice = consumer("alice", &hash_password("right", &[1; 16]));
        for _ in 0..5 {
            assert!(verdict(&verifier, &alice, "right").await);
        }
        assert_eq!(verifier.kdf_runs(), 1, "one KDF run, then the cache");
        for _ in 0..2 {
            assert!(!verdict(&verifier, &alice, "wrong").await);
        }
        assert_eq!(verifier.kdf_runs(), 3, "every failure runs the KDF again");
        // The same password under a new stored hash (a rotation) is verified again.
        let rotated = consumer("alice", &hash_password("right", &[2; 16]));
        assert!(verdict(&verifier, &rotated, "right").await);
        assert_eq!(verifier.kdf_runs(), 4);
        let mut text = String::new();
        verifier.render(&mut text);
        assert!(
            text.contains("\ngateway_basic_auth_kdf_runs_total 4\n"),
            "{text}"
        );
        assert!(
            text.contains("\ngateway_basic_auth_cache_hits_total 4\n"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn salted_sha256_digests_are_checked_inline() {
        let verifier = Arc::new(Verifier::default());
        let bob = consumer("bob", &hash_password_sha256("pw", &[3; 16]));
        assert!(matches!(verifier.verify(&bob, "pw"), Verdict::Now(true)));
        assert!(matches!(verifier.verify(&bob, "no"), Verdict::Now(false)));
        assert_eq!(verifier.kdf_runs(), 0);
    }

    #[tokio::test]
    async fn a_legacy_digest_is_rehashed_once_after_a_successful_login_only() {
        let verifier = Arc::new(Verifier::default());
        let legacy = hash_password_sha256("pw", &[3; 16]);
        let bob = consumer("bob", &legacy);
        // No sink yet (no config stream): nothing is rehashed.
        assert!(matches!(verifier.verify(&bob, "pw"), Verdict::Now(true)));
        let (sent, mut received) = tokio::sync::mpsc::unbounded_channel();
        verifier.on_rehash(move |rehash| {
            let _ = sent.send(rehash);
        });
        assert!(matches!(
            verifier.verify(&bob, "wrong"),
            Verdict::Now(false)
        ));
        for _ in 0..3 {
            assert!(matches!(verifier.verify(&bob, "pw"), Verdict::Now(true)));
        }
        let rehash = received.recv().await.unwrap();
        assert_eq!(
            (rehash.consumer.as_str(), rehash.plugin.as_str()),
            ("bob", "basic-auth")
        );
        assert_eq!(rehash.old_digest, legacy);
        assert!(gateway_proto::plugins::auth::is_current_password_hash(
            &rehash.new_digest
        ));
        assert!(gateway_proto::plugins::auth::verify_password(
            &rehash.new_digest,
            "pw"
        ));
        // A wrong password and three logins made one rehash; an argon2id credential is never
        // rehashed.
        let alice = consumer("alice", &hash_password("pw", &[1; 16]));
        assert!(verdict(&verifier, &alice, "pw").await);
        let more = tokio::time::timeout(std::time::Duration::from_secs(3), received.recv()).await;
        assert!(more.is_err(), "{more:?}");
    }

    #[test]
    fn cache_keys_depend_on_every_part_and_on_the_process_key() {
        let a = Verifier::default();
        let b = Verifier::default();
        let key = a.cache_key("c", Some("h"), "pw");
        assert_ne!(key, b.cache_key("c", Some("h"), "pw"), "a per-process key");
        assert_ne!(key, a.cache_key("c", Some("h"), "pW"));
        assert_ne!(key, a.cache_key("c", Some("h2"), "pw"));
        assert_ne!(
            a.cache_key("ab", Some(""), "c"),
            a.cache_key("a", Some("bc"), "")
        );
    }
}
