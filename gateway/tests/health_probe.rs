//! The node's NFS health probe (`vipd::health::RpcNullProbe`) against the real gateway: it
//! passes while the gateway answers, and names what is wrong when the version is not served,
//! when a listener accepts but never answers (workers stuck), and when nothing listens. Needs
//! root (the gateway opens files by handle).

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

mod common;

use std::net::TcpListener;
use std::time::Duration;

use cluster_config::Squash;
use common::{TestExport, TestServer, volume};
use vipd::health::{NFS_PROGRAM, Probe, RpcNullProbe};

const TIMEOUT: Duration = Duration::from_millis(300);

#[test]
fn the_rpc_null_probe_tells_a_serving_gateway_from_a_silent_or_absent_one() {
    if !common::root_or_skip(
        "the_rpc_null_probe_tells_a_serving_gateway_from_a_silent_or_absent_one",
    ) {
        return;
    }
    let volume = volume();
    common::make_dir(volume.path().join("data"));
    let server = TestServer::start(
        volume.path(),
        &[TestExport::rw("data", "data", Squash::Root)],
    );
    let probe = RpcNullProbe::new("nfs", server.address, NFS_PROGRAM, 3, TIMEOUT);
    assert_eq!(probe.name(), format!("nfs {}", server.address));
    // Several checks in a row: each is a fresh connection with its own xid.
    for _ in 0..3 {
        assert_eq!(probe.check(), Ok(()));
    }

    let error = RpcNullProbe::new("nfs", server.address, NFS_PROGRAM, 4, TIMEOUT)
        .check()
        .unwrap_err();
    assert!(error.contains("PROG_MISMATCH"), "{error}");
    let error = RpcNullProbe::new("nfs", server.address, 100_099, 1, TIMEOUT)
        .check()
        .unwrap_err();
    assert!(error.contains("PROG_UNAVAIL"), "{error}");

    // A listener that never accepts: the kernel completes the handshake, nothing answers.
    let silent = TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_address = silent.local_addr().unwrap();
    let error = RpcNullProbe::new("nfs", silent_address, NFS_PROGRAM, 3, TIMEOUT)
        .check()
        .unwrap_err();
    assert!(error.contains("no reply within 300ms"), "{error}");

    drop(silent);
    let error = RpcNullProbe::new("nfs", silent_address, NFS_PROGRAM, 3, TIMEOUT)
        .check()
        .unwrap_err();
    assert!(error.contains("refused"), "{error}");
    drop(server);
}
