//! A tour of lockman: four pollers share one device bus, a command waits its
//! turn, a timeout names the holder, a holder id re-enters (and why it is a
//! reentrancy key, not a name), and a status flag marks a long-running mode.
//!
//! Run it with `cargo run --example quickstart` (the in-process backend), or
//! pick another backend at runtime:
//! `LOCKMAN_URL=file:///tmp/locks cargo run --example quickstart`,
//! `LOCKMAN_URL=redis://127.0.0.1:6379/0 cargo run --example quickstart`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use lockman::{AcquireOptions, FlagOptions, LockError};

#[tokio::main]
async fn main() -> std::process::ExitCode {
    match tour().await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("quickstart failed: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn tour() -> Result<(), LockError> {
    // The backend comes from LOCKMAN_URL / lockman.toml / USE_NEW_LOCKS;
    // the in-process one by default.
    let backends = lockman::from_env().await?;
    println!("backend: {}", backends.chosen);
    let (locks, status) = (backends.locks, backends.status);
    let mut events = locks.events();

    // Four pollers, each reading the bus 25 times; a bus transaction must
    // never overlap another.
    let on_bus = Arc::new(AtomicU32::new(0));
    let overlaps = Arc::new(AtomicU32::new(0));
    let pollers: Vec<_> = (0..4)
        .map(|n| {
            let (locks, on_bus, overlaps) = (locks.clone(), on_bus.clone(), overlaps.clone());
            tokio::spawn(async move {
                for _ in 0..25 {
                    let options = AcquireOptions::new()
                        .timeout(Duration::from_secs(5))
                        .purpose(format!("poller {n}: read registers"));
                    let guard = locks.acquire("inverter_read", options).await?;
                    if on_bus.fetch_add(1, Ordering::SeqCst) != 0 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                    tokio::time::sleep(Duration::from_micros(200)).await; // the transaction
                    on_bus.fetch_sub(1, Ordering::SeqCst);
                    guard.release().await?;
                }
                Ok::<_, LockError>(())
            })
        })
        .collect();
    for poller in pollers {
        poller.await.expect("poller panicked")?;
    }
    println!("100 bus transactions by 4 pollers, overlaps = {}", overlaps.load(Ordering::SeqCst));

    // A force-charge command holds the bus and raises a flag while it runs.
    // Its holder id is a *reentrancy key*, not a name: every acquisition
    // through this manager with "force-charge" gets in while the command
    // holds the bus. Give it only to code that may re-enter the lock (the
    // helper below); two daemon tasks both using this constant would both
    // hold the bus. Another manager or process using the same text is a
    // different holder (the id is stored as `force-charge@<scope>`) — use
    // `AcquireOptions::shared_holder` to make processes one holder on purpose.
    let command = locks
        .acquire("inverter_read", AcquireOptions::new().holder("force-charge").purpose("write charge registers"))
        .await?;
    status.set(".FCRunning", FlagOptions::new().value("job-1\n15:30")).await?;
    println!("flag .FCRunning set: {:?}", status.get(".FCRunning").await?.and_then(|f| f.value));

    // Someone who cannot wait long is told who is in the way.
    match locks.acquire("inverter_read", AcquireOptions::new().timeout(Duration::from_millis(50))).await {
        Err(e) => println!("impatient reader: {e}"),
        Ok(_) => unreachable!("the bus is held"),
    }

    // The command's holder id may re-enter (e.g. a helper it calls).
    let nested = locks.acquire("inverter_read", AcquireOptions::new().holder("force-charge")).await?;
    let held_by = nested.info().holder;
    println!("re-entered: hold count {} as {} (name {:?})", nested.info().hold_count, held_by, held_by.name());
    nested.release().await?;
    command.release().await?;
    status.clear(".FCRunning").await?;

    let mut counts = std::collections::BTreeMap::new();
    while let Some(event) = events.try_recv() {
        *counts.entry(event.kind.as_str()).or_insert(0) += 1;
    }
    println!("events: {counts:?}");
    Ok(())
}
