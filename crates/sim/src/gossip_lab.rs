//! Measurements of gossip and failure detection, on the core nodes with a simulated network.
//!
//! - [`convergence_rounds`]: how many gossip rounds pass until every node knows of a change
//!   made at one node (expect about log2(n) plus a constant);
//! - [`detection_time`]: how long until every live node believes a paused node is down;
//! - [`false_downs`]: how often a live node is wrongly believed down under message loss and
//!   delay jitter;
//! - [`bytes_per_exchange`]: the encoded size of one digest exchange in a steady cluster.
//!
//! Nodes here do only membership: no client load.

use crate::Rng;
use dynamokv_core::membership::{Member, Status};
use dynamokv_core::message::Message;
use dynamokv_core::node::{Node, NodeConfig, Output};
use dynamokv_core::ring::hashed_tokens;
use dynamokv_core::store::{LocalStore, StoreError};
use dynamokv_core::{ActorId, Object};
use std::collections::{BTreeMap, BTreeSet};

/// A store that holds nothing (membership experiments write no data).
pub struct NoStore;

impl LocalStore for NoStore {
    fn get(&self, _: &[u8]) -> Result<Option<Object>, StoreError> {
        Ok(None)
    }
    fn modify(&self, _: &[u8], f: &mut dyn FnMut(Object) -> Object) -> Result<Object, StoreError> {
        Ok(f(Object::new()))
    }
    fn put_hint(&self, _: &str, _: &[u8], _: &Object) -> Result<(), StoreError> {
        Err(StoreError("membership experiments keep no hints".into()))
    }
    fn hints_for_key(&self, _: &[u8]) -> Result<Vec<dynamokv_core::store::Hint>, StoreError> {
        Ok(Vec::new())
    }
    fn scan_hints(
        &self,
        _: Option<(&[u8], &str)>,
        _: usize,
    ) -> Result<Vec<dynamokv_core::store::Hint>, StoreError> {
        Ok(Vec::new())
    }
    fn remove_hint(&self, _: &str, _: &[u8], _: &Object) -> Result<bool, StoreError> {
        Ok(false)
    }
}

const START: u64 = 1_800_000_000_000;

/// A cluster of membership-only nodes over a simulated network.
pub struct Net {
    nodes: Vec<Node<NoStore>>,
    ids: Vec<String>,
    paused: BTreeSet<usize>,
    queue: BTreeMap<(u64, u64), (usize, usize, Message)>,
    seq: u64,
    rng: Rng,
    /// Probability of losing a message.
    pub loss: f64,
    /// Largest extra delay of a message, ms.
    pub jitter_ms: u64,
    now: u64,
    /// Bytes of gossip messages sent (postcard-encoded), when counting.
    pub bytes: u64,
    /// Gossip messages sent.
    pub messages: u64,
    count_bytes: bool,
}

impl Net {
    /// `n` nodes that start converged and connected.
    pub fn new(n: usize, seed: u64) -> Net {
        let mut rng = Rng::new(seed);
        let ids: Vec<String> = (0..n).map(|i| format!("n{i:04}")).collect();
        let members: Vec<Member> = ids
            .iter()
            .map(|id| Member {
                id: id.clone(),
                generation: START,
                version: 1,
                status: Status::Up,
                peer_addr: format!("sim:{id}"),
                http_addr: format!("sim:{id}"),
                tokens: hashed_tokens(id, 4),
            })
            .collect();
        let nodes = members
            .iter()
            .map(|m| {
                let mut node = Node::new(
                    m.clone(),
                    ActorId(rng.next_u64()),
                    NodeConfig::default(),
                    NoStore,
                    rng.next_u64(),
                    &members,
                );
                for id in &ids {
                    node.assume_connected(id);
                }
                node.drain();
                node
            })
            .collect();
        Net {
            nodes,
            ids,
            paused: BTreeSet::new(),
            queue: BTreeMap::new(),
            seq: 0,
            rng,
            loss: 0.0,
            jitter_ms: 0,
            now: START,
            bytes: 0,
            messages: 0,
            count_bytes: false,
        }
    }

    fn collect(&mut self, i: usize) {
        for out in self.nodes[i].drain() {
            if let Output::Send { to, message } = out {
                let Some(j) = self.ids.iter().position(|x| *x == to) else {
                    continue;
                };
                if self.count_bytes {
                    self.bytes += postcard::to_allocvec(&message).map_or(0, |b| b.len() as u64);
                }
                self.messages += 1;
                if self.rng.chance(self.loss) {
                    continue;
                }
                let delay = 1 + self.rng.below(self.jitter_ms + 1);
                self.seq += 1;
                self.queue
                    .insert((self.now + delay, self.seq), (i, j, message));
            }
        }
    }

    /// Advances time by `ms`, ticking every node every 20 ms and delivering messages.
    pub fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            let step_end = (self.now + 20).min(end);
            while let Some((&(t, s), _)) = self.queue.iter().next() {
                if t > step_end {
                    break;
                }
                let Some((from, to, msg)) = self.queue.remove(&(t, s)) else {
                    break;
                };
                self.now = self.now.max(t);
                if self.paused.contains(&to) {
                    continue;
                }
                let from_id = self.ids[from].clone();
                self.nodes[to].step(self.now, &from_id, msg);
                self.collect(to);
            }
            self.now = step_end;
            for i in 0..self.nodes.len() {
                if !self.paused.contains(&i) {
                    self.nodes[i].tick(self.now);
                    self.collect(i);
                }
            }
        }
    }

    /// Pauses node `i` (no connection loss: only the failure detector can notice).
    pub fn pause(&mut self, i: usize) {
        self.paused.insert(i);
    }

    /// Whether every unpaused node (other than `i`) believes `i` is `up`.
    pub fn all_see(&self, i: usize, up: bool) -> bool {
        (0..self.nodes.len())
            .filter(|j| *j != i && !self.paused.contains(j))
            .all(|j| self.nodes[j].is_up(&self.ids[i]) == up)
    }

    /// Pairs (observer, peer) of unpaused nodes where the observer believes the peer down.
    pub fn wrongly_down(&self) -> BTreeSet<(usize, usize)> {
        let mut out = BTreeSet::new();
        for a in 0..self.nodes.len() {
            for b in 0..self.nodes.len() {
                if a != b
                    && !self.paused.contains(&a)
                    && !self.paused.contains(&b)
                    && !self.nodes[a].is_up(&self.ids[b])
                {
                    out.insert((a, b));
                }
            }
        }
        out
    }
}

/// Gossip rounds (of the 1 s interval) until every node knows a change made at node 0.
pub fn convergence_rounds(n: usize, seed: u64) -> u64 {
    let mut net = Net::new(n, seed);
    net.advance(3000);
    net.nodes[0].set_status(Status::Leaving);
    net.collect(0);
    let interval = NodeConfig::default().gossip_interval_ms;
    let id = net.ids[0].clone();
    for round in 1..=200 {
        net.advance(interval);
        if net.nodes.iter().all(|node| {
            node.members()
                .get(&id)
                .is_some_and(|m| m.status == Status::Leaving)
        }) {
            return round;
        }
    }
    u64::MAX
}

/// Milliseconds from pausing one node until every other node believes it down.
pub fn detection_time(n: usize, seed: u64, loss: f64, jitter_ms: u64) -> u64 {
    let mut net = Net::new(n, seed);
    net.loss = loss;
    net.jitter_ms = jitter_ms;
    net.advance(60_000);
    net.pause(0);
    let start = net.now;
    while !net.all_see(0, false) && net.now - start < 120_000 {
        net.advance(100);
    }
    net.now - start
}

/// Over `seconds` of steady running with `loss` and `jitter_ms`, the number of times a live
/// node was newly believed down by another (flaps), sampled every 100 ms.
pub fn false_downs(n: usize, seed: u64, loss: f64, jitter_ms: u64, seconds: u64) -> u64 {
    let mut net = Net::new(n, seed);
    net.loss = loss;
    net.jitter_ms = jitter_ms;
    net.advance(10_000);
    let mut previous = net.wrongly_down();
    let mut flaps = previous.len() as u64;
    for _ in 0..seconds * 10 {
        net.advance(100);
        let now = net.wrongly_down();
        flaps += now.difference(&previous).count() as u64;
        previous = now;
    }
    flaps
}

/// Average encoded bytes of gossip per exchange (syn + syn-ack + ack) in a steady cluster of
/// `n` nodes, and the average per member.
pub fn bytes_per_exchange(n: usize, seed: u64) -> (f64, f64) {
    let mut net = Net::new(n, seed);
    net.advance(5000);
    net.count_bytes = true;
    net.bytes = 0;
    net.messages = 0;
    let seconds = 20;
    net.advance(seconds * 1000);
    // Each node starts about one exchange per second.
    let exchanges = (n as u64 * seconds) as f64;
    let per = net.bytes as f64 / exchanges;
    (per, per / n as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gossip_converges_in_about_log_n_rounds() {
        for (n, limit) in [(10, 10), (100, 16)] {
            let rounds = convergence_rounds(n, 1);
            assert!(rounds <= limit, "{n} nodes took {rounds} rounds");
        }
    }

    #[test]
    fn a_paused_node_is_detected_within_the_bound() {
        let t = detection_time(5, 3, 0.0, 0);
        assert!((2_000..15_000).contains(&t), "detected after {t} ms");
    }

    #[test]
    fn no_false_downs_under_loss_and_jitter() {
        assert_eq!(false_downs(5, 4, 0.05, 200, 120), 0);
    }

    #[test]
    fn agreeing_nodes_exchange_little() {
        let (per_exchange, per_member) = bytes_per_exchange(20, 5);
        assert!(
            per_member < 60.0,
            "{per_exchange} bytes per exchange, {per_member} per member"
        );
    }
}
