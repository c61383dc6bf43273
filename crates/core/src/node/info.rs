//! What the node tells operators and partition-aware clients: counters, the ring and its
//! members.

use super::cluster::Cluster;
use crate::failure_detector::Opinion;
use crate::membership::Member;
use serde::{Deserialize, Serialize};

/// Counters for operators.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStats {
    /// Client requests forwarded to another coordinator.
    pub forwarded: u64,
    /// Forwarded requests sent on to the next primary after the first stayed silent.
    pub forward_retries: u64,
    /// Gets coordinated here.
    pub coordinated_reads: u64,
    /// Puts and deletes coordinated here.
    pub coordinated_writes: u64,
    /// Replicas sent a merged object after a read found them stale.
    pub read_repairs: u64,
    /// Peer messages refused as invalid.
    pub rejected_messages: u64,
    /// Replicas this node stored as a fallback, with a hint naming their owner.
    pub hints_stored: u64,
    /// Hints handed back to their owners and deleted here.
    pub hints_delivered: u64,
    /// Writes that went to at least one fallback (sloppy quorum).
    pub sloppy_writes: u64,
    /// Reads coordinated here that found 1, 2, 3, and 4 or more live versions (the share of
    /// reads with siblings, as in the Dynamo paper's section 6.3).
    pub reads_by_versions: [u64; 4],
    /// Writes that left a key with 25 siblings or more.
    pub sibling_warnings: u64,
    /// Writes refused by the object size or sibling limits.
    pub refused_writes: u64,
}

/// What a coordinator counts (copied into [`NodeStats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct CoordinatorCounters {
    /// Gets coordinated.
    pub reads: u64,
    /// Puts and deletes coordinated.
    pub writes: u64,
    /// Replicas sent a merged object after a read found them stale.
    pub read_repairs: u64,
    /// Writes that went to at least one fallback.
    pub sloppy_writes: u64,
    /// Reads that found 1, 2, 3 and 4 or more live versions (Dynamo's section 6.3 table).
    pub reads_by_versions: [u64; 4],
    /// Writes that left a key with 25 siblings or more.
    pub sibling_warnings: u64,
    /// Writes refused by the object size or sibling limits.
    pub refused_writes: u64,
}

/// A member as the admin endpoint shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MemberInfo {
    /// The member record.
    #[serde(flatten)]
    pub member: Member,
    /// Fraction of the key space it owns as first replica.
    pub share: f64,
    /// Whether this node believes it is up (connected and not suspected).
    pub up: bool,
    /// Whether the transport has a connection to it.
    pub connected: bool,
    /// Its latest heartbeat counter heard here.
    pub heartbeat: u64,
    /// The failure detector's opinion (absent for this node itself).
    pub detector: Option<Opinion>,
}

/// The ring as the admin endpoint and partition-aware clients see it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RingInfo {
    /// The ring version (hash of every node and token), hex.
    pub version: String,
    /// The node answering.
    pub node: String,
    /// Replicas per key.
    pub n: u8,
    /// Default read quorum.
    pub r: u8,
    /// Default write quorum.
    pub w: u8,
    /// Every member, sorted by id, whatever its status (the ring holds those whose status
    /// is in the ring: [`crate::membership::ring_of`]).
    pub members: Vec<MemberInfo>,
}

/// The ring and members of `cluster`, with quorum settings `(n, r, w)`.
pub fn ring_info(cluster: &Cluster, (n, r, w): (u8, u8, u8)) -> RingInfo {
    let shares = cluster.ring().shares();
    let view = cluster.view();
    let me = cluster.id();
    RingInfo {
        version: format!("{:016x}", cluster.ring().version()),
        node: me.to_owned(),
        n,
        r,
        w,
        members: view
            .members
            .values()
            .map(|m| MemberInfo {
                member: m.clone(),
                share: shares.get(&m.id).copied().unwrap_or(0.0),
                up: cluster.is_up(&m.id),
                connected: cluster.is_connected(&m.id),
                heartbeat: match view.heartbeats.get(&m.id) {
                    Some((g, c)) if *g == m.generation => *c,
                    _ => 0,
                },
                detector: (m.id != me).then(|| cluster.opinion(&m.id)),
            })
            .collect(),
    }
}

/// Upper bounds of the coordinator latency buckets, in ms (the node's clock counts whole
/// milliseconds: a 0 ms operation answered within the millisecond it arrived in).
pub const LATENCY_BUCKETS_MS: [u64; 12] = [0, 1, 2, 5, 10, 25, 50, 100, 250, 500, 1000, 2500];

/// The operations a coordinator answers, as metric labels.
pub const LATENCY_OPS: [&str; 2] = ["get", "put"];

/// Their outcomes, as metric labels.
pub const LATENCY_OUTCOMES: [&str; 3] = ["ok", "not_found", "unavailable"];

/// Latencies of the operations this node coordinated and answered, from the request's arrival
/// at the coordinator to its answer, by operation and outcome (cumulative, for metrics).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CoordinatorLatency {
    /// `[op][outcome]`: per bucket of [`LATENCY_BUCKETS_MS`] the operations at or under it
    /// (not cumulative: each counts once), then the slower ones.
    pub buckets: [[[u64; 13]; 3]; 2],
    /// `[op][outcome]`: the sum of their latencies, ms.
    pub sum_ms: [[u64; 3]; 2],
}

/// An operation a coordinator answered, as [`CoordinatorLatency`] files it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyOp {
    /// A get.
    Get,
    /// A put or delete.
    Put,
}

/// How it was answered, as [`CoordinatorLatency`] files it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LatencyOutcome {
    /// Answered with a value or a write acknowledgement.
    Ok,
    /// A get that found no live value.
    NotFound,
    /// Refused or failed: too few replicas answered, or the request was invalid.
    Unavailable,
}

impl CoordinatorLatency {
    /// Records one operation (labelled by [`LATENCY_OPS`] and [`LATENCY_OUTCOMES`]).
    pub fn record(&mut self, op: LatencyOp, outcome: LatencyOutcome, ms: u64) {
        let (op, outcome) = (op as usize, outcome as usize);
        let slot = LATENCY_BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[op][outcome][slot] += 1;
        self.sum_ms[op][outcome] += ms;
    }
}

/// Anti-entropy's counters and progress, for `/admin/stats` and `admin repair`: the Merkle
/// exchange's, the tombstone collector's and the moved-data handover's together.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct AntiEntropyStats {
    /// Sessions finished (in sync or repaired).
    pub exchanges: u64,
    /// Of those, sessions that found the roots equal.
    pub in_sync: u64,
    /// Sessions that failed (peer lost, timed out, storage, bad answer).
    pub failed: u64,
    /// Failed sessions by why.
    pub failed_by: super::exchange::FailedBy,
    /// Sessions that could not go on yet (ring views differed for a moment, or the peer's tree
    /// was being built): compared again next round, not failures.
    pub postponed: u64,
    /// Keys whose local copy changed by a merge from another replica.
    pub keys_repaired: u64,
    /// Objects sent to other replicas.
    pub objects_sent: u64,
    /// Bytes of trees, key lists and objects sent.
    pub bytes_sent: u64,
    /// Ranges with a tree here.
    pub trees: usize,
    /// Trees still being built.
    pub trees_building: usize,
    /// Keys counted in the trees.
    pub tree_keys: u64,
    /// Trees thrown away and rebuilt because they disagreed with storage.
    pub trees_rebuilt: u64,
    /// Approximate memory of the trees, bytes.
    pub tree_memory_bytes: u64,
    /// Deleted keys whose tombstones are still kept.
    pub tombstones: u64,
    /// Deleted keys whose tombstones were collected here.
    pub tombstones_collected: u64,
    /// Keys of ranges no longer replicated here, handed to their owners and deleted here.
    pub moved_keys: u64,
    /// True while this node rebuilds lost data (its reads do not count).
    pub rebuilding: bool,
    /// Ranges still to synchronise before rebuilding ends.
    pub rebuilding_ranges: usize,
    /// The round in progress, if any.
    pub round: Option<super::exchange::RoundProgress>,
    /// The id of the last round finished (0: none yet).
    pub last_round: u64,
    /// Comparisons the last finished round skipped because the peer was down (its ranges are
    /// not known to be in sync with that peer).
    pub last_round_skipped: usize,
    /// Storage errors the background workers met (see the log for each).
    pub storage_errors: u64,
}

impl AntiEntropyStats {
    /// The counters of the exchange, the collector and the handover, with the trees' and the
    /// proofs' state.
    pub fn of(
        exchange: &super::exchange::Exchange,
        collector: &super::collector::Collector,
        handover: &super::handover::Handover,
        trees: &super::trees::Trees,
        proofs: &super::proofs::Proofs,
        errors: &super::worker::StorageErrors,
    ) -> AntiEntropyStats {
        let (x, h, t) = (exchange.stats(), handover.stats(), trees.counts());
        AntiEntropyStats {
            exchanges: x.exchanges,
            in_sync: x.in_sync,
            failed: x.failed,
            failed_by: x.failed_by,
            postponed: x.postponed,
            keys_repaired: x.keys_repaired + h.keys_merged,
            objects_sent: x.objects_sent + h.objects_sent,
            bytes_sent: x.bytes_sent + h.bytes_sent,
            trees: t.trees,
            trees_building: t.building,
            tree_keys: t.keys,
            trees_rebuilt: t.rebuilt,
            tree_memory_bytes: (t.trees * crate::merkle::Tree::MEMORY_BYTES) as u64,
            tombstones: t.tombstones,
            tombstones_collected: collector.collected(),
            moved_keys: h.dropped,
            rebuilding: proofs.rebuilding(),
            rebuilding_ranges: proofs.rebuilding_left(trees.peers()),
            round: exchange.round(),
            last_round: x.last_round,
            last_round_skipped: x.last_round_skipped,
            storage_errors: errors.count,
        }
    }
}
