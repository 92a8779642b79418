//! Retry delays, one [`Backoff`] per retry loop: capped exponential backoff with jitter, from
//! the `backon` crate. No sleeping here; the caller sleeps (and stops early on a stop).

use std::time::Duration;

use backon::BackoffBuilder as _;

/// The delays of one retry loop and how many retries it has made.
///
/// The n-th delay (from 0) lies in `[step / 2, step)` with `step = min(cap, base · 2^n)`:
/// exponential, never above `cap`, spread by jitter so that many lanes retrying at once do
/// not come back at once.
#[derive(Debug)]
pub struct Backoff {
    builder: backon::ExponentialBuilder,
    delays: backon::ExponentialBackoff,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Backoff {
        let base = base.min(cap);
        // backon's jitter adds up to the step itself: half-steps keep the sum below the step.
        let builder = backon::ExponentialBuilder::new()
            .with_min_delay(base / 2)
            .with_max_delay(cap / 2)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Backoff {
            delays: builder.build(),
            builder,
            cap,
            attempt: 0,
        }
    }

    /// The delay before the next retry; counts it.
    pub fn next_delay(&mut self) -> Duration {
        self.attempt = self.attempt.saturating_add(1);
        self.delays.next().unwrap_or(self.cap).min(self.cap)
    }

    /// Retries so far.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// Starts again from the first delay (after a success).
    pub fn reset(&mut self) {
        self.delays = self.builder.build();
        self.attempt = 0;
    }
}

/// The reconnect policy of every connection to a message bus: from 0.5 s up to 30 s.
pub fn reconnect() -> Backoff {
    Backoff::new(Duration::from_millis(500), Duration::from_secs(30))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_grow_exponentially_within_half_a_step_and_never_pass_the_cap() {
        let (base, cap) = (Duration::from_millis(100), Duration::from_secs(3));
        for _ in 0..50 {
            let mut b = Backoff::new(base, cap);
            for n in 0..12u32 {
                let step = base.saturating_mul(1 << n).min(cap);
                let d = b.next_delay();
                assert!(
                    d >= step / 2 && d <= step,
                    "retry {n}: {d:?} outside [{:?}, {step:?}]",
                    step / 2
                );
                assert_eq!(b.attempt(), n + 1);
            }
        }
    }

    #[test]
    fn jitter_spreads_the_delays_and_a_reset_starts_again() {
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..20 {
            seen.insert(Backoff::new(Duration::from_secs(1), Duration::from_secs(60)).next_delay());
        }
        assert!(seen.len() > 1, "jitter spreads the delays: {seen:?}");
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(60));
        for _ in 0..10 {
            b.next_delay();
        }
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert!(b.next_delay() <= Duration::from_secs(1));
    }

    #[test]
    fn degenerate_bounds_give_small_delays_not_a_panic() {
        assert_eq!(
            Backoff::new(Duration::ZERO, Duration::ZERO).next_delay(),
            Duration::ZERO
        );
        let mut b = Backoff::new(Duration::from_secs(10), Duration::from_secs(1));
        assert!(b.next_delay() <= Duration::from_secs(1));
    }
}
