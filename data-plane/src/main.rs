//! The `data-plane` binary: flags, logging, the tokio runtime and signals. Everything else is
//! in the library.

use anyhow::Context as _;
use clap::Parser as _;
use data_plane::config::AccessLogTarget;
use data_plane::{Config, DataPlane};
use tracing_subscriber::EnvFilter;

fn main() -> anyhow::Result<()> {
    let config = Config::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
        )
        // stdout is for the machine-readable lines below; logs go to stderr.
        .with_writer(std::io::stderr)
        .init();
    // OpenTelemetry when OTEL_EXPORTER_OTLP_ENDPOINT is set; off (and free) otherwise.
    let telemetry = data_plane::telemetry::Telemetry::from_env("gateway-data-plane")
        .context("setting up tracing from the OTEL_* environment")?;

    // One worker: a current-thread runtime serves everything on this thread, without the
    // work-stealing scheduler's cross-thread bookkeeping (measured: less CPU per request).
    let mut builder = if config.worker_threads() == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut builder = tokio::runtime::Builder::new_multi_thread();
        builder.worker_threads(config.worker_threads());
        builder
    };
    let runtime = builder
        .thread_name("data-plane-worker")
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let log_file = matches!(config.access_log, AccessLogTarget::File(_));
    runtime.block_on(async {
        let data_plane = DataPlane::bind(config).await?.with_telemetry(telemetry);
        if let Some(log) = data_plane.access_log().filter(|_| log_file) {
            // Listening before the addresses are printed: whoever read them may signal at once,
            // and an unhandled SIGUSR1 would end the process.
            tokio::spawn(reopen_on_signal(log)?);
        }
        // Machine-readable lines on stdout: scripts and tests read the bound addresses here.
        println!("proxy_url=http://{}", data_plane.proxy_addr());
        if let Some(tls) = data_plane.tls_addr() {
            println!("tls_url=https://{tls}");
        }
        println!("status_url=http://{}", data_plane.status_addr());
        data_plane.run(shutdown_signal()).await;
        Ok(())
    })
}

/// Reopens the access-log file on SIGUSR1 (what nginx, and Kong through it, reopen logs on)
/// and on SIGHUP (what many other daemons use), so logrotate can move the file and signal. The
/// signals are listened for when this returns; the future reopens on each.
#[cfg(unix)]
fn reopen_on_signal(
    log: data_plane::proxy::access_log::AccessLog,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut usr1 = signal(SignalKind::user_defined1()).context("listening for SIGUSR1")?;
    let mut hup = signal(SignalKind::hangup()).context("listening for SIGHUP")?;
    Ok(async move {
        loop {
            tokio::select! {
                _ = usr1.recv() => {}
                _ = hup.recv() => {}
            }
            tracing::info!("reopening the access log");
            log.reopen();
        }
    })
}

/// Without Unix signals the access log is never reopened (rotate it with copytruncate).
#[cfg(not(unix))]
fn reopen_on_signal(
    log: data_plane::proxy::access_log::AccessLog,
) -> anyhow::Result<impl std::future::Future<Output = ()>> {
    drop(log);
    Ok(std::future::ready(()))
}

/// Completes on SIGTERM (what orchestrators send) or Ctrl-C.
async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(error) = tokio::signal::ctrl_c().await {
            tracing::error!(%error, "cannot listen for Ctrl-C");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => tracing::info!("received Ctrl-C"),
        () = terminate => tracing::info!("received SIGTERM"),
    }
}
