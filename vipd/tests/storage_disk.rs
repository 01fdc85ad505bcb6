//! `vipd::storage::DiskLog` on real files: what is persisted comes back after a restart, a crash
//! at any byte of the last write leaves the state from just before or just after it, damage to
//! acknowledged records refuses to start, two daemons cannot share a directory, and a real
//! `raft::RawNode` restarts from the log with the same committed entries and hard state.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is the failure report of a test"
)]

mod storage_support;

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use raft::eraftpb::{Entry, EntryType};
use raft::{GetEntriesContext, RawNode, StateRole, Storage};
use storage_support::{Answers, answers, entries, hard_state, snapshot, voters};
use tempfile::TempDir;
use vipd::storage::{DiskLog, LogStore, StorageError};

fn log_file(dir: &Path) -> std::path::PathBuf {
    dir.join("raft.log")
}

fn file_len(dir: &Path) -> usize {
    fs::metadata(log_file(dir)).unwrap().len() as usize
}

fn reopen(dir: &Path) -> DiskLog {
    DiskLog::open(dir).unwrap()
}

/// Opens a copy of the log file `image` in `scratch` (replacing what was there).
fn open_image(scratch: &Path, image: &[u8]) -> Result<DiskLog, StorageError> {
    let _ = fs::remove_file(scratch.join("raft.log.tmp"));
    fs::write(log_file(scratch), image).unwrap();
    DiskLog::open(scratch)
}

#[test]
fn a_new_directory_is_created_private_and_uninitialized() {
    let parent = TempDir::new().unwrap();
    let dir = parent.path().join("var/lib/vipgate");
    let log = DiskLog::open(&dir).unwrap();
    assert!(!log.is_initialized());
    assert_eq!(log.initial_state().unwrap().hard_state, hard_state(0, 0, 0));
    assert_eq!(
        (log.first_index().unwrap(), log.last_index().unwrap()),
        (1, 0)
    );
    let mode = fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & 0o077, 0, "data directory mode {mode:o}");
    drop(log);
    let log = reopen(&dir);
    assert!(!log.is_initialized());
    log.initialize(&voters(&[1, 2, 3])).unwrap();
    drop(log);
    let log = reopen(&dir);
    assert!(log.is_initialized());
    assert_eq!(log.initial_state().unwrap().conf_state, voters(&[1, 2, 3]));
    assert!(matches!(
        log.initialize(&voters(&[1])),
        Err(StorageError::AlreadyInitialized)
    ));
}

#[test]
fn reopening_returns_what_was_persisted_at_every_step() {
    let dir = TempDir::new().unwrap();
    let log = reopen(dir.path());
    type Step = (&'static str, Box<dyn Fn(&DiskLog)>);
    let mut steps: Vec<Step> = vec![
        (
            "initialize",
            Box::new(|log| log.initialize(&voters(&[1, 2, 3])).unwrap()),
        ),
        (
            "append with hard state",
            Box::new(|log| {
                log.persist(None, &entries(1..=6, 1), Some(&hard_state(1, 1, 2)))
                    .unwrap();
            }),
        ),
        (
            "replace a conflicting suffix",
            Box::new(|log| {
                log.persist(None, &entries(5..=8, 2), Some(&hard_state(2, 2, 4)))
                    .unwrap();
            }),
        ),
        ("set commit", Box::new(|log| log.set_commit(7).unwrap())),
        (
            "set conf state",
            Box::new(|log| log.set_conf_state(&voters(&[1, 2, 3, 4])).unwrap()),
        ),
        (
            "compact",
            Box::new(|log| {
                log.compact(5, &voters(&[1, 2, 3]), b"state at 5".to_vec())
                    .unwrap();
            }),
        ),
        (
            "append after compaction",
            Box::new(|log| log.persist(None, &entries(9..=12, 2), None).unwrap()),
        ),
        (
            "install a snapshot from the leader",
            Box::new(|log| {
                let incoming = snapshot(20, 3, voters(&[1, 2]), b"state at 20");
                log.persist(Some(&incoming), &entries(21..=22, 3), None)
                    .unwrap();
            }),
        ),
        (
            "hard state only",
            Box::new(|log| log.persist(None, &[], Some(&hard_state(4, 1, 22))).unwrap()),
        ),
    ];
    let mut log = Some(log);
    for (name, step) in steps.drain(..) {
        let current = log.take().unwrap();
        step(&current);
        let expected = answers(&current);
        drop(current);
        let reopened = reopen(dir.path());
        assert_eq!(answers(&reopened), expected, "after {name}");
        log = Some(reopened);
    }
    let log = log.unwrap();
    assert_eq!(log.snapshot_data(), (20, b"state at 20".to_vec()));
    assert_eq!(log.term(20).unwrap(), 3);
    assert_eq!(
        log.initial_state().unwrap().hard_state,
        hard_state(4, 1, 22)
    );
}

#[test]
fn suffix_replacement_max_size_and_compaction_errors_survive_a_restart() {
    let dir = TempDir::new().unwrap();
    let log = reopen(dir.path());
    log.initialize(&voters(&[1])).unwrap();
    log.persist(None, &entries(1..=5, 1), None).unwrap();
    log.persist(None, &entries(3..=4, 2), Some(&hard_state(2, 1, 3)))
        .unwrap();
    drop(log);
    let log = reopen(dir.path());
    assert_eq!(log.last_index().unwrap(), 4);
    let terms: Vec<u64> = (1..=4).map(|index| log.term(index).unwrap()).collect();
    assert_eq!(terms, [1, 1, 2, 2]);
    let all = log
        .entries(1, 5, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(all.len(), 4);
    let one_size = u64::from(protobuf::Message::compute_size(&all[0]));
    let two = log
        .entries(1, 5, Some(one_size * 2), GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(two, all[..2].to_vec());
    let at_least_one = log
        .entries(1, 5, Some(0), GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(at_least_one, all[..1].to_vec());

    log.compact(2, &voters(&[1]), b"two".to_vec()).unwrap();
    drop(log);
    let log = reopen(dir.path());
    let compacted = raft::Error::Store(raft::StorageError::Compacted);
    let unavailable = raft::Error::Store(raft::StorageError::Unavailable);
    assert_eq!(log.term(1), Err(compacted));
    assert_eq!(log.term(2), Ok(1));
    assert_eq!(log.term(5), Err(unavailable));
    assert_eq!(
        log.entries(2, 4, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(raft::StorageError::Compacted))
    );
    assert_eq!(
        log.entries(3, 6, None, GetEntriesContext::empty(false)),
        Err(raft::Error::Store(raft::StorageError::Unavailable))
    );
    assert_eq!(
        log.snapshot(3, 2),
        Err(raft::Error::Store(
            raft::StorageError::SnapshotTemporarilyUnavailable
        ))
    );
    assert_eq!(log.snapshot(2, 2).unwrap().get_metadata().index, 2);
}

#[test]
fn a_refused_change_leaves_nothing_behind() {
    let dir = TempDir::new().unwrap();
    let log = reopen(dir.path());
    log.initialize(&voters(&[1])).unwrap();
    log.persist(None, &entries(1..=4, 1), Some(&hard_state(1, 1, 2)))
        .unwrap();
    log.compact(1, &voters(&[1]), Vec::new()).unwrap();
    let before = answers(&log);
    let len_before = file_len(dir.path());
    let refusals: Vec<(&str, Result<(), StorageError>)> = vec![
        ("gap", log.persist(None, &entries(6..=6, 1), None)),
        (
            "overwrite compacted",
            log.persist(None, &entries(1..=2, 2), None),
        ),
        (
            "commit past the end",
            log.persist(None, &entries(5..=5, 1), Some(&hard_state(1, 1, 9))),
        ),
        (
            "old snapshot",
            log.persist(Some(&snapshot(1, 1, voters(&[1]), b"")), &[], None),
        ),
        ("set commit past the end", log.set_commit(5)),
        (
            "compact uncommitted",
            log.compact(3, &voters(&[1]), Vec::new()),
        ),
        ("initialize twice", log.initialize(&voters(&[1]))),
    ];
    for (name, result) in refusals {
        assert!(result.is_err(), "{name} was accepted");
        assert_eq!(answers(&log), before, "{name} changed the log");
    }
    assert_eq!(file_len(dir.path()), len_before);
    drop(log);
    assert_eq!(answers(&reopen(dir.path())), before);
}

/// Runs `prefix` on a fresh log, then `last`, which must write exactly one record (possibly when
/// the log is closed); then reopens the file cut at every byte of that record, and with the
/// cut-off bytes read back as zeros, and expects the state from just before `last` unless the
/// whole record is there.
fn check_every_cut(name: &str, prefix: impl Fn(&DiskLog), last: impl Fn(&DiskLog)) {
    let dir = TempDir::new().unwrap();
    let log = reopen(dir.path());
    prefix(&log);
    let before = answers(&log);
    let len_before = file_len(dir.path());
    last(&log);
    let after = answers(&log);
    drop(log);
    assert_ne!(before, after, "{name}: the last call changed nothing");
    let bytes = fs::read(log_file(dir.path())).unwrap();
    assert!(bytes.len() > len_before, "{name}: nothing was written");

    let scratch = TempDir::new().unwrap();
    for keep in len_before..=bytes.len() {
        for zero_filled in [false, true] {
            let mut image = bytes[..keep].to_vec();
            if zero_filled {
                image.resize(bytes.len(), 0);
            }
            let expected = if image == bytes { &after } else { &before };
            let log = open_image(scratch.path(), &image).unwrap();
            assert_eq!(
                &answers(&log),
                expected,
                "{name}: kept {keep} of {} bytes, zero-filled {zero_filled}",
                bytes.len()
            );
            drop(log);
            let recovered = file_len(scratch.path());
            assert!(
                recovered == len_before || recovered == bytes.len(),
                "{name}: the torn tail was not cut off ({recovered} bytes)"
            );
        }
    }

    // After the tail is cut off, the log goes on as if the last call had never happened.
    let middle = (len_before + bytes.len()) / 2;
    let log = open_image(scratch.path(), &bytes[..middle]).unwrap();
    last(&log);
    drop(log);
    assert_eq!(answers(&reopen(scratch.path())), after, "{name}: redone");
}

fn initialized_with_entries(log: &DiskLog) {
    log.initialize(&voters(&[1, 2, 3])).unwrap();
    log.persist(None, &entries(1..=3, 1), Some(&hard_state(1, 1, 2)))
        .unwrap();
}

#[test]
fn a_crash_during_an_append_leaves_before_or_after() {
    check_every_cut("append", initialized_with_entries, |log| {
        log.persist(None, &entries(3..=5, 2), Some(&hard_state(2, 1, 3)))
            .unwrap();
    });
}

#[test]
fn a_crash_during_a_hard_state_update_leaves_before_or_after() {
    check_every_cut("hard state", initialized_with_entries, |log| {
        log.persist(None, &[], Some(&hard_state(3, 2, 3))).unwrap();
    });
}

#[test]
fn a_crash_during_a_conf_state_change_leaves_before_or_after() {
    check_every_cut("conf state", initialized_with_entries, |log| {
        log.set_conf_state(&voters(&[1, 2, 3, 4])).unwrap();
    });
}

#[test]
fn a_crash_while_closing_with_a_new_commit_leaves_before_or_after() {
    check_every_cut("commit at close", initialized_with_entries, |log| {
        log.set_commit(3).unwrap();
    });
}

#[test]
fn a_crash_during_initialization_leaves_before_or_after() {
    check_every_cut(
        "initialize",
        |_| {},
        |log| log.initialize(&voters(&[1])).unwrap(),
    );
}

/// A compaction or an installed snapshot writes a new file and renames it: a crash leaves the
/// old file with a partial (or complete) temporary file beside it, or the new file.
fn check_rewrite_crash(name: &str, rewrite: impl Fn(&DiskLog)) {
    let dir = TempDir::new().unwrap();
    let log = reopen(dir.path());
    initialized_with_entries(&log);
    log.persist(None, &entries(4..=9, 1), Some(&hard_state(1, 1, 8)))
        .unwrap();
    let before = answers(&log);
    let old_bytes = fs::read(log_file(dir.path())).unwrap();
    rewrite(&log);
    let after = answers(&log);
    drop(log);
    assert_ne!(before, after, "{name} changed nothing");
    assert_eq!(answers(&reopen(dir.path())), after, "{name}: reopened");
    let new_bytes = fs::read(log_file(dir.path())).unwrap();

    let scratch = TempDir::new().unwrap();
    for keep in 0..=new_bytes.len() {
        fs::write(log_file(scratch.path()), &old_bytes).unwrap();
        fs::write(scratch.path().join("raft.log.tmp"), &new_bytes[..keep]).unwrap();
        let log = DiskLog::open(scratch.path()).unwrap();
        assert_eq!(
            answers(&log),
            before,
            "{name}: temporary file of {keep} bytes"
        );
        assert!(!scratch.path().join("raft.log.tmp").exists());
    }
    let log = open_image(scratch.path(), &new_bytes).unwrap();
    assert_eq!(answers(&log), after, "{name}: renamed");
}

#[test]
fn a_crash_during_compaction_leaves_before_or_after() {
    check_rewrite_crash("compact", |log| {
        log.compact(6, &voters(&[1, 2, 3]), b"state at 6".to_vec())
            .unwrap();
    });
}

#[test]
fn a_crash_while_installing_a_snapshot_leaves_before_or_after() {
    check_rewrite_crash("install snapshot", |log| {
        let incoming = snapshot(30, 4, voters(&[1, 2]), b"state at 30");
        log.persist(Some(&incoming), &entries(31..=31, 4), None)
            .unwrap();
    });
}

#[test]
fn damage_before_the_last_record_refuses_to_open() {
    let dir = TempDir::new().unwrap();
    let log = reopen(dir.path());
    initialized_with_entries(&log);
    log.persist(None, &entries(4..=5, 1), Some(&hard_state(1, 1, 4)))
        .unwrap();
    let before_last = answers(&log);
    let last_record_at = file_len(dir.path());
    log.persist(None, &entries(6..=6, 1), None).unwrap();
    drop(log);
    let bytes = fs::read(log_file(dir.path())).unwrap();

    let scratch = TempDir::new().unwrap();
    for position in 0..bytes.len() {
        let mut damaged = bytes.clone();
        damaged[position] ^= 0x04;
        let opened = open_image(scratch.path(), &damaged);
        if position < last_record_at {
            let error = opened.unwrap_err();
            let message = error.to_string();
            assert!(
                matches!(
                    error,
                    StorageError::Corrupt { .. } | StorageError::NotALog { .. }
                ),
                "byte {position}: {message}"
            );
            assert!(
                message.contains(&log_file(scratch.path()).display().to_string()),
                "byte {position}: the message does not name the file: {message}"
            );
        } else {
            // Damage to the last record cannot be told from a torn write: it is dropped.
            assert_eq!(answers(&opened.unwrap()), before_last, "byte {position}");
        }
    }
    // The message says where and why.
    let mut damaged = bytes.clone();
    damaged[last_record_at - 3] ^= 0x04;
    let message = open_image(scratch.path(), &damaged)
        .unwrap_err()
        .to_string();
    assert!(message.contains("damaged at byte"), "{message}");
    assert!(message.contains("refusing to start"), "{message}");
}

#[test]
fn a_log_of_another_format_is_refused_with_a_clear_error() {
    let scratch = TempDir::new().unwrap();
    let error = open_image(scratch.path(), b"").unwrap_err();
    assert!(matches!(error, StorageError::NotALog { .. }), "{error}");
    let error = open_image(scratch.path(), b"some other file").unwrap_err();
    assert!(
        error.to_string().contains("is not a vipd raft log"),
        "{error}"
    );

    let dir = TempDir::new().unwrap();
    drop(reopen(dir.path()));
    let mut bytes = fs::read(log_file(dir.path())).unwrap();
    bytes[8..12].copy_from_slice(&2u32.to_le_bytes());
    let crc = crc32fast::hash(&bytes[..20]);
    bytes[20..24].copy_from_slice(&crc.to_le_bytes());
    let error = open_image(scratch.path(), &bytes).unwrap_err();
    assert!(
        matches!(error, StorageError::UnsupportedVersion { version: 2, .. }),
        "{error}"
    );
    assert!(error.to_string().contains("format version 2"), "{error}");
}

#[test]
fn a_second_open_of_the_same_directory_fails_while_the_first_is_alive() {
    let dir = TempDir::new().unwrap();
    let first = reopen(dir.path());
    let clone = first.clone();
    let error = DiskLog::open(dir.path()).unwrap_err();
    assert!(matches!(error, StorageError::Locked { .. }), "{error}");
    let message = error.to_string();
    assert!(
        message.contains(&dir.path().display().to_string()) && message.contains("in use"),
        "{message}"
    );
    drop(first);
    // A clone keeps the log open.
    assert!(DiskLog::open(dir.path()).is_err());
    drop(clone);
    DiskLog::open(dir.path()).unwrap();
}

/// Drives `node` through the `Ready` cycle as raft-rs's recipe says until it has nothing more
/// to do, persisting to `log` and collecting the committed entries.
fn drive(node: &mut RawNode<DiskLog>, log: &DiskLog, committed: &mut Vec<Entry>) {
    while node.has_ready() {
        let mut ready = node.ready();
        assert!(
            ready.messages().is_empty(),
            "a single node sends no messages"
        );
        committed.extend(ready.take_committed_entries());
        let snapshot = (!ready.snapshot().is_empty()).then(|| ready.snapshot().clone());
        log.persist(snapshot.as_ref(), ready.entries(), ready.hs())
            .unwrap();
        let mut light = node.advance(ready);
        if let Some(commit) = light.commit_index() {
            log.set_commit(commit).unwrap();
        }
        committed.extend(light.take_committed_entries());
        node.advance_apply();
    }
}

fn new_node(log: &DiskLog, applied: u64) -> RawNode<DiskLog> {
    let config = raft::Config {
        id: 1,
        election_tick: 10,
        heartbeat_tick: 3,
        applied,
        ..raft::Config::default()
    };
    let logger = slog::Logger::root(slog::Discard, slog::o!());
    RawNode::new(&config, log.clone(), &logger).unwrap()
}

fn normal_data(entries: &[Entry]) -> Vec<Vec<u8>> {
    entries
        .iter()
        .filter(|entry| entry.get_entry_type() == EntryType::EntryNormal && !entry.data.is_empty())
        .map(|entry| entry.data.to_vec())
        .collect()
}

#[test]
fn a_raft_node_restarts_from_the_log_with_the_same_committed_entries() {
    let dir = TempDir::new().unwrap();
    let log = reopen(dir.path());
    assert!(!log.is_initialized());
    log.initialize(&voters(&[1])).unwrap();
    let mut node = new_node(&log, 0);
    let mut committed = Vec::new();
    node.campaign().unwrap();
    drive(&mut node, &log, &mut committed);
    assert_eq!(node.raft.state, StateRole::Leader);
    for data in [&b"alpha"[..], b"beta", b"gamma"] {
        node.propose(Vec::new(), data.to_vec()).unwrap();
        drive(&mut node, &log, &mut committed);
    }
    assert_eq!(
        normal_data(&committed),
        [b"alpha".to_vec(), b"beta".to_vec(), b"gamma".to_vec()]
    );
    let hard_state_before = node.raft.hard_state();
    let commit = node.raft.raft_log.committed;
    assert_eq!(commit, log.last_index().unwrap());
    assert_eq!(log.initial_state().unwrap().hard_state, hard_state_before);
    drop(node);
    drop(log);

    // Restart without a snapshot: the state machine starts empty, so raft hands back every
    // committed entry.
    let log = reopen(dir.path());
    assert_eq!(log.initial_state().unwrap().hard_state, hard_state_before);
    let mut node = new_node(&log, 0);
    assert_eq!(node.raft.raft_log.committed, commit);
    assert_eq!(node.raft.term, hard_state_before.term);
    let mut replayed = Vec::new();
    drive(&mut node, &log, &mut replayed);
    assert_eq!(replayed, committed);

    // It is elected again, in a later term, and goes on committing.
    node.campaign().unwrap();
    drive(&mut node, &log, &mut replayed);
    assert_eq!(node.raft.state, StateRole::Leader);
    assert!(node.raft.term > hard_state_before.term);
    node.propose(Vec::new(), b"delta".to_vec()).unwrap();
    drive(&mut node, &log, &mut replayed);
    let commit = node.raft.raft_log.committed;
    assert_eq!(normal_data(&replayed).last().unwrap(), b"delta");

    // Compact everything applied, restart from the snapshot, and find the same state.
    log.compact(commit, &voters(&[1]), b"alpha beta gamma delta".to_vec())
        .unwrap();
    let hard_state_before = node.raft.hard_state();
    drop(node);
    drop(log);
    let log = reopen(dir.path());
    let (snapshot_index, data) = log.snapshot_data();
    assert_eq!(
        (snapshot_index, data.as_slice()),
        (commit, &b"alpha beta gamma delta"[..])
    );
    assert_eq!(log.initial_state().unwrap().hard_state, hard_state_before);
    let mut node = new_node(&log, snapshot_index);
    assert_eq!(node.raft.raft_log.committed, commit);
    let mut after_snapshot = Vec::new();
    drive(&mut node, &log, &mut after_snapshot);
    assert!(after_snapshot.is_empty(), "{after_snapshot:?}");
    node.campaign().unwrap();
    drive(&mut node, &log, &mut after_snapshot);
    assert_eq!(node.raft.state, StateRole::Leader);
    node.propose(Vec::new(), b"epsilon".to_vec()).unwrap();
    drive(&mut node, &log, &mut after_snapshot);
    assert_eq!(normal_data(&after_snapshot), [b"epsilon".to_vec()]);
    assert_eq!(log.first_index().unwrap(), commit + 1);
}

#[test]
fn a_leftover_temporary_file_is_removed_at_open() {
    let dir = TempDir::new().unwrap();
    let log = reopen(dir.path());
    initialized_with_entries(&log);
    let expected: Answers = answers(&log);
    drop(log);
    fs::write(dir.path().join("raft.log.tmp"), b"half a rewrite").unwrap();
    let log = reopen(dir.path());
    assert_eq!(answers(&log), expected);
    assert!(!dir.path().join("raft.log.tmp").exists());
}

const FILE_SIZE_CHILD: &str = "VIPD_STORAGE_FILE_SIZE_CHILD";

/// Real write failures, made by a file-size limit (`RLIMIT_FSIZE`) in a child process so that
/// the limit touches nothing else: the failed call leaves nothing behind, in memory or on disk,
/// and the log goes on working.
#[test]
fn a_failed_write_is_undone_and_the_log_goes_on() {
    let dir = TempDir::new().unwrap();
    let log = reopen(dir.path());
    initialized_with_entries(&log);
    drop(log);
    let status = std::process::Command::new(std::env::current_exe().unwrap())
        .args([
            "in_a_child_with_a_file_size_limit",
            "--exact",
            "--ignored",
            "--nocapture",
        ])
        .env(FILE_SIZE_CHILD, dir.path())
        .status()
        .unwrap();
    assert!(status.success(), "the child failed: {status}");
    let log = reopen(dir.path());
    assert_eq!(log.last_index().unwrap(), 4);
    let small = log
        .entries(4, 5, None, GetEntriesContext::empty(false))
        .unwrap();
    assert_eq!(&small[0].data[..], b"small");
}

#[test]
#[ignore = "run by a_failed_write_is_undone_and_the_log_goes_on in a child process"]
fn in_a_child_with_a_file_size_limit() {
    let Some(dir) = std::env::var_os(FILE_SIZE_CHILD) else {
        return;
    };
    let dir = std::path::PathBuf::from(dir);
    let log = reopen(&dir);
    let before = answers(&log);
    let len_before = file_len(&dir);
    // SAFETY: ignoring SIGXFSZ installs no handler; this process runs only this test.
    unsafe { libc::signal(libc::SIGXFSZ, libc::SIG_IGN) };
    let limit = libc::rlimit {
        rlim_cur: (len_before + 100) as libc::rlim_t,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: `limit` is a valid rlimit that outlives the call.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_FSIZE, &limit) }, 0);

    // The record is cut short by the limit after its first 100 bytes.
    let error = log
        .persist(
            None,
            &[storage_support::entry(4, 1, &[7; 1000])],
            Some(&hard_state(1, 1, 4)),
        )
        .unwrap_err();
    assert!(matches!(error, StorageError::Io { .. }), "{error}");
    assert_eq!(answers(&log), before);
    assert_eq!(file_len(&dir), len_before);

    // A compaction's new file fails the same way; the old log stays.
    log.set_commit(3).unwrap();
    let error = log
        .compact(3, &voters(&[1, 2, 3]), vec![7; 4096])
        .unwrap_err();
    assert!(matches!(error, StorageError::Io { .. }), "{error}");
    assert!(!dir.join("raft.log.tmp").exists());
    assert_eq!(log.first_index().unwrap(), 1);

    // What fits still works.
    log.persist(None, &[storage_support::entry(4, 1, b"small")], None)
        .unwrap();
}
