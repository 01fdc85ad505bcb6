//! The sockets of the DNS server: UDP and TCP on every configured address, answering from the
//! latest [`View`] on a `watch` channel.
//!
//! UDP replies leave from the address the query was sent to. A wildcard socket would otherwise
//! answer a query sent to a VIP from the node's primary address, and clients drop such replies
//! (dig: "reply from unexpected source"); so every UDP socket asks for `IP_PKTINFO` /
//! `IPV6_RECVPKTINFO` and each reply names its source with the same control message. This is why
//! the serving loop is ours rather than hickory-server's, which sends from whatever address the
//! kernel picks (hickory-dns issue #3401). Sockets also set `IP_FREEBIND`, so a listen address
//! that is a VIP can be bound before the VIP arrives on this node.
//!
//! Each UDP socket is served by a thread of its own in batches (the `udp` module); TCP stays on
//! tokio. The TCP path holds no lock across an await: it clones the current `Arc<View>` out of
//! the channel, answers synchronously into a reused buffer, and sends. TCP connections are
//! bounded in number and idle time, and messages are at most 65535 bytes by their length prefix.

use std::io;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use nix::sys::socket::{setsockopt, sockopt};
use socket2::{Domain, Protocol, Socket, Type};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::udp::UdpWorker;
use crate::wire::{self, Transport};
use crate::zone::View;

/// Limits of the TCP side.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Connections served at once, over all listeners; more are closed at once.
    pub tcp_connections: usize,
    /// How long a connection may sit between (or inside) messages before it is closed.
    pub tcp_idle: Duration,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            tcp_connections: 128,
            tcp_idle: Duration::from_secs(10),
        }
    }
}

/// Why the DNS server could not start.
#[derive(Debug, thiserror::Error)]
pub enum DnsError {
    #[error("cannot listen for DNS on {address} ({protocol})")]
    Bind {
        address: SocketAddr,
        protocol: &'static str,
        #[source]
        source: io::Error,
    },
}

/// The bound sockets, ready to serve.
#[derive(Debug)]
pub struct DnsServer {
    udp: Vec<UdpSocket>,
    tcp: Vec<TcpListener>,
    limits: Limits,
}

impl DnsServer {
    /// Binds UDP and TCP on every address of `listen`. Port 0 picks one port per address, the
    /// same for UDP and TCP. Must be called inside a tokio runtime.
    pub fn bind(listen: &[SocketAddr], limits: Limits) -> Result<DnsServer, DnsError> {
        let mut server = DnsServer {
            udp: Vec::new(),
            tcp: Vec::new(),
            limits,
        };
        for &address in listen {
            let udp = udp_socket(address).map_err(|source| DnsError::Bind {
                address,
                protocol: "udp",
                source,
            })?;
            let bound = udp.local_addr().unwrap_or(address);
            let tcp = tcp_listener(bound).map_err(|source| DnsError::Bind {
                address: bound,
                protocol: "tcp",
                source,
            })?;
            server.udp.push(udp);
            server.tcp.push(tcp);
        }
        Ok(server)
    }

    /// The bound addresses (with the ports chosen for port 0), in `listen` order.
    pub fn local_addresses(&self) -> Vec<SocketAddr> {
        self.udp
            .iter()
            .filter_map(|socket| socket.local_addr().ok())
            .collect()
    }

    /// Answers queries from the latest view on `views` until `stop` is cancelled; returns once
    /// every UDP thread and TCP task has ended.
    pub async fn serve(self, views: watch::Receiver<Arc<View>>, stop: CancellationToken) {
        let rotation = Arc::new(AtomicUsize::new(0));
        let connections = Arc::new(Semaphore::new(self.limits.tcp_connections));
        // Dropping this future (rather than cancelling `stop`) stops the threads too.
        let mut workers = Vec::new();
        for socket in self.udp {
            let address = socket.local_addr().ok();
            match UdpWorker::spawn(socket, views.clone(), rotation.clone()) {
                Ok(worker) => workers.push(worker),
                Err(error) => {
                    tracing::error!(%error, ?address, "cannot start a DNS UDP thread");
                }
            }
        }
        let mut tasks = JoinSet::new();
        for listener in self.tcp {
            tasks.spawn(serve_tcp(
                listener,
                views.clone(),
                rotation.clone(),
                connections.clone(),
                self.limits.tcp_idle,
                stop.clone(),
            ));
        }
        stop.cancelled().await;
        for worker in &workers {
            worker.stop();
        }
        while let Some(result) = tasks.join_next().await {
            if let Err(error) = result {
                tracing::error!(%error, "a DNS listener failed");
            }
        }
        for worker in workers {
            worker.finish().await;
        }
    }
}

fn udp_socket(address: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    socket.set_reuse_address(true)?;
    // A socket bound to one unicast address answers from it anyway; only a wildcard (or
    // multicast) socket needs each datagram's local address, which costs a control message
    // each way per query.
    let packet_info = address.ip().is_unspecified() || address.ip().is_multicast();
    match address {
        SocketAddr::V4(_) => {
            socket.set_freebind_v4(true)?;
            if packet_info {
                setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?;
            }
        }
        SocketAddr::V6(_) => {
            socket.set_only_v6(true)?;
            socket.set_freebind_v6(true)?;
            if packet_info {
                setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?;
            }
        }
    }
    // Blocking: its thread sleeps in `recvmmsg` (replies are sent with MSG_DONTWAIT).
    socket.bind(&address.into())?;
    Ok(socket.into())
}

fn tcp_listener(address: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_reuse_address(true)?;
    match address {
        SocketAddr::V4(_) => socket.set_freebind_v4(true)?,
        SocketAddr::V6(_) => {
            socket.set_only_v6(true)?;
            socket.set_freebind_v6(true)?;
        }
    }
    socket.set_nonblocking(true)?;
    socket.bind(&address.into())?;
    socket.listen(256)?;
    TcpListener::from_std(socket.into())
}

async fn serve_tcp(
    listener: TcpListener,
    views: watch::Receiver<Arc<View>>,
    rotation: Arc<AtomicUsize>,
    connections: Arc<Semaphore>,
    idle: Duration,
    stop: CancellationToken,
) {
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                // Out of descriptors or memory: wait a little rather than spin.
                tracing::warn!(%error, "cannot accept a DNS TCP connection");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "too many DNS TCP connections; closing this one");
            continue;
        };
        let views = views.clone();
        let rotation = rotation.clone();
        let stop = stop.clone();
        tasks.spawn(async move {
            tokio::select! {
                () = stop.cancelled() => {}
                result = serve_connection(stream, &views, &rotation, idle) => {
                    if let Err(error) = result {
                        tracing::debug!(%error, %peer, "DNS TCP connection closed");
                    }
                }
            }
            drop(permit);
        });
        while tasks.try_join_next().is_some() {}
    }
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
}

/// Answers length-prefixed messages in order until the peer closes, idles or misbehaves.
async fn serve_connection(
    mut stream: TcpStream,
    views: &watch::Receiver<Arc<View>>,
    rotation: &AtomicUsize,
    idle: Duration,
) -> io::Result<()> {
    let mut message = Vec::new();
    let mut out = Vec::new();
    loop {
        let mut prefix = [0u8; 2];
        match tokio::time::timeout(idle, stream.read_exact(&mut prefix)).await {
            Err(_) => return Ok(()),
            Ok(Err(error)) if error.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
            Ok(result) => result?,
        };
        message.resize(usize::from(u16::from_be_bytes(prefix)), 0);
        tokio::time::timeout(idle, stream.read_exact(&mut message))
            .await
            .map_err(|_| {
                io::Error::new(io::ErrorKind::TimedOut, "a message arrived too slowly")
            })??;
        let view = views.borrow().clone();
        let turn = rotation.fetch_add(1, Ordering::Relaxed);
        if !wire::respond(&view, &message, Transport::Tcp, turn, &mut out) {
            return Ok(());
        }
        // The response is at most 65535 bytes (the writer's TCP limit).
        let length = u16::try_from(out.len()).map_err(io::Error::other)?;
        let mut frame = Vec::with_capacity(out.len() + 2);
        frame.extend_from_slice(&length.to_be_bytes());
        frame.extend_from_slice(&out);
        tokio::time::timeout(idle, stream.write_all(&frame))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client stopped reading"))??;
    }
}

/// The addresses `listen` binds, for messages: wildcards stand for every local address.
pub fn describe(listen: &[SocketAddr]) -> String {
    listen
        .iter()
        .map(|address| match address.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => format!("*:{}", address.port()),
            IpAddr::V6(ip) if ip.is_unspecified() => format!("[::]:{}", address.port()),
            _ => address.to_string(),
        })
        .collect::<Vec<_>>()
        .join(", ")
}
