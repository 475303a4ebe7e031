//! The gateway's data plane: a stateless hyper proxy fed by the control plane's config stream.
//!
//! - [`config`]: command-line flags.
//! - [`xds`]: the config-stream client; compiles each snapshot into a [`runtime::Runtime`],
//!   swaps it in, ACKs or NACKs.
//! - [`runtime`]: a snapshot compiled for the request path; [`runtime::router`] and
//!   [`runtime::balance`] are parts of it.
//! - [`transport`]: HTTP on the wire (the HTTP/1.1 client, hyper's glue, the accept loop).
//! - [`plugins`]: the plugin trait, its phase API, and the plugins.
//! - [`proxy`]: the request path, from a parsed request to the answer.
//! - [`background`]: the low-priority thread that applies config versions.
//! - [`status`]: `/healthz`, `/readyz` and `/metrics` ([`metrics`]).
//! - [`error`]: the request path's one error type and its JSON responses.
//! - [`report`]: traffic per config version and rehashed credentials, reported on the config
//!   stream.
//! - [`clock`]: cheap millisecond and second readings for the request path's bookkeeping.
//! - [`state`]: what all of the above share — the one `ArcSwap<Runtime>`.
//! - [`telemetry`]: OpenTelemetry's tracer and OTLP exporter, from the environment, and the
//!   `traceparent` codec; the request path's spans are [`proxy`]'s.
//!
//! The request path never waits for the control plane: it serves whatever runtime is
//! installed, the empty one (404 for everything) until the first snapshot arrives.

// A plugin's refusal is the response itself (`Result<_, Response>`). It is built on the cold
// path only; boxing it would add an allocation per refusal to silence a size lint.
#![allow(clippy::result_large_err)]

pub mod background;
pub mod clock;
pub mod config;
pub mod error;
pub mod metrics;
pub mod plugins;
pub mod proxy;
pub mod report;
pub mod runtime;
pub mod state;
pub mod status;
pub mod telemetry;
pub mod transport;
pub mod xds;

#[cfg(test)]
mod test_support;
#[cfg(test)]
mod tests;

use std::future::Future;
use std::io;
use std::net::SocketAddr;

use thiserror::Error;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::{info, warn};

pub use config::Config;
pub use state::State;

/// Why the data plane could not start.
#[derive(Debug, Error)]
pub enum StartError {
    /// A listener could not bind its address.
    #[error("cannot listen for {what} on {addr}: {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// The socket error.
        #[source]
        source: io::Error,
    },
    /// No control-plane address was given.
    #[error("no control-plane address given")]
    NoControlPlane,
    /// `--redis-url` is not a Redis URL.
    #[error("{0}")]
    Redis(String),
    /// The `--access-log` file cannot be opened for appending.
    #[error("cannot open the access log {path}: {source}")]
    AccessLog {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A TLS file for the config stream could not be read.
    #[error("cannot read {path}: {source}")]
    TlsFile {
        /// The file.
        path: std::path::PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The config-stream client could not be set up.
    #[error(transparent)]
    Stream(#[from] xds::SetupError),
}

/// A data plane with its listeners bound, ready to [`run`](DataPlane::run).
///
/// Binding is separate from running so that the caller learns the real addresses (with port
/// 0 the kernel picks them) before serving starts.
#[derive(Debug)]
pub struct DataPlane {
    config: Config,
    proxy: TcpListener,
    status: TcpListener,
    proxy_addr: SocketAddr,
    status_addr: SocketAddr,
    /// The TLS client-traffic listener (`--tls-listen`), if on.
    tls: Option<(TcpListener, SocketAddr)>,
    state: std::sync::Arc<State>,
    access_log: Option<proxy::access_log::AccessLog>,
    security: xds::StreamSecurity,
    telemetry: Option<telemetry::Telemetry>,
}

impl DataPlane {
    /// Binds the client-traffic and status listeners.
    pub async fn bind(config: Config) -> Result<DataPlane, StartError> {
        if config.control_planes.is_empty() {
            return Err(StartError::NoControlPlane);
        }
        let mut plugin_env = plugins::BuildEnv::default();
        if let Some(url) = &config.redis_url {
            plugin_env.redis =
                Some(plugins::limit_count::RedisCounters::new(url).map_err(StartError::Redis)?);
        }
        let read = |path: &std::path::PathBuf| {
            std::fs::read(path).map_err(|source| StartError::TlsFile {
                path: path.clone(),
                source,
            })
        };
        let security = xds::StreamSecurity {
            ca_pem: config.cp_ca.as_ref().map(read).transpose()?,
            identity_pem: match (&config.cp_cert, &config.cp_key) {
                (Some(cert), Some(key)) => Some((read(cert)?, read(key)?)),
                _ => None,
            },
            token: config.cp_token.clone(),
        };
        // Refuse a setup that cannot work (https without a CA) before binding anything.
        xds::XdsClient::with_security(
            &config.control_planes,
            String::new(),
            State::new(),
            &security,
        )?;
        // Before the plugins' environment is sealed: `redirect` sends clients to its port.
        let tls = match config.tls_listen {
            Some(addr) => Some(bind("TLS client traffic", addr).await?),
            None => None,
        };
        plugin_env.tls_port = tls.as_ref().map(|(_, addr)| addr.port());
        let verifier = std::sync::Arc::clone(&plugin_env.basic_auth);
        let state = State::with_plugin_env(plugin_env);
        // basic-auth's rehashed legacy digests go out with the config stream's reports. Weak:
        // the state owns the verifier (through its runtime), which must not own the state.
        let reports = std::sync::Arc::downgrade(&state);
        verifier.on_rehash(move |rehash| {
            if let Some(state) = reports.upgrade() {
                state.reports().rehashed(rehash);
            }
        });
        let access_log = proxy::access_log::AccessLog::open(&config.access_log, state.clone())
            .map_err(|source| StartError::AccessLog {
                path: match &config.access_log {
                    config::AccessLogTarget::File(path) => path.clone(),
                    _ => "stdout".into(),
                },
                source,
            })?;
        let (proxy, proxy_addr) = bind("client traffic", config.listen).await?;
        let (status, status_addr) = bind("status", config.status_listen).await?;
        Ok(DataPlane {
            config,
            proxy,
            status,
            proxy_addr,
            status_addr,
            tls,
            state,
            access_log,
            security,
            telemetry: None,
        })
    }

    /// Traces requests with `telemetry` (see [`telemetry::Telemetry::from_env`]); `None`, the
    /// default: no tracing.
    pub fn with_telemetry(mut self, telemetry: Option<telemetry::Telemetry>) -> DataPlane {
        self.telemetry = telemetry;
        self
    }

    /// The address client traffic is served on.
    pub fn proxy_addr(&self) -> SocketAddr {
        self.proxy_addr
    }

    /// The address TLS client traffic is served on (`--tls-listen`), if on.
    pub fn tls_addr(&self) -> Option<SocketAddr> {
        self.tls.as_ref().map(|(_, addr)| *addr)
    }

    /// The address of the status endpoints.
    pub fn status_addr(&self) -> SocketAddr {
        self.status_addr
    }

    /// The access log, if `--access-log` is on (the binary reopens it on a signal).
    pub fn access_log(&self) -> Option<proxy::access_log::AccessLog> {
        self.access_log.clone()
    }

    /// Runs until `shutdown` completes: streams config from the control plane and serves
    /// traffic; then stops accepting, reports not-ready, and waits for in-flight requests to
    /// finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let DataPlane {
            config,
            proxy,
            status,
            proxy_addr,
            status_addr,
            tls,
            state,
            access_log,
            security,
            telemetry,
        } = self;

        let node_id = config.node_id();
        let control_planes: Vec<String> = config
            .control_planes
            .iter()
            .map(ToString::to_string)
            .collect();
        info!(
            proxy = %format_args!("http://{proxy_addr}"),
            status = %format_args!("http://{status_addr}"),
            node_id = %node_id,
            control_planes = ?control_planes,
            version = env!("CARGO_PKG_VERSION"),
            "data plane started"
        );
        // `bind` checked that the list is not empty and the security material usable, so there
        // is always a client.
        let xds = xds::XdsClient::with_security(
            &config.control_planes,
            node_id,
            state.clone(),
            &security,
        )
        .ok()
        .flatten()
        .map(|client| {
            let mut client = client
                .disable_plugins(config.disable_plugins.iter().cloned())
                .labels(config.labels.iter().cloned())
                .report_every(std::time::Duration::from_millis(config.report_interval_ms));
            if let Some(dir) = &config.cache_dir {
                client = client.cache_in(dir.clone());
            }
            tokio::spawn(client.run())
        });

        let (stop, stopped) = watch::channel(false);
        let wait_for_stop = |mut stopped: watch::Receiver<bool>| async move {
            // An error means the sender is gone, which also means stop.
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        let options = proxy::Options {
            access_log: access_log.clone(),
            expose_config_version: config.expose_config_version,
        };
        let mut handler = proxy::Proxy::with_options(state.clone(), options);
        if let Some(telemetry) = &telemetry {
            handler = handler.traced(telemetry.tracer().clone());
        }
        // The TLS listener serves with the same handler as the plaintext one.
        let mut tls = tls.map(|(listener, _)| {
            let stop = wait_for_stop(stopped.clone());
            tokio::spawn(proxy::tls::serve_tls(listener, handler.clone(), stop))
        });
        let mut proxy = tokio::spawn(proxy::serve_with(
            proxy,
            handler,
            wait_for_stop(stopped.clone()),
        ));
        let mut status = tokio::spawn(status::serve(status, state.clone(), wait_for_stop(stopped)));

        shutdown.await;
        info!("shutting down: no new connections; waiting for in-flight requests");
        state.start_draining();
        let _ = stop.send(true);
        // The listeners' tasks only end by draining; a panic inside one is already logged. A
        // WebSocket tunnel or a client that never finishes its request must not hold the
        // process forever: past the drain timeout, what is left is dropped.
        let drain_timeout = std::time::Duration::from_secs(config.drain_timeout);
        let drained =
            transport::deadline::within(transport::deadline::after(drain_timeout), async {
                let _ = (&mut proxy).await;
                if let Some(tls) = &mut tls {
                    let _ = tls.await;
                }
                let _ = (&mut status).await;
            })
            .await;
        if drained.is_err() {
            warn!(
                after = ?drain_timeout,
                "connections still open after the drain timeout: they end with the process"
            );
            proxy.abort();
            if let Some(tls) = &tls {
                tls.abort();
            }
            status.abort();
        }
        if let Some(xds) = xds {
            xds.abort();
        }
        // The last requests' lines, written before the process ends (unless the disk is stuck).
        if let Some(log) = &access_log
            && !log.flush(ACCESS_LOG_FLUSH)
        {
            warn!("the access log's last lines could not be written in time");
        }
        // The last spans, exported before the process ends. A blocking wait for the collector,
        // so on a blocking thread: the request threads' runtime may have one thread only.
        if let Some(telemetry) = telemetry {
            let _ = tokio::task::spawn_blocking(move || telemetry.shutdown()).await;
        }
        info!("data plane stopped");
    }
}

/// How long shutdown waits for the access log's last lines.
const ACCESS_LOG_FLUSH: std::time::Duration = std::time::Duration::from_secs(2);

async fn bind(
    what: &'static str,
    addr: SocketAddr,
) -> Result<(TcpListener, SocketAddr), StartError> {
    let listener = TcpListener::bind(addr)
        .await
        .map_err(|source| StartError::Bind { what, addr, source })?;
    // With port 0 the kernel picks the port: report the real one.
    let local = listener.local_addr().unwrap_or(addr);
    Ok((listener, local))
}
