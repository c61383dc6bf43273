//! `dynamokv ring-balance`: how evenly token placements spread the key space.
//!
//! For each cluster size and placement, prints the largest and smallest share of the key space
//! owned by one node (as first replica), divided by the mean share. 1.00/1.00 is perfect.
//!
//! Placements:
//! - `hashed V`: V tokens per node at hash(node id, i) - Dynamo's strategy 1 (random tokens),
//!   made deterministic so every node derives the same ring from the member list;
//! - `equal Q`: Dynamo's strategy 3 - Q equal partitions dealt out as evenly as possible;
//! - `greedy V`: nodes join one at a time and each of their V tokens splits the largest arc of
//!   the currently most loaded node (needs agreement on the join order).
//!
//! Then a sequence of joins and leaves from 3 to 100 nodes with the placement a joining node
//! uses (`ring::balanced_tokens`, 256 tokens): the balance at each size, and the data each join
//! moves against the ideal (the new node's N/(n+1) share of the copies).

use clap::Args;
use dynamokv_core::ring::{Ring, balanced_tokens, hashed_tokens};
use std::collections::BTreeMap;
use std::process::ExitCode;

/// Flags of `dynamokv ring-balance`.
#[derive(Args, Debug)]
pub struct RingBalanceArgs {
    /// Cluster sizes to measure.
    #[arg(long, value_delimiter = ',', default_values_t = vec![3, 5, 10, 30, 100])]
    nodes: Vec<usize>,
    /// Vnode counts to measure for the hashed and greedy placements.
    #[arg(long, value_delimiter = ',', default_values_t = vec![2, 8, 16, 32, 64, 128, 256])]
    vnodes: Vec<u16>,
    /// Partition counts to measure for the equal-partitions placement.
    #[arg(long, value_delimiter = ',', default_values_t = vec![256, 1024])]
    partitions: Vec<u32>,
}

fn id(i: usize) -> String {
    format!("node-{i}")
}

fn hashed(nodes: usize, v: u16) -> BTreeMap<String, Vec<u64>> {
    (0..nodes)
        .map(|i| (id(i), hashed_tokens(&id(i), v)))
        .collect()
}

fn equal(nodes: usize, q: u32) -> BTreeMap<String, Vec<u64>> {
    let step = (u128::from(u64::MAX) + 1) / u128::from(q);
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    for p in 0..q {
        let token = ((u128::from(p) + 1) * step - 1) as u64;
        m.entry(id(p as usize % nodes)).or_default().push(token);
    }
    m
}

fn greedy(nodes: usize, v: u16) -> BTreeMap<String, Vec<u64>> {
    let mut m: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    m.insert(id(0), hashed_tokens(&id(0), v));
    for i in 1..nodes {
        let mut mine = Vec::new();
        for _ in 0..v {
            let mut with_new = m.clone();
            if !mine.is_empty() {
                with_new.insert(id(i), mine.clone());
            }
            let ring = Ring::new(&with_new).expect("distinct tokens");
            let shares = ring.shares();
            let (heaviest, _) = shares
                .iter()
                .filter(|(n, _)| **n != id(i))
                .fold(None::<(&String, f64)>, |best, (n, s)| match best {
                    Some((_, bs)) if bs >= *s => best,
                    _ => Some((n, *s)),
                })
                .expect("a node");
            let (start, end) = ring
                .arcs_of(heaviest)
                .into_iter()
                .max_by_key(|(s, e)| e.wrapping_sub(*s))
                .expect("an arc");
            mine.push(start.wrapping_add(end.wrapping_sub(start) / 2));
        }
        m.insert(id(i), mine);
    }
    m
}

fn stats(members: &BTreeMap<String, Vec<u64>>) -> (f64, f64) {
    let ring = Ring::new(members).expect("distinct tokens");
    let shares = ring.shares();
    let mean = 1.0 / shares.len() as f64;
    let max = shares.values().cloned().fold(f64::MIN, f64::max);
    let min = shares.values().cloned().fold(f64::MAX, f64::min);
    (max / mean, min / mean)
}

/// A token placement: cluster size to every node's tokens.
type Placement = Box<dyn Fn(usize) -> BTreeMap<String, Vec<u64>>>;

/// Runs `dynamokv ring-balance`.
pub fn run(args: RingBalanceArgs) -> anyhow::Result<ExitCode> {
    print!("{:<14}", "placement");
    for n in &args.nodes {
        print!(" | {:>11}", format!("{n} nodes"));
    }
    println!();
    let mut rows: Vec<(String, Placement)> = Vec::new();
    for &v in &args.vnodes {
        rows.push((format!("hashed {v}"), Box::new(move |n| hashed(n, v))));
    }
    for &q in &args.partitions {
        rows.push((format!("equal {q}"), Box::new(move |n| equal(n, q))));
    }
    for &v in &args.vnodes {
        if v <= 64 {
            rows.push((format!("greedy {v}"), Box::new(move |n| greedy(n, v))));
        }
    }
    println!("(each cell: max/mean share, min/mean share)");
    for (name, make) in rows {
        print!("{name:<14}");
        for &n in &args.nodes {
            let (max, min) = stats(&make(n));
            print!(" | {max:>5.2} {min:>5.2}");
        }
        println!();
    }
    sequence();
    Ok(ExitCode::SUCCESS)
}

/// The share of the key space `node` replicates with `n` replicas.
fn replicated(ring: &Ring, node: &str, n: usize) -> f64 {
    ring.ranges()
        .into_iter()
        .filter(|r| ring.walk(r.end, n).contains(&node))
        .map(|r| r.len() as f64 / 2f64.powi(64))
        .sum()
}

/// Joins up to 100 nodes with balanced tokens, one node in five leaving in between.
fn sequence() {
    const N: usize = 3;
    println!();
    println!(
        "join/leave sequence, balanced tokens (256 per node), a leave after every 4 joins; N={N}:"
    );
    println!("  nodes | max/mean | min/mean | worst join moved/ideal so far");
    let mut members: BTreeMap<String, Vec<u64>> = BTreeMap::new();
    members.insert(id(0), hashed_tokens(&id(0), 256));
    let mut next = 1;
    let mut worst: f64 = 0.0;
    let mut joins = 0;
    let mut rng = dynamokv_core::rng::Rng::new(7);
    let mut shown = std::collections::BTreeSet::new();
    while members.len() < 100 {
        let ring = Ring::new(&members).expect("distinct tokens");
        let new = id(next);
        next += 1;
        let tokens = balanced_tokens(&ring, &new, 256);
        members.insert(new.clone(), tokens);
        let after = Ring::new(&members).expect("distinct tokens");
        if members.len() > N {
            let moved = replicated(&after, &new, N);
            let ideal = N as f64 / members.len() as f64;
            worst = worst.max(moved / ideal);
        }
        joins += 1;
        if joins % 4 == 0 && members.len() > 4 {
            let ids: Vec<String> = members.keys().cloned().collect();
            let gone = &ids[rng.below(ids.len() as u64) as usize];
            members.remove(gone);
        }
        let n = members.len();
        if [3, 5, 10, 30, 50, 100].contains(&n) && shown.insert(n) {
            let (max, min) = stats(&members);
            println!("  {n:>5} | {max:>8.3} | {min:>8.3} | {worst:.3}");
        }
    }
}
