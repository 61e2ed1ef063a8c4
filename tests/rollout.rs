//! A mixed fleet during a rollout, as real processes configured only by
//! their environment (`lockman::from_env`): one instance with the switch off
//! (`USE_NEW_LOCKS=false`: the legacy lockfiles, like an old daemon) beside
//! one switched on. With the legacy bridge they exclude each other — no lost
//! update; without it they do not, which is the bug of the earlier
//! refactor (LEGACY.md, protocol C) and what the migration guide warns about.

use std::io::{BufRead, BufReader, Write};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use lockman::AcquireOptions;

/// Set in a child: `<counter file>\t<iterations>`.
const CHILD_ENV: &str = "LOCKMAN_ROLLOUT_CHILD";
const ITERATIONS: u32 = 150;
/// How long each increment stays inside the critical section, so that two
/// processes that do not exclude each other are sure to overlap.
const INSIDE: Duration = Duration::from_millis(2);

/// The child: waits for "go" on stdin, then increments the counter
/// `iterations` times under the lock `regcache` (GivTCP's
/// `.regcache_lockfile_1` on the legacy side), counting the times it found
/// another process inside, and prints `overlaps=N`.
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let [counter, iterations] = spec.split('\t').collect::<Vec<_>>()[..] else { panic!("bad spec {spec}") };
    let counter = Path::new(counter);
    let inside = counter.with_extension("inside");
    let mut go = String::new();
    std::io::stdin().lock().read_line(&mut go).expect("wait for go");
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
    let overlaps = runtime.block_on(async {
        let backends = lockman::from_env().await.expect("from_env");
        eprintln!("child {} on {}", std::process::id(), backends.chosen);
        let mut overlaps = 0;
        for _ in 0..iterations.parse::<u32>().expect("iterations") {
            let guard = backends
                .locks
                .acquire("regcache", AcquireOptions::new().timeout(Duration::from_secs(30)).purpose("save cache"))
                .await
                .expect("acquire");
            if std::fs::OpenOptions::new().write(true).create_new(true).open(&inside).is_err() {
                overlaps += 1;
            }
            let value: u64 = std::fs::read_to_string(counter).ok().and_then(|s| s.trim().parse().ok()).unwrap_or(0);
            std::thread::sleep(INSIDE);
            std::fs::write(counter, (value + 1).to_string()).expect("write the counter");
            let _ = std::fs::remove_file(&inside);
            guard.release().await.expect("release");
        }
        overlaps
    });
    println!("overlaps={overlaps}");
    let _ = std::io::stdout().flush();
    std::process::exit(0);
}

/// Starts one instance with `env`, waiting for "go".
fn instance(counter: &Path, env: &[(&str, String)]) -> Child {
    let mut command = Command::new(std::env::current_exe().expect("test binary"));
    command
        .args(["--exact", "child", "--nocapture", "--test-threads=1"])
        .env(CHILD_ENV, format!("{}\t{ITERATIONS}", counter.display()))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    for var in ["LOCKMAN_URL", "LOCKMAN_LEGACY_URL", "LOCKMAN_LEGACY_BRIDGE", "USE_NEW_LOCKS", "LOCKMAN_CONFIG"] {
        command.env_remove(var);
    }
    for (key, value) in env {
        command.env(key, value);
    }
    command.spawn().expect("start an instance")
}

/// Runs an old-style instance (switch off) beside a switched-on one
/// (`switched_on` env), both at once; returns the counter and the overlaps seen.
fn run_fleet(switched_on: &[(&str, String)], dir: &Path) -> (u64, u64) {
    let counter = dir.join("counter");
    std::fs::write(&counter, "0").expect("counter");
    let legacy = format!("legacy-file://{}/app?givtcp=1", dir.display());
    let mut children = [
        instance(&counter, &[("USE_NEW_LOCKS", "false".to_owned()), ("LOCKMAN_LEGACY_URL", legacy)]),
        instance(&counter, switched_on),
    ];
    for child in &mut children {
        let stdin = child.stdin.as_mut().expect("stdin");
        writeln!(stdin, "go").expect("send go");
    }
    lockman_testkit::processes::wait_all_succeed(&mut children, Duration::from_secs(60));
    let mut overlaps = 0;
    for child in &mut children {
        let said: Vec<String> =
            BufReader::new(child.stdout.take().expect("stdout")).lines().map_while(Result::ok).collect();
        let count = said.iter().find_map(|line| line.rsplit_once("overlaps=")).and_then(|(_, n)| n.parse::<u64>().ok());
        overlaps += count.unwrap_or_else(|| panic!("the instance printed no overlaps= line: {said:?}"));
    }
    let total = std::fs::read_to_string(&counter).expect("counter").trim().parse().expect("a number");
    (total, overlaps)
}

#[test]
fn switched_on_with_the_bridge_excludes_an_old_instance() {
    let dir = tempfile::tempdir().expect("dir");
    let bridge = format!("legacy-file://{}/app?givtcp=1", dir.path().display());
    let on = [
        ("USE_NEW_LOCKS", "true".to_owned()),
        ("LOCKMAN_URL", format!("file://{}/new", dir.path().display())),
        ("LOCKMAN_LEGACY_BRIDGE", bridge),
    ];
    let (total, overlaps) = run_fleet(&on, dir.path());
    assert_eq!((total, overlaps), (u64::from(2 * ITERATIONS), 0), "lost updates or overlaps with the bridge");
}

/// The control: the same pair without the bridge shares nothing, so the
/// instances overlap — this is why a rollout needs the bridge.
#[test]
fn switched_on_without_the_bridge_overlaps_an_old_instance() {
    let dir = tempfile::tempdir().expect("dir");
    let on = [("USE_NEW_LOCKS", "true".to_owned()), ("LOCKMAN_URL", format!("file://{}/new", dir.path().display()))];
    let (total, overlaps) = run_fleet(&on, dir.path());
    assert!(overlaps > 0, "no overlap without the bridge (counter {total}): the control does not test anything");
    assert!(total < u64::from(2 * ITERATIONS), "no lost update without the bridge");
}
