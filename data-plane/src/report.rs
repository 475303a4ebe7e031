//! What the data plane reports to the control plane outside the ACK/NACK exchange: requests and
//! 5xx answers per config version (staged rollouts compare a canary with the rest), and
//! credentials rehashed under the current KDF (the control plane commits them).
//!
//! Traffic is counted on the request path, so counting is a few relaxed atomic operations on a
//! fixed table of [`VERSION_SLOTS`] slots, one per recent config version: no lock, no
//! allocation. [`Reports::track`] claims a slot for a version before its runtime is installed
//! (off the request path); the oldest slot is reused once more versions were installed, and a
//! version whose slot was reused stops being counted and reported. The counts are cumulative
//! for the process, so a report that is lost loses nothing: the next one carries them.
//!
//! Rehashed credentials wait in a bounded queue: when it is full a new one is dropped and
//! counted (a lost rehash only means the next login rehashes again).

use std::collections::VecDeque;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use gateway_proto::pb;
use tokio::sync::Notify;

/// How many config versions are counted at once: the one served, and those before it that
/// requests still in flight (or a rollout comparing them) may use.
pub const VERSION_SLOTS: usize = 8;

/// The most rehashed credentials waiting to be sent.
pub const MAX_QUEUED_REHASHES: usize = 1024;

/// Requests and 5xx answers of one config version.
#[derive(Debug, Default)]
struct Slot {
    /// The version counted here; 0 for a free slot (version 0 is the empty runtime, never
    /// reported).
    version: AtomicU64,
    requests: AtomicU64,
    errors_5xx: AtomicU64,
}

/// The data plane's reports: traffic per config version and rehashed credentials waiting to
/// be sent. One per process, in [`crate::state::State`] (`state.reports()`).
#[derive(Debug, Default)]
pub struct Reports {
    slots: [Slot; VERSION_SLOTS],
    /// How many slots were ever claimed; the newest is `(claimed - 1) % VERSION_SLOTS`.
    claimed: AtomicUsize,
    rehashed: Mutex<VecDeque<pb::CredentialRehash>>,
    /// Rehashes dropped because the queue was full.
    dropped_rehashes: AtomicU64,
    /// Wakes the config-stream client when a rehash is queued.
    wake: Notify,
}

impl Reports {
    /// Claims a slot for `version` so that requests served by it are counted; called before
    /// a runtime of that version is installed. A version already counted keeps its slot (and
    /// its counts).
    pub fn track(&self, version: u64) {
        if version == 0 || self.slot(version).is_some() {
            return;
        }
        let index = self.claimed.fetch_add(1, Ordering::Relaxed) % VERSION_SLOTS;
        let slot = &self.slots[index];
        // Freed first, so that requests of the version leaving stop adding to it before its
        // counts are zeroed; one still between its lookup and its add may land in the new
        // version's counts, which only the oldest of VERSION_SLOTS versions can do.
        slot.version.store(0, Ordering::Relaxed);
        slot.requests.store(0, Ordering::Relaxed);
        slot.errors_5xx.store(0, Ordering::Relaxed);
        slot.version.store(version, Ordering::Release);
    }

    /// Counts one finished client request, served by config `version`, answered `status`.
    /// The request path's call: the newest slot is looked at first, so it is usually one
    /// load and one or two adds.
    pub fn record(&self, version: u64, status: u16) {
        let Some(slot) = self.slot(version) else {
            return;
        };
        slot.requests.fetch_add(1, Ordering::Relaxed);
        if (500..600).contains(&status) {
            slot.errors_5xx.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The slot counting `version`, newest first.
    fn slot(&self, version: u64) -> Option<&Slot> {
        if version == 0 {
            return None;
        }
        let newest = self.claimed.load(Ordering::Relaxed).wrapping_sub(1);
        (0..VERSION_SLOTS)
            .map(|back| &self.slots[newest.wrapping_sub(back) % VERSION_SLOTS])
            .find(|slot| slot.version.load(Ordering::Relaxed) == version)
    }

    /// The cumulative counts of every version still counted, by version.
    pub fn traffic(&self) -> Vec<pb::VersionTraffic> {
        let mut traffic: Vec<(u64, pb::VersionTraffic)> = self
            .slots
            .iter()
            .filter_map(|slot| {
                let version = slot.version.load(Ordering::Acquire);
                (version != 0).then(|| {
                    (
                        version,
                        pb::VersionTraffic {
                            version: version.to_string(),
                            requests: slot.requests.load(Ordering::Relaxed),
                            errors_5xx: slot.errors_5xx.load(Ordering::Relaxed),
                        },
                    )
                })
            })
            .collect();
        traffic.sort_by_key(|(version, _)| *version);
        traffic.into_iter().map(|(_, t)| t).collect()
    }

    /// Queues a credential rehashed under the current KDF for the control plane, and wakes the
    /// sender so that it goes out at once. When the queue is full it is dropped and counted.
    pub fn rehashed(&self, item: pb::CredentialRehash) {
        let mut queue = self.rehashed.lock().unwrap_or_else(|e| e.into_inner());
        if queue.len() >= MAX_QUEUED_REHASHES {
            drop(queue);
            self.dropped_rehashes.fetch_add(1, Ordering::Relaxed);
            return;
        }
        queue.push_back(item);
        drop(queue);
        self.wake.notify_one();
    }

    /// Takes every queued rehash; give back what could not be sent with
    /// [`Reports::put_back`].
    pub fn take_rehashed(&self) -> Vec<pb::CredentialRehash> {
        let mut queue = self.rehashed.lock().unwrap_or_else(|e| e.into_inner());
        queue.drain(..).collect()
    }

    /// Returns rehashes that could not be sent to the front of the queue (ahead of those
    /// queued since), keeping the bound: the newest beyond it are dropped and counted.
    pub fn put_back(&self, items: Vec<pb::CredentialRehash>) {
        if items.is_empty() {
            return;
        }
        let mut queue = self.rehashed.lock().unwrap_or_else(|e| e.into_inner());
        for item in items.into_iter().rev() {
            queue.push_front(item);
        }
        let excess = queue.len().saturating_sub(MAX_QUEUED_REHASHES);
        queue.truncate(MAX_QUEUED_REHASHES);
        drop(queue);
        if excess > 0 {
            self.dropped_rehashes
                .fetch_add(excess as u64, Ordering::Relaxed);
        }
    }

    /// Rehashes dropped because the queue was full.
    pub fn dropped_rehashes(&self) -> u64 {
        self.dropped_rehashes.load(Ordering::Relaxed)
    }

    /// Completes when a rehash is queued (or was queued since the last wait).
    pub async fn rehash_queued(&self) {
        self.wake.notified().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn counts(reports: &Reports) -> Vec<(String, u64, u64)> {
        reports
            .traffic()
            .into_iter()
            .map(|t| (t.version, t.requests, t.errors_5xx))
            .collect()
    }

    #[test]
    fn requests_and_5xx_are_counted_per_tracked_version() {
        let reports = Reports::default();
        reports.record(3, 200);
        assert!(
            counts(&reports).is_empty(),
            "an untracked version is not counted"
        );
        reports.track(3);
        reports.record(3, 200);
        reports.record(3, 503);
        reports.track(4);
        reports.record(4, 500);
        reports.record(4, 404);
        reports.record(3, 599);
        reports.record(0, 500);
        // Tracking it again keeps its counts.
        reports.track(3);
        assert_eq!(
            counts(&reports),
            [("3".to_owned(), 3, 2), ("4".to_owned(), 2, 1)]
        );
    }

    #[test]
    fn the_oldest_version_gives_its_slot_to_a_new_one() {
        let reports = Reports::default();
        for version in 1..=(VERSION_SLOTS as u64 + 2) {
            reports.track(version);
            reports.record(version, 200);
        }
        let versions: Vec<String> = reports.traffic().into_iter().map(|t| t.version).collect();
        let expected: Vec<String> = (3..=(VERSION_SLOTS as u64 + 2))
            .map(|v| v.to_string())
            .collect();
        assert_eq!(versions, expected);
        assert!(reports.traffic().iter().all(|t| t.requests == 1));
    }

    #[test]
    fn rehashes_queue_bounded_and_go_back_in_front_when_unsent() {
        let reports = Reports::default();
        let item = |n: usize| pb::CredentialRehash {
            consumer: format!("c{n}"),
            plugin: "basic-auth".to_owned(),
            ..pb::CredentialRehash::default()
        };
        for n in 0..MAX_QUEUED_REHASHES + 3 {
            reports.rehashed(item(n));
        }
        assert_eq!(reports.dropped_rehashes(), 3);
        let taken = reports.take_rehashed();
        assert_eq!(taken.len(), MAX_QUEUED_REHASHES);
        reports.rehashed(item(9999));
        reports.put_back(taken[..2].to_vec());
        let again = reports.take_rehashed();
        let names: Vec<&str> = again.iter().map(|i| i.consumer.as_str()).collect();
        assert_eq!(names, ["c0", "c1", "c9999"]);
        assert!(reports.take_rehashed().is_empty());
    }

    #[tokio::test]
    async fn a_queued_rehash_wakes_the_sender() {
        let reports = std::sync::Arc::new(Reports::default());
        let waiter = {
            let reports = reports.clone();
            tokio::spawn(async move { reports.rehash_queued().await })
        };
        reports.rehashed(pb::CredentialRehash::default());
        tokio::time::timeout(std::time::Duration::from_secs(2), waiter)
            .await
            .expect("woken")
            .expect("joined");
    }
}
