//! The Raft log as plain data: snapshot, retained entries, hard state and configuration, with
//! the rules of raft-rs's `MemStorage` for reading and changing them.
//!
//! [`LogState`] does no I/O. `MemLog` keeps one behind a mutex; `DiskLog` keeps one in memory,
//! writes each change to its file first and then applies it here, and rebuilds one at start by
//! replaying the file's records through the same methods. Every changing method validates the
//! whole change before it mutates anything, so a change that fails leaves the state as it was.

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot, SnapshotMetadata};
use raft::{NO_LIMIT, RaftState};

use super::StorageError;

/// The whole content of a Raft log: what `raft::Storage` answers from.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LogState {
    hard_state: HardState,
    /// The configuration in effect (the last one set), which `initial_state` reports.
    conf_state: ConfState,
    /// The latest snapshot, with its data; index 0 when the log was never compacted.
    snapshot: Snapshot,
    /// The retained entries, contiguous, the first at `snapshot index + 1`.
    entries: Vec<Entry>,
}

fn raft_error(error: raft::StorageError) -> raft::Error {
    raft::Error::Store(error)
}

impl LogState {
    /// Rebuilds a state from its parts (a compacted file's first record), checking that they fit.
    pub(crate) fn from_parts(
        hard_state: HardState,
        conf_state: ConfState,
        snapshot: Snapshot,
        entries: Vec<Entry>,
    ) -> Result<LogState, StorageError> {
        let mut state = LogState {
            hard_state: HardState::default(),
            conf_state,
            snapshot,
            entries: Vec::new(),
        };
        state.check_entries(&entries)?;
        state.entries = entries;
        state.check_commit(hard_state.commit)?;
        state.hard_state = hard_state;
        Ok(state)
    }

    pub(crate) fn hard_state(&self) -> &HardState {
        &self.hard_state
    }

    pub(crate) fn conf_state(&self) -> &ConfState {
        &self.conf_state
    }

    pub(crate) fn stored_snapshot(&self) -> &Snapshot {
        &self.snapshot
    }

    pub(crate) fn retained_entries(&self) -> &[Entry] {
        &self.entries
    }

    pub(crate) fn snapshot_index(&self) -> u64 {
        self.snapshot.get_metadata().index
    }

    fn snapshot_term(&self) -> u64 {
        self.snapshot.get_metadata().term
    }

    pub(crate) fn first_index(&self) -> u64 {
        self.snapshot_index() + 1
    }

    pub(crate) fn last_index(&self) -> u64 {
        self.entries
            .last()
            .map_or(self.snapshot_index(), |entry| entry.index)
    }

    /// Whether anything was ever recorded: false only for a log that was never initialized or
    /// written.
    pub(crate) fn is_initialized(&self) -> bool {
        *self != LogState::default()
    }

    pub(crate) fn initial_state(&self) -> RaftState {
        RaftState::new(self.hard_state.clone(), self.conf_state.clone())
    }

    /// The term of entry `index`, known for the snapshot's index and every retained entry.
    pub(crate) fn term(&self, index: u64) -> raft::Result<u64> {
        if index == self.snapshot_index() {
            return Ok(self.snapshot_term());
        }
        if index < self.first_index() {
            return Err(raft_error(raft::StorageError::Compacted));
        }
        if index > self.last_index() {
            return Err(raft_error(raft::StorageError::Unavailable));
        }
        self.entry(index)
            .map(|entry| entry.term)
            .ok_or_else(|| raft_error(raft::StorageError::Unavailable))
    }

    fn entry(&self, index: u64) -> Option<&Entry> {
        let position = index.checked_sub(self.first_index())?;
        self.entries.get(usize::try_from(position).ok()?)
    }

    /// Entries `[low, high)`, cut after the first entry once their encoded size would pass
    /// `max_size` (raft-rs's `limit_size`: at least one entry whenever the range holds any).
    pub(crate) fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: Option<u64>,
    ) -> raft::Result<Vec<Entry>> {
        if low < self.first_index() {
            return Err(raft_error(raft::StorageError::Compacted));
        }
        // raft-rs's MemStorage panics on these two; a node must not.
        if high > self.last_index() + 1 || low > high {
            return Err(raft_error(raft::StorageError::Unavailable));
        }
        let limit = match max_size {
            None | Some(NO_LIMIT) => None,
            Some(limit) => Some(limit),
        };
        let first = self.first_index();
        let range = usize::try_from(low - first).unwrap_or(usize::MAX)
            ..usize::try_from(high - first).unwrap_or(usize::MAX);
        let Some(slice) = self.entries.get(range) else {
            return Err(raft_error(raft::StorageError::Unavailable));
        };
        let mut taken = Vec::new();
        let mut total_size = 0u64;
        for entry in slice {
            total_size += u64::from(protobuf::Message::compute_size(entry));
            if let Some(limit) = limit
                && !taken.is_empty()
                && total_size > limit
            {
                break;
            }
            taken.push(entry.clone());
        }
        Ok(taken)
    }

    /// The latest snapshot, if it is at least as new as `request_index`. A log that was never
    /// compacted has none to give: raft-rs treats an index-0 snapshot as a fatal error, whereas
    /// "temporarily unavailable" makes it ask again later.
    pub(crate) fn snapshot(&self, request_index: u64) -> raft::Result<Snapshot> {
        let index = self.snapshot_index();
        if index == 0 || index < request_index {
            return Err(raft_error(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(self.snapshot.clone())
    }

    /// Checks that `entries` can follow the retained log (after a snapshot of `snapshot_index`
    /// when one comes in the same change).
    fn check_entries_after(
        &self,
        entries: &[Entry],
        first_index: u64,
        last_index: u64,
    ) -> Result<(), StorageError> {
        let Some(first) = entries.first() else {
            return Ok(());
        };
        if first.index < first_index {
            return Err(StorageError::OverwriteCompacted {
                index: first.index,
                first_index,
            });
        }
        if first.index > last_index + 1 {
            return Err(StorageError::EntryGap {
                index: first.index,
                last_index,
            });
        }
        for pair in entries.windows(2) {
            if let [previous, next] = pair
                && next.index != previous.index + 1
            {
                return Err(StorageError::EntriesOutOfOrder {
                    index: next.index,
                    previous: previous.index,
                });
            }
        }
        Ok(())
    }

    fn check_entries(&self, entries: &[Entry]) -> Result<(), StorageError> {
        self.check_entries_after(entries, self.first_index(), self.last_index())
    }

    fn check_commit(&self, commit: u64) -> Result<(), StorageError> {
        if commit > self.last_index() {
            return Err(StorageError::CommitBeyondLog {
                commit,
                last_index: self.last_index(),
            });
        }
        Ok(())
    }

    /// Checks, against the state as it will be after each step, that [`LogState::persist`]
    /// would succeed.
    pub(crate) fn check_persist(
        &self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        let (first_index, last_index) = match snapshot {
            Some(snapshot) => {
                let index = snapshot.get_metadata().index;
                if index < self.first_index() {
                    return Err(StorageError::SnapshotOutOfDate {
                        index,
                        first_index: self.first_index(),
                    });
                }
                (index + 1, index)
            }
            None => (self.first_index(), self.last_index()),
        };
        self.check_entries_after(entries, first_index, last_index)?;
        let new_last_index = entries.last().map_or(last_index, |entry| entry.index);
        let commit_after = match (hard_state, snapshot) {
            (Some(hard_state), _) => hard_state.commit,
            (None, Some(snapshot)) => snapshot.get_metadata().index,
            (None, None) => self.hard_state.commit,
        };
        if commit_after > new_last_index {
            return Err(StorageError::CommitBeyondLog {
                commit: commit_after,
                last_index: new_last_index,
            });
        }
        Ok(())
    }

    /// Applies what one `Ready` asks to persist: the snapshot (which replaces the log), then the
    /// entries (replacing any entry at or after the first one's index), then the hard state.
    pub(crate) fn persist(
        &mut self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        self.check_persist(snapshot, entries, hard_state)?;
        if let Some(snapshot) = snapshot {
            // As MemStorage::apply_snapshot does.
            let metadata = snapshot.get_metadata();
            self.hard_state.term = self.hard_state.term.max(metadata.term);
            self.hard_state.commit = metadata.index;
            self.conf_state = metadata.get_conf_state().clone();
            self.entries.clear();
            self.snapshot = snapshot.clone();
        }
        if let Some(first) = entries.first() {
            let keep = usize::try_from(first.index - self.first_index()).unwrap_or(usize::MAX);
            self.entries.truncate(keep);
            self.entries.extend_from_slice(entries);
        }
        if let Some(hard_state) = hard_state {
            self.hard_state = hard_state.clone();
        }
        Ok(())
    }

    /// Records the commit index a `LightReady` reports.
    pub(crate) fn set_commit(&mut self, commit: u64) -> Result<(), StorageError> {
        self.check_commit(commit)?;
        self.hard_state.commit = commit;
        Ok(())
    }

    pub(crate) fn set_conf_state(&mut self, conf_state: &ConfState) {
        self.conf_state = conf_state.clone();
    }

    /// First start only: records the initial configuration.
    pub(crate) fn initialize(&mut self, conf_state: &ConfState) -> Result<(), StorageError> {
        self.check_initialize(conf_state)?;
        self.conf_state = conf_state.clone();
        Ok(())
    }

    pub(crate) fn check_initialize(&self, conf_state: &ConfState) -> Result<(), StorageError> {
        if self.is_initialized() {
            return Err(StorageError::AlreadyInitialized);
        }
        if conf_state.voters.is_empty() {
            return Err(StorageError::NoVoters);
        }
        Ok(())
    }

    /// Whether `compact(index, ..)` would change anything, or why it cannot be done.
    pub(crate) fn check_compact(&self, index: u64) -> Result<bool, StorageError> {
        if index <= self.snapshot_index() {
            // An older or equal snapshot: nothing to do, as in MemStorage::compact.
            return Ok(false);
        }
        if index > self.hard_state.commit {
            return Err(StorageError::CompactUncommitted {
                index,
                commit: self.hard_state.commit,
            });
        }
        if index > self.last_index() {
            return Err(StorageError::CommitBeyondLog {
                commit: index,
                last_index: self.last_index(),
            });
        }
        Ok(true)
    }

    /// Replaces every entry up to and including `index` by a snapshot of `data` and
    /// `conf_state`. Returns whether anything changed (an index at or before the current
    /// snapshot changes nothing).
    pub(crate) fn compact(
        &mut self,
        index: u64,
        conf_state: &ConfState,
        data: Vec<u8>,
    ) -> Result<bool, StorageError> {
        if !self.check_compact(index)? {
            return Ok(false);
        }
        let term = self
            .term(index)
            .map_err(|_| StorageError::CommitBeyondLog {
                commit: index,
                last_index: self.last_index(),
            })?;
        let drop_count = usize::try_from(index - self.snapshot_index()).unwrap_or(usize::MAX);
        self.entries.drain(..drop_count.min(self.entries.len()));
        let mut metadata = SnapshotMetadata {
            index,
            term,
            ..SnapshotMetadata::default()
        };
        metadata.set_conf_state(conf_state.clone());
        let mut snapshot = Snapshot {
            data: data.into(),
            ..Snapshot::default()
        };
        snapshot.set_metadata(metadata);
        self.snapshot = snapshot;
        Ok(true)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(index: u64, term: u64) -> Entry {
        Entry {
            index,
            term,
            ..Entry::default()
        }
    }

    fn entry_with_data(index: u64, term: u64, size: usize) -> Entry {
        let mut entry = entry(index, term);
        entry.data = vec![7u8; size].into();
        entry
    }

    fn snapshot(index: u64, term: u64, voters: Vec<u64>) -> Snapshot {
        let mut snapshot = Snapshot::default();
        snapshot.mut_metadata().index = index;
        snapshot.mut_metadata().term = term;
        snapshot.mut_metadata().mut_conf_state().voters = voters;
        snapshot
    }

    /// A log compacted at 3 (term 3) holding entries 4 and 5 (terms 4 and 5).
    fn log_3_to_5() -> LogState {
        let mut state = LogState::default();
        state
            .persist(
                Some(&snapshot(3, 3, vec![1])),
                &[entry(4, 4), entry(5, 5)],
                None,
            )
            .unwrap();
        state
    }

    fn store_error(error: raft::StorageError) -> raft::Error {
        raft::Error::Store(error)
    }

    #[test]
    fn term_answers_for_the_snapshot_index_and_retained_entries() {
        let state = log_3_to_5();
        let cases = [
            (2, Err(store_error(raft::StorageError::Compacted))),
            (3, Ok(3)),
            (4, Ok(4)),
            (5, Ok(5)),
            (6, Err(store_error(raft::StorageError::Unavailable))),
        ];
        for (index, expected) in cases {
            assert_eq!(state.term(index), expected, "term({index})");
        }
        assert_eq!(LogState::default().term(0), Ok(0));
    }

    #[test]
    fn entries_honour_bounds_and_max_size() {
        let mut state = LogState::default();
        state
            .persist(
                Some(&snapshot(3, 3, vec![1])),
                &[
                    entry_with_data(4, 4, 10),
                    entry_with_data(5, 5, 10),
                    entry_with_data(6, 6, 10),
                ],
                None,
            )
            .unwrap();
        let size = u64::from(protobuf::Message::compute_size(&entry_with_data(4, 4, 10)));
        let all = vec![
            entry_with_data(4, 4, 10),
            entry_with_data(5, 5, 10),
            entry_with_data(6, 6, 10),
        ];
        type Case = (u64, u64, Option<u64>, raft::Result<Vec<Entry>>);
        let cases: Vec<Case> = vec![
            (2, 6, None, Err(store_error(raft::StorageError::Compacted))),
            (3, 4, None, Err(store_error(raft::StorageError::Compacted))),
            (4, 5, None, Ok(all[..1].to_vec())),
            (4, 7, None, Ok(all.clone())),
            (4, 7, Some(NO_LIMIT), Ok(all.clone())),
            // Always at least one entry.
            (4, 7, Some(0), Ok(all[..1].to_vec())),
            (4, 7, Some(size), Ok(all[..1].to_vec())),
            (4, 7, Some(2 * size - 1), Ok(all[..1].to_vec())),
            (4, 7, Some(2 * size), Ok(all[..2].to_vec())),
            (4, 7, Some(3 * size - 1), Ok(all[..2].to_vec())),
            (4, 7, Some(3 * size), Ok(all.clone())),
            (5, 5, None, Ok(Vec::new())),
            (7, 7, None, Ok(Vec::new())),
            (
                4,
                8,
                None,
                Err(store_error(raft::StorageError::Unavailable)),
            ),
            (
                6,
                5,
                None,
                Err(store_error(raft::StorageError::Unavailable)),
            ),
        ];
        for (low, high, max_size, expected) in cases {
            assert_eq!(
                state.entries(low, high, max_size),
                expected,
                "entries({low}, {high}, {max_size:?})"
            );
        }
        assert_eq!(LogState::default().entries(1, 1, None), Ok(Vec::new()));
    }

    #[test]
    fn first_and_last_index_follow_snapshot_and_entries() {
        let empty = LogState::default();
        assert_eq!((empty.first_index(), empty.last_index()), (1, 0));
        let state = log_3_to_5();
        assert_eq!((state.first_index(), state.last_index()), (4, 5));
    }

    #[test]
    fn persist_appends_replaces_suffixes_and_refuses_gaps() {
        type Case = (Vec<Entry>, Result<Vec<Entry>, &'static str>);
        let cases: Vec<Case> = vec![
            (vec![], Ok(vec![entry(4, 4), entry(5, 5)])),
            // Same entries again: no change.
            (
                vec![entry(4, 4), entry(5, 5)],
                Ok(vec![entry(4, 4), entry(5, 5)]),
            ),
            // A conflicting entry replaces itself and everything after it.
            (
                vec![entry(4, 6), entry(5, 6)],
                Ok(vec![entry(4, 6), entry(5, 6)]),
            ),
            (vec![entry(5, 6)], Ok(vec![entry(4, 4), entry(5, 6)])),
            (
                vec![entry(4, 4), entry(5, 5), entry(6, 5)],
                Ok(vec![entry(4, 4), entry(5, 5), entry(6, 5)]),
            ),
            (
                vec![entry(6, 5)],
                Ok(vec![entry(4, 4), entry(5, 5), entry(6, 5)]),
            ),
            (
                vec![entry(5, 6), entry(6, 6)],
                Ok(vec![entry(4, 4), entry(5, 6), entry(6, 6)]),
            ),
            (vec![entry(4, 6)], Ok(vec![entry(4, 6)])),
            (vec![entry(3, 3), entry(4, 4)], Err("overwrite")),
            (vec![entry(7, 5)], Err("gap")),
            (vec![entry(5, 5), entry(7, 5)], Err("order")),
            (vec![entry(5, 5), entry(5, 5)], Err("order")),
        ];
        for (appended, expected) in cases {
            let mut state = log_3_to_5();
            let before = state.clone();
            let result = state.persist(None, &appended, None);
            match expected {
                Ok(entries) => {
                    result.unwrap();
                    assert_eq!(state.entries, entries, "appending {appended:?}");
                }
                Err(kind) => {
                    let error = result.unwrap_err();
                    let matches = match kind {
                        "overwrite" => matches!(error, StorageError::OverwriteCompacted { .. }),
                        "gap" => matches!(error, StorageError::EntryGap { .. }),
                        _ => matches!(error, StorageError::EntriesOutOfOrder { .. }),
                    };
                    assert!(matches, "appending {appended:?} gave {error:?}");
                    assert_eq!(state, before, "a failed persist changed the state");
                }
            }
        }
    }

    #[test]
    fn persist_with_a_snapshot_replaces_the_log_like_apply_snapshot() {
        let mut state = log_3_to_5();
        let hard_state = HardState {
            term: 9,
            commit: 5,
            ..HardState::default()
        };
        state.persist(None, &[], Some(&hard_state)).unwrap();

        let mut incoming = snapshot(7, 6, vec![1, 2]);
        incoming.data = b"state".to_vec().into();
        state
            .persist(Some(&incoming), &[entry(8, 6)], None)
            .unwrap();
        assert_eq!(state.first_index(), 8);
        assert_eq!(state.last_index(), 8);
        assert_eq!(state.term(7), Ok(6));
        // The term never goes back; the commit moves to the snapshot.
        assert_eq!(state.hard_state.term, 9);
        assert_eq!(state.hard_state.commit, 7);
        assert_eq!(state.conf_state.voters, vec![1, 2]);
        assert_eq!(state.snapshot(7), Ok(incoming.clone()));

        // An older snapshot is refused and changes nothing.
        let before = state.clone();
        let error = state
            .persist(Some(&snapshot(6, 6, vec![1])), &[], None)
            .unwrap_err();
        assert!(matches!(error, StorageError::SnapshotOutOfDate { .. }));
        assert_eq!(state, before);
        // Entries after a snapshot in the same call must start right after it.
        let error = state
            .persist(Some(&snapshot(10, 7, vec![1])), &[entry(12, 7)], None)
            .unwrap_err();
        assert!(matches!(error, StorageError::EntryGap { .. }));
        assert_eq!(state, before);
    }

    #[test]
    fn commit_never_passes_the_last_entry() {
        let mut state = log_3_to_5();
        state.set_commit(5).unwrap();
        assert!(matches!(
            state.set_commit(6),
            Err(StorageError::CommitBeyondLog {
                commit: 6,
                last_index: 5
            })
        ));
        let hard_state = HardState {
            commit: 7,
            ..HardState::default()
        };
        let before = state.clone();
        assert!(
            state
                .persist(None, &[entry(6, 5)], Some(&hard_state))
                .is_err()
        );
        assert_eq!(state, before);
        state
            .persist(None, &[entry(6, 5), entry(7, 5)], Some(&hard_state))
            .unwrap();
        assert_eq!(state.hard_state.commit, 7);
    }

    #[test]
    fn compact_keeps_the_term_of_the_snapshot_index() {
        let mut state = LogState::default();
        let entries: Vec<Entry> = (1..=5).map(|index| entry(index, 2)).collect();
        state.persist(None, &entries, None).unwrap();
        assert!(matches!(
            state.compact(3, &ConfState::default(), Vec::new()),
            Err(StorageError::CompactUncommitted {
                index: 3,
                commit: 0
            })
        ));
        state.set_commit(4).unwrap();
        let voters = ConfState {
            voters: vec![1, 2, 3],
            ..ConfState::default()
        };
        assert!(state.compact(3, &voters, b"three".to_vec()).unwrap());
        assert_eq!((state.first_index(), state.last_index()), (4, 5));
        assert_eq!(state.term(3), Ok(2));
        assert_eq!(
            state.term(2),
            Err(store_error(raft::StorageError::Compacted))
        );
        let snapshot = state.snapshot(3).unwrap();
        assert_eq!(snapshot.get_metadata().get_conf_state(), &voters);
        assert_eq!(&snapshot.data[..], b"three");
        assert_eq!(
            state.snapshot(4),
            Err(store_error(
                raft::StorageError::SnapshotTemporarilyUnavailable
            ))
        );
        // Compacting to an older index changes nothing.
        let before = state.clone();
        assert!(!state.compact(2, &voters, Vec::new()).unwrap());
        assert_eq!(state, before);
        // Compacting everything leaves an empty log after the snapshot.
        assert!(state.compact(4, &voters, b"four".to_vec()).unwrap());
        assert!(state.entries.is_empty() || state.first_index() == 5);
        assert_eq!((state.first_index(), state.last_index()), (5, 5));
    }

    #[test]
    fn a_never_compacted_log_has_no_snapshot_to_send() {
        assert_eq!(
            LogState::default().snapshot(0),
            Err(store_error(
                raft::StorageError::SnapshotTemporarilyUnavailable
            ))
        );
    }

    #[test]
    fn initialize_only_once_and_only_with_voters() {
        let mut state = LogState::default();
        assert!(!state.is_initialized());
        assert!(matches!(
            state.initialize(&ConfState::default()),
            Err(StorageError::NoVoters)
        ));
        let voters = ConfState {
            voters: vec![1],
            ..ConfState::default()
        };
        state.initialize(&voters).unwrap();
        assert!(state.is_initialized());
        assert_eq!(state.initial_state().conf_state, voters);
        assert!(matches!(
            state.initialize(&voters),
            Err(StorageError::AlreadyInitialized)
        ));
    }
}
