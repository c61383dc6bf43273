//! Versioning: dotted version vector sets (DVVS).
//!
//! Dynamo (DeCandia et al., SOSP 2007, section 4.4) versions every object with a vector clock and
//! keeps causally concurrent versions side by side as *siblings*, handing the client one context
//! that covers them all; a later put with that context reconciles them. Plain vector clocks per
//! sibling produce false siblings when a coordinator writes on behalf of several clients, so we
//! use the refinement of Almeida et al. ("Scalable and Accurate Causality Tracking for Eventually
//! Consistent Stores", 2014), as Riak 2.0 does:
//!
//! - every write creates a fresh [`Dot`] `(actor, counter)`, issued by the coordinator's actor;
//! - an [`Object`] is a [`VersionVector`] (the *clock*: for each actor the highest counter seen
//!   and the timestamp of its last operation) plus the siblings still alive, each tagged with
//!   the dot that created it;
//! - the clock covers every dot the object has seen, alive or superseded; per actor the dots of
//!   one key are issued in order, so "seen" is a prefix `1..=counter` and a vector is exact.
//!
//! The operations:
//! - [`Object::update`] - a coordinator stamps a new write given the client's context: the
//!   siblings the context covers are superseded, the others are kept, the new value gets a new
//!   dot;
//! - [`Object::merge`] - the one merge used by writes, read repair, anti-entropy and handoff: a
//!   sibling survives unless the other side has seen its dot and dropped it;
//! - [`Object::context`] - the vector handed to clients (see [`crate::context`] for its token);
//! - deletes are writes of a tombstone sibling (`value: None`).
//!
//! Merge is commutative, associative and idempotent (a join-semilattice), so replicas converge
//! whatever order they exchange objects in; the property tests at the bottom check this and the
//! other laws against a reference model of causal histories (sets of dots).
//!
//! Each sibling also carries its deadline (expiry) and its kind (bytes or a counter's state);
//! both are set once by the write and never change, so the merge needs no rule for them.
//!
//! Over 700 lines: the code is under 520; the rest is the property tests against the model,
//! which belong next to what they check.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;

/// The identity that issues dots: one per node incarnation of its data directory.
///
/// A node whose data directory was lost, or that restarted after an unclean shutdown, gets a
/// new actor id, so counters are never reused for different writes (Riak's KV679 lesson).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ActorId(pub u64);

impl fmt::Debug for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Display for ActorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// One write event: the `counter`-th write of `actor` to a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Dot {
    /// Who coordinated the write.
    pub actor: ActorId,
    /// The actor's sequence number for this key, starting at 1.
    pub counter: u64,
}

/// One entry of a version vector: the highest counter seen from an actor and the wall-clock
/// timestamp (milliseconds since the Unix epoch) of that actor's last operation.
///
/// The timestamp is informational (operators, later clock pruning); causality uses the counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClockEntry {
    /// Highest counter seen from the actor; every dot `1..=counter` is covered.
    pub counter: u64,
    /// Timestamp of the actor's last operation, ms since the Unix epoch.
    pub timestamp: u64,
}

impl ClockEntry {
    /// The join of two entries of the same actor: the higher counter, ties broken by the later
    /// timestamp (deterministic, so merge stays commutative).
    fn join(self, other: ClockEntry) -> ClockEntry {
        if (other.counter, other.timestamp) > (self.counter, self.timestamp) {
            other
        } else {
            self
        }
    }
}

/// A version vector: per actor, the highest counter seen and its last timestamp.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VersionVector {
    entries: BTreeMap<ActorId, ClockEntry>,
}

impl VersionVector {
    /// The empty vector: covers nothing. A write with it is a *blind* write.
    pub fn new() -> Self {
        Self::default()
    }

    /// Builds a vector from entries; later duplicates of an actor are joined.
    pub fn from_entries(entries: impl IntoIterator<Item = (ActorId, ClockEntry)>) -> Self {
        let mut vv = Self::new();
        for (actor, entry) in entries {
            vv.observe(actor, entry);
        }
        vv
    }

    /// The highest counter seen from `actor` (0 when none).
    pub fn counter(&self, actor: ActorId) -> u64 {
        self.entries.get(&actor).map_or(0, |e| e.counter)
    }

    /// The entry of `actor`, if any.
    pub fn get(&self, actor: ActorId) -> Option<ClockEntry> {
        self.entries.get(&actor).copied()
    }

    /// True when the vector has seen `dot`.
    pub fn covers(&self, dot: Dot) -> bool {
        self.counter(dot.actor) >= dot.counter
    }

    /// True when this vector has seen everything `other` has (`self >= other`).
    pub fn descends(&self, other: &VersionVector) -> bool {
        other
            .entries
            .iter()
            .all(|(actor, e)| self.counter(*actor) >= e.counter)
    }

    /// Joins `entry` for `actor` into this vector.
    fn observe(&mut self, actor: ActorId, entry: ClockEntry) {
        if entry.counter == 0 {
            return;
        }
        self.entries
            .entry(actor)
            .and_modify(|e| *e = e.join(entry))
            .or_insert(entry);
    }

    /// Joins `other` into this vector (pointwise maximum).
    pub fn merge(&mut self, other: &VersionVector) {
        for (actor, entry) in &other.entries {
            self.observe(*actor, *entry);
        }
    }

    /// The entries in actor order.
    pub fn iter(&self) -> impl Iterator<Item = (ActorId, ClockEntry)> + '_ {
        self.entries.iter().map(|(a, e)| (*a, *e))
    }

    /// Number of actors in the vector.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when the vector covers nothing.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// What a sibling's value is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ValueKind {
    /// Bytes the client wrote.
    #[default]
    Bytes,
    /// The state of a convergent counter ([`crate::counter::PnCounter`], encoded).
    Counter,
}

/// One version of a value: a value or a tombstone, with the dot that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sibling {
    /// The write that created this version.
    pub dot: Dot,
    /// Wall-clock time of the write at its coordinator, ms since the Unix epoch.
    pub timestamp: u64,
    /// The value, or `None` for a tombstone (a delete).
    pub value: Option<Vec<u8>>,
    /// When the value expires, ms since the Unix epoch (the write's coordinator's clock plus
    /// its time to live): from then on it reads as a tombstone. Set once by the write; every
    /// replica holds the same deadline, so no copy can bring the value back.
    pub expires: Option<u64>,
    /// What the value is.
    pub kind: ValueKind,
}

impl Sibling {
    /// True when this sibling records a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// True when this sibling holds a value at wall-clock time `now` (ms since the Unix
    /// epoch): not a tombstone, and not past its deadline.
    pub fn live_at(&self, now: u64) -> bool {
        self.value.is_some() && self.expires.is_none_or(|d| now < d)
    }
}

/// What a write stamps besides its value: its deadline and its kind.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stamp {
    /// When the new value expires (ms since the Unix epoch), if it does.
    pub expires: Option<u64>,
    /// What the value is.
    pub kind: ValueKind,
}

/// Why an object received from storage or a peer was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ObjectError {
    /// A sibling's dot is not covered by the object's clock.
    #[error("sibling {0:?} is not covered by the object's clock")]
    UncoveredSibling(Dot),
    /// Two siblings carry the same dot, or siblings are out of order.
    #[error("siblings are duplicated or out of order at {0:?}")]
    Unordered(Dot),
    /// A dot has counter 0, which no write issues.
    #[error("dot {0:?} has counter 0")]
    ZeroCounter(Dot),
}

/// A versioned object: its clock and the siblings still alive.
///
/// Invariants (checked by [`Object::validate`]): siblings are sorted by dot without duplicates,
/// and the clock covers every sibling's dot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Object {
    clock: VersionVector,
    siblings: Vec<Sibling>,
}

impl Object {
    /// The object nothing has been written to: no clock, no siblings.
    pub fn new() -> Self {
        Self::default()
    }

    /// Rebuilds an object from its parts (as shown by an admin endpoint or a trace), checking
    /// its invariants.
    pub fn from_parts(
        clock: VersionVector,
        mut siblings: Vec<Sibling>,
    ) -> Result<Object, ObjectError> {
        siblings.sort_by_key(|s| s.dot);
        let o = Object { clock, siblings };
        o.validate()?;
        Ok(o)
    }

    /// The clock: every dot this object has seen.
    pub fn clock(&self) -> &VersionVector {
        &self.clock
    }

    /// The siblings, tombstones included, sorted by dot.
    pub fn siblings(&self) -> &[Sibling] {
        &self.siblings
    }

    /// The siblings that hold a value (tombstones left out; expired values kept - see
    /// [`Object::live_at`]).
    pub fn live(&self) -> impl Iterator<Item = &Sibling> {
        self.siblings.iter().filter(|s| !s.is_tombstone())
    }

    /// The siblings that hold a value at wall-clock time `now` (tombstones and expired values
    /// left out).
    pub fn live_at(&self, now: u64) -> impl Iterator<Item = &Sibling> {
        self.siblings.iter().filter(move |s| s.live_at(now))
    }

    /// This object as a client may see it at wall-clock time `now`: every sibling past its
    /// deadline reads as a tombstone (same dot, so a write with this object's context still
    /// supersedes it). What a coordinator answers; never stored.
    pub fn visible_at(mut self, now: u64) -> Object {
        for s in &mut self.siblings {
            if s.expires.is_some_and(|d| now >= d) {
                s.value = None;
            }
        }
        self
    }

    /// When this object stops holding any value by expiry alone: the latest deadline of its
    /// values, if every value has one (`None`: some value never expires, or none is left).
    pub fn expires(&self) -> Option<u64> {
        let mut latest = None;
        for s in self.live() {
            let d = s.expires?;
            latest = Some(latest.map_or(d, |l: u64| l.max(d)));
        }
        latest
    }

    /// True when something was written and nothing holds a value at `now` (only tombstones
    /// and expired values).
    pub fn dead_at(&self, now: u64) -> bool {
        !self.is_empty() && self.live_at(now).next().is_none()
    }

    /// True when nothing was ever written (no clock and no siblings).
    pub fn is_empty(&self) -> bool {
        self.clock.is_empty() && self.siblings.is_empty()
    }

    /// The context handed to a client that read this object: a vector covering every sibling.
    pub fn context(&self) -> VersionVector {
        self.clock.clone()
    }

    /// An upper bound of the object's encoded size in bytes (values, dots and clock together):
    /// what object limits and transfer budgets count.
    pub fn size_bytes(&self) -> usize {
        10 + self.clock.len() * 30
            + self
                .siblings
                .iter()
                .map(|s| 40 + s.value.as_ref().map_or(0, Vec::len))
                .sum::<usize>()
    }

    /// Stamps a new write coordinated by `actor` at time `now` (ms since the Unix epoch).
    ///
    /// `context` is what the client read (empty for a blind write). The siblings it covers are
    /// superseded; every other sibling is kept; the new value (`None` for a delete) gets the dot
    /// `(actor, c + 1)` where `c` is the highest counter of `actor` in this object or the context.
    /// Returns the new object, which replicas then [`merge`](Object::merge) into theirs.
    pub fn update(
        &self,
        actor: ActorId,
        context: &VersionVector,
        value: Option<Vec<u8>>,
        now: u64,
    ) -> Object {
        self.update_from(actor, context, value, now, 0)
    }

    /// [`Object::update`], with the new dot's counter at least `floor`. A coordinator holding
    /// no entry of its own for a key passes one more than the highest counter it ever issued,
    /// so that a counter it issued before the key's tombstone was collected is never issued
    /// again.
    pub fn update_from(
        &self,
        actor: ActorId,
        context: &VersionVector,
        value: Option<Vec<u8>>,
        now: u64,
        floor: u64,
    ) -> Object {
        self.update_stamped(actor, context, value, now, floor, Stamp::default())
    }

    /// [`Object::update_from`], the new value stamped with a deadline and a kind.
    pub fn update_stamped(
        &self,
        actor: ActorId,
        context: &VersionVector,
        value: Option<Vec<u8>>,
        now: u64,
        floor: u64,
        stamp: Stamp,
    ) -> Object {
        let counter = (self.clock.counter(actor).max(context.counter(actor)) + 1).max(floor);
        let dot = Dot { actor, counter };
        let mut clock = self.clock.clone();
        clock.merge(context);
        clock.entries.insert(
            actor,
            ClockEntry {
                counter,
                timestamp: now,
            },
        );
        let mut siblings: Vec<Sibling> = self
            .siblings
            .iter()
            .filter(|s| !context.covers(s.dot))
            .cloned()
            .collect();
        // A tombstone has nothing to expire and no kind.
        let stamp = if value.is_some() {
            stamp
        } else {
            Stamp::default()
        };
        siblings.push(Sibling {
            dot,
            timestamp: now,
            value,
            expires: stamp.expires,
            kind: stamp.kind,
        });
        siblings.sort_by_key(|s| s.dot);
        Object { clock, siblings }
    }

    /// Merges two replicas' copies of the same key. The one merge of dynamokv.
    ///
    /// A sibling survives when both sides hold it, or when the other side has not seen its dot
    /// yet; a sibling one side holds and the other has seen but dropped was superseded. Clocks
    /// join pointwise. Commutative, associative and idempotent.
    pub fn merge(&self, other: &Object) -> Object {
        let mut clock = self.clock.clone();
        clock.merge(&other.clock);
        let mut siblings = Vec::with_capacity(self.siblings.len().max(other.siblings.len()));
        let (mut a, mut b) = (
            self.siblings.iter().peekable(),
            other.siblings.iter().peekable(),
        );
        loop {
            match (a.peek(), b.peek()) {
                (Some(x), Some(y)) if x.dot == y.dot => {
                    siblings.push((*x).clone());
                    a.next();
                    b.next();
                }
                (Some(x), Some(y)) if x.dot < y.dot => {
                    if !other.clock.covers(x.dot) {
                        siblings.push((*x).clone());
                    }
                    a.next();
                }
                (Some(x), None) => {
                    if !other.clock.covers(x.dot) {
                        siblings.push((*x).clone());
                    }
                    a.next();
                }
                (_, Some(y)) => {
                    if !self.clock.covers(y.dot) {
                        siblings.push((*y).clone());
                    }
                    b.next();
                }
                (None, None) => break,
            }
        }
        Object { clock, siblings }
    }

    /// True when merging `other` into `self` would change nothing (`self` already has seen
    /// everything `other` holds). Read repair uses it to skip replicas that are up to date.
    pub fn contains(&self, other: &Object) -> bool {
        self.merge(other) == *self
    }

    /// Checks the invariants of an object that came from outside (disk or a peer).
    pub fn validate(&self) -> Result<(), ObjectError> {
        let mut previous: Option<Dot> = None;
        for s in &self.siblings {
            if s.dot.counter == 0 {
                return Err(ObjectError::ZeroCounter(s.dot));
            }
            if previous.is_some_and(|p| p >= s.dot) {
                return Err(ObjectError::Unordered(s.dot));
            }
            if !self.clock.covers(s.dot) {
                return Err(ObjectError::UncoveredSibling(s.dot));
            }
            previous = Some(s.dot);
        }
        Ok(())
    }
}

/// An object as storage format 2 (and older), backups of format 1 and JSON lines without a
/// `"v"` carried it, postcard-encoded: siblings without a deadline or a kind. Decodes it into
/// today's [`Object`] (no deadline, bytes), unchecked.
pub fn decode_legacy(bytes: &[u8]) -> Result<Object, postcard::Error> {
    Ok(postcard::from_bytes::<LegacyObject>(bytes)?.into_object())
}

/// An object encoded as before siblings had a deadline and a kind (see [`decode_legacy`]).
#[derive(Debug, Deserialize)]
pub struct LegacyObject {
    clock: VersionVector,
    siblings: Vec<LegacySibling>,
}

#[derive(Debug, Deserialize)]
struct LegacySibling {
    dot: Dot,
    timestamp: u64,
    value: Option<Vec<u8>>,
}

impl LegacyObject {
    /// Today's object: no deadline, bytes (unchecked).
    pub fn into_object(self) -> Object {
        Object {
            clock: self.clock,
            siblings: self
                .siblings
                .into_iter()
                .map(|s| Sibling {
                    dot: s.dot,
                    timestamp: s.timestamp,
                    value: s.value,
                    expires: None,
                    kind: ValueKind::Bytes,
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn a(n: u64) -> ActorId {
        ActorId(n)
    }

    fn values(o: &Object) -> Vec<Option<Vec<u8>>> {
        o.siblings().iter().map(|s| s.value.clone()).collect()
    }

    #[test]
    fn sequential_writes_replace() {
        let o = Object::new().update(a(1), &VersionVector::new(), Some(b"v1".to_vec()), 10);
        let o2 = o.update(a(1), &o.context(), Some(b"v2".to_vec()), 20);
        assert_eq!(values(&o2), vec![Some(b"v2".to_vec())]);
        assert_eq!(
            o2.clock().get(a(1)).map(|e| (e.counter, e.timestamp)),
            Some((2, 20))
        );
    }

    #[test]
    fn stale_context_creates_sibling_and_merged_context_reconciles() {
        let o1 = Object::new().update(a(1), &VersionVector::new(), Some(b"v1".to_vec()), 1);
        let stale = o1.context();
        let o2 = o1.update(a(1), &stale, Some(b"v2".to_vec()), 2);
        let o3 = o2.update(a(1), &stale, Some(b"v3".to_vec()), 3);
        assert_eq!(
            values(&o3),
            vec![Some(b"v2".to_vec()), Some(b"v3".to_vec())]
        );
        let o4 = o3.update(a(2), &o3.context(), Some(b"v4".to_vec()), 4);
        assert_eq!(values(&o4), vec![Some(b"v4".to_vec())]);
    }

    #[test]
    fn delete_is_a_tombstone_sibling() {
        let o1 = Object::new().update(a(1), &VersionVector::new(), Some(b"v".to_vec()), 1);
        let o2 = o1.update(a(1), &o1.context(), None, 2);
        assert_eq!(o2.live().count(), 0);
        assert_eq!(o2.siblings().len(), 1);
        assert!(o2.siblings()[0].is_tombstone());
    }

    #[test]
    fn validate_rejects_broken_objects() {
        let o = Object::new().update(a(1), &VersionVector::new(), Some(b"v".to_vec()), 1);
        assert!(o.validate().is_ok());
        let mut bad = o.clone();
        bad.clock = VersionVector::new();
        assert!(matches!(
            bad.validate(),
            Err(ObjectError::UncoveredSibling(_))
        ));
        let mut dup = o.clone();
        dup.siblings.push(dup.siblings[0].clone());
        assert!(matches!(dup.validate(), Err(ObjectError::Unordered(_))));
    }

    // ---- Reference model: causal histories -------------------------------------------------
    //
    // A replica's state is the set of dots it has seen (its history) and the subset still
    // alive. A write with a context (a history) at a replica creates a fresh dot d:
    //   history' = history ∪ ctx ∪ {d},  live' = (live \ ctx) ∪ {d}.
    // A merge:  history = h1 ∪ h2,  live = (l1 ∩ l2) ∪ (l1 \ h2) ∪ (l2 \ h1).

    #[derive(Debug, Clone, Default, PartialEq)]
    struct Model {
        history: BTreeSet<Dot>,
        live: BTreeSet<Dot>,
    }

    impl Model {
        fn merge(&self, o: &Model) -> Model {
            let history = self.history.union(&o.history).copied().collect();
            let live = self
                .live
                .iter()
                .filter(|d| o.live.contains(d) || !o.history.contains(d))
                .chain(o.live.iter().filter(|d| !self.history.contains(d)))
                .copied()
                .collect();
            Model { history, live }
        }
    }

    /// The history a version vector stands for.
    fn history_of(vv: &VersionVector) -> BTreeSet<Dot> {
        vv.iter()
            .flat_map(|(actor, e)| (1..=e.counter).map(move |counter| Dot { actor, counter }))
            .collect()
    }

    fn agrees(o: &Object, m: &Model) -> bool {
        let dots: BTreeSet<Dot> = o.siblings().iter().map(|s| s.dot).collect();
        dots == m.live && history_of(o.clock()) == m.history && o.validate().is_ok()
    }

    /// A step of a random run over `REPLICAS` replicas.
    #[derive(Debug, Clone)]
    enum Op {
        /// Replica `at` coordinates a write with the context read from replica `read_from`
        /// (or a blind write when `None`).
        Write {
            at: usize,
            read_from: Option<usize>,
            delete: bool,
        },
        /// Replica `to` merges replica `from`'s object (replication, repair, anti-entropy).
        Sync { from: usize, to: usize },
    }

    const REPLICAS: usize = 4;

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            (
                0..REPLICAS,
                proptest::option::of(0..REPLICAS),
                any::<bool>()
            )
                .prop_map(|(at, read_from, delete)| Op::Write {
                    at,
                    read_from,
                    delete
                }),
            (0..REPLICAS, 0..REPLICAS).prop_map(|(from, to)| Op::Sync { from, to }),
        ]
    }

    /// Runs `ops` against both the real objects and the model; checks agreement at each step.
    fn run(ops: &[Op]) -> (Vec<Object>, Vec<Model>) {
        let mut objects = vec![Object::new(); REPLICAS];
        let mut models = vec![Model::default(); REPLICAS];
        let mut value = 0u64;
        for op in ops {
            match *op {
                Op::Write {
                    at,
                    read_from,
                    delete,
                } => {
                    value += 1;
                    let (ctx, ctx_hist) = match read_from {
                        Some(r) => (objects[r].context(), models[r].history.clone()),
                        None => (VersionVector::new(), BTreeSet::new()),
                    };
                    let v = (!delete).then(|| value.to_be_bytes().to_vec());
                    let new = objects[at].update(ActorId(at as u64), &ctx, v, value);
                    let dot = new
                        .siblings()
                        .iter()
                        .map(|s| s.dot)
                        .find(|d| !objects[at].clock().covers(*d) && !ctx.covers(*d))
                        .expect("the write created a fresh dot");
                    objects[at] = new;
                    let m = &mut models[at];
                    m.history.extend(ctx_hist.iter().copied());
                    m.history.insert(dot);
                    m.live.retain(|d| !ctx_hist.contains(d));
                    m.live.insert(dot);
                }
                Op::Sync { from, to } => {
                    objects[to] = objects[to].merge(&objects[from]);
                    models[to] = models[to].merge(&models[from]);
                }
            }
        }
        (objects, models)
    }

    fn objects() -> impl Strategy<Value = Vec<Object>> {
        proptest::collection::vec(op(), 0..40).prop_map(|ops| run(&ops).0)
    }

    proptest! {
        #[test]
        fn matches_causal_history_model(ops in proptest::collection::vec(op(), 0..60)) {
            let (objects, models) = run(&ops);
            for (o, m) in objects.iter().zip(&models) {
                prop_assert!(agrees(o, m), "object {o:?} disagrees with model {m:?}");
            }
        }

        #[test]
        fn merge_is_commutative(objs in objects(), i in 0..REPLICAS, j in 0..REPLICAS) {
            prop_assert_eq!(objs[i].merge(&objs[j]), objs[j].merge(&objs[i]));
        }

        #[test]
        fn merge_is_associative(objs in objects(), i in 0..REPLICAS, j in 0..REPLICAS, k in 0..REPLICAS) {
            let left = objs[i].merge(&objs[j]).merge(&objs[k]);
            let right = objs[i].merge(&objs[j].merge(&objs[k]));
            prop_assert_eq!(left, right);
        }

        #[test]
        fn merge_is_idempotent(objs in objects(), i in 0..REPLICAS) {
            prop_assert_eq!(objs[i].merge(&objs[i]), objs[i].clone());
        }

        #[test]
        fn context_supersedes_exactly_what_it_covers(objs in objects(), i in 0..REPLICAS, j in 0..REPLICAS) {
            // Write at replica i with the context read from replica j.
            let ctx = objs[j].context();
            let new = objs[i].update(ActorId(99), &ctx, Some(b"x".to_vec()), 0);
            for s in objs[i].siblings() {
                let kept = new.siblings().contains(s);
                prop_assert_eq!(kept, !ctx.covers(s.dot));
            }
            prop_assert_eq!(new.siblings().len(),
                objs[i].siblings().iter().filter(|s| !ctx.covers(s.dot)).count() + 1);
        }

        #[test]
        fn concurrent_writes_are_all_kept(objs in objects(), i in 0..REPLICAS, j in 0..REPLICAS) {
            // Two coordinators write without seeing each other's write.
            let ci = objs[i].context();
            let wi = objs[i].update(ActorId(100), &ci, Some(b"i".to_vec()), 1);
            let wj = objs[j].update(ActorId(101), &objs[j].context(), Some(b"j".to_vec()), 2);
            let merged = wi.merge(&wj);
            let vals: Vec<_> = merged.live().filter_map(|s| s.value.clone()).collect();
            prop_assert!(vals.contains(&b"i".to_vec()));
            prop_assert!(vals.contains(&b"j".to_vec()));
        }

        #[test]
        fn read_then_write_never_makes_false_siblings(coords in proptest::collection::vec(0..REPLICAS, 1..30)) {
            // Every write reads the latest state (merge of all replicas) first, then writes through
            // a different coordinator, and the write reaches everybody: one sibling, always.
            let mut replicas = vec![Object::new(); REPLICAS];
            for (n, c) in coords.iter().enumerate() {
                let read = replicas.iter().fold(Object::new(), |acc, o| acc.merge(o));
                let new = replicas[*c].update(ActorId(*c as u64), &read.context(), Some(vec![n as u8]), n as u64);
                for r in replicas.iter_mut() {
                    *r = r.merge(&new);
                }
                for r in &replicas {
                    prop_assert_eq!(r.siblings().len(), 1);
                    prop_assert_eq!(r.siblings()[0].value.clone(), Some(vec![n as u8]));
                }
            }
        }

        #[test]
        fn partial_replication_read_then_write_stays_single(ops in proptest::collection::vec((0..REPLICAS, 0..REPLICAS), 1..30)) {
            // Coordinator `c` reads from replica `r` only (possibly stale), after `r` synced from
            // `c`; the write sees everything `c` and `r` have, so `c` never holds a false sibling.
            let mut replicas = vec![Object::new(); REPLICAS];
            for (n, (c, r)) in ops.iter().enumerate() {
                replicas[*r] = replicas[*r].merge(&replicas[*c]);
                let ctx = replicas[*r].context();
                replicas[*c] = replicas[*c].update(ActorId(*c as u64), &ctx, Some(vec![n as u8]), 0);
                prop_assert_eq!(replicas[*c].siblings().len(), 1);
            }
        }

        #[test]
        fn blind_write_never_destroys_a_sibling(objs in objects(), i in 0..REPLICAS) {
            let new = objs[i].update(ActorId(7), &VersionVector::new(), None, 0);
            for s in objs[i].siblings() {
                prop_assert!(new.siblings().contains(s));
            }
        }
    }
}
