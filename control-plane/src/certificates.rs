//! The `certificates` kind on the control plane: the private key is write-only (redacted on
//! every read, diff, export and version, as [`crate::secrets`] does a JWT secret, and the
//! placeholder written back keeps the stored key), reads carry the leaf's expiry
//! (`not_after`), and `GET /api/v1/status` names the certificates about to expire.

use std::collections::BTreeMap;

use gateway_proto::model::{Certificate, Parsed};
use gateway_proto::plugins::auth::REDACTED;
use gateway_proto::{Kind, ResourceKey, Violation};
use serde_json::{Value, json};

use crate::config::ConfigState;

const KEY: &str = "/key";
/// The read-only field reads add.
pub const NOT_AFTER: &str = "not_after";
/// How soon an expiry is worth a warning in `GET /api/v1/status`.
pub const EXPIRY_WARNING_SECS: i64 = 14 * 24 * 3600;

/// Before validation of a written certificate: the read-only `not_after` dropped (it is read
/// from the certificate, never stored), and a redacted key replaced with the stored one.
pub fn restore_key(document: &mut Value, existing: Option<&Value>) -> Result<(), Violation> {
    if let Value::Object(fields) = document {
        fields.remove(NOT_AFTER);
    }
    let Some(key) = document.pointer_mut(KEY) else {
        return Ok(());
    };
    if key.as_str() != Some(REDACTED) {
        return Ok(());
    }
    match existing.and_then(|e| e.pointer(KEY)) {
        Some(stored) => {
            *key = stored.clone();
            Ok(())
        }
        // As for a JWT secret: the placeholder names a key that is not there (409).
        None => Err(Violation::reference(
            KEY,
            format!("{REDACTED:?} only keeps an existing key; this certificate has none"),
        )),
    }
}

/// A stored certificate as the API shows it: the key redacted, `not_after` added.
pub fn show(document: &mut Value) {
    if let Some(key) = document.pointer_mut(KEY) {
        *key = Value::String(REDACTED.into());
    }
    let not_after = serde_json::from_value::<Certificate>(document.clone())
        .ok()
        .and_then(|c| c.load().ok())
        .map(|loaded| loaded.not_after);
    if let (Some(not_after), Value::Object(fields)) = (not_after, document) {
        fields.insert(NOT_AFTER.into(), not_after.into());
    }
}

/// The certificates of `config` that expire within [`EXPIRY_WARNING_SECS`] of `now` (unix
/// seconds), or already have: `{"id", "not_after", "days_left"}`, soonest first.
pub fn expiring(config: &ConfigState, now: i64) -> Vec<Value> {
    let mut found: Vec<(i64, &str)> = config
        .of_kind(Kind::Certificates)
        .filter_map(|(key, entry)| match &entry.parsed {
            Parsed::Certificate(c) => {
                // Only the leaf is read: with the key's placeholder, the key is not parsed.
                let leaf_only = Certificate {
                    key: REDACTED.to_owned(),
                    ..c.clone()
                };
                leaf_only
                    .load()
                    .ok()
                    .map(|l| (l.not_after, key.id.as_str()))
            }
            _ => None,
        })
        .filter(|(not_after, _)| *not_after - now <= EXPIRY_WARNING_SECS)
        .collect();
    found.sort_unstable();
    found
        .into_iter()
        .map(|(not_after, id)| {
            json!({"id": id, "not_after": not_after, "days_left": (not_after - now).div_euclid(86_400)})
        })
        .collect()
}

/// At most one certificate may be the default: a write that would leave two is refused
/// (409, a rule across resources), located at the `default` of each changed one that claims
/// it. `changed`: the write's resources (`None`: deleted).
pub fn default_conflicts(
    current: &ConfigState,
    changed: &BTreeMap<&ResourceKey, Option<&Parsed>>,
) -> Vec<Violation> {
    let claims = |parsed: &Parsed| matches!(parsed, Parsed::Certificate(c) if c.default);
    if !changed.values().flatten().any(|p| claims(p)) {
        return Vec::new();
    }
    let unchanged = current
        .of_kind(Kind::Certificates)
        .filter(|(key, _)| !changed.contains_key(key))
        .map(|(key, entry)| (key, &entry.parsed));
    let written = changed
        .iter()
        .filter_map(|(key, parsed)| parsed.map(|p| (*key, p)));
    let defaults: Vec<&ResourceKey> = unchanged
        .chain(written)
        .filter(|(_, parsed)| claims(parsed))
        .map(|(key, _)| key)
        .collect();
    if defaults.len() < 2 {
        return Vec::new();
    }
    let names: Vec<String> = defaults.iter().map(ToString::to_string).collect();
    defaults
        .iter()
        .filter(|key| changed.contains_key(*key))
        .map(|key| {
            Violation::reference(
                "/default",
                format!(
                    "{key} would be one of several default certificates ({}); at most one may be",
                    names.join(", ")
                ),
            )
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_key_never_leaves_and_the_placeholder_keeps_it() {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["a.example.com".to_owned()])
            .unwrap()
            .self_signed(&key)
            .unwrap();
        let stored =
            json!({"snis": ["a.example.com"], "cert": cert.pem(), "key": key.serialize_pem()});
        let mut shown = stored.clone();
        show(&mut shown);
        assert_eq!(shown["key"], REDACTED);
        assert!(!shown.to_string().contains("PRIVATE KEY"));
        assert!(shown[NOT_AFTER].as_i64().unwrap() > 4_000_000_000);

        let mut written = shown.clone();
        restore_key(&mut written, Some(&stored)).unwrap();
        assert_eq!(written, stored);
        let mut orphan = shown;
        assert!(restore_key(&mut orphan, None).is_err());
    }

    #[test]
    fn certificates_about_to_expire_are_listed_soonest_first() {
        let make = |name: &str, day: u8| {
            let key = rcgen::KeyPair::generate().unwrap();
            let mut params = rcgen::CertificateParams::new(vec![name.to_owned()]).unwrap();
            params.not_after = rcgen::date_time_ymd(2030, 1, day);
            let cert = params.self_signed(&key).unwrap();
            let body = json!({"snis": [name], "cert": cert.pem(), "key": key.serialize_pem()});
            let parsed = gateway_proto::validate_resource(Kind::Certificates, &body).unwrap();
            (ResourceKey::new(Kind::Certificates, name), parsed, body)
        };
        let mut config = ConfigState::default();
        let mut not_after = BTreeMap::new();
        for (name, day) in [("late.test", 30), ("soon.test", 10), ("sooner.test", 5)] {
            let (key, parsed, body) = make(name, day);
            if let Parsed::Certificate(c) = &parsed {
                not_after.insert(name, c.load().unwrap().not_after);
            }
            let entry = crate::config::Entry::new(body, parsed, 1, 0, 0);
            config.resources.insert(key, std::sync::Arc::new(entry));
        }
        // On the 7th: the 5th has expired, the 10th is within 14 days, the 30th is not.
        let now = not_after["soon.test"] - 3 * 86_400;
        let listed = expiring(&config, now);
        let ids: Vec<&str> = listed.iter().map(|c| c["id"].as_str().unwrap()).collect();
        assert_eq!(ids, ["sooner.test", "soon.test"]);
        assert_eq!(listed[0]["days_left"], -2);
        assert_eq!(listed[1]["days_left"], 3);
    }
}
