//! `control-plane`: the admin REST API and the config stream, over a versioned config store.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use control_plane::api::{self, AppState, auth};
use control_plane::config::ConfigService;
use control_plane::fleet::Fleet;
use control_plane::rollout::Rollouts;
use control_plane::store::Store;
use control_plane::telemetry::{self, Telemetry};
use control_plane::tls;
use control_plane::xds::XdsServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing_subscriber::EnvFilter;

/// The gateway's control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Option<Command>,
    /// Address of the admin REST API.
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9180")]
    admin_listen: SocketAddr,
    /// Serve the admin API over TLS with this certificate (PEM, chain leaf first).
    #[arg(long, env = "GATEWAY_ADMIN_TLS_CERT", requires = "admin_tls_key")]
    admin_tls_cert: Option<PathBuf>,
    /// The private key of --admin-tls-cert (PEM).
    #[arg(long, env = "GATEWAY_ADMIN_TLS_KEY", requires = "admin_tls_cert")]
    admin_tls_key: Option<PathBuf>,
    /// Address of the gRPC config stream the data planes connect to.
    #[arg(long, env = "GATEWAY_XDS_LISTEN", default_value = "127.0.0.1:9280")]
    xds_listen: SocketAddr,
    /// The config store: postgres://… (production) or sqlite://… (embedded).
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "sqlite://gateway.db?mode=rwc"
    )]
    database_url: String,
    /// Bootstrap admin bearer token. If none is given and the store has no token, one is
    /// generated, stored hashed, and printed once.
    #[arg(long, env = "GATEWAY_ADMIN_TOKEN", hide_env_values = true)]
    admin_token: Option<String>,
    /// This replica's name in the fleet view (default: host name and config-stream port).
    #[arg(long, env = "GATEWAY_CONTROL_PLANE_ID")]
    control_plane_id: Option<String>,
    /// Serve the config stream over TLS with this certificate (PEM, chain leaf first).
    #[arg(long, env = "GATEWAY_XDS_TLS_CERT", requires = "xds_tls_key")]
    xds_tls_cert: Option<PathBuf>,
    /// The private key of --xds-tls-cert (PEM).
    #[arg(long, env = "GATEWAY_XDS_TLS_KEY", requires = "xds_tls_cert")]
    xds_tls_key: Option<PathBuf>,
    /// Require every data plane to present a client certificate signed by this CA (mTLS).
    #[arg(long, env = "GATEWAY_XDS_CLIENT_CA", requires = "xds_tls_cert")]
    xds_client_ca: Option<PathBuf>,
    /// A shared data-plane token every config stream must carry (the lighter alternative to
    /// mTLS). Only its SHA-256 is kept.
    #[arg(long, env = "GATEWAY_DP_TOKEN", hide_env_values = true)]
    dp_token: Option<String>,
    /// Serve the config stream beyond loopback without client authentication (neither
    /// --xds-client-ca nor --dp-token): anyone who reaches it gets the whole config.
    #[arg(long, env = "GATEWAY_XDS_INSECURE")]
    xds_insecure: bool,
    /// Data planes not seen for this many seconds leave the fleet view (Kong's default).
    #[arg(long, env = "GATEWAY_FLEET_RETENTION", default_value_t = 14 * 24 * 3600)]
    fleet_retention: u64,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Make a private CA with a control-plane (server) and a data-plane (client) certificate
    /// for an mTLS config stream, as PEM files, then exit.
    Certs {
        /// Where to write ca.crt, ca.key, control-plane.crt/.key and data-plane.crt/.key.
        #[arg(long, default_value = "certs")]
        dir: PathBuf,
        /// A name data planes reach the control plane by (repeatable): the host of their
        /// `--control-plane https://NAME:PORT`.
        #[arg(long = "server-name", default_values_t = ["localhost".to_owned(), "127.0.0.1".to_owned()])]
        server_names: Vec<String>,
        /// The data plane's name in its client certificate.
        #[arg(long, default_value = "data-plane")]
        client_name: String,
    },
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(Command::Certs {
        dir,
        server_names,
        client_name,
    }) = &args.command
    {
        let made = tls::generate(dir, server_names, client_name)?;
        for file in made.files {
            println!("wrote {}", file.display());
        }
        return Ok(());
    }
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    // OpenTelemetry when OTEL_EXPORTER_OTLP_ENDPOINT is set; off otherwise.
    let telemetry = Telemetry::from_env(telemetry::SERVICE_NAME)
        .context("setting up tracing from the OTEL_* environment")?;
    let tracer = telemetry.as_ref().map(|t| t.tracer().clone());
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?
        .block_on(run(args, tracer));
    // The last spans, exported after the servers stopped.
    if let Some(telemetry) = telemetry {
        telemetry.shutdown();
    }
    result
}

async fn run(
    args: Args,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
) -> anyhow::Result<()> {
    let store = Store::connect(&args.database_url)
        .await
        .with_context(|| format!("opening the config store at {}", redact(&args.database_url)))?;
    match auth::bootstrap(&store, args.admin_token.as_deref()).await? {
        auth::Bootstrap::Generated(token) => {
            println!("admin_token={token}");
            tracing::warn!(
                "generated an admin token (printed once on stdout as admin_token=…); keep it"
            );
        }
        auth::Bootstrap::FromFlag => tracing::info!("admin token set from --admin-token"),
        auth::Bootstrap::Existing => tracing::info!("using the admin tokens already in the store"),
    }
    let tokens = Arc::new(auth::Tokens::new(store.clone()));
    let config = Arc::new(ConfigService::load(store.clone()).await?);

    let stream_tls = match (&args.xds_tls_cert, &args.xds_tls_key) {
        (Some(cert), Some(key)) => Some(
            tls::server_config(cert, key, args.xds_client_ca.as_deref())
                .context("setting up TLS for the config stream")?,
        ),
        _ => None,
    };
    let authenticated = args.xds_client_ca.is_some() || args.dp_token.is_some();
    if !authenticated && !args.xds_listen.ip().is_loopback() {
        if !args.xds_insecure {
            anyhow::bail!(
                "the config stream on {} would hand the whole config to anyone who reaches it: \
                 give --xds-client-ca (mTLS) or --dp-token, listen on loopback, or pass \
                 --xds-insecure",
                args.xds_listen
            );
        }
        tracing::warn!(
            listen = %args.xds_listen,
            "--xds-insecure: the config stream serves every peer without authentication"
        );
    }

    let admin = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding the admin API to {}", args.admin_listen))?;
    let xds = TcpListener::bind(args.xds_listen)
        .await
        .with_context(|| format!("binding the config stream to {}", args.xds_listen))?;
    let admin_addr = admin.local_addr()?;
    let xds_addr = xds.local_addr()?;
    let control_plane_id = args
        .control_plane_id
        .unwrap_or_else(|| format!("{}:{}", host_name(), xds_addr.port()));
    let fleet = Arc::new(Fleet::new(
        store,
        &control_plane_id,
        Duration::from_secs(args.fleet_retention),
    ));

    // Machine-readable lines on stdout: scripts and tests read the bound addresses here.
    let admin_tls = match (&args.admin_tls_cert, &args.admin_tls_key) {
        (Some(cert), Some(key)) => Some(tls::admin_server_config(cert, key)?),
        _ => None,
    };
    let admin_scheme = if admin_tls.is_some() { "https" } else { "http" };
    println!("admin_url={admin_scheme}://{admin_addr}");
    let scheme = if stream_tls.is_some() {
        "https"
    } else {
        "http"
    };
    println!("xds_url={scheme}://{xds_addr}");
    tracing::info!(
        admin = %admin_addr,
        xds = %xds_addr,
        version = config.current().version,
        store = ?config.store().backend(),
        store_id = config.store_id(),
        replica = %control_plane_id,
        "control plane started"
    );
    // Versions other replicas commit (Postgres), and the fleet's rows.
    tokio::spawn(config.clone().follow_store());
    let writer = fleet.clone();
    tokio::spawn(async move { writer.run_writer().await });
    let counter = fleet.clone();
    tokio::spawn(async move { counter.run_live_count().await });

    // Staged rollouts, driven by every replica from the store.
    let rollouts = Arc::new(Rollouts::new(config.clone(), fleet.clone()));
    let driver = rollouts.clone();
    tokio::spawn(async move { driver.run().await });

    let app = api::router(
        AppState {
            config: config.clone(),
            fleet: fleet.clone(),
            rollouts: rollouts.clone(),
        },
        tokens,
    );
    // A span per admin write, when tracing is on (a layer around every route, so it sees the
    // route's template and the version the write made).
    let app = match tracer {
        Some(tracer) => app.layer(axum::middleware::from_fn_with_state(
            tracer,
            telemetry::trace_writes,
        )),
        None => app,
    };
    // One signal stops both servers and ends the config streams, which tonic's graceful
    // shutdown would otherwise wait on for as long as the data planes keep them open.
    let (stop, stopping) = tokio::sync::watch::channel(false);
    tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop.send(true);
    });
    let stopped = |mut stopping: tokio::sync::watch::Receiver<bool>| async move {
        let _ = stopping.wait_for(|stop| *stop).await;
    };
    let admin_stopped = stopped(stopping.clone());
    let admin_server = async move {
        match admin_tls {
            Some(config) => {
                axum::serve(tls::AdminTlsListener::new(admin, config)?, app)
                    .with_graceful_shutdown(admin_stopped)
                    .await
            }
            None => {
                axum::serve(admin, app)
                    .with_graceful_shutdown(admin_stopped)
                    .await
            }
        }
    };
    let mut xds_service = XdsServer::new(config, fleet, rollouts, stopping.clone());
    if let Some(token) = &args.dp_token {
        xds_service = xds_service.require_token(token);
    }
    let xds_router = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(xds_service.into_service());
    let xds_server = async move {
        match stream_tls {
            Some(tls_config) => {
                xds_router
                    .serve_with_incoming_shutdown(
                        tls::accept(xds, tls_config, "config stream"),
                        stopped(stopping),
                    )
                    .await
            }
            None => {
                xds_router
                    .serve_with_incoming_shutdown(TcpListenerStream::new(xds), stopped(stopping))
                    .await
            }
        }
    };
    let (admin_result, xds_result) = tokio::join!(admin_server, xds_server);
    admin_result.context("admin API server")?;
    xds_result.context("config stream server")?;
    tracing::info!("control plane stopped");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

fn host_name() -> String {
    std::fs::read_to_string("/etc/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| "control-plane".into())
}

/// The database URL without its password, for logs.
fn redact(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let credentials = &url[scheme_end + 3..at];
            match credentials.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_owned(),
            }
        }
        _ => url.to_owned(),
    }
}
