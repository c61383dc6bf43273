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

impl CoordinatorLatency {
    /// Records one operation (`op` and `outcome` index [`LATENCY_OPS`] and
    /// [`LATENCY_OUTCOMES`]).
    pub fn record(&mut self, op: usize, outcome: usize, ms: u64) {
        let slot = LATENCY_BUCKETS_MS
            .iter()
            .position(|&b| ms <= b)
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        self.buckets[op][outcome][slot] += 1;
        self.sum_ms[op][outcome] += ms;
    }
}
