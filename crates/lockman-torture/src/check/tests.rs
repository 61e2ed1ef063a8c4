//! The checker must fail on histories that break each rule — a checker that
//! cannot fail is worthless — and must accept the overlaps its rules excuse.

use super::*;
use crate::history::Kind;
use lockman::LockMode;

const BOUNDS: Bounds =
    Bounds { lost_bound_us: 100_000, slack_us: 5_000, liveness_bound_us: 2_000_000, lease_us: 1_000_000 };

/// A lockman worker's log: one section per `(grant, end, token)`, each with
/// a read and an accepted write.
fn worker(name: &str, sections: &[(u64, u64, u64)]) -> Vec<Event> {
    let mut events = vec![Event::Start { t: 0, w: name.to_owned(), pid: 1, kind: Kind::New }];
    for &(grant, end, token) in sections {
        events.push(Event::Acquire { t: grant.saturating_sub(1) });
        events.push(Event::Grant { t: grant, token: Some(token), lease_ms: Some(1000), age_us: Some(0), mode: None });
        events.push(Event::Read { t: grant + 1, ok: true, value: 0 });
        events.push(Event::WriteStart { t: end - 1 });
        events.push(Event::Write { t: end - 1, ok: true });
        events.push(Event::End { t: end });
        events.push(Event::Released { t: end + 1, ok: true, err: None });
    }
    events
}

fn judge(logs: Vec<Vec<Event>>, faults: Vec<Fault>, counter: u64) -> Report {
    check(&Histories::from_events(logs, faults, 10_000_000), counter, BOUNDS, true)
}

fn rules(report: &Report) -> Vec<&str> {
    report.violations.iter().map(|v| v.rule.as_str()).collect()
}

#[test]
fn a_clean_history_passes() {
    let report = judge(vec![worker("a", &[(10, 20, 1), (50, 60, 3)]), worker("b", &[(30, 40, 2)])], vec![], 3);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
    assert_eq!(report.sections, 3);
}

#[test]
fn an_overlap_is_a_violation() {
    let report = judge(vec![worker("a", &[(10, 40, 1)]), worker("b", &[(30, 50, 2)])], vec![], 2);
    assert_eq!(rules(&report), ["overlap"], "{report:#?}");
}

#[test]
fn a_repeated_or_lower_token_is_a_violation() {
    let report = judge(vec![worker("a", &[(10, 20, 5)]), worker("b", &[(30, 40, 5)])], vec![], 2);
    assert_eq!(rules(&report), ["token"], "{report:#?}");
    let report = judge(vec![worker("a", &[(10, 20, 5)]), worker("b", &[(30, 40, 4)])], vec![], 2);
    assert_eq!(rules(&report), ["token"], "{report:#?}");
}

#[test]
fn a_lost_update_is_a_violation() {
    let report = judge(vec![worker("a", &[(10, 20, 1)]), worker("b", &[(30, 40, 2)])], vec![], 1);
    assert_eq!(rules(&report), ["lost-update"], "{report:#?}");
}

/// Adds a loss report at `lost` to the worker's section that contains it.
fn with_loss(mut events: Vec<Event>, lost: u64) -> Vec<Event> {
    let end = events.iter().position(|e| matches!(e, Event::End { t } if *t > lost)).unwrap();
    events.insert(end, Event::Lost { t: lost, why: "its lease expired".into() });
    events
}

#[test]
fn an_overlap_after_a_loss_report_is_excused() {
    // a was told at 25 that it lost the lock; b was granted at 30.
    let a = with_loss(worker("a", &[(10, 40, 1)]), 25);
    let report = judge(vec![a, worker("b", &[(30, 50, 2)])], vec![], 2);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
    assert_eq!(report.excused.get("told lost before the next grant"), Some(&1));
    // Told after b's grant (beyond the slack): not excused.
    let a = with_loss(worker("a", &[(10, 40_000, 1)]), 30_000);
    let report = judge(vec![a, worker("b", &[(20_000, 50_000, 2)])], vec![], 2);
    assert!(rules(&report).contains(&"overlap"), "{report:#?}");
}

#[test]
fn a_section_that_goes_on_after_a_loss_report_is_a_violation() {
    let a = with_loss(worker("a", &[(10, 500_000, 1)]), 20);
    let report = judge(vec![a], vec![], 1);
    assert_eq!(rules(&report), ["reaction", "reaction"], "{report:#?}");
}

#[test]
fn an_overlap_across_a_redis_restart_is_excused() {
    let restart = Fault::Restart { t: 20, until: 25, data: "lost".into() };
    let report = judge(vec![worker("a", &[(10, 40, 1)]), worker("b", &[(30, 50, 2)])], vec![restart], 2);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
}

#[test]
fn a_frozen_holder_is_excused_only_once_its_lease_has_run_out() {
    // a (lease 1 s) is stopped at 100 ms until 2.5 s; b is granted at 1.2 s: excused.
    let stop = Fault::Stop { t: 100_000, until: 2_500_000, w: "a".into() };
    let logs = vec![worker("a", &[(10, 2_600_000, 1)]), worker("b", &[(1_200_000, 1_300_000, 2)])];
    let report = judge(logs, vec![stop.clone()], 2);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
    // a extended its lease to 3 s before the stop: b's grant at 1.2 s is too early.
    let mut a = worker("a", &[(10, 2_600_000, 1)]);
    a.insert(3, Event::Extend { t: 50, lease_ms: 3000, took_us: 10 });
    let report = judge(vec![a, worker("b", &[(1_200_000, 1_300_000, 2)])], vec![stop], 2);
    assert_eq!(rules(&report), ["overlap"], "{report:#?}");
}

#[test]
fn a_wait_while_the_lock_is_free_is_a_liveness_violation() {
    let waiter = vec![
        Event::Start { t: 0, w: "b".into(), pid: 2, kind: Kind::New },
        Event::Acquire { t: 100 },
        Event::Timeout { t: 5_000_100 },
    ];
    let report = judge(vec![worker("a", &[(10, 200_000, 1)]), waiter.clone()], vec![], 1);
    assert_eq!(rules(&report), ["liveness"], "{report:#?}");
    // Held all along: no violation.
    let report = judge(vec![worker("a", &[(10, 5_000_200, 1)]), waiter], vec![], 1);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
}

/// An old daemon's log: `(check, grant, end)` per section.
fn old_daemon(name: &str, sections: &[(u64, u64, u64)]) -> Vec<Event> {
    let mut events = vec![Event::Start { t: 0, w: name.to_owned(), pid: 3, kind: Kind::OldA }];
    for &(check, grant, end) in sections {
        events.push(Event::Acquire { t: check });
        events.push(Event::Check { t: check, exists: false });
        events.push(Event::Grant { t: grant, token: None, lease_ms: None, age_us: None, mode: None });
        events.push(Event::End { t: end });
        events.push(Event::Released { t: end + 1, ok: true, err: None });
    }
    events
}

#[test]
fn old_daemons_are_held_to_exclusion_only_where_their_protocol_allows() {
    // lockman held the file from 10; the old daemon checked at 20 and went in: violation.
    let report = judge(vec![worker("a", &[(10, 100, 1)]), old_daemon("old", &[(20, 21, 30)])], vec![], 1);
    assert_eq!(rules(&report), ["overlap"], "{report:#?}");
    // The old daemon checked at 5, before lockman created the file: its own race.
    let report = judge(vec![worker("a", &[(10, 100, 1)]), old_daemon("old", &[(5, 21, 30)])], vec![], 1);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
    // The old daemon held the file from 10; lockman went in at 20: violation.
    let report = judge(vec![old_daemon("old", &[(9, 10, 100)]), worker("a", &[(20, 30, 1)])], vec![], 1);
    assert_eq!(rules(&report), ["overlap"], "{report:#?}");
    // Two old daemons overlapping: the old code's own race, not a violation.
    let report = judge(vec![old_daemon("x", &[(9, 10, 100)]), old_daemon("y", &[(11, 12, 50)])], vec![], 0);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
}

#[test]
fn a_killed_workers_unknown_write_may_or_may_not_count() {
    let mut a = worker("a", &[(10, 20, 1)]);
    a.truncate(5); // died after WriteStart, before Write
    let kill = Fault::Kill { t: 19, w: "a".into() };
    for counter in [0, 1] {
        let report = judge(vec![a.clone()], vec![kill.clone()], counter);
        assert_eq!(rules(&report), Vec::<&str>::new(), "counter {counter}: {report:#?}");
    }
    let report = judge(vec![a], vec![kill], 2);
    assert_eq!(rules(&report), ["lost-update"], "{report:#?}");
}

#[test]
fn a_lease_reported_expired_before_its_extension_ends_is_a_violation() {
    // Extended to 3 s at 50 µs; told the lease expired at 1.3 s: shortened.
    let mut a = worker("a", &[(10, 1_400_000, 1)]);
    a.insert(3, Event::Extend { t: 50, lease_ms: 3000, took_us: 10 });
    let early = with_loss(a.clone(), 1_300_000);
    assert_eq!(rules(&judge(vec![early], vec![], 1)), ["early-loss", "reaction"]);
    // Told at 3.1 s, after the extension ended: not early (only late to react).
    let mut late = worker("a", &[(10, 3_150_000, 1)]);
    late.insert(3, Event::Extend { t: 50, lease_ms: 3000, took_us: 10 });
    late.retain(|e| !matches!(e, Event::WriteStart { .. } | Event::Write { .. }));
    let late = with_loss(late, 3_100_000);
    assert_eq!(rules(&judge(vec![late], vec![], 0)), Vec::<&str>::new());
}

#[test]
fn a_worker_frozen_right_after_its_grant_is_dated_from_the_grant() {
    // a's grant happened at 1.0 s (age 1.5 s when recorded at 2.5 s); it was
    // stopped from 1.002 s to 2.499 s, and b was granted at 2.2 s: excused as
    // frozen past its lease, not a later grant with a lower token.
    let mut a = worker("a", &[(2_500_000, 2_600_000, 1)]);
    if let Event::Grant { age_us, .. } = &mut a[2] {
        *age_us = Some(1_500_000);
    }
    a[1] = Event::Acquire { t: 900_000 };
    let stop = Fault::Stop { t: 1_002_000, until: 2_499_000, w: "a".into() };
    let report = judge(vec![a, worker("b", &[(2_200_000, 2_300_000, 2)])], vec![stop], 2);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
    assert_eq!(report.excused.get("frozen past its lease"), Some(&1));
}

#[test]
fn a_new_grant_that_began_before_an_old_daemons_create_is_its_race() {
    // The old daemon saw no file at 20 and truncated the path at 30; lockman's
    // grant began at 25 (it created the file between the two) and was
    // recorded at 40: both hold — the old protocol's check-then-create race.
    let mut new = worker("a", &[(40, 100, 1)]);
    if let Event::Grant { age_us, .. } = &mut new[2] {
        *age_us = Some(15);
    }
    new[1] = Event::Acquire { t: 5 };
    let report = judge(vec![old_daemon("old", &[(20, 30, 90)]), new.clone()], vec![], 1);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
    // Began after the old daemon's create (age 5: at 35): it ignored the file.
    if let Event::Grant { age_us, .. } = &mut new[2] {
        *age_us = Some(5);
    }
    let report = judge(vec![old_daemon("old", &[(20, 30, 90)]), new], vec![], 1);
    assert_eq!(rules(&report), ["overlap"], "{report:#?}");
}

/// A worker's log in a mode: one section per `(grant, end, token)`. Shared
/// sections read the counter at both ends (value 0), exclusive ones read
/// and write it, permit holders only hold.
fn worker_in(name: &str, mode: LockMode, sections: &[(u64, u64, u64)]) -> Vec<Event> {
    let mut events = vec![Event::Start { t: 0, w: name.to_owned(), pid: 1, kind: Kind::New }];
    for &(grant, end, token) in sections {
        events.push(Event::Acquire { t: grant.saturating_sub(1) });
        let logged = (mode != LockMode::Exclusive).then_some(mode);
        events.push(Event::Grant { t: grant, token: Some(token), lease_ms: Some(1000), age_us: Some(0), mode: logged });
        match mode {
            LockMode::Exclusive => {
                events.push(Event::Read { t: grant + 1, ok: true, value: 0 });
                events.push(Event::WriteStart { t: end - 1 });
                events.push(Event::Write { t: end - 1, ok: true });
            }
            LockMode::Shared => {
                events.push(Event::Read { t: grant + 1, ok: true, value: 0 });
                events.push(Event::Read { t: end - 1, ok: true, value: 0 });
            }
            LockMode::Permits(_) => {}
        }
        events.push(Event::End { t: end });
        events.push(Event::Released { t: end + 1, ok: true, err: None });
    }
    events
}

const SHARED: LockMode = LockMode::Shared;
const EXCLUSIVE: LockMode = LockMode::Exclusive;

#[test]
fn readers_may_hold_together() {
    let logs = vec![
        worker_in("a", SHARED, &[(10, 40, 1)]),
        worker_in("b", SHARED, &[(20, 50, 2)]),
        worker_in("c", SHARED, &[(30, 35, 3)]),
        worker_in("d", EXCLUSIVE, &[(60, 70, 4)]),
    ];
    let report = judge(logs, vec![], 1);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
    assert_eq!(report.most_together, 3);
    assert_eq!(report.modes.get("shared"), Some(&3));
}

#[test]
fn a_writer_beside_a_reader_is_a_violation_either_way_round() {
    // A writer granted while a reader holds.
    let report =
        judge(vec![worker_in("a", SHARED, &[(10, 40, 1)]), worker_in("b", EXCLUSIVE, &[(30, 50, 2)])], vec![], 1);
    assert_eq!(rules(&report), ["overlap"], "{report:#?}");
    // A reader granted while a writer holds.
    let report =
        judge(vec![worker_in("a", EXCLUSIVE, &[(10, 40, 1)]), worker_in("b", SHARED, &[(30, 50, 2)])], vec![], 1);
    assert_eq!(rules(&report), ["overlap"], "{report:#?}");
}

#[test]
fn a_reader_beside_a_writer_that_was_told_lost_is_excused() {
    let a = with_loss(worker_in("a", EXCLUSIVE, &[(10, 40, 1)]), 25);
    let report = judge(vec![a, worker_in("b", SHARED, &[(30, 50, 2)])], vec![], 1);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
    assert_eq!(report.excused.get("told lost before the next grant"), Some(&1));
}

#[test]
fn a_reader_that_sees_the_counter_change_is_a_torn_read() {
    let mut a = worker_in("a", SHARED, &[(10, 40, 1)]);
    if let Some(Event::Read { value, .. }) = a.iter_mut().rfind(|e| matches!(e, Event::Read { .. })) {
        *value = 1;
    }
    let report = judge(vec![a], vec![], 0);
    assert_eq!(rules(&report), ["torn-read"], "{report:#?}");
}

#[test]
fn up_to_n_permit_holders_may_hold_together_but_not_one_more() {
    let three = LockMode::Permits(3);
    let holders = |extra: Option<(u64, u64, u64)>| {
        let mut logs = vec![
            worker_in("a", three, &[(10, 100, 1)]),
            worker_in("b", three, &[(20, 100, 2)]),
            worker_in("c", three, &[(30, 100, 3)]),
            // Granted when a has ended: still three.
            worker_in("d", three, &[(110, 200, 5)]),
        ];
        logs.extend(extra.map(|section| worker_in("e", three, &[section])));
        logs
    };
    let report = judge(holders(None), vec![], 0);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
    assert_eq!(report.most_together, 3);
    // A fourth holder granted at 40 while a, b and c hold.
    let report = judge(holders(Some((40, 50, 4))), vec![], 0);
    assert_eq!(rules(&report), ["overlap"], "{report:#?}");
    assert!(report.violations[0].detail.starts_with("4 sections hold a semaphore of 3 permits"), "{report:#?}");
}

#[test]
fn a_permit_holder_told_lost_does_not_count_from_then_on() {
    let three = LockMode::Permits(3);
    let logs = |lost_at: u64| {
        vec![
            with_loss(worker_in("a", three, &[(10, 100_000, 1)]), lost_at),
            worker_in("b", three, &[(20, 100_000, 2)]),
            worker_in("c", three, &[(30, 100_000, 3)]),
            worker_in("e", three, &[(40_000, 50_000, 4)]),
        ]
    };
    // a was told at 35 ms, before e's grant at 40 ms: three count.
    let report = judge(logs(35_000), vec![], 0);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
    assert_eq!(report.excused.get("told lost before the next grant"), Some(&1));
    // Told at 60 ms, after e's grant (beyond the slack): four held.
    let report = judge(logs(60_000), vec![], 0);
    assert_eq!(rules(&report), ["overlap"], "{report:#?}");
}

#[test]
fn a_redis_restart_excuses_permit_holders_granted_before_it() {
    let one = LockMode::Permits(1);
    let logs = vec![worker_in("a", one, &[(10, 40, 1)]), worker_in("b", one, &[(30, 50, 2)])];
    let restart = Fault::Restart { t: 20, until: 25, data: "lost".into() };
    let report = judge(logs.clone(), vec![restart], 0);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
    let report = judge(logs, vec![], 0);
    assert_eq!(rules(&report), ["overlap"], "{report:#?}");
}

#[test]
fn readers_granted_together_may_record_their_grants_out_of_token_order() {
    // b's grant (token 2) is recorded before a's (token 1): both waited from
    // the start, so the backend may have granted a first.
    let mut a = worker_in("a", SHARED, &[(30, 60, 1)]);
    a[1] = Event::Acquire { t: 5 };
    let report = judge(vec![a, worker_in("b", SHARED, &[(20, 50, 2)])], vec![], 0);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
    // c began waiting after b's grant was recorded, yet has a lower token.
    let report =
        judge(vec![worker_in("b", SHARED, &[(20, 50, 2)]), worker_in("c", SHARED, &[(30_000, 30_100, 1)])], vec![], 0);
    assert_eq!(rules(&report), ["token"], "{report:#?}");
    // A writer is ordered after every grant recorded before it.
    let report =
        judge(vec![worker_in("b", SHARED, &[(20, 50, 2)]), worker_in("w", EXCLUSIVE, &[(60, 70, 1)])], vec![], 1);
    assert_eq!(rules(&report), ["token"], "{report:#?}");
}

#[test]
fn a_wait_while_a_permit_is_free_is_a_liveness_violation() {
    let two = LockMode::Permits(2);
    let waiter = vec![
        Event::Start { t: 0, w: "z".into(), pid: 2, kind: Kind::New },
        Event::Acquire { t: 100 },
        Event::Timeout { t: 5_000_100 },
    ];
    // One of two permits held all along: the waiter should have got the other.
    let report = judge(vec![worker_in("a", two, &[(10, 5_000_200, 1)]), waiter.clone()], vec![], 0);
    assert_eq!(rules(&report), ["liveness"], "{report:#?}");
    // Both held all along: no violation.
    let logs = vec![worker_in("a", two, &[(10, 5_000_200, 1)]), worker_in("b", two, &[(20, 5_000_200, 2)]), waiter];
    let report = judge(logs, vec![], 0);
    assert_eq!(rules(&report), Vec::<&str>::new(), "{report:#?}");
}

#[test]
fn with_one_permit_the_busy_sweep_is_the_union_of_the_intervals() {
    // The rule for exclusive and rw runs must stay what it was: the union.
    let mut rng = fastrand::Rng::with_seed(7);
    for _ in 0..500 {
        let intervals: Vec<(u64, u64, u32)> = (0..rng.usize(0..12))
            .map(|_| {
                let from = rng.u64(0..100);
                (from, from + rng.u64(0..30), 1)
            })
            .collect();
        let mut union: Vec<(u64, u64)> = Vec::new();
        let mut sorted: Vec<(u64, u64)> =
            intervals.iter().filter(|(from, to, _)| to > from).map(|&(from, to, _)| (from, to)).collect();
        sorted.sort_unstable();
        for (from, to) in sorted {
            match union.last_mut() {
                Some(last) if from <= last.1 => last.1 = last.1.max(to),
                _ => union.push((from, to)),
            }
        }
        assert_eq!(saturated(intervals.clone(), 1), union, "{intervals:?}");
    }
}
