//! A vipgate cluster inside a lab: the generated cluster file (pure), and `vipgate node` started
//! on every node host. When Samba is installed the file also gets an `smb` section (one share,
//! smbd managed by every node) and every node gets the demo SMB user.
//!
//! The lab's "replicated volume" is one directory, `<lab>/volume`, that every node sees: each
//! node process gets it bind-mounted at `<lab>/mnt` in its private mount namespace (see
//! [`super::Lab::command`]), so the path is a real mount point on every node, as a GlusterFS or
//! CephFS mount would be, and the health probe's mount check means something.

use std::fmt::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use super::plan::PUBLIC_INTERFACE;
use super::{Network, Plan, Role, state};

/// The lab's VIPs: three IPv4 and one IPv6, on the public network (nodes are .11…, clients
/// .101…, so VIPs live at .201…).
pub const VIPS: [&str; 4] = [
    "192.0.2.201/24",
    "192.0.2.202/24",
    "192.0.2.203/24",
    "2001:db8:0:1::201/64",
];

/// The NFS export of the lab: the `demo` directory of the volume, read-write for the public
/// network, root squashed to 65534 (the directory belongs to 65534, so a client's root may
/// write there as nobody).
pub const DEMO_EXPORT: &str = "demo";

/// The uid and gid that own the demo export's directory: the export's anonymous user.
pub const DEMO_EXPORT_OWNER: u32 = 65534;

/// The SMB share of the lab (when Samba is installed): the same `demo` directory as the NFS
/// export, read-write.
pub const DEMO_SHARE: &str = "demo";

/// The lab's SMB user and password. The user acts as the unix account `nobody` (65534, the
/// owner of the demo directory, as NFS clients' squashed root does): the nodes share the
/// machine's `/etc/passwd`, and a lab must not add accounts to it.
pub const DEMO_SMB_USER: &str = "demo";
pub const DEMO_SMB_PASSWORD: &str = "vipgate-demo";
pub const DEMO_SMB_UNIX_USER: &str = "nobody";

/// Whether Samba's smbd is installed here, so that labs serve SMB.
pub fn samba_installed() -> bool {
    gateway::smb::supervise::find_program("smbd").is_ok()
}

/// The `smb` section `Lab::start_cluster` appends to the cluster file when Samba is installed:
/// smbd managed by every node, one read-write share.
pub fn smb_section() -> String {
    format!(
        "smb:\n  manage: true\n  shares:\n    - name: {DEMO_SHARE}\n      path: {DEMO_EXPORT}\n      \
         read_only: false\n"
    )
}

/// Sets the demo SMB user on every node of `lab` (before their daemons start), with
/// `vipgate smb-user add` as an operator would, inside each node's environment.
pub fn add_demo_smb_user(lab: &super::Lab, vipgate: &Path) -> Result<(), super::LabError> {
    use std::io::Write as _;
    let nodes: Vec<String> = lab
        .plan()
        .hosts_of(Role::Node)
        .map(|host| host.name.clone())
        .collect();
    for node in nodes {
        let mut command = lab.command(&node, vipgate)?;
        command
            .args([
                "smb-user",
                "add",
                DEMO_SMB_USER,
                "--unix-user",
                DEMO_SMB_UNIX_USER,
            ])
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped());
        let failed = |message: String| super::LabError::Io {
            context: format!("cannot add the SMB user {DEMO_SMB_USER} on {node}"),
            source: std::io::Error::other(message),
        };
        let mut child = command.spawn().map_err(|error| failed(error.to_string()))?;
        if let Some(mut stdin) = child.stdin.take() {
            let _ = writeln!(stdin, "{DEMO_SMB_PASSWORD}");
        }
        let output = child
            .wait_with_output()
            .map_err(|error| failed(error.to_string()))?;
        if !output.status.success() {
            return Err(failed(
                String::from_utf8_lossy(&output.stderr).trim().to_owned(),
            ));
        }
    }
    Ok(())
}

/// The zone the lab's nodes answer for, and its service names (each lists every live VIP).
pub const DNS_ZONE: &str = "vipgate.test";
pub const DNS_NAMES: [&str; 2] = ["nfs", "smb"];

/// One thing a person can try against a service of the lab, shown by `vipgate demo` and
/// `vipgate demo list` (and its `--json`).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ServiceHint {
    /// `nfs`, `dns`, `smb`.
    pub service: &'static str,
    /// Where a client reaches it, as the client would name it (a URL, a name, a UNC path).
    pub address: String,
    /// A command that uses it.
    pub command: String,
}

/// What to try against the lab's services, from its first client.
pub fn service_hints(plan: &Plan) -> Vec<ServiceHint> {
    let client = plan
        .hosts_of(Role::Client)
        .next()
        .map_or("client1", |host| host.name.as_str());
    let vip = vip_addresses()[0];
    let nfs = format!("nfs://{vip}/{DEMO_EXPORT}");
    let mut hints = vec![ServiceHint {
        service: "nfs",
        command: format!("vipgate demo exec {client} -- nfs-ls {nfs}"),
        address: nfs,
    }];
    if samba_installed() {
        hints.push(smb_hint(client, &format!("smb.{DNS_ZONE}")));
    }
    hints.extend(dns_hints(plan, client));
    hints
}

/// The SMB hint: list the demo share through the DNS name with the demo user's credentials.
fn smb_hint(client: &str, server: &str) -> ServiceHint {
    let unc = format!("//{server}/{DEMO_SHARE}");
    ServiceHint {
        service: "smb",
        command: format!(
            "vipgate demo exec {client} -- smbclient {unc} -U {DEMO_SMB_USER}%{DEMO_SMB_PASSWORD} -c ls"
        ),
        address: unc,
    }
}

/// The resolver file of the lab's clients once a cluster runs: every node's DNS server, tried
/// in turn with a short timeout (a dead node costs a client one second, not a hang).
pub fn client_resolv_conf(plan: &Plan) -> String {
    let mut text = String::new();
    // glibc reads at most three name servers.
    for node in plan.hosts_of(Role::Node).take(3) {
        let _ = writeln!(text, "nameserver {}", node.public_v4());
    }
    let _ = writeln!(
        text,
        "search {DNS_ZONE}\noptions timeout:1 attempts:2 rotate"
    );
    text
}

/// The DNS names of the lab, asked of the first node (any node answers the same).
fn dns_hints(plan: &Plan, client: &str) -> Vec<ServiceHint> {
    let Some(node) = plan.hosts_of(Role::Node).next() else {
        return Vec::new();
    };
    let server = node.public_v4();
    DNS_NAMES
        .iter()
        .map(|name| ServiceHint {
            service: "dns",
            address: format!("{name}.{DNS_ZONE} @{server}"),
            command: format!("vipgate demo exec {client} -- dig @{server} {name}.{DNS_ZONE}"),
        })
        .collect()
}

/// The cluster file of a lab.
pub fn config_path(lab: &str) -> PathBuf {
    state::lab_dir(lab).join("cluster.yaml")
}

/// The shared directory standing in for the replicated volume.
pub fn volume_source(lab: &str) -> PathBuf {
    state::lab_dir(lab).join("volume")
}

/// A node's own mount of the volume, for labs where each node mounts a real replicated volume
/// itself (the GlusterFS test mounts one there on the machine): when this directory exists,
/// [`super::Lab::command`] binds it at [`volume_mount`] for that node instead of the shared
/// [`volume_source`].
pub fn node_volume_source(lab: &str, host: &str) -> PathBuf {
    state::host_dir(lab, host).join("volume")
}

/// Where every node sees the volume mounted.
pub fn volume_mount(lab: &str) -> PathBuf {
    state::lab_dir(lab).join("mnt")
}

/// A node's control socket.
pub fn socket_path(lab: &str, host: &str) -> PathBuf {
    state::host_dir(lab, host).join("vipgate.sock")
}

/// A node's Raft data directory.
pub fn data_dir(lab: &str, host: &str) -> PathBuf {
    state::host_dir(lab, host).join("data")
}

/// A node's daemon log.
pub fn log_path(lab: &str, host: &str) -> PathBuf {
    state::host_dir(lab, host).join("node.log")
}

/// The cluster file for `plan`: every node, the four VIPs, the volume, the demo export, the DNS
/// zone, default timings.
pub fn cluster_file(plan: &Plan, secret: &str, volume: &Path) -> String {
    let mut text = format!(
        "# Generated by vipgate for lab {name}.\n\
         cluster:\n  name: {name}\n  secret: {secret}\n  data_dir: /var/lib/vipgate\n\
         nodes:\n",
        name = plan.name
    );
    for host in plan.hosts_of(Role::Node) {
        let cluster = host
            .address(Network::Cluster, false)
            .map_or_else(String::new, |address| address.to_string());
        let _ = writeln!(
            text,
            "  - {{name: {}, cluster_address: {cluster}, public_interfaces: [{PUBLIC_INTERFACE}], public_address: {}}}",
            host.name,
            host.public_v4(),
        );
    }
    text.push_str("public_addresses:\n");
    for vip in VIPS {
        let _ = writeln!(text, "  - address: \"{vip}\"");
    }
    let _ = writeln!(text, "volume:\n  path: {}", volume.display());
    let _ = writeln!(
        text,
        "nfs:\n  exports:\n    - name: {DEMO_EXPORT}\n      path: {DEMO_EXPORT}\n      access: rw\n      \
         squash: root\n      anon_uid: {DEMO_EXPORT_OWNER}\n      anon_gid: {DEMO_EXPORT_OWNER}\n      \
         clients: [192.0.2.0/24, \"2001:db8:0:1::/64\"]"
    );
    let _ = writeln!(text, "dns:\n  zone: {DNS_ZONE}\n  names:");
    for name in DNS_NAMES {
        let _ = writeln!(text, "    - {{name: {name}, addresses: all}}");
    }
    text
}

/// The VIP addresses without prefix.
pub fn vip_addresses() -> Vec<IpAddr> {
    VIPS.iter()
        .filter_map(|vip| vip.parse::<ipnet::IpNet>().ok())
        .map(|vip| vip.addr())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_generated_file_is_a_valid_cluster() {
        let plan = super::super::plan::plan("t1", 3, 1).unwrap();
        let text = cluster_file(
            &plan,
            "0123456789abcdef0123",
            Path::new("/run/vipgate/labs/t1/mnt"),
        );
        let config = cluster_config::parse(&text, "cluster.yaml")
            .unwrap_or_else(|error| panic!("{error}\n{text}"));
        assert_eq!(config.nodes.len(), 3);
        assert_eq!(config.public_addresses.len(), 4);
        assert_eq!(
            config.nodes[1].cluster_address,
            "198.51.100.12".parse::<IpAddr>().unwrap()
        );
        assert_eq!(config.nodes[0].primary_interface(), "pub0");
        assert_eq!(config.nfs.exports[0].name, DEMO_EXPORT);
        assert_eq!(config.nfs.exports[0].anon_uid, DEMO_EXPORT_OWNER);
        assert_eq!(vip_addresses().len(), 4);
        let dns = config.dns.as_ref().unwrap();
        assert_eq!(dns.zone, DNS_ZONE);
        assert_eq!(dns.names.len(), DNS_NAMES.len());
        assert!(dns.names.iter().all(|name| name.addresses.len() == 4));
        let hints = service_hints(&plan);
        assert!(
            hints.iter().any(|hint| hint.service == "dns"
                && hint.command.ends_with("dig @192.0.2.11 nfs.vipgate.test")),
            "{hints:?}"
        );

        let with_smb = format!("{text}{}", smb_section());
        let config = cluster_config::parse(&with_smb, "cluster.yaml")
            .unwrap_or_else(|error| panic!("{error}\n{with_smb}"));
        assert!(config.smb.manage);
        assert_eq!(config.smb.shares[0].name, DEMO_SHARE);
        assert!(!config.smb.shares[0].read_only);
        assert_eq!(config.smb.shares[0].path, Path::new(DEMO_EXPORT));
    }

    #[test]
    fn the_smb_hint_carries_share_and_credentials() {
        let hint = smb_hint("client1", "192.0.2.201");
        assert_eq!(hint.address, "//192.0.2.201/demo");
        assert_eq!(
            hint.command,
            "vipgate demo exec client1 -- smbclient //192.0.2.201/demo -U demo%vipgate-demo -c ls"
        );
    }
}
