//! `vipgate nfs`: serve the cluster file's NFS exports from this machine, standalone, until
//! SIGTERM or SIGINT — portmap on 111 and NFSv3 with MOUNT on 2049, on every address. `vipgate
//! node` starts the same server ([`NfsServer`]) next to the VIP daemon. When a system rpcbind
//! already holds 111, the server registers MOUNT and NFS with it instead, checks every
//! [`RPCBIND_CHECK`] that they are still there (rpcbind restarted), and removes them when it stops.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use cluster_config::ClusterConfig;
use gateway::handle::HandleKey;
use gateway::hostname::SystemHostNames;
use gateway::rpcbind_client::{Registration, RpcbindClient};
use gateway::{ExportSpec, Limits, Ports, Service, ServiceOptions};
use tokio_util::sync::CancellationToken;

use crate::{DEFAULT_CONFIG, Globals};

#[derive(Debug, Args)]
pub struct NfsArgs {
    /// The cluster file.
    #[arg(long, env = "VIPGATE_CONFIG", default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// This node's name in the cluster file (checked to exist; used in logs).
    #[arg(long)]
    name: Option<String>,
    /// TCP port of NFS and MOUNT.
    #[arg(long, default_value_t = 2049)]
    nfs_port: u16,
    /// TCP port of portmap/rpcbind. When a system rpcbind holds it, NFS and MOUNT are
    /// registered with that rpcbind instead.
    #[arg(long, default_value_t = 111)]
    portmap_port: u16,
}

pub fn run(args: NfsArgs, _globals: &Globals) -> anyhow::Result<ExitCode> {
    let config = cluster_config::load(&args.config)
        .map_err(|error| anyhow::anyhow!("{error}"))
        .with_context(|| format!("cannot load {}", args.config.display()))?;
    let node = match &args.name {
        Some(name) => {
            if config.node_by_name(name).is_none() {
                bail!("{} has no node named {name}", args.config.display());
            }
            name.clone()
        }
        None => "standalone".to_owned(),
    };
    // A daemon must see a closed socket as an error, not die of SIGPIPE (main restores the
    // default action for the short-lived commands).
    // SAFETY: setting a signal's disposition to SIG_IGN has no preconditions.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let ports = Ports {
        nfs: args.nfs_port,
        portmap: args.portmap_port,
        udp: true,
    };
    let Some(server) = NfsServer::prepare(&config, &node, ports)? else {
        bail!("{} has no NFSv3 export to serve", args.config.display());
    };

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .max_blocking_threads(Limits::default().requests_in_flight + 16)
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let shutdown = CancellationToken::new();
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .context("cannot listen for SIGTERM")?;
        let server = tokio::spawn(server.serve(shutdown.clone()));
        tokio::select! {
            result = tokio::signal::ctrl_c() => result.context("cannot listen for SIGINT")?,
            _ = terminate.recv() => {}
        }
        tracing::info!(node, "stopping");
        shutdown.cancel();
        server
            .await
            .context("the NFS server failed")?
            .context("the NFS server failed")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// How often the registrations with a system rpcbind are checked (and made again when it lost
/// them, as a restarted rpcbind does).
pub const RPCBIND_CHECK: std::time::Duration = std::time::Duration::from_secs(10);

/// The NFS service of the cluster file's exports with its bound listeners, ready to serve.
pub struct NfsServer {
    service: Service,
    listeners: Vec<std::net::TcpListener>,
    /// UDP sockets for portmap and MOUNT (`gateway::udp`), when `ports.udp`.
    datagrams: Vec<std::net::UdpSocket>,
    /// Set when the portmap port belongs to a system rpcbind that MOUNT and NFS are registered
    /// with.
    rpcbind: Option<RpcbindRegistration>,
}

/// MOUNT and NFS registered with the machine's rpcbind.
#[derive(Debug, Clone)]
struct RpcbindRegistration {
    client: RpcbindClient,
    registrations: Vec<Registration>,
    node: String,
}

impl std::fmt::Debug for NfsServer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NfsServer")
            .field("listeners", &self.listeners)
            .field("rpcbind", &self.rpcbind)
            .finish_non_exhaustive()
    }
}

impl NfsServer {
    /// Checks the exports (each must resolve and produce handles) and binds NFS and portmap on
    /// every address; `None` when the file exports nothing over NFSv3. When the portmap port is
    /// taken, registers MOUNT and NFS with the rpcbind holding it (its local socket, else TCP
    /// on that port of 127.0.0.1), and fails if nothing there registers them.
    pub fn prepare(
        config: &ClusterConfig,
        node: &str,
        ports: Ports,
    ) -> anyhow::Result<Option<NfsServer>> {
        for export in &config.nfs.exports {
            if !export.protocols.contains(&cluster_config::NfsVersion::V3) {
                tracing::warn!(
                    export = export.name,
                    "the export lists only NFSv4, which this version does not serve yet: \
                     it is not exported (add 3 to its protocols to serve it over NFSv3)"
                );
            }
        }
        let specs = ExportSpec::from_config(config);
        if specs.is_empty() {
            return Ok(None);
        }
        let secret = config
            .cluster
            .secret
            .read()
            .context("cannot read the cluster secret")?;
        let mut listeners = gateway::server::bind_wildcard(ports.nfs)
            .with_context(|| format!("cannot listen on NFS port {}", ports.nfs))?;
        // A system rpcbind (Debian pulls one in with nfs-common) may hold the portmap port:
        // then MOUNT and NFS are registered with it once the service is ready.
        let mut datagrams = Vec::new();
        if ports.udp {
            datagrams = gateway::udp::bind_wildcard(ports.nfs)
                .with_context(|| format!("cannot listen on UDP port {}", ports.nfs))?;
        }
        let rpcbind = match gateway::server::bind_wildcard(ports.portmap) {
            Ok(portmap) => {
                listeners.extend(portmap);
                // The system rpcbind, when there is one, holds UDP 111 as well.
                if ports.udp {
                    datagrams.extend(
                        gateway::udp::bind_wildcard(ports.portmap).with_context(|| {
                            format!("cannot listen on UDP port {}", ports.portmap)
                        })?,
                    );
                }
                None
            }
            Err(error) if error.kind() == std::io::ErrorKind::AddrInUse => {
                Some(RpcbindClient::system(ports.portmap))
            }
            Err(error) => {
                return Err(error)
                    .with_context(|| format!("cannot listen on portmap port {}", ports.portmap));
            }
        };
        // Connections, calls in flight and the GFID resolver's kept descriptors all take
        // descriptors; the soft limit (often 1,024) is raised to the hard one, as servers do.
        match gateway::sys::raise_open_files_limit() {
            Ok(limit) => tracing::debug!(limit, "descriptor limit"),
            Err(error) => tracing::warn!(%error, "cannot raise the descriptor limit"),
        }
        let service = Service::new(
            specs,
            ServiceOptions {
                ports,
                handle_key: HandleKey::from_cluster_secret(&secret),
                write_verifier: None,
                host_names: Arc::new(SystemHostNames),
                handles: config.volume.handles,
            },
        )
        .context("cannot start the NFS service")?;
        for export in service.exports() {
            tracing::info!(
                node,
                export = export.name,
                path = %export.local_path.display(),
                mount = export.mount_path,
                "serving"
            );
        }
        let rpcbind = match rpcbind {
            Some(client) => Some(register_with_rpcbind(client, node, ports)?),
            None => None,
        };
        Ok(Some(NfsServer {
            service,
            listeners,
            datagrams,
            rpcbind,
        }))
    }

    /// Serves until `shutdown` is cancelled. With a system rpcbind, keeps the registrations
    /// there meanwhile and removes them as soon as `shutdown` is cancelled, before the
    /// connections are drained.
    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        // A child token, so that the registrations also go when serving ends with an error.
        let unregister = shutdown.child_token();
        let keeper = self
            .rpcbind
            .map(|registration| tokio::spawn(keep_registered(registration, unregister.clone())));
        let service = Arc::new(self.service);
        let udp = gateway::udp::UdpServer::spawn(service.clone(), self.datagrams)?;
        let served = gateway::serve(service, self.listeners, Limits::default(), shutdown).await;
        // As long as TCP connections get to finish their calls.
        let drain = Limits::default().drain;
        tokio::task::spawn_blocking(move || udp.stop(drain))
            .await
            .map_err(std::io::Error::other)?;
        unregister.cancel();
        if let Some(keeper) = keeper
            && let Err(error) = keeper.await
        {
            tracing::error!(%error, "the rpcbind registration task failed");
        }
        served
    }
}

/// Proves that the holder of the portmap port is rpcbind (a NULL call), removes stale entries
/// of MOUNT and NFS there (logged: an earlier gateway's, knfsd's) and registers ours.
fn register_with_rpcbind(
    client: RpcbindClient,
    node: &str,
    ports: Ports,
) -> anyhow::Result<RpcbindRegistration> {
    let registrations = gateway::rpcbind_client::registrations(ports.nfs, ports.udp);
    let mut session = client.connect().with_context(|| {
        format!(
            "portmap port {} is in use, but not by an rpcbind this server can register with",
            ports.portmap
        )
    })?;
    session
        .reconcile(&registrations)
        .context("cannot register MOUNT and NFS with the system rpcbind")?;
    tracing::info!(
        node,
        rpcbind = %session.endpoint(),
        dialect = ?session.dialect(),
        port = ports.nfs,
        "portmap port {} is held by a system rpcbind: MOUNT and NFS are registered with it",
        ports.portmap
    );
    Ok(RpcbindRegistration {
        client,
        registrations,
        node: node.to_owned(),
    })
}

/// Every [`RPCBIND_CHECK`], makes rpcbind's table hold the registrations again if it lost them
/// (a restarted rpcbind starts empty unless it saved its state); when `shutdown` is cancelled,
/// removes them. Failures are logged when the state changes, not at every check.
async fn keep_registered(registration: RpcbindRegistration, shutdown: CancellationToken) {
    let registration = Arc::new(registration);
    let mut interval = tokio::time::interval(RPCBIND_CHECK);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    interval.tick().await;
    let mut failing = false;
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            _ = interval.tick() => {}
        }
        let checked = registration.clone();
        let result = tokio::task::spawn_blocking(move || {
            let mut session = checked.client.connect()?;
            session.reconcile(&checked.registrations)
        })
        .await;
        match result {
            Ok(Ok(plan)) => {
                if !plan.is_empty() {
                    tracing::warn!(
                        node = registration.node,
                        missing = plan.set.len(),
                        "the system rpcbind had lost registrations (restarted?): registered again"
                    );
                } else if failing {
                    tracing::info!(
                        node = registration.node,
                        "the system rpcbind answers again; the registrations are in place"
                    );
                }
                failing = false;
            }
            Ok(Err(error)) => {
                if !failing {
                    let error = anyhow::Error::new(error);
                    tracing::warn!(
                        node = registration.node,
                        "cannot check the registrations with the system rpcbind: {error:#}"
                    );
                }
                failing = true;
            }
            Err(error) => tracing::error!(%error, "the rpcbind check failed"),
        }
    }
    let result = tokio::task::spawn_blocking(move || {
        let mut session = registration.client.connect()?;
        session.unregister(&registration.registrations)?;
        Ok::<_, gateway::rpcbind_client::RpcbindError>(registration)
    })
    .await;
    match result {
        Ok(Ok(registration)) => tracing::info!(
            node = registration.node,
            "MOUNT and NFS are no longer registered with the system rpcbind"
        ),
        Ok(Err(error)) => {
            let error = anyhow::Error::new(error);
            tracing::warn!("cannot remove the registrations from the system rpcbind: {error:#}");
        }
        Err(error) => tracing::error!(%error, "the rpcbind unregistration failed"),
    }
}
