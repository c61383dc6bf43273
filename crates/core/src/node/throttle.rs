//! The throttle for background work: a token bucket (items per second) and a cap on the items
//! in flight. Hinted handoff uses it today; anti-entropy and range transfers reuse the same type.

/// A token bucket with a concurrency cap.
#[derive(Debug, Clone)]
pub struct Throttle {
    rate_per_sec: f64,
    max_in_flight: usize,
    tokens: f64,
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
            last_refill: None,
        }
    }

    /// Adds the tokens earned since the last call (`now` on the monotonic clock, ms).
    pub fn refill(&mut self, now: u64) {
        let elapsed = self.last_refill.map_or(0, |last| now.saturating_sub(last)) as f64 / 1000.0;
        self.last_refill = Some(now);
        self.tokens = (self.tokens + self.rate_per_sec * elapsed).min(self.rate_per_sec.max(1.0));
    }

    /// How many items may start now, with `in_flight` already running.
    pub fn budget(&self, in_flight: usize) -> usize {
        self.max_in_flight
            .saturating_sub(in_flight)
            .min(self.tokens as usize)
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
}
