//! `--mode`: how the workers take the resource — as a plain lock, as a
//! reader-writer lock (most sections shared), or as a semaphore of n permits —
//! and what each section does under it.

use std::fmt;
use std::str::FromStr;

use lockman::{Capabilities, LockMode};

/// In how many of 4 sections a worker of a `rw` run takes the lock shared:
/// mostly readers, so they overlap each other, with enough writers that the
/// FIFO order across modes is exercised every few sections.
const SHARED_IN_4: u32 = 3;

/// The mode of a run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum RunMode {
    /// Every section exclusive: read, hold, write the fenced counter.
    #[default]
    Exclusive,
    /// Each section shared (3 in 4, seeded) — it only reads the counter,
    /// twice — or exclusive, as above.
    ReadWrite,
    /// Every section takes one of n permits and leaves the counter alone:
    /// the checker judges the intervals.
    Permits(u32),
}

impl RunMode {
    /// The mode of a worker's next section, drawn from its seeded generator.
    pub fn draw(self, rng: &mut fastrand::Rng) -> LockMode {
        match self {
            RunMode::Exclusive => LockMode::Exclusive,
            RunMode::ReadWrite if rng.u32(0..4) < SHARED_IN_4 => LockMode::Shared,
            RunMode::ReadWrite => LockMode::Exclusive,
            RunMode::Permits(n) => LockMode::Permits(n),
        }
    }

    /// Refuses a backend that does not declare the mode: a run whose every
    /// acquire fails would otherwise end with no sections, not a verdict.
    pub fn supported_by(self, capabilities: &Capabilities, backend: &str) -> Result<(), String> {
        let (declared, what, flag) = match self {
            RunMode::Exclusive => return Ok(()),
            RunMode::ReadWrite => (capabilities.shared_mode, "shared (reader-writer) locks", "shared_mode"),
            RunMode::Permits(_) => (capabilities.permits, "semaphores (permits)", "permits"),
        };
        if declared {
            return Ok(());
        }
        Err(format!(
            "--mode {self} cannot run on {backend}: the backend does not hold {what} (its capabilities say {flag} = \
             false); pick a backend that declares it, or --mode exclusive"
        ))
    }
}

impl FromStr for RunMode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || format!("unknown mode {s:?}: valid are exclusive, rw, permits=N (N at least 1)");
        match s {
            "exclusive" => Ok(RunMode::Exclusive),
            "rw" => Ok(RunMode::ReadWrite),
            _ => match s.strip_prefix("permits=").map(str::parse::<u32>) {
                Some(Ok(n)) if n >= 1 => Ok(RunMode::Permits(n)),
                _ => Err(bad()),
            },
        }
    }
}

impl fmt::Display for RunMode {
    /// As `--mode` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunMode::Exclusive => f.write_str("exclusive"),
            RunMode::ReadWrite => f.write_str("rw"),
            RunMode::Permits(n) => write!(f, "permits={n}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_parse_as_they_print() {
        for mode in [RunMode::Exclusive, RunMode::ReadWrite, RunMode::Permits(3)] {
            assert_eq!(mode.to_string().parse::<RunMode>(), Ok(mode));
        }
        assert!("permits=0".parse::<RunMode>().is_err());
        assert!("shared".parse::<RunMode>().is_err());
    }

    #[test]
    fn a_backend_without_the_mode_is_refused_by_name() {
        let caps = Capabilities::default();
        let err = RunMode::ReadWrite.supported_by(&caps, "file").unwrap_err();
        assert!(err.contains("shared_mode = false") && err.contains("file"), "{err}");
        assert!(RunMode::Exclusive.supported_by(&caps, "x").is_ok());
        assert!(RunMode::Permits(2).supported_by(&caps.with_modes(true, true), "x").is_ok());
    }

    #[test]
    fn rw_draws_both_modes() {
        let mut rng = fastrand::Rng::with_seed(1);
        let drawn: Vec<LockMode> = (0..100).map(|_| RunMode::ReadWrite.draw(&mut rng)).collect();
        let shared = drawn.iter().filter(|m| **m == LockMode::Shared).count();
        assert!((50..95).contains(&shared), "{shared} of 100 shared");
    }
}
