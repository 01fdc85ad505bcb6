//! The DNS server's sockets, inside a private network namespace of the test thread: a wildcard
//! UDP socket answers queries sent to a second address from that address (IP_PKTINFO), for
//! IPv4 and IPv6; an explicit listen address that is not local yet binds (IP_FREEBIND) and
//! answers once the address arrives; TCP serves what UDP truncates; a new view is answered at
//! once; garbage leaves the server answering. Needs root (skipped otherwise).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports a failure"
)]

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use dns::server::Limits;
use dns::{DnsServer, View, Zone};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

const FILE: &str = "
cluster: {name: t, secret: 0123456789abcdef0123, data_dir: /var/lib/vipgate}
nodes:
  - {name: node1, cluster_address: 198.51.100.11, public_interfaces: [eth0], public_address: 192.0.2.11}
public_addresses:
  - address: 192.0.2.201/24
  - address: 192.0.2.202/24
  - address: 2001:db8::201/64
  - address: 2001:db8::202/64
  - address: 2001:db8::203/64
  - address: 2001:db8::204/64
  - address: 2001:db8::205/64
  - address: 2001:db8::206/64
  - address: 2001:db8::207/64
  - address: 2001:db8::208/64
  - address: 2001:db8::209/64
  - address: 2001:db8::20a/64
  - address: 2001:db8::20b/64
  - address: 2001:db8::20c/64
  - address: 2001:db8::20d/64
  - address: 2001:db8::20e/64
  - address: 2001:db8::20f/64
  - address: 2001:db8::210/64
  - address: 2001:db8::211/64
  - address: 2001:db8::212/64
volume: {path: /mnt/volume}
dns:
  zone: vipgate.test
  names:
    - {name: nfs, addresses: [192.0.2.201, 192.0.2.202]}
    - {name: many, addresses: all}
";

fn ip(command: &str) {
    let status = Command::new("ip")
        .args(command.split(' '))
        .status()
        .unwrap();
    assert!(status.success(), "ip {command}");
}

/// A DNS query for `name`/`qtype`, optionally with an OPT record of `edns` bytes.
fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut out = id.to_be_bytes().to_vec();
    out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for label in name.split('.') {
        out.push(label.len() as u8);
        out.extend_from_slice(label.as_bytes());
    }
    out.extend_from_slice(&[0]);
    out.extend_from_slice(&qtype.to_be_bytes());
    out.extend_from_slice(&[0, 1]);
    if let Some(size) = edns {
        out.extend_from_slice(&[0, 0, 41]);
        out.extend_from_slice(&size.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
    out
}

/// The response's (id, flags, answer count).
fn summary(response: &[u8]) -> (u16, u16, u16) {
    (
        u16::from_be_bytes([response[0], response[1]]),
        u16::from_be_bytes([response[2], response[3]]),
        u16::from_be_bytes([response[6], response[7]]),
    )
}

/// Sends `packet` from a socket connected to `to` (so only a reply from `to` is received).
fn ask_udp(from: IpAddr, to: SocketAddr, packet: &[u8]) -> Option<Vec<u8>> {
    let socket = UdpSocket::bind(SocketAddr::new(from, 0)).unwrap();
    socket.connect(to).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_millis(500)))
        .unwrap();
    socket.send(packet).unwrap();
    let mut buffer = [0u8; 65535];
    let length = socket.recv(&mut buffer).ok()?;
    Some(buffer[..length].to_vec())
}

fn ask_tcp(to: SocketAddr, packet: &[u8]) -> Vec<u8> {
    let mut stream = TcpStream::connect(to).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut frame = u16::try_from(packet.len()).unwrap().to_be_bytes().to_vec();
    frame.extend_from_slice(packet);
    stream.write_all(&frame).unwrap();
    let mut prefix = [0u8; 2];
    stream.read_exact(&mut prefix).unwrap();
    let mut response = vec![0u8; usize::from(u16::from_be_bytes(prefix))];
    stream.read_exact(&mut response).unwrap();
    response
}

#[test]
fn udp_and_tcp_in_a_private_namespace() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "this test needs root, and CI must run it as root"
        );
        eprintln!("SKIPPED udp_and_tcp_in_a_private_namespace: needs root");
        return;
    }
    // A thread of its own, so that only it (and what it starts) moves to the new namespace.
    std::thread::spawn(run_in_private_namespace).join().unwrap();
}

fn run_in_private_namespace() {
    nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNET).unwrap();
    ip("link set lo up");
    ip("-6 addr add fd00::53/128 dev lo nodad");

    let config = cluster_config::parse(FILE, "cluster.yaml").unwrap();
    let zone = Arc::new(Zone::new(config.dns.as_ref().unwrap(), &config.nodes));
    let everything: BTreeSet<IpAddr> = config
        .public_addresses
        .iter()
        .map(|vip| vip.address.addr())
        .collect();
    let (views, receiver) = watch::channel(Arc::new(View::new(zone.clone(), &everything, 1)));

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let stop = CancellationToken::new();
    let listen: Vec<SocketAddr> = ["0.0.0.0:0", "[::]:0", "192.0.2.77:0"]
        .iter()
        .map(|address| address.parse().unwrap())
        .collect();
    let server = runtime
        .block_on(async { DnsServer::bind(&listen, Limits::default()) })
        .unwrap();
    let bound = server.local_addresses();
    let (v4_port, v6_port, freebind_port) = (bound[0].port(), bound[1].port(), bound[2].port());
    let serving = runtime.spawn(server.serve(receiver, stop.clone()));

    let loopback: IpAddr = "127.0.0.1".parse().unwrap();
    let second: SocketAddr = SocketAddr::new("127.0.0.2".parse().unwrap(), v4_port);
    let nfs = query(1, "nfs.vipgate.test", 1, None);

    // The reply to a query sent to 127.0.0.2 comes from 127.0.0.2 (the connected socket would
    // drop one from 127.0.0.1), and lists both live VIPs, rotating.
    let first = ask_udp(loopback, second, &nfs).expect("no reply from 127.0.0.2");
    assert_eq!(summary(&first), (1, 0x8400, 2), "{first:?}");
    let again = ask_udp(loopback, second, &nfs).unwrap();
    assert_ne!(
        first[first.len() - 4..],
        again[again.len() - 4..],
        "the order rotates"
    );

    // IPv6: a query to fd00::53 sent from ::1 is answered from fd00::53.
    let v6 = SocketAddr::new("fd00::53".parse().unwrap(), v6_port);
    let reply = ask_udp("::1".parse().unwrap(), v6, &nfs).expect("no reply from fd00::53");
    assert_eq!(summary(&reply).2, 2);

    // A listen address that is not local yet was bound, and answers once it arrives.
    ip("addr add 192.0.2.77/32 dev lo");
    let arrived = SocketAddr::new("192.0.2.77".parse().unwrap(), freebind_port);
    assert!(ask_udp("192.0.2.77".parse().unwrap(), arrived, &nfs).is_some());

    // 18 AAAA records do not fit 512 bytes: TC over UDP, everything over TCP.
    let many = query(2, "many.vipgate.test", 28, None);
    let truncated = ask_udp(loopback, second, &many).unwrap();
    let (_, flags, answers) = summary(&truncated);
    assert!(flags & 0x0200 != 0 && answers == 0, "{truncated:?}");
    let whole = ask_tcp(SocketAddr::new(loopback, v4_port), &many);
    let (_, flags, answers) = summary(&whole);
    assert!(flags & 0x0200 == 0 && answers == 18, "{flags:x} {answers}");

    // Garbage gets FORMERR or nothing, and the server keeps answering.
    // The senders stay open: a reply to the garbage (a FORMERR carries the query's id) must not
    // reach a later `ask_udp` socket that the kernel gave the same port.
    let mut senders = Vec::new();
    for garbage in [&b""[..], b"\x00", &[0xff; 12], &[0x41; 600], &nfs[..20]] {
        let socket = UdpSocket::bind("127.0.0.1:0").unwrap();
        socket.send_to(garbage, second).unwrap();
        senders.push(socket);
    }
    let mut tcp = TcpStream::connect(SocketAddr::new(loopback, v4_port)).unwrap();
    tcp.write_all(&[0xff, 0xff, 1, 2, 3]).unwrap();
    drop(tcp);

    // A new view is answered at once: one VIP left.
    let one: BTreeSet<IpAddr> = ["192.0.2.202".parse().unwrap()].into();
    views.send_replace(Arc::new(View::new(zone, &one, 2)));
    let reply = ask_udp(loopback, second, &nfs).expect("no reply after the garbage");
    assert_eq!(summary(&reply).2, 1);
    assert_eq!(reply[reply.len() - 4..], [192, 0, 2, 202]);
    drop(senders);

    stop.cancel();
    runtime.block_on(serving).unwrap();
}
