//! How locks, flags and events look: tables for people, JSON for scripts.
//!
//! Everything shown comes from records other users or hosts wrote, so it is
//! untrusted: every stored string goes through [`printable`] (lockman's
//! [`display::escape`]: control and bidi characters escaped), every stored
//! time through [`rfc3339`] (never fails, flags a corrupt one), and, as a last
//! guard, [`say`] and [`note`] escape any control or bidi character left but
//! the newlines of a table. JSON keeps every value exact but writes control,
//! bidi and line-separator characters as `\uXXXX` escapes, so it is safe on a
//! terminal too; a stored time out of range (before 1970, after 9999) is
//! `null` there.

use std::time::{Duration, SystemTime};

use lockman::display;
use lockman::{FlagInfo, LockEvent, LockInfo, LockMode, LockState, LockStateKind};
use serde::Serialize;

use crate::exit::{self, Failure};

/// Writes `text` to stdout, ending it with a newline if it has none, and
/// flushes; control and bidi characters other than newlines are escaped
/// (every stored field already is: this is the last guard). A closed pipe (`lockctl list | head -1`) ends lockctl quietly
/// with 141 (128 + SIGPIPE), as if the signal had killed it.
pub fn say(text: &str) -> Result<(), Failure> {
    use std::io::Write;

    let text = display::escape_keeping_newlines(text);
    let mut stdout = std::io::stdout().lock();
    let newline = if text.ends_with('\n') { "" } else { "\n" };
    let written = stdout.write_all(text.as_bytes()).and_then(|()| stdout.write_all(newline.as_bytes()));
    match written.and_then(|()| stdout.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(Failure::new(exit::BROKEN_PIPE, "")),
        Err(e) => Err(Failure::new(exit::OSERR, format!("cannot write to stdout: {e}"))),
    }
}

/// Writes `lockctl: <text>` as one line to stderr, control and bidi
/// characters escaped (ignoring a closed stderr: there is nowhere left to
/// complain).
pub fn note(text: &str) {
    use std::io::Write;

    let _ = writeln!(std::io::stderr().lock(), "lockctl: {}", display::escape(&exit::one_line(text)));
}

/// Prints `value` as JSON on one line (see [`TerminalSafeJson`]).
pub fn say_json(value: &impl Serialize) -> Result<(), Failure> {
    let mut text = Vec::with_capacity(256);
    value
        .serialize(&mut serde_json::Serializer::with_formatter(&mut text, TerminalSafeJson))
        .map_err(|e| Failure::new(exit::SOFTWARE, format!("cannot write JSON output: {e}")))?;
    let text = String::from_utf8(text)
        .map_err(|e| Failure::new(exit::SOFTWARE, format!("cannot write JSON output: not UTF-8: {e}")))?;
    say(&text)
}

/// Compact JSON that also writes DEL, C1 controls, bidi controls and the
/// line/paragraph separators as `\uXXXX` (serde_json escapes only C0
/// controls): the same value for a parser, nothing a terminal acts on.
pub struct TerminalSafeJson;

impl serde_json::ser::Formatter for TerminalSafeJson {
    fn write_string_fragment<W: ?Sized + std::io::Write>(
        &mut self,
        writer: &mut W,
        fragment: &str,
    ) -> std::io::Result<()> {
        let mut rest = fragment;
        while let Some(at) = rest.find(display::needs_escape) {
            writer.write_all(&rest.as_bytes()[..at])?;
            let c = rest[at..].chars().next().unwrap_or_default();
            // Every character `needs_escape` matches is in the Basic
            // Multilingual Plane, so one \uXXXX says it.
            write!(writer, "\\u{:04x}", u32::from(c))?;
            rest = &rest[at + c.len_utf8()..];
        }
        writer.write_all(rest.as_bytes())
    }
}

/// One lock, as JSON: times as RFC 3339 text plus seconds for arithmetic.
#[derive(Debug, Serialize)]
pub struct LockJson<'a> {
    resource: &'a str,
    state: LockStateKind,
    holder: Option<&'a str>,
    user: Option<&'a str>,
    host: Option<&'a str>,
    pid: Option<u32>,
    acquired_at: Option<String>,
    age_seconds: Option<f64>,
    purpose: Option<&'a str>,
    lease_expires_at: Option<String>,
    lease_left_seconds: Option<f64>,
    last_heartbeat: Option<String>,
    fencing_token: Option<u64>,
    hold_count: Option<u32>,
    backend: Option<&'a str>,
    /// `exclusive`, `shared` or `{"permits": N}`.
    mode: Option<LockMode>,
    /// Every holder, when the resource may have more than one (shared or
    /// permits); the fields above are the oldest grant's.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    holders: Vec<LockJson<'a>>,
}

impl<'a> LockJson<'a> {
    /// `resource` in `state`, with `info` if anyone holds it.
    pub fn new(resource: &'a str, state: LockStateKind, info: Option<&'a LockInfo>, now: SystemTime) -> Self {
        LockJson {
            resource,
            state,
            holder: info.map(|i| i.holder.as_str()),
            user: info.and_then(|i| i.user.as_deref()),
            host: info.map(|i| i.hostname.as_str()),
            pid: info.map(|i| i.pid),
            acquired_at: info.and_then(|i| display::rfc3339(i.acquired_at)),
            age_seconds: info.map(|i| since(i.acquired_at, now).as_secs_f64()),
            purpose: info.and_then(|i| i.purpose.as_deref()),
            lease_expires_at: info.and_then(|i| i.lease_expires_at).and_then(display::rfc3339),
            lease_left_seconds: info.and_then(|i| i.lease_expires_at).map(|at| until(at, now).as_secs_f64()),
            last_heartbeat: info.and_then(|i| i.last_heartbeat).and_then(display::rfc3339),
            fencing_token: info.map(|i| i.fencing_token.get()),
            hold_count: info.map(|i| i.hold_count),
            backend: info.map(|i| i.backend.as_str()),
            mode: info.map(|i| i.mode),
            holders: info
                .map(|i| i.holders.iter().map(|holder| LockJson::new(resource, state, Some(holder), now)).collect())
                .unwrap_or_default(),
        }
    }
}

/// One flag, as JSON.
#[derive(Debug, Serialize)]
pub struct FlagJson<'a> {
    name: &'a str,
    value: Option<&'a str>,
    set_at: Option<String>,
    age_seconds: f64,
    expires_at: Option<String>,
    ttl_left_seconds: Option<f64>,
    backend: &'a str,
}

impl<'a> FlagJson<'a> {
    /// `flag`, as seen at `now`.
    pub fn new(flag: &'a FlagInfo, now: SystemTime) -> Self {
        FlagJson {
            name: &flag.name,
            value: flag.value.as_deref(),
            set_at: display::rfc3339(flag.set_at),
            age_seconds: since(flag.set_at, now).as_secs_f64(),
            expires_at: flag.expires_at.and_then(display::rfc3339),
            ttl_left_seconds: flag.expires_at.map(|at| until(at, now).as_secs_f64()),
            backend: &flag.backend,
        }
    }
}

/// One event, as a JSON line.
#[derive(Debug, Serialize)]
pub struct EventJson<'a> {
    at: String,
    /// `event`: from this process's manager; `poll`: a change seen in the lock list.
    source: &'static str,
    kind: String,
    resource: &'a str,
    backend: &'a str,
    holder: Option<&'a str>,
    host: Option<&'a str>,
    pid: Option<u32>,
    fencing_token: Option<u64>,
    waited_seconds: Option<f64>,
    held_seconds: Option<f64>,
    reason: Option<&'a str>,
}

impl<'a> EventJson<'a> {
    /// An event from the manager's stream.
    pub fn from_event(event: &'a LockEvent) -> Self {
        EventJson {
            at: rfc3339(event.at),
            source: "event",
            kind: kind_name(event),
            resource: &event.resource,
            backend: &event.backend,
            holder: event.holder.as_ref().map(|h| h.as_str()),
            host: None,
            pid: None,
            fencing_token: event.fencing_token.map(|t| t.get()),
            waited_seconds: event.waited.map(|d| d.as_secs_f64()),
            held_seconds: event.held.map(|d| d.as_secs_f64()),
            reason: event.reason.as_deref(),
        }
    }

    /// A change seen by polling: `kind` on `info`'s lock.
    pub fn observed(kind: &str, info: &'a LockInfo, at: SystemTime) -> Self {
        EventJson {
            at: rfc3339(at),
            source: "poll",
            kind: kind.to_owned(),
            resource: &info.resource,
            backend: &info.backend,
            holder: Some(info.holder.as_str()),
            host: Some(&info.hostname),
            pid: Some(info.pid),
            fencing_token: Some(info.fencing_token.get()),
            waited_seconds: None,
            held_seconds: Some(since(info.acquired_at, at).as_secs_f64()),
            reason: None,
        }
    }
}

/// `locked`, `released`, `timed_out`, `lost`, `force_released`, `stale_broken`.
pub fn kind_name(event: &LockEvent) -> String {
    event.kind.as_str().to_owned()
}

/// One line for an event from the manager's stream.
pub fn event_line(event: &LockEvent) -> String {
    let mut line = format!("{}  {:<14} {}", rfc3339(event.at), kind_name(event), quoted(&event.resource));
    if let Some(holder) = &event.holder {
        line.push_str(&format!("  holder={}", printable(holder.as_str())));
    }
    if let Some(token) = event.fencing_token {
        line.push_str(&format!("  token={token}"));
    }
    if let Some(waited) = event.waited {
        line.push_str(&format!("  waited={}", short_duration(waited)));
    }
    if let Some(held) = event.held {
        line.push_str(&format!("  held={}", short_duration(held)));
    }
    if let Some(reason) = &event.reason {
        line.push_str(&format!("  reason={}", quoted(reason)));
    }
    line.push_str(&format!("  ({})", event.backend));
    line
}

/// One line for a change seen by polling.
pub fn observed_line(kind: &str, info: &LockInfo, at: SystemTime) -> String {
    format!(
        "{}  {:<14} {}  holder={}  host={}  pid={}  token={}  (seen by polling, {})",
        rfc3339(at),
        kind,
        quoted(&info.resource),
        printable(info.holder.as_str()),
        printable(&info.hostname),
        info.pid,
        info.fencing_token,
        info.backend
    )
}

/// A table with a header row; columns padded to their widest cell.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let mut line = |cells: &mut dyn Iterator<Item = &str>| {
        let mut text = String::new();
        for (i, (cell, width)) in cells.zip(&widths).enumerate() {
            if i > 0 {
                text.push_str("  ");
            }
            text.push_str(cell);
            text.extend(std::iter::repeat_n(' ', width.saturating_sub(cell.chars().count())));
        }
        out.push_str(text.trim_end());
        out.push('\n');
    };
    line(&mut header.iter().copied());
    for row in rows {
        line(&mut row.iter().map(String::as_str));
    }
    out
}

/// The list rows for a lock: one per holder.
pub fn lock_rows(info: &LockInfo, state: LockStateKind, now: SystemTime) -> Vec<Vec<String>> {
    info.all_holders().map(|holder| lock_row(holder, state, now)).collect()
}

/// `exclusive`, `shared`, `permits(3)`.
fn mode_word(mode: LockMode) -> String {
    match mode {
        LockMode::Permits(n) => format!("permits({n})"),
        mode => mode.as_str().to_owned(),
    }
}

/// The list row for one holder.
fn lock_row(info: &LockInfo, state: LockStateKind, now: SystemTime) -> Vec<String> {
    vec![
        printable(&info.resource),
        state.as_str().to_owned(),
        mode_word(info.mode),
        clip(&printable(info.holder.as_str()), 40),
        printable(&info.hostname),
        info.pid.to_string(),
        rfc3339(info.acquired_at),
        short_duration(since(info.acquired_at, now)),
        info.purpose.as_deref().map_or_else(|| "-".to_owned(), |p| clip(&printable(p), 40)),
        lease_left(info.lease_expires_at, now),
        info.fencing_token.to_string(),
    ]
}

/// The list header.
pub const LOCK_HEADER: [&str; 11] =
    ["RESOURCE", "STATE", "MODE", "HOLDER", "HOST", "PID", "SINCE", "AGE", "PURPOSE", "LEASE LEFT", "TOKEN"];

/// The flag list header.
pub const FLAG_HEADER: [&str; 5] = ["FLAG", "VALUE", "SET AT", "AGE", "TTL LEFT"];

/// The flag list row for a flag.
pub fn flag_row(flag: &FlagInfo, now: SystemTime) -> Vec<String> {
    vec![
        printable(&flag.name),
        flag.value.as_deref().map_or_else(|| "-".to_owned(), |v| clip(&printable(v), 40)),
        rfc3339(flag.set_at),
        short_duration(since(flag.set_at, now)),
        match flag.expires_at {
            None => "-".to_owned(),
            Some(at) => short_duration(until(at, now)),
        },
    ]
}

/// The details of one lock, one `key  value` line each.
pub fn lock_details(resource: &str, state: &LockState, now: SystemTime) -> String {
    let word = state.kind();
    let Some(info) = state.info() else {
        return format!("{}: {}\n", quoted(resource), word.as_str());
    };
    let mut lines = vec![format!("{}: {}", quoted(resource), word.as_str())];
    if info.mode != LockMode::Exclusive {
        let count = info.all_holders().count();
        let holders = if count == 1 { "1 holder".to_owned() } else { format!("{count} holders") };
        lines.push(format!("  {:<11} {} ({holders})", "mode", mode_word(info.mode)));
    }
    for (index, holder) in info.all_holders().enumerate() {
        if index > 0 {
            lines.push(String::new());
        }
        holder_details(holder, now, &mut lines);
    }
    if word == LockStateKind::Stale {
        lines.push(format!(
            "  {:<11} {}",
            "note", "the holder is gone or its lease ran out; `lockctl cleanup` removes it"
        ));
    }
    lines.push(String::new());
    lines.join("\n")
}

/// One holder's `key  value` lines.
fn holder_details(info: &LockInfo, now: SystemTime, lines: &mut Vec<String>) {
    let mut field = |key: &str, value: String| lines.push(format!("  {key:<11} {value}"));
    field("holder", printable(info.holder.as_str()));
    let user = info.user.as_deref().map(|u| format!(", user {}", printable(u))).unwrap_or_default();
    field("host", format!("{} (pid {}{user})", printable(&info.hostname), info.pid));
    field("since", format!("{} ({} ago)", rfc3339(info.acquired_at), short_duration(since(info.acquired_at, now))));
    field("purpose", info.purpose.as_deref().map_or_else(|| "-".to_owned(), quoted));
    field(
        "lease",
        match info.lease_expires_at {
            None => "none (held until released or the holder exits)".to_owned(),
            Some(at) if at <= now => format!("expired {} ago ({})", short_duration(since(at, now)), rfc3339(at)),
            Some(at) => format!("{} left (until {})", short_duration(until(at, now)), rfc3339(at)),
        },
    );
    if let Some(beat) = info.last_heartbeat {
        field("heartbeat", format!("{} ({} ago)", rfc3339(beat), short_duration(since(beat, now))));
    }
    field("token", info.fencing_token.to_string());
    field("hold count", info.hold_count.to_string());
    field("backend", printable(&info.backend));
}

/// The details of one flag.
pub fn flag_details(flag: &FlagInfo, now: SystemTime) -> String {
    let mut lines = vec![format!("{}: set", quoted(&flag.name))];
    let mut field = |key: &str, value: String| lines.push(format!("  {key:<8} {value}"));
    field("value", flag.value.as_deref().map_or_else(|| "-".to_owned(), quoted));
    field("set at", format!("{} ({} ago)", rfc3339(flag.set_at), short_duration(since(flag.set_at, now))));
    field(
        "expires",
        match flag.expires_at {
            None => "never".to_owned(),
            Some(at) => format!("in {} ({})", short_duration(until(at, now)), rfc3339(at)),
        },
    );
    field("backend", printable(&flag.backend));
    lines.push(String::new());
    lines.join("\n")
}

/// How much of a lease is left: `12.5s`, `expired`, or `-` for none.
fn lease_left(expires_at: Option<SystemTime>, now: SystemTime) -> String {
    match expires_at {
        None => "-".to_owned(),
        Some(at) if at <= now => "expired".to_owned(),
        Some(at) => short_duration(until(at, now)),
    }
}

/// `2025-11-10T12:34:56Z`; a time out of any calendar (a corrupt or planted
/// record) is shown as such, never an error.
pub fn rfc3339(at: SystemTime) -> String {
    display::Timestamp(at).to_string()
}

fn since(then: SystemTime, now: SystemTime) -> Duration {
    now.duration_since(then).unwrap_or_default()
}

fn until(then: SystemTime, now: SystemTime) -> Duration {
    then.duration_since(now).unwrap_or_default()
}

/// `850ms`, `3.2s`, `5m07s`, `2h05m`, `3d04h`.
pub fn short_duration(duration: Duration) -> String {
    let secs = duration.as_secs();
    match secs {
        0 => format!("{}ms", duration.as_millis()),
        1..60 => format!("{:.1}s", duration.as_secs_f64()),
        60..3600 => format!("{}m{:02}s", secs / 60, secs % 60),
        3600..86400 => format!("{}h{:02}m", secs / 3600, secs % 3600 / 60),
        _ => format!("{}d{:02}h", secs / 86400, secs % 86400 / 3600),
    }
}

/// `text` with control and bidi characters escaped, so a stored name cannot
/// break a table or drive a terminal: lockman's [`display::escape`], the one
/// escaping every output of lockctl uses.
pub fn printable(text: &str) -> String {
    display::escape(text).into_owned()
}

/// `text` in double quotes, escaped like a Rust string.
pub fn quoted(text: &str) -> String {
    format!("{text:?}")
}

/// `text` cut to `max` characters, with `…` when cut.
fn clip(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        text.to_owned()
    } else {
        let mut clipped: String = text.chars().take(max.saturating_sub(1)).collect();
        clipped.push('…');
        clipped
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_holder_of_a_shared_lock_is_shown() {
        use lockman::{FencingToken, HolderId};
        let now = SystemTime::now();
        let holders: Vec<LockInfo> = ["one", "two"]
            .into_iter()
            .enumerate()
            .map(|(i, name)| {
                let mut info = LockInfo::local("cache", HolderId::new(name), FencingToken::new(i as u64 + 1), "file");
                info.mode = LockMode::Permits(3);
                info
            })
            .collect();
        let info = LockInfo::of_holders(holders).expect("two holders");
        let details = lock_details("cache", &LockState::Held(info.clone()), now);
        assert!(details.contains("permits(3) (2 holders)"), "{details}");
        assert!(details.contains("one") && details.contains("two"), "{details}");
        let rows = lock_rows(&info, LockStateKind::Held, now);
        assert_eq!(rows.len(), 2);
        assert!(rows.iter().all(|row| row[2] == "permits(3)"), "{rows:?}");
        let json = serde_json::to_value(LockJson::new("cache", LockStateKind::Held, Some(&info), now)).expect("json");
        assert_eq!(json["mode"]["permits"], 3, "{json}");
        assert_eq!(json["holders"].as_array().map(Vec::len), Some(2), "{json}");
    }

    #[test]
    fn durations_are_short() {
        assert_eq!(short_duration(Duration::from_millis(850)), "850ms");
        assert_eq!(short_duration(Duration::from_millis(3250)), "3.2s");
        assert_eq!(short_duration(Duration::from_secs(307)), "5m07s");
        assert_eq!(short_duration(Duration::from_secs(7500)), "2h05m");
        assert_eq!(short_duration(Duration::from_secs(3 * 86400 + 4 * 3600)), "3d04h");
    }

    #[test]
    fn control_characters_cannot_break_a_table() {
        assert_eq!(printable("a\nb\x1b[31m"), "a\\nb\\u{1b}[31m");
        assert_eq!(printable("zähler/../x"), "zähler/../x");
        assert_eq!(clip("abcdef", 4), "abc…");
    }

    #[test]
    fn json_is_exact_but_terminal_safe() {
        let hostile = "a\x1b[2J\r\n\u{7}\u{7f}\u{9b}\u{202e}\u{2066}\u{2028}zähler";
        let mut text = Vec::new();
        serde::Serialize::serialize(&hostile, &mut serde_json::Serializer::with_formatter(&mut text, TerminalSafeJson))
            .expect("serializes");
        let text = String::from_utf8(text).expect("UTF-8");
        assert!(!text.contains(display::needs_escape), "{text:?}");
        assert!(text.contains("\\u202e") && text.contains("zähler"), "{text:?}");
        assert_eq!(serde_json::from_str::<String>(&text).expect("parses"), hostile);
    }

    #[test]
    fn corrupt_times_show_instead_of_failing() {
        let planted = std::time::UNIX_EPOCH + Duration::from_micros(300_000_000_000_000_000);
        assert!(rfc3339(planted).starts_with("in the far future (corrupt?"));
        let mut info = LockInfo::local("r", lockman::HolderId::new("h"), lockman::FencingToken::new(1), "redis");
        info.acquired_at = planted;
        info.lease_expires_at = Some(planted);
        let json = LockJson::new("r", LockStateKind::Held, Some(&info), SystemTime::now());
        assert!(json.acquired_at.is_none() && json.lease_expires_at.is_none(), "{json:?}");
        assert!(lock_details("r", &LockState::Held(info), SystemTime::now()).contains("far future"));
    }

    #[test]
    fn tables_align_columns() {
        let text = table(&["A", "BB"], &[vec!["long".into(), "x".into()], vec!["s".into(), "yy".into()]]);
        assert_eq!(text, "A     BB\nlong  x\ns     yy\n");
    }

    #[test]
    fn event_kinds_are_snake_case() {
        let event = LockEvent::new(lockman::LockEventKind::ForceReleased, "r", "file");
        assert_eq!(kind_name(&event), "force_released");
    }
}
