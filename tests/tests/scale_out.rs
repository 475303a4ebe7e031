//! The Kubernetes topology of `deploy/` as processes on this machine (R8, R11): Postgres, two
//! control-plane replicas, data planes behind a load balancer that respects their readiness, and
//! a client load that must see no failed request while the fleet scales out, loses a control
//! plane, changes and rolls back its config, and restarts every data plane in turn.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_e2e::{ControlPlane, DataPlane, FakeUpstream, eventually};
use serde_json::json;
use sqlx::ConnectOptions;

/// Clients hitting the load balancer at once.
const CLIENTS: usize = 4;
/// How long Kubernetes' preStop hook waits before SIGTERM (deploy/ uses 5 s; endpoints here
/// propagate at once, so a shorter pause proves the same ordering).
const PRE_STOP: Duration = Duration::from_millis(300);

/// A load balancer's view of the data planes: a backend takes traffic only once its `/readyz`
/// has answered 200, and leaves the rotation when its pod starts terminating (before SIGTERM,
/// as the endpoints controller removes a terminating pod while its preStop hook runs).
#[derive(Clone, Default)]
struct Rotation {
    backends: Arc<Mutex<Vec<(String, String)>>>,
    next: Arc<AtomicU64>,
}

impl Rotation {
    /// Waits until `dp` is ready, then adds it; returns how long readiness took.
    async fn admit_when_ready(&self, name: &str, dp: &DataPlane, version: u64) -> Duration {
        let started = Instant::now();
        dp.applied(version).await;
        self.backends
            .lock()
            .unwrap()
            .push((name.to_owned(), dp.proxy_url.clone()));
        started.elapsed()
    }

    fn remove(&self, name: &str) {
        self.backends.lock().unwrap().retain(|(n, _)| n != name);
    }

    fn pick(&self) -> Option<String> {
        let backends = self.backends.lock().unwrap();
        let i = self.next.fetch_add(1, Ordering::Relaxed) as usize;
        backends
            .get(i % backends.len().max(1))
            .map(|(_, url)| url.clone())
    }
}

/// Client load through the rotation, counting answers and failures until stopped.
struct Load {
    ok: Arc<AtomicU64>,
    failures: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(rotation: &Rotation) -> Load {
        let ok = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..CLIENTS)
            .map(|_| {
                let (rotation, ok, failures, stop) =
                    (rotation.clone(), ok.clone(), failures.clone(), stop.clone());
                tokio::spawn(async move {
                    let client = reqwest::Client::new();
                    while !stop.load(Ordering::Relaxed) {
                        let Some(url) = rotation.pick() else {
                            tokio::time::sleep(Duration::from_millis(5)).await;
                            continue;
                        };
                        match client.get(format!("{url}/svc")).send().await {
                            Ok(response) if response.status() == 200 => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            Ok(response) => failures
                                .lock()
                                .unwrap()
                                .push(format!("{url}: {}", response.status())),
                            Err(error) => {
                                failures.lock().unwrap().push(format!("{url}: {error:?}"))
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            ok,
            failures,
            stop,
            tasks,
        }
    }

    fn answered(&self) -> u64 {
        self.ok.load(Ordering::Relaxed)
    }

    async fn stop(self) -> (u64, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for task in self.tasks {
            task.await.expect("load task");
        }
        let failures = self.failures.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failures)
    }
}

/// Waits until the load has had `more` answers beyond now: traffic really flows.
async fn traffic_flows(load: &Load, more: u64) {
    let from = load.answered();
    eventually("client traffic flows", || async {
        (load.answered() >= from + more).then_some(())
    })
    .await;
}

/// Waits until every data plane serves `version`; returns how long it took.
async fn all_applied(fleet: &[(String, DataPlane)], version: u64) -> Duration {
    let started = Instant::now();
    for (_, dp) in fleet {
        dp.applied(version).await;
    }
    started.elapsed()
}

#[sqlx::test(migrations = false)]
async fn the_fleet_scales_out_fails_over_and_restarts_without_a_failed_request(pool: sqlx::PgPool) {
    let url = pool.connect_options().to_url_lossy().to_string();
    pool.close().await;
    let upstream = FakeUpstream::start("svc").await;
    let a = ControlPlane::start_with(&url, None, &["--control-plane-id", "cp-a"]);
    let b = ControlPlane::start_with(&url, None, &["--control-plane-id", "cp-b"]);
    // Like the Service in front of the replicas: every data plane knows both, in either order.
    let both = [
        format!("{},{}", a.xds_url, b.xds_url),
        format!("{},{}", b.xds_url, a.xds_url),
    ];
    let start_dp = |i: usize| {
        let name = format!("dp-{i}");
        let dp = DataPlane::start_with(&both[i % 2], &name, &["--drain-timeout", "10"]);
        (name, dp)
    };
    a.write("PUT", "/api/v1/upstreams/svc", Some(upstream.upstream()))
        .await;
    let base = a
        .write(
            "PUT",
            "/api/v1/routes/svc",
            Some(json!({"paths": ["/svc"], "upstream_id": "svc"})),
        )
        .await;

    let rotation = Rotation::default();
    let mut fleet: Vec<(String, DataPlane)> = (0..3).map(start_dp).collect();
    for (name, dp) in &fleet {
        rotation.admit_when_ready(name, dp, base).await;
    }
    let load = Load::start(&rotation);
    traffic_flows(&load, 50).await;

    // Scale out: two more data planes converge on the current version and join.
    for i in 3..5 {
        let (name, dp) = start_dp(i);
        let took = rotation.admit_when_ready(&name, &dp, base).await;
        eprintln!("scale-out: {name} ready with version {base} after {took:?}");
        fleet.push((name, dp));
    }
    traffic_flows(&load, 50).await;

    // One control plane dies: its data planes fail over to the other one, which shows all five.
    let killed = Instant::now();
    a.process.kill();
    eventually("every data plane on cp-b", || async {
        let entries = b.data_planes().await;
        let on_b = entries
            .iter()
            .filter(|dp| dp["connected"] == true && dp["control_plane_id"] == "cp-b")
            .count();
        (on_b == fleet.len()).then_some(())
    })
    .await;
    eprintln!(
        "failover: all 5 on cp-b {:?} after cp-a was killed",
        killed.elapsed()
    );
    traffic_flows(&load, 50).await;

    // A change and its rollback reach all five.
    let changed = b
        .write(
            "PUT",
            "/api/v1/routes/extra",
            Some(json!({"paths": ["/extra"], "upstream_id": "svc"})),
        )
        .await;
    eprintln!(
        "change: version {changed} on all 5 after {:?}",
        all_applied(&fleet, changed).await
    );
    let rolled_back = b
        .write("POST", &format!("/api/v1/versions/{base}/rollback"), None)
        .await;
    eprintln!(
        "rollback: version {rolled_back} on all 5 after {:?}",
        all_applied(&fleet, rolled_back).await
    );
    for (_, dp) in &fleet {
        assert_eq!(dp.get("/extra").await.0, 404, "the rollback removed /extra");
    }

    // A rolling update: each data plane leaves the rotation, gets SIGTERM after the preStop
    // pause, drains and exits; its replacement joins once ready.
    for i in 0..fleet.len() {
        let (name, dp) = fleet.remove(0);
        rotation.remove(&name);
        tokio::time::sleep(PRE_STOP).await;
        let exited = tokio::task::spawn_blocking(move || {
            let mut dp = dp;
            dp.process.terminate_within(Duration::from_secs(15))
        })
        .await
        .expect("terminate");
        assert!(exited, "{name} drained and exited on SIGTERM");
        let (name, dp) = start_dp(i);
        let took = rotation.admit_when_ready(&name, &dp, rolled_back).await;
        eprintln!("rolling update: {name} back and ready after {took:?}");
        fleet.push((name, dp));
        traffic_flows(&load, 20).await;
    }

    let (answered, failures) = load.stop().await;
    eprintln!("client: {answered} answers, {} failed", failures.len());
    assert!(
        failures.is_empty(),
        "{} of {} requests failed: {:?}",
        failures.len(),
        answered + failures.len() as u64,
        &failures[..failures.len().min(10)]
    );
}
