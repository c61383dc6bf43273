//! The one shape of every background worker (hinted handoff, the Merkle exchange, tombstone
//! collection, moved-data handover): a struct that owns its own state and, at every tick, takes a
//! [`Ctx`] - the time, this node's view of the cluster, the background budget and its share, the
//! store and the Merkle trees, the proofs the workers share, and the outbox - instead of having
//! state pushed into it by setters, or handing work back through side fields. (Garage's
//! `Worker` is the model.)
//!
//! Storage errors met by a worker are counted in [`StorageErrors`] (the shell logs them when the
//! count moves); none is dropped.

use super::outbox::Outbox;
use super::proofs::Proofs;
use super::throttle::Throttle;
use super::tracked::Tracked;
use super::trees::Trees;
use crate::clock::Now;
use crate::membership::Rings;
use crate::store::{LocalStore, StoreError};

/// Storage errors the background workers met: how many, and the last.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StorageErrors {
    /// How many so far.
    pub count: u64,
    /// The last one: which worker, doing what, and the error.
    pub last: Option<String>,
}

impl StorageErrors {
    /// Records that `worker`, doing `what`, met `e`.
    pub fn record(&mut self, worker: &str, what: &str, e: &StoreError) {
        self.count += 1;
        self.last = Some(format!("{worker}: {what}: {e}"));
    }
}

/// What a background worker gets at each tick.
pub struct Ctx<'a, S> {
    /// Both clocks.
    pub now: Now,
    /// This node's id.
    pub me: &'a str,
    /// The current, future and all-tokens rings.
    pub rings: &'a Rings,
    /// Whether a node is reachable from here.
    pub is_up: &'a dyn Fn(&str) -> bool,
    /// The scheduler's share of the background budget (0..=1): fewer sessions at once while
    /// foreground latency is high.
    pub share: f64,
    /// The shared background budget every worker draws from.
    pub budget: &'a mut Throttle,
    /// The store, journaled.
    pub store: &'a Tracked<S>,
    /// The Merkle trees of the ranges this node replicates.
    pub trees: &'a mut Trees,
    /// What the exchange proved, and what the workers tell each other.
    pub proofs: &'a mut Proofs,
    /// Storage errors met.
    pub errors: &'a mut StorageErrors,
    /// Where messages go.
    pub out: &'a mut Outbox,
}

impl<S: LocalStore> Ctx<'_, S> {
    /// Brings the trees up to date with the store's writes so far (a worker that wrote calls it
    /// before the next one reads the trees).
    pub fn follow_writes(&mut self) {
        for c in self.store.take_changes() {
            self.trees.apply(&c);
        }
    }
}

/// A background worker: it owns its state and does a bounded step of work at each tick.
pub trait Worker<S: LocalStore> {
    /// Time passed: do what is due, within the budget.
    fn tick(&mut self, ctx: &mut Ctx<'_, S>);
}
