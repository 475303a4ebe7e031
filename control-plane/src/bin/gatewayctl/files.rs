//! The config files `apply`, `diff` and `validate` read, merged into one desired config.
//!
//! The format is the one `export` writes and `GET /api/v1/config` answers: a mapping from
//! collection name to a list of resources, each with its `id`:
//!
//! ```yaml
//! upstreams:
//!   - id: users
//!     nodes: [{host: 10.0.0.5, port: 8080}]
//! routes:
//!   - id: users
//!     paths: ["/users/*"]
//!     upstream_id: users
//! ```
//!
//! A file may hold several such documents (YAML `---`); several files (`-f` repeated, or a
//! directory: every `*.yaml`, `*.yml` and `*.json` directly in it, by name) merge into one
//! config. `.json` files are read as JSON, everything else as YAML; `-` is standard input
//! (YAML). Server-managed fields (`created_at`, `updated_at`, `revision`) and a top-level
//! `version` are ignored, so `GET /api/v1/config`'s body is a valid file as is.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};

use gateway_proto::model::{SERVER_FIELDS, is_valid_id};
use gateway_proto::{Kind, ResourceKey};
use serde::Deserialize;
use serde_json::Value;

use crate::client::{CtlError, Problem};

/// Where a resource was read from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Origin {
    /// The file, as named on the command line (joined with the directory it was found in).
    pub file: String,
}

/// One resource of the desired config.
#[derive(Clone, Debug)]
pub struct DesiredResource {
    /// The document, without `id` and server-managed fields.
    pub body: Value,
    /// Where it came from.
    pub origin: Origin,
}

/// Every resource the files define, merged.
#[derive(Clone, Debug, Default)]
pub struct Desired {
    /// By kind and id.
    pub resources: BTreeMap<ResourceKey, DesiredResource>,
    /// How many files were read.
    pub files: usize,
}

/// Reads every file and directory named by `-f`, merging them into one desired config.
/// Structural problems (not a mapping, an unknown collection, a missing id, an id defined
/// twice) are all reported together; a file that cannot be read or parsed stops at once.
pub fn load(paths: &[PathBuf]) -> Result<Desired, CtlError> {
    let mut desired = Desired::default();
    let mut problems = Vec::new();
    for file in expand(paths)? {
        let text = read(&file)?;
        let name = file.display().to_string();
        let documents = parse(&file, &text)?;
        desired.files += 1;
        for (index, document) in documents.into_iter().enumerate() {
            // Pointers name the document within a multi-document file only when there are
            // several; `/1/routes/0` would puzzle the common single-document case.
            let prefix = if index == 0 {
                String::new()
            } else {
                format!("(document {}) ", index + 1)
            };
            merge_document(&mut desired, &name, &prefix, document, &mut problems);
        }
    }
    if problems.is_empty() {
        Ok(desired)
    } else {
        Err(CtlError::Invalid(problems))
    }
}

/// The files the arguments name, in order: a directory stands for its config files, by name.
fn expand(paths: &[PathBuf]) -> Result<Vec<PathBuf>, CtlError> {
    let mut files = Vec::new();
    for path in paths {
        if path.as_os_str() == "-" {
            files.push(path.clone());
            continue;
        }
        let metadata = std::fs::metadata(path)
            .map_err(|e| CtlError::Input(format!("{}: {e}", path.display())))?;
        if !metadata.is_dir() {
            files.push(path.clone());
            continue;
        }
        let entries = std::fs::read_dir(path)
            .map_err(|e| CtlError::Input(format!("{}: {e}", path.display())))?;
        let mut found = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| CtlError::Input(format!("{}: {e}", path.display())))?;
            let file = entry.path();
            let is_config = matches!(
                file.extension().and_then(|e| e.to_str()),
                Some("yaml" | "yml" | "json")
            );
            if is_config && file.is_file() {
                found.push(file);
            }
        }
        if found.is_empty() {
            return Err(CtlError::Input(format!(
                "{}: no *.yaml, *.yml or *.json file in this directory",
                path.display()
            )));
        }
        found.sort();
        files.extend(found);
    }
    Ok(files)
}

fn read(file: &Path) -> Result<String, CtlError> {
    if file.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| CtlError::Input(format!("standard input: {e}")))?;
        return Ok(text);
    }
    std::fs::read_to_string(file).map_err(|e| CtlError::Input(format!("{}: {e}", file.display())))
}

/// The documents of one file: JSON for `.json`, else YAML (one or more documents).
fn parse(file: &Path, text: &str) -> Result<Vec<Value>, CtlError> {
    let name = file.display();
    if file.extension().and_then(|e| e.to_str()) == Some("json") {
        return serde_json::from_str(text)
            .map(|document| vec![document])
            .map_err(|e| CtlError::Input(format!("{name}: not valid JSON: {e}")));
    }
    let mut documents = Vec::new();
    for document in yaml_serde::Deserializer::from_str(text) {
        let value = Value::deserialize(document)
            .map_err(|e| CtlError::Input(format!("{name}: not valid YAML: {e}")))?;
        // A document of comments only, or a trailing `---`.
        if !value.is_null() {
            documents.push(value);
        }
    }
    Ok(documents)
}

/// Adds one document's resources to `desired`.
fn merge_document(
    desired: &mut Desired,
    file: &str,
    prefix: &str,
    document: Value,
    problems: &mut Vec<Problem>,
) {
    let problem = |pointer: String, message: String| Problem {
        file: file.to_owned(),
        resource: None,
        pointer: format!("{prefix}{pointer}"),
        message,
    };
    let Value::Object(sections) = document else {
        problems.push(problem(
            String::new(),
            "a config file holds a mapping of collections: {upstreams: [...], routes: [...]}"
                .into(),
        ));
        return;
    };
    for (name, items) in sections {
        if name == "version" {
            continue;
        }
        let Some(kind) = Kind::ALL.into_iter().find(|k| k.as_str() == name) else {
            let known: Vec<&str> = Kind::ALL.iter().map(|k| k.as_str()).collect();
            problems.push(problem(
                format!("/{name}"),
                format!(
                    "unknown collection {name:?}; expected one of {}",
                    known.join(", ")
                ),
            ));
            continue;
        };
        let items = match items {
            Value::Array(items) => items,
            // `routes:` with nothing under it.
            Value::Null => continue,
            _ => {
                problems.push(problem(
                    format!("/{name}"),
                    "must be a list of resources".into(),
                ));
                continue;
            }
        };
        for (index, item) in items.into_iter().enumerate() {
            let at = format!("/{name}/{index}");
            let Value::Object(mut fields) = item else {
                problems.push(problem(at, "a resource must be a mapping".into()));
                continue;
            };
            let id = match fields.get("id") {
                Some(Value::String(id)) if is_valid_id(id) => id.clone(),
                Some(Value::String(id)) => {
                    problems.push(problem(
                        format!("{at}/id"),
                        format!("{id:?} is not a valid id: 1 to 64 of [A-Za-z0-9._-]"),
                    ));
                    continue;
                }
                _ => {
                    problems.push(problem(
                        format!("{at}/id"),
                        "every resource needs a string id".into(),
                    ));
                    continue;
                }
            };
            for field in SERVER_FIELDS {
                fields.remove(field);
            }
            let key = ResourceKey::new(kind, id);
            if let Some(earlier) = desired.resources.get(&key) {
                problems.push(Problem {
                    file: file.to_owned(),
                    resource: Some(key.to_string()),
                    pointer: String::new(),
                    message: if earlier.origin.file == file {
                        format!("{key} is defined twice in {file}")
                    } else {
                        format!(
                            "{key} is defined in {} and again in {file}",
                            earlier.origin.file
                        )
                    },
                });
                continue;
            }
            desired.resources.insert(
                key,
                DesiredResource {
                    body: Value::Object(fields),
                    origin: Origin {
                        file: file.to_owned(),
                    },
                },
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("gatewayctl-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn a_directory_merges_yaml_and_json_files_by_name() {
        let dir = temp_dir("merge");
        std::fs::write(
            dir.join("b-routes.yaml"),
            "routes:\n  - id: r1\n    paths: [/a]\n    upstream_id: u1\n    revision: 3\n---\nroutes:\n  - id: r2\n    paths: [/b]\n    upstream_id: u1\n",
        )
        .unwrap();
        std::fs::write(
            dir.join("a-upstreams.json"),
            r#"{"version": 7, "upstreams": [{"id": "u1", "nodes": [{"host": "h", "port": 1}]}]}"#,
        )
        .unwrap();
        std::fs::write(dir.join("notes.txt"), "ignored").unwrap();
        let desired = load(std::slice::from_ref(&dir)).unwrap();
        assert_eq!(desired.files, 2);
        let keys: Vec<String> = desired.resources.keys().map(|k| k.to_string()).collect();
        assert_eq!(keys, ["upstreams/u1", "routes/r1", "routes/r2"]);
        let r1 = &desired.resources[&ResourceKey::new(Kind::Routes, "r1")];
        assert!(r1.body.get("revision").is_none() && r1.body.get("id").is_none());
        assert!(r1.origin.file.ends_with("b-routes.yaml"));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn an_id_defined_in_two_files_names_both() {
        let dir = temp_dir("dup");
        let one = dir.join("one.yaml");
        let two = dir.join("two.yaml");
        std::fs::write(
            &one,
            "upstreams:\n  - {id: u1, nodes: [{host: h, port: 1}]}\n",
        )
        .unwrap();
        std::fs::write(
            &two,
            "upstreams:\n  - {id: u1, nodes: [{host: h, port: 2}]}\n",
        )
        .unwrap();
        let Err(CtlError::Invalid(problems)) = load(&[one.clone(), two.clone()]) else {
            panic!("a duplicate id must be refused");
        };
        let message = &problems[0].message;
        assert!(message.contains(&one.display().to_string()), "{message}");
        assert!(message.contains(&two.display().to_string()), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn structural_problems_are_all_listed_with_pointers() {
        let dir = temp_dir("structure");
        let file = dir.join("bad.yaml");
        std::fs::write(
            &file,
            "routs: []\nroutes:\n  - paths: [/a]\n  - id: 'bad id'\n  - 3\nupstreams: {}\n",
        )
        .unwrap();
        let Err(CtlError::Invalid(problems)) = load(std::slice::from_ref(&file)) else {
            panic!("must be refused");
        };
        let pointers: Vec<&str> = problems.iter().map(|p| p.pointer.as_str()).collect();
        for expected in [
            "/routs",
            "/routes/0/id",
            "/routes/1/id",
            "/routes/2",
            "/upstreams",
        ] {
            assert!(pointers.contains(&expected), "{expected} in {problems:?}");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
