//! The replicated cluster state: what every node agrees on because it came through the Raft log.
//!
//! [`ClusterState::apply`] is the state machine. It is deterministic and does no I/O: every node
//! applies the same committed [`Command`]s in the same order and reaches the same state. Every
//! command that changes a VIP or a node's lease generation is *conditional* — it names the epoch
//! or generation it was decided from and is rejected if the state moved on — so a proposal that
//! an old leader made, or one that was retried, can never undo a newer decision.
//!
//! A VIP goes through these states (each transition bumps its epoch):
//!
//! ```text
//!   Unassigned ──Assign(to)──► Held(owner) ──Release──► Releasing(owner) ──Released(by owner)──► Unassigned
//!                                  │                          │
//!                                  └──────Revoke(fenced owner, its generation)──────────────────► Unassigned
//! ```
//!
//! `Release`/`Released` is the planned path: the owner removes the address and says so. `Revoke`
//! is for an owner that cannot say so: the leader proposes it only after the fenced owner's
//! lease has surely ended ([`crate::lease`]).
//!
//! # Membership
//!
//! Once bootstrapped, this state is the authority on who the members are; the cluster file only
//! seeds it. The first `Configure` creates the members (PNN = position in the bootstrapping
//! file) and later ones leave them alone. After that a member comes only from `AddMember` (the
//! next PNN, never reused), changes address only by `SetAddress`, and goes in two steps:
//! `RemoveMember` marks it *leaving* (it hosts nothing from then on, so the leader moves its
//! VIPs away by the planned path, or fences and revokes them if it is silent), and
//! `ForgetMember` deletes it, accepted only once no VIP names it as owner in any phase — so a
//! member never disappears while it might still have an address configured. VIP node lists are
//! kept by *name* and resolved to PNNs here, so reordering the file renumbers nothing.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::lease::Pnn;
use crate::tickle::Connection;

/// Most client connections remembered per VIP; a busy VIP's clients beyond this reconnect by
/// timeout instead of by tickle.
pub const MAX_CONNECTIONS_PER_VIP: usize = 4096;

/// The version of the serialized state (snapshots) and commands. Version 2: VIP node lists by
/// name, membership commands.
pub const FORMAT_VERSION: u32 = 2;

/// The longest node name (as in the cluster file).
pub const MAX_NAME_LEN: usize = 32;

/// The health report of a node that is handing its VIPs over before it stops.
pub const SHUTTING_DOWN: &str = "shutting down";

/// One member of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub name: String,
    pub cluster_address: IpAddr,
    /// The lease generation: peers ack only pings of this generation.
    pub generation: u64,
    /// The cluster revoked this generation's lease; peers ack nothing until `Unfence`.
    pub fenced: bool,
    /// `vipgate disable`: hosts no VIPs until enabled.
    pub disabled: bool,
    /// `vipgate ban`: hosts no VIPs until this wall-clock time (Unix milliseconds).
    pub banned_until_unix_ms: Option<u64>,
    /// The node's own probes pass (a new member is unhealthy until it says otherwise).
    pub healthy: bool,
    /// The probes that fail, with their reasons, as the node reported them.
    pub failing: Vec<String>,
    /// `vipgate node remove`: hosts nothing; forgotten once it owns no VIP.
    #[serde(default)]
    pub leaving: bool,
}

impl Member {
    fn new(name: String, cluster_address: IpAddr) -> Member {
        Member {
            leaving: false,
            name,
            cluster_address,
            generation: 0,
            fenced: false,
            disabled: false,
            banned_until_unix_ms: None,
            healthy: false,
            failing: Vec::new(),
        }
    }

    /// Whether it may host VIPs that no healthy node may host: it is unhealthy because a probe
    /// failed, not because it is shutting down or has not reported its health yet.
    pub fn may_host_unhealthy(&self) -> bool {
        !self.failing.is_empty() && !self.failing.iter().any(|reason| reason == SHUTTING_DOWN)
    }

    /// Whether a ban is in force at `now_unix_ms`.
    pub fn banned_at(&self, now_unix_ms: u64) -> bool {
        self.banned_until_unix_ms
            .is_some_and(|until| until > now_unix_ms)
    }
}

/// Where a VIP stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum VipPhase {
    Unassigned,
    Held,
    Releasing,
}

/// One public address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vip {
    pub prefix_len: u8,
    /// The interface the config names, if any (otherwise the owner's first public interface).
    pub interface: Option<String>,
    /// The members that may hold it, resolved from `nodes` whenever members change.
    pub eligible: BTreeSet<Pnn>,
    /// The names the configuration lists; `None`: every member, present and future.
    #[serde(default)]
    pub nodes: Option<BTreeSet<String>>,
    pub weight: u32,
    pub owner: Option<Pnn>,
    pub phase: VipPhase,
    /// Bumped by every change of owner or phase.
    pub epoch: u64,
    /// Still in the configuration; an unconfigured VIP is released and then forgotten.
    pub configured: bool,
    /// Where an operator asked it to go (`vipgate moveip`); cleared when it is assigned.
    pub preferred: Option<Pnn>,
    /// Its owner is where an operator sent it: rebalancing prefers to move other VIPs.
    #[serde(default)]
    pub operator_placed: bool,
    /// The owner reported the address configured in its kernel for this epoch (`Applied`):
    /// only then is the VIP live, so DNS never names an address before it answers.
    #[serde(default)]
    pub applied: bool,
}

/// A VIP as the configuration describes it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct VipConfig {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub interface: Option<String>,
    /// The names of the nodes that may hold it; `None`: every member.
    pub nodes: Option<BTreeSet<String>>,
    pub weight: u32,
}

/// A member as the bootstrapping configuration describes it (PNN = position in the file).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct MemberConfig {
    pub pnn: Pnn,
    pub name: String,
    pub cluster_address: IpAddr,
}

/// A change to the cluster state, proposed through Raft.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Command {
    /// The configuration as the proposing leader read it: its VIPs, and its members, which only
    /// the first `Configure` of a cluster uses (bootstrap); `digest` identifies the file's
    /// content so nodes can tell when theirs differs.
    Configure {
        digest: String,
        members: Vec<MemberConfig>,
        vips: Vec<VipConfig>,
    },
    SetHealth {
        node: Pnn,
        healthy: bool,
        failing: Vec<String>,
    },
    SetDisabled {
        node: Pnn,
        disabled: bool,
    },
    /// `until_unix_ms: None` lifts a ban.
    Ban {
        node: Pnn,
        until_unix_ms: Option<u64>,
    },
    Fence {
        node: Pnn,
        generation: u64,
    },
    Unfence {
        node: Pnn,
        generation: u64,
    },
    Assign {
        vip: IpAddr,
        epoch: u64,
        to: Pnn,
    },
    /// `to`: the node an operator moves it to, if any.
    Release {
        vip: IpAddr,
        epoch: u64,
        to: Option<Pnn>,
    },
    Released {
        vip: IpAddr,
        epoch: u64,
        by: Pnn,
    },
    Revoke {
        vip: IpAddr,
        epoch: u64,
        from: Pnn,
        generation: u64,
    },
    /// The owner has the address of this assignment (`epoch`) configured in its kernel.
    Applied {
        vip: IpAddr,
        epoch: u64,
        by: Pnn,
    },
    /// The owner's established client connections of a VIP, for tickles after a move.
    SetConnections {
        vip: IpAddr,
        by: Pnn,
        connections: Vec<Connection>,
    },
    /// `vipgate node add`: a new member, numbered with the next unused PNN.
    AddMember {
        name: String,
        cluster_address: IpAddr,
    },
    /// `vipgate node remove`: the member starts leaving.
    RemoveMember {
        node: Pnn,
    },
    /// The leader's last step of a removal: the leaving member owns nothing and is deleted.
    ForgetMember {
        node: Pnn,
    },
    /// `vipgate node set-address`.
    SetAddress {
        node: Pnn,
        cluster_address: IpAddr,
    },
}

/// What applying a command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Applied,
    /// The command no longer fits the state (stale epoch or generation, unknown node...).
    Rejected(String),
}

/// The replicated state.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    pub members: BTreeMap<Pnn, Member>,
    pub vips: BTreeMap<IpAddr, Vip>,
    /// The digest of the configuration last applied.
    pub config_digest: Option<String>,
    /// Client connections known per VIP, as their owner last reported them.
    #[serde(default)]
    pub connections: BTreeMap<IpAddr, BTreeSet<Connection>>,
    /// Bumped by every applied command that changes [`ClusterState::live_vips`]: the same on
    /// every node at the same log index, so DNS answers carry the same SOA serial everywhere.
    #[serde(default)]
    pub live_serial: u64,
    /// The PNN the next added member gets: one more than any PNN ever given, so a removed
    /// node's number (and Raft id) is never reused. 0 until the first `Configure`.
    #[serde(default)]
    pub next_pnn: Pnn,
}

fn rejected(reason: String) -> Outcome {
    Outcome::Rejected(reason)
}

impl ClusterState {
    /// Applies one committed command.
    pub fn apply(&mut self, command: &Command) -> Outcome {
        let live_before = self.live_vips();
        let outcome = self.apply_command(command);
        if self.live_vips() != live_before {
            self.live_serial += 1;
        }
        outcome
    }

    /// The VIPs that serve clients now: held by a member that is healthy, not fenced and not
    /// disabled, and confirmed in its kernel (`Applied`). A dead owner's VIPs leave this set
    /// when the leader fences it, before they move.
    pub fn live_vips(&self) -> BTreeSet<IpAddr> {
        self.vips
            .iter()
            .filter(|(_, vip)| vip.phase == VipPhase::Held && vip.applied)
            .filter(|(_, vip)| {
                vip.owner
                    .and_then(|owner| self.members.get(&owner))
                    .is_some_and(|member| member.healthy && !member.fenced && !member.disabled)
            })
            .map(|(address, _)| *address)
            .collect()
    }

    fn apply_command(&mut self, command: &Command) -> Outcome {
        match command {
            Command::Configure {
                digest,
                members,
                vips,
            } => {
                self.configure(members, vips);
                self.config_digest = Some(digest.clone());
                Outcome::Applied
            }
            Command::AddMember {
                name,
                cluster_address,
            } => self.add_member(name, *cluster_address),
            Command::RemoveMember { node } => self.remove_member(*node),
            Command::ForgetMember { node } => self.forget_member(*node),
            Command::SetAddress {
                node,
                cluster_address,
            } => {
                if let Some((other, _)) = self.members.iter().find(|(pnn, member)| {
                    *pnn != node && member.cluster_address == *cluster_address
                }) {
                    return rejected(format!(
                        "{cluster_address} is already the cluster address of {}",
                        self.members[other].name
                    ));
                }
                self.with_member(*node, |member| {
                    member.cluster_address = *cluster_address;
                    Outcome::Applied
                })
            }
            Command::SetHealth {
                node,
                healthy,
                failing,
            } => self.with_member(*node, |member| {
                member.healthy = *healthy;
                member.failing.clone_from(failing);
                Outcome::Applied
            }),
            Command::SetDisabled { node, disabled } => self.with_member(*node, |member| {
                member.disabled = *disabled;
                Outcome::Applied
            }),
            Command::Ban {
                node,
                until_unix_ms,
            } => self.with_member(*node, |member| {
                member.banned_until_unix_ms = *until_unix_ms;
                Outcome::Applied
            }),
            Command::Fence { node, generation } => self.with_member(*node, |member| {
                if member.fenced || member.generation != *generation {
                    return rejected(format!(
                        "fence of generation {generation}, but the node is at {}{}",
                        member.generation,
                        if member.fenced { ", fenced" } else { "" }
                    ));
                }
                member.fenced = true;
                Outcome::Applied
            }),
            Command::Unfence { node, generation } => self.with_member(*node, |member| {
                if !member.fenced || member.generation != *generation {
                    return rejected(format!(
                        "unfence of generation {generation}, but the node is at {}{}",
                        member.generation,
                        if member.fenced {
                            ", fenced"
                        } else {
                            ", not fenced"
                        }
                    ));
                }
                member.fenced = false;
                member.generation += 1;
                Outcome::Applied
            }),
            Command::Assign { vip, epoch, to } => {
                let Some(member) = self.members.get(to) else {
                    return rejected(format!("assign {vip} to unknown node {to}"));
                };
                if member.fenced {
                    return rejected(format!("assign {vip} to fenced node {to}"));
                }
                self.transition(*vip, *epoch, |vip_state| {
                    if vip_state.phase != VipPhase::Unassigned {
                        return Err("it is not unassigned".to_owned());
                    }
                    if !vip_state.configured {
                        return Err("it is no longer configured".to_owned());
                    }
                    if !vip_state.eligible.contains(to) {
                        return Err(format!("node {to} is not eligible"));
                    }
                    vip_state.owner = Some(*to);
                    vip_state.phase = VipPhase::Held;
                    vip_state.operator_placed = vip_state.preferred == Some(*to);
                    vip_state.preferred = None;
                    vip_state.applied = false;
                    Ok(())
                })
            }
            Command::Release { vip, epoch, to } => self.transition(*vip, *epoch, |vip_state| {
                if vip_state.phase != VipPhase::Held {
                    return Err("it is not held".to_owned());
                }
                vip_state.phase = VipPhase::Releasing;
                vip_state.preferred = *to;
                Ok(())
            }),
            Command::Released { vip, epoch, by } => self.transition(*vip, *epoch, |vip_state| {
                if vip_state.phase != VipPhase::Releasing || vip_state.owner != Some(*by) {
                    return Err(format!("node {by} is not releasing it"));
                }
                vip_state.owner = None;
                vip_state.phase = VipPhase::Unassigned;
                Ok(())
            }),
            Command::Applied { vip, epoch, by } => {
                let Some(vip_state) = self.vips.get_mut(vip) else {
                    return rejected(format!("no VIP {vip}"));
                };
                if vip_state.epoch != *epoch
                    || vip_state.phase != VipPhase::Held
                    || vip_state.owner != Some(*by)
                {
                    return rejected(format!("node {by} does not hold {vip} in epoch {epoch}"));
                }
                vip_state.applied = true;
                Outcome::Applied
            }
            Command::SetConnections {
                vip,
                by,
                connections,
            } => {
                // A releasing owner reports too: connections it found left behind after the
                // address went, for the next owner to tickle.
                let owned = self.vips.get(vip).is_some_and(|state| {
                    state.owner == Some(*by)
                        && matches!(state.phase, VipPhase::Held | VipPhase::Releasing)
                });
                if !owned {
                    return rejected(format!("node {by} does not hold {vip}"));
                }
                let connections: BTreeSet<Connection> = connections
                    .iter()
                    .filter(|connection| connection.server.ip() == *vip)
                    .take(MAX_CONNECTIONS_PER_VIP)
                    .copied()
                    .collect();
                if connections.is_empty() {
                    self.connections.remove(vip);
                } else {
                    self.connections.insert(*vip, connections);
                }
                Outcome::Applied
            }
            Command::Revoke {
                vip,
                epoch,
                from,
                generation,
            } => {
                let fenced_at = self
                    .members
                    .get(from)
                    .filter(|member| member.fenced)
                    .map(|member| member.generation);
                if fenced_at != Some(*generation) {
                    return rejected(format!(
                        "revoke {vip} from node {from} at generation {generation}, which is not fenced there"
                    ));
                }
                self.transition(*vip, *epoch, |vip_state| {
                    if vip_state.owner != Some(*from) {
                        return Err(format!("node {from} does not own it"));
                    }
                    vip_state.owner = None;
                    vip_state.phase = VipPhase::Unassigned;
                    Ok(())
                })
            }
        }
    }

    fn with_member(&mut self, node: Pnn, change: impl FnOnce(&mut Member) -> Outcome) -> Outcome {
        match self.members.get_mut(&node) {
            Some(member) => change(member),
            None => rejected(format!("unknown node {node}")),
        }
    }

    /// Applies `change` to `vip` if its epoch is still `epoch`, then bumps the epoch and
    /// forgets the VIP if it is unconfigured and unassigned.
    fn transition(
        &mut self,
        vip: IpAddr,
        epoch: u64,
        change: impl FnOnce(&mut Vip) -> Result<(), String>,
    ) -> Outcome {
        let Some(vip_state) = self.vips.get_mut(&vip) else {
            return rejected(format!("unknown address {vip}"));
        };
        if vip_state.epoch != epoch {
            return rejected(format!(
                "{vip} is at epoch {}, the command was for {epoch}",
                vip_state.epoch
            ));
        }
        if let Err(reason) = change(vip_state) {
            return rejected(format!("{vip}: {reason}"));
        }
        vip_state.epoch += 1;
        if !vip_state.configured && vip_state.phase == VipPhase::Unassigned {
            self.vips.remove(&vip);
            self.connections.remove(&vip);
        }
        Outcome::Applied
    }

    /// The first configuration of a cluster creates its members; later ones leave membership to
    /// the membership commands. VIPs are added, updated, or marked unconfigured (released, then
    /// forgotten).
    fn configure(&mut self, members: &[MemberConfig], vips: &[VipConfig]) {
        if self.next_pnn == 0 {
            for config in members {
                self.members.insert(
                    config.pnn,
                    Member::new(config.name.clone(), config.cluster_address),
                );
            }
            self.next_pnn = self
                .members
                .keys()
                .next_back()
                .map_or(0, |last| last.saturating_add(1));
        }
        let configured: BTreeSet<IpAddr> = vips.iter().map(|vip| vip.address).collect();
        self.vips.retain(|address, vip| {
            vip.configured = configured.contains(address);
            vip.configured || vip.phase != VipPhase::Unassigned
        });
        for config in vips {
            let vip = self.vips.entry(config.address).or_insert_with(|| Vip {
                prefix_len: config.prefix_len,
                interface: None,
                eligible: BTreeSet::new(),
                nodes: None,
                weight: 1,
                owner: None,
                phase: VipPhase::Unassigned,
                epoch: 0,
                configured: true,
                preferred: None,
                operator_placed: false,
                applied: false,
            });
            vip.prefix_len = config.prefix_len;
            vip.interface.clone_from(&config.interface);
            vip.nodes.clone_from(&config.nodes);
            vip.weight = config.weight;
        }
        self.resolve_eligibility();
    }

    /// Recomputes every VIP's eligible PNNs from its node names and the members.
    fn resolve_eligibility(&mut self) {
        for vip in self.vips.values_mut() {
            vip.eligible = self
                .members
                .iter()
                .filter(|(_, member)| {
                    vip.nodes
                        .as_ref()
                        .is_none_or(|names| names.contains(&member.name))
                })
                .map(|(pnn, _)| *pnn)
                .collect();
        }
    }

    fn add_member(&mut self, name: &str, cluster_address: IpAddr) -> Outcome {
        if self.next_pnn == 0 {
            return rejected(format!(
                "cannot add {name:?}: the cluster has not applied its configuration yet"
            ));
        }
        if let Err(reason) = check_name(name) {
            return rejected(reason);
        }
        if let Some(pnn) = self.pnn_of_name(name) {
            return rejected(format!("there is already a node {name:?} (pnn {pnn})"));
        }
        if let Some(member) = self
            .members
            .values()
            .find(|member| member.cluster_address == cluster_address)
        {
            return rejected(format!(
                "{cluster_address} is already the cluster address of {}",
                member.name
            ));
        }
        let pnn = self.next_pnn;
        let Some(next) = pnn.checked_add(1) else {
            return rejected("no node numbers are left".to_owned());
        };
        self.next_pnn = next;
        self.members
            .insert(pnn, Member::new(name.to_owned(), cluster_address));
        self.resolve_eligibility();
        Outcome::Applied
    }

    fn remove_member(&mut self, node: Pnn) -> Outcome {
        let Some(member) = self.members.get(&node) else {
            return rejected(format!("unknown node {node}"));
        };
        if member.leaving {
            return rejected(format!("{} is already leaving", member.name));
        }
        let others = self
            .members
            .iter()
            .filter(|(pnn, member)| **pnn != node && !member.leaving)
            .count();
        if others == 0 {
            return rejected(format!(
                "{} is the last member; a cluster cannot remove its last node",
                member.name
            ));
        }
        self.with_member(node, |member| {
            member.leaving = true;
            Outcome::Applied
        })
    }

    fn forget_member(&mut self, node: Pnn) -> Outcome {
        let Some(member) = self.members.get(&node) else {
            return rejected(format!("unknown node {node}"));
        };
        if !member.leaving {
            return rejected(format!("{} is not leaving", member.name));
        }
        if let Some((address, _)) = self.vips.iter().find(|(_, vip)| vip.owner == Some(node)) {
            return rejected(format!("{} still owns {address}", member.name));
        }
        self.members.remove(&node);
        for vip in self.vips.values_mut() {
            if vip.preferred == Some(node) {
                vip.preferred = None;
            }
        }
        self.resolve_eligibility();
        Outcome::Applied
    }

    /// The PNN of the member called `name`.
    pub fn pnn_of_name(&self, name: &str) -> Option<Pnn> {
        self.members
            .iter()
            .find(|(_, member)| member.name == name)
            .map(|(pnn, _)| *pnn)
    }

    /// Whether this state shows `node` as removed from the cluster: the cluster was configured
    /// after `node` got its number, and it is no longer a member.
    pub fn was_removed(&self, node: Pnn) -> bool {
        node < self.next_pnn && !self.members.contains_key(&node)
    }

    /// The VIPs `node` holds (phase `Held`), in address order.
    pub fn held_by(&self, node: Pnn) -> impl Iterator<Item = (&IpAddr, &Vip)> {
        self.vips
            .iter()
            .filter(move |(_, vip)| vip.owner == Some(node) && vip.phase == VipPhase::Held)
    }

    /// Serializes the state for a snapshot.
    pub fn to_snapshot(&self) -> Vec<u8> {
        let versioned = Versioned {
            version: FORMAT_VERSION,
            state: self.clone(),
        };
        serde_json::to_vec(&versioned).unwrap_or_default()
    }

    /// Reads a snapshot written by [`ClusterState::to_snapshot`]; empty data is the empty state.
    pub fn from_snapshot(data: &[u8]) -> Result<ClusterState, String> {
        if data.is_empty() {
            return Ok(ClusterState::default());
        }
        let versioned: Versioned = serde_json::from_slice(data)
            .map_err(|error| format!("cannot read the state snapshot: {error}"))?;
        if versioned.version != FORMAT_VERSION {
            return Err(format!(
                "the state snapshot has format {}, this vipgate reads {FORMAT_VERSION}",
                versioned.version
            ));
        }
        Ok(versioned.state)
    }
}

/// Checks a node name as the cluster file does: `[a-z0-9-]`, 1 to 32 characters, not starting
/// with `-`.
pub fn check_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|byte| byte.is_ascii_lowercase() || byte.is_ascii_digit() || byte == b'-');
    if valid {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid node name: use a-z, 0-9 and -, 1 to {MAX_NAME_LEN} characters, not starting with -"
        ))
    }
}

#[derive(Serialize, Deserialize)]
struct Versioned {
    version: u32,
    state: ClusterState,
}

/// Encodes a command for a Raft entry.
pub fn encode_command(command: &Command) -> Vec<u8> {
    let mut data = FORMAT_VERSION.to_be_bytes().to_vec();
    // Serializing a plain enum of owned data into a Vec cannot fail.
    data.extend(serde_json::to_vec(command).unwrap_or_default());
    data
}

/// Decodes a Raft entry's command; a bad entry is an error, never a panic.
pub fn decode_command(data: &[u8]) -> Result<Command, String> {
    let (version, body) = data
        .split_first_chunk::<4>()
        .ok_or_else(|| format!("a command entry of {} bytes is too short", data.len()))?;
    let version = u32::from_be_bytes(*version);
    if version != FORMAT_VERSION {
        return Err(format!(
            "a command entry has format {version}, this vipgate reads {FORMAT_VERSION}"
        ));
    }
    serde_json::from_slice(body).map_err(|error| format!("cannot read a command entry: {error}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    fn cluster() -> ClusterState {
        let mut state = ClusterState::default();
        let members = (0..3)
            .map(|pnn| MemberConfig {
                pnn,
                name: format!("node{}", pnn + 1),
                cluster_address: ip(&format!("198.51.100.{}", 11 + pnn)),
            })
            .collect();
        let vips = vec![
            VipConfig {
                address: ip("192.0.2.101"),
                prefix_len: 24,
                interface: None,
                nodes: None,
                weight: 1,
            },
            VipConfig {
                address: ip("192.0.2.102"),
                prefix_len: 24,
                interface: Some("eth1".into()),
                nodes: Some(["node2".into(), "node3".into()].into()),
                weight: 2,
            },
        ];
        assert_eq!(
            state.apply(&Command::Configure {
                digest: "d1".into(),
                members,
                vips
            }),
            Outcome::Applied
        );
        state
    }

    fn applied(state: &mut ClusterState, command: Command) {
        assert_eq!(state.apply(&command), Outcome::Applied, "{command:?}");
    }

    fn refused(state: &mut ClusterState, command: Command) {
        let before = state.clone();
        assert!(
            matches!(state.apply(&command), Outcome::Rejected(_)),
            "{command:?} should be rejected"
        );
        assert_eq!(*state, before, "a rejected command changes nothing");
    }

    #[test]
    fn planned_move_goes_through_release_and_released() {
        let mut state = cluster();
        let vip = ip("192.0.2.101");
        applied(
            &mut state,
            Command::Assign {
                vip,
                epoch: 0,
                to: 0,
            },
        );
        assert_eq!(state.held_by(0).count(), 1);
        // Assigning a held VIP again, or with a stale epoch, is refused.
        refused(
            &mut state,
            Command::Assign {
                vip,
                epoch: 1,
                to: 1,
            },
        );
        refused(
            &mut state,
            Command::Release {
                vip,
                epoch: 0,
                to: None,
            },
        );
        applied(
            &mut state,
            Command::Release {
                vip,
                epoch: 1,
                to: None,
            },
        );
        assert_eq!(state.held_by(0).count(), 0);
        assert_eq!(state.vips[&vip].owner, Some(0));
        refused(
            &mut state,
            Command::Released {
                vip,
                epoch: 2,
                by: 1,
            },
        );
        applied(
            &mut state,
            Command::Released {
                vip,
                epoch: 2,
                by: 0,
            },
        );
        applied(
            &mut state,
            Command::Assign {
                vip,
                epoch: 3,
                to: 1,
            },
        );
        assert_eq!(state.vips[&vip].epoch, 4);
    }

    #[test]
    fn a_vip_assigned_where_an_operator_sent_it_is_marked_until_it_moves_again() {
        let mut state = cluster();
        let vip = ip("192.0.2.101");
        let assign = |epoch, to| Command::Assign { vip, epoch, to };
        applied(&mut state, assign(0, 0));
        assert!(!state.vips[&vip].operator_placed);
        let moves = [(Some(2), true), (None, false)];
        for (to, marked) in moves {
            let epoch = state.vips[&vip].epoch;
            let by = state.vips[&vip].owner.unwrap();
            applied(&mut state, Command::Release { vip, epoch, to });
            applied(
                &mut state,
                Command::Released {
                    vip,
                    epoch: epoch + 1,
                    by,
                },
            );
            applied(&mut state, assign(epoch + 2, 2 - by));
            assert_eq!(state.vips[&vip].operator_placed, marked, "{to:?}");
        }
    }

    #[test]
    fn the_live_set_follows_owner_health_fencing_and_moves_and_bumps_the_serial() {
        let mut state = cluster();
        let vip = ip("192.0.2.101");
        let healthy = |node| Command::SetHealth {
            node,
            healthy: true,
            failing: Vec::new(),
        };
        applied(&mut state, healthy(0));
        assert!(state.live_vips().is_empty(), "nothing held yet");
        let serial = state.live_serial;
        applied(
            &mut state,
            Command::Assign {
                vip,
                epoch: 0,
                to: 0,
            },
        );
        // Assigned is not live: the owner has yet to configure the address.
        assert!(state.live_vips().is_empty(), "live before the owner has it");
        assert_eq!(state.live_serial, serial);
        let epoch = state.vips[&vip].epoch;
        let confirm = |epoch, by| Command::Applied { vip, epoch, by };
        refused(&mut state, confirm(epoch, 1));
        refused(&mut state, confirm(epoch - 1, 0));
        refused(
            &mut state,
            Command::Applied {
                vip: ip("192.0.2.199"),
                epoch,
                by: 0,
            },
        );
        applied(&mut state, confirm(epoch, 0));
        assert_eq!(state.live_vips(), [vip].into());
        assert_eq!(state.live_serial, serial + 1);
        // A change that leaves the live set alone keeps the serial.
        applied(&mut state, healthy(1));
        assert_eq!(state.live_serial, serial + 1);
        // Each of these takes the VIP out of the live set, and undoing it brings it back.
        let outs = [
            (
                Command::SetHealth {
                    node: 0,
                    healthy: false,
                    failing: vec!["volume: hung".into()],
                },
                healthy(0),
            ),
            (
                Command::SetDisabled {
                    node: 0,
                    disabled: true,
                },
                Command::SetDisabled {
                    node: 0,
                    disabled: false,
                },
            ),
            (
                Command::Fence {
                    node: 0,
                    generation: 0,
                },
                Command::Unfence {
                    node: 0,
                    generation: 0,
                },
            ),
        ];
        for (out, back) in outs {
            let before = state.live_serial;
            applied(&mut state, out.clone());
            assert!(state.live_vips().is_empty(), "{out:?}");
            assert_eq!(state.live_serial, before + 1, "{out:?}");
            applied(&mut state, back.clone());
            assert_eq!(state.live_vips(), [vip].into(), "{back:?}");
            assert_eq!(state.live_serial, before + 2, "{back:?}");
        }
        // Releasing ends it too, and the serial survives a snapshot.
        let epoch = state.vips[&vip].epoch;
        applied(
            &mut state,
            Command::Release {
                vip,
                epoch,
                to: None,
            },
        );
        assert!(state.live_vips().is_empty());
        let restored = ClusterState::from_snapshot(&state.to_snapshot()).unwrap();
        assert_eq!(restored.live_serial, state.live_serial);
        // A late confirmation of the old assignment does not bring it back, and a new
        // assignment needs its own.
        refused(&mut state, confirm(epoch, 0));
        let epoch = state.vips[&vip].epoch;
        applied(&mut state, Command::Released { vip, epoch, by: 0 });
        applied(
            &mut state,
            Command::Assign {
                vip,
                epoch: epoch + 1,
                to: 0,
            },
        );
        assert!(state.live_vips().is_empty(), "live without a confirmation");
        refused(&mut state, confirm(epoch, 0));
        applied(&mut state, confirm(epoch + 2, 0));
        assert_eq!(state.live_vips(), [vip].into());
    }

    #[test]
    fn assign_respects_eligibility_and_fencing() {
        let mut state = cluster();
        let vip = ip("192.0.2.102");
        refused(
            &mut state,
            Command::Assign {
                vip,
                epoch: 0,
                to: 0,
            },
        );
        refused(
            &mut state,
            Command::Assign {
                vip,
                epoch: 0,
                to: 9,
            },
        );
        applied(
            &mut state,
            Command::Fence {
                node: 1,
                generation: 0,
            },
        );
        refused(
            &mut state,
            Command::Assign {
                vip,
                epoch: 0,
                to: 1,
            },
        );
        applied(
            &mut state,
            Command::Assign {
                vip,
                epoch: 0,
                to: 2,
            },
        );
    }

    #[test]
    fn revoke_needs_the_owner_fenced_at_that_generation() {
        let mut state = cluster();
        let vip = ip("192.0.2.101");
        applied(
            &mut state,
            Command::Assign {
                vip,
                epoch: 0,
                to: 0,
            },
        );
        refused(
            &mut state,
            Command::Revoke {
                vip,
                epoch: 1,
                from: 0,
                generation: 0,
            },
        );
        applied(
            &mut state,
            Command::Fence {
                node: 0,
                generation: 0,
            },
        );
        refused(
            &mut state,
            Command::Fence {
                node: 0,
                generation: 0,
            },
        );
        refused(
            &mut state,
            Command::Revoke {
                vip,
                epoch: 1,
                from: 0,
                generation: 1,
            },
        );
        // A revoke decided before an unfence is stale afterwards.
        let mut unfenced = state.clone();
        applied(
            &mut unfenced,
            Command::Unfence {
                node: 0,
                generation: 0,
            },
        );
        assert_eq!(unfenced.members[&0].generation, 1);
        refused(
            &mut unfenced,
            Command::Revoke {
                vip,
                epoch: 1,
                from: 0,
                generation: 0,
            },
        );
        applied(
            &mut state,
            Command::Revoke {
                vip,
                epoch: 1,
                from: 0,
                generation: 0,
            },
        );
        assert_eq!(state.vips[&vip].owner, None);
        refused(
            &mut state,
            Command::Unfence {
                node: 0,
                generation: 1,
            },
        );
        applied(
            &mut state,
            Command::Unfence {
                node: 0,
                generation: 0,
            },
        );
    }

    #[test]
    fn unconfigured_vips_are_forgotten_once_released() {
        let mut state = cluster();
        let kept = ip("192.0.2.101");
        let dropped = ip("192.0.2.102");
        applied(
            &mut state,
            Command::Assign {
                vip: dropped,
                epoch: 0,
                to: 1,
            },
        );
        let vips = vec![VipConfig {
            address: kept,
            prefix_len: 24,
            interface: None,
            nodes: Some(["node1".into()].into()),
            weight: 3,
        }];
        applied(
            &mut state,
            Command::Configure {
                digest: "d2".into(),
                members: vec![],
                vips,
            },
        );
        assert_eq!(state.vips[&kept].eligible, [0].into());
        assert_eq!(state.vips[&kept].weight, 3);
        assert!(!state.vips[&dropped].configured);
        assert_eq!(state.members.len(), 3, "configure never removes members");
        applied(
            &mut state,
            Command::Release {
                vip: dropped,
                epoch: 1,
                to: None,
            },
        );
        applied(
            &mut state,
            Command::Released {
                vip: dropped,
                epoch: 2,
                by: 1,
            },
        );
        assert!(!state.vips.contains_key(&dropped));
    }

    #[test]
    fn only_the_owner_reports_connections_and_only_of_its_vip() {
        let mut state = cluster();
        let vip = ip("192.0.2.101");
        let connection = |server: &str, client: &str| Connection {
            server: server.parse().unwrap(),
            client: client.parse().unwrap(),
        };
        let report = vec![
            connection("192.0.2.101:2049", "192.0.2.201:900"),
            connection("192.0.2.102:2049", "192.0.2.201:901"),
        ];
        refused(
            &mut state,
            Command::SetConnections {
                vip,
                by: 0,
                connections: report.clone(),
            },
        );
        applied(
            &mut state,
            Command::Assign {
                vip,
                epoch: 0,
                to: 0,
            },
        );
        refused(
            &mut state,
            Command::SetConnections {
                vip,
                by: 1,
                connections: report.clone(),
            },
        );
        applied(
            &mut state,
            Command::SetConnections {
                vip,
                by: 0,
                connections: report,
            },
        );
        assert_eq!(
            state.connections[&vip].len(),
            1,
            "another VIP's connection is dropped"
        );
        applied(
            &mut state,
            Command::SetConnections {
                vip,
                by: 0,
                connections: vec![],
            },
        );
        assert!(!state.connections.contains_key(&vip));
        // While releasing, the owner still reports (connections left behind when the address
        // went, for the next owner to tickle); once released, nobody does.
        let left_behind = vec![connection("192.0.2.101:2049", "192.0.2.201:902")];
        let epoch = state.vips[&vip].epoch;
        applied(
            &mut state,
            Command::Release {
                vip,
                epoch,
                to: None,
            },
        );
        let report = |by| Command::SetConnections {
            vip,
            by,
            connections: left_behind.clone(),
        };
        refused(&mut state, report(1));
        applied(&mut state, report(0));
        assert_eq!(state.connections[&vip].len(), 1);
        applied(
            &mut state,
            Command::Released {
                vip,
                epoch: epoch + 1,
                by: 0,
            },
        );
        refused(&mut state, report(0));
        assert_eq!(state.connections[&vip].len(), 1, "kept for the next owner");
    }

    #[test]
    fn flags_and_health() {
        let mut state = cluster();
        applied(
            &mut state,
            Command::SetHealth {
                node: 2,
                healthy: true,
                failing: vec![],
            },
        );
        applied(
            &mut state,
            Command::SetDisabled {
                node: 2,
                disabled: true,
            },
        );
        applied(
            &mut state,
            Command::Ban {
                node: 2,
                until_unix_ms: Some(5000),
            },
        );
        let member = &state.members[&2];
        assert!(member.healthy && member.disabled);
        assert!(member.banned_at(4999) && !member.banned_at(5000));
        refused(
            &mut state,
            Command::SetDisabled {
                node: 7,
                disabled: true,
            },
        );
    }

    #[test]
    fn only_the_first_configure_sets_members_and_node_lists_follow_names() {
        let mut state = cluster();
        assert_eq!(state.next_pnn, 3);
        // A later file that reorders, renames, readdresses or drops nodes changes no member.
        let members = vec![
            MemberConfig {
                pnn: 0,
                name: "node3".into(),
                cluster_address: ip("198.51.100.99"),
            },
            MemberConfig {
                pnn: 1,
                name: "other".into(),
                cluster_address: ip("198.51.100.11"),
            },
        ];
        let before = state.members.clone();
        let vips = vec![VipConfig {
            address: ip("192.0.2.102"),
            prefix_len: 24,
            interface: None,
            nodes: Some(["node3".into(), "node9".into()].into()),
            weight: 1,
        }];
        applied(
            &mut state,
            Command::Configure {
                digest: "d2".into(),
                members,
                vips,
            },
        );
        assert_eq!(state.members, before);
        // Node lists are names: node3 is still pnn 2; node9 is not a member (yet).
        assert_eq!(state.vips[&ip("192.0.2.102")].eligible, [2].into());
        applied(
            &mut state,
            Command::AddMember {
                name: "node9".into(),
                cluster_address: ip("198.51.100.19"),
            },
        );
        assert_eq!(state.pnn_of_name("node9"), Some(3));
        assert_eq!(state.vips[&ip("192.0.2.102")].eligible, [2, 3].into());
    }

    #[test]
    fn membership_commands_refuse_what_cannot_be() {
        let mut state = ClusterState::default();
        refused(
            &mut state,
            Command::AddMember {
                name: "node4".into(),
                cluster_address: ip("198.51.100.14"),
            },
        );
        let mut state = cluster();
        let add = |name: &str, address: &str| Command::AddMember {
            name: name.into(),
            cluster_address: ip(address),
        };
        // Duplicate name, duplicate address, bad names.
        refused(&mut state, add("node2", "198.51.100.14"));
        refused(&mut state, add("node4", "198.51.100.12"));
        for bad in ["", "-x", "Node4", "a b", &"n".repeat(33)] {
            refused(&mut state, add(bad, "198.51.100.14"));
        }
        applied(&mut state, add("node4", "198.51.100.14"));
        assert_eq!(state.next_pnn, 4);
        // Set-address: to a free address only, of a known node.
        refused(
            &mut state,
            Command::SetAddress {
                node: 1,
                cluster_address: ip("198.51.100.14"),
            },
        );
        refused(
            &mut state,
            Command::SetAddress {
                node: 9,
                cluster_address: ip("198.51.100.50"),
            },
        );
        applied(
            &mut state,
            Command::SetAddress {
                node: 1,
                cluster_address: ip("198.51.100.50"),
            },
        );
        applied(
            &mut state,
            Command::SetAddress {
                node: 1,
                cluster_address: ip("198.51.100.50"),
            },
        );
        assert_eq!(state.members[&1].cluster_address, ip("198.51.100.50"));
        // Removal: not the last member, not twice, not unknown.
        refused(&mut state, Command::RemoveMember { node: 7 });
        for node in [0, 1, 2] {
            applied(&mut state, Command::RemoveMember { node });
        }
        refused(&mut state, Command::RemoveMember { node: 0 });
        refused(&mut state, Command::RemoveMember { node: 3 });
        refused(&mut state, Command::ForgetMember { node: 3 });
    }

    #[test]
    fn a_leaving_member_is_forgotten_only_once_it_owns_nothing_and_its_number_stays_used() {
        let mut state = cluster();
        let vip = ip("192.0.2.101");
        applied(
            &mut state,
            Command::Assign {
                vip,
                epoch: 0,
                to: 2,
            },
        );
        applied(&mut state, Command::RemoveMember { node: 2 });
        assert!(state.members[&2].leaving);
        refused(&mut state, Command::ForgetMember { node: 2 });
        applied(
            &mut state,
            Command::Release {
                vip,
                epoch: 1,
                to: None,
            },
        );
        // Still releasing: the address may still be configured there.
        refused(&mut state, Command::ForgetMember { node: 2 });
        applied(
            &mut state,
            Command::Released {
                vip,
                epoch: 2,
                by: 2,
            },
        );
        applied(&mut state, Command::ForgetMember { node: 2 });
        assert!(!state.members.contains_key(&2));
        assert!(state.was_removed(2));
        assert!(!state.was_removed(1));
        assert!(!state.was_removed(3), "not given out yet");
        assert_eq!(state.vips[&ip("192.0.2.102")].eligible, [1].into());
        assert_eq!(state.vips[&vip].eligible, [0, 1].into());
        // The number of a removed node is never given again.
        applied(
            &mut state,
            Command::AddMember {
                name: "node3".into(),
                cluster_address: ip("198.51.100.13"),
            },
        );
        assert_eq!(state.pnn_of_name("node3"), Some(3));
        let restored = ClusterState::from_snapshot(&state.to_snapshot()).unwrap();
        assert_eq!(restored, state);
    }

    #[test]
    fn commands_and_snapshots_round_trip_and_bad_bytes_are_errors() {
        let mut state = cluster();
        applied(
            &mut state,
            Command::Assign {
                vip: ip("192.0.2.101"),
                epoch: 0,
                to: 2,
            },
        );
        let read = ClusterState::from_snapshot(&state.to_snapshot()).unwrap();
        assert_eq!(read, state);
        assert_eq!(
            ClusterState::from_snapshot(&[]).unwrap(),
            ClusterState::default()
        );
        let command = Command::Fence {
            node: 1,
            generation: 4,
        };
        assert_eq!(decode_command(&encode_command(&command)).unwrap(), command);
        for bad in [
            &b""[..],
            b"\x00\x00",
            b"\x00\x00\x00\x09{}",
            b"\x00\x00\x00\x01{nope",
        ] {
            assert!(decode_command(bad).is_err(), "{bad:?}");
        }
        assert!(ClusterState::from_snapshot(b"{\"version\":9,\"state\":{}}").is_err());
    }
}
