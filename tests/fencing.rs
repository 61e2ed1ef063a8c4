//! `lockman::fencing::FencedFile` and `with_lock_guard`: a file that refuses
//! writes carrying a fencing token lower than the last one written, fed the
//! token of the guard that `with_lock_guard` hands its closure.

use std::sync::{Arc, Barrier};
use std::time::Duration;

use lockman::fencing::FencedFile;
use lockman::{AcquireOptions, FencingToken, LockManager, LockManagerExt, MemoryLockManager};

const LIMIT: Duration = Duration::from_secs(10);

#[test]
fn stale_token_is_refused_and_equal_token_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let file = FencedFile::new(dir.path().join("regcache.json"));
    assert_eq!(file.last_token().unwrap(), None);
    file.write(FencingToken::new(8), b"eight").unwrap();
    file.write(FencingToken::new(8), b"eight again").unwrap();
    let refused = file.write(FencingToken::new(7), b"seven").unwrap_err();
    assert!(refused.is_stale(), "{refused}");
    assert!(refused.to_string().contains("token 8 already wrote"), "{refused}");
    assert_eq!(std::fs::read(file.path()).unwrap(), b"eight again");
    assert_eq!(file.last_token().unwrap(), Some(FencingToken::new(8)));
    // A shorter token after a longer one: the stored token must not keep old digits.
    file.write(FencingToken::new(1000), b"thousand").unwrap();
    assert!(file.write(FencingToken::new(999), b"").unwrap_err().is_stale());
    // A second handle on the same path (another process would do the same) sees the token.
    let other = FencedFile::new(dir.path().join("regcache.json"));
    assert!(other.write(FencingToken::new(9), b"nine").unwrap_err().is_stale());
    assert_eq!(std::fs::read(file.path()).unwrap(), b"thousand");
    // No temporary file is left behind.
    let mut names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name()).collect();
    names.sort();
    assert_eq!(names, ["regcache.json", "regcache.json.fence"]);
}

#[test]
fn a_token_file_that_is_not_a_token_is_an_error_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let file = FencedFile::new(dir.path().join("cache"));
    std::fs::write(dir.path().join("cache.fence"), "garbage").unwrap();
    let e = file.write(FencingToken::new(1), b"x").unwrap_err();
    assert!(!e.is_stale());
    assert!(e.to_string().contains("cache.fence holds \"garbage\", not a fencing token"), "{e}");
    assert!(!file.path().exists());
}

/// The case fencing exists for: a holder pauses past its lease, the lock
/// passes to the next holder, which writes; the first wakes up and writes
/// through `with_lock_guard`'s guard — refused, the newer data stays.
#[tokio::test]
async fn paused_holder_past_its_lease_cannot_overwrite_the_next_holder() {
    let dir = tempfile::tempdir().unwrap();
    let file = Arc::new(FencedFile::new(dir.path().join("regcache.json")));
    let locks: Arc<dyn LockManager> = Arc::new(MemoryLockManager::default());
    let (paused_tx, paused_rx) = tokio::sync::oneshot::channel();
    let (resume_tx, resume_rx) = tokio::sync::oneshot::channel::<()>();

    let first = {
        let (locks, file) = (locks.clone(), file.clone());
        tokio::spawn(async move {
            let options = AcquireOptions::new().lease(Duration::from_millis(100));
            locks
                .with_lock_guard("inverter_read", options, |guard| {
                    let token = guard.fencing_token();
                    async move {
                        let _ = paused_tx.send(token);
                        // The pause: the lease runs out meanwhile.
                        let _ = resume_rx.await;
                        file.write(token, b"first, late")
                    }
                })
                .await
        })
    };
    let first_token = paused_rx.await.unwrap();
    let second = tokio::time::timeout(LIMIT, locks.acquire("inverter_read", AcquireOptions::new().timeout(LIMIT)))
        .await
        .expect("second acquire hung")
        .unwrap();
    assert!(second.fencing_token() > first_token);
    file.write(second.fencing_token(), b"second").unwrap();
    resume_tx.send(()).unwrap();

    // The lock was lost while the closure ran, so with_lock_guard reports that...
    let outcome = tokio::time::timeout(LIMIT, first).await.expect("first holder hung").unwrap();
    assert!(outcome.as_ref().is_err_and(|e| e.is_lost()), "{outcome:?}");
    // ...and the late write itself was refused by the file.
    let late = file.write(first_token, b"first, late").unwrap_err();
    assert!(late.is_stale(), "{late}");
    assert_eq!(std::fs::read(file.path()).unwrap(), b"second");
    second.release().await.unwrap();
}

/// Writers on many threads at once, each with its own token and its own
/// `FencedFile` handle: the compare and the write are one step, so a lower
/// token is never written after a higher one and the file ends with the
/// highest token's contents. Repeated, since one round may not interleave.
#[test]
fn racing_writers_leave_the_highest_token() {
    const WRITERS: u64 = 8;
    for round in 0..20 {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("regcache.json");
        let start = Arc::new(Barrier::new(WRITERS as usize));
        let writers: Vec<_> = (1..=WRITERS)
            .map(|token| {
                let (path, start) = (path.clone(), start.clone());
                std::thread::spawn(move || {
                    let file = FencedFile::new(path);
                    start.wait();
                    match file.write(FencingToken::new(token), token.to_string().as_bytes()) {
                        Ok(()) => true,
                        Err(e) if e.is_stale() => false,
                        Err(e) => panic!("{e}"),
                    }
                })
            })
            .collect();
        let accepted = writers.into_iter().map(|w| w.join().unwrap()).filter(|&ok| ok).count();
        assert!(accepted >= 1);
        let file = FencedFile::new(&path);
        assert_eq!(std::fs::read(&path).unwrap(), WRITERS.to_string().as_bytes(), "round {round}");
        assert_eq!(file.last_token().unwrap(), Some(FencingToken::new(WRITERS)), "round {round}");
    }
}
