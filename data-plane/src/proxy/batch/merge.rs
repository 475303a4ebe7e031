//! Merging the answers of a batch into one JSON document.

use bytes::Bytes;
use gateway_proto::model::Merge;
use serde_json::{Map, Value, json};

/// A sub-request's answer as the merge takes it.
#[derive(Clone, Debug, PartialEq)]
pub enum Answer {
    /// A parsed answer: what `deep` merges, and answers other sub-requests read, need.
    Value(Value),
    /// An answer checked to be one JSON document, spliced into the merged one as the node sent
    /// it (surrounding whitespace trimmed): no tree built and serialised again (callgrind, 3-way
    /// batch: 88,500 -> 69,100 instructions per request), and numbers keep every digit.
    Raw(Bytes),
}

impl Answer {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            // Writing a `Value` into a `Vec` cannot fail.
            Answer::Value(value) => serde_json::to_writer(out, value).unwrap_or_default(),
            Answer::Raw(json) => out.extend_from_slice(json),
        }
    }

    /// About how many bytes it takes in the merged document (exact for a raw answer).
    fn size_hint(&self) -> usize {
        match self {
            Answer::Value(_) => 64,
            Answer::Raw(json) => json.len(),
        }
    }

    fn into_value(self) -> Value {
        match self {
            Answer::Value(value) => value,
            // Checked when it arrived; `Null` is never used.
            Answer::Raw(json) => serde_json::from_slice(&json).unwrap_or(Value::Null),
        }
    }
}

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
    pub body: Answer,
    /// Whether the sub-request failed.
    pub failed: bool,
}

/// What a failed sub-request shows in its place: `{"error": {"status", "message"}}`.
pub fn error_value(status: u16, message: &str) -> Value {
    json!({"error": {"status": status, "message": message}})
}

/// Merges `parts`, given in declared order, into one serialised JSON document. `object` and
/// `array` keep the declared order and the spec's key order; `deep` objects are sorted by key.
pub fn merge(mode: Merge, parts: Vec<Part<'_>>) -> Vec<u8> {
    // Room for every answer, its name and (in `array`) its item's other fields at once: grown
    // piece by piece, the buffer was reallocated and copied twice for three small answers.
    let size = parts
        .iter()
        .map(|p| p.name.len() + p.uri.len() + p.body.size_hint() + 48)
        .sum::<usize>();
    let mut out = Vec::with_capacity(size + 2);
    // Writing strings and `Value`s into a `Vec` cannot fail.
    let string = |out: &mut Vec<u8>, text: &str| {
        serde_json::to_writer(out, text).unwrap_or_default();
    };
    match mode {
        Merge::Object => {
            out.push(b'{');
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                string(&mut out, part.name);
                out.push(b':');
                part.body.write(&mut out);
            }
            out.push(b'}');
        }
        Merge::Array => {
            out.push(b'[');
            for (i, part) in parts.iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"name\":");
                string(&mut out, part.name);
                out.extend_from_slice(b",\"uri\":");
                string(&mut out, part.uri);
                out.extend_from_slice(b",\"status\":");
                out.extend_from_slice(itoa::Buffer::new().format(part.status).as_bytes());
                out.extend_from_slice(b",\"body\":");
                part.body.write(&mut out);
                out.push(b'}');
            }
            out.push(b']');
        }
        Merge::Deep => {
            let mut merged = Value::Object(Map::new());
            for part in parts {
                let value = match (part.group, part.body.into_value()) {
                    (Some(group), body) => single(group, body),
                    // Objects merge at the top level. Anything else (an array, a string, or a
                    // failure's error object, which would collide with the next failure's) is
                    // nested under the sub-request's name, so that nothing is silently lost.
                    (None, body @ Value::Object(_)) if !part.failed => body,
                    (None, body) => single(part.name, body),
                };
                deep_merge(&mut merged, value);
            }
            serde_json::to_writer(&mut out, &merged).unwrap_or_default();
        }
    }
    out
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
            body: Answer::Value(body),
            failed: false,
        }
    }

    fn failed(name: &str) -> Part<'_> {
        Part {
            name,
            group: None,
            uri: "/f",
            status: 504,
            body: Answer::Value(error_value(504, "upstream timeout")),
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
            let bytes = merge(mode, parts);
            let parsed: Value = serde_json::from_slice(&bytes).expect("the merge is JSON");
            assert_eq!(parsed, merged, "{description}");
        }
    }

    #[test]
    fn raw_answers_are_spliced_as_sent_in_declared_order() {
        let raw = |name, json: &'static str| Part {
            body: Answer::Raw(Bytes::from_static(json.as_bytes())),
            ..ok(name, None, Value::Null)
        };
        // Digits beyond f64's, the node's key order and inner spacing all survive.
        let parts = || {
            vec![
                raw("zeta", r#"{"b": 1, "a": 123456789012345678901234567890}"#),
                ok("alpha", None, json!({"y": 2, "x": 1})),
                failed("m\"q"),
            ]
        };
        assert_eq!(
            String::from_utf8(merge(Merge::Object, parts())).unwrap(),
            r#"{"zeta":{"b": 1, "a": 123456789012345678901234567890},"alpha":{"x":1,"y":2},"m\"q":{"error":{"message":"upstream timeout","status":504}}}"#
        );
        assert_eq!(
            String::from_utf8(merge(Merge::Array, parts()[..1].to_vec())).unwrap(),
            r#"[{"name":"zeta","uri":"/u","status":200,"body":{"b": 1, "a": 123456789012345678901234567890}}]"#
        );
        // `deep` parses what it merges.
        let deep: Value =
            serde_json::from_slice(&merge(Merge::Deep, parts()[..2].to_vec())).unwrap();
        assert_eq!(deep["y"], json!(2));
        assert_eq!(deep["b"], json!(1));
    }
}
