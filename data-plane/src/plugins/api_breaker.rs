//! `api-breaker`: a circuit breaker on upstream statuses (APISIX's algorithm).
//!
//! - Closed: requests pass; the log phase counts unhealthy statuses. Every
//!   `unhealthy.failures`-th unhealthy status (without the circuit having closed in between)
//!   opens the circuit for 2^n seconds, n being how many times it has opened in this run
//!   (2 s, 4 s, 8 s, …, at most `max_breaker_sec`).
//! - Open: the access phase answers `break_response_code` without calling the upstream.
//!   Statuses seen while open are ignored (they are the breaker's own answers, or answers to
//!   requests that started before it opened).
//! - Half-open, once the break is over: requests pass again; `healthy.successes` healthy
//!   statuses close the circuit and reset the backoff; another `unhealthy.failures` unhealthy
//!   statuses re-open it, for twice as long.
//!
//! State is per route — on a global rule or a consumer, each route it runs on has its own
//! circuit — and lives in [`super::BuildEnv`], so it survives config pushes while the config is
//! unchanged; a changed config starts closed. Statuses neither healthy nor unhealthy count for
//! nothing.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Response, StatusCode, request};
use http_body_util::Full;
use serde_json::Value;

use super::{Access, BuildEnv, Plugin, Reject, RequestCtx, reject};
use gateway_proto::plugins::api_breaker::Config;

/// How many breakers a data plane keeps at most; beyond, closed ones are forgotten.
const MAX_BREAKERS: usize = 10_000;

/// Every breaker of this data plane, by instance and config; shared by every snapshot.
#[derive(Debug, Default)]
pub struct Breakers {
    by_key: Mutex<HashMap<String, Arc<Mutex<Circuit>>>>,
}

impl Breakers {
    fn circuit(&self, key: String) -> Arc<Mutex<Circuit>> {
        let mut map = self.by_key.lock().unwrap_or_else(|e| e.into_inner());
        if map.len() >= MAX_BREAKERS {
            map.retain(|_, c| c.lock().map(|c| c.unhealthy > 0).unwrap_or(false));
        }
        Arc::clone(map.entry(key).or_default())
    }
}

/// One circuit's state.
#[derive(Debug, Default)]
struct Circuit {
    /// Unhealthy statuses since the circuit last closed.
    unhealthy: u32,
    /// Healthy statuses since the last break.
    healthy: u32,
    /// Until when the circuit is open.
    open_until: Option<Instant>,
}

/// A compiled `api-breaker`.
#[derive(Debug)]
pub struct ApiBreaker {
    priority: i32,
    code: StatusCode,
    body: Option<Bytes>,
    max_break: Duration,
    unhealthy: Vec<StatusCode>,
    failures: u32,
    healthy: Vec<StatusCode>,
    successes: u32,
    /// The circuit of the route this instance is configured on; `None` on a global rule or a
    /// consumer, where each route's circuit is found per request under `key`.
    circuit: Option<Arc<Mutex<Circuit>>>,
    key: String,
    breakers: Arc<Breakers>,
}

impl ApiBreaker {
    /// Compiles a validated config configured at `scope`.
    pub fn build(
        priority: i32,
        config: &Value,
        scope: &str,
        env: &BuildEnv,
    ) -> Result<ApiBreaker, String> {
        let parsed: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let status = |code: u16| StatusCode::from_u16(code).map_err(|_| format!("status {code}"));
        let statuses = |codes: &[u16]| {
            codes
                .iter()
                .map(|&c| status(c))
                .collect::<Result<Vec<_>, _>>()
        };
        Ok(ApiBreaker {
            priority,
            code: status(parsed.break_response_code)?,
            body: parsed.break_response_body.map(Bytes::from),
            max_break: Duration::from_secs(parsed.max_breaker_sec),
            unhealthy: statuses(&parsed.unhealthy.http_statuses)?,
            failures: parsed.unhealthy.failures.max(1),
            healthy: statuses(&parsed.healthy.http_statuses)?,
            successes: parsed.healthy.successes.max(1),
            // The config is part of the key: a changed breaker starts closed.
            circuit: scope
                .starts_with("routes/")
                .then(|| env.breakers.circuit(format!("{scope}:{config}"))),
            key: format!("{scope}:{config}"),
            breakers: Arc::clone(&env.breakers),
        })
    }

    /// The circuit of `route`.
    fn circuit(&self, route: &str) -> Arc<Mutex<Circuit>> {
        match &self.circuit {
            Some(circuit) => Arc::clone(circuit),
            None => self
                .breakers
                .circuit(format!("{}:routes/{route}", self.key)),
        }
    }

    /// Whether the circuit is open at `now`.
    fn is_open(circuit: &Mutex<Circuit>, now: Instant) -> bool {
        let circuit = circuit.lock().unwrap_or_else(|e| e.into_inner());
        circuit.open_until.is_some_and(|until| now < until)
    }

    /// Records the status of an answer at `now`.
    fn record(&self, circuit: &Mutex<Circuit>, status: StatusCode, now: Instant) {
        let mut circuit = circuit.lock().unwrap_or_else(|e| e.into_inner());
        if circuit.open_until.is_some_and(|until| now < until) {
            return;
        }
        if self.unhealthy.contains(&status) {
            circuit.unhealthy = circuit.unhealthy.saturating_add(1);
            circuit.healthy = 0;
            if circuit.unhealthy.is_multiple_of(self.failures) {
                let opened = circuit.unhealthy / self.failures;
                let backoff = Duration::from_secs(1u64 << opened.min(31));
                circuit.open_until = Some(now + backoff.min(self.max_break));
            }
        } else if self.healthy.contains(&status) && circuit.unhealthy > 0 {
            circuit.healthy += 1;
            if circuit.healthy >= self.successes {
                *circuit = Circuit::default();
            }
        }
    }

    fn refusal(&self) -> Reject {
        match &self.body {
            None => reject(
                self.code,
                "circuit_open",
                "the upstream is failing; try again later",
            ),
            Some(body) => {
                let mut response = Response::new(Full::new(body.clone()));
                *response.status_mut() = self.code;
                response.headers_mut().insert(
                    CONTENT_TYPE,
                    HeaderValue::from_static("text/plain; charset=utf-8"),
                );
                response
            }
        }
    }
}

impl Plugin for ApiBreaker {
    fn name(&self) -> &'static str {
        "api-breaker"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    fn access(&self, ctx: &mut RequestCtx<'_>, _request: &mut request::Parts) -> Access {
        if ApiBreaker::is_open(&self.circuit(ctx.route.id), Instant::now()) {
            Access::Reject(self.refusal())
        } else {
            Access::Continue
        }
    }

    fn log(&self, ctx: &RequestCtx<'_>, status: StatusCode) {
        // The gateway's own refusals (a rate limit's 503, say) say nothing of the upstream,
        // and counting them would let any client open the circuit for everyone.
        if !ctx.forwarded {
            return;
        }
        self.record(&self.circuit(ctx.route.id), status, Instant::now());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn opens_doubles_its_break_and_closes_after_successes() {
        let env = BuildEnv::default();
        let config = json!({"break_response_code": 502, "unhealthy": {"failures": 2}, "healthy": {"successes": 2}, "max_breaker_sec": 5});
        let breaker = ApiBreaker::build(1005, &config, "routes/r", &env).unwrap();
        let circuit = breaker.circuit("r");
        let record = |status, at| breaker.record(&circuit, status, at);
        let is_open = |at| ApiBreaker::is_open(&circuit, at);
        let bad = StatusCode::INTERNAL_SERVER_ERROR;
        let t0 = Instant::now();
        record(bad, t0);
        assert!(!is_open(t0));
        record(StatusCode::NOT_FOUND, t0); // neither healthy nor unhealthy
        record(bad, t0);
        assert!(is_open(t0), "two failures open it");
        assert!(is_open(t0 + Duration::from_millis(1999)));
        record(bad, t0 + Duration::from_secs(1)); // ignored while open
        let t1 = t0 + Duration::from_secs(2);
        assert!(!is_open(t1), "half-open after 2 s");
        record(bad, t1);
        record(bad, t1);
        assert!(is_open(t1 + Duration::from_millis(3999)), "then 4 s");
        let t2 = t1 + Duration::from_secs(4);
        record(bad, t2);
        record(bad, t2);
        assert!(
            is_open(t2 + Duration::from_millis(4999)),
            "capped at 5 s (not 8)"
        );
        assert!(!is_open(t2 + Duration::from_secs(5)));
        let t3 = t2 + Duration::from_secs(5);
        record(StatusCode::OK, t3);
        record(StatusCode::OK, t3);
        record(bad, t3);
        assert!(!is_open(t3), "closed: the count starts again");
        // State survives a rebuild with the same config, not with another.
        let same = ApiBreaker::build(1005, &config, "routes/r", &env).unwrap();
        assert!(Arc::ptr_eq(&same.circuit("r"), &circuit));
        let other = json!({"break_response_code": 503});
        let changed = ApiBreaker::build(1005, &other, "routes/r", &env).unwrap();
        assert!(!Arc::ptr_eq(&changed.circuit("r"), &circuit));
    }

    #[test]
    fn a_global_breaker_keeps_one_circuit_per_route() {
        let env = BuildEnv::default();
        let config = json!({"break_response_code": 502, "unhealthy": {"failures": 1}});
        let global = ApiBreaker::build(1005, &config, "global-rules/g", &env).unwrap();
        let now = Instant::now();
        global.record(&global.circuit("a"), StatusCode::INTERNAL_SERVER_ERROR, now);
        assert!(ApiBreaker::is_open(&global.circuit("a"), now));
        assert!(!ApiBreaker::is_open(&global.circuit("b"), now));
        let again = ApiBreaker::build(1005, &config, "global-rules/g", &env).unwrap();
        assert!(
            ApiBreaker::is_open(&again.circuit("a"), now),
            "survives a rebuild"
        );
    }
}
