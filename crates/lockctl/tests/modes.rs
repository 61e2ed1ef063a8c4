//! `lockctl run --shared` and `--permits N` between processes, and what
//! `list`/`status` show of a resource with several holders.

mod common;

use common::{Proc, STEP, Sandbox, hold, output};
use lockman_testkit::redis_server::RedisServer;
use rustix::process::Signal;

fn end(mut holders: Vec<Proc>) {
    for holder in &mut holders {
        holder.signal(Signal::TERM);
        assert_eq!(holder.wait(STEP).code(), Some(0), "{}", holder.stderr());
    }
}

/// Two shared runs hold together; an exclusive run cannot get in, another
/// shared one can; list and status show both holders.
fn shared_runs_hold_together(url: &str) {
    let sandbox = Sandbox::new();
    let readers = vec![
        hold(&sandbox, url, "cache", &["--shared", "--purpose", "reader one"]),
        hold(&sandbox, url, "cache", &["-s", "--purpose", "reader two"]),
    ];
    let out = output(sandbox.at(url, &["run", "--no-wait", "cache", "--", "true"]));
    assert_eq!(out.code, Some(75), "an exclusive run got in beside shared ones: {out:?}");
    assert!(out.stderr.contains("reader one") || out.stderr.contains("reader two"), "names a holder: {out:?}");
    let out = output(sandbox.at(url, &["run", "--shared", "--no-wait", "cache", "--", "true"]));
    assert_eq!(out.code, Some(0), "a third shared run was kept out: {out:?}");

    let out = output(sandbox.at(url, &["status", "cache"]));
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(out.stdout.contains("shared (2 holders)"), "{}", out.stdout);
    assert!(out.stdout.contains("reader one") && out.stdout.contains("reader two"), "{}", out.stdout);
    let out = output(sandbox.at(url, &["list"]));
    let rows: Vec<&str> = out.stdout.lines().filter(|line| line.starts_with("cache")).collect();
    assert_eq!(rows.len(), 2, "one row per holder: {}", out.stdout);
    assert!(rows.iter().all(|row| row.contains("shared")), "{}", out.stdout);
    let out = output(sandbox.at(url, &["--json", "list"]));
    let listed: serde_json::Value = serde_json::from_str(&out.stdout).expect("list --json is JSON");
    let cache = listed.as_array().and_then(|rows| rows.iter().find(|row| row["resource"] == "cache")).cloned();
    let cache = cache.unwrap_or_else(|| panic!("cache missing: {}", out.stdout));
    assert_eq!(cache["mode"], "shared", "{cache}");
    assert_eq!(cache["holders"].as_array().map(Vec::len), Some(2), "{cache}");
    end(readers);
}

/// A semaphore of 2: two runs hold it, a third cannot get in, and a run
/// that asks for another count is told the counts differ.
fn permit_runs_are_limited(url: &str) {
    let sandbox = Sandbox::new();
    let holders =
        vec![hold(&sandbox, url, "jobs", &["--permits", "2"]), hold(&sandbox, url, "jobs", &["--permits", "2"])];
    let out = output(sandbox.at(url, &["run", "--permits", "2", "--no-wait", "jobs", "--", "true"]));
    assert_eq!(out.code, Some(75), "a third run got into a semaphore of 2: {out:?}");
    let out = output(sandbox.at(url, &["run", "--permits", "3", "--no-wait", "jobs", "--", "true"]));
    assert_eq!(out.code, Some(78), "another permit count is a configuration error: {out:?}");
    assert!(out.stderr.contains("2 permits") && out.stderr.contains("3 permits"), "{out:?}");
    let out = output(sandbox.at(url, &["status", "jobs"]));
    assert!(out.stdout.contains("permits(2) (2 holders)"), "{}", out.stdout);
    end(holders);
    let out = output(sandbox.at(url, &["run", "--permits", "3", "--no-wait", "jobs", "--", "true"]));
    assert_eq!(out.code, Some(0), "a free resource takes any count: {out:?}");
}

#[test]
fn shared_runs_hold_together_on_file_locks() {
    let sandbox = Sandbox::new();
    shared_runs_hold_together(&sandbox.url("file", "locks", ""));
}

#[test]
fn permit_runs_are_limited_on_file_locks() {
    let sandbox = Sandbox::new();
    permit_runs_are_limited(&sandbox.url("file", "locks", ""));
}

#[test]
fn shared_runs_hold_together_on_redis() {
    let Some(server) = RedisServer::start() else { return };
    shared_runs_hold_together(&server.url());
}

#[test]
fn permit_runs_are_limited_on_redis() {
    let Some(server) = RedisServer::start() else { return };
    permit_runs_are_limited(&server.url());
}

#[test]
fn legacy_files_refuse_shared_runs_saying_why() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("legacy-file", "legacy", "");
    let out = output(sandbox.at(&url, &["run", "--shared", "cache", "--", "true"]));
    assert_eq!(out.code, Some(78), "{out:?}");
    assert!(out.stderr.contains("legacy lockfile protocol has one holder"), "{out:?}");
    let out = output(sandbox.at(&url, &["run", "--shared", "--permits", "2", "cache", "--", "true"]));
    assert_eq!(out.code, Some(64), "--shared and --permits together are a usage error: {out:?}");
}
