//! `dynamokv bench`: a closed-loop load generator against a running cluster.
//!
//! `--clients` tasks each send one request at a time, back to back, for `--ops` operations or
//! `--duration` seconds, with the read/update mix of a YCSB-like `--workload` over `--keys` keys
//! chosen uniformly or with a scrambled zipfian distribution (theta 0.99, as YCSB). Updates send
//! the context of the latest read or write of that key seen by any client, so the load does not
//! pile up siblings. Latencies go into HdrHistograms (microseconds); the report gives throughput
//! and p50/p99/p99.9/max per operation, as text or JSON.

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use dynamokv_client::{ClusterClient, Routing};
use dynamokv_core::rng::Rng;
use hdrhistogram::Histogram;
use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Operation mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Workload {
    /// 50% reads, 50% updates.
    A,
    /// 95% reads, 5% updates.
    B,
    /// Reads only.
    C,
    /// Updates only.
    W,
}

impl Workload {
    fn read_percent(self) -> u64 {
        match self {
            Workload::A => 50,
            Workload::B => 95,
            Workload::C => 100,
            Workload::W => 0,
        }
    }
}

/// Key popularity.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Distribution {
    /// Every key equally likely.
    Uniform,
    /// A few keys take most requests (scrambled zipfian, theta 0.99).
    Zipfian,
}

/// How requests find their coordinator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum RoutingArg {
    /// Round-robin over the given nodes, which forward to the coordinator.
    AnyNode,
    /// Partition-aware: straight to the coordinator.
    Client,
}

/// Flags of `dynamokv bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// A node's HTTP URL; repeat (or separate with commas) for several: any-node routing
    /// spreads load over them.
    #[arg(
        long = "node",
        value_name = "URL",
        env = "DYNAMOKV_NODE",
        value_delimiter = ',',
        default_value = "http://127.0.0.1:8080"
    )]
    nodes: Vec<String>,
    /// Concurrent closed-loop clients.
    #[arg(long, default_value_t = 16)]
    clients: usize,
    /// Operations to run in total (default 20000 unless --duration is given).
    #[arg(long, conflicts_with = "duration")]
    ops: Option<u64>,
    /// Seconds to run instead of a number of operations.
    #[arg(long, value_name = "SECS")]
    duration: Option<f64>,
    /// Value size in bytes.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Number of distinct keys.
    #[arg(long, default_value_t = 10_000)]
    keys: u64,
    /// Operation mix: a (50/50 read/update), b (95/5), c (read-only), w (write-only).
    #[arg(long, value_enum, default_value_t = Workload::A)]
    workload: Workload,
    /// Key popularity.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    /// Routing: any-node (server-driven coordination) or client (partition-aware).
    #[arg(long, value_enum, default_value_t = RoutingArg::AnyNode)]
    routing: RoutingArg,
    /// Skip writing every key once before measuring.
    #[arg(long)]
    no_preload: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Random seed for key and operation choice.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// How long one node gets to answer before the client tries the next one (and skips the
    /// silent one for a while), in milliseconds.
    #[arg(long, default_value_t = 1000, value_name = "MS")]
    attempt_timeout_ms: u64,
}

/// YCSB's zipfian generator (Gray et al., "Quickly generating billion-record synthetic
/// databases"), with the item scrambled by a hash so hot keys are spread over the ring.
struct Zipf {
    n: u64,
    theta: f64,
    alpha: f64,
    zetan: f64,
    eta: f64,
}

impl Zipf {
    fn new(n: u64, theta: f64) -> Self {
        let zeta = |n: u64| (1..=n).map(|i| 1.0 / (i as f64).powf(theta)).sum::<f64>();
        let zetan = zeta(n);
        let zeta2 = zeta(2.min(n));
        let eta = (1.0 - (2.0 / n as f64).powf(1.0 - theta)) / (1.0 - zeta2 / zetan);
        Self {
            n,
            theta,
            alpha: 1.0 / (1.0 - theta),
            zetan,
            eta,
        }
    }

    fn sample(&self, rng: &mut Rng) -> u64 {
        let u = (rng.next_u64() >> 11) as f64 / (1u64 << 53) as f64;
        let uz = u * self.zetan;
        let rank = if uz < 1.0 {
            0
        } else if uz < 1.0 + 0.5f64.powf(self.theta) {
            1
        } else {
            ((self.n as f64) * (self.eta * u - self.eta + 1.0).powf(self.alpha)) as u64
        };
        xxhash_scramble(rank.min(self.n - 1)) % self.n
    }
}

fn xxhash_scramble(x: u64) -> u64 {
    Rng::new(x).next_u64()
}

fn key_name(i: u64) -> Vec<u8> {
    format!("bench-{i:010}").into_bytes()
}

#[derive(Default)]
struct Totals {
    reads: Option<Histogram<u64>>,
    writes: Option<Histogram<u64>>,
    errors: u64,
    first_error: Option<String>,
}

fn histogram() -> Histogram<u64> {
    // 1 µs .. 60 s at 3 significant figures: constant, valid bounds.
    Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid histogram bounds")
}

fn summary(h: &Histogram<u64>, secs: f64) -> serde_json::Value {
    serde_json::json!({
        "ops": h.len(),
        "ops_per_sec": h.len() as f64 / secs,
        "p50_us": h.value_at_quantile(0.50),
        "p99_us": h.value_at_quantile(0.99),
        "p999_us": h.value_at_quantile(0.999),
        "max_us": h.max(),
        "mean_us": h.mean(),
    })
}

/// Runs `dynamokv bench`.
pub fn run(args: BenchArgs) -> anyhow::Result<ExitCode> {
    if args.clients == 0 || args.keys == 0 {
        bail!("--clients and --keys must be at least 1");
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    rt.block_on(run_async(args))
}

/// Fails at once, naming each node and why, unless some node answers `/health`.
async fn some_node_answers(nodes: &[String]) -> anyhow::Result<()> {
    let http = dynamokv_client::tls::builder()
        .timeout(std::time::Duration::from_secs(3))
        .build()?;
    let mut why = Vec::new();
    for url in nodes {
        match http
            .get(format!("{}/health", url.trim_end_matches('/')))
            .send()
            .await
        {
            Ok(_) => return Ok(()),
            Err(e) => why.push(format!("  {url}: {:#}", anyhow::Error::from(e))),
        }
    }
    bail!(
        "no node answered, so nothing was measured:\n{}\n(--node or DYNAMOKV_NODE names the nodes' HTTP addresses)",
        why.join("\n")
    )
}

async fn run_async(args: BenchArgs) -> anyhow::Result<ExitCode> {
    some_node_answers(&args.nodes).await?;
    let routing = match args.routing {
        RoutingArg::AnyNode => Routing::AnyNode,
        RoutingArg::Client => Routing::Client,
    };
    let client = Arc::new(
        ClusterClient::connect(&args.nodes, routing)
            .await
            .context("connecting to the cluster")?
            .with_attempt_timeout(std::time::Duration::from_millis(
                args.attempt_timeout_ms.max(1),
            )),
    );
    let contexts: Arc<Mutex<HashMap<u64, String>>> = Arc::new(Mutex::new(HashMap::new()));
    let value = vec![b'x'; args.value_size];

    if !args.no_preload {
        let bar = indicatif::ProgressBar::new(args.keys);
        bar.set_style(
            indicatif::ProgressStyle::with_template("preload {bar:40} {pos}/{len} keys {per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        let next = Arc::new(AtomicU64::new(0));
        let mut tasks = Vec::new();
        for _ in 0..args.clients {
            let (client, next, contexts, value, bar) = (
                client.clone(),
                next.clone(),
                contexts.clone(),
                value.clone(),
                bar.clone(),
            );
            let keys = args.keys;
            tasks.push(tokio::spawn(async move {
                loop {
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= keys {
                        return anyhow::Ok(());
                    }
                    let w = client.put(&key_name(i), value.clone(), None).await?;
                    if let Some(c) = w.context {
                        contexts
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(i, c);
                    }
                    bar.inc(1);
                }
            }));
        }
        for t in tasks {
            t.await??;
        }
        bar.finish_and_clear();
    }

    let ops_budget = match (args.ops, args.duration) {
        (Some(n), _) => Some(n),
        (None, None) => Some(20_000),
        (None, Some(_)) => None,
    };
    let deadline = args
        .duration
        .map(|s| Instant::now() + Duration::from_secs_f64(s));
    let done = Arc::new(AtomicU64::new(0));
    let stop = Arc::new(AtomicBool::new(false));
    let zipf =
        Arc::new((args.distribution == Distribution::Zipfian).then(|| Zipf::new(args.keys, 0.99)));
    let bar = match ops_budget {
        Some(n) => indicatif::ProgressBar::new(n),
        None => indicatif::ProgressBar::new((args.duration.unwrap_or(0.0) * 10.0) as u64),
    };
    bar.set_style(
        indicatif::ProgressStyle::with_template("{prefix} {bar:40} {pos}/{len} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(if ops_budget.is_some() { "ops" } else { "0.1 s" });
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..args.clients {
        let (client, contexts, value, done, stop, zipf) = (
            client.clone(),
            contexts.clone(),
            value.clone(),
            done.clone(),
            stop.clone(),
            zipf.clone(),
        );
        let (keys, read_pct, seed) = (args.keys, args.workload.read_percent(), args.seed);
        tasks.push(tokio::spawn(async move {
            let mut rng = Rng::new(seed.wrapping_mul(1000).wrapping_add(t as u64));
            let mut totals = Totals {
                reads: Some(histogram()),
                writes: Some(histogram()),
                ..Totals::default()
            };
            loop {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                let n = done.fetch_add(1, Ordering::Relaxed);
                if ops_budget.is_some_and(|b| n >= b)
                    || deadline.is_some_and(|d| Instant::now() >= d)
                {
                    stop.store(true, Ordering::Relaxed);
                    break;
                }
                let k = match zipf.as_ref() {
                    Some(z) => z.sample(&mut rng),
                    None => rng.below(keys),
                };
                let key = key_name(k);
                let read = rng.below(100) < read_pct;
                let began = Instant::now();
                let (result, hist) = if read {
                    let r = client.get(&key, None).await.map(|r| r.context);
                    (r, totals.reads.as_mut())
                } else {
                    let ctx = contexts
                        .lock()
                        .unwrap_or_else(|p| p.into_inner())
                        .get(&k)
                        .cloned();
                    let r = client
                        .put(&key, value.clone(), ctx.as_deref())
                        .await
                        .map(|w| w.context);
                    (r, totals.writes.as_mut())
                };
                let micros = began.elapsed().as_micros().max(1) as u64;
                match result {
                    Ok(ctx) => {
                        if let Some(h) = hist {
                            let _ = h.record(micros.min(60_000_000));
                        }
                        if let Some(c) = ctx {
                            contexts
                                .lock()
                                .unwrap_or_else(|p| p.into_inner())
                                .insert(k, c);
                        }
                    }
                    Err(e) => {
                        totals.errors += 1;
                        totals.first_error.get_or_insert_with(|| e.to_string());
                    }
                }
            }
            totals
        }));
    }
    let ticker = {
        let (bar, done, stop) = (bar.clone(), done.clone(), stop.clone());
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(100)).await;
                let n = done.load(Ordering::Relaxed);
                match ops_budget {
                    Some(b) => bar.set_position(n.min(b)),
                    None => bar.set_position((start.elapsed().as_secs_f64() * 10.0) as u64),
                }
                bar.set_message(format!(
                    "{:.0} ops/s",
                    n as f64 / start.elapsed().as_secs_f64()
                ));
            }
        })
    };
    let mut reads = histogram();
    let mut writes = histogram();
    let mut errors = 0;
    let mut first_error = None;
    for t in tasks {
        let totals = t.await?;
        if let Some(h) = &totals.reads {
            reads.add(h).ok();
        }
        if let Some(h) = &totals.writes {
            writes.add(h).ok();
        }
        errors += totals.errors;
        if first_error.is_none() {
            first_error = totals.first_error;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let _ = ticker.await;
    bar.finish_and_clear();
    let mut all = histogram();
    all.add(&reads).ok();
    all.add(&writes).ok();

    let report = serde_json::json!({
        "workload": format!("{:?}", args.workload).to_lowercase(),
        "distribution": format!("{:?}", args.distribution).to_lowercase(),
        "routing": match args.routing { RoutingArg::AnyNode => "any-node", RoutingArg::Client => "client" },
        "clients": args.clients,
        "keys": args.keys,
        "value_size": args.value_size,
        "seconds": secs,
        "errors": errors,
        "first_error": first_error,
        "hedged_reads": client.hedged_reads(),
        "total": summary(&all, secs),
        "read": summary(&reads, secs),
        "update": summary(&writes, secs),
    });
    if args.json {
        println!("{report}");
    } else {
        println!(
            "workload {} ({}), routing {}, {} clients, {} keys, {}-byte values: {:.1} s",
            report["workload"].as_str().unwrap_or_default(),
            report["distribution"].as_str().unwrap_or_default(),
            report["routing"].as_str().unwrap_or_default(),
            args.clients,
            args.keys,
            args.value_size,
            secs
        );
        println!(
            "{:<8} {:>9} {:>10} {:>9} {:>9} {:>9} {:>9}",
            "op", "count", "ops/s", "p50 ms", "p99 ms", "p99.9 ms", "max ms"
        );
        for (name, h) in [("total", &all), ("read", &reads), ("update", &writes)] {
            if h.is_empty() {
                continue;
            }
            println!(
                "{:<8} {:>9} {:>10.0} {:>9.2} {:>9.2} {:>9.2} {:>9.2}",
                name,
                h.len(),
                h.len() as f64 / secs,
                h.value_at_quantile(0.5) as f64 / 1000.0,
                h.value_at_quantile(0.99) as f64 / 1000.0,
                h.value_at_quantile(0.999) as f64 / 1000.0,
                h.max() as f64 / 1000.0
            );
        }
        if client.hedged_reads() > 0 {
            println!(
                "hedged reads: {} (sent to a second node after the first was slow to answer)",
                client.hedged_reads()
            );
        }
        if errors > 0 {
            println!(
                "errors: {errors} (first: {})",
                first_error.unwrap_or_default()
            );
        }
    }
    Ok(if errors > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zipfian_is_skewed_and_in_range() {
        let z = Zipf::new(1000, 0.99);
        let mut rng = Rng::new(7);
        let mut counts = vec![0u32; 1000];
        for _ in 0..100_000 {
            counts[z.sample(&mut rng) as usize] += 1;
        }
        counts.sort_unstable_by(|a, b| b.cmp(a));
        let top10: u32 = counts[..10].iter().sum();
        assert!(
            top10 > 25_000,
            "the 10 hottest keys take a large share: {top10}"
        );
        assert!(counts[999] < 50);
    }

    #[test]
    fn workload_mixes() {
        assert_eq!(Workload::A.read_percent(), 50);
        assert_eq!(Workload::B.read_percent(), 95);
        assert_eq!(Workload::C.read_percent(), 100);
        assert_eq!(Workload::W.read_percent(), 0);
    }
}
