//! Local failure detection: phi accrual (Hayashibara et al. 2004, as in Cassandra and Akka).
//!
//! Each node keeps its own opinion of every peer; nothing here is gossiped. Evidence of life
//! comes from three places:
//! - the peer's gossip heartbeat advancing (wherever we heard it);
//! - the peer answering one of our requests;
//! - request timeouts, which count against the peer;
//! - requests unanswered: a peer asked something and silent ever since for `suspect_after_ms`
//!   (a fraction of the request timeout) is suspected at once, without waiting for its requests
//!   to time out or for phi to rise. A paused process (SIGSTOP, a long GC or I/O stall) keeps
//!   its TCP connections open and its heartbeat history good for seconds; this catches it within
//!   `suspect_after_ms` of the first request it leaves unanswered, and the first message heard
//!   from it re-admits it.
//!
//! For heartbeats, the detector keeps a window of inter-arrival times. `phi(now)` is
//! `-log10(P(a heartbeat comes later than now))` under a normal distribution fitted to that
//! window, with a floor on the standard deviation. It says how surprised we would be if the peer
//! were still alive. A peer is suspected when phi passes the threshold, or after
//! `max_timeouts` consecutive request timeouts. A heartbeat or a successful answer re-admits it.
//! An answer refreshes "last heard" without adding an interval sample, so busy request traffic
//! does not shrink the expected heartbeat interval.

use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

/// Detector settings.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct DetectorConfig {
    /// Phi above which a peer is suspected (Cassandra's default: 8).
    pub threshold: f64,
    /// Inter-arrival samples kept per peer.
    pub window: usize,
    /// Floor on the standard deviation, ms: absorbs jitter in heartbeat arrival.
    pub min_std_dev_ms: f64,
    /// Extra pause tolerated before suspicion grows, ms (added to the mean).
    pub acceptable_pause_ms: f64,
    /// The gossip interval, ms: assumed before any sample arrives, and a floor on the mean.
    pub first_interval_ms: f64,
    /// Consecutive request timeouts after which a peer is suspected until heard from.
    pub max_timeouts: u32,
    /// A peer asked a request and heard from in no way since, for this long, ms, is suspected
    /// until heard from. 0: off.
    pub suspect_after_ms: u64,
}

impl Default for DetectorConfig {
    fn default() -> Self {
        Self {
            threshold: 8.0,
            window: 100,
            min_std_dev_ms: 500.0,
            acceptable_pause_ms: 3000.0,
            first_interval_ms: 1000.0,
            max_timeouts: 3,
            suspect_after_ms: 500,
        }
    }
}

#[derive(Debug, Clone)]
struct PeerState {
    intervals: VecDeque<f64>,
    /// Running sum and sum of squares of `intervals`, so phi costs O(1).
    sum: f64,
    sum_sq: f64,
    last_heartbeat: Option<u64>,
    last_heard: u64,
    timeouts: u32,
    /// When the oldest request sent since the peer was last heard from was sent.
    awaiting_since: Option<u64>,
}

/// One node's view of its peers' liveness.
#[derive(Debug, Clone)]
pub struct FailureDetector {
    config: DetectorConfig,
    peers: BTreeMap<String, PeerState>,
}

/// What the detector thinks of a peer, for operators.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Opinion {
    /// Current phi (0 when nothing is known yet).
    pub phi: f64,
    /// Milliseconds since the peer was last heard from.
    pub last_heard_ms: u64,
    /// Consecutive request timeouts.
    pub timeouts: u32,
    /// Whether it left a request unanswered, and stayed silent, for `suspect_after_ms`.
    pub unanswered: bool,
    /// Whether the peer is believed alive.
    pub alive: bool,
}

impl FailureDetector {
    /// A detector with `config`.
    pub fn new(config: DetectorConfig) -> Self {
        Self {
            config,
            peers: BTreeMap::new(),
        }
    }

    /// The settings.
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    fn state(&mut self, peer: &str, now: u64) -> &mut PeerState {
        self.peers
            .entry(peer.to_owned())
            .or_insert_with(|| PeerState {
                intervals: VecDeque::new(),
                sum: 0.0,
                sum_sq: 0.0,
                last_heartbeat: None,
                last_heard: now,
                timeouts: 0,
                awaiting_since: None,
            })
    }

    /// The peer's heartbeat advanced at `now`.
    pub fn heartbeat(&mut self, peer: &str, now: u64) {
        let window = self.config.window;
        let s = self.state(peer, now);
        if let Some(last) = s.last_heartbeat
            && now > last
        {
            let x = (now - last) as f64;
            s.intervals.push_back(x);
            s.sum += x;
            s.sum_sq += x * x;
            while s.intervals.len() > window {
                if let Some(old) = s.intervals.pop_front() {
                    s.sum -= old;
                    s.sum_sq -= old * old;
                }
            }
        }
        s.last_heartbeat = Some(now);
        s.last_heard = s.last_heard.max(now);
        s.timeouts = 0;
        s.awaiting_since = None;
    }

    /// The peer answered a request at `now` (or sent anything).
    pub fn success(&mut self, peer: &str, now: u64) {
        let s = self.state(peer, now);
        s.last_heard = s.last_heard.max(now);
        s.timeouts = 0;
        s.awaiting_since = None;
    }

    /// A request that expects an answer was sent to the peer at `now`.
    pub fn asked(&mut self, peer: &str, now: u64) {
        let s = self.state(peer, now);
        s.awaiting_since.get_or_insert(now);
    }

    /// Whether the peer has left a request unanswered, and stayed silent, for
    /// `suspect_after_ms` at `now`.
    pub fn unanswered(&self, peer: &str, now: u64) -> bool {
        let after = self.config.suspect_after_ms;
        after > 0
            && self
                .peers
                .get(peer)
                .and_then(|s| s.awaiting_since)
                .is_some_and(|since| now >= since + after)
    }

    /// A request to the peer timed out.
    pub fn timeout(&mut self, peer: &str, now: u64) {
        let s = self.state(peer, now);
        s.timeouts = s.timeouts.saturating_add(1);
    }

    /// Forgets a peer's history (it restarted: a new generation).
    pub fn reset(&mut self, peer: &str, now: u64) {
        self.peers.remove(peer);
        self.heartbeat(peer, now);
    }

    /// Phi for `peer` at `now`: 0 for an unknown peer.
    pub fn phi(&self, peer: &str, now: u64) -> f64 {
        let Some(s) = self.peers.get(peer) else {
            return 0.0;
        };
        let elapsed = now.saturating_sub(s.last_heard) as f64;
        let n = s.intervals.len() as f64;
        let mean = if n == 0.0 {
            self.config.first_interval_ms
        } else {
            s.sum / n
        };
        let var = if n < 2.0 {
            0.0
        } else {
            (s.sum_sq / n - mean * mean).max(0.0)
        };
        // Heartbeats advance once per gossip interval, so a shorter mean is an artifact of
        // bunching; and until ten samples are in, the spread is not known: be lenient.
        let mean = mean.max(self.config.first_interval_ms);
        let floor = if n < 10.0 {
            2.0 * self.config.min_std_dev_ms
        } else {
            self.config.min_std_dev_ms
        };
        let std = var.sqrt().max(floor);
        phi_normal(elapsed, mean + self.config.acceptable_pause_ms, std)
    }

    /// Whether `peer` is believed alive at `now`.
    pub fn alive(&self, peer: &str, now: u64) -> bool {
        match self.peers.get(peer) {
            None => true,
            Some(s) => {
                s.timeouts < self.config.max_timeouts
                    && !self.unanswered(peer, now)
                    && self.phi(peer, now) < self.config.threshold
            }
        }
    }

    /// The detector's opinion of `peer`.
    pub fn opinion(&self, peer: &str, now: u64) -> Opinion {
        let s = self.peers.get(peer);
        Opinion {
            phi: self.phi(peer, now),
            last_heard_ms: s.map_or(0, |s| now.saturating_sub(s.last_heard)),
            timeouts: s.map_or(0, |s| s.timeouts),
            unanswered: self.unanswered(peer, now),
            alive: self.alive(peer, now),
        }
    }
}

/// `-log10(1 - CDF(elapsed))` for a normal distribution, with the logistic approximation of
/// the CDF that Akka uses (error below 1e-4, and no overflow for large `elapsed`).
fn phi_normal(elapsed: f64, mean: f64, std: f64) -> f64 {
    let y = (elapsed - mean) / std;
    let e = (-y * (1.5976 + 0.070566 * y * y)).exp();
    let p_later = if elapsed > mean {
        e / (1.0 + e)
    } else {
        1.0 - 1.0 / (1.0 + e)
    };
    if p_later <= 0.0 {
        f64::MAX
    } else {
        -p_later.log10()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn steady(fd: &mut FailureDetector, peer: &str, from: u64, beats: u64, every: u64) -> u64 {
        let mut t = from;
        for _ in 0..beats {
            fd.heartbeat(peer, t);
            t += every;
        }
        t - every
    }

    #[test]
    fn phi_grows_with_silence_and_crosses_the_threshold() {
        let mut fd = FailureDetector::new(DetectorConfig::default());
        let last = steady(&mut fd, "a", 0, 30, 1000);
        assert!(fd.phi("a", last + 500) < 1.0);
        assert!(fd.alive("a", last + 2000));
        let mut t = last;
        while fd.alive("a", t) {
            t += 100;
        }
        let detect = t - last;
        assert!(
            (3000..8000).contains(&detect),
            "suspected after {detect} ms of silence"
        );
        // Hearing from it again re-admits it.
        fd.heartbeat("a", t + 10);
        assert!(fd.alive("a", t + 10));
    }

    #[test]
    fn jittery_heartbeats_do_not_flap() {
        let mut fd = FailureDetector::new(DetectorConfig::default());
        let mut t = 0;
        for i in 0..500u64 {
            // Arrivals every 400 to 2600 ms.
            t += 400 + (i * 7919) % 2200;
            assert!(fd.alive("a", t), "suspected at beat {i}");
            fd.heartbeat("a", t);
        }
    }

    #[test]
    fn timeouts_suspect_and_success_readmits() {
        let mut fd = FailureDetector::new(DetectorConfig::default());
        steady(&mut fd, "a", 0, 5, 1000);
        for _ in 0..3 {
            fd.timeout("a", 4100);
        }
        assert!(!fd.alive("a", 4100));
        fd.success("a", 4200);
        assert!(fd.alive("a", 4200));
        assert!(fd.alive("unknown", 0), "no evidence, no suspicion");
    }

    #[test]
    fn a_peer_silent_since_it_was_asked_is_suspected_until_heard_from() {
        let mut fd = FailureDetector::new(DetectorConfig::default());
        steady(&mut fd, "a", 0, 5, 1000);
        fd.asked("a", 4100);
        fd.asked("a", 4300);
        assert!(
            fd.alive("a", 4599),
            "within suspect_after_ms of the first request"
        );
        assert!(!fd.alive("a", 4600), "silent 500 ms since asked");
        fd.success("a", 4700);
        assert!(fd.alive("a", 5000), "an answer re-admits it");
        // Answered in time: never suspected.
        fd.asked("a", 5000);
        fd.success("a", 5100);
        assert!(fd.alive("a", 9000));
        // Off when 0.
        let mut off = FailureDetector::new(DetectorConfig {
            suspect_after_ms: 0,
            ..DetectorConfig::default()
        });
        steady(&mut off, "a", 0, 5, 1000);
        off.asked("a", 4100);
        assert!(off.alive("a", 4900));
    }

    #[test]
    fn phi_is_monotonic_in_elapsed_time() {
        let mut prev = 0.0;
        for ms in (0..20_000).step_by(250) {
            let p = phi_normal(ms as f64, 2000.0, 500.0);
            assert!(p >= prev, "phi decreased at {ms}");
            prev = p;
        }
    }
}
