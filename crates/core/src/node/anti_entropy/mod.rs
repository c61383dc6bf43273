//! Anti-entropy (Dynamo section 4.7): the replicas of each range compare Merkle trees and
//! exchange the objects of the keys that differ, merged both ways with the one merge.
//!
//! - [`trees`]: a tree per range this node replicates, built by paged scans across ticks and
//!   updated by every local write (through the store's journal).
//! - Rounds: every `interval_ms` (and on demand), each range is compared with each other
//!   primary of it. Normally the node with the smaller id starts the session of a pair; a
//!   forced round (an operator's repair, or a node rebuilding lost data) starts all of its own.
//! - A session: root, then the branches that differ, then the leaves that differ and the keys
//!   in them, then batches of objects both ways under the throttle (keys/s and bytes/s). The
//!   responder keeps no state.
//! - Hints are not in the trees: a fallback's hinted data goes back by handoff, and the owner's
//!   range is compared with the other primaries.
//! - Rebuilding: a node that lost its data (restarted empty under an id the cluster knew) does
//!   not let its copies count towards read quorums until each of its ranges finished a session
//!   with another primary.

mod exchange;
mod gc;
mod moved;
pub mod trees;

use super::outbox::Outbox;
use super::replica::validate;
use super::throttle::Throttle;
use crate::clock::Now;
use crate::membership::Rings;
use crate::merkle::{Digest, EMPTY, FANOUT, Hash, LEAVES, Range, digest};
use crate::message::{RootAnswer, SyncMessage};
use crate::ring::{Ring, position};
use crate::store::LocalStore;
use crate::version::Object;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet, VecDeque};
use trees::{BUILD_KEYS_PER_TICK, Trees};

/// Objects per push or pull message, in bytes (one larger object travels alone).
const BATCH_BYTES: usize = 1 << 20;
/// Largest key list in a [`SyncMessage::Keys`], in bytes.
const KEYS_BYTES: usize = 4 << 20;
/// Keys asked for per push.
const WANT_PER_BATCH: usize = 256;

/// Anti-entropy settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AntiEntropyConfig {
    /// Replicas per key.
    pub n: usize,
    /// Pause between the starts of two rounds, ms; 0: only on demand.
    pub interval_ms: u64,
    /// Most objects sent or asked for per second.
    pub keys_per_sec: u64,
    /// Most object bytes sent per second.
    pub bytes_per_sec: u64,
    /// Most sessions at once.
    pub sessions: usize,
    /// How long a session waits for an answer, ms.
    pub timeout_ms: u64,
    /// Youngest tombstone that may be collected, ms (wall clock).
    pub tombstone_min_age_ms: u64,
    /// Largest value taken from a peer.
    pub max_value_bytes: usize,
}

/// Counters and progress, for `/admin/stats` and `admin repair`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AntiEntropyStats {
    /// Sessions finished (in sync or repaired).
    pub exchanges: u64,
    /// Of those, sessions that found the roots equal.
    pub in_sync: u64,
    /// Sessions abandoned (timeout, refusal, peer lost).
    pub failed: u64,
    /// Keys whose local copy changed by a merge from another replica.
    pub keys_repaired: u64,
    /// Objects sent to other replicas.
    pub objects_sent: u64,
    /// Bytes of trees, key lists and objects sent.
    pub bytes_sent: u64,
    /// Ranges with a tree here.
    pub trees: usize,
    /// Trees still being built.
    pub trees_building: usize,
    /// Keys counted in the trees.
    pub tree_keys: u64,
    /// Trees thrown away and rebuilt because they disagreed with storage.
    pub trees_rebuilt: u64,
    /// Approximate memory of the trees, bytes.
    pub tree_memory_bytes: u64,
    /// Deleted keys whose tombstones are still kept.
    pub tombstones: u64,
    /// Deleted keys whose tombstones were collected here.
    pub tombstones_collected: u64,
    /// Keys of ranges no longer replicated here, handed to their owners and deleted here.
    pub moved_keys: u64,
    /// True while this node rebuilds lost data (its reads do not count).
    pub rebuilding: bool,
    /// Ranges still to synchronise before rebuilding ends.
    pub rebuilding_ranges: usize,
    /// The round in progress, if any.
    pub round: Option<RoundProgress>,
    /// The id of the last round finished (0: none yet).
    pub last_round: u64,
    /// Comparisons the last finished round skipped because the peer was down (its ranges are
    /// not known to be in sync with that peer).
    pub last_round_skipped: usize,
}

/// How far a round is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RoundProgress {
    /// Round id.
    pub id: u64,
    /// Started on demand (every pair of this node's) rather than on schedule.
    pub forced: bool,
    /// (range, peer) pairs in the round.
    pub pairs: usize,
    /// Pairs finished, failed or skipped.
    pub done: usize,
    /// Pairs skipped because the peer was down.
    pub skipped: usize,
}

#[derive(Debug)]
struct Round {
    progress: RoundProgress,
    pairs: Vec<(Range, String)>,
    next: usize,
}

#[derive(Debug, PartialEq, Eq)]
enum Stage {
    Root,
    Leaves,
    Pushing { awaiting: bool },
}

#[derive(Debug)]
struct Session {
    peer: String,
    range: Range,
    deadline: u64,
    stage: Stage,
    push: VecDeque<Vec<u8>>,
    want: VecDeque<Vec<u8>>,
    round: Option<u64>,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    InSync,
    Repaired,
    Failed,
}

/// When a range was last proven equal with a peer: the monotonic time and the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Synced {
    /// Monotonic time, ms.
    pub at: u64,
    /// The root both held.
    pub root: Hash,
}

/// The anti-entropy worker of one node.
#[derive(Debug)]
pub struct AntiEntropy {
    config: AntiEntropyConfig,
    trees: Trees,
    sessions: BTreeMap<u64, Session>,
    next_session: u64,
    throttle: Throttle,
    round: Option<Round>,
    next_round_id: u64,
    next_round_at: u64,
    force: bool,
    synced: BTreeMap<(Range, String), Synced>,
    /// While rebuilding lost data: the ranges synchronised since it began.
    rebuilding: Option<BTreeSet<Range>>,
    gc: gc::Collector,
    moved: moved::Moved,
    stats: AntiEntropyStats,
    /// The scheduler's share of the background budget: the sessions allowed at once scale
    /// with it (at least one).
    share: f64,
    /// Keys read by collection and handovers this tick (charged to the shared budget).
    scanned: usize,
}

impl AntiEntropy {
    /// A worker with no tree yet (they are built once the ring is known).
    pub fn new(config: AntiEntropyConfig) -> Self {
        Self {
            config,
            trees: Trees::default(),
            sessions: BTreeMap::new(),
            next_session: 1,
            throttle: Throttle::new(config.keys_per_sec, config.sessions)
                .with_bytes(config.bytes_per_sec),
            round: None,
            next_round_id: 1,
            next_round_at: 0,
            force: false,
            synced: BTreeMap::new(),
            rebuilding: None,
            gc: gc::Collector::default(),
            moved: moved::Moved::default(),
            stats: AntiEntropyStats::default(),
            share: 1.0,
            scanned: 0,
        }
    }

    /// Numbers this run's sessions and handovers from `first` on (see
    /// [`crate::node::Node::new`]).
    pub fn start_ids_at(&mut self, first: u64) {
        self.next_session = first;
        self.moved.next_id = first;
    }

    /// The trees.
    pub fn trees(&mut self) -> &mut Trees {
        &mut self.trees
    }

    /// The trees, to read.
    pub fn trees_ref(&self) -> &Trees {
        &self.trees
    }

    /// Whether some tree is still being built.
    pub fn building(&self) -> bool {
        self.trees.counts().1 > 0
    }

    /// Asks for another forced round as soon as the current one ends (a join or leave in
    /// progress keeps comparing until every range is confirmed).
    pub fn keep_comparing(&mut self) {
        if self.round.is_none() {
            self.force = true;
        }
    }

    /// Follows local writes: `changes` from the store's journal.
    pub fn apply(&mut self, changes: Vec<super::tracked::Change>) {
        for c in changes {
            self.trees.apply(&c);
        }
    }

    /// Starts a round of every pair of this node's as soon as possible (after the round in
    /// progress, which may have compared ranges before the caller's reason to repair); returns
    /// its id.
    pub fn force_round(&mut self) -> u64 {
        self.force = true;
        self.next_round_id
    }

    /// This node lost its data: its copies do not count until each range it replicates (as the
    /// ring is then) finished a session with another replica.
    pub fn start_rebuilding(&mut self) {
        self.rebuilding = Some(BTreeSet::new());
        self.force = true;
    }

    /// Whether this node is rebuilding lost data.
    pub fn rebuilding(&self) -> bool {
        self.rebuilding.is_some()
    }

    /// Ranges with another replica not yet synchronised since rebuilding began.
    fn rebuilding_left(&self) -> usize {
        let Some(done) = &self.rebuilding else {
            return 0;
        };
        self.trees
            .peers()
            .iter()
            .filter(|(r, p)| !p.is_empty() && !done.contains(*r))
            .count()
    }

    /// `range` finished a session (or proved equal): one less to rebuild.
    fn synchronised(&mut self, range: Range) {
        if let Some(done) = self.rebuilding.as_mut() {
            done.insert(range);
            if self.rebuilding_left() == 0 {
                self.rebuilding = None;
            }
        }
    }

    /// When `range` was last proven equal with `peer`.
    pub fn synced(&self, range: Range, peer: &str) -> Option<Synced> {
        self.synced.get(&(range, peer.to_owned())).copied()
    }

    /// Counters and progress.
    pub fn stats(&self) -> AntiEntropyStats {
        let (trees, building, keys, rebuilt, tombstones) = self.trees.counts();
        AntiEntropyStats {
            trees,
            trees_building: building,
            tree_keys: keys,
            trees_rebuilt: rebuilt,
            tree_memory_bytes: (trees * crate::merkle::Tree::MEMORY_BYTES) as u64,
            tombstones,
            moved_keys: self.moved.dropped,
            rebuilding: self.rebuilding.is_some(),
            rebuilding_ranges: self.rebuilding_left(),
            round: self.round.as_ref().map(|r| r.progress.clone()),
            ..self.stats.clone()
        }
    }

    /// Sessions in flight.
    pub fn in_flight(&self) -> usize {
        self.sessions.len()
    }

    /// The transport lost `node`: its sessions end.
    pub fn peer_down(&mut self, node: &str) {
        let lost: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.peer == node)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.end(id, End::Failed);
        }
    }

    /// Sets the scheduler's share of the background budget (0..=1): fewer sessions start while
    /// foreground latency is high.
    pub fn set_share(&mut self, share: f64) {
        self.share = share.clamp(0.0, 1.0);
    }

    /// Time passed: follow the ring, build trees, expire sessions, push, start sessions,
    /// collect tombstones.
    #[allow(clippy::too_many_arguments)] // the node's view of time, ring, peers and budget
    pub fn tick<S: LocalStore>(
        &mut self,
        clock: Now,
        me: &str,
        rings: &Rings,
        is_up: impl Fn(&str) -> bool,
        shared: &mut Throttle,
        store: &S,
        out: &mut Outbox,
    ) {
        let now = clock.mono;
        let first = self.trees.owners().is_empty();
        if self.trees.reshape(rings, me, self.config.n) {
            // Ranges changed hands: whether moved keys are held here is unknown again.
            self.moved.holding = None;
            // New ranges (a join or a leave): compare them at once rather than next round.
            if !first && self.config.interval_ms > 0 {
                self.force = true;
            }
            let dropped: Vec<u64> = self
                .sessions
                .iter()
                .filter(|(_, s)| self.trees.get(&s.range).is_none())
                .map(|(id, _)| *id)
                .collect();
            for id in dropped {
                self.end(id, End::Failed);
            }
        }
        if let Err(e) = self.trees.build(store, BUILD_KEYS_PER_TICK) {
            // Try again next tick; the trees stay not ready meanwhile.
            let _ = e;
        }
        self.throttle.refill(now);
        let expired: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| now >= s.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            self.end(id, End::Failed);
        }
        let pushing: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.stage == Stage::Pushing { awaiting: false })
            .map(|(id, _)| *id)
            .collect();
        for id in pushing {
            self.pump(now, id, shared, store, out);
        }
        self.schedule(now, me, &is_up, out);
        // Tombstone collection and moved-data handovers read keys: each key read is an item of
        // the shared budget, so they slow down with it.
        self.scanned = 0;
        self.collect(clock, me, &rings.all, &is_up, shared.budget(0), store, out);
        shared.spend_many(std::mem::take(&mut self.scanned));
        self.move_data(now, rings, &is_up, shared.budget(0), store, out);
        shared.spend_many(std::mem::take(&mut self.scanned));
    }

    /// Starts the round when one is due and as many sessions as allowed. Called every tick and
    /// after every anti-entropy message, so a session that ends makes room at once.
    pub fn schedule(
        &mut self,
        now: u64,
        me: &str,
        is_up: &impl Fn(&str) -> bool,
        out: &mut Outbox,
    ) {
        if self.round.is_none() {
            let due = self.config.interval_ms > 0 && now >= self.next_round_at;
            if !(self.force || due) {
                return;
            }
            let forced = self.force;
            self.force = false;
            // Peer by peer, so that sessions running together are on different ranges.
            let mut pairs: Vec<(Range, String)> = self
                .trees
                .peers()
                .iter()
                .flat_map(|(r, peers)| peers.iter().map(move |p| (*r, p.clone())))
                .filter(|(_, p)| forced || me < p.as_str())
                .collect();
            pairs.sort_by(|a, b| (&a.1, a.0).cmp(&(&b.1, b.0)));
            let id = self.next_round_id;
            self.next_round_id += 1;
            self.round = Some(Round {
                progress: RoundProgress {
                    id,
                    forced,
                    pairs: pairs.len(),
                    ..RoundProgress::default()
                },
                pairs,
                next: 0,
            });
        }
        let cap = ((self.config.sessions as f64 * self.share).round() as usize).max(1);
        while self.sessions.len() < cap {
            let Some(round) = self.round.as_mut() else {
                return;
            };
            let Some((range, peer)) = round.pairs.get(round.next).cloned() else {
                break;
            };
            let Some(t) = self.trees.get_mut(&range) else {
                // The ring moved on since the round began.
                round.next += 1;
                round.progress.done += 1;
                continue;
            };
            if !t.ready() || self.sessions.values().any(|s| s.range == range) {
                // Wait for the tree to be built, or for the session on this range with
                // another replica to end (what it repairs need not travel twice).
                break;
            }
            round.next += 1;
            if !is_up(&peer) {
                round.progress.done += 1;
                round.progress.skipped += 1;
                continue;
            }
            let root = t.tree.root();
            let session = self.next_session;
            self.next_session += 1;
            self.sessions.insert(
                session,
                Session {
                    peer: peer.clone(),
                    range,
                    deadline: now + self.config.timeout_ms,
                    stage: Stage::Root,
                    push: VecDeque::new(),
                    want: VecDeque::new(),
                    round: Some(round.progress.id),
                },
            );
            self.stats.bytes_sent += 64;
            out.send(
                &peer,
                SyncMessage::Root {
                    session,
                    range,
                    root,
                    hints: self.hints_here(),
                },
            );
        }
        self.finish_round(now);
    }

    fn finish_round(&mut self, now: u64) {
        let Some(round) = &self.round else { return };
        let id = round.progress.id;
        let running = self.sessions.values().any(|s| s.round == Some(id));
        if round.next < round.pairs.len() || running {
            return;
        }
        self.stats.last_round_skipped = round.progress.skipped;
        self.round = None;
        self.stats.last_round = id;
        self.next_round_at = now + self.config.interval_ms;
        if self.rebuilding.is_some() {
            // Until every range synchronised, try the missing ones again soon.
            self.force = true;
            self.next_round_at = now + 1_000;
        }
    }

    fn end(&mut self, id: u64, how: End) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        match how {
            End::InSync => {
                self.stats.exchanges += 1;
                self.stats.in_sync += 1;
            }
            End::Repaired => self.stats.exchanges += 1,
            End::Failed => self.stats.failed += 1,
        }
        if how != End::Failed {
            self.synchronised(s.range);
        }
        if let (Some(round_id), Some(round)) = (s.round, self.round.as_mut())
            && round.progress.id == round_id
        {
            round.progress.done += 1;
        }
    }

    fn proven_equal(&mut self, now: u64, range: Range, peer: &str, root: Hash) {
        self.synced
            .insert((range, peer.to_owned()), Synced { at: now, root });
    }
}

#[cfg(test)]
mod tests;
