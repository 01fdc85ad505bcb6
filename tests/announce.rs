//! When a VIP moves, the new owner's gratuitous ARP and unsolicited neighbour advertisement
//! rewrite the client's neighbour entries to the new owner's MAC, without the client sending
//! anything. Real raw sockets in a lab. Needs root.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::time::Duration;

use ipnet::IpNet;
use vipd::announce::{Announcer, RawAnnouncer};
use vipgate::lab::{Lab, netns};

const LEASE: Duration = Duration::from_secs(10);

/// The MAC `client` has for `address` now, if any.
fn client_entry(lab: &Lab, client: &str, address: std::net::IpAddr) -> Option<String> {
    lab.neighbours(client)
        .unwrap()
        .into_iter()
        .find(|n| n.address == address)
        .and_then(|n| n.mac)
}

#[test]
fn announcements_move_the_clients_neighbour_entries() {
    if !common::root_or_skip("announcements_move_the_clients_neighbour_entries") {
        return;
    }
    let lab = common::lab("ta", 2, 1);
    let vips: Vec<IpNet> = ["192.0.2.201/24", "2001:db8:0:1::201/64"]
        .iter()
        .map(|v| v.parse().unwrap())
        .collect();
    let node1_mac = lab.mac("node1", "pub0").unwrap();
    let node2_mac = lab.mac("node2", "pub0").unwrap();

    // The client talks to the VIPs on node1 and so learns node1's MAC for them.
    common::hold(&lab, "node1", &vips, &vips, LEASE).unwrap();
    for vip in &vips {
        // Polled: one probe can miss on a loaded machine (the first SYN waits for ARP).
        assert!(common::wait_until(Duration::from_secs(5), || {
            lab.reaches("client1", vip.addr(), Duration::from_millis(400))
                .unwrap()
        }));
        assert_eq!(
            client_entry(&lab, "client1", vip.addr()).as_deref(),
            Some(node1_mac.as_str())
        );
    }

    // The VIPs move to node2, which announces them in rounds until the client has learnt.
    common::hold(&lab, "node1", &[], &vips, LEASE).unwrap();
    common::hold(&lab, "node2", &vips, &vips, LEASE).unwrap();
    let node2 = lab.host("node2").unwrap().netns.clone();
    let moved = common::wait_until(Duration::from_secs(6), || {
        netns::run_in(&node2, || {
            for vip in &vips {
                RawAnnouncer.announce(vip.addr(), "pub0").unwrap();
            }
        })
        .unwrap();
        // Linux ignores a second update of one entry within `locktime` (1 s), so a first round
        // sent right after the client's own traffic may not count; the rounds cover that, as in
        // the daemon.
        std::thread::sleep(Duration::from_millis(300));
        vips.iter().all(|vip| {
            client_entry(&lab, "client1", vip.addr()).as_deref() == Some(node2_mac.as_str())
        })
    });
    let entries: Vec<_> = vips
        .iter()
        .map(|vip| client_entry(&lab, "client1", vip.addr()))
        .collect();
    assert!(
        moved,
        "client1 still maps the VIPs to {entries:?}; node2 is {node2_mac}, node1 {node1_mac}"
    );
}
