//! The Merkle exchange of anti-entropy (Dynamo section 4.7): the replicas of each range compare
//! Merkle trees and exchange the objects of the keys that differ, merged both ways with the one
//! merge. A background worker ([`super::worker::Worker`]); the `Sync` message family.
//!
//! - The trees ([`super::trees`]) are the node's; this worker reshapes them when the ring moves
//!   and builds them by paged scans across ticks.
//! - Rounds: every `interval_ms` (and on demand), each range is compared with each other
//!   primary of it. Normally the node with the smaller id starts the session of a pair; a
//!   forced round (an operator's repair, a join or leave in progress, or a node rebuilding lost
//!   data) starts all of its own.
//! - A session ([`session`]): root, then the branches that differ, then the leaves that differ
//!   and the keys in them, then batches of objects both ways under this worker's throttle
//!   (keys/s and bytes/s) and the shared background budget. The responder keeps no state.
//! - What a session proves (a range equal with a peer) goes into the node's
//!   [`super::proofs::Proofs`], which the rebalancer and the tombstone collector read; so does
//!   the end of rebuilding lost data (every range synchronised once).
//! - Hints are not in the trees: a fallback's hinted data goes back by handoff, and the owner's
//!   range is compared with the other primaries.

mod session;

use super::throttle::Throttle;
use super::worker::{Ctx, Worker};
use crate::merkle::Range;
use crate::message::SyncMessage;
use crate::store::LocalStore;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Objects per push or pull message, in bytes (one larger object travels alone).
const BATCH_BYTES: usize = 1 << 20;
/// Largest key list in a [`SyncMessage::Keys`], in bytes.
const KEYS_BYTES: usize = 4 << 20;
/// Keys asked for per push.
const WANT_PER_BATCH: usize = 256;

/// The exchange's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ExchangeConfig {
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
    /// Largest value taken from a peer.
    pub max_value_bytes: usize,
}

/// The exchange's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExchangeStats {
    /// Sessions finished (in sync or repaired).
    pub exchanges: u64,
    /// Of those, sessions that found the roots equal.
    pub in_sync: u64,
    /// Sessions that failed, by why (the sum is `failed`).
    pub failed_by: FailedBy,
    /// Sessions that failed: the peer was lost or did not answer in time, an answer did not
    /// fit, or a storage failed.
    pub failed: u64,
    /// Sessions that could not go on yet, compared again next round: the two nodes' ring views
    /// differed for a moment (a membership change), or the peer's tree was being built.
    pub postponed: u64,
    /// Keys whose local copy changed by a merge from another replica.
    pub keys_repaired: u64,
    /// Objects sent to other replicas.
    pub objects_sent: u64,
    /// Bytes of trees, key lists and objects sent.
    pub bytes_sent: u64,
    /// The id of the last round finished (0: none yet).
    pub last_round: u64,
    /// Comparisons the last finished round skipped because the peer was down.
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
    /// The ring version it began under: one that times out after the ring changed was caught
    /// between two views (its peer may have dropped it), and is postponed, not failed.
    ring: Option<u64>,
}

/// How a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum End {
    InSync,
    Repaired,
    Failed(Failure),
    Postponed,
}

/// Why a session failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    /// The connection to the peer was lost.
    PeerLost,
    /// The peer did not answer within the session timeout.
    TimedOut,
    /// The peer refused: its storage failed.
    Refused,
    /// This node's storage failed.
    Storage,
    /// The peer's answer did not fit the protocol.
    BadAnswer,
}

/// Failed sessions by why.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailedBy {
    /// The connection to the peer was lost.
    pub peer_lost: u64,
    /// The peer did not answer within the session timeout.
    pub timed_out: u64,
    /// The peer's storage failed.
    pub peer_storage: u64,
    /// This node's storage failed.
    pub storage: u64,
    /// The peer's answer did not fit the protocol.
    pub bad_answer: u64,
}

impl FailedBy {
    fn count(&mut self, why: Failure) {
        *match why {
            Failure::PeerLost => &mut self.peer_lost,
            Failure::TimedOut => &mut self.timed_out,
            Failure::Refused => &mut self.peer_storage,
            Failure::Storage => &mut self.storage,
            Failure::BadAnswer => &mut self.bad_answer,
        } += 1;
    }
}

/// The exchange worker of one node: its sessions, rounds and throttle.
#[derive(Debug)]
pub struct Exchange {
    config: ExchangeConfig,
    sessions: BTreeMap<u64, Session>,
    next_session: u64,
    throttle: Throttle,
    round: Option<Round>,
    next_round_id: u64,
    next_round_at: u64,
    force: bool,
    stats: ExchangeStats,
}

impl Exchange {
    /// A worker with no session (the trees are built once the ring is known).
    pub fn new(config: ExchangeConfig) -> Self {
        Self {
            config,
            sessions: BTreeMap::new(),
            next_session: 1,
            throttle: Throttle::new(config.keys_per_sec, config.sessions)
                .with_bytes(config.bytes_per_sec),
            round: None,
            next_round_id: 1,
            next_round_at: 0,
            force: false,
            stats: ExchangeStats::default(),
        }
    }

    /// Numbers this run's sessions from `first` on (see [`crate::node::Node::new`]).
    pub fn start_ids_at(&mut self, first: u64) {
        self.next_session = first;
    }

    /// Asks for another forced round as soon as the current one ends (a join or leave in
    /// progress keeps comparing until every range is confirmed).
    pub fn keep_comparing(&mut self) {
        if self.round.is_none() {
            self.force = true;
        }
    }

    /// Starts a round of every pair of this node's as soon as possible (after the round in
    /// progress, which may have compared ranges before the caller's reason to repair); returns
    /// its id.
    pub fn force_round(&mut self) -> u64 {
        self.force = true;
        self.next_round_id
    }

    /// Drops every session in flight, counted as postponed (this node's storage changed under
    /// them); late answers to them are ignored. Their round ends as it would have.
    pub fn abandon_sessions(&mut self) {
        let n = self.sessions.len() as u64;
        self.stats.postponed += n;
        if let Some(round) = self.round.as_mut() {
            let ids = self
                .sessions
                .values()
                .filter(|s| s.round == Some(round.progress.id));
            round.progress.done += ids.count();
        }
        self.sessions.clear();
    }

    /// The counters.
    pub fn stats(&self) -> ExchangeStats {
        self.stats
    }

    /// The round in progress, if any.
    pub fn round(&self) -> Option<RoundProgress> {
        self.round.as_ref().map(|r| r.progress.clone())
    }

    /// Sessions in flight.
    pub fn in_flight(&self) -> usize {
        self.sessions.len()
    }

    /// The transport lost `node`: its sessions end.
    pub fn peer_down<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>, node: &str) {
        let lost: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.peer == node)
            .map(|(id, _)| *id)
            .collect();
        for id in lost {
            self.end(ctx, id, End::Failed(Failure::PeerLost));
        }
    }

    /// Follows the ring: the trees of the ranges this node replicates now; sessions on ranges
    /// it no longer replicates end.
    fn follow_ring<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>) {
        let first = ctx.trees.owners().is_empty();
        if !ctx.trees.reshape(ctx.rings, ctx.me, self.config.n) {
            return;
        }
        // Ranges changed hands: whether moved keys are held here is unknown again (the
        // handover worker finds out).
        ctx.proofs.set_moved_here(true);
        // New ranges (a join or a leave): compare them at once rather than next round.
        if !first && self.config.interval_ms > 0 {
            self.force = true;
        }
        let dropped: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| ctx.trees.get(&s.range).is_none())
            .map(|(id, _)| *id)
            .collect();
        for id in dropped {
            self.end(ctx, id, End::Postponed);
        }
    }

    /// Starts the round when one is due and as many sessions as allowed. Called every tick and
    /// after every anti-entropy message, so a session that ends makes room at once.
    pub fn schedule<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>) {
        let now = ctx.now.mono;
        if self.round.is_none() && !self.begin_round(ctx) {
            return;
        }
        let cap = ((self.config.sessions as f64 * ctx.share).round() as usize).max(1);
        while self.sessions.len() < cap {
            let Some(round) = self.round.as_mut() else {
                return;
            };
            let Some((range, peer)) = round.pairs.get(round.next).cloned() else {
                break;
            };
            let Some(t) = ctx.trees.get_mut(&range) else {
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
            if !(ctx.is_up)(&peer) {
                round.progress.done += 1;
                round.progress.skipped += 1;
                continue;
            }
            let root = t.tree.root();
            let session = self.next_session;
            self.next_session += 1;
            let round_id = round.progress.id;
            self.sessions.insert(
                session,
                Session {
                    peer: peer.clone(),
                    range,
                    deadline: now + self.config.timeout_ms,
                    stage: Stage::Root,
                    push: VecDeque::new(),
                    want: VecDeque::new(),
                    round: Some(round_id),
                    ring: ctx.trees.ring_version(),
                },
            );
            self.stats.bytes_sent += 64;
            let hints = ctx.proofs.keeps_hints_or_moved();
            ctx.out.send(
                &peer,
                SyncMessage::Root {
                    session,
                    range,
                    root,
                    hints,
                },
            );
        }
        self.finish_round(ctx);
    }

    /// Begins a round if one is due (on schedule, or forced); returns whether one runs.
    fn begin_round<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>) -> bool {
        let due = self.config.interval_ms > 0 && ctx.now.mono >= self.next_round_at;
        if !(self.force || due) {
            return false;
        }
        let forced = self.force;
        self.force = false;
        // Peer by peer, so that sessions running together are on different ranges.
        let me = ctx.me;
        let mut pairs: Vec<(Range, String)> = ctx
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
        true
    }

    fn finish_round<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>) {
        let Some(round) = &self.round else { return };
        let id = round.progress.id;
        let running = self.sessions.values().any(|s| s.round == Some(id));
        if round.next < round.pairs.len() || running {
            return;
        }
        self.stats.last_round_skipped = round.progress.skipped;
        self.round = None;
        self.stats.last_round = id;
        self.next_round_at = ctx.now.mono + self.config.interval_ms;
        ctx.proofs.rebuilt_if_nothing_left(ctx.trees.peers());
        if ctx.proofs.rebuilding() {
            // Until every range synchronised, try the missing ones again soon.
            self.force = true;
            self.next_round_at = ctx.now.mono + 1_000;
        }
    }

    fn end<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>, id: u64, how: End) {
        let Some(s) = self.sessions.remove(&id) else {
            return;
        };
        match how {
            End::InSync => {
                self.stats.exchanges += 1;
                self.stats.in_sync += 1;
            }
            End::Repaired => self.stats.exchanges += 1,
            End::Failed(why) => {
                self.stats.failed += 1;
                self.stats.failed_by.count(why);
            }
            End::Postponed => self.stats.postponed += 1,
        }
        if matches!(how, End::InSync | End::Repaired) {
            ctx.proofs.synchronised(s.range, ctx.trees.peers());
        }
        if let (Some(round_id), Some(round)) = (s.round, self.round.as_mut())
            && round.progress.id == round_id
        {
            round.progress.done += 1;
        }
    }
}

impl<S: LocalStore> Worker<S> for Exchange {
    /// Follow the ring, build trees, expire sessions, push, start sessions.
    fn tick(&mut self, ctx: &mut Ctx<'_, S>) {
        let now = ctx.now.mono;
        self.follow_ring(ctx);
        if let Err(e) = ctx
            .trees
            .build(ctx.store, super::trees::BUILD_KEYS_PER_TICK)
        {
            // Tried again next tick; the trees stay not ready meanwhile.
            ctx.errors
                .record("anti-entropy", "building a Merkle tree", &e);
        }
        self.throttle.refill(now);
        let expired: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| now >= s.deadline)
            .map(|(id, _)| *id)
            .collect();
        for id in expired {
            let ring = ctx.trees.ring_version();
            let how = if self.sessions.get(&id).is_some_and(|s| s.ring != ring) {
                End::Postponed
            } else {
                End::Failed(Failure::TimedOut)
            };
            self.end(ctx, id, how);
        }
        let pushing: Vec<u64> = self
            .sessions
            .iter()
            .filter(|(_, s)| s.stage == Stage::Pushing { awaiting: false })
            .map(|(id, _)| *id)
            .collect();
        for id in pushing {
            self.pump(ctx, id);
        }
        self.schedule(ctx);
    }
}

#[cfg(test)]
mod tests;
