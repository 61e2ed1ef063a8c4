//! The synchronization primitives of the lock table: parking_lot and std
//! normally, loom's under `--cfg lockman_loom` so the model checker can
//! explore every interleaving of grant, release, timeout and cancel.

#[cfg(not(lockman_loom))]
pub(crate) use std::sync::Arc;
#[cfg(not(lockman_loom))]
pub(crate) use std::sync::atomic::AtomicU64;

#[cfg(lockman_loom)]
pub(crate) use loom::sync::Arc;
#[cfg(lockman_loom)]
pub(crate) use loom::sync::atomic::AtomicU64;

/// A mutex with parking_lot's panic-free `lock()` on both implementations.
#[derive(Debug, Default)]
pub(crate) struct Mutex<T>(#[cfg(not(lockman_loom))] parking_lot::Mutex<T>, #[cfg(lockman_loom)] loom::sync::Mutex<T>);

#[cfg(not(lockman_loom))]
pub(crate) type MutexGuard<'a, T> = parking_lot::MutexGuard<'a, T>;
#[cfg(lockman_loom)]
pub(crate) type MutexGuard<'a, T> = loom::sync::MutexGuard<'a, T>;

impl<T> Mutex<T> {
    pub(crate) fn new(value: T) -> Self {
        #[cfg(not(lockman_loom))]
        return Mutex(parking_lot::Mutex::new(value));
        #[cfg(lockman_loom)]
        return Mutex(loom::sync::Mutex::new(value));
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
        #[cfg(not(lockman_loom))]
        return self.0.lock();
        // loom's mutex is only poisoned if a model thread panicked, and then
        // the model has already failed.
        #[cfg(lockman_loom)]
        return self.0.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    }
}
