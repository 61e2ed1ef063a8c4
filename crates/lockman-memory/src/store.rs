//! The maps behind the backend: locks and flags, private to one backend, or
//! shared by everyone in the process who names the same map.
//!
//! Named maps are found through a process-wide registry of weak references,
//! so `memory://` opened twice in one process is one map (the two exclude
//! each other, as SQLite's shared-cache memory databases are one database),
//! and a map nobody uses any more is dropped with its entry.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock, Weak};

use lockman_core::LossSignal;
use parking_lot::Mutex;

use crate::status::Flags;
use crate::table::LockTable;

/// One map of locks and flags.
#[derive(Debug)]
pub(crate) struct Store {
    pub(crate) table: LockTable<LossSignal>,
    pub(crate) flags: Mutex<Flags>,
    /// The registry name; `None` for a private map.
    name: Option<Box<str>>,
}

type Registry = Mutex<HashMap<Box<str>, Weak<Store>>>;

fn registry() -> &'static Registry {
    static REGISTRY: OnceLock<Registry> = OnceLock::new();
    REGISTRY.get_or_init(Registry::default)
}

impl Store {
    /// A map nobody else can reach.
    pub(crate) fn private() -> Arc<Store> {
        Arc::new(Store::empty(None))
    }

    fn empty(name: Option<Box<str>>) -> Store {
        Store { table: LockTable::default(), flags: Mutex::default(), name }
    }

    /// The process-wide map called `name`, created if nobody holds it.
    pub(crate) fn named(name: &str) -> Arc<Store> {
        let mut maps = registry().lock();
        if let Some(live) = maps.get(name).and_then(Weak::upgrade) {
            return live;
        }
        let store = Arc::new(Store::empty(Some(name.into())));
        maps.insert(name.into(), Arc::downgrade(&store));
        store
    }

    /// The registry name, `None` if private.
    pub(crate) fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        let Some(name) = &self.name else { return };
        let mut maps = registry().lock();
        // Someone may have created a new map of this name between our last
        // reference going and this drop: only remove a dead entry.
        if maps.get(name).is_some_and(|weak| weak.strong_count() == 0) {
            maps.remove(name);
        }
    }
}

/// How many named maps the registry holds (for tests of boundedness).
pub(crate) fn named_maps() -> usize {
    registry().lock().len()
}
