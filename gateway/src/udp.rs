//! ONC-RPC over UDP for the two small programs, portmap and MOUNT (RFC 5531: one datagram is
//! one message, no record marking). A stock `mount.nfs` asks for MOUNT over UDP first, and
//! `rpcinfo -u` and older clients use it; NFS itself stays TCP-only (Linux clients no longer
//! mount over UDP, and 1 MiB READs do not fit a datagram), so an NFS call over UDP gets
//! PROG_UNAVAIL.
//!
//! Over UDP a source address can be forged, so a call whose reply is much larger than itself
//! would make the node a reflector for attacks on that address (the classic portmap DUMP
//! amplification). Only the procedures a client needs to find and mount an export are answered
//! over UDP — NULL, portmap GETPORT, rpcbind GETADDR / GETTIME / GETVERSADDR, MOUNT MNT, UMNT
//! and UMNTALL; the listings (portmap and rpcbind DUMP, MOUNT DUMP and EXPORT) get PROC_UNAVAIL
//! and stay on TCP, where `rpcinfo -p` and `showmount -e` ask for them anyway.
//!
//! One thread per socket (IPv4 and IPv6 wildcard, per port) receives a datagram, answers it
//! through the same `classify` / `dispatch` / `Service::handle` steps as the TCP loop, and
//! sends the reply from the address the call arrived at (`IP_PKTINFO` / `IPV6_PKTINFO`), so a
//! client that called a VIP hears from that VIP. MOUNT's file-system work (opening an export
//! root) runs on that thread, never on the async workers. A datagram is at most 64 KiB, far
//! under the record bound, and replies are small.

use std::io::{self, IoSlice, IoSliceMut};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::socket::{
    ControlMessage, ControlMessageOwned, MsgFlags, SockaddrStorage, recvmsg, sendmsg, setsockopt,
    sockopt,
};
use socket2::{Domain, Protocol, Socket, Type};

use crate::dispatch::{Decision, dispatch};
use crate::rpc::{
    AcceptStatus, Classification, MOUNT_PROGRAM, PORTMAP_PROGRAM, ReplyBody, ReplyHeader, classify,
};
use crate::service::{Connection, PROGRAMS, Service, framed_reply};

/// How often a receiving thread looks at the stop flag.
const STOP_CHECK: Duration = Duration::from_millis(200);
/// The largest datagram read (and so the largest call).
const MAX_DATAGRAM: usize = 65_536;

/// Binds UDP `port` on the IPv4 and IPv6 wildcard addresses with packet info on, as
/// [`crate::server::bind_wildcard`] does for TCP.
pub fn bind_wildcard(port: u16) -> io::Result<Vec<UdpSocket>> {
    let v4 = bind(SocketAddr::from((Ipv4Addr::UNSPECIFIED, port)))?;
    let port = v4.local_addr()?.port();
    let mut sockets = vec![v4];
    match bind(SocketAddr::from((Ipv6Addr::UNSPECIFIED, port))) {
        Ok(v6) => sockets.push(v6),
        Err(error)
            if matches!(
                error.raw_os_error(),
                Some(libc::EAFNOSUPPORT | libc::EADDRNOTAVAIL)
            ) =>
        {
            tracing::warn!(port, %error, "no IPv6: portmap and MOUNT over UDP on IPv4 only");
        }
        Err(error) => return Err(error),
    }
    Ok(sockets)
}

fn bind(address: SocketAddr) -> io::Result<UdpSocket> {
    let socket = Socket::new(
        Domain::for_address(address),
        Type::DGRAM,
        Some(Protocol::UDP),
    )?;
    if address.is_ipv6() {
        socket.set_only_v6(true)?;
        setsockopt(&socket, sockopt::Ipv6RecvPacketInfo, &true)?;
    } else {
        setsockopt(&socket, sockopt::Ipv4PacketInfo, &true)?;
    }
    socket.set_reuse_address(true)?;
    socket.bind(&address.into())?;
    socket.set_read_timeout(Some(STOP_CHECK))?;
    Ok(socket.into())
}

/// The reply to one datagram from `peer` that arrived at `local`, without record marking, or
/// `None` when nothing is to be sent (a message that is not a call, or a copy of a call still
/// running).
pub fn answer(
    service: &Service,
    peer: SocketAddr,
    local: SocketAddr,
    datagram: &[u8],
) -> Option<Vec<u8>> {
    let reply = match classify(datagram) {
        Classification::Drop(_) => return None,
        Classification::Reject { reply, .. } => framed_reply(&reply),
        Classification::Call { call, args_offset } => {
            if !matches!(call.program, PORTMAP_PROGRAM | MOUNT_PROGRAM) {
                framed_reply(&ReplyHeader {
                    xid: call.xid,
                    body: ReplyBody::accepted(AcceptStatus::ProgUnavail),
                })
            } else if let Decision::Reject(body) = dispatch(PROGRAMS, &call) {
                framed_reply(&ReplyHeader {
                    xid: call.xid,
                    body,
                })
            } else if !small_reply(call.program, call.version, call.procedure) {
                framed_reply(&ReplyHeader {
                    xid: call.xid,
                    body: ReplyBody::accepted(AcceptStatus::ProcUnavail),
                })
            } else {
                let connection = Connection::new(peer, local);
                let args = datagram.get(args_offset..).unwrap_or_default();
                service.handle(&connection, &call, args)
            }
        }
    };
    // The record mark is TCP's; a datagram is the message itself.
    reply
        .get(4..)
        .filter(|message| !message.is_empty())
        .map(<[u8]>::to_vec)
}

/// Whether a procedure is answered over UDP: those whose reply is about as small as the call
/// (module documentation).
pub fn small_reply(program: u32, version: u32, procedure: u32) -> bool {
    match (program, version, procedure) {
        (_, _, 0) => true,
        // portmap v2 GETPORT; rpcbind v3/v4 GETADDR, GETTIME, and v4 GETVERSADDR.
        (PORTMAP_PROGRAM, 2, 3) | (PORTMAP_PROGRAM, 3 | 4, 3 | 6) | (PORTMAP_PROGRAM, 4, 9) => true,
        // MOUNT MNT, UMNT, UMNTALL.
        (MOUNT_PROGRAM, _, 1 | 3 | 4) => true,
        _ => false,
    }
}

/// The threads answering portmap and MOUNT over UDP.
#[derive(Debug)]
pub struct UdpServer {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Each thread sends once here as it ends, so that [`UdpServer::stop`] can wait with a
    /// deadline (a MNT stuck on a hung volume never returns).
    ended: mpsc::Receiver<()>,
}

impl UdpServer {
    /// One thread per socket, answering until [`UdpServer::stop`].
    pub fn spawn(service: Arc<Service>, sockets: Vec<UdpSocket>) -> io::Result<UdpServer> {
        let stop = Arc::new(AtomicBool::new(false));
        let (end, ended) = mpsc::channel();
        let mut threads = Vec::with_capacity(sockets.len());
        for socket in sockets {
            let service = service.clone();
            let stop = stop.clone();
            let end = end.clone();
            threads.push(
                std::thread::Builder::new()
                    .name("rpc-udp".into())
                    .spawn(move || {
                        serve(&service, &socket, &stop);
                        let _ = end.send(());
                    })?,
            );
        }
        Ok(UdpServer {
            stop,
            threads,
            ended,
        })
    }

    /// Stops the threads: each ends within [`STOP_CHECK`] unless a call holds it, and a thread
    /// still busy after `deadline` is left behind (it ends by itself if its call ever returns).
    pub fn stop(self, deadline: Duration) {
        self.stop.store(true, Ordering::Release);
        let until = Instant::now() + deadline;
        let mut running = self.threads.len();
        while running > 0 {
            let left = until.saturating_duration_since(Instant::now());
            if self.ended.recv_timeout(left).is_err() {
                tracing::warn!(
                    running,
                    "RPC datagram threads still busy at the stop deadline"
                );
                return;
            }
            running -= 1;
        }
        for thread in self.threads {
            let _ = thread.join();
        }
    }
}

fn serve(service: &Service, socket: &UdpSocket, stop: &AtomicBool) {
    let Ok(bound) = socket.local_addr() else {
        return;
    };
    let mut buffer = vec![0u8; MAX_DATAGRAM];
    let mut control = nix::cmsg_space!(libc::in6_pktinfo);
    while !stop.load(Ordering::Acquire) {
        let (length, peer, local) = {
            let mut iov = [IoSliceMut::new(&mut buffer)];
            let received = match recvmsg::<SockaddrStorage>(
                socket.as_raw_fd(),
                &mut iov,
                Some(&mut control),
                MsgFlags::empty(),
            ) {
                Ok(received) => received,
                Err(nix::errno::Errno::EAGAIN | nix::errno::Errno::EINTR) => continue,
                Err(error) => {
                    // Out of memory or buffers: wait a little rather than spin.
                    tracing::warn!(%error, %bound, "cannot receive an RPC datagram");
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            };
            let Some(peer) = received.address.as_ref().and_then(socket_address) else {
                continue;
            };
            let local = received
                .cmsgs()
                .ok()
                .and_then(|mut messages| {
                    messages.find_map(|message| match message {
                        ControlMessageOwned::Ipv4PacketInfo(info) => Some(IpAddr::from(
                            u32::from_be(info.ipi_addr.s_addr).to_be_bytes(),
                        )),
                        ControlMessageOwned::Ipv6PacketInfo(info) => {
                            Some(IpAddr::from(info.ipi6_addr.s6_addr))
                        }
                        _ => None,
                    })
                })
                .map_or(bound, |address| SocketAddr::new(address, bound.port()));
            (received.bytes, peer, local)
        };
        let Some(reply) = answer(service, peer, local, &buffer[..length]) else {
            continue;
        };
        if let Err(error) = send(socket, &reply, peer, local) {
            tracing::debug!(%error, %peer, "cannot send an RPC reply datagram");
        }
    }
}

/// Sends `reply` to `peer` from `local` (the address the call arrived at).
fn send(
    socket: &UdpSocket,
    reply: &[u8],
    peer: SocketAddr,
    local: SocketAddr,
) -> nix::Result<usize> {
    let iov = [IoSlice::new(reply)];
    let destination = SockaddrStorage::from(peer);
    let send = |control: &[ControlMessage<'_>]| {
        sendmsg(
            socket.as_raw_fd(),
            &iov,
            control,
            MsgFlags::empty(),
            Some(&destination),
        )
    };
    match local.ip() {
        IpAddr::V4(address) if !address.is_unspecified() => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(address.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            send(&[ControlMessage::Ipv4PacketInfo(&info)])
        }
        IpAddr::V6(address) if !address.is_unspecified() => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: address.octets(),
                },
                ipi6_ifindex: 0,
            };
            send(&[ControlMessage::Ipv6PacketInfo(&info)])
        }
        _ => send(&[]),
    }
}

fn socket_address(storage: &SockaddrStorage) -> Option<SocketAddr> {
    if let Some(v4) = storage.as_sockaddr_in() {
        return Some(SocketAddr::from((v4.ip(), v4.port())));
    }
    storage
        .as_sockaddr_in6()
        .map(|v6| SocketAddr::from((v6.ip(), v6.port())))
}
