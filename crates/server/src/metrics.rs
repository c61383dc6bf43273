//! Prometheus metrics: `GET /metrics` in the text exposition format (the `metrics` facade and
//! `metrics-exporter-prometheus`'s recorder, with HELP text for every series).
//!
//! Request latencies are recorded as they happen, end to end, by the HTTP and RESP handlers
//! (`dynamokv_request_duration_seconds{protocol, op, outcome}`), with quorum failures by kind.
//! Everything the node already counts (coordinated and forwarded requests, hints, read repairs,
//! versions per read, anti-entropy, transfers, peers) is read from the node thread at scrape time,
//! together with the process's RSS and open files and the data directory's size.

use dynamokv_core::message::{OpError, QuorumKind};
use dynamokv_core::node::info::{LATENCY_BUCKETS_MS, LATENCY_OPS, LATENCY_OUTCOMES};
use dynamokv_core::node::rebalance::Transfer;
use dynamokv_core::node::scheduler::SchedulerStats;
use dynamokv_core::node::{AntiEntropyStats, CoordinatorLatency, NodeStats, RingInfo};
use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

/// Latency buckets, in seconds: 100 µs to 10 s.
const BUCKETS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0,
];

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

/// Installs the process's recorder (once) and returns its handle; `None` if another recorder
/// was installed first.
pub fn install() -> Option<PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(
                    Matcher::Full("dynamokv_request_duration_seconds".into()),
                    BUCKETS,
                )
                .ok()?
                .build_recorder();
            let handle = recorder.handle();
            metrics::set_global_recorder(recorder).ok()?;
            describe();
            Some(handle)
        })
        .clone()
}

/// What kind of metric a described name is.
enum Kind {
    Counter,
    Gauge,
    Histogram,
}

/// Every metric the node exports: name, kind, unit and help text.
const DESCRIBED: &[(&str, Kind, Option<Unit>, &str)] = &[
    (
        "dynamokv_request_duration_seconds",
        Kind::Histogram,
        Some(Unit::Seconds),
        "Client requests from arrival to answer, by protocol (http, resp), operation (get, put, delete) and outcome (ok, not_found, unavailable, error)",
    ),
    (
        "dynamokv_quorum_failures_total",
        Kind::Counter,
        None,
        "Client requests that failed because too few replicas answered, by kind (read, write)",
    ),
    (
        "dynamokv_forwarded_total",
        Kind::Counter,
        None,
        "Client requests forwarded to a coordinator",
    ),
    (
        "dynamokv_forward_retries_total",
        Kind::Counter,
        None,
        "Forwards sent on to the next primary after the first stayed silent",
    ),
    (
        "dynamokv_coordinated_total",
        Kind::Counter,
        None,
        "Requests coordinated here, by op (read, write)",
    ),
    (
        "dynamokv_read_repairs_total",
        Kind::Counter,
        None,
        "Stale replicas sent a merged object after a read",
    ),
    (
        "dynamokv_hints_stored_total",
        Kind::Counter,
        None,
        "Writes stored here for a down owner, with a hint",
    ),
    (
        "dynamokv_hints_delivered_total",
        Kind::Counter,
        None,
        "Hints handed back to their owners",
    ),
    (
        "dynamokv_hints_pending",
        Kind::Gauge,
        None,
        "Hints waiting here, by owner",
    ),
    (
        "dynamokv_sloppy_writes_total",
        Kind::Counter,
        None,
        "Writes that went to a fallback node",
    ),
    (
        "dynamokv_reads_by_versions_total",
        Kind::Counter,
        None,
        "Reads coordinated here by the number of live versions found (1, 2, 3, 4+): the paper's divergent-versions table",
    ),
    (
        "dynamokv_refused_writes_total",
        Kind::Counter,
        None,
        "Writes refused by the object size or sibling limits",
    ),
    (
        "dynamokv_rejected_messages_total",
        Kind::Counter,
        None,
        "Peer messages refused as invalid",
    ),
    (
        "dynamokv_anti_entropy_exchanges_total",
        Kind::Counter,
        None,
        "Anti-entropy range comparisons",
    ),
    (
        "dynamokv_anti_entropy_keys_repaired_total",
        Kind::Counter,
        None,
        "Keys repaired by anti-entropy",
    ),
    (
        "dynamokv_anti_entropy_bytes_sent_total",
        Kind::Counter,
        None,
        "Bytes of objects anti-entropy sent",
    ),
    (
        "dynamokv_anti_entropy_failed_total",
        Kind::Counter,
        None,
        "Anti-entropy exchanges that failed (peer lost, timed out, storage, bad answer; by reason in /admin/stats)",
    ),
    (
        "dynamokv_anti_entropy_postponed_total",
        Kind::Counter,
        None,
        "Anti-entropy exchanges that could not go on yet (ring views differed for a moment, or the peer's tree was being built), compared again next round",
    ),
    (
        "dynamokv_background_storage_errors_total",
        Kind::Counter,
        None,
        "Storage errors met by background work (hints, anti-entropy, collection, handover)",
    ),
    (
        "dynamokv_anti_entropy_rebuilding",
        Kind::Gauge,
        None,
        "1 while this node rebuilds lost data",
    ),
    (
        "dynamokv_merkle_tree_keys",
        Kind::Gauge,
        None,
        "Keys covered by this node's Merkle trees",
    ),
    (
        "dynamokv_transfer_ranges",
        Kind::Gauge,
        None,
        "Ranges of the membership change in progress",
    ),
    (
        "dynamokv_transfer_confirmed_ranges",
        Kind::Gauge,
        None,
        "Ranges of that change confirmed so far",
    ),
    (
        "dynamokv_peer_up",
        Kind::Gauge,
        None,
        "1 when this node believes the peer is up, by peer",
    ),
    (
        "dynamokv_peer_connected",
        Kind::Gauge,
        None,
        "1 when the transport holds a connection to the peer",
    ),
    (
        "dynamokv_peer_phi",
        Kind::Gauge,
        None,
        "The failure detector's suspicion of the peer (phi)",
    ),
    (
        "dynamokv_members",
        Kind::Gauge,
        None,
        "Members of the cluster as this node sees them, by status",
    ),
    (
        "dynamokv_http_connections_refused_total",
        Kind::Counter,
        None,
        "HTTP connections refused with 503 because the node already served its maximum",
    ),
    (
        "dynamokv_peer_handshakes_refused_total",
        Kind::Counter,
        None,
        "Inbound peer connections refused before or during the handshake, by reason: busy (too many handshaking), proof (wrong cluster secret or a replay), protocol (malformed, oversized, out of turn, another version), timeout",
    ),
    (
        "dynamokv_background_share",
        Kind::Gauge,
        None,
        "Share of the background budget (hints, anti-entropy, transfers, tombstone collection) in use: 1 = all, less while foreground latency is above the target",
    ),
    (
        "dynamokv_foreground_p99_seconds",
        Kind::Gauge,
        Some(Unit::Seconds),
        "p99 of the operations coordinated here in the last second (the scheduler's input; NaN when too few)",
    ),
    (
        "dynamokv_background_backoffs_total",
        Kind::Counter,
        None,
        "Seconds in which background work backed off because foreground p99 was above the target",
    ),
    (
        "dynamokv_background_items_total",
        Kind::Counter,
        None,
        "Background items started (hints delivered, objects sent or asked for, collection steps)",
    ),
    (
        "process_resident_memory_bytes",
        Kind::Gauge,
        Some(Unit::Bytes),
        "Resident memory of the node process",
    ),
    (
        "process_open_fds",
        Kind::Gauge,
        None,
        "Open file descriptors of the node process",
    ),
    (
        "dynamokv_node_thread_stalls_total",
        Kind::Counter,
        None,
        "Bursts that kept the node thread busy for 100 ms or more (every request of the node waited; usually the storage engine holding writes back)",
    ),
    (
        "dynamokv_data_dir_bytes",
        Kind::Gauge,
        Some(Unit::Bytes),
        "Size of the node's data directory",
    ),
    (
        "dynamokv_disk_free_bytes",
        Kind::Gauge,
        Some(Unit::Bytes),
        "Free space on the data directory's filesystem",
    ),
    (
        "dynamokv_storage_corrupt_reads_total",
        Kind::Counter,
        None,
        "Reads of stored objects that met corruption (a record failing its checksum, a block the engine cannot read); the read failed and a salvage followed",
    ),
    (
        "dynamokv_storage_salvages_total",
        Kind::Counter,
        None,
        "Salvages of damaged storage (every readable record copied, the rest dropped and rebuilt from the other replicas)",
    ),
    (
        "dynamokv_storage_lost_data",
        Kind::Gauge,
        None,
        "1 while data a salvage dropped is not rebuilt yet",
    ),
    (
        "dynamokv_scrub_checked_total",
        Kind::Counter,
        None,
        "Stored objects read and checked by the scrub",
    ),
    (
        "dynamokv_scrub_passes_total",
        Kind::Counter,
        None,
        "Scrub passes finished over every stored object",
    ),
    (
        "dynamokv_disk_refusing_writes",
        Kind::Gauge,
        None,
        "1 while free space is under --min-free-disk-mb and writes are refused",
    ),
];

fn describe() {
    for (name, kind, unit, help) in DESCRIBED {
        let (name, help) = (*name, *help);
        match (kind, unit) {
            (Kind::Counter, Some(u)) => describe_counter!(name, *u, help),
            (Kind::Counter, None) => describe_counter!(name, help),
            (Kind::Gauge, Some(u)) => describe_gauge!(name, *u, help),
            (Kind::Gauge, None) => describe_gauge!(name, help),
            (Kind::Histogram, Some(u)) => describe_histogram!(name, *u, help),
            (Kind::Histogram, None) => describe_histogram!(name, help),
        }
    }
}

/// The outcome label of a failed operation.
pub fn outcome_of(e: &OpError) -> &'static str {
    match e {
        OpError::Unavailable { .. } | OpError::CoordinatorUnreachable { .. } | OpError::NoRing => {
            "unavailable"
        }
        _ => "error",
    }
}

/// Counts a failed cluster operation (quorum failures by kind).
pub fn op_failed(e: &OpError) {
    if let OpError::Unavailable { kind, .. } = e {
        let kind = match kind {
            QuorumKind::Read => "read",
            QuorumKind::Write => "write",
        };
        counter!("dynamokv_quorum_failures_total", "kind" => kind).increment(1);
    }
}

/// Records one client request.
pub fn record(protocol: &'static str, op: &'static str, outcome: &'static str, took: Duration) {
    histogram!(
        "dynamokv_request_duration_seconds",
        "protocol" => protocol,
        "op" => op,
        "outcome" => outcome
    )
    .record(took.as_secs_f64());
}

fn dir_bytes(path: &std::path::Path) -> u64 {
    let mut total = 0;
    let mut stack = vec![path.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            match e.metadata() {
                Ok(m) if m.is_dir() => stack.push(e.path()),
                Ok(m) => total += m.len(),
                Err(_) => {}
            }
        }
    }
    total
}

fn process_gauges(data_dir: &Path) {
    if let Ok(status) = std::fs::read_to_string("/proc/self/status")
        && let Some(kib) = status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
    {
        gauge!("process_resident_memory_bytes").set(kib * 1024.0);
    }
    if let Ok(fds) = std::fs::read_dir("/proc/self/fd") {
        gauge!("process_open_fds").set(fds.count() as f64);
    }
    gauge!("dynamokv_data_dir_bytes").set(dir_bytes(data_dir) as f64);
}

/// What one `GET /metrics` reads from the node thread and its store.
#[derive(Debug, Clone)]
pub struct Scrape {
    /// The node's counters.
    pub stats: NodeStats,
    /// Anti-entropy's counters.
    pub anti_entropy: AntiEntropyStats,
    /// The membership change in progress.
    pub transfer: Transfer,
    /// The members as this node sees them.
    pub ring: RingInfo,
    /// The background scheduler's state.
    pub scheduler: SchedulerStats,
    /// Latencies of the operations coordinated here.
    pub latency: CoordinatorLatency,
    /// Hints waiting here, by owner.
    pub hints_pending: BTreeMap<String, u64>,
    /// The data directory's free space, as the storage engine's monitor last saw it.
    pub disk: Option<dynamokv_storage::DiskSpace>,
    /// Corruption found, salvages run, and whether data they dropped is not rebuilt yet.
    pub damage: dynamokv_storage::DamageReport,
    /// Whether a salvage dropped data not rebuilt yet.
    pub lost_data: bool,
    /// The scrub's counters.
    pub scrub: dynamokv_core::node::scrub::ScrubStats,
}

/// The text of `GET /metrics`: `scrape` and the process's own gauges (read from `/proc` and
/// `data_dir`; blocking) recorded, then everything rendered.
pub fn render(handle: &PrometheusHandle, scrape: &Scrape, data_dir: &Path) -> String {
    process_gauges(data_dir);
    if let Some(d) = scrape.disk {
        gauge!("dynamokv_disk_free_bytes").set(d.free_bytes as f64);
        gauge!("dynamokv_disk_refusing_writes").set(f64::from(u8::from(d.refusing_writes)));
    }
    counter!("dynamokv_storage_corrupt_reads_total").absolute(scrape.damage.corrupt_reads);
    counter!("dynamokv_storage_salvages_total").absolute(scrape.damage.salvages);
    gauge!("dynamokv_storage_lost_data").set(f64::from(u8::from(scrape.lost_data)));
    counter!("dynamokv_scrub_checked_total").absolute(scrape.scrub.checked);
    counter!("dynamokv_scrub_passes_total").absolute(scrape.scrub.passes);
    node_counters(&scrape.stats);
    member_gauges(&scrape.ring, &scrape.hints_pending);
    background_gauges(scrape);
    let mut text = handle.render();
    coordinator_histogram(&mut text, &scrape.latency);
    text
}

fn node_counters(stats: &NodeStats) {
    counter!("dynamokv_forwarded_total").absolute(stats.forwarded);
    counter!("dynamokv_forward_retries_total").absolute(stats.forward_retries);
    counter!("dynamokv_coordinated_total", "op" => "read").absolute(stats.coordinated_reads);
    counter!("dynamokv_coordinated_total", "op" => "write").absolute(stats.coordinated_writes);
    counter!("dynamokv_read_repairs_total").absolute(stats.read_repairs);
    counter!("dynamokv_hints_stored_total").absolute(stats.hints_stored);
    counter!("dynamokv_hints_delivered_total").absolute(stats.hints_delivered);
    counter!("dynamokv_sloppy_writes_total").absolute(stats.sloppy_writes);
    counter!("dynamokv_refused_writes_total").absolute(stats.refused_writes);
    counter!("dynamokv_rejected_messages_total").absolute(stats.rejected_messages);
    for (label, n) in ["1", "2", "3", "4+"].iter().zip(stats.reads_by_versions) {
        counter!("dynamokv_reads_by_versions_total", "versions" => *label).absolute(n);
    }
}

fn member_gauges(info: &RingInfo, pending: &BTreeMap<String, u64>) {
    for m in &info.members {
        if m.member.id == info.node {
            continue;
        }
        let peer = m.member.id.clone();
        gauge!("dynamokv_peer_up", "peer" => peer.clone()).set(f64::from(u8::from(m.up)));
        gauge!("dynamokv_peer_connected", "peer" => peer.clone())
            .set(f64::from(u8::from(m.connected)));
        if let Some(o) = &m.detector {
            gauge!("dynamokv_peer_phi", "peer" => peer).set(o.phi);
        }
    }
    for status in ["up", "joining", "leaving", "left"] {
        let count = info
            .members
            .iter()
            .filter(|m| m.member.status.as_str() == status)
            .count();
        gauge!("dynamokv_members", "status" => status).set(count as f64);
    }
    // Every member gets a value (0 once its hints are delivered), and any other owner too.
    let mut owners: BTreeMap<String, u64> = info
        .members
        .iter()
        .filter(|m| m.member.id != info.node)
        .map(|m| (m.member.id.clone(), 0))
        .collect();
    owners.extend(pending.iter().map(|(o, n)| (o.clone(), *n)));
    for (owner, n) in owners {
        gauge!("dynamokv_hints_pending", "owner" => owner).set(n as f64);
    }
}

fn background_gauges(scrape: &Scrape) {
    let (ae, transfer, sched) = (&scrape.anti_entropy, &scrape.transfer, &scrape.scheduler);
    counter!("dynamokv_anti_entropy_exchanges_total").absolute(ae.exchanges);
    counter!("dynamokv_anti_entropy_keys_repaired_total").absolute(ae.keys_repaired);
    counter!("dynamokv_anti_entropy_bytes_sent_total").absolute(ae.bytes_sent);
    counter!("dynamokv_anti_entropy_failed_total").absolute(ae.failed);
    counter!("dynamokv_anti_entropy_postponed_total").absolute(ae.postponed);
    counter!("dynamokv_background_storage_errors_total").absolute(ae.storage_errors);
    gauge!("dynamokv_anti_entropy_rebuilding").set(f64::from(u8::from(ae.rebuilding)));
    gauge!("dynamokv_merkle_tree_keys").set(ae.tree_keys as f64);
    gauge!("dynamokv_transfer_ranges").set(transfer.ranges as f64);
    gauge!("dynamokv_transfer_confirmed_ranges").set(transfer.confirmed as f64);
    gauge!("dynamokv_background_share").set(sched.share);
    gauge!("dynamokv_foreground_p99_seconds")
        .set(sched.p99_ms.map_or(f64::NAN, |ms| ms as f64 / 1000.0));
    counter!("dynamokv_background_backoffs_total").absolute(sched.backoffs);
    counter!("dynamokv_background_items_total").absolute(sched.items);
}

/// Appends the coordinator-side latency histogram, rendered from the node's own buckets.
fn coordinator_histogram(text: &mut String, latency: &CoordinatorLatency) {
    use std::fmt::Write as _;
    let name = "dynamokv_coordinator_duration_seconds";
    let _ = writeln!(
        text,
        "# HELP {name} Operations coordinated here, from their arrival at the coordinator to its answer, by op (get, put) and outcome (ok, not_found, unavailable); whole milliseconds"
    );
    let _ = writeln!(text, "# TYPE {name} histogram");
    for (o, op) in LATENCY_OPS.iter().enumerate() {
        for (c, outcome) in LATENCY_OUTCOMES.iter().enumerate() {
            let counts = &latency.buckets[o][c];
            let labels = format!("op=\"{op}\",outcome=\"{outcome}\"");
            let mut cumulative = 0;
            for (i, bound) in LATENCY_BUCKETS_MS.iter().enumerate() {
                cumulative += counts[i];
                let le = *bound as f64 / 1000.0;
                let _ = writeln!(text, "{name}_bucket{{{labels},le=\"{le}\"}} {cumulative}");
            }
            cumulative += counts[LATENCY_BUCKETS_MS.len()];
            let _ = writeln!(text, "{name}_bucket{{{labels},le=\"+Inf\"}} {cumulative}");
            let sum = latency.sum_ms[o][c] as f64 / 1000.0;
            let _ = writeln!(text, "{name}_sum{{{labels}}} {sum}");
            let _ = writeln!(text, "{name}_count{{{labels}}} {cumulative}");
        }
    }
}
