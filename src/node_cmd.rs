//! `vipgate node`: the node daemon. Finds this node in the cluster file, starts the services it
//! serves (the NFS gateway on 2049 with portmap on 111), then runs [`vipd::daemon::run`] with
//! their health probes until SIGTERM or SIGINT, when it hands its addresses over, stops the
//! services and exits.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use cluster_config::{ClusterConfig, Node};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vipd::health::{NFS_PROGRAM, Probe, RpcNullProbe};

use crate::Globals;
use crate::ctl_cmd::NodeDaemonArgs;
use crate::nfs_cmd::NfsServer;

/// How long the NFS probe waits for the gateway's answer to a NULL call.
const NFS_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

pub fn run_daemon(args: &NodeDaemonArgs, globals: &Globals) -> anyhow::Result<ExitCode> {
    // A daemon must see a closed socket as an error, not die of SIGPIPE (main restored the
    // default action for the short-lived commands).
    // SAFETY: called before the runtime starts any thread; SIG_IGN is a valid action.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_IGN);
    }
    let config = cluster_config::load(&args.config)
        .with_context(|| format!("cannot use the cluster file {}", args.config.display()))?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .max_blocking_threads(gateway::Limits::default().requests_in_flight + 16)
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let node = find_self(&config, args.name.as_deref()).await?;
        let mut services = Services::default();
        start_nfs(&config, &node, &mut services)?;
        let options = vipd::daemon::DaemonOptions {
            data_dir: args
                .data_dir
                .clone()
                .unwrap_or_else(|| config.cluster.data_dir.clone()),
            socket: globals.socket.clone(),
            node,
            config,
            probes: std::mem::take(&mut services.probes),
            published: None,
            join: args.join,
        };
        let result = vipd::daemon::run(options, shutdown_signal()).await;
        // The services stop only after the daemon handed this node's addresses over, so the
        // clients of a moving address are served until it leaves.
        services.stop().await;
        result.context("the node stopped")
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The services a node runs beside the VIP daemon: their health probes, and their tasks, which
/// stop when the daemon has stopped.
#[derive(Debug, Default)]
struct Services {
    probes: Vec<Arc<dyn Probe>>,
    stop: CancellationToken,
    tasks: Vec<(&'static str, JoinHandle<anyhow::Result<()>>)>,
}

impl Services {
    fn spawn(
        &mut self,
        name: &'static str,
        task: impl Future<Output = anyhow::Result<()>> + Send + 'static,
    ) {
        self.tasks.push((name, tokio::spawn(task)));
    }

    async fn stop(self) {
        self.stop.cancel();
        for (name, task) in self.tasks {
            match task.await {
                Ok(Ok(())) => {}
                Ok(Err(error)) => tracing::error!(service = name, "{error:#}"),
                Err(error) => tracing::error!(service = name, %error, "the service task failed"),
            }
        }
    }
}

/// The NFS gateway on the standard ports, with its RPC NULL probe, when the file exports
/// anything over NFSv3.
fn start_nfs(config: &ClusterConfig, node: &Node, services: &mut Services) -> anyhow::Result<()> {
    let ports = gateway::Ports {
        nfs: 2049,
        portmap: 111,
    };
    let Some(server) = NfsServer::prepare(config, &node.name, ports)? else {
        return Ok(());
    };
    services.probes.push(Arc::new(RpcNullProbe::new(
        "nfs",
        SocketAddr::from((Ipv4Addr::LOCALHOST, ports.nfs)),
        NFS_PROGRAM,
        3,
        NFS_PROBE_TIMEOUT,
    )));
    let stop = services.stop.clone();
    services.spawn("nfs", async move {
        server.serve(stop).await.context("the NFS server failed")
    });
    Ok(())
}

/// This node: the one named, or the one whose cluster address is configured here.
async fn find_self(config: &ClusterConfig, name: Option<&str>) -> anyhow::Result<Node> {
    if let Some(name) = name {
        return config.node_by_name(name).cloned().with_context(|| {
            format!(
                "there is no node {name:?} in the cluster file (nodes: {})",
                config
                    .nodes
                    .iter()
                    .map(|node| node.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )
        });
    }
    let local = local_addresses().await?;
    let mine: Vec<&Node> = config
        .nodes
        .iter()
        .filter(|node| local.contains(&node.cluster_address))
        .collect();
    match mine.as_slice() {
        [node] => Ok((*node).clone()),
        [] => bail!(
            "none of the cluster addresses in the cluster file is configured on this machine; \
             pass --name NODE"
        ),
        several => bail!(
            "several nodes' cluster addresses are configured here ({}); pass --name NODE",
            several
                .iter()
                .map(|node| node.name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

async fn local_addresses() -> anyhow::Result<Vec<IpAddr>> {
    use vipd::apply::AddressApplier as _;
    let (connection, handle, _) =
        rtnetlink::new_connection().context("cannot open netlink to read local addresses")?;
    let task = tokio::spawn(connection);
    let addresses = vipd::apply::NetlinkApplier::new(handle)
        .addresses()
        .await
        .context("cannot read local addresses")?;
    task.abort();
    Ok(addresses
        .into_iter()
        .map(|address| address.address.addr())
        .collect())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate());
    match terminate {
        Ok(mut terminate) => {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = terminate.recv() => {}
            }
        }
        Err(error) => {
            tracing::warn!(%error, "cannot listen for SIGTERM; only SIGINT stops the node");
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
