//! The scrub: a background worker ([`super::worker::Worker`]) that reads every object this node
//! stores, at a throttled rate, so that damage on disk is found before a client's read needs
//! the object. (Garage's scrub is the model.)
//!
//! Reading is the check: the store verifies each record's checksum, and the engine each block's.
//! What fails is the store's to report and to salvage; once the shell has salvaged, the node
//! rebuilds what was dropped from the other replicas ([`super::Node::storage_salvaged`]).
//!
//! A pass pages through the whole objects keyspace in ring order under its own rate
//! (`scrub_keys_per_sec`) and the shared background budget, so it backs off with the rest of the
//! background work while foreground latency is high. The first pass starts
//! [`FIRST_PASS_AFTER_MS`] after the node starts (or one interval, if shorter); each next one an
//! interval (`scrub_interval_ms`) after the last ended. A pass that meets damage stops; the next
//! starts after the salvage.

use super::throttle::Throttle;
use super::trees::BUILD_KEYS_PER_TICK;
use super::worker::{Ctx, Worker};
use crate::store::LocalStore;
use serde::{Deserialize, Serialize};

/// The longest wait for the first pass after a start, ms.
pub const FIRST_PASS_AFTER_MS: u64 = 10 * 60 * 1000;

/// After a pass met damage, the wait before the next one (the salvage runs meanwhile), ms.
const AFTER_DAMAGE_MS: u64 = 5_000;

/// The scrub's settings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ScrubConfig {
    /// Most objects read per second; 0 turns the scrub off.
    pub keys_per_sec: u64,
    /// Pause between the end of one pass and the start of the next, ms.
    pub interval_ms: u64,
}

/// The scrub's counters, for `/admin/stats`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScrubStats {
    /// Passes finished over every object.
    pub passes: u64,
    /// Objects read (and checked) so far, every pass together.
    pub checked: u64,
    /// Passes stopped by damage.
    pub damaged_passes: u64,
    /// Objects read by the pass under way (0 between passes).
    pub pass_checked: u64,
    /// Whether a pass is under way.
    pub running: bool,
    /// Ring position the pass under way has reached (progress: position / 2^64).
    pub position: u64,
    /// Monotonic ms until the next pass starts (0 while one runs).
    pub next_pass_in_ms: u64,
}

/// The scrub worker.
#[derive(Debug)]
pub struct Scrub {
    config: ScrubConfig,
    throttle: Throttle,
    /// The last key read by the pass under way (`None`: from the start).
    after: Option<Vec<u8>>,
    /// When the next pass starts (monotonic ms); `None` until the first tick sets it.
    next_pass_at: Option<u64>,
    running: bool,
    /// The storage was salvaged: start over at the next tick.
    restart: bool,
    /// The monotonic time of the last tick, ms.
    last_tick: u64,
    stats: ScrubStats,
}

impl Scrub {
    /// A scrub with `config`, idle until its first pass is due.
    pub fn new(config: ScrubConfig) -> Self {
        Scrub {
            config,
            throttle: Throttle::new(config.keys_per_sec.max(1), usize::MAX),
            after: None,
            next_pass_at: None,
            running: false,
            restart: false,
            last_tick: 0,
            stats: ScrubStats::default(),
        }
    }

    /// Counters and progress, as of the last tick.
    pub fn stats(&self) -> ScrubStats {
        let now = self.last_tick;
        ScrubStats {
            running: self.running,
            next_pass_in_ms: match (self.running, self.next_pass_at) {
                (false, Some(at)) => at.saturating_sub(now),
                _ => 0,
            },
            ..self.stats
        }
    }

    /// The storage was salvaged: the pass under way starts over after a short wait (what it
    /// read before is in a copy that no longer exists).
    pub fn restart(&mut self) {
        self.restart = true;
    }

    fn stop(&mut self, next_at: u64) {
        self.running = false;
        self.after = None;
        self.stats.pass_checked = 0;
        self.stats.position = 0;
        self.next_pass_at = Some(next_at);
    }
}

impl<S: LocalStore> Worker<S> for Scrub {
    fn tick(&mut self, ctx: &mut Ctx<'_, S>) {
        if self.config.keys_per_sec == 0 {
            return;
        }
        let now = ctx.now.mono;
        self.last_tick = now;
        if std::mem::take(&mut self.restart) {
            self.stop(now + AFTER_DAMAGE_MS);
        }
        let next = *self
            .next_pass_at
            .get_or_insert_with(|| now + self.config.interval_ms.min(FIRST_PASS_AFTER_MS));
        if !self.running {
            if now < next {
                return;
            }
            self.running = true;
            self.throttle = Throttle::new(self.config.keys_per_sec, usize::MAX);
        }
        self.throttle.set_share(ctx.share);
        self.throttle.refill(now);
        let budget = BUILD_KEYS_PER_TICK
            .min(self.throttle.budget(0))
            .min(ctx.budget.budget(0));
        if budget == 0 {
            return;
        }
        match ctx.store.scan(0, u64::MAX, self.after.as_deref(), budget) {
            Ok(page) => {
                let n = page.len();
                self.throttle.spend_many(n.max(1));
                ctx.budget.spend_many(n);
                self.stats.checked += n as u64;
                self.stats.pass_checked += n as u64;
                match page.last() {
                    Some((key, _)) if n == budget => {
                        self.stats.position = crate::ring::position(key);
                        self.after = Some(key.clone());
                    }
                    _ => {
                        self.stats.passes += 1;
                        self.stop(now + self.config.interval_ms);
                    }
                }
            }
            Err(e) => {
                // The store counted and logged the damage and asked for a salvage.
                ctx.errors.record("scrub", "reading objects", &e);
                self.stats.damaged_passes += 1;
                self.stop(now + AFTER_DAMAGE_MS);
            }
        }
    }
}
