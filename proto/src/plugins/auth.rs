//! The authentication plugins' configs, and the consumer credentials they check.
//!
//! Secrets at rest: an API key is stored as its SHA-256 digest (keys are high-entropy, so an
//! unsalted digest is safe and lets the data plane find the consumer by digest); a password is
//! stored as an argon2id PHC string ([`hash_password`], parameters [`ARGON2_M_KIB`],
//! [`ARGON2_T`], [`ARGON2_P`]): passwords are low-entropy, so a leaked digest must cost an
//! attacker a slow, memory-hard KDF per guess. Digests of the earlier salted-SHA-256 form
//! (`sha256$<salt hex>$<digest hex>`, [`hash_password_sha256`]) still verify; after a
//! successful login against one, the data plane hashes the password under argon2id and hands
//! the digest to the control plane, which stores it only if it [`is_current_password_hash`] and
//! the stored digest is still the legacy one.
//! The control plane seals plaintext on write
//! ([`KeyAuthCredential::key`] → `key_sha256`); a leaked snapshot or database dump holds no
//! usable key or password. A JWT HMAC secret cannot be hashed (it is needed to verify), so it is
//! stored as given and redacted on every read.

use argon2::password_hash::{PasswordHash, PasswordHasher as _, PasswordVerifier as _, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

/// argon2id memory cost, in KiB: 19 MiB. With [`ARGON2_T`] and [`ARGON2_P`], OWASP's Password
/// Storage Cheat Sheet's first argon2id setting (m=19456, t=2, p=1): as costly to an attacker
/// as its m=47104/t=1 or m=12288/t=3 ones, with a memory footprint a data plane verifying a
/// few logins at once can afford (one verification ≈ 19 MiB for its duration).
pub const ARGON2_M_KIB: u32 = 19_456;
/// argon2id passes (time cost).
pub const ARGON2_T: u32 = 2;
/// argon2id lanes: 1, so a verification occupies one core, never all of them.
pub const ARGON2_P: u32 = 1;

/// The `password_hash` forms a consumer may store: an argon2id PHC string (version 19, a
/// 16-byte salt, a 32-byte hash, m from 1 MiB to 256 MiB, t 1–16, p 1–8: what a data plane
/// is willing to spend on one verification), or the earlier salted SHA-256. The trailing
/// characters of the base64 fields are the canonical ones (zero padding bits), so every string
/// the pattern takes parses.
pub const PASSWORD_HASH_PATTERN: &str = concat!(
    r"^(sha256\$[0-9a-f]{32}\$[0-9a-f]{64}",
    r"|\$argon2id\$v=19\$m=(102[4-9]|10[3-9][0-9]|1[1-9][0-9]{2}|[2-9][0-9]{3}|[1-9][0-9]{4}",
    r"|1[0-9]{5}|2[0-5][0-9]{4}|26[01][0-9]{3}|262(0[0-9]{2}|1[0-3][0-9]|14[0-4]))",
    r",t=([1-9]|1[0-6]),p=[1-8]",
    r"\$[A-Za-z0-9+/]{21}[AQgw]\$[A-Za-z0-9+/]{42}[AEIMQUYcgkosw048])$"
);

/// `key-auth` config schema.
pub fn key_auth_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "header": {"type": "string", "minLength": 1, "maxLength": 128, "default": "apikey"},
            "query": {"type": "string", "minLength": 1, "maxLength": 128, "default": "apikey"},
            "hide_credentials": {"type": "boolean", "default": false}
        },
        "additionalProperties": false
    })
}

/// `key-auth` config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAuthConfig {
    /// The request header carrying the key.
    #[serde(default = "default_key_name")]
    pub header: String,
    /// The query argument carrying the key (checked when the header is absent).
    #[serde(default = "default_key_name")]
    pub query: String,
    /// Remove the key from the request before it goes upstream.
    #[serde(default)]
    pub hide_credentials: bool,
}

fn default_key_name() -> String {
    "apikey".into()
}

/// `basic-auth` config schema.
pub fn basic_auth_schema() -> Value {
    json!({
        "type": "object",
        "properties": {"hide_credentials": {"type": "boolean", "default": false}},
        "additionalProperties": false
    })
}

/// `basic-auth` config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuthConfig {
    /// Remove `Authorization` before the request goes upstream.
    #[serde(default)]
    pub hide_credentials: bool,
}

/// `jwt-auth` config schema.
pub fn jwt_auth_schema() -> Value {
    json!({
        "type": "object",
        "properties": {
            "header": {"type": "string", "minLength": 1, "maxLength": 128, "default": "authorization"},
            "query": {"type": "string", "minLength": 1, "maxLength": 128, "default": "jwt"},
            "cookie": {"type": "string", "minLength": 1, "maxLength": 128, "default": "jwt"},
            "hide_credentials": {"type": "boolean", "default": false},
            "clock_skew_s": {"type": "integer", "minimum": 0, "maximum": 3600, "default": 0}
        },
        "additionalProperties": false
    })
}

/// `jwt-auth` config.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtAuthConfig {
    /// The header carrying `Bearer <token>` (or the bare token).
    #[serde(default = "default_jwt_header")]
    pub header: String,
    /// The query argument carrying the token.
    #[serde(default = "default_jwt_name")]
    pub query: String,
    /// The cookie carrying the token.
    #[serde(default = "default_jwt_name")]
    pub cookie: String,
    /// Remove the token from the header before the request goes upstream.
    #[serde(default)]
    pub hide_credentials: bool,
    /// Leeway for `exp` and `nbf`, in seconds.
    #[serde(default)]
    pub clock_skew_s: u64,
}

fn default_jwt_header() -> String {
    "authorization".into()
}

fn default_jwt_name() -> String {
    "jwt".into()
}

/// The `credentials` schema of a consumer.
pub fn credentials_schema() -> Value {
    // `algorithm` defaults to HS256: only an explicit RS256 is RS256.
    let rs256 = json!({"properties": {"algorithm": {"const": "RS256"}}, "required": ["algorithm"]});
    json!({
        "type": "object",
        "properties": {
            "key-auth": {
                "type": "object",
                "properties": {
                    "key": {"type": "string", "minLength": 8, "maxLength": 512, "description": "Write-only; stored as key_sha256."},
                    "key_sha256": {"type": "string", "pattern": "^[0-9a-f]{64}$"}
                },
                "allOf": [crate::schema::exactly_one_of("key", "key_sha256")],
                "additionalProperties": false
            },
            "basic-auth": {
                "type": "object",
                "properties": {
                    "username": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[^:]+$"},
                    "password": {"type": "string", "minLength": 1, "maxLength": 512, "description": "Write-only; stored as password_hash (argon2id)."},
                    "password_hash": {"type": "string", "pattern": PASSWORD_HASH_PATTERN, "description": "An argon2id PHC string ($argon2id$v=19$m=…,t=…,p=…$salt$hash), or the earlier sha256$<salt>$<digest>."}
                },
                "required": ["username"],
                "allOf": [crate::schema::exactly_one_of("password", "password_hash")],
                "additionalProperties": false
            },
            "jwt-auth": {
                "type": "object",
                "properties": {
                    "key": {"type": "string", "minLength": 1, "maxLength": 256, "description": "Matched against the token's `key` (or `iss`) claim."},
                    "algorithm": {"enum": ["HS256", "RS256"], "default": "HS256"},
                    "secret": {"type": "string", "minLength": 8, "maxLength": 4096, "description": "HS256 secret; redacted on reads."},
                    "public_key": {"type": "string", "minLength": 1, "maxLength": 16384, "description": "RS256 public key, PEM."}
                },
                "required": ["key"],
                "additionalProperties": false,
                "allOf": [
                    crate::schema::rule(
                        "HS256 needs a secret",
                        json!({"if": rs256, "else": {"required": ["secret"]}}),
                    ),
                    crate::schema::rule(
                        "RS256 needs a public_key (PEM)",
                        json!({"if": rs256, "then": {"required": ["public_key"]}}),
                    )
                ]
            }
        },
        "additionalProperties": false
    })
}

/// A consumer's credentials, per scheme.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// API key.
    #[serde(rename = "key-auth", default)]
    pub key_auth: Option<KeyAuthCredential>,
    /// User name and password.
    #[serde(rename = "basic-auth", default)]
    pub basic_auth: Option<BasicAuthCredential>,
    /// JWT verification key.
    #[serde(rename = "jwt-auth", default)]
    pub jwt_auth: Option<JwtCredential>,
}

/// An API key: plaintext on input, its digest once sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeyAuthCredential {
    /// The key as written (only before sealing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// SHA-256 of the key, lowercase hex.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_sha256: Option<String>,
}

impl KeyAuthCredential {
    /// The key's digest, however it was written.
    pub fn digest(&self) -> Option<String> {
        self.key_sha256
            .clone()
            .or_else(|| self.key.as_deref().map(key_digest))
    }

    /// The key's digest as bytes, however it was written; `None` without a key, or when
    /// `key_sha256` is not 64 hex digits.
    pub fn digest_bytes(&self) -> Option<[u8; 32]> {
        match (&self.key_sha256, &self.key) {
            (Some(hex), _) => from_hex(hex)?.try_into().ok(),
            (None, Some(key)) => Some(key_digest_bytes(key)),
            (None, None) => None,
        }
    }
}

/// User name and password: plaintext password on input, salted hash once sealed.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BasicAuthCredential {
    /// The user name.
    pub username: String,
    /// The password as written (only before sealing).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// An argon2id PHC string, or the earlier `sha256$<salt hex>$<digest hex>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
}

impl BasicAuthCredential {
    /// Whether `candidate` is this credential's password.
    pub fn verify(&self, candidate: &str) -> bool {
        match (&self.password_hash, &self.password) {
            (Some(hash), _) => verify_password(hash, candidate),
            (None, Some(plain)) => constant_time_eq(plain.as_bytes(), candidate.as_bytes()),
            (None, None) => false,
        }
    }

    /// Whether checking a password against this credential runs a slow KDF (argon2), which
    /// a data plane runs off its async workers.
    pub fn is_slow(&self) -> bool {
        self.password_hash
            .as_deref()
            .is_some_and(|hash| hash.starts_with("$argon2"))
    }
}

/// JWT signing algorithm.
#[derive(Copy, Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum JwtAlgorithm {
    /// HMAC with SHA-256 and a shared secret.
    #[default]
    HS256,
    /// RSA PKCS#1 v1.5 with SHA-256 and a public key.
    RS256,
}

/// How to verify a consumer's JWTs.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JwtCredential {
    /// Matched against the token's `key` claim (or `iss` when there is no `key`).
    pub key: String,
    /// The algorithm tokens must use.
    #[serde(default)]
    pub algorithm: JwtAlgorithm,
    /// HS256 secret.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
    /// RS256 public key (PEM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub public_key: Option<String>,
}

/// What a redacted secret reads as. Writing it back keeps the stored secret.
pub const REDACTED: &str = "<redacted>";

/// Where a consumer keeps its JWT HMAC secret (redacted on reads).
pub const JWT_SECRET_POINTER: &str = "/credentials/jwt-auth/secret";

/// SHA-256 of an API key, lowercase hex.
pub fn key_digest(key: &str) -> String {
    hex_digest(key.as_bytes())
}

/// SHA-256 of an API key, as bytes: what a data plane looks a presented key up by (no hex
/// string to format per request).
pub fn key_digest_bytes(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

/// Hashes `password` with `salt` into the stored argon2id PHC string
/// (`$argon2id$v=19$m=19456,t=2,p=1$<salt>$<hash>`).
pub fn hash_password(password: &str, salt: &[u8; 16]) -> String {
    let salt = SaltString::encode_b64(salt).expect("16 bytes is a valid salt length");
    argon2id()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2id with valid parameters cannot fail")
        .to_string()
}

/// The KDF with this build's parameters.
fn argon2id() -> Argon2<'static> {
    let params = Params::new(ARGON2_M_KIB, ARGON2_T, ARGON2_P, None)
        .expect("the constant parameters are valid");
    Argon2::new(Algorithm::Argon2id, Version::V0x13, params)
}

/// Hashes `password` with `salt` into the earlier `sha256$<salt>$<digest>` form (still
/// verified; no longer written).
pub fn hash_password_sha256(password: &str, salt: &[u8; 16]) -> String {
    let salt_hex = to_hex(salt);
    let mut hasher = Sha256::new();
    hasher.update(salt);
    hasher.update(password.as_bytes());
    format!("sha256${salt_hex}${}", to_hex(&hasher.finalize()))
}

/// Whether `stored` is a digest of the earlier salted-SHA-256 form, which a successful login
/// replaces with an argon2id one.
pub fn is_legacy_password_hash(stored: &str) -> bool {
    stored.starts_with("sha256$")
}

/// Whether `digest` is an argon2id PHC string with exactly this build's parameters
/// ([`ARGON2_M_KIB`], [`ARGON2_T`], [`ARGON2_P`], version 19, a 16-byte salt, a 32-byte hash):
/// what [`hash_password`] makes, and the only digest a control plane takes from a data plane's
/// rehash.
pub fn is_current_password_hash(digest: &str) -> bool {
    static PREFIX: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
        format!("$argon2id$v=19$m={ARGON2_M_KIB},t={ARGON2_T},p={ARGON2_P}$")
    });
    static BOUNDS: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(PASSWORD_HASH_PATTERN).expect("compiles"));
    digest.starts_with(PREFIX.as_str())
        && BOUNDS.is_match(digest)
        && PasswordHash::new(digest).is_ok()
}

/// Whether `candidate` matches a stored hash: an argon2id PHC string (with the parameters it
/// names, at most what [`PASSWORD_HASH_PATTERN`] allows), or `sha256$<salt>$<digest>`.
pub fn verify_password(stored: &str, candidate: &str) -> bool {
    if stored.starts_with("$argon2") {
        return verify_argon2(stored, candidate);
    }
    let mut parts = stored.split('$');
    let (Some("sha256"), Some(salt_hex), Some(digest_hex), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return false;
    };
    let Some(salt) = from_hex(salt_hex) else {
        return false;
    };
    let mut hasher = Sha256::new();
    hasher.update(&salt);
    hasher.update(candidate.as_bytes());
    constant_time_eq(to_hex(&hasher.finalize()).as_bytes(), digest_hex.as_bytes())
}

fn verify_argon2(stored: &str, candidate: &str) -> bool {
    // The pattern bounds what a stored hash may ask of a verifier; a string that slipped past
    // it (a snapshot written by hand) never authenticates rather than costing gigabytes.
    static BOUNDS: std::sync::LazyLock<regex::Regex> =
        std::sync::LazyLock::new(|| regex::Regex::new(PASSWORD_HASH_PATTERN).expect("compiles"));
    if !BOUNDS.is_match(stored) {
        return false;
    }
    let Ok(hash) = PasswordHash::new(stored) else {
        return false;
    };
    // `Argon2::default()` verifies with the algorithm, version and parameters the hash names.
    Argon2::default()
        .verify_password(candidate.as_bytes(), &hash)
        .is_ok()
}

fn hex_digest(bytes: &[u8]) -> String {
    to_hex(&Sha256::digest(bytes))
}

fn to_hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

fn from_hex(text: &str) -> Option<Vec<u8>> {
    if !text.len().is_multiple_of(2) {
        return None;
    }
    (0..text.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(text.get(i..i + 2)?, 16).ok())
        .collect()
}

/// Compares without an early exit, so timing does not reveal the matching prefix.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn argon2id_hashes_verify_only_with_the_right_password() {
        let stored = hash_password("s3cret", &[7; 16]);
        assert!(
            stored.starts_with("$argon2id$v=19$m=19456,t=2,p=1$BwcHBwcHBwcHBwcHBwcHBw$"),
            "{stored}"
        );
        let pattern = regex::Regex::new(PASSWORD_HASH_PATTERN).unwrap();
        assert!(pattern.is_match(&stored));
        assert!(verify_password(&stored, "s3cret"));
        assert!(!verify_password(&stored, "s3cre"));
        assert!(!verify_password(&stored.replace("t=2", "t=3"), "s3cret"));
        let credential = BasicAuthCredential {
            username: "u".into(),
            password: None,
            password_hash: Some(stored),
        };
        assert!(credential.is_slow() && credential.verify("s3cret"));
    }

    #[test]
    fn the_pattern_takes_exactly_the_argon2_hashes_a_verifier_accepts() {
        let pattern = regex::Regex::new(PASSWORD_HASH_PATTERN).unwrap();
        let salt = "BwcHBwcHBwcHBwcHBwcHBw";
        let hash = "A".repeat(43);
        let phc =
            |m: u32, t: u32, p: u32| format!("$argon2id$v=19$m={m},t={t},p={p}${salt}${hash}");
        for m in [
            1019, 1020, 1023, 1024, 1025, 1029, 1030, 1099, 1100, 9999, 10_000, 99_999, 100_000,
            199_999, 255_999, 259_999, 261_999, 262_099, 262_143, 262_144, 262_145, 262_150,
            263_000, 999_999, 1_000_000,
        ] {
            for (t, p) in [(0, 1), (1, 1), (16, 8), (17, 1), (2, 0), (2, 9)] {
                let accepted = pattern.is_match(&phc(m, t, p));
                let bounded =
                    (1024..=262_144).contains(&m) && (1..=16).contains(&t) && (1..=8).contains(&p);
                assert_eq!(accepted, bounded, "m={m} t={t} p={p}");
                if accepted {
                    assert!(
                        PasswordHash::new(&phc(m, t, p)).is_ok(),
                        "m={m} t={t} p={p}"
                    );
                    assert!(Params::new(m, t, p, None).is_ok(), "m={m} t={t} p={p}");
                }
            }
        }
        // Every canonical last character of the salt and the hash parses.
        for last in ['A', 'Q', 'g', 'w'] {
            let salt = format!("{}{last}", &salt[..21]);
            let stored = format!("$argon2id$v=19$m=19456,t=2,p=1${salt}${hash}");
            assert!(
                pattern.is_match(&stored) && PasswordHash::new(&stored).is_ok(),
                "{stored}"
            );
        }
        for last in "AEIMQUYcgkosw048".chars() {
            let hash = format!("{}{last}", &hash[..42]);
            let stored = format!("$argon2id$v=19$m=19456,t=2,p=1${salt}${hash}");
            assert!(
                pattern.is_match(&stored) && PasswordHash::new(&stored).is_ok(),
                "{stored}"
            );
        }
        assert!(!pattern.is_match(&format!("$argon2i$v=19$m=19456,t=2,p=1${salt}${hash}")));
        assert!(!pattern.is_match(&format!("$argon2id$v=16$m=19456,t=2,p=1${salt}${hash}")));
    }

    #[test]
    fn only_this_builds_argon2id_digests_are_current() {
        let current = hash_password("pw", &[9; 16]);
        assert!(is_current_password_hash(&current));
        let legacy = hash_password_sha256("pw", &[9; 16]);
        assert!(is_legacy_password_hash(&legacy));
        assert!(!is_current_password_hash(&legacy));
        assert!(!is_legacy_password_hash(&current));
        let cheaper = current.replace("m=19456,t=2", "m=1024,t=1");
        for refused in [
            cheaper.as_str(),
            &current.replace("argon2id", "argon2i"),
            &current[..current.len() - 4],
            &format!("{current}x"),
            "",
            "$argon2id$v=19$m=19456,t=2,p=1$",
        ] {
            assert!(!is_current_password_hash(refused), "{refused}");
        }
    }

    #[test]
    fn salted_sha256_digests_still_verify() {
        let stored = hash_password_sha256("s3cret", &[7; 16]);
        assert!(stored.starts_with("sha256$07070707"));
        assert!(verify_password(&stored, "s3cret"));
        assert!(!verify_password(&stored, "s3cre"));
        assert!(!verify_password("sha256$zz$00", "s3cret"));
        assert!(!verify_password("garbage", "s3cret"));
        assert!(!verify_password(&format!("{stored}$x"), "s3cret"));
    }

    #[test]
    fn key_digests_are_stable_hex() {
        assert_eq!(
            key_digest("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
        let sealed = KeyAuthCredential {
            key: None,
            key_sha256: Some(key_digest("abc")),
        };
        let plain = KeyAuthCredential {
            key: Some("abc".into()),
            key_sha256: None,
        };
        assert_eq!(sealed.digest(), plain.digest());
        assert_eq!(sealed.digest_bytes(), plain.digest_bytes());
        assert_eq!(plain.digest_bytes(), Some(key_digest_bytes("abc")));
        let malformed = KeyAuthCredential {
            key: None,
            key_sha256: Some("abc".into()),
        };
        assert_eq!(malformed.digest_bytes(), None);
    }
}
