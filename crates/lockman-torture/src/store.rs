//! The data the lock protects: a counter in a file that checks fencing
//! tokens on every access, the way a database that supports fencing would.
//!
//! Each access locks the file (its own kernel lock, the store's internal
//! atomicity — not the lock under test), compares the caller's token with the
//! highest token the store has seen, refuses a lower one, and raises the
//! high-water mark. Checking reads as well as writes matters: if only writes
//! were checked, a holder that lost its lock could read, let the next holder
//! read the same value, write first with its older token (still the highest
//! *written*), and the next holder's write would silently drop its update.
//!
//! Readers (shared holds) need a second mark. Shared holders hold together
//! with distinct tokens, and a later-granted reader may read first: if its
//! read raised the one mark, an earlier-granted reader still in its section
//! would be refused — a false alarm. So the store keeps two marks:
//!
//! - `seen`: the highest token of *any* access. Exclusive accesses (a
//!   writer's read and write) must not be below it: a stale writer is stopped
//!   by a newer reader as well as by a newer writer.
//! - `seen_exclusive`: the highest token of an exclusive access. A shared read
//!   must not be below it (a reader whose lock was lost is stopped once a
//!   newer writer has touched the data) and raises only `seen`, so readers
//!   never fence each other out.
//!
//! With only exclusive accesses the two marks are equal and the store is the
//! single-mark store it always was.
//!
//! `--unchecked-tokens` turns the check off (the checker's self-test: lost
//! updates must then be found).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// One fixed-width record (value, seen, seen_exclusive), rewritten in place
/// with a single `pwrite`, so a killed writer leaves the old record or the
/// new, never a torn one.
const RECORD_LEN: usize = 63;
/// The record of a run kept by an older harness (value, seen): one mark.
const OLD_RECORD_LEN: usize = 42;

/// The store refused a token lower than one it has seen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fenced {
    /// The highest token the store has seen.
    pub seen: u64,
}

/// The counter file.
#[derive(Debug, Clone)]
pub struct FencedCounter {
    path: PathBuf,
    check_tokens: bool,
}

impl FencedCounter {
    /// The counter at `path` (created at 0 on first use).
    pub fn new(path: &Path, check_tokens: bool) -> FencedCounter {
        FencedCounter { path: path.to_owned(), check_tokens }
    }

    /// Reads the counter with `token` (`None`: unfenced, for `--no-lock`),
    /// as a writer about to write it.
    pub fn read(&self, token: Option<u64>) -> io::Result<Result<u64, Fenced>> {
        self.access(token, Access::Exclusive, |value| (value, None))
    }

    /// Reads the counter with `token` as a shared holder: refused only below
    /// the last writer's token, and not fencing other readers out.
    pub fn read_shared(&self, token: Option<u64>) -> io::Result<Result<u64, Fenced>> {
        self.access(token, Access::Shared, |value| (value, None))
    }

    /// Stores `value` with `token`.
    pub fn write(&self, token: Option<u64>, value: u64) -> io::Result<Result<(), Fenced>> {
        Ok(self.access(token, Access::Exclusive, |_| (value, Some(value)))?.map(|_| ()))
    }

    /// The counter's value and the highest token seen, read without a token.
    pub fn peek(&self) -> io::Result<(u64, u64)> {
        let file = File::open(&self.path)?;
        file.lock_shared()?;
        let record = read_record(&file, &self.path)?;
        Ok((record.value, record.seen))
    }

    fn access(
        &self,
        token: Option<u64>,
        access: Access,
        op: impl FnOnce(u64) -> (u64, Option<u64>),
    ) -> io::Result<Result<u64, Fenced>> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&self.path)?;
        file.lock()?;
        let before = read_record(&file, &self.path)?;
        let mut after = before;
        if let Some(token) = token {
            let bar = match access {
                Access::Exclusive => before.seen,
                Access::Shared => before.seen_exclusive,
            };
            if self.check_tokens && token < bar {
                return Ok(Err(Fenced { seen: bar }));
            }
            after.seen = after.seen.max(token);
            if access == Access::Exclusive {
                after.seen_exclusive = after.seen_exclusive.max(token);
            }
        }
        let (result, new_value) = op(before.value);
        after.value = new_value.unwrap_or(before.value);
        if after != before {
            let Record { value, seen, seen_exclusive } = after;
            let record = format!("{value:020} {seen:020} {seen_exclusive:020}\n");
            file.write_all_at(record.as_bytes(), 0)?;
        }
        Ok(Ok(result))
    }
}

/// How an access holds the data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Access {
    /// A writer (its read and its write).
    Exclusive,
    /// A reader beside other readers.
    Shared,
}

/// The counter file's contents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Record {
    value: u64,
    /// The highest token of any access.
    seen: u64,
    /// The highest token of an exclusive access.
    seen_exclusive: u64,
}

fn read_record(mut file: &File, path: &Path) -> io::Result<Record> {
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    if text.is_empty() {
        return Ok(Record { value: 0, seen: 0, seen_exclusive: 0 });
    }
    let bad =
        || io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a counter record: {text:?}", path.display()));
    let fields: Vec<u64> =
        text.split_whitespace().map(str::parse::<u64>).collect::<Result<_, _>>().map_err(|_| bad())?;
    match (text.len(), fields.as_slice()) {
        (RECORD_LEN, &[value, seen, seen_exclusive]) => Ok(Record { value, seen, seen_exclusive }),
        (OLD_RECORD_LEN, &[value, seen]) => Ok(Record { value, seen, seen_exclusive: seen }),
        _ => Err(bad()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lower_token_is_refused_on_read_and_write() {
        let dir = tempfile::tempdir().unwrap();
        let counter = FencedCounter::new(&dir.path().join("counter"), true);
        assert_eq!(counter.read(Some(5)).unwrap(), Ok(0));
        counter.write(Some(5), 1).unwrap().unwrap();
        // A later grant reads: the older holder may no longer write.
        assert_eq!(counter.read(Some(6)).unwrap(), Ok(1));
        assert_eq!(counter.write(Some(5), 2).unwrap(), Err(Fenced { seen: 6 }));
        assert_eq!(counter.read(Some(5)).unwrap(), Err(Fenced { seen: 6 }));
        assert_eq!(counter.peek().unwrap(), (1, 6));
    }

    #[test]
    fn readers_do_not_fence_each_other_but_fence_stale_writers() {
        let dir = tempfile::tempdir().unwrap();
        let counter = FencedCounter::new(&dir.path().join("counter"), true);
        counter.read(Some(3)).unwrap().unwrap();
        counter.write(Some(3), 1).unwrap().unwrap();
        // Readers 5 and 4 hold together; 5 reads first, then 4 may still read.
        assert_eq!(counter.read_shared(Some(5)).unwrap(), Ok(1));
        assert_eq!(counter.read_shared(Some(4)).unwrap(), Ok(1));
        // Writer 3 lost its lock: reader 5 has read since, so its write is refused.
        assert_eq!(counter.write(Some(3), 2).unwrap(), Err(Fenced { seen: 5 }));
        // A newer writer (6) reads: reader 5, if it lost its lock, may no longer read.
        assert_eq!(counter.read(Some(6)).unwrap(), Ok(1));
        assert_eq!(counter.read_shared(Some(5)).unwrap(), Err(Fenced { seen: 6 }));
        assert_eq!(counter.peek().unwrap(), (1, 6));
    }

    #[test]
    fn an_older_harness_record_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("counter");
        std::fs::write(&path, format!("{:020} {:020}\n", 7, 9)).unwrap();
        let counter = FencedCounter::new(&path, true);
        assert_eq!(counter.peek().unwrap(), (7, 9));
        assert_eq!(counter.read_shared(Some(8)).unwrap(), Err(Fenced { seen: 9 }));
    }

    #[test]
    fn unchecked_tokens_let_a_late_writer_through() {
        let dir = tempfile::tempdir().unwrap();
        let counter = FencedCounter::new(&dir.path().join("counter"), false);
        counter.read(Some(6)).unwrap().unwrap();
        counter.write(Some(5), 7).unwrap().unwrap();
        assert_eq!(counter.peek().unwrap(), (7, 6));
    }
}
