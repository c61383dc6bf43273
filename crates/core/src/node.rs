//! The node state machine: coordinator and replica roles, request routing, quorum tracking and
//! read repair, with no IO (Dynamo sections 4.5 and 4.7).
//!
//! Inputs: [`Node::request`] for a client operation, [`Node::step`] for a peer message,
//! [`Node::tick`] for time passing, [`Node::peer_up`]/[`Node::peer_down`] for what the transport
//! sees. Every input takes `now` (ms since the Unix epoch). Outputs collect in an outbox
//! ([`Node::drain`]): messages to send and answers to clients.
//!
//! Routing: the coordinator of a key is the first reachable primary of its preference list. A
//! node that is not the coordinator forwards the request to it (Dynamo's "Solution 1"); a
//! forwarded request is coordinated by the receiver if it is a primary, so two nodes with
//! different views never bounce a request back and forth.
//!
//! Put: the coordinator stamps the new version against its own copy and the client's context,
//! stores it, sends it to the other reachable primaries and answers after W acknowledgements
//! (its own included). Get: it reads its own copy, asks the other reachable primaries, answers
//! after R replies with their merge, and once every replica answered (or the timeout passed)
//! sends the merged object to each replica whose copy differed (read repair).

use crate::failure_detector::{DetectorConfig, FailureDetector, Opinion};
use crate::gossip;
use crate::limits;
use crate::membership::{Delta, Member, View};
use crate::message::{
    ClientId, ClientRequest, ClientResponse, Message, OpError, QuorumKind, Reply, RequestId,
};
use crate::quorum::Tally;
use crate::ring::{Ring, position};
use crate::rng::Rng;
use crate::store::LocalStore;
use crate::version::{ActorId, Dot, Object, VersionVector};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Most times a request is forwarded before a node coordinates or gives up.
const MAX_HOPS: u8 = 2;

/// Cluster-wide coordination settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct NodeConfig {
    /// Replicas per key (N).
    pub n: u8,
    /// Default read quorum (R).
    pub r: u8,
    /// Default write quorum (W).
    pub w: u8,
    /// How long a coordinator waits for replicas, in ms.
    pub request_timeout_ms: u64,
    /// How often this node gossips with a peer, in ms.
    pub gossip_interval_ms: u64,
    /// Failure detector settings.
    pub detector: DetectorConfig,
    /// How often the hint store is scanned for hints whose owner is back, in ms.
    pub hint_scan_interval_ms: u64,
    /// Hints handed off per second at most (per node).
    pub hint_rate_per_sec: u64,
    /// Hint deliveries in flight at most.
    pub hint_max_in_flight: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            n: 3,
            r: 2,
            w: 2,
            request_timeout_ms: 2000,
            gossip_interval_ms: 1000,
            detector: DetectorConfig::default(),
            hint_scan_interval_ms: 1000,
            hint_rate_per_sec: 2000,
            hint_max_in_flight: 64,
        }
    }
}

/// Something the node wants done.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Output {
    /// Append this member record to the persisted membership history.
    Persist(Member),
    /// Send `message` to node `to`.
    Send {
        /// Destination node id.
        to: String,
        /// The message.
        message: Message,
    },
    /// Answer client request `client`.
    Respond {
        /// The shell's id of the client request.
        client: ClientId,
        /// The answer.
        response: ClientResponse,
    },
}

/// Counters for operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Client requests forwarded to another coordinator.
    pub forwarded: u64,
    /// Gets coordinated here.
    pub coordinated_reads: u64,
    /// Puts and deletes coordinated here.
    pub coordinated_writes: u64,
    /// Replicas sent a merged object after a read found them stale.
    pub read_repairs: u64,
    /// Peer messages refused as invalid.
    pub rejected_messages: u64,
    /// Replicas this node stored as a fallback, with a hint naming their owner.
    pub hints_stored: u64,
    /// Hints handed back to their owners and deleted here.
    pub hints_delivered: u64,
    /// Writes that went to at least one fallback (sloppy quorum).
    pub sloppy_writes: u64,
}

/// A member as the admin endpoint shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member record.
    #[serde(flatten)]
    pub member: Member,
    /// Fraction of the key space it owns as first replica.
    pub share: f64,
    /// Whether this node believes it is up (connected and not suspected).
    pub up: bool,
    /// Whether the transport has a connection to it.
    pub connected: bool,
    /// Its latest heartbeat counter heard here.
    pub heartbeat: u64,
    /// The failure detector's opinion (absent for this node itself).
    pub detector: Option<Opinion>,
}

/// The ring as the admin endpoint and partition-aware clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RingInfo {
    /// The ring version (hash of every node and token), hex.
    pub version: String,
    /// The node answering.
    pub node: String,
    /// Replicas per key.
    pub n: u8,
    /// Default read quorum.
    pub r: u8,
    /// Default write quorum.
    pub w: u8,
    /// Every member, sorted by id.
    pub members: Vec<MemberInfo>,
}

/// Where an answer goes.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Origin {
    Client(ClientId),
    Peer { node: String, id: RequestId },
}

/// What each replica returned to a read.
type Replies = BTreeMap<String, Option<Object>>;

#[derive(Debug)]
enum Pending {
    Forward {
        origin: Origin,
        to: String,
        deadline: u64,
    },
    Write {
        origin: Option<Origin>,
        object: Object,
        dot: Dot,
        tally: Tally,
        deadline: u64,
    },
    Read {
        origin: Option<Origin>,
        key: Vec<u8>,
        replies: Replies,
        /// Nodes whose copy read repair may fix: the primaries asked.
        primaries: Vec<String>,
        tally: Tally,
        deadline: u64,
    },
    Handoff {
        owner: String,
        key: Vec<u8>,
        object: Object,
        deadline: u64,
    },
}

/// One node's coordination state.
pub struct Node<S> {
    me: Member,
    actor: ActorId,
    config: NodeConfig,
    store: S,
    view: View,
    ring: Ring,
    connected: BTreeSet<String>,
    seeds: BTreeSet<String>,
    detector: FailureDetector,
    rng: Rng,
    now: u64,
    next_id: RequestId,
    pending: BTreeMap<RequestId, Pending>,
    outbox: Vec<Output>,
    next_gossip: u64,
    next_hint_scan: u64,
    hint_cursor: Option<(Vec<u8>, String)>,
    hint_tokens: f64,
    last_hint_refill: u64,
    /// (owner, key) of every hint delivery in flight.
    handoffs: BTreeSet<(String, Vec<u8>)>,
    members_epoch: u64,
    stats: NodeStats,
}

impl<S: LocalStore> Node<S> {
    /// A node announcing `me`, stamping writes as `actor`, storing in `store`, drawing its
    /// random choices from `seed`, and starting from the member records it persisted before
    /// (`known`, which may be empty). Its generation is raised above any it had before.
    pub fn new(
        mut me: Member,
        actor: ActorId,
        config: NodeConfig,
        store: S,
        seed: u64,
        known: &[Member],
    ) -> Self {
        if let Some(old) = known
            .iter()
            .filter(|m| m.id == me.id)
            .map(|m| m.generation)
            .max()
            && old >= me.generation
        {
            me.generation = old + 1;
        }
        let mut view = View::from_members(
            known
                .iter()
                .filter(|m| m.id != me.id && m.validate().is_ok())
                .cloned(),
        );
        view.members.insert(me.id.clone(), me.clone());
        view.heartbeats.insert(me.id.clone(), (me.generation, 1));
        let ring = Ring::new(&view.ring_tokens()).unwrap_or_default();
        let detector = FailureDetector::new(config.detector);
        let mut node = Self {
            me: me.clone(),
            actor,
            config,
            store,
            view,
            ring,
            connected: BTreeSet::new(),
            seeds: BTreeSet::new(),
            detector,
            rng: Rng::new(seed),
            now: 0,
            next_id: 1,
            pending: BTreeMap::new(),
            outbox: Vec::new(),
            next_gossip: 0,
            next_hint_scan: 0,
            hint_cursor: None,
            hint_tokens: 0.0,
            last_hint_refill: 0,
            handoffs: BTreeSet::new(),
            members_epoch: 0,
            stats: NodeStats::default(),
        };
        node.outbox.push(Output::Persist(me));
        node
    }

    /// This node's own member record.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.me.id
    }

    /// The ring.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }

    /// Counts changes to the member records (addresses and generations too, which leave the
    /// ring version alone); the shell re-dials peers when it moves.
    pub fn members_epoch(&self) -> u64 {
        self.members_epoch
    }

    /// Every known member, by id.
    pub fn members(&self) -> &BTreeMap<String, Member> {
        &self.view.members
    }

    /// The replicated membership state (records and heartbeats).
    pub fn view(&self) -> &View {
        &self.view
    }

    /// The coordination settings.
    pub fn config(&self) -> &NodeConfig {
        &self.config
    }

    /// Counters.
    pub fn stats(&self) -> NodeStats {
        self.stats
    }

    /// Whether `node` is reachable from here (this node always is).
    pub fn is_up(&self, node: &str) -> bool {
        node == self.me.id || (self.connected.contains(node) && self.detector.alive(node, self.now))
    }

    /// The failure detector's opinion of `node` as of the last input.
    pub fn opinion(&self, node: &str) -> Opinion {
        self.detector.opinion(node, self.now)
    }

    /// Number of requests in flight.
    pub fn in_flight(&self) -> usize {
        self.pending.len()
    }

    /// Takes the outputs produced so far.
    pub fn drain(&mut self) -> Vec<Output> {
        std::mem::take(&mut self.outbox)
    }

    /// The ring and members for the admin endpoint and clients.
    pub fn ring_info(&self) -> RingInfo {
        let shares = self.ring.shares();
        RingInfo {
            version: format!("{:016x}", self.ring.version()),
            node: self.me.id.clone(),
            n: self.config.n,
            r: self.config.r,
            w: self.config.w,
            members: self
                .view
                .members
                .values()
                .map(|m| MemberInfo {
                    member: m.clone(),
                    share: shares.get(&m.id).copied().unwrap_or(0.0),
                    up: self.is_up(&m.id),
                    connected: m.id == self.me.id || self.connected.contains(&m.id),
                    heartbeat: match self.view.heartbeats.get(&m.id) {
                        Some((g, c)) if *g == m.generation => *c,
                        _ => 0,
                    },
                    detector: (m.id != self.me.id).then(|| self.detector.opinion(&m.id, self.now)),
                })
                .collect(),
        }
    }

    /// The N primaries of `key`, in ring order.
    pub fn primaries(&self, key: &[u8]) -> Vec<String> {
        self.ring
            .walk(position(key), usize::from(self.config.n))
            .into_iter()
            .map(str::to_owned)
            .collect()
    }

    fn send(&mut self, to: &str, message: Message) {
        self.outbox.push(Output::Send {
            to: to.to_owned(),
            message,
        });
    }

    fn respond(&mut self, origin: Origin, response: ClientResponse) {
        match origin {
            Origin::Client(client) => self.outbox.push(Output::Respond { client, response }),
            Origin::Peer { node, id } => self.send(&node, Message::ForwardReply { id, response }),
        }
    }

    /// Retires request `id`, forgetting a hint delivery's (owner, key) with it.
    fn remove_pending(&mut self, id: RequestId) -> Option<Pending> {
        let p = self.pending.remove(&id);
        if let Some(Pending::Handoff { owner, key, .. }) = &p {
            self.handoffs.remove(&(owner.clone(), key.clone()));
        }
        p
    }

    fn new_id(&mut self) -> RequestId {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Learns member records (from a peer's handshake). Returns true when a record changed.
    pub fn learn(&mut self, incoming: &[Member]) -> bool {
        let delta = Delta {
            members: incoming.to_vec(),
            heartbeats: Vec::new(),
        };
        self.apply_delta(&delta)
    }

    /// Marks `id` as a seed: gossip turns to seeds now and then, so partitions heal.
    pub fn add_seed(&mut self, id: &str) {
        if id != self.me.id {
            self.seeds.insert(id.to_owned());
        }
    }

    /// Applies gossip: records (persisted, ring rebuilt) and heartbeats (fed to the detector).
    /// Returns true when a record changed.
    fn apply_delta(&mut self, delta: &Delta) -> bool {
        let me = self.me.id.clone();
        let records_change = delta
            .members
            .iter()
            .any(|m| m.id != me && crate::membership::supersedes(self.view.members.get(&m.id), m));
        let mut changed = false;
        if records_change {
            // Rare: apply to a copy, so a ring that cannot be built leaves everything as it was.
            let before: BTreeMap<String, u64> = delta
                .members
                .iter()
                .filter_map(|m| {
                    self.view
                        .members
                        .get(&m.id)
                        .map(|k| (k.id.clone(), k.generation))
                })
                .collect();
            let mut next = self.view.clone();
            let records = Delta {
                members: delta.members.clone(),
                heartbeats: Vec::new(),
            };
            let applied = next.apply(&records, &me);
            match Ring::new(&next.ring_tokens()) {
                Ok(ring) => {
                    self.ring = ring;
                    self.view = next;
                    self.members_epoch += 1;
                    changed = !applied.members.is_empty();
                    for m in applied.members {
                        if before.get(&m.id).is_some_and(|g| *g < m.generation) {
                            // A restart: its detector history belongs to the old process.
                            self.detector.reset(&m.id, self.now);
                        }
                        self.outbox.push(Output::Persist(m));
                    }
                }
                Err(_) => {
                    self.stats.rejected_messages += 1;
                    return false;
                }
            }
        }
        if !delta.heartbeats.is_empty() {
            let beats = Delta {
                members: Vec::new(),
                heartbeats: delta.heartbeats.clone(),
            };
            for id in self.view.apply(&beats, &me).heartbeats {
                self.detector.heartbeat(&id, self.now);
            }
        }
        changed
    }

    /// A client request arrived at this node.
    pub fn request(&mut self, now: u64, client: ClientId, request: ClientRequest) {
        self.now = now;
        self.route(now, Origin::Client(client), request, 0);
    }

    fn route(&mut self, now: u64, origin: Origin, request: ClientRequest, hops: u8) {
        if let Err(e) = limits::check_key(request.key()) {
            return self.respond(origin, Err(OpError::BadRequest(e.to_string())));
        }
        let primaries = self.primaries(request.key());
        if primaries.is_empty() {
            return self.respond(origin, Err(OpError::NoRing));
        }
        let i_am_primary = primaries.contains(&self.me.id);
        let first_up = primaries.iter().find(|p| self.is_up(p)).cloned();
        let coordinate_here =
            i_am_primary && (hops > 0 || first_up.as_deref() == Some(&self.me.id));
        if coordinate_here {
            return self.coordinate(now, origin, request);
        }
        match first_up {
            Some(target) if target != self.me.id && hops < MAX_HOPS => {
                self.stats.forwarded += 1;
                let id = self.new_id();
                let deadline = now + self.config.request_timeout_ms * 3 / 2;
                self.pending.insert(
                    id,
                    Pending::Forward {
                        origin,
                        to: target.clone(),
                        deadline,
                    },
                );
                self.send(&target, Message::Forward { id, request, hops });
            }
            _ if i_am_primary => self.coordinate(now, origin, request),
            _ => {
                let kind = match request {
                    ClientRequest::Get { .. } => QuorumKind::Read,
                    ClientRequest::Put { .. } => QuorumKind::Write,
                };
                self.respond(
                    origin,
                    Err(OpError::Unavailable {
                        kind,
                        needed: 1,
                        answered: 0,
                        failed: primaries.clone(),
                        asked: primaries,
                        written: false,
                        sent: false,
                        primary_needed: 0,
                        primary_answered: 0,
                    }),
                );
            }
        }
    }

    /// The quorum for a request: the override (1..=N) or the default capped at the number of
    /// replicas the ring can offer.
    fn quorum(
        &self,
        name: &str,
        asked: Option<u8>,
        default: u8,
        replicas: usize,
    ) -> Result<usize, OpError> {
        match asked {
            Some(v) if v == 0 || v > self.config.n => Err(OpError::InvalidQuorum {
                name: name.to_owned(),
                value: v,
                n: self.config.n,
            }),
            Some(v) => Ok(usize::from(v)),
            None => Ok(usize::from(default).min(replicas).max(1)),
        }
    }

    /// Where a request for `key` goes: the N primaries, and the targets - every reachable
    /// primary, plus for each unreachable primary the next reachable node clockwise past the
    /// primaries (a fallback) tagged with the primary it stands in for.
    pub fn plan(&self, key: &[u8]) -> (Vec<String>, Vec<(String, Option<String>)>) {
        let pos = position(key);
        let n = usize::from(self.config.n);
        let primaries: Vec<String> = self
            .ring
            .walk(pos, n)
            .into_iter()
            .map(str::to_owned)
            .collect();
        let down: Vec<&String> = primaries.iter().filter(|p| !self.is_up(p)).collect();
        let mut targets: Vec<(String, Option<String>)> = primaries
            .iter()
            .filter(|p| self.is_up(p))
            .map(|p| (p.clone(), None))
            .collect();
        if !down.is_empty() {
            let spares: Vec<String> = self
                .ring
                .walk(pos, self.ring.nodes().len())
                .into_iter()
                .skip(primaries.len())
                .filter(|x| self.is_up(x))
                .take(down.len())
                .map(str::to_owned)
                .collect();
            for (owner, fallback) in down.into_iter().zip(spares) {
                targets.push((fallback, Some(owner.clone())));
            }
        }
        (primaries, targets)
    }

    /// This node's copy of `key` merged with any hints it keeps for it.
    fn local_read(&self, key: &[u8]) -> Result<Option<Object>, crate::store::StoreError> {
        let own = self.store.get(key)?;
        let hints = self.store.hints_for_key(key)?;
        if hints.is_empty() {
            return Ok(own);
        }
        let merged = hints
            .iter()
            .fold(own.unwrap_or_default(), |acc, h| acc.merge(&h.object));
        Ok(Some(merged))
    }

    fn coordinate(&mut self, now: u64, origin: Origin, request: ClientRequest) {
        let deadline = now + self.config.request_timeout_ms;
        let (primaries, targets) = self.plan(request.key());
        let up_primaries = targets.iter().filter(|(_, h)| h.is_none()).count();
        let unreachable: Vec<String> = primaries
            .iter()
            .filter(|p| !self.is_up(p))
            .cloned()
            .collect();
        let (kind, name, pname, asked_q, asked_p, default) = match &request {
            ClientRequest::Get { r, pr, .. } => {
                (QuorumKind::Read, "r", "pr", *r, *pr, self.config.r)
            }
            ClientRequest::Put { w, pw, .. } => {
                (QuorumKind::Write, "w", "pw", *w, *pw, self.config.w)
            }
        };
        let needed = match self.quorum(name, asked_q, default, primaries.len()) {
            Ok(n) => n,
            Err(e) => return self.respond(origin, Err(e)),
        };
        let primary_needed = match asked_p {
            None | Some(0) => 0,
            Some(v) => match self.quorum(pname, Some(v), 0, primaries.len()) {
                Ok(n) => n,
                Err(e) => return self.respond(origin, Err(e)),
            },
        };
        if targets.len() < needed || up_primaries < primary_needed {
            return self.respond(
                origin,
                Err(OpError::Unavailable {
                    kind,
                    needed: needed as u8,
                    answered: targets.len() as u8,
                    asked: primaries.clone(),
                    failed: unreachable,
                    written: false,
                    sent: false,
                    primary_needed: primary_needed as u8,
                    primary_answered: up_primaries as u8,
                }),
            );
        }
        let asked: Vec<String> = targets.iter().map(|(t, _)| t.clone()).collect();
        let mut tally =
            Tally::new(asked, needed).with_primaries(primaries.iter().cloned(), primary_needed);
        let id = self.new_id();
        match request {
            ClientRequest::Get { key, .. } => {
                self.stats.coordinated_reads += 1;
                let mut replies = BTreeMap::new();
                for (t, _) in &targets {
                    if *t == self.me.id {
                        match self.local_read(&key) {
                            Ok(obj) => {
                                tally.succeed(t);
                                replies.insert(t.clone(), obj);
                            }
                            Err(_) => {
                                tally.fail(t);
                            }
                        }
                    } else {
                        self.send(
                            t,
                            Message::Read {
                                id,
                                key: key.clone(),
                            },
                        );
                    }
                }
                self.pending.insert(
                    id,
                    Pending::Read {
                        origin: Some(origin),
                        key,
                        replies,
                        primaries,
                        tally,
                        deadline,
                    },
                );
                self.check(id, now);
            }
            ClientRequest::Put {
                key,
                value,
                context,
                ..
            } => {
                self.stats.coordinated_writes += 1;
                let actor = self.actor;
                let mut value = Some(value);
                let stamped = self.store.modify(&key, &mut |current| {
                    let ctx = match (&context, &value) {
                        (Some(c), _) => c.clone(),
                        // A delete without context supersedes what this node holds.
                        (None, Some(None)) => current.context(),
                        (None, _) => VersionVector::new(),
                    };
                    current.update(actor, &ctx, value.take().flatten(), now)
                });
                let object = match stamped {
                    Ok(o) => o,
                    Err(e) => {
                        let node = self.me.id.clone();
                        return self.respond(origin, Err(OpError::Storage { node, message: e.0 }));
                    }
                };
                tally.succeed(&self.me.id);
                if targets.iter().any(|(_, h)| h.is_some()) {
                    self.stats.sloppy_writes += 1;
                }
                for (t, hint) in targets
                    .iter()
                    .filter(|(t, _)| *t != self.me.id)
                    .cloned()
                    .collect::<Vec<_>>()
                {
                    self.send(
                        &t,
                        Message::Replicate {
                            id,
                            key: key.clone(),
                            object: object.clone(),
                            hint,
                        },
                    );
                }
                let dot = Dot {
                    actor,
                    counter: object.clock().counter(actor),
                };
                self.pending.insert(
                    id,
                    Pending::Write {
                        origin: Some(origin),
                        object,
                        dot,
                        tally,
                        deadline,
                    },
                );
                self.check(id, now);
            }
        }
    }

    /// Answers and retires request `id` as far as its replies allow.
    fn check(&mut self, id: RequestId, now: u64) {
        let Some(p) = self.pending.get_mut(&id) else {
            return;
        };
        let expired = match p {
            Pending::Forward { deadline, .. }
            | Pending::Write { deadline, .. }
            | Pending::Read { deadline, .. }
            | Pending::Handoff { deadline, .. } => now >= *deadline,
        };
        let mut answer: Option<(Origin, ClientResponse)> = None;
        let mut done = false;
        let mut repair: Option<(Vec<u8>, Replies, Vec<String>)> = None;
        match p {
            Pending::Handoff { .. } => {
                // Retried at the next scan.
                done = expired;
            }
            Pending::Forward { origin, to, .. } => {
                if expired {
                    answer = Some((
                        origin.clone(),
                        Err(OpError::CoordinatorUnreachable {
                            node: to.clone(),
                            reason: "timed out".into(),
                        }),
                    ));
                    done = true;
                }
            }
            Pending::Write {
                origin,
                object,
                dot,
                tally,
                ..
            } => {
                if origin.is_some() {
                    if tally.reached() {
                        answer = origin.take().map(|o| {
                            (
                                o,
                                Ok(Reply::Written {
                                    object: object.clone(),
                                    dot: *dot,
                                }),
                            )
                        });
                    } else if tally.impossible() || expired {
                        let err = unavailable(QuorumKind::Write, tally, true);
                        answer = origin.take().map(|o| (o, Err(err)));
                    }
                }
                done = tally.complete() || expired;
            }
            Pending::Read {
                origin,
                key,
                replies,
                primaries,
                tally,
                ..
            } => {
                if origin.is_some() {
                    if tally.reached() {
                        let merged = merge_all(replies.values());
                        answer = origin.take().map(|o| (o, Ok(Reply::Read(merged))));
                    } else if tally.impossible() || expired {
                        let err = unavailable(QuorumKind::Read, tally, false);
                        answer = origin.take().map(|o| (o, Err(err)));
                    }
                }
                done = tally.complete() || expired;
                if done {
                    repair = Some((
                        std::mem::take(key),
                        std::mem::take(replies),
                        std::mem::take(primaries),
                    ));
                }
            }
        }
        if let Some((origin, response)) = answer {
            self.respond(origin, response);
        }
        if expired {
            // Replicas (or the coordinator) that never answered count against them.
            let silent: Vec<String> = match self.pending.get(&id) {
                Some(Pending::Forward { to, .. }) => vec![to.clone()],
                Some(Pending::Write { tally, .. } | Pending::Read { tally, .. }) => {
                    tally.pending_nodes()
                }
                Some(Pending::Handoff { owner, .. }) => vec![owner.clone()],
                None => Vec::new(),
            };
            for node in silent {
                self.detector.timeout(&node, now);
            }
        }
        if done {
            self.remove_pending(id);
        }
        if let Some((key, replies, primaries)) = repair {
            self.read_repair(&key, &replies, &primaries);
        }
    }

    /// Sends the merge of every reply to each replica whose copy differed from it.
    fn read_repair(&mut self, key: &[u8], replies: &Replies, primaries: &[String]) {
        let merged = merge_all(replies.values());
        if merged.is_empty() {
            return;
        }
        // Only primaries are repaired: a fallback's copy goes home by handoff.
        for (node, copy) in replies.iter().filter(|(n, _)| primaries.contains(n)) {
            if copy.as_ref() == Some(&merged) {
                continue;
            }
            self.stats.read_repairs += 1;
            if *node == self.me.id {
                let _ = self.store.merge(key, &merged);
            } else {
                self.send(
                    node,
                    Message::Repair {
                        key: key.to_vec(),
                        object: merged.clone(),
                    },
                );
            }
        }
    }

    /// A message from peer `from`.
    pub fn step(&mut self, now: u64, from: &str, message: Message) {
        self.now = now;
        if self.view.members.contains_key(from) {
            self.detector.success(from, now);
        }
        match message {
            Message::Forward { id, request, hops } => {
                let origin = Origin::Peer {
                    node: from.to_owned(),
                    id,
                };
                self.route(now, origin, request, hops.saturating_add(1));
            }
            Message::ForwardReply { id, response } => {
                if matches!(self.pending.get(&id), Some(Pending::Forward { to, .. }) if to == from)
                    && let Some(Pending::Forward { origin, .. }) = self.remove_pending(id)
                {
                    self.respond(origin, response);
                }
            }
            Message::Replicate {
                id,
                key,
                object,
                hint,
            } => {
                let error = match (valid(&key, &object), hint) {
                    (Err(e), _) => {
                        self.stats.rejected_messages += 1;
                        Some(e)
                    }
                    (Ok(()), None) => self.store.merge(&key, &object).err().map(|e| e.0),
                    (Ok(()), Some(owner)) if owner == self.me.id => {
                        self.store.merge(&key, &object).err().map(|e| e.0)
                    }
                    (Ok(()), Some(owner)) => match self.store.put_hint(&owner, &key, &object) {
                        Ok(()) => {
                            self.stats.hints_stored += 1;
                            None
                        }
                        Err(e) => Some(e.0),
                    },
                };
                self.send(from, Message::ReplicateAck { id, error });
            }
            Message::ReplicateAck { id, error } => {
                if matches!(self.pending.get(&id), Some(Pending::Handoff { owner, .. }) if owner == from)
                    && let Some(Pending::Handoff {
                        owner, key, object, ..
                    }) = self.remove_pending(id)
                    && error.is_none()
                    && self
                        .store
                        .remove_hint(&owner, &key, &object)
                        .unwrap_or(false)
                {
                    self.stats.hints_delivered += 1;
                }
                if let Some(Pending::Write { tally, .. }) = self.pending.get_mut(&id) {
                    if error.is_none() {
                        tally.succeed(from);
                    } else {
                        tally.fail(from);
                    }
                    self.check(id, now);
                }
            }
            Message::Read { id, key } => {
                let result = match limits::check_key(&key) {
                    Err(e) => Err(e.to_string()),
                    Ok(()) => self.local_read(&key).map_err(|e| e.0),
                };
                self.send(from, Message::ReadReply { id, result });
            }
            Message::ReadReply { id, result } => {
                if let Some(Pending::Read { replies, tally, .. }) = self.pending.get_mut(&id) {
                    match result {
                        Ok(obj) if obj.as_ref().is_none_or(|o| o.validate().is_ok()) => {
                            if tally.succeed(from) {
                                replies.insert(from.to_owned(), obj);
                            }
                        }
                        _ => {
                            tally.fail(from);
                        }
                    }
                    self.check(id, now);
                }
            }
            Message::Repair { key, object } => {
                if valid(&key, &object).is_ok() {
                    let _ = self.store.merge(&key, &object);
                } else {
                    self.stats.rejected_messages += 1;
                }
            }
            Message::GossipSyn { digest } => {
                let delta = self.view.delta_for(&digest);
                let digest = self.view.digest();
                self.send(from, Message::GossipSynAck { digest, delta });
            }
            Message::GossipSynAck { digest, delta } => {
                self.apply_delta(&delta);
                let back = self.view.delta_for(&digest);
                if !back.is_empty() {
                    self.send(from, Message::GossipAck { delta: back });
                }
            }
            Message::GossipAck { delta } => {
                self.apply_delta(&delta);
            }
        }
    }

    /// The transport connected to `node`: it gets this node's member list at once.
    pub fn peer_up(&mut self, node: &str) {
        if node != self.me.id && self.connected.insert(node.to_owned()) {
            let digest = self.view.digest();
            self.send(node, Message::GossipSyn { digest });
        }
    }

    /// Records that the transport is connected to `node` without starting a gossip exchange.
    /// For simulations that start from an already converged, connected cluster.
    pub fn assume_connected(&mut self, node: &str) {
        if node != self.me.id {
            self.connected.insert(node.to_owned());
        }
    }

    /// Declares a new status for this node: its record gets a new version, which gossip
    /// spreads (and which is persisted).
    pub fn set_status(&mut self, status: crate::membership::Status) {
        self.me.status = status;
        self.me.version += 1;
        self.view
            .members
            .insert(self.me.id.clone(), self.me.clone());
        if let Ok(ring) = Ring::new(&self.view.ring_tokens()) {
            self.ring = ring;
        }
        self.members_epoch += 1;
        self.outbox.push(Output::Persist(self.me.clone()));
    }

    /// The transport lost `node`: requests waiting on it stop waiting.
    pub fn peer_down(&mut self, now: u64, node: &str) {
        self.now = now;
        if !self.connected.remove(node) {
            return;
        }
        let ids: Vec<RequestId> = self.pending.keys().copied().collect();
        for id in ids {
            let failed = match self.pending.get_mut(&id) {
                Some(Pending::Forward { to, .. }) => to.as_str() == node,
                Some(Pending::Write { tally, .. } | Pending::Read { tally, .. }) => {
                    tally.fail(node)
                }
                Some(Pending::Handoff { owner, .. }) => {
                    if owner.as_str() == node {
                        self.remove_pending(id);
                    }
                    false
                }
                None => false,
            };
            if !failed {
                continue;
            }
            if let Some(Pending::Forward { origin, .. }) = self.pending.get(&id) {
                let origin = origin.clone();
                self.remove_pending(id);
                self.respond(
                    origin,
                    Err(OpError::CoordinatorUnreachable {
                        node: node.to_owned(),
                        reason: "connection lost".into(),
                    }),
                );
            } else {
                self.check(id, now);
            }
        }
    }

    /// Time passed: expire requests, push member lists.
    pub fn tick(&mut self, now: u64) {
        self.now = now;
        let expired: Vec<RequestId> = self
            .pending
            .iter()
            .filter(|(_, p)| match p {
                Pending::Forward { deadline, .. }
                | Pending::Write { deadline, .. }
                | Pending::Read { deadline, .. }
                | Pending::Handoff { deadline, .. } => now >= *deadline,
            })
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.check(id, now);
        }
        if now >= self.next_gossip {
            self.next_gossip = now + self.config.gossip_interval_ms;
            self.gossip_round();
        }
        self.hand_off(now);
    }

    /// Hints kept here whose owner is up again go home, throttled by rate and concurrency;
    /// each is deleted only once its owner acknowledged it (Dynamo section 4.6).
    fn hand_off(&mut self, now: u64) {
        let rate = self.config.hint_rate_per_sec as f64;
        let elapsed = now.saturating_sub(self.last_hint_refill) as f64 / 1000.0;
        self.last_hint_refill = now;
        self.hint_tokens = (self.hint_tokens + rate * elapsed).min(rate.max(1.0));
        if now < self.next_hint_scan {
            return;
        }
        let budget = self
            .config
            .hint_max_in_flight
            .saturating_sub(self.handoffs.len())
            .min(self.hint_tokens as usize);
        if budget == 0 {
            return;
        }
        // Read about what can be sent now (a few more, for hints whose owner is down).
        let page_size = (budget * 2).clamp(16, 256);
        let cursor = self.hint_cursor.clone();
        let page = match self.store.scan_hints(
            cursor.as_ref().map(|(k, o)| (k.as_slice(), o.as_str())),
            page_size,
        ) {
            Ok(p) => p,
            Err(_) => {
                self.next_hint_scan = now + self.config.hint_scan_interval_ms;
                return;
            }
        };
        let wrapped = page.len() < page_size;
        let mut sent = 0;
        let mut last = None;
        for h in page {
            last = Some((h.key.clone(), h.owner.clone()));
            let busy = self.handoffs.contains(&(h.owner.clone(), h.key.clone()));
            if busy || !self.is_up(&h.owner) || !self.view.members.contains_key(&h.owner) {
                continue;
            }
            self.handoffs.insert((h.owner.clone(), h.key.clone()));
            let id = self.new_id();
            self.send(
                &h.owner,
                Message::Replicate {
                    id,
                    key: h.key.clone(),
                    object: h.object.clone(),
                    hint: None,
                },
            );
            self.pending.insert(
                id,
                Pending::Handoff {
                    owner: h.owner,
                    key: h.key,
                    object: h.object,
                    deadline: now + self.config.request_timeout_ms,
                },
            );
            sent += 1;
            self.hint_tokens -= 1.0;
            if sent >= budget {
                break;
            }
        }
        if sent >= budget && !wrapped {
            // More may be waiting: continue from here at the next tick.
            self.hint_cursor = last;
        } else if wrapped && sent < budget {
            // A full pass: start over after the scan interval.
            self.hint_cursor = None;
            self.next_hint_scan = now + self.config.hint_scan_interval_ms;
        } else {
            self.hint_cursor = last;
        }
    }

    /// One gossip round: raise this node's heartbeat, then start a digest exchange with one
    /// random live peer, and sometimes with a node believed down or a seed.
    fn gossip_round(&mut self) {
        let hb = self
            .view
            .heartbeats
            .entry(self.me.id.clone())
            .or_insert((self.me.generation, 1));
        hb.1 += 1;
        let (mut live, mut down) = (Vec::new(), Vec::new());
        for id in self.view.members.keys().filter(|id| **id != self.me.id) {
            if self.is_up(id) {
                live.push(id.clone());
            } else {
                down.push(id.clone());
            }
        }
        let seeds: Vec<String> = self.seeds.iter().cloned().collect();
        let targets = gossip::choose_targets(&mut self.rng, &live, &down, &seeds);
        if targets.is_empty() {
            return;
        }
        let digest = self.view.digest();
        for t in targets {
            self.send(
                &t,
                Message::GossipSyn {
                    digest: digest.clone(),
                },
            );
        }
    }
}

fn merge_all<'a>(objects: impl Iterator<Item = &'a Option<Object>>) -> Object {
    objects.flatten().fold(Object::new(), |acc, o| acc.merge(o))
}

fn valid(key: &[u8], object: &Object) -> Result<(), String> {
    limits::check_key(key).map_err(|e| e.to_string())?;
    object.validate().map_err(|e| e.to_string())
}

fn unavailable(kind: QuorumKind, tally: &Tally, written: bool) -> OpError {
    OpError::Unavailable {
        kind,
        needed: tally.needed() as u8,
        answered: tally.successes() as u8,
        asked: tally.asked().to_vec(),
        failed: tally.missing(),
        written,
        sent: true,
        primary_needed: tally.primary_needed() as u8,
        primary_answered: tally.primary_successes() as u8,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::hashed_tokens;
    use crate::store::StoreError;
    use std::cell::RefCell;
    use std::collections::VecDeque;

    #[derive(Default)]
    struct MapStore(
        RefCell<BTreeMap<Vec<u8>, Object>>,
        RefCell<BTreeMap<(Vec<u8>, String), Object>>,
    );

    impl LocalStore for MapStore {
        fn get(&self, key: &[u8]) -> Result<Option<Object>, StoreError> {
            Ok(self.0.borrow().get(key).cloned())
        }
        fn modify(
            &self,
            key: &[u8],
            f: &mut dyn FnMut(Object) -> Object,
        ) -> Result<Object, StoreError> {
            let cur = self.0.borrow().get(key).cloned().unwrap_or_default();
            let new = f(cur);
            self.0.borrow_mut().insert(key.to_vec(), new.clone());
            Ok(new)
        }
        fn put_hint(&self, owner: &str, key: &[u8], incoming: &Object) -> Result<(), StoreError> {
            let mut hints = self.1.borrow_mut();
            let e = hints.entry((key.to_vec(), owner.to_owned())).or_default();
            *e = e.merge(incoming);
            Ok(())
        }
        fn hints_for_key(&self, key: &[u8]) -> Result<Vec<crate::store::Hint>, StoreError> {
            Ok(self
                .1
                .borrow()
                .iter()
                .filter(|((k, _), _)| k == key)
                .map(|((k, o), obj)| crate::store::Hint {
                    owner: o.clone(),
                    key: k.clone(),
                    object: obj.clone(),
                })
                .collect())
        }
        fn scan_hints(
            &self,
            after: Option<(&[u8], &str)>,
            limit: usize,
        ) -> Result<Vec<crate::store::Hint>, StoreError> {
            let after = after.map(|(k, o)| (k.to_vec(), o.to_owned()));
            Ok(self
                .1
                .borrow()
                .iter()
                .filter(|(id, _)| after.as_ref().is_none_or(|a| *id > a))
                .take(limit)
                .map(|((k, o), obj)| crate::store::Hint {
                    owner: o.clone(),
                    key: k.clone(),
                    object: obj.clone(),
                })
                .collect())
        }
        fn remove_hint(
            &self,
            owner: &str,
            key: &[u8],
            delivered: &Object,
        ) -> Result<bool, StoreError> {
            let id = (key.to_vec(), owner.to_owned());
            let mut hints = self.1.borrow_mut();
            if hints.get(&id).is_some_and(|h| delivered.contains(h)) {
                hints.remove(&id);
                return Ok(true);
            }
            Ok(false)
        }
    }

    /// Nodes wired together in memory; messages are delivered in order unless a link is cut.
    struct Cluster {
        nodes: BTreeMap<String, Node<MapStore>>,
        queue: VecDeque<(String, String, Message)>,
        answers: BTreeMap<ClientId, ClientResponse>,
        cut: BTreeSet<String>,
        now: u64,
    }

    impl Cluster {
        fn new(count: usize) -> Cluster {
            let members: Vec<Member> = (0..count)
                .map(|i| Member {
                    id: format!("n{i}"),
                    generation: 1,
                    version: 1,
                    status: crate::membership::Status::Up,
                    peer_addr: format!("p{i}"),
                    http_addr: format!("h{i}"),
                    tokens: hashed_tokens(&format!("n{i}"), 16),
                })
                .collect();
            let mut nodes = BTreeMap::new();
            for (i, m) in members.iter().enumerate() {
                let mut n = Node::new(
                    m.clone(),
                    ActorId(i as u64),
                    NodeConfig::default(),
                    MapStore::default(),
                    i as u64,
                    &members,
                );
                for other in &members {
                    n.peer_up(&other.id);
                }
                nodes.insert(m.id.clone(), n);
            }
            Cluster {
                nodes,
                queue: VecDeque::new(),
                answers: BTreeMap::new(),
                cut: BTreeSet::new(),
                now: 1000,
            }
        }

        fn collect(&mut self, from: &str) {
            for out in self.nodes.get_mut(from).unwrap().drain() {
                match out {
                    Output::Send { to, message } => {
                        self.queue.push_back((from.to_owned(), to, message))
                    }
                    Output::Persist(_) => {}
                    Output::Respond { client, response } => {
                        assert!(
                            self.answers.insert(client, response).is_none(),
                            "answered twice"
                        );
                    }
                }
            }
        }

        fn run(&mut self) {
            while let Some((from, to, msg)) = self.queue.pop_front() {
                if self.cut.contains(&from) || self.cut.contains(&to) {
                    continue;
                }
                self.nodes.get_mut(&to).unwrap().step(self.now, &from, msg);
                self.collect(&to);
            }
        }

        /// Node `id` dies: its links are cut and every other node learns it is down.
        fn kill(&mut self, id: &str) {
            self.cut.insert(id.to_owned());
            let others: Vec<String> = self.nodes.keys().filter(|k| *k != id).cloned().collect();
            for o in others {
                self.nodes.get_mut(&o).unwrap().peer_down(self.now, id);
                self.collect(&o);
            }
        }

        fn request(&mut self, at: &str, client: ClientId, req: ClientRequest) -> ClientResponse {
            self.nodes
                .get_mut(at)
                .unwrap()
                .request(self.now, client, req);
            self.collect(at);
            self.run();
            self.answers.remove(&client).expect("an answer")
        }

        fn put(
            &mut self,
            at: &str,
            key: &[u8],
            value: &[u8],
            context: Option<VersionVector>,
            w: Option<u8>,
        ) -> ClientResponse {
            self.request(
                at,
                1,
                ClientRequest::Put {
                    key: key.to_vec(),
                    value: Some(value.to_vec()),
                    context,
                    w,
                    pw: None,
                },
            )
        }

        fn get(&mut self, at: &str, key: &[u8]) -> Object {
            match self.request(
                at,
                2,
                ClientRequest::Get {
                    key: key.to_vec(),
                    r: None,
                    pr: None,
                },
            ) {
                Ok(Reply::Read(o)) => o,
                other => panic!("get failed: {other:?}"),
            }
        }

        fn local(&self, node: &str, key: &[u8]) -> Option<Object> {
            self.nodes[node].store.0.borrow().get(key).cloned()
        }
    }

    fn values(o: &Object) -> Vec<Vec<u8>> {
        o.live().filter_map(|s| s.value.clone()).collect()
    }

    #[test]
    fn write_anywhere_read_everywhere_on_exactly_n_replicas() {
        let mut c = Cluster::new(5);
        for k in 0..20u8 {
            let key = [b'k', k];
            let at = format!("n{}", k % 5);
            assert!(matches!(
                c.put(&at, &key, b"v", None, None),
                Ok(Reply::Written { .. })
            ));
            for reader in 0..5 {
                assert_eq!(
                    values(&c.get(&format!("n{reader}"), &key)),
                    vec![b"v".to_vec()]
                );
            }
            let primaries = c.nodes["n0"].primaries(&key);
            assert_eq!(primaries.len(), 3);
            for n in c.nodes.keys() {
                assert_eq!(
                    c.local(n, &key).is_some(),
                    primaries.contains(n),
                    "{n} for key {k}"
                );
            }
        }
        let forwarded: u64 = c.nodes.values().map(|n| n.stats().forwarded).sum();
        assert!(forwarded > 0, "non-coordinators forwarded");
    }

    #[test]
    fn writes_with_one_primary_down_and_w3_failure() {
        let mut c = Cluster::new(5);
        let key = b"key".to_vec();
        let primaries = c.nodes["n0"].primaries(&key);
        // Kill the coordinator itself: the next primary takes over.
        c.kill(&primaries[0]);
        let entry = c
            .nodes
            .keys()
            .find(|n| !primaries.contains(n))
            .unwrap()
            .clone();
        assert!(matches!(
            c.put(&entry, &key, b"v1", None, None),
            Ok(Reply::Written { .. })
        ));
        assert_eq!(values(&c.get(&entry, &key)), vec![b"v1".to_vec()]);
        // W=3 with a primary down still succeeds: a fallback stands in (sloppy quorum)...
        assert!(matches!(
            c.put(&entry, &key, b"v2", None, Some(3)),
            Ok(Reply::Written { .. })
        ));
        // ...unless the caller insists on primaries.
        match c.request(
            &entry,
            9,
            ClientRequest::Put {
                key: key.clone(),
                value: Some(b"v3".to_vec()),
                context: None,
                w: Some(3),
                pw: Some(3),
            },
        ) {
            Err(OpError::Unavailable {
                kind: QuorumKind::Write,
                primary_needed: 3,
                written: false,
                failed,
                ..
            }) => {
                assert_eq!(failed, vec![primaries[0].clone()]);
            }
            other => panic!("expected a quorum error, got {other:?}"),
        }
        assert!(matches!(
            c.put(&entry, &key, b"v2", None, Some(4)),
            Err(OpError::InvalidQuorum { value: 4, n: 3, .. })
        ));
    }

    #[test]
    fn lost_messages_time_out_with_counts() {
        let mut c = Cluster::new(3);
        let key = b"x".to_vec();
        let primaries = c.nodes["n0"].primaries(&key);
        // The other two primaries silently drop everything (no peer_down).
        c.cut.insert(primaries[1].clone());
        c.cut.insert(primaries[2].clone());
        let coord = primaries[0].clone();
        c.nodes.get_mut(&coord).unwrap().request(
            c.now,
            7,
            ClientRequest::Put {
                key: key.clone(),
                value: Some(b"v".to_vec()),
                context: None,
                w: None,
                pw: None,
            },
        );
        c.collect(&coord);
        c.run();
        assert!(c.answers.is_empty(), "no answer before the timeout");
        c.now += 2000;
        c.nodes.get_mut(&coord).unwrap().tick(c.now);
        c.collect(&coord);
        match c.answers.remove(&7) {
            Some(Err(OpError::Unavailable {
                answered: 1,
                written: true,
                ..
            })) => {}
            other => panic!("{other:?}"),
        }
        assert_eq!(c.nodes[&coord].in_flight(), 0);
    }

    #[test]
    fn read_repair_fixes_stale_replicas_and_skips_consistent_ones() {
        let mut c = Cluster::new(5);
        let key = b"r".to_vec();
        let primaries = c.nodes["n0"].primaries(&key);
        c.put(&primaries[0], &key, b"v1", None, None).unwrap();
        // The third primary misses the second write.
        c.cut.insert(primaries[2].clone());
        let ctx = c.local(&primaries[0], &key).unwrap().context();
        c.put(&primaries[0], &key, b"v2", Some(ctx), None).unwrap();
        c.cut.clear();
        assert_eq!(
            values(&c.local(&primaries[2], &key).unwrap()),
            vec![b"v1".to_vec()]
        );
        let repairs_before: u64 = c.nodes.values().map(|n| n.stats().read_repairs).sum();
        assert_eq!(values(&c.get(&primaries[0], &key)), vec![b"v2".to_vec()]);
        assert_eq!(
            values(&c.local(&primaries[2], &key).unwrap()),
            vec![b"v2".to_vec()]
        );
        let repairs: u64 = c.nodes.values().map(|n| n.stats().read_repairs).sum();
        assert_eq!(repairs - repairs_before, 1);
        c.get(&primaries[0], &key);
        let again: u64 = c.nodes.values().map(|n| n.stats().read_repairs).sum();
        assert_eq!(again, repairs, "a consistent read repairs nothing");
    }

    #[test]
    fn concurrent_writes_through_different_coordinators_become_siblings() {
        let mut c = Cluster::new(5);
        let key = b"s".to_vec();
        let primaries = c.nodes["n0"].primaries(&key);
        c.put(&primaries[0], &key, b"base", None, None).unwrap();
        let ctx = c.get(&primaries[0], &key).context();
        // Two coordinators (forced with hops > 0 by sending Forward directly) write with the same context.
        for (i, coord) in [&primaries[0], &primaries[1]].into_iter().enumerate() {
            let req = ClientRequest::Put {
                key: key.clone(),
                value: Some(vec![b'a' + i as u8]),
                context: Some(ctx.clone()),
                w: Some(3),
                pw: None,
            };
            c.queue.push_back((
                "client".into(),
                coord.clone(),
                Message::Forward {
                    id: 99,
                    request: req,
                    hops: 0,
                },
            ));
        }
        c.nodes.insert(
            "client".into(),
            Node::new(
                Member {
                    id: "client".into(),
                    generation: 1,
                    version: 1,
                    status: crate::membership::Status::Up,
                    peer_addr: String::new(),
                    http_addr: String::new(),
                    tokens: vec![1],
                },
                ActorId(99),
                NodeConfig::default(),
                MapStore::default(),
                99,
                &[],
            ),
        );
        c.run();
        let o = c.get(&primaries[2], &key);
        let mut vals = values(&o);
        vals.sort();
        assert_eq!(vals, vec![b"a".to_vec(), b"b".to_vec()]);
        // Reconcile with the merged context.
        c.put(&primaries[2], &key, b"ab", Some(o.context()), None)
            .unwrap();
        assert_eq!(values(&c.get(&primaries[1], &key)), vec![b"ab".to_vec()]);
    }

    #[test]
    fn invalid_peer_messages_are_refused_without_panic() {
        let mut c = Cluster::new(3);
        let n = c.nodes.get_mut("n0").unwrap();
        n.drain();
        n.step(
            1,
            "n1",
            Message::Replicate {
                id: 1,
                key: vec![],
                object: Object::new(),
                hint: None,
            },
        );
        n.step(
            1,
            "n1",
            Message::Read {
                id: 2,
                key: vec![0; 5000],
            },
        );
        n.step(
            1,
            "n1",
            Message::ReplicateAck {
                id: 12345,
                error: None,
            },
        );
        n.step(
            1,
            "n1",
            Message::ForwardReply {
                id: 12345,
                response: Ok(Reply::Read(Object::new())),
            },
        );
        let out = n.drain();
        assert!(matches!(
            &out[0],
            Output::Send {
                message: Message::ReplicateAck { error: Some(_), .. },
                ..
            }
        ));
        assert!(matches!(
            &out[1],
            Output::Send {
                message: Message::ReadReply { result: Err(_), .. },
                ..
            }
        ));
        assert_eq!(out.len(), 2);
        assert_eq!(n.stats().rejected_messages, 1);
    }

    #[test]
    fn sloppy_quorum_hints_and_handoff() {
        let mut c = Cluster::new(5);
        let key = b"h".to_vec();
        let primaries = c.nodes["n0"].primaries(&key);
        let down = primaries[2].clone();
        c.kill(&down);
        // W=3 still succeeds: the fallback's acknowledgement counts.
        assert!(matches!(
            c.put(&primaries[0], &key, b"v", None, Some(3)),
            Ok(Reply::Written { .. })
        ));
        let (_, targets) = c.nodes[&primaries[0]].plan(&key);
        let (fallback, owner) = targets.iter().find(|(_, h)| h.is_some()).cloned().unwrap();
        assert_eq!(owner.as_deref(), Some(down.as_str()));
        assert!(!primaries.contains(&fallback));
        assert_eq!(
            c.nodes[&fallback].store.1.borrow().len(),
            1,
            "the fallback keeps a hint"
        );
        assert!(c.local(&fallback, &key).is_none(), "not in its own objects");
        assert_eq!(c.nodes[&fallback].stats().hints_stored, 1);
        // PW=3 refuses the sloppy write, saying how many primaries are there.
        match c.request(
            &primaries[0],
            5,
            ClientRequest::Put {
                key: key.clone(),
                value: Some(b"x".to_vec()),
                context: None,
                w: Some(2),
                pw: Some(3),
            },
        ) {
            Err(OpError::Unavailable {
                primary_needed: 3,
                primary_answered: 2,
                sent: false,
                ..
            }) => {}
            other => panic!("{other:?}"),
        }
        // The owner comes back: the hint goes home and is deleted.
        c.cut.remove(&down);
        let ids: Vec<String> = c.nodes.keys().cloned().collect();
        for id in &ids {
            c.nodes.get_mut(id).unwrap().peer_up(&down);
            c.collect(id);
        }
        c.run();
        c.now += 2000;
        c.nodes.get_mut(&fallback).unwrap().tick(c.now);
        c.collect(&fallback);
        c.run();
        assert_eq!(values(&c.local(&down, &key).unwrap()), vec![b"v".to_vec()]);
        assert!(
            c.nodes[&fallback].store.1.borrow().is_empty(),
            "hint deleted after the ack"
        );
        assert_eq!(c.nodes[&fallback].stats().hints_delivered, 1);
    }

    fn mk(i: usize, generation: u64) -> Member {
        Member {
            id: format!("n{i}"),
            generation,
            version: 1,
            status: crate::membership::Status::Up,
            peer_addr: format!("p{i}"),
            http_addr: String::new(),
            tokens: hashed_tokens(&format!("n{i}"), 8),
        }
    }

    fn node(i: usize, known: &[Member]) -> Node<MapStore> {
        Node::new(
            mk(i, 1),
            ActorId(i as u64),
            NodeConfig::default(),
            MapStore::default(),
            i as u64,
            known,
        )
    }

    /// Delivers messages between `a` and `b` until neither has anything to say.
    fn exchange(a: &mut Node<MapStore>, b: &mut Node<MapStore>, now: u64) -> usize {
        let mut sent = 0;
        loop {
            let mut quiet = true;
            for from in [0, 1] {
                let (src, dst) = if from == 0 {
                    (&mut *a, &mut *b)
                } else {
                    (&mut *b, &mut *a)
                };
                let (src_id, dst_id) = (src.id().to_owned(), dst.id().to_owned());
                for out in src.drain() {
                    if let Output::Send { message, to } = out
                        && to == dst_id
                    {
                        quiet = false;
                        sent += 1;
                        dst.step(now, &src_id, message);
                    }
                }
            }
            if quiet {
                return sent;
            }
        }
    }

    #[test]
    fn gossip_spreads_members_and_ring_versions_converge() {
        let mut a = node(0, &[]);
        let mut b = node(1, &[]);
        assert!(b.learn(&[mk(2, 1)]));
        a.learn(&[mk(1, 1)]);
        b.learn(&[mk(0, 1)]);
        a.peer_up("n1");
        b.peer_up("n0");
        exchange(&mut a, &mut b, 10);
        assert_eq!(a.members().len(), 3);
        assert_eq!(b.members().len(), 3);
        assert_eq!(a.ring().version(), b.ring().version());
        assert_eq!(a.view().members, b.view().members);
        // Agreeing nodes exchange digests, plus the heartbeat that moved: syn, syn-ack, and an
        // ack carrying a's new heartbeat only.
        b.drain();
        a.tick(2000);
        assert_eq!(exchange(&mut a, &mut b, 2000), 3);
        assert_eq!(a.view(), b.view());
    }

    #[test]
    fn persisted_members_are_known_at_start_and_generation_rises() {
        let known = vec![mk(0, 5), mk(1, 7), mk(2, 1)];
        let mut n = Node::new(
            mk(0, 3),
            ActorId(0),
            NodeConfig::default(),
            MapStore::default(),
            0,
            &known,
        );
        assert_eq!(n.members().len(), 3, "knows the cluster without seeds");
        assert_eq!(n.me().generation, 6, "above the persisted generation");
        assert!(matches!(&n.drain()[..], [Output::Persist(m)] if m.generation == 6));
    }

    #[test]
    fn silent_peers_are_suspected_and_readmitted_when_heard() {
        let mut a = node(0, &[mk(1, 1)]);
        a.peer_up("n1");
        a.drain();
        // n1's heartbeat arrives every second for a while...
        for t in 1..=20u64 {
            let delta = Delta {
                members: vec![],
                heartbeats: vec![("n1".into(), 1, t)],
            };
            a.step(t * 1000, "n2", Message::GossipAck { delta });
        }
        assert!(a.is_up("n1"));
        // ...then stops.
        a.tick(40_000);
        assert!(!a.is_up("n1"), "phi {}", a.opinion("n1").phi);
        assert!(
            !a.ring_info()
                .members
                .iter()
                .find(|m| m.member.id == "n1")
                .unwrap()
                .up
        );
        // Hearing from it again re-admits it.
        a.step(40_001, "n1", Message::GossipSyn { digest: vec![] });
        assert!(a.is_up("n1"));
    }
}
