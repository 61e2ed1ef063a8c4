//! [`RedisOptions`]: how to reach Redis and how to name keys.

use std::fmt;
use std::time::Duration;

/// How to reach Redis and how to name keys.
///
/// ```
/// use std::time::Duration;
/// use lockman_redis::RedisOptions;
///
/// let options = RedisOptions::new("redis://:secret@cache.internal:6379/2").prefix("givtcp:lock");
/// assert!(!format!("{options:?}").contains("secret"));
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct RedisOptions {
    pub(crate) url: String,
    /// Used when the URL carries none (`LOCKMAN_REDIS_PASSWORD`, a password file).
    pub(crate) password: Option<String>,
    pub(crate) prefix: String,
    pub(crate) default_lease: Duration,
    pub(crate) connect_timeout: Duration,
    pub(crate) response_timeout: Duration,
    /// PEM CA certificates trusted for `rediss://` instead of the platform's.
    #[cfg(feature = "tls")]
    pub(crate) tls_root_certificates: Option<Vec<u8>>,
}

impl RedisOptions {
    /// `redis://[user:password@]host:port/db` or `rediss://…` (with the `tls` feature).
    pub fn new(url: impl Into<String>) -> Self {
        RedisOptions {
            url: url.into(),
            password: None,
            prefix: "lockman".to_owned(),
            default_lease: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(2),
            response_timeout: Duration::from_secs(2),
            #[cfg(feature = "tls")]
            tls_root_certificates: None,
        }
    }

    /// For `rediss://` (with the `tls` feature): trust the CA certificates in
    /// `pem` (one or more PEM blocks), instead of the platform's trust store —
    /// for a server whose certificate a private CA signed. The certificate
    /// must still name the URL's host.
    #[cfg(feature = "tls")]
    pub fn tls_root_certificates(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.tls_root_certificates = Some(pem.into());
        self
    }

    /// The password to authenticate with when the URL has none, so it need
    /// not sit in a URL (visible in `ps`, shell history, the environment of
    /// child processes). A password in the URL wins. Never shown in `Debug`,
    /// errors or logs.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.password = Some(password.into());
        self
    }

    /// Prefix of every key (default `lockman`).
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The lease of locks whose caller names none, renewed every third of it (default 30 s).
    pub fn default_lease(mut self, lease: Duration) -> Self {
        self.default_lease = lease;
        self
    }

    /// How long to wait for a connection (default 2 s).
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long to wait for any reply (default 2 s; a caller's shorter
    /// deadline wins).
    pub fn response_timeout(mut self, timeout: Duration) -> Self {
        self.response_timeout = timeout;
        self
    }

    /// The URL with any password replaced by `***` (see [`lockman_core::redact_url`]).
    pub fn redacted_url(&self) -> String {
        lockman_core::redact_url(&self.url)
    }
}

impl fmt::Debug for RedisOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut debug = f.debug_struct("RedisOptions");
        debug
            .field("url", &self.redacted_url())
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("prefix", &self.prefix)
            .field("default_lease", &self.default_lease)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout);
        #[cfg(feature = "tls")]
        debug.field("tls_root_certificates", &self.tls_root_certificates.as_ref().map(|_| "<PEM>"));
        debug.finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        for url in
            ["redis://u:hunter2@h:1/0", "redis://:hun@ter2@h:1/0", "redis://:hunter%402@h/0", "redis://:hun/ter2@h"]
        {
            let options = RedisOptions::new(url);
            let debug = format!("{options:?}");
            assert!(!debug.contains("ter2"), "{debug}");
        }
        let options = RedisOptions::new("redis://h:1/0").password("hunter2");
        assert!(!format!("{options:?}").contains("hunter2"));
    }
}
