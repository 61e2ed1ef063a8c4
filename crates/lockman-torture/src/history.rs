//! What every participant and the fault injector write down, one JSON object
//! per line, each line one `write(2)` to a file opened for appending — so a
//! `SIGKILL` loses at most the event being written, never a line already
//! written, and a torn last line is skipped by the reader.
//!
//! Times are microseconds of `CLOCK_MONOTONIC`, which every process on the
//! machine reads from the same clock, so events from different workers can be
//! merged and compared directly.

use std::fs::{File, OpenOptions};
use std::io::{self, BufRead, BufReader, Write};
use std::path::{Path, PathBuf};

use lockman::LockMode;
use serde::{Deserialize, Serialize};

/// Microseconds of `CLOCK_MONOTONIC` (shared by all processes of the machine).
pub fn now_us() -> u64 {
    let now = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    // Monotonic time is never negative.
    u64::try_from(now.tv_sec).unwrap_or(0) * 1_000_000 + u64::try_from(now.tv_nsec).unwrap_or(0) / 1_000
}

/// Who wrote a log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Kind {
    /// A lockman worker.
    New,
    /// An old daemon following legacy protocol A (skip if busy).
    OldA,
    /// An old daemon following legacy protocol B (wait, then steal).
    OldB,
}

/// One thing a participant did or saw.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// The participant started.
    Start {
        /// When.
        t: u64,
        /// Its name (`w3`, `w3.1` after a restart, `old-b1`).
        w: String,
        /// Its process id.
        pid: u32,
        /// What protocol it follows.
        kind: Kind,
    },
    /// It began waiting for the lock.
    Acquire {
        /// When.
        t: u64,
    },
    /// An old participant looked for the legacy file.
    Check {
        /// When.
        t: u64,
        /// Whether the file was there.
        exists: bool,
    },
    /// An old participant deleted a legacy file it did not create (protocol
    /// B's reader on timeout).
    Steal {
        /// When.
        t: u64,
    },
    /// It got the lock: its critical section begins.
    Grant {
        /// When (after `acquire` returned).
        t: u64,
        /// The grant's fencing token (`None` for old participants and `--no-lock`).
        token: Option<u64>,
        /// The lease in force, if the backend has leases.
        lease_ms: Option<u64>,
        /// How long before `t` the backend says it granted the lock (its
        /// `acquired_at`): large when the worker was frozen between the grant
        /// and this record.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        age_us: Option<u64>,
        /// How the grant holds the resource; absent (older histories, old
        /// daemons) means exclusive.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        mode: Option<LockMode>,
    },
    /// `extend` succeeded: this lease is now in force.
    Extend {
        /// When (after `extend` returned).
        t: u64,
        /// The new lease.
        lease_ms: u64,
        /// How long the `extend` call took (the lease runs from its request).
        #[serde(default)]
        took_us: u64,
    },
    /// A read of the fenced counter.
    Read {
        /// When it completed.
        t: u64,
        /// False if the store refused the token (a later grant has used it).
        ok: bool,
        /// The value read.
        value: u64,
    },
    /// A write of the fenced counter is about to be made (its outcome is
    /// unknown if the process dies before [`Event::Write`]).
    WriteStart {
        /// When.
        t: u64,
    },
    /// A write of the fenced counter completed.
    Write {
        /// When it completed.
        t: u64,
        /// False if the store refused the token.
        ok: bool,
    },
    /// The guard reported the lock lost.
    Lost {
        /// When the report arrived.
        t: u64,
        /// Why, as the backend said.
        why: String,
    },
    /// The critical section ends: nothing more is done under the lock.
    End {
        /// When (before `release` is called).
        t: u64,
    },
    /// `release` returned.
    Released {
        /// When.
        t: u64,
        /// Whether it reported success.
        ok: bool,
        /// Its error, if any.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        err: Option<String>,
    },
    /// `acquire` timed out.
    Timeout {
        /// When.
        t: u64,
    },
    /// The legacy policy said to skip (an old participant saw the file, or
    /// gave up).
    Skip {
        /// When.
        t: u64,
    },
    /// `acquire` (or the store) failed.
    Error {
        /// When.
        t: u64,
        /// The error.
        msg: String,
    },
    /// The participant finished its run.
    Exit {
        /// When.
        t: u64,
    },
}

impl Event {
    /// When it happened.
    pub fn time(&self) -> u64 {
        match self {
            Event::Start { t, .. }
            | Event::Acquire { t }
            | Event::Check { t, .. }
            | Event::Steal { t }
            | Event::Grant { t, .. }
            | Event::Extend { t, .. }
            | Event::Read { t, .. }
            | Event::WriteStart { t }
            | Event::Write { t, .. }
            | Event::Lost { t, .. }
            | Event::End { t }
            | Event::Released { t, .. }
            | Event::Timeout { t }
            | Event::Skip { t }
            | Event::Error { t, .. }
            | Event::Exit { t } => *t,
        }
    }
}

/// A fault the injector applied.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "fault", rename_all = "snake_case")]
pub enum Fault {
    /// `SIGKILL` to a worker (or an abort of a `memory://` worker task).
    Kill {
        /// When.
        t: u64,
        /// The worker.
        w: String,
    },
    /// `SIGSTOP` to a worker, `SIGCONT` at `until` (for `memory://`, the
    /// worker's section stalls until then without looking at its guard).
    Stop {
        /// When.
        t: u64,
        /// When it continued.
        until: u64,
        /// The worker.
        w: String,
    },
    /// The Redis server was killed and started again.
    Restart {
        /// When it was killed.
        t: u64,
        /// When it answered again.
        until: u64,
        /// `lost` (empty store) or `snapshot` (the last `SAVE`, an older state).
        data: String,
    },
    /// The Redis server wrote a snapshot that a later restart may load.
    Save {
        /// When.
        t: u64,
    },
    /// The relay of one worker delayed, stalled or cut its connections.
    Net {
        /// When.
        t: u64,
        /// When it was healed.
        until: u64,
        /// The worker.
        w: String,
        /// `delay`, `stall` or `cut`.
        kind: String,
    },
    /// The lock directory's file system was full.
    DiskFull {
        /// When it filled up.
        t: u64,
        /// When the space came back.
        until: u64,
    },
}

/// An append-only JSON-lines log.
#[derive(Debug)]
pub struct Log {
    file: File,
    path: PathBuf,
}

impl Log {
    /// Creates (or appends to) the log at `path`.
    pub fn create(path: &Path) -> io::Result<Log> {
        let file = OpenOptions::new().create(true).append(true).open(path)?;
        Ok(Log { file, path: path.to_owned() })
    }

    /// Appends one record as one write. A failed write is reported on stderr
    /// once per record: the run goes on, and the checker sees the gap.
    pub fn write<T: Serialize>(&mut self, record: &T) {
        let mut line = match serde_json::to_vec(record) {
            Ok(line) => line,
            Err(error) => {
                eprintln!("lockman-torture: cannot encode a record for {}: {error}", self.path.display());
                return;
            }
        };
        line.push(b'\n');
        if let Err(error) = self.file.write_all(&line) {
            eprintln!("lockman-torture: cannot append to {}: {error}", self.path.display());
        }
    }
}

/// Reads a JSON-lines log, skipping a torn last line (a process killed while
/// writing it). A torn line anywhere else is an error.
pub fn read_log<T: for<'de> Deserialize<'de>>(path: &Path) -> io::Result<Vec<T>> {
    let reader = BufReader::new(File::open(path)?);
    let lines: Vec<String> = reader.lines().collect::<Result<_, _>>()?;
    let mut records = Vec::with_capacity(lines.len());
    for (index, line) in lines.iter().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match serde_json::from_str(line) {
            Ok(record) => records.push(record),
            Err(_) if index + 1 == lines.len() => {}
            Err(error) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{} line {}: {error}: {line}", path.display(), index + 1),
                ));
            }
        }
    }
    Ok(records)
}
