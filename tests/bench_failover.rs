//! The failover benchmark of BENCHMARKS.md (run by `tests/bench/failover`; ignored in the
//! ordinary test run), for vipgate and, in the same run, for keepalived as the peer. Each system
//! gets the same lab: three nodes serving NFS, one client. For vipgate the nodes run `vipgate
//! node`; for keepalived (see `bench/keepalived.rs`) they run Debian's keepalived next to the
//! standalone `vipgate nfs` server. A prober in the client namespace makes an RPC NULL call to
//! the NFS service on a VIP every 10 ms, each on a new TCP connection with a 100 ms deadline,
//! and notes which node each call reached (the MAC address of the client's neighbour entry for
//! the VIP, read before and after the call); a sampler reads every node's addresses every 20 ms
//! and counts the instants at which a VIP is on two nodes.
//!
//! For each fault — the VIP owner's daemon SIGKILLed, SIGSTOPped, its links cut, the Raft
//! leader (holding the VIP) SIGKILLed; for keepalived, which has no leader, the node that is
//! MASTER of most VIPs — the failover time is from the fault to the end of the first NULL call
//! answered by another node than the faulty one: the VIP answering from its new owner, as a
//! client sees it. Each trial also records the longest run of failed calls (the outage the
//! client saw), whether the faulty node still held the VIP when the new owner answered, and the
//! longest run of failed calls while the fault is undone (restart, SIGCONT, reconnect). For
//! vipgate a planned `vipgate moveip` is measured twice: the time the address is on no node
//! (sampled as fast as netlink answers), and the longest run of failed calls around the move (a
//! call in flight while the address moves waits out its 100 ms deadline, so this one counts in
//! steps of about 100 ms). Results go to stdout as JSON lines and Markdown tables, with the
//! ratios vipgate/keepalived.
//!
//! `VIPGATE_BENCH_TRIALS` sets the trials per fault (default 20); `VIPGATE_BENCH_ONLY` set to
//! `vipgate` or `keepalived` runs that system only; `VIPGATE_BENCH_FAULTS` (comma-separated
//! `kill`, `stop`, `cut`, `leader`) runs those faults only.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a benchmark reports a failure"
)]
#![allow(
    clippy::zombie_processes,
    reason = "node daemons are stopped by the lab's teardown; a killed one is reaped when the run ends"
)]

mod common;
#[path = "bench/keepalived.rs"]
mod keepalived;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{NODES, Sampler, VIPGATE, holders, logs, signal, start_cluster, vipgate};
use futures::TryStreamExt;
use keepalived::KeepalivedLab;
use nix::sys::signal::Signal;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourState};
use vipd::health::{NFS_PROGRAM, Probe, RpcNullProbe};
use vipgate::lab::plan::PUBLIC_INTERFACE;
use vipgate::lab::{Lab, Network, cluster, netns};

const PROBE_EVERY: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
const TRIAL_DEADLINE: Duration = Duration::from_secs(15);
/// Generous: on this shared machine a starved node can take a while to rejoin.
const SETTLE_DEADLINE: Duration = Duration::from_secs(60);
/// How long the VIP may take to answer again once a fault is undone: a client whose neighbour
/// entry points at a node that gave the address up without anyone announcing the new owner
/// waits for the entry to expire (up to about a minute with Linux's defaults).
const UNDO_DEADLINE: Duration = Duration::from_secs(120);

/// One NULL call: when it started, when it ended, whether it was answered, and the link-layer
/// address the client sent it to (its neighbour entry for the target, when the same before and
/// after the call; `None` when it changed meanwhile or was unresolved).
#[derive(Debug, Clone)]
struct Call {
    started: Instant,
    ended: Instant,
    ok: bool,
    via: Option<String>,
}

/// Calls the NFS service on `target` from the client namespace until stopped.
struct Prober {
    target: Mutex<IpAddr>,
    calls: Mutex<Vec<Call>>,
    stop: AtomicBool,
}

impl Prober {
    fn new() -> Prober {
        Prober {
            target: Mutex::new(cluster::vip_addresses()[0]),
            calls: Mutex::new(Vec::new()),
            stop: AtomicBool::new(false),
        }
    }

    fn run(&self, lab: &Lab) {
        let namespace = lab.host("client1").unwrap().netns.clone();
        netns::run_in(&namespace, || {
            // A netlink socket of the client's namespace, for its neighbour table.
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let handle = runtime.block_on(async {
                let (connection, handle, _) = rtnetlink::new_connection().unwrap();
                tokio::spawn(connection);
                handle
            });
            while !self.stop.load(Ordering::Relaxed) {
                let target = *self.target.lock().unwrap();
                let probe = RpcNullProbe::new(
                    "bench",
                    SocketAddr::new(target, 2049),
                    NFS_PROGRAM,
                    3,
                    PROBE_TIMEOUT,
                );
                let before = runtime.block_on(neighbour_mac(&handle, target));
                let started = Instant::now();
                let ok = probe.check().is_ok();
                let ended = Instant::now();
                let after = runtime.block_on(neighbour_mac(&handle, target));
                let via = match (before, after) {
                    (Some(before), Some(after)) => (before == after).then_some(after),
                    (None, after) => after,
                    (Some(_), None) => None,
                };
                self.calls.lock().unwrap().push(Call {
                    started,
                    ended,
                    ok,
                    via,
                });
                std::thread::sleep(PROBE_EVERY.saturating_sub(ended - started));
            }
        })
        .unwrap();
    }

    fn aim(&self, vip: IpAddr) {
        *self.target.lock().unwrap() = vip;
        self.calls.lock().unwrap().clear();
    }

    /// Waits until the last few calls to the current target succeeded.
    fn wait_serving(&self) -> bool {
        self.wait_serving_for(TRIAL_DEADLINE)
    }

    /// [`Prober::wait_serving`] with a deadline of `timeout`.
    fn wait_serving_for(&self, timeout: Duration) -> bool {
        common::wait_until(timeout, || {
            let calls = self.calls.lock().unwrap();
            calls.len() >= 3 && calls.iter().rev().take(3).all(|call| call.ok)
        })
    }

    /// After a fault at `fault` on the node whose MAC is `victim`: the time from the fault to
    /// the end of the first successful call, started after it, that reached another node.
    fn answered_elsewhere(&self, fault: Instant, victim: &str) -> Option<Duration> {
        let calls = self.calls.lock().unwrap();
        calls
            .iter()
            .find(|call| {
                call.started >= fault
                    && call.ok
                    && call.via.as_deref().is_some_and(|via| via != victim)
            })
            .map(|call| call.ended - fault)
    }

    /// The longest run of failed calls among those started in `from..to` (from the start of
    /// its first call to the end of the next success, or of its last call if none followed).
    fn longest_failure(&self, from: Instant, to: Instant) -> Duration {
        let calls = self.calls.lock().unwrap();
        let mut longest = Duration::ZERO;
        let mut gap_start: Option<Instant> = None;
        for call in calls
            .iter()
            .filter(|call| call.started >= from && call.started < to)
        {
            match (call.ok, gap_start) {
                (false, None) => gap_start = Some(call.started),
                (true, Some(start)) => {
                    longest = longest.max(call.ended - start);
                    gap_start = None;
                }
                _ => {}
            }
            if let (false, Some(start)) = (call.ok, gap_start) {
                longest = longest.max(call.ended - start);
            }
        }
        longest
    }

    /// The longest run of failed calls since the last [`Prober::aim`].
    fn longest_gap(&self) -> Duration {
        let far = Instant::now() + Duration::from_secs(3600);
        let first = self.calls.lock().unwrap().first().map(|call| call.started);
        first.map_or(Duration::ZERO, |first| self.longest_failure(first, far))
    }
}

/// The link-layer address of the client's usable neighbour entry for `target`, if any.
async fn neighbour_mac(handle: &rtnetlink::Handle, target: IpAddr) -> Option<String> {
    let mut found = None;
    let mut messages = handle.neighbours().get().execute();
    // The whole dump is read, so that no answer is left queued on the socket.
    while let Ok(Some(message)) = messages.try_next().await {
        if matches!(
            message.header.state,
            NeighbourState::Incomplete | NeighbourState::Failed
        ) {
            continue;
        }
        let mut address = None;
        let mut mac = None;
        for attribute in &message.attributes {
            match attribute {
                NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                    address = Some(IpAddr::V4(*ip));
                }
                NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                    address = Some(IpAddr::V6(*ip));
                }
                NeighbourAttribute::LinkLayerAddress(bytes) => mac = Some(format_mac(bytes)),
                _ => {}
            }
        }
        if address == Some(target) && mac.is_some() {
            found = mac;
        }
    }
    found
}

/// As `Lab::mac` prints a MAC address.
fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Stop,
    Cut,
    LeaderKill,
}

const FAULTS: [Fault; 4] = [Fault::Kill, Fault::Stop, Fault::Cut, Fault::LeaderKill];

/// The faults named in `VIPGATE_BENCH_FAULTS` (comma-separated `kill`, `stop`, `cut`,
/// `leader`), all of them when unset.
fn selected_faults() -> Vec<Fault> {
    let Ok(names) = std::env::var("VIPGATE_BENCH_FAULTS") else {
        return FAULTS.to_vec();
    };
    names
        .split(',')
        .map(|name| match name.trim() {
            "kill" => Fault::Kill,
            "stop" => Fault::Stop,
            "cut" => Fault::Cut,
            "leader" => Fault::LeaderKill,
            other => panic!("VIPGATE_BENCH_FAULTS: no fault {other:?} (kill, stop, cut, leader)"),
        })
        .collect()
}

impl Fault {
    fn label(self) -> &'static str {
        match self {
            Fault::Kill => "daemon SIGKILL",
            Fault::Stop => "daemon SIGSTOP",
            Fault::Cut => "links cut",
            Fault::LeaderKill => "leader SIGKILL",
        }
    }
}

/// What one fault trial measured.
#[derive(Debug, Clone, Copy)]
struct Trial {
    /// From the fault to the VIP answering from another node.
    took: Duration,
    /// The longest run of failed calls between the fault and its undoing.
    outage: Duration,
    /// Whether the faulty node still held the VIP when the new owner answered.
    doubled: bool,
    /// The longest run of failed calls while the fault was undone and the lab settled again.
    restore_outage: Duration,
    /// Sampled instants with a VIP on two nodes during the trial.
    duplicates: usize,
    /// Whether the lab needed more than [`SETTLE_DEADLINE`] to settle once the fault was undone.
    slow_settle: bool,
}

/// Everything one system's run measured.
struct Report {
    system: &'static str,
    faults: Vec<(Fault, Vec<Trial>)>,
    /// Further cases measured as one duration per trial (vipgate's planned moves).
    extra: Vec<(&'static str, Vec<Duration>)>,
    duplicates: usize,
    samples: u64,
}

fn status(lab: &Lab, host: &str) -> Option<serde_json::Value> {
    let (code, text) = vipgate(lab, host, &["status", "--json"]);
    (code == 0)
        .then(|| serde_json::from_str(&text).ok())
        .flatten()
}

/// Every node connected, healthy and unfenced in `host`'s view, and every VIP on one node.
fn settled(lab: &Lab, host: &str) -> bool {
    let Some(status) = status(lab, host) else {
        return false;
    };
    let nodes_ok = status["nodes"].as_array().is_some_and(|nodes| {
        nodes.len() == NODES.len()
            && nodes.iter().all(|node| {
                node["flags"]
                    .as_object()
                    .is_some_and(|flags| flags.values().all(|flag| flag == false))
            })
    });
    nodes_ok && holders(lab).values().all(|nodes| nodes.len() == 1)
}

fn leader(lab: &Lab) -> Option<&'static str> {
    NODES.iter().find_map(|host| {
        let index = status(lab, host)?["leader"].as_u64()?;
        NODES.get(usize::try_from(index).ok()?).copied()
    })
}

/// The IPv4 VIPs on exactly one node, with that node.
fn single_owners(lab: &Lab) -> Vec<(IpAddr, &'static str)> {
    holders(lab)
        .into_iter()
        .filter(|(vip, nodes)| vip.is_ipv4() && nodes.len() == 1)
        .map(|(vip, nodes)| (vip, nodes[0]))
        .collect()
}

/// The VIP to fault and its owner: for the leader fault a VIP of the leader (moved there first
/// if it holds none), otherwise a VIP whose owner is not the leader.
fn choose(lab: &Lab, fault: Fault) -> (IpAddr, &'static str) {
    let leader = leader(lab).unwrap();
    let owners = single_owners(lab);
    if fault == Fault::LeaderKill {
        if let Some(pair) = owners.iter().find(|(_, owner)| *owner == leader) {
            return *pair;
        }
        let (vip, _) = owners[0];
        let (code, text) = vipgate(lab, leader, &["moveip", &vip.to_string(), leader]);
        assert_eq!(code, 0, "moveip {vip} {leader}: {text}");
        assert!(common::wait_until(TRIAL_DEADLINE, || {
            holders(lab)[&vip] == [leader]
        }));
        return (vip, leader);
    }
    *owners
        .iter()
        .find(|(_, owner)| *owner != leader)
        .unwrap_or(&owners[0])
}

fn survivor(victim: &str) -> &'static str {
    NODES.iter().copied().find(|node| *node != victim).unwrap()
}

/// What a system under test does for a trial: pick the VIP and node to fault, inject the fault,
/// undo it and wait until the lab is settled again.
trait System {
    fn lab(&self) -> &Lab;
    fn choose(&self, fault: Fault, index: usize) -> (IpAddr, &'static str);
    fn inject(&self, fault: Fault, victim: &'static str);
    fn undo(&self, fault: Fault, victim: &'static str);
    /// Waits until the lab is settled again after a fault of `victim`; a description of what
    /// is wrong if it does not.
    fn settle(&self, victim: &'static str) -> Result<(), String>;
    /// Whether the faulty node may keep the VIP once another answers (it must not in vipgate).
    fn may_double(&self) -> bool;
    fn logs(&self) -> String;
}

struct Vipgate(Lab);

impl System for Vipgate {
    fn lab(&self) -> &Lab {
        &self.0
    }

    fn choose(&self, fault: Fault, _index: usize) -> (IpAddr, &'static str) {
        choose(&self.0, fault)
    }

    fn inject(&self, fault: Fault, victim: &'static str) {
        match fault {
            Fault::Kill | Fault::LeaderKill => signal(&self.0, victim, Signal::SIGKILL),
            Fault::Stop => signal(&self.0, victim, Signal::SIGSTOP),
            Fault::Cut => self
                .0
                .cut(victim, &[Network::Public, Network::Cluster])
                .unwrap(),
        }
    }

    fn undo(&self, fault: Fault, victim: &'static str) {
        match fault {
            Fault::Kill | Fault::LeaderKill => {
                self.0.start_node(victim, Path::new(VIPGATE)).unwrap();
            }
            Fault::Stop => signal(&self.0, victim, Signal::SIGCONT),
            Fault::Cut => self
                .0
                .restore(victim, &[Network::Public, Network::Cluster])
                .unwrap(),
        }
    }

    /// Settled in a survivor's view: the victim's own view may be stale just after it restarts
    /// or resumes.
    fn settle(&self, victim: &'static str) -> Result<(), String> {
        let ok = common::wait_until(SETTLE_DEADLINE, || settled(&self.0, survivor(victim)));
        if ok {
            return Ok(());
        }
        let views: Vec<String> = NODES
            .iter()
            .map(|node| {
                format!(
                    "{node}: {:?}",
                    vipgate(&self.0, node, &["status", "--json"])
                )
            })
            .collect();
        Err(format!(
            "holders {:?}\n{}\n{}",
            holders(&self.0),
            views.join("\n"),
            logs(&self.0)
        ))
    }

    fn may_double(&self) -> bool {
        false
    }

    fn logs(&self) -> String {
        logs(&self.0)
    }
}

impl System for KeepalivedLab {
    fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The owner of each IPv4 VIP in turn; for the "leader" fault, the node holding most VIPs
    /// (keepalived has no leader; that node's failure moves the most addresses).
    fn choose(&self, fault: Fault, index: usize) -> (IpAddr, &'static str) {
        let owners = single_owners(&self.lab);
        if fault == Fault::LeaderKill {
            let all = holders(&self.lab);
            let busiest = NODES
                .iter()
                .copied()
                .filter(|node| owners.iter().any(|(_, owner)| owner == node))
                .max_by_key(|node| all.values().filter(|nodes| nodes.contains(node)).count())
                .unwrap();
            return *owners.iter().find(|(_, owner)| *owner == busiest).unwrap();
        }
        owners[index % owners.len()]
    }

    fn inject(&self, fault: Fault, victim: &'static str) {
        match fault {
            Fault::Kill | Fault::LeaderKill => self.signal(victim, Signal::SIGKILL),
            Fault::Stop => self.signal(victim, Signal::SIGSTOP),
            Fault::Cut => self
                .lab
                .cut(victim, &[Network::Public, Network::Cluster])
                .unwrap(),
        }
    }

    fn undo(&self, fault: Fault, victim: &'static str) {
        match fault {
            // The new keepalived removes the addresses the killed one left, as it starts.
            Fault::Kill | Fault::LeaderKill => self.start_keepalived(victim),
            Fault::Stop => self.signal(victim, Signal::SIGCONT),
            Fault::Cut => self
                .lab
                .restore(victim, &[Network::Public, Network::Cluster])
                .unwrap(),
        }
    }

    fn settle(&self, _victim: &'static str) -> Result<(), String> {
        if self.settled(SETTLE_DEADLINE) {
            Ok(())
        } else {
            Err(format!("{:?}\n{}", holders(&self.lab), self.logs()))
        }
    }

    fn may_double(&self) -> bool {
        true
    }

    fn logs(&self) -> String {
        KeepalivedLab::logs(self)
    }
}

/// One trial of `fault`.
fn trial(
    system: &dyn System,
    prober: &Prober,
    sampler: &Sampler,
    fault: Fault,
    index: usize,
) -> Trial {
    let lab = system.lab();
    let (vip, victim) = system.choose(fault, index);
    prober.aim(vip);
    assert!(
        prober.wait_serving(),
        "{vip} does not answer before the fault"
    );
    let victim_mac = lab.mac(victim, PUBLIC_INTERFACE).unwrap();
    let duplicates_before = sampler.duplicate_count();
    let at = Instant::now();
    system.inject(fault, victim);
    let mut took = None;
    let recovered = common::wait_until(TRIAL_DEADLINE, || {
        took = prober.answered_elsewhere(at, &victim_mac);
        took.is_some()
    });
    assert!(
        recovered,
        "{vip} never answered from another node after {} of {victim}",
        fault.label(),
    );
    let now = holders(lab)[&vip].clone();
    let doubled = now.contains(&victim);
    assert!(
        system.may_double() || !doubled,
        "{vip} answered, but is still on {victim}: {now:?}"
    );
    assert!(
        now.iter().any(|node| *node != victim),
        "{vip} answered from another node, but is on {now:?}"
    );
    let restore_at = Instant::now();
    system.undo(fault, victim);
    // A lab that does not settle within the deadline is reported and given a second one, so
    // that one slow recovery is counted rather than ending the run.
    let mut slow_settle = false;
    if let Err(details) = system.settle(victim) {
        eprintln!(
            "{} of {victim} undone: the lab did not settle within {SETTLE_DEADLINE:?}\n{details}",
            fault.label()
        );
        slow_settle = true;
        if let Err(details) = system.settle(victim) {
            panic!(
                "the lab did not settle after {} of {victim}\n{details}",
                fault.label()
            );
        }
    }
    let serving = prober.wait_serving_for(UNDO_DEADLINE);
    assert!(
        serving,
        "{vip} does not answer after {} of {victim} was undone: on {:?}; client neighbours {:?}\n{}",
        fault.label(),
        holders(lab),
        lab.neighbours("client1"),
        system.logs()
    );
    Trial {
        took: took.unwrap(),
        outage: prober.longest_failure(at, restore_at),
        doubled,
        restore_outage: prober.longest_failure(restore_at, Instant::now()),
        duplicates: sampler.duplicate_count() - duplicates_before,
        slow_settle,
    }
}

/// One planned move of a VIP to another node: the time no node had the address (from the last
/// sample on the old owner to the first on the new one, sampling as fast as netlink answers)
/// and the longest run of failed client calls around the move.
fn planned_move(lab: &Lab, prober: &Prober) -> (Duration, Duration) {
    let (vip, owner) = choose(lab, Fault::Kill);
    let target = survivor(owner);
    prober.aim(vip);
    assert!(prober.wait_serving());
    let unhosted = std::thread::scope(|scope| {
        let command = scope.spawn(|| vipgate(lab, target, &["moveip", &vip.to_string(), target]));
        let mut last_on_owner = Instant::now();
        let deadline = Instant::now() + TRIAL_DEADLINE;
        let gap = loop {
            let sampled = Instant::now();
            let now = holders(lab)[&vip].clone();
            if now == [owner] {
                last_on_owner = sampled;
            } else if now == [target] {
                break sampled - last_on_owner;
            }
            assert!(sampled < deadline, "{vip} never reached {target}: {now:?}");
        };
        let (code, text) = command.join().unwrap();
        assert_eq!(code, 0, "moveip: {text}");
        gap
    });
    assert!(prober.wait_serving());
    (unhosted, prober.longest_gap())
}

/// Runs every fault `trials` times on `system`, with a prober and a sampler, then `extra`.
fn run_faults(
    name: &'static str,
    system: &dyn System,
    trials: usize,
    extra: impl FnOnce(&Prober) -> Vec<(&'static str, Vec<Duration>)> + Send,
) -> Report {
    let lab = system.lab();
    let sampler = Sampler::new(lab);
    let prober = Prober::new();
    let mut faults = Vec::new();
    let mut extra_rows = Vec::new();
    std::thread::scope(|scope| {
        scope.spawn(|| sampler.run());
        let _stop_sampler = sampler.stop_on_drop();
        scope.spawn(|| prober.run(lab));
        let _stop_prober = StopProber(&prober);
        for fault in selected_faults() {
            let mut results = Vec::new();
            for index in 0..trials {
                let result = trial(system, &prober, &sampler, fault, index);
                eprintln!(
                    "{name} {} trial {}/{trials}: {:.1} ms (outage {:.1} ms, {}, \
                     restore outage {:.1} ms, {} duplicate instants)",
                    fault.label(),
                    index + 1,
                    millis(result.took),
                    millis(result.outage),
                    if result.doubled { "doubled" } else { "single" },
                    millis(result.restore_outage),
                    result.duplicates,
                );
                results.push(result);
            }
            faults.push((fault, results));
        }
        extra_rows = extra(&prober);
    });
    Report {
        system: name,
        faults,
        extra: extra_rows,
        duplicates: sampler.duplicate_count(),
        samples: sampler.sample_count(),
    }
}

fn run_vipgate(trials: usize) -> Report {
    let system = Vipgate(start_cluster("bf"));
    let lab = &system.0;
    run_faults("vipgate", &system, trials, |prober| {
        let (mut unhosted, mut failed) = (Vec::new(), Vec::new());
        for index in 0..trials {
            let (gap, client_gap) = planned_move(lab, prober);
            eprintln!(
                "vipgate moveip trial {}/{trials}: unhosted {:.1} ms, client calls failing {:.1} ms",
                index + 1,
                millis(gap),
                millis(client_gap)
            );
            unhosted.push(gap);
            failed.push(client_gap);
        }
        vec![
            ("planned moveip: address on no node", unhosted),
            ("planned moveip: client calls failing", failed),
        ]
    })
}

fn run_keepalived(trials: usize) -> Report {
    let system = KeepalivedLab::start("kb");
    run_faults("keepalived", &system, trials, |_| Vec::new())
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
}

/// p50, p95 and max of `times`, in ms.
fn spread(times: &[Duration]) -> (f64, f64, f64) {
    let mut sorted = times.to_vec();
    sorted.sort();
    (
        millis(percentile(&sorted, 0.5)),
        millis(percentile(&sorted, 0.95)),
        millis(*sorted.last().unwrap()),
    )
}

fn print_report(report: &Report) {
    println!("\n{}:\n", report.system);
    println!(
        "| case | trials | p50 ms | p95 ms | max ms | client outage p50 / max ms | \
         VIP still on the faulty node | duplicate instants | outage while undoing, max ms |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (fault, trials) in &report.faults {
        let took: Vec<Duration> = trials.iter().map(|trial| trial.took).collect();
        let outage: Vec<Duration> = trials.iter().map(|trial| trial.outage).collect();
        let (p50, p95, max) = spread(&took);
        let (outage_p50, _, outage_max) = spread(&outage);
        let doubled = trials.iter().filter(|trial| trial.doubled).count();
        let duplicates: usize = trials.iter().map(|trial| trial.duplicates).sum();
        let restore_max = trials
            .iter()
            .map(|trial| trial.restore_outage)
            .max()
            .unwrap_or_default();
        println!(
            "| {} | {} | {p50:.0} | {p95:.0} | {max:.0} | {outage_p50:.0} / {outage_max:.0} | \
             {doubled} of {} | {duplicates} | {:.0} |",
            fault.label(),
            trials.len(),
            trials.len(),
            millis(restore_max)
        );
    }
    for (label, times) in &report.extra {
        let (p50, p95, max) = spread(times);
        println!(
            "| {label} | {} | {p50:.0} | {p95:.0} | {max:.0} | | | | |",
            times.len()
        );
    }
    println!(
        "\n{}: duplicate instants {} of {} samples (every 20 ms, every node)",
        report.system, report.duplicates, report.samples
    );
    let slow: usize = report
        .faults
        .iter()
        .flat_map(|(_, trials)| trials)
        .filter(|trial| trial.slow_settle)
        .count();
    println!(
        "{}: trials whose lab took more than {SETTLE_DEADLINE:?} to settle after the fault was \
         undone: {slow}",
        report.system
    );
    for (fault, trials) in &report.faults {
        println!(
            "{}",
            serde_json::json!({
                "system": report.system,
                "case": fault.label(),
                "trials_ms": trials.iter().map(|trial| millis(trial.took)).collect::<Vec<_>>(),
                "outage_ms": trials.iter().map(|trial| millis(trial.outage)).collect::<Vec<_>>(),
                "doubled": trials.iter().map(|trial| trial.doubled).collect::<Vec<_>>(),
                "restore_outage_ms": trials.iter().map(|trial| millis(trial.restore_outage)).collect::<Vec<_>>(),
                "duplicate_instants": trials.iter().map(|trial| trial.duplicates).collect::<Vec<_>>(),
                "slow_settle": trials.iter().map(|trial| trial.slow_settle).collect::<Vec<_>>(),
            })
        );
    }
    for (label, times) in &report.extra {
        println!(
            "{}",
            serde_json::json!({
                "system": report.system,
                "case": label,
                "trials_ms": times.iter().map(|time| millis(*time)).collect::<Vec<_>>(),
            })
        );
    }
}

/// The side-by-side table: each fault's failover time for both systems and the ratios.
fn print_comparison(ours: &Report, peer: &Report) {
    println!(
        "\nvipgate against {} (ratio = vipgate / {}):\n",
        peer.system, peer.system
    );
    println!(
        "| fault | vipgate p50 / p95 / max ms | {0} p50 / p95 / max ms | ratio p50 | ratio p95 | \
         trials with the VIP on two nodes, vipgate / {0} |",
        peer.system
    );
    println!("|---|---:|---:|---:|---:|---:|");
    for ((fault, ours), (_, theirs)) in ours.faults.iter().zip(&peer.faults) {
        let times = |trials: &[Trial]| trials.iter().map(|trial| trial.took).collect::<Vec<_>>();
        let (a50, a95, amax) = spread(&times(ours));
        let (b50, b95, bmax) = spread(&times(theirs));
        let doubled = |trials: &[Trial]| trials.iter().filter(|trial| trial.doubled).count();
        println!(
            "| {} | {a50:.0} / {a95:.0} / {amax:.0} | {b50:.0} / {b95:.0} / {bmax:.0} | {:.2} | \
             {:.2} | {} / {} |",
            fault.label(),
            a50 / b50,
            a95 / b95,
            doubled(ours),
            doubled(theirs)
        );
    }
}

#[test]
#[ignore = "a benchmark: run by tests/bench/failover"]
fn failover_benchmark() {
    if !common::root_or_skip("failover_benchmark") {
        return;
    }
    let trials: usize = std::env::var("VIPGATE_BENCH_TRIALS")
        .ok()
        .and_then(|text| text.parse().ok())
        .unwrap_or(20);
    let only = std::env::var("VIPGATE_BENCH_ONLY").unwrap_or_default();
    assert!(
        ["", "vipgate", "keepalived"].contains(&only.as_str()),
        "VIPGATE_BENCH_ONLY is vipgate or keepalived, not {only:?}"
    );
    let ours = (only != "keepalived").then(|| run_vipgate(trials));
    let peer = (only != "vipgate").then(|| run_keepalived(trials));
    for report in ours.iter().chain(&peer) {
        print_report(report);
    }
    if let (Some(ours), Some(peer)) = (&ours, &peer) {
        print_comparison(ours, peer);
    }
    if let Some(ours) = &ours {
        assert!(
            ours.samples >= 5,
            "the sampler ran only {} rounds",
            ours.samples
        );
        assert_eq!(ours.duplicates, 0, "vipgate had a VIP on two nodes");
    }
}

struct StopProber<'a>(&'a Prober);

impl Drop for StopProber<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}
