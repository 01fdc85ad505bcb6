//! [`MemLog`]: the Raft log in memory only, for the deterministic simulation. It follows exactly
//! the rules of [`DiskLog`](super::DiskLog) (both keep a `LogState`), without files: a restart of
//! a simulated node keeps its `MemLog` (clones share it), as a real node keeps its `data_dir`.

use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState};

use super::state::LogState;
use super::{LogStore, StorageError};

/// A Raft log kept in memory; clones share one log.
#[derive(Debug, Clone, Default)]
pub struct MemLog {
    state: Arc<Mutex<LogState>>,
}

impl MemLog {
    pub fn new() -> MemLog {
        MemLog::default()
    }

    fn state(&self) -> MutexGuard<'_, LogState> {
        // Nothing panics while holding the lock, and every change is validated before it
        // mutates, so a poisoned lock still guards a consistent state.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl raft::Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(self.state().initial_state())
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.state().entries(low, high, max_size.into())
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        self.state().term(index)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.state().first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.state().last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        self.state().snapshot(request_index)
    }
}

impl LogStore for MemLog {
    fn persist(
        &self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        self.state().persist(snapshot, entries, hard_state)
    }

    fn set_commit(&self, commit: u64) -> Result<(), StorageError> {
        self.state().set_commit(commit)
    }

    fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), StorageError> {
        self.state().set_conf_state(conf_state);
        Ok(())
    }

    fn compact(
        &self,
        index: u64,
        conf_state: &ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        self.state().compact(index, conf_state, data).map(|_| ())
    }

    fn snapshot_data(&self) -> (u64, Vec<u8>) {
        let state = self.state();
        let snapshot = state.stored_snapshot();
        (snapshot.get_metadata().index, snapshot.data.to_vec())
    }

    fn is_initialized(&self) -> bool {
        self.state().is_initialized()
    }

    fn initialize(&self, conf_state: &ConfState) -> Result<(), StorageError> {
        self.state().initialize(conf_state)
    }
}
