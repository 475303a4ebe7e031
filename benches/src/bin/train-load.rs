//! The training load of the profile-guided build (`benches/load/pgo.sh`): no nginx, no wrk.
//!
//! Starts in-process fake upstreams on loopback (small JSON answers, like peerbench's), a
//! control plane (found next to this tool, on a fresh SQLite file) and the given data-plane
//! binary (one worker thread, a plaintext and a TLS listener), configures the routes the
//! benchmarks measure, and loads each in turn over keep-alive HTTP/1.1 connections for a
//! bounded time:
//!
//! - `plain`: a proxy route (P1);
//! - `plugins`: the same with key-auth + limit-count + prometheus (P4);
//! - `tls`: the plain route over `--tls-listen`, with a certificate made for the run (P10);
//! - `cache`: a `proxy-cache` route, hits after each key's first miss (P11) — skipped, with a
//!   note, when the control plane refuses the plugin;
//! - `agg`: a 3-way `batch` merged as an object (P2).
//!
//! Then the data plane gets SIGTERM and its exit is awaited, so an instrumented build writes
//! its profile (`LLVM_PROFILE_FILE`, inherited). Any error or non-2xx answer fails the run: a
//! profile of error paths would teach the compiler the wrong code.
//!
//! ```sh
//! cargo build --release -p control-plane -p gateway-benches --bin control-plane --bin train-load
//! target/release/train-load target/pgo-generate/release/data-plane
//! ```
//! `TRAIN_SECONDS` (per route, default 8), `TRAIN_CONNECTIONS` (default 16).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use gateway_e2e::{ControlPlane, Process, sqlite_url};
use http_body_util::{BodyExt as _, Empty, Full};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType, IsCa, KeyPair,
    KeyUsagePurpose,
};
use serde_json::{Value, json};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::{CertificateDer, ServerName};
use tokio_rustls::rustls::{ClientConfig, RootCertStore};

const USAGE: &str = "usage: train-load DATA_PLANE_BINARY (TRAIN_SECONDS, TRAIN_CONNECTIONS)";
/// The name the certificate is made for, sent as SNI and `Host`.
const SERVER_NAME: &str = "bench.local";
/// Distinct cache keys on the cache route: a miss each, then hits.
const CACHE_KEYS: u64 = 64;

type Error = Box<dyn std::error::Error + Send + Sync>;

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let (Some(data_plane), None) = (args.next(), args.next()) else {
        return Err(USAGE.into());
    };
    let data_plane = std::path::absolute(&data_plane)?;
    // One worker: the data plane has one too, and the two share this machine's cores.
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?
        .block_on(train(data_plane.to_string_lossy().into_owned()))
}

async fn train(data_plane: String) -> Result<(), Error> {
    let seconds = Duration::from_secs(env_or("TRAIN_SECONDS", 8));
    let connections = env_or("TRAIN_CONNECTIONS", 16).max(1);
    let upstreams = [
        fake_upstream("catalog").await?,
        fake_upstream("inventory").await?,
        fake_upstream("review").await?,
    ];
    let ca = Ca::new()?;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let mut dp = Process::spawn(
        &data_plane,
        &[
            "--listen",
            "127.0.0.1:0",
            "--status-listen",
            "127.0.0.1:0",
            "--tls-listen",
            "127.0.0.1:0",
            "--control-plane",
            &cp.xds_url,
            "--node-id",
            "train-load",
            "--worker-threads",
            "1",
        ],
        &[],
        &["proxy_url", "status_url", "tls_url"],
    );
    let host = |url: &str| -> Result<SocketAddr, Error> {
        Ok(url.split_once("://").ok_or("no scheme")?.1.parse()?)
    };
    let proxy = host(dp.value("proxy_url"))?;
    let tls = host(dp.value("tls_url"))?;
    let status = host(dp.value("status_url"))?;

    let (version, cache) = configure(&cp, &upstreams, &ca).await?;
    wait_applied(status, version).await?;

    let plain = Target::plain(proxy);
    let mut routes = vec![
        ("plain", plain.clone(), "/catalog?item=14286".to_owned()),
        (
            "plugins",
            plain.clone(),
            "/plugins/catalog?item=14286&apikey=bench-key-0123456789".to_owned(),
        ),
        (
            "tls",
            Target::tls(tls, &ca)?,
            "/catalog?item=14286".to_owned(),
        ),
        ("agg", plain.clone(), "/agg/product/14286".to_owned()),
    ];
    if cache {
        routes.push(("cache", plain, "/cached/catalog?item=".to_owned()));
    }
    let mut failed = Vec::new();
    for (name, target, path) in routes {
        // The cache route's path takes one of CACHE_KEYS items per request.
        let keyed = name == "cache";
        let tally = load(target, path, keyed, connections, seconds).await;
        println!(
            "train-load: {name}: {} requests ({:.0}/s), {} non-2xx, {} errors",
            tally.ok + tally.non_2xx,
            (tally.ok + tally.non_2xx) as f64 / seconds.as_secs_f64(),
            tally.non_2xx,
            tally.errors
        );
        if tally.non_2xx > 0 || tally.errors > 0 || tally.ok == 0 {
            failed.push(name);
        }
    }
    // SIGTERM and a normal exit: an instrumented data plane writes its profile as it exits.
    if !dp.terminate_within(Duration::from_secs(30)) {
        return Err("the data plane did not exit within 30 s of SIGTERM: no profile".into());
    }
    if !failed.is_empty() {
        return Err(format!("errors while training on {failed:?}").into());
    }
    Ok(())
}

/// Creates the upstreams, the consumer, the certificate and the routes; the last version
/// written, and whether the cache route could be made.
async fn configure(
    cp: &ControlPlane,
    upstreams: &[SocketAddr; 3],
    ca: &Ca,
) -> Result<(u64, bool), Error> {
    for (name, addr) in ["catalog", "inventory", "review"].iter().zip(upstreams) {
        cp.write(
            "PUT",
            &format!("/api/v1/upstreams/{name}"),
            Some(json!({"nodes": [{"host": "127.0.0.1", "port": addr.port()}]})),
        )
        .await;
    }
    let (cert, key) = ca.leaf(&[SERVER_NAME, "127.0.0.1"])?;
    cp.write(
        "PUT",
        "/api/v1/certificates/bench",
        Some(json!({"snis": [SERVER_NAME], "default": true, "cert": cert, "key": key})),
    )
    .await;
    cp.write(
        "PUT",
        "/api/v1/consumers/bench",
        Some(json!({"credentials": {"key-auth": {"key": "bench-key-0123456789"}}})),
    )
    .await;
    let routes = [
        (
            "plugins",
            json!({"paths": ["/plugins/catalog"], "methods": ["GET"], "upstream_id": "catalog",
                "plugins": {"key-auth": {}, "prometheus": {},
                    "limit-count": {"count": 1_000_000_000, "time_window": 60, "key": "consumer",
                                    "rejected_code": 429}}}),
        ),
        (
            "agg",
            json!({"paths": ["/agg/product/:item"], "methods": ["GET"], "batch": {"merge": "object",
                "requests": [
                    {"name": "catalog", "upstream_id": "catalog", "path": "/catalog?item={param.item}"},
                    {"name": "inventory", "upstream_id": "inventory", "path": "/inventory?item={param.item}"},
                    {"name": "review", "upstream_id": "review", "path": "/review?item={param.item}"}]}}),
        ),
        (
            "plain",
            json!({"paths": ["/catalog"], "methods": ["GET"], "upstream_id": "catalog"}),
        ),
    ];
    let mut version = 0;
    for (id, route) in routes {
        version = cp
            .write("PUT", &format!("/api/v1/routes/{id}"), Some(route))
            .await;
    }
    let cached = json!({"paths": ["/cached/catalog"], "methods": ["GET"], "upstream_id": "catalog",
        "plugins": {"proxy-cache": {"cache_ttl": 300}}});
    match cp.call("PUT", "/api/v1/routes/cached", Some(cached)).await {
        (200..300, Some(cached), _) => Ok((cached, true)),
        (code, _, reply) => {
            println!("train-load: note: no cache route, the control plane answered {code} {reply}");
            Ok((version, false))
        }
    }
}

/// Waits until the data plane's `/readyz` reports `version` or later.
async fn wait_applied(status: SocketAddr, version: u64) -> Result<(), Error> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(body) = get_json(status, "/readyz").await
            && body["version"].as_u64().is_some_and(|v| v >= version)
        {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("the data plane did not apply version {version} within 30 s").into())
}

async fn get_json(addr: SocketAddr, path: &str) -> Result<Value, Error> {
    let (mut sender, connection) =
        hyper::client::conn::http1::handshake(TokioIo::new(TcpStream::connect(addr).await?))
            .await?;
    tokio::spawn(connection);
    let request = Request::get(path)
        .header("host", "127.0.0.1")
        .body(Empty::<Bytes>::new())?;
    let body = sender.send_request(request).await?.collect().await?;
    Ok(serde_json::from_slice(&body.to_bytes())?)
}

/// A fake upstream on 127.0.0.1:0: any request gets a small JSON object naming the service
/// and echoing the path and query, over keep-alive HTTP/1.1.
async fn fake_upstream(name: &'static str) -> Result<SocketAddr, Error> {
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let _ = stream.set_nodelay(true);
            tokio::spawn(hyper::server::conn::http1::Builder::new().serve_connection(
                TokioIo::new(stream),
                service_fn(move |request: Request<hyper::body::Incoming>| async move {
                    let body = json!({"service": name, "uri": request.uri().path(),
                            "query": request.uri().query().unwrap_or("")});
                    Ok::<_, Infallible>(
                        Response::builder()
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(body.to_string())))
                            .unwrap_or_default(),
                    )
                }),
            ));
        }
    });
    Ok(addr)
}

/// A CA made for the run and the leaf it signs for the data plane.
struct Ca {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl Ca {
    fn new() -> Result<Ca, Error> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, "train-load CA");
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign];
        Ok(Ca {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    /// A leaf for `names`: its certificate (PEM) and key (PEM).
    fn leaf(&self, names: &[&str]) -> Result<(String, String), Error> {
        let mut params =
            CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok((cert.pem(), key.serialize_pem()))
    }
}

/// Where the load connects: plaintext, or TLS trusting the run's CA.
#[derive(Clone)]
struct Target {
    addr: SocketAddr,
    tls: Option<TlsConnector>,
}

impl Target {
    fn plain(addr: SocketAddr) -> Target {
        Target { addr, tls: None }
    }

    fn tls(addr: SocketAddr, ca: &Ca) -> Result<Target, Error> {
        let mut roots = RootCertStore::empty();
        roots.add(CertificateDer::from(ca.issuer.der().to_vec()))?;
        let config = ClientConfig::builder_with_provider(Arc::new(
            tokio_rustls::rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
        Ok(Target {
            addr,
            tls: Some(TlsConnector::from(Arc::new(config))),
        })
    }
}

/// What one route's load got back.
#[derive(Default)]
struct Tally {
    ok: u64,
    non_2xx: u64,
    errors: u64,
}

/// `connections` keep-alive connections sending `GET path` back to back for `seconds`; a
/// connection that fails is counted and opened again.
async fn load(
    target: Target,
    path: String,
    keyed: bool,
    connections: usize,
    seconds: Duration,
) -> Tally {
    let deadline = Instant::now() + seconds;
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let next_key = Arc::new(AtomicU64::new(0));
    let tasks: Vec<_> = (0..connections)
        .map(|_| {
            let (target, path, counts, next_key) = (
                target.clone(),
                path.clone(),
                counts.clone(),
                next_key.clone(),
            );
            tokio::spawn(async move {
                while Instant::now() < deadline {
                    let path = path.clone();
                    let next_key = next_key.clone();
                    let uri = move || {
                        if keyed {
                            let key = next_key.fetch_add(1, Ordering::Relaxed) % CACHE_KEYS;
                            format!("{path}{key}")
                        } else {
                            path.clone()
                        }
                    };
                    let (ok, non_2xx, error) = match &target.tls {
                        None => match TcpStream::connect(target.addr).await {
                            Ok(stream) => connection(stream, uri, deadline).await,
                            Err(_) => (0, 0, 1),
                        },
                        Some(tls) => match tls_connect(tls, target.addr).await {
                            Ok(stream) => connection(stream, uri, deadline).await,
                            Err(_) => (0, 0, 1),
                        },
                    };
                    for (count, n) in counts.iter().zip([ok, non_2xx, error]) {
                        count.fetch_add(n, Ordering::Relaxed);
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        let _ = task.await;
    }
    let [ok, non_2xx, errors] = &*counts;
    Tally {
        ok: ok.load(Ordering::Relaxed),
        non_2xx: non_2xx.load(Ordering::Relaxed),
        errors: errors.load(Ordering::Relaxed),
    }
}

async fn tls_connect(
    tls: &TlsConnector,
    addr: SocketAddr,
) -> Result<tokio_rustls::client::TlsStream<TcpStream>, Error> {
    let stream = TcpStream::connect(addr).await?;
    Ok(tls
        .connect(ServerName::try_from(SERVER_NAME)?, stream)
        .await?)
}

/// Requests on one connection until `deadline`: (2xx answers, other answers, 1 if the
/// connection failed before the deadline).
async fn connection<S>(stream: S, uri: impl Fn() -> String, deadline: Instant) -> (u64, u64, u64)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (mut ok, mut non_2xx) = (0, 0);
    let Ok((mut sender, conn)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
    else {
        return (0, 0, 1);
    };
    tokio::spawn(conn);
    while Instant::now() < deadline {
        let Ok(request) = Request::get(uri())
            .header("host", SERVER_NAME)
            .body(Empty::<Bytes>::new())
        else {
            return (ok, non_2xx, 1);
        };
        let Ok(response) = sender.send_request(request).await else {
            return (ok, non_2xx, 1);
        };
        let good = response.status().is_success();
        if response.into_body().collect().await.is_err() {
            return (ok, non_2xx, 1);
        }
        if good { ok += 1 } else { non_2xx += 1 }
    }
    (ok, non_2xx, 0)
}
