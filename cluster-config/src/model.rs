//! The validated cluster description the rest of vipgate runs on.
//!
//! Values of these types only come out of [`crate::parse`] and [`crate::load`]: every default is
//! applied, every cross reference is resolved (eligible nodes are [`NodeId`]s, DNS names list the
//! VIP addresses themselves) and every rule of the schema holds, so callers use them as they are
//! and never validate again.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::Duration;

use ipnet::IpNet;

/// A whole cluster file after validation.
#[derive(Debug, Clone, PartialEq)]
pub struct ClusterConfig {
    pub cluster: Cluster,
    /// At least one node, at most [`MAX_NODES`]; `nodes[i].id == NodeId(i)`.
    pub nodes: Vec<Node>,
    /// At least one virtual IP, in file order.
    pub public_addresses: Vec<PublicAddress>,
    pub volume: Volume,
    pub nfs: Nfs,
    pub smb: Smb,
    /// `None` when the file has no `dns` section: the embedded DNS server stays off.
    pub dns: Option<Dns>,
    pub timings: Timings,
}

/// The most nodes one cluster file may list.
pub const MAX_NODES: usize = 32;

impl ClusterConfig {
    /// One line for `vipgate config check`, e.g. `3 nodes, 4 public addresses, 2 exports, 1 share`.
    pub fn summary(&self) -> String {
        format!(
            "{}, {}, {}, {}",
            count(self.nodes.len(), "node", "nodes"),
            count(
                self.public_addresses.len(),
                "public address",
                "public addresses"
            ),
            count(self.nfs.exports.len(), "export", "exports"),
            count(self.smb.shares.len(), "share", "shares"),
        )
    }

    /// The node called `name`.
    pub fn node_by_name(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|node| node.name == name)
    }

    /// The node whose cluster (Raft and health) address is `address`.
    pub fn node_by_cluster_address(&self, address: IpAddr) -> Option<&Node> {
        self.nodes
            .iter()
            .find(|node| node.cluster_address == address)
    }

    /// The node with this id; `None` only for an id taken from a different configuration.
    pub fn node(&self, id: NodeId) -> Option<&Node> {
        self.nodes.get(id.0)
    }
}

fn count(number: usize, singular: &str, plural: &str) -> String {
    if number == 1 {
        format!("1 {singular}")
    } else {
        format!("{number} {plural}")
    }
}

/// The `cluster` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cluster {
    /// `[a-z0-9-]`, 1 to 32 characters, not starting with `-`.
    pub name: String,
    /// The shared secret that authenticates peer (Raft) traffic.
    pub secret: SecretSource,
    /// Absolute directory for the Raft log and local state; never inside the volume.
    pub data_dir: PathBuf,
    /// TCP port of the peer (Raft) transport on every node's cluster address (default 4380).
    pub port: u16,
}

/// The default peer port: next to CTDB's 4379, so firewall rules written for it are easy to adapt.
pub const DEFAULT_PORT: u16 = 4380;

/// The smallest accepted secret, in bytes.
pub const MIN_SECRET_LEN: usize = 16;

/// Where the cluster secret comes from.
///
/// `Debug` never shows an inline secret, so configurations can be logged.
#[derive(Clone, PartialEq, Eq)]
pub enum SecretSource {
    /// Written in the cluster file itself (at least [`MIN_SECRET_LEN`] characters).
    Inline(String),
    /// An absolute path to a file holding the secret, read on each node.
    File(PathBuf),
}

impl SecretSource {
    /// The secret's bytes. A file's trailing line break (`\n` or `\r\n`) is dropped so that files
    /// written with `echo` and with `printf` agree; a file shorter than [`MIN_SECRET_LEN`] bytes
    /// after that is an `InvalidData` error.
    pub fn read(&self) -> io::Result<Vec<u8>> {
        match self {
            SecretSource::Inline(secret) => Ok(secret.as_bytes().to_vec()),
            SecretSource::File(path) => read_secret_file(path),
        }
    }
}

fn read_secret_file(path: &Path) -> io::Result<Vec<u8>> {
    let mut secret = std::fs::read(path).map_err(|error| {
        io::Error::new(
            error.kind(),
            format!("cannot read secret file {}: {error}", path.display()),
        )
    })?;
    if secret.last() == Some(&b'\n') {
        secret.pop();
        if secret.last() == Some(&b'\r') {
            secret.pop();
        }
    }
    if secret.len() < MIN_SECRET_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "secret file {} holds {} bytes; at least {MIN_SECRET_LEN} are needed",
                path.display(),
                secret.len()
            ),
        ));
    }
    Ok(secret)
}

impl fmt::Debug for SecretSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SecretSource::Inline(_) => f.write_str("Inline(<redacted>)"),
            SecretSource::File(path) => f.debug_tuple("File").field(path).finish(),
        }
    }
}

/// A node's position in [`ClusterConfig::nodes`].
///
/// Only meaningful together with the configuration it came from: reordering the `nodes` list
/// renumbers them, so anything persisted (the Raft log, for instance) should name nodes by
/// [`Node::name`] instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct NodeId(pub usize);

impl NodeId {
    /// The index into [`ClusterConfig::nodes`].
    pub fn index(self) -> usize {
        self.0
    }
}

/// One entry of `nodes`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Node {
    pub id: NodeId,
    /// Unique; `[a-z0-9-]`, 1 to 32 characters, not starting with `-`.
    pub name: String,
    /// Unique across nodes; where Raft and health probes reach this node. Never loopback,
    /// unspecified, multicast, IPv4-mapped or IPv6 link-local.
    pub cluster_address: IpAddr,
    /// At least one valid Linux interface name, no duplicates. The first is where VIPs without an
    /// explicit interface go.
    pub public_interfaces: Vec<String>,
    /// The node's own fixed public address, if it has one; never a VIP.
    pub public_address: Option<IpAddr>,
}

impl Node {
    /// The interface VIPs without an explicit `interface` are added to.
    pub fn primary_interface(&self) -> &str {
        // Validation guarantees at least one interface; "" is unreachable, not a fallback.
        self.public_interfaces.first().map_or("", String::as_str)
    }
}

/// One virtual IP.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublicAddress {
    /// Address and prefix length (the prefix decides the subnet route the kernel adds). The
    /// address is a host address of its subnet, not the network or broadcast address, and the
    /// prefix is never /0.
    pub address: IpNet,
    /// The interface to add it to; `None` means each owner's [`Node::primary_interface`]. When set,
    /// every eligible node has it among its `public_interfaces`.
    pub interface: Option<String>,
    /// Nodes allowed to hold it, in file order, without duplicates; all nodes when the file lists
    /// none.
    pub eligible: Vec<NodeId>,
    /// Placement weight, 1 to 100 (default 1).
    pub weight: u32,
}

impl PublicAddress {
    /// The bare address, as clients and DNS see it.
    pub fn ip(&self) -> IpAddr {
        self.address.addr()
    }

    /// The interface this address goes on when `node` owns it.
    pub fn interface_on<'a>(&'a self, node: &'a Node) -> &'a str {
        self.interface
            .as_deref()
            .unwrap_or_else(|| node.primary_interface())
    }

    /// Whether `node` may hold this address.
    pub fn is_eligible(&self, node: NodeId) -> bool {
        self.eligible.contains(&node)
    }
}

/// The `volume` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Absolute, normalized mount path of the replicated volume, the same on every node.
    pub path: PathBuf,
    pub handles: HandleScheme,
}

/// How NFS file handles are made so that they resolve on every node (DESIGN.md invariant 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HandleScheme {
    /// Detect at start: GlusterFS GFIDs on FUSE mounts, kernel handles elsewhere.
    Auto,
    /// `name_to_handle_at` / `open_by_handle_at`.
    Kernel,
    /// GlusterFS GFIDs through an `aux-gfid-mount`.
    GlusterfsGfid,
}

/// The `nfs` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Nfs {
    pub exports: Vec<Export>,
}

/// One NFS export.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Export {
    /// Unique across exports.
    pub name: String,
    /// Relative to [`Volume::path`], normalized, never containing `..`; empty for the volume root.
    pub path: PathBuf,
    /// NFSv4 pseudo-filesystem path: absolute, normalized, unique. Defaults to `/<name>`.
    pub pseudo: String,
    /// Non-empty, sorted, without duplicates. Defaults to both versions.
    pub protocols: Vec<NfsVersion>,
    /// Defaults to [`Access::ReadOnly`].
    pub access: Access,
    /// Non-empty; `[ClientMatch::Any]` when the file lists none.
    pub clients: Vec<ClientMatch>,
    /// Defaults to [`Squash::Root`].
    pub squash: Squash,
    /// Defaults to 65534; never 0 while squashing, never `u32::MAX`.
    pub anon_uid: u32,
    /// Defaults to 65534; never 0 while squashing, never `u32::MAX`.
    pub anon_gid: u32,
}

impl Export {
    /// Where the export lives on this node's mount of the volume.
    pub fn local_path(&self, volume: &Volume) -> PathBuf {
        volume.path.join(&self.path)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum NfsVersion {
    V3,
    V4,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadOnly,
    ReadWrite,
}

/// Which callers are mapped to `anon_uid`/`anon_gid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Squash {
    /// Everyone acts as themselves, root included.
    None,
    /// uid 0 becomes the anonymous user.
    Root,
    /// Every caller becomes the anonymous user.
    All,
}

/// One entry of an export's `clients` list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClientMatch {
    /// `*`: every client.
    Any,
    /// A CIDR network without host bits; a single address is a /32 or /128.
    Network(IpNet),
    /// A host name, lower-cased, without trailing dot, matched after reverse lookup.
    Host(String),
}

/// The `smb` section.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Smb {
    /// Whether vipgate renders smb.conf and supervises `smbd`.
    pub manage: bool,
    pub shares: Vec<Share>,
}

/// One SMB share.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Share {
    /// Unique across shares, compared without regard to case as SMB clients do.
    pub name: String,
    /// Relative to [`Volume::path`], normalized, never containing `..`; empty for the volume root.
    pub path: PathBuf,
    /// Defaults to `true`.
    pub read_only: bool,
    /// `None`: every authenticated user. `Some` is never empty.
    pub valid_users: Option<Vec<String>>,
}

impl Share {
    /// Where the share lives on this node's mount of the volume.
    pub fn local_path(&self, volume: &Volume) -> PathBuf {
        volume.path.join(&self.path)
    }
}

/// The `dns` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dns {
    /// Lower-case, without trailing dot.
    pub zone: String,
    /// Record TTL in seconds, 1 to 3600 (default 5).
    pub ttl: u32,
    /// Sockets to answer on: each `listen` address with `port` (default `0.0.0.0` and `::`, port
    /// 53).
    pub listen: Vec<SocketAddr>,
    pub names: Vec<DnsName>,
}

/// One name the DNS server answers for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DnsName {
    /// As written, relative to the zone, lower-cased; `@` is the zone apex.
    pub name: String,
    /// The fully qualified name, lower-case, without trailing dot.
    pub fqdn: String,
    /// The VIPs this name lists (those that are live), in file order, never empty; every one is
    /// the address of a [`PublicAddress`].
    pub addresses: Vec<IpAddr>,
}

/// The `timings` section.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timings {
    /// Raft heartbeat interval (default 100 ms).
    pub heartbeat: Duration,
    /// Raft election timeout, at least 3 heartbeats (default 500 ms).
    pub election: Duration,
    /// VIP ownership lease, at least 1 s plus 2 heartbeats (default 1.5 s).
    pub lease: Duration,
    /// Health probe interval, at most half the lease (default 250 ms).
    pub health_interval: Duration,
    /// How long a health probe may take before its round counts as failed (default 1 s, at
    /// most [`MAX_HEALTH_TIMEOUT`]).
    pub health_timeout: Duration,
}

/// The longest `timings.health_timeout`: a hung volume must still be noticed in time.
pub const MAX_HEALTH_TIMEOUT: Duration = Duration::from_secs(30);

impl Default for Timings {
    fn default() -> Timings {
        Timings {
            heartbeat: Duration::from_millis(100),
            election: Duration::from_millis(500),
            lease: Duration::from_millis(1500),
            health_interval: Duration::from_millis(250),
            health_timeout: Duration::from_secs(1),
        }
    }
}
