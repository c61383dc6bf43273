//! Which nodes a client skips for now. A node that did not answer in time, or could not be
//! reached, is skipped for a while: 1 s, doubling each time it fails again, up to 16 s. When
//! that while is up, one request probes it (the others go on skipping it for another while);
//! the first answer from it brings it back. So a paused or dead node costs one request per
//! while, not one per request, and a node that recovers is used again within that while.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The first while a node that failed is skipped.
pub const FIRST_SKIP: Duration = Duration::from_secs(1);
/// The longest while a node that keeps failing is skipped.
pub const LONGEST_SKIP: Duration = Duration::from_secs(16);

#[derive(Debug, Clone, Copy)]
struct Suspect {
    until: Instant,
    skip_for: Duration,
}

/// The nodes a client skips for now, by URL (or any name the caller uses).
#[derive(Debug, Default)]
pub struct Suspects {
    nodes: Mutex<BTreeMap<String, Suspect>>,
}

impl Suspects {
    /// Nobody is skipped.
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Suspect>> {
        self.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether to skip `node` now. Once its while is up, the first caller is let through (it
    /// probes the node) and the others skip it for another while.
    pub fn skip(&self, node: &str) -> bool {
        self.skip_at(node, Instant::now())
    }

    fn skip_at(&self, node: &str, now: Instant) -> bool {
        let mut nodes = self.lock();
        let Some(s) = nodes.get_mut(node) else {
            return false;
        };
        if now < s.until {
            return true;
        }
        s.until = now + s.skip_for;
        false
    }

    /// `node` timed out or could not be reached: skip it for a while (longer each time).
    pub fn failed(&self, node: &str) {
        self.failed_at(node, Instant::now());
    }

    fn failed_at(&self, node: &str, now: Instant) {
        let mut nodes = self.lock();
        let skip_for = nodes
            .get(node)
            .map_or(FIRST_SKIP, |s| (s.skip_for * 2).min(LONGEST_SKIP));
        nodes.insert(
            node.to_owned(),
            Suspect {
                until: now + skip_for,
                skip_for,
            },
        );
    }

    /// `node` answered: it is not skipped any more.
    pub fn answered(&self, node: &str) {
        let mut nodes = self.lock();
        if !nodes.is_empty() {
            nodes.remove(node);
        }
    }

    /// The nodes skipped at this moment.
    pub fn skipped(&self) -> Vec<String> {
        let now = Instant::now();
        self.lock()
            .iter()
            .filter(|(_, s)| now < s.until)
            .map(|(n, _)| n.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_node_is_skipped_longer_each_time_probed_once_and_back_on_an_answer() {
        let s = Suspects::new();
        let t = Instant::now();
        assert!(!s.skip_at("a", t));
        s.failed_at("a", t);
        assert!(s.skip_at("a", t + Duration::from_millis(999)));
        // The while is up: one probe goes through, the others skip it again.
        assert!(!s.skip_at("a", t + FIRST_SKIP));
        assert!(s.skip_at("a", t + FIRST_SKIP + Duration::from_millis(1)));
        // The probe failed: twice as long.
        let t2 = t + FIRST_SKIP + Duration::from_millis(10);
        s.failed_at("a", t2);
        assert!(s.skip_at("a", t2 + Duration::from_millis(1999)));
        assert!(!s.skip_at("a", t2 + 2 * FIRST_SKIP));
        for _ in 0..10 {
            s.failed_at("a", t2);
        }
        assert!(
            !s.skip_at("a", t2 + LONGEST_SKIP),
            "never longer than the longest"
        );
        s.answered("a");
        assert!(!s.skip_at("a", t2));
        assert!(!s.skip_at("b", t2), "others are untouched");
    }
}
