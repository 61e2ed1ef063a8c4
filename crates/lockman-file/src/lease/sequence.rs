//! The token sequence file, `<stem>.seq`: the last fencing token handed out
//! for a resource, kept when its lease file is gone.
//!
//! # Layout: two slots, the larger counts
//!
//! `"<slot 0>\n<slot 1>\n"`, each slot exactly 20 decimal digits (a `u64`,
//! zero-padded): 42 bytes. The file's value is the larger slot. A holder
//! records its token by overwriting the **smaller** slot in place, so the
//! larger one — at least every token granted before — stays whole while it
//! writes:
//!
//! * a reader that races the write (only a creator broken as stale while
//!   paused can write beside the holder) may see that slot half-written. A
//!   torn slot only mixes two numbers' digits: it may read high (harmless:
//!   tokens only need to rise) or low, and then the other slot covers it;
//! * a crash in the middle of the write leaves the other slot likewise
//!   (and the 21-byte write sits in one disk sector).
//!
//! The writer reads both slots again on its open handle just before it
//! writes (and writes nothing if they already hold more), so a creator that
//! paused since its first read does not overwrite the slot a later holder
//! filled meanwhile. What is left: a creator paused between that re-read
//! and its write (one system call apart), broken as stale and succeeded
//! meanwhile, overwrites the slot its successor just filled. It is refused
//! its grant, but the successor's token is gone from the file, and a later
//! grant on a host whose clock is behind could repeat it. Before the slots
//! such a creator's late rename lost the token the same way, from anywhere
//! in a longer window; with clocks in step the clock floor covers it.
//!
//! After writing, the writer checks that the path still names the file it
//! wrote: one renamed over it meanwhile (by a lockman from before the
//! slots, or one that could not write this file in place) gets the token
//! written whole.
//!
//! **Why in place.** Until this layout the file was written aside and
//! renamed over the old one. On ext4 a rename over an existing file (like a
//! truncate-and-write) makes the kernel push the new file's data to the
//! disk first (`auto_da_alloc`): most of a 380–410 µs lease cycle on the
//! development machine, which fell to 140–190 µs without it. An in-place
//! write of an allocated block does not wait for the disk.
//!
//! **Durability.** The file is never flushed (`fsync`), and an in-place
//! write is not even pushed out early as the rename was: after a power loss
//! of the machine that holds the disk it may come back older. Tokens still
//! rise with clocks in step, because each new token is also at least the
//! clock in microseconds (see `try_create`), the argument made for the Redis
//! fence key. What rests on the file alone is the order of tokens issued by
//! hosts whose clocks disagree.
//!
//! **Other layouts.** A file holding one number (what lockman wrote before
//! this layout, or what an operator planted) is read as that number; it is
//! rewritten whole (aside, then renamed over) by the next grant, as is a
//! missing file. A lockman from before this layout reads the two-slot file
//! as unreadable and issues tokens from the clock, with a warning: upgrade
//! every host sharing a lease directory together.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::fsutil::{self, Access, FileId};

/// The most a sequence file may hold: anything longer is corrupt or planted
/// (the two-slot layout is 42 bytes; one number is at most 20 digits).
const MAX_LEN: usize = 64;

/// Digits in one slot: a `u64` has at most 20.
const DIGITS: usize = 20;

/// One slot: its digits and a newline.
const SLOT_LEN: usize = DIGITS + 1;

/// The two-slot layout's length.
const FILE_LEN: usize = 2 * SLOT_LEN;

/// What a sequence file holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Content {
    /// The two-slot layout, both slots whole.
    Slots([u64; 2]),
    /// Anything else that names a token: one number, or the slots that are
    /// still readable of a damaged two-slot file.
    Value(u64),
    /// Nothing (an empty file).
    Empty,
    /// No token can be read from it.
    Unreadable,
}

impl Content {
    fn parse(bytes: &[u8]) -> Content {
        if bytes.is_empty() {
            return Content::Empty;
        }
        if bytes.len() == FILE_LEN
            && let (Some(first), Some(second)) = (slot(&bytes[..SLOT_LEN]), slot(&bytes[SLOT_LEN..]))
        {
            return Content::Slots([first, second]);
        }
        if let Some(value) = std::str::from_utf8(bytes).ok().and_then(|s| s.trim().parse::<u64>().ok()) {
            return Content::Value(value);
        }
        // A damaged two-slot file: the whole slots still count.
        bytes.split_inclusive(|&b| b == b'\n').filter_map(slot).max().map_or(Content::Unreadable, Content::Value)
    }

    /// The last token handed out, as far as this content tells (0: none).
    fn last(self, path: &Path) -> u64 {
        match self {
            Content::Slots([first, second]) => first.max(second),
            Content::Value(value) => value,
            Content::Empty => 0,
            Content::Unreadable => {
                tracing::warn!(path = %path.display(), "unreadable token sequence file; tokens continue from the clock");
                0
            }
        }
    }
}

/// One whole slot — 20 digits and a newline — as a number.
fn slot(bytes: &[u8]) -> Option<u64> {
    let digits = bytes.strip_suffix(b"\n")?;
    if digits.len() != DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// The last token handed out for the resource, from its sequence file at
/// `path` (0 if there is none, or it holds no token). Read without following
/// a symlink or waiting on a named pipe, and at most [`MAX_LEN`] bytes:
/// anything else in its place is an error.
pub(super) fn read(path: &Path) -> io::Result<u64> {
    Ok(match fsutil::read_capped(path, MAX_LEN)? {
        Some((bytes, _)) => Content::parse(&bytes).last(path),
        None => 0,
    })
}

/// The sequence file as the lease holder sees it: read, to be written.
pub(super) struct Sequence {
    /// Kept open when the file is in the two-slot layout and writable by
    /// us, to update one slot in place; with the file's identity.
    slots: Option<(File, FileId)>,
    last: u64,
}

impl Sequence {
    /// Opens and reads the sequence file at `path` (missing: no token yet).
    pub(super) fn open(path: &Path) -> io::Result<Sequence> {
        let (file, meta) = match fsutil::open_no_follow_with_meta(path, Access::Update) {
            Ok(opened) => opened,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Sequence { slots: None, last: 0 }),
            // Not ours to write in place (another user's file in a shared
            // directory): it is replaced whole instead, as the directory allows.
            Err(e) if e.kind() == io::ErrorKind::PermissionDenied => {
                return Ok(Sequence { slots: None, last: read(path)? });
            }
            Err(e) => return Err(e),
        };
        if meta.len() > MAX_LEN as u64 {
            return Err(fsutil::longer_than(MAX_LEN));
        }
        let content = read_at_start(&file, meta.len())?;
        let last = content.last(path);
        let slots = matches!(content, Content::Slots(_)).then(|| (file, FileId::of(&meta)));
        Ok(Sequence { slots, last })
    }

    /// The last token handed out when the file was opened.
    pub(super) fn last(&self) -> u64 {
        self.last
    }

    /// Records `token` (not below [`Sequence::last`]) at `path`: in place in
    /// the smaller slot, or the whole file written aside and renamed over
    /// (with the configured `mode`) when it is not in the two-slot layout —
    /// or no longer the file we opened.
    pub(super) fn record(self, path: &Path, token: u64, mode: Option<u32>) -> io::Result<()> {
        if let Some((file, id)) = &self.slots {
            // Read again just before writing: a later holder may have filled
            // a slot since we opened, and its token must stay.
            if let Content::Slots([first, second]) = read_at_start(file, FILE_LEN as u64)? {
                if first.max(second) < token {
                    let smaller = if first <= second { 0 } else { 1 };
                    fsutil::write_at(file, format!("{token:0DIGITS$}\n").as_bytes(), (smaller * SLOT_LEN) as u64)?;
                }
                // A file renamed over ours meanwhile (by a lockman from before
                // the slots, or one that could not write ours in place) would
                // not have our token: then write it to the file now there.
                if FileId::at(path)? == Some(*id) {
                    return Ok(());
                }
            }
        }
        rewrite(path, token, mode)
    }
}

/// Writes `token` to the sequence file at `path` whole (aside, then renamed
/// over), unless the file there already holds a larger one.
fn rewrite(path: &Path, token: u64, mode: Option<u32>) -> io::Result<()> {
    let token = token.max(read(path)?);
    let line = format!("{token:0DIGITS$}\n");
    fsutil::replace_with(path, format!("{line}{line}").as_bytes(), mode)
}

/// What `file` holds from its start: reads until `len` bytes (its length
/// when last seen) are in, or the end; at most [`MAX_LEN`] bytes (one more
/// is an error).
fn read_at_start(file: &File, len: u64) -> io::Result<Content> {
    let mut buf = [0u8; MAX_LEN + 1];
    let expected = usize::try_from(len).unwrap_or(usize::MAX);
    let mut filled = 0;
    while filled < buf.len() {
        // A short read need not be the end (FUSE, some network file systems).
        match fsutil::read_at(file, &mut buf[filled..], filled as u64)? {
            0 => break,
            n => filled += n,
        }
        if filled >= expected {
            break;
        }
    }
    if filled > MAX_LEN {
        return Err(fsutil::longer_than(MAX_LEN));
    }
    Ok(Content::parse(&buf[..filled]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(first: u64, second: u64) -> Vec<u8> {
        format!("{first:020}\n{second:020}\n").into_bytes()
    }

    #[test]
    fn layouts_parse() {
        assert_eq!(Content::parse(&slots(5, 9)), Content::Slots([5, 9]));
        assert_eq!(Content::parse(&slots(u64::MAX, 1)), Content::Slots([u64::MAX, 1]));
        assert_eq!(Content::parse(b"1796404327884203"), Content::Value(1_796_404_327_884_203));
        assert_eq!(Content::parse(b" 42\n"), Content::Value(42));
        assert_eq!(Content::parse(b""), Content::Empty);
        assert_eq!(Content::parse(b"junk"), Content::Unreadable);
        // 20 digits beyond u64::MAX are no token.
        assert_eq!(Content::parse(b"99999999999999999999\n00000000000000000007\n"), Content::Value(7));
    }

    /// A slot torn by a racing write or a crash: the other slot still counts.
    #[test]
    fn a_damaged_slot_leaves_the_other() {
        let mut bytes = slots(1_796_404_327_884_203, 1_796_404_327_884_999);
        bytes[30] = b'x';
        assert_eq!(Content::parse(&bytes), Content::Value(1_796_404_327_884_203));
        bytes.truncate(SLOT_LEN + 5);
        assert_eq!(Content::parse(&bytes), Content::Value(1_796_404_327_884_203));
    }

    #[test]
    fn a_token_goes_to_the_smaller_slot() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("r.seq");
        // Missing: written whole.
        let sequence = Sequence::open(&path).expect("open");
        assert_eq!(sequence.last(), 0);
        sequence.record(&path, 100, None).expect("record");
        assert_eq!(std::fs::read(&path).expect("read"), slots(100, 100));
        for (token, expected) in [(200, slots(200, 100)), (300, slots(200, 300)), (400, slots(400, 300))] {
            let sequence = Sequence::open(&path).expect("open");
            assert_eq!(sequence.last(), token - 100);
            sequence.record(&path, token, None).expect("record");
            assert_eq!(std::fs::read(&path).expect("read"), expected, "after recording {token}");
            assert_eq!(read(&path).expect("read"), token);
        }
    }

    /// A holder that opened before a later holder recorded its token writes
    /// over the slot that is smaller *now*, not the one it first read.
    #[test]
    fn a_late_writer_keeps_the_later_token() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("r.seq");
        std::fs::write(&path, slots(100, 200)).expect("seed");
        let paused = Sequence::open(&path).expect("open");
        let later = Sequence::open(&path).expect("open");
        later.record(&path, 300, None).expect("record"); // slot 0: [300, 200]
        paused.record(&path, 250, None).expect("record"); // below 300: nothing written
        assert_eq!(std::fs::read(&path).expect("read"), slots(300, 200));
        let paused = Sequence::open(&path).expect("open");
        let later = Sequence::open(&path).expect("open");
        later.record(&path, 400, None).expect("record"); // slot 1: [300, 400]
        paused.record(&path, 450, None).expect("record"); // slot 0 (smaller now), not slot 1
        assert_eq!(std::fs::read(&path).expect("read"), slots(450, 400));
        assert_eq!(read(&path).expect("read"), 450);
    }

    /// A file renamed over the one a holder opened (by an older lockman)
    /// gets the holder's token too, and keeps a larger one of its own.
    #[test]
    fn a_file_renamed_over_ours_gets_the_token() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("r.seq");
        let aside = dir.path().join("aside");
        for (planted, expected) in [(150, 300), (500, 500)] {
            std::fs::write(&path, slots(100, 200)).expect("seed");
            let holder = Sequence::open(&path).expect("open");
            std::fs::write(&aside, planted.to_string()).expect("write aside");
            std::fs::rename(&aside, &path).expect("rename over");
            holder.record(&path, 300, None).expect("record");
            assert_eq!(read(&path).expect("read"), expected, "planted {planted}");
        }
    }

    /// The layout before slots (one number) is read, then rewritten whole.
    #[test]
    fn one_number_is_read_and_converted() {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("r.seq");
        std::fs::write(&path, "1796404327884203").expect("seed");
        let sequence = Sequence::open(&path).expect("open");
        assert_eq!(sequence.last(), 1_796_404_327_884_203);
        sequence.record(&path, 1_796_404_327_884_204, None).expect("record");
        assert_eq!(std::fs::read(&path).expect("read"), slots(1_796_404_327_884_204, 1_796_404_327_884_204));
    }
}
