//! One torture run: set up the backend (a private redis-server, relays, a
//! small tmpfs), start the workers and old daemons, inject faults on a
//! seeded schedule until the deadline, heal everything, wait for the
//! participants, then check the histories.

use std::collections::BTreeSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use clap::Args;
use lockman_testkit::redis_server::RedisServer;
use lockman_testkit::relay::{Direction, TcpRelay};
use serde::Serialize;
use tokio::process::{Child, Command};
use tokio::task::JoinHandle;

use crate::check::{self, Bounds, Histories, Report};
use crate::history::{Fault, Log, now_us};
use crate::mode::RunMode;
use crate::store::FencedCounter;
use crate::worker::{self, WorkerSpec};

/// The resource every participant contends for.
const RESOURCE: &str = "torture";
/// The legacy file old daemons and `legacy-file://` share.
const LEGACY_FILE: &str = ".torture_lockfile";
/// The size of the tmpfs for `disk` faults.
const TMPFS_SIZE: &str = "4m";

/// The options of a run.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// A preset that starts what it needs: memory, file, lease-file,
    /// legacy-file, redis, file+legacy, redis+legacy.
    #[arg(long, default_value = "memory")]
    backend: Preset,
    /// Run against this lock URL instead of a preset's (no server of the
    /// harness's own: `restart` and `net` are skipped).
    #[arg(long)]
    url: Option<String>,
    /// With `--url`: a legacy bridge URL.
    #[arg(long, requires = "url")]
    bridge: Option<String>,
    /// Concurrent lockman workers (processes; tasks for `memory://`).
    #[arg(long, default_value_t = 8)]
    workers: usize,
    /// How long to run, e.g. `60s`, `10m`.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Faults to inject: kill, stop, restart, net, old, disk, or `all`, or `none`.
    #[arg(long, default_value = "all")]
    faults: String,
    /// Seeds the fault schedule and the workers' choices (random if not given; printed).
    #[arg(long)]
    seed: Option<u64>,
    /// Mean time between faults.
    #[arg(long, default_value = "700ms", value_parser = humantime::parse_duration)]
    fault_interval: Duration,
    /// The lease for lease-file and Redis.
    #[arg(long, default_value = "1s", value_parser = humantime::parse_duration)]
    lease: Duration,
    /// Hold times, drawn uniformly: `MIN..MAX` in ms.
    #[arg(long, default_value = "1..20")]
    hold_ms: HoldRange,
    /// How long one acquire waits at most.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// A worker's pause after each section, drawn uniformly: `MIN..MAX` in
    /// ms. Longer pauses leave the lock free now and then, which old daemons
    /// (who never queue) need to get in at all.
    #[arg(long, default_value = "0..2")]
    idle_ms: HoldRange,
    /// In how many of 100 sections a worker extends its lease (to three
    /// leases) and holds past the default lease.
    #[arg(long, default_value_t = 3)]
    extend_percent: u32,
    /// Old daemons (half protocol A, half B) when `old` faults apply.
    #[arg(long, default_value_t = 2)]
    old: usize,
    /// How soon a holder told "lost" must end its section.
    #[arg(long, default_value = "250ms", value_parser = humantime::parse_duration)]
    lost_bound: Duration,
    /// The longest stretch a wait may see the lock free (default: 3 s + 2 leases).
    #[arg(long, value_parser = humantime::parse_duration)]
    liveness_bound: Option<Duration>,
    /// How workers take the resource: `exclusive`; `rw` (3 sections in 4
    /// shared, reading the counter; the rest exclusive, writing it); or
    /// `permits=N` (a semaphore of N; sections leave the counter alone).
    #[arg(long, default_value = "exclusive")]
    mode: RunMode,
    /// Self-test: workers take no lock. The checker must report violations.
    #[arg(long)]
    no_lock: bool,
    /// Self-test: the counter does not check fencing tokens.
    #[arg(long)]
    unchecked_tokens: bool,
    /// Judge the histories a run kept in this directory (with this build's
    /// checker) instead of running; give the run's `--backend` (and its
    /// bounds, if not the defaults).
    #[arg(long)]
    recheck: Option<PathBuf>,
    /// Write the report as JSON here.
    #[arg(long)]
    json: Option<PathBuf>,
    /// Keep the run's directory (histories, worker stderr) here; by default a
    /// temporary directory, kept only when the run finds a violation.
    #[arg(long)]
    out: Option<PathBuf>,
}

/// A backend the harness sets up itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
enum Preset {
    Memory,
    File,
    LeaseFile,
    LegacyFile,
    Redis,
    FileLegacy,
    RedisLegacy,
}

impl FromStr for Preset {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "memory" => Preset::Memory,
            "file" => Preset::File,
            "lease-file" => Preset::LeaseFile,
            "legacy-file" => Preset::LegacyFile,
            "redis" => Preset::Redis,
            "file+legacy" => Preset::FileLegacy,
            "redis+legacy" => Preset::RedisLegacy,
            other => {
                return Err(format!(
                    "unknown backend {other:?}: valid are memory, file, lease-file, legacy-file, redis, file+legacy, redis+legacy"
                ));
            }
        })
    }
}

impl fmt::Display for Preset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Preset::Memory => "memory",
            Preset::File => "file",
            Preset::LeaseFile => "lease-file",
            Preset::LegacyFile => "legacy-file",
            Preset::Redis => "redis",
            Preset::FileLegacy => "file+legacy",
            Preset::RedisLegacy => "redis+legacy",
        })
    }
}

impl Preset {
    fn redis(self) -> bool {
        matches!(self, Preset::Redis | Preset::RedisLegacy)
    }
    fn legacy(self) -> bool {
        matches!(self, Preset::LegacyFile | Preset::FileLegacy | Preset::RedisLegacy)
    }
    fn files(self) -> bool {
        !matches!(self, Preset::Memory | Preset::Redis)
    }
    fn leases(self) -> bool {
        matches!(self, Preset::LeaseFile | Preset::Redis | Preset::RedisLegacy)
    }
}

/// A range of times in ms (hold times, idle times).
#[derive(Debug, Clone, Copy)]
struct HoldRange(u64, u64);

impl FromStr for HoldRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let (min, max) = s.split_once("..").ok_or_else(|| format!("{s:?}: give MIN..MAX in ms, e.g. 1..20"))?;
        let parse = |v: &str| v.trim().parse::<u64>().map_err(|e| format!("{v:?} in {s:?}: {e}"));
        let (min, max) = (parse(min)?, parse(max)?);
        if min > max {
            return Err(format!("{s:?}: MIN is above MAX"));
        }
        Ok(HoldRange(min, max))
    }
}

/// The faults a run can inject.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
enum FaultKind {
    Kill,
    Stop,
    Restart,
    Net,
    Old,
    Disk,
}

const ALL_FAULTS: [FaultKind; 6] =
    [FaultKind::Kill, FaultKind::Stop, FaultKind::Restart, FaultKind::Net, FaultKind::Old, FaultKind::Disk];

fn parse_faults(text: &str) -> Result<BTreeSet<FaultKind>, String> {
    let mut faults = BTreeSet::new();
    for name in text.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        match name {
            "all" => faults.extend(ALL_FAULTS),
            "none" => {}
            "kill" => _ = faults.insert(FaultKind::Kill),
            "stop" => _ = faults.insert(FaultKind::Stop),
            "restart" => _ = faults.insert(FaultKind::Restart),
            "net" => _ = faults.insert(FaultKind::Net),
            "old" => _ = faults.insert(FaultKind::Old),
            "disk" => _ = faults.insert(FaultKind::Disk),
            other => {
                return Err(format!(
                    "unknown fault {other:?}: valid are kill, stop, restart, net, old, disk, all, none"
                ));
            }
        }
    }
    Ok(faults)
}

/// The JSON report.
#[derive(Debug, Serialize)]
struct RunReport<'a> {
    pass: bool,
    seed: u64,
    backend: String,
    workers: usize,
    duration_s: f64,
    faults: Vec<FaultKind>,
    skipped_faults: Vec<String>,
    mode: String,
    no_lock: bool,
    unchecked_tokens: bool,
    bounds: Bounds,
    dir: Option<String>,
    error_samples: &'a [String],
    #[serde(flatten)]
    report: &'a Report,
}

/// Entry point of `lockman-torture` without a subcommand.
pub fn main(args: RunArgs) -> ExitCode {
    let runtime = match tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("lockman-torture: cannot start a runtime: {error}");
            return ExitCode::from(2);
        }
    };
    // Interrupted (Ctrl-C, SIGTERM): dropping the run kills the participants
    // and the server and unmounts the tmpfs, instead of leaving them behind.
    let interruptible = async {
        let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .map_err(|e| format!("cannot listen for SIGTERM: {e}"))?;
        tokio::select! {
            outcome = run(args) => outcome,
            _ = tokio::signal::ctrl_c() => Err("interrupted; participants, server and mounts cleaned up".to_owned()),
            _ = terminate.recv() => Err("terminated; participants, server and mounts cleaned up".to_owned()),
        }
    };
    match runtime.block_on(interruptible) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(error) => {
            eprintln!("lockman-torture: {error}");
            ExitCode::from(2)
        }
    }
}

/// What the run set up, torn down on drop.
struct Setup {
    url_of: Box<dyn Fn(usize) -> String + Send + Sync>,
    bridge: Option<String>,
    legacy_path: Option<PathBuf>,
    redis: Option<Arc<Mutex<RedisServer>>>,
    relays: Vec<TcpRelay>,
    tmpfs: Option<Tmpfs>,
    lock_dir: PathBuf,
}

/// A tmpfs mounted on the lock directory, unmounted on drop.
struct Tmpfs {
    path: PathBuf,
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// One worker slot: a process (or a task, for `memory://`) replaced after each kill.
struct Slot {
    base: String,
    generation: u32,
    name: String,
    process: Option<Child>,
    task: Option<JoinHandle<()>>,
    stall: Arc<AtomicU64>,
}

struct Harness {
    args: RunArgs,
    preset: Option<Preset>,
    dir: PathBuf,
    counter: PathBuf,
    until: u64,
    exe: PathBuf,
    faults_log: Log,
    setup: Setup,
    slots: Vec<Slot>,
    old: Vec<Child>,
    rng: fastrand::Rng,
}

async fn run(mut args: RunArgs) -> Result<bool, String> {
    if let Some(dir) = args.recheck.clone() {
        return recheck(&args, &dir);
    }
    let seed = args.seed.unwrap_or_else(|| fastrand::u64(..));
    let requested = parse_faults(&args.faults)?;
    let preset = if args.url.is_some() { None } else { Some(args.backend) };
    let (dir, temp) = match &args.out {
        Some(out) => {
            std::fs::create_dir_all(out).map_err(|e| format!("cannot create {}: {e}", out.display()))?;
            (out.clone(), None)
        }
        None => {
            let temp = tempfile::Builder::new()
                .prefix("lockman-torture-")
                .tempdir()
                .map_err(|e| format!("cannot create a temporary directory: {e}"))?;
            (temp.path().to_owned(), Some(temp))
        }
    };
    let mut skipped = Vec::new();
    let mut faults = BTreeSet::new();
    for fault in requested {
        let why_not = match (fault, preset) {
            (FaultKind::Restart | FaultKind::Net, Some(p)) if !p.redis() => Some("needs a redis backend"),
            (FaultKind::Restart | FaultKind::Net, None) => Some("needs a server the harness starts (a preset)"),
            (FaultKind::Old, Some(p)) if !p.legacy() => Some("needs a legacy-file backend or bridge"),
            (FaultKind::Old, None) => Some("needs a preset with legacy files"),
            (FaultKind::Disk, Some(p)) if !p.files() => Some("needs a file backend"),
            (FaultKind::Disk, None) => Some("needs a preset with files"),
            _ => None,
        };
        match why_not {
            Some(reason) => skipped.push(format!("{fault:?}: {reason}").to_lowercase()),
            None => _ = faults.insert(fault),
        }
    }
    let lock_dir = dir.join("locks");
    std::fs::create_dir_all(&lock_dir).map_err(|e| format!("cannot create {}: {e}", lock_dir.display()))?;
    let mut tmpfs = None;
    if faults.contains(&FaultKind::Disk) {
        match mount_tmpfs(&lock_dir) {
            Ok(mounted) => tmpfs = Some(mounted),
            Err(error) => {
                eprintln!(
                    "lockman-torture: SKIPPED disk faults: cannot mount a tmpfs on {}: {error}",
                    lock_dir.display()
                );
                skipped.push(format!("disk: cannot mount a tmpfs ({error})"));
                faults.remove(&FaultKind::Disk);
            }
        }
    }
    let setup = match preset {
        Some(preset) => set_up(preset, &args, seed, &lock_dir, faults.contains(&FaultKind::Net), tmpfs).await?,
        None => Setup {
            url_of: {
                let url = args.url.clone().unwrap_or_default();
                Box::new(move |_| url.clone())
            },
            bridge: args.bridge.clone(),
            legacy_path: None,
            redis: None,
            relays: Vec::new(),
            tmpfs,
            lock_dir: lock_dir.clone(),
        },
    };
    if args.no_lock {
        args.extend_percent = 0;
    }
    if args.mode != RunMode::Exclusive {
        let name =
            preset.map_or_else(|| lockman::redact_url(args.url.as_deref().unwrap_or_default()), |p| p.to_string());
        let capabilities = capabilities_of(&setup).await?;
        args.mode.supported_by(&capabilities, &name)?;
    }
    let exe = std::env::current_exe().map_err(|e| format!("cannot find this executable: {e}"))?;
    let faults_log = Log::create(&dir.join("faults.jsonl")).map_err(|e| format!("cannot create the fault log: {e}"))?;
    let backend_name =
        preset.map_or_else(|| lockman::redact_url(args.url.as_deref().unwrap_or_default()), |p| p.to_string());
    let start = now_us();
    let mut harness = Harness {
        until: start + args.duration.as_micros() as u64,
        counter: dir.join("counter"),
        args,
        preset,
        dir: dir.clone(),
        exe,
        faults_log,
        setup,
        slots: Vec::new(),
        old: Vec::new(),
        rng: fastrand::Rng::with_seed(seed),
    };
    println!(
        "lockman-torture: {backend_name}, {} workers, {:?}, faults {:?}, seed {seed}, histories in {}",
        harness.args.workers,
        harness.args.duration,
        faults,
        dir.display()
    );
    for fault in &skipped {
        println!("lockman-torture: skipped fault {fault}");
    }
    harness.start_participants(faults.contains(&FaultKind::Old))?;
    let schedule: Vec<FaultKind> = faults.iter().copied().filter(|f| *f != FaultKind::Old).collect();
    harness.inject_until_deadline(&schedule).await;
    let run_end = harness.finish().await;

    let (histories, report, bounds) = judge(&harness.args, preset, &dir, run_end)?;
    // A run in which no lockman worker ever held the lock (say every worker
    // failed to connect) has nothing to judge: it proves nothing, so it fails.
    let idle = report.sections == 0;
    if idle {
        println!("lockman-torture: no lockman worker held the lock once; see the workers' stderr in the histories");
    }
    let pass = report.violations.is_empty() && !idle;
    let kept = if pass { temp.is_none() } else { true };
    if let Some(temp) = temp
        && !pass
    {
        let _ = temp.keep();
    }
    print_summary(&backend_name, seed, &harness.args, &report, pass);
    if !pass {
        for violation in report.violations.iter().take(20) {
            println!("VIOLATION {}: {}", violation.rule, violation.detail);
        }
        if report.violations.len() > 20 {
            println!("... and {} more (see --json)", report.violations.len() - 20);
        }
        for sample in &histories.error_samples {
            println!("  error seen: {sample}");
        }
        println!("reproduce with --seed {seed}; histories kept in {}", dir.display());
    }
    if let Some(path) = &harness.args.json {
        let json = RunReport {
            pass,
            seed,
            backend: backend_name.clone(),
            workers: harness.args.workers,
            duration_s: harness.args.duration.as_secs_f64(),
            faults: faults.iter().copied().collect(),
            skipped_faults: skipped,
            mode: harness.args.mode.to_string(),
            no_lock: harness.args.no_lock,
            unchecked_tokens: harness.args.unchecked_tokens,
            bounds,
            dir: kept.then(|| dir.display().to_string()),
            error_samples: &histories.error_samples,
            report: &report,
        };
        let text = serde_json::to_string_pretty(&json).map_err(|e| format!("cannot encode the report: {e}"))?;
        std::fs::write(path, text).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    }
    Ok(pass)
}

/// What the backend the workers will use declares, asked by connecting to it
/// once (a worker's URL, with the bridge if any).
async fn capabilities_of(setup: &Setup) -> Result<lockman::Capabilities, String> {
    let mut config = lockman::Config::for_url((setup.url_of)(0));
    config.legacy_bridge = setup.bridge.clone();
    let backends = lockman::connect_with(&config)
        .await
        .map_err(|e| format!("cannot connect to the backend to read its capabilities: {e}"))?;
    Ok(backends.locks.capabilities())
}

/// Reads the histories in `dir` and the counter, and checks them.
fn judge(
    args: &RunArgs,
    preset: Option<Preset>,
    dir: &Path,
    run_end: u64,
) -> Result<(Histories, Report, Bounds), String> {
    let (counter, _) = FencedCounter::new(&dir.join("counter"), true).peek().unwrap_or((0, 0));
    let histories =
        Histories::load(dir, run_end).map_err(|e| format!("cannot read the histories in {}: {e}", dir.display()))?;
    let lease_us = if preset.is_some_and(Preset::leases) { args.lease.as_micros() as u64 } else { 0 };
    let bounds = Bounds {
        lost_bound_us: args.lost_bound.as_micros() as u64,
        slack_us: 10_000,
        liveness_bound_us: args.liveness_bound.map_or(3_000_000 + 2 * lease_us, |bound| bound.as_micros() as u64),
        lease_us,
    };
    let report = check::check(&histories, counter, bounds, !args.no_lock);
    Ok((histories, report, bounds))
}

/// `--recheck DIR`: judges the histories a run kept, with this checker.
fn recheck(args: &RunArgs, dir: &Path) -> Result<bool, String> {
    let run_end = Histories::load(dir, 0)
        .map_err(|e| format!("cannot read the histories in {}: {e}", dir.display()))?
        .waits
        .iter()
        .map(|wait| wait.end)
        .max()
        .unwrap_or(0);
    let preset = if args.url.is_some() { None } else { Some(args.backend) };
    let (_, report, _) = judge(args, preset, dir, run_end)?;
    let pass = report.violations.is_empty();
    print_summary(
        &format!("{} (recheck of {})", args.backend, dir.display()),
        args.seed.unwrap_or(0),
        args,
        &report,
        pass,
    );
    for violation in report.violations.iter().take(20) {
        println!("VIOLATION {}: {}", violation.rule, violation.detail);
    }
    Ok(pass)
}

fn print_summary(backend: &str, seed: u64, args: &RunArgs, report: &Report, pass: bool) {
    let faults: Vec<String> = report.faults.iter().map(|(k, n)| format!("{k}={n}")).collect();
    let excused: usize = report.excused.values().sum();
    println!(
        "lockman-torture: {} backend={backend} seed={seed} workers={} duration={:?} sections={} old={} writes={} counter={} \
         fenced={} lost={} timeouts={} errors={} faults[{}] excused_overlaps={excused} longest_wait={:.0}ms \
         longest_hold={:.0}ms longest_free_wait={:.0}ms violations={}",
        if pass { "PASS" } else { "FAIL" },
        args.workers,
        args.duration,
        report.sections,
        report.old_sections,
        report.writes,
        report.counter,
        report.fenced,
        report.lost,
        report.timeouts,
        report.errors,
        faults.join(" "),
        report.longest_wait_ms,
        report.longest_hold_ms,
        report.longest_free_wait_ms,
        report.violations.len()
    );
    // From the histories, not `--mode`: a recheck shows what the run did.
    if report.modes.keys().any(|mode| mode != "exclusive") {
        let modes: Vec<String> = report.modes.iter().map(|(k, n)| format!("{k}={n}")).collect();
        println!("lockman-torture: sections by mode[{}] most_together={}", modes.join(" "), report.most_together);
    }
    if !report.excused.is_empty() {
        let reasons: Vec<String> = report.excused.iter().map(|(k, n)| format!("{k}: {n}")).collect();
        println!("lockman-torture: excused overlaps: {}", reasons.join("; "));
    }
}

fn mount_tmpfs(path: &Path) -> Result<Tmpfs, String> {
    let output = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={TMPFS_SIZE},mode=0700"), "lockman-torture"])
        .arg(path)
        .output()
        .map_err(|e| format!("cannot run mount: {e}"))?;
    if output.status.success() {
        Ok(Tmpfs { path: path.to_owned() })
    } else {
        Err(String::from_utf8_lossy(&output.stderr).trim().to_owned())
    }
}

async fn set_up(
    preset: Preset,
    args: &RunArgs,
    seed: u64,
    lock_dir: &Path,
    relays_wanted: bool,
    tmpfs: Option<Tmpfs>,
) -> Result<Setup, String> {
    let lease = humantime::format_duration(args.lease).to_string().replace(' ', "");
    let legacy_dir = lock_dir.join("legacy");
    let new_dir = lock_dir.join("new");
    for dir in [&legacy_dir, &new_dir] {
        std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    }
    let legacy_url = format!(
        "legacy-file://{}?lock.{RESOURCE}={LEGACY_FILE}&policy.{RESOURCE}=wait&stale_after=30s",
        legacy_dir.display()
    );
    let mut redis = None;
    let mut relays = Vec::new();
    let url_of: Box<dyn Fn(usize) -> String + Send + Sync> = match preset {
        Preset::Memory => {
            let url = format!("memory://torture-{seed}");
            Box::new(move |_| url.clone())
        }
        Preset::File | Preset::FileLegacy => {
            let url = format!("file://{}", new_dir.display());
            Box::new(move |_| url.clone())
        }
        Preset::LeaseFile => {
            let url = format!("file://{}?mode=lease&lease={lease}", new_dir.display());
            Box::new(move |_| url.clone())
        }
        Preset::LegacyFile => {
            let url = legacy_url.clone();
            Box::new(move |_| url.clone())
        }
        Preset::Redis | Preset::RedisLegacy => {
            let server = tokio::task::spawn_blocking(RedisServer::start)
                .await
                .map_err(|e| format!("starting redis-server panicked: {e}"))?
                .ok_or("redis-server is not installed (apt-get install redis-server)")?;
            let port = server.port();
            redis = Some(Arc::new(Mutex::new(server)));
            if relays_wanted {
                for _ in 0..args.workers {
                    let relay = TcpRelay::start(([127, 0, 0, 1], port).into())
                        .await
                        .map_err(|e| format!("cannot start a relay: {e}"))?;
                    relays.push(relay);
                }
            }
            let ports: Vec<u16> = relays.iter().map(TcpRelay::port).collect();
            Box::new(move |slot| {
                let port = ports.get(slot).copied().unwrap_or(port);
                format!("redis://127.0.0.1:{port}/0?lease={lease}&prefix=torture")
            })
        }
    };
    let legacy = preset.legacy();
    Ok(Setup {
        url_of,
        bridge: matches!(preset, Preset::FileLegacy | Preset::RedisLegacy).then_some(legacy_url),
        legacy_path: legacy.then(|| legacy_dir.join(LEGACY_FILE)),
        redis,
        relays,
        tmpfs,
        lock_dir: lock_dir.to_owned(),
    })
}

impl Harness {
    fn start_participants(&mut self, old: bool) -> Result<(), String> {
        for index in 0..self.args.workers {
            let base = format!("w{index}");
            let mut slot = Slot {
                name: base.clone(),
                base,
                generation: 0,
                process: None,
                task: None,
                stall: Arc::new(AtomicU64::new(0)),
            };
            self.spawn_worker(index, &mut slot)?;
            self.slots.push(slot);
        }
        if old && let Some(path) = self.setup.legacy_path.clone() {
            for index in 0..self.args.old {
                let protocol = if index % 2 == 0 { "a" } else { "b" };
                let name = format!("old-{protocol}{index}");
                let child = Command::new(&self.exe)
                    .arg("old")
                    .args(["--name", &name, "--protocol", protocol])
                    .arg("--path")
                    .arg(&path)
                    .arg("--log")
                    .arg(self.dir.join(format!("{name}.jsonl")))
                    .args(["--until-us", &self.until.to_string(), "--seed", &self.rng.u64(..).to_string()])
                    .args(["--hold-min-ms", &self.args.hold_ms.0.to_string()])
                    .args(["--hold-max-ms", &self.args.hold_ms.1.to_string()])
                    .stdout(Stdio::null())
                    .stderr(stderr_file(&self.dir, &name))
                    .kill_on_drop(true)
                    .spawn()
                    .map_err(|e| format!("cannot start an old daemon: {e}"))?;
                self.old.push(child);
            }
        }
        Ok(())
    }

    fn spawn_worker(&mut self, index: usize, slot: &mut Slot) -> Result<(), String> {
        let spec = WorkerSpec {
            name: slot.name.clone(),
            url: (self.setup.url_of)(index),
            bridge: self.setup.bridge.clone(),
            resource: RESOURCE.to_owned(),
            counter: self.counter.clone(),
            log: self.dir.join(format!("{}.jsonl", slot.name)),
            until_us: self.until,
            seed: self.rng.u64(..),
            hold_ms: (self.args.hold_ms.0, self.args.hold_ms.1),
            wait: self.args.wait,
            idle_ms: (self.args.idle_ms.0, self.args.idle_ms.1),
            extend_percent: self.args.extend_percent,
            no_lock: self.args.no_lock,
            check_tokens: !self.args.unchecked_tokens,
            mode: self.args.mode,
        };
        // An in-process map is shared only within one process: its workers are tasks.
        if spec.url.starts_with("memory:") {
            let stall = slot.stall.clone();
            let name = slot.name.clone();
            slot.task = Some(tokio::spawn(async move {
                if let Err(error) = worker::run(spec, Some(stall)).await {
                    eprintln!("lockman-torture: worker {name}: {error}");
                }
            }));
            return Ok(());
        }
        let mut command = Command::new(&self.exe);
        command
            .arg("worker")
            .args(["--name", &spec.name, "--url", &spec.url, "--resource", &spec.resource])
            .arg("--counter")
            .arg(&spec.counter)
            .arg("--log")
            .arg(&spec.log)
            .args(["--until-us", &spec.until_us.to_string(), "--seed", &spec.seed.to_string()])
            .args(["--hold-min-ms", &spec.hold_ms.0.to_string(), "--hold-max-ms", &spec.hold_ms.1.to_string()])
            .args(["--wait-ms", &spec.wait.as_millis().to_string()])
            .args(["--idle-min-ms", &spec.idle_ms.0.to_string(), "--idle-max-ms", &spec.idle_ms.1.to_string()])
            .args(["--extend-percent", &spec.extend_percent.to_string()])
            .args(["--mode", &spec.mode.to_string()]);
        if let Some(bridge) = &spec.bridge {
            command.args(["--bridge", bridge]);
        }
        if spec.no_lock {
            command.arg("--no-lock");
        }
        if !spec.check_tokens {
            command.arg("--unchecked-tokens");
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(stderr_file(&self.dir, &spec.name))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start worker {}: {e}", spec.name))?;
        slot.process = Some(child);
        Ok(())
    }

    /// Injects faults, one at a time, at exponentially distributed intervals
    /// until the deadline.
    async fn inject_until_deadline(&mut self, schedule: &[FaultKind]) {
        loop {
            let mean = self.args.fault_interval.as_secs_f64();
            let pause = Duration::from_secs_f64(-mean * (1.0 - self.rng.f64()).ln());
            let left = self.until.saturating_sub(now_us());
            if schedule.is_empty() || pause.as_micros() as u64 + 300_000 >= left {
                tokio::time::sleep(Duration::from_micros(left)).await;
                return;
            }
            tokio::time::sleep(pause).await;
            let fault = schedule[self.rng.usize(..schedule.len())];
            if let Err(error) = self.inject(fault).await {
                eprintln!("lockman-torture: fault {fault:?} failed: {error}");
            }
        }
    }

    /// The worker to kill or stop: two times in three the one in its critical
    /// section (only one of N holds at a time, and a fault on the holder is
    /// the one that tests the lock), otherwise any.
    fn pick_victim(&mut self) -> usize {
        let any = self.rng.usize(..self.slots.len());
        if self.rng.u32(0..3) == 0 {
            return any;
        }
        self.slots.iter().position(|slot| in_section(&self.dir.join(format!("{}.jsonl", slot.name)))).unwrap_or(any)
    }

    /// Fault durations never run past the deadline (plus a little), so every
    /// fault is healed before the participants finish.
    fn bounded(&self, wanted: Duration) -> Duration {
        wanted.min(Duration::from_micros(self.until.saturating_sub(now_us())))
    }

    async fn inject(&mut self, fault: FaultKind) -> Result<(), String> {
        match fault {
            FaultKind::Kill => {
                let index = self.pick_victim();
                let t = now_us();
                let slot = &mut self.slots[index];
                if let Some(mut child) = slot.process.take() {
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                } else if let Some(task) = slot.task.take() {
                    task.abort();
                    let _ = task.await;
                } else {
                    return Ok(());
                }
                self.faults_log.write(&Fault::Kill { t, w: slot.name.clone() });
                tokio::time::sleep(Duration::from_millis(self.rng.u64(50..=300))).await;
                if now_us() + 200_000 < self.until {
                    let mut slot = std::mem::replace(
                        &mut self.slots[index],
                        Slot {
                            base: String::new(),
                            generation: 0,
                            name: String::new(),
                            process: None,
                            task: None,
                            stall: Arc::new(AtomicU64::new(0)),
                        },
                    );
                    slot.generation += 1;
                    slot.name = format!("{}.{}", slot.base, slot.generation);
                    let spawned = self.spawn_worker(index, &mut slot);
                    self.slots[index] = slot;
                    spawned?;
                }
            }
            FaultKind::Stop => {
                let index = self.pick_victim();
                let wanted = if self.preset.is_some_and(Preset::leases) {
                    self.args.lease.mul_f64(1.1 + self.rng.f64() * 1.4)
                } else {
                    Duration::from_millis(self.rng.u64(200..=1500))
                };
                let duration = self.bounded(wanted);
                let slot = &self.slots[index];
                let t = now_us();
                if let Some(pid) = slot.process.as_ref().and_then(Child::id) {
                    signal(pid, rustix::process::Signal::STOP);
                    tokio::time::sleep(duration).await;
                    signal(pid, rustix::process::Signal::CONT);
                } else if slot.task.is_some() {
                    slot.stall.store(t + duration.as_micros() as u64, Ordering::SeqCst);
                    tokio::time::sleep(duration).await;
                } else {
                    return Ok(());
                }
                self.faults_log.write(&Fault::Stop { t, until: now_us(), w: slot.name.clone() });
            }
            FaultKind::Restart => {
                let Some(server) = self.setup.redis.clone() else { return Ok(()) };
                if self.rng.u32(0..3) == 0 {
                    // A snapshot that a later restart may come back to.
                    let t = now_us();
                    let saved = tokio::task::spawn_blocking({
                        let server = server.clone();
                        move || lock(&server).save()
                    })
                    .await
                    .map_err(|e| e.to_string())?;
                    saved?;
                    self.faults_log.write(&Fault::Save { t });
                    return Ok(());
                }
                let lose_all = self.rng.bool();
                let down = Duration::from_millis(self.rng.u64(0..=300));
                let t = now_us();
                tokio::task::spawn_blocking(move || {
                    let mut server = lock(&server);
                    server.kill();
                    std::thread::sleep(down);
                    if lose_all {
                        server.restart_empty();
                    } else {
                        server.restart();
                    }
                })
                .await
                .map_err(|e| format!("restarting redis-server panicked: {e}"))?;
                let data = if lose_all { "lost" } else { "snapshot" };
                self.faults_log.write(&Fault::Restart { t, until: now_us(), data: data.to_owned() });
            }
            FaultKind::Net => {
                if self.setup.relays.is_empty() {
                    return Ok(());
                }
                let index = self.rng.usize(..self.setup.relays.len());
                let kind = ["delay", "stall", "cut"][self.rng.usize(..3)];
                let wanted = self.args.lease.mul_f64(0.3 + self.rng.f64() * 1.5);
                let duration = self.bounded(wanted);
                let delay = Duration::from_millis(self.rng.u64(20..=200));
                let relay = &self.setup.relays[index];
                let t = now_us();
                match kind {
                    "delay" => {
                        relay.set_delay(Direction::ToServer, delay);
                        relay.set_delay(Direction::ToClient, delay);
                        tokio::time::sleep(duration).await;
                        relay.set_delay(Direction::ToServer, Duration::ZERO);
                        relay.set_delay(Direction::ToClient, Duration::ZERO);
                    }
                    "stall" => {
                        relay.stall(Direction::ToServer);
                        relay.stall(Direction::ToClient);
                        tokio::time::sleep(duration).await;
                        relay.resume(Direction::ToServer);
                        relay.resume(Direction::ToClient);
                    }
                    _ => relay.cut(),
                }
                let w = self.slots.get(index).map(|slot| slot.name.clone()).unwrap_or_default();
                self.faults_log.write(&Fault::Net { t, until: now_us(), w, kind: kind.to_owned() });
            }
            FaultKind::Disk => {
                let Some(tmpfs) = &self.setup.tmpfs else { return Ok(()) };
                let filler = tmpfs.path.join("filler");
                let wanted = Duration::from_millis(self.rng.u64(200..=1500));
                let duration = self.bounded(wanted);
                let t = now_us();
                fill(&filler);
                tokio::time::sleep(duration).await;
                let _ = std::fs::remove_file(&filler);
                self.faults_log.write(&Fault::DiskFull { t, until: now_us() });
            }
            FaultKind::Old => {}
        }
        Ok(())
    }

    /// Heals every fault, waits for the participants to finish (killing any
    /// that do not within a bound), and returns when the run ended.
    async fn finish(&mut self) -> u64 {
        for relay in &self.setup.relays {
            relay.resume(Direction::ToServer);
            relay.resume(Direction::ToClient);
        }
        if let Some(server) = self.setup.redis.clone() {
            let _ = tokio::task::spawn_blocking(move || {
                let mut server = lock(&server);
                if !server.is_running() {
                    server.restart();
                }
            })
            .await;
        }
        let grace = self.args.wait + self.args.lease * 3 + Duration::from_secs(10);
        let deadline = tokio::time::Instant::now() + grace;
        for slot in &mut self.slots {
            if let Some(child) = &mut slot.process {
                if let Some(pid) = child.id() {
                    signal(pid, rustix::process::Signal::CONT);
                }
                if tokio::time::timeout_at(deadline, child.wait()).await.is_err() {
                    eprintln!("lockman-torture: worker {} did not finish; killing it", slot.name);
                    let _ = child.start_kill();
                    let _ = child.wait().await;
                }
            }
            if let Some(task) = slot.task.take()
                && tokio::time::timeout_at(deadline, task).await.is_err()
            {
                eprintln!("lockman-torture: worker {} did not finish", slot.name);
            }
        }
        for child in &mut self.old {
            if tokio::time::timeout_at(deadline, child.wait()).await.is_err() {
                let _ = child.start_kill();
                let _ = child.wait().await;
            }
        }
        let end = now_us();
        // Servers, relays and the tmpfs go with the setup.
        self.setup.relays.clear();
        self.setup.redis = None;
        self.setup.tmpfs = None;
        let _ = &self.setup.lock_dir;
        end
    }
}

/// Whether the last event in a worker's log says it is in its critical section.
fn in_section(log: &Path) -> bool {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut file) = std::fs::File::open(log) else { return false };
    let Ok(len) = file.seek(SeekFrom::End(0)) else { return false };
    let mut tail = Vec::new();
    if file.seek(SeekFrom::Start(len.saturating_sub(512))).is_err() || file.read_to_end(&mut tail).is_err() {
        return false;
    }
    let text = String::from_utf8_lossy(&tail);
    let Some(last) = text.trim_end().rsplit('\n').next() else { return false };
    ["\"grant\"", "\"extend\"", "\"read\"", "\"write_start\"", "\"write\""]
        .iter()
        .any(|ev| last.contains(&format!("\"ev\":{ev}")))
}

fn lock(server: &Mutex<RedisServer>) -> std::sync::MutexGuard<'_, RedisServer> {
    server.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn signal(pid: u32, signal: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pid).ok().and_then(rustix::process::Pid::from_raw) {
        let _ = rustix::process::kill_process(pid, signal);
    }
}

fn stderr_file(dir: &Path, name: &str) -> Stdio {
    match std::fs::File::create(dir.join(format!("{name}.stderr"))) {
        Ok(file) => Stdio::from(file),
        Err(_) => Stdio::null(),
    }
}

/// Fills the file system holding `path` until it is full.
fn fill(path: &Path) {
    use std::io::Write;
    let Ok(mut file) = std::fs::File::create(path) else { return };
    let chunk = vec![0u8; 64 * 1024];
    while file.write_all(&chunk).is_ok() {}
    let byte = [0u8; 1];
    while file.write_all(&byte).is_ok() {}
}
