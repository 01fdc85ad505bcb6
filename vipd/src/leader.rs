//! The leader's decisions (pure): from the applied state and what this node has observed, the
//! commands that move the cluster toward where it should be.
//!
//! [`decide`] is called on every tick of the Raft leader. It is idempotent — the commands are
//! conditional on epochs and generations, so deciding the same thing twice is harmless — and it
//! never reassigns a VIP whose owner might still hold it: a silent owner is fenced first, and its
//! VIPs are revoked only once [`crate::lease::FenceTracker`] says its lease has surely ended.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use crate::lease::Pnn;
use crate::placement::{self, ClusterView, NodeId, NodeState, VipId, VipSpec};
use crate::state::{ClusterState, Command, VipPhase};

/// Lengths the leader's decisions use, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaderSettings {
    /// A node not heard from for this long is fenced.
    pub disconnect_after_ms: u64,
    /// A fenced node heard from continuously for this long is unfenced.
    pub unfence_after_ms: u64,
    /// An owner that has not finished a release after this long is fenced.
    pub release_timeout_ms: u64,
    /// How long a node that (re)became available waits before rebalancing gives it VIPs.
    pub hold_down_ms: u64,
}

/// What this node has observed, on its own clock.
#[derive(Debug, Clone, Default)]
pub struct Observations {
    pub now_ms: u64,
    pub now_unix_ms: u64,
    /// The leader itself.
    pub me: Pnn,
    /// The voters of the applied Raft configuration.
    pub voters: BTreeSet<Pnn>,
    /// When each peer was last heard from.
    pub last_heard_ms: BTreeMap<Pnn, u64>,
    /// Since when each peer has been heard from without a gap longer than the disconnect time.
    pub connected_since_ms: BTreeMap<Pnn, u64>,
    /// When each node last became able to host VIPs.
    pub available_since_ms: BTreeMap<Pnn, u64>,
    /// The nodes seen able to host VIPs at some time since this node started.
    pub ever_available: BTreeSet<Pnn>,
    /// When this node first saw each VIP (by address and epoch) in the releasing phase.
    pub releasing_since_ms: BTreeMap<(IpAddr, u64), u64>,
    /// For fenced nodes (by generation): when their lease has surely ended, if known.
    pub fence_safe_at_ms: BTreeMap<(Pnn, u64), u64>,
}

impl Observations {
    /// Whether `node` counts as connected now.
    pub fn connected(&self, node: Pnn, settings: &LeaderSettings) -> bool {
        connected(self.me, &self.last_heard_ms, self.now_ms, node, settings)
    }
}

/// Whether `node` counts as connected for `me` at `now_ms`: itself, or heard from within the
/// disconnect time.
pub fn connected(
    me: Pnn,
    last_heard_ms: &BTreeMap<Pnn, u64>,
    now_ms: u64,
    node: Pnn,
    settings: &LeaderSettings,
) -> bool {
    node == me
        || last_heard_ms
            .get(&node)
            .is_some_and(|heard| now_ms.saturating_sub(*heard) < settings.disconnect_after_ms)
}

/// Whether `node` may host VIPs according to the state and the observations.
pub fn may_host(
    state: &ClusterState,
    observed: &Observations,
    settings: &LeaderSettings,
    node: Pnn,
) -> bool {
    node_state(state, observed, settings, node).is_some_and(|node| node.may_host())
}

fn node_state(
    state: &ClusterState,
    observed: &Observations,
    settings: &LeaderSettings,
    node: Pnn,
) -> Option<NodeState> {
    let member = state.members.get(&node)?;
    Some(NodeState {
        healthy: member.healthy,
        connected: !member.fenced && observed.connected(node, settings),
        // A leaving member hosts nothing, like a disabled one; nor does an unhealthy member as
        // a last resort unless a probe failed on a node that served before (it was seen able
        // to host, or it holds a VIP): a node shutting down, one that has not reported yet, or
        // one still starting its services is no host at all.
        disabled: member.disabled
            || member.leaving
            || (!member.healthy && !last_resort_ok(state, observed, node)),
        banned: member.banned_at(observed.now_unix_ms),
        available_since_ms: observed.available_since_ms.get(&node).copied().unwrap_or(0),
    })
}

/// Whether an unhealthy `node` may host VIPs that no healthy node may: a probe failed (it is
/// not shutting down, and it reported), and it served before — seen able to host VIPs, or
/// holding one — so a cluster that is still starting keeps its VIPs for the first healthy node.
fn last_resort_ok(state: &ClusterState, observed: &Observations, node: Pnn) -> bool {
    state
        .members
        .get(&node)
        .is_some_and(|member| member.may_host_unhealthy())
        && (observed.ever_available.contains(&node)
            || state.vips.values().any(|vip| vip.owner == Some(node)))
}

/// The commands the leader should propose now.
pub fn decide(
    state: &ClusterState,
    observed: &Observations,
    settings: &LeaderSettings,
) -> Vec<Command> {
    let mut commands = Vec::new();
    let now = observed.now_ms;

    // Fence silent nodes and owners stuck in a release; unfence nodes that are back.
    for (&pnn, member) in &state.members {
        let connected = observed.connected(pnn, settings);
        // Fencing exists to revoke what a silent node holds; a silent node that owns nothing
        // is left unfenced, so a member that was added but is not started yet is not held
        // down as a returning node when it finally comes up.
        let owns_something = state.vips.values().any(|vip| vip.owner == Some(pnn));
        let stuck_release = state.vips.iter().any(|(address, vip)| {
            vip.owner == Some(pnn)
                && vip.phase == VipPhase::Releasing
                && observed
                    .releasing_since_ms
                    .get(&(*address, vip.epoch))
                    .is_some_and(|since| now.saturating_sub(*since) >= settings.release_timeout_ms)
        });
        // The leader never fences itself (it is in contact with a quorum, or it would not
        // lead), but it does lift a fence it was given before it was elected: otherwise a
        // fenced node that became leader would hold no VIP for as long as it leads.
        if pnn != observed.me && !member.fenced && ((!connected && owns_something) || stuck_release)
        {
            commands.push(Command::Fence {
                node: pnn,
                generation: member.generation,
            });
        } else if member.fenced
            && connected
            && observed
                .connected_since_ms
                .get(&pnn)
                .is_some_and(|since| now.saturating_sub(*since) >= settings.unfence_after_ms)
        {
            commands.push(Command::Unfence {
                node: pnn,
                generation: member.generation,
            });
        }
    }

    // Revoke what fenced owners held, once their lease has surely ended.
    for (&address, vip) in &state.vips {
        let Some(owner) = vip.owner else { continue };
        let Some(member) = state.members.get(&owner) else {
            continue;
        };
        if member.fenced
            && observed
                .fence_safe_at_ms
                .get(&(owner, member.generation))
                .is_some_and(|safe_at| *safe_at <= now)
        {
            commands.push(Command::Revoke {
                vip: address,
                epoch: vip.epoch,
                from: owner,
                generation: member.generation,
            });
        }
    }

    // An operator's move (`moveip`) goes where it was sent if that node may take it.
    let mut preassigned = BTreeSet::new();
    for (&address, vip) in &state.vips {
        if let (VipPhase::Unassigned, Some(to)) = (vip.phase, vip.preferred) {
            if vip.configured
                && vip.eligible.contains(&to)
                && may_host(state, observed, settings, to)
            {
                preassigned.insert(address);
                commands.push(Command::Assign {
                    vip: address,
                    epoch: vip.epoch,
                    to,
                });
            }
        }
    }

    // Place: release what should move from a live owner; assign what is unassigned.
    let addresses: Vec<IpAddr> = state.vips.keys().copied().collect();
    let vip_id = |index: usize| VipId(u32::try_from(index).unwrap_or(u32::MAX));
    let mut view = ClusterView {
        now_ms: now,
        hold_down_ms: settings.hold_down_ms,
        ..ClusterView::default()
    };
    for &pnn in state.members.keys() {
        if let Some(node) = node_state(state, observed, settings, pnn) {
            view.nodes.insert(NodeId(pnn), node);
        }
    }
    let mut owners = BTreeMap::new();
    for (index, address) in addresses.iter().enumerate() {
        let vip = &state.vips[address];
        if vip.configured {
            view.vips.insert(
                vip_id(index),
                VipSpec {
                    eligible: Some(vip.eligible.iter().map(|pnn| NodeId(*pnn)).collect()),
                    weight: vip.weight,
                },
            );
        }
        if let Some(owner) = vip.owner {
            owners.insert(vip_id(index), NodeId(owner));
        }
        if vip.operator_placed {
            view.pinned.insert(vip_id(index));
        }
    }
    let placement = placement::place(&view, &owners);
    for placed in &placement.moves {
        let Some(address) = usize::try_from(placed.vip.0)
            .ok()
            .and_then(|index| addresses.get(index))
        else {
            continue;
        };
        if preassigned.contains(address) {
            continue;
        }
        let vip = &state.vips[address];
        match (vip.owner, vip.phase) {
            // In flight; or a silent owner, whose fence and revoke come first.
            (_, VipPhase::Releasing) => {}
            (Some(owner), _)
                if !observed.connected(owner, settings)
                    || state.members.get(&owner).is_none_or(|member| member.fenced) => {}
            (Some(_), _) => commands.push(Command::Release {
                vip: *address,
                epoch: vip.epoch,
                to: None,
            }),
            (None, _) => {
                if let Some(NodeId(to)) = placed.to {
                    commands.push(Command::Assign {
                        vip: *address,
                        epoch: vip.epoch,
                        to,
                    });
                }
            }
        }
    }
    commands
}

/// One step toward the Raft configuration the replicated membership asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MembershipStep {
    /// A leaving member that owns no VIP is deleted from the state (while it is still a Raft
    /// peer, so that it most likely hears of it).
    Forget(Pnn),
    /// A Raft peer that is no longer a member leaves the Raft configuration.
    RemovePeer(Pnn),
    /// A new member joins Raft as a learner: it catches up (by snapshot) without counting in
    /// any quorum, so a member added but not started yet costs the cluster no fault tolerance.
    AddLearner(Pnn),
    /// A learner that has caught up becomes a voter.
    Promote(Pnn),
}

/// The next membership step the leader should take, if any: one at a time, removals first.
/// `voters` and `learners` are the applied Raft configuration; `caught_up` the learners whose
/// log matches the leader's.
pub fn membership_step(
    state: &ClusterState,
    voters: &BTreeSet<Pnn>,
    learners: &BTreeSet<Pnn>,
    caught_up: &BTreeSet<Pnn>,
) -> Option<MembershipStep> {
    let owns_something = |pnn: Pnn| state.vips.values().any(|vip| vip.owner == Some(pnn));
    if let Some((&pnn, _)) = state
        .members
        .iter()
        .find(|(pnn, member)| member.leaving && !owns_something(**pnn))
    {
        return Some(MembershipStep::Forget(pnn));
    }
    let peers = voters.iter().chain(learners.iter()).copied();
    for pnn in peers {
        // Before the first configuration is applied there are no members at all; and the last
        // voter never leaves, whatever the state says.
        let removed = state.was_removed(pnn);
        let last_voter = voters.len() == 1 && voters.contains(&pnn);
        if removed && !last_voter {
            return Some(MembershipStep::RemovePeer(pnn));
        }
    }
    for (&pnn, member) in &state.members {
        if member.leaving {
            continue;
        }
        if !voters.contains(&pnn) && !learners.contains(&pnn) {
            return Some(MembershipStep::AddLearner(pnn));
        }
        if learners.contains(&pnn) && caught_up.contains(&pnn) {
            return Some(MembershipStep::Promote(pnn));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{MemberConfig, VipConfig};

    const SETTINGS: LeaderSettings = LeaderSettings {
        disconnect_after_ms: 500,
        unfence_after_ms: 300,
        release_timeout_ms: 3000,
        hold_down_ms: 10_000,
    };

    fn ip(last: u8) -> IpAddr {
        IpAddr::from([192, 0, 2, last])
    }

    /// Three healthy members and `vips` VIPs open to all, as configured and applied.
    fn cluster(vips: u8) -> ClusterState {
        let mut state = ClusterState::default();
        let members = (0..3)
            .map(|pnn| MemberConfig {
                pnn,
                name: format!("node{}", pnn + 1),
                cluster_address: IpAddr::from([198, 51, 100, 11 + u8::try_from(pnn).unwrap()]),
            })
            .collect();
        let vips = (0..vips)
            .map(|index| VipConfig {
                address: ip(101 + index),
                prefix_len: 24,
                interface: None,
                nodes: None,
                weight: 1,
            })
            .collect();
        state.apply(&Command::Configure {
            digest: "d".into(),
            members,
            vips,
        });
        for node in 0..3 {
            state.apply(&Command::SetHealth {
                node,
                healthy: true,
                failing: vec![],
            });
        }
        state
    }

    fn observed(now_ms: u64) -> Observations {
        Observations {
            now_ms,
            now_unix_ms: 1_000_000,
            me: 0,
            voters: [0, 1, 2].into(),
            last_heard_ms: [(1, now_ms), (2, now_ms)].into(),
            connected_since_ms: [(1, 0), (2, 0)].into(),
            ..Observations::default()
        }
    }

    #[test]
    fn a_leader_lifts_its_own_fence_and_never_fences_itself() {
        let mut state = cluster(1);
        let vip: IpAddr = "192.0.2.101".parse().unwrap();
        state.apply(&Command::Assign {
            vip,
            epoch: 0,
            to: 0,
        });
        let settings = SETTINGS;
        // Silent from its own point of view cannot happen: it never fences itself.
        let mut silent = observed(5_000);
        silent.last_heard_ms.clear();
        assert!(
            !decide(&state, &silent, &settings)
                .iter()
                .any(|command| matches!(command, Command::Fence { node: 0, .. }))
        );
        // Fenced before it was elected (while it was cut off): it unfences itself.
        state.apply(&Command::Fence {
            node: 0,
            generation: 0,
        });
        let mut elected = observed(5_000);
        elected.connected_since_ms.insert(0, 0);
        let commands = decide(&state, &elected, &settings);
        assert!(
            commands.contains(&Command::Unfence {
                node: 0,
                generation: 0
            }),
            "{commands:?}"
        );
    }

    #[test]
    fn only_a_node_that_served_and_failed_a_probe_is_a_last_resort_host() {
        let vip: IpAddr = "192.0.2.101".parse().unwrap();
        let unhealthy = |reason: &str| Command::SetHealth {
            node: 1,
            healthy: false,
            failing: if reason.is_empty() {
                vec![]
            } else {
                vec![reason.to_owned()]
            },
        };
        // (node 1's report, seen able to host before, holds the VIP, last resort)
        let table = [
            ("volume: hung", true, false, true),
            ("volume: hung", false, true, true),
            // Still starting: it never served.
            ("nfs: refused", false, false, false),
            (crate::state::SHUTTING_DOWN, true, true, false),
            ("", true, true, false),
        ];
        for (reason, seen, holds, expected) in table {
            let mut state = cluster(1);
            if holds {
                state.apply(&Command::Assign {
                    vip,
                    epoch: 0,
                    to: 1,
                });
            }
            state.apply(&unhealthy(reason));
            let mut observed = observed(5_000);
            if seen {
                observed.ever_available.insert(1);
            }
            assert_eq!(
                last_resort_ok(&state, &observed, 1),
                expected,
                "{reason:?} seen {seen} holds {holds}"
            );
        }
    }

    fn apply_all(state: &mut ClusterState, commands: &[Command]) {
        for command in commands {
            state.apply(command);
        }
    }

    #[test]
    fn membership_steps_add_as_learner_promote_when_caught_up_and_remove_after_forgetting() {
        use MembershipStep::*;
        let mut state = cluster(1);
        let none = BTreeSet::new();
        let voters: BTreeSet<Pnn> = [0, 1, 2].into();
        assert_eq!(membership_step(&state, &voters, &none, &none), None);
        // Before the first configuration: nothing to reconcile (members are still empty).
        assert_eq!(
            membership_step(&ClusterState::default(), &voters, &none, &none),
            None
        );
        state.apply(&Command::AddMember {
            name: "node4".into(),
            cluster_address: IpAddr::from([198, 51, 100, 14]),
        });
        assert_eq!(
            membership_step(&state, &voters, &none, &none),
            Some(AddLearner(3))
        );
        let learners: BTreeSet<Pnn> = [3].into();
        assert_eq!(membership_step(&state, &voters, &learners, &none), None);
        assert_eq!(
            membership_step(&state, &voters, &learners, &[3].into()),
            Some(Promote(3))
        );
        let voters: BTreeSet<Pnn> = [0, 1, 2, 3].into();
        // Removing node 2 while it owns a VIP: nothing until it owns nothing.
        state.apply(&Command::Assign {
            vip: ip(101),
            epoch: 0,
            to: 2,
        });
        state.apply(&Command::RemoveMember { node: 2 });
        assert_eq!(membership_step(&state, &voters, &none, &none), None);
        state.apply(&Command::Release {
            vip: ip(101),
            epoch: 1,
            to: None,
        });
        assert_eq!(membership_step(&state, &voters, &none, &none), None);
        state.apply(&Command::Released {
            vip: ip(101),
            epoch: 2,
            by: 2,
        });
        assert_eq!(
            membership_step(&state, &voters, &none, &none),
            Some(Forget(2))
        );
        state.apply(&Command::ForgetMember { node: 2 });
        assert_eq!(
            membership_step(&state, &voters, &none, &none),
            Some(RemovePeer(2))
        );
        assert_eq!(
            membership_step(&state, &[0, 1, 3].into(), &none, &none),
            None
        );
        // The last voter stays in Raft even if the state no longer lists it.
        let mut alone = cluster(0);
        alone.apply(&Command::RemoveMember { node: 1 });
        alone.apply(&Command::RemoveMember { node: 2 });
        alone.apply(&Command::ForgetMember { node: 1 });
        alone.apply(&Command::ForgetMember { node: 2 });
        assert_eq!(
            membership_step(&alone, &[1].into(), &none, &none),
            Some(AddLearner(0))
        );
    }

    #[test]
    fn a_silent_node_that_owns_nothing_is_not_fenced_and_a_leaving_one_hosts_nothing() {
        let mut state = cluster(3);
        let mut seen = observed(21_000);
        seen.last_heard_ms.insert(2, 20_000);
        let commands = decide(&state, &seen, &SETTINGS);
        assert!(
            !commands.iter().any(|c| matches!(c, Command::Fence { .. })),
            "{commands:?}"
        );
        assert!(
            commands
                .iter()
                .all(|c| matches!(c, Command::Assign { to, .. } if *to != 2)),
            "{commands:?}"
        );
        let initial = decide(&state, &observed(20_000), &SETTINGS);
        apply_all(&mut state, &initial);
        let held: Vec<IpAddr> = state.held_by(1).map(|(a, _)| *a).collect();
        state.apply(&Command::RemoveMember { node: 1 });
        let release = decide(&state, &observed(20_100), &SETTINGS);
        assert_eq!(release.len(), held.len(), "{release:?}");
        assert!(
            release
                .iter()
                .all(|c| matches!(c, Command::Release { vip, .. } if held.contains(vip))),
            "{release:?}"
        );
    }

    #[test]
    fn a_fresh_cluster_assigns_every_vip_balanced() {
        let mut state = cluster(4);
        let commands = decide(&state, &observed(20_000), &SETTINGS);
        assert_eq!(commands.len(), 4, "{commands:?}");
        assert!(commands.iter().all(|c| matches!(c, Command::Assign { .. })));
        apply_all(&mut state, &commands);
        let mut loads = [0; 3];
        for vip in state.vips.values() {
            loads[vip.owner.unwrap() as usize] += 1;
        }
        loads.sort_unstable();
        assert_eq!(loads, [1, 1, 2]);
        assert!(
            decide(&state, &observed(20_000), &SETTINGS).is_empty(),
            "stable"
        );
    }

    #[test]
    fn a_silent_node_is_fenced_and_revoked_only_when_safe() {
        let mut state = cluster(3);
        let initial = decide(&state, &observed(20_000), &SETTINGS);
        apply_all(&mut state, &initial);
        let mut seen = observed(21_000);
        seen.last_heard_ms.insert(2, 20_400);
        let fence = decide(&state, &seen, &SETTINGS);
        assert_eq!(
            fence,
            [Command::Fence {
                node: 2,
                generation: 0
            }]
        );
        apply_all(&mut state, &fence);
        // Fenced, but nobody knows when its lease ends: its VIP stays put (no assign elsewhere).
        let held_by_2: Vec<IpAddr> = state.held_by(2).map(|(a, _)| *a).collect();
        assert_eq!(held_by_2.len(), 1);
        assert!(decide(&state, &seen, &SETTINGS).is_empty());
        seen.fence_safe_at_ms.insert((2, 0), 22_000);
        assert!(decide(&state, &seen, &SETTINGS).is_empty(), "not yet safe");
        seen.now_ms = 22_000;
        seen.last_heard_ms.insert(1, 22_000);
        let revoke = decide(&state, &seen, &SETTINGS);
        assert_eq!(
            revoke,
            [Command::Revoke {
                vip: held_by_2[0],
                epoch: 1,
                from: 2,
                generation: 0
            }]
        );
        apply_all(&mut state, &revoke);
        let assign = decide(&state, &seen, &SETTINGS);
        assert!(
            matches!(assign[..], [Command::Assign { to, .. }] if to != 2),
            "{assign:?}"
        );
    }

    #[test]
    fn a_node_that_comes_back_is_unfenced_after_a_steady_spell() {
        let mut state = cluster(1);
        state.apply(&Command::Fence {
            node: 1,
            generation: 0,
        });
        let mut seen = observed(5_000);
        seen.connected_since_ms.insert(1, 4_800);
        assert!(
            !decide(&state, &seen, &SETTINGS).contains(&Command::Unfence {
                node: 1,
                generation: 0
            })
        );
        seen.connected_since_ms.insert(1, 4_700);
        assert!(
            decide(&state, &seen, &SETTINGS).contains(&Command::Unfence {
                node: 1,
                generation: 0
            })
        );
    }

    #[test]
    fn an_unhealthy_owner_releases_and_a_stuck_release_is_fenced() {
        let mut state = cluster(3);
        let initial = decide(&state, &observed(20_000), &SETTINGS);
        apply_all(&mut state, &initial);
        let (address, vip) = state
            .held_by(1)
            .next()
            .map(|(a, v)| (*a, v.clone()))
            .unwrap();
        state.apply(&Command::SetHealth {
            node: 1,
            healthy: false,
            failing: vec!["volume".into()],
        });
        let release = decide(&state, &observed(20_100), &SETTINGS);
        assert_eq!(
            release,
            [Command::Release {
                vip: address,
                epoch: vip.epoch,
                to: None
            }]
        );
        apply_all(&mut state, &release);
        let mut seen = observed(20_200);
        seen.releasing_since_ms
            .insert((address, vip.epoch + 1), 20_200);
        assert!(
            decide(&state, &seen, &SETTINGS).is_empty(),
            "release in flight"
        );
        seen.now_ms = 23_200;
        seen.last_heard_ms = [(1, 23_200), (2, 23_200)].into();
        assert_eq!(
            decide(&state, &seen, &SETTINGS),
            [Command::Fence {
                node: 1,
                generation: 0
            }]
        );
    }

    #[test]
    fn a_moved_vip_goes_where_the_operator_sent_it() {
        let mut state = cluster(3);
        let initial = decide(&state, &observed(20_000), &SETTINGS);
        apply_all(&mut state, &initial);
        let (address, vip) = state
            .held_by(0)
            .next()
            .map(|(a, v)| (*a, v.clone()))
            .unwrap();
        state.apply(&Command::Release {
            vip: address,
            epoch: vip.epoch,
            to: Some(2),
        });
        state.apply(&Command::Released {
            vip: address,
            epoch: vip.epoch + 1,
            by: 0,
        });
        let commands = decide(&state, &observed(20_100), &SETTINGS);
        assert_eq!(
            commands,
            [Command::Assign {
                vip: address,
                epoch: vip.epoch + 2,
                to: 2
            }]
        );
    }

    #[test]
    fn disabled_and_banned_nodes_give_up_their_vips() {
        for command in [
            Command::SetDisabled {
                node: 2,
                disabled: true,
            },
            Command::Ban {
                node: 2,
                until_unix_ms: Some(2_000_000),
            },
        ] {
            let mut state = cluster(3);
            let initial = decide(&state, &observed(20_000), &SETTINGS);
            apply_all(&mut state, &initial);
            state.apply(&command);
            let commands = decide(&state, &observed(20_100), &SETTINGS);
            assert!(
                matches!(commands[..], [Command::Release { .. }]),
                "{command:?}: {commands:?}"
            );
        }
    }
}
