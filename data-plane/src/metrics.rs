//! Process metrics, kept in atomics and rendered in the Prometheus text format.
//!
//! Hand-rolled on purpose: a handful of counters does not justify a metrics framework on the
//! request path, and every update here is one relaxed atomic add.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Status codes 100..=599 each get a counter; anything else (hyper refuses to build one) is
/// impossible, but would be counted as 599 rather than lost or panicking.
const FIRST_CODE: u16 = 100;
const LAST_CODE: u16 = 599;
const CODES: usize = (LAST_CODE - FIRST_CODE + 1) as usize;

/// Every metric the data plane exports.
#[derive(Debug)]
pub struct Metrics {
    requests_by_code: Box<[AtomicU64; CODES]>,
    upstream_duration_micros: AtomicU64,
    upstream_requests: AtomicU64,
    upstream_retries: AtomicU64,
    config_version: AtomicU64,
    config_applied: AtomicU64,
    config_rejected: AtomicU64,
    config_responses: AtomicU64,
    config_cache_errors: AtomicU64,
    config_stream_connected: AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests_by_code: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            upstream_duration_micros: AtomicU64::new(0),
            upstream_requests: AtomicU64::new(0),
            upstream_retries: AtomicU64::new(0),
            config_version: AtomicU64::new(0),
            config_applied: AtomicU64::new(0),
            config_rejected: AtomicU64::new(0),
            config_responses: AtomicU64::new(0),
            config_cache_errors: AtomicU64::new(0),
            config_stream_connected: AtomicBool::new(false),
        }
    }
}

impl Metrics {
    /// Counts one response sent to a client.
    pub fn record_request(&self, status: http::StatusCode) {
        let code = status.as_u16().clamp(FIRST_CODE, LAST_CODE);
        self.requests_by_code[usize::from(code - FIRST_CODE)].fetch_add(1, Relaxed);
    }

    /// Records how long one upstream exchange took until its response headers (or its failure).
    pub fn record_upstream(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        self.upstream_duration_micros.fetch_add(micros, Relaxed);
        self.upstream_requests.fetch_add(1, Relaxed);
    }

    /// Records a retry of a failed upstream attempt on another node.
    pub fn record_retry(&self) {
        self.upstream_retries.fetch_add(1, Relaxed);
    }

    /// Retries so far.
    pub fn retries(&self) -> u64 {
        self.upstream_retries.load(Relaxed)
    }

    /// Records a snapshot that was applied.
    pub fn record_config_applied(&self, version: u64) {
        self.config_version.store(version, Relaxed);
        self.config_applied.fetch_add(1, Relaxed);
    }

    /// Records a snapshot that was refused (NACKed).
    pub fn record_config_rejected(&self) {
        self.config_rejected.fetch_add(1, Relaxed);
    }

    /// Records a response received on the config stream (a snapshot or a delta).
    pub fn record_config_response(&self) {
        self.config_responses.fetch_add(1, Relaxed);
    }

    /// Records a disk-cache file that could not be read or written.
    pub fn record_config_cache_error(&self) {
        self.config_cache_errors.fetch_add(1, Relaxed);
    }

    /// Records whether a config stream to a control plane is open.
    pub fn set_config_stream_connected(&self, connected: bool) {
        self.config_stream_connected.store(connected, Relaxed);
    }

    /// The number of responses sent with `status` so far.
    pub fn requests_with(&self, status: http::StatusCode) -> u64 {
        let code = status.as_u16().clamp(FIRST_CODE, LAST_CODE);
        self.requests_by_code[usize::from(code - FIRST_CODE)].load(Relaxed)
    }

    /// Renders every metric in the Prometheus text exposition format (version 0.0.4).
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(2048);
        // Writing to a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(
            out,
            "# HELP gateway_requests_total Responses sent to clients, by status code."
        );
        let _ = writeln!(out, "# TYPE gateway_requests_total counter");
        for (offset, counter) in self.requests_by_code.iter().enumerate() {
            let count = counter.load(Relaxed);
            if count > 0 {
                let code = usize::from(FIRST_CODE) + offset;
                let _ = writeln!(out, "gateway_requests_total{{code=\"{code}\"}} {count}");
            }
        }

        let sum = self.upstream_duration_micros.load(Relaxed) as f64 / 1e6;
        let count = self.upstream_requests.load(Relaxed);
        let _ = writeln!(
            out,
            "# HELP gateway_upstream_request_duration_seconds Time from sending a request upstream to its response headers."
        );
        let _ = writeln!(
            out,
            "# TYPE gateway_upstream_request_duration_seconds summary"
        );
        let _ = writeln!(out, "gateway_upstream_request_duration_seconds_sum {sum}");
        let _ = writeln!(
            out,
            "gateway_upstream_request_duration_seconds_count {count}"
        );

        let gauges_and_counters = [
            (
                "gateway_upstream_retries_total",
                "counter",
                "Failed upstream attempts retried on another node.",
                self.upstream_retries.load(Relaxed),
            ),
            (
                "gateway_config_version",
                "gauge",
                "The config version being served (0 before the first snapshot).",
                self.config_version.load(Relaxed),
            ),
            (
                "gateway_config_applied_total",
                "counter",
                "Config snapshots applied.",
                self.config_applied.load(Relaxed),
            ),
            (
                "gateway_config_rejected_total",
                "counter",
                "Config snapshots refused with a NACK.",
                self.config_rejected.load(Relaxed),
            ),
            (
                "gateway_config_responses_total",
                "counter",
                "Responses (whole snapshots and deltas) received on the config stream.",
                self.config_responses.load(Relaxed),
            ),
            (
                "gateway_config_cache_errors_total",
                "counter",
                "Disk-cache files that could not be read (corrupt, incompatible) or written.",
                self.config_cache_errors.load(Relaxed),
            ),
            (
                "gateway_config_stream_connected",
                "gauge",
                "1 while a config stream to a control plane is open.",
                u64::from(self.config_stream_connected.load(Relaxed)),
            ),
        ];
        for (name, kind, help, value) in gauges_and_counters {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
            let _ = writeln!(out, "{name} {value}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::StatusCode;

    #[test]
    fn renders_the_prometheus_text_format() {
        let metrics = Metrics::default();
        metrics.record_request(StatusCode::OK);
        metrics.record_request(StatusCode::OK);
        metrics.record_request(StatusCode::NOT_FOUND);
        metrics.record_upstream(Duration::from_millis(1500));
        metrics.record_config_applied(7);
        metrics.record_config_rejected();
        let text = metrics.render();
        for line in [
            "gateway_requests_total{code=\"200\"} 2",
            "gateway_requests_total{code=\"404\"} 1",
            "gateway_upstream_request_duration_seconds_sum 1.5",
            "gateway_upstream_request_duration_seconds_count 1",
            "gateway_config_version 7",
            "gateway_config_applied_total 1",
            "gateway_config_rejected_total 1",
            "gateway_config_stream_connected 0",
        ] {
            assert!(
                text.lines().any(|l| l == line),
                "{line} missing from\n{text}"
            );
        }
        assert!(!text.contains("code=\"500\""));
    }
}
