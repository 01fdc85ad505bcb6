//! The rpcbind client over real sockets against a small rpcbind stand-in (an AF_UNIX socket in a
//! temporary directory and a loopback TCP port) that keeps a table with rpcbind's SET/UNSET
//! rules: stale entries are replaced, the local socket is tried before TCP, TCP connects from a
//! reserved port, a version-2-only portmap gets PMAPPROC calls, and refusals, non-rpcbind peers
//! and garbage replies come back as the right errors. The real rpcbind is exercised by the
//! lab test `tests/rpcbind.rs` at the workspace root.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener};
use std::os::unix::net::UnixListener;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use gateway::record::{DEFAULT_MAX_FRAGMENT, RecordDecoder, encode_record};
use gateway::rpc::{
    AcceptStatus, Call, MOUNT_PROGRAM, NFS_PROGRAM, OpaqueAuth, ReplyBody, encode_reply,
};
use gateway::rpcbind_client::{
    Dialect, Endpoint, Entry, MAX_STRING, RpcbindClient, RpcbindError, registrations,
};
use gateway::xdr::{Decoder, Encoder};

/// How the stand-in behaves.
#[derive(Clone, Copy)]
enum Behaviour {
    /// rpcbind versions 3 and 4 (and 2), with rpcbind's rules.
    Rpcbind,
    /// portmap version 2 only: NULL to version 4 answers PROG_MISMATCH 2..2.
    PortmapOnly,
    /// Answers SET with FALSE.
    RefuseSet,
    /// Answers every call with PROG_UNAVAIL: not rpcbind.
    NotRpcbind,
    /// Answers DUMP with bytes that do not decode.
    GarbageDump,
}

#[derive(Default)]
struct Shared {
    table: Vec<Entry>,
    /// (peer port, version, procedure) of every call over TCP.
    tcp_calls: Vec<(u16, u32, u32)>,
    local_calls: usize,
}

struct Stand {
    shared: Arc<Mutex<Shared>>,
    socket: PathBuf,
    tcp: SocketAddr,
    _directory: tempfile::TempDir,
}

impl Stand {
    fn start(behaviour: Behaviour, local: bool, table: Vec<Entry>) -> Stand {
        let directory = tempfile::tempdir().unwrap();
        let socket = directory.path().join("rpcbind.sock");
        let shared = Arc::new(Mutex::new(Shared {
            table,
            ..Shared::default()
        }));
        if local {
            let listener = UnixListener::bind(&socket).unwrap();
            let shared = shared.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let shared = shared.clone();
                    std::thread::spawn(move || serve(stream.unwrap(), None, behaviour, &shared));
                }
            });
        }
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let tcp = listener.local_addr().unwrap();
        {
            let shared = shared.clone();
            std::thread::spawn(move || {
                for stream in listener.incoming() {
                    let stream = stream.unwrap();
                    let port = stream.peer_addr().unwrap().port();
                    let shared = shared.clone();
                    std::thread::spawn(move || serve(stream, Some(port), behaviour, &shared));
                }
            });
        }
        Stand {
            shared,
            socket,
            tcp,
            _directory: directory,
        }
    }

    fn client(&self) -> RpcbindClient {
        RpcbindClient {
            endpoints: vec![
                Endpoint::Local(self.socket.clone()),
                Endpoint::Tcp(self.tcp),
            ],
            timeout: Duration::from_secs(5),
        }
    }

    fn table(&self) -> Vec<Entry> {
        let mut table = self.shared.lock().unwrap().table.clone();
        table.sort_by_key(|entry| (entry.program, entry.version, entry.netid.clone()));
        table
    }
}

fn entry(program: u32, version: u32, netid: &str, address: &str, owner: &str) -> Entry {
    Entry {
        program,
        version,
        netid: netid.to_owned(),
        address: address.to_owned(),
        owner: owner.to_owned(),
    }
}

fn serve(
    mut stream: impl Read + Write,
    tcp_port: Option<u16>,
    behaviour: Behaviour,
    shared: &Mutex<Shared>,
) {
    let mut decoder = RecordDecoder::new(64 * 1024);
    let mut buffer = [0u8; 4096];
    loop {
        let Ok(read) = stream.read(&mut buffer) else {
            return;
        };
        if read == 0 {
            return;
        }
        let mut input = &buffer[..read];
        while let Ok(Some(record)) = decoder.decode(&mut input) {
            let reply = answer(&record, tcp_port, behaviour, shared);
            let mut framed = Vec::new();
            encode_record(&reply, DEFAULT_MAX_FRAGMENT, &mut framed);
            if stream.write_all(&framed).is_err() {
                return;
            }
        }
    }
}

fn answer(
    record: &[u8],
    tcp_port: Option<u16>,
    behaviour: Behaviour,
    shared: &Mutex<Shared>,
) -> Vec<u8> {
    let decoder = &mut Decoder::new(record);
    let call = Call::decode(decoder).unwrap();
    let mut shared = shared.lock().unwrap();
    match tcp_port {
        Some(port) => shared.tcp_calls.push((port, call.version, call.procedure)),
        None => shared.local_calls += 1,
    }
    let accepted = |status| ReplyBody::Accepted {
        verifier: OpaqueAuth::none(),
        status,
    };
    let versions_served = match behaviour {
        Behaviour::PortmapOnly => 2..=2,
        _ => 2..=4,
    };
    if matches!(behaviour, Behaviour::NotRpcbind) {
        return encode_reply(call.xid, &accepted(AcceptStatus::ProgUnavail), &[]);
    }
    if !versions_served.contains(&call.version) {
        let status = AcceptStatus::ProgMismatch {
            low: *versions_served.start(),
            high: *versions_served.end(),
        };
        return encode_reply(call.xid, &accepted(status), &[]);
    }
    let mut results = Vec::new();
    let encoder = &mut Encoder::new(&mut results);
    let pmap = call.version == 2;
    match call.procedure {
        0 => {}
        1 | 2 if pmap => {
            let program = decoder.u32().unwrap();
            let version = decoder.u32().unwrap();
            let protocol = decoder.u32().unwrap();
            let port = decoder.u32().unwrap();
            let answer = if call.procedure == 1 {
                let netid = if protocol == 6 { "tcp" } else { "udp" };
                let address = format!("0.0.0.0.{}.{}", port >> 8, port & 0xff);
                set(
                    &mut shared.table,
                    entry(program, version, netid, &address, "superuser"),
                )
            } else {
                shared
                    .table
                    .retain(|entry| !(entry.program == program && entry.version == version));
                true
            };
            encoder.u32(u32::from(answer));
        }
        1 | 2 => {
            let program = decoder.u32().unwrap();
            let version = decoder.u32().unwrap();
            let netid = decoder.string(MAX_STRING).unwrap().to_owned();
            let address = decoder.string(MAX_STRING).unwrap().to_owned();
            let _owner = decoder.string(MAX_STRING).unwrap();
            let answer = if call.procedure == 1 {
                !matches!(behaviour, Behaviour::RefuseSet)
                    && set(
                        &mut shared.table,
                        entry(program, version, &netid, &address, "superuser"),
                    )
            } else {
                shared.table.retain(|entry| {
                    !(entry.program == program
                        && entry.version == version
                        && (netid.is_empty() || entry.netid == netid))
                });
                true
            };
            encoder.bool(answer);
        }
        4 if matches!(behaviour, Behaviour::GarbageDump) => encoder.u32(7),
        4 => {
            for entry in &shared.table {
                if pmap {
                    let port = entry.address.rsplitn(3, '.').take(2).collect::<Vec<_>>();
                    let port =
                        port[1].parse::<u32>().unwrap() * 256 + port[0].parse::<u32>().unwrap();
                    let protocol = if entry.netid == "tcp" { 6 } else { 17 };
                    encoder.bool(true);
                    encoder.u32(entry.program);
                    encoder.u32(entry.version);
                    encoder.u32(protocol);
                    encoder.u32(port);
                } else {
                    encoder.bool(true);
                    encoder.u32(entry.program);
                    encoder.u32(entry.version);
                    encoder.string(&entry.netid, MAX_STRING).unwrap();
                    encoder.string(&entry.address, MAX_STRING).unwrap();
                    encoder.string(&entry.owner, MAX_STRING).unwrap();
                }
            }
            encoder.bool(false);
        }
        _ => return encode_reply(call.xid, &accepted(AcceptStatus::ProcUnavail), &[]),
    }
    encode_reply(call.xid, &ReplyBody::success(), &results)
}

/// rpcbind's `map_set`: TRUE when added or already there at the same address, FALSE when the
/// (program, version, netid) is registered elsewhere.
fn set(table: &mut Vec<Entry>, new: Entry) -> bool {
    if let Some(old) = table.iter().find(|old| {
        old.program == new.program && old.version == new.version && old.netid == new.netid
    }) {
        return old.address == new.address;
    }
    table.push(new);
    true
}

fn ours() -> Vec<Entry> {
    vec![
        entry(NFS_PROGRAM, 3, "tcp", "0.0.0.0.8.1", "superuser"),
        entry(NFS_PROGRAM, 3, "tcp6", "::.8.1", "superuser"),
        entry(MOUNT_PROGRAM, 3, "tcp", "0.0.0.0.8.1", "superuser"),
        entry(MOUNT_PROGRAM, 3, "tcp6", "::.8.1", "superuser"),
    ]
}

fn sorted(mut table: Vec<Entry>) -> Vec<Entry> {
    table.sort_by_key(|entry| (entry.program, entry.version, entry.netid.clone()));
    table
}

#[test]
fn reconcile_replaces_stale_entries_over_the_local_socket() {
    let nlm = entry(100_021, 4, "tcp", "0.0.0.0.175.3", "unknown");
    let stale_mount = entry(MOUNT_PROGRAM, 3, "tcp", "0.0.0.0.78.80", "superuser");
    let knfsd_v4 = entry(NFS_PROGRAM, 4, "tcp", "0.0.0.0.8.1", "superuser");
    let stand = Stand::start(
        Behaviour::Rpcbind,
        true,
        vec![nlm.clone(), stale_mount.clone(), knfsd_v4.clone()],
    );
    let mut session = stand.client().connect().unwrap();
    assert_eq!(session.endpoint(), &Endpoint::Local(stand.socket.clone()));
    assert_eq!(session.dialect(), Dialect::Rpcbind(4));
    let plan = session.reconcile(&registrations(2049, false)).unwrap();
    assert_eq!(plan.unset, vec![stale_mount, knfsd_v4]);
    assert_eq!(plan.set.len(), 4);
    assert_eq!(stand.table(), sorted([ours(), vec![nlm.clone()]].concat()));

    // A second pass changes nothing; unregistering leaves only the other program.
    assert!(
        session
            .reconcile(&registrations(2049, false))
            .unwrap()
            .is_empty()
    );
    session.unregister(&registrations(2049, false)).unwrap();
    assert_eq!(stand.table(), vec![nlm]);
    let shared = stand.shared.lock().unwrap();
    assert!(
        shared.tcp_calls.is_empty(),
        "TCP was used: {:?}",
        shared.tcp_calls
    );
}

#[test]
fn without_the_local_socket_tcp_from_a_reserved_port() {
    let stand = Stand::start(Behaviour::Rpcbind, false, vec![]);
    let mut session = stand.client().connect().unwrap();
    assert_eq!(session.endpoint(), &Endpoint::Tcp(stand.tcp));
    session.reconcile(&registrations(2049, false)).unwrap();
    assert_eq!(stand.table(), sorted(ours()));
    let shared = stand.shared.lock().unwrap();
    assert!(!shared.tcp_calls.is_empty());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        for (port, _, _) in &shared.tcp_calls {
            assert!(*port < 1024, "source port {port} is not reserved");
        }
    }
}

#[test]
fn a_portmap_gets_version_2_calls_for_tcp() {
    let old = entry(NFS_PROGRAM, 3, "udp", "0.0.0.0.8.1", "superuser");
    let stand = Stand::start(Behaviour::PortmapOnly, false, vec![old]);
    let mut session = stand.client().connect().unwrap();
    assert_eq!(session.dialect(), Dialect::Portmap);
    session.reconcile(&registrations(2049, false)).unwrap();
    assert_eq!(
        stand.table(),
        vec![
            entry(NFS_PROGRAM, 3, "tcp", "0.0.0.0.8.1", "superuser"),
            entry(MOUNT_PROGRAM, 3, "tcp", "0.0.0.0.8.1", "superuser"),
        ]
    );
    let shared = stand.shared.lock().unwrap();
    // After the NULL to version 4, every call is version 2.
    assert!(
        shared.tcp_calls[1..]
            .iter()
            .all(|(_, version, _)| *version == 2)
    );
}

#[test]
fn errors_name_what_failed() {
    let stand = Stand::start(Behaviour::RefuseSet, true, vec![]);
    let error = stand
        .client()
        .connect()
        .unwrap()
        .reconcile(&registrations(2049, false))
        .unwrap_err();
    assert!(
        matches!(
            error,
            RpcbindError::Refused {
                operation: "SET",
                ..
            }
        ),
        "{error}"
    );
    assert!(
        error
            .to_string()
            .contains("program 100005 version 3 on tcp"),
        "{error}"
    );

    let stand = Stand::start(Behaviour::NotRpcbind, true, vec![]);
    let error = stand.client().connect().unwrap_err();
    assert!(
        matches!(error, RpcbindError::NotAnswering { .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains("does not answer as rpcbind"),
        "{error}"
    );

    let stand = Stand::start(Behaviour::GarbageDump, true, vec![]);
    let error = stand.client().connect().unwrap().dump().unwrap_err();
    assert!(
        matches!(
            error,
            RpcbindError::BadReply {
                operation: "DUMP",
                ..
            }
        ),
        "{error}"
    );

    // Nothing listening anywhere.
    let directory = tempfile::tempdir().unwrap();
    let closed = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let client = RpcbindClient {
        endpoints: vec![
            Endpoint::Local(directory.path().join("missing.sock")),
            Endpoint::Tcp(closed),
        ],
        timeout: Duration::from_secs(2),
    };
    let error = client.connect().unwrap_err();
    let text = error.to_string();
    assert!(
        text.contains("missing.sock") && text.contains(&closed.to_string()),
        "{text}"
    );
}

proptest::proptest! {
    /// Whatever rpcbind sends back, decoding ends in a value or an error, never a panic.
    #[test]
    fn reply_decoders_never_panic(bytes in proptest::collection::vec(proptest::num::u8::ANY, 0..600), xid: u32) {
        use gateway::rpcbind_client::{decode_answer, decode_pmap_dump, decode_results, decode_rpcb_dump};
        let _ = decode_results(&bytes, xid);
        let _ = decode_answer(&bytes);
        let _ = decode_rpcb_dump(&bytes);
        let _ = decode_pmap_dump(&bytes);
    }
}
