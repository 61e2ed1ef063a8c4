//! Records planted by a hostile neighbour (any client of the Redis server,
//! another user of a shared lock directory): absurd times and text made to
//! drive a terminal. lockctl must neither crash nor pass them through raw.

mod common;

use std::path::Path;

use common::{Output, Proc, STEP, Sandbox, output, waiting_shell};
use lockman_testkit::redis_server::RedisServer;
use rustix::process::Signal;

/// 3e17 µs after 1970: about the year 11476, past any calendar formatter.
const FAR_FUTURE_US: &str = "300000000000000000";

/// Clears the screen, sets the window title, rings, returns the carriage,
/// starts a fake line, and flips the text's direction.
const HOSTILE: &str = "evil\x1b[2J\x1b]0;pwned\x07\r\nFAKE: lockctl: all locks released\u{202e}txt.exe";

/// Plants the hash of a lock on `resource` as any Redis client could, with
/// `text` in every free-text field, no TTL.
fn plant_lock(server: &RedisServer, resource: &str, acquired_us: &str, text: &str) {
    let key = format!("lockman:{{{resource}}}:lock");
    let fields = [
        "holder",
        text,
        "token",
        "5",
        "count",
        "1",
        "acquired_us",
        acquired_us,
        "host",
        text,
        "pid",
        "1",
        "purpose",
        text,
        "user",
        text,
    ];
    let mut args = vec!["HSET", key.as_str()];
    args.extend_from_slice(&fields);
    server.command(&args).unwrap_or_else(|e| panic!("cannot plant {key}: {e}"));
}

/// Neither a panic (101) nor a signal.
fn assert_no_crash(what: &str, out: &Output) {
    assert!(out.code.is_some_and(|code| code != 101), "{what} crashed: {out:?}");
    assert!(!out.stderr.contains("panicked"), "{what} panicked: {out:?}");
}

/// What is unsafe in `out`: raw escape, carriage return, bell or bidi
/// control characters, or a line the planted text started.
fn terminal_hazards(what: &str, out: &Output) -> Vec<String> {
    let mut found = Vec::new();
    for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        for bad in ['\x1b', '\r', '\x07', '\u{202e}', '\u{9b}'] {
            if text.contains(bad) {
                found.push(format!("{what}: raw {bad:?} on {stream}: {text:?}"));
            }
        }
        if text.lines().any(|line| line.starts_with("FAKE")) {
            found.push(format!("{what}: a faked line on {stream}: {text:?}"));
        }
    }
    found
}

fn assert_terminal_safe(what: &str, out: &Output) {
    let found = terminal_hazards(what, out);
    assert!(found.is_empty(), "{}", found.join("\n"));
}

/// Runs every command in `commands` (each must show the planted text) and
/// fails listing every hazard found, not only the first.
fn assert_all_terminal_safe(sandbox: &Sandbox, url: &str, commands: &[&[&str]]) {
    let mut found = Vec::new();
    for args in commands {
        let out = output(sandbox.at(url, args));
        let what = format!("{args:?}");
        assert_no_crash(&what, &out);
        assert!(
            out.stdout.contains("evil") || out.stderr.contains("evil") || args.contains(&"cleanup"),
            "{what}: the planted text is shown, escaped: {out:?}"
        );
        found.extend(terminal_hazards(&what, &out));
    }
    assert!(found.is_empty(), "{} hazards:\n{}", found.len(), found.join("\n"));
}

#[test]
fn a_planted_redis_lock_with_an_absurd_time_does_not_crash_lockctl() {
    let Some(server) = RedisServer::start() else { return };
    let sandbox = Sandbox::new();
    let url = server.url();
    plant_lock(&server, "job", FAR_FUTURE_US, "planted");

    let out = output(sandbox.at(&url, &["list"]));
    assert_no_crash("list", &out);
    assert_eq!(out.code, Some(0), "{out:?}");
    assert!(out.stdout.contains("far future (corrupt?"), "the time is flagged: {out:?}");

    let out = output(sandbox.at(&url, &["status", "job"]));
    assert_no_crash("status", &out);
    assert_eq!(out.code, Some(1), "held: {out:?}");
    assert!(out.stdout.contains(FAR_FUTURE_US), "the raw number is shown: {out:?}");

    for args in [&["--json", "list"][..], &["--json", "status", "job"]] {
        let out = output(sandbox.at(&url, args));
        assert_no_crash(&format!("{args:?}"), &out);
        let value: serde_json::Value =
            serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {out:?}"));
        let lock = if value.is_array() { &value[0] } else { &value };
        assert_eq!(lock["holder"], "planted", "{args:?}: {out:?}");
        assert!(lock["acquired_at"].is_null(), "an out-of-range time is null: {out:?}");
    }

    let out = output(sandbox.at(&url, &["run", "-n", "job", "--", "true"]));
    assert_no_crash("run -n", &out);
    assert_eq!(out.code, Some(75), "busy: {out:?}");
    assert!(out.stderr.contains("locked by planted") && out.stderr.contains("far future"), "{out:?}");

    let out = output(sandbox.at(&url, &["release", "--force", "job"]));
    assert_no_crash("release", &out);
    assert_eq!(out.code, Some(0), "{out:?}");
}

#[test]
fn planted_redis_text_reaches_no_terminal_raw() {
    let Some(server) = RedisServer::start() else { return };
    let sandbox = Sandbox::new();
    let url = server.url();
    plant_lock(&server, "job", "1700000000000000", HOSTILE);
    let flag = "lockman:flag:{.FCRunning1}";
    server
        .command(&["HSET", flag, "has_value", "1", "value", HOSTILE, "set_us", "1700000000000000"])
        .unwrap_or_else(|e| panic!("cannot plant {flag}: {e}"));

    let commands: [&[&str]; 12] = [
        &["list"],
        &["--json", "list"],
        &["status", "job"],
        &["--json", "status", "job"],
        &["run", "-n", "job", "--", "true"],
        &["--json", "run", "-n", "job", "--", "true"],
        &["cleanup", "--dry-run"],
        &["cleanup"],
        &["flag", "list"],
        &["flag", "get", ".FCRunning1"],
        &["--json", "flag", "get", ".FCRunning1"],
        &["release", "--force", "--reason", HOSTILE, "job"],
    ];
    assert_all_terminal_safe(&sandbox, &url, &commands);
    // `release` said whose lock it broke; plant it again for the JSON form.
    plant_lock(&server, "job", "1700000000000000", HOSTILE);
    let out = output(sandbox.at(&url, &["--json", "release", "--force", "job"]));
    assert_no_crash("--json release", &out);
    assert_terminal_safe("--json release", &out);
    let value: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(value["host"], HOSTILE, "JSON keeps the exact value: {out:?}");
}

/// CRC-32 (IEEE), as lease records carry it.
fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in data {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 { (crc >> 1) ^ 0xedb8_8320 } else { crc >> 1 };
        }
    }
    !crc
}

/// Plants a held lease record for `resource` in `dir`, as another user of a
/// shared directory could: named like the `.seq` file a real run left.
fn plant_lease(dir: &Path, resource: &str, body: &str) {
    let seq = std::fs::read_dir(dir)
        .expect("the lock directory exists")
        .filter_map(|entry| entry.ok().map(|e| e.path()))
        .find(|path| {
            path.extension().is_some_and(|ext| ext == "seq")
                && path.file_name().is_some_and(|name| name.to_string_lossy().starts_with(&format!("{resource}-")))
        })
        .unwrap_or_else(|| panic!("no .seq file for {resource} in {}", dir.display()));
    let mut record = format!("LMF1 H {:08x} {:010}\n", crc32(body.as_bytes()), body.len()).into_bytes();
    record.extend_from_slice(body.as_bytes());
    std::fs::write(seq.with_extension("lease"), record).expect("cannot plant the lease record");
}

#[test]
fn a_planted_lease_record_with_an_absurd_time_does_not_crash_lockctl() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("file", "locks", "mode=lease");
    let out = output(sandbox.at(&url, &["run", "job", "--", "true"]));
    assert_eq!(out.code, Some(0), "a first run names the files: {out:?}");
    let body = format!(
        r#"{{"resource":"job","holder":"planted","user":null,"host":"elsewhere","pid":1,"purpose":null,"acquired_at_us":{FAR_FUTURE_US},"lease_ms":30000,"heartbeat_us":{FAR_FUTURE_US},"token":7}}"#
    );
    plant_lease(&sandbox.file("locks"), "job", &body);

    // Whether the backend shows the record with its time flagged, clamps the
    // time or refuses the record as corrupt is the backend's call; lockctl
    // must answer either way.
    for args in [&["list"][..], &["status", "job"], &["--json", "list"], &["--json", "status", "job"]] {
        let out = output(sandbox.at(&url, args));
        assert_no_crash(&format!("{args:?}"), &out);
        assert!(matches!(out.code, Some(0..=2)), "{args:?}: {out:?}");
        if args[0] == "--json" {
            let parsed = serde_json::from_str::<serde_json::Value>(&out.stdout);
            assert!(parsed.is_ok(), "{args:?}: not JSON: {out:?}");
        }
    }
    let out = output(sandbox.at(&url, &["run", "-n", "job", "--", "true"]));
    assert_no_crash("run -n", &out);
    let out = output(sandbox.at(&url, &["cleanup"]));
    assert_no_crash("cleanup", &out);
}

/// The attack through `$USER` and `--purpose`: a neighbour's own `lockctl
/// run` stores them in its lock record; root's commands print them.
#[test]
fn a_neighbours_user_and_purpose_reach_no_terminal_raw() {
    let sandbox = Sandbox::new();
    let url = sandbox.url("file", "locks", "mode=lease");
    let shell = waiting_shell(0);
    let mut hold = sandbox.at(&url, &["run", "--purpose", HOSTILE, "job", "--", "sh", "-c", &shell]);
    hold.env("USER", HOSTILE);
    let mut holder = Proc::spawn(hold);
    holder.wait_ready();

    let commands: [&[&str]; 5] = [
        &["list"],
        &["status", "job"],
        &["--json", "list"],
        &["run", "-n", "job", "--", "true"],
        &["release", "--force", "job"],
    ];
    assert_all_terminal_safe(&sandbox, &url, &commands);
    holder.signal(Signal::KILL);
    holder.wait(STEP);
    drop(holder);

    // A holder killed outright leaves its record for `cleanup`.
    let mut hold = sandbox.at(&url, &["run", "--purpose", HOSTILE, "job", "--", "sh", "-c", &shell]);
    hold.env("USER", HOSTILE);
    let mut holder = Proc::spawn(hold);
    holder.wait_ready();
    holder.signal(Signal::KILL);
    holder.wait(STEP);
    drop(holder);
    common::eventually("the killed holder's lock to be stale", STEP, || {
        output(sandbox.at(&url, &["status", "job"])).code == Some(2)
    });
    let out = output(sandbox.at(&url, &["cleanup"]));
    assert_no_crash("cleanup", &out);
    assert_terminal_safe("cleanup", &out);
    assert!(out.stdout.starts_with("removed stale lock \"job\""), "{out:?}");
    assert!(out.stdout.contains("evil"), "{out:?}");
}

#[test]
fn watch_shows_planted_text_escaped() {
    let Some(server) = RedisServer::start() else { return };
    let sandbox = Sandbox::new();
    let url = server.url();
    let mut text = Proc::spawn(sandbox.at(&url, &["watch", "--poll", "100ms"]));
    let mut json = Proc::spawn(sandbox.at(&url, &["--json", "watch", "--poll", "100ms"]));
    for watch in [&text, &json] {
        common::eventually("the note on stderr", STEP, || watch.stderr().contains("note: lock events are published"));
    }
    plant_lock(&server, "job", "1700000000000000", HOSTILE);
    let line = text.wait_for_line("locked", STEP);
    assert!(line.contains("evil"), "{line:?}");
    let line = json.wait_for_line("\"kind\":\"locked\"", STEP);
    let event: serde_json::Value = serde_json::from_str(&line).unwrap_or_else(|e| panic!("{e}: {line:?}"));
    assert_eq!(event["holder"], HOSTILE, "JSON keeps the exact value");
    for (what, watch) in [("watch", &mut text), ("--json watch", &mut json)] {
        watch.signal(Signal::INT);
        let status = watch.wait(STEP);
        let out = watch.output(status);
        assert_eq!(out.code, Some(0), "{what}: {out:?}");
        assert_terminal_safe(what, &out);
    }
}
