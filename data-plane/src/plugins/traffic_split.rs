//! `traffic-split`: sends requests to other upstreams by weight and by request attributes.
//!
//! The first rule whose `match` holds picks among its `weighted_upstreams` by smooth weighted
//! round robin (the order is precomputed once per snapshot, so a request costs one atomic
//! increment); the choice goes into `RequestCtx::upstream_override`. An entry without
//! `upstream_id` is the route's own upstream (no override). No matching rule: the route's own
//! upstream.
//!
//! Upstream ids are checked when the snapshot is compiled, against the snapshot's upstreams
//! (`BuildEnv::upstreams`, set by `Runtime::compile` before any route is built); the snapshot
//! check and the control plane already refuse an id that does not exist. The request path
//! finds the chosen upstream by id in the runtime the request loaded.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use gateway_proto::model::{MatchCondition, MatchOp};
use gateway_proto::plugins::traffic_split::{Config, Match};
use gateway_proto::schema::compile_regex;
use http::header::HeaderName;
use http::request;
use regex::bytes::Regex;
use serde_json::Value;

use super::util::percent_decode;
use super::{Access, BuildEnv, Plugin, RequestCtx};

/// How one header or argument is tested (any of its values may pass).
#[derive(Debug)]
enum Test {
    Eq(Vec<u8>),
    Prefix(Vec<u8>),
    Regex(Regex),
    Exists,
    Absent,
}

impl Test {
    fn compile(condition: &MatchCondition) -> Result<Test, String> {
        let value = || {
            condition
                .value
                .clone()
                .ok_or_else(|| format!("op {:?} needs a value", condition.op))
        };
        Ok(match condition.op {
            MatchOp::Eq => Test::Eq(value()?.into_bytes()),
            MatchOp::Prefix => Test::Prefix(value()?.into_bytes()),
            MatchOp::Regex => Test::Regex(compile_regex(&value()?)?),
            MatchOp::Exists => Test::Exists,
            MatchOp::Absent => Test::Absent,
        })
    }

    fn holds<'v>(&self, mut values: impl Iterator<Item = &'v [u8]>) -> bool {
        match self {
            Test::Eq(expected) => values.any(|v| v == expected.as_slice()),
            Test::Prefix(prefix) => values.any(|v| v.starts_with(prefix)),
            Test::Regex(regex) => values.any(|v| regex.is_match(v)),
            Test::Exists => values.next().is_some(),
            Test::Absent => values.next().is_none(),
        }
    }
}

/// One alternative of a rule's `match`.
#[derive(Debug)]
struct Alternative {
    headers: Vec<(HeaderName, Test)>,
    query: Vec<(String, Test)>,
}

impl Alternative {
    fn compile(spec: &Match) -> Result<Alternative, String> {
        let headers = spec
            .headers
            .iter()
            .map(|c| {
                let name = HeaderName::from_bytes(c.name.as_bytes())
                    .map_err(|_| format!("{:?} is not a header name", c.name))?;
                Ok((name, Test::compile(c)?))
            })
            .collect::<Result<_, String>>()?;
        let query = spec
            .query
            .iter()
            .map(|c| Ok((c.name.clone(), Test::compile(c)?)))
            .collect::<Result<_, String>>()?;
        Ok(Alternative { headers, query })
    }

    fn holds(&self, request: &request::Parts) -> bool {
        let headers_hold = self.headers.iter().all(|(name, test)| {
            test.holds(request.headers.get_all(name).iter().map(|v| v.as_bytes()))
        });
        if !headers_hold || self.query.is_empty() {
            return headers_hold;
        }
        let args: Vec<(String, String)> = request
            .uri
            .query()
            .unwrap_or("")
            .split('&')
            .filter(|pair| !pair.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (
                    percent_decode(name).into_owned(),
                    percent_decode(value).into_owned(),
                )
            })
            .collect();
        self.query.iter().all(|(name, test)| {
            test.holds(
                args.iter()
                    .filter(|(n, _)| n == name)
                    .map(|(_, v)| v.as_bytes()),
            )
        })
    }
}

/// One compiled rule.
#[derive(Debug)]
struct Rule {
    /// Empty: every request.
    alternatives: Vec<Alternative>,
    /// The distinct targets, by upstream id (`None`: the route's own upstream).
    targets: Vec<Option<Arc<str>>>,
    /// Indexes into `targets`, in smooth weighted round-robin order; empty when every weight
    /// is 0 (the rule then leaves the route's upstream in place).
    schedule: Vec<usize>,
    next: AtomicUsize,
}

impl Rule {
    fn pick(&self) -> Option<Arc<str>> {
        if self.schedule.is_empty() {
            return None;
        }
        let turn = self.next.fetch_add(1, Ordering::Relaxed) % self.schedule.len();
        self.targets[self.schedule[turn]].clone()
    }
}

/// The smooth weighted round-robin order of `weights` (nginx's algorithm), one full cycle:
/// each index appears `weight` times, spread out.
fn smooth_schedule(weights: &[u32]) -> Vec<usize> {
    let total: i64 = weights.iter().map(|&w| i64::from(w)).sum();
    let mut current = vec![0i64; weights.len()];
    let mut order = Vec::with_capacity(usize::try_from(total).unwrap_or(0));
    for _ in 0..total {
        for (c, &w) in current.iter_mut().zip(weights) {
            *c += i64::from(w);
        }
        let Some((best, _)) = current
            .iter()
            .enumerate()
            .max_by_key(|(i, c)| (**c, -(*i as i64)))
        else {
            break;
        };
        current[best] -= total;
        order.push(best);
    }
    order
}

/// A compiled `traffic-split`.
#[derive(Debug)]
pub struct TrafficSplit {
    priority: i32,
    rules: Vec<Rule>,
}

impl TrafficSplit {
    /// Compiles a validated config, resolving upstream ids against `env.upstreams`.
    pub fn build(priority: i32, config: &Value, env: &BuildEnv) -> Result<TrafficSplit, String> {
        let config: Config = serde_json::from_value(config.clone()).map_err(|e| e.to_string())?;
        let mut rules = Vec::with_capacity(config.rules.len());
        for (r, spec) in config.rules.iter().enumerate() {
            let alternatives = spec
                .matches
                .iter()
                .map(Alternative::compile)
                .collect::<Result<_, _>>()
                .map_err(|e| format!("rules/{r}/match: {e}"))?;
            let mut targets = Vec::new();
            let mut weights = Vec::new();
            for entry in &spec.weighted_upstreams {
                let target = match &entry.upstream_id {
                    None => None,
                    Some(id) if env.upstreams.contains(id) => Some(Arc::from(id.as_str())),
                    Some(id) => return Err(format!("rules/{r}: upstream {id} does not exist")),
                };
                targets.push(target);
                weights.push(entry.weight);
            }
            rules.push(Rule {
                alternatives,
                schedule: smooth_schedule(&weights),
                targets,
                next: AtomicUsize::new(0),
            });
        }
        Ok(TrafficSplit { priority, rules })
    }
}

impl Plugin for TrafficSplit {
    fn name(&self) -> &'static str {
        "traffic-split"
    }

    fn priority(&self) -> i32 {
        self.priority
    }

    // Access phase (after authentication and limits), as in APISIX: a refused request never
    // takes a turn of the rotation.
    fn access(&self, ctx: &mut RequestCtx<'_>, request: &mut request::Parts) -> Access {
        let rule = self.rules.iter().find(|rule| {
            rule.alternatives.is_empty() || rule.alternatives.iter().any(|a| a.holds(request))
        });
        if let Some(upstream) = rule.and_then(Rule::pick) {
            ctx.upstream_override = Some(upstream);
        }
        Access::Continue
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_schedule_spreads_each_weight() {
        assert_eq!(smooth_schedule(&[1, 1]), [0, 1]);
        let order = smooth_schedule(&[3, 1]);
        assert_eq!(order.len(), 4);
        assert_eq!(order.iter().filter(|&&i| i == 1).count(), 1);
        assert_eq!(smooth_schedule(&[5, 1, 1]), [0, 0, 1, 0, 2, 0, 0]);
        assert!(smooth_schedule(&[0, 0]).is_empty());
        assert_eq!(smooth_schedule(&[0, 2]), [1, 1]);
    }
}
