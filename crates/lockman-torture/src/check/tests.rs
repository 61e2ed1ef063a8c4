//! The checker must fail on histories that break each rule — a checker that
//! cannot fail is worthless — and must accept the overlaps its rules excuse.

use super::*;
use crate::history::Kind;

const BOUNDS: Bounds =
    Bounds { lost_bound_us: 100_000, slack_us: 5_000, liveness_bound_us: 2_000_000, lease_us: 1_000_000 };

/// A lockman worker's log: one section per `(grant, end, token)`, each with
/// a read and an accepted write.
fn worker(name: &str, sections: &[(u64, u64, u64)]) -> Vec<Event> {
    let mut events = vec![Event::Start { t: 0, w: name.to_owned(), pid: 1, kind: Kind::New }];
    for &(grant, end, token) in sections {
        events.push(Event::Acquire { t: grant.saturating_sub(1) });
        events.push(Event::Grant { t: grant, token: Some(token), lease_ms: Some(1000) });
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
