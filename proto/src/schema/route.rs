//! The route schema and its semantic rules.

use std::collections::HashSet;

use serde_json::{Value, json};

use super::upstream::{check_upstream, upstream_body_properties};
use super::{HOST_PATTERN, ID_PATTERN, Violation, common_properties};
use crate::model::Route;

/// The route kind's schema.
pub(super) fn route_schema() -> Value {
    let mut props = common_properties();
    props.insert(
        "paths".into(),
        json!({
            "type": "array",
            "minItems": 1,
            "maxItems": 64,
            "uniqueItems": true,
            "items": {"type": "string", "pattern": "^/[^\\s?#]*$", "maxLength": 4096}
        }),
    );
    props.insert(
        "hosts".into(),
        json!({
            "type": "array",
            "maxItems": 64,
            "uniqueItems": true,
            "items": {"type": "string", "pattern": HOST_PATTERN}
        }),
    );
    props.insert(
        "methods".into(),
        json!({
            "type": "array",
            "uniqueItems": true,
            "items": {"enum": ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS", "CONNECT", "TRACE"]}
        }),
    );
    props.insert(
        "priority".into(),
        json!({"type": "integer", "minimum": -1000000, "maximum": 1000000, "default": 0}),
    );
    props.insert(
        "enabled".into(),
        json!({"type": "boolean", "default": true}),
    );
    props.insert(
        "upstream_id".into(),
        json!({"type": "string", "pattern": ID_PATTERN}),
    );
    let mut inline = upstream_body_properties();
    inline.insert("desc".into(), json!({"type": "string", "maxLength": 1024}));
    props.insert(
        "upstream".into(),
        json!({
            "type": "object",
            "properties": inline,
            "required": ["nodes"],
            "additionalProperties": false
        }),
    );
    // No plugin is available yet: naming one is refused rather than silently ignored.
    props.insert(
        "plugins".into(),
        json!({"type": "object", "properties": {}, "additionalProperties": false}),
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "route",
        "type": "object",
        "properties": props,
        "required": ["paths"],
        "additionalProperties": false
    })
}

/// Semantic rules of a route.
pub(super) fn check_route(route: &Route, out: &mut Vec<Violation>) {
    match (&route.upstream_id, &route.upstream) {
        (Some(_), Some(_)) => out.push(Violation::new(
            "/upstream",
            "a route sends to exactly one of upstream_id or upstream, not both",
        )),
        (None, None) => out.push(Violation::new(
            "",
            "a route needs a target: upstream_id or upstream",
        )),
        _ => {}
    }
    if let Some(upstream) = &route.upstream {
        check_upstream(upstream, "/upstream", out);
    }
    for (i, path) in route.paths.iter().enumerate() {
        if let Err(message) = check_path(path) {
            out.push(Violation::new(format!("/paths/{i}"), message));
        }
    }
}

/// Checks path-pattern syntax: `:name` segments with unique names, `*` only at the very end.
pub fn check_path(path: &str) -> Result<(), String> {
    if let Some(pos) = path.find('*')
        && pos != path.len() - 1
    {
        return Err(format!(
            "\"*\" is only allowed at the end of a path: {path}"
        ));
    }
    let mut names = HashSet::new();
    for segment in path.split('/') {
        if let Some(name) = segment.strip_prefix(':') {
            let valid = !name.is_empty()
                && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
                && !name.as_bytes()[0].is_ascii_digit();
            if !valid {
                return Err(format!(
                    "a named segment is \":\" followed by [A-Za-z_][A-Za-z0-9_]*, got {segment:?}"
                ));
            }
            if !names.insert(name) {
                return Err(format!("the segment name {name:?} is used twice"));
            }
        } else if segment.contains(':') {
            return Err(format!(
                "\":\" may only start a named segment, got {segment:?}"
            ));
        }
    }
    Ok(())
}
