//! Config distribution figures: P6 (write → served by every DP, 1/10/50 DPs), P7 (bytes on
//! the stream for one route changed in 10k), P9 (versioned writes/s; rollback of a 10k-route
//! config against `PUT /config` of it).
//!
//! Starts real processes from this tool's target directory: one control plane on
//! `DATABASE_URL` (default: a fresh embedded SQLite file) and the data planes, plus an
//! in-process upstream. Every figure is printed as `name=value`; nothing is asserted.
//!
//! ```sh
//! cargo build --release --bins -p control-plane -p data-plane -p gateway-benches
//! DATABASE_URL=postgres://postgres@127.0.0.1:5432/fleet_bench target/release/fleet
//! ```
//! `FLEETS=1,10,50` (data planes per P6 run), `WRITES=50` (samples per run),
//! `WRITE_SECONDS=5` (length of the P9 write run), `ROUTES=10000`.

use std::time::{Duration, Instant};

use futures_util::future::join_all;
use gateway_e2e::{ControlPlane, DataPlane, FakeUpstream, Forwarder, eventually, sqlite_url};
use serde_json::{Value, json};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// The `q` quantile of sorted samples (nearest rank).
fn quantile(sorted: &[Duration], q: f64) -> Duration {
    let rank = ((sorted.len() as f64 * q).ceil() as usize).clamp(1, sorted.len());
    sorted[rank - 1]
}

fn config_of(routes: usize, tag: &str) -> Value {
    let routes: Vec<Value> = (0..routes)
        .map(|i| {
            json!({"id": format!("r{i}"), "paths": [format!("/{tag}/{i}/items/:id")],
                   "methods": ["GET"], "upstream_id": "u"})
        })
        .collect();
    json!({
        "upstreams": [{"id": "u", "nodes": [{"host": "127.0.0.1", "port": 9}]}],
        "routes": routes,
    })
}

/// P6: `writes` route writes; each sample is the time from sending it until every data plane's
/// `/readyz` reports its version.
async fn write_to_served(cp: &ControlPlane, dps: &[DataPlane], writes: usize) -> Vec<Duration> {
    let mut samples = Vec::with_capacity(writes);
    for i in 0..writes {
        // A new route each time: a write that changes nothing makes no version to wait for.
        let id = format!("p6-{}-{i}", dps.len());
        let started = Instant::now();
        let version = cp
            .write(
                "PUT",
                &format!("/api/v1/routes/{id}"),
                Some(json!({"paths": [format!("/{id}")], "upstream_id": "probe"})),
            )
            .await;
        let mut waiting: Vec<&DataPlane> = dps.iter().collect();
        while !waiting.is_empty() {
            let versions = join_all(waiting.iter().map(|dp| dp.ready_version())).await;
            waiting = waiting
                .into_iter()
                .zip(versions)
                .filter(|(_, v)| *v < Some(version))
                .map(|(dp, _)| dp)
                .collect();
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "write {i} not served by every data plane within 30 s"
            );
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    samples
}

#[tokio::main]
async fn main() {
    let database_url = std::env::var("DATABASE_URL").unwrap_or_else(|_| sqlite_url());
    let fleets: Vec<usize> = std::env::var("FLEETS")
        .unwrap_or_else(|_| "1,10,50".to_owned())
        .split(',')
        .filter_map(|n| n.trim().parse().ok())
        .collect();
    let writes: usize = env_or("WRITES", 50);
    let write_seconds: u64 = env_or("WRITE_SECONDS", 5);
    let route_count: usize = env_or("ROUTES", 10_000);
    let backend = if database_url.starts_with("postgres") {
        "postgres"
    } else {
        "sqlite"
    };
    println!("store={backend}");

    let upstream = FakeUpstream::start("probe").await;
    let cp = ControlPlane::start(&database_url, None);
    cp.write("PUT", "/api/v1/upstreams/probe", Some(upstream.upstream()))
        .await;

    // P6 at each fleet size; the data planes of a run stay up for the next.
    let mut dps: Vec<DataPlane> = Vec::new();
    for &size in &fleets {
        while dps.len() < size {
            dps.push(DataPlane::start(
                &cp.xds_url,
                &format!("fleet-dp-{}", dps.len()),
            ));
        }
        for dp in &dps {
            eventually("data plane ready", || async { dp.ready_version().await }).await;
        }
        let samples = write_to_served(&cp, &dps, writes).await;
        println!(
            "p6_dps={size} writes={writes} median_ms={:.1} p99_ms={:.1} max_ms={:.1}",
            ms(quantile(&samples, 0.5)),
            ms(quantile(&samples, 0.99)),
            ms(samples[samples.len() - 1]),
        );
    }
    drop(dps);

    // P9: versioned writes per second, 8 writers, each write one new version.
    let started = Instant::now();
    let deadline = started + Duration::from_secs(write_seconds);
    let mut writers = tokio::task::JoinSet::new();
    let cp = std::sync::Arc::new(cp);
    for w in 0..8 {
        let cp = std::sync::Arc::clone(&cp);
        writers.spawn(async move {
            let mut done = 0u64;
            while Instant::now() < deadline {
                let (status, _, _) = cp
                    .call(
                        "PUT",
                        &format!("/api/v1/routes/w{w}-{done}"),
                        Some(json!({"paths": [format!("/w/{w}/{done}")], "upstream_id": "probe"})),
                    )
                    .await;
                if (200..300).contains(&status) {
                    done += 1;
                }
            }
            done
        });
    }
    let mut total = 0;
    while let Some(done) = writers.join_next().await {
        total += done.expect("writer task");
    }
    println!(
        "p9_writes_per_s={:.0} writers=8 seconds={write_seconds}",
        total as f64 / started.elapsed().as_secs_f64()
    );

    // P9: PUT /config of ROUTES routes, then rollback to it from a different whole config.
    let started = Instant::now();
    let first = cp
        .write("PUT", "/api/v1/config", Some(config_of(route_count, "a")))
        .await;
    let put_first = started.elapsed();
    let started = Instant::now();
    cp.write("PUT", "/api/v1/config", Some(config_of(route_count, "b")))
        .await;
    let put_second = started.elapsed();
    let started = Instant::now();
    cp.write("POST", &format!("/api/v1/versions/{first}/rollback"), None)
        .await;
    let rollback = started.elapsed();
    println!(
        "p9_routes={route_count} put_config_ms={:.0} put_config_again_ms={:.0} rollback_ms={:.0}",
        ms(put_first),
        ms(put_second),
        ms(rollback)
    );

    // P7: bytes on one data plane's stream for one route changed in the big config.
    let xds: std::net::SocketAddr = cp.xds_listen().parse().expect("xds address");
    let forwarder = Forwarder::start(xds).await;
    let dp = DataPlane::start(&format!("http://{}", forwarder.addr), "fleet-dp-bytes");
    let head = cp
        .write(
            "PUT",
            "/api/v1/routes/r1",
            Some(json!({"paths": ["/a/1/items/:id"], "methods": ["GET"], "upstream_id": "u"})),
        )
        .await;
    dp.applied(head).await;
    let whole = forwarder.bytes_to_clients();
    let changed = cp
        .write(
            "PUT",
            "/api/v1/routes/r5000",
            Some(json!({"paths": ["/moved"], "methods": ["GET"], "upstream_id": "u"})),
        )
        .await;
    dp.applied(changed).await;
    println!(
        "p7_routes={route_count} first_snapshot_bytes={whole} one_route_delta_bytes={}",
        forwarder.bytes_to_clients() - whole
    );
}
