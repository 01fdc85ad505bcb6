//! The tokio serving loop of the ONC-RPC core: listeners on the IPv4 and IPv6 wildcard
//! addresses, one task per TCP connection, many calls in flight per connection with a bound,
//! file-system work on the blocking pool, and a shutdown that drains within a deadline.
//!
//! Per connection, a reader cuts records out of the stream, classifies and dispatches them
//! (module docs of the crate give the order), and hands each NFS or MOUNT call to a task that
//! runs it on tokio's blocking pool; a writer task sends replies in the order they complete, so
//! a slow call does not hold up the quick ones behind it (RFC 5531 lets replies go out in any
//! order; clients match them by xid). Two semaphores bound the work: calls in flight per
//! connection (the reader stops reading while the connection is at its bound, so a client that
//! pipelines without end is slowed by TCP, not by our memory) and calls in flight over all
//! connections. With records bounded by the record decoder, memory is bounded by
//! `requests_in_flight × (record + reply)` plus one partial record per connection.

use std::io;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr};
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::dispatch::{Decision, dispatch};
use crate::record::{DEFAULT_MAX_RECORD, RecordDecoder};
use crate::rpc::{AcceptStatus, Classification, ReplyBody, ReplyHeader, classify};
use crate::service::{Connection, PROGRAMS, Service, framed_reply};

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
    for listener in listeners {
        listener.set_nonblocking(true)?;
        let listener = TcpListener::from_std(listener)?;
        let accept = AcceptLoop {
            service: service.clone(),
            listener,
            limits,
            connections: connections.clone(),
            in_flight: in_flight.clone(),
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
                shutdown: self.shutdown.clone(),
            };
            self.tracker.spawn(async move {
                connection.run(stream).await;
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
    shutdown: CancellationToken,
}

impl ConnectionTask {
    async fn run(self, stream: TcpStream) {
        let peer = self.connection.peer;
        tracing::debug!(%peer, "connection opened");
        // Replies are small and latency-bound; do not let Nagle hold them back.
        let _ = stream.set_nodelay(true);
        let (mut reader, mut writer) = stream.into_split();
        let slots = self.limits.requests_per_connection.max(1);
        let (replies, mut outgoing) = mpsc::channel::<Vec<u8>>(slots);
        let writer_task = tokio::spawn(async move {
            while let Some(reply) = outgoing.recv().await {
                if writer.write_all(&reply).await.is_err() {
                    // The peer is gone; drain the channel so senders do not wait forever.
                    outgoing.close();
                    while outgoing.recv().await.is_some() {}
                    return;
                }
            }
            let _ = writer.shutdown().await;
        });
        let slots_semaphore = Arc::new(Semaphore::new(slots));
        let mut decoder = RecordDecoder::new(DEFAULT_MAX_RECORD);
        let mut buffer = vec![0u8; 64 * 1024];
        'read: loop {
            let read = tokio::select! {
                () = self.shutdown.cancelled() => break,
                read = reader.read(&mut buffer) => read,
            };
            let length = match read {
                Ok(0) => break,
                Ok(length) => length,
                Err(error) => {
                    tracing::debug!(%peer, %error, "read failed");
                    break;
                }
            };
            let mut input = &buffer[..length];
            loop {
                match decoder.decode(&mut input) {
                    Ok(Some(record)) => {
                        // Break: the writer is gone; finish what is in flight.
                        if self
                            .process(record, &replies, &slots_semaphore)
                            .await
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
        // Let the calls in flight finish and their replies go out, within the deadline.
        let all = u32::try_from(slots).unwrap_or(u32::MAX);
        let drained = tokio::time::timeout(self.limits.drain, slots_semaphore.acquire_many(all));
        if drained.await.is_err() {
            tracing::warn!(%peer, "calls still running at the drain deadline");
        }
        drop(replies);
        let mut writer_task = writer_task;
        if tokio::time::timeout(self.limits.drain, &mut writer_task)
            .await
            .is_err()
        {
            writer_task.abort();
        }
        tracing::debug!(%peer, "connection closed");
    }

    /// Handles one record: answers it inline, hands it to the blocking pool, or drops it.
    async fn process(
        &self,
        record: Vec<u8>,
        replies: &mpsc::Sender<Vec<u8>>,
        slots: &Arc<Semaphore>,
    ) -> ControlFlow<()> {
        let peer = self.connection.peer;
        let (call, args_offset) = match classify(&record) {
            Classification::Call { call, args_offset } => (call, args_offset),
            Classification::Reject { reply, cause } => {
                tracing::debug!(%peer, %cause, "rejecting call");
                return sent(replies.send(framed_reply(&reply)).await);
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
            return sent(replies.send(reply).await);
        }
        if Service::is_inline(call.program) {
            let args = record.get(args_offset..).unwrap_or_default();
            let reply = self.service.handle(&self.connection, &call, args);
            return sent(replies.send(reply).await);
        }
        // Wait for a slot on this connection, then one over all connections: while waiting,
        // nothing more is read from this client.
        // The semaphores are never closed, so acquiring cannot fail.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return ControlFlow::Break(());
        };
        let Ok(global) = self.in_flight.clone().acquire_owned().await else {
            return ControlFlow::Break(());
        };
        let service = self.service.clone();
        let connection = self.connection.clone();
        let replies = replies.clone();
        let xid = call.xid;
        tokio::spawn(async move {
            let outcome = tokio::task::spawn_blocking(move || {
                let args = record.get(args_offset..).unwrap_or_default();
                service.handle(&connection, &call, args)
            })
            .await;
            let reply = outcome.unwrap_or_else(|error| {
                // A bug in a handler must cost one call, not the node (DESIGN.md invariant 7).
                tracing::error!(xid, %error, "procedure failed");
                framed_reply(&ReplyHeader {
                    xid,
                    body: ReplyBody::accepted(AcceptStatus::SystemErr),
                })
            });
            let _ = replies.send(reply).await;
            drop(global);
            drop(slot);
        });
        ControlFlow::Continue(())
    }
}

/// Continue after a reply was queued; stop when the writer is gone.
fn sent<E>(outcome: Result<(), E>) -> ControlFlow<()> {
    match outcome {
        Ok(()) => ControlFlow::Continue(()),
        Err(_) => ControlFlow::Break(()),
    }
}
