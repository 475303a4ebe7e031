//! `control-plane`: the admin REST API and the config stream, over a versioned config store.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use control_plane::api::{self, AppState, auth};
use control_plane::config::ConfigService;
use control_plane::fleet::Fleet;
use control_plane::store::Store;
use control_plane::xds::XdsServer;
use tokio::net::TcpListener;
use tokio_stream::wrappers::TcpListenerStream;
use tracing_subscriber::EnvFilter;

/// The gateway's control plane.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Args {
    /// Address of the admin REST API.
    #[arg(long, env = "GATEWAY_ADMIN_LISTEN", default_value = "127.0.0.1:9180")]
    admin_listen: SocketAddr,
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
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("building the tokio runtime")?
        .block_on(run(args))
}

async fn run(args: Args) -> anyhow::Result<()> {
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
    let tokens = Arc::new(auth::Tokens::new(store.tokens().await?));
    let config = Arc::new(ConfigService::load(store).await?);
    let fleet = Arc::new(Fleet::default());

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

    // Machine-readable lines on stdout: scripts and tests read the bound addresses here.
    println!("admin_url=http://{admin_addr}");
    println!("xds_url=http://{xds_addr}");
    tracing::info!(
        admin = %admin_addr,
        xds = %xds_addr,
        version = config.current().version,
        store = ?config.store().backend(),
        "control plane started"
    );

    let app = api::router(
        AppState {
            config: config.clone(),
            fleet: fleet.clone(),
        },
        tokens,
    );
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
    let admin_server = axum::serve(admin, app).with_graceful_shutdown(stopped(stopping.clone()));
    let xds_service = XdsServer::new(config, fleet, &control_plane_id, stopping.clone());
    let xds_server = tonic::transport::Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(5)))
        .add_service(xds_service.into_service())
        .serve_with_incoming_shutdown(TcpListenerStream::new(xds), stopped(stopping));
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
