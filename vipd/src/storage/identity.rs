//! Which node a data directory belongs to: `data_dir/identity.json`, written once when the node
//! first gets its number (bootstrap from the cluster file, or joining a running cluster) and read
//! at every start. A node's PNN (and Raft id) comes from here, never from its position in the
//! cluster file, which may be reordered or lose entries.

use std::fs::{self, File, OpenOptions};
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::Path;

use serde::{Deserialize, Serialize};

use super::StorageError;
use crate::lease::Pnn;

const IDENTITY_FILE: &str = "identity.json";
const TEMPORARY_IDENTITY_FILE: &str = "identity.json.tmp";
/// The version of the identity file's format.
const IDENTITY_VERSION: u32 = 1;
/// The largest identity file read; a real one is under 200 bytes.
const MAX_IDENTITY_BYTES: u64 = 4096;

/// The node a data directory belongs to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub version: u32,
    /// The cluster's name (a data directory is never reused across clusters).
    pub cluster: String,
    /// The node's name.
    pub name: String,
    /// The node's number in the cluster, given once and never changed.
    pub pnn: Pnn,
}

impl NodeIdentity {
    pub fn new(cluster: &str, name: &str, pnn: Pnn) -> NodeIdentity {
        NodeIdentity {
            version: IDENTITY_VERSION,
            cluster: cluster.to_owned(),
            name: name.to_owned(),
            pnn,
        }
    }
}

fn io_error(action: &'static str, path: &Path) -> impl FnOnce(std::io::Error) -> StorageError {
    let path = path.to_path_buf();
    move |source| StorageError::Io {
        action,
        path,
        source,
    }
}

/// Reads `dir`'s identity; `None` when it has none yet.
pub(crate) fn read(dir: &Path) -> Result<Option<NodeIdentity>, StorageError> {
    let path = dir.join(IDENTITY_FILE);
    let text = match fs::metadata(&path) {
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(io_error("inspect", &path)(source)),
        Ok(metadata) if metadata.len() > MAX_IDENTITY_BYTES => {
            return Err(StorageError::BadIdentity {
                path,
                reason: format!("{} bytes is too long", metadata.len()),
            });
        }
        Ok(_) => fs::read(&path).map_err(io_error("read", &path))?,
    };
    let identity: NodeIdentity =
        serde_json::from_slice(&text).map_err(|error| StorageError::BadIdentity {
            path: path.clone(),
            reason: error.to_string(),
        })?;
    if identity.version != IDENTITY_VERSION {
        return Err(StorageError::BadIdentity {
            path,
            reason: format!(
                "format {}, this vipd reads {IDENTITY_VERSION}",
                identity.version
            ),
        });
    }
    Ok(Some(identity))
}

/// Writes `dir`'s identity durably: a temporary file, synced, renamed over the old one, and the
/// directory synced.
pub(crate) fn write(dir: &Path, identity: &NodeIdentity) -> Result<(), StorageError> {
    let temporary = dir.join(TEMPORARY_IDENTITY_FILE);
    let path = dir.join(IDENTITY_FILE);
    let text = serde_json::to_vec_pretty(identity).map_err(|error| StorageError::Encode {
        what: "identity",
        reason: error.to_string(),
    })?;
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(io_error("create", &temporary))?;
    file.write_all(&text)
        .and_then(|()| file.sync_all())
        .map_err(io_error("write", &temporary))?;
    fs::rename(&temporary, &path).map_err(io_error("rename into place", &path))?;
    File::open(dir)
        .and_then(|directory| directory.sync_all())
        .map_err(io_error("sync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_identity_round_trips_and_bad_files_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(read(dir.path()).unwrap(), None);
        let identity = NodeIdentity::new("gw1", "node4", 3);
        write(dir.path(), &identity).unwrap();
        assert_eq!(read(dir.path()).unwrap(), Some(identity));
        for bad in [
            &b"{"[..],
            b"{\"version\":9,\"cluster\":\"c\",\"name\":\"n\",\"pnn\":1}",
        ] {
            fs::write(dir.path().join(IDENTITY_FILE), bad).unwrap();
            assert!(matches!(
                read(dir.path()),
                Err(StorageError::BadIdentity { .. })
            ));
        }
        fs::write(dir.path().join(IDENTITY_FILE), vec![b' '; 5000]).unwrap();
        assert!(read(dir.path()).is_err());
    }
}
