//! Merging the answers of a batch into one JSON document.

use gateway_proto::model::Merge;
use serde_json::{Map, Value, json};

/// One sub-request's contribution to the merged document.
#[derive(Clone, Debug, PartialEq)]
pub struct Part<'a> {
    /// The sub-request's name.
    pub name: &'a str,
    /// Its `group`, for `merge: deep`.
    pub group: Option<&'a str>,
    /// The path and query it was sent to (or would have been, if it never left).
    pub uri: &'a str,
    /// The upstream's status, or the failure's.
    pub status: u16,
    /// The answer (JSON, or a string for a non-JSON body), or for a failure the
    /// [`error_value`] shown in its place.
    pub body: Value,
    /// Whether the sub-request failed.
    pub failed: bool,
}

/// What a failed sub-request shows in its place: `{"error": {"status", "message"}}`.
pub fn error_value(status: u16, message: &str) -> Value {
    json!({"error": {"status": status, "message": message}})
}

/// Merges `parts`, given in declared order.
pub fn merge(mode: Merge, parts: Vec<Part<'_>>) -> Value {
    match mode {
        Merge::Object => Value::Object(
            parts
                .into_iter()
                .map(|p| (p.name.to_owned(), p.body))
                .collect(),
        ),
        Merge::Array => Value::Array(
            parts
                .into_iter()
                .map(|p| json!({"name": p.name, "uri": p.uri, "status": p.status, "body": p.body}))
                .collect(),
        ),
        Merge::Deep => {
            let mut merged = Value::Object(Map::new());
            for part in parts {
                let value = match (part.group, part.body) {
                    (Some(group), body) => single(group, body),
                    // Objects merge at the top level. Anything else (an array, a string, or a
                    // failure's error object, which would collide with the next failure's) is
                    // nested under the sub-request's name, so that nothing is silently lost.
                    (None, body @ Value::Object(_)) if !part.failed => body,
                    (None, body) => single(part.name, body),
                };
                deep_merge(&mut merged, value);
            }
            merged
        }
    }
}

fn single(key: &str, value: Value) -> Value {
    let mut map = Map::new();
    map.insert(key.to_owned(), value);
    Value::Object(map)
}

/// Merges `source` into `target`: objects key by key, recursively; anything else replaces.
/// Recursion depth is bounded by the JSON parser's nesting limit (128).
fn deep_merge(target: &mut Value, source: Value) {
    match (target, source) {
        (Value::Object(target), Value::Object(source)) => {
            for (key, value) in source {
                match target.get_mut(&key) {
                    Some(existing) => deep_merge(existing, value),
                    None => {
                        target.insert(key, value);
                    }
                }
            }
        }
        (target, source) => *target = source,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok<'a>(name: &'a str, group: Option<&'a str>, body: Value) -> Part<'a> {
        Part {
            name,
            group,
            uri: "/u",
            status: 200,
            body,
            failed: false,
        }
    }

    fn failed(name: &str) -> Part<'_> {
        Part {
            name,
            group: None,
            uri: "/f",
            status: 504,
            body: error_value(504, "upstream timeout"),
            failed: true,
        }
    }

    #[test]
    fn merges() {
        // (mode, parts, merged)
        let cases = [
            (Merge::Object, vec![], json!({})),
            (
                Merge::Object,
                vec![
                    ok("a", None, json!({"x": 1})),
                    ok("b", None, json!("text")),
                    failed("c"),
                ],
                json!({"a": {"x": 1}, "b": "text", "c": {"error": {"status": 504, "message": "upstream timeout"}}}),
            ),
            (
                Merge::Array,
                vec![ok("a", None, json!([1])), failed("c")],
                json!([
                    {"name": "a", "uri": "/u", "status": 200, "body": [1]},
                    {"name": "c", "uri": "/f", "status": 504, "body": {"error": {"status": 504, "message": "upstream timeout"}}}
                ]),
            ),
            (
                Merge::Deep,
                vec![
                    ok("a", None, json!({"p": {"x": 1, "y": [1]}, "k": 1})),
                    ok("b", None, json!({"p": {"y": [2], "z": 3}, "k": {"o": 1}})),
                ],
                json!({"p": {"x": 1, "y": [2], "z": 3}, "k": {"o": 1}}),
            ),
            (
                Merge::Deep,
                vec![
                    ok("a", Some("info"), json!({"x": 1})),
                    ok("b", Some("info"), json!({"y": 2})),
                    ok("c", None, json!({"info": {"x": 9}})),
                    ok("d", None, json!([1, 2])),
                    ok("e", Some("e-group"), json!("s")),
                    failed("f"),
                    failed("g"),
                ],
                json!({
                    "info": {"x": 9, "y": 2},
                    "d": [1, 2],
                    "e-group": "s",
                    "f": {"error": {"status": 504, "message": "upstream timeout"}},
                    "g": {"error": {"status": 504, "message": "upstream timeout"}}
                }),
            ),
        ];
        for (mode, parts, merged) in cases {
            let description = format!("{mode:?} {parts:?}");
            assert_eq!(merge(mode, parts), merged, "{description}");
        }
    }
}
