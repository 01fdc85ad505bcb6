//! VIP placement: the pure function that decides which node should host each virtual IP.
//!
//! The Raft leader calls [`place`] whenever the cluster state changes, commits the resulting
//! [`Placement`], and the owners apply it. Placement does no I/O, reads no clock and draws no
//! random numbers: everything it knows arrives in a [`ClusterView`] and the current owners, so
//! the same input always gives the same output. It decides only *where VIPs should be*; lease
//! safety (waiting until an old owner's lease has surely expired before its VIP is handed to
//! someone else, DESIGN.md invariant 1) is the caller's job. Addresses, and so IPv4 versus IPv6,
//! play no part here: a VIP is an identifier with a weight and a node list.
//!
//! # Terms
//!
//! * A node is **available** when it is known in the view and [`NodeState::may_host`] holds:
//!   healthy, connected, not disabled and not banned. Nodes that the view does not list (an
//!   owner or an eligible list may name one) are unavailable.
//! * An available node is **in hold-down** while `now_ms - available_since_ms < hold_down_ms`
//!   (an `available_since_ms` later than `now_ms` counts as "just now"); otherwise it is
//!   **settled**. [`Placement::hold_down_ends_at_ms`] tells the caller when to call again.
//! * A VIP **allows** a node when its eligible list is `None` or names that node. A node is a
//!   **valid host** of a VIP when it is available and allowed.
//! * A node is a **last-resort host** of a VIP that has no valid host when it is allowed and
//!   [`NodeState::may_host_as_last_resort`] holds: connected, not disabled and not banned, but
//!   unhealthy. An unhealthy node serves worse than a healthy one, but better than nobody
//!   (CTDB hosts addresses on unhealthy nodes the same way when every node is unhealthy).
//! * The **weight** of a VIP is [`VipSpec::weight`], where 0 is read as 1 (the configuration
//!   validator rejects 0; reading it as 1 keeps placement total). A node's **load** is the sum of
//!   the weights of the VIPs it hosts.
//!
//! # Rules (the contract)
//!
//! 1. **Hosted when possible.** Every VIP with at least one valid host is hosted by a valid
//!    host. A VIP whose owner is not a valid host moves (reason [`MoveReason::OwnerUnavailable`]
//!    when the owner is unavailable or unknown, [`MoveReason::OwnerIneligible`] when it is
//!    available but not allowed); an unhosted VIP is placed ([`MoveReason::Unhosted`]); a VIP
//!    with no valid host goes to a last-resort host (the owner, if it is one; otherwise the
//!    least loaded, then the lowest [`NodeId`]), and is unhosted only when there is none either
//!    ([`MoveReason::NoEligibleNode`] if it had an owner). So an unhealthy node hosts a VIP only
//!    while no healthy node may, and gives it up as soon as one may (rule 1 moves it, reason
//!    [`MoveReason::OwnerUnavailable`]). Last-resort hosts are never rebalance targets.
//!    Owners of VIPs that the view does not configure are told to drop them
//!    ([`MoveReason::Unconfigured`]); such VIPs do not appear in the assignment.
//! 2. **Balanced after weights.** For every hosted VIP `v` of weight `w` on node `a` and every
//!    other settled node `b` that `v` allows: `load(a) - load(b) <= w`, that is, no single
//!    move of one VIP onto a settled node lowers the higher of the two loads. With unit weights
//!    and no node lists this is exactly `max - min <= 1` over settled nodes. Nodes in hold-down
//!    are never targets of a [`MoveReason::Rebalance`] move and are not compared in this rule.
//!    A VIP that must move anyway (rule 1) goes to a settled valid host when one exists and to
//!    a node in hold-down only when every valid host is in hold-down, because leaving the VIP
//!    unhosted would be worse than trusting a node that has just come back. Once a hold-down
//!    ends, the next call rebalances onto that node.
//! 3. **Sticky and minimal.** A VIP moves only for a reason of rule 1 or as part of an
//!    improving rebalance; a VIP whose owner is a valid host keeps it unless a rebalance moves
//!    it. Rebalancing takes, one at a time, the improving move (a VIP onto a settled allowed node
//!    with `load(a) - load(b) > w`) that lowers the sum of squared loads the most, so it stops
//!    after few moves; a VIP moved twice is reported once, from its original owner to its final
//!    node. This is minimal in the greedy sense, not always optimal: against a brute-force
//!    search on small clusters it was optimal for unit weights and one move over in about 0.1 %
//!    of weighted cases with node lists. The result satisfies rules 1 and 2, so placing again on
//!    it moves nothing.
//! 4. **Deterministic.** All inputs are ordered maps and ties are broken explicitly. VIPs that
//!    must move are placed most constrained first (fewest candidate nodes), then heaviest,
//!    then by lowest [`VipId`]; each goes to the candidate with the lowest load, then the lowest
//!    [`NodeId`]. Among rebalance moves of equal
//!    benefit one that leaves an operator's VIP ([`ClusterView::pinned`]) in place wins, then
//!    the one that adds fewest net moves (moving a VIP that is moving anyway, or
//!    back to where it was, costs nothing), then the lowest `VipId`, then the lowest target
//!    load and `NodeId`. [`Placement::moves`] is sorted by `VipId`.
//! 5. **No failback flapping.** A node that returns gets VIPs back only through rule 2 once its
//!    hold-down has ended (or under rule 1 when no settled valid host exists).
//!
//! Rebalancing stops after `4 × VIPs × nodes + 16` steps as a guard against pathological
//! weights (DESIGN.md invariant 7: bounded work on any input). Measured runs, up to 300 VIPs on
//! 30 nodes with weights up to 4·10⁹, needed fewer steps than there were VIPs; if the guard were
//! ever reached the result would still satisfy rule 1 and the next call would continue
//! balancing.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;

/// A cluster node, as numbered by the cluster configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub u32);

/// A virtual IP, as numbered by the cluster configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct VipId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

impl fmt::Display for VipId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "v{}", self.0)
    }
}

/// What the leader knows about one node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeState {
    /// The node's own health checks pass.
    pub healthy: bool,
    /// The node is in contact with the quorum.
    pub connected: bool,
    /// An operator disabled the node (ctdb `disable`).
    pub disabled: bool,
    /// The cluster banned the node for misbehaving (ctdb ban).
    pub banned: bool,
    /// When [`NodeState::may_host`] last became true, in the leader's milliseconds.
    pub available_since_ms: u64,
}

impl NodeState {
    /// A healthy, connected, enabled node that became available at `available_since_ms`.
    pub fn available_since(available_since_ms: u64) -> Self {
        NodeState {
            healthy: true,
            connected: true,
            disabled: false,
            banned: false,
            available_since_ms,
        }
    }

    /// Whether the node may host VIPs now. This is the one place where the flags are folded
    /// together, so a new flag cannot be forgotten in one caller and honoured in another.
    pub fn may_host(&self) -> bool {
        self.healthy && self.connected && !self.disabled && !self.banned
    }

    /// Whether the node may host a VIP that no node may host by [`NodeState::may_host`]: it
    /// is unhealthy, but connected, not disabled and not banned.
    pub fn may_host_as_last_resort(&self) -> bool {
        !self.healthy && self.connected && !self.disabled && !self.banned
    }
}

/// What placement needs to know about one VIP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VipSpec {
    /// The nodes that may host this VIP; `None` means every node.
    pub eligible: Option<BTreeSet<NodeId>>,
    /// The VIP's share of a node's load, at least 1 (0 is read as 1).
    pub weight: u32,
}

impl VipSpec {
    /// A VIP of the given weight that any node may host.
    pub fn anywhere(weight: u32) -> Self {
        VipSpec {
            eligible: None,
            weight,
        }
    }

    /// Whether the VIP's node list lets `node` host it.
    pub fn allows(&self, node: NodeId) -> bool {
        self.eligible
            .as_ref()
            .is_none_or(|eligible| eligible.contains(&node))
    }

    /// The weight used for load, where 0 counts as 1 so that moving a VIP always changes loads
    /// (a weightless VIP would make every rebalance move look free and never settle).
    fn load_weight(&self) -> u64 {
        u64::from(self.weight.max(1))
    }
}

/// Everything placement reads besides the current owners: a snapshot of the cluster at `now_ms`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClusterView {
    pub nodes: BTreeMap<NodeId, NodeState>,
    pub vips: BTreeMap<VipId, VipSpec>,
    /// The leader's clock when the snapshot was taken, in milliseconds.
    pub now_ms: u64,
    /// How long a node must have been available before rebalancing moves VIPs onto it.
    pub hold_down_ms: u64,
    /// VIPs an operator placed (`vipgate moveip`): among rebalance moves of equal benefit, one
    /// that leaves them where they are wins, so a move that unbalances the cluster is answered
    /// by moving another VIP, not by undoing the operator's.
    pub pinned: BTreeSet<VipId>,
}

/// Where a node stands for placement purposes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Standing {
    Unavailable,
    HoldDown,
    Settled,
}

impl ClusterView {
    fn standing(&self, node: NodeId) -> Standing {
        match self.nodes.get(&node) {
            Some(state) if state.may_host() => {
                let available_for = self.now_ms.saturating_sub(state.available_since_ms);
                if available_for < self.hold_down_ms {
                    Standing::HoldDown
                } else {
                    Standing::Settled
                }
            }
            _ => Standing::Unavailable,
        }
    }

    fn is_available(&self, node: NodeId) -> bool {
        self.standing(node) != Standing::Unavailable
    }

    /// The valid hosts of a VIP, split into settled nodes and nodes in hold-down, each in
    /// `NodeId` order.
    fn valid_hosts(&self, spec: &VipSpec) -> (Vec<NodeId>, Vec<NodeId>) {
        let mut settled = Vec::new();
        let mut held_down = Vec::new();
        for &node in self.nodes.keys() {
            if !spec.allows(node) {
                continue;
            }
            match self.standing(node) {
                Standing::Settled => settled.push(node),
                Standing::HoldDown => held_down.push(node),
                Standing::Unavailable => {}
            }
        }
        (settled, held_down)
    }

    /// The last-resort hosts of a VIP, in `NodeId` order: empty while it has a valid host.
    fn last_resort_hosts(&self, spec: &VipSpec) -> Vec<NodeId> {
        let (settled, held_down) = self.valid_hosts(spec);
        if !settled.is_empty() || !held_down.is_empty() {
            return Vec::new();
        }
        self.nodes
            .iter()
            .filter(|(node, state)| state.may_host_as_last_resort() && spec.allows(**node))
            .map(|(node, _)| *node)
            .collect()
    }

    /// The earliest time after `now_ms` at which an available node leaves hold-down.
    fn next_hold_down_end(&self) -> Option<u64> {
        self.nodes
            .iter()
            .filter(|(node, _)| self.standing(**node) == Standing::HoldDown)
            .map(|(_, state)| state.available_since_ms.saturating_add(self.hold_down_ms))
            .min()
    }
}

/// VIP → node that should host it (`None`: nobody can).
pub type Assignment = BTreeMap<VipId, Option<NodeId>>;

/// Why a VIP moves.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum MoveReason {
    /// The VIP had no owner and a valid (or last-resort) host exists.
    Unhosted,
    /// The owner is unavailable (unhealthy, disconnected, disabled, banned or unknown).
    OwnerUnavailable,
    /// The owner is available but not on the VIP's node list.
    OwnerIneligible,
    /// The owner was valid, but moving the VIP improves the balance (rule 2).
    Rebalance,
    /// The owner is no longer valid and no valid or last-resort host exists: the VIP is
    /// dropped.
    NoEligibleNode,
    /// The VIP is not configured any more: its owner drops it.
    Unconfigured,
}

impl fmt::Display for MoveReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            MoveReason::Unhosted => "unhosted",
            MoveReason::OwnerUnavailable => "owner-unavailable",
            MoveReason::OwnerIneligible => "owner-ineligible",
            MoveReason::Rebalance => "rebalance",
            MoveReason::NoEligibleNode => "no-eligible-node",
            MoveReason::Unconfigured => "unconfigured",
        })
    }
}

/// One change of ownership decided by [`place`]; `from != to` always.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Move {
    pub vip: VipId,
    pub from: Option<NodeId>,
    pub to: Option<NodeId>,
    pub reason: MoveReason,
}

impl fmt::Display for Move {
    /// Renders `v2: n2 -> n3 (owner-unavailable)`, with `-` for nobody.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fn side(node: Option<NodeId>) -> String {
            node.map_or_else(|| "-".to_owned(), |node| node.to_string())
        }
        write!(
            f,
            "{}: {} -> {} ({})",
            self.vip,
            side(self.from),
            side(self.to),
            self.reason
        )
    }
}

/// The result of [`place`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Placement {
    /// Every configured VIP and the node that should host it.
    pub assignment: Assignment,
    /// The changes from the current owners to `assignment`, sorted by VIP.
    pub moves: Vec<Move>,
    /// When the earliest hold-down ends; the caller should place again then, since rule 2 may
    /// then move VIPs onto that node.
    pub hold_down_ends_at_ms: Option<u64>,
}

impl Placement {
    /// The hosted part of the assignment, in the shape [`place`] takes as current owners.
    pub fn owners(&self) -> BTreeMap<VipId, NodeId> {
        self.assignment
            .iter()
            .filter_map(|(vip, node)| node.map(|node| (*vip, node)))
            .collect()
    }
}

/// Decides where every configured VIP should be, given the current owners (VIPs absent from
/// `owners` are unhosted). See the module documentation for the rules.
pub fn place(view: &ClusterView, owners: &BTreeMap<VipId, NodeId>) -> Placement {
    let mut assignment = Assignment::new();
    let mut loads: BTreeMap<NodeId, u64> = BTreeMap::new();
    let mut must_move: BTreeMap<VipId, MoveReason> = BTreeMap::new();

    // Rule 1, first half: keep every VIP whose owner is a valid host, note the others.
    for (&vip, spec) in &view.vips {
        match owners.get(&vip) {
            Some(&owner) if view.is_available(owner) && spec.allows(owner) => {
                assignment.insert(vip, Some(owner));
                add_load(&mut loads, owner, spec.load_weight());
            }
            Some(&owner) if view.last_resort_hosts(spec).contains(&owner) => {
                assignment.insert(vip, Some(owner));
                add_load(&mut loads, owner, spec.load_weight());
            }
            Some(&owner) => {
                let reason = if view.is_available(owner) {
                    MoveReason::OwnerIneligible
                } else {
                    MoveReason::OwnerUnavailable
                };
                must_move.insert(vip, reason);
            }
            None => {
                must_move.insert(vip, MoveReason::Unhosted);
            }
        }
    }

    // Rule 1, second half: place the VIPs that must move. The most constrained go first, so
    // that a VIP with few possible hosts is not crowded out by one that could go anywhere; among
    // equals the heaviest go first, so that the light ones fill the gaps the heavy ones leave
    // (longest-processing-time order).
    let mut to_place: Vec<(VipId, &VipSpec, Vec<NodeId>)> = must_move
        .keys()
        .filter_map(|vip| view.vips.get(vip).map(|spec| (*vip, spec)))
        .map(|(vip, spec)| {
            let (settled, held_down) = view.valid_hosts(spec);
            let candidates = if !settled.is_empty() {
                settled
            } else if !held_down.is_empty() {
                held_down
            } else {
                view.last_resort_hosts(spec)
            };
            (vip, spec, candidates)
        })
        .collect();
    to_place.sort_by_key(|(vip, spec, candidates)| {
        (
            candidates.len(),
            std::cmp::Reverse(spec.load_weight()),
            *vip,
        )
    });
    for (vip, spec, candidates) in to_place {
        let target = candidates
            .into_iter()
            .min_by_key(|node| (load_of(&loads, *node), *node));
        if let Some(node) = target {
            add_load(&mut loads, node, spec.load_weight());
        }
        assignment.insert(vip, target);
    }

    rebalance(view, owners, &mut assignment, &mut loads);

    let mut moves = Vec::new();
    for (&vip, &to) in &assignment {
        let from = owners.get(&vip).copied();
        if from == to {
            continue;
        }
        let reason = match (must_move.get(&vip), to) {
            (Some(_), None) => MoveReason::NoEligibleNode,
            (Some(reason), Some(_)) => *reason,
            (None, _) => MoveReason::Rebalance,
        };
        moves.push(Move {
            vip,
            from,
            to,
            reason,
        });
    }
    for (&vip, &owner) in owners {
        if !view.vips.contains_key(&vip) {
            moves.push(Move {
                vip,
                from: Some(owner),
                to: None,
                reason: MoveReason::Unconfigured,
            });
        }
    }
    moves.sort_by_key(|one_move| one_move.vip);

    Placement {
        assignment,
        moves,
        hold_down_ends_at_ms: view.next_hold_down_end(),
    }
}

/// Applies improving moves until none is left (rule 2), best first (rule 3).
fn rebalance(
    view: &ClusterView,
    owners: &BTreeMap<VipId, NodeId>,
    assignment: &mut Assignment,
    loads: &mut BTreeMap<NodeId, u64>,
) {
    // Only settled nodes are rebalance targets, and a VIP's targets do not change while
    // rebalancing, so they are computed once.
    let targets: BTreeMap<VipId, Vec<NodeId>> = view
        .vips
        .iter()
        .map(|(vip, spec)| (*vip, view.valid_hosts(spec).0))
        .collect();

    // Every improving move lowers the sum of squared loads, so the loop ends on its own; the
    // step limit only bounds the work on pathological weights (see the module documentation).
    let step_limit = view
        .vips
        .len()
        .saturating_mul(view.nodes.len())
        .saturating_mul(4)
        .saturating_add(16);
    for _ in 0..step_limit {
        let Some(chosen) = best_rebalance_move(view, owners, assignment, loads, &targets) else {
            return;
        };
        let weight = view.vips.get(&chosen.vip).map_or(1, VipSpec::load_weight);
        if let Some(load) = loads.get_mut(&chosen.from) {
            *load = load.saturating_sub(weight);
        }
        add_load(loads, chosen.to, weight);
        assignment.insert(chosen.vip, Some(chosen.to));
    }
}

/// One candidate step of the rebalancing loop.
#[derive(Debug, Clone, Copy)]
struct RebalanceStep {
    vip: VipId,
    from: NodeId,
    to: NodeId,
    /// What the step is worth: its benefit first, then not moving an operator's VIP, then
    /// fewer net moves added (-1, 0 or 1).
    rank: (u128, bool, std::cmp::Reverse<i8>),
}

/// The improving move with the largest benefit, tie-broken as rule 4 says.
fn best_rebalance_move(
    view: &ClusterView,
    owners: &BTreeMap<VipId, NodeId>,
    assignment: &Assignment,
    loads: &BTreeMap<NodeId, u64>,
    targets: &BTreeMap<VipId, Vec<NodeId>>,
) -> Option<RebalanceStep> {
    // The scan runs in VipId and then NodeId order, so keeping the first of equal ranks breaks
    // the remaining ties as documented. For one VIP the benefit falls as the target's load
    // rises, so equal benefit means equal target load.
    let mut best: Option<RebalanceStep> = None;
    for (&vip, &host) in assignment.iter() {
        let (Some(from), Some(spec), Some(vip_targets)) =
            (host, view.vips.get(&vip), targets.get(&vip))
        else {
            continue;
        };
        let weight = spec.load_weight();
        let from_load = load_of(loads, from);
        let original = owners.get(&vip).copied();
        for &to in vip_targets {
            if to == from {
                continue;
            }
            let to_load = load_of(loads, to);
            let Some(benefit) = move_benefit(from_load, to_load, weight) else {
                continue;
            };
            let moved_now = i8::from(original != Some(from));
            let moved_after = i8::from(original != Some(to));
            let rank = (
                benefit,
                !view.pinned.contains(&vip),
                std::cmp::Reverse(moved_after - moved_now),
            );
            if best.is_none_or(|best| rank > best.rank) {
                best = Some(RebalanceStep {
                    vip,
                    from,
                    to,
                    rank,
                });
            }
        }
    }
    best
}

/// How much moving a VIP of `weight` from a node with `from_load` to one with `to_load` lowers
/// the sum of squared loads (halved), or `None` if the move does not improve: the decrease is
/// `2 * weight * (from_load - to_load - weight)`, positive exactly when rule 2 is violated.
fn move_benefit(from_load: u64, to_load: u64, weight: u64) -> Option<u128> {
    let gap = from_load.checked_sub(to_load)?;
    let excess = gap.checked_sub(weight).filter(|excess| *excess > 0)?;
    Some(u128::from(weight) * u128::from(excess))
}

fn load_of(loads: &BTreeMap<NodeId, u64>, node: NodeId) -> u64 {
    loads.get(&node).copied().unwrap_or(0)
}

fn add_load(loads: &mut BTreeMap<NodeId, u64>, node: NodeId, weight: u64) {
    let load = loads.entry(node).or_insert(0);
    *load = load.saturating_add(weight);
}

/// A way in which an assignment breaks rule 1 or rule 2.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Violation {
    /// The VIP is unhosted although a valid host exists.
    Unhosted { vip: VipId },
    /// The VIP sits on an unavailable or unknown node.
    OnUnavailableNode { vip: VipId, node: NodeId },
    /// The VIP sits on an available node that its node list excludes.
    OnIneligibleNode { vip: VipId, node: NodeId },
    /// Moving the VIP to `to` would improve the balance (rule 2); `to` is the allowed settled
    /// node with the lowest load, then the lowest id.
    Imbalanced {
        vip: VipId,
        from: NodeId,
        to: NodeId,
        from_load: u64,
        to_load: u64,
        weight: u64,
    },
    /// The assignment names a VIP that the view does not configure.
    Unconfigured { vip: VipId },
}

/// Every way in which `assignment` breaks rules 1 and 2 for `view` (empty: it is a valid,
/// balanced placement). Configured VIPs missing from `assignment` count as unhosted. This is
/// the oracle for tests and for the cluster simulation.
pub fn violations(view: &ClusterView, assignment: &Assignment) -> Vec<Violation> {
    let mut found = Vec::new();
    for &vip in assignment.keys() {
        if !view.vips.contains_key(&vip) {
            found.push(Violation::Unconfigured { vip });
        }
    }
    for (&vip, spec) in &view.vips {
        match assignment.get(&vip).copied().flatten() {
            Some(node) if view.last_resort_hosts(spec).contains(&node) => {}
            Some(node) if !view.is_available(node) => {
                found.push(Violation::OnUnavailableNode { vip, node });
            }
            Some(node) if !spec.allows(node) => {
                found.push(Violation::OnIneligibleNode { vip, node });
            }
            Some(_) => {}
            None => {
                let (settled, held_down) = view.valid_hosts(spec);
                if !settled.is_empty()
                    || !held_down.is_empty()
                    || !view.last_resort_hosts(spec).is_empty()
                {
                    found.push(Violation::Unhosted { vip });
                }
            }
        }
    }
    found.extend(imbalances(view, assignment));
    found
}

/// Whether `assignment` satisfies rule 2 (no improving single move onto a settled node). It
/// says nothing about rule 1; [`violations`] checks both.
pub fn is_balanced(view: &ClusterView, assignment: &Assignment) -> bool {
    imbalances(view, assignment).is_empty()
}

fn imbalances(view: &ClusterView, assignment: &Assignment) -> Vec<Violation> {
    let mut loads = BTreeMap::new();
    for (vip, spec) in &view.vips {
        if let Some(node) = assignment.get(vip).copied().flatten() {
            add_load(&mut loads, node, spec.load_weight());
        }
    }
    let mut found = Vec::new();
    for (&vip, spec) in &view.vips {
        let Some(from) = assignment.get(&vip).copied().flatten() else {
            continue;
        };
        let weight = spec.load_weight();
        let from_load = load_of(&loads, from);
        let lightest = view
            .valid_hosts(spec)
            .0
            .into_iter()
            .filter(|node| *node != from)
            .min_by_key(|node| (load_of(&loads, *node), *node));
        if let Some(to) = lightest {
            let to_load = load_of(&loads, to);
            if move_benefit(from_load, to_load, weight).is_some() {
                found.push(Violation::Imbalanced {
                    vip,
                    from,
                    to,
                    from_load,
                    to_load,
                    weight,
                });
            }
        }
    }
    found
}
