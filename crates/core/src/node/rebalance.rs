//! Adding and removing nodes (Dynamo sections 4.8.2 and 4.9): this node's own staged change.
//!
//! - A node that joins is `joining`: its tokens are in the future ring, not the current one, so
//!   reads still go to the old owners while writes also reach it (pending replicas). Anti-entropy
//!   fills each range it will own from the current owners; it becomes `up` once every such range
//!   was proven equal (Merkle roots) with a current owner since the join began.
//! - A node that leaves is `leaving`: it still owns its ranges (current ring) while the new owners
//!   (future ring) fill them; it becomes `left` once every range it owns was proven equal with
//!   each of its new owners.
//! - Old owners then hand the keys of ranges they no longer replicate to the current owners and
//!   delete them once all acknowledged (`handover`).
//!
//! Transfers are anti-entropy sessions: throttled by its throttle, verified by root equality,
//! and resumable - after a crash a session sends only what still differs.

use super::proofs::Proofs;
use super::trees::Trees;
use crate::membership::Status;
use serde::{Deserialize, Serialize};

/// The change of membership this node is making.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Change {
    /// None in progress (shown as an empty string).
    #[default]
    #[serde(rename = "")]
    None,
    /// Joining: filling the ranges it will own.
    Joining,
    /// Leaving: handing the ranges it owns to their new owners.
    Leaving,
}

/// How far this node's own change is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// The change in progress, if any.
    pub change: Change,
    /// Ranges that must move.
    pub ranges: usize,
    /// Of those, ranges confirmed (roots proven equal with the other side).
    pub confirmed: usize,
    /// Monotonic ms since the change began here.
    pub elapsed_ms: u64,
}

/// What the rebalancer asks for after a look at the proofs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Nothing (no change in progress, or trees still building).
    Wait,
    /// Some range is not confirmed yet: keep the exchange comparing.
    KeepComparing,
    /// Every range is confirmed: switch to this status.
    Done(Status),
}

/// The driver of this node's own join or leave.
#[derive(Debug, Default)]
pub struct Rebalance {
    /// When the change in progress began here (monotonic ms).
    since: Option<u64>,
    progress: Transfer,
}

impl Rebalance {
    /// How far the change is.
    pub fn progress(&self) -> &Transfer {
        &self.progress
    }

    /// Looks at this node's status, its trees and the proofs the exchange holds; says what to
    /// do next.
    pub fn tick(
        &mut self,
        now: u64,
        me: &str,
        status: Status,
        trees: &Trees,
        proofs: &Proofs,
    ) -> Step {
        let change = match status {
            Status::Joining => Change::Joining,
            Status::Leaving => Change::Leaving,
            _ => {
                self.since = None;
                self.progress = Transfer::default();
                return Step::Wait;
            }
        };
        let since = *self.since.get_or_insert(now);
        let proven = |range, peer: &str| proofs.synced(range, peer).is_some_and(|s| s.at >= since);
        let (mut ranges, mut confirmed) = (0, 0);
        for (range, owners) in trees.owners() {
            let now_owner = owners.current.iter().any(|p| p == me);
            let later_owner = owners.future.iter().any(|p| p == me);
            let done = match change {
                // A range it will own: equal with one current owner (or no owner to ask).
                Change::Joining if later_owner && !now_owner => {
                    owners.current.is_empty() || owners.current.iter().any(|p| proven(*range, p))
                }
                // A range it owns: equal with each new owner.
                Change::Leaving if now_owner => owners
                    .future
                    .iter()
                    .filter(|f| !owners.current.contains(f))
                    .all(|f| proven(*range, f)),
                _ => continue,
            };
            ranges += 1;
            confirmed += usize::from(done);
        }
        self.progress = Transfer {
            change,
            ranges,
            confirmed,
            elapsed_ms: now - since,
        };
        if trees.owners().is_empty() || trees.building() {
            return Step::Wait;
        }
        if confirmed == ranges {
            return Step::Done(match change {
                Change::Joining => Status::Up,
                _ => Status::Left,
            });
        }
        // Keep comparing until every range is confirmed.
        Step::KeepComparing
    }
}
