//! [`Locks`]: a complete [`LockManager`] on top of any [`LockBackend`].
//!
//! Everything that is the same for every backend lives here, once: name
//! validation, reentrancy by holder id, the guard lifecycle, lease renewal
//! (the watchdog) and lease-expiry detection, lost-lock reporting, events,
//! metrics and tracing.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::Instant;
use tracing::Instrument;

mod held;
mod watch;

use held::{BoxedTask, Held, Keeping, LeaseState, deadline_of};

use crate::backend::{Acquired, Deadline, GrantRequest, LockBackend};
use crate::{
    AcquireOptions, Capabilities, EventSink, HolderId, LockError, LockEventKind, LockEvents, LockGuard, LockInfo,
    LockManager, LockMode, LockState, LossSignal, Wait, runtime,
};

/// A [`LockManager`] built from a backend's raw operations.
///
/// Backend crates expose it under their own name, e.g.
/// `lockman_memory::MemoryLockManager = Locks<MemoryBackend>`. Cloning is
/// cheap and clones share everything; [`with_defaults`](Self::with_defaults)
/// gives a handle on the same locks with other default options.
pub struct Locks<B: LockBackend> {
    shared: Arc<Shared<B>>,
    /// Options applied where a caller left them unset.
    defaults: Arc<AcquireOptions>,
}

struct Shared<B: LockBackend> {
    backend: B,
    name: &'static str,
    caps: Capabilities,
    events: EventSink,
    /// This manager's scope (`<process nonce>.<number>`): holder ids given
    /// by name are stored as `NAME@SCOPE`, so that only this manager re-enters
    /// with them — never another manager or process using the same name.
    scope: Arc<str>,
    /// Grants held by a named holder, so the same holder can re-enter.
    reentry: Mutex<HashMap<ReentryKey, Reentry<B>, foldhash::fast::RandomState>>,
}

type ReentryKey = (Arc<str>, HolderId);

enum Reentry<B: LockBackend> {
    /// The holder's first acquisition is in progress; same-holder callers
    /// wait for its outcome instead of queueing behind themselves (on a
    /// `Notify` the first of them makes: usually nobody waits).
    Pending(Option<Arc<Notify>>),
    Held(Arc<Held<B>>),
}

/// Whether an acquisition may wait.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mode {
    Acquire,
    Try,
}

/// Where an acquisition stands after its synchronous part ([`Locks::begin`]).
enum Begun<'a, B: LockBackend> {
    /// Decided without awaiting.
    Done(Result<Option<Arc<Held<B>>>, LockError>),
    /// The backend must wait for it (and the holder's pending re-entry
    /// slot, if it has one, is cleared when that ends).
    Wait(Asked, Option<PendingSlot<'a, B>>),
    /// The same holder's first acquisition is in flight: wait for its outcome.
    Reenter(Call),
}

/// A request on its way to the backend, and what core needs to finish it.
struct Asked {
    request: GrantRequest,
    reentrant: bool,
    /// The watchdog keeps the lease (a default lease on a renewing backend).
    auto_renew: bool,
    mode: Mode,
    started: Instant,
}

/// One `acquire` or `try_acquire` call on its way to the backend.
struct Call {
    resource: Arc<str>,
    holder: HolderId,
    /// Whether the holder id was given (so other acquisitions may re-enter).
    reentrant: bool,
    options: AcquireOptions,
    deadline: Deadline,
    mode: Mode,
    started: Instant,
}

impl<B: LockBackend> Locks<B> {
    /// A manager over `backend`.
    pub fn new(backend: B) -> Self {
        let name = backend.name();
        let caps = backend.capabilities();
        Locks {
            shared: Arc::new(Shared {
                events: EventSink::new(name),
                backend,
                name,
                caps,
                scope: crate::ids::new_manager_scope(),
                reentry: Mutex::new(HashMap::default()),
            }),
            defaults: Arc::new(AcquireOptions::new()),
        }
    }

    /// This manager (the same locks, holders and events) with `defaults`
    /// applied to every acquisition where the caller left an option unset:
    ///
    /// * the wait, unless the caller chose one (`timeout`, `no_wait`,
    ///   `wait_forever`, `wait`) — so `lock()`, `AcquireOptions::new()` and
    ///   library code holding an `Arc<dyn LockManager>` follow it;
    /// * the lease, as a *default* lease: renewed while the guard lives, like
    ///   the backend's own (backends without leases ignore it);
    /// * the purpose, as a prefix of the caller's (`"daemon: poll"`), or
    ///   alone when the caller gave none.
    ///
    /// The holder in `defaults` is ignored. `lockman::connect` installs the
    /// configured `LOCKMAN_DEFAULT_WAIT` and `LOCKMAN_LEASE` this way.
    ///
    /// ```
    /// use std::time::Duration;
    /// use lockman_core::{AcquireOptions, LockBackend, Locks};
    /// # fn managed<B: LockBackend>(locks: Locks<B>) -> Locks<B> {
    /// locks.with_defaults(AcquireOptions::new().timeout(Duration::from_millis(200)).purpose("inverter daemon"))
    /// # }
    /// ```
    pub fn with_defaults(mut self, defaults: AcquireOptions) -> Self {
        self.defaults = Arc::new(defaults);
        self
    }

    /// The default options set with [`with_defaults`](Self::with_defaults).
    pub fn defaults(&self) -> &AcquireOptions {
        &self.defaults
    }

    /// The backend underneath.
    pub fn backend(&self) -> &B {
        &self.shared.backend
    }

    /// The event sink, for backends and wrappers that report their own events.
    pub fn event_sink(&self) -> &EventSink {
        &self.shared.events
    }

    async fn acquire_with(
        &self,
        resource: &str,
        options: AcquireOptions,
        mode: Mode,
    ) -> Result<Option<LockGuard>, LockError> {
        let held = match self.begin(resource, options, mode) {
            Begun::Done(held) => held?,
            // Boxed: only acquisitions that wait pay for the larger future.
            Begun::Wait(asked, pending) => Box::pin(self.wait_for_grant(asked, pending)).await?,
            Begun::Reenter(call) => Box::pin(self.reenter_or_grant(call)).await?,
        };
        Ok(held.map(|held| {
            let token = held.token;
            let loss = held.loss().clone();
            LockGuard::new(held, token, loss)
        }))
    }

    /// [`acquire_with`](Self::acquire_with) inside `span`, which records
    /// how long it took and how it ended.
    async fn acquire_traced(
        &self,
        span: tracing::Span,
        resource: &str,
        options: AcquireOptions,
        mode: Mode,
    ) -> Result<Option<LockGuard>, LockError> {
        let started = Instant::now();
        let result = self.acquire_with(resource, options, mode).instrument(span.clone()).await;
        record_outcome(&span, started, &result);
        result
    }

    /// Everything an acquisition can do without awaiting: the checks, a
    /// re-entry, and the backend's answer if it can give one at once (an
    /// uncontended grant, a busy `try_acquire`).
    fn begin(&self, resource: &str, options: AcquireOptions, mode: Mode) -> Begun<'_, B> {
        let call = match self.call(resource, options, mode) {
            Ok(call) => call,
            Err(e) => return Begun::Done(Err(e)),
        };
        if !call.reentrant {
            let asked = self.ask(call, None);
            return match self.shared.backend.acquire_now(&asked.request) {
                Some(answer) => Begun::Done(answer.and_then(|answer| self.finish(asked, answer, true))),
                None => Begun::Wait(asked, None),
            };
        }
        let key: ReentryKey = (call.resource.clone(), call.holder.clone());
        let mut table = self.shared.reentry.lock();
        match table.get(&key) {
            Some(Reentry::Held(held)) if !held.is_lost() => {
                let reentered = reentry_mode(held.request.mode, call.options.mode, &call.resource, self.shared.name)
                    .map(|()| {
                        held.count.fetch_add(1, Ordering::AcqRel);
                        Some(held.clone())
                    });
                return Begun::Done(reentered);
            }
            Some(Reentry::Pending(_)) => return Begun::Reenter(call),
            _ => {}
        }
        // Asked with the reentry table locked, so a same-holder caller sees
        // the outcome, not a pending slot (the backend takes its own locks
        // inside this one, never the other way round).
        let asked = self.ask(call, None);
        match self.shared.backend.acquire_now(&asked.request) {
            Some(answer) => {
                let outcome = answer.and_then(|answer| self.finish(asked, answer, true));
                match &outcome {
                    Ok(Some(held)) => table.insert(key, Reentry::Held(held.clone())),
                    // A lost grant of this holder's may still be listed.
                    _ => table.remove(&key),
                };
                Begun::Done(outcome)
            }
            None => {
                table.insert(key.clone(), Reentry::Pending(None));
                drop(table);
                // We own the pending slot: it is cleared however we leave.
                Begun::Wait(asked, Some(PendingSlot { shared: &self.shared, key: Some(key) }))
            }
        }
    }

    /// Checks the name, mode and lease, and settles the holder and deadline.
    fn call(&self, resource: &str, options: AcquireOptions, mode: Mode) -> Result<Call, LockError> {
        crate::validate_name(resource)?;
        self.shared.backend.validate_name(resource)?;
        let options = options.with_defaults(&self.defaults);
        self.check_mode(resource, options.mode)?;
        if let Some(lease) = options.lease.or(self.defaults.lease) {
            check_lease(lease, resource, self.shared.name)?;
        }
        let started = Instant::now();
        let deadline = match (mode, options.wait) {
            (Mode::Try, _) | (_, Wait::NoWait) => Deadline::Now,
            // A timeout too long to represent is no timeout.
            (Mode::Acquire, Wait::Timeout(timeout)) => {
                started.checked_add(timeout).map_or(Deadline::Never, Deadline::At)
            }
            (Mode::Acquire, Wait::Forever) => Deadline::Never,
        };
        let resource: Arc<str> = Arc::from(resource);
        Ok(match options.holder.clone() {
            None => Call { resource, holder: HolderId::unique(), reentrant: false, options, deadline, mode, started },
            Some(holder) => {
                let holder = holder.scoped_to(&self.shared.scope);
                Call { resource, holder, reentrant: true, options, deadline, mode, started }
            }
        })
    }

    /// Waits for the backend's grant of a request it could not decide at once.
    async fn wait_for_grant(
        &self,
        asked: Asked,
        pending: Option<PendingSlot<'_, B>>,
    ) -> Result<Option<Arc<Held<B>>>, LockError> {
        let outcome = match self.shared.backend.acquire(&asked.request).await {
            Ok(answer) => self.finish(asked, answer, false),
            Err(e) => Err(e),
        };
        if let Some(pending) = pending {
            pending.resolve(outcome.as_ref().ok().and_then(Option::as_ref));
        }
        outcome
    }

    /// Re-enters a grant the holder already has once its first acquisition
    /// (in flight when we looked) is decided, or takes a new one.
    async fn reenter_or_grant(&self, call: Call) -> Result<Option<Arc<Held<B>>>, LockError> {
        let key: ReentryKey = (call.resource.clone(), call.holder.clone());
        loop {
            let notify = {
                let mut table = self.shared.reentry.lock();
                match table.get_mut(&key) {
                    Some(Reentry::Held(held)) if !held.is_lost() => {
                        reentry_mode(held.request.mode, call.options.mode, &call.resource, self.shared.name)?;
                        held.count.fetch_add(1, Ordering::AcqRel);
                        return Ok(Some(held.clone()));
                    }
                    Some(Reentry::Pending(notify)) => notify.get_or_insert_with(|| Arc::new(Notify::new())).clone(),
                    _ => {
                        table.insert(key.clone(), Reentry::Pending(None));
                        break;
                    }
                }
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if matches!(self.shared.reentry.lock().get(&key), Some(Reentry::Pending(Some(n))) if Arc::ptr_eq(n, &notify))
            {
                let timed_out = match call.deadline.instant() {
                    None => {
                        notified.await;
                        false
                    }
                    Some(at) => tokio::time::timeout_at(at, notified).await.is_err(),
                };
                if timed_out {
                    let holder = self.shared.backend.inspect(&call.resource).await.ok().and_then(|s| s.info().cloned());
                    return self.busy(&call.resource, call.mode, call.started, holder, None);
                }
            }
        }
        // We own the pending slot: make sure it is cleared however we leave.
        let pending = PendingSlot { shared: &self.shared, key: Some(key) };
        let asked = self.ask(call, Some(Instant::now()));
        let answer = match self.shared.backend.acquire_now(&asked.request) {
            Some(answer) => answer.map(|answer| (answer, true)),
            None => self.shared.backend.acquire(&asked.request).await.map(|answer| (answer, false)),
        };
        let outcome = answer.and_then(|(answer, at_once)| self.finish(asked, answer, at_once));
        pending.resolve(outcome.as_ref().ok().and_then(Option::as_ref));
        outcome
    }

    /// The backend's request for `call`, asked now: `at` if the call waited
    /// since it started (for a same-holder acquisition), else its start.
    fn ask(&self, call: Call, at: Option<Instant>) -> Asked {
        let Call { resource, holder, reentrant, options, deadline, mode, started } = call;
        let caps = &self.shared.caps;
        let auto_renew = options.lease.is_none() && caps.renewal;
        // The manager's default lease is a default like the backend's: renewed.
        let lease = if caps.leases { options.lease.or(self.defaults.lease).or(caps.default_lease) } else { None };
        let loss = LossSignal::new(resource.clone(), holder.clone(), self.shared.events.clone());
        let explicit_wait = mode == Mode::Try || options.wait_is_explicit();
        let purpose = options.purpose.map(Arc::from);
        let renewed = auto_renew && lease.is_some();
        let request = GrantRequest {
            resource,
            holder,
            mode: options.mode,
            purpose,
            lease,
            renewed,
            deadline,
            asked_at: at.unwrap_or(started),
            explicit_wait,
            loss,
        };
        Asked { request, reentrant, auto_renew: renewed, mode, started }
    }

    /// Turns the backend's answer into a grant (with its event, metrics and
    /// lease task) or the caller's busy answer. `at_once`: the backend
    /// answered without waiting, so the grant is dated from when it was
    /// asked (one clock read fewer).
    fn finish(
        &self,
        asked: Asked,
        answer: Acquired<B::Grant>,
        at_once: bool,
    ) -> Result<Option<Arc<Held<B>>>, LockError> {
        let Asked { request, reentrant, auto_renew, mode, started } = asked;
        let granted = match answer {
            Acquired::Granted(granted) => granted,
            Acquired::Busy { holder } => return self.busy(&request.resource, mode, started, holder, None),
            Acquired::Skipped { holder, reason } => {
                return self.busy(&request.resource, mode, started, holder, Some(reason));
            }
        };
        let now = if at_once { request.asked_at } else { Instant::now() };
        // Equal for a grant made at once (no clock arithmetic for it).
        let waited = if now == started { Duration::ZERO } else { now - started };
        request.loss.granted(granted.fencing_token, now.into_std());
        let lease = request.lease;
        let held = Arc::new(Held {
            shared: self.shared.clone(),
            grant: granted.grant,
            token: granted.fencing_token,
            acquired_at: granted.acquired_at.unwrap_or_else(SystemTime::now),
            acquired: now,
            lease: Mutex::new(LeaseState {
                length: lease,
                expires_at: granted.lease_expires_at,
                deadline: granted.lease_expires_at.map(deadline_of),
                last_heartbeat: None,
            }),
            auto_renew,
            watched: granted.lease_expires_at.is_some(),
            count: AtomicU32::new(1),
            reentrant,
            keeping: Keeping::default(),
            renew_gate: tokio::sync::Mutex::new(()),
            lease_changed: Notify::new(),
            concluded: AtomicBool::new(false),
            request,
        });
        self.shared.events.meters().acquired(waited, granted.contended);
        self.shared.events.emit(LockEventKind::Locked, &held.request.resource, |mut event| {
            event.waited = Some(waited);
            event.with_holder(held.request.holder.clone()).with_token(held.token)
        });
        if held.watched {
            let task = if held.auto_renew {
                Held::keep_alive(held.clone()).boxed()
            } else {
                Held::watch_lease_expiry(held.clone()).boxed()
            };
            // Where it keeps running while the caller blocks, unless the
            // lease runs on the caller's clock: a current-thread runtime
            // stuck in synchronous work inside the critical section would
            // let the lease run out under a holder still using it.
            if self.shared.backend.leases_follow_callers_clock() {
                runtime::spawn(task);
            } else {
                // Started when its work is due (most grants end first).
                let key = watch::defer(held.watch_from(), task);
                *held.keeping.deferred_watch.lock() = key;
            }
        }
        Ok(Some(held))
    }
    fn busy(
        &self,
        resource: &str,
        mode: Mode,
        started: Instant,
        holder: Option<LockInfo>,
        skipped: Option<String>,
    ) -> Result<Option<Arc<Held<B>>>, LockError> {
        if mode == Mode::Try {
            self.shared.events.meters().contended();
            return Ok(None);
        }
        let waited = started.elapsed();
        self.shared.events.meters().timed_out(waited);
        self.shared.events.emit(LockEventKind::TimedOut, resource, |mut event| {
            event.waited = Some(waited);
            match &holder {
                Some(info) => event.with_holder(info.holder.clone()).with_token(info.fencing_token),
                None => event,
            }
        });
        Err(LockError::Timeout {
            resource: resource.to_owned(),
            backend: self.shared.name.to_owned(),
            waited,
            holder: holder.map(Box::new),
            skipped,
        })
    }

    /// Refuses a mode the backend cannot hold, and a semaphore of no permits.
    fn check_mode(&self, resource: &str, mode: LockMode) -> Result<(), LockError> {
        let backend = self.shared.name;
        if !self.shared.caps.supports(mode) {
            let why = self.shared.backend.modes_unsupported_because().map(|why| format!(": {why}")).unwrap_or_default();
            return Err(LockError::Config(match mode {
                LockMode::Shared => format!(
                    "the {backend} backend cannot hold {resource:?} shared (its capabilities say shared_mode = \
                     false{why}); take it exclusively, or use a backend that has reader-writer locks"
                ),
                _ => format!(
                    "the {backend} backend cannot hold {resource:?} as a semaphore (its capabilities say permits = \
                     false{why}); use a backend that has semaphores"
                ),
            }));
        }
        if mode == LockMode::Permits(0) {
            return Err(LockError::Config(format!(
                "a semaphore of 0 permits on {resource:?} ({backend}) could never be taken; give at least 1"
            )));
        }
        Ok(())
    }

    /// Fills in what only this process knows (reentrant hold counts).
    fn enrich(&self, mut info: LockInfo) -> LockInfo {
        info.hold_count = self.hold_count(&info);
        for holder in &mut info.holders {
            holder.hold_count = self.hold_count(holder);
        }
        info
    }

    fn hold_count(&self, info: &LockInfo) -> u32 {
        let key: ReentryKey = (Arc::from(info.resource.as_str()), info.holder.clone());
        match self.shared.reentry.lock().get(&key) {
            Some(Reentry::Held(held)) if held.token == info.fencing_token => held.count.load(Ordering::Acquire),
            _ => info.hold_count,
        }
    }
}

/// Clears a holder's pending slot in the reentry table, also when the
/// acquisition is cancelled.
struct PendingSlot<'a, B: LockBackend> {
    shared: &'a Shared<B>,
    key: Option<ReentryKey>,
}

impl<B: LockBackend> PendingSlot<'_, B> {
    fn resolve(mut self, held: Option<&Arc<Held<B>>>) {
        if let Some(key) = self.key.take() {
            let previous = {
                let mut table = self.shared.reentry.lock();
                match held {
                    Some(held) => table.insert(key, Reentry::Held(held.clone())),
                    None => table.remove(&key),
                }
            };
            if let Some(Reentry::Pending(Some(notify))) = previous {
                notify.notify_waiters();
            }
        }
    }
}

impl<B: LockBackend> Drop for PendingSlot<'_, B> {
    fn drop(&mut self) {
        if let Some(key) = self.key.take() {
            let previous = self.shared.reentry.lock().remove(&key);
            if let Some(Reentry::Pending(Some(notify))) = previous {
                notify.notify_waiters();
            }
        }
    }
}

impl<B: LockBackend> Clone for Locks<B> {
    fn clone(&self) -> Self {
        Locks { shared: self.shared.clone(), defaults: self.defaults.clone() }
    }
}

impl<B: LockBackend + Default> Default for Locks<B> {
    fn default() -> Self {
        Locks::new(B::default())
    }
}

impl<B: LockBackend> fmt::Debug for Locks<B> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Locks").field("backend", &self.shared.backend).field("defaults", &self.defaults).finish()
    }
}

#[async_trait]
impl<B: LockBackend> LockManager for Locks<B> {
    fn name(&self) -> &str {
        self.shared.name
    }

    fn capabilities(&self) -> Capabilities {
        self.shared.caps.clone()
    }

    fn events(&self) -> LockEvents {
        self.shared.events.subscribe()
    }

    async fn acquire(&self, resource: &str, options: AcquireOptions) -> Result<LockGuard, LockError> {
        // As tokio's own locks do: a task taking free locks in a loop never
        // parks, so without this it would keep its worker from every other
        // task until it stopped (8 tasks on 2 workers: some got no turn).
        tokio::task::coop::consume_budget().await;
        let span = tracing::debug_span!(
            "lockman.acquire",
            resource,
            backend = self.shared.name,
            waited_ms = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        let result = if span.is_disabled() {
            self.acquire_with(resource, options, Mode::Acquire).await
        } else {
            // Boxed: only traced calls pay for the larger future.
            Box::pin(self.acquire_traced(span, resource, options, Mode::Acquire)).await
        };
        match result {
            Ok(Some(guard)) => Ok(guard),
            Ok(None) => unreachable!("acquire never returns Ok(None): only try_acquire does"),
            Err(e) => Err(e),
        }
    }

    async fn try_acquire(&self, resource: &str, options: AcquireOptions) -> Result<Option<LockGuard>, LockError> {
        let span = tracing::debug_span!(
            "lockman.try_acquire",
            resource,
            backend = self.shared.name,
            waited_ms = tracing::field::Empty,
            outcome = tracing::field::Empty,
        );
        if span.is_disabled() {
            return self.acquire_with(resource, options, Mode::Try).await;
        }
        Box::pin(self.acquire_traced(span, resource, options, Mode::Try)).await
    }

    async fn state(&self, resource: &str) -> Result<LockState, LockError> {
        crate::validate_name(resource)?;
        self.shared.backend.validate_name(resource)?;
        Ok(match self.shared.backend.inspect(resource).await? {
            LockState::Held(info) => LockState::Held(self.enrich(info)),
            LockState::Stale(info) => LockState::Stale(self.enrich(info)),
            LockState::Available => LockState::Available,
        })
    }

    async fn list(&self) -> Result<Vec<LockInfo>, LockError> {
        let listed = self.shared.backend.list().await?;
        Ok(listed.into_iter().map(|info| self.enrich(info)).collect())
    }

    async fn force_release(&self, resource: &str, reason: &str) -> Result<Option<LockInfo>, LockError> {
        crate::validate_name(resource)?;
        self.shared.backend.validate_name(resource)?;
        let broken = self.shared.backend.force_release(resource, reason).await?;
        if let Some(info) = &broken {
            tracing::warn!(resource, backend = self.shared.name, holder = %info.holder, reason, "lock force-released");
            let event = self
                .shared
                .events
                .event(LockEventKind::ForceReleased, resource)
                .with_holder(info.holder.clone())
                .with_token(info.fencing_token)
                .with_reason(reason);
            self.shared.events.send(event);
        }
        Ok(broken)
    }

    async fn cleanup_stale(&self) -> Result<Vec<LockInfo>, LockError> {
        let broken = self.shared.backend.cleanup_stale().await?;
        for info in &broken {
            tracing::info!(resource = %info.resource, backend = self.shared.name, holder = %info.holder, "stale lock broken");
            let event = self
                .shared
                .events
                .event(LockEventKind::StaleBroken, &info.resource)
                .with_holder(info.holder.clone())
                .with_token(info.fencing_token)
                .with_reason("stale: holder gone or lease expired");
            self.shared.events.send(event);
        }
        Ok(broken)
    }
}

fn record_outcome(span: &tracing::Span, started: Instant, result: &Result<Option<LockGuard>, LockError>) {
    span.record("waited_ms", started.elapsed().as_secs_f64() * 1000.0);
    span.record(
        "outcome",
        match result {
            Ok(Some(_)) => "acquired",
            Ok(None) => "busy",
            Err(LockError::Timeout { .. }) => "timed_out",
            Err(_) => "error",
        },
    );
}

/// Whether a holder holding a grant in `held` mode may re-enter it asking
/// for `asked`: the same mode, or shared inside exclusive (it excludes
/// everyone already). An upgrade from shared to exclusive is refused: two
/// shared holders upgrading at once would each wait for the other.
fn reentry_mode(held: LockMode, asked: LockMode, resource: &str, backend: &str) -> Result<(), LockError> {
    match (held, asked) {
        (LockMode::Exclusive, LockMode::Exclusive | LockMode::Shared) | (LockMode::Shared, LockMode::Shared) => Ok(()),
        (LockMode::Shared, LockMode::Exclusive) => Err(LockError::Config(format!(
            "this holder holds {resource:?} ({backend}) shared and asked for it exclusively: upgrading is refused, \
             because two shared holders upgrading at once would wait for each other forever; release the shared \
             hold first, or take it exclusively from the start"
        ))),
        (held, asked) if held == asked => Ok(()),
        (held, asked) => {
            asked.agrees_with(held, resource, backend)?;
            Err(LockError::Config(format!(
                "this holder holds {resource:?} ({backend}) as {held} and asked for {asked}; re-enter it the way it \
                 holds it"
            )))
        }
    }
}

/// Refuses a lease too long for the clocks to add (backends compute its end).
fn check_lease(lease: Duration, resource: &str, backend: &str) -> Result<(), LockError> {
    if Instant::now().checked_add(lease).is_none() || SystemTime::now().checked_add(lease).is_none() {
        return Err(LockError::Config(format!(
            "a lease of {lease:?} for {resource:?} on {backend} is too long to keep time for; leave the lease \
             unset for a lock kept alive while its guard lives"
        )));
    }
    Ok(())
}
