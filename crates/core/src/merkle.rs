//! A Merkle tree over the keys of one range of the ring (Dynamo section 4.7): the unit that
//! anti-entropy compares between the replicas of that range.
//!
//! Shape: [`LEAVES`] leaves, grouped [`FANOUT`] to a branch, and one root. A key falls in the
//! leaf of its ring position within the range (the range is cut into equal slices), so each
//! leaf is also a contiguous slice of storage. A leaf's hash combines the entry hashes of its
//! keys, where an entry hash is BLAKE3 over the key and the [`digest`] of its object (the
//! version vector and sibling dots). The combination is XOR, so a write updates its leaf in
//! O(1) without the other keys; branches and the root hash their children with BLAKE3 and are
//! recomputed lazily, when read.
//!
//! Memory: `(LEAVES + FANOUT + 1) * 32` bytes of hashes per range (8.7 KiB), whatever the
//! number of keys.

use crate::version::Object;

/// A BLAKE3 hash.
pub type Hash = [u8; 32];

/// The digest of one object's version: what two replicas compare per key.
pub type Digest = [u8; 16];

/// Children per branch.
pub const FANOUT: usize = 16;

/// Leaves per tree (two levels of [`FANOUT`]).
pub const LEAVES: usize = FANOUT * FANOUT;

/// The hash of a tree, branch or leaf with no key in it.
pub const EMPTY: Hash = [0; 32];

/// The digest of an object's version: its version vector (actors and counters) and the dots
/// of its siblings. Two replicas holding the same version of a key have the same digest.
pub fn digest(object: &Object) -> Digest {
    let mut h = blake3::Hasher::new();
    h.update(&(object.clock().len() as u64).to_le_bytes());
    for (actor, entry) in object.clock().iter() {
        h.update(&actor.0.to_le_bytes());
        h.update(&entry.counter.to_le_bytes());
    }
    h.update(&(object.siblings().len() as u64).to_le_bytes());
    for s in object.siblings() {
        h.update(&s.dot.actor.0.to_le_bytes());
        h.update(&s.dot.counter.to_le_bytes());
        h.update(&[u8::from(s.is_tombstone())]);
    }
    let mut out = [0; 16];
    out.copy_from_slice(&h.finalize().as_bytes()[..16]);
    out
}

/// The contribution of one key holding a version with `digest` to its leaf.
pub fn entry_hash(key: &[u8], digest: &Digest) -> Hash {
    let mut h = blake3::Hasher::new();
    h.update(&(key.len() as u64).to_le_bytes());
    h.update(key);
    h.update(digest);
    *h.finalize().as_bytes()
}

fn xor(into: &mut Hash, other: &Hash) {
    for (a, b) in into.iter_mut().zip(other) {
        *a ^= b;
    }
}

fn hash_children(children: &[Hash]) -> Hash {
    if children.iter().all(|c| *c == EMPTY) {
        return EMPTY;
    }
    let mut h = blake3::Hasher::new();
    for c in children {
        h.update(c);
    }
    *h.finalize().as_bytes()
}

/// A range of ring positions `(start, end]`, wrapping past zero when `start >= end`
/// (`start == end` is the whole ring, the range of a ring with one token).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct Range {
    /// Exclusive start.
    pub start: u64,
    /// Inclusive end.
    pub end: u64,
}

impl Range {
    /// Number of positions in the range (2^64 for the whole ring).
    pub fn len(&self) -> u128 {
        match self.end.wrapping_sub(self.start) {
            0 => 1u128 << 64,
            n => u128::from(n),
        }
    }

    /// Never empty: a range holds at least one position.
    pub fn is_empty(&self) -> bool {
        false
    }

    /// Whether `pos` lies in the range.
    pub fn contains(&self, pos: u64) -> bool {
        let offset = u128::from(pos.wrapping_sub(self.start).wrapping_sub(1));
        offset < self.len()
    }

    /// The leaf of `pos` (which must be in the range).
    pub fn leaf_of(&self, pos: u64) -> usize {
        let offset = u128::from(pos.wrapping_sub(self.start).wrapping_sub(1));
        (offset * LEAVES as u128 / self.len()) as usize
    }

    /// The positions of leaf `leaf` as inclusive `[lo, hi]` spans in ring order (two when the
    /// slice wraps past zero).
    pub fn leaf_spans(&self, leaf: usize) -> Vec<(u64, u64)> {
        let len = self.len();
        // First offset of leaf l: ceil(l * len / LEAVES).
        let first = |l: usize| (l as u128 * len).div_ceil(LEAVES as u128);
        let (lo, hi) = (first(leaf), first(leaf + 1));
        if lo >= hi {
            return Vec::new();
        }
        let at = |offset: u128| self.start.wrapping_add(1).wrapping_add(offset as u64);
        self.spans_between(at(lo), at(hi - 1))
    }

    /// Every position of the range as inclusive spans in ring order.
    pub fn spans(&self) -> Vec<(u64, u64)> {
        self.spans_between(self.start.wrapping_add(1), self.end)
    }

    fn spans_between(&self, lo: u64, hi: u64) -> Vec<(u64, u64)> {
        if lo <= hi {
            vec![(lo, hi)]
        } else {
            vec![(lo, u64::MAX), (0, hi)]
        }
    }
}

/// The Merkle tree of one range.
#[derive(Debug, Clone)]
pub struct Tree {
    range: Range,
    leaves: Vec<Hash>,
    branches: Vec<Hash>,
    dirty: Vec<bool>,
    root: Hash,
    root_dirty: bool,
    keys: u64,
}

impl Tree {
    /// An empty tree over `range`.
    pub fn new(range: Range) -> Self {
        Self {
            range,
            leaves: vec![EMPTY; LEAVES],
            branches: vec![EMPTY; FANOUT],
            dirty: vec![false; FANOUT],
            root: EMPTY,
            root_dirty: false,
            keys: 0,
        }
    }

    /// The range the tree covers.
    pub fn range(&self) -> Range {
        self.range
    }

    /// Keys counted in the tree.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Records that the key at ring position `pos` went from version `old` to `new` (`None`:
    /// absent). Positions outside the range are ignored.
    pub fn update(&mut self, pos: u64, key: &[u8], old: Option<&Digest>, new: Option<&Digest>) {
        if old == new || !self.range.contains(pos) {
            return;
        }
        let leaf = self.range.leaf_of(pos);
        for d in [old, new].into_iter().flatten() {
            xor(&mut self.leaves[leaf], &entry_hash(key, d));
        }
        match (old, new) {
            (None, Some(_)) => self.keys += 1,
            (Some(_), None) => self.keys = self.keys.saturating_sub(1),
            _ => {}
        }
        self.dirty[leaf / FANOUT] = true;
        self.root_dirty = true;
    }

    /// Adds a key that was absent (building from a scan).
    pub fn insert(&mut self, pos: u64, key: &[u8], digest: &Digest) {
        self.update(pos, key, None, Some(digest));
    }

    /// The root hash ([`EMPTY`] when the range holds no key).
    pub fn root(&mut self) -> Hash {
        if self.root_dirty {
            for b in 0..FANOUT {
                self.branch(b);
            }
            self.root = hash_children(&self.branches);
            self.root_dirty = false;
        }
        self.root
    }

    fn branch(&mut self, b: usize) -> Hash {
        if self.dirty[b] {
            self.branches[b] = hash_children(&self.leaves[b * FANOUT..(b + 1) * FANOUT]);
            self.dirty[b] = false;
        }
        self.branches[b]
    }

    /// The [`FANOUT`] branch hashes.
    pub fn branches(&mut self) -> Vec<Hash> {
        (0..FANOUT).map(|b| self.branch(b)).collect()
    }

    /// The [`FANOUT`] leaf hashes under branch `b`.
    pub fn leaves_of(&self, b: usize) -> &[Hash] {
        &self.leaves[b * FANOUT..(b + 1) * FANOUT]
    }

    /// The branches whose hash differs from `theirs` (another replica's [`Tree::branches`]).
    pub fn differing_branches(&mut self, theirs: &[Hash]) -> Vec<usize> {
        (0..FANOUT)
            .filter(|b| theirs.get(*b) != Some(&self.branch(*b)))
            .collect()
    }

    /// The leaves under branch `b` whose hash differs from `theirs`.
    pub fn differing_leaves(&self, b: usize, theirs: &[Hash]) -> Vec<usize> {
        (0..FANOUT)
            .filter(|i| theirs.get(*i) != Some(&self.leaves[b * FANOUT + i]))
            .map(|i| b * FANOUT + i)
            .collect()
    }

    /// Approximate memory held by one tree, in bytes.
    pub const MEMORY_BYTES: usize = (LEAVES + FANOUT + 1) * 32 + FANOUT + 64;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::position;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    fn d(n: u8) -> Digest {
        [n; 16]
    }

    fn build(range: Range, model: &BTreeMap<Vec<u8>, Digest>) -> Tree {
        let mut t = Tree::new(range);
        for (k, dg) in model {
            t.insert(position(k), k, dg);
        }
        t
    }

    /// The leaves whose hash differs, found by descending from the root as anti-entropy does.
    fn descend(a: &mut Tree, b: &mut Tree) -> Vec<usize> {
        if a.root() == b.root() {
            return Vec::new();
        }
        let theirs = b.branches();
        a.differing_branches(&theirs)
            .into_iter()
            .flat_map(|br| a.differing_leaves(br, b.leaves_of(br)))
            .collect()
    }

    fn ranges() -> impl Strategy<Value = Range> {
        prop_oneof![
            Just(Range { start: 7, end: 7 }),
            (any::<u64>(), any::<u64>()).prop_map(|(start, end)| Range { start, end }),
        ]
    }

    fn models() -> impl Strategy<Value = BTreeMap<Vec<u8>, Digest>> {
        proptest::collection::btree_map(
            proptest::collection::vec(any::<u8>(), 1..6),
            (0u8..4).prop_map(d),
            0..40,
        )
    }

    /// Keys of the model that lie in the range.
    fn within(range: Range, m: &BTreeMap<Vec<u8>, Digest>) -> BTreeMap<Vec<u8>, Digest> {
        m.iter()
            .filter(|(k, _)| range.contains(position(k)))
            .map(|(k, v)| (k.clone(), *v))
            .collect()
    }

    proptest! {
        #[test]
        fn equal_contents_iff_equal_roots(range in ranges(), a in models(), b in models()) {
            let (ma, mb) = (within(range, &a), within(range, &b));
            let (mut ta, mut tb) = (build(range, &a), build(range, &b));
            prop_assert_eq!(ma == mb, ta.root() == tb.root());
            prop_assert_eq!(ma.is_empty(), ta.root() == EMPTY);
        }

        #[test]
        fn descending_finds_exactly_the_differing_keys_leaves(
            range in ranges(), a in models(), b in models()
        ) {
            let (ma, mb) = (within(range, &a), within(range, &b));
            let mut expected: Vec<usize> = ma.keys().chain(mb.keys())
                .filter(|k| ma.get(*k) != mb.get(*k))
                .map(|k| range.leaf_of(position(k)))
                .collect();
            expected.sort_unstable();
            expected.dedup();
            let (mut ta, mut tb) = (build(range, &a), build(range, &b));
            prop_assert_eq!(descend(&mut ta, &mut tb), expected);
        }

        #[test]
        fn incremental_updates_equal_a_rebuild(
            range in ranges(),
            start in models(),
            ops in proptest::collection::vec(
                (proptest::collection::vec(any::<u8>(), 1..6), proptest::option::of((0u8..4).prop_map(d))),
                0..40,
            ),
        ) {
            let mut model = start.clone();
            let mut t = build(range, &start);
            for (k, new) in ops {
                let old = model.get(&k).copied();
                t.update(position(&k), &k, old.as_ref(), new.as_ref());
                match new {
                    Some(v) => model.insert(k, v),
                    None => model.remove(&k),
                };
                // Reading the root between writes must not disturb later updates.
                let _ = t.root();
            }
            let mut rebuilt = build(range, &model);
            prop_assert_eq!(t.root(), rebuilt.root());
            prop_assert_eq!(t.branches(), rebuilt.branches());
            prop_assert_eq!(t.keys(), within(range, &model).len() as u64);
        }

        #[test]
        fn leaf_spans_tile_the_range(range in ranges(), pos in any::<u64>()) {
            let spans: Vec<(usize, (u64, u64))> = (0..LEAVES)
                .flat_map(|l| range.leaf_spans(l).into_iter().map(move |s| (l, s)))
                .collect();
            let hits: Vec<usize> = spans.iter()
                .filter(|(_, (lo, hi))| *lo <= pos && pos <= *hi)
                .map(|(l, _)| *l)
                .collect();
            if range.contains(pos) {
                prop_assert_eq!(hits, vec![range.leaf_of(pos)]);
            } else {
                prop_assert!(hits.is_empty());
            }
        }
    }

    #[test]
    fn a_range_and_its_wrap() {
        let r = Range {
            start: u64::MAX - 1,
            end: 1,
        };
        assert!(r.contains(u64::MAX) && r.contains(0) && r.contains(1));
        assert!(!r.contains(u64::MAX - 1) && !r.contains(2));
        assert_eq!(r.len(), 3);
        assert_eq!(r.spans(), vec![(u64::MAX, u64::MAX), (0, 1)]);
        let whole = Range { start: 5, end: 5 };
        assert!(whole.contains(5) && whole.contains(6) && whole.contains(0));
        assert_eq!(whole.spans(), vec![(6, u64::MAX), (0, 5)]);
    }

    #[test]
    fn digest_tells_versions_apart() {
        use crate::version::{ActorId, VersionVector};
        let a = Object::new().update(ActorId(1), &VersionVector::new(), Some(b"x".to_vec()), 1);
        let b = a.update(ActorId(1), &a.context(), Some(b"y".to_vec()), 2);
        let del = a.update(ActorId(1), &a.context(), None, 2);
        assert_ne!(digest(&a), digest(&b));
        assert_ne!(
            digest(&b),
            digest(&del),
            "a tombstone is not the value it replaced"
        );
        assert_eq!(digest(&a), digest(&a.merge(&a)));
    }
}
