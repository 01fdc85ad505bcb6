//! Helpers shared by the integration tests: the root check, polling with a deadline, running a
//! program on the lab's client and describing its output; a running cluster (`cluster`), a
//! kernel NFS client under QEMU (`qemu`) and a replicated GlusterFS volume (`gluster`).

#![allow(
    dead_code,
    reason = "each test binary uses a different subset of these helpers"
)]

use std::process::Output;
use std::time::{Duration, Instant};

pub mod cluster;
pub mod gluster;
pub mod qemu;
pub mod rpc;

/// Runs `program ARGS` on the lab's `client1` and waits for it.
pub fn client(lab: &vipgate::lab::Lab, program: &str, args: &[&str]) -> Output {
    lab.command("client1", program)
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

/// A program's exit status and output, for an assertion message.
pub fn describe(output: &Output) -> String {
    format!(
        "status {:?}, stdout {:?}, stderr {:?}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// Whether this test may build namespaces. Tests need root; CI runs them as root and must not
/// skip them silently, so outside root they fail under CI and are skipped (loudly) elsewhere.
pub fn root_or_skip(test: &str) -> bool {
    if vipgate::lab::is_root() {
        return true;
    }
    assert!(
        std::env::var_os("CI").is_none(),
        "{test} needs root, and CI must run it as root"
    );
    eprintln!("SKIPPED {test}: needs root (network namespaces)");
    false
}

/// Polls `condition` every 20 ms until it holds or `timeout` passes; returns whether it held.
pub fn wait_until(timeout: Duration, mut condition: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if condition() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A lab name unique to this test run, so tests and parallel runs never collide.
pub fn unique_name(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!("{prefix}{:05x}", (nanos ^ std::process::id()) & 0xfffff)
}

/// A fresh lab of `nodes` nodes and `clients` clients, named uniquely from `prefix`.
pub fn lab(prefix: &str, nodes: usize, clients: usize) -> vipgate::lab::Lab {
    let spec = vipgate::lab::LabSpec {
        name: Some(unique_name(prefix)),
        nodes,
        clients,
    };
    vipgate::lab::Lab::create(&spec).unwrap_or_else(|error| panic!("cannot build a lab: {error}"))
}

/// Makes `host` of `lab` hold exactly `held` on `pub0` with `lease` left, as the VIP daemon does
/// on every tick: reconcile against the kernel, then apply. `managed` is the cluster's VIPs.
pub fn hold(
    lab: &vipgate::lab::Lab,
    host: &str,
    held: &[ipnet::IpNet],
    managed: &[ipnet::IpNet],
    lease: Duration,
) -> Result<(), String> {
    use vipd::apply::{AddressApplier, HeldVip, NetlinkApplier, reconcile};
    let held: Vec<HeldVip> = held
        .iter()
        .map(|address| HeldVip {
            address: *address,
            interface: "pub0".into(),
            lease_left: lease,
        })
        .collect();
    let managed: std::collections::BTreeSet<std::net::IpAddr> =
        managed.iter().map(ipnet::IpNet::addr).collect();
    let namespace = lab.host(host).map_err(|e| e.to_string())?.netns.clone();
    vipgate::lab::netns::netlink(&namespace, |handle| async move {
        let applier = NetlinkApplier::new(handle);
        let present = applier.addresses().await?;
        for change in reconcile(&held, &present, &managed) {
            applier.apply(&change).await?;
        }
        Ok::<_, vipd::apply::ApplyError>(())
    })
    .map_err(|e| e.to_string())
}
