//! Shared and permit grants across real OS processes, for any backend whose
//! managers share a store across processes (Redis, etcd, …): readers really
//! overlap, writers overlap nobody, a semaphore of 3 never has more than 3
//! holders across 8 processes (and does reach 3) — and the child handle
//! ([`Proc`]) a backend's own crash and pause tests use.
//!
//! The children are the test binary itself, re-run with [`CHILD_ENV`] set to
//! a role (see [`Proc`]'s constructors): each test binary must have a test
//! named `child` (exactly, see [`CHILD_TEST`]) that calls [`child`] with the
//! backend's connect function, which does nothing unless [`CHILD_ENV`] is
//! set. Children that log append one line `<start µs> <end µs> <token>` per
//! hold to their own file, the times read from `CLOCK_MONOTONIC` (one clock
//! for every process on the host) just after the grant and just before the
//! release, so two logged intervals that overlap mean two grants that
//! overlapped; [`run_logging`] gathers them.
//!
//! [`mode_process_tests!`](crate::mode_process_tests) stamps out that
//! `child` test and one `#[test]` per check, each with a fresh server.
//!
//! Every wait is bounded, and every child is killed when its [`Proc`] is
//! dropped, so none outlives a failing test. Unix only, behind the
//! `mode-processes` feature.
//!
//! ```no_run
//! use std::sync::Arc;
//! use std::time::Duration;
//! use lockman_core::LockManager;
//! use lockman_testkit::redis_server::RedisServer;
//!
//! /// Connects a manager whose default lease is `lease`.
//! async fn connect(url: String, lease: Duration) -> Arc<dyn LockManager> {
//!     # drop((url, lease));
//!     todo!("connect the backend under test")
//! }
//!
//! // In a test file: `child` and the checks, each on a private server
//! // (`None`: skipped), which the children reach at `server.url()`.
//! lockman_testkit::mode_process_tests!(connect = connect, server = RedisServer::start(), url = url);
//! # fn main() {}
//! ```

#![cfg(unix)]

use std::future::Future;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin};
use std::sync::Arc;
use std::sync::mpsc::Receiver;
use std::time::{Duration, Instant};

use lockman_core::{AcquireOptions, LockManager, LockMode};

use crate::processes::{spawn_test_child, stdout_lines, wait_all_succeed};

/// The environment variable that makes the test binary a child: its value
/// is the child's role (tab-separated; made by [`Proc`]'s constructors).
pub const CHILD_ENV: &str = "LOCKMAN_MODE_CHILD";

/// The name of the test that must call [`child`] in every test binary
/// using this module.
pub const CHILD_TEST: &str = "child";

/// Bound on steps that should take moments (a child getting ready, a
/// handoff after a release).
pub const BOUND: Duration = Duration::from_secs(10);

/// How long one acquisition of a logging or holding child may wait.
const CHILD_WAIT: Duration = Duration::from_secs(30);

/// The default lease of the managers of [`Proc::intervals`] and
/// [`Proc::wait`] children.
const CHILD_LEASE: Duration = Duration::from_secs(5);

/// The options a child acquires with in `mode` (a 30 s timeout).
fn mode_options(mode: LockMode) -> AcquireOptions {
    let options = AcquireOptions::new().timeout(CHILD_WAIT).purpose("mode process test");
    match mode {
        LockMode::Exclusive => options,
        LockMode::Shared => options.shared(),
        LockMode::Permits(n) => options.permits(n),
    }
}

/// `x`, `s` or `p<n>`: a mode in a child's role.
fn mode_code(mode: LockMode) -> String {
    match mode {
        LockMode::Exclusive => "x".to_owned(),
        LockMode::Shared => "s".to_owned(),
        LockMode::Permits(n) => format!("p{n}"),
    }
}

fn parse_mode(code: &str) -> LockMode {
    match code {
        "x" => LockMode::Exclusive,
        "s" => LockMode::Shared,
        permits => LockMode::Permits(permits.trim_start_matches('p').parse().expect("a permit count")),
    }
}

/// Microseconds on `CLOCK_MONOTONIC`, which every process on the host shares.
pub fn monotonic_us() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    u64::try_from(now.tv_sec).expect("time") * 1_000_000 + u64::try_from(now.tv_nsec).expect("time") / 1_000
}

/// The child side: if [`CHILD_ENV`] is set, acts out its role with managers
/// from `connect(url, default lease)` and exits the process; otherwise
/// returns at once. Call it from the test named [`CHILD_TEST`].
///
/// The roles (made by [`Proc::intervals`], [`Proc::hold`], [`Proc::wait`]):
/// * `intervals`: connects, says `ready`, waits for a line on stdin, then
///   `cycles` times acquires, holds `hold` and logs the interval;
/// * `hold`: acquires (its lease renewed by the watchdog), says `held
///   <token>`, says `lost <reason>` if the grant is lost, and releases when
///   stdin closes;
/// * `wait`: says `waiting`, waits for the resource forever, and then goes
///   on as `hold`.
///
/// # Panics
///
/// If the role is malformed or a step of it fails (the child then exits
/// with a failure, which the parent sees).
pub fn child<C, F>(connect: C)
where
    C: Fn(String, Duration) -> F,
    F: Future<Output = Arc<dyn LockManager>>,
{
    let Ok(spec) = std::env::var(CHILD_ENV) else { return };
    let fields: Vec<&str> = spec.split('\t').collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().expect("rt");
    runtime.block_on(async {
        match fields[..] {
            ["intervals", url, resource, mode, hold_ms, cycles, log] => {
                let locks = connect(url.to_owned(), CHILD_LEASE).await;
                say("ready");
                let mut go = String::new();
                std::io::stdin().read_line(&mut go).expect("wait for go");
                let hold = Duration::from_millis(hold_ms.parse().expect("hold_ms"));
                let mut file = std::fs::OpenOptions::new().create(true).append(true).open(log).expect("log");
                for _ in 0..cycles.parse::<u32>().expect("cycles") {
                    let guard = locks.acquire(resource, mode_options(parse_mode(mode))).await.expect("child acquire");
                    let start = monotonic_us();
                    tokio::time::sleep(hold).await;
                    let end = monotonic_us();
                    writeln!(file, "{start} {end} {}", guard.fencing_token()).expect("write the log");
                    guard.release().await.expect("child release");
                }
            }
            ["hold", url, resource, mode, lease_ms] => {
                let locks = connect(url.to_owned(), Duration::from_millis(lease_ms.parse().expect("lease_ms"))).await;
                hold_until_stdin_closes(&*locks, resource, mode_options(parse_mode(mode))).await;
            }
            ["wait", url, resource, mode] => {
                let locks = connect(url.to_owned(), CHILD_LEASE).await;
                say("waiting");
                hold_until_stdin_closes(&*locks, resource, mode_options(parse_mode(mode)).wait_forever()).await;
            }
            _ => panic!("bad child role {spec:?}"),
        }
    });
    std::process::exit(0);
}

/// Acquires, says `held <token>` (and `lost <reason>` if the grant is
/// lost), and releases once stdin closes.
async fn hold_until_stdin_closes(locks: &dyn LockManager, resource: &str, options: AcquireOptions) {
    let guard = locks.acquire(resource, options).await.expect("child acquire");
    let lost = guard.lost();
    tokio::spawn(async move { say(&format!("lost {}", lost.await)) });
    say(&format!("held {}", guard.fencing_token()));
    tokio::task::spawn_blocking(|| std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new()))
        .await
        .expect("join")
        .expect("stdin");
    let _ = guard.release().await; // may have been lost: the parent checks what it said
}

fn say(line: &str) {
    println!("{line}");
    let _ = std::io::stdout().flush();
}

/// A child process (the test binary re-run in a role) and the lines it
/// says. Killed when dropped.
#[derive(Debug)]
pub struct Proc {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
}

impl Proc {
    fn spawn(fields: &[&str]) -> Proc {
        let mut child = spawn_test_child(CHILD_TEST, CHILD_ENV, &fields.join("\t"));
        let lines = stdout_lines(&mut child);
        let stdin = child.stdin.take();
        Proc { child, stdin, lines }
    }

    /// A child that connects to `url`, says `ready`, and on a line on its
    /// stdin ([`tell`](Self::tell)) takes `resource` in `mode` `cycles`
    /// times, holding it `hold` each time and appending the interval to
    /// the file `log` (see [`run_logging`]).
    pub fn intervals(url: &str, resource: &str, mode: LockMode, hold: Duration, cycles: u32, log: &Path) -> Proc {
        let (hold, cycles, log) = (hold.as_millis().to_string(), cycles.to_string(), log.display().to_string());
        Proc::spawn(&["intervals", url, resource, &mode_code(mode), &hold, &cycles, &log])
    }

    /// A child that takes `resource` in `mode` with a manager whose
    /// default lease is `lease` (renewed while it holds), says `held
    /// <token>`, says `lost <reason>` if it loses the grant, and releases
    /// and exits when its stdin closes ([`close_stdin`](Self::close_stdin)).
    pub fn hold(url: &str, resource: &str, mode: LockMode, lease: Duration) -> Proc {
        Proc::spawn(&["hold", url, resource, &mode_code(mode), &lease.as_millis().to_string()])
    }

    /// A child that says `waiting`, then waits for `resource` in `mode`
    /// with no timeout; once granted it goes on as a [`hold`](Self::hold)
    /// child (`held <token>`, …).
    pub fn wait(url: &str, resource: &str, mode: LockMode) -> Proc {
        Proc::spawn(&["wait", url, resource, &mode_code(mode)])
    }

    /// The rest of the first line not read yet (after `word`, trimmed) that
    /// contains `word`, waiting at most `limit` (libtest may print on the
    /// same line first).
    ///
    /// # Panics
    ///
    /// If the child says no such line within `limit`.
    pub fn said(&self, word: &str, limit: Duration) -> String {
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

    /// Writes `line` to the child's stdin.
    ///
    /// # Panics
    ///
    /// If its stdin was closed or the child is gone.
    pub fn tell(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        writeln!(stdin, "{line}").expect("tell the child");
    }

    /// Closes the child's stdin: a holding child releases and exits.
    pub fn close_stdin(&mut self) {
        drop(self.stdin.take());
    }

    /// The child's process id.
    pub fn id(&self) -> u32 {
        self.child.id()
    }

    /// Kills the child with `SIGKILL` and reaps it.
    ///
    /// # Panics
    ///
    /// If the signal cannot be sent.
    pub fn kill(&mut self) {
        self.child.kill().expect("kill the child");
        let _ = self.child.wait();
    }

    /// Stops the child with `SIGSTOP`.
    pub fn pause(&self) {
        self.signal(rustix::process::Signal::STOP);
    }

    /// Continues a paused child (`SIGCONT`).
    pub fn resume(&self) {
        self.signal(rustix::process::Signal::CONT);
    }

    fn signal(&self, signal: rustix::process::Signal) {
        let pid = rustix::process::Pid::from_raw(i32::try_from(self.child.id()).expect("pid")).expect("pid");
        rustix::process::kill_process(pid, signal).expect("signal the child");
    }

    /// Closes the child's stdin and waits at most `limit` for it to exit
    /// successfully.
    ///
    /// # Panics
    ///
    /// If it fails or runs past `limit` (it is killed then).
    pub fn finish(&mut self, limit: Duration) {
        self.close_stdin();
        wait_all_succeed(std::slice::from_mut(&mut self.child), limit);
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Closes every child's stdin and waits (at most `limit` in all) for each
/// to exit successfully.
///
/// # Panics
///
/// If a child fails or runs past the limit (every child is still killed
/// when `procs` is dropped).
pub fn finish_all(procs: &mut [Proc], limit: Duration) {
    let deadline = Instant::now() + limit;
    for proc in procs.iter_mut() {
        proc.close_stdin();
    }
    for proc in procs.iter_mut() {
        proc.finish(deadline.saturating_duration_since(Instant::now()));
    }
}

/// One logged hold.
#[derive(Clone, Copy, Debug)]
pub struct Interval {
    /// Just after the grant, in µs on `CLOCK_MONOTONIC`.
    pub start: u64,
    /// Just before the release, in µs on `CLOCK_MONOTONIC`.
    pub end: u64,
    /// The grant's fencing token.
    pub token: u64,
    /// Which child logged it (its index in the modes given to [`run_logging`]).
    pub process: usize,
    /// The mode it was held in.
    pub mode: LockMode,
}

/// Runs `modes.len()` logging children ([`Proc::intervals`]) on `resource`
/// of the store at `url` (child i in `modes[i]`, each `cycles` holds of
/// `hold`), all started at once, and returns their intervals.
///
/// # Panics
///
/// If a child fails, a child is not ready within [`BOUND`], they take
/// more than 60 s in all, or a hold is missing from the logs.
pub fn run_logging(url: &str, resource: &str, modes: &[LockMode], hold: Duration, cycles: u32) -> Vec<Interval> {
    let dir = log_dir(resource);
    let log = |i: usize| dir.join(format!("{i}.log"));
    let mut procs: Vec<Proc> = modes
        .iter()
        .enumerate()
        .map(|(i, &mode)| Proc::intervals(url, resource, mode, hold, cycles, &log(i)))
        .collect();
    for proc in &procs {
        proc.said("ready", BOUND);
    }
    for proc in &mut procs {
        proc.tell("go");
    }
    finish_all(&mut procs, Duration::from_secs(60));
    let mut intervals = Vec::new();
    for (i, &mode) in modes.iter().enumerate() {
        let text = std::fs::read_to_string(log(i)).expect("read a log");
        for line in text.lines() {
            let v: Vec<u64> = line.split(' ').map(|n| n.parse().expect("a logged number")).collect();
            intervals.push(Interval { start: v[0], end: v[1], token: v[2], process: i, mode });
        }
    }
    let _ = std::fs::remove_dir_all(&dir);
    assert_eq!(intervals.len(), modes.len() * cycles as usize, "holds missing from the logs");
    intervals
}

/// A fresh directory for one run's logs.
fn log_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("lockman-modes-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create the log directory");
    dir
}

/// The most intervals that overlap at any instant (an end at the same
/// microsecond as a start does not overlap it).
pub fn max_overlap(intervals: &[Interval]) -> usize {
    let mut events: Vec<(u64, i32)> = intervals.iter().flat_map(|i| [(i.start, 1), (i.end, -1)]).collect();
    events.sort();
    let (mut now, mut most) = (0i32, 0i32);
    for (_, step) in events {
        now += step;
        most = most.max(now);
    }
    usize::try_from(most).unwrap_or(0)
}

/// Four reader processes each hold `shared` for 300 ms: all within 900 ms
/// (far below the 1.2 s they would take one after another), at least 3 at once.
///
/// # Panics
///
/// If they did not overlap, or a child failed.
pub fn readers_in_four_processes_hold_together(url: &str) {
    let intervals = run_logging(url, "shared", &[LockMode::Shared; 4], Duration::from_millis(300), 1);
    let span =
        intervals.iter().map(|i| i.end).max().unwrap_or(0) - intervals.iter().map(|i| i.start).min().unwrap_or(0);
    let overlap = max_overlap(&intervals);
    eprintln!("4 readers × 300 ms: all done within {} ms, at most {overlap} at once", span / 1000);
    assert!(span < 900_000, "4 shared holds of 300 ms took {} ms: they did not overlap", span / 1000);
    assert!(overlap >= 3, "at most {overlap} of 4 readers held at once");
}

/// Three writer and three reader processes, 8 holds of 15 ms each: no
/// writer's hold overlaps another hold, and fencing tokens are in the order
/// of the holds on either side of a writer's.
///
/// # Panics
///
/// If a writer overlapped anyone, tokens are out of order, or a child failed.
pub fn writers_in_processes_overlap_nobody(url: &str) {
    use LockMode::{Exclusive as X, Shared as S};
    let intervals = run_logging(url, "rw", &[X, S, X, S, S, X], Duration::from_millis(15), 8);
    let is_writer = |i: &Interval| i.mode == X;
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

/// Eight processes take a semaphore of 3, 5 holds of 40 ms each: never
/// more than 3 holders at once, 3 at some point, and every grant with a
/// token of its own.
///
/// # Panics
///
/// If the semaphore was exceeded or never full, two grants shared a token,
/// or a child failed.
pub fn a_semaphore_of_three_in_eight_processes_never_exceeds_three(url: &str) {
    let intervals = run_logging(url, "pool", &[LockMode::Permits(3); 8], Duration::from_millis(40), 5);
    let overlap = max_overlap(&intervals);
    eprintln!("8 processes × 5 permits of 3 × 40 ms: at most {overlap} at once");
    assert!(overlap <= 3, "{overlap} holders of a 3-permit semaphore at once");
    assert_eq!(overlap, 3, "the semaphore never had all 3 permits taken");
    let mut tokens: Vec<u64> = intervals.iter().map(|i| i.token).collect();
    tokens.sort_unstable();
    tokens.dedup();
    assert_eq!(tokens.len(), intervals.len(), "two grants with one fencing token");
}

/// Generates the test `child` (the child side, calling [`child`] with
/// `connect`) and one `#[test]` per check of this module, each starting a
/// server with `server` (an expression giving an `Option` of a server that
/// lives for the test; `None` skips it) whose method `url` gives the
/// address the children's `connect` takes.
///
/// [`child`]: crate::mode_processes::child
#[macro_export]
macro_rules! mode_process_tests {
    (connect = $connect:expr, server = $server:expr, url = $url:ident $(,)?) => {
        /// The child side: a no-op unless this binary was started as a child.
        #[test]
        fn child() {
            $crate::mode_processes::child($connect);
        }

        $crate::mode_process_tests!(@checks $server, $url;
            readers_in_four_processes_hold_together,
            writers_in_processes_overlap_nobody,
            a_semaphore_of_three_in_eight_processes_never_exceeds_three,
        );
    };
    (@checks $server:expr, $url:ident; $($check:ident),+ $(,)?) => {
        $(
            #[test]
            fn $check() {
                let Some(server) = $server else { return };
                $crate::mode_processes::$check(&server.$url());
            }
        )+
    };
}
