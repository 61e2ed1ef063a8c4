//! Exit codes, and the one error type every command returns.
//!
//! The codes follow `sysexits.h` where one fits, `flock(1)`/`timeout(1)` for
//! running a command, and `grep`/`test` for questions (0 yes, 1 no). The
//! table below is also printed by `lockctl --help` and is in the README.

use std::fmt;
use std::process::ExitStatus;

use lockman::LockError;

/// Success; `status`: the lock is free; `flag get`: the flag is set.
pub const OK: u8 = 0;
/// `status`: held; `flag get`/`flag clear`: not set; `release`: nothing was held.
pub const NO: u8 = 1;
/// `status`: stale (recorded as held, but its holder is gone or its lease ran out).
pub const STALE: u8 = 2;
/// EX_USAGE: bad command line (unknown option, missing argument, `release` without `--force`).
pub const USAGE: u8 = 64;
/// EX_DATAERR: invalid resource or flag name (empty, longer than 1024 bytes, NUL byte).
pub const BAD_NAME: u8 = 65;
/// EX_UNAVAILABLE: the backend failed or cannot be reached (I/O error, Redis down).
pub const UNAVAILABLE: u8 = 69;
/// EX_SOFTWARE: an internal error (a bug: please report it).
pub const SOFTWARE: u8 = 70;
/// EX_OSERR: the operating system refused something lockctl needs (threads, a metrics listener).
pub const OSERR: u8 = 71;
/// EX_TEMPFAIL: the lock could not be had in time (`run --no-wait`/`--wait`); change with `run -E`.
pub const TIMED_OUT: u8 = 75;
/// The lock was lost while `run`'s command ran (force-released, lease not renewable, lock file removed).
pub const LOST: u8 = 76;
/// EX_CONFIG: bad configuration: backend URL, `lockman.toml`, `LOCKMAN_*` variables, `--config` file.
pub const CONFIG: u8 = 78;
/// `run`: the command was found but could not be executed (as in shells, `env(1)`, `timeout(1)`).
pub const CANNOT_EXECUTE: u8 = 126;
/// `run`: the command was not found.
pub const NOT_FOUND: u8 = 127;
/// stdout was closed by its reader (`lockctl list | head -1`): 128 + SIGPIPE, silently.
pub const BROKEN_PIPE: u8 = 141;

/// The exit-code table shown by `lockctl --help` (keep in step with the README).
pub const HELP_TABLE: &str = "\
Exit codes:
  0    success; status: the lock is free; flag get: the flag is set
  1    status: the lock is held; flag get / flag clear: the flag is not set;
       release: nothing was held
  2    status: the lock is stale (holder gone or lease expired; cleanup removes it)
  64   usage error (bad option or argument; release without --force)
  65   invalid resource or flag name (empty, over 1024 bytes, NUL byte)
  69   backend failed or unreachable (I/O error, Redis down)
  70   internal error (a bug)
  71   operating-system error (cannot start threads, cannot listen on --metrics-addr)
  75   run: the lock could not be had in time (--no-wait, --wait); names the holder
  76   run: the lock was lost while the command ran (reported on stderr at once)
  78   configuration error (bad URL or scheme, lockman.toml, LOCKMAN_* variables)
  126  run: the command could not be executed
  127  run: the command was not found
  N    run: the command's own exit status; 128+S if a signal S killed it
       (or interrupted the wait for the lock)
  141  stdout was closed by its reader (lockctl list | head -1)

Errors are one line on stderr: `lockctl: <message>`.";

/// A command that failed: the exit code and the message for stderr.
#[derive(Debug)]
pub struct Failure {
    /// The process exit code.
    pub code: u8,
    /// The message, printed as `lockctl: <message>`.
    pub message: String,
}

impl Failure {
    /// A failure with `code` and `message`.
    pub fn new(code: u8, message: impl Into<String>) -> Self {
        Failure { code, message: message.into() }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

/// The exit code for a library error.
pub fn code_of(error: &LockError) -> u8 {
    match error {
        LockError::Timeout { .. } => TIMED_OUT,
        LockError::Lost { .. } => LOST,
        LockError::InvalidName { .. } => BAD_NAME,
        LockError::Backend { .. } => UNAVAILABLE,
        LockError::Config(_) => CONFIG,
        _ => SOFTWARE,
    }
}

impl From<LockError> for Failure {
    fn from(error: LockError) -> Self {
        Failure { code: code_of(&error), message: one_line(&error.to_string()) }
    }
}

/// `text` on one line: newlines (from a backend's message) become `; `.
pub fn one_line(text: &str) -> String {
    text.trim_end().replace("\r\n", "; ").replace('\n', "; ")
}

/// The exit code that reports a child's status like a shell does: its exit
/// code, or 128 + the signal that killed it.
pub fn of_status(status: ExitStatus) -> u8 {
    use std::os::unix::process::ExitStatusExt;

    match (status.code(), status.signal()) {
        // Exit codes are 0..=255 on Unix; keep the low byte as the shell does.
        (Some(code), _) => (code & 0xff) as u8,
        (None, Some(signal)) => (128 + (signal & 0x7f)) as u8,
        (None, None) => SOFTWARE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_map_to_documented_codes() {
        let timeout = LockError::Timeout {
            resource: "r".into(),
            backend: "file".into(),
            waited: std::time::Duration::ZERO,
            holder: None,
            skipped: None,
        };
        assert_eq!(Failure::from(timeout).code, TIMED_OUT);
        assert_eq!(Failure::from(LockError::invalid_name("", "empty")).code, BAD_NAME);
        assert_eq!(Failure::from(LockError::Config("x".into())).code, CONFIG);
        assert_eq!(Failure::from(LockError::backend("redis", "listing", None, "down")).code, UNAVAILABLE);
    }

    #[test]
    fn messages_are_one_line() {
        assert_eq!(one_line("a\nb\n"), "a; b");
    }

    #[test]
    fn statuses_read_like_a_shell() {
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(of_status(ExitStatus::from_raw(3 << 8)), 3);
        assert_eq!(of_status(ExitStatus::from_raw(15)), 143); // killed by SIGTERM
    }

    #[test]
    fn help_table_lists_every_code() {
        for code in [OK, NO, STALE, USAGE, BAD_NAME, UNAVAILABLE, SOFTWARE, OSERR, TIMED_OUT, LOST, CONFIG] {
            assert!(HELP_TABLE.contains(&format!("\n  {code:<4} ")), "{code} missing from the help table");
        }
        assert!(HELP_TABLE.contains(&format!("\n  {CANNOT_EXECUTE}  ")));
        assert!(HELP_TABLE.contains(&format!("\n  {NOT_FOUND}  ")));
        assert!(HELP_TABLE.contains(&format!("\n  {BROKEN_PIPE}  ")));
    }
}
