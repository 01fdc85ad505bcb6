//! The lab builds real network namespaces with real netlink: every host reaches every other on
//! the networks it is on, a cut node is unreachable until restored, and teardown leaves no
//! namespace, interface, process or file behind. Needs root.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::net::IpAddr;
use std::process::Command;
use std::time::Duration;

use vipgate::lab::{self, Lab, Network, netns, state};

const PROBE: Duration = Duration::from_millis(400);

fn reaches(lab: &Lab, from: &str, to: IpAddr) -> bool {
    lab.reaches(from, to, PROBE).unwrap()
}

/// Reached within a few seconds: the first packet to a new neighbour waits for address
/// resolution, which a loaded machine can stretch past one probe's timeout.
fn comes_to_reach(lab: &Lab, from: &str, to: IpAddr) -> bool {
    common::wait_until(Duration::from_secs(5), || reaches(lab, from, to))
}

fn address_of(lab: &Lab, host: &str, network: Network, v6: bool) -> IpAddr {
    lab.host(host).unwrap().address(network, v6).unwrap()
}

#[test]
fn hosts_reach_each_other_and_a_cut_node_heals() {
    if !common::root_or_skip("hosts_reach_each_other_and_a_cut_node_heals") {
        return;
    }
    let lab = common::lab("tr", 3, 1);
    let plan = lab.plan().clone();

    // Public network: every host reaches every other over IPv4 and IPv6.
    for from in &plan.hosts {
        for to in plan.hosts.iter().filter(|to| to.name != from.name) {
            for v6 in [false, true] {
                let address = to.address(Network::Public, v6).unwrap();
                assert!(
                    comes_to_reach(&lab, &from.name, address),
                    "{} -> {} {address}",
                    from.name,
                    to.name
                );
            }
        }
    }
    // Cluster network: nodes reach each other; clients are not on it and have no route to it.
    let nodes: Vec<&str> = plan
        .hosts_of(lab::Role::Node)
        .map(|h| h.name.as_str())
        .collect();
    for from in &nodes {
        for to in nodes.iter().filter(|to| *to != from) {
            assert!(
                comes_to_reach(&lab, from, address_of(&lab, to, Network::Cluster, false)),
                "{from} -> {to} cluster"
            );
        }
    }
    assert!(!reaches(
        &lab,
        "client1",
        address_of(&lab, "node1", Network::Cluster, false)
    ));

    // The kernel holds exactly the planned addresses (link-local ones aside).
    for host in &plan.hosts {
        let mut actual: Vec<String> = lab
            .addresses(&host.name)
            .unwrap()
            .into_iter()
            .filter(|a| !matches!(a.address.addr(), IpAddr::V6(v6) if v6.segments()[0] == 0xfe80))
            .map(|a| format!("{}:{}", a.interface, a.address))
            .collect();
        let mut planned: Vec<String> = host
            .interfaces
            .iter()
            .flat_map(|i| i.addresses.iter().map(move |a| format!("{}:{a}", i.name)))
            .collect();
        actual.sort();
        planned.sort();
        assert_eq!(actual, planned, "addresses of {}", host.name);
    }

    // node1 talked to node2, so its neighbour table maps node2's address to node2's MAC.
    let node2_mac = lab.mac("node2", "pub0").unwrap();
    let node2_public = address_of(&lab, "node2", Network::Public, false);
    let neighbours = lab.neighbours("node1").unwrap();
    assert!(
        neighbours
            .iter()
            .any(|n| n.address == node2_public && n.mac.as_deref() == Some(node2_mac.as_str())),
        "node1's neighbours {neighbours:?} lack {node2_public} at {node2_mac}"
    );

    // Cut node2 off the cluster network only: public still works, cluster does not.
    let node2_cluster = address_of(&lab, "node2", Network::Cluster, false);
    lab.cut("node2", &[Network::Cluster]).unwrap();
    assert!(!reaches(&lab, "node1", node2_cluster));
    assert!(comes_to_reach(&lab, "node1", node2_public));

    // Cut it off both: nobody reaches it, the others still reach each other.
    lab.cut("node2", &[Network::Public]).unwrap();
    assert!(!reaches(&lab, "node1", node2_public));
    assert!(!reaches(&lab, "client1", node2_public));
    assert!(!reaches(&lab, "node3", node2_cluster));
    assert!(comes_to_reach(
        &lab,
        "node1",
        address_of(&lab, "node3", Network::Public, false)
    ));
    assert!(comes_to_reach(
        &lab,
        "node1",
        address_of(&lab, "node3", Network::Cluster, false)
    ));

    lab.restore("node2", &[Network::Public, Network::Cluster])
        .unwrap();
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            reaches(&lab, "node1", node2_public)
                && reaches(&lab, "node3", node2_cluster)
                && reaches(&lab, "client1", node2_public)
        }),
        "node2 still unreachable after restore"
    );

    lab.teardown().unwrap();
}

#[test]
fn teardown_leaves_nothing_behind() {
    if !common::root_or_skip("teardown_leaves_nothing_behind") {
        return;
    }
    let lab = common::lab("tt", 2, 1);
    let name = lab.name().to_owned();
    let namespaces: Vec<String> = lab.plan().namespaces().map(str::to_owned).collect();
    let ports: Vec<String> = lab
        .plan()
        .hosts
        .iter()
        .flat_map(|h| h.interfaces.iter().map(|i| i.switch_port.clone()))
        .collect();

    // A recorded daemon with a child of its own, and a process that nobody recorded (as a shell
    // from `demo exec` would be): teardown must stop all three.
    let mut daemon = lab.command("node1", "sh").unwrap();
    daemon.args(["-c", "sleep 600 & exec sleep 601"]);
    let mut daemon = lab.spawn("node1", daemon).unwrap();
    let mut stray = lab.command("client1", "sleep").unwrap();
    stray.arg("602");
    let mut stray = stray.spawn().unwrap();
    let node1_inode = netns::netns_inode(&format!("{name}-node1")).unwrap();
    let client1_inode = netns::netns_inode(&format!("{name}-client1")).unwrap();
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            state::processes_in_netns(node1_inode).len() == 2
                && state::processes_in_netns(client1_inode).len() == 1
        }),
        "the lab processes did not start"
    );
    let started: Vec<state::ProcessId> = state::processes_in_netns(node1_inode)
        .into_iter()
        .chain(state::processes_in_netns(client1_inode))
        .filter_map(state::ProcessId::of)
        .collect();
    assert_eq!(started.len(), 3);

    drop(lab);

    assert!(
        started.iter().all(|process| !process.is_alive()),
        "a lab process survived teardown"
    );
    let _ = daemon.wait();
    let _ = stray.wait();
    for namespace in &namespaces {
        assert!(
            !netns::exists(namespace),
            "namespace {namespace} left behind"
        );
        assert!(
            !netns::netns_path(namespace).exists(),
            "pin of {namespace} left behind"
        );
    }
    assert!(!state::lab_dir(&name).exists(), "lab directory left behind");
    assert!(!lab::list().iter().any(|record| record.plan.name == name));
    // Nothing of the lab ever appeared in the host's own namespace.
    let host_links = Command::new("ip")
        .args(["-o", "link", "show"])
        .output()
        .unwrap();
    let host_links = String::from_utf8_lossy(&host_links.stdout);
    for port in &ports {
        assert!(
            !host_links.contains(&format!(" {port}")),
            "{port} found in the host namespace"
        );
    }
}

#[test]
fn two_labs_coexist_and_orphans_are_reaped() {
    if !common::root_or_skip("two_labs_coexist_and_orphans_are_reaped") {
        return;
    }
    // A lab whose owner is killed before it can tear down is an orphan.
    let orphan = common::unique_name("to");
    let mut owner = Command::new(env!("CARGO_BIN_EXE_vipgate"))
        .args(["demo", "--nodes", "1", "--clients", "0", "--name", &orphan])
        .stdout(std::process::Stdio::null())
        .spawn()
        .unwrap();
    assert!(common::wait_until(Duration::from_secs(30), || state::load(
        &orphan
    )
    .is_ok_and(|r| r.ready)));
    // Same addresses, separate namespaces: a second lab builds and works while the first runs.
    let second = common::lab("ts", 1, 1);
    assert!(
        second
            .reaches("client1", second.host("node1").unwrap().public_v4(), PROBE)
            .unwrap()
    );

    owner.kill().unwrap();
    owner.wait().unwrap();
    assert!(state::load(&orphan).unwrap().is_orphaned());
    lab::reap_orphans();
    // Another test's lab creation may have reaped it first; either way it is gone.
    assert!(state::load(&orphan).is_err());
    assert!(!netns::exists(&format!("{orphan}-sw")));
    assert!(!netns::exists(&format!("{orphan}-node1")));
    // The live lab was left alone.
    assert!(
        second
            .reaches("client1", second.host("node1").unwrap().public_v4(), PROBE)
            .unwrap()
    );
}
