//! `dynamokv-nemesis`: a long run of a namespaced cluster under a nemesis, printing the
//! timeline and the verdict.

use clap::Parser;
use dynamokv_nemesis::netns;
use dynamokv_nemesis::run::{Fault, RunConfig, run};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Run a dynamokv cluster across network namespaces while a nemesis cuts links (isolate, 3|2
/// split, bridge, asymmetric, flapping) and kills, pauses and restarts nodes under a
/// continuous workload; then heal, let hints and anti-entropy converge the replicas, and check
/// the history: acknowledged writes lost, false siblings, keys not converged, availability per
/// fault. Needs root and iproute2 (`ip`). Exit status 1 when the verdict is not clean.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Minutes of faults (each fault phase is followed by a heal phase).
    #[arg(long, default_value_t = 5.0)]
    minutes: f64,
    /// Seed of the schedule (default: from the clock; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Nodes.
    #[arg(long, default_value_t = 5)]
    nodes: usize,
    /// Concurrent clients.
    #[arg(long, default_value_t = 8)]
    clients: usize,
    /// Keys the clients share.
    #[arg(long, default_value_t = 16)]
    keys: usize,
    /// Faults to rotate through (comma-separated): isolate, split, bridge, asymmetric, flap,
    /// kill, pause [default: all].
    #[arg(long, value_delimiter = ',')]
    faults: Vec<String>,
    /// Shortest and longest fault phase, in seconds.
    #[arg(long, num_args = 2, value_names = ["MIN", "MAX"], default_values_t = [5.0, 20.0])]
    fault_secs: Vec<f64>,
    /// Heal phase between faults, in seconds.
    #[arg(long, default_value_t = 5.0)]
    heal_secs: f64,
    /// The dynamokv binary [default: next to this one].
    #[arg(long)]
    bin: Option<PathBuf>,
    /// Extra flags for every node (repeat), e.g. --node-flag=--request-timeout-ms=1000.
    #[arg(long = "node-flag", allow_hyphen_values = true)]
    node_flags: Vec<String>,
    /// Clients send each request straight to its key's first primary that is not skipped
    /// (a partition-aware client), instead of to a random node.
    #[arg(long)]
    partition_aware: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if let Some(why) = netns::unavailable() {
        eprintln!("cannot run: {why}");
        return ExitCode::from(2);
    }
    let faults = if args.faults.is_empty() {
        Fault::ALL.to_vec()
    } else {
        match args.faults.iter().map(|f| Fault::parse(f)).collect() {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{e}");
                return ExitCode::from(64);
            }
        }
    };
    let bin = args.bin.unwrap_or_else(|| {
        std::env::current_exe()
            .ok()
            .and_then(|p| p.parent().map(|d| d.join("dynamokv")))
            .unwrap_or_else(|| PathBuf::from("dynamokv"))
    });
    if !bin.exists() {
        eprintln!(
            "no dynamokv binary at {} (build it with cargo build --release, or pass --bin)",
            bin.display()
        );
        return ExitCode::from(2);
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => {
            eprintln!("cannot make a data directory: {e}");
            return ExitCode::from(2);
        }
    };
    let secs = |s: f64| Duration::from_secs_f64(s.max(0.0));
    let cfg = RunConfig {
        bin,
        dir: dir.path().to_owned(),
        nodes: args.nodes,
        clients: args.clients,
        keys: args.keys,
        seed,
        faults,
        phases: None,
        duration: secs(args.minutes * 60.0),
        fault_len: (
            secs(args.fault_secs[0]),
            secs(args.fault_secs[1].max(args.fault_secs[0])),
        ),
        heal_len: secs(args.heal_secs),
        node_flags: args.node_flags,
        partition_aware: args.partition_aware,
    };
    println!(
        "seed {seed}: {} nodes, {} clients over {} keys, {:.1} minutes of faults",
        cfg.nodes, cfg.clients, cfg.keys, args.minutes
    );
    match run(&cfg, &mut |line| println!("{line}")) {
        Ok(report) => {
            print!("{}", report.render());
            if report.verdict.clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            }
        }
        Err(e) => {
            eprintln!("the run failed: {e}");
            ExitCode::from(2)
        }
    }
}
