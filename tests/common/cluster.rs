//! A running three-node cluster in a lab, as the failover tests and the failover benchmark see
//! it: who holds each VIP (read from every node's kernel), a sampler that records any instant
//! at which a VIP is configured on two nodes, and the node daemons' commands and logs.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use vipgate::lab::{Lab, cluster};

pub const NODES: [&str; 3] = ["node1", "node2", "node3"];
pub const VIPGATE: &str = env!("CARGO_BIN_EXE_vipgate");
/// Generous: the failover itself takes about a lease (1.5 s); CI machines are slow.
pub const MOVE_DEADLINE: Duration = Duration::from_secs(8);

/// Which nodes have each VIP configured now.
pub fn holders(lab: &Lab) -> BTreeMap<IpAddr, Vec<&'static str>> {
    holders_read_in(lab, NODES)
}

/// [`holders`], reading the nodes one after another in the order given.
pub fn holders_read_in(
    lab: &Lab,
    order: impl IntoIterator<Item = &'static str>,
) -> BTreeMap<IpAddr, Vec<&'static str>> {
    let mut holders: BTreeMap<IpAddr, Vec<&'static str>> = cluster::vip_addresses()
        .into_iter()
        .map(|vip| (vip, Vec::new()))
        .collect();
    for node in order {
        let Ok(addresses) = lab.addresses(node) else {
            continue;
        };
        for address in addresses {
            if let Some(list) = holders.get_mut(&address.address.addr()) {
                list.push(node);
            }
        }
    }
    holders
}

pub fn all_hosted(lab: &Lab) -> bool {
    holders(lab).values().all(|nodes| nodes.len() == 1)
}

/// Samples every node's addresses every 20 ms until stopped; records double ownership (confirmed
/// by a second read in the reverse order, see [`Sampler::run`]).
pub struct Sampler<'a> {
    lab: &'a Lab,
    nodes: &'static [&'static str],
    stop: AtomicBool,
    duplicates: Mutex<Vec<(Duration, IpAddr, Vec<&'static str>)>>,
    samples: Mutex<u64>,
}

impl<'a> Sampler<'a> {
    pub fn new(lab: &'a Lab) -> Sampler<'a> {
        Sampler::of(lab, &NODES)
    }

    /// A sampler of a lab whose nodes are `nodes`.
    pub fn of(lab: &'a Lab, nodes: &'static [&'static str]) -> Sampler<'a> {
        Sampler {
            lab,
            nodes,
            stop: AtomicBool::new(false),
            duplicates: Mutex::new(Vec::new()),
            samples: Mutex::new(0),
        }
    }

    pub fn run(&self) {
        let start = Instant::now();
        while !self.stop.load(Ordering::Relaxed) {
            let round = Instant::now();
            // The nodes are read one after another, so a planned move (a few ms from release
            // to take) can fall between two reads and show the VIP on both. A VIP seen twice is
            // read again in the reverse order: still on both means it was on both at once
            // (unless it made two full moves meanwhile).
            let suspects: Vec<IpAddr> = holders_read_in(self.lab, self.nodes.iter().copied())
                .into_iter()
                .filter(|(_, nodes)| nodes.len() > 1)
                .map(|(vip, _)| vip)
                .collect();
            if !suspects.is_empty() {
                let again = holders_read_in(self.lab, self.nodes.iter().rev().copied());
                for vip in suspects {
                    if again[&vip].len() > 1 {
                        self.duplicates.lock().unwrap().push((
                            start.elapsed(),
                            vip,
                            again[&vip].clone(),
                        ));
                    }
                }
            }
            *self.samples.lock().unwrap() += 1;
            std::thread::sleep(Duration::from_millis(20).saturating_sub(round.elapsed()));
        }
    }

    pub fn finish(&self) {
        self.stop.store(true, Ordering::Relaxed);
    }

    /// Stops the sampler when dropped, so that a failing assertion does not leave the scoped
    /// sampler thread running forever.
    pub fn stop_on_drop(&self) -> StopOnDrop<'_, 'a> {
        StopOnDrop(self)
    }

    /// How many samples saw a VIP on two nodes.
    pub fn duplicate_count(&self) -> usize {
        self.duplicates.lock().unwrap().len()
    }

    /// How many rounds the sampler ran.
    pub fn sample_count(&self) -> u64 {
        *self.samples.lock().unwrap()
    }

    pub fn assert_clean(&self) {
        let duplicates = self.duplicates.lock().unwrap();
        let samples = *self.samples.lock().unwrap();
        assert!(samples >= 5, "the sampler ran only {samples} rounds");
        assert!(
            duplicates.is_empty(),
            "a VIP was on two nodes in {} of {samples} samples; first: {:?}",
            duplicates.len(),
            duplicates.first()
        );
    }
}

pub struct StopOnDrop<'s, 'a>(&'s Sampler<'a>);

impl Drop for StopOnDrop<'_, '_> {
    fn drop(&mut self) {
        self.0.finish();
    }
}

pub fn start_cluster(prefix: &str) -> Lab {
    let lab = super::lab(prefix, 3, 1);
    lab.start_cluster(Path::new(VIPGATE)).unwrap();
    // Settled: every VIP hosted and every node holding one (4 VIPs on 3 nodes).
    assert!(
        super::wait_until(Duration::from_secs(30), || all_hosted(&lab)
            && NODES.iter().all(|node| !held_by(&lab, node).is_empty())),
        "the cluster never hosted every VIP balanced: {:?}\n{}",
        holders(&lab),
        logs(&lab)
    );
    lab
}

pub fn logs(lab: &Lab) -> String {
    lab.plan()
        .hosts_of(vipgate::lab::Role::Node)
        .map(|host| {
            let node = &host.name;
            let text =
                std::fs::read_to_string(cluster::log_path(lab.name(), node)).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(20).collect();
            format!(
                "--- {node} ---\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            )
        })
        .collect::<Vec<_>>()
        .join("\n")
}

/// Runs `vipgate ARGS` on `host`; returns (exit code, stdout).
pub fn vipgate(lab: &Lab, host: &str, args: &[&str]) -> (i32, String) {
    let output = lab
        .command(host, VIPGATE)
        .unwrap()
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
    )
}

pub fn status(lab: &Lab, host: &str) -> serde_json::Value {
    let (code, text) = vipgate(lab, host, &["status", "--json"]);
    assert_eq!(code, 0, "status on {host} failed: {text}");
    serde_json::from_str(&text).unwrap()
}

pub fn signal(lab: &Lab, host: &str, signal: Signal) {
    lab.node_daemon(host)
        .unwrap()
        .unwrap_or_else(|| panic!("no daemon on {host}"))
        .signal(signal);
}

/// The node holding `vip`, once exactly one does (a planned move leaves it unhosted for a few
/// milliseconds).
pub fn owner_of(lab: &Lab, vip: IpAddr) -> &'static str {
    let mut owner = None;
    let hosted = super::wait_until(MOVE_DEADLINE, || {
        owner = match holders(lab)[&vip].as_slice() {
            [only] => Some(*only),
            _ => None,
        };
        owner.is_some()
    });
    assert!(
        hosted,
        "{vip} is not on exactly one node: {:?}",
        holders(lab)
    );
    owner.unwrap()
}

pub fn moved_off(lab: &Lab, vips: &[IpAddr], from: &str) -> bool {
    let now = holders(lab);
    vips.iter()
        .all(|vip| now[vip].len() == 1 && now[vip][0] != from)
}

pub fn held_by(lab: &Lab, node: &str) -> Vec<IpAddr> {
    holders(lab)
        .into_iter()
        .filter(|(_, nodes)| nodes.contains(&node))
        .map(|(vip, _)| vip)
        .collect()
}

pub fn first_v4() -> IpAddr {
    cluster::vip_addresses()[0]
}
