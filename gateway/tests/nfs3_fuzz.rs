//! The stable-toolchain stand-in for a `cargo fuzz` target (which needs nightly): property tests
//! that push arbitrary and damaged calls through the whole decode path of a real gateway —
//! record classification, dispatch, argument decoding and the procedure itself, on a real
//! export — and check that every call gets a well-formed reply with its own xid, of bounded
//! size, and that nothing outside the export changes. Needs root, like the server.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::sync::Arc;

use cluster_config::Squash;
use common::{TestExport, TestServer};
use gateway::dispatch::{Decision, dispatch};
use gateway::record::DEFAULT_MAX_RECORD;
use gateway::rpc::{
    AuthSys, Call, Classification, Credential, MOUNT_PROGRAM, NFS_PROGRAM, OpaqueAuth,
    PORTMAP_PROGRAM, classify, decode_reply,
};
use gateway::service::{Connection, PROGRAMS, Service};
use gateway::xdr::Encoder;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::TestRunner;

struct Fixture {
    service: Arc<Service>,
    /// Handles of the export root, a directory and a file in it.
    handles: Vec<Vec<u8>>,
    outside: std::path::PathBuf,
    _server: TestServer,
    _volume: tempfile::TempDir,
}

impl Fixture {
    fn new() -> Fixture {
        let volume = common::volume();
        let data = common::make_dir(volume.path().join("data"));
        common::make_dir(data.join("dir"));
        std::fs::write(data.join("file"), b"some data").unwrap();
        let outside = common::make_dir(volume.path().join("outside"));
        std::fs::write(outside.join("untouched"), b"x").unwrap();
        let server = TestServer::start(
            volume.path(),
            &[TestExport::rw("data", "data", Squash::None)],
        );
        let root_handle = server.service.exports()[0].root_handle.clone();
        let mut nfs = server.nfs(common::root());
        let handles = vec![
            nfs.lookup(&root_handle, b"dir").unwrap().0,
            nfs.lookup(&root_handle, b"file").unwrap().0,
            root_handle,
        ];
        Fixture {
            service: server.service.clone(),
            handles,
            outside,
            _server: server,
            _volume: volume,
        }
    }

    fn outside_untouched(&self) -> bool {
        std::fs::read(self.outside.join("untouched"))
            .ok()
            .as_deref()
            == Some(&b"x"[..])
            && std::fs::read_dir(&self.outside).map(Iterator::count).ok() == Some(1)
    }
}

/// A call header for `program`/`procedure` followed by `args`.
fn record(program: u32, version: u32, procedure: u32, uid: u32, args: &[u8]) -> Vec<u8> {
    let mut record = Vec::new();
    Call {
        xid: 0x0bad_cafe,
        program,
        version,
        procedure,
        credential: Credential::Sys(AuthSys {
            stamp: 0,
            machinename: b"fuzz".to_vec(),
            uid,
            gid: uid,
            gids: vec![],
        }),
        verifier: OpaqueAuth::none(),
    }
    .encode(&mut Encoder::new(&mut record))
    .unwrap();
    record.extend_from_slice(args);
    record
}

/// Runs one record through the serving path as the connection task does.
fn serve_record(fixture: &Fixture, record: &[u8]) {
    let connection = Connection::new(
        "127.0.0.1:900".parse().unwrap(),
        "127.0.0.1:2049".parse().unwrap(),
    );
    let reply = match classify(record) {
        Classification::Drop(_) => return,
        Classification::Reject { reply, .. } => gateway::service::framed_reply(&reply),
        Classification::Call { call, args_offset } => match dispatch(PROGRAMS, &call) {
            Decision::Reject(body) => gateway::service::framed_reply(&gateway::rpc::ReplyHeader {
                xid: call.xid,
                body,
            }),
            Decision::Dispatch(_) => {
                fixture
                    .service
                    .handle(&connection, &call, &record[args_offset..])
            }
        },
    };
    assert!(
        reply.len() <= DEFAULT_MAX_RECORD,
        "reply of {} bytes",
        reply.len()
    );
    let mark = u32::from_be_bytes(reply[..4].try_into().unwrap());
    assert_eq!(mark as usize & 0x7fff_ffff, reply.len() - 4, "record mark");
    let (header, _) = decode_reply(&reply[4..]).unwrap();
    assert_eq!(header.xid, 0x0bad_cafe);
}

/// XDR-ish words: mostly small numbers, so that lengths, enums and booleans in the arguments
/// are often plausible and decoding gets deep into the procedures.
fn words() -> impl Strategy<Value = Vec<u8>> {
    vec(
        prop_oneof![
            // Booleans and small enums (sattr3 is six of them in a row).
            8 => 0..2u32,
            2 => 0..8u32,
            2 => 0..300u32,
            // Name bytes: "..", "file".
            1 => Just(0x2e2e_0000),
            1 => Just(0x6669_6c65),
            1 => any::<u32>(),
        ],
        0..40,
    )
    .prop_map(|words| words.iter().flat_map(|word| word.to_be_bytes()).collect())
}

/// Arguments that begin with a real handle of the export (so the procedure itself runs) or a
/// damaged one, followed by XDR-ish words; or anything at all.
fn arguments(handles: Vec<Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let handle = (
        prop::sample::select(handles),
        any::<bool>(),
        any::<prop::sample::Index>(),
    )
        .prop_map(|(mut handle, damage, byte)| {
            if damage {
                let index = byte.index(handle.len());
                handle[index] ^= 0xff;
            }
            handle
        });
    prop_oneof![
        1 => vec(any::<u8>(), 0..300),
        1 => words(),
        8 => (handle, words()).prop_map(|(handle, tail)| {
            let mut args = Vec::new();
            Encoder::new(&mut args).opaque(&handle, 64).unwrap();
            args.extend(tail);
            args
        }),
    ]
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(ProptestConfig {
        cases,
        ..ProptestConfig::default()
    })
}

#[test]
fn any_call_gets_a_well_formed_reply() {
    if !common::root_or_skip("any_call_gets_a_well_formed_reply") {
        return;
    }
    let fixture = Fixture::new();
    let calls = (
        prop_oneof![
            8 => Just((NFS_PROGRAM, 3u32)),
            1 => Just((MOUNT_PROGRAM, 3)),
            1 => (Just(PORTMAP_PROGRAM), 2..=4u32),
            1 => (any::<u32>(), any::<u32>()),
        ],
        0..24u32,
        prop_oneof![Just(0u32), Just(1000)],
        arguments(fixture.handles.clone()),
    );
    runner(3000)
        .run(&calls, |((program, version), procedure, uid, args)| {
            serve_record(&fixture, &record(program, version, procedure, uid, &args));
            prop_assert!(
                fixture.outside_untouched(),
                "something outside the export changed"
            );
            Ok(())
        })
        .unwrap();
}

#[test]
fn arbitrary_records_never_break_the_server() {
    if !common::root_or_skip("arbitrary_records_never_break_the_server") {
        return;
    }
    let fixture = Fixture::new();
    runner(1000)
        .run(&vec(any::<u8>(), 0..400), |bytes| {
            serve_record(&fixture, &bytes);
            Ok(())
        })
        .unwrap();
}
