//! Retry backoff: capped exponential with full jitter.

use std::time::Duration;

/// How long to wait before retry number `n`: `min(cap, base × 2ⁿ)`, then,
/// with full jitter, a uniformly random duration between zero and that.
///
/// The random draw is injected (see [`RetryPolicy::delay_with`]) so the maths
/// is testable; [`RetryPolicy::delay`] uses the thread's RNG.
///
/// ```
/// use std::time::Duration;
/// use celeriac_core::RetryPolicy;
///
/// let p = RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(60)).without_jitter();
/// assert_eq!(p.delay_with(0, 0.5), Duration::from_secs(1));
/// assert_eq!(p.delay_with(3, 0.5), Duration::from_secs(8));
/// assert_eq!(p.delay_with(30, 0.5), Duration::from_secs(60));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The delay before the first retry, before jitter.
    pub base: Duration,
    /// The largest delay.
    pub cap: Duration,
    /// Whether to draw the delay uniformly from `[0, computed]`.
    pub jitter: bool,
}

impl Default for RetryPolicy {
    /// One second, doubling, capped at ten minutes, with full jitter
    /// (Celery's `retry_backoff_max` is also 600 s).
    fn default() -> Self {
        RetryPolicy {
            base: Duration::from_secs(1),
            cap: Duration::from_secs(600),
            jitter: true,
        }
    }
}

impl RetryPolicy {
    /// Returns an exponential policy with full jitter.
    pub fn exponential(base: Duration, cap: Duration) -> Self {
        RetryPolicy {
            base,
            cap,
            jitter: true,
        }
    }

    /// Returns the same policy without jitter.
    pub fn without_jitter(mut self) -> Self {
        self.jitter = false;
        self
    }

    /// Returns the delay before retry `retries` (0 for the first retry),
    /// with jitter drawn from the thread's RNG.
    pub fn delay(&self, retries: u32) -> Duration {
        self.delay_with(retries, rand::random::<f64>())
    }

    /// Returns the delay before retry `retries`, taking the jitter from
    /// `unit`, a number in `[0, 1)`; values outside are clamped.
    pub fn delay_with(&self, retries: u32, unit: f64) -> Duration {
        let ceiling = self.ceiling(retries);
        if !self.jitter {
            return ceiling;
        }
        let unit = if unit.is_finite() {
            unit.clamp(0.0, 1.0)
        } else {
            0.0
        };
        ceiling.mul_f64(unit)
    }

    /// Returns the delay before jitter: `min(cap, base × 2^retries)`.
    pub fn ceiling(&self, retries: u32) -> Duration {
        let factor = 1u32.checked_shl(retries.min(31)).unwrap_or(u32::MAX);
        self.base
            .checked_mul(factor)
            .map_or(self.cap, |d| d.min(self.cap))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn never_exceeds_cap(base_ms in 0u64..100_000, cap_ms in 0u64..10_000_000, n in any::<u32>(), unit in any::<f64>()) {
            let p = RetryPolicy::exponential(Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
            prop_assert!(p.delay_with(n, unit) <= p.cap);
            prop_assert!(p.without_jitter().delay_with(n, unit) <= p.cap);
        }

        #[test]
        fn ceiling_is_monotone_up_to_cap(base_ms in 1u64..100_000, cap_ms in 0u64..10_000_000, n in 0u32..200) {
            let p = RetryPolicy::exponential(Duration::from_millis(base_ms), Duration::from_millis(cap_ms));
            prop_assert!(p.ceiling(n) <= p.ceiling(n + 1));
        }

        #[test]
        fn jitter_stays_within_ceiling(n in 0u32..64, unit in 0.0f64..1.0) {
            let p = RetryPolicy::default();
            prop_assert!(p.delay_with(n, unit) <= p.ceiling(n));
        }
    }

    #[test]
    fn doubles_until_the_cap() {
        let p = RetryPolicy::exponential(Duration::from_millis(100), Duration::from_secs(1))
            .without_jitter();
        let got: Vec<_> = (0..6).map(|n| p.delay_with(n, 0.0).as_millis()).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn full_jitter_scales_the_ceiling() {
        let p = RetryPolicy::exponential(Duration::from_secs(1), Duration::from_secs(60));
        assert_eq!(p.delay_with(2, 0.0), Duration::ZERO);
        assert_eq!(p.delay_with(2, 0.5), Duration::from_secs(2));
        assert_eq!(p.delay_with(2, f64::NAN), Duration::ZERO);
    }
}
