//! The schema of a route's `batch` and the rules a schema cannot say, all about what the
//! sub-requests refer to (so [`Violation::reference`]s, answered 409): names are unique, every
//! `{resp.NAME…}` names another sub-request, the dependency graph has no cycle, and every
//! `{param.NAME}` is captured by the route's paths. The templates' syntax is in the schema.

use std::collections::{HashMap, HashSet};

use serde_json::{Value, json};

use super::{ID_PATTERN, Violation, escape_pointer, rule};
use crate::model::{Batch, Template, Variable};

/// Sub-request names: what `{resp.NAME…}` can refer to (no `.`, which starts the pointer).
const NAME_PATTERN: &str = "^[A-Za-z0-9_-]{1,64}$";
/// Most sub-requests in one batch.
pub const MAX_SUB_REQUESTS: usize = 64;

/// The pattern of a template's text after `prefix`, none of whose characters may be one of
/// `excluded` (a regex class body, `\s#` for a path): exactly what `Template::parse` reads. A
/// `{` followed by a lowercase letter opens a variable, which must be `{last}`, `{query}`,
/// `{param.NAME}`, `{arg.NAME}`, `{header.NAME}` or `{resp.NAME}` / `{resp.NAME.}` /
/// `{resp.NAME./json/pointer}`; any other `{` is text.
pub(crate) fn template_pattern(prefix: &str, excluded: &str) -> String {
    let name = "[A-Za-z0-9_-]{1,64}";
    let variable =
        format!(r"(last|query|(param|arg|header)\.{name}|resp\.{name}(\.(/[^}}{excluded}]*)?)?)");
    format!(r"^{prefix}([^{{{excluded}]|\{{+[^a-z{{{excluded}]|\{{*\{{{variable}\}})*\{{*$")
}

/// Whether `pattern` is one of the template patterns of [`batch_schema`].
pub(super) fn is_template_pattern(pattern: &str) -> bool {
    static PATTERNS: std::sync::LazyLock<[String; 2]> =
        std::sync::LazyLock::new(|| [template_pattern("/", r"\s#"), template_pattern("", "")]);
    PATTERNS.iter().any(|p| p == pattern)
}

/// The schema of `batch`.
pub(super) fn batch_schema() -> Value {
    let templates = "Template variables: {param.NAME} (a named segment every route path captures), {last}, {query}, {arg.NAME}, {header.NAME}, {resp.NAME.<json-pointer>} (another sub-request's answer: this one waits for it; NAME must be another sub-request of this batch, and the waits must not form a cycle — answered 409 otherwise).";
    json!({
        "type": "object",
        "description": "One client request fanned out to several upstream requests, merged into one JSON answer. Sub-request names are unique within the batch (409 otherwise).",
        "properties": {
            "requests": {
                "type": "array",
                "minItems": 1,
                "maxItems": MAX_SUB_REQUESTS,
                "items": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "pattern": NAME_PATTERN},
                        "upstream_id": {"type": "string", "pattern": ID_PATTERN},
                        "path": {
                            "type": "string",
                            "pattern": template_pattern("/", r"\s#"),
                            "maxLength": 4096,
                            "description": format!("Path (and query) template. {templates}")
                        },
                        "method": {"enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]},
                        "headers": {
                            "type": "object",
                            "maxProperties": 64,
                            "propertyNames": {"pattern": "^[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}$"},
                            "additionalProperties": {
                                "type": "string",
                                "maxLength": 8192,
                                "pattern": template_pattern("", ""),
                                "description": format!("A value template. {templates}")
                            }
                        },
                        "body": {
                            "pattern": template_pattern("", ""),
                            "description": format!("A string template sent as is, or any other JSON value sent as application/json. {templates}")
                        },
                        "required": {"type": "boolean", "default": true},
                        "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 3600000},
                        "hedge": super::upstream::hedge_override_schema(),
                        "group": {"type": "string", "minLength": 1, "maxLength": 256},
                        "cache": {
                            "type": "object",
                            "properties": {
                                "ttl_s": {"type": "integer", "minimum": 1, "maximum": 86400}
                            },
                            "required": ["ttl_s"],
                            "additionalProperties": false,
                            "description": "Keep this sub-request's 2xx answer for ttl_s seconds, keyed by method, upstream and path with query; only GET and HEAD sub-requests are cached. The batch then recomputes only the parts that expired."
                        }
                    },
                    "required": ["name", "upstream_id", "path"],
                    "additionalProperties": false
                }
            },
            "merge": {"enum": ["object", "array", "deep"], "default": "object"},
            "pass_query": {"type": "boolean", "default": false},
            "timeout_ms": {"type": "integer", "minimum": 1, "maximum": 3600000, "default": crate::model::DEFAULT_BATCH_TIMEOUT_MS},
            "max_concurrency": {"type": "integer", "minimum": 1, "maximum": 256, "default": crate::model::DEFAULT_MAX_CONCURRENCY},
            "max_body_bytes": {"type": "integer", "minimum": 1, "maximum": 67108864, "default": crate::model::DEFAULT_MAX_BODY_BYTES}
        },
        "required": ["requests"],
        "additionalProperties": false,
        "allOf": [rule(
            "group only applies to merge \"deep\"",
            json!({
                "if": {"properties": {"merge": {"const": "deep"}}, "required": ["merge"]},
                "else": {"properties": {"requests": {"items": {"properties": {"group": false}}}}}
            }),
        )]
    })
}

/// The rules of `batch` its schema cannot say; `paths` are the route's path patterns, for
/// `{param.NAME}`.
pub(super) fn check_batch(batch: &Batch, paths: &[String], out: &mut Vec<Violation>) {
    let names: HashMap<&str, usize> = batch
        .requests
        .iter()
        .enumerate()
        .map(|(i, r)| (r.name.as_str(), i))
        .collect();
    let mut seen = HashSet::new();
    // Edges of the dependency graph, by index: `deps[i]` are the sub-requests `i` waits for.
    let mut deps: Vec<Vec<usize>> = vec![Vec::new(); batch.requests.len()];
    for (i, request) in batch.requests.iter().enumerate() {
        let at = |field: &str| format!("/batch/requests/{i}/{field}");
        if !seen.insert(request.name.as_str()) {
            out.push(Violation::reference(
                at("name"),
                format!("the sub-request name {:?} is used twice", request.name),
            ));
        }
        let mut templates: Vec<(String, &str)> = vec![(at("path"), request.path.as_str())];
        for (name, value) in &request.headers {
            templates.push((at(&format!("headers/{}", escape_pointer(name))), value));
        }
        if let Some(Value::String(body)) = &request.body {
            templates.push((at("body"), body));
        }
        for (pointer, text) in templates {
            let template = match Template::parse(text) {
                Ok(template) => template,
                Err(error) => {
                    // The schema's pattern refuses it first; this only guards the two from
                    // drifting apart.
                    out.push(Violation::new(pointer, error.to_string()));
                    continue;
                }
            };
            for variable in template.variables() {
                match variable {
                    Variable::Param(name) => {
                        if let Some(path) = paths.iter().find(|p| !captures(p, name)) {
                            out.push(Violation::reference(
                                pointer.clone(),
                                format!(
                                    "{{param.{name}}}: the route path {path:?} has no :{name} segment"
                                ),
                            ));
                        }
                    }
                    Variable::Resp { name, .. } => match names.get(name.as_str()) {
                        Some(&j) if j == i => out.push(Violation::reference(
                            pointer.clone(),
                            format!("{{resp.{name}…}}: a sub-request cannot wait for itself"),
                        )),
                        Some(&j) => deps[i].push(j),
                        None => out.push(Violation::reference(
                            pointer.clone(),
                            format!("{{resp.{name}…}} names no sub-request of this batch"),
                        )),
                    },
                    _ => {}
                }
            }
        }
    }
    if let Some(cycle) = find_cycle(&deps) {
        let names: Vec<&str> = cycle
            .iter()
            .map(|&i| batch.requests[i].name.as_str())
            .collect();
        out.push(Violation::reference(
            format!("/batch/requests/{}", cycle[0]),
            format!(
                "the sub-requests wait for each other in a cycle: {}",
                names.join(" → ")
            ),
        ));
    }
}

/// Whether the path pattern has a `:name` segment.
fn captures(path: &str, name: &str) -> bool {
    path.split('/').any(|s| s.strip_prefix(':') == Some(name))
}

/// One cycle of the graph, as a closed walk of indices (`a → b → a`), if there is one.
pub fn find_cycle(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    #[derive(Clone, Copy, PartialEq)]
    enum Mark {
        New,
        OnStack,
        Done,
    }
    let mut marks = vec![Mark::New; deps.len()];
    for start in 0..deps.len() {
        if marks[start] != Mark::New {
            continue;
        }
        // Iterative depth-first search: (node, next edge to follow). The batch size is bounded
        // by the schema, but recursion on configured data is still avoided.
        let mut stack = vec![(start, 0usize)];
        marks[start] = Mark::OnStack;
        while let Some(&mut (node, ref mut edge)) = stack.last_mut() {
            match deps.get(node).and_then(|d| d.get(*edge)).copied() {
                Some(next) => {
                    *edge += 1;
                    match marks.get(next) {
                        Some(Mark::New) => {
                            marks[next] = Mark::OnStack;
                            stack.push((next, 0));
                        }
                        Some(Mark::OnStack) => {
                            let from = stack.iter().position(|&(n, _)| n == next).unwrap_or(0);
                            let mut cycle: Vec<usize> =
                                stack[from..].iter().map(|&(n, _)| n).collect();
                            cycle.push(next);
                            return Some(cycle);
                        }
                        _ => {}
                    }
                }
                None => {
                    marks[node] = Mark::Done;
                    stack.pop();
                }
            }
        }
    }
    None
}

/// The sub-requests in an order where each comes after every one it waits for, or `None` if
/// the graph has a cycle. Among the ready ones, declared order is kept.
pub fn topological_order(deps: &[Vec<usize>]) -> Option<Vec<usize>> {
    let mut waiting: Vec<usize> = deps.iter().map(|d| d.len()).collect();
    let mut dependents: Vec<Vec<usize>> = vec![Vec::new(); deps.len()];
    for (i, d) in deps.iter().enumerate() {
        for &j in d {
            dependents.get_mut(j)?.push(i);
        }
    }
    let mut ready: std::collections::BTreeSet<usize> =
        (0..deps.len()).filter(|&i| waiting[i] == 0).collect();
    let mut order = Vec::with_capacity(deps.len());
    while let Some(i) = ready.pop_first() {
        order.push(i);
        for &k in &dependents[i] {
            waiting[k] -= 1;
            if waiting[k] == 0 {
                ready.insert(k);
            }
        }
    }
    (order.len() == deps.len()).then_some(order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Kind;
    use crate::schema::validate_resource;

    fn route(batch: Value) -> Value {
        json!({"paths": ["/p/:item", "/q/:item/x"], "batch": batch})
    }

    fn sub(name: &str, path: &str) -> Value {
        json!({"name": name, "upstream_id": "api", "path": path})
    }

    #[test]
    fn valid_batches_pass_with_defaults() {
        let document = route(json!({"requests": [
            sub("user", "/users/{param.item}?{query}&lang={arg.lang}"),
            {"name": "orders", "upstream_id": "api", "path": "/orders/{resp.user./id}",
             "headers": {"x-user": "{header.x-user}", "x-last": "{last}"},
             "body": "{\"user\": {resp.user./id}}", "required": false, "timeout_ms": 5},
        ]}));
        let parsed = validate_resource(Kind::Routes, &document).unwrap();
        let crate::model::Parsed::Route(route) = parsed else {
            panic!("a route")
        };
        let batch = route.batch.unwrap();
        assert_eq!(batch.merge, crate::model::Merge::Object);
        assert_eq!(batch.timeout_ms, crate::model::DEFAULT_BATCH_TIMEOUT_MS);
        assert!(batch.requests[0].required);
        assert!(!batch.requests[1].required);
    }

    #[test]
    fn violations_point_at_the_offending_template() {
        // (batch, the pointer of the first violation, a word of its message)
        let cases = [
            (
                json!({"requests": [sub("a", "/{nope}")]}),
                "/batch/requests/0/path",
                "unknown",
            ),
            (
                json!({"requests": [sub("a", "/x"), sub("b", "/{resp.c./id}")]}),
                "/batch/requests/1/path",
                "names no sub-request",
            ),
            (
                json!({"requests": [sub("a", "/{resp.a./id}")]}),
                "/batch/requests/0/path",
                "itself",
            ),
            (
                json!({"requests": [sub("a", "/x"), sub("b", "/x"), sub("c", "/{param.other}")]}),
                "/batch/requests/2/path",
                ":other",
            ),
            (
                json!({"requests": [sub("a", "/x"), sub("a", "/y")]}),
                "/batch/requests/1/name",
                "twice",
            ),
            (
                json!({"requests": [{"name": "a", "upstream_id": "api", "path": "/x", "headers": {"x-a~b": "{oops}"}}]}),
                "/batch/requests/0/headers/x-a~0b",
                "unknown",
            ),
            (
                json!({"requests": [{"name": "a", "upstream_id": "api", "path": "/x", "body": "{resp.zz}"}]}),
                "/batch/requests/0/body",
                "names no",
            ),
            (
                json!({"requests": [{"name": "a", "upstream_id": "api", "path": "/x", "group": "g"}]}),
                "/batch/requests/0/group",
                "deep",
            ),
            (
                json!({"requests": [sub("a", "/{resp.b./x}"), sub("b", "/{resp.c./x}"), sub("c", "/{resp.a./x}")]}),
                "/batch/requests/0",
                "a → b → c → a",
            ),
            (
                json!({"requests": [sub("a", "/x"), sub("b", "/{resp.c./x}"), sub("c", "/{resp.b./x}")]}),
                "/batch/requests/1",
                "b → c → b",
            ),
            (json!({"requests": []}), "/batch/requests", ""),
            (
                json!({"requests": [sub("a.b", "/x")]}),
                "/batch/requests/0/name",
                "",
            ),
            (
                json!({"requests": [sub("a", "/x")], "merge": "zip"}),
                "/batch/merge",
                "",
            ),
            (
                json!({"requests": [sub("a", "/x")], "max_concurrency": 0}),
                "/batch/max_concurrency",
                "",
            ),
        ];
        for (batch, pointer, word) in cases {
            let errors = validate_resource(Kind::Routes, &route(batch.clone())).unwrap_err();
            assert_eq!(errors[0].pointer, pointer, "{batch}: {errors:?}");
            assert!(errors[0].message.contains(word), "{batch}: {errors:?}");
        }
    }

    #[test]
    fn a_param_must_be_captured_by_every_path() {
        let document = json!({"paths": ["/p/:item", "/all/*"], "batch": {"requests": [sub("a", "/{param.item}")]}});
        let errors = validate_resource(Kind::Routes, &document).unwrap_err();
        assert_eq!(errors[0].pointer, "/batch/requests/0/path");
        assert!(errors[0].message.contains("/all/*"), "{errors:?}");
    }

    #[test]
    fn exactly_one_target() {
        let batch = json!({"requests": [sub("a", "/x")]});
        for document in [
            json!({"paths": ["/a"], "upstream_id": "u", "batch": batch}),
            json!({"paths": ["/a"], "upstream": {"nodes": [{"host": "h", "port": 1}]}, "batch": batch}),
        ] {
            let errors = validate_resource(Kind::Routes, &document).unwrap_err();
            assert_eq!(errors[0].pointer, "/batch", "{errors:?}");
        }
    }

    #[test]
    fn graphs_order_and_cycles() {
        // (dependencies per node, a topological order or None for a cycle)
        type Graph = Vec<Vec<usize>>;
        let cases: Vec<(Graph, Option<Vec<usize>>)> = vec![
            (vec![], Some(vec![])),
            (vec![vec![], vec![]], Some(vec![0, 1])),
            (vec![vec![1], vec![]], Some(vec![1, 0])),
            (vec![vec![2], vec![2], vec![]], Some(vec![2, 0, 1])),
            (
                vec![vec![], vec![0], vec![0, 1], vec![]],
                Some(vec![0, 1, 2, 3]),
            ),
            (vec![vec![0]], None),
            (vec![vec![1], vec![0]], None),
            (vec![vec![], vec![2], vec![3], vec![1]], None),
        ];
        for (deps, order) in cases {
            assert_eq!(topological_order(&deps), order, "{deps:?}");
            assert_eq!(find_cycle(&deps).is_some(), order.is_none(), "{deps:?}");
        }
    }
}
