//! What the Merkle exchange proved, and what the background workers tell each other - read by
//! the rebalancer (is a range proven equal with a new owner?), the tombstone collector (is it
//! proven equal with every other primary, and does any node keep hints?) and the coordinator (is
//! this node still rebuilding lost data?).

use crate::merkle::{Hash, Range};
use std::collections::{BTreeMap, BTreeSet};

/// When a range was last proven equal with a peer: the monotonic time and the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Monotonic time, ms.
    pub at: u64,
    /// The root both held.
    pub root: Hash,
}

/// The proofs and facts the background workers share.
#[derive(Debug, Default)]
pub struct Proofs {
    synced: BTreeMap<(Range, String), Synced>,
    /// While rebuilding lost data: the ranges synchronised since it began.
    rebuilding: Option<BTreeSet<Range>>,
    /// Whether the shell is salvaging this node's storage (it may drop records any moment).
    salvaging: bool,
    /// Whether each peer kept hints or moved keys, as it last said.
    peer_hints: BTreeMap<String, bool>,
    /// Whether this node keeps hints, as last checked.
    hints_here: bool,
    /// Whether this node may hold keys of ranges it no longer replicates (unknown counts as yes).
    moved_here: bool,
}

impl Proofs {
    /// No proof yet; this node may hold moved keys until a pass shows it does not.
    pub fn new() -> Proofs {
        Proofs {
            moved_here: true,
            ..Proofs::default()
        }
    }

    /// `range` was proven equal with `peer` at `now` (both held `root`).
    pub fn proven_equal(&mut self, now: u64, range: Range, peer: &str, root: Hash) {
        self.synced
            .insert((range, peer.to_owned()), Synced { at: now, root });
    }

    /// When `range` was last proven equal with `peer`.
    pub fn synced(&self, range: Range, peer: &str) -> Option<Synced> {
        self.synced.get(&(range, peer.to_owned())).copied()
    }

    /// This node lost its data: its copies do not count until each range it replicates
    /// finished a session with another replica. What was proven equal before is void.
    pub fn start_rebuilding(&mut self) {
        self.rebuilding = Some(BTreeSet::new());
        self.salvaging = false;
        self.synced.clear();
    }

    /// The shell begins salvaging the storage: until it ends, this node's copies do not count
    /// (a record may vanish between a read and the news that it was dropped).
    pub fn salvage_begins(&mut self) {
        self.salvaging = true;
    }

    /// The salvage ended without losing anything.
    pub fn salvage_ended(&mut self) {
        self.salvaging = false;
    }

    /// Whether this node is rebuilding lost data (or salvaging its storage): its own copies do
    /// not count towards read quorums.
    pub fn rebuilding(&self) -> bool {
        self.rebuilding.is_some() || self.salvaging
    }

    /// Ranges with another replica, among `peers`, not yet synchronised since rebuilding began.
    pub fn rebuilding_left(&self, peers: &BTreeMap<Range, Vec<String>>) -> usize {
        let Some(done) = &self.rebuilding else {
            return 0;
        };
        peers
            .iter()
            .filter(|(r, p)| !p.is_empty() && !done.contains(*r))
            .count()
    }

    /// `range` finished a session (or proved equal): one less to rebuild.
    pub fn synchronised(&mut self, range: Range, peers: &BTreeMap<Range, Vec<String>>) {
        if let Some(done) = self.rebuilding.as_mut() {
            done.insert(range);
            if self.rebuilding_left(peers) == 0 {
                self.rebuilding = None;
            }
        }
    }

    /// Ends rebuilding if no range has another replica left to synchronise with (the ring
    /// changed, or the node is alone).
    pub fn rebuilt_if_nothing_left(&mut self, peers: &BTreeMap<Range, Vec<String>>) {
        if self.rebuilding.is_some() && self.rebuilding_left(peers) == 0 {
            self.rebuilding = None;
        }
    }

    /// A peer said whether it keeps hints or moved keys.
    pub fn peer_hints(&mut self, peer: &str, hints: bool) {
        self.peer_hints.insert(peer.to_owned(), hints);
    }

    /// Whether `peer` last said it keeps hints or moved keys (unknown: it may).
    pub fn peer_keeps_hints(&self, peer: &str) -> bool {
        self.peer_hints.get(peer) != Some(&false)
    }

    /// Whether this node keeps hints (the collector checks the store now and then).
    pub fn set_hints_here(&mut self, kept: bool) {
        self.hints_here = kept;
    }

    /// Whether this node may hold moved keys (the handover worker knows).
    pub fn set_moved_here(&mut self, holding: bool) {
        self.moved_here = holding;
    }

    /// Whether this node keeps hints, or may keep keys of ranges it no longer replicates:
    /// either could hand an old value back after a tombstone is collected.
    pub fn keeps_hints_or_moved(&self) -> bool {
        self.hints_here || self.moved_here
    }
}
