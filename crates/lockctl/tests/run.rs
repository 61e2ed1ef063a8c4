//! `lockctl run`, black-box: exclusion between processes on every
//! cross-process backend, conflicts, exit statuses, signals, lost locks,
//! leases, metrics.

mod common;

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::Duration;

use common::{Proc, STEP, Sandbox, output, waiting_shell};
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

/// Starts `lockctl run` holding `resource` with a command that waits for a signal.
fn hold(sandbox: &Sandbox, url: &str, resource: &str, extra: &[&str]) -> Proc {
    let shell = waiting_shell(0);
    let mut args = vec!["run"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&[resource, "--", "sh", "-c", &shell]);
    let mut holder = Proc::spawn(sandbox.at(url, &args));
    holder.wait_ready();
    holder
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
