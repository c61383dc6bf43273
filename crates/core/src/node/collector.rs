//! Tombstone collection: a background worker ([`super::worker::Worker`]) with its own message
//! family ([`CollectMessage`]). A deleted key keeps a tombstone so that a replica that missed
//! the delete cannot bring the value back; it can go once every replica is proven to hold it.
//!
//! The first replica of a range collects, when all of this holds:
//! - every other primary of the range is up, and the last exchange with each proved its tree
//!   equal to this node's current root (nothing changed here since), as the node's
//!   [`super::proofs::Proofs`] record;
//! - no node keeps hints or moved keys: this node checks its own store, and every other member
//!   of the ring said so in its latest anti-entropy message (a fallback or an old owner could
//!   otherwise hand an old value back after the tombstone is gone; an instance that left or was
//!   removed never hands anything back - its messages are refused);
//! - the collector has seen the key hold this very version, only tombstones, for at least
//!   `tombstone_min_age_ms` (on its own monotonic clock: a coordinator's skewed wall clock
//!   cannot make a fresh tombstone look old).
//!
//! Values that expired count as tombstones here (each sibling carries its deadline, the same on
//! every replica, so no copy can bring one back): a range is swept when it holds a tombstone
//! or once the earliest deadline its tree has seen passed (on this node's wall clock), and an
//! object whose values all expired is collected like a deleted key. Expiry thus costs a sweep
//! of the ranges where something expired, under the shared background budget.
//!
//! It then sends the other primaries [`CollectMessage::Reap`] with the keys and the digests of
//! their versions and removes its own copies, a chunk of keys per tick under the shared
//! background budget (so a million keys expiring at once never hold the node thread long); a replica removes a key only if its copy is still
//! that version and it keeps no hint for it. A replica that missed the reap pushes its
//! tombstone back in the next exchange and the key is collected again later: only tombstones
//! ever travel back, never a value.
//!
//! Version vectors of live objects are never pruned. A coordinator whose copy of a key was
//! collected continues above the highest counter its actor ever issued (its counter floor, kept
//! across clean restarts; a new actor after a crash), so a counter issued before the collection
//! is never issued again.

use super::trees::BUILD_KEYS_PER_TICK;
use super::worker::{Ctx, Worker};
use crate::merkle::{Digest, Hash, Range, digest};
use crate::message::CollectMessage;
use crate::ring::position;
use crate::store::LocalStore;
use crate::version::Object;
use std::collections::{BTreeMap, VecDeque};

/// Tombstone-only keys collected per sweep of one range at most.
const MAX_REAP: usize = 10_000;

/// Keys reaped per tick at most (and per `Reap` message): a sweep's keys go a chunk at a time,
/// under the shared background budget, so that removing them never holds the node thread
/// long.
const REAP_PER_TICK: usize = 256;

/// The collector's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CollectorConfig {
    /// The pause between anti-entropy rounds, ms (a range is swept no more often).
    pub interval_ms: u64,
    /// Youngest tombstone that may be collected, ms.
    pub tombstone_min_age_ms: u64,
}

/// A key a sweep found collectable, with the version it saw.
type Found = (Vec<u8>, Object);

/// A sweep of one range for collectable tombstones, paged across ticks.
#[derive(Debug)]
struct Sweep {
    range: Range,
    root: Hash,
    span: usize,
    after: Option<Vec<u8>>,
    found: Vec<(Vec<u8>, Object)>,
    /// Every tombstone-only key of the range this sweep saw: its version and since when.
    seen: BTreeMap<Vec<u8>, (Digest, u64)>,
    /// The earliest deadline of a key the sweep saw still holding a value that expires (the
    /// range's next expiry once the sweep is complete).
    next_expiry: Option<u64>,
}

/// The collector of one node.
#[derive(Debug)]
pub struct Collector {
    config: CollectorConfig,
    sweep: Option<Sweep>,
    /// What a finished sweep found that is still to be reaped: its range and the keys with
    /// the versions seen.
    reaping: Option<(Range, VecDeque<Found>)>,
    /// When each range was last swept (monotonic ms).
    last_sweep: BTreeMap<Range, u64>,
    /// When this node last checked whether it keeps hints (monotonic ms).
    hints_checked: Option<u64>,
    /// Per range, the tombstone-only keys the last sweep saw: their version and since when
    /// (monotonic ms).
    seen: BTreeMap<Range, BTreeMap<Vec<u8>, (Digest, u64)>>,
    /// Deleted keys whose tombstones were collected here.
    collected: u64,
}

impl Collector {
    /// A collector with nothing seen yet.
    pub fn new(config: CollectorConfig) -> Self {
        Self {
            config,
            sweep: None,
            reaping: None,
            last_sweep: BTreeMap::new(),
            hints_checked: None,
            seen: BTreeMap::new(),
            collected: 0,
        }
    }

    /// Deleted keys whose tombstones were collected here.
    pub fn collected(&self) -> u64 {
        self.collected
    }

    /// Whether the trees prove that every other primary of `range` holds what this node holds
    /// now, with all of them up.
    fn proven<S: LocalStore>(ctx: &mut Ctx<'_, S>, range: Range) -> bool {
        let Some(peers) = ctx.trees.peers().get(&range).cloned() else {
            return false;
        };
        let Some(t) = ctx.trees.get_mut(&range) else {
            return false;
        };
        if !t.ready() {
            return false;
        }
        let root = t.tree.root();
        peers
            .iter()
            .all(|p| (ctx.is_up)(p) && ctx.proofs.synced(range, p).is_some_and(|s| s.root == root))
    }

    /// Whether no node this one knows of keeps hints or moved keys.
    fn no_hints_anywhere<S: LocalStore>(ctx: &Ctx<'_, S>) -> bool {
        !ctx.proofs.keeps_hints_or_moved()
            && ctx
                .rings
                .all
                .nodes()
                .iter()
                .filter(|m| *m != ctx.me)
                .all(|m| !ctx.proofs.peer_keeps_hints(m))
    }

    /// Whether this node keeps hints, checked once a second.
    fn check_hints<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>) {
        let now = ctx.now.mono;
        if self.hints_checked.is_some_and(|at| now < at + 1_000) {
            return;
        }
        self.hints_checked = Some(now);
        let kept = match ctx.store.scan_hints(None, 1) {
            Ok(h) => !h.is_empty(),
            Err(e) => {
                ctx.errors
                    .record("tombstone collection", "looking for hints", &e);
                true
            }
        };
        ctx.proofs.set_hints_here(kept);
    }

    /// Starts a sweep of the next owned range that is due and proven, if any.
    fn next_sweep<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>) -> Option<Sweep> {
        let now = ctx.now.mono;
        // Sweep a range often enough to see a tombstone reach the minimum age a few times over.
        let pause = self
            .config
            .interval_ms
            .max(self.config.tombstone_min_age_ms / 4)
            .max(1_000);
        let due: Vec<Range> = ctx
            .trees
            .peers()
            .keys()
            .filter(|r| ctx.trees.owns(r))
            .filter(|r| {
                ctx.trees
                    .get(r)
                    .is_some_and(|t| t.dead > 0 || t.next_expiry.is_some_and(|d| ctx.now.wall >= d))
            })
            .filter(|r| self.last_sweep.get(*r).is_none_or(|at| now >= at + pause))
            .copied()
            .collect();
        let range = due.into_iter().find(|r| Self::proven(ctx, *r))?;
        // Sweep even while hints are kept somewhere: the sweep records since when each
        // tombstone is unchanged; only the reap waits for no hints anywhere.
        let t = ctx.trees.get_mut(&range)?;
        let root = t.tree.root();
        // What the sweep finds replaces it; writes meanwhile lower it again.
        t.next_expiry = None;
        self.last_sweep.insert(range, now);
        Some(Sweep {
            range,
            root,
            span: 0,
            after: None,
            found: Vec::new(),
            seen: BTreeMap::new(),
            next_expiry: None,
        })
    }

    /// Goes on with `sweep` within the budget; returns whether it is done.
    fn advance<S: LocalStore>(&self, ctx: &mut Ctx<'_, S>, sweep: &mut Sweep) -> bool {
        let now = ctx.now.mono;
        let spans = sweep.range.spans();
        let min_age = self.config.tombstone_min_age_ms;
        // Keys read count against the shared background budget.
        let mut budget = BUILD_KEYS_PER_TICK.min(ctx.budget.budget(0));
        while budget > 0 && sweep.span < spans.len() && sweep.found.len() < MAX_REAP {
            let (lo, hi) = spans[sweep.span];
            let page = match ctx.store.scan(lo, hi, sweep.after.as_deref(), budget) {
                Ok(page) => page,
                Err(e) => {
                    ctx.errors
                        .record("tombstone collection", "sweeping a range", &e);
                    return false;
                }
            };
            let full = page.len() == budget;
            budget -= page.len();
            ctx.budget.spend_many(page.len());
            sweep.after = page.last().map(|(k, _)| k.clone());
            let before = self.seen.get(&sweep.range);
            for (key, object) in page {
                if !object.dead_at(ctx.now.wall) {
                    if let Some(d) = object.expires() {
                        sweep.next_expiry = Some(sweep.next_expiry.map_or(d, |n| n.min(d)));
                    }
                    continue;
                }
                if object.live().next().is_some() {
                    // Expired, not deleted: the tombstone count does not bring the range
                    // back, so it stays due until the key is gone.
                    sweep.next_expiry = Some(ctx.now.wall);
                }
                let version = digest(&object);
                let since = before
                    .and_then(|b| b.get(&key))
                    .filter(|(d, _)| *d == version)
                    .map_or(now, |(_, since)| *since);
                sweep.seen.insert(key.clone(), (version, since));
                if now >= since.saturating_add(min_age) {
                    sweep.found.push((key, object));
                }
            }
            if !full {
                sweep.span += 1;
                sweep.after = None;
            }
        }
        if sweep.span < spans.len() && sweep.found.len() >= MAX_REAP {
            // Stopped early: what it has not looked at may have expired too.
            sweep.next_expiry = Some(ctx.now.wall);
            return true;
        }
        sweep.span >= spans.len()
    }

    /// A finished sweep: reap what it found, if nothing changed here since it began, the proof
    /// still holds, and no node keeps hints.
    fn reap<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>, mut sweep: Sweep) {
        let seen = std::mem::take(&mut sweep.seen);
        self.seen.insert(sweep.range, seen);
        if let Some(t) = ctx.trees.get_mut(&sweep.range) {
            t.expiring(sweep.next_expiry);
        }
        let unchanged = ctx
            .trees
            .get_mut(&sweep.range)
            .is_some_and(|t| t.tree.root() == sweep.root);
        if sweep.found.is_empty()
            || !unchanged
            || !Self::proven(ctx, sweep.range)
            || !Self::no_hints_anywhere(ctx)
        {
            return;
        }
        self.reaping = Some((sweep.range, sweep.found.into()));
        self.reap_some(ctx);
    }

    /// Reaps the next chunk of what a sweep found, within the budget: the other primaries are
    /// told the keys and versions, and this node removes its own copies (each only if still
    /// that version, with no hint for it).
    fn reap_some<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>) {
        let Some((range, pending)) = self.reaping.as_mut() else {
            return;
        };
        let range = *range;
        let n = REAP_PER_TICK.min(ctx.budget.budget(0)).max(1);
        let chunk: Vec<Found> = pending.drain(..n.min(pending.len())).collect();
        if pending.is_empty() {
            self.reaping = None;
        }
        ctx.budget.spend_many(chunk.len());
        let keys: Vec<(Vec<u8>, Digest)> =
            chunk.iter().map(|(k, o)| (k.clone(), digest(o))).collect();
        if let Some(peers) = ctx.trees.peers().get(&range) {
            for p in peers {
                ctx.out.send(
                    p,
                    CollectMessage::Reap {
                        range,
                        keys: keys.clone(),
                    },
                );
            }
        }
        for (key, object) in &chunk {
            self.remove(ctx, key, object);
        }
    }

    /// Removes `key` here if its copy is still `object` and no hint for it is kept.
    fn remove<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>, key: &[u8], object: &Object) {
        let removed = ctx.store.hints_for_key(key).and_then(|h| {
            if h.is_empty() {
                ctx.store.remove_if(key, object)
            } else {
                Ok(false)
            }
        });
        match removed {
            Ok(true) => self.collected += 1,
            Ok(false) => {}
            Err(e) => ctx
                .errors
                .record("tombstone collection", "removing a tombstone", &e),
        }
    }

    /// A message of the collection family from `from`.
    pub fn on_message<S: LocalStore>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: &str,
        message: CollectMessage,
    ) {
        match message {
            CollectMessage::Reap { range, keys } => self.on_reap(ctx, from, range, keys),
        }
        ctx.follow_writes();
    }

    /// A peer's reap: remove each key whose copy is still the version named, holds only
    /// tombstones, and has no hint here.
    fn on_reap<S: LocalStore>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: &str,
        range: Range,
        keys: Vec<(Vec<u8>, Digest)>,
    ) {
        if !ctx.trees.is_peer(&range, from) {
            return;
        }
        for (key, version) in keys.into_iter().take(MAX_REAP) {
            if crate::limits::check_key(&key).is_err() || !range.contains(position(&key)) {
                continue;
            }
            let Ok(Some(current)) = ctx.store.get(&key) else {
                continue;
            };
            if current.dead_at(ctx.now.wall) && digest(&current) == version {
                self.remove(ctx, &key, &current);
            }
        }
    }
}

impl<S: LocalStore> Worker<S> for Collector {
    /// Refresh whether hints are kept here, start or go on with a sweep, and reap what a
    /// finished sweep found.
    fn tick(&mut self, ctx: &mut Ctx<'_, S>) {
        self.check_hints(ctx);
        let trees = &*ctx.trees;
        self.seen.retain(|r, _| trees.get(r).is_some());
        if self.reaping.is_some() {
            self.reap_some(ctx);
            ctx.follow_writes();
            return;
        }
        let sweep = match self.sweep.take() {
            Some(sweep) => Some(sweep),
            None => self.next_sweep(ctx),
        };
        let Some(mut sweep) = sweep else {
            return;
        };
        if self.advance(ctx, &mut sweep) {
            self.reap(ctx, sweep);
            ctx.follow_writes();
        } else {
            self.sweep = Some(sweep);
        }
    }
}
