//! How long to wait before asking an unavailable data owner again.
//!
//! Capped exponential backoff with full jitter: many events failing at once (an owner going
//! down) spread their retries over the whole window instead of returning in waves. An owner's
//! `Retry-After` is a floor: keyhole never comes back sooner than asked.

use std::time::Duration;

/// The longest `Retry-After` keyhole honours. An owner may ask for more than [`Backoff::max`]
/// (it knows its maintenance window); beyond five minutes keyhole asks again anyway, so that a
/// wrong or hostile header cannot stall a binding for hours.
pub const RETRY_AFTER_CEILING: Duration = Duration::from_secs(5 * 60);

/// Capped exponential backoff with full jitter.
#[derive(Clone, Debug)]
pub struct Backoff {
    /// The ceiling of the first retry's delay.
    pub initial: Duration,
    /// The largest ceiling; later retries stay at it.
    pub max: Duration,
    /// Growth of the ceiling from one retry to the next.
    pub multiplier: f64,
}

impl Default for Backoff {
    /// 100 ms, doubling, capped at 30 s.
    fn default() -> Self {
        Backoff { initial: Duration::from_millis(100), max: Duration::from_secs(30), multiplier: 2.0 }
    }
}

impl Backoff {
    /// The longest delay before retry number `attempt` (1 = first retry):
    /// `min(max, initial * multiplier^(attempt - 1))`. Attempt 0 counts as 1.
    pub fn ceiling(&self, attempt: u32) -> Duration {
        let exponent = i32::try_from(attempt.saturating_sub(1)).unwrap_or(i32::MAX);
        let seconds = self.initial.as_secs_f64() * self.multiplier.powi(exponent);
        // NaN, infinity and overflow all mean "past the cap"; a negative product (a negative
        // multiplier) means no wait at all.
        if !seconds.is_finite() || seconds >= self.max.as_secs_f64() {
            self.max
        } else if seconds <= 0.0 {
            Duration::ZERO
        } else {
            Duration::try_from_secs_f64(seconds).unwrap_or(self.max)
        }
    }

    /// Delay before retry number `attempt` (1 = first retry): random in `[0, ceiling(attempt)]`
    /// (full jitter), but never less than `retry_after` when the owner sent one.
    ///
    /// `retry_after` is honoured even above `max`, up to [`RETRY_AFTER_CEILING`] (five minutes):
    /// coming back earlier than the owner asked only earns another refusal.
    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let ceiling = self.ceiling(attempt);
        let jittered =
            Duration::try_from_secs_f64(ceiling.as_secs_f64() * rand::random::<f64>()).unwrap_or(ceiling);
        match retry_after {
            Some(asked) => jittered.max(asked.min(RETRY_AFTER_CEILING)),
            None => jittered,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use super::{Backoff, RETRY_AFTER_CEILING};
    use std::time::Duration;

    #[test]
    fn ceiling_doubles_from_initial_up_to_max() {
        let backoff = Backoff::default();
        assert_eq!(backoff.ceiling(0), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(1), Duration::from_millis(100));
        assert_eq!(backoff.ceiling(2), Duration::from_millis(200));
        assert_eq!(backoff.ceiling(9), Duration::from_millis(25_600));
        assert_eq!(backoff.ceiling(10), Duration::from_secs(30));
        assert_eq!(backoff.ceiling(u32::MAX), Duration::from_secs(30));
    }

    #[test]
    fn odd_multipliers_never_panic_and_stay_within_max() {
        for multiplier in [f64::NAN, f64::INFINITY, -2.0, 0.0, 0.5, 1e300] {
            let backoff = Backoff { multiplier, ..Backoff::default() };
            for attempt in [0, 1, 2, 64, u32::MAX] {
                let delay = backoff.delay(attempt, None);
                assert!(delay <= backoff.max, "multiplier {multiplier}, attempt {attempt}: {delay:?}");
            }
        }
    }

    #[test]
    fn retry_after_is_a_floor_up_to_five_minutes() {
        let backoff = Backoff::default();
        assert_eq!(backoff.delay(1, Some(Duration::from_secs(2))), Duration::from_secs(2));
        assert_eq!(backoff.delay(1, Some(Duration::from_secs(120))), Duration::from_secs(120));
        assert_eq!(backoff.delay(1, Some(Duration::from_secs(86_400))), RETRY_AFTER_CEILING);
    }
}
