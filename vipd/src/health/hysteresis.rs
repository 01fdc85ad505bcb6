//! Rise/fall hysteresis: the pure rule that turns a node's raw probe rounds into a health state
//! that does not flap on a single slow or lost probe.
//!
//! A node starts unhealthy and must pass `rise` rounds in a row before it is healthy, because a
//! node has to prove itself before it may take VIPs. A healthy node turns unhealthy after `fall`
//! failed rounds in a row; a single pass in between starts the count again.

/// The debounced health of a node, fed one round at a time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hysteresis {
    rise: u32,
    fall: u32,
    healthy: bool,
    /// Consecutive rounds that disagree with the current state.
    streak: u32,
}

impl Hysteresis {
    /// Starts unhealthy. `rise` and `fall` below 1 count as 1: a state can never change without
    /// at least one round that calls for it.
    pub fn new(rise: u32, fall: u32) -> Hysteresis {
        Hysteresis {
            rise: rise.max(1),
            fall: fall.max(1),
            healthy: false,
            streak: 0,
        }
    }

    /// Feeds one round (`passed`: every probe passed) and returns the state after it.
    pub fn observe(&mut self, passed: bool) -> bool {
        if passed == self.healthy {
            // The round agrees with the state: any run towards the other state is broken.
            self.streak = 0;
            return self.healthy;
        }
        self.streak = self.streak.saturating_add(1);
        let needed = if self.healthy { self.fall } else { self.rise };
        if self.streak >= needed {
            self.healthy = passed;
            self.streak = 0;
        }
        self.healthy
    }

    /// The current state.
    pub fn healthy(&self) -> bool {
        self.healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each case: rise, fall, rounds (`+` passed, `-` failed), and the state after each round
    /// (`H` healthy, `u` unhealthy).
    const CASES: &[(u32, u32, &str, &str)] = &[
        // A node must prove itself: unhealthy until `rise` passes in a row.
        (3, 2, "+++", "uuH"),
        (3, 2, "++-+++", "uuuuuH"),
        (1, 1, "+", "H"),
        // Failures while unhealthy keep it unhealthy and reset the rise count.
        (2, 2, "-+-++", "uuuuH"),
        // Healthy until `fall` failures in a row; a pass in between resets the fall count.
        (1, 2, "+-+-+--", "HHHHHHu"),
        (1, 3, "+---", "HHHu"),
        // Recovery needs `rise` passes again.
        (2, 1, "++-+-++", "uHuuuuH"),
        // Zero means one.
        (0, 0, "+-+", "HuH"),
        // Long steady runs change nothing.
        (2, 2, "++++++++", "uHHHHHHH"),
        (2, 2, "--------", "uuuuuuuu"),
    ];

    #[test]
    fn hysteresis_table() {
        for &(rise, fall, rounds, expected) in CASES {
            let mut hysteresis = Hysteresis::new(rise, fall);
            let states: String = rounds
                .chars()
                .map(|round| match hysteresis.observe(round == '+') {
                    true => 'H',
                    false => 'u',
                })
                .collect();
            assert_eq!(
                states, expected,
                "rise {rise}, fall {fall}, rounds {rounds}"
            );
            assert_eq!(hysteresis.healthy(), expected.ends_with('H'));
        }
    }

    #[test]
    fn starts_unhealthy() {
        assert!(!Hysteresis::new(1, 1).healthy());
    }
}
