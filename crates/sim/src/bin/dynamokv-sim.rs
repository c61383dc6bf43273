//! `dynamokv-sim`: run seeded whole-cluster simulations with faults and check every history.

use clap::Parser;
use dynamokv_sim::{Faults, SimConfig, run_seed};
use std::process::ExitCode;
use std::time::Instant;

/// Deterministic simulation of a dynamokv cluster under faults, with a lost-write checker.
#[derive(Parser, Debug)]
#[command(name = "dynamokv-sim", version, about)]
struct Args {
    /// The first (or only) seed.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// How many consecutive seeds to run, starting at --seed.
    #[arg(long, default_value_t = 1)]
    seeds: u64,
    /// Nodes in the cluster.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Operations per seed.
    #[arg(long, default_value_t = 200)]
    ops: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 4)]
    clients: usize,
    /// Distinct keys.
    #[arg(long, default_value_t = 12)]
    keys: usize,
    /// Fault kinds: all, none, or a list of crash,pause,partition,loss,delay,skew.
    #[arg(long, default_value = "all", value_parser = Faults::parse)]
    faults: Faults,
    /// Tokens per node.
    #[arg(long, default_value_t = 16)]
    vnodes: u16,
    /// Print the event log of each seed.
    #[arg(long)]
    trace: bool,
    /// Instead of the workload: measure gossip convergence (10, 100, 1000 nodes), failure
    /// detection time, false-down rate under loss and jitter, and bytes per gossip exchange.
    #[arg(long)]
    measure_gossip: bool,
    /// Instead of the workload: measure anti-entropy on three in-process nodes holding
    /// --ae-keys keys: bytes to repair 10, 100 and 1000 differing keys against the ideal, time
    /// and bytes to rebuild a wiped replica, and tree memory.
    #[arg(long)]
    measure_anti_entropy: bool,
    /// Keys for --measure-anti-entropy.
    #[arg(long, default_value_t = 100_000)]
    ae_keys: usize,
}

fn measure_anti_entropy(keys: usize) {
    use dynamokv_core::node::NodeConfig;
    use dynamokv_sim::ae_lab::*;
    let value_size = 100;
    // On demand only, so that only the measured rounds run; throttle raised so that the time
    // measured is the protocol's, not the default 5000 keys/s.
    let config = NodeConfig {
        anti_entropy_interval_ms: 0,
        anti_entropy_keys_per_sec: 1_000_000,
        anti_entropy_bytes_per_sec: 1 << 30,
        background_items_per_sec: 1_000_000,
        background_bytes_per_sec: 1 << 30,
        background_p99_target_ms: 0,
        ..NodeConfig::default()
    };
    let t = Instant::now();
    let mut lab = Lab::new(keys, value_size, config);
    let s = lab.stats(0);
    println!(
        "{keys} keys of {value_size} B on 3 replicas (N=3, 256 vnodes each): {} trees per node, built in {:.1} s of CPU; tree memory {:.2} MiB per node = {} B per range, {:.1} B per key",
        s.trees,
        t.elapsed().as_secs_f64(),
        s.tree_memory_bytes as f64 / 1048576.0,
        s.tree_memory_bytes / s.trees.max(1) as u64,
        s.tree_memory_bytes as f64 / keys as f64
    );
    // A round compares every range with every other replica: the fixed cost of a round.
    let round = lab.repair(2);
    lab.run_until(|l| l.finished(2, round), 600_000);
    println!(
        "  one node's round over its {} range-replica pairs with nothing to repair: {} B sent in all ({:.0} B per pair)",
        s.trees * 2,
        lab.sync_bytes.total(),
        lab.sync_bytes.total() as f64 / (s.trees as f64 * 2.0)
    );
    let mut written = 0;
    for d in [10usize, 100, 1000] {
        // d keys get a new version on node 2 alone.
        let chosen: Vec<Vec<u8>> = (0..d).map(|j| key((written + j) * 97 % keys)).collect();
        written += d;
        for k in &chosen {
            lab.write_one(2, 0, k, vec![b'w'; value_size]);
        }
        // Node 2 sends each new version to the two other replicas.
        let ideal: u64 = chosen.iter().map(|k| object_bytes(&lab, 2, k)).sum::<u64>() * 2;
        lab.sync_bytes = Default::default();
        let t = Instant::now();
        let round = lab.repair(2);
        let ms = lab.run_until(|l| l.finished(2, round), 600_000);
        assert!(lab.same(0, 2, keys) && lab.same(1, 2, keys), "converged");
        let b = lab.sync_bytes;
        println!(
            "  d = {d:>4} differing keys: objects {} B vs ideal {ideal} B (d x object x 2 replicas) -> {:.2}x; tree traffic {} B ({} B of it roots and equal answers, the round's fixed cost); {ms} ms simulated, {:.2} s CPU",
            b.objects,
            b.objects as f64 / ideal as f64,
            b.tree,
            b.tree_equal,
            t.elapsed().as_secs_f64()
        );
    }
    lab.wipe(2);
    lab.run_until(|l| l.sees_all_up(2), 60_000);
    lab.sync_bytes = Default::default();
    let t = Instant::now();
    let round = lab.repair(2);
    let ms = lab.run_until(|l| l.same(0, 2, keys), 3_600_000);
    lab.run_until(|l| l.finished(2, round), 600_000);
    let ideal: u64 = (0..keys).map(|k| object_bytes(&lab, 0, &key(k))).sum();
    let b = lab.sync_bytes;
    println!(
        "  wiped replica rebuilt (repair run on it): {keys} keys in {ms} ms simulated ({:.1} s CPU for all three nodes); objects {} B vs ideal {ideal} B -> {:.2}x; tree traffic {} B",
        t.elapsed().as_secs_f64(),
        b.objects,
        b.objects as f64 / ideal as f64,
        b.tree
    );
}

fn measure_gossip(seed: u64) {
    use dynamokv_sim::gossip_lab::*;
    println!("gossip convergence (rounds of 1 s until every node knows a change; 5 seeds):");
    for n in [10usize, 100, 1000] {
        let t = Instant::now();
        let seeds = if n >= 1000 { 1 } else { 5 };
        let rounds: Vec<u64> = (0..seeds)
            .map(|s| convergence_rounds(n, seed + s))
            .collect();
        let mean = rounds.iter().sum::<u64>() as f64 / rounds.len() as f64;
        println!(
            "  {n:>5} nodes: mean {mean:.1}, max {} rounds (log2 n = {:.1}); {:.1} s to simulate",
            rounds.iter().max().unwrap_or(&0),
            (n as f64).log2(),
            t.elapsed().as_secs_f64()
        );
    }
    println!("failure detection (pause one node; ms until every other node marks it down):");
    for (n, loss, jitter) in [
        (5usize, 0.0, 0u64),
        (5, 0.05, 200),
        (100, 0.0, 0),
        (100, 0.05, 200),
    ] {
        let times: Vec<u64> = (0..5)
            .map(|s| detection_time(n, seed + s, loss, jitter))
            .collect();
        println!(
            "  {n:>3} nodes, loss {:>2.0}%, jitter {jitter:>3} ms: mean {:.0} ms, max {} ms",
            loss * 100.0,
            times.iter().sum::<u64>() as f64 / times.len() as f64,
            times.iter().max().unwrap_or(&0)
        );
    }
    println!(
        "false downs (a live node newly believed down by another; 10 nodes, 3 runs of 1 hour):"
    );
    for (loss, jitter) in [(0.05, 0u64), (0.0, 500), (0.05, 500)] {
        let flaps: u64 = (0..3)
            .map(|s| false_downs(10, seed + s, loss, jitter, 3600))
            .sum();
        println!(
            "  loss {:>2.0}%, jitter {jitter:>3} ms: {flaps} false downs in 30 node-hours",
            loss * 100.0
        );
    }
    let (per, per_member) = bytes_per_exchange(100, seed);
    println!(
        "gossip bytes in a steady 100-node cluster: {per:.0} bytes per exchange ({per_member:.1} per member)"
    );
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.measure_anti_entropy {
        measure_anti_entropy(args.ae_keys);
        return ExitCode::SUCCESS;
    }
    if args.measure_gossip {
        measure_gossip(args.seed);
        return ExitCode::SUCCESS;
    }
    if args.nodes == 0 || args.clients == 0 || args.keys == 0 {
        eprintln!("error: --nodes, --clients and --keys must be at least 1");
        return ExitCode::FAILURE;
    }
    let mut cfg = SimConfig::new(args.seed);
    cfg.nodes = args.nodes;
    cfg.ops = args.ops;
    cfg.clients = args.clients;
    cfg.keys = args.keys;
    cfg.faults = args.faults;
    cfg.vnodes = args.vnodes;
    cfg.trace = args.trace;
    cfg.node.n = cfg.node.n.min(args.nodes as u8).max(1);
    cfg.node.r = cfg.node.r.min(cfg.node.n);
    cfg.node.w = cfg.node.w.min(cfg.node.n);
    let start = Instant::now();
    let mut bad = 0u64;
    let mut messages = 0u64;
    let mut lifecycle = dynamokv_sim::LifecycleStats::default();
    for seed in args.seed..args.seed.saturating_add(args.seeds) {
        let r = run_seed(&cfg, seed);
        messages += r.delivered + r.dropped;
        let l = r.lifecycle;
        lifecycle.creates_ok += l.creates_ok;
        lifecycle.creates_refused += l.creates_refused;
        lifecycle.create_keys += l.create_keys;
        lifecycle.create_keys_raced += l.create_keys_raced;
        lifecycle.expiry_reads += l.expiry_reads;
        lifecycle.increments_ok += l.increments_ok;
        if args.trace {
            for line in &r.trace {
                println!("{line}");
            }
        }
        println!(
            "seed {seed}: ops {} (ok {}, failed {}, unknown {}), faults {}, messages delivered {} dropped {}, hints stored {} delivered {}, anti-entropy repaired {} keys, tombstones collected {}, simulated {:.1} s",
            r.ops,
            r.ok,
            r.failed,
            r.unknown,
            r.faults,
            r.delivered,
            r.dropped,
            r.hints_stored,
            r.hints_delivered,
            r.ae_keys_repaired,
            r.tombstones_collected,
            r.sim_ms as f64 / 1000.0
        );
        println!("trace-hash: {:016x}", r.trace_hash);
        if r.violations.is_empty() {
            println!("verdict: ok");
        } else {
            bad += 1;
            println!("verdict: {} violation(s)", r.violations.len());
            for v in &r.violations {
                println!("  - {v}");
            }
            println!(
                "replay: cargo run --release -p dynamokv-sim -- --seed {seed} --nodes {} --ops {} --clients {} --keys {} --faults {} --vnodes {} --trace",
                args.nodes,
                args.ops,
                args.clients,
                args.keys,
                args.faults.describe(),
                args.vnodes
            );
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let l = lifecycle;
    println!(
        "lifecycle: {} expiring reads checked; {} increments acknowledged; conditional creates: {} acknowledged, {} refused (found a value); {} of {} created keys ({:.1}%) had more than one create acknowledged (a race: they became siblings)",
        l.expiry_reads,
        l.increments_ok,
        l.creates_ok,
        l.creates_refused,
        l.create_keys_raced,
        l.create_keys,
        100.0 * l.create_keys_raced as f64 / l.create_keys.max(1) as f64
    );
    println!(
        "{} seeds in {secs:.2} s: {:.1} seeds/s, {:.0} simulated messages/s; {bad} with violations",
        args.seeds,
        args.seeds as f64 / secs,
        messages as f64 / secs
    );
    if bad > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
