//! Measurements of gossip and failure detection, on the core nodes with a simulated network.
//!
//! - [`convergence_rounds`]: how many gossip rounds pass until every node knows of a change
//!   made at one node (expect about log2(n) plus a constant);
//! - [`detection_time`]: how long until every live node believes a paused node is down;
//! - [`false_downs`]: how often a live node is wrongly believed down under message loss and
//!   delay jitter;
//! - [`bytes_per_exchange`]: the encoded size of one digest exchange in a steady cluster.
//!
//! Nodes here do only membership (the core's `Cluster`, which needs no store): no client load.

use dynamokv_core::membership::{Member, Status};
use dynamokv_core::node::cluster::Cluster;
use dynamokv_core::node::{NodeConfig, Outbox, Output};
use dynamokv_core::ring::hashed_tokens;
use dynamokv_core::rng::Rng;
use dynamokv_core::testing::Network;
use std::collections::BTreeSet;

const START: u64 = 1_800_000_000_000;

/// A cluster of membership-only nodes (the core's [`Cluster`], no store) over the shared
/// in-memory network.
pub struct Net {
    nodes: Vec<Cluster>,
    outboxes: Vec<Outbox>,
    ids: Vec<String>,
    paused: BTreeSet<usize>,
    net: Network,
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
                instance: 0,
                epoch: 0,
            })
            .collect();
        let config = NodeConfig::default();
        let mut outboxes = Vec::new();
        let nodes = members
            .iter()
            .map(|m| {
                let mut out = Outbox::default();
                let mut node = Cluster::new(
                    m.clone(),
                    config.detector(),
                    config.gossip_interval_ms,
                    rng.next_u64(),
                    &members,
                    &[],
                    &mut out,
                );
                for id in &ids {
                    node.assume_connected(id);
                }
                out.drain();
                outboxes.push(out);
                node
            })
            .collect();
        let mut net = Network::new(rng.next_u64());
        net.delay_ms = (1, 1);
        Net {
            nodes,
            outboxes,
            ids,
            paused: BTreeSet::new(),
            net,
            now: START,
            bytes: 0,
            messages: 0,
            count_bytes: false,
        }
    }

    /// Sets the probability of losing a message.
    pub fn set_loss(&mut self, loss: f64) {
        self.net.loss = loss;
    }

    /// Sets the largest extra delay of a message, ms (every message takes at least 1 ms).
    pub fn set_jitter(&mut self, jitter_ms: u64) {
        self.net.delay_ms = (1, 1 + jitter_ms);
    }

    fn collect(&mut self, i: usize) {
        for out in self.outboxes[i].drain() {
            if let Output::Send { to, message } = out {
                if !self.ids.contains(&to) {
                    continue;
                }
                if self.count_bytes {
                    self.bytes += postcard::to_allocvec(&message).map_or(0, |b| b.len() as u64);
                }
                self.messages += 1;
                self.net.send(self.now, &self.ids[i], &to, message);
            }
        }
    }

    /// Advances time by `ms`, ticking every node every 20 ms and delivering messages.
    pub fn advance(&mut self, ms: u64) {
        let end = self.now + ms;
        while self.now < end {
            let step_end = (self.now + 20).min(end);
            while let Some((t, env)) = self.net.next_before(step_end) {
                self.now = self.now.max(t);
                let Some(to) = self.ids.iter().position(|x| *x == env.to) else {
                    continue;
                };
                if self.paused.contains(&to) {
                    continue;
                }
                let node = &mut self.nodes[to];
                node.observe(self.now);
                node.heard_from(self.now, &env.from);
                if let dynamokv_core::message::Message::Gossip(m) = env.message {
                    node.on_message(&env.from, m, &mut self.outboxes[to]);
                }
                self.collect(to);
            }
            self.now = step_end;
            for i in 0..self.nodes.len() {
                if !self.paused.contains(&i) {
                    self.nodes[i].observe(self.now);
                    self.nodes[i].tick(self.now, &mut self.outboxes[i]);
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
    net.nodes[0].set_status(Status::Leaving, &mut net.outboxes[0]);
    net.collect(0);
    let interval = NodeConfig::default().gossip_interval_ms;
    let id = net.ids[0].clone();
    for round in 1..=200 {
        net.advance(interval);
        if net.nodes.iter().all(|node| {
            node.view()
                .members
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
    net.set_loss(loss);
    net.set_jitter(jitter_ms);
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
    net.set_loss(loss);
    net.set_jitter(jitter_ms);
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
