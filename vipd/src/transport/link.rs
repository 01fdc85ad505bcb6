//! One peer's link, run by one task per configured peer: dialling with backoff (when our id is
//! the lower) or waiting for the peer's dial (when it is the higher), then moving payloads from
//! the peer's bounded send queue onto the connection and records from the connection into the
//! event channel, until the link fails or is replaced, and again.
//!
//! Reader and writer of a connection are two futures of this one task sharing the session's
//! ciphers by reference, so aborting the task closes the connection at once.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
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
    /// The peer's address, which `set_peers` may change: the next dial uses the new one, while
    /// a connection that is up stays up (the peer may still be listening at its old address
    /// only, until it hears of its move over that very connection).
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
                    if let Ended::Lost(error) = self.serve(established).await {
                        self.log_loss(address, &error, &mut warnings);
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
            match self.serve(established).await {
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
        let mut stream = timeout(CONNECT_TIMEOUT, TcpStream::connect(address))
            .await
            .map_err(|_| LinkError::ConnectTimeout(CONNECT_TIMEOUT))??;
        stream.set_nodelay(true)?;
        let session = timeout(
            HANDSHAKE_TIMEOUT,
            noise::initiate(&mut stream, &self.shared.keys, self.shared.me, self.peer),
        )
        .await
        .map_err(|_| LinkError::HandshakeTimeout(HANDSHAKE_TIMEOUT))??;
        Ok(Established {
            stream,
            session,
            remote: address,
        })
    }

    /// Runs one connection until it fails or (acceptor side) a newer one arrives.
    async fn serve(&mut self, established: Established) -> Ended {
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

        let (read_half, mut write_half) = stream.split();
        let mut reader = BufReader::with_capacity(2 + NOISE_MESSAGE_MAX, read_half);
        let (sealer, opener) = session.split();
        let keepalive = (self.shared.idle_timeout / 3).min(KEEPALIVE_MAX);
        let reading = read_records(&mut reader, opener, self.peer, &self.shared);
        let writing = write_records(&mut write_half, sealer, &mut self.queue, keepalive);
        tokio::select! {
            error = reading => Ended::Lost(error),
            error = writing => Ended::Lost(error),
            Some(newer) = self.incoming.recv() => Ended::Replaced(newer),
        }
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
