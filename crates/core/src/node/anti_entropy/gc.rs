//! Tombstone collection. A deleted key keeps a tombstone so that a replica that missed the
//! delete cannot bring the value back; it can go once every replica is proven to hold it.
//!
//! The first replica of a range collects, when all of this holds:
//! - every other primary of the range is up, and the last exchange with each proved its tree
//!   equal to this node's current root (nothing changed here since);
//! - no node keeps hints or moved keys: this node checks its own store, every other member of
//!   the ring said so in its latest anti-entropy message, and no member that left is still
//!   running (a fallback or an old owner could otherwise hand an old value back after the
//!   tombstone is gone);
//! - the collector has seen the key hold this very version, only tombstones, for at least
//!   `tombstone_min_age_ms` (on its own monotonic clock: a coordinator's skewed wall clock
//!   cannot make a fresh tombstone look old).
//!
//! It then sends the other primaries [`SyncMessage::Reap`] with the keys and the digests of
//! their versions and removes its own copies; a replica removes a key only if its copy is still
//! that version and it keeps no hint for it. A replica that missed the reap pushes its
//! tombstone back in the next exchange and the key is collected again later: only tombstones
//! ever travel back, never a value.
//!
//! Version vectors of live objects are never pruned. A coordinator whose copy of a key was
//! collected starts the key's counter for itself at the wall clock in ms (see the coordinator),
//! so a counter issued before the collection is never issued again.

use super::*;
use crate::node::tracked::dead;

/// Tombstone-only keys collected per sweep of one range at most.
const MAX_REAP: usize = 10_000;

/// A sweep of one range for collectable tombstones, paged across ticks.
#[derive(Debug)]
pub(super) struct Sweep {
    range: Range,
    root: Hash,
    span: usize,
    after: Option<Vec<u8>>,
    found: Vec<(Vec<u8>, Object)>,
    /// Every tombstone-only key of the range this sweep saw: its version and since when.
    seen: BTreeMap<Vec<u8>, (Digest, u64)>,
}

/// The collector's state.
#[derive(Debug, Default)]
pub(super) struct Collector {
    sweep: Option<Sweep>,
    /// When each range was last swept (monotonic ms).
    last_sweep: BTreeMap<Range, u64>,
    /// Whether each peer kept hints, as it last said.
    peer_hints: BTreeMap<String, bool>,
    /// Whether this node keeps hints, and when that was last checked.
    hints_here: (bool, u64),
    /// Per range, the tombstone-only keys the last sweep saw: their version and since when
    /// (monotonic ms).
    seen: BTreeMap<Range, BTreeMap<Vec<u8>, (Digest, u64)>>,
}

impl AntiEntropy {
    /// Whether this node keeps hints, or may keep keys of ranges it no longer replicates (as
    /// last checked): either could hand an old value back after a tombstone is collected.
    pub(super) fn hints_here(&self) -> bool {
        self.gc.hints_here.0 || self.holding_moved()
    }

    /// A peer said whether it keeps hints.
    pub(super) fn peer_hints(&mut self, peer: &str, hints: bool) {
        self.gc.peer_hints.insert(peer.to_owned(), hints);
    }

    /// Whether the trees prove that every other primary of `range` holds what this node holds
    /// now, with all of them up.
    fn proven(&mut self, range: Range, is_up: &impl Fn(&str) -> bool) -> bool {
        let Some(peers) = self.trees.peers().get(&range).cloned() else {
            return false;
        };
        let Some(t) = self.trees.get_mut(&range) else {
            return false;
        };
        if !t.ready() {
            return false;
        }
        let root = t.tree.root();
        peers.iter().all(|p| {
            is_up(p)
                && self
                    .synced
                    .get(&(range, p.clone()))
                    .is_some_and(|s| s.root == root)
        })
    }

    /// Whether no node this one knows of keeps hints.
    fn no_hints_anywhere(&self, members: &[String], me: &str) -> bool {
        !self.hints_here()
            && members
                .iter()
                .filter(|m| *m != me)
                .all(|m| self.gc.peer_hints.get(m) == Some(&false))
    }

    /// One step of tombstone collection: refresh whether hints are kept here, start or go on
    /// with a sweep, and reap what a finished sweep found.
    #[allow(clippy::too_many_arguments)] // the node's context, passed explicitly
    pub(super) fn collect<S: LocalStore>(
        &mut self,
        now: Now,
        me: &str,
        ring: &Ring,
        is_up: &impl Fn(&str) -> bool,
        limit: usize,
        store: &S,
        out: &mut Outbox,
    ) {
        if now.mono >= self.gc.hints_here.1 + 1_000 {
            let kept = store
                .scan_hints(None, 1)
                .map(|h| !h.is_empty())
                .unwrap_or(true);
            self.gc.hints_here = (kept, now.mono);
        }
        // Sweep a range often enough to see a tombstone reach the minimum age a few times over.
        let trees = &self.trees;
        self.gc.seen.retain(|r, _| trees.get(r).is_some());
        let pause = self
            .config
            .interval_ms
            .max(self.config.tombstone_min_age_ms / 4)
            .max(1_000);
        if self.gc.sweep.is_none() {
            let next = self
                .trees
                .peers()
                .keys()
                .filter(|r| self.trees.owns(r))
                .filter(|r| self.trees.get(r).is_some_and(|t| t.dead > 0))
                .filter(|r| {
                    self.gc
                        .last_sweep
                        .get(*r)
                        .is_none_or(|at| now.mono >= at + pause)
                })
                .copied()
                .collect::<Vec<_>>();
            let Some(range) = next.into_iter().find(|r| self.proven(*r, is_up)) else {
                return;
            };
            // Sweep even while hints are kept somewhere: the sweep records since when each
            // tombstone is unchanged; only the reap waits for no hints anywhere.
            let Some(t) = self.trees.get_mut(&range) else {
                return;
            };
            self.gc.last_sweep.insert(range, now.mono);
            self.gc.sweep = Some(Sweep {
                range,
                root: t.tree.root(),
                span: 0,
                after: None,
                found: Vec::new(),
                seen: BTreeMap::new(),
            });
        }
        let Some(mut sweep) = self.gc.sweep.take() else {
            return;
        };
        let spans = sweep.range.spans();
        let min_age = self.config.tombstone_min_age_ms;
        // Keys read count against the shared background budget (`limit` this tick).
        let mut budget = BUILD_KEYS_PER_TICK.min(limit);
        while budget > 0 && sweep.span < spans.len() && sweep.found.len() < MAX_REAP {
            let (lo, hi) = spans[sweep.span];
            let Ok(page) = store.scan(lo, hi, sweep.after.as_deref(), budget) else {
                return;
            };
            let full = page.len() == budget;
            budget -= page.len();
            self.scanned += page.len();
            sweep.after = page.last().map(|(k, _)| k.clone());
            let before = self.gc.seen.get(&sweep.range);
            for (key, object) in page {
                if !dead(&object) {
                    continue;
                }
                let version = digest(&object);
                let since = before
                    .and_then(|b| b.get(&key))
                    .filter(|(d, _)| *d == version)
                    .map_or(now.mono, |(_, since)| *since);
                sweep.seen.insert(key.clone(), (version, since));
                if now.mono >= since.saturating_add(min_age) {
                    sweep.found.push((key, object));
                }
            }
            if !full {
                sweep.span += 1;
                sweep.after = None;
            }
        }
        if sweep.span < spans.len() && sweep.found.len() < MAX_REAP {
            self.gc.sweep = Some(sweep);
            return;
        }
        let seen = std::mem::take(&mut sweep.seen);
        self.gc.seen.insert(sweep.range, seen);
        // Reap only if nothing changed here since the sweep began and the proof still holds.
        let unchanged = self
            .trees
            .get_mut(&sweep.range)
            .is_some_and(|t| t.tree.root() == sweep.root);
        if sweep.found.is_empty()
            || !unchanged
            || !self.proven(sweep.range, is_up)
            || !self.no_hints_anywhere(ring.nodes(), me)
        {
            return;
        }
        let keys: Vec<(Vec<u8>, Digest)> = sweep
            .found
            .iter()
            .map(|(k, o)| (k.clone(), digest(o)))
            .collect();
        if let Some(peers) = self.trees.peers().get(&sweep.range) {
            for p in peers {
                out.send(
                    p,
                    SyncMessage::Reap {
                        range: sweep.range,
                        keys: keys.clone(),
                    },
                );
            }
        }
        for (key, object) in &sweep.found {
            if store.hints_for_key(key).is_ok_and(|h| h.is_empty())
                && store.remove_if(key, object).unwrap_or(false)
            {
                self.stats.tombstones_collected += 1;
            }
        }
    }

    /// A peer's reap: remove each key whose copy is still the version named, holds only
    /// tombstones, and has no hint here.
    pub(super) fn on_reap<S: LocalStore>(
        &mut self,
        from: &str,
        range: Range,
        keys: Vec<(Vec<u8>, Digest)>,
        store: &S,
    ) {
        if !self.trees.is_peer(&range, from) {
            return;
        }
        for (key, version) in keys.into_iter().take(MAX_REAP) {
            if crate::limits::check_key(&key).is_err() || !range.contains(position(&key)) {
                continue;
            }
            let Ok(Some(current)) = store.get(&key) else {
                continue;
            };
            if dead(&current)
                && digest(&current) == version
                && store.hints_for_key(&key).is_ok_and(|h| h.is_empty())
                && store.remove_if(&key, &current).unwrap_or(false)
            {
                self.stats.tombstones_collected += 1;
            }
        }
    }
}
