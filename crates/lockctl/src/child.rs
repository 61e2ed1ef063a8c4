//! Starting `run`'s command so that it never runs outside the lock, even
//! when lockctl itself is killed (SIGKILL, the OOM killer, a supervisor's
//! hard stop) and cannot release anything or stop anyone.
//!
//! Three layers, each covering what the one before cannot:
//!
//! 1. **The kernel lock is inherited** (file://, legacy-file://'s sidecar,
//!    a bridge whose primary is one of them): the command gets the locked
//!    descriptor ([`LockGuard::lock_fd`], its number in `LOCKMAN_LOCK_FD`),
//!    so the lock outlives lockctl until every process holding that
//!    descriptor has exited or closed it, as with `flock(1)`. Exact, but
//!    only for kernel locks and only for processes that keep the descriptor.
//! 2. **Parent-death signal** (Linux): the command gets SIGKILL from the
//!    kernel as lockctl exits — queued before lockctl can even be seen dead
//!    (before it is a zombie), so neither a lease file's dead-pid check nor
//!    a Redis lease expiry can hand the lock on while the command still
//!    executes. Only the command itself: the kernel does not pass the
//!    setting on to processes the command starts.
//! 3. **The reaper** (when lockctl has no controlling terminal: services,
//!    cron, CI): the command runs in a new process group, led by a small
//!    helper (this same binary, [`REAPER_ARG`]) that holds a pipe from
//!    lockctl. When lockctl dies the pipe closes and the reaper SIGKILLs the
//!    whole group — the command and every process it started that stayed in
//!    its group — within milliseconds (a scheduling delay, not a guarantee:
//!    on lease files this races with a newcomer breaking the lease of a
//!    holder whose pid is gone). With a controlling terminal the command
//!    stays in lockctl's process group, so Ctrl-C, Ctrl-Z, `fg`/`bg` and
//!    reading the terminal keep working; then layers 1 and 2 apply alone.
//!
//! When the command exits normally, lockctl tells the reaper to stand down
//! and releases the lock: processes the command left running in the
//! background are not waited for and no longer hold the lock, even if they
//! kept the descriptor (the release unlocks it for every sharer). That
//! differs from `flock(1)`, whose lock stays with such processes.

use std::ffi::{OsStr, OsString};
use std::io::{self, Read, Write};
use std::os::fd::{AsRawFd, BorrowedFd, RawFd};
use std::process::{ExitCode, Stdio};
use std::time::Duration;

use lockman::LockGuard;
use rustix::process::{Pid, Signal, kill_process, kill_process_group};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::process::{Child, ChildStdin, Command};

/// `lockctl --lockctl-internal-reaper`: how lockctl starts its reaper (not a
/// user command; `main` checks for it before parsing the command line).
pub const REAPER_ARG: &str = "--lockctl-internal-reaper";

/// The environment variable naming the inherited lock descriptor.
pub const LOCK_FD_ENV: &str = "LOCKMAN_LOCK_FD";

/// What the reaper says once it is ready, and what lockctl says when the command is done.
const READY: &[u8] = b"ready\n";
const DONE: &[u8] = b"done\n";

/// How long lockctl waits for the reaper to start, and to leave after `done`.
const REAPER_START: Duration = Duration::from_secs(10);
const REAPER_EXIT: Duration = Duration::from_secs(2);

/// A running command, and where signals meant for it go.
pub struct Started {
    /// The command's process.
    pub child: Child,
    /// The reaper, when the command has a process group of its own.
    reaper: Option<Reaper>,
}

impl Started {
    /// Sends `signal` to the command: to its whole process group when it has
    /// one of its own (the reaper ignores it), else to the command alone.
    pub fn signal(&self, signal: Signal) -> Option<u32> {
        let pid = self.child.id()?;
        let result = match &self.reaper {
            Some(reaper) => kill_process_group(reaper.group, signal),
            None => match i32::try_from(pid).ok().and_then(Pid::from_raw) {
                Some(pid) => kill_process(pid, signal),
                None => return None,
            },
        };
        if let Err(e) = result {
            tracing::warn!(%e, pid, "cannot signal the command");
        }
        Some(pid)
    }

    /// Whether the command shares lockctl's process group (and so gets the
    /// terminal's signals itself).
    pub fn shares_our_group(&self) -> bool {
        self.reaper.is_none()
    }

    /// The command has exited: the reaper stands down, leaving alone
    /// whatever the command left running.
    pub async fn finish(&mut self) {
        if let Some(reaper) = self.reaper.take() {
            reaper.stand_down().await;
        }
    }
}

/// Why the command could not be started.
pub enum StartError {
    /// The command itself (not found, not executable, ...).
    Command(io::Error),
    /// The reaper (lockctl could not start itself again).
    Reaper(String),
}

/// lockman's variables whose value is a URL, which may hold a password.
const URL_ENV: [&str; 4] = ["LOCKMAN_URL", "LOCKMAN_STATUS_URL", "LOCKMAN_LEGACY_URL", "LOCKMAN_LEGACY_BRIDGE"];

/// Keeps lockman's secrets out of the command's environment (where every
/// process it starts, and anything that dumps its environment — a crash
/// report, `ps e`, a CI log — would see them): `LOCKMAN_REDIS_PASSWORD`, and
/// each URL variable whose URL holds a password. URLs without one stay, so
/// the command can run lockctl (or a lockman program) on the same backends.
fn strip_secrets(command: &mut Command) {
    command.env_remove(lockman::REDIS_PASSWORD_ENV);
    for name in URL_ENV {
        if let Some(value) = std::env::var_os(name) {
            let value = value.to_string_lossy();
            if lockman::redact_url(&value) != value {
                tracing::debug!(variable = name, "not passing a URL with a password on to the command");
                command.env_remove(name);
            }
        }
    }
}

/// Starts the command under `guard`, with the lock's details in its
/// environment and lockman's secrets not (unless `keep_env`), protected as
/// the module documentation says.
///
/// Must be called on the thread that lives as long as lockctl (`main`'s,
/// which runs `block_on`): Linux sends the parent-death signal when the
/// *thread* that forked the child exits.
pub async fn start(
    guard: &LockGuard,
    resource: &str,
    program: &OsStr,
    arguments: &[OsString],
    keep_env: bool,
) -> Result<Started, StartError> {
    debug_assert_eq!(std::thread::current().name(), Some("main"), "the command must be forked by the main thread");
    let reaper = if has_controlling_terminal() {
        tracing::debug!("lockctl has a controlling terminal: the command stays in its process group, without a reaper");
        None
    } else {
        Some(Reaper::start().await.map_err(StartError::Reaper)?)
    };

    let info = guard.info();
    let mut command = Command::new(program);
    command
        .args(arguments)
        .env("LOCKMAN_RESOURCE", resource)
        .env("LOCKMAN_HOLDER", info.holder.as_str())
        .env("LOCKMAN_FENCING_TOKEN", guard.fencing_token().to_string());
    if !keep_env {
        strip_secrets(&mut command);
    }
    let lock_fd = guard.lock_fd().map(|fd| fd.as_raw_fd());
    match lock_fd {
        Some(fd) => command.env(LOCK_FD_ENV, fd.to_string()),
        // Not one inherited from an outer `lockctl run`: that number means nothing here.
        None => command.env_remove(LOCK_FD_ENV),
    };
    if let Some(reaper) = &reaper {
        command.process_group(reaper.group.as_raw_pid());
    }
    let parent = rustix::process::getpid();
    // SAFETY: `in_child` makes only async-signal-safe system calls and does
    // not allocate, as code between fork and exec must.
    unsafe {
        command.pre_exec(move || in_child(lock_fd, parent));
    }
    match command.spawn() {
        Ok(child) => Ok(Started { child, reaper }),
        Err(e) => {
            if let Some(reaper) = reaper {
                reaper.stand_down().await;
            }
            Err(StartError::Command(e))
        }
    }
}

/// In the child, between fork and exec: hand the lock descriptor on, and
/// arrange to die with lockctl.
fn in_child(lock_fd: Option<RawFd>, parent: Pid) -> io::Result<()> {
    if let Some(fd) = lock_fd {
        // SAFETY: the descriptor is open: the guard that owns it outlives
        // the spawn, and the child has a copy under the same number.
        let fd = unsafe { BorrowedFd::borrow_raw(fd) };
        // Clearing FD_CLOEXEC in the child only: lockctl's own copy keeps it.
        rustix::io::fcntl_setfd(fd, rustix::io::FdFlags::empty())?;
    }
    #[cfg(target_os = "linux")]
    {
        rustix::process::set_parent_process_death_signal(Some(Signal::KILL))?;
        // lockctl may have died before the line above: then nobody will
        // send the signal, and the command must not start at all.
        if rustix::process::getppid() != Some(parent) {
            return Err(io::Error::from(rustix::io::Errno::SRCH));
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = parent;
    Ok(())
}

/// Whether lockctl has a controlling terminal. Then a process group of the
/// command's own would take it out of the terminal's job control: it could
/// not read the terminal (SIGTTIN) and would miss Ctrl-C and Ctrl-Z.
fn has_controlling_terminal() -> bool {
    use rustix::fs::{Mode, OFlags};

    // Non-blocking: opening a serial line can otherwise wait for its carrier.
    let flags = OFlags::RDONLY | OFlags::NOCTTY | OFlags::NONBLOCK | OFlags::CLOEXEC;
    rustix::fs::open("/dev/tty", flags, Mode::empty()).is_ok()
}

/// lockctl's end of its reaper.
struct Reaper {
    process: Child,
    /// The reaper's stdin: closing it without [`DONE`] (lockctl died) makes
    /// it kill the group.
    pipe: ChildStdin,
    /// The command's process group (the reaper's pid; it leads the group).
    group: Pid,
}

impl Reaper {
    /// Starts the reaper in a new process group and waits until it is ready
    /// (ignoring the signals the command's group may get).
    async fn start() -> Result<Reaper, String> {
        let mut last = None;
        for program in self_exe() {
            let mut command = Command::new(&program);
            command
                .arg(REAPER_ARG)
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                // Its stderr is lockctl's, so a failure of its own is seen.
                .stderr(Stdio::inherit())
                .process_group(0);
            match command.spawn() {
                Ok(process) => return Reaper::await_ready(process).await,
                Err(e) => last = Some(format!("{}: {e}", program.to_string_lossy())),
            }
        }
        Err(format!("cannot start {}", last.unwrap_or_else(|| "lockctl".to_owned())))
    }

    async fn await_ready(mut process: Child) -> Result<Reaper, String> {
        let (Some(pipe), Some(mut ready), Some(group)) = (
            process.stdin.take(),
            process.stdout.take(),
            process.id().and_then(|pid| i32::try_from(pid).ok()).and_then(Pid::from_raw),
        ) else {
            let _ = process.start_kill();
            return Err("it started without its pipes".to_owned());
        };
        let mut said = [0u8; READY.len()];
        match tokio::time::timeout(REAPER_START, ready.read_exact(&mut said)).await {
            Ok(Ok(_)) if said == READY => Ok(Reaper { process, pipe, group }),
            outcome => {
                let _ = process.start_kill();
                Err(match outcome {
                    Err(_) => format!("it did not start within {REAPER_START:?}"),
                    Ok(Err(e)) => format!("it did not start: {e}"),
                    Ok(Ok(_)) => format!("it said {:?} instead of ready", String::from_utf8_lossy(&said)),
                })
            }
        }
    }

    /// Tells the reaper the command is done, and waits for it to leave.
    async fn stand_down(mut self) {
        let told = async {
            self.pipe.write_all(DONE).await?;
            self.pipe.shutdown().await
        };
        if let Err(e) = told.await {
            // It is gone already (its group was killed): nothing to stand down.
            tracing::debug!(%e, "cannot reach the reaper");
        }
        drop(self.pipe);
        match tokio::time::timeout(REAPER_EXIT, self.process.wait()).await {
            Ok(Ok(status)) if status.success() => {}
            Ok(Ok(status)) => tracing::debug!(%status, "the reaper ended"),
            Ok(Err(e)) => tracing::warn!(%e, "cannot wait for the reaper"),
            Err(_) => {
                tracing::warn!("the reaper did not leave; stopping it");
                let _ = self.process.start_kill();
            }
        }
    }
}

/// Ways to run this binary again: `/proc/self/exe` works even when the file
/// was replaced (an upgrade) after lockctl started.
fn self_exe() -> Vec<OsString> {
    let mut candidates = Vec::new();
    if cfg!(target_os = "linux") {
        candidates.push(OsString::from("/proc/self/exe"));
    }
    if let Ok(path) = std::env::current_exe() {
        candidates.push(path.into_os_string());
    }
    if let Some(argv0) = std::env::args_os().next() {
        candidates.push(argv0);
    }
    candidates
}

/// The reaper's `main`: waits until lockctl either says the command is done
/// (exit quietly) or goes away without saying so (SIGKILL the process group
/// this reaper shares with the command, itself included).
pub fn reaper_main() -> ExitCode {
    // Named for `ps` and `top` (it was started as /proc/self/exe, so "exe").
    #[cfg(target_os = "linux")]
    let _ = rustix::thread::set_name(c"lockctl-reaper");
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(e) => {
            crate::output::note(&format!("the reaper of `run`'s command cannot start: {e}"));
            return ExitCode::from(crate::exit::OSERR);
        }
    };
    match runtime.block_on(await_lockctl()) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => {
            // lockctl is gone and cannot stop the command itself.
            let _ = rustix::process::kill_current_process_group(Signal::KILL);
            ExitCode::from(crate::exit::SOFTWARE) // not reached: the signal includes us
        }
        Err(e) => {
            crate::output::note(&format!("the reaper of `run`'s command failed: {e}"));
            ExitCode::from(crate::exit::OSERR)
        }
    }
}

/// `Ok(true)` if lockctl said the command is done, `Ok(false)` if its pipe
/// closed without that.
async fn await_lockctl() -> io::Result<bool> {
    use tokio::signal::unix::{SignalKind, signal};

    // Signals for the command's group (forwarded by lockctl, a script's
    // `kill 0`) must not end the reaper: handling them replaces the default
    // action (terminate) with nothing.
    let kinds = [
        SignalKind::interrupt(),
        SignalKind::terminate(),
        SignalKind::hangup(),
        SignalKind::quit(),
        SignalKind::user_defined1(),
        SignalKind::user_defined2(),
        SignalKind::alarm(),
        SignalKind::pipe(),
    ];
    let mut streams = Vec::with_capacity(kinds.len());
    for kind in kinds {
        streams.push(signal(kind)?);
    }
    let mut stdout = io::stdout();
    stdout.write_all(READY)?;
    stdout.flush()?;

    let (said, heard) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        let mut text = Vec::new();
        let read = io::stdin().read_to_end(&mut text);
        let _ = said.send(read.map(|_| text));
    });
    let drain = std::future::poll_fn(|cx| {
        for stream in &mut streams {
            while let std::task::Poll::Ready(Some(())) = stream.poll_recv(cx) {}
        }
        std::task::Poll::<std::convert::Infallible>::Pending
    });
    tokio::select! {
        heard = heard => Ok(matches!(heard, Ok(Ok(text)) if text == DONE)),
        never = drain => match never {},
    }
}
