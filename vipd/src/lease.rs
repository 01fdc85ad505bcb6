//! Lease arithmetic (pure): when a node may hold its VIPs, and when the cluster may be sure that
//! a silent node no longer does (DESIGN.md invariant 1).
//!
//! # The protocol
//!
//! Leases do not go through the Raft leader. Every node sends a *lease ping* to every peer each
//! heartbeat, numbered and stamped with its own monotonic clock; a peer answers with an ack when
//! its applied cluster state lists the sender, unfenced, at the generation the ping names. When a
//! quorum of voters (the sender counts itself) has acked ping `s`, sent at local time `t`, the
//! sender's lease runs until `t + L`. A node holds the VIPs that the applied state assigns to it
//! only while its lease runs, and gives each one a kernel lifetime no longer than the lease left
//! ([`crate::apply::lifetime_for`]), so even a frozen or killed daemon loses them in time.
//!
//! To take VIPs away from a node that does not answer, the leader commits `Fence(node, gen)`.
//! Every peer that applies it stops acking that node's generation and reports, with each ping it
//! sends, how long the last ack it gave may still be in use: `ack + W - now`, where
//! `W = L·(1+ρ)² + slack` ([`LeaseSettings::safe_wait`]). The leader turns each report into a
//! time on its own clock and reassigns the fenced node's VIPs only when every quorum that could
//! have renewed the lease contains a reporter whose bound has passed ([`FenceTracker`]).
//!
//! # The argument, with its clock assumptions
//!
//! Clocks are each node's `CLOCK_MONOTONIC`; their *rates* differ by at most a factor `1+ρ`
//! from real time (ρ = 1 %, far above NTP's 500 ppm slew limit); their *offsets* are unrelated
//! and never compared. Messages may be delayed, lost or reordered, never forged (the transport
//! authenticates them).
//!
//! 1. The owner's lease for ping `s` ends at local `t + L`, at most `L·(1+ρ)` of real time after
//!    the real instant the ping was sent.
//! 2. A peer acks ping `s` after it was sent, so the lease it helped to grant ends at most
//!    `L·(1+ρ)` real time after the ack — at most `L·(1+ρ)²` on the peer's clock. Adding the
//!    kernel's deletion slack gives `W`: past `ack + W` on the peer's clock, no address that ack
//!    supported is still configured.
//! 3. A report says "`r` of my time remains"; the leader receives it after it was sent, so the
//!    bound has surely passed once `r·(1+ρ)` of the leader's time has gone by since receipt.
//! 4. A lease needs a quorum of acks. If the voters that have not reported, plus the fenced node
//!    itself, cannot form a quorum, every possible quorum contains a reporter, and that
//!    reporter acked nothing of the fenced generation after its report (it had applied the
//!    fence). So once every reporter's bound has passed, no lease of that generation runs.
//! 5. A fenced node returns only through `Unfence(node, gen)`, which bumps its generation; its
//!    pings of the new generation are acked only by peers that applied the unfence, and the
//!    node itself holds VIPs only from a state that includes it, so it never acts on an
//!    assignment older than the ones made while it was fenced.
//!
//! Residual risk, stated honestly: a daemon frozen *between* reading its clock and the netlink
//! call that adds or renews an address would, on waking, apply a lifetime computed before the
//! freeze. So the clock is read again right before each add or renewal (the set of held VIPs
//! is decided earlier, before the kernel's addresses are read, and that gap once let a daemon
//! SIGSTOPped there put two moved VIPs back for 4 ms after SIGCONT — caught by
//! `tests/failover.rs`), and once more after each reconcile, when addresses whose lease has
//! ended are deleted. What remains is a freeze between that last clock reading and the system
//! call itself.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

/// A node's stable number (ctdb's PNN).
pub type Pnn = u32;

/// The clock assumptions and lengths the arithmetic uses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LeaseSettings {
    /// `L`: how long a quorum of acks keeps a node's VIPs.
    pub lease: Duration,
    /// `ρ`: the largest relative rate difference between any node's clock and real time.
    pub drift: f64,
    /// How late the kernel may delete an address after its lifetime ends.
    pub kernel_slack: Duration,
}

impl LeaseSettings {
    /// The settings for a lease of `lease` with ρ = 1 % and 100 ms of kernel slack (measured:
    /// the kernel deletes an expired address within ≈ 50 ms).
    pub fn new(lease: Duration) -> LeaseSettings {
        LeaseSettings {
            lease,
            drift: 0.01,
            kernel_slack: Duration::from_millis(100),
        }
    }

    /// `W = L·(1+ρ)² + slack`: on any node's clock, how long after an ack the lease it helped
    /// grant has surely ended, kernel addresses included.
    pub fn safe_wait(&self) -> Duration {
        self.lease
            .mul_f64((1.0 + self.drift) * (1.0 + self.drift))
            .saturating_add(self.kernel_slack)
    }

    /// Converts a duration measured on another node's clock into one on ours that is surely at
    /// least as long in real time.
    pub fn stretch(&self, remote: Duration) -> Duration {
        remote.mul_f64(1.0 + self.drift)
    }
}

/// The smallest number of voters that forms a quorum.
pub fn quorum(voters: usize) -> usize {
    voters / 2 + 1
}

/// One ping still waiting for acks.
#[derive(Debug, Clone)]
struct PendingPing {
    seq: u64,
    sent_ms: u64,
    acks: BTreeSet<Pnn>,
}

/// The owner side: this node's own lease.
#[derive(Debug, Clone)]
pub struct OwnerLease {
    me: Pnn,
    generation: u64,
    next_seq: u64,
    pending: VecDeque<PendingPing>,
    expires_ms: Option<u64>,
    lease_ms: u64,
}

/// How many unanswered pings are remembered; older ones can no longer extend the lease much.
const PENDING_PINGS: usize = 64;

impl OwnerLease {
    /// No lease yet.
    pub fn new(me: Pnn, lease: Duration) -> OwnerLease {
        OwnerLease {
            me,
            generation: 0,
            next_seq: 1,
            pending: VecDeque::new(),
            expires_ms: None,
            lease_ms: duration_ms(lease),
        }
    }

    /// The generation pings claim.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Drops the lease at once (fenced, or the applied generation changed) and claims
    /// `generation` from now on.
    pub fn reset(&mut self, generation: u64) {
        self.generation = generation;
        self.pending.clear();
        self.expires_ms = None;
    }

    /// Starts a ping at `now_ms`; returns its sequence number. The node's own ack is counted
    /// when `self_ack` (it is a voter and its applied state lists it unfenced at this
    /// generation).
    pub fn ping(&mut self, now_ms: u64, self_ack: bool) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        let mut acks = BTreeSet::new();
        if self_ack {
            acks.insert(self.me);
        }
        if self.pending.len() == PENDING_PINGS {
            self.pending.pop_front();
        }
        self.pending.push_back(PendingPing {
            seq,
            sent_ms: now_ms,
            acks,
        });
        seq
    }

    /// Counts an ack from `from` for ping `seq` of `generation`; `voters` is the applied
    /// configuration. Acks for another generation, from non-voters or for forgotten pings are
    /// ignored. Returns whether the lease was extended.
    pub fn ack(&mut self, from: Pnn, seq: u64, generation: u64, voters: &BTreeSet<Pnn>) -> bool {
        if generation != self.generation || !voters.contains(&from) {
            return false;
        }
        let Some(ping) = self.pending.iter_mut().find(|ping| ping.seq == seq) else {
            return false;
        };
        ping.acks.insert(from);
        let counted = ping.acks.iter().filter(|pnn| voters.contains(pnn)).count();
        if counted < quorum(voters.len()) {
            return false;
        }
        let expires = ping.sent_ms.saturating_add(self.lease_ms);
        // Pings up to this one are settled: a later ack for an older ping cannot extend more.
        while self.pending.front().is_some_and(|front| front.seq <= seq) {
            self.pending.pop_front();
        }
        if self.expires_ms.is_none_or(|current| expires > current) {
            self.expires_ms = Some(expires);
            true
        } else {
            false
        }
    }

    /// The lease left at `now_ms` (zero when none runs).
    pub fn left(&self, now_ms: u64) -> Duration {
        match self.expires_ms {
            Some(expires) if expires > now_ms => Duration::from_millis(expires - now_ms),
            _ => Duration::ZERO,
        }
    }
}

/// The peer side: when this node last acked each peer's lease, and what it reports about
/// fenced peers.
#[derive(Debug, Clone)]
pub struct AckBook {
    started_ms: u64,
    last_ack_ms: BTreeMap<Pnn, u64>,
    safe_wait_ms: u64,
}

impl AckBook {
    /// A book for a node that started at `started_ms`. Acks given before a restart are
    /// forgotten, so every peer counts as acked at start: a restarted node never reports a
    /// lease over that it may have helped to grant just before.
    pub fn new(started_ms: u64, settings: &LeaseSettings) -> AckBook {
        AckBook {
            started_ms,
            last_ack_ms: BTreeMap::new(),
            safe_wait_ms: duration_ms(settings.safe_wait()),
        }
    }

    /// Records an ack given to `peer` at `now_ms`.
    pub fn acked(&mut self, peer: Pnn, now_ms: u64) {
        self.last_ack_ms.insert(peer, now_ms);
    }

    /// How long, on this node's clock, the last ack given to `peer` may still support a lease.
    /// Only meaningful once this node has stopped acking `peer` (it applied a fence).
    pub fn remaining(&self, peer: Pnn, now_ms: u64) -> Duration {
        let last = self
            .last_ack_ms
            .get(&peer)
            .copied()
            .unwrap_or(0)
            .max(self.started_ms);
        Duration::from_millis(
            last.saturating_add(self.safe_wait_ms)
                .saturating_sub(now_ms),
        )
    }
}

/// A report that `reporter` applied `Fence(node, generation)` and its acks of that generation
/// may support a lease for `remaining` more of its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct FenceReport {
    pub node: Pnn,
    pub generation: u64,
    pub remaining_ms: u64,
}

/// What this node has heard about fenced nodes; the leader decides with it. Every node keeps
/// one, so a new leader already knows what the reports said.
#[derive(Debug, Clone, Default)]
pub struct FenceTracker {
    /// (fenced node, generation) → reporter → the time on our clock when its bound has passed.
    bounds: BTreeMap<(Pnn, u64), BTreeMap<Pnn, u64>>,
}

impl FenceTracker {
    /// An empty tracker.
    pub fn new() -> FenceTracker {
        FenceTracker::default()
    }

    /// Records `report` from `reporter`, received at `now_ms` on our clock.
    pub fn record(
        &mut self,
        reporter: Pnn,
        report: &FenceReport,
        now_ms: u64,
        settings: &LeaseSettings,
    ) {
        let stretched = duration_ms(settings.stretch(Duration::from_millis(report.remaining_ms)));
        let bound = now_ms.saturating_add(stretched);
        let reporters = self
            .bounds
            .entry((report.node, report.generation))
            .or_default();
        // Later reports only shorten what is left; keeping the largest bound stays safe if an
        // older report arrives late.
        let entry = reporters.entry(reporter).or_insert(bound);
        *entry = (*entry).max(bound);
    }

    /// When `node`'s lease of `generation` has surely ended, on our clock, given the voters of
    /// the applied configuration; `None` while too few voters have reported.
    pub fn safe_at(&self, node: Pnn, generation: u64, voters: &BTreeSet<Pnn>) -> Option<u64> {
        let reporters = self.bounds.get(&(node, generation))?;
        let unreported = voters
            .iter()
            .filter(|voter| **voter != node && !reporters.contains_key(voter))
            .count();
        let could_renew = unreported + usize::from(voters.contains(&node));
        if could_renew >= quorum(voters.len()) {
            return None;
        }
        reporters
            .iter()
            .filter(|(reporter, _)| voters.contains(reporter))
            .map(|(_, bound)| *bound)
            .max()
    }

    /// Forgets everything about generations of `node` below `generation`.
    pub fn forget_before(&mut self, node: Pnn, generation: u64) {
        self.bounds.retain(|(fenced, fenced_generation), _| {
            *fenced != node || *fenced_generation >= generation
        });
    }
}

/// Whole milliseconds of `duration`, saturating.
pub fn duration_ms(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn voters(pnns: &[Pnn]) -> BTreeSet<Pnn> {
        pnns.iter().copied().collect()
    }

    #[test]
    fn safe_wait_covers_two_drifts_and_the_kernel() {
        let settings = LeaseSettings::new(Duration::from_millis(1500));
        // 1500 · 1.01² = 1530.15 ms, plus 100 ms of slack.
        assert_eq!(duration_ms(settings.safe_wait()), 1630);
        assert_eq!(
            duration_ms(settings.stretch(Duration::from_millis(1000))),
            1010
        );
    }

    #[test]
    fn quorum_sizes() {
        let table = [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3)];
        for (voters, expected) in table {
            assert_eq!(quorum(voters), expected, "{voters} voters");
        }
    }

    #[test]
    fn owner_lease_needs_a_quorum_of_the_same_ping() {
        let all = voters(&[0, 1, 2]);
        let mut lease = OwnerLease::new(0, Duration::from_millis(1500));
        let first = lease.ping(1000, true);
        assert_eq!(lease.left(1000), Duration::ZERO);
        // An ack for another generation or from a non-voter counts for nothing.
        assert!(!lease.ack(1, first, 7, &all));
        assert!(!lease.ack(9, first, 0, &all));
        assert_eq!(lease.left(1010), Duration::ZERO);
        // Self plus one peer is a quorum of three: the lease runs from the ping's send time.
        assert!(lease.ack(1, first, 0, &all));
        assert_eq!(lease.left(1100), Duration::from_millis(1400));
        // A late ack of the same ping extends nothing.
        assert!(!lease.ack(2, first, 0, &all));
        let second = lease.ping(1200, true);
        assert!(lease.ack(2, second, 0, &all));
        assert_eq!(lease.left(1200), Duration::from_millis(1500));
        assert_eq!(lease.left(2700), Duration::ZERO);
    }

    #[test]
    fn owner_lease_without_self_ack_needs_peers_alone() {
        // A node fenced in its own view does not count itself.
        let all = voters(&[0, 1, 2]);
        let mut lease = OwnerLease::new(0, Duration::from_millis(1500));
        let seq = lease.ping(0, false);
        assert!(!lease.ack(1, seq, 0, &all));
        assert!(lease.ack(2, seq, 0, &all));
    }

    #[test]
    fn reset_drops_the_lease_and_pending_pings() {
        let all = voters(&[0, 1, 2]);
        let mut lease = OwnerLease::new(0, Duration::from_millis(1500));
        let seq = lease.ping(0, true);
        assert!(lease.ack(1, seq, 0, &all));
        let pending = lease.ping(100, true);
        lease.reset(1);
        assert_eq!(lease.left(200), Duration::ZERO);
        assert!(!lease.ack(1, pending, 0, &all));
        assert!(
            !lease.ack(1, pending, 1, &all),
            "pings before the reset are forgotten"
        );
    }

    #[test]
    fn ack_book_counts_the_start_as_an_ack() {
        let settings = LeaseSettings::new(Duration::from_millis(1500));
        let mut book = AckBook::new(5000, &settings);
        assert_eq!(book.remaining(1, 5000), Duration::from_millis(1630));
        book.acked(1, 6000);
        assert_eq!(book.remaining(1, 6000), Duration::from_millis(1630));
        assert_eq!(book.remaining(1, 7000), Duration::from_millis(630));
        assert_eq!(book.remaining(1, 9000), Duration::ZERO);
    }

    #[test]
    fn fence_tracker_needs_every_possible_quorum_to_contain_a_reporter() {
        let settings = LeaseSettings::new(Duration::from_millis(1500));
        let report = FenceReport {
            node: 2,
            generation: 3,
            remaining_ms: 1000,
        };
        // Three voters, node 2 fenced: node 2 with node 1 would be a quorum, so the leader's
        // own report is not enough.
        let mut tracker = FenceTracker::new();
        let three = voters(&[0, 1, 2]);
        tracker.record(0, &report, 100, &settings);
        assert_eq!(tracker.safe_at(2, 3, &three), None);
        tracker.record(1, &report, 200, &settings);
        assert_eq!(tracker.safe_at(2, 3, &three), Some(200 + 1010));
        // Another generation has no reports.
        assert_eq!(tracker.safe_at(2, 4, &three), None);
        // Five voters: reports from 0 and 1 leave {2, 3, 4}, a quorum — not yet.
        let five = voters(&[0, 1, 2, 3, 4]);
        assert_eq!(tracker.safe_at(2, 3, &five), None);
        tracker.record(3, &report, 300, &settings);
        assert_eq!(tracker.safe_at(2, 3, &five), Some(300 + 1010));
        tracker.forget_before(2, 4);
        assert_eq!(tracker.safe_at(2, 3, &three), None);
    }

    #[test]
    fn fence_tracker_keeps_the_largest_bound() {
        let settings = LeaseSettings::new(Duration::from_millis(1500));
        let mut tracker = FenceTracker::new();
        let two = voters(&[0, 1]);
        let early = FenceReport {
            node: 1,
            generation: 0,
            remaining_ms: 0,
        };
        let late = FenceReport {
            remaining_ms: 500,
            ..early
        };
        tracker.record(0, &late, 1000, &settings);
        tracker.record(0, &early, 1200, &settings);
        assert_eq!(tracker.safe_at(1, 0, &two), Some(1505));
    }

    #[test]
    fn a_single_voter_cluster_needs_no_reports_about_itself() {
        // The only voter fenced: nobody else could have acked it.
        let tracker = FenceTracker::new();
        assert_eq!(tracker.safe_at(0, 0, &voters(&[0])), None);
    }
}
