//! The command line, parsed with clap (derive).

use std::ffi::OsString;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{ArgAction, Args, Parser, Subcommand};
use lockman::Wait;

use crate::exit;

const ABOUT: &str = "See, run under, break and clean lockman locks and flags, on any backend.";

const LONG_ABOUT: &str = "\
See, run under, break and clean lockman locks and flags, on any backend.

The backend comes from the same configuration as every lockman program:
built-in defaults, then lockman.toml in the working directory (or the file
named by LOCKMAN_CONFIG or --config), then LOCKMAN_* environment variables,
then --url. URLs: memory://, file:///dir (?mode=lease for network shares),
legacy-file:///dir, redis://[user:pass@]host:port/db, rediss://...,
etcd://host:port[,host:port...]";

/// `lockctl`: the lockman admin CLI.
#[derive(Debug, Parser)]
#[command(name = "lockctl", version, about = ABOUT, long_about = LONG_ABOUT, after_help = exit::HELP_TABLE)]
pub struct Cli {
    /// Options every command takes.
    #[command(flatten)]
    pub global: Global,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Options every command takes.
#[derive(Debug, Args)]
pub struct Global {
    /// Where locks live (overrides LOCKMAN_URL and lockman.toml), e.g. file:///run/app/locks or redis://host:6379/0.
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// Read this TOML file instead of lockman.toml / LOCKMAN_CONFIG (LOCKMAN_* variables still apply on top).
    #[arg(long, global = true, value_name = "PATH")]
    pub config: Option<PathBuf>,
    /// Log what happens to stderr (-v info, -vv debug, -vvv trace; RUST_LOG overrides).
    #[arg(short, long, global = true, action = ArgAction::Count)]
    pub verbose: u8,
    /// Print JSON for scripts (list, cleanup, flag list: one array; status, flag get: one object or null; watch: one object per line).
    #[arg(long, global = true)]
    pub json: bool,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Show every lock: resource, state, holder, host, pid, since and age, purpose, lease left, fencing token.
    List,
    /// Show one lock; exit 0 if free, 1 if held, 2 if stale.
    Status {
        /// The resource name.
        resource: String,
    },
    /// Hold a lock while a command runs, like flock(1); exit with the command's status.
    #[command(after_long_help = RUN_HELP)]
    Run(RunArgs),
    /// Break a lock someone holds (needs --force); its holder is told the lock was lost.
    Release(ReleaseArgs),
    /// Remove stale locks (dead holders, expired leases, legacy files past their age), printing each.
    Cleanup {
        /// Only list the locks the backend reports stale; break nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Named flags (the StatusManager): list, get, set, clear.
    Flag {
        /// What to do with flags.
        #[command(subcommand)]
        command: FlagCommand,
    },
    /// Stream lock events as they happen (see the note it prints about what it can see).
    #[command(after_long_help = WATCH_HELP)]
    Watch(WatchArgs),
}

const RUN_HELP: &str = "\
The command gets LOCKMAN_RESOURCE, LOCKMAN_HOLDER and LOCKMAN_FENCING_TOKEN in
its environment (hand the token to storage that rejects older tokens), and on
kernel-locked backends (file://, legacy-file://) LOCKMAN_LOCK_FD, the locked
descriptor it inherits. lockman's own variables that carry a password are
removed from its environment: LOCKMAN_REDIS_PASSWORD, and LOCKMAN_URL,
LOCKMAN_STATUS_URL, LOCKMAN_LEGACY_URL and LOCKMAN_LEGACY_BRIDGE when their
URL holds a password (those without one are passed on, so the command can run
lockctl itself); --keep-env passes them on too. A password file
(LOCKMAN_REDIS__PASSWORD_FILE, ?password_file=) is passed on as its path.

While it runs, the lock is kept alive: without --lease the backend's default
lease (Redis, lease files) is renewed automatically; with --lease D the lease
is D and lockctl extends it every D/3. SIGINT, SIGTERM, SIGHUP, SIGUSR1 and
SIGUSR2 are forwarded to the command (SIGINT only when it did not already come
from the terminal, so Ctrl-C reaches the command once); the lock is released
after the command exits.

If the lock is lost while the command runs (force-released, lease not
renewable, lock file removed), lockctl says so on stderr at once, sends the
command SIGTERM (unless --keep-running-if-lost), waits for it and exits 76.

If lockctl itself is killed (SIGKILL, the OOM killer), the command does not
run on outside the lock: on Linux the kernel kills it as lockctl exits
(PR_SET_PDEATHSIG), before the lock can pass to anyone; without a controlling
terminal it runs in a process group of its own, which a reaper process
(lockctl-reaper) kills within milliseconds of lockctl's death, with whatever
the command started in it; and on kernel locks the inherited descriptor keeps
the lock held until every process holding it has exited (as with flock(1);
there is no -o/--close: close LOCKMAN_LOCK_FD in a process that must not hold
the lock). When the command exits, lockctl releases the lock at once, also for
background processes the command left holding the descriptor, and leaves
them running. The README details what holds on each backend.

Examples:
  lockctl --url file:///run/app/locks run nightly -- /usr/local/bin/backup
  lockctl --url redis://cache:6379/0 run -n --purpose 'reindex' search -- ./reindex.sh
  lockctl run --wait 5m --lease 30s inverter_read -- sh -c 'write-registers --fence \"$LOCKMAN_FENCING_TOKEN\"'";

const WATCH_HELP: &str = "\
Events (locked, released, timed out, lost, force-released, stale broken) are
published by the lock manager inside a process, so `watch` hears only those of
its own manager: no backend publishes other processes' lock events yet. To see
other processes, it also polls the lock list every --poll interval and prints
what changed (locks that appear, change holder, turn stale or disappear); a
lock held for less than one interval can be missed. --poll 0 turns that off.";

/// `lockctl run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The resource to lock.
    pub resource: String,
    /// Wait at most this long for the lock (500ms, 30s, 5m, or "forever"); default: LOCKMAN_DEFAULT_WAIT, else forever.
    #[arg(short = 'w', long, visible_alias = "timeout", value_name = "DURATION", value_parser = parse_wait, conflicts_with = "no_wait")]
    pub wait: Option<Wait>,
    /// Fail at once (exit 75) if someone holds the lock.
    #[arg(short = 'n', long)]
    pub no_wait: bool,
    /// Lease length; lockctl extends it every third while the command runs (default: the backend's lease, auto-renewed).
    #[arg(long, value_name = "DURATION", value_parser = parse_lease)]
    pub lease: Option<Duration>,
    /// Take a shared (read) hold, like flock -s: shared holders run together, never beside an exclusive one.
    #[arg(short = 's', long, conflicts_with = "permits")]
    pub shared: bool,
    /// Treat the resource as a semaphore of N permits and take one: at most N commands run at once (every party must give the same N).
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub permits: Option<u32>,
    /// Why the lock is taken, shown to waiters and by list/status (default: "lockctl run PROGRAM").
    #[arg(long, value_name = "TEXT")]
    pub purpose: Option<String>,
    /// If the lock is lost, do not SIGTERM the command (lockctl still reports the loss and exits 76).
    #[arg(long)]
    pub keep_running_if_lost: bool,
    /// Pass lockman's password-bearing variables (LOCKMAN_REDIS_PASSWORD, LOCKMAN_*URL with a password) on to the command.
    #[arg(long)]
    pub keep_env: bool,
    /// Exit code when the lock cannot be had in time (like flock -E).
    #[arg(short = 'E', long, value_name = "CODE", default_value_t = exit::TIMED_OUT)]
    pub conflict_exit_code: u8,
    /// Serve Prometheus metrics (lockman_* counters and histograms) on this address, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// The command and its arguments (put them after `--`).
    #[arg(required = true, num_args = 1.., trailing_var_arg = true, allow_hyphen_values = true, value_name = "COMMAND")]
    pub command: Vec<OsString>,
}

/// `lockctl release`.
#[derive(Debug, Args)]
pub struct ReleaseArgs {
    /// The resource whose lock to break.
    pub resource: String,
    /// Really break it: the holder may still be working, and loses its exclusion.
    #[arg(long)]
    pub force: bool,
    /// Why; logged, emitted as an event, and shown to the holder in its lost-lock report.
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

/// `lockctl flag …`.
#[derive(Debug, Subcommand)]
pub enum FlagCommand {
    /// Every set flag: name, value, set at, TTL left.
    List,
    /// One flag; exit 0 if set, 1 if not.
    Get {
        /// The flag name.
        name: String,
    },
    /// Set a flag (replacing its value and TTL if it was set).
    Set {
        /// The flag name.
        name: String,
        /// Clear the flag by itself after this long (10m, 1h).
        #[arg(long, value_name = "DURATION", value_parser = parse_lease)]
        ttl: Option<Duration>,
        /// A value stored with the flag.
        #[arg(long, value_name = "TEXT")]
        value: Option<String>,
    },
    /// Clear a flag; exit 0 if it was set, 1 if not.
    Clear {
        /// The flag name.
        name: String,
    },
}

/// `lockctl watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// Also poll the lock list this often to show other processes' changes (0: only this process's events).
    #[arg(long, value_name = "DURATION", default_value = "1s", value_parser = parse_duration)]
    pub poll: Duration,
    /// Serve Prometheus metrics on this address, e.g. 127.0.0.1:9464.
    #[arg(long, value_name = "ADDR")]
    pub metrics_addr: Option<SocketAddr>,
}

/// `500ms`, `30s`, `5m`, `1h 30m`.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text.trim())
        .map_err(|e| format!("{text:?} is not a duration ({e}); write it like 500ms, 30s or 5m"))
}

/// The longest lease or TTL accepted: backends compute expiry times from it,
/// and Redis refuses (and clocks overflow at) absurd ones.
const MAX_LEASE: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A lease or TTL: more than zero, at most ten years.
fn parse_lease(text: &str) -> Result<Duration, String> {
    match parse_duration(text)? {
        Duration::ZERO => Err("must be longer than zero".to_owned()),
        duration if duration > MAX_LEASE => Err(format!("{text:?} is too long: at most 10 years")),
        duration => Ok(duration),
    }
}

/// A wait: a duration (`0` means do not wait) or `forever`.
fn parse_wait(text: &str) -> Result<Wait, String> {
    match text.trim() {
        "forever" | "inf" | "infinite" => Ok(Wait::Forever),
        _ => match parse_duration(text)? {
            Duration::ZERO => Ok(Wait::NoWait),
            duration => Ok(Wait::Timeout(duration)),
        },
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_takes_the_command_after_dashes_or_not() {
        let cli = Cli::try_parse_from(["lockctl", "run", "demo", "--", "sleep", "-x", "1"]).unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert_eq!(run.command, ["sleep", "-x", "1"]);
        let cli = Cli::try_parse_from(["lockctl", "run", "-n", "demo", "ls", "-l"]).unwrap();
        let Command::Run(run) = cli.command else { panic!("not run") };
        assert!(run.no_wait);
        assert_eq!(run.command, ["ls", "-l"]);
    }

    #[test]
    fn waits_read_like_people_write_them() {
        assert_eq!(parse_wait("forever"), Ok(Wait::Forever));
        assert_eq!(parse_wait("0s"), Ok(Wait::NoWait));
        assert_eq!(parse_wait("1m"), Ok(Wait::Timeout(Duration::from_secs(60))));
        assert!(parse_wait("soon").unwrap_err().contains("30s"));
        assert!(parse_lease("0s").is_err());
        assert!(parse_lease("11y").unwrap_err().contains("at most 10 years"));
        assert_eq!(parse_lease("30s"), Ok(Duration::from_secs(30)));
    }
}
