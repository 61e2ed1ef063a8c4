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
//! `--unchecked-tokens` turns the check off (the checker's self-test: lost
//! updates must then be found).

use std::fs::{File, OpenOptions};
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// One fixed-width record, rewritten in place with a single `pwrite`, so a
/// killed writer leaves the old record or the new, never a torn one.
const RECORD_LEN: usize = 42;

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

    /// Reads the counter with `token` (`None`: unfenced, for `--no-lock`).
    pub fn read(&self, token: Option<u64>) -> io::Result<Result<u64, Fenced>> {
        self.access(token, |value| (value, None))
    }

    /// Stores `value` with `token`.
    pub fn write(&self, token: Option<u64>, value: u64) -> io::Result<Result<(), Fenced>> {
        Ok(self.access(token, |_| (value, Some(value)))?.map(|_| ()))
    }

    /// The counter's value and the highest token seen, read without a token.
    pub fn peek(&self) -> io::Result<(u64, u64)> {
        let file = File::open(&self.path)?;
        file.lock_shared()?;
        read_record(&file, &self.path)
    }

    fn access(
        &self,
        token: Option<u64>,
        op: impl FnOnce(u64) -> (u64, Option<u64>),
    ) -> io::Result<Result<u64, Fenced>> {
        let file = OpenOptions::new().read(true).write(true).create(true).truncate(false).open(&self.path)?;
        file.lock()?;
        let (value, seen) = read_record(&file, &self.path)?;
        let mut high = seen;
        if let Some(token) = token {
            if self.check_tokens && token < seen {
                return Ok(Err(Fenced { seen }));
            }
            high = high.max(token);
        }
        let (result, new_value) = op(value);
        let new_value = new_value.unwrap_or(value);
        if new_value != value || high != seen {
            let record = format!("{new_value:020} {high:020}\n");
            file.write_all_at(record.as_bytes(), 0)?;
        }
        Ok(Ok(result))
    }
}

fn read_record(mut file: &File, path: &Path) -> io::Result<(u64, u64)> {
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    if text.is_empty() {
        return Ok((0, 0));
    }
    let bad =
        || io::Error::new(io::ErrorKind::InvalidData, format!("{}: not a counter record: {text:?}", path.display()));
    if text.len() != RECORD_LEN {
        return Err(bad());
    }
    let mut fields = text.split_whitespace().map(str::parse::<u64>);
    match (fields.next(), fields.next()) {
        (Some(Ok(value)), Some(Ok(seen))) => Ok((value, seen)),
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
    fn unchecked_tokens_let_a_late_writer_through() {
        let dir = tempfile::tempdir().unwrap();
        let counter = FencedCounter::new(&dir.path().join("counter"), false);
        counter.read(Some(6)).unwrap().unwrap();
        counter.write(Some(5), 7).unwrap().unwrap();
        assert_eq!(counter.peek().unwrap(), (7, 6));
    }
}
