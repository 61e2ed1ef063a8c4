//! The checker: merges every participant's history with the fault log and
//! judges the run.
//!
//! A critical section is the time from `acquire` returning to `release`
//! being called (or the worker's death). The rules:
//!
//! 1. **Exclusion.** Two lockman sections never overlap — except two shared
//!    sections, and up to n sections of a semaphore of n permits — unless the earlier
//!    holder was told its lock was lost before the later grant; or the Redis
//!    server lost its data (a restart) after the earlier grant; or the earlier
//!    holder was frozen (`SIGSTOP`) long enough that its lease, as it knew it,
//!    had run out (at least half the lease in force, since the watchdog
//!    renews every third of it). A section of an old daemon overlapping a
//!    lockman section is a violation only where the old protocol's own races
//!    cannot explain it: the legacy file was in place, nobody else touched it
//!    (no old daemon stole it), and yet the other side went in. Under
//!    permits, at no grant do more than n sections hold once the excused
//!    ones (by the same rules, judged at that grant) are left out.
//! 2. **Reaction.** A holder told "lost" ends its section within
//!    `lost_bound` (unless it was frozen meanwhile), and never starts a write
//!    after the report. A holder that extended its lease is never told the
//!    lease expired before the extension's end (`early-loss`).
//! 3. **Tokens.** Fencing tokens strictly increase in grant order; no two
//!    grants share one.
//! 4. **No lost update.** The counter equals the number of accepted writes,
//!    give or take the writes whose outcome died with their process. **No
//!    torn read**: the reads a section's store accepted all saw one value
//!    (a shared section reads twice; a writer in between would change it).
//! 5. **Liveness.** No wait spends more than `liveness_bound` in one stretch
//!    while the lock is free: nobody holds it (under permits: fewer than n
//!    hold it), and no fault explains the gap (a killed or frozen
//!    participant's lease, a restart, a network fault on the waiter, a full
//!    disk).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::io;
use std::path::Path;

use lockman::LockMode;
use serde::Serialize;

use crate::history::{Event, Fault, Kind, read_log};

/// How `LostReason::LeaseExpired` reads (other reasons may mention expiry
/// as one possibility; only this one says the lease ran out).
const EXPIRED: &str = "its lease expired";

/// The checker's bounds.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct Bounds {
    /// How soon after a loss report a section must end (µs).
    pub lost_bound_us: u64,
    /// Clock slack between processes' observations (µs).
    pub slack_us: u64,
    /// The longest free stretch a wait may see (µs).
    pub liveness_bound_us: u64,
    /// The backend's default lease (µs), for the shadow a killed holder
    /// leaves; 0 without leases.
    pub lease_us: u64,
}

/// One critical section.
#[derive(Debug, Clone, Serialize)]
pub struct Section {
    /// Who held it.
    pub w: String,
    /// What protocol.
    pub kind: Kind,
    /// When the wait for it began.
    pub acquire_t: u64,
    /// An old daemon's last `exists()` → false before its create.
    pub check_t: Option<u64>,
    /// When the grant was seen.
    pub grant_t: u64,
    /// When the backend says the grant began (`grant_t` less its age): a
    /// bridge's legacy file is created between this and `grant_t`.
    pub began_t: u64,
    /// When the section ended (End, or the kill, or the log's last event).
    pub end_t: u64,
    /// Whether the section ended because its process was killed.
    pub killed: bool,
    /// The fencing token.
    pub token: Option<u64>,
    /// How it held the resource.
    pub mode: LockMode,
    /// The values of the reads the store accepted.
    pub reads: Vec<u64>,
    /// The lease in force from each time on: (time, lease µs).
    pub leases: Vec<(u64, u64)>,
    /// When the loss report arrived, and why.
    pub lost: Option<(u64, String)>,
    /// Accepted writes.
    pub writes_ok: u32,
    /// Refused (fenced) reads and writes.
    pub fenced: u32,
    /// A write started whose outcome is unknown (the process died).
    pub write_unknown: bool,
    /// When the last write was started.
    pub last_write_start: Option<u64>,
    /// `release` said the lock was lost.
    pub release_failed: bool,
    /// After an `extend`: the lease cannot end before this, renewed or not.
    pub extended_until: Option<u64>,
}

impl Section {
    /// The lease in force at `t`.
    fn lease_at(&self, t: u64) -> Option<u64> {
        self.leases.iter().rev().find(|(from, _)| *from <= t).or(self.leases.first()).map(|(_, lease)| *lease)
    }

    fn describe(&self) -> String {
        let mut text = format!("{} [{:?}] granted at {} ms", self.w, self.kind, ms(self.grant_t));
        if self.mode != LockMode::Exclusive {
            let _ = write!(text, " ({})", self.mode);
        }
        if let Some(token) = self.token {
            let _ = write!(text, " token {token}");
        }
        let _ = write!(text, ", ended at {} ms{}", ms(self.end_t), if self.killed { " (killed)" } else { "" });
        if let Some((t, why)) = &self.lost {
            let _ = write!(text, ", told lost at {} ms ({why})", ms(*t));
        }
        text
    }
}

fn ms(t: u64) -> String {
    format!("{:.3}", t as f64 / 1000.0)
}

/// One wait for the lock.
#[derive(Debug, Clone, Serialize)]
pub struct Wait {
    /// Who waited.
    pub w: String,
    /// When the wait began.
    pub start: u64,
    /// When it ended (grant, timeout, error, death, or the run's end).
    pub end: u64,
}

/// A rule broken.
#[derive(Debug, Clone, Serialize)]
pub struct Violation {
    /// Which rule: `overlap`, `reaction`, `token`, `lost-update`, `liveness`.
    pub rule: String,
    /// What happened, with the sections involved.
    pub detail: String,
}

/// Everything the checker found.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// Completed lockman sections.
    pub sections: usize,
    /// Old daemons' sections.
    pub old_sections: usize,
    /// Lockman sections by mode (`exclusive`, `shared`, `permits`).
    pub modes: BTreeMap<String, usize>,
    /// The most lockman sections that held together at one grant without
    /// an excuse (readers together, permit holders): shows the mode was
    /// exercised, not only allowed.
    pub most_together: usize,
    /// Accepted writes.
    pub writes: u64,
    /// Writes whose outcome died with their process.
    pub writes_unknown: u64,
    /// The counter at the end.
    pub counter: u64,
    /// Reads and writes the store refused.
    pub fenced: u64,
    /// Loss reports.
    pub lost: usize,
    /// Acquire timeouts.
    pub timeouts: usize,
    /// Acquire or store errors.
    pub errors: usize,
    /// Overlaps the rules excuse, by reason.
    pub excused: BTreeMap<String, usize>,
    /// Faults applied, by kind.
    pub faults: BTreeMap<String, usize>,
    /// The longest wait (ms).
    pub longest_wait_ms: f64,
    /// The longest hold (ms).
    pub longest_hold_ms: f64,
    /// The longest free stretch any wait saw (ms).
    pub longest_free_wait_ms: f64,
    /// Broken rules.
    pub violations: Vec<Violation>,
}

/// The histories of one run, parsed.
#[derive(Debug, Default)]
pub struct Histories {
    /// Every section.
    pub sections: Vec<Section>,
    /// Every wait.
    pub waits: Vec<Wait>,
    /// Old daemons' steals: (who, when).
    pub steals: Vec<(String, u64)>,
    /// The faults.
    pub faults: Vec<Fault>,
    /// Timeouts seen.
    pub timeouts: usize,
    /// Errors seen.
    pub errors: usize,
    /// Errors' texts (the first few).
    pub error_samples: Vec<String>,
}

impl Histories {
    /// Reads every `*.jsonl` participant log in `dir` and the fault log `faults.jsonl`.
    pub fn load(dir: &Path, run_end: u64) -> io::Result<Histories> {
        let faults: Vec<Fault> =
            if dir.join("faults.jsonl").exists() { read_log(&dir.join("faults.jsonl"))? } else { Vec::new() };
        let mut logs = Vec::new();
        for entry in std::fs::read_dir(dir)? {
            let path = entry?.path();
            let is_log = path.extension().is_some_and(|e| e == "jsonl")
                && path.file_name().is_some_and(|name| name != "faults.jsonl");
            if is_log {
                logs.push(read_log::<Event>(&path)?);
            }
        }
        Ok(Histories::from_events(logs, faults, run_end))
    }

    /// Folds each participant's events into sections and waits.
    pub fn from_events(logs: Vec<Vec<Event>>, faults: Vec<Fault>, run_end: u64) -> Histories {
        let mut histories = Histories { faults, ..Histories::default() };
        for events in logs {
            histories.fold(events, run_end);
        }
        histories.sections.sort_by_key(|section| section.grant_t);
        histories
    }

    fn fold(&mut self, events: Vec<Event>, run_end: u64) {
        let Some(Event::Start { w, kind, .. }) = events.first().cloned() else { return };
        let killed_at = self.faults.iter().find_map(|fault| match fault {
            Fault::Kill { t, w: killed } if *killed == w => Some(*t),
            _ => None,
        });
        let last_t = events.last().map_or(0, Event::time);
        let mut wait: Option<u64> = None;
        let mut check: Option<u64> = None;
        let mut open: Option<Section> = None;
        let close_wait = |wait: &mut Option<u64>, end: u64, waits: &mut Vec<Wait>| {
            if let Some(start) = wait.take() {
                waits.push(Wait { w: w.clone(), start, end });
            }
        };
        for event in events {
            match event {
                Event::Start { .. } | Event::Exit { .. } => {}
                Event::Acquire { t } => {
                    wait = Some(t);
                    check = None;
                }
                Event::Check { t, exists } => {
                    if !exists {
                        check = Some(t);
                    }
                }
                Event::Steal { t } => self.steals.push((w.clone(), t)),
                Event::Grant { t, token, lease_ms, age_us, mode } => {
                    let acquire_t = wait.unwrap_or(t);
                    let began_t = t.saturating_sub(age_us.unwrap_or(0)).max(acquire_t);
                    // A worker frozen between its grant and this record held
                    // the lock since the backend's grant: date the section from then.
                    let t = match age_us {
                        Some(age)
                            if frozen_in(&self.faults, &w, acquire_t, t)
                                .is_some_and(|stop| t.saturating_sub(age) <= stop) =>
                        {
                            t.saturating_sub(age).max(acquire_t)
                        }
                        _ => t,
                    };
                    close_wait(&mut wait, t, &mut self.waits);
                    if let Some(section) = open.take() {
                        self.sections.push(section);
                    }
                    open = Some(Section {
                        w: w.clone(),
                        kind,
                        acquire_t,
                        check_t: check.take(),
                        grant_t: t,
                        began_t,
                        end_t: u64::MAX,
                        killed: false,
                        token,
                        mode: mode.unwrap_or_default(),
                        reads: Vec::new(),
                        leases: lease_ms.map(|l| vec![(t, l * 1000)]).unwrap_or_default(),
                        lost: None,
                        writes_ok: 0,
                        fenced: 0,
                        write_unknown: false,
                        last_write_start: None,
                        release_failed: false,
                        extended_until: None,
                    });
                }
                Event::Extend { t, lease_ms, took_us } => {
                    if let Some(section) = &mut open {
                        section.leases.push((t, lease_ms * 1000));
                        section.extended_until = Some(t.saturating_sub(took_us) + lease_ms * 1000);
                    }
                }
                Event::Read { ok, value, .. } => {
                    if let Some(section) = &mut open {
                        if ok {
                            section.reads.push(value);
                        } else {
                            section.fenced += 1;
                        }
                    }
                }
                Event::WriteStart { t } => {
                    if let Some(section) = &mut open {
                        section.write_unknown = true;
                        section.last_write_start = Some(t);
                    }
                }
                Event::Write { ok, .. } => {
                    if let Some(section) = &mut open {
                        section.write_unknown = false;
                        if ok {
                            section.writes_ok += 1;
                        } else {
                            section.fenced += 1;
                        }
                    }
                }
                Event::Lost { t, why } => {
                    if let Some(section) = &mut open
                        && section.lost.is_none()
                    {
                        section.lost = Some((t, why));
                    }
                }
                Event::End { t } => {
                    if let Some(section) = &mut open {
                        section.end_t = t;
                    }
                }
                Event::Released { ok, .. } => {
                    if let Some(mut section) = open.take() {
                        section.release_failed = !ok;
                        self.sections.push(section);
                    }
                }
                Event::Timeout { t } => {
                    self.timeouts += 1;
                    close_wait(&mut wait, t, &mut self.waits);
                }
                Event::Skip { t } => close_wait(&mut wait, t, &mut self.waits),
                Event::Error { t, msg } => {
                    self.errors += 1;
                    if self.error_samples.len() < 5 {
                        self.error_samples.push(format!("{w}: {msg}"));
                    }
                    close_wait(&mut wait, t, &mut self.waits);
                }
            }
        }
        let death = killed_at.unwrap_or(last_t.max(1));
        if let Some(mut section) = open.take() {
            if section.end_t == u64::MAX {
                section.end_t = death;
                section.killed = killed_at.is_some();
            }
            self.sections.push(section);
        }
        close_wait(&mut wait, if killed_at.is_some() { death } else { run_end.max(last_t) }, &mut self.waits);
    }
}

/// Judges a run: `counter` is the fenced counter's final value; `tokens`
/// says whether grants carry tokens (not under `--no-lock`).
pub fn check(histories: &Histories, counter: u64, bounds: Bounds, tokens: bool) -> Report {
    let mut violations = Vec::new();
    let mut excused: BTreeMap<String, usize> = BTreeMap::new();
    let sections = &histories.sections;

    // 1. Exclusion. Sections are in grant order; `active` holds those still
    // running at the current grant. Overlaps the mode admits (readers
    // together, permit holders up to the count) are not pairs to judge.
    let mut active: Vec<&Section> = Vec::new();
    let mut most_together = usize::from(!sections.is_empty());
    for later in sections {
        active.retain(|earlier| earlier.end_t > later.grant_t);
        let mut sharing: Vec<&Section> = Vec::new();
        for earlier in &active {
            match (earlier.mode, later.mode) {
                (LockMode::Shared, LockMode::Shared) => {
                    sharing.push(earlier);
                    continue;
                }
                (LockMode::Permits(a), LockMode::Permits(b)) if a == b => {
                    sharing.push(earlier);
                    continue;
                }
                _ => {}
            }
            let verdict = match (earlier.kind, later.kind) {
                (Kind::New, Kind::New) => judge_new_overlap(histories, earlier, later, bounds),
                (Kind::New, _) | (_, Kind::New) => judge_old_overlap(histories, earlier, later),
                _ => Err("old-vs-old race (the old protocol's own)".to_owned()),
            };
            match verdict {
                Ok(()) => violations.push(Violation {
                    rule: "overlap".into(),
                    detail: format!("{}\n  overlaps {}", earlier.describe(), later.describe()),
                }),
                Err(reason) => *excused.entry(reason).or_default() += 1,
            }
        }
        // A semaphore of n: this grant makes one more holder; past n, the
        // earlier holders an excuse covers at this grant do not count.
        let limit = later.mode.permit_count().map_or(usize::MAX, |n| n as usize);
        let mut holding = sharing.len() + 1;
        if holding > limit {
            let mut reasons = Vec::new();
            sharing.retain(|earlier| match judge_new_overlap(histories, earlier, later, bounds) {
                Ok(()) => true,
                Err(reason) => {
                    reasons.push(reason);
                    false
                }
            });
            holding = sharing.len() + 1;
            if holding > limit {
                let mut detail = format!("{holding} sections hold a semaphore of {limit} permits at once:");
                for section in sharing.iter().chain([&later]) {
                    let _ = write!(detail, "\n  {}", section.describe());
                }
                violations.push(Violation { rule: "overlap".into(), detail });
            } else {
                for reason in reasons {
                    *excused.entry(reason).or_default() += 1;
                }
            }
        }
        most_together = most_together.max(holding.min(limit));
        active.push(later);
    }

    // 2. Reaction to a loss report.
    for section in sections {
        let Some((lost_t, why)) = &section.lost else { continue };
        let frozen = stops_of(histories, &section.w).any(|(t, until)| t < section.end_t && until > *lost_t);
        if !frozen && section.end_t > lost_t + bounds.lost_bound_us {
            violations.push(Violation {
                rule: "reaction".into(),
                detail: format!(
                    "{} went on for {} ms after it was told the lock was lost ({why}); the bound is {} ms",
                    section.describe(),
                    ms(section.end_t - lost_t),
                    ms(bounds.lost_bound_us)
                ),
            });
        }
        // An extended lease cannot run out before its new end, even if it is
        // never renewed: a report of expiry before that means it was shortened.
        if let Some(until) = section.extended_until
            && why.starts_with(EXPIRED)
            && lost_t + bounds.slack_us < until
        {
            violations.push(Violation {
                rule: "early-loss".into(),
                detail: format!(
                    "{} was told its lease expired {} ms before the end of the lease it had extended to",
                    section.describe(),
                    ms(until - lost_t)
                ),
            });
        }
        if let Some(start) = section.last_write_start
            && start > lost_t + bounds.slack_us
        {
            violations.push(Violation {
                rule: "reaction".into(),
                detail: format!("{} started a write after it was told the lock was lost", section.describe()),
            });
        }
    }

    // 3. Tokens strictly increase in grant order — where the order is
    // known. Two sections that may hold together (readers, permit holders)
    // can record their grants in the other order than the backend made them;
    // their order is known only if one was granted before the other began
    // waiting. A grant that excludes the other (an exclusive one) is known to
    // follow everything recorded before it (else the two would overlap).
    if tokens {
        let mut seen: BTreeMap<u64, &Section> = BTreeMap::new();
        // The highest token so far, over all sections and over those that
        // exclude readers / permit holders: (token, section).
        let mut highest: Option<(u64, &Section)> = None;
        let mut highest_not_shared: Option<(u64, &Section)> = None;
        let mut highest_not_permits: Option<(u64, &Section)> = None;
        // The highest token of the sections granted up to each one, in grant order.
        let mut prefix: Vec<(u64, (u64, &Section))> = Vec::new();
        for section in sections.iter().filter(|s| s.kind == Kind::New) {
            let Some(token) = section.token else { continue };
            let before_wait = prefix.partition_point(|(grant_t, _)| grant_t + bounds.slack_us < section.acquire_t);
            let known_before = before_wait.checked_sub(1).map(|i| prefix[i].1);
            let bound = match section.mode {
                LockMode::Exclusive => highest,
                LockMode::Shared => higher(highest_not_shared, known_before),
                LockMode::Permits(_) => higher(highest_not_permits, known_before),
            };
            if let Some(other) = seen.insert(token, section) {
                violations.push(Violation {
                    rule: "token".into(),
                    detail: format!(
                        "two grants share token {token}:\n  {}\n  {}",
                        other.describe(),
                        section.describe()
                    ),
                });
            } else if let Some((_, previous)) = bound.filter(|(highest, _)| *highest >= token) {
                violations.push(Violation {
                    rule: "token".into(),
                    detail: format!(
                        "a later grant has a lower token:\n  {}\n  then {}",
                        previous.describe(),
                        section.describe()
                    ),
                });
            }
            let this = Some((token, section));
            highest = higher(highest, this);
            if section.mode != LockMode::Shared {
                highest_not_shared = higher(highest_not_shared, this);
            }
            if !section.mode.is_permits() {
                highest_not_permits = higher(highest_not_permits, this);
            }
            if let Some(highest) = highest {
                prefix.push((section.grant_t, highest));
            }
        }
    }

    // 4. No lost update.
    let writes: u64 = sections.iter().map(|s| u64::from(s.writes_ok)).sum();
    let unknown = sections.iter().filter(|s| s.write_unknown).count() as u64;
    if counter < writes || counter > writes + unknown {
        violations.push(Violation {
            rule: "lost-update".into(),
            detail: format!(
                "the counter is {counter}, but {writes} writes were accepted ({unknown} more may have been): {} updates lost",
                writes.saturating_sub(counter)
            ),
        });
    }

    // 4b. No torn read.
    for section in sections {
        if let Some(first) = section.reads.first()
            && let Some(other) = section.reads.iter().find(|value| *value != first)
        {
            violations.push(Violation {
                rule: "torn-read".into(),
                detail: format!(
                    "{} read {first}, then {other}: the counter was written while it held",
                    section.describe()
                ),
            });
        }
    }

    // 5. Liveness. Under a semaphore of n the lock is free while fewer than
    // n hold it; otherwise while nobody does.
    let capacity = sections.iter().find_map(|s| s.mode.permit_count()).unwrap_or(1).max(1);
    let busy = saturated(busy_intervals(histories, bounds, capacity), capacity);
    let mut longest_free = 0;
    for wait in &histories.waits {
        let own = own_fault_intervals(histories, &wait.w, bounds);
        let first = busy.partition_point(|(_, to)| *to <= wait.start);
        let overlapping = busy[first..].iter().take_while(|(from, _)| *from < wait.end);
        let free = longest_free_stretch(wait.start, wait.end, overlapping.chain(own.iter()));
        longest_free = longest_free.max(free);
        if free > bounds.liveness_bound_us {
            violations.push(Violation {
                rule: "liveness".into(),
                detail: format!(
                    "{} waited from {} ms to {} ms, {} ms of it in one stretch while nobody held the lock",
                    wait.w,
                    ms(wait.start),
                    ms(wait.end),
                    ms(free)
                ),
            });
        }
    }

    let mut faults: BTreeMap<String, usize> = BTreeMap::new();
    for fault in &histories.faults {
        let name = match fault {
            Fault::Kill { .. } => "kill".to_owned(),
            Fault::Stop { .. } => "stop".to_owned(),
            Fault::Restart { data, .. } => format!("restart-{data}"),
            Fault::Save { .. } => "save".to_owned(),
            Fault::Net { kind, .. } => format!("net-{kind}"),
            Fault::DiskFull { .. } => "disk-full".to_owned(),
        };
        *faults.entry(name).or_default() += 1;
    }
    let new_sections = sections.iter().filter(|s| s.kind == Kind::New);
    let mut modes: BTreeMap<String, usize> = BTreeMap::new();
    for section in new_sections.clone() {
        *modes.entry(section.mode.as_str().to_owned()).or_default() += 1;
    }
    Report {
        sections: new_sections.clone().count(),
        old_sections: sections.len() - new_sections.clone().count(),
        modes,
        most_together,
        writes,
        writes_unknown: unknown,
        counter,
        fenced: sections.iter().map(|s| u64::from(s.fenced)).sum(),
        lost: sections.iter().filter(|s| s.lost.is_some()).count(),
        timeouts: histories.timeouts,
        errors: histories.errors,
        excused,
        faults,
        longest_wait_ms: histories.waits.iter().map(|w| w.end.saturating_sub(w.start)).max().unwrap_or(0) as f64 / 1e3,
        longest_hold_ms: new_sections.map(|s| s.end_t.saturating_sub(s.grant_t)).max().unwrap_or(0) as f64 / 1e3,
        longest_free_wait_ms: longest_free as f64 / 1e3,
        violations,
    }
}

/// The one of two (token, section) pairs with the higher token.
fn higher<'a>(a: Option<(u64, &'a Section)>, b: Option<(u64, &'a Section)>) -> Option<(u64, &'a Section)> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b.0 > a.0 { b } else { a }),
        (a, b) => a.or(b),
    }
}

/// `Ok(())` if two overlapping lockman sections break exclusion; `Err(reason)`
/// if a rule excuses them.
fn judge_new_overlap(histories: &Histories, earlier: &Section, later: &Section, bounds: Bounds) -> Result<(), String> {
    if let Some((lost_t, _)) = &earlier.lost
        && *lost_t <= later.grant_t + bounds.slack_us
    {
        return Err("told lost before the next grant".to_owned());
    }
    let restarted = histories
        .faults
        .iter()
        .any(|fault| matches!(fault, Fault::Restart { t, .. } if *t > earlier.grant_t && *t <= later.grant_t));
    if restarted {
        return Err("the Redis server lost the lock in a restart".to_owned());
    }
    for (stop_t, until) in stops_of(histories, &earlier.w) {
        let frozen_at_grant = stop_t <= later.grant_t && later.grant_t <= until + bounds.slack_us;
        let lease_ran_out =
            earlier.lease_at(stop_t).is_some_and(|lease| later.grant_t + bounds.slack_us >= stop_t + lease / 2);
        if frozen_at_grant && lease_ran_out {
            return Err("frozen past its lease".to_owned());
        }
    }
    Ok(())
}

/// The same for an old daemon's section against a lockman one.
fn judge_old_overlap(histories: &Histories, earlier: &Section, later: &Section) -> Result<(), String> {
    let stolen_between = |from: u64, to: u64| histories.steals.iter().any(|(_, t)| *t >= from && *t <= to);
    // Someone other than these two granted or ended a section (or stole the file) in [from, to].
    let touched_between = |from: u64, to: u64| {
        stolen_between(from, to)
            || histories.sections.iter().any(|s| {
                !std::ptr::eq(s, earlier)
                    && !std::ptr::eq(s, later)
                    && ((s.grant_t >= from && s.grant_t <= to) || (s.end_t >= from && s.end_t <= to))
            })
    };
    if later.kind == Kind::New {
        // The old daemon saw no file, then lockman's grant began (and created
        // the file) before the old daemon's truncating open: both think the
        // file is theirs — the old protocol's check-then-create race.
        if earlier.check_t.is_some_and(|check| check < later.grant_t) && later.began_t <= earlier.grant_t {
            return Err("old daemon's check-then-create race".to_owned());
        }
        // An old daemon held the file; lockman went in anyway. Excused only if
        // someone else touched the file since the old daemon saw it absent.
        let since = earlier.check_t.unwrap_or(earlier.grant_t);
        if touched_between(since, later.grant_t) {
            return Err("old protocol race (the file changed hands under the old daemon)".to_owned());
        }
        if later.release_failed || later.lost.is_some() {
            return Err("reported as lost to a legacy process".to_owned());
        }
        return Ok(());
    }
    // lockman held the legacy file; an old daemon went in anyway.
    match later.check_t {
        Some(check) if check >= earlier.grant_t && !stolen_between(earlier.grant_t, check) => {
            if earlier.release_failed || earlier.lost.is_some() {
                Err("reported as lost to a legacy process".to_owned())
            } else {
                Ok(())
            }
        }
        Some(_) => Err("old daemon's check-then-create race".to_owned()),
        None => Err("old daemon's check-then-create race".to_owned()),
    }
}

/// When a stop of `w` began within `[from, to]`, if one did.
fn frozen_in(faults: &[Fault], w: &str, from: u64, to: u64) -> Option<u64> {
    faults.iter().find_map(|fault| match fault {
        Fault::Stop { t, w: stopped, .. } if stopped == w && *t >= from && *t <= to => Some(*t),
        _ => None,
    })
}

fn stops_of<'a>(histories: &'a Histories, w: &'a str) -> impl Iterator<Item = (u64, u64)> + 'a {
    histories.faults.iter().filter_map(move |fault| match fault {
        Fault::Stop { t, until, w: stopped } if stopped == w => Some((*t, *until)),
        _ => None,
    })
}

/// When the lock was held, or a fault anywhere explains why it may have
/// looked free: sections, killed or frozen participants' leases, restarts,
/// a full disk. Each as `(from, to, holds)`: how many of `capacity` permits
/// it takes (a fault of the whole backend takes them all).
fn busy_intervals(histories: &Histories, bounds: Bounds, capacity: u32) -> Vec<(u64, u64, u32)> {
    let shadow = bounds.lease_us + bounds.slack_us;
    let mut busy: Vec<(u64, u64, u32)> = histories.sections.iter().map(|s| (s.grant_t, s.end_t, 1)).collect();
    for fault in &histories.faults {
        match fault {
            Fault::Kill { t, .. } => busy.push((*t, t + shadow, 1)),
            Fault::Stop { t, until, .. } => busy.push((*t, until + shadow, 1)),
            Fault::Restart { t, until, .. } => busy.push((*t, until + shadow, capacity)),
            Fault::DiskFull { t, until } => busy.push((*t, until + shadow, capacity)),
            Fault::Save { .. } | Fault::Net { .. } => {}
        }
    }
    // A section whose holder was told "lost" (or whose lease a network fault
    // ran out) may have left its lease behind in the store.
    for section in &histories.sections {
        if section.lost.is_some() || section.killed {
            busy.push((section.end_t, section.end_t + shadow, 1));
        }
    }
    busy
}

/// Network faults on one waiter's own connection (its requests may not arrive).
fn own_fault_intervals(histories: &Histories, w: &str, bounds: Bounds) -> Vec<(u64, u64)> {
    histories
        .faults
        .iter()
        .filter_map(|fault| match fault {
            Fault::Net { t, until, w: affected, .. } if affected == w => Some((*t, until + bounds.lease_us)),
            _ => None,
        })
        .collect()
}

/// Where `intervals` together hold at least `capacity`: sorted, disjoint.
/// With a capacity of 1, their union.
fn saturated(intervals: Vec<(u64, u64, u32)>, capacity: u32) -> Vec<(u64, u64)> {
    let mut edges: Vec<(u64, i64)> = Vec::with_capacity(intervals.len() * 2);
    // A section whose holder was killed just after logging its grant ends
    // (at the kill) before it began: it holds nothing.
    for (from, to, holds) in intervals.into_iter().filter(|(from, to, _)| to > from) {
        edges.push((from, i64::from(holds)));
        edges.push((to, -i64::from(holds)));
    }
    // At one instant, starts before ends: touching intervals stay one.
    edges.sort_unstable_by_key(|&(t, delta)| (t, std::cmp::Reverse(delta)));
    let (mut held, mut since) = (0i64, None);
    let mut saturated: Vec<(u64, u64)> = Vec::new();
    for (t, delta) in edges {
        held += delta;
        match since {
            None if held >= i64::from(capacity) => since = Some(t),
            Some(from) if held < i64::from(capacity) => {
                saturated.push((from, t));
                since = None;
            }
            _ => {}
        }
    }
    saturated
}

/// The longest stretch of `[start, end]` covered by none of `busy`.
fn longest_free_stretch<'a>(start: u64, end: u64, busy: impl Iterator<Item = &'a (u64, u64)>) -> u64 {
    let mut covering: Vec<(u64, u64)> = busy
        .filter(|(from, to)| *to > start && *from < end)
        .map(|(from, to)| (*from.max(&start), *to.min(&end)))
        .collect();
    covering.sort_unstable();
    let (mut cursor, mut longest) = (start, 0);
    for (from, to) in covering {
        if from > cursor {
            longest = longest.max(from - cursor);
        }
        cursor = cursor.max(to);
    }
    longest.max(end.saturating_sub(cursor))
}

#[cfg(test)]
mod tests;
