//! The node core: one Raft peer with its replicated state, leases and leader duties, driven by
//! its caller and doing no I/O of its own.
//!
//! The caller (the daemon's event loop, or the deterministic simulation) feeds it time, peer
//! messages and health, and after every input runs [`NodeCore::process_ready`] and carries out
//! what the core asks for:
//!
//! 1. [`NodeCore::tick`] at least every few milliseconds (it ticks Raft at its own pace, sends
//!    lease pings each heartbeat, and on the leader proposes what [`crate::leader::decide`] says);
//! 2. [`NodeCore::receive`] for each payload from a peer (Raft messages and lease messages);
//! 3. [`NodeCore::process_ready`]: persists what Raft asks, applies committed commands;
//! 4. [`NodeCore::take_outbox`]: payloads to send, by peer;
//! 5. [`NodeCore::held`]: the VIPs the kernel should have right now, with the lease left; the
//!    caller reconciles the kernel to exactly that set and reports what is left through
//!    [`NodeCore::kernel_has`], which lets the core confirm releases.
//!
//! Raft ids are PNN + 1 (raft reserves 0).
//!
//! Membership: on the leader, [`crate::leader::membership_step`] turns the replicated members
//! into Raft configuration changes, one at a time — a new member joins as a learner, is
//! promoted once caught up, and a forgotten member's peer is removed; a leader that must leave
//! hands leadership over first. Every node compacts its log right after applying a
//! configuration change, so a newcomer is always sent a snapshot whose configuration names it.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::net::IpAddr;
use std::time::Duration;

use ipnet::IpNet;
use protobuf::Message as _;
use raft::prelude::{
    ConfChange, ConfChangeType, ConfChangeV2, ConfState, Entry, EntryType, Message,
};
use raft::{RawNode, StateRole};
use serde::{Deserialize, Serialize};

use crate::apply::HeldVip;
use crate::leader::{self, LeaderSettings, MembershipStep, Observations};
use crate::lease::{
    AckBook, FenceReport, FenceTracker, LeaseSettings, OwnerLease, Pnn, duration_ms,
};
use crate::state::{ClusterState, Command, Outcome, VipPhase, decode_command, encode_command};
use crate::storage::{LogStore, StorageError};

/// Tunables of one node.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    pub pnn: Pnn,
    /// How often Raft ticks.
    pub tick_ms: u64,
    pub heartbeat_ticks: usize,
    pub election_ticks: usize,
    /// `Some((min, max))` pins the randomized election timeout range (the simulation uses it
    /// to stay deterministic); `None` lets raft-rs use `[election, 2 × election)`.
    pub election_range: Option<(usize, usize)>,
    /// How often lease pings go out.
    pub ping_interval_ms: u64,
    pub lease: LeaseSettings,
    pub leader: LeaderSettings,
    /// How long before the same command is proposed again.
    pub propose_retry_ms: u64,
    /// Compact the log once this many entries were applied since the last snapshot.
    pub compact_every: u64,
    /// Where a VIP without an interface of its own goes on this node.
    pub default_interface: String,
}

impl NodeSettings {
    /// Settings for node `pnn` from the cluster file's timings.
    pub fn from_timings(
        pnn: Pnn,
        heartbeat: Duration,
        election: Duration,
        lease: Duration,
        default_interface: String,
    ) -> NodeSettings {
        let heartbeat_ms = duration_ms(heartbeat).max(2);
        let tick_ms = (heartbeat_ms / 2).max(1);
        let election_ticks = usize::try_from(duration_ms(election) / tick_ms)
            .unwrap_or(usize::MAX)
            .max(3);
        let lease_ms = duration_ms(lease);
        NodeSettings {
            pnn,
            tick_ms,
            heartbeat_ticks: 2,
            election_ticks,
            election_range: None,
            ping_interval_ms: heartbeat_ms,
            lease: LeaseSettings::new(lease),
            leader: LeaderSettings {
                // Half a lease of silence: long enough to ride out a few lost pings, short
                // enough that fencing never delays a failover (revocation waits for the lease).
                disconnect_after_ms: (lease_ms / 2).max(3 * heartbeat_ms),
                unfence_after_ms: lease_ms / 2,
                release_timeout_ms: lease_ms * 2,
                hold_down_ms: 10_000,
            },
            propose_retry_ms: 3 * heartbeat_ms,
            compact_every: 1000,
            default_interface,
        }
    }
}

/// The node must stop: its log cannot be written or read.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("raft: {0}")]
    Raft(#[from] raft::Error),
    #[error("the replicated state cannot be read: {0}")]
    State(String),
}

/// A lease message between peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
enum LeaseMessage {
    Ping {
        generation: u64,
        seq: u64,
        reports: Vec<FenceReport>,
    },
    Ack {
        generation: u64,
        seq: u64,
    },
}

/// A learner whose log is within this many entries of the leader's commit index is caught up.
const CATCH_UP_SLACK: u64 = 16;

const TAG_RAFT: u8 = 1;
const TAG_LEASE: u8 = 2;

fn raft_id(pnn: Pnn) -> u64 {
    u64::from(pnn) + 1
}

/// The PNN of a raft id, if it is one.
pub fn pnn_of(id: u64) -> Option<Pnn> {
    id.checked_sub(1).and_then(|pnn| Pnn::try_from(pnn).ok())
}

/// One Raft peer with the cluster state, leases and leader duties.
pub struct NodeCore<S: LogStore> {
    settings: NodeSettings,
    raw: RawNode<S>,
    store: S,
    state: ClusterState,
    conf_state: ConfState,
    voters: BTreeSet<Pnn>,
    learners: BTreeSet<Pnn>,
    /// The membership step last proposed, and when.
    membership_proposed: Option<(MembershipStep, u64)>,
    /// A configuration change was applied: compact at the end of this `Ready`.
    compact_now: bool,
    snapshot_index: u64,
    applied: u64,
    next_tick_ms: u64,
    next_ping_ms: u64,
    lease: OwnerLease,
    acks: AckBook,
    fences: FenceTracker,
    last_heard_ms: BTreeMap<Pnn, u64>,
    connected_since_ms: BTreeMap<Pnn, u64>,
    available_since_ms: BTreeMap<Pnn, u64>,
    ever_available: BTreeSet<Pnn>,
    releasing_since_ms: BTreeMap<(IpAddr, u64), u64>,
    proposed_ms: HashMap<Command, u64>,
    health: Option<(bool, Vec<String>)>,
    configure: Option<Command>,
    outbox: Vec<(u64, Vec<u8>)>,
    now_ms: u64,
    now_unix_ms: u64,
}

impl<S: LogStore> std::fmt::Debug for NodeCore<S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeCore")
            .field("pnn", &self.settings.pnn)
            .field("applied", &self.applied)
            .finish_non_exhaustive()
    }
}

impl<S: LogStore> NodeCore<S> {
    /// Opens the node over `store`. On a first start `bootstrap` names the voters; a node that
    /// joins an existing cluster passes `None` and waits for the leader to contact it.
    /// `configure` is the `Configure` command from this node's cluster file: the leader
    /// proposes it whenever the replicated state was configured from different content.
    pub fn new(
        settings: NodeSettings,
        store: S,
        bootstrap: Option<&[Pnn]>,
        configure: Option<Command>,
        now_ms: u64,
        now_unix_ms: u64,
    ) -> Result<NodeCore<S>, NodeError> {
        if !store.is_initialized() {
            if let Some(voters) = bootstrap {
                let conf_state = ConfState {
                    voters: voters.iter().map(|pnn| raft_id(*pnn)).collect(),
                    ..ConfState::default()
                };
                store.initialize(&conf_state)?;
            }
        }
        let (snapshot_index, data) = store.snapshot_data();
        let state = ClusterState::from_snapshot(&data).map_err(NodeError::State)?;
        let conf_state = store.initial_state()?.conf_state;
        let mut config = raft::Config {
            id: raft_id(settings.pnn),
            election_tick: settings.election_ticks,
            heartbeat_tick: settings.heartbeat_ticks,
            applied: snapshot_index,
            max_size_per_msg: 1 << 20,
            max_inflight_msgs: 256,
            check_quorum: true,
            pre_vote: true,
            ..raft::Config::default()
        };
        if let Some((min, max)) = settings.election_range {
            config.min_election_tick = min;
            config.max_election_tick = max;
        }
        config.validate()?;
        let raw = RawNode::new(&config, store.clone(), &raft_logger(settings.pnn))?;
        let generation = state
            .members
            .get(&settings.pnn)
            .map_or(0, |member| member.generation);
        let mut lease = OwnerLease::new(settings.pnn, settings.lease.lease);
        lease.reset(generation);
        let voters = voters_of(&conf_state);
        let learners = learners_of(&conf_state);
        Ok(NodeCore {
            learners,
            membership_proposed: None,
            compact_now: false,
            acks: AckBook::new(now_ms, &settings.lease),
            lease,
            raw,
            store,
            state,
            conf_state,
            voters,
            snapshot_index,
            applied: snapshot_index,
            next_tick_ms: now_ms,
            next_ping_ms: now_ms,
            fences: FenceTracker::new(),
            last_heard_ms: BTreeMap::new(),
            connected_since_ms: BTreeMap::new(),
            available_since_ms: BTreeMap::new(),
            ever_available: BTreeSet::new(),
            releasing_since_ms: BTreeMap::new(),
            proposed_ms: HashMap::new(),
            health: None,
            configure,
            outbox: Vec::new(),
            now_ms,
            now_unix_ms,
            settings,
        })
    }

    /// This node's PNN.
    pub fn pnn(&self) -> Pnn {
        self.settings.pnn
    }

    /// The applied cluster state.
    pub fn state(&self) -> &ClusterState {
        &self.state
    }

    /// The voters of the applied configuration.
    pub fn voters(&self) -> &BTreeSet<Pnn> {
        &self.voters
    }

    /// The learners of the applied configuration (members catching up before they vote).
    pub fn learners(&self) -> &BTreeSet<Pnn> {
        &self.learners
    }

    /// Whether the applied state says this node was removed from the cluster.
    pub fn removed(&self) -> bool {
        self.state.was_removed(self.settings.pnn)
    }

    /// Whether this node is in the applied Raft configuration (as voter or learner).
    pub fn in_raft_configuration(&self) -> bool {
        self.voters.contains(&self.settings.pnn) || self.learners.contains(&self.settings.pnn)
    }

    /// The leader this node knows of.
    pub fn leader(&self) -> Option<Pnn> {
        match self.raw.raft.leader_id {
            raft::INVALID_ID => None,
            id => pnn_of(id),
        }
    }

    /// Whether this node is the Raft leader.
    pub fn is_leader(&self) -> bool {
        self.raw.raft.state == StateRole::Leader
    }

    /// The current term, commit index and applied index.
    pub fn raft_progress(&self) -> (u64, u64, u64) {
        (
            self.raw.raft.term,
            self.raw.raft.raft_log.committed,
            self.applied,
        )
    }

    /// Whether this node has heard from `node` recently enough to count it connected.
    pub fn connected(&self, node: Pnn) -> bool {
        leader::connected(
            self.settings.pnn,
            &self.last_heard_ms,
            self.now_ms,
            node,
            &self.settings.leader,
        )
    }

    /// The lease left at the last input.
    pub fn lease_left(&self) -> Duration {
        self.lease.left(self.now_ms)
    }

    /// The lease left at `now_ms` (a fresh clock reading, later than the last input): what an
    /// address may still be given right before the system call that adds or renews it.
    pub fn lease_left_at(&self, now_ms: u64) -> Duration {
        self.lease.left(now_ms.max(self.now_ms))
    }

    /// Records this node's own health; it is proposed when the state says otherwise.
    pub fn set_health(&mut self, healthy: bool, failing: Vec<String>) {
        self.health = Some((healthy, failing));
    }

    /// Updates the clock without doing any work. Call it before [`NodeCore::receive`]: acks are
    /// stamped with this time, and a stale (early) stamp would understate how long an ack may
    /// still support a lease.
    pub fn set_time(&mut self, now_ms: u64, now_unix_ms: u64) {
        self.now_ms = self.now_ms.max(now_ms);
        self.now_unix_ms = now_unix_ms;
    }

    /// Advances time: ticks Raft, sends lease pings, and does the leader's work.
    pub fn tick(&mut self, now_ms: u64, now_unix_ms: u64) {
        self.set_time(now_ms, now_unix_ms);
        let now = self.now_ms;
        // After a long pause, do not replay every missed tick: a burst of ticks would only
        // start an election at once.
        let mut ticks = 0;
        while self.next_tick_ms <= now && ticks < self.settings.election_ticks {
            self.raw.tick();
            self.next_tick_ms += self.settings.tick_ms;
            ticks += 1;
        }
        if self.next_tick_ms <= now {
            self.next_tick_ms = now + self.settings.tick_ms;
        }
        self.observe();
        if now >= self.next_ping_ms {
            self.next_ping_ms = now + self.settings.ping_interval_ms;
            self.ping();
        }
        self.propose_own_changes();
        if self.is_leader() {
            self.lead();
        }
    }

    /// Handles one payload from peer `from` (a raft id, as the transport authenticated it).
    pub fn receive(&mut self, from: u64, payload: &[u8]) {
        let Some(peer) = pnn_of(from) else { return };
        let Some((&tag, body)) = payload.split_first() else {
            tracing::warn!(peer, "empty peer message dropped");
            return;
        };
        match tag {
            TAG_RAFT => match Message::parse_from_bytes(body) {
                Ok(message) if message.from == from => {
                    self.heard(peer);
                    if let Err(error) = self.raw.step(message) {
                        tracing::debug!(peer, %error, "raft message not taken");
                    }
                }
                Ok(message) => tracing::warn!(
                    peer,
                    claimed = message.from,
                    "raft message claiming another sender dropped"
                ),
                Err(error) => tracing::warn!(peer, %error, "malformed raft message dropped"),
            },
            TAG_LEASE => match serde_json::from_slice::<LeaseMessage>(body) {
                Ok(message) => {
                    self.heard(peer);
                    self.lease_message(peer, message);
                }
                Err(error) => tracing::warn!(peer, %error, "malformed lease message dropped"),
            },
            _ => tracing::warn!(peer, tag, "peer message of unknown kind dropped"),
        }
    }

    /// The transport could not deliver to `peer` (a raft id).
    pub fn unreachable(&mut self, peer: u64) {
        self.raw.report_unreachable(peer);
    }

    /// Persists and applies what Raft has ready; call after every input.
    pub fn process_ready(&mut self) -> Result<(), NodeError> {
        if !self.raw.has_ready() {
            return Ok(());
        }
        let mut ready = self.raw.ready();
        self.send_raft(ready.take_messages());
        let snapshot = (!ready.snapshot().is_empty()).then(|| ready.snapshot().clone());
        let hard_state = ready.hs().cloned();
        self.store
            .persist(snapshot.as_ref(), ready.entries(), hard_state.as_ref())?;
        if let Some(snapshot) = snapshot {
            self.state =
                ClusterState::from_snapshot(snapshot.get_data()).map_err(NodeError::State)?;
            self.conf_state = snapshot.get_metadata().get_conf_state().clone();
            self.voters = voters_of(&self.conf_state);
            self.learners = learners_of(&self.conf_state);
            self.snapshot_index = snapshot.get_metadata().index;
            self.applied = self.snapshot_index;
        }
        self.apply_entries(ready.take_committed_entries())?;
        self.send_raft(ready.take_persisted_messages());
        let mut light = self.raw.advance(ready);
        if let Some(commit) = light.commit_index() {
            self.store.set_commit(commit)?;
        }
        self.send_raft(light.take_messages());
        self.apply_entries(light.take_committed_entries())?;
        self.raw.advance_apply();
        // After a configuration change the log is compacted at once: a node that joins must
        // start from a snapshot whose configuration names it (raft-rs refuses any other), and
        // entries from index 1 would lack the bootstrap configuration, which only snapshots
        // carry.
        let compact_now =
            std::mem::take(&mut self.compact_now) && self.applied > self.snapshot_index;
        if compact_now || self.applied >= self.snapshot_index + self.settings.compact_every {
            self.store
                .compact(self.applied, &self.conf_state, self.state.to_snapshot())?;
            self.snapshot_index = self.applied;
        }
        Ok(())
    }

    /// Payloads to send, by raft id.
    pub fn take_outbox(&mut self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut self.outbox)
    }

    /// The VIPs the kernel should have now: those the applied state gives this node, while its
    /// lease runs, each with the lease left.
    pub fn held(&self) -> Vec<HeldVip> {
        let lease_left = self.lease.left(self.now_ms);
        let me = self.settings.pnn;
        let Some(member) = self.state.members.get(&me) else {
            return Vec::new();
        };
        if lease_left.is_zero() || member.fenced || member.generation != self.lease.generation() {
            return Vec::new();
        }
        self.state
            .held_by(me)
            .filter_map(|(address, vip)| {
                Some(HeldVip {
                    address: IpNet::new(*address, vip.prefix_len).ok()?,
                    interface: vip
                        .interface
                        .clone()
                        .unwrap_or_else(|| self.settings.default_interface.clone()),
                    lease_left,
                })
            })
            .collect()
    }

    /// Tells the core which VIPs the kernel has after the caller reconciled it; releases whose
    /// address is gone, and assignments whose address is there, are confirmed to the cluster.
    pub fn kernel_has(&mut self, present: &BTreeSet<IpAddr>) {
        let me = self.settings.pnn;
        let confirmations: Vec<Command> = self
            .state
            .vips
            .iter()
            .filter(|(_, vip)| vip.owner == Some(me))
            .filter_map(|(address, vip)| match vip.phase {
                VipPhase::Releasing if !present.contains(address) => Some(Command::Released {
                    vip: *address,
                    epoch: vip.epoch,
                    by: me,
                }),
                VipPhase::Held if !vip.applied && present.contains(address) => {
                    Some(Command::Applied {
                        vip: *address,
                        epoch: vip.epoch,
                        by: me,
                    })
                }
                _ => None,
            })
            .collect();
        for command in confirmations {
            self.propose(command);
        }
    }

    /// Proposes an operator's command (disable, ban, moveip...). It is forwarded to the
    /// leader; the caller watches the applied state to see it take effect.
    pub fn propose_command(&mut self, command: Command) -> Result<(), String> {
        self.raw
            .propose(Vec::new(), encode_command(&command))
            .map_err(|error| format!("the cluster did not take the command: {error}"))
    }

    fn heard(&mut self, peer: Pnn) {
        self.last_heard_ms.insert(peer, self.now_ms);
    }

    fn observations(&self) -> Observations {
        let mut fence_safe_at_ms = BTreeMap::new();
        for (&pnn, member) in &self.state.members {
            if member.fenced {
                if let Some(safe_at) = self.fences.safe_at(pnn, member.generation, &self.voters) {
                    fence_safe_at_ms.insert((pnn, member.generation), safe_at);
                }
            }
        }
        Observations {
            now_ms: self.now_ms,
            now_unix_ms: self.now_unix_ms,
            me: self.settings.pnn,
            voters: self.voters.clone(),
            last_heard_ms: self.last_heard_ms.clone(),
            connected_since_ms: self.connected_since_ms.clone(),
            available_since_ms: self.available_since_ms.clone(),
            ever_available: self.ever_available.clone(),
            releasing_since_ms: self.releasing_since_ms.clone(),
            fence_safe_at_ms,
        }
    }

    /// Updates what this node observes of the others, on every node, so that a new leader
    /// starts with a full picture.
    fn observe(&mut self) {
        let now = self.now_ms;
        let me = self.settings.pnn;
        // A peer never heard from since this node started gets one disconnect period of grace.
        for &pnn in self.state.members.keys() {
            if pnn != me {
                self.last_heard_ms.entry(pnn).or_insert(now);
            }
        }
        let observed = self.observations();
        let settings = self.settings.leader;
        let members: Vec<Pnn> = self.state.members.keys().copied().collect();
        for pnn in members {
            if observed.connected(pnn, &settings) {
                self.connected_since_ms.entry(pnn).or_insert(now);
            } else {
                self.connected_since_ms.remove(&pnn);
            }
            // The hold-down is for nodes that come *back*. A node this observer sees available
            // for the first time is settled at once only if it was never fenced (generation 0:
            // a new cluster balances immediately); a node that returned from a fence is held
            // down even by an observer that started after it returned — a restarted leader
            // must not hand VIPs straight back to a node that just thawed.
            if leader::may_host(&self.state, &observed, &settings, pnn) {
                if !self.available_since_ms.contains_key(&pnn) {
                    let never_fenced = self
                        .state
                        .members
                        .get(&pnn)
                        .is_some_and(|member| member.generation == 0);
                    let since = if self.ever_available.insert(pnn) && never_fenced {
                        now.saturating_sub(self.settings.leader.hold_down_ms)
                    } else {
                        now
                    };
                    self.available_since_ms.insert(pnn, since);
                }
            } else {
                self.available_since_ms.remove(&pnn);
            }
        }
        let releasing: BTreeSet<(IpAddr, u64)> = self
            .state
            .vips
            .iter()
            .filter(|(_, vip)| vip.phase == VipPhase::Releasing)
            .map(|(address, vip)| (*address, vip.epoch))
            .collect();
        self.releasing_since_ms
            .retain(|key, _| releasing.contains(key));
        for key in releasing {
            self.releasing_since_ms.entry(key).or_insert(now);
        }
        // This node's own reports about fenced peers count like anyone's.
        let reports = self.fence_reports();
        for report in &reports {
            self.fences.record(me, report, now, &self.settings.lease);
        }
        let retry = self.settings.propose_retry_ms;
        self.proposed_ms
            .retain(|_, proposed| now.saturating_sub(*proposed) < retry);
    }

    fn fence_reports(&self) -> Vec<FenceReport> {
        self.state
            .members
            .iter()
            .filter(|(pnn, member)| member.fenced && **pnn != self.settings.pnn)
            .map(|(pnn, member)| FenceReport {
                node: *pnn,
                generation: member.generation,
                remaining_ms: duration_ms(self.acks.remaining(*pnn, self.now_ms)),
            })
            .collect()
    }

    /// Sends a lease ping to every other member.
    fn ping(&mut self) {
        let me = self.settings.pnn;
        let (generation, self_ack) = match self.state.members.get(&me) {
            Some(member) => (
                member.generation,
                !member.fenced && self.voters.contains(&me),
            ),
            None => (0, false),
        };
        if generation != self.lease.generation() {
            self.lease.reset(generation);
        }
        let seq = self.lease.ping(self.now_ms, self_ack);
        let message = LeaseMessage::Ping {
            generation,
            seq,
            reports: self.fence_reports(),
        };
        let peers: Vec<Pnn> = self
            .state
            .members
            .keys()
            .chain(self.voters.iter())
            .copied()
            .filter(|pnn| *pnn != me)
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        for peer in peers {
            self.send_lease(peer, &message);
        }
        // A single-voter cluster acks itself.
        if self.voters.len() == 1 && self_ack {
            self.lease.ack(me, seq, generation, &self.voters);
        }
    }

    fn lease_message(&mut self, peer: Pnn, message: LeaseMessage) {
        match message {
            LeaseMessage::Ping {
                generation,
                seq,
                reports,
            } => {
                for report in &reports {
                    self.fences
                        .record(peer, report, self.now_ms, &self.settings.lease);
                }
                let acked = self
                    .state
                    .members
                    .get(&peer)
                    .is_some_and(|member| !member.fenced && member.generation == generation);
                if acked {
                    self.acks.acked(peer, self.now_ms);
                    self.send_lease(peer, &LeaseMessage::Ack { generation, seq });
                }
            }
            LeaseMessage::Ack { generation, seq } => {
                self.lease.ack(peer, seq, generation, &self.voters);
            }
        }
    }

    /// Proposes what this node says about itself: its health.
    fn propose_own_changes(&mut self) {
        let me = self.settings.pnn;
        let Some((healthy, failing)) = self.health.clone() else {
            return;
        };
        let differs = self
            .state
            .members
            .get(&me)
            .is_some_and(|member| member.healthy != healthy || member.failing != failing);
        if differs {
            self.propose(Command::SetHealth {
                node: me,
                healthy,
                failing,
            });
        }
    }

    fn lead(&mut self) {
        if let Some(Command::Configure { digest, .. }) = &self.configure {
            if self.state.config_digest.as_ref() != Some(digest) {
                if let Some(configure) = self.configure.clone() {
                    self.propose(configure);
                }
            }
        }
        let commands = leader::decide(&self.state, &self.observations(), &self.settings.leader);
        for command in commands {
            self.propose(command);
        }
        self.reconcile_membership();
    }

    /// Takes the next step from the replicated membership toward the Raft configuration.
    fn reconcile_membership(&mut self) {
        if self.raw.raft.has_pending_conf() {
            return;
        }
        let committed = self.raw.raft.raft_log.committed;
        let caught_up: BTreeSet<Pnn> = self
            .learners
            .iter()
            .copied()
            .filter(|pnn| {
                self.raw
                    .raft
                    .prs()
                    .get(raft_id(*pnn))
                    .is_some_and(|progress| {
                        progress.recent_active && progress.matched + CATCH_UP_SLACK >= committed
                    })
            })
            .collect();
        let Some(step) =
            leader::membership_step(&self.state, &self.voters, &self.learners, &caught_up)
        else {
            return;
        };
        if let Some((last, at)) = self.membership_proposed {
            if last == step && self.now_ms.saturating_sub(at) < self.settings.propose_retry_ms {
                return;
            }
        }
        self.membership_proposed = Some((step, self.now_ms));
        let change = |change_type: ConfChangeType, pnn: Pnn| ConfChange {
            change_type,
            node_id: raft_id(pnn),
            ..ConfChange::default()
        };
        let result = match step {
            MembershipStep::Forget(node) => {
                self.propose(Command::ForgetMember { node });
                return;
            }
            MembershipStep::RemovePeer(pnn) if pnn == self.settings.pnn => {
                // raft-rs keeps a removed leader leading; hand over first, and the next leader
                // removes this node.
                let successor = self
                    .voters
                    .iter()
                    .copied()
                    .filter(|voter| *voter != pnn)
                    .max_by_key(|voter| {
                        self.raw
                            .raft
                            .prs()
                            .get(raft_id(*voter))
                            .map_or(0, |progress| progress.matched)
                    });
                if let Some(successor) = successor {
                    tracing::info!(successor, "this node is leaving: handing leadership over");
                    self.raw.transfer_leader(raft_id(successor));
                }
                return;
            }
            MembershipStep::RemovePeer(pnn) => self
                .raw
                .propose_conf_change(Vec::new(), change(ConfChangeType::RemoveNode, pnn)),
            MembershipStep::AddLearner(pnn) => self
                .raw
                .propose_conf_change(Vec::new(), change(ConfChangeType::AddLearnerNode, pnn)),
            MembershipStep::Promote(pnn) => self
                .raw
                .propose_conf_change(Vec::new(), change(ConfChangeType::AddNode, pnn)),
        };
        match result {
            Ok(()) => tracing::info!(?step, "proposed a raft configuration change"),
            Err(error) => tracing::debug!(?step, %error, "configuration change not proposed"),
        }
    }

    /// Proposes `command` unless the same was proposed moments ago.
    fn propose(&mut self, command: Command) {
        if self.proposed_ms.contains_key(&command) {
            return;
        }
        let data = encode_command(&command);
        match self.raw.propose(Vec::new(), data) {
            Ok(()) => {
                tracing::debug!(?command, "proposed");
                self.proposed_ms.insert(command, self.now_ms);
            }
            Err(error) => tracing::debug!(?command, %error, "proposal dropped"),
        }
    }

    fn apply_entries(&mut self, entries: Vec<Entry>) -> Result<(), NodeError> {
        for entry in entries {
            self.applied = self.applied.max(entry.index);
            if entry.data.is_empty() {
                continue;
            }
            match entry.get_entry_type() {
                EntryType::EntryNormal => match decode_command(&entry.data) {
                    Ok(command) => {
                        if let Outcome::Rejected(reason) = self.state.apply(&command) {
                            tracing::debug!(?command, reason, "command rejected");
                        } else {
                            tracing::debug!(?command, "applied");
                        }
                    }
                    Err(error) => tracing::error!(index = entry.index, error, "skipping entry"),
                },
                EntryType::EntryConfChange => {
                    let change = ConfChange::parse_from_bytes(&entry.data)
                        .map_err(|error| NodeError::State(error.to_string()))?;
                    let conf_state = self.raw.apply_conf_change(&change)?;
                    self.conf_state_changed(conf_state)?;
                }
                EntryType::EntryConfChangeV2 => {
                    let change = ConfChangeV2::parse_from_bytes(&entry.data)
                        .map_err(|error| NodeError::State(error.to_string()))?;
                    let conf_state = self.raw.apply_conf_change(&change)?;
                    self.conf_state_changed(conf_state)?;
                }
            }
        }
        Ok(())
    }

    fn conf_state_changed(&mut self, conf_state: ConfState) -> Result<(), NodeError> {
        self.store.set_conf_state(&conf_state)?;
        tracing::info!(
            voters = ?voters_of(&conf_state),
            learners = ?learners_of(&conf_state),
            "raft configuration changed"
        );
        self.voters = voters_of(&conf_state);
        self.learners = learners_of(&conf_state);
        self.conf_state = conf_state;
        self.compact_now = true;
        Ok(())
    }

    fn send_raft(&mut self, messages: Vec<Message>) {
        for message in messages {
            match message.write_to_bytes() {
                Ok(bytes) => {
                    let mut payload = Vec::with_capacity(bytes.len() + 1);
                    payload.push(TAG_RAFT);
                    payload.extend(bytes);
                    self.outbox.push((message.to, payload));
                }
                Err(error) => tracing::error!(%error, "cannot encode a raft message"),
            }
        }
    }

    fn send_lease(&mut self, peer: Pnn, message: &LeaseMessage) {
        let mut payload = vec![TAG_LEASE];
        if serde_json::to_writer(&mut payload, message).is_ok() {
            self.outbox.push((raft_id(peer), payload));
        }
    }
}

fn voters_of(conf_state: &ConfState) -> BTreeSet<Pnn> {
    conf_state
        .voters
        .iter()
        .filter_map(|id| pnn_of(*id))
        .collect()
}

fn learners_of(conf_state: &ConfState) -> BTreeSet<Pnn> {
    conf_state
        .learners
        .iter()
        .filter_map(|id| pnn_of(*id))
        .collect()
}

/// raft-rs logs through slog; this drain hands its records to `tracing`.
struct TracingDrain {
    pnn: Pnn,
}

struct KeyValues(String);

impl slog::Serializer for KeyValues {
    fn emit_arguments(&mut self, key: slog::Key, value: &std::fmt::Arguments<'_>) -> slog::Result {
        let _ = write!(self.0, " {key}={value}");
        Ok(())
    }
}

impl slog::Drain for TracingDrain {
    type Ok = ();
    type Err = slog::Never;

    fn log(
        &self,
        record: &slog::Record<'_>,
        values: &slog::OwnedKVList,
    ) -> Result<(), slog::Never> {
        use slog::KV as _;
        let mut fields = KeyValues(String::new());
        let _ = record.kv().serialize(record, &mut fields);
        let _ = values.serialize(record, &mut fields);
        let pnn = self.pnn;
        match record.level() {
            slog::Level::Critical | slog::Level::Error => {
                tracing::error!(target: "raft", pnn, "{}{}", record.msg(), fields.0);
            }
            slog::Level::Warning => {
                tracing::warn!(target: "raft", pnn, "{}{}", record.msg(), fields.0)
            }
            slog::Level::Info => {
                tracing::info!(target: "raft", pnn, "{}{}", record.msg(), fields.0)
            }
            slog::Level::Debug | slog::Level::Trace => {
                tracing::trace!(target: "raft", pnn, "{}{}", record.msg(), fields.0);
            }
        }
        Ok(())
    }
}

fn raft_logger(pnn: Pnn) -> slog::Logger {
    slog::Logger::root(TracingDrain { pnn }, slog::o!())
}
