//! `uri-blocker`: refuses a request whose path and query match one of its rules (rewrite
//! phase, as in APISIX, at APISIX's priority 2900: before `proxy-rewrite` changes the URI and
//! before authentication spends anything on it).
//!
//! The subject is the URI the router matched: the normalised path and the query as sent
//! (`/path?query`); when the query has escapes, the same with the query percent-decoded too,
//! so that `?q=%3Cscript%3E` is refused by a rule written `<script` (a raw `<` never reaches
//! a route: it is not a URI character). The rules are one
//! `RegexSet` compiled per snapshot: one pass over the subject whatever their number.

use std::borrow::Cow;

use http::{StatusCode, Uri, request};
use regex::bytes::RegexSet;
use serde_json::Value;

use super::{Plugin, Reject, RequestCtx, reject};
use crate::transport::query;
use gateway_proto::plugins::uri_blocker::{Config, compile};

const DEFAULT_MESSAGE: &str = "the request URI is not allowed";

/// A compiled `uri-blocker`.
#[derive(Debug)]
pub struct UriBlocker {
    priority: i32,
    rules: RegexSet,
    rejected: StatusCode,
    message: String,
}

impl UriBlocker {
    /// Compiles a validated config; a rule that does not compile fails the snapshot.
    pub fn build(priority: i32, config: &Value) -> Result<UriBlocker, String> {
        let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let rules = compile(&config).map_err(|(i, reason)| format!("block_rules/{i}: {reason}"))?;
        let rejected = StatusCode::from_u16(config.rejected_code)
            .map_err(|_| format!("rejected_code {} is not a status", config.rejected_code))?;
        Ok(UriBlocker {
            priority,
            rules,
            rejected,
            message: config
                .rejected_msg
                .unwrap_or_else(|| DEFAULT_MESSAGE.to_owned()),
        })
    }

    /// Whether a rule matches `uri`'s path and query.
    pub fn blocks(&self, uri: &Uri) -> bool {
        let path = uri.path().as_bytes();
        let Some(raw) = uri.query() else {
            return self.rules.is_match(path);
        };
        let with = |query: &[u8]| {
            let mut subject = Vec::with_capacity(path.len() + 1 + query.len());
            subject.extend_from_slice(path);
            subject.push(b'?');
            subject.extend_from_slice(query);
            subject
        };
        if self.rules.is_match(&with(raw.as_bytes())) {
            return true;
        }
        match query::decode(raw) {
            Cow::Borrowed(_) => false,
            Cow::Owned(decoded) => self.rules.is_match(&with(&decoded)),
        }
    }
}

impl Plugin for UriBlocker {
    fn name(&self) -> &'static str {
        "uri-blocker"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn rewrite(
        &self,
        _ctx: &mut RequestCtx<'_>,
        request: &mut request::Parts,
    ) -> Result<(), Reject> {
        if self.blocks(&request.uri) {
            return Err(reject(self.rejected, "uri_blocked", &self.message));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn blocker(config: Value) -> UriBlocker {
        UriBlocker::build(2900, &config).unwrap()
    }

    #[test]
    fn rules_match_the_path_and_the_query_raw_or_decoded() {
        let b = blocker(json!({"block_rules": ["^/admin", "<script"]}));
        let blocks = |uri: &str| b.blocks(&uri.parse::<Uri>().unwrap());
        assert!(blocks("/admin"));
        assert!(blocks("/admin/users?x=1"));
        assert!(!blocks("/api/admin"), "anchored at the path's start");
        assert!(blocks("/search?q=%3Cscript%3Ealert(1)"));
        assert!(
            blocks("/search?q=x+%3cscript"),
            "escapes of either case, `+` as a space"
        );
        assert!(!blocks("/search?q=script"));
        assert!(!blocks("/ADMIN"), "case-sensitive by default");
        let ci = blocker(json!({"block_rules": ["^/admin"], "case_insensitive": true}));
        assert!(ci.blocks(&"/ADMIN".parse::<Uri>().unwrap()));
    }

    #[test]
    fn the_refusal_has_the_configured_status_and_message() {
        let b = blocker(json!({"block_rules": ["x"], "rejected_code": 451, "rejected_msg": "no"}));
        assert_eq!(
            (b.rejected, b.message.as_str()),
            (StatusCode::from_u16(451).unwrap(), "no")
        );
        assert_eq!(
            blocker(json!({"block_rules": ["x"]})).rejected,
            StatusCode::FORBIDDEN
        );
    }

    #[test]
    fn a_rule_that_slipped_through_fails_the_compile() {
        let error = UriBlocker::build(2900, &json!({"block_rules": ["ok", "("]})).unwrap_err();
        assert!(error.starts_with("block_rules/1: "), "{error}");
    }
}
