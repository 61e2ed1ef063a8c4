//! [`EtcdOptions`]: where the cluster is and how the backend uses it.

use std::time::Duration;

/// How to reach etcd and how the backend uses it.
///
/// ```
/// use std::time::Duration;
/// use lockman_etcd::EtcdOptions;
///
/// let options = EtcdOptions::new(["http://10.0.0.1:2379", "http://10.0.0.2:2379"])
///     .prefix("givtcp")
///     .default_lease(Duration::from_secs(10));
/// assert_eq!(options.endpoints().len(), 2);
/// ```
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct EtcdOptions {
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) default_lease: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
}

/// The key prefix when none is given.
pub const DEFAULT_PREFIX: &str = "lockman";
/// The default lease (also the TTL of each manager's etcd lease).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

impl EtcdOptions {
    /// Options for the cluster at `endpoints` (`http://host:port`), with the
    /// defaults: prefix `lockman`, a 30 s lease, 2 s connect and 5 s
    /// response timeouts.
    pub fn new<E: Into<String>>(endpoints: impl IntoIterator<Item = E>) -> Self {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.to_owned(),
            default_lease: DEFAULT_LEASE,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
        }
    }

    /// The key prefix: locks live under `PREFIX/lock/`, flags under `PREFIX/flag/`.
    #[must_use]
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The lease of a lock whose caller gives none (renewed while its
    /// guard lives), and the TTL of the manager's etcd lease, which a
    /// crashed process's locks outlive by at most this (rounded up to whole
    /// seconds; etcd may raise a very short one to its minimum).
    #[must_use]
    pub fn default_lease(mut self, lease: Duration) -> Self {
        self.default_lease = lease;
        self
    }

    /// How long connecting may take.
    #[must_use]
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long one request may take.
    #[must_use]
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The etcd lease TTL in whole seconds (at least 1).
    pub(crate) fn session_ttl(&self) -> i64 {
        let secs = self.default_lease.as_secs() + u64::from(self.default_lease.subsec_nanos() > 0);
        i64::try_from(secs.max(1)).unwrap_or(i64::MAX)
    }
}
