//! The certificate schema. What it cannot say — the PEM parses, the key matches the leaf
//! certificate, every SNI is one of the certificate's names — is checked by
//! [`crate::model::Certificate::load`], answered like a schema violation (400, with `/cert`,
//! `/key` or `/snis/N`).

use serde_json::{Value, json};

use super::{common_properties, server_managed};
use crate::plugins::auth::REDACTED;

/// A server name: DNS labels, the first of which may be `*` (a wildcard SNI).
pub(crate) const SNI_PATTERN: &str = r"^(\*\.)?([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)*[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?$";

/// A self-signed example for `example.com` and `*.example.com` (valid until 2126); its key
/// is shown as reads show every key.
const EXAMPLE_CERT: &str = "-----BEGIN CERTIFICATE-----
MIIBqjCCAVCgAwIBAgIURAsMPE3QSjs2n1HfenGHH99g8CkwCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLZXhhbXBsZS5jb20wIBcNMjYxMjA2MjMxNjQ4WhgPMjEyNjEx
MTIyMzE2NDhaMBYxFDASBgNVBAMMC2V4YW1wbGUuY29tMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAEoLgu8zCugAHthCMaYQYgJp6j3QOCey7K4ycjapQB8xGRNSku
ean5V3ZtimghuZsY2y5jvmjNmCRLTe7EoXYQgaN6MHgwHQYDVR0OBBYEFJZo/PWm
XIIMLzfJ8D5CNOCSji7XMB8GA1UdIwQYMBaAFJZo/PWmXIIMLzfJ8D5CNOCSji7X
MA8GA1UdEwEB/wQFMAMBAf8wJQYDVR0RBB4wHIILZXhhbXBsZS5jb22CDSouZXhh
bXBsZS5jb20wCgYIKoZIzj0EAwIDSAAwRQIhALESp3DkVu2ziXRY0q++YLn8WALy
pnzwsIhNqZNW4WjeAiBoUvvUoCYccRdsiNSc1+E8PG+gFgx5/bj4iu2h5qiqUQ==
-----END CERTIFICATE-----
";

/// The certificate kind's schema.
pub(super) fn certificate_schema() -> Value {
    let mut props = common_properties();
    props.insert(
        "snis".into(),
        json!({
            "type": "array",
            "minItems": 1,
            "maxItems": 256,
            "items": {"type": "string", "minLength": 1, "maxLength": 253, "pattern": SNI_PATTERN},
            "description": "Server names this certificate is served for: exact names, or `*.` wildcards \
                            covering one label. Each must be one of the certificate's names (exactly, \
                            or through its wildcard, RFC 6125), else 400 at /snis/N. A handshake picks \
                            an exact SNI over a wildcard, case-insensitively."
        }),
    );
    props.insert(
        "cert".into(),
        json!({
            "type": "string",
            "minLength": 1,
            "maxLength": 65536,
            "description": "PEM: the leaf certificate first, then its intermediates, served whole. \
                            Must parse as X.509 (else 400 at /cert)."
        }),
    );
    props.insert(
        "key".into(),
        json!({
            "type": "string",
            "minLength": 1,
            "maxLength": 16384,
            "description": format!(
                "The leaf's private key, PEM (PKCS#8, PKCS#1 or SEC1; RSA, ECDSA or Ed25519). Must \
                 match the leaf certificate (else 400 at /key). Write-only: reads, diffs, exports \
                 and versions answer {REDACTED:?}, and writing {REDACTED:?} back keeps the stored \
                 key (409 when none is stored)."
            )
        }),
    );
    props.insert(
        "default".into(),
        json!({
            "type": "boolean",
            "default": false,
            "description": "Served to a handshake whose SNI matches no certificate (or that sends \
                            none). At most one certificate may be the default (409)."
        }),
    );
    props.insert(
        "not_after".into(),
        server_managed(
            "Server-managed: when the leaf certificate expires, unix seconds, read from it. \
             Ignored on input.",
        ),
    );
    json!({
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "title": "certificate",
        "examples": [{
            "snis": ["example.com", "*.example.com"],
            "cert": EXAMPLE_CERT,
            "key": REDACTED,
            "default": true
        }],
        "type": "object",
        "properties": props,
        "required": ["snis", "cert", "key"],
        "additionalProperties": false
    })
}
