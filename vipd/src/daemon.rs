//! The node daemon: the thin async shell around [`crate::node::NodeCore`].
//!
//! One tokio task owns the core and reads a closed set of events — a timer tick, a peer
//! message or link report from [`crate::transport`], a health report from [`crate::health`],
//! a control request from [`crate::control`], shutdown — and after each one persists and sends
//! what the core produced and drives the kernel: the addresses this node holds are reconciled
//! with [`crate::apply`] whenever the set changes and at every lease renewal, newly taken VIPs
//! are announced ([`crate::announce`]) in three rounds, and clients of a taken VIP get tickle
//! ACKs ([`crate::tickle`]); a released VIP's connections are reset before it is removed.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use cluster_config::{ClusterConfig, Node};
use tokio::sync::{mpsc, oneshot, watch};

use crate::announce::RawAnnouncer;
use crate::apply::{
    AddressApplier, AddressChange, HeldVip, NetlinkApplier, lifetime_for, reconcile,
};
use crate::control::{
    self, ClusterStatus, IpReport, IpStatus, NodeFlags, NodeStatus, RaftRole, Request, Response,
};
use crate::health::{self, MonitorSettings, Probe, VolumeProbe};
use crate::lease::{Pnn, duration_ms};
use crate::node::{NodeCore, NodeError, NodeSettings};
use crate::state::{ClusterState, Command, MemberConfig, VipConfig, VipPhase};
use crate::storage::{DiskLog, LogStore, NodeIdentity};
use crate::tickle::{Connection, Tickler};
use crate::transport::{Event as PeerEvent, Transport, TransportConfig};

/// How often the event loop runs when nothing else happens.
const LOOP_INTERVAL: Duration = Duration::from_millis(10);
/// How long a control command waits to see its effect in the applied state: under the control
/// server's own deadline (5 s), so that the client gets this node's answer, not a timeout.
const COMMAND_DEADLINE: Duration = Duration::from_millis(4500);
/// How long a clean shutdown waits for the cluster to take this node's VIPs.
const HANDOVER_DEADLINE: Duration = Duration::from_secs(4);
/// How often the client connections of held VIPs are listed and, when changed, replicated.
const CONNECTION_SCAN: Duration = Duration::from_secs(1);
/// Announcement rounds after a take: at once, then past Linux's 1 s neighbour locktime.
const ANNOUNCE_ROUNDS: [Duration; 3] = [
    Duration::ZERO,
    Duration::from_millis(1100),
    Duration::from_millis(2200),
];

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    #[error("{0}")]
    Setup(String),
    #[error(transparent)]
    Node(#[from] NodeError),
    #[error("cannot start the peer transport")]
    Transport(#[source] crate::transport::TransportError),
    #[error("cannot wait for the cluster to contact this node")]
    Join(#[source] crate::transport::TransportError),
}

/// What `vipgate node` was asked to run.
#[derive(Debug)]
pub struct DaemonOptions {
    pub config: ClusterConfig,
    /// This node's entry in the config.
    pub node: Node,
    /// Where the Raft log lives (the config's `data_dir` unless overridden).
    pub data_dir: PathBuf,
    /// The control socket.
    pub socket: PathBuf,
    /// Probes of the services this node runs (NFS, smbd), next to the volume probe: any one
    /// failing makes the node unhealthy, and it gives its VIPs up.
    pub probes: Vec<Arc<dyn Probe>>,
    /// Receives the applied state whenever it changes, for the services that follow it (DNS).
    pub published: Option<watch::Sender<Arc<ClusterState>>>,
    /// First start of a node added at runtime (`vipgate node --join`): instead of bootstrapping
    /// from the file, wait for the cluster to dial this node's cluster address, learn its PNN
    /// from it, and catch up by snapshot. Ignored once the data directory has an identity.
    pub join: bool,
}

/// How long a removed node lingers (holding nothing) so that the cluster can still count it
/// while removing it from the Raft configuration.
const REMOVED_LINGER: Duration = Duration::from_secs(10);
/// How often a control command not yet carried out is proposed again (a proposal made while
/// there was no leader is lost).
const COMMAND_RETRY: Duration = Duration::from_secs(1);

/// Where this node's PNN comes from at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IdentityPlan {
    /// The data directory says (every start after the first).
    Known(Pnn),
    /// The node's position in the cluster file: a new cluster's first start (`bootstrap`), or a
    /// log written before identities were recorded.
    FilePosition { bootstrap: bool },
    /// Wait for the cluster to dial this node and say.
    Join,
}

/// Decides where this node's PNN comes from (pure).
pub fn identity_plan(
    identity: Option<&NodeIdentity>,
    log_initialized: bool,
    join: bool,
    name: &str,
    cluster: &str,
) -> Result<IdentityPlan, String> {
    match identity {
        Some(identity) if identity.cluster != cluster => Err(format!(
            "the data directory belongs to cluster {:?}, not {cluster:?}",
            identity.cluster
        )),
        Some(identity) if identity.name != name => Err(format!(
            "the data directory belongs to node {:?}, not {name:?}",
            identity.name
        )),
        Some(identity) => Ok(IdentityPlan::Known(identity.pnn)),
        None if log_initialized => Ok(IdentityPlan::FilePosition { bootstrap: false }),
        None if join => Ok(IdentityPlan::Join),
        None => Ok(IdentityPlan::FilePosition { bootstrap: true }),
    }
}

/// Cluster addresses of the members, by PNN.
fn member_addresses(state: &ClusterState) -> BTreeMap<Pnn, IpAddr> {
    state
        .members
        .iter()
        .map(|(pnn, member)| (*pnn, member.cluster_address))
        .collect()
}

/// Where this node's peers are: every member, and every Raft peer that is no longer a member
/// but not yet out of the Raft configuration (at its last known address), so that a removed
/// node still hears that it was removed and still counts while the configuration shrinks.
fn peer_addresses<S: LogStore>(
    core: &NodeCore<S>,
    known: &BTreeMap<Pnn, IpAddr>,
) -> BTreeMap<Pnn, IpAddr> {
    let mut addresses = member_addresses(core.state());
    for pnn in core.voters().iter().chain(core.learners()) {
        if let (false, Some(address)) = (addresses.contains_key(pnn), known.get(pnn)) {
            addresses.insert(*pnn, *address);
        }
    }
    addresses
}

/// The transport's peers (by raft id) for these member addresses, without this node.
fn transport_peers(
    addresses: &BTreeMap<Pnn, IpAddr>,
    me: Pnn,
    port: u16,
) -> BTreeMap<u64, SocketAddr> {
    addresses
        .iter()
        .filter(|(pnn, _)| **pnn != me)
        .map(|(pnn, address)| (u64::from(*pnn) + 1, SocketAddr::new(*address, port)))
        .collect()
}

/// Where the cluster file and the replicated membership disagree (pure). After bootstrap the
/// replicated membership is the authority; these are warnings for the operator.
pub fn membership_drift(config: &ClusterConfig, state: &ClusterState) -> Vec<String> {
    let mut drift = Vec::new();
    if state.members.is_empty() {
        return drift;
    }
    for node in &config.nodes {
        match state.pnn_of_name(&node.name) {
            None => drift.push(format!(
                "the cluster file lists {} ({}), which is not a member: add it with \
                 `vipgate node add {} {}`, or drop it from the file",
                node.name, node.cluster_address, node.name, node.cluster_address
            )),
            Some(pnn) => {
                let known = state.members[&pnn].cluster_address;
                if known != node.cluster_address {
                    drift.push(format!(
                        "the cluster file gives {} the address {}, the cluster knows it at \
                         {known}: run `vipgate node set-address {} {}` or fix the file",
                        node.name, node.cluster_address, node.name, node.cluster_address
                    ));
                }
            }
        }
    }
    for member in state.members.values() {
        if config.node_by_name(&member.name).is_none() {
            drift.push(format!(
                "{} ({}) is a member but the cluster file does not list it",
                member.name, member.cluster_address
            ));
        }
    }
    drift
}

/// The `Configure` command for a cluster file; its digest identifies the content that matters.
pub fn configure_command(config: &ClusterConfig) -> Command {
    let members: Vec<MemberConfig> = config
        .nodes
        .iter()
        .map(|node| MemberConfig {
            pnn: pnn_of_node(node),
            name: node.name.clone(),
            cluster_address: node.cluster_address,
        })
        .collect();
    let vips: Vec<VipConfig> = config
        .public_addresses
        .iter()
        .map(|vip| VipConfig {
            address: vip.address.addr(),
            prefix_len: vip.address.prefix_len(),
            interface: vip.interface.clone(),
            // A list naming every node of the file means "every node", which includes the
            // nodes added later at runtime.
            nodes: (vip.eligible.len() < config.nodes.len()).then(|| {
                vip.eligible
                    .iter()
                    .filter_map(|id| config.node(*id))
                    .map(|node| node.name.clone())
                    .collect()
            }),
            weight: vip.weight,
        })
        .collect();
    let canonical = serde_json::to_vec(&(&members, &vips)).unwrap_or_default();
    Command::Configure {
        digest: format!("{:08x}", crc32fast::hash(&canonical)),
        members,
        vips,
    }
}

fn pnn_of_node(node: &Node) -> Pnn {
    u32::try_from(node.id.index()).unwrap_or(u32::MAX)
}

/// The core's clock: milliseconds on the monotonic clock from an arbitrary origin, placed a
/// day before the daemon started so that subtracting a hold-down or lease never saturates at 0.
fn millis_since(start: Instant) -> u64 {
    const ORIGIN_MS: u64 = 86_400_000;
    ORIGIN_MS + duration_ms(start.elapsed())
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(duration_ms)
        .unwrap_or(0)
}

/// A control command waiting to see its effect.
struct Pending {
    done: Done,
    /// At the deadline: an answer saying how far it got, when that is not a failure.
    progress: Option<Done>,
    /// Proposed again every [`COMMAND_RETRY`] until done.
    command: Command,
    proposed_at: Instant,
    reply: oneshot::Sender<Response>,
    deadline: Instant,
    started: Instant,
}

/// Runs the node until `shutdown` resolves; then hands its VIPs over and stops.
pub async fn run(
    options: DaemonOptions,
    shutdown: impl std::future::Future<Output = ()>,
) -> Result<(), DaemonError> {
    let config = &options.config;
    let mut shutdown = std::pin::pin!(shutdown);
    let started = Instant::now();
    let store = DiskLog::open(&options.data_dir).map_err(|error| {
        DaemonError::Setup(format!(
            "cannot open the raft log in {}: {error}",
            options.data_dir.display()
        ))
    })?;
    let identity = store
        .identity()
        .map_err(|error| DaemonError::Setup(error.to_string()))?;
    let plan = identity_plan(
        identity.as_ref(),
        store.is_initialized(),
        options.join,
        &options.node.name,
        &config.cluster.name,
    )
    .map_err(|error| DaemonError::Setup(format!("{} ({error})", options.data_dir.display())))?;
    let secret =
        config.cluster.secret.read().map_err(|error| {
            DaemonError::Setup(format!("cannot read the cluster secret: {error}"))
        })?;
    let listen = SocketAddr::new(options.node.cluster_address, config.cluster.port);
    let file_voters: Vec<Pnn> = config.nodes.iter().map(pnn_of_node).collect();
    let (me, bootstrap) = match plan {
        IdentityPlan::Known(pnn) => (pnn, None),
        IdentityPlan::FilePosition { bootstrap } => (
            pnn_of_node(&options.node),
            bootstrap.then_some(file_voters.as_slice()),
        ),
        IdentityPlan::Join => {
            tracing::info!(
                node = %options.node.name,
                address = %listen,
                "joining: waiting for the cluster to contact this node (run `vipgate node add {} {}` on a member)",
                options.node.name,
                options.node.cluster_address
            );
            let introduction = tokio::select! {
                introduction = crate::transport::learn_identity(listen, &secret, &config.cluster.name) => {
                    introduction.map_err(DaemonError::Join)?
                }
                () = &mut shutdown => return Ok(()),
            };
            let pnn = crate::node::pnn_of(introduction.node).ok_or_else(|| {
                DaemonError::Setup(format!(
                    "the cluster gave this node the invalid id {}",
                    introduction.node
                ))
            })?;
            tracing::info!(pnn, "this node is pnn {pnn} of the cluster");
            (pnn, None)
        }
    };
    let settings = NodeSettings::from_timings(
        me,
        config.timings.heartbeat,
        config.timings.election,
        config.timings.lease,
        options.node.primary_interface().to_owned(),
    );
    let ping_interval = Duration::from_millis(settings.ping_interval_ms);
    let mut core = NodeCore::new(
        settings,
        store.clone(),
        bootstrap,
        Some(configure_command(config)),
        millis_since(started),
        unix_ms(),
    )?;
    if identity.is_none() {
        store
            .set_identity(&NodeIdentity::new(
                &config.cluster.name,
                &options.node.name,
                me,
            ))
            .map_err(|error| DaemonError::Setup(error.to_string()))?;
    }
    if core.removed() {
        return Err(DaemonError::Setup(format!(
            "{} (pnn {me}) was removed from the cluster; to bring it back, run `vipgate node add {} ADDRESS` \
             on a member, empty {} and start it with --join",
            options.node.name,
            options.node.name,
            options.data_dir.display()
        )));
    }

    // The peers: the replicated members once known; before that the file (a new cluster) or,
    // for a joining node, every lower id (they dial it; their addresses come with the state).
    let mut known_addresses = member_addresses(core.state());
    let peers: BTreeMap<u64, SocketAddr> = if !known_addresses.is_empty() {
        transport_peers(&known_addresses, me, config.cluster.port)
    } else if bootstrap.is_some() || matches!(plan, IdentityPlan::FilePosition { .. }) {
        config
            .nodes
            .iter()
            .filter(|node| node.name != options.node.name)
            .map(|node| {
                (
                    u64::from(pnn_of_node(node)) + 1,
                    SocketAddr::new(node.cluster_address, config.cluster.port),
                )
            })
            .collect()
    } else {
        (1..u64::from(me) + 1)
            .map(|id| {
                (
                    id,
                    SocketAddr::new(IpAddr::from([0, 0, 0, 0]), config.cluster.port),
                )
            })
            .collect()
    };
    for warning in membership_drift(config, core.state()) {
        tracing::warn!("{warning}");
    }
    let (transport, mut peer_events) = Transport::start(TransportConfig {
        node: u64::from(me) + 1,
        listen,
        peers,
        secret,
        cluster_name: config.cluster.name.clone(),
        max_message: 16 << 20,
        idle_timeout: config.timings.lease.max(Duration::from_secs(2)),
    })
    .await
    .map_err(DaemonError::Transport)?;
    let mut listening_on = listen;

    let mut probes: Vec<Arc<dyn Probe>> = vec![Arc::new(
        VolumeProbe::new(config.volume.path.clone(), &options.node.name).map_err(|error| {
            DaemonError::Setup(format!("cannot set up the volume probe: {error}"))
        })?,
    )];
    probes.extend(options.probes.iter().cloned());
    let monitor = health::spawn_monitor(
        probes,
        MonitorSettings {
            interval: config.timings.health_interval,
            timeout: config.timings.health_timeout,
            ..MonitorSettings::default()
        },
    )
    .map_err(|error| DaemonError::Setup(format!("cannot start the health monitor: {error}")))?;
    let mut health_reports = monitor.subscribe();

    let (netlink, handle, _) = rtnetlink::new_connection()
        .map_err(|error| DaemonError::Setup(format!("cannot open netlink: {error}")))?;
    tokio::spawn(netlink);
    let applier = NetlinkApplier::new(handle);
    let managed: BTreeSet<IpAddr> = config
        .public_addresses
        .iter()
        .map(|vip| vip.address.addr())
        .collect();

    let (control_sender, mut control_requests) = mpsc::channel::<control::RequestEnvelope>(16);
    let (stop_control, control_stopped) = oneshot::channel::<()>();
    let control_socket =
        control::ControlSocket::bind(&options.socket, control::ServerLimits::default())
            .await
            .map_err(|error| DaemonError::Setup(error.to_string()))?;
    let control_task = tokio::spawn(control_socket.run(control_sender, async move {
        let _ = control_stopped.await;
    }));

    notify_ready();
    tracing::info!(node = %options.node.name, pnn = me, "node running");

    let mut kernel = Kernel {
        applier,
        managed,
        present: BTreeSet::new(),
        last_applied: None,
        last_renewal: Instant::now(),
        ping_interval,
        announcing: BTreeMap::new(),
        orphans: BTreeMap::new(),
    };
    let mut pending: Vec<Pending> = Vec::new();
    let mut interval = tokio::time::interval(LOOP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut stopping: Option<Instant> = None;
    let mut removed_since: Option<Instant> = None;
    let mut last_scan = Instant::now();
    // The applied index last published: the state changes only when it moves.
    let mut published_at = u64::MAX;
    loop {
        tokio::select! {
            () = &mut shutdown, if stopping.is_none() => {
                tracing::info!("shutting down: handing this node's addresses over");
                core.set_health(false, vec![crate::state::SHUTTING_DOWN.to_owned()]);
                stopping = Some(Instant::now());
            }
            _ = interval.tick() => {}
            Some(event) = peer_events.recv() => match event {
                PeerEvent::Message { from, payload } => {
                    core.set_time(millis_since(started), unix_ms());
                    core.receive(from, &payload);
                }
                PeerEvent::Unreachable { peer } => core.unreachable(peer),
                PeerEvent::Connected { .. } => {}
            },
            Ok(()) = health_reports.changed(), if stopping.is_none() => {
                let report = health_reports.borrow_and_update().clone();
                let failing = report
                    .failing
                    .iter()
                    .map(|(probe, reason)| format!("{probe}: {reason}"))
                    .collect();
                core.set_health(report.healthy, failing);
            }
            Some((request, reply)) = control_requests.recv() => {
                core.set_time(millis_since(started), unix_ms());
                handle_request(&mut core, request, reply, &mut pending);
            }
        }
        core.tick(millis_since(started), unix_ms());
        core.process_ready()?;
        for (to, payload) in core.take_outbox() {
            transport.send(to, payload);
        }
        kernel
            .drive(&mut core, || (millis_since(started), unix_ms()))
            .await;
        core.process_ready()?;
        for (to, payload) in core.take_outbox() {
            transport.send(to, payload);
        }
        answer_pending(&mut core, &mut pending);
        if let Some(published) = &options.published {
            let applied = core.raft_progress().2;
            if applied != published_at {
                published_at = applied;
                published.send_replace(Arc::new(core.state().clone()));
            }
        }
        if last_scan.elapsed() >= CONNECTION_SCAN {
            last_scan = Instant::now();
            report_connections(&mut core);
        }
        let addresses = peer_addresses(&core, &known_addresses);
        if !addresses.is_empty() && addresses != known_addresses {
            follow_membership(config, &core, &transport, &addresses, &mut listening_on).await;
            known_addresses = addresses;
        }
        if core.removed() {
            let since = *removed_since.get_or_insert_with(|| {
                tracing::warn!("this node was removed from the cluster; it stops");
                Instant::now()
            });
            if !core.in_raft_configuration() || since.elapsed() >= REMOVED_LINGER {
                break;
            }
        }
        if let Some(since) = stopping {
            let holds_nothing = core.state().held_by(me).next().is_none()
                && !core
                    .state()
                    .vips
                    .values()
                    .any(|vip| vip.owner == Some(me) && vip.phase == VipPhase::Releasing);
            if holds_nothing || since.elapsed() >= HANDOVER_DEADLINE {
                break;
            }
        }
    }
    kernel.release_all().await;
    for request in pending {
        let _ = request
            .reply
            .send(Response::error("the node is shutting down"));
    }
    let _ = stop_control.send(());
    let _ = control_task.await;
    monitor.shutdown();
    transport.shutdown().await;
    tracing::info!("node stopped");
    Ok(())
}

/// Follows a change of the members' addresses: the transport's peers, this node's own listener,
/// and warnings where the cluster file disagrees.
async fn follow_membership<S: LogStore>(
    config: &ClusterConfig,
    core: &NodeCore<S>,
    transport: &Transport,
    addresses: &BTreeMap<Pnn, IpAddr>,
    listening_on: &mut SocketAddr,
) {
    let me = core.pnn();
    transport.set_peers(transport_peers(addresses, me, config.cluster.port));
    if let Some(mine) = addresses.get(&me) {
        if *mine != listening_on.ip() {
            let wanted = SocketAddr::new(*mine, config.cluster.port);
            match transport.rebind(wanted).await {
                Ok(_) => *listening_on = wanted,
                Err(error) => tracing::error!(
                    %error,
                    "the cluster moved this node to {mine}, but it cannot listen there; \
                     configure the address here, or restart the node"
                ),
            }
        }
    }
    for warning in membership_drift(config, core.state()) {
        tracing::warn!("{warning}");
    }
}

/// The kernel side: which VIPs are configured here, kept equal to what the core holds.
struct Kernel {
    applier: NetlinkApplier,
    managed: BTreeSet<IpAddr>,
    /// What the kernel had after the last reconcile.
    present: BTreeSet<IpAddr>,
    /// The held set (address, interface, lifetime in seconds) at the last reconcile.
    last_applied: Option<HeldShape>,
    last_renewal: Instant,
    ping_interval: Duration,
    /// The announcement rounds under way, by VIP: cancelled when the VIP is released, so that a
    /// late round never points clients back at this node after it let the address go.
    announcing: BTreeMap<IpAddr, Arc<AtomicBool>>,
    /// Client connections found on released VIPs after their deletion (see
    /// [`Kernel::find_orphans`]), to be reported before the release is confirmed.
    orphans: BTreeMap<IpAddr, Vec<Connection>>,
}

impl Kernel {
    /// Reconciles when the held set or a lifetime changed, and at every ping interval to renew.
    /// The clock is read again after each reconcile: if the lease ran out while the netlink
    /// calls were under way (the daemon was paused), the addresses go at once.
    async fn drive<S: LogStore>(&mut self, core: &mut NodeCore<S>, clock: impl Fn() -> (u64, u64)) {
        let due = self.last_renewal.elapsed() >= self.ping_interval;
        let mut shape = held_shape(&core.held());
        if self.last_applied.as_ref() != Some(&shape) || due {
            // The lifetime only shrinks while the clock runs, so this settles in two rounds;
            // the bound is a guard.
            for _ in 0..3 {
                self.reconcile(&core.held(), core, &clock).await;
                self.last_applied = Some(shape);
                self.last_renewal = Instant::now();
                let (now_ms, now_unix_ms) = clock();
                core.set_time(now_ms, now_unix_ms);
                shape = held_shape(&core.held());
                if self.last_applied.as_ref() == Some(&shape) {
                    break;
                }
            }
        }
        self.hand_over_orphans(core);
        core.kernel_has(&self.present);
    }

    async fn reconcile<S: LogStore>(
        &mut self,
        held: &[HeldVip],
        core: &NodeCore<S>,
        clock: &impl Fn() -> (u64, u64),
    ) {
        let present = match self.applier.addresses().await {
            Ok(present) => present,
            Err(error) => {
                tracing::error!(%error, "cannot read the kernel's addresses");
                return;
            }
        };
        let before: BTreeSet<IpAddr> = present
            .iter()
            .map(|address| address.address.addr())
            .filter(|address| self.managed.contains(address))
            .collect();
        let mut after = before.clone();
        for change in reconcile(held, &present, &self.managed) {
            if let AddressChange::Remove { address, .. } = &change {
                if let Some(cancel) = self.announcing.remove(&address.addr()) {
                    cancel.store(true, Ordering::Relaxed);
                }
                // Clients of a released address learn at once instead of timing out.
                match crate::tickle::reset_connections(address.addr()) {
                    Ok(0) => {}
                    Ok(count) => {
                        tracing::info!(vip = %address.addr(), count, "reset client connections")
                    }
                    Err(error) => {
                        tracing::warn!(vip = %address.addr(), %error, "cannot reset connections")
                    }
                }
            }
            // `held` was decided before the kernel was read, and the daemon may have been
            // paused since (SIGSTOP, a stalled VM): an address is added or renewed only for
            // the lease left by the clock right now, and not at all once it is over, so a
            // paused daemon never puts back an address the cluster has moved meanwhile.
            let Some(change) = within_lease(change, core.lease_left_at(clock().0)) else {
                continue;
            };
            match self.applier.apply(&change).await {
                Ok(()) => match &change {
                    AddressChange::Add {
                        address, interface, ..
                    } => {
                        tracing::info!(vip = %address, interface, "took address");
                        after.insert(address.addr());
                        let clients: Vec<Connection> = core
                            .state()
                            .connections
                            .get(&address.addr())
                            .map(|known| known.iter().copied().collect())
                            .unwrap_or_default();
                        let cancel = Arc::new(AtomicBool::new(false));
                        if let Some(earlier) =
                            self.announcing.insert(address.addr(), cancel.clone())
                        {
                            earlier.store(true, Ordering::Relaxed);
                        }
                        announce(address.addr(), interface.clone(), clients, cancel);
                    }
                    AddressChange::Remove { address, interface } => {
                        tracing::info!(vip = %address, interface, "released address");
                        after.remove(&address.addr());
                        self.find_orphans(address.addr());
                    }
                    AddressChange::Renew { .. } => {}
                },
                Err(error) => tracing::error!(%change, %error, "cannot change an address"),
            }
        }
        self.present = after;
    }

    /// Looks, after `vip` was deleted, for client connections accepted between the reset that
    /// preceded the deletion and the deletion itself. Their RST cannot leave any more (the
    /// source address is gone), and a client waiting for a reply on one would wait forever:
    /// their server side is closed and they are handed to the next owner, which tickles them.
    fn find_orphans(&mut self, vip: IpAddr) {
        let found = match crate::tickle::established(&[vip]) {
            Ok(found) if found.is_empty() => return,
            Ok(found) => found,
            Err(error) => {
                tracing::warn!(%vip, %error, "cannot look for connections left behind");
                return;
            }
        };
        tracing::info!(%vip, count = found.len(), "connections accepted while releasing; handing them over");
        let _ = crate::tickle::reset_connections(vip);
        self.orphans.entry(vip).or_default().extend(found);
    }

    /// Reports the orphans found since the last call as connections of their VIP, so that the
    /// next owner tickles them; proposed before the release is confirmed (`kernel_has`).
    fn hand_over_orphans<S: LogStore>(&mut self, core: &mut NodeCore<S>) {
        let me = core.pnn();
        for (vip, orphans) in std::mem::take(&mut self.orphans) {
            let Some(state) = core.state().vips.get(&vip) else {
                continue;
            };
            if state.owner != Some(me) {
                continue;
            }
            let mut connections: BTreeSet<Connection> = core
                .state()
                .connections
                .get(&vip)
                .cloned()
                .unwrap_or_default();
            connections.extend(orphans);
            let command = Command::SetConnections {
                vip,
                by: me,
                connections: connections.into_iter().collect(),
            };
            if let Err(error) = core.propose_command(command) {
                tracing::debug!(%vip, error, "connections left behind not reported");
            }
        }
    }

    /// Removes every managed address this node has (at shutdown).
    async fn release_all(&mut self) {
        for cancel in std::mem::take(&mut self.announcing).into_values() {
            cancel.store(true, Ordering::Relaxed);
        }
        let present = match self.applier.addresses().await {
            Ok(present) => present,
            Err(_) => return,
        };
        for change in reconcile(&[], &present, &self.managed) {
            if let AddressChange::Remove { address, .. } = &change {
                let _ = crate::tickle::reset_connections(address.addr());
            }
            if let Err(error) = self.applier.apply(&change).await {
                tracing::error!(%change, %error, "cannot remove an address at shutdown");
            }
        }
    }
}

/// What of the held set the kernel sees: address, interface and whole-second lifetime.
type HeldShape = Vec<(ipnet::IpNet, String, Option<u32>)>;

fn held_shape(held: &[HeldVip]) -> HeldShape {
    held.iter()
        .map(|vip| {
            (
                vip.address,
                vip.interface.clone(),
                crate::apply::lifetime_for(vip.lease_left),
            )
        })
        .collect()
}

/// `change` with its lifetime cut to `lease_left` (an add or renewal), or `None` when the lease
/// leaves less than the shortest lifetime an address can have. Removals pass unchanged.
fn within_lease(mut change: AddressChange, lease_left: Duration) -> Option<AddressChange> {
    if let AddressChange::Add { lifetime, .. } | AddressChange::Renew { lifetime, .. } = &mut change
    {
        *lifetime = (*lifetime).min(lifetime_for(lease_left)?);
    }
    Some(change)
}

/// Announces a taken VIP in rounds, each followed by a tickle ACK to every client connection
/// the previous owner reported, so clients meet a RST from this node and reconnect at once.
/// Runs off the event loop; the rounds are spaced past Linux's neighbour locktime. Stops when
/// `cancel` is set (the VIP was released) or the kernel no longer has the address (a daemon
/// frozen mid-rounds wakes after its lease ended): a round after either would send clients to
/// this node, which no longer has the address, until the new owner's next round (1.1 s; the
/// failover benchmark measured exactly that after SIGCONT before this check).
fn announce(vip: IpAddr, interface: String, clients: Vec<Connection>, cancel: Arc<AtomicBool>) {
    tokio::task::spawn_blocking(move || {
        let tickler = if clients.is_empty() {
            None
        } else {
            Tickler::new()
                .map_err(|error| tracing::warn!(%vip, %error, "cannot open tickle sockets"))
                .ok()
        };
        let mut previous = Duration::ZERO;
        for delay in ANNOUNCE_ROUNDS {
            std::thread::sleep(delay.saturating_sub(previous));
            previous = delay;
            if cancel.load(Ordering::Relaxed) {
                tracing::debug!(%vip, "released: no more announcements");
                return;
            }
            // The cancel flag is set by the event loop, which a frozen daemon runs late: the
            // kernel, which deleted the address when the lease ran out, is asked too.
            match RawAnnouncer.announce_configured(vip, &interface) {
                Ok(true) => {}
                Ok(false) => {
                    tracing::info!(%vip, "no longer configured here: no more announcements");
                    return;
                }
                Err(error) => tracing::warn!(%vip, interface, %error, "cannot announce"),
            }
            if let Some(tickler) = &tickler {
                for client in &clients {
                    if let Err(error) = tickler.send_tickle(client) {
                        tracing::debug!(%vip, ?client, %error, "cannot tickle");
                    }
                }
            }
        }
        if !clients.is_empty() {
            tracing::info!(%vip, count = clients.len(), "tickled client connections");
        }
    });
}

/// Reports the established client connections of the VIPs this node holds, when they changed.
fn report_connections<S: LogStore>(core: &mut NodeCore<S>) {
    let me = core.pnn();
    let held: Vec<IpAddr> = core
        .state()
        .held_by(me)
        .map(|(address, _)| *address)
        .collect();
    if held.is_empty() {
        return;
    }
    let found = match crate::tickle::established(&held) {
        Ok(found) => found,
        Err(error) => {
            tracing::warn!(%error, "cannot list client connections");
            return;
        }
    };
    for vip in held {
        let current: BTreeSet<Connection> = found
            .iter()
            .filter(|connection| connection.server.ip() == vip)
            .take(crate::state::MAX_CONNECTIONS_PER_VIP)
            .copied()
            .collect();
        let known = core
            .state()
            .connections
            .get(&vip)
            .cloned()
            .unwrap_or_default();
        if current != known {
            let command = Command::SetConnections {
                vip,
                by: me,
                connections: current.into_iter().collect(),
            };
            if let Err(error) = core.propose_command(command) {
                tracing::debug!(%vip, error, "connections not reported");
            }
        }
    }
}

/// Tells systemd (Type=notify) that the node is up, if it asked.
fn notify_ready() {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let socket = match std::os::unix::net::UnixDatagram::unbound() {
        Ok(socket) => socket,
        Err(_) => return,
    };
    let path = PathBuf::from(path);
    if let Err(error) = socket.send_to(b"READY=1", &path) {
        tracing::warn!(%error, "cannot notify systemd");
    }
}

fn resolve_node(state: &ClusterState, which: &str) -> Result<Pnn, String> {
    let which = which.trim();
    if let Ok(pnn) = which.parse::<Pnn>() {
        if state.members.contains_key(&pnn) {
            return Ok(pnn);
        }
    }
    if let Some((pnn, _)) = state
        .members
        .iter()
        .find(|(_, member)| member.name == which)
    {
        return Ok(*pnn);
    }
    if let Ok(address) = which.parse::<IpAddr>() {
        if let Some((pnn, _)) = state
            .members
            .iter()
            .find(|(_, member)| member.cluster_address == address)
        {
            return Ok(*pnn);
        }
    }
    Err(format!("there is no node {which:?} in the cluster"))
}

fn node_name(state: &ClusterState, pnn: Pnn) -> String {
    state
        .members
        .get(&pnn)
        .map_or_else(|| format!("pnn {pnn}"), |member| member.name.clone())
}

fn handle_request<S: LogStore>(
    core: &mut NodeCore<S>,
    request: Request,
    reply: oneshot::Sender<Response>,
    pending: &mut Vec<Pending>,
) {
    let me = core.pnn();
    let target = |core: &NodeCore<S>, node: &Option<String>| -> Result<Pnn, String> {
        match node {
            Some(which) => resolve_node(core.state(), which),
            None => Ok(me),
        }
    };
    let mut progress: Option<Done> = None;
    let result: Result<(Option<Command>, Done), String> = match &request {
        Request::Status => return answer(reply, Response::Status(status(core))),
        Request::Ip { all } => return answer(reply, Response::Ips(ips(core, *all))),
        Request::MoveIp { address, node } => move_ip(core, *address, node),
        Request::Disable { node } | Request::Enable { node } => {
            let disabled = matches!(request, Request::Disable { .. });
            target(core, node).map(|pnn| {
                let name = node_name(core.state(), pnn);
                let word = if disabled { "disabled" } else { "enabled" };
                let done: Done = Box::new(move |state| {
                    state
                        .members
                        .get(&pnn)
                        .filter(|member| member.disabled == disabled)
                        .map(|_| format!("{name} is {word}"))
                });
                (
                    Some(Command::SetDisabled {
                        node: pnn,
                        disabled,
                    }),
                    done,
                )
            })
        }
        Request::Ban { node, seconds } => target(core, node).map(|pnn| {
            let until = unix_ms().saturating_add(seconds.saturating_mul(1000));
            let name = node_name(core.state(), pnn);
            let seconds = *seconds;
            let done: Done = Box::new(move |state| {
                state
                    .members
                    .get(&pnn)
                    .filter(|member| member.banned_until_unix_ms == Some(until))
                    .map(|_| format!("{name} is banned for {seconds}s"))
            });
            (
                Some(Command::Ban {
                    node: pnn,
                    until_unix_ms: Some(until),
                }),
                done,
            )
        }),
        Request::Unban { node } => target(core, node).map(|pnn| {
            let name = node_name(core.state(), pnn);
            let done: Done = Box::new(move |state| {
                state
                    .members
                    .get(&pnn)
                    .filter(|member| member.banned_until_unix_ms.is_none())
                    .map(|_| format!("{name} is no longer banned"))
            });
            (
                Some(Command::Ban {
                    node: pnn,
                    until_unix_ms: None,
                }),
                done,
            )
        }),
        Request::NodeAdd { name, address } => node_add(core.state(), name, *address),
        Request::NodeRemove { name } => {
            node_remove(core.state(), me, name).map(|(command, done, leaving)| {
                progress = Some(leaving);
                (command, done)
            })
        }
        Request::NodeSetAddress { name, address } => node_set_address(core.state(), name, *address),
    };
    match result {
        Err(message) => answer(reply, Response::error(message)),
        Ok((command, done)) => {
            if let Some(message) = done(core.state()) {
                return answer(reply, Response::Done { message });
            }
            let Some(command) = command else {
                return answer(reply, Response::error("nothing to do"));
            };
            // A proposal made without a leader is dropped; it is retried until the deadline.
            if let Err(message) = core.propose_command(command.clone()) {
                tracing::debug!(message, "command not proposed yet; retrying");
            }
            pending.push(Pending {
                done,
                progress,
                command,
                proposed_at: Instant::now(),
                reply,
                deadline: Instant::now() + COMMAND_DEADLINE,
                started: Instant::now(),
            });
        }
    }
}

/// `vipgate node add NAME ADDRESS`: checks, the command, and when it is done.
fn node_add(
    state: &ClusterState,
    name: &str,
    address: IpAddr,
) -> Result<(Option<Command>, Done), String> {
    crate::state::check_name(name)?;
    if let Some(pnn) = state.pnn_of_name(name) {
        return Err(format!("there is already a node {name:?} (pnn {pnn})"));
    }
    if let Some(member) = state
        .members
        .values()
        .find(|member| member.cluster_address == address)
    {
        return Err(format!(
            "{address} is already the cluster address of {}",
            member.name
        ));
    }
    check_cluster_address(address)?;
    let name = name.to_owned();
    let command = Command::AddMember {
        name: name.clone(),
        cluster_address: address,
    };
    let done: Done = Box::new(move |state| {
        let pnn = state.pnn_of_name(&name)?;
        Some(format!(
            "{name} is pnn {pnn} at {address}; start it with `vipgate node --join` and a cluster \
             file that lists it"
        ))
    });
    Ok((Some(command), done))
}

/// Refuses what can never be a node's cluster address (as the cluster file does).
fn check_cluster_address(address: IpAddr) -> Result<(), String> {
    let link_local_v6 = matches!(address, IpAddr::V6(v6) if v6.segments()[0] & 0xffc0 == 0xfe80);
    let mapped = matches!(address, IpAddr::V6(v6) if v6.to_ipv4_mapped().is_some());
    if address.is_loopback()
        || address.is_unspecified()
        || address.is_multicast()
        || link_local_v6
        || mapped
    {
        return Err(format!(
            "{address} cannot be a cluster address (loopback, unspecified, multicast, \
             IPv4-mapped and IPv6 link-local addresses are refused)"
        ));
    }
    Ok(())
}

/// `vipgate node remove NAME`: checks, the command, when it is done, and what to say if its
/// addresses are still moving at the deadline.
fn node_remove(
    state: &ClusterState,
    me: Pnn,
    name: &str,
) -> Result<(Option<Command>, Done, Done), String> {
    let pnn = resolve_node(state, name)?;
    let name = node_name(state, pnn);
    if pnn == me {
        return Err(format!(
            "{name} is the node answering this command; run `vipgate node remove {name}` on another node"
        ));
    }
    let member = &state.members[&pnn];
    let others = state
        .members
        .iter()
        .filter(|(other, member)| **other != pnn && !member.leaving)
        .count();
    if others == 0 {
        return Err(format!(
            "{name} is the last member; a cluster cannot remove its last node"
        ));
    }
    let command = (!member.leaving).then_some(Command::RemoveMember { node: pnn });
    let gone_name = name.clone();
    let done: Done = Box::new(move |state| {
        (!state.members.contains_key(&pnn)).then(|| format!("{gone_name} (pnn {pnn}) was removed"))
    });
    let leaving: Done =
        Box::new(move |state| {
            state.members.get(&pnn).filter(|member| member.leaving).map(|_| {
            format!(
                "{name} is leaving: its addresses are still moving (it holds some until its \
                 lease ends if it is down); `vipgate status` shows when it is gone"
            )
        })
        });
    // Already leaving: wait for it like a fresh removal.
    let command = command.or(Some(Command::RemoveMember { node: pnn }));
    Ok((command, done, leaving))
}

/// `vipgate node set-address NAME ADDRESS`.
fn node_set_address(
    state: &ClusterState,
    name: &str,
    address: IpAddr,
) -> Result<(Option<Command>, Done), String> {
    let pnn = resolve_node(state, name)?;
    let name = node_name(state, pnn);
    if let Some(other) = state
        .members
        .iter()
        .find(|(other, member)| **other != pnn && member.cluster_address == address)
        .map(|(_, member)| member.name.clone())
    {
        return Err(format!(
            "{address} is already the cluster address of {other}"
        ));
    }
    check_cluster_address(address)?;
    let done: Done = Box::new(move |state| {
        state
            .members
            .get(&pnn)
            .filter(|member| member.cluster_address == address)
            .map(|_| format!("{name} is at {address}"))
    });
    Ok((
        Some(Command::SetAddress {
            node: pnn,
            cluster_address: address,
        }),
        done,
    ))
}

type Done = Box<dyn Fn(&ClusterState) -> Option<String> + Send>;

fn answer(reply: oneshot::Sender<Response>, response: Response) {
    let _ = reply.send(response);
}

fn move_ip<S: LogStore>(
    core: &NodeCore<S>,
    address: IpAddr,
    node: &str,
) -> Result<(Option<Command>, Done), String> {
    let state = core.state();
    let to = resolve_node(state, node)?;
    let name = node_name(state, to);
    let vip = state
        .vips
        .get(&address)
        .ok_or_else(|| format!("{address} is not a public address of this cluster"))?;
    if !vip.eligible.contains(&to) {
        return Err(format!(
            "{name} may not hold {address}: it is not on the address's node list"
        ));
    }
    let member = &state.members[&to];
    if !member.healthy || member.disabled || member.fenced || !core.connected(to) {
        return Err(format!("{name} cannot take addresses now (it is not OK)"));
    }
    let done: Done = Box::new(move |state| {
        state.vips.get(&address).and_then(|vip| {
            (vip.owner == Some(to) && vip.phase == VipPhase::Held)
                .then(|| format!("{address} is on {name}"))
        })
    });
    match (vip.owner, vip.phase) {
        // Already there: `done` answers at once.
        (Some(owner), VipPhase::Held) if owner == to => Ok((None, done)),
        (Some(_), VipPhase::Held) => Ok((
            Some(Command::Release {
                vip: address,
                epoch: vip.epoch,
                to: Some(to),
            }),
            done,
        )),
        // Nobody holds it (its last owner released it or its lease was revoked), so it can go
        // straight to the named node.
        (None, VipPhase::Unassigned) => Ok((
            Some(Command::Assign {
                vip: address,
                epoch: vip.epoch,
                to,
            }),
            done,
        )),
        _ => Err(format!(
            "{address} is moving already; try again in a moment"
        )),
    }
}

fn answer_pending<S: LogStore>(core: &mut NodeCore<S>, pending: &mut Vec<Pending>) {
    let now = Instant::now();
    let mut index = 0;
    while index < pending.len() {
        let outcome = (pending[index].done)(core.state());
        if outcome.is_none() && now < pending[index].deadline {
            if now.duration_since(pending[index].proposed_at) >= COMMAND_RETRY {
                pending[index].proposed_at = now;
                let _ = core.propose_command(pending[index].command.clone());
            }
            index += 1;
            continue;
        }
        let request = pending.swap_remove(index);
        let progress = request
            .progress
            .as_ref()
            .and_then(|progress| progress(core.state()));
        let response = match (outcome, progress) {
            (Some(message), _) => Response::Done {
                message: format!("{message} ({} ms)", duration_ms(request.started.elapsed())),
            },
            (None, Some(message)) => Response::Done { message },
            (None, None) => Response::error(format!(
                "the cluster did not carry the command out within {:.1}s (is there a leader?)",
                COMMAND_DEADLINE.as_secs_f64()
            )),
        };
        let _ = request.reply.send(response);
    }
}

fn flags<S: LogStore>(core: &NodeCore<S>, pnn: Pnn) -> NodeFlags {
    let member = &core.state().members[&pnn];
    NodeFlags {
        disconnected: !core.connected(pnn),
        unhealthy: !member.healthy,
        disabled: member.disabled,
        banned: member.banned_at(unix_ms()),
        fenced: member.fenced,
        leaving: member.leaving,
    }
}

fn status<S: LogStore>(core: &NodeCore<S>) -> ClusterStatus {
    let (term, commit_index, applied_index) = core.raft_progress();
    let now = unix_ms();
    ClusterStatus {
        this_node: core.pnn(),
        nodes: core
            .state()
            .members
            .iter()
            .map(|(pnn, member)| NodeStatus {
                pnn: *pnn,
                name: member.name.clone(),
                cluster_address: member.cluster_address,
                flags: flags(core, *pnn),
                ban_left_secs: member
                    .banned_until_unix_ms
                    .filter(|until| *until > now)
                    .map(|until| (until - now).div_ceil(1000)),
                failing_probes: member.failing.clone(),
                raft: if core.voters().contains(pnn) {
                    RaftRole::Voter
                } else if core.learners().contains(pnn) {
                    RaftRole::Learner
                } else {
                    RaftRole::None
                },
            })
            .collect(),
        leader: core.leader(),
        term,
        commit_index,
        applied_index,
    }
}

fn ips<S: LogStore>(core: &NodeCore<S>, all: bool) -> IpReport {
    let me = core.pnn();
    let state = core.state();
    let lease_left = duration_ms(core.lease_left());
    let live = state.live_vips();
    IpReport {
        this_node: me,
        live_serial: state.live_serial,
        ips: state
            .vips
            .iter()
            .filter(|(_, vip)| all || vip.eligible.contains(&me))
            .map(|(address, vip)| IpStatus {
                address: *address,
                prefix_len: vip.prefix_len,
                owner: vip.owner,
                owner_name: vip.owner.map(|owner| node_name(state, owner)),
                interface: vip.interface.clone(),
                epoch: vip.epoch,
                state: match vip.phase {
                    VipPhase::Unassigned => control::VipPhase::Unassigned,
                    VipPhase::Held => control::VipPhase::Held,
                    VipPhase::Releasing => control::VipPhase::Releasing,
                },
                lease_left_ms: (vip.owner == Some(me) && vip.phase == VipPhase::Held)
                    .then_some(lease_left),
                connections: state
                    .connections
                    .get(address)
                    .map_or(0, |known| known.len() as u64),
                live: live.contains(address),
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn adds_and_renewals_get_no_more_than_the_lease_left_now() {
        let address: ipnet::IpNet = "192.0.2.101/24".parse().unwrap();
        let interface = "eth1".to_owned();
        let add = |lifetime| AddressChange::Add {
            address,
            interface: interface.clone(),
            lifetime,
        };
        let renew = |lifetime| AddressChange::Renew {
            address,
            interface: interface.clone(),
            lifetime,
        };
        let remove = AddressChange::Remove {
            address,
            interface: interface.clone(),
        };
        // (change decided earlier, lease left now in ms, what is applied)
        let table = [
            (add(1), 1500, Some(add(1))),
            (add(2), 1500, Some(add(1))),
            (renew(2), 2999, Some(renew(2))),
            // Paused past the lease: nothing is put back.
            (add(1), 999, None),
            (add(1), 0, None),
            (renew(1), 0, None),
            (remove.clone(), 0, Some(remove.clone())),
        ];
        for (change, left, expected) in table {
            assert_eq!(
                within_lease(change.clone(), Duration::from_millis(left)),
                expected,
                "{change} with {left} ms left"
            );
        }
    }

    #[test]
    fn identity_comes_from_the_data_directory_then_the_file_and_join_waits() {
        let known = NodeIdentity::new("gw1", "node4", 7);
        /// identity, log initialized, --join, name, expected plan or error.
        type Row<'a> = (
            Option<&'a NodeIdentity>,
            bool,
            bool,
            &'a str,
            Result<IdentityPlan, &'a str>,
        );
        let table: [Row<'_>; 7] = [
            (
                Some(&known),
                true,
                false,
                "node4",
                Ok(IdentityPlan::Known(7)),
            ),
            // A joining node that stopped before its snapshot arrived keeps its number.
            (
                Some(&known),
                false,
                true,
                "node4",
                Ok(IdentityPlan::Known(7)),
            ),
            (
                Some(&known),
                true,
                false,
                "node3",
                Err("belongs to node \"node4\""),
            ),
            (
                None,
                true,
                false,
                "node1",
                Ok(IdentityPlan::FilePosition { bootstrap: false }),
            ),
            (
                None,
                true,
                true,
                "node1",
                Ok(IdentityPlan::FilePosition { bootstrap: false }),
            ),
            (
                None,
                false,
                false,
                "node1",
                Ok(IdentityPlan::FilePosition { bootstrap: true }),
            ),
            (None, false, true, "node5", Ok(IdentityPlan::Join)),
        ];
        for (identity, initialized, join, name, expected) in table {
            let got = identity_plan(identity, initialized, join, name, "gw1");
            match (&got, expected) {
                (Ok(plan), Ok(expected)) => assert_eq!(*plan, expected),
                (Err(message), Err(expected)) => assert!(message.contains(expected), "{message}"),
                _ => panic!("{identity:?} {initialized} {join} {name}: {got:?}"),
            }
        }
        assert!(
            identity_plan(Some(&known), true, false, "node4", "other")
                .unwrap_err()
                .contains("cluster \"gw1\"")
        );
    }

    fn example() -> (ClusterConfig, ClusterState) {
        let text = include_str!("../../deploy/examples/cluster.yaml");
        let config = cluster_config::parse(text, "cluster.yaml").unwrap();
        let mut state = ClusterState::default();
        state.apply(&configure_command(&config));
        (config, state)
    }

    #[test]
    fn the_file_seeds_members_and_node_lists_by_name() {
        let (config, state) = example();
        assert_eq!(state.members.len(), 3);
        assert!(membership_drift(&config, &state).is_empty());
        // `nodes: [node1, node2, node3]` names every node: it means every member, now and
        // later; `[node2, node3]` stays a list.
        assert_eq!(state.vips[&ip("192.0.2.101")].nodes, None);
        assert_eq!(
            state.vips[&ip("192.0.2.103")].nodes,
            Some(["node2".to_owned(), "node3".to_owned()].into())
        );
    }

    #[test]
    fn drift_between_the_file_and_the_cluster_is_named() {
        let (mut config, mut state) = example();
        state.apply(&Command::AddMember {
            name: "node4".into(),
            cluster_address: ip("198.51.100.14"),
        });
        state.apply(&Command::SetAddress {
            node: 1,
            cluster_address: ip("198.51.100.22"),
        });
        config.nodes.remove(0);
        let drift = membership_drift(&config, &state);
        assert_eq!(drift.len(), 3, "{drift:?}");
        assert!(
            drift[0].contains("node set-address node2 198.51.100.12"),
            "{drift:?}"
        );
        assert!(
            drift
                .iter()
                .any(|line| line.starts_with("node1 (198.51.100.11) is a member"))
        );
        assert!(
            drift
                .iter()
                .any(|line| line.starts_with("node4 (198.51.100.14) is a member"))
        );
    }

    #[test]
    fn membership_requests_are_checked_before_they_are_proposed() {
        let (_, mut state) = example();
        let add = |state: &ClusterState, name: &str, address: &str| {
            node_add(state, name, ip(address)).map(|(command, _)| command)
        };
        let error = |result: Result<Option<Command>, String>| result.unwrap_err();
        assert!(error(add(&state, "node2", "198.51.100.50")).contains("already a node"));
        assert!(error(add(&state, "node4", "198.51.100.12")).contains("cluster address of node2"));
        assert!(error(add(&state, "Node4", "198.51.100.50")).contains("not a valid node name"));
        assert!(error(add(&state, "node4", "127.0.0.1")).contains("cannot be a cluster address"));
        assert!(error(add(&state, "node4", "fe80::1")).contains("cannot be a cluster address"));
        let (command, done) = node_add(&state, "node4", ip("198.51.100.14")).unwrap();
        assert!(done(&state).is_none());
        state.apply(&command.unwrap());
        assert!(
            done(&state)
                .unwrap()
                .starts_with("node4 is pnn 3 at 198.51.100.14")
        );

        let remove_error =
            |state: &ClusterState, me: Pnn, name: &str| match node_remove(state, me, name) {
                Ok(_) => panic!("removing {name} was accepted"),
                Err(message) => message,
            };
        assert!(remove_error(&state, 0, "node1").contains("on another node"));
        assert!(remove_error(&state, 0, "node9").contains("no node \"node9\""));
        let (command, done, leaving) = node_remove(&state, 0, "2").unwrap();
        state.apply(&command.unwrap());
        assert!(done(&state).is_none());
        assert!(leaving(&state).unwrap().starts_with("node3 is leaving"));
        state.apply(&Command::ForgetMember { node: 2 });
        assert_eq!(done(&state).unwrap(), "node3 (pnn 2) was removed");
        for node in [1, 3] {
            state.apply(&Command::RemoveMember { node });
        }
        assert!(remove_error(&state, 1, "node1").contains("last member"));

        let set = |state: &ClusterState, name: &str, address: &str| {
            node_set_address(state, name, ip(address)).map(|(command, _)| command)
        };
        assert!(error(set(&state, "node1", "198.51.100.14")).contains("cluster address of node4"));
        assert!(error(set(&state, "node7", "198.51.100.60")).contains("no node"));
        let (command, done) = node_set_address(&state, "node1", ip("198.51.100.60")).unwrap();
        state.apply(&command.unwrap());
        assert_eq!(done(&state).unwrap(), "node1 is at 198.51.100.60");
    }
}
