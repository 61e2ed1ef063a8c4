//! Choosing a backend at runtime: [`connect`] a URL, or [`from_env`].
//!
//! | URL | backend | query options |
//! |---|---|---|
//! | `memory://`, `memory://NAME` | in-process (feature `memory`): one map of locks and flags per name in the process (`memory://` is the name `""`), so every `connect` of the same URL excludes the others | `private=1` (a map of its own, for tests that run in parallel in one process) |
//! | `file:///dir` | kernel-locked lock files (feature `file`) | `mode=lease` (lease files, for SMB/NFS), `lease=30s`, `dir_mode=0700`, `file_mode=0660`, `loss_check=1s`, `flag.NAME=FILE` |
//! | `legacy-file:///dir` | legacy lockfiles beside old daemons (feature `file`) | `givtcp=N` (GivTCP's names for inverter N), `lock.RESOURCE=FILE`, `policy.RESOURCE=skip\|wait`, `stale_after=5m`, `stale_after.RESOURCE=60s`, `dir_mode=0700`, `file_mode=0660`, `flag.NAME=FILE` |
//! | `redis://[user:pass@]host:port/db`, `rediss://…` | Redis (feature `redis`; `rediss` needs `redis-tls`) | `prefix=app`, `lease=30s`, `connect_timeout=2s`, `response_timeout=2s`, `tls_ca=/path/ca.pem` (trust this CA instead of the system's), `password_file=/path` (the password, for a URL without one; one trailing newline is ignored), `protocol=resp3` |
//!
//! Flags live beside the locks unless [`Config::status_url`] says otherwise
//! (for `file://` and `legacy-file://`, in the same directory).

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lockman_core::{AcquireOptions, BridgedLockManager, LockError, LockManager, StatusManager};

use lockman_core::redact_url;

use crate::config::{Config, parse_duration};

/// The URL schemes lockman knows, for error messages.
const SCHEMES: &str = "memory://, file:///dir, legacy-file:///dir, redis://host:port/db, rediss://host:port/db";

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
    let target = Target::parse(lock_url, &config.lock_url_origin())?;
    let opened = target.open(config).await?;
    let mut chosen = redact_url(lock_url);
    let mut locks = opened.locks;
    let mut legacy_status = None;
    if let Some(bridge_url) = config.bridge_url() {
        let legacy = Target::parse(bridge_url, &config.origin("legacy_bridge"))?;
        if !matches!(legacy, Target::LegacyFile { .. }) {
            tracing::warn!(bridge = %redact_url(bridge_url), "the legacy bridge is not a legacy-file:// URL");
        }
        let legacy = legacy.open(config).await?;
        locks = Arc::new(BridgedLockManager::new(locks, legacy.locks).with_defaults(manager_defaults(config)));
        legacy_status = Some((bridge_url, legacy.status));
        chosen = format!("{chosen} bridged with {}", redact_url(bridge_url));
    }
    let (status, status_url) = match (&config.status_url, legacy_status) {
        (Some(url), _) => {
            let target = Target::parse(url, &config.origin("status_url"))?;
            (target.open(config).await?.status, url.as_str())
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

/// A parsed backend URL.
enum Target {
    /// The process-wide map of this name, or a private map (`None`).
    Memory {
        name: Option<String>,
    },
    File {
        dir: std::path::PathBuf,
        lease_mode: bool,
        options: Options,
    },
    LegacyFile {
        dir: std::path::PathBuf,
        options: Options,
    },
    Redis {
        url: String,
        options: Options,
    },
}

/// One lock and one status manager.
struct Opened {
    locks: Arc<dyn LockManager>,
    status: Arc<dyn StatusManager>,
}

/// A URL's query options, each read at most once; what is left is an error.
struct Options {
    values: BTreeMap<String, String>,
    /// The URL (redacted) and where it came from, for messages.
    context: String,
    valid: &'static str,
}

impl Options {
    fn new(url: &url::Url, origin: &str, valid: &'static str) -> Self {
        let values = url.query_pairs().map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
        Options { values, context: format!("{} (from {origin})", redact_url(url.as_str())), valid }
    }

    fn take(&mut self, key: &str) -> Option<String> {
        self.values.remove(key)
    }

    /// Every `PREFIX.NAME=value`, as (NAME, value).
    #[cfg_attr(not(feature = "file"), allow(dead_code))]
    fn take_prefixed(&mut self, prefix: &str) -> Vec<(String, String)> {
        let keys: Vec<String> = self.values.keys().filter(|k| k.starts_with(prefix)).cloned().collect();
        keys.into_iter()
            .filter_map(|key| {
                let value = self.values.remove(&key)?;
                Some((key[prefix.len()..].to_owned(), value))
            })
            .collect()
    }

    #[cfg_attr(not(any(feature = "file", feature = "redis")), allow(dead_code))]
    fn duration(&mut self, key: &str) -> Result<Option<Duration>, LockError> {
        self.take(key).map(|text| parse_duration(&text).map_err(|e| self.bad(key, &e))).transpose()
    }

    fn bad(&self, key: &str, problem: &str) -> LockError {
        LockError::Config(format!("option `{key}` of {}: {problem}", self.context))
    }

    /// Refuses options nobody read (typos, options of another backend).
    fn finish(self) -> Result<(), LockError> {
        match self.values.keys().next() {
            None => Ok(()),
            Some(key) => Err(LockError::Config(format!(
                "unknown option `{key}` in {}; valid options here: {}",
                self.context, self.valid
            ))),
        }
    }
}

impl Target {
    fn parse(text: &str, origin: &str) -> Result<Target, LockError> {
        let url = url::Url::parse(text).map_err(|e| {
            LockError::Config(format!(
                "cannot read the backend URL {} from {origin}: {e}; valid forms: {SCHEMES}",
                redact_url(text)
            ))
        })?;
        match url.scheme() {
            "memory" => {
                let mut options = Options::new(&url, origin, "private=1");
                let private = match options.take("private").as_deref() {
                    None | Some("0" | "false" | "no") => false,
                    Some("" | "1" | "true" | "yes") => true,
                    Some(other) => {
                        return Err(options.bad("private", &format!("{other:?} is not a yes or no: write private=1")));
                    }
                };
                options.finish()?;
                let name = memory_name(&url, origin)?;
                if private && !name.is_empty() {
                    return Err(LockError::Config(format!(
                        "{} (from {origin}) names the shared map {name:?} and asks for a private one: write \
                         memory://{name} to share it, or memory://?private=1 for a map of its own",
                        redact_url(text)
                    )));
                }
                Ok(Target::Memory { name: (!private).then_some(name) })
            }
            scheme @ ("file" | "legacy-file") => {
                let dir = file_dir(&url, origin)?;
                if scheme == "file" {
                    let mut options =
                        Options::new(&url, origin, "mode=lease, lease, dir_mode, file_mode, loss_check, flag.NAME");
                    let lease_mode = match options.take("mode").as_deref() {
                        None | Some("kernel") => false,
                        Some("lease") => true,
                        Some(other) => {
                            return Err(options.bad("mode", &format!("{other:?} is not a mode: use kernel or lease")));
                        }
                    };
                    Ok(Target::File { dir, lease_mode, options })
                } else {
                    let options = Options::new(
                        &url,
                        origin,
                        "givtcp=N, lock.RESOURCE, policy.RESOURCE, stale_after, stale_after.RESOURCE, dir_mode, file_mode, flag.NAME",
                    );
                    Ok(Target::LegacyFile { dir, options })
                }
            }
            "redis" | "rediss" => {
                let options = Options::new(
                    &url,
                    origin,
                    "prefix, lease, connect_timeout, response_timeout, tls_ca, password_file, protocol",
                );
                Ok(Target::Redis { url: text.to_owned(), options })
            }
            other => Err(LockError::Config(format!(
                "unknown lock backend `{other}://` in {} (from {origin}); valid schemes: {SCHEMES}",
                redact_url(text)
            ))),
        }
    }

    async fn open(self, config: &Config) -> Result<Opened, LockError> {
        match self {
            Target::Memory { name } => open_memory(name, config),
            Target::File { dir, lease_mode, options } => open_file(dir, lease_mode, options, config),
            Target::LegacyFile { dir, options } => open_legacy(dir, options, config),
            Target::Redis { url, options } => open_redis(url, options, config).await,
        }
    }
}

/// The map name of `memory://NAME` (`""` for `memory://`).
fn memory_name(url: &url::Url, origin: &str) -> Result<String, LockError> {
    let bad = |problem: &str| {
        LockError::Config(format!(
            "{} (from {origin}) {problem}: write memory:// or memory://NAME (letters, digits, `-`, `_`, `.`)",
            redact_url(url.as_str())
        ))
    };
    if !url.username().is_empty() || url.password().is_some() || url.port().is_some() {
        return Err(bad("has a user, password or port, which a memory map has not"));
    }
    if !matches!(url.path(), "" | "/") {
        return Err(bad("has a path after the map name"));
    }
    let name = url.host_str().unwrap_or_default();
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')) {
        return Err(bad("has a map name with characters other than letters, digits, `-`, `_` and `.`"));
    }
    Ok(name.to_owned())
}

fn file_dir(url: &url::Url, origin: &str) -> Result<std::path::PathBuf, LockError> {
    let dir = url.to_file_path().ok().filter(|path| path.as_os_str().len() > 1);
    dir.ok_or_else(|| {
        LockError::Config(format!(
            "{} (from {origin}) does not name a directory: write {}:///absolute/path/to/dir",
            redact_url(url.as_str()),
            url.scheme()
        ))
    })
}

fn feature_missing(scheme: &str, feature: &str) -> LockError {
    // `redis-tls` is not a default feature (it compiles rustls and ring);
    // the others are.
    let default = if feature == "redis-tls" {
        "it is not a default feature"
    } else {
        "the default features include it, so this build turned them off"
    };
    LockError::Config(format!(
        "{scheme}:// needs lockman's `{feature}` cargo feature, which this build left out: enable it \
         (lockman = {{ features = [\"{feature}\"] }}; {default})"
    ))
}

#[cfg(feature = "memory")]
fn open_memory(name: Option<String>, config: &Config) -> Result<Opened, LockError> {
    use lockman_core::LockBackend;
    use lockman_memory::{MemoryBackend, MemoryStatusManager};

    let backend = match name {
        Some(name) => MemoryBackend::named(&name),
        None => MemoryBackend::new(),
    };
    let status = Arc::new(MemoryStatusManager::beside(&backend));
    Ok(Opened { locks: Arc::new(backend.into_manager().with_defaults(manager_defaults(config))), status })
}

#[cfg(not(feature = "memory"))]
fn open_memory(_: Option<String>, _: &Config) -> Result<Opened, LockError> {
    Err(feature_missing("memory", "memory"))
}

/// The flag directory's options: `flag.NAME=FILE` exact names.
#[cfg(feature = "file")]
fn flag_dir(
    dir: &std::path::Path,
    options: &mut Options,
    dir_mode: Option<u32>,
    file_mode: Option<u32>,
) -> lockman_file::FlagDirOptions {
    let mut flags = lockman_file::FlagDirOptions::new(dir);
    if let Some(mode) = dir_mode {
        flags = flags.dir_mode(mode);
    }
    if let Some(mode) = file_mode {
        flags = flags.file_mode(mode);
    }
    for (flag, file) in options.take_prefixed("flag.") {
        flags = flags.file_name(flag, file);
    }
    flags
}

#[cfg(feature = "file")]
fn dir_mode(options: &mut Options) -> Result<Option<u32>, LockError> {
    octal_mode(options, "dir_mode", "0700")
}

/// `file_mode=0660`: exact permissions for the files lockman creates.
#[cfg(feature = "file")]
fn file_mode(options: &mut Options) -> Result<Option<u32>, LockError> {
    octal_mode(options, "file_mode", "0660")
}

#[cfg(feature = "file")]
fn octal_mode(options: &mut Options, key: &str, example: &str) -> Result<Option<u32>, LockError> {
    options
        .take(key)
        .map(|text| {
            u32::from_str_radix(text.trim_start_matches("0o"), 8)
                .ok()
                .filter(|mode| *mode <= 0o7777)
                .ok_or_else(|| options.bad(key, &format!("{text:?} is not an octal mode like {example}")))
        })
        .transpose()
}

#[cfg(feature = "file")]
fn open_file(
    dir: std::path::PathBuf,
    lease_mode: bool,
    mut options: Options,
    config: &Config,
) -> Result<Opened, LockError> {
    use lockman_core::LockBackend;
    use lockman_file::{FileBackend, FileOptions, FileStatusManager, LeaseFileBackend};

    let mut file = FileOptions::new(&dir);
    let mode = dir_mode(&mut options)?;
    if let Some(mode) = mode {
        file = file.dir_mode(mode);
    }
    let files_mode = file_mode(&mut options)?;
    if let Some(mode) = files_mode {
        file = file.file_mode(mode);
    }
    let url_lease = options.duration("lease")?;
    if url_lease.is_some() && !lease_mode {
        // Kernel locks have no lease (they end with the process): accepting
        // the option would promise an expiry that never happens.
        return Err(options.bad(
            "lease",
            "kernel-locked files have no lease (the lock ends with the process); `lease` only applies to \
             mode=lease: add mode=lease for lease files (SMB/NFS), or remove `lease`",
        ));
    }
    if let Some(lease) = url_lease.or(config.lease) {
        file = file.default_lease(lease);
    }
    if let Some(interval) = options.duration("loss_check")? {
        file = file.loss_check_interval(interval);
    }
    let flags = flag_dir(&dir, &mut options, mode, files_mode);
    options.finish()?;
    let locks: Arc<dyn LockManager> = if lease_mode {
        Arc::new(LeaseFileBackend::open(file)?.into_manager().with_defaults(manager_defaults(config)))
    } else {
        Arc::new(FileBackend::open(file)?.into_manager().with_defaults(manager_defaults(config)))
    };
    Ok(Opened { locks, status: Arc::new(FileStatusManager::open(flags)?) })
}

#[cfg(feature = "file")]
fn open_legacy(dir: std::path::PathBuf, mut options: Options, config: &Config) -> Result<Opened, LockError> {
    use lockman_core::LockBackend;
    use lockman_file::{FileStatusManager, LegacyFileBackend, LegacyOptions, LegacyPolicy, LegacyResource};

    let mut legacy = match options.take("givtcp") {
        Some(n) => {
            let n = n.parse().map_err(|_| options.bad("givtcp", &format!("{n:?} is not an inverter number")))?;
            LegacyOptions::givtcp(&dir, n)
        }
        None => LegacyOptions::new(&dir),
    };
    let mode = dir_mode(&mut options)?;
    if let Some(mode) = mode {
        legacy = legacy.dir_mode(mode);
    }
    let files_mode = file_mode(&mut options)?;
    if let Some(mode) = files_mode {
        legacy = legacy.file_mode(mode);
    }
    if let Some(age) = options.duration("stale_after")? {
        legacy = legacy.stale_after(age);
    }
    let mut mappings: BTreeMap<String, LegacyResource> = BTreeMap::new();
    for (resource, file) in options.take_prefixed("lock.") {
        mappings.insert(resource, LegacyResource::new(file));
    }
    for (resource, text) in options.take_prefixed("stale_after.") {
        let age = parse_duration(&text).map_err(|e| options.bad(&format!("stale_after.{resource}"), &e))?;
        let mapping = mapping_for(&mut mappings, &resource, &options, "stale_after")?;
        *mapping = mapping.clone().stale_after(age);
    }
    for (resource, text) in options.take_prefixed("policy.") {
        let policy = match text.as_str() {
            "skip" => LegacyPolicy::SkipIfBusy,
            "wait" => LegacyPolicy::Wait,
            other => {
                return Err(options.bad(&format!("policy.{resource}"), &format!("{other:?} is not skip or wait")));
            }
        };
        let mapping = mapping_for(&mut mappings, &resource, &options, "policy")?;
        *mapping = mapping.clone().policy(policy);
    }
    for (resource, mapping) in mappings {
        legacy = legacy.resource(resource, mapping);
    }
    let flags = flag_dir(&dir, &mut options, mode, files_mode);
    options.finish()?;
    Ok(Opened {
        locks: Arc::new(LegacyFileBackend::open(legacy)?.into_manager().with_defaults(manager_defaults(config))),
        status: Arc::new(FileStatusManager::open(flags)?),
    })
}

/// The `lock.RESOURCE` mapping a per-resource option refers to.
#[cfg(feature = "file")]
fn mapping_for<'a>(
    mappings: &'a mut BTreeMap<String, lockman_file::LegacyResource>,
    resource: &str,
    options: &Options,
    option: &str,
) -> Result<&'a mut lockman_file::LegacyResource, LockError> {
    mappings.get_mut(resource).ok_or_else(|| {
        options.bad(
            &format!("{option}.{resource}"),
            &format!("there is no `lock.{resource}=FILE` to apply it to (name the legacy file first)"),
        )
    })
}

#[cfg(not(feature = "file"))]
fn open_file(_: std::path::PathBuf, _: bool, _: Options, _: &Config) -> Result<Opened, LockError> {
    Err(feature_missing("file", "file"))
}

#[cfg(not(feature = "file"))]
fn open_legacy(_: std::path::PathBuf, _: Options, _: &Config) -> Result<Opened, LockError> {
    Err(feature_missing("legacy-file", "file"))
}

#[cfg(feature = "redis")]
async fn open_redis(url: String, mut options: Options, config: &Config) -> Result<Opened, LockError> {
    use lockman_core::LockBackend;
    use lockman_redis::{RedisBackend, RedisOptions, RedisStatusManager};

    if url.starts_with("rediss:") && !cfg!(feature = "redis-tls") {
        return Err(feature_missing("rediss", "redis-tls"));
    }
    let mut redis = RedisOptions::new(strip_own_options(&url));
    if let Some(prefix) = options.take("prefix").or_else(|| config.redis.prefix.clone()) {
        redis = redis.prefix(prefix);
    }
    if let Some(lease) = options.duration("lease")?.or(config.lease) {
        redis = redis.default_lease(lease);
    }
    if let Some(timeout) = options.duration("connect_timeout")?.or(config.redis.connect_timeout) {
        redis = redis.connect_timeout(timeout);
    }
    if let Some(timeout) = options.duration("response_timeout")?.or(config.redis.response_timeout) {
        redis = redis.response_timeout(timeout);
    }
    if let Some(path) = options.take("tls_ca") {
        redis = with_tls_ca(redis, &path, &options)?;
    }
    // A password in the URL wins (the backend ignores this one then).
    let password = match (options.take("password_file"), &config.redis.password_file) {
        (Some(path), _) => {
            Some(read_password_file(std::path::Path::new(&path)).map_err(|e| options.bad("password_file", &e))?)
        }
        (None, Some(path)) => Some(read_password_file(path).map_err(|e| {
            LockError::Config(format!("`redis.password_file` (LOCKMAN_REDIS__PASSWORD_FILE or lockman.toml): {e}"))
        })?),
        (None, None) => config.redis.password.clone(),
    };
    if let Some(password) = password {
        redis = redis.password(password);
    }
    options.take("protocol"); // the redis crate reads it from the URL itself
    options.finish()?;
    let backend = RedisBackend::connect(redis).await?;
    let status = Arc::new(RedisStatusManager::new(&backend));
    Ok(Opened { locks: Arc::new(backend.into_manager().with_defaults(manager_defaults(config))), status })
}

/// The password in the file at `path`, without one trailing newline. The
/// error names the file and the problem, never the contents.
#[cfg(feature = "redis")]
fn read_password_file(path: &std::path::Path) -> Result<String, String> {
    use std::io::Read;

    // A password is short; anything longer is not a password file.
    const LIMIT: u64 = 64 * 1024;
    let shown = path.display();
    let mut bytes = Vec::new();
    std::fs::File::open(path)
        .and_then(|file| file.take(LIMIT + 1).read_to_end(&mut bytes))
        .map_err(|e| format!("cannot read the Redis password file {shown}: {e}"))?;
    if bytes.len() as u64 > LIMIT {
        return Err(format!("the Redis password file {shown} is larger than {LIMIT} bytes: is it the right file?"));
    }
    let mut password =
        String::from_utf8(bytes).map_err(|_| format!("the Redis password file {shown} is not UTF-8 text"))?;
    if password.ends_with('\n') {
        password.pop();
        if password.ends_with('\r') {
            password.pop();
        }
    }
    if password.is_empty() {
        return Err(format!("the Redis password file {shown} is empty: write the password in it"));
    }
    Ok(password)
}

/// Trusts the PEM CA certificates in the file at `path` for `rediss://`.
#[cfg(all(feature = "redis", feature = "redis-tls"))]
fn with_tls_ca(
    redis: lockman_redis::RedisOptions,
    path: &str,
    options: &Options,
) -> Result<lockman_redis::RedisOptions, LockError> {
    let pem = std::fs::read(path).map_err(|e| options.bad("tls_ca", &format!("cannot read {path}: {e}")))?;
    Ok(redis.tls_root_certificates(pem))
}

#[cfg(all(feature = "redis", not(feature = "redis-tls")))]
fn with_tls_ca(_: lockman_redis::RedisOptions, _: &str, _: &Options) -> Result<lockman_redis::RedisOptions, LockError> {
    Err(feature_missing("rediss", "redis-tls"))
}

/// The URL without lockman's own query options, for the redis crate.
#[cfg(feature = "redis")]
fn strip_own_options(text: &str) -> String {
    let Ok(mut url) = url::Url::parse(text) else { return text.to_owned() };
    let kept: Vec<(String, String)> =
        url.query_pairs().filter(|(key, _)| key == "protocol").map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    if kept.is_empty() {
        url.set_query(None);
    } else {
        url.query_pairs_mut().clear().extend_pairs(kept);
    }
    url.to_string()
}

#[cfg(not(feature = "redis"))]
async fn open_redis(_: String, _: Options, _: &Config) -> Result<Opened, LockError> {
    Err(feature_missing("redis", "redis"))
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
