//! The lock table: which resource is held by whom, and who waits for it.
//!
//! Synchronous and small on purpose, so that the loom model at the bottom can
//! check every interleaving of grant, release, lease expiry, timeout and
//! cancellation. The async backend (`lib.rs`) only waits on its slots.
//!
//! A resource has one or more holdings: one for an exclusive grant, any
//! number of shared ones, at most n permits of a semaphore. Which request may
//! join the holdings is [`LockMode::admits`]; every holding and waiter of a
//! resource agrees on its kind ([`LockMode::agrees_with`]).
//!
//! Invariants:
//! * an entry exists only while its resource is held; it is removed as soon
//!   as the resource is free and nobody waits, so memory is bounded by live
//!   locks and waiters;
//! * waiters are served in arrival order across modes: a request joins the
//!   holdings at once only if nobody waits and its mode admits them; a
//!   change of holdings hands the resource straight to the longest prefix of
//!   the queue that the holdings admit (readers queued together get in
//!   together; a writer holds back the readers queued after it). The
//!   resource is never free while someone waits, so a releaser cannot barge
//!   back in ahead of a waiter;
//! * a slot is either in its entry's queue and `Waiting`, or out of it; a
//!   waiter that gives up takes its slot out under the table lock, and if the
//!   lock was handed to it meanwhile it gets the grant back (to use or release),
//!   so no grant is ever stranded;
//! * the first waiter in a queue watches the holdings' earliest lease:
//!   whenever a holding with a lease is added, a lease is set or shortened,
//!   or the first waiter leaves, the (new) first waiter is told to re-arm its
//!   timer, so an expired lease hands the lock on at the lease's end with no
//!   other activity — also when the waiter queued behind a holder with no
//!   lease.

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, SystemTime};

use lockman_core::{FencingToken, HolderId, LockError, LockInfo, LockMode};
use smallvec::{SmallVec, smallvec};

use crate::clock::{Clock, Instant, Wall};
use crate::sync::{Arc, AtomicU64, Mutex};

/// Text shared with core without copying.
type Text = std::sync::Arc<str>;

/// What an acquirer asks for. `tag` travels with the grant (the backend
/// stores the guard's loss signal there).
#[derive(Debug)]
pub(crate) struct Request<T> {
    pub(crate) holder: HolderId,
    pub(crate) mode: LockMode,
    pub(crate) purpose: Option<Text>,
    pub(crate) lease: Option<Duration>,
    pub(crate) tag: T,
}

/// A grant as the table records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Grant {
    pub(crate) token: u64,
    pub(crate) acquired_at: SystemTime,
    pub(crate) lease_expires_at: Option<SystemTime>,
}

#[derive(Debug)]
struct Holding<T> {
    token: u64,
    holder: HolderId,
    mode: LockMode,
    purpose: Option<Text>,
    /// On tokio's clock, like the lease: wall-clock times are derived when
    /// shown, so a paused test clock moves them too.
    acquired: Instant,
    lease: Option<Instant>,
    tag: T,
}

impl<T> Holding<T> {
    fn expired(&self, now: Instant) -> bool {
        self.lease.is_some_and(|expires| expires <= now)
    }

    fn info(&self, resource: &str, wall: &Wall) -> LockInfo {
        let mut info = LockInfo::local(resource, self.holder.clone(), FencingToken::new(self.token), crate::BACKEND);
        info.acquired_at = wall.of(self.acquired);
        info.purpose = self.purpose.as_deref().map(str::to_owned);
        info.lease_expires_at = self.lease.map(|at| wall.of(at));
        info.mode = self.mode;
        info
    }
}

#[derive(Debug)]
struct Entry<T> {
    /// Never empty while the entry is in the map. Inline: an exclusive
    /// grant (the common case) allocates nothing for it.
    holdings: SmallVec<[Holding<T>; 1]>,
    waiters: VecDeque<Arc<Slot<T>>>,
}

impl<T> Entry<T> {
    fn admits(&self, mode: LockMode) -> bool {
        mode.admits(self.holdings.iter().map(|holding| holding.mode))
    }

    /// The mode the resource is in use with (for agreement checks).
    fn mode(&self) -> Option<LockMode> {
        self.holdings.first().map(|holding| holding.mode)
    }

    fn earliest_lease(&self) -> Option<Instant> {
        self.holdings.iter().filter_map(|holding| holding.lease).min()
    }

    /// The resource as `state` shows it: its live holders, or, if every
    /// lease ran out, all of them, as stale.
    fn info(&self, resource: &str, wall: &Wall) -> (LockInfo, bool) {
        let now = wall.instant();
        let live: Vec<LockInfo> = self
            .holdings
            .iter()
            .filter(|holding| !holding.expired(now))
            .map(|holding| holding.info(resource, wall))
            .collect();
        let stale = live.is_empty();
        let shown =
            if stale { self.holdings.iter().map(|holding| holding.info(resource, wall)).collect() } else { live };
        let info = LockInfo::of_holders(shown).unwrap_or_else(|| unreachable!("an entry always has a holding"));
        (info, stale)
    }

    /// Removes the holdings whose lease ran out; their tags go to `after`.
    fn evict_expired(&mut self, now: Instant, after: &mut Aftermath<T>) {
        let mut kept = SmallVec::new();
        for holding in self.holdings.drain(..) {
            if holding.expired(now) {
                after.evicted.push(holding.tag);
            } else {
                kept.push(holding);
            }
        }
        self.holdings = kept;
    }
}

/// A shared handle on a [`Slot`].
pub(crate) type SlotRef<T> = Arc<Slot<T>>;

/// Where a queued acquirer waits for the lock to be handed to it.
#[derive(Debug)]
pub(crate) struct Slot<T> {
    state: Mutex<SlotState<T>>,
}

#[derive(Debug)]
enum SlotState<T> {
    Waiting {
        request: Request<T>,
        waker: Option<Waker>,
        /// The holders or their leases changed since the waiter last
        /// looked: its wake-up time is stale.
        rearm: bool,
    },
    Granted(Grant),
    /// The grant was collected, or the waiter gave up.
    Closed,
}

/// The result of an acquisition attempt.
#[derive(Debug)]
pub(crate) enum Attempt<T> {
    Granted(Grant),
    /// Queued: wait on the slot (and call [`LockTable::cancel`] when giving up).
    Queued(Arc<Slot<T>>),
    /// Held by someone else and the caller would not wait.
    Busy(LockInfo),
    /// The resource is in use with a mode that disagrees with the request's
    /// (another permit count, a semaphore against a lock); the error says so.
    Refused(LockError),
    /// Not granted at once, and the caller asked not to be queued
    /// ([`IfBusy::Decline`]); nothing was changed for it.
    WouldWait,
}

/// What [`LockTable::attempt_or`] does with a request it cannot grant at once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum IfBusy {
    /// Queue it: the caller waits on the slot.
    Queue,
    /// Report who holds the resource.
    Report,
    /// Nothing, cheaply: the caller will try again, ready to queue.
    Decline,
}

/// What a waiter's [`Granted`] future completes with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Wakeup {
    /// The lock was handed to this waiter.
    Granted(Grant),
    /// Still waiting, but the holders or their leases changed: look again
    /// at when the first lease ends.
    Rearm,
}

/// Work to do after the table lock is dropped: wake the new holders and the
/// waiter that must re-arm its timer, tell evicted holders they lost the lock.
#[must_use = "wake the new holders and report evicted ones"]
#[derive(Debug)]
pub(crate) struct Aftermath<T> {
    pub(crate) wake: Vec<Waker>,
    pub(crate) rearm: Option<Waker>,
    pub(crate) evicted: Vec<T>,
}

impl<T> Default for Aftermath<T> {
    fn default() -> Self {
        Aftermath { wake: Vec::new(), rearm: None, evicted: Vec::new() }
    }
}

impl<T> Aftermath<T> {
    /// Wakes the new holders and the waiter that must re-arm.
    pub(crate) fn wake(self) -> Vec<T> {
        for waker in self.wake.into_iter().chain(self.rearm) {
            waker.wake();
        }
        self.evicted
    }
}

/// The grant is no longer the live one.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct NotCurrent;

#[derive(Debug)]
pub(crate) struct LockTable<T> {
    entries: Mutex<HashMap<Text, Entry<T>, foldhash::fast::RandomState>>,
    /// One counter for all resources: strictly increasing per resource, and
    /// it survives the removal of idle entries.
    last_token: AtomicU64,
    /// Shows the tokio-clock times as wall-clock times.
    clock: Clock,
}

impl<T> Default for LockTable<T> {
    fn default() -> Self {
        LockTable { entries: Mutex::new(HashMap::default()), last_token: AtomicU64::new(0), clock: Clock::default() }
    }
}

impl<T: Clone> LockTable<T> {
    /// Grants `resource` if nobody waits and its holdings admit the request
    /// (holdings whose lease ran out are evicted first); otherwise queues the
    /// request (if `wait`) or reports the holders.
    #[cfg(test)]
    pub(crate) fn attempt(&self, resource: &Text, request: Request<T>, wait: bool) -> (Attempt<T>, Aftermath<T>) {
        self.attempt_or(resource, request, if wait { IfBusy::Queue } else { IfBusy::Report }, crate::clock::now())
    }

    /// [`attempt`](Self::attempt), choosing what happens when the request
    /// cannot be granted at once. A grant made at once is dated `asked_at`
    /// (when the caller began asking, a moment ago), saving a clock read.
    pub(crate) fn attempt_or(
        &self,
        resource: &Text,
        request: Request<T>,
        busy: IfBusy,
        asked_at: Instant,
    ) -> (Attempt<T>, Aftermath<T>) {
        let mut entries = self.entries.lock();
        let mut after = Aftermath::default();
        let entry = match entries.entry(resource.clone()) {
            std::collections::hash_map::Entry::Vacant(vacant) => {
                let (holding, grant) = self.holding(request, asked_at);
                vacant.insert(Entry { holdings: smallvec![holding], waiters: VecDeque::new() });
                return (Attempt::Granted(grant), after);
            }
            std::collections::hash_map::Entry::Occupied(occupied) => occupied.into_mut(),
        };
        let now = crate::clock::now();
        if entry.earliest_lease().is_some_and(|at| at <= now) {
            entry.evict_expired(now, &mut after);
            // Waiters came first: the freed room goes to the head of the queue.
            self.admit_waiters(entry, &mut after);
        }
        // Holders that are gone no longer say how the resource is used.
        if let Some(in_use) = entry.mode()
            && let Err(refused) = request.mode.agrees_with(in_use, resource, crate::BACKEND)
        {
            return (Attempt::Refused(refused), after);
        }
        if entry.waiters.is_empty() && entry.admits(request.mode) {
            let (holding, grant) = self.holding(request, asked_at);
            entry.holdings.push(holding);
            return (Attempt::Granted(grant), after);
        }
        match busy {
            IfBusy::Queue => {}
            IfBusy::Report => {
                let (info, _) = entry.info(resource, &self.clock.wall());
                return (Attempt::Busy(info), after);
            }
            IfBusy::Decline => return (Attempt::WouldWait, after),
        }
        let slot = Arc::new(Slot { state: Mutex::new(SlotState::Waiting { request, waker: None, rearm: false }) });
        entry.waiters.push_back(slot.clone());
        (Attempt::Queued(slot), after)
    }

    /// Releases a grant, handing the room it leaves to the waiters at the
    /// head of the queue.
    pub(crate) fn release(&self, resource: &Text, token: u64) -> (Result<(), NotCurrent>, Aftermath<T>) {
        let mut entries = self.entries.lock();
        let mut after = Aftermath::default();
        let Some(entry) = entries.get_mut(&**resource) else {
            return (Err(NotCurrent), after);
        };
        let Some(index) = entry.holdings.iter().position(|holding| holding.token == token) else {
            return (Err(NotCurrent), after);
        };
        entry.holdings.swap_remove(index);
        self.admit_waiters(entry, &mut after);
        if entry.holdings.is_empty() {
            // A second lookup, not an `entry` (which would clone the name).
            entries.remove(&**resource);
        }
        (Ok(()), after)
    }

    /// A waiter gives up. If the lock was handed to it meanwhile, the grant
    /// is returned and the caller must use or release it. If it was the
    /// first waiter, the next one takes over watching the holders' leases
    /// (and gets in, if the leaver was all that held it back).
    pub(crate) fn cancel(&self, resource: &str, slot: &Arc<Slot<T>>) -> (Option<Grant>, Aftermath<T>) {
        let mut entries = self.entries.lock();
        let mut after = Aftermath::default();
        if let Some(entry) = entries.get_mut(resource) {
            let was_first = entry.waiters.front().is_some_and(|first| Arc::ptr_eq(first, slot));
            entry.waiters.retain(|queued| !Arc::ptr_eq(queued, slot));
            if was_first {
                // A writer leaving the head may let the readers behind it in.
                self.admit_waiters(entry, &mut after);
                after.rearm = Self::rearm_first(entry);
            }
        }
        let mut state = slot.state.lock();
        let grant = match std::mem::replace(&mut *state, SlotState::Closed) {
            SlotState::Granted(grant) => Some(grant),
            SlotState::Waiting { .. } | SlotState::Closed => None,
        };
        (grant, after)
    }

    /// Sets a new lease on a live grant.
    pub(crate) fn renew(
        &self,
        resource: &str,
        token: u64,
        lease: Duration,
    ) -> (Result<SystemTime, NotCurrent>, Aftermath<T>) {
        let wall = self.clock.wall();
        let now = wall.instant();
        let mut entries = self.entries.lock();
        let mut after = Aftermath::default();
        let Some(entry) = entries.get_mut(resource) else {
            return (Err(NotCurrent), after);
        };
        let Some(holding) = entry.holdings.iter_mut().find(|holding| holding.token == token) else {
            return (Err(NotCurrent), after);
        };
        if holding.expired(now) {
            drop(entries);
            return (Err(NotCurrent), self.expire(resource));
        }
        let expires = now + lease;
        let shortened = holding.lease.is_none_or(|previous| expires < previous);
        holding.lease = Some(expires);
        // The first waiter sleeps until the old end (or forever, if there
        // was none): it must look again. A longer lease needs no wake-up.
        if shortened {
            after.rearm = Self::rearm_first(entry);
        }
        (Ok(wall.of(expires)), after)
    }

    /// Evicts the holders of `resource` whose lease ran out.
    pub(crate) fn expire(&self, resource: &str) -> Aftermath<T> {
        let now = crate::clock::now();
        let mut entries = self.entries.lock();
        let mut after = Aftermath::default();
        if let Some(entry) = entries.get_mut(resource)
            && entry.earliest_lease().is_some_and(|at| at <= now)
        {
            entry.evict_expired(now, &mut after);
            self.admit_waiters(entry, &mut after);
            if entry.holdings.is_empty() {
                entries.remove(resource);
            }
        }
        after
    }

    /// Evicts every holder of `resource` whatever its state.
    pub(crate) fn force_release(&self, resource: &str) -> (Option<LockInfo>, Aftermath<T>) {
        let mut entries = self.entries.lock();
        let mut after = Aftermath::default();
        let Some(entry) = entries.get_mut(resource) else {
            return (None, after);
        };
        let wall = self.clock.wall();
        let infos = entry.holdings.iter().map(|holding| holding.info(resource, &wall)).collect();
        after.evicted.extend(entry.holdings.drain(..).map(|holding| holding.tag));
        self.admit_waiters(entry, &mut after);
        if entry.holdings.is_empty() {
            entries.remove(resource);
        }
        (LockInfo::of_holders(infos), after)
    }

    /// Evicts every holder whose lease ran out.
    pub(crate) fn cleanup_stale(&self) -> (Vec<LockInfo>, Vec<Aftermath<T>>) {
        let wall = self.clock.wall();
        let now = wall.instant();
        let expired: Vec<(Text, Vec<LockInfo>)> = self
            .entries
            .lock()
            .iter()
            .filter(|(_, entry)| entry.earliest_lease().is_some_and(|at| at <= now))
            .map(|(resource, entry)| {
                let infos = entry
                    .holdings
                    .iter()
                    .filter(|holding| holding.expired(now))
                    .map(|holding| holding.info(resource, &wall))
                    .collect();
                (resource.clone(), infos)
            })
            .collect();
        let mut broken = Vec::new();
        let mut afters = Vec::new();
        for (resource, infos) in expired {
            let after = self.expire(&resource);
            if !after.evicted.is_empty() {
                broken.extend(infos);
                afters.push(after);
            }
        }
        (broken, afters)
    }

    /// The holders of `resource` and whether every lease ran out.
    pub(crate) fn inspect(&self, resource: &str) -> Option<(LockInfo, bool)> {
        let wall = self.clock.wall();
        let entries = self.entries.lock();
        entries.get(resource).map(|entry| entry.info(resource, &wall))
    }

    /// Every held resource, and whether every lease ran out.
    pub(crate) fn list(&self) -> Vec<(LockInfo, bool)> {
        let wall = self.clock.wall();
        let entries = self.entries.lock();
        entries.iter().map(|(resource, entry)| entry.info(resource, &wall)).collect()
    }

    /// When the first of the holders' leases runs out, if any has one.
    pub(crate) fn lease_expiry(&self, resource: &str) -> Option<Instant> {
        let entries = self.entries.lock();
        entries.get(resource).and_then(Entry::earliest_lease)
    }

    /// How many resources are held (entries in the map).
    pub(crate) fn len(&self) -> usize {
        self.entries.lock().len()
    }

    /// How many acquirers wait, over all resources.
    pub(crate) fn waiters(&self) -> usize {
        self.entries.lock().values().map(|entry| entry.waiters.len()).sum()
    }

    /// A grant of `request`, dated `at`.
    fn holding(&self, request: Request<T>, at: Instant) -> (Holding<T>, Grant) {
        let token = self.last_token.fetch_add(1, Ordering::Relaxed) + 1;
        let wall = self.clock.wall_at(at);
        let acquired = wall.instant();
        let lease = request.lease.map(|lease| acquired + lease);
        let grant = Grant { token, acquired_at: wall.of(acquired), lease_expires_at: lease.map(|at| wall.of(at)) };
        let holding = Holding {
            token,
            holder: request.holder,
            mode: request.mode,
            purpose: request.purpose,
            acquired,
            lease,
            tag: request.tag,
        };
        (holding, grant)
    }

    /// Grants the longest prefix of the queue that the holdings admit, one
    /// waiter at a time, and tells the next waiter to re-arm if a new
    /// holding has a lease. The wakers (of those that registered one yet) go
    /// into `after`.
    fn admit_waiters(&self, entry: &mut Entry<T>, after: &mut Aftermath<T>) {
        let mut leased = false;
        while let Some(slot) = entry.waiters.front() {
            let mut state = slot.state.lock();
            let admitted = match &*state {
                SlotState::Waiting { request, .. } => entry.admits(request.mode),
                // Not reachable (a waiter leaves the queue under the table
                // lock before closing its slot); skipped all the same.
                SlotState::Granted(_) | SlotState::Closed => true,
            };
            if !admitted {
                break;
            }
            if let SlotState::Waiting { request, waker, .. } = std::mem::replace(&mut *state, SlotState::Closed) {
                let (holding, grant) = self.holding(request, crate::clock::now());
                *state = SlotState::Granted(grant);
                leased |= holding.lease.is_some();
                entry.holdings.push(holding);
                after.wake.extend(waker);
            }
            drop(state);
            entry.waiters.pop_front();
        }
        // Only a lease can end a new hold by itself; behind lease-less
        // holders the next waiter's timer (its deadline, or the old lease's
        // end, where it looks again) is still right, so a contended handoff
        // wakes one task, not two.
        if leased {
            after.rearm = Self::rearm_first(entry);
        }
    }

    /// Tells the first waiter that the holders or their leases changed, so
    /// it computes its wake-up again. Returns its waker, to wake once the
    /// table lock is dropped.
    fn rearm_first(entry: &Entry<T>) -> Option<Waker> {
        let first = entry.waiters.front()?;
        let mut state = first.state.lock();
        match &mut *state {
            SlotState::Waiting { waker, rearm, .. } => {
                *rearm = true;
                waker.clone()
            }
            SlotState::Granted(_) | SlotState::Closed => None,
        }
    }
}

impl<T> Slot<T> {
    /// Completes when the lock is handed to this slot, or when the waiter
    /// must re-arm its timer for a new holder or lease.
    pub(crate) fn granted(&self) -> Granted<'_, T> {
        Granted { slot: self }
    }
}

/// Future returned by [`Slot::granted`].
#[derive(Debug)]
pub(crate) struct Granted<'a, T> {
    slot: &'a Slot<T>,
}

impl<T> Future for Granted<'_, T> {
    type Output = Wakeup;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Wakeup> {
        let mut state = self.slot.state.lock();
        match &mut *state {
            SlotState::Granted(grant) => {
                let grant = *grant;
                *state = SlotState::Closed;
                Poll::Ready(Wakeup::Granted(grant))
            }
            SlotState::Waiting { rearm, .. } if *rearm => {
                *rearm = false;
                Poll::Ready(Wakeup::Rearm)
            }
            SlotState::Waiting { waker, .. } => {
                match waker {
                    Some(known) if known.will_wake(cx.waker()) => {}
                    _ => *waker = Some(cx.waker().clone()),
                }
                Poll::Pending
            }
            // Only reachable if polled again after completing or cancelling.
            SlotState::Closed => Poll::Pending,
        }
    }
}

#[cfg(all(test, not(lockman_loom)))]
mod tests {
    use super::*;

    fn request(holder: &str) -> Request<()> {
        Request { holder: HolderId::new(holder), mode: LockMode::Exclusive, purpose: None, lease: None, tag: () }
    }

    #[test]
    fn release_hands_off_in_arrival_order() {
        let table = LockTable::default();
        let resource: Text = "r".into();
        let (Attempt::Granted(first), _) = table.attempt(&resource, request("a"), true) else {
            panic!("free resource not granted")
        };
        let (Attempt::Queued(b), _) = table.attempt(&resource, request("b"), true) else { panic!("not queued") };
        let (Attempt::Queued(c), _) = table.attempt(&resource, request("c"), true) else { panic!("not queued") };
        let (released, _) = table.release(&resource, first.token);
        assert_eq!(released, Ok(()));
        assert!(table.cancel(&resource, &c).0.is_none(), "c must still wait");
        let granted_b = table.cancel(&resource, &b).0.expect("b is first in line");
        assert!(granted_b.token > first.token);
        let (released, _) = table.release(&resource, granted_b.token);
        assert_eq!(released, Ok(()));
        assert_eq!(table.len(), 0);
    }

    fn in_mode(holder: &str, mode: LockMode) -> Request<()> {
        Request { mode, ..request(holder) }
    }

    fn granted(attempt: (Attempt<()>, Aftermath<()>)) -> Grant {
        match attempt.0 {
            Attempt::Granted(grant) => grant,
            other => panic!("expected a grant, got {other:?}"),
        }
    }

    fn queued(attempt: (Attempt<()>, Aftermath<()>)) -> SlotRef<()> {
        match attempt.0 {
            Attempt::Queued(slot) => slot,
            other => panic!("expected to queue, got {other:?}"),
        }
    }

    #[test]
    fn queued_readers_get_in_together_but_not_past_a_writer() {
        let table = LockTable::default();
        let resource: Text = "r".into();
        let writer = granted(table.attempt(&resource, request("w0"), true));
        let r1 = queued(table.attempt(&resource, in_mode("r1", LockMode::Shared), true));
        let r2 = queued(table.attempt(&resource, in_mode("r2", LockMode::Shared), true));
        let w1 = queued(table.attempt(&resource, request("w1"), true));
        let r3 = queued(table.attempt(&resource, in_mode("r3", LockMode::Shared), true));
        let (released, after) = table.release(&resource, writer.token);
        assert_eq!(released, Ok(()));
        assert!(after.evicted.is_empty());
        let g1 = table.cancel(&resource, &r1).0.expect("r1 was let in");
        let g2 = table.cancel(&resource, &r2).0.expect("r2 was let in with r1");
        assert!(table.cancel(&resource, &r3).0.is_none(), "r3 got in past the queued writer");
        let (info, _) = table.inspect(&resource).expect("held");
        assert_eq!(info.all_holders().count(), 2);
        assert_eq!(table.release(&resource, g1.token).0, Ok(()));
        assert_eq!(table.release(&resource, g2.token).0, Ok(()));
        let gw = table.cancel(&resource, &w1).0.expect("the writer got in once the readers left");
        assert_eq!(table.release(&resource, gw.token).0, Ok(()));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn writer_leaving_the_head_lets_readers_in() {
        let table = LockTable::default();
        let resource: Text = "r".into();
        let reader = granted(table.attempt(&resource, in_mode("r0", LockMode::Shared), true));
        let writer = queued(table.attempt(&resource, request("w"), true));
        let r1 = queued(table.attempt(&resource, in_mode("r1", LockMode::Shared), true));
        assert!(table.cancel(&resource, &writer).0.is_none());
        let g1 = table.cancel(&resource, &r1).0.expect("the reader behind the leaving writer got in");
        assert_eq!(table.release(&resource, reader.token).0, Ok(()));
        assert_eq!(table.release(&resource, g1.token).0, Ok(()));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn semaphore_admits_its_permits_and_refuses_another_count() {
        let table = LockTable::default();
        let resource: Text = "sem".into();
        let a = granted(table.attempt(&resource, in_mode("a", LockMode::Permits(2)), true));
        let b = granted(table.attempt(&resource, in_mode("b", LockMode::Permits(2)), true));
        assert!(matches!(table.attempt(&resource, in_mode("c", LockMode::Permits(2)), false).0, Attempt::Busy(_)));
        assert!(matches!(table.attempt(&resource, in_mode("d", LockMode::Permits(3)), true).0, Attempt::Refused(_)));
        assert!(matches!(table.attempt(&resource, request("e"), true).0, Attempt::Refused(_)));
        let c = queued(table.attempt(&resource, in_mode("c", LockMode::Permits(2)), true));
        assert_eq!(table.release(&resource, a.token).0, Ok(()));
        let gc = table.cancel(&resource, &c).0.expect("a freed permit went to the waiter");
        for token in [b.token, gc.token] {
            assert_eq!(table.release(&resource, token).0, Ok(()));
        }
        // Free again: any mode may use it now.
        let plain = granted(table.attempt(&resource, request("f"), true));
        assert_eq!(table.release(&resource, plain.token).0, Ok(()));
    }

    #[test]
    fn a_grant_made_at_once_is_dated_when_it_was_asked() {
        let table = LockTable::default();
        let resource: Text = "r".into();
        let Some(asked) = crate::clock::now().checked_sub(Duration::from_secs(5)) else { return };
        let request = Request { lease: Some(Duration::from_secs(60)), ..request("a") };
        let grant = granted(table.attempt_or(&resource, request, IfBusy::Report, asked));
        let ago = SystemTime::now().duration_since(grant.acquired_at).expect("acquired in the past");
        assert!(ago >= Duration::from_millis(4900) && ago < Duration::from_secs(6), "acquired {ago:?} ago, not 5 s");
        let lease = grant.lease_expires_at.expect("a lease").duration_since(grant.acquired_at);
        assert_eq!(lease.ok(), Some(Duration::from_secs(60)), "the lease is not dated from the same time");
    }

    #[test]
    fn declined_request_leaves_no_trace() {
        let table = LockTable::default();
        let resource: Text = "r".into();
        let first = granted(table.attempt(&resource, request("a"), true));
        let (attempt, _) = table.attempt_or(&resource, request("b"), IfBusy::Decline, crate::clock::now());
        assert!(matches!(attempt, Attempt::WouldWait));
        assert_eq!(table.waiters(), 0, "a declined request was queued");
        let next = queued(table.attempt(&resource, request("c"), true));
        assert_eq!(table.release(&resource, first.token).0, Ok(()));
        let handed = table.cancel(&resource, &next).0.expect("c, the only waiter, was handed the lock");
        assert_eq!(table.release(&resource, handed.token).0, Ok(()));
        // Free: a declining request is granted like any other.
        let free = granted(table.attempt_or(&resource, request("d"), IfBusy::Decline, crate::clock::now()));
        assert_eq!(table.release(&resource, free.token).0, Ok(()));
        assert_eq!(table.len(), 0);
    }

    #[test]
    fn stale_token_cannot_release() {
        let table = LockTable::default();
        let resource: Text = "r".into();
        let (Attempt::Granted(grant), _) = table.attempt(&resource, request("a"), false) else {
            panic!("free resource not granted")
        };
        let (forced, after) = table.force_release(&resource);
        assert!(forced.is_some());
        assert_eq!(after.evicted.len(), 1);
        assert_eq!(table.release(&resource, grant.token).0, Err(NotCurrent));
    }
}

/// Model checks of the handoff protocol: `RUSTFLAGS="--cfg lockman_loom"
/// cargo test -p lockman-memory --lib --release loom`.
#[cfg(all(test, lockman_loom))]
mod loom_model {
    use super::*;

    fn request(holder: &str) -> Request<()> {
        Request { holder: HolderId::new(holder), mode: LockMode::Exclusive, purpose: None, lease: None, tag: () }
    }

    /// Releases `token` and wakes whoever the lock was handed to (and the
    /// waiter told to re-arm).
    fn release_and_wake(table: &LockTable<()>, resource: &Text, token: u64) {
        let (released, after) = table.release(resource, token);
        assert_eq!(released, Ok(()));
        after.wake();
    }

    /// Gives up `slot` as a timed-out waiter does, waking whoever must
    /// re-arm; the grant, if the lock was handed over meanwhile.
    fn cancel_and_wake(table: &LockTable<()>, resource: &Text, slot: &Arc<Slot<()>>) -> Option<Grant> {
        let (grant, after) = table.cancel(resource, slot);
        after.wake();
        grant
    }

    /// Waits as the backend's waiter does: re-arming is not a grant.
    fn wait_for_grant(slot: &Slot<()>) -> Grant {
        loop {
            if let Wakeup::Granted(grant) = loom::future::block_on(slot.granted()) {
                return grant;
            }
        }
    }

    /// Waits for the next wake-up, which must be a request to re-arm.
    fn wait_for_rearm(slot: &Slot<()>) {
        let wakeup = loom::future::block_on(slot.granted());
        assert_eq!(wakeup, Wakeup::Rearm, "expected to be told to re-arm");
    }

    fn queued(table: &LockTable<()>, resource: &Text, holder: &str) -> Arc<Slot<()>> {
        match table.attempt(resource, request(holder), true).0 {
            Attempt::Queued(slot) => slot,
            other => panic!("expected to queue, got {other:?}"),
        }
    }

    /// Queues `holder` asking for a lease (its grant can then run out by itself).
    fn queued_with_lease(table: &LockTable<()>, resource: &Text, holder: &str) -> Arc<Slot<()>> {
        let request = Request { lease: Some(Duration::from_secs(60)), ..request(holder) };
        match table.attempt(resource, request, true).0 {
            Attempt::Queued(slot) => slot,
            other => panic!("expected to queue, got {other:?}"),
        }
    }

    /// A release racing a waiter's timeout: either the waiter gets the lock
    /// (and releases it) or it leaves, and the table ends empty.
    #[test]
    fn loom_release_races_timeout() {
        loom::model(|| {
            let table = Arc::new(LockTable::default());
            let resource: Text = "r".into();
            let Attempt::Granted(first) = table.attempt(&resource, request("a"), true).0 else {
                panic!("free resource not granted")
            };
            let slot = queued(&table, &resource, "b");

            let releaser = {
                let table = table.clone();
                let resource = resource.clone();
                loom::thread::spawn(move || {
                    release_and_wake(&table, &resource, first.token);
                })
            };
            // The waiter times out: take the slot back, releasing a grant
            // that arrived in the meantime.
            if let Some(grant) = cancel_and_wake(&table, &resource, &slot) {
                let (released, _) = table.release(&resource, grant.token);
                assert_eq!(released, Ok(()));
            }
            releaser.join().expect("releaser panicked");
            assert_eq!(table.len(), 0, "a grant was stranded");
        });
    }

    /// Two waiters, one gives up while the holder releases: the other must
    /// end up holding the lock, exactly once, and nothing is left behind.
    #[test]
    fn loom_handoff_skips_cancelled_waiter() {
        loom::model(|| {
            let table = Arc::new(LockTable::default());
            let resource: Text = "r".into();
            let Attempt::Granted(first) = table.attempt(&resource, request("a"), true).0 else {
                panic!("free resource not granted")
            };
            let quitter = queued(&table, &resource, "b");
            let stayer = queued(&table, &resource, "c");

            let releaser = {
                let table = table.clone();
                let resource = resource.clone();
                loom::thread::spawn(move || {
                    release_and_wake(&table, &resource, first.token);
                })
            };
            let quitter_thread = {
                let table = table.clone();
                let resource = resource.clone();
                loom::thread::spawn(move || {
                    if let Some(grant) = cancel_and_wake(&table, &resource, &quitter) {
                        release_and_wake(&table, &resource, grant.token);
                    }
                })
            };
            let grant = wait_for_grant(&stayer);
            releaser.join().expect("releaser panicked");
            quitter_thread.join().expect("quitter panicked");
            let (holder, _) = table.inspect(&resource).expect("the stayer holds the lock");
            assert_eq!(holder.holder.as_str(), "c");
            assert_eq!(holder.fencing_token.get(), grant.token);
            assert_eq!(table.release(&resource, grant.token).0, Ok(()));
            assert_eq!(table.len(), 0);
        });
    }

    /// A release hands the lock to the first waiter and, since the new holder
    /// has a lease the old one had not, tells the next one to re-arm: a
    /// waiter with no deadline that queued behind a lease-less holder must
    /// not sleep on (loom reports a deadlock if nobody wakes it).
    #[test]
    fn loom_handoff_rearms_next_waiter() {
        loom::model(|| {
            let table = Arc::new(LockTable::default());
            let resource: Text = "r".into();
            let Attempt::Granted(first) = table.attempt(&resource, request("a"), true).0 else {
                panic!("free resource not granted")
            };
            let next = queued_with_lease(&table, &resource, "b");
            let after_next = queued(&table, &resource, "c");

            let releaser = {
                let table = table.clone();
                let resource = resource.clone();
                loom::thread::spawn(move || {
                    release_and_wake(&table, &resource, first.token);
                })
            };
            wait_for_rearm(&after_next);
            releaser.join().expect("releaser panicked");
            let (holder, _) = table.inspect(&resource).expect("b holds the lock");
            assert_eq!(holder.holder.as_str(), "b");
            let granted = cancel_and_wake(&table, &resource, &next).expect("b was handed the lock");
            release_and_wake(&table, &resource, granted.token);
            let last = wait_for_grant(&after_next);
            assert_eq!(table.release(&resource, last.token).0, Ok(()));
            assert_eq!(table.len(), 0);
        });
    }

    /// The first waiter giving up (a timeout) passes the watch on the
    /// holder's lease to the next waiter, which is told to re-arm.
    #[test]
    fn loom_first_waiter_leaving_rearms_next() {
        loom::model(|| {
            let table = Arc::new(LockTable::default());
            let resource: Text = "r".into();
            let Attempt::Granted(first) = table.attempt(&resource, request("a"), true).0 else {
                panic!("free resource not granted")
            };
            let quitter = queued(&table, &resource, "b");
            let stayer = queued(&table, &resource, "c");

            let quitter_thread = {
                let table = table.clone();
                let resource = resource.clone();
                loom::thread::spawn(move || {
                    assert!(cancel_and_wake(&table, &resource, &quitter).is_none(), "b was granted a held lock");
                })
            };
            wait_for_rearm(&stayer);
            quitter_thread.join().expect("quitter panicked");
            release_and_wake(&table, &resource, first.token);
            let grant = wait_for_grant(&stayer);
            assert_eq!(table.release(&resource, grant.token).0, Ok(()));
            assert_eq!(table.len(), 0);
        });
    }

    /// A queued writer gives up while the last reader leaves: whichever comes
    /// first, the reader queued behind the writer ends up holding the
    /// resource, and nothing is stranded.
    #[test]
    fn loom_writer_leaving_races_reader_release() {
        loom::model(|| {
            let table = Arc::new(LockTable::default());
            let resource: Text = "r".into();
            let shared = |holder| Request { mode: LockMode::Shared, ..request(holder) };
            let Attempt::Granted(first) = table.attempt(&resource, shared("r0"), true).0 else {
                panic!("free resource not granted")
            };
            let writer = queued(&table, &resource, "w");
            let reader = match table.attempt(&resource, shared("r1"), true).0 {
                Attempt::Queued(slot) => slot,
                other => panic!("a reader got in past a queued writer: {other:?}"),
            };

            let quitter = {
                let table = table.clone();
                let resource = resource.clone();
                loom::thread::spawn(move || {
                    if let Some(grant) = cancel_and_wake(&table, &resource, &writer) {
                        release_and_wake(&table, &resource, grant.token);
                    }
                })
            };
            let releaser = {
                let table = table.clone();
                let resource = resource.clone();
                loom::thread::spawn(move || release_and_wake(&table, &resource, first.token))
            };
            let grant = wait_for_grant(&reader);
            quitter.join().expect("quitter panicked");
            releaser.join().expect("releaser panicked");
            assert_eq!(table.release(&resource, grant.token).0, Ok(()));
            assert_eq!(table.len(), 0);
        });
    }

    /// A holder that sets a lease (or shortens it) tells the first waiter to
    /// re-arm, racing the waiter's wait.
    #[test]
    fn loom_new_lease_rearms_first_waiter() {
        loom::model(|| {
            let table = Arc::new(LockTable::default());
            let resource: Text = "r".into();
            let Attempt::Granted(first) = table.attempt(&resource, request("a"), true).0 else {
                panic!("free resource not granted")
            };
            let waiter = queued(&table, &resource, "b");

            let renewer = {
                let table = table.clone();
                let resource = resource.clone();
                loom::thread::spawn(move || {
                    let (renewed, after) = table.renew(&resource, first.token, Duration::from_secs(60));
                    assert!(renewed.is_ok());
                    after.wake();
                })
            };
            wait_for_rearm(&waiter);
            renewer.join().expect("renewer panicked");
            release_and_wake(&table, &resource, first.token);
            let grant = wait_for_grant(&waiter);
            assert_eq!(table.release(&resource, grant.token).0, Ok(()));
            assert_eq!(table.len(), 0);
        });
    }
}
