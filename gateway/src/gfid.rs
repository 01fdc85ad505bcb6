//! GlusterFS file handles: the [`GfidResolver`] names every object by its GFID, the 16-byte
//! UUID GlusterFS gives each file and directory of a volume, which is the same on every client
//! mount (DESIGN.md, "GlusterFS FUSE mounts are the trap": kernel handles there are per-mount
//! FUSE node ids and go stale on every other node).
//!
//! How each call works (measured on GlusterFS 10.3; the figures are in BENCHMARKS.md, "GFID
//! handle resolver"):
//!
//! * **Object id** — the raw `glusterfs.gfid` extended attribute (16 bytes; the text form
//!   `glusterfs.gfid.string` is read when the raw one is missing). The gateway's descriptors are
//!   `O_PATH`, on which `fgetxattr` fails with `EBADF`, and so does `getxattrat(fd, "",
//!   AT_EMPTY_PATH)` (Linux 6.13 takes the descriptor with `fdget`, which refuses `O_PATH`;
//!   measured on 6.18). So a descriptor's attribute is read with `getxattr` on its
//!   `/proc/self/fd/N` link: following that magic link lands on the very inode of the
//!   descriptor, a symbolic link included (measured: the link's own GFID, not its target's).
//!   A name in a directory is read with `getxattrat(dir, name, AT_SYMLINK_NOFOLLOW)`, a path
//!   lookup that does take an `O_PATH` directory, and on kernels before 6.13 with `lgetxattr`
//!   on `/proc/self/fd/N/name`. Each read is a round trip to the glusterfs client process.
//! * **Open** — the volume must be mounted with `-o aux-gfid-mount`, which adds the virtual
//!   directory `.gfid` at the volume root: `<root>/.gfid/<uuid>` opens any object by GFID on any
//!   node, wherever it has been renamed to (`ENOENT` once it is deleted). For files and symbolic
//!   links that is the object itself. A *directory* opened there is a virtual inode of the
//!   `gfid-access` translator: another inode number and GFID, `..` leads to `.gfid`, and
//!   listing it fails with `EOPNOTSUPP`. So a directory is opened again by its real path, which
//!   the virtual inode's `glusterfs.ancestry.path` attribute names, beneath the volume root
//!   (`openat2` with `RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS`), and the result is checked to be
//!   the directory asked for; a rename racing with that is retried, then reported stale.
//!   The path is remembered (per resolver, at most 16 Ki directories), so the next open of
//!   that directory is one `openat2` and a check, unless it has moved since.
//! * **Cross-check** — FUSE reports the GFID's last 8 bytes (big-endian) as `st_ino`, unless
//!   the mount uses `enable-ino32`. [`GfidResolver::new`] checks this on the volume root (GFID
//!   `…0001`, inode 1) and the export root; when it holds, every opened object's `st_ino` is
//!   compared with the GFID asked for (free: the gateway stats every object it opens), otherwise
//!   the GFID attribute is read back.
//!
//! Containment is what it is for kernel handles: a handle is issued only for an object reached
//! by a contained lookup beneath the export root and is sealed with the cluster's MAC
//! (`handle`'s module documentation), and it names the object, not its path. An object renamed
//! out of a subdirectory export afterwards still resolves through a handle issued before, on
//! the same volume mount, exactly as `open_by_handle_at` resolves it (knfsd without
//! `subtree_check` behaves alike); no new handle is issued for it from outside the export.

use std::collections::HashMap;
use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::handle::{Incarnation, ObjectId, ObjectResolver, ResolverError, filesystem_name};
use crate::{creds, sys};

/// The scheme byte of GFID object ids in handles.
pub const GFID_SCHEME: u8 = 2;
/// `statfs` magic of FUSE file systems.
pub const FUSE_MAGIC: i64 = 0x6573_5546;
/// The file-system type `/proc/self/mountinfo` shows for a GlusterFS FUSE mount.
pub const GLUSTERFS_FSTYPE: &str = "fuse.glusterfs";

const GFID_XATTR: &CStr = c"glusterfs.gfid";
const GFID_STRING_XATTR: &CStr = c"glusterfs.gfid.string";
const ANCESTRY_XATTR: &CStr = c"glusterfs.ancestry.path";
/// The kernel's limit on an extended attribute's value (`XATTR_SIZE_MAX`).
const MAX_XATTR: usize = 64 * 1024;
/// How often a directory whose path changed under us is looked up again before it is stale.
const DIRECTORY_ATTEMPTS: usize = 3;

/// A GlusterFS GFID.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Gfid(pub [u8; 16]);

/// The GFID of every volume's root directory.
pub const ROOT_GFID: Gfid = Gfid([0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);

impl Gfid {
    /// The GFID an object id holds; `None` unless it is exactly 16 bytes.
    pub fn from_object(id: &ObjectId) -> Option<Gfid> {
        id.as_bytes().try_into().ok().map(Gfid)
    }

    pub fn object_id(&self) -> ObjectId {
        ObjectId::from_array(&self.0)
    }

    /// The inode number a GlusterFS FUSE mount reports: the last 8 bytes, big-endian.
    pub fn inode(&self) -> u64 {
        let mut tail = [0u8; 8];
        tail.copy_from_slice(&self.0[8..]);
        u64::from_be_bytes(tail)
    }

    /// The canonical text form, `8-4-4-4-12` lower-case hexadecimal digits.
    pub fn to_uuid(&self) -> String {
        let mut text = String::with_capacity(36);
        for (index, byte) in self.0.iter().enumerate() {
            if matches!(index, 4 | 6 | 8 | 10) {
                text.push('-');
            }
            text.push(char::from(HEX[usize::from(byte >> 4)]));
            text.push(char::from(HEX[usize::from(byte & 0x0f)]));
        }
        text
    }

    /// Parses the canonical text form (either case); `None` for anything else.
    pub fn parse(text: &[u8]) -> Option<Gfid> {
        if text.len() != 36 {
            return None;
        }
        let mut bytes = [0u8; 16];
        let mut digits = text
            .iter()
            .enumerate()
            .filter(|(index, _)| !matches!(index, 8 | 13 | 18 | 23));
        if [8, 13, 18, 23].iter().any(|&index| text[index] != b'-') {
            return None;
        }
        for byte in &mut bytes {
            let high = hex_value(*digits.next()?.1)?;
            let low = hex_value(*digits.next()?.1)?;
            *byte = high << 4 | low;
        }
        Some(Gfid(bytes))
    }

    /// `.gfid/<uuid>`, the name that opens the object beneath an `aux-gfid-mount` volume root.
    fn aux_path(&self) -> CString {
        // Hex digits and dashes never contain a NUL byte.
        CString::new(format!(".gfid/{}", self.to_uuid())).unwrap_or_default()
    }
}

impl std::fmt::Debug for Gfid {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.to_uuid())
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn hex_value(digit: u8) -> Option<u8> {
    match digit {
        b'0'..=b'9' => Some(digit - b'0'),
        b'a'..=b'f' => Some(digit - b'a' + 10),
        b'A'..=b'F' => Some(digit - b'A' + 10),
        _ => None,
    }
}

/// The path `glusterfs.ancestry.path` names (absolute within the volume, e.g. `/demo/sub`), as
/// a name relative to the volume root: `None` for the root itself, `Err` for anything that is
/// not a plain absolute path (empty components, `.`/`..`, NUL bytes).
pub fn relative_ancestry_path(value: &[u8]) -> Result<Option<CString>, io::Error> {
    let invalid = || io::Error::from_raw_os_error(libc::EINVAL);
    // The value may or may not carry the C string's terminating NUL.
    let value = value.strip_suffix(&[0]).unwrap_or(value);
    let relative = value.strip_prefix(b"/").ok_or_else(invalid)?;
    if relative.is_empty() {
        return Ok(None);
    }
    if relative
        .split(|&byte| byte == b'/')
        .any(|component| matches!(component, b"" | b"." | b".."))
    {
        return Err(invalid());
    }
    CString::new(relative).map(Some).map_err(|_| invalid())
}

/// One line of `/proc/self/mountinfo`, the fields vipgate reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountEntry {
    pub mount_id: u64,
    /// The directory of the mounted file system that this mount shows (`/` for a whole one).
    pub root: String,
    pub mount_point: String,
    pub fstype: String,
    pub source: String,
}

/// The entry of mount `mount_id` in a `/proc/self/mountinfo` text (see proc(5)).
pub fn mount_entry(mountinfo: &str, mount_id: u64) -> Option<MountEntry> {
    mount_entries(mountinfo).find(|entry| entry.mount_id == mount_id)
}

/// Every well-formed entry of a `/proc/self/mountinfo` text, in its order (parents first).
pub fn mount_entries(mountinfo: &str) -> impl Iterator<Item = MountEntry> + '_ {
    mountinfo.lines().filter_map(|line| {
        let mut fields = line.split(' ');
        let id: u64 = fields.next()?.parse().ok()?;
        let _parent = fields.next()?;
        let _device = fields.next()?;
        let root = unescape_mountinfo(fields.next()?);
        let mount_point = unescape_mountinfo(fields.next()?);
        // Mount options, then optional fields up to the "-" separator.
        let mut rest = fields.skip(1).skip_while(|field| *field != "-").skip(1);
        let fstype = unescape_mountinfo(rest.next()?);
        let source = unescape_mountinfo(rest.next().unwrap_or(""));
        Some(MountEntry {
            mount_id: id,
            root,
            mount_point,
            fstype,
            source,
        })
    })
}

/// Undoes the kernel's octal escapes (`\040` for a space, also tab, newline and backslash).
fn unescape_mountinfo(field: &str) -> String {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        if bytes[index] == b'\\'
            && let Some(octal) = bytes.get(index + 1..index + 4)
            && octal.iter().all(|digit| (b'0'..=b'7').contains(digit))
        {
            let value = octal
                .iter()
                .fold(0u32, |value, digit| value * 8 + u32::from(digit - b'0'));
            if let Ok(byte) = u8::try_from(value) {
                out.push(byte);
                index += 4;
                continue;
            }
        }
        out.push(bytes[index]);
        index += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The mount entry of mount `mount_id` in this process's mount namespace.
pub fn read_mount_entry(mount_id: u64) -> io::Result<Option<MountEntry>> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(mount_entry(&text, mount_id))
}

/// Set once `getxattrat` turned out to be missing (Linux before 6.13); then only the
/// `/proc/self/fd` fallback is used.
static GETXATTRAT_MISSING: AtomicBool = AtomicBool::new(false);

/// `getxattrat(2)`'s argument block (`struct xattr_args`).
#[repr(C)]
struct XattrArgs {
    value: u64,
    size: u32,
    flags: u32,
}

/// The system call number of `getxattrat`, the same on every architecture (Linux 6.13).
const SYS_GETXATTRAT: libc::c_long = 464;

/// Where an extended attribute is read from.
#[derive(Clone, Copy)]
enum XattrTarget<'a> {
    /// The object a descriptor (`O_PATH` included) refers to.
    Descriptor(BorrowedFd<'a>),
    /// `name` inside directory `dir`, not following a final symbolic link.
    Entry(BorrowedFd<'a>, &'a CStr),
}

/// Reads attribute `name` of `target` into `buffer`; returns its length. `getxattrat` when the
/// kernel has it, otherwise a `/proc/self/fd` path (see the module documentation).
fn get_xattr(target: XattrTarget<'_>, name: &CStr, buffer: &mut [u8]) -> io::Result<usize> {
    if matches!(target, XattrTarget::Entry(..)) && !GETXATTRAT_MISSING.load(Ordering::Relaxed) {
        match getxattrat(target, name, buffer) {
            Err(error) if error.raw_os_error() == Some(libc::ENOSYS) => {
                GETXATTRAT_MISSING.store(true, Ordering::Relaxed);
            }
            outcome => return outcome,
        }
    }
    get_xattr_by_proc_path(target, name, buffer)
}

fn getxattrat(target: XattrTarget<'_>, name: &CStr, buffer: &mut [u8]) -> io::Result<usize> {
    let (dir, path, flags) = match target {
        XattrTarget::Descriptor(fd) => (fd, c"", libc::AT_EMPTY_PATH | libc::AT_SYMLINK_NOFOLLOW),
        XattrTarget::Entry(dir, entry) => (dir, entry, libc::AT_SYMLINK_NOFOLLOW),
    };
    let mut args = XattrArgs {
        value: buffer.as_mut_ptr() as u64,
        size: u32::try_from(buffer.len()).unwrap_or(u32::MAX),
        flags: 0,
    };
    // SAFETY: `path` and `name` are NUL-terminated; `args` points at `buffer`, valid for
    // `args.size` bytes of writes, and we pass its exact size; the kernel writes at most that.
    let result = unsafe {
        libc::syscall(
            SYS_GETXATTRAT,
            dir.as_raw_fd(),
            path.as_ptr(),
            flags,
            name.as_ptr(),
            &mut args as *mut XattrArgs,
            std::mem::size_of::<XattrArgs>(),
        )
    };
    usize::try_from(result).map_err(|_| io::Error::last_os_error())
}

fn get_xattr_by_proc_path(
    target: XattrTarget<'_>,
    name: &CStr,
    buffer: &mut [u8],
) -> io::Result<usize> {
    let result = match target {
        XattrTarget::Descriptor(fd) => {
            let path = sys::proc_path(fd);
            // SAFETY: `path` and `name` are NUL-terminated; `buffer` is valid for its length.
            unsafe {
                libc::getxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            }
        }
        XattrTarget::Entry(dir, entry) => {
            let mut path = sys::proc_path(dir).into_bytes();
            path.push(b'/');
            path.extend_from_slice(entry.to_bytes());
            let path =
                CString::new(path).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
            // SAFETY: as above; `lgetxattr` does not follow the final component.
            unsafe {
                libc::lgetxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            }
        }
    };
    usize::try_from(result).map_err(|_| io::Error::last_os_error())
}

/// Reads a whole attribute of unknown length (at most the kernel's 64 KiB).
fn get_xattr_value(target: XattrTarget<'_>, name: &CStr) -> io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; 256];
    loop {
        match get_xattr(target, name, &mut buffer) {
            Ok(length) => {
                buffer.truncate(length);
                return Ok(buffer);
            }
            Err(error)
                if error.raw_os_error() == Some(libc::ERANGE) && buffer.len() < MAX_XATTR =>
            {
                buffer.resize((buffer.len() * 4).min(MAX_XATTR), 0);
            }
            Err(error) => return Err(error),
        }
    }
}

/// The GFID of `target`: the raw attribute, or the text one when the raw one is missing.
fn read_gfid(target: XattrTarget<'_>) -> io::Result<Gfid> {
    let mut raw = [0u8; 16];
    match get_xattr(target, GFID_XATTR, &mut raw) {
        Ok(16) => return Ok(Gfid(raw)),
        Ok(_) => {}
        Err(error)
            if !matches!(
                error.raw_os_error(),
                Some(libc::ENODATA | libc::EOPNOTSUPP | libc::ERANGE)
            ) =>
        {
            return Err(error);
        }
        Err(_) => {}
    }
    let mut text = [0u8; 64];
    let length = get_xattr(target, GFID_STRING_XATTR, &mut text)?;
    let text = &text[..length];
    let text = text.strip_suffix(&[0]).unwrap_or(text);
    Gfid::parse(text).ok_or_else(|| io::Error::from_raw_os_error(libc::EIO))
}

/// GlusterFS GFID handles through an `aux-gfid-mount` (see the module documentation).
#[derive(Debug)]
pub struct GfidResolver {
    /// The volume's root directory on this node, `O_PATH`: `.gfid` lives here, not in the
    /// export root when the export is a subdirectory.
    volume_root: OwnedFd,
    /// Where the volume is mounted, for messages.
    mount_point: String,
    /// Whether `st_ino` is the GFID's last 8 bytes on this mount (checked at start).
    inode_is_gfid: bool,
    /// Where directories were found last (relative to the volume root), so that the next open
    /// of one skips the `.gfid` lookup and the ancestry query when it has not moved. Only a
    /// hint: the directory found there is checked to be the one asked for.
    directories: Mutex<HashMap<Gfid, CString>>,
    /// Descriptors of objects reached recently (by name or by GFID), by GFID.
    descriptors: Mutex<Descriptors>,
}

/// How many directory paths a resolver remembers before it forgets them all.
const MAX_REMEMBERED_DIRECTORIES: usize = 16 * 1024;

/// Descriptors (`O_PATH`) of objects the gateway reached recently, by GFID, in two generations of
/// at most `generation_size` each (a full current generation replaces the previous one, whose
/// descriptors are closed). Opening a GFID again is then a `dup`, where `.gfid/<uuid>` is a
/// FUSE lookup that the glusterfs client sends to the bricks whenever the kernel's entry for it
/// is older than the mount's entry timeout (1 s): about 0.5 ms (measured in the lab), for every
/// call on a handle the node has not opened in the last second. A GFID names its object for
/// good and a descriptor follows it through renames, so this answers exactly what the lookup
/// would; an object deleted meanwhile is found out by the `fstat` that follows every open, as
/// with a dentry the kernel still caches. Directories are kept as the real ones the resolver
/// opened, never the virtual `.gfid` inodes. NFS-Ganesha's GLUSTER FSAL keeps a gfapi object
/// per cached entry in the same way.
#[derive(Debug)]
struct Descriptors {
    current: HashMap<Gfid, OwnedFd>,
    previous: HashMap<Gfid, OwnedFd>,
    generation_size: usize,
}

impl Descriptors {
    fn new(capacity: usize) -> Self {
        let generation_size = (capacity / 2).max(1);
        Descriptors {
            current: HashMap::with_capacity(generation_size),
            previous: HashMap::with_capacity(generation_size),
            generation_size,
        }
    }

    /// A new descriptor of `gfid`'s object, if one is kept.
    fn get(&mut self, gfid: Gfid) -> Option<OwnedFd> {
        if let Some(fd) = self.current.get(&gfid) {
            return fd.try_clone().ok();
        }
        let fd = self.previous.remove(&gfid)?;
        let copy = fd.try_clone().ok();
        self.insert(gfid, fd);
        copy
    }

    fn insert(&mut self, gfid: Gfid, fd: OwnedFd) {
        if self.current.len() >= self.generation_size && !self.current.contains_key(&gfid) {
            self.previous = std::mem::take(&mut self.current);
            self.current.reserve(self.generation_size);
        }
        self.current.insert(gfid, fd);
    }

    fn len(&self) -> usize {
        self.current.len() + self.previous.len()
    }
}

/// How many descriptors a resolver keeps: a quarter of the process's descriptor limit, at most
/// 16 Ki (and at least 256). Kept `O_PATH` descriptors cost the kernel an open file each and
/// keep the object's inode in the FUSE and glusterfs caches; no data stays open.
fn descriptor_capacity() -> usize {
    let soft = sys::open_files_limit().unwrap_or(1024);
    usize::try_from(soft / 4)
        .unwrap_or(usize::MAX)
        .clamp(256, 16 * 1024)
}

impl GfidResolver {
    /// Checks that the export root `root` (described as `path` in errors) is on a GlusterFS
    /// FUSE mount of the whole volume made with `aux-gfid-mount`, and that its own handle
    /// resolves back to it.
    pub fn new(root: &OwnedFd, path: &str) -> Result<Self, ResolverError> {
        let io_error = |source| ResolverError::Io {
            path: path.to_owned(),
            source,
        };
        let statfs = sys::fstatfs(root.as_fd()).map_err(io_error)?;
        let root_stat = sys::fstat(root.as_fd()).map_err(io_error)?;
        let entry = read_mount_entry(root_stat.mount_id).map_err(io_error)?;
        let fstype = entry.as_ref().map(|entry| entry.fstype.as_str());
        if statfs.magic != FUSE_MAGIC || fstype != Some(GLUSTERFS_FSTYPE) {
            return Err(ResolverError::NotGlusterfs {
                path: path.to_owned(),
                filesystem: fstype.map_or_else(|| filesystem_name(statfs.magic), str::to_owned),
            });
        }
        let (mount_point, source) = entry.map_or_else(
            || (path.to_owned(), String::new()),
            |entry| (entry.mount_point, entry.source),
        );
        let volume_root = mount_root(root, root_stat.mount_id).map_err(io_error)?;
        let volume_gfid =
            read_gfid(XattrTarget::Descriptor(volume_root.as_fd())).map_err(|source| {
                ResolverError::Io {
                    path: mount_point.clone(),
                    source,
                }
            })?;
        // A `subdir-mount` shows a subdirectory as its root, GFID `…0001` included; its
        // ancestry path (or the mount's source, `server:volume/subdirectory`) tells.
        let subdirectory =
            match get_xattr_value(XattrTarget::Descriptor(volume_root.as_fd()), ANCESTRY_XATTR) {
                Ok(value) => relative_ancestry_path(&value)
                    .ok()
                    .flatten()
                    .map(|path| format!("/{}", path.to_string_lossy())),
                Err(_) => source
                    .split_once(':')
                    .and_then(|(_, volume)| volume.split_once('/'))
                    .map(|(_, path)| format!("/{path}")),
            };
        if volume_gfid != ROOT_GFID || subdirectory.is_some() {
            return Err(ResolverError::GlusterfsSubdirectoryMount {
                mount_point,
                subdirectory: subdirectory.unwrap_or_else(|| volume_gfid.to_uuid()),
            });
        }
        let export_gfid = read_gfid(XattrTarget::Descriptor(root.as_fd())).map_err(io_error)?;
        match sys::openat(
            Some(volume_root.as_fd()),
            &export_gfid.aux_path(),
            libc::O_PATH | libc::O_NOFOLLOW,
        ) {
            Ok(_) => {}
            Err(error) if matches!(error.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => {
                return Err(ResolverError::NoAuxGfidMount { mount_point });
            }
            Err(source) => {
                return Err(ResolverError::Io {
                    path: format!("{mount_point}/.gfid"),
                    source,
                });
            }
        }
        let volume_stat = sys::fstat(volume_root.as_fd()).map_err(io_error)?;
        let inode_is_gfid =
            volume_stat.ino == ROOT_GFID.inode() && root_stat.ino == export_gfid.inode();
        let resolver = GfidResolver {
            volume_root,
            mount_point,
            inode_is_gfid,
            directories: Mutex::new(HashMap::new()),
            descriptors: Mutex::new(Descriptors::new(descriptor_capacity())),
        };
        let reopened = resolver.open(&export_gfid.object_id()).map_err(|source| {
            ResolverError::CannotOpenGfid {
                path: path.to_owned(),
                gfid: export_gfid.to_uuid(),
                source,
            }
        })?;
        let again = sys::fstat(reopened.as_fd()).map_err(io_error)?;
        if !again.same_object(&root_stat) {
            return Err(ResolverError::Mismatch {
                path: path.to_owned(),
            });
        }
        Ok(resolver)
    }

    /// Where the volume is mounted on this node.
    pub fn mount_point(&self) -> &str {
        &self.mount_point
    }

    /// Whether opened objects are checked by inode number (see the module documentation).
    pub fn checks_inode(&self) -> bool {
        self.inode_is_gfid
    }

    /// Whether `fd` (with attributes `stat`) is the object `gfid` names.
    fn is_object(&self, fd: BorrowedFd<'_>, stat: &sys::Stat, gfid: Gfid) -> io::Result<bool> {
        if self.inode_is_gfid {
            return Ok(stat.ino == gfid.inode());
        }
        Ok(read_gfid(XattrTarget::Descriptor(fd))? == gfid)
    }

    /// Opens a directory by the real path its virtual `.gfid` inode names, and checks it.
    fn open_directory(&self, virtual_directory: &OwnedFd, gfid: Gfid) -> io::Result<OwnedFd> {
        for _ in 0..DIRECTORY_ATTEMPTS {
            let value = get_xattr_value(
                XattrTarget::Descriptor(virtual_directory.as_fd()),
                ANCESTRY_XATTR,
            )?;
            let Some(relative) = relative_ancestry_path(&value)? else {
                return self.volume_root.try_clone();
            };
            // `None`: renamed between the two calls; ask again.
            if let Some(opened) = self.open_directory_at(&relative, gfid)? {
                self.remember_directory(gfid, relative);
                return Ok(opened);
            }
        }
        Err(io::Error::from_raw_os_error(libc::ESTALE))
    }

    /// Opens `relative` beneath the volume root if it is directory `gfid`; `None` if nothing,
    /// or something else, is there now.
    fn open_directory_at(&self, relative: &CStr, gfid: Gfid) -> io::Result<Option<OwnedFd>> {
        let opened = match sys::openat2(
            self.volume_root.as_fd(),
            relative,
            libc::O_PATH | libc::O_NOFOLLOW | libc::O_DIRECTORY,
            0,
            sys::RESOLVE_CONTAINED | libc::RESOLVE_NO_SYMLINKS,
        ) {
            Ok(opened) => opened,
            Err(error)
                if matches!(
                    error.raw_os_error(),
                    Some(libc::ENOENT | libc::ENOTDIR | libc::ELOOP | libc::EXDEV)
                ) =>
            {
                return Ok(None);
            }
            Err(error) => return Err(error),
        };
        let stat = sys::fstat(opened.as_fd())?;
        Ok(self
            .is_object(opened.as_fd(), &stat, gfid)?
            .then_some(opened))
    }

    /// Opens directory `gfid` by the path it had when last opened, if that still holds it.
    fn open_remembered_directory(&self, gfid: Gfid) -> Option<OwnedFd> {
        let relative = self.directories().get(&gfid).cloned()?;
        match self.open_directory_at(&relative, gfid) {
            Ok(Some(opened)) => Some(opened),
            _ => {
                self.directories().remove(&gfid);
                None
            }
        }
    }

    fn remember_directory(&self, gfid: Gfid, relative: CString) {
        let mut directories = self.directories();
        if directories.len() >= MAX_REMEMBERED_DIRECTORIES {
            directories.clear();
        }
        directories.insert(gfid, relative);
    }

    /// Opens `gfid`'s object through `.gfid` (files) or its real path (directories).
    fn open_uncached(&self, gfid: Gfid) -> io::Result<OwnedFd> {
        if let Some(opened) = self.open_remembered_directory(gfid) {
            return Ok(opened);
        }
        let opened = sys::openat(
            Some(self.volume_root.as_fd()),
            &gfid.aux_path(),
            libc::O_PATH | libc::O_NOFOLLOW,
        )?;
        let stat = sys::fstat(opened.as_fd())?;
        if stat.is_dir() {
            return self.open_directory(&opened, gfid);
        }
        if !self.is_object(opened.as_fd(), &stat, gfid)? {
            return Err(io::Error::from_raw_os_error(libc::ESTALE));
        }
        Ok(opened)
    }

    fn descriptors(&self) -> std::sync::MutexGuard<'_, Descriptors> {
        // Plain maps: a poisoned lock is usable.
        self.descriptors
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Keeps an `O_PATH` descriptor of `fd`'s object, `gfid`. Never a copy of an open file: a
    /// file kept open on this node would stay alive on the bricks after another node deleted
    /// it, and its handle would never turn stale.
    fn remember_descriptor(&self, gfid: Gfid, fd: BorrowedFd<'_>) {
        if self.descriptors().current.contains_key(&gfid) {
            return;
        }
        let kept = if sys::is_path_only(fd) {
            fd.try_clone_to_owned()
        } else {
            sys::reopen(fd, libc::O_PATH)
        };
        if let Ok(kept) = kept {
            self.descriptors().insert(gfid, kept);
        }
    }

    /// How many object descriptors the resolver keeps now (tests and diagnostics).
    pub fn kept_descriptors(&self) -> usize {
        self.descriptors().len()
    }

    fn directories(&self) -> std::sync::MutexGuard<'_, HashMap<Gfid, CString>> {
        // The map holds no invariant a panic could break halfway: a poisoned lock is usable.
        self.directories
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// The root of the mount `fd` is on: `..` is followed while it stays on mount `mount_id`.
fn mount_root(fd: &OwnedFd, mount_id: u64) -> io::Result<OwnedFd> {
    let mut current = fd.try_clone()?;
    let mut current_stat = sys::fstat(current.as_fd())?;
    // A path has at most PATH_MAX / 2 components; anything longer is a loop.
    for _ in 0..libc::PATH_MAX / 2 {
        let parent = sys::openat(
            Some(current.as_fd()),
            c"..",
            libc::O_PATH | libc::O_DIRECTORY,
        )?;
        let parent_stat = sys::fstat(parent.as_fd())?;
        if parent_stat.mount_id != mount_id || parent_stat.same_object(&current_stat) {
            return Ok(current);
        }
        current = parent;
        current_stat = parent_stat;
    }
    Err(io::Error::from_raw_os_error(libc::ELOOP))
}

/// Runs `operation` with the daemon's file-system identity. Reading an attribute outside the
/// `user.`/`trusted.`/`security.` namespaces needs read permission on the object, so a caller
/// who may look a file up but not read it (mode 0600, someone else's) would get no id, where
/// `name_to_handle_at` checks nothing: ids are read as the daemon, as kernel handles are made.
fn as_daemon<T>(operation: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    // `setfsuid(-1)` changes nothing and returns the current file-system uid.
    if sys::set_fsuid(u32::MAX) == 0 {
        return operation();
    }
    creds::run_as(&creds::Identity::root(), operation)
        .unwrap_or_else(|error| Err(io::Error::other(error)))
}

impl ObjectResolver for GfidResolver {
    fn scheme(&self) -> u8 {
        GFID_SCHEME
    }

    fn object_id(&self, fd: BorrowedFd<'_>) -> io::Result<ObjectId> {
        let gfid = as_daemon(|| read_gfid(XattrTarget::Descriptor(fd)))?;
        // Reached by name (LOOKUP, CREATE, a listing): the handle just made will most likely be
        // used next.
        self.remember_descriptor(gfid, fd);
        Ok(gfid.object_id())
    }

    fn reached(&self, id: &ObjectId, fd: BorrowedFd<'_>) {
        if let Some(gfid) = Gfid::from_object(id) {
            self.remember_descriptor(gfid, fd);
        }
    }

    fn object_id_at(&self, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<ObjectId> {
        // One component inside `dir`: `..` would leave it.
        let bytes = name.to_bytes();
        if bytes.is_empty() || bytes == b".." || bytes.contains(&b'/') {
            return Err(io::Error::from_raw_os_error(libc::EINVAL));
        }
        as_daemon(|| read_gfid(XattrTarget::Entry(dir, name))).map(|gfid| gfid.object_id())
    }

    /// A GFID is random, assigned when the object is created and never reused; when `st_ino`
    /// is its last 8 bytes (checked at start, and on every open), the inode number alone names
    /// the incarnation. With `enable-ino32` it is a 32-bit hash of the GFID: nothing to rely on.
    fn incarnation(&self) -> Incarnation {
        if self.inode_is_gfid {
            Incarnation::InodeNumber
        } else {
            Incarnation::Untracked
        }
    }

    fn open(&self, id: &ObjectId) -> io::Result<OwnedFd> {
        let gfid =
            Gfid::from_object(id).ok_or_else(|| io::Error::from_raw_os_error(libc::ESTALE))?;
        if gfid == ROOT_GFID {
            return self.volume_root.try_clone();
        }
        if let Some(kept) = self.descriptors().get(gfid) {
            return Ok(kept);
        }
        let opened = self.open_uncached(gfid)?;
        self.remember_descriptor(gfid, opened.as_fd());
        Ok(opened)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_descriptors_are_bounded_and_name_their_object() {
        let directory = tempfile::tempdir().unwrap();
        let gfid = |index: u8| Gfid([index; 16]);
        let open = |index: u8| -> OwnedFd {
            let path = directory.path().join(index.to_string());
            std::fs::write(&path, [index]).unwrap();
            std::fs::File::open(&path).unwrap().into()
        };
        let mut kept = Descriptors::new(8);
        for index in 0..20u8 {
            kept.insert(gfid(index), open(index));
            assert!(kept.len() <= 8, "{} kept", kept.len());
        }
        // The newest are there, each a new descriptor of its own object.
        for index in 16..20u8 {
            let fd = kept.get(gfid(index)).unwrap();
            let path = directory.path().join(index.to_string());
            let expected = std::os::unix::fs::MetadataExt::ino(&path.metadata().unwrap());
            assert_eq!(sys::fstat(fd.as_fd()).unwrap().ino, expected);
        }
        // The oldest were dropped (their descriptors closed).
        assert!(kept.get(gfid(0)).is_none());
        // A hit in the previous generation moves forward and survives the next rotation.
        kept.insert(gfid(30), open(30));
        assert!(kept.get(gfid(16)).is_some());
        for index in 40..44u8 {
            kept.insert(gfid(index), open(index));
        }
        assert!(kept.get(gfid(16)).is_some());
        assert!(kept.len() <= 8);
    }

    #[test]
    fn gfids_print_and_parse_in_canonical_form() {
        let cases: [(&str, Option<[u8; 16]>); 7] = [
            (
                "63a66d6d-cb71-4f1e-b424-a03f68d7c38f",
                Some([
                    0x63, 0xa6, 0x6d, 0x6d, 0xcb, 0x71, 0x4f, 0x1e, 0xb4, 0x24, 0xa0, 0x3f, 0x68,
                    0xd7, 0xc3, 0x8f,
                ]),
            ),
            ("00000000-0000-0000-0000-000000000001", Some(ROOT_GFID.0)),
            ("63A66D6D-CB71-4F1E-B424-A03F68D7C38F", Some([0; 16])),
            ("63a66d6dcb714f1eb424a03f68d7c38f", None),
            ("63a66d6d-cb71-4f1e-b424-a03f68d7c38", None),
            ("63a66d6d-cb71-4f1e-b424_a03f68d7c38f", None),
            ("63a66d6d-cb71-4f1e-b424-a03f68d7c38g", None),
        ];
        for (text, expected) in cases {
            let parsed = Gfid::parse(text.as_bytes());
            match expected {
                Some(bytes) if bytes == [0; 16] => {
                    // Upper case parses to the same GFID and prints in lower case.
                    let gfid = parsed.unwrap();
                    assert_eq!(gfid.to_uuid(), text.to_lowercase());
                }
                Some(bytes) => {
                    assert_eq!(parsed, Some(Gfid(bytes)), "{text}");
                    assert_eq!(Gfid(bytes).to_uuid(), text);
                }
                None => assert_eq!(parsed, None, "{text}"),
            }
        }
    }

    #[test]
    fn the_inode_is_the_last_eight_bytes() {
        // Measured on a GlusterFS 10.3 FUSE mount: this file's st_ino.
        let gfid = Gfid::parse(b"63a66d6d-cb71-4f1e-b424-a03f68d7c38f").unwrap();
        assert_eq!(gfid.inode(), 12_980_676_220_190_966_671);
        assert_eq!(ROOT_GFID.inode(), 1);
        assert_eq!(
            gfid.aux_path().as_bytes(),
            b".gfid/63a66d6d-cb71-4f1e-b424-a03f68d7c38f"
        );
    }

    #[test]
    fn object_ids_hold_exactly_sixteen_bytes() {
        let gfid = Gfid([7; 16]);
        assert_eq!(Gfid::from_object(&gfid.object_id()), Some(gfid));
        for length in [0, 8, 15, 17, 32] {
            let id = ObjectId::new(&vec![1; length]).unwrap();
            assert_eq!(Gfid::from_object(&id), None, "{length} bytes");
        }
    }

    #[test]
    fn ancestry_paths_become_contained_relative_names() {
        let ok = |value: &[u8], expected: Option<&str>| {
            let relative = relative_ancestry_path(value).unwrap();
            assert_eq!(
                relative.as_ref().map(|name| name.to_str().unwrap()),
                expected,
                "{value:?}"
            );
        };
        ok(b"/", None);
        ok(b"/\0", None);
        ok(b"/demo", Some("demo"));
        ok(b"/demo/sub dir/deep\0", Some("demo/sub dir/deep"));
        for bad in [
            &b""[..],
            b"demo",
            b"//demo",
            b"/demo/",
            b"/demo//sub",
            b"/demo/../etc",
            b"/./demo",
            b"/..",
            b"/de\0mo",
        ] {
            assert!(relative_ancestry_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn mountinfo_lines_give_fstype_and_mount_point() {
        let text = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda rw
47 27 0:41 / /run/vipgate/labs/gf1/gluster/node1/mnt rw,relatime - fuse.glusterfs 198.51.100.11:gv rw,user_id=0
48 22 0:41 /demo /srv/with\\040space rw,relatime shared:5 master:2 - fuse.glusterfs 198.51.100.11:gv rw
49 22 0:42 / /broken
";
        let entry = mount_entry(text, 47).unwrap();
        assert_eq!(entry.fstype, GLUSTERFS_FSTYPE);
        assert_eq!(entry.mount_point, "/run/vipgate/labs/gf1/gluster/node1/mnt");
        assert_eq!(entry.root, "/");
        assert_eq!(entry.source, "198.51.100.11:gv");
        let entry = mount_entry(text, 48).unwrap();
        assert_eq!(entry.mount_point, "/srv/with space");
        assert_eq!(entry.root, "/demo");
        assert_eq!(entry.fstype, GLUSTERFS_FSTYPE);
        assert_eq!(mount_entry(text, 22).unwrap().fstype, "ext4");
        assert_eq!(mount_entry(text, 49), None);
        assert_eq!(mount_entry(text, 50), None);
        assert_eq!(unescape_mountinfo("a\\134b\\011c\\0"), "a\\b\tc\\0");
    }

    /// Both ways of reading an attribute of an `O_PATH` descriptor (and of a name in a
    /// directory) work on files, directories and symbolic links, and `fgetxattr` really fails.
    #[test]
    fn attributes_of_path_descriptors_are_read_both_ways() {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!(
                "SKIPPED: trusted.* attributes (the only ones symbolic links take) need root"
            );
            return;
        }
        let directory = tempfile::tempdir().unwrap();
        let base = directory.path();
        std::fs::create_dir(base.join("dir")).unwrap();
        std::fs::write(base.join("file"), b"x").unwrap();
        std::os::unix::fs::symlink("file", base.join("link")).unwrap();
        let name = c"trusted.vipgate-test";
        let set = |entry: &str, value: &[u8]| {
            let path = CString::new(base.join(entry).as_os_str().as_encoded_bytes()).unwrap();
            // SAFETY: NUL-terminated path and name, value valid for its length.
            let result = unsafe {
                libc::lsetxattr(
                    path.as_ptr(),
                    name.as_ptr(),
                    value.as_ptr().cast(),
                    value.len(),
                    0,
                )
            };
            assert_eq!(result, 0, "{entry}: {}", io::Error::last_os_error());
        };
        set("dir", b"d");
        set("file", b"f");
        set("link", b"l");
        let base_path = CString::new(base.as_os_str().as_encoded_bytes()).unwrap();
        let root = sys::openat(None, &base_path, libc::O_PATH | libc::O_DIRECTORY).unwrap();
        for (entry, value) in [("dir", b"d"), ("file", b"f"), ("link", b"l")] {
            let entry_name = CString::new(entry).unwrap();
            let fd = sys::openat(
                Some(root.as_fd()),
                &entry_name,
                libc::O_PATH | libc::O_NOFOLLOW,
            )
            .unwrap();
            // SAFETY: fgetxattr with a null buffer of size 0 only asks for the length.
            let direct =
                unsafe { libc::fgetxattr(fd.as_raw_fd(), name.as_ptr(), std::ptr::null_mut(), 0) };
            assert_eq!(direct, -1, "fgetxattr on O_PATH should fail");
            let targets = [
                XattrTarget::Descriptor(fd.as_fd()),
                XattrTarget::Entry(root.as_fd(), &entry_name),
            ];
            for target in targets {
                let mut buffer = [0u8; 8];
                let length = get_xattr_by_proc_path(target, name, &mut buffer).unwrap();
                assert_eq!(&buffer[..length], value, "{entry} through /proc");
                assert_eq!(get_xattr_value(target, name).unwrap(), value);
            }
            let mut buffer = [0u8; 8];
            match getxattrat(
                XattrTarget::Entry(root.as_fd(), &entry_name),
                name,
                &mut buffer,
            ) {
                Ok(length) => assert_eq!(&buffer[..length], value, "{entry} by getxattrat"),
                Err(error) if error.raw_os_error() == Some(libc::ENOSYS) => {
                    eprintln!("getxattrat is missing on this kernel");
                }
                Err(error) => panic!("{entry}: getxattrat: {error}"),
            }
            // getxattrat refuses an O_PATH descriptor itself, as fgetxattr does.
            let outcome = getxattrat(XattrTarget::Descriptor(fd.as_fd()), name, &mut buffer);
            assert!(
                matches!(
                    outcome.map_err(|error| error.raw_os_error()),
                    Err(Some(libc::EBADF | libc::ENOSYS))
                ),
                "{entry}: getxattrat took an O_PATH descriptor"
            );
        }
        // A long value grows the buffer.
        set("file", &[b'v'; 1000]);
        let fd = sys::openat(Some(root.as_fd()), c"file", libc::O_PATH).unwrap();
        let value = get_xattr_value(XattrTarget::Descriptor(fd.as_fd()), name).unwrap();
        assert_eq!(value, vec![b'v'; 1000]);
    }

    #[test]
    fn a_non_glusterfs_export_is_refused() {
        let directory = tempfile::tempdir().unwrap();
        let root: OwnedFd = std::fs::File::open(directory.path()).unwrap().into();
        let error = GfidResolver::new(&root, "/srv/export").unwrap_err();
        assert!(
            matches!(error, ResolverError::NotGlusterfs { .. }),
            "{error:?}"
        );
        assert!(error.to_string().contains("/srv/export is on "), "{error}");
    }
}
