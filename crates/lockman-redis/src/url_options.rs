//! `redis://` and `rediss://` URLs: lockman's options in the query, read
//! from one table that also lists them in errors.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use lockman_core::LockError;
use lockman_core::url_options::{ConfigKey, QueryOption, UrlOption, UrlQuery};

use crate::RedisOptions;

/// The query options of a `redis://` or `rediss://` URL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum RedisConfigKey {
    /// `prefix=app`: [`RedisOptions::prefix`].
    Prefix,
    /// `lease=30s`: [`RedisOptions::default_lease`].
    Lease,
    /// `connect_timeout=2s`: [`RedisOptions::connect_timeout`].
    ConnectTimeout,
    /// `response_timeout=2s`: [`RedisOptions::response_timeout`].
    ResponseTimeout,
    /// `tls_ca=/path/ca.pem`: trust the CA certificates in this PEM file
    /// instead of the system's (`RedisOptions::tls_root_certificates`, with
    /// the `tls` feature).
    TlsCa,
    /// `password_file=/path`: the password, for a URL without one (one
    /// trailing newline is ignored; [`RedisOptions::password`]).
    PasswordFile,
    /// `protocol=resp3`: read by the redis crate itself, passed on to it.
    Protocol,
}

impl ConfigKey for RedisConfigKey {
    const OPTIONS: &'static [UrlOption<Self>] = &[
        UrlOption::new(RedisConfigKey::Prefix, "prefix", "prefix=NAME"),
        UrlOption::new(RedisConfigKey::Lease, "lease", "lease=DURATION"),
        UrlOption::new(RedisConfigKey::ConnectTimeout, "connect_timeout", "connect_timeout=DURATION"),
        UrlOption::new(RedisConfigKey::ResponseTimeout, "response_timeout", "response_timeout=DURATION"),
        UrlOption::new(RedisConfigKey::TlsCa, "tls_ca", "tls_ca=FILE"),
        UrlOption::new(RedisConfigKey::PasswordFile, "password_file", "password_file=FILE"),
        UrlOption::new(RedisConfigKey::Protocol, "protocol", "protocol=resp2|resp3"),
    ];
}

impl FromStr for RedisConfigKey {
    type Err = LockError;

    fn from_str(text: &str) -> Result<Self, LockError> {
        Self::parse(text)
    }
}

/// Settings configured outside the URL (a configuration file, the
/// environment), used where the URL's query sets none: the URL wins.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct RedisUrlDefaults {
    /// For a URL without `prefix=`.
    pub prefix: Option<String>,
    /// For a URL without `lease=`.
    pub lease: Option<Duration>,
    /// For a URL without `connect_timeout=`.
    pub connect_timeout: Option<Duration>,
    /// For a URL without `response_timeout=`.
    pub response_timeout: Option<Duration>,
    /// For a URL without `password_file=`: a file holding the password, and
    /// where it was configured (named in errors). Read only if used.
    pub password_file: Option<(PathBuf, String)>,
    /// For a URL without `password_file=` when `password_file` is unset too.
    pub password: Option<String>,
}

impl std::fmt::Debug for RedisUrlDefaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisUrlDefaults")
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("password_file", &self.password_file)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

impl RedisOptions {
    /// Reads `redis://[user:password@]host:port/db?options` (or `rediss://`;
    /// see [`RedisConfigKey`]): `prefix=NAME`, `lease=DURATION`,
    /// `connect_timeout=DURATION`, `response_timeout=DURATION`,
    /// `tls_ca=FILE`, `password_file=FILE` and `protocol=resp2|resp3` (passed
    /// on to the redis crate). `defaults` apply where the query sets nothing
    /// (a password in the URL itself wins over both). `origin` says where
    /// the URL came from, for errors.
    ///
    /// ```
    /// use lockman_redis::{RedisOptions, RedisUrlDefaults};
    ///
    /// let url = url::Url::parse("redis://:secret@cache:6379/2?prefix=givtcp:lock&lease=10s").unwrap();
    /// let options = RedisOptions::from_url(&url, "the example", RedisUrlDefaults::default()).unwrap();
    /// assert_eq!(options.redacted_url(), "redis://:***@cache:6379/2");
    /// ```
    ///
    /// # Errors
    ///
    /// [`LockError::Config`] naming the URL (redacted) and `origin`: an
    /// unknown option (listing the valid ones), a bad value or an unreadable
    /// file (naming the option), or `tls_ca` without the `tls` feature.
    pub fn from_url(url: &url::Url, origin: &str, defaults: RedisUrlDefaults) -> Result<RedisOptions, LockError> {
        let query = UrlQuery::<RedisConfigKey>::new(url.as_str(), origin, url.query_pairs());
        let mut options = RedisOptions::new(without_own_options(url));
        let RedisUrlDefaults { mut prefix, mut lease, mut connect_timeout, mut response_timeout, .. } = defaults;
        let mut password_file = None;
        for option in query.options() {
            match option.key {
                RedisConfigKey::Prefix => prefix = Some(option.value.to_owned()),
                RedisConfigKey::Lease => lease = Some(query.duration(&option)?),
                RedisConfigKey::ConnectTimeout => connect_timeout = Some(query.duration(&option)?),
                RedisConfigKey::ResponseTimeout => response_timeout = Some(query.duration(&option)?),
                RedisConfigKey::TlsCa => options = with_tls_ca(options, &query, &option)?,
                RedisConfigKey::PasswordFile => password_file = Some(option),
                RedisConfigKey::Protocol => {} // the redis crate reads it from the URL itself
            }
        }
        if let Some(prefix) = prefix {
            options = options.prefix(prefix);
        }
        if let Some(lease) = lease {
            options = options.default_lease(lease);
        }
        if let Some(timeout) = connect_timeout {
            options = options.connect_timeout(timeout);
        }
        if let Some(timeout) = response_timeout {
            options = options.response_timeout(timeout);
        }
        // A password in the URL wins (the backend ignores this one then).
        let password = match (password_file, defaults.password_file) {
            (Some(option), _) => {
                Some(read_password_file(Path::new(option.value)).map_err(|e| query.bad(option.text, e))?)
            }
            (None, Some((path, origin))) => {
                Some(read_password_file(&path).map_err(|e| LockError::Config(format!("{origin}: {e}")))?)
            }
            (None, None) => defaults.password,
        };
        if let Some(password) = password {
            options = options.password(password);
        }
        query.finish()?;
        Ok(options)
    }
}

/// The URL without lockman's own query options, for the redis crate.
fn without_own_options(url: &url::Url) -> String {
    let mut url = url.clone();
    let kept: Vec<(String, String)> = url
        .query_pairs()
        .filter(|(key, _)| RedisConfigKey::find(key).is_some_and(|(key, _)| key == RedisConfigKey::Protocol))
        .map(|(key, value)| (key.into_owned(), value.into_owned()))
        .collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    url.to_string()
}

/// Trusts the PEM CA certificates in the file `tls_ca` names for `rediss://`.
#[cfg(feature = "tls")]
fn with_tls_ca(
    options: RedisOptions,
    query: &UrlQuery<RedisConfigKey>,
    option: &QueryOption<'_, RedisConfigKey>,
) -> Result<RedisOptions, LockError> {
    let path = option.value;
    let pem = std::fs::read(path).map_err(|e| query.bad(option.text, format!("cannot read {path}: {e}")))?;
    Ok(options.tls_root_certificates(pem))
}

#[cfg(not(feature = "tls"))]
fn with_tls_ca(
    _: RedisOptions,
    query: &UrlQuery<RedisConfigKey>,
    option: &QueryOption<'_, RedisConfigKey>,
) -> Result<RedisOptions, LockError> {
    Err(query.bad(
        option.text,
        "trusting a CA is for rediss:// (TLS), which this build left out: enable lockman's `redis-tls` cargo \
         feature (lockman-redis's `tls`)",
    ))
}

/// The password in the file at `path`, without one trailing newline. The
/// error names the file and the problem, never the contents.
fn read_password_file(path: &Path) -> Result<String, String> {
    lockman_core::url_options::read_secret_file(path, "the Redis password file")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn options(text: &str) -> Result<RedisOptions, LockError> {
        RedisOptions::from_url(&url::Url::parse(text).expect("a URL"), "the test", RedisUrlDefaults::default())
    }

    fn error(text: &str) -> String {
        options(text).expect_err("accepted").to_string()
    }

    /// Every key of the table parses, round-trips through `as_str`, and is
    /// listed in the unknown-option error: parser and message cannot drift
    /// (as the list once did, leaving out `tls_ca`).
    #[test]
    fn every_option_parses_and_is_listed() {
        let message = error("redis://:hunter2@h:1/0?nosuch=1");
        assert!(message.contains("the test"), "{message}");
        assert!(message.contains("redis://:***@h:1/0") && !message.contains("hunter2"), "{message}");
        lockman_testkit::url_options::check_config_keys::<RedisConfigKey>(&message);
    }

    #[test]
    fn a_bad_value_names_the_option() {
        for (query, key) in [
            ("lease=soon", "`lease`"),
            ("connect_timeout=5", "`connect_timeout`"),
            ("response_timeout=x", "`response_timeout`"),
            ("tls_ca=/nonexistent/ca.pem", "`tls_ca`"),
            ("password_file=/nonexistent/password", "`password_file`"),
        ] {
            let message = error(&format!("redis://h:1/0?{query}"));
            assert!(message.contains(key) && message.contains("the test"), "{key}: {message}");
        }
    }

    #[test]
    fn the_url_wins_over_the_defaults_and_only_protocol_is_passed_on() {
        let defaults = RedisUrlDefaults {
            prefix: Some("configured".to_owned()),
            lease: Some(Duration::from_secs(60)),
            response_timeout: Some(Duration::from_secs(7)),
            ..RedisUrlDefaults::default()
        };
        let url = url::Url::parse("redis://h:1/0?prefix=app&lease=5s&protocol=resp3").expect("URL");
        let options = RedisOptions::from_url(&url, "t", defaults).expect("options");
        assert_eq!(options.prefix, "app");
        assert_eq!(options.default_lease, Duration::from_secs(5));
        assert_eq!(options.response_timeout, Duration::from_secs(7));
        assert_eq!(options.url, "redis://h:1/0?protocol=resp3");
    }

    #[test]
    fn a_configured_password_file_is_read_only_without_one_in_the_url() {
        let dir = std::env::temp_dir().join(format!("lockman-redis-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("password");
        std::fs::write(&file, "from-url\n").expect("write");
        let defaults = RedisUrlDefaults {
            password_file: Some((dir.join("missing"), "`redis.password_file`".to_owned())),
            ..RedisUrlDefaults::default()
        };
        let url = url::Url::parse(&format!("redis://h:1/0?password_file={}", file.display())).expect("URL");
        let options = RedisOptions::from_url(&url, "t", defaults.clone()).expect("options");
        assert_eq!(options.password.as_deref(), Some("from-url"));
        let url = url::Url::parse("redis://h:1/0").expect("URL");
        let message = RedisOptions::from_url(&url, "t", defaults).expect_err("read").to_string();
        assert!(message.contains("`redis.password_file`") && message.contains("missing"), "{message}");
        std::fs::remove_dir_all(&dir).expect("clean up");
    }
}
