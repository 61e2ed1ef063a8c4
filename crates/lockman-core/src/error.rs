//! Errors: what failed, on which resource and backend, and what to do.

use std::fmt;

use crate::LockInfo;
use crate::display::Escaped;

/// Errors returned by lock and status operations.
///
/// Every message names the resource (where there is one) and the backend, and
/// says what the caller can do about it.
///
/// Messages never fail to format and show text from the backend (a holder's
/// details, a reason, a backend's message) with control and bidi characters
/// escaped (see [`display`](crate::display)), so printing one cannot drive a
/// terminal. [`LockError::Config`] is shown as given: it describes the
/// caller's own configuration (a TOML error spans several lines).
///
/// `Debug` (`{:?}`) reads like `Display`, so that `main` returning
/// `Result<(), LockError>` prints `Error: configuration error: …` rather than
/// `Error: Config("…")`; `{:#?}` shows the variant and its fields.
#[derive(thiserror::Error)]
#[non_exhaustive]
pub enum LockError {
    /// The wait ran out (or no wait was allowed) while someone else held the
    /// resource, or the backend's policy for the resource said not to wait
    /// (`skipped`). `holder` names them when the backend could tell.
    #[error("{}", describe_timeout(.resource, .backend, *.waited, .holder.as_deref(), .skipped.as_deref()))]
    Timeout {
        /// The resource.
        resource: String,
        /// The backend.
        backend: String,
        /// How long the caller waited.
        waited: std::time::Duration,
        /// Who held it when the wait ended.
        holder: Option<Box<LockInfo>>,
        /// Why the backend did not wait at all, when a policy of its own
        /// made it give up (legacy-file's skip-if-busy resources); `None`
        /// when the caller's wait ran out.
        skipped: Option<String>,
    },

    /// The operation needs a held lock, and this caller does not hold it.
    #[error("{resource:?} is not held by this caller on {}", Escaped(.backend))]
    NotHeld {
        /// The resource.
        resource: String,
        /// The backend.
        backend: String,
    },

    /// The lock was lost before it was released: whatever it protected may
    /// have been touched by someone else meanwhile.
    #[error(
        "lock on {resource:?} ({}) was lost: {reason}; work done under it may not have been exclusive",
        Escaped(.backend)
    )]
    Lost {
        /// The resource.
        resource: String,
        /// The backend.
        backend: String,
        /// Why.
        reason: LostReason,
    },

    /// The resource or flag name cannot be used.
    #[error("invalid name {name:?}: {reason}")]
    InvalidName {
        /// The rejected name (escaped when printed).
        name: String,
        /// Why it was rejected.
        reason: String,
    },

    /// The backend failed (I/O, network, protocol, corrupt metadata).
    #[error(
        "{} backend failed {}{}: {}",
        Escaped(.backend),
        Escaped(.action),
        fmt_resource(.resource.as_deref()),
        Escaped(.message)
    )]
    Backend {
        /// The backend.
        backend: String,
        /// What was being done, e.g. `"acquiring"`.
        action: String,
        /// The resource, when one was involved.
        resource: Option<String>,
        /// What went wrong and what to do.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<Box<dyn std::error::Error + Send + Sync>>,
    },

    /// The configuration is wrong.
    #[error("configuration error: {0}")]
    Config(String),
}

impl fmt::Debug for LockError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !f.alternate() {
            return fmt::Display::fmt(self, f);
        }
        match self {
            LockError::Timeout { resource, backend, waited, holder, skipped } => f
                .debug_struct("Timeout")
                .field("resource", resource)
                .field("backend", backend)
                .field("waited", waited)
                .field("holder", holder)
                .field("skipped", skipped)
                .finish(),
            LockError::NotHeld { resource, backend } => {
                f.debug_struct("NotHeld").field("resource", resource).field("backend", backend).finish()
            }
            LockError::Lost { resource, backend, reason } => f
                .debug_struct("Lost")
                .field("resource", resource)
                .field("backend", backend)
                .field("reason", reason)
                .finish(),
            LockError::InvalidName { name, reason } => {
                f.debug_struct("InvalidName").field("name", name).field("reason", reason).finish()
            }
            LockError::Backend { backend, action, resource, message, source } => f
                .debug_struct("Backend")
                .field("backend", backend)
                .field("action", action)
                .field("resource", resource)
                .field("message", message)
                .field("source", source)
                .finish(),
            LockError::Config(message) => f.debug_tuple("Config").field(message).finish(),
        }
    }
}

impl LockError {
    /// A [`LockError::Backend`] without an underlying error value.
    pub fn backend(
        backend: impl Into<String>,
        action: impl Into<String>,
        resource: Option<&str>,
        message: impl Into<String>,
    ) -> Self {
        LockError::Backend {
            backend: backend.into(),
            action: action.into(),
            resource: resource.map(str::to_owned),
            message: message.into(),
            source: None,
        }
    }

    /// A [`LockError::Backend`] caused by `source`.
    pub fn backend_caused_by(
        backend: impl Into<String>,
        action: impl Into<String>,
        resource: Option<&str>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        LockError::Backend {
            backend: backend.into(),
            action: action.into(),
            resource: resource.map(str::to_owned),
            message: source.to_string(),
            source: Some(Box::new(source)),
        }
    }

    /// A [`LockError::Lost`]: the lock `backend` held on `resource` was lost, for `reason`.
    ///
    /// ```
    /// use lockman_core::{LockError, LostReason};
    /// let error = LockError::lost("redis", "inverter_read", LostReason::LeaseExpired);
    /// assert!(error.to_string().starts_with("lock on \"inverter_read\" (redis) was lost: its lease expired"));
    /// ```
    pub fn lost(backend: impl Into<String>, resource: impl Into<String>, reason: LostReason) -> Self {
        LockError::Lost { resource: resource.into(), backend: backend.into(), reason }
    }

    /// A [`LockError::Lost`] because the backend saw another holder (or no
    /// holder) where this grant should be: [`LostReason::Stolen`] with what it saw.
    pub fn stolen(backend: impl Into<String>, resource: impl Into<String>, detail: impl Into<String>) -> Self {
        LockError::lost(backend, resource, LostReason::Stolen { detail: detail.into() })
    }

    /// A [`LockError::InvalidName`].
    pub fn invalid_name(name: &str, reason: impl Into<String>) -> Self {
        LockError::InvalidName { name: name.to_owned(), reason: reason.into() }
    }

    /// Whether this is a [`LockError::Timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, LockError::Timeout { .. })
    }

    /// Whether this is a [`LockError::Lost`].
    pub fn is_lost(&self) -> bool {
        matches!(self, LockError::Lost { .. })
    }
}

fn describe_timeout(
    resource: &str,
    backend: &str,
    waited: std::time::Duration,
    holder: Option<&LockInfo>,
    skipped: Option<&str>,
) -> String {
    match skipped {
        // Nothing timed out: say what the backend did and why.
        Some(why) => format!("skipped {resource:?} on {} without waiting: {}", Escaped(backend), Escaped(why)),
        None => {
            format!(
                "timed out after {waited:?} waiting for {resource:?} on {}: {}",
                Escaped(backend),
                describe_holder(holder)
            )
        }
    }
}

fn describe_holder(holder: Option<&LockInfo>) -> String {
    match holder {
        // Usually a task waiting behind another task of its own process,
        // expecting reentrancy; naming the holder alone reads like someone
        // else has it.
        Some(info) if info.holder.is_from_this_process() => format!(
            "held by this process; async acquisitions are not reentrant without a holder id (give both the \
             same AcquireOptions::holder to re-enter, or release the first guard first) — {info}"
        ),
        Some(info) => info.to_string(),
        None => "held by another holder (the backend could not say who)".to_owned(),
    }
}

fn fmt_resource(resource: Option<&str>) -> String {
    resource.map(|r| format!(" on {r:?}")).unwrap_or_default()
}

/// Why a lock was lost.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[non_exhaustive]
pub enum LostReason {
    /// The lease ran out before it was renewed or released.
    LeaseExpired,
    /// Someone broke the lock with `force_release`.
    ForceReleased {
        /// The reason they gave.
        reason: String,
    },
    /// The backend says another holder owns the resource now.
    Stolen {
        /// What the backend observed.
        detail: String,
    },
    /// The backend could not be reached to renew the lease in time.
    BackendUnreachable {
        /// The last error seen.
        detail: String,
    },
}

impl fmt::Display for LostReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LostReason::LeaseExpired => f.write_str("its lease expired"),
            // The reason travels through the backend (a Redis message, a
            // record): another client chose it.
            LostReason::ForceReleased { reason } => write!(f, "it was force-released ({})", Escaped(reason)),
            LostReason::Stolen { detail } => write!(f, "another holder took it ({})", Escaped(detail)),
            LostReason::BackendUnreachable { detail } => {
                write!(f, "the backend was unreachable past the lease ({})", Escaped(detail))
            }
        }
    }
}
