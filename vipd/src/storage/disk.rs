//! [`DiskLog`]: the Raft log in `data_dir`, the I/O shell around `LogState` and the record
//! format. Each change is validated, written as one record and synced, and only then applied to
//! the in-memory state that every read answers from. The module documentation of `storage`
//! explains the file format and why a crash at any point is safe.

use std::fmt;
use std::fs::{self, DirBuilder, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use raft::eraftpb::{ConfState, Entry, HardState, Snapshot};
use raft::{GetEntriesContext, RaftState};

use super::record::{self, FileHeader, Record, ScanEnd};
use super::state::LogState;
use super::{LogStore, StorageError};

const LOCK_FILE: &str = "LOCK";
const LOG_FILE: &str = "raft.log";
const TEMPORARY_LOG_FILE: &str = "raft.log.tmp";

/// The Raft log of a node, kept in one directory. Clones share the open log.
#[derive(Clone)]
pub struct DiskLog {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    path: PathBuf,
    /// Holds the exclusive `flock` on `LOCK` for as long as the log is open.
    _lock_file: File,
    log: Mutex<OpenLog>,
}

/// The open file and what it holds.
struct OpenLog {
    state: LogState,
    file: File,
    /// Bytes of valid records; the next record is written here.
    len: u64,
    salt: u64,
    /// `set_commit` moved the commit index past what the file holds.
    commit_dirty: bool,
    /// A failed write could not be undone: the file may hold what memory does not.
    poisoned: bool,
}

impl fmt::Debug for DiskLog {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("DiskLog")
            .field("path", &self.inner.path)
            .finish_non_exhaustive()
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io {
        action,
        path,
        source,
    }
}

impl DiskLog {
    /// The node this data directory belongs to, if it was given one.
    pub fn identity(&self) -> Result<Option<super::NodeIdentity>, StorageError> {
        super::identity::read(&self.inner.dir)
    }

    /// Records the node this data directory belongs to (durably).
    pub fn set_identity(&self, identity: &super::NodeIdentity) -> Result<(), StorageError> {
        super::identity::write(&self.inner.dir, identity)
    }

    /// Opens the log in `dir`, creating the directory (mode 0700) and an empty log if they are
    /// missing, locking the directory against a second opener, and recovering what the last
    /// run wrote (see the module documentation).
    pub fn open(dir: &Path) -> Result<DiskLog, StorageError> {
        create_data_directory(dir)?;
        let lock_path = dir.join(LOCK_FILE);
        let lock_file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io_error("open lock file", &lock_path))?;
        match lock_exclusive(&lock_file) {
            Ok(()) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
                return Err(StorageError::Locked {
                    dir: dir.to_path_buf(),
                    lock_file: lock_path,
                });
            }
            Err(source) => {
                return Err(StorageError::Io {
                    action: "lock",
                    path: lock_path,
                    source,
                });
            }
        }

        let temporary = dir.join(TEMPORARY_LOG_FILE);
        match fs::remove_file(&temporary) {
            Ok(()) => tracing::info!(
                path = %temporary.display(),
                "removed an unfinished raft log rewrite"
            ),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(source) => {
                return Err(StorageError::Io {
                    action: "remove",
                    path: temporary,
                    source,
                });
            }
        }

        let path = dir.join(LOG_FILE);
        let log = match fs::read(&path) {
            Ok(bytes) => recover(&path, &bytes)?,
            Err(error) if error.kind() == io::ErrorKind::NotFound => {
                let state = LogState::default();
                let (file, len, salt) = write_new_log(dir, &path, &state)?;
                sync_directory(dir)?;
                OpenLog {
                    state,
                    file,
                    len,
                    salt,
                    commit_dirty: false,
                    poisoned: false,
                }
            }
            Err(source) => {
                return Err(StorageError::Io {
                    action: "read",
                    path,
                    source,
                });
            }
        };
        Ok(DiskLog {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                path,
                _lock_file: lock_file,
                log: Mutex::new(log),
            }),
        })
    }

    fn log(&self) -> MutexGuard<'_, OpenLog> {
        // Nothing panics while holding the lock; a poisoned lock still guards a consistent log.
        self.inner
            .log
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The log, if no earlier failure left it unusable.
    fn usable_log(&self) -> Result<MutexGuard<'_, OpenLog>, StorageError> {
        let log = self.log();
        if log.poisoned {
            return Err(StorageError::Poisoned {
                path: self.inner.path.clone(),
            });
        }
        Ok(log)
    }

    /// Makes `next` the whole log: a new file with one base record replaces the old one.
    fn replace_log(&self, log: &mut OpenLog, next: LogState) -> Result<(), StorageError> {
        let (file, len, salt) = write_new_log(&self.inner.dir, &self.inner.path, &next)?;
        // The new file is now the one a restart reads, but until the directory is synced a
        // crash may bring back the old one. Nothing may build on either until this succeeds.
        if let Err(error) = sync_directory(&self.inner.dir) {
            log.poisoned = true;
            return Err(error);
        }
        log.file = file;
        log.len = len;
        log.salt = salt;
        log.state = next;
        log.commit_dirty = false;
        Ok(())
    }
}

/// Creates `dir` and any missing parents (mode 0700), and syncs the directories that gained an
/// entry, so that a log acknowledged later cannot vanish with a directory that never reached
/// the disk.
fn create_data_directory(dir: &Path) -> Result<(), StorageError> {
    let missing: Vec<&Path> = dir
        .ancestors()
        .take_while(|ancestor| !ancestor.as_os_str().is_empty() && !ancestor.exists())
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(io_error("create data directory", dir))?;
    for created in missing {
        let parent = match created.parent() {
            Some(parent) if !parent.as_os_str().is_empty() => parent,
            _ => Path::new("."),
        };
        sync_directory(parent)?;
    }
    Ok(())
}

/// Reads a log file: checks its header, replays its records, and cuts off a torn tail.
fn recover(path: &Path, bytes: &[u8]) -> Result<OpenLog, StorageError> {
    let salt = match record::decode_file_header(bytes) {
        FileHeader::Valid { salt } => salt,
        FileHeader::OtherVersion(version) => {
            return Err(StorageError::UnsupportedVersion {
                path: path.to_path_buf(),
                version,
            });
        }
        FileHeader::NotALog => {
            return Err(StorageError::NotALog {
                path: path.to_path_buf(),
            });
        }
    };
    let mut state = LogState::default();
    let end = record::scan_records(bytes, salt, |_, record| {
        replay(&mut state, record).map_err(|error| error.to_string())
    })
    .map_err(|error| StorageError::Corrupt {
        path: path.to_path_buf(),
        offset: error.offset as u64,
        reason: error.reason,
    })?;
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .map_err(io_error("open", path))?;
    let len = match end {
        ScanEnd::Clean => bytes.len(),
        ScanEnd::TornTail { offset, reason } => {
            tracing::warn!(
                path = %path.display(),
                offset,
                discarded_bytes = bytes.len() - offset,
                reason,
                "discarding the torn tail of the raft log (a write that never completed)"
            );
            file.set_len(offset as u64)
                .map_err(io_error("truncate", path))?;
            offset
        }
    };
    // Bytes a crashed process wrote but never synced may still be only in the page cache; they
    // are part of the log from now on, so they must reach the disk before anything follows.
    file.sync_data().map_err(io_error("sync", path))?;
    Ok(OpenLog {
        state,
        file,
        len: len as u64,
        salt,
        commit_dirty: false,
        poisoned: false,
    })
}

/// Applies one recovered record through the same rules that accepted it at runtime.
fn replay(state: &mut LogState, record: Record) -> Result<(), StorageError> {
    match record {
        Record::Base {
            hard_state,
            conf_state,
            snapshot,
            entries,
        } => *state = LogState::from_parts(hard_state, conf_state, snapshot, entries)?,
        Record::Append {
            entries,
            hard_state,
        } => state.persist(None, &entries, hard_state.as_ref())?,
        Record::Commit(commit) => state.set_commit(commit)?,
        Record::ConfState(conf_state) => state.set_conf_state(&conf_state),
    }
    Ok(())
}

impl OpenLog {
    /// Writes one record at the end of the file with one write and syncs it. On failure the
    /// file is cut back to where it was; if even that fails, the log is poisoned.
    fn append_record(
        &mut self,
        path: &Path,
        what: &'static str,
        kind: u8,
        payload: &[u8],
    ) -> Result<(), StorageError> {
        if payload.len() > record::MAX_RECORD_LEN {
            return Err(StorageError::RecordTooLarge {
                what,
                len: payload.len(),
            });
        }
        let bytes = record::frame_record(self.salt, self.len, kind, payload);
        let written = self
            .file
            .write_all_at(&bytes, self.len)
            .and_then(|()| self.file.sync_data());
        match written {
            Ok(()) => {
                self.len += bytes.len() as u64;
                Ok(())
            }
            Err(source) => {
                // After a failed fdatasync the page cache may say anything; cutting the file
                // back and syncing that is what makes the failed record certainly absent.
                let undone = self
                    .file
                    .set_len(self.len)
                    .and_then(|()| self.file.sync_data());
                if let Err(undo_error) = undone {
                    tracing::error!(
                        path = %path.display(),
                        error = %undo_error,
                        "cannot undo a failed raft log write; refusing further changes"
                    );
                    self.poisoned = true;
                }
                Err(StorageError::Io {
                    action: "write to",
                    path: path.to_path_buf(),
                    source,
                })
            }
        }
    }
}

/// Writes `state` as a complete new log to the temporary file, syncs it and renames it over
/// `path`. The caller syncs the directory. On failure the old log is untouched.
fn write_new_log(
    dir: &Path,
    path: &Path,
    state: &LogState,
) -> Result<(File, u64, u64), StorageError> {
    let payload = record::encode_base(
        state.hard_state(),
        state.conf_state(),
        state.stored_snapshot(),
        state.retained_entries(),
    )
    .map_err(|reason| StorageError::Encode {
        what: "base",
        reason,
    })?;
    if payload.len() > record::MAX_RECORD_LEN {
        return Err(StorageError::RecordTooLarge {
            what: "base",
            len: payload.len(),
        });
    }
    let salt = new_salt();
    let mut bytes = record::encode_file_header(salt).to_vec();
    bytes.extend(record::frame_record(
        salt,
        record::FILE_HEADER_LEN as u64,
        record::KIND_BASE,
        &payload,
    ));
    let temporary = dir.join(TEMPORARY_LOG_FILE);
    let written = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .and_then(|mut file| {
            file.write_all(&bytes)?;
            file.sync_all()?;
            Ok(file)
        });
    let file = match written {
        Ok(file) => file,
        Err(source) => {
            remove_quietly(&temporary);
            return Err(StorageError::Io {
                action: "write",
                path: temporary,
                source,
            });
        }
    };
    if let Err(source) = fs::rename(&temporary, path) {
        remove_quietly(&temporary);
        return Err(StorageError::Io {
            action: "rename a rewritten raft log over",
            path: path.to_path_buf(),
            source,
        });
    }
    Ok((file, bytes.len() as u64, salt))
}

fn remove_quietly(path: &Path) {
    if let Err(error) = fs::remove_file(path) {
        tracing::warn!(path = %path.display(), %error, "cannot remove an unfinished raft log");
    }
}

fn sync_directory(dir: &Path) -> Result<(), StorageError> {
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error("sync directory", dir))
}

fn lock_exclusive(file: &File) -> io::Result<()> {
    // SAFETY: flock only reads the descriptor number, which `file` keeps open during the call.
    let result = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if result == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// A salt that differs between files, so that no record of one file passes in another.
fn new_salt() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos());
    hasher.write_u128(now);
    hasher.write_u32(std::process::id());
    hasher.finish()
}

impl Drop for Inner {
    /// Writes a commit index that no record carries yet, so that a clean shutdown keeps it.
    fn drop(&mut self) {
        let log = self.log.get_mut().unwrap_or_else(PoisonError::into_inner);
        if !log.commit_dirty || log.poisoned {
            return;
        }
        let payload = record::encode_commit(log.state.hard_state().commit);
        if let Err(error) = log.append_record(&self.path, "commit", record::KIND_COMMIT, &payload) {
            tracing::warn!(%error, "cannot record the commit index while closing the raft log");
        }
    }
}

impl raft::Storage for DiskLog {
    fn initial_state(&self) -> raft::Result<RaftState> {
        Ok(self.log().state.initial_state())
    }

    fn entries(
        &self,
        low: u64,
        high: u64,
        max_size: impl Into<Option<u64>>,
        _context: GetEntriesContext,
    ) -> raft::Result<Vec<Entry>> {
        self.log().state.entries(low, high, max_size.into())
    }

    fn term(&self, index: u64) -> raft::Result<u64> {
        self.log().state.term(index)
    }

    fn first_index(&self) -> raft::Result<u64> {
        Ok(self.log().state.first_index())
    }

    fn last_index(&self) -> raft::Result<u64> {
        Ok(self.log().state.last_index())
    }

    fn snapshot(&self, request_index: u64, _to: u64) -> raft::Result<Snapshot> {
        self.log().state.snapshot(request_index)
    }
}

impl LogStore for DiskLog {
    fn persist(
        &self,
        snapshot: Option<&Snapshot>,
        entries: &[Entry],
        hard_state: Option<&HardState>,
    ) -> Result<(), StorageError> {
        let mut log = self.usable_log()?;
        if let Some(snapshot) = snapshot {
            // An installed snapshot replaces the log: write the whole new log as a new file.
            let mut next = log.state.clone();
            next.persist(Some(snapshot), entries, hard_state)?;
            return self.replace_log(&mut log, next);
        }
        log.state.check_persist(None, entries, hard_state)?;
        let hard_state_after = match hard_state {
            Some(hard_state) => Some(hard_state.clone()),
            None if log.commit_dirty => Some(log.state.hard_state().clone()),
            None => None,
        };
        if entries.is_empty() && hard_state_after.is_none() {
            return Ok(());
        }
        let payload =
            record::encode_append(entries, hard_state_after.as_ref()).map_err(|reason| {
                StorageError::Encode {
                    what: "append",
                    reason,
                }
            })?;
        log.append_record(&self.inner.path, "append", record::KIND_APPEND, &payload)?;
        if let Err(error) = log.state.persist(None, entries, hard_state) {
            // Checked above, so this cannot happen; if it did, file and memory would differ.
            log.poisoned = true;
            return Err(error);
        }
        log.commit_dirty = false;
        Ok(())
    }

    fn set_commit(&self, commit: u64) -> Result<(), StorageError> {
        let mut log = self.usable_log()?;
        if log.state.hard_state().commit == commit {
            return Ok(());
        }
        log.state.set_commit(commit)?;
        log.commit_dirty = true;
        Ok(())
    }

    fn set_conf_state(&self, conf_state: &ConfState) -> Result<(), StorageError> {
        let mut log = self.usable_log()?;
        let payload =
            record::encode_conf_state(conf_state).map_err(|reason| StorageError::Encode {
                what: "conf state",
                reason,
            })?;
        log.append_record(
            &self.inner.path,
            "conf state",
            record::KIND_CONF_STATE,
            &payload,
        )?;
        log.state.set_conf_state(conf_state);
        Ok(())
    }

    fn compact(
        &self,
        index: u64,
        conf_state: &ConfState,
        data: Vec<u8>,
    ) -> Result<(), StorageError> {
        let mut log = self.usable_log()?;
        if !log.state.check_compact(index)? {
            return Ok(());
        }
        let mut next = log.state.clone();
        next.compact(index, conf_state, data)?;
        self.replace_log(&mut log, next)
    }

    fn snapshot_data(&self) -> (u64, Vec<u8>) {
        let log = self.log();
        let snapshot = log.state.stored_snapshot();
        (snapshot.get_metadata().index, snapshot.data.to_vec())
    }

    fn is_initialized(&self) -> bool {
        self.log().state.is_initialized()
    }

    fn initialize(&self, conf_state: &ConfState) -> Result<(), StorageError> {
        let mut log = self.usable_log()?;
        log.state.check_initialize(conf_state)?;
        let payload =
            record::encode_conf_state(conf_state).map_err(|reason| StorageError::Encode {
                what: "conf state",
                reason,
            })?;
        log.append_record(
            &self.inner.path,
            "conf state",
            record::KIND_CONF_STATE,
            &payload,
        )?;
        log.state.initialize(conf_state)
    }
}
