//! This node's knowledge of the cluster: the membership view and the ring built from it, the
//! peers the transport is connected to, the failure detector, the seeds, and the gossip
//! exchange that spreads the view (Dynamo section 4.8).
//!
//! It needs no store: the gossip measurements run clusters of it alone.

use super::outbox::Outbox;
use crate::failure_detector::{DetectorConfig, FailureDetector, Opinion};
use crate::gossip;
use crate::membership::{Delta, Member, Rings, Status, View, supersedes};
use crate::message::GossipMessage;
use crate::ring::Ring;
use crate::rng::Rng;
use std::collections::{BTreeMap, BTreeSet};

/// Membership, ring, connections and liveness as one node sees them.
pub struct Cluster {
    me: Member,
    view: View,
    rings: Rings,
    connected: BTreeSet<String>,
    seeds: BTreeSet<String>,
    detector: FailureDetector,
    rng: Rng,
    /// The monotonic time of the latest input, for liveness questions asked between inputs.
    now: u64,
    gossip_interval_ms: u64,
    next_gossip: u64,
    members_epoch: u64,
    rejected: u64,
    known_before: bool,
    /// Records refused because another live process holds the id, and the last one.
    conflicts: (u64, Option<Member>),
    /// Members seen restarting (a newer generation), with the record known before; told when
    /// they connect.
    restarted: BTreeMap<String, Member>,
    /// The tokens this node had before it lost its data, as a peer told it.
    previous_tokens: Option<Vec<u64>>,
}

impl Cluster {
    /// The cluster as `me` starts it: from the records it persisted before (`known`, possibly
    /// empty), with its generation raised above any it had. Queues its own record for the
    /// history.
    pub fn new(
        mut me: Member,
        detector: DetectorConfig,
        gossip_interval_ms: u64,
        seed: u64,
        known: &[Member],
        out: &mut Outbox,
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
        let rings = view.rings().unwrap_or_default();
        out.persist(me.clone());
        Self {
            me,
            view,
            rings,
            connected: BTreeSet::new(),
            seeds: BTreeSet::new(),
            detector: FailureDetector::new(detector),
            rng: Rng::new(seed),
            now: 0,
            gossip_interval_ms,
            next_gossip: 0,
            members_epoch: 0,
            rejected: 0,
            known_before: false,
            conflicts: (0, None),
            restarted: BTreeMap::new(),
            previous_tokens: None,
        }
    }

    /// Records the monotonic time of an input.
    pub fn observe(&mut self, now: u64) {
        self.now = now;
    }

    /// This node's own record.
    pub fn me(&self) -> &Member {
        &self.me
    }

    /// This node's id.
    pub fn id(&self) -> &str {
        &self.me.id
    }

    /// The ring: who owns data now.
    pub fn ring(&self) -> &Ring {
        &self.rings.current
    }

    /// The current, future and all-tokens rings (see [`Rings`]).
    pub fn rings(&self) -> &Rings {
        &self.rings
    }

    /// The replicated membership state.
    pub fn view(&self) -> &View {
        &self.view
    }

    /// Counts changes to the member records (addresses and generations too, which leave the
    /// ring version alone); the shell re-dials peers when it moves.
    pub fn members_epoch(&self) -> u64 {
        self.members_epoch
    }

    /// Member records refused because no ring could be built with them.
    pub fn rejected(&self) -> u64 {
        self.rejected
    }

    /// Whether `node` is reachable from here: connected and not suspected (this node always is).
    pub fn is_up(&self, node: &str) -> bool {
        node == self.me.id || (self.connected.contains(node) && self.detector.alive(node, self.now))
    }

    /// Whether the transport has a connection to `node` (this node always has).
    pub fn is_connected(&self, node: &str) -> bool {
        node == self.me.id || self.connected.contains(node)
    }

    /// The failure detector's opinion of `node` as of the last input.
    pub fn opinion(&self, node: &str) -> Opinion {
        self.detector.opinion(node, self.now)
    }

    /// Something arrived from `from`: evidence that it is alive.
    pub fn heard_from(&mut self, now: u64, from: &str) {
        if self.view.members.contains_key(from) {
            self.detector.success(from, now);
        }
    }

    /// `node` did not answer in time: evidence against it.
    pub fn timed_out(&mut self, now: u64, node: &str) {
        self.detector.timeout(node, now);
    }

    /// Marks `id` as a seed: gossip turns to seeds now and then, so partitions heal.
    pub fn add_seed(&mut self, id: &str) {
        if id != self.me.id {
            self.seeds.insert(id.to_owned());
        }
    }

    /// Learns member records (from a peer's handshake). Returns true when a record changed.
    pub fn learn(&mut self, incoming: &[Member], out: &mut Outbox) -> bool {
        let delta = Delta {
            members: incoming.to_vec(),
            heartbeats: Vec::new(),
        };
        self.apply_delta(&delta, out)
    }

    /// The transport connected to `node`: it gets this node's digest at once.
    pub fn peer_up(&mut self, node: &str, out: &mut Outbox) {
        if node != self.me.id && self.connected.insert(node.to_owned()) {
            let digest = self.view.digest();
            out.send(node, GossipMessage::Syn { digest });
            if let Some(previous) = self.restarted.remove(node) {
                out.send(
                    node,
                    GossipMessage::Restarted {
                        previous_generation: previous.generation,
                        tokens: previous.tokens,
                    },
                );
            }
        }
    }

    /// Records a connection to `node` without starting a gossip exchange (simulations that
    /// start from a converged, connected cluster).
    pub fn assume_connected(&mut self, node: &str) {
        if node != self.me.id {
            self.connected.insert(node.to_owned());
        }
    }

    /// The transport lost `node`. Returns false when it was not connected.
    pub fn peer_down(&mut self, node: &str) -> bool {
        self.connected.remove(node)
    }

    /// The tokens this node had before it lost its data, if a peer told it.
    pub fn previous_tokens(&self) -> Option<&Vec<u64>> {
        self.previous_tokens.as_ref()
    }

    /// Declares new tokens for this node (a joining node placing itself, or a node that lost
    /// its data taking its place back).
    pub fn set_tokens(&mut self, tokens: Vec<u64>, out: &mut Outbox) {
        self.me.tokens = tokens;
        self.set_status(self.me.status, out);
    }

    /// Declares a new status for this node: its record gets a new version, which gossip
    /// spreads and the history keeps.
    pub fn set_status(&mut self, status: Status, out: &mut Outbox) {
        self.me.status = status;
        self.me.version += 1;
        self.view
            .members
            .insert(self.me.id.clone(), self.me.clone());
        if let Ok(rings) = self.view.rings() {
            self.rings = rings;
        }
        self.members_epoch += 1;
        out.persist(self.me.clone());
    }

    /// Declares `id` removed (`left`) on its behalf: for a dead node that will not come back.
    /// Refused for this node itself, an unknown id, or a node that is up (it can leave itself).
    pub fn remove(&mut self, id: &str, out: &mut Outbox) -> Result<(), String> {
        if id == self.me.id {
            return Err("a node cannot remove itself; use leave".into());
        }
        let Some(known) = self.view.members.get(id) else {
            return Err(format!("no member {id} is known"));
        };
        if self.is_up(id) {
            return Err(format!(
                "{id} is up: ask it to leave (dynamokv admin leave), which hands its data over"
            ));
        }
        if known.status == Status::Left {
            return Ok(());
        }
        let mut record = known.clone();
        record.status = Status::Left;
        record.version += 1;
        self.learn(&[record], out);
        Ok(())
    }

    /// A gossip message from `from`.
    pub fn on_message(&mut self, from: &str, message: GossipMessage, out: &mut Outbox) {
        match message {
            GossipMessage::Syn { digest } => {
                let delta = self.view.delta_for(&digest);
                let digest = self.view.digest();
                out.send(from, GossipMessage::SynAck { digest, delta });
            }
            GossipMessage::SynAck { digest, delta } => {
                self.apply_delta(&delta, out);
                let back = self.view.delta_for(&digest);
                if !back.is_empty() {
                    out.send(from, GossipMessage::Ack { delta: back });
                }
            }
            GossipMessage::Ack { delta } => {
                self.apply_delta(&delta, out);
            }
            GossipMessage::Restarted {
                previous_generation,
                tokens,
            } => {
                if previous_generation < self.me.generation {
                    self.known_before = true;
                    if !tokens.is_empty() && tokens.len() <= crate::membership::MAX_TOKENS {
                        self.previous_tokens = Some(tokens);
                    }
                }
            }
        }
    }

    /// Time passed: a gossip round when one is due.
    pub fn tick(&mut self, now: u64, out: &mut Outbox) {
        if now >= self.next_gossip {
            self.next_gossip = now + self.gossip_interval_ms;
            self.gossip_round(out);
        }
    }

    /// Records refused because another live process claimed a member's id, and the last such
    /// record.
    pub fn identity_conflicts(&self) -> (u64, Option<&Member>) {
        (self.conflicts.0, self.conflicts.1.as_ref())
    }

    /// Whether a peer told this node it knew it under an older generation: the cluster knew
    /// this node before it started.
    pub fn known_before(&self) -> bool {
        self.known_before
    }

    /// Applies gossip: records (persisted, ring rebuilt) and heartbeats (fed to the detector).
    /// Returns true when a record changed.
    fn apply_delta(&mut self, delta: &Delta, out: &mut Outbox) -> bool {
        let me = self.me.id.clone();
        // A record from another process claiming the id of a member that is up here (another
        // data directory: another instance) is refused: an id belongs to one node.
        let impostors: Vec<&Member> = delta
            .members
            .iter()
            .filter(|m| {
                m.id != me
                    && self
                        .view
                        .members
                        .get(&m.id)
                        .is_some_and(|k| k.instance != m.instance && supersedes(Some(k), m))
                    && self.is_up(&m.id)
            })
            .collect();
        if !impostors.is_empty() {
            self.conflicts.0 += impostors.len() as u64;
            self.conflicts.1 = impostors.last().map(|m| (*m).clone());
            let keep: Vec<Member> = delta
                .members
                .iter()
                .filter(|m| !impostors.contains(m))
                .cloned()
                .collect();
            let filtered = Delta {
                members: keep,
                heartbeats: delta.heartbeats.clone(),
            };
            return self.apply_delta(&filtered, out);
        }
        let records_change = delta
            .members
            .iter()
            .any(|m| m.id != me && supersedes(self.view.members.get(&m.id), m));
        let mut changed = false;
        if records_change {
            // Rare: apply to a copy, so a ring that cannot be built leaves everything as it was.
            let old_records: BTreeMap<String, Member> = delta
                .members
                .iter()
                .filter_map(|m| {
                    self.view
                        .members
                        .get(&m.id)
                        .map(|k| (k.id.clone(), k.clone()))
                })
                .collect();
            let mut next = self.view.clone();
            let records = Delta {
                members: delta.members.clone(),
                heartbeats: Vec::new(),
            };
            let applied = next.apply(&records, &me);
            match next.rings() {
                Ok(rings) => {
                    self.rings = rings;
                    self.view = next;
                    self.members_epoch += 1;
                    changed = !applied.members.is_empty();
                    for m in applied.members {
                        if old_records
                            .get(&m.id)
                            .is_some_and(|k| k.generation < m.generation)
                        {
                            // A restart: its detector history belongs to the old process.
                            self.detector.reset(&m.id, self.now);
                            if let Some(old) = old_records.get(&m.id) {
                                self.restarted.insert(m.id.clone(), old.clone());
                            }
                        }
                        out.persist(m);
                    }
                }
                Err(_) => {
                    self.rejected += 1;
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

    /// One gossip round: raise this node's heartbeat, then start a digest exchange with one
    /// random live peer, and sometimes with a node believed down or a seed.
    fn gossip_round(&mut self, out: &mut Outbox) {
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
            out.send(
                &t,
                GossipMessage::Syn {
                    digest: digest.clone(),
                },
            );
        }
    }
}
