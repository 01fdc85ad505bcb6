//! `vipgate nfs` in a lab, against real clients: libnfs's `nfs-ls`, `nfs-cp` and `nfs-cat` in a
//! client namespace reach an export through a VIP with no port options (portmap on 111), keep
//! working when the VIP moves to another node serving the same directory, and are refused by an
//! export whose client list leaves them out; and a file handle obtained through node1 keeps
//! working through node2 after the VIP moves, while the write verifier changes. Needs root.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use common::rpc::{Rpc, opaque};
use common::{client, describe};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::Duration;

use gateway::xdr::{Decoder, Encoder};
use ipnet::IpNet;
use vipd::announce::{Announcer, RawAnnouncer};
use vipgate::lab::{Lab, netns, state};

const VIP: &str = "192.0.2.201/24";
const VIP_ADDRESS: &str = "192.0.2.201";
const LEASE: Duration = Duration::from_secs(300);

/// The volume every node of the lab serves: one directory both node namespaces see.
fn volume(lab: &Lab) -> PathBuf {
    state::lab_dir(lab.name()).join("volume")
}

fn write_config(lab: &Lab) -> PathBuf {
    let volume = volume(lab);
    for directory in ["data", "closed", "byname"] {
        std::fs::create_dir_all(volume.join(directory)).unwrap();
    }
    let config = format!(
        r#"cluster:
  name: nfslab
  secret: a lab secret that is long enough
  data_dir: /var/lib/vipgate-nfs-test
nodes:
  - name: node1
    cluster_address: 198.51.100.11
    public_interfaces: [pub0]
  - name: node2
    cluster_address: 198.51.100.12
    public_interfaces: [pub0]
public_addresses:
  - address: {VIP}
volume:
  path: {volume}
  handles: kernel
nfs:
  exports:
    - name: data
      path: data
      access: rw
      squash: none
      clients: [192.0.2.0/24, "2001:db8::/32"]
    - name: closed
      path: closed
      clients: [198.51.100.0/24]
    - name: byname
      path: byname
      clients: [client1]
    - name: othername
      path: byname
      clients: [client2]
"#,
        volume = volume.display()
    );
    let path = state::lab_dir(lab.name()).join("cluster.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

fn start_nfs(lab: &Lab, node: &str, config: &Path) -> Child {
    let mut command = lab.command(node, env!("CARGO_BIN_EXE_vipgate")).unwrap();
    command
        .args(["nfs", "--config"])
        .arg(config)
        .args(["--name", node]);
    lab.spawn(node, command).unwrap()
}

fn hold(lab: &Lab, node: &str, held: bool) {
    let vip: IpNet = VIP.parse().unwrap();
    let held: Vec<IpNet> = if held { vec![vip] } else { vec![] };
    common::hold(lab, node, &held, &[vip], LEASE).unwrap();
}

/// Moves the VIP from node1 to node2 and announces it from node2 (as the VIP daemon does) until
/// the client reaches NFS on it again.
fn move_vip_to_node2(lab: &Lab) {
    hold(lab, "node1", false);
    hold(lab, "node2", true);
    let node2 = lab.host("node2").unwrap().netns.clone();
    let client = lab.host("client1").unwrap().netns.clone();
    let vip: std::net::IpAddr = VIP_ADDRESS.parse().unwrap();
    let nfs = SocketAddr::new(vip, 2049);
    let moved = common::wait_until(Duration::from_secs(10), || {
        netns::run_in(&node2, || RawAnnouncer.announce(vip, "pub0").unwrap()).unwrap();
        netns::run_in(&client, || {
            TcpStream::connect_timeout(&nfs, Duration::from_millis(300)).is_ok()
        })
        .unwrap()
    });
    assert!(moved, "the client never reached {nfs} on node2");
}

fn succeeded(output: &Output) -> bool {
    output.status.success()
}

fn stop(mut child: Child) -> std::process::ExitStatus {
    let pid = nix::unistd::Pid::from_raw(i32::try_from(child.id()).unwrap());
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    child.wait().unwrap()
}

#[test]
fn libnfs_tools_through_a_vip_across_a_move() {
    if !common::root_or_skip("libnfs_tools_through_a_vip_across_a_move") {
        return;
    }
    let lab = common::lab("nf", 2, 1);
    let config = write_config(&lab);
    let node1 = start_nfs(&lab, "node1", &config);
    let node2 = start_nfs(&lab, "node2", &config);
    hold(&lab, "node1", true);

    let url = format!("nfs://{VIP_ADDRESS}/data");
    let mut last = None;
    let up = common::wait_until(Duration::from_secs(20), || {
        let output = client(&lab, "nfs-ls", &[&url]);
        let ok = succeeded(&output);
        last = Some(output);
        ok
    });
    assert!(up, "nfs-ls never worked: {}", describe(&last.unwrap()));

    // Upload a file with nfs-cp (portmap on 111 finds MOUNT and NFS), read it back.
    let local = state::lab_dir(lab.name()).join("upload.bin");
    let content: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(&local, &content).unwrap();
    let remote = format!("{url}/upload.bin");
    let output = client(&lab, "nfs-cp", &[local.to_str().unwrap(), &remote]);
    assert!(succeeded(&output), "nfs-cp: {}", describe(&output));
    assert_eq!(
        std::fs::read(volume(&lab).join("data/upload.bin")).unwrap(),
        content,
        "the bytes on the volume"
    );
    let output = client(&lab, "nfs-cat", &[&remote]);
    assert!(succeeded(&output), "nfs-cat: {}", describe(&output));
    assert_eq!(output.stdout, content);
    let output = client(&lab, "nfs-ls", &[&url]);
    assert!(String::from_utf8_lossy(&output.stdout).contains("upload.bin"));

    // An export whose client list leaves the public network out refuses the mount.
    let output = client(&lab, "nfs-ls", &[&format!("nfs://{VIP_ADDRESS}/closed")]);
    assert!(
        !succeeded(&output),
        "closed export listed: {}",
        describe(&output)
    );

    // Client lists by host name: client1 is in the lab's /etc/hosts, confirmed forward.
    let output = client(&lab, "nfs-ls", &[&format!("nfs://{VIP_ADDRESS}/byname")]);
    assert!(succeeded(&output), "byname: {}", describe(&output));
    let output = client(&lab, "nfs-ls", &[&format!("nfs://{VIP_ADDRESS}/othername")]);
    assert!(
        !succeeded(&output),
        "othername listed: {}",
        describe(&output)
    );

    // Move the VIP to node2 and stop node1's server: the same URL is served by node2.
    assert!(stop(node1).success(), "SIGTERM ends the server cleanly");
    move_vip_to_node2(&lab);
    let output = client(&lab, "nfs-cat", &[&remote]);
    assert!(
        succeeded(&output),
        "nfs-cat after the move: {}",
        describe(&output)
    );
    assert_eq!(output.stdout, content);

    assert!(stop(node2).success());
    lab.teardown().unwrap();
}

#[test]
fn a_handle_from_node1_works_on_node2_after_the_vip_moves() {
    if !common::root_or_skip("a_handle_from_node1_works_on_node2_after_the_vip_moves") {
        return;
    }
    let lab = common::lab("nh", 2, 1);
    let config = write_config(&lab);
    std::fs::write(volume(&lab).join("data/file"), b"0123456789").unwrap();
    let node1 = start_nfs(&lab, "node1", &config);
    let node2 = start_nfs(&lab, "node2", &config);
    hold(&lab, "node1", true);
    let client_ns = lab.host("client1").unwrap().netns.clone();
    let nfs: SocketAddr = format!("{VIP_ADDRESS}:2049").parse().unwrap();
    let reachable = common::wait_until(Duration::from_secs(20), || {
        netns::run_in(&client_ns, || {
            TcpStream::connect_timeout(&nfs, Duration::from_millis(300)).is_ok()
        })
        .unwrap()
    });
    assert!(reachable, "node1 never listened on {nfs}");

    // Through node1: MNT, LOOKUP, an UNSTABLE WRITE.
    let (handle, verifier1) = netns::run_in(&client_ns, || {
        let mut rpc = Rpc::connect(nfs);
        let mut args = Vec::new();
        opaque(&mut Encoder::new(&mut args), b"/data");
        let results = rpc.call(gateway::rpc::MOUNT_PROGRAM, 1, &args);
        let decoder = &mut Decoder::new(&results);
        assert_eq!(decoder.u32().unwrap(), 0, "MNT");
        let root = decoder.opaque(64).unwrap().to_vec();

        let mut args = Vec::new();
        let encoder = &mut Encoder::new(&mut args);
        opaque(encoder, &root);
        opaque(encoder, b"file");
        let results = rpc.call(gateway::rpc::NFS_PROGRAM, 3, &args);
        let decoder = &mut Decoder::new(&results);
        assert_eq!(decoder.u32().unwrap(), 0, "LOOKUP");
        let handle = decoder.opaque(64).unwrap().to_vec();

        let mut args = Vec::new();
        let encoder = &mut Encoder::new(&mut args);
        opaque(encoder, &handle);
        encoder.u64(0);
        encoder.u32(4);
        encoder.u32(0); // UNSTABLE
        opaque(encoder, b"abcd");
        let results = rpc.call(gateway::rpc::NFS_PROGRAM, 7, &args);
        let verifier = write_verifier(&results);
        (handle, verifier)
    })
    .unwrap();

    // node1 goes away and the VIP moves. The client reconnects to the same address.
    assert!(stop(node1).success());
    move_vip_to_node2(&lab);

    let (data, verifier2) = netns::run_in(&client_ns, || {
        let mut rpc = Rpc::connect(nfs);
        // The very same handle reads the file through node2 (no ESTALE).
        let mut args = Vec::new();
        let encoder = &mut Encoder::new(&mut args);
        opaque(encoder, &handle);
        encoder.u64(0);
        encoder.u32(100);
        let results = rpc.call(gateway::rpc::NFS_PROGRAM, 6, &args);
        let decoder = &mut Decoder::new(&results);
        assert_eq!(decoder.u32().unwrap(), 0, "READ through node2");
        if decoder.bool().unwrap() {
            decoder.fixed_opaque(84).unwrap();
        }
        decoder.u32().unwrap();
        decoder.bool().unwrap();
        let data = decoder.opaque(100).unwrap().to_vec();

        // The client re-sends its uncommitted write because the verifier changed.
        let mut args = Vec::new();
        let encoder = &mut Encoder::new(&mut args);
        opaque(encoder, &handle);
        encoder.u64(0);
        encoder.u32(4);
        encoder.u32(0);
        opaque(encoder, b"abcd");
        let verifier = write_verifier(&rpc.call(gateway::rpc::NFS_PROGRAM, 7, &args));
        (data, verifier)
    })
    .unwrap();
    assert_eq!(data, b"abcd456789");
    assert_ne!(
        verifier1, verifier2,
        "a new incarnation has a new write verifier"
    );

    assert!(stop(node2).success());
    lab.teardown().unwrap();
}

/// The verifier of a successful WRITE reply.
fn write_verifier(results: &[u8]) -> [u8; 8] {
    let decoder = &mut Decoder::new(results);
    assert_eq!(decoder.u32().unwrap(), 0, "WRITE");
    if decoder.bool().unwrap() {
        decoder.fixed_opaque(24).unwrap();
    }
    if decoder.bool().unwrap() {
        decoder.fixed_opaque(84).unwrap();
    }
    assert_eq!(decoder.u32().unwrap(), 4, "count");
    decoder.u32().unwrap();
    decoder.fixed_array().unwrap()
}
