//! The duplicate request cache through the real serving loop: a REMOVE, RENAME or MKDIR sent
//! again with the same xid — on the same connection, or after a reconnection from the same
//! source port, as the Linux client does — gets the first reply, not a second execution's
//! NOENT or EXIST; a new xid runs again. Needs root (the gateway opens handles as root).

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::net::SocketAddr;

use cluster_config::Squash;
use common::{Args, RpcClient, TestExport, TestServer};
use gateway::rpc::{Call, NFS_PROGRAM, OpaqueAuth};
use gateway::xdr::{Decoder, Encoder};

const REMOVE: u32 = 12;
const RENAME: u32 = 14;
const MKDIR: u32 = 9;

/// Sends NFSv3 `procedure` with `xid` and returns the reply record, whole.
fn call_with_xid(rpc: &mut RpcClient, xid: u32, procedure: u32, args: &Args) -> Vec<u8> {
    let mut message = Vec::new();
    Call {
        xid,
        program: NFS_PROGRAM,
        version: 3,
        procedure,
        credential: common::root(),
        verifier: OpaqueAuth::none(),
    }
    .encode(&mut Encoder::new(&mut message))
    .unwrap();
    message.extend_from_slice(&args.0);
    rpc.send_raw(&message);
    rpc.receive_record()
}

/// The NFS status of a reply record (the first word after an accepted reply's header).
fn status(record: &[u8]) -> u32 {
    let (_, offset) = gateway::rpc::decode_reply(record).unwrap();
    Decoder::new(&record[offset..]).u32().unwrap()
}

/// A client connected from `port` on loopback; closing it resets the connection (no
/// TIME_WAIT), so the next one can use the same port, as a reconnecting Linux client does.
fn client_from(port: u16, server: SocketAddr) -> RpcClient {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.set_linger(Some(std::time::Duration::ZERO)).unwrap();
    socket
        .bind(&SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    socket.connect(&server.into()).unwrap();
    RpcClient::from_stream(socket.into())
}

#[test]
fn calls_sent_again_get_the_first_reply() {
    if !common::root_or_skip("calls_sent_again_get_the_first_reply") {
        return;
    }
    let volume = common::volume();
    let data = common::make_dir(volume.path().join("data"));
    let server = TestServer::start(
        volume.path(),
        &[TestExport::rw("data", "data", Squash::None)],
    );
    let mut nfs = server.nfs(common::root());
    let root = nfs.mnt("/data").unwrap();
    nfs.create(&root, b"doomed", 0, 0o644).unwrap();
    nfs.create(&root, b"moving", 0, 0o644).unwrap();

    // The same connection: REMOVE twice with one xid answers OK twice, with the same bytes.
    let rpc = &mut nfs.rpc;
    let remove = Args::new().opaque(&root).opaque(b"doomed");
    let first = call_with_xid(rpc, 0x5eed_0001, REMOVE, &remove);
    assert_eq!(status(&first), 0);
    assert!(!data.join("doomed").exists());
    let again = call_with_xid(rpc, 0x5eed_0001, REMOVE, &remove);
    assert_eq!(again, first, "a REMOVE sent again ran again");
    // A new xid is a new call: the file is gone, so NOENT (2).
    assert_eq!(status(&call_with_xid(rpc, 0x5eed_0002, REMOVE, &remove)), 2);

    // A reconnection from the same source port: RENAME and MKDIR sent again answer as before.
    let port = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    let rename = Args::new()
        .opaque(&root)
        .opaque(b"moving")
        .opaque(&root)
        .opaque(b"moved");
    let mkdir = Args::new().opaque(&root).opaque(b"made").sattr_mode(0o755);
    let (first_rename, first_mkdir) = {
        let mut rpc = client_from(port, server.address);
        (
            call_with_xid(&mut rpc, 0x5eed_0003, RENAME, &rename),
            call_with_xid(&mut rpc, 0x5eed_0004, MKDIR, &mkdir),
        )
    };
    assert_eq!((status(&first_rename), status(&first_mkdir)), (0, 0));
    let mut rpc = client_from(port, server.address);
    assert_eq!(
        call_with_xid(&mut rpc, 0x5eed_0003, RENAME, &rename),
        first_rename,
        "a RENAME sent again after a reconnection ran again"
    );
    assert_eq!(
        call_with_xid(&mut rpc, 0x5eed_0004, MKDIR, &mkdir),
        first_mkdir,
        "a MKDIR sent again after a reconnection ran again"
    );
    assert!(data.join("moved").exists() && data.join("made").is_dir());

    // From another port the same xid is another client's call: it runs (and finds nothing).
    let mut other = server.client();
    assert_eq!(
        status(&call_with_xid(&mut other, 0x5eed_0003, RENAME, &rename)),
        2
    );
}
