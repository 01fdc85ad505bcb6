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

use crate::announce::{Announcer, RawAnnouncer};
use crate::apply::{AddressApplier, AddressChange, HeldVip, NetlinkApplier, reconcile};
use crate::control::{
    self, ClusterStatus, IpReport, IpStatus, NodeFlags, NodeStatus, Request, Response,
};
use crate::health::{self, MonitorSettings, Probe, VolumeProbe};
use crate::lease::{Pnn, duration_ms};
use crate::node::{NodeCore, NodeError, NodeSettings};
use crate::state::{ClusterState, Command, MemberConfig, VipConfig, VipPhase};
use crate::storage::{DiskLog, LogStore};
use crate::tickle::{Connection, Tickler};
use crate::transport::{Event as PeerEvent, Transport, TransportConfig};

/// How often the event loop runs when nothing else happens.
const LOOP_INTERVAL: Duration = Duration::from_millis(10);
/// How long a control command waits to see its effect in the applied state.
const COMMAND_DEADLINE: Duration = Duration::from_secs(5);
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
            eligible: vip
                .eligible
                .iter()
                .filter_map(|id| u32::try_from(id.index()).ok())
                .collect(),
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
    let me = pnn_of_node(&options.node);
    let started = Instant::now();
    let store = DiskLog::open(&options.data_dir).map_err(|error| {
        DaemonError::Setup(format!(
            "cannot open the raft log in {}: {error}",
            options.data_dir.display()
        ))
    })?;
    let voters: Vec<Pnn> = config.nodes.iter().map(pnn_of_node).collect();
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
        store,
        Some(&voters),
        Some(configure_command(config)),
        millis_since(started),
        unix_ms(),
    )?;

    let secret =
        config.cluster.secret.read().map_err(|error| {
            DaemonError::Setup(format!("cannot read the cluster secret: {error}"))
        })?;
    let peers: BTreeMap<u64, SocketAddr> = config
        .nodes
        .iter()
        .filter(|node| node.name != options.node.name)
        .map(|node| {
            (
                u64::from(pnn_of_node(node)) + 1,
                SocketAddr::new(node.cluster_address, config.cluster.port),
            )
        })
        .collect();
    let (transport, mut peer_events) = Transport::start(TransportConfig {
        node: u64::from(me) + 1,
        listen: SocketAddr::new(options.node.cluster_address, config.cluster.port),
        peers,
        secret,
        cluster_name: config.cluster.name.clone(),
        max_message: 16 << 20,
        idle_timeout: config.timings.lease.max(Duration::from_secs(2)),
    })
    .await
    .map_err(|error| DaemonError::Setup(format!("cannot start the peer transport: {error}")))?;

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
    };
    let mut pending: Vec<Pending> = Vec::new();
    let mut interval = tokio::time::interval(LOOP_INTERVAL);
    interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = std::pin::pin!(shutdown);
    let mut stopping: Option<Instant> = None;
    let mut last_scan = Instant::now();
    // The applied index last published: the state changes only when it moves.
    let mut published_at = u64::MAX;
    loop {
        tokio::select! {
            () = &mut shutdown, if stopping.is_none() => {
                tracing::info!("shutting down: handing this node's addresses over");
                core.set_health(false, vec!["shutting down".to_owned()]);
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
        answer_pending(&core, &mut pending);
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
                self.reconcile(&core.held(), core).await;
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
        core.kernel_has(&self.present);
    }

    async fn reconcile<S: LogStore>(&mut self, held: &[HeldVip], core: &NodeCore<S>) {
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
                    }
                    AddressChange::Renew { .. } => {}
                },
                Err(error) => tracing::error!(%change, %error, "cannot change an address"),
            }
        }
        self.present = after;
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

/// Announces a taken VIP in rounds, each followed by a tickle ACK to every client connection
/// the previous owner reported, so clients meet a RST from this node and reconnect at once.
/// Runs off the event loop; the rounds are spaced past Linux's neighbour locktime. Stops when
/// `cancel` is set (the VIP was released): a round after the release would send clients back
/// to this node, which no longer has the address, until the new owner's next round.
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
            if let Err(error) = RawAnnouncer.announce(vip, &interface) {
                tracing::warn!(%vip, interface, %error, "cannot announce");
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
        Request::NodeAdd { .. } | Request::NodeRemove { .. } | Request::NodeSetAddress { .. } => {
            Err("membership changes are not available yet in this version".to_owned())
        }
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
            match core.propose_command(command) {
                Err(message) => answer(reply, Response::error(message)),
                Ok(()) => pending.push(Pending {
                    done,
                    reply,
                    deadline: Instant::now() + COMMAND_DEADLINE,
                    started: Instant::now(),
                }),
            }
        }
    }
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
        _ => Err(format!(
            "{address} is moving already; try again in a moment"
        )),
    }
}

fn answer_pending<S: LogStore>(core: &NodeCore<S>, pending: &mut Vec<Pending>) {
    let now = Instant::now();
    let mut index = 0;
    while index < pending.len() {
        let outcome = (pending[index].done)(core.state());
        if outcome.is_none() && now < pending[index].deadline {
            index += 1;
            continue;
        }
        let request = pending.swap_remove(index);
        let response = match outcome {
            Some(message) => Response::Done {
                message: format!("{message} ({} ms)", duration_ms(request.started.elapsed())),
            },
            None => Response::error(format!(
                "the cluster did not carry the command out within {}s (is there a leader?)",
                COMMAND_DEADLINE.as_secs()
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
    IpReport {
        this_node: me,
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
            })
            .collect(),
    }
}
