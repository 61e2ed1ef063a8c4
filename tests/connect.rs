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
