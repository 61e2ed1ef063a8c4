//! `etcd://[user@]host:port[,host:port…]/?options` (and `etcds://`, TLS)
//! URLs: the endpoints, and lockman's options in the query, read from one
//! table that also lists them in errors.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use lockman_core::url_options::{ConfigKey, QueryOption, UrlOption, UrlQuery, read_secret_file};
use lockman_core::{LockError, redact_url};

use crate::EtcdOptions;

/// The query options of an `etcd://` or `etcds://` URL.
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
    /// `password_env=VAR`: the user's password is in this environment
    /// variable ([`EtcdOptions::user`]).
    PasswordEnv,
    /// `password_file=/path`: the user's password is in this file (one
    /// trailing newline is ignored).
    PasswordFile,
    /// `tls_ca=/path/ca.pem`: for `etcds://`, trust the CA certificates in
    /// this PEM file (the `tls` feature).
    TlsCa,
    /// `tls_cert=/path/client.pem`: for `etcds://`, present this client
    /// certificate (with `tls_key`), for etcd's `--client-cert-auth`.
    TlsCert,
    /// `tls_key=/path/client-key.pem`: the private key of `tls_cert`.
    TlsKey,
}

impl ConfigKey for EtcdConfigKey {
    const OPTIONS: &'static [UrlOption<Self>] = &[
        UrlOption::new(EtcdConfigKey::Prefix, "prefix", "prefix=NAME"),
        UrlOption::new(EtcdConfigKey::Lease, "lease", "lease=DURATION"),
        UrlOption::new(EtcdConfigKey::ConnectTimeout, "connect_timeout", "connect_timeout=DURATION"),
        UrlOption::new(EtcdConfigKey::ResponseTimeout, "response_timeout", "response_timeout=DURATION"),
        UrlOption::new(EtcdConfigKey::PasswordEnv, "password_env", "password_env=VARIABLE"),
        UrlOption::new(EtcdConfigKey::PasswordFile, "password_file", "password_file=FILE"),
        UrlOption::new(EtcdConfigKey::TlsCa, "tls_ca", "tls_ca=FILE"),
        UrlOption::new(EtcdConfigKey::TlsCert, "tls_cert", "tls_cert=FILE"),
        UrlOption::new(EtcdConfigKey::TlsKey, "tls_key", "tls_key=FILE"),
    ];
}

impl FromStr for EtcdConfigKey {
    type Err = LockError;

    fn from_str(text: &str) -> Result<Self, LockError> {
        Self::parse(text)
    }
}

/// Settings configured outside the URL (a configuration file, the
/// environment), used where the URL sets none: the URL wins.
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct EtcdUrlDefaults {
    /// For a URL without hosts (`etcd://` or `etcds://` alone):
    /// `host:port` of each member.
    pub endpoints: Option<Vec<String>>,
    /// For a URL without `prefix=`.
    pub prefix: Option<String>,
    /// For a URL without `lease=`.
    pub lease: Option<Duration>,
    /// For a URL without `connect_timeout=`.
    pub connect_timeout: Option<Duration>,
    /// For a URL without `response_timeout=`.
    pub response_timeout: Option<Duration>,
    /// For a URL without `user@`.
    pub user: Option<String>,
    /// For a URL without `password_env=` or `password_file=`: a file
    /// holding the password, and where it was configured (named in errors).
    /// Read only if used.
    pub password_file: Option<(PathBuf, String)>,
    /// For a URL without `password_env=` or `password_file=` when
    /// `password_file` is unset too.
    pub password: Option<String>,
    /// For an `etcds://` URL without `tls_ca=`.
    pub tls_ca: Option<PathBuf>,
    /// For an `etcds://` URL without `tls_cert=`.
    pub tls_cert: Option<PathBuf>,
    /// For an `etcds://` URL without `tls_key=`.
    pub tls_key: Option<PathBuf>,
}

impl std::fmt::Debug for EtcdUrlDefaults {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdUrlDefaults")
            .field("endpoints", &self.endpoints)
            .field("prefix", &self.prefix)
            .field("lease", &self.lease)
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

/// The form of an etcd URL, for errors.
const FORM: &str = "etcd://[user@]host:port[,host:port…]/?prefix=NAME&lease=DURATION (etcds:// for TLS)";

impl EtcdOptions {
    /// Reads `etcd://[user@]host:port[,host:port…][/]?options`, or
    /// `etcds://…` for TLS (see [`EtcdConfigKey`]): `prefix=NAME`,
    /// `lease=DURATION`, `connect_timeout=DURATION`,
    /// `response_timeout=DURATION`, `password_env=VARIABLE`,
    /// `password_file=FILE`, and for `etcds://` `tls_ca=FILE`,
    /// `tls_cert=FILE`, `tls_key=FILE`. Several members are separated by
    /// commas (which `url::Url` cannot parse, so this takes the text).
    /// `defaults` apply where the URL sets nothing; `origin` says where the
    /// URL came from, for errors.
    ///
    /// A password is never written in the URL (it would show in process
    /// lists, shell history and logs): a user's password comes from
    /// `password_env=`, `password_file=`, or the `defaults` (lockman's
    /// `LOCKMAN_ETCD_PASSWORD`, `etcd.password_file`).
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
    /// `etcd://` or `etcds://`, no or an empty host, a password in the URL,
    /// a user without a password (or a password without a user), a path,
    /// an unknown option (listing the valid ones), a bad value, an
    /// unreadable file, `etcds://` without a CA or without the `tls`
    /// feature, or TLS options on a plain `etcd://` URL.
    pub fn from_url(text: &str, origin: &str, defaults: EtcdUrlDefaults) -> Result<EtcdOptions, LockError> {
        let bad = |problem: &str| {
            LockError::Config(format!("the etcd URL {} (from {origin}) {problem}: write {FORM}", redact_url(text)))
        };
        let (rest, tls) = match (text.strip_prefix("etcd://"), text.strip_prefix("etcds://")) {
            (Some(rest), _) => (rest, false),
            (None, Some(rest)) => (rest, true),
            (None, None) => return Err(bad("does not start with etcd:// or etcds://")),
        };
        let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
        let (authority, tail) = rest.split_at(end);
        let (user, authority) = match authority.rsplit_once('@') {
            Some((userinfo, _)) if userinfo.contains(':') => {
                return Err(bad(
                    "has a password in it; keep it out of the URL (process lists, logs) and give it with \
                     password_env=VARIABLE, password_file=FILE or LOCKMAN_ETCD_PASSWORD",
                ));
            }
            Some(("", _)) => return Err(bad("has an empty user name before `@`")),
            Some((userinfo, hosts)) => (Some(percent_decoded(userinfo)), hosts),
            None => (None, authority),
        };
        let configured;
        let hosts: Vec<&str> = match (authority, &defaults.endpoints) {
            ("", Some(endpoints)) if !endpoints.is_empty() => {
                configured = endpoints.clone();
                configured.iter().map(String::as_str).collect()
            }
            ("", _) => return Err(bad("has no host (and no etcd.endpoints are configured)")),
            (authority, _) => authority.split(',').collect(),
        };
        if hosts.iter().any(|host| host.is_empty()) {
            return Err(bad("has an empty host"));
        }
        // The query is read by the shared parser, through a one-host URL.
        let single = url::Url::parse(&format!("etcd://h{tail}")).map_err(|e| bad(&e.to_string()))?;
        if !matches!(single.path(), "" | "/") {
            return Err(bad("has a path; the key prefix is the `prefix` option"));
        }
        let scheme = if tls { "https" } else { "http" };
        let mut endpoints = Vec::with_capacity(hosts.len());
        for host in &hosts {
            let host = host.trim();
            let host = host.strip_prefix("http://").or_else(|| host.strip_prefix("https://")).unwrap_or(host);
            let parsed = url::Url::parse(&format!("http://{host}")).map_err(|e| bad(&format!("host {host:?}: {e}")))?;
            let name = parsed.host_str().unwrap_or_default();
            let port = parsed.port().unwrap_or(2379);
            endpoints.push(format!("{scheme}://{name}:{port}"));
        }
        let query = UrlQuery::<EtcdConfigKey>::new(text, origin, single.query_pairs());
        let EtcdUrlDefaults { mut prefix, mut lease, mut connect_timeout, mut response_timeout, .. } = defaults;
        let mut password_option = None;
        let (mut tls_ca, mut tls_cert, mut tls_key) = (None, None, None);
        for option in query.options() {
            match option.key {
                EtcdConfigKey::Prefix => prefix = Some(option.value.to_owned()),
                EtcdConfigKey::Lease => lease = Some(query.duration(&option)?),
                EtcdConfigKey::ConnectTimeout => connect_timeout = Some(query.duration(&option)?),
                EtcdConfigKey::ResponseTimeout => response_timeout = Some(query.duration(&option)?),
                EtcdConfigKey::PasswordEnv | EtcdConfigKey::PasswordFile => {
                    if password_option.is_some() {
                        return Err(query.bad(option.text, "give the password one way: password_env or password_file"));
                    }
                    password_option = Some(option);
                }
                EtcdConfigKey::TlsCa => tls_ca = Some(option),
                EtcdConfigKey::TlsCert => tls_cert = Some(option),
                EtcdConfigKey::TlsKey => tls_key = Some(option),
            }
        }
        query.finish()?;
        let mut options = EtcdOptions::new(endpoints);
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
        if let Some(timeout) = connect_timeout {
            options = options.connect_timeout(timeout);
        }
        if let Some(timeout) = response_timeout {
            options = options.response_timeout(timeout);
        }
        let user = user.or(defaults.user);
        if user.is_none() && password_option.is_some() {
            return Err(bad("gives a password but no user; write etcd://USER@host:port"));
        }
        // The password: the URL's option, else the configured file, else the configured password.
        let password = match (&password_option, defaults.password_file) {
            (Some(option), _) => Some(url_password(&query, option)?),
            (None, Some((path, origin))) => Some(
                read_secret_file(&path, "the etcd password file")
                    .map_err(|e| LockError::Config(format!("{origin}: {e}")))?,
            ),
            (None, None) => defaults.password,
        };
        match (user, password) {
            (Some(user), Some(password)) => options = options.user(user, password),
            (Some(user), None) => {
                return Err(bad(&format!(
                    "names the user {user:?} but no password was given; give it with password_env=VARIABLE, \
                     password_file=FILE, LOCKMAN_ETCD_PASSWORD or etcd.password_file"
                )));
            }
            (None, Some(_)) => {
                return Err(bad(
                    "has no user, but a password is configured (LOCKMAN_ETCD_PASSWORD or etcd.password_file); \
                     write etcd://USER@host:port or set etcd.user",
                ));
            }
            (None, None) => {}
        }
        let any_tls_option = [&tls_ca, &tls_cert, &tls_key].iter().any(|option| option.is_some());
        check_tls_wanted(tls, any_tls_option, &bad)?;
        let file = |option: Option<QueryOption<'_, EtcdConfigKey>>, default: Option<PathBuf>, what: &str| {
            read_tls_file(&query, option, default, what)
        };
        let tls_files = (
            // Configured TLS files are for etcds:// URLs only.
            file(tls_ca, defaults.tls_ca.filter(|_| tls), "CA certificates")?,
            file(tls_cert, defaults.tls_cert.filter(|_| tls), "client certificate")?,
            file(tls_key, defaults.tls_key.filter(|_| tls), "client key")?,
        );
        with_tls(options, tls, tls_files, &bad)
    }
}

/// A user name as URLs write it, `%40` and the like decoded.
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        if bytes[i] == b'%'
            && let Some(byte) = hex.and_then(|h| u8::from_str_radix(h, 16).ok())
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| text.to_owned())
}

/// The password `option` (`password_env` or `password_file`) points at.
fn url_password(query: &UrlQuery<EtcdConfigKey>, option: &QueryOption<'_, EtcdConfigKey>) -> Result<String, LockError> {
    match option.key {
        EtcdConfigKey::PasswordEnv => match std::env::var(option.value) {
            Ok(password) if !password.is_empty() => Ok(password),
            Ok(_) => Err(query.bad(option.text, format!("the environment variable {} is empty", option.value))),
            Err(_) => Err(query.bad(option.text, format!("the environment variable {} is not set", option.value))),
        },
        _ => read_secret_file(Path::new(option.value), "the etcd password file").map_err(|e| query.bad(option.text, e)),
    }
}

/// The contents of a TLS file named by the URL's `option` or else configured.
fn read_tls_file(
    query: &UrlQuery<EtcdConfigKey>,
    option: Option<QueryOption<'_, EtcdConfigKey>>,
    default: Option<PathBuf>,
    what: &str,
) -> Result<Option<(Vec<u8>, String)>, LockError> {
    match (option, default) {
        (Some(option), _) => std::fs::read(option.value)
            .map(|pem| Some((pem, option.text.to_owned())))
            .map_err(|e| query.bad(option.text, format!("cannot read the {what} {}: {e}", option.value))),
        (None, Some(path)) => std::fs::read(&path)
            .map(|pem| Some((pem, "etcd.".to_owned() + what)))
            .map_err(|e| LockError::Config(format!("cannot read the configured etcd {what} {}: {e}", path.display()))),
        (None, None) => Ok(None),
    }
}

/// The TLS files read for a URL: CA, client certificate, client key (each
/// with the option that named it).
type TlsFiles = (Option<(Vec<u8>, String)>, Option<(Vec<u8>, String)>, Option<(Vec<u8>, String)>);

/// Refuses TLS options on a plain `etcd://` URL, and (without the `tls`
/// feature) any TLS, before any file is read.
fn check_tls_wanted(tls: bool, any_tls_option: bool, bad: &dyn Fn(&str) -> LockError) -> Result<(), LockError> {
    if !cfg!(feature = "tls") && (tls || any_tls_option) {
        return Err(bad(
            "asks for TLS (etcds://, tls_ca, tls_cert or tls_key), which this build left out: enable lockman's \
             `etcd-tls` cargo feature (lockman-etcd's `tls`)",
        ));
    }
    if !tls && any_tls_option {
        return Err(bad("has TLS options but is etcd:// (plain); write etcds:// for TLS"));
    }
    Ok(())
}

#[cfg(feature = "tls")]
fn with_tls(
    options: EtcdOptions,
    tls: bool,
    (ca, cert, key): TlsFiles,
    bad: &dyn Fn(&str) -> LockError,
) -> Result<EtcdOptions, LockError> {
    if !tls {
        // Configured TLS files (etcd.tls_ca…) are for etcds:// URLs only.
        return Ok(options);
    }
    let Some((ca, _)) = ca else {
        return Err(bad("is etcds:// but names no CA to trust: add tls_ca=FILE (or set etcd.tls_ca)"));
    };
    let identity = match (cert, key) {
        (Some((cert, _)), Some((key, _))) => Some((cert, key)),
        (None, None) => None,
        _ => return Err(bad("gives only one of tls_cert and tls_key; a client certificate needs both")),
    };
    Ok(options.tls(crate::EtcdTls { ca_pem: Some(ca), identity, ..Default::default() }))
}

/// Without the `tls` feature, [`check_tls_wanted`] refused TLS already.
#[cfg(not(feature = "tls"))]
fn with_tls(
    options: EtcdOptions,
    _tls: bool,
    _files: TlsFiles,
    _bad: &dyn Fn(&str) -> LockError,
) -> Result<EtcdOptions, LockError> {
    Ok(options)
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
        let mut defaults = EtcdUrlDefaults {
            prefix: Some("configured".to_owned()),
            lease: Some(Duration::from_secs(9)),
            response_timeout: Some(Duration::from_secs(3)),
            ..Default::default()
        };
        let options = EtcdOptions::from_url("etcd://a:1,b,c:3?lease=5s", "t", defaults.clone()).expect("options");
        assert_eq!(options.endpoints(), ["http://a:1", "http://b:2379", "http://c:3"]);
        assert_eq!(options.prefix, "configured");
        assert_eq!(options.default_lease, Duration::from_secs(5));
        assert_eq!(options.response_timeout, Duration::from_secs(3));
        let options = EtcdOptions::from_url("etcd://a:1?response_timeout=1s", "t", defaults.clone()).expect("options");
        assert_eq!(options.default_lease, Duration::from_secs(9));
        assert_eq!(options.response_timeout, Duration::from_secs(1), "the URL wins");
        // Endpoints from the configuration when the URL names none.
        defaults.endpoints = Some(vec!["10.0.0.1:2379".to_owned(), "http://10.0.0.2".to_owned()]);
        let options = EtcdOptions::from_url("etcd://?prefix=x", "t", defaults.clone()).expect("options");
        assert_eq!(options.endpoints(), ["http://10.0.0.1:2379", "http://10.0.0.2:2379"]);
        let options = EtcdOptions::from_url("etcd://z:5", "t", defaults).expect("options");
        assert_eq!(options.endpoints(), ["http://z:5"], "the URL's hosts win");
        for (url, problem) in [
            ("etcd://", "no host"),
            ("etcd://a:1,,b:2", "empty host"),
            ("etcd://u:pw@a:1", "password in it"),
            ("etcd://u@a:1", "no password"),
            ("etcd://@a:1", "empty user"),
            ("etcd://a:1/app", "path"),
            ("etcd://a:1?lease=soon", "`lease`"),
            ("etcd://a:1?lease=200ms", "whole seconds"),
            ("etcd://a:1?password_env=LOCKMAN_ETCD_TEST_UNSET_VARIABLE", "no user"),
            ("etcd://u@a:1?password_env=LOCKMAN_ETCD_TEST_UNSET_VARIABLE", "not set"),
            ("etcd://u@a:1?password_file=/nonexistent/pw", "`password_file`"),
            ("redis://a:1", "etcd://"),
        ] {
            let message = error(url);
            assert!(message.contains(problem), "{url}: {message}");
            assert!(!message.contains(":pw@"), "{message}");
        }
    }

    #[test]
    fn a_user_s_password_comes_from_the_environment_or_a_file_never_the_url() {
        let dir = std::env::temp_dir().join(format!("lockman-etcd-url-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let file = dir.join("password");
        std::fs::write(&file, "from-file\n").expect("write");
        // PATH is set in every test environment: a stand-in for a password variable.
        let path = std::env::var("PATH").expect("PATH");
        let options = EtcdOptions::from_url("etcd://app%40x@a:1?password_env=PATH", "t", EtcdUrlDefaults::default())
            .expect("options");
        assert_eq!(options.user, Some(("app@x".to_owned(), path)));
        let url = format!("etcd://app@a:1?password_file={}", file.display());
        let options = EtcdOptions::from_url(&url, "t", EtcdUrlDefaults::default()).expect("options");
        assert_eq!(options.user, Some(("app".to_owned(), "from-file".to_owned())));
        let debug = format!("{options:?}");
        assert!(!debug.contains("from-file") && debug.contains("app"), "{debug}");
        // Configured: the user and a password (the environment's), or a password file, which wins.
        let mut defaults = EtcdUrlDefaults {
            user: Some("configured".to_owned()),
            password: Some("from-env".to_owned()),
            ..Default::default()
        };
        let options = EtcdOptions::from_url("etcd://a:1", "t", defaults.clone()).expect("options");
        assert_eq!(options.user, Some(("configured".to_owned(), "from-env".to_owned())));
        assert!(!format!("{defaults:?}").contains("from-env"));
        defaults.password_file = Some((file.clone(), "`etcd.password_file`".to_owned()));
        let options = EtcdOptions::from_url("etcd://other@a:1", "t", defaults.clone()).expect("options");
        assert_eq!(options.user, Some(("other".to_owned(), "from-file".to_owned())), "the URL's user wins");
        defaults.password_file = Some((dir.join("missing"), "`etcd.password_file`".to_owned()));
        let message = EtcdOptions::from_url("etcd://a:1", "t", defaults).expect_err("accepted").to_string();
        assert!(message.contains("`etcd.password_file`") && message.contains("missing"), "{message}");
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[cfg(not(feature = "tls"))]
    #[test]
    fn tls_without_the_feature_names_it() {
        for url in ["etcds://a:1?tls_ca=/x", "etcd://a:1?tls_ca=/dev/null"] {
            let message = error(url);
            assert!(message.contains("`etcd-tls`"), "{url}: {message}");
        }
    }

    #[cfg(feature = "tls")]
    #[test]
    fn tls_needs_etcds_a_ca_and_both_halves_of_a_client_certificate() {
        for (url, problem) in [
            ("etcds://a:1", "no CA"),
            ("etcd://a:1?tls_ca=/dev/null", "write etcds://"),
            ("etcds://a:1?tls_ca=/dev/null&tls_cert=/dev/null", "both"),
            ("etcds://a:1?tls_ca=/nonexistent/ca.pem", "`tls_ca`"),
        ] {
            let message = error(url);
            assert!(message.contains(problem), "{url}: {message}");
        }
        let options = EtcdOptions::from_url("etcds://a:1,b:2?tls_ca=/dev/null", "t", EtcdUrlDefaults::default())
            .expect("options");
        assert_eq!(options.endpoints(), ["https://a:1", "https://b:2"]);
        assert!(options.tls.is_some());
    }
}
