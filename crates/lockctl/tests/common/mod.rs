//! Running the built `lockctl` binary from black-box tests: a private
//! working directory and environment, bounded waits, and processes that are
//! killed when a test fails.

#![allow(dead_code)] // each test binary uses its own part of this module

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{Receiver, RecvTimeoutError, channel};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};

/// Longest any single lockctl invocation in these tests may take.
pub const STEP: Duration = Duration::from_secs(20);

/// Environment variables that would make lockctl read someone else's configuration.
const FOREIGN_ENV: &[&str] = &[
    "LOCKMAN_URL",
    "LOCKMAN_CONFIG",
    "LOCKMAN_STATUS_URL",
    "LOCKMAN_LEGACY_URL",
    "LOCKMAN_LEGACY_BRIDGE",
    "LOCKMAN_REDIS_PASSWORD",
    "LOCKMAN_REDIS__PASSWORD_FILE",
    "LOCKMAN_DEFAULT_WAIT",
    "LOCKMAN_LEASE",
    "USE_NEW_LOCKS",
    "RUST_LOG",
];

/// A private directory to run lockctl in (no stray `lockman.toml`), and to keep lock files in.
pub struct Sandbox {
    dir: tempfile::TempDir,
}

impl Sandbox {
    pub fn new() -> Self {
        Sandbox { dir: tempfile::tempdir().expect("cannot create a temporary directory") }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// A directory inside the sandbox, as a `SCHEME:///path` URL.
    pub fn url(&self, scheme: &str, name: &str, query: &str) -> String {
        let dir = self.path().join(name);
        let query = if query.is_empty() { String::new() } else { format!("?{query}") };
        format!("{scheme}://{}{query}", dir.display())
    }

    /// `lockctl ARGS` with a clean environment, in the sandbox.
    pub fn lockctl(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_lockctl"));
        command.args(args).current_dir(self.path()).stdin(Stdio::null());
        for name in FOREIGN_ENV {
            command.env_remove(name);
        }
        command
    }

    /// `lockctl --url URL ARGS`.
    pub fn at(&self, url: &str, args: &[&str]) -> Command {
        let mut all = vec!["--url", url];
        all.extend_from_slice(args);
        self.lockctl(&all)
    }

    pub fn file(&self, name: &str) -> PathBuf {
        self.path().join(name)
    }
}

/// What a finished lockctl said.
#[derive(Debug)]
pub struct Output {
    /// The exit code; `None` if a signal killed it.
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `command` to completion within [`STEP`].
pub fn output(command: Command) -> Output {
    let mut process = Proc::spawn(command);
    let status = process.wait(STEP);
    process.output(status)
}

/// A running process whose output is collected by background threads.
pub struct Proc {
    child: Child,
    lines: Receiver<String>,
    stdout: Arc<Mutex<String>>,
    stderr: Arc<Mutex<String>>,
    pumps: Vec<JoinHandle<()>>,
    /// A process the command started and that may outlive it (killed on drop).
    pub grandchild: Option<i32>,
    description: String,
}

impl Proc {
    pub fn spawn(mut command: Command) -> Proc {
        let description = format!("{command:?}");
        command.stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = command.spawn().unwrap_or_else(|e| panic!("cannot start {description}: {e}"));
        let stdout = Arc::new(Mutex::new(String::new()));
        let stderr = Arc::new(Mutex::new(String::new()));
        let (sender, lines) = channel();
        let out_pipe = child.stdout.take().expect("stdout is piped");
        let err_pipe = child.stderr.take().expect("stderr is piped");
        let out_buffer = stdout.clone();
        let out = thread::spawn(move || {
            for line in BufReader::new(out_pipe).lines() {
                let Ok(line) = line else { break };
                out_buffer.lock().unwrap().push_str(&format!("{line}\n"));
                let _ = sender.send(line);
            }
        });
        let err_buffer = stderr.clone();
        let err = thread::spawn(move || {
            let mut pipe = err_pipe;
            let mut chunk = [0u8; 4096];
            while let Ok(n @ 1..) = pipe.read(&mut chunk) {
                err_buffer.lock().unwrap().push_str(&String::from_utf8_lossy(&chunk[..n]));
            }
        });
        Proc { child, lines, stdout, stderr, pumps: vec![out, err], grandchild: None, description }
    }

    pub fn pid(&self) -> i32 {
        i32::try_from(self.child.id()).expect("pid fits in i32")
    }

    /// Waits for a stdout line containing `needle`, and returns it.
    pub fn wait_for_line(&mut self, needle: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(RecvTimeoutError::Timeout) => {
                    panic!(
                        "no line with {needle:?} from {} within {timeout:?}; stderr: {}",
                        self.description,
                        self.stderr()
                    )
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = self.child.wait().ok();
                    panic!(
                        "{} closed stdout ({status:?}) before printing {needle:?}; stdout: {}; stderr: {}",
                        self.description,
                        self.stdout(),
                        self.stderr()
                    )
                }
            }
        }
    }

    /// Waits for a line `ready PID` (printed by the command's shell) and
    /// remembers PID, so the command is killed even if lockctl is.
    pub fn wait_ready(&mut self) {
        let line = self.wait_for_line("ready", STEP);
        self.grandchild = line.split_whitespace().nth(1).and_then(|pid| pid.parse().ok());
    }

    /// Waits for the process to exit; kills it and fails the test after `timeout`.
    pub fn wait(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = Instant::now() + timeout;
        loop {
            match self.child.try_wait() {
                Ok(Some(status)) => return status,
                Ok(None) if Instant::now() < deadline => thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    self.kill();
                    panic!("{} did not exit within {timeout:?}; stderr: {}", self.description, self.stderr());
                }
                Err(e) => panic!("cannot wait for {}: {e}", self.description),
            }
        }
    }

    /// The collected output after exit (waits a bounded time for the pipes to close).
    pub fn output(&mut self, status: ExitStatus) -> Output {
        let deadline = Instant::now() + Duration::from_secs(5);
        while self.pumps.iter().any(|p| !p.is_finished()) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(5));
        }
        Output { code: status.code(), stdout: self.stdout(), stderr: self.stderr() }
    }

    pub fn signal(&self, signal: Signal) {
        send(self.pid(), signal);
    }

    pub fn stdout(&self) -> String {
        self.stdout.lock().unwrap().clone()
    }

    pub fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(pid) = self.grandchild.take() {
            send(pid, Signal::KILL);
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            self.kill();
        } else if let Some(pid) = self.grandchild.take() {
            send(pid, Signal::KILL);
        }
    }
}

pub fn send(pid: i32, signal: Signal) {
    if let Some(pid) = Pid::from_raw(pid) {
        let _ = kill_process(pid, signal);
    }
}

/// A shell command that prints `ready PID` and then waits (at most about
/// 30 s, so a leaked one ends by itself) to be signalled, saying `got-SIG`
/// and exiting `code` on SIGTERM / SIGINT.
pub fn waiting_shell(code: i32) -> String {
    format!(
        "trap 'echo got-TERM; exit {code}' TERM; trap 'echo got-INT; exit {code}' INT; echo \"ready $$\"; \
         i=0; while [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done; echo timed-out; exit 99"
    )
}

/// Starts `lockctl run ARGS RESOURCE -- <waiting shell>` holding `resource`
/// with a command that waits for a signal, and waits until it runs (so the
/// lock is held).
pub fn hold(sandbox: &Sandbox, url: &str, resource: &str, extra: &[&str]) -> Proc {
    let shell = waiting_shell(0);
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[resource, "--", "sh", "-c", &shell]);
    let mut holder = Proc::spawn(sandbox.at(url, &args));
    holder.wait_ready();
    holder
}

/// Polls `check` every 50 ms until it is true, failing after `timeout`.
pub fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !check() {
        assert!(Instant::now() < deadline, "{what}: not within {timeout:?}");
        thread::sleep(Duration::from_millis(50));
    }
}
