//! Stable-toolchain checks of the fuzzing setup itself (plain `cargo test` here, no libFuzzer):
//! the seeds decode as intended (every procedure seed reaches its procedure with a handle that
//! passes the handle check), every committed corpus file passes the targets' checks, and the
//! allocation bound really aborts the process.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is how a test reports a failure"
)]

use std::path::Path;

use gateway::dispatch::{Arguments, Decoded, decode_record};
use gateway::handle::FileHandle;
use gateway::rpc::AcceptStatus;
use gateway::service::PROGRAMS;
use gateway_fuzz::serve::{RESET_EVERY, check_served};
use gateway_fuzz::{bounded, check_record, check_stream, handle_key, nfs3_handles, seeds};

/// Procedures the gateway's tables list but do not answer (they get PROC_UNAVAIL).
const UNANSWERED: &[&str] = &[
    "callit",
    "uaddr2taddr",
    "taddr2uaddr",
    "indirect",
    "getaddrlist",
    "getstat",
];

#[test]
fn seeds_decode_as_intended() {
    let seeds = seeds::records();
    let mut calls = 0;
    for (name, record) in &seeds {
        let decoded = decode_record(PROGRAMS, record);
        let procedure_seed = ["nfs3-", "mount-", "portmap2-", "rpcbind"]
            .iter()
            .any(|prefix| name.starts_with(prefix))
            || name.starts_with("auth-none-");
        if UNANSWERED.iter().any(|suffix| name.ends_with(suffix)) {
            let Decoded::BadArguments { reply, .. } = &decoded else {
                panic!("{name}: {decoded:?}");
            };
            assert_eq!(
                reply.body,
                gateway::rpc::ReplyBody::accepted(AcceptStatus::ProcUnavail),
                "{name}"
            );
        } else if procedure_seed {
            let Decoded::Call { arguments, .. } = &decoded else {
                panic!("{name} does not decode to a call: {decoded:?}");
            };
            calls += 1;
            if let Arguments::Nfs3(args) = arguments {
                for handle in nfs3_handles(args) {
                    assert!(FileHandle::decode(handle, &handle_key()).is_ok(), "{name}");
                }
            }
        } else {
            assert!(matches!(decoded, Decoded::Reject(_)), "{name}: {decoded:?}");
        }
        check_record(record);
    }
    // 22 NFSv3 procedures (4 extra variants), 6 MOUNT, 5 portmap, 6 + 7 rpcbind, 2 AUTH_NONE.
    assert_eq!(calls, 26 + 6 + 5 + 6 + 7 + 2);
}

/// The serve seeds reach their procedures on the real export: a GETATTR of the marked file
/// succeeds (status NFS3_OK), so markers really become handles. Runs past a reset, which checks
/// that nothing beside the export changed. Needs root; skipped otherwise.
#[test]
fn serve_seeds_run_against_a_real_export() {
    // SAFETY: geteuid has no arguments and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: serve_seeds_run_against_a_real_export needs root");
        return;
    }
    let seeds = seeds::serve_records();
    for round in 0..=RESET_EVERY / seeds.len() {
        for (name, record) in &seeds {
            if round == 0 {
                eprintln!("{name}");
            }
            check_served(record);
        }
    }
    let (_, getattr) = seeds
        .iter()
        .find(|(name, _)| name.ends_with("getattr"))
        .unwrap();
    assert_eq!(
        gateway_fuzz::serve::reply_status(getattr),
        Some(0),
        "GETATTR of a marked file"
    );
}

fn each_file(directory: &Path, check: fn(&[u8])) -> usize {
    let Ok(entries) = std::fs::read_dir(directory) else {
        return 0;
    };
    let mut count = 0;
    for entry in entries {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        eprintln!("{}", path.display());
        check(&bytes);
        count += 1;
    }
    count
}

#[test]
fn the_committed_corpus_passes_the_checks() {
    let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus");
    let records = each_file(&corpus.join("record"), check_record);
    let streams = each_file(&corpus.join("stream"), check_stream);
    // Without root the serve check does nothing; the files are still read.
    let served = each_file(&corpus.join("serve"), check_served);
    assert!(
        records > 20 && streams > 20 && served > 20,
        "{records}, {streams} and {served} files"
    );
}

/// Run in a child process by `the_allocation_bound_aborts`.
#[test]
#[ignore = "aborts by design; run by the_allocation_bound_aborts"]
fn allocate_over_the_bound() {
    let (buffer, _) = bounded(100, || vec![1u8; 101]);
    drop(buffer);
}

#[test]
fn the_allocation_bound_aborts() {
    let (buffer, usage) = bounded(100, || vec![1u8; 100]);
    assert_eq!(usage.allocations, 1);
    assert_eq!(usage.largest, 100);
    drop(buffer);

    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "--ignored",
            "--exact",
            "allocate_over_the_bound",
            "--nocapture",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        stderr.contains("allocation of 101 bytes is over the bound of 100 bytes"),
        "{stderr}"
    );
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(status.status.signal(), Some(libc_sigabrt()), "{status:?}");
}

/// SIGABRT, without a libc dependency for one constant.
fn libc_sigabrt() -> i32 {
    6
}
