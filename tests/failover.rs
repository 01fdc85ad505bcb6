//! The VIP daemon for real: three `vipgate node` processes in a namespace lab, four VIPs, and
//! the faults of issue #3 — SIGKILL, SIGSTOP, a cut link, a killed leader, restarts — while a
//! sampler reads every node's addresses every 20 ms and records any instant at which a VIP is
//! configured on two nodes. Needs root.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]
#![allow(
    clippy::zombie_processes,
    reason = "node daemons are stopped by the lab's teardown; a killed one is reaped when the test ends"
)]

mod common;

use std::collections::BTreeMap;
use std::io::Read as _;
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::{
    MOVE_DEADLINE, NODES, Sampler, VIPGATE, all_hosted, first_v4, held_by, holders, logs,
    moved_off, owner_of, signal, start_cluster, status, vipgate,
};
use nix::sys::signal::Signal;
use vipgate::lab::{Lab, Network, netns};

#[test]
fn killed_and_frozen_owners_lose_their_vips_without_overlap() {
    if !common::root_or_skip("killed_and_frozen_owners_lose_their_vips_without_overlap") {
        return;
    }
    let lab = start_cluster("fk");
    let sampler = Sampler::new(&lab);
    std::thread::scope(|scope| {
        scope.spawn(|| sampler.run());
        let _stop = sampler.stop_on_drop();
        let vip = first_v4();
        let victim = owner_of(&lab, vip);
        let victim_vips = held_by(&lab, victim);

        // An idle client connection to the VIP, served by a socket on the victim.
        let listener = netns::run_in(&lab.host(victim).unwrap().netns, || {
            TcpListener::bind(SocketAddr::new(vip, 7000))
        })
        .unwrap()
        .unwrap();
        let mut client = netns::run_in(&lab.host("client1").unwrap().netns, || {
            TcpStream::connect_timeout(&SocketAddr::new(vip, 7000), Duration::from_secs(2))
        })
        .unwrap()
        .unwrap();
        let (_served, _) = listener.accept().unwrap();
        // The owner reports its connections each second; wait until the cluster knows it.
        assert!(
            common::wait_until(Duration::from_secs(5), || known_connections(&lab) > 0),
            "the connection was never replicated"
        );
        let victim_mac = lab.mac(victim, "pub0").unwrap();

        // SIGKILL: the kernel drops the VIPs when the lease ends; a survivor takes them.
        let killed = Instant::now();
        signal(&lab, victim, Signal::SIGKILL);
        assert!(
            common::wait_until(MOVE_DEADLINE, || moved_off(&lab, &victim_vips, victim)),
            "the VIPs of {victim} did not move: {:?}\n{}",
            holders(&lab),
            logs(&lab)
        );
        eprintln!("SIGKILL of {victim}: moved after {:?}", killed.elapsed());
        let new_owner = owner_of(&lab, vip);
        let new_mac = lab.mac(new_owner, "pub0").unwrap();
        assert_ne!(new_mac, victim_mac);
        // The client's neighbour entry follows, and its idle connection is reset promptly.
        assert!(
            common::wait_until(Duration::from_secs(3), || {
                lab.neighbours("client1")
                    .unwrap()
                    .iter()
                    .any(|n| n.address == vip && n.mac.as_deref() == Some(new_mac.as_str()))
            }),
            "client1 still sends {vip} to the old owner"
        );
        client
            .set_read_timeout(Some(Duration::from_secs(3)))
            .unwrap();
        let mut byte = [0u8; 1];
        let read = client.read(&mut byte);
        assert!(
            matches!(&read, Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset),
            "the idle client connection was not reset: {read:?}"
        );

        // The killed node comes back and takes nothing back during its hold-down.
        let before = holders(&lab);
        lab.start_node(victim, Path::new(VIPGATE)).unwrap();
        let rejoined = common::wait_until(Duration::from_secs(10), || {
            let (code, text) = vipgate(&lab, victim, &["status", "--json"]);
            let status: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
            code == 0
                && status["nodes"].as_array().is_some_and(|nodes| {
                    nodes.len() == 3 && nodes.iter().all(|n| n["flags"]["disconnected"] == false)
                })
        });
        assert!(rejoined, "{victim} did not rejoin\n{}", logs(&lab));
        let steady = Instant::now();
        while steady.elapsed() < Duration::from_secs(3) {
            assert!(
                held_by(&lab, victim).is_empty(),
                "{victim} took VIPs back at once"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        assert_eq!(holders(&lab), before);

        // SIGSTOP: a frozen owner loses its VIPs too, and after SIGCONT it neither re-adds them
        // nor announces them. It is frozen just after taking the VIP and sending its first
        // announcement, while its next rounds (1.1 and 2.2 s) are still to come: on SIGCONT its
        // announcer wakes before its event loop learns of the move, and used to send the client
        // one more gratuitous ARP for an address its kernel had already deleted.
        let frozen = NODES
            .iter()
            .copied()
            .find(|node| *node != victim && *node != owner_of(&lab, vip))
            .unwrap();
        let frozen_mac = lab.mac(frozen, "pub0").unwrap();
        let client_mac = || client_neighbour(&lab, vip);
        let (code, text) = vipgate(&lab, "node1", &["moveip", &vip.to_string(), frozen]);
        assert_eq!(code, 0, "moveip: {text}");
        assert!(
            common::wait_until(MOVE_DEADLINE, || client_mac().as_deref()
                == Some(frozen_mac.as_str())),
            "client1 never learned that {vip} moved to {frozen}"
        );
        let frozen_vips = held_by(&lab, frozen);
        let stopped = Instant::now();
        signal(&lab, frozen, Signal::SIGSTOP);
        assert!(
            common::wait_until(MOVE_DEADLINE, || moved_off(&lab, &frozen_vips, frozen)),
            "the VIPs of frozen {frozen} did not move: {:?}",
            holders(&lab)
        );
        eprintln!("SIGSTOP of {frozen}: moved after {:?}", stopped.elapsed());
        assert!(
            common::wait_until(Duration::from_secs(3), || client_mac()
                .is_some_and(|mac| mac != frozen_mac)),
            "client1 does not send {vip} to its new owner: {:?}",
            client_mac()
        );
        signal(&lab, frozen, Signal::SIGCONT);
        let thawed = Instant::now();
        while thawed.elapsed() < Duration::from_secs(3) {
            assert!(
                frozen_vips
                    .iter()
                    .all(|v| !holders(&lab)[v].contains(&frozen)),
                "{frozen} re-added a VIP after SIGCONT: {:?}\n{}",
                holders(&lab),
                logs(&lab)
            );
            assert_ne!(
                client_mac().as_deref(),
                Some(frozen_mac.as_str()),
                "{frozen} announced {vip} after SIGCONT, which it no longer has ({:?} after)\n{}",
                thawed.elapsed(),
                logs(&lab)
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    });
    sampler.assert_clean();
}

/// The hardware address client1's neighbour entry gives `vip`, if it has one.
fn client_neighbour(lab: &Lab, vip: IpAddr) -> Option<String> {
    lab.neighbours("client1")
        .unwrap()
        .into_iter()
        .find(|n| n.address == vip)
        .and_then(|n| n.mac)
}

/// How many client connections the cluster knows of, from node1's `ip all --json`.
fn known_connections(lab: &Lab) -> usize {
    let (_, text) = vipgate(lab, "node1", &["ip", "all", "--json"]);
    let value: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
    value["ips"].as_array().map_or(0, |ips| {
        ips.iter()
            .filter_map(|ip| ip["connections"].as_u64())
            .sum::<u64>() as usize
    })
}

#[test]
fn a_cut_node_and_a_killed_leader_lose_their_vips_and_state_survives_restarts() {
    if !common::root_or_skip(
        "a_cut_node_and_a_killed_leader_lose_their_vips_and_state_survives_restarts",
    ) {
        return;
    }
    let lab = start_cluster("fc");
    let sampler = Sampler::new(&lab);
    std::thread::scope(|scope| {
        scope.spawn(|| sampler.run());
        let _stop = sampler.stop_on_drop();

        // Cut: the node is alone, loses its lease, drops its VIPs; the others take them.
        let cut = owner_of(&lab, first_v4());
        let cut_vips = held_by(&lab, cut);
        lab.cut(cut, &[Network::Public, Network::Cluster]).unwrap();
        let started = Instant::now();
        assert!(
            common::wait_until(MOVE_DEADLINE, || held_by(&lab, cut).is_empty()),
            "cut {cut} kept its VIPs"
        );
        assert!(
            common::wait_until(MOVE_DEADLINE, || moved_off(&lab, &cut_vips, cut)),
            "the VIPs of cut {cut} were not taken: {:?}",
            holders(&lab)
        );
        eprintln!("cut of {cut}: moved after {:?}", started.elapsed());
        lab.restore(cut, &[Network::Public, Network::Cluster])
            .unwrap();

        // Leader kill.
        let observer = NODES.iter().copied().find(|node| *node != cut).unwrap();
        let mut leader = None;
        assert!(common::wait_until(MOVE_DEADLINE, || {
            leader = status(&lab, observer)["leader"].as_u64();
            leader.is_some()
        }));
        let leader = leader.unwrap() as usize;
        let leader_host = NODES[leader];
        assert!(
            common::wait_until(MOVE_DEADLINE, || all_hosted(&lab)),
            "{:?}",
            holders(&lab)
        );
        let leader_vips = held_by(&lab, leader_host);
        let killed = Instant::now();
        signal(&lab, leader_host, Signal::SIGKILL);
        assert!(
            common::wait_until(MOVE_DEADLINE, || moved_off(&lab, &leader_vips, leader_host)),
            "the VIPs of the killed leader {leader_host} did not move: {:?}\n{}",
            holders(&lab),
            logs(&lab)
        );
        eprintln!(
            "leader kill of {leader_host}: moved after {:?}",
            killed.elapsed()
        );
        lab.start_node(leader_host, Path::new(VIPGATE)).unwrap();

        // Restart everyone: the log keeps the state, so every VIP returns to its owner.
        assert!(common::wait_until(MOVE_DEADLINE, || all_hosted(&lab)));
        let owners_before: BTreeMap<IpAddr, Vec<&str>> = holders(&lab);
        for node in NODES {
            signal(&lab, node, Signal::SIGKILL);
        }
        assert!(common::wait_until(Duration::from_secs(5), || NODES
            .iter()
            .all(|node| lab.node_daemon(node).unwrap().is_none())));
        for node in NODES {
            lab.start_node(node, Path::new(VIPGATE)).unwrap();
        }
        assert!(
            common::wait_until(Duration::from_secs(20), || holders(&lab) == owners_before),
            "after a full restart: {:?}, before: {owners_before:?}\n{}",
            holders(&lab),
            logs(&lab)
        );
    });
    sampler.assert_clean();
}

#[test]
fn operator_commands_disable_enable_moveip_ban() {
    if !common::root_or_skip("operator_commands_disable_enable_moveip_ban") {
        return;
    }
    let lab = start_cluster("fo");
    let sampler = Sampler::new(&lab);
    std::thread::scope(|scope| {
        scope.spawn(|| sampler.run());
        let _stop = sampler.stop_on_drop();
        let (code, text) = vipgate(&lab, "node1", &["status"]);
        assert_eq!(code, 0);
        assert!(text.starts_with("Number of nodes:3"), "{text}");
        assert!(text.contains("(THIS NODE)"), "{text}");

        // disable: the node keeps running but hosts nothing; nodestatus carries the flag.
        let (code, text) = vipgate(&lab, "node1", &["disable", "--node", "node2"]);
        assert_eq!(code, 0, "{text}");
        assert!(common::wait_until(MOVE_DEADLINE, || held_by(&lab, "node2").is_empty()));
        assert!(common::wait_until(MOVE_DEADLINE, || all_hosted(&lab)));
        let (code, _) = vipgate(&lab, "node1", &["nodestatus", "node2"]);
        assert_eq!(code, 0x04, "nodestatus of a disabled node");
        let (code, text) = vipgate(&lab, "node2", &["enable"]);
        assert_eq!(code, 0, "{text}");
        let (code, _) = vipgate(&lab, "node1", &["nodestatus", "node2"]);
        assert_eq!(code, 0);

        // moveip: the VIP ends up where it was sent.
        let vip = first_v4();
        let target = NODES
            .iter()
            .copied()
            .find(|node| *node != owner_of(&lab, vip))
            .unwrap();
        let (code, text) = vipgate(&lab, "node1", &["moveip", &vip.to_string(), target]);
        assert_eq!(code, 0, "moveip: {text}");
        assert!(common::wait_until(MOVE_DEADLINE, || owner_of(&lab, vip) == target));
        // Moved on again at once, while the previous owner's announcement rounds would still
        // be running: the client must follow the last owner and stay there (a late round from
        // an earlier owner used to point it back for a second).
        assert!(lab.reaches("client1", vip, Duration::from_secs(2)).unwrap());
        let last = NODES.iter().copied().find(|node| *node != target).unwrap();
        let (code, text) = vipgate(&lab, "node1", &["moveip", &vip.to_string(), last]);
        assert_eq!(code, 0, "moveip: {text}");
        let last_mac = lab.mac(last, "pub0").unwrap();
        let client_mac = || client_neighbour(&lab, vip);
        assert!(
            common::wait_until(MOVE_DEADLINE, || client_mac().as_deref() == Some(&last_mac)),
            "client1 never learned that {vip} is on {last}"
        );
        let steady = Instant::now();
        while steady.elapsed() < Duration::from_millis(2500) {
            assert_eq!(
                client_mac().as_deref(),
                Some(last_mac.as_str()),
                "client1 was sent back to an earlier owner of {vip}"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        // Refused with a clear error: an unknown node, an unknown address.
        let (code, _) = vipgate(&lab, "node1", &["moveip", &vip.to_string(), "node9"]);
        assert_ne!(code, 0);
        let (code, _) = vipgate(&lab, "node1", &["moveip", "192.0.2.250", target]);
        assert_ne!(code, 0);

        // ban: the node gives its VIPs up until the ban ends or is lifted.
        let (code, text) = vipgate(&lab, "node1", &["ban", "60", "--node", "node3"]);
        assert_eq!(code, 0, "{text}");
        assert!(common::wait_until(MOVE_DEADLINE, || held_by(&lab, "node3").is_empty()));
        let (code, _) = vipgate(&lab, "node1", &["nodestatus", "node3"]);
        assert_eq!(code, 0x08, "nodestatus of a banned node");
        let (code, text) = vipgate(&lab, "node1", &["unban", "--node", "node3"]);
        assert_eq!(code, 0, "{text}");
        let (code, _) = vipgate(&lab, "node1", &["nodestatus", "node3"]);
        assert_eq!(code, 0);

        let (code, text) = vipgate(&lab, "node1", &["ip", "all"]);
        assert_eq!(code, 0);
        assert!(text.starts_with("Public IPs on ALL nodes"), "{text}");
        assert_eq!(text.lines().count(), 5, "{text}");
    });
    sampler.assert_clean();
}
