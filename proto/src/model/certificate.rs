//! TLS certificates: what the data planes' `--tls-listen` serves, chosen by SNI.
//!
//! A certificate is a PEM chain (leaf first), its private key, and the server names (SNIs) it
//! is chosen for. What a schema cannot say is checked here, on both planes ([`Certificate::load`]):
//! the PEM parses, the key matches the leaf, and every SNI is one of the leaf's names — exactly,
//! or through a wildcard name per RFC 6125 §6.4.3 (`*.example.com` covers `a.example.com`, not
//! `example.com` nor `a.b.example.com`). Bytes from a user never panic a parser here.

use std::fmt;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde::{Deserialize, Serialize};
use x509_parser::extensions::GeneralName;

use crate::plugins::auth::REDACTED;
use crate::schema::Violation;

/// A TLS certificate with its key and the server names it is served for.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Certificate {
    /// Server names (SNI) this certificate is chosen for: exact names or `*.` wildcards.
    #[serde(default)]
    pub snis: Vec<String>,
    /// The PEM chain: the leaf certificate first, then its intermediates.
    pub cert: String,
    /// The leaf's private key, PEM (PKCS#8, PKCS#1 or SEC1). Write-only on the admin API.
    pub key: String,
    /// Served when a handshake's SNI matches no certificate (or it sends none).
    #[serde(default)]
    pub default: bool,
}

// The key never reaches a log through `{:?}`.
impl fmt::Debug for Certificate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Certificate")
            .field("snis", &self.snis)
            .field("cert", &format_args!("<{} bytes of PEM>", self.cert.len()))
            .field("key", &"<redacted>")
            .field("default", &self.default)
            .finish()
    }
}

/// A certificate parsed: what a TLS server needs of it, and what the admin API shows.
pub struct Loaded {
    /// The chain, leaf first, as DER.
    pub chain: Vec<CertificateDer<'static>>,
    /// The private key; `None` when the document carries the redacted placeholder instead.
    pub key: Option<PrivateKeyDer<'static>>,
    /// The leaf's DNS names, lowercased (its subject alternative names, or its common name
    /// when it has none).
    pub names: Vec<String>,
    /// When the leaf expires, unix seconds.
    pub not_after: i64,
}

impl fmt::Debug for Loaded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Loaded")
            .field("chain", &self.chain.len())
            .field("names", &self.names)
            .field("not_after", &self.not_after)
            .finish_non_exhaustive()
    }
}

impl Certificate {
    /// Parses the chain and the key and checks them against each other and the SNIs. Every
    /// violation is reported with its pointer (`/cert`, `/key`, `/snis/N`). A `key` that is
    /// the redacted placeholder is not checked (the control plane puts the stored key back
    /// before it validates; a file exported from it carries the placeholder).
    pub fn load(&self) -> Result<Loaded, Vec<Violation>> {
        let mut violations = Vec::new();
        let chain = match parse_chain(&self.cert) {
            Ok(chain) => chain,
            Err(message) => return Err(vec![Violation::new("/cert", message)]),
        };
        let leaf = match leaf_facts(&chain[0]) {
            Ok(leaf) => leaf,
            Err(message) => return Err(vec![Violation::new("/cert", message)]),
        };
        for (i, der) in chain.iter().enumerate().skip(1) {
            if x509_parser::parse_x509_certificate(der).is_err() {
                violations.push(Violation::new(
                    "/cert",
                    format!(
                        "certificate {} of the chain is not an X.509 certificate",
                        i + 1
                    ),
                ));
            }
        }
        let key = if self.key == REDACTED {
            None
        } else {
            match parse_key(&self.key, &leaf.spki) {
                Ok(key) => Some(key),
                Err(message) => {
                    violations.push(Violation::new("/key", message));
                    None
                }
            }
        };
        for (i, sni) in self.snis.iter().enumerate() {
            if !covers(&leaf.names, sni) {
                violations.push(Violation::new(
                    format!("/snis/{i}"),
                    format!(
                        "{sni:?} is not among the certificate's names ({})",
                        leaf.names.join(", ")
                    ),
                ));
            }
        }
        if violations.is_empty() {
            Ok(Loaded {
                chain,
                key,
                names: leaf.names,
                not_after: leaf.not_after,
            })
        } else {
            Err(violations)
        }
    }
}

/// The `CERTIFICATE` blocks of a PEM text, in order.
fn parse_chain(pem: &str) -> Result<Vec<CertificateDer<'static>>, String> {
    let chain = CertificateDer::pem_slice_iter(pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("the PEM does not parse: {e}"))?;
    if chain.is_empty() {
        return Err("no CERTIFICATE block in the PEM".into());
    }
    Ok(chain)
}

struct LeafFacts {
    names: Vec<String>,
    not_after: i64,
    spki: Vec<u8>,
}

fn leaf_facts(der: &CertificateDer<'_>) -> Result<LeafFacts, String> {
    let (_, leaf) = x509_parser::parse_x509_certificate(der)
        .map_err(|e| format!("the first certificate is not an X.509 certificate: {e}"))?;
    let mut names = Vec::new();
    match leaf.subject_alternative_name() {
        Ok(Some(san)) => {
            for name in &san.value.general_names {
                if let GeneralName::DNSName(dns) = name {
                    names.push(dns.to_ascii_lowercase());
                }
            }
        }
        Ok(None) => {
            // No subject alternative names: the common name, as clients did before RFC 6125.
            for cn in leaf.subject().iter_common_name() {
                if let Ok(cn) = cn.as_str() {
                    names.push(cn.to_ascii_lowercase());
                }
            }
        }
        Err(e) => return Err(format!("the subject alternative names do not parse: {e}")),
    }
    Ok(LeafFacts {
        names,
        not_after: leaf.validity().not_after.timestamp(),
        spki: leaf.public_key().raw.to_vec(),
    })
}

/// The one private key of a PEM text, checked against the leaf's public key (`spki`).
fn parse_key(pem: &str, spki: &[u8]) -> Result<PrivateKeyDer<'static>, String> {
    let key = PrivateKeyDer::from_pem_slice(pem.as_bytes())
        .map_err(|e| format!("no private key in the PEM: {e}"))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| format!("the key cannot be used: {e}"))?;
    match signing.public_key() {
        Some(public) if public.as_ref() != spki => {
            Err("the key does not match the certificate".into())
        }
        _ => Ok(key),
    }
}

/// Whether one of a certificate's `names` covers `sni` (RFC 6125 §6.4.3): equal ignoring ASCII
/// case, or a `*.rest` name and `sni` is one label followed by `.rest`. An SNI that is itself a
/// wildcard is covered only by the same wildcard name.
pub fn covers(names: &[String], sni: &str) -> bool {
    names.iter().any(|name| name_covers(name, sni))
}

fn name_covers(name: &str, sni: &str) -> bool {
    if name.eq_ignore_ascii_case(sni) {
        return true;
    }
    let Some(suffix) = name.strip_prefix("*.") else {
        return false;
    };
    match sni.split_once('.') {
        Some((label, rest)) => {
            !label.is_empty()
                && label != "*"
                && !suffix.is_empty()
                && rest.eq_ignore_ascii_case(suffix)
        }
        None => false,
    }
}

/// The certificates of a config that would each be served when no SNI matches: at most one
/// may be (`default: true`). The ids of every certificate that claims it, when more than one
/// does.
pub fn default_conflicts<'a>(
    certificates: impl IntoIterator<Item = (&'a str, &'a Certificate)>,
) -> Vec<&'a str> {
    let defaults: Vec<&str> = certificates
        .into_iter()
        .filter(|(_, c)| c.default)
        .map(|(id, _)| id)
        .collect();
    if defaults.len() > 1 {
        defaults
    } else {
        Vec::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn make(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        let cert = params.self_signed(&key).unwrap();
        (cert.pem(), key.serialize_pem())
    }

    fn certificate(snis: &[&str], cert: &str, key: &str) -> Certificate {
        Certificate {
            snis: snis.iter().map(|s| (*s).to_owned()).collect(),
            cert: cert.to_owned(),
            key: key.to_owned(),
            default: false,
        }
    }

    fn pointers(result: Result<Loaded, Vec<Violation>>) -> Vec<String> {
        match result {
            Ok(_) => Vec::new(),
            Err(violations) => violations.into_iter().map(|v| v.pointer).collect(),
        }
    }

    #[test]
    fn a_matching_pair_loads_with_its_names_and_expiry() {
        let (cert, key) = make(&["api.example.com", "*.Example.com"]);
        let loaded = certificate(
            &["api.example.com", "x.example.com", "*.example.com"],
            &cert,
            &key,
        )
        .load()
        .unwrap();
        assert_eq!(loaded.names, ["api.example.com", "*.example.com"]);
        assert!(loaded.key.is_some());
        assert_eq!(loaded.chain.len(), 1);
        // rcgen's default validity ends in 4096.
        assert!(loaded.not_after > 4_000_000_000);
    }

    #[test]
    fn a_key_of_another_certificate_is_refused_at_key() {
        let (cert, _) = make(&["a.example.com"]);
        let (_, other) = make(&["a.example.com"]);
        assert_eq!(
            pointers(certificate(&["a.example.com"], &cert, &other).load()),
            ["/key"]
        );
        // The placeholder is not checked: the control plane restores the stored key first.
        assert!(
            certificate(&["a.example.com"], &cert, REDACTED)
                .load()
                .is_ok()
        );
    }

    #[test]
    fn snis_the_certificate_does_not_name_are_refused_each_at_its_index() {
        let (cert, key) = make(&["a.example.com", "*.wild.example.com"]);
        let snis = [
            "a.example.com",
            "b.example.com",
            "x.wild.example.com",
            "wild.example.com",
            "y.x.wild.example.com",
            "*.example.com",
        ];
        assert_eq!(
            pointers(certificate(&snis, &cert, &key).load()),
            ["/snis/1", "/snis/3", "/snis/4", "/snis/5"]
        );
    }

    #[test]
    fn wildcard_coverage_follows_rfc_6125() {
        let names = ["*.example.com".to_owned(), "exact.test".to_owned()];
        for (sni, covered) in [
            ("a.example.com", true),
            ("A.EXAMPLE.COM", true),
            ("example.com", false),
            ("a.b.example.com", false),
            (".example.com", false),
            ("*.example.com", true),
            ("*.*.example.com", false),
            ("EXACT.test", true),
            ("x.exact.test", false),
            ("", false),
        ] {
            assert_eq!(covers(&names, sni), covered, "{sni}");
        }
    }

    #[test]
    fn broken_pem_is_refused_never_panicked_on() {
        let (cert, key) = make(&["a.example.com"]);
        let cases = [
            (String::new(), key.clone(), "/cert"),
            ("not pem".to_owned(), key.clone(), "/cert"),
            (
                "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_owned(),
                key.clone(),
                "/cert",
            ),
            (
                "-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n".to_owned(),
                key.clone(),
                "/cert",
            ),
            (cert[..cert.len() / 2].to_owned(), key.clone(), "/cert"),
            (cert.clone(), String::new(), "/key"),
            (cert.clone(), key[..key.len() / 2].to_owned(), "/key"),
            (
                cert.clone(),
                "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n".to_owned(),
                "/key",
            ),
            (cert.clone(), cert.clone(), "/key"),
        ];
        for (cert, key, pointer) in cases {
            let found = pointers(certificate(&["a.example.com"], &cert, &key).load());
            assert_eq!(found, [pointer], "{cert:?} / {key:?}");
        }
        // Every prefix of a good PEM, and a byte flipped anywhere: refused or loaded, no panic.
        for end in 0..cert.len() {
            let _ = certificate(&[], &cert[..end], &key).load();
        }
        let mut bytes = cert.clone().into_bytes();
        for i in (0..bytes.len()).step_by(7) {
            bytes[i] ^= 0x20;
            if let Ok(text) = std::str::from_utf8(&bytes) {
                let _ = certificate(&["a.example.com"], text, &key).load();
            }
            bytes[i] ^= 0x20;
        }
    }

    #[test]
    fn at_most_one_default() {
        let (cert, key) = make(&["a.example.com"]);
        let mut a = certificate(&[], &cert, &key);
        let b = a.clone();
        assert!(default_conflicts([("a", &a), ("b", &b)]).is_empty());
        a.default = true;
        assert!(default_conflicts([("a", &a), ("b", &b)]).is_empty());
        let mut c = b.clone();
        c.default = true;
        assert_eq!(
            default_conflicts([("a", &a), ("b", &b), ("c", &c)]),
            ["a", "c"]
        );
        assert!(!format!("{a:?}").contains("PRIVATE"));
    }
}
