//! `uri-blocker`: refuses requests whose path and query match one of a list of regular
//! expressions (APISIX's plugin of that name: `block_rules`, `rejected_code`, `rejected_msg`,
//! `case_insensitive`).
//!
//! The rules are compiled once per snapshot, all together into one set (one pass over the URI
//! whatever their number), with the engine and size limit of every other regular expression of
//! the config; a rule that does not compile is refused on write with its pointer
//! (`/plugins/uri-blocker/block_rules/N`), and a data plane NACKs a snapshot that holds one.

use regex::bytes::{RegexBuilder, RegexSet, RegexSetBuilder};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::schema::Violation;

/// The compiled size allowed to one rule, and to the set of them.
const SIZE_LIMIT: usize = 1 << 20;

/// The config schema.
pub fn schema() -> Value {
    let mut rule = crate::schema::regex_value_schema();
    rule["minLength"] = 1.into();
    rule["maxLength"] = 4096.into();
    json!({
        "type": "object",
        "properties": {
            "block_rules": {
                "type": "array", "minItems": 1, "maxItems": 256,
                "description": "Regular expressions searched for (unanchored) in the request's normalised path and query: `/path?query` as sent, and with the query percent-decoded.",
                "items": rule
            },
            "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 403},
            "rejected_msg": {"type": "string", "minLength": 1, "maxLength": 1024, "description": "The message of the refusal (JSON error shape); a default one without it."},
            "case_insensitive": {"type": "boolean", "default": false}
        },
        "required": ["block_rules"],
        "additionalProperties": false
    })
}

/// The typed config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Regular expressions; a request whose URI matches one is refused.
    pub block_rules: Vec<String>,
    /// The status of the refusal.
    #[serde(default = "default_code")]
    pub rejected_code: u16,
    /// The message of the refusal.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_msg: Option<String>,
    /// Match regardless of case.
    #[serde(default)]
    pub case_insensitive: bool,
}

fn default_code() -> u16 {
    403
}

/// Compiles the rules into one set. `Err((index, reason))` names the first rule that does not
/// compile (or `index == len` when only the set as a whole is too large).
pub fn compile(config: &Config) -> Result<RegexSet, (usize, String)> {
    for (i, rule) in config.block_rules.iter().enumerate() {
        RegexBuilder::new(rule)
            .case_insensitive(config.case_insensitive)
            .size_limit(SIZE_LIMIT)
            .build()
            .map_err(|e| (i, format!("invalid regular expression: {e}")))?;
    }
    RegexSetBuilder::new(&config.block_rules)
        .case_insensitive(config.case_insensitive)
        .size_limit(SIZE_LIMIT * 4)
        .build()
        .map_err(|e| {
            (
                config.block_rules.len(),
                format!("the rules together are too large: {e}"),
            )
        })
}

/// The rule a schema cannot say: every rule compiles in Rust's syntax.
pub fn check(config: &Value, at: &str, out: &mut Vec<Violation>) {
    let Ok(config) = serde_json::from_value::<Config>(config.clone()) else {
        return;
    };
    if let Err((i, message)) = compile(&config) {
        let at = match i {
            i if i < config.block_rules.len() => format!("{at}/block_rules/{i}"),
            _ => format!("{at}/block_rules"),
        };
        out.push(Violation::new(at, message));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Kind;
    use crate::schema::validate_resource;

    fn pointers(plugin: serde_json::Value) -> Vec<String> {
        let route = json!({"paths": ["/"], "upstream_id": "u", "plugins": {"uri-blocker": plugin}});
        match validate_resource(Kind::Routes, &route) {
            Ok(_) => Vec::new(),
            Err(violations) => violations.into_iter().map(|v| v.pointer).collect(),
        }
    }

    #[test]
    fn rules_compile_or_are_refused_with_their_pointer() {
        assert!(pointers(json!({"block_rules": ["^/admin", "<script"]})).is_empty());
        assert!(
            pointers(json!({"block_rules": ["x"], "rejected_code": 410, "rejected_msg": "gone", "case_insensitive": true}))
                .is_empty()
        );
        assert_eq!(
            pointers(json!({"block_rules": ["ok", "a(?=b)"]})),
            ["/plugins/uri-blocker/block_rules/1"]
        );
        assert_eq!(
            pointers(json!({"block_rules": ["("]})),
            ["/plugins/uri-blocker/block_rules/0"]
        );
        assert_eq!(
            pointers(json!({"block_rules": ["a"], "rejected_code": 99})),
            ["/plugins/uri-blocker/rejected_code"]
        );
        assert!(!pointers(json!({})).is_empty());
        assert!(!pointers(json!({"block_rules": []})).is_empty());
        assert!(!pointers(json!({"block_rules": ["a"], "other": 1})).is_empty());
        let config: super::Config = serde_json::from_value(json!({"block_rules": ["a"]})).unwrap();
        assert_eq!(
            (
                config.rejected_code,
                config.rejected_msg,
                config.case_insensitive
            ),
            (403, None, false)
        );
    }

    #[test]
    fn case_insensitive_rules_match_regardless_of_case() {
        let config = |ci: bool| super::Config {
            block_rules: vec!["<script".into()],
            rejected_code: 403,
            rejected_msg: None,
            case_insensitive: ci,
        };
        assert!(
            !super::compile(&config(false))
                .unwrap()
                .is_match(b"/?q=<SCRIPT>")
        );
        assert!(
            super::compile(&config(true))
                .unwrap()
                .is_match(b"/?q=<SCRIPT>")
        );
    }
}
