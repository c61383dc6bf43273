//! The scheduler of background work: hint delivery, anti-entropy (repairs and range
//! transfers), moved-data handovers and tombstone collection draw from one shared budget of
//! items and bytes per second, on top of each worker's own limits.
//!
//! The budget yields to foreground latency, as in the Dynamo paper's section 6.5: the
//! coordinator records how long each get and put it answered took; once a second the scheduler
//! takes the p99 of that window and, when it is above the target, halves the share of the budget
//! background work may use (down to a floor, so that a job always finishes); below the target
//! the share grows back by a quarter a second (from the floor to the whole budget in about 25
//! seconds: a slow climb, so the share settles near what the foreground leaves over instead of
//! swinging between the ends). With no target (0) the share stays whole.

use super::throttle::Throttle;
use serde::{Deserialize, Serialize};

/// Milliseconds recorded exactly; slower operations count in the last slot.
const SLOTS: usize = 1001;
/// Length of one feedback window, ms.
const WINDOW_MS: u64 = 1000;
/// Fewer foreground operations than this in a window say nothing about their latency.
const MIN_SAMPLES: u64 = 20;
/// Growth of the share per window below the target.
const GROWTH: f64 = 1.25;
/// Windows kept for operators (two minutes).
const HISTORY: usize = 120;

/// The scheduler's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SchedulerConfig {
    /// Background items (objects moved, hints delivered, tombstones collected) per second,
    /// for every worker together, at a whole share.
    pub items_per_sec: u64,
    /// Background bytes per second, every worker together, at a whole share.
    pub bytes_per_sec: u64,
    /// Foreground p99 above which background work backs off, ms; 0 turns the feedback off.
    pub target_p99_ms: u64,
    /// Smallest share background work is ever given (it still finishes).
    pub min_share: f64,
}

/// A window of operation latencies, in whole milliseconds.
#[derive(Debug, Clone)]
pub struct LatencyWindow {
    counts: Vec<u32>,
    total: u64,
}

impl Default for LatencyWindow {
    fn default() -> Self {
        Self {
            counts: vec![0; SLOTS],
            total: 0,
        }
    }
}

impl LatencyWindow {
    /// Records one operation that took `ms`.
    pub fn record(&mut self, ms: u64) {
        let slot = (ms as usize).min(SLOTS - 1);
        self.counts[slot] = self.counts[slot].saturating_add(1);
        self.total += 1;
    }

    /// Operations recorded.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Whether nothing was recorded.
    pub fn is_empty(&self) -> bool {
        self.total == 0
    }

    /// The `q` quantile (0..=1), in ms; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<u64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((self.total as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (ms, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(ms as u64);
            }
        }
        Some((SLOTS - 1) as u64)
    }

    /// Adds `other`'s counts to this window and empties `other`.
    pub fn absorb(&mut self, other: &mut LatencyWindow) {
        if other.total == 0 {
            return;
        }
        for (a, b) in self.counts.iter_mut().zip(other.counts.iter_mut()) {
            *a = a.saturating_add(*b);
            *b = 0;
        }
        self.total += other.total;
        other.total = 0;
    }

    fn clear(&mut self) {
        if self.total > 0 {
            self.counts.iter_mut().for_each(|c| *c = 0);
            self.total = 0;
        }
    }
}

/// What the scheduler reports.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct SchedulerStats {
    /// The share of the background budget in use now (1 = all of it).
    pub share: f64,
    /// Foreground p99 of the last window, ms (`None`: too few operations to tell).
    pub p99_ms: Option<u64>,
    /// Foreground p50 of the last window, ms.
    pub p50_ms: Option<u64>,
    /// Foreground operations answered in the last window.
    pub ops: u64,
    /// The target p99, ms (0: no feedback).
    pub target_p99_ms: u64,
    /// Windows in which background work backed off.
    pub backoffs: u64,
    /// Background items started since the node started.
    pub items: u64,
}

/// One second of foreground traffic as the scheduler saw it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Second {
    /// Operations answered.
    pub ops: u64,
    /// Their p50, ms (`None` with no operation).
    pub p50_ms: Option<u64>,
    /// Their p99, ms.
    pub p99_ms: Option<u64>,
}

/// The shared budget and its feedback loop.
#[derive(Debug, Clone)]
pub struct Scheduler {
    config: SchedulerConfig,
    budget: Throttle,
    window: LatencyWindow,
    window_start: Option<u64>,
    stats: SchedulerStats,
    ticks: u64,
    history: std::collections::VecDeque<Second>,
}

impl Scheduler {
    /// A scheduler with a whole share.
    pub fn new(config: SchedulerConfig) -> Self {
        Self {
            config,
            budget: Throttle::new(config.items_per_sec, usize::MAX)
                .with_bytes(config.bytes_per_sec),
            window: LatencyWindow::default(),
            window_start: None,
            ticks: 0,
            history: std::collections::VecDeque::with_capacity(HISTORY),
            stats: SchedulerStats {
                share: 1.0,
                target_p99_ms: config.target_p99_ms,
                ..SchedulerStats::default()
            },
        }
    }

    /// Time passed: takes the foreground latencies recorded since the last call (`recent`, which
    /// is emptied), closes the window once a second and adjusts the share, refills the budget.
    pub fn tick(&mut self, now: u64, recent: &mut LatencyWindow) {
        self.window.absorb(recent);
        let start = *self.window_start.get_or_insert(now);
        if now >= start + WINDOW_MS {
            self.window_start = Some(now);
            self.close_window();
        }
        self.budget.refill(now);
        self.ticks += 1;
    }

    /// Whether hint delivery goes before anti-entropy this tick (they alternate).
    pub fn handoff_first(&self) -> bool {
        self.ticks.is_multiple_of(2)
    }

    fn close_window(&mut self) {
        let ops = self.window.len();
        let enough = ops >= MIN_SAMPLES;
        self.stats.ops = ops;
        self.stats.p99_ms = self.window.quantile(0.99).filter(|_| enough);
        self.stats.p50_ms = self.window.quantile(0.5).filter(|_| enough);
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(Second {
            ops,
            p50_ms: self.window.quantile(0.5),
            p99_ms: self.window.quantile(0.99),
        });
        self.window.clear();
        let share = next_share(
            self.stats.share,
            self.stats.p99_ms,
            self.config.target_p99_ms,
            self.config.min_share,
        );
        if share < self.stats.share {
            self.stats.backoffs += 1;
        }
        self.stats.share = share;
        self.budget.set_share(share);
    }

    /// The shared budget, to be passed to each worker.
    pub fn budget(&mut self) -> &mut Throttle {
        &mut self.budget
    }

    /// The share of the budget in use now (0..=1).
    pub fn share(&self) -> f64 {
        self.stats.share
    }

    /// The last two minutes of foreground traffic, a second each, oldest first.
    pub fn history(&self) -> Vec<Second> {
        self.history.iter().copied().collect()
    }

    /// Counters and the feedback's state.
    pub fn stats(&self) -> SchedulerStats {
        SchedulerStats {
            items: self.budget.spent(),
            ..self.stats
        }
    }
}

/// The share of the background budget after a window whose foreground p99 was `p99` (`None`:
/// too little foreground traffic to tell): halved above `target` (not below `min`), a quarter
/// more otherwise (up to 1). A target of 0 means no feedback: always 1.
pub fn next_share(share: f64, p99: Option<u64>, target: u64, min: f64) -> f64 {
    if target == 0 {
        return 1.0;
    }
    match p99 {
        Some(p) if p > target => (share / 2.0).max(min),
        _ => (share * GROWTH).min(1.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_of_a_window() {
        let mut w = LatencyWindow::default();
        assert_eq!(w.quantile(0.99), None);
        for ms in 0..100 {
            w.record(ms);
        }
        w.record(5_000);
        assert_eq!(w.quantile(0.5), Some(50));
        assert_eq!(w.quantile(0.99), Some(99));
        assert_eq!(
            w.quantile(1.0),
            Some(1000),
            "slow ones count in the last slot"
        );
        let mut other = LatencyWindow::default();
        other.absorb(&mut w);
        assert!(w.is_empty());
        assert_eq!(other.len(), 101);
    }

    #[test]
    fn the_share_halves_above_the_target_and_grows_back_slowly() {
        assert_eq!(next_share(1.0, Some(30), 20, 0.05), 0.5);
        assert_eq!(
            next_share(0.06, Some(30), 20, 0.05),
            0.05,
            "never below the floor"
        );
        assert!((next_share(0.4, Some(10), 20, 0.05) - 0.5).abs() < 1e-9);
        assert!((next_share(0.4, None, 20, 0.05) - 0.5).abs() < 1e-9);
        assert_eq!(next_share(0.9, Some(1), 20, 0.05), 1.0);
        assert_eq!(
            next_share(0.1, Some(900), 0, 0.05),
            1.0,
            "no target, no feedback"
        );
    }

    #[test]
    fn slow_foreground_windows_shrink_the_budget() {
        let mut s = Scheduler::new(SchedulerConfig {
            items_per_sec: 1000,
            bytes_per_sec: 1 << 30,
            target_p99_ms: 20,
            min_share: 0.05,
        });
        let mut recent = LatencyWindow::default();
        s.tick(0, &mut recent);
        for _ in 0..100 {
            recent.record(50);
        }
        s.tick(1_000, &mut recent);
        assert_eq!(s.stats().share, 0.5);
        assert_eq!(s.stats().p99_ms, Some(50));
        // Spend the bucket, then a second earns half of the whole rate.
        while s.budget().budget(0) > 0 {
            s.budget().spend();
        }
        s.tick(1_500, &mut recent);
        assert_eq!(s.budget().budget(0), 250, "half a second at half of 1000/s");
        for _ in 0..100 {
            recent.record(2);
        }
        s.tick(2_000, &mut recent);
        assert!(
            (s.stats().share - 0.625).abs() < 1e-9,
            "fast again: it grows back"
        );
        assert_eq!(s.stats().backoffs, 1);
    }
}
