//! Anti-entropy measurements on three in-process nodes (the core's `Node` over the object
//! store on the in-memory engine): bytes exchanged to repair `d` differing keys against the
//! ideal, time and bytes to rebuild a wiped replica, and tree memory. Every peer message is
//! encoded with postcard to count its real size on the wire; messages are delivered at once,
//! and time advances in 20 ms ticks (the throttle's clock).

use dynamokv_core::clock::Now;
use dynamokv_core::membership::{Member, Status};
use dynamokv_core::message::{KvMessage, Message, RootAnswer, SyncMessage};
use dynamokv_core::node::{Node, NodeConfig, Output};
use dynamokv_core::ring::hashed_tokens;
use dynamokv_core::store::LocalStore;
use dynamokv_core::{ActorId, Object, VersionVector};
use dynamokv_storage::{MemoryEngine, ObjectStore};
use std::collections::VecDeque;
use std::sync::Arc;

type LabNode = Node<Arc<ObjectStore>>;

/// Three nodes holding every key (N = 3), wired by an in-process network.
pub struct Lab {
    nodes: Vec<LabNode>,
    members: Vec<Member>,
    config: NodeConfig,
    /// Simulated time, ms.
    pub now: u64,
    /// Bytes of anti-entropy messages sent since the last reset (postcard-encoded).
    pub sync_bytes: SyncBytes,
}

/// Anti-entropy bytes on the wire, by what they carry.
#[derive(Debug, Clone, Copy, Default)]
pub struct SyncBytes {
    /// Pushes and pulls: objects and the keys asked for.
    pub objects: u64,
    /// Roots, branches, leaves, key lists, reaps.
    pub tree: u64,
    /// Of `tree`: roots and "equal" answers.
    pub tree_equal: u64,
}

impl SyncBytes {
    /// Everything.
    pub fn total(&self) -> u64 {
        self.objects + self.tree
    }
}

fn member(i: usize, vnodes: u16) -> Member {
    Member {
        id: format!("n{i}"),
        generation: 1,
        version: 1,
        status: Status::Up,
        peer_addr: format!("p{i}"),
        http_addr: format!("h{i}"),
        tokens: hashed_tokens(&format!("n{i}"), vnodes),
        instance: 0,
        epoch: 0,
    }
}

/// The object a lab write stores: `value` written by actor 1 at time 1.
pub fn object(value: Vec<u8>) -> Object {
    Object::new().update(ActorId(1), &VersionVector::new(), Some(value), 1)
}

/// The lab's key names.
pub fn key(i: usize) -> Vec<u8> {
    format!("key-{i:07}").into_bytes()
}

impl Lab {
    /// Three nodes with `keys` keys of `value_size` bytes already on every replica, trees built.
    pub fn new(keys: usize, value_size: usize, config: NodeConfig) -> Lab {
        let members: Vec<Member> = (0..3).map(|i| member(i, 256)).collect();
        let stores: Vec<Arc<ObjectStore>> = (0..3)
            .map(|_| Arc::new(ObjectStore::new(Arc::new(MemoryEngine::new()))))
            .collect();
        for i in 0..keys {
            let o = object(vec![b'v'; value_size]);
            for s in &stores {
                let _ = s.merge(&key(i), &o);
            }
        }
        let mut lab = Lab {
            nodes: Vec::new(),
            members,
            config,
            now: 1_000,
            sync_bytes: SyncBytes::default(),
        };
        lab.nodes = stores
            .into_iter()
            .enumerate()
            .map(|(i, s)| lab.node(i, s))
            .collect();
        lab.run_until(|l| l.trees_ready(), 600_000);
        lab.sync_bytes = SyncBytes::default();
        lab
    }

    fn node(&self, i: usize, store: Arc<ObjectStore>) -> LabNode {
        let mut n = Node::new(
            self.members[i].clone(),
            ActorId(100 + i as u64),
            self.config,
            store,
            i as u64,
            &self.members,
            &[],
        );
        for m in &self.members {
            n.assume_connected(&m.id);
        }
        n.drain();
        n
    }

    fn trees_ready(&self) -> bool {
        self.nodes
            .iter()
            .all(|n| n.anti_entropy_stats().trees_building == 0 && n.anti_entropy_stats().trees > 0)
    }

    /// Node `i`'s store.
    pub fn store(&self, i: usize) -> &ObjectStore {
        self.nodes[i].store()
    }

    /// Node `i` loses its disk: a new, empty store (and a new actor).
    pub fn wipe(&mut self, i: usize) {
        let store = Arc::new(ObjectStore::new(Arc::new(MemoryEngine::new())));
        self.nodes[i] = self.node(i, store);
    }

    /// Node `i` alone receives a new version of key `k` (as a replica, from node `from`'s
    /// coordinator): its copy now differs from the others'.
    pub fn write_one(&mut self, i: usize, from: usize, k: &[u8], value: Vec<u8>) {
        let current = self.nodes[i]
            .store()
            .get(k)
            .ok()
            .flatten()
            .unwrap_or_default();
        let object = current.update(ActorId(7), &current.context(), Some(value), self.now);
        let message = Message::Kv(KvMessage::Replicate {
            id: 0,
            key: k.to_vec(),
            object,
            hint: None,
        });
        let id = self.members[from].id.clone();
        self.nodes[i].step(Now::at(self.now), &id, message);
        // The acknowledgement goes nowhere.
        self.nodes[i].drain();
    }

    /// Asks node `i` for a repair round now; returns the round's id.
    pub fn repair(&mut self, i: usize) -> u64 {
        self.nodes[i].repair()
    }

    /// Whether node `i` finished round `id`.
    pub fn finished(&self, i: usize, id: u64) -> bool {
        self.stats(i).last_round >= id
    }

    /// Whether node `i` believes every other node is up.
    pub fn sees_all_up(&self, i: usize) -> bool {
        self.members.iter().all(|m| self.nodes[i].is_up(&m.id))
    }

    fn deliver(&mut self, from: usize) {
        let mut queue: VecDeque<(usize, Output)> = self.nodes[from]
            .drain()
            .into_iter()
            .map(|o| (from, o))
            .collect();
        while let Some((src, out)) = queue.pop_front() {
            let Output::Send { to, message } = out else {
                continue;
            };
            if let Message::Sync(m) = &message {
                let n = postcard::to_allocvec(&message).map_or(0, |b| b.len()) as u64;
                match m {
                    SyncMessage::Push { .. } | SyncMessage::Pull { .. } => {
                        self.sync_bytes.objects += n
                    }
                    SyncMessage::Root { .. }
                    | SyncMessage::RootReply {
                        answer: RootAnswer::Equal,
                        ..
                    } => {
                        self.sync_bytes.tree += n;
                        self.sync_bytes.tree_equal += n;
                    }
                    _ => self.sync_bytes.tree += n,
                }
            }
            let Some(j) = self.members.iter().position(|m| m.id == to) else {
                continue;
            };
            let now = Now::at(self.now);
            let id = self.members[src].id.clone();
            self.nodes[j].step(now, &id, message);
            queue.extend(self.nodes[j].drain().into_iter().map(|o| (j, o)));
        }
    }

    /// Ticks every node every 20 ms until `done` or `limit_ms` of simulated time passed;
    /// returns the simulated ms it took.
    pub fn run_until(&mut self, done: impl Fn(&Lab) -> bool, limit_ms: u64) -> u64 {
        let start = self.now;
        while !done(self) && self.now - start < limit_ms {
            self.now += 20;
            for i in 0..self.nodes.len() {
                self.nodes[i].tick(Now::at(self.now));
                self.deliver(i);
            }
        }
        self.now - start
    }

    /// Whether node `i` holds the same copy of every key `0..keys` as node `j`.
    pub fn same(&self, i: usize, j: usize, keys: usize) -> bool {
        (0..keys).all(|k| {
            let key = key(k);
            self.store(i).get(&key).ok().flatten() == self.store(j).get(&key).ok().flatten()
        })
    }

    /// Anti-entropy counters of node `i`.
    pub fn stats(&self, i: usize) -> dynamokv_core::node::AntiEntropyStats {
        self.nodes[i].anti_entropy_stats()
    }
}

/// The postcard size of key `k`'s object on node `i` plus its key: what moving it costs at
/// least.
pub fn object_bytes(lab: &Lab, i: usize, k: &[u8]) -> u64 {
    lab.store(i).get(k).ok().flatten().map_or(0, |o| {
        (postcard::to_allocvec(&o).map_or(0, |b| b.len()) + k.len()) as u64
    })
}
