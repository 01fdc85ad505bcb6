//! The serving loop of the ONC-RPC core: listeners on the IPv4 and IPv6 wildcard addresses
//! (tokio), a thread per TCP connection, many calls in flight per connection with a bound,
//! file-system work never on the async workers, and a shutdown that drains within a deadline.
//!
//! Per connection, a thread of its own waits for the client's bytes (`poll`), cuts records out
//! of the stream, classifies and dispatches them (module docs of the crate give the order), and
//! runs each NFS or MOUNT call: a call that arrives alone (none of the connection's calls is
//! running and no bytes follow it) and cannot take long (`Service::runs_quickly`: a metadata
//! call on a local file system) right there, the others on the call pool
//! ([`crate::call_pool`]), so that nothing the client sends meanwhile waits behind a READ, a
//! COMMIT or a call to a shared volume that hangs. A client that makes one call at a time —
//! what an application's `stat`, `open` or `unlink` is — so costs one thread wake-up per call,
//! as with knfsd's threads, instead of a wake-up of an async worker and a hand-off to another
//! thread (measured: 6–13 % more calls a second one at a time, BENCHMARKS.md "nfs"). File-system calls never run
//! on the async workers, so a hung volume cannot stall the node's other tasks (Raft, DNS). The
//! thread that ran a call writes its reply itself, through the connection's `ReplySink`: a
//! non-blocking write when nothing is queued before it; whatever the socket does not take at
//! once goes to the connection's flusher task (tokio). Replies go out in the order they
//! complete, so a slow call does not hold up the quick ones behind it (RFC 5531 lets replies go
//! out in any order; clients match them by xid). Two semaphores bound the work: calls in flight
//! per connection, counted until the reply is written (the reader stops reading while the
//! connection is at its bound, so a client that pipelines without end, or does not read its
//! replies, is slowed by TCP, not by our memory), and calls running over all connections (which
//! also bounds the call pool's threads). With records bounded by the record decoder, memory is
//! bounded by `connections × requests_per_connection × (record + reply)` plus one partial
//! record per connection. Shutdown wakes every connection thread through its eventfd.
//!
//! A READ's data may travel in a pipe rather than in the reply's bytes (`splice`): the sink
//! writes the reply's head, splices the pipe into the socket, then writes the XDR padding, and
//! resumes a partial write at whichever of the three it stopped in. Spliced data costs no
//! user-space memory; the pipes are bounded by their pool.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::ControlFlow;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use std::collections::VecDeque;

use tokio::io::Interest;
use tokio::net::tcp::OwnedWriteHalf;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::call_pool::CallPool;
use crate::dispatch::{Decision, dispatch};
use crate::record::{DEFAULT_MAX_RECORD, RecordDecoder};
use crate::rpc::{AcceptStatus, Classification, ReplyBody, ReplyHeader, classify};
use crate::service::{Connection, PROGRAMS, Service, framed_reply};
use crate::splice::{PADDING, Part, Reply, advance};
use crate::sys;

/// Bounds of the serving loop.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once; more are closed on accept.
    pub max_connections: usize,
    /// Calls in flight per connection (Linux clients use up to 128 slots by default, but a few
    /// dozen keep a 2-core server busy).
    pub requests_per_connection: usize,
    /// Calls in flight over all connections.
    pub requests_in_flight: usize,
    /// How long a connection may take to finish its calls at shutdown.
    pub drain: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            requests_per_connection: 32,
            requests_in_flight: 128,
            drain: Duration::from_secs(5),
        }
    }
}

static CONNECTION_PANICS: AtomicUsize = AtomicUsize::new(0);

/// How many connection threads of this process have panicked (a bug: tests check it is none).
pub fn connection_panics() -> usize {
    CONNECTION_PANICS.load(Ordering::Relaxed)
}

/// Binds TCP `port` on the IPv4 and IPv6 wildcard addresses (IPv6 only for the second, so the
/// two do not collide), so whichever VIP lands on the node is served. With port 0 the IPv6
/// socket takes the port the IPv4 one got. A host without IPv6 gets the IPv4 socket alone.
pub fn bind_wildcard(port: u16) -> io::Result<Vec<std::net::TcpListener>> {
    let v4 = bind_tcp(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
    let port = v4.local_addr()?.port();
    let mut listeners = vec![v4];
    match bind_tcp(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
        Ok(v6) => listeners.push(v6),
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
            ) =>
        {
            tracing::warn!(port, %error, "no IPv6: serving IPv4 only");
        }
        Err(error) => return Err(error),
    }
    Ok(listeners)
}

/// A listening TCP socket on `address`, non-blocking, ready for [`serve`].
pub fn bind_tcp(address: SocketAddr) -> io::Result<std::net::TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.listen(1024)?;
    socket.set_nonblocking(true)?;
    Ok(socket.into())
}

/// Serves every program of `service` on every listener until `shutdown` is cancelled, then
/// stops accepting, lets calls in flight finish (each connection within `limits.drain`) and
/// returns. Must run inside a tokio runtime with the blocking pool enabled (any runtime).
pub async fn serve(
    service: Arc<Service>,
    listeners: Vec<std::net::TcpListener>,
    limits: Limits,
    shutdown: CancellationToken,
) -> io::Result<()> {
    let tracker = TaskTracker::new();
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    let in_flight = Arc::new(Semaphore::new(limits.requests_in_flight.max(1)));
    // One thread per call in flight at most (the semaphore above bounds them).
    let pool = CallPool::new(
        "nfs-call",
        limits.requests_in_flight.max(1),
        Duration::from_secs(10),
    );
    for listener in listeners {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let accept = AcceptLoop {
            service: service.clone(),
            listener,
            limits,
            connections: connections.clone(),
            in_flight: in_flight.clone(),
            pool: pool.clone(),
            shutdown: shutdown.clone(),
            tracker: tracker.clone(),
        };
        tracker.spawn(accept.run());
    }
    tracker.close();
    tracker.wait().await;
    Ok(())
}

struct AcceptLoop {
    service: Arc<Service>,
    listener: TcpListener,
    limits: Limits,
    connections: Arc<Semaphore>,
    in_flight: Arc<Semaphore>,
    pool: CallPool,
    shutdown: CancellationToken,
    tracker: TaskTracker,
}

impl AcceptLoop {
    async fn run(self) {
        let local = self.listener.local_addr().ok();
        loop {
            let accepted = tokio::select! {
                () = self.shutdown.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let (stream, peer) = match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of descriptors or similar: back off briefly instead of spinning.
                    tracing::warn!(?local, %error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let Ok(permit) = self.connections.clone().try_acquire_owned() else {
                tracing::warn!(%peer, "too many connections; closing this one");
                continue;
            };
            let Ok(local) = stream.local_addr() else {
                continue;
            };
            let connection = ConnectionTask {
                service: self.service.clone(),
                connection: Arc::new(Connection::new(peer, local)),
                limits: self.limits,
                in_flight: self.in_flight.clone(),
                pool: self.pool.clone(),
                shutdown: self.shutdown.clone(),
            };
            let runtime = tokio::runtime::Handle::current();
            let (finished, done) = tokio::sync::oneshot::channel::<()>();
            let thread = std::thread::Builder::new()
                .name("nfs-conn".into())
                .spawn(move || {
                    let served = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                        connection.run(stream, &runtime);
                    }));
                    if served.is_err() {
                        // A bug, which must cost this connection, not the node.
                        CONNECTION_PANICS.fetch_add(1, Ordering::Relaxed);
                        tracing::error!(%peer, "connection thread panicked");
                    }
                    let _ = finished.send(());
                });
            if let Err(error) = thread {
                tracing::warn!(%peer, %error, "cannot start a connection thread; closing");
                continue;
            }
            self.tracker.spawn(async move {
                let _ = done.await;
                drop(permit);
            });
        }
    }
}

struct ConnectionTask {
    service: Arc<Service>,
    connection: Arc<Connection>,
    limits: Limits,
    in_flight: Arc<Semaphore>,
    pool: CallPool,
    shutdown: CancellationToken,
}

impl ConnectionTask {
    /// Serves the connection on this thread (the connection's own): waits for bytes with
    /// `poll`, cuts records, and runs a call that arrives alone — none of the connection's is
    /// running, none behind it — and cannot take long ([`Service::runs_quickly`]) right here,
    /// so a client making one call at a time costs one thread wake-up per call (the thread its
    /// bytes woke answers them); others go to the call pool, so that no call the client sends
    /// meanwhile waits behind a slow one. Shutdown wakes the `poll` through an eventfd.
    fn run(self, stream: TcpStream, runtime: &tokio::runtime::Handle) {
        let peer = self.connection.peer;
        tracing::debug!(%peer, "connection opened");
        // Replies are small and latency-bound; do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let wake = match sys::eventfd() {
            Ok(wake) => Arc::new(wake),
            Err(error) => {
                tracing::warn!(%peer, %error, "cannot make an eventfd; closing");
                return;
            }
        };
        // The socket stays registered with tokio for the sink's writes; this thread reads it
        // through its descriptor (non-blocking, as tokio set it), which the read half keeps
        // open until the end.
        let (reader, writer) = stream.into_split();
        let sink = Arc::new(ReplySink::new(writer));
        let flusher = runtime.spawn({
            let sink = sink.clone();
            async move { sink.flush().await }
        });
        let stopper = runtime.spawn({
            let (shutdown, wake) = (self.shutdown.clone(), wake.clone());
            async move {
                shutdown.cancelled().await;
                sys::eventfd_signal(wake.as_fd());
            }
        });
        let _closing = Closing {
            sink: sink.clone(),
            tasks: [flusher, stopper],
        };
        let slots = self.limits.requests_per_connection.max(1);
        let slots_semaphore = Arc::new(Semaphore::new(slots));
        let mut decoder = RecordDecoder::new(DEFAULT_MAX_RECORD);
        let mut buffer = vec![0u8; 64 * 1024];
        let socket = reader.as_ref().as_fd();
        'read: loop {
            // Shutdown wins over bytes waiting.
            match sys::poll_readable([socket, wake.as_fd()], None) {
                Ok([_, false]) => {}
                Ok([_, true]) => break,
                Err(error) => {
                    tracing::warn!(%peer, %error, "poll failed; closing connection");
                    break;
                }
            }
            let length = match sys::recv(socket, &mut buffer) {
                Ok(0) => break,
                Ok(length) => length,
                Err(error)
                    if matches!(
                        error.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) =>
                {
                    continue;
                }
                Err(error) => {
                    tracing::debug!(%peer, %error, "read failed");
                    break;
                }
            };
            let mut input = &buffer[..length];
            loop {
                match decoder.decode(&mut input) {
                    Ok(Some(record)) => {
                        let last = input.is_empty();
                        // Break: the peer is gone; finish what is in flight.
                        if self
                            .process(record, last, &sink, &slots_semaphore, runtime)
                            .is_break()
                        {
                            break 'read;
                        }
                    }
                    Ok(None) => break,
                    Err(error) => {
                        tracing::warn!(%peer, %error, "closing connection");
                        break 'read;
                    }
                }
            }
        }
        // Let the calls in flight finish and their replies go out, within the deadline: a slot
        // is given back only once its reply is written (or the peer is gone).
        let all = u32::try_from(slots).unwrap_or(u32::MAX);
        // The timer is made inside the runtime (this thread is not in its context).
        let drained = runtime.block_on(async {
            tokio::time::timeout(self.limits.drain, slots_semaphore.acquire_many(all)).await
        });
        if drained.is_err() {
            tracing::warn!(%peer, "calls still running at the drain deadline");
        }
        tracing::debug!(%peer, "connection closed");
    }

    /// Handles one record: answers it, runs it here or on the call pool, or drops it. `last`:
    /// no more bytes of this connection were read after it.
    fn process(
        &self,
        record: Vec<u8>,
        last: bool,
        sink: &Arc<ReplySink>,
        slots: &Arc<Semaphore>,
        runtime: &tokio::runtime::Handle,
    ) -> ControlFlow<()> {
        let peer = self.connection.peer;
        let (call, args_offset) = match classify(&record) {
            Classification::Call { call, args_offset } => (call, args_offset),
            Classification::Reject { reply, cause } => {
                tracing::debug!(%peer, %cause, "rejecting call");
                return sent(sink.send(framed_reply(&reply).into(), None));
            }
            Classification::Drop(cause) => {
                tracing::debug!(%peer, %cause, "dropping message");
                return ControlFlow::Continue(());
            }
        };
        if let Decision::Reject(body) = dispatch(PROGRAMS, &call) {
            let reply = framed_reply(&ReplyHeader {
                xid: call.xid,
                body,
            });
            return sent(sink.send(reply.into(), None));
        }
        if Service::is_inline(call.program) {
            let args = record.get(args_offset..).unwrap_or_default();
            let reply = self.service.handle(&self.connection, &call, args);
            return sent(sink.send(reply.into(), None));
        }
        // Wait for a slot on this connection, then one over all connections: while waiting,
        // nothing more is read from this client.
        // The semaphores are never closed, so acquiring cannot fail.
        let Some(slot) = acquire(slots, &self.shutdown, runtime) else {
            return ControlFlow::Break(());
        };
        let Some(global) = acquire(&self.in_flight, &self.shutdown, runtime) else {
            return ControlFlow::Break(());
        };
        if sink.is_closed() {
            return ControlFlow::Break(());
        }
        let alone = sink.running.fetch_add(1, Ordering::AcqRel) == 0
            && last
            && self
                .service
                .runs_quickly(&call, record.get(args_offset..).unwrap_or_default());
        let service = self.service.clone();
        let connection = self.connection.clone();
        let sink = sink.clone();
        // Whichever thread runs the call hands the reply to the sink itself
        // (ReplySink::completed).
        let work = move || {
            let xid = call.xid;
            let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                let args = record.get(args_offset..).unwrap_or_default();
                service.handle_stream(&connection, &call, args)
            }));
            let reply = outcome.unwrap_or_else(|_| {
                // A bug in a handler must cost one call, not the node (DESIGN.md invariant 7).
                tracing::error!(xid, "procedure panicked");
                framed_reply(&ReplyHeader {
                    xid,
                    body: ReplyBody::accepted(AcceptStatus::SystemErr),
                })
                .into()
            });
            drop(global);
            sink.completed(reply, slot);
        };
        if alone {
            work();
        } else {
            self.pool.execute(work);
        }
        ControlFlow::Continue(())
    }
}

/// The sending side of one connection, shared by its task and the worker threads running its
/// calls. When a call completes and no other call of the connection is running or queued, the
/// worker thread writes the reply at once, with non-blocking writes under the sink's lock (so
/// records never interleave): a client that makes one call at a time waits for one thread
/// wake-up per call, not two. Otherwise, and for whatever the socket does not take at once, the
/// reply is queued for the connection's flusher task, which writes everything queued with one
/// gathered `sendmsg` when the socket is writable (up to and including the head of a spliced
/// reply, whose data then follows from its pipe): a client with many calls in flight gets its
/// replies in fewer segments and wake-ups. A queued reply keeps its connection slot until it is
/// written, so a client that does not read its replies stops being read from (the memory bound
/// of the module documentation). A reply dropped unwritten (the peer is gone) gives its slot
/// back, and its pipe is closed rather than pooled.
#[derive(Debug)]
struct ReplySink {
    stream: OwnedWriteHalf,
    state: std::sync::Mutex<SinkState>,
    wake: Notify,
    /// Calls of this connection handed to the blocking pool whose replies are not yet sent.
    running: AtomicUsize,
}

#[derive(Debug, Default)]
struct SinkState {
    queue: VecDeque<(Reply, Option<OwnedSemaphorePermit>)>,
    /// Bytes of the front reply already written (head, spliced data and padding counted as
    /// one run of bytes, `splice::Layout`).
    written: usize,
    /// The peer is gone or the connection is over: replies are dropped.
    closed: bool,
}

/// Where writing the queue stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Written {
    /// Everything queued is written.
    All,
    /// The socket takes no more for now.
    Blocked,
    /// The peer is gone; the queue was dropped.
    Closed,
}

/// The most replies one gathered write of the flusher takes.
const GATHER: usize = 64;

impl ReplySink {
    fn new(stream: OwnedWriteHalf) -> Self {
        ReplySink {
            stream,
            state: std::sync::Mutex::new(SinkState::default()),
            wake: Notify::new(),
            running: AtomicUsize::new(0),
        }
    }

    /// The reply of a call run on the blocking pool, from its worker thread: written at once
    /// when it is the only one in the way, queued for the flusher otherwise.
    fn completed(&self, reply: Reply, slot: OwnedSemaphorePermit) {
        let others = self
            .running
            .fetch_sub(1, Ordering::AcqRel)
            .saturating_sub(1);
        // An empty reply is the duplicate request cache's "send nothing": it must not reach
        // the flusher, whose zero-byte write would read as a closed peer.
        if reply.is_empty() {
            return;
        }
        if others == 0 {
            self.send(reply, Some(slot));
        } else {
            let mut state = self.lock();
            if state.closed {
                return;
            }
            state.queue.push_back((reply, Some(slot)));
            drop(state);
            self.wake.notify_one();
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SinkState> {
        // Nothing panics while the lock is held; the state stays consistent either way.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Sends `reply` (releasing `slot` once it is written) from any thread, without blocking.
    /// False when the peer is gone.
    fn send(&self, reply: Reply, slot: Option<OwnedSemaphorePermit>) -> bool {
        let mut state = self.lock();
        if state.closed {
            return false;
        }
        if reply.is_empty() {
            return true;
        }
        let idle = state.queue.is_empty();
        state.queue.push_back((reply, slot));
        if !idle {
            // The flusher was woken when the queue became non-empty; it writes this one too.
            return true;
        }
        match self.write_queued(&mut state) {
            Written::All => true,
            Written::Blocked => {
                drop(state);
                self.wake.notify_one();
                true
            }
            Written::Closed => false,
        }
    }

    /// Writes queued replies, in order, until the queue is empty or the socket is full.
    fn write_queued(&self, state: &mut SinkState) -> Written {
        let socket = self.stream.as_ref();
        loop {
            let written = state.written;
            let Some((front, _)) = state.queue.front_mut() else {
                return Written::All;
            };
            let layout = front.layout();
            let outcome = match (layout.part(written), front.tail.as_mut()) {
                (Part::Data(_), Some(tail)) => {
                    // The padding, if any, follows in this record.
                    let more = layout.pad > 0;
                    socket.try_io(Interest::WRITABLE, || tail.send_to(socket.as_fd(), more))
                }
                // Nothing left (or, which cannot be, data without a pipe): next reply.
                (Part::Done | Part::Data(_), _) => {
                    state.queue.pop_front();
                    state.written = 0;
                    continue;
                }
                _ => {
                    let mut slices = [io::IoSlice::new(&[]); GATHER];
                    let (count, more) = gather(&state.queue, state.written, &mut slices);
                    let flags = if more { libc::MSG_MORE } else { 0 };
                    socket.try_io(Interest::WRITABLE, || {
                        sys::send_vectored(socket.as_fd(), &slices[..count], flags)
                    })
                }
            };
            match outcome {
                Ok(0) => {
                    state.queue.clear();
                    state.closed = true;
                    return Written::Closed;
                }
                Ok(length) => {
                    let totals = state.queue.iter().map(|(reply, _)| reply.layout().total());
                    let (complete, offset) = advance(totals, state.written, length);
                    // Written replies give their slots back, and their pipes (now empty) to
                    // the pool.
                    drop(state.queue.drain(..complete));
                    state.written = offset;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                    return Written::Blocked;
                }
                Err(_) => {
                    state.queue.clear();
                    state.closed = true;
                    return Written::Closed;
                }
            }
        }
    }

    /// Writes queued replies as the socket takes them, until the connection ends.
    async fn flush(&self) {
        loop {
            self.wake.notified().await;
            loop {
                if self.stream.writable().await.is_err() {
                    self.close();
                    return;
                }
                let mut state = self.lock();
                match self.write_queued(&mut state) {
                    Written::All => break,
                    Written::Blocked => {}
                    Written::Closed => return,
                }
            }
        }
    }

    fn is_closed(&self) -> bool {
        self.lock().closed
    }

    /// Ends the connection's sending side: queued and later replies are dropped (their slots
    /// given back), and the peer is sent a FIN.
    fn close(&self) {
        let mut state = self.lock();
        state.closed = true;
        state.queue.clear();
        let _ = socket2::SockRef::from(self.stream.as_ref()).shutdown(std::net::Shutdown::Write);
    }
}

/// Fills `slices` with the bytes to write next from `queue`, whose front reply is `written`
/// bytes along and not in its spliced part: the rest of the front reply's head or padding, then
/// whole plain replies, stopping after the head of a spliced reply (its data must come from its
/// pipe next). Returns how many slices, and whether the write must say `MSG_MORE` (it ends with
/// a head whose data follows).
fn gather<'q>(
    queue: &'q VecDeque<(Reply, Option<OwnedSemaphorePermit>)>,
    written: usize,
    slices: &mut [io::IoSlice<'q>],
) -> (usize, bool) {
    let mut count = 0;
    for (index, (reply, _)) in queue.iter().enumerate() {
        if count == slices.len() {
            break;
        }
        let layout = reply.layout();
        match layout.part(if index == 0 { written } else { 0 }) {
            Part::Head(range) => {
                slices[count] = io::IoSlice::new(reply.head.get(range).unwrap_or_default());
                count += 1;
                if layout.data > 0 {
                    return (count, true);
                }
            }
            Part::Padding(range) => {
                slices[count] = io::IoSlice::new(PADDING.get(range).unwrap_or_default());
                count += 1;
            }
            Part::Data(_) => break,
            Part::Done => {}
        }
    }
    (count, false)
}

/// A permit of `semaphore`, at once when one is free, else waiting on `runtime`; `None` when
/// `shutdown` comes first (a client that does not read its replies, or calls stuck on a hung
/// volume, must not keep the server from stopping).
fn acquire(
    semaphore: &Arc<Semaphore>,
    shutdown: &CancellationToken,
    runtime: &tokio::runtime::Handle,
) -> Option<OwnedSemaphorePermit> {
    if let Ok(permit) = semaphore.clone().try_acquire_owned() {
        return Some(permit);
    }
    runtime.block_on(async {
        tokio::select! {
            permit = semaphore.clone().acquire_owned() => permit.ok(),
            () = shutdown.cancelled() => None,
        }
    })
}

/// Ends a connection's sending side and its tasks however its thread leaves (a panic too):
/// otherwise the flusher would keep the socket open without a FIN, and the client would wait
/// instead of reconnecting.
struct Closing {
    sink: Arc<ReplySink>,
    tasks: [tokio::task::JoinHandle<()>; 2],
}

impl Drop for Closing {
    fn drop(&mut self) {
        self.sink.close();
        for task in &self.tasks {
            task.abort();
        }
    }
}

/// Continue after a reply was sent or queued; stop when the peer is gone.
fn sent(delivered: bool) -> ControlFlow<()> {
    if delivered {
        ControlFlow::Continue(())
    } else {
        ControlFlow::Break(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A connected pair on loopback: the sink on one side, a reader on the other.
    async fn pair() -> (Arc<ReplySink>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = TcpStream::connect(address).await.unwrap();
        let (server, _) = listener.accept().await.unwrap();
        let (_, write) = server.into_split();
        (Arc::new(ReplySink::new(write)), client)
    }

    #[tokio::test]
    async fn an_empty_reply_sends_nothing_and_keeps_the_connection() {
        let (sink, mut client) = pair().await;
        let flusher = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.flush().await })
        };
        let slots = Arc::new(Semaphore::new(4));
        // Two calls running; the first ends with the cache's empty reply while the other
        // still runs, which used to queue a zero-byte write for the flusher.
        sink.running.fetch_add(2, Ordering::AcqRel);
        sink.completed(
            Reply::default(),
            slots.clone().acquire_owned().await.unwrap(),
        );
        // Let the flusher (same thread: a current-thread runtime) see whatever was queued.
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        assert!(!sink.is_closed());
        assert!(sink.send(Reply::default(), None));
        sink.completed(
            b"reply".to_vec().into(),
            slots.clone().acquire_owned().await.unwrap(),
        );
        let mut received = [0u8; 5];
        tokio::time::timeout(Duration::from_secs(5), client.read_exact(&mut received))
            .await
            .unwrap()
            .unwrap();
        assert_eq!(&received, b"reply");
        assert!(!sink.is_closed());
        assert_eq!(slots.available_permits(), 4);
        flusher.abort();
    }

    /// A sink whose socket takes little at a time (small buffers on both sides), so replies
    /// are written in many parts.
    async fn narrow_pair() -> (Arc<ReplySink>, TcpStream) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let client = socket2::Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
        client.set_recv_buffer_size(8 * 1024).unwrap();
        client.connect(&address.into()).unwrap();
        client.set_nonblocking(true).unwrap();
        let client = TcpStream::from_std(client.into()).unwrap();
        let (server, _) = listener.accept().await.unwrap();
        socket2::SockRef::from(&server)
            .set_send_buffer_size(8 * 1024)
            .unwrap();
        let (_, write) = server.into_split();
        (Arc::new(ReplySink::new(write)), client)
    }

    fn file_of(content: &[u8]) -> (tempfile::TempDir, std::fs::File) {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("file");
        std::fs::write(&path, content).unwrap();
        (directory, std::fs::File::open(&path).unwrap())
    }

    /// A reply of `head`, then `count` bytes of `file` at `offset` spliced from a pipe of
    /// `pool`; and the bytes it must put on the wire.
    fn spliced(
        pool: &crate::splice::PipePool,
        file: &std::fs::File,
        content: &[u8],
        head: &[u8],
        offset: usize,
        count: usize,
    ) -> (Reply, Vec<u8>) {
        let mut pipe = pool.take().unwrap();
        assert_eq!(
            pipe.fill(file.as_fd(), offset as u64, count).unwrap(),
            count
        );
        let mut wire = head.to_vec();
        wire.extend_from_slice(&content[offset..offset + count]);
        wire.resize(wire.len() + crate::splice::padding(count), 0);
        let reply = Reply {
            head: head.to_vec(),
            tail: Some(crate::splice::SplicedData::new(pipe)),
        };
        (reply, wire)
    }

    #[tokio::test]
    async fn spliced_and_plain_replies_resume_where_the_socket_stopped() {
        let content: Vec<u8> = (0..3 << 20).map(|index: u32| (index % 251) as u8).collect();
        let (_directory, file) = file_of(&content);
        let pool = crate::splice::PipePool::new(16, 1 << 20, 0);
        let (sink, mut client) = narrow_pair().await;
        let flusher = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.flush().await })
        };
        let slots = Arc::new(Semaphore::new(32));
        let mut expected = Vec::new();
        // The first is written at once by the caller until the socket is full, the rest are
        // queued behind it: the flusher resumes it in its head, data or padding, and gathers
        // plain replies with the head of the next spliced one.
        let (first, wire) = spliced(&pool, &file, &content, b"first head", 0, 1 << 20);
        expected.extend(wire);
        assert!(sink.send(first, Some(slots.clone().acquire_owned().await.unwrap())));
        let counts = [1, 2, 3, 4, 5, 65_537, 300_001, 1 << 20];
        sink.running.fetch_add(2 * counts.len(), Ordering::AcqRel);
        for (index, count) in counts.into_iter().enumerate() {
            let plain = format!("plain reply {index}").into_bytes();
            expected.extend_from_slice(&plain);
            sink.completed(plain.into(), slots.clone().acquire_owned().await.unwrap());
            let head = format!("head {index}").into_bytes();
            let (reply, wire) = spliced(&pool, &file, &content, &head, 4096 * index, count);
            expected.extend(wire);
            sink.completed(reply, slots.clone().acquire_owned().await.unwrap());
        }
        let mut received = vec![0u8; expected.len()];
        tokio::time::timeout(Duration::from_secs(20), client.read_exact(&mut received))
            .await
            .unwrap()
            .unwrap();
        assert!(received == expected, "the byte stream differs");
        assert_eq!(slots.available_permits(), 32);
        let stats = pool.stats();
        assert_eq!((stats.lent, stats.discarded), (0, 0), "{stats:?}");
        assert!(!sink.is_closed());
        flusher.abort();
    }

    #[tokio::test]
    async fn a_peer_gone_mid_reply_gives_slots_back_and_closes_the_pipes() {
        let content: Vec<u8> = (0..2 << 20).map(|index: u32| (index % 251) as u8).collect();
        let (_directory, file) = file_of(&content);
        let pool = crate::splice::PipePool::new(4, 1 << 20, 0);
        let (sink, mut client) = narrow_pair().await;
        let flusher = {
            let sink = sink.clone();
            tokio::spawn(async move { sink.flush().await })
        };
        let slots = Arc::new(Semaphore::new(4));
        for index in 0..3 {
            let (reply, _) = spliced(&pool, &file, &content, b"head", index << 19, 1 << 20);
            assert!(sink.send(reply, Some(slots.clone().acquire_owned().await.unwrap())));
        }
        let mut some = [0u8; 1000];
        client.read_exact(&mut some).await.unwrap();
        // Closing with unread data sends a RST: the next write fails.
        drop(client);
        tokio::time::timeout(Duration::from_secs(20), async {
            while !sink.is_closed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await
        .expect("the sink notices the peer is gone");
        assert_eq!(slots.available_permits(), 4);
        let stats = pool.stats();
        assert_eq!(stats.lent, 0, "{stats:?}");
        assert!(stats.discarded >= 1, "{stats:?}");
        // Whatever went back to the pool is empty.
        assert_eq!(stats.discarded as usize + stats.idle, 3, "{stats:?}");
        flusher.abort();
    }
}
