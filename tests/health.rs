//! The health monitor inside a lab node: probes run on threads started from a thread in the
//! node's network namespace, so `127.0.0.1:2049` is the node's own loopback, as it will be for the
//! daemon. The node is unhealthy until its service answers `rise` times, turns unhealthy when
//! the service goes away and healthy again when it is back. Needs root.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;
use std::time::Duration;

use vipd::health::{HealthMonitor, MonitorSettings, Probe, TcpProbe, spawn_monitor};
use vipgate::lab::netns;

fn healthy(monitor: &HealthMonitor) -> bool {
    monitor.report().healthy
}

#[test]
fn a_node_follows_its_local_service() {
    if !common::root_or_skip("a_node_follows_its_local_service") {
        return;
    }
    let lab = common::lab("th", 1, 0);
    let node1 = lab.host("node1").unwrap().netns.clone();
    let service: SocketAddr = "127.0.0.1:2049".parse().unwrap();
    let bind = || netns::run_in(&node1, || TcpListener::bind(service).unwrap()).unwrap();

    let settings = MonitorSettings {
        interval: Duration::from_millis(50),
        timeout: Duration::from_millis(500),
        rise: 3,
        fall: 2,
    };
    let monitor = netns::run_in(&node1, || {
        let probe: Arc<dyn Probe> =
            Arc::new(TcpProbe::new("nfs", service, Duration::from_millis(400)));
        spawn_monitor(vec![probe], settings).unwrap()
    })
    .unwrap();

    // Nothing listens yet in node1 (whatever the host runs on its own loopback).
    assert!(common::wait_until(Duration::from_secs(5), || {
        monitor.report().round >= 3
    }));
    let report = monitor.report();
    assert!(!report.healthy);
    assert_eq!(report.failing.len(), 1);
    assert!(
        report.failing[0].1.contains("refused"),
        "{:?}",
        report.failing
    );

    let listener = bind();
    assert!(
        common::wait_until(Duration::from_secs(5), || healthy(&monitor)),
        "never healthy: {:?}",
        monitor.report()
    );

    drop(listener);
    assert!(
        common::wait_until(Duration::from_secs(5), || !healthy(&monitor)),
        "still healthy without the service"
    );
    assert_eq!(monitor.report().failing[0].0, "nfs 127.0.0.1:2049");

    let _listener = bind();
    assert!(
        common::wait_until(Duration::from_secs(5), || healthy(&monitor)),
        "not healthy again: {:?}",
        monitor.report()
    );
    monitor.shutdown();
}
