//! The node's settings: quorums, timeouts, background work, limits. Each is declared once, in
//! the table below - name, type, default, documentation, command-line flag, and the range it
//! must lie in - and everything else follows from that declaration: the struct, its defaults,
//! the TOML keys (the field names, at the top level of the server's file), the flags and their
//! `--help` text (with the `clap` feature, which the server turns on), and the range checks.
//! Adding a setting is one entry here, and its use.

use super::collector::CollectorConfig;
use super::exchange::ExchangeConfig;
use super::handoff::HandoffConfig;
use super::handover::HandoverConfig;
use super::scheduler::SchedulerConfig;
use super::scrub::ScrubConfig;
use crate::failure_detector::DetectorConfig;
use serde::{Deserialize, Serialize};

/// Declares the settings: each entry is its documentation, `name: type = default`, its flag
/// (`flag "long"`, optionally `short 'c'`, and `value "NAME"` for the help), and optionally
/// `check |v| predicate => "what it must be"`.
macro_rules! settings {
    ($(
        $(#[doc = $doc:literal])*
        $name:ident : $ty:ty = $default:expr,
            flag $flag:literal $(, short $short:literal)?, value $value:literal
            $(, check |$v:ident| $check:expr => $must:literal)?;
    )*) => {
        /// Coordination settings. The defaults here are the node's defaults everywhere (the
        /// server's configuration embeds this struct).
        #[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
        #[cfg_attr(feature = "clap", derive(clap::Args))]
        #[serde(default)]
        pub struct NodeConfig {
            $(
                $(#[doc = $doc])*
                #[cfg_attr(feature = "clap", arg(
                    long = $flag, $(short = $short,)? value_name = $value,
                    default_value_t = $default
                ))]
                pub $name: $ty,
            )*
        }

        impl Default for NodeConfig {
            fn default() -> Self {
                Self { $($name: $default,)* }
            }
        }

        impl NodeConfig {
            /// Every setting's own range (see [`NodeConfig::validate`] for the ranges that
            /// tie settings together).
            fn check_each(&self) -> Result<(), String> {
                $($(
                    let $v = self.$name;
                    if !($check) {
                        return Err(format!("{} must be {} (it is {})", stringify!($name), $must, $v));
                    }
                )?)*
                Ok(())
            }
        }
    };
}

settings! {
    /// Replicas per key (N); the same on every node.
    n: u8 = 3, flag "replicas", short 'n', value "N", check |v| v >= 1 => "at least 1";
    /// Default read quorum (R); requests may override it with `?r=`.
    r: u8 = 2, flag "read-quorum", short 'r', value "R", check |v| v >= 1 => "at least 1";
    /// Default write quorum (W); requests may override it with `?w=`.
    w: u8 = 2, flag "write-quorum", short 'w', value "W", check |v| v >= 1 => "at least 1";
    /// How long a coordinator waits for replicas before answering 503, in milliseconds.
    request_timeout_ms: u64 = 2000, flag "request-timeout-ms", value "MS",
        check |v| v >= 1 => "at least 1";
    /// How often the node gossips membership with a random peer, in milliseconds.
    gossip_interval_ms: u64 = 1000, flag "gossip-interval-ms", value "MS",
        check |v| v >= 1 => "at least 1";
    /// Failure-detector threshold: a peer whose phi passes it is believed down.
    phi_threshold: f64 = 8.0, flag "phi-threshold", value "PHI",
        check |v| v > 0.0 && v.is_finite() => "a positive number";
    /// A peer that leaves a request unanswered and sends nothing at all for this long, in
    /// milliseconds, is avoided (as a coordinator and as a replica) until it is heard from
    /// again: a paused or stalled node is routed around well before its requests time out or
    /// its phi rises. 0 turns it off.
    suspect_after_ms: u64 = 500, flag "suspect-after-ms", value "MS";
    /// How often the hints kept for nodes that were down are scanned, to hand them back once
    /// their owner is up, in milliseconds.
    hint_scan_interval_ms: u64 = 1000, flag "hint-scan-interval-ms", value "MS",
        check |v| v >= 1 => "at least 1";
    /// Most hints handed back per second (so a returning node is not flooded).
    hint_rate_per_sec: u64 = 2000, flag "hint-rate", value "N",
        check |v| v >= 1 => "at least 1";
    /// Most hint deliveries in flight at once.
    hint_max_in_flight: usize = 64, flag "hint-max-in-flight", value "N",
        check |v| v >= 1 => "at least 1";
    /// Pause between the starts of two anti-entropy rounds (every range compared with its
    /// other replicas), in milliseconds; 0 runs anti-entropy only on demand
    /// (`dynamokv admin repair`).
    anti_entropy_interval_ms: u64 = 10_000, flag "anti-entropy-interval-ms", value "MS";
    /// Most objects anti-entropy sends or asks for per second.
    anti_entropy_keys_per_sec: u64 = 5_000, flag "anti-entropy-keys-per-sec", value "N",
        check |v| v >= 1 => "at least 1";
    /// Most object bytes anti-entropy sends per second.
    anti_entropy_bytes_per_sec: u64 = 32 << 20, flag "anti-entropy-bytes-per-sec", value "BYTES",
        check |v| v >= 1 => "at least 1";
    /// Most anti-entropy sessions at once.
    anti_entropy_sessions: usize = 8, flag "anti-entropy-sessions", value "N",
        check |v| v >= 1 => "at least 1";
    /// Largest value a put may carry, in bytes; a larger one is refused with 413, and checked
    /// again by coordinators and replicas on what peers send.
    max_value_bytes: usize = crate::limits::DEFAULT_MAX_VALUE_BYTES, flag "max-value-bytes",
        value "BYTES", check |v| (1..=256 << 20).contains(&v) => "1 to 268435456 (256 MiB)";
    /// Largest object per key (every sibling together), in bytes: a write that would pass it
    /// is refused with 413, so that an object always fits in a peer message.
    max_object_bytes: usize = 8 << 20, flag "max-object-bytes", value "BYTES";
    /// Most siblings per key: a write that would add one more is refused with 409 until a
    /// client reads the key and writes back with its context.
    max_siblings: usize = 100, flag "max-siblings", value "N", check |v| v >= 1 => "at least 1";
    /// Youngest tombstone (deleted key) that may be collected once every replica is proven to
    /// hold it, in milliseconds (wall clock).
    tombstone_min_age_ms: u64 = 300_000, flag "tombstone-min-age-ms", value "MS";
    /// Most stored objects the scrub reads (and checks) per second; 0 turns it off. The scrub
    /// reads every object now and then so that damage on disk is found - and salvaged and
    /// rebuilt from the other replicas - before a client's read needs the object.
    scrub_keys_per_sec: u64 = 2_000, flag "scrub-keys-per-sec", value "N";
    /// Pause between the end of one scrub pass and the start of the next, in milliseconds (the
    /// first starts 10 minutes after the node starts, or this long if shorter).
    scrub_interval_ms: u64 = 86_400_000, flag "scrub-interval-ms", value "MS",
        check |v| v >= 1 => "at least 1";
    /// Most background items per second, every worker together (hints delivered, objects
    /// repaired or transferred, collection and handover steps); scaled down while foreground
    /// latency is high.
    background_items_per_sec: u64 = 10_000, flag "background-items-per-sec", value "N",
        check |v| v >= 1 => "at least 1";
    /// Most background object bytes per second, every worker together.
    background_bytes_per_sec: u64 = 64 << 20, flag "background-bytes-per-sec", value "BYTES",
        check |v| v >= 1 => "at least 1";
    /// Foreground p99 (per second, as coordinators see it) above which background work backs
    /// off, in milliseconds; 0 turns the feedback off.
    background_p99_target_ms: u64 = 20, flag "background-p99-target-ms", value "MS";
    /// Smallest share of the background budget left while backing off (so background jobs
    /// still finish).
    background_min_share: f64 = 0.01, flag "background-min-share", value "SHARE",
        check |v| v > 0.0 && v <= 1.0 => "above 0 and at most 1";
}

impl NodeConfig {
    /// Checks every setting's range, and the ranges that tie settings together.
    pub fn validate(&self) -> Result<(), String> {
        self.check_each()?;
        if self.r > self.n || self.w > self.n {
            return Err(format!(
                "need r <= n and w <= n (n={}, r={}, w={})",
                self.n, self.r, self.w
            ));
        }
        if self.max_object_bytes < self.max_value_bytes.saturating_add(4096) {
            return Err(format!(
                "max_object_bytes ({}) must be at least max_value_bytes plus 4 KiB ({})",
                self.max_object_bytes,
                self.max_value_bytes.saturating_add(4096)
            ));
        }
        Ok(())
    }

    /// The failure detector's settings: the threshold, and the gossip interval as the expected
    /// heartbeat interval before any was measured.
    pub fn detector(&self) -> DetectorConfig {
        DetectorConfig {
            threshold: self.phi_threshold,
            first_interval_ms: self.gossip_interval_ms as f64,
            suspect_after_ms: self.suspect_after_ms,
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

    /// The Merkle exchange's settings.
    pub fn exchange(&self) -> ExchangeConfig {
        ExchangeConfig {
            n: usize::from(self.n),
            interval_ms: self.anti_entropy_interval_ms,
            keys_per_sec: self.anti_entropy_keys_per_sec,
            bytes_per_sec: self.anti_entropy_bytes_per_sec,
            sessions: self.anti_entropy_sessions,
            timeout_ms: self.request_timeout_ms * 5,
            max_value_bytes: self.max_value_bytes,
        }
    }

    /// The scrub's settings.
    pub fn scrub(&self) -> ScrubConfig {
        ScrubConfig {
            keys_per_sec: self.scrub_keys_per_sec,
            interval_ms: self.scrub_interval_ms,
        }
    }

    /// The tombstone collector's settings.
    pub fn collector(&self) -> CollectorConfig {
        CollectorConfig {
            interval_ms: self.anti_entropy_interval_ms,
            tombstone_min_age_ms: self.tombstone_min_age_ms,
        }
    }

    /// The moved-data handover's settings.
    pub fn handover(&self) -> HandoverConfig {
        HandoverConfig {
            n: usize::from(self.n),
            timeout_ms: self.request_timeout_ms * 5,
            max_value_bytes: self.max_value_bytes,
        }
    }

    /// The hinted-handoff worker's settings.
    pub fn handoff(&self) -> HandoffConfig {
        HandoffConfig {
            scan_interval_ms: self.hint_scan_interval_ms,
            rate_per_sec: self.hint_rate_per_sec,
            max_in_flight: self.hint_max_in_flight,
            timeout_ms: self.request_timeout_ms,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_defaults_pass_their_own_checks_and_bad_values_say_which() {
        assert_eq!(NodeConfig::default().validate(), Ok(()));
        let zero_n = NodeConfig {
            n: 0,
            ..NodeConfig::default()
        };
        assert_eq!(
            zero_n.validate(),
            Err("n must be at least 1 (it is 0)".to_owned())
        );
        let r_above_n = NodeConfig {
            r: 4,
            ..NodeConfig::default()
        };
        assert!(r_above_n.validate().unwrap_err().contains("r <= n"));
        let share = NodeConfig {
            background_min_share: 1.5,
            ..NodeConfig::default()
        };
        assert!(
            share
                .validate()
                .unwrap_err()
                .contains("background_min_share")
        );
        let unbounded = NodeConfig {
            max_value_bytes: 1 << 30,
            ..NodeConfig::default()
        };
        assert!(
            unbounded
                .validate()
                .unwrap_err()
                .contains("max_value_bytes")
        );
    }
}
