//! What the listeners and the config-stream client share.

use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, OnceLock, mpsc};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::metrics::Metrics;
use crate::report::Reports;
use crate::runtime::Runtime;

/// The data plane's shared state: the runtime being served, readiness and metrics.
#[derive(Debug)]
pub struct State {
    /// INVARIANT: the only place a runtime is published; a request loads it once.
    runtime: ArcSwap<Runtime>,
    /// True once a snapshot has been applied.
    ready: AtomicBool,
    /// True once shutdown has begun: the load balancer in front should stop sending.
    draining: AtomicBool,
    /// Where the installed config came from (a [`ConfigSource`] as `u8`).
    source: AtomicU8,
    /// Every exported metric.
    pub metrics: Metrics,
    /// Traffic per config version and rehashed credentials, for the config stream's reports.
    reports: Reports,
}

impl Default for State {
    fn default() -> Self {
        State {
            runtime: ArcSwap::from_pointee(Runtime::empty()),
            ready: AtomicBool::new(false),
            draining: AtomicBool::new(false),
            source: AtomicU8::new(ConfigSource::Stream as u8),
            metrics: Metrics::default(),
            reports: Reports::default(),
        }
    }
}

impl State {
    /// A state serving the empty runtime, not ready yet.
    pub fn new() -> Arc<State> {
        Arc::new(State::default())
    }

    /// Like [`State::new`], with the plugin environment every runtime will inherit.
    pub fn with_plugin_env(env: crate::plugins::BuildEnv) -> Arc<State> {
        Arc::new(State {
            runtime: ArcSwap::from_pointee(Runtime::empty_with(env)),
            ..State::default()
        })
    }

    /// The runtime being served. Callers keep the `Arc` for the whole request so that a swap
    /// in the middle cannot mix two config versions.
    pub fn runtime(&self) -> Arc<Runtime> {
        self.runtime.load_full()
    }

    /// Publishes a newly compiled runtime and marks the data plane ready.
    pub fn install(&self, runtime: Runtime) {
        self.install_from(runtime, ConfigSource::Stream);
    }

    /// Publishes a runtime that came from `source` and marks the data plane ready.
    pub fn install_from(&self, runtime: Runtime, source: ConfigSource) {
        self.source.store(source as u8, Ordering::Relaxed);
        let version = runtime.version;
        // Counted from its first request on.
        self.reports.track(version);
        let runtime = Arc::new(runtime);
        let previous = self.runtime.swap(Arc::clone(&runtime));
        // Active health checks follow the new upstreams; retired ones stop probing.
        crate::runtime::health::reconcile(&previous, &runtime);
        retire(previous);
        // Release pairs with the Acquire in `applied_version`: whoever sees `ready` also sees
        // the runtime stored before it.
        self.ready.store(true, Ordering::Release);
        self.metrics.record_config_applied(version);
    }

    /// What the config stream reports to the control plane: the request path counts its
    /// requests here ([`Reports::record`]).
    pub fn reports(&self) -> &Reports {
        &self.reports
    }

    /// The applied config version, or `None` before the first snapshot.
    pub fn applied_version(&self) -> Option<u64> {
        self.ready
            .load(Ordering::Acquire)
            .then(|| self.runtime.load().version)
    }

    /// Where the installed config came from.
    pub fn config_source(&self) -> ConfigSource {
        if self.source.load(Ordering::Relaxed) == ConfigSource::Cache as u8 {
            ConfigSource::Cache
        } else {
            ConfigSource::Stream
        }
    }

    /// Marks the data plane as shutting down; `/readyz` answers 503 from now on.
    pub fn start_draining(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    /// Whether shutdown has begun.
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }
}

/// Frees a replaced runtime on a thread of its own once no request holds it any more.
///
/// Freeing a 10,000-route runtime takes tens of milliseconds. Dropped where its last `Arc`
/// goes, that would be the config task or the last request still using it, both on a thread
/// that serves requests; the reaper holds one reference until it is the only one left.
fn retire(runtime: Arc<Runtime>) {
    static REAPER: OnceLock<Option<mpsc::Sender<Arc<Runtime>>>> = OnceLock::new();
    let reaper = REAPER.get_or_init(|| {
        let (send, receive) = mpsc::channel::<Arc<Runtime>>();
        let spawned = std::thread::Builder::new()
            .name("runtime-reaper".to_owned())
            .spawn(move || {
                crate::background::lower_priority();
                let mut retired: Vec<Arc<Runtime>> = Vec::new();
                loop {
                    let wait = if retired.is_empty() {
                        Duration::MAX
                    } else {
                        REAP_EVERY
                    };
                    match receive.recv_timeout(wait) {
                        Ok(runtime) => retired.push(runtime),
                        Err(mpsc::RecvTimeoutError::Timeout) => {}
                        Err(mpsc::RecvTimeoutError::Disconnected) => return,
                    }
                    // Only this thread holds those with a count of one, and nothing can load
                    // a replaced runtime again: dropping them here frees them here.
                    retired.retain(|runtime| Arc::strong_count(runtime) > 1);
                }
            });
        spawned.ok().map(|_| send)
    });
    if let Some(reaper) = reaper {
        // A reaper that is gone hands the runtime back: it is dropped here, as without one.
        let _ = reaper.send(runtime);
    }
}

/// How often the reaper looks for retired runtimes no request holds any more.
const REAP_EVERY: Duration = Duration::from_millis(100);

/// Where an installed config came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ConfigSource {
    /// A control plane's config stream.
    Stream,
    /// The disk cache (`--cache-dir`), read while no control plane answered.
    Cache,
}

impl ConfigSource {
    /// Its name on the config stream, in `/readyz` and in the fleet view.
    pub fn as_str(self) -> &'static str {
        match self {
            ConfigSource::Stream => "stream",
            ConfigSource::Cache => "cache",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Weak;

    /// Waits up to two seconds for `runtime` to be freed.
    fn freed(runtime: &Weak<Runtime>) -> bool {
        for _ in 0..200 {
            if runtime.upgrade().is_none() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        false
    }

    #[test]
    fn a_replaced_runtime_is_freed_once_no_request_holds_it() {
        let state = State::new();
        state.install(Runtime::empty());
        let in_flight = state.runtime();
        let replaced = Arc::downgrade(&in_flight);
        state.install(Runtime::empty());
        // A request still uses it: it stays, whatever the reaper sees meanwhile.
        std::thread::sleep(REAP_EVERY * 3);
        assert!(replaced.upgrade().is_some());
        // The request ends; its drop is not the last one, the reaper's is.
        drop(in_flight);
        assert!(freed(&replaced));

        // Nobody held the next one: it goes at the next look.
        let unused = Arc::downgrade(&state.runtime());
        state.install(Runtime::empty());
        assert!(freed(&unused));
    }
}
