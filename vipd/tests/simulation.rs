//! A deterministic multi-node simulation of Raft + the replicated state + leases + placement,
//! with fault verbs (kill, freeze, cut, restart) and the one-owner check at every simulated
//! millisecond.
//!
//! Each simulated node is a real `NodeCore` over an in-memory log; the network delivers
//! messages after 1–3 ms unless a link is cut; each node's clock runs at its own rate (within
//! ±0.5 %) from its own offset. The *kernel* of each node is modelled as the daemon drives the
//! real one: after every input the node's kernel holds exactly `held()`, each address expiring
//! at its whole-second lifetime (plus 100 ms of deletion slack) on that node's clock. A killed
//! or frozen node's kernel keeps its addresses until they expire, as Linux does.
//!
//! Membership changes (add, remove, set-address) run through the same simulation: an added node
//! starts with an empty log and no bootstrap, as `vipgate node --join` does.

#![allow(clippy::unwrap_used, reason = "test code")]

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use vipd::apply::lifetime_for;
use vipd::lease::Pnn;
use vipd::node::{NodeCore, NodeSettings};
use vipd::state::{Command, MemberConfig, VipConfig, VipPhase};
use vipd::storage::MemLog;

/// The simulation's step, in milliseconds of real time.
const STEP_MS: u64 = 1;
/// How often each node's loop runs (the daemon ticks on every event and at least this often).
const LOOP_MS: u64 = 10;

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*: deterministic and good enough for delays and fault choices.
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

struct SimNode {
    pnn: Pnn,
    core: Option<NodeCore<MemLog>>,
    store: MemLog,
    frozen: bool,
    /// Clock: local = offset + real × rate.
    offset_ms: u64,
    rate: f64,
    /// VIP → real time at which the kernel deletes it.
    kernel: BTreeMap<IpAddr, u64>,
    next_loop_ms: u64,
    /// Added at runtime: starts without bootstrap voters and learns the cluster by snapshot.
    joiner: bool,
}

impl SimNode {
    fn local(&self, real_ms: u64) -> u64 {
        self.offset_ms + (real_ms as f64 * self.rate) as u64
    }
}

struct Sim {
    now: u64,
    nodes: Vec<SimNode>,
    /// (deliver at, from raft id, to raft id, payload)
    in_flight: Vec<(u64, u64, u64, Vec<u8>)>,
    cut: BTreeSet<(Pnn, Pnn)>,
    rng: Rng,
    vips: Vec<IpAddr>,
    /// The nodes of the bootstrapping configuration.
    initial: u32,
    /// Every instant at which a VIP was in two kernels: (time, VIP, nodes).
    duplicates: Vec<(u64, IpAddr, Vec<Pnn>)>,
}

fn configure(nodes: u32, vips: &[IpAddr]) -> Command {
    Command::Configure {
        digest: "sim".into(),
        members: (0..nodes)
            .map(|pnn| MemberConfig {
                pnn,
                name: format!("node{}", pnn + 1),
                cluster_address: IpAddr::from([198, 51, 100, 11 + pnn as u8]),
            })
            .collect(),
        vips: vips
            .iter()
            .map(|address| VipConfig {
                address: *address,
                prefix_len: if address.is_ipv4() { 24 } else { 64 },
                interface: None,
                nodes: None,
                weight: 1,
            })
            .collect(),
    }
}

fn settings(pnn: Pnn) -> NodeSettings {
    let mut settings = NodeSettings::from_timings(
        pnn,
        Duration::from_millis(100),
        Duration::from_millis(500),
        Duration::from_millis(1500),
        "eth1".into(),
    );
    // Deterministic, distinct election timeouts.
    let base = settings.election_ticks + 3 * pnn as usize;
    settings.election_range = Some((base, base + 1));
    // Compact often, so that snapshots are taken, restored and sent to lagging nodes.
    settings.compact_every = 64;
    settings
}

impl Sim {
    fn new(nodes: u32, vip_count: u8, seed: u64) -> Sim {
        let rng = Rng(seed | 1);
        let mut vips: Vec<IpAddr> = (0..vip_count.saturating_sub(1))
            .map(|index| IpAddr::from([192, 0, 2, 101 + index]))
            .collect();
        vips.push("2001:db8::101".parse().unwrap());
        let mut sim = Sim {
            now: 0,
            nodes: Vec::new(),
            in_flight: Vec::new(),
            cut: BTreeSet::new(),
            rng,
            vips,
            initial: nodes,
            duplicates: Vec::new(),
        };
        for _ in 0..nodes {
            sim.add_node(false);
        }
        for pnn in 0..nodes {
            sim.start(pnn);
        }
        sim
    }

    /// A new simulated machine (not started); a joiner has no bootstrap voters.
    fn add_node(&mut self, joiner: bool) -> Pnn {
        let pnn = self.nodes.len() as Pnn;
        let rate = 1.0 + (self.rng.below(1001) as f64 - 500.0) / 100_000.0;
        let offset_ms = self.rng.below(1_000_000);
        self.nodes.push(SimNode {
            pnn,
            core: None,
            store: MemLog::new(),
            frozen: false,
            offset_ms,
            rate,
            kernel: BTreeMap::new(),
            next_loop_ms: 0,
            joiner,
        });
        pnn
    }

    /// Proposes an operator's command on node `on` (as its control socket would).
    fn propose(&mut self, on: Pnn, command: Command) {
        let core = self.nodes[on as usize].core.as_mut().unwrap();
        core.propose_command(command).unwrap();
        self.settle(on as usize);
    }

    fn core(&self, pnn: Pnn) -> &NodeCore<MemLog> {
        self.nodes[pnn as usize].core.as_ref().unwrap()
    }

    fn start(&mut self, pnn: Pnn) {
        let voters: Vec<Pnn> = (0..self.initial).collect();
        let configure = configure(self.initial, &self.vips);
        let node = &mut self.nodes[pnn as usize];
        let bootstrap = (!node.joiner).then_some(voters.as_slice());
        let local = node.local(self.now);
        let mut core = NodeCore::new(
            settings(pnn),
            node.store.clone(),
            bootstrap,
            Some(configure),
            local,
            local + 1_700_000_000_000,
        )
        .unwrap();
        core.set_health(true, Vec::new());
        node.core = Some(core);
        node.frozen = false;
    }

    fn kill(&mut self, pnn: Pnn) {
        self.nodes[pnn as usize].core = None;
    }

    fn freeze(&mut self, pnn: Pnn, frozen: bool) {
        self.nodes[pnn as usize].frozen = frozen;
    }

    fn isolate(&mut self, pnn: Pnn, isolated: bool) {
        for other in 0..self.nodes.len() as Pnn {
            if other != pnn {
                for link in [(pnn, other), (other, pnn)] {
                    if isolated {
                        self.cut.insert(link);
                    } else {
                        self.cut.remove(&link);
                    }
                }
            }
        }
    }

    fn running(&self, pnn: Pnn) -> bool {
        let node = &self.nodes[pnn as usize];
        node.core.is_some() && !node.frozen
    }

    /// Runs the node's side after an input: persist/apply, send, drive its kernel.
    fn settle(&mut self, index: usize) {
        let now = self.now;
        let node = &mut self.nodes[index];
        let Some(core) = node.core.as_mut() else {
            return;
        };
        core.process_ready().unwrap();
        let outbox = core.take_outbox();
        let held = core.held();
        let wanted: BTreeSet<IpAddr> = held.iter().map(|vip| vip.address.addr()).collect();
        node.kernel.retain(|address, _| wanted.contains(address));
        for vip in &held {
            match lifetime_for(vip.lease_left) {
                Some(seconds) => {
                    // The lifetime runs on this node's clock; add the kernel's deletion slack.
                    let real = (f64::from(seconds) * 1000.0 / node.rate) as u64 + 100;
                    node.kernel.insert(vip.address.addr(), now + real);
                }
                None => {
                    node.kernel.remove(&vip.address.addr());
                }
            }
        }
        let present: BTreeSet<IpAddr> = node.kernel.keys().copied().collect();
        core.kernel_has(&present);
        core.process_ready().unwrap();
        let mut outbox = outbox;
        outbox.extend(core.take_outbox());
        let from = u64::from(node.pnn) + 1;
        for (to, payload) in outbox {
            let to_pnn = (to - 1) as Pnn;
            if self.cut.contains(&(node.pnn, to_pnn)) {
                continue;
            }
            let delay = 1 + self.rng.below(3);
            self.in_flight.push((now + delay, from, to, payload));
        }
    }

    fn step(&mut self) {
        self.now += STEP_MS;
        let now = self.now;
        // Kernels delete expired addresses whatever the daemon is doing.
        for node in &mut self.nodes {
            node.kernel.retain(|_, expires| *expires > now);
        }
        // Deliver.
        let (due, later): (Vec<_>, Vec<_>) = std::mem::take(&mut self.in_flight)
            .into_iter()
            .partition(|(at, ..)| *at <= now);
        self.in_flight = later;
        for (_, from, to, payload) in due {
            let index = (to - 1) as usize;
            if index >= self.nodes.len() || !self.running(index as Pnn) {
                continue;
            }
            let local = self.nodes[index].local(now);
            let core = self.nodes[index].core.as_mut().unwrap();
            core.tick(local, local + 1_700_000_000_000);
            core.receive(from, &payload);
            self.settle(index);
        }
        for index in 0..self.nodes.len() {
            if self.running(index as Pnn) && self.nodes[index].next_loop_ms <= now {
                self.nodes[index].next_loop_ms = now + LOOP_MS;
                let local = self.nodes[index].local(now);
                let core = self.nodes[index].core.as_mut().unwrap();
                core.tick(local, local + 1_700_000_000_000);
                self.settle(index);
            }
        }
        self.check();
    }

    fn check(&mut self) {
        for vip in &self.vips {
            let holders: Vec<Pnn> = self
                .nodes
                .iter()
                .filter(|node| node.kernel.contains_key(vip))
                .map(|node| node.pnn)
                .collect();
            if holders.len() > 1 {
                self.duplicates.push((self.now, *vip, holders));
            }
        }
    }

    fn run_for(&mut self, ms: u64) {
        for _ in 0..ms / STEP_MS {
            self.step();
        }
    }

    /// Runs until `condition` holds or `limit` ms pass; returns the time it took.
    fn run_until(&mut self, limit: u64, condition: impl Fn(&Sim) -> bool) -> Option<u64> {
        let start = self.now;
        while self.now - start <= limit {
            if condition(self) {
                return Some(self.now - start);
            }
            self.step();
        }
        None
    }

    /// Which node's kernel has each VIP.
    fn holders(&self) -> BTreeMap<IpAddr, Vec<Pnn>> {
        self.vips
            .iter()
            .map(|vip| {
                let holders = self
                    .nodes
                    .iter()
                    .filter(|node| node.kernel.contains_key(vip))
                    .map(|node| node.pnn)
                    .collect();
                (*vip, holders)
            })
            .collect()
    }

    fn all_hosted_by(&self, allowed: &[Pnn]) -> bool {
        self.holders()
            .values()
            .all(|holders| holders.len() == 1 && allowed.contains(&holders[0]))
    }

    fn held_by(&self, pnn: Pnn) -> Vec<IpAddr> {
        self.nodes[pnn as usize].kernel.keys().copied().collect()
    }

    fn leader(&self) -> Option<Pnn> {
        self.nodes
            .iter()
            .filter_map(|node| node.core.as_ref())
            .find(|core| core.is_leader())
            .map(NodeCore::pnn)
    }

    fn assert_no_duplicates(&self) {
        assert!(
            self.duplicates.is_empty(),
            "a VIP was on two nodes: first at {:?} (of {} instants)",
            self.duplicates.first(),
            self.duplicates.len()
        );
    }
}

fn balanced(sim: &Sim, nodes: &[Pnn]) -> bool {
    let holders = sim.holders();
    let mut loads: BTreeMap<Pnn, usize> = nodes.iter().map(|pnn| (*pnn, 0)).collect();
    for holders in holders.values() {
        if holders.len() != 1 {
            return false;
        }
        match loads.get_mut(&holders[0]) {
            Some(load) => *load += 1,
            None => return false,
        }
    }
    let max = loads.values().max().copied().unwrap_or(0);
    let min = loads.values().min().copied().unwrap_or(0);
    max - min <= 1
}

/// A started cluster with every VIP hosted and balanced.
fn settled(seed: u64) -> Sim {
    let mut sim = Sim::new(3, 4, seed);
    let took = sim.run_until(10_000, |sim| balanced(sim, &[0, 1, 2]));
    assert!(
        took.is_some(),
        "the cluster never settled: {:?}",
        sim.holders()
    );
    sim.assert_no_duplicates();
    sim
}

/// The failover budget measured in the simulation: lease 1.5 s → W ≈ 1.63 s plus detection.
const FAILOVER_LIMIT_MS: u64 = 2_500;

#[test]
fn a_cluster_starts_hosting_every_vip_balanced() {
    let mut sim = settled(1);
    let holders = sim.holders();
    // And it stays put: nothing moves without a reason.
    sim.run_for(3_000);
    assert_eq!(sim.holders(), holders);
    sim.assert_no_duplicates();
}

#[test]
fn a_killed_owner_loses_its_vips_to_the_survivors_without_overlap() {
    for seed in 1..=4 {
        let mut sim = settled(seed);
        let victim = (0..3).find(|pnn| !sim.held_by(*pnn).is_empty()).unwrap();
        let moved = sim.held_by(victim);
        sim.kill(victim);
        let survivors: Vec<Pnn> = (0..3).filter(|pnn| *pnn != victim).collect();
        let took = sim.run_until(FAILOVER_LIMIT_MS, |sim| {
            moved.iter().all(|vip| {
                let holders = &sim.holders()[vip];
                holders.len() == 1 && holders[0] != victim
            })
        });
        assert!(
            took.is_some(),
            "seed {seed}: not moved: {:?}",
            sim.holders()
        );
        eprintln!("seed {seed}: kill of node {victim}: moved after {took:?} ms");
        assert!(
            sim.run_until(2_000, |sim| balanced(sim, &survivors))
                .is_some()
        );
        sim.assert_no_duplicates();
    }
}

#[test]
fn a_frozen_owner_loses_its_vips_and_does_not_take_them_back_when_it_wakes() {
    let mut sim = settled(7);
    let victim = (0..3).find(|pnn| !sim.held_by(*pnn).is_empty()).unwrap();
    let moved = sim.held_by(victim);
    sim.freeze(victim, true);
    let took = sim.run_until(FAILOVER_LIMIT_MS, |sim| {
        moved.iter().all(|vip| {
            sim.holders()[vip].iter().all(|holder| *holder != victim)
                && sim.holders()[vip].len() == 1
        })
    });
    assert!(took.is_some(), "not moved: {:?}", sim.holders());
    sim.run_for(2_000);
    sim.freeze(victim, false);
    // Woken, it must not re-add what it held, not even for an instant.
    sim.run_for(3_000);
    for vip in &moved {
        assert_ne!(sim.holders()[vip], vec![victim], "{vip} went back");
    }
    sim.assert_no_duplicates();
}

#[test]
fn an_isolated_owner_drops_its_vips_and_rejoins_after_healing() {
    let mut sim = settled(11);
    let victim = (0..3).find(|pnn| !sim.held_by(*pnn).is_empty()).unwrap();
    sim.isolate(victim, true);
    let dropped = sim.run_until(FAILOVER_LIMIT_MS, |sim| sim.held_by(victim).is_empty());
    assert!(dropped.is_some(), "an isolated node kept its VIPs");
    let survivors: Vec<Pnn> = (0..3).filter(|pnn| *pnn != victim).collect();
    assert!(
        sim.run_until(FAILOVER_LIMIT_MS, |sim| sim.all_hosted_by(&survivors))
            .is_some(),
        "{:?}",
        sim.holders()
    );
    sim.isolate(victim, false);
    // After the hold-down (10 s) rebalancing gives it VIPs again.
    assert!(
        sim.run_until(20_000, |sim| balanced(sim, &[0, 1, 2]))
            .is_some()
    );
    sim.assert_no_duplicates();
}

#[test]
fn killing_the_leader_moves_its_vips_within_the_budget() {
    let mut sim = settled(5);
    let leader = sim.leader().unwrap();
    let moved = sim.held_by(leader);
    assert!(
        !moved.is_empty(),
        "with 4 VIPs on 3 nodes every node holds one"
    );
    sim.kill(leader);
    let took = sim.run_until(FAILOVER_LIMIT_MS + 1_000, |sim| {
        moved
            .iter()
            .all(|vip| sim.holders()[vip].len() == 1 && sim.holders()[vip][0] != leader)
    });
    eprintln!("leader kill: moved after {took:?} ms");
    assert!(took.is_some(), "{:?}", sim.holders());
    sim.assert_no_duplicates();
}

#[test]
fn a_restarted_node_rejoins_without_stealing_and_a_full_restart_keeps_the_state() {
    let mut sim = settled(3);
    let victim = 1;
    sim.kill(victim);
    let survivors = [0, 2];
    assert!(
        sim.run_until(5_000, |sim| sim.all_hosted_by(&survivors))
            .is_some()
    );
    let before = sim.holders();
    sim.start(victim);
    // Within the hold-down it takes nothing back.
    sim.run_for(5_000);
    assert_eq!(sim.holders(), before);
    // Restart everyone at once: the VIPs end up hosted again, and the log kept the state.
    let owners_before: BTreeMap<IpAddr, Option<Pnn>> = sim.nodes[0]
        .core
        .as_ref()
        .unwrap()
        .state()
        .vips
        .iter()
        .map(|(address, vip)| (*address, vip.owner))
        .collect();
    for pnn in 0..3 {
        sim.kill(pnn);
    }
    for pnn in 0..3 {
        sim.start(pnn);
    }
    assert!(
        sim.run_until(10_000, |sim| sim.all_hosted_by(&[0, 1, 2]))
            .is_some()
    );
    // The log kept the state: every VIP is back on the node that held it before.
    let owners_after: BTreeMap<IpAddr, Option<Pnn>> = sim
        .holders()
        .into_iter()
        .map(|(address, holders)| (address, holders.first().copied()))
        .collect();
    assert_eq!(owners_after, owners_before);
    sim.assert_no_duplicates();
}

#[test]
fn random_faults_never_put_a_vip_on_two_nodes() {
    for seed in 100..106 {
        let mut sim = settled(seed);
        for _ in 0..12 {
            let victim = sim.rng.below(3) as Pnn;
            match sim.rng.below(4) {
                0 => sim.kill(victim),
                1 => sim.freeze(victim, true),
                2 => sim.isolate(victim, true),
                _ => {}
            }
            let pause = 200 + sim.rng.below(3_000);
            sim.run_for(pause);
            // Heal everything.
            for pnn in 0..3 {
                if sim.nodes[pnn as usize].core.is_none() {
                    sim.start(pnn);
                }
                sim.freeze(pnn, false);
                sim.isolate(pnn, false);
            }
            let settle = sim.rng.below(2_000);
            sim.run_for(settle);
        }
        let hosted = sim.run_until(20_000, |sim| sim.all_hosted_by(&[0, 1, 2]));
        assert!(
            hosted.is_some(),
            "seed {seed}: not all hosted after healing: {:?}",
            sim.holders()
        );
        sim.assert_no_duplicates();
        let phases: Vec<VipPhase> = sim.nodes[0]
            .core
            .as_ref()
            .unwrap()
            .state()
            .vips
            .values()
            .map(|vip| vip.phase)
            .collect();
        assert!(
            phases.iter().all(|phase| *phase == VipPhase::Held),
            "{phases:?}"
        );
    }
}

/// Whether every running node agrees that `pnn` is a member, and the leader has it as a voter.
fn voter_everywhere(sim: &Sim, pnn: Pnn) -> bool {
    let Some(leader) = sim.leader() else {
        return false;
    };
    sim.core(leader).voters().contains(&pnn)
        && sim
            .nodes
            .iter()
            .filter(|node| sim.running(node.pnn))
            .all(|node| {
                let core = sim.core(node.pnn);
                core.state().members.contains_key(&pnn) && core.voters().contains(&pnn)
            })
}

/// Whether every running node other than `pnn` has forgotten it and the leader's Raft
/// configuration no longer has it.
fn gone_everywhere(sim: &Sim, pnn: Pnn) -> bool {
    let Some(leader) = sim.leader() else {
        return false;
    };
    let core = sim.core(leader);
    !core.voters().contains(&pnn)
        && !core.learners().contains(&pnn)
        && sim
            .nodes
            .iter()
            .filter(|node| node.pnn != pnn && sim.running(node.pnn))
            .all(|node| !sim.core(node.pnn).state().members.contains_key(&pnn))
}

fn add_member(name: &str, last_octet: u8) -> Command {
    Command::AddMember {
        name: name.into(),
        cluster_address: IpAddr::from([198, 51, 100, last_octet]),
    }
}

#[test]
fn an_added_node_joins_by_snapshot_becomes_a_voter_and_takes_its_share() {
    for seed in [21, 22, 23] {
        let mut sim = settled(seed);
        let on = (seed % 3) as Pnn;
        sim.propose(on, add_member("node4", 14));
        assert!(
            sim.run_until(2_000, |sim| sim.core(0).state().members.contains_key(&3))
                .is_some(),
            "seed {seed}: the member was not added"
        );
        // Not started yet: it is a learner only, so it costs the cluster no quorum.
        sim.run_for(1_000);
        let leader = sim.leader().unwrap();
        assert!(!sim.core(leader).voters().contains(&3), "seed {seed}");
        assert_eq!(sim.core(leader).learners(), &[3].into(), "seed {seed}");
        let new = sim.add_node(true);
        assert_eq!(new, 3);
        sim.start(new);
        let became = sim.run_until(5_000, |sim| voter_everywhere(sim, 3));
        if became.is_none() {
            for pnn in 0..4 {
                let core = sim.core(pnn);
                eprintln!(
                    "{pnn}: leader {:?} progress {:?} voters {:?} learners {:?} members {:?}",
                    core.leader(),
                    core.raft_progress(),
                    core.voters(),
                    core.learners(),
                    core.state().members.keys().collect::<Vec<_>>()
                );
            }
        }
        assert!(became.is_some(), "seed {seed}: node 4 never became a voter");
        // It learnt the whole state, not entries without the bootstrap configuration.
        assert_eq!(sim.core(3).voters(), &[0, 1, 2, 3].into(), "seed {seed}");
        // A new node is settled at once (never fenced): balancing gives it a VIP.
        assert!(
            sim.run_until(5_000, |sim| balanced(sim, &[0, 1, 2, 3]))
                .is_some(),
            "seed {seed}: {:?}",
            sim.holders()
        );
        sim.assert_no_duplicates();
    }
}

#[test]
fn a_member_added_but_never_started_leaves_failover_intact() {
    let mut sim = settled(31);
    sim.propose(1, add_member("node4", 14));
    sim.add_node(true);
    sim.run_for(1_000);
    let victim = (0..3).find(|pnn| !sim.held_by(*pnn).is_empty()).unwrap();
    sim.kill(victim);
    let survivors: Vec<Pnn> = (0..3).filter(|pnn| *pnn != victim).collect();
    assert!(
        sim.run_until(FAILOVER_LIMIT_MS + 1_000, |sim| sim
            .all_hosted_by(&survivors))
            .is_some(),
        "two of three voters must still fail over: {:?}",
        sim.holders()
    );
    let leader = sim.leader().unwrap();
    assert!(
        !sim.core(leader).state().members[&3].fenced,
        "a silent member that owns nothing is not fenced"
    );
    sim.assert_no_duplicates();
}

#[test]
fn a_removed_member_hands_its_vips_over_first_then_leaves_raft() {
    // Seeds where the removed node is a follower, and where it is the leader.
    for (seed, remove_leader) in [(41, false), (42, true), (43, false), (44, true)] {
        let mut sim = settled(seed);
        let leader = sim.leader().unwrap();
        let victim = if remove_leader {
            leader
        } else {
            (leader + 1) % 3
        };
        let moved = sim.held_by(victim);
        assert!(!moved.is_empty());
        let on = (0..3).find(|pnn| *pnn != victim).unwrap();
        sim.propose(on, Command::RemoveMember { node: victim });
        let survivors: Vec<Pnn> = (0..3).filter(|pnn| *pnn != victim).collect();
        assert!(
            sim.run_until(5_000, |sim| gone_everywhere(sim, victim))
                .is_some(),
            "seed {seed}: node {victim} was not removed: {:?}",
            sim.holders()
        );
        assert!(
            sim.all_hosted_by(&survivors),
            "seed {seed}: {:?}",
            sim.holders()
        );
        // The removed node heard of it while it was still a peer.
        assert!(sim.core(victim).removed(), "seed {seed}");
        assert_eq!(sim.core(sim.leader().unwrap()).voters().len(), 2);
        // The two left still fail over: kill the one with most VIPs.
        sim.kill(victim);
        let next = survivors[0];
        sim.kill(next);
        let last = survivors[1];
        // One voter of two is not a quorum: the VIPs of the killed one stay unassigned, never
        // doubled (this checks the removal did not shrink the quorum behind our back).
        sim.run_for(4_000);
        sim.assert_no_duplicates();
        sim.start(next);
        assert!(
            sim.run_until(10_000, |sim| sim.all_hosted_by(&[next, last]))
                .is_some(),
            "seed {seed}: {:?}",
            sim.holders()
        );
        sim.assert_no_duplicates();
    }
}

#[test]
fn removing_a_dead_owner_waits_for_its_lease_and_a_restarted_one_stays_out() {
    let mut sim = settled(51);
    let victim = (0..3).find(|pnn| !sim.held_by(*pnn).is_empty()).unwrap();
    sim.kill(victim);
    // A proposal needs a live leader to reach (the daemon retries until one exists).
    assert!(
        sim.run_until(5_000, |sim| sim
            .leader()
            .is_some_and(|leader| leader != victim))
            .is_some()
    );
    let on = (0..3).find(|pnn| *pnn != victim).unwrap();
    sim.propose(on, Command::RemoveMember { node: victim });
    let gone = sim.run_until(8_000, |sim| gone_everywhere(sim, victim));
    if gone.is_none() {
        for pnn in 0..3 {
            if let Some(core) = sim.nodes[pnn].core.as_ref() {
                eprintln!(
                    "{pnn}: leader {:?} progress {:?} voters {:?} learners {:?} members {:?}",
                    core.leader(),
                    core.raft_progress(),
                    core.voters(),
                    core.learners(),
                    core.state().members
                );
            }
        }
    }
    assert!(gone.is_some(), "{:?}", sim.holders());
    let survivors: Vec<Pnn> = (0..3).filter(|pnn| *pnn != victim).collect();
    assert!(sim.all_hosted_by(&survivors), "{:?}", sim.holders());
    // It comes back with its old log: nobody talks to it, so it gets no lease and no VIP.
    sim.start(victim);
    sim.run_for(5_000);
    assert!(sim.held_by(victim).is_empty());
    assert!(sim.all_hosted_by(&survivors), "{:?}", sim.holders());
    sim.assert_no_duplicates();
}

#[test]
fn set_address_reaches_every_node_even_one_cut_off_while_it_was_made() {
    let mut sim = settled(61);
    sim.isolate(2, true);
    let address = IpAddr::from([198, 51, 100, 99]);
    sim.propose(
        0,
        Command::SetAddress {
            node: 1,
            cluster_address: address,
        },
    );
    sim.run_for(1_000);
    sim.isolate(2, false);
    assert!(
        sim.run_until(5_000, |sim| (0..3)
            .all(
                |pnn| sim.core(pnn).state().members[&1].cluster_address == address
            ))
        .is_some()
    );
    sim.assert_no_duplicates();
}

#[test]
fn random_membership_changes_under_faults_never_put_a_vip_on_two_nodes() {
    for seed in 200..204 {
        let mut sim = settled(seed);
        let mut next_octet = 20;
        for round in 0..6 {
            let members: Vec<Pnn> = {
                let leader = sim.leader();
                let Some(leader) = leader else {
                    sim.run_for(1_000);
                    continue;
                };
                sim.core(leader)
                    .state()
                    .members
                    .iter()
                    .filter(|(_, member)| !member.leaving)
                    .map(|(pnn, _)| *pnn)
                    .collect()
            };
            let proposer = *members
                .iter()
                .find(|pnn| sim.running(**pnn))
                .unwrap_or(&members[0]);
            if members.len() <= 3 || round % 2 == 0 {
                next_octet += 1;
                sim.propose(
                    proposer,
                    add_member(&format!("extra{next_octet}"), next_octet),
                );
                let new = sim.add_node(true);
                sim.start(new);
            } else {
                let victim = members[sim.rng.below(members.len() as u64) as usize];
                sim.propose(proposer, Command::RemoveMember { node: victim });
            }
            // A fault on a random running node while the change is under way.
            let victim = members[sim.rng.below(members.len() as u64) as usize];
            match sim.rng.below(3) {
                0 => sim.freeze(victim, true),
                1 => sim.isolate(victim, true),
                _ => {}
            }
            let pause = 500 + sim.rng.below(2_000);
            sim.run_for(pause);
            for pnn in 0..sim.nodes.len() as Pnn {
                sim.freeze(pnn, false);
                sim.isolate(pnn, false);
            }
            sim.run_for(3_000);
        }
        let leader = sim.run_until(5_000, |sim| sim.leader().is_some());
        assert!(leader.is_some(), "seed {seed}: no leader in the end");
        let members: Vec<Pnn> = {
            let core = sim.core(sim.leader().unwrap());
            core.state().members.keys().copied().collect()
        };
        assert!(
            sim.run_until(20_000, |sim| sim.all_hosted_by(&members))
                .is_some(),
            "seed {seed}: not all hosted by members {members:?}: {:?}",
            sim.holders()
        );
        let core = sim.core(sim.leader().unwrap());
        eprintln!(
            "seed {seed}: members {members:?}, voters {:?}, learners {:?}, next pnn {}",
            core.voters(),
            core.learners(),
            core.state().next_pnn
        );
        assert!(core.state().next_pnn > 3, "seed {seed}: nothing was added");
        sim.assert_no_duplicates();
    }
}

#[test]
fn a_thawed_node_is_held_down_even_by_a_leader_that_restarted_while_it_was_frozen() {
    for seed in [71, 72, 73] {
        let mut sim = settled(seed);
        let leader = sim.leader().unwrap();
        let victim = (0..3)
            .find(|pnn| *pnn != leader && !sim.held_by(*pnn).is_empty())
            .unwrap();
        sim.freeze(victim, true);
        assert!(
            sim.run_until(FAILOVER_LIMIT_MS, |sim| sim.held_by(victim).is_empty()
                && sim.all_hosted_by(&[0, 1, 2]))
                .is_some(),
            "seed {seed}: {:?}",
            sim.holders()
        );
        // Both other nodes restart (the leader among them): whichever leads next has never
        // seen the victim available.
        let others: Vec<Pnn> = (0..3).filter(|pnn| *pnn != victim).collect();
        for pnn in &others {
            sim.kill(*pnn);
        }
        for pnn in &others {
            sim.start(*pnn);
        }
        assert!(
            sim.run_until(5_000, |sim| sim.leader().is_some()).is_some(),
            "seed {seed}: no leader"
        );
        sim.freeze(victim, false);
        // For most of the hold-down (10 s) the thawed node gets nothing back, at no instant.
        for _ in 0..8_000 {
            sim.step();
            assert!(
                sim.held_by(victim).is_empty(),
                "seed {seed}: node {victim} got {:?} back at once",
                sim.held_by(victim)
            );
        }
        // After the hold-down, rebalancing gives it its share again.
        assert!(
            sim.run_until(15_000, |sim| balanced(sim, &[0, 1, 2]))
                .is_some(),
            "seed {seed}: {:?}",
            sim.holders()
        );
        sim.assert_no_duplicates();
    }
}
