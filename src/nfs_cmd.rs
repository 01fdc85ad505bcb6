//! `vipgate nfs`: serve the cluster file's NFS exports from this machine, standalone, until
//! SIGTERM or SIGINT — portmap on 111 and NFSv3 with MOUNT on 2049, on every address. `vipgate
//! node` will start the same server (`gateway::serve`) next to the VIP daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, bail};
use clap::Args;
use cluster_config::ClusterConfig;
use gateway::handle::HandleKey;
use gateway::hostname::SystemHostNames;
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
    /// TCP port of portmap/rpcbind.
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

/// The NFS service of the cluster file's exports with its bound listeners, ready to serve.
pub struct NfsServer {
    service: Service,
    listeners: Vec<std::net::TcpListener>,
}

impl std::fmt::Debug for NfsServer {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NfsServer")
            .field("listeners", &self.listeners)
            .finish_non_exhaustive()
    }
}

impl NfsServer {
    /// Checks the exports (each must resolve and produce handles) and binds NFS and portmap on
    /// every address; `None` when the file exports nothing over NFSv3.
    pub fn prepare(
        config: &ClusterConfig,
        node: &str,
        ports: Ports,
    ) -> anyhow::Result<Option<NfsServer>> {
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
        let portmap = gateway::server::bind_wildcard(ports.portmap).map_err(|error| {
            let hint = if error.kind() == std::io::ErrorKind::AddrInUse {
                " (a system rpcbind? registering with it is not supported yet; stop it)"
            } else {
                ""
            };
            anyhow::anyhow!(
                "cannot listen on portmap port {}{hint}: {error}",
                ports.portmap
            )
        })?;
        listeners.extend(portmap);
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
        Ok(Some(NfsServer { service, listeners }))
    }

    /// Serves until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) -> std::io::Result<()> {
        gateway::serve(
            Arc::new(self.service),
            self.listeners,
            Limits::default(),
            shutdown,
        )
        .await
    }
}
