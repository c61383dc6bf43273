//! `dynamokv admin status`: the cluster as one node (or every node) sees it; `dynamokv admin
//! repair`: an anti-entropy round on demand, with its progress.

use crate::connect::NodeUrl;
use anyhow::{Context as _, bail};
use clap::{Args, Subcommand};
use serde_json::Value;
use std::collections::BTreeSet;
use std::process::ExitCode;

/// Operator commands.
#[derive(Subcommand, Debug)]
pub enum AdminCommand {
    /// Members, their status as seen from a node, phi, tokens, share, the ring version and the
    /// cluster id. Exits 2 when the node serves nothing (not joined yet, or its instance
    /// ended); with --all, also when the views differ or a member is down.
    Status(StatusArgs),
    /// Compares every range a node replicates with every other replica now (anti-entropy),
    /// repairs what differs, and shows the progress until the round ends.
    Repair(RepairArgs),
    /// Waits until a node started with --seeds has joined: it is `joining` while it fetches the
    /// data of the ranges it will own, then `up`. (A new node joins by starting with --seeds.)
    Join(ChangeArgs),
    /// Makes a node leave the cluster gracefully: it hands every range to its new owners, then
    /// is `left`. Shows the plan first.
    Leave(ChangeArgs),
    /// Declares a dead node removed: the new owners of its ranges rebuild them from the
    /// surviving replicas. Shows the plan first.
    Remove(RemoveArgs),
    /// Writes every live object of a running cluster (every sibling, with its version vector)
    /// to one file: checksummed, compressed chunks, or JSON lines with --format jsonl.
    Backup(crate::backup::BackupArgs),
    /// Merges a backup into a cluster (any size, any N) through the one merge: safe to run
    /// twice, after a stop halfway, or over newer writes (they stay).
    Restore(crate::backup::RestoreArgs),
    /// Creates a cluster CA (or reuses the one in --out) and issues node and client
    /// certificates for TLS (--tls-cert, --tls-key, --tls-ca; see docs/security.md).
    Certs(crate::certs::CertsArgs),
}

/// Flags of `dynamokv admin join` and `leave`.
#[derive(Args, Debug)]
pub struct ChangeArgs {
    #[command(flatten)]
    node: NodeUrl,
    /// Return at once instead of waiting for the change to complete.
    #[arg(long)]
    no_wait: bool,
    /// Give up waiting after this many seconds (the change goes on).
    #[arg(long, default_value_t = 3600, value_name = "SECONDS")]
    timeout: u64,
}

/// Flags of `dynamokv admin remove`.
#[derive(Args, Debug)]
pub struct RemoveArgs {
    /// The id of the dead node to remove.
    id: String,
    #[command(flatten)]
    node: NodeUrl,
    /// Remove it even though a member that would take over its ranges is down too (that member
    /// rebuilds those ranges if it comes back). For two dead nodes that block each other.
    #[arg(long)]
    force: bool,
}

/// Flags of `dynamokv admin repair`.
#[derive(Args, Debug)]
pub struct RepairArgs {
    #[command(flatten)]
    node: NodeUrl,
    /// Give up waiting after this many seconds (the round goes on).
    #[arg(long, default_value_t = 600, value_name = "SECONDS")]
    timeout: u64,
}

/// Flags of `dynamokv admin status`.
#[derive(Args, Debug)]
pub struct StatusArgs {
    #[command(flatten)]
    node: NodeUrl,
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

/// The storage's health: corruption found, salvages, the scrub.
fn print_storage(storage: &Value) {
    if !storage.is_object() {
        return;
    }
    let damage = &storage["damage"];
    let corrupt = damage["corrupt_reads"].as_u64().unwrap_or(0);
    if corrupt > 0 || storage["lost_data"] == true {
        let salvage = match &damage["last_salvage"] {
            Value::Object(l) => format!(
                "last salvage kept {} records, dropped {} failing their checksum and {} unreadable stretches",
                l["kept"], l["dropped"], l["unreadable"]
            ),
            _ => "salvage pending".to_owned(),
        };
        let rebuild = if storage["lost_data"] == true {
            "; what it dropped is being rebuilt from the other replicas"
        } else {
            ""
        };
        println!(
            "  STORAGE DAMAGE FOUND: {corrupt} reads met corrupt data since start; {salvage}{rebuild}"
        );
    }
    let scrub = &storage["scrub"];
    if scrub.is_object() {
        let now = if scrub["running"] == true {
            format!(
                "pass at {:.0}% ({} objects)",
                scrub["position"].as_f64().unwrap_or(0.0) * 100.0 / 18_446_744_073_709_551_616.0,
                scrub["pass_checked"]
            )
        } else {
            format!(
                "next pass in {:.0} min",
                scrub["next_pass_in_ms"].as_f64().unwrap_or(0.0) / 60_000.0
            )
        };
        println!(
            "  scrub: {now}; {} passes, {} objects checked, {} passes stopped by damage",
            scrub["passes"], scrub["checked"], scrub["damaged_passes"]
        );
    }
}

fn print_view(v: &Value) {
    println!(
        "view of {} - ring version {}",
        v["node"].as_str().unwrap_or("?"),
        v["ring_version"].as_str().unwrap_or("?")
    );
    if let Some(id) = v["cluster_id"].as_str() {
        println!("  cluster id: {id}");
    }
    if let Some(msg) = v["ended"]["message"].as_str() {
        println!("  THIS NODE NO LONGER SERVES: {msg}");
    }
    if let Some(msg) = v["not_joined"].as_str() {
        println!("  NOT JOINED: {msg}");
    }
    if let Some(msg) = v["seed_refused"].as_str() {
        println!("  A SEED REFUSED THIS NODE: {msg}");
    }
    let st = &v["node_stats"];
    if st["disk"]["refusing_writes"] == true {
        println!(
            "  DISK NEARLY FULL: {} MiB free, under the reserve of {} MiB: this node refuses writes (it serves reads) until space is freed",
            st["disk"]["free_bytes"].as_u64().unwrap_or(0) >> 20,
            st["disk"]["reserve_bytes"].as_u64().unwrap_or(0) >> 20
        );
    }
    print_storage(&st["storage"]);
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
        let t = &st["transfer"];
        if let Some(change) = t["change"].as_str().filter(|c| !c.is_empty()) {
            let (done, total) = (
                t["confirmed"].as_u64().unwrap_or(0),
                t["ranges"].as_u64().unwrap_or(0),
            );
            let secs = t["elapsed_ms"].as_u64().unwrap_or(0) as f64 / 1000.0;
            let eta = if done > 0 && total > done {
                format!("{:.0} s", secs * (total - done) as f64 / done as f64)
            } else {
                "-".to_owned()
            };
            println!(
                "  transfer: {change}, {done}/{total} ranges confirmed after {secs:.1} s, ETA {eta}"
            );
        }
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
                "  anti-entropy: data {state}; {} trees ({} building, {} keys, {:.1} MiB); {} exchanges ({} in sync, {} failed{}, {} postponed); {} keys repaired",
                ae["trees"],
                ae["trees_building"],
                ae["tree_keys"],
                ae["tree_memory_bytes"].as_f64().unwrap_or(0.0) / 1048576.0,
                ae["exchanges"],
                ae["in_sync"],
                ae["failed"],
                failure_reasons(&ae["failed_by"], &Value::Null),
                ae["postponed"],
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
        } else if m["status"] == "left" {
            // Out of the cluster for good: neither up nor down.
            "-"
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
            m["ended"]
                .as_str()
                .filter(|how| *how != "left")
                .or(m["status"].as_str())
                .unwrap_or("?"),
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
        AdminCommand::Join(args) => change(args, false),
        AdminCommand::Leave(args) => change(args, true),
        AdminCommand::Remove(args) => remove(args),
        AdminCommand::Certs(args) => crate::certs::run(args),
        AdminCommand::Backup(args) => crate::backup::backup(args),
        AdminCommand::Restore(args) => crate::backup::restore(args),
    }
}

fn runtime() -> anyhow::Result<(tokio::runtime::Runtime, reqwest::Client)> {
    crate::connect::runtime_with_timeout(std::time::Duration::from_secs(5))
}

async fn post(http: &reqwest::Client, url: &str, path: &str) -> anyhow::Result<Value> {
    let r = http
        .post(format!("{}{path}", url.trim_end_matches('/')))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let status = r.status();
    let body: Value = r.json().await.unwrap_or_default();
    if !status.is_success() {
        bail!(
            "{url} refused ({status}): {}",
            body["message"].as_str().unwrap_or("no reason given")
        );
    }
    Ok(body)
}

async fn print_plan(http: &reqwest::Client, url: &str, query: &str) -> anyhow::Result<()> {
    let r = http
        .get(format!("{}/admin/plan?{query}", url.trim_end_matches('/')))
        .send()
        .await
        .with_context(|| format!("cannot reach {url}"))?;
    let plan: Value = r.json().await?;
    if let Some(msg) = plan["message"].as_str() {
        bail!("{msg}");
    }
    println!(
        "plan: {:.1}% of the key space (about {} keys) moves to new owners; {} members remain",
        plan["share"].as_f64().unwrap_or(0.0) * 100.0,
        plan["keys_estimate"],
        plan["remaining_members"]
    );
    for m in plan["moves"].as_array().into_iter().flatten() {
        println!(
            "  -> {:<14} {:>5.1}% (about {} keys)",
            m["to"].as_str().unwrap_or("?"),
            m["share"].as_f64().unwrap_or(0.0) * 100.0,
            m["keys_estimate"]
        );
    }
    Ok(())
}

/// This node's own id and status, as it declares them.
async fn own_status(http: &reqwest::Client, url: &str) -> anyhow::Result<(String, String)> {
    let v = fetch(http, url, "members").await?;
    let id = v["node"].as_str().unwrap_or_default().to_owned();
    let status = v["members"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|m| m["id"] == id.as_str())
        .and_then(|m| m["status"].as_str())
        .unwrap_or("?")
        .to_owned();
    Ok((id, status))
}

fn change(args: ChangeArgs, leave: bool) -> anyhow::Result<ExitCode> {
    let (rt, http) = runtime()?;
    rt.block_on(async {
        let (id, status) = own_status(&http, &args.node.url).await?;
        if leave {
            print_plan(&http, &args.node.url, &format!("leave={id}")).await?;
            post(&http, &args.node.url, "/admin/leave").await?;
            println!("{id} is leaving");
        } else if status == "up" {
            println!("{id} is up: it has joined");
            return Ok(ExitCode::SUCCESS);
        } else if status != "joining" {
            bail!("{id} is {status}, not joining; a new node joins by starting with --seeds");
        }
        if args.no_wait {
            return Ok(ExitCode::SUCCESS);
        }
        let target = if leave { "left" } else { "up" };
        // A spinner until the transfer's size is known; then a bar of ranges confirmed (it used
        // to start full at "0/0 ranges").
        let bar = indicatif::ProgressBar::new_spinner();
        bar.set_style(
            indicatif::ProgressStyle::with_template("{msg} {spinner} waiting for the transfer plan, {elapsed} elapsed")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        bar.enable_steady_tick(std::time::Duration::from_millis(200));
        let mut sized = false;
        bar.set_message(if leave { "leaving" } else { "joining" });
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(args.timeout);
        loop {
            let (_, status) = own_status(&http, &args.node.url).await?;
            if status == target && everyone_sees(&http, &args.node.url, &id, target).await {
                bar.finish_and_clear();
                println!("{id} is {target}");
                if leave {
                    println!(
                        "{id} no longer serves (its clients get 503 not_a_member) and its data lives on the other members: stop its process. To use the machine for a node again, wipe its data directory and start it with --seeds."
                    );
                }
                return Ok(ExitCode::SUCCESS);
            }
            if let Ok(st) = fetch(&http, &args.node.url, "stats").await {
                let t = &st["transfer"];
                let total = t["ranges"].as_u64().unwrap_or(0);
                if total > 0 {
                    if !sized {
                        sized = true;
                        bar.disable_steady_tick();
                        bar.set_style(
                            indicatif::ProgressStyle::with_template(
                                "{msg} {bar:40} {pos}/{len} ranges confirmed, {elapsed} elapsed, ETA {eta}",
                            )
                            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
                        );
                    }
                    bar.set_length(total);
                    bar.set_position(t["confirmed"].as_u64().unwrap_or(0).min(total));
                }
            }
            if std::time::Instant::now() > deadline {
                bar.abandon();
                println!(
                    "still {status} after {} s; the change goes on",
                    args.timeout
                );
                return Ok(ExitCode::from(2));
            }
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
    })
}

/// Whether every other member that answers shows `id` with `status` (so the node can be stopped
/// once it left: the others know).
async fn everyone_sees(http: &reqwest::Client, url: &str, id: &str, status: &str) -> bool {
    let Ok(v) = fetch(http, url, "members").await else {
        return false;
    };
    for m in v["members"].as_array().into_iter().flatten() {
        if m["id"] == id || m["status"] == "left" {
            continue;
        }
        let other = format!(
            "{}://{}",
            dynamokv_client::tls::scheme_of(url),
            m["http_addr"].as_str().unwrap_or_default()
        );
        let Ok(view) = fetch(http, &other, "members").await else {
            continue;
        };
        let seen = view["members"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|x| x["id"] == id)
            .and_then(|x| x["status"].as_str());
        if seen != Some(status) {
            return false;
        }
    }
    true
}

fn remove(args: RemoveArgs) -> anyhow::Result<ExitCode> {
    let (rt, http) = runtime()?;
    rt.block_on(async {
        let force = if args.force { "force=true" } else { "" };
        let plan = format!("remove={}&{force}", args.id);
        print_plan(&http, &args.node.url, &plan).await?;
        let path = format!("/admin/remove/{}?{force}", args.id);
        post(&http, &args.node.url, &path).await?;
        println!(
            "{} removed; its ranges are rebuilt from the surviving replicas by anti-entropy (see dynamokv admin status)",
            args.id
        );
        Ok(ExitCode::SUCCESS)
    })
}

/// The failed exchanges between two `failed_by` figures, by reason: ": 2 timed out, 1 peer
/// lost", or nothing when none failed.
fn failure_reasons(now: &Value, before: &Value) -> String {
    let reasons: Vec<String> = [
        ("peer_lost", "peer lost"),
        ("timed_out", "timed out"),
        ("peer_storage", "peer's storage failed"),
        ("storage", "storage failed here"),
        ("bad_answer", "bad answer"),
    ]
    .iter()
    .filter_map(|(key, label)| {
        let n = now[key]
            .as_u64()
            .unwrap_or(0)
            .saturating_sub(before[key].as_u64().unwrap_or(0));
        (n > 0).then(|| format!("{n} {label}"))
    })
    .collect();
    if reasons.is_empty() {
        String::new()
    } else {
        format!(": {}", reasons.join(", "))
    }
}

fn repair(args: RepairArgs) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let http = dynamokv_client::tls::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()?;
        let url = format!("{}/admin/repair", args.node.url.trim_end_matches('/'));
        // The node's counters are totals since it started: this round's figures are the change.
        let before = fetch(&http, &args.node.url, "repair").await?;
        let delta = |now: &Value, key: &str| {
            now[key]
                .as_u64()
                .unwrap_or(0)
                .saturating_sub(before[key].as_u64().unwrap_or(0))
        };
        let r = http
            .post(&url)
            .send()
            .await
            .with_context(|| format!("cannot reach {}", args.node.url))?;
        if !r.status().is_success() {
            bail!("{} answered {}", args.node.url, r.status());
        }
        let started: Value = r.json().await?;
        let round = started["round"].as_u64().context("no round id in the answer")?;
        let node = started["node"].as_str().unwrap_or("?").to_owned();
        println!("repair round {round} started on {node}");
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(args.timeout);
        let mut last_line = String::new();
        loop {
            let p = fetch(&http, &args.node.url, "repair").await?;
            if p["last_round"].as_u64().unwrap_or(0) >= round {
                println!(
                    "repair round {round} finished on {node}: {} keys repaired, {} exchanges ({} failed{}, {} postponed) during this round",
                    delta(&p, "keys_repaired"),
                    delta(&p, "exchanges"),
                    delta(&p, "failed"),
                    failure_reasons(&p["failed_by"], &before["failed_by"]),
                    delta(&p, "postponed"),
                );
                if delta(&p, "postponed") > 0 {
                    println!(
                        "  postponed: the peer's view of the ring differed for a moment, or its tree was being built; those pairs are compared again next round"
                    );
                }
                let skipped = p["last_round_skipped"].as_u64().unwrap_or(0);
                if skipped > 0 && p["last_round"].as_u64() == Some(round) {
                    eprintln!(
                        "{skipped} range comparisons were skipped because the peer was down: those ranges may still differ; run the repair again once every node is up"
                    );
                    return Ok(ExitCode::from(3));
                }
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
        let http = dynamokv_client::tls::builder()
            .timeout(std::time::Duration::from_secs(5))
            .build()?;
        let first = members(&http, &args.node.url).await?;
        if !args.all {
            if args.json {
                println!("{first}");
            } else {
                print_view(&first);
            }
            // A node that serves nothing (not joined, or its instance ended) is not healthy.
            let serves = first["ended"].is_null() && first["not_joined"].is_null();
            return Ok(if serves {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(2)
            });
        }
        let mut versions = BTreeSet::new();
        let mut clusters = BTreeSet::new();
        let mut all_up = true;
        let mut views = Vec::new();
        for m in first["members"].as_array().into_iter().flatten() {
            if m["status"] == "left" {
                continue;
            }
            let url = format!(
                "{}://{}",
                dynamokv_client::tls::scheme_of(&args.node.url),
                m["http_addr"].as_str().unwrap_or_default()
            );
            match members(&http, &url).await {
                Ok(v) => {
                    versions.insert(v["ring_version"].as_str().unwrap_or_default().to_owned());
                    clusters.insert(v["cluster_id"].as_str().unwrap_or_default().to_owned());
                    all_up &= v["members"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .all(|x| x["up"].as_bool() == Some(true) || x["status"] == "left");
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
            if clusters.len() > 1 {
                println!("members disagree on the cluster id: {clusters:?}");
            }
            if versions.len() == 1 && all_up && clusters.len() == 1 {
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
        Ok(if versions.len() == 1 && all_up && clusters.len() <= 1 {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        })
    })
}
