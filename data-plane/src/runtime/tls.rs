//! The certificates of a snapshot, compiled for the TLS listener: each loaded once into a
//! rustls [`CertifiedKey`] (a key that cannot be loaded fails the compile, so the snapshot is
//! NACKed), indexed by exact SNI and by wildcard suffix, plus the default.
//!
//! Selection for a handshake's SNI ([`Certificates::resolve`]): an exact name first, then a
//! wildcard covering it (`*.example.com` for `a.example.com`: one label, RFC 6125), then the
//! certificate marked `default`; otherwise none, and the handshake fails. Names compare
//! without regard to ASCII case.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::sync::Arc;

use gateway_proto::Snapshot;
use gateway_proto::model::Certificate;
use rustls::sign::CertifiedKey;

use super::CompileError;

/// One certificate, loaded.
#[derive(Debug)]
pub struct Loaded {
    /// The revision it was loaded at: an unchanged certificate is shared with the next runtime.
    revision: u64,
    /// The chain and signing key rustls serves.
    pub key: Arc<CertifiedKey>,
    /// When the leaf expires, unix seconds.
    pub not_after: i64,
}

/// Every certificate of one runtime, indexed for the handshake.
#[derive(Debug, Default)]
pub struct Certificates {
    by_id: HashMap<String, Arc<Loaded>>,
    /// Lowercased exact SNI → certificate.
    exact: HashMap<String, Arc<CertifiedKey>>,
    /// Lowercased suffix of a `*.suffix` SNI → certificate.
    wildcard: HashMap<String, Arc<CertifiedKey>>,
    default: Option<Arc<CertifiedKey>>,
}

impl Certificates {
    /// Loads the snapshot's certificates, sharing those unchanged since `previous`.
    pub fn compile(
        snapshot: &Snapshot,
        previous: Option<&Certificates>,
    ) -> Result<Certificates, CompileError> {
        let mut table = Certificates::default();
        // In id order: when two certificates claim one name (or both claim to be the
        // default), the first id wins, the same on every data plane.
        let mut certificates: Vec<(&str, u64, &Certificate)> = snapshot
            .resources
            .iter()
            .filter_map(|(key, resource)| match &resource.parsed {
                gateway_proto::model::Parsed::Certificate(c) => {
                    Some((key.id.as_str(), resource.revision, c))
                }
                _ => None,
            })
            .collect();
        certificates.sort_by(|a, b| a.0.cmp(b.0));
        for (id, revision, certificate) in certificates {
            let loaded = match previous
                .and_then(|p| p.by_id.get(id))
                .filter(|l| l.revision == revision)
            {
                Some(same) => Arc::clone(same),
                None => Arc::new(load(id, revision, certificate)?),
            };
            for sni in &certificate.snis {
                let sni = sni.to_ascii_lowercase();
                let (index, name) = match sni.strip_prefix("*.") {
                    Some(suffix) => (&mut table.wildcard, suffix.to_owned()),
                    None => (&mut table.exact, sni),
                };
                index.entry(name).or_insert_with(|| Arc::clone(&loaded.key));
            }
            if certificate.default && table.default.is_none() {
                table.default = Some(Arc::clone(&loaded.key));
            }
            table.by_id.insert(id.to_owned(), loaded);
        }
        Ok(table)
    }

    /// The certificate for a handshake that asked for `sni` (none: the client sent no name).
    pub fn resolve(&self, sni: Option<&str>) -> Option<Arc<CertifiedKey>> {
        let found = sni.and_then(|sni| {
            // rustls hands over the SNI already lowercased; a copy only for one that is not.
            let lower;
            let sni = if sni.bytes().any(|b| b.is_ascii_uppercase()) {
                lower = sni.to_ascii_lowercase();
                lower.as_str()
            } else {
                sni
            };
            self.exact.get(sni).or_else(|| {
                let (label, rest) = sni.split_once('.')?;
                if label.is_empty() {
                    return None;
                }
                self.wildcard.get(rest)
            })
        });
        found.or(self.default.as_ref()).cloned()
    }

    /// Whether there is no certificate at all.
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// `gateway_tls_certificate_expiry_seconds{id=…}`: when each certificate expires.
    pub fn render_metrics(&self, out: &mut String) {
        if self.by_id.is_empty() {
            return;
        }
        let _ = writeln!(
            out,
            "# HELP gateway_tls_certificate_expiry_seconds When each certificate's leaf expires, unix seconds."
        );
        let _ = writeln!(out, "# TYPE gateway_tls_certificate_expiry_seconds gauge");
        let mut ids: Vec<(&String, &Arc<Loaded>)> = self.by_id.iter().collect();
        ids.sort_unstable_by(|a, b| a.0.cmp(b.0));
        for (id, loaded) in ids {
            let _ = writeln!(
                out,
                "gateway_tls_certificate_expiry_seconds{{id=\"{id}\"}} {}",
                loaded.not_after
            );
        }
    }
}

fn load(id: &str, revision: u64, certificate: &Certificate) -> Result<Loaded, CompileError> {
    let invalid = |reason: String| CompileError::Certificate {
        id: id.to_owned(),
        reason,
    };
    let loaded = certificate.load().map_err(|violations| {
        let reasons: Vec<String> = violations
            .iter()
            .map(|v| format!("{}: {}", v.pointer, v.message))
            .collect();
        invalid(reasons.join("; "))
    })?;
    let key = loaded
        .key
        .ok_or_else(|| invalid("the private key is missing (redacted)".into()))?;
    let signing = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| invalid(format!("the private key cannot be loaded: {e}")))?;
    Ok(Loaded {
        revision,
        key: Arc::new(CertifiedKey::new(loaded.chain, signing)),
        not_after: loaded.not_after,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_proto::pb;
    use serde_json::json;

    fn pair(names: &[&str]) -> (String, String) {
        let key = rcgen::KeyPair::generate().unwrap();
        let params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .unwrap();
        (params.self_signed(&key).unwrap().pem(), key.serialize_pem())
    }

    fn snapshot(certificates: &[(&str, serde_json::Value)]) -> Snapshot {
        let resources = certificates
            .iter()
            .map(|(id, body)| pb::Resource {
                kind: "certificates".into(),
                id: (*id).into(),
                revision: 1,
                body: body.to_string().into(),
            })
            .collect();
        Snapshot::from_wire(&pb::DiscoveryResponse {
            version_info: "1".into(),
            resources,
            ..Default::default()
        })
        .unwrap()
    }

    fn document(snis: &[&str], names: &[&str], default: bool) -> serde_json::Value {
        let (cert, key) = pair(names);
        json!({"snis": snis, "cert": cert, "key": key, "default": default})
    }

    #[test]
    fn exact_beats_wildcard_and_the_default_takes_the_rest() {
        let table = Certificates::compile(
            &snapshot(&[
                (
                    "exact",
                    document(&["api.example.com"], &["api.example.com"], false),
                ),
                (
                    "wild",
                    document(&["*.example.com"], &["*.example.com"], false),
                ),
                ("fallback", document(&["other.test"], &["other.test"], true)),
            ]),
            None,
        )
        .unwrap();
        let which = |sni: Option<&str>| {
            let found = table.resolve(sni)?;
            table
                .by_id
                .iter()
                .find(|(_, l)| Arc::ptr_eq(&l.key, &found))
                .map(|(id, _)| id.clone())
        };
        for (sni, expected) in [
            (Some("api.example.com"), "exact"),
            (Some("API.Example.COM"), "exact"),
            (Some("www.example.com"), "wild"),
            (Some("WWW.EXAMPLE.COM"), "wild"),
            // One label only: deeper names and the bare domain are not covered.
            (Some("a.b.example.com"), "fallback"),
            (Some("example.com"), "fallback"),
            (Some(".example.com"), "fallback"),
            (Some("other.test"), "fallback"),
            (None, "fallback"),
        ] {
            assert_eq!(which(sni).as_deref(), Some(expected), "{sni:?}");
        }
    }

    #[test]
    fn without_a_default_an_unknown_name_gets_nothing() {
        let table = Certificates::compile(
            &snapshot(&[("a", document(&["a.test"], &["a.test"], false))]),
            None,
        )
        .unwrap();
        assert!(table.resolve(Some("a.test")).is_some());
        assert!(table.resolve(Some("b.test")).is_none());
        assert!(table.resolve(None).is_none());
        let mut metrics = String::new();
        table.render_metrics(&mut metrics);
        assert!(metrics.contains("gateway_tls_certificate_expiry_seconds{id=\"a\"} "));
    }

    #[test]
    fn an_unchanged_certificate_is_not_loaded_again() {
        let snap = snapshot(&[("a", document(&["a.test"], &["a.test"], false))]);
        let first = Certificates::compile(&snap, None).unwrap();
        let second = Certificates::compile(&snap, Some(&first)).unwrap();
        assert!(Arc::ptr_eq(&first.by_id["a"], &second.by_id["a"]));
    }
}
