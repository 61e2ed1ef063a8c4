//! The holder record kept in a lock file: who holds it, since when, for what,
//! and the last fencing token.
//!
//! Layout: a fixed 27-byte header, then a JSON body:
//!
//! ```text
//! LMF1 H 1a2b3c4d 0000000123\n{"resource":"inverter_read",...}
//! ```
//!
//! `H`/`R` is the state (held / released) at a fixed offset, so a release
//! flips one byte; the hex field is the CRC-32 of the body and the number its
//! length. A reader racing a writer may read a mix of two records; the CRC
//! catches that and the reader retries, so nobody ever *returns* a torn
//! record. Bytes past the body (left by a longer earlier record) are ignored.

use std::fs::File;
use std::io;
use std::time::{Duration, SystemTime};

use lockman_core::backend::GrantRequest;
use lockman_core::{FencingToken, HolderId, LockInfo, LockMode};
use serde::{Deserialize, Serialize};

use crate::fsutil::{self, from_unix_micros, unix_micros};

const MAGIC: &[u8; 5] = b"LMF1 ";
const STATE_OFFSET: u64 = 5;
const HEADER_LEN: usize = 27;
/// Bodies larger than this are refused as corrupt.
const MAX_BODY: usize = 64 * 1024;

/// The longest lease a record may claim; a longer one is corrupt or planted.
pub(crate) const MAX_RECORD_LEASE: Duration = Duration::from_secs(1000 * 365 * 24 * 3600);

/// How far ahead of this host's clock a record's times may be, at least
/// (a lease-holding record may be ahead by its lease, if longer).
pub(crate) const CLOCK_AHEAD_ALLOWANCE: Duration = Duration::from_secs(10 * 60);

/// A holder's record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Record {
    pub(crate) resource: String,
    pub(crate) holder: String,
    #[serde(default)]
    pub(crate) user: Option<String>,
    pub(crate) host: String,
    pub(crate) pid: u32,
    #[serde(default)]
    pub(crate) purpose: Option<String>,
    pub(crate) acquired_at_us: u64,
    /// The lease length, if the grant has one.
    #[serde(default)]
    pub(crate) lease_ms: Option<u64>,
    /// The last time the holder proved it is alive (lease files).
    #[serde(default)]
    pub(crate) heartbeat_us: Option<u64>,
    pub(crate) token: u64,
    /// This boot of this machine and the holder's pid namespace (Linux), so
    /// a pid is only judged where it means the same process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) machine: Option<String>,
    /// In a legacy sidecar: the legacy lock file this grant created.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) guards: Option<crate::fsutil::Snapshot>,
    /// How the grant holds the resource; in a kernel lock file held shared
    /// or by permits, the kind every party must agree with (see
    /// [`crate::kernel`]). Absent (older records): exclusive.
    #[serde(default, skip_serializing_if = "is_exclusive")]
    pub(crate) mode: LockMode,
}

fn is_exclusive(mode: &LockMode) -> bool {
    *mode == LockMode::Exclusive
}

/// Whether the record's holder still holds the lock (as far as the record
/// knows: a kernel lock outlives no crash, so the lock itself is the truth).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum RecordState {
    Held,
    Released,
}

impl Record {
    /// A record for a new grant of `request` in this process.
    pub(crate) fn new(request: &GrantRequest, token: u64, now: SystemTime) -> Record {
        Record {
            resource: request.resource.to_string(),
            holder: request.holder.as_str().to_owned(),
            user: lockman_core::username().map(str::to_owned),
            host: lockman_core::hostname().to_owned(),
            pid: std::process::id(),
            purpose: request.purpose.as_deref().map(capped),
            acquired_at_us: unix_micros(now),
            lease_ms: request.lease.map(|l| u64::try_from(l.as_millis()).unwrap_or(u64::MAX)),
            heartbeat_us: request.lease.map(|_| unix_micros(now)),
            token,
            machine: machine_id().map(str::to_owned),
            guards: None,
            mode: request.mode,
        }
    }

    /// Whether the holder ran on this machine *and* in this pid namespace,
    /// so its pid can be checked here: the same host name is not enough
    /// (containers with host networking share it but not their pids).
    pub(crate) fn holder_is_local(&self) -> bool {
        self.host == lockman_core::hostname() && self.machine.is_some() && self.machine.as_deref() == machine_id()
    }

    pub(crate) fn lease(&self) -> Option<Duration> {
        self.lease_ms.map(Duration::from_millis)
    }

    /// When the lease runs out: the last heartbeat (or the grant) plus the lease.
    pub(crate) fn lease_expires_at(&self) -> Option<SystemTime> {
        let lease = self.lease()?;
        Some(from_unix_micros(self.heartbeat_us.unwrap_or(self.acquired_at_us)) + lease)
    }

    /// Refuses times no honest holder writes, so that a planted or corrupt
    /// record can neither keep a lease alive for ever nor hand callers
    /// [`LockInfo`] times too large to format: a lease over
    /// [`MAX_RECORD_LEASE`], or a grant or heartbeat time further ahead of
    /// this host's clock than the record's own lease (at least
    /// [`CLOCK_AHEAD_ALLOWANCE`]) — hosts sharing lease files must keep
    /// their clocks in step well within the lease anyway.
    pub(crate) fn check_times(&self, now: SystemTime) -> Result<(), String> {
        let lease = self.lease();
        if let Some(lease) = lease
            && lease > MAX_RECORD_LEASE
        {
            return Err(format!("implausible record: a lease of {} ms", self.lease_ms.unwrap_or_default()));
        }
        let allowance = lease.unwrap_or_default().max(CLOCK_AHEAD_ALLOWANCE);
        let latest = unix_micros(now).saturating_add(u64::try_from(allowance.as_micros()).unwrap_or(u64::MAX));
        for (what, at) in [("acquired", Some(self.acquired_at_us)), ("heartbeat", self.heartbeat_us)] {
            if let Some(at) = at
                && at > latest
            {
                return Err(format!(
                    "implausible record: its {what} time ({at} µs after 1970) is more than {allowance:?} ahead \
                     of this host's clock"
                ));
            }
        }
        Ok(())
    }

    /// Whether the holder ran on this host and its process is gone.
    pub(crate) fn holder_process_is_dead(&self) -> bool {
        self.holder_is_local() && !crate::fsutil::pid_alive(self.pid)
    }

    pub(crate) fn to_info(&self, backend: &str) -> LockInfo {
        let mut info = LockInfo::local(
            self.resource.clone(),
            // Exact as stored: it was scoped (or shared) when written.
            HolderId::shared(self.holder.as_str()),
            FencingToken::new(self.token),
            backend,
        );
        info.user = self.user.clone();
        info.hostname = self.host.clone();
        info.pid = self.pid;
        info.purpose = self.purpose.clone();
        info.acquired_at = from_unix_micros(self.acquired_at_us);
        info.lease_expires_at = self.lease_expires_at();
        info.last_heartbeat = self.heartbeat_us.map(from_unix_micros);
        info.mode = self.mode;
        info
    }

    /// The record as stored: header plus body.
    pub(crate) fn encode(&self, state: RecordState) -> Vec<u8> {
        let body = serde_json::to_vec(self).unwrap_or_default();
        let mut out = Vec::with_capacity(HEADER_LEN + body.len());
        out.extend_from_slice(MAGIC);
        out.push(state_byte(state));
        out.extend_from_slice(format!(" {:08x} {:010}\n", crc32fast::hash(&body), body.len()).as_bytes());
        debug_assert_eq!(out.len(), HEADER_LEN);
        out.extend_from_slice(&body);
        out
    }

    /// Parses a stored record. `Ok(None)`: no record (an empty file).
    pub(crate) fn decode(bytes: &[u8]) -> Result<Option<(Record, RecordState)>, String> {
        let Some((body, state)) = checked_body(bytes)? else {
            return Ok(None);
        };
        let record = serde_json::from_slice(body).map_err(|e| format!("record body unreadable: {e}"))?;
        Ok(Some((record, state)))
    }

    /// Writes the record at the start of `file` (one positioned write).
    pub(crate) fn write_to(&self, file: &File, state: RecordState) -> io::Result<()> {
        fsutil::write_at(file, &self.encode(state), 0)
    }
}

/// A stored record's body and state, its header and checksum verified.
/// `Ok(None)`: no record (an empty file).
fn checked_body(bytes: &[u8]) -> Result<Option<(&[u8], RecordState)>, String> {
    if bytes.is_empty() {
        return Ok(None);
    }
    if bytes.len() < HEADER_LEN || &bytes[..5] != MAGIC {
        return Err(format!("not a lockman record ({} bytes, bad header)", bytes.len()));
    }
    let state = match bytes[5] {
        b'H' => RecordState::Held,
        b'R' => RecordState::Released,
        other => return Err(format!("unknown record state {:?}", char::from(other))),
    };
    let header = std::str::from_utf8(&bytes[6..HEADER_LEN]).map_err(|_| "garbled record header".to_owned())?;
    let mut fields = header.split_ascii_whitespace();
    let crc = fields.next().and_then(|f| u32::from_str_radix(f, 16).ok());
    let len = fields.next().and_then(|f| f.parse::<usize>().ok());
    let (Some(crc), Some(len)) = (crc, len) else {
        return Err("garbled record header".to_owned());
    };
    if len > MAX_BODY {
        return Err(format!("record body of {len} bytes is implausibly large"));
    }
    let Some(body) = bytes.get(HEADER_LEN..HEADER_LEN + len) else {
        return Err(format!("record truncated: {} of {len} body bytes", bytes.len() - HEADER_LEN));
    };
    if crc32fast::hash(body) != crc {
        return Err("record checksum mismatch (torn or corrupt)".to_owned());
    }
    Ok(Some((body, state)))
}

/// The token of a checked record body, read without parsing the rest: serde
/// writes the key `"token":` once, and a string value cannot hold that
/// sequence (its quotes are escaped). `None` if it is not there.
fn token_in(body: &[u8]) -> Option<u64> {
    const KEY: &[u8] = b"\"token\":";
    let at = body.windows(KEY.len()).position(|window| window == KEY)? + KEY.len();
    let digits = body[at..].iter().take_while(|b| b.is_ascii_digit()).count();
    std::str::from_utf8(&body[at..at + digits]).ok()?.parse().ok()
}

fn state_byte(state: RecordState) -> u8 {
    match state {
        RecordState::Held => b'H',
        RecordState::Released => b'R',
    }
}

/// The longest purpose kept in a record; longer ones are cut (a record
/// must stay small enough to read back whole).
const MAX_PURPOSE: usize = 1024;

fn capped(purpose: &str) -> String {
    if purpose.len() <= MAX_PURPOSE {
        return purpose.to_owned();
    }
    let mut end = MAX_PURPOSE;
    while !purpose.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &purpose[..end])
}

/// `<boot id>/<pid namespace>` on Linux: equal only for processes whose
/// pids can be checked against each other. `None` elsewhere (then pids are
/// never judged, and only heartbeats and ages decide).
pub(crate) fn machine_id() -> Option<&'static str> {
    static MACHINE: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    MACHINE
        .get_or_init(|| {
            let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
            let pid_ns = std::fs::read_link("/proc/self/ns/pid").ok()?;
            Some(format!("{}/{}", boot.trim(), pid_ns.to_string_lossy()))
        })
        .as_deref()
}

/// Who holds a lock that left no readable record: another program using
/// `flock` (e.g. util-linux `flock(1)`), a lockman holder that has not written
/// its record yet, or a corrupt file.
pub(crate) fn unknown_holder(resource: &str, backend: &str) -> LockInfo {
    let mut info = LockInfo::local(resource, HolderId::new("unknown"), FencingToken::new(0), backend);
    info.user = None;
    info.hostname = "unknown".to_owned();
    info.pid = 0;
    info
}

/// Writes a record [`encode`](Record::encode)d earlier at the start of `file`.
pub(crate) fn write_encoded(file: &File, encoded: &[u8]) -> io::Result<()> {
    fsutil::write_at(file, encoded, 0)
}

/// Sets the state of an [`encode`](Record::encode)d record.
pub(crate) fn set_state(encoded: &mut [u8], state: RecordState) {
    if let Some(byte) = encoded.get_mut(STATE_OFFSET as usize) {
        *byte = state_byte(state);
    }
}

/// Marks the record in `file` released (one byte; the CRC does not cover it).
pub(crate) fn mark_released(file: &File) -> io::Result<()> {
    fsutil::write_at(file, &[state_byte(RecordState::Released)], STATE_OFFSET)
}

/// What a lock file holds.
// Returned and matched at once: boxing the record would cost an allocation
// on every read of the acquire path for nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum FileRecord {
    /// No record: the file is empty.
    Empty,
    /// A readable record with plausible times, and whether it is held.
    Found(Record, RecordState),
    /// A torn or foreign record, or one whose times are implausible (see
    /// [`Record::check_times`]): judge the file by its age, never by its contents.
    Corrupt(String),
}

impl FileRecord {
    /// The record, if there is a readable one (held or released).
    pub(crate) fn record(self) -> Option<Record> {
        match self {
            FileRecord::Found(record, _) => Some(record),
            FileRecord::Empty | FileRecord::Corrupt(_) => None,
        }
    }

    /// The record, if there is a readable one and it is held.
    pub(crate) fn held(self) -> Option<Record> {
        match self {
            FileRecord::Found(record, RecordState::Held) => Some(record),
            _ => None,
        }
    }
}

/// Reads the record in `file`, retrying a few times if a concurrent write
/// tore it.
pub(crate) fn read_from(file: &File) -> io::Result<FileRecord> {
    Ok(match read_decoded(file)? {
        Ok(Some((record, state))) => match record.check_times(SystemTime::now()) {
            Ok(()) => FileRecord::Found(record, state),
            Err(implausible) => FileRecord::Corrupt(implausible),
        },
        Ok(None) => FileRecord::Empty,
        Err(corrupt) => FileRecord::Corrupt(corrupt),
    })
}

/// The last fencing token recorded in `file`, even if the record's times are
/// implausible (the token is what a successor must stay above). `Ok(None)`
/// if there is no readable record.
pub(crate) fn read_token_from(file: &File) -> io::Result<Option<u64>> {
    // The fast way: one read, the checksum, and the token's digits.
    let mut buf = [0u8; 1024];
    let n = fsutil::read_from_start(file, &mut buf)?;
    if n < buf.len()
        && let Ok(Some((body, _))) = checked_body(&buf[..n])
        && let Some(token) = token_in(body)
    {
        return Ok(Some(token));
    }
    Ok(match read_decoded(file)? {
        Ok(Some((record, _))) => Some(record.token),
        _ => None,
    })
}

/// [`read_from`] without the plausibility check.
fn read_decoded(file: &File) -> io::Result<Result<Option<(Record, RecordState)>, String>> {
    let mut buf = vec![0u8; 1024];
    let mut last = Ok(None);
    for attempt in 0..5 {
        let n = fsutil::read_from_start(file, &mut buf)?;
        if n == buf.len() && buf.len() < HEADER_LEN + MAX_BODY {
            buf.resize((buf.len() * 4).min(HEADER_LEN + MAX_BODY), 0);
            continue;
        }
        last = Record::decode(&buf[..n]);
        if last.is_ok() {
            return Ok(last);
        }
        if attempt > 0 {
            std::thread::yield_now();
        }
    }
    Ok(last)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record {
            resource: "inverter_read".into(),
            holder: "poller".into(),
            user: Some("givtcp".into()),
            host: "box".into(),
            pid: 42,
            purpose: Some("poll\nregisters".into()),
            acquired_at_us: 1_700_000_000_000_000,
            lease_ms: Some(30_000),
            heartbeat_us: None,
            token: 7,
            machine: None,
            guards: None,
            mode: LockMode::Exclusive,
        }
    }

    #[test]
    fn round_trips_with_state() {
        let bytes = record().encode(RecordState::Held);
        assert_eq!(Record::decode(&bytes), Ok(Some((record(), RecordState::Held))));
        let mut released = bytes.clone();
        released[STATE_OFFSET as usize] = b'R';
        assert_eq!(Record::decode(&released), Ok(Some((record(), RecordState::Released))));
    }

    #[test]
    fn trailing_bytes_of_a_longer_old_record_are_ignored() {
        let mut bytes = record().encode(RecordState::Held);
        bytes.extend_from_slice(b"leftover from a longer record");
        assert!(Record::decode(&bytes).is_ok());
    }

    #[test]
    fn truncated_torn_and_garbage_records_are_errors() {
        let bytes = record().encode(RecordState::Held);
        for cut in [1, 10, HEADER_LEN, bytes.len() - 1] {
            assert!(Record::decode(&bytes[..cut]).is_err(), "cut at {cut} decoded");
        }
        let mut torn = bytes.clone();
        let last = torn.len() - 3;
        torn[last] ^= 0x20;
        assert!(Record::decode(&torn).unwrap_err().contains("checksum"));
        assert!(Record::decode(b"hello world, not a record at all").is_err());
        assert_eq!(Record::decode(b""), Ok(None));
    }
}
