//! The Merkle trees of the ranges this node replicates (Dynamo section 4.7): which ranges those
//! are (from the ring), building each tree from a paged scan across ticks, and following every
//! local write. The node owns them; the background workers read and update them through their
//! context ([`super::worker::Ctx`]).

use crate::membership::Rings;
use crate::merkle::{Range, Tree, digest};
use crate::node::tracked::{Change, dead};
use crate::ring::position;
use crate::store::{LocalStore, StoreError};
use std::collections::BTreeMap;

/// How many trees, keys and tombstones a node's [`Trees`] hold.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TreeCounts {
    /// Ranges with a tree.
    pub trees: usize,
    /// Trees still being built.
    pub building: usize,
    /// Keys in the trees.
    pub keys: u64,
    /// Trees thrown away and rebuilt because they disagreed with storage.
    pub rebuilt: u64,
    /// Keys holding only tombstones.
    pub tombstones: u64,
}

/// Keys scanned into trees per tick, so that building never stalls the node.
pub const BUILD_KEYS_PER_TICK: usize = 1_000;

/// Where the build of one tree is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Build {
    /// Scanning span `span` of the range, after key `after` (none yet in that span).
    Scanning { span: usize, after: Option<Vec<u8>> },
    /// Every key of the range is in the tree.
    Ready,
}

/// One range's tree and its build.
#[derive(Debug, Clone)]
pub struct RangeTree {
    /// The tree.
    pub tree: Tree,
    /// Keys of the range holding only tombstones (what tombstone collection looks for).
    pub dead: u64,
    /// The earliest deadline after which a key of the range holds no value by expiry alone
    /// (its values all expire), as far as writes and the last sweep told: tombstone
    /// collection sweeps the range once it passed.
    pub next_expiry: Option<u64>,
    build: Build,
    spans: Vec<(u64, u64)>,
}

impl RangeTree {
    fn new(range: Range) -> Self {
        Self {
            tree: Tree::new(range),
            dead: 0,
            next_expiry: None,
            build: Build::Scanning {
                span: 0,
                after: None,
            },
            spans: range.spans(),
        }
    }

    /// A key of the range holds no value from `deadline` on (if any).
    pub fn expiring(&mut self, deadline: Option<u64>) {
        if let Some(d) = deadline {
            self.next_expiry = Some(self.next_expiry.map_or(d, |n| n.min(d)));
        }
    }

    /// Whether the tree holds every key of its range.
    pub fn ready(&self) -> bool {
        self.build == Build::Ready
    }

    /// Whether the build already passed `(pos, key)` (so a write to it must update the tree).
    fn scanned(&self, pos: u64, key: &[u8]) -> bool {
        let Build::Scanning { span, after } = &self.build else {
            return true;
        };
        let Some(j) = self
            .spans
            .iter()
            .position(|(lo, hi)| *lo <= pos && pos <= *hi)
        else {
            return false;
        };
        match j.cmp(span) {
            std::cmp::Ordering::Less => true,
            std::cmp::Ordering::Greater => false,
            std::cmp::Ordering::Equal => after
                .as_ref()
                .is_some_and(|a| (pos, key) <= (position(a), a.as_slice())),
        }
    }
}

/// The trees of every range this node replicates, and the other replicas of each.
#[derive(Debug, Default)]
pub struct Trees {
    ring_version: Option<u64>,
    trees: BTreeMap<Range, RangeTree>,
    /// Range by its end, to find the range of a position.
    by_end: BTreeMap<u64, Range>,
    /// The other primaries of each range (current or future), sorted.
    peers: BTreeMap<Range, Vec<String>>,
    /// Current and future primaries of each range.
    owners: BTreeMap<Range, Owners>,
    /// The ranges whose first replica is this node.
    owned: std::collections::BTreeSet<Range>,
    rebuilt: u64,
    /// Counts the changes of the set of ranges this node replicates.
    shape: u64,
}

/// Who holds one range now and who will once the changes in progress end.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Owners {
    /// Its primaries in the current ring.
    pub current: Vec<String>,
    /// Its primaries in the future ring.
    pub future: Vec<String>,
}

/// The ranges of the all-tokens ring (one per token: from the previous token, exclusive, to
/// it) of which `me` is one of the `n` primaries in the current or the future ring, with their
/// owners.
pub fn replicated_ranges(rings: &Rings, me: &str, n: usize) -> BTreeMap<Range, Owners> {
    let mut out = BTreeMap::new();
    for range in rings.all.ranges() {
        let owners = Owners {
            current: rings
                .current
                .walk(range.end, n)
                .into_iter()
                .map(str::to_owned)
                .collect(),
            future: rings
                .future
                .walk(range.end, n)
                .into_iter()
                .map(str::to_owned)
                .collect(),
        };
        if owners.current.iter().chain(&owners.future).any(|p| p == me) {
            out.insert(range, owners);
        }
    }
    out
}

impl Trees {
    /// Follows the rings: keeps the trees of ranges still replicated here, starts building the
    /// new ones, drops the others. Returns true when the set of ranges changed.
    pub fn reshape(&mut self, rings: &Rings, me: &str, n: usize) -> bool {
        let version = rings.version();
        if self.ring_version == Some(version) {
            return false;
        }
        self.ring_version = Some(version);
        let ranges = replicated_ranges(rings, me, n);
        let changed = ranges.keys().ne(self.trees.keys());
        self.trees.retain(|r, _| ranges.contains_key(r));
        for r in ranges.keys() {
            self.trees.entry(*r).or_insert_with(|| RangeTree::new(*r));
        }
        self.by_end = ranges.keys().map(|r| (r.end, *r)).collect();
        self.owned = ranges
            .iter()
            .filter(|(_, o)| o.current.first().map(String::as_str) == Some(me))
            .map(|(r, _)| *r)
            .collect();
        self.peers = ranges
            .iter()
            .map(|(r, o)| {
                let mut peers: Vec<String> = o
                    .current
                    .iter()
                    .chain(&o.future)
                    .filter(|p| *p != me)
                    .cloned()
                    .collect();
                peers.sort();
                peers.dedup();
                (*r, peers)
            })
            .collect();
        self.owners = ranges;
        self.shape += u64::from(changed);
        changed
    }

    /// Counts the changes of the set of ranges this node replicates: a worker that must start
    /// over when ranges change hands compares it with the count it last saw.
    pub fn shape(&self) -> u64 {
        self.shape
    }

    /// Who holds each replicated range now and later.
    pub fn owners(&self) -> &BTreeMap<Range, Owners> {
        &self.owners
    }

    /// The range holding `pos`, if this node replicates it.
    pub fn range_of(&self, pos: u64) -> Option<Range> {
        let r = self
            .by_end
            .range(pos..)
            .next()
            .or_else(|| self.by_end.iter().next())
            .map(|(_, r)| *r)?;
        r.contains(pos).then_some(r)
    }

    /// Applies one write to the tree of its key's range.
    pub fn apply(&mut self, c: &Change) {
        let pos = position(&c.key);
        let Some(range) = self.range_of(pos) else {
            return;
        };
        if let Some(t) = self.trees.get_mut(&range)
            && t.scanned(pos, &c.key)
        {
            t.tree.update(pos, &c.key, c.old.as_ref(), c.new.as_ref());
            match (c.old_dead, c.new_dead) {
                (false, true) => t.dead += 1,
                (true, false) => t.dead = t.dead.saturating_sub(1),
                _ => {}
            }
            t.expiring(c.new_expires);
        }
    }

    /// Whether this node is the first replica of `range` (the one that collects its
    /// tombstones).
    pub fn owns(&self, range: &Range) -> bool {
        self.owned.contains(range)
    }

    /// Scans up to `budget` keys into the trees being built; returns how many it scanned.
    pub fn build<S: LocalStore>(&mut self, store: &S, budget: usize) -> Result<usize, StoreError> {
        let mut scanned = 0;
        for t in self.trees.values_mut() {
            while scanned < budget {
                let Build::Scanning { span, after } = &t.build else {
                    break;
                };
                let (span, (lo, hi)) = (*span, t.spans[*span]);
                let limit = budget - scanned;
                let page = store.scan(lo, hi, after.as_deref(), limit)?;
                scanned += page.len();
                let full = page.len() == limit;
                let last = page.last().map(|(k, _)| k.clone());
                for (key, object) in &page {
                    t.tree.insert(position(key), key, &digest(object));
                    if dead(object) {
                        t.dead += 1;
                    }
                    t.expiring(object.expires());
                }
                t.build = match (full, last) {
                    (true, last) => Build::Scanning { span, after: last },
                    (false, _) if span + 1 < t.spans.len() => Build::Scanning {
                        span: span + 1,
                        after: None,
                    },
                    (false, _) => Build::Ready,
                };
            }
            if scanned >= budget {
                break;
            }
        }
        Ok(scanned)
    }

    /// The version of the ring the trees were last shaped for.
    pub fn ring_version(&self) -> Option<u64> {
        self.ring_version
    }

    /// Throws a tree away and builds it again from storage (it disagreed with the keys).
    pub fn rebuild(&mut self, range: Range) {
        if let Some(t) = self.trees.get_mut(&range) {
            *t = RangeTree::new(range);
            self.rebuilt += 1;
        }
    }

    /// Drops every tree and builds them all again.
    pub fn rebuild_all(&mut self) {
        let ranges: Vec<Range> = self.trees.keys().copied().collect();
        for r in ranges {
            self.rebuild(r);
        }
    }

    /// The tree of `range`.
    pub fn get_mut(&mut self, range: &Range) -> Option<&mut RangeTree> {
        self.trees.get_mut(range)
    }

    /// The tree of `range`.
    pub fn get(&self, range: &Range) -> Option<&RangeTree> {
        self.trees.get(range)
    }

    /// The other primaries of each replicated range.
    pub fn peers(&self) -> &BTreeMap<Range, Vec<String>> {
        &self.peers
    }

    /// Whether `node` is another primary of `range`.
    pub fn is_peer(&self, range: &Range, node: &str) -> bool {
        self.peers
            .get(range)
            .is_some_and(|p| p.iter().any(|x| x == node))
    }

    /// How many trees, keys and tombstones there are.
    pub fn counts(&self) -> TreeCounts {
        TreeCounts {
            trees: self.trees.len(),
            building: self.trees.values().filter(|t| !t.ready()).count(),
            keys: self.trees.values().map(|t| t.tree.keys()).sum(),
            rebuilt: self.rebuilt,
            tombstones: self.trees.values().map(|t| t.dead).sum(),
        }
    }

    /// Whether some tree is still being built.
    pub fn building(&self) -> bool {
        self.trees.values().any(|t| !t.ready())
    }

    /// Every range with its tree.
    pub fn iter_mut(&mut self) -> impl Iterator<Item = (&Range, &mut RangeTree)> {
        self.trees.iter_mut()
    }
}
