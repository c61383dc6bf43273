//! This node's knowledge of the cluster: the membership view and the ring built from it, the
//! peers the transport is connected to, the failure detector, the seeds, and the gossip
//! exchange that spreads the view (Dynamo section 4.8).
//!
//! It needs no store: the gossip measurements run clusters of it alone.

use super::outbox::Outbox;
use crate::failure_detector::{DetectorConfig, FailureDetector, Opinion};
use crate::gossip;
use crate::membership::{
    Delta, Ended, Ending, Member, Rings, Status, View, is_stale_start, supersedes,
};
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
    /// This node's own instance ended (it left, was removed, or runs on a stale copy of its
    /// data directory): it serves nothing any more.
    ended: Option<Ended>,
    /// When this node next raises its data directory's epoch (set at the first tick).
    next_epoch: Option<u64>,
}

/// How often a node raises its data directory's epoch while it runs. A copy of the directory
/// taken while the node runs (a filesystem snapshot) is then seen as stale once the node has
/// raised its epoch after the copy and its peers heard of it: within about a minute, well under
/// the default tombstone age (5 minutes), so a copy that misses a tombstone is always caught
/// before that tombstone may be collected.
pub const EPOCH_INTERVAL_MS: u64 = 60_000;

/// What the cluster makes of a peer on a connection: whether its messages are taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// The peer's instance is the member's current one.
    Admitted,
    /// The peer's instance ended: it must be told, and nothing it sends is taken.
    Ended(Ended),
    /// The peer's instance is not the member's current one (an unknown id, a record refused,
    /// or an older instance of a member that came back with a new data directory).
    NotCurrent,
}

impl Cluster {
    /// The cluster as `me` starts it: from the records it persisted before (`known`, possibly
    /// empty), with its generation raised above any it had. Queues its own record for the
    /// history.
    ///
    /// The node's data directory epoch is raised above any of its own records it persisted
    /// (`me.epoch` may carry a higher floor); the shell makes the record durable before the
    /// node is announced. `ended` are the endings it persisted: if its own instance is among
    /// them it starts ended (the shell refuses to start it before that, see
    /// [`crate::membership::Ended::explain`]).
    pub fn new(
        mut me: Member,
        detector: DetectorConfig,
        gossip_interval_ms: u64,
        seed: u64,
        known: &[Member],
        ended: &[Ended],
        out: &mut Outbox,
    ) -> Self {
        let own = || known.iter().filter(|m| m.id == me.id);
        if let Some(old) = own().map(|m| m.generation).max()
            && old >= me.generation
        {
            me.generation = old + 1;
        }
        if let Some(old) = own()
            .filter(|m| m.instance == me.instance)
            .map(|m| m.epoch)
            .max()
        {
            me.epoch = me.epoch.max(old + 1);
        }
        let mut view = View::from_parts(
            known
                .iter()
                .filter(|m| m.id != me.id && m.validate().is_ok())
                .cloned(),
            ended.iter().cloned(),
        );
        let own_end = view.ended(&me.id, me.instance).cloned();
        if own_end.is_some() {
            me.status = Status::Left;
        }
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
            ended: own_end,
            next_epoch: None,
        }
    }

    /// This node's own ending, once it knows its instance left, was removed or is stale.
    pub fn ended(&self) -> Option<&Ended> {
        self.ended.as_ref()
    }

    /// Whether the messages of `from`, on a connection whose handshake presented instance
    /// `instance`, are taken (see [`Admission`]).
    pub fn admits(&self, from: &str, instance: u64) -> Admission {
        match self.view.members.get(from) {
            Some(m) if m.instance == instance && m.status != Status::Left => Admission::Admitted,
            _ => match self.view.ended(from, instance) {
                Some(e) => Admission::Ended(e.clone()),
                None => Admission::NotCurrent,
            },
        }
    }

    /// A peer said this node's instance ended (or told of another instance's end): learn it.
    pub fn on_ended(&mut self, e: Ended, out: &mut Outbox) {
        let delta = Delta {
            ended: vec![e],
            ..Delta::default()
        };
        self.apply_delta(&delta, out);
    }

    /// Applies gossip (see [`Cluster::apply`]).
    fn apply_delta(&mut self, delta: &Delta, out: &mut Outbox) -> bool {
        self.apply(delta, false, out)
    }

    /// Declares this node's own instance ended: its record becomes `left`, and the ending is
    /// persisted and gossiped like any other.
    fn end_self(&mut self, e: Ended, out: &mut Outbox) {
        if self.ended.is_some() {
            return;
        }
        if self.view.end(&e) {
            out.persist_ended(e.clone());
        }
        self.ended = Some(e);
        if self.me.status != Status::Left {
            self.set_status(Status::Left, out);
        }
        self.members_epoch += 1;
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

    /// Whether `node` is reachable from here: connected, not suspected, and not `left` (an
    /// instance that left or was removed never serves again). This node always is.
    pub fn is_up(&self, node: &str) -> bool {
        node == self.me.id
            || (self.connected.contains(node)
                && self.detector.alive(node, self.now)
                && self
                    .view
                    .members
                    .get(node)
                    .is_none_or(|m| m.status != Status::Left))
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

    /// `node` was sent a request it answers at once (as of the last input).
    pub fn asked(&mut self, node: &str) {
        if node != self.me.id && self.view.members.contains_key(node) {
            self.detector.asked(node, self.now);
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

    /// Learns member records presented by the peers themselves (at their handshakes). Returns
    /// true when a record changed.
    pub fn learn(&mut self, incoming: &[Member], out: &mut Outbox) -> bool {
        let delta = Delta {
            members: incoming.to_vec(),
            ..Delta::default()
        };
        self.apply(&delta, true, out)
    }

    /// The transport connected to `node`: it gets this node's digest at once (unless it left).
    pub fn peer_up(&mut self, node: &str, out: &mut Outbox) {
        let left = self
            .view
            .members
            .get(node)
            .is_some_and(|m| m.status == Status::Left);
        if node != self.me.id && self.connected.insert(node.to_owned()) && !left {
            let digest = self.view.digest();
            let endings = self.view.endings_fingerprint();
            out.send(node, GossipMessage::Syn { digest, endings });
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
    /// spreads and the history keeps. `left` ends this instance for good.
    pub fn set_status(&mut self, status: Status, out: &mut Outbox) {
        if self.ended.is_some() && status != Status::Left {
            return;
        }
        if status == Status::Left && self.ended.is_none() {
            let e = Ended {
                id: self.me.id.clone(),
                instance: self.me.instance,
                how: Ending::Left,
                by: self.me.id.clone(),
            };
            return self.end_self(e, out);
        }
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

    /// Why `id` may not go out of the ring now: a member that would take over its ranges is
    /// down ([`crate::membership::refuse_onto_down`]).
    pub fn refuse_onto_down(&self, id: &str, n: usize, removal: bool) -> Result<(), String> {
        crate::membership::refuse_onto_down(
            self.view.members.values(),
            id,
            n,
            |node| self.is_up(node),
            removal,
        )
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
        let ending = Ended {
            id: id.to_owned(),
            instance: known.instance,
            how: Ending::Removed,
            by: self.me.id.clone(),
        };
        self.apply_delta(
            &Delta {
                members: vec![record],
                ended: vec![ending],
                ..Delta::default()
            },
            out,
        );
        Ok(())
    }

    /// A gossip message from `from`.
    pub fn on_message(&mut self, from: &str, message: GossipMessage, out: &mut Outbox) {
        match message {
            GossipMessage::Syn { digest, endings } => {
                let delta = self.view.delta_for(&digest, endings);
                let digest = self.view.digest();
                let endings = self.view.endings_fingerprint();
                out.send(
                    from,
                    GossipMessage::SynAck {
                        digest,
                        endings,
                        delta,
                    },
                );
            }
            GossipMessage::SynAck {
                digest,
                endings,
                delta,
            } => {
                self.apply_delta(&delta, out);
                let back = self.view.delta_for(&digest, endings);
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

    /// Time passed: a gossip round when one is due, and the epoch raised when due.
    pub fn tick(&mut self, now: u64, out: &mut Outbox) {
        // The epoch is raised every EPOCH_INTERVAL_MS, the first time after a random part of
        // it, so that nodes started together spread their raises.
        let due = match self.next_epoch {
            Some(due) => due,
            None => {
                let due = now + EPOCH_INTERVAL_MS / 2 + self.rng.below(EPOCH_INTERVAL_MS / 2);
                *self.next_epoch.insert(due)
            }
        };
        if now >= due && self.ended.is_none() {
            self.next_epoch = Some(now + EPOCH_INTERVAL_MS);
            self.me.epoch += 1;
            self.set_status(self.me.status, out);
        }
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

    /// Applies endings, records (persisted, ring rebuilt) and heartbeats (fed to the
    /// detector); `presented` when the records come from the peers themselves (handshakes),
    /// not relayed by gossip. Returns true when a record changed.
    fn apply(&mut self, delta: &Delta, presented: bool, out: &mut Outbox) -> bool {
        let impostors = self.impostors(delta, presented);
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
                ..delta.clone()
            };
            return self.apply(&filtered, presented, out);
        }
        let stale = self.stale_starts(delta, presented);
        if !stale.is_empty() {
            let mut with_endings = delta.clone();
            with_endings.ended.extend(stale);
            return self.apply(&with_endings, presented, out);
        }
        self.outrank_earlier_self(delta, out);
        // This node's own end, from a peer: it stops serving.
        if let Some(e) = delta
            .ended
            .iter()
            .find(|e| e.id == self.me.id && e.instance == self.me.instance && e.validate().is_ok())
        {
            self.end_self(e.clone(), out);
        }
        let changed = match self.apply_records(delta, out) {
            Some(changed) => changed,
            None => return false,
        };
        if !delta.heartbeats.is_empty() {
            let beats = Delta {
                heartbeats: delta.heartbeats.clone(),
                ..Delta::default()
            };
            for id in self.view.apply(&beats, &self.me.id).heartbeats {
                self.detector.heartbeat(&id, self.now);
            }
        }
        changed
    }

    /// Records from another process claiming the id of a member that is up here: an id
    /// belongs to one node. Another process is another data directory (another instance), or
    /// a copy of this one (the same instance, an epoch already seen).
    fn impostors<'d>(&self, delta: &'d Delta, presented: bool) -> Vec<&'d Member> {
        delta
            .members
            .iter()
            .filter(|m| {
                m.id != self.me.id
                    && self.view.members.get(&m.id).is_some_and(|k| {
                        (k.instance != m.instance && supersedes(Some(k), m, &self.view.ended))
                            || is_stale_start(k, m, presented)
                    })
                    && self.is_up(&m.id)
            })
            .collect()
    }

    /// Starts of members that are down here, on an older copy of their data directory, not
    /// yet ended: each instance ends (stale), so nothing of that copy comes back.
    fn stale_starts(&self, delta: &Delta, presented: bool) -> Vec<Ended> {
        delta
            .members
            .iter()
            .filter(|m| {
                m.id != self.me.id
                    && self
                        .view
                        .members
                        .get(&m.id)
                        .is_some_and(|k| is_stale_start(k, m, presented))
                    && self.view.ended(&m.id, m.instance).is_none()
                    && !delta
                        .ended
                        .iter()
                        .any(|e| e.id == m.id && e.instance == m.instance)
            })
            .map(|m| Ended {
                id: m.id.clone(),
                instance: m.instance,
                how: Ending::Stale,
                by: self.me.id.clone(),
            })
            .collect()
    }

    /// A record of this node's id from an earlier instance (a data directory that was wiped)
    /// that outranks this one, as when this start's wall clock is behind that instance's:
    /// this node takes a generation above it, so that its own record counts.
    fn outrank_earlier_self(&mut self, delta: &Delta, out: &mut Outbox) {
        if let Some(top) = delta
            .members
            .iter()
            .filter(|m| m.id == self.me.id && m.instance != self.me.instance)
            .map(|m| m.generation)
            .max()
            && top >= self.me.generation
            && self.ended.is_none()
        {
            self.me.generation = top + 1;
            self.view
                .heartbeats
                .insert(self.me.id.clone(), (self.me.generation, 1));
            self.set_status(self.me.status, out);
        }
    }

    /// Applies the delta's endings and records (to a copy first, so a ring that cannot be
    /// built leaves everything as it was: `None`, counted as rejected); whether one changed.
    fn apply_records(&mut self, delta: &Delta, out: &mut Outbox) -> Option<bool> {
        let me = self.me.id.clone();
        let records_change = !delta.ended.is_empty()
            || delta.members.iter().any(|m| {
                m.id != me && supersedes(self.view.members.get(&m.id), m, &self.view.ended)
            });
        if !records_change {
            return Some(false);
        }
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
            ended: delta.ended.clone(),
        };
        let applied = next.apply(&records, &me);
        let Ok(rings) = next.rings() else {
            self.rejected += 1;
            return None;
        };
        self.rings = rings;
        self.view = next;
        self.members_epoch += 1;
        let changed = !applied.members.is_empty() || !applied.ended.is_empty();
        for e in applied.ended {
            out.persist_ended(e);
        }
        for m in applied.members {
            // A restart: a newer generation of a member that had not left (a member that left
            // comes back as a new node and joins). Its detector history belongs to the old
            // process.
            if let Some(old) = old_records
                .get(&m.id)
                .filter(|k| k.generation < m.generation && k.status != Status::Left)
            {
                self.detector.reset(&m.id, self.now);
                self.restarted.insert(m.id.clone(), old.clone());
            }
            out.persist(m);
        }
        Some(changed)
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
        // Members that left are not asked: they serve nothing, and refuse nothing either.
        for (id, _) in self
            .view
            .members
            .iter()
            .filter(|(id, m)| **id != self.me.id && m.status != Status::Left)
        {
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
        let endings = self.view.endings_fingerprint();
        for t in targets {
            out.send(
                &t,
                GossipMessage::Syn {
                    digest: digest.clone(),
                    endings,
                },
            );
        }
    }
}
