//! `lockctl run`, black-box: exclusion between processes on every
//! cross-process backend, conflicts, exit statuses, signals, lost locks,
//! leases, metrics.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::{Proc, STEP, Sandbox, hold, output, waiting_shell};
use lockman_testkit::redis_server::RedisServer;
use rustix::process::Signal;

/// Three `lockctl run` processes started at once on one resource; each
/// command appends `start-N`, sleeps, appends `end-N`. Exclusion means the
/// log is three `start-N`/`end-N` pairs, never interleaved.
fn runs_never_overlap(sandbox: &Sandbox, url: &str) {
    let log = sandbox.file("critical-section.log");
    let script = "echo \"start-$ID\" >> \"$LOG\"; sleep 0.2; echo \"end-$ID\" >> \"$LOG\"";
    let mut runs: Vec<Proc> = (0..3)
        .map(|id| {
            let mut command = sandbox.at(url, &["run", "--wait", "30s", "shared", "--", "sh", "-c", script]);
            command.env("ID", id.to_string()).env("LOG", &log);
            Proc::spawn(command)
        })
        .collect();
    for run in &mut runs {
        let status = run.wait(STEP);
        assert_eq!(status.code(), Some(0), "a run failed on {url}: {}", run.stderr());
    }
    let text = std::fs::read_to_string(&log).expect("the commands wrote the log");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 6, "{text}");
    for pair in lines.chunks(2) {
        let id = pair[0].strip_prefix("start-").unwrap_or_else(|| panic!("overlap on {url}:\n{text}"));
        assert_eq!(pair[1], format!("end-{id}"), "overlap on {url}:\n{text}");
    }
}

#[test]
fn runs_never_overlap_on_file_locks() {
    let sandbox = Sandbox::new();
    runs_never_overlap(&sandbox, &sandbox.url("file", "locks", ""));
}

#[test]
fn runs_never_overlap_on_lease_files() {
    let sandbox = Sandbox::new();
    runs_never_overlap(&sandbox, &sandbox.url("file", "locks", "mode=lease"));
}

#[test]
fn runs_never_overlap_on_legacy_files() {
    let sandbox = Sandbox::new();
    runs_never_overlap(&sandbox, &sandbox.url("legacy-file", "legacy", ""));
}

#[test]
fn runs_never_overlap_on_redis() {
    let Some(server) = RedisServer::start() else { return };
    let sandbox = Sandbox::new();
    runs_never_overlap(&sandbox, &server.url());
}

fn no_wait_names_the_holder(url: &str) {
    let sandbox = Sandbox::new();
    let mut holder = hold(&sandbox, url, "busy", &["--purpose", "holder-under-test"]);

    let out = output(sandbox.at(url, &["run", "--no-wait", "busy", "--", "true"]));
    assert_eq!(out.code, Some(75), "{out:?}");
    assert!(out.stderr.starts_with("lockctl: timed out"), "{out:?}");
    assert!(out.stderr.contains("holder-under-test"), "the holder's purpose is named: {out:?}");
    assert!(out.stderr.contains(&format!("pid {}", holder.pid())), "the holder's pid is named: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "one line: {out:?}");

    let out = output(sandbox.at(url, &["run", "--wait", "200ms", "-E", "3", "busy", "--", "true"]));
    assert_eq!(out.code, Some(3), "-E sets the conflict exit code: {out:?}");

    holder.signal(Signal::TERM);
    assert_eq!(holder.wait(STEP).code(), Some(0));
    let out = output(sandbox.at(url, &["run", "--no-wait", "busy", "--", "true"]));
    assert_eq!(out.code, Some(0), "free again after the holder exited: {out:?}");
}

#[test]
fn no_wait_on_a_held_file_lock_exits_75_naming_the_holder() {
    let sandbox = Sandbox::new();
    no_wait_names_the_holder(&sandbox.url("file", "locks", ""));
}

#[test]
fn no_wait_on_a_held_redis_lock_exits_75_naming_the_holder() {
    let Some(server) = RedisServer::start() else { return };
    no_wait_names_the_holder(&server.url());
}

#[test]
fn the_command_gets_the_lock_in_its_environment_and_its_status_passes_through() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("file", "locks", "");
    let script = "echo \"$LOCKMAN_RESOURCE|$LOCKMAN_HOLDER|$LOCKMAN_FENCING_TOKEN\"; exit 3";
    let out = output(sandbox.at(&url, &["run", "job", "--", "sh", "-c", script]));
    assert_eq!(out.code, Some(3), "{out:?}");
    let fields: Vec<&str> = out.stdout.trim().split('|').collect();
    assert_eq!(fields[0], "job", "{out:?}");
    assert!(!fields[1].is_empty(), "LOCKMAN_HOLDER: {out:?}");
    assert!(fields[2].parse::<u64>().is_ok_and(|token| token > 0), "LOCKMAN_FENCING_TOKEN: {out:?}");

    let out = output(sandbox.at(&url, &["run", "job", "--", "sh", "-c", "kill -KILL $$"]));
    assert_eq!(out.code, Some(128 + 9), "killed by SIGKILL: {out:?}");

    let out = output(sandbox.at(&url, &["run", "job", "--", "/nonexistent/command"]));
    assert_eq!(out.code, Some(127), "{out:?}");
    assert!(out.stderr.starts_with("lockctl: cannot run /nonexistent/command"), "{out:?}");

    let out = output(sandbox.at(&url, &["status", "job"]));
    assert_eq!(out.code, Some(0), "released after each run: {out:?}");
}

#[test]
fn signals_reach_the_command_and_the_lock_is_released_after_it_exits() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("file", "locks", "");
    for (signal, name) in [(Signal::TERM, "got-TERM"), (Signal::INT, "got-INT"), (Signal::HUP, "")] {
        let shell = waiting_shell(7);
        let mut holder = Proc::spawn(sandbox.at(&url, &["run", "job", "--", "sh", "-c", &shell]));
        holder.wait_ready();
        let out = output(sandbox.at(&url, &["status", "job"]));
        assert_eq!(out.code, Some(1), "held while the command runs: {out:?}");

        holder.signal(signal);
        let status = holder.wait(STEP);
        let out = holder.output(status);
        if name.is_empty() {
            // No trap for SIGHUP: the command dies of it, and lockctl reports 128 + 1.
            assert_eq!(out.code, Some(129), "{signal:?}: {out:?}");
        } else {
            assert_eq!(out.code, Some(7), "{signal:?}: the command's trap ran: {out:?}");
            assert!(out.stdout.contains(name), "{out:?}");
        }
        let out = output(sandbox.at(&url, &["status", "job"]));
        assert_eq!(out.code, Some(0), "released after {signal:?}: {out:?}");
    }
}

#[test]
fn a_signal_while_waiting_gives_up_the_wait() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("file", "locks", "");
    let _holder = hold(&sandbox, &url, "busy", &[]);
    let mut waiter = Proc::spawn(sandbox.at(&url, &["-v", "run", "busy", "--", "echo", "never"]));
    // -v logs the acquisition attempt (after the signal handlers are in place); then interrupt it.
    common::eventually("the waiter to start waiting", STEP, || waiter.stderr().contains("acquiring the lock"));
    waiter.signal(Signal::TERM);
    let status = waiter.wait(STEP);
    let out = waiter.output(status);
    assert_eq!(out.code, Some(143), "{out:?}");
    assert!(out.stderr.contains("interrupted by SIGTERM while waiting for \"busy\""), "{out:?}");
    assert!(!out.stdout.contains("never"), "{out:?}");
}

fn force_release_is_reported_by_the_holder(url: &str, lost_detail: &str) {
    let sandbox = Sandbox::new();
    let mut holder = hold(&sandbox, url, "job", &[]);

    let out = output(sandbox.at(url, &["release", "job"]));
    assert_eq!(out.code, Some(64), "refused without --force: {out:?}");
    assert!(out.stderr.contains("without --force"), "{out:?}");

    let out = output(sandbox.at(url, &["release", "--force", "--reason", "operator test", "job"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains(&format!("pid {}", holder.pid())), "names what it broke: {out:?}");

    let status = holder.wait(STEP);
    let out = holder.output(status);
    assert_eq!(out.code, Some(76), "the holder exits with the lost code: {out:?}");
    assert!(out.stderr.contains("was lost"), "{out:?}");
    assert!(out.stderr.contains(lost_detail), "{out:?}");
    assert!(out.stderr.contains("sent SIGTERM to the command"), "{out:?}");
    assert!(out.stdout.contains("got-TERM"), "the command was stopped: {out:?}");

    let out = output(sandbox.at(url, &["release", "--force", "job"]));
    assert_eq!(out.code, Some(1), "nothing left to break: {out:?}");
}

#[test]
fn force_release_of_a_file_lock_makes_its_run_report_the_loss() {
    let sandbox = Sandbox::new();
    // The holder notices its lock file is gone within loss_check.
    let url = sandbox.url("file", "locks", "loss_check=100ms");
    force_release_is_reported_by_the_holder(&url, "deleted or replaced");
}

#[test]
fn force_release_of_a_redis_lock_makes_its_run_report_the_loss() {
    let Some(server) = RedisServer::start() else { return };
    // A 2 s lease is renewed every 667 ms: the renewal finds the lock gone.
    let url = format!("{}?lease=2s", server.url());
    force_release_is_reported_by_the_holder(&url, "operator test");
}

#[test]
fn keep_running_if_lost_reports_but_leaves_the_command_alone() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("file", "locks", "loss_check=100ms");
    let mut holder = hold(&sandbox, &url, "job", &["--keep-running-if-lost"]);
    let out = output(sandbox.at(&url, &["release", "--force", "job"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    common::eventually("the holder to report the loss", STEP, || holder.stderr().contains("keeps running"));
    assert!(!holder.stdout().contains("got-TERM"), "the command was left alone");

    holder.signal(Signal::TERM); // forwarded: the command exits 0 ...
    let status = holder.wait(STEP);
    let out = holder.output(status);
    assert!(out.stdout.contains("got-TERM"), "{out:?}");
    assert_eq!(out.code, Some(76), "... but the work was not exclusive: {out:?}");
}

fn explicit_lease_is_extended(url: &str) {
    let sandbox = Sandbox::new();
    // The command outlives its 1 s lease three times over.
    let out = output(sandbox.at(url, &["run", "--lease", "1s", "job", "--", "sleep", "3"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stderr.is_empty(), "{out:?}");
}

#[test]
fn an_explicit_redis_lease_is_extended_while_the_command_runs() {
    let Some(server) = RedisServer::start() else { return };
    explicit_lease_is_extended(&server.url());
}

#[test]
fn an_explicit_lease_file_lease_is_extended_while_the_command_runs() {
    let sandbox = Sandbox::new();
    explicit_lease_is_extended(&sandbox.url("file", "locks", "mode=lease"));
}

#[test]
fn run_serves_prometheus_metrics() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("file", "locks", "");
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let addr = format!("127.0.0.1:{port}");
    let holder = hold(&sandbox, &url, "job", &["--metrics-addr", &addr]);

    let mut stream = TcpStream::connect(&addr).expect("the metrics listener accepts");
    stream.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    stream.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n").expect("request");
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(response.contains("lockman_acquired_total{backend=\"file\"} 1"), "{response}");
    drop(holder);
}

/// The state and start time of a live process from a line of
/// `/proc/PID/stat`: `(pid, state, process group, start time)`. The start
/// time tells a process from a later one that reuses its pid.
#[cfg(target_os = "linux")]
fn parse_stat(line: &str) -> Option<(i32, char, i32, u64)> {
    let (pid, rest) = line.split_once(" (")?;
    // The command name may hold anything, so split after its last `)`.
    let (_, fields) = rest.rsplit_once(") ")?;
    let fields: Vec<&str> = fields.split_whitespace().collect();
    // Fields 3 (state), 5 (process group) and 22 (start time), counted from 1.
    Some((
        pid.trim().parse().ok()?,
        fields.first()?.chars().next()?,
        fields.get(2)?.parse().ok()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// A process of a killed run's command, as first seen.
#[cfg(target_os = "linux")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Seen {
    pid: i32,
    group: i32,
    start: u64,
}

#[cfg(target_os = "linux")]
impl Seen {
    fn of(pid: i32) -> Seen {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_else(|e| panic!("pid {pid}: {e}"));
        let (pid, _, group, start) = parse_stat(&stat).unwrap_or_else(|| panic!("unreadable stat: {stat}"));
        Seen { pid, group, start }
    }

    /// Whether `stat` (a line of `/proc/PID/stat`) shows this process still running (not a zombie).
    fn runs_in(self, stat: &str) -> bool {
        parse_stat(stat)
            .is_some_and(|(pid, state, _, start)| pid == self.pid && start == self.start && !matches!(state, 'Z' | 'X'))
    }

    fn runs(self) -> bool {
        std::fs::read_to_string(format!("/proc/{}/stat", self.pid)).is_ok_and(|stat| self.runs_in(&stat))
    }
}

/// Kills, when the test ends, whatever is left of a killed run's command:
/// its processes and their process groups.
#[cfg(target_os = "linux")]
struct Leftovers(Vec<Seen>);

#[cfg(target_os = "linux")]
impl Drop for Leftovers {
    fn drop(&mut self) {
        let ours = rustix::process::getpgrp().as_raw_pid();
        for seen in &self.0 {
            if seen.runs() {
                common::send(seen.pid, Signal::KILL);
            }
            if seen.group != ours
                && let Some(group) = rustix::process::Pid::from_raw(seen.group)
            {
                let _ = rustix::process::kill_process_group(group, Signal::KILL);
            }
        }
    }
}

/// How a killed run was started.
#[cfg(target_os = "linux")]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Launch {
    /// In a session of its own, with no controlling terminal, as services,
    /// cron and CI run it (whatever terminal runs the tests): the command
    /// gets a process group of its own, watched by lockctl's reaper.
    Detached,
    /// Under script(1), with a pseudo-terminal as its controlling terminal:
    /// the command stays in lockctl's process group, and there is no reaper.
    Terminal,
}

/// `lockctl --url URL run job -- sh -c SCRIPT`, launched as `launch` says;
/// `None` if script(1) is missing for a `Terminal` launch.
#[cfg(target_os = "linux")]
fn killable_run(sandbox: &Sandbox, url: &str, script: &str, launch: Launch) -> Option<std::process::Command> {
    use std::os::unix::process::CommandExt;

    let mut command = sandbox.at(url, &["run", "job", "--", "sh", "-c", script]);
    match launch {
        Launch::Detached => {
            // SAFETY: setsid is async-signal-safe.
            unsafe {
                command.pre_exec(|| rustix::process::setsid().map(drop).map_err(std::io::Error::from));
            }
            Some(command)
        }
        Launch::Terminal => {
            if std::process::Command::new("script").arg("--version").output().is_err() {
                eprintln!("SKIPPED: script(1) (util-linux/bsdutils) is not installed");
                return None;
            }
            let mut wrapped = std::process::Command::new("script");
            wrapped
                .args(["-q", "-e", "-c", "exec \"$LOCKCTL\" --url \"$URL\" run job -- sh -c \"$SCRIPT\"", "/dev/null"])
                .env("LOCKCTL", command.get_program())
                .env("URL", url)
                .env("SCRIPT", script)
                .env("SHELL", "/bin/sh")
                .stdin(std::process::Stdio::null());
            for (name, value) in command.get_envs() {
                match value {
                    Some(value) => wrapped.env(name, value),
                    None => wrapped.env_remove(name),
                };
            }
            if let Some(dir) = command.get_current_dir() {
                wrapped.current_dir(dir);
            }
            Some(wrapped)
        }
    }
}

/// SIGKILLs `lockctl run` (an OOM kill, a supervisor's hard stop) while its
/// command works. `script` prints `ready LOCKCTL_PID PID…` naming the
/// command's processes to watch, then works for a few seconds, appending
/// to `$LOG` when each part finishes. Then `lockctl run --no-wait` tries
/// again and again until it gets in; its own command records which of the
/// watched processes still ran while it held the lock: none may.
#[cfg(target_os = "linux")]
fn a_killed_run_leaves_nothing_running_unlocked(url: &str, script: &str, launch: Launch) {
    let sandbox = Sandbox::new();
    let log = sandbox.file("command.log");
    let Some(mut command) = killable_run(&sandbox, url, script, launch) else { return };
    command.env("LOG", &log);
    let mut holder = Proc::spawn(command);
    let ready = holder.wait_for_line("ready", STEP);
    let mut pids: Vec<String> = ready.split_whitespace().skip(1).map(str::to_owned).collect();
    let lockctl: i32 = pids.remove(0).parse().expect("lockctl's pid");
    if launch == Launch::Detached {
        assert_eq!(lockctl, holder.pid());
    }
    let seen: Vec<Seen> = pids.iter().map(|pid| Seen::of(pid.parse().expect("a pid"))).collect();
    let _leftovers = Leftovers(seen.clone());

    common::send(lockctl, Signal::KILL);
    holder.wait(STEP); // reaped: lockctl's pid is gone, as lease files check
    let killed = std::time::Instant::now();

    // The probe prints the stat lines of the watched processes, from inside the lock.
    let probe = "for p in \"$@\"; do cat /proc/$p/stat 2>/dev/null; done; true";
    let mut args = vec!["run", "--no-wait", "job", "--", "sh", "-c", probe, "probe"];
    args.extend(pids.iter().map(String::as_str));
    loop {
        let out = output(sandbox.at(url, &args));
        match out.code {
            Some(75) => {}
            Some(0) => {
                let running: Vec<&Seen> =
                    seen.iter().filter(|seen| out.stdout.lines().any(|line| seen.runs_in(line))).collect();
                assert!(
                    running.is_empty(),
                    "two holders on {url} ({launch:?}): {:?} after lockctl was killed, `run --no-wait` got the \
                     lock while the killed run's command still ran: {running:?}; its log: {:?}",
                    killed.elapsed(),
                    std::fs::read_to_string(&log).unwrap_or_default(),
                );
                break;
            }
            _ => panic!("the probe failed on {url}: {out:?}"),
        }
        assert!(
            killed.elapsed() < Duration::from_secs(15),
            "the lock on {url} was not free 15 s after its holder was killed: {out:?}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(seen.iter().all(|seen| !seen.runs()), "the command's processes ended with the lock");
}

/// A shell working 3 s itself and in a background subshell.
const SHELL_AND_SUBSHELL: &str = "(sleep 3; echo subshell-finished >> \"$LOG\") & echo \"ready $PPID $$ $!\"; \
                                  sleep 3; echo shell-finished >> \"$LOG\"";

#[cfg(target_os = "linux")]
#[test]
fn a_killed_run_never_leaves_its_command_running_unlocked_on_file_locks() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("file", "locks", "");
    a_killed_run_leaves_nothing_running_unlocked(&url, SHELL_AND_SUBSHELL, Launch::Detached);
}

#[cfg(target_os = "linux")]
#[test]
fn a_killed_run_never_leaves_its_command_running_unlocked_on_lease_files() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("file", "locks", "mode=lease&lease=1s");
    a_killed_run_leaves_nothing_running_unlocked(&url, SHELL_AND_SUBSHELL, Launch::Detached);
}

#[cfg(target_os = "linux")]
#[test]
fn a_killed_run_never_leaves_its_command_running_unlocked_on_legacy_files() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("legacy-file", "legacy", "");
    a_killed_run_leaves_nothing_running_unlocked(&url, SHELL_AND_SUBSHELL, Launch::Detached);
}

#[cfg(target_os = "linux")]
#[test]
fn a_killed_run_never_leaves_its_command_running_unlocked_on_redis() {
    let Some(server) = RedisServer::start() else { return };
    // A 1 s lease, renewed every 333 ms: it runs out well before the command would finish.
    let url = format!("{}?lease=1s", server.url());
    a_killed_run_leaves_nothing_running_unlocked(&url, SHELL_AND_SUBSHELL, Launch::Detached);
}

/// A process that left the command's process group (here by setsid(1); a
/// daemon does the same) is out of the reaper's reach, but on kernel locks
/// it inherited the lock descriptor: the lock stays held until it exits.
#[cfg(target_os = "linux")]
fn a_process_that_left_the_group_keeps_the_kernel_lock(url: &str) {
    let script = "setsid sh -c 'echo \"ready $1 $$\"; sleep 2; echo escaped-finished >> \"$LOG\"' escaped $PPID & \
                  sleep 3";
    a_killed_run_leaves_nothing_running_unlocked(url, script, Launch::Detached);
}

#[cfg(target_os = "linux")]
#[test]
fn a_process_that_left_the_group_keeps_the_file_lock() {
    let sandbox = Sandbox::new();
    a_process_that_left_the_group_keeps_the_kernel_lock(&sandbox.url("file", "locks", ""));
}

#[cfg(target_os = "linux")]
#[test]
fn a_process_that_left_the_group_keeps_the_legacy_sidecar_lock() {
    let sandbox = Sandbox::new();
    a_process_that_left_the_group_keeps_the_kernel_lock(&sandbox.url("legacy-file", "legacy", ""));
}

/// In a terminal there is no reaper (the command shares lockctl's process
/// group, for job control): the command itself still dies with lockctl, by
/// its parent-death signal, before the lease could be taken — lease files
/// take a lease at once from a holder whose pid is gone. The command ignores
/// SIGHUP (as under nohup), so the terminal's hangup when lockctl's
/// script(1) exits does not do the work instead.
const IMMUNE_TO_HANGUP: &str = "trap '' HUP; echo \"ready $PPID $$\"; exec sleep 3";

#[cfg(target_os = "linux")]
#[test]
fn in_a_terminal_the_command_dies_with_a_killed_run_on_lease_files() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("file", "locks", "mode=lease");
    a_killed_run_leaves_nothing_running_unlocked(&url, IMMUNE_TO_HANGUP, Launch::Terminal);
}

#[cfg(target_os = "linux")]
#[test]
fn in_a_terminal_the_command_dies_with_a_killed_run_on_redis() {
    let Some(server) = RedisServer::start() else { return };
    let url = format!("{}?lease=1s", server.url());
    a_killed_run_leaves_nothing_running_unlocked(&url, IMMUNE_TO_HANGUP, Launch::Terminal);
}

/// In a terminal, on kernel locks, the command's background work keeps the
/// inherited lock after lockctl and the command died (both ignore SIGHUP,
/// as above).
#[cfg(target_os = "linux")]
#[test]
fn in_a_terminal_background_work_keeps_the_file_lock_of_a_killed_run() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("file", "locks", "");
    let script = "trap '' HUP; (sleep 2; echo subshell-finished >> \"$LOG\") & echo \"ready $PPID $$ $!\"; \
                  exec sleep 3";
    a_killed_run_leaves_nothing_running_unlocked(&url, script, Launch::Terminal);
}

/// The command of a kernel-locked run gets the locked descriptor, and its
/// number in `LOCKMAN_LOCK_FD`; lease backends have none to give.
#[cfg(target_os = "linux")]
#[test]
fn the_command_inherits_the_kernel_lock_descriptor() {
    let sandbox = Sandbox::new();
    let show = "echo \"[${LOCKMAN_LOCK_FD-unset}] $(readlink /proc/$$/fd/${LOCKMAN_LOCK_FD-none})\"";
    for (url, ends) in [
        (sandbox.url("file", "locks", ""), ".lock"),
        (sandbox.url("legacy-file", "legacy", ""), ".lockfile.flock"),
        (sandbox.url("file", "leases", "mode=lease"), ""),
    ] {
        let out = output(sandbox.at(&url, &["run", "job", "--", "sh", "-c", show]));
        assert_eq!(out.code, Some(0), "{out:?}");
        let line = out.stdout.trim();
        if ends.is_empty() {
            assert_eq!(line, "[unset]", "lease files have no descriptor to pass: {out:?}");
        } else {
            assert!(line.starts_with('[') && !line.starts_with("[unset]"), "{url}: {out:?}");
            assert!(line.ends_with(ends), "{url}: the descriptor is the locked file: {out:?}");
        }
    }
}

/// The command does not inherit lockman's secrets: `LOCKMAN_REDIS_PASSWORD`
/// and URL variables holding a password are removed, URLs without one are
/// passed on; `--keep-env` passes everything on.
#[test]
fn the_command_does_not_inherit_lockmans_passwords() {
    const PASSWORD: &str = "s3cr@t:pw";
    let Some(server) = RedisServer::start() else { return };
    assert_eq!(server.command(&["CONFIG", "SET", "requirepass", PASSWORD]).as_deref(), Ok("OK"));
    let sandbox = Sandbox::new();
    let with_password = server.url().replacen("redis://", "redis://:s3cr%40t%3Apw@", 1);
    let flags = sandbox.url("file", "flags", "");
    let run = |extra: &[&str]| {
        let mut args = vec!["run"];
        args.extend_from_slice(extra);
        args.extend_from_slice(&["job", "--", "env"]);
        let mut command = sandbox.lockctl(&args);
        command
            .env("LOCKMAN_URL", &with_password)
            .env("LOCKMAN_STATUS_URL", &flags)
            .env("LOCKMAN_LEGACY_URL", "legacy-file://u:s3cr@t-legacy@host/dir")
            .env("LOCKMAN_REDIS_PASSWORD", "s3cr@t-env");
        let said = output(command);
        assert_eq!(said.code, Some(0), "{said:?}");
        said.stdout
    };
    let env = run(&[]);
    assert!(!env.contains("s3cr"), "a password reached the command:\n{env}");
    assert!(!env.contains("LOCKMAN_URL=") && !env.contains("LOCKMAN_LEGACY_URL="), "{env}");
    assert!(env.contains(&format!("LOCKMAN_STATUS_URL={flags}")), "a URL without a password was removed:\n{env}");
    assert!(env.contains("LOCKMAN_RESOURCE=job"), "{env}");
    let env = run(&["--keep-env"]);
    for kept in [format!("LOCKMAN_URL={with_password}"), "LOCKMAN_REDIS_PASSWORD=s3cr@t-env".to_owned()] {
        assert!(env.contains(&kept), "--keep-env did not pass on {kept}:\n{env}");
    }
}
