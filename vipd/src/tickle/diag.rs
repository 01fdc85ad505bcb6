//! The kernel's socket table through NETLINK_SOCK_DIAG: dumping TCP sockets by state
//! (`SOCK_DIAG_BY_FAMILY`, what `ss` does) and closing one by its identity (`SOCK_DESTROY`, what
//! `ss -K` does; needs CAP_NET_ADMIN and a kernel built with CONFIG_INET_DIAG_DESTROY).
//!
//! Requests are encoded and replies decoded by pure functions over byte slices, so the parser is
//! tested without a kernel; every length read from a reply is checked against the bytes present
//! before anything is sliced. [`DiagChannel`] is the thin socket shell around them.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::Duration;

const NETLINK_SOCK_DIAG: libc::c_int = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const HEADER_LEN: usize = 16;
/// `struct inet_diag_sockid`: ports, two 16-byte addresses, interface, cookie.
const SOCKID_LEN: usize = 48;
/// `struct inet_diag_req_v2`: family, protocol, extensions, pad, states, sockid.
const REQUEST_LEN: usize = 8 + SOCKID_LEN;
/// `struct inet_diag_msg`: family, state, timer, retransmits, sockid, five u32 counters.
const DIAG_MESSAGE_LEN: usize = 4 + SOCKID_LEN + 20;
/// The largest reply datagram accepted; the kernel's dump batches are far smaller.
const RECEIVE_BUFFER: usize = 64 * 1024;
/// How long to wait for the kernel's answer; it answers at once, so this only bounds a bug.
const RECEIVE_TIMEOUT: Duration = Duration::from_secs(5);

pub(crate) const AF_INET: u8 = libc::AF_INET as u8;
pub(crate) const AF_INET6: u8 = libc::AF_INET6 as u8;

/// TCP states as the kernel numbers them (`include/net/tcp_states.h`), as bits of a state mask.
pub(crate) mod state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const CLOSING: u8 = 11;

    /// The mask selecting `states`.
    pub fn mask(states: &[u8]) -> u32 {
        states.iter().fold(0, |mask, state| {
            mask | 1u32.checked_shl(u32::from(*state)).unwrap_or(0)
        })
    }
}

/// One TCP socket as sock_diag reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DiagSocket {
    pub family: u8,
    pub state: u8,
    /// Local address and port, IPv4-mapped IPv6 addresses shown as IPv4.
    pub local: SocketAddr,
    /// Remote address and port, likewise.
    pub remote: SocketAddr,
    /// The socket's identity as the kernel gave it (addresses, interface and cookie), which a
    /// destroy request must repeat exactly.
    id: [u8; SOCKID_LEN],
}

/// A request message: netlink header and `inet_diag_req_v2` for TCP.
fn request(
    message_type: u16,
    flags: u16,
    sequence: u32,
    family: u8,
    states: u32,
    id: &[u8; SOCKID_LEN],
) -> Vec<u8> {
    let length = (HEADER_LEN + REQUEST_LEN) as u32;
    let mut message = Vec::with_capacity(HEADER_LEN + REQUEST_LEN);
    message.extend_from_slice(&length.to_ne_bytes());
    message.extend_from_slice(&message_type.to_ne_bytes());
    message.extend_from_slice(&flags.to_ne_bytes());
    message.extend_from_slice(&sequence.to_ne_bytes());
    message.extend_from_slice(&0u32.to_ne_bytes()); // port id: the kernel fills it in
    message.extend_from_slice(&[family, libc::IPPROTO_TCP as u8, 0, 0]);
    message.extend_from_slice(&states.to_ne_bytes());
    message.extend_from_slice(id);
    message
}

/// A dump of the TCP sockets of `family` in the `states` mask.
pub(crate) fn dump_request(family: u8, states: u32, sequence: u32) -> Vec<u8> {
    request(
        SOCK_DIAG_BY_FAMILY,
        NLM_F_REQUEST | NLM_F_DUMP,
        sequence,
        family,
        states,
        &[0; SOCKID_LEN],
    )
}

/// A request to close `socket`, acknowledged either way.
pub(crate) fn destroy_request(socket: &DiagSocket, sequence: u32) -> Vec<u8> {
    request(
        SOCK_DESTROY,
        NLM_F_REQUEST | NLM_F_ACK,
        sequence,
        socket.family,
        u32::MAX,
        &socket.id,
    )
}

/// What one datagram from the kernel said.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Reply {
    pub sockets: Vec<DiagSocket>,
    /// The dump is complete.
    pub done: bool,
    /// An acknowledgement or error (`NLMSG_ERROR`): 0 for success, else a negative errno.
    pub status: Option<i32>,
}

fn malformed(what: String) -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidData,
        format!("malformed sock_diag reply: {what}"),
    )
}

fn read_u16(bytes: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(bytes.get(at..at + 2)?.try_into().ok()?))
}

fn read_u32(bytes: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(bytes.get(at..at + 4)?.try_into().ok()?))
}

/// Decodes one datagram of netlink messages; messages for another request (`sequence`) are
/// skipped, sockets of families other than IPv4 and IPv6 ignored.
pub(crate) fn parse_reply(datagram: &[u8], sequence: u32) -> io::Result<Reply> {
    let mut reply = Reply::default();
    let mut rest = datagram;
    while !rest.is_empty() {
        let (Some(length), Some(message_type), Some(message_sequence)) =
            (read_u32(rest, 0), read_u16(rest, 4), read_u32(rest, 8))
        else {
            return Err(malformed(format!("{} bytes left, no header", rest.len())));
        };
        let length = usize::try_from(length).unwrap_or(usize::MAX);
        if length < HEADER_LEN || length > rest.len() {
            return Err(malformed(format!(
                "message length {length} with {} bytes left",
                rest.len()
            )));
        }
        let payload = &rest[HEADER_LEN..length];
        // Messages are padded to four bytes; the last one may end the datagram unpadded.
        let advance = length.next_multiple_of(4).min(rest.len());
        rest = &rest[advance..];
        if message_sequence != sequence {
            continue;
        }
        match message_type {
            NLMSG_DONE => reply.done = true,
            NLMSG_ERROR => {
                let error = read_u32(payload, 0)
                    .ok_or_else(|| malformed(format!("error message of {length} bytes")))?;
                reply.status = Some(error as i32);
            }
            SOCK_DIAG_BY_FAMILY => {
                if let Some(socket) = parse_socket(payload)? {
                    reply.sockets.push(socket);
                }
            }
            _ => {}
        }
    }
    Ok(reply)
}

fn parse_socket(payload: &[u8]) -> io::Result<Option<DiagSocket>> {
    if payload.len() < DIAG_MESSAGE_LEN {
        return Err(malformed(format!(
            "socket message of {} bytes, under {DIAG_MESSAGE_LEN}",
            payload.len()
        )));
    }
    let (family, state) = (payload[0], payload[1]);
    let mut id = [0u8; SOCKID_LEN];
    id.copy_from_slice(&payload[4..4 + SOCKID_LEN]);
    let local_port = u16::from_be_bytes([id[0], id[1]]);
    let remote_port = u16::from_be_bytes([id[2], id[3]]);
    let address = |bytes: &[u8]| -> Option<IpAddr> {
        match family {
            AF_INET => Some(IpAddr::V4(Ipv4Addr::from(
                <[u8; 4]>::try_from(&bytes[..4]).ok()?,
            ))),
            AF_INET6 => {
                Some(IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(bytes).ok()?)).to_canonical())
            }
            _ => None,
        }
    };
    let (Some(local), Some(remote)) = (address(&id[4..20]), address(&id[20..36])) else {
        return Ok(None);
    };
    Ok(Some(DiagSocket {
        family,
        state,
        local: SocketAddr::new(local, local_port),
        remote: SocketAddr::new(remote, remote_port),
        id,
    }))
}

/// A NETLINK_SOCK_DIAG socket in the network namespace of the thread that opened it.
#[derive(Debug)]
pub(crate) struct DiagChannel {
    socket: OwnedFd,
    sequence: u32,
    buffer: Vec<u8>,
}

impl DiagChannel {
    pub(crate) fn open() -> io::Result<DiagChannel> {
        // SAFETY: plain socket(2) call; the result is checked before it is owned.
        let fd = unsafe {
            libc::socket(
                libc::AF_NETLINK,
                libc::SOCK_RAW | libc::SOCK_CLOEXEC,
                NETLINK_SOCK_DIAG,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` is a freshly opened descriptor owned by nothing else.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let timeout = libc::timeval {
            tv_sec: RECEIVE_TIMEOUT.as_secs() as libc::time_t,
            tv_usec: 0,
        };
        // SAFETY: the option value is a live timeval and its size is passed.
        let result = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVTIMEO,
                (&timeout as *const libc::timeval).cast(),
                std::mem::size_of::<libc::timeval>() as libc::socklen_t,
            )
        };
        if result != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(DiagChannel {
            socket,
            sequence: 0,
            buffer: vec![0; RECEIVE_BUFFER],
        })
    }

    fn next_sequence(&mut self) -> u32 {
        self.sequence = self.sequence.wrapping_add(1);
        self.sequence
    }

    fn send(&self, message: &[u8]) -> io::Result<()> {
        // SAFETY: sockaddr_nl is plain old data; all-zero (port 0: the kernel) is valid.
        let mut kernel: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        kernel.nl_family = libc::AF_NETLINK as libc::sa_family_t;
        // SAFETY: `message` and `kernel` are valid for the lengths passed during the call.
        let sent = unsafe {
            libc::sendto(
                self.socket.as_raw_fd(),
                message.as_ptr().cast(),
                message.len(),
                0,
                (&kernel as *const libc::sockaddr_nl).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
            )
        };
        if sent < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Receives one datagram and decodes it.
    fn receive(&mut self, sequence: u32) -> io::Result<Reply> {
        // SAFETY: the buffer is valid for writes of its length; MSG_TRUNC makes the call return
        // the datagram's real length even when it did not fit.
        let received = unsafe {
            libc::recv(
                self.socket.as_raw_fd(),
                self.buffer.as_mut_ptr().cast(),
                self.buffer.len(),
                libc::MSG_TRUNC,
            )
        };
        let received = usize::try_from(received).map_err(|_| io::Error::last_os_error())?;
        let datagram = self.buffer.get(..received).ok_or_else(|| {
            malformed(format!(
                "a datagram of {received} bytes exceeds {RECEIVE_BUFFER}"
            ))
        })?;
        parse_reply(datagram, sequence)
    }

    /// Every TCP socket of `family` in one of the `states` (a mask from [`state::mask`]).
    pub(crate) fn dump(&mut self, family: u8, states: u32) -> io::Result<Vec<DiagSocket>> {
        let sequence = self.next_sequence();
        self.send(&dump_request(family, states, sequence))?;
        let mut sockets = Vec::new();
        loop {
            let reply = self.receive(sequence)?;
            sockets.extend(reply.sockets);
            if let Some(status) = reply.status.filter(|status| *status != 0) {
                return Err(io::Error::from_raw_os_error(status.saturating_neg()));
            }
            if reply.done {
                return Ok(sockets);
            }
        }
    }

    /// Closes `socket`; the kernel sends its peer a RST if the state calls for one.
    pub(crate) fn destroy(&mut self, socket: &DiagSocket) -> io::Result<()> {
        let sequence = self.next_sequence();
        self.send(&destroy_request(socket, sequence))?;
        loop {
            if let Some(status) = self.receive(sequence)?.status {
                return match status {
                    0 => Ok(()),
                    error => Err(io::Error::from_raw_os_error(error.saturating_neg())),
                };
            }
        }
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// An established socket as a dump reports it, in the family of `local`.
    pub(crate) fn socket(local: SocketAddr, remote: SocketAddr) -> DiagSocket {
        let family = if local.is_ipv4() { AF_INET } else { AF_INET6 };
        parse_socket(&socket_payload(family, 1, local, remote))
            .unwrap()
            .unwrap()
    }

    /// A netlink message of `message_type` for request `sequence` with `payload`.
    fn message(message_type: u16, sequence: u32, payload: &[u8]) -> Vec<u8> {
        let length = (HEADER_LEN + payload.len()) as u32;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&length.to_ne_bytes());
        bytes.extend_from_slice(&message_type.to_ne_bytes());
        bytes.extend_from_slice(&2u16.to_ne_bytes()); // NLM_F_MULTI
        bytes.extend_from_slice(&sequence.to_ne_bytes());
        bytes.extend_from_slice(&0u32.to_ne_bytes());
        bytes.extend_from_slice(payload);
        while bytes.len() % 4 != 0 {
            bytes.push(0);
        }
        bytes
    }

    /// An `inet_diag_msg` payload.
    fn socket_payload(family: u8, state: u8, local: SocketAddr, remote: SocketAddr) -> Vec<u8> {
        let mut payload = vec![family, state, 0, 0];
        payload.extend_from_slice(&local.port().to_be_bytes());
        payload.extend_from_slice(&remote.port().to_be_bytes());
        for address in [local.ip(), remote.ip()] {
            let mut field = [0u8; 16];
            match address {
                IpAddr::V4(v4) => field[..4].copy_from_slice(&v4.octets()),
                IpAddr::V6(v6) => field.copy_from_slice(&v6.octets()),
            }
            payload.extend_from_slice(&field);
        }
        payload.extend_from_slice(&7u32.to_ne_bytes()); // interface
        payload.extend_from_slice(&[0xaa; 8]); // cookie
        payload.extend_from_slice(&[0; 20]); // expires, queues, uid, inode
        payload
    }

    fn address(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn a_dump_request_asks_for_tcp_sockets_in_the_given_states() {
        let request = dump_request(AF_INET6, state::mask(&[state::ESTABLISHED]), 9);
        assert_eq!(request.len(), 72);
        assert_eq!(read_u32(&request, 0), Some(72));
        assert_eq!(read_u16(&request, 4), Some(SOCK_DIAG_BY_FAMILY));
        assert_eq!(read_u16(&request, 6), Some(0x301));
        assert_eq!(read_u32(&request, 8), Some(9));
        assert_eq!(&request[16..20], &[10, 6, 0, 0]);
        assert_eq!(read_u32(&request, 20), Some(0b10));
        assert!(request[24..].iter().all(|byte| *byte == 0));
        assert_eq!(state::mask(&[state::ESTABLISHED, 10]), (1 << 1) | (1 << 10));
    }

    #[test]
    fn a_reply_is_decoded_and_a_destroy_request_repeats_the_identity() {
        let vip = address("192.0.2.211:2049");
        let client = address("192.0.2.101:51234");
        let mapped_vip = address("[::ffff:192.0.2.211]:2049");
        let mapped_client = address("[::ffff:192.0.2.101]:40000");
        let six = (
            address("[2001:db8:0:1::211]:445"),
            address("[2001:db8:0:1::101]:3333"),
        );
        let datagram = [
            message(
                SOCK_DIAG_BY_FAMILY,
                5,
                &socket_payload(AF_INET, 1, vip, client),
            ),
            message(
                SOCK_DIAG_BY_FAMILY,
                5,
                &socket_payload(AF_INET6, 1, mapped_vip, mapped_client),
            ),
            message(
                SOCK_DIAG_BY_FAMILY,
                5,
                &socket_payload(AF_INET6, 8, six.0, six.1),
            ),
            // Another family's socket and another request's message are passed over.
            message(SOCK_DIAG_BY_FAMILY, 5, &socket_payload(1, 1, vip, client)),
            message(
                SOCK_DIAG_BY_FAMILY,
                4,
                &socket_payload(AF_INET, 1, vip, client),
            ),
            message(NLMSG_DONE, 5, &0u32.to_ne_bytes()),
        ]
        .concat();
        let reply = parse_reply(&datagram, 5).unwrap();
        assert!(reply.done);
        assert_eq!(reply.status, None);
        let seen: Vec<(u8, u8, SocketAddr, SocketAddr)> = reply
            .sockets
            .iter()
            .map(|s| (s.family, s.state, s.local, s.remote))
            .collect();
        assert_eq!(
            seen,
            vec![
                (AF_INET, 1, vip, client),
                (AF_INET6, 1, vip, address("192.0.2.101:40000")),
                (AF_INET6, 8, six.0, six.1),
            ]
        );
        // The destroy request names the socket exactly as the kernel reported it, in its own
        // family (a mapped socket is an IPv6 socket).
        let destroy = destroy_request(&reply.sockets[1], 6);
        assert_eq!(read_u16(&destroy, 4), Some(SOCK_DESTROY));
        assert_eq!(read_u16(&destroy, 6), Some(NLM_F_REQUEST | NLM_F_ACK));
        assert_eq!(destroy[16], AF_INET6);
        assert_eq!(
            &destroy[24..],
            &socket_payload(AF_INET6, 1, mapped_vip, mapped_client)[4..52]
        );
    }

    #[test]
    fn acknowledgements_and_errors() {
        let mut error = (-95i32).to_ne_bytes().to_vec(); // EOPNOTSUPP
        error.extend_from_slice(&[0; 16]); // the request's header
        let reply = parse_reply(&message(NLMSG_ERROR, 3, &error), 3).unwrap();
        assert_eq!(reply.status, Some(-95));
        let reply = parse_reply(&message(NLMSG_ERROR, 3, &[0; 20]), 3).unwrap();
        assert_eq!(reply.status, Some(0));
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        let good = message(
            SOCK_DIAG_BY_FAMILY,
            1,
            &socket_payload(AF_INET, 1, address("1.2.3.4:1"), address("5.6.7.8:2")),
        );
        let mut cases: Vec<Vec<u8>> = vec![
            vec![1, 2, 3],                             // shorter than a header
            message(SOCK_DIAG_BY_FAMILY, 1, &[0; 10]), // socket message too short
            message(NLMSG_ERROR, 1, &[0; 2]),          // error without its code
        ];
        let mut too_long = good.clone();
        too_long[..4].copy_from_slice(&1000u32.to_ne_bytes());
        cases.push(too_long);
        let mut too_short = good.clone();
        too_short[..4].copy_from_slice(&8u32.to_ne_bytes());
        cases.push(too_short);
        for case in cases {
            let error = parse_reply(&case, 1).unwrap_err();
            assert_eq!(error.kind(), io::ErrorKind::InvalidData, "{case:?}");
            assert!(error.to_string().starts_with("malformed sock_diag reply: "));
        }
        // Every truncation of a valid datagram is an error or a shorter reply, never a panic.
        let datagram = [good.clone(), good, message(NLMSG_DONE, 1, &[0; 4])].concat();
        for end in 0..datagram.len() {
            let _ = parse_reply(&datagram[..end], 1);
        }
        assert_eq!(parse_reply(&datagram, 1).unwrap().sockets.len(), 2);
    }
}
