//! The control plane's own metrics, rendered in the Prometheus text format on the admin
//! listener's `/metrics`. Process-wide atomics: every update is one relaxed add, and the
//! write path and the config streams record without a handle threaded through them.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A Prometheus histogram over fixed buckets (1 ms to 10 s): per-bucket counts (made cumulative when
/// rendered) and the sum in microseconds.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS.len() + 1],
    sum_micros: AtomicU64,
}

impl Histogram {
    const fn new() -> Histogram {
        Histogram {
            buckets: [const { AtomicU64::new(0) }; BUCKETS.len() + 1],
            sum_micros: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, elapsed: Duration) {
        let seconds = elapsed.as_secs_f64();
        let bucket = BUCKETS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(BUCKETS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, help: &str) {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, count) in self.buckets.iter().enumerate() {
            cumulative += count.load(Relaxed);
            match BUCKETS.get(i) {
                Some(bound) => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"{bound}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {cumulative}");
    }
}

/// Every metric the control plane exports.
#[derive(Debug)]
pub struct Metrics {
    /// Versions this replica committed (writes, rollbacks, `PUT /config`).
    pub versions_written: AtomicU64,
    /// Admin writes refused (validation, references, `If-Match`, store errors).
    pub writes_refused: AtomicU64,
    /// How long an admin write took: plan, validate, commit.
    pub write_duration: Histogram,
    /// Config streams open on this replica.
    pub streams_open: AtomicI64,
    /// Versions data planes rejected on this replica's streams.
    pub nacks: AtomicU64,
    /// From sending a version on a stream to the data plane's ACK.
    pub push_duration: Histogram,
    /// Staged rollouts this replica started.
    pub rollouts_started: AtomicU64,
    /// Staged rollouts this replica saw complete (the last stage, or promoted).
    pub rollouts_completed: AtomicU64,
    /// Staged rollouts this replica halted (a canary NACKed or answered too many 5xx).
    pub rollouts_halted: AtomicU64,
}

static METRICS: Metrics = Metrics {
    versions_written: AtomicU64::new(0),
    writes_refused: AtomicU64::new(0),
    write_duration: Histogram::new(),
    streams_open: AtomicI64::new(0),
    nacks: AtomicU64::new(0),
    push_duration: Histogram::new(),
    rollouts_started: AtomicU64::new(0),
    rollouts_completed: AtomicU64::new(0),
    rollouts_halted: AtomicU64::new(0),
};

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

/// The fleet as the store sees it when scraped (every replica's data planes).
#[derive(Clone, Copy, Debug)]
pub struct FleetGauges {
    /// Data planes with an open stream to any replica.
    pub connected: usize,
    /// Of those, how many serve the current version.
    pub applied_current: usize,
    /// How many rejected the current version.
    pub rejected_current: usize,
}

impl Metrics {
    /// The Prometheus text exposition of every metric; `fleet` is `None` while the store is
    /// unreachable (those gauges are then left out rather than reported as zero).
    pub fn render(&self, version: u64, fleet: Option<FleetGauges>) -> String {
        let mut out = String::with_capacity(4096);
        let counters = [
            (
                "gateway_cp_versions_written_total",
                "Config versions this replica committed.",
                self.versions_written.load(Relaxed),
            ),
            (
                "gateway_cp_writes_refused_total",
                "Admin API writes refused (invalid, conflicting, stale or store errors).",
                self.writes_refused.load(Relaxed),
            ),
            (
                "gateway_cp_nacks_total",
                "Config versions data planes rejected on this replica's streams.",
                self.nacks.load(Relaxed),
            ),
            (
                "gateway_cp_rollouts_started_total",
                "Staged rollouts this replica started.",
                self.rollouts_started.load(Relaxed),
            ),
            (
                "gateway_cp_rollouts_completed_total",
                "Staged rollouts this replica moved to completed (last stage or promoted).",
                self.rollouts_completed.load(Relaxed),
            ),
            (
                "gateway_cp_rollouts_halted_total",
                "Staged rollouts this replica halted (a canary NACKed or answered too many 5xx).",
                self.rollouts_halted.load(Relaxed),
            ),
        ];
        for (name, help, value) in counters {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {value}"
            );
        }
        let mut gauges = vec![
            (
                "gateway_cp_config_version",
                "The config version this replica serves.",
                version,
            ),
            (
                "gateway_cp_streams_open",
                "Config streams open on this replica.",
                u64::try_from(self.streams_open.load(Relaxed)).unwrap_or(0),
            ),
        ];
        if let Some(fleet) = fleet {
            gauges.extend([
                (
                    "gateway_fleet_data_planes_connected",
                    "Data planes connected to any replica.",
                    fleet.connected as u64,
                ),
                (
                    "gateway_fleet_data_planes_current",
                    "Connected data planes serving the current version.",
                    fleet.applied_current as u64,
                ),
                (
                    "gateway_fleet_data_planes_rejected_current",
                    "Connected data planes that rejected the current version.",
                    fleet.rejected_current as u64,
                ),
            ]);
        }
        for (name, help, value) in gauges {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        self.write_duration.render(
            &mut out,
            "gateway_cp_write_duration_seconds",
            "Admin API writes, from the request to the committed version.",
        );
        self.push_duration.render(
            &mut out,
            "gateway_cp_push_duration_seconds",
            "From sending a config version on a stream to the data plane's ACK.",
        );
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_histogram_renders_cumulative_buckets_sum_and_count() {
        let histogram = Histogram::new();
        histogram.observe(Duration::from_micros(500));
        histogram.observe(Duration::from_millis(20));
        histogram.observe(Duration::from_secs(30));
        let mut out = String::new();
        histogram.render(&mut out, "h", "help");
        assert!(out.contains("h_bucket{le=\"0.001\"} 1\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"0.01\"} 1\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"0.025\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"10\"} 2\n"), "{out}");
        assert!(out.contains("h_bucket{le=\"+Inf\"} 3\n"), "{out}");
        assert!(out.contains("h_sum 30.0205\n"), "{out}");
        assert!(out.contains("h_count 3\n"), "{out}");
    }

    #[test]
    fn fleet_gauges_are_left_out_while_the_store_is_unreachable() {
        let metrics = Metrics {
            versions_written: AtomicU64::new(3),
            writes_refused: AtomicU64::new(0),
            write_duration: Histogram::new(),
            streams_open: AtomicI64::new(2),
            nacks: AtomicU64::new(1),
            push_duration: Histogram::new(),
            rollouts_started: AtomicU64::new(0),
            rollouts_completed: AtomicU64::new(0),
            rollouts_halted: AtomicU64::new(0),
        };
        let fleet = FleetGauges {
            connected: 2,
            applied_current: 1,
            rejected_current: 1,
        };
        let with = metrics.render(7, Some(fleet));
        assert!(with.contains("gateway_cp_config_version 7\n"), "{with}");
        assert!(
            with.contains("gateway_cp_versions_written_total 3\n"),
            "{with}"
        );
        assert!(
            with.contains("gateway_fleet_data_planes_current 1\n"),
            "{with}"
        );
        let without = metrics.render(7, None);
        assert!(!without.contains("gateway_fleet_"), "{without}");
        assert!(without.contains("gateway_cp_streams_open 2\n"), "{without}");
    }
}
