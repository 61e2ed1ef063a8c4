//! `etcd://host:port[,host:port…]/?options` URLs: the endpoints, and
//! lockman's options in the query, read from one table that also lists
//! them in errors.

use std::str::FromStr;
use std::time::Duration;

use lockman_core::url_options::{ConfigKey, UrlOption, UrlQuery};
use lockman_core::{LockError, redact_url};

use crate::EtcdOptions;

/// The query options of an `etcd://` URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum EtcdConfigKey {
    /// `prefix=app`: [`EtcdOptions::prefix`].
    Prefix,
    /// `lease=30s`: [`EtcdOptions::default_lease`].
    Lease,
    /// `connect_timeout=2s`: [`EtcdOptions::connect_timeout`].
    ConnectTimeout,
    /// `response_timeout=5s`: [`EtcdOptions::response_timeout`].
    ResponseTimeout,
}

impl ConfigKey for EtcdConfigKey {
    const OPTIONS: &'static [UrlOption<Self>] = &[
        UrlOption::new(EtcdConfigKey::Prefix, "prefix", "prefix=NAME"),
        UrlOption::new(EtcdConfigKey::Lease, "lease", "lease=DURATION"),
        UrlOption::new(EtcdConfigKey::ConnectTimeout, "connect_timeout", "connect_timeout=DURATION"),
        UrlOption::new(EtcdConfigKey::ResponseTimeout, "response_timeout", "response_timeout=DURATION"),
    ];
}

impl FromStr for EtcdConfigKey {
    type Err = LockError;

    fn from_str(text: &str) -> Result<Self, LockError> {
        Self::parse(text)
    }
}

/// Settings configured outside the URL (a configuration file, the
/// environment), used where the URL's query sets none: the URL wins.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct EtcdUrlDefaults {
    /// For a URL without `prefix=`.
    pub prefix: Option<String>,
    /// For a URL without `lease=`.
    pub lease: Option<Duration>,
}

impl EtcdOptions {
    /// Reads `etcd://host:port[,host:port…][/]?options` (see
    /// [`EtcdConfigKey`]): `prefix=NAME`, `lease=DURATION`,
    /// `connect_timeout=DURATION`, `response_timeout=DURATION`. Several
    /// members are separated by commas (which `url::Url` cannot parse, so
    /// this takes the text). `defaults` apply where the query sets nothing;
    /// `origin` says where the URL came from, for errors.
    ///
    /// ```
    /// use lockman_etcd::{EtcdOptions, EtcdUrlDefaults};
    ///
    /// let options = EtcdOptions::from_url("etcd://10.0.0.1:2379,10.0.0.2:2379/?prefix=givtcp&lease=10s",
    ///     "the example", EtcdUrlDefaults::default()).unwrap();
    /// assert_eq!(options.endpoints(), ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Config`] naming the URL (redacted) and `origin`: not
    /// `etcd://`, no or an empty host, a user or password (not supported
    /// yet), a path, an unknown option (listing the valid ones) or a bad value.
    pub fn from_url(text: &str, origin: &str, defaults: EtcdUrlDefaults) -> Result<EtcdOptions, LockError> {
        let bad = |problem: &str| {
            LockError::Config(format!(
                "the etcd URL {} (from {origin}) {problem}: write etcd://host:port[,host:port…]/?prefix=NAME&lease=DURATION",
                redact_url(text)
            ))
        };
        let rest = text.strip_prefix("etcd://").ok_or_else(|| bad("does not start with etcd://"))?;
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        if authority.contains('@') {
            return Err(bad("has a user or password, which the etcd backend does not support yet"));
        }
        let hosts: Vec<&str> = authority.split(',').collect();
        if hosts.iter().any(|host| host.is_empty()) {
            return Err(bad("has an empty host"));
        }
        // The query is read by the shared parser, through a one-host URL.
        let single = url::Url::parse(&format!("etcd://{}{tail}", hosts[0])).map_err(|e| bad(&e.to_string()))?;
        if !matches!(single.path(), "" | "/") {
            return Err(bad("has a path; the key prefix is the `prefix` option"));
        }
        let mut endpoints = Vec::with_capacity(hosts.len());
        for host in &hosts {
            let parsed = url::Url::parse(&format!("http://{host}")).map_err(|e| bad(&format!("host {host:?}: {e}")))?;
            let name = parsed.host_str().unwrap_or_default();
            let port = parsed.port().unwrap_or(2379);
            endpoints.push(format!("http://{name}:{port}"));
        }
        let query = UrlQuery::<EtcdConfigKey>::new(text, origin, single.query_pairs());
        let EtcdUrlDefaults { mut prefix, mut lease } = defaults;
        let mut options = EtcdOptions::new(endpoints);
        for option in query.options() {
            match option.key {
                EtcdConfigKey::Prefix => prefix = Some(option.value.to_owned()),
                EtcdConfigKey::Lease => lease = Some(query.duration(&option)?),
                EtcdConfigKey::ConnectTimeout => options = options.connect_timeout(query.duration(&option)?),
                EtcdConfigKey::ResponseTimeout => options = options.response_timeout(query.duration(&option)?),
            }
        }
        query.finish()?;
        if let Some(prefix) = prefix {
            if prefix.is_empty() || prefix.contains('\0') {
                return Err(bad("has an empty prefix"));
            }
            options = options.prefix(prefix);
        }
        if let Some(lease) = lease {
            if lease < Duration::from_secs(1) {
                return Err(bad("asks for a lease under 1s; etcd leases are whole seconds"));
            }
            options = options.default_lease(lease);
        }
        Ok(options)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn error(text: &str) -> String {
        EtcdOptions::from_url(text, "the test", EtcdUrlDefaults::default()).expect_err("accepted").to_string()
    }

    #[test]
    fn every_option_parses_and_is_listed() {
        let message = error("etcd://h:1/?nosuch=1");
        assert!(message.contains("the test"), "{message}");
        lockman_testkit::url_options::check_config_keys::<EtcdConfigKey>(&message);
    }

    #[test]
    fn hosts_options_and_defaults() {
        let defaults = EtcdUrlDefaults { prefix: Some("configured".to_owned()), lease: Some(Duration::from_secs(9)) };
        let options = EtcdOptions::from_url("etcd://a:1,b,c:3?lease=5s", "t", defaults.clone()).expect("options");
        assert_eq!(options.endpoints(), ["http://a:1", "http://b:2379", "http://c:3"]);
        assert_eq!(options.prefix, "configured");
        assert_eq!(options.default_lease, Duration::from_secs(5));
        let options = EtcdOptions::from_url("etcd://a:1", "t", defaults).expect("options");
        assert_eq!(options.default_lease, Duration::from_secs(9));
        for (url, problem) in [
            ("etcd://", "empty host"),
            ("etcd://a:1,,b:2", "empty host"),
            ("etcd://u:pw@a:1", "user or password"),
            ("etcd://a:1/app", "path"),
            ("etcd://a:1?lease=soon", "`lease`"),
            ("etcd://a:1?lease=200ms", "whole seconds"),
            ("redis://a:1", "etcd://"),
        ] {
            let message = error(url);
            assert!(message.contains(problem), "{url}: {message}");
            assert!(!message.contains(":pw@"), "{message}");
        }
    }
}
