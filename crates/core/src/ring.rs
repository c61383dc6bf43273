//! The hash ring: where a key lives (Dynamo section 4.2).
//!
//! Every key hashes to a 64-bit *ring position* with XXH3-64 (seed 0) of the raw key bytes.
//! Every physical node owns several *tokens* (virtual nodes) on the same circle and is
//! responsible for the arc between the previous token (exclusive) and its own (inclusive), so a
//! key belongs to the first token at or clockwise after its position. The *preference list* of a
//! key is the first N distinct physical nodes met walking clockwise from there; those are its
//! primaries; [`crate::preference`] adds the fallbacks past them.
//!
//! Token placement is a pure function of the node id ([`hashed_tokens`]): every node computes the
//! same ring from the same member list without coordination, and adding a node moves only the
//! arcs its new tokens take. `dynamokv ring-balance` measures how evenly that spreads load
//! against the alternatives (docs/ring.md).

use std::collections::{BTreeMap, BTreeSet};

/// The ring position of a key: XXH3-64 (seed 0) of the key bytes.
///
/// This function is part of the on-disk format and of the wire protocol: changing it moves
/// every key.
pub fn position(key: &[u8]) -> u64 {
    xxhash_rust::xxh3::xxh3_64(key)
}

/// The default number of tokens (virtual nodes) per physical node, chosen from the balance
/// measurements in docs/ring.md.
pub const DEFAULT_VNODES: u16 = 256;

/// The tokens of node `node_id` with `count` virtual nodes: XXH3-64 of
/// `"dynamokv-token" | node_id | 0xFF | i` for `i` in `0..count`, deduplicated and sorted.
pub fn hashed_tokens(node_id: &str, count: u16) -> Vec<u64> {
    let mut tokens: BTreeSet<u64> = BTreeSet::new();
    let mut buf = Vec::with_capacity(node_id.len() + 32);
    let mut i: u32 = 0;
    while tokens.len() < usize::from(count) {
        buf.clear();
        buf.extend_from_slice(b"dynamokv-token");
        buf.extend_from_slice(node_id.as_bytes());
        buf.push(0xFF);
        buf.extend_from_slice(&i.to_be_bytes());
        tokens.insert(xxhash_rust::xxh3::xxh3_64(&buf));
        i += 1;
    }
    tokens.into_iter().collect()
}

/// Tokens for a node joining `ring` (which must not hold it yet), placed so that the ring stays
/// balanced: each token takes from the largest arc of the node with the largest share just what
/// brings that node down to the new mean, until the joining node holds its share (1/(n+1) of the
/// key space) or has used `count` tokens. A small offset derived from `node_id` keeps two nodes
/// joining the same ring at once from choosing the same tokens.
pub fn balanced_tokens(ring: &Ring, node_id: &str, count: u16) -> Vec<u64> {
    if ring.is_empty() || count == 0 {
        return hashed_tokens(node_id, count.max(1));
    }
    let full = 2f64.powi(64);
    let target = 1.0 / (ring.nodes().len() + 1) as f64;
    // Arcs per node, as (length, start, end), and each node's share.
    let mut arcs: BTreeMap<String, Vec<(u128, u64, u64)>> = BTreeMap::new();
    for node in ring.nodes() {
        let mut a: Vec<(u128, u64, u64)> = ring
            .arcs_of(node)
            .into_iter()
            .map(|(s, e)| {
                let len = match e.wrapping_sub(s) {
                    0 => 1u128 << 64,
                    l => u128::from(l),
                };
                (len, s, e)
            })
            .collect();
        a.sort_unstable();
        arcs.insert(node.clone(), a);
    }
    let mut shares: BTreeMap<String, f64> = arcs
        .iter()
        .map(|(n, a)| (n.clone(), a.iter().map(|x| x.0 as f64).sum::<f64>() / full))
        .collect();
    let jitter = xxhash_rust::xxh3::xxh3_64(node_id.as_bytes()) % 4096;
    let mut mine: BTreeSet<u64> = BTreeSet::new();
    let mut have = 0.0;
    while mine.len() < usize::from(count) && have < target * 0.999 {
        let Some((heaviest, share)) = shares
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))
            .map(|(n, s)| (n.clone(), *s))
        else {
            break;
        };
        let Some(a) = arcs.get_mut(&heaviest) else {
            break;
        };
        let Some((len, start, end)) = a.pop() else {
            break;
        };
        // Take what brings the heaviest node to the target, no more than the joiner still
        // needs, and leave part of the arc to its owner.
        // Pieces of at most a 128th of the target, so the joiner's tokens spread over many arcs
        // (and its replicas over many neighbours).
        let piece_max = target / f64::from(count.clamp(1, 128));
        let want = (share - target).min(target - have).min(piece_max).max(0.0) * full;
        if len < 1 << 16 {
            // Too small to split: leave it to its owner.
            if let Some(s) = shares.get_mut(&heaviest) {
                *s -= len as f64 / full;
            }
            continue;
        }
        let take = (want as u128).clamp(1 << 13, len - (1 << 13));
        let token = start
            .wrapping_add(take as u64)
            .wrapping_add(jitter)
            .wrapping_sub(2048);
        let piece = u128::from(token.wrapping_sub(start));
        if !mine.insert(token) {
            continue;
        }
        have += piece as f64 / full;
        if let Some(s) = shares.get_mut(&heaviest) {
            *s -= piece as f64 / full;
        }
        let rest = len - piece;
        let a = arcs.get_mut(&heaviest).expect("the node's arcs");
        let at = a.partition_point(|x| x.0 < rest);
        a.insert(at, (rest, token, end));
    }
    if mine.is_empty() {
        return hashed_tokens(node_id, count.max(1));
    }
    mine.into_iter().collect()
}

/// Why a ring could not be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RingError {
    /// Two nodes claim the same token.
    #[error("token {token} is claimed by both {a} and {b}")]
    TokenClash {
        /// The token.
        token: u64,
        /// One claimant.
        a: String,
        /// The other.
        b: String,
    },
    /// A node has no token.
    #[error("node {0} has no token")]
    NoTokens(String),
}

/// The ring: every node's tokens, sorted, and a version that changes whenever they do.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Ring {
    /// (token, index into `nodes`), sorted by token.
    tokens: Vec<(u64, u32)>,
    /// Node ids, sorted.
    nodes: Vec<String>,
    version: u64,
}

impl Ring {
    /// Builds the ring from each node's tokens.
    pub fn new(members: &BTreeMap<String, Vec<u64>>) -> Result<Ring, RingError> {
        let nodes: Vec<String> = members.keys().cloned().collect();
        let mut tokens = Vec::new();
        for (i, (node, ts)) in members.iter().enumerate() {
            if ts.is_empty() {
                return Err(RingError::NoTokens(node.clone()));
            }
            tokens.extend(ts.iter().map(|t| (*t, i as u32)));
        }
        tokens.sort_unstable();
        for w in tokens.windows(2) {
            if w[0].0 == w[1].0 {
                let (a, b) = (&nodes[w[0].1 as usize], &nodes[w[1].1 as usize]);
                if a != b {
                    return Err(RingError::TokenClash {
                        token: w[0].0,
                        a: a.clone(),
                        b: b.clone(),
                    });
                }
            }
        }
        tokens.dedup();
        let mut h = xxhash_rust::xxh3::Xxh3::new();
        for (node, ts) in members {
            h.update(&(node.len() as u64).to_be_bytes());
            h.update(node.as_bytes());
            h.update(&(ts.len() as u64).to_be_bytes());
            for t in ts {
                h.update(&t.to_be_bytes());
            }
        }
        Ok(Ring {
            tokens,
            nodes,
            version: h.digest(),
        })
    }

    /// A hash of every node and token: two rings are the same exactly when versions agree.
    pub fn version(&self) -> u64 {
        self.version
    }

    /// The node ids, sorted.
    pub fn nodes(&self) -> &[String] {
        &self.nodes
    }

    /// True when the ring has no node.
    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    /// Index into the token list of the token owning `pos`: the first token >= pos, wrapping.
    fn owner_index(&self, pos: u64) -> usize {
        let i = self.tokens.partition_point(|(t, _)| *t < pos);
        if i == self.tokens.len() { 0 } else { i }
    }

    /// The first `n` distinct nodes clockwise from `pos` (fewer when the ring has fewer nodes).
    pub fn walk(&self, pos: u64, n: usize) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::with_capacity(n);
        if self.tokens.is_empty() {
            return out;
        }
        let start = self.owner_index(pos);
        for step in 0..self.tokens.len() {
            if out.len() >= n {
                break;
            }
            let (_, node) = self.tokens[(start + step) % self.tokens.len()];
            let name = self.nodes[node as usize].as_str();
            if !out.contains(&name) {
                out.push(name);
            }
        }
        out
    }

    /// Each node's share of the key space (fraction of the 2^64 positions it owns as first
    /// replica), by node id.
    pub fn shares(&self) -> BTreeMap<String, f64> {
        let mut owned: Vec<u128> = vec![0; self.nodes.len()];
        let n = self.tokens.len();
        for i in 0..n {
            let (t, node) = self.tokens[i];
            let prev = if i == 0 {
                self.tokens[n - 1].0
            } else {
                self.tokens[i - 1].0
            };
            // Arc (prev, t]; with one token the arc is the whole ring.
            let arc = if n == 1 {
                1u128 << 64
            } else {
                u128::from(t.wrapping_sub(prev))
            };
            owned[node as usize] += arc;
        }
        self.nodes
            .iter()
            .zip(owned)
            .map(|(id, o)| (id.clone(), o as f64 / 2f64.powi(64)))
            .collect()
    }

    /// Every range of the ring, one per token: from the previous token (exclusive) to the token
    /// (inclusive); with one token, the whole ring. In token order.
    pub fn ranges(&self) -> Vec<crate::merkle::Range> {
        let n = self.tokens.len();
        (0..n)
            .map(|i| crate::merkle::Range {
                start: self.tokens[(i + n - 1) % n].0,
                end: self.tokens[i].0,
            })
            .collect()
    }

    /// The arcs `(start exclusive, end inclusive)` whose first replica is `node`.
    pub fn arcs_of(&self, node: &str) -> Vec<(u64, u64)> {
        let Some(idx) = self.nodes.iter().position(|n| n == node) else {
            return Vec::new();
        };
        let n = self.tokens.len();
        (0..n)
            .filter(|i| self.tokens[*i].1 as usize == idx)
            .map(|i| {
                let prev = if i == 0 {
                    self.tokens[n - 1].0
                } else {
                    self.tokens[i - 1].0
                };
                (prev, self.tokens[i].0)
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balanced_tokens_give_a_joiner_its_share_and_keep_the_ring_even() {
        let mut m: BTreeMap<String, Vec<u64>> = (0..5)
            .map(|i| (format!("n{i}"), hashed_tokens(&format!("n{i}"), 256)))
            .collect();
        let ring = Ring::new(&m).unwrap();
        let before = ring.shares();
        let spread = |s: &BTreeMap<String, f64>| {
            let mean = 1.0 / s.len() as f64;
            let max = s.values().cloned().fold(f64::MIN, f64::max) / mean;
            let min = s.values().cloned().fold(f64::MAX, f64::min) / mean;
            (max, min)
        };
        assert!(
            spread(&before).0 > 1.05,
            "hashed tokens are uneven to begin with"
        );
        let a = balanced_tokens(&ring, "joiner", 256);
        let b = balanced_tokens(&ring, "other", 256);
        assert!(a.len() <= 256 && !a.is_empty());
        assert_ne!(a, b, "two joiners of one ring do not pick the same tokens");
        m.insert("joiner".into(), a);
        let after = Ring::new(&m).unwrap().shares();
        assert!(
            (after["joiner"] - 1.0 / 6.0).abs() < 0.002,
            "{}",
            after["joiner"]
        );
        let (max, min) = spread(&after);
        assert!(max <= 1.05 && min >= 0.95, "{max} {min}");
    }
    use proptest::prelude::*;

    fn ring(nodes: usize, vnodes: u16) -> Ring {
        let members = (0..nodes)
            .map(|i| {
                let id = format!("n{i}");
                let t = hashed_tokens(&id, vnodes);
                (id, t)
            })
            .collect();
        Ring::new(&members).unwrap()
    }

    #[test]
    fn position_is_stable() {
        // Known XXH3-64 values: a change here is a change of the on-disk format.
        assert_eq!(position(b""), 0x2D06_8005_38D3_94C2);
        assert_ne!(position(b"a"), position(b"b"));
    }

    #[test]
    fn owner_is_first_token_at_or_after_position() {
        let members = BTreeMap::from([
            ("a".to_owned(), vec![100, 300]),
            ("b".to_owned(), vec![200]),
        ]);
        let r = Ring::new(&members).unwrap();
        assert_eq!(r.walk(100, 1), vec!["a"]);
        assert_eq!(r.walk(101, 1), vec!["b"]);
        assert_eq!(r.walk(250, 2), vec!["a", "b"]);
        assert_eq!(r.walk(301, 3), vec!["a", "b"], "wraps, distinct nodes only");
        assert_eq!(r.walk(0, 1), vec!["a"]);
        let shares = r.shares();
        assert!((shares["b"] - 100.0 / 2f64.powi(64)).abs() < 1e-12);
        assert!((shares["a"] + shares["b"] - 1.0).abs() < 1e-9);
        assert_eq!(r.arcs_of("b"), vec![(100, 200)]);
    }

    #[test]
    fn clashing_tokens_and_empty_nodes_are_refused() {
        let m = BTreeMap::from([("a".to_owned(), vec![1]), ("b".to_owned(), vec![1])]);
        assert!(matches!(Ring::new(&m), Err(RingError::TokenClash { .. })));
        let m = BTreeMap::from([("a".to_owned(), vec![])]);
        assert!(matches!(Ring::new(&m), Err(RingError::NoTokens(_))));
    }

    #[test]
    fn version_tracks_membership() {
        assert_eq!(ring(5, 8).version(), ring(5, 8).version());
        assert_ne!(ring(5, 8).version(), ring(6, 8).version());
        assert_ne!(ring(5, 8).version(), ring(5, 9).version());
    }

    #[test]
    fn hashed_tokens_are_distinct_and_stable() {
        let t = hashed_tokens("node-1", 256);
        assert_eq!(t.len(), 256);
        assert_eq!(t, hashed_tokens("node-1", 256));
        assert_ne!(t, hashed_tokens("node-2", 256));
    }

    proptest! {
        #[test]
        fn every_position_has_n_distinct_owners(nodes in 1usize..12, vnodes in 1u16..20, n in 1usize..5, pos: u64) {
            let r = ring(nodes, vnodes);
            let owners = r.walk(pos, n);
            prop_assert_eq!(owners.len(), n.min(nodes));
            let distinct: BTreeSet<_> = owners.iter().collect();
            prop_assert_eq!(distinct.len(), owners.len());
        }

        #[test]
        fn adding_a_node_moves_only_arcs_it_takes(nodes in 1usize..10, vnodes in 1u16..16, n in 1usize..4, positions in proptest::collection::vec(any::<u64>(), 50)) {
            let before = ring(nodes, vnodes);
            let after = ring(nodes + 1, vnodes);
            let new = format!("n{nodes}");
            for pos in positions {
                let (b, a) = (before.walk(pos, n), after.walk(pos, n));
                if !a.contains(&new.as_str()) {
                    prop_assert_eq!(&b, &a, "position {} moved without the new node", pos);
                } else {
                    // The new node took a place; everyone else keeps their relative order.
                    let rest: Vec<_> = a.iter().filter(|x| **x != new).copied().collect();
                    prop_assert_eq!(&rest[..], &b[..rest.len()]);
                }
                // The first owner changes only to the new node.
                if b[0] != a[0] {
                    prop_assert_eq!(a[0], new.as_str());
                }
            }
        }

        #[test]
        fn shares_sum_to_one(nodes in 1usize..20, vnodes in 1u16..40) {
            let total: f64 = ring(nodes, vnodes).shares().values().sum();
            prop_assert!((total - 1.0).abs() < 1e-9);
        }
    }
}
