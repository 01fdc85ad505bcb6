//! Helpers shared by the `vipd::storage` integration tests: building raft messages, and taking
//! down everything a log answers so that two logs (or one log before and after a restart) can
//! be compared as plain values.

#![allow(
    dead_code,
    reason = "each test file uses a different part of these helpers"
)]

use raft::GetEntriesContext;
use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use vipd::storage::LogStore;

pub fn entry(index: u64, term: u64, data: &[u8]) -> Entry {
    Entry {
        index,
        term,
        data: data.to_vec().into(),
        ..Entry::default()
    }
}

pub fn entries(indexes: std::ops::RangeInclusive<u64>, term: u64) -> Vec<Entry> {
    indexes
        .map(|index| {
            entry(
                index,
                term,
                format!("entry {index} of term {term}").as_bytes(),
            )
        })
        .collect()
}

pub fn hard_state(term: u64, vote: u64, commit: u64) -> HardState {
    HardState {
        term,
        vote,
        commit,
        ..HardState::default()
    }
}

pub fn voters(ids: &[u64]) -> ConfState {
    ConfState {
        voters: ids.to_vec(),
        ..ConfState::default()
    }
}

pub fn snapshot(index: u64, term: u64, conf_state: ConfState, data: &[u8]) -> Snapshot {
    let mut snapshot = Snapshot {
        data: data.to_vec().into(),
        ..Snapshot::default()
    };
    snapshot.mut_metadata().index = index;
    snapshot.mut_metadata().term = term;
    snapshot.mut_metadata().set_conf_state(conf_state);
    snapshot
}

/// One `entries(low, high, max_size)` call and its answer.
pub type EntriesAnswer = (u64, u64, Option<u64>, Result<Vec<Entry>, String>);

/// Everything a log answers, as comparable values. Errors are kept as their text.
#[derive(Debug, Clone, PartialEq)]
pub struct Answers {
    pub hard_state: HardState,
    pub conf_state: ConfState,
    pub first_index: u64,
    pub last_index: u64,
    /// `term(i)` for every index from two before the first to one past the last.
    pub terms: Vec<(u64, Result<u64, String>)>,
    /// `entries(low, high, max_size)` over every range around the log and a few sizes.
    pub entries: Vec<EntriesAnswer>,
    pub snapshot: Result<Snapshot, String>,
    pub snapshot_for_next: Result<Snapshot, String>,
    pub snapshot_data: (u64, Vec<u8>),
    pub initialized: bool,
}

pub fn answers<S: LogStore>(log: &S) -> Answers {
    let state = log.initial_state().unwrap();
    let first_index = log.first_index().unwrap();
    let last_index = log.last_index().unwrap();
    let low_end = first_index.saturating_sub(2);
    let terms = (low_end..=last_index + 1)
        .map(|index| (index, log.term(index).map_err(|error| error.to_string())))
        .collect();
    let mut ranges = Vec::new();
    for low in first_index.saturating_sub(1)..=last_index + 1 {
        for high in low..=(last_index + 2).min(low + 6) {
            for max_size in [None, Some(0), Some(60), Some(u64::MAX)] {
                let got = log
                    .entries(low, high, max_size, GetEntriesContext::empty(false))
                    .map_err(|error| error.to_string());
                ranges.push((low, high, max_size, got));
            }
        }
    }
    Answers {
        hard_state: state.hard_state,
        conf_state: state.conf_state,
        first_index,
        last_index,
        terms,
        entries: ranges,
        snapshot: log.snapshot(0, 2).map_err(|error| error.to_string()),
        snapshot_for_next: log
            .snapshot(last_index + 1, 2)
            .map_err(|error| error.to_string()),
        snapshot_data: log.snapshot_data(),
        initialized: log.is_initialized(),
    }
}
