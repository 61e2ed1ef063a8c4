//! Records planted by a hostile neighbour (any client of the Redis server,
//! another user of a shared lock directory): absurd times and text made to
//! drive a terminal. lockctl must neither crash nor pass them through raw.

mod common;

use common::{Output, Sandbox, output};
use lockman_testkit::redis_server::RedisServer;

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

/// No raw escape, carriage return, bell or bidi control, and no line the
/// planted text started.
fn assert_terminal_safe(what: &str, out: &Output) {
    for (stream, text) in [("stdout", &out.stdout), ("stderr", &out.stderr)] {
        for bad in ['\x1b', '\r', '\x07', '\u{202e}', '\u{9b}'] {
            assert!(!text.contains(bad), "{what}: raw {bad:?} on {stream}: {out:?}");
        }
        assert!(!text.lines().any(|line| line.starts_with("FAKE")), "{what}: a faked line on {stream}: {out:?}");
    }
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
    for args in commands {
        let out = output(sandbox.at(&url, args));
        let what = format!("{args:?}");
        assert_no_crash(&what, &out);
        assert_terminal_safe(&what, &out);
        assert!(
            out.stdout.contains("evil") || out.stderr.contains("evil") || args[0] == "cleanup",
            "{what}: the planted text is shown, escaped: {out:?}"
        );
    }
    // `release` said whose lock it broke; plant it again for the JSON form.
    plant_lock(&server, "job", "1700000000000000", HOSTILE);
    let out = output(sandbox.at(&url, &["--json", "release", "--force", "job"]));
    assert_no_crash("--json release", &out);
    assert_terminal_safe("--json release", &out);
    let value: serde_json::Value = serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"));
    assert_eq!(value["host"], HOSTILE, "JSON keeps the exact value: {out:?}");
}
