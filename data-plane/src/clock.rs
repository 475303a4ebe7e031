//! Clock readings for bookkeeping that needs milliseconds or seconds, not nanoseconds: node
//! ejections, the retry budget's seconds, idle pooled connections, the header-read deadline
//! and the `Date` header.
//!
//! Why: a proxied request read `CLOCK_MONOTONIC` nine times, ~24 ns each from the vDSO on the
//! benchmark VM (1.4–1.7% of the data plane's CPU in `perf`). The coarse clocks return the
//! time of the kernel's last tick, 1–4 ms old, for ~3 ns. Latency measurements and the
//! upstream deadlines keep the precise clock.

/// Milliseconds on the monotonic clock at tick resolution (1–4 ms); never 0, so that 0 can
/// mean "never" in atomics that hold a time.
pub fn coarse_now_ms() -> u64 {
    imp::coarse_monotonic_ms().max(1)
}

/// Whole seconds since the Unix epoch, at tick resolution: for the `Date` header.
pub fn coarse_unix_secs() -> u64 {
    imp::coarse_realtime_secs()
}

#[cfg(target_os = "linux")]
mod imp {
    fn read(clock: libc::clockid_t) -> libc::timespec {
        let mut now = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `now` is a valid, writable `timespec` that outlives the call, and the
        // coarse clocks exist on every Linux since 2.6.32; on failure `now` stays zeroed.
        unsafe { libc::clock_gettime(clock, &mut now) };
        now
    }

    pub(super) fn coarse_monotonic_ms() -> u64 {
        let now = read(libc::CLOCK_MONOTONIC_COARSE);
        let secs = u64::try_from(now.tv_sec).unwrap_or(0);
        let millis = u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000_000;
        secs.saturating_mul(1000).saturating_add(millis)
    }

    pub(super) fn coarse_realtime_secs() -> u64 {
        u64::try_from(read(libc::CLOCK_REALTIME_COARSE).tv_sec).unwrap_or(0)
    }
}

/// Elsewhere: the standard clocks, read precisely.
#[cfg(not(target_os = "linux"))]
mod imp {
    use std::sync::OnceLock;
    use std::time::{Instant, SystemTime};

    pub(super) fn coarse_monotonic_ms() -> u64 {
        static EPOCH: OnceLock<Instant> = OnceLock::new();
        let epoch = *EPOCH.get_or_init(Instant::now);
        u64::try_from(epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    pub(super) fn coarse_realtime_secs() -> u64 {
        SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs())
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, SystemTime};

    use super::*;

    #[test]
    fn coarse_clocks_follow_the_precise_ones_within_a_few_ticks() {
        let unix = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or_default();
        assert!(coarse_unix_secs().abs_diff(unix) <= 1);

        let before = coarse_now_ms();
        std::thread::sleep(Duration::from_millis(60));
        let elapsed = coarse_now_ms() - before;
        // A tick is at most 10 ms (HZ=100); a loaded machine may oversleep.
        assert!((50..5_000).contains(&elapsed), "elapsed {elapsed} ms");
    }
}
