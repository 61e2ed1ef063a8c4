//! What every private-server fixture offers — [`ServerFixture`] — and the
//! pieces they share.
//!
//! A fault test needs a server of its own: started on a free loopback port
//! (never a well-known one, so a machine's shared server is never touched),
//! with its files in a private temporary directory, crashed, paused, and
//! restarted on the same port with or without its data. Each fixture
//! ([`RedisServer`](crate::redis_server::RedisServer),
//! [`EtcdServer`](crate::etcd_server::EtcdServer); SQL servers to come) implements [`ServerFixture`], so a harness such as
//! `lockman-torture` can inject the same faults into any of them.
//!
//! If a fixture's server program is not installed, [`ServerFixture::start`]
//! prints a loud `SKIPPED` line to stderr and returns `None`, so the test
//! passes without running — unless the fixture's
//! [`REQUIRE_ENV`](ServerFixture::REQUIRE_ENV) (`LOCKMAN_REQUIRE_<NAME>`) is
//! `1`, as in CI, which turns the skip into a failure.
//!
//! This module is Unix-only (fixtures send signals to their servers).
//!
//! ```no_run
//! use lockman_testkit::fixture::ServerFixture;
//!
//! /// Crashes the server, then brings it back with nothing in it.
//! fn crash_and_lose_everything<S: ServerFixture>(server: &mut S) {
//!     let port = server.port();
//!     server.kill();
//!     assert!(!server.is_running());
//!     server.restart_empty();
//!     assert_eq!(server.port(), port);
//! }
//!
//! let Some(mut server) = lockman_testkit::redis_server::RedisServer::start() else { return };
//! crash_and_lose_everything(&mut server);
//! ```

#![cfg(unix)]

use std::fs::{self, OpenOptions};
use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal, kill_process};
use tempfile::TempDir;

/// A server process private to one test, on a loopback port of its own.
///
/// Dropping a fixture kills its server (`SIGKILL`, which also ends a paused
/// one), reaps it and removes its directory, so no server outlives its test
/// (unless the test process itself is killed).
pub trait ServerFixture: Sized {
    /// The server program, as named in messages (`redis-server`).
    const PROGRAM: &'static str;

    /// The environment variable (`LOCKMAN_REQUIRE_<NAME>`) that, set to `1`,
    /// turns a missing [`PROGRAM`](Self::PROGRAM) from a skip into a test
    /// failure.
    const REQUIRE_ENV: &'static str;

    /// Starts a private server on a free loopback port and waits until it
    /// answers.
    ///
    /// Returns `None` after printing a `SKIPPED` line to stderr if the server
    /// program is not installed, unless [`REQUIRE_ENV`](Self::REQUIRE_ENV) is `1`.
    ///
    /// # Panics
    ///
    /// If the program is missing and [`REQUIRE_ENV`](Self::REQUIRE_ENV) is
    /// `1`; if the server exits or never answers (the message holds the tail
    /// of its log).
    fn start() -> Option<Self>;

    /// The URL to give a backend to use this server.
    fn url(&self) -> String;

    /// The loopback port the server listens on; it stays the same across
    /// restarts.
    fn port(&self) -> u16;

    /// The directory holding the server's files and logs, removed when the
    /// fixture is dropped.
    fn dir(&self) -> &Path;

    /// Crashes the server: `SIGKILL` (also when it is paused), and reaps it.
    /// Does nothing if it is not running.
    fn kill(&mut self);

    /// Stops the server with `SIGSTOP`: it keeps its port and data, the
    /// kernel still accepts connections, but nothing is answered until
    /// [`resume`](Self::resume).
    ///
    /// # Panics
    ///
    /// If the server is not running.
    fn pause(&self);

    /// Continues a server stopped by [`pause`](Self::pause) (`SIGCONT`).
    ///
    /// # Panics
    ///
    /// If the server is not running.
    fn resume(&self);

    /// Whether the server process is alive (a paused one is). Reaps it if it
    /// has exited.
    fn is_running(&mut self) -> bool;

    /// Kills the server if it is running and starts it again on the same
    /// port, keeping the data it had made durable (each fixture says what
    /// that is), then waits until it answers.
    ///
    /// # Panics
    ///
    /// If the server cannot start again or never answers.
    fn restart(&mut self);

    /// Like [`restart`](Self::restart), but the new server starts empty: all
    /// data is lost, as on a new machine.
    ///
    /// # Panics
    ///
    /// As for [`restart`](Self::restart).
    fn restart_empty(&mut self);
}

/// The process, port and private directory of one fixture's server: the
/// spawning, signalling, readiness polling and log reading every fixture needs.
#[derive(Debug)]
pub(crate) struct ServerProcess {
    program: &'static str,
    /// The running server; `None` before the first spawn, after
    /// [`kill`](Self::kill), or once it has been seen to exit.
    child: Option<Child>,
    port: u16,
    /// Logs the server writes in `dir`, besides [`STDIO_LOG`].
    logs: &'static [&'static str],
    dir: TempDir,
}

/// The file in the server's directory that receives its stdout and stderr.
pub(crate) const STDIO_LOG: &str = "stdio.log";

impl ServerProcess {
    /// A process of `program`, not yet spawned, with a new private directory
    /// and no port; `logs` are the files the server will write in the
    /// directory, whose tails go into panic messages.
    ///
    /// # Panics
    ///
    /// If the temporary directory cannot be created.
    pub(crate) fn new(program: &'static str, logs: &'static [&'static str]) -> ServerProcess {
        let dir = tempfile::Builder::new()
            .prefix(&format!("lockman-{program}-"))
            .tempdir()
            .unwrap_or_else(|error| panic!("cannot create a temporary directory for {program}: {error}"));
        ServerProcess { program, child: None, port: 0, logs, dir }
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// Picks the port the next spawn uses.
    pub(crate) fn set_port(&mut self, port: u16) {
        self.port = port;
    }

    pub(crate) fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Spawns `command` (the server, told to use [`port`](Self::port) and
    /// [`dir`](Self::dir)) with its stdout and stderr appended to
    /// [`STDIO_LOG`]. The server must not be running.
    ///
    /// # Errors
    ///
    /// As for [`Command::spawn`]: kind `NotFound` if the program is not on `PATH`.
    pub(crate) fn spawn(&mut self, mut command: Command) -> io::Result<()> {
        debug_assert!(self.child.is_none(), "spawn while {} is running", self.program);
        let stdio_log = OpenOptions::new().create(true).append(true).open(self.dir().join(STDIO_LOG))?;
        let child = command.stdin(Stdio::null()).stdout(stdio_log.try_clone()?).stderr(stdio_log).spawn()?;
        self.child = Some(child);
        Ok(())
    }

    /// Polls `ready(port, pid)` every 20 ms until it holds, for the server
    /// just spawned. `Err` with its exit status if the server exits first
    /// (the caller reads [`log_tail`](Self::log_tail) to learn why).
    ///
    /// # Panics
    ///
    /// If the server is not ready within `timeout` (with the log tail).
    pub(crate) fn wait_ready(
        &mut self,
        timeout: Duration,
        mut ready: impl FnMut(u16, u32) -> bool,
    ) -> Result<(), ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            let child = self.child.as_mut().expect("wait_ready runs after spawn");
            let pid = child.id();
            match child.try_wait() {
                Ok(None) => {}
                Ok(Some(status)) => {
                    self.child = None;
                    return Err(status);
                }
                Err(error) => panic!("cannot check on {} (pid {pid}): {error}", self.program),
            }
            if ready(self.port, pid) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                panic!(
                    "{} on port {} was not ready within {timeout:?}; log tail:\n{}",
                    self.program,
                    self.port,
                    self.log_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server with `SIGKILL` and reaps it; nothing if not running.
    pub(crate) fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            // Fails only if the child has already exited; `wait` reaps it either way.
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Sends `SIGSTOP` and returns once every thread of the server is
    /// stopped: the signal stops a thread only when the kernel next gets to
    /// it, so a thread running on another CPU could still answer a request
    /// sent just after `kill` returned.
    pub(crate) fn pause(&self) {
        self.signal(Signal::STOP, "pause");
        let Some(child) = &self.child else { return };
        let tasks = std::path::PathBuf::from(format!("/proc/{}/task", child.id()));
        let deadline = std::time::Instant::now() + Duration::from_secs(2);
        while std::time::Instant::now() < deadline {
            let Ok(entries) = std::fs::read_dir(&tasks) else { return };
            let all_stopped = entries.flatten().all(|task| {
                // `pid (comm) S ...`: the state follows the last `)`.
                std::fs::read_to_string(task.path().join("stat")).is_ok_and(|stat| {
                    stat.rsplit_once(')')
                        .is_some_and(|(_, rest)| matches!(rest.trim_start().chars().next(), Some('T' | 't')))
                })
            });
            if all_stopped {
                return;
            }
            thread::sleep(Duration::from_millis(1));
        }
    }

    pub(crate) fn resume(&self) {
        self.signal(Signal::CONT, "resume");
    }

    pub(crate) fn is_running(&mut self) -> bool {
        let Some(child) = &mut self.child else { return false };
        match child.try_wait() {
            Ok(None) => true,
            Ok(Some(_)) | Err(_) => {
                self.kill();
                false
            }
        }
    }

    fn signal(&self, signal: Signal, what: &str) {
        let program = self.program;
        let child = self.child.as_ref().unwrap_or_else(|| panic!("{what}() on a {program} that is not running"));
        // The child is not reaped until `kill`/`is_running`, so its pid cannot
        // have been reused.
        kill_process(Pid::from_child(child), signal)
            .unwrap_or_else(|error| panic!("{what}(): cannot signal {program} (pid {}): {error}", child.id()));
    }

    /// The last lines of the server's logs and of its stdout/stderr, for
    /// panic messages.
    pub(crate) fn log_tail(&self) -> String {
        const LINES: usize = 30;
        let mut out = String::new();
        for name in self.logs.iter().chain(&[STDIO_LOG]) {
            let path = self.dir().join(name);
            let text = match fs::read(&path) {
                Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
                Err(error) => format!("(cannot read: {error})"),
            };
            let lines: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} ---\n", path.display()));
            for line in &lines[lines.len().saturating_sub(LINES)..] {
                out.push_str(line);
                out.push('\n');
            }
        }
        out
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        // SIGKILL also ends a paused (stopped) server; the directory goes after.
        self.kill();
    }
}

/// Reports why no server can run (`problem`, with its fix): `None` with a
/// loud `SKIPPED` line, or a panic when `require_env` is `1`.
pub(crate) fn skip_or_panic<T>(require_env: &str, problem: &str) -> Option<T> {
    if std::env::var_os(require_env).is_some_and(|value| value == "1") {
        panic!("{problem}; {require_env}=1, so this fails the test (unset {require_env} to skip these tests)");
    }
    eprintln!("SKIPPED: {problem}, or set {require_env}=1 to make this a failure");
    None
}

/// The well-known ports of the servers a machine may share (Redis, etcd
/// client and peer), which a fixture must never take.
const SHARED_PORTS: [u16; 3] = [6379, 2379, 2380];

/// A loopback port that was free a moment ago, and is none of the shared
/// servers' ports nor any of `taken`.
pub(crate) fn free_port_but(taken: &[u16]) -> u16 {
    loop {
        let listener =
            TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("cannot bind 127.0.0.1:0 to find a free port");
        let port = listener.local_addr().expect("local address of a bound listener").port();
        if !SHARED_PORTS.contains(&port) && !taken.contains(&port) {
            return port;
        }
    }
}

/// A loopback port that was free a moment ago (and no shared server's).
pub(crate) fn free_port() -> u16 {
    free_port_but(&[])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_avoid_shared_and_taken_ports() {
        let first = free_port();
        assert!(!SHARED_PORTS.contains(&first));
        assert_ne!(free_port_but(&[first]), first);
    }

    #[test]
    fn a_process_lives_in_a_private_directory_removed_on_drop() {
        let mut process = ServerProcess::new("sleep", &[]);
        let dir = process.dir().to_owned();
        assert!(dir.is_dir());
        let mut sleep = Command::new("sleep");
        sleep.arg("30");
        process.spawn(sleep).expect("spawn sleep");
        assert!(process.is_running());
        process.pause();
        process.resume();
        process.kill();
        assert!(!process.is_running());
        assert!(process.log_tail().contains(STDIO_LOG));
        drop(process);
        assert!(!dir.exists(), "{} left behind", dir.display());
    }
}
