//! Who holds a resource. Its keys, oldest create revision first, are one
//! FIFO queue across every process; the holders are the longest prefix of
//! that queue in which each key's mode admits the ones before it
//! ([`LockMode::admits`]) — the rule each waiter applies to the keys before
//! its own, so a stream of readers never passes a waiting writer, and a
//! permit is taken by the oldest waiters first.

use etcd_client::KeyValue;
use std::time::SystemTime;

use lockman_core::{FencingToken, LockInfo, LockMode, LockState};

use crate::keys::{self, Record};

/// The mode `kv` was written with. An unreadable record counts as
/// exclusive: it holds back every key after it, the safe reading.
pub(crate) fn mode_of(kv: &KeyValue) -> LockMode {
    Record::from_bytes(kv.value()).map_or(LockMode::Exclusive, |record| record.mode)
}

/// How many keys at the head of a queue in these modes hold the resource.
/// A key whose mode disagrees in kind with the head's (a request about to
/// withdraw with a configuration error) ends the holders.
pub(crate) fn holder_count(modes: &[LockMode]) -> usize {
    match modes.first() {
        None => 0,
        Some(LockMode::Exclusive) => 1,
        Some(LockMode::Shared) => modes.iter().take_while(|mode| **mode == LockMode::Shared).count(),
        Some(&LockMode::Permits(n)) => {
            modes.iter().take(n as usize).take_while(|mode| **mode == LockMode::Permits(n)).count()
        }
    }
}

/// The info of `resource` held by the head of `queue` (keys oldest first):
/// `None` when no key is left.
pub(crate) fn holders_info(resource: &str, queue: &[KeyValue]) -> Option<LockInfo> {
    let modes: Vec<LockMode> = queue.iter().map(mode_of).collect();
    let holders = queue[..holder_count(&modes)].iter().map(|kv| info_of(resource, kv)).collect();
    LockInfo::of_holders(holders)
}

/// The state of `resource` by its queue (keys oldest first). A holder
/// whose lease has run out is left out: its process ends the hold at the
/// lease's end (telling its holder first, then deleting the key), so for a
/// moment — or, if that process is frozen, until its etcd lease lapses —
/// the key outlives the hold. Held only by such keys, the resource is
/// [`LockState::Stale`].
pub(crate) fn state_of(resource: &str, queue: &[KeyValue]) -> LockState {
    let modes: Vec<LockMode> = queue.iter().map(mode_of).collect();
    let now = SystemTime::now();
    let (live, expired): (Vec<LockInfo>, Vec<LockInfo>) = queue[..holder_count(&modes)]
        .iter()
        .map(|kv| info_of(resource, kv))
        .partition(|info| !info.lease_expired_at(now));
    match (LockInfo::of_holders(live), LockInfo::of_holders(expired)) {
        (Some(live), _) => LockState::Held(live),
        (None, Some(expired)) => LockState::Stale(expired),
        (None, None) => LockState::Available,
    }
}

/// The holder a grant key shows.
pub(crate) fn info_of(resource: &str, kv: &KeyValue) -> LockInfo {
    let token = FencingToken::new(u64::try_from(kv.create_revision()).unwrap_or(0));
    match Record::from_bytes(kv.value()) {
        Some(record) => record.info(resource, token),
        None => {
            tracing::warn!(resource, key = %String::from_utf8_lossy(kv.key()), "unreadable etcd lock record");
            keys::unreadable(resource, token)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use LockMode::{Exclusive as X, Permits as P, Shared as S};

    #[test]
    fn the_head_holds_by_its_mode() {
        assert_eq!(holder_count(&[]), 0);
        assert_eq!(holder_count(&[X, X, S]), 1);
        assert_eq!(holder_count(&[S, S, X, S]), 2, "a waiting writer holds back the readers after it");
        assert_eq!(holder_count(&[S, S, S]), 3);
        assert_eq!(holder_count(&[P(2), P(2), P(2)]), 2);
        assert_eq!(holder_count(&[P(3), P(3)]), 2);
        assert_eq!(holder_count(&[S, P(2)]), 1, "a key of another kind holds nothing");
        assert_eq!(holder_count(&[P(3), P(2), P(3)]), 1);
    }

    #[test]
    fn every_rule_matches_core_admits() {
        // The prefix rule above is LockMode::admits applied in queue order.
        let modes = [X, S, P(1), P(2), P(3)];
        for a in modes {
            for b in modes {
                for c in modes {
                    let queue = [a, b, c];
                    let same_kind = |m: LockMode| match (m, a) {
                        (P(x), P(y)) => x == y,
                        (P(_), _) | (_, P(_)) => false,
                        _ => true,
                    };
                    let mut expected = 0;
                    while expected < queue.len()
                        && same_kind(queue[expected])
                        && queue[expected].admits(queue[..expected].iter().copied())
                    {
                        expected += 1;
                    }
                    assert_eq!(holder_count(&queue), expected, "{queue:?}");
                }
            }
        }
    }
}
