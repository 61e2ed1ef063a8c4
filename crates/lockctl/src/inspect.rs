//! `list`, `status`, `release`, `cleanup`: looking at locks and repairing them.

use std::time::SystemTime;

use lockman::{Backends, LockInfo, LockState, LockStateKind};

use crate::cli::ReleaseArgs;
use crate::exit::{self, Failure};
use crate::output::{self, LockJson};

/// `lockctl list`: every lock the backend lists, each with its state.
pub async fn list(backends: &Backends, json: bool) -> Result<u8, Failure> {
    let locks = classified(backends).await?;
    let now = SystemTime::now();
    if json {
        let rows: Vec<LockJson<'_>> =
            locks.iter().map(|(info, state)| LockJson::new(&info.resource, *state, Some(info), now)).collect();
        output::say_json(&rows)?;
    } else if locks.is_empty() {
        output::say(&format!("no locks held ({})", backends.chosen))?;
    } else {
        let rows: Vec<Vec<String>> =
            locks.iter().flat_map(|(info, state)| output::lock_rows(info, *state, now)).collect();
        output::say(&output::table(&output::LOCK_HEADER, &rows))?;
    }
    Ok(exit::OK)
}

/// Every listed lock with its state. `list` does not say which locks are
/// stale, so each is asked for its `state`; one released in between shows as
/// available (a lock whose name the backend could not recover keeps the
/// listed details).
pub async fn classified(backends: &Backends) -> Result<Vec<(LockInfo, LockStateKind)>, Failure> {
    let mut classified = Vec::new();
    for info in backends.locks.list().await? {
        let state = match backends.locks.state(&info.resource).await {
            Ok(LockState::Held(now)) => (now, LockStateKind::Held),
            Ok(LockState::Stale(now)) => (now, LockStateKind::Stale),
            Ok(LockState::Available) => (info, LockStateKind::Available),
            Err(e) => {
                tracing::warn!(resource = %info.resource, error = %e, "cannot read the state of a listed lock");
                (info, LockStateKind::Held)
            }
        };
        classified.push(state);
    }
    Ok(classified)
}

/// `lockctl status RESOURCE`: exit 0 free, 1 held, 2 stale.
pub async fn status(backends: &Backends, resource: &str, json: bool) -> Result<u8, Failure> {
    let state = backends.locks.state(resource).await?;
    let now = SystemTime::now();
    let word = state.kind();
    if json {
        output::say_json(&LockJson::new(resource, word, state.info(), now))?;
    } else {
        output::say(&output::lock_details(resource, &state, now))?;
    }
    Ok(match word {
        LockStateKind::Available => exit::OK,
        LockStateKind::Held => exit::NO,
        LockStateKind::Stale => exit::STALE,
    })
}

/// `lockctl release RESOURCE --force [--reason TEXT]`.
pub async fn release(backends: &Backends, args: &ReleaseArgs, json: bool) -> Result<u8, Failure> {
    if !args.force {
        return Err(Failure::new(
            exit::USAGE,
            format!(
                "refusing to break the lock on {} without --force: its holder may still be working and would lose \
                 its exclusion (see `lockctl status {}` first; then `lockctl release --force --reason TEXT {}`)",
                output::quoted(&args.resource),
                args.resource,
                args.resource
            ),
        ));
    }
    let reason = format!(
        "{} (by lockctl on {}, pid {})",
        args.reason.as_deref().unwrap_or("no reason given"),
        lockman::hostname(),
        std::process::id()
    );
    let broken = backends.locks.force_release(&args.resource, &reason).await?;
    tracing::warn!(resource = %args.resource, %reason, broken = broken.is_some(), "force release");
    let now = SystemTime::now();
    match &broken {
        Some(info) if json => output::say_json(&LockJson::new(&args.resource, LockStateKind::Held, Some(info), now))?,
        Some(info) => output::say(&format!("broke the lock on {}: it was {info}", output::quoted(&args.resource)))?,
        None if json => output::say_json(&LockJson::new(&args.resource, LockStateKind::Available, None, now))?,
        None => output::note(&format!("{} was not held; nothing to break", output::quoted(&args.resource))),
    }
    Ok(if broken.is_some() { exit::OK } else { exit::NO })
}

/// `lockctl cleanup [--dry-run]`.
pub async fn cleanup(backends: &Backends, dry_run: bool, json: bool) -> Result<u8, Failure> {
    let now = SystemTime::now();
    let (verb, locks) = if dry_run {
        let stale = classified(backends).await?.into_iter().filter(|(_, state)| *state == LockStateKind::Stale);
        ("would remove", stale.map(|(info, _)| info).collect::<Vec<_>>())
    } else {
        ("removed", backends.locks.cleanup_stale().await?)
    };
    if json {
        let rows: Vec<LockJson<'_>> =
            locks.iter().map(|info| LockJson::new(&info.resource, LockStateKind::Stale, Some(info), now)).collect();
        output::say_json(&rows)?;
    } else if locks.is_empty() {
        output::say(&format!("no stale locks ({})", backends.chosen))?;
    } else {
        for info in &locks {
            output::say(&format!("{verb} stale lock {}: {info}", output::quoted(&info.resource)))?;
        }
    }
    Ok(exit::OK)
}
