//! Cluster members: who is in the ring, where they listen, which tokens they own.
//!
//! For now membership only grows: a node learns members from its seeds and from every peer it
//! exchanges member lists with, and a record with a higher `generation` (a restart, perhaps on a
//! new address) replaces an older one. Gossip with statuses and a persisted history replaces this
//! in a later change.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What a node announces about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// The operator-chosen node id (unique in the cluster).
    pub id: String,
    /// Increases at every start of the node (its start time in ms), so newer records win.
    pub generation: u64,
    /// Address of the internal RPC listener.
    pub peer_addr: String,
    /// Address of the HTTP API.
    pub http_addr: String,
    /// The node's tokens on the ring.
    pub tokens: Vec<u64>,
}

/// Longest node id accepted.
pub const MAX_NODE_ID_BYTES: usize = 128;
/// Most tokens a member may claim.
pub const MAX_TOKENS: usize = 4096;

impl Member {
    /// Checks a record received from a peer.
    pub fn validate(&self) -> Result<(), String> {
        if self.id.is_empty() || self.id.len() > MAX_NODE_ID_BYTES {
            return Err(format!("node id must be 1 to {MAX_NODE_ID_BYTES} bytes"));
        }
        if self.tokens.is_empty() || self.tokens.len() > MAX_TOKENS {
            return Err(format!("a member needs 1 to {MAX_TOKENS} tokens"));
        }
        if self.peer_addr.len() > 256 || self.http_addr.len() > 256 {
            return Err("address too long".into());
        }
        Ok(())
    }
}

/// Merges `incoming` into `members`: unknown ids are added, higher generations replace lower
/// ones, equal generations keep the larger record (a deterministic tie-break). Returns true when
/// something changed.
pub fn merge_member(members: &mut BTreeMap<String, Member>, incoming: &Member) -> bool {
    if supersedes(members.get(&incoming.id), incoming) {
        members.insert(incoming.id.clone(), incoming.clone());
        true
    } else {
        false
    }
}

/// True when `incoming` would replace `known` (or fill its absence) under [`merge_member`].
pub fn supersedes(known: Option<&Member>, incoming: &Member) -> bool {
    known.is_none_or(|k| (k.generation, known_key(k)) < (incoming.generation, known_key(incoming)))
}

fn known_key(m: &Member) -> (&str, &str, &[u64]) {
    (&m.peer_addr, &m.http_addr, &m.tokens)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(id: &str, generation: u64, addr: &str) -> Member {
        Member {
            id: id.into(),
            generation,
            peer_addr: addr.into(),
            http_addr: addr.into(),
            tokens: vec![1],
        }
    }

    #[test]
    fn newer_generation_wins_in_any_order() {
        let (old, new) = (m("a", 1, "x"), m("a", 2, "y"));
        let mut one = BTreeMap::new();
        assert!(merge_member(&mut one, &old));
        assert!(merge_member(&mut one, &new));
        assert!(!merge_member(&mut one, &old));
        let mut two = BTreeMap::new();
        merge_member(&mut two, &new);
        merge_member(&mut two, &old);
        assert_eq!(one, two);
        assert_eq!(one["a"].peer_addr, "y");
    }

    #[test]
    fn validate_refuses_bad_records() {
        assert!(m("a", 1, "x").validate().is_ok());
        assert!(m("", 1, "x").validate().is_err());
        let mut no_tokens = m("a", 1, "x");
        no_tokens.tokens.clear();
        assert!(no_tokens.validate().is_err());
    }
}
