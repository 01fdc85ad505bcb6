//! Timing decisions of peer links as pure values: the reconnect backoff and the rate limit on
//! repeated warnings. Callers pass the clock in, so tests need neither sleeps nor a runtime.

use std::time::{Duration, Instant};

/// Delays between dial attempts: doubling from `initial` up to `cap`, back to `initial` once a
/// link is established. No jitter: one connection per pair and a dialer chosen by node id mean
/// no two nodes race for the same link.
#[derive(Debug, Clone)]
pub(crate) struct Backoff {
    initial: Duration,
    cap: Duration,
    next: Duration,
}

impl Backoff {
    pub(crate) fn new(initial: Duration, cap: Duration) -> Backoff {
        Backoff {
            initial,
            cap,
            next: initial,
        }
    }

    /// The delay before the next attempt.
    pub(crate) fn next_delay(&mut self) -> Duration {
        let delay = self.next;
        self.next = (self.next * 2).min(self.cap);
        delay
    }

    /// Starts over after a success.
    pub(crate) fn reset(&mut self) {
        self.next = self.initial;
    }
}

/// At most `burst` warnings per `window`; the rest are counted and the count is reported with
/// the next warning that is let through, so a flood of bad connections cannot flood the log.
#[derive(Debug, Clone)]
pub(crate) struct WarningLimiter {
    window: Duration,
    burst: u32,
    window_start: Option<Instant>,
    admitted_in_window: u32,
    suppressed: u64,
}

impl WarningLimiter {
    pub(crate) fn new(window: Duration, burst: u32) -> WarningLimiter {
        WarningLimiter {
            window,
            burst,
            window_start: None,
            admitted_in_window: 0,
            suppressed: 0,
        }
    }

    /// Whether a warning at `now` may be logged; if so, how many were suppressed since the last
    /// one that was.
    pub(crate) fn admit(&mut self, now: Instant) -> Option<u64> {
        let window_over = self
            .window_start
            .is_none_or(|start| now.saturating_duration_since(start) >= self.window);
        if window_over {
            self.window_start = Some(now);
            self.admitted_in_window = 0;
        }
        if self.admitted_in_window < self.burst {
            self.admitted_in_window += 1;
            Some(std::mem::take(&mut self.suppressed))
        } else {
            self.suppressed += 1;
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_cap_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_millis(500));
        let delays: Vec<u128> = (0..7).map(|_| backoff.next_delay().as_millis()).collect();
        assert_eq!(delays, [50, 100, 200, 400, 500, 500, 500]);
        backoff.reset();
        assert_eq!(backoff.next_delay(), Duration::from_millis(50));
    }

    #[test]
    fn limiter_admits_a_burst_per_window_and_counts_the_rest() {
        let start = Instant::now();
        let at = |millis: u64| start + Duration::from_millis(millis);
        let mut limiter = WarningLimiter::new(Duration::from_secs(1), 2);
        // (time in ms, expected answer)
        let table = [
            (0, Some(0)),
            (10, Some(0)),
            (20, None),
            (30, None),
            (999, None),
            (1000, Some(3)),
            (1001, Some(0)),
            (1002, None),
            (5000, Some(1)),
        ];
        for (millis, expected) in table {
            assert_eq!(limiter.admit(at(millis)), expected, "at {millis} ms");
        }
    }

    #[test]
    fn limiter_tolerates_a_clock_reading_from_before_its_window() {
        let start = Instant::now() + Duration::from_secs(10);
        let mut limiter = WarningLimiter::new(Duration::from_secs(1), 1);
        assert_eq!(limiter.admit(start), Some(0));
        assert_eq!(limiter.admit(start - Duration::from_secs(5)), None);
    }
}
