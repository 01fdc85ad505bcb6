//! Client connections of the VIPs: finding them, tickling them on takeover, resetting them on
//! release, so that clients reconnect at once instead of waiting out TCP retransmission timers.
//!
//! When a VIP moves, its clients' TCP connections were with the old owner; the new owner's kernel
//! has never heard of them. An idle client would notice only when it next sends (and a
//! retransmitting one only after its backoff), so CTDB's trick is used:
//!
//! 1. every owner lists the established connections of its VIPs ([`established`], through
//!    NETLINK_SOCK_DIAG) and the daemon replicates that list through Raft;
//! 2. the new owner, after adding the address and announcing it, sends each known client of the
//!    VIP a *tickle ACK* ([`Tickler::send_tickle`]): sequence and acknowledgement 0, outside the
//!    client's window, so the client answers with an ACK of its own; the new owner has no socket
//!    for it and its kernel answers with a RST that the client accepts. The client's socket fails
//!    with ECONNRESET and the client reconnects — to the new owner;
//! 3. a node releasing a VIP first closes that VIP's sockets ([`reset_connections`], sock_diag's
//!    SOCK_DESTROY, which makes the kernel send each client a RST with the right sequence
//!    numbers), then deletes the address.
//!
//! Packets are built by pure functions (see [`segment`]); the raw sockets and the netlink socket
//! live in the network namespace of the thread that opens them.

mod diag;
pub mod segment;

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub use segment::{MixedFamilies, SegmentKind, internet_checksum, ip_packet, tcp_segment};

use diag::{AF_INET, AF_INET6, DiagChannel, DiagSocket, state};

/// An established TCP connection to a VIP, as replicated between nodes.
#[derive(
    Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize,
)]
pub struct Connection {
    /// The VIP and the service port (2049, 445, …).
    pub server: SocketAddr,
    /// The client's address and port.
    pub client: SocketAddr,
}

/// States of sockets that have a peer to reset: connected, or closing with the peer still
/// expecting an answer. Listening sockets and TIME_WAIT are left alone.
const RESETTABLE: [u8; 7] = [
    state::ESTABLISHED,
    state::SYN_RECV,
    state::FIN_WAIT1,
    state::FIN_WAIT2,
    state::CLOSE_WAIT,
    state::LAST_ACK,
    state::CLOSING,
];

/// Established TCP connections in the caller's network namespace whose local address is one of
/// `vips` (IPv4 and IPv6; IPv4 clients of a dual-stack listener are reported as IPv4), sorted.
pub fn established(vips: &[IpAddr]) -> io::Result<Vec<Connection>> {
    let sockets = dump(state::mask(&[state::ESTABLISHED]))?;
    Ok(connections_of(&sockets, vips))
}

/// Closes every TCP socket of `vip` that has a peer (established or closing) in the caller's
/// network namespace, so the kernel sends each client a RST; returns how many were closed.
/// Listening sockets stay. Needs CAP_NET_ADMIN and CONFIG_INET_DIAG_DESTROY; without the latter
/// this fails with `Unsupported` and the clients are left to the new owner's tickles.
pub fn reset_connections(vip: IpAddr) -> io::Result<usize> {
    let vip = vip.to_canonical();
    let mut channel = DiagChannel::open()?;
    let mut sockets = Vec::new();
    for family in [AF_INET, AF_INET6] {
        sockets.extend(channel.dump(family, state::mask(&RESETTABLE))?);
    }
    let mut reset = 0;
    let mut first_failure = None;
    let targets: Vec<&DiagSocket> = sockets.iter().filter(|s| s.local.ip() == vip).collect();
    for socket in &targets {
        match channel.destroy(socket) {
            Ok(()) => reset += 1,
            // Closed by its owner since the dump: nothing left to do.
            Err(error) if error.raw_os_error() == Some(libc::ENOENT) => {}
            Err(error) if error.raw_os_error() == Some(libc::EOPNOTSUPP) => {
                return Err(io::Error::new(
                    io::ErrorKind::Unsupported,
                    format!(
                        "cannot reset the connections of {vip}: the kernel cannot destroy \
                         sockets (CONFIG_INET_DIAG_DESTROY is off)"
                    ),
                ));
            }
            Err(error) => {
                first_failure.get_or_insert((socket.remote, error));
            }
        }
    }
    match first_failure {
        None => Ok(reset),
        Some((client, error)) => Err(io::Error::new(
            error.kind(),
            format!(
                "reset {reset} of {} connections of {vip}; the one from {client} failed: {error}",
                targets.len()
            ),
        )),
    }
}

/// TCP sockets of both families in the `states` mask.
fn dump(states: u32) -> io::Result<Vec<DiagSocket>> {
    let mut channel = DiagChannel::open()?;
    let mut sockets = channel.dump(AF_INET, states)?;
    sockets.extend(channel.dump(AF_INET6, states)?);
    Ok(sockets)
}

/// The connections among `sockets` whose local address is one of `vips`, sorted, without
/// duplicates.
fn connections_of(sockets: &[DiagSocket], vips: &[IpAddr]) -> Vec<Connection> {
    let vips: Vec<IpAddr> = vips.iter().map(IpAddr::to_canonical).collect();
    let mut connections: Vec<Connection> = sockets
        .iter()
        .filter(|socket| vips.contains(&socket.local.ip()))
        .map(|socket| Connection {
            server: socket.local,
            client: socket.remote,
        })
        .collect();
    connections.sort();
    connections.dedup();
    connections
}

/// Sends tickle ACKs and RSTs from raw sockets (`IPPROTO_RAW`, the packet's IP header built
/// here) in the network namespace of the thread that created it. Needs CAP_NET_RAW.
#[derive(Debug)]
pub struct Tickler {
    v4: OwnedFd,
    /// IPv6 may be disabled in a namespace; then only IPv6 sends fail, with this reason.
    v6: Result<OwnedFd, String>,
}

fn raw_socket(family: libc::c_int) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2) call; the result is checked before it is owned.
    let fd = unsafe {
        libc::socket(
            family,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_RAW,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `fd` is a freshly opened descriptor owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

impl Tickler {
    /// Opens the raw sockets. An `IPPROTO_RAW` socket sends the IP header it is given, for IPv6
    /// as for IPv4, so the source can be the VIP whatever the routing table prefers.
    pub fn new() -> io::Result<Tickler> {
        let v4 = raw_socket(libc::AF_INET)?;
        let v6 = raw_socket(libc::AF_INET6)
            .map_err(|error| format!("cannot open an IPv6 raw socket: {error}"));
        Ok(Tickler { v4, v6 })
    }

    /// Sends `connection`'s client a tickle ACK from the VIP.
    pub fn send_tickle(&self, connection: &Connection) -> io::Result<()> {
        self.send(connection, SegmentKind::TickleAck)
    }

    /// Sends `connection`'s client a RST from the VIP with `sequence`, which must be the next
    /// sequence number the client expects (for example the acknowledgement number of a segment
    /// the client sent).
    pub fn send_reset(&self, connection: &Connection, sequence: u32) -> io::Result<()> {
        self.send(connection, SegmentKind::Reset { sequence })
    }

    /// Sends `connection`'s client a segment of `kind` from the VIP.
    pub fn send(&self, connection: &Connection, kind: SegmentKind) -> io::Result<()> {
        let packet = ip_packet(connection, kind)
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
        let sent = match connection.client.ip().to_canonical() {
            IpAddr::V4(client) => {
                // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
                let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
                to.sin_family = libc::AF_INET as libc::sa_family_t;
                to.sin_addr.s_addr = u32::from_ne_bytes(client.octets());
                send_to(&self.v4, &packet, &to)
            }
            IpAddr::V6(client) => {
                let socket = self
                    .v6
                    .as_ref()
                    .map_err(|reason| io::Error::new(io::ErrorKind::Unsupported, reason.clone()))?;
                // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
                let mut to: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
                to.sin6_family = libc::AF_INET6 as libc::sa_family_t;
                to.sin6_addr.s6_addr = client.octets();
                send_to(socket, &packet, &to)
            }
        };
        sent.map_err(|error| {
            io::Error::new(
                error.kind(),
                format!(
                    "cannot send to {} from {}: {error}",
                    connection.client, connection.server
                ),
            )
        })
    }
}

/// Sends `packet` on `socket` to `address`, a socket address structure of the socket's family.
fn send_to<A>(socket: &OwnedFd, packet: &[u8], address: &A) -> io::Result<()> {
    // SAFETY: `packet` and `address` are valid for the given lengths during the call, and `A` is
    // a plain socket address structure (the callers pass sockaddr_in/sockaddr_in6).
    let sent = unsafe {
        libc::sendto(
            socket.as_raw_fd(),
            packet.as_ptr().cast(),
            packet.len(),
            0,
            (address as *const A).cast(),
            std::mem::size_of::<A>() as libc::socklen_t,
        )
    };
    if sent < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_are_those_of_the_vips_sorted_and_unique() {
        let parse = |text: &str| -> SocketAddr { text.parse().unwrap() };
        let sockets: Vec<DiagSocket> = [
            ("192.0.2.211:2049", "192.0.2.102:700"),
            ("192.0.2.211:2049", "192.0.2.101:800"),
            ("192.0.2.11:22", "192.0.2.101:900"), // the node's own address
            ("[2001:db8:0:1::211]:445", "[2001:db8:0:1::101]:1000"),
            ("192.0.2.212:2049", "192.0.2.101:800"), // a VIP not asked for
            ("192.0.2.211:2049", "192.0.2.101:800"), // listed twice
        ]
        .iter()
        .map(|(local, remote)| diag::tests::socket(parse(local), parse(remote)))
        .collect();
        let vips: Vec<IpAddr> = ["::ffff:192.0.2.211", "2001:db8:0:1::211"]
            .iter()
            .map(|vip| vip.parse().unwrap())
            .collect();
        let found: Vec<(String, String)> = connections_of(&sockets, &vips)
            .iter()
            .map(|c| (c.server.to_string(), c.client.to_string()))
            .collect();
        let expected: Vec<(String, String)> = [
            ("192.0.2.211:2049", "192.0.2.101:800"),
            ("192.0.2.211:2049", "192.0.2.102:700"),
            ("[2001:db8:0:1::211]:445", "[2001:db8:0:1::101]:1000"),
        ]
        .iter()
        .map(|(server, client)| (server.to_string(), client.to_string()))
        .collect();
        assert_eq!(found, expected);
        assert!(connections_of(&sockets, &[]).is_empty());
    }

    #[test]
    fn a_connection_round_trips_through_serde() {
        let connection = Connection {
            server: "[2001:db8:0:1::211]:2049".parse().unwrap(),
            client: "[2001:db8:0:1::101]:51234".parse().unwrap(),
        };
        let text = serde_json::to_string(&connection).unwrap();
        assert_eq!(
            text,
            r#"{"server":"[2001:db8:0:1::211]:2049","client":"[2001:db8:0:1::101]:51234"}"#
        );
        assert_eq!(
            serde_json::from_str::<Connection>(&text).unwrap(),
            connection
        );
    }
}
