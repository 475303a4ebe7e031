//! A plain HTTP/1.1 upstream client that runs inside the request's own task.
//!
//! hyper's pooled client runs every connection as a task of its own: a proxied request crossed
//! to that task and back through channels for the response head, again for every body chunk,
//! and the pool took a lock, a hash lookup and a spawned task per request. Under callgrind that
//! was about 45% of the gateway's instructions per proxied request. Here the request's future
//! writes the head and reads the response head itself, and the response body reads the socket
//! when the server side polls it. The connection goes back to its node's idle list the moment
//! the body's last byte is read, and is closed if the body is dropped before that.
//!
//! Scope: `scheme: http` upstreams and requests that do not ask for an upgrade. TLS, h2c and
//! WebSocket exchanges go through hyper's client ([`super::client`]).
//!
//! An idle connection has nothing to say, so one that turns readable while idle was closed by
//! the node (or is out of step): it is dropped at checkout, which costs no syscall because
//! tokio records readiness as epoll reports it. A pooled connection that still fails before the
//! first response byte (the node closed it between our check and our write) is replaced by the
//! next idle one or a new one, when the request has no body and an idempotent method.
//!
//! By concern: `codec` (heads and chunks on the wire), `exchange` (one request and its
//! answer's head, within the deadlines), `pool` (idle connections per node) and `body` (the
//! response body, read from the socket as it is polled).

mod body;
mod codec;
mod exchange;
mod pool;

pub use body::ResponseBody;
#[cfg(any(test, fuzzing))]
pub(crate) use codec::{BodyFraming, encode_head};
pub use codec::{HeadForm, PassedHead};
pub use exchange::{WrittenHead, send, send_head};
pub use pool::{Pool, PoolLimits};

#[cfg(any(test, fuzzing))]
pub mod fuzz;
#[cfg(test)]
mod tests;
