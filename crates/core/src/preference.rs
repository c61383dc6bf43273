//! The preference list of a key: which nodes hold it, and which stand in for those that are down
//! (Dynamo sections 4.3 and 4.6).
//!
//! A pure function of the ring, the key, N and an opinion of who is up, like riak_core's
//! `riak_core_apl`. The coordinator, the admin endpoint and the partition-aware client all use
//! [`preference_list`], so they cannot disagree about it.

use crate::ring::{Ring, position};
use serde::{Deserialize, Serialize};

/// Why a node is in a key's preference list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "role")]
pub enum Role {
    /// One of the key's N primaries.
    Primary,
    /// The next reachable node past the primaries, standing in for a down primary; it keeps
    /// the replica with a hint naming that primary (sloppy quorum).
    Fallback {
        /// The primary it stands in for.
        fallback_for: String,
    },
}

/// One node a request for the key goes to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    /// The node.
    pub node: String,
    /// Primary or fallback.
    #[serde(flatten)]
    pub role: Role,
}

impl Target {
    /// The primary this target stands in for, when it is a fallback.
    pub fn hint(&self) -> Option<&str> {
        match &self.role {
            Role::Primary => None,
            Role::Fallback { fallback_for } => Some(fallback_for),
        }
    }
}

/// The preference list of one key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct PreferenceList {
    /// The key's N primaries in ring order, up or not (fewer when the ring has fewer nodes).
    pub primaries: Vec<String>,
    /// Where requests go: every reachable primary in ring order, then one fallback per
    /// unreachable primary while reachable nodes remain.
    pub targets: Vec<Target>,
    /// Reachable nodes that will be primaries once the joins and leaves in progress end and are
    /// not targets now: writes go to them too, without counting toward W ([`with_pending`]).
    #[serde(default)]
    pub pending: Vec<String>,
}

/// Adds to `pref` the pending replicas of `key`: its primaries in the `future` ring (see
/// [`crate::membership::Rings`]) that are reachable and not already targets.
pub fn with_pending(
    mut pref: PreferenceList,
    future: &Ring,
    key: &[u8],
    n: usize,
    is_up: impl Fn(&str) -> bool,
) -> PreferenceList {
    pref.pending = future
        .walk(position(key), n)
        .into_iter()
        .filter(|p| is_up(p) && !pref.targets.iter().any(|t| t.node == *p))
        .map(str::to_owned)
        .collect();
    pref
}

impl PreferenceList {
    /// The primaries that are not reachable.
    pub fn down_primaries(&self) -> Vec<String> {
        self.primaries
            .iter()
            .filter(|p| !self.targets.iter().any(|t| t.node == **p))
            .cloned()
            .collect()
    }

    /// Number of reachable primaries.
    pub fn up_primaries(&self) -> usize {
        self.targets
            .iter()
            .filter(|t| t.role == Role::Primary)
            .count()
    }

    /// The first reachable primary: where a node that is no primary forwards a request.
    pub fn coordinator(&self) -> Option<&str> {
        self.targets
            .iter()
            .find(|t| t.role == Role::Primary)
            .map(|t| t.node.as_str())
    }

    /// Whether a fallback stands in for a primary.
    pub fn sloppy(&self) -> bool {
        self.targets.iter().any(|t| t.role != Role::Primary)
    }
}

/// The preference list of `key`: its `n` primaries walking clockwise from its position, and the
/// targets - each primary for which `is_up` holds, then for each one that is down the next
/// node clockwise past the primaries for which `is_up` holds, tagged with the primary it stands
/// in for.
pub fn preference_list(
    ring: &Ring,
    key: &[u8],
    n: usize,
    is_up: impl Fn(&str) -> bool,
) -> PreferenceList {
    let pos = position(key);
    let primaries: Vec<String> = ring.walk(pos, n).into_iter().map(str::to_owned).collect();
    let mut targets: Vec<Target> = Vec::with_capacity(primaries.len());
    let mut down = Vec::new();
    for p in &primaries {
        if is_up(p) {
            targets.push(Target {
                node: p.clone(),
                role: Role::Primary,
            });
        } else {
            down.push(p.clone());
        }
    }
    if !down.is_empty() {
        let spares = ring
            .walk(pos, ring.nodes().len())
            .into_iter()
            .skip(primaries.len())
            .filter(|x| is_up(x));
        for (owner, fallback) in down.into_iter().zip(spares) {
            targets.push(Target {
                node: fallback.to_owned(),
                role: Role::Fallback {
                    fallback_for: owner,
                },
            });
        }
    }
    PreferenceList {
        primaries,
        targets,
        pending: Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ring::hashed_tokens;
    use proptest::prelude::*;
    use std::collections::{BTreeMap, BTreeSet};

    fn ring(nodes: usize) -> Ring {
        let m: BTreeMap<String, Vec<u64>> = (0..nodes)
            .map(|i| (format!("n{i}"), hashed_tokens(&format!("n{i}"), 8)))
            .collect();
        Ring::new(&m).unwrap()
    }

    #[test]
    fn all_up_means_primaries_only() {
        let r = ring(5);
        let p = preference_list(&r, b"k", 3, |_| true);
        assert_eq!(p.primaries.len(), 3);
        assert_eq!(
            p.targets.iter().map(|t| t.node.clone()).collect::<Vec<_>>(),
            p.primaries
        );
        assert!(!p.sloppy());
        assert_eq!(p.coordinator(), Some(p.primaries[0].as_str()));
    }

    #[test]
    fn a_down_primary_gets_the_next_node_as_fallback() {
        let r = ring(5);
        let all = preference_list(&r, b"k", 3, |_| true);
        let down = all.primaries[0].clone();
        let p = preference_list(&r, b"k", 3, |x| x != down);
        assert_eq!(p.primaries, all.primaries);
        assert_eq!(p.down_primaries(), vec![down.clone()]);
        assert_eq!(p.up_primaries(), 2);
        assert_eq!(p.coordinator(), Some(all.primaries[1].as_str()));
        let fb = p.targets.last().unwrap();
        assert_eq!(fb.hint(), Some(down.as_str()));
        assert!(!p.primaries.contains(&fb.node));
        let next = r.walk(position(b"k"), 4)[3];
        assert_eq!(fb.node, next);
    }

    proptest! {
        #[test]
        fn targets_are_distinct_up_nodes_one_per_primary(nodes in 1usize..9, n in 1usize..5, down in proptest::collection::btree_set(0usize..9, 0..5), key: Vec<u8>) {
            let r = ring(nodes);
            let down: BTreeSet<String> = down.into_iter().map(|i| format!("n{i}")).collect();
            let p = preference_list(&r, &key, n, |x| !down.contains(x));
            let up_total = (0..nodes).filter(|i| !down.contains(&format!("n{i}"))).count();
            prop_assert_eq!(p.primaries.len(), n.min(nodes));
            prop_assert!(p.targets.len() <= p.primaries.len());
            prop_assert_eq!(p.targets.len(), p.primaries.len().min(up_total));
            let distinct: BTreeSet<&String> = p.targets.iter().map(|t| &t.node).collect();
            prop_assert_eq!(distinct.len(), p.targets.len());
            for t in &p.targets {
                prop_assert!(!down.contains(&t.node));
                match t.hint() {
                    None => prop_assert!(p.primaries.contains(&t.node)),
                    Some(owner) => {
                        prop_assert!(down.contains(owner));
                        prop_assert!(!p.primaries.contains(&t.node));
                    }
                }
            }
        }
    }
}
