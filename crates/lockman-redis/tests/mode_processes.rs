//! Shared and permit grants across real OS processes on one private
//! `redis-server`: readers really overlap, writers overlap nobody, a
//! semaphore of 3 never has more than 3 holders across 8 processes (and does
//! reach 3), and a reader or waiter that is killed or paused does not pin
//! the resource.
//!
//! The child is this test binary re-run with `LOCKMAN_MODE_CHILD` set to a
//! tab-separated spec (see [`child`]). Children that log append one line
//! `<start µs> <end µs> <token>` per hold to their own file, the times read
//! from `CLOCK_MONOTONIC` (one clock for every process on the host) just
//! after the grant and just before the release, so two logged intervals
//! that overlap mean two grants that overlapped. The test sweeps the logs.
#![cfg(unix)]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

use lockman_core::{AcquireOptions, LockBackend, LockManager, LockMode};
use lockman_redis::{RedisBackend, RedisOptions};
use lockman_testkit::redis_server::RedisServer;

const CHILD_ENV: &str = "LOCKMAN_MODE_CHILD";
/// Bound on steps that should take moments.
const BOUND: Duration = Duration::from_secs(10);

fn mode_options(mode: &str) -> AcquireOptions {
    let options = AcquireOptions::new().timeout(Duration::from_secs(30)).purpose("mode process test");
    match mode {
        "x" => options,
        "s" => options.shared(),
        permits => options.permits(permits.trim_start_matches('p').parse().expect("permit count")),
    }
}

async fn manager(url: &str, lease: Duration) -> Arc<dyn LockManager> {
    let options = RedisOptions::new(url).default_lease(lease);
    Arc::new(RedisBackend::connect(options).await.expect("connect").into_manager())
}

/// Microseconds on `CLOCK_MONOTONIC`, which every process on the host shares.
fn monotonic_us() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec).expect("time") * 1_000_000 + u64::try_from(now.tv_nsec).expect("time") / 1_000
}

/// The child side. Specs (tab-separated):
/// * `intervals url resource mode hold_ms cycles log`: connects, says
///   `ready`, waits for a line on stdin, then `cycles` times acquires,
///   holds `hold_ms` and logs the interval;
/// * `hold url resource mode lease_ms`: acquires (lease renewed by the
///   watchdog), says `held <token>`, says `lost <reason>` if the grant is
///   lost, and releases when stdin closes;
/// * `wait url resource mode`: says `waiting` and waits for the resource forever.
#[test]
fn child() {
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let fields: Vec<&str> = spec.split('\t').collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    runtime.block_on(async {
        match fields[..] {
            ["intervals", url, resource, mode, hold_ms, cycles, log] => {
                let locks = manager(url, Duration::from_secs(5)).await;
                say("ready");
                let mut go = String::new();
                std::io::stdin().read_line(&mut go).expect("wait for go");
                let hold = Duration::from_millis(hold_ms.parse().expect("hold_ms"));
                let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log");
                for _ in 0..cycles.parse::<u32>().expect("cycles") {
                    let guard = locks.acquire(resource, mode_options(mode)).await.expect("child acquire");
                    let start = monotonic_us();
                    tokio::time::sleep(hold).await;
                    let end = monotonic_us();
                    writeln!(file, "{start} {end} {}", guard.fencing_token()).expect("write the log");
                    guard.release().await.expect("child release");
                }
            }
            ["hold", url, resource, mode, lease_ms] => {
                let locks = manager(url, Duration::from_millis(lease_ms.parse().expect("lease_ms"))).await;
                let guard = locks.acquire(resource, mode_options(mode)).await.expect("child acquire");
                let lost = guard.lost();
                tokio::spawn(async move { say(&format!("lost {}", lost.await)) });
                say(&format!("held {}", guard.fencing_token()));
                tokio::task::spawn_blocking(|| std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new()))
                    .await
                    .expect("join")
                    .expect("stdin");
                let _ = guard.release().await; // may have been lost: the parent checks what it said
            }
            ["wait", url, resource, mode] => {
                let locks = manager(url, Duration::from_secs(5)).await;
                say("waiting");
                let _ = locks.acquire(resource, mode_options(mode).wait_forever()).await;
            }
            _ => panic!("bad spec {spec}"),
        }
    });
    std::process::exit(0);
}

fn say(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// A child process and the lines it says. Killed when dropped.
struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(spec: &str) -> Proc {
        let mut child = Command::new(std::env::current_exe().expect("exe"))
            .args(["--exact", "child", "--nocapture", "--test-threads=1"])
            .env(CHILD_ENV, spec)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn a child process");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Proc { child, stdin, lines }
    }

    /// The rest of the first line (after `word `) that contains `word`,
    /// waiting at most `limit` (libtest may print on the same line first).
    fn said(&self, word: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    if let Some(at) = line.find(word) {
                        return line[at + word.len()..].trim().to_owned();
                    }
                }
                Err(_) => panic!("child {} never said {word:?} within {limit:?}", self.child.id()),
            }
        }
    }

    fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("tell the child");
    }

    fn pid(&self) -> rustix::process::Pid {
        rustix::process::Pid::from_raw(i32::try_from(self.child.id()).expect("pid")).expect("pid")
    }

    fn signal(&self, signal: rustix::process::Signal) {
        rustix::process::kill_process(self.pid(), signal).expect("signal the child");
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One logged hold.
#[derive(Clone, Copy, Debug)]
struct Interval {
    start: u64,
    end: u64,
    token: u64,
    /// Which process (and so which mode, for the mixed test) logged it.
    process: usize,
}

/// Runs `modes.len()` logging children on `resource` (child i in `modes[i]`),
/// all released at once, and returns their intervals.
fn run_logging(server: &RedisServer, resource: &str, modes: &[&str], hold_ms: u64, cycles: u32) -> Vec<Interval> {
    let dir = tempfile_dir(resource);
    let mut procs: Vec<Proc> = modes
        .iter()
        .enumerate()
        .map(|(i, mode)| {
            let log = dir.join(format!("{i}.log"));
            Proc::spawn(&format!(
                "intervals\t{}\t{resource}\t{mode}\t{hold_ms}\t{cycles}\t{}",
                server.url(),
                log.display()
            ))
        })
        .collect();
    for proc in &procs {
        proc.said("ready", BOUND);
    }
    for proc in &mut procs {
        proc.tell("go");
    }
    finish_all(&mut procs, Duration::from_secs(60));
    let mut intervals = Vec::new();
    for i in 0..modes.len() {
        let text = std::fs::read_to_string(dir.join(format!("{i}.log"))).expect("read a log");
        for line in text.lines() {
            let v: Vec<u64> = line.split(' ').map(|n| n.parse().expect("a logged number")).collect();
            intervals.push(Interval { start: v[0], end: v[1], token: v[2], process: i });
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(intervals.len(), modes.len() * cycles as usize, "holds missing from the logs");
    intervals
}

/// Closes every child's stdin and waits (at most `limit` in all) for each
/// to exit successfully; a failing child fails the test (and every child is
/// killed when `procs` is dropped).
fn finish_all(procs: &mut [Proc], limit: Duration) {
    let deadline = Instant::now() + limit;
    for proc in procs.iter_mut() {
        drop(proc.stdin.take());
    }
    for proc in procs.iter_mut() {
        loop {
            match proc.child.try_wait().expect("wait for a child") {
                Some(status) => {
                    assert!(status.success(), "child {} failed: {status}", proc.child.id());
                    break;
                }
                None if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                None => panic!("child {} ran past {limit:?}", proc.child.id()),
            }
        }
    }
}

fn tempfile_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lockman-redis-modes-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the log directory");
    dir
}

/// The most intervals that overlap at any instant (an end at the same
/// microsecond as a start does not overlap it).
fn max_overlap(intervals: &[Interval]) -> usize {
    let mut events: Vec<(u64, i32)> = intervals.iter().flat_map(|i| [(i.start, 1), (i.end, -1)]).collect();
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in events {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

#[test]
fn readers_in_four_processes_hold_together() {
    let Some(server) = RedisServer::start() else { return };
    let intervals = run_logging(&server, "shared", &["s"; 4], 300, 1);
    let span =
        intervals.iter().map(|i| i.end).max().unwrap_or(0) - intervals.iter().map(|i| i.start).min().unwrap_or(0);
    let overlap = max_overlap(&intervals);
    eprintln!("4 readers × 300 ms: all done within {} ms, at most {overlap} at once", span / 1000);
    assert!(span < 900_000, "4 shared holds of 300 ms took {} ms: they did not overlap", span / 1000);
    assert!(overlap >= 3, "at most {overlap} of 4 readers held at once");
}

#[test]
fn writers_in_processes_overlap_nobody() {
    let Some(server) = RedisServer::start() else { return };
    let modes = ["x", "s", "x", "s", "s", "x"];
    let intervals = run_logging(&server, "rw", &modes, 15, 8);
    let is_writer = |i: &Interval| modes[i.process] == "x";
    for a in &intervals {
        for b in &intervals {
            let (first, second) = if a.start <= b.start { (a, b) } else { (b, a) };
            if std::ptr::eq(a, b) || !(is_writer(a) || is_writer(b)) {
                continue;
            }
            assert!(first.end <= second.start, "a writer overlapped another holder: {a:?} and {b:?}");
            assert!(first.token < second.token, "tokens out of order across a writer: {first:?} then {second:?}");
        }
    }
    let readers: Vec<Interval> = intervals.iter().copied().filter(|i| !is_writer(i)).collect();
    eprintln!("3 writers + 3 readers × 8 holds: readers overlapped up to {} at once", max_overlap(&readers));
}

#[test]
fn a_semaphore_of_three_in_eight_processes_never_exceeds_three() {
    let Some(server) = RedisServer::start() else { return };
    let intervals = run_logging(&server, "pool", &["p3"; 8], 40, 5);
    let overlap = max_overlap(&intervals);
    eprintln!("8 processes × 5 permits of 3 × 40 ms: at most {overlap} at once");
    assert!(overlap <= 3, "{overlap} holders of a 3-permit semaphore at once");
    assert_eq!(overlap, 3, "the semaphore never had all 3 permits taken");
    let mut tokens: Vec<u64> = intervals.iter().map(|i| i.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), intervals.len(), "two grants with one fencing token");
}

/// A reader killed with SIGKILL does not keep a writer out past its lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_reader_does_not_pin_the_resource() {
    let Some(server) = RedisServer::start() else { return };
    let mut reader = Proc::spawn(&format!("hold\t{}\tr\ts\t600", server.url()));
    reader.said("held", BOUND);
    let locks = manager(&server.url(), Duration::from_secs(5)).await;
    assert!(locks.try_acquire("r", AcquireOptions::new()).await.expect("try").is_none(), "a writer beside a reader");
    reader.child.kill().expect("kill the reader");
    let killed = Instant::now();
    let writer = locks.acquire("r", AcquireOptions::new().timeout(BOUND)).await.expect("the dead reader pins r");
    eprintln!("writer in {:?} after the reader (600 ms lease) was killed", killed.elapsed());
    assert!(killed.elapsed() < Duration::from_secs(2), "took {:?}", killed.elapsed());
    writer.release().await.expect("release");
}

/// A reader paused (SIGSTOP) past its lease stops counting: a writer gets
/// in, and once resumed the reader is told its grant was lost.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_paused_past_its_lease_is_lost_and_does_not_pin() {
    let Some(server) = RedisServer::start() else { return };
    let mut reader = Proc::spawn(&format!("hold\t{}\tr\ts\t600", server.url()));
    reader.said("held", BOUND);
    let locks = manager(&server.url(), Duration::from_secs(5)).await;
    reader.signal(rustix::process::Signal::STOP);
    let paused = Instant::now();
    let writer = locks.acquire("r", AcquireOptions::new().timeout(BOUND)).await.expect("the paused reader pins r");
    assert!(paused.elapsed() < Duration::from_secs(2), "took {:?}", paused.elapsed());
    reader.signal(rustix::process::Signal::CONT);
    let reason = tokio::task::spawn_blocking(move || {
        let said = reader.said("lost", BOUND);
        drop(reader.stdin.take());
        said
    })
    .await
    .expect("join");
    assert!(reason.contains("lease expired") || reason.contains("no longer"), "the reader was told: {reason}");
    let info = locks.state("r").await.expect("state").info().cloned().expect("held");
    assert_eq!((info.mode, info.fencing_token), (LockMode::Exclusive, writer.fencing_token()));
    writer.release().await.expect("the resumed reader touched the writer's grant");
}

/// A waiter killed while queued holds up the waiters behind it only until
/// its queue lease (5 s) runs out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_waiter_is_skipped() {
    let Some(server) = RedisServer::start() else { return };
    let locks = manager(&server.url(), Duration::from_secs(5)).await;
    let reader = locks.acquire("r", AcquireOptions::new().shared()).await.expect("reader");
    let mut waiter = Proc::spawn(&format!("wait\t{}\tr\tx", server.url()));
    waiter.said("waiting", BOUND);
    wait_for_queue(&server, "r", 1).await;
    waiter.child.kill().expect("kill the waiter");
    let other = manager(&server.url(), Duration::from_secs(5)).await;
    let next = tokio::spawn(async move { other.acquire("r", AcquireOptions::new().timeout(BOUND)).await });
    wait_for_queue(&server, "r", 2).await;
    let released = Instant::now();
    reader.release().await.expect("release");
    let writer = next.await.expect("join").expect("held up by a dead waiter");
    eprintln!("the waiter behind a dead one got in {:?} after the release", released.elapsed());
    assert!(released.elapsed() < Duration::from_secs(8), "took {:?}", released.elapsed());
    writer.release().await.expect("release");
    wait_for_queue(&server, "r", 0).await;
}

async fn wait_for_queue(server: &RedisServer, resource: &str, n: usize) {
    let key = format!("lockman:{{{resource}}}:queue");
    let deadline = Instant::now() + BOUND;
    loop {
        let len: usize = server.command(&["ZCARD", &key]).expect("ZCARD").parse().unwrap_or(0);
        if len == n {
            return;
        }
        assert!(Instant::now() < deadline, "{resource} never had {n} queued waiters (has {len})");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
