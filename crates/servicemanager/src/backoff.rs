//! Retry delays: capped exponential backoff with equal jitter, pure apart from the random
//! number (no sleeping here; the caller sleeps).

use std::time::Duration;

use rand::Rng;

/// The delay before retry number `attempt` (0 for the first retry): the exponential step
/// `min(cap, base · 2^attempt)`, of which the upper half is random ("equal jitter"), so the
/// result lies in `[step / 2, step]` — never above `cap`, never zero unless `base` or `cap` is.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    backoff_with(attempt, base, cap, &mut rand::thread_rng())
}

/// [`backoff`] with the caller's random source (deterministic tests, seeded generators).
pub fn backoff_with<R: Rng + ?Sized>(
    attempt: u32,
    base: Duration,
    cap: Duration,
    rng: &mut R,
) -> Duration {
    let factor = 1u32.checked_shl(attempt).unwrap_or(u32::MAX);
    let step = base.saturating_mul(factor).min(cap);
    let half = step / 2;
    let spread = u64::try_from((step - half).as_nanos()).unwrap_or(u64::MAX);
    half + Duration::from_nanos(rng.gen_range(0..=spread))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_exponentially_within_equal_jitter_bounds_and_the_cap() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(30);
        for attempt in 0..70u32 {
            let step = if attempt < 20 {
                (base * 2u32.pow(attempt)).min(cap)
            } else {
                cap
            };
            for _ in 0..200 {
                let d = backoff(attempt, base, cap);
                assert!(
                    d >= step / 2 && d <= step,
                    "attempt {attempt}: {d:?} vs {step:?}"
                );
                assert!(d <= cap);
            }
        }
        // The first retries stay near the base, late ones near the cap.
        assert!(backoff(0, base, cap) <= base);
        assert!(backoff(40, base, cap) >= cap / 2);
    }

    #[test]
    fn backoff_is_jittered_and_handles_degenerate_inputs() {
        let base = Duration::from_millis(100);
        let cap = Duration::from_secs(10);
        let samples: std::collections::HashSet<Duration> =
            (0..50).map(|_| backoff(5, base, cap)).collect();
        assert!(samples.len() > 1, "jitter spreads the delays");
        assert_eq!(backoff(3, Duration::ZERO, cap), Duration::ZERO);
        assert_eq!(backoff(3, base, Duration::ZERO), Duration::ZERO);
        let small_cap = Duration::from_millis(10);
        assert!(
            backoff(0, base, small_cap) <= small_cap,
            "the cap wins over the base"
        );
        assert!(backoff(u32::MAX, Duration::MAX, Duration::MAX) >= Duration::MAX / 2);
    }

    #[test]
    fn backoff_with_a_fixed_source_is_reproducible() {
        use rand::SeedableRng;
        let mut a = rand::rngs::StdRng::seed_from_u64(7);
        let mut b = rand::rngs::StdRng::seed_from_u64(7);
        let base = Duration::from_millis(50);
        let cap = Duration::from_secs(5);
        for attempt in 0..10 {
            assert_eq!(
                backoff_with(attempt, base, cap, &mut a),
                backoff_with(attempt, base, cap, &mut b)
            );
        }
    }
}
