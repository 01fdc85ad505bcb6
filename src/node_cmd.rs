//! `vipgate node`: the node daemon. Finds this node in the cluster file, then runs
//! [`vipd::daemon::run`] until SIGTERM or SIGINT, when it hands its addresses over and stops.

use std::net::IpAddr;
use std::process::ExitCode;

use anyhow::{Context, bail};
use cluster_config::{ClusterConfig, Node};

use crate::Globals;
use crate::ctl_cmd::NodeDaemonArgs;

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
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async {
        let node = find_self(&config, args.name.as_deref()).await?;
        let options = vipd::daemon::DaemonOptions {
            data_dir: args
                .data_dir
                .clone()
                .unwrap_or_else(|| config.cluster.data_dir.clone()),
            socket: globals.socket.clone(),
            node,
            config,
        };
        vipd::daemon::run(options, shutdown_signal())
            .await
            .context("the node stopped")
    })?;
    Ok(ExitCode::SUCCESS)
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
