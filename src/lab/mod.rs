//! Isolated multi-node network labs on one Linux machine, shared by `vipgate demo` and the
//! integration tests.
//!
//! A lab is a switch namespace holding two bridges (public and cluster: split networks), one
//! namespace per node with a veth on each bridge, and client namespaces on the public bridge.
//! There is no uplink, no NAT and no default route: hosts reach each other and nothing else. The
//! host's own namespace is never modified — every veth is created inside the switch namespace and
//! one end moved out to its host.
//!
//! Life cycle: [`Lab::create`] writes the lab's record (see [`state`]) *before* building, reaps
//! labs whose owner died, builds, and marks the record ready. Dropping the [`Lab`] tears it down
//! unless it was [`Lab::detach`]ed; [`teardown`] removes any lab by name. Teardown stops recorded
//! processes by pid (and start time), then kills whatever else still runs inside the lab's
//! namespaces, then deletes the namespaces, which frees every interface in them.

pub mod cluster;
pub mod netns;
pub mod plan;
pub mod state;

use std::ffi::CString;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command};
use std::time::Duration;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::{AddressAttribute, AddressFlags};
use rtnetlink::packet_route::link::LinkAttribute;
use rtnetlink::packet_route::neighbour::{NeighbourAddress, NeighbourAttribute};
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};
use serde::Serialize;
use vipd::apply::{
    AddressApplier, ApplyError, KernelAddress, NetlinkApplier, interface_index, interface_names,
};

pub use plan::{Network, Plan, PlannedHost, Role};
use state::{LabProcess, LabRecord, ProcessId};

/// How long stopped processes get between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(3);

/// What to build.
#[derive(Debug, Clone)]
pub struct LabSpec {
    /// Lab name; a fresh unique name when `None`.
    pub name: Option<String>,
    pub nodes: usize,
    pub clients: usize,
}

impl Default for LabSpec {
    fn default() -> Self {
        LabSpec {
            name: None,
            nodes: 3,
            clients: 1,
        }
    }
}

/// Why a lab operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("building a lab needs root (network namespaces and netlink); run as root")]
    NotRoot,
    #[error(transparent)]
    Plan(#[from] plan::PlanError),
    #[error(
        "lab {0} already exists; remove it with `vipgate demo down {0}` or choose another name"
    )]
    Exists(String),
    #[error("no lab named {0}")]
    NoSuchLab(String),
    #[error("lab {lab} has no host {host}")]
    NoSuchHost { lab: String, host: String },
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
}

trait Context<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, LabError>;
}

impl<T> Context<T> for io::Result<T> {
    fn context(self, context: impl FnOnce() -> String) -> Result<T, LabError> {
        self.map_err(|source| LabError::Io {
            context: context(),
            source,
        })
    }
}

/// One entry of a lab host's neighbour (ARP/NDP) table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Neighbour {
    pub interface: String,
    pub address: IpAddr,
    /// The link-layer address, `None` while unresolved.
    pub mac: Option<String>,
    pub state: String,
}

/// A built lab. Dropping it tears the lab down unless it was detached.
#[derive(Debug)]
pub struct Lab {
    plan: Plan,
    detached: bool,
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

impl Lab {
    /// Builds a lab. Labs of dead owners are reaped first.
    pub fn create(spec: &LabSpec) -> Result<Lab, LabError> {
        if !is_root() {
            return Err(LabError::NotRoot);
        }
        reap_orphans();
        let name = match &spec.name {
            Some(name) => name.clone(),
            None => fresh_name(),
        };
        let plan = plan::plan(&name, spec.nodes, spec.clients)?;
        if state::lab_dir(&name).exists() || plan.namespaces().any(netns::exists) {
            return Err(LabError::Exists(name));
        }
        let mut record = LabRecord {
            version: state::RECORD_VERSION,
            plan: plan.clone(),
            owner: ProcessId::current(),
            ready: false,
            processes: Vec::new(),
        };
        state::save(&record).context(|| format!("cannot record lab {name}"))?;
        // From here on the lab exists; dropping it on an error removes what was built so far.
        let lab = Lab {
            plan,
            detached: false,
        };
        lab.build()?;
        record.ready = true;
        state::save(&record).context(|| format!("cannot record lab {name}"))?;
        tracing::info!(lab = %name, hosts = lab.plan.hosts.len(), "lab built");
        Ok(lab)
    }

    /// Re-attaches to an existing lab by name, without owning it: dropping the handle leaves the
    /// lab running.
    pub fn open(name: &str) -> Result<Lab, LabError> {
        let record = state::load(name).map_err(|error| match error.kind() {
            io::ErrorKind::NotFound => LabError::NoSuchLab(name.to_owned()),
            _ => LabError::Io {
                context: format!("cannot read lab {name}"),
                source: error,
            },
        })?;
        Ok(Lab {
            plan: record.plan,
            detached: true,
        })
    }

    /// The lab's name.
    pub fn name(&self) -> &str {
        &self.plan.name
    }

    /// The lab's plan: hosts, namespaces, interfaces and addresses.
    pub fn plan(&self) -> &Plan {
        &self.plan
    }

    /// The host called `name`.
    pub fn host(&self, name: &str) -> Result<&PlannedHost, LabError> {
        self.plan.host(name).ok_or_else(|| LabError::NoSuchHost {
            lab: self.plan.name.clone(),
            host: name.to_owned(),
        })
    }

    /// Directory of a host's files (its `/etc` overrides, later its daemon's data).
    pub fn host_dir(&self, host: &str) -> PathBuf {
        state::host_dir(&self.plan.name, host)
    }

    /// Leaves the lab running after this handle is dropped; `vipgate demo down` removes it.
    pub fn detach(mut self) -> Result<(), LabError> {
        self.detached = true;
        let mut record =
            state::load(self.name()).context(|| format!("cannot read lab {}", self.name()))?;
        record.owner = None;
        state::save(&record).context(|| format!("cannot record lab {}", self.name()))
    }

    fn build(&self) -> Result<(), LabError> {
        let plan = &self.plan;
        for namespace in plan.namespaces() {
            netns::create(namespace)
                .context(|| format!("cannot create network namespace {namespace}"))?;
        }
        let etc_hosts = plan.etc_hosts();
        for host in &plan.hosts {
            let etc = self.host_dir(&host.name).join("etc");
            std::fs::create_dir_all(&etc).context(|| format!("cannot create {}", etc.display()))?;
            std::fs::write(etc.join("hosts"), &etc_hosts)
                .context(|| format!("cannot write {}/hosts", etc.display()))?;
            // No name server is reachable from a lab unless vipgate serves one there; resolving
            // through this file fails fast instead of waiting on the host's resolvers.
            std::fs::write(
                etc.join("resolv.conf"),
                "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
            )
            .context(|| format!("cannot write {}/resolv.conf", etc.display()))?;
        }
        self.build_switch()?;
        for host in &plan.hosts {
            self.build_host(host)?;
        }
        Ok(())
    }

    fn build_switch(&self) -> Result<(), LabError> {
        let plan = &self.plan;
        let switch = plan.switch_netns.clone();
        // Each host's namespace, opened here so the switch can move veth ends into it, and the
        // switch ports (with their bridges) that plug the host in.
        let hosts: Vec<(std::fs::File, Vec<(String, &'static str)>)> = plan
            .hosts
            .iter()
            .map(|host| Ok((netns::open(&host.netns)?, switch_ports(host))))
            .collect::<io::Result<_>>()
            .context(|| format!("cannot open the namespaces of lab {}", plan.name))?;
        netns::netlink(&switch, |handle| async move {
            set_up(&handle, "lo").await?;
            for bridge in [plan::PUBLIC_BRIDGE, plan::CLUSTER_BRIDGE] {
                // STP stays off (the kernel default): ports forward at once and a lab has no loops.
                handle
                    .link()
                    .add(LinkBridge::new(bridge).up().build())
                    .execute()
                    .await?;
            }
            for (namespace_file, ports) in &hosts {
                for (port, bridge) in ports {
                    let peer = format!("{port}-h");
                    handle
                        .link()
                        .add(LinkVeth::new(port, &peer).build())
                        .execute()
                        .await?;
                    let bridge_index = interface_index(&handle, bridge).await?;
                    let port_index = interface_index(&handle, port).await?;
                    handle
                        .link()
                        .change(
                            LinkUnspec::new_with_index(port_index)
                                .controller(bridge_index)
                                .up()
                                .build(),
                        )
                        .execute()
                        .await?;
                    let peer_index = interface_index(&handle, &peer).await?;
                    use std::os::fd::AsRawFd;
                    handle
                        .link()
                        .change(
                            LinkUnspec::new_with_index(peer_index)
                                .setns_by_fd(namespace_file.as_raw_fd())
                                .build(),
                        )
                        .execute()
                        .await?;
                }
            }
            Ok::<_, ApplyError>(())
        })
        .context(|| format!("cannot build the switch of lab {}", plan.name))
    }

    fn build_host(&self, host: &PlannedHost) -> Result<(), LabError> {
        let interfaces = host.interfaces.clone();
        netns::netlink(&host.netns, |handle| async move {
            set_up(&handle, "lo").await?;
            for interface in &interfaces {
                let index =
                    interface_index(&handle, &format!("{}-h", interface.switch_port)).await?;
                handle
                    .link()
                    .change(
                        LinkUnspec::new_with_index(index)
                            .name(interface.name.clone())
                            .up()
                            .build(),
                    )
                    .execute()
                    .await?;
                for address in &interface.addresses {
                    let mut request =
                        handle
                            .address()
                            .add(index, address.addr(), address.prefix_len());
                    // No duplicate address detection: lab addresses are unique by plan, and an
                    // address in DAD ("tentative") cannot be used for several seconds.
                    request
                        .message_mut()
                        .attributes
                        .push(AddressAttribute::Flags(AddressFlags::Nodad));
                    request.execute().await?;
                }
            }
            Ok::<_, ApplyError>(())
        })
        .context(|| format!("cannot build host {} of lab {}", host.name, self.plan.name))
    }

    /// A command that runs inside `host`'s namespace with that host's environment: its network,
    /// its `/etc/hosts` and `/etc/resolv.conf`, its `/sys`, and `VIPGATE_LAB`/`VIPGATE_LAB_HOST`
    /// set, with this program's directory first on `PATH`.
    pub fn command(
        &self,
        host: &str,
        program: impl AsRef<std::ffi::OsStr>,
    ) -> Result<Command, LabError> {
        let host = self.host(host)?;
        let namespace =
            netns::open(&host.netns).context(|| format!("cannot enter host {}", host.name))?;
        let etc = self.host_dir(&host.name).join("etc");
        // A bind needs an existing target; a machine without /etc/resolv.conf simply keeps none.
        let mut mounts: Vec<(PathBuf, PathBuf)> = ["hosts", "resolv.conf"]
            .iter()
            .filter(|file| std::path::Path::new("/etc").join(file).exists())
            .map(|file| (etc.join(file), PathBuf::from("/etc").join(file)))
            .collect();
        let mut command = Command::new(program);
        command
            .env("VIPGATE_LAB", self.name())
            .env("VIPGATE_LAB_HOST", &host.name);
        // Inside a node of a lab running a cluster, `vipgate` finds that node's daemon, file
        // and data without options, and the shared volume is mounted.
        if host.role == Role::Node && cluster::config_path(self.name()).exists() {
            command
                .env("VIPGATE_CONFIG", cluster::config_path(self.name()))
                .env(
                    "VIPGATE_SOCKET",
                    cluster::socket_path(self.name(), &host.name),
                )
                .env(
                    "VIPGATE_DATA_DIR",
                    cluster::data_dir(self.name(), &host.name),
                );
            let own_volume = cluster::node_volume_source(self.name(), &host.name);
            let source = if own_volume.is_dir() {
                own_volume
            } else {
                cluster::volume_source(self.name())
            };
            let (source, target) = (source, cluster::volume_mount(self.name()));
            // Only a cluster started by `start_cluster` has the mount point; a test may write
            // its own cluster file with another volume.
            if source.is_dir() && target.is_dir() {
                mounts.push((source, target));
            }
        }
        let binds: Vec<(CString, CString)> = mounts
            .iter()
            .filter_map(|(source, target)| {
                let source = CString::new(source.as_os_str().as_bytes()).ok()?;
                let target = CString::new(target.as_os_str().as_bytes()).ok()?;
                Some((source, target))
            })
            .collect();
        if let Some(path) = path_with_own_directory() {
            command.env("PATH", path);
        }
        let enter = EnterHost { namespace, binds };
        // SAFETY: the closure runs in the forked child before exec and only makes raw system
        // calls on data prepared above; it neither allocates nor takes locks.
        unsafe {
            command.pre_exec(move || enter.enter());
        }
        Ok(command)
    }

    /// Starts `command` (built with [`Lab::command`]) as a lab process in its own process group,
    /// recorded so that teardown stops it even if this process dies.
    pub fn spawn(&self, host: &str, mut command: Command) -> Result<Child, LabError> {
        command.process_group(0);
        let description = format!("{command:?}");
        let child = command
            .spawn()
            .context(|| format!("cannot start {description} on {host}"))?;
        if let Some(id) = ProcessId::of(child.id()) {
            let mut record =
                state::load(self.name()).context(|| format!("cannot read lab {}", self.name()))?;
            record.processes.push(LabProcess {
                host: host.to_owned(),
                id,
                command: description,
            });
            state::save(&record).context(|| format!("cannot record lab {}", self.name()))?;
        }
        Ok(child)
    }

    /// Writes the lab's cluster file (every node, the VIPs of [`cluster::VIPS`], the shared
    /// volume) and starts `vipgate` (the binary at `vipgate`) as `node` on every node host.
    pub fn start_cluster(&self, vipgate: &std::path::Path) -> Result<(), LabError> {
        let name = self.name().to_owned();
        let secret = random_secret().context(|| "cannot make a cluster secret".to_owned())?;
        for dir in [cluster::volume_source(&name), cluster::volume_mount(&name)] {
            std::fs::create_dir_all(&dir).context(|| format!("cannot create {}", dir.display()))?;
        }
        let export = cluster::volume_source(&name).join(cluster::DEMO_EXPORT);
        std::fs::create_dir_all(&export)
            .and_then(|()| {
                let owner = Some(cluster::DEMO_EXPORT_OWNER);
                std::os::unix::fs::chown(&export, owner, owner)
            })
            .context(|| format!("cannot create {}", export.display()))?;
        let mut text = cluster::cluster_file(&self.plan, &secret, &cluster::volume_mount(&name));
        let smb = cluster::samba_installed();
        if smb {
            text.push_str(&cluster::smb_section());
        }
        let path = cluster::config_path(&name);
        write_private(&path, &text).context(|| format!("cannot write {}", path.display()))?;
        // Clients resolve through the nodes' DNS servers, so `nfs.<zone>` and `smb.<zone>` work
        // from them as from a real client whose zone is delegated to the cluster (nodes ask
        // their own server on 127.0.0.1 already).
        let resolv = cluster::client_resolv_conf(&self.plan);
        for client in self.plan.hosts_of(Role::Client) {
            let file = self.host_dir(&client.name).join("etc").join("resolv.conf");
            std::fs::write(&file, &resolv)
                .context(|| format!("cannot write {}", file.display()))?;
        }
        if smb {
            cluster::add_demo_smb_user(self, vipgate)?;
        }
        let nodes: Vec<String> = self
            .plan
            .hosts_of(Role::Node)
            .map(|host| host.name.clone())
            .collect();
        for host in nodes {
            self.start_node(&host, vipgate)?;
        }
        Ok(())
    }

    /// Starts `vipgate node` on `host` (again, after a kill), logging to its `node.log`.
    pub fn start_node(&self, host: &str, vipgate: &std::path::Path) -> Result<Child, LabError> {
        let name = self.name().to_owned();
        let log_path = cluster::log_path(&name, host);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .and_then(|log| Ok((log.try_clone()?, log)))
            .context(|| format!("cannot open {}", log_path.display()))?;
        let (log, log_err) = log;
        let mut command = self.command(host, vipgate)?;
        command
            .args(["node", "--name", host])
            .env(
                "RUST_LOG",
                std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()),
            )
            .stdin(std::process::Stdio::null())
            .stdout(log)
            .stderr(log_err);
        self.spawn(host, command)
    }

    /// The running `vipgate node` process of `host`, if any.
    pub fn node_daemon(&self, host: &str) -> Result<Option<ProcessId>, LabError> {
        let record =
            state::load(self.name()).context(|| format!("cannot read lab {}", self.name()))?;
        Ok(record
            .processes
            .iter()
            .rev()
            .filter(|process| process.host == host && process.command.contains("\"node\""))
            .map(|process| process.id)
            .find(ProcessId::is_alive))
    }

    /// Cuts `host` off `networks` by unplugging its switch ports from their bridges. The host's
    /// own interfaces stay up with carrier, as when a switch or cable fails further away, so the
    /// host learns of the partition only from silence.
    pub fn cut(&self, host: &str, networks: &[Network]) -> Result<(), LabError> {
        self.plug(host, networks, false)
    }

    /// Undoes [`Lab::cut`].
    pub fn restore(&self, host: &str, networks: &[Network]) -> Result<(), LabError> {
        self.plug(host, networks, true)
    }

    fn plug(&self, host: &str, networks: &[Network], plugged: bool) -> Result<(), LabError> {
        let ports: Vec<(String, &'static str)> = switch_ports(self.host(host)?)
            .into_iter()
            .filter(|(_, bridge)| networks.iter().any(|network| network.bridge() == *bridge))
            .collect();
        netns::netlink(&self.plan.switch_netns, |handle| async move {
            for (port, bridge) in &ports {
                let port_index = interface_index(&handle, port).await?;
                let message = if plugged {
                    let bridge_index = interface_index(&handle, bridge).await?;
                    LinkUnspec::new_with_index(port_index).controller(bridge_index)
                } else {
                    LinkUnspec::new_with_index(port_index).nocontroller()
                };
                handle.link().change(message.build()).execute().await?;
            }
            Ok::<_, ApplyError>(())
        })
        .context(|| format!("cannot change the links of {host}"))
    }

    /// The addresses configured inside `host`, loopback excluded, with their lifetimes.
    pub fn addresses(&self, host: &str) -> Result<Vec<KernelAddress>, LabError> {
        let namespace = self.host(host)?.netns.clone();
        netns::netlink(&namespace, |handle| async move {
            NetlinkApplier::new(handle).addresses().await
        })
        .context(|| format!("cannot read the addresses of {host}"))
    }

    /// The MAC address of `interface` inside `host`.
    pub fn mac(&self, host: &str, interface: &str) -> Result<String, LabError> {
        let namespace = self.host(host)?.netns.clone();
        let interface = interface.to_owned();
        netns::netlink(&namespace, |handle| async move {
            let mut links = handle.link().get().match_name(interface).execute();
            let link = links
                .try_next()
                .await?
                .ok_or(rtnetlink::Error::RequestFailed)?;
            Ok::<_, ApplyError>(
                link.attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        LinkAttribute::Address(bytes) => Some(format_mac(bytes)),
                        _ => None,
                    })
                    .unwrap_or_default(),
            )
        })
        .context(|| format!("cannot read the links of {host}"))
    }

    /// The neighbour (ARP and NDP) table of `host`.
    pub fn neighbours(&self, host: &str) -> Result<Vec<Neighbour>, LabError> {
        let namespace = self.host(host)?.netns.clone();
        netns::netlink(&namespace, |handle| async move {
            let names = interface_names(&handle).await?;
            let mut neighbours = Vec::new();
            let mut messages = handle.neighbours().get().execute();
            while let Some(message) = messages.try_next().await? {
                let mut address = None;
                let mut mac = None;
                for attribute in &message.attributes {
                    match attribute {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)) => {
                            address = Some(IpAddr::V4(*ip));
                        }
                        NeighbourAttribute::Destination(NeighbourAddress::Inet6(ip)) => {
                            address = Some(IpAddr::V6(*ip));
                        }
                        NeighbourAttribute::LinkLayerAddress(bytes) => {
                            mac = Some(format_mac(bytes))
                        }
                        _ => {}
                    }
                }
                if let Some(address) = address {
                    neighbours.push(Neighbour {
                        interface: names
                            .get(&message.header.ifindex)
                            .cloned()
                            .unwrap_or_default(),
                        address,
                        mac,
                        state: format!("{:?}", message.header.state).to_lowercase(),
                    });
                }
            }
            Ok::<_, ApplyError>(neighbours)
        })
        .context(|| format!("cannot read the neighbours of {host}"))
    }

    /// Whether `from` reaches `to` over TCP: a connection attempt to a closed port that is
    /// answered at all (accepted or refused with a RST) proves the path works both ways; silence
    /// or an unreachable error within `timeout` means it does not.
    pub fn reaches(&self, from: &str, to: IpAddr, timeout: Duration) -> Result<bool, LabError> {
        let namespace = self.host(from)?.netns.clone();
        // Port 9 (discard) is closed in a lab unless a test opens it, which counts as reached too.
        let target = SocketAddr::new(to, 9);
        netns::run_in(&namespace, || {
            match TcpStream::connect_timeout(&target, timeout) {
                Ok(_) => true,
                Err(error) => error.kind() == io::ErrorKind::ConnectionRefused,
            }
        })
        .context(|| format!("cannot probe from {from}"))
    }

    /// Tears the lab down now.
    pub fn teardown(mut self) -> Result<(), LabError> {
        self.detached = true;
        teardown(self.name())
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if !self.detached
            && let Err(error) = teardown(self.name())
        {
            tracing::error!(lab = %self.name(), %error, "lab teardown failed");
        }
    }
}

/// What the child does between fork and exec to become a lab host, as `ip netns exec` does.
struct EnterHost {
    namespace: std::fs::File,
    binds: Vec<(CString, CString)>,
}

impl EnterHost {
    fn enter(&self) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        // SAFETY: plain system calls on a valid descriptor and NUL-terminated strings owned by
        // `self`; on failure they return -1 and set errno, which is reported.
        unsafe {
            if libc::setns(self.namespace.as_raw_fd(), libc::CLONE_NEWNET) != 0 {
                return Err(io::Error::last_os_error());
            }
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(io::Error::last_os_error());
            }
            // Keep mounts made below private to this process tree.
            let root = c"/";
            if libc::mount(
                std::ptr::null(),
                root.as_ptr(),
                std::ptr::null(),
                libc::MS_SLAVE | libc::MS_REC,
                std::ptr::null(),
            ) != 0
            {
                return Err(io::Error::last_os_error());
            }
            // A fresh sysfs shows this namespace's interfaces; best effort, as in `ip netns exec`.
            let sys = c"/sys";
            if libc::umount2(sys.as_ptr(), libc::MNT_DETACH) == 0 {
                libc::mount(
                    c"sysfs".as_ptr(),
                    sys.as_ptr(),
                    c"sysfs".as_ptr(),
                    0,
                    std::ptr::null(),
                );
            }
            for (source, target) in &self.binds {
                if libc::mount(
                    source.as_ptr(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
            }
        }
        Ok(())
    }
}

/// `PATH` with the directory of the running `vipgate` first, so that `vipgate` inside a lab host
/// is the same build as the one that made the lab.
fn path_with_own_directory() -> Option<std::ffi::OsString> {
    let own_directory = std::env::current_exe().ok()?.parent()?.to_path_buf();
    let rest = std::env::var_os("PATH").unwrap_or_default();
    std::env::join_paths(std::iter::once(own_directory).chain(std::env::split_paths(&rest))).ok()
}

/// The switch ports of `host` with the bridge each belongs on.
fn switch_ports(host: &PlannedHost) -> Vec<(String, &'static str)> {
    host.interfaces
        .iter()
        .map(|interface| (interface.switch_port.clone(), interface.network.bridge()))
        .collect()
}

async fn set_up(handle: &rtnetlink::Handle, interface: &str) -> Result<(), ApplyError> {
    let index = interface_index(handle, interface).await?;
    handle
        .link()
        .change(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await?;
    Ok(())
}

fn format_mac(bytes: &[u8]) -> String {
    bytes
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// A lab name not used by any lab or namespace here: `vg` and four hex digits.
fn fresh_name() -> String {
    let seed = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|elapsed| elapsed.subsec_nanos())
        .unwrap_or(0)
        ^ std::process::id().rotate_left(16);
    (0u32..)
        .map(|attempt| {
            format!(
                "vg{:04x}",
                (seed.wrapping_add(attempt.wrapping_mul(0x9e37))) & 0xffff
            )
        })
        .find(|name| !state::lab_dir(name).exists() && !netns::exists(&format!("{name}-sw")))
        .unwrap_or_else(|| "vg0000".to_owned())
}

/// Removes lab `name`: stops its recorded processes, kills anything else still inside its
/// namespaces, deletes the namespaces and the lab's directory. Safe to repeat.
pub fn teardown(name: &str) -> Result<(), LabError> {
    let record = match state::load(name) {
        Ok(record) => record,
        Err(error) if error.kind() == io::ErrorKind::NotFound => {
            return Err(LabError::NoSuchLab(name.to_owned()));
        }
        Err(error) => {
            return Err(LabError::Io {
                context: format!("cannot read lab {name}"),
                source: error,
            });
        }
    };
    let recorded: Vec<ProcessId> = record.processes.iter().map(|process| process.id).collect();
    state::stop_processes(&recorded, STOP_GRACE);
    let namespaces: Vec<&str> = record.plan.namespaces().collect();
    // Anything still running inside the lab was started there by the lab's users (a daemon's
    // child, a shell from `demo exec`): it is the lab's, found by its namespace, killed by pid.
    let stragglers: Vec<ProcessId> = namespaces
        .iter()
        .filter_map(|namespace| netns::netns_inode(namespace))
        .flat_map(state::processes_in_netns)
        .filter(|pid| *pid != std::process::id())
        .filter_map(ProcessId::of)
        .collect();
    state::stop_processes(&stragglers, STOP_GRACE);
    let mut first_error = None;
    for namespace in namespaces {
        if let Err(error) = netns::delete(namespace) {
            first_error.get_or_insert(LabError::Io {
                context: format!("cannot delete network namespace {namespace}"),
                source: error,
            });
        }
    }
    // A test may have mounted file systems inside the lab's directory (the GlusterFS test's
    // FUSE mounts): their clients are gone now, and removing the directory must not descend
    // into a mount, so they are detached first.
    unmount_below(&state::lab_dir(name));
    if let Err(error) = state::remove(name) {
        first_error.get_or_insert(LabError::Io {
            context: format!("cannot remove the directory of lab {name}"),
            source: error,
        });
    }
    match first_error {
        Some(error) => Err(error),
        None => {
            tracing::info!(lab = %name, "lab removed");
            Ok(())
        }
    }
}

/// Detaches every mount at or below `dir` in this mount namespace, deepest first.
fn unmount_below(dir: &std::path::Path) {
    let Ok(mountinfo) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return;
    };
    let mut below: Vec<String> = gateway::gfid::mount_entries(&mountinfo)
        .map(|entry| entry.mount_point)
        .filter(|mount_point| std::path::Path::new(mount_point).starts_with(dir))
        .collect();
    below.reverse();
    for mount_point in below {
        let Ok(path) = CString::new(mount_point.as_bytes()) else {
            continue;
        };
        // SAFETY: `path` is NUL-terminated; umount2 only reads it.
        if unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) } == 0 {
            tracing::info!(mount_point, "detached a mount left inside a lab");
        }
    }
}

/// Tears down every lab whose owner died without removing it. Returns the names removed.
pub fn reap_orphans() -> Vec<String> {
    state::list()
        .into_iter()
        .filter(|name| state::load(name).is_ok_and(|record| record.is_orphaned()))
        .filter(|name| match teardown(name) {
            Ok(()) => true,
            Err(error) => {
                tracing::warn!(lab = %name, %error, "cannot remove orphaned lab");
                false
            }
        })
        .collect()
}

/// The records of every lab on this machine.
pub fn list() -> Vec<LabRecord> {
    state::list()
        .iter()
        .filter_map(|name| state::load(name).ok())
        .collect()
}

/// A fresh random cluster secret (32 hex digits) from the kernel's generator.
fn random_secret() -> io::Result<String> {
    use std::io::Read as _;
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut bytes)?;
    Ok(bytes.iter().map(|byte| format!("{byte:02x}")).collect())
}

/// Writes `text` to `path` readable by root only (the file holds the cluster secret).
fn write_private(path: &std::path::Path, text: &str) -> io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .create(true)
        .write(true)
        .truncate(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(text.as_bytes())
}
