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
#[derive(Clone)]
#[non_exhaustive]
pub struct EtcdOptions {
    pub(crate) endpoints: Vec<String>,
    pub(crate) prefix: String,
    pub(crate) default_lease: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    /// etcd's user authentication: the user and password.
    pub(crate) user: Option<(String, String)>,
    /// TLS for `https://` endpoints (the `tls` feature).
    #[cfg(feature = "tls")]
    pub(crate) tls: Option<EtcdTls>,
}

/// TLS settings for `https://` endpoints (the `tls` feature): the CA to
/// trust, and a client certificate for etcd's `--client-cert-auth`.
#[cfg(feature = "tls")]
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct EtcdTls {
    /// PEM CA certificates to trust instead of none (etcd clusters usually
    /// run their own CA).
    pub ca_pem: Option<Vec<u8>>,
    /// A PEM client certificate and its PEM private key.
    pub identity: Option<(Vec<u8>, Vec<u8>)>,
    /// The name the server's certificate must carry, if not the endpoint's host.
    pub domain: Option<String>,
}

#[cfg(feature = "tls")]
impl std::fmt::Debug for EtcdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdTls")
            .field("ca_pem", &self.ca_pem.as_ref().map(|_| "<PEM>"))
            .field("identity", &self.identity.as_ref().map(|_| "<PEM certificate and key>"))
            .field("domain", &self.domain)
            .finish()
    }
}

impl std::fmt::Debug for EtcdOptions {
    /// The password is shown as `***`, certificates and keys not at all.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut debug = f.debug_struct("EtcdOptions");
        debug
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("default_lease", &self.default_lease)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("user", &self.user.as_ref().map(|(user, _)| format!("{user} (password ***)")));
        #[cfg(feature = "tls")]
        debug.field("tls", &self.tls);
        debug.finish()
    }
}

/// The key prefix when none is given.
pub const DEFAULT_PREFIX: &str = "lockman";
/// The default lease (also the TTL of each manager's etcd lease).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(30);

impl EtcdOptions {
    /// Options for the cluster at `endpoints` (`http://host:port`, or
    /// `https://host:port` with `tls`, the `tls` feature), with the
    /// defaults: prefix `lockman`, a 30 s lease, 2 s connect and 5 s
    /// response timeouts.
    pub fn new<E: Into<String>>(endpoints: impl IntoIterator<Item = E>) -> Self {
        EtcdOptions {
            endpoints: endpoints.into_iter().map(Into::into).collect(),
            prefix: DEFAULT_PREFIX.to_owned(),
            default_lease: DEFAULT_LEASE,
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            user: None,
            #[cfg(feature = "tls")]
            tls: None,
        }
    }

    /// Authenticates as `user` with `password` (etcd's `auth enable`; the
    /// client renews its token when it expires). The password is never
    /// shown in `Debug` or errors.
    #[must_use]
    pub fn user(mut self, user: impl Into<String>, password: impl Into<String>) -> Self {
        self.user = Some((user.into(), password.into()));
        self
    }

    /// TLS for the endpoints, which must then be `https://` (the `tls`
    /// feature; rustls with its `ring` provider, through tonic).
    #[cfg(feature = "tls")]
    #[must_use]
    pub fn tls(mut self, tls: EtcdTls) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The user name, if the backend authenticates.
    pub fn user_name(&self) -> Option<&str> {
        self.user.as_ref().map(|(user, _)| user.as_str())
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
