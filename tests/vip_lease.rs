//! The kernel enforces VIP leases (DESIGN.md invariant 1): a VIP added by `vipd::apply` with the
//! lease left as its lifetime stays while renewals come, and disappears by itself soon after they
//! stop — no daemon code runs for that. Real netlink in a lab namespace. Needs root.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::time::{Duration, Instant};

use ipnet::IpNet;
use vipgate::lab::Lab;

const LEASE: Duration = Duration::from_millis(2500);
const VIPS: [&str; 2] = ["192.0.2.201/24", "2001:db8:0:1::201/64"];

fn vips() -> Vec<IpNet> {
    VIPS.iter().map(|v| v.parse().unwrap()).collect()
}

/// Makes node1 hold exactly `held` (renewing what it has), as the daemon will on every tick.
fn hold(lab: &Lab, held: &[IpNet]) {
    common::hold(lab, "node1", held, &vips(), LEASE).unwrap();
}

fn configured(lab: &Lab) -> Vec<IpNet> {
    let wanted = vips();
    lab.addresses("node1")
        .unwrap()
        .into_iter()
        .map(|a| a.address)
        .filter(|a| wanted.contains(a))
        .collect()
}

#[test]
fn an_unrenewed_vip_is_removed_by_the_kernel() {
    if !common::root_or_skip("an_unrenewed_vip_is_removed_by_the_kernel") {
        return;
    }
    let lab = common::lab("tl", 1, 1);
    let vips = vips();
    let probe = Duration::from_millis(400);

    hold(&lab, &vips);
    assert_eq!(configured(&lab).len(), 2);
    let lifetimes: Vec<Option<u32>> = lab
        .addresses("node1")
        .unwrap()
        .iter()
        .filter(|a| vips.contains(&a.address))
        .map(|a| a.valid_lifetime)
        .collect();
    assert!(
        lifetimes.iter().all(|l| matches!(l, Some(1..=2))),
        "lifetimes {lifetimes:?} must be the lease left, rounded down"
    );
    for vip in &vips {
        assert!(
            lab.reaches("client1", vip.addr(), probe).unwrap(),
            "client1 cannot reach {vip}"
        );
    }

    // Renewals keep the VIPs well past their first lifetime.
    let renewing_since = Instant::now();
    while renewing_since.elapsed() < Duration::from_secs(4) {
        hold(&lab, &vips);
        assert_eq!(configured(&lab).len(), 2, "a VIP vanished while renewed");
        std::thread::sleep(Duration::from_millis(250));
    }
    hold(&lab, &vips);
    let last_renewal = Instant::now();

    // No more renewals, as when the daemon is killed or frozen: the kernel removes both.
    assert!(
        common::wait_until(Duration::from_secs(5), || configured(&lab).is_empty()),
        "the kernel kept an expired VIP"
    );
    let gone_after = last_renewal.elapsed();
    assert!(
        gone_after >= Duration::from_millis(900),
        "removed after {gone_after:?}, before its lifetime"
    );
    assert!(
        gone_after <= Duration::from_millis(3200),
        "removed after {gone_after:?}, long after its lifetime"
    );
    assert!(!lab.reaches("client1", vips[0].addr(), probe).unwrap());
    // The node's own addresses are untouched.
    assert!(
        lab.reaches("client1", lab.host("node1").unwrap().public_v4(), probe)
            .unwrap()
    );

    // A VIP that is no longer held is removed at once by reconciliation.
    hold(&lab, &vips);
    assert_eq!(configured(&lab).len(), 2);
    hold(&lab, &vips[1..]);
    assert_eq!(configured(&lab), vec![vips[1]]);
    hold(&lab, &[]);
    assert!(configured(&lab).is_empty());
    eprintln!("unrenewed VIPs were removed {gone_after:?} after the last renewal (lifetime 2 s)");
}
