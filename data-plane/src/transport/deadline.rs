//! Time limits. Every limit of the data plane is an absolute [`Instant`] (a deadline), armed
//! through this module on tokio's timer:
//!
//! - [`within`]: a future bounded by a deadline (connects, probes, a batch, a drain);
//! - `timer_by`: a timer kept across a connection's exchanges and moved rather than
//!   registered again (the HTTP/1.1 client's read deadlines, the downstream header-read and
//!   send deadlines), since a timer registration per request is a measurable share of a
//!   proxied request's cost;
//! - `IdleDeadline`: nginx's `proxy_read_timeout` on a body, on such a timer.
//!
//! A limit given as a duration becomes a deadline once, with [`after`], where it starts; limits
//! that apply together are folded into one deadline with [`earliest`], so one timer runs. A
//! pause (a probe interval, a reconnect backoff, `limit-req`'s delay) is a plain sleep: it
//! bounds nothing. `data-plane/tests/layers.rs` fails on a deadline armed anywhere else.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::time::Sleep;

/// A point in time on tokio's clock.
pub use tokio::time::Instant;

/// A deadline passed before the work it bounded was done.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elapsed;

/// The deadline `limit` from now.
pub fn after(limit: Duration) -> Instant {
    Instant::now() + limit
}

/// The earlier of a deadline and an optional one.
pub fn earliest(deadline: Instant, other: Option<Instant>) -> Instant {
    other.map_or(deadline, |other| other.min(deadline))
}

/// Runs `work` until `deadline`. A future that is ready at once never arms the timer.
pub async fn within<F: Future>(deadline: Instant, work: F) -> Result<F::Output, Elapsed> {
    tokio::time::timeout_at(deadline, work)
        .await
        .map_err(|_| Elapsed)
}

/// A timer that fires at `deadline`, to be moved with `reset` rather than made again.
pub fn timer(deadline: Instant) -> Sleep {
    tokio::time::sleep_until(deadline)
}

/// A connection's timer, set to fire no later than `deadline`: a timer that would fire earlier
/// is kept as it is (moved when it fires), which spares a timer registration per request.
pub(crate) fn timer_by(timer: Option<Pin<Box<Sleep>>>, deadline: Instant) -> Pin<Box<Sleep>> {
    match timer {
        Some(mut timer) => {
            if timer.deadline() > deadline {
                timer.as_mut().reset(deadline);
            }
            timer
        }
        None => Box::pin(tokio::time::sleep_until(deadline)),
    }
}

/// nginx's `proxy_read_timeout` for a response body: the node must send something at least
/// every `read_timeout`, or the body fails (the client's connection is then cut, as the head
/// has gone out). Costs nothing for a body that arrives with its head: the clock is read only
/// once the body has had to wait.
#[derive(Debug)]
pub(crate) struct IdleDeadline {
    pub(crate) read_timeout: Duration,
    /// When the body last made progress; `None` until it first has to wait.
    since: Option<Instant>,
}

impl IdleDeadline {
    pub(crate) fn new(read_timeout: Duration) -> IdleDeadline {
        IdleDeadline {
            read_timeout,
            since: None,
        }
    }

    /// Some of the body arrived.
    pub(crate) fn progressed(&mut self) {
        if let Some(since) = &mut self.since {
            *since = Instant::now();
        }
    }

    /// Called when the body has to wait: ready once it has waited `read_timeout` since its
    /// last progress. `timer` is reused (moved only when it fires early, or is later than this
    /// deadline), so a connection keeps one registered timer across its exchanges.
    pub(crate) fn poll_expired(
        &mut self,
        timer: &mut Option<Pin<Box<Sleep>>>,
        cx: &mut Context<'_>,
    ) -> Poll<()> {
        let since = *self.since.get_or_insert_with(tokio::time::Instant::now);
        let deadline = since + self.read_timeout;
        let armed = timer_by(timer.take(), deadline);
        let timer = timer.insert(armed);
        loop {
            ready!(timer.as_mut().poll(cx));
            if Instant::now() >= deadline {
                return Poll::Ready(());
            }
            // An earlier exchange's deadline: move to this one and wait again.
            timer.as_mut().reset(deadline);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn within_reports_a_passed_deadline_and_earliest_folds_two() {
        let soon = after(Duration::from_millis(10));
        let late = after(Duration::from_secs(10));
        assert_eq!(earliest(late, Some(soon)), soon);
        assert_eq!(earliest(soon, None), soon);
        assert_eq!(within(late, async { 7 }).await, Ok(7));
        let never = std::future::pending::<()>();
        assert_eq!(within(soon, never).await, Err(Elapsed));
    }
}
