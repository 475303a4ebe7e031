//! Measures how long an admin write takes to be served by a data plane (P6 with one DP), and
//! the data plane's idle memory.
//!
//! Starts a control plane (embedded SQLite) and one data plane from the same target directory
//! as this tool, plus an in-process upstream. Then, `WRITES` times: creates a route through the
//! admin API and polls the proxy until the route answers; the time from sending the write to
//! the first 200 through the proxy is one sample. Prints the median and worst sample and the
//! data plane's RSS before the writes.
//!
//! ```sh
//! cargo build --release --bins -p control-plane -p data-plane -p gateway-benches
//! target/release/propagation            # WRITES=20 by default
//! ```

use std::time::{Duration, Instant};

use gateway_e2e::{ControlPlane, DataPlane, FakeUpstream, eventually, sqlite_url};
use serde_json::json;

fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
}

#[tokio::main]
async fn main() {
    let writes: usize = std::env::var("WRITES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let upstream = FakeUpstream::start("probe").await;
    let cp = ControlPlane::start(&sqlite_url(), None);
    let dp = DataPlane::start(&cp.xds_url, "propagation-dp");
    eventually("data plane ready", || async { dp.ready_version().await }).await;
    cp.write("PUT", "/api/v1/upstreams/probe", Some(upstream.upstream()))
        .await;
    // Let the data plane settle before reading its idle footprint.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle_rss = rss_kib(dp.process.pid());

    let mut samples = Vec::with_capacity(writes);
    for i in 0..writes {
        let path = format!("/probe-{i}");
        let started = Instant::now();
        cp.write(
            "PUT",
            &format!("/api/v1/routes/probe-{i}"),
            Some(json!({"paths": [path], "upstream_id": "probe"})),
        )
        .await;
        loop {
            if dp.get(&path).await.0 == 200 {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "write {i} never served"
            );
        }
        samples.push(started.elapsed());
    }
    samples.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    println!("writes={writes}");
    println!(
        "write_to_served_median_ms={:.2}",
        ms(samples[samples.len() / 2])
    );
    println!(
        "write_to_served_worst_ms={:.2}",
        ms(samples[samples.len() - 1])
    );
    println!("write_to_served_best_ms={:.2}", ms(samples[0]));
    if let Some(rss) = idle_rss {
        println!("dp_idle_rss_kib={rss}");
    }
}
