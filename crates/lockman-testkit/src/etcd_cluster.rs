//! A private three-member `etcd` cluster for fault tests: each member on
//! its own free loopback client and peer ports (never 2379/2380), with its
//! data in a private temporary directory, all stopped and removed when the
//! cluster is dropped.
//!
//! Members elect quickly (`--heartbeat-interval 50`, `--election-timeout
//! 500`, in ms), so a test can kill the leader and see a new one within a
//! second or two. [`EtcdCluster::leader`] asks every member who leads
//! through etcd's maintenance `Status` call (its JSON gateway on the client
//! port, so no etcd client is needed here).
//!
//! Like [`EtcdServer`](crate::etcd_server::EtcdServer), a missing `etcd`
//! makes [`EtcdCluster::start`] print a loud `SKIPPED` line and return
//! `None`, unless `LOCKMAN_REQUIRE_ETCD=1`. Members are the same processes
//! as that fixture's server (`etcd_server`'s member code is shared).
//!
//! This module is Unix-only (it sends signals to the members).
//!
//! ```no_run
//! use std::time::Duration;
//! use lockman_testkit::etcd_cluster::EtcdCluster;
//!
//! let Some(mut cluster) = EtcdCluster::start() else { return };
//! let endpoints = cluster.endpoints(); // ["http://127.0.0.1:PORT", …], one per member
//! let old = cluster.wait_for_leader(None, Duration::from_secs(10));
//! cluster.kill(old);
//! let new = cluster.wait_for_leader(Some(old), Duration::from_secs(10));
//! println!("leader {old} -> {new}");
//! cluster.restart(old); // rejoins with its data
//! # drop(endpoints);
//! ```

#![cfg(unix)]

use std::io::ErrorKind;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::etcd_server::{
    Member, READY_TIMEOUT, RESTART_ATTEMPTS, START_ATTEMPTS, StartFailure, http, missing_program,
};

/// How many members a cluster has.
pub const MEMBERS: usize = 3;

/// The members' Raft timing, in milliseconds: quick elections.
const HEARTBEAT_MS: &str = "50";
const ELECTION_TIMEOUT_MS: &str = "500";

/// Makes each cluster's token unique in the process.
static CLUSTERS: AtomicU64 = AtomicU64::new(0);

/// Three `etcd` members private to one test, forming one cluster.
///
/// Members are numbered `0..MEMBERS`; every method taking a `member`
/// panics if it is out of range. Dropping the cluster kills every member
/// (`SIGKILL`, also a paused one), reaps it and removes its directory.
#[derive(Debug)]
pub struct EtcdCluster {
    members: Vec<Member>,
    /// `--initial-cluster`: every member's name and peer URL.
    initial: String,
    token: String,
    /// Each member's Raft id, as its `Status` reports it (stable across
    /// restarts, which keep the data).
    ids: Vec<String>,
}

/// What one member says about itself and its leader.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemberStatus {
    /// The member's Raft id.
    pub id: String,
    /// The leader's Raft id as this member knows it (`None` if it knows none).
    pub leader: Option<String>,
    /// The member's Raft term.
    pub raft_term: u64,
    /// The store's revision as this member has applied it.
    pub revision: u64,
}

impl EtcdCluster {
    /// Starts three members on free loopback ports and waits (at most
    /// [`READY_TIMEOUT`]) until each is healthy (which needs a leader).
    ///
    /// Returns `None` after printing a `SKIPPED` line to stderr if `etcd` is
    /// not on `PATH`, unless `LOCKMAN_REQUIRE_ETCD=1`.
    ///
    /// # Panics
    ///
    /// If `etcd` is missing and `LOCKMAN_REQUIRE_ETCD=1`; if a member cannot
    /// be spawned for another reason, exits, or never becomes healthy (with
    /// the tail of its log).
    pub fn start() -> Option<EtcdCluster> {
        let token = format!("lockman-cluster-{}-{}", std::process::id(), CLUSTERS.fetch_add(1, Ordering::Relaxed));
        let members = (0..MEMBERS).map(|index| Member::new(&format!("member{index}"))).collect();
        let mut cluster = EtcdCluster { members, initial: String::new(), token, ids: Vec::new() };
        for _ in 0..START_ATTEMPTS {
            let mut taken = Vec::new();
            for member in &mut cluster.members {
                taken.extend(member.pick_ports(&taken));
                // The peer URLs are recorded in the data: fresh ports, fresh data.
                member.remove_data();
            }
            cluster.initial = cluster.members.iter().map(Member::cluster_entry).collect::<Vec<_>>().join(",");
            for index in 0..MEMBERS {
                match cluster.spawn(index) {
                    Ok(()) => {}
                    Err(error) if error.kind() == ErrorKind::NotFound => {
                        drop(cluster);
                        return missing_program();
                    }
                    Err(error) => panic!("cannot spawn etcd member {index}: {error}"),
                }
            }
            match cluster.wait_all_ready() {
                Ok(()) => {
                    cluster.ids = (0..MEMBERS)
                        .map(|index| {
                            cluster
                                .status(index)
                                .unwrap_or_else(|| panic!("etcd member {index} is healthy but gives no status"))
                                .id
                        })
                        .collect();
                    return Some(cluster);
                }
                Err(StartFailure::PortTaken) => cluster.kill_all(),
            }
        }
        panic!(
            "etcd members could not bind free loopback ports in {START_ATTEMPTS} attempts; logs:\n{}",
            cluster.logs()
        );
    }

    /// How many members there are ([`MEMBERS`]).
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Always `false`: a cluster has members.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Every member's client endpoint, `http://127.0.0.1:PORT`, in member
    /// order — give them all to a client (`EtcdOptions::new(endpoints)`).
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(Member::endpoint).collect()
    }

    /// One member's client endpoint, for a client that talks to it alone.
    pub fn endpoint(&self, member: usize) -> String {
        self.members[member].endpoint()
    }

    /// The backend URL of the whole cluster:
    /// `etcd://127.0.0.1:P0,127.0.0.1:P1,127.0.0.1:P2`.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.members.iter().map(|m| format!("127.0.0.1:{}", m.port())).collect();
        format!("etcd://{}", hosts.join(","))
    }

    /// A member's client port; it stays the same across restarts.
    pub fn port(&self, member: usize) -> u16 {
        self.members[member].port()
    }

    /// A member's name in the cluster (`member0`, …).
    pub fn name(&self, member: usize) -> &str {
        self.members[member].name()
    }

    /// The directory holding a member's files (`data/`, `stdio.log`).
    pub fn dir(&self, member: usize) -> &Path {
        self.members[member].process.dir()
    }

    /// What `member` says about itself through the maintenance `Status`
    /// call, or `None` if it does not answer within 500 ms (killed, paused).
    pub fn status(&self, member: usize) -> Option<MemberStatus> {
        let reply = http(self.port(member), "POST", "/v3/maintenance/status", "{}")?;
        let id = json_string(&reply, "member_id")?;
        let leader = json_string(&reply, "leader").filter(|leader| leader != "0");
        let number = |field| json_string(&reply, field).and_then(|text| text.parse().ok()).unwrap_or(0);
        Some(MemberStatus { id, leader, raft_term: number("raftTerm"), revision: number("revision") })
    }

    /// The member that leads, if every member that answers names the same
    /// leader and that leader is one of ours; `None` during an election (or
    /// while members disagree).
    pub fn leader(&self) -> Option<usize> {
        let mut named: Option<String> = None;
        for member in 0..self.len() {
            let Some(status) = self.status(member) else { continue };
            let leader = status.leader?;
            match &named {
                Some(seen) if *seen != leader => return None,
                _ => named = Some(leader),
            }
        }
        let leader = named?;
        self.ids.iter().position(|id| *id == leader)
    }

    /// The highest Raft term any answering member reports (0 if none
    /// answers). A member reports the term of the entries it has applied,
    /// so a new leader's term shows a moment after it is elected (once its
    /// first entry is applied): see [`wait_for_term_above`](Self::wait_for_term_above).
    pub fn raft_term(&self) -> u64 {
        (0..self.len()).filter_map(|member| self.status(member)).map(|s| s.raft_term).max().unwrap_or(0)
    }

    /// Waits until some member reports a Raft term above `term`, and
    /// returns it; polls every 20 ms.
    ///
    /// # Panics
    ///
    /// If none does within `timeout`.
    pub fn wait_for_term_above(&self, term: u64, timeout: Duration) -> u64 {
        let deadline = Instant::now() + timeout;
        loop {
            let now = self.raft_term();
            if now > term {
                return now;
            }
            assert!(Instant::now() < deadline, "no etcd member reached a term above {term} within {timeout:?}");
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Waits until the members agree on a leader other than `not`, and
    /// returns it; polls every 20 ms.
    ///
    /// # Panics
    ///
    /// If there is no such leader within `timeout` (with every member's
    /// status and the logs' tails).
    pub fn wait_for_leader(&self, not: Option<usize>, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(leader) = self.leader().filter(|leader| Some(*leader) != not) {
                return leader;
            }
            if Instant::now() >= deadline {
                let statuses: Vec<_> = (0..self.len()).map(|member| self.status(member)).collect();
                panic!(
                    "no etcd leader (other than {not:?}) within {timeout:?}; ids {:?}, statuses {statuses:?}; logs:\n{}",
                    self.ids,
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills a member with `SIGKILL` (also when paused) and reaps it; its
    /// data stays. Does nothing if it is not running.
    pub fn kill(&mut self, member: usize) {
        self.members[member].process.kill();
    }

    /// Kills every member (their data stays).
    pub fn kill_all(&mut self) {
        for member in &mut self.members {
            member.process.kill();
        }
    }

    /// Stops a member with `SIGSTOP`: its ports stay open, but it answers
    /// neither clients nor peers until [`resume`](Self::resume) — to the
    /// others it is partitioned away.
    ///
    /// # Panics
    ///
    /// If the member is not running.
    pub fn pause(&self, member: usize) {
        self.members[member].process.pause();
    }

    /// Continues a paused member (`SIGCONT`).
    ///
    /// # Panics
    ///
    /// If the member is not running.
    pub fn resume(&self, member: usize) {
        self.members[member].process.resume();
    }

    /// Whether a member's process is alive (a paused one is).
    pub fn is_running(&mut self, member: usize) -> bool {
        self.members[member].process.is_running()
    }

    /// Kills a member if it is running and starts it again on the same
    /// ports with its data, then waits until it is healthy (which needs a
    /// quorum: at least one other member must be running).
    ///
    /// # Panics
    ///
    /// If it cannot be spawned, cannot bind its ports again or never
    /// becomes healthy (with its log tail).
    pub fn restart(&mut self, member: usize) {
        self.members[member].process.kill();
        self.start_stopped();
    }

    /// Stops every member and starts them all again with their data — a
    /// whole-cluster restart: every acknowledged write, and the revision
    /// counter, survive. Waits until every member is healthy.
    ///
    /// # Panics
    ///
    /// As for [`restart`](Self::restart).
    pub fn restart_all(&mut self) {
        self.kill_all();
        self.start_stopped();
    }

    /// Starts every member that is not running (keeping its data) and
    /// waits until all are healthy, retrying members whose port was taken.
    fn start_stopped(&mut self) {
        for _ in 0..RESTART_ATTEMPTS {
            for index in 0..self.len() {
                if !self.is_running(index) {
                    self.spawn(index).unwrap_or_else(|error| panic!("cannot spawn etcd member {index} again: {error}"));
                }
            }
            match self.wait_all_ready() {
                Ok(()) => return,
                // Another process holds a port, perhaps only for a moment.
                Err(StartFailure::PortTaken) => thread::sleep(Duration::from_millis(100)),
            }
        }
        panic!(
            "etcd members could not bind their ports again after {RESTART_ATTEMPTS} attempts; logs:\n{}",
            self.logs()
        );
    }

    fn spawn(&mut self, member: usize) -> std::io::Result<()> {
        let extra = ["--heartbeat-interval", HEARTBEAT_MS, "--election-timeout", ELECTION_TIMEOUT_MS];
        self.members[member].spawn_with(&self.initial, &self.token, &extra)
    }

    /// Waits until every member is ready, polling every 20 ms. `Err` if a
    /// member exited because its port was taken (it is then not running).
    ///
    /// # Panics
    ///
    /// If a member exits for another reason, or they are not all ready
    /// within [`READY_TIMEOUT`].
    fn wait_all_ready(&mut self) -> Result<(), StartFailure> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let mut ready = vec![false; self.len()];
        loop {
            for (index, member) in self.members.iter_mut().enumerate() {
                if ready[index] {
                    continue;
                }
                if !member.process.is_running() {
                    return Err(member.exit_failure(None));
                }
                ready[index] = member.is_ready();
            }
            if ready.iter().all(|ready| *ready) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                panic!(
                    "etcd members were not all ready within {READY_TIMEOUT:?} (ready: {ready:?}); logs:\n{}",
                    self.logs()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every member's log tail, for panic messages.
    fn logs(&self) -> String {
        self.members.iter().map(|member| format!("=== {} ===\n{}", member.name(), member.process.log_tail())).collect()
    }
}

/// The string value of `"field":"…"` in a flat JSON reply (etcd's gateway
/// writes 64-bit numbers as strings).
fn json_string(reply: &str, field: &str) -> Option<String> {
    let pattern = format!("\"{field}\":\"");
    let start = reply.find(&pattern)? + pattern.len();
    let len = reply[start..].find('"')?;
    Some(reply[start..start + len].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_strings_are_read_by_field() {
        let reply = r#"{"header":{"member_id":"42","revision":"7"},"leader":"0","raftTerm":"3"}"#;
        assert_eq!(json_string(reply, "member_id").as_deref(), Some("42"));
        assert_eq!(json_string(reply, "raftTerm").as_deref(), Some("3"));
        assert_eq!(json_string(reply, "missing"), None);
    }

    #[test]
    fn elects_a_new_leader_survives_restarts_and_leaves_nothing_behind() {
        let Some(mut cluster) = EtcdCluster::start() else { return };
        assert_eq!(cluster.len(), MEMBERS);
        assert!(cluster.endpoints().iter().all(|endpoint| !endpoint.ends_with(":2379")));
        let old = cluster.wait_for_leader(None, Duration::from_secs(10));
        let term = cluster.raft_term();
        cluster.kill(old);
        assert!(!cluster.is_running(old));
        let new = cluster.wait_for_leader(Some(old), Duration::from_secs(10));
        assert_ne!(new, old);
        assert!(cluster.wait_for_term_above(term, Duration::from_secs(10)) > term);
        cluster.restart(old);
        assert!(cluster.status(old).is_some());
        let follower = (0..MEMBERS).find(|m| *m != new).expect("a follower");
        cluster.pause(follower);
        assert!(cluster.status(follower).is_none(), "a paused member answered");
        cluster.resume(follower);
        cluster.restart_all();
        cluster.wait_for_leader(None, Duration::from_secs(10));
        let dirs: Vec<_> = (0..MEMBERS).map(|m| cluster.dir(m).to_owned()).collect();
        assert!(dirs.iter().all(|dir| dir.join("data/member").is_dir()));
        drop(cluster);
        assert!(dirs.iter().all(|dir| !dir.exists()), "member directories left behind");
    }
}
