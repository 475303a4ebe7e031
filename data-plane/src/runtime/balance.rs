//! Load balancing: which node of an upstream gets the next request.
//!
//! A [`Balancer`] is built once per upstream when a snapshot is compiled. It only hands out node
//! indices; what it knows of a node is its weight, whether it may be chosen right now (health,
//! and for a retry, whether it was already tried) and its [`NodeLoad`]: in-flight requests,
//! peak-EWMA latency and the smooth round-robin counter. `NodeLoad` is shared, by node address,
//! between the runtimes of successive snapshots (see [`crate::runtime::upstream`]), so a config push
//! neither forgets which node is busy nor sends the next burst to the heaviest node again.
//!
//! Every algorithm honours weights, and a node of weight 0 is never chosen (it drains: requests
//! already on it finish, no new ones arrive).

use std::hash::Hasher as _;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_proto::model::LoadBalance;

use crate::transport::{Hold, Release};

/// Virtual nodes per node of average weight on the consistent-hash ring: enough for an even
/// spread (±10% with 160, as in ketama), few enough that a 1,000-node ring stays small.
const VNODES_PER_NODE: u64 = 160;
/// Upper bound on the ring size, whatever the weights.
const MAX_RING: u64 = 160 * 1024;

/// Peak-EWMA decay time: a latency sample's influence halves in about 7 s (Finagle's and
/// linkerd's default is 10 s). The estimate also decays toward zero while a node gets no
/// samples, so a node that was avoided is tried again rather than starved for good.
const EWMA_DECAY: Duration = Duration::from_secs(10);

/// The least a failed attempt counts as for peak-EWMA, for a node with no estimate yet: a
/// refused connection is quick, and counting it as a fast answer would send more traffic to a
/// dead node.
const MIN_FAILURE_LATENCY: Duration = Duration::from_millis(1);
/// The most that doubling makes a failed attempt count as (its own latency aside): a node that
/// failed a thousand times in a row is tried again within about a minute of decay, not never.
const MAX_FAILURE_PENALTY: Duration = Duration::from_secs(1);

/// The load a node carries, shared across snapshots for as long as the node keeps its address.
#[derive(Debug, Default)]
pub struct NodeLoad {
    /// Requests sent to the node whose response has not ended yet (body included).
    in_flight: AtomicU64,
    /// Peak-EWMA of the time to response headers, in nanoseconds (as `f64` bits).
    ewma_nanos: AtomicU64,
    /// When `ewma_nanos` was last updated, in nanoseconds since [`epoch`].
    ewma_stamp: AtomicU64,
    /// Smooth weighted round robin's current weight; read and written under the balancer's
    /// lock only, atomic so that it can live in this shared struct.
    current_weight: AtomicI64,
}

impl NodeLoad {
    /// Requests on the node now.
    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Relaxed)
    }

    /// Counts a request as in flight until the returned guard is dropped.
    pub fn start(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Relaxed);
        Hold::new(Arc::clone(self) as Arc<dyn Release>)
    }

    /// The peak-EWMA latency estimate, decayed for the time since its last sample.
    pub fn ewma(&self) -> Duration {
        Duration::from_nanos(self.decayed_ewma_nanos(nanos_since_epoch()) as u64)
    }

    /// The estimate at `now`: it decays toward zero from its last sample (as Finagle's and
    /// linkerd's do), so an idle node looks cheaper as time passes.
    fn decayed_ewma_nanos(&self, now: u64) -> f64 {
        let estimate = f64::from_bits(self.ewma_nanos.load(Relaxed));
        let stamp = self.ewma_stamp.load(Relaxed);
        if stamp == 0 || estimate == 0.0 {
            return estimate;
        }
        estimate * decay_factor(now.saturating_sub(stamp))
    }

    /// Feeds one latency sample into the peak-EWMA: a sample above the estimate replaces it at
    /// once (a node that turns slow is avoided immediately); a lower one pulls it down with a
    /// weight that grows with the time since the last sample.
    pub fn observe_latency(&self, latency: Duration) {
        self.observe(|_| latency.as_nanos() as f64);
    }

    /// Feeds a failed attempt that took `latency` into the peak-EWMA: it counts as twice the
    /// node's estimate, between `MIN_FAILURE_LATENCY` and `MAX_FAILURE_PENALTY`, or as its
    /// own latency if that is longer. So each failure in a row doubles the node's cost, and a
    /// single failure on a node that keeps answering well is forgotten within seconds rather
    /// than starving it.
    pub fn observe_failure(&self, latency: Duration) {
        let (floor, ceiling) = (
            MIN_FAILURE_LATENCY.as_nanos() as f64,
            MAX_FAILURE_PENALTY.as_nanos() as f64,
        );
        let latency = latency.as_nanos() as f64;
        self.observe(|estimate| (2.0 * estimate).clamp(floor, ceiling).max(latency));
    }

    /// Updates the estimate with the sample `sample_of(current estimate)`.
    fn observe(&self, sample_of: impl FnOnce(f64) -> f64) {
        let now = nanos_since_epoch();
        let last = self.ewma_stamp.swap(now, Relaxed);
        let stored = f64::from_bits(self.ewma_nanos.load(Relaxed));
        // How much of the stored estimate is left after the time since its last sample.
        let keep = if last == 0 {
            0.0
        } else {
            decay_factor(now.saturating_sub(last))
        };
        let current = stored * keep;
        let sample = sample_of(current);
        let next = if sample > current {
            sample
        } else {
            current + sample * (1.0 - keep)
        };
        // Two concurrent samples may race; either result is a fair estimate.
        self.ewma_nanos.store(next.to_bits(), Relaxed);
    }

    /// The peak-EWMA cost of sending one more request at `now`: latency × (1 + in flight per
    /// unit of `weight`). The weight scales the load, not the latency: on an idle upstream
    /// with equal latencies every node costs the same, so the weighted draw sets the shares. A
    /// node without samples yet costs its load alone, so it gets tried soon.
    fn ewma_cost(&self, now: u64, weight: u32) -> f64 {
        let latency = self.decayed_ewma_nanos(now).max(1.0);
        latency * (1.0 + self.in_flight() as f64 / f64::from(weight.max(1)))
    }
}

/// How much of a peak-EWMA estimate is left after `elapsed_nanos` without a sample.
fn decay_factor(elapsed_nanos: u64) -> f64 {
    (-(elapsed_nanos as f64) / EWMA_DECAY.as_nanos() as f64).exp()
}

/// Keeps a request counted in [`NodeLoad::in_flight`]; dropping it ends the count. It owns a
/// reference to the load so that it can travel with the response body, which outlives the
/// exchange that started it: the transport holds it without knowing what it counts.
pub type InFlight = Hold;

impl Release for NodeLoad {
    fn release(&self) {
        self.in_flight.fetch_sub(1, Relaxed);
    }
}

fn nanos_since_epoch() -> u64 {
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    // +1 so that 0 keeps meaning "never".
    let nanos = u64::try_from(epoch.elapsed().as_nanos()).unwrap_or(u64::MAX) + 1;
    #[cfg(test)]
    let nanos = nanos + tests::SKEW_NANOS.with(std::cell::Cell::get);
    nanos
}

/// What a balancer may look at for node `i`.
pub trait Candidates {
    /// How many nodes there are.
    fn len(&self) -> usize;
    /// Whether there are no nodes.
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Node `i`'s configured weight.
    fn weight(&self, i: usize) -> u32;
    /// Node `i`'s shared load.
    fn load(&self, i: usize) -> &Arc<NodeLoad>;
}

/// Picks nodes for one upstream.
#[derive(Debug)]
pub enum Balancer {
    /// Smooth weighted round robin.
    RoundRobin(SmoothWeightedRoundRobin),
    /// Power of two choices by in-flight requests over weight.
    LeastRequests,
    /// Power of two choices by peak-EWMA latency × (1 + in-flight requests over weight).
    Ewma,
    /// A consistent-hash ring.
    ConsistentHash(HashRing),
    /// Weighted random.
    Random,
}

impl Balancer {
    /// Builds the balancer `algorithm` names. `addresses[i]` and `weights[i]` describe node `i`;
    /// the ring is placed by address, so a node keeps its keys whatever the other nodes do.
    pub fn new(algorithm: LoadBalance, addresses: &[&str], weights: &[u32]) -> Balancer {
        match algorithm {
            LoadBalance::RoundRobin => Balancer::RoundRobin(SmoothWeightedRoundRobin::default()),
            LoadBalance::LeastRequests => Balancer::LeastRequests,
            LoadBalance::Ewma => Balancer::Ewma,
            LoadBalance::ConsistentHash => {
                Balancer::ConsistentHash(HashRing::new(addresses, weights))
            }
            LoadBalance::Random => Balancer::Random,
        }
    }

    /// Whether this balancer uses a request key ([`Balancer::pick`]'s `key`).
    pub fn wants_key(&self) -> bool {
        matches!(self, Balancer::ConsistentHash(_))
    }

    /// The index of the node that gets the next request, among the nodes `allowed` accepts and
    /// whose weight is not 0; `None` when there is none. `key` is the request's hash key for
    /// consistent hashing (ignored by the other algorithms).
    pub fn pick(
        &self,
        nodes: &impl Candidates,
        key: Option<u64>,
        allowed: impl Fn(usize) -> bool,
    ) -> Option<usize> {
        let ok = |i: usize| nodes.weight(i) > 0 && allowed(i);
        if nodes.len() == 1 {
            // The common one-node upstream: no lock, no random draw.
            return ok(0).then_some(0);
        }
        match self {
            Balancer::RoundRobin(rr) => rr.pick(nodes, ok),
            Balancer::Random => weighted_random(nodes, &ok, None),
            // The candidates are drawn by weight, so on equal cost (an idle upstream) the
            // shares follow the weights; under load a heavier node may carry more in flight.
            Balancer::LeastRequests => two_choices(nodes, &ok, |i| {
                nodes.load(i).in_flight() as f64 / f64::from(nodes.weight(i))
            }),
            Balancer::Ewma => {
                let now = nanos_since_epoch();
                two_choices(nodes, &ok, |i| {
                    nodes.load(i).ewma_cost(now, nodes.weight(i))
                })
            }
            Balancer::ConsistentHash(ring) => ring.pick(key.unwrap_or(0), ok),
        }
    }
}

/// A weighted random node among those `ok` accepts, other than `except`.
fn weighted_random(
    nodes: &impl Candidates,
    ok: &impl Fn(usize) -> bool,
    except: Option<usize>,
) -> Option<usize> {
    let usable = |i: usize| ok(i) && Some(i) != except;
    let total: u64 = (0..nodes.len())
        .filter(|&i| usable(i))
        .map(|i| u64::from(nodes.weight(i)))
        .sum();
    if total == 0 {
        return None;
    }
    let mut ticket = fastrand::u64(0..total);
    for i in (0..nodes.len()).filter(|&i| usable(i)) {
        let weight = u64::from(nodes.weight(i));
        if ticket < weight {
            return Some(i);
        }
        ticket -= weight;
    }
    None
}

/// Power of two choices: two distinct nodes drawn by weight, the one with the lower `cost`
/// wins (the first drawn on a tie). Cheap (no scan of every node's load), and it avoids the herd that "always the least
/// loaded" causes when many balancers see the same stale numbers.
fn two_choices(
    nodes: &impl Candidates,
    ok: &impl Fn(usize) -> bool,
    cost: impl Fn(usize) -> f64,
) -> Option<usize> {
    let first = weighted_random(nodes, ok, None)?;
    let Some(second) = weighted_random(nodes, ok, Some(first)) else {
        return Some(first);
    };
    if cost(second) < cost(first) {
        Some(second)
    } else {
        Some(first)
    }
}

/// nginx's smooth weighted round robin: over any window of `sum(weights)` picks every node is
/// chosen exactly `weight` times, and the picks of a heavy node are spread out rather than
/// bunched (5:1:1 gives `a a b a c a a`, not `a a a a a b c`). Only the nodes that may be
/// chosen take part, so an unhealthy node's share goes to the others.
#[derive(Debug, Default)]
pub struct SmoothWeightedRoundRobin {
    /// Serialises picks; the per-node counters live in [`NodeLoad`].
    lock: Mutex<()>,
}

impl SmoothWeightedRoundRobin {
    fn pick(&self, nodes: &impl Candidates, ok: impl Fn(usize) -> bool) -> Option<usize> {
        // A poisoned lock guards no data of its own; carry on.
        let _guard = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let mut total = 0i64;
        // (index, current weight) of the best node so far; the first of equals wins.
        let mut best: Option<(usize, i64)> = None;
        for i in (0..nodes.len()).filter(|&i| ok(i)) {
            let weight = i64::from(nodes.weight(i));
            total += weight;
            let current = &nodes.load(i).current_weight;
            let value = current.load(Relaxed) + weight;
            current.store(value, Relaxed);
            if best.is_none_or(|(_, best)| value > best) {
                best = Some((i, value));
            }
        }
        let (index, _) = best?;
        nodes.load(index).current_weight.fetch_sub(total, Relaxed);
        Some(index)
    }
}

/// A consistent-hash ring (ketama style): each node owns points placed by hashing its address,
/// as many as its weight deserves; a key goes to the first point at or after its hash. Adding
/// or removing a node only moves the keys of the points it gains or loses: about 1/N of them.
#[derive(Debug)]
pub struct HashRing {
    /// (point, node index), sorted by point.
    points: Vec<(u64, usize)>,
}

impl HashRing {
    fn new(addresses: &[&str], weights: &[u32]) -> HashRing {
        let live: Vec<usize> = (0..addresses.len().min(weights.len()))
            .filter(|&i| weights[i] > 0)
            .collect();
        let total_weight: u64 = live.iter().map(|&i| u64::from(weights[i])).sum();
        let mut points = Vec::new();
        let budget = (VNODES_PER_NODE * live.len() as u64).min(MAX_RING);
        for &i in &live {
            // `live` is empty when the total weight is 0, so the division never sees 0.
            if let Some(share) = (budget * u64::from(weights[i])).checked_div(total_weight) {
                let share = share.max(1);
                for replica in 0..share {
                    points.push((hash_parts(addresses[i].as_bytes(), replica), i));
                }
            }
        }
        points.sort_unstable();
        HashRing { points }
    }

    fn pick(&self, key: u64, ok: impl Fn(usize) -> bool) -> Option<usize> {
        if self.points.is_empty() {
            return None;
        }
        let start = self.points.partition_point(|&(point, _)| point < key);
        // Walk on from the key's point to the first node that may be chosen, so an unhealthy
        // node's keys spread over its successors and come back when it does.
        let ring = self.points[start..].iter().chain(&self.points[..start]);
        ring.map(|&(_, i)| i).find(|&i| ok(i))
    }
}

/// A stable 64-bit hash (FNV-1a, then a splitmix64 finaliser for avalanche): the same on every
/// data plane and every build, so a key lands on the same node across the fleet.
pub fn hash_bytes(bytes: &[u8]) -> u64 {
    let mut hasher = fnv::FnvHasher::default();
    hasher.write(bytes);
    mix(hasher.finish())
}

fn hash_parts(bytes: &[u8], replica: u64) -> u64 {
    mix(hash_bytes(bytes) ^ replica.wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

#[cfg(test)]
mod tests {
    use super::*;

    thread_local! {
        /// Added to this thread's EWMA clock, so tests can let time pass without sleeping.
        pub(super) static SKEW_NANOS: std::cell::Cell<u64> = const { std::cell::Cell::new(0) };
    }

    struct Nodes {
        weights: Vec<u32>,
        loads: Vec<Arc<NodeLoad>>,
    }

    impl Nodes {
        fn new(weights: &[u32]) -> Nodes {
            Nodes {
                weights: weights.to_vec(),
                loads: weights.iter().map(|_| Arc::default()).collect(),
            }
        }
    }

    impl Candidates for Nodes {
        fn len(&self) -> usize {
            self.weights.len()
        }
        fn weight(&self, i: usize) -> u32 {
            self.weights[i]
        }
        fn load(&self, i: usize) -> &Arc<NodeLoad> {
            &self.loads[i]
        }
    }

    fn addresses(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{i}:80")).collect()
    }

    fn balancer(algorithm: LoadBalance, weights: &[u32]) -> Balancer {
        let addresses = addresses(weights.len());
        let refs: Vec<&str> = addresses.iter().map(String::as_str).collect();
        Balancer::new(algorithm, &refs, weights)
    }

    fn picks(weights: &[u32], n: usize) -> Vec<usize> {
        let nodes = Nodes::new(weights);
        let balancer = balancer(LoadBalance::RoundRobin, weights);
        (0..n)
            .map(|_| balancer.pick(&nodes, None, |_| true).unwrap())
            .collect()
    }

    fn counts(algorithm: LoadBalance, weights: &[u32], n: usize) -> Vec<usize> {
        let nodes = Nodes::new(weights);
        let balancer = balancer(algorithm, weights);
        let mut counts = vec![0; weights.len()];
        for i in 0..n {
            let key = hash_bytes(&i.to_le_bytes());
            counts[balancer.pick(&nodes, Some(key), |_| true).unwrap()] += 1;
        }
        counts
    }

    #[test]
    fn weights_5_1_1_over_700_picks_are_exact() {
        assert_eq!(
            counts(LoadBalance::RoundRobin, &[5, 1, 1], 700),
            [500, 100, 100]
        );
    }

    #[test]
    fn picks_are_spread_like_nginx() {
        assert_eq!(picks(&[5, 1, 1], 7), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(picks(&[1, 1, 1], 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn every_algorithm_honours_weights_and_never_picks_weight_0() {
        for algorithm in [
            LoadBalance::RoundRobin,
            LoadBalance::Random,
            LoadBalance::LeastRequests,
            LoadBalance::Ewma,
            LoadBalance::ConsistentHash,
        ] {
            let counts = counts(algorithm, &[1, 0, 2, 3], 60_000);
            assert_eq!(counts[1], 0, "{algorithm:?}: {counts:?}");
            for (i, expected) in [(0, 10_000.0), (2, 20_000.0), (3, 30_000.0)] {
                let share = counts[i] as f64;
                assert!(
                    (share - expected).abs() / expected < 0.15,
                    "{algorithm:?}: node {i} got {share}, expected about {expected}: {counts:?}"
                );
            }
        }
    }

    #[test]
    fn zero_weights_and_filtered_nodes_are_never_chosen() {
        assert!(picks(&[0, 3, 0, 1], 400).iter().all(|&i| i == 1 || i == 3));
        assert_eq!(picks(&[0, 2, 0], 3), [1, 1, 1]);
        for algorithm in [
            LoadBalance::RoundRobin,
            LoadBalance::Random,
            LoadBalance::Ewma,
        ] {
            let nodes = Nodes::new(&[0, 0]);
            assert_eq!(
                balancer(algorithm, &[0, 0]).pick(&nodes, None, |_| true),
                None
            );
            let nodes = Nodes::new(&[1, 1, 1]);
            let b = balancer(algorithm, &[1, 1, 1]);
            for _ in 0..100 {
                assert_eq!(b.pick(&nodes, Some(7), |i| i == 2), Some(2));
            }
            assert_eq!(b.pick(&nodes, None, |_| false), None);
        }
        let empty = Nodes::new(&[]);
        assert_eq!(
            balancer(LoadBalance::ConsistentHash, &[]).pick(&empty, Some(1), |_| true),
            None
        );
    }

    #[test]
    fn extreme_weights_do_not_overflow() {
        assert_eq!(
            counts(LoadBalance::RoundRobin, &[65_535, 1], 65_536 * 2),
            [131_070, 2]
        );
    }

    #[test]
    fn least_requests_prefers_the_node_with_fewer_in_flight() {
        let nodes = Nodes::new(&[1, 1]);
        let busy: Vec<InFlight> = (0..5).map(|_| nodes.load(0).start()).collect();
        let b = balancer(LoadBalance::LeastRequests, &[1, 1]);
        for _ in 0..100 {
            assert_eq!(b.pick(&nodes, None, |_| true), Some(1));
        }
        drop(busy);
        assert_eq!(nodes.load(0).in_flight(), 0);
    }

    #[test]
    fn ewma_prefers_the_faster_node_and_reacts_to_a_peak_at_once() {
        let nodes = Nodes::new(&[1, 1]);
        nodes.load(0).observe_latency(Duration::from_millis(1));
        nodes.load(1).observe_latency(Duration::from_millis(50));
        let b = balancer(LoadBalance::Ewma, &[1, 1]);
        assert!((0..100).all(|_| b.pick(&nodes, None, |_| true) == Some(0)));
        nodes.load(0).observe_latency(Duration::from_millis(500));
        // (A little less by now: the estimate decays with time.)
        assert!(nodes.load(0).ewma() >= Duration::from_millis(499));
        assert!((0..100).all(|_| b.pick(&nodes, None, |_| true) == Some(1)));
    }

    /// Moves this thread's view of the EWMA clock forward by `by`.
    fn advance(by: Duration) {
        SKEW_NANOS.with(|skew| skew.set(skew.get() + by.as_nanos() as u64));
    }

    #[test]
    fn ewma_forgets_a_single_failure_of_a_node_that_answers_well() {
        let nodes = Nodes::new(&[1, 1]);
        let b = balancer(LoadBalance::Ewma, &[1, 1]);
        nodes.load(0).observe_latency(Duration::from_millis(1));
        nodes.load(1).observe_latency(Duration::from_millis(1));
        // A quick 503: it counts as twice the node's estimate, not as a fast answer.
        nodes.load(0).observe_failure(Duration::from_micros(50));
        assert!(nodes.load(0).ewma() >= Duration::from_micros(1_900));
        assert!((0..100).all(|_| b.pick(&nodes, None, |_| true) == Some(1)));
        // Node 1 keeps answering in 1 ms; node 0, avoided, gets no samples. Its estimate decays
        // anyway, so it is tried again: 2 ms × e^-1 ≈ 0.74 ms after one decay time.
        advance(EWMA_DECAY);
        nodes.load(1).observe_latency(Duration::from_millis(1));
        assert!(nodes.load(0).ewma() < Duration::from_millis(1));
        assert!((0..100).all(|_| b.pick(&nodes, None, |_| true) == Some(0)));
    }

    #[test]
    fn ewma_failures_in_a_row_double_the_cost_each_time() {
        let load = NodeLoad::default();
        // No estimate yet: a refused connection still costs the floor.
        load.observe_failure(Duration::from_micros(20));
        assert!(load.ewma() >= MIN_FAILURE_LATENCY.mul_f64(0.99));
        for _ in 0..4 {
            load.observe_failure(Duration::from_micros(20));
        }
        // 1, 2, 4, 8, 16 ms (a little less for the nanoseconds between the samples).
        let estimate = load.ewma();
        assert!(
            (Duration::from_millis(15)..=Duration::from_millis(16)).contains(&estimate),
            "{estimate:?}"
        );
        // Doubling stops at the ceiling, however long the run of failures: the estimate stays
        // finite and decays again.
        for _ in 0..2_000 {
            load.observe_failure(Duration::from_micros(20));
        }
        assert!(load.ewma() <= MAX_FAILURE_PENALTY);
        advance(EWMA_DECAY * 10);
        assert!(load.ewma() < Duration::from_millis(1));
        // A failure slower than the ceiling counts as what it took.
        load.observe_failure(Duration::from_secs(5));
        assert!(load.ewma() >= Duration::from_millis(4_999));
    }

    #[test]
    fn ewma_weighs_the_cost_by_weight() {
        let nodes = Nodes::new(&[3, 1]);
        for i in 0..2 {
            nodes.load(i).observe_latency(Duration::from_millis(5));
        }
        // Same latency; node 0 carries 2 in flight for weight 3 (latency × 5/3), node 1 one for
        // weight 1 (latency × 2): node 0 is cheaper.
        let _busy: Vec<InFlight> = [0, 0, 1].iter().map(|&i| nodes.load(i).start()).collect();
        let b = balancer(LoadBalance::Ewma, &[3, 1]);
        assert!((0..100).all(|_| b.pick(&nodes, None, |_| true) == Some(0)));
    }

    #[test]
    fn consistent_hash_moves_only_the_removed_nodes_keys() {
        let all = addresses(5);
        let refs: Vec<&str> = all.iter().map(String::as_str).collect();
        let five = Balancer::new(LoadBalance::ConsistentHash, &refs, &[1; 5]);
        let mut without_2 = refs.clone();
        without_2.remove(2);
        let four = Balancer::new(LoadBalance::ConsistentHash, &without_2, &[1; 4]);
        let (nodes5, nodes4) = (Nodes::new(&[1; 5]), Nodes::new(&[1; 4]));
        let mut moved = 0;
        for k in 0..10_000u32 {
            let key = hash_bytes(format!("user-{k}").as_bytes());
            let before = refs[five.pick(&nodes5, Some(key), |_| true).unwrap()];
            let after = without_2[four.pick(&nodes4, Some(key), |_| true).unwrap()];
            if before == refs[2] {
                moved += 1;
                assert_ne!(after, refs[2]);
            } else {
                assert_eq!(before, after, "a key of a remaining node moved");
            }
            // Same key, same node, every time.
            assert_eq!(
                before,
                refs[five.pick(&nodes5, Some(key), |_| true).unwrap()]
            );
        }
        assert!(
            (1_000..3_000).contains(&moved),
            "{moved} keys were on the removed node"
        );
    }

    #[test]
    fn the_hash_is_stable() {
        // Pinned: a changed hash would move every key of every consistent-hash upstream.
        assert_eq!(hash_bytes(b""), mix(0xcbf2_9ce4_8422_2325));
        assert_eq!(hash_bytes(b"a"), hash_bytes(b"a"));
        assert_ne!(hash_bytes(b"a"), hash_bytes(b"b"));
    }
}
