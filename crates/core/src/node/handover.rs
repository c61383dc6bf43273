//! Moved data: a background worker ([`super::worker::Worker`]) with its own message family
//! ([`HandoverMessage`]). Keys this node holds in ranges it no longer replicates (after a join
//! took them over, or after this node's ranges moved) go to the range's current owners, and are
//! deleted here only once every current owner acknowledged merging them. So an old owner drops
//! a range only after the new owner confirmed it, and no acknowledged write is lost in a move.
//!
//! Whether this node may hold such keys (unknown counts as yes) goes into the node's
//! [`super::proofs::Proofs`]: no tombstone is collected anywhere while a node may, since such a
//! key could be an old value a delete superseded.

use super::replica::merge_from_peer;
use super::worker::{Ctx, Worker};
use crate::message::HandoverMessage;
use crate::ring::position;
use crate::store::LocalStore;
use crate::version::Object;
use std::collections::{BTreeMap, BTreeSet};

/// Keys looked at per tick.
const KEYS_PER_TICK: usize = 200;
/// Handovers waiting for acknowledgements at most.
const MAX_IN_FLIGHT: usize = 256;

/// The worker's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HandoverConfig {
    /// Replicas per key.
    pub n: usize,
    /// How long a handover waits for its acknowledgements, ms.
    pub timeout_ms: u64,
    /// Largest value taken from a peer.
    pub max_value_bytes: usize,
}

/// The worker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct HandoverStats {
    /// Keys handed over and deleted here.
    pub dropped: u64,
    /// Objects sent to their owners.
    pub objects_sent: u64,
    /// Bytes of those objects.
    pub bytes_sent: u64,
    /// Keys whose copy here changed by a merge from an old owner.
    pub keys_merged: u64,
}

/// One key handed over, waiting for its owners.
#[derive(Debug)]
struct Offer {
    key: Vec<u8>,
    object: Object,
    waiting: BTreeSet<String>,
    deadline: u64,
}

/// The moved-data worker of one node.
#[derive(Debug)]
pub struct Handover {
    config: HandoverConfig,
    /// The spans of ranges not replicated here, and where the scan is in them.
    scan: Vec<(u64, u64)>,
    after: Option<Vec<u8>>,
    next_pass: u64,
    started: Option<u64>,
    offers: BTreeMap<u64, Offer>,
    next_id: u64,
    /// Whether this node may hold keys of ranges it does not replicate: true until a full pass
    /// found none.
    holding: Option<bool>,
    found_in_pass: bool,
    /// The shape of the trees the last pass looked at (ranges changing hands make `holding`
    /// unknown).
    shape: u64,
    stats: HandoverStats,
}

impl Handover {
    /// A worker with nothing handed over yet.
    pub fn new(config: HandoverConfig) -> Self {
        Self {
            config,
            scan: Vec::new(),
            after: None,
            next_pass: 0,
            started: None,
            offers: BTreeMap::new(),
            next_id: 1,
            holding: None,
            found_in_pass: false,
            shape: 0,
            stats: HandoverStats::default(),
        }
    }

    /// Numbers this run's handovers from `first` on (see [`crate::node::Node::new`]).
    pub fn start_ids_at(&mut self, first: u64) {
        self.next_id = first;
    }

    /// The counters.
    pub fn stats(&self) -> HandoverStats {
        self.stats
    }

    /// Whether this node may hold moved keys not yet handed over (unknown counts as yes).
    pub fn holding(&self) -> bool {
        self.holding != Some(false) || !self.offers.is_empty()
    }

    /// Begins a pass over the ranges not replicated here, when one is due and the view is
    /// settled; returns whether a pass runs.
    fn begin_pass<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>) -> bool {
        let now = ctx.now.mono;
        let rings = ctx.rings;
        // Only with a settled view: every member of the ring reachable, and not in the first
        // seconds after start, when the ring may still lack members this node owns with.
        let settled = rings.all.nodes().iter().all(|n| (ctx.is_up)(n));
        let first = *self.started.get_or_insert(now);
        if now < self.next_pass || now < first + 3_000 || !settled || rings.all.is_empty() {
            return false;
        }
        // A new pass (normally empty: a seek each).
        self.next_pass = now + 2_000;
        self.found_in_pass = false;
        let trees = &*ctx.trees;
        self.scan = rings
            .all
            .ranges()
            .into_iter()
            .filter(|r| trees.get(r).is_none())
            .flat_map(|r| r.spans())
            .collect();
        self.after = None;
        if self.scan.is_empty() {
            // This node replicates every range: it holds no moved key.
            self.holding = Some(false);
        }
        !self.scan.is_empty()
    }

    /// Offers `key` to every current owner, all reachable.
    fn offer<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>, key: Vec<u8>, object: Object) {
        if self.offers.values().any(|h| h.key == key) {
            return;
        }
        let owners: BTreeSet<String> = ctx
            .rings
            .current
            .walk(position(&key), self.config.n)
            .into_iter()
            .map(str::to_owned)
            .collect();
        // Every current owner must be reachable: the copy goes only when all of them have it.
        if owners.is_empty() || !owners.iter().all(|o| (ctx.is_up)(o)) {
            return;
        }
        let id = self.next_id;
        self.next_id += 1;
        for o in &owners {
            self.stats.objects_sent += 1;
            self.stats.bytes_sent += (object.size_bytes() + key.len()) as u64;
            ctx.out.send(
                o,
                HandoverMessage::Offer {
                    id,
                    key: key.clone(),
                    object: object.clone(),
                },
            );
        }
        self.offers.insert(
            id,
            Offer {
                key,
                object,
                waiting: owners,
                deadline: ctx.now.mono + self.config.timeout_ms,
            },
        );
    }

    /// A message of the handover family from `from`.
    pub fn on_message<S: LocalStore>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: &str,
        message: HandoverMessage,
    ) {
        match message {
            HandoverMessage::Offer { id, key, object } => self.on_offer(ctx, from, id, key, object),
            HandoverMessage::Ack { id, ok } => self.on_ack(ctx, from, id, ok),
        }
        ctx.proofs.set_moved_here(self.holding());
        ctx.follow_writes();
    }

    /// A node handed this node a key of a range it no longer replicates.
    fn on_offer<S: LocalStore>(
        &mut self,
        ctx: &mut Ctx<'_, S>,
        from: &str,
        id: u64,
        key: Vec<u8>,
        object: Object,
    ) {
        let max = self.config.max_value_bytes;
        let merged = match ctx.trees.range_of(position(&key)) {
            None => Ok(None),
            Some(range) => merge_from_peer(ctx.store, range, &key, &object, max),
        };
        let ok = match merged {
            Ok(Some((_, changed))) => {
                self.stats.keys_merged += u64::from(changed);
                true
            }
            Ok(None) => false,
            Err(e) => {
                ctx.errors
                    .record("moved-data handover", "merging a handed-over key", &e);
                false
            }
        };
        ctx.out.send(from, HandoverMessage::Ack { id, ok });
    }

    /// An owner acknowledged a handover: once all did, the copy here goes.
    fn on_ack<S: LocalStore>(&mut self, ctx: &mut Ctx<'_, S>, from: &str, id: u64, ok: bool) {
        let Some(h) = self.offers.get_mut(&id) else {
            return;
        };
        if !ok {
            self.offers.remove(&id);
            return;
        }
        h.waiting.remove(from);
        if !h.waiting.is_empty() {
            return;
        }
        let Some(h) = self.offers.remove(&id) else {
            return;
        };
        // Only if nothing changed here meanwhile and no range here took the key back.
        if ctx.trees.range_of(position(&h.key)).is_some() {
            return;
        }
        match ctx.store.remove_if(&h.key, &h.object) {
            Ok(true) => self.stats.dropped += 1,
            Ok(false) => {}
            Err(e) => ctx
                .errors
                .record("moved-data handover", "deleting a handed-over key", &e),
        }
    }
}

impl<S: LocalStore> Worker<S> for Handover {
    /// Expire handovers, then scan the ranges this node does not replicate for keys and hand
    /// them to their current owners; tell the proofs whether such keys may be held here.
    fn tick(&mut self, ctx: &mut Ctx<'_, S>) {
        let now = ctx.now.mono;
        if ctx.trees.shape() != self.shape {
            // Ranges changed hands: whether moved keys are held here is unknown again.
            self.shape = ctx.trees.shape();
            self.holding = None;
        }
        self.offers.retain(|_, h| h.deadline > now);
        if self.scan.is_empty() && !self.begin_pass(ctx) {
            ctx.proofs.set_moved_here(self.holding());
            return;
        }
        // Keys read count against the shared background budget.
        let mut budget = KEYS_PER_TICK.min(ctx.budget.budget(0));
        while budget > 0 && self.offers.len() < MAX_IN_FLIGHT {
            let Some(&(lo, hi)) = self.scan.first() else {
                break;
            };
            let limit = budget.min(MAX_IN_FLIGHT - self.offers.len());
            let page = match ctx.store.scan(lo, hi, self.after.as_deref(), limit) {
                Ok(page) => page,
                Err(e) => {
                    ctx.errors
                        .record("moved-data handover", "scanning a moved range", &e);
                    break;
                }
            };
            budget = budget.saturating_sub(page.len().max(1));
            ctx.budget.spend_many(page.len().max(1));
            self.found_in_pass |= !page.is_empty();
            if page.len() < limit {
                self.scan.remove(0);
                self.after = None;
                if self.scan.is_empty() {
                    self.holding = Some(self.found_in_pass);
                }
            } else {
                self.after = page.last().map(|(k, _)| k.clone());
            }
            for (key, object) in page {
                self.offer(ctx, key, object);
            }
        }
        ctx.proofs.set_moved_here(self.holding());
    }
}
