//! Gossip (Dynamo section 4.8.1): every interval a node reconciles its membership view with one
//! random peer, through a three-message digest exchange:
//! 1. `GossipSyn(digest)`: a few bytes per member.
//! 2. `GossipSynAck(digest, delta)`: the answer carries the receiver's digest and what the
//!    sender lacks.
//! 3. `GossipAck(delta)`: what the receiver lacks.
//!
//! Nodes that agree exchange digests only. Heartbeats ride along, so failure detection needs no
//! extra messages.
//!
//! Whom to gossip with follows Cassandra:
//! - one random peer believed alive;
//! - a peer believed down, with probability `down / (live + 1)`, so a healed partition or a
//!   returning node is noticed;
//! - a seed, now and then (always when nobody is known alive), so separate groups that only
//!   share seeds find each other.
//!
//! Seeds are special only for bootstrap and this occasional contact.

use crate::rng::Rng;

/// The peers to gossip with this round.
pub fn choose_targets(
    rng: &mut Rng,
    live: &[String],
    down: &[String],
    seeds: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    if let Some(p) = rng.pick(live) {
        out.push(p.clone());
    }
    if !down.is_empty()
        && rng.chance(down.len() as f64 / (live.len() + 1) as f64)
        && let Some(p) = rng.pick(down)
        && !out.contains(p)
    {
        out.push(p.clone());
    }
    let talked_to_seed = out.iter().any(|t| seeds.contains(t));
    if !seeds.is_empty()
        && !talked_to_seed
        && (live.is_empty()
            || rng.chance(seeds.len() as f64 / (live.len() + down.len() + 1) as f64))
        && let Some(p) = rng.pick(seeds)
        && !out.contains(p)
    {
        out.push(p.clone());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("n{i}")).collect()
    }

    #[test]
    fn picks_one_live_peer_and_sometimes_a_down_one() {
        let mut rng = Rng::new(1);
        let (live, down) = (ids(9), vec!["d".to_owned()]);
        let mut with_down = 0;
        for _ in 0..1000 {
            let t = choose_targets(&mut rng, &live, &down, &[]);
            assert!(live.contains(&t[0]));
            assert!(t.len() <= 2);
            with_down += usize::from(t.contains(&"d".to_owned()));
        }
        // Probability 1/10.
        assert!((50..160).contains(&with_down), "{with_down}");
    }

    #[test]
    fn alone_it_turns_to_seeds() {
        let mut rng = Rng::new(2);
        let t = choose_targets(&mut rng, &[], &[], &["s".to_owned()]);
        assert_eq!(t, vec!["s".to_owned()]);
        assert!(choose_targets(&mut rng, &[], &[], &[]).is_empty());
    }
}
