//! The volume probe: is the shared volume mounted here, and does it take a small durable write?
//!
//! A node must not serve clients from an empty directory where the volume should be (a failed
//! mount at boot), nor from a mount that has gone read-only or hangs. The probe checks, in order:
//! `statfs` of the mount root (a dead FUSE client answers "transport endpoint is not connected"),
//! that the path is the root of a mount (statx's `STATX_ATTR_MOUNT_ROOT`, or a device different
//! from its parent's where the kernel does not report that attribute), and a write of
//! `<mount>/.vipgate/health/<node>` that is fsynced, read back, compared and removed. Each node
//! writes its own file, so nodes sharing the volume never race. A hung mount makes the check
//! block in the kernel; the monitor's timeout turns that into a failure.

use std::ffi::CString;
use std::fs;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use super::Probe;

/// Where below the mount root the probe writes, as path components.
const PROBE_DIRECTORY: [&str; 2] = [".vipgate", "health"];

/// Why a volume probe cannot be built.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VolumeProbeError {
    #[error("volume mount path {0} is not absolute")]
    RelativeMount(PathBuf),
    #[error("node name {0:?} cannot name a file (empty, `.`, `..`, or contains `/` or NUL)")]
    BadNodeName(String),
}

/// Checks that a volume is mounted at a path and takes a durable write.
#[derive(Debug)]
pub struct VolumeProbe {
    name: String,
    mount: PathBuf,
    directory: PathBuf,
    file: PathBuf,
    node: String,
    /// Makes every write differ, so a read-back of stale bytes is caught.
    sequence: AtomicU64,
}

impl VolumeProbe {
    /// A probe of the volume mounted at `mount` (absolute), writing as node `node`.
    pub fn new(mount: impl Into<PathBuf>, node: &str) -> Result<VolumeProbe, VolumeProbeError> {
        let mount = mount.into();
        if !mount.is_absolute() {
            return Err(VolumeProbeError::RelativeMount(mount));
        }
        if node.is_empty() || node == "." || node == ".." || node.contains(['/', '\0']) {
            return Err(VolumeProbeError::BadNodeName(node.to_owned()));
        }
        let directory = PROBE_DIRECTORY
            .iter()
            .fold(mount.clone(), |path, part| path.join(part));
        Ok(VolumeProbe {
            name: format!("volume {}", mount.display()),
            file: directory.join(node),
            directory,
            mount,
            node: node.to_owned(),
            sequence: AtomicU64::new(0),
        })
    }

    /// The file the probe writes.
    pub fn probe_file(&self) -> &Path {
        &self.file
    }

    fn write_and_read_back(&self) -> Result<(), String> {
        let file = self.file.display();
        fs::create_dir_all(&self.directory)
            .map_err(|error| format!("cannot create {}: {error}", self.directory.display()))?;
        let sequence = self.sequence.fetch_add(1, Ordering::Relaxed);
        let contents = format!("{} {} {sequence}\n", self.node, std::process::id());
        let mut handle = fs::File::create(&self.file)
            .map_err(|error| format!("cannot write {file}: {error}"))?;
        handle
            .write_all(contents.as_bytes())
            .map_err(|error| format!("cannot write {file}: {error}"))?;
        handle
            .sync_all()
            .map_err(|error| format!("cannot fsync {file}: {error}"))?;
        drop(handle);
        let read = fs::read(&self.file).map_err(|error| format!("cannot read {file}: {error}"))?;
        if read != contents.as_bytes() {
            return Err(format!(
                "{file} reads back {} bytes that differ from the {} written",
                read.len(),
                contents.len()
            ));
        }
        fs::remove_file(&self.file).map_err(|error| format!("cannot remove {file}: {error}"))
    }
}

impl Probe for VolumeProbe {
    fn name(&self) -> &str {
        &self.name
    }

    fn check(&self) -> Result<(), String> {
        let mount = self.mount.display();
        statfs(&self.mount).map_err(|error| format!("cannot statfs {mount}: {error}"))?;
        match is_mount_root(&self.mount) {
            Ok(true) => {}
            Ok(false) => {
                return Err(format!(
                    "{mount} is not a mount point: the volume is not mounted"
                ));
            }
            Err(error) => return Err(format!("cannot stat {mount}: {error}")),
        }
        self.write_and_read_back()
    }
}

fn c_path(path: &Path) -> std::io::Result<CString> {
    CString::new(path.as_os_str().as_bytes()).map_err(|_| {
        std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("path {} has a NUL byte", path.display()),
        )
    })
}

fn statfs(path: &Path) -> std::io::Result<()> {
    let path = c_path(path)?;
    // SAFETY: statfs is plain old data; all-zero is a valid value.
    let mut buffer: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: `path` is NUL-terminated and `buffer` is a valid statfs for the kernel to fill.
    if unsafe { libc::statfs(path.as_ptr(), &mut buffer) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether `path` (following symlinks) is the root of a mount.
fn is_mount_root(path: &Path) -> std::io::Result<bool> {
    let c_path = c_path(path)?;
    // SAFETY: statx is plain old data; all-zero is a valid value.
    let mut buffer: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `c_path` is NUL-terminated and `buffer` is a valid statx for the kernel to fill.
    let result = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c_path.as_ptr(),
            libc::AT_NO_AUTOMOUNT,
            libc::STATX_BASIC_STATS,
            &mut buffer,
        )
    };
    if result != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mount_root = libc::STATX_ATTR_MOUNT_ROOT as u64;
    if buffer.stx_attributes_mask & mount_root != 0 {
        return Ok(buffer.stx_attributes & mount_root != 0);
    }
    // Kernels before 5.8 do not report the attribute: a mount root lies on another device than
    // its parent, or is `/` itself (its parent is itself). A bind mount of the same filesystem
    // is missed here, which only errs towards "not mounted".
    let own = fs::metadata(path)?;
    let parent = fs::metadata(path.join(".."))?;
    Ok(own.dev() != parent.dev() || own.ino() == parent.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_paths_are_checked() {
        assert!(VolumeProbe::new("/srv/volume", "node1").is_ok());
        assert_eq!(
            VolumeProbe::new("srv/volume", "node1").unwrap_err(),
            VolumeProbeError::RelativeMount("srv/volume".into())
        );
        for node in ["", ".", "..", "a/b", "a\0b"] {
            assert_eq!(
                VolumeProbe::new("/srv/volume", node).unwrap_err(),
                VolumeProbeError::BadNodeName(node.into()),
                "{node:?}"
            );
        }
        let probe = VolumeProbe::new("/srv/volume", "node1").unwrap();
        assert_eq!(probe.name(), "volume /srv/volume");
        assert_eq!(
            probe.probe_file(),
            Path::new("/srv/volume/.vipgate/health/node1")
        );
    }

    #[test]
    fn the_root_directory_is_a_mount_point() {
        assert!(is_mount_root(Path::new("/")).unwrap());
    }

    #[test]
    fn a_plain_directory_is_not_mounted() {
        let directory = tempfile::tempdir().unwrap();
        let probe = VolumeProbe::new(directory.path(), "node1").unwrap();
        let reason = probe.check().unwrap_err();
        assert_eq!(
            reason,
            format!(
                "{} is not a mount point: the volume is not mounted",
                directory.path().display()
            )
        );
        // Nothing was written into the directory that stands in for the volume.
        assert_eq!(fs::read_dir(directory.path()).unwrap().count(), 0);
    }

    #[test]
    fn a_missing_mount_fails_with_its_path() {
        let directory = tempfile::tempdir().unwrap();
        let missing = directory.path().join("absent");
        let reason = VolumeProbe::new(&missing, "node1")
            .unwrap()
            .check()
            .unwrap_err();
        assert!(
            reason.starts_with(&format!("cannot statfs {}: ", missing.display()))
                && reason.contains("No such file"),
            "{reason}"
        );
    }
}
