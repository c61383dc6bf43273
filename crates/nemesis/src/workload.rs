//! The clients of a real-process run: closed-loop HTTP clients over a few keys, each operation
//! a read (30%), a put with the context of the client's last read of the key (40%), a blind
//! put (15%) or a delete with that context (15%), every value unique. Writes are recorded for
//! the checker; every request is counted against the nemesis phase it started in, for the
//! availability per phase.

use dynamokv_core::{ActorId, ContextCodec, Dot, VersionVector};
use dynamokv_sim::checker::{Outcome, WriteRecord};
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The workload's name for key `i`.
pub fn key_name(i: usize) -> String {
    format!("fk{i}")
}

/// Requests started in one phase: sent, and answered (reads: 200, 300 or 404; writes: 2xx).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Tally {
    /// Requests sent.
    pub sent: u64,
    /// Requests answered with a result.
    pub answered: u64,
}

impl Tally {
    /// The share answered (1 when nothing was sent).
    pub fn share(&self) -> f64 {
        if self.sent == 0 {
            1.0
        } else {
            self.answered as f64 / self.sent as f64
        }
    }
}

/// A running workload.
pub struct Workload {
    writes: Arc<Mutex<Vec<WriteRecord>>>,
    tallies: Arc<Mutex<BTreeMap<usize, Tally>>>,
    reads: Arc<Mutex<Tally>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    keys: usize,
}

/// What a workload did.
pub struct History {
    /// Every write.
    pub writes: Vec<WriteRecord>,
    /// Keys used.
    pub keys: usize,
    /// Requests per phase.
    pub tallies: BTreeMap<usize, Tally>,
    /// Reads alone, over every phase.
    pub reads: Tally,
}

impl History {
    /// Reads and writes over every phase.
    pub fn total(&self) -> Tally {
        self.tallies.values().fold(Tally::default(), |a, t| Tally {
            sent: a.sent + t.sent,
            answered: a.answered + t.answered,
        })
    }

    /// Acknowledged writes.
    pub fn acknowledged(&self) -> usize {
        self.writes
            .iter()
            .filter(|w| w.outcome == Outcome::Ok)
            .count()
    }
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
            let header = |name: &str| {
                resp.headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            let dot = header("x-version").as_deref().and_then(parse_dot);
            let ctx = header("x-context");
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

/// What a partition-aware client routes by: the ring, N, and each member's URL.
struct Route {
    ring: dynamokv_core::ring::Ring,
    n: usize,
    urls: BTreeMap<String, String>,
}

impl Route {
    /// The ring as the first of `urls` that answers describes it.
    async fn fetch(http: &reqwest::Client, urls: &[String]) -> Option<Route> {
        for url in urls {
            let Ok(resp) = http.get(format!("{url}/admin/ring")).send().await else {
                continue;
            };
            let Ok(info) = resp.json::<dynamokv_core::node::RingInfo>().await else {
                continue;
            };
            let ring = dynamokv_client::cluster::ring_of_info(&info).ok()?;
            let urls = info
                .members
                .iter()
                .map(|m| {
                    (
                        m.member.id.clone(),
                        format!("http://{}", m.member.http_addr),
                    )
                })
                .collect();
            return Some(Route {
                ring,
                n: usize::from(info.n),
                urls,
            });
        }
        None
    }

    /// The primaries of `key`, in preference order, as URLs.
    fn primaries(&self, key: &str) -> Vec<&String> {
        dynamokv_core::preference::preference_list(&self.ring, key.as_bytes(), self.n, |_| true)
            .primaries
            .iter()
            .filter_map(|id| self.urls.get(id))
            .collect()
    }
}

/// Starts `clients` closed-loop clients on `rt` against `urls` over `keys` keys; `phase` is
/// read when each request starts. `secret` is the cluster's (to read the contexts it sends).
/// `partition_aware`: each request goes to its key's first primary that is not skipped, as the
/// client library's partition-aware routing does; otherwise to a random node not skipped.
pub fn start(
    rt: &tokio::runtime::Handle,
    urls: Vec<String>,
    clients: usize,
    keys: usize,
    secret: &str,
    phase: Arc<AtomicUsize>,
    partition_aware: bool,
) -> Workload {
    let writes = Arc::new(Mutex::new(Vec::new()));
    let tallies = Arc::new(Mutex::new(BTreeMap::new()));
    let reads = Arc::new(Mutex::new(Tally::default()));
    let stop = Arc::new(AtomicBool::new(false));
    let codec = ContextCodec::from_passphrase(secret);
    // One client library instance shared by the clients, as an application's workers share
    // one: a node that one of them finds silent is skipped by all.
    let suspects = Arc::new(dynamokv_client::Suspects::new());
    let mut tasks = Vec::new();
    for c in 0..clients {
        let (urls, writes, tallies, reads, stop, codec, phase, suspects) = (
            urls.clone(),
            writes.clone(),
            tallies.clone(),
            reads.clone(),
            stop.clone(),
            codec.clone(),
            phase.clone(),
            suspects.clone(),
        );
        tasks.push(rt.spawn(async move {
            // The policy of the client library: a node gets ATTEMPT_TIMEOUT to answer, and one
            // that does not (or cannot be reached) is skipped for a while.
            let http = reqwest::Client::builder()
                .timeout(dynamokv_client::cluster::ATTEMPT_TIMEOUT)
                .connect_timeout(Duration::from_secs(1))
                .build()
                .expect("an HTTP client");
            let route = if partition_aware {
                Route::fetch(&http, &urls).await
            } else {
                None
            };
            let count = |p: usize, ok: bool| {
                let mut t = tallies.lock().unwrap_or_else(|e| e.into_inner());
                let t: &mut Tally = t.entry(p).or_default();
                t.sent += 1;
                t.answered += u64::from(ok);
            };
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
                // A random node among those not skipped (all of them when every one is): the
                // load of a skipped node spreads over the others, not onto its neighbour.
                let usable: Vec<&String> = urls.iter().filter(|u| !suspects.skip(u)).collect();
                let pool: Vec<&String> = if usable.is_empty() {
                    urls.iter().collect()
                } else {
                    usable
                };
                let random = pool[(next() % pool.len() as u64) as usize];
                let url = route
                    .as_ref()
                    .and_then(|r| {
                        r.primaries(&key_name(k))
                            .into_iter()
                            .find(|u| !suspects.skip(u))
                    })
                    .unwrap_or(random);
                let target = format!("{url}/kv/{}", key_name(k));
                let roll = next() % 100;
                let p = phase.load(Ordering::Relaxed);
                let heard = |r: &Result<reqwest::Response, reqwest::Error>| match r {
                    Ok(_) => suspects.answered(url),
                    Err(_) => suspects.failed(url),
                };
                if roll < 30 {
                    let r = http.get(&target).send().await;
                    heard(&r);
                    let answered = match r {
                        Ok(resp) if [200, 300, 404].contains(&resp.status().as_u16()) => {
                            if let Some(ctx) = resp
                                .headers()
                                .get("x-context")
                                .and_then(|v| v.to_str().ok())
                            {
                                contexts.insert(k, ctx.to_owned());
                            }
                            true
                        }
                        _ => false,
                    };
                    count(p, answered);
                    {
                        let mut r = reads.lock().unwrap_or_else(|e| e.into_inner());
                        r.sent += 1;
                        r.answered += u64::from(answered);
                    }
                    if !answered {
                        tokio::time::sleep(Duration::from_millis(20)).await;
                    }
                    continue;
                }
                // Deletes need a context (deletes without one are not checkable): without one
                // it is a put.
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
                    .and_then(|t| codec.decode(key_name(k).as_bytes(), t).ok())
                    .unwrap_or_else(VersionVector::new);
                let sent = req.send().await;
                heard(&sent);
                let (outcome, dot, new_ctx) = outcome_of(sent).await;
                count(p, outcome == Outcome::Ok);
                if let Some(x) = new_ctx {
                    contexts.insert(k, x);
                }
                if outcome != Outcome::Ok {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
                writes
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(WriteRecord {
                        key: key_name(k).into_bytes(),
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
        tallies,
        reads,
        stop,
        tasks,
        keys,
    }
}

impl Workload {
    /// Stops the clients and returns the history.
    pub async fn stop(self) -> History {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            let _ = t.await;
        }
        let writes = self
            .writes
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let tallies = self
            .tallies
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let reads = *self.reads.lock().unwrap_or_else(|e| e.into_inner());
        History {
            writes,
            keys: self.keys,
            tallies,
            reads,
        }
    }
}
