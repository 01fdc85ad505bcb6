//! Clients of a moved VIP learn at once that their connection is gone: after node2 takes the
//! VIPs from node1 and announces them, an idle client notices nothing by itself, but one tickle
//! ACK from node2 makes its socket fail with ECONNRESET. A node releasing a VIP resets that VIP's
//! connections (sock_diag SOCK_DESTROY) and leaves its other connections and its listeners alone.
//! IPv4 and IPv6, against a dual-stack listener. Real raw sockets in a lab. Needs root.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::io::{ErrorKind, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use ipnet::IpNet;
use vipd::announce::{Announcer, RawAnnouncer};
use vipd::tickle::{self, Connection, SegmentKind, Tickler};
use vipgate::lab::{Lab, netns};

const LEASE: Duration = Duration::from_secs(30);
const PORT: u16 = 2049;
/// How long a client is watched for a reset: without a tickle nothing may happen in this time,
/// with one the reset must come within it.
const WINDOW: Duration = Duration::from_millis(1500);

fn vips() -> Vec<IpNet> {
    ["192.0.2.211/24", "2001:db8:0:1::211/64"]
        .iter()
        .map(|v| v.parse().unwrap())
        .collect()
}

fn namespace(lab: &Lab, host: &str) -> String {
    lab.host(host).unwrap().netns.clone()
}

/// A dual-stack listener on `PORT` inside `host`, as the NFS gateway will have.
fn listen(lab: &Lab, host: &str) -> TcpListener {
    netns::run_in(&namespace(lab, host), || {
        TcpListener::bind(("::", PORT)).unwrap()
    })
    .unwrap()
}

/// A connection from `host` to `server`, and the listener's end of it.
fn connect(
    lab: &Lab,
    host: &str,
    listener: &TcpListener,
    server: IpAddr,
) -> (TcpStream, TcpStream) {
    let target = SocketAddr::new(server, PORT);
    let client = netns::run_in(&namespace(lab, host), || {
        TcpStream::connect_timeout(&target, Duration::from_secs(3)).unwrap()
    })
    .unwrap();
    let (accepted, _) = listener.accept().unwrap();
    assert_eq!(
        accepted.peer_addr().unwrap().ip().to_canonical(),
        client.local_addr().unwrap().ip()
    );
    (client, accepted)
}

/// The connection as the server's node sees it.
fn connection_of(client: &TcpStream) -> Connection {
    Connection {
        server: client.peer_addr().unwrap(),
        client: client.local_addr().unwrap(),
    }
}

/// What a read on `socket` gives within `window`: `Ok(n)`, or the error (`WouldBlock` when
/// nothing happened).
fn read_within(mut socket: &TcpStream, window: Duration) -> Result<usize, ErrorKind> {
    socket.set_read_timeout(Some(window)).unwrap();
    let mut buffer = [0u8; 16];
    socket.read(&mut buffer).map_err(|error| error.kind())
}

/// The MAC `client` has for `address` now, if any.
fn client_entry(lab: &Lab, client: &str, address: IpAddr) -> Option<String> {
    lab.neighbours(client)
        .unwrap()
        .into_iter()
        .find(|n| n.address == address)
        .and_then(|n| n.mac)
}

/// node2 announces the VIPs in rounds until client1 maps them to node2's MAC.
fn announce_until_learnt(lab: &Lab, vips: &[IpNet]) {
    let node2 = namespace(lab, "node2");
    let node2_mac = lab.mac("node2", "pub0").unwrap();
    let learnt = common::wait_until(Duration::from_secs(8), || {
        netns::run_in(&node2, || {
            for vip in vips {
                RawAnnouncer.announce(vip.addr(), "pub0").unwrap();
            }
        })
        .unwrap();
        // Linux ignores a second update of one entry within `locktime` (1 s); rounds cover it.
        std::thread::sleep(Duration::from_millis(300));
        vips.iter().all(|vip| {
            client_entry(lab, "client1", vip.addr()).as_deref() == Some(node2_mac.as_str())
        })
    });
    assert!(learnt, "client1 never learnt node2's MAC for the VIPs");
}

/// Sends a tickle ACK for `connection` whose TCP checksum is wrong, from the calling thread's
/// namespace: a control showing that the client checks TCP checksums on this path.
fn send_corrupted_tickle(connection: &Connection) {
    let mut packet = tickle::ip_packet(connection, SegmentKind::TickleAck).unwrap();
    let (family, tcp_start) = match connection.client.ip() {
        IpAddr::V4(_) => (libc::AF_INET, 20),
        IpAddr::V6(_) => (libc::AF_INET6, 40),
    };
    packet[tcp_start + 16] ^= 0x5a;
    // SAFETY: plain socket(2) call; the result is checked before it is owned.
    let fd = unsafe { libc::socket(family, libc::SOCK_RAW, libc::IPPROTO_RAW) };
    assert!(fd >= 0, "raw socket: {}", std::io::Error::last_os_error());
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let socket = unsafe { OwnedFd::from_raw_fd(fd) };
    let sent = match connection.client.ip() {
        IpAddr::V4(client) => {
            // SAFETY: sockaddr_in is plain old data; all-zero is valid.
            let mut to: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            to.sin_family = libc::AF_INET as libc::sa_family_t;
            to.sin_addr.s_addr = u32::from_ne_bytes(client.octets());
            // SAFETY: buffers valid for the lengths passed.
            unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&to as *const libc::sockaddr_in).cast(),
                    size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        IpAddr::V6(client) => {
            // SAFETY: sockaddr_in6 is plain old data; all-zero is valid.
            let mut to: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            to.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            to.sin6_addr.s6_addr = client.octets();
            // SAFETY: buffers valid for the lengths passed.
            unsafe {
                libc::sendto(
                    socket.as_raw_fd(),
                    packet.as_ptr().cast(),
                    packet.len(),
                    0,
                    (&to as *const libc::sockaddr_in6).cast(),
                    size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    assert_eq!(
        sent,
        packet.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
}

/// The TCP segments `host` dropped for a bad checksum (IPv4 and IPv6 share the counter).
fn tcp_checksum_errors(lab: &Lab, host: &str) -> u64 {
    let snmp = netns::run_in(&namespace(lab, host), || {
        // /proc/thread-self/net is the calling thread's network namespace.
        std::fs::read_to_string("/proc/thread-self/net/snmp").unwrap()
    })
    .unwrap();
    let tcp: Vec<&str> = snmp.lines().filter(|l| l.starts_with("Tcp:")).collect();
    let [names, values] = tcp.as_slice() else {
        panic!("no Tcp lines in {snmp}")
    };
    let column = names
        .split_whitespace()
        .position(|name| name == "InCsumErrors")
        .unwrap();
    values
        .split_whitespace()
        .nth(column)
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn a_tickle_from_the_new_owner_resets_idle_clients_at_once() {
    if !common::root_or_skip("a_tickle_from_the_new_owner_resets_idle_clients_at_once") {
        return;
    }
    let lab = common::lab("tt", 2, 1);
    let vips = vips();
    common::hold(&lab, "node1", &vips, &vips, LEASE).unwrap();
    let listener = listen(&lab, "node1");
    let clients: Vec<(TcpStream, TcpStream)> = vips
        .iter()
        .map(|vip| connect(&lab, "client1", &listener, vip.addr()))
        .collect();

    // node1 sees both connections of its VIPs (the IPv4 one through a dual-stack socket).
    let addresses: Vec<IpAddr> = vips.iter().map(IpNet::addr).collect();
    let expected_by_client: Vec<Connection> =
        clients.iter().map(|(c, _)| connection_of(c)).collect();
    let mut expected = expected_by_client.clone();
    expected.sort();
    let known = netns::run_in(&namespace(&lab, "node1"), || {
        tickle::established(&addresses).unwrap()
    })
    .unwrap();
    assert_eq!(known, expected);
    let on_node2 = netns::run_in(&namespace(&lab, "node2"), || {
        tickle::established(&addresses).unwrap()
    })
    .unwrap();
    assert!(on_node2.is_empty(), "node2 has {on_node2:?}");

    // The VIPs move: node1 lets go, node2 takes them and announces them.
    common::hold(&lab, "node1", &[], &vips, LEASE).unwrap();
    common::hold(&lab, "node2", &vips, &vips, LEASE).unwrap();
    announce_until_learnt(&lab, &vips);

    // Without a tickle the idle clients notice nothing: not within the window, and not from a
    // tickle with a wrong checksum either (the client does check, so the real tickle's checksum
    // below is proven right by the kernel, not only by our own tests).
    let checksum_errors_before = tcp_checksum_errors(&lab, "client1");
    netns::run_in(&namespace(&lab, "node2"), || {
        for connection in &known {
            send_corrupted_tickle(connection);
        }
    })
    .unwrap();
    for ((client, _), connection) in clients.iter().zip(&expected_by_client) {
        assert_eq!(
            read_within(client, WINDOW),
            Err(ErrorKind::WouldBlock),
            "{connection:?} noticed the move without a valid tickle"
        );
    }

    assert_eq!(
        tcp_checksum_errors(&lab, "client1") - checksum_errors_before,
        known.len() as u64,
        "the corrupted tickles did not reach the client's checksum check"
    );

    // One tickle per connection from node2, from the replicated list, and the clients' sockets
    // are reset at once.
    let sent_at = Instant::now();
    netns::run_in(&namespace(&lab, "node2"), || {
        let tickler = Tickler::new().unwrap();
        for connection in &known {
            tickler.send_tickle(connection).unwrap();
        }
    })
    .unwrap();
    for ((client, _), connection) in clients.iter().zip(&expected_by_client) {
        assert_eq!(
            read_within(client, WINDOW),
            Err(ErrorKind::ConnectionReset),
            "{connection:?} was not reset by the tickle"
        );
        eprintln!(
            "{} reset {:?} after the tickles were sent",
            connection.server,
            sent_at.elapsed()
        );
    }
    // The reset came from node2's kernel: the client now reaches node2, where no one listens.
    let refused = netns::run_in(&namespace(&lab, "client1"), || {
        TcpStream::connect_timeout(
            &SocketAddr::new(vips[0].addr(), PORT),
            Duration::from_secs(2),
        )
        .map(drop)
        .map_err(|error| error.kind())
    })
    .unwrap();
    assert_eq!(refused, Err(ErrorKind::ConnectionRefused));
}

#[test]
fn releasing_a_vip_resets_its_connections_and_nothing_else() {
    if !common::root_or_skip("releasing_a_vip_resets_its_connections_and_nothing_else") {
        return;
    }
    let lab = common::lab("tr", 1, 1);
    let vips = vips();
    common::hold(&lab, "node1", &vips, &vips, LEASE).unwrap();
    let listener = listen(&lab, "node1");
    let own_address = lab.host("node1").unwrap().public_v4();
    let (own_client, mut own_server) = connect(&lab, "client1", &listener, own_address);
    let to_vips: Vec<(TcpStream, TcpStream)> = vips
        .iter()
        .map(|vip| connect(&lab, "client1", &listener, vip.addr()))
        .collect();

    let node1 = namespace(&lab, "node1");
    for ((client, _), vip) in to_vips.iter().zip(&vips) {
        let started = Instant::now();
        let reset =
            netns::run_in(&node1, || tickle::reset_connections(vip.addr()).unwrap()).unwrap();
        assert_eq!(reset, 1, "connections of {vip} reset");
        assert_eq!(
            read_within(client, WINDOW),
            Err(ErrorKind::ConnectionReset),
            "the client of {vip} was not told"
        );
        eprintln!(
            "client of {vip} reset {:?} after reset_connections was called",
            started.elapsed()
        );
    }
    // The server's own sockets learn it too.
    for (_, server) in &to_vips {
        assert_eq!(
            read_within(server, WINDOW),
            Err(ErrorKind::ConnectionAborted)
        );
    }
    let addresses: Vec<IpAddr> = vips.iter().map(IpNet::addr).collect();
    let left = netns::run_in(&node1, || tickle::established(&addresses).unwrap()).unwrap();
    assert!(left.is_empty(), "{left:?}");

    // The connection to the node's own address and the listener are untouched.
    assert_eq!(
        read_within(&own_client, Duration::from_millis(200)),
        Err(ErrorKind::WouldBlock)
    );
    own_server.write_all(b"still here").unwrap();
    assert_eq!(read_within(&own_client, WINDOW), Ok(10));
    let (again, _again_server) = connect(&lab, "client1", &listener, vips[0].addr());
    assert_eq!(
        netns::run_in(&node1, || tickle::established(&addresses).unwrap()).unwrap(),
        vec![connection_of(&again)]
    );

    // Resetting a VIP with no connections does nothing; then the address goes.
    let nothing = netns::run_in(&node1, || {
        tickle::reset_connections(vips[1].addr()).unwrap()
    })
    .unwrap();
    assert_eq!(nothing, 0);
    common::hold(&lab, "node1", &[], &vips, LEASE).unwrap();
}
