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
}

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

    /// The merge order: `(generation, version)`, then the whole record.
    fn rank(&self) -> (u64, u64, &Member) {
        (self.generation, self.version, self)
    }
}

/// True when `incoming` would replace `known` (or fill its absence) in a merge.
pub fn supersedes(known: Option<&Member>, incoming: &Member) -> bool {
    known.is_none_or(|k| k.rank() < incoming.rank())
}

/// Merges `incoming` into `members`; returns true when something changed.
pub fn merge_member(members: &mut BTreeMap<String, Member>, incoming: &Member) -> bool {
    if supersedes(members.get(&incoming.id), incoming) {
        members.insert(incoming.id.clone(), incoming.clone());
        true
    } else {
        false
    }
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

/// A heartbeat: the node's generation and a counter it raises every gossip round.
pub type Heartbeat = (u64, u64);

/// The replicated membership state: records and heartbeats.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct View {
    /// One record per node id.
    pub members: BTreeMap<String, Member>,
    /// The latest heartbeat heard per node id.
    pub heartbeats: BTreeMap<String, Heartbeat>,
}

/// One entry of a digest: what a node knows about one member, in a few bytes.
///
/// Digests compare `(generation, version)` only. That is enough because a record is written
/// only by its own node, which raises the pair at every change, so equal pairs mean equal
/// records.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DigestEntry {
    /// The member.
    pub id: String,
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
}

impl Delta {
    /// True when there is nothing to send.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty() && self.heartbeats.is_empty()
    }
}

/// What applying a delta changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Applied {
    /// Records that were added or replaced (to persist, and to rebuild the ring from).
    pub members: Vec<Member>,
    /// Node ids whose heartbeat advanced.
    pub heartbeats: Vec<String>,
}

impl View {
    /// A view holding `members`.
    pub fn from_members(members: impl IntoIterator<Item = Member>) -> View {
        let mut v = View::default();
        for m in members {
            merge_member(&mut v.members, &m);
        }
        v
    }

    /// The CRDT merge: pointwise maximum of records and of heartbeats.
    pub fn merge(&mut self, other: &View) {
        for m in other.members.values() {
            merge_member(&mut self.members, m);
        }
        for (id, hb) in &other.heartbeats {
            self.merge_heartbeat(id, *hb);
        }
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
                generation: m.generation,
                version: m.version,
                heartbeat: match self.heartbeats.get(&m.id) {
                    Some((g, c)) if *g == m.generation => *c,
                    _ => 0,
                },
            })
            .collect()
    }

    /// What the holder of `digest` is missing from this view.
    pub fn delta_for(&self, digest: &[DigestEntry]) -> Delta {
        let theirs: BTreeMap<&str, &DigestEntry> =
            digest.iter().map(|d| (d.id.as_str(), d)).collect();
        let mut delta = Delta::default();
        for m in self.members.values() {
            let t = theirs.get(m.id.as_str());
            if t.is_none_or(|t| (t.generation, t.version) < (m.generation, m.version)) {
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
        delta
    }

    /// Applies a delta from a peer, skipping records about `me` and invalid records.
    pub fn apply(&mut self, delta: &Delta, me: &str) -> Applied {
        let mut applied = Applied::default();
        for m in &delta.members {
            if m.id == me || m.validate().is_err() {
                continue;
            }
            if merge_member(&mut self.members, m) {
                applied.members.push(m.clone());
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
        }
    }

    #[test]
    fn newer_generation_and_version_win_in_any_order() {
        let (old, newer_version, newer_gen) =
            (m("a", 1, 1, "x"), m("a", 1, 2, "y"), m("a", 2, 1, "z"));
        let mut one = BTreeMap::new();
        for r in [&old, &newer_version, &newer_gen] {
            merge_member(&mut one, r);
        }
        let mut two = BTreeMap::new();
        for r in [&newer_gen, &old, &newer_version] {
            merge_member(&mut two, r);
        }
        assert_eq!(one, two);
        assert_eq!(one["a"].peer_addr, "z");
        assert!(!merge_member(&mut one, &old));
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
        let delta = a.delta_for(&b.digest());
        assert_eq!(delta.members, vec![m("n2", 1, 3, "y")]);
        assert_eq!(delta.heartbeats, vec![("n2".to_owned(), 1, 4)]);
        let applied = b.apply(&delta, "n1");
        assert_eq!(applied.members.len(), 1);
        assert_eq!(applied.heartbeats, vec!["n2".to_owned()]);
        assert_eq!(a, b);
        assert!(
            a.delta_for(&b.digest()).is_empty(),
            "agreeing views exchange nothing"
        );
        // Records about the receiver itself are ignored.
        let mut c = View::default();
        assert!(
            c.apply(&a.delta_for(&[]), "n2")
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
            instance: 0,
        })
    }

    fn view() -> impl Strategy<Value = View> {
        (
            proptest::collection::vec(member(), 0..6),
            proptest::collection::vec((0..4u8, 0..3u64, 0..5u64), 0..6),
        )
            .prop_map(|(ms, hbs)| {
                let mut v = View::from_members(ms);
                for (id, g, c) in hbs {
                    v.merge_heartbeat(&format!("n{id}"), (g, c));
                }
                v
            })
    }

    /// Views where a record's content follows from its `(id, generation, version)`, as when
    /// only the node itself writes its record (what digests rely on).
    fn single_writer_view() -> impl Strategy<Value = View> {
        view().prop_map(|mut v| {
            for m in v.members.values_mut() {
                m.peer_addr = format!("a{}.{}", m.generation, m.version);
                m.status = Status::Up;
            }
            v
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
        fn merge_is_associative(a in view(), b in view(), c in view()) {
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
            let mut a2 = a.clone();
            let mut b2 = b.clone();
            let to_a = b2.delta_for(&a2.digest());
            let b_digest = b2.digest();
            a2.apply(&to_a, "nobody");
            let to_b = a2.delta_for(&b_digest);
            b2.apply(&to_b, "nobody");
            let both = merged(&a, &b);
            prop_assert_eq!(&a2.members, &both.members);
            prop_assert_eq!(&b2.members, &both.members);
        }
    }
}
