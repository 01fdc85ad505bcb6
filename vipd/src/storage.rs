//! Raft log storage: the `LogStore` trait the node drives, and an in-memory log for the
//! deterministic simulation. (Placeholder until the on-disk log lands.)

use std::sync::{Arc, Mutex};

use raft::prelude::{ConfState, Entry, HardState, Snapshot};
use raft::storage::MemStorage;
use raft::{GetEntriesContext, RaftState, Storage};

/// Why the log could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("raft log: {0}")]
    Raft(#[from] raft::Error),
}

/// What the Raft node needs from its log beyond `raft::Storage`.
pub trait LogStore: Storage + Clone + Send + Sync + 'static {
    /// Persists, atomically and durably, what one `Ready` asks for.
    fn persist(
        &self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError>;
    /// Records the commit index a `LightReady` reports.
    fn set_commit(&self, commit: u64) -> Result<(), StorageError>;
    /// Records the configuration in effect after applying a conf change.
    fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), StorageError>;
    /// Replaces every entry up to `index` by a snapshot holding `data`.
    fn compact(
        &self,
        index: u64,
        conf_state: &ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError>;
    /// The latest snapshot's index and data.
    fn snapshot_data(&self) -> (u64, Vec<u8>);
    /// Whether the log holds anything yet.
    fn is_initialized(&self) -> bool;
    /// First start only: records the initial voters.
    fn initialize(&self, conf_state: &ConfState) -> Result<(), StorageError>;
}

/// An in-memory log with the same semantics as the disk log.
#[derive(Clone, Default)]
#[allow(
    missing_debug_implementations,
    reason = "raft's MemStorage has no Debug"
)]
pub struct MemLog {
    inner: MemStorage,
    snapshot: Arc<Mutex<Snapshot>>,
}

impl MemLog {
    /// An empty log.
    pub fn new() -> MemLog {
        MemLog::default()
    }

    fn saved_snapshot(&self) -> Snapshot {
        self.snapshot
            .lock()
            .map(|snapshot| snapshot.clone())
            .unwrap_or_default()
    }
}

impl Storage for MemLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        self.inner.initial_state()
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.inner.entries(low, high, max_size, context)
    }

    fn term(&self, idx: u64) -> raft::Result<u64> {
        self.inner.term(idx)
    }

    fn first_index(&self) -> raft::Result<u64> {
        self.inner.first_index()
    }

    fn last_index(&self) -> raft::Result<u64> {
        self.inner.last_index()
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        let snapshot = self.saved_snapshot();
        if snapshot.get_metadata().index < request_index {
            return Err(raft::Error::Store(
                raft::StorageError::SnapshotTemporarilyUnavailable,
            ));
        }
        Ok(snapshot)
    }
}

impl LogStore for MemLog {
    fn persist(
        &self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        let mut core = self.inner.wl();
        if let Some(snapshot) = snapshot {
            core.apply_snapshot(snapshot.clone())?;
            if let Ok(mut saved) = self.snapshot.lock() {
                *saved = snapshot.clone();
            }
        }
        core.append(entries)?;
        if let Some(hard_state) = hard_state {
            core.set_hardstate(hard_state.clone());
        }
        Ok(())
    }

    fn set_commit(&self, commit: u64) -> Result<(), StorageError> {
        self.inner.wl().mut_hard_state().commit = commit;
        Ok(())
    }

    fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), StorageError> {
        self.inner.wl().set_conf_state(conf_state.clone());
        Ok(())
    }

    fn compact(
        &self,
        index: u64,
        conf_state: &ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let term = self.inner.term(index)?;
        let mut snapshot = Snapshot::default();
        snapshot.set_data(data.into());
        let metadata = snapshot.mut_metadata();
        metadata.index = index;
        metadata.term = term;
        metadata.set_conf_state(conf_state.clone());
        self.inner.wl().compact(index + 1)?;
        if let Ok(mut saved) = self.snapshot.lock() {
            *saved = snapshot;
        }
        Ok(())
    }

    fn snapshot_data(&self) -> (u64, Vec<u8>) {
        let snapshot = self.saved_snapshot();
        (snapshot.get_metadata().index, snapshot.get_data().to_vec())
    }

    fn is_initialized(&self) -> bool {
        self.inner
            .initial_state()
            .is_ok_and(|state| state.initialized())
    }

    fn initialize(&self, conf_state: &ConfState) -> Result<(), StorageError> {
        self.inner.initialize_with_conf_state(conf_state.clone());
        Ok(())
    }
}
