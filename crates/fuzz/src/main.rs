//! `dynamokv-fuzz`: runs the fuzz targets for as long as asked and prints what each saw.

use clap::Parser;
use dynamokv_fuzz::engine::{self, Budget, Options};
use dynamokv_fuzz::targets;
use std::process::ExitCode;
use std::time::Duration;

/// Fuzz the decoders that read bytes from the network.
///
/// Each target is fed random bytes, mutations of its corpus and structure-aware inputs; a
/// panic, a broken property, an allocation beyond the bound (8 MiB + 64 bytes per input byte)
/// or a case running longer than --hang-secs is a failure: the input is written to
/// fuzz-failure-<target>.bin (fuzz-hang-<target>.bin for a hang) and the exit status is 1
/// (2 for a hang).
#[derive(Parser, Debug)]
#[command(
    version,
    after_help = "Examples:\n  dynamokv-fuzz --minutes 10            every target, 10 minutes each\n  dynamokv-fuzz --target resp --cases 100000\n  dynamokv-fuzz --list"
)]
struct Args {
    /// Minutes to run each target (default: 1 unless --cases is given).
    #[arg(long, conflicts_with = "cases")]
    minutes: Option<f64>,
    /// Inputs to feed each target instead of a time.
    #[arg(long)]
    cases: Option<u64>,
    /// Run only these targets (repeatable); default: all.
    #[arg(long = "target")]
    targets: Vec<String>,
    /// Seed of the input choices (default: from the clock; printed, so a run can be repeated).
    #[arg(long)]
    seed: Option<u64>,
    /// Longest input made, in bytes.
    #[arg(long, default_value_t = 128 * 1024)]
    max_len: usize,
    /// A case running longer than this many seconds is a hang.
    #[arg(long, default_value_t = 5)]
    hang_secs: u64,
    /// List the targets and exit.
    #[arg(long)]
    list: bool,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let all = targets::all();
    if args.list {
        for t in &all {
            println!("{:<12} {}", t.name, t.about);
        }
        return ExitCode::SUCCESS;
    }
    for name in &args.targets {
        if targets::by_name(name).is_none() {
            let names: Vec<_> = all.iter().map(|t| t.name).collect();
            eprintln!(
                "unknown target {name:?}; the targets are {}",
                names.join(", ")
            );
            return ExitCode::from(64);
        }
    }
    let seed = args.seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_nanos() as u64)
    });
    let budget = match (args.cases, args.minutes) {
        (Some(n), _) => Budget::Cases(n),
        (None, m) => Budget::Time(Duration::from_secs_f64(m.unwrap_or(1.0) * 60.0)),
    };
    let opts = Options {
        seed,
        budget,
        max_len: args.max_len,
        hang_after: Duration::from_secs(args.hang_secs),
    };
    println!("seed {seed}; {budget:?} per target; allocation bound 8 MiB + 64 B/input byte");
    let mut failed = false;
    for t in all
        .iter()
        .filter(|t| args.targets.is_empty() || args.targets.iter().any(|n| n == t.name))
    {
        println!("{}: {}", t.name, t.about);
        let r = engine::run(t, &opts);
        let secs = r.elapsed.as_secs_f64();
        println!(
            "  {} cases in {:.0} s ({:.0}/s), {} decoded, {} distinct outcomes, corpus {}, max alloc {} KiB, slowest case {:.1} ms",
            r.cases,
            secs,
            r.cases as f64 / secs.max(1e-9),
            r.decoded(),
            r.outcomes.len(),
            r.corpus,
            r.max_alloc / 1024,
            r.slowest.as_secs_f64() * 1000.0
        );
        if let Some(f) = &r.failure {
            failed = true;
            let path = format!("fuzz-failure-{}.bin", t.name);
            let saved = std::fs::write(&path, &f.input).is_ok();
            println!(
                "  FAILURE: {}\n  input ({} bytes){}",
                f.what,
                f.input.len(),
                if saved {
                    format!(" saved to {path}")
                } else {
                    String::new()
                }
            );
        }
    }
    if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}
