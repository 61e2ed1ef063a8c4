//! Reading a lock hash (`HGETALL` fields, the PTTL and the server's time)
//! into [`LockInfo`] and [`LockState`], in either layout (see `scripts`), and
//! the wire names of modes.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lockman_core::{FencingToken, HolderId, LockInfo, LockMode, LockState};

use crate::BACKEND;

pub(crate) fn unix_micros(at: SystemTime) -> u64 {
    at.duration_since(UNIX_EPOCH).map_or(0, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
}

pub(crate) fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A mode as the scripts write it: `x`, `s`, `p<n>`.
pub(crate) fn mode_arg(mode: LockMode) -> String {
    match mode {
        LockMode::Exclusive => "x".to_owned(),
        LockMode::Shared => "s".to_owned(),
        LockMode::Permits(n) => format!("p{n}"),
    }
}

/// The mode a script wrote, if it is one.
pub(crate) fn parse_mode(text: &str) -> Option<LockMode> {
    match text {
        "x" => Some(LockMode::Exclusive),
        "s" => Some(LockMode::Shared),
        _ => text.strip_prefix('p')?.parse().ok().filter(|n| *n > 0).map(LockMode::Permits),
    }
}

/// The state from `HGETALL` fields followed by the PTTL and the server's
/// time in ms.
pub(crate) fn state_of(resource: &str, fields: &[String]) -> LockState {
    match info_of(resource, fields) {
        Some(info) => LockState::Held(info),
        None => LockState::Available,
    }
}

/// Who holds the lock, from `HGETALL` fields followed by the PTTL and the
/// server's time in ms: the exclusive holder, or every live shared or
/// permit holder combined with [`LockInfo::of_holders`].
pub(crate) fn info_of(resource: &str, fields: &[String]) -> Option<LockInfo> {
    let split = fields.len().checked_sub(2)?;
    let (fields, tail) = fields.split_at(split);
    let pttl = tail[0].parse().ok();
    let now_ms = tail[1].parse().ok();
    if fields.chunks(2).any(|pair| pair[0] == "holder") {
        return parse_info(resource, fields, pttl);
    }
    parse_holders(resource, fields, now_ms?)
}

/// The holders of a lock in the shared or permits layout, with a grant
/// whose own expiry (server ms) has passed left out.
fn parse_holders(resource: &str, fields: &[String], now_ms: u64) -> Option<LockInfo> {
    let get = |name: &str| fields.chunks(2).find(|pair| pair[0] == name).and_then(|pair| pair.get(1));
    let Some(mode) = get("mode").and_then(|m| parse_mode(m)) else {
        if !fields.is_empty() {
            tracing::warn!(resource, "ignoring a Redis lock hash with neither a holder nor a readable mode");
        }
        return None;
    };
    let now = SystemTime::now();
    let mut holders = Vec::new();
    for pair in fields.chunks(2) {
        let (Some(hold), Some(record)) = (pair[0].strip_prefix("g:"), pair.get(1)) else { continue };
        let mut parts = record.splitn(3, ' ');
        let (Some(expiry), Some(token), Some(holder)) = (parts.next(), parts.next(), parts.next()) else {
            tracing::warn!(resource, hold, "ignoring an unreadable grant record in a Redis lock hash");
            continue;
        };
        let (Ok(expiry), Ok(token)) = (expiry.parse::<u64>(), token.parse::<u64>()) else {
            tracing::warn!(resource, hold, "ignoring a grant record with an unreadable expiry or token");
            continue;
        };
        let Some(left) = expiry.checked_sub(now_ms).filter(|left| *left > 0) else { continue };
        let field = |kind: &str| get(&format!("{kind}:{hold}")).filter(|v| !v.is_empty()).cloned();
        let mut info = LockInfo::local(resource, HolderId::shared(holder), FencingToken::new(token), BACKEND);
        info.mode = mode;
        info.hostname = field("o").unwrap_or_default();
        info.pid = field("p").and_then(|p| p.parse().ok()).unwrap_or(0);
        info.user = field("u");
        info.purpose = field("r");
        if let Some(at) =
            field("a").and_then(|a| a.parse::<u64>().ok()).and_then(lockman_core::display::from_unix_micros)
        {
            info.acquired_at = at;
        }
        info.lease_expires_at = now.checked_add(Duration::from_millis(left));
        holders.push(info);
    }
    LockInfo::of_holders(holders)
}

/// A `LockInfo` from an exclusive lock hash's field/value pairs.
pub(crate) fn parse_info(resource: &str, fields: &[String], pttl: Option<i64>) -> Option<LockInfo> {
    let get = |name: &str| fields.chunks(2).find(|pair| pair[0] == name).and_then(|pair| pair.get(1));
    let holder = get("holder")?;
    let token = get("token").and_then(|t| t.parse().ok()).unwrap_or(0);
    let mut info = LockInfo::local(resource, HolderId::shared(holder.as_str()), FencingToken::new(token), BACKEND);
    info.hostname = get("host").cloned().unwrap_or_default();
    info.pid = get("pid").and_then(|p| p.parse().ok()).unwrap_or(0);
    info.user = get("user").filter(|u| !u.is_empty()).cloned();
    info.purpose = get("purpose").filter(|p| !p.is_empty()).cloned();
    // Any client of the server can write these fields: a time that does not
    // parse or that this platform cannot represent counts as absent (the
    // record's own times are only shown, never used to judge the lock: its
    // PTTL does that), and one out of any calendar is shown flagged.
    match get("acquired_us").map(|a| a.parse::<u64>().ok().and_then(lockman_core::display::from_unix_micros)) {
        Some(Some(at)) => info.acquired_at = at,
        Some(None) => tracing::warn!(resource, "ignoring an unreadable acquired_us in a Redis lock hash"),
        None => {}
    }
    info.hold_count = get("count").and_then(|c| c.parse().ok()).unwrap_or(1);
    if let Some(ms) = pttl.and_then(|p| u64::try_from(p).ok()) {
        info.lease_expires_at = SystemTime::now().checked_add(Duration::from_millis(ms));
    }
    Some(info)
}

#[cfg(test)]
mod planted_hash_tests {
    use super::*;

    fn fields(pairs: &[(&str, &str)]) -> Vec<String> {
        pairs.iter().flat_map(|(k, v)| [(*k).to_owned(), (*v).to_owned()]).collect()
    }

    #[test]
    fn absurd_times_in_a_lock_hash_are_absent_or_shown_flagged() {
        let huge = u64::MAX.to_string();
        for acquired in ["300000000000000000", huge.as_str(), "0", "-5", "3e17", "", "99999999999999999999999"] {
            let hash = fields(&[("holder", "h"), ("host", "x"), ("pid", "7"), ("acquired_us", acquired)]);
            let info = parse_info("job", &hash, Some(i64::MAX)).expect("a holder is there");
            // Formatting never fails (it panicked inside to_string() before).
            let shown = info.to_string();
            assert!(shown.starts_with("locked by h on x (pid 7) since "), "{acquired}: {shown}");
        }
        let hash = fields(&[("holder", "h"), ("acquired_us", "300000000000000000")]);
        let shown = parse_info("job", &hash, None).expect("a holder is there").to_string();
        assert!(shown.contains("far future (corrupt? 300000000000000000µs"), "{shown}");
    }
}

#[cfg(test)]
mod modes_layout_tests {
    use super::*;

    fn owned(values: &[&str]) -> Vec<String> {
        values.iter().map(|v| (*v).to_owned()).collect()
    }

    #[test]
    fn modes_round_trip_on_the_wire() {
        for mode in [LockMode::Exclusive, LockMode::Shared, LockMode::Permits(1), LockMode::Permits(40)] {
            assert_eq!(parse_mode(&mode_arg(mode)), Some(mode));
        }
        for bad in ["", "p", "p0", "p-1", "q3", "X"] {
            assert_eq!(parse_mode(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn every_live_grant_is_a_holder_and_expired_or_unreadable_ones_are_not() {
        // Fields, then PTTL and the server's time (ms).
        let fields = owned(&[
            "mode",
            "p3",
            "n",
            "4",
            "g:b",
            "2000 20 worker b",
            "o:b",
            "host-b",
            "p:b",
            "12",
            "r:b",
            "poll",
            "g:a",
            "1500 10 worker-a",
            "o:a",
            "host-a",
            "p:a",
            "11",
            "a:a",
            "1700000000000000",
            "g:old",
            "999 5 gone",
            "g:bad",
            "soon 7 x",
            "1000",
            "1000",
        ]);
        let info = info_of("api", &fields).expect("held");
        assert_eq!(info.mode, LockMode::Permits(3));
        let holders: Vec<_> =
            info.all_holders().map(|h| (h.fencing_token.to_string(), h.holder.name().to_owned())).collect();
        assert_eq!(holders, [("10".to_owned(), "worker-a".to_owned()), ("20".to_owned(), "worker b".to_owned())]);
        assert_eq!(info.holders[1].hostname, "host-b");
        assert_eq!(info.holders[1].pid, 12);
        assert_eq!(info.holders[1].purpose.as_deref(), Some("poll"));
        assert!(info.holders.iter().all(|h| h.mode == LockMode::Permits(3) && h.lease_expires_at.is_some()));
        assert!(info.to_string().contains("2 of 3 permits"), "{info}");
    }

    #[test]
    fn a_modes_hash_with_only_expired_grants_is_free() {
        let fields = owned(&["mode", "s", "n", "1", "g:a", "900 10 reader", "50", "1000"]);
        assert!(info_of("r", &fields).is_none());
        assert!(matches!(state_of("r", &fields), LockState::Available));
        assert!(info_of("r", &owned(&["-2", "1000"])).is_none(), "an absent key is free");
        assert!(info_of("r", &[]).is_none());
    }

    #[test]
    fn an_exclusive_hash_is_one_holder() {
        let fields = owned(&["holder", "w", "token", "42", "count", "1", "5000", "1000"]);
        let info = info_of("r", &fields).expect("held");
        assert_eq!(
            (info.mode, info.holders.len(), info.fencing_token.to_string()),
            (LockMode::Exclusive, 0, "42".to_owned())
        );
    }
}
