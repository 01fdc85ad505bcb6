//! The UDP side of the DNS server: one OS thread per socket, answering queries in batches with
//! one blocking `recvmmsg` and one `sendmmsg` per batch.
//!
//! Profiling the earlier tokio loop (one `recvmsg` + one `sendmsg` per query, an epoll wake-up
//! whenever the socket turned readable, and two runtime workers handing the socket between them)
//! showed 86% of the server's CPU time in the kernel, and a fifth of that in epoll and context
//! switches. A thread blocked in `recvmmsg(MSG_WAITFORONE)` needs no epoll registration (so
//! neither reads nor the send buffer's frees wake a poller), sleeps only when the queue is
//! empty, and takes everything queued at once when it wakes.
//!
//! Every datagram keeps its own peer address and, on sockets that ask for it (wildcards), its
//! `IP_PKTINFO`/`IPV6_PKTINFO` control message; its reply carries the same packet info back, so
//! it leaves from the address the query was sent to. The buffers (one receive buffer of the largest UDP payload per slot, reply buffers,
//! headers) are allocated once per thread; the query path allocates nothing.
//!
//! Stopping: [`UdpWorker::stop`] raises a flag and shuts the socket down for reading, which
//! wakes a `recvmmsg` blocked on it (Linux wakes readers of an unconnected UDP socket on
//! `shutdown(SHUT_RD)` and makes further reads return at once); the thread sees the flag after
//! that batch and exits.

use std::io;
use std::mem::size_of;
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::{oneshot, watch};

use crate::wire::{self, MAX_UDP_PAYLOAD, Transport};
use crate::zone::View;

/// Datagrams taken by one `recvmmsg` at most.
pub const BATCH: usize = 32;
/// The largest UDP payload there is: anything a client sends fits a slot whole.
const DATAGRAM: usize = 65535;
/// Room for one packet-info control message (`CMSG_SPACE(sizeof(in6_pktinfo))` is 40 bytes).
const CONTROL: usize = 64;

/// A control-message buffer, aligned as `cmsghdr` needs.
#[repr(C, align(8))]
#[derive(Clone, Copy)]
struct Control([u8; CONTROL]);

/// The local address a datagram was sent to, from its packet-info control message: the source
/// its reply must leave from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// `in_pktinfo.ipi_spec_dst`; the interface is left to routing.
    V4(Ipv4Addr),
    /// `in6_pktinfo` as received: the address and the interface it arrived on.
    V6 { address: Ipv6Addr, interface: u32 },
}

impl Local {
    fn is_multicast(self) -> bool {
        match self {
            Local::V4(_) => false,
            Local::V6 { address, .. } => address.is_multicast(),
        }
    }
}

/// `length` rounded up as `CMSG_ALIGN` does (to the size of a `long`).
const fn cmsg_align(length: usize) -> usize {
    let unit = size_of::<usize>();
    (length + unit - 1) & !(unit - 1)
}

/// Where a control message's data starts (`CMSG_LEN(0)`).
const CMSG_DATA: usize = cmsg_align(size_of::<libc::cmsghdr>());

/// The packet-info message among the control messages in `control` (the bytes the kernel
/// filled in); the last one wins. Malformed or cut messages end the search.
pub fn local_of(control: &[u8]) -> Option<Local> {
    let mut offset = 0;
    let mut local = None;
    while let Some(header_bytes) = control.get(offset..offset + size_of::<libc::cmsghdr>()) {
        // SAFETY: `cmsghdr` is plain integers, valid for every bit pattern, and `header_bytes`
        // holds exactly its size; the read is unaligned-safe.
        let header: libc::cmsghdr =
            unsafe { std::ptr::read_unaligned(header_bytes.as_ptr().cast()) };
        let length = header.cmsg_len as usize;
        if length < CMSG_DATA {
            break;
        }
        let Some(data) = control.get(offset + CMSG_DATA..offset + length) else {
            break;
        };
        match (header.cmsg_level, header.cmsg_type) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if data.len() >= size_of::<libc::in_pktinfo>() => {
                // SAFETY: `in_pktinfo` is plain integers and `data` holds at least its size.
                let info: libc::in_pktinfo =
                    unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
                local = Some(Local::V4(Ipv4Addr::from(
                    info.ipi_spec_dst.s_addr.to_ne_bytes(),
                )));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO)
                if data.len() >= size_of::<libc::in6_pktinfo>() =>
            {
                // SAFETY: `in6_pktinfo` is plain integers and `data` holds at least its size.
                let info: libc::in6_pktinfo =
                    unsafe { std::ptr::read_unaligned(data.as_ptr().cast()) };
                local = Some(Local::V6 {
                    address: Ipv6Addr::from(info.ipi6_addr.s6_addr),
                    interface: info.ipi6_ifindex as u32,
                });
            }
            _ => {}
        }
        offset += cmsg_align(length);
    }
    local
}

/// Writes the packet-info message that makes a reply leave from `local` into `control`;
/// returns its length (`CMSG_SPACE`), the `msg_controllen` to send with.
fn encode_local(local: Local, control: &mut [u8; CONTROL]) -> usize {
    fn put<T: Copy>(control: &mut [u8; CONTROL], level: i32, kind: i32, data: T) -> usize {
        let space = CMSG_DATA + cmsg_align(size_of::<T>());
        const { assert!(CMSG_DATA + 20 <= CONTROL) };
        // SAFETY: every field of `cmsghdr` is an integer, so all zeros is a valid value.
        let mut header: libc::cmsghdr = unsafe { std::mem::zeroed() };
        header.cmsg_len = (CMSG_DATA + size_of::<T>()) as _;
        header.cmsg_level = level;
        header.cmsg_type = kind;
        control[..space].fill(0);
        // SAFETY: `control` holds CONTROL bytes, more than the header at 0 and `T` (at most
        // 20 bytes, asserted above) at CMSG_DATA; the writes are unaligned-safe.
        unsafe {
            std::ptr::write_unaligned(control.as_mut_ptr().cast(), header);
            std::ptr::write_unaligned(control.as_mut_ptr().add(CMSG_DATA).cast(), data);
        }
        space
    }
    match local {
        Local::V4(address) => {
            let info = libc::in_pktinfo {
                ipi_ifindex: 0,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from_ne_bytes(address.octets()),
                },
                ipi_addr: libc::in_addr { s_addr: 0 },
            };
            put(control, libc::IPPROTO_IP, libc::IP_PKTINFO, info)
        }
        Local::V6 { address, interface } => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: address.octets(),
                },
                ipi6_ifindex: interface as _,
            };
            put(control, libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, info)
        }
    }
}

/// The peer address the kernel wrote into `name` (`length` bytes of it).
fn peer_of(name: &libc::sockaddr_storage, length: usize) -> Option<SocketAddr> {
    match i32::from(name.ss_family) {
        libc::AF_INET if length >= size_of::<libc::sockaddr_in>() => {
            // SAFETY: `sockaddr_storage` is large and aligned enough for every sockaddr type,
            // and the kernel wrote a `sockaddr_in` (its family says so).
            let v4 = unsafe { &*std::ptr::from_ref(name).cast::<libc::sockaddr_in>() };
            Some(SocketAddr::V4(SocketAddrV4::new(
                Ipv4Addr::from(v4.sin_addr.s_addr.to_ne_bytes()),
                u16::from_be(v4.sin_port),
            )))
        }
        libc::AF_INET6 if length >= size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for a `sockaddr_in6`.
            // SAFETY: as above, for a `sockaddr_in6`.
            let v6 = unsafe { &*std::ptr::from_ref(name).cast::<libc::sockaddr_in6>() };
            Some(SocketAddr::V6(SocketAddrV6::new(
                Ipv6Addr::from(v6.sin6_addr.s6_addr),
                u16::from_be(v6.sin6_port),
                v6.sin6_flowinfo,
                v6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// What one `sendmmsg` call did, for [`next_unsent`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// This many replies, from the first one given, left.
    Replies(usize),
    /// The first reply given failed and no other was tried.
    Failed(io::ErrorKind),
}

/// The index of the first reply still to send, after `sent` happened to the replies
/// `start..count`. A reply that fails is skipped (UDP may lose it); a full send buffer
/// (`WouldBlock`) drops the rest of the batch rather than spin on it; an interrupted call is
/// repeated. Always moves forward unless interrupted.
pub fn next_unsent(start: usize, count: usize, sent: Sent) -> usize {
    match sent {
        Sent::Replies(0) => start + 1,
        Sent::Replies(replies) => start.saturating_add(replies).min(count),
        Sent::Failed(io::ErrorKind::Interrupted) => start,
        Sent::Failed(io::ErrorKind::WouldBlock) => count,
        Sent::Failed(_) => start + 1,
    }
}

/// The buffers and headers of one thread's batches, allocated once.
struct Batch {
    /// `BATCH` receive slots of `DATAGRAM` bytes. Zeroed by the allocator's fresh pages, so
    /// only the pages datagrams touch are ever backed by memory.
    datagrams: Vec<u8>,
    names: Vec<libc::sockaddr_storage>,
    controls: Vec<Control>,
    receive_iovecs: Vec<libc::iovec>,
    receive_headers: Vec<libc::mmsghdr>,
    replies: Vec<Vec<u8>>,
    reply_controls: Vec<Control>,
    send_iovecs: Vec<libc::iovec>,
    send_headers: Vec<libc::mmsghdr>,
    /// Replies ready in `send_headers[..sending]`.
    sending: usize,
}

impl Batch {
    fn new() -> Batch {
        // SAFETY: `sockaddr_storage`, `iovec` and `mmsghdr` are plain integers and pointers;
        // all zeros (null pointers, zero lengths) is a valid value of each.
        let (name, iovec, header) = unsafe {
            (
                std::mem::zeroed::<libc::sockaddr_storage>(),
                std::mem::zeroed::<libc::iovec>(),
                std::mem::zeroed::<libc::mmsghdr>(),
            )
        };
        Batch {
            datagrams: vec![0; BATCH * DATAGRAM],
            names: vec![name; BATCH],
            controls: vec![Control([0; CONTROL]); BATCH],
            receive_iovecs: vec![iovec; BATCH],
            receive_headers: vec![header; BATCH],
            replies: (0..BATCH)
                .map(|_| Vec::with_capacity(usize::from(MAX_UDP_PAYLOAD)))
                .collect(),
            reply_controls: vec![Control([0; CONTROL]); BATCH],
            send_iovecs: vec![iovec; BATCH],
            send_headers: vec![header; BATCH],
            sending: 0,
        }
    }

    /// Blocks until at least one datagram arrives, then takes what else is queued, up to
    /// `BATCH`; returns how many.
    fn receive(&mut self, fd: RawFd) -> io::Result<usize> {
        let datagrams = self.datagrams.as_mut_ptr();
        for slot in 0..BATCH {
            // The headers are rebuilt each time: the kernel overwrote lengths and flags.
            let iovec = &mut self.receive_iovecs[slot];
            // SAFETY: slot < BATCH, so the offset stays inside `datagrams` (BATCH * DATAGRAM).
            iovec.iov_base = unsafe { datagrams.add(slot * DATAGRAM) }.cast();
            iovec.iov_len = DATAGRAM;
            let header = &mut self.receive_headers[slot];
            header.msg_len = 0;
            header.msg_hdr.msg_name = std::ptr::from_mut(&mut self.names[slot]).cast();
            header.msg_hdr.msg_namelen = size_of::<libc::sockaddr_storage>() as _;
            header.msg_hdr.msg_iov = std::ptr::from_mut(iovec);
            header.msg_hdr.msg_iovlen = 1;
            header.msg_hdr.msg_control = self.controls[slot].0.as_mut_ptr().cast();
            header.msg_hdr.msg_controllen = CONTROL as _;
            header.msg_hdr.msg_flags = 0;
        }
        // SAFETY: the BATCH headers point at buffers of this `Batch` of the sizes they state
        // (names, one iovec each over its own slot, controls), all alive and unaliased for the
        // call; the timeout pointer may be null.
        let received = unsafe {
            libc::recvmmsg(
                fd,
                self.receive_headers.as_mut_ptr(),
                BATCH as _,
                libc::MSG_WAITFORONE,
                std::ptr::null_mut(),
            )
        };
        if received < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok((received as usize).min(BATCH))
    }

    /// Answers the `received` datagrams from `view`, the answered ones rotating by `turn`,
    /// `turn + 1`, ...; prepares their replies for [`Batch::send`] and returns how many.
    fn answer(&mut self, view: &View, received: usize, turn: usize) -> usize {
        self.sending = 0;
        for slot in 0..received.min(BATCH) {
            let header = self.receive_headers[slot];
            let Some(peer) = peer_of(&self.names[slot], header.msg_hdr.msg_namelen as usize) else {
                continue;
            };
            #[allow(
                clippy::unnecessary_cast,
                reason = "msg_controllen is socklen_t in musl"
            )]
            let control_length = (header.msg_hdr.msg_controllen as usize).min(CONTROL);
            let local = local_of(&self.controls[slot].0[..control_length]);
            // Never answer port 0 (unreachable) and never answer from a multicast address.
            if peer.port() == 0 || local.is_some_and(Local::is_multicast) {
                continue;
            }
            let length = (header.msg_len as usize).min(DATAGRAM);
            let Some(packet) = self
                .datagrams
                .get(slot * DATAGRAM..slot * DATAGRAM + length)
            else {
                continue;
            };
            let reply = &mut self.replies[slot];
            if !wire::respond(
                view,
                packet,
                Transport::Udp,
                turn.wrapping_add(self.sending),
                reply,
            ) {
                continue;
            }
            let index = self.sending;
            let control = &mut self.reply_controls[index].0;
            let control_length = local.map_or(0, |local| encode_local(local, control));
            let iovec = &mut self.send_iovecs[index];
            iovec.iov_base = reply.as_mut_ptr().cast();
            iovec.iov_len = reply.len();
            let send = &mut self.send_headers[index];
            send.msg_len = 0;
            // The peer's address goes back exactly as the kernel gave it.
            send.msg_hdr.msg_name = std::ptr::from_mut(&mut self.names[slot]).cast();
            send.msg_hdr.msg_namelen = header.msg_hdr.msg_namelen;
            send.msg_hdr.msg_iov = std::ptr::from_mut(iovec);
            send.msg_hdr.msg_iovlen = 1;
            send.msg_hdr.msg_control = if control_length == 0 {
                std::ptr::null_mut()
            } else {
                control.as_mut_ptr().cast()
            };
            send.msg_hdr.msg_controllen = control_length as _;
            send.msg_hdr.msg_flags = 0;
            self.sending += 1;
        }
        self.sending
    }

    /// Sends the replies [`Batch::answer`] prepared, without blocking.
    fn send(&mut self, fd: RawFd) {
        let count = self.sending.min(BATCH);
        let mut start = 0;
        while start < count {
            // SAFETY: headers `start..count` were filled by `answer` with pointers to this
            // batch's names, iovecs over its reply buffers, and controls, all alive and not
            // touched until the call returns.
            let sent = unsafe {
                libc::sendmmsg(
                    fd,
                    self.send_headers[start..].as_mut_ptr(),
                    (count - start) as _,
                    libc::MSG_DONTWAIT,
                )
            };
            let sent = if sent < 0 {
                let error = io::Error::last_os_error();
                // A full send buffer or an unreachable peer loses this reply, as UDP may.
                tracing::debug!(%error, "a DNS reply could not be sent");
                Sent::Failed(error.kind())
            } else {
                Sent::Replies(sent as usize)
            };
            start = next_unsent(start, count, sent);
        }
        self.sending = 0;
    }
}

/// A thread answering one UDP socket; stopped by [`UdpWorker::stop`] or when dropped.
#[derive(Debug)]
pub struct UdpWorker {
    socket: Arc<UdpSocket>,
    stopping: Arc<AtomicBool>,
    finished: oneshot::Receiver<()>,
}

impl UdpWorker {
    /// Starts answering `socket` (blocking mode) from the latest view on `views`, taking
    /// rotation turns from `rotation`.
    pub fn spawn(
        socket: UdpSocket,
        views: watch::Receiver<Arc<View>>,
        rotation: Arc<AtomicUsize>,
    ) -> io::Result<UdpWorker> {
        let socket = Arc::new(socket);
        let stopping = Arc::new(AtomicBool::new(false));
        let (done, finished) = oneshot::channel();
        let thread_socket = socket.clone();
        let thread_stopping = stopping.clone();
        std::thread::Builder::new()
            .name("dns-udp".to_owned())
            .spawn(move || {
                run(&thread_socket, views, &rotation, &thread_stopping);
                drop(done);
            })?;
        Ok(UdpWorker {
            socket,
            stopping,
            finished,
        })
    }

    /// Tells the thread to stop and wakes it; returns at once.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
        // SAFETY: the descriptor stays open while `self.socket` holds it. The call fails with
        // ENOTCONN on an unconnected socket but still marks it shut for reading and wakes the
        // blocked reader, which is all that is wanted here.
        unsafe { libc::shutdown(self.socket.as_raw_fd(), libc::SHUT_RD) };
    }

    /// Stops the thread and waits until it has exited.
    pub async fn finish(mut self) {
        self.stop();
        // An error only means the thread ended without saying so (it cannot panic by design).
        let _ = (&mut self.finished).await;
    }
}

impl Drop for UdpWorker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn run(
    socket: &UdpSocket,
    mut views: watch::Receiver<Arc<View>>,
    rotation: &AtomicUsize,
    stopping: &AtomicBool,
) {
    let fd = socket.as_raw_fd();
    let mut batch = Batch::new();
    let mut view = views.borrow_and_update().clone();
    loop {
        let received = batch.receive(fd);
        if stopping.load(Ordering::Acquire) {
            return;
        }
        let received = match received {
            Ok(received) => received,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => continue,
            Err(error) => {
                // Out of memory or buffers: wait a little rather than spin.
                tracing::warn!(%error, "cannot read DNS datagrams");
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
        };
        // A new view applies from the next batch on; the sender going away keeps the last one.
        if views.has_changed().unwrap_or(false) {
            view = views.borrow_and_update().clone();
        }
        let turn = rotation.fetch_add(received, Ordering::Relaxed);
        if batch.answer(&view, received, turn) > 0 {
            batch.send(fd);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A kernel-style `IP_PKTINFO` message (`ipi_addr` 9.9.9.9) or, with `ifindex` 0, the one a
    /// reply sends (`ipi_addr` 0).
    fn v4_control(spec_dst: [u8; 4], ifindex: i32) -> Vec<u8> {
        let header_destination = if ifindex == 0 { [0; 4] } else { [9; 4] };
        let mut control = [0u8; CONTROL];
        let info = libc::in_pktinfo {
            ipi_ifindex: ifindex,
            ipi_spec_dst: libc::in_addr {
                s_addr: u32::from_ne_bytes(spec_dst),
            },
            ipi_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(header_destination),
            },
        };
        let header = libc::cmsghdr {
            cmsg_len: CMSG_DATA + size_of::<libc::in_pktinfo>(),
            cmsg_level: libc::IPPROTO_IP,
            cmsg_type: libc::IP_PKTINFO,
        };
        // SAFETY: both writes lie inside the CONTROL-byte buffer; they are unaligned-safe.
        unsafe {
            std::ptr::write_unaligned(control.as_mut_ptr().cast(), header);
            std::ptr::write_unaligned(control.as_mut_ptr().add(CMSG_DATA).cast(), info);
        }
        control[..CMSG_DATA + cmsg_align(size_of::<libc::in_pktinfo>())].to_vec()
    }

    #[test]
    fn packet_info_round_trips() {
        let cases = [
            Local::V4(Ipv4Addr::new(192, 0, 2, 201)),
            Local::V4(Ipv4Addr::UNSPECIFIED),
            Local::V6 {
                address: "2001:db8::201".parse().unwrap(),
                interface: 7,
            },
            Local::V6 {
                address: "ff02::1".parse().unwrap(),
                interface: 1,
            },
        ];
        for local in cases {
            let mut control = [0xaa; CONTROL];
            let length = encode_local(local, &mut control);
            assert_eq!(length % size_of::<usize>(), 0, "{local:?}");
            assert_eq!(local_of(&control[..length]), Some(local), "{local:?}");
        }
    }

    #[test]
    fn the_v4_source_is_the_specific_destination_and_the_interface_is_routing_s() {
        // The kernel's `ipi_addr` (the header's destination) and the interface are not kept:
        // the reply names `ipi_spec_dst` and leaves the interface to routing.
        let control = v4_control([127, 0, 0, 2], 1);
        let local = local_of(&control).unwrap();
        assert_eq!(local, Local::V4(Ipv4Addr::new(127, 0, 0, 2)));
        let mut encoded = [0; CONTROL];
        let length = encode_local(local, &mut encoded);
        assert_eq!(encoded[..length], v4_control([127, 0, 0, 2], 0)[..]);
        // SAFETY: the encoded message holds an `in_pktinfo` at CMSG_DATA, inside the buffer.
        let info: libc::in_pktinfo =
            unsafe { std::ptr::read_unaligned(encoded.as_ptr().add(CMSG_DATA).cast()) };
        assert_eq!(info.ipi_addr.s_addr, 0);
    }

    #[test]
    fn control_messages_are_searched_and_bad_ones_end_the_search() {
        let v4 = v4_control([192, 0, 2, 1], 2);
        // Some other message (SO_TIMESTAMP-like, 16 bytes) before the packet info.
        let mut other = vec![0u8; CMSG_DATA + 16];
        let header = libc::cmsghdr {
            cmsg_len: CMSG_DATA + 16,
            cmsg_level: libc::SOL_SOCKET,
            cmsg_type: libc::SO_TIMESTAMP,
        };
        // SAFETY: `other` is longer than a header; the write is unaligned-safe.
        unsafe { std::ptr::write_unaligned(other.as_mut_ptr().cast(), header) };
        let mut both = other.clone();
        both.extend_from_slice(&v4);
        let mut too_long = v4.clone();
        too_long[..size_of::<usize>()].copy_from_slice(&(v4.len() + 100).to_ne_bytes());
        let mut too_short = v4.clone();
        too_short[..size_of::<usize>()].copy_from_slice(&3usize.to_ne_bytes());
        let want = Some(Local::V4(Ipv4Addr::new(192, 0, 2, 1)));
        let cases: [(&str, &[u8], Option<Local>); 7] = [
            ("nothing", &[], None),
            ("only packet info", &v4, want),
            ("after another message", &both, want),
            ("only another message", &other, None),
            ("a length past the buffer", &too_long, None),
            ("a length below the header", &too_short, None),
            ("cut in the header", &v4[..5], None),
        ];
        for (what, control, expected) in cases {
            assert_eq!(local_of(control), expected, "{what}");
        }
    }

    #[test]
    fn peers_are_read_from_the_kernel_s_address() {
        // SAFETY: all zeros is a valid `sockaddr_storage`.
        let mut name: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
        // SAFETY: `sockaddr_storage` is large and aligned enough for a `sockaddr_in`.
        let v4 = unsafe { &mut *std::ptr::from_mut(&mut name).cast::<libc::sockaddr_in>() };
        v4.sin_family = libc::AF_INET as _;
        v4.sin_port = 5353u16.to_be();
        v4.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        assert_eq!(
            peer_of(&name, size_of::<libc::sockaddr_in>()),
            Some("127.0.0.1:5353".parse().unwrap())
        );
        assert_eq!(peer_of(&name, 4), None, "a cut address");
        // SAFETY: all zeros is a valid `sockaddr_storage`.
        name = unsafe { std::mem::zeroed() };
        // SAFETY: as above, for a `sockaddr_in6`.
        let v6 = unsafe { &mut *std::ptr::from_mut(&mut name).cast::<libc::sockaddr_in6>() };
        v6.sin6_family = libc::AF_INET6 as _;
        v6.sin6_port = 53u16.to_be();
        v6.sin6_addr.s6_addr = "fd00::53".parse::<Ipv6Addr>().unwrap().octets();
        assert_eq!(
            peer_of(&name, size_of::<libc::sockaddr_in6>()),
            Some("[fd00::53]:53".parse().unwrap())
        );
        name.ss_family = libc::AF_UNIX as _;
        assert_eq!(peer_of(&name, size_of::<libc::sockaddr_storage>()), None);
    }

    #[test]
    fn sending_moves_past_what_left_and_what_failed() {
        use io::ErrorKind::{ConnectionRefused, Interrupted, InvalidInput, WouldBlock};
        let cases = [
            // (start, count, outcome, next)
            (0, 5, Sent::Replies(5), 5),
            (0, 5, Sent::Replies(3), 3),
            (3, 5, Sent::Replies(2), 5),
            (3, 5, Sent::Replies(9), 5),
            (2, 5, Sent::Replies(0), 3),
            (2, 5, Sent::Failed(InvalidInput), 3),
            (4, 5, Sent::Failed(ConnectionRefused), 5),
            (2, 5, Sent::Failed(WouldBlock), 5),
            (2, 5, Sent::Failed(Interrupted), 2),
        ];
        for (start, count, sent, next) in cases {
            assert_eq!(
                next_unsent(start, count, sent),
                next,
                "{start} {count} {sent:?}"
            );
        }
    }

    /// A zone where `nfs` lists two live VIPs, so consecutive answers alternate.
    fn view() -> Arc<View> {
        let file = "
cluster: {name: t, secret: 0123456789abcdef0123, data_dir: /var/lib/vipgate}
nodes:
  - {name: node1, cluster_address: 198.51.100.11, public_interfaces: [eth0]}
public_addresses:
  - address: 192.0.2.201/24
  - address: 192.0.2.202/24
volume: {path: /mnt/volume}
dns:
  zone: vipgate.test
  names:
    - {name: nfs, addresses: all}
";
        let config = cluster_config::parse(file, "cluster.yaml").unwrap();
        let zone = Arc::new(crate::Zone::new(
            config.dns.as_ref().unwrap(),
            &config.nodes,
        ));
        let live = config
            .public_addresses
            .iter()
            .map(|vip| vip.address.addr())
            .collect();
        Arc::new(View::new(zone, &live, 1))
    }

    fn query(id: u16) -> Vec<u8> {
        let mut packet = id.to_be_bytes().to_vec();
        packet.extend_from_slice(&[1, 0, 0, 1, 0, 0, 0, 0, 0, 0]);
        packet.extend_from_slice(b"\x03nfs\x07vipgate\x04test\x00\x00\x01\x00\x01");
        packet
    }

    /// Queries queued before the thread starts arrive as more than one batch; every query is
    /// answered once, from the address it was sent to (the client's socket is connected, so it
    /// takes nothing else), garbage in between is dropped or refused without disturbing the
    /// rest, consecutive answers rotate, and stopping ends the thread.
    #[test]
    fn a_worker_answers_queued_queries_across_batches_and_stops() {
        let server = UdpSocket::bind("127.0.0.1:0").unwrap();
        // The wildcard sockets' path: packet info each way.
        nix::sys::socket::setsockopt(&server, nix::sys::socket::sockopt::Ipv4PacketInfo, &true)
            .unwrap();
        let client = UdpSocket::bind("127.0.0.1:0").unwrap();
        client.connect(server.local_addr().unwrap()).unwrap();
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let queries = 2 * BATCH + 5;
        for id in 0..queries {
            client.send(&query(id as u16)).unwrap();
            if id == BATCH - 1 {
                // Nothing for a response, FORMERR for a cut question.
                let mut response = query(9999);
                response[2] |= 0x80;
                client.send(&response).unwrap();
                client.send(&query(7777)[..20]).unwrap();
            }
        }
        let (_views, receiver) = watch::channel(view());
        let worker = UdpWorker::spawn(server, receiver, Arc::new(AtomicUsize::new(0))).unwrap();
        let mut answered = vec![0; queries];
        let mut first_address = [0usize; 2];
        let mut formerr = 0;
        let mut buffer = [0u8; 1232];
        for _ in 0..queries + 1 {
            let length = client.recv(&mut buffer).unwrap();
            let reply = &buffer[..length];
            let id = usize::from(u16::from_be_bytes([reply[0], reply[1]]));
            if id == 7777 {
                assert_eq!(reply[3] & 0xf, 1, "FORMERR");
                formerr += 1;
                continue;
            }
            answered[id] += 1;
            assert_eq!(u16::from_be_bytes([reply[6], reply[7]]), 2, "{reply:?}");
            // The first answer's address is the last byte of its record (right after the
            // 34-byte header + question and a 16-byte record header).
            first_address[usize::from(reply[12 + 22 + 15] - 201)] += 1;
        }
        assert_eq!(formerr, 1);
        assert!(answered.iter().all(|&count| count == 1), "{answered:?}");
        assert!(
            first_address.iter().all(|&count| count >= queries / 2 - 2),
            "{first_address:?}"
        );
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(worker.finish());
    }
}
