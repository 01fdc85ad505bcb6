//! The control socket of a vipgate node: the request and response types that the ctdb-like
//! commands (`vipgate status`, `ip`, `moveip`, `disable`, …) exchange with the running node, the
//! server that accepts them on a root-only Unix socket and hands each request to the node's event
//! loop, and the client the commands use.
//!
//! # Wire format
//!
//! One JSON object per line in each direction; a connection may carry several requests, each
//! answered in order. A request names its verb in `"command"` (`{"command":"status"}`,
//! `{"command":"move-ip","address":"192.0.2.101","node":"node2"}`); a response names its kind in
//! `"result"` (`"status"`, `"ips"`, `"done"`, `"error"`) beside the payload's own fields. Field
//! names are part of the interface (scripts read `vipgate … --json`): they are documented on each
//! type and only ever added to.
//!
//! # Driving the server
//!
//! 1. [`ControlSocket::bind`] at start-up: creates the parent directory, refuses a socket a live
//!    node still answers on, removes a stale one, binds and restricts the mode to 0600.
//! 2. [`ControlSocket::run`] with the sending half of a channel whose receiver the node's event
//!    loop reads: every request arrives as `(Request, oneshot::Sender<Response>)`; the loop answers
//!    through the oneshot within [`ServerLimits::handler_deadline`] or the client is told the node
//!    did not answer.
//! 3. The shutdown future resolves: the server stops accepting, removes the socket file, lets
//!    requests in flight finish for [`ServerLimits::drain`], and returns.
//!
//! [`serve`] does 1 and 2 in one call.

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt as _, FileTypeExt as _, MetadataExt as _, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufRead, AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{Semaphore, mpsc, oneshot, watch};
use tokio::task::JoinSet;

/// The longest request line the server reads, newline excluded.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// The longest response line the client reads, newline excluded (a status of a few hundred nodes
/// and VIPs is far below this).
pub const MAX_RESPONSE_BYTES: usize = 4 * 1024 * 1024;

/// The answer sent to a client whose uid may not use the socket.
pub const ROOT_ONLY: &str = "the control socket is root-only";

/// What a request handler receives: the request and where its one response goes.
pub type RequestEnvelope = (Request, oneshot::Sender<Response>);

/// A command for the node. JSON: `{"command": "<kebab-case verb>", <fields>}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Request {
    /// The whole cluster as this node sees it; answered with [`Response::Status`].
    Status,
    /// Public IPs: those this node may host (`all: false`), or every one (`all: true`); answered
    /// with [`Response::Ips`].
    Ip { all: bool },
    /// Moves `address` to `node` (a name, a pnn or a cluster address, as the user typed it).
    MoveIp { address: IpAddr, node: String },
    /// Marks a node administratively disabled; `node: null` means the answering node.
    Disable { node: Option<String> },
    /// Clears the disabled flag.
    Enable { node: Option<String> },
    /// Bans a node for `seconds`.
    Ban { node: Option<String>, seconds: u64 },
    /// Lifts a ban early.
    Unban { node: Option<String> },
    /// Adds a node called `name` at cluster address `address` to the membership; it gets the
    /// next unused pnn and is then started with `vipgate node --join`.
    NodeAdd { name: String, address: IpAddr },
    /// Removes a node (name, pnn or cluster address) from the membership: its VIPs move away
    /// first, then it leaves the Raft configuration. A node cannot remove itself.
    NodeRemove { name: String },
    /// Changes a node's cluster address; every node's peer links follow.
    NodeSetAddress { name: String, address: IpAddr },
}

/// The node's answer. JSON: `{"result": "status"|"ips"|"done"|"error", <payload fields>}`; the
/// payload of `status` and `ips` is the [`ClusterStatus`] or [`IpReport`] object's own fields.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "kebab-case")]
pub enum Response {
    Status(ClusterStatus),
    Ips(IpReport),
    /// The command was carried out; `message` says what happened, for a person.
    Done {
        message: String,
    },
    /// The command failed or was refused; `message` says why (lower case, names the value).
    Error {
        message: String,
    },
}

impl Response {
    /// An error response.
    pub fn error(message: impl Into<String>) -> Self {
        Response::Error {
            message: message.into(),
        }
    }
}

/// `vipgate status`: the cluster as the answering node sees it.
///
/// JSON fields: `this_node` (pnn of the answering node), `nodes` (array of [`NodeStatus`], in pnn
/// order), `leader` (pnn or `null` when no leader is known), `term`, `commit_index`,
/// `applied_index` (Raft).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    pub this_node: u32,
    pub nodes: Vec<NodeStatus>,
    pub leader: Option<u32>,
    pub term: u64,
    pub commit_index: u64,
    pub applied_index: u64,
}

impl ClusterStatus {
    /// The node a user named: by pnn (`"1"`), by name (`"node2"`) or by cluster address
    /// (`"198.51.100.12"`), tried in that order.
    pub fn node(&self, which: &str) -> Option<&NodeStatus> {
        let which = which.trim();
        if let Ok(pnn) = which.parse::<u32>() {
            return self.nodes.iter().find(|node| node.pnn == pnn);
        }
        if let Some(node) = self.nodes.iter().find(|node| node.name == which) {
            return Some(node);
        }
        let address: IpAddr = which.parse().ok()?;
        self.nodes
            .iter()
            .find(|node| node.cluster_address == address)
    }

    /// The answering node's own entry.
    pub fn this(&self) -> Option<&NodeStatus> {
        self.nodes.iter().find(|node| node.pnn == self.this_node)
    }
}

/// One node's line of `vipgate status`.
///
/// JSON fields: `pnn`, `name`, `cluster_address`, `flags` (a [`NodeFlags`] object),
/// `ban_left_secs` (seconds until a ban ends, `null` unless banned), `failing_probes` (one string
/// per failing health probe, `"volume: write probe timed out after 1s"`; empty when healthy),
/// `raft` (`"voter"`; `"learner"` while a newly added node catches up before it votes; `"none"`
/// for a member not in the Raft configuration yet or any more).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub pnn: u32,
    pub name: String,
    pub cluster_address: IpAddr,
    pub flags: NodeFlags,
    pub ban_left_secs: Option<u64>,
    pub failing_probes: Vec<String>,
    #[serde(default)]
    pub raft: RaftRole,
}

/// A member's place in the Raft configuration.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RaftRole {
    #[default]
    Voter,
    Learner,
    None,
}

/// A node's state flags. JSON: an object of booleans `disconnected`, `unhealthy`, `disabled`,
/// `banned`, `fenced`, `leaving`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFlags {
    /// No contact with this node (it is down, or cut off from the answering node).
    pub disconnected: bool,
    /// A health probe fails.
    pub unhealthy: bool,
    /// An administrator disabled it (`vipgate disable`).
    pub disabled: bool,
    /// Banned for a while (`vipgate ban`).
    pub banned: bool,
    /// The cluster revoked its lease: whatever it believes, it holds no VIP.
    pub fenced: bool,
    /// `vipgate node remove` is under way: it hands its VIPs over, then leaves the cluster.
    #[serde(default)]
    pub leaving: bool,
}

impl NodeFlags {
    /// ctdb's NODE_FLAGS_DISCONNECTED.
    pub const DISCONNECTED: u32 = 0x01;
    /// ctdb's NODE_FLAGS_UNHEALTHY.
    pub const UNHEALTHY: u32 = 0x02;
    /// ctdb's NODE_FLAGS_PERMANENTLY_DISABLED.
    pub const DISABLED: u32 = 0x04;
    /// ctdb's NODE_FLAGS_BANNED.
    pub const BANNED: u32 = 0x08;
    /// vipgate's own (ctdb leaves 0x40 unused): the cluster revoked the node's lease.
    pub const FENCED: u32 = 0x40;
    /// vipgate's own: the node is being removed (`vipgate node remove`).
    pub const LEAVING: u32 = 0x80;

    /// ctdb's bit values: DISCONNECTED 0x01, UNHEALTHY 0x02, PERMANENTLY_DISABLED 0x04, BANNED 0x08;
    /// FENCED (vipgate's own: the cluster revoked the node's lease) 0x40; LEAVING (vipgate's own:
    /// the node is being removed) 0x80.
    pub fn bits(&self) -> u32 {
        [
            (self.disconnected, Self::DISCONNECTED),
            (self.unhealthy, Self::UNHEALTHY),
            (self.disabled, Self::DISABLED),
            (self.banned, Self::BANNED),
            (self.fenced, Self::FENCED),
            (self.leaving, Self::LEAVING),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .fold(0, |bits, (_, bit)| bits | bit)
    }

    /// "OK", or the set flags joined by '|' in ctdb's order (DISCONNECTED, DISABLED, BANNED,
    /// UNHEALTHY), then FENCED: "DISCONNECTED|UNHEALTHY".
    pub fn state_word(&self) -> String {
        let names: Vec<&str> = [
            (self.disconnected, "DISCONNECTED"),
            (self.disabled, "DISABLED"),
            (self.banned, "BANNED"),
            (self.unhealthy, "UNHEALTHY"),
            (self.fenced, "FENCED"),
            (self.leaving, "LEAVING"),
        ]
        .iter()
        .filter(|(set, _)| *set)
        .map(|(_, name)| *name)
        .collect();
        if names.is_empty() {
            "OK".to_owned()
        } else {
            names.join("|")
        }
    }
}

/// `vipgate ip`: public IPs and their owners.
///
/// JSON fields: `this_node` (pnn of the answering node), `ips` (array of [`IpStatus`]),
/// `live_serial` (bumped by every change of the set of live IPs; the DNS zone's SOA serial).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpReport {
    pub this_node: u32,
    pub ips: Vec<IpStatus>,
    #[serde(default)]
    pub live_serial: u64,
}

/// One public IP.
///
/// JSON fields: `address`, `prefix_len`, `owner` (pnn, `null` when unhosted), `owner_name`,
/// `interface` (on the owner), `epoch` (bumped at every change of owner), `state` (`"held"`,
/// `"releasing"`, `"unassigned"`), `lease_left_ms` (only when the answering node is the owner),
/// `connections` (client connections known for tickles after a move), `live` (held, configured
/// in the owner's kernel, owner healthy, unfenced and enabled: what DNS answers).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpStatus {
    pub address: IpAddr,
    pub prefix_len: u8,
    pub owner: Option<u32>,
    pub owner_name: Option<String>,
    pub interface: Option<String>,
    pub epoch: u64,
    pub state: VipPhase,
    pub lease_left_ms: Option<u64>,
    #[serde(default)]
    pub connections: u64,
    #[serde(default)]
    pub live: bool,
}

/// Where a VIP stands. JSON: `"held"`, `"releasing"`, `"unassigned"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum VipPhase {
    /// Its owner holds it under a lease.
    Held,
    /// Its owner is letting it go (a planned move); nobody else holds it yet.
    Releasing,
    /// No node holds it.
    Unassigned,
}

impl VipPhase {
    /// The word `vipgate ip -v` prints.
    pub fn word(self) -> &'static str {
        match self {
            VipPhase::Held => "held",
            VipPhase::Releasing => "releasing",
            VipPhase::Unassigned => "unassigned",
        }
    }
}

/// Failures of the control socket, on the server side (binding) and the client side (calling).
#[derive(Debug, thiserror::Error)]
pub enum ControlError {
    #[error("cannot create the control socket directory {path}")]
    CreateDirectory { path: PathBuf, source: io::Error },
    #[error("cannot inspect {path}")]
    Inspect { path: PathBuf, source: io::Error },
    #[error("{path} exists and is not a socket; refusing to replace it")]
    NotASocket { path: PathBuf },
    #[error("another vipgate node is running: it answers on {path}")]
    InUse { path: PathBuf },
    #[error("cannot tell whether a vipgate node still answers on {path}")]
    Probe { path: PathBuf, source: io::Error },
    #[error("cannot remove the stale control socket {path}")]
    RemoveStale { path: PathBuf, source: io::Error },
    #[error("cannot bind the control socket {path}")]
    Bind { path: PathBuf, source: io::Error },
    #[error("cannot restrict the control socket {path} to mode 0600")]
    Restrict { path: PathBuf, source: io::Error },
    #[error(
        "no vipgate node is running here: {} does not exist (start `vipgate node`, or pass --socket)",
        path.display()
    )]
    NoNode { path: PathBuf },
    #[error("no vipgate node is running here: nothing is listening on {} (stale socket?)", path.display())]
    NotListening { path: PathBuf },
    #[error("permission denied on {}: the control socket is root-only", path.display())]
    PermissionDenied { path: PathBuf },
    #[error("cannot connect to {}", path.display())]
    Connect { path: PathBuf, source: io::Error },
    #[error("the node on {} did not answer within {}", path.display(), human_duration(*after))]
    Timeout { path: PathBuf, after: Duration },
    #[error("lost the connection to the node on {}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("the node on {} closed the connection without answering", path.display())]
    ClosedWithoutAnswer { path: PathBuf },
    #[error("the node on {} answered with more than {limit} bytes", path.display())]
    ResponseTooLong { path: PathBuf, limit: usize },
    #[error("the node on {} answered with something that is not a response", path.display())]
    BadResponse {
        path: PathBuf,
        source: serde_json::Error,
    },
}

/// How much the server accepts and how long it waits.
#[derive(Debug, Clone)]
pub struct ServerLimits {
    /// The longest request line, newline excluded; a longer one gets an error and the connection
    /// is closed.
    pub max_request_bytes: usize,
    /// Connections served at once; one more is told so and closed.
    pub max_connections: usize,
    /// How long the node's event loop may take to answer one request.
    pub handler_deadline: Duration,
    /// A connection that sends nothing (or does not read its answer) for this long is closed.
    pub idle_timeout: Duration,
    /// On shutdown, how long requests in flight may take to finish.
    pub drain: Duration,
}

impl Default for ServerLimits {
    fn default() -> Self {
        ServerLimits {
            max_request_bytes: MAX_REQUEST_BYTES,
            max_connections: 16,
            handler_deadline: Duration::from_secs(5),
            idle_timeout: Duration::from_secs(60),
            drain: Duration::from_secs(1),
        }
    }
}

/// A bound control socket, not yet serving. Dropping it removes the socket file (if it is still
/// the one this value bound).
#[derive(Debug)]
pub struct ControlSocket {
    listener: UnixListener,
    path: PathBuf,
    /// Device and inode of the socket file this value bound, so that only that file is removed.
    identity: (u64, u64),
    limits: ServerLimits,
}

/// Binds the control socket at `path` with the default limits and serves it until `shutdown`
/// resolves; see [`ControlSocket::bind`] and [`ControlSocket::run`].
pub async fn serve(
    path: &Path,
    requests: mpsc::Sender<RequestEnvelope>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ControlError> {
    ControlSocket::bind(path, ServerLimits::default())
        .await?
        .run(requests, shutdown)
        .await;
    Ok(())
}

impl ControlSocket {
    /// Creates the parent directory (mode 0755) if missing, removes a stale socket at `path`
    /// only if nothing answers on it (a live node's socket is an error), binds, and restricts the
    /// socket to mode 0600.
    pub async fn bind(path: &Path, limits: ServerLimits) -> Result<Self, ControlError> {
        if let Some(parent) = path
            .parent()
            .filter(|parent| !parent.as_os_str().is_empty())
        {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o755)
                .create(parent)
                .map_err(|source| ControlError::CreateDirectory {
                    path: parent.to_path_buf(),
                    source,
                })?;
        }
        remove_if_stale(path).await?;
        let listener = UnixListener::bind(path).map_err(|source| ControlError::Bind {
            path: path.to_path_buf(),
            source,
        })?;
        let restrict = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
            .and_then(|()| std::fs::symlink_metadata(path));
        let metadata = match restrict {
            Ok(metadata) => metadata,
            Err(source) => {
                // Nothing has been accepted yet; leave no half-configured socket behind.
                let _ = std::fs::remove_file(path);
                return Err(ControlError::Restrict {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        Ok(ControlSocket {
            listener,
            path: path.to_path_buf(),
            identity: (metadata.dev(), metadata.ino()),
            limits,
        })
    }

    /// The socket's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Serves connections until `shutdown` resolves, then removes the socket file and lets
    /// requests in flight finish for [`ServerLimits::drain`]. Errors of single connections are
    /// logged and never end the server.
    pub async fn run(
        self,
        requests: mpsc::Sender<RequestEnvelope>,
        shutdown: impl Future<Output = ()>,
    ) {
        let (stop_sender, stop_receiver) = watch::channel(false);
        let permits = Arc::new(Semaphore::new(self.limits.max_connections));
        let own_uid = effective_uid();
        let mut connections = JoinSet::new();
        let mut shutdown = std::pin::pin!(shutdown);
        loop {
            tokio::select! {
                () = &mut shutdown => break,
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
                accepted = self.listener.accept() => match accepted {
                    Ok((stream, _)) => match Arc::clone(&permits).try_acquire_owned() {
                        Ok(permit) => {
                            let connection = Connection {
                                requests: requests.clone(),
                                limits: self.limits.clone(),
                                stopping: stop_receiver.clone(),
                                own_uid,
                            };
                            connections.spawn(async move {
                                connection.serve(stream).await;
                                drop(permit);
                            });
                        }
                        Err(_) => {
                            let message = format!(
                                "too many control connections (at most {})",
                                self.limits.max_connections
                            );
                            // A fresh socket's send buffer takes one short line without waiting.
                            let _ = stream.try_write(&response_line(&Response::error(message)));
                        }
                    },
                    Err(error) => {
                        // Out of descriptors or memory: back off instead of spinning.
                        tracing::warn!(path = %self.path.display(), %error, "control socket accept failed");
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                },
            }
        }
        self.remove_socket_file();
        let _ = stop_sender.send(true);
        let drained = tokio::time::timeout(self.limits.drain, async {
            while connections.join_next().await.is_some() {}
        })
        .await;
        if drained.is_err() {
            connections.abort_all();
        }
    }

    /// Removes the socket file if it is still the one this value bound.
    fn remove_socket_file(&self) {
        if let Ok(metadata) = std::fs::symlink_metadata(&self.path)
            && (metadata.dev(), metadata.ino()) == self.identity
            && let Err(error) = std::fs::remove_file(&self.path)
            && error.kind() != io::ErrorKind::NotFound
        {
            tracing::warn!(path = %self.path.display(), %error, "cannot remove the control socket");
        }
    }
}

impl Drop for ControlSocket {
    fn drop(&mut self) {
        self.remove_socket_file();
    }
}

/// Removes `path` if it is a socket nobody answers on; refuses a live one and anything that is
/// not a socket.
async fn remove_if_stale(path: &Path) -> Result<(), ControlError> {
    let metadata = match std::fs::symlink_metadata(path) {
        Ok(metadata) => metadata,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(source) => {
            return Err(ControlError::Inspect {
                path: path.to_path_buf(),
                source,
            });
        }
    };
    if !metadata.file_type().is_socket() {
        return Err(ControlError::NotASocket {
            path: path.to_path_buf(),
        });
    }
    // A live node accepts (or its backlog is full, which connect reports as WouldBlock); only a
    // refused connection proves the socket is stale.
    let probe = tokio::time::timeout(Duration::from_secs(1), UnixStream::connect(path)).await;
    match probe {
        Ok(Ok(_)) => Err(ControlError::InUse {
            path: path.to_path_buf(),
        }),
        Ok(Err(error)) if error.kind() == io::ErrorKind::ConnectionRefused => {
            match std::fs::remove_file(path) {
                Ok(()) => Ok(()),
                Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(source) => Err(ControlError::RemoveStale {
                    path: path.to_path_buf(),
                    source,
                }),
            }
        }
        Ok(Err(error)) if error.kind() == io::ErrorKind::WouldBlock => Err(ControlError::InUse {
            path: path.to_path_buf(),
        }),
        Ok(Err(source)) => Err(ControlError::Probe {
            path: path.to_path_buf(),
            source,
        }),
        Err(_) => Err(ControlError::InUse {
            path: path.to_path_buf(),
        }),
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

/// One accepted connection and what it needs.
struct Connection {
    requests: mpsc::Sender<RequestEnvelope>,
    limits: ServerLimits,
    stopping: watch::Receiver<bool>,
    /// Besides root, the uid the node runs as may use the socket (a node run as a dedicated user
    /// with capabilities owns its socket).
    own_uid: u32,
}

impl Connection {
    async fn serve(mut self, stream: UnixStream) {
        let peer_uid = match stream.peer_cred() {
            Ok(credentials) => credentials.uid(),
            Err(error) => {
                tracing::warn!(%error, "cannot read the peer credentials of a control connection");
                return;
            }
        };
        let (read_half, mut write_half) = stream.into_split();
        if peer_uid != 0 && peer_uid != self.own_uid {
            tracing::warn!(
                uid = peer_uid,
                "refused a control connection from a non-root user"
            );
            let _ = tokio::time::timeout(
                self.limits.idle_timeout,
                write_half.write_all(&response_line(&Response::error(ROOT_ONLY))),
            )
            .await;
            return;
        }
        let mut reader = tokio::io::BufReader::new(read_half);
        let mut line = Vec::new();
        loop {
            let read = tokio::select! {
                _ = self.stopping.wait_for(|stopping| *stopping) => return,
                read = tokio::time::timeout(
                    self.limits.idle_timeout,
                    read_line(&mut reader, self.limits.max_request_bytes, &mut line),
                ) => read,
            };
            let (response, keep_going) = match read {
                Err(_) | Ok(Err(_)) | Ok(Ok(Line::End)) => return,
                Ok(Ok(Line::TooLong)) => (
                    Response::error(format!(
                        "bad request: longer than {} bytes",
                        self.limits.max_request_bytes
                    )),
                    false,
                ),
                Ok(Ok(Line::Complete)) => {
                    if line.iter().all(u8::is_ascii_whitespace) {
                        continue;
                    }
                    match serde_json::from_slice::<Request>(&line) {
                        Ok(request) => (self.answer(request).await, true),
                        Err(error) => (Response::error(format!("bad request: {error}")), true),
                    }
                }
            };
            let written = tokio::time::timeout(
                self.limits.idle_timeout,
                write_half.write_all(&response_line(&response)),
            )
            .await;
            if !matches!(written, Ok(Ok(()))) || !keep_going {
                return;
            }
        }
    }

    /// Hands `request` to the node and waits for its answer, at most the handler deadline.
    async fn answer(&self, request: Request) -> Response {
        let (answer_sender, answer_receiver) = oneshot::channel();
        let exchange = async {
            if self.requests.send((request, answer_sender)).await.is_err() {
                return Response::error("the node is shutting down");
            }
            answer_receiver.await.unwrap_or_else(|_| {
                Response::error("the node dropped the request without answering")
            })
        };
        let deadline = self.limits.handler_deadline;
        tokio::time::timeout(deadline, exchange)
            .await
            .unwrap_or_else(|_| {
                Response::error(format!(
                    "the node did not answer in {}",
                    human_duration(deadline)
                ))
            })
    }
}

/// What [`read_line`] found.
#[derive(Debug, PartialEq, Eq)]
enum Line {
    /// A line (newline removed) is in the buffer; a last line without a newline counts too.
    Complete,
    /// The line is longer than the limit; the buffer holds its first bytes.
    TooLong,
    /// The peer closed the connection before sending anything more.
    End,
}

/// Reads one line of at most `limit` bytes (newline excluded) into `line`, never buffering more
/// than `limit + 1` bytes whatever the peer sends.
async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    limit: usize,
    line: &mut Vec<u8>,
) -> io::Result<Line> {
    line.clear();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    let read = reader.take(cap).read_until(b'\n', line).await?;
    if read == 0 {
        return Ok(Line::End);
    }
    if line.last() == Some(&b'\n') {
        line.pop();
        return Ok(Line::Complete);
    }
    if line.len() > limit {
        Ok(Line::TooLong)
    } else {
        Ok(Line::Complete)
    }
}

/// `response` as one JSON line.
fn response_line(response: &Response) -> Vec<u8> {
    let mut bytes = serde_json::to_vec(response).unwrap_or_else(|error| {
        serde_json::json!({ "result": "error", "message": format!("cannot encode the answer: {error}") })
            .to_string()
            .into_bytes()
    });
    bytes.push(b'\n');
    bytes
}

/// Sends `request` to the node listening on `path` and returns its response, all within
/// `timeout`. A refusal by the node (`Response::Error`) is a response, not an error.
pub async fn call(
    path: &Path,
    request: &Request,
    timeout: Duration,
) -> Result<Response, ControlError> {
    tokio::time::timeout(timeout, call_unbounded(path, request))
        .await
        .unwrap_or_else(|_| {
            Err(ControlError::Timeout {
                path: path.to_path_buf(),
                after: timeout,
            })
        })
}

async fn call_unbounded(path: &Path, request: &Request) -> Result<Response, ControlError> {
    let stream = UnixStream::connect(path)
        .await
        .map_err(|source| connect_error(path, source))?;
    let (read_half, mut write_half) = stream.into_split();
    let mut request_line = serde_json::to_vec(request).map_err(|source| ControlError::Io {
        path: path.to_path_buf(),
        source: io::Error::other(source),
    })?;
    request_line.push(b'\n');
    // A node that refuses the connection (not root) answers and closes before reading: its
    // answer still counts, so a failed write is not yet an error.
    let write_error = write_half.write_all(&request_line).await.err();
    let mut reader = tokio::io::BufReader::new(read_half);
    let mut line = Vec::new();
    let read = read_line(&mut reader, MAX_RESPONSE_BYTES, &mut line).await;
    match read {
        Ok(Line::Complete) => {
            serde_json::from_slice(&line).map_err(|source| ControlError::BadResponse {
                path: path.to_path_buf(),
                source,
            })
        }
        Ok(Line::TooLong) => Err(ControlError::ResponseTooLong {
            path: path.to_path_buf(),
            limit: MAX_RESPONSE_BYTES,
        }),
        Ok(Line::End) => match write_error {
            Some(source) => Err(ControlError::Io {
                path: path.to_path_buf(),
                source,
            }),
            None => Err(ControlError::ClosedWithoutAnswer {
                path: path.to_path_buf(),
            }),
        },
        Err(source) => Err(ControlError::Io {
            path: path.to_path_buf(),
            source: write_error.unwrap_or(source),
        }),
    }
}

fn connect_error(path: &Path, source: io::Error) -> ControlError {
    let path = path.to_path_buf();
    match source.kind() {
        io::ErrorKind::NotFound => ControlError::NoNode { path },
        io::ErrorKind::ConnectionRefused => ControlError::NotListening { path },
        io::ErrorKind::PermissionDenied => ControlError::PermissionDenied { path },
        _ => ControlError::Connect { path, source },
    }
}

/// `5s`, `250ms`, `1.5s`: a duration as people write it.
pub fn human_duration(duration: Duration) -> String {
    let millis = duration.as_millis();
    let mut text = String::new();
    if millis < 1000 {
        let _ = write!(text, "{millis}ms");
    } else if millis % 1000 == 0 {
        let _ = write!(text, "{}s", millis / 1000);
    } else {
        let _ = write!(text, "{}.{}s", millis / 1000, (millis % 1000) / 100);
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status() -> ClusterStatus {
        let node = |pnn: u32, name: &str, address: &str| NodeStatus {
            pnn,
            name: name.into(),
            cluster_address: address.parse().unwrap(),
            flags: NodeFlags::default(),
            ban_left_secs: None,
            failing_probes: vec![],
            raft: RaftRole::Voter,
        };
        ClusterStatus {
            this_node: 1,
            nodes: vec![
                node(0, "node1", "198.51.100.11"),
                node(1, "node2", "198.51.100.12"),
                node(2, "7", "198.51.100.13"),
            ],
            leader: Some(0),
            term: 4,
            commit_index: 118,
            applied_index: 117,
        }
    }

    #[test]
    fn flag_bits_and_words_follow_ctdb() {
        let flags = |d, u, x, b, f| NodeFlags {
            disconnected: d,
            unhealthy: u,
            disabled: x,
            banned: b,
            fenced: f,
            leaving: false,
        };
        let leaving = NodeFlags {
            leaving: true,
            ..NodeFlags::default()
        };
        let table = [
            (leaving, 0x80, "LEAVING"),
            (flags(false, false, false, false, false), 0x00, "OK"),
            (
                flags(true, false, false, false, false),
                0x01,
                "DISCONNECTED",
            ),
            (flags(false, true, false, false, false), 0x02, "UNHEALTHY"),
            (flags(false, false, true, false, false), 0x04, "DISABLED"),
            (flags(false, false, false, true, false), 0x08, "BANNED"),
            (flags(false, false, false, false, true), 0x40, "FENCED"),
            (
                flags(true, true, false, false, false),
                0x03,
                "DISCONNECTED|UNHEALTHY",
            ),
            (
                flags(false, true, true, true, false),
                0x0e,
                "DISABLED|BANNED|UNHEALTHY",
            ),
            (
                flags(true, false, false, false, true),
                0x41,
                "DISCONNECTED|FENCED",
            ),
            (
                flags(true, true, true, true, true),
                0x4f,
                "DISCONNECTED|DISABLED|BANNED|UNHEALTHY|FENCED",
            ),
        ];
        for (flags, bits, word) in table {
            assert_eq!(flags.bits(), bits, "{flags:?}");
            assert_eq!(flags.state_word(), word, "{flags:?}");
        }
    }

    #[test]
    fn nodes_are_found_by_pnn_then_name_then_address() {
        let status = status();
        let found = |which: &str| status.node(which).map(|node| node.pnn);
        assert_eq!(found("0"), Some(0));
        assert_eq!(found(" 1 "), Some(1));
        assert_eq!(found("node1"), Some(0));
        assert_eq!(found("198.51.100.13"), Some(2));
        // A number is a pnn, even when a node is named like one.
        assert_eq!(found("7"), None);
        assert_eq!(found("node9"), None);
        assert_eq!(found("198.51.100.99"), None);
        assert_eq!(found(""), None);
        assert_eq!(status.this().map(|node| node.name.as_str()), Some("node2"));
    }

    #[test]
    fn every_request_round_trips_with_its_documented_tag() {
        let address: IpAddr = "192.0.2.101".parse().unwrap();
        let table = [
            (Request::Status, r#"{"command":"status"}"#),
            (Request::Ip { all: true }, r#"{"command":"ip","all":true}"#),
            (
                Request::MoveIp {
                    address,
                    node: "node2".into(),
                },
                r#"{"command":"move-ip","address":"192.0.2.101","node":"node2"}"#,
            ),
            (
                Request::Disable { node: None },
                r#"{"command":"disable","node":null}"#,
            ),
            (
                Request::Enable {
                    node: Some("1".into()),
                },
                r#"{"command":"enable","node":"1"}"#,
            ),
            (
                Request::Ban {
                    node: None,
                    seconds: 30,
                },
                r#"{"command":"ban","node":null,"seconds":30}"#,
            ),
            (
                Request::Unban { node: None },
                r#"{"command":"unban","node":null}"#,
            ),
            (
                Request::NodeAdd {
                    name: "node4".into(),
                    address: "198.51.100.14".parse().unwrap(),
                },
                r#"{"command":"node-add","name":"node4","address":"198.51.100.14"}"#,
            ),
            (
                Request::NodeRemove {
                    name: "node4".into(),
                },
                r#"{"command":"node-remove","name":"node4"}"#,
            ),
            (
                Request::NodeSetAddress {
                    name: "node4".into(),
                    address: "2001:db8::4".parse().unwrap(),
                },
                r#"{"command":"node-set-address","name":"node4","address":"2001:db8::4"}"#,
            ),
        ];
        for (request, json) in table {
            assert_eq!(serde_json::to_string(&request).unwrap(), json);
            assert_eq!(serde_json::from_str::<Request>(json).unwrap(), request);
        }
    }

    #[test]
    fn malformed_requests_are_refused() {
        // serde cannot deny extra fields beside the tag of a field-less variant, so
        // `{"command":"status","extra":1}` is read as `status`; every variant with fields refuses
        // unknown ones.
        for json in [
            r#"{"command":"reboot"}"#,
            r#"{"command":"ip"}"#,
            r#"{"command":"ip","all":true,"verbose":true}"#,
            r#"{"command":"move-ip","address":"not-an-ip","node":"1"}"#,
            r#"{"command":"ban","node":null,"seconds":-1}"#,
            r#"{"all":true}"#,
            r#"[]"#,
            "",
        ] {
            assert!(serde_json::from_str::<Request>(json).is_err(), "{json}");
        }
    }

    #[test]
    fn every_response_round_trips_with_its_documented_tag() {
        let ips = IpReport {
            this_node: 0,
            live_serial: 0,
            ips: vec![IpStatus {
                address: "192.0.2.101".parse().unwrap(),
                prefix_len: 24,
                owner: Some(0),
                owner_name: Some("node1".into()),
                interface: Some("eth1".into()),
                epoch: 3,
                state: VipPhase::Releasing,
                lease_left_ms: Some(1200),
                connections: 0,
                live: false,
            }],
        };
        let table = [
            (Response::Status(status()), "status"),
            (Response::Ips(ips), "ips"),
            (
                Response::Done {
                    message: "moved".into(),
                },
                "done",
            ),
            (Response::error("no such node: node9"), "error"),
        ];
        for (response, tag) in table {
            let json = serde_json::to_value(&response).unwrap();
            assert_eq!(json["result"], tag);
            let back: Response = serde_json::from_value(json).unwrap();
            assert_eq!(back, response);
        }
        let json = serde_json::to_value(Response::Status(status())).unwrap();
        assert_eq!(json["nodes"][0]["cluster_address"], "198.51.100.11");
        assert_eq!(json["nodes"][0]["flags"]["disconnected"], false);
        assert_eq!(json["leader"], 0);
    }

    #[test]
    fn durations_read_as_people_write_them() {
        for (millis, text) in [
            (0, "0ms"),
            (250, "250ms"),
            (1000, "1s"),
            (1500, "1.5s"),
            (1299, "1.2s"),
            (5000, "5s"),
        ] {
            assert_eq!(human_duration(Duration::from_millis(millis)), text);
        }
    }

    #[tokio::test]
    async fn lines_are_bounded_whatever_the_peer_sends() {
        let cases: [(&[u8], Line, &[u8]); 6] = [
            (b"abc\n", Line::Complete, b"abc"),
            (b"abcd\n", Line::Complete, b"abcd"),
            (b"abcde\n", Line::TooLong, b"abcde"),
            (b"abcdefghij", Line::TooLong, b"abcde"),
            (b"ab", Line::Complete, b"ab"),
            (b"", Line::End, b""),
        ];
        for (input, expected, content) in cases {
            let mut reader = tokio::io::BufReader::new(input);
            let mut line = Vec::new();
            let found = read_line(&mut reader, 4, &mut line).await.unwrap();
            assert_eq!(found, expected, "{input:?}");
            assert_eq!(line, content, "{input:?}");
        }
        let mut reader = tokio::io::BufReader::new(&b"one\ntwo\n"[..]);
        let mut line = Vec::new();
        assert_eq!(
            read_line(&mut reader, 4, &mut line).await.unwrap(),
            Line::Complete
        );
        assert_eq!(line, b"one");
        assert_eq!(
            read_line(&mut reader, 4, &mut line).await.unwrap(),
            Line::Complete
        );
        assert_eq!(line, b"two");
        assert_eq!(
            read_line(&mut reader, 4, &mut line).await.unwrap(),
            Line::End
        );
    }
}
