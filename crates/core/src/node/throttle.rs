//! The throttle for background work: a token bucket of items per second, an optional one of
//! bytes per second, and a cap on the items in flight. Hinted handoff and anti-entropy each run
//! under one (range transfers will too).

/// A token bucket with a concurrency cap.
#[derive(Debug, Clone)]
pub struct Throttle {
    rate_per_sec: f64,
    max_in_flight: usize,
    tokens: f64,
    bytes_per_sec: Option<f64>,
    bytes: f64,
    last_refill: Option<u64>,
}

impl Throttle {
    /// At most `rate_per_sec` items per second (bursts up to one second's worth, which is also
    /// what it starts with) and `max_in_flight` at once.
    pub fn new(rate_per_sec: u64, max_in_flight: usize) -> Self {
        let rate = rate_per_sec as f64;
        Self {
            rate_per_sec: rate,
            max_in_flight,
            tokens: rate.max(1.0),
            bytes_per_sec: None,
            bytes: 0.0,
            last_refill: None,
        }
    }

    /// Also at most `bytes_per_sec` bytes per second (bursts up to one second's worth).
    pub fn with_bytes(mut self, bytes_per_sec: u64) -> Self {
        let rate = (bytes_per_sec as f64).max(1.0);
        self.bytes_per_sec = Some(rate);
        self.bytes = rate;
        self
    }

    /// Adds the tokens earned since the last call (`now` on the monotonic clock, ms).
    pub fn refill(&mut self, now: u64) {
        let elapsed = self.last_refill.map_or(0, |last| now.saturating_sub(last)) as f64 / 1000.0;
        self.last_refill = Some(now);
        self.tokens = (self.tokens + self.rate_per_sec * elapsed).min(self.rate_per_sec.max(1.0));
        if let Some(rate) = self.bytes_per_sec {
            self.bytes = (self.bytes + rate * elapsed).min(rate);
        }
    }

    /// How many items may start now, with `in_flight` already running.
    pub fn budget(&self, in_flight: usize) -> usize {
        if self.bytes_per_sec.is_some() && self.bytes < 1.0 {
            return 0;
        }
        self.max_in_flight
            .saturating_sub(in_flight)
            .min(self.tokens.max(0.0) as usize)
    }

    /// Spends `n` bytes of the byte budget (it may go below zero: a large item is let through,
    /// and what follows waits until the debt is paid).
    pub fn spend_bytes(&mut self, n: usize) {
        self.bytes -= n as f64;
    }

    /// Spends one token for an item that starts.
    pub fn spend(&mut self) {
        self.tokens -= 1.0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_and_concurrency_both_limit() {
        let mut t = Throttle::new(100, 8);
        t.refill(1_000);
        assert_eq!(t.budget(0), 8, "starts with a full bucket");
        for _ in 0..100 {
            t.spend();
        }
        assert_eq!(t.budget(0), 0, "empty after a second's worth");
        t.refill(1_050);
        assert_eq!(t.budget(0), 5, "50 ms at 100/s");
        assert_eq!(t.budget(6), 2, "capped by what is in flight");
        t.spend();
        assert_eq!(t.budget(0), 4);
        t.refill(60_000);
        assert_eq!(
            t.budget(0),
            8,
            "a long pause earns at most one second's worth"
        );
    }

    #[test]
    fn bytes_limit_too() {
        let mut t = Throttle::new(1000, 8).with_bytes(1000);
        t.refill(1_000);
        assert_eq!(t.budget(0), 8);
        t.spend_bytes(3000);
        assert_eq!(t.budget(0), 0, "in debt after a large item");
        t.refill(3_000);
        assert_eq!(t.budget(0), 0, "two seconds pay 2000 of the debt");
        t.refill(3_100);
        assert_eq!(t.budget(0), 8, "and then the items flow again");
    }
}
