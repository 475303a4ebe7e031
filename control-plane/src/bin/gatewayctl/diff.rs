//! What would change, resource by resource, and how it is shown: `+` added, `-` removed, `~`
//! changed with the JSON pointer of every changed field. Secret fields never show a value.

use std::fmt::Write;

use gateway_proto::plugins::proxy_cache::PURGE_KEY_POINTER;
use serde_json::{Value, json};

use crate::normalize::escape;
use crate::output::Style;

/// What happens to one resource.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub enum Op {
    /// Created.
    Add,
    /// Deleted.
    Remove,
    /// Its document changes.
    Change,
}

impl Op {
    fn sign(self) -> char {
        match self {
            Op::Add => '+',
            Op::Remove => '-',
            Op::Change => '~',
        }
    }

    fn name(self) -> &'static str {
        match self {
            Op::Add => "create",
            Op::Remove => "delete",
            Op::Change => "update",
        }
    }
}

/// One changed field of a resource.
#[derive(Clone, Debug, PartialEq)]
pub struct FieldChange {
    /// JSON pointer within the resource.
    pub pointer: String,
    /// The value before (absent: the field is added).
    pub before: Option<Value>,
    /// The value after (absent: the field is removed).
    pub after: Option<Value>,
}

/// One changed resource.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceChange {
    /// `routes/r1`.
    pub resource: String,
    /// What happens to it.
    pub op: Op,
    /// For a change: each changed field.
    pub fields: Vec<FieldChange>,
    /// Something the reader should know (a secret that could not be compared).
    pub note: Option<String>,
}

/// The fields that differ between two documents, as JSON pointers, in document order. Lists of
/// the same length are compared item by item; a list that grows or shrinks is one change.
pub fn field_changes(before: &Value, after: &Value) -> Vec<FieldChange> {
    let mut out = Vec::new();
    compare(before, after, String::new(), &mut out);
    out
}

/// Fields added or removed that the schema gives a default are shown as changed from or to
/// that default (`~ /priority: 0 → 5` rather than `+ /priority: 5`): that is what the data
/// plane reads a missing field as.
pub fn show_defaults(fields: &mut [FieldChange], default_at: impl Fn(&str) -> Option<Value>) {
    for field in fields {
        match (&field.before, &field.after) {
            (None, Some(_)) => field.before = default_at(&field.pointer),
            (Some(_), None) => field.after = default_at(&field.pointer),
            _ => {}
        }
    }
}

fn compare(before: &Value, after: &Value, at: String, out: &mut Vec<FieldChange>) {
    match (before, after) {
        (Value::Object(old), Value::Object(new)) => {
            let mut names: Vec<&String> = old.keys().chain(new.keys()).collect();
            names.sort();
            names.dedup();
            for name in names {
                let pointer = format!("{at}/{}", escape(name));
                match (old.get(name), new.get(name)) {
                    (Some(a), Some(b)) => compare(a, b, pointer, out),
                    (a, b) => out.push(FieldChange {
                        pointer,
                        before: a.cloned(),
                        after: b.cloned(),
                    }),
                }
            }
        }
        (Value::Array(old), Value::Array(new)) if old.len() == new.len() => {
            for (index, (a, b)) in old.iter().zip(new).enumerate() {
                compare(a, b, format!("{at}/{index}"), out);
            }
        }
        (a, b) if a == b => {}
        (a, b) => out.push(FieldChange {
            pointer: at,
            before: Some(a.clone()),
            after: Some(b.clone()),
        }),
    }
}

/// Credential fields whose values are never printed (their digests neither: a digest of a
/// weak password is a password).
const SECRET_FIELDS: [&str; 6] = [
    "key",
    "key_sha256",
    "password",
    "password_hash",
    "secret",
    "public_key",
];

fn is_secret(pointer: &str) -> bool {
    if pointer == PURGE_KEY_POINTER {
        return true;
    }
    pointer.starts_with("/credentials/")
        && pointer
            .rsplit('/')
            .next()
            .is_some_and(|last| SECRET_FIELDS.contains(&last))
        // `/credentials/jwt-auth/key` is the JWT key id, not a secret.
        && !pointer.ends_with("/jwt-auth/key")
}

/// A value as one line, shortened; secrets hidden.
fn shown(pointer: &str, value: &Value) -> String {
    const LIMIT: usize = 80;
    if is_secret(pointer) || value_holds_secret(pointer, value) {
        return "(secret)".into();
    }
    let text = value.to_string();
    match text.char_indices().nth(LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// Whether a structure shown whole (`/credentials`, `/credentials/key-auth`,
/// `/plugins/proxy-cache`) holds a secret.
fn value_holds_secret(pointer: &str, value: &Value) -> bool {
    if let Some(inside) = PURGE_KEY_POINTER.strip_prefix(pointer)
        && inside.starts_with('/')
        && value.pointer(inside).is_some()
    {
        return true;
    }
    let in_credentials = pointer == "/credentials" || pointer.starts_with("/credentials/");
    in_credentials && !value.is_string()
}

/// The diff as text for a terminal: one line per resource, indented lines per field, and a
/// closing count.
pub fn render(changes: &[ResourceChange], style: &Style) -> String {
    let mut text = String::new();
    for change in changes {
        let line = format!("{} {}", change.op.sign(), change.resource);
        let _ = writeln!(text, "{}", style.op(change.op, &line));
        for field in &change.fields {
            let line = match (&field.before, &field.after) {
                (None, Some(after)) => style.op(
                    Op::Add,
                    &format!("+ {}: {}", field.pointer, shown(&field.pointer, after)),
                ),
                (Some(before), None) => style.op(
                    Op::Remove,
                    &format!("- {}: {}", field.pointer, shown(&field.pointer, before)),
                ),
                (Some(before), Some(after)) => style.op(
                    Op::Change,
                    &format!(
                        "~ {}: {} → {}",
                        field.pointer,
                        shown(&field.pointer, before),
                        shown(&field.pointer, after)
                    ),
                ),
                (None, None) => continue,
            };
            let _ = writeln!(text, "    {line}");
        }
        if let Some(note) = &change.note {
            let _ = writeln!(text, "    ({note})");
        }
    }
    let _ = writeln!(text, "{}", summary(changes));
    text
}

/// `2 to create, 1 to update, 0 to delete`, or `no changes`.
pub fn summary(changes: &[ResourceChange]) -> String {
    if changes.is_empty() {
        return "no changes".into();
    }
    let count = |op: Op| changes.iter().filter(|c| c.op == op).count();
    format!(
        "{} to create, {} to update, {} to delete",
        count(Op::Add),
        count(Op::Change),
        count(Op::Remove)
    )
}

/// The diff for scripts: `[{"resource", "op", "fields": [{"pointer", "before", "after"}]}]`,
/// secrets hidden as in the text form.
pub fn to_json(changes: &[ResourceChange]) -> Value {
    let hide = |pointer: &str, value: &Option<Value>| match value {
        Some(value) if is_secret(pointer) || value_holds_secret(pointer, value) => {
            json!("(secret)")
        }
        Some(value) => value.clone(),
        None => Value::Null,
    };
    Value::Array(
        changes
            .iter()
            .map(|change| {
                let (kind, id) = change
                    .resource
                    .split_once('/')
                    .unwrap_or((change.resource.as_str(), ""));
                let fields: Vec<Value> = change
                    .fields
                    .iter()
                    .map(|f| {
                        json!({
                            "pointer": f.pointer,
                            "before": hide(&f.pointer, &f.before),
                            "after": hide(&f.pointer, &f.after),
                        })
                    })
                    .collect();
                let mut entry =
                    json!({"kind": kind, "id": id, "op": change.op.name(), "fields": fields});
                if let Some(note) = &change.note {
                    entry["note"] = note.as_str().into();
                }
                entry
            })
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_fields_are_named_by_pointer() {
        let before =
            json!({"paths": ["/a", "/b"], "priority": 1, "labels": {"a/b": "x"}, "hosts": ["h"]});
        let after = json!({"paths": ["/a", "/c"], "labels": {"a/b": "y"}, "enabled": false, "hosts": ["h", "i"]});
        let pointers: Vec<(String, bool, bool)> = field_changes(&before, &after)
            .into_iter()
            .map(|f| (f.pointer, f.before.is_some(), f.after.is_some()))
            .collect();
        assert_eq!(
            pointers,
            [
                ("/enabled".to_owned(), false, true),
                ("/hosts".to_owned(), true, true),
                ("/labels/a~1b".to_owned(), true, true),
                ("/paths/1".to_owned(), true, true),
                ("/priority".to_owned(), true, false),
            ]
        );
    }

    #[test]
    fn secrets_never_show() {
        let changes = [ResourceChange {
            resource: "consumers/alice".into(),
            op: Op::Change,
            fields: field_changes(
                &json!({"credentials": {"key-auth": {"key_sha256": "abc"}, "jwt-auth": {"key": "k1"}}}),
                &json!({"credentials": {"key-auth": {"key": "new-key-value"}, "jwt-auth": {"key": "k2"},
                        "basic-auth": {"username": "u", "password": "hunter22"}}}),
            ),
            note: None,
        }];
        let text = render(&changes, &Style::plain());
        assert!(
            !text.contains("new-key-value") && !text.contains("hunter22") && !text.contains("abc"),
            "{text}"
        );
        assert!(
            text.contains("~ /credentials/jwt-auth/key: \"k1\" → \"k2\""),
            "{text}"
        );
        assert!(
            text.contains("+ /credentials/basic-auth: (secret)"),
            "{text}"
        );
        let json = to_json(&changes).to_string();
        assert!(
            !json.contains("new-key-value") && !json.contains("hunter22"),
            "{json}"
        );
    }

    #[test]
    fn a_purge_key_never_shows() {
        let change = |before: Value, after: Value| ResourceChange {
            resource: "routes/r".into(),
            op: Op::Change,
            fields: field_changes(&before, &after),
            note: None,
        };
        let changes = [
            change(
                json!({"plugins": {"proxy-cache": {"cache_ttl": 5, "purge_key": "old-purge-key"}}}),
                json!({"plugins": {"proxy-cache": {"cache_ttl": 6, "purge_key": "new-purge-key"}}}),
            ),
            change(
                json!({"plugins": {}}),
                json!({"plugins": {"proxy-cache": {"purge_key": "whole-purge-key"}}}),
            ),
        ];
        let text = render(&changes, &Style::plain());
        assert!(!text.contains("purge-key\""), "{text}");
        assert!(
            text.contains("~ /plugins/proxy-cache/cache_ttl: 5 → 6")
                && text.contains("~ /plugins/proxy-cache/purge_key: (secret) → (secret)")
                && text.contains("+ /plugins/proxy-cache: (secret)"),
            "{text}"
        );
        assert!(!to_json(&changes).to_string().contains("purge-key"));
    }

    #[test]
    fn the_summary_counts_each_kind_of_change() {
        let change = |op| ResourceChange {
            resource: "routes/r".into(),
            op,
            fields: Vec::new(),
            note: None,
        };
        assert_eq!(summary(&[]), "no changes");
        assert_eq!(
            summary(&[change(Op::Add), change(Op::Add), change(Op::Remove)]),
            "2 to create, 0 to update, 1 to delete"
        );
    }
}
