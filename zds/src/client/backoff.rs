//! Reconnect back-off: exponential with jitter, restarted after a good connection.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};

use super::ClientConfig;

/// The longest base wait: longer settings count as this (a year is "never" for a
/// reconnect, and keeps the jitter arithmetic far from overflowing).
const LONGEST: Duration = Duration::from_secs(365 * 24 * 3600);

/// The waits between connection attempts.
#[derive(Debug)]
pub(super) struct Backoff {
    builder: ExponentialBuilder,
    delays: ExponentialBackoff,
}

impl Backoff {
    /// Waits from `config.initial_backoff`, doubling up to `config.max_backoff`, each with
    /// up to the same again as jitter; never ending.
    pub(super) fn new(config: &ClientConfig) -> Self {
        let initial = config.initial_backoff.min(LONGEST);
        let builder = ExponentialBuilder::new()
            .with_min_delay(initial)
            .with_max_delay(config.max_backoff.clamp(initial, LONGEST))
            .with_factor(2.0)
            .with_jitter()
            .without_max_times();
        Self {
            builder,
            delays: builder.build(),
        }
    }

    /// The next wait.
    pub(super) fn next_delay(&mut self) -> Duration {
        // Without a limit on attempts or total time the iterator never ends.
        self.delays.next().unwrap_or(LONGEST)
    }

    /// Starts over at the initial wait.
    pub(super) fn reset(&mut self) {
        self.delays = self.builder.build();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(initial_ms: u64, max_ms: u64) -> ClientConfig {
        ClientConfig {
            initial_backoff: Duration::from_millis(initial_ms),
            max_backoff: Duration::from_millis(max_ms),
            ..ClientConfig::default()
        }
    }

    /// Each wait lies in `[base, 2 * base)`, where the base doubles from the initial
    /// wait up to the maximum.
    fn assert_schedule(backoff: &mut Backoff, bases_ms: &[u64]) {
        for &base in bases_ms {
            let base = Duration::from_millis(base);
            let wait = backoff.next_delay();
            assert!(
                wait >= base && wait <= base * 2,
                "wait {wait:?} outside [{base:?}, {:?}]",
                base * 2
            );
        }
    }

    #[test]
    fn doubles_up_to_the_maximum_with_jitter() {
        let mut b = Backoff::new(&config(10, 100));
        assert_schedule(&mut b, &[10, 20, 40, 80, 100, 100, 100]);
    }

    #[test]
    fn jitter_spreads_the_waits() {
        // Many clients reconnecting at once must not all wait the same time.
        let waits: std::collections::BTreeSet<Duration> = (0..20)
            .map(|_| Backoff::new(&config(1000, 1000)).next_delay())
            .collect();
        assert!(waits.len() > 1, "all 20 first waits were equal: {waits:?}");
    }

    #[test]
    fn reset_starts_over() {
        let mut b = Backoff::new(&config(10, 1000));
        assert_schedule(&mut b, &[10, 20, 40, 80]);
        b.reset();
        assert_schedule(&mut b, &[10, 20]);
    }

    #[test]
    fn a_maximum_below_the_initial_wait_is_the_initial_wait() {
        let mut b = Backoff::new(&config(50, 1));
        assert_schedule(&mut b, &[50, 50, 50]);
    }

    #[test]
    fn huge_waits_do_not_overflow() {
        let mut b = Backoff::new(&ClientConfig {
            initial_backoff: Duration::MAX,
            max_backoff: Duration::MAX,
            ..ClientConfig::default()
        });
        for _ in 0..5 {
            let wait = b.next_delay();
            assert!(wait >= LONGEST && wait <= LONGEST * 2, "{wait:?}");
        }
    }
}
