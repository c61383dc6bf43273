//! The node's settings: quorums, timeouts, background work, limits. The defaults here are the
//! node's defaults everywhere (the server's configuration embeds [`NodeConfig`]).

use super::anti_entropy::AntiEntropyConfig;
use super::scheduler::SchedulerConfig;
use crate::failure_detector::DetectorConfig;
use serde::{Deserialize, Serialize};

/// Coordination settings. The defaults here are the node's defaults everywhere (the server's
/// configuration embeds this struct).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct NodeConfig {
    /// Replicas per key (N). Must be the same on every node.
    pub n: u8,
    /// Default read quorum (R), overridable per request with `?r=`.
    pub r: u8,
    /// Default write quorum (W), overridable per request with `?w=`.
    pub w: u8,
    /// How long a coordinator waits for replicas before answering 503, in milliseconds.
    pub request_timeout_ms: u64,
    /// How often the node gossips membership with a random peer, in milliseconds.
    pub gossip_interval_ms: u64,
    /// Failure-detector threshold: a peer whose phi passes it is believed down.
    pub phi_threshold: f64,
    /// How often this node scans the hints it keeps for nodes that were down, to hand them
    /// back once their owner is up, in milliseconds.
    pub hint_scan_interval_ms: u64,
    /// Most hints handed back per second (throttles the drain so a returning node is not
    /// flooded).
    pub hint_rate_per_sec: u64,
    /// Most hint deliveries in flight at once.
    pub hint_max_in_flight: usize,
    /// Pause between the starts of two anti-entropy rounds (each range compared with each
    /// other replica), in milliseconds; 0 runs anti-entropy only on demand.
    pub anti_entropy_interval_ms: u64,
    /// Most objects anti-entropy sends or asks for per second.
    pub anti_entropy_keys_per_sec: u64,
    /// Most object bytes anti-entropy sends per second.
    pub anti_entropy_bytes_per_sec: u64,
    /// Most anti-entropy sessions at once.
    pub anti_entropy_sessions: usize,
    /// Largest object (every sibling of a key together), in bytes: a write that would pass it
    /// is refused, so that an object always fits in a peer message.
    pub max_object_bytes: usize,
    /// Most siblings per key: a write that would add one more is refused (409) until a client
    /// reads the key and writes back with its context.
    pub max_siblings: usize,
    /// Youngest tombstone that may be collected once every replica is proven to hold it, in
    /// milliseconds (wall clock).
    pub tombstone_min_age_ms: u64,
    /// Most background items (hints delivered, objects sent or asked for by anti-entropy and
    /// transfers, collection and handover steps) per second, every worker together.
    pub background_items_per_sec: u64,
    /// Most background object bytes per second, every worker together.
    pub background_bytes_per_sec: u64,
    /// Foreground p99 (coordinator side, per second) above which background work backs off,
    /// in milliseconds; 0 turns the feedback off.
    pub background_p99_target_ms: u64,
    /// Smallest share of the background budget left when backing off (so jobs finish).
    pub background_min_share: f64,
    /// Largest value a put may carry, in bytes, checked again by coordinators and replicas on
    /// what peers send. Set from the server's `max_value_bytes` (not a `[node]` setting).
    #[serde(skip)]
    pub max_value_bytes: usize,
}

impl Default for NodeConfig {
    fn default() -> Self {
        Self {
            n: 3,
            r: 2,
            w: 2,
            request_timeout_ms: 2000,
            gossip_interval_ms: 1000,
            phi_threshold: 8.0,
            hint_scan_interval_ms: 1000,
            hint_rate_per_sec: 2000,
            hint_max_in_flight: 64,
            anti_entropy_interval_ms: 10_000,
            anti_entropy_keys_per_sec: 5_000,
            anti_entropy_bytes_per_sec: 32 << 20,
            anti_entropy_sessions: 8,
            max_object_bytes: 8 << 20,
            max_siblings: 100,
            tombstone_min_age_ms: 300_000,
            background_items_per_sec: 10_000,
            background_bytes_per_sec: 64 << 20,
            background_p99_target_ms: 20,
            background_min_share: 0.01,
            max_value_bytes: crate::limits::DEFAULT_MAX_VALUE_BYTES,
        }
    }
}

impl NodeConfig {
    /// The failure detector's settings: the threshold, and the gossip interval as the expected
    /// heartbeat interval before any was measured.
    pub fn detector(&self) -> DetectorConfig {
        DetectorConfig {
            threshold: self.phi_threshold,
            first_interval_ms: self.gossip_interval_ms as f64,
            ..DetectorConfig::default()
        }
    }

    /// The background scheduler's settings.
    pub fn scheduler(&self) -> SchedulerConfig {
        SchedulerConfig {
            items_per_sec: self.background_items_per_sec,
            bytes_per_sec: self.background_bytes_per_sec,
            target_p99_ms: self.background_p99_target_ms,
            min_share: self.background_min_share,
        }
    }

    /// The anti-entropy settings.
    pub fn anti_entropy(&self) -> AntiEntropyConfig {
        AntiEntropyConfig {
            n: usize::from(self.n),
            interval_ms: self.anti_entropy_interval_ms,
            keys_per_sec: self.anti_entropy_keys_per_sec,
            bytes_per_sec: self.anti_entropy_bytes_per_sec,
            sessions: self.anti_entropy_sessions,
            timeout_ms: self.request_timeout_ms * 5,
            tombstone_min_age_ms: self.tombstone_min_age_ms,
            max_value_bytes: self.max_value_bytes,
        }
    }
}
