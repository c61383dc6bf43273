//! Moved data: keys this node holds in ranges it no longer replicates (after a join took them
//! over, or after this node left) go to the range's current owners, and are deleted here only
//! once every current owner acknowledged merging them. So an old owner drops a range only
//! after the new owner confirmed it, and no acknowledged write is lost in a move.

use super::*;
use std::collections::BTreeSet;

/// Keys looked at per tick.
const KEYS_PER_TICK: usize = 200;
/// Handovers waiting for acknowledgements at most.
const MAX_IN_FLIGHT: usize = 256;

/// One key handed over, waiting for its owners.
#[derive(Debug)]
pub(super) struct Handover {
    key: Vec<u8>,
    object: Object,
    waiting: BTreeSet<String>,
    deadline: u64,
}

/// The moved-data worker's state.
#[derive(Debug, Default)]
pub(super) struct Moved {
    /// The spans of ranges not replicated here, and where the scan is in them.
    scan: Vec<(u64, u64)>,
    after: Option<Vec<u8>>,
    next_pass: u64,
    started: Option<u64>,
    handovers: BTreeMap<u64, Handover>,
    pub(super) next_id: u64,
    /// Keys handed over and deleted here.
    pub(super) dropped: u64,
    /// Whether this node may hold keys of ranges it does not replicate: true until a full pass
    /// found none (tombstones are not collected while any node may, since such a key could be
    /// an old value a delete superseded).
    pub(super) holding: Option<bool>,
    found_in_pass: bool,
}

impl AntiEntropy {
    /// One step: expire handovers, then scan the ranges this node does not replicate for keys
    /// and hand them to their current owners.
    pub(super) fn move_data<S: LocalStore>(
        &mut self,
        now: u64,
        rings: &Rings,
        is_up: &impl Fn(&str) -> bool,
        limit: usize,
        store: &S,
        out: &mut Outbox,
    ) {
        self.moved.handovers.retain(|_, h| h.deadline > now);
        if self.moved.scan.is_empty() {
            // Only with a settled view: every member of the ring reachable, and not in the first
            // seconds after start, when the ring may still lack members this node owns with.
            let settled = rings.all.nodes().iter().all(|n| is_up(n));
            let first = *self.moved.started.get_or_insert(now);
            if now < self.moved.next_pass || now < first + 3_000 || !settled || rings.all.is_empty()
            {
                return;
            }
            // A new pass over the ranges not replicated here (normally empty: a seek each).
            self.moved.next_pass = now + 2_000;
            self.moved.found_in_pass = false;
            self.moved.scan = rings
                .all
                .ranges()
                .into_iter()
                .filter(|r| self.trees.get(r).is_none())
                .flat_map(|r| r.spans())
                .collect();
            self.moved.after = None;
            if self.moved.scan.is_empty() {
                // This node replicates every range: it holds no moved key.
                self.moved.holding = Some(false);
            }
        }
        // Keys read count against the shared background budget (`limit` this tick).
        let mut budget = KEYS_PER_TICK.min(limit);
        while budget > 0 && self.moved.handovers.len() < MAX_IN_FLIGHT {
            let Some(&(lo, hi)) = self.moved.scan.first() else {
                return;
            };
            let limit = budget.min(MAX_IN_FLIGHT - self.moved.handovers.len());
            let Ok(page) = store.scan(lo, hi, self.moved.after.as_deref(), limit) else {
                return;
            };
            budget = budget.saturating_sub(page.len().max(1));
            self.scanned += page.len().max(1);
            self.moved.found_in_pass |= !page.is_empty();
            if page.len() < limit {
                self.moved.scan.remove(0);
                self.moved.after = None;
                if self.moved.scan.is_empty() {
                    self.moved.holding = Some(self.moved.found_in_pass);
                }
            } else {
                self.moved.after = page.last().map(|(k, _)| k.clone());
            }
            for (key, object) in page {
                self.hand_over(now, rings, is_up, key, object, out);
            }
        }
    }

    fn hand_over(
        &mut self,
        now: u64,
        rings: &Rings,
        is_up: &impl Fn(&str) -> bool,
        key: Vec<u8>,
        object: Object,
        out: &mut Outbox,
    ) {
        if self.moved.handovers.values().any(|h| h.key == key) {
            return;
        }
        let owners: BTreeSet<String> = rings
            .current
            .walk(position(&key), self.config.n)
            .into_iter()
            .map(str::to_owned)
            .collect();
        // Every current owner must be reachable: the copy goes only when all of them have it.
        if owners.is_empty() || !owners.iter().all(|o| is_up(o)) {
            return;
        }
        let id = self.moved.next_id;
        self.moved.next_id += 1;
        for o in &owners {
            self.stats.objects_sent += 1;
            self.stats.bytes_sent += (object.size_bytes() + key.len()) as u64;
            out.send(
                o,
                SyncMessage::Handover {
                    id,
                    key: key.clone(),
                    object: object.clone(),
                },
            );
        }
        self.moved.handovers.insert(
            id,
            Handover {
                key,
                object,
                waiting: owners,
                deadline: now + self.config.timeout_ms,
            },
        );
    }

    /// A node handed this node a key of a range it no longer replicates.
    pub(super) fn on_handover<S: LocalStore>(
        &mut self,
        from: &str,
        id: u64,
        key: Vec<u8>,
        object: Object,
        store: &S,
        out: &mut Outbox,
    ) {
        let ok = self
            .trees
            .range_of(position(&key))
            .and_then(|r| self.merge_in(store, r, &key, &object))
            .is_some();
        out.send(from, SyncMessage::HandoverAck { id, ok });
    }

    /// An owner acknowledged a handover: once all did, the copy here goes.
    pub(super) fn on_handover_ack<S: LocalStore>(
        &mut self,
        from: &str,
        id: u64,
        ok: bool,
        store: &S,
    ) {
        let Some(h) = self.moved.handovers.get_mut(&id) else {
            return;
        };
        if !ok {
            self.moved.handovers.remove(&id);
            return;
        }
        h.waiting.remove(from);
        if !h.waiting.is_empty() {
            return;
        }
        let Some(h) = self.moved.handovers.remove(&id) else {
            return;
        };
        // Only if nothing changed here meanwhile and no range here took the key back.
        if self.trees.range_of(position(&h.key)).is_none()
            && store.remove_if(&h.key, &h.object).unwrap_or(false)
        {
            self.moved.dropped += 1;
        }
    }

    /// Whether this node may hold moved keys not yet handed over (unknown counts as yes).
    pub(super) fn holding_moved(&self) -> bool {
        self.moved.holding != Some(false) || !self.moved.handovers.is_empty()
    }

    /// Keys handed over to their new owners and deleted here.
    pub fn moved_keys(&self) -> u64 {
        self.moved.dropped
    }
}
