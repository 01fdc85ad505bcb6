//! `vipgate node`: the node daemon. Finds this node in the cluster file, starts the services it
//! serves (the NFS gateway on 2049 with portmap on 111; the DNS server of the `dns` section;
//! smbd, supervised, when `smb.manage`), then runs [`vipd::daemon::run`] with their health
//! probes until SIGTERM or SIGINT, when it hands its addresses over, stops the services and
//! exits.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use cluster_config::{ClusterConfig, Node};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use vipd::health::{NFS_PROGRAM, Probe, RpcNullProbe};
use vipd::state::ClusterState;

use crate::Globals;
use crate::ctl_cmd::NodeDaemonArgs;
use crate::nfs_cmd::NfsServer;

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
        let data_dir = args
            .data_dir
            .clone()
            .unwrap_or_else(|| config.cluster.data_dir.clone());
        let mut services = Services::default();
        start_nfs(&config, &node, &mut services)?;
        start_smb(&config, &args.config, &data_dir, &mut services)?;
        let published = start_dns(&config, &mut services)?;
        let options = vipd::daemon::DaemonOptions {
            data_dir,
            socket: globals.socket.clone(),
            node,
            config,
            probes: std::mem::take(&mut services.probes),
            published,
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
        udp: true,
    };
    let Some(server) = NfsServer::prepare(config, &node.name, ports)? else {
        return Ok(());
    };
    services.probes.push(Arc::new(RpcNullProbe::new(
        "nfs",
        SocketAddr::from((Ipv4Addr::LOCALHOST, ports.nfs)),
        NFS_PROGRAM,
        3,
        // The monitor gives up on a probe after the same time (timings.health_timeout).
        config.timings.health_timeout,
    )));
    let stop = services.stop.clone();
    services.spawn("nfs", async move {
        server.serve(stop).await.context("the NFS server failed")
    });
    Ok(())
}

/// How often the cluster file is re-read for changes of the `smb` section.
const SMB_CONFIG_POLL: Duration = Duration::from_secs(2);
/// How long smbd gets between SIGTERM and SIGKILL when the node stops.
const SMBD_STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// smbd, supervised, with its health probe, when the cluster file says `smb.manage: true`; and
/// a task that re-renders `smb.conf` when the cluster file's `smb` section changes.
fn start_smb(
    config: &ClusterConfig,
    config_path: &std::path::Path,
    data_dir: &std::path::Path,
    services: &mut Services,
) -> anyhow::Result<()> {
    use gateway::smb::{Backoff, NegotiateProbe, SambaPaths, Smbd, SmbdOptions};
    if !config.smb.manage {
        return Ok(());
    }
    let paths = SambaPaths::under(data_dir);
    let text = gateway::smb::render(config, &paths).with_context(|| {
        format!(
            "smb.manage is true, but smb.conf cannot be rendered from {}",
            config_path.display()
        )
    })?;
    let program = gateway::smb::supervise::find_program("smbd")
        .context("smb.manage is true, but smbd cannot be run")?;
    let options = SmbdOptions {
        program,
        paths: paths.clone(),
        backoff: Backoff::default(),
        stop_timeout: SMBD_STOP_TIMEOUT,
    };
    let (smbd, handle) = Smbd::prepare(options, &text)?;
    services.probes.push(Arc::new(SmbdProbe {
        name: "smbd 127.0.0.1:445".to_owned(),
        handle: handle.clone(),
        negotiate: NegotiateProbe {
            address: SocketAddr::from((Ipv4Addr::LOCALHOST, 445)),
            timeout: config.timings.health_timeout,
        },
    }));
    let stop = services.stop.clone();
    services.spawn("smbd", async move {
        smbd.run(stop).await;
        Ok(())
    });
    let stop = services.stop.clone();
    let config_path = config_path.to_owned();
    services.spawn("smb.conf", async move {
        follow_smb_config(config_path, paths, handle, stop).await;
        Ok(())
    });
    Ok(())
}

/// Re-reads the cluster file every [`SMB_CONFIG_POLL`]; when it changed and still renders,
/// hands the new `smb.conf` to the supervisor, which rewrites it and reloads smbd if the text
/// differs. Other sections of the file need a restart of the node to take effect.
async fn follow_smb_config(
    config_path: std::path::PathBuf,
    paths: gateway::smb::SambaPaths,
    handle: gateway::smb::SmbdHandle,
    stop: CancellationToken,
) {
    let mut last = std::fs::read(&config_path).ok();
    let mut interval = tokio::time::interval(SMB_CONFIG_POLL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = interval.tick() => {}
        }
        let Ok(current) = std::fs::read(&config_path) else {
            continue;
        };
        if last.as_ref() == Some(&current) {
            continue;
        }
        last = Some(current);
        let rendered = cluster_config::load(&config_path)
            .map_err(anyhow::Error::from)
            .and_then(|config| {
                if !config.smb.manage {
                    tracing::warn!(
                        "smb.manage was turned off in {}; smbd keeps running until the node restarts",
                        config_path.display()
                    );
                }
                Ok(gateway::smb::render(&config, &paths)?)
            });
        match rendered {
            Ok(text) => {
                if !handle.reload(text).await {
                    return;
                }
            }
            Err(error) => tracing::error!(
                "the changed cluster file {} gives no smb.conf; smbd keeps the previous one: {error:#}",
                config_path.display()
            ),
        }
    }
}

/// The node's smbd health: smbd runs under the supervisor, and port 445 answers an SMB2
/// NEGOTIATE.
#[derive(Debug)]
struct SmbdProbe {
    name: String,
    handle: gateway::smb::SmbdHandle,
    negotiate: gateway::smb::NegotiateProbe,
}

impl Probe for SmbdProbe {
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> Result<(), String> {
        self.handle.state().running()?;
        self.negotiate.negotiate().map(|_| ())
    }
}

/// The DNS server on the `dns` section's addresses, when the file has one. It answers from a
/// view rebuilt whenever the replicated live set changes (the daemon publishes its applied
/// state on the returned channel), so every node answers the same.
fn start_dns(
    config: &ClusterConfig,
    services: &mut Services,
) -> anyhow::Result<Option<watch::Sender<Arc<ClusterState>>>> {
    let Some(section) = &config.dns else {
        return Ok(None);
    };
    let zone = Arc::new(dns::Zone::new(section, &config.nodes));
    let server = dns::DnsServer::bind(&section.listen, dns::server::Limits::default())
        .context("cannot start the DNS server")?;
    tracing::info!(
        zone = zone.apex(),
        listen = dns::server::describe(&section.listen),
        "serving DNS"
    );
    let (published, mut states) = watch::channel(Arc::new(ClusterState::default()));
    let (views, view) = watch::channel(Arc::new(dns::View::empty(zone.clone())));
    let stop = services.stop.clone();
    services.spawn("dns view", async move {
        let mut serial = 0;
        loop {
            let state = states.borrow_and_update().clone();
            // The serial moves with every change of the live set, identically on every node.
            if state.live_serial != serial {
                serial = state.live_serial;
                let view = dns::View::new(zone.clone(), &state.live_vips(), serial);
                views.send_replace(Arc::new(view));
            }
            tokio::select! {
                () = stop.cancelled() => return Ok(()),
                changed = states.changed() => {
                    if changed.is_err() {
                        return Ok(());
                    }
                }
            }
        }
    });
    let stop = services.stop.clone();
    services.spawn("dns", async move {
        server.serve(view, stop).await;
        Ok(())
    });
    Ok(Some(published))
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
