//! Choosing a backend at runtime: [`connect`] a URL, or [`from_env`].
//!
//! | URL | backend | query options |
//! |---|---|---|
//! | `memory://`, `memory://NAME` | in-process (feature `memory`): one map of locks and flags per name in the process (`memory://` is the name `""`), so every `connect` of the same URL excludes the others | `private=1` (a map of its own, for tests that run in parallel in one process) |
//! | `file:///dir` | kernel-locked lock files (feature `file`) | `mode=lease` (lease files, for SMB/NFS), `lease=30s`, `dir_mode=0700`, `file_mode=0660`, `loss_check=1s`, `flag.NAME=FILE` |
//! | `legacy-file:///dir` | legacy lockfiles beside old daemons (feature `file`) | `givtcp=N` (GivTCP's names for inverter N), `lock.RESOURCE=FILE`, `policy.RESOURCE=skip\|wait`, `stale_after=5m`, `stale_after.RESOURCE=60s`, `dir_mode=0700`, `file_mode=0660`, `flag.NAME=FILE` |
//! | `redis://[user:pass@]host:port/db`, `rediss://…` | Redis (feature `redis`; `rediss` needs `redis-tls`) | `prefix=app`, `lease=30s`, `connect_timeout=2s`, `response_timeout=2s`, `tls_ca=/path/ca.pem` (trust this CA instead of the system's), `password_file=/path` (the password, for a URL without one; one trailing newline is ignored), `protocol=resp3` |
//! | `etcd://[user@]host:port[,host:port…]`, `etcds://…` | etcd (feature `etcd`, not default; `etcds` needs `etcd-tls`) | `prefix=lockman`, `lease=30s` (whole seconds, at least 1s), `connect_timeout=2s`, `response_timeout=5s`, `password_env=VARIABLE` or `password_file=/path` (the user's password; never in the URL itself), `tls_ca=/path/ca.pem`, `tls_cert=/path/client.pem`, `tls_key=/path/client-key.pem` (etcds) |
//!
//! Flags live beside the locks unless [`Config::status_url`] says otherwise
//! (for `file://` and `legacy-file://`, in the same directory).
//!
//! Each backend crate reads its own URL and options (`MemoryBackend::from_url`,
//! `FileOptions::from_url`, `LegacyOptions::from_url`,
//! `RedisOptions::from_url`, `EtcdOptions::from_url`), from one table of its keys that also lists
//! them in the "valid options here" error. This module maps a scheme to its
//! backend, fills in [`Config`]'s defaults (which a URL option overrides),
//! and composes the legacy bridge and the flags.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lockman_core::{AcquireOptions, BridgedLockManager, LockError, LockManager, StatusManager, redact_url};

use crate::config::Config;

/// Every URL scheme lockman knows: the scheme, the cargo feature that
/// compiles its backend, and its form in error messages.
const SCHEMES: [(&str, &str, &str); 7] = [
    ("memory", "memory", "memory://"),
    ("file", "file", "file:///dir"),
    ("legacy-file", "file", "legacy-file:///dir"),
    ("redis", "redis", "redis://host:port/db"),
    ("rediss", "redis-tls", "rediss://host:port/db"),
    ("etcd", "etcd", "etcd://host:port[,host:port…]"),
    ("etcds", "etcd-tls", "etcds://host:port[,host:port…]"),
];

/// The lock manager and status manager a configuration selected.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), lockman::LockError> {
/// let backends = lockman::connect("memory://").await?;
/// let guard = backends.locks.acquire("inverter_read", backends.acquire_options()).await?;
/// println!("running on {}", backends.chosen);
/// guard.release().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
#[non_exhaustive]
pub struct Backends {
    /// The lock manager (a [`BridgedLockManager`] when a legacy bridge applies).
    pub locks: Arc<dyn LockManager>,
    /// The flags.
    pub status: Arc<dyn StatusManager>,
    /// What was chosen, for logs and banners, with passwords redacted:
    /// `redis://127.0.0.1:6379/0 bridged with legacy-file:///app/GivTCP_1; flags: legacy-file:///app/GivTCP_1`.
    pub chosen: String,
    default_wait: Option<Duration>,
}

impl Backends {
    /// Acquisition options with the configured default wait
    /// (`LOCKMAN_DEFAULT_WAIT`; wait forever if unset). The managers apply
    /// that wait themselves to acquisitions that leave it unset (`lock()`,
    /// `AcquireOptions::new()`), so this is only needed to pass it on
    /// explicitly.
    pub fn acquire_options(&self) -> AcquireOptions {
        match self.default_wait {
            Some(wait) => AcquireOptions::new().timeout(wait),
            None => AcquireOptions::new(),
        }
    }
}

impl fmt::Debug for Backends {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Backends").field("chosen", &self.chosen).field("default_wait", &self.default_wait).finish()
    }
}

/// Connects to the backend `url` names, with default settings otherwise.
///
/// # Errors
///
/// [`LockError::Config`] for an unknown scheme (listing the valid ones), a
/// scheme whose cargo feature is not compiled in, or a bad option;
/// [`LockError::Backend`] if the directory or server cannot be used.
pub async fn connect(url: &str) -> Result<Backends, LockError> {
    connect_with(&Config::for_url(url)).await
}

/// Loads [`Config`] (defaults, `lockman.toml`, environment) and connects.
///
/// # Errors
///
/// As [`Config::load`] and [`connect_with`].
pub async fn from_env() -> Result<Backends, LockError> {
    connect_with(&Config::load()?).await
}

/// Connects to the backends `config` selects: the rollout switch picks the
/// lock URL, a legacy bridge wraps it, and flags go where
/// [`Config::status_url`] says.
///
/// # Errors
///
/// As [`connect`].
pub async fn connect_with(config: &Config) -> Result<Backends, LockError> {
    let lock_url = config.lock_url()?;
    let origin = config.lock_url_origin();
    let opened = open(lock_url, &origin, config).await?;
    let mut chosen = redact_url(lock_url);
    let mut locks = opened.locks;
    let mut legacy_status = None;
    if let Some(bridge_url) = config.bridge_url() {
        let origin = config.origin("legacy_bridge");
        let legacy = parse(bridge_url, &origin)?;
        if legacy.scheme() != "legacy-file" {
            tracing::warn!(bridge = %redact_url(bridge_url), "the legacy bridge is not a legacy-file:// URL");
        }
        let legacy = open(bridge_url, &origin, config).await?;
        locks = Arc::new(BridgedLockManager::new(locks, legacy.locks).with_defaults(manager_defaults(config)));
        legacy_status = Some((bridge_url, legacy.status));
        chosen = format!("{chosen} bridged with {}", redact_url(bridge_url));
    }
    let (status, status_url) = match (&config.status_url, legacy_status) {
        (Some(url), _) => {
            let origin = config.origin("status_url");
            (open(url, &origin, config).await?.status, url.as_str())
        }
        // During a rollout, flags stay where old daemons read them.
        (None, Some((url, status))) => (status, url),
        (None, None) => (opened.status, lock_url),
    };
    chosen = format!("{chosen}; flags: {}", redact_url(status_url));
    tracing::info!(backend = %chosen, "lockman backends chosen");
    Ok(Backends { locks, status, chosen, default_wait: config.default_wait })
}

/// The defaults every manager applies where a caller left an option unset:
/// the configured wait. (The configured lease is each backend's default
/// lease already.)
fn manager_defaults(config: &Config) -> AcquireOptions {
    match config.default_wait {
        Some(wait) => AcquireOptions::new().timeout(wait),
        None => AcquireOptions::new(),
    }
}

/// One lock and one status manager.
struct Opened {
    locks: Arc<dyn LockManager>,
    status: Arc<dyn StatusManager>,
}

/// Reads `text` as a URL; the error lists the forms lockman knows.
fn parse(text: &str, origin: &str) -> Result<url::Url, LockError> {
    // `etcd://a:2379,b:2379` is no URL to `url::Url` (a comma in the port):
    // the scheme is read from its first host, the etcd crate reads the rest.
    let first_host;
    let etcd = text.strip_prefix("etcd://").map(|rest| ("etcd", rest));
    let parsed = match etcd.or_else(|| text.strip_prefix("etcds://").map(|rest| ("etcds", rest))) {
        Some((scheme, rest)) => {
            let end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
            let host = rest[..end].split(',').next().unwrap_or_default();
            first_host = format!("{scheme}://{host}{}", &rest[end..]);
            &first_host
        }
        None => text,
    };
    url::Url::parse(parsed).map_err(|e| {
        LockError::Config(format!(
            "cannot read the backend URL {} from {origin}: {e}; valid forms: {}",
            redact_url(text),
            forms()
        ))
    })
}

/// Opens the backend `url`'s scheme names: the table from scheme to backend.
/// Each backend reads its own options; `origin` says where `url` came from.
#[cfg_attr(not(any(feature = "memory", feature = "file", feature = "redis")), allow(unused_variables))]
async fn open(text: &str, origin: &str, config: &Config) -> Result<Opened, LockError> {
    let url = &parse(text, origin)?;
    match url.scheme() {
        #[cfg(feature = "memory")]
        "memory" => open_memory(url, origin, config),
        #[cfg(feature = "file")]
        "file" => open_file(url, origin, config),
        #[cfg(feature = "file")]
        "legacy-file" => open_legacy(url, origin, config),
        #[cfg(feature = "redis")]
        "redis" | "rediss" => open_redis(url, origin, config).await,
        #[cfg(feature = "etcd")]
        "etcd" | "etcds" => open_etcd(text, origin, config).await,
        other => Err(match SCHEMES.iter().find(|(scheme, ..)| *scheme == other) {
            Some((scheme, feature, _)) => feature_missing(scheme, feature),
            None => LockError::Config(format!(
                "unknown lock backend `{other}://` in {} (from {origin}); valid schemes: {}",
                redact_url(url.as_str()),
                forms()
            )),
        }),
    }
}

/// The URL forms lockman knows, for error messages.
fn forms() -> String {
    SCHEMES.iter().map(|(_, _, form)| *form).collect::<Vec<_>>().join(", ")
}

fn feature_missing(scheme: &str, feature: &str) -> LockError {
    // `redis-tls` (rustls and ring), `etcd` (tonic) and `etcd-tls` are not
    // default features; the others are.
    let default = if matches!(feature, "redis-tls" | "etcd" | "etcd-tls") {
        "it is not a default feature"
    } else {
        "the default features include it, so this build turned them off"
    };
    LockError::Config(format!(
        "{scheme}:// needs lockman's `{feature}` cargo feature, which this build left out: enable it \
         (lockman = {{ features = [\"{feature}\"] }}; {default})"
    ))
}

/// `backend` as a manager applying the configured defaults.
#[cfg(any(feature = "memory", feature = "file", feature = "redis", feature = "etcd"))]
fn manager<B: lockman_core::LockBackend>(backend: B, config: &Config) -> Arc<dyn LockManager> {
    Arc::new(backend.into_manager().with_defaults(manager_defaults(config)))
}

#[cfg(feature = "memory")]
fn open_memory(url: &url::Url, origin: &str, config: &Config) -> Result<Opened, LockError> {
    let backend = lockman_memory::MemoryBackend::from_url(url, origin)?;
    let status = Arc::new(lockman_memory::MemoryStatusManager::beside(&backend));
    Ok(Opened { locks: manager(backend, config), status })
}

#[cfg(feature = "file")]
fn open_file(url: &url::Url, origin: &str, config: &Config) -> Result<Opened, LockError> {
    use lockman_file::{FileBackend, FileOptions, FileStatusManager, LeaseFileBackend};

    let file = FileOptions::from_url(url, origin, config.lease)?;
    let locks = if file.lease_mode {
        manager(LeaseFileBackend::open(file.options)?, config)
    } else {
        manager(FileBackend::open(file.options)?, config)
    };
    Ok(Opened { locks, status: Arc::new(FileStatusManager::open(file.flags)?) })
}

#[cfg(feature = "file")]
fn open_legacy(url: &url::Url, origin: &str, config: &Config) -> Result<Opened, LockError> {
    use lockman_file::{FileStatusManager, LegacyFileBackend, LegacyOptions};

    let legacy = LegacyOptions::from_url(url, origin)?;
    let locks = manager(LegacyFileBackend::open(legacy.options)?, config);
    Ok(Opened { locks, status: Arc::new(FileStatusManager::open(legacy.flags)?) })
}

#[cfg(feature = "redis")]
async fn open_redis(url: &url::Url, origin: &str, config: &Config) -> Result<Opened, LockError> {
    use lockman_redis::{RedisBackend, RedisOptions, RedisStatusManager, RedisUrlDefaults};

    if url.scheme() == "rediss" && !cfg!(feature = "redis-tls") {
        return Err(feature_missing("rediss", "redis-tls"));
    }
    let mut defaults = RedisUrlDefaults::default();
    defaults.prefix.clone_from(&config.redis.prefix);
    defaults.lease = config.lease;
    defaults.connect_timeout = config.redis.connect_timeout;
    defaults.response_timeout = config.redis.response_timeout;
    defaults.password_file = config
        .redis
        .password_file
        .clone()
        .map(|path| (path, "`redis.password_file` (LOCKMAN_REDIS__PASSWORD_FILE or lockman.toml)".to_owned()));
    defaults.password.clone_from(&config.redis.password);
    let backend = RedisBackend::connect(RedisOptions::from_url(url, origin, defaults)?).await?;
    let status = Arc::new(RedisStatusManager::new(&backend));
    Ok(Opened { locks: manager(backend, config), status })
}

#[cfg(feature = "etcd")]
async fn open_etcd(text: &str, origin: &str, config: &Config) -> Result<Opened, LockError> {
    use lockman_etcd::{EtcdBackend, EtcdOptions, EtcdStatusManager, EtcdUrlDefaults};

    if text.starts_with("etcds://") && !cfg!(feature = "etcd-tls") {
        return Err(feature_missing("etcds", "etcd-tls"));
    }
    let etcd = &config.etcd;
    let mut defaults = EtcdUrlDefaults::default();
    defaults.lease = config.lease;
    defaults.endpoints.clone_from(&etcd.endpoints);
    defaults.prefix.clone_from(&etcd.prefix);
    defaults.connect_timeout = etcd.connect_timeout;
    defaults.response_timeout = etcd.response_timeout;
    defaults.user.clone_from(&etcd.user);
    defaults.password_file = etcd
        .password_file
        .clone()
        .map(|path| (path, "`etcd.password_file` (LOCKMAN_ETCD__PASSWORD_FILE or lockman.toml)".to_owned()));
    defaults.password.clone_from(&etcd.password);
    defaults.tls_ca.clone_from(&etcd.tls_ca);
    defaults.tls_cert.clone_from(&etcd.tls_cert);
    defaults.tls_key.clone_from(&etcd.tls_key);
    let backend = EtcdBackend::connect(EtcdOptions::from_url(text, origin, defaults)?).await?;
    let status = Arc::new(EtcdStatusManager::new(&backend));
    Ok(Opened { locks: manager(backend, config), status })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Whatever features this build has, the message for a missing feature
    /// names the one to enable and says whether it is a default.
    #[test]
    fn a_missing_feature_is_named_and_tls_is_not_called_a_default() {
        let LockError::Config(tls) = feature_missing("rediss", "redis-tls") else { panic!("not a config error") };
        assert!(tls.contains("`redis-tls`") && tls.contains("not a default feature"), "{tls}");
        assert!(!tls.contains("default features include it"), "{tls}");
        let LockError::Config(file) = feature_missing("file", "file") else { panic!("not a config error") };
        assert!(file.contains("default features include it"), "{file}");
    }
}
