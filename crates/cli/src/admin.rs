//! `dynamokv admin status`: the cluster as one node (or every node) sees it; `dynamokv admin
//! repair`: an anti-entropy round on demand, with its progress.

use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::ExitCode;

/// Operator commands.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Members, their status as seen from a node, phi, tokens, share, and the ring version.
    Status(StatusArgs),
    /// Compares every range a node replicates with every other replica now (anti-entropy),
    /// repairs what differs, and shows the progress until the round ends.
    Repair(RepairArgs),
}

/// Flags of `dynamokv admin repair`.
#[derive(Args, Debug)]
pub struct RepairArgs {
    /// Base URL of the node to repair.
    #[arg(
        long,
        env = "DYNAMOKV_NODE",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    node: String,
    /// Give up waiting after this many seconds (the round goes on).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    timeout: u64,
}

/// Flags of `dynamokv admin status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    /// Base URL of a node's HTTP API.
    #[arg(
        long,
        env = "DYNAMOKV_NODE",
        default_value = "http://127.0.0.1:8080",
        value_name = "URL"
    )]
    node: String,
    /// Ask every member for its view and compare them.
    #[arg(long)]
    all: bool,
    /// Print the raw JSON of /admin/members.
    #[arg(long)]
    json: bool,
}

async fn members(http: &reqwest::Client, url: &str) -> anyhow::Result<Value> {
    let mut v = fetch(http, url, "members").await?;
    if let Ok(stats) = fetch(http, url, "stats").await {
        v["node_stats"] = stats;
    }
    Ok(v)
}

async fn fetch(http: &reqwest::Client, url: &str, what: &str) -> anyhow::Result<Value> {
    let r = http
        .get(format!("{}/admin/{what}", url.trim_end_matches('/')))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    if !r.status().is_success() {
        bail!("{url} answered {}", r.status());
    }
    Ok(r.json().await?)
}

fn print_view(v: &Value) {
    println!(
        "view of {} - ring version {}",
        v["node"].as_str().unwrap_or("?"),
        v["ring_version"].as_str().unwrap_or("?")
    );
    let st = &v["node_stats"];
    if st.is_object() {
        println!(
            "  hints: {} pending {}, {} stored, {} delivered; read repairs {}; sloppy writes {}",
            st["hints_pending"],
            st["hints_pending_by_owner"],
            st["hints_stored"],
            st["hints_delivered"],
            st["read_repairs"],
            st["sloppy_writes"]
        );
        let rv = &st["reads_by_versions"];
        let counts: Vec<u64> = ["1", "2", "3", "4+"]
            .iter()
            .map(|k| rv[*k].as_u64().unwrap_or(0))
            .collect();
        let total: u64 = counts.iter().sum::<u64>().max(1);
        let pct = |i: usize| counts[i] as f64 * 100.0 / total as f64;
        println!(
            "  versions per read: 1: {:.3}%, 2: {:.3}%, 3: {:.3}%, 4+: {:.3}% (of {} reads that found a value); {} writes left 25+ siblings, {} refused by limits",
            pct(0),
            pct(1),
            pct(2),
            pct(3),
            counts.iter().sum::<u64>(),
            st["sibling_warnings"],
            st["refused_writes"]
        );
        let ae = &st["anti_entropy"];
        if ae.is_object() {
            let state = if ae["rebuilding"].as_bool() == Some(true) {
                format!(
                    "REBUILDING lost data ({} ranges to go; reads here do not count)",
                    ae["rebuilding_ranges"]
                )
            } else {
                "complete".to_owned()
            };
            println!(
                "  anti-entropy: data {state}; {} trees ({} building, {} keys, {:.1} MiB); {} exchanges ({} in sync, {} failed); {} keys repaired",
                ae["trees"],
                ae["trees_building"],
                ae["tree_keys"],
                ae["tree_memory_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                ae["exchanges"],
                ae["in_sync"],
                ae["failed"],
                ae["keys_repaired"]
            );
        }
    }
    println!(
        "{:<14} {:<22} {:<22} {:<8} {:<8} {:>7} {:>10} {:>6} {:>7} {:>14}",
        "node",
        "peer",
        "http",
        "status",
        "seen",
        "phi",
        "heard ago",
        "tokens",
        "share",
        "generation"
    );
    for m in v["members"].as_array().into_iter().flatten() {
        let seen = if m["id"] == v["node"] {
            "self"
        } else if m["up"].as_bool() == Some(true) {
            "up"
        } else {
            "DOWN"
        };
        let phi = m["phi"].as_f64().map_or("-".into(), |p| {
            if p > 999.0 {
                ">999".into()
            } else {
                format!("{p:.2}")
            }
        });
        let heard = m["last_heard_ms"]
            .as_u64()
            .map_or("-".into(), |ms| format!("{:.1} s", ms as f64 / 1000.0));
        println!(
            "{:<14} {:<22} {:<22} {:<8} {:<8} {:>7} {:>10} {:>6} {:>6.1}% {:>14}",
            m["id"].as_str().unwrap_or("?"),
            m["peer_addr"].as_str().unwrap_or("?"),
            m["http_addr"].as_str().unwrap_or("?"),
            m["status"].as_str().unwrap_or("?"),
            seen,
            phi,
            heard,
            m["tokens"],
            m["share"].as_f64().unwrap_or(0.0) * 100.0,
            m["generation"]
        );
    }
}

/// Runs `dynamokv admin ...`.
pub fn run(cmd: AdminCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        AdminCommand::Status(args) => status(args),
        AdminCommand::Repair(args) => repair(args),
    }
}

fn repair(args: RepairArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()?;
        let url = format!("{}/admin/repair", args.node.trim_end_matches('/'));
        let r = http
            .post(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", args.node))?;
        if !r.status().is_success() {
            bail!("{} answered {}", args.node, r.status());
        }
        let started: Value = r.json().await?;
        let round = started["round"].as_u64().context("no round id in the answer")?;
        let node = started["node"].as_str().unwrap_or("?").to_owned();
        println!("repair round {round} started on {node}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(args.timeout);
        let mut last_line = String::new();
        loop {
            let p = fetch(&http, &args.node, "repair").await?;
            if p["last_round"].as_u64().unwrap_or(0) >= round {
                println!(
                    "repair round {round} finished on {node}: {} keys repaired so far, {} exchanges, {} failed",
                    p["keys_repaired"], p["exchanges"], p["failed"]
                );
                return Ok(ExitCode::SUCCESS);
            }
            let line = match p["round"].as_object() {
                Some(r) if r.get("id").and_then(Value::as_u64) == Some(round) => format!(
                    "  {}/{} range comparisons ({} skipped: peer down), {} keys repaired",
                    r["done"], r["pairs"], r["skipped"], p["keys_repaired"]
                ),
                _ => format!(
                    "  waiting for the round to start ({} trees still building)",
                    p["trees_building"]
                ),
            };
            if line != last_line {
                println!("{line}");
                last_line = line;
            }
            if std::time::Instant::now() > deadline {
                println!("still running after {} s; the round goes on", args.timeout);
                return Ok(ExitCode::from(2));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
}

fn status(args: StatusArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let http = reqwest::Client::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()?;
        let first = members(&http, &args.node).await?;
        if args.json && !args.all {
            println!("{first}");
            return Ok(ExitCode::SUCCESS);
        }
        if !args.all {
            print_view(&first);
            return Ok(ExitCode::SUCCESS);
        }
        let mut versions = BTreeSet::new();
        let mut all_up = true;
        let mut views = Vec::new();
        for m in first["members"].as_array().into_iter().flatten() {
            let url = format!("http://{}", m["http_addr"].as_str().unwrap_or_default());
            match members(&http, &url).await {
                Ok(v) => {
                    versions.insert(v["ring_version"].as_str().unwrap_or_default().to_owned());
                    all_up &= v["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .all(|x| x["up"].as_bool() == Some(true));
                    views.push(v);
                }
                Err(e) => {
                    all_up = false;
                    println!("{}: {e:#}", m["id"].as_str().unwrap_or("?"));
                }
            }
        }
        if args.json {
            println!("{}", Value::Array(views));
        } else {
            for v in &views {
                print_view(v);
                println!();
            }
            if versions.len() == 1 && all_up {
                println!(
                    "all {} views agree: ring version {}, every member up",
                    views.len(),
                    versions.iter().next().map(String::as_str).unwrap_or("")
                );
            } else {
                println!(
                    "views differ: ring versions {versions:?}; every member up everywhere: {all_up}"
                );
            }
        }
        Ok(if versions.len() == 1 && all_up {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        })
    })
}
