//! One peer's link, run by one task per configured peer: dialling with backoff (when our id is
//! the lower) or waiting for the peer's dial (when it is the higher), then moving payloads from
//! the peer's bounded send queue onto the connection and records from the connection into the
//! event channel, until the link fails or is replaced, and again.
//!
//! Reader and writer of a connection are two futures of this one task sharing the session's
//! ciphers by reference, so aborting the task closes the connection at once.

use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

use super::noise::{self, Opener, Sealer, Session};
use super::pacing::{Backoff, WarningLimiter};
use super::wire::{
    NOISE_MESSAGE_MAX, PLAINTEXT_MAX, RECORD_HEADER_LEN, RecordAssembler, Step, TAG_LEN,
    chunk_ranges,
};
use super::{Event, LinkError, Shared};

/// How long a TCP connect to a peer may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a handshake may take, on either side.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(2);
/// Longest a connection we moved off stays open for the peer to switch over.
const LINGER: Duration = Duration::from_secs(2);
/// First delay before redialling; doubles per failure.
const BACKOFF_INITIAL: Duration = Duration::from_millis(50);
/// Longest delay between dial attempts, so a restarted peer is back within about this long.
const BACKOFF_CAP: Duration = Duration::from_millis(500);
/// Longest silence on our side of a link before a keepalive is sent, whatever the idle timeout,
/// so that a peer configured with a shorter idle timeout does not drop us.
const KEEPALIVE_MAX: Duration = Duration::from_millis(250);
/// Outgoing bytes gathered before a write: small messages queued together leave in one
/// system call, and a large payload never sits whole in a second buffer.
const FLUSH_AT: usize = 256 * 1024;
/// Warnings about one link: at most this many per window.
pub(crate) const WARNING_BURST: u32 = 5;
pub(crate) const WARNING_WINDOW: Duration = Duration::from_secs(10);

const CONNECTING: u8 = 0;
const CONNECTED: u8 = 1;
const DOWN: u8 = 2;

/// A link's state as [`super::Transport::send`] sees it, shared with the link's task.
///
/// `Connecting` (at start) queues messages for the first connection. `Down` (a dial failed, an
/// acceptor waited an idle timeout in vain, or a link was lost) drops them at once, since they
/// could only arrive late. `Unreachable` is edge-triggered: reported once, and again only after
/// a message was queued or the link came up.
#[derive(Debug)]
pub(crate) struct LinkStatus {
    state: AtomicU8,
    unreachable_reported: AtomicBool,
}

impl LinkStatus {
    pub(crate) fn new() -> LinkStatus {
        LinkStatus {
            state: AtomicU8::new(CONNECTING),
            unreachable_reported: AtomicBool::new(false),
        }
    }

    pub(crate) fn is_down(&self) -> bool {
        self.state.load(Ordering::Acquire) == DOWN
    }

    /// Reports `peer` unreachable unless that was done since the last success. If the event
    /// channel is full the report is dropped (the consumer is busy with older events) and the
    /// next failure tries again.
    pub(crate) fn report_unreachable(&self, peer: u64, events: &mpsc::Sender<Event>) {
        if self.unreachable_reported.swap(true, Ordering::AcqRel) {
            return;
        }
        if events.try_send(Event::Unreachable { peer }).is_err() {
            self.unreachable_reported.store(false, Ordering::Release);
        }
    }

    /// A message was queued for a link that is not down.
    pub(crate) fn queued(&self) {
        if self.unreachable_reported.load(Ordering::Acquire) {
            self.unreachable_reported.store(false, Ordering::Release);
        }
    }
}

/// An authenticated connection handed from the listener to the acceptor link of its peer.
#[derive(Debug)]
pub(crate) struct Established {
    pub(crate) stream: TcpStream,
    pub(crate) session: Session,
    pub(crate) remote: SocketAddr,
}

/// Who opens the connection of a pair: the node with the lower id.
#[derive(Debug, Clone)]
pub(crate) enum Role {
    /// The peer's address, which `set_peers` may change: the link then dials the new one while
    /// the connection that is up keeps serving (the peer may still be listening at its old
    /// address only, until it hears of its move over that very connection), and switches once
    /// the new one is up.
    Dial(Arc<Mutex<SocketAddr>>),
    Accept,
}

/// How a connection ended.
enum Ended {
    Lost(LinkError),
    /// The peer dialled again (it restarted, or gave up on the old connection first).
    Replaced(Established),
}

/// Everything one link's task owns.
#[derive(Debug)]
pub(crate) struct Link {
    pub(crate) peer: u64,
    pub(crate) role: Role,
    pub(crate) status: Arc<LinkStatus>,
    pub(crate) queue: mpsc::Receiver<Vec<u8>>,
    pub(crate) incoming: mpsc::Receiver<Established>,
    pub(crate) shared: Arc<Shared>,
}

impl Link {
    pub(crate) async fn run(mut self) {
        match self.role {
            Role::Dial(ref address) => {
                let address = address.clone();
                self.run_dialer(&address).await;
            }
            Role::Accept => self.run_acceptor().await,
        }
    }

    async fn run_dialer(&mut self, current: &Mutex<SocketAddr>) {
        let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_CAP);
        let mut warnings = WarningLimiter::new(WARNING_WINDOW, WARNING_BURST);
        let mut failures_in_a_row = 0u64;
        loop {
            let address = *current.lock().unwrap_or_else(PoisonError::into_inner);
            match self.dial(address).await {
                Ok(established) => {
                    backoff.reset();
                    failures_in_a_row = 0;
                    let mut next = Some(established);
                    while let Some(established) = next.take() {
                        let remote = established.remote;
                        match self.serve(established, Some(current)).await {
                            Ended::Replaced(newer) => {
                                tracing::info!(
                                    peer = self.peer,
                                    old = %remote,
                                    new = %newer.remote,
                                    "moved the link to a new path"
                                );
                                next = Some(newer);
                            }
                            Ended::Lost(error) => self.log_loss(remote, &error, &mut warnings),
                        }
                    }
                }
                Err(error) => {
                    // The first failure is news; the retries behind it are not.
                    if failures_in_a_row == 0 {
                        tracing::warn!(peer = self.peer, %address, "cannot reach peer: {error}");
                    } else {
                        tracing::debug!(peer = self.peer, %address, "cannot reach peer: {error}");
                    }
                    failures_in_a_row += 1;
                }
            }
            self.went_down();
            tokio::time::sleep(backoff.next_delay()).await;
        }
    }

    async fn run_acceptor(&mut self) {
        let mut warnings = WarningLimiter::new(WARNING_WINDOW, WARNING_BURST);
        let mut next = tokio::select! {
            established = self.incoming.recv() => established,
            () = tokio::time::sleep(self.shared.idle_timeout) => {
                self.went_down();
                self.incoming.recv().await
            }
        };
        while let Some(established) = next.take() {
            let remote = established.remote;
            match self.serve(established, None).await {
                Ended::Replaced(newer) => {
                    tracing::info!(
                        peer = self.peer,
                        old = %remote,
                        new = %newer.remote,
                        "peer dialled again; replacing its link"
                    );
                    next = Some(newer);
                }
                Ended::Lost(error) => {
                    self.log_loss(remote, &error, &mut warnings);
                    self.went_down();
                    next = self.incoming.recv().await;
                }
            }
        }
    }

    async fn dial(&self, address: SocketAddr) -> Result<Established, LinkError> {
        dial(&self.shared, self.peer, address).await
    }

    /// Runs one connection until it fails, or a newer one replaces it: on the acceptor side the
    /// peer dialled again; on the dialler side (`dialled` is the peer's address) our address or
    /// the peer's moved and a connection between the new addresses is up.
    async fn serve(
        &mut self,
        established: Established,
        dialled: Option<&Mutex<SocketAddr>>,
    ) -> Ended {
        let Established {
            mut stream,
            session,
            remote,
        } = established;
        tracing::info!(peer = self.peer, %remote, "link up");
        self.status.state.store(CONNECTED, Ordering::Release);
        self.status.queued();
        // Awaited, unlike `Unreachable`: the consumer must see `Connected` before the messages
        // of this connection, and pausing the link until it has room is harmless.
        let _ = self
            .shared
            .events
            .send(Event::Connected { peer: self.peer })
            .await;

        let source = stream.local_addr().map(|local| local.ip()).ok();
        let (read_half, mut write_half) = stream.split();
        let mut reader = BufReader::with_capacity(2 + NOISE_MESSAGE_MAX, read_half);
        let (sealer, opener) = session.split();
        let keepalive = (self.shared.idle_timeout / 3).min(KEEPALIVE_MAX);
        let reading = read_records(&mut reader, opener, self.peer, &self.shared);
        let writing = write_records(&mut write_half, sealer, &mut self.queue, keepalive);
        let moving = async {
            match dialled {
                Some(dialled) => {
                    follow_moves(&self.shared, self.peer, dialled, remote, source).await
                }
                None => std::future::pending().await,
            }
        };
        let moved = tokio::select! {
            error = reading => return Ended::Lost(error),
            error = writing => return Ended::Lost(error),
            Some(newer) = self.incoming.recv() => return Ended::Replaced(newer),
            newer = moving => newer,
        };
        drop(reader);
        self.shared.linger(stream);
        Ended::Replaced(moved)
    }

    /// The link is down: later sends are dropped at once, queued ones are dropped now, and the
    /// peer is reported unreachable.
    fn went_down(&mut self) {
        self.status.state.store(DOWN, Ordering::Release);
        while self.queue.try_recv().is_ok() {}
        self.status
            .report_unreachable(self.peer, &self.shared.events);
    }

    fn log_loss(&self, remote: SocketAddr, error: &LinkError, warnings: &mut WarningLimiter) {
        if matches!(error, LinkError::Closed) {
            tracing::info!(peer = self.peer, %remote, "link lost: {error}");
            return;
        }
        if let Some(suppressed) = warnings.admit(Instant::now()) {
            tracing::warn!(
                peer = self.peer,
                %remote,
                suppressed,
                "link lost: {error}"
            );
        }
    }
}

/// Keeps a connection we moved off open until the peer closes it (it does once it has the
/// new one) or [`LINGER`] passes, so that it never sees the old one end before the new one
/// arrives and takes the link for lost.
pub(crate) async fn linger(mut stream: TcpStream) {
    let mut sink = [0u8; 4096];
    let _ = timeout(LINGER, async {
        while let Ok(1..) = stream.read(&mut sink).await {}
    })
    .await;
}

/// Connects to `address` from our cluster address (when it is a specific one of the same
/// family) and runs the initiator's handshake.
async fn dial(shared: &Shared, peer: u64, address: SocketAddr) -> Result<Established, LinkError> {
    let source = shared.source();
    let socket = if address.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if !source.is_unspecified() && source.is_ipv4() == address.is_ipv4() {
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let mut stream = timeout(CONNECT_TIMEOUT, socket.connect(address))
        .await
        .map_err(|_| LinkError::ConnectTimeout(CONNECT_TIMEOUT))??;
    stream.set_nodelay(true)?;
    let session = timeout(
        HANDSHAKE_TIMEOUT,
        noise::initiate(&mut stream, &shared.keys, shared.me, peer),
    )
    .await
    .map_err(|_| LinkError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
    Ok(Established {
        stream,
        session,
        remote: address,
    })
}

/// Whether a dialled connection from `source` to `remote` still runs between the addresses
/// the link wants: the peer's current address, from our current one.
fn on_current_path(
    remote: SocketAddr,
    source: Option<IpAddr>,
    wanted_remote: SocketAddr,
    wanted_source: IpAddr,
) -> bool {
    remote == wanted_remote
        && (wanted_source.is_unspecified()
            || wanted_source.is_ipv4() != remote.is_ipv4()
            || source.is_none_or(|source| source == wanted_source))
}

/// Resolves once a connection on the current path is up, for a dialled connection that ran
/// from `source` to `remote` when our address or the peer's has moved since. The old
/// connection keeps serving meanwhile: the peer may learn of its move only through it, and a
/// peer that has not moved its listener yet refuses the new dial (retried with backoff).
async fn follow_moves(
    shared: &Shared,
    peer: u64,
    dialled: &Mutex<SocketAddr>,
    remote: SocketAddr,
    source: Option<IpAddr>,
) -> Established {
    let mut paths = shared.paths.subscribe();
    let mut backoff = Backoff::new(BACKOFF_INITIAL, BACKOFF_CAP);
    loop {
        let wanted = *dialled.lock().unwrap_or_else(PoisonError::into_inner);
        if on_current_path(remote, source, wanted, shared.source()) {
            backoff.reset();
            if paths.changed().await.is_err() {
                return std::future::pending().await;
            }
            continue;
        }
        match dial(shared, peer, wanted).await {
            Ok(established) => return established,
            Err(error) => {
                tracing::debug!(peer, address = %wanted, "cannot reach a moved peer yet: {error}");
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Reads Noise messages until something is wrong, delivering whole records as events.
async fn read_records<R: AsyncRead + Unpin>(
    reader: &mut R,
    mut opener: Opener<'_>,
    peer: u64,
    shared: &Shared,
) -> LinkError {
    let mut ciphertext = vec![0u8; NOISE_MESSAGE_MAX];
    let mut plaintext = vec![0u8; NOISE_MESSAGE_MAX];
    let mut assembler = RecordAssembler::new(shared.max_message);
    let idle = shared.idle_timeout;
    loop {
        let length = match timeout(idle, noise::read_frame(reader, &mut ciphertext, TAG_LEN)).await
        {
            Err(_) => return LinkError::Idle(idle),
            Ok(Err(error)) => return error,
            Ok(Ok(length)) => length,
        };
        let opened = match opener.open(&ciphertext[..length], &mut plaintext) {
            Ok(opened) => opened,
            Err(error) => return error,
        };
        match assembler.push(&plaintext[..opened]) {
            Ok(Step::Record(payload)) => {
                // Waiting here pushes back on the peer through TCP when the consumer is slow;
                // the idle timer only runs while reading, so that is not taken for silence. A
                // dropped receiver means nobody listens any more: the record is discarded.
                let _ = shared
                    .events
                    .send(Event::Message {
                        from: peer,
                        payload,
                    })
                    .await;
            }
            Ok(Step::Keepalive | Step::Partial) => {}
            Err(error) => return error.into(),
        }
    }
}

/// Writes queued payloads (and keepalives when there are none) until something is wrong.
async fn write_records<W: AsyncWrite + Unpin>(
    writer: &mut W,
    mut sealer: Sealer<'_>,
    queue: &mut mpsc::Receiver<Vec<u8>>,
    keepalive: Duration,
) -> LinkError {
    let mut out = Vec::new();
    let mut scratch = Vec::with_capacity(PLAINTEXT_MAX);
    loop {
        let result = match timeout(keepalive, queue.recv()).await {
            Err(_) => sealer.seal_into(&[], &mut out),
            Ok(None) => return LinkError::Removed,
            Ok(Some(payload)) => {
                write_record(writer, &mut sealer, &mut out, &mut scratch, &payload).await
            }
        };
        if let Err(error) = result {
            return error;
        }
        // Whatever else is queued leaves in the same write.
        while out.len() < FLUSH_AT {
            let Ok(payload) = queue.try_recv() else { break };
            if let Err(error) =
                write_record(writer, &mut sealer, &mut out, &mut scratch, &payload).await
            {
                return error;
            }
        }
        if let Err(error) = writer.write_all(&out).await {
            return error.into();
        }
        out.clear();
    }
}

/// Seals one payload as a record into `out`, writing `out` whenever it reaches [`FLUSH_AT`].
async fn write_record<W: AsyncWrite + Unpin>(
    writer: &mut W,
    sealer: &mut Sealer<'_>,
    out: &mut Vec<u8>,
    scratch: &mut Vec<u8>,
    payload: &[u8],
) -> Result<(), LinkError> {
    let length = u32::try_from(payload.len()).map_err(|_| LinkError::FrameLength {
        length: payload.len(),
        max: u32::MAX as usize,
    })?;
    for (index, range) in chunk_ranges(payload.len()).enumerate() {
        if index == 0 {
            scratch.clear();
            scratch.extend_from_slice(&length.to_be_bytes());
            scratch.extend_from_slice(&payload[range]);
            debug_assert!(scratch.len() <= PLAINTEXT_MAX && scratch.len() >= RECORD_HEADER_LEN);
            sealer.seal_into(scratch, out)?;
        } else {
            sealer.seal_into(&payload[range], out)?;
        }
        if out.len() >= FLUSH_AT {
            writer.write_all(out).await?;
            out.clear();
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_dialled_connection_is_on_the_current_path_while_neither_end_moved() {
        let at = |text: &str| text.parse::<SocketAddr>().unwrap();
        let ip = |text: &str| text.parse::<IpAddr>().unwrap();
        let peer = at("10.0.0.2:4380");
        // (connection's remote, its source, wanted remote, our address now, on the path)
        let table = [
            (peer, Some(ip("10.0.0.1")), peer, ip("10.0.0.1"), true),
            // The peer moved.
            (
                peer,
                Some(ip("10.0.0.1")),
                at("10.0.0.12:4380"),
                ip("10.0.0.1"),
                false,
            ),
            (
                peer,
                Some(ip("10.0.0.1")),
                at("10.0.0.2:4381"),
                ip("10.0.0.1"),
                false,
            ),
            // We moved.
            (peer, Some(ip("10.0.0.1")), peer, ip("10.0.0.11"), false),
            // We listen on a wildcard: the kernel picks the source, any is right.
            (peer, Some(ip("10.0.0.1")), peer, ip("0.0.0.0"), true),
            // Our address is of the other family: no source can match, none is bound.
            (peer, Some(ip("10.0.0.1")), peer, ip("fd00::1"), true),
            // The source could not be read: only the remote counts.
            (peer, None, peer, ip("10.0.0.11"), true),
        ];
        for (remote, source, wanted, ours, expected) in table {
            assert_eq!(
                on_current_path(remote, source, wanted, ours),
                expected,
                "{remote} from {source:?}, wanted {wanted} from {ours}"
            );
        }
    }

    #[test]
    fn unreachable_is_reported_once_per_episode() {
        let (events, mut receiver) = mpsc::channel(8);
        let status = LinkStatus::new();
        status.report_unreachable(3, &events);
        status.report_unreachable(3, &events);
        assert_eq!(
            receiver.try_recv().ok(),
            Some(Event::Unreachable { peer: 3 })
        );
        assert!(
            receiver.try_recv().is_err(),
            "reported twice in one episode"
        );
        // A message queued ends the episode.
        status.queued();
        status.report_unreachable(3, &events);
        assert_eq!(
            receiver.try_recv().ok(),
            Some(Event::Unreachable { peer: 3 })
        );
    }

    #[test]
    fn a_report_lost_to_a_full_event_channel_is_retried() {
        let (events, mut receiver) = mpsc::channel(1);
        events.try_send(Event::Connected { peer: 1 }).unwrap();
        let status = LinkStatus::new();
        status.report_unreachable(3, &events);
        assert_eq!(receiver.try_recv().ok(), Some(Event::Connected { peer: 1 }));
        status.report_unreachable(3, &events);
        assert_eq!(
            receiver.try_recv().ok(),
            Some(Event::Unreachable { peer: 3 })
        );
    }
}
