//! Process metrics, kept in atomics and rendered in the Prometheus text format.
//!
//! Hand-rolled on purpose: a handful of counters does not justify a metrics framework on the
//! request path, and every update here is one relaxed atomic add (a histogram's observation is
//! two: its bucket and its sum).

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Status codes 100..=599 each get a counter; anything else (hyper refuses to build one) is
/// impossible, but would be counted as 599 rather than lost or panicking.
const FIRST_CODE: u16 = 100;
const LAST_CODE: u16 = 599;
const CODES: usize = (LAST_CODE - FIRST_CODE + 1) as usize;

/// Upper bounds of the latency buckets, in microseconds: Prometheus's default buckets (5 ms …
/// 10 s) with 1 ms and 2.5 ms below them, where a proxy's own latencies fall.
const BUCKETS_MICROS: [u64; 13] = [
    1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 500_000, 1_000_000, 2_500_000,
    5_000_000, 10_000_000,
];

/// A latency histogram: a count per bucket (not cumulative; the last is `+Inf`) and the sum.
/// The count is the buckets' total, so an observation is two relaxed adds.
#[derive(Debug)]
pub struct Histogram {
    buckets: [AtomicU64; BUCKETS_MICROS.len() + 1],
    sum_micros: AtomicU64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            buckets: std::array::from_fn(|_| AtomicU64::new(0)),
            sum_micros: AtomicU64::new(0),
        }
    }
}

impl Histogram {
    /// Counts one observation of `elapsed`.
    pub fn observe(&self, elapsed: Duration) {
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let bucket = BUCKETS_MICROS
            .iter()
            .position(|&bound| micros <= bound)
            .unwrap_or(BUCKETS_MICROS.len());
        self.buckets[bucket].fetch_add(1, Relaxed);
        self.sum_micros.fetch_add(micros, Relaxed);
    }

    /// Observations so far.
    pub fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Relaxed)).sum()
    }

    /// Appends the histogram as `name` (`_bucket{le=…}` cumulative, `_sum`, `_count`).
    fn render(&self, name: &str, help: &str, out: &mut String) {
        // Writing to a String cannot fail; the results are ignored for that reason.
        let _ = writeln!(out, "# HELP {name} {help}");
        let _ = writeln!(out, "# TYPE {name} histogram");
        let mut cumulative = 0;
        for (i, bucket) in self.buckets.iter().enumerate() {
            cumulative += bucket.load(Relaxed);
            match BUCKETS_MICROS.get(i) {
                Some(&bound) => {
                    let le = bound as f64 / 1e6;
                    let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {cumulative}");
                }
                None => {
                    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {cumulative}");
                }
            }
        }
        let sum = self.sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(out, "{name}_sum {sum}");
        let _ = writeln!(out, "{name}_count {cumulative}");
    }
}

/// How a batch route's sub-request ended (`gateway_batch_subrequests_total{outcome}`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BatchOutcome {
    /// A 2xx answer, merged.
    Ok,
    /// No usable answer: a failed exchange, a non-2xx status, an answer too large, a template
    /// that could not be rendered.
    Error,
    /// Its own or the batch's deadline passed.
    Timeout,
    /// Never sent: a sub-request whose answer it needed failed.
    Skipped,
}

impl BatchOutcome {
    const ALL: [BatchOutcome; 4] = [
        BatchOutcome::Ok,
        BatchOutcome::Error,
        BatchOutcome::Timeout,
        BatchOutcome::Skipped,
    ];

    /// Its `outcome` label.
    pub fn as_str(self) -> &'static str {
        match self {
            BatchOutcome::Ok => "ok",
            BatchOutcome::Error => "error",
            BatchOutcome::Timeout => "timeout",
            BatchOutcome::Skipped => "skipped",
        }
    }
}

/// Every metric the data plane exports.
#[derive(Debug)]
pub struct Metrics {
    requests_by_code: Box<[AtomicU64; CODES]>,
    request_duration: Histogram,
    upstream_duration: Histogram,
    upstream_retries: AtomicU64,
    batch_subrequests: [AtomicU64; BatchOutcome::ALL.len()],
    access_log_dropped: AtomicU64,
    config_version: AtomicU64,
    config_applied: AtomicU64,
    config_rejected: AtomicU64,
    config_responses: AtomicU64,
    config_cache_errors: AtomicU64,
    config_stream_connected: AtomicBool,
    tls_handshake_failures: AtomicU64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            requests_by_code: Box::new(std::array::from_fn(|_| AtomicU64::new(0))),
            request_duration: Histogram::default(),
            upstream_duration: Histogram::default(),
            upstream_retries: AtomicU64::new(0),
            batch_subrequests: std::array::from_fn(|_| AtomicU64::new(0)),
            access_log_dropped: AtomicU64::new(0),
            config_version: AtomicU64::new(0),
            config_applied: AtomicU64::new(0),
            config_rejected: AtomicU64::new(0),
            config_responses: AtomicU64::new(0),
            config_cache_errors: AtomicU64::new(0),
            config_stream_connected: AtomicBool::new(false),
            tls_handshake_failures: AtomicU64::new(0),
        }
    }
}

impl Metrics {
    /// Counts one response sent to a client.
    pub fn record_request(&self, status: http::StatusCode) {
        let code = status.as_u16().clamp(FIRST_CODE, LAST_CODE);
        self.requests_by_code[usize::from(code - FIRST_CODE)].fetch_add(1, Relaxed);
    }

    /// Records how long the gateway took over one request, from its head parsed to its
    /// response head ready to write.
    pub fn record_request_duration(&self, elapsed: Duration) {
        self.request_duration.observe(elapsed);
    }

    /// Requests timed so far.
    pub fn requests_timed(&self) -> u64 {
        self.request_duration.count()
    }

    /// Records how long one upstream exchange took until its response headers (or its failure).
    pub fn record_upstream(&self, elapsed: Duration) {
        self.upstream_duration.observe(elapsed);
    }

    /// Upstream exchanges timed so far.
    pub fn upstream_exchanges(&self) -> u64 {
        self.upstream_duration.count()
    }

    /// Records how one sub-request of a batch route ended.
    pub fn record_batch_subrequest(&self, outcome: BatchOutcome) {
        self.batch_subrequests[outcome as usize].fetch_add(1, Relaxed);
    }

    /// Sub-requests of batch routes that ended with `outcome` so far.
    pub fn batch_subrequests(&self, outcome: BatchOutcome) -> u64 {
        self.batch_subrequests[outcome as usize].load(Relaxed)
    }

    /// Records access-log lines lost: the buffer was full, or the write failed.
    pub fn record_access_log_dropped(&self, lines: u64) {
        self.access_log_dropped.fetch_add(lines, Relaxed);
    }

    /// Access-log lines lost so far.
    pub fn access_log_dropped(&self) -> u64 {
        self.access_log_dropped.load(Relaxed)
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

    /// Records a TLS handshake that failed: no certificate for the client's SNI, a protocol
    /// error, or a client that did not finish in time.
    pub fn record_tls_handshake_failure(&self) {
        self.tls_handshake_failures.fetch_add(1, Relaxed);
    }

    /// Failed TLS handshakes so far.
    pub fn tls_handshake_failures(&self) -> u64 {
        self.tls_handshake_failures.load(Relaxed)
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

        self.request_duration.render(
            "gateway_request_duration_seconds",
            "Time from a client request's head parsed to its response head ready to write (plugins, routing and the upstream's time to first byte; not the body transfer).",
            &mut out,
        );
        self.upstream_duration.render(
            "gateway_upstream_duration_seconds",
            "Time from sending a request upstream to its response headers (or its failure), per exchange: retries and batch sub-requests each count.",
            &mut out,
        );
        let _ = writeln!(
            out,
            "# HELP gateway_batch_subrequests_total Sub-requests of batch routes, by how they ended."
        );
        let _ = writeln!(out, "# TYPE gateway_batch_subrequests_total counter");
        for outcome in BatchOutcome::ALL {
            let count = self.batch_subrequests(outcome);
            let _ = writeln!(
                out,
                "gateway_batch_subrequests_total{{outcome=\"{}\"}} {count}",
                outcome.as_str()
            );
        }

        let gauges_and_counters = [
            (
                "gateway_upstream_retries_total",
                "counter",
                "Failed upstream attempts retried on another node.",
                self.upstream_retries.load(Relaxed),
            ),
            (
                "gateway_access_log_dropped_total",
                "counter",
                "Access-log lines lost: the buffer to the writer was full (a slow or blocked disk), or the write failed.",
                self.access_log_dropped.load(Relaxed),
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
                "gateway_tls_handshake_failures_total",
                "counter",
                "TLS handshakes that failed: no certificate for the SNI (and no default), a protocol error, or a client that did not finish in time.",
                self.tls_handshake_failures.load(Relaxed),
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
        metrics.record_request_duration(Duration::from_micros(800));
        metrics.record_request_duration(Duration::from_millis(3));
        metrics.record_request_duration(Duration::from_secs(11));
        metrics.record_batch_subrequest(BatchOutcome::Timeout);
        metrics.record_access_log_dropped(3);
        metrics.record_config_applied(7);
        metrics.record_config_rejected();
        let text = metrics.render();
        for line in [
            "gateway_requests_total{code=\"200\"} 2",
            "gateway_requests_total{code=\"404\"} 1",
            "# TYPE gateway_upstream_duration_seconds histogram",
            "gateway_upstream_duration_seconds_bucket{le=\"1\"} 0",
            "gateway_upstream_duration_seconds_bucket{le=\"2.5\"} 1",
            "gateway_upstream_duration_seconds_bucket{le=\"+Inf\"} 1",
            "gateway_upstream_duration_seconds_sum 1.5",
            "gateway_upstream_duration_seconds_count 1",
            "# TYPE gateway_request_duration_seconds histogram",
            "gateway_request_duration_seconds_bucket{le=\"0.001\"} 1",
            "gateway_request_duration_seconds_bucket{le=\"0.0025\"} 1",
            "gateway_request_duration_seconds_bucket{le=\"0.005\"} 2",
            "gateway_request_duration_seconds_bucket{le=\"10\"} 2",
            "gateway_request_duration_seconds_bucket{le=\"+Inf\"} 3",
            "gateway_request_duration_seconds_sum 11.0038",
            "gateway_request_duration_seconds_count 3",
            "gateway_batch_subrequests_total{outcome=\"ok\"} 0",
            "gateway_batch_subrequests_total{outcome=\"timeout\"} 1",
            "gateway_access_log_dropped_total 3",
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

    #[test]
    fn an_observation_on_a_bound_falls_in_that_bucket() {
        let histogram = Histogram::default();
        histogram.observe(Duration::from_millis(5));
        histogram.observe(Duration::from_micros(5_001));
        let mut text = String::new();
        histogram.render("h", "help", &mut text);
        assert!(text.contains("h_bucket{le=\"0.005\"} 1\n"), "{text}");
        assert!(text.contains("h_bucket{le=\"0.01\"} 2\n"), "{text}");
        assert_eq!(histogram.count(), 2);
    }
}
