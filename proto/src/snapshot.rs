//! A whole config at one version, and whole-snapshot validation.
//!
//! The control plane publishes a version only when every reference in it resolves (like
//! go-control-plane's `Snapshot.Consistent()`); the data plane checks again when it receives a
//! snapshot and NACKs one that fails, so a bug on either side cannot put a broken config in
//! front of traffic.

use std::collections::BTreeMap;

use thiserror::Error;

use crate::model::{
    Consumer, GlobalRule, Kind, Parsed, ResourceKey, Route, Upstream, credential_conflicts,
    is_valid_id,
};
use crate::pb;
use crate::schema::{Violation, validate_resource};

/// One resource of a snapshot.
#[derive(Clone, Debug, PartialEq)]
pub struct SnapshotResource {
    /// The config version in which this resource last changed.
    pub revision: u64,
    /// The validated, typed resource.
    pub parsed: Parsed,
}

/// Every resource of a config at one version, validated.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Snapshot {
    /// The config version.
    pub version: u64,
    /// Every resource, keyed by kind and id.
    pub resources: BTreeMap<ResourceKey, SnapshotResource>,
}

/// What [`Snapshot::apply_delta`] replaced, to take it back.
#[derive(Debug)]
#[must_use = "without it a delta cannot be taken back"]
pub struct DeltaUndo {
    version: u64,
    replaced: Vec<(ResourceKey, Option<SnapshotResource>)>,
}

/// Why a snapshot was refused. Its text is what a data plane puts in a NACK's `error_detail`.
#[derive(Debug, Error, PartialEq)]
pub enum SnapshotError {
    /// `version_info` is not a config version.
    #[error("version_info {0:?} is not a config version")]
    BadVersion(String),
    /// A resource of a kind this build does not know.
    #[error("resource {id:?} has unknown kind {kind:?}")]
    UnknownKind {
        /// The unknown kind.
        kind: String,
        /// The resource's id.
        id: String,
    },
    /// The same resource appears twice.
    #[error("resource {0} appears twice")]
    Duplicate(ResourceKey),
    /// An id the admin API would never accept (the data plane keys inline upstreams by
    /// `route:<id>`, which relies on ids without `:`).
    #[error("resource of kind {kind:?} has an invalid id {id:?}")]
    InvalidId {
        /// The resource's kind.
        kind: String,
        /// The offending id.
        id: String,
    },
    /// A resource body is not JSON.
    #[error("resource {key} is not valid JSON: {error}")]
    NotJson {
        /// The resource.
        key: ResourceKey,
        /// The parser's message.
        error: String,
    },
    /// A resource fails its schema or semantic rules.
    #[error("resource {key} is invalid: {}", describe(.violations))]
    Invalid {
        /// The resource.
        key: ResourceKey,
        /// Every violation.
        violations: Vec<Violation>,
    },
    /// References that do not resolve.
    #[error("dangling references: {}", describe_dangling(.0))]
    Dangling(Vec<DanglingReference>),
    /// Credentials claimed by more than one consumer.
    #[error("conflicting credentials: {}", .0.join("; "))]
    CredentialConflict(Vec<String>),
}

/// A reference from one resource to another that is not in the config.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DanglingReference {
    /// The resource holding the reference.
    pub from: ResourceKey,
    /// The missing resource.
    pub to: ResourceKey,
    /// Where `from`'s document names `to` (a JSON pointer; `""` if it cannot be located).
    pub pointer: String,
}

impl DanglingReference {
    /// The violation as the admin API reports it, located in the referring document.
    pub fn violation(&self) -> Violation {
        Violation::new(
            self.pointer.clone(),
            format!("{} references {}, which does not exist", self.from, self.to),
        )
    }
}

/// Where `parsed` names `target`, as JSON pointers into its document: a client fixing the
/// document needs the field, not just the id (`/batch/requests/2/upstream_id` rather than
/// `/upstream_id`, which may not even be set). One pointer per place that names it, in
/// document order; `[""]` if none is found, so every reference has a location.
pub fn reference_pointers(parsed: &Parsed, target: &ResourceKey) -> Vec<String> {
    let mut pointers = Vec::new();
    if target.kind != Kind::Upstreams {
        return vec![String::new()];
    }
    let id = target.id.as_str();
    if let Parsed::Route(route) = parsed {
        if route.upstream_id.as_deref() == Some(id) {
            pointers.push("/upstream_id".to_owned());
        }
        let requests = route
            .batch
            .iter()
            .flat_map(|b| b.requests.iter().enumerate());
        for (i, request) in requests {
            if request.upstream_id == id {
                pointers.push(format!("/batch/requests/{i}/upstream_id"));
            }
        }
    }
    // `traffic-split`'s config is kept as JSON: walk the same fields its `upstream_ids` reads.
    let rules = parsed
        .plugins()
        .and_then(|plugins| plugins.get("traffic-split"))
        .and_then(|config| config.get("rules"))
        .and_then(serde_json::Value::as_array);
    for (r, rule) in rules.into_iter().flatten().enumerate() {
        let entries = rule
            .get("weighted_upstreams")
            .and_then(serde_json::Value::as_array);
        for (w, entry) in entries.into_iter().flatten().enumerate() {
            if entry.get("upstream_id").and_then(serde_json::Value::as_str) == Some(id) {
                pointers.push(format!(
                    "/plugins/traffic-split/rules/{r}/weighted_upstreams/{w}/upstream_id"
                ));
            }
        }
    }
    if pointers.is_empty() {
        pointers.push(String::new());
    }
    pointers
}

fn describe(violations: &[Violation]) -> String {
    violations
        .iter()
        .map(|v| {
            format!(
                "{} {}",
                if v.pointer.is_empty() {
                    "/"
                } else {
                    &v.pointer
                },
                v.message
            )
        })
        .collect::<Vec<_>>()
        .join("; ")
}

fn describe_dangling(refs: &[DanglingReference]) -> String {
    let mut pairs: Vec<String> = refs
        .iter()
        .map(|r| format!("{} -> {}", r.from, r.to))
        .collect();
    // A resource naming one missing target in several places is one line of a NACK.
    pairs.dedup();
    pairs.join(", ")
}

/// Every reference among `resources` whose target `exists` says is missing.
pub fn dangling_references<'a>(
    resources: impl IntoIterator<Item = (&'a ResourceKey, &'a Parsed)>,
    exists: impl Fn(&ResourceKey) -> bool,
) -> Vec<DanglingReference> {
    let mut dangling = Vec::new();
    for (key, parsed) in resources {
        for target in parsed.references() {
            if !exists(&target) {
                // One entry per place that names it: each is a field to fix.
                for pointer in reference_pointers(parsed, &target) {
                    dangling.push(DanglingReference {
                        from: key.clone(),
                        to: target.clone(),
                        pointer,
                    });
                }
            }
        }
    }
    dangling
}

fn parse_version(text: &str) -> Result<u64, SnapshotError> {
    text.parse::<u64>()
        .map_err(|_| SnapshotError::BadVersion(text.to_owned()))
}

/// Decodes one resource of the config stream and validates it against its schema.
fn decode_resource(
    resource: &pb::Resource,
) -> Result<(ResourceKey, SnapshotResource), SnapshotError> {
    let kind = Kind::parse(&resource.kind).ok_or_else(|| SnapshotError::UnknownKind {
        kind: resource.kind.clone(),
        id: resource.id.clone(),
    })?;
    if !is_valid_id(&resource.id) {
        return Err(SnapshotError::InvalidId {
            kind: resource.kind.clone(),
            id: resource.id.clone(),
        });
    }
    let key = ResourceKey::new(kind, resource.id.clone());
    let document: serde_json::Value =
        serde_json::from_slice(&resource.body).map_err(|e| SnapshotError::NotJson {
            key: key.clone(),
            error: e.to_string(),
        })?;
    let parsed =
        validate_resource(kind, &document).map_err(|violations| SnapshotError::Invalid {
            key: key.clone(),
            violations,
        })?;
    let entry = SnapshotResource {
        revision: resource.revision,
        parsed,
    };
    Ok((key, entry))
}

impl Snapshot {
    /// Decodes and validates a whole snapshot received on the config stream: every body
    /// against its schema, then every reference.
    pub fn from_wire(response: &pb::DiscoveryResponse) -> Result<Snapshot, SnapshotError> {
        let version = parse_version(&response.version_info)?;
        let mut resources = BTreeMap::new();
        for resource in &response.resources {
            let (key, entry) = decode_resource(resource)?;
            if resources.insert(key.clone(), entry).is_some() {
                return Err(SnapshotError::Duplicate(key));
            }
        }
        let snapshot = Snapshot { version, resources };
        snapshot.check_references()?;
        Ok(snapshot)
    }

    /// Applies a delta received on the config stream (its `base_version` must be this
    /// snapshot's version; the caller checks): the changed resources are validated against
    /// their schemas, the removed ones dropped, then every reference of the result checked.
    ///
    /// On error the snapshot is left exactly as it was; on success the returned [`DeltaUndo`]
    /// takes it back (when what comes next, compiling it, fails). Unchanged resources are
    /// neither copied nor validated again, so a one-route change costs one route, plus the
    /// reference check over the whole config.
    pub fn apply_delta(
        &mut self,
        delta: &pb::DiscoveryResponse,
    ) -> Result<DeltaUndo, SnapshotError> {
        let version = parse_version(&delta.version_info)?;
        let mut changed = BTreeMap::new();
        for resource in &delta.resources {
            let (key, entry) = decode_resource(resource)?;
            if changed.insert(key.clone(), Some(entry)).is_some() {
                return Err(SnapshotError::Duplicate(key));
            }
        }
        for removed in &delta.removed {
            let kind = Kind::parse(&removed.kind).ok_or_else(|| SnapshotError::UnknownKind {
                kind: removed.kind.clone(),
                id: removed.id.clone(),
            })?;
            // A resource created and removed again since the base is named without being in
            // it: removing what is not there changes nothing (as in xDS incremental).
            let key = ResourceKey::new(kind, removed.id.clone());
            if changed.insert(key.clone(), None).is_some() {
                return Err(SnapshotError::Duplicate(key));
            }
        }
        // Swap the changes in, keeping what they replaced, so a failed check can be undone.
        let mut replaced = Vec::with_capacity(changed.len());
        for (key, entry) in changed {
            let before = match entry {
                Some(entry) => self.resources.insert(key.clone(), entry),
                None => self.resources.remove(&key),
            };
            replaced.push((key, before));
        }
        let undo = DeltaUndo {
            version: std::mem::replace(&mut self.version, version),
            replaced,
        };
        if let Err(error) = self.check_references() {
            self.undo(undo);
            return Err(error);
        }
        Ok(undo)
    }

    /// Takes back a delta applied by [`Snapshot::apply_delta`] (the last one applied).
    pub fn undo(&mut self, undo: DeltaUndo) {
        for (key, before) in undo.replaced {
            match before {
                Some(entry) => self.resources.insert(key, entry),
                None => self.resources.remove(&key),
            };
        }
        self.version = undo.version;
    }

    /// Fails with every reference that does not resolve, or with credentials that two
    /// consumers share.
    pub fn check_references(&self) -> Result<(), SnapshotError> {
        let dangling = dangling_references(
            self.resources.iter().map(|(k, r)| (k, &r.parsed)),
            |target| self.resources.contains_key(target),
        );
        if !dangling.is_empty() {
            return Err(SnapshotError::Dangling(dangling));
        }
        let conflicts = credential_conflicts(self.consumers().map(|(id, _, c)| (id, c)));
        if conflicts.is_empty() {
            Ok(())
        } else {
            Err(SnapshotError::CredentialConflict(
                conflicts.into_iter().map(|(_, message)| message).collect(),
            ))
        }
    }

    /// The upstreams, by id.
    pub fn upstreams(&self) -> impl Iterator<Item = (&str, &SnapshotResource, &Upstream)> {
        self.resources
            .iter()
            .filter_map(|(key, r)| match &r.parsed {
                Parsed::Upstream(u) => Some((key.id.as_str(), r, u)),
                _ => None,
            })
    }

    /// The consumers, by id.
    pub fn consumers(&self) -> impl Iterator<Item = (&str, &SnapshotResource, &Consumer)> {
        self.resources
            .iter()
            .filter_map(|(key, r)| match &r.parsed {
                Parsed::Consumer(c) => Some((key.id.as_str(), r, c)),
                _ => None,
            })
    }

    /// The global rules, by id.
    pub fn global_rules(&self) -> impl Iterator<Item = (&str, &SnapshotResource, &GlobalRule)> {
        self.resources
            .iter()
            .filter_map(|(key, r)| match &r.parsed {
                Parsed::GlobalRule(g) => Some((key.id.as_str(), r, g)),
                _ => None,
            })
    }

    /// The routes, by id.
    pub fn routes(&self) -> impl Iterator<Item = (&str, &SnapshotResource, &Route)> {
        self.resources
            .iter()
            .filter_map(|(key, r)| match &r.parsed {
                Parsed::Route(route) => Some((key.id.as_str(), r, route)),
                _ => None,
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn wire(version: &str, resources: &[(&str, &str, serde_json::Value)]) -> pb::DiscoveryResponse {
        pb::DiscoveryResponse {
            version_info: version.into(),
            nonce: "n".into(),
            type_url: pb::SNAPSHOT_TYPE_URL.into(),
            control_plane_id: "cp".into(),
            resources: resources
                .iter()
                .map(|(kind, id, body)| pb::Resource {
                    kind: (*kind).into(),
                    id: (*id).into(),
                    revision: 1,
                    body: serde_json::to_vec(body).unwrap().into(),
                })
                .collect(),
            ..Default::default()
        }
    }

    fn delta(
        version: &str,
        resources: &[(&str, &str, serde_json::Value)],
        removed: &[(&str, &str)],
    ) -> pb::DiscoveryResponse {
        pb::DiscoveryResponse {
            removed: removed
                .iter()
                .map(|(kind, id)| pb::ResourceRef {
                    kind: (*kind).into(),
                    id: (*id).into(),
                })
                .collect(),
            ..wire(version, resources)
        }
    }

    #[test]
    fn a_delta_changes_only_what_it_names_and_a_bad_one_changes_nothing() {
        let upstream = json!({"nodes": [{"host": "127.0.0.1", "port": 1}]});
        let mut snapshot = Snapshot::from_wire(&wire(
            "1",
            &[
                ("upstreams", "u", upstream.clone()),
                ("upstreams", "spare", upstream.clone()),
                ("routes", "a", json!({"paths": ["/a"], "upstream_id": "u"})),
                ("routes", "b", json!({"paths": ["/b"], "upstream_id": "u"})),
            ],
        ))
        .unwrap();
        let _ = snapshot
            .apply_delta(&delta(
                "2",
                &[(
                    "routes",
                    "c",
                    json!({"paths": ["/c"], "upstream_id": "spare"}),
                )],
                &[("routes", "a")],
            ))
            .unwrap();
        assert_eq!(snapshot.version, 2);
        let routes: Vec<&str> = snapshot.routes().map(|(id, _, _)| id).collect();
        assert_eq!(routes, ["b", "c"]);
        // Removing what is not there (created and removed again since the base) is no change.
        let undo = snapshot
            .apply_delta(&delta("3", &[], &[("routes", "zz")]))
            .unwrap();
        assert_eq!(snapshot.version, 3);
        assert_eq!(snapshot.routes().count(), 2);

        snapshot.undo(undo);
        assert_eq!(snapshot.version, 2, "undone");
        let before = snapshot.clone();
        let refused = [
            // Removing an upstream still named by a route.
            delta("3", &[], &[("upstreams", "u")]),
            // A resource that fails its schema.
            delta("3", &[("routes", "d", json!({"paths": []}))], &[]),
            // Changing and removing one resource at once.
            delta(
                "3",
                &[("routes", "b", json!({"paths": ["/b"], "upstream_id": "u"}))],
                &[("routes", "b")],
            ),
            delta("x", &[], &[]),
        ];
        for case in refused {
            assert!(snapshot.apply_delta(&case).is_err(), "{case:?}");
            assert_eq!(snapshot, before);
        }
    }

    #[test]
    fn a_consistent_snapshot_decodes() {
        let snapshot = Snapshot::from_wire(&wire(
            "7",
            &[
                (
                    "upstreams",
                    "u",
                    json!({"nodes": [{"host": "127.0.0.1", "port": 1}]}),
                ),
                ("routes", "r", json!({"paths": ["/"], "upstream_id": "u"})),
            ],
        ))
        .unwrap();
        assert_eq!(snapshot.version, 7);
        assert_eq!(snapshot.routes().count(), 1);
        assert_eq!(snapshot.upstreams().count(), 1);
    }

    #[test]
    fn a_snapshot_naming_a_plugin_this_build_lacks_is_refused_with_its_name() {
        let error = Snapshot::from_wire(&wire(
            "3",
            &[
                (
                    "upstreams",
                    "u",
                    json!({"nodes": [{"host": "127.0.0.1", "port": 1}]}),
                ),
                (
                    "routes",
                    "r",
                    json!({"paths": ["/"], "upstream_id": "u", "plugins": {"wasm-magic": {}}}),
                ),
            ],
        ))
        .unwrap_err();
        let text = error.to_string();
        assert!(text.contains("routes/r"), "{text}");
        assert!(text.contains("wasm-magic"), "{text}");
        assert!(text.contains("/plugins"), "{text}");
    }

    #[test]
    fn broken_snapshots_are_refused_with_a_reason() {
        let route = json!({"paths": ["/"], "upstream_id": "u"});
        let cases = [
            wire("x", &[]),
            wire("1", &[("listeners", "l", json!({}))]),
            wire("1", &[("routes", "r", route.clone())]),
            wire("1", &[("routes", "r", json!({"paths": []}))]),
        ];
        for case in cases {
            let error = Snapshot::from_wire(&case).unwrap_err();
            assert!(!error.to_string().is_empty());
        }
        let mut not_json = wire("1", &[]);
        not_json.resources.push(pb::Resource {
            kind: "routes".into(),
            id: "r".into(),
            revision: 1,
            body: prost::bytes::Bytes::from_static(b"{"),
        });
        assert!(matches!(
            Snapshot::from_wire(&not_json),
            Err(SnapshotError::NotJson { .. })
        ));
        // An id the admin API refuses: `route:r2` would collide with route r2's inline upstream.
        let upstream = json!({"nodes": [{"host": "h", "port": 1}]});
        assert!(matches!(
            Snapshot::from_wire(&wire("1", &[("upstreams", "route:r2", upstream)])),
            Err(SnapshotError::InvalidId { .. })
        ));
        let dangling = Snapshot::from_wire(&wire("1", &[("routes", "r", route)])).unwrap_err();
        assert_eq!(
            dangling.to_string(),
            "dangling references: routes/r -> upstreams/u"
        );
    }

    #[test]
    fn a_dangling_reference_is_located_where_the_document_names_it() {
        let proxied = json!({
            "paths": ["/p"],
            "upstream_id": "u",
            "plugins": {"traffic-split": {"rules": [
                {"weighted_upstreams": [{"weight": 1}, {"upstream_id": "v", "weight": 1}]}
            ]}}
        });
        let batch = json!({
            "paths": ["/b"],
            "batch": {"requests": [
                {"name": "a", "upstream_id": "u", "path": "/a"},
                {"name": "b", "upstream_id": "v", "path": "/b"},
                {"name": "c", "upstream_id": "v", "path": "/c"}
            ]}
        });
        let (p, b) = (
            ResourceKey::new(Kind::Routes, "p"),
            ResourceKey::new(Kind::Routes, "b"),
        );
        let (proxied, batch) = (
            validate_resource(Kind::Routes, &proxied).unwrap(),
            validate_resource(Kind::Routes, &batch).unwrap(),
        );
        let dangling = dangling_references([(&b, &batch), (&p, &proxied)], |_| false);
        let located: Vec<String> = dangling
            .iter()
            .map(|d| format!("{} {} {}", d.from, d.to.id, d.violation().pointer))
            .collect();
        assert_eq!(
            located,
            [
                "routes/b u /batch/requests/0/upstream_id",
                "routes/b v /batch/requests/1/upstream_id",
                "routes/b v /batch/requests/2/upstream_id",
                "routes/p u /upstream_id",
                "routes/p v /plugins/traffic-split/rules/0/weighted_upstreams/1/upstream_id",
            ]
        );
        // One line per missing target in a NACK, however many places name it.
        assert_eq!(
            SnapshotError::Dangling(dangling).to_string(),
            "dangling references: routes/b -> upstreams/u, routes/b -> upstreams/v, \
             routes/p -> upstreams/u, routes/p -> upstreams/v"
        );
    }
}
