//! Cluster membership: who is in the ring, where they listen, which tokens they own, and their
//! declared status (Dynamo section 4.8).
//!
//! The cluster view is a state-based CRDT. For each node id it holds one [`Member`] record.
//! Only the node itself writes its record, and every write raises `(generation, version)`:
//! - `generation` is the node's start time, forced above any generation it had before, so a
//!   restart outranks every older record about it;
//! - `version` counts the node's changes to its record within one generation.
//!
//! Two views merge by keeping, per id, the record with the larger `(generation, version)`, ties
//! broken by comparing the whole record. That is a pointwise maximum over a total order, so the
//! merge is commutative, associative and idempotent, and any two nodes that exchange views end
//! up with the same view. The property tests at the bottom check this.
//!
//! Heartbeats ride alongside: `(generation, counter)` per node, also merged by maximum. They are
//! kept apart from the records because they change every gossip round, and a heartbeat changes
//! neither the ring nor the persisted history.
//!
//! "Down" is not a status. Each node decides it locally ([`crate::failure_detector`]), as in
//! Dynamo.
//!
//! Endings: an *instance* (a node id with one data directory's instance number) that left, was
//! removed, or came back on an older copy of its data directory is ended for good. The endings
//! are a grow-only set beside the records, merged by union, gossiped and persisted like them.
//! A record of an ended instance counts as `left` (its effective record, same generation and
//! version), whatever the instance itself still claims, so it never re-enters a ring; the
//! nodes also refuse its connections and ignore its messages (see `docs/rebalancing.md`). A
//! wiped directory is a new instance, which may join again under the same id.
//!
//! Epochs: each record carries its data directory's epoch, raised and made durable at every
//! start and periodically while running, before it is announced. A restart (a newer
//! generation of the same instance) that announces an epoch no higher than one already seen
//! runs on an older copy of its data directory: values deleted since, whose tombstones may
//! have been collected, would come back from it. Such an instance is ended as `stale`.
//!
//! Over 700 lines: the code is about 650 - records, endings, epochs and the rings they make are
//! one CRDT and are merged together; the rest is the property tests of its laws.

use crate::ring::{Ring, RingError};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a node declares about its place in the cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Status {
    /// Announced, not yet owning data: its tokens are not in the ring.
    Joining,
    /// A full member of the ring.
    Up,
    /// Handing its data away before leaving; it owns its ranges until it has left.
    Leaving,
    /// Gone; its tokens are out of the ring.
    Left,
}

impl Status {
    /// Whether the node's tokens are part of the ring: only members that own data (up, or
    /// leaving and still handing it over).
    pub fn in_ring(self) -> bool {
        matches!(self, Status::Up | Status::Leaving)
    }

    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Joining => "joining",
            Status::Up => "up",
            Status::Leaving => "leaving",
            Status::Left => "left",
        }
    }
}

/// What a node announces about itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Member {
    /// The operator-chosen node id (unique in the cluster).
    pub id: String,
    /// Increases at every start of the node, so newer records win.
    pub generation: u64,
    /// Increases at every change the node makes to its record within a generation.
    pub version: u64,
    /// Declared status.
    pub status: Status,
    /// Address of the internal RPC listener.
    pub peer_addr: String,
    /// Address of the HTTP API.
    pub http_addr: String,
    /// The node's tokens on the ring.
    pub tokens: Vec<u64>,
    /// A random number drawn when the node's data directory was created and kept with it: two
    /// live processes claiming one node id are told apart by it, and the second is refused.
    pub instance: u64,
    /// How far this data directory has come: raised at every start and periodically while the
    /// node runs, each time made durable in the directory before it is announced. A restart
    /// announcing an epoch no higher than one seen before runs on an older copy of the
    /// directory (see [`is_stale_start`]).
    pub epoch: u64,
}

/// How an instance's membership ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum Ending {
    /// It left gracefully, after handing its ranges over.
    Left,
    /// An operator removed it (`admin remove`): its ranges were rebuilt from the other replicas.
    Removed,
    /// It came back on an older copy of its data directory.
    Stale,
}

impl Ending {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Ending::Left => "left",
            Ending::Removed => "removed",
            Ending::Stale => "stale",
        }
    }
}

/// An instance that is out of the cluster for good.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Ended {
    /// The node id.
    pub id: String,
    /// The data directory's instance number.
    pub instance: u64,
    /// How it ended.
    pub how: Ending,
    /// The node that declared it (the leaver itself, the node asked to remove it, or the node
    /// that found its data directory stale).
    pub by: String,
}

impl Ended {
    /// What an operator should read about it: what happened and how to bring the machine back.
    pub fn explain(&self) -> String {
        let what = match self.how {
            Ending::Left => format!(
                "node {} left the cluster (its data was handed over)",
                self.id
            ),
            Ending::Removed => format!(
                "node {} was removed from the cluster by {} (its ranges were rebuilt from the other replicas)",
                self.id, self.by
            ),
            Ending::Stale => format!(
                "node {} came back on an older copy of its data directory (found by {}): values deleted since could come back from it",
                self.id, self.by
            ),
        };
        format!(
            "{what}; this data directory (instance {:016x}) must not serve again. To bring the machine back, wipe the data directory and start the node again with --seeds: it joins as a new instance and receives its ranges from the current owners",
            self.instance
        )
    }

    /// The merge key: one entry per instance.
    fn key(&self) -> (String, u64) {
        (self.id.clone(), self.instance)
    }

    /// Checks an entry received from a peer.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() || self.id.len() > MAX_NODE_ID_BYTES {
            return Err(format!("node id must be 1 to {MAX_NODE_ID_BYTES} bytes"));
        }
        if self.by.len() > MAX_NODE_ID_BYTES {
            return Err("ending declared by an id that is too long".into());
        }
        Ok(())
    }
}

/// Whether `incoming` comes from a start of the instance `known` describes on an older copy of
/// its data directory: the same instance, another start, and an epoch no higher than one
/// already seen. (A start raises the epoch durably before announcing it; only a directory put
/// back from an older copy announces one the cluster has already seen.)
///
/// `presented` says the record comes from the process itself, at its handshake: it is then that
/// process's current start, so any other start than the one known counts (its wall clock, and
/// so its generation, may be behind). A record relayed by gossip may be an old one; only a newer
/// start counts there.
pub fn is_stale_start(known: &Member, incoming: &Member, presented: bool) -> bool {
    let other_start = if presented {
        incoming.generation != known.generation
    } else {
        incoming.generation > known.generation
    };
    known.id == incoming.id
        && known.instance == incoming.instance
        && other_start
        && incoming.epoch <= known.epoch
}

/// Most endings a peer may send at once.
pub const MAX_ENDINGS: usize = 4096;

/// Longest node id accepted.
pub const MAX_NODE_ID_BYTES: usize = 128;
/// Most tokens a member may claim.
pub const MAX_TOKENS: usize = 4096;

impl Member {
    /// Checks a record received from a peer.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() || self.id.len() > MAX_NODE_ID_BYTES {
            return Err(format!("node id must be 1 to {MAX_NODE_ID_BYTES} bytes"));
        }
        if self.tokens.is_empty() || self.tokens.len() > MAX_TOKENS {
            return Err(format!("a member needs 1 to {MAX_TOKENS} tokens"));
        }
        if self.peer_addr.len() > 256 || self.http_addr.len() > 256 {
            return Err("address too long".into());
        }
        Ok(())
    }

    /// The merge order given the endings: a record of an instance that did not end outranks
    /// one of an instance that ended (a node whose data directory was wiped after it was
    /// removed comes back, whatever the clocks said); then `(generation, version)`, then the
    /// whole record.
    fn rank<'a>(&'a self, endings: &Endings) -> (bool, u64, u64, &'a Member) {
        let live = !endings.contains_key(&(self.id.clone(), self.instance));
        (live, self.generation, self.version, self)
    }
}

/// True when `incoming` would replace `known` (or fill its absence) in a merge, given the
/// endings.
pub fn supersedes(known: Option<&Member>, incoming: &Member, endings: &Endings) -> bool {
    known.is_none_or(|k| k.rank(endings) < incoming.rank(endings))
}

/// Merges `incoming` into `members` given the endings; returns true when something changed.
pub fn merge_member(
    members: &mut BTreeMap<String, Member>,
    incoming: &Member,
    endings: &Endings,
) -> bool {
    if supersedes(members.get(&incoming.id), incoming, endings) {
        members.insert(incoming.id.clone(), incoming.clone());
        true
    } else {
        false
    }
}

/// The endings known, one per instance: a grow-only set (merged by union; two declarations of
/// the same instance's end keep the larger, so every node keeps the same one).
pub type Endings = BTreeMap<(String, u64), Ended>;

/// The record as it counts, given the endings: a record of an ended instance is `left`, with
/// the same generation and version (so it ranks where the record it stands for ranked).
pub fn effective(member: &Member, endings: &Endings) -> Member {
    let mut m = member.clone();
    if m.status != Status::Left && endings.contains_key(&(m.id.clone(), m.instance)) {
        m.status = Status::Left;
    }
    m
}

/// The ring of a set of member records: the tokens of every member whose status puts it in the
/// ring ([`Status::in_ring`]). The one function from membership to ring, used by nodes and by
/// partition-aware clients alike, so both compute the same ring version from the same records.
pub fn ring_of<'a>(members: impl IntoIterator<Item = &'a Member>) -> Result<Ring, RingError> {
    let tokens: BTreeMap<String, Vec<u64>> = members
        .into_iter()
        .filter(|m| m.status.in_ring())
        .map(|m| (m.id.clone(), m.tokens.clone()))
        .collect();
    Ring::new(&tokens)
}

/// The rings of a set of member records while membership changes are in progress.
///
/// - `current`: who owns data now (up and leaving members, [`ring_of`]): reads and the write
///   quorum use it.
/// - `future`: who will own it once every join and leave in progress has ended (up and joining
///   members): writes also go to a key's future primaries that are not current ones (pending
///   replicas), and joining nodes fetch the data of their future ranges.
/// - `all`: every token of both, the finest partition of the ring: anti-entropy keeps a tree per
///   range of it, so that current and future owners compare the same ranges.
///
/// With no change in progress the three are the same ring.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rings {
    /// Up and leaving members.
    pub current: Ring,
    /// Up and joining members.
    pub future: Ring,
    /// Up, joining and leaving members.
    pub all: Ring,
}

fn ring_with<'a>(
    members: impl IntoIterator<Item = &'a Member>,
    keep: impl Fn(Status) -> bool,
) -> Result<Ring, RingError> {
    let tokens: BTreeMap<String, Vec<u64>> = members
        .into_iter()
        .filter(|m| keep(m.status))
        .map(|m| (m.id.clone(), m.tokens.clone()))
        .collect();
    Ring::new(&tokens)
}

impl Rings {
    /// A hash of the three rings: it changes whenever any of them does.
    pub fn version(&self) -> u64 {
        self.all.version()
            ^ self.current.version().rotate_left(21)
            ^ self.future.version().rotate_left(42)
    }
}

/// The current, future and all-tokens rings of a set of member records (see [`Rings`]).
pub fn rings_of<'a>(
    members: impl IntoIterator<Item = &'a Member> + Clone,
) -> Result<Rings, RingError> {
    Ok(Rings {
        current: ring_of(members.clone())?,
        future: ring_with(members.clone(), |s| {
            matches!(s, Status::Up | Status::Joining)
        })?,
        all: ring_with(members, |s| s != Status::Left)?,
    })
}

/// What a membership change would move once complete: for each node, the fraction of the key
/// space it would newly replicate (summed over its ranges), given the records before and after.
pub fn plan<'a>(
    before: impl IntoIterator<Item = &'a Member> + Clone,
    after: impl IntoIterator<Item = &'a Member> + Clone,
    n: usize,
) -> Result<BTreeMap<String, f64>, RingError> {
    let old = ring_with(before.clone(), |s| s == Status::Up || s == Status::Joining)?;
    let new = ring_with(after.clone(), |s| s == Status::Up || s == Status::Joining)?;
    let all = ring_with(before.into_iter().chain(after), |s| s != Status::Left)?;
    let mut gained: BTreeMap<String, f64> = BTreeMap::new();
    for range in all.ranges() {
        let was = old.walk(range.end, n);
        for node in new.walk(range.end, n) {
            if !was.contains(&node) {
                *gained.entry(node.to_owned()).or_default() += range.len() as f64 / 2f64.powi(64);
            }
        }
    }
    Ok(gained)
}

/// Refuses taking `id` out of the ring (a leave, or a removal when `removal`) while a member
/// that would take over some of its ranges is down (`is_up` says no): a leave waits for its
/// new owners to confirm, so it must not plan ranges onto a member that cannot answer. The
/// refusal names each such member with the share of the key space it would gain, and what to
/// do.
pub fn refuse_onto_down<'a>(
    members: impl IntoIterator<Item = &'a Member>,
    id: &str,
    n: usize,
    is_up: impl Fn(&str) -> bool,
    removal: bool,
) -> Result<(), String> {
    let before: Vec<Member> = members.into_iter().cloned().collect();
    let after: Vec<Member> = before
        .iter()
        .cloned()
        .map(|mut m| {
            if m.id == id {
                m.status = Status::Left;
            }
            m
        })
        .collect();
    let Ok(gained) = plan(&before, &after, n) else {
        return Ok(());
    };
    let down: Vec<(String, f64)> = gained
        .into_iter()
        .filter(|(node, share)| node != id && *share > 0.0 && !is_up(node))
        .collect();
    let Some((first, _)) = down.first() else {
        return Ok(());
    };
    let names: Vec<String> = down
        .iter()
        .map(|(node, share)| format!("{node} ({:.1}% of the key space)", share * 100.0))
        .collect();
    let (who, it) = if down.len() == 1 {
        (format!("{} is", names[0]), "it")
    } else {
        (format!("{} are", names.join(", ")), "them")
    };
    let force = if removal {
        "; if both are gone for good, remove this one with --force (the down member rebuilds those ranges if it returns) and then the other"
    } else {
        ""
    };
    Err(format!(
        "{who} down and would take over ranges of {id}: start {it} again, or remove {it} first (dynamokv admin remove {first}){force}"
    ))
}

/// A heartbeat: the node's generation and a counter it raises every gossip round.
pub type Heartbeat = (u64, u64);

/// The replicated membership state: records, heartbeats and endings.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// One record per node id: the effective one ([`effective`]), so a record of an ended
    /// instance is `left`.
    pub members: BTreeMap<String, Member>,
    /// The latest heartbeat heard per node id.
    pub heartbeats: BTreeMap<String, Heartbeat>,
    /// The instances ended for good.
    pub ended: Endings,
}

/// One entry of a digest: what a node knows about one member, in a few bytes.
///
/// Digests compare the instance (whether it ended) and `(generation, version)` only. That is
/// enough because a record is written only by its own node, which raises the pair at every
/// change, so equal pairs mean equal records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestEntry {
    /// The member.
    pub id: String,
    /// The data directory instance of the known record.
    pub instance: u64,
    /// Generation of the known record.
    pub generation: u64,
    /// Version of the known record.
    pub version: u64,
    /// Heartbeat counter known (for that generation).
    pub heartbeat: u64,
}

/// What one side sends the other so it can catch up.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Delta {
    /// Records newer than the other side's.
    pub members: Vec<Member>,
    /// Heartbeats newer than the other side's: `(id, generation, counter)`.
    pub heartbeats: Vec<(String, u64, u64)>,
    /// Every ending the sender knows, when its endings differ from the other side's (their
    /// fingerprints differ); else empty.
    pub ended: Vec<Ended>,
}

impl Delta {
    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.heartbeats.is_empty() && self.ended.is_empty()
    }
}

/// What applying a delta changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Records that were added or replaced (to persist, and to rebuild the ring from).
    pub members: Vec<Member>,
    /// Node ids whose heartbeat advanced.
    pub heartbeats: Vec<String>,
    /// Endings learned (to persist).
    pub ended: Vec<Ended>,
}

impl View {
    /// A view holding `members`.
    pub fn from_members(members: impl IntoIterator<Item = Member>) -> View {
        View::from_parts(members, [])
    }

    /// A view holding `members` and the endings `ended` (what a node persisted).
    pub fn from_parts(
        members: impl IntoIterator<Item = Member>,
        ended: impl IntoIterator<Item = Ended>,
    ) -> View {
        let mut v = View::default();
        for e in ended {
            v.end(&e);
        }
        for m in members {
            v.merge_record(&m);
        }
        v
    }

    /// The CRDT merge: union of endings, then pointwise maximum of (effective) records and of
    /// heartbeats.
    pub fn merge(&mut self, other: &View) {
        for e in other.ended.values() {
            self.end(e);
        }
        for m in other.members.values() {
            self.merge_record(m);
        }
        for (id, hb) in &other.heartbeats {
            self.merge_heartbeat(id, *hb);
        }
    }

    /// Merges one record, as it counts given the endings; returns the stored record when it
    /// changed.
    fn merge_record(&mut self, incoming: &Member) -> Option<Member> {
        let m = effective(incoming, &self.ended);
        merge_member(&mut self.members, &m, &self.ended).then_some(m)
    }

    /// Records the end of an instance. Returns true when it is new (or replaces a smaller
    /// declaration); the instance's record, if it is the current one, then counts as `left`.
    pub fn end(&mut self, e: &Ended) -> bool {
        let key = e.key();
        if self.ended.get(&key).is_some_and(|known| known >= e) {
            return false;
        }
        self.ended.insert(key, e.clone());
        if let Some(m) = self.members.get(&e.id)
            && m.instance == e.instance
            && m.status != Status::Left
        {
            let left = effective(m, &self.ended);
            self.members.insert(e.id.clone(), left);
        }
        true
    }

    /// The ending of instance `instance` of `id`, if it ended.
    pub fn ended(&self, id: &str, instance: u64) -> Option<&Ended> {
        self.ended.get(&(id.to_owned(), instance))
    }

    /// A fingerprint of the endings: two views with the same endings have the same one, so a
    /// gossip exchange sends the endings only when they differ.
    pub fn endings_fingerprint(&self) -> u64 {
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for e in self.ended.values() {
            h.update(&(e.id.len() as u64).to_le_bytes());
            h.update(e.id.as_bytes());
            h.update(&e.instance.to_le_bytes());
            h.update(&[e.how as u8]);
            h.update(&(e.by.len() as u64).to_le_bytes());
            h.update(e.by.as_bytes());
        }
        h.digest()
    }

    fn merge_heartbeat(&mut self, id: &str, hb: Heartbeat) -> bool {
        match self.heartbeats.get(id) {
            Some(known) if *known >= hb => false,
            _ => {
                self.heartbeats.insert(id.to_owned(), hb);
                true
            }
        }
    }

    /// The digest of this view: a few bytes per member.
    pub fn digest(&self) -> Vec<DigestEntry> {
        self.members
            .values()
            .map(|m| DigestEntry {
                id: m.id.clone(),
                instance: m.instance,
                generation: m.generation,
                version: m.version,
                heartbeat: match self.heartbeats.get(&m.id) {
                    Some((g, c)) if *g == m.generation => *c,
                    _ => 0,
                },
            })
            .collect()
    }

    /// What the holder of `digest`, whose endings have fingerprint `endings`, is missing from
    /// this view.
    pub fn delta_for(&self, digest: &[DigestEntry], endings: u64) -> Delta {
        let theirs: BTreeMap<&str, &DigestEntry> =
            digest.iter().map(|d| (d.id.as_str(), d)).collect();
        let mut delta = Delta::default();
        let live = |id: &str, instance: u64| !self.ended.contains_key(&(id.to_owned(), instance));
        for m in self.members.values() {
            let t = theirs.get(m.id.as_str());
            if t.is_none_or(|t| {
                (live(&t.id, t.instance), t.generation, t.version)
                    < (live(&m.id, m.instance), m.generation, m.version)
            }) {
                delta.members.push(m.clone());
            }
            if let Some((g, c)) = self.heartbeats.get(&m.id) {
                let stale = match t {
                    None => true,
                    Some(t) => (t.generation, t.heartbeat) < (*g, *c),
                };
                if stale {
                    delta.heartbeats.push((m.id.clone(), *g, *c));
                }
            }
        }
        if endings != self.endings_fingerprint() {
            delta.ended = self.ended.values().cloned().collect();
        }
        delta
    }

    /// Applies a delta from a peer: endings first (a record of an instance that ended counts as
    /// `left`), then records, skipping records about `me` and invalid ones, then heartbeats.
    pub fn apply(&mut self, delta: &Delta, me: &str) -> Applied {
        let mut applied = Applied::default();
        for e in delta.ended.iter().take(MAX_ENDINGS) {
            if e.validate().is_err() {
                continue;
            }
            let before = self.members.get(&e.id).cloned();
            if self.end(e) {
                applied.ended.push(e.clone());
                if let Some(now) = self.members.get(&e.id)
                    && before.as_ref() != Some(now)
                    && e.id != me
                {
                    applied.members.push(now.clone());
                }
            }
        }
        for m in &delta.members {
            if m.id == me || m.validate().is_err() {
                continue;
            }
            if let Some(stored) = self.merge_record(m) {
                applied.members.push(stored);
            }
        }
        for (id, g, c) in &delta.heartbeats {
            if id == me || !self.members.contains_key(id) {
                continue;
            }
            if self.merge_heartbeat(id, (*g, *c)) {
                applied.heartbeats.push(id.clone());
            }
        }
        applied
    }

    /// The current, future and all-tokens rings this view describes (see [`Rings`]).
    pub fn rings(&self) -> Result<Rings, RingError> {
        rings_of(self.members.values())
    }

    /// The ring this view describes (see [`ring_of`]).
    pub fn ring(&self) -> Result<Ring, RingError> {
        ring_of(self.members.values())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn m(id: &str, generation: u64, version: u64, addr: &str) -> Member {
        Member {
            id: id.into(),
            generation,
            version,
            status: Status::Up,
            peer_addr: addr.into(),
            http_addr: addr.into(),
            tokens: vec![1],
            instance: 0,
            epoch: 0,
        }
    }

    #[test]
    fn newer_generation_and_version_win_in_any_order() {
        let (old, newer_version, newer_gen) =
            (m("a", 1, 1, "x"), m("a", 1, 2, "y"), m("a", 2, 1, "z"));
        let none = Endings::new();
        let mut one = BTreeMap::new();
        for r in [&old, &newer_version, &newer_gen] {
            merge_member(&mut one, r, &none);
        }
        let mut two = BTreeMap::new();
        for r in [&newer_gen, &old, &newer_version] {
            merge_member(&mut two, r, &none);
        }
        assert_eq!(one, two);
        assert_eq!(one["a"].peer_addr, "z");
        assert!(!merge_member(&mut one, &old, &none));
    }

    #[test]
    fn validate_refuses_bad_records() {
        assert!(m("a", 1, 1, "x").validate().is_ok());
        assert!(m("", 1, 1, "x").validate().is_err());
        let mut no_tokens = m("a", 1, 1, "x");
        no_tokens.tokens.clear();
        assert!(no_tokens.validate().is_err());
    }

    #[test]
    fn digests_and_deltas_carry_only_what_is_missing() {
        let mut a = View::from_members([m("n1", 1, 1, "x"), m("n2", 1, 3, "y")]);
        a.heartbeats.insert("n1".into(), (1, 10));
        a.heartbeats.insert("n2".into(), (1, 4));
        let mut b = View::from_members([m("n1", 1, 1, "x"), m("n2", 1, 2, "old")]);
        b.heartbeats.insert("n1".into(), (1, 10));
        let delta = a.delta_for(&b.digest(), b.endings_fingerprint());
        assert_eq!(delta.members, vec![m("n2", 1, 3, "y")]);
        assert_eq!(delta.heartbeats, vec![("n2".to_owned(), 1, 4)]);
        let applied = b.apply(&delta, "n1");
        assert_eq!(applied.members.len(), 1);
        assert_eq!(applied.heartbeats, vec!["n2".to_owned()]);
        assert_eq!(a, b);
        assert!(
            a.delta_for(&b.digest(), b.endings_fingerprint()).is_empty(),
            "agreeing views exchange nothing"
        );
        // Records about the receiver itself are ignored.
        let mut c = View::default();
        assert!(
            c.apply(&a.delta_for(&[], 0), "n2")
                .members
                .iter()
                .all(|x| x.id != "n2")
        );
    }

    fn member() -> impl Strategy<Value = Member> {
        (0..4u8, 0..3u64, 0..3u64, 0..2u8).prop_map(|(id, generation, version, addr)| Member {
            id: format!("n{id}"),
            generation,
            version,
            status: if addr == 0 {
                Status::Up
            } else {
                Status::Leaving
            },
            peer_addr: format!("a{addr}"),
            http_addr: "h".into(),
            tokens: vec![u64::from(id)],
            // Two starts of one id share a generation only when they are one start, of one
            // data directory: instances follow generations, as in a real cluster.
            instance: generation / 2,
            epoch: generation,
        })
    }

    fn ending() -> impl Strategy<Value = Ended> {
        (0..4u8, 0..2u64, 0..3u8, 0..2u8).prop_map(|(id, instance, how, by)| Ended {
            id: format!("n{id}"),
            instance,
            how: [Ending::Left, Ending::Removed, Ending::Stale][usize::from(how)],
            by: format!("n{by}"),
        })
    }

    fn view() -> impl Strategy<Value = View> {
        (
            proptest::collection::vec(member(), 0..6),
            proptest::collection::vec((0..4u8, 0..3u64, 0..5u64), 0..6),
            proptest::collection::vec(ending(), 0..3),
        )
            .prop_map(|(ms, hbs, ends)| {
                let mut v = View::from_parts(ms, ends);
                for (id, g, c) in hbs {
                    v.merge_heartbeat(&format!("n{id}"), (g, c));
                }
                v
            })
    }

    /// Views where a record's content follows from its `(id, generation, version)`, as when
    /// only the node itself writes its record (what digests rely on).
    fn single_writer_view() -> impl Strategy<Value = View> {
        view().prop_map(|v| {
            let members = v.members.values().cloned().map(|mut m| {
                m.peer_addr = format!("a{}.{}", m.generation, m.version);
                m.status = Status::Up;
                m
            });
            let mut w = View::from_parts(members, v.ended.values().cloned());
            w.heartbeats = v.heartbeats;
            w
        })
    }

    fn merged(a: &View, b: &View) -> View {
        let mut x = a.clone();
        x.merge(b);
        x
    }

    proptest! {
        #[test]
        fn merge_is_commutative(a in view(), b in view()) {
            prop_assert_eq!(merged(&a, &b), merged(&b, &a));
        }

        #[test]
        fn merge_is_associative_for_the_same_endings(
            a in view(), b in view(), c in view(), ends in proptest::collection::vec(ending(), 0..3)
        ) {
            // With the endings fixed, the rank is fixed and the merge is a pointwise maximum.
            // (A merge that brings a new ending may re-rank a record against one discarded
            // earlier; the digest exchange then converges in a second round, checked below.)
            let with = |v: &View| View::from_parts(
                v.members.values().cloned(),
                v.ended.values().chain(a.ended.values()).chain(b.ended.values())
                    .chain(c.ended.values()).chain(ends.iter()).cloned(),
            );
            let (a, b, c) = (with(&a), with(&b), with(&c));
            prop_assert_eq!(merged(&merged(&a, &b), &c), merged(&a, &merged(&b, &c)));
        }

        #[test]
        fn merge_is_idempotent(a in view()) {
            prop_assert_eq!(merged(&a, &a), a);
        }

        #[test]
        fn a_digest_exchange_converges_both_sides(a in single_writer_view(), b in single_writer_view()) {
            // The three-message exchange: a sends its digest, b answers with its digest and
            // what a lacks, a sends what b lacks. Records about "me" are excluded in real
            // nodes; here nobody is "me".
            // (A second exchange: an ending learned in the first may re-rank a record.)
            let mut a2 = a.clone();
            let mut b2 = b.clone();
            for _ in 0..2 {
                let to_a = b2.delta_for(&a2.digest(), a2.endings_fingerprint());
                let (b_digest, b_endings) = (b2.digest(), b2.endings_fingerprint());
                a2.apply(&to_a, "nobody");
                let to_b = a2.delta_for(&b_digest, b_endings);
                b2.apply(&to_b, "nobody");
            }
            let both = merged(&a, &b);
            prop_assert_eq!(&a2.ended, &both.ended);
            prop_assert_eq!(&b2.ended, &both.ended);
            prop_assert_eq!(&a2.members, &both.members);
            prop_assert_eq!(&b2.members, &both.members);
        }

        #[test]
        fn a_record_of_an_ended_instance_never_counts_in_a_ring(a in view(), b in view()) {
            let v = merged(&a, &b);
            for m in v.members.values() {
                if v.ended(&m.id, m.instance).is_some() {
                    prop_assert_eq!(m.status, Status::Left);
                }
            }
        }
    }

    fn ended(id: &str, instance: u64, how: Ending) -> Ended {
        Ended {
            id: id.into(),
            instance,
            how,
            by: "n9".into(),
        }
    }

    #[test]
    fn an_ended_instance_stays_left_whatever_it_claims_later() {
        let mut v = View::from_members([m("n4", 1, 3, "x")]);
        assert!(v.end(&ended("n4", 0, Ending::Removed)));
        assert_eq!(v.members["n4"].status, Status::Left);
        assert_eq!(
            (v.members["n4"].generation, v.members["n4"].version),
            (1, 3)
        );
        // The instance restarts on its old directory: a newer generation, still left.
        let applied = v.apply(
            &Delta {
                members: vec![m("n4", 5, 1, "y")],
                ..Delta::default()
            },
            "n1",
        );
        assert_eq!(applied.members.len(), 1);
        assert_eq!(v.members["n4"].status, Status::Left);
        assert!(v.ring().unwrap().is_empty());
        // A wiped directory is a new instance: it counts.
        let mut fresh = m("n4", 9, 1, "z");
        fresh.instance = 7;
        v.apply(
            &Delta {
                members: vec![fresh],
                ..Delta::default()
            },
            "n1",
        );
        assert_eq!(v.members["n4"].status, Status::Up);
        assert!(!v.end(&ended("n4", 0, Ending::Removed)), "already known");
    }

    #[test]
    fn a_new_instance_outranks_an_ended_one_whatever_the_clocks_said() {
        let mut removed = m("n4", 50, 2, "x");
        removed.status = Status::Left;
        let mut v = View::from_parts([removed], [ended("n4", 0, Ending::Removed)]);
        // Its wiped directory starts with its wall clock behind the old instance's start.
        let mut fresh = m("n4", 10, 1, "y");
        fresh.instance = 7;
        let mut w = View::from_members([fresh.clone()]);
        // Gossip: the fresh node learns the ending, then its record outranks the old one.
        w.apply(&v.delta_for(&w.digest(), w.endings_fingerprint()), "n2");
        assert_eq!(
            w.members["n4"], fresh,
            "kept though its generation is older"
        );
        let to_v = w.delta_for(&v.digest(), v.endings_fingerprint());
        assert_eq!(to_v.members, vec![fresh.clone()], "and sent");
        v.apply(&to_v, "n1");
        assert_eq!(v.members["n4"], fresh);
        assert_eq!(v.ended, w.ended);
    }

    #[test]
    fn endings_travel_only_when_they_differ() {
        let mut a = View::from_members([m("n1", 1, 1, "x")]);
        let b = a.clone();
        a.end(&ended("n4", 3, Ending::Left));
        let to_b = a.delta_for(&b.digest(), b.endings_fingerprint());
        assert_eq!(to_b.ended.len(), 1);
        let mut b2 = b.clone();
        assert_eq!(b2.apply(&to_b, "n2").ended.len(), 1);
        assert!(
            a.delta_for(&b2.digest(), b2.endings_fingerprint())
                .is_empty()
        );
    }

    #[test]
    fn a_start_on_an_older_copy_is_stale() {
        let mut known = m("n4", 10, 4, "x");
        known.epoch = 6;
        let mut restart = m("n4", 20, 1, "x");
        restart.epoch = 7;
        assert!(!is_stale_start(&known, &restart, true), "a normal restart");
        restart.epoch = 6;
        assert!(is_stale_start(&known, &restart, true), "an older copy");
        assert!(
            is_stale_start(&known, &restart, false),
            "also when gossiped"
        );
        restart.instance = 1;
        assert!(
            !is_stale_start(&known, &restart, true),
            "another data directory"
        );
        // The same start, an older record (the handshake presents the start's first record).
        let mut same_start = m("n4", 10, 1, "x");
        same_start.epoch = 2;
        assert!(!is_stale_start(&known, &same_start, true), "the same start");
        // An older copy started with its wall clock behind: an older generation.
        let mut behind = m("n4", 5, 1, "x");
        behind.epoch = 3;
        assert!(
            is_stale_start(&known, &behind, true),
            "presented by the process"
        );
        assert!(
            !is_stale_start(&known, &behind, false),
            "relayed: maybe just an old record"
        );
    }
}
