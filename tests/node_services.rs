//! The services of `vipgate node` for real: three nodes in a namespace lab serve the lab's
//! export (`demo`, root squashed) over NFSv3 next to the VIP daemon, and a libnfs client that
//! wrote a file through a VIP reads it back through the same VIP after the node holding it was
//! SIGKILLed. Needs root.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]
#![allow(
    clippy::zombie_processes,
    reason = "node daemons are stopped by the lab's teardown; a killed one is reaped when the test ends"
)]

mod common;

use common::{client, describe};
use std::os::unix::fs::MetadataExt as _;
use std::time::{Duration, Instant};

use common::cluster::{holders, logs};
use nix::sys::signal::Signal;
use vipgate::lab::{cluster, state};

#[test]
fn an_nfs_client_reads_its_file_back_through_the_vip_after_the_owner_is_killed() {
    if !common::root_or_skip(
        "an_nfs_client_reads_its_file_back_through_the_vip_after_the_owner_is_killed",
    ) {
        return;
    }
    // Settled first (every node holding a VIP): the first node up takes every VIP and hands
    // some over as the others join, and a copy started during those moves is another test.
    let lab = common::cluster::start_cluster("ns");
    let vip = cluster::vip_addresses()[0];
    let url = format!("nfs://{vip}/{}", cluster::DEMO_EXPORT);

    // The gateway answers through the VIP once the VIP is up (portmap on 111, no port options).
    let mut last = None;
    let served = common::wait_until(Duration::from_secs(30), || {
        let output = client(&lab, "nfs-ls", &[&url]);
        let ok = output.status.success();
        last = Some(output);
        ok
    });
    assert!(
        served,
        "nfs-ls never worked: {}\n{}",
        describe(&last.unwrap()),
        logs(&lab)
    );

    let local = state::lab_dir(lab.name()).join("upload.bin");
    let content: Vec<u8> = (0..2_000_000u32).map(|i| (i % 253) as u8).collect();
    std::fs::write(&local, &content).unwrap();
    let remote = format!("{url}/upload.bin");
    let output = client(&lab, "nfs-cp", &[local.to_str().unwrap(), &remote]);
    assert!(output.status.success(), "nfs-cp: {}", describe(&output));
    // The client is root on its host, so the export's root squash made the file nobody's.
    let stored = cluster::volume_source(lab.name())
        .join(cluster::DEMO_EXPORT)
        .join("upload.bin");
    let metadata = std::fs::metadata(&stored).unwrap();
    assert_eq!(
        (metadata.uid(), metadata.gid()),
        (cluster::DEMO_EXPORT_OWNER, cluster::DEMO_EXPORT_OWNER)
    );
    assert_eq!(std::fs::read(&stored).unwrap(), content);

    let mut owner = Vec::new();
    assert!(
        common::wait_until(Duration::from_secs(10), || {
            owner = holders(&lab)[&vip].clone();
            owner.len() == 1
        }),
        "{vip} is not on exactly one node: {owner:?}"
    );
    let victim = owner[0];
    lab.node_daemon(victim)
        .unwrap()
        .unwrap_or_else(|| panic!("no daemon on {victim}"))
        .signal(Signal::SIGKILL);
    let killed = Instant::now();

    let mut last = None;
    let read_back = common::wait_until(Duration::from_secs(15), || {
        let output = client(&lab, "nfs-cat", &[&remote]);
        let ok = output.status.success();
        last = Some(output);
        ok
    });
    let last = last.unwrap();
    assert!(
        read_back,
        "nfs-cat never worked after the kill: {}\n{}",
        describe(&last),
        logs(&lab)
    );
    eprintln!(
        "{victim} killed: nfs-cat through {vip} worked after {:?}",
        killed.elapsed()
    );
    assert_eq!(
        last.stdout, content,
        "the bytes read back after the failover"
    );
    let now = holders(&lab)[&vip].clone();
    assert!(
        now.len() == 1 && now[0] != victim,
        "{vip} should be on one survivor: {now:?}"
    );
}

#[test]
fn portmap_and_mount_answer_over_udp_through_the_vip() {
    if !common::root_or_skip("portmap_and_mount_answer_over_udp_through_the_vip") {
        return;
    }
    let lab = common::cluster::start_cluster("nu");
    let vip = cluster::vip_addresses()[0].to_string();
    let v6 = cluster::vip_addresses()
        .into_iter()
        .find(std::net::IpAddr::is_ipv6)
        .unwrap()
        .to_string();
    // `rpcinfo -u` makes a NULL call over UDP: it must come back, from the VIP it was sent to
    // (rpcinfo's UDP client drops replies from any other address).
    for (address, program, version) in [
        (&vip, "100000", "2"),
        (&vip, "100005", "3"),
        (&v6, "100005", "3"),
    ] {
        let mut last = None;
        let answered = common::wait_until(Duration::from_secs(20), || {
            let output = client(&lab, "rpcinfo", &["-u", address, program, version]);
            let ok = output.status.success();
            last = Some(output);
            ok
        });
        assert!(
            answered,
            "rpcinfo -u {address} {program} {version}: {}\n{}",
            describe(&last.unwrap()),
            logs(&lab)
        );
    }
    // The table lists MOUNT over UDP on 2049, and NFS over TCP only.
    let output = client(&lab, "rpcinfo", &["-p", &vip]);
    let table = String::from_utf8_lossy(&output.stdout);
    let has = |program: &str, protocol: &str| {
        table.lines().any(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            fields.first() == Some(&program) && fields.get(2) == Some(&protocol)
        })
    };
    assert!(has("100005", "udp") && has("100000", "udp"), "{table}");
    assert!(has("100003", "tcp") && !has("100003", "udp"), "{table}");
    // NFS over UDP is not registered (a call sent anyway gets PROG_UNAVAIL:
    // gateway/tests/udp.rs).
    let output = client(&lab, "rpcinfo", &["-u", &vip, "100003", "3"]);
    assert!(!output.status.success());
}
