//! The throttle for background work: a token bucket of items per second, an optional one of
//! bytes per second, and a cap on the items in flight. Hinted handoff and anti-entropy each run
//! under their own, and all background work under the [`super::scheduler`]'s shared one, whose
//! rates are scaled by a share that foreground latency sets.

/// A token bucket with a concurrency cap.
#[derive(Debug, Clone)]
pub struct Throttle {
    rate_per_sec: f64,
    max_in_flight: usize,
    tokens: f64,
    bytes_per_sec: Option<f64>,
    bytes: f64,
    last_refill: Option<u64>,
    share: f64,
    spent: u64,
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
            share: 1.0,
            spent: 0,
        }
    }

    /// Also at most `bytes_per_sec` bytes per second (bursts up to one second's worth).
    pub fn with_bytes(mut self, bytes_per_sec: u64) -> Self {
        let rate = (bytes_per_sec as f64).max(1.0);
        self.bytes_per_sec = Some(rate);
        self.bytes = rate;
        self
    }

    /// Scales both rates (and the bursts) by `share` (0..=1) from now on.
    pub fn set_share(&mut self, share: f64) {
        self.share = share.clamp(0.0, 1.0);
    }

    /// Adds the tokens earned since the last call (`now` on the monotonic clock, ms).
    pub fn refill(&mut self, now: u64) {
        let elapsed = self.last_refill.map_or(0, |last| now.saturating_sub(last)) as f64 / 1000.0;
        self.last_refill = Some(now);
        let rate = self.rate_per_sec * self.share;
        self.tokens = (self.tokens + rate * elapsed).min(rate.max(1.0));
        if let Some(bytes) = self.bytes_per_sec {
            let rate = bytes * self.share;
            self.bytes = (self.bytes + rate * elapsed).min(rate.max(1.0));
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
        self.spent += 1;
    }

    /// Spends `n` tokens for `n` items that started.
    pub fn spend_many(&mut self, n: usize) {
        self.tokens -= n as f64;
        self.spent += n as u64;
    }

    /// Items started since this throttle was made.
    pub fn spent(&self) -> u64 {
        self.spent
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
