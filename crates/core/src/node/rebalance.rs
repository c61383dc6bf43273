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
//!   delete them once all acknowledged (`anti_entropy::moved`).
//!
//! Transfers are anti-entropy sessions: throttled by its throttle, verified by root equality,
//! and resumable - after a crash a session sends only what still differs.

use super::anti_entropy::AntiEntropy;
use crate::membership::Status;
use serde::{Deserialize, Serialize};

/// How far this node's own change is.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Transfer {
    /// `joining`, `leaving`, or empty when no change is in progress.
    pub change: String,
    /// Ranges that must move.
    pub ranges: usize,
    /// Of those, ranges confirmed (roots proven equal with the other side).
    pub confirmed: usize,
    /// Monotonic ms since the change began here.
    pub elapsed_ms: u64,
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

    /// Looks at this node's status and the proofs anti-entropy holds; returns the status to
    /// switch to when the change is complete.
    pub fn tick(
        &mut self,
        now: u64,
        me: &str,
        status: Status,
        ae: &mut AntiEntropy,
    ) -> Option<Status> {
        if !matches!(status, Status::Joining | Status::Leaving) {
            self.since = None;
            self.progress = Transfer::default();
            return None;
        }
        let since = *self.since.get_or_insert(now);
        let proven = |ae: &AntiEntropy, range, peer: &str| {
            ae.synced(range, peer).is_some_and(|s| s.at >= since)
        };
        let (mut ranges, mut confirmed) = (0, 0);
        for (range, owners) in ae.trees_ref().owners() {
            let now_owner = owners.current.iter().any(|p| p == me);
            let later_owner = owners.future.iter().any(|p| p == me);
            let done = match status {
                // A range it will own: equal with one current owner (or no owner to ask).
                Status::Joining if later_owner && !now_owner => {
                    owners.current.is_empty()
                        || owners.current.iter().any(|p| proven(ae, *range, p))
                }
                // A range it owns: equal with each new owner.
                Status::Leaving if now_owner => owners
                    .future
                    .iter()
                    .filter(|f| !owners.current.contains(f))
                    .all(|f| proven(ae, *range, f)),
                _ => continue,
            };
            ranges += 1;
            confirmed += usize::from(done);
        }
        self.progress = Transfer {
            change: status.as_str().to_owned(),
            ranges,
            confirmed,
            elapsed_ms: now - since,
        };
        if ae.trees_ref().owners().is_empty() || ae.building() {
            return None;
        }
        if confirmed == ranges {
            return Some(match status {
                Status::Joining => Status::Up,
                _ => Status::Left,
            });
        }
        // Keep comparing until every range is confirmed.
        ae.keep_comparing();
        None
    }
}
