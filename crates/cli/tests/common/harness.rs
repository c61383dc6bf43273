//! The real-process fault harness: a concurrent HTTP workload that records a history, and the
//! collection of every replica's final copy for the checker.

use super::{Node, SECRET, http};
use base64::Engine as _;
use dynamokv_core::{ActorId, ClockEntry, ContextCodec, Dot, Object, Sibling, VersionVector};
use dynamokv_sim::checker::{Outcome, Violation, WriteRecord, check};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// A running workload.
pub struct Workload {
    writes: Arc<Mutex<Vec<WriteRecord>>>,
    reads: Arc<Mutex<(u64, u64)>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    keys: usize,
}

fn key(i: usize) -> String {
    format!("fk{i}")
}

fn parse_dot(v: &str) -> Option<Dot> {
    let (a, c) = v.split_once(':')?;
    Some(Dot {
        actor: ActorId(u64::from_str_radix(a, 16).ok()?),
        counter: c.parse().ok()?,
    })
}

async fn outcome_of(
    r: Result<reqwest::Response, reqwest::Error>,
) -> (Outcome, Option<Dot>, Option<String>) {
    match r {
        Err(e) if e.is_connect() => (
            Outcome::Failed {
                maybe_written: false,
            },
            None,
            None,
        ),
        Err(_) => (Outcome::Unknown, None, None),
        Ok(resp) => {
            let status = resp.status().as_u16();
            let dot = resp
                .headers()
                .get("x-version")
                .and_then(|v| v.to_str().ok())
                .and_then(parse_dot);
            let ctx = resp
                .headers()
                .get("x-context")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            if (200..300).contains(&status) {
                return (Outcome::Ok, dot, ctx);
            }
            let body: Value = resp.json().await.unwrap_or_default();
            let outcome = match (status, body["error"].as_str()) {
                (503, Some("unavailable")) => Outcome::Failed {
                    maybe_written: body["maybe_written"].as_bool().unwrap_or(true),
                },
                (400..=499, _) => Outcome::Failed {
                    maybe_written: false,
                },
                _ => Outcome::Unknown,
            };
            (outcome, None, None)
        }
    }
}

/// The workload's name for key `i`.
pub fn key_name(i: usize) -> String {
    key(i)
}

/// Starts `clients` closed-loop clients against `urls` over `keys` keys.
pub fn start_workload(urls: Vec<String>, clients: usize, keys: usize) -> Workload {
    let writes = Arc::new(Mutex::new(Vec::new()));
    let reads = Arc::new(Mutex::new((0, 0)));
    let stop = Arc::new(AtomicBool::new(false));
    let codec = ContextCodec::from_passphrase(SECRET);
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (urls, writes, reads, stop, codec) = (
            urls.clone(),
            writes.clone(),
            reads.clone(),
            stop.clone(),
            codec.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let http = reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
                .unwrap();
            let mut contexts: BTreeMap<usize, String> = BTreeMap::new();
            let mut n = 0u64;
            let mut rng = (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
            let mut next = move || {
                rng ^= rng << 13;
                rng ^= rng >> 7;
                rng ^= rng << 17;
                rng
            };
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                let k = (next() % keys as u64) as usize;
                let url = &urls[(next() % urls.len() as u64) as usize];
                let target = format!("{url}/kv/{}", key(k));
                let roll = next() % 100;
                if roll < 30 {
                    let r = http.get(&target).send().await;
                    let mut counts = reads.lock().unwrap();
                    counts.0 += 1;
                    if let Ok(resp) = r
                        && [200, 300, 404].contains(&resp.status().as_u16())
                    {
                        counts.1 += 1;
                        if let Some(ctx) = resp
                            .headers()
                            .get("x-context")
                            .and_then(|v| v.to_str().ok())
                        {
                            contexts.insert(k, ctx.to_owned());
                        }
                    }
                    continue;
                }
                // 40% puts with the last context, 15% blind puts, 15% deletes with the last
                // context (a put when there is none: deletes without one are not checkable).
                let (ctx, delete) = match roll {
                    30..70 => (contexts.get(&k).cloned(), false),
                    70..85 => (None, false),
                    _ => {
                        let ctx = contexts.get(&k).cloned();
                        let delete = ctx.is_some();
                        (ctx, delete)
                    }
                };
                let value = format!("c{c}-{n}");
                let mut req = if delete {
                    http.delete(&target)
                } else {
                    http.put(&target).body(value.clone())
                };
                if let Some(x) = &ctx {
                    req = req.header("x-context", x);
                }
                let context = ctx
                    .as_deref()
                    .map(|t| codec.decode(key(k).as_bytes(), t).expect("our own context"))
                    .unwrap_or_else(VersionVector::new);
                let (outcome, dot, new_ctx) = outcome_of(req.send().await).await;
                if let Some(x) = new_ctx {
                    contexts.insert(k, x);
                }
                writes.lock().unwrap().push(WriteRecord {
                    key: key(k).into_bytes(),
                    value: (!delete).then(|| value.into_bytes()),
                    context,
                    outcome,
                    dot,
                });
            }
        }));
    }
    Workload {
        writes,
        reads,
        stop,
        tasks,
        keys,
    }
}

/// What a workload did.
pub struct History {
    /// Every write.
    pub writes: Vec<WriteRecord>,
    /// Keys used.
    pub keys: usize,
    /// Reads sent, and reads answered (200, 300 or 404).
    pub reads: (u64, u64),
}

impl Workload {
    /// Stops the clients and returns the history.
    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let writes = self.writes.lock().unwrap().clone();
        let reads = *self.reads.lock().unwrap();
        let ok = writes.iter().filter(|w| w.outcome == Outcome::Ok).count();
        eprintln!(
            "workload: {} writes ({} acknowledged), {} reads ({} answered)",
            writes.len(),
            ok,
            reads.0,
            reads.1
        );
        History {
            writes,
            keys: self.keys,
            reads,
        }
    }
}

fn parse_object(v: &Value) -> Object {
    let actor = |s: &Value| ActorId(u64::from_str_radix(s.as_str().unwrap(), 16).unwrap());
    let clock = VersionVector::from_entries(v["clock"].as_array().unwrap().iter().map(|e| {
        (
            actor(&e["actor"]),
            ClockEntry {
                counter: e["counter"].as_u64().unwrap(),
                timestamp: e["timestamp"].as_u64().unwrap(),
            },
        )
    }));
    let siblings = v["siblings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| Sibling {
            dot: Dot {
                actor: actor(&s["actor"]),
                counter: s["counter"].as_u64().unwrap(),
            },
            timestamp: s["timestamp"].as_u64().unwrap(),
            value: s["value"]
                .as_str()
                .map(|b| base64::engine::general_purpose::STANDARD.decode(b).unwrap()),
        })
        .collect();
    Object::from_parts(clock, siblings).expect("a valid object")
}

/// After the faults healed: waits for the ring, reads every key at R=N (read repair), and runs
/// the checker over the replicas' copies.
pub async fn settle_and_check(nodes: &[&Node], history: &History) -> Vec<Violation> {
    super::wait_for_ring(nodes, nodes.len()).await;
    let c = http();
    for k in 0..history.keys {
        let mut tries = 0;
        loop {
            let r = c
                .get(format!("{}/kv/{}?r=3", nodes[0].url, key(k)))
                .send()
                .await;
            if r.as_ref().is_ok_and(|r| r.status() != 503) || tries > 50 {
                break;
            }
            tries += 1;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let by_id: BTreeMap<&str, &Node> = nodes.iter().map(|n| (n.id.as_str(), *n)).collect();
    let mut replicas = BTreeMap::new();
    for k in 0..history.keys {
        let pref: Value = c
            .get(format!("{}/admin/preference-list/{}", nodes[0].url, key(k)))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let mut copies = Vec::new();
        for id in pref["nodes"].as_array().unwrap() {
            let id = id.as_str().unwrap();
            let node = by_id[id];
            let r = c
                .get(format!("{}/admin/local/{}", node.url, key(k)))
                .send()
                .await
                .unwrap();
            let obj = if r.status() == 404 {
                None
            } else {
                Some(parse_object(&r.json().await.unwrap()))
            };
            copies.push((id.to_owned(), obj));
        }
        replicas.insert(key(k).into_bytes(), copies);
    }
    check(&history.writes, &replicas)
}
