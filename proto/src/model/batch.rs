//! Batches: one client request fanned out to several upstream requests whose answers are merged
//! into one JSON document (`batch` on a route).
//!
//! The template language of sub-request paths, header values and string bodies is defined
//! here, once, so that the schema check on write and the data plane's compiler parse it the
//! same way.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// Default overall deadline of a batch, as APISIX's `batch-requests` (30 s).
pub const DEFAULT_BATCH_TIMEOUT_MS: u64 = 30_000;
/// Default bound on the sub-requests of one client request that are in flight at once.
pub const DEFAULT_MAX_CONCURRENCY: u32 = 16;
/// Default cap on one body read into memory (a sub-response, or the client's body that every
/// sub-request may carry): 1 MiB, as APISIX's `batch-requests` `max_body_size`.
pub const DEFAULT_MAX_BODY_BYTES: u64 = 1 << 20;

/// A route's fan-out: the sub-requests and how their answers are merged.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Batch {
    /// The sub-requests, in declared order (the order of `array` and `deep` merges).
    pub requests: Vec<SubRequest>,
    /// How the answers become one document.
    #[serde(default)]
    pub merge: Merge,
    /// Whether the client's query string is appended to every sub-request.
    #[serde(default)]
    pub pass_query: bool,
    /// Deadline of the whole batch, from the moment the client request is routed.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
    /// At most this many sub-requests of one client request are in flight at once.
    #[serde(default = "default_max_concurrency")]
    pub max_concurrency: u32,
    /// Cap on each body read into memory; a larger sub-response fails that sub-request (502).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
}

/// One upstream call of a batch.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SubRequest {
    /// Unique within the batch: the key of its answer, and what `{resp.NAME...}` refers to.
    pub name: String,
    /// The upstream it is sent to, by id.
    pub upstream_id: String,
    /// Path (and optionally query) template, e.g. `/myapi/catalog/{param.item}`.
    pub path: String,
    /// Overrides the client's method.
    #[serde(default)]
    pub method: Option<String>,
    /// Header name → value template; set on top of the client's headers.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Overrides the client's body: a string is a template sent as is, any other JSON value is
    /// sent serialised, as `application/json`.
    #[serde(default)]
    pub body: Option<Value>,
    /// Whether the batch fails (502, or 504 on a timeout) when this sub-request fails.
    #[serde(default = "default_true")]
    pub required: bool,
    /// Deadline of this sub-request, from when it is sent (after its dependencies answered).
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// Overrides the route's and the upstream's hedging policy for this sub-request (`false`:
    /// never hedged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hedge: Option<super::HedgeOverride>,
    /// For `merge: deep`: the key this answer is nested under before merging.
    #[serde(default)]
    pub group: Option<String>,
    /// Keeps this sub-request's answers for a while (the data plane's batch cache).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<SubRequestCache>,
}

/// A batch sub-request's cache: a 2xx answer to a `GET` or `HEAD` is kept `ttl_s` seconds,
/// keyed by method, upstream and the rendered path with its query.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubRequestCache {
    /// Seconds an answer is reused.
    pub ttl_s: u64,
}

/// How the answers of a batch become one document.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Merge {
    /// `{"<name>": <body>, …}`.
    #[default]
    Object,
    /// `[{"name", "uri", "status", "body"}, …]` in declared order.
    Array,
    /// Objects merged recursively in declared order; a later one wins a conflict.
    Deep,
}

fn default_true() -> bool {
    true
}

fn default_timeout_ms() -> u64 {
    DEFAULT_BATCH_TIMEOUT_MS
}

fn default_max_concurrency() -> u32 {
    DEFAULT_MAX_CONCURRENCY
}

fn default_max_body_bytes() -> u64 {
    DEFAULT_MAX_BODY_BYTES
}

/// One variable of a template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Variable {
    /// `{param.NAME}`: a named segment of the matched route path (raw, as the client sent it).
    Param(String),
    /// `{last}`: the final element of the client's path (raw).
    Last,
    /// `{query}`: the client's whole query string (raw, without `?`).
    Query,
    /// `{arg.NAME}`: the first value of one query argument (raw).
    Arg(String),
    /// `{header.NAME}`: one request header (name lowercased).
    Header(String),
    /// `{resp.NAME./json/pointer}`: a value from another sub-request's JSON answer.
    Resp {
        /// The sub-request whose answer is read.
        name: String,
        /// RFC 6901 pointer into that answer (`""` is the whole document).
        pointer: String,
    },
}

/// A piece of a parsed template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Segment {
    /// Text copied as is.
    Literal(String),
    /// A value substituted per request.
    Var(Variable),
}

/// A parsed template: literal text and variables, in order.
///
/// Syntax: `{` followed by a lowercase ASCII letter opens a variable, which runs to the next
/// `}`; any other `{` (say, in a JSON body) is literal text. This keeps JSON bodies writable
/// without escapes while a misspelt variable (`{parm.id}`) is still an error, not text.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Template {
    /// The pieces, in order.
    pub segments: Vec<Segment>,
}

/// Why a template could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TemplateError(pub String);

impl std::fmt::Display for TemplateError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for TemplateError {}

impl Template {
    /// Parses `text`.
    pub fn parse(text: &str) -> Result<Template, TemplateError> {
        let mut segments = Vec::new();
        let mut literal = String::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            let after = &rest[open + 1..];
            if !after.starts_with(|c: char| c.is_ascii_lowercase()) {
                literal.push_str(&rest[..=open]);
                rest = after;
                continue;
            }
            literal.push_str(&rest[..open]);
            let close = after
                .find('}')
                .ok_or_else(|| TemplateError(format!("unclosed template variable {{{after}")))?;
            let variable = parse_variable(&after[..close])?;
            if !literal.is_empty() {
                segments.push(Segment::Literal(std::mem::take(&mut literal)));
            }
            segments.push(Segment::Var(variable));
            rest = &after[close + 1..];
        }
        literal.push_str(rest);
        if !literal.is_empty() {
            segments.push(Segment::Literal(literal));
        }
        Ok(Template { segments })
    }

    /// The variables of the template, in order.
    pub fn variables(&self) -> impl Iterator<Item = &Variable> {
        self.segments.iter().filter_map(|s| match s {
            Segment::Var(v) => Some(v),
            Segment::Literal(_) => None,
        })
    }

    /// The sub-requests whose answers this template reads.
    pub fn dependencies(&self) -> impl Iterator<Item = &str> {
        self.variables().filter_map(|v| match v {
            Variable::Resp { name, .. } => Some(name.as_str()),
            _ => None,
        })
    }
}

/// Whether `name` may name a sub-request, a parameter, an argument or a header in a template:
/// no `.` (it separates the pointer in `{resp.NAME./ptr}`), no `}` and no spaces.
fn is_variable_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-'))
}

fn parse_variable(inner: &str) -> Result<Variable, TemplateError> {
    let named = |kind: &str, name: &str, make: fn(String) -> Variable| {
        if is_variable_name(name) {
            Ok(make(name.to_owned()))
        } else {
            Err(TemplateError(format!(
                "{{{kind}.NAME}} needs a name of letters, digits, '_' or '-', got {{{inner}}}"
            )))
        }
    };
    match inner.split_once('.') {
        None if inner == "last" => Ok(Variable::Last),
        None if inner == "query" => Ok(Variable::Query),
        Some(("param", name)) => named("param", name, Variable::Param),
        Some(("arg", name)) => named("arg", name, Variable::Arg),
        Some(("header", name)) => {
            named("header", name, |n| Variable::Header(n.to_ascii_lowercase()))
        }
        Some(("resp", rest)) => {
            let (name, pointer) = rest.split_once('.').unwrap_or((rest, ""));
            if !is_variable_name(name) {
                return Err(TemplateError(format!(
                    "{{resp.NAME.<json-pointer>}} needs a sub-request name, got {{{inner}}}"
                )));
            }
            if !pointer.is_empty() && !pointer.starts_with('/') {
                return Err(TemplateError(format!(
                    "the JSON pointer in {{{inner}}} must be empty or start with '/'"
                )));
            }
            Ok(Variable::Resp {
                name: name.to_owned(),
                pointer: pointer.to_owned(),
            })
        }
        _ => Err(TemplateError(format!(
            "unknown template variable {{{inner}}}; known: {{param.NAME}}, {{last}}, {{query}}, \
             {{arg.NAME}}, {{header.NAME}}, {{resp.NAME.<json-pointer>}}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn var(v: Variable) -> Segment {
        Segment::Var(v)
    }

    fn lit(s: &str) -> Segment {
        Segment::Literal(s.to_owned())
    }

    #[test]
    fn templates_parse_into_segments() {
        let cases: Vec<(&str, Vec<Segment>)> = vec![
            ("", vec![]),
            ("/plain", vec![lit("/plain")]),
            (
                "/c/{param.item}",
                vec![lit("/c/"), var(Variable::Param("item".into()))],
            ),
            (
                "/c/{last}?{query}",
                vec![
                    lit("/c/"),
                    var(Variable::Last),
                    lit("?"),
                    var(Variable::Query),
                ],
            ),
            (
                "{arg.lang}{header.X-User}",
                vec![
                    var(Variable::Arg("lang".into())),
                    var(Variable::Header("x-user".into())),
                ],
            ),
            (
                "/orders?user={resp.user./id}",
                vec![
                    lit("/orders?user="),
                    var(Variable::Resp {
                        name: "user".into(),
                        pointer: "/id".into(),
                    }),
                ],
            ),
            (
                "{resp.user}",
                vec![var(Variable::Resp {
                    name: "user".into(),
                    pointer: String::new(),
                })],
            ),
            (
                "{resp.user./a.b/c}",
                vec![var(Variable::Resp {
                    name: "user".into(),
                    pointer: "/a.b/c".into(),
                })],
            ),
            // A brace not followed by a lowercase letter is text: JSON bodies need no escapes.
            (
                r#"{"id": {resp.u./id}}"#,
                vec![
                    lit(r#"{"id": "#),
                    var(Variable::Resp {
                        name: "u".into(),
                        pointer: "/id".into(),
                    }),
                    lit("}"),
                ],
            ),
            ("a}b{", vec![lit("a}b{")]),
        ];
        for (text, segments) in cases {
            assert_eq!(Template::parse(text), Ok(Template { segments }), "{text:?}");
        }
    }

    #[test]
    fn bad_templates_are_refused() {
        for text in [
            "{nope}",
            "{param}",
            "{param.}",
            "{param.a b}",
            "{last.x}",
            "{resp.}",
            "{resp.a.id}",
            "{unclosed",
            "/a/{param.x",
            "{query.x}",
        ] {
            assert!(Template::parse(text).is_err(), "{text:?}");
        }
    }

    #[test]
    fn dependencies_are_the_resp_names() {
        let t = Template::parse("/{resp.a./x}/{param.p}/{resp.b}").unwrap();
        assert_eq!(t.dependencies().collect::<Vec<_>>(), ["a", "b"]);
    }
}
