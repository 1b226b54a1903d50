//! The per-backend rise/fall state machine, HAProxy's semantics: `rise` consecutive
//! successful checks bring a down backend up, `fall` consecutive failed checks take an
//! up backend down, and any result that agrees with the current state resets the count.
//! Pure: fed check results, it returns a [`Transition`] only when the state flips.
//!
//! # Initial state
//!
//! [`InitialState::Up`] is the default, as HAProxy's `init-state up` (its default): the
//! backend takes traffic from the start, and its first check decides at once (a failed
//! first check takes it down without waiting for `fall` failures, a passing one confirms
//! it); from then on rise/fall apply. Why: starting down would drop a whole service for
//! `rise x interval` after every start of the balancer, while starting fully up would
//! send traffic to a dead backend for `fall x interval`; one check is the shortest
//! evidence either way. The other three HAProxy states are there for callers that want
//! them (e.g. [`InitialState::Down`] for a backend added to a running service, so it
//! gets no flows before a check has passed).

/// The state a backend starts in before any check has run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum InitialState {
    /// Up; the first check decides at once (HAProxy `init-state up`, the default).
    #[default]
    Up,
    /// Up; needs `fall` consecutive failures to go down (HAProxy `fully-up`).
    FullyUp,
    /// Down; the first check decides at once (HAProxy `init-state down`).
    Down,
    /// Down; needs `rise` consecutive successes to go up (HAProxy `fully-down`).
    FullyDown,
}

/// A flip of the health state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    WentUp,
    WentDown,
}

/// The health of one backend as a function of its check results.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HealthState {
    up: bool,
    /// No check has run yet and the initial state lets the first one decide.
    provisional: bool,
    /// Consecutive results that disagree with `up`.
    streak: u32,
    rise: u32,
    fall: u32,
}

impl HealthState {
    /// `rise` and `fall` below 1 are taken as 1 (validated configurations never have them).
    pub fn new(initial: InitialState, rise: u32, fall: u32) -> Self {
        let (up, provisional) = match initial {
            InitialState::Up => (true, true),
            InitialState::FullyUp => (true, false),
            InitialState::Down => (false, true),
            InitialState::FullyDown => (false, false),
        };
        Self {
            up,
            provisional,
            streak: 0,
            rise: rise.max(1),
            fall: fall.max(1),
        }
    }

    /// A state that continues a known health (after a configuration change of the
    /// check): no provisional first check, counting starts afresh.
    pub fn resume(up: bool, rise: u32, fall: u32) -> Self {
        let initial = if up {
            InitialState::FullyUp
        } else {
            InitialState::FullyDown
        };
        Self::new(initial, rise, fall)
    }

    pub fn is_up(&self) -> bool {
        self.up
    }

    /// Consecutive results so far against the current state (0 when the last result
    /// agreed with it).
    pub fn streak(&self) -> u32 {
        self.streak
    }

    /// Feeds one check result; returns the transition if the state flipped.
    pub fn record(&mut self, success: bool) -> Option<Transition> {
        let provisional = std::mem::replace(&mut self.provisional, false);
        if success == self.up {
            self.streak = 0;
            return None;
        }
        self.streak += 1;
        let needed = if self.up { self.fall } else { self.rise };
        if !provisional && self.streak < needed {
            return None;
        }
        self.up = success;
        self.streak = 0;
        Some(if success {
            Transition::WentUp
        } else {
            Transition::WentDown
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `results` ('+' pass, '-' fail) and renders the state after each as 'U'/'D',
    /// lowercase where the result flipped it.
    fn run(initial: InitialState, rise: u32, fall: u32, results: &str) -> String {
        let mut state = HealthState::new(initial, rise, fall);
        results
            .chars()
            .map(|c| {
                let flipped = state.record(c == '+');
                match (state.is_up(), flipped) {
                    (true, None) => 'U',
                    (false, None) => 'D',
                    (true, Some(Transition::WentUp)) => 'u',
                    (false, Some(Transition::WentDown)) => 'd',
                    (up, Some(t)) => panic!("transition {t:?} but up = {up}"),
                }
            })
            .collect()
    }

    #[test]
    fn rise_fall_tables() {
        use InitialState::*;
        let cases = [
            // (initial, rise, fall, results, states after each result)
            (FullyUp, 2, 3, "+++", "UUU"),
            (FullyUp, 2, 3, "---", "UUd"),
            (FullyUp, 2, 3, "--+---", "UUUUUd"),
            (FullyUp, 2, 3, "---++", "UUdDu"),
            (FullyUp, 2, 3, "----+-++", "UUdDDDDu"),
            (FullyUp, 1, 1, "-+-+", "dudu"),
            (FullyDown, 2, 3, "++", "Du"),
            (FullyDown, 2, 3, "+-++", "DDDu"),
            (FullyDown, 3, 1, "+++-", "DDud"),
            // HAProxy init-state up: the first check decides at once ...
            (Up, 2, 3, "-", "d"),
            (Up, 2, 3, "+---", "UUUd"),
            // ... and after it rise/fall apply.
            (Up, 2, 3, "-+-++", "dDDDu"),
            (Down, 2, 3, "+", "u"),
            (Down, 2, 3, "-+", "DD"),
            (Down, 2, 3, "-++", "DDu"),
        ];
        for (initial, rise, fall, results, expected) in cases {
            assert_eq!(
                run(initial, rise, fall, results),
                expected,
                "{initial:?} rise {rise} fall {fall}: {results}"
            );
        }
    }

    #[test]
    fn default_initial_state_is_up_and_decided_by_the_first_check() {
        let state = HealthState::new(InitialState::default(), 2, 3);
        assert!(state.is_up());
        assert_eq!(run(InitialState::default(), 2, 3, "-"), "d");
    }

    #[test]
    fn flapping_below_the_thresholds_never_flips() {
        // Alternating results never reach 2 in a row against the state.
        let flapping = "-+".repeat(50);
        let states = run(InitialState::FullyUp, 2, 2, &flapping);
        assert!(states.chars().all(|s| s == 'U'), "{states}");
        let states = run(InitialState::FullyDown, 2, 2, &"+-".repeat(50));
        assert!(states.chars().all(|s| s == 'D'), "{states}");
    }

    #[test]
    fn flapping_at_the_thresholds_flips_every_time() {
        let states = run(InitialState::FullyUp, 2, 2, &"--++".repeat(3));
        assert_eq!(states, "UdDu".repeat(3));
    }

    #[test]
    fn resume_keeps_the_state_without_a_provisional_check() {
        let mut down = HealthState::resume(false, 2, 3);
        assert!(!down.is_up());
        assert_eq!(down.record(true), None);
        assert_eq!(down.record(true), Some(Transition::WentUp));
        let mut up = HealthState::resume(true, 2, 3);
        assert_eq!(up.record(false), None);
        assert_eq!(up.streak(), 1);
    }

    #[test]
    fn zero_thresholds_act_as_one() {
        assert_eq!(run(InitialState::FullyUp, 0, 0, "-+"), "du");
    }
}
