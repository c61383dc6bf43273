//! `dynamokv admin status`: the cluster as one node (or every node) sees it.

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
    let AdminCommand::Status(args) = cmd;
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
