//! portmap and MOUNT over UDP (`gateway::udp`): the datagram answers of the serving path, and
//! a real exchange through a bound socket on loopback. NFS over UDP gets PROG_UNAVAIL. Needs
//! root (the service opens its export's handles).

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use gateway::rpc::{
    AcceptStatus, Call, Credential, MOUNT_PROGRAM, NFS_PROGRAM, OpaqueAuth, PORTMAP_PROGRAM,
    ReplyBody, decode_reply,
};
use gateway::xdr::Encoder;

fn null_call(xid: u32, program: u32, version: u32) -> Vec<u8> {
    let mut message = Vec::new();
    Call {
        xid,
        program,
        version,
        procedure: 0,
        credential: Credential::None,
        verifier: OpaqueAuth::none(),
    }
    .encode(&mut Encoder::new(&mut message))
    .unwrap();
    message
}

#[test]
fn portmap_and_mount_answer_datagrams_and_nfs_is_unavailable() {
    if !common::root_or_skip("portmap_and_mount_answer_datagrams_and_nfs_is_unavailable") {
        return;
    }
    let (_volume, server) = common::data_server();
    let peer: SocketAddr = "192.0.2.101:700".parse().unwrap();
    let local: SocketAddr = "192.0.2.201:2049".parse().unwrap();
    let answer = |datagram: &[u8]| gateway::udp::answer(&server.service, peer, local, datagram);

    for (xid, program, version, expected) in [
        (1, PORTMAP_PROGRAM, 2, ReplyBody::success()),
        (2, MOUNT_PROGRAM, 3, ReplyBody::success()),
        (
            3,
            NFS_PROGRAM,
            3,
            ReplyBody::accepted(AcceptStatus::ProgUnavail),
        ),
    ] {
        let reply = answer(&null_call(xid, program, version)).unwrap();
        // A datagram carries the message itself: no record mark.
        let (header, _) = decode_reply(&reply).unwrap();
        assert_eq!(
            (header.xid, header.body),
            (xid, expected),
            "program {program}"
        );
    }
    // MOUNT v1 is answered PROG_MISMATCH, as over TCP.
    let reply = answer(&null_call(4, MOUNT_PROGRAM, 1)).unwrap();
    let (header, _) = decode_reply(&reply).unwrap();
    assert!(
        matches!(header.body, ReplyBody::Accepted { .. }) && header.body != ReplyBody::success(),
        "{:?}",
        header.body
    );
    // Listings, whose replies are much larger than the call, stay on TCP: a forged source
    // address must not turn the node into a reflector.
    for (program, version, procedure) in [
        (PORTMAP_PROGRAM, 2, 4u32),
        (PORTMAP_PROGRAM, 4, 4),
        (MOUNT_PROGRAM, 3, 2),
        (MOUNT_PROGRAM, 3, 5),
    ] {
        let mut call = null_call(5, program, version);
        call[20..24].copy_from_slice(&procedure.to_be_bytes());
        let reply = answer(&call).unwrap();
        let (header, _) = decode_reply(&reply).unwrap();
        assert_eq!(
            header.body,
            ReplyBody::accepted(AcceptStatus::ProcUnavail),
            "{program} v{version} procedure {procedure}"
        );
        assert!(reply.len() <= call.len(), "{program} {procedure}");
    }
    // GETPORT is answered, no larger than the call.
    let mut getport = null_call(6, PORTMAP_PROGRAM, 2);
    getport[20..24].copy_from_slice(&3u32.to_be_bytes());
    for word in [MOUNT_PROGRAM, 3, 17, 0] {
        getport.extend_from_slice(&word.to_be_bytes());
    }
    let reply = answer(&getport).unwrap();
    let (header, _) = decode_reply(&reply).unwrap();
    assert_eq!(header.body, ReplyBody::success());
    assert!(reply.len() <= getport.len());
    // Garbage and replies are dropped.
    assert_eq!(answer(b""), None);
    assert_eq!(answer(&[0xff; 3]), None);

    // Through real sockets on loopback: the reply comes back to the caller.
    let sockets = gateway::udp::bind_wildcard(0).unwrap();
    let port = sockets[0].local_addr().unwrap().port();
    let udp = gateway::udp::UdpServer::spawn(server.service.clone(), sockets).unwrap();
    let client = UdpSocket::bind("127.0.0.1:0").unwrap();
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    client
        .send_to(&null_call(77, MOUNT_PROGRAM, 3), ("127.0.0.1", port))
        .unwrap();
    let mut buffer = [0u8; 512];
    let (length, from) = client.recv_from(&mut buffer).unwrap();
    assert_eq!(from, SocketAddr::from(([127, 0, 0, 1], port)));
    let (header, _) = decode_reply(&buffer[..length]).unwrap();
    assert_eq!((header.xid, header.body), (77, ReplyBody::success()));
    udp.stop(Duration::from_secs(5));
}
