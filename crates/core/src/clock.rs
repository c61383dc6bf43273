//! Time as the core sees it: two clocks, kept apart.
//!
//! - The *monotonic* clock drives every timer: request deadlines, gossip rounds, the failure
//!   detector, hint scans and throttles. It never goes back, whatever happens to the wall clock.
//! - The *wall* clock (ms since the Unix epoch) is read only for the timestamps the design
//!   stores in versions (the last-operation time of a vector-clock entry).
//!
//! A node whose wall clock steps back therefore keeps every timing; only the timestamps it
//! writes are off, as they would be on any host with a wrong clock.

/// The time of one input to the node: both clocks, read together by the shell.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Now {
    /// Milliseconds on a monotonic clock with any origin: for timers and deadlines only.
    pub mono: u64,
    /// Milliseconds since the Unix epoch from the wall clock: for version timestamps only.
    pub wall: u64,
}

impl Now {
    /// Both clocks at `ms` (simulations and tests that need no difference between them).
    pub fn at(ms: u64) -> Now {
        Now { mono: ms, wall: ms }
    }

    /// This time `ms` later on both clocks.
    pub fn plus(self, ms: u64) -> Now {
        Now {
            mono: self.mono + ms,
            wall: self.wall + ms,
        }
    }
}
