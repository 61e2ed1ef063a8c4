//! `lockman::connect`: every backend reachable by URL (Redis on a private
//! server), its options, where flags go during a rollout, and errors people
//! can act on.

use std::time::Duration;

use lockman::{AcquireOptions, Config, FlagOptions, LockError, LockState};
use lockman_testkit::redis_server::RedisServer;

fn config_error(result: Result<lockman::Backends, LockError>) -> String {
    match result {
        Ok(backends) => panic!("connected to {}", backends.chosen),
        Err(LockError::Config(message)) => message,
        Err(other) => panic!("expected a configuration error, got {other}"),
    }
}

/// Takes and releases a lock and sets, reads and clears a flag.
async fn round_trip(backends: &lockman::Backends) {
    let guard = backends.locks.acquire("inverter_read", AcquireOptions::new().purpose("poll")).await.expect("acquire");
    let LockState::Held(info) = backends.locks.state("inverter_read").await.expect("state") else {
        panic!("not held on {}", backends.chosen);
    };
    assert_eq!(info.purpose.as_deref(), Some("poll"));
    guard.release().await.expect("release");
    backends.status.set(".FCRunning1", FlagOptions::new().value("job\n15:00")).await.expect("set");
    let flag = backends.status.get(".FCRunning1").await.expect("get").expect("flag set");
    assert_eq!(flag.value.as_deref(), Some("job\n15:00"));
    assert!(backends.status.clear(".FCRunning1").await.expect("clear"));
}

#[tokio::test]
async fn every_backend_is_reachable_by_url() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().display();
    let redis = RedisServer::start();
    let mut urls = vec![
        ("memory://".to_owned(), "memory"),
        (format!("file://{root}/kernel"), "file"),
        (format!("file://{root}/lease?mode=lease&lease=10s"), "file-lease"),
        (format!("legacy-file://{root}/legacy?givtcp=1&stale_after=2m"), "legacy-file"),
    ];
    if let Some(server) = &redis {
        urls.push((format!("{}?prefix=app&lease=5s&response_timeout=1s", server.url()), "redis"));
    }
    for (url, name) in urls {
        let backends = lockman::connect(&url).await.unwrap_or_else(|e| panic!("{url}: {e}"));
        assert_eq!(backends.locks.name(), name, "{url}");
        assert!(backends.chosen.starts_with(url.split('?').next().unwrap_or_default()), "{}", backends.chosen);
        round_trip(&backends).await;
    }
}

#[tokio::test]
async fn query_options_reach_the_backend() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().display();
    let backends = lockman::connect(&format!("file://{root}?mode=lease&lease=40s")).await.expect("connect");
    assert_eq!(backends.locks.capabilities().default_lease, Some(Duration::from_secs(40)));

    // A legacy mapping puts the lock exactly where old daemons look for it.
    let url = format!("legacy-file://{root}/app?lock.cache=.regcache_lockfile_3&policy.cache=skip");
    let backends = lockman::connect(&url).await.expect("connect");
    let guard = backends.locks.acquire("cache", AcquireOptions::new()).await.expect("acquire");
    assert!(dir.path().join("app/.regcache_lockfile_3").is_file(), "the legacy file is not where old daemons look");
    guard.release().await.expect("release");

    if let Some(server) = RedisServer::start() {
        let backends = lockman::connect(&format!("{}?prefix=givtcp:lock", server.url())).await.expect("connect");
        let guard = backends.locks.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire");
        let keys = server.command(&["KEYS", "givtcp:lock:*"]).expect("KEYS");
        assert!(keys.contains("givtcp:lock:{inverter_read}:lock"), "prefix not used: {keys}");
        guard.release().await.expect("release");
    }
}

/// `dir_mode` and `file_mode` from the URL are applied exactly, whatever the
/// umask: a directory the users of one group share (issue 18, item 7).
#[cfg(unix)]
#[tokio::test]
async fn dir_mode_and_file_mode_come_from_the_url() {
    use std::os::unix::fs::PermissionsExt;
    let mode = |path: &std::path::Path| std::fs::metadata(path).expect("stat").permissions().mode() & 0o7777;
    let dir = tempfile::tempdir().expect("dir");
    for (scheme, sub, query) in
        [("file", "kernel", ""), ("file", "lease", "&mode=lease"), ("legacy-file", "legacy", "")]
    {
        let path = dir.path().join(sub);
        let url = format!("{scheme}://{}?dir_mode=2770&file_mode=0660{query}", path.display());
        let backends = lockman::connect(&url).await.expect("connect");
        assert_eq!(mode(&path), 0o2770, "{url}: dir_mode");
        let guard = backends.locks.acquire("job", AcquireOptions::new()).await.expect("acquire");
        backends.status.set("flag", FlagOptions::new().value("v")).await.expect("set");
        assert_eq!(mode(&path.join("flag")), 0o660, "{url}: flag file");
        for entry in std::fs::read_dir(&path).expect("read dir") {
            let entry = entry.expect("entry");
            if entry.file_type().expect("type").is_file() {
                assert_eq!(mode(&entry.path()), 0o660, "{url}: {:?}", entry.file_name());
            }
        }
        guard.release().await.expect("release");
    }
    let message = config_error(lockman::connect(&format!("file://{}/x?file_mode=rw", dir.path().display())).await);
    assert!(message.contains("file_mode") && message.contains("0660"), "{message}");
}

#[tokio::test]
async fn unknown_schemes_and_options_list_the_valid_ones() {
    let message = config_error(lockman::connect("rediz://x").await);
    for expected in ["rediz", "memory://", "file:///dir", "legacy-file:///dir", "redis://", "rediss://"] {
        assert!(message.contains(expected), "{message:?} does not mention {expected:?}");
    }
    let message = config_error(lockman::connect("file:///tmp/lockman-x?mdoe=lease").await);
    assert!(message.contains("mdoe") && message.contains("mode=lease"), "{message}");
    let message = config_error(lockman::connect("file:///tmp/lockman-x?mode=fast").await);
    assert!(message.contains("kernel or lease"), "{message}");
    let message = config_error(lockman::connect("redis://127.0.0.1:1/0?lease=soon").await);
    assert!(message.contains("lease") && message.contains("30s"), "{message}");
    let message = config_error(lockman::connect("legacy-file:///tmp/lockman-y?policy.cache=skip").await);
    assert!(message.contains("lock.cache"), "{message}");
    let message = config_error(lockman::connect("not a url").await);
    assert!(message.contains("memory://"), "{message}");
    let message = config_error(lockman::connect("file://relative").await);
    assert!(message.contains("absolute"), "{message}");
}

#[tokio::test]
async fn an_unusable_directory_says_which() {
    let err = lockman::connect("file:///proc/lockman-cannot-be-here").await.expect_err("connected under /proc");
    assert!(err.to_string().contains("/proc/lockman-cannot-be-here"), "{err}");
}

#[tokio::test]
async fn unreachable_redis_is_a_backend_error_in_time_without_the_password() {
    let started = std::time::Instant::now();
    let err = lockman::connect("redis://:hunter2@127.0.0.1:1/0?connect_timeout=300ms")
        .await
        .expect_err("connected to nothing");
    assert!(matches!(err, LockError::Backend { .. }), "{err}");
    let message = err.to_string();
    assert!(message.contains("127.0.0.1:1") && !message.contains("hunter2"), "{message}");
    assert!(started.elapsed() < Duration::from_secs(2), "took {:?}", started.elapsed());
}

#[tokio::test]
async fn during_a_rollout_flags_stay_where_old_daemons_read_them() {
    let dir = tempfile::tempdir().expect("dir");
    let root = dir.path().display();
    let mut config = Config::for_url(format!("file://{root}/new"));
    config.legacy_bridge = Some(format!("legacy-file://{root}/legacy?givtcp=1"));
    let backends = lockman::connect_with(&config).await.expect("connect");
    assert_eq!(backends.locks.name(), "file+legacy-file");
    backends.status.set(".FCRunning1", FlagOptions::new()).await.expect("set");
    assert!(dir.path().join("legacy/.FCRunning1").is_file(), "the flag is not in the legacy folder");

    // A bridged acquisition holds the legacy file too.
    let guard = backends.locks.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire");
    assert!(dir.path().join("legacy/.lockfile").is_file(), "the legacy lock file was not taken");
    guard.release().await.expect("release");
    assert!(!dir.path().join("legacy/.lockfile").exists(), "the legacy lock file was left behind");

    // status_url wins.
    config.status_url = Some("memory://".to_owned());
    let backends = lockman::connect_with(&config).await.expect("connect");
    assert!(backends.chosen.ends_with("flags: memory://"), "{}", backends.chosen);
}

/// Pieces of the passwords below that must never show (each also a
/// password's tail, which a split at the first `@` or `:` would leak).
const SECRETS: [&str; 6] = ["word1", "rd2", "word3", "word4", "word5", "rd6"];

fn assert_no_secret(text: &str) {
    for secret in SECRETS {
        assert!(!text.contains(secret), "{secret:?} shows in {text}");
    }
}

/// Passwords holding `@`, `:`, `%40` or `/`, in URLs that parse and URLs
/// that do not: no error (Display or Debug) and no `Debug` shows them.
#[tokio::test]
async fn passwords_with_at_colon_and_escapes_never_show_in_errors() {
    for url in [
        "redis://:p@ss@word1@127.0.0.1:1/0",
        "redis://alice:pa:ss:wo@rd2@127.0.0.1:1/0",
        "redis://:pa%40ss%3Aword3@127.0.0.1:1/0",
        "redis://:pa/ss@word4@127.0.0.1:1/0",
        "redis://alice:12/word5@127.0.0.1:1/0",
    ] {
        let unreachable = format!("{url}?connect_timeout=300ms");
        let unknown_option = format!("{url}?conect_timeout=300ms");
        for attempt in [unreachable, unknown_option] {
            let err = lockman::connect(&attempt).await.expect_err("connected to nothing");
            assert_no_secret(&err.to_string());
            assert_no_secret(&format!("{err:?}"));
            assert!(err.to_string().contains("127.0.0.1:1"), "the error does not say which server: {err}");
        }
        let mut config = Config::for_url(url);
        config.status_url = Some(url.to_owned());
        config.legacy_bridge = Some(url.to_owned());
        assert_no_secret(&format!("{config:?}"));
        assert_no_secret(&lockman::redact_url(url));
    }
}

/// Captures what is logged (at debug and above, on any thread: lockman's
/// background runtime included) while `f` runs.
///
/// One global subscriber for the whole test binary, writing to one buffer:
/// a scoped one (`with_default`) misses events whose callsites other test
/// threads register at the same moment (tracing caches each callsite's
/// interest globally), which made this capture come back empty at random.
/// Other tests' lines may be captured too; they must not hold the secret
/// either.
fn logged<T>(f: impl FnOnce() -> T) -> (T, String) {
    #[derive(Clone, Default)]
    struct Buffer(std::sync::Arc<parking_lot::Mutex<Vec<u8>>>);
    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }
    static BUFFER: std::sync::OnceLock<Buffer> = std::sync::OnceLock::new();
    let buffer = BUFFER.get_or_init(|| {
        let buffer = Buffer::default();
        let writer = buffer.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::DEBUG)
            .with_ansi(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::set_global_default(subscriber).expect("the only subscriber of this test binary");
        buffer
    });
    let from = buffer.0.lock().len();
    let value = f();
    let text = String::from_utf8_lossy(&buffer.0.lock()[from..]).into_owned();
    (value, text)
}

/// A password need not sit in the URL: a `password_file=` option, the
/// `redis.password_file` key or `LOCKMAN_REDIS_PASSWORD` (here set on the
/// `Config` it fills) supply it; a password with `@`, `:` and `%40` works
/// in the URL too; none of them shows in `chosen`, `Debug` or the logs; a
/// password file's errors name the file, never its contents.
#[test]
fn a_password_can_come_from_a_file_or_the_environment_and_never_shows() {
    const PASSWORD: &str = "p@ss:w%40rd6";
    let Some(server) = RedisServer::start() else { return };
    assert_eq!(server.command(&["CONFIG", "SET", "requirepass", PASSWORD]).as_deref(), Ok("OK"));
    let dir = tempfile::tempdir().expect("dir");
    let file = dir.path().join("redis-password");
    std::fs::write(&file, format!("{PASSWORD}\n")).expect("write the password file");
    let bare = server.url();
    let in_url = bare.replacen("redis://", "redis://:p%40ss%3Aw%2540rd6@", 1);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let mut from_key = Config::for_url(&bare);
    from_key.redis.password_file = Some(file.clone());
    let mut from_env = Config::for_url(&bare);
    from_env.redis.password = Some(PASSWORD.to_owned());
    let configs = [
        Config::for_url(&in_url),
        Config::for_url(format!("{bare}?password_file={}", file.display())),
        from_key,
        from_env,
    ];
    for config in configs {
        let (backends, logs) = logged(|| {
            runtime.block_on(async {
                let backends = lockman::connect_with(&config).await.unwrap_or_else(|e| panic!("{config:?}: {e}"));
                round_trip(&backends).await;
                backends
            })
        });
        assert!(logs.contains("lockman backends chosen"), "nothing logged: {logs}");
        for text in [logs, backends.chosen.clone(), format!("{backends:?}"), format!("{config:?}")] {
            assert_no_secret(&text);
        }
    }

    // Without a password the server refuses; a wrong one in a file is
    // refused without being shown.
    runtime.block_on(async {
        refused(&bare).await;
        std::fs::write(&file, "wrong-password-word1\n").expect("write");
        assert_no_secret(&refused(&format!("{bare}?password_file={}", file.display())).await);
        let missing = dir.path().join("missing");
        let message = config_error(lockman::connect(&format!("{bare}?password_file={}", missing.display())).await);
        assert!(message.contains("password_file") && message.contains(&missing.display().to_string()), "{message}");
        std::fs::write(&file, "\n").expect("write");
        let message = config_error(lockman::connect(&format!("{bare}?password_file={}", file.display())).await);
        assert!(message.contains("empty"), "{message}");
    });
}

/// The error of connecting to `url` and taking a lock (the server may
/// accept the connection and refuse only the first command).
async fn refused(url: &str) -> String {
    let err = match lockman::connect(url).await {
        Err(err) => err,
        Ok(backends) => backends.locks.try_acquire("r", AcquireOptions::new()).await.map(|_| ()).expect_err("granted"),
    };
    let text = format!("{err} {err:?}");
    assert!(
        ["NOAUTH", "WRONGPASS", "uthenticat"].iter().any(|word| text.contains(word)),
        "not refused for want of a password: {text}"
    );
    text
}

/// `rediss://` in a build without `redis-tls` names the feature to enable,
/// and does not claim the default features include it.
#[cfg(not(feature = "redis-tls"))]
#[tokio::test]
async fn rediss_without_tls_names_the_feature_to_enable() {
    let message = config_error(lockman::connect("rediss://127.0.0.1:1/0").await);
    assert!(message.contains("redis-tls"), "{message}");
    assert!(!message.contains("default features include it"), "{message}");
}

/// `memory://` opened twice in one process is one map: the two exclude each
/// other and see each other's flags; another name and a private map do not.
#[tokio::test]
async fn memory_urls_share_one_map_per_name_in_the_process() {
    // Resource and flag names of their own: other tests here use memory:// too.
    async fn holds_and_sees(first: &lockman::Backends, second: &lockman::Backends) -> (bool, bool) {
        let guard = first.locks.acquire("shared_map_check", AcquireOptions::new()).await.expect("acquire");
        let excluded =
            second.locks.try_acquire("shared_map_check", AcquireOptions::new()).await.expect("try").is_none();
        guard.release().await.expect("release");
        first.status.set(".SharedMapCheck", FlagOptions::new().value("set by first")).await.expect("set");
        let seen = second.status.is_set(".SharedMapCheck").await.expect("get");
        first.status.clear(".SharedMapCheck").await.expect("clear");
        (excluded, seen)
    }
    let one = lockman::connect("memory://").await.expect("connect");
    let two = lockman::connect("memory://").await.expect("connect");
    assert_eq!(holds_and_sees(&one, &two).await, (true, true), "two memory:// maps in one process");

    let a = lockman::connect("memory://shared-map-a").await.expect("connect");
    let a_again = lockman::connect("memory://shared-map-a/").await.expect("connect");
    let b = lockman::connect("memory://shared-map-b").await.expect("connect");
    assert_eq!(holds_and_sees(&a, &a_again).await, (true, true), "memory://NAME twice");
    assert_eq!(holds_and_sees(&a, &b).await, (false, false), "memory://a and memory://b share a map");
    assert_eq!(holds_and_sees(&one, &a).await, (false, false), "memory:// and memory://a share a map");

    let private = lockman::connect("memory://?private=1").await.expect("connect");
    let private_too = lockman::connect("memory://?private=1").await.expect("connect");
    assert_eq!(holds_and_sees(&private, &private_too).await, (false, false), "two private maps share");
    assert_eq!(holds_and_sees(&private, &one).await, (false, false), "a private map is shared");
    // A private map's flags are those of its own locks' map.
    private.status.set(".SharedMapCheck", FlagOptions::new()).await.expect("set");
    assert!(private.status.is_set(".SharedMapCheck").await.expect("get"));

    for (url, expected) in [
        ("memory://x?private=1", "asks for a private one"),
        ("memory://?private=maybe", "not a yes or no"),
        ("memory://x/y", "has a path"),
        ("memory://a%20b", "characters other than"),
        ("memory://?lease=1s", "valid options here: private=1"),
    ] {
        let message = config_error(lockman::connect(url).await);
        assert!(message.contains(expected), "{url}: {message}");
    }
}

/// `etcd://` in a build without `etcd` names the feature to enable.
#[cfg(not(feature = "etcd"))]
#[tokio::test]
async fn etcd_without_its_feature_names_the_feature_to_enable() {
    let message = config_error(lockman::connect("etcd://127.0.0.1:1,127.0.0.1:2/?prefix=app").await);
    assert!(message.contains("`etcd`"), "{message}");
    assert!(!message.contains("default features include it"), "{message}");
}

/// `etcd://` (with a second, dead member) connects to a private etcd: locks
/// exclude across two connects, flags are shared, the prefix is used.
#[cfg(feature = "etcd")]
#[tokio::test]
async fn etcd_urls_connect_with_their_options() {
    use lockman_testkit::etcd_server::EtcdServer;

    let Some(server) = tokio::task::spawn_blocking(EtcdServer::start).await.expect("start") else { return };
    let url = format!("etcd://127.0.0.1:{},127.0.0.1:1/?prefix=app&lease=5s&response_timeout=1s", server.port());
    let first = lockman::connect(&url).await.expect("connect");
    let second = lockman::connect(&url).await.expect("connect");
    assert_eq!(first.locks.name(), "etcd");
    assert_eq!(first.locks.capabilities().default_lease, Some(Duration::from_secs(5)));
    let guard = first.locks.acquire("job", AcquireOptions::new()).await.expect("acquire");
    assert!(second.locks.try_acquire("job", AcquireOptions::new()).await.expect("try").is_none());
    guard.release().await.expect("release");
    first.status.set(".FCRunning", FlagOptions::new()).await.expect("set");
    assert!(second.status.is_set(".FCRunning").await.expect("get"));
    let message = config_error(lockman::connect("etcd://127.0.0.1:1/?lease=200ms").await);
    assert!(message.contains("whole seconds"), "{message}");
}

/// The `[etcd]` section reaches the backend: `etcd://` alone takes the
/// configured endpoints, the configured prefix and timeouts apply, a URL's
/// own options win, and a configured user without a password is refused
/// naming where a password can come from (and not a password).
#[cfg(feature = "etcd")]
#[tokio::test]
async fn the_etcd_section_of_config_reaches_the_backend() {
    use lockman_testkit::etcd_server::EtcdServer;

    let Some(server) = tokio::task::spawn_blocking(EtcdServer::start).await.expect("start") else { return };
    let mut config = Config::for_url("etcd://");
    config.etcd.endpoints = Some(vec![format!("127.0.0.1:{}", server.port())]);
    config.etcd.prefix = Some("configured".to_owned());
    config.etcd.response_timeout = Some(Duration::from_secs(1));
    let configured = lockman::connect_with(&config).await.expect("connect with the configured endpoints");
    let guard = configured.locks.acquire("job", AcquireOptions::new()).await.expect("acquire");
    let same_prefix = lockman::connect(&format!("{}?prefix=configured", server.url())).await.expect("connect");
    let other_prefix = lockman::connect(&server.url()).await.expect("connect");
    assert!(matches!(same_prefix.locks.state("job").await.expect("state"), LockState::Held(_)));
    assert!(matches!(other_prefix.locks.state("job").await.expect("state"), LockState::Available));
    // The URL's prefix wins over the configured one.
    let mut overridden = config.clone();
    overridden.override_url(format!("{}?prefix=lockman", server.url()), "the test");
    let overridden = lockman::connect_with(&overridden).await.expect("connect");
    assert!(matches!(overridden.locks.state("job").await.expect("state"), LockState::Available));
    guard.release().await.expect("release");

    config.etcd.user = Some("givtcp".to_owned());
    let message = config_error(lockman::connect_with(&config).await);
    assert!(message.contains("givtcp") && message.contains("LOCKMAN_ETCD_PASSWORD"), "{message}");
    let message = config_error(lockman::connect("etcd://givtcp:hunter2@127.0.0.1:1").await);
    assert!(message.contains("password") && !message.contains("hunter2"), "{message}");
}

/// `etcds://` in a build without `etcd-tls` names the feature to enable.
#[cfg(all(feature = "etcd", not(feature = "etcd-tls")))]
#[tokio::test]
async fn etcds_without_tls_names_the_feature_to_enable() {
    let message = config_error(lockman::connect("etcds://127.0.0.1:1/?tls_ca=/nonexistent").await);
    assert!(message.contains("`etcd-tls`") && message.contains("not a default feature"), "{message}");
}
