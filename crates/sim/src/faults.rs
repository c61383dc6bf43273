//! Which faults a run injects, and when: crashes, pauses, partitions, loss and clock steps.

use crate::world::{Ev, Sim};
use std::collections::BTreeSet;

/// Which faults a run injects.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Faults {
    /// Node crashes and restarts: most crash (a new actor at restart), some stop cleanly (the
    /// same actor goes on above its counter floor), some lose their data directory (an empty
    /// one at restart: a new instance that rebuilds its ranges).
    pub crash: bool,
    /// Node pauses (a stopped process: no answers, no connection loss).
    pub pause: bool,
    /// Slow nodes: one node handles every message and request 100-800 ms late (a slow disk,
    /// a GC pause, overload), answering all the same.
    pub slow: bool,
    /// One-way and two-way partitions.
    pub partition: bool,
    /// Random message loss (5% while active).
    pub loss: bool,
    /// Message delays up to 50 ms (reordering).
    pub delay: bool,
    /// Per-node wall-clock skew up to ±2 s, and wall-clock steps of up to ±60 s during the run
    /// (timers run on the monotonic clock and must not notice).
    pub skew: bool,
    /// Membership changes: a node joins, one leaves, one stops to have its data directory
    /// copied; with enough nodes, a crashed one is removed, or a live one cut off from the
    /// others is removed and then reachable again (both with 7 nodes). Once the cluster settled,
    /// the removed node's machine starts again on its old data and the copied directory is put
    /// back; then what ended is wiped and joins again.
    pub membership: bool,
}

impl Faults {
    /// Every fault kind.
    pub fn all() -> Self {
        Faults {
            crash: true,
            pause: true,
            slow: true,
            partition: true,
            loss: true,
            delay: true,
            skew: true,
            membership: true,
        }
    }

    /// Parses `all`, `none`, or a comma-separated list of kinds.
    pub fn parse(s: &str) -> Result<Self, String> {
        let mut f = Faults::default();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            match part {
                "all" => f = Faults::all(),
                "none" => {}
                "crash" => f.crash = true,
                "pause" => f.pause = true,
                "slow" => f.slow = true,
                "partition" => f.partition = true,
                "loss" => f.loss = true,
                "delay" => f.delay = true,
                "skew" => f.skew = true,
                "membership" => f.membership = true,
                other => {
                    return Err(format!(
                        "unknown fault {other:?}: use crash, pause, slow, partition, loss, delay, skew, membership, all or none"
                    ));
                }
            }
        }
        Ok(f)
    }

    /// The kinds as the command line spells them.
    pub fn describe(&self) -> String {
        let names: Vec<&str> = [
            (self.crash, "crash"),
            (self.pause, "pause"),
            (self.slow, "slow"),
            (self.partition, "partition"),
            (self.loss, "loss"),
            (self.delay, "delay"),
            (self.skew, "skew"),
            (self.membership, "membership"),
        ]
        .iter()
        .filter(|(on, _)| *on)
        .map(|(_, n)| *n)
        .collect();
        if names.is_empty() {
            "none".into()
        } else {
            names.join(",")
        }
    }
}

impl Sim {
    /// Schedules the fault episodes inside `[start, end)`.
    pub(crate) fn schedule_faults(&mut self, start: u64, end: u64) {
        let f = self.cfg.faults;
        if f.membership && self.spare().is_some() {
            // The spare node joins early; later an original node leaves and, with enough nodes
            // left for N, another crashes for good and is removed.
            let originals = self.cfg.nodes;
            let join = self.rng.range(start, start + (end - start) / 3);
            self.at(join, Ev::Join(originals));
            let leave = self.rng.range(join + 500, end.max(join + 1000));
            let leaver = self.rng.below(originals as u64) as usize;
            self.at(leave, Ev::Leave(leaver));
            // The other originals, in a seeded order: the victims of the scenarios below.
            let mut others: Vec<usize> = (0..originals).filter(|i| *i != leaver).collect();
            for k in (1..others.len()).rev() {
                let j = self.rng.below(k as u64 + 1) as usize;
                others.swap(k, j);
            }
            let n = usize::from(self.cfg.node.n);
            let (crashed, cut_off) = if originals > n + 2 {
                (true, true)
            } else if originals > n + 1 {
                let crashed = self.rng.chance(0.5);
                (crashed, !crashed)
            } else {
                (false, false)
            };
            let mut next = others.into_iter();
            let copied = next.next();
            let crash_victim = crashed.then(|| next.next()).flatten();
            let cut_victim = cut_off.then(|| next.next()).flatten();
            let by = next.next().unwrap_or(0);
            if let Some(victim) = crash_victim {
                // A node dies for good and is removed.
                self.at(leave + 200, Ev::Retire(victim));
                self.at(leave + 3_000, Ev::Remove { victim, by });
            }
            if let Some(victim) = cut_victim {
                // A live node is cut off from every other and removed; later it is reachable.
                let t = self.rng.range(start, end);
                self.at(t, Ev::Isolate(victim));
                self.at(t + 3_000, Ev::Remove { victim, by });
            }
            if let Some(i) = copied {
                // A node stops, its data directory is copied, and it starts again.
                let t = self.rng.range(start, end);
                self.at(t, Ev::CopyDir(i));
            }
        }
        let mut kinds = Vec::new();
        if f.crash {
            kinds.push(0);
        }
        if f.pause {
            kinds.push(1);
        }
        if f.partition {
            kinds.push(2);
        }
        if f.loss {
            kinds.push(3);
        }
        if f.skew {
            kinds.push(4);
        }
        if f.slow {
            kinds.push(5);
        }
        if kinds.is_empty() {
            return;
        }
        let episodes = self.rng.range(2, 6);
        let n = self.cfg.nodes;
        for _ in 0..episodes {
            let t0 = self.rng.range(start, end);
            let len = self.rng.range(200, 3000);
            let kind = kinds[self.rng.below(kinds.len() as u64) as usize];
            let victim = self.rng.below(n as u64) as usize;
            self.faults += 1;
            match kind {
                0 => {
                    let how = self.rng.below(20);
                    let down = match how {
                        0..=11 => Ev::Crash(victim),
                        12..=16 => Ev::Stop(victim),
                        _ => Ev::LoseDisk(victim),
                    };
                    self.at(t0, down);
                    self.at(t0 + len, Ev::Restart(victim));
                }
                1 => {
                    self.at(t0, Ev::Pause(victim));
                    self.at(t0 + len, Ev::Resume(victim));
                }
                2 => {
                    let side: BTreeSet<usize> = (0..n).filter(|_| self.rng.chance(0.4)).collect();
                    let one_way = self.rng.chance(0.3);
                    let mut links = Vec::new();
                    for a in 0..n {
                        for b in 0..n {
                            if side.contains(&a) && !side.contains(&b) {
                                links.push((a, b));
                                if !one_way {
                                    links.push((b, a));
                                }
                            }
                        }
                    }
                    self.at(t0, Ev::Cut(links.clone()));
                    self.at(t0 + len, Ev::Heal(links));
                }
                3 => {
                    self.at(t0, Ev::Loss(true));
                    self.at(t0 + len, Ev::Loss(false));
                }
                5 => {
                    let ms = self.rng.range(100, 800);
                    self.at(t0, Ev::Slow(victim, ms));
                    self.at(t0 + len, Ev::Slow(victim, 0));
                }
                _ => {
                    // The wall clock steps back or forth by up to a minute, then steps back
                    // again; timers follow the monotonic clock and must not notice.
                    let delta = self.rng.range(0, 120_000) as i64 - 60_000;
                    self.at(t0, Ev::ClockStep(victim, delta));
                    self.at(t0 + len, Ev::ClockStep(victim, -delta));
                }
            }
        }
    }
}
