//! dynamokv-sim: a deterministic whole-cluster simulator over the same core code the server runs.
//!
//! One thread, one seed. The simulator runs many [`dynamokv_core::node::Node`]s, each over the
//! in-memory engine through `ObjectStore`. Time is simulated, and so is the network:
//! - per-message delay and reordering, and loss;
//! - one-way and two-way partitions that come and heal;
//! - node crashes and restarts, and pauses;
//! - per-node clock skew for the timestamps in vector entries.
//!
//! Clients issue gets, puts with the context of their last read, blind puts and deletes, with
//! random valid R/W. Every operation is recorded with its outcome. When the fault window ends,
//! every fault heals and the cluster settles. Every key is then read at R=N, which repairs stale
//! replicas. Finally the [`checker`] compares the history with every replica's copy.
//!
//! Same seed, same run: every decision comes from the seeded [`Rng`], events are ordered by
//! (time, sequence number), and the core iterates only ordered maps. Every event feeds a hash,
//! `trace_hash`, so two runs of one seed can be compared bit for bit.
//!
//! Crash model: a node acknowledges a write only after its engine applied it. The simulated
//! engine behaves like `sync = always`, so a crash loses the node's in-memory state (requests in
//! flight, who is up, pending quorums) but nothing that was acknowledged. A restarted node
//! takes a new actor id, as the server does after an unclean shutdown.

pub mod checker;
pub mod gossip_lab;

use checker::{Outcome, Violation, WriteRecord};
use dynamokv_core::clock::Now;
use dynamokv_core::membership::Member;
use dynamokv_core::message::{
    ClientId, ClientRequest, ClientResponse, GossipMessage, HandoffMessage, KvMessage, Message,
    OpError, Reply,
};
use dynamokv_core::node::{Node, NodeConfig, Output};
use dynamokv_core::ring::hashed_tokens;
use dynamokv_core::store::LocalStore;
use dynamokv_core::{ActorId, Object, VersionVector};
use dynamokv_storage::{MemoryEngine, ObjectStore};
use std::cmp::Reverse;
use std::collections::{BTreeMap, BTreeSet, BinaryHeap};
use std::sync::Arc;

/// The simulator's only source of randomness (the core's splitmix64).
pub use dynamokv_core::rng::Rng;

/// Which faults a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// Node crashes and restarts.
    pub crash: bool,
    /// Node pauses (a stopped process: no answers, no connection loss).
    pub pause: bool,
    /// One-way and two-way partitions.
    pub partition: bool,
    /// Random message loss (5% while active).
    pub loss: bool,
    /// Message delays up to 50 ms (reordering).
    pub delay: bool,
    /// Per-node clock skew up to ±2 s.
    pub skew: bool,
}

impl Faults {
    /// Every fault kind.
    pub fn all() -> Self {
        Faults {
            crash: true,
            pause: true,
            partition: true,
            loss: true,
            delay: true,
            skew: true,
        }
    }

    /// Parses `all`, `none`, or a comma-separated list of kinds.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut f = Faults::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => f = Faults::all(),
                "none" => {}
                "crash" => f.crash = true,
                "pause" => f.pause = true,
                "partition" => f.partition = true,
                "loss" => f.loss = true,
                "delay" => f.delay = true,
                "skew" => f.skew = true,
                other => {
                    return Err(format!(
                        "unknown fault {other:?}: use crash, pause, partition, loss, delay, skew, all or none"
                    ));
                }
            }
        }
        Ok(f)
    }

    /// The kinds as the command line spells them.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = [
            (self.crash, "crash"),
            (self.pause, "pause"),
            (self.partition, "partition"),
            (self.loss, "loss"),
            (self.delay, "delay"),
            (self.skew, "skew"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(",")
        }
    }
}

/// What to simulate.
#[derive(Debug, Clone)]
pub struct SimConfig {
    /// The seed.
    pub seed: u64,
    /// Number of nodes.
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Distinct keys (few, so writes conflict).
    pub keys: usize,
    /// Operations to issue in total.
    pub ops: usize,
    /// Fault kinds.
    pub faults: Faults,
    /// Tokens per node.
    pub vnodes: u16,
    /// Coordination settings.
    pub node: NodeConfig,
    /// Record a readable event log.
    pub trace: bool,
}

impl SimConfig {
    /// Defaults for `seed`: 5 nodes, 4 clients, 12 keys, 200 ops, every fault.
    pub fn new(seed: u64) -> Self {
        SimConfig {
            seed,
            nodes: 5,
            clients: 4,
            keys: 12,
            ops: 200,
            faults: Faults::all(),
            vnodes: 16,
            node: NodeConfig::default(),
            trace: false,
        }
    }
}

/// What a run did and found.
#[derive(Debug, Clone)]
pub struct Report {
    /// The seed.
    pub seed: u64,
    /// Operations completed (any outcome).
    pub ops: usize,
    /// Of which acknowledged.
    pub ok: usize,
    /// Failed.
    pub failed: usize,
    /// No answer.
    pub unknown: usize,
    /// Fault episodes injected.
    pub faults: usize,
    /// Messages delivered.
    pub delivered: u64,
    /// Messages dropped (loss, partitions, dead or paused destinations).
    pub dropped: u64,
    /// Simulated time, ms.
    pub sim_ms: u64,
    /// Hash of the full event trace.
    pub trace_hash: u64,
    /// Replicas stored by fallbacks with a hint (sloppy quorum), over all nodes.
    pub hints_stored: u64,
    /// Hints handed back to their owners.
    pub hints_delivered: u64,
    /// Invariant violations found.
    pub violations: Vec<Violation>,
    /// The event log, when asked for.
    pub trace: Vec<String>,
}

const EPOCH: u64 = 1_800_000_000_000;
const TICK_MS: u64 = 20;
const CLIENT_TIMEOUT_MS: u64 = 5_000;

type CoreNode = Node<Arc<ObjectStore>>;

struct SimNode {
    member: Member,
    /// The persisted membership history (survives crashes).
    history: Vec<Member>,
    core: Option<CoreNode>,
    store: Arc<ObjectStore>,
    paused: bool,
    held: Vec<Ev>,
    skew: i64,
    actors: u64,
}

#[derive(Debug, Clone)]
enum Ev {
    Deliver {
        from: usize,
        to: usize,
        message: Message,
    },
    Request {
        to: usize,
        client: ClientId,
        request: ClientRequest,
    },
    Tick,
    ClientNext(usize),
    ClientTimeout(usize, usize),
    Crash(usize),
    Restart(usize),
    Pause(usize),
    Resume(usize),
    Cut(Vec<(usize, usize)>),
    Heal(Vec<(usize, usize)>),
    Loss(bool),
}

#[derive(Debug, Clone)]
struct OpRecord {
    client: usize,
    key: Vec<u8>,
    write: Option<(Option<Vec<u8>>, VersionVector, Option<u8>)>,
    done: bool,
    outcome: Option<Outcome>,
    dot: Option<dynamokv_core::Dot>,
}

struct Client {
    busy: Option<usize>,
    contexts: BTreeMap<Vec<u8>, VersionVector>,
}

/// A simulation run.
pub struct Sim {
    cfg: SimConfig,
    rng: Rng,
    now: u64,
    seq: u64,
    queue: BinaryHeap<Reverse<(u64, u64)>>,
    events: BTreeMap<u64, Ev>,
    nodes: Vec<SimNode>,
    cut: BTreeSet<(usize, usize)>,
    loss: bool,
    clients: Vec<Client>,
    ops: Vec<OpRecord>,
    pending: BTreeMap<ClientId, (usize, usize)>,
    next_client_id: ClientId,
    issued: usize,
    faults: usize,
    delivered: u64,
    dropped: u64,
    hasher: xxhash_rust::xxh3::Xxh3,
    trace: Vec<String>,
    violations: Vec<Violation>,
    stop_issuing: bool,
    /// Hint counters of node incarnations that crashed (stored, delivered).
    crashed_hint_stats: (u64, u64),
}

fn key_name(i: usize) -> Vec<u8> {
    format!("key{i:03}").into_bytes()
}

fn message_kind(m: &Message) -> (u8, &[u8]) {
    match m {
        Message::Kv(KvMessage::Forward { request, .. }) => (0, request.key()),
        Message::Kv(KvMessage::ForwardReply { .. }) => (1, &[]),
        Message::Kv(KvMessage::Replicate { key, .. }) => (2, key),
        Message::Kv(KvMessage::ReplicateAck { .. }) => (3, &[]),
        Message::Kv(KvMessage::Read { key, .. }) => (4, key),
        Message::Kv(KvMessage::ReadReply { .. }) => (5, &[]),
        Message::Kv(KvMessage::Repair { key, .. }) => (6, key),
        Message::Gossip(GossipMessage::Syn { .. }) => (7, &[]),
        Message::Gossip(GossipMessage::SynAck { .. }) => (8, &[]),
        Message::Gossip(GossipMessage::Ack { .. }) => (9, &[]),
        Message::Handoff(HandoffMessage::Deliver { key, .. }) => (10, key),
        Message::Handoff(HandoffMessage::Ack { .. }) => (11, &[]),
    }
}

impl Sim {
    /// Builds the cluster for `cfg`.
    pub fn new(cfg: SimConfig) -> Sim {
        let mut rng = Rng::new(cfg.seed);
        let members: Vec<Member> = (0..cfg.nodes)
            .map(|i| {
                let id = format!("n{i:03}");
                Member {
                    tokens: hashed_tokens(&id, cfg.vnodes),
                    id,
                    generation: EPOCH,
                    version: 1,
                    status: dynamokv_core::membership::Status::Up,
                    peer_addr: format!("sim:{i}"),
                    http_addr: format!("sim:{i}"),
                }
            })
            .collect();
        let mut nodes = Vec::new();
        for m in &members {
            let skew = if cfg.faults.skew {
                rng.range(0, 4000) as i64 - 2000
            } else {
                0
            };
            let store = Arc::new(ObjectStore::new(Arc::new(MemoryEngine::new())));
            let mut core = Node::new(
                m.clone(),
                ActorId(rng.next_u64()),
                cfg.node,
                store.clone(),
                rng.next_u64(),
                &members,
            );
            // Start converged and connected: the history each node would have persisted.
            for other in &members {
                core.assume_connected(&other.id);
            }
            core.drain();
            nodes.push(SimNode {
                member: m.clone(),
                history: members.clone(),
                core: Some(core),
                store,
                paused: false,
                held: Vec::new(),
                skew,
                actors: 1,
            });
        }
        let clients = (0..cfg.clients)
            .map(|_| Client {
                busy: None,
                contexts: BTreeMap::new(),
            })
            .collect();
        Sim {
            rng,
            now: EPOCH,
            seq: 0,
            queue: BinaryHeap::new(),
            events: BTreeMap::new(),
            nodes,
            cut: BTreeSet::new(),
            loss: false,
            clients,
            ops: Vec::new(),
            pending: BTreeMap::new(),
            next_client_id: 1,
            issued: 0,
            faults: 0,
            delivered: 0,
            dropped: 0,
            hasher: xxhash_rust::xxh3::Xxh3::new(),
            trace: Vec::new(),
            violations: Vec::new(),
            stop_issuing: false,
            crashed_hint_stats: (0, 0),
            cfg,
        }
    }

    fn at(&mut self, time: u64, ev: Ev) {
        self.seq += 1;
        self.queue.push(Reverse((time, self.seq)));
        self.events.insert(self.seq, ev);
    }

    /// Node `i`'s clocks: the simulated time on its monotonic clock, and the simulated time
    /// plus its skew on its wall clock.
    fn node_now(&self, i: usize) -> Now {
        Now {
            mono: self.now,
            wall: self.now.saturating_add_signed(self.nodes[i].skew),
        }
    }

    fn log(&mut self, line: impl FnOnce() -> String) {
        if self.cfg.trace {
            let l = line();
            self.trace.push(format!("{:>8} {l}", self.now - EPOCH));
        }
    }

    fn hash(&mut self, parts: &[u64], bytes: &[u8]) {
        for p in parts {
            self.hasher.update(&p.to_le_bytes());
        }
        self.hasher.update(bytes);
    }

    fn index_of(&self, id: &str) -> Option<usize> {
        id.strip_prefix('n')
            .and_then(|n| n.parse().ok())
            .filter(|i: &usize| *i < self.nodes.len())
    }

    /// Moves node `i`'s outputs into the network and the client histories.
    fn drain(&mut self, i: usize) {
        let outs = match self.nodes[i].core.as_mut() {
            Some(c) => c.drain(),
            None => return,
        };
        for out in outs {
            match out {
                Output::Send { to, message } => {
                    let Some(j) = self.index_of(&to) else {
                        continue;
                    };
                    let delay = if self.cfg.faults.delay {
                        self.rng.range(1, 50)
                    } else {
                        self.rng.range(1, 3)
                    };
                    if self.cut.contains(&(i, j)) || (self.loss && self.rng.chance(0.05)) {
                        self.dropped += 1;
                        continue;
                    }
                    self.at(
                        self.now + delay,
                        Ev::Deliver {
                            from: i,
                            to: j,
                            message,
                        },
                    );
                }
                Output::Respond { client, response } => self.answer(client, response),
                Output::Persist(member) => self.nodes[i].history.push(member),
            }
        }
    }

    fn answer(&mut self, cid: ClientId, response: ClientResponse) {
        let Some((c, op)) = self.pending.remove(&cid) else {
            return;
        };
        if self.ops[op].done {
            return;
        }
        let key = self.ops[op].key.clone();
        let is_write = self.ops[op].write.is_some();
        let outcome = match &response {
            Ok(_) => Outcome::Ok,
            Err(OpError::Unavailable { written, .. }) => Outcome::Failed {
                maybe_written: *written,
            },
            Err(OpError::CoordinatorUnreachable { .. }) => Outcome::Unknown,
            Err(_) => Outcome::Failed {
                maybe_written: false,
            },
        };
        match response {
            Ok(Reply::Read(obj)) => {
                self.clients[c].contexts.insert(key.clone(), obj.context());
            }
            Ok(Reply::Written { object, dot }) => {
                self.ops[op].dot = Some(dot);
                self.clients[c]
                    .contexts
                    .insert(key.clone(), object.context());
                self.check_ack(op, dot);
            }
            Err(_) => {}
        }
        self.log(|| {
            format!(
                "client {c} op {op} {} -> {outcome:?}",
                if is_write { "write" } else { "read" }
            )
        });
        self.ops[op].done = true;
        self.ops[op].outcome = Some(outcome);
        self.finish_op(c);
    }

    /// An acknowledged write must be held by at least W of its primaries right now.
    fn check_ack(&mut self, op: usize, dot: dynamokv_core::Dot) {
        let key = self.ops[op].key.clone();
        let w = self.ops[op]
            .write
            .as_ref()
            .and_then(|(_, _, w)| *w)
            .unwrap_or(self.cfg.node.w) as usize;
        // Holders: nodes whose own copy, or a hint they keep, has the write.
        let holders = self
            .nodes
            .iter()
            .filter(|n| {
                n.store
                    .get(&key)
                    .ok()
                    .flatten()
                    .is_some_and(|o| o.clock().covers(dot))
                    || n.store
                        .hints_for_key(&key)
                        .unwrap_or_default()
                        .iter()
                        .any(|h| h.object.clock().covers(dot))
            })
            .count();
        if holders < w {
            self.violations.push(Violation::UnderReplicatedAck {
                key,
                dot,
                holders,
                needed: w,
            });
        }
    }

    fn primaries(&self, key: &[u8]) -> Vec<usize> {
        let ring_owner = self
            .nodes
            .iter()
            .find_map(|n| n.core.as_ref())
            .map(|c| c.preference(key).primaries);
        ring_owner
            .unwrap_or_default()
            .iter()
            .filter_map(|id| self.index_of(id))
            .collect()
    }

    fn finish_op(&mut self, c: usize) {
        self.clients[c].busy = None;
        let think = self.rng.range(1, 10);
        self.at(self.now + think, Ev::ClientNext(c));
    }

    fn client_next(&mut self, c: usize) {
        if self.clients[c].busy.is_some() || self.stop_issuing || self.issued >= self.cfg.ops {
            return;
        }
        self.issued += 1;
        let k = key_name(self.rng.below(self.cfg.keys as u64) as usize);
        let n = self.cfg.node.n;
        let quorum = if self.rng.chance(0.3) {
            Some(self.rng.range(1, u64::from(n)) as u8)
        } else {
            None
        };
        let roll = self.rng.below(100);
        let op = self.ops.len();
        let value = format!("c{c}-op{op}").into_bytes();
        let last = self.clients[c]
            .contexts
            .get(&k)
            .cloned()
            .unwrap_or_default();
        // Now and then ask for primaries explicitly (PR/PW), which refuses sloppy quorums.
        let strict = if self.rng.chance(0.1) {
            Some(self.rng.range(1, u64::from(n)) as u8)
        } else {
            None
        };
        let (request, write) = match roll {
            0..30 => (
                ClientRequest::Get {
                    key: k.clone(),
                    r: quorum,
                    pr: strict,
                },
                None,
            ),
            30..65 => (
                ClientRequest::Put {
                    key: k.clone(),
                    value: Some(value.clone()),
                    context: Some(last.clone()),
                    w: quorum,
                    pw: strict,
                },
                Some((Some(value), last, quorum)),
            ),
            65..80 => (
                ClientRequest::Put {
                    key: k.clone(),
                    value: Some(value.clone()),
                    context: Some(VersionVector::new()),
                    w: quorum,
                    pw: strict,
                },
                Some((Some(value), VersionVector::new(), quorum)),
            ),
            80..92 => (
                ClientRequest::Put {
                    key: k.clone(),
                    value: None,
                    context: Some(last.clone()),
                    w: quorum,
                    pw: strict,
                },
                Some((None, last, quorum)),
            ),
            _ => (
                ClientRequest::Put {
                    key: k.clone(),
                    value: None,
                    context: Some(VersionVector::new()),
                    w: quorum,
                    pw: strict,
                },
                Some((None, VersionVector::new(), quorum)),
            ),
        };
        self.ops.push(OpRecord {
            client: c,
            key: k,
            write,
            done: false,
            outcome: None,
            dot: None,
        });
        let to = self.rng.below(self.nodes.len() as u64) as usize;
        self.clients[c].busy = Some(op);
        if self.nodes[to].core.is_none() {
            // Connection refused: nothing was sent.
            self.ops[op].done = true;
            self.ops[op].outcome = Some(Outcome::Failed {
                maybe_written: false,
            });
            self.finish_op(c);
            return;
        }
        let cid = self.next_client_id;
        self.next_client_id += 1;
        self.pending.insert(cid, (c, op));
        self.at(
            self.now + 1,
            Ev::Request {
                to,
                client: cid,
                request,
            },
        );
        self.at(self.now + CLIENT_TIMEOUT_MS, Ev::ClientTimeout(c, op));
    }

    fn step(&mut self, time: u64, ev: Ev) {
        self.now = time;
        match ev {
            Ev::Deliver { from, to, message } => {
                let (kind, key) = message_kind(&message);
                let (kind, key) = (kind, key.to_vec());
                self.hash(&[time, 1, from as u64, to as u64, kind.into()], &key);
                if self.nodes[to].core.is_none() || self.cut.contains(&(from, to)) {
                    self.dropped += 1;
                    return;
                }
                if self.nodes[to].paused {
                    self.nodes[to].held.push(Ev::Deliver { from, to, message });
                    return;
                }
                self.delivered += 1;
                let now = self.node_now(to);
                let from_id = self.nodes[from].member.id.clone();
                if let Some(core) = self.nodes[to].core.as_mut() {
                    core.step(now, &from_id, message);
                }
                self.drain(to);
            }
            Ev::Request {
                to,
                client,
                request,
            } => {
                self.hash(&[time, 2, to as u64, client], request.key());
                if self.nodes[to].core.is_none() {
                    return;
                }
                if self.nodes[to].paused {
                    self.nodes[to].held.push(Ev::Request {
                        to,
                        client,
                        request,
                    });
                    return;
                }
                let now = self.node_now(to);
                if let Some(core) = self.nodes[to].core.as_mut() {
                    core.request(now, client, request);
                }
                self.drain(to);
            }
            Ev::Tick => {
                self.hash(&[time, 3], &[]);
                for i in 0..self.nodes.len() {
                    if self.nodes[i].paused {
                        continue;
                    }
                    let now = self.node_now(i);
                    if let Some(core) = self.nodes[i].core.as_mut() {
                        core.tick(now);
                    }
                    self.drain(i);
                }
                self.at(time + TICK_MS, Ev::Tick);
            }
            Ev::ClientNext(c) => {
                self.hash(&[time, 4, c as u64], &[]);
                self.client_next(c);
            }
            Ev::ClientTimeout(c, op) => {
                if !self.ops[op].done {
                    self.hash(&[time, 5, c as u64, op as u64], &[]);
                    self.log(|| format!("client {c} op {op} timed out"));
                    self.ops[op].done = true;
                    self.ops[op].outcome = Some(Outcome::Unknown);
                    self.pending.retain(|_, v| *v != (c, op));
                    self.finish_op(c);
                }
            }
            Ev::Crash(i) => {
                self.hash(&[time, 6, i as u64], &[]);
                if let Some(dead) = self.nodes[i].core.take() {
                    self.crashed_hint_stats.0 += dead.stats().hints_stored;
                    self.crashed_hint_stats.1 += dead.stats().hints_delivered;
                    self.log(|| format!("crash n{i:03}"));
                    self.nodes[i].paused = false;
                    self.nodes[i].held.clear();
                    let id = self.nodes[i].member.id.clone();
                    for j in 0..self.nodes.len() {
                        let now = self.node_now(j);
                        if let Some(core) = self.nodes[j].core.as_mut() {
                            core.peer_down(now, &id);
                        }
                        self.drain(j);
                    }
                }
            }
            Ev::Restart(i) => {
                self.hash(&[time, 7, i as u64], &[]);
                if self.nodes[i].core.is_none() {
                    self.log(|| format!("restart n{i:03}"));
                    let mut member = self.nodes[i].member.clone();
                    member.generation = self.node_now(i).wall;
                    self.nodes[i].actors += 1;
                    let seed = self.rng.next_u64();
                    let actor = ActorId(self.rng.next_u64());
                    let history = self.nodes[i].history.clone();
                    let mut core = Node::new(
                        member,
                        actor,
                        self.cfg.node,
                        self.nodes[i].store.clone(),
                        seed,
                        &history,
                    );
                    self.nodes[i].member = core.me().clone();
                    let now = self.node_now(i);
                    core.tick(now);
                    self.nodes[i].core = Some(core);
                    // Connections come back both ways.
                    let id = self.nodes[i].member.id.clone();
                    for j in 0..self.nodes.len() {
                        if j == i || self.nodes[j].core.is_none() {
                            continue;
                        }
                        let other = self.nodes[j].member.id.clone();
                        if let Some(c) = self.nodes[i].core.as_mut() {
                            c.peer_up(&other);
                        }
                        if let Some(c) = self.nodes[j].core.as_mut() {
                            c.peer_up(&id);
                        }
                        self.drain(j);
                    }
                    self.drain(i);
                }
            }
            Ev::Pause(i) => {
                self.hash(&[time, 8, i as u64], &[]);
                if self.nodes[i].core.is_some() {
                    self.log(|| format!("pause n{i:03}"));
                    self.nodes[i].paused = true;
                }
            }
            Ev::Resume(i) => {
                self.hash(&[time, 9, i as u64], &[]);
                if self.nodes[i].paused {
                    self.log(|| format!("resume n{i:03}"));
                    self.nodes[i].paused = false;
                    let held = std::mem::take(&mut self.nodes[i].held);
                    for ev in held {
                        self.step(time, ev);
                    }
                }
            }
            Ev::Cut(links) => {
                self.hash(&[time, 10, links.len() as u64], &[]);
                self.log(|| format!("cut {links:?}"));
                self.cut.extend(links);
            }
            Ev::Heal(links) => {
                self.hash(&[time, 11, links.len() as u64], &[]);
                self.log(|| format!("heal {links:?}"));
                for l in links {
                    self.cut.remove(&l);
                }
            }
            Ev::Loss(on) => {
                self.hash(&[time, 12, u64::from(on)], &[]);
                self.log(|| format!("loss {on}"));
                self.loss = on;
            }
        }
    }

    /// Schedules the fault episodes inside `[start, end)`.
    fn schedule_faults(&mut self, start: u64, end: u64) {
        let f = self.cfg.faults;
        let mut kinds = Vec::new();
        if f.crash {
            kinds.push(0);
        }
        if f.pause {
            kinds.push(1);
        }
        if f.partition {
            kinds.push(2);
        }
        if f.loss {
            kinds.push(3);
        }
        if kinds.is_empty() {
            return;
        }
        let episodes = self.rng.range(2, 6);
        let n = self.nodes.len();
        for _ in 0..episodes {
            let t0 = self.rng.range(start, end);
            let len = self.rng.range(200, 3000);
            let kind = kinds[self.rng.below(kinds.len() as u64) as usize];
            let victim = self.rng.below(n as u64) as usize;
            self.faults += 1;
            match kind {
                0 => {
                    self.at(t0, Ev::Crash(victim));
                    self.at(t0 + len, Ev::Restart(victim));
                }
                1 => {
                    self.at(t0, Ev::Pause(victim));
                    self.at(t0 + len, Ev::Resume(victim));
                }
                2 => {
                    let side: BTreeSet<usize> = (0..n).filter(|_| self.rng.chance(0.4)).collect();
                    let one_way = self.rng.chance(0.3);
                    let mut links = Vec::new();
                    for a in 0..n {
                        for b in 0..n {
                            if side.contains(&a) && !side.contains(&b) {
                                links.push((a, b));
                                if !one_way {
                                    links.push((b, a));
                                }
                            }
                        }
                    }
                    self.at(t0, Ev::Cut(links.clone()));
                    self.at(t0 + len, Ev::Heal(links));
                }
                _ => {
                    self.at(t0, Ev::Loss(true));
                    self.at(t0 + len, Ev::Loss(false));
                }
            }
        }
    }

    fn run_until(&mut self, end: u64) {
        while let Some(Reverse((time, seq))) = self.queue.peek().copied() {
            if time > end {
                break;
            }
            self.queue.pop();
            if let Some(ev) = self.events.remove(&seq) {
                self.step(time, ev);
            }
        }
        self.now = end;
    }

    /// Hints kept anywhere in the cluster.
    fn hints_pending(&self) -> usize {
        self.nodes
            .iter()
            .map(|n| n.store.scan_hints(None, usize::MAX).map_or(0, |h| h.len()))
            .sum()
    }

    /// Whether every node believes every other node is up.
    fn all_up(&self) -> bool {
        self.nodes.iter().all(|n| {
            n.core
                .as_ref()
                .is_some_and(|c| self.nodes.iter().all(|o| c.is_up(&o.member.id)))
        })
    }

    /// After the heal: every node holds the same membership view and ring version.
    fn check_membership(&mut self) {
        let views: Vec<(String, u64, BTreeMap<String, Member>)> = self
            .nodes
            .iter()
            .filter_map(|n| n.core.as_ref())
            .map(|c| (c.id().to_owned(), c.ring().version(), c.members().clone()))
            .collect();
        if let Some((first, version, members)) = views.first() {
            for (id, v, m) in &views[1..] {
                if v != version || m != members {
                    self.violations.push(Violation::Membership {
                        what: format!("{id} and {first} disagree on the membership view or ring version after the heal"),
                    });
                    return;
                }
            }
            if members.len() != self.nodes.len() {
                self.violations.push(Violation::Membership {
                    what: format!(
                        "the view has {} members, the cluster {}",
                        members.len(),
                        self.nodes.len()
                    ),
                });
            }
        }
    }

    fn all_done(&self) -> bool {
        self.issued >= self.cfg.ops && self.clients.iter().all(|c| c.busy.is_none())
    }

    /// Runs the workload with faults, heals, settles, and checks.
    pub fn run(mut self) -> Report {
        self.at(self.now, Ev::Tick);
        for c in 0..self.clients.len() {
            self.at(self.now + c as u64, Ev::ClientNext(c));
        }
        // Faults hit while the workload runs (roughly 10 ms per operation per client).
        let window = (self.cfg.ops as u64 * 10 / self.cfg.clients.max(1) as u64).max(2000);
        self.schedule_faults(self.now + 100, self.now + window);
        // Run until the workload is done (bounded).
        let limit = self.now + window * 20 + 60_000;
        while !self.all_done() && self.now < limit {
            let next = self.now + 100;
            self.run_until(next);
        }
        self.stop_issuing = true;
        // Heal everything.
        self.run_until(self.now.max(EPOCH + window + 3000));
        let t = self.now + 1;
        for i in 0..self.nodes.len() {
            self.at(t, Ev::Restart(i));
            self.at(t, Ev::Resume(i));
        }
        let all: Vec<(usize, usize)> = self.cut.iter().copied().collect();
        self.at(t, Ev::Heal(all));
        self.at(t, Ev::Loss(false));
        self.run_until(t + 3000);
        // Wait (bounded) until every node believes every other is up again.
        let deadline = self.now + 60_000;
        while !(self.all_up() && self.hints_pending() == 0) && self.now < deadline {
            let next = self.now + 250;
            self.run_until(next);
        }
        if self.hints_pending() > 0 {
            self.violations.push(Violation::Membership {
                what: format!(
                    "{} hints still undelivered 60 s after the heal",
                    self.hints_pending()
                ),
            });
        }
        if !self.all_up() {
            self.violations.push(Violation::Membership {
                what: "some node still believes a live peer is down 60 s after the faults healed"
                    .into(),
            });
        }
        // Repair: read every key at R=N through its first primary.
        let n = self.cfg.node.n;
        for k in 0..self.cfg.keys {
            let key = key_name(k);
            let Some(&first) = self.primaries(&key).first() else {
                continue;
            };
            let cid = self.next_client_id;
            self.next_client_id += 1;
            self.at(
                self.now + 1,
                Ev::Request {
                    to: first,
                    client: cid,
                    request: ClientRequest::Get {
                        key,
                        r: Some(n),
                        pr: None,
                    },
                },
            );
        }
        let settle = self.now + 5000;
        self.run_until(settle);

        // Final state of every key on its primaries.
        let mut replicas: BTreeMap<Vec<u8>, Vec<(String, Option<Object>)>> = BTreeMap::new();
        for k in 0..self.cfg.keys {
            let key = key_name(k);
            let copies = self
                .primaries(&key)
                .into_iter()
                .map(|p| {
                    (
                        self.nodes[p].member.id.clone(),
                        self.nodes[p].store.get(&key).ok().flatten(),
                    )
                })
                .collect();
            replicas.insert(key, copies);
        }
        let writes: Vec<WriteRecord> = self
            .ops
            .iter()
            .filter_map(|o| {
                let (value, context, _) = o.write.clone()?;
                Some(WriteRecord {
                    key: o.key.clone(),
                    value,
                    context,
                    outcome: o.outcome.unwrap_or(Outcome::Unknown),
                    dot: o.dot,
                })
            })
            .collect();
        self.check_membership();
        let mut violations = std::mem::take(&mut self.violations);
        violations.extend(checker::check(&writes, &replicas));
        let count = |f: &dyn Fn(&Outcome) -> bool| {
            self.ops
                .iter()
                .filter(|o| o.outcome.as_ref().is_some_and(f))
                .count()
        };
        let _ = self.ops.iter().map(|o| o.client).max();
        Report {
            seed: self.cfg.seed,
            ops: self.ops.len(),
            ok: count(&|o| *o == Outcome::Ok),
            failed: count(&|o| matches!(o, Outcome::Failed { .. })),
            unknown: count(&|o| *o == Outcome::Unknown),
            faults: self.faults,
            delivered: self.delivered,
            dropped: self.dropped,
            sim_ms: self.now - EPOCH,
            trace_hash: self.hasher.digest(),
            hints_stored: self.crashed_hint_stats.0
                + self
                    .nodes
                    .iter()
                    .filter_map(|n| n.core.as_ref())
                    .map(|c| c.stats().hints_stored)
                    .sum::<u64>(),
            hints_delivered: self.crashed_hint_stats.1
                + self
                    .nodes
                    .iter()
                    .filter_map(|n| n.core.as_ref())
                    .map(|c| c.stats().hints_delivered)
                    .sum::<u64>(),
            violations,
            trace: std::mem::take(&mut self.trace),
        }
    }
}

/// Runs one seed with `cfg`'s settings.
pub fn run_seed(cfg: &SimConfig, seed: u64) -> Report {
    let mut c = cfg.clone();
    c.seed = seed;
    Sim::new(c).run()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_trace() {
        let cfg = SimConfig::new(42);
        let a = run_seed(&cfg, 42);
        let b = run_seed(&cfg, 42);
        assert_eq!(a.trace_hash, b.trace_hash);
        assert_eq!(a.delivered, b.delivered);
        let c = run_seed(&cfg, 43);
        assert_ne!(
            a.trace_hash, c.trace_hash,
            "different seeds, different runs"
        );
    }

    #[test]
    fn a_quiet_run_acknowledges_everything() {
        let mut cfg = SimConfig::new(1);
        cfg.faults = Faults::default();
        let r = run_seed(&cfg, 1);
        assert_eq!(r.ops, cfg.ops);
        assert_eq!(r.ok, cfg.ops, "no faults, no failures: {r:?}");
        assert!(r.violations.is_empty(), "{:?}", r.violations);
    }

    #[test]
    fn crashes_make_fallbacks_keep_hints_that_go_home() {
        let mut cfg = SimConfig::new(11);
        cfg.faults = Faults::parse("crash").unwrap();
        let (mut stored, mut delivered) = (0, 0);
        for seed in 0..10 {
            let r = run_seed(&cfg, seed);
            assert!(r.violations.is_empty(), "{:?}", r.violations);
            stored += r.hints_stored;
            delivered += r.hints_delivered;
        }
        assert!(stored > 0, "sloppy quorum stored hints");
        assert!(delivered > 0, "hints were handed off");
    }

    #[test]
    fn sweep_of_seeds_with_every_fault_finds_no_violation() {
        let mut failures = Vec::new();
        for seed in 0..50u64 {
            let mut cfg = SimConfig::new(seed);
            cfg.nodes = 5 + (seed % 3) as usize;
            let r = run_seed(&cfg, seed);
            assert_eq!(r.ops, cfg.ops);
            if !r.violations.is_empty() {
                failures.push(format!(
                    "seed {seed}: {} (replay: cargo run -p dynamokv-sim -- --seed {seed} --nodes {} --trace)",
                    r.violations[0], cfg.nodes
                ));
            }
        }
        assert!(failures.is_empty(), "{}", failures.join("\n"));
    }
}
