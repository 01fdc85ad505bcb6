//! Property tests for `vipd::storage`: random sequences of calls, valid and invalid, give the
//! same answers from a `DiskLog` (closed and reopened at random points) as from a `MemLog`; and
//! a `MemLog` answers like raft-rs's own `MemStorage` for everything the two define alike.

#![allow(
    clippy::unwrap_used,
    reason = "a panic is the failure report of a test"
)]

mod storage_support;

use proptest::prelude::*;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, Storage};
use storage_support::{answers, entry, hard_state, snapshot, voters};
use tempfile::TempDir;
use vipd::storage::{DiskLog, LogStore, MemLog};

/// One generated step, in raw numbers that `concrete` turns into a call fitting the log's
/// current state (so that most calls are ones Raft could make).
#[derive(Debug, Clone)]
enum Step {
    Append {
        back: u8,
        count: u8,
        term_bump: bool,
        hard_state: Option<(u8, u8)>,
    },
    HardStateOnly {
        vote: u8,
        commit: u8,
    },
    InstallSnapshot {
        ahead: u8,
        term_bump: bool,
        following: u8,
        data: u8,
    },
    SetCommit(u8),
    Compact {
        index: u8,
        data: u8,
    },
    SetConfState(u8),
    Initialize(u8),
    Invalid(u8),
    Reopen,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (any::<u8>(), 0u8..5, any::<bool>(), proptest::option::of((any::<u8>(), any::<u8>())))
            .prop_map(|(back, count, term_bump, hard_state)| Step::Append {
                back,
                count,
                term_bump,
                hard_state
            }),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(vote, commit)| Step::HardStateOnly { vote, commit }),
        1 => (0u8..4, any::<bool>(), 0u8..3, any::<u8>()).prop_map(
            |(ahead, term_bump, following, data)| Step::InstallSnapshot {
                ahead,
                term_bump,
                following,
                data
            }
        ),
        2 => any::<u8>().prop_map(Step::SetCommit),
        2 => (any::<u8>(), any::<u8>()).prop_map(|(index, data)| Step::Compact { index, data }),
        1 => (1u8..8).prop_map(Step::SetConfState),
        1 => (0u8..8).prop_map(Step::Initialize),
        2 => any::<u8>().prop_map(Step::Invalid),
        2 => Just(Step::Reopen),
    ]
}

/// A concrete call on a log.
#[derive(Debug, Clone)]
enum Call {
    Persist(Option<Snapshot>, Vec<Entry>, Option<HardState>),
    SetCommit(u64),
    Compact(u64, ConfState, Vec<u8>),
    SetConfState(ConfState),
    Initialize(ConfState),
    Reopen,
}

/// Picks a number in `low..=high` (or `low` if the range is empty) from a raw byte.
fn pick(low: u64, high: u64, raw: u8) -> u64 {
    if high <= low {
        return low;
    }
    low + u64::from(raw) * (high - low + 1) / 256
}

fn voter_set(bits: u8) -> ConfState {
    voters(
        &(1..=3u64)
            .filter(|id| bits & (1 << (id - 1)) != 0)
            .collect::<Vec<_>>(),
    )
}

fn run_of_entries(start: u64, count: u64, term: u64) -> Vec<Entry> {
    (start..start + count)
        .map(|index| entry(index, term, format!("{index}@{term}").as_bytes()))
        .collect()
}

fn concrete(step: &Step, log: &impl LogStore) -> Call {
    let state = log.initial_state().unwrap();
    let first = log.first_index().unwrap();
    let last = log.last_index().unwrap();
    let commit = state.hard_state.commit;
    let top_term = state.hard_state.term.max(log.term(last).unwrap_or(0));
    let snapshot_index = log.snapshot_data().0;
    match *step {
        Step::Append {
            back,
            count,
            term_bump,
            hard_state: wanted,
        } => {
            // Raft only ever replaces uncommitted entries.
            let lowest_start = first.max(commit + 1);
            let start = last + 1 - pick(0, last + 1 - lowest_start, back);
            let term = top_term + u64::from(term_bump);
            let appended = run_of_entries(start, u64::from(count), term);
            let new_last = appended.last().map_or(last, |entry| entry.index);
            let hard_state = wanted.map(|(vote, new_commit)| {
                hard_state(
                    term,
                    u64::from(vote % 4),
                    pick(commit, new_last.max(commit), new_commit),
                )
            });
            Call::Persist(None, appended, hard_state)
        }
        Step::HardStateOnly { vote, commit: raw } => Call::Persist(
            None,
            Vec::new(),
            Some(hard_state(
                top_term,
                u64::from(vote % 4),
                pick(commit, last, raw),
            )),
        ),
        Step::InstallSnapshot {
            ahead,
            term_bump,
            following,
            data,
        } => {
            let index = first.max(last + u64::from(ahead));
            let term = top_term + u64::from(term_bump);
            let incoming = snapshot(index, term, voter_set(data | 1), &[data; 3]);
            Call::Persist(
                Some(incoming),
                run_of_entries(index + 1, u64::from(following), term),
                None,
            )
        }
        Step::SetCommit(raw) => Call::SetCommit(pick(commit, last, raw)),
        Step::Compact { index, data } => Call::Compact(
            pick(snapshot_index, commit, index),
            voter_set(data | 1),
            vec![data; usize::from(data % 5)],
        ),
        Step::SetConfState(bits) => Call::SetConfState(voter_set(bits)),
        Step::Initialize(bits) => Call::Initialize(voter_set(bits)),
        Step::Invalid(kind) => match kind % 6 {
            0 => Call::Persist(None, run_of_entries(last + 2, 1, top_term), None),
            1 => Call::Persist(
                None,
                run_of_entries(first.saturating_sub(1).max(1), 2, top_term),
                None,
            ),
            2 => Call::SetCommit(last + 1),
            3 => Call::Compact(commit + 1, voters(&[1]), Vec::new()),
            4 => Call::Persist(
                Some(snapshot(first - 1, top_term, voters(&[1]), b"old")),
                Vec::new(),
                None,
            ),
            _ => Call::Persist(
                None,
                run_of_entries(last + 1, 1, top_term),
                Some(hard_state(top_term, 1, last + 2)),
            ),
        },
        Step::Reopen => Call::Reopen,
    }
}

fn call(log: &impl LogStore, call: &Call) -> Result<(), String> {
    let result = match call {
        Call::Persist(snapshot, entries, hard_state) => {
            log.persist(snapshot.as_ref(), entries, hard_state.as_ref())
        }
        Call::SetCommit(commit) => log.set_commit(*commit),
        Call::Compact(index, conf_state, data) => log.compact(*index, conf_state, data.clone()),
        Call::SetConfState(conf_state) => log.set_conf_state(conf_state),
        Call::Initialize(conf_state) => log.initialize(conf_state),
        Call::Reopen => Ok(()),
    };
    result.map_err(|error| error.to_string())
}

fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

proptest! {
    // Every case writes and syncs real files; a few dozen cases cover the call kinds well.
    #![proptest_config(config(96))]

    #[test]
    fn disk_and_memory_logs_give_the_same_answers(steps in prop::collection::vec(step(), 1..32)) {
        let dir = TempDir::new().unwrap();
        let memory = MemLog::new();
        let mut disk = Some(DiskLog::open(dir.path()).unwrap());
        for (number, step) in steps.iter().enumerate() {
            let planned = concrete(step, &memory);
            if matches!(planned, Call::Reopen) {
                drop(disk.take());
                disk = Some(DiskLog::open(dir.path()).unwrap());
            }
            let disk_log = disk.as_ref().unwrap();
            let in_memory = call(&memory, &planned);
            let on_disk = call(disk_log, &planned);
            prop_assert_eq!(&in_memory, &on_disk, "step {} {:?}", number, planned);
            prop_assert_eq!(answers(&memory), answers(disk_log), "after step {} {:?}", number, planned);
        }
        drop(disk.take());
        let reopened = DiskLog::open(dir.path()).unwrap();
        prop_assert_eq!(answers(&memory), answers(&reopened), "after the final reopen");
    }
}

/// What raft-rs's `MemStorage` and a `MemLog` both answer, for the calls both define alike
/// (everything but compaction and `snapshot`, which MemStorage fakes from the commit index).
fn common_answers(log: &impl Storage) -> (HardState, ConfState, u64, u64, Vec<String>) {
    let state = log.initial_state().unwrap();
    let first = log.first_index().unwrap();
    let last = log.last_index().unwrap();
    let mut seen = Vec::new();
    for index in first.saturating_sub(2)..=last + 1 {
        seen.push(format!("term({index}) = {:?}", log.term(index)));
    }
    // MemStorage indexes its first entry even for an empty range, so only ask when it has one.
    if last >= first {
        for low in first.saturating_sub(1)..=last + 1 {
            for high in low.max(first)..=last + 1 {
                for max_size in [None, Some(0), Some(50)] {
                    let got = log.entries(low, high, max_size, GetEntriesContext::empty(false));
                    seen.push(format!("entries({low}, {high}, {max_size:?}) = {got:?}"));
                }
            }
        }
    }
    (state.hard_state, state.conf_state, first, last, seen)
}

proptest! {
    #![proptest_config(config(256))]

    #[test]
    fn a_memory_log_answers_like_raft_mem_storage(steps in prop::collection::vec(step(), 1..40)) {
        let ours = MemLog::new();
        let reference = MemStorage::new();
        for (number, step) in steps.iter().enumerate() {
            let planned = concrete(step, &ours);
            // Only the calls MemStorage takes without panicking, with its meaning.
            let applied = match &planned {
                Call::Persist(snapshot, entries, hard_state) => {
                    if call(&ours, &planned).is_err() {
                        continue;
                    }
                    let mut core = reference.wl();
                    if let Some(snapshot) = snapshot {
                        core.apply_snapshot(snapshot.clone()).unwrap();
                    }
                    core.append(entries).unwrap();
                    if let Some(hard_state) = hard_state {
                        core.set_hardstate(hard_state.clone());
                    }
                    true
                }
                Call::SetCommit(commit) => {
                    if call(&ours, &planned).is_err() {
                        continue;
                    }
                    reference.wl().mut_hard_state().commit = *commit;
                    true
                }
                Call::SetConfState(conf_state) => {
                    call(&ours, &planned).unwrap();
                    reference.wl().set_conf_state(conf_state.clone());
                    true
                }
                _ => false,
            };
            if applied {
                prop_assert_eq!(
                    common_answers(&ours),
                    common_answers(&reference),
                    "after step {} {:?}",
                    number,
                    planned
                );
            }
        }
    }
}
