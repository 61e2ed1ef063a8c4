//! Helpers for tests that run real OS processes.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{Receiver, channel};
use std::time::{Duration, Instant};

/// Runs the test named `child_test` of this test binary again, as a child
/// process with `env` set to `spec` (the child test acts out its role when
/// it finds `env` set), its stdin and stdout piped.
///
/// # Panics
///
/// If the child cannot be started.
pub fn spawn_test_child(child_test: &str, env: &str, spec: &str) -> Child {
    Command::new(std::env::current_exe().expect("the test binary's path"))
        .args(["--exact", child_test, "--nocapture", "--test-threads=1"])
        .env(env, spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the child process")
}

/// The lines `child` writes on its piped stdout, read by a thread of their
/// own until the child closes it or the receiver is dropped.
///
/// # Panics
///
/// If the child's stdout was not piped, or was taken already.
pub fn stdout_lines(child: &mut Child) -> Receiver<String> {
    let stdout = child.stdout.take().expect("piped stdout");
    let (tx, lines) = channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    lines
}

/// Waits until every child has exited successfully, for at most `limit` in
/// all (polling every 10 ms — a child's exit has no event to wait on here).
///
/// # Panics
///
/// If a child fails, or the limit passes; every child still running is
/// killed first, so no process outlives the test.
pub fn wait_all_succeed(children: &mut [Child], limit: Duration) {
    let deadline = Instant::now() + limit;
    for index in 0..children.len() {
        loop {
            match children[index].try_wait() {
                Ok(Some(status)) if status.success() => break,
                Ok(Some(status)) => {
                    kill_all(children);
                    panic!("child process {index} failed: {status}");
                }
                Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(10)),
                Ok(None) => {
                    kill_all(children);
                    panic!("child processes ran past {limit:?}");
                }
                Err(e) => {
                    kill_all(children);
                    panic!("cannot wait for child process {index}: {e}");
                }
            }
        }
    }
}

fn kill_all(children: &mut [Child]) {
    for child in children {
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// A child process (this test binary re-run) that acquires a lock, says
/// `held <fencing token>` on stdout, and holds it until its stdin closes.
/// Killed when dropped, so no child outlives a failing test.
pub struct HoldingChild {
    child: Child,
    token: String,
}

impl HoldingChild {
    /// Runs the test named `child_test` of this binary with `env = spec`, and
    /// waits at most `limit` for it to say it holds the lock.
    ///
    /// # Panics
    ///
    /// If the child cannot be started, exits, or says nothing in time.
    pub fn spawn(child_test: &str, env: &str, spec: &str, limit: Duration) -> Self {
        let mut child = spawn_test_child(child_test, env, spec);
        let lines = stdout_lines(&mut child);
        let deadline = Instant::now() + limit;
        loop {
            match lines.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
                // libtest may have written `test child ... ` on the same line.
                Ok(line) => {
                    if let Some((_, token)) = line.split_once("held ") {
                        return HoldingChild { child, token: token.trim().to_owned() };
                    }
                }
                Err(_) => {
                    let _ = child.kill();
                    let status = child.wait();
                    panic!("the child never said it holds the lock within {limit:?} (exit: {status:?})");
                }
            }
        }
    }

    /// The fencing token the child's grant carries.
    pub fn token(&self) -> &str {
        &self.token
    }

    /// Closes the child's stdin (it releases and exits) and waits at most
    /// `limit` for it to exit successfully.
    pub fn finish(mut self, limit: Duration) {
        drop(self.child.stdin.take());
        wait_all_succeed(std::slice::from_mut(&mut self.child), limit);
    }
}

impl Drop for HoldingChild {
    fn drop(&mut self) {
        // After finish() the child is reaped and these are harmless no-ops.
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The child side of [`HoldingChild`]: after acquiring, says `held <token>`
/// and blocks until stdin is closed (the parent finished or died).
pub fn say_held_and_wait_for_stdin(token: impl std::fmt::Display) {
    use std::io::{Read, Write};
    println!("held {token}");
    let _ = std::io::stdout().flush();
    let mut rest = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut rest);
}
