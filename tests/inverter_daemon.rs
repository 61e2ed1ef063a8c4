//! Runs `examples/inverter_daemon` (built by `cargo test` with the other
//! examples) for about 2 s on every backend — as 3 processes on one bus
//! where the backend crosses processes — and checks its summary: no two bus
//! transactions overlapped. A control run with locking switched off must
//! show overlaps, proving the detector sees them.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use lockman_testkit::redis_server::RedisServer;

/// The example binary, next to this test's own `deps` directory.
fn daemon_binary() -> PathBuf {
    let exe = std::env::current_exe().expect("test binary");
    let debug = exe.parent().and_then(|deps| deps.parent()).expect("target directory");
    let binary = debug.join("examples").join(format!("inverter_daemon{}", std::env::consts::EXE_SUFFIX));
    assert!(binary.is_file(), "{} is missing: build it with `cargo build --example inverter_daemon`", binary.display());
    binary
}

/// The summary's `key=value` fields.
struct Summary(String);

impl Summary {
    fn get(&self, key: &str) -> u64 {
        let prefix = format!("{key}=");
        self.0
            .split(' ')
            .find_map(|field| field.strip_prefix(&prefix))
            .and_then(|value| value.parse().ok())
            .unwrap_or_else(|| panic!("no {key}= in {:?}", self.0))
    }
}

/// Runs the daemon with `url` (None: the default, memory) and `args`; its summary.
fn run_daemon(url: Option<&str>, args: &[&str]) -> Summary {
    let mut command = Command::new(daemon_binary());
    command.args(["--duration", "2s"]).args(args).stdout(Stdio::piped()).stderr(Stdio::piped());
    for var in ["LOCKMAN_URL", "LOCKMAN_LEGACY_URL", "LOCKMAN_LEGACY_BRIDGE", "USE_NEW_LOCKS", "LOCKMAN_CONFIG"] {
        command.env_remove(var);
    }
    if let Some(url) = url {
        command.env("LOCKMAN_URL", url);
    }
    let output = wait_bounded(command.spawn().expect("start the daemon"), Duration::from_secs(60));
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "daemon failed ({}):\n{stdout}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    let summary = stdout.lines().find(|line| line.starts_with("summary:")).unwrap_or_else(|| panic!("{stdout}"));
    Summary(summary.to_owned())
}

/// The child's output, killing it if it runs past `limit`.
fn wait_bounded(child: std::process::Child, limit: Duration) -> std::process::Output {
    let pid = child.id();
    let (done_tx, done_rx) = std::sync::mpsc::channel();
    let waiter = std::thread::spawn(move || {
        let output = child.wait_with_output();
        let _ = done_tx.send(());
        output
    });
    if done_rx.recv_timeout(limit).is_err() {
        let _ = Command::new("kill").args(["-9", &pid.to_string()]).status();
        panic!("the daemon ran past {limit:?}");
    }
    waiter.join().expect("waiter").expect("daemon output")
}

fn assert_serialized(summary: &Summary) {
    assert_eq!(summary.get("overlaps"), 0, "bus transactions overlapped: {}", summary.0);
    assert_eq!(summary.get("lost"), 0, "locks were lost: {}", summary.0);
    assert!(summary.get("reads") > 0 && summary.get("writes") > 0, "the daemon did nothing: {}", summary.0);
    // No lock was lost, so no poll's fencing token can have been overtaken.
    assert_eq!(summary.get("stale_refused"), 0, "register cache writes were refused: {}", summary.0);
}

/// Every poll saved the register cache through the fenced file (backends
/// whose tokens increase per grant; legacy lockfiles have none).
/// Status readers read the register cache together (shared holds), never
/// beside the poller writing it (the writer overlaps are in `overlaps`).
fn assert_readers_shared(summary: &Summary) {
    assert!(summary.0.contains("cache_readers=shared"), "{}", summary.0);
    assert!(summary.get("status_reads") > 0, "no status reads: {}", summary.0);
    assert!(summary.get("readers_together") > 0, "shared readers never overlapped: {}", summary.0);
}

fn assert_cache_fenced(summary: &Summary) {
    assert_eq!(summary.get("cache_writes"), summary.get("reads"), "not every poll saved the cache: {}", summary.0);
}

#[test]
fn memory_backend_by_default() {
    let summary = run_daemon(None, &[]);
    assert!(summary.0.contains("backend=memory"), "{}", summary.0);
    assert_serialized(&summary);
    assert_cache_fenced(&summary);
    assert_readers_shared(&summary);
}

#[test]
fn file_backend_across_three_processes() {
    let dir = tempfile::tempdir().expect("dir");
    let summary = run_daemon(Some(&format!("file://{}", dir.path().display())), &["--processes", "3"]);
    assert_eq!(summary.get("processes"), 3);
    assert_serialized(&summary);
    assert_cache_fenced(&summary);
    assert_readers_shared(&summary);
}

#[test]
fn legacy_file_backend_across_three_processes() {
    let dir = tempfile::tempdir().expect("dir");
    let url = format!("legacy-file://{}?givtcp=1", dir.path().display());
    let summary = run_daemon(Some(&url), &["--processes", "3"]);
    assert_serialized(&summary);
    // No shared holds on legacy lockfiles: the readers take turns.
    assert!(summary.0.contains("cache_readers=exclusive"), "{}", summary.0);
    assert!(summary.get("status_reads") > 0, "no status reads: {}", summary.0);
    assert_eq!(summary.get("readers_together"), 0, "exclusive readers overlapped: {}", summary.0);
}

#[test]
fn redis_backend_across_three_processes() {
    let Some(server) = RedisServer::start() else { return };
    let summary = run_daemon(Some(&server.url()), &["--processes", "3"]);
    assert_serialized(&summary);
    assert_cache_fenced(&summary);
    assert_readers_shared(&summary);
}

/// The control: without locking, three processes on one bus collide.
#[test]
fn without_locking_the_bus_sees_overlaps() {
    let dir = tempfile::tempdir().expect("dir");
    let summary = run_daemon(Some(&format!("file://{}", dir.path().display())), &["--processes", "3", "--no-lock"]);
    assert!(summary.get("overlaps") > 0, "the detector saw no overlap without locking: {}", summary.0);
}

/// On etcd (`LOCKMAN_URL=etcd://…`), three daemon processes on one bus.
#[cfg(feature = "etcd")]
#[test]
fn etcd_backend_across_three_processes() {
    let Some(server) = lockman_testkit::etcd_server::EtcdServer::start() else { return };
    let summary = run_daemon(Some(&server.url()), &["--processes", "3"]);
    assert!(summary.0.contains("backend=etcd"), "{}", summary.0);
    assert_serialized(&summary);
    assert_cache_fenced(&summary);
    assert_readers_shared(&summary);
}
