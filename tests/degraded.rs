//! Last-resort hosting for real: three `vipgate node` processes whose volume probes are broken
//! on purpose. When every node is unhealthy the VIPs stay hosted where they are (an unhealthy
//! node serves worse than a healthy one but better than nobody, as CTDB does); as soon as one node is
//! healthy again it takes every VIP, because an unhealthy node hosts nothing while a healthy
//! node may. Needs root.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::cluster::{
    MOVE_DEADLINE, NODES, Sampler, holders, logs, start_cluster, status, vipgate,
};
use vipgate::lab::{Lab, cluster};

/// Where `node`'s volume probe writes its file. A non-empty directory in its place makes the
/// write fail (EISDIR), even for root, so the node reports itself unhealthy.
fn probe_file(lab: &Lab, node: &str) -> PathBuf {
    cluster::volume_source(lab.name())
        .join(".vipgate")
        .join("health")
        .join(node)
}

fn break_probe(lab: &Lab, node: &str) {
    std::fs::create_dir_all(probe_file(lab, node).join("blocked")).unwrap();
}

fn heal_probe(lab: &Lab, node: &str) {
    std::fs::remove_dir_all(probe_file(lab, node)).unwrap();
}

/// Whether `node` reports every node in `unhealthy` as UNHEALTHY and every other as healthy.
fn health_is(lab: &Lab, unhealthy: &[&str]) -> bool {
    let status = status(lab, "node1");
    status["nodes"].as_array().unwrap().iter().all(|node| {
        let name = node["name"].as_str().unwrap();
        node["flags"]["unhealthy"] == unhealthy.contains(&name)
    })
}

/// `vipgate ip all --json` on node1: the VIPs it calls live (what DNS answers).
fn live_count(lab: &Lab) -> usize {
    let (code, text) = vipgate(lab, "node1", &["ip", "all", "--json"]);
    assert_eq!(code, 0, "{text}");
    let report: serde_json::Value = serde_json::from_str(&text).unwrap();
    report["ips"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|ip| ip["live"] == true)
        .count()
}

#[test]
fn unhealthy_nodes_keep_their_vips_until_a_healthy_node_may_take_them() {
    if !common::root_or_skip("unhealthy_nodes_keep_their_vips_until_a_healthy_node_may_take_them") {
        return;
    }
    let lab = start_cluster("dg");
    let sampler = Sampler::new(&lab);
    std::thread::scope(|scope| {
        let _stop = sampler.stop_on_drop();
        scope.spawn(|| sampler.run());
        assert!(common::wait_until(MOVE_DEADLINE, || live_count(&lab) == 4));

        // Every node unhealthy (the shared volume failed). The nodes notice one after another,
        // so VIPs of the first may move to the last; once all are unhealthy every VIP is hosted
        // by one of them and stays there: nobody is better placed.
        for node in NODES {
            break_probe(&lab, node);
        }
        assert!(
            common::wait_until(MOVE_DEADLINE, || health_is(&lab, &NODES)),
            "the nodes never all turned unhealthy: {}\n{}",
            status(&lab, "node1"),
            logs(&lab)
        );
        // Settled: moves the leader decided while the last reports were in flight are over
        // (every VIP hosted, and nothing changed for a second).
        let mut before = holders(&lab);
        let mut unchanged_since = Instant::now();
        assert!(
            common::wait_until(MOVE_DEADLINE, || {
                let now = holders(&lab);
                if now != before {
                    before = now;
                    unchanged_since = Instant::now();
                }
                before.values().all(|nodes| nodes.len() == 1)
                    && unchanged_since.elapsed() >= Duration::from_secs(1)
            }),
            "VIPs left unhosted or moving with every node unhealthy: {:?}\n{}",
            holders(&lab),
            logs(&lab)
        );
        // Long enough for the leader to have acted on the health reports several times over.
        let watch_until = Instant::now() + Duration::from_secs(3);
        while Instant::now() < watch_until {
            assert_eq!(
                holders(&lab),
                before,
                "a VIP moved or was dropped\n{}",
                logs(&lab)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        // Hosted, but not live: DNS names only VIPs of healthy nodes.
        assert_eq!(live_count(&lab), 0);

        // One node healthy again: it takes every VIP (in hold-down or not, it is the only
        // healthy node), and they are live again.
        heal_probe(&lab, "node3");
        assert!(
            common::wait_until(MOVE_DEADLINE, || holders(&lab)
                .values()
                .all(|nodes| nodes == &["node3"])),
            "node3 did not take every VIP: {:?}\n{}",
            holders(&lab),
            logs(&lab)
        );
        assert!(common::wait_until(MOVE_DEADLINE, || live_count(&lab) == 4));

        // The others heal; every VIP stays hosted throughout.
        heal_probe(&lab, "node1");
        heal_probe(&lab, "node2");
        assert!(common::wait_until(MOVE_DEADLINE, || health_is(&lab, &[])));
        assert!(holders(&lab).values().all(|nodes| nodes.len() == 1));
    });
    sampler.assert_clean();
}
