//! Authenticated, encrypted transport between the nodes of a cluster: one TCP connection per
//! pair of nodes on the cluster network, carrying opaque payloads (Raft and lease messages) in
//! order, with reconnection, keepalives, and unreachable peers reported to the caller.
//!
//! # Wire format
//!
//! The node with the lower id dials, the other accepts; both directions share that connection.
//! Every Noise message on the wire is a big-endian `u16` length followed by that many bytes
//! (at most 65535). A connection starts with the `Noise_NNpsk0_25519_ChaChaPoly_BLAKE2s`
//! handshake (see `noise`): message 1 from the dialer, message 2 from the acceptor, each carrying
//! a hello (`from` and `to` node ids, big-endian `u64`), then an empty transport message from the
//! dialer confirming its keys. After that each Noise message carries a plaintext of at most
//! 65519 bytes: empty for a keepalive, or a record, which is a big-endian `u32` payload length
//! followed by the payload, continued over as many further messages as needed (see `wire`).
//! Nonces are implicit and count up from zero in each direction.
//!
//! # Security argument
//!
//! The PSK is HKDF-BLAKE2s of the cluster secret under a domain string, and the prologue
//! `"vipgate peer v1\0" + cluster_name` is mixed into the handshake hash, so every key (and the
//! tag of message 1, the first thing received) depends on both. A host without the secret
//! cannot produce a message 1 that decrypts: the acceptor closes the connection having sent
//! nothing. It cannot answer a member's dial either: message 2 fails authentication, and the
//! dialer has revealed nothing but an ephemeral public key and a hello encrypted under the PSK.
//! A node of another cluster sharing the secret differs in the prologue and is refused the same
//! way. Every connection uses fresh ephemeral X25519 keys, so transport keys are new each time:
//! recorded traffic replayed into another connection does not authenticate, and a replayed
//! message 1 gets a message 2 but never the confirmation, which only the holder of the original
//! ephemeral key can produce; the acceptor registers a link only after that confirmation, so a
//! replay cannot even displace a live link. Within a connection the implicit nonces make every
//! dropped, reordered, replayed or altered message fail authentication. Any failure (bad
//! handshake, failed decryption, a record longer than `max_message`, an unknown or unexpected
//! node id, silence longer than `idle_timeout`) closes that one connection with a rate-limited
//! warning naming the remote address; the listener and the other links carry on. At most
//! [`MAX_PENDING_HANDSHAKES`] connections may be in their handshake at once (each holds about
//! 3 KiB in user space, for at most [`HANDSHAKE_TIMEOUT`]); more are closed on arrival.
//!
//! What this does not give: members authenticate as "holds the secret", so a member can claim
//! another member's id, and a leaked secret admits its holder until every node has a new one.
//! Traffic recorded earlier stays unreadable even then, since transport keys also depend on the
//! ephemeral keys, which are gone (only the hellos of message 1, two node ids, are protected by
//! the PSK alone). Anyone on the path can still cut a connection; the link then redials.
//!
//! # Use
//!
//! [`Transport::start`] binds the listener and returns the handle with the receiver of
//! [`Event`]s; [`Transport::send`] never waits; [`Transport::set_peers`] follows membership;
//! [`Transport::rebind`] follows a change of this node's own address; [`Transport::shutdown`]
//! stops everything.
//!
//! Dials leave from this node's cluster address, so a connection always runs between the two
//! nodes' current addresses. When either moves, the dialer opens a connection on the new path
//! while the old one keeps serving, and switches once the new one is up (make before break);
//! the old one stays open until the acceptor has taken the new one. So a node whose address
//! changes keeps its links, and deleting its old address afterwards cuts nothing. A node joining a running cluster first calls [`learn_identity`]: the
//! members dial it (its id is the highest) and their authenticated hello tells it its id.

mod link;
mod noise;
mod pacing;
mod wire;

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use link::{CONNECT_TIMEOUT, HANDSHAKE_TIMEOUT};
use link::{Established, Link, LinkStatus, Role, WARNING_BURST, WARNING_WINDOW};
use noise::Keys;
use pacing::WarningLimiter;
use wire::RecordError;

/// Connections allowed in their handshake at once; more are closed when they arrive.
pub const MAX_PENDING_HANDSHAKES: usize = 64;
/// Payloads queued for one peer before `send` drops them.
pub const SEND_QUEUE: usize = 1024;
/// Events waiting for the consumer before links pause reading.
pub const EVENT_QUEUE: usize = 1024;
/// The shortest cluster secret accepted.
pub const MIN_SECRET_LEN: usize = 16;
/// Pause after a failed `accept` (for example when out of file descriptors).
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(50);

/// What a node needs to talk to its peers.
#[derive(Clone)]
pub struct TransportConfig {
    /// Our id (the Raft id, ≥ 1).
    pub node: u64,
    /// Our cluster address and port (IPv4 or IPv6).
    pub listen: SocketAddr,
    /// Every other member. Our own id, if present, is ignored.
    pub peers: BTreeMap<u64, SocketAddr>,
    /// The cluster secret, at least [`MIN_SECRET_LEN`] bytes.
    pub secret: Vec<u8>,
    /// Bound into the handshake, so that clusters sharing a secret stay apart.
    pub cluster_name: String,
    /// The largest payload accepted (and sent), at most `u32::MAX`.
    pub max_message: usize,
    /// No bytes from a peer for this long: the connection is dropped and redialled. Keepalives
    /// are sent after a third of it (at most 250 ms) without traffic.
    pub idle_timeout: Duration,
}

impl fmt::Debug for TransportConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("TransportConfig")
            .field("node", &self.node)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("secret", &format_args!("<{} bytes>", self.secret.len()))
            .field("cluster_name", &self.cluster_name)
            .field("max_message", &self.max_message)
            .field("idle_timeout", &self.idle_timeout)
            .finish()
    }
}

/// What the transport tells its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// A whole payload from a peer. Payloads from one peer arrive in the order sent, each at
    /// most once; some may be lost when a link fails.
    Message { from: u64, payload: Vec<u8> },
    /// An authenticated connection with the peer is up (again); sent before its messages.
    Connected { peer: u64 },
    /// A send could not be delivered, or the link was lost or could not be made. Reported once
    /// per episode: again only after a message to the peer was queued or the link came up.
    Unreachable { peer: u64 },
}

/// Why the transport could not start.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    #[error("node id 0 is not a valid raft id")]
    ZeroNodeId,
    #[error("cluster secret of {0} bytes is too short; at least 16 are needed")]
    ShortSecret(usize),
    #[error("max_message of {0} bytes is outside 1..=4294967295")]
    MaxMessage(usize),
    #[error("idle timeout of {0:?} is too short")]
    IdleTimeout(Duration),
    #[error("cannot listen on {address}")]
    Bind {
        address: SocketAddr,
        #[source]
        source: io::Error,
    },
    #[error("noise protocol set-up failed")]
    Noise(#[source] snow::Error),
}

/// Why one connection failed or ended. Never leaves the module: it is logged, and the link
/// redials or waits.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LinkError {
    #[error("connection closed by the peer")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] io::Error),
    #[error("connect timed out after {0:?}")]
    ConnectTimeout(Duration),
    #[error("handshake timed out after {0:?}")]
    HandshakeTimeout(Duration),
    #[error("nothing received for {0:?}")]
    Idle(Duration),
    #[error("noise message of {length} bytes is out of range (at most {max})")]
    FrameLength { length: usize, max: usize },
    #[error("handshake failed, wrong cluster secret or cluster name? ({0})")]
    Handshake(snow::Error),
    #[error("message failed authentication ({0})")]
    Decrypt(snow::Error),
    #[error("sealing a message failed ({0})")]
    Seal(snow::Error),
    #[error("hello of {0} bytes is malformed")]
    BadHello(usize),
    #[error("hello from node {from} to node {to} does not fit this link")]
    UnexpectedPeer { from: u64, to: u64 },
    #[error("key confirmation of {0} bytes instead of none")]
    BadConfirmation(usize),
    #[error("{0}")]
    Record(#[from] RecordError),
    #[error("peer removed")]
    Removed,
}

/// State shared by the handle, the listener and the links.
#[derive(Debug)]
pub(crate) struct Shared {
    me: u64,
    keys: Keys,
    events: mpsc::Sender<Event>,
    max_message: usize,
    idle_timeout: Duration,
    peers: Mutex<Peers>,
    /// Our cluster address (the listener's IP): dials leave from it, so that every connection
    /// follows a move of this node's address (unspecified: the kernel picks).
    source: Mutex<IpAddr>,
    /// Bumped whenever a path may have changed (our address, or a peer's): dialler links whose
    /// connection no longer runs between the current addresses dial a new one and switch to it
    /// once it is up (make before break).
    paths: watch::Sender<u64>,
    /// Connections a link moved off, kept open briefly ([`link::linger`]); stopped at shutdown.
    lingering: Mutex<Vec<Task>>,
}

#[derive(Debug, Default)]
struct Peers {
    closed: bool,
    entries: BTreeMap<u64, PeerEntry>,
}

/// The handle's side of one link.
#[derive(Debug)]
struct PeerEntry {
    address: SocketAddr,
    /// The address the link dials (for peers with a higher id), shared with the link's task.
    dial_address: Option<Arc<Mutex<SocketAddr>>>,
    queue: mpsc::Sender<Vec<u8>>,
    incoming: mpsc::Sender<Established>,
    status: Arc<LinkStatus>,
    task: Task,
}

/// A spawned task that is aborted when dropped.
#[derive(Debug)]
struct Task(Option<JoinHandle<()>>);

impl Task {
    /// Aborts the task and waits until it has been dropped, with every socket it held.
    async fn stop(mut self) {
        if let Some(handle) = self.0.take() {
            handle.abort();
            let _ = handle.await;
        }
    }
}

impl Drop for Task {
    fn drop(&mut self) {
        if let Some(handle) = &self.0 {
            handle.abort();
        }
    }
}

impl Shared {
    fn source(&self) -> IpAddr {
        *self.source.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn linger(&self, stream: TcpStream) {
        let mut lingering = self
            .lingering
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        lingering.retain(|task| task.0.as_ref().is_some_and(|handle| !handle.is_finished()));
        lingering.push(Task(Some(tokio::spawn(link::linger(stream)))));
    }

    fn paths_changed(&self) {
        self.paths
            .send_modify(|generation| *generation = generation.wrapping_add(1));
    }

    fn peers(&self) -> MutexGuard<'_, Peers> {
        // A panic while holding the lock cannot leave the map half-changed (every change is
        // one insert or remove), so a poisoned lock is still good.
        self.peers.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether node `id` may open a link to us: a configured peer with a lower id.
    fn may_dial(&self, id: u64) -> bool {
        id < self.me && self.peers().entries.contains_key(&id)
    }

    /// Gives an authenticated connection to its peer's link.
    fn hand_over(&self, peer: u64, established: Established) {
        let remote = established.remote;
        let peers = self.peers();
        let Some(entry) = peers.entries.get(&peer) else {
            tracing::info!(peer, %remote, "peer removed during its handshake; closing");
            return;
        };
        if entry.incoming.try_send(established).is_err() {
            tracing::warn!(peer, %remote, "peer dials faster than its link can take over; closing");
        }
    }
}

/// The transport of one node. Clones share it.
#[derive(Debug, Clone)]
pub struct Transport {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    shared: Arc<Shared>,
    local_addr: SocketAddr,
    listener: Mutex<Listeners>,
    runtime: Handle,
}

/// The accept loops: the current one, and the one of our previous address after a move, which
/// keeps taking dials from peers that have not heard of the move yet.
#[derive(Debug, Default)]
struct Listeners {
    current: Option<Task>,
    previous: Option<Task>,
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Tasks hold the shared state, not the handle: dropping the last handle without
        // `shutdown` still stops them (`Task` aborts on drop).
        let mut peers = self.shared.peers();
        peers.closed = true;
        peers.entries.clear();
    }
}

impl Transport {
    /// Binds the listener (the error names the address) and starts the tasks. Must be called
    /// within a tokio runtime, which runs every task of the transport.
    pub async fn start(
        config: TransportConfig,
    ) -> Result<(Transport, mpsc::Receiver<Event>), TransportError> {
        if config.node == 0 {
            return Err(TransportError::ZeroNodeId);
        }
        if config.secret.len() < MIN_SECRET_LEN {
            return Err(TransportError::ShortSecret(config.secret.len()));
        }
        if config.max_message == 0 || u32::try_from(config.max_message).is_err() {
            return Err(TransportError::MaxMessage(config.max_message));
        }
        if config.idle_timeout < Duration::from_millis(10) {
            return Err(TransportError::IdleTimeout(config.idle_timeout));
        }
        let keys =
            Keys::new(&config.secret, &config.cluster_name).map_err(TransportError::Noise)?;
        let bind_error = |source| TransportError::Bind {
            address: config.listen,
            source,
        };
        let listener = TcpListener::bind(config.listen).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let (events, receiver) = mpsc::channel(EVENT_QUEUE);
        let shared = Arc::new(Shared {
            me: config.node,
            keys,
            events,
            max_message: config.max_message,
            idle_timeout: config.idle_timeout,
            peers: Mutex::new(Peers::default()),
            source: Mutex::new(local_addr.ip()),
            paths: watch::Sender::new(0),
            lingering: Mutex::new(Vec::new()),
        });
        let runtime = Handle::current();
        let listener_task = Task(Some(runtime.spawn(accept_loop(listener, shared.clone()))));
        let transport = Transport {
            inner: Arc::new(Inner {
                shared,
                local_addr,
                listener: Mutex::new(Listeners {
                    current: Some(listener_task),
                    previous: None,
                }),
                runtime,
            }),
        };
        transport.set_peers(config.peers);
        tracing::info!(node = config.node, address = %local_addr, "transport listening");
        Ok((transport, receiver))
    }

    /// The address the listener is bound to (with the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// Queues `payload` for peer `to`; never blocks or awaits. When the peer's bounded queue is
    /// full, its link is down, the peer is unknown or the payload exceeds `max_message`, the
    /// payload is dropped and the peer reported [`Event::Unreachable`] (Raft resends).
    pub fn send(&self, to: u64, payload: Vec<u8>) {
        let shared = &self.inner.shared;
        let peers = shared.peers();
        let Some(entry) = peers.entries.get(&to) else {
            drop(peers);
            tracing::debug!(peer = to, "send to a peer that is not configured");
            let _ = shared.events.try_send(Event::Unreachable { peer: to });
            return;
        };
        if payload.len() > shared.max_message {
            tracing::warn!(
                peer = to,
                length = payload.len(),
                limit = shared.max_message,
                "payload longer than max_message dropped"
            );
            entry.status.report_unreachable(to, &shared.events);
            return;
        }
        if entry.status.is_down() {
            entry.status.report_unreachable(to, &shared.events);
            return;
        }
        match entry.queue.try_send(payload) {
            Ok(()) => entry.status.queued(),
            Err(_) => entry.status.report_unreachable(to, &shared.events),
        }
    }

    /// Follows membership and address changes: links to removed peers are closed (their queued
    /// payloads dropped), links to new peers started, and a peer whose address changed is
    /// dialled there from its next connection on (the current one, if up, is kept). Our own id,
    /// if present, is ignored.
    pub fn set_peers(&self, peers: BTreeMap<u64, SocketAddr>) {
        let shared = &self.inner.shared;
        let mut current = shared.peers();
        if current.closed {
            return;
        }
        let me = shared.me;
        let mut moved = false;
        current.entries.retain(|id, entry| {
            // A peer with a lower id dials us, so where it lives does not matter to its link.
            let Some(address) = peers.get(id) else {
                let address = entry.address;
                tracing::info!(peer = id, %address, "closing link to removed peer");
                return false;
            };
            if *address != entry.address {
                // The link dials the new address while the connection that is up keeps
                // serving (the peer may hear of its own move only through it), and switches
                // once the new one is up.
                if *id > me {
                    tracing::info!(peer = id, old = %entry.address, new = %address, "peer moved");
                }
                if let Some(dial_address) = &entry.dial_address {
                    *dial_address.lock().unwrap_or_else(PoisonError::into_inner) = *address;
                }
                entry.address = *address;
                moved = true;
            }
            true
        });
        for (&id, &address) in &peers {
            if id == shared.me || current.entries.contains_key(&id) {
                continue;
            }
            let dial_address = (id > shared.me).then(|| Arc::new(Mutex::new(address)));
            let role = match &dial_address {
                Some(dial_address) => Role::Dial(dial_address.clone()),
                None => Role::Accept,
            };
            let (queue, queue_receiver) = mpsc::channel(SEND_QUEUE);
            let (incoming, incoming_receiver) = mpsc::channel(2);
            let status = Arc::new(LinkStatus::new());
            let link = Link {
                peer: id,
                role,
                status: status.clone(),
                queue: queue_receiver,
                incoming: incoming_receiver,
                shared: shared.clone(),
            };
            let task = Task(Some(self.inner.runtime.spawn(link.run())));
            current.entries.insert(
                id,
                PeerEntry {
                    address,
                    dial_address,
                    queue,
                    incoming,
                    status,
                    task,
                },
            );
        }
        drop(current);
        if moved {
            shared.paths_changed();
        }
    }

    /// Moves the listener to `listen` (this node's cluster address changed): binds the new
    /// address, keeps the previous listener for peers that have not heard of the move yet
    /// (stopping the one before it), and has every dialler link move its connection to the new
    /// source address, make before break. Links that peers dialled move when those peers learn
    /// the new address and dial it.
    pub async fn rebind(&self, listen: SocketAddr) -> Result<SocketAddr, TransportError> {
        let bind_error = |source| TransportError::Bind {
            address: listen,
            source,
        };
        // The listener before the current one may hold `listen` (a move back): it goes first.
        let retired = self
            .inner
            .listener
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .previous
            .take();
        if let Some(retired) = retired {
            retired.stop().await;
        }
        let listener = TcpListener::bind(listen).await.map_err(bind_error)?;
        let local_addr = listener.local_addr().map_err(bind_error)?;
        let task = Task(Some(
            self.inner
                .runtime
                .spawn(accept_loop(listener, self.inner.shared.clone())),
        ));
        {
            let mut listeners = self
                .inner
                .listener
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if self.inner.shared.peers().closed {
                return Ok(local_addr);
            }
            listeners.previous = listeners.current.replace(task);
        }
        *self
            .inner
            .shared
            .source
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = local_addr.ip();
        self.inner.shared.paths_changed();
        tracing::info!(address = %local_addr, "transport listening on a new address");
        Ok(local_addr)
    }

    /// Stops every task and closes every socket before returning. Clones of this handle stay
    /// valid but inert: their sends report `Unreachable`.
    pub async fn shutdown(self) {
        let listeners = std::mem::take(
            &mut *self
                .inner
                .listener
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let entries = {
            let mut peers = self.inner.shared.peers();
            peers.closed = true;
            std::mem::take(&mut peers.entries)
        };
        for listener in [listeners.current, listeners.previous]
            .into_iter()
            .flatten()
        {
            listener.stop().await;
        }
        let lingering = std::mem::take(
            &mut *self
                .inner
                .shared
                .lingering
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        for task in lingering {
            task.stop().await;
        }
        for entry in entries.into_values() {
            entry.task.stop().await;
        }
    }
}

/// How a joining node learnt who it is: the first member that dialled it, authenticated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Introduction {
    /// The id the member addressed this node by: its own id from now on.
    pub node: u64,
    /// The member that dialled.
    pub by: u64,
}

/// For a node joining a running cluster, which does not know its own id yet: listens on
/// `listen` until a member dials it, completes the handshake (so only a holder of the secret and
/// the cluster name can tell it anything, and a replayed first message teaches nothing), and
/// returns the ids of the hello. The connection is then closed; the member redials the real
/// transport. Only hellos from a lower id are believed: members dial peers with higher ids, and
/// a joining node always gets the highest id so far.
pub async fn learn_identity(
    listen: SocketAddr,
    secret: &[u8],
    cluster_name: &str,
) -> Result<Introduction, TransportError> {
    if secret.len() < MIN_SECRET_LEN {
        return Err(TransportError::ShortSecret(secret.len()));
    }
    let keys = Keys::new(secret, cluster_name).map_err(TransportError::Noise)?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| TransportError::Bind {
            address: listen,
            source,
        })?;
    let mut handshakes = FuturesUnordered::new();
    let mut warnings = WarningLimiter::new(WARNING_WINDOW, WARNING_BURST);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((mut stream, remote)) => {
                    if handshakes.len() >= MAX_PENDING_HANDSHAKES {
                        continue;
                    }
                    let keys = &keys;
                    handshakes.push(async move {
                        let result = tokio::time::timeout(
                            HANDSHAKE_TIMEOUT,
                            noise::respond_to(&mut stream, keys, |from, to| from != 0 && from < to),
                        )
                        .await
                        .map_err(|_| LinkError::HandshakeTimeout(HANDSHAKE_TIMEOUT))
                        .and_then(|result| result);
                        (remote, result)
                    });
                }
                Err(error) => {
                    if let Some(suppressed) = warnings.admit(Instant::now()) {
                        tracing::warn!(suppressed, "accepting a peer connection failed: {error}");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some((remote, result)) = handshakes.next(), if !handshakes.is_empty() => match result {
                Ok((by, node, _)) => {
                    tracing::info!(node, by, %remote, "the cluster introduced this node");
                    return Ok(Introduction { node, by });
                }
                Err(error) => {
                    if let Some(suppressed) = warnings.admit(Instant::now()) {
                        tracing::warn!(%remote, suppressed, "peer connection refused: {error}");
                    }
                }
            },
        }
    }
}

/// Accepts connections and runs their handshakes (at most [`MAX_PENDING_HANDSHAKES`] at once,
/// all within this task, so aborting it closes them all), handing authenticated ones to links.
async fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    let mut handshakes = FuturesUnordered::new();
    let mut warnings = WarningLimiter::new(WARNING_WINDOW, WARNING_BURST);
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    if handshakes.len() >= MAX_PENDING_HANDSHAKES {
                        if let Some(suppressed) = warnings.admit(Instant::now()) {
                            tracing::warn!(
                                %remote,
                                suppressed,
                                "too many handshakes in progress; connection closed"
                            );
                        }
                        continue;
                    }
                    handshakes.push(accept_handshake(stream, remote, shared.clone()));
                }
                Err(error) => {
                    if let Some(suppressed) = warnings.admit(Instant::now()) {
                        tracing::warn!(suppressed, "accepting a peer connection failed: {error}");
                    }
                    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
                }
            },
            Some((remote, result)) = handshakes.next(), if !handshakes.is_empty() => match result {
                Ok((peer, established)) => shared.hand_over(peer, established),
                Err(error) => {
                    if let Some(suppressed) = warnings.admit(Instant::now()) {
                        tracing::warn!(%remote, suppressed, "peer connection refused: {error}");
                    }
                }
            },
        }
    }
}

async fn accept_handshake(
    mut stream: TcpStream,
    remote: SocketAddr,
    shared: Arc<Shared>,
) -> (SocketAddr, Result<(u64, Established), LinkError>) {
    let result = async {
        stream.set_nodelay(true)?;
        tokio::time::timeout(
            HANDSHAKE_TIMEOUT,
            noise::respond(&mut stream, &shared.keys, shared.me, |id| {
                shared.may_dial(id)
            }),
        )
        .await
        .map_err(|_| LinkError::HandshakeTimeout(HANDSHAKE_TIMEOUT))?
    }
    .await;
    let result = result.map(|(peer, session)| {
        (
            peer,
            Established {
                stream,
                session,
                remote,
            },
        )
    });
    (remote, result)
}
