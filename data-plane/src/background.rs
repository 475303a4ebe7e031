//! Work that must not take CPU from requests: decoding, compiling and freeing config versions.
//!
//! It runs on threads of its own at a lower scheduling priority (nice [`NICE`]). On an idle
//! core that changes nothing; on a saturated one the request threads are scheduled first, a
//! compile takes longer, and the versions made meanwhile reach this data plane as one delta
//! (the control plane keeps one response in flight per data plane), so config churn costs
//! requests a bounded share of the core instead of one compile per version.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::{OnceLock, mpsc};

use tokio::sync::oneshot;

/// The niceness of background threads: `nice 19` weighs 1.5% of a request thread.
pub const NICE: i32 = 19;

/// Lowers the calling thread's scheduling priority to [`NICE`] (Linux only; elsewhere a no-op).
/// A thread cannot raise it again: call it only on threads that do background work alone.
pub fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: `gettid` has no preconditions; `setpriority` on this thread's id changes only
        // this thread's niceness (Linux applies PRIO_PROCESS with a thread id to that thread).
        let result = unsafe {
            let tid = libc::gettid();
            libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, NICE)
        };
        if result != 0 {
            tracing::debug!(error = %std::io::Error::last_os_error(), "cannot lower a background thread's priority");
        }
    }
}

type Job = Box<dyn FnOnce() + Send>;

/// One low-priority thread that runs jobs in order, started by the first job.
#[derive(Debug)]
pub struct Worker {
    name: &'static str,
    /// `None` inside when the thread could not be started: jobs then run on tokio's blocking
    /// pool.
    jobs: OnceLock<Option<mpsc::Sender<Job>>>,
}

impl Worker {
    /// A worker whose thread, named `name`, starts with its first job.
    pub fn start(name: &'static str) -> Worker {
        Worker {
            name,
            jobs: OnceLock::new(),
        }
    }

    fn jobs(&self) -> Option<&mpsc::Sender<Job>> {
        self.jobs
            .get_or_init(|| {
                let (jobs, receive) = mpsc::channel::<Job>();
                let spawned = std::thread::Builder::new()
                    .name(self.name.to_owned())
                    .spawn(move || {
                        lower_priority();
                        // Ends when the worker is dropped.
                        while let Ok(job) = receive.recv() {
                            job();
                        }
                    });
                match spawned {
                    Ok(_) => Some(jobs),
                    Err(error) => {
                        tracing::warn!(%error, "cannot start a background thread; config work shares tokio's blocking pool");
                        None
                    }
                }
            })
            .as_ref()
    }

    /// Runs `work` on the thread and returns its result, or the message of its panic.
    pub async fn run<T: Send + 'static>(
        &self,
        work: impl FnOnce() -> T + Send + 'static,
    ) -> Result<T, String> {
        let (send, receive) = oneshot::channel();
        let job = Box::new(move || {
            let result = catch_unwind(AssertUnwindSafe(work)).map_err(panic_message);
            // The caller may have gone (its stream closed): the result is of no use then.
            let _ = send.send(result);
        });
        match self.jobs() {
            Some(jobs) => {
                jobs.send(job)
                    .map_err(|_| "the background thread is gone".to_owned())?;
            }
            None => drop(tokio::task::spawn_blocking(job)),
        }
        receive
            .await
            .map_err(|_| "the background job was dropped".to_owned())?
    }
}

/// The text of a panic's payload.
pub fn panic_message(panic: Box<dyn std::any::Any + Send>) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "a panic".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn runs_jobs_in_order_and_reports_a_panic() {
        let worker = Worker::start("test-background");
        assert_eq!(worker.run(|| 2 + 2).await, Ok(4));
        assert_eq!(
            worker.run(|| -> u8 { panic!("boom") }).await,
            Err("boom".to_owned())
        );
        // The thread survives a panicking job.
        assert_eq!(worker.run(|| "still here").await, Ok("still here"));
    }

    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn its_thread_runs_at_a_lower_priority() {
        let worker = Worker::start("test-background");
        let nice = worker
            .run(|| {
                // SAFETY: no preconditions; reads this thread's niceness.
                unsafe { libc::getpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t) }
            })
            .await
            .unwrap();
        assert!(nice >= NICE, "niceness {nice}");
    }
}
