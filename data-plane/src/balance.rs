//! Load balancing: which node of an upstream gets the next request.
//!
//! A [`Balancer`] is built once per upstream when a snapshot is compiled and only ever hands out
//! node indices, so the algorithms know nothing of HTTP. More algorithms (least requests, EWMA,
//! consistent hashing) become more variants; health state will sit beside the balancer, keyed
//! by node address, so it survives a snapshot swap.

use std::sync::Mutex;

use gateway_proto::model::LoadBalance;

/// Picks nodes for one upstream.
#[derive(Debug)]
pub enum Balancer {
    /// Smooth weighted round robin.
    RoundRobin(SmoothWeightedRoundRobin),
}

impl Balancer {
    /// Builds the balancer `algorithm` names over nodes with these `weights`.
    pub fn new(algorithm: LoadBalance, weights: &[u32]) -> Balancer {
        match algorithm {
            LoadBalance::RoundRobin => Balancer::RoundRobin(SmoothWeightedRoundRobin::new(weights)),
        }
    }

    /// The index of the node that gets the next request, or `None` when every node has weight 0.
    pub fn pick(&self) -> Option<usize> {
        match self {
            Balancer::RoundRobin(rr) => rr.pick(),
        }
    }
}

/// nginx's smooth weighted round robin: over any window of `sum(weights)` picks every node is
/// chosen exactly `weight` times, and the picks of a heavy node are spread out rather than
/// bunched (5:1:1 gives `a a b a c a a`, not `a a a a a b c`). Nodes of weight 0 are never
/// chosen.
#[derive(Debug)]
pub struct SmoothWeightedRoundRobin {
    weights: Vec<i64>,
    total: i64,
    /// The only node with a non-zero weight, when there is exactly one: then no state is needed
    /// and the lock is never taken.
    single: Option<usize>,
    current: Mutex<Vec<i64>>,
}

impl SmoothWeightedRoundRobin {
    /// Builds the balancer; `weights[i]` is node `i`'s weight.
    pub fn new(weights: &[u32]) -> Self {
        let weights: Vec<i64> = weights.iter().map(|&w| i64::from(w)).collect();
        let total = weights.iter().sum();
        let mut positive = weights.iter().enumerate().filter(|(_, w)| **w > 0);
        let single = match (positive.next(), positive.next()) {
            (Some((i, _)), None) => Some(i),
            _ => None,
        };
        SmoothWeightedRoundRobin {
            current: Mutex::new(vec![0; weights.len()]),
            weights,
            total,
            single,
        }
    }

    /// The index of the next node, or `None` when every weight is 0.
    pub fn pick(&self) -> Option<usize> {
        if self.total == 0 {
            return None;
        }
        if self.single.is_some() {
            return self.single;
        }
        // The critical section is a few additions per node; a poisoned lock only means another
        // thread panicked between two of them, which leaves the weights usable.
        let mut current = self.current.lock().unwrap_or_else(|e| e.into_inner());
        // (index, current weight) of the best node so far; the first of equals wins.
        let mut best: Option<(usize, i64)> = None;
        for (i, (cur, &weight)) in current.iter_mut().zip(&self.weights).enumerate() {
            if weight == 0 {
                continue;
            }
            *cur += weight;
            if best.is_none_or(|(_, value)| *cur > value) {
                best = Some((i, *cur));
            }
        }
        let (index, _) = best?;
        current[index] -= self.total;
        Some(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(weights: &[u32], n: usize) -> Vec<usize> {
        let balancer = Balancer::new(LoadBalance::RoundRobin, weights);
        (0..n).map(|_| balancer.pick().unwrap()).collect()
    }

    #[test]
    fn weights_5_1_1_over_700_picks_are_exact() {
        let mut counts = [0; 3];
        for i in picks(&[5, 1, 1], 700) {
            counts[i] += 1;
        }
        assert_eq!(counts, [500, 100, 100]);
    }

    #[test]
    fn picks_are_spread_like_nginx() {
        assert_eq!(picks(&[5, 1, 1], 7), [0, 0, 1, 0, 2, 0, 0]);
        assert_eq!(picks(&[1, 1, 1], 6), [0, 1, 2, 0, 1, 2]);
    }

    #[test]
    fn zero_weight_nodes_are_never_chosen() {
        assert!(picks(&[0, 3, 0, 1], 400).iter().all(|&i| i == 1 || i == 3));
        assert_eq!(picks(&[0, 2, 0], 3), [1, 1, 1]);
        let all_zero = Balancer::new(LoadBalance::RoundRobin, &[0, 0]);
        assert_eq!(all_zero.pick(), None);
        let empty = Balancer::new(LoadBalance::RoundRobin, &[]);
        assert_eq!(empty.pick(), None);
    }

    #[test]
    fn extreme_weights_do_not_overflow() {
        let mut counts = [0u32; 2];
        for i in picks(&[65_535, 1], 65_536 * 2) {
            counts[i] += 1;
        }
        assert_eq!(counts, [131_070, 2]);
    }
}
