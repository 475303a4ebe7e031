//! `ip-restriction`: allows or denies clients by address (IPv4/IPv6 CIDR blocks).
//!
//! Named as in APISIX: `whitelist` (only these clients) or `blacklist` (every client but
//! these), exactly one of the two. An entry is an address (`10.0.0.1`, `::1`) or a block
//! (`10.0.0.0/8`, `fd00::/8`), parsed like a route's `remote_addrs`; the schema's pattern says
//! exactly which entries parse.

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

/// The config schema.
pub fn schema() -> Value {
    let list = json!({
        "type": "array",
        "minItems": 1,
        "maxItems": 4096,
        "items": {
            "type": "string",
            "pattern": crate::schema::cidr_pattern(),
            "description": "An IPv4 or IPv6 address (10.0.0.1, ::1) or CIDR block (10.0.0.0/8, fd00::/8)."
        }
    });
    json!({
        "type": "object",
        "properties": {
            "whitelist": list,
            "blacklist": list,
            "message": {"type": "string", "minLength": 1, "maxLength": 1024, "default": DEFAULT_MESSAGE},
            "rejected_code": {"type": "integer", "minimum": 200, "maximum": 599, "default": 403}
        },
        "allOf": [crate::schema::exactly_one_of("whitelist", "blacklist")],
        "additionalProperties": false
    })
}

const DEFAULT_MESSAGE: &str = "Your IP address is not allowed";

/// The typed config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Config {
    /// Only these clients are allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub whitelist: Option<Vec<String>>,
    /// These clients are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blacklist: Option<Vec<String>>,
    /// The message of the refusal.
    #[serde(default = "default_message")]
    pub message: String,
    /// The status of the refusal.
    #[serde(default = "default_code")]
    pub rejected_code: u16,
}

fn default_message() -> String {
    DEFAULT_MESSAGE.into()
}

fn default_code() -> u16 {
    403
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use crate::Kind;
    use crate::schema::validate_resource;

    fn pointers(plugin: serde_json::Value) -> Vec<String> {
        let route =
            json!({"paths": ["/"], "upstream_id": "u", "plugins": {"ip-restriction": plugin}});
        match validate_resource(Kind::Routes, &route) {
            Ok(_) => Vec::new(),
            Err(violations) => violations.into_iter().map(|v| v.pointer).collect(),
        }
    }

    #[test]
    fn exactly_one_list_of_valid_blocks() {
        assert!(pointers(json!({"whitelist": ["10.0.0.0/8", "::1", "fd00::/8"]})).is_empty());
        assert!(
            pointers(json!({"blacklist": ["1.2.3.4"], "rejected_code": 401, "message": "no"}))
                .is_empty()
        );
        assert_eq!(
            pointers(json!({"whitelist": ["10.0.0.0/33"]})),
            ["/plugins/ip-restriction/whitelist/0"]
        );
        assert_eq!(
            pointers(json!({"blacklist": ["1.2.3.4", "999.1.1.1"]})),
            ["/plugins/ip-restriction/blacklist/1"]
        );
        assert!(!pointers(json!({"whitelist": ["1.1.1.1"], "blacklist": ["2.2.2.2"]})).is_empty());
        assert!(!pointers(json!({})).is_empty());
        assert!(!pointers(json!({"whitelist": []})).is_empty());
        assert!(
            !pointers(json!({"allow": ["1.1.1.1"]})).is_empty(),
            "APISIX's names only"
        );
        let config: super::Config =
            serde_json::from_value(json!({"whitelist": ["1.1.1.1"]})).unwrap();
        assert_eq!(
            (config.rejected_code, config.message.as_str()),
            (403, "Your IP address is not allowed")
        );
    }
}
