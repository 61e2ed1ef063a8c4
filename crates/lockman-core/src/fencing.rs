//! What token-checking stores share: the error a store returns when it
//! refuses a write, and the rule it applies.
//!
//! A [`FencingToken`] only protects data if the store that keeps the data
//! checks it. The stores lockman ships — `lockman::fencing::FencedFile` and
//! `lockman_redis::FencedKey` — apply [`accepts`] under their own exclusion
//! and return [`FenceError::Stale`] when a write comes from a grant older
//! than one that already wrote.

use std::fmt;

use crate::FencingToken;

/// Whether a store that last accepted `last` takes a write carrying `token`.
///
/// Equal tokens are accepted: a grant keeps its token for its whole life
/// (and across reentrant acquisitions), so one holder may write several
/// times. Only a lower token — a grant older than one that already wrote —
/// is refused.
///
/// ```
/// use lockman_core::FencingToken;
/// use lockman_core::fencing::accepts;
///
/// assert!(accepts(None, FencingToken::new(1)));
/// assert!(accepts(Some(FencingToken::new(7)), FencingToken::new(7)));
/// assert!(!accepts(Some(FencingToken::new(7)), FencingToken::new(6)));
/// ```
pub fn accepts(last: Option<FencingToken>, token: FencingToken) -> bool {
    last.is_none_or(|last| token >= last)
}

/// Why a token-checking store did not write.
#[derive(Debug)]
#[non_exhaustive]
pub enum FenceError {
    /// The write carried a token lower than one the store already accepted:
    /// its lock was lost (a lease ran out while the holder was paused, or it
    /// was force-released) and someone else has written since. Do not retry
    /// with the same token; acquire the lock again and re-read the data.
    Stale {
        /// The file or key written to.
        store: String,
        /// The refused token.
        token: FencingToken,
        /// The token of the last accepted write.
        last: FencingToken,
    },
    /// The store could not be read or written.
    Store {
        /// The file or key written to.
        store: String,
        /// What was being done and what went wrong.
        detail: String,
    },
}

impl FenceError {
    /// Whether the write was refused for carrying a stale token.
    pub fn is_stale(&self) -> bool {
        matches!(self, FenceError::Stale { .. })
    }
}

impl fmt::Display for FenceError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FenceError::Stale { store, token, last } => write!(
                f,
                "refused a write to {} with fencing token {token}: token {last} already wrote there, so this \
                 writer's lock was lost meanwhile; acquire the lock again and re-read before writing",
                crate::display::Escaped(store)
            ),
            FenceError::Store { store, detail } => write!(f, "{}: {detail}", crate::display::Escaped(store)),
        }
    }
}

impl std::error::Error for FenceError {}
