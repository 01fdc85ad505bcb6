//! A real replicated GlusterFS volume inside a lab (DESIGN.md, NFS notes): one glusterd per
//! node, in the node's network namespace and a mount namespace of its own whose
//! `/var/lib/glusterd`, `/run/gluster` and `/var/log/glusterfs` are directories of the node in
//! the lab, with its CLI socket in that `/run/gluster` (so nothing of the machine's own
//! GlusterFS state is read or written; the lab's directory, under `/run`, stays visible for
//! the bricks); bricks on the local
//! disk (`force`); one `replica N` volume whose bricks and clients give a silent peer up within
//! seconds (`network.ping-timeout 2`, `server.keepalive-*` and `server.tcp-user-timeout`: see
//! [`Gluster::start`]); and on every node a FUSE mount made with
//! `--aux-gfid-mount` by a glusterfs client that runs in the node's network, mounted on the
//! machine at `cluster::node_volume_source`, which `Lab::command` binds at the lab's volume
//! path for that node's processes.
//!
//! Teardown (on drop, before the lab's): detach the FUSE mounts, then stop by pid the FUSE
//! clients, the brick processes (pids from glusterd's pid files) and glusterd. The lab's own
//! teardown would also kill them (they run in its namespaces) and detach leftover mounts.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output};
use std::time::Duration;

use vipgate::lab::{Lab, Role, cluster};

/// The volume's name.
pub const VOLUME: &str = "gv";

/// glusterd's CLI socket, inside its private `/run/gluster` (the default `/run/glusterd.socket`
/// would be the machine's, shared by every node).
const SOCKET: &str = "/run/gluster/glusterd.socket";

/// glusterd and its bricks on one node, and the node's FUSE mount.
#[derive(Debug)]
struct GlusterNode {
    host: String,
    address: String,
    /// `<node>/gluster`: lib, run, log and the brick.
    state: PathBuf,
    glusterd: Child,
    mount: PathBuf,
    client: Option<Child>,
    /// Further mounts (`mount_other`) and their clients.
    extra_clients: Vec<(PathBuf, Child)>,
}

/// A running replicated volume, mounted on every node.
#[derive(Debug)]
pub struct Gluster {
    nodes: Vec<GlusterNode>,
}

fn describe(output: &Output) -> String {
    super::describe(output)
}

impl Gluster {
    /// Starts glusterd on every node of `lab`, makes a `replica N` volume of one brick per
    /// node, and mounts it on every node.
    pub fn start(lab: &Lab) -> Gluster {
        let mut gluster = Gluster { nodes: Vec::new() };
        let hosts: Vec<(String, String)> = lab
            .plan()
            .hosts_of(Role::Node)
            .map(|host| {
                let address = host
                    .address(vipgate::lab::Network::Cluster, false)
                    .unwrap()
                    .to_string();
                (host.name.clone(), address)
            })
            .collect();
        for (host, address) in &hosts {
            let state = lab.host_dir(host).join("gluster");
            for dir in ["lib", "run", "log", "brick"] {
                std::fs::create_dir_all(state.join(dir)).unwrap();
            }
            let script = format!(
                "set -e; mkdir -p /run/gluster; mount --bind {lib} /var/lib/glusterd; \
                 mount --bind {log} /var/log/glusterfs; mount --bind {run} /run/gluster; \
                 exec glusterd -N --log-level=WARNING \
                 --xlator-option management.glusterd-sockfile={SOCKET}",
                lib = state.join("lib").display(),
                run = state.join("run").display(),
                log = state.join("log").display(),
            );
            let output = std::fs::File::create(state.join("log/glusterd.out")).unwrap();
            let mut command = lab.command(host, "sh").unwrap();
            command
                .args(["-c", &script])
                .stdin(std::process::Stdio::null())
                .stdout(output.try_clone().unwrap())
                .stderr(output);
            let glusterd = lab.spawn(host, command).unwrap();
            gluster.nodes.push(GlusterNode {
                host: host.to_string(),
                address: address.to_string(),
                mount: cluster::node_volume_source(lab.name(), host),
                state,
                glusterd,
                client: None,
                extra_clients: Vec::new(),
            });
        }
        // glusterd answers its CLI once its socket exists.
        for node in &gluster.nodes {
            let socket = node.state.join("run/glusterd.socket");
            assert!(
                super::wait_until(Duration::from_secs(20), || socket.exists()),
                "glusterd on {} never opened {}: {}",
                node.host,
                socket.display(),
                std::fs::read_to_string(node.state.join("log/glusterd.out")).unwrap_or_default()
            );
        }
        let first = &gluster.nodes[0];
        for other in &gluster.nodes[1..] {
            gluster.cli_ok(first, &["peer", "probe", &other.address]);
        }
        let bricks: Vec<String> = gluster
            .nodes
            .iter()
            .map(|node| format!("{}:{}", node.address, node.state.join("brick").display()))
            .collect();
        let replica = gluster.nodes.len().to_string();
        let mut create = vec!["volume", "create", VOLUME];
        if gluster.nodes.len() > 1 {
            create.extend(["replica", &replica]);
        }
        create.extend(bricks.iter().map(String::as_str));
        create.push("force");
        // Probed peers take a moment to be "in cluster" everywhere.
        let mut last = None;
        let created = super::wait_until(Duration::from_secs(20), || {
            let output = gluster.cli(first, &create);
            let ok = output.status.success();
            last = Some(output);
            ok
        });
        assert!(created, "volume create: {}", describe(&last.unwrap()));
        // A lost node should cost seconds, not the default 42 s: clients give a silent brick
        // up after 2 s (`network.ping-timeout`), and bricks drop a silent client — and with it
        // the locks it held, which block every other client's writes to those files — after
        // about 3 s instead of the 42 s of `server.tcp-user-timeout` (or the 38 s of the
        // default keepalive: 20 s idle, 9 probes 2 s apart).
        // `VIPGATE_GLUSTER_BRICK_DEFAULTS` set keeps the bricks' defaults, to see what they cost
        // (ARCHITECTURE.md, *GlusterFS failures*).
        let brick_defaults = std::env::var_os("VIPGATE_GLUSTER_BRICK_DEFAULTS").is_some();
        let options = [
            ("network.ping-timeout", "2"),
            ("server.tcp-user-timeout", "3"),
            ("server.keepalive-time", "1"),
            ("server.keepalive-interval", "1"),
            ("server.keepalive-count", "2"),
        ];
        let count = if brick_defaults { 1 } else { options.len() };
        for (option, value) in &options[..count] {
            gluster.cli_ok(first, &["volume", "set", VOLUME, option, value]);
        }
        gluster.cli_ok(first, &["volume", "start", VOLUME]);
        for index in 0..gluster.nodes.len() {
            gluster.mount(lab, index);
        }
        gluster
    }

    /// `gluster volume set` of the volume, through the first node.
    #[allow(dead_code, reason = "only some test files change volume options")]
    pub fn set_option(&self, key: &str, value: &str) {
        self.cli_ok(&self.nodes[0], &["volume", "set", VOLUME, key, value]);
    }

    /// Runs the gluster CLI against `node`'s glusterd (inside its mount namespace, where its
    /// socket is).
    fn cli(&self, node: &GlusterNode, args: &[&str]) -> Output {
        Command::new("nsenter")
            .args(["-t", &node.glusterd.id().to_string(), "-m", "-n"])
            .args(["gluster", "--mode=script"])
            .arg(format!("--glusterd-sock={SOCKET}"))
            .args(args)
            .output()
            .unwrap()
    }

    fn cli_ok(&self, node: &GlusterNode, args: &[&str]) {
        let output = self.cli(node, args);
        assert!(
            output.status.success(),
            "gluster {args:?} on {}: {}",
            node.host,
            describe(&output)
        );
    }

    /// Mounts the volume on node `index` with `--aux-gfid-mount` at its node volume source.
    fn mount(&mut self, lab: &Lab, index: usize) {
        let mount = self.nodes[index].mount.clone();
        let client = self.start_client(lab, index, &mount, &["--aux-gfid-mount".to_owned()]);
        self.nodes[index].client = Some(client);
    }

    /// Mounts the volume (or its `subdirectory`) on `host`, with `aux-gfid-mount` if `aux`, at
    /// a fresh directory of the node; returns the mount point.
    pub fn mount_other(
        &mut self,
        lab: &Lab,
        host: &str,
        subdirectory: Option<&str>,
        aux: bool,
    ) -> PathBuf {
        let index = self.index(host);
        let mount = self.nodes[index]
            .state
            .join(format!("other{}", self.nodes[index].extra_clients.len()));
        let mut options: Vec<String> = subdirectory
            .map(|path| format!("--subdir-mount={path}"))
            .into_iter()
            .collect();
        if aux {
            options.push("--aux-gfid-mount".to_owned());
        }
        let client = self.start_client(lab, index, &mount, &options);
        self.nodes[index]
            .extra_clients
            .push((mount.clone(), client));
        mount
    }

    /// Starts a glusterfs client for node `index` in the node's network, mounting at `mount`
    /// on the machine (its own glusterd serves the volume file), and waits for the mount.
    fn start_client(&self, lab: &Lab, index: usize, mount: &Path, options: &[String]) -> Child {
        let node = &self.nodes[index];
        std::fs::create_dir_all(mount).unwrap();
        let netns = format!("--net=/run/netns/{}", lab.host(&node.host).unwrap().netns);
        let log = node.state.join("log").join(format!(
            "client-{}.log",
            mount.file_name().unwrap_or_default().to_string_lossy()
        ));
        let mut command = Command::new("nsenter");
        command
            .arg(netns)
            .arg("glusterfs")
            .arg("-N")
            .arg(format!("--volfile-server={}", node.address))
            .arg(format!("--volfile-id={VOLUME}"))
            .args(options)
            .arg(format!("--log-file={}", log.display()))
            .arg(mount)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        let client = lab.spawn(&node.host, command).unwrap();
        assert!(
            super::wait_until(Duration::from_secs(20), || is_glusterfs_mount(mount)
                && std::fs::read_dir(mount).is_ok()),
            "the volume never mounted at {} (log {})",
            mount.display(),
            log.display()
        );
        client
    }

    fn index(&self, host: &str) -> usize {
        self.nodes
            .iter()
            .position(|node| node.host == host)
            .unwrap_or_else(|| panic!("no GlusterFS node {host}"))
    }

    /// Where node `host` has the volume mounted on the machine.
    pub fn mount_of(&self, host: &str) -> &Path {
        &self.nodes[self.index(host)].mount
    }

    /// The pids of the brick processes, from glusterd's pid files.
    fn brick_pids(&self) -> Vec<i32> {
        self.nodes
            .iter()
            .flat_map(|node| {
                let vols = node.state.join("run/vols").join(VOLUME);
                std::fs::read_dir(vols)
                    .into_iter()
                    .flatten()
                    .flatten()
                    .filter(|entry| entry.path().extension().is_some_and(|ext| ext == "pid"))
                    .filter_map(|entry| std::fs::read_to_string(entry.path()).ok())
                    .filter_map(|text| text.trim().parse::<i32>().ok())
                    .collect::<Vec<_>>()
            })
            .collect()
    }
}

/// Whether `path` is a GlusterFS FUSE mount point in this mount namespace.
pub fn is_glusterfs_mount(path: &Path) -> bool {
    let text = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    gateway::gfid::mount_entries(&text).any(|entry| {
        Path::new(&entry.mount_point) == path && entry.fstype == gateway::gfid::GLUSTERFS_FSTYPE
    })
}

/// Whether the glusterfs tools are installed here (`tests/run` installs them).
pub fn installed() -> bool {
    ["glusterd", "glusterfs", "gluster"].iter().all(|program| {
        std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/sbin")])
            .any(|dir| dir.join(program).is_file())
    })
}

fn kill(pid: i32, signal: nix::sys::signal::Signal) {
    let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), signal);
}

/// Whether `pid` runs a GlusterFS program (so that a recycled pid is never signalled).
fn is_gluster_process(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .is_ok_and(|comm| comm.trim_end().starts_with("gluster"))
}

impl Drop for Gluster {
    fn drop(&mut self) {
        use nix::sys::signal::Signal;
        let mounts = self.nodes.iter().flat_map(|node| {
            std::iter::once(&node.mount).chain(node.extra_clients.iter().map(|(mount, _)| mount))
        });
        for mount in mounts {
            if let Ok(path) = std::ffi::CString::new(mount.as_os_str().as_encoded_bytes()) {
                // SAFETY: `path` is NUL-terminated; umount2 only reads it.
                unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
            }
        }
        let bricks: Vec<i32> = self
            .brick_pids()
            .into_iter()
            .filter(|pid| is_gluster_process(*pid))
            .collect();
        let mut children: Vec<&mut Child> = Vec::new();
        for node in &mut self.nodes {
            if let Some(client) = node.client.as_mut() {
                children.push(client);
            }
            children.extend(node.extra_clients.iter_mut().map(|(_, client)| client));
            children.push(&mut node.glusterd);
        }
        for child in &children {
            kill(i32::try_from(child.id()).unwrap_or(0), Signal::SIGTERM);
        }
        for pid in &bricks {
            kill(*pid, Signal::SIGTERM);
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        for child in children {
            while matches!(child.try_wait(), Ok(None)) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in bricks {
            if is_gluster_process(pid) {
                kill(pid, Signal::SIGKILL);
            }
        }
    }
}

impl Gluster {
    /// The entries the replicate translator still marks as needing a heal, summed over every
    /// brick: the GFID links in `<brick>/.glusterfs/indices/xattrop` and `.../dirty` (AFR adds one
    /// for every file a write reached on fewer than all bricks and removes it once healed),
    /// without their base files (`xattrop-<uuid>`, `dirty-<uuid>`). Read from the bricks
    /// directly: `gluster volume heal VOLUME info` runs `glfsheal`, which fetches its volume file
    /// through the machine's `/var/run/glusterd.socket` unless told otherwise, not the lab's.
    pub fn heal_pending(&self) -> u64 {
        self.heal_entries().len() as u64
    }

    /// The entries [`Gluster::heal_pending`] counts, as `<host>/<index>/<gfid>`.
    pub fn heal_entries(&self) -> Vec<String> {
        self.nodes
            .iter()
            .flat_map(|node| {
                ["xattrop", "dirty"].into_iter().flat_map(|index| {
                    let directory = node.state.join("brick/.glusterfs/indices").join(index);
                    std::fs::read_dir(directory)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .map(|entry| entry.file_name().to_string_lossy().into_owned())
                        .filter(|name| !name.starts_with("xattrop-") && !name.starts_with("dirty-"))
                        .map(|name| format!("{}/{index}/{name}", node.host))
                        .collect::<Vec<_>>()
                })
            })
            .collect()
    }
}

/// What a lab's GlusterFS left behind, to be called after the lab's teardown: processes named
/// `gluster*` still in one of the lab's network namespaces (`netns_inodes`, read before the
/// teardown with [`netns_inodes`]) and mounts whose mount point names the lab.
pub fn leftovers(lab_name: &str, netns_inodes: &[u64]) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    let mut found: Vec<String> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| is_gluster_process(*pid))
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|ns| netns_inodes.contains(&ns.ino()))
        })
        .map(|pid| {
            let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            format!("process {pid} {}", comm.trim_end())
        })
        .collect();
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    found.extend(
        gateway::gfid::mount_entries(&mountinfo)
            .filter(|entry| entry.mount_point.contains(lab_name))
            .map(|entry| format!("mount {} ({})", entry.mount_point, entry.fstype)),
    );
    found
}

/// The inodes of the network namespaces of `lab`'s hosts, for [`leftovers`].
pub fn netns_inodes(lab: &Lab) -> Vec<u64> {
    use std::os::unix::fs::MetadataExt;
    lab.plan()
        .hosts_of(Role::Node)
        .filter_map(|host| std::fs::metadata(format!("/run/netns/{}", host.netns)).ok())
        .map(|metadata| metadata.ino())
        .collect()
}
