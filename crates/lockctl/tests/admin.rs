//! `status`, `list`, `cleanup`, `flag`, `watch`, configuration and errors,
//! black-box.

mod common;

use std::time::Duration;

use common::{Proc, STEP, Sandbox, output, waiting_shell};
use lockman_testkit::redis_server::RedisServer;
use rustix::process::Signal;
use serde_json::Value;

/// `lockctl run` holding `resource` until signalled.
fn hold(sandbox: &Sandbox, url: &str, resource: &str) -> Proc {
    let shell = waiting_shell(0);
    let args = ["run", "--purpose", "nightly backup", resource, "--", "sh", "-c", &shell];
    let mut holder = Proc::spawn(sandbox.at(url, &args));
    holder.wait_ready();
    holder
}

/// A holder killed with SIGKILL, so nothing releases the lock. Its command
/// dies with it; until then (and until whatever inherited a kernel lock's
/// descriptor is gone too) the lock stays held. Returns the dead lockctl's pid.
fn crash(sandbox: &Sandbox, url: &str, mut holder: Proc) -> i32 {
    let pid = holder.pid();
    holder.signal(Signal::KILL);
    let status = holder.wait(STEP);
    assert_eq!(status.code(), None, "killed by a signal");
    drop(holder); // kills the command, should it have outlived lockctl
    common::eventually("the killed holder's command to let go of the lock", STEP, || {
        output(sandbox.at(url, &["status", "job"])).code != Some(1)
    });
    pid
}

fn json(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
}

/// `status` exits 0 free, 1 held, 2 stale, on a backend where a killed
/// holder leaves a stale lock; `cleanup` removes it.
fn status_and_cleanup(url: &str) {
    let sandbox = Sandbox::new();
    let out = output(sandbox.at(url, &["status", "job"]));
    assert_eq!(out.code, Some(0), "free: {out:?}");
    assert!(out.stdout.contains("\"job\": available"), "{out:?}");

    let holder = hold(&sandbox, url, "job");
    let holder_pid = holder.pid();
    let out = output(sandbox.at(url, &["status", "job"]));
    assert_eq!(out.code, Some(1), "held: {out:?}");
    assert!(out.stdout.contains("\"job\": held") && out.stdout.contains("nightly backup"), "{out:?}");
    let out = output(sandbox.at(url, &["--json", "status", "job"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    let status = json(&out.stdout);
    assert_eq!(status["state"], "held");
    assert_eq!(status["pid"], holder_pid);
    assert_eq!(status["purpose"], "nightly backup");

    let out = output(sandbox.at(url, &["cleanup", "--dry-run"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("no stale locks"), "a live holder is not stale: {out:?}");

    crash(&sandbox, url, holder);
    let out = output(sandbox.at(url, &["status", "job"]));
    assert_eq!(out.code, Some(2), "stale after the holder was killed: {out:?}");
    assert!(out.stdout.contains("\"job\": stale"), "{out:?}");

    let out = output(sandbox.at(url, &["list"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let row = out.stdout.lines().find(|line| line.starts_with("job ")).unwrap_or_else(|| panic!("{out:?}"));
    assert!(row.contains("stale") && row.contains(&holder_pid.to_string()), "{out:?}");

    let out = output(sandbox.at(url, &["cleanup", "--dry-run"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("would remove stale lock \"job\""), "{out:?}");
    let out = output(sandbox.at(url, &["status", "job"]));
    assert_eq!(out.code, Some(2), "a dry run breaks nothing: {out:?}");

    let out = output(sandbox.at(url, &["cleanup"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("removed stale lock \"job\""), "{out:?}");
    assert!(out.stdout.contains(&format!("pid {holder_pid}")), "{out:?}");
    let out = output(sandbox.at(url, &["status", "job"]));
    assert_eq!(out.code, Some(0), "free after cleanup: {out:?}");
}

#[test]
fn status_and_cleanup_on_lease_files() {
    let sandbox = Sandbox::new();
    // A lease file whose holder's pid is dead on this host is stale at once.
    status_and_cleanup(&sandbox.url("file", "locks", "mode=lease"));
}

#[test]
fn status_and_cleanup_on_legacy_files() {
    let sandbox = Sandbox::new();
    // A legacy lock whose holder's sidecar is no longer locked is stale at once.
    status_and_cleanup(&sandbox.url("legacy-file", "legacy", ""));
}

#[test]
fn cleanup_tidies_a_killed_kernel_lock_holders_file() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("file", "locks", "");
    let holder = hold(&sandbox, &url, "job");
    let pid = crash(&sandbox, &url, holder);
    // The kernel dropped the lock with the last process holding it: free, nothing stale.
    let out = output(sandbox.at(&url, &["status", "job"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    // cleanup removes the file it left, naming the crashed holder.
    let out = output(sandbox.at(&url, &["cleanup"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("removed stale lock \"job\": locked by"), "{out:?}");
    assert!(out.stdout.contains(&format!("pid {pid}")), "{out:?}");
}

#[test]
fn list_shows_holder_host_pid_purpose_and_age_on_redis() {
    let Some(server) = RedisServer::start() else { return };
    let sandbox = Sandbox::new();
    let url = server.url();
    let out = output(sandbox.at(&url, &["list"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.starts_with("no locks held"), "{out:?}");

    let holder = hold(&sandbox, &url, "inverter_read");
    let out = output(sandbox.at(&url, &["list"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let mut lines = out.stdout.lines();
    let header = lines.next().unwrap_or_default();
    for column in ["RESOURCE", "STATE", "HOLDER", "HOST", "PID", "SINCE", "AGE", "PURPOSE", "LEASE LEFT", "TOKEN"] {
        assert!(header.contains(column), "{column} missing: {out:?}");
    }
    let row = lines.next().unwrap_or_default();
    assert!(row.starts_with("inverter_read  held"), "{out:?}");
    assert!(row.contains(&holder.pid().to_string()) && row.contains("nightly backup"), "{out:?}");

    let out = output(sandbox.at(&url, &["--json", "list"]));
    let list = json(&out.stdout);
    let locks = list.as_array().expect("one array");
    assert_eq!(locks.len(), 1, "{out:?}");
    let lock = &locks[0];
    assert_eq!(lock["resource"], "inverter_read");
    assert_eq!(lock["state"], "held");
    assert_eq!(lock["pid"], holder.pid());
    assert_eq!(lock["purpose"], "nightly backup");
    assert_eq!(lock["backend"], "redis");
    assert!(lock["host"].as_str().is_some_and(|h| !h.is_empty()), "{lock}");
    assert!(lock["age_seconds"].as_f64().is_some_and(|age| age >= 0.0), "{lock}");
    assert!(lock["lease_left_seconds"].as_f64().is_some_and(|left| left > 0.0), "{lock}");
    assert!(lock["fencing_token"].as_u64().is_some(), "{lock}");
}

fn flag_round_trip(url: &str) {
    let sandbox = Sandbox::new();
    let out = output(sandbox.at(url, &["flag", "get", ".FCRunning1"]));
    assert_eq!(out.code, Some(1), "not set yet: {out:?}");

    let out = output(sandbox.at(url, &["flag", "set", ".FCRunning1", "--value", "job-7"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = output(sandbox.at(url, &["flag", "set", "short-lived", "--ttl", "1s", "--value", "v"]));
    assert_eq!(out.code, Some(0), "{out:?}");

    let out = output(sandbox.at(url, &["flag", "get", ".FCRunning1"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("\"job-7\"") && out.stdout.contains("never"), "{out:?}");
    let out = output(sandbox.at(url, &["--json", "flag", "get", "short-lived"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let flag = json(&out.stdout);
    assert_eq!(flag["value"], "v");
    assert!(flag["ttl_left_seconds"].as_f64().is_some_and(|left| left <= 1.0), "{flag}");

    let out = output(sandbox.at(url, &["--json", "flag", "list"]));
    let flags = json(&out.stdout);
    let names: Vec<&str> = flags.as_array().expect("one array").iter().filter_map(|f| f["name"].as_str()).collect();
    assert_eq!(names, [".FCRunning1", "short-lived"], "{out:?}");
    let out = output(sandbox.at(url, &["flag", "list"]));
    assert!(out.stdout.starts_with("FLAG") && out.stdout.contains("job-7"), "{out:?}");

    // The TTL runs out: the flag clears itself.
    common::eventually("the 1 s flag to expire", Duration::from_secs(10), || {
        output(sandbox.at(url, &["flag", "get", "short-lived"])).code == Some(1)
    });

    let out = output(sandbox.at(url, &["flag", "clear", ".FCRunning1"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = output(sandbox.at(url, &["flag", "clear", ".FCRunning1"]));
    assert_eq!(out.code, Some(1), "already clear: {out:?}");
    let out = output(sandbox.at(url, &["flag", "list"]));
    assert!(out.stdout.starts_with("no flags set"), "{out:?}");
}

#[test]
fn flags_round_trip_with_ttl_expiry_on_files() {
    let sandbox = Sandbox::new();
    flag_round_trip(&sandbox.url("file", "flags", ""));
}

#[test]
fn flags_round_trip_with_ttl_expiry_on_redis() {
    let Some(server) = RedisServer::start() else { return };
    flag_round_trip(&server.url());
}

#[test]
fn bad_urls_are_configuration_errors() {
    let sandbox = Sandbox::new();
    let out = output(sandbox.at("bogus://somewhere", &["list"]));
    assert_eq!(out.code, Some(78), "{out:?}");
    assert!(out.stderr.starts_with("lockctl: configuration error: unknown lock backend `bogus://`"), "{out:?}");
    assert!(out.stderr.contains("valid schemes: memory://"), "lists the valid ones: {out:?}");
    assert_eq!(out.stderr.lines().count(), 1, "{out:?}");

    let out = output(sandbox.at("not a url", &["status", "x"]));
    assert_eq!(out.code, Some(78), "{out:?}");
    assert!(out.stderr.starts_with("lockctl: configuration error: cannot read the backend URL"), "{out:?}");

    let url = sandbox.url("file", "locks", "colour=blue");
    let out = output(sandbox.at(&url, &["list"]));
    assert_eq!(out.code, Some(78), "{out:?}");
    assert!(out.stderr.contains("unknown option `colour`"), "{out:?}");

    let out = output(sandbox.lockctl(&["--config", "/nonexistent/lockman.toml", "list"]));
    assert_eq!(out.code, Some(78), "{out:?}");
    assert!(out.stderr.contains("configuration file /nonexistent/lockman.toml is not a readable file"), "{out:?}");
}

#[test]
fn an_unreachable_redis_is_a_backend_error() {
    let sandbox = Sandbox::new();
    // A port nobody listens on: bound, then released.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).expect("a free port").port();
    let url = format!("redis://127.0.0.1:{port}/0?connect_timeout=1s");
    let out = output(sandbox.at(&url, &["list"]));
    assert_eq!(out.code, Some(69), "{out:?}");
    assert!(out.stderr.starts_with("lockctl: redis backend failed"), "{out:?}");
}

#[test]
fn bad_names_are_refused_with_exit_65() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("file", "locks", "");
    let long = "x".repeat(2000);
    for args in [
        vec!["status", ""],
        vec!["status", &long],
        vec!["run", "", "--", "true"],
        vec!["release", "--force", ""],
        vec!["flag", "set", ""],
    ] {
        let out = output(sandbox.at(&url, &args));
        assert_eq!(out.code, Some(65), "{args:?}: {out:?}");
        assert!(out.stderr.starts_with("lockctl: invalid name"), "{args:?}: {out:?}");
        assert_eq!(out.stderr.lines().count(), 1, "{out:?}");
    }
    // Odd but valid names are distinct resources, never paths.
    let out = output(sandbox.at(&url, &["run", "../../etc/passwd", "--", "true"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    let out = output(sandbox.at(&url, &["status", "../../etc/passwd"]));
    assert_eq!(out.code, Some(0), "{out:?}");
}

#[test]
fn usage_errors_exit_64_and_help_lists_the_exit_codes() {
    let sandbox = Sandbox::new();
    for args in [vec!["frobnicate"], vec!["run", "job"], vec!["run", "--wait", "soon", "job", "--", "true"], vec![]] {
        let out = output(sandbox.lockctl(&args));
        assert_eq!(out.code, Some(64), "{args:?}: {out:?}");
    }
    let out = output(sandbox.lockctl(&["--help"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    for code in ["64", "65", "69", "75", "76", "78", "127"] {
        assert!(out.stdout.contains(&format!("\n  {code} ")), "exit code {code} documented: {out:?}");
    }
}

#[test]
fn config_file_and_url_override() {
    let sandbox = Sandbox::new();
    let from_file = sandbox.url("file", "from-file", "");
    let config = sandbox.file("custom.toml");
    std::fs::write(&config, format!("url = \"{from_file}\"\n")).expect("write the config");
    let config = config.to_str().expect("utf-8 path");

    let out = output(sandbox.lockctl(&["--config", config, "flag", "set", "where"]));
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(sandbox.file("from-file").is_dir(), "the file's URL was used");

    // --url wins over the file.
    let from_flag = sandbox.url("file", "from-flag", "");
    let out = output(sandbox.lockctl(&["--config", config, "--url", &from_flag, "flag", "get", "where"]));
    assert_eq!(out.code, Some(1), "another backend: {out:?}");

    // lockman.toml in the working directory, as for every lockman program.
    std::fs::write(sandbox.file("lockman.toml"), format!("url = \"{from_file}\"\n")).expect("write lockman.toml");
    let out = output(sandbox.lockctl(&["flag", "get", "where"]));
    assert_eq!(out.code, Some(0), "{out:?}");

    // LOCKMAN_URL overrides the file.
    let mut command = sandbox.lockctl(&["flag", "get", "where"]);
    command.env("LOCKMAN_URL", &from_flag);
    let out = output(command);
    assert_eq!(out.code, Some(1), "{out:?}");
}

#[test]
fn watch_notes_its_limits_and_sees_other_processes_by_polling() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("file", "locks", "");
    let mut watch = Proc::spawn(sandbox.at(&url, &["--json", "watch", "--poll", "100ms"]));
    common::eventually("the note on stderr", STEP, || watch.stderr().contains("note: lock events are published"));

    let mut holder = hold(&sandbox, &url, "job");
    let line = watch.wait_for_line("\"kind\":\"locked\"", STEP);
    let event = json(&line);
    assert_eq!(event["resource"], "job");
    assert_eq!(event["source"], "poll");
    assert_eq!(event["pid"], holder.pid());

    holder.signal(Signal::TERM);
    holder.wait(STEP);
    let line = watch.wait_for_line("\"kind\":\"released\"", STEP);
    assert_eq!(json(&line)["resource"], "job");

    watch.signal(Signal::INT);
    let status = watch.wait(STEP);
    assert_eq!(status.code(), Some(0), "{}", watch.stderr());
}
