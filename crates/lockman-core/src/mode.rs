//! How a grant shares its resource: exclusive, shared (reader-writer), or
//! one of n permits (a semaphore).
//!
//! A resource is used in one *kind* by everyone who takes it: either as a
//! reader-writer lock (exclusive and shared holds, the default being
//! exclusive) or as a semaphore of a fixed number of permits. Parties that
//! disagree — a semaphore of 3 meeting one of 5, or a plain lock meeting a
//! semaphore — get [`LockError::Config`] naming both, never a silent
//! reinterpretation ([`LockMode::agrees_with`]).
//!
//! Waiters are served first come, first served across modes
//! ([`LockMode::admits`] is the rule a queue applies to its head): a waiting
//! exclusive request holds back the shared requests queued after it, so a
//! stream of readers cannot starve a writer, and the readers queued behind a
//! writer get in together once it is done.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::LockError;

/// How an acquisition holds its resource. Chosen with
/// [`AcquireOptions::shared`](crate::AcquireOptions::shared) and
/// [`AcquireOptions::permits`](crate::AcquireOptions::permits); the default
/// is exclusive.
///
/// ```
/// use lockman_core::LockMode;
/// assert!(LockMode::Shared.admits([LockMode::Shared, LockMode::Shared]));
/// assert!(!LockMode::Exclusive.admits([LockMode::Shared]));
/// assert!(LockMode::Exclusive.admits([]));
/// assert!(LockMode::Permits(2).admits([LockMode::Permits(2)]));
/// assert!(!LockMode::Permits(2).admits([LockMode::Permits(2), LockMode::Permits(2)]));
/// assert_eq!(LockMode::Permits(3).to_string(), "3 permits");
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LockMode {
    /// One holder at a time (a writer, or a plain mutex).
    #[default]
    Exclusive,
    /// Any number of shared holders together, never beside an exclusive one
    /// (readers).
    Shared,
    /// A semaphore: at most this many holders at once, each holding one
    /// permit. At least 1.
    Permits(u32),
}

impl LockMode {
    /// Whether a new grant in this mode may join `holders` (the modes of the
    /// live grants of the resource), given the two agree in kind.
    pub fn admits(self, holders: impl IntoIterator<Item = LockMode>) -> bool {
        let mut holders = holders.into_iter();
        match self {
            LockMode::Exclusive => holders.next().is_none(),
            LockMode::Shared => holders.all(|held| held == LockMode::Shared),
            LockMode::Permits(n) => holders.take(n as usize).count() < n as usize,
        }
    }

    /// Whether this is a semaphore mode.
    pub fn is_permits(self) -> bool {
        matches!(self, LockMode::Permits(_))
    }

    /// The permit count of a semaphore mode.
    pub fn permit_count(self) -> Option<u32> {
        match self {
            LockMode::Permits(n) => Some(n),
            LockMode::Exclusive | LockMode::Shared => None,
        }
    }

    /// A stable name: `exclusive`, `shared` or `permits`.
    pub fn as_str(self) -> &'static str {
        match self {
            LockMode::Exclusive => "exclusive",
            LockMode::Shared => "shared",
            LockMode::Permits(_) => "permits",
        }
    }

    /// Refuses to meet `held` (the mode of a live grant or queued request on
    /// `resource`) when the two disagree on the resource's kind: a semaphore
    /// with another permit count, or a semaphore against a reader-writer
    /// lock. Exclusive and shared agree (they are the two sides of one
    /// reader-writer lock).
    ///
    /// # Errors
    ///
    /// [`LockError::Config`] naming both modes, the resource and the backend.
    ///
    /// ```
    /// use lockman_core::LockMode;
    /// assert!(LockMode::Shared.agrees_with(LockMode::Exclusive, "r", "memory").is_ok());
    /// let err = LockMode::Permits(3).agrees_with(LockMode::Permits(5), "api", "memory").unwrap_err();
    /// assert!(err.to_string().contains("3 permits") && err.to_string().contains("5 permits"));
    /// ```
    pub fn agrees_with(self, held: LockMode, resource: &str, backend: &str) -> Result<(), LockError> {
        let agree = match (self, held) {
            (LockMode::Permits(mine), LockMode::Permits(theirs)) => mine == theirs,
            (LockMode::Permits(_), _) | (_, LockMode::Permits(_)) => false,
            _ => true,
        };
        if agree {
            return Ok(());
        }
        Err(LockError::Config(format!(
            "{resource:?} on {backend} is in use as {} but this acquisition asked for {}; every party must take a \
             resource the same way (a reader-writer lock, or a semaphore with one permit count)",
            held.kind_description(),
            self.kind_description(),
        )))
    }

    /// "a semaphore of 3 permits", "a reader-writer lock (shared)".
    fn kind_description(self) -> String {
        match self {
            LockMode::Exclusive => "a lock (exclusive)".to_owned(),
            LockMode::Shared => "a reader-writer lock (shared)".to_owned(),
            LockMode::Permits(n) => format!("a semaphore of {n} permits"),
        }
    }
}

impl fmt::Display for LockMode {
    /// `exclusive`, `shared`, `3 permits`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LockMode::Exclusive | LockMode::Shared => f.write_str(self.as_str()),
            LockMode::Permits(1) => f.write_str("1 permit"),
            LockMode::Permits(n) => write!(f, "{n} permits"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclusive_and_shared_agree_but_semaphores_must_match() {
        use LockMode::*;
        for (a, b, agree) in [
            (Exclusive, Shared, true),
            (Shared, Shared, true),
            (Permits(2), Permits(2), true),
            (Permits(2), Permits(3), false),
            (Permits(1), Exclusive, false),
            (Shared, Permits(4), false),
        ] {
            assert_eq!(a.agrees_with(b, "r", "memory").is_ok(), agree, "{a:?} vs {b:?}");
            assert_eq!(b.agrees_with(a, "r", "memory").is_ok(), agree, "{b:?} vs {a:?}");
        }
    }

    #[test]
    fn serde_names_are_stable() {
        assert_eq!(serde_json::to_string(&LockMode::Shared).ok().as_deref(), Some("\"shared\""));
        assert_eq!(serde_json::to_string(&LockMode::Permits(3)).ok().as_deref(), Some("{\"permits\":3}"));
    }
}
