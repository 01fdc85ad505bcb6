//! SMB for real: `vipgate node` runs Debian's smbd with the rendered configuration on every node
//! of a namespace lab, and Samba's own `smbclient` in a client namespace puts, gets and lists
//! files through a VIP with the demo user's password; a read-only share refuses writes and a
//! share for other users refuses the demo user (both added by editing the cluster file, which
//! reloads smbd without restarting it). Killing the node that holds the client's VIP
//! mid-session moves the VIP, resets the client's idle connection (tickle ACK on port 445), and
//! a new smbclient through the same address reads the file back intact; killing only smbd makes
//! its node UNHEALTHY, moves its VIPs, and the node is OK again once smbd was restarted.
//! Needs root and the `samba` and `smbclient` packages.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]
#![allow(
    clippy::zombie_processes,
    reason = "node daemons are stopped by the lab's teardown; a killed one is reaped when the test ends"
)]

mod common;

use common::describe;
use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::cluster::{logs, vipgate};
use nix::sys::signal::Signal;
use vipgate::lab::state::ProcessId;
use vipgate::lab::{Lab, cluster, state};

const VIPGATE: &str = env!("CARGO_BIN_EXE_vipgate");
/// Generous: the failover itself takes about a lease (1.5 s); CI machines are slow.
const FAILOVER_BUDGET: Duration = Duration::from_secs(10);

/// Whether Samba is here; outside CI its absence skips the test loudly.
fn samba_or_skip(test: &str) -> bool {
    let installed = cluster::samba_installed() && Path::new("/usr/bin/smbclient").exists();
    if !installed {
        assert!(
            std::env::var_os("CI").is_none(),
            "{test} needs samba and smbclient, and CI must have them (tests/run installs them)"
        );
        eprintln!("SKIPPED {test}: needs the samba and smbclient packages");
    }
    installed
}

fn vip() -> IpAddr {
    cluster::vip_addresses()[0]
}

fn nodes(lab: &Lab) -> Vec<String> {
    lab.plan()
        .hosts_of(vipgate::lab::Role::Node)
        .map(|host| host.name.clone())
        .collect()
}

/// Which node has each VIP configured now.
fn holders(lab: &Lab) -> BTreeMap<IpAddr, Vec<String>> {
    let mut holders: BTreeMap<IpAddr, Vec<String>> = cluster::vip_addresses()
        .into_iter()
        .map(|vip| (vip, Vec::new()))
        .collect();
    for node in nodes(lab) {
        for address in lab.addresses(&node).unwrap_or_default() {
            if let Some(list) = holders.get_mut(&address.address.addr()) {
                list.push(node.clone());
            }
        }
    }
    holders
}

fn held_by(lab: &Lab, node: &str) -> Vec<IpAddr> {
    holders(lab)
        .into_iter()
        .filter(|(_, holders)| holders.iter().any(|holder| holder == node))
        .map(|(vip, _)| vip)
        .collect()
}

fn owner_of(lab: &Lab, vip: IpAddr) -> Option<String> {
    match holders(lab).remove(&vip).unwrap_or_default().as_slice() {
        [only] => Some(only.clone()),
        _ => None,
    }
}

fn json(lab: &Lab, host: &str, args: &[&str]) -> Option<serde_json::Value> {
    let (code, text) = vipgate(lab, host, args);
    (code == 0)
        .then(|| serde_json::from_str(&text).ok())
        .flatten()
}

/// `node`'s entry in `vipgate status --json` as `from` sees it.
fn node_status(lab: &Lab, from: &str, node: &str) -> Option<serde_json::Value> {
    let status = json(lab, from, &["status", "--json"])?;
    status["nodes"]
        .as_array()?
        .iter()
        .find(|entry| entry["name"] == node)
        .cloned()
}

/// smbclient's local state (its gencache) stays inside the lab instead of the machine's
/// /var/cache/samba.
fn client_options(lab: &Lab) -> Vec<String> {
    let directory = state::lab_dir(lab.name()).join("smbclient");
    std::fs::create_dir_all(&directory).unwrap();
    ["cache directory", "lock directory", "state directory"]
        .iter()
        .map(|option| format!("--option={option}={}", directory.display()))
        .collect()
}

/// Runs one smbclient command line against `//SERVER/SHARE` as `user%password`.
fn smbclient(lab: &Lab, share: &str, credentials: &str, commands: &str) -> Output {
    lab.command("client1", "smbclient")
        .unwrap()
        .arg(format!("//{}/{share}", vip()))
        .args(["-U", credentials, "-c", commands])
        .args(client_options(lab))
        .output()
        .unwrap()
}

fn demo_credentials() -> String {
    format!("{}%{}", cluster::DEMO_SMB_USER, cluster::DEMO_SMB_PASSWORD)
}

/// Output of smbclient: it reports failed commands on stdout and still exits 0 in some cases,
/// so tests read both streams.
fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

fn local_file(lab: &Lab, name: &str) -> PathBuf {
    state::lab_dir(lab.name()).join(name)
}

/// Content that a truncated or shifted copy cannot match.
fn content(size: u32, seed: u32) -> Vec<u8> {
    (0..size)
        .map(|i| (i.wrapping_mul(2_654_435_761).wrapping_add(seed) >> 13) as u8)
        .collect()
}

/// Starts the lab's cluster and waits until the demo share answers through the first VIP.
fn start(prefix: &str, node_count: usize) -> Lab {
    let lab = common::lab(prefix, node_count, 1);
    lab.start_cluster(Path::new(VIPGATE)).unwrap();
    let mut last = None;
    let up = common::wait_until(Duration::from_secs(30), || {
        let output = smbclient(&lab, cluster::DEMO_SHARE, &demo_credentials(), "ls");
        let ok = output.status.success();
        last = Some(output);
        ok
    });
    assert!(
        up,
        "the demo share never answered: {}\n{}",
        describe(&last.unwrap()),
        logs(&lab)
    );
    lab
}

/// The pid smbd wrote for `node`, if that process is alive and is smbd.
fn smbd_pid(lab: &Lab, node: &str) -> Option<ProcessId> {
    let pid_file = cluster::data_dir(lab.name(), node).join("samba/run/smbd.pid");
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
    ProcessId::of(pid).filter(|id| id.is_alive() && comm.trim() == "smbd")
}

#[test]
fn smbclient_through_a_vip_with_read_only_and_restricted_shares() {
    let test = "smbclient_through_a_vip_with_read_only_and_restricted_shares";
    if !common::root_or_skip(test) || !samba_or_skip(test) {
        return;
    }
    let lab = start("s", 2);
    let credentials = demo_credentials();

    // put, ls, get through the VIP; the bytes land on the volume, owned by the account the
    // demo user acts as (nobody, 65534).
    let data = content(3_000_000, 1);
    let upload = local_file(&lab, "upload.bin");
    std::fs::write(&upload, &data).unwrap();
    let back = local_file(&lab, "back.bin");
    let output = smbclient(
        &lab,
        cluster::DEMO_SHARE,
        &credentials,
        &format!(
            "put {} upload.bin; ls; get upload.bin {}",
            upload.display(),
            back.display()
        ),
    );
    assert!(output.status.success(), "put/ls/get: {}", describe(&output));
    assert!(
        text(&output).contains("upload.bin"),
        "{}",
        describe(&output)
    );
    assert_eq!(std::fs::read(&back).unwrap(), data, "the file read back");
    let on_volume = cluster::volume_source(lab.name())
        .join(cluster::DEMO_EXPORT)
        .join("upload.bin");
    assert_eq!(
        std::fs::read(&on_volume).unwrap(),
        data,
        "the bytes on the volume"
    );
    {
        use std::os::unix::fs::MetadataExt as _;
        assert_eq!(std::fs::metadata(&on_volume).unwrap().uid(), 65534);
    }

    // smbd's own output is in the node's log.
    let log = std::fs::read_to_string(cluster::log_path(lab.name(), "node1")).unwrap();
    assert!(
        log.lines()
            .any(|line| line.contains("smbd") && line.contains("smbd version")),
        "no smbd output in node1's log:\n{log}"
    );

    // A wrong password is refused.
    let output = smbclient(&lab, cluster::DEMO_SHARE, "demo%wrong", "ls");
    assert!(
        !output.status.success(),
        "wrong password: {}",
        describe(&output)
    );
    assert!(
        text(&output).contains("NT_STATUS_LOGON_FAILURE"),
        "{}",
        describe(&output)
    );

    // Two more shares, added by editing the cluster file: every node re-renders smb.conf and
    // reloads its smbd (SIGHUP; the same smbd keeps running).
    let node = owner_of(&lab, vip()).unwrap();
    let pid_before = smbd_pid(&lab, &node).unwrap();
    let config_path = cluster::config_path(lab.name());
    let mut config = std::fs::read_to_string(&config_path).unwrap();
    config.push_str(&format!(
        "    - name: readonly\n      path: {dir}\n      read_only: true\n\
         \x20   - name: alice-only\n      path: {dir}\n      read_only: false\n      valid_users: [alice]\n",
        dir = cluster::DEMO_EXPORT
    ));
    let temporary = config_path.with_extension("new");
    std::fs::write(&temporary, &config).unwrap();
    std::fs::rename(&temporary, &config_path).unwrap();
    let mut last = None;
    let reloaded = common::wait_until(Duration::from_secs(15), || {
        let output = smbclient(&lab, "readonly", &credentials, "ls");
        let ok = output.status.success();
        last = Some(output);
        ok
    });
    assert!(
        reloaded,
        "the new share never appeared: {}\n{}",
        describe(&last.unwrap()),
        logs(&lab)
    );
    assert_eq!(
        smbd_pid(&lab, &node),
        Some(pid_before),
        "smbd was restarted instead of reloaded"
    );

    // The read-only share lists the file but refuses a write.
    let output = smbclient(
        &lab,
        "readonly",
        &credentials,
        &format!("ls; put {} refused.bin", upload.display()),
    );
    let said = text(&output);
    assert!(said.contains("upload.bin"), "{}", describe(&output));
    assert!(
        said.contains("NT_STATUS_ACCESS_DENIED"),
        "{}",
        describe(&output)
    );
    assert!(
        !cluster::volume_source(lab.name())
            .join(cluster::DEMO_EXPORT)
            .join("refused.bin")
            .exists(),
        "the read-only share wrote a file"
    );

    // A share for alice alone refuses the demo user.
    let output = smbclient(&lab, "alice-only", &credentials, "ls");
    assert!(
        !output.status.success(),
        "alice-only: {}",
        describe(&output)
    );
    assert!(
        text(&output).contains("NT_STATUS_ACCESS_DENIED"),
        "{}",
        describe(&output)
    );

    // Through the DNS name, as a Windows user would: client1 resolves `smb.<zone>` with the
    // nodes' DNS servers, which list only the live VIPs.
    let unc = format!("//smb.{}/{}", cluster::DNS_ZONE, cluster::DEMO_SHARE);
    let output = lab
        .command("client1", "smbclient")
        .unwrap()
        .arg(&unc)
        .args(["-U", &credentials, "-c", "ls"])
        .args(client_options(&lab))
        .output()
        .unwrap();
    assert!(output.status.success(), "{unc}: {}", describe(&output));
    assert!(
        text(&output).contains("upload.bin"),
        "{}",
        describe(&output)
    );

    // A node stopped with SIGTERM stops its smbd (SIGTERM, which smbd passes to its children).
    let other = nodes(&lab)
        .into_iter()
        .find(|other| *other != node)
        .unwrap();
    let other_smbd = smbd_pid(&lab, &other).unwrap();
    let daemon = lab.node_daemon(&other).unwrap().unwrap();
    daemon.signal(Signal::SIGTERM);
    assert!(
        common::wait_until(Duration::from_secs(20), || !daemon.is_alive()
            && !other_smbd.is_alive()),
        "{other} or its smbd did not stop\n{}",
        logs(&lab)
    );
    let log = std::fs::read_to_string(cluster::log_path(lab.name(), &other)).unwrap();
    assert!(log.contains("smbd stopped"), "{log}");
}

/// `vipgate samba-config` renders the example cluster file into a configuration Samba's own
/// `testparm` loads without an unknown or ignored parameter. Needs only the samba package.
#[test]
fn samba_config_renders_what_testparm_accepts() {
    if !Path::new("/usr/bin/testparm").exists() {
        assert!(
            std::env::var_os("CI").is_none(),
            "testparm is missing; tests/run installs samba"
        );
        eprintln!("SKIPPED samba_config_renders_what_testparm_accepts: needs testparm (samba)");
        return;
    }
    let directory = std::env::temp_dir().join(format!("vipgate-smbconf-{}", std::process::id()));
    std::fs::create_dir_all(&directory).unwrap();
    let rendered = directory.join("smb.conf");
    let output = std::process::Command::new(VIPGATE)
        .args(["samba-config", "--config"])
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/examples/cluster.yaml"))
        .arg("--data-dir")
        .arg(&directory)
        .arg("--output")
        .arg(&rendered)
        .output()
        .unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    let output = std::process::Command::new("testparm")
        .arg("-s")
        .arg(&rendered)
        .output()
        .unwrap();
    let said = text(&output);
    std::fs::remove_dir_all(&directory).unwrap();
    assert!(output.status.success(), "{}", describe(&output));
    assert!(said.contains("Loaded services file OK"), "{said}");
    assert!(
        !said.contains("nknown parameter") && !said.contains("Ignoring"),
        "{said}"
    );
    assert!(said.contains("[share]"), "{said}");
}

/// An interactive smbclient session: commands on its stdin, its output collected by a thread.
struct Session {
    child: Child,
    output: Arc<Mutex<String>>,
}

impl Session {
    fn open(lab: &Lab, share: &str) -> Session {
        let mut child = lab
            .command("client1", "smbclient")
            .unwrap()
            .arg(format!("//{}/{share}", vip()))
            .args(["-U", &demo_credentials()])
            .args(client_options(lab))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let output = Arc::new(Mutex::new(String::new()));
        // smbclient reports transfers on stderr and listings on stdout.
        let stdout: Box<dyn std::io::Read + Send> = Box::new(child.stdout.take().unwrap());
        let stderr: Box<dyn std::io::Read + Send> = Box::new(child.stderr.take().unwrap());
        for mut stream in [stdout, stderr] {
            let sink = Arc::clone(&output);
            std::thread::spawn(move || {
                let mut buffer = [0u8; 4096];
                while let Ok(length) = stream.read(&mut buffer) {
                    if length == 0 {
                        break;
                    }
                    sink.lock()
                        .unwrap()
                        .push_str(&String::from_utf8_lossy(&buffer[..length]));
                }
            });
        }
        Session { child, output }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.child.stdin.as_mut().unwrap();
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    }

    fn said(&self, text: &str) -> bool {
        self.output.lock().unwrap().contains(text)
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The client's established TCP connections to the VIP's port 445.
fn client_connections(lab: &Lab) -> usize {
    let output = lab
        .command("client1", "ss")
        .unwrap()
        .args([
            "-Htn",
            "state",
            "established",
            "dst",
            &format!("{}:445", vip()),
        ])
        .output()
        .unwrap();
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter(|line| !line.trim().is_empty())
        .count()
}

/// The client connections the cluster knows for the VIP (replicated for tickles).
fn known_connections(lab: &Lab, from: &str) -> u64 {
    json(lab, from, &["ip", "all", "--json"])
        .and_then(|report| {
            report["ips"].as_array().and_then(|ips| {
                ips.iter()
                    .find(|ip| ip["address"] == vip().to_string())
                    .and_then(|ip| ip["connections"].as_u64())
            })
        })
        .unwrap_or(0)
}

#[test]
fn smb_clients_survive_a_killed_node_and_a_killed_smbd() {
    let test = "smb_clients_survive_a_killed_node_and_a_killed_smbd";
    if !common::root_or_skip(test) || !samba_or_skip(test) {
        return;
    }
    let lab = start("s", 3);
    // Settled: every VIP hosted once and every node holding one (4 VIPs on 3 nodes).
    assert!(
        common::wait_until(Duration::from_secs(30), || {
            holders(&lab).values().all(|nodes| nodes.len() == 1)
                && nodes(&lab)
                    .iter()
                    .all(|node| !held_by(&lab, node).is_empty())
        }),
        "the cluster never hosted every VIP balanced: {:?}\n{}",
        holders(&lab),
        logs(&lab)
    );
    let victim = owner_of(&lab, vip()).unwrap();
    let survivor = nodes(&lab)
        .into_iter()
        .find(|node| *node != victim)
        .unwrap();
    let victim_smbd = smbd_pid(&lab, &victim).unwrap();

    // A session that uploads a file and then sits idle.
    let data = content(5_000_000, 2);
    let upload = local_file(&lab, "session.bin");
    std::fs::write(&upload, &data).unwrap();
    let mut session = Session::open(&lab, cluster::DEMO_SHARE);
    session.send(&format!("put {} session.bin", upload.display()));
    assert!(
        common::wait_until(Duration::from_secs(20), || session.said("putting file")),
        "the session never uploaded: {:?}",
        session.output.lock().unwrap()
    );
    assert!(
        common::wait_until(Duration::from_secs(5), || known_connections(
            &lab, &survivor
        ) > 0),
        "the session's connection was never replicated"
    );
    assert_eq!(client_connections(&lab), 1);

    // Kill the node holding the client's VIP: its smbd goes with it (parent-death signal), the
    // VIP moves, the idle session is reset by a tickle ACK, and a new smbclient through the same
    // address reads the file back intact.
    let killed = Instant::now();
    lab.node_daemon(&victim)
        .unwrap()
        .unwrap()
        .signal(Signal::SIGKILL);
    assert!(
        common::wait_until(FAILOVER_BUDGET, || owner_of(&lab, vip())
            .is_some_and(|owner| owner != victim)),
        "the VIP did not move off {victim}: {:?}\n{}",
        holders(&lab),
        logs(&lab)
    );
    eprintln!(
        "SIGKILL of {victim}: VIP moved after {:?}",
        killed.elapsed()
    );
    assert!(
        common::wait_until(Duration::from_secs(5), || !victim_smbd.is_alive()),
        "the smbd of the killed node is still running"
    );
    assert!(
        common::wait_until(Duration::from_secs(5), || client_connections(&lab) == 0),
        "the idle session's connection was not reset"
    );
    eprintln!("idle SMB session reset after {:?}", killed.elapsed());
    let back = local_file(&lab, "session-back.bin");
    let mut last = None;
    let served = common::wait_until(FAILOVER_BUDGET, || {
        let output = smbclient(
            &lab,
            cluster::DEMO_SHARE,
            &demo_credentials(),
            &format!("get session.bin {}", back.display()),
        );
        let ok = output.status.success() && !text(&output).contains("NT_STATUS");
        last = Some(output);
        ok
    });
    assert!(
        served,
        "no smbclient got the file after the kill: {}\n{}",
        describe(&last.unwrap()),
        logs(&lab)
    );
    eprintln!("new smbclient served after {:?}", killed.elapsed());
    assert_eq!(std::fs::read(&back).unwrap(), data, "the file read back");
    // The reset came from the new owner's tickle ACKs (logged after the last of its rounds).
    let new_owner = owner_of(&lab, vip()).unwrap();
    let tickled = format!("vip={}", vip());
    assert!(
        common::wait_until(Duration::from_secs(5), || {
            std::fs::read_to_string(cluster::log_path(lab.name(), &new_owner))
                .unwrap_or_default()
                .lines()
                .any(|line| line.contains("tickled client connections") && line.contains(&tickled))
        }),
        "{new_owner} logged no tickle for {}\n{}",
        vip(),
        logs(&lab)
    );
    drop(session);

    // Kill smbd alone on the node now holding the VIP: it turns UNHEALTHY, gives up its VIPs,
    // its smbd is restarted, and it is OK again.
    let node = owner_of(&lab, vip()).unwrap();
    let observer = nodes(&lab)
        .into_iter()
        .find(|other| *other != node && *other != victim)
        .unwrap();
    let old_smbd = smbd_pid(&lab, &node).unwrap();
    old_smbd.signal(Signal::SIGKILL);
    let (mut unhealthy, mut gave_up, mut restarted) = (false, false, None);
    let recovered = common::wait_until(Duration::from_secs(30), || {
        let status = node_status(&lab, &observer, &node);
        let flagged = status
            .as_ref()
            .is_some_and(|status| status["flags"]["unhealthy"] == true);
        unhealthy |= flagged
            && status.as_ref().is_some_and(|status| {
                status["failing_probes"]
                    .as_array()
                    .is_some_and(|probes| probes.iter().any(|p| p.to_string().contains("smbd")))
            });
        gave_up |= unhealthy && held_by(&lab, &node).is_empty();
        restarted = restarted.or(smbd_pid(&lab, &node).filter(|pid| *pid != old_smbd));
        unhealthy
            && gave_up
            && restarted.is_some()
            && status.is_some_and(|status| status["flags"]["unhealthy"] == false)
    });
    assert!(
        recovered,
        "after smbd was killed on {node}: unhealthy {unhealthy}, gave up its VIPs {gave_up}, \
         restarted {restarted:?}, now {:?}\n{}",
        node_status(&lab, &observer, &node),
        logs(&lab)
    );
    let output = smbclient(
        &lab,
        cluster::DEMO_SHARE,
        &demo_credentials(),
        &format!("get session.bin {}", back.display()),
    );
    assert!(
        output.status.success(),
        "after recovery: {}",
        describe(&output)
    );
}

/// Runs `vipgate ARGS` on `host` with Samba's programs hidden: tmpfs over the sbin directories
/// and /dev/null over smbpasswd and pdbedit (in the host's private mount namespace, so nothing
/// outside sees it), and a PATH without sbin.
/// Bounded by `timeout`, in case the command does not fail as it should.
fn without_samba(lab: &Lab, host: &str, args: &[&str]) -> Output {
    let script = r#"for dir in /usr/sbin /usr/local/sbin /sbin; do
  if [ -d "$dir" ] && [ ! -L "$dir" ]; then mount -t tmpfs vipgate-test "$dir" || exit 99; fi
done
for program in /usr/bin/smbpasswd /usr/bin/pdbedit; do
  if [ -e "$program" ]; then mount --bind /dev/null "$program" || exit 99; fi
done
PATH=/usr/bin:/bin exec timeout 30 "$@""#;
    lab.command(host, "sh")
        .unwrap()
        .args(["-c", script, "sh", VIPGATE])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

#[test]
fn without_samba_installed_a_managing_node_and_smb_user_say_so() {
    let test = "without_samba_installed_a_managing_node_and_smb_user_say_so";
    if !common::root_or_skip(test) || !samba_or_skip(test) {
        return;
    }
    // A one-node cluster whose file has `smb.manage: true`; its node is stopped again, so the
    // same node can be started once more with Samba hidden.
    let lab = common::lab("sn", 1, 0);
    lab.start_cluster(Path::new(VIPGATE)).unwrap();
    assert!(common::wait_until(Duration::from_secs(20), || {
        smbd_pid(&lab, "node1").is_some()
    }));
    lab.node_daemon("node1")
        .unwrap()
        .unwrap()
        .signal(Signal::SIGTERM);
    assert!(
        common::wait_until(Duration::from_secs(30), || lab
            .node_daemon("node1")
            .unwrap()
            .is_none()),
        "node1 did not stop\n{}",
        logs(&lab)
    );

    let node = without_samba(&lab, "node1", &["node", "--name", "node1"]);
    let stderr = String::from_utf8_lossy(&node.stderr);
    assert_eq!(node.status.code(), Some(1), "{}", describe(&node));
    assert!(
        stderr.contains("smb.manage is true, but smbd cannot be run")
            && stderr.contains("samba is not installed: no smbd in /usr/sbin")
            && stderr.contains("apt-get install samba"),
        "{stderr}"
    );

    let users = without_samba(&lab, "node1", &["smb-user", "delete", "demo"]);
    let stderr = String::from_utf8_lossy(&users.stderr);
    assert_eq!(users.status.code(), Some(1), "{}", describe(&users));
    assert!(
        stderr.contains("samba is not installed: no smbpasswd"),
        "{stderr}"
    );
}
