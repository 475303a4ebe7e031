//! The gateway's control plane: the admin REST API, the versioned config store and the
//! config-stream server that pushes every new version to every data plane.

pub mod api;
pub mod certificates;
pub mod config;
pub mod fleet;
pub mod metrics;
pub mod rehash;
pub mod rollout;
pub mod secrets;
pub mod store;
pub mod telemetry;
pub mod tls;
pub mod xds;
