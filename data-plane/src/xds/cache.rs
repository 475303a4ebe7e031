//! The disk cache of the applied config (`--cache-dir`): a data plane restarted while no
//! control plane answers serves what it served before.
//!
//! One file, `config.cache`, replaced atomically after every applied version (written to a
//! temporary file, fsynced, renamed over the old one, the directory fsynced): a crash leaves
//! the old file or the new one, never half of one. Layout, little-endian:
//!
//! ```text
//! magic "GWCONFIG" | format u32 | payload length u64 | SHA-256 of the payload | payload
//! ```
//!
//! The payload is a `DiscoveryResponse` holding the whole config (version, store id, every
//! resource), so reading it back goes through the same validation as a snapshot from the
//! stream. A file with another magic, format, length or checksum is refused with a reason.

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use gateway_proto::pb;
use prost::Message;
use sha2::{Digest, Sha256};
use thiserror::Error;
use tokio::sync::watch;

use crate::background;
use crate::state::State;

/// The cache file's name inside `--cache-dir`.
pub const FILE_NAME: &str = "config.cache";
const MAGIC: &[u8; 8] = b"GWCONFIG";
/// Bumped whenever the layout or the payload's meaning changes; other formats are ignored.
pub const FORMAT: u32 = 1;
const HEADER_LEN: usize = 8 + 4 + 8 + 32;

/// Why a cache file was not used.
#[derive(Debug, Error)]
pub enum CacheError {
    /// It could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// It is not a cache file, or not of this format.
    #[error("{0} is not a config cache of format {FORMAT}: {1}")]
    Incompatible(PathBuf, String),
    /// Its contents do not match their checksum (a torn or corrupted file).
    #[error("{0} is corrupt: {1}")]
    Corrupt(PathBuf, String),
}

/// Reads the cached config in `dir`: `Ok(None)` when there is none.
pub fn read(dir: &Path) -> Result<Option<pb::DiscoveryResponse>, CacheError> {
    let path = dir.join(FILE_NAME);
    let bytes = match std::fs::read(&path) {
        Ok(bytes) => bytes,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CacheError::Io { path, source }),
    };
    decode(&bytes).map(Some).map_err(|error| match error {
        Decode::Incompatible(reason) => CacheError::Incompatible(path, reason),
        Decode::Corrupt(reason) => CacheError::Corrupt(path, reason),
    })
}

enum Decode {
    Incompatible(String),
    Corrupt(String),
}

fn decode(bytes: &[u8]) -> Result<pb::DiscoveryResponse, Decode> {
    if bytes.len() < HEADER_LEN || &bytes[..8] != MAGIC {
        return Err(Decode::Incompatible("no cache header".to_owned()));
    }
    let word = |range: std::ops::Range<usize>| -> &[u8] { &bytes[range] };
    let format = u32::from_le_bytes(word(8..12).try_into().unwrap_or_default());
    if format != FORMAT {
        return Err(Decode::Incompatible(format!("format {format}")));
    }
    let length = u64::from_le_bytes(word(12..20).try_into().unwrap_or_default());
    let payload = &bytes[HEADER_LEN..];
    if u64::try_from(payload.len()).ok() != Some(length) {
        return Err(Decode::Corrupt(format!(
            "{} payload bytes where the header says {length}",
            payload.len()
        )));
    }
    let checksum: [u8; 32] = Sha256::digest(payload).into();
    if checksum[..] != bytes[20..HEADER_LEN] {
        return Err(Decode::Corrupt("checksum mismatch".to_owned()));
    }
    pb::DiscoveryResponse::decode(payload).map_err(|e| Decode::Corrupt(e.to_string()))
}

/// Writes `config` as the cached config in `dir`, atomically.
pub fn write(dir: &Path, config: &pb::DiscoveryResponse) -> io::Result<()> {
    std::fs::create_dir_all(dir)?;
    let payload = config.encode_to_vec();
    let mut header = Vec::with_capacity(HEADER_LEN);
    header.extend_from_slice(MAGIC);
    header.extend_from_slice(&FORMAT.to_le_bytes());
    header.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    header.extend_from_slice(&Sha256::digest(&payload));
    let temporary = dir.join(format!("{FILE_NAME}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&header)?;
        file.write_all(&payload)?;
        file.sync_all()?;
        std::fs::rename(&temporary, dir.join(FILE_NAME))?;
        // The rename itself is durable only once the directory is.
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// Writes the cache off the config path: the newest config handed to it is written, older
/// ones not yet written are skipped (a burst of versions costs one write or two, not one per
/// version).
#[derive(Debug)]
pub struct CacheWriter {
    latest: watch::Sender<Option<Arc<pb::DiscoveryResponse>>>,
}

impl CacheWriter {
    /// Starts the writer task for `dir`. Encoding, hashing and fsyncing run on a low-priority
    /// thread of their own, as applying a version does.
    pub fn spawn(dir: PathBuf, state: Arc<State>) -> CacheWriter {
        let (latest, mut pending) = watch::channel(None::<Arc<pb::DiscoveryResponse>>);
        let worker = background::Worker::start("config-cache");
        tokio::spawn(async move {
            while pending.changed().await.is_ok() {
                let Some(config) = pending.borrow_and_update().clone() else {
                    continue;
                };
                let dir = dir.clone();
                let written = worker
                    .run(move || write(&dir, &config).map(|()| config))
                    .await;
                match written {
                    Ok(Ok(config)) => {
                        tracing::debug!(version = %config.version_info, "config cached on disk");
                    }
                    Ok(Err(error)) => {
                        state.metrics.record_config_cache_error();
                        tracing::warn!(%error, "cannot write the config cache");
                    }
                    Err(crash) => {
                        state.metrics.record_config_cache_error();
                        tracing::warn!(%crash, "writing the config cache crashed");
                    }
                }
            }
        });
        CacheWriter { latest }
    }

    /// Queues `config` (the whole applied config) to be written.
    pub fn store(&self, config: pb::DiscoveryResponse) {
        self.latest.send_replace(Some(Arc::new(config)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        std::env::temp_dir().join(format!("gateway-cache-test-{}", fastrand::u64(..)))
    }

    fn config() -> pb::DiscoveryResponse {
        pb::DiscoveryResponse {
            version_info: "7".into(),
            store_id: "s".into(),
            resources: vec![pb::Resource {
                kind: "upstreams".into(),
                id: "u".into(),
                revision: 7,
                body: br#"{"nodes":[{"host":"127.0.0.1","port":1}]}"#.to_vec().into(),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn a_written_config_reads_back_and_damage_is_refused_with_a_reason() {
        let dir = temp_dir();
        assert!(read(&dir).unwrap().is_none(), "no file, no config");
        write(&dir, &config()).unwrap();
        assert_eq!(read(&dir).unwrap().unwrap(), config());
        let path = dir.join(FILE_NAME);
        let good = std::fs::read(&path).unwrap();

        let mut flipped = good.clone();
        let last = flipped.len() - 1;
        flipped[last] ^= 1;
        let mut other_format = good.clone();
        other_format[8] = 99;
        type Expected = fn(&CacheError) -> bool;
        let cases: [(Vec<u8>, Expected); 4] = [
            (flipped, |e| matches!(e, CacheError::Corrupt(..))),
            (good[..good.len() - 3].to_vec(), |e| {
                matches!(e, CacheError::Corrupt(..))
            }),
            (other_format, |e| matches!(e, CacheError::Incompatible(..))),
            (b"{\"version\": 7}".to_vec(), |e| {
                matches!(e, CacheError::Incompatible(..))
            }),
        ];
        for (bytes, expected) in cases {
            std::fs::write(&path, bytes).unwrap();
            let error = read(&dir).unwrap_err();
            assert!(expected(&error), "{error}");
            assert!(error.to_string().contains(FILE_NAME), "{error}");
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}
