//! A run: a namespaced cluster under a continuous workload while the nemesis cuts links,
//! kills, pauses and restarts nodes on a schedule drawn from a seed; then the heal, the settle
//! and the verdict.

use crate::cluster::{Cluster, SECRET};
use crate::netns::Net;
use crate::verdict::{Verdict, settle, wait_for_ring};
use crate::workload::{self, Tally};
use dynamokv_core::rng::Rng;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// What the nemesis does in one fault phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// One node cut off from every other node (clients still reach it).
    Isolate,
    /// Three nodes on one side, two on the other.
    Split,
    /// Two sides that cannot reach each other and one node that reaches both.
    Bridge,
    /// One node's packets to the others vanish; theirs to it arrive.
    Asymmetric,
    /// One node's links go down and up every few hundred milliseconds.
    Flap,
    /// One node killed with SIGKILL (restarted at the heal).
    Kill,
    /// One node stopped with SIGSTOP (continued at the heal).
    Pause,
}

impl Fault {
    /// Every kind, in the default schedule's rotation.
    pub const ALL: [Fault; 7] = [
        Fault::Isolate,
        Fault::Split,
        Fault::Bridge,
        Fault::Asymmetric,
        Fault::Flap,
        Fault::Kill,
        Fault::Pause,
    ];

    /// Its name on the command line and in reports.
    pub fn name(self) -> &'static str {
        match self {
            Fault::Isolate => "isolate",
            Fault::Split => "split",
            Fault::Bridge => "bridge",
            Fault::Asymmetric => "asymmetric",
            Fault::Flap => "flap",
            Fault::Kill => "kill",
            Fault::Pause => "pause",
        }
    }

    /// The kind named `s`.
    pub fn parse(s: &str) -> Result<Fault, String> {
        Fault::ALL
            .into_iter()
            .find(|f| f.name() == s)
            .ok_or_else(|| {
                let names: Vec<_> = Fault::ALL.iter().map(|f| f.name()).collect();
                format!("unknown fault {s:?}; the faults are {}", names.join(", "))
            })
    }
}

/// How to run.
#[derive(Debug, Clone)]
pub struct RunConfig {
    /// The `dynamokv` binary.
    pub bin: PathBuf,
    /// Where the nodes' data goes.
    pub dir: PathBuf,
    /// Nodes (at least 5 for the split and bridge faults).
    pub nodes: usize,
    /// Concurrent clients.
    pub clients: usize,
    /// Keys they share.
    pub keys: usize,
    /// Seed of the schedule (which fault, which nodes, how long).
    pub seed: u64,
    /// The faults, taken in this order, round and round (a seed shuffles the nodes and
    /// lengths, not the order).
    pub faults: Vec<Fault>,
    /// How many fault phases (each followed by a heal phase); `None`: until `duration`.
    pub phases: Option<usize>,
    /// How long to run the schedule when `phases` is `None`.
    pub duration: Duration,
    /// Length of a fault phase: drawn in this range.
    pub fault_len: (Duration, Duration),
    /// Length of a heal phase.
    pub heal_len: Duration,
    /// Extra flags for every node.
    pub node_flags: Vec<String>,
    /// Clients send each request to its key's first primary that is not skipped
    /// (partition-aware, as `Routing::Client` in the client library), instead of a random node.
    pub partition_aware: bool,
}

/// What happened, and the verdict.
#[derive(Debug, Default)]
pub struct Report {
    /// `(seconds since the workload started, what happened)`.
    pub timeline: Vec<(f64, String)>,
    /// Requests answered per phase kind (`healthy` between faults).
    pub availability: BTreeMap<String, Tally>,
    /// Seconds spent in each phase kind.
    pub seconds: BTreeMap<String, f64>,
    /// Writes sent and acknowledged.
    pub writes: (usize, usize),
    /// Per fault phase: its kind, and how long after the heal every node saw every other up
    /// again (`None`: not within 30 s).
    pub recoveries: Vec<(String, Option<Duration>)>,
    /// The checker's verdict after the heal.
    pub verdict: Verdict,
}

impl Report {
    /// The report as text: the timeline, availability per phase kind, the verdict.
    pub fn render(&self) -> String {
        let mut out = String::from("timeline:\n");
        for (t, what) in &self.timeline {
            out.push_str(&format!("  {t:7.1} s  {what}\n"));
        }
        out.push_str(
            "availability (requests answered / sent, and answered per second, by phase):\n",
        );
        for (kind, t) in &self.availability {
            let secs = self.seconds.get(kind).copied().unwrap_or(0.0).max(1e-9);
            out.push_str(&format!(
                "  {kind:<11} {:6.1}%  ({} / {}), {:.0}/s over {:.0} s\n",
                t.share() * 100.0,
                t.answered,
                t.sent,
                t.answered as f64 / secs,
                secs
            ));
        }
        let mut by_kind: BTreeMap<&str, Vec<Option<Duration>>> = BTreeMap::new();
        for (k, d) in &self.recoveries {
            by_kind.entry(k).or_default().push(*d);
        }
        out.push_str("recovery after the heal (every node sees every other up), by fault:\n");
        for (k, ds) in &by_kind {
            let done: Vec<f64> = ds.iter().flatten().map(Duration::as_secs_f64).collect();
            let worst = done.iter().copied().fold(0.0, f64::max);
            let mean = done.iter().sum::<f64>() / done.len().max(1) as f64;
            out.push_str(&format!(
                "  {k:<11} {} phases, mean {mean:.1} s, worst {worst:.1} s{}\n",
                ds.len(),
                if done.len() < ds.len() {
                    format!(", {} not within 30 s", ds.len() - done.len())
                } else {
                    String::new()
                }
            ));
        }
        let v = &self.verdict;
        out.push_str(&format!(
            "writes: {} sent, {} acknowledged\nverdict: {} acknowledged writes lost, {} false siblings, {} keys not converged on their owners, {} other violations; {}\n",
            self.writes.0,
            self.writes.1,
            v.lost,
            v.false_siblings,
            v.not_converged,
            v.other,
            match v.converged_after {
                Some(d) => format!("converged {:.1} s after the heal", d.as_secs_f64()),
                None => "NOT converged".into(),
            }
        ));
        for line in v.violations.iter().take(20) {
            out.push_str(&format!("  {line}\n"));
        }
        out
    }
}

fn shuffled(rng: &mut Rng, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    for i in (1..n).rev() {
        v.swap(i, rng.below(i as u64 + 1) as usize);
    }
    v
}

fn ids(nodes: &[usize]) -> String {
    nodes
        .iter()
        .map(|i| format!("n{}", i + 1))
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs `cfg`: the namespaces and nodes are made here and removed before returning.
pub fn run(cfg: &RunConfig, log: &mut dyn FnMut(&str)) -> Result<Report, String> {
    if cfg.nodes < 5
        && cfg
            .faults
            .iter()
            .any(|f| matches!(f, Fault::Split | Fault::Bridge))
    {
        return Err("the split and bridge faults need at least 5 nodes".into());
    }
    let net = Net::create(cfg.nodes)?;
    let mut cluster = Cluster::start(
        &net,
        &cfg.bin,
        &cfg.dir,
        &cfg.node_flags
            .iter()
            .map(String::as_str)
            .collect::<Vec<_>>(),
    )?;
    let rt = net
        .client_runtime(2)
        .map_err(|e| format!("cannot start the client runtime: {e}"))?;
    let urls: Vec<String> = (0..cfg.nodes).map(|i| Cluster::url(&net, i)).collect();
    let by_id: BTreeMap<String, String> = urls
        .iter()
        .enumerate()
        .map(|(i, u)| (format!("n{}", i + 1), u.clone()))
        .collect();
    let client = rt
        .block_on(rt.spawn(async {
            reqwest::Client::builder()
                .timeout(Duration::from_secs(5))
                .build()
        }))
        .map_err(|e| e.to_string())?
        .map_err(|e| e.to_string())?;
    let (c, u) = (client.clone(), urls.clone());
    let formed = rt
        .block_on(rt.spawn(async move { wait_for_ring(&c, &u, Duration::from_secs(60)).await }))
        .map_err(|e| e.to_string())?;
    if !formed {
        return Err("the namespaced cluster did not form within 60 s".into());
    }

    let phase = Arc::new(AtomicUsize::new(0));
    let mut kinds: Vec<String> = vec!["healthy".into()];
    // When each phase began (the last one ends when the workload stops).
    let mut began: Vec<Instant> = vec![Instant::now()];
    let load = workload::start(
        rt.handle(),
        urls.clone(),
        cfg.clients,
        cfg.keys,
        SECRET,
        phase.clone(),
        cfg.partition_aware,
    );
    let start = Instant::now();
    let mut report = Report::default();
    let mut note = |report: &mut Report, what: String| {
        let t = start.elapsed().as_secs_f64();
        log(&format!("{t:7.1} s  {what}"));
        report.timeline.push((t, what));
    };
    let mut rng = Rng::new(cfg.seed);
    std::thread::sleep(cfg.heal_len);
    let mut done = 0;
    loop {
        let finished = match cfg.phases {
            Some(n) => done >= n,
            None => start.elapsed() >= cfg.duration,
        };
        if finished || cfg.faults.is_empty() {
            break;
        }
        let fault = cfg.faults[done % cfg.faults.len()];
        let (lo, hi) = cfg.fault_len;
        let len = lo + Duration::from_millis(rng.below((hi - lo).as_millis() as u64 + 1));
        let order = shuffled(&mut rng, cfg.nodes);
        kinds.push(fault.name().into());
        began.push(Instant::now());
        phase.store(kinds.len() - 1, Ordering::Relaxed);
        let what = match fault {
            Fault::Isolate => {
                net.partition(&order[..1], &order[1..])?;
                format!("isolate {}", ids(&order[..1]))
            }
            Fault::Split => {
                net.partition(&order[..3], &order[3..])?;
                format!("split {} | {}", ids(&order[..3]), ids(&order[3..]))
            }
            Fault::Bridge => {
                let (a, b, c) = (&order[..2], order[2], &order[3..]);
                net.partition(a, c)?;
                format!("bridge {} | n{} | {}", ids(a), b + 1, ids(c))
            }
            Fault::Asymmetric => {
                for &j in &order[1..] {
                    net.cut(order[0], j)?;
                }
                format!(
                    "asymmetric: n{}'s packets to the others vanish",
                    order[0] + 1
                )
            }
            Fault::Flap => format!("flap n{}'s links", order[0] + 1),
            Fault::Kill => {
                cluster.kill9(order[0]);
                format!("kill -9 n{}", order[0] + 1)
            }
            Fault::Pause => {
                cluster.pause(order[0]);
                format!("SIGSTOP n{}", order[0] + 1)
            }
        };
        note(
            &mut report,
            format!("{what} for {:.1} s", len.as_secs_f64()),
        );
        if fault == Fault::Flap {
            let until = Instant::now() + len;
            let mut down = false;
            while Instant::now() < until {
                if down {
                    net.heal()?;
                } else {
                    net.partition(&order[..1], &order[1..])?;
                }
                down = !down;
                std::thread::sleep(Duration::from_millis(200 + rng.below(500)));
            }
        } else {
            std::thread::sleep(len);
        }
        net.heal()?;
        cluster.revive_all(&net)?;
        kinds.push("healthy".into());
        began.push(Instant::now());
        phase.store(kinds.len() - 1, Ordering::Relaxed);
        // Recovery: how long until every node sees every other up again, one ring.
        let healed = Instant::now();
        let (c, u, within) = (
            client.clone(),
            urls.clone(),
            cfg.heal_len.max(Duration::from_secs(30)),
        );
        let agreed = rt
            .block_on(rt.spawn(async move { wait_for_ring(&c, &u, within).await }))
            .map_err(|e| e.to_string())?;
        let took = healed.elapsed();
        report
            .recoveries
            .push((fault.name().into(), agreed.then_some(took)));
        note(
            &mut report,
            if agreed {
                format!(
                    "heal: every node sees every other up after {:.1} s",
                    took.as_secs_f64()
                )
            } else {
                format!(
                    "heal: nodes still disagree after {:.0} s",
                    took.as_secs_f64()
                )
            },
        );
        std::thread::sleep(cfg.heal_len.saturating_sub(took));
        done += 1;
    }
    let history = rt
        .block_on(rt.spawn(load.stop()))
        .map_err(|e| e.to_string())?;
    began.push(Instant::now());
    for (p, kind) in kinds.iter().enumerate() {
        let secs = began[p + 1].duration_since(began[p]).as_secs_f64();
        *report.seconds.entry(kind.clone()).or_default() += secs;
    }
    note(&mut report, "workload stopped; settling".into());
    for (p, t) in &history.tallies {
        let kind = kinds.get(*p).cloned().unwrap_or_default();
        let a = report.availability.entry(kind).or_default();
        a.sent += t.sent;
        a.answered += t.answered;
    }
    report.writes = (history.writes.len(), history.acknowledged());
    let verdict = rt
        .block_on(rt.spawn(async move {
            settle(&client, &by_id, &history, Duration::from_secs(180)).await
        }))
        .map_err(|e| e.to_string())?;
    note(&mut report, "verdict".into());
    report.verdict = verdict;
    drop(cluster);
    drop(rt);
    drop(net);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn faults_parse_by_name_and_refuse_others() {
        for f in Fault::ALL {
            assert_eq!(Fault::parse(f.name()), Ok(f));
        }
        let e = Fault::parse("meteor").unwrap_err();
        assert!(e.contains("isolate") && e.contains("pause"), "{e}");
    }

    #[test]
    fn a_shuffle_is_a_permutation_decided_by_the_seed() {
        let a = shuffled(&mut Rng::new(3), 5);
        let mut sorted = a.clone();
        sorted.sort();
        assert_eq!(sorted, [0, 1, 2, 3, 4]);
        assert_eq!(a, shuffled(&mut Rng::new(3), 5));
        let others: Vec<Vec<usize>> = (4..20).map(|s| shuffled(&mut Rng::new(s), 5)).collect();
        assert!(others.iter().any(|o| *o != a), "seeds give other orders");
    }

    #[test]
    fn the_report_names_what_went_wrong() {
        let mut r = Report::default();
        r.availability.insert(
            "split".into(),
            Tally {
                sent: 10,
                answered: 9,
            },
        );
        r.seconds.insert("split".into(), 3.0);
        r.recoveries.push(("split".into(), None));
        r.verdict.lost = 1;
        r.verdict.violations.push("lost write k=v".into());
        let text = r.render();
        assert!(text.contains("90.0%"), "{text}");
        assert!(text.contains("1 not within 30 s"), "{text}");
        assert!(text.contains("1 acknowledged writes lost"), "{text}");
        assert!(text.contains("NOT converged"), "{text}");
        assert!(text.contains("lost write k=v"), "{text}");
    }
}
