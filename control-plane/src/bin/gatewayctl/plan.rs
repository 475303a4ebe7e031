//! From files and the server's config to one `PUT /api/v1/config` body and the diff it makes.
//!
//! The body is the server's current config with the resources in scope replaced by the
//! files' (all of them, or with `--select` only those carrying the labels). A resource whose
//! file document means the same as the server's ([`crate::normalize::canonical`]) is sent as
//! the server wrote it, so the server — which compares documents byte for byte — sees no
//! change there either, and a version is written only when something really changes.
//!
//! Consumer credentials are write-only: the server answers an API key as its digest, a
//! password as its salted hash and a JWT secret as `<redacted>`, and takes each of those
//! forms back as "keep what is stored". So a file's plaintext key or password is checked
//! against the digest and, when it matches, sent in the server's form (no change); a file
//! that leaves out a credential scheme the server has keeps the server's (unless
//! `--prune-credentials`), with a note; a plaintext JWT secret (or another secret the server
//! redacts: a certificate's key, proxy-cache's `purge_key`) cannot be compared here, so the
//! server's dry run says whether it changed.

use std::collections::{BTreeMap, BTreeSet};

use gateway_proto::model::{Parsed, write_only_fields};
use gateway_proto::plugins::auth::{REDACTED, key_digest, verify_password};
use gateway_proto::snapshot::dangling_references;
use gateway_proto::{Kind, ResourceKey, check_new_document, validate_resource};
use serde_json::{Map, Value};

use crate::client::{ApiFailure, CtlError, Problem};
use crate::diff::{FieldChange, Op, ResourceChange, field_changes, show_defaults};
use crate::files::Desired;
use crate::normalize::{canonical, default_at, strip_server_fields};

/// The server's config as `GET /api/v1/config` answers it.
#[derive(Clone, Debug, Default)]
pub struct ServerConfig {
    /// The version it reflects.
    pub version: u64,
    /// Every resource of a kind this build knows, without server-managed fields.
    pub resources: BTreeMap<ResourceKey, Value>,
    /// Collections this build does not know (a newer server): carried through untouched, so
    /// a whole-config write never deletes what it cannot see.
    pub unknown: Vec<(String, Value)>,
}

impl ServerConfig {
    /// Reads the export body.
    pub fn from_export(body: &Value) -> Result<ServerConfig, CtlError> {
        let Value::Object(sections) = body else {
            return Err(CtlError::Transport(
                "GET /api/v1/config did not answer a JSON object".into(),
            ));
        };
        let mut config = ServerConfig {
            version: body["version"].as_u64().unwrap_or_default(),
            ..ServerConfig::default()
        };
        for (name, items) in sections {
            if name == "version" {
                continue;
            }
            let Some(kind) = Kind::ALL.into_iter().find(|k| k.as_str() == name) else {
                config.unknown.push((name.clone(), items.clone()));
                continue;
            };
            for item in items.as_array().into_iter().flatten() {
                let Some(id) = item["id"].as_str() else {
                    return Err(CtlError::Transport(format!(
                        "GET /api/v1/config answered a {name} entry without an id"
                    )));
                };
                let mut body = item.clone();
                strip_server_fields(&mut body);
                config.resources.insert(ResourceKey::new(kind, id), body);
            }
        }
        Ok(config)
    }
}

/// What `apply` and `diff` do besides replacing everything.
#[derive(Clone, Debug, Default)]
pub struct Options {
    /// `--select label=value`: only resources carrying every one of these labels are touched.
    pub select: Vec<(String, String)>,
    /// `--prune-credentials`: a consumer's credentials are exactly the file's.
    pub prune_credentials: bool,
}

/// The write that makes the server's config match the files.
#[derive(Clone, Debug)]
pub struct Plan {
    /// What changes, in kind then id order.
    pub changes: Vec<ResourceChange>,
    /// The `PUT /api/v1/config` body.
    pub body: Value,
    /// Things worth saying that are not changes (credentials kept, resources skipped).
    pub notes: Vec<String>,
    /// Resources whose only difference may be a write-only secret given in plain text: changes
    /// until the server's dry run says otherwise.
    pub uncertain: BTreeSet<ResourceKey>,
    /// The server's config version the plan is based on.
    pub base_version: u64,
    /// For each resource in the body, where it sits (`/routes/3`) and where it came from.
    placements: Vec<Placement>,
}

#[derive(Clone, Debug)]
struct Placement {
    prefix: String,
    key: ResourceKey,
    file: Option<String>,
}

/// Validates every file resource on its own (schema and the rules for new documents), each
/// problem named by file, resource and pointer.
pub fn validate_documents(desired: &Desired) -> (BTreeMap<ResourceKey, Parsed>, Vec<Problem>) {
    let mut parsed = BTreeMap::new();
    let mut problems = Vec::new();
    for (key, resource) in &desired.resources {
        let located = |violation: gateway_proto::Violation| Problem {
            file: resource.origin.file.clone(),
            resource: Some(key.to_string()),
            pointer: violation.pointer,
            message: violation.message,
        };
        match validate_resource(key.kind, &resource.body) {
            Ok(reading) => {
                problems.extend(check_new_document(&reading).into_iter().map(located));
                parsed.insert(key.clone(), reading);
            }
            Err(violations) => problems.extend(violations.into_iter().map(located)),
        }
    }
    (parsed, problems)
}

/// Reference and credential problems of a whole config: references that do not resolve
/// within it (`exists` says what it holds, valid or not), and a credential claimed by two
/// consumers. `origin` names a resource's file.
pub fn check_whole(
    parsed: &BTreeMap<ResourceKey, Parsed>,
    exists: impl Fn(&ResourceKey) -> bool,
    origin: impl Fn(&ResourceKey) -> String,
) -> Vec<Problem> {
    let mut problems: Vec<Problem> = dangling_references(parsed.iter(), exists)
        .into_iter()
        .map(|dangling| Problem {
            file: origin(&dangling.from),
            resource: Some(dangling.from.to_string()),
            pointer: dangling.pointer.clone(),
            message: format!("{} does not exist", dangling.to),
        })
        .collect();
    let consumers = parsed.iter().filter_map(|(key, reading)| match reading {
        Parsed::Consumer(consumer) => Some((key.id.as_str(), consumer)),
        _ => None,
    });
    for (id, message) in gateway_proto::model::credential_conflicts(consumers) {
        let key = ResourceKey::new(Kind::Consumers, id);
        problems.push(Problem {
            file: origin(&key),
            resource: Some(key.to_string()),
            pointer: "/credentials".into(),
            message,
        });
    }
    problems
}

/// Whether `document` carries every selected label.
fn selected(document: &Value, select: &[(String, String)]) -> bool {
    select
        .iter()
        .all(|(name, value)| document["labels"][name].as_str() == Some(value.as_str()))
}

/// Works out the write. Fails only on a selection that cannot be honoured safely.
pub fn build(
    server: &ServerConfig,
    desired: &Desired,
    options: &Options,
) -> Result<Plan, CtlError> {
    let mut notes = Vec::new();
    let mut problems = Vec::new();
    let mut skipped = 0usize;
    // The resources this plan decides about: the server's in scope and the files' in scope.
    let mut in_scope: BTreeSet<&ResourceKey> = BTreeSet::new();
    for (key, document) in &server.resources {
        if selected(document, &options.select) {
            in_scope.insert(key);
        }
    }
    for (key, resource) in &desired.resources {
        if selected(&resource.body, &options.select) {
            in_scope.insert(key);
        } else if in_scope.contains(key) {
            // The file has it without the labels, the server with them: deleting it (not in
            // the selected files) or updating it (named in a file) would both surprise.
            problems.push(Problem {
                file: resource.origin.file.clone(),
                resource: Some(key.to_string()),
                pointer: "/labels".into(),
                message: "carries the selected labels on the server but not in the file; --select cannot tell whether to update or delete it".into(),
            });
        } else {
            skipped += 1;
        }
    }
    if !problems.is_empty() {
        return Err(CtlError::Invalid(problems));
    }
    if skipped > 0 {
        notes.push(format!(
            "{skipped} resource(s) in the files lack the selected labels and were left out"
        ));
    }

    let mut final_documents: BTreeMap<ResourceKey, (Value, Option<String>)> = BTreeMap::new();
    let mut changes = Vec::new();
    let mut uncertain = BTreeSet::new();
    for (key, document) in &server.resources {
        if !in_scope.contains(key) {
            final_documents.insert(key.clone(), (document.clone(), None));
        }
    }
    for key in in_scope {
        let on_server = server.resources.get(key);
        let in_file = desired.resources.get(key);
        match (on_server, in_file) {
            (Some(_), None) => changes.push(ResourceChange {
                resource: key.to_string(),
                op: Op::Remove,
                fields: Vec::new(),
                note: None,
            }),
            (None, Some(resource)) => {
                changes.push(ResourceChange {
                    resource: key.to_string(),
                    op: Op::Add,
                    fields: Vec::new(),
                    note: None,
                });
                final_documents.insert(
                    key.clone(),
                    (resource.body.clone(), Some(resource.origin.file.clone())),
                );
            }
            (Some(current), Some(resource)) => {
                let mut wanted = resource.body.clone();
                if key.kind == Kind::Consumers {
                    let kept =
                        reconcile_credentials(&mut wanted, current, options.prune_credentials);
                    if !kept.is_empty() {
                        notes.push(format!(
                            "{key}: kept the server's {} credentials, absent from {} (--prune-credentials drops them)",
                            kept.join(", "),
                            resource.origin.file
                        ));
                    }
                }
                let before = canonical(key.kind, current);
                let after = canonical(key.kind, &wanted);
                let unknown = unknown_secrets(key.kind, &wanted, current);
                let mut comparable_after = after.clone();
                for &pointer in &unknown {
                    if let Some(secret) = comparable_after.pointer_mut(pointer) {
                        *secret = Value::String(REDACTED.into());
                    }
                }
                let mut fields = field_changes(&before, &comparable_after);
                show_defaults(&mut fields, |pointer| default_at(key.kind, pointer));
                let origin = Some(resource.origin.file.clone());
                if fields.is_empty() && unknown.is_empty() {
                    // The same meaning: send the server's own words so it sees no change.
                    final_documents.insert(key.clone(), (current.clone(), origin));
                    continue;
                }
                let mut change = ResourceChange {
                    resource: key.to_string(),
                    op: Op::Change,
                    fields,
                    note: None,
                };
                if !unknown.is_empty() {
                    change.note = Some(format!(
                        "{} write-only: sent as given, changed only if it differs",
                        match unknown.as_slice() {
                            [one] => format!("{one} is"),
                            many => format!("{} are", many.join(", ")),
                        }
                    ));
                    if change.fields.is_empty() {
                        change
                            .fields
                            .extend(unknown.iter().map(|&pointer| FieldChange {
                                pointer: pointer.into(),
                                before: Some(Value::String(REDACTED.into())),
                                after: Some(Value::String(REDACTED.into())),
                            }));
                        uncertain.insert(key.clone());
                        // The same meaning but for the secrets: the server's own words with
                        // the file's secrets, so its dry run sees only what they change.
                        let mut sent = current.clone();
                        for &pointer in &unknown {
                            if let (Some(slot), Some(secret)) =
                                (sent.pointer_mut(pointer), wanted.pointer(pointer))
                            {
                                *slot = secret.clone();
                            }
                        }
                        changes.push(change);
                        final_documents.insert(key.clone(), (sent, origin));
                        continue;
                    }
                }
                changes.push(change);
                final_documents.insert(key.clone(), (wanted, origin));
            }
            (None, None) => {}
        }
    }

    let mut sections: Map<String, Value> = Map::new();
    let mut placements = Vec::new();
    for kind in Kind::ALL {
        let mut items = Vec::new();
        for (key, (document, file)) in final_documents.iter().filter(|(k, _)| k.kind == kind) {
            placements.push(Placement {
                prefix: format!("/{}/{}", kind.as_str(), items.len()),
                key: key.clone(),
                file: file.clone(),
            });
            let mut item = Map::new();
            item.insert("id".into(), Value::String(key.id.clone()));
            if let Value::Object(fields) = document {
                item.extend(fields.clone());
            }
            items.push(Value::Object(item));
        }
        sections.insert(kind.as_str().into(), Value::Array(items));
    }
    for (name, items) in &server.unknown {
        sections.insert(name.clone(), items.clone());
    }
    Ok(Plan {
        changes,
        body: Value::Object(sections),
        notes,
        uncertain,
        base_version: server.version,
        placements,
    })
}

impl Plan {
    /// Every resource the write would leave, parsed; problems of files' resources located.
    /// Reference and credential checks over the whole result, as the server will make them.
    pub fn check_result(&self) -> Vec<Problem> {
        let mut parsed = BTreeMap::new();
        for (kind, items) in Kind::ALL
            .into_iter()
            .filter_map(|k| Some((k, self.body.get(k.as_str())?.as_array()?)))
        {
            for item in items {
                let mut document = item.clone();
                strip_server_fields(&mut document);
                let Some(id) = item["id"].as_str() else {
                    continue;
                };
                if let Ok(reading) = validate_resource(kind, &document) {
                    parsed.insert(ResourceKey::new(kind, id), reading);
                }
            }
        }
        let files: BTreeMap<&ResourceKey, &str> = self
            .placements
            .iter()
            .filter_map(|p| Some((&p.key, p.file.as_deref()?)))
            .collect();
        let exists = |key: &ResourceKey| parsed.contains_key(key);
        check_whole(&parsed, exists, |key| {
            files
                .get(key)
                .map_or_else(|| "(on the server)".to_owned(), |f| (*f).to_owned())
        })
    }

    /// Settles the resources whose write-only secret could not be compared, from the changes the
    /// server's dry run reported: one it does not list did not change.
    pub fn settle_secrets(&mut self, dry_run_changes: &Value) {
        let listed: BTreeSet<String> = dry_run_changes
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| Some(format!("{}/{}", c["kind"].as_str()?, c["id"].as_str()?)))
            .collect();
        let settled: BTreeSet<String> = self
            .uncertain
            .iter()
            .map(ToString::to_string)
            .filter(|name| !listed.contains(name))
            .collect();
        self.changes.retain(|c| !settled.contains(&c.resource));
        for change in &mut self.changes {
            if listed.contains(&change.resource)
                && self
                    .uncertain
                    .iter()
                    .any(|k| k.to_string() == change.resource)
            {
                change.note = Some("the write-only secret differs from the stored one".into());
            }
        }
        self.uncertain.clear();
    }

    /// Marks the uncertain resources as changes the server could not confirm (no dry run
    /// allowed, e.g. a read-only token).
    pub fn leave_secrets_unsettled(&mut self, why: &str) {
        for change in &mut self.changes {
            if self
                .uncertain
                .iter()
                .any(|k| k.to_string() == change.resource)
            {
                change.note = Some(format!(
                    "the secret is write-only and the server's dry run was refused ({why}): counted as a change"
                ));
            }
        }
        self.uncertain.clear();
    }

    /// Names the resource and file behind each pointer of a server error about this body
    /// (`/routes/3/upstream_id` → `routes/r1 (routes.yaml): /upstream_id`).
    pub fn locate(&self, failure: &mut ApiFailure) {
        for detail in &mut failure.details {
            let found = self.placements.iter().find(|p| {
                detail.pointer == p.prefix || detail.pointer.starts_with(&format!("{}/", p.prefix))
            });
            if let Some(placement) = found {
                let within = &detail.pointer[placement.prefix.len()..];
                let file = placement
                    .file
                    .as_deref()
                    .map_or_else(|| "on the server".to_owned(), str::to_owned);
                let resource = format!("{} ({file})", placement.key);
                detail.located = Some(if within.is_empty() {
                    resource
                } else {
                    format!("{resource}: {within}")
                });
            }
        }
    }
}

/// Makes a consumer's credentials in `wanted` comparable with the server's `current`:
/// a plaintext key or password that matches the stored digest takes the stored form, and a
/// scheme the server has but the file leaves out is kept (unless `prune`). Returns the kept
/// schemes.
fn reconcile_credentials(wanted: &mut Value, current: &Value, prune: bool) -> Vec<String> {
    let stored = current.get("credentials").and_then(Value::as_object);
    let Some(stored) = stored else {
        return Vec::new();
    };
    if let (Some(Value::String(key)), Some(Value::String(digest))) = (
        wanted.pointer("/credentials/key-auth/key"),
        stored.get("key-auth").and_then(|c| c.get("key_sha256")),
    ) && key_digest(key) == *digest
        && let Some(credential) = wanted.pointer_mut("/credentials/key-auth")
    {
        *credential = stored["key-auth"].clone();
    }
    if let (Some(Value::String(password)), Some(Value::String(hash))) = (
        wanted.pointer("/credentials/basic-auth/password"),
        stored
            .get("basic-auth")
            .and_then(|c| c.get("password_hash")),
    ) && verify_password(hash, password)
        && wanted.pointer("/credentials/basic-auth/username")
            == stored.get("basic-auth").and_then(|c| c.get("username"))
        && let Some(credential) = wanted.pointer_mut("/credentials/basic-auth")
    {
        *credential = stored["basic-auth"].clone();
    }
    if prune {
        return Vec::new();
    }
    let mut kept = Vec::new();
    let Value::Object(fields) = wanted else {
        return kept;
    };
    let credentials = fields
        .entry("credentials")
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(credentials) = credentials {
        for (scheme, credential) in stored {
            if !credentials.contains_key(scheme) {
                credentials.insert(scheme.clone(), credential.clone());
                kept.push(scheme.clone());
            }
        }
    }
    kept
}

/// The write-only fields (a JWT secret, a certificate's private key, a `purge_key`: see
/// [`write_only_fields`]) that `wanted` gives in plaintext while the server shows only the
/// placeholder: this side cannot tell whether they differ.
fn unknown_secrets(kind: Kind, wanted: &Value, current: &Value) -> Vec<&'static str> {
    fn text<'a>(document: &'a Value, pointer: &str) -> Option<&'a str> {
        document.pointer(pointer).and_then(Value::as_str)
    }
    write_only_fields(kind)
        .iter()
        .copied()
        .filter(|&pointer| {
            text(wanted, pointer).is_some_and(|s| s != REDACTED)
                && text(current, pointer) == Some(REDACTED)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::files::{DesiredResource, Origin};
    use gateway_proto::plugins::auth::hash_password;
    use serde_json::json;

    fn server(resources: &[(Kind, &str, Value)]) -> ServerConfig {
        ServerConfig {
            version: 7,
            resources: resources
                .iter()
                .map(|(kind, id, body)| (ResourceKey::new(*kind, *id), body.clone()))
                .collect(),
            unknown: vec![("certificates".into(), json!([{"id": "c1"}]))],
        }
    }

    fn files(resources: &[(Kind, &str, Value)]) -> Desired {
        Desired {
            resources: resources
                .iter()
                .map(|(kind, id, body)| {
                    (
                        ResourceKey::new(*kind, *id),
                        DesiredResource {
                            body: body.clone(),
                            origin: Origin {
                                file: "config.yaml".into(),
                            },
                        },
                    )
                })
                .collect(),
            files: 1,
        }
    }

    fn ids(body: &Value, kind: Kind) -> Vec<&str> {
        body[kind.as_str()]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["id"].as_str().unwrap())
            .collect()
    }

    #[test]
    fn defaults_and_server_fields_make_no_change_and_the_server_form_is_sent() {
        let stored = json!({"nodes": [{"host": "h", "port": 1}]});
        let written =
            json!({"nodes": [{"host": "h", "port": 1, "weight": 1}], "lb": "round_robin"});
        let plan = build(
            &server(&[(Kind::Upstreams, "u", stored.clone())]),
            &files(&[(Kind::Upstreams, "u", written)]),
            &Options::default(),
        )
        .unwrap();
        assert!(plan.changes.is_empty(), "{:?}", plan.changes);
        assert_eq!(
            plan.body["upstreams"][0],
            json!({"id": "u", "nodes": [{"host": "h", "port": 1}]})
        );
        // What this build does not know is carried through.
        assert_eq!(plan.body["certificates"], json!([{"id": "c1"}]));
    }

    #[test]
    fn selection_touches_only_labelled_resources() {
        let team_a = json!({"nodes": [{"host": "a", "port": 1}], "labels": {"team": "a"}});
        let plan = build(
            &server(&[
                (Kind::Upstreams, "gone", team_a.clone()),
                (
                    Kind::Upstreams,
                    "other",
                    json!({"nodes": [{"host": "o", "port": 1}]}),
                ),
            ]),
            &files(&[
                (Kind::Upstreams, "new", team_a.clone()),
                (
                    Kind::Upstreams,
                    "unlabelled",
                    json!({"nodes": [{"host": "u", "port": 1}]}),
                ),
            ]),
            &Options {
                select: vec![("team".into(), "a".into())],
                prune_credentials: false,
            },
        )
        .unwrap();
        assert_eq!(ids(&plan.body, Kind::Upstreams), ["new", "other"]);
        let ops: Vec<(String, Op)> = plan
            .changes
            .iter()
            .map(|c| (c.resource.clone(), c.op))
            .collect();
        assert_eq!(
            ops,
            [
                ("upstreams/gone".into(), Op::Remove),
                ("upstreams/new".into(), Op::Add)
            ]
        );
        assert_eq!(plan.notes.len(), 1, "{:?}", plan.notes);
    }

    #[test]
    fn a_selection_that_would_guess_is_refused() {
        let result = build(
            &server(&[(
                Kind::Upstreams,
                "u",
                json!({"nodes": [], "labels": {"team": "a"}}),
            )]),
            &files(&[(Kind::Upstreams, "u", json!({"nodes": []}))]),
            &Options {
                select: vec![("team".into(), "a".into())],
                prune_credentials: false,
            },
        );
        assert!(matches!(result, Err(CtlError::Invalid(_))));
    }

    #[test]
    fn credentials_only_on_the_server_are_kept_unless_pruned() {
        let stored = json!({"credentials": {
            "key-auth": {"key_sha256": key_digest("alice-key-1")},
            "basic-auth": {"username": "alice", "password_hash": hash_password("pw", &[7; 16])}}});
        let cases = [
            // No credentials in the file: both kept, no change.
            (json!({}), false, 0, vec!["basic-auth", "key-auth"]),
            // The same plaintext key and password: the stored forms are sent, no change.
            (
                json!({"credentials": {"key-auth": {"key": "alice-key-1"}, "basic-auth": {"username": "alice", "password": "pw"}}}),
                false,
                0,
                vec!["basic-auth", "key-auth"],
            ),
            // A new key: a change, the password kept.
            (
                json!({"credentials": {"key-auth": {"key": "alice-key-2"}}}),
                false,
                1,
                vec!["basic-auth", "key-auth"],
            ),
            // Pruned: basic-auth goes.
            (
                json!({"credentials": {"key-auth": {"key": "alice-key-1"}}}),
                true,
                1,
                vec!["key-auth"],
            ),
        ];
        for (wanted, prune, expected_changes, schemes) in cases {
            let plan = build(
                &server(&[(Kind::Consumers, "alice", stored.clone())]),
                &files(&[(Kind::Consumers, "alice", wanted.clone())]),
                &Options {
                    select: Vec::new(),
                    prune_credentials: prune,
                },
            )
            .unwrap();
            assert_eq!(
                plan.changes.len(),
                expected_changes,
                "{wanted}: {:?}",
                plan.changes
            );
            let sent = &plan.body["consumers"][0]["credentials"];
            let mut sent_schemes: Vec<&String> = sent.as_object().unwrap().keys().collect();
            sent_schemes.sort();
            assert_eq!(sent_schemes, schemes, "{wanted}");
            if expected_changes == 0 {
                assert_eq!(*sent, stored["credentials"], "{wanted}");
            }
        }
    }

    #[test]
    fn a_plaintext_jwt_secret_waits_for_the_servers_word() {
        let stored = json!({"credentials": {"jwt-auth": {"key": "k", "secret": REDACTED}}});
        let wanted = json!({"credentials": {"jwt-auth": {"key": "k", "secret": "s3cret-value"}}});
        let mut plan = build(
            &server(&[(Kind::Consumers, "alice", stored.clone())]),
            &files(&[(Kind::Consumers, "alice", wanted)]),
            &Options::default(),
        )
        .unwrap();
        assert_eq!(plan.changes.len(), 1);
        assert_eq!(plan.uncertain.len(), 1);
        let mut unchanged = plan.clone();
        unchanged.settle_secrets(&json!([]));
        assert!(unchanged.changes.is_empty());
        plan.settle_secrets(&json!([{"kind": "consumers", "id": "alice", "op": "update"}]));
        assert_eq!(plan.changes.len(), 1);

        // The exported form (redacted) is no change at all.
        let plan = build(
            &server(&[(Kind::Consumers, "alice", stored.clone())]),
            &files(&[(Kind::Consumers, "alice", stored)]),
            &Options::default(),
        )
        .unwrap();
        assert!(plan.changes.is_empty() && plan.uncertain.is_empty());
    }

    #[test]
    fn server_pointers_are_traced_back_to_files() {
        let plan = build(
            &server(&[(
                Kind::Upstreams,
                "u",
                json!({"nodes": [{"host": "h", "port": 1}]}),
            )]),
            &files(&[
                (
                    Kind::Upstreams,
                    "u",
                    json!({"nodes": [{"host": "h", "port": 1}]}),
                ),
                (
                    Kind::Routes,
                    "a",
                    json!({"paths": ["/a"], "upstream_id": "u"}),
                ),
                (
                    Kind::Routes,
                    "b",
                    json!({"paths": ["/b"], "upstream_id": "nope"}),
                ),
            ]),
            &Options::default(),
        )
        .unwrap();
        let mut failure = ApiFailure {
            status: 400,
            code: "schema_violation".into(),
            message: "1".into(),
            details: vec![crate::client::Detail {
                pointer: "/routes/1/upstream_id".into(),
                message: "bad".into(),
                located: None,
            }],
            request: "PUT /api/v1/config".into(),
        };
        plan.locate(&mut failure);
        assert_eq!(
            failure.details[0].located.as_deref(),
            Some("routes/b (config.yaml): /upstream_id")
        );
        let problems = plan.check_result();
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert_eq!(
            problems[0].to_string(),
            "config.yaml: routes/b: /upstream_id: upstreams/nope does not exist"
        );
    }
}
