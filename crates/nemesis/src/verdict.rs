//! After the faults: heal, let hinted handoff and anti-entropy (not reads) bring every replica
//! together, collect each key's copies from its N owners, and run the simulator's checker.

use crate::workload::{History, key_name};
use base64::Engine as _;
use dynamokv_core::{ActorId, ClockEntry, Dot, Object, Sibling, VersionVector};
use dynamokv_sim::checker::{Violation, check};
use serde_json::Value;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

/// The verdict of a run.
#[derive(Debug, Default)]
pub struct Verdict {
    /// Acknowledged writes lost.
    pub lost: usize,
    /// False siblings.
    pub false_siblings: usize,
    /// Keys whose owners do not hold the same object.
    pub not_converged: usize,
    /// Other violations (resurrections, misplaced copies).
    pub other: usize,
    /// Every violation, described.
    pub violations: Vec<String>,
    /// From healing to all replicas converged.
    pub converged_after: Option<Duration>,
}

impl Verdict {
    /// No broken promise.
    pub fn clean(&self) -> bool {
        self.violations.is_empty()
    }
}

async fn json(c: &reqwest::Client, url: &str) -> Result<Value, String> {
    let r = c.get(url).send().await.map_err(|e| e.to_string())?;
    if !r.status().is_success() && r.status() != 404 {
        return Err(format!("{url}: {}", r.status()));
    }
    r.json().await.map_err(|e| e.to_string())
}

/// Polls every node's `/admin/ring` until each lists `expect` members (those that left aside),
/// all up and joined, with one ring version: that version, or `None` after `within`.
pub async fn agreed_ring(
    c: &reqwest::Client,
    urls: &[String],
    expect: usize,
    within: Duration,
) -> Option<String> {
    let deadline = Instant::now() + within;
    loop {
        let mut versions = std::collections::BTreeSet::new();
        let mut ok = true;
        for u in urls {
            match json(c, &format!("{u}/admin/ring")).await {
                Ok(v) => {
                    let members: Vec<Value> = v["members"]
                        .as_array()
                        .cloned()
                        .unwrap_or_default()
                        .into_iter()
                        .filter(|m| m["status"] != "Left")
                        .collect();
                    // Up as seen from here, and joined (status up, not still joining).
                    let up = members
                        .iter()
                        .filter(|m| {
                            m["up"] == true
                                && m["status"]
                                    .as_str()
                                    .is_some_and(|s| s.eq_ignore_ascii_case("up"))
                        })
                        .count();
                    ok &= members.len() == expect && up == expect;
                    versions.insert(v["version"].as_str().unwrap_or_default().to_owned());
                }
                Err(_) => ok = false,
            }
        }
        if ok && versions.len() == 1 {
            return versions.into_iter().next();
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until every node sees all `urls.len()` members up and joined, with one ring version.
pub async fn wait_for_ring(c: &reqwest::Client, urls: &[String], within: Duration) -> bool {
    agreed_ring(c, urls, urls.len(), within).await.is_some()
}

/// Waits until no node holds hints.
async fn wait_for_hints(c: &reqwest::Client, urls: &[String], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        let mut pending = 0;
        for u in urls {
            match json(c, &format!("{u}/admin/stats")).await {
                Ok(v) => pending += v["hints_pending"].as_u64().unwrap_or(1),
                Err(_) => pending += 1,
            }
        }
        if pending == 0 {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    false
}

/// Runs an anti-entropy round on every node and waits for it to finish with no range skipped.
async fn repair_all(c: &reqwest::Client, urls: &[String], within: Duration) -> bool {
    let deadline = Instant::now() + within;
    for u in urls {
        loop {
            let round = match c.post(format!("{u}/admin/repair")).send().await {
                Ok(r) => r
                    .json::<Value>()
                    .await
                    .ok()
                    .and_then(|v| v["round"].as_u64()),
                Err(_) => None,
            };
            let Some(round) = round else {
                if Instant::now() > deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            };
            let finished = loop {
                if Instant::now() > deadline {
                    return false;
                }
                if let Ok(p) = json(c, &format!("{u}/admin/repair")).await
                    && p["last_round"].as_u64().unwrap_or(0) >= round
                {
                    break p["last_round_skipped"].as_u64().unwrap_or(0) == 0;
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            };
            if finished {
                break;
            }
        }
    }
    true
}

/// A `/admin/local` answer as an object.
pub fn parse_object(v: &Value) -> Option<Object> {
    let actor = |s: &Value| {
        s.as_str()
            .and_then(|s| u64::from_str_radix(s, 16).ok())
            .map(ActorId)
    };
    let clock = v["clock"]
        .as_array()?
        .iter()
        .map(|e| {
            Some((
                actor(&e["actor"])?,
                ClockEntry {
                    counter: e["counter"].as_u64()?,
                    timestamp: e["timestamp"].as_u64()?,
                },
            ))
        })
        .collect::<Option<Vec<_>>>()?;
    let siblings = v["siblings"]
        .as_array()?
        .iter()
        .map(|s| {
            Some(Sibling {
                dot: Dot {
                    actor: actor(&s["actor"])?,
                    counter: s["counter"].as_u64()?,
                },
                timestamp: s["timestamp"].as_u64()?,
                value: match s["value"].as_str() {
                    None => None,
                    Some(b) => Some(base64::engine::general_purpose::STANDARD.decode(b).ok()?),
                },
                expires: s["expires"].as_u64(),
                kind: match s["kind"].as_str() {
                    Some("counter") => dynamokv_core::version::ValueKind::Counter,
                    _ => dynamokv_core::version::ValueKind::Bytes,
                },
            })
        })
        .collect::<Option<Vec<_>>>()?;
    Object::from_parts(VersionVector::from_entries(clock), siblings).ok()
}

/// Each key's copies on its owners: `(node id, object or none)`. `urls` by node id.
pub async fn replicas(
    c: &reqwest::Client,
    urls: &BTreeMap<String, String>,
    keys: usize,
) -> Result<BTreeMap<Vec<u8>, Vec<(String, Option<Object>)>>, String> {
    let any = urls.values().next().ok_or("no node")?;
    let mut out = BTreeMap::new();
    for k in 0..keys {
        let key = key_name(k);
        let pref = json(c, &format!("{any}/admin/preference-list/{key}")).await?;
        let mut copies = Vec::new();
        for id in pref["nodes"].as_array().ok_or("no preference list")? {
            let id = id.as_str().unwrap_or_default().to_owned();
            let url = urls.get(&id).ok_or_else(|| format!("unknown node {id}"))?;
            let r = c
                .get(format!("{url}/admin/local/{key}"))
                .send()
                .await
                .map_err(|e| e.to_string())?;
            let obj = if r.status() == 404 {
                None
            } else {
                let v: Value = r.json().await.map_err(|e| e.to_string())?;
                Some(parse_object(&v).ok_or_else(|| format!("unreadable copy of {key} on {id}"))?)
            };
            copies.push((id, obj));
        }
        out.insert(key.into_bytes(), copies);
    }
    Ok(out)
}

/// Once the faults are healed: waits for the ring, the hints and anti-entropy rounds (no read
/// repair), then checks; retries the rounds until every key converged or `within` passed.
pub async fn settle(
    c: &reqwest::Client,
    urls: &BTreeMap<String, String>,
    history: &History,
    within: Duration,
) -> Verdict {
    let start = Instant::now();
    let deadline = start + within;
    let list: Vec<String> = urls.values().cloned().collect();
    let mut verdict = Verdict::default();
    if !wait_for_ring(c, &list, within).await {
        verdict
            .violations
            .push("the ring did not settle after healing".into());
        return verdict;
    }
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let hints = wait_for_hints(c, &list, left).await;
        let repaired =
            repair_all(c, &list, deadline.saturating_duration_since(Instant::now())).await;
        let violations = match replicas(c, urls, history.keys).await {
            Ok(r) => check(&history.writes, &r),
            Err(e) => {
                verdict.violations = vec![format!("cannot collect the replicas: {e}")];
                return verdict;
            }
        };
        let diverged = violations
            .iter()
            .filter(|v| matches!(v, Violation::Diverged { .. }))
            .count();
        if (diverged == 0 && hints && repaired) || Instant::now() > deadline {
            verdict = Verdict::default();
            for v in &violations {
                match v {
                    Violation::LostWrite { .. } => verdict.lost += 1,
                    Violation::FalseSibling { .. } => verdict.false_siblings += 1,
                    Violation::Diverged { .. } => verdict.not_converged += 1,
                    _ => verdict.other += 1,
                }
                verdict.violations.push(v.to_string());
            }
            if !hints {
                verdict.violations.push("hints were still pending".into());
            }
            if diverged == 0 {
                verdict.converged_after = Some(start.elapsed());
            }
            return verdict;
        }
    }
}
