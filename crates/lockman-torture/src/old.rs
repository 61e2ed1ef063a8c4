//! Old daemons, following the legacy lockfile protocols exactly as
//! `docs/legacy-protocols.md` records them — races and all:
//!
//! * protocol A ("skip if busy"): `exists()`? skip : create the file empty
//!   with a plain truncating open; release by deleting it.
//! * protocol B ("wait then steal"): poll `exists()` every 0.5 s up to 10
//!   times; on timeout delete the file (someone else's lock) and skip; else
//!   open it truncating and write the UTC time in `isoformat()` form; release
//!   by deleting it.
//!
//! They do not touch the fenced counter (old-vs-old races lose updates, and
//! no new code can prevent that); their sections go to their log so the
//! checker can judge old-vs-new exclusion.

use std::fs::{self, OpenOptions};
use std::io::Write;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, SystemTime};

use crate::history::{Event, Kind, Log, now_us};

/// Protocol B's poll interval and poll count (GivTCP v3).
const B_POLL: Duration = Duration::from_millis(500);
const B_POLLS: u32 = 10;

/// What one old daemon does.
#[derive(Debug, Clone)]
pub struct OldSpec {
    /// Its name in the histories.
    pub name: String,
    /// A or B.
    pub kind: Kind,
    /// The legacy lock file.
    pub path: PathBuf,
    /// Its log.
    pub log: PathBuf,
    /// When to stop (µs of `CLOCK_MONOTONIC`).
    pub until_us: u64,
    /// Seeds its hold and idle times.
    pub seed: u64,
    /// Hold times (ms).
    pub hold_ms: (u64, u64),
}

/// Runs an old daemon until its deadline.
pub fn run(spec: &OldSpec) -> Result<(), String> {
    let mut log = Log::create(&spec.log).map_err(|e| format!("cannot create {}: {e}", spec.log.display()))?;
    log.write(&Event::Start { t: now_us(), w: spec.name.clone(), pid: std::process::id(), kind: spec.kind });
    let mut rng = fastrand::Rng::with_seed(spec.seed);
    while now_us() < spec.until_us {
        log.write(&Event::Acquire { t: now_us() });
        let got = match spec.kind {
            Kind::OldB => wait_then_steal(spec, &mut log),
            _ => {
                let exists = spec.path.exists();
                log.write(&Event::Check { t: now_us(), exists });
                !exists
            }
        };
        if got {
            // The race the old code has: nothing stops another process from
            // creating the file between the check and this truncating open.
            let created = OpenOptions::new().write(true).create(true).truncate(true).open(&spec.path);
            match created {
                Ok(mut file) => {
                    if spec.kind == Kind::OldB {
                        let _ = file.write_all(isoformat_now().as_bytes());
                    }
                    log.write(&Event::Grant { t: now_us(), token: None, lease_ms: None, age_us: None, mode: None });
                    thread::sleep(Duration::from_millis(rng.u64(spec.hold_ms.0..=spec.hold_ms.1.max(spec.hold_ms.0))));
                    log.write(&Event::End { t: now_us() });
                    let removed = fs::remove_file(&spec.path);
                    log.write(&Event::Released {
                        t: now_us(),
                        ok: removed.is_ok(),
                        err: removed.err().map(|e| e.to_string()),
                    });
                }
                Err(error) => log.write(&Event::Error { t: now_us(), msg: format!("create: {error}") }),
            }
        } else {
            log.write(&Event::Skip { t: now_us() });
        }
        // Old daemons poll every few seconds; a shorter idle keeps them in the fight.
        thread::sleep(Duration::from_millis(rng.u64(50..=400)));
    }
    log.write(&Event::Exit { t: now_us() });
    Ok(())
}

/// Protocol B's wait: true when the file is gone; on timeout, deletes it
/// (the reader's behaviour) and gives up.
fn wait_then_steal(spec: &OldSpec, log: &mut Log) -> bool {
    for _ in 0..B_POLLS {
        let exists = spec.path.exists();
        log.write(&Event::Check { t: now_us(), exists });
        if !exists {
            return true;
        }
        thread::sleep(B_POLL);
    }
    if fs::remove_file(&spec.path).is_ok() {
        log.write(&Event::Steal { t: now_us() });
    }
    false
}

/// The current UTC time as Python's `datetime.isoformat()` writes it, e.g.
/// `2025-11-10T12:34:56.123456+00:00` (RFC 3339 with microseconds, `+00:00` for `Z`).
fn isoformat_now() -> String {
    humantime::format_rfc3339_micros(SystemTime::now()).to_string().replace('Z', "+00:00")
}

#[cfg(test)]
mod tests {
    #[test]
    fn isoformat_is_pythons() {
        let text = super::isoformat_now();
        assert_eq!(text.len(), "2025-11-10T12:34:56.123456+00:00".len(), "{text}");
        assert!(text.ends_with("+00:00") && text.as_bytes()[10] == b'T', "{text}");
    }
}
