//! A solar-inverter polling daemon on a simulated bus, the way GivTCP-style
//! daemons work: a poll loop reads every register each interval, and
//! commands (force charge, force export) write registers and raise the
//! `.FCRunning` / `.FERunning` flags while their mode runs. Two transactions
//! on the bus at once corrupt both, so every transaction is serialized on
//! the resource `inverter_read`.
//!
//! ```sh
//! cargo run --example inverter_daemon                     # in-process backend, 3 s, then a summary
//! LOCKMAN_URL=file:///tmp/inv cargo run --example inverter_daemon -- --processes 4 --duration 5s
//! LOCKMAN_URL=redis://127.0.0.1:6379/0 cargo run --example inverter_daemon -- --processes 3
//! LOCKMAN_URL=etcd://127.0.0.1:2379 cargo run --features etcd --example inverter_daemon -- --processes 3
//! ```
//!
//! The backend comes from the environment (`LOCKMAN_URL`, `USE_NEW_LOCKS`,
//! `LOCKMAN_LEGACY_BRIDGE`, `lockman.toml`; see `lockman::Config`). With
//! `--processes N` the daemon runs as N processes on one shared bus. The bus
//! logs every transaction's start and end; at the end, each transaction that
//! started while another was still on the bus counts as an overlap — a
//! corruption. The summary must say `overlaps=0`; `--no-lock` (hidden, for
//! the control run in the tests) skips locking and shows the detector works.
//! Ctrl-C stops early, releasing every lock.
//!
//! Each poll saves the registers it read to `regcache.json` on the bus
//! directory through a [`FencedFile`]: the write carries the poll's fencing
//! token (handed over by `with_lock_guard`), and the file refuses it if a
//! later holder has written already — which happens only if this poll's lock
//! was lost while it ran (say, the process paused past its lease). The
//! summary counts such refusals as `stale_refused`.
//!
//! The register cache is a reader-writer resource, `regcache`: status
//! readers (the REST handlers' `GET /status`, `--status-readers` per process)
//! read it under **shared** holds, together, while the poller writes it under
//! an **exclusive** hold. The cache log records every read and write; a write
//! that overlapped anything counts as an overlap too, so `overlaps=0` means
//! "no bus transaction overlapped another, and no cache writer overlapped
//! anyone". `readers_together=` counts the reads that overlapped another read
//! (shared holds at work). On a backend without shared holds (legacy-file,
//! the legacy bridge) the readers take it exclusively (`cache_readers=exclusive`).

use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use clap::Parser;
use lockman::fencing::FencedFile;
use lockman::{
    AcquireOptions, FencingToken, FlagOptions, LockError, LockManager, LockManagerExt, LockMode, StatusManager,
};
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::task::JoinSet;

/// How long one bus transaction takes: reading every register, or writing a few.
const READ_ALL: Duration = Duration::from_millis(5);
const WRITE: Duration = Duration::from_millis(3);
/// How long a forced mode runs (its flag is set meanwhile).
const MODE_RUNS: Duration = Duration::from_millis(200);
const RESOURCE: &str = "inverter_read";
const FLAGS: [&str; 2] = [".FCRunning", ".FERunning"];
/// The register cache on the bus directory (and its `.fence` token beside it).
const REGISTER_CACHE: &str = "regcache.json";
/// The lock on the register cache: shared for readers, exclusive for the poller.
const CACHE_RESOURCE: &str = "regcache";
/// How long a status reader spends reading the cache.
const CACHE_READ: Duration = Duration::from_millis(2);

#[derive(Parser, Debug, Clone)]
#[command(about = "A simulated inverter-polling daemon serializing its bus with lockman")]
struct Args {
    /// Run this long, then stop and print the summary.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Daemon processes sharing one bus (the backend must work across processes).
    #[arg(long, default_value_t = 1)]
    processes: usize,
    /// Pause between two polls of every register.
    #[arg(long, default_value = "50ms", value_parser = humantime::parse_duration)]
    interval: Duration,
    /// Commands (force charge / force export, alternating) started per second, per process.
    #[arg(long, default_value_t = 4.0)]
    commands_per_sec: f64,
    /// Status readers (REST `GET /status` handlers) reading the register cache, per process.
    #[arg(long, default_value_t = 3)]
    status_readers: usize,
    /// Pause between two reads of one status reader.
    #[arg(long, default_value = "10ms", value_parser = humantime::parse_duration)]
    status_interval: Duration,
    /// Control run: do not lock (the bus then sees overlaps).
    #[arg(long, hide = true)]
    no_lock: bool,
    /// Internal: run as one daemon process of a `--processes` run on this bus directory.
    #[arg(long, hide = true)]
    child_of: Option<PathBuf>,
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = Args::parse();
    match run(args).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("inverter_daemon: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), LockError> {
    if let Some(bus_dir) = &args.child_of {
        // One process of a multi-process run: report to the parent on stdout.
        let stats = daemon(&args, &Bus::open(bus_dir)?, lockman::from_env().await?).await?;
        println!("{}", stats.to_line());
        return Ok(());
    }
    let backends = lockman::from_env().await?;
    if args.processes > 1 && !backends.locks.capabilities().cross_process {
        return Err(LockError::Config(format!(
            "--processes {} needs a backend shared by processes, and {} is not; set LOCKMAN_URL, e.g. \
             LOCKMAN_URL=file:///tmp/inv",
            args.processes, backends.chosen
        )));
    }
    let bus_dir = tempfile::tempdir().map_err(|e| io_error("creating the bus directory", e))?;
    let bus = Bus::open(bus_dir.path())?;
    println!(
        "inverter daemon: backend {}, {} process(es), {:?}{}",
        backends.chosen,
        args.processes,
        args.duration,
        if args.no_lock { ", NOT LOCKING (control run)" } else { "" }
    );
    let backend = backends.locks.name().to_owned();
    let cache_readers = reader_mode(&*backends.locks).as_str();
    let stats = if args.processes <= 1 {
        daemon(&args, &bus, backends).await?
    } else {
        drop(backends);
        // Ctrl-C reaches the daemon processes too (one process group); they
        // finish and report, and this process waits for them instead of dying.
        let mut interrupt = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
            .map_err(|e| io_error("listening for Ctrl-C", e))?;
        tokio::spawn(async move {
            if interrupt.recv().await.is_some() {
                eprintln!("interrupted: waiting for the daemon processes to finish");
            }
        });
        let (args, dir) = (args.clone(), bus_dir.path().to_owned());
        tokio::task::spawn_blocking(move || run_processes(&args, &dir))
            .await
            .map_err(|e| LockError::Config(format!("waiting for the daemon processes: {e}")))??
    };
    let cache = bus.cache_overlaps()?;
    let overlaps = bus.overlaps()? + cache.writer_overlaps;
    println!(
        "summary: backend={backend} processes={} reads={} writes={} overlaps={overlaps} lost={} \
         cache_writes={} stale_refused={} status_reads={} readers_together={} cache_readers={} \
         lock_wait_p50={:?} lock_wait_p99={:?} flags_seen={}",
        args.processes.max(1),
        stats.reads,
        stats.writes,
        stats.lost,
        stats.cache_writes,
        stats.stale_refused,
        stats.status_reads,
        cache.readers_together,
        cache_readers,
        stats.wait_percentile(0.50),
        stats.wait_percentile(0.99),
        stats.flags_seen(),
    );
    Ok(())
}

/// Starts `--processes` daemons on the shared bus and adds up their reports.
fn run_processes(args: &Args, bus_dir: &Path) -> Result<Stats, LockError> {
    let exe = std::env::current_exe().map_err(|e| io_error("finding this program", e))?;
    let mut children = Vec::new();
    for _ in 0..args.processes {
        let mut command = Command::new(&exe);
        command
            .arg("--child-of")
            .arg(bus_dir)
            .args(["--duration", &humantime::format_duration(args.duration).to_string()])
            .args(["--interval", &humantime::format_duration(args.interval).to_string()])
            .args(["--commands-per-sec", &args.commands_per_sec.to_string()])
            .stdout(Stdio::piped());
        if args.no_lock {
            command.arg("--no-lock");
        }
        children.push(command.spawn().map_err(|e| io_error("starting a daemon process", e))?);
    }
    let mut total = Stats::default();
    for mut child in children {
        let stdout = child.stdout.take().map(BufReader::new);
        let report = stdout.and_then(|out| out.lines().map_while(Result::ok).find(|l| l.starts_with("stats ")));
        let status = child.wait().map_err(|e| io_error("waiting for a daemon process", e))?;
        match report.and_then(|line| Stats::from_line(&line)) {
            Some(stats) if status.success() => total.add(stats),
            _ => return Err(LockError::Config(format!("a daemon process failed ({status}); see its errors above"))),
        }
    }
    Ok(total)
}

/// One daemon: a poll loop and a command scheduler until the run ends.
async fn daemon(args: &Args, bus: &Bus, backends: lockman::Backends) -> Result<Stats, LockError> {
    let fenced = backends.locks.capabilities().fencing;
    let daemon = Arc::new(Daemon {
        fenced,
        reader_mode: reader_mode(&*backends.locks),
        locks: backends.locks,
        status: backends.status,
        bus: bus.clone(),
        cache: FencedFile::new(bus.dir.join(REGISTER_CACHE)),
        lock: !args.no_lock,
        stats: Mutex::new(Stats::default()),
        stopping: AtomicBool::new(false),
        stop: Notify::new(),
        jobs: AtomicU64::new(0),
    });
    let mut tasks = JoinSet::new();
    tasks.spawn(poll_loop(daemon.clone(), args.interval));
    tasks.spawn(command_loop(daemon.clone(), args.commands_per_sec));
    for _ in 0..args.status_readers {
        tasks.spawn(status_loop(daemon.clone(), args.status_interval));
    }
    tokio::select! {
        () = tokio::time::sleep(args.duration) => {}
        _ = tokio::signal::ctrl_c() => eprintln!("interrupted: finishing the transactions in flight"),
    }
    daemon.stopping.store(true, Ordering::SeqCst);
    daemon.stop.notify_waiters();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(result) => result?,
            Err(e) => return Err(LockError::Config(format!("a daemon task failed: {e}"))),
        }
    }
    let stats = std::mem::take(&mut *daemon.stats.lock());
    Ok(stats)
}

struct Daemon {
    locks: Arc<dyn LockManager>,
    status: Arc<dyn StatusManager>,
    bus: Bus,
    /// The register cache every poll writes, shared by all daemon processes.
    cache: FencedFile,
    /// Whether the backend's tokens increase per grant (not legacy
    /// lockfiles): without that, there is nothing to fence the cache with.
    fenced: bool,
    /// How status readers hold the cache: shared where the backend can.
    reader_mode: LockMode,
    lock: bool,
    stats: Mutex<Stats>,
    stopping: AtomicBool,
    stop: Notify,
    jobs: AtomicU64,
}

impl Daemon {
    /// Sleeps `pause`; false once the daemon is stopping.
    async fn pause(&self, pause: Duration) -> bool {
        let stop = self.stop.notified();
        if self.stopping.load(Ordering::SeqCst) {
            return false;
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => !self.stopping.load(Ordering::SeqCst),
            () = stop => false,
        }
    }

    /// One bus transaction of `length`, under the bus lock (unless a
    /// control run).
    async fn transaction(&self, purpose: &str, length: Duration) -> Result<(), LockError> {
        if !self.lock {
            return self.bus.transaction(length).await;
        }
        let asked = Instant::now();
        let options = AcquireOptions::new().timeout(Duration::from_secs(10)).purpose(purpose);
        let done = self
            .locks
            .with_lock_guard(RESOURCE, options, |_| {
                self.stats.lock().waits_us.push(asked.elapsed().as_micros() as u64);
                self.bus.transaction(length)
            })
            .await;
        self.count_loss(done)
    }

    /// Writes what a poll read to the register cache under an exclusive hold
    /// of `regcache` (no reader sees a half-written cache), fenced by that
    /// grant's token.
    async fn write_cache(&self) -> Result<(), LockError> {
        if !self.lock {
            return self.bus.cache_span('W', pause_ok(WRITE)).await;
        }
        let options = AcquireOptions::new().timeout(Duration::from_secs(10)).purpose("poll: save register cache");
        let done = self
            .locks
            .with_lock_guard(CACHE_RESOURCE, options, |guard| {
                let token = guard.fencing_token();
                self.bus.cache_span('W', async move {
                    if self.fenced { self.save_cache(token).await } else { pause_ok(WRITE).await }
                })
            })
            .await;
        self.count_loss(done)
    }

    /// One status read of the register cache, under a shared hold (where
    /// the backend has them) beside the other readers.
    async fn read_cache(&self) -> Result<(), LockError> {
        if !self.lock {
            return self.bus.cache_span('R', self.bus.read_cache()).await;
        }
        let options =
            AcquireOptions::new().timeout(Duration::from_secs(10)).purpose("GET /status: read register cache");
        let options = if self.reader_mode == LockMode::Shared { options.shared() } else { options };
        let done =
            self.locks.with_lock(CACHE_RESOURCE, options, || self.bus.cache_span('R', self.bus.read_cache())).await;
        self.count_loss(done)
    }

    /// A lock lost during the work is counted, not fatal (the fenced cache
    /// refuses what it would have spoiled).
    fn count_loss(&self, done: Result<Result<(), LockError>, LockError>) -> Result<(), LockError> {
        match done {
            Ok(result) => result,
            Err(e) if e.is_lost() => {
                eprintln!("lost the bus lock during a transaction: {e}");
                self.stats.lock().lost += 1;
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// Writes the register cache with `token`; a refusal (a later holder
    /// wrote first) is counted, not fatal: that poll's data is simply older.
    async fn save_cache(&self, token: FencingToken) -> Result<(), LockError> {
        let (cache, pid) = (self.cache.clone(), std::process::id());
        let contents = format!("{{\"token\": {token}, \"pid\": {pid}, \"battery_soc\": {}}}\n", 40 + token.get() % 60);
        let written = tokio::task::spawn_blocking(move || cache.write(token, contents.as_bytes()))
            .await
            .map_err(|e| LockError::Config(format!("inverter daemon: writing the register cache: {e}")))?;
        match written {
            Ok(()) => self.stats.lock().cache_writes += 1,
            Err(e) if e.is_stale() => {
                eprintln!("{e}");
                self.stats.lock().stale_refused += 1;
            }
            Err(e) => return Err(LockError::Config(format!("inverter daemon: {e}"))),
        }
        Ok(())
    }
}

/// How status readers hold the register cache on this backend.
fn reader_mode(locks: &dyn LockManager) -> LockMode {
    if locks.capabilities().shared_mode { LockMode::Shared } else { LockMode::Exclusive }
}

/// Reads every register each interval, saves them to the register cache,
/// and notes which mode flags are up.
async fn poll_loop(daemon: Arc<Daemon>, interval: Duration) -> Result<(), LockError> {
    while daemon.pause(interval).await {
        daemon.transaction("poll: read all registers", READ_ALL).await?;
        daemon.write_cache().await?;
        daemon.stats.lock().reads += 1;
        for flag in FLAGS {
            if daemon.status.is_set(flag).await? {
                *daemon.stats.lock().flags.entry(flag).or_default() += 1;
            }
        }
    }
    Ok(())
}

/// A status reader: reads the register cache every `interval`.
async fn status_loop(daemon: Arc<Daemon>, interval: Duration) -> Result<(), LockError> {
    while daemon.pause(interval).await {
        daemon.read_cache().await?;
        daemon.stats.lock().status_reads += 1;
    }
    Ok(())
}

/// Starts force-charge and force-export commands, alternating, at the given rate.
async fn command_loop(daemon: Arc<Daemon>, per_sec: f64) -> Result<(), LockError> {
    if per_sec <= 0.0 {
        return Ok(());
    }
    let every = Duration::from_secs_f64(1.0 / per_sec);
    let mut commands = JoinSet::new();
    let mut charge = true;
    while daemon.pause(every).await {
        let (mode, flag) = if charge { ("force charge", FLAGS[0]) } else { ("force export", FLAGS[1]) };
        charge = !charge;
        commands.spawn(command(daemon.clone(), mode, flag));
    }
    while let Some(done) = commands.join_next().await {
        match done {
            Ok(result) => result?,
            Err(e) => return Err(LockError::Config(format!("a command failed: {e}"))),
        }
    }
    Ok(())
}

/// One command: write the mode's registers, raise its flag while it runs
/// (`job-N\nHH:MM`, as a v3 daemon writes it), then write again to end it.
async fn command(daemon: Arc<Daemon>, mode: &str, flag: &str) -> Result<(), LockError> {
    daemon.transaction(&format!("{mode}: write registers"), WRITE).await?;
    let job = daemon.jobs.fetch_add(1, Ordering::Relaxed);
    let ends = chrono_like_hh_mm(SystemTime::now() + MODE_RUNS);
    daemon.status.set(flag, FlagOptions::new().value(format!("job-{job}\n{ends}"))).await?;
    tokio::time::sleep(MODE_RUNS).await;
    daemon.transaction(&format!("{mode}: restore registers"), WRITE).await?;
    daemon.status.clear(flag).await?;
    daemon.stats.lock().writes += 2;
    Ok(())
}

/// `HH:MM` (UTC) of `at`.
fn chrono_like_hh_mm(at: SystemTime) -> String {
    let minutes = at.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs() / 60;
    format!("{:02}:{:02}", (minutes / 60) % 24, minutes % 60)
}

/// The simulated bus: every transaction appends its start and end (ns since
/// the epoch) to this process's log in the bus directory.
#[derive(Clone)]
struct Bus {
    dir: PathBuf,
    log: Arc<Mutex<File>>,
    /// Reads (`R start end`) and writes (`W start end`) of the register cache.
    cache_log: Arc<Mutex<File>>,
}

/// What the cache log shows.
struct CacheOverlaps {
    /// Cache writes that overlapped any other read or write.
    writer_overlaps: u64,
    /// Cache reads that overlapped another read.
    readers_together: u64,
}

impl Bus {
    fn open(dir: &Path) -> Result<Bus, LockError> {
        let path = dir.join(format!("transactions-{}.log", std::process::id()));
        let log =
            OpenOptions::new().create(true).append(true).open(&path).map_err(|e| io_error("opening the bus log", e))?;
        let path = dir.join(format!("cache-{}.log", std::process::id()));
        let cache_log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| io_error("opening the cache log", e))?;
        Ok(Bus { dir: dir.to_owned(), log: Arc::new(Mutex::new(log)), cache_log: Arc::new(Mutex::new(cache_log)) })
    }

    /// Logs `work` as one read (`R`) or write (`W`) of the register cache.
    async fn cache_span(&self, kind: char, work: impl Future<Output = Result<(), LockError>>) -> Result<(), LockError> {
        let start = now_ns();
        let done = work.await;
        let end = now_ns();
        writeln!(self.cache_log.lock(), "{kind} {start} {end}").map_err(|e| io_error("writing the cache log", e))?;
        done
    }

    /// A status read: the handler takes `CACHE_READ` to read and render the cache.
    async fn read_cache(&self) -> Result<(), LockError> {
        tokio::time::sleep(CACHE_READ).await;
        match std::fs::read(self.dir.join(REGISTER_CACHE)) {
            Ok(_) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_error("reading the register cache", e)),
        }
    }

    /// Every process's cache log: writes that overlapped anything, reads
    /// that overlapped another read.
    fn cache_overlaps(&self) -> Result<CacheOverlaps, LockError> {
        let mut spans: Vec<(u128, u128, char)> = Vec::new();
        for line in self.log_lines("cache-")? {
            let mut fields = line.split(' ');
            if let (Some(kind), Some(start), Some(end)) = (fields.next(), fields.next(), fields.next())
                && let (Some(kind), Ok(start), Ok(end)) = (kind.chars().next(), start.parse(), end.parse())
            {
                spans.push((start, end, kind));
            }
        }
        spans.sort_unstable();
        let mut result = CacheOverlaps { writer_overlaps: 0, readers_together: 0 };
        // The latest end so far of any span, and of reads.
        let (mut busy_until, mut reading_until) = (0, 0);
        for (index, &(start, end, kind)) in spans.iter().enumerate() {
            let next_starts_inside = spans.get(index + 1).is_some_and(|next| next.0 < end);
            if kind == 'W' && (start < busy_until || next_starts_inside) {
                result.writer_overlaps += 1;
            }
            if kind == 'R' && start < reading_until {
                result.readers_together += 1;
            }
            busy_until = busy_until.max(end);
            if kind == 'R' {
                reading_until = reading_until.max(end);
            }
        }
        Ok(result)
    }

    /// The lines of every process's log whose name starts with `prefix`.
    fn log_lines(&self, prefix: &str) -> Result<Vec<String>, LockError> {
        let mut lines = Vec::new();
        let entries = std::fs::read_dir(&self.dir).map_err(|e| io_error("reading the logs", e))?;
        for entry in entries.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(prefix)) {
            let file = File::open(entry.path()).map_err(|e| io_error("reading a log", e))?;
            lines.extend(BufReader::new(file).lines().map_while(Result::ok));
        }
        Ok(lines)
    }

    async fn transaction(&self, length: Duration) -> Result<(), LockError> {
        let start = now_ns();
        tokio::time::sleep(length).await;
        let end = now_ns();
        writeln!(self.log.lock(), "{start} {end}").map_err(|e| io_error("writing the bus log", e))
    }

    /// Transactions that started while another was still on the bus, over
    /// every process's log.
    fn overlaps(&self) -> Result<u64, LockError> {
        let mut spans = Vec::new();
        for line in self.log_lines("transactions-")? {
            if let Some((start, end)) = line.split_once(' ')
                && let (Ok(start), Ok(end)) = (start.parse::<u128>(), end.parse::<u128>())
            {
                spans.push((start, end));
            }
        }
        spans.sort_unstable();
        let mut busy_until = 0;
        let mut overlaps = 0;
        for (start, end) in spans {
            if start < busy_until {
                overlaps += 1;
            }
            busy_until = busy_until.max(end);
        }
        Ok(overlaps)
    }
}

/// Takes `length`, as a write to a cache that is not fenced does.
async fn pause_ok(length: Duration) -> Result<(), LockError> {
    tokio::time::sleep(length).await;
    Ok(())
}

fn now_ns() -> u128 {
    SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default().as_nanos()
}

/// What one daemon did.
#[derive(Debug, Default)]
struct Stats {
    reads: u64,
    writes: u64,
    lost: u64,
    cache_writes: u64,
    stale_refused: u64,
    status_reads: u64,
    waits_us: Vec<u64>,
    flags: std::collections::BTreeMap<&'static str, u64>,
}

impl Stats {
    fn add(&mut self, other: Stats) {
        self.reads += other.reads;
        self.writes += other.writes;
        self.lost += other.lost;
        self.cache_writes += other.cache_writes;
        self.stale_refused += other.stale_refused;
        self.status_reads += other.status_reads;
        self.waits_us.extend(other.waits_us);
        for (flag, seen) in other.flags {
            *self.flags.entry(flag).or_default() += seen;
        }
    }

    fn wait_percentile(&self, p: f64) -> Duration {
        let mut waits = self.waits_us.clone();
        waits.sort_unstable();
        let at = ((waits.len().saturating_sub(1)) as f64 * p).round() as usize;
        Duration::from_micros(waits.get(at).copied().unwrap_or(0))
    }

    fn flags_seen(&self) -> String {
        let seen: Vec<String> = FLAGS.iter().map(|f| format!("{f}:{}", self.flags.get(f).unwrap_or(&0))).collect();
        seen.join(",")
    }

    /// `stats reads=R writes=W lost=L cache=C stale=S status=T fc=N fe=M waits=1,2,3` — a child's report.
    fn to_line(&self) -> String {
        let waits: Vec<String> = self.waits_us.iter().map(u64::to_string).collect();
        format!(
            "stats reads={} writes={} lost={} cache={} stale={} status={} fc={} fe={} waits={}",
            self.reads,
            self.writes,
            self.lost,
            self.cache_writes,
            self.stale_refused,
            self.status_reads,
            self.flags.get(FLAGS[0]).unwrap_or(&0),
            self.flags.get(FLAGS[1]).unwrap_or(&0),
            waits.join(",")
        )
    }

    fn from_line(line: &str) -> Option<Stats> {
        let mut stats = Stats::default();
        for field in line.strip_prefix("stats ")?.split(' ') {
            let (key, value) = field.split_once('=')?;
            match key {
                "reads" => stats.reads = value.parse().ok()?,
                "writes" => stats.writes = value.parse().ok()?,
                "lost" => stats.lost = value.parse().ok()?,
                "cache" => stats.cache_writes = value.parse().ok()?,
                "stale" => stats.stale_refused = value.parse().ok()?,
                "status" => stats.status_reads = value.parse().ok()?,
                "fc" => {
                    stats.flags.insert(FLAGS[0], value.parse().ok()?);
                }
                "fe" => {
                    stats.flags.insert(FLAGS[1], value.parse().ok()?);
                }
                "waits" => {
                    stats.waits_us = value.split(',').filter(|v| !v.is_empty()).filter_map(|v| v.parse().ok()).collect()
                }
                _ => return None,
            }
        }
        Some(stats)
    }
}

fn io_error(action: &str, e: std::io::Error) -> LockError {
    LockError::Config(format!("inverter daemon: {action}: {e}"))
}
