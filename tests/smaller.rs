//! Issue 17, item 7: smaller things a newcomer trips on — the blocking API's
//! missing conveniences, a lease option that kernel locks silently ignored,
//! and `main` printing `Error: Config("…")`.

use std::time::Duration;

use lockman::{AcquireOptions, Config, LockError};

#[cfg(feature = "file")]
#[tokio::test]
async fn a_lease_on_kernel_locked_files_is_refused() {
    let dir = tempfile::tempdir().expect("temp dir");
    let url = format!("file://{}?lease=3s", dir.path().display());
    let error = lockman::connect(&url).await.expect_err("lease on kernel-lock mode was accepted");
    let LockError::Config(message) = &error else { panic!("not a config error: {error}") };
    assert!(message.contains("`lease`") && message.contains("only applies to mode=lease"), "{message}");
    // The same option in lease mode is fine.
    let url = format!("file://{}?mode=lease&lease=3s", dir.path().display());
    lockman::connect(&url).await.expect("lease mode takes a lease");
}

#[test]
fn debug_of_an_error_reads_like_its_display() {
    let error = LockError::Config("LOCKMAN_URL names nothing".to_owned());
    // What `fn main() -> Result<(), LockError>` prints after `Error: `.
    assert_eq!(format!("{error:?}"), "configuration error: LOCKMAN_URL names nothing");
    assert_eq!(format!("{error:?}"), error.to_string());
    // The structured form stays available.
    assert!(format!("{error:#?}").starts_with("Config("), "{error:#?}");
}

#[cfg(feature = "memory")]
#[test]
fn blocking_backends_have_acquire_options_try_lock_and_with_lock() {
    let mut config = Config::for_url("memory://");
    config.default_wait = Some(Duration::from_millis(20));
    let backends = lockman::blocking::connect_with(&config).expect("connect");
    assert_eq!(backends.acquire_options().wait, lockman::Wait::Timeout(Duration::from_millis(20)));

    let guard = backends.locks.try_lock("inverter_read").expect("try_lock").expect("free");
    // Another thread is another holder: it finds the lock taken.
    let locks = backends.locks.clone();
    let taken = std::thread::spawn(move || locks.try_lock("inverter_read").expect("try_lock").is_none())
        .join()
        .expect("thread panicked");
    assert!(taken, "another thread got a held lock");
    guard.release().expect("release");

    let answer = backends.locks.with_lock("inverter_read", AcquireOptions::new(), || 42).expect("with_lock");
    assert_eq!(answer, 42);
    assert!(backends.locks.try_lock("inverter_read").expect("try_lock").is_some(), "with_lock did not release");
}
