//! Reconnect delays: steps that double from the first to the largest, each with jitter,
//! taken from `backon`'s exponential back-off.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

/// Longest step used (about 146 billion years): longer configured steps are cut to this,
/// so that doubling and jitter stay within [`Duration`].
const LONGEST_STEP: Duration = Duration::from_secs(1 << 62);

/// The client's reconnect back-off.
#[derive(Debug)]
pub(super) struct Backoff {
    builder: ExponentialBuilder,
    steps: ExponentialBackoff,
    largest: Duration,
}

impl Backoff {
    /// Steps from `first`, doubled per failure up to `largest`; each delay is its step plus
    /// a random amount up to the step.
    pub(super) fn new(first: Duration, largest: Duration) -> Self {
        let first = first.min(LONGEST_STEP);
        let largest = largest.min(LONGEST_STEP).max(first);
        let builder = ExponentialBuilder::new()
            .with_min_delay(first)
            .with_max_delay(largest)
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            steps: builder.build(),
            builder,
            largest,
        }
    }

    /// The delay after a failure: the next step.
    pub(super) fn after_failure(&mut self) -> Duration {
        // Without a limit on attempts the steps never run out.
        self.steps.next().unwrap_or(self.largest)
    }

    /// Starts again from the first step.
    pub(super) fn reset(&mut self) {
        self.steps = self.builder.build();
    }

    /// The delay after a normal close: the first step; the next failure starts from the
    /// first step again.
    pub(super) fn after_normal_close(&mut self) -> Duration {
        self.reset();
        let delay = self.after_failure();
        self.reset();
        delay
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whether `delay` is `step` plus jitter: in `[step, 2 * step]`, with a little room
    /// for the `f32` arithmetic of the steps.
    fn jittered(delay: Duration, step: Duration) -> bool {
        let (d, s) = (delay.as_secs_f64(), step.as_secs_f64());
        d >= s * 0.999 && d <= 2.0 * s * 1.001
    }

    #[test]
    fn steps_double_up_to_the_largest_with_jitter() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(10), ms(80));
        let delays: Vec<Duration> = (0..7).map(|_| backoff.after_failure()).collect();
        for (delay, step) in delays.iter().zip([10, 20, 40, 80, 80, 80, 80]) {
            assert!(
                jittered(*delay, ms(step)),
                "{delay:?} for a step of {step} ms"
            );
        }
        // Jitter spreads the delays: the three at the cap are not all the same.
        assert!(
            delays[4] != delays[5] || delays[5] != delays[6],
            "{delays:?}"
        );
    }

    #[test]
    fn normal_close_and_reset_start_again() {
        let ms = Duration::from_millis;
        let mut backoff = Backoff::new(ms(10), ms(1000));
        for _ in 0..5 {
            backoff.after_failure();
        }
        assert!(jittered(backoff.after_normal_close(), ms(10)));
        // The failure after a normal close is the first step again.
        assert!(jittered(backoff.after_failure(), ms(10)));
        assert!(jittered(backoff.after_failure(), ms(20)));
        backoff.reset();
        assert!(jittered(backoff.after_failure(), ms(10)));
    }

    #[test]
    fn huge_steps_do_not_overflow() {
        let mut backoff = Backoff::new(Duration::MAX, Duration::MAX);
        for _ in 0..100 {
            assert!(backoff.after_failure() >= LONGEST_STEP);
        }
        assert!(backoff.after_normal_close() >= LONGEST_STEP);
    }
}
