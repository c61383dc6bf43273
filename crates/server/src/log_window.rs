//! Warnings that a peer or client can trigger at will (refused connections) are rate-limited:
//! a few are logged one by one, the rest counted and said once.

use std::time::Duration;

/// Lets through at most [`LogWindow::LIMIT`] events per 10 s and counts the others.
#[derive(Debug)]
pub struct LogWindow {
    start: Option<std::time::Instant>,
    logged: u32,
    suppressed: u64,
}

impl LogWindow {
    /// Events logged one by one per window.
    pub const LIMIT: u32 = 10;
    const PERIOD: Duration = Duration::from_secs(10);

    /// A window not started yet.
    pub const fn new() -> Self {
        Self {
            start: None,
            logged: 0,
            suppressed: 0,
        }
    }

    /// Whether the event at `now` is logged, and how many the window that just ended did not
    /// log (to be said once).
    pub fn admit(&mut self, now: std::time::Instant) -> (bool, u64) {
        let mut ended = 0;
        if self
            .start
            .is_none_or(|s| now.duration_since(s) >= Self::PERIOD)
        {
            ended = self.suppressed;
            *self = LogWindow {
                start: Some(now),
                logged: 0,
                suppressed: 0,
            };
        }
        if self.logged < Self::LIMIT {
            self.logged += 1;
            (true, ended)
        } else {
            self.suppressed += 1;
            (false, ended)
        }
    }
}

impl Default for LogWindow {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusal_warnings_are_limited_per_window_and_summed_up_once() {
        let mut w = LogWindow::new();
        let t0 = std::time::Instant::now();
        let logged = (0..25).filter(|_| w.admit(t0).0).count();
        assert_eq!(logged, 10, "ten logged one by one");
        let (log, earlier) = w.admit(t0 + Duration::from_secs(11));
        assert!(log);
        assert_eq!(
            earlier, 15,
            "the fifteen others said once, in the next window"
        );
        assert_eq!(w.admit(t0 + Duration::from_secs(12)).1, 0);
    }
}
