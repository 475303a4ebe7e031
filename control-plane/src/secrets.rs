//! Secrets at rest and on the way out: consumer credentials are sealed on write (an API key
//! becomes its SHA-256 digest, a password an argon2id hash — see `gateway_proto::plugins::auth`
//! for the parameters and why) and the secrets that must stay usable — a JWT HMAC secret,
//! proxy-cache's `purge_key`, a certificate's key (`gateway_proto::model::write_only_fields`)
//! — are redacted on every read. Writing the redacted placeholder back keeps the stored
//! secret, so a resource read with `GET` can be `PUT` back unchanged.

use gateway_proto::model::write_only_fields;
use gateway_proto::plugins::auth::{REDACTED, hash_password, key_digest};
use gateway_proto::{Kind, Violation};
use serde_json::Value;

/// Replaces each redacted placeholder in `document` with the secret stored in `existing`.
pub fn restore_redacted(
    kind: Kind,
    document: &mut Value,
    existing: Option<&Value>,
) -> Result<(), Violation> {
    if kind == Kind::Certificates {
        return crate::certificates::restore_key(document, existing);
    }
    for &pointer in write_only_fields(kind) {
        let Some(secret) = document.pointer_mut(pointer) else {
            continue;
        };
        if secret.as_str() != Some(REDACTED) {
            continue;
        }
        match existing.and_then(|e| e.pointer(pointer)) {
            Some(stored) => *secret = stored.clone(),
            // The placeholder names the stored secret; with none stored it names nothing: a
            // reference that does not resolve (409), not a malformed document.
            None => {
                return Err(Violation::reference(
                    pointer,
                    format!("{REDACTED:?} only keeps an existing secret; none is stored here"),
                ));
            }
        }
    }
    Ok(())
}

/// Seals plaintext credentials in a validated consumer document.
pub fn seal(kind: Kind, document: &mut Value) -> Result<(), Violation> {
    if kind != Kind::Consumers {
        return Ok(());
    }
    if let Some(Value::Object(key_auth)) = document.pointer_mut("/credentials/key-auth")
        && let Some(Value::String(key)) = key_auth.remove("key")
    {
        key_auth.insert("key_sha256".into(), key_digest(&key).into());
    }
    if let Some(Value::Object(basic)) = document.pointer_mut("/credentials/basic-auth")
        && let Some(Value::String(password)) = basic.remove("password")
    {
        let mut salt = [0u8; 16];
        getrandom::fill(&mut salt).map_err(|e| {
            Violation::new(
                "/credentials/basic-auth/password",
                format!("no randomness: {e}"),
            )
        })?;
        basic.insert(
            "password_hash".into(),
            hash_password(&password, &salt).into(),
        );
    }
    Ok(())
}

/// The document as the API shows it: secrets that are stored usable are redacted.
pub fn redact(kind: Kind, document: &Value) -> Value {
    let mut shown = document.clone();
    if kind == Kind::Certificates {
        crate::certificates::show(&mut shown);
        return shown;
    }
    for &pointer in write_only_fields(kind) {
        if let Some(secret) = shown.pointer_mut(pointer) {
            *secret = Value::String(REDACTED.into());
        }
    }
    shown
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plaintext_never_survives_sealing_and_secrets_never_leave() {
        let mut consumer = json!({"credentials": {
            "key-auth": {"key": "alice-key-123"},
            "basic-auth": {"username": "alice", "password": "pw"},
            "jwt-auth": {"key": "alice", "secret": "very-secret-value"}
        }});
        seal(Kind::Consumers, &mut consumer).unwrap();
        let text = consumer.to_string();
        assert!(!text.contains("alice-key-123"));
        assert!(!text.contains("\"pw\""));
        assert_eq!(
            consumer["credentials"]["key-auth"]["key_sha256"],
            key_digest("alice-key-123")
        );
        assert!(
            consumer["credentials"]["basic-auth"]["password_hash"]
                .as_str()
                .unwrap()
                .starts_with("$argon2id$v=19$m=19456,t=2,p=1$")
        );
        let shown = redact(Kind::Consumers, &consumer);
        assert!(!shown.to_string().contains("very-secret-value"));

        let mut round_trip = shown.clone();
        restore_redacted(Kind::Consumers, &mut round_trip, Some(&consumer)).unwrap();
        assert_eq!(round_trip, consumer);
        let mut orphan = shown;
        assert!(restore_redacted(Kind::Consumers, &mut orphan, None).is_err());
    }

    #[test]
    fn a_purge_key_is_redacted_and_kept_when_written_back() {
        let route =
            json!({"paths": ["/"], "plugins": {"proxy-cache": {"purge_key": "purge-secret-1"}}});
        let shown = redact(Kind::Routes, &route);
        assert_eq!(shown["plugins"]["proxy-cache"]["purge_key"], REDACTED);
        assert!(!shown.to_string().contains("purge-secret-1"));

        let mut written_back = shown.clone();
        restore_redacted(Kind::Routes, &mut written_back, Some(&route)).unwrap();
        assert_eq!(written_back, route);
        // A new key replaces the stored one; the placeholder with nothing stored is refused.
        let mut replaced =
            json!({"paths": ["/"], "plugins": {"proxy-cache": {"purge_key": "purge-secret-2"}}});
        restore_redacted(Kind::Routes, &mut replaced, Some(&route)).unwrap();
        assert_eq!(
            replaced["plugins"]["proxy-cache"]["purge_key"],
            "purge-secret-2"
        );
        let mut orphan = shown.clone();
        let refused = restore_redacted(Kind::Routes, &mut orphan, Some(&json!({"paths": ["/"]})));
        assert!(refused.is_err());
        // Global rules and consumers carry plugins too.
        let rule = json!({"plugins": {"proxy-cache": {"purge_key": "purge-secret-3"}}});
        assert_eq!(
            redact(Kind::GlobalRules, &rule)["plugins"]["proxy-cache"]["purge_key"],
            REDACTED
        );
        assert_eq!(
            redact(Kind::Consumers, &rule)["plugins"]["proxy-cache"]["purge_key"],
            REDACTED
        );
    }
}
