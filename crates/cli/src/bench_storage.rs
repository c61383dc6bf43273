//! `dynamokv bench-storage`: the disk engine's throughput through the `Engine` trait.
//!
//! Four phases over fresh directories: single puts (no fsync), batches fsynced per batch,
//! random point gets, and a full ordered scan in pages.

use anyhow::Context as _;
use clap::Args;
use dynamokv_storage::{DiskEngine, Engine, Space, SyncPolicy, WriteBatch};
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

/// Flags of `dynamokv bench-storage`.
#[derive(Args, Debug)]
pub struct BenchStorageArgs {
    /// Number of keys written and read.
    #[arg(long, default_value_t = 1_000_000)]
    keys: u64,
    /// Value size in bytes (keys are 16 bytes).
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Keys per fsynced batch in the batch phase.
    #[arg(long, default_value_t = 100)]
    batch: u64,
    /// Directory for the test databases (a temporary directory by default); removed afterwards.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

/// 16-byte key number `i`: a hash of `i` (so inserts are not in order) then `i`.
fn key(i: u64) -> [u8; 16] {
    let mut k = [0u8; 16];
    k[..8].copy_from_slice(&mix(i).to_be_bytes());
    k[8..].copy_from_slice(&i.to_be_bytes());
    k
}

/// A deterministic scramble of `i` (the core's splitmix64).
fn mix(i: u64) -> u64 {
    dynamokv_core::rng::Rng::new(i).next_u64()
}

fn report(name: &str, n: u64, start: Instant) {
    let secs = start.elapsed().as_secs_f64();
    println!(
        "{name:<34} {n:>9} ops in {secs:>7.2} s = {:>10.0} ops/s",
        n as f64 / secs.max(1e-9)
    );
}

fn open(dir: &Path, name: &str, policy: SyncPolicy) -> anyhow::Result<DiskEngine> {
    DiskEngine::open(&dir.join(name), policy).with_context(|| format!("opening {name}"))
}

/// Scans the whole objects space in pages; returns the number of keys seen.
fn scan_all(engine: &DiskEngine) -> anyhow::Result<u64> {
    let mut scanned = 0u64;
    let mut after: Option<Vec<u8>> = None;
    loop {
        let from = after.as_deref().map_or(Bound::Unbounded, Bound::Excluded);
        let page = engine.scan(Space::Objects, from, Bound::Unbounded, 10_000)?;
        let Some((last, _)) = page.last() else {
            return Ok(scanned);
        };
        after = Some(last.clone());
        scanned += page.len() as u64;
    }
}

/// Runs the benchmark.
pub fn run(args: BenchStorageArgs) -> anyhow::Result<ExitCode> {
    let tmp;
    let dir = match &args.dir {
        Some(d) => {
            std::fs::create_dir_all(d)?;
            tempfile::tempdir_in(d)?
        }
        None => {
            tmp = tempfile::tempdir()?;
            tempfile::tempdir_in(tmp.path())?
        }
    };
    let value = vec![0xABu8; args.value_size];
    println!(
        "bench-storage: fjall via Engine, {} keys of 16 bytes, values of {} bytes, in {}",
        args.keys,
        args.value_size,
        dir.path().display()
    );

    let engine = open(dir.path(), "single", SyncPolicy::Never)?;
    let start = Instant::now();
    for i in 0..args.keys {
        engine.put(Space::Objects, &key(i), &value)?;
    }
    report("put (1 per write, no fsync)", args.keys, start);

    {
        let synced = open(dir.path(), "batched", SyncPolicy::Always)?;
        let start = Instant::now();
        let mut i = 0;
        while i < args.keys {
            let mut b = WriteBatch::new();
            for j in i..(i + args.batch).min(args.keys) {
                b.put(Space::Objects, key(j), value.clone());
            }
            i += b.len() as u64;
            synced.write(b)?;
        }
        report(
            &format!("put (batch {}, fsync each)", args.batch),
            args.keys,
            start,
        );
    }

    let start = Instant::now();
    let mut found = 0u64;
    for i in 0..args.keys {
        let k = key(mix(i.wrapping_add(1)) % args.keys.max(1));
        found += u64::from(engine.get(Space::Objects, &k)?.is_some());
    }
    report("get (random)", args.keys, start);
    anyhow::ensure!(
        found == args.keys,
        "only {found} of {} keys found",
        args.keys
    );

    for pass in ["first", "second"] {
        let start = Instant::now();
        let scanned = scan_all(&engine)?;
        report(&format!("scan (pages of 10000, {pass})"), scanned, start);
        anyhow::ensure!(scanned == args.keys, "scan saw {scanned} keys");
    }
    Ok(ExitCode::SUCCESS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_distinct_and_16_bytes() {
        let keys: std::collections::BTreeSet<_> = (0..1000).map(key).collect();
        assert_eq!(keys.len(), 1000);
    }
}
