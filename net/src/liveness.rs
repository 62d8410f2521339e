//! Dead-peer detection by heartbeats, and reconnect backoff. Time comes in as
//! milliseconds from the caller's clock, randomness as a number from its RNG.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LivenessConfig {
    /// A peer silent this long is taken for dead.
    pub peer_timeout_ms: u64,
    /// Send a heartbeat when nothing was sent for this long.
    pub heartbeat_interval_ms: u64,
}

impl Default for LivenessConfig {
    fn default() -> Self {
        LivenessConfig {
            peer_timeout_ms: 5_000,
            heartbeat_interval_ms: 1_250,
        }
    }
}

#[derive(Debug, Clone)]
pub struct PeerLiveness {
    config: LivenessConfig,
    last_heard_ms: u64,
    last_sent_ms: u64,
}

impl PeerLiveness {
    pub fn new(config: LivenessConfig, now_ms: u64) -> Self {
        assert!(config.heartbeat_interval_ms > 0 && config.heartbeat_interval_ms < config.peer_timeout_ms);
        PeerLiveness {
            config,
            last_heard_ms: now_ms,
            last_sent_ms: now_ms,
        }
    }

    pub fn on_heard(&mut self, now_ms: u64) {
        self.last_heard_ms = self.last_heard_ms.max(now_ms);
    }

    pub fn on_sent(&mut self, now_ms: u64) {
        self.last_sent_ms = self.last_sent_ms.max(now_ms);
    }

    pub fn heartbeat_due(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_sent_ms) >= self.config.heartbeat_interval_ms
    }

    pub fn is_dead(&self, now_ms: u64) -> bool {
        now_ms.saturating_sub(self.last_heard_ms) >= self.config.peer_timeout_ms
    }
}

/// Exponential backoff with jitter: attempt n waits about `base·2ⁿ`, capped.
#[derive(Debug, Clone)]
pub struct Backoff {
    base_ms: u64,
    max_ms: u64,
    attempts: u32,
}

impl Backoff {
    pub fn new(base_ms: u64, max_ms: u64) -> Self {
        assert!(base_ms > 0 && base_ms <= max_ms);
        Backoff {
            base_ms,
            max_ms,
            attempts: 0,
        }
    }

    /// The delay before the next attempt: half fixed, half jitter from `random`.
    pub fn next_delay_ms(&mut self, random: u64) -> u64 {
        let ceiling = self
            .base_ms
            .saturating_mul(1 << self.attempts.min(20))
            .min(self.max_ms);
        self.attempts = self.attempts.saturating_add(1);
        let half = ceiling / 2;
        half + random % (ceiling - half + 1)
    }

    pub fn reset(&mut self) {
        self.attempts = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_after_timeout_and_heartbeats_at_interval() {
        let config = LivenessConfig {
            peer_timeout_ms: 100,
            heartbeat_interval_ms: 25,
        };
        let mut peer = PeerLiveness::new(config, 1_000);
        assert!(!peer.heartbeat_due(1_024) && peer.heartbeat_due(1_025));
        peer.on_sent(1_025);
        assert!(!peer.heartbeat_due(1_049));
        assert!(!peer.is_dead(1_099) && peer.is_dead(1_100));
        peer.on_heard(1_090);
        assert!(!peer.is_dead(1_150));
    }

    #[test]
    fn backoff_grows_caps_and_resets() {
        let mut backoff = Backoff::new(10, 100);
        let delays: Vec<u64> = (0..6).map(|_| backoff.next_delay_ms(0)).collect();
        assert!(delays.windows(2).all(|w| w[0] <= w[1]), "{delays:?}");
        assert!(delays.iter().all(|d| *d <= 100));
        for random in 0..50 {
            let mut b = Backoff::new(10, 100);
            let d = b.next_delay_ms(random);
            assert!((5..=10).contains(&d), "{d}");
        }
        backoff.reset();
        assert!(backoff.next_delay_ms(0) <= 10, "back to the base after a reset");
    }
}
