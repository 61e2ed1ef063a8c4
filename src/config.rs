//! [`Config`]: which backend to run, loaded with figment from built-in
//! defaults, then an optional TOML file, then environment variables.
//!
//! All configuration loading lives in this module, so the loader (figment)
//! can be swapped without touching the rest of the crate. The keys are listed on [`Config`].

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use lockman_core::url_options::parse_duration;
use lockman_core::{LockError, redact_url};
use serde::{Deserialize, Serialize};

/// The environment variable naming the TOML file to load instead of `lockman.toml`.
pub const CONFIG_ENV: &str = "LOCKMAN_CONFIG";
/// The rollout switch: `false` runs the legacy lockfile backend, `true` runs `url`.
pub const USE_NEW_LOCKS_ENV: &str = "USE_NEW_LOCKS";
/// The TOML file read from the working directory when `LOCKMAN_CONFIG` is unset.
pub const CONFIG_FILE: &str = "lockman.toml";

/// Which backends to run and how, loaded by [`Config::load`] from built-in
/// defaults, then an optional TOML file, then environment variables.
///
/// | key (`lockman.toml`) | environment variable | meaning |
/// |---|---|---|
/// | `url` | `LOCKMAN_URL` | where locks live (default `memory://`) |
/// | `status_url` | `LOCKMAN_STATUS_URL` | where flags live (default: see [`Config::status_url`]) |
/// | `default_wait` | `LOCKMAN_DEFAULT_WAIT` | how long an acquisition waits when the caller chose no wait, `lock()` included (`500ms`, `30s`, `5m`; unset: forever) |
/// | `lease` | `LOCKMAN_LEASE` | the default lease of backends that have leases (Redis, lease files) |
/// | `legacy_url` | `LOCKMAN_LEGACY_URL` | the legacy lockfiles, used when `USE_NEW_LOCKS=false` |
/// | `legacy_bridge` | `LOCKMAN_LEGACY_BRIDGE` | also take this legacy lock after the new one (rollout) |
/// | `use_new_locks` | `USE_NEW_LOCKS` | `false`: run the legacy backend; `true`: run `url` |
/// | `redis.prefix` | `LOCKMAN_REDIS__PREFIX` | key prefix (default `lockman`) |
/// | `redis.connect_timeout` | `LOCKMAN_REDIS__CONNECT_TIMEOUT` | default 2 s |
/// | `redis.response_timeout` | `LOCKMAN_REDIS__RESPONSE_TIMEOUT` | default 2 s |
/// | `redis.password_file` | `LOCKMAN_REDIS__PASSWORD_FILE` | a file holding the Redis password (one trailing newline is ignored), for URLs without one |
/// | — | `LOCKMAN_REDIS_PASSWORD` | the Redis password, for URLs without one (environment only; a password file wins) |
/// | `etcd.endpoints` | `LOCKMAN_ETCD__ENDPOINTS` | the members (`host:port`, a list or one comma-separated string), for `etcd://` or `etcds://` URLs that name none |
/// | `etcd.prefix` | `LOCKMAN_ETCD__PREFIX` | key prefix (default `lockman`) |
/// | `etcd.connect_timeout` | `LOCKMAN_ETCD__CONNECT_TIMEOUT` | default 2 s |
/// | `etcd.response_timeout` | `LOCKMAN_ETCD__RESPONSE_TIMEOUT` | default 5 s |
/// | `etcd.user` | `LOCKMAN_ETCD__USER` | the etcd user, for URLs without `user@` |
/// | `etcd.password_file` | `LOCKMAN_ETCD__PASSWORD_FILE` | a file holding the user's password (one trailing newline is ignored) |
/// | — | `LOCKMAN_ETCD_PASSWORD` | the user's password (environment only; a password file wins) |
/// | `etcd.tls_ca` | `LOCKMAN_ETCD__TLS_CA` | for `etcds://`: the PEM CA certificates to trust |
/// | `etcd.tls_cert`, `etcd.tls_key` | `LOCKMAN_ETCD__TLS_CERT`, `LOCKMAN_ETCD__TLS_KEY` | for `etcds://`: a client certificate and its key |
///
/// The lease of etcd locks is the top-level `lease` (whole seconds).
/// The TOML file is `lockman.toml` in the working directory, or the file
/// named by `LOCKMAN_CONFIG` (which must then exist). Options in a URL's query
/// string (`redis://host/0?prefix=app&lease=10s`) win over these keys.
///
/// ```
/// let config = lockman::Config::for_url("file:///run/myapp/locks");
/// assert_eq!(config.lock_url().unwrap(), "file:///run/myapp/locks");
/// ```
#[derive(Clone, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Config {
    /// Where locks live: `memory://`, `file:///dir`, `legacy-file:///dir`,
    /// `redis://host:port/db`, `rediss://…`, `etcd://host:port[,…]` or `etcds://…`.
    pub url: String,
    /// Where flags live. Unset: beside the locks — except while legacy
    /// lockfiles are in use (`USE_NEW_LOCKS=false`, or a legacy bridge), when
    /// flags stay in the legacy folder, where old daemons read them.
    pub status_url: Option<String>,
    /// How long an acquisition waits when the caller chose no wait (the
    /// managers `connect` returns apply it, as does
    /// [`Backends::acquire_options`](crate::Backends::acquire_options)); unset: forever.
    #[serde(with = "text_duration")]
    pub default_wait: Option<Duration>,
    /// The default lease of backends with leases; unset: the backend's (30 s).
    #[serde(with = "text_duration")]
    pub lease: Option<Duration>,
    /// The legacy lockfiles (`legacy-file:///dir…`) run when `USE_NEW_LOCKS=false`.
    /// Unset: the legacy bridge's URL.
    pub legacy_url: Option<String>,
    /// With a bridge, every acquisition also takes this legacy lock after
    /// the new backend's, so old daemons stay excluded during a rollout.
    pub legacy_bridge: Option<String>,
    /// The rollout switch (`USE_NEW_LOCKS`): `false` runs the legacy
    /// lockfiles, `true` runs `url`; unset, `url`.
    pub use_new_locks: Option<bool>,
    /// Redis settings (`[redis]` in the TOML file, `LOCKMAN_REDIS__*`).
    pub redis: RedisConfig,
    /// etcd settings (`[etcd]` in the TOML file, `LOCKMAN_ETCD__*`).
    pub etcd: EtcdConfig,
    /// Where each key's value came from, for error messages.
    #[serde(skip)]
    origins: BTreeMap<String, String>,
}

/// The `[redis]` section of [`Config`].
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct RedisConfig {
    /// Prefix of every key (default `lockman`).
    pub prefix: Option<String>,
    /// How long to wait for a connection (default 2 s).
    #[serde(with = "text_duration")]
    pub connect_timeout: Option<Duration>,
    /// How long to wait for any reply (default 2 s).
    #[serde(with = "text_duration")]
    pub response_timeout: Option<Duration>,
    /// A file holding the password, for Redis URLs that carry none (a
    /// `password_file=` URL option wins). One trailing newline is ignored.
    pub password_file: Option<PathBuf>,
    /// The password for Redis URLs that carry none and have no password
    /// file: `LOCKMAN_REDIS_PASSWORD` (read from the environment only, never
    /// from the TOML file). Shown as `***` in `Debug`.
    #[serde(skip)]
    pub password: Option<String>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("password_file", &self.password_file)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .finish()
    }
}

/// The environment variable holding the Redis password for URLs without one.
pub const REDIS_PASSWORD_ENV: &str = "LOCKMAN_REDIS_PASSWORD";

/// The `[etcd]` section of [`Config`]. A URL's own options win over these.
///
/// ```toml
/// url = "etcds://"
/// lease = "15s"
///
/// [etcd]
/// endpoints = ["10.0.0.1:2379", "10.0.0.2:2379", "10.0.0.3:2379"]
/// prefix = "givtcp"
/// user = "givtcp"
/// password_file = "/run/secrets/etcd"
/// tls_ca = "/etc/etcd/ca.pem"
/// ```
#[derive(Clone, Default, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct EtcdConfig {
    /// The members (`host:port`), for an `etcd://` or `etcds://` URL that
    /// names none. The environment gives them as one comma-separated string.
    #[serde(with = "endpoint_list")]
    pub endpoints: Option<Vec<String>>,
    /// Prefix of every key (default `lockman`).
    pub prefix: Option<String>,
    /// How long to wait for a connection (default 2 s).
    #[serde(with = "text_duration")]
    pub connect_timeout: Option<Duration>,
    /// How long to wait for any reply (default 5 s).
    #[serde(with = "text_duration")]
    pub response_timeout: Option<Duration>,
    /// The user to authenticate as, for URLs without `user@`.
    pub user: Option<String>,
    /// A file holding the user's password, for URLs without
    /// `password_env=`/`password_file=`. One trailing newline is ignored.
    pub password_file: Option<PathBuf>,
    /// The user's password when no file gives it: `LOCKMAN_ETCD_PASSWORD`
    /// (read from the environment only, never from the TOML file). Shown as
    /// `***` in `Debug`.
    #[serde(skip)]
    pub password: Option<String>,
    /// For `etcds://`: a PEM file of the CA certificates to trust.
    pub tls_ca: Option<PathBuf>,
    /// For `etcds://`: a PEM client certificate (etcd's `--client-cert-auth`).
    pub tls_cert: Option<PathBuf>,
    /// For `etcds://`: the PEM private key of `tls_cert`.
    pub tls_key: Option<PathBuf>,
}

impl fmt::Debug for EtcdConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("EtcdConfig")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .field("user", &self.user)
            .field("password_file", &self.password_file)
            .field("password", &self.password.as_ref().map(|_| "***"))
            .field("tls_ca", &self.tls_ca)
            .field("tls_cert", &self.tls_cert)
            .field("tls_key", &self.tls_key)
            .finish()
    }
}

/// The environment variable holding the etcd user's password.
pub const ETCD_PASSWORD_ENV: &str = "LOCKMAN_ETCD_PASSWORD";

impl Default for Config {
    fn default() -> Self {
        Config {
            url: "memory://".to_owned(),
            status_url: None,
            default_wait: None,
            lease: None,
            legacy_url: None,
            legacy_bridge: None,
            use_new_locks: None,
            redis: RedisConfig::default(),
            etcd: EtcdConfig::default(),
            origins: BTreeMap::new(),
        }
    }
}

impl Config {
    /// The defaults with `url` as the lock backend.
    pub fn for_url(url: impl Into<String>) -> Self {
        let mut config = Config { url: url.into(), ..Config::default() };
        config.origins.insert("url".to_owned(), "the URL given to lockman::connect".to_owned());
        config
    }

    /// Loads defaults, then `lockman.toml` in the working directory (or the
    /// file named by `LOCKMAN_CONFIG`), then `LOCKMAN_*` environment
    /// variables (nested keys with `__`) and `USE_NEW_LOCKS`.
    ///
    /// # Errors
    ///
    /// [`LockError::Config`] naming the key and where its bad value came from
    /// (the file, or the environment variable), or a missing `LOCKMAN_CONFIG` file.
    pub fn load() -> Result<Self, LockError> {
        let file = match std::env::var_os(CONFIG_ENV) {
            Some(path) => {
                let path = PathBuf::from(path);
                if !path.is_file() {
                    return Err(LockError::Config(format!(
                        "{CONFIG_ENV} names {}, which is not a readable file: create it, or unset {CONFIG_ENV} \
                         to read {CONFIG_FILE} from the working directory",
                        path.display()
                    )));
                }
                Some(path)
            }
            None => Some(PathBuf::from(CONFIG_FILE)).filter(|path| path.is_file()),
        };
        let file = file.map_or_else(Figment::new, |path| Figment::new().merge(Toml::file_exact(path)));
        Self::load_from(file, Env::prefixed("LOCKMAN_"))
    }

    /// [`Config::load`] with `path` as the TOML file instead of `lockman.toml`
    /// or `LOCKMAN_CONFIG` (a `--config` flag, say); the environment still
    /// applies on top.
    ///
    /// # Errors
    ///
    /// As [`Config::load`], and [`LockError::Config`] if `path` is not a readable file.
    pub fn load_file(path: impl AsRef<std::path::Path>) -> Result<Self, LockError> {
        let path = path.as_ref();
        if !path.is_file() {
            return Err(LockError::Config(format!("the configuration file {} is not a readable file", path.display())));
        }
        Self::load_from(Figment::new().merge(Toml::file_exact(path)), Env::prefixed("LOCKMAN_"))
    }

    /// Replaces the lock URL (a `--url` flag, say), naming `origin` in error
    /// messages. An explicit URL also wins over `USE_NEW_LOCKS=false`, which
    /// would otherwise pick the legacy URL; a legacy bridge still applies.
    pub fn override_url(&mut self, url: impl Into<String>, origin: impl Into<String>) {
        self.url = url.into();
        if self.use_new_locks == Some(false) {
            tracing::info!("an explicit lock URL overrides USE_NEW_LOCKS=false");
            self.use_new_locks = None;
        }
        self.origins.insert("url".to_owned(), origin.into());
    }

    /// Loads from `file` (a figment provider for the TOML layer) and `env`
    /// (the `LOCKMAN_` variables); split out so tests can give both.
    fn load_from(file: Figment, env: Env) -> Result<Self, LockError> {
        // The password is read below, never through figment, so that no
        // figment error can quote it.
        let env =
            env.ignore(&["CONFIG", "REQUIRE_REDIS", "REDIS_PASSWORD", "REQUIRE_ETCD", "ETCD_PASSWORD"]).split("__");
        let figment = Figment::from(Serialized::defaults(Config::default()))
            .merge(file)
            .merge(env)
            .merge(Env::raw().only(&[USE_NEW_LOCKS_ENV]));
        let mut config: Config = figment
            .extract()
            .map_err(|e| LockError::Config(format!("bad lockman configuration: {}", config_error_text(e))))?;
        config.redis.password = std::env::var(REDIS_PASSWORD_ENV).ok().filter(|password| !password.is_empty());
        config.etcd.password = std::env::var(ETCD_PASSWORD_ENV).ok().filter(|password| !password.is_empty());
        for key in ["url", "status_url", "legacy_url", "legacy_bridge", "use_new_locks"] {
            if let Some(metadata) = figment.find_metadata(key) {
                let origin = match &metadata.source {
                    Some(figment::Source::File(path)) => format!("`{key}` in {}", path.display()),
                    _ if metadata.name.contains("environment") => {
                        // figment names a prefixed source "`LOCKMAN_` environment variable(s)".
                        let prefix = metadata.name.split('`').nth(1).unwrap_or("");
                        format!("environment variable {prefix}{}", key.to_ascii_uppercase())
                    }
                    _ => format!("the default `{key}`"),
                };
                config.origins.insert(key.to_owned(), origin);
            }
        }
        Ok(config)
    }

    /// Where `key`'s value came from ("environment variable LOCKMAN_URL",
    /// "`url` in lockman.toml", …), for error messages.
    pub fn origin(&self, key: &str) -> String {
        self.origins.get(key).cloned().unwrap_or_else(|| format!("the configured `{key}`"))
    }

    /// The lock backend the rollout switch selects: the legacy URL when
    /// `use_new_locks` is `false`, else `url`.
    ///
    /// # Errors
    ///
    /// [`LockError::Config`] when `USE_NEW_LOCKS=false` but no legacy URL is configured.
    pub fn lock_url(&self) -> Result<&str, LockError> {
        if self.use_new_locks == Some(false) {
            return self.legacy_url.as_deref().or(self.legacy_bridge.as_deref()).ok_or_else(|| {
                LockError::Config(format!(
                    "{} is false, which runs the legacy lockfiles, but no legacy URL is configured: set \
                     LOCKMAN_LEGACY_URL (e.g. legacy-file:///app/GivTCP_1?givtcp=1) or LOCKMAN_LEGACY_BRIDGE",
                    self.origin("use_new_locks")
                ))
            });
        }
        Ok(&self.url)
    }

    /// Where [`lock_url`](Self::lock_url) came from.
    pub(crate) fn lock_url_origin(&self) -> String {
        match (self.use_new_locks, &self.legacy_url) {
            (Some(false), Some(_)) => self.origin("legacy_url"),
            (Some(false), None) => self.origin("legacy_bridge"),
            _ => self.origin("url"),
        }
    }

    /// The legacy lock to take after the new one, if a bridge applies: only
    /// when the new backend runs (`USE_NEW_LOCKS` is not `false`).
    pub fn bridge_url(&self) -> Option<&str> {
        match self.use_new_locks {
            Some(false) => None,
            _ => self.legacy_bridge.as_deref(),
        }
    }
}

impl fmt::Debug for Config {
    /// Passwords in URLs are shown as `***`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let redacted = |url: &Option<String>| url.as_deref().map(redact_url);
        f.debug_struct("Config")
            .field("url", &redact_url(&self.url))
            .field("status_url", &redacted(&self.status_url))
            .field("default_wait", &self.default_wait)
            .field("lease", &self.lease)
            .field("legacy_url", &redacted(&self.legacy_url))
            .field("legacy_bridge", &redacted(&self.legacy_bridge))
            .field("use_new_locks", &self.use_new_locks)
            .field("redis", &self.redis)
            .field("etcd", &self.etcd)
            .finish()
    }
}

/// A figment error (each in its chain) as text without secrets: a value it
/// quotes (`found string "redis://:…@…"`) is redacted as a URL, and so is
/// any URL in its message.
fn config_error_text(error: figment::Error) -> String {
    use figment::error::{Actual, Kind};

    let redact = |actual: &mut Actual| {
        if let Actual::Str(text) | Actual::Other(text) = actual {
            *text = redact_url(text);
        }
    };
    error
        .into_iter()
        .map(|mut error| {
            match &mut error.kind {
                Kind::InvalidType(actual, _)
                | Kind::InvalidValue(actual, _)
                | Kind::Unsupported(actual)
                | Kind::UnsupportedKey(actual, _) => redact(actual),
                Kind::UnknownVariant(text, _) | Kind::UnknownField(text, _) => *text = redact_url(text),
                _ => {}
            }
            redact_config_error(&error.to_string())
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// A figment error's text without secrets. A TOML syntax error quotes the
/// offending source line (`1 | url = "redis://:…@…`), which may hold a
/// password anywhere, in any syntax: such lines are replaced whole. In the
/// rest, every `scheme://…` word goes through [`redact_url`].
pub(crate) fn redact_config_error(text: &str) -> String {
    text.lines()
        .map(|line| {
            // `<line number> | <source>`: the excerpt a parse error shows.
            let trimmed = line.trim_start();
            let numbered = trimmed
                .split_once(" |")
                .is_some_and(|(number, _)| !number.is_empty() && number.bytes().all(|b| b.is_ascii_digit()));
            if numbered {
                let number = trimmed.split(' ').next().unwrap_or_default();
                format!("{number} | (line not shown: it may hold a password)")
            } else {
                redact_urls_in(line)
            }
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// `text` with every `scheme://…` word (up to whitespace or a quote) redacted.
fn redact_urls_in(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find("://") {
        let start = rest[..at]
            .rfind(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.')))
            .map_or(0, |i| i + 1);
        let end = rest[at..]
            .find(|c: char| c.is_whitespace() || matches!(c, '"' | '\'' | '`'))
            .map_or(rest.len(), |i| at + i);
        out.push_str(&rest[..start]);
        out.push_str(&redact_url(&rest[start..end]));
        rest = &rest[end..];
    }
    out.push_str(rest);
    out
}

/// Optional durations as text (`"30s"`) in TOML and environment variables.
mod text_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(value: &Option<Duration>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(duration) => serializer.serialize_some(&humantime::format_duration(*duration).to_string()),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(deserializer)? {
            Some(text) => super::parse_duration(&text).map(Some).map_err(serde::de::Error::custom),
            None => Ok(None),
        }
    }
}

/// `etcd.endpoints`: a list, or one comma-separated string (as an
/// environment variable gives it).
mod endpoint_list {
    use serde::{Deserialize, Deserializer, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Endpoints {
        One(String),
        List(Vec<String>),
    }

    pub(super) fn serialize<S: Serializer>(value: &Option<Vec<String>>, serializer: S) -> Result<S::Ok, S::Error> {
        match value {
            Some(list) => serializer.serialize_some(list),
            None => serializer.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(deserializer: D) -> Result<Option<Vec<String>>, D::Error> {
        let list = match Option::<Endpoints>::deserialize(deserializer)? {
            None => return Ok(None),
            Some(Endpoints::One(text)) => text.split(',').map(|host| host.trim().to_owned()).collect(),
            Some(Endpoints::List(list)) => list.into_iter().map(|host| host.trim().to_owned()).collect::<Vec<_>>(),
        };
        if list.iter().any(String::is_empty) {
            return Err(serde::de::Error::custom("an empty endpoint: write host:port[,host:port…]"));
        }
        Ok(Some(list))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_errors_hide_source_lines_and_passwords() {
        let text = "TOML parse error at line 1, column 7\n  |\n1 | url = \"redis://:s3cr@t@h/0\n  |       ^\ninvalid\nfound string \"redis://:p@ss w@h/0\" for `url`";
        let redacted = redact_config_error(text);
        assert!(!redacted.contains("s3cr") && !redacted.contains("p@ss"), "{redacted}");
        assert!(redacted.contains("line 1, column 7") && redacted.contains("1 | (line not shown"), "{redacted}");
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact_url("redis://alice:hunter2@h:1/0"), "redis://alice:***@h:1/0");
        assert_eq!(redact_url("file:///tmp/x"), "file:///tmp/x");
        let config =
            Config { legacy_bridge: Some("rediss://:pw@h/0".to_owned()), ..Config::for_url("redis://:pw@h/0") };
        assert!(!format!("{config:?}").contains("pw@"), "{config:?}");
    }
}
