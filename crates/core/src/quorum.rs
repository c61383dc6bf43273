//! Counting replies toward a quorum (Dynamo section 4.5: a get answers after R replies, a put
//! after W acknowledgements).

use crate::message::{OpError, QuorumKind};
use std::collections::BTreeSet;

/// Where a request stands against its quorum.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Enough replicas answered: answer the client with success.
    Reached,
    /// The quorum can no longer be reached, or the deadline passed: answer with an error.
    Failed,
    /// Keep waiting.
    Waiting,
}

/// The replies of one request fanned out to a set of replicas.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tally {
    asked: Vec<String>,
    ok: BTreeSet<String>,
    failed: BTreeSet<String>,
    needed: usize,
    primaries: BTreeSet<String>,
    primary_needed: usize,
}

impl Tally {
    /// A tally over `asked` replicas, succeeding at `needed` successes.
    pub fn new(asked: Vec<String>, needed: usize) -> Self {
        Self {
            asked,
            ok: BTreeSet::new(),
            failed: BTreeSet::new(),
            needed,
            primaries: BTreeSet::new(),
            primary_needed: 0,
        }
    }

    /// Also requires `primary_needed` of the successes to come from `primaries` (Riak's PR/PW).
    pub fn with_primaries(
        mut self,
        primaries: impl IntoIterator<Item = String>,
        primary_needed: usize,
    ) -> Self {
        self.primaries = primaries.into_iter().collect();
        self.primary_needed = primary_needed;
        self
    }

    /// Successes from primaries.
    pub fn primary_successes(&self) -> usize {
        self.ok
            .iter()
            .filter(|n| self.primaries.contains(*n))
            .count()
    }

    /// Primary successes needed.
    pub fn primary_needed(&self) -> usize {
        self.primary_needed
    }

    fn pending(&self, node: &str) -> bool {
        self.asked.iter().any(|a| a == node)
            && !self.ok.contains(node)
            && !self.failed.contains(node)
    }

    /// Records a success from `node`; ignored unless `node` was asked and has not answered.
    pub fn succeed(&mut self, node: &str) -> bool {
        self.pending(node) && self.ok.insert(node.to_owned())
    }

    /// Records a failure of `node`; ignored unless `node` was asked and has not answered.
    pub fn fail(&mut self, node: &str) -> bool {
        self.pending(node) && self.failed.insert(node.to_owned())
    }

    /// Enough successes (and enough from primaries).
    pub fn reached(&self) -> bool {
        self.ok.len() >= self.needed && self.primary_successes() >= self.primary_needed
    }

    /// Not enough replicas (or primaries) left to reach the quorum.
    pub fn impossible(&self) -> bool {
        let primaries_left = self
            .asked
            .iter()
            .filter(|a| self.primaries.contains(*a) && !self.failed.contains(*a))
            .count();
        self.asked.len() - self.failed.len() < self.needed || primaries_left < self.primary_needed
    }

    /// Everyone asked has answered.
    pub fn complete(&self) -> bool {
        self.ok.len() + self.failed.len() >= self.asked.len()
    }

    /// Replicas asked.
    pub fn asked(&self) -> &[String] {
        &self.asked
    }

    /// Number of successes.
    pub fn successes(&self) -> usize {
        self.ok.len()
    }

    /// Replicas that failed or have not answered yet.
    pub fn missing(&self) -> Vec<String> {
        self.asked
            .iter()
            .filter(|a| !self.ok.contains(*a))
            .cloned()
            .collect()
    }

    /// Replicas asked that have not answered at all.
    pub fn pending_nodes(&self) -> Vec<String> {
        self.asked
            .iter()
            .filter(|a| self.pending(a))
            .cloned()
            .collect()
    }

    /// Successes needed.
    pub fn needed(&self) -> usize {
        self.needed
    }

    /// The one verdict for reads and writes alike: reached, failed (impossible, or `expired`),
    /// or still waiting.
    pub fn verdict(&self, expired: bool) -> Verdict {
        if self.reached() {
            Verdict::Reached
        } else if self.impossible() || expired {
            Verdict::Failed
        } else {
            Verdict::Waiting
        }
    }

    /// The error for a quorum this tally did not reach; `written` when the write is stored on
    /// at least one replica.
    pub fn unavailable(&self, kind: QuorumKind, written: bool) -> OpError {
        OpError::Unavailable {
            kind,
            needed: self.needed as u8,
            answered: self.ok.len() as u8,
            asked: self.asked.clone(),
            failed: self.missing(),
            written,
            sent: true,
            primary_needed: self.primary_needed as u8,
            primary_answered: self.primary_successes() as u8,
        }
    }
}

/// What a coordinator that sends nothing knows: the replicas it would ask, and which of them
/// are reachable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reachability {
    /// The replicas of the key (its primaries).
    pub asked: Vec<String>,
    /// Those that are unreachable.
    pub failed: Vec<String>,
    /// Reachable targets, fallbacks included.
    pub reachable: usize,
    /// Reachable primaries.
    pub primaries_reachable: usize,
}

impl Reachability {
    /// The error for a request refused before sending because fewer than `needed` replicas
    /// (or `primary_needed` primaries) are reachable.
    pub fn unavailable(&self, kind: QuorumKind, needed: usize, primary_needed: usize) -> OpError {
        OpError::Unavailable {
            kind,
            needed: needed as u8,
            answered: self.reachable as u8,
            asked: self.asked.clone(),
            failed: self.failed.clone(),
            written: false,
            sent: false,
            primary_needed: primary_needed as u8,
            primary_answered: self.primaries_reachable as u8,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t() -> Tally {
        Tally::new(vec!["a".into(), "b".into(), "c".into()], 2)
    }

    #[test]
    fn reaches_at_needed_and_counts_each_node_once() {
        let mut q = t();
        assert!(q.succeed("a"));
        assert!(!q.succeed("a"), "duplicate reply ignored");
        assert!(!q.succeed("z"), "not asked");
        assert!(!q.reached());
        assert!(q.succeed("b"));
        assert!(q.reached() && !q.complete());
        assert!(q.fail("c"));
        assert!(q.complete());
        assert_eq!(q.missing(), vec!["c".to_owned()]);
    }

    #[test]
    fn primary_quorum_needs_primaries() {
        let mut q = Tally::new(vec!["a".into(), "b".into(), "f".into()], 2)
            .with_primaries(["a".to_owned(), "b".to_owned()], 2);
        q.succeed("a");
        q.succeed("f");
        assert!(!q.reached(), "two acks, but only one from a primary");
        assert_eq!(q.primary_successes(), 1);
        q.fail("b");
        assert!(q.impossible());
    }

    #[test]
    fn impossible_when_too_many_fail() {
        let mut q = t();
        q.fail("a");
        assert!(!q.impossible());
        q.fail("b");
        assert!(q.impossible());
        assert!(!q.succeed("b"), "a failed node cannot succeed later");
    }
}
