//! Pure rules that turn health into a selection for the planner: slow start (the
//! weight of a backend that just came back), backup backends, and what a service does
//! when every backend is down. No I/O, no clock: the caller passes the times.
use std::{fmt, str::FromStr, time::Duration};

use serde::Deserialize;

/// Slow start ramps a returning backend's weight in this many equal steps.
pub const SLOW_START_STEPS: u32 = 4;

/// The weight to publish for a backend that came up `since_up` ago, with a slow start
/// of `slow_start` (nginx `slow_start`, HAProxy `slowstart`).
///
/// The ramp has [`SLOW_START_STEPS`] steps of a quarter each, equally spaced so the
/// last one lands at `slow_start`: with a 30 s slow start the backend gets 25% of its
/// weight for its first 10 s up, then 50% until 20 s, 75% until 30 s, and its full
/// weight from then on. Each step is rounded up and at least 1, so an up
/// backend always gets some flows (weight 0 would mean "out", which health does not
/// decide here). A zero `slow_start` means no ramp. Steps rather than a continuous ramp
/// because every change republishes the service's table; see [`slow_start_next_step`]
/// for when to republish.
pub fn slow_start_weight(weight: u32, since_up: Duration, slow_start: Duration) -> u32 {
    if weight == 0 || slow_start.is_zero() || since_up >= slow_start {
        return weight;
    }
    let step = ramp_step(since_up, slow_start);
    let scaled = (u64::from(weight) * u64::from(step)).div_ceil(u64::from(SLOW_START_STEPS));
    // scaled < weight because step < SLOW_START_STEPS here.
    u32::try_from(scaled).unwrap_or(weight).max(1)
}

/// How long after `since_up` the slow-start weight changes next, or `None` once the
/// ramp is over (or there is none). The controller sets a timer for it and republishes.
pub fn slow_start_next_step(since_up: Duration, slow_start: Duration) -> Option<Duration> {
    if slow_start.is_zero() || since_up >= slow_start {
        return None;
    }
    let step = ramp_step(since_up, slow_start);
    let boundary = slow_start * step / RAMP_GAPS;
    Some(boundary.saturating_sub(since_up))
}

/// Gaps between the ramp's steps: the first step starts when the backend comes up,
/// the last (full weight) at `slow_start`.
const RAMP_GAPS: u32 = SLOW_START_STEPS - 1;

/// 1-based step of the ramp `since_up` falls in (1..SLOW_START_STEPS); needs
/// `since_up < slow_start`.
fn ramp_step(since_up: Duration, slow_start: Duration) -> u32 {
    let gaps_done = since_up.as_nanos() * u128::from(RAMP_GAPS) / slow_start.as_nanos();
    u32::try_from(gaps_done + 1)
        .unwrap_or(RAMP_GAPS)
        .min(RAMP_GAPS)
}

/// What a service does when no backend is eligible by health.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnAllDown {
    /// Drop new flows (the caller counts them). The default: sending to backends known
    /// to be dead only turns a clear outage into timeouts.
    #[default]
    Drop,
    /// Use every configured backend, as if all were up (Maglev's choice when everything
    /// looks unhealthy: the checks may be what is broken).
    FailOpen,
}

impl fmt::Display for OnAllDown {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Drop => "drop",
            Self::FailOpen => "fail-open",
        })
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("on_all_down = {value:?} is unknown; use \"drop\" or \"fail-open\"")]
pub struct UnknownOnAllDown {
    pub value: String,
}

impl FromStr for OnAllDown {
    type Err = UnknownOnAllDown;

    fn from_str(value: &str) -> Result<Self, Self::Err> {
        match value {
            "drop" => Ok(Self::Drop),
            "fail-open" => Ok(Self::FailOpen),
            _ => Err(UnknownOnAllDown {
                value: value.to_owned(),
            }),
        }
    }
}

/// One configured backend as the eligibility rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Member {
    /// A backup backend (nginx `backup`): used only while no primary is up.
    pub backup: bool,
    /// Effectively up: healthy and not taken out by an operator.
    pub up: bool,
}

/// Which rule picked the eligible backends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// At least one primary is up: the up primaries.
    Primaries,
    /// Every primary is down, a backup is up: the up backups.
    Backups,
    /// Nothing is up and the service drops new flows: no backend.
    AllDownDrop,
    /// Nothing is up and the service fails open: every configured backend.
    AllDownFailOpen,
}

impl Selection {
    /// True in both all-down cases: the controller logs loudly when this starts and
    /// when it ends.
    pub fn all_down(self) -> bool {
        matches!(self, Self::AllDownDrop | Self::AllDownFailOpen)
    }
}

/// The backends eligible for new flows, as indices into the `members` given.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Eligible {
    pub selection: Selection,
    pub backends: Vec<usize>,
}

/// Applies the backup rule and the all-down policy: the up primaries if any; else the
/// up backups if any; else nothing (`drop`) or every configured backend, primaries and
/// backups alike (`fail-open`). A service with only backups uses them as primaries
/// would be used (it has no primary that could be up).
pub fn eligible(members: &[Member], on_all_down: OnAllDown) -> Eligible {
    let pick = |backup: bool| -> Vec<usize> {
        members
            .iter()
            .enumerate()
            .filter(|(_, m)| m.up && m.backup == backup)
            .map(|(i, _)| i)
            .collect()
    };
    let primaries = pick(false);
    if !primaries.is_empty() {
        return Eligible {
            selection: Selection::Primaries,
            backends: primaries,
        };
    }
    let backups = pick(true);
    if !backups.is_empty() {
        return Eligible {
            selection: Selection::Backups,
            backends: backups,
        };
    }
    match on_all_down {
        OnAllDown::Drop => Eligible {
            selection: Selection::AllDownDrop,
            backends: Vec::new(),
        },
        OnAllDown::FailOpen => Eligible {
            selection: Selection::AllDownFailOpen,
            backends: (0..members.len()).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    #[test]
    fn slow_start_ramps_in_four_quarter_steps() {
        let ramp = S * 30;
        let table = [
            (0, 25),
            (9, 25),
            (10, 50),
            (19, 50),
            (20, 75),
            (29, 75),
            (30, 100),
            (300, 100),
        ];
        for (secs, expected) in table {
            assert_eq!(
                slow_start_weight(100, S * secs, ramp),
                expected,
                "{secs}s into a 30s ramp"
            );
        }
    }

    #[test]
    fn slow_start_never_gives_an_up_backend_zero() {
        for since in 0..10 {
            assert_eq!(slow_start_weight(1, S * since, S * 10), 1);
        }
        assert_eq!(slow_start_weight(3, Duration::ZERO, S * 10), 1);
        assert_eq!(slow_start_weight(0, Duration::ZERO, S * 10), 0);
        assert_eq!(slow_start_weight(7, Duration::ZERO, Duration::ZERO), 7);
        assert_eq!(
            slow_start_weight(u32::MAX, Duration::ZERO, S),
            u32::MAX / 4 + 1
        );
    }

    #[test]
    fn slow_start_next_step_points_at_the_boundaries() {
        let ramp = S * 30;
        assert_eq!(slow_start_next_step(Duration::ZERO, ramp), Some(S * 10));
        assert_eq!(slow_start_next_step(S * 12, ramp), Some(S * 8));
        assert_eq!(slow_start_next_step(S * 20, ramp), Some(S * 10));
        assert_eq!(slow_start_next_step(S * 30, ramp), None);
        assert_eq!(slow_start_next_step(S, Duration::ZERO), None);
    }

    fn members(spec: &str) -> Vec<Member> {
        // "P" primary up, "p" primary down, "B" backup up, "b" backup down.
        spec.chars()
            .map(|c| Member {
                backup: c.eq_ignore_ascii_case(&'b'),
                up: c.is_ascii_uppercase(),
            })
            .collect()
    }

    #[test]
    fn backups_only_while_every_primary_is_down() {
        use Selection::*;
        let cases = [
            ("PPB", OnAllDown::Drop, Primaries, vec![0, 1]),
            ("pPB", OnAllDown::Drop, Primaries, vec![1]),
            ("ppB", OnAllDown::Drop, Backups, vec![2]),
            ("ppBbB", OnAllDown::Drop, Backups, vec![2, 4]),
            ("ppb", OnAllDown::Drop, AllDownDrop, vec![]),
            ("ppb", OnAllDown::FailOpen, AllDownFailOpen, vec![0, 1, 2]),
            ("BB", OnAllDown::Drop, Backups, vec![0, 1]),
            ("", OnAllDown::FailOpen, AllDownFailOpen, vec![]),
            ("", OnAllDown::Drop, AllDownDrop, vec![]),
        ];
        for (spec, policy, selection, backends) in cases {
            assert_eq!(
                eligible(&members(spec), policy),
                Eligible {
                    selection,
                    backends
                },
                "{spec} with {policy}"
            );
        }
        // A primary coming back takes new flows back from the backups.
        assert_eq!(
            eligible(&members("pPB"), OnAllDown::Drop).selection,
            Primaries
        );
    }

    #[test]
    fn on_all_down_parses_and_names_the_fix() {
        assert_eq!("drop".parse(), Ok(OnAllDown::Drop));
        assert_eq!("fail-open".parse(), Ok(OnAllDown::FailOpen));
        assert_eq!(OnAllDown::default(), OnAllDown::Drop);
        let err = "failopen".parse::<OnAllDown>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "on_all_down = \"failopen\" is unknown; use \"drop\" or \"fail-open\""
        );
        #[derive(Deserialize)]
        struct Service {
            on_all_down: OnAllDown,
        }
        let svc: Service = toml::from_str("on_all_down = \"fail-open\"").unwrap();
        assert_eq!(svc.on_all_down, OnAllDown::FailOpen);
        assert!(toml::from_str::<Service>("on_all_down = \"open\"").is_err());
        assert!(Selection::AllDownDrop.all_down() && !Selection::Backups.all_down());
    }
}
