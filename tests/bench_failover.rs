//! The failover benchmark of BENCHMARKS.md (run by `tests/bench/failover`; ignored in the
//! ordinary test run): three `vipgate node`s serving NFS in a namespace lab, one client. A
//! prober in the client namespace makes an RPC NULL call to the NFS service on a VIP every
//! 10 ms, each on a new TCP connection with a 100 ms deadline; a sampler reads every node's
//! addresses every 20 ms and counts the instants at which a VIP is on two nodes.
//!
//! For each fault — the VIP owner's daemon SIGKILLed, SIGSTOPped, its links cut, the Raft
//! leader (holding the VIP) SIGKILLed — the failover time is from the fault to the end of the
//! first NULL call that succeeds after the service was seen failing: the VIP answering from
//! its new owner, as a client sees it. A planned `vipgate moveip` is measured twice: the time
//! the address is on no node (sampled as fast as netlink answers), and the longest run of failed
//! calls around the move (a call in flight while the address moves waits out its 100 ms
//! deadline, so this one counts in steps of about 100 ms). Results go to stdout as JSON lines and a Markdown table.
//!
//! `VIPGATE_BENCH_TRIALS` sets the trials per fault (default 20).

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a benchmark reports a failure"
)]
#![allow(
    clippy::zombie_processes,
    reason = "node daemons are stopped by the lab's teardown; a killed one is reaped when the run ends"
)]

mod common;

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use common::cluster::{NODES, Sampler, VIPGATE, holders, logs, signal, start_cluster, vipgate};
use nix::sys::signal::Signal;
use vipd::health::{NFS_PROGRAM, Probe, RpcNullProbe};
use vipgate::lab::{Lab, Network, cluster, netns};

const PROBE_EVERY: Duration = Duration::from_millis(10);
const PROBE_TIMEOUT: Duration = Duration::from_millis(100);
const TRIAL_DEADLINE: Duration = Duration::from_secs(15);

/// One NULL call: when it started, when it ended, whether it was answered.
#[derive(Debug, Clone, Copy)]
struct Call {
    started: Instant,
    ended: Instant,
    ok: bool,
}

/// Calls the NFS service on `target` from the client namespace until stopped.
struct Prober {
    target: Mutex<IpAddr>,
    calls: Mutex<Vec<Call>>,
    stop: AtomicBool,
}

impl Prober {
    fn run(&self, lab: &Lab) {
        let namespace = lab.host("client1").unwrap().netns.clone();
        netns::run_in(&namespace, || {
            while !self.stop.load(Ordering::Relaxed) {
                let target = *self.target.lock().unwrap();
                let probe = RpcNullProbe::new(
                    "bench",
                    SocketAddr::new(target, 2049),
                    NFS_PROGRAM,
                    3,
                    PROBE_TIMEOUT,
                );
                let started = Instant::now();
                let ok = probe.check().is_ok();
                let ended = Instant::now();
                self.calls.lock().unwrap().push(Call { started, ended, ok });
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
        common::wait_until(TRIAL_DEADLINE, || {
            let calls = self.calls.lock().unwrap();
            calls.len() >= 3 && calls.iter().rev().take(3).all(|call| call.ok)
        })
    }

    /// After a fault at `fault`: the time from it to the end of the first successful call that
    /// started after a failed one (the service went away, then answered again).
    fn recovered_after(&self, fault: Instant) -> Option<Duration> {
        let calls = self.calls.lock().unwrap();
        let first_failure = calls
            .iter()
            .find(|call| call.started >= fault && !call.ok)?;
        calls
            .iter()
            .find(|call| call.started >= first_failure.ended && call.ok)
            .map(|call| call.ended - fault)
    }

    /// The longest run of failed calls (from the start of the first to the end of the next
    /// success), and how many calls ran.
    fn longest_gap(&self) -> (Duration, usize) {
        let calls = self.calls.lock().unwrap();
        let mut longest = Duration::ZERO;
        let mut gap_start: Option<Instant> = None;
        for call in calls.iter() {
            match (call.ok, gap_start) {
                (false, None) => gap_start = Some(call.started),
                (true, Some(start)) => {
                    longest = longest.max(call.ended - start);
                    gap_start = None;
                }
                _ => {}
            }
        }
        (longest, calls.len())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    Kill,
    Stop,
    Cut,
    LeaderKill,
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

/// The VIP to fault and its owner: for the leader fault a VIP of the leader (moved there first
/// if it holds none), otherwise a VIP whose owner is not the leader.
fn choose(lab: &Lab, fault: Fault) -> (IpAddr, &'static str) {
    let leader = leader(lab).unwrap();
    let owners: Vec<(IpAddr, &'static str)> = holders(lab)
        .into_iter()
        .filter(|(vip, nodes)| vip.is_ipv4() && nodes.len() == 1)
        .map(|(vip, nodes)| (vip, nodes[0]))
        .collect();
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

/// One trial of `fault`; returns the failover time.
fn trial(lab: &Lab, prober: &Prober, fault: Fault) -> Duration {
    let (vip, victim) = choose(lab, fault);
    prober.aim(vip);
    assert!(
        prober.wait_serving(),
        "{vip} does not answer before the fault"
    );
    let at = Instant::now();
    match fault {
        Fault::Kill | Fault::LeaderKill => signal(lab, victim, Signal::SIGKILL),
        Fault::Stop => signal(lab, victim, Signal::SIGSTOP),
        Fault::Cut => lab
            .cut(victim, &[Network::Public, Network::Cluster])
            .unwrap(),
    }
    let mut took = None;
    let recovered = common::wait_until(TRIAL_DEADLINE, || {
        took = prober.recovered_after(at);
        took.is_some()
    });
    assert!(
        recovered,
        "{vip} never answered again after {} of {victim}\n{}",
        fault.label(),
        logs(lab)
    );
    let now = holders(lab)[&vip].clone();
    assert!(
        !now.contains(&victim),
        "{vip} answered, but is still on {victim}: {now:?}"
    );
    match fault {
        Fault::Kill | Fault::LeaderKill => {
            lab.start_node(victim, Path::new(VIPGATE)).unwrap();
        }
        Fault::Stop => signal(lab, victim, Signal::SIGCONT),
        Fault::Cut => lab
            .restore(victim, &[Network::Public, Network::Cluster])
            .unwrap(),
    }
    assert!(
        common::wait_until(Duration::from_secs(30), || settled(lab, survivor(victim))),
        "the cluster did not settle after {} of {victim}\n{}",
        fault.label(),
        logs(lab)
    );
    took.unwrap()
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
    (unhosted, prober.longest_gap().0)
}

fn percentile(sorted: &[Duration], fraction: f64) -> Duration {
    let index = ((sorted.len() as f64 * fraction).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[index]
}

fn millis(duration: Duration) -> f64 {
    (duration.as_secs_f64() * 1000.0 * 10.0).round() / 10.0
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
    let lab = start_cluster("bf");
    let sampler = Sampler::new(&lab);
    let prober = Prober {
        target: Mutex::new(cluster::vip_addresses()[0]),
        calls: Mutex::new(Vec::new()),
        stop: AtomicBool::new(false),
    };
    let mut rows = Vec::new();
    std::thread::scope(|scope| {
        scope.spawn(|| sampler.run());
        let _stop_sampler = sampler.stop_on_drop();
        scope.spawn(|| prober.run(&lab));
        let _stop_prober = StopProber(&prober);
        for fault in [Fault::Kill, Fault::Stop, Fault::Cut, Fault::LeaderKill] {
            let mut times = Vec::new();
            for index in 0..trials {
                let took = trial(&lab, &prober, fault);
                eprintln!(
                    "{} trial {}/{trials}: {:.1} ms",
                    fault.label(),
                    index + 1,
                    millis(took)
                );
                times.push(took);
            }
            rows.push((fault.label(), times));
        }
        let (mut unhosted, mut failed) = (Vec::new(), Vec::new());
        for index in 0..trials {
            let (gap, client_gap) = planned_move(&lab, &prober);
            eprintln!(
                "moveip trial {}/{trials}: unhosted {:.1} ms, client calls failing {:.1} ms",
                index + 1,
                millis(gap),
                millis(client_gap)
            );
            unhosted.push(gap);
            failed.push(client_gap);
        }
        rows.push(("planned moveip: address on no node", unhosted));
        rows.push(("planned moveip: client calls failing", failed));
    });
    let duplicates = sampler.duplicate_count();
    let samples = sampler.sample_count();
    println!("| case | trials | p50 ms | p95 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (label, mut times) in rows {
        times.sort();
        println!(
            "| {label} | {} | {:.0} | {:.0} | {:.0} |",
            times.len(),
            millis(percentile(&times, 0.5)),
            millis(percentile(&times, 0.95)),
            millis(*times.last().unwrap())
        );
        println!(
            "{}",
            serde_json::json!({
                "case": label,
                "trials_ms": times.iter().map(|time| millis(*time)).collect::<Vec<_>>(),
            })
        );
    }
    println!("duplicate instants: {duplicates} of {samples} samples (every 20 ms, every node)");
    sampler.assert_clean();
}

struct StopProber<'a>(&'a Prober);

impl Drop for StopProber<'_> {
    fn drop(&mut self) {
        self.0.stop.store(true, Ordering::Relaxed);
    }
}
