//! The files of one resource in lease mode, and the registry that names its
//! holders' files (see the scheme in [`super::LeaseFileBackend`]).

use std::collections::HashMap;
use std::io;
use std::path::{Path, PathBuf};

use lockman_core::LockMode;

use crate::{fsutil, naming};

/// The most holder files a registry may name: a planted or corrupt count
/// beyond it must not make every writer probe millions of paths.
pub(super) const MAX_REGISTERED: u32 = 65_536;

/// The most a registry file may hold (`permits 4294967295\n` fits easily).
const MAX_REGISTRY_LEN: usize = 64;

/// The paths of one resource's files, all named from one stem (the
/// resource's encoded name; see [`naming::encoded_file_name`]).
#[derive(Debug)]
pub(super) struct Family {
    dir: PathBuf,
    stem: String,
    /// `<stem>.lease`: the exclusive holder's lease file, and the gate every
    /// acquirer passes.
    pub(super) gate: PathBuf,
    /// `<stem>.holders`: the registry (what the resource is in use as, and
    /// how many holder files to look at).
    pub(super) registry: PathBuf,
}

impl Family {
    pub(super) fn new(dir: &Path, resource: &str) -> Family {
        Family::of_stem(dir, naming::encoded_file_name(resource, ""))
    }

    pub(super) fn of_stem(dir: &Path, stem: String) -> Family {
        Family {
            gate: dir.join(format!("{stem}.lease")),
            registry: dir.join(format!("{stem}.holders")),
            dir: dir.to_owned(),
            stem,
        }
    }

    /// Shared holder `index`'s lease file: `<stem>.reader-<index>.lease`.
    pub(super) fn reader(&self, index: u32) -> PathBuf {
        self.dir.join(format!("{}.reader-{index}.lease", self.stem))
    }

    /// Permit `index`'s lease file: `<stem>.slot-<index>.lease`.
    pub(super) fn slot(&self, index: u32) -> PathBuf {
        self.dir.join(format!("{}.slot-{index}.lease", self.stem))
    }

    /// The holder files the registry names, by exact name.
    pub(super) fn registered(&self, registered: &Registered) -> Vec<PathBuf> {
        match registered {
            Registered::Kind(Registry { kind: LockMode::Permits(n), .. }) => (0..*n).map(|i| self.slot(i)).collect(),
            Registered::Kind(Registry { count, .. }) => (0..*count).map(|i| self.reader(i)).collect(),
            Registered::Nothing | Registered::Unreadable => Vec::new(),
        }
    }

    /// The holder files a directory listing shows now. Never the only
    /// source: on a network share a listing may be stale (see
    /// [`super::LeaseFileBackend`], "Crash safety").
    pub(super) fn listed(&self) -> io::Result<Vec<PathBuf>> {
        Ok(scan(&self.dir)?
            .remove(&self.stem)
            .unwrap_or_default()
            .into_iter()
            .filter(|(_, member)| *member != Member::Gate)
            .map(|(path, _)| path)
            .collect())
    }
}

/// One file of a resource's family in lease mode, as a listing finds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Member {
    /// `<stem>.lease`
    Gate,
    /// `<stem>.reader-<i>.lease`
    Reader,
    /// `<stem>.slot-<i>.lease`
    Slot,
}

/// The stem and member `file_name` names, if it is exactly as [`Family`]
/// names them (so foreign files are never touched, and `slot-01` is not
/// taken for `slot-1`).
pub(super) fn parse(file_name: &str) -> Option<(&str, Member)> {
    let (stem, rest) = file_name.split_once('.')?;
    if !naming::is_encoded_file_name(stem, "") {
        return None;
    }
    if rest == "lease" {
        return Some((stem, Member::Gate));
    }
    let rest = rest.strip_suffix(".lease")?;
    let (member, index) = if let Some(index) = rest.strip_prefix("reader-") {
        (Member::Reader, index)
    } else {
        (Member::Slot, rest.strip_prefix("slot-")?)
    };
    let parsed: u32 = index.parse().ok()?;
    (parsed.to_string() == index).then_some((stem, member))
}

/// Every lease-mode file of every resource in `dir`, by stem.
pub(super) fn scan(dir: &Path) -> io::Result<HashMap<String, Vec<(PathBuf, Member)>>> {
    let mut families: HashMap<String, Vec<(PathBuf, Member)>> = HashMap::new();
    for entry in std::fs::read_dir(dir)?.filter_map(Result::ok) {
        let name = entry.file_name();
        let Some((stem, member)) = name.to_str().and_then(parse) else { continue };
        families.entry(stem.to_owned()).or_default().push((entry.path(), member));
    }
    Ok(families)
}

/// What a resource was last taken as with modes, and how many holder files
/// belong to it: `n` slots for a semaphore of `n`, or reader files
/// `0..count` (one past the highest index handed out; it never shrinks, so
/// a reader is never left out by a later, smaller count).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Registry {
    pub(super) kind: LockMode,
    pub(super) count: u32,
}

impl Registry {
    fn encode(self) -> String {
        match self.kind {
            LockMode::Permits(n) => format!("permits {n}\n"),
            LockMode::Shared | LockMode::Exclusive => format!("shared {}\n", self.count),
        }
    }

    fn decode(text: &str) -> Option<Registry> {
        let (kind, count) = text.trim().split_once(' ')?;
        let count: u32 = count.parse().ok().filter(|count| *count <= MAX_REGISTERED)?;
        match kind {
            "permits" if count > 0 => Some(Registry { kind: LockMode::Permits(count), count }),
            "shared" => Some(Registry { kind: LockMode::Shared, count }),
            _ => None,
        }
    }
}

/// A registry file as read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Registered {
    /// No registry: the resource was never taken shared or by permits here.
    Nothing,
    Kind(Registry),
    /// Corrupt or planted: writers fall back to a directory listing.
    Unreadable,
}

impl Registered {
    pub(super) fn kind(self) -> Option<Registry> {
        match self {
            Registered::Kind(registry) => Some(registry),
            Registered::Nothing | Registered::Unreadable => None,
        }
    }
}

/// Reads the registry at `path`, without following a symlink or waiting on
/// a named pipe, at most [`MAX_REGISTRY_LEN`] bytes.
pub(super) fn read_registry(path: &Path) -> io::Result<Registered> {
    let bytes = match fsutil::read_capped(path, MAX_REGISTRY_LEN) {
        Ok(Some((bytes, _))) => bytes,
        Ok(None) => return Ok(Registered::Nothing),
        Err(e) if e.kind() == io::ErrorKind::InvalidData => return Ok(Registered::Unreadable),
        Err(e) => return Err(e),
    };
    Ok(match std::str::from_utf8(&bytes).ok().and_then(Registry::decode) {
        Some(registry) => Registered::Kind(registry),
        None => {
            tracing::warn!(path = %path.display(), "unreadable lease registry; writers look for holders in the directory listing");
            Registered::Unreadable
        }
    })
}

/// Replaces the registry at `path` atomically.
pub(super) fn write_registry(path: &Path, registry: Registry, mode: Option<u32>) -> io::Result<()> {
    fsutil::replace_with(path, registry.encode().as_bytes(), mode)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn members_round_trip_and_nothing_else_parses() {
        let dir = Path::new("/d");
        let family = Family::new(dir, "inverter_read");
        let stem = naming::encoded_file_name("inverter_read", "");
        let name = |path: PathBuf| path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        assert_eq!(parse(&name(family.gate.clone())), Some((stem.as_str(), Member::Gate)));
        assert_eq!(parse(&name(family.reader(7))), Some((stem.as_str(), Member::Reader)));
        assert_eq!(parse(&name(family.slot(0))), Some((stem.as_str(), Member::Slot)));
        for foreign in [
            format!("{stem}.slot-01.lease"),
            format!("{stem}.reader-.lease"),
            format!("{stem}.reader-x.lease"),
            format!("{stem}.slot-1"),
            format!("{stem}.holders"),
            format!("{stem}.seq"),
            format!("{stem}.lease.x"),
            "yarn.lease".to_owned(),
        ] {
            assert_eq!(parse(&foreign), None, "{foreign}");
        }
    }

    #[test]
    fn registry_round_trips_and_refuses_implausible_counts() {
        for registry in
            [Registry { kind: LockMode::Shared, count: 3 }, Registry { kind: LockMode::Permits(5), count: 5 }]
        {
            assert_eq!(Registry::decode(&registry.encode()), Some(registry));
        }
        for bad in ["", "shared", "shared -1", "permits 0", "permits 99999999", "exclusive 1", "shared 1 2"] {
            assert_eq!(Registry::decode(bad), None, "{bad:?}");
        }
    }
}
