//! The gateway's contract, shared by the control plane and the data plane.
//!
//! - [`pb`]: the config-stream protocol (tonic/prost code generated from `proto/`).
//! - [`model`]: the resource model — serde types for upstreams and routes.
//! - [`schema`]: the JSON Schema of every resource kind and per-resource validation.
//! - [`snapshot`]: a whole config at one version, and the check that every reference resolves.
//!
//! This crate knows nothing of databases or HTTP servers: conversions to and from those live
//! in the crates at the edges.

pub mod model;
pub mod plugins;
pub mod schema;
pub mod snapshot;
#[cfg(feature = "telemetry")]
pub mod telemetry;

/// Generated config-stream protocol.
#[allow(clippy::all, missing_docs)]
pub mod pb {
    tonic::include_proto!("gateway.config.v1");

    /// The `type_url` of a whole-config snapshot on the config stream.
    pub const SNAPSHOT_TYPE_URL: &str = "type.gateway/Snapshot";
    /// A data plane's report: traffic per version and rehashed credentials; never answered.
    pub const REPORT_TYPE_URL: &str = "type.gateway/Report";
    /// The control plane's fleet message: how many data planes are live; never answered.
    pub const FLEET_TYPE_URL: &str = "type.gateway/Fleet";
}

pub use model::{Kind, ResourceKey};
pub use schema::{Violation, check_new_document, validate_resource};
pub use snapshot::{Snapshot, SnapshotError};
