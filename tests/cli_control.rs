//! The ctdb-like commands end to end: the real `vipgate` binary against a fake node serving the
//! control protocol on a temporary socket (`--socket`), checking exact text, JSON, exit codes
//! (`nodestatus` carries the flag bits) and the errors for a dead or missing socket.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicU32, Ordering};

use tokio::sync::mpsc;
use vipd::control::{
    ClusterStatus, ControlSocket, IpReport, IpStatus, NodeFlags, NodeStatus, Request,
    RequestEnvelope, Response, ServerLimits, VipPhase,
};

/// A directory of its own under the system's temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let path = std::env::temp_dir().join(format!(
            "vipgate-cli-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn node(pnn: u32, name: &str, address: &str, flags: NodeFlags) -> NodeStatus {
    NodeStatus {
        pnn,
        name: name.into(),
        cluster_address: address.parse().unwrap(),
        flags,
        ban_left_secs: None,
        failing_probes: vec![],
        raft: vipd::control::RaftRole::Voter,
    }
}

fn cluster() -> ClusterStatus {
    let mut unhealthy = node(
        1,
        "node2",
        "198.51.100.12",
        NodeFlags {
            unhealthy: true,
            ..NodeFlags::default()
        },
    );
    unhealthy.failing_probes = vec!["volume: write probe timed out after 1s".into()];
    ClusterStatus {
        this_node: 0,
        nodes: vec![
            node(0, "node1", "198.51.100.11", NodeFlags::default()),
            unhealthy,
            node(
                2,
                "node3",
                "198.51.100.13",
                NodeFlags {
                    disconnected: true,
                    fenced: true,
                    ..NodeFlags::default()
                },
            ),
        ],
        leader: Some(0),
        term: 4,
        commit_index: 118,
        applied_index: 118,
    }
}

fn public_ips() -> IpReport {
    IpReport {
        this_node: 0,
        live_serial: 0,
        ips: vec![
            IpStatus {
                address: "192.0.2.101".parse().unwrap(),
                prefix_len: 24,
                owner: Some(0),
                owner_name: Some("node1".into()),
                interface: Some("eth1".into()),
                epoch: 3,
                state: VipPhase::Held,
                lease_left_ms: Some(1250),
                connections: 0,
                live: true,
            },
            IpStatus {
                address: "192.0.2.102".parse().unwrap(),
                prefix_len: 24,
                owner: None,
                owner_name: None,
                interface: None,
                epoch: 7,
                state: VipPhase::Unassigned,
                lease_left_ms: None,
                connections: 0,
                live: false,
            },
        ],
    }
}

/// The fake node's event loop: fixed answers, and `moveip` refused towards node3.
async fn answer(mut requests: mpsc::Receiver<RequestEnvelope>) {
    while let Some((request, reply)) = requests.recv().await {
        let response = match request {
            Request::Status => Response::Status(cluster()),
            Request::Ip { .. } => Response::Ips(public_ips()),
            Request::MoveIp { address, node } if node == "node3" => Response::error(format!(
                "node3 is DISCONNECTED|FENCED and cannot host {address}"
            )),
            Request::MoveIp { address, node } => Response::Done {
                message: format!("moved {address} to {node}"),
            },
            other => Response::error(format!("not in this test: {other:?}")),
        };
        let _ = reply.send(response);
    }
}

/// A fake node serving the control protocol on a socket in a temporary directory.
struct FakeNode {
    path: PathBuf,
    // Dropped first: stops the server (removing its socket), then the directory goes.
    _runtime: tokio::runtime::Runtime,
    _directory: TempDir,
}

impl FakeNode {
    fn start() -> FakeNode {
        let directory = TempDir::new();
        let path = directory.0.join("vipgate.sock");
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let socket = runtime
            .block_on(ControlSocket::bind(&path, ServerLimits::default()))
            .unwrap();
        let (sender, receiver) = mpsc::channel(8);
        runtime.spawn(answer(receiver));
        runtime.spawn(socket.run(sender, std::future::pending()));
        FakeNode {
            path,
            _runtime: runtime,
            _directory: directory,
        }
    }
}

fn vipgate(socket: &Path, args: &[&str]) -> Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_vipgate"))
        .arg("--socket")
        .arg(socket)
        .args(args)
        .env_remove("VIPGATE_SOCKET")
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

#[test]
fn status_prints_the_ctdb_layout() {
    let node = FakeNode::start();
    let output = vipgate(&node.path, &["status"]);
    assert_eq!(stderr(&output), "");
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        stdout(&output),
        "Number of nodes:3\n\
         pnn:0  node1  198.51.100.11  OK (THIS NODE)\n\
         pnn:1  node2  198.51.100.12  UNHEALTHY (volume: write probe timed out after 1s)\n\
         pnn:2  node3  198.51.100.13  DISCONNECTED|FENCED\n\
         Leader:0  Term:4  Commit index:118  Applied index:118\n"
    );
}

#[test]
fn status_json_is_the_cluster_status() {
    let node = FakeNode::start();
    let output = vipgate(&node.path, &["status", "--json"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    let parsed: ClusterStatus = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(parsed, cluster());
    let raw: serde_json::Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(raw["nodes"][2]["flags"]["fenced"], true);
    assert_eq!(raw["leader"], 0);
}

#[test]
fn ip_all_verbose_shows_interface_epoch_state_and_lease() {
    let node = FakeNode::start();
    let output = vipgate(&node.path, &["ip", "all", "-v"]);
    assert_eq!(output.status.code(), Some(0), "{}", stderr(&output));
    assert_eq!(
        stdout(&output),
        "Public IPs on ALL nodes\n\
         192.0.2.101/24 node[0]  node1 interface[eth1] epoch[3] held       lease[1.2s]\n\
         192.0.2.102/24 node[-1] -     interface[-]    epoch[7] unassigned lease[-]\n"
    );
    let plain = vipgate(&node.path, &["ip"]);
    assert_eq!(
        stdout(&plain),
        "Public IPs on node 0\n192.0.2.101 0\n192.0.2.102 -1\n"
    );
}

#[test]
fn nodestatus_exits_with_the_flag_bits() {
    let node = FakeNode::start();
    let this = vipgate(&node.path, &["nodestatus"]);
    assert_eq!(this.status.code(), Some(0));
    assert_eq!(
        stdout(&this),
        "pnn:0  node1  198.51.100.11  OK (THIS NODE)\n"
    );
    let gone = vipgate(&node.path, &["nodestatus", "node3"]);
    assert_eq!(gone.status.code(), Some(0x41), "DISCONNECTED|FENCED");
    let all = vipgate(&node.path, &["nodestatus", "all"]);
    assert_eq!(all.status.code(), Some(0x43));
    let unknown = vipgate(&node.path, &["nodestatus", "node9"]);
    assert_eq!(unknown.status.code(), Some(255));
    assert!(
        stderr(&unknown).starts_with("vipgate: unknown node \"node9\""),
        "{}",
        stderr(&unknown)
    );
}

#[test]
fn actions_print_the_node_message_or_its_refusal() {
    let node = FakeNode::start();
    let moved = vipgate(&node.path, &["moveip", "192.0.2.101", "node2"]);
    assert_eq!(moved.status.code(), Some(0));
    assert_eq!(stdout(&moved), "moved 192.0.2.101 to node2\n");
    let refused = vipgate(&node.path, &["moveip", "192.0.2.101", "node3"]);
    assert_eq!(refused.status.code(), Some(1));
    assert_eq!(stdout(&refused), "");
    assert_eq!(
        stderr(&refused),
        "vipgate: node3 is DISCONNECTED|FENCED and cannot host 192.0.2.101\n"
    );
    let listed = vipgate(&node.path, &["listnodes"]);
    assert_eq!(
        stdout(&listed),
        "198.51.100.11\n198.51.100.12\n198.51.100.13\n"
    );
    assert_eq!(stdout(&vipgate(&node.path, &["pnn"])), "0\n");
}

#[test]
fn a_dead_or_missing_socket_is_explained() {
    let directory = TempDir::new();
    let dead = directory.0.join("dead.sock");
    drop(std::os::unix::net::UnixListener::bind(&dead).unwrap());
    let output = vipgate(&dead, &["status"]);
    assert_eq!(output.status.code(), Some(1));
    assert_eq!(stdout(&output), "");
    assert_eq!(
        stderr(&output),
        format!(
            "vipgate: no vipgate node is running here: nothing is listening on {} (stale socket?)\n",
            dead.display()
        )
    );

    let missing = directory.0.join("missing.sock");
    let output = vipgate(&missing, &["nodestatus"]);
    assert_eq!(
        output.status.code(),
        Some(255),
        "nodestatus failures are 255"
    );
    assert_eq!(
        stderr(&output),
        format!(
            "vipgate: no vipgate node is running here: {} does not exist (start `vipgate node`, or pass --socket)\n",
            missing.display()
        )
    );
}
