//! Arrival order among one manager's waiters, for backends whose store does
//! not queue them (kernel locks wake waiters in no order; a Redis release
//! wakes every subscriber at once).
//!
//! Waiters of a resource take a [`Turn`] in a per-resource FIFO lane before
//! they contend for the store, so a releaser cannot barge ahead of waiters in
//! its own process. A lane exists only while someone has or waits for a turn,
//! so memory is bounded by live waiters, not by every name ever used.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;

use crate::backend::Deadline;

/// One manager's per-resource FIFO lanes.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() {
/// use std::sync::Arc;
/// use lockman_core::backend::{Deadline, LocalQueue};
///
/// let queue = LocalQueue::default();
/// let resource: Arc<str> = Arc::from("inverter_read");
/// let first = queue.enter(&resource, Deadline::Never).await;
/// assert!(first.is_ours());
/// // A second caller waits behind the first; with no time to wait it gets no turn.
/// assert!(!queue.enter(&resource, Deadline::Now).await.is_ours());
/// drop(first); // the next in line goes now
/// assert!(queue.enter(&resource, Deadline::Now).await.is_ours());
/// # }
/// ```
#[derive(Debug, Default)]
pub struct LocalQueue {
    lanes: Lanes,
}

/// One FIFO lane (a fair async mutex) per resource in use, with a count of
/// its users (the turn's owner and the waiters) so the last one out removes it.
type Lanes = Arc<Mutex<HashMap<Arc<str>, Lane>>>;

#[derive(Debug)]
struct Lane {
    mutex: Arc<tokio::sync::Mutex<()>>,
    users: usize,
}

/// A place in a [`LocalQueue`] lane, and the lane's lock once it is our turn.
/// Dropping it (also mid-wait, when an acquisition is cancelled) leaves the
/// lane and lets the next in line go.
#[derive(Debug)]
pub struct Turn {
    guard: Option<tokio::sync::OwnedMutexGuard<()>>,
    waited: bool,
    resource: Arc<str>,
    lanes: Lanes,
}

impl LocalQueue {
    /// Waits (until `deadline`) for our turn at `resource`. Check
    /// [`Turn::is_ours`]: a turn that did not come in time is not ours.
    pub async fn enter(&self, resource: &Arc<str>, deadline: Deadline) -> Turn {
        let mutex = {
            let mut lanes = self.lanes.lock();
            let lane = lanes.entry(resource.clone()).or_insert_with(|| Lane { mutex: Arc::default(), users: 0 });
            lane.users += 1;
            lane.mutex.clone()
        };
        let mut turn = Turn {
            guard: mutex.clone().try_lock_owned().ok(),
            waited: false,
            resource: resource.clone(),
            lanes: self.lanes.clone(),
        };
        if turn.guard.is_none() && deadline != Deadline::Now {
            turn.waited = true;
            turn.guard = match deadline.instant() {
                Some(at) => tokio::time::timeout_at(at, mutex.lock_owned()).await.ok(),
                None => Some(mutex.lock_owned().await),
            };
        }
        turn
    }

    /// How many resources have a lane now (someone has or waits for a turn).
    pub fn lanes_in_use(&self) -> usize {
        self.lanes.lock().len()
    }
}

impl Turn {
    /// Whether the turn came before the deadline.
    pub fn is_ours(&self) -> bool {
        self.guard.is_some()
    }

    /// Whether another caller of this manager was ahead of us.
    pub fn waited(&self) -> bool {
        self.waited
    }
}

impl Drop for Turn {
    fn drop(&mut self) {
        drop(self.guard.take());
        let mut lanes = self.lanes.lock();
        if let Some(lane) = lanes.get_mut(&self.resource) {
            lane.users -= 1;
            if lane.users == 0 {
                lanes.remove(&self.resource);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn lanes_exist_only_while_used() {
        let queue = LocalQueue::default();
        let resource: Arc<str> = Arc::from("r");
        let first = queue.enter(&resource, Deadline::Now).await;
        assert!(first.is_ours());
        let second = queue.enter(&resource, Deadline::Now).await;
        assert!(!second.is_ours(), "two turns at once");
        drop(second);
        assert_eq!(queue.lanes_in_use(), 1);
        drop(first);
        assert_eq!(queue.lanes_in_use(), 0, "an unused lane was kept");
        assert!(queue.enter(&resource, Deadline::Now).await.is_ours());
        assert_eq!(queue.lanes_in_use(), 0);
    }

    #[tokio::test]
    async fn cancelled_waiters_leave_no_lane_behind() {
        let queue = LocalQueue::default();
        let resource: Arc<str> = Arc::from("r");
        let held = queue.enter(&resource, Deadline::Now).await;
        let mut waiting = Box::pin(queue.enter(&resource, Deadline::Never));
        let polled = std::future::poll_fn(|cx| std::task::Poll::Ready(waiting.as_mut().poll(cx).is_ready())).await;
        assert!(!polled, "got a held turn");
        drop(waiting); // cancelled mid-wait
        drop(held);
        assert_eq!(queue.lanes_in_use(), 0, "a cancelled waiter leaked its lane");
    }

    #[tokio::test]
    async fn turns_come_in_arrival_order() {
        let queue = Arc::new(LocalQueue::default());
        let resource: Arc<str> = Arc::from("r");
        let first = queue.enter(&resource, Deadline::Now).await;
        let (order_tx, mut order_rx) = tokio::sync::mpsc::unbounded_channel();
        let mut waiters = Vec::new();
        for i in 0..4 {
            let (mine, name, order_tx) = (queue.clone(), resource.clone(), order_tx.clone());
            waiters.push(tokio::spawn(async move {
                let turn = mine.enter(&name, Deadline::Never).await;
                order_tx.send(i).expect("send");
                drop(turn);
            }));
            // Let this waiter queue before the next one arrives.
            while queue.lanes.lock().get(&resource).map_or(0, |lane| lane.users) < i + 2 {
                tokio::task::yield_now().await;
            }
        }
        drop(first);
        for waiter in waiters {
            waiter.await.expect("waiter");
        }
        let order: Vec<_> = std::iter::from_fn(|| order_rx.try_recv().ok()).collect();
        assert_eq!(order, vec![0, 1, 2, 3]);
    }
}
