//! `lockctl watch`: this process's lock events, plus changes seen by polling.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use lockman::{Backends, LockInfo, LockStateKind};
use tokio::signal::unix::{SignalKind, signal};

use crate::cli::WatchArgs;
use crate::exit::{self, Failure};
use crate::inspect;
use crate::output::{self, EventJson};

/// What `watch` says on stderr before streaming, so nobody mistakes silence
/// for an idle backend.
pub const NOTE: &str = "note: lock events are published only inside the process whose lock manager \
    produced them, and no backend forwards other processes' events yet, so the event stream shows only \
    this watch's own manager; changes made by other processes are shown by polling the lock list";

/// Streams events until SIGINT or SIGTERM; exits 0.
pub async fn watch(backends: &Backends, args: &WatchArgs, json: bool) -> Result<u8, Failure> {
    let poll = (!args.poll.is_zero()).then_some(args.poll);
    match poll {
        Some(every) => output::note(&format!("{NOTE} every {} (--poll).", humantime::format_duration(every))),
        None => output::note(&format!("{NOTE} — which --poll 0 turned off.")),
    }
    let mut interrupt = listen(SignalKind::interrupt())?;
    let mut terminate = listen(SignalKind::terminate())?;
    let mut events = backends.locks.events();
    let mut seen = match poll {
        Some(_) => snapshot(backends).await?,
        None => BTreeMap::new(),
    };
    let mut ticker = tokio::time::interval(poll.unwrap_or(Duration::from_secs(3600)));
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticker.tick().await; // the first tick is immediate; the snapshot above was it
    let mut failing = false;
    loop {
        tokio::select! {
            event = events.recv() => match event {
                Ok(event) if json => output::say_json(&EventJson::from_event(&event))?,
                Ok(event) => output::say(&output::event_line(&event))?,
                Err(lockman::EventsError::Lagged(missed)) => output::note(&format!("fell behind: {missed} events were skipped")),
                Err(_closed) => return Ok(exit::OK),
            },
            _ = ticker.tick(), if poll.is_some() => match snapshot(backends).await {
                Ok(now) => {
                    failing = false;
                    report_changes(&seen, &now, json)?;
                    seen = now;
                }
                Err(e) => {
                    if !failing {
                        output::note(&format!("cannot poll the lock list (will keep trying): {e}"));
                    }
                    failing = true;
                }
            },
            _ = interrupt.recv() => return Ok(exit::OK),
            _ = terminate.recv() => return Ok(exit::OK),
        }
    }
}

/// A signal stream, or the OS error as a failure.
pub fn listen(kind: SignalKind) -> Result<tokio::signal::unix::Signal, Failure> {
    signal(kind).map_err(|e| Failure::new(exit::OSERR, format!("cannot listen for signals: {e}")))
}

type Snapshot = BTreeMap<String, (LockInfo, LockStateKind)>;

async fn snapshot(backends: &Backends) -> Result<Snapshot, Failure> {
    let locks = inspect::classified(backends).await?;
    Ok(locks
        .into_iter()
        .filter(|(_, state)| *state != LockStateKind::Available)
        .map(|(info, state)| (info.resource.clone(), (info, state)))
        .collect())
}

/// Prints what changed between two snapshots: `released` (gone, or taken
/// over), `locked` (new, or a new grant), `stale` (its holder is gone).
fn report_changes(before: &Snapshot, after: &Snapshot, json: bool) -> Result<(), Failure> {
    let now = SystemTime::now();
    let print = |kind: &str, info: &LockInfo| {
        if json {
            output::say_json(&EventJson::observed(kind, info, now))
        } else {
            output::say(&output::observed_line(kind, info, now))
        }
    };
    for (resource, (old, _)) in before {
        match after.get(resource) {
            Some((new, _)) if same_grant(old, new) => {}
            _ => print("released", old)?,
        }
    }
    for (resource, (new, state)) in after {
        let old = before.get(resource);
        if !old.is_some_and(|(old, _)| same_grant(old, new)) {
            print("locked", new)?;
        }
        if *state == LockStateKind::Stale
            && old.is_none_or(|(old, old_state)| !same_grant(old, new) || *old_state != LockStateKind::Stale)
        {
            print("stale", new)?;
        }
    }
    Ok(())
}

fn same_grant(a: &LockInfo, b: &LockInfo) -> bool {
    a.holder == b.holder && a.fencing_token == b.fencing_token && a.pid == b.pid && a.hostname == b.hostname
}
