//! Unit-testing code that takes `Arc<dyn LockManager>`: give it the
//! in-process backend. It is a real backend (not a mock), needs no server,
//! and its waits run on tokio's clock, so with a paused clock a timeout path
//! is tested in no time and the same way every run.
//!
//! ```sh
//! cargo test --example unit_testing      # the tests below (also part of `cargo test --workspace`)
//! cargo run --example unit_testing       # the code under test, once
//! ```

use std::sync::Arc;
use std::time::Duration;

use lockman::{AcquireOptions, LockError, LockManager};

/// The code under test: reads the inverter if the bus frees up within
/// `patience`, else reports it busy instead of queueing forever.
pub struct Poller {
    locks: Arc<dyn LockManager>,
    patience: Duration,
}

/// What one poll did.
#[derive(Debug, PartialEq, Eq)]
pub enum Poll {
    /// Read the registers.
    Read,
    /// The bus was busy; who had it.
    Busy(String),
}

impl Poller {
    /// A poller on `locks` that waits at most `patience` for the bus.
    pub fn new(locks: Arc<dyn LockManager>, patience: Duration) -> Self {
        Poller { locks, patience }
    }

    /// One poll: read the registers, or say who kept the bus.
    pub async fn poll(&self) -> Result<Poll, LockError> {
        let options = AcquireOptions::new().timeout(self.patience).purpose("poll: read all registers");
        match self.locks.acquire("inverter_read", options).await {
            Ok(guard) => {
                // ... one transaction on the bus ...
                guard.release().await?;
                Ok(Poll::Read)
            }
            Err(LockError::Timeout { holder, .. }) => {
                Ok(Poll::Busy(holder.map_or_else(|| "unknown".to_owned(), |h| h.holder.name().to_owned())))
            }
            Err(e) => Err(e),
        }
    }
}

#[tokio::main]
async fn main() -> Result<(), LockError> {
    let poller = Poller::new(Arc::new(lockman::MemoryLockManager::default()), Duration::from_secs(1));
    println!("{:?}", poller.poll().await?);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use lockman::MemoryLockManager;

    fn locks() -> Arc<dyn LockManager> {
        Arc::new(MemoryLockManager::default())
    }

    #[tokio::test]
    async fn reads_when_the_bus_is_free() {
        let poller = Poller::new(locks(), Duration::from_secs(1));
        assert_eq!(poller.poll().await.expect("poll"), Poll::Read);
    }

    /// The timeout path, deterministically: the clock is paused, so the 30 s
    /// of patience pass in an instant (tokio advances a paused clock when
    /// every task is waiting), and nothing depends on the machine's speed.
    #[tokio::test(start_paused = true)]
    async fn reports_who_holds_the_bus_after_its_patience() {
        let locks = locks();
        let _command = locks
            .acquire("inverter_read", AcquireOptions::new().holder("force-charge"))
            .await
            .expect("the command takes the bus");
        let poller = Poller::new(locks, Duration::from_secs(30));
        let started = tokio::time::Instant::now();
        assert_eq!(poller.poll().await.expect("poll"), Poll::Busy("force-charge".to_owned()));
        assert_eq!(started.elapsed(), Duration::from_secs(30), "gave up at the wrong (virtual) time");
    }

    /// A release while the poller waits lets it through. The test knows the
    /// poller is waiting by asking the backend — no sleep.
    #[tokio::test(start_paused = true)]
    async fn gets_the_bus_once_it_is_released() {
        let memory = Arc::new(MemoryLockManager::default());
        let command = memory.acquire("inverter_read", AcquireOptions::new()).await.expect("acquire");
        let poller = Poller::new(memory.clone(), Duration::from_secs(30));
        let poll = tokio::spawn(async move { poller.poll().await });
        while memory.backend().waiting() == 0 {
            tokio::task::yield_now().await;
        }
        command.release().await.expect("release");
        assert_eq!(poll.await.expect("poll task").expect("poll"), Poll::Read);
    }
}
