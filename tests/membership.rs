//! Membership changes for real: four `vipgate node` processes in a namespace lab; one is removed
//! (its VIP moves away first and its daemon stops), added back under a new pnn with
//! `vipgate node add` + `vipgate node --join` (it learns its pnn from the cluster, catches up and
//! takes its share of the VIPs), and another node's cluster address is changed with
//! `vipgate node set-address` and then its old address deleted — while a sampler checks every
//! 20 ms that no VIP is ever configured on two nodes. Needs root.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]
#![allow(
    clippy::zombie_processes,
    reason = "node daemons are stopped by the lab's teardown"
)]

mod common;

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::logs;
use vipgate::lab::{Lab, cluster};

const NODES: [&str; 4] = ["node1", "node2", "node3", "node4"];
const VIPGATE: &str = env!("CARGO_BIN_EXE_vipgate");
const DEADLINE: Duration = Duration::from_secs(15);

fn holders(lab: &Lab) -> BTreeMap<IpAddr, Vec<&'static str>> {
    common::cluster::holders_read_in(lab, NODES)
}

fn held_by(lab: &Lab, node: &str) -> usize {
    holders(lab)
        .values()
        .filter(|nodes| nodes.contains(&node))
        .count()
}

/// Every VIP on exactly one node, and every one of `nodes` holding one (4 VIPs).
fn one_each(lab: &Lab, nodes: &[&str]) -> bool {
    let holders = holders(lab);
    holders.values().all(|holders| holders.len() == 1)
        && nodes.iter().all(|node| held_by(lab, node) >= 1)
}

/// Runs `vipgate ARGS` on `host`; returns (exit code, stdout, stderr).
fn vipgate(lab: &Lab, host: &str, args: &[&str]) -> (i32, String, String) {
    let output = lab
        .command(host, VIPGATE)
        .unwrap()
        .args(args)
        .output()
        .unwrap();
    (
        output.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn succeeds(lab: &Lab, host: &str, args: &[&str]) -> String {
    let (code, stdout, stderr) = vipgate(lab, host, args);
    assert_eq!(
        code,
        0,
        "vipgate {args:?} on {host}: {stdout}{stderr}\n{}",
        logs(lab)
    );
    stdout
}

fn fails(lab: &Lab, host: &str, args: &[&str], expected: &str) {
    let (code, stdout, stderr) = vipgate(lab, host, args);
    assert_eq!(code, 1, "vipgate {args:?} on {host}: {stdout}{stderr}");
    assert!(
        stderr.contains(expected),
        "vipgate {args:?}: {stderr:?} does not say {expected:?}"
    );
}

fn status(lab: &Lab, host: &str) -> serde_json::Value {
    serde_json::from_str(&succeeds(lab, host, &["status", "--json"])).unwrap()
}

/// The `status --json` entry of `name` as `host` sees it.
fn node_entry(lab: &Lab, host: &str, name: &str) -> Option<serde_json::Value> {
    status(lab, host)["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|node| node["name"] == name)
        .cloned()
}

fn ok_everywhere(lab: &Lab, hosts: &[&str], name: &str) -> bool {
    hosts.iter().all(|host| {
        node_entry(lab, host, name).is_some_and(|node| {
            node["flags"]
                .as_object()
                .unwrap()
                .values()
                .all(|flag| flag == false)
        })
    })
}

fn cluster_address(lab: &Lab, host: &str) -> IpAddr {
    lab.plan()
        .host(host)
        .unwrap()
        .address(vipgate::lab::Network::Cluster, false)
        .unwrap()
}

#[test]
fn nodes_are_removed_added_and_readdressed_at_runtime() {
    if !common::root_or_skip("nodes_are_removed_added_and_readdressed_at_runtime") {
        return;
    }
    let lab = common::lab("m", 4, 0);
    lab.start_cluster(Path::new(VIPGATE)).unwrap();
    assert!(
        common::wait_until(Duration::from_secs(30), || one_each(&lab, &NODES)),
        "the cluster never hosted one VIP per node: {:?}\n{}",
        holders(&lab),
        logs(&lab)
    );
    let sampler = common::cluster::Sampler::of(&lab, &NODES);
    std::thread::scope(|scope| {
        let _stop = sampler.stop_on_drop();
        scope.spawn(|| sampler.run());
        let node4 = cluster_address(&lab, "node4").to_string();

        // Refusals, with the reason.
        fails(
            &lab,
            "node1",
            &["node", "remove", "node1"],
            "run `vipgate node remove node1` on another node",
        );
        fails(
            &lab,
            "node1",
            &["node", "remove", "node9"],
            "no node \"node9\"",
        );
        fails(
            &lab,
            "node1",
            &["node", "add", "node2", "198.51.100.50"],
            "already a node \"node2\"",
        );
        fails(
            &lab,
            "node1",
            &["node", "add", "node5", &node4],
            "already the cluster address of node4",
        );
        fails(
            &lab,
            "node1",
            &["node", "add", "Node5", "198.51.100.50"],
            "not a valid node name",
        );

        // Remove node4: its VIP moves to the others first, then it leaves and stops.
        let removed = succeeds(&lab, "node1", &["node", "remove", "node4"]);
        assert!(removed.contains("node4 (pnn 3) was removed"), "{removed}");
        assert_eq!(held_by(&lab, "node4"), 0);
        assert!(
            common::wait_until(DEADLINE, || one_each(&lab, &NODES[..3])),
            "{:?}",
            holders(&lab)
        );
        assert!(
            common::wait_until(DEADLINE, || lab.node_daemon("node4").unwrap().is_none()),
            "the removed node's daemon did not stop\n{}",
            logs(&lab)
        );
        for host in &NODES[..3] {
            assert!(
                node_entry(&lab, host, "node4").is_none(),
                "{host} still lists node4"
            );
        }

        // Add it back: it gets a new pnn (4; 3 is never reused), learns it from the cluster when
        // started with --join, and takes a VIP.
        std::fs::remove_dir_all(cluster::data_dir(lab.name(), "node4")).unwrap();
        let added = succeeds(&lab, "node2", &["node", "add", "node4", &node4]);
        assert!(added.contains("node4 is pnn 4"), "{added}");
        // Not started yet: a member that is a Raft learner (it costs no quorum) and
        // disconnected; `vipgate status` says so.
        assert!(
            common::wait_until(DEADLINE, || node_entry(&lab, "node1", "node4").is_some_and(
                |node| node["raft"] == "learner" && node["flags"]["disconnected"] == true
            )),
            "{}",
            status(&lab, "node1")
        );
        let (_, text, _) = vipgate(&lab, "node1", &["status"]);
        assert!(
            text.contains("node4  198.51.100.14  DISCONNECTED|UNHEALTHY (LEARNER: catching up, not voting yet)"),
            "{text}"
        );
        let log = std::fs::OpenOptions::new()
            .append(true)
            .open(cluster::log_path(lab.name(), "node4"))
            .unwrap();
        let mut command = lab.command("node4", VIPGATE).unwrap();
        command
            .args(["node", "--name", "node4", "--join"])
            .env("RUST_LOG", "info")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        lab.spawn("node4", command).unwrap();
        assert!(
            common::wait_until(Duration::from_secs(20), || ok_everywhere(
                &lab, &NODES, "node4"
            )),
            "node4 did not join: {}\n{}",
            status(&lab, "node1"),
            logs(&lab)
        );
        assert_eq!(node_entry(&lab, "node1", "node4").unwrap()["pnn"], 4);
        assert_eq!(status(&lab, "node4")["this_node"], 4);
        assert!(
            common::wait_until(Duration::from_secs(20), || one_each(&lab, &NODES)),
            "the new node got no VIP: {:?}\n{}",
            holders(&lab),
            logs(&lab)
        );

        // Give node3 a second cluster address, move it there, then delete the old one: the
        // cluster reaches node3 at the new address only.
        let old = cluster_address(&lab, "node3");
        let new = "198.51.100.113";
        let add = lab
            .command("node3", "ip")
            .unwrap()
            .args(["addr", "add", &format!("{new}/24"), "dev", "clu0"])
            .status()
            .unwrap();
        assert!(add.success());
        // Deleting a primary address deletes the secondaries of its subnet unless they are
        // promoted: keep the new one.
        let promote = lab
            .command("node3", "sysctl")
            .unwrap()
            .args(["-qw", "net.ipv4.conf.clu0.promote_secondaries=1"])
            .status()
            .unwrap();
        assert!(promote.success());
        let moved = succeeds(&lab, "node1", &["node", "set-address", "node3", new]);
        assert!(moved.contains(&format!("node3 is at {new}")), "{moved}");
        let del = lab
            .command("node3", "ip")
            .unwrap()
            .args(["addr", "del", &format!("{old}/24"), "dev", "clu0"])
            .status()
            .unwrap();
        assert!(del.success());
        // The links moved to the new address before the old one went, so node3 keeps its
        // lease and its VIP: it never goes silent (links die after 2 s of silence, and a lease
        // ends soon after).
        let held = held_by(&lab, "node3");
        assert!(held > 0);
        let watch_until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < watch_until {
            assert_eq!(
                held_by(&lab, "node3"),
                held,
                "node3's VIPs changed after its old address was deleted\n{}",
                logs(&lab)
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert!(
            common::wait_until(DEADLINE, || NODES.iter().all(|host| {
                node_entry(&lab, host, "node3").is_some_and(|node| node["cluster_address"] == new)
            }) && ok_everywhere(&lab, &NODES, "node3")),
            "node3 is not reached at {new}: {}\n{}\n{}",
            status(&lab, "node1"),
            logs(&lab),
            std::fs::read_to_string(cluster::log_path(lab.name(), "node3"))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("transport") || l.contains("daemon"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        // Raft and leases work over the new address: a VIP can be moved onto node3.
        let vip = holders(&lab)
            .into_iter()
            .find(|(_, nodes)| nodes.as_slice() != ["node3"])
            .unwrap()
            .0
            .to_string();
        // The deleted address took the old connections with it; the cluster may hold an
        // election meanwhile, so the move is retried until the cluster takes it.
        assert!(
            common::wait_until(DEADLINE, || vipgate(
                &lab,
                "node1",
                &["moveip", &vip, "node3"]
            )
            .0 == 0),
            "moveip to node3 never succeeded\n{}",
            logs(&lab)
        );
        assert!(
            common::wait_until(DEADLINE, || holders(&lab)[&vip.parse::<IpAddr>().unwrap()]
                == ["node3"]),
            "{vip} never reached node3: {:?}\n{}",
            holders(&lab),
            logs(&lab)
        );
    });
    sampler.assert_clean();
    lab.teardown().unwrap();
}
