//! Failover-safe NFS file handles (DESIGN.md invariants 3 and 4): a versioned layout of at most
//! 64 bytes that names the export and the object, sealed with a MAC, plus the [`ObjectResolver`]
//! trait through which each kind of volume turns objects into stable ids and back.
//!
//! Layout (version 2), all integers big-endian:
//!
//! | bytes | field |
//! | --- | --- |
//! | 0 | layout version (2) |
//! | 1 | resolver scheme ([`KERNEL_SCHEME`] for `name_to_handle_at` handles, [`crate::gfid::GFID_SCHEME`] for GlusterFS GFIDs) |
//! | 2..10 | export id ([`ExportId`], a hash of the export's name) |
//! | 10 | object id length `n` (at most [`MAX_OBJECT_ID`]) |
//! | 11..11+n | object id, as the resolver wrote it |
//! | 11+n..19+n | MAC: SipHash-2-4 over bytes 0..11+n under the cluster's handle key (little-endian, as SipHash defines its output) |
//!
//! Version 1 had the same layout with the first 8 bytes of HMAC-SHA-256 as the MAC. It is still
//! accepted, so that clients holding handles from before an upgrade keep working; every node
//! issues version 2. SipHash-2-4 is a pseudorandom function with a 128-bit key made for short
//! inputs such as these (its authors propose it as a MAC for them), with the same 64-bit tag as
//! before; it costs about a tenth of HMAC-SHA-256 even with the SHA extensions, and a handle is
//! sealed for every READDIRPLUS entry not in the [`crate::handle_cache`] and checked on every
//! call (measured: the HMAC was 9.5 % of the server's CPU in READDIRPLUS of new files).
//!
//! Nothing in a handle depends on the node, its start time or its memory, so a handle issued by
//! one node resolves on every node that mounts the same volume. The MAC is what keeps handles
//! inside their export: the gateway only issues a handle for an object it reached by a contained
//! lookup beneath the export root, and a handle it did not issue (forged, edited, or pointing
//! at an object outside the export) fails the MAC and is refused as stale. The key is derived
//! from the cluster secret, which every node shares.

use std::fmt;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use sha2::{Digest, Sha256};

use crate::export::ExportId;
use crate::sys;

/// The largest NFSv3 file handle (`NFS3_FHSIZE`).
pub const MAX_HANDLE: usize = 64;
/// The layout version written into every handle.
pub const HANDLE_VERSION: u8 = 2;
/// The earlier layout version, still accepted: the same layout sealed with HMAC-SHA-256.
const HMAC_HANDLE_VERSION: u8 = 1;
/// The scheme byte of kernel (`name_to_handle_at`) object ids.
pub const KERNEL_SCHEME: u8 = 1;
const MAC_LENGTH: usize = 8;
const HEADER_LENGTH: usize = 11;
/// The largest object id that fits: 64 − 11 header bytes − 8 MAC bytes.
pub const MAX_OBJECT_ID: usize = MAX_HANDLE - HEADER_LENGTH - MAC_LENGTH;

/// A volume-level object id: opaque bytes a resolver produced, at most [`MAX_OBJECT_ID`].
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ObjectId {
    length: u8,
    bytes: [u8; MAX_OBJECT_ID],
}

impl ObjectId {
    /// `None` when `bytes` is longer than [`MAX_OBJECT_ID`].
    pub fn new(bytes: &[u8]) -> Option<Self> {
        if bytes.len() > MAX_OBJECT_ID {
            return None;
        }
        let mut id = ObjectId {
            length: bytes.len() as u8,
            bytes: [0; MAX_OBJECT_ID],
        };
        id.bytes[..bytes.len()].copy_from_slice(bytes);
        Some(id)
    }

    /// An id of exactly `N` bytes; that it fits is checked when compiling.
    pub fn from_array<const N: usize>(bytes: &[u8; N]) -> Self {
        const { assert!(N <= MAX_OBJECT_ID, "object id longer than MAX_OBJECT_ID") };
        let mut id = ObjectId {
            length: N as u8,
            bytes: [0; MAX_OBJECT_ID],
        };
        id.bytes[..N].copy_from_slice(bytes);
        id
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.length)]
    }
}

impl fmt::Debug for ObjectId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.as_bytes() {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// The secret that seals handles; the same on every node of a cluster.
///
/// Version 1's HMAC key is kept as the two SHA-256 states of HMAC after their padded key blocks,
/// so that checking such a handle hashes two blocks instead of four.
#[derive(Clone)]
pub struct HandleKey {
    siphash: [u64; 2],
    inner: Sha256,
    outer: Sha256,
}

impl HandleKey {
    /// Derives the handle keys from the cluster secret, so that they are the same on every node
    /// and change only if the secret does.
    pub fn from_cluster_secret(secret: &[u8]) -> Self {
        let derived = hmac_sha256(secret, b"vipgate nfs file handle key v2");
        let word = |bytes: &[u8]| {
            let mut word = [0u8; 8];
            word.copy_from_slice(bytes);
            u64::from_le_bytes(word)
        };
        let siphash = [word(&derived[..8]), word(&derived[8..16])];
        let key = hmac_sha256(secret, b"vipgate nfs file handle key v1");
        let (inner, outer) = hmac_states(&key);
        HandleKey {
            siphash,
            inner,
            outer,
        }
    }

    /// The MAC of a handle of the current layout over its sealed bytes.
    fn seal(&self, message: &[u8]) -> [u8; MAC_LENGTH] {
        siphash24(self.siphash, message).to_le_bytes()
    }

    /// The MAC of a handle of layout `version` over its sealed bytes; `None` for an unknown
    /// version.
    fn mac(&self, version: u8, message: &[u8]) -> Option<[u8; MAC_LENGTH]> {
        match version {
            HANDLE_VERSION => Some(self.seal(message)),
            HMAC_HANDLE_VERSION => {
                let inner = self.inner.clone().chain_update(message).finalize();
                let full: [u8; 32] = self.outer.clone().chain_update(inner).finalize().into();
                let mut mac = [0u8; MAC_LENGTH];
                mac.copy_from_slice(&full[..MAC_LENGTH]);
                Some(mac)
            }
            _ => None,
        }
    }
}

impl fmt::Debug for HandleKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HandleKey(<redacted>)")
    }
}

/// SipHash-2-4 (Aumasson and Bernstein, "SipHash: a fast short-input PRF", 2012) of `message`
/// under the 128-bit key `(k0, k1)`, the key's halves read little-endian.
fn siphash24([k0, k1]: [u64; 2], message: &[u8]) -> u64 {
    let mut v = [
        k0 ^ 0x736f_6d65_7073_6575,
        k1 ^ 0x646f_7261_6e64_6f6d,
        k0 ^ 0x6c79_6765_6e65_7261,
        k1 ^ 0x7465_6462_7974_6573,
    ];
    fn round(v: &mut [u64; 4]) {
        v[0] = v[0].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(13) ^ v[0];
        v[0] = v[0].rotate_left(32);
        v[2] = v[2].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(16) ^ v[2];
        v[0] = v[0].wrapping_add(v[3]);
        v[3] = v[3].rotate_left(21) ^ v[0];
        v[2] = v[2].wrapping_add(v[1]);
        v[1] = v[1].rotate_left(17) ^ v[2];
        v[2] = v[2].rotate_left(32);
    }
    let mut compress = |word: u64| {
        v[3] ^= word;
        round(&mut v);
        round(&mut v);
        v[0] ^= word;
    };
    let mut words = message.chunks_exact(8);
    for chunk in words.by_ref() {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        compress(u64::from_le_bytes(word));
    }
    // The last word: the remaining bytes, and the message length (mod 256) in the top byte.
    let mut last = [0u8; 8];
    let rest = words.remainder();
    last[..rest.len()].copy_from_slice(rest);
    last[7] = message.len() as u8;
    compress(u64::from_le_bytes(last));
    v[2] ^= 0xff;
    for _ in 0..4 {
        round(&mut v);
    }
    v[0] ^ v[1] ^ v[2] ^ v[3]
}

/// HMAC (RFC 2104) with SHA-256.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    let (inner, outer) = hmac_states(key);
    let inner = inner.chain_update(message).finalize();
    outer.chain_update(inner).finalize().into()
}

/// HMAC-SHA-256's inner and outer hash states after the key XOR ipad and opad blocks.
fn hmac_states(key: &[u8]) -> (Sha256, Sha256) {
    const BLOCK: usize = 64;
    let mut block_key = [0u8; BLOCK];
    if key.len() > BLOCK {
        block_key[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        block_key[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| block_key.map(|key_byte| key_byte ^ byte);
    (
        Sha256::new().chain_update(pad(0x36)),
        Sha256::new().chain_update(pad(0x5c)),
    )
}

/// Why handle bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum HandleError {
    /// Not a handle of ours at all: wrong length or layout version (NFS3ERR_BADHANDLE).
    #[error("malformed file handle of {length} bytes")]
    Malformed { length: usize },
    /// Well-formed but not issued by this cluster for this object (NFS3ERR_STALE).
    #[error("file handle fails its integrity check")]
    Forged,
}

/// Sealed handle bytes, at most [`MAX_HANDLE`], kept without an allocation (READDIRPLUS makes
/// one per entry, and the handle cache stores them).
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct HandleBytes {
    length: u8,
    bytes: [u8; MAX_HANDLE],
}

impl HandleBytes {
    /// `None` when `handle` is longer than [`MAX_HANDLE`].
    pub fn new(handle: &[u8]) -> Option<Self> {
        let mut bytes = [0; MAX_HANDLE];
        bytes.get_mut(..handle.len())?.copy_from_slice(handle);
        Some(HandleBytes {
            length: u8::try_from(handle.len()).ok()?,
            bytes,
        })
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..usize::from(self.length)]
    }

    /// The object id inside a handle this node sealed itself (from the handle cache): its
    /// layout is not checked again, nor its MAC. `None` when the bytes are not a handle.
    pub fn object_id(&self) -> Option<ObjectId> {
        let length = usize::from(*self.as_bytes().get(10)?);
        ObjectId::new(self.as_bytes().get(HEADER_LENGTH..HEADER_LENGTH + length)?)
    }
}

impl std::ops::Deref for HandleBytes {
    type Target = [u8];

    fn deref(&self) -> &[u8] {
        self.as_bytes()
    }
}

impl fmt::Debug for HandleBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HandleBytes({} bytes)", self.length)
    }
}

/// A decoded, authenticated handle.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileHandle {
    pub scheme: u8,
    pub export: ExportId,
    pub object: ObjectId,
}

impl FileHandle {
    /// The handle's wire bytes, sealed with `key`.
    pub fn seal(&self, key: &HandleKey) -> HandleBytes {
        let object = self.object.as_bytes();
        let sealed = HEADER_LENGTH + object.len();
        let mut handle = HandleBytes {
            // At most 11 + MAX_OBJECT_ID + 8 = MAX_HANDLE.
            length: (sealed + MAC_LENGTH) as u8,
            bytes: [0; MAX_HANDLE],
        };
        let bytes = &mut handle.bytes;
        bytes[0] = HANDLE_VERSION;
        bytes[1] = self.scheme;
        bytes[2..10].copy_from_slice(&self.export.0.to_be_bytes());
        bytes[10] = self.object.length;
        bytes[HEADER_LENGTH..sealed].copy_from_slice(object);
        let mac = key.seal(&bytes[..sealed]);
        bytes[sealed..sealed + MAC_LENGTH].copy_from_slice(&mac);
        handle
    }

    /// [`FileHandle::seal`] as a `Vec`.
    pub fn encode(&self, key: &HandleKey) -> Vec<u8> {
        self.seal(key).as_bytes().to_vec()
    }

    /// Parses and authenticates handle bytes from the wire. Never panics.
    pub fn decode(bytes: &[u8], key: &HandleKey) -> Result<Self, HandleError> {
        let malformed = HandleError::Malformed {
            length: bytes.len(),
        };
        if bytes.len() < HEADER_LENGTH + MAC_LENGTH || bytes.len() > MAX_HANDLE {
            return Err(malformed);
        }
        let version = bytes[0];
        let object_length = usize::from(bytes[10]);
        if HEADER_LENGTH + object_length + MAC_LENGTH != bytes.len() {
            return Err(malformed);
        }
        let (sealed, mac) = bytes.split_at(HEADER_LENGTH + object_length);
        // Constant-time comparison: a timing difference must not tell a forger how many MAC
        // bytes were right.
        let expected = key.mac(version, sealed).ok_or(malformed)?;
        let difference = expected
            .iter()
            .zip(mac)
            .fold(0u8, |difference, (a, b)| difference | (a ^ b));
        if difference != 0 {
            return Err(HandleError::Forged);
        }
        let mut export = [0u8; 8];
        export.copy_from_slice(&bytes[2..10]);
        Ok(FileHandle {
            scheme: bytes[1],
            export: ExportId(u64::from_be_bytes(export)),
            object: ObjectId::new(&sealed[HEADER_LENGTH..]).ok_or(malformed)?,
        })
    }
}

/// How one kind of volume names its objects stably across nodes and opens them again. Kernel
/// handles serve ext4, xfs, btrfs, tmpfs and CephFS; GlusterFS uses GFIDs
/// ([`crate::gfid::GfidResolver`]).
pub trait ObjectResolver: Send + Sync + fmt::Debug {
    /// The scheme byte this resolver's ids carry in handles.
    fn scheme(&self) -> u8;
    /// The id of the object `fd` (any descriptor, `O_PATH` included) refers to.
    fn object_id(&self, fd: BorrowedFd<'_>) -> io::Result<ObjectId>;
    /// The id of `dir/name` (one component, not followed if it is a symbolic link).
    fn object_id_at(&self, dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<ObjectId>;
    /// Opens the object with `O_PATH` (as the daemon: the caller's permissions are checked by
    /// the operation that follows).
    fn open(&self, id: &ObjectId) -> io::Result<OwnedFd>;
    /// What tells one incarnation of an object from another, so that `handle_cache` may reuse
    /// the handle it issued for it. [`Incarnation::Untracked`] by default: a resolver names
    /// another only when that is provably so.
    fn incarnation(&self) -> Incarnation {
        Incarnation::Untracked
    }
    /// Told that the gateway reached object `id` by name and holds `fd` (any descriptor) of it
    /// now, though it did not ask for the id (it had the handle cached): a resolver that keeps
    /// descriptors may keep this one. Nothing by default.
    fn reached(&self, _id: &ObjectId, _fd: BorrowedFd<'_>) {}
}

/// What names one incarnation of an object (an inode number can be reused after the object is
/// gone), as far as [`crate::handle_cache`] may rely on it. In every case the resolver's id must
/// be a function of that incarnation alone: the same bytes however the object was reached.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Incarnation {
    /// Nothing the cache can use: handles are never cached.
    Untracked,
    /// (device, inode number, birth time): an inode number may be reused, by a later
    /// incarnation with a later birth time, so entries are admitted only for objects born well
    /// before a moment they were seen alive (the cache's margin, which covers other nodes'
    /// clocks). Kernel handles of shared file systems (CephFS and the like).
    BirthTime,
    /// As [`Incarnation::BirthTime`], on a local file system (tmpfs, ext4, xfs, btrfs), whose
    /// birth times are stamped by this machine's kernel clock: an object is admitted once that
    /// clock has moved past its birth, a few milliseconds later.
    LocalBirthTime,
    /// (device, inode number): the inode number is itself part of the id, and ids are never
    /// reused, so it names one incarnation from birth on. GlusterFS, where `st_ino` is 64 bits
    /// of the object's random, never reused GFID.
    InodeNumber,
}

/// Why a volume cannot serve file handles; reported at startup.
#[derive(Debug, thiserror::Error)]
pub enum ResolverError {
    #[error(
        "{path} is on a FUSE file system, whose kernel handles are per-mount node ids that go stale on every other node; on a GlusterFS mount use volume.handles: glusterfs-gfid (or auto)"
    )]
    Fuse { path: String },
    #[error(
        "{path} is on a FUSE file system ({fstype}), whose kernel handles are per-mount node ids that go stale on every other node; vipgate serves FUSE only for GlusterFS (by GFID), so use a file system with stable kernel handles"
    )]
    UnsupportedFuse { path: String, fstype: String },
    #[error(
        "volume.handles is glusterfs-gfid but {path} is on {filesystem}, not a GlusterFS FUSE mount (fuse.glusterfs)"
    )]
    NotGlusterfs { path: String, filesystem: String },
    #[error(
        "the GlusterFS volume at {mount_point} is not mounted with aux-gfid-mount, so objects cannot be opened by GFID; mount it with -o aux-gfid-mount (mount -t glusterfs -o aux-gfid-mount SERVER:/VOLUME {mount_point})"
    )]
    NoAuxGfidMount { mount_point: String },
    #[error(
        "{mount_point} mounts the subdirectory {subdirectory} of a GlusterFS volume; GFID handles need the whole volume mounted (an export may be a subdirectory of that mount)"
    )]
    GlusterfsSubdirectoryMount {
        mount_point: String,
        subdirectory: String,
    },
    #[error("cannot open {path} again by its GFID {gfid}")]
    CannotOpenGfid {
        path: String,
        gfid: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} is on {filesystem}, which cannot produce file handles (name_to_handle_at)")]
    NoHandles {
        path: String,
        filesystem: String,
        #[source]
        source: io::Error,
    },
    #[error(
        "{path}: file handles of {filesystem} are {length} bytes, over the {MAX_OBJECT_ID} that fit in an NFSv3 handle"
    )]
    TooLong {
        path: String,
        filesystem: String,
        length: usize,
    },
    #[error("cannot open {path} by its file handle (the daemon needs CAP_DAC_READ_SEARCH)")]
    CannotOpen {
        path: String,
        #[source]
        source: io::Error,
    },
    #[error("{path} opened by its file handle is a different object")]
    Mismatch { path: String },
    #[error("cannot inspect {path}")]
    Io {
        path: String,
        #[source]
        source: io::Error,
    },
}

/// A readable name for a file-system magic number.
pub fn filesystem_name(magic: i64) -> String {
    let name = match magic {
        0xef53 => "ext2/ext3/ext4",
        0x5846_5342 => "xfs",
        0x9123_683e => "btrfs",
        0x0102_1994 => "tmpfs",
        0x6573_5546 => "fuse",
        0x00c3_6400 => "ceph",
        0x6969 => "nfs",
        0x794c_7630 => "overlayfs",
        0x9fa0 => "proc",
        0x6265_6572 => "sysfs",
        0x2fc1_2fc1 => "zfs",
        _ => return format!("file system with magic {magic:#x}"),
    };
    name.to_owned()
}

/// Whether a file system of this `statfs` magic is a local one that stamps birth times with this
/// machine's kernel clock when it creates an inode (`inode_set_ctime_current`, the birth time
/// copied from it): ext4, xfs, btrfs and tmpfs. Shared file systems (CephFS, NFS, anything
/// unknown) stamp them with some node's clock, or their servers'.
pub fn stamps_with_local_clock(magic: i64) -> bool {
    LOCAL_FILESYSTEMS.contains(&magic)
}

/// Whether every change to a file system of this `statfs` magic goes through this machine's
/// kernel, so that its change notification sees them all: the same local file systems (a
/// shared volume changes on other nodes too).
pub fn changes_only_through_this_kernel(magic: i64) -> bool {
    LOCAL_FILESYSTEMS.contains(&magic)
}

/// ext4 (and ext2/3), xfs, btrfs, tmpfs.
const LOCAL_FILESYSTEMS: [i64; 4] = [0xef53, 0x5846_5342, 0x9123_683e, 0x0102_1994];

/// The kinds of [`ObjectResolver`] the gateway has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResolverKind {
    /// [`KernelResolver`].
    Kernel,
    /// [`crate::gfid::GfidResolver`].
    GlusterfsGfid,
}

/// Which resolver serves an export (pure): `scheme` from `volume.handles`, and the export
/// root's file system as `statfs` (`magic`) and `/proc/self/mountinfo` (`fstype`, when the
/// mount was found there) describe it. `auto` takes GFIDs on a GlusterFS FUSE mount, refuses
/// every other FUSE file system, and takes kernel handles elsewhere; `kernel` is checked by
/// [`KernelResolver::new`] (which refuses FUSE); `glusterfs-gfid` needs a GlusterFS mount.
pub fn resolver_kind(
    scheme: cluster_config::HandleScheme,
    magic: i64,
    fstype: Option<&str>,
    path: &str,
) -> Result<ResolverKind, ResolverError> {
    use cluster_config::HandleScheme;
    let glusterfs =
        magic == crate::gfid::FUSE_MAGIC && fstype == Some(crate::gfid::GLUSTERFS_FSTYPE);
    match scheme {
        HandleScheme::Kernel => Ok(ResolverKind::Kernel),
        HandleScheme::GlusterfsGfid if glusterfs => Ok(ResolverKind::GlusterfsGfid),
        HandleScheme::GlusterfsGfid => Err(ResolverError::NotGlusterfs {
            path: path.to_owned(),
            filesystem: fstype.map_or_else(|| filesystem_name(magic), str::to_owned),
        }),
        HandleScheme::Auto if glusterfs => Ok(ResolverKind::GlusterfsGfid),
        HandleScheme::Auto if magic == crate::gfid::FUSE_MAGIC => {
            Err(ResolverError::UnsupportedFuse {
                path: path.to_owned(),
                fstype: fstype.unwrap_or("fuse").to_owned(),
            })
        }
        HandleScheme::Auto => Ok(ResolverKind::Kernel),
    }
}

/// Kernel file handles: `name_to_handle_at` / `open_by_handle_at`. The same bytes resolve on
/// every node that mounts the same file system (ext4, xfs, btrfs, tmpfs, CephFS), but not on
/// FUSE mounts, which [`KernelResolver::new`] refuses.
#[derive(Debug)]
pub struct KernelResolver {
    /// A descriptor on the file system (opened for reading: `open_by_handle_at` refuses
    /// `O_PATH` ones).
    mount: OwnedFd,
    /// The mount id the export lives on; objects on other mounts get no handle.
    mount_id: i32,
    /// Whether the file system stamps birth times with this machine's clock.
    local_clock: bool,
}

/// Kernel object id: the handle type (4 bytes) followed by the kernel's handle bytes.
fn kernel_object_id(handle: &sys::KernelHandle) -> Option<ObjectId> {
    kernel_object_id_of(handle.handle_type, handle.bytes())
}

/// The object id [`KernelResolver`] gives the kernel handle `bytes` of type `handle_type`
/// (`None` when it does not fit).
pub fn kernel_object_id_of(handle_type: i32, bytes: &[u8]) -> Option<ObjectId> {
    let mut id = [0u8; MAX_OBJECT_ID];
    id[..4].copy_from_slice(&handle_type.to_be_bytes());
    id.get_mut(4..4 + bytes.len())?.copy_from_slice(bytes);
    ObjectId::new(&id[..4 + bytes.len()])
}

impl KernelResolver {
    /// Checks that the file system under `root` (an open export root, described as `path` in
    /// errors) produces kernel handles that fit and open again, and refuses FUSE outright: a
    /// FUSE handle is the node id of one mount, which `name_to_handle_at` happily returns but no
    /// other node can open (DESIGN.md, "GlusterFS FUSE mounts are the trap").
    pub fn new(root: &OwnedFd, path: &str) -> Result<Self, ResolverError> {
        let io = |source| ResolverError::Io {
            path: path.to_owned(),
            source,
        };
        let statfs = sys::fstatfs(root.as_fd()).map_err(io)?;
        let filesystem = filesystem_name(statfs.magic);
        if statfs.magic == crate::gfid::FUSE_MAGIC {
            return Err(ResolverError::Fuse {
                path: path.to_owned(),
            });
        }
        let handle =
            sys::name_to_handle(root.as_fd(), c"").map_err(|source| ResolverError::NoHandles {
                path: path.to_owned(),
                filesystem: filesystem.clone(),
                source,
            })?;
        if kernel_object_id(&handle).is_none() {
            return Err(ResolverError::TooLong {
                path: path.to_owned(),
                filesystem,
                length: handle.bytes().len(),
            });
        }
        // `open_by_handle_at` wants a real descriptor on the file system, not an `O_PATH` one.
        let mount = sys::reopen(root.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY).map_err(io)?;
        let reopened = sys::open_by_handle(
            mount.as_fd(),
            handle.handle_type,
            handle.bytes(),
            libc::O_PATH,
        )
        .map_err(|source| ResolverError::CannotOpen {
            path: path.to_owned(),
            source,
        })?;
        let original = sys::fstat(root.as_fd()).map_err(io)?;
        let again = sys::fstat(reopened.as_fd()).map_err(io)?;
        if !original.same_object(&again) {
            return Err(ResolverError::Mismatch {
                path: path.to_owned(),
            });
        }
        Ok(KernelResolver {
            mount,
            mount_id: handle.mount_id,
            local_clock: stamps_with_local_clock(statfs.magic),
        })
    }

    fn id_of(&self, handle: sys::KernelHandle) -> io::Result<ObjectId> {
        if handle.mount_id != self.mount_id {
            return Err(io::Error::from_raw_os_error(libc::EXDEV));
        }
        kernel_object_id(&handle).ok_or_else(|| io::Error::from_raw_os_error(libc::EOVERFLOW))
    }
}

impl ObjectResolver for KernelResolver {
    fn scheme(&self) -> u8 {
        KERNEL_SCHEME
    }

    fn object_id(&self, fd: BorrowedFd<'_>) -> io::Result<ObjectId> {
        self.id_of(sys::name_to_handle(fd, c"")?)
    }

    fn object_id_at(&self, dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> io::Result<ObjectId> {
        self.id_of(sys::name_to_handle(dir, name)?)
    }

    /// Kernel handles encode the inode number and its generation; without
    /// `AT_HANDLE_CONNECTABLE` (never asked for) they do not encode the parent or the name.
    /// Inode numbers are reused, so the birth time tells incarnations apart.
    fn incarnation(&self) -> Incarnation {
        if self.local_clock {
            Incarnation::LocalBirthTime
        } else {
            Incarnation::BirthTime
        }
    }

    fn open(&self, id: &ObjectId) -> io::Result<OwnedFd> {
        let bytes = id.as_bytes();
        let stale = || io::Error::from_raw_os_error(libc::ESTALE);
        let (handle_type, handle) = bytes.split_at_checked(4).ok_or_else(stale)?;
        let handle_type = i32::from_be_bytes(handle_type.try_into().map_err(|_| stale())?);
        sys::open_by_handle(
            self.mount.as_fd(),
            handle_type,
            handle,
            libc::O_PATH | libc::O_NOFOLLOW,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> HandleKey {
        HandleKey::from_cluster_secret(b"a cluster secret of some length")
    }

    #[test]
    fn the_precomputed_key_states_give_the_plain_hmac() {
        let secret = b"a cluster secret of some length";
        let derived = hmac_sha256(secret, b"vipgate nfs file handle key v1");
        let key = HandleKey::from_cluster_secret(secret);
        for message in [&b""[..], b"x", &[7; 63], &[9; 64], &[1; 200]] {
            assert_eq!(
                key.mac(HMAC_HANDLE_VERSION, message).unwrap()[..],
                hmac_sha256(&derived, message)[..MAC_LENGTH]
            );
        }
    }

    /// The reference key of the SipHash paper: bytes 00..0f.
    const REFERENCE_KEY: [u64; 2] = [0x0706_0504_0302_0100, 0x0f0e_0d0c_0b0a_0908];

    #[test]
    fn siphash_matches_the_reference_vectors() {
        let message: Vec<u8> = (0..64).collect();
        // The paper's appendix (15 bytes 00..0e) and the reference implementation's vectors.
        let cases: [(usize, u64); 4] = [
            (0, 0x726f_db47_dd0e_0e31),
            (1, 0x74f8_39c5_93dc_67fd),
            (15, 0xa129_ca61_49be_45e5),
            (63, 0x958a_324c_eb06_4572),
        ];
        for (length, expected) in cases {
            assert_eq!(
                siphash24(REFERENCE_KEY, &message[..length]),
                expected,
                "{length} bytes"
            );
        }
    }

    proptest::proptest! {
        #[test]
        fn siphash_agrees_with_the_standard_library(
            k0: u64,
            k1: u64,
            message in proptest::collection::vec(proptest::num::u8::ANY, 0..80),
        ) {
            use std::hash::Hasher;
            // The standard library's SipHasher is SipHash-2-4, deprecated only as a
            // HashMap hasher.
            #[allow(deprecated)]
            let mut reference = std::hash::SipHasher::new_with_keys(k0, k1);
            reference.write(&message);
            proptest::prop_assert_eq!(siphash24([k0, k1], &message), reference.finish());
        }
    }

    /// A handle sealed as version 1 nodes sealed them.
    fn encode_version_one(handle: &FileHandle, key: &HandleKey) -> Vec<u8> {
        let mut bytes = handle.encode(key);
        bytes.truncate(bytes.len() - MAC_LENGTH);
        bytes[0] = HMAC_HANDLE_VERSION;
        let mac = key.mac(HMAC_HANDLE_VERSION, &bytes).unwrap();
        bytes.extend_from_slice(&mac);
        bytes
    }

    #[test]
    fn version_one_handles_are_still_accepted() {
        let original = handle(&[3; 12]);
        let old = encode_version_one(&original, &key());
        assert_eq!(FileHandle::decode(&old, &key()), Ok(original));
        // Sealed with version 1's MAC but labelled version 2 (or the reverse): refused.
        let mut relabelled = old.clone();
        relabelled[0] = HANDLE_VERSION;
        assert_eq!(
            FileHandle::decode(&relabelled, &key()),
            Err(HandleError::Forged)
        );
        let mut relabelled = original.encode(&key());
        relabelled[0] = HMAC_HANDLE_VERSION;
        assert_eq!(
            FileHandle::decode(&relabelled, &key()),
            Err(HandleError::Forged)
        );
        // Both versions name the same object and differ in their MAC only.
        let new = original.encode(&key());
        assert_eq!(old.len(), new.len());
        assert_eq!(
            old[1..old.len() - MAC_LENGTH],
            new[1..new.len() - MAC_LENGTH]
        );
    }

    fn handle(object: &[u8]) -> FileHandle {
        FileHandle {
            scheme: KERNEL_SCHEME,
            export: ExportId(0x0102_0304_0506_0708),
            object: ObjectId::new(object).unwrap(),
        }
    }

    #[test]
    fn hmac_sha256_matches_rfc_4231_test_case_2() {
        let mac = hmac_sha256(b"Jefe", b"what do ya want for nothing?");
        let hex: String = mac.iter().map(|byte| format!("{byte:02x}")).collect();
        assert_eq!(
            hex,
            "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843"
        );
        // A key longer than the block is hashed first (RFC 4231 test case 6).
        let mac = hmac_sha256(
            &[0xaa; 131],
            b"Test Using Larger Than Block-Size Key - Hash Key First",
        );
        assert_eq!(mac[..4], [0x60, 0xe4, 0x31, 0x59]);
    }

    #[test]
    fn a_sealed_handle_gives_its_object_id_back() {
        for length in [0, 16, MAX_OBJECT_ID] {
            let object: Vec<u8> = (0..length as u8).collect();
            let sealed = handle(&object).seal(&key());
            assert_eq!(sealed.object_id().unwrap().as_bytes(), &object[..]);
        }
        assert_eq!(HandleBytes::new(&[2; 5]).unwrap().object_id(), None);
        assert_eq!(HandleBytes::new(&[]).unwrap().object_id(), None);
    }

    #[test]
    fn handles_round_trip_and_fit() {
        for length in [0, 8, 12, MAX_OBJECT_ID] {
            let object: Vec<u8> = (0..length as u8).collect();
            let original = handle(&object);
            let bytes = original.encode(&key());
            assert!(bytes.len() <= MAX_HANDLE);
            assert_eq!(bytes.len(), 19 + length);
            assert_eq!(bytes[0], HANDLE_VERSION);
            assert_eq!(FileHandle::decode(&bytes, &key()), Ok(original));
        }
        assert!(ObjectId::new(&[0; MAX_OBJECT_ID + 1]).is_none());
    }

    #[test]
    fn tampered_and_malformed_handles_are_refused() {
        let bytes = handle(&[1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12]).encode(&key());
        // Any single flipped bit in the sealed part or the MAC is caught.
        for index in 0..bytes.len() {
            let mut tampered = bytes.clone();
            tampered[index] ^= 0x01;
            let outcome = FileHandle::decode(&tampered, &key());
            assert!(outcome.is_err(), "bit flip at {index} accepted");
        }
        // Another cluster's key.
        let other = HandleKey::from_cluster_secret(b"another cluster's secret");
        assert_eq!(FileHandle::decode(&bytes, &other), Err(HandleError::Forged));
        let malformed = |length| Err(HandleError::Malformed { length });
        assert_eq!(FileHandle::decode(&[], &key()), malformed(0));
        assert_eq!(FileHandle::decode(&bytes[..18], &key()), malformed(18));
        assert_eq!(FileHandle::decode(&[0; 65], &key()), malformed(65));
        for version in [0, 3, 0xff] {
            let mut unknown = bytes.clone();
            unknown[0] = version;
            assert_eq!(FileHandle::decode(&unknown, &key()), malformed(bytes.len()));
        }
        let mut wrong_length = bytes.clone();
        wrong_length[10] = 13;
        assert_eq!(
            FileHandle::decode(&wrong_length, &key()),
            malformed(bytes.len())
        );
    }

    #[test]
    fn the_resolver_follows_scheme_and_file_system() {
        use cluster_config::HandleScheme::{Auto, GlusterfsGfid, Kernel};
        const EXT4: i64 = 0xef53;
        const FUSE: i64 = crate::gfid::FUSE_MAGIC;
        let glusterfs = Some("fuse.glusterfs");
        let sshfs = Some("fuse.sshfs");
        let cases = [
            (Auto, EXT4, Some("ext4"), Ok(ResolverKind::Kernel)),
            (Auto, FUSE, glusterfs, Ok(ResolverKind::GlusterfsGfid)),
            (Auto, FUSE, sshfs, Err("UnsupportedFuse")),
            (Auto, FUSE, None, Err("UnsupportedFuse")),
            // Not FUSE by statfs: whatever mountinfo says, no GFIDs.
            (Auto, EXT4, glusterfs, Ok(ResolverKind::Kernel)),
            (Kernel, FUSE, glusterfs, Ok(ResolverKind::Kernel)),
            (Kernel, EXT4, None, Ok(ResolverKind::Kernel)),
            (
                GlusterfsGfid,
                FUSE,
                glusterfs,
                Ok(ResolverKind::GlusterfsGfid),
            ),
            (GlusterfsGfid, FUSE, sshfs, Err("NotGlusterfs")),
            (GlusterfsGfid, EXT4, Some("ext4"), Err("NotGlusterfs")),
            (GlusterfsGfid, EXT4, None, Err("NotGlusterfs")),
        ];
        for (scheme, magic, fstype, expected) in cases {
            let outcome = resolver_kind(scheme, magic, fstype, "/srv/x");
            match (outcome, expected) {
                (Ok(kind), Ok(expected)) => assert_eq!(kind, expected),
                (Err(error), Err(variant)) => {
                    assert!(format!("{error:?}").starts_with(variant), "{error:?}");
                    assert!(error.to_string().contains("/srv/x"), "{error}");
                }
                (outcome, expected) => {
                    panic!("{scheme:?} {magic:#x} {fstype:?}: {outcome:?}, expected {expected:?}")
                }
            }
        }
        let message = resolver_kind(GlusterfsGfid, EXT4, Some("ext4"), "/srv/x")
            .unwrap_err()
            .to_string();
        assert!(message.contains("on ext4"), "{message}");
        let message = resolver_kind(Auto, FUSE, sshfs, "/srv/x")
            .unwrap_err()
            .to_string();
        assert!(message.contains("fuse.sshfs"), "{message}");
    }

    #[test]
    fn only_local_file_systems_stamp_with_this_machine_s_clock() {
        for (magic, local) in [
            (0xef53, true),       // ext4
            (0x5846_5342, true),  // xfs
            (0x9123_683e, true),  // btrfs
            (0x0102_1994, true),  // tmpfs
            (0x00c3_6400, false), // ceph: the creating client's clock
            (0x6969, false),      // nfs: the server's
            (0x6573_5546, false), // fuse
            (0x1234, false),      // unknown
        ] {
            assert_eq!(stamps_with_local_clock(magic), local, "{magic:#x}");
        }
    }

    #[test]
    fn kernel_resolver_round_trips_objects() {
        // SAFETY: geteuid has no arguments and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("SKIPPED: open_by_handle_at needs CAP_DAC_READ_SEARCH");
            return;
        }
        let directory = tempfile::tempdir().unwrap();
        std::fs::write(directory.path().join("file"), b"x").unwrap();
        let root: OwnedFd = std::fs::File::open(directory.path()).unwrap().into();
        let resolver = KernelResolver::new(&root, "test").unwrap();
        let id = resolver.object_id_at(root.as_fd(), c"file").unwrap();
        let opened = resolver.open(&id).unwrap();
        let expected = sys::statx(root.as_fd(), c"file").unwrap();
        assert!(sys::fstat(opened.as_fd()).unwrap().same_object(&expected));
        assert_eq!(resolver.object_id(opened.as_fd()).unwrap(), id);
        // A handle whose inode does not exist is stale, not a crash.
        let mut bogus = id.as_bytes().to_vec();
        for byte in &mut bogus[4..] {
            *byte = 0xff;
        }
        assert!(resolver.open(&ObjectId::new(&bogus).unwrap()).is_err());
    }
}
