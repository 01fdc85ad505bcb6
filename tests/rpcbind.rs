//! `vipgate nfs` on a node whose port 111 belongs to Debian's rpcbind: the gateway registers
//! MOUNT and NFS with it (replacing the entries a crashed earlier gateway left), a client finds
//! them through the real rpcbind (`rpcinfo -p`, libnfs's `nfs-ls` with no port options), the
//! gateway registers again after rpcbind restarts empty, and the entries are gone after SIGTERM.
//!
//! Debian's rpcbind always uses `/run/rpcbind.sock`, `/run/rpcbind.lock` and `/run/rpcbind/`,
//! and lab namespaces share the host's filesystem. So the node's rpcbind and the gateways run
//! inside one `sh` whose mount namespace (private, from `Lab::command`) has a tmpfs of its own
//! on `/run`, with only `/run/vipgate` (the labs' state) bound back; the script refuses to start
//! rpcbind unless a marker file shows `/run` is that tmpfs, and the test checks that the host's
//! `/run/rpcbind.sock` is exactly as it was before. Needs root and the `rpcbind` package.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use common::describe;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Output};
use std::time::Duration;

use ipnet::IpNet;
use vipgate::lab::{Lab, state};

const VIP: &str = "192.0.2.201/24";
const VIP_ADDRESS: &str = "192.0.2.201";
const LEASE: Duration = Duration::from_secs(300);
const HOST_FILES: [&str; 3] = ["/run/rpcbind.sock", "/run/rpcbind.lock", "/run/rpcbind"];

/// Runs on the node: a private `/run`, rpcbind restarted whenever it dies (its pid in
/// `rpcbind.pid`), a first gateway on NFS port 2050 killed with SIGKILL once registered (so its
/// entries stay behind, as after a crash), then the gateway under test on 2049.
const NODE_SCRIPT: &str = r#"
set -eu
lab_dir=$1 vipgate=$2 config=$3
PATH=$PATH:/usr/sbin:/sbin
export RUST_LOG=info
mount --make-rprivate /
mount --bind /run /mnt
mount -t tmpfs -o mode=0755 vipgate-lab-run /run
touch /run/.vipgate-lab-private-run
mkdir /run/vipgate /run/rpcbind
mount --bind /mnt/vipgate /run/vipgate
umount /mnt
chown _rpc /run/rpcbind 2>/dev/null || true
private() { [ -e /run/.vipgate-lab-private-run ] && [ -d "$lab_dir" ]; }
private || { echo "rpcbind lab: /run is not private" >&2; exit 1; }
(
  while private; do
    rpcbind -f -w &
    echo $! > "$lab_dir/rpcbind.pid.new"
    mv "$lab_dir/rpcbind.pid.new" "$lab_dir/rpcbind.pid"
    wait $! || true
  done
) &
tries=0
until rpcinfo -p 127.0.0.1 >/dev/null 2>&1; do
  tries=$((tries + 1)); [ $tries -lt 200 ] || exit 1; sleep 0.05
done
"$vipgate" nfs --config "$config" --name node1 --nfs-port 2050 2>"$lab_dir/crashed.log" &
crashed=$!
tries=0
until rpcinfo -p 127.0.0.1 | grep -q ' 2050 '; do
  tries=$((tries + 1)); [ $tries -lt 400 ] || exit 1; sleep 0.05
done
kill -KILL $crashed
wait $crashed || true
exec "$vipgate" nfs --config "$config" --name node1 2>"$lab_dir/vipgate.log"
"#;

fn write_config(lab: &Lab) -> PathBuf {
    let volume = state::lab_dir(lab.name()).join("volume");
    std::fs::create_dir_all(volume.join("demo")).unwrap();
    std::fs::write(volume.join("demo/hello.txt"), b"hello").unwrap();
    let config = format!(
        r#"cluster:
  name: rblab
  secret: a lab secret that is long enough
  data_dir: /var/lib/vipgate-rpcbind-test
nodes:
  - name: node1
    cluster_address: 198.51.100.11
    public_interfaces: [pub0]
public_addresses:
  - address: {VIP}
volume:
  path: {volume}
  handles: kernel
nfs:
  exports:
    - name: demo
      path: demo
      clients: [192.0.2.0/24]
"#,
        volume = volume.display()
    );
    let path = state::lab_dir(lab.name()).join("rpcbind.yaml");
    std::fs::write(&path, config).unwrap();
    path
}

/// The host's rpcbind files: which exist, and as which inode.
fn host_files() -> Vec<Option<(u64, u64)>> {
    HOST_FILES
        .iter()
        .map(|path| {
            std::fs::symlink_metadata(path)
                .ok()
                .map(|metadata| (metadata.dev(), metadata.ino()))
        })
        .collect()
}

/// `program` from `PATH`, or from the sbin directories a non-login root shell may lack.
fn program_path(program: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
        .map(|directory| directory.join(program))
        .find(|path| path.exists())
}

fn client(lab: &Lab, program: &str, args: &[&str]) -> Output {
    let program = program_path(program).unwrap_or_else(|| PathBuf::from(program));
    lab.command("client1", program)
        .unwrap()
        .args(args)
        .output()
        .unwrap()
}

/// The (program, version, protocol, port) lines of `rpcinfo -p VIP` from the client, or `None`
/// when rpcinfo fails.
fn portmap_table(lab: &Lab) -> Option<Vec<(u32, u32, String, u16)>> {
    let output = client(lab, "rpcinfo", &["-p", VIP_ADDRESS]);
    if !output.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&output.stdout);
    Some(
        text.lines()
            .filter_map(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                Some((
                    fields.first()?.parse().ok()?,
                    fields.get(1)?.parse().ok()?,
                    (*fields.get(2)?).to_owned(),
                    fields.get(3)?.parse().ok()?,
                ))
            })
            .collect(),
    )
}

/// MOUNT and NFS as `rpcinfo -p` lists them: (program, version, protocol, port).
fn nfs_entries(table: &[(u32, u32, String, u16)]) -> Vec<(u32, u32, String, u16)> {
    let mut entries: Vec<_> = table
        .iter()
        .filter(|(program, ..)| matches!(program, 100_003 | 100_005))
        .cloned()
        .collect();
    entries.sort();
    entries
}

fn wait_for_entries(lab: &Lab, expected: &[(u32, u32, String, u16)], timeout: Duration) {
    let mut last = None;
    let reached = common::wait_until(timeout, || {
        last = portmap_table(lab).map(|table| nfs_entries(&table));
        last.as_deref() == Some(expected)
    });
    assert!(
        reached,
        "rpcinfo -p never listed {expected:?}; last: {last:?}"
    );
}

fn read_pid(path: &Path) -> Option<i32> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

fn signal(pid: i32, signal: nix::sys::signal::Signal) {
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal).unwrap();
}

fn stop(mut child: Child) -> std::process::ExitStatus {
    signal(
        i32::try_from(child.id()).unwrap(),
        nix::sys::signal::Signal::SIGTERM,
    );
    child.wait().unwrap()
}

#[test]
fn registers_with_a_system_rpcbind() {
    if !common::root_or_skip("registers_with_a_system_rpcbind") {
        return;
    }
    for program in ["rpcbind", "rpcinfo"] {
        assert!(
            program_path(program).is_some(),
            "{program} is missing: install Debian's rpcbind (tests/run does)"
        );
    }
    let host_before = host_files();
    let lab = common::lab("rb", 1, 1);
    let lab_dir = state::lab_dir(lab.name());
    let config = write_config(&lab);
    let vip: IpNet = VIP.parse().unwrap();
    common::hold(&lab, "node1", &[vip], &[vip], LEASE).unwrap();

    let mut command = lab.command("node1", "sh").unwrap();
    command
        .args(["-c", NODE_SCRIPT, "sh"])
        .arg(&lab_dir)
        .arg(env!("CARGO_BIN_EXE_vipgate"))
        .arg(&config);
    let node = lab.spawn("node1", command).unwrap();

    // The client finds MOUNT and NFS at 2049 through the node's rpcbind, and nothing at the
    // crashed gateway's 2050: its entries were replaced.
    let at = |program, version, protocol: &str| (program, version, protocol.to_owned(), 2049);
    let expected = vec![
        at(100_003, 3, "tcp"),
        at(100_005, 3, "tcp"),
        at(100_005, 3, "udp"),
    ];
    wait_for_entries(&lab, &expected, Duration::from_secs(60));
    let log = std::fs::read_to_string(lab_dir.join("vipgate.log")).unwrap();
    assert!(
        log.contains("held by a system rpcbind"),
        "the gateway did not say it registered: {log}"
    );
    assert!(
        log.contains("removing program 100003 version 3 on tcp at 0.0.0.0.8.2"),
        "the crashed gateway's entry was not reported as replaced: {log}"
    );
    // rpcbind itself, not the gateway, answers on 111: it lists its own versions 3 and 4.
    let table = portmap_table(&lab).unwrap();
    assert!(
        table.contains(&(100_000, 4, "tcp".to_owned(), 111)),
        "{table:?}"
    );

    // libnfs asks the real rpcbind for MOUNT and NFS.
    let output = client(&lab, "nfs-ls", &[&format!("nfs://{VIP_ADDRESS}/demo")]);
    assert!(output.status.success(), "nfs-ls: {}", describe(&output));
    assert!(
        String::from_utf8_lossy(&output.stdout).contains("hello.txt"),
        "nfs-ls: {}",
        describe(&output)
    );

    // rpcbind dies and comes back empty: the gateway registers again within its check period.
    let pid_file = lab_dir.join("rpcbind.pid");
    let first = read_pid(&pid_file).unwrap();
    signal(first, nix::sys::signal::Signal::SIGKILL);
    let restarted = common::wait_until(Duration::from_secs(10), || {
        read_pid(&pid_file).is_some_and(|pid| pid != first)
    });
    assert!(restarted, "rpcbind was not restarted");
    wait_for_entries(&lab, &expected, Duration::from_secs(30));
    let log = std::fs::read_to_string(lab_dir.join("vipgate.log")).unwrap();
    assert!(log.contains("registered again"), "{log}");

    // SIGTERM: the gateway removes its entries; rpcbind keeps running without them.
    assert!(stop(node).success(), "SIGTERM ends the gateway cleanly");
    wait_for_entries(&lab, &[], Duration::from_secs(10));
    assert!(portmap_table(&lab).is_some(), "rpcbind stopped too");

    lab.teardown().unwrap();
    assert_eq!(
        host_files(),
        host_before,
        "the host's {HOST_FILES:?} changed"
    );
}
