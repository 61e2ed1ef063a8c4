//! One business function, any backend: the service takes whatever lock and
//! status managers the environment picks, and never names a backend.
//!
//! ```sh
//! cargo run --example env_switch                                        # memory:// (one process)
//! LOCKMAN_URL=file:///tmp/locks cargo run --example env_switch          # lock files (one host)
//! LOCKMAN_URL=redis://127.0.0.1:6379/0 cargo run --example env_switch   # Redis (many hosts)
//! USE_NEW_LOCKS=false LOCKMAN_LEGACY_URL='legacy-file:///tmp/GivTCP_1?givtcp=1' cargo run --example env_switch
//! ```

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use lockman::{AcquireOptions, FlagOptions, LockError, LockManager, StatusManager};

/// The business function: save the register cache under its lock, marking a
/// refresh in progress. It neither knows nor cares which backend runs.
async fn save_register_cache(locks: &dyn LockManager, status: &dyn StatusManager) -> Result<u64, LockError> {
    let guard = locks
        .acquire("regcache", AcquireOptions::new().timeout(Duration::from_secs(5)).purpose("save register cache"))
        .await?;
    status.set(".cache_refresh", FlagOptions::new().ttl(Duration::from_secs(60))).await?;
    // ... write regCache_1.pkl, passing guard.fencing_token() to storage that checks it ...
    let token = guard.fencing_token().get();
    status.clear(".cache_refresh").await?;
    guard.release().await?;
    Ok(token)
}

#[tokio::main]
async fn main() -> ExitCode {
    let backends = match lockman::from_env().await {
        Ok(backends) => backends,
        Err(e) => {
            eprintln!("env_switch: {e}");
            return ExitCode::FAILURE;
        }
    };
    let locks: Arc<dyn LockManager> = backends.locks.clone();
    println!("running on {}", backends.chosen);
    match save_register_cache(&*locks, &*backends.status).await {
        Ok(token) => println!("saved the register cache under fencing token {token}"),
        Err(e) => {
            eprintln!("env_switch: {e}");
            return ExitCode::FAILURE;
        }
    }
    let caps = locks.capabilities();
    println!(
        "this backend: across processes {}, across hosts {}, leases {}, fencing {}",
        caps.cross_process, caps.cross_host, caps.leases, caps.fencing
    );
    println!("to switch, change the environment and restart — no rebuild:");
    println!("  LOCKMAN_URL=memory://                      one process (tests, a single daemon)");
    println!("  LOCKMAN_URL=file:///var/lib/app/locks      processes on one host (kernel locks)");
    println!("  LOCKMAN_URL='file:///mnt/share/locks?mode=lease'   hosts sharing an SMB/NFS folder");
    println!("  LOCKMAN_URL=redis://cache:6379/0           processes on many hosts");
    println!("  USE_NEW_LOCKS=false LOCKMAN_LEGACY_URL=legacy-file:///app/GivTCP_1?givtcp=1   like the old daemon");
    println!("  plus LOCKMAN_LEGACY_BRIDGE=legacy-file:///app/GivTCP_1?givtcp=1 while old daemons still run");
    ExitCode::SUCCESS
}
