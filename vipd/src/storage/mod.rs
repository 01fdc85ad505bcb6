//! The Raft log of a node: entries, hard state, configuration and the latest snapshot, kept in
//! `data_dir` by [`DiskLog`] so that they survive restarts of any or all nodes, or in memory by
//! [`MemLog`] for the deterministic simulation. Both implement [`LogStore`] (raft-rs's
//! `Storage` plus what the node loop needs to write) with the same rules, which are those of
//! raft-rs's `MemStorage` (`state::LogState` holds them, free of I/O).
//!
//! # Files and format (version 1)
//!
//! `data_dir/identity.json` says which node of which cluster the directory belongs to (its PNN,
//! see `identity`). `data_dir/LOCK` is held with an exclusive `flock` while a `DiskLog` is open, so two daemons
//! never share a data directory. `data_dir/raft.log` is the log: a 24-byte header (magic
//! `VIPDRAFT`, format version `u32`, a random salt `u64`, CRC-32 of those 20 bytes) and then
//! records back to back, each `[len u32][crc32 u32][kind u8][head-crc u32][payload]` (little
//! endian): `crc32` is the payload's CRC, and `head-crc` covers the salt, the record's own file
//! offset, `len`, `crc32` and `kind`, so bytes of another file or of another position never pass
//! as a record here. Kinds: *base* (the whole log: hard state, configuration, snapshot with its
//! data, retained entries; only ever the first record), *append* (one `persist`: entries and the
//! hard state after it), *commit* and *conf state*. Payload fields are fixed-width integers and
//! protobuf messages behind a `u32` length. Opening replays the records through the same
//! `LogState` methods that changed the state the first time.
//!
//! # Why a crash loses nothing acknowledged and shows nothing half-done
//!
//! 1. Every call that changes the log writes exactly one record, with one `write` at the end of
//!    the file, and `fdatasync`s it before it returns and before the in-memory state changes.
//!    (`set_commit` only changes memory; the next record carries the commit in its hard state,
//!    closing the log writes it, and a commit lost in a crash is learnt again from the leader.)
//! 2. So when a node crashes, only the last record can be incomplete, and it was never
//!    acknowledged; every record before it had been synced before it was begun.
//! 3. Opening reads records until one is incomplete or fails a CRC. If no valid record header
//!    starts at any later offset, that record is the torn tail of the last write: the file is
//!    truncated to the last good record and synced. If one does, a record that was acknowledged
//!    has been damaged since, and opening fails naming the file and the offset rather than
//!    silently dropping acknowledged records. Opening also syncs the file, because a process
//!    that crashed may have left written-but-unsynced bytes in the page cache.
//! 4. A snapshot (`compact`, or one installed by `persist`) writes the whole new log as one base
//!    record to `raft.log.tmp`, syncs it, renames it over `raft.log` and syncs the directory
//!    before returning. A crash before the rename leaves the old log, after it the new one,
//!    both complete; opening deletes a leftover `raft.log.tmp`. Memory holds only the retained
//!    entries and the latest snapshot.
//! 5. A write that fails is undone (the file truncated back and synced) and memory is left as
//!    it was. If undoing fails too, the log refuses every later call and the node must restart;
//!    the restart then sees the call entirely or not at all, exactly as after a crash.
//!
//! What this cannot tell apart: damage to the very last record after it was acknowledged looks
//! like a torn write, and that record is dropped.

mod disk;
mod identity;
mod mem;
mod record;
mod state;

use std::io;
use std::path::PathBuf;

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};

pub use disk::DiskLog;
pub use identity::NodeIdentity;
pub use mem::MemLog;

/// What the Raft node needs from its log beyond `raft::Storage`.
pub trait LogStore: raft::Storage + Clone + Send + Sync + 'static {
    /// Persists, atomically and durably (fsynced before returning), what one `Ready` asks for:
    /// the snapshot if any (which replaces the log), then `entries` (an entry whose index is
    /// already present replaces it and everything after it), then the hard state if any.
    /// After an error nothing of this call may be visible, in memory or after a restart.
    fn persist(
        &self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError>;
    /// Records the commit index a `LightReady` reports. May be written lazily (with the next
    /// persist), because the commit index can be recovered from the leader.
    fn set_commit(&self, commit: u64) -> Result<(), StorageError>;
    /// Records the configuration in effect after the node applied a conf change; durable.
    fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), StorageError>;
    /// Replaces every entry up to and including `index` (which the caller has applied) by a
    /// snapshot holding `data` (the state machine as of `index`) and `conf_state`. Durable.
    fn compact(
        &self,
        index: u64,
        conf_state: &ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError>;
    /// The latest snapshot's data and index (what to load the state machine from at start).
    fn snapshot_data(&self) -> (u64, Vec<u8>);
    /// Whether the log holds anything yet (false on a node's very first start).
    fn is_initialized(&self) -> bool;
    /// First start only: records the initial configuration (the voters) so that
    /// `initial_state()` returns it.
    fn initialize(&self, conf_state: &ConfState) -> Result<(), StorageError>;
}

/// Why the log could not be opened or changed.
#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("cannot {action} {}", path.display())]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error(
        "data directory {} is in use by another vipd (its lock file {} is held)",
        dir.display(),
        lock_file.display()
    )]
    Locked { dir: PathBuf, lock_file: PathBuf },
    #[error("{} is not a vipd raft log (its header is missing or damaged)", path.display())]
    NotALog { path: PathBuf },
    #[error(
        "raft log {} has format version {version}; this vipd reads version {}",
        path.display(),
        record::FORMAT_VERSION
    )]
    UnsupportedVersion { path: PathBuf, version: u32 },
    #[error(
        "raft log {} is damaged at byte {offset}: {reason}; refusing to start rather than \
         drop acknowledged records",
        path.display()
    )]
    Corrupt {
        path: PathBuf,
        offset: u64,
        reason: String,
    },
    #[error(
        "raft log {} refuses changes: an earlier write failed and could not be undone; \
         restart the node",
        path.display()
    )]
    Poisoned { path: PathBuf },
    #[error("cannot encode a {what} record: {reason}")]
    Encode { what: &'static str, reason: String },
    #[error("a {what} record of {len} bytes exceeds the limit of {max} bytes", max = record::MAX_RECORD_LEN)]
    RecordTooLarge { what: &'static str, len: usize },
    #[error("snapshot at index {index} is older than the log, whose first index is {first_index}")]
    SnapshotOutOfDate { index: u64, first_index: u64 },
    #[error("entries start at index {index}, before the log's first index {first_index}")]
    OverwriteCompacted { index: u64, first_index: u64 },
    #[error("entries start at index {index}, after the log's last index {last_index} plus one")]
    EntryGap { index: u64, last_index: u64 },
    #[error("entry index {index} follows entry index {previous} in one batch")]
    EntriesOutOfOrder { index: u64, previous: u64 },
    #[error("commit index {commit} is beyond the log's last index {last_index}")]
    CommitBeyondLog { commit: u64, last_index: u64 },
    #[error("cannot compact to index {index}: the commit index is only {commit}")]
    CompactUncommitted { index: u64, commit: u64 },
    #[error("the raft log is already initialized")]
    AlreadyInitialized,
    #[error("an initial configuration needs at least one voter")]
    NoVoters,
    #[error("{} is not a usable node identity: {reason}", path.display())]
    BadIdentity { path: PathBuf, reason: String },
}

impl From<StorageError> for raft::Error {
    fn from(error: StorageError) -> raft::Error {
        raft::Error::Store(raft::StorageError::Other(Box::new(error)))
    }
}
