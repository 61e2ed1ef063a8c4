//! Helpers for tests that run real OS processes.

use std::process::Child;
use std::time::{Duration, Instant};

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
