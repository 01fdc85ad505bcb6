//! NFSv3 (RFC 1813): the 22 procedures over the volume, with containment, per-caller
//! credentials and failover-safe handles.
//!
//! Every call goes the same way:
//!
//! 1. decode the arguments ([`wire::decode_args`]; GARBAGE_ARGS if they do not decode);
//! 2. resolve each handle as the daemon ([`resolve`]): authenticate it (BADHANDLE if malformed,
//!    STALE if forged or unknown), find its export, check that the export admits this client
//!    (ACCES), open the object with `O_PATH` and check it is on the export's mount (STALE);
//! 3. refuse modifications on a read-only export (ROFS);
//! 4. run the operation with the caller's identity after squashing ([`creds::run_as`]), so the
//!    kernel makes every permission decision as it would for that user; names are single
//!    components resolved with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS |
//!    RESOLVE_NO_XDEV)` beneath a directory that is itself inside the export;
//! 5. encode the result, with attributes whose `fsid` is the export id.
//!
//! Two NFS rules relax plain POSIX permission checks, as knfsd does: the owner of a file may
//! read, write and truncate it whatever its mode bits (a client creates a file with mode 0444
//! and then writes it; the client already checked at open time), and a file that may be
//! executed may be read (executing a binary over NFS reads it).

pub mod wire;

use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::FileExt;

use crate::creds::{self, Identity};
use crate::handle::{FileHandle, HandleError};
use crate::handle::{HandleBytes, Incarnation, MAX_HANDLE};
use crate::handle_cache::{self, HandleCache, IncarnationKey};
use crate::listing_cache::{FsObject, ListingCache, Run, RunKey};
use crate::rpc::Call;
use crate::service::{Connection, Export, ProcError, Service};
use crate::splice::{PipePool, SplicedData};
use crate::sys::{self, SetTime, Stat, Time};
use crate::xdr::Encoder;
use wire::{Args, CreateHow, DirOp, FileType, MknodData, SetAttributes, StableHow, Status, access};

/// Largest READ and WRITE we serve (rtmax, wtmax), and our preference.
pub const MAX_IO: u32 = 1024 * 1024;
/// The smallest READ whose data is spliced rather than copied (on a stream transport), unless
/// `VIPGATE_SPLICE_MIN_READ` says otherwise: below it, taking a pipe and two splices cost about
/// what the copies they save do (BENCHMARKS.md, "nfs").
pub const SPLICE_MIN_READ: usize = 32 * 1024;
/// Preferred READDIR size.
const DIR_PREFERRED: u32 = 64 * 1024;
/// Largest READDIR/READDIRPLUS reply we build, whatever the client asks for.
const MAX_DIR_REPLY: u32 = 1024 * 1024;

type OpResult<T> = Result<T, Status>;

/// An object a handle named, opened `O_PATH`.
struct Object<'s> {
    export: &'s Export,
    fd: OwnedFd,
    stat: Stat,
}

impl Object<'_> {
    fn fsid(&self) -> u64 {
        self.export.fsid()
    }
}

/// Step 2 of the module documentation.
fn resolve<'s>(
    service: &'s Service,
    connection: &Connection,
    handle: &[u8],
) -> OpResult<Object<'s>> {
    let handle = FileHandle::decode(handle, &service.key).map_err(|error| match error {
        HandleError::Malformed { .. } => Status::BadHandle,
        HandleError::Forged => Status::Stale,
    })?;
    let (index, export) = service.export_by_id(handle.export).ok_or(Status::Stale)?;
    if !service.admits(connection, index) {
        return Err(Status::Acces);
    }
    if handle.scheme != export.resolver.scheme() {
        return Err(Status::Stale);
    }
    let fd = export.resolver.open(&handle.object).map_err(|error| {
        match error.raw_os_error() {
            // Deleted, or never existed: the client must forget the handle.
            Some(libc::ESTALE | libc::ENOENT | libc::EINVAL) | None => Status::Stale,
            Some(errno) => Status::from_errno(errno),
        }
    })?;
    // A resolver may hand out a descriptor it kept (the GFID resolver does): an object deleted
    // since is found out here, and its handle is stale.
    let stat = sys::fstat(fd.as_fd()).map_err(|error| match error.raw_os_error() {
        Some(libc::ESTALE | libc::ENOENT) => Status::Stale,
        _ => Status::from_io(&error),
    })?;
    if stat.mount_id != export.root_stat.mount_id {
        return Err(Status::Stale);
    }
    Ok(Object { export, fd, stat })
}

/// The handle of an object found inside `export`.
fn handle_of(export: &Export, fd: BorrowedFd<'_>) -> OpResult<HandleBytes> {
    let object = export
        .resolver
        .object_id(fd)
        .map_err(|error| Status::from_io(&error))?;
    Ok(export.handle_for(object))
}

/// The handle cache as one call uses it for the objects of one export.
#[derive(Clone, Copy)]
struct CacheUse<'s> {
    cache: &'s HandleCache,
    /// The clock reading the admission rule needs: taken before the `statx` (or while holding
    /// the descriptor) whose key will be stored.
    now: sys::Time,
    incarnation: Incarnation,
}

impl CacheUse<'_> {
    /// The key of an object of `export` described by `stat`, if the cache may hold it.
    fn key(&self, export: &Export, stat: &Stat) -> Option<IncarnationKey> {
        IncarnationKey::of(export.id, stat, self.incarnation)
            .filter(|key| self.cache.admits(key, self.now))
    }
}

/// The handle cache of `export`'s objects: `None` when the export's resolver does not allow
/// caching. Take it before the `statx` whose key will be stored, or while the object's
/// descriptor is held ([`handle_cache`] module documentation).
fn cache_for<'s>(service: &'s Service, export: &Export) -> Option<CacheUse<'s>> {
    let incarnation = export.resolver.incarnation();
    (incarnation != Incarnation::Untracked).then(|| CacheUse {
        cache: &service.handle_cache,
        now: handle_cache::now(),
        incarnation,
    })
}

/// The handle of `fd`, whose attributes `stat` were read from the same descriptor, from the
/// cache or (then stored) from the resolver. `cache` was taken while `fd` was open (the object
/// is alive after the clock reading, as the admission rule needs).
fn cached_handle_of(
    export: &Export,
    fd: BorrowedFd<'_>,
    stat: &Stat,
    cache: Option<CacheUse<'_>>,
) -> OpResult<HandleBytes> {
    let Some((cache, key)) = cache.and_then(|cache| Some((cache, cache.key(export, stat)?))) else {
        return handle_of(export, fd);
    };
    if let Some(handle) = cache.cache.get(&key) {
        if let Some(id) = handle.object_id() {
            export.resolver.reached(&id, fd);
        }
        return Ok(handle);
    }
    let handle = handle_of(export, fd)?;
    cache.cache.insert(key, &handle, cache.now);
    Ok(handle)
}

/// How a name is used, which decides what `.` and `..` mean.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NameUse {
    /// A new entry: `.`/`..` already exist.
    Create,
    /// An entry to remove or rename: `.`/`..` may not be.
    Remove,
}

/// A file name from the wire as a C string: not empty, at most 255 bytes, no `/` or NUL.
fn component(name: &[u8]) -> OpResult<CString> {
    if name.len() > wire::MAX_NAME {
        return Err(Status::NameTooLong);
    }
    if name.is_empty() || name.contains(&b'/') {
        return Err(Status::Inval);
    }
    CString::new(name).map_err(|_| Status::Inval)
}

fn checked_name(name: &[u8], usage: NameUse) -> OpResult<CString> {
    let name = component(name)?;
    if matches!(name.as_bytes(), b"." | b"..") {
        return Err(match usage {
            NameUse::Create => Status::Exist,
            NameUse::Remove => Status::Inval,
        });
    }
    Ok(name)
}

/// Opens `dir/name` (`O_PATH`, not following a final symbolic link) beneath `dir`, as the caller.
fn open_beneath(dir: BorrowedFd<'_>, name: &std::ffi::CStr) -> std::io::Result<OwnedFd> {
    sys::openat2(
        dir,
        name,
        libc::O_PATH | libc::O_NOFOLLOW,
        0,
        sys::RESOLVE_CONTAINED,
    )
}

/// The parent of directory `dir` inside its export: the root's parent is the root itself, so
/// `..` never leads out of an export.
fn parent_of(dir: &Object<'_>) -> OpResult<(OwnedFd, Stat)> {
    let export = dir.export;
    if dir.stat.same_object(&export.root_stat) {
        let fd = export.root.try_clone().map_err(|e| Status::from_io(&e))?;
        return Ok((fd, export.root_stat));
    }
    let fd = sys::openat(
        Some(dir.fd.as_fd()),
        c"..",
        libc::O_PATH | libc::O_DIRECTORY,
    )
    .map_err(|e| Status::from_io(&e))?;
    let stat = sys::fstat(fd.as_fd()).map_err(|e| Status::from_io(&e))?;
    if stat.mount_id != export.root_stat.mount_id {
        return Err(Status::Stale);
    }
    Ok((fd, stat))
}

/// Runs `operation` as the caller; a failure to switch credentials is a server fault.
fn as_caller<T>(identity: &Identity, operation: impl FnOnce() -> OpResult<T>) -> OpResult<T> {
    creds::run_as(identity, operation).unwrap_or_else(|error| {
        tracing::error!(%error, "cannot act as the caller");
        Err(Status::ServerFault)
    })
}

/// Runs `operation` as the daemon, from inside [`as_caller`] (for the owner override).
fn as_daemon<T>(operation: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    creds::run_as(&Identity::root(), operation).unwrap_or_else(|error| {
        tracing::error!(%error, "cannot return to the daemon's credentials");
        Err(std::io::Error::from_raw_os_error(libc::EPERM))
    })
}

/// Opens a regular file for I/O as the caller, with the NFS owner (and read-if-exec) override.
fn open_for_io(object: &Object<'_>, identity: &Identity, flags: libc::c_int) -> OpResult<File> {
    match sys::reopen(object.fd.as_fd(), flags) {
        Ok(fd) => Ok(File::from(fd)),
        Err(error) if error.raw_os_error() == Some(libc::EACCES) => {
            let owner = identity.uid == object.stat.uid;
            let may_execute = flags == libc::O_RDONLY && sys::access(object.fd.as_fd(), libc::X_OK);
            if owner || may_execute {
                as_daemon(|| sys::reopen(object.fd.as_fd(), flags))
                    .map(File::from)
                    .map_err(|e| Status::from_io(&e))
            } else {
                Err(Status::Acces)
            }
        }
        Err(error) => Err(Status::from_io(&error)),
    }
}

/// READ's zero-copy path: splices up to `count` bytes of `file` at `offset` into a pipe of
/// `pipes` first (so the count is exact), then encodes READ3resok up to the opaque's length.
/// `None` (nothing encoded) when the copy path must serve this call: no pipe to spare, a span
/// the pipe cannot hold, nothing spliced (end of file moved), or a file system that cannot
/// splice (remembered for its export).
fn read_spliced(
    pipes: &PipePool,
    object: &Object<'_>,
    file: &File,
    offset: u64,
    count: usize,
    encoder: &mut Encoder<'_>,
) -> Option<SplicedData> {
    let export = object.export.id.0;
    if !pipes.fits(offset, count) || !pipes.splices(export) {
        return None;
    }
    let mut pipe = pipes.take()?;
    let spliced = match pipe.fill(file.as_fd(), offset, count) {
        Ok(spliced) => spliced,
        Err(error) => {
            // No splice_read for this file (EINVAL), or none at all: never again for this
            // export. Other errors are the file system's; the copy path reports them.
            if matches!(
                error.raw_os_error(),
                Some(libc::EINVAL | libc::ENOSYS | libc::EOPNOTSUPP)
            ) {
                pipes.refuse(export);
            }
            return None;
        }
    };
    let length = u32::try_from(spliced).ok().filter(|&length| length > 0)?;
    let size = sys::fstat(file.as_fd()).map_or(object.stat.size, |stat| stat.size);
    let eof = offset.saturating_add(u64::from(length)) >= size;
    status(encoder, Status::Ok);
    wire::post_op_attr(encoder, Some(&object.stat), object.fsid());
    encoder.u32(length);
    encoder.bool(eof);
    encoder.u32(length);
    Some(SplicedData::new(pipe))
}

fn require_regular(stat: &Stat) -> OpResult<()> {
    match FileType::of_mode(stat.mode) {
        FileType::Regular => Ok(()),
        FileType::Directory => Err(Status::IsDir),
        _ => Err(Status::Inval),
    }
}

fn require_dir(stat: &Stat) -> OpResult<()> {
    if stat.is_dir() {
        Ok(())
    } else {
        Err(Status::NotDir)
    }
}

/// Applies `attributes` to `object` as the current (caller's) credentials, in the order knfsd
/// uses: owner, mode, size, times. The owner may truncate whatever the mode (module docs).
fn apply_attributes(
    fd: BorrowedFd<'_>,
    stat: &Stat,
    attributes: &SetAttributes,
    identity: &Identity,
) -> OpResult<()> {
    let io = |e: std::io::Error| Status::from_io(&e);
    if attributes.uid.is_some() || attributes.gid.is_some() {
        sys::chown(fd, attributes.uid, attributes.gid).map_err(io)?;
    }
    if let Some(mode) = attributes.mode {
        if stat.is_symlink() {
            return Err(Status::Inval);
        }
        sys::chmod(fd, mode & 0o7777).map_err(io)?;
    }
    if let Some(size) = attributes.size {
        require_regular(stat)?;
        match sys::truncate(fd, size) {
            Err(error)
                if error.raw_os_error() == Some(libc::EACCES) && identity.uid == stat.uid =>
            {
                as_daemon(|| sys::truncate(fd, size)).map_err(io)?;
            }
            other => other.map_err(io)?,
        }
    }
    let (atime, mtime) = (attributes.atime.0, attributes.mtime.0);
    if atime != SetTime::Keep || mtime != SetTime::Keep {
        sys::set_times(fd, atime, mtime).map_err(io)?;
    }
    Ok(())
}

/// Runs one NFSv3 call, writing its results after the reply header in `out`.
pub fn call(
    service: &Service,
    connection: &Connection,
    call: &Call,
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<(), ProcError> {
    run(service, connection, call, args, out, None).map(drop)
}

/// [`call`] for a stream transport: a READ of at least [`SPLICE_MIN_READ`] bytes may leave its
/// data in a pipe (returned) instead of `out`, which then ends with the opaque's length; the
/// data and its XDR padding follow `out` on the wire.
pub fn call_spliced(
    service: &Service,
    connection: &Connection,
    call: &Call,
    args: &[u8],
    out: &mut Vec<u8>,
) -> Result<Option<SplicedData>, ProcError> {
    run(service, connection, call, args, out, Some(&service.pipes))
}

fn run(
    service: &Service,
    connection: &Connection,
    call: &Call,
    args: &[u8],
    out: &mut Vec<u8>,
    pipes: Option<&PipePool>,
) -> Result<Option<SplicedData>, ProcError> {
    let args = wire::decode_args(call.procedure, args)?;
    let context = Context {
        service,
        connection,
        call,
        pipes,
    };
    let encoder = &mut Encoder::new(out);
    let mut spliced = None;
    match args {
        Args::Null => {}
        Args::GetAttr { object } => context.getattr(object, encoder),
        Args::SetAttr {
            object,
            attributes,
            guard,
        } => context.setattr(object, &attributes, guard, encoder),
        Args::Lookup(place) => context.lookup(place, encoder),
        Args::Access { object, access } => context.access(object, access, encoder),
        Args::ReadLink { object } => context.readlink(object, encoder),
        Args::Read {
            file,
            offset,
            count,
        } => spliced = context.read(file, offset, count, encoder),
        Args::Write {
            file,
            offset,
            count,
            stable,
            data,
        } => context.write(file, offset, count, stable, data, encoder),
        Args::Create { place, how } => context.create(place, how, encoder),
        Args::MkDir { place, attributes } => context.make(place, Make::Dir(attributes), encoder),
        Args::Symlink {
            place,
            attributes,
            target,
        } => context.make(place, Make::Symlink(attributes, target), encoder),
        Args::MkNod { place, data } => context.make(place, Make::Node(data), encoder),
        Args::Remove(place) => context.remove(place, false, encoder),
        Args::RmDir(place) => context.remove(place, true, encoder),
        Args::Rename { from, to } => context.rename(from, to, encoder),
        Args::Link { file, link } => context.link(file, link, encoder),
        Args::ReadDir {
            dir,
            cookie,
            verifier: _,
            count,
        } => context.readdir(dir, cookie, count, None, encoder),
        Args::ReadDirPlus {
            dir,
            cookie,
            verifier: _,
            dircount: _,
            maxcount,
        } => context.readdir(dir, cookie, maxcount, Some(()), encoder),
        Args::FsStat { root } => context.fsstat(root, encoder),
        Args::FsInfo { root } => context.fsinfo(root, encoder),
        Args::PathConf { object } => context.pathconf(object, encoder),
        Args::Commit {
            file,
            offset: _,
            count: _,
        } => context.commit(file, encoder),
    }
    Ok(spliced)
}

struct Context<'a> {
    service: &'a Service,
    connection: &'a Connection,
    call: &'a Call,
    /// Where a READ may take a pipe for its data; `None` on transports that cannot splice.
    pipes: Option<&'a PipePool>,
}

/// What MKDIR, SYMLINK and MKNOD create.
enum Make<'a> {
    Dir(SetAttributes),
    Symlink(SetAttributes, &'a [u8]),
    Node(MknodData),
}

fn status(encoder: &mut Encoder<'_>, status: Status) {
    encoder.u32(status as u32);
}

impl Context<'_> {
    fn resolve(&self, handle: &[u8]) -> OpResult<Object<'_>> {
        resolve(self.service, self.connection, handle)
    }

    /// Resolves `handle`, or encodes the error status followed by the procedure's empty
    /// attribute part (`empty`) and returns `None`.
    fn resolve_or_reply(
        &self,
        handle: &[u8],
        encoder: &mut Encoder<'_>,
        empty: fn(&mut Encoder<'_>),
    ) -> Option<Object<'_>> {
        match self.resolve(handle) {
            Ok(object) => Some(object),
            Err(error) => {
                status(encoder, error);
                empty(encoder);
                None
            }
        }
    }

    fn identity(&self, export: &Export) -> Identity {
        export.policy.identity(&self.call.credential)
    }

    fn writable(&self, export: &Export) -> OpResult<()> {
        if export.policy.writable() {
            Ok(())
        } else {
            Err(Status::RoFs)
        }
    }

    fn getattr(&self, handle: &[u8], encoder: &mut Encoder<'_>) {
        match self.resolve(handle) {
            Ok(object) => {
                status(encoder, Status::Ok);
                wire::fattr3(encoder, &object.stat, object.fsid());
            }
            Err(error) => status(encoder, error),
        }
    }

    fn setattr(
        &self,
        handle: &[u8],
        attributes: &SetAttributes,
        guard: Option<Time>,
        encoder: &mut Encoder<'_>,
    ) {
        let Some(object) = self.resolve_or_reply(handle, encoder, no_wcc_data) else {
            return;
        };
        let outcome = self.writable(object.export).and_then(|()| {
            if let Some(guard) = guard
                && (guard.seconds != object.stat.ctime.seconds
                    || guard.nanoseconds != object.stat.ctime.nanoseconds)
            {
                return Err(Status::NotSync);
            }
            let identity = self.identity(object.export);
            as_caller(&identity, || {
                apply_attributes(object.fd.as_fd(), &object.stat, attributes, &identity)
            })
        });
        let after = sys::fstat(object.fd.as_fd()).ok();
        status(encoder, outcome.err().unwrap_or(Status::Ok));
        wire::wcc_data(encoder, Some(&object.stat), after.as_ref(), object.fsid());
    }

    fn lookup(&self, place: DirOp<'_>, encoder: &mut Encoder<'_>) {
        let dir = match self.resolve(place.dir) {
            Ok(dir) => dir,
            Err(error) => {
                status(encoder, error);
                wire::post_op_attr(encoder, None, 0);
                return;
            }
        };
        let found = require_dir(&dir.stat).and_then(|()| {
            let identity = self.identity(dir.export);
            as_caller(&identity, || {
                let name = component(place.name).map_err(|error| match error {
                    Status::Inval if place.name.is_empty() => Status::NoEnt,
                    other => other,
                })?;
                // Searching needs execute permission on the directory, also for `.` and `..`.
                if !sys::access(dir.fd.as_fd(), libc::X_OK) {
                    return Err(Status::Acces);
                }
                let cache = cache_for(self.service, dir.export);
                let (fd, stat) = match name.as_bytes() {
                    b"." => (
                        dir.fd.try_clone().map_err(|e| Status::from_io(&e))?,
                        dir.stat,
                    ),
                    b".." => parent_of(&dir)?,
                    _ => {
                        let fd = open_beneath(dir.fd.as_fd(), &name).map_err(|error| {
                            match error.raw_os_error() {
                                // A mount point inside the export: never crossed.
                                Some(libc::EXDEV) => Status::Acces,
                                _ => Status::from_io(&error),
                            }
                        })?;
                        let stat = sys::fstat(fd.as_fd()).map_err(|e| Status::from_io(&e))?;
                        (fd, stat)
                    }
                };
                Ok((
                    cached_handle_of(dir.export, fd.as_fd(), &stat, cache)?,
                    stat,
                ))
            })
        });
        match found {
            Ok((handle, stat)) => {
                status(encoder, Status::Ok);
                wire::fh3(encoder, &handle);
                wire::post_op_attr(encoder, Some(&stat), dir.fsid());
                wire::post_op_attr(encoder, Some(&dir.stat), dir.fsid());
            }
            Err(error) => {
                status(encoder, error);
                wire::post_op_attr(encoder, Some(&dir.stat), dir.fsid());
            }
        }
    }

    fn access(&self, handle: &[u8], wanted: u32, encoder: &mut Encoder<'_>) {
        let Some(object) = self.resolve_or_reply(handle, encoder, no_attributes) else {
            return;
        };
        let identity = self.identity(object.export);
        let writable = object.export.policy.writable();
        let granted = as_caller(&identity, || {
            let fd = object.fd.as_fd();
            let may = |mode| sys::access(fd, mode);
            let mut granted = 0;
            if wanted & access::READ != 0 && may(libc::R_OK) {
                granted |= access::READ;
            }
            let is_dir = object.stat.is_dir();
            if is_dir {
                if wanted & access::LOOKUP != 0 && may(libc::X_OK) {
                    granted |= access::LOOKUP;
                }
                if writable && may(libc::W_OK | libc::X_OK) {
                    granted |= wanted & (access::MODIFY | access::EXTEND | access::DELETE);
                }
            } else {
                if writable && may(libc::W_OK) {
                    granted |= wanted & (access::MODIFY | access::EXTEND);
                }
                if wanted & access::EXECUTE != 0 && may(libc::X_OK) {
                    granted |= access::EXECUTE;
                }
            }
            Ok(granted)
        });
        match granted {
            Ok(granted) => {
                status(encoder, Status::Ok);
                wire::post_op_attr(encoder, Some(&object.stat), object.fsid());
                encoder.u32(granted);
            }
            Err(error) => {
                status(encoder, error);
                wire::post_op_attr(encoder, Some(&object.stat), object.fsid());
            }
        }
    }

    fn readlink(&self, handle: &[u8], encoder: &mut Encoder<'_>) {
        let Some(object) = self.resolve_or_reply(handle, encoder, no_attributes) else {
            return;
        };
        let target = if object.stat.is_symlink() {
            sys::read_link(object.fd.as_fd()).map_err(|e| Status::from_io(&e))
        } else {
            Err(Status::Inval)
        };
        match target {
            Ok(target) => {
                status(encoder, Status::Ok);
                wire::post_op_attr(encoder, Some(&object.stat), object.fsid());
                let _ = encoder.opaque(&target, u32::MAX);
            }
            Err(error) => {
                status(encoder, error);
                wire::post_op_attr(encoder, Some(&object.stat), object.fsid());
            }
        }
    }

    /// READ: the data goes into the reply, or, spliced, into a pipe that is returned.
    fn read(
        &self,
        handle: &[u8],
        offset: u64,
        count: u32,
        encoder: &mut Encoder<'_>,
    ) -> Option<SplicedData> {
        let object = self.resolve_or_reply(handle, encoder, no_attributes)?;
        let count = count.min(MAX_IO) as usize;
        let identity = self.identity(object.export);
        let file = require_regular(&object.stat).and_then(|()| {
            as_caller(&identity, || {
                open_for_io(&object, &identity, libc::O_RDONLY)
            })
        });
        let file = match file {
            Ok(file) => file,
            Err(error) => {
                status(encoder, error);
                wire::post_op_attr(encoder, Some(&object.stat), object.fsid());
                return None;
            }
        };
        // Read straight into the reply: status, attributes, count, eof, then the opaque data.
        // Never more than the file holds past `offset` (as of the attributes just taken), so a
        // small file read with a 1 MiB count does not cost a megabyte; a file that grew since
        // gets a short read without eof, and the client reads on.
        let count = count
            .min(usize::try_from(object.stat.size.saturating_sub(offset)).unwrap_or(usize::MAX));
        if let Some(pipes) = self.pipes
            && count >= pipes.min_read()
            && let Some(data) = read_spliced(pipes, &object, &file, offset, count, encoder)
        {
            return Some(data);
        }
        let start = encoder.position();
        status(encoder, Status::Ok);
        wire::post_op_attr(encoder, Some(&object.stat), object.fsid());
        let out = encoder.buffer();
        let count_at = out.len();
        out.extend_from_slice(&[0; 12]); // count, eof, data length
        let data_at = out.len();
        // Read into the reply's spare capacity rather than zero-filling up to a megabyte first
        // (measured: the memset was 7% of the server's CPU in a sequential read), with one
        // `pread` (`read_to_end` took eight growing reads per megabyte). Nothing to read (at or
        // past the end, or an offset beyond what pread takes) is no I/O and no error.
        // Room for the XDR padding too, so that padding never moves a megabyte.
        out.reserve_exact(count + 3);
        let failure = if count == 0 {
            None
        } else {
            sys::pread_append(file.as_fd(), out, count, offset).err()
        };
        let filled = out.len() - data_at;
        if let Some(error) = failure
            && filled == 0
        {
            out.truncate(start);
            let encoder = &mut Encoder::new(out);
            status(encoder, Status::from_io(&error));
            wire::post_op_attr(encoder, Some(&object.stat), object.fsid());
            return None;
        }
        let size = sys::fstat(file.as_fd()).map_or(object.stat.size, |stat| stat.size);
        let eof = offset.saturating_add(filled as u64) >= size;
        out.truncate(data_at + filled);
        out.resize(data_at + filled.next_multiple_of(4), 0);
        let filled32 = u32::try_from(filled).unwrap_or(0);
        out[count_at..count_at + 4].copy_from_slice(&filled32.to_be_bytes());
        out[count_at + 4..count_at + 8].copy_from_slice(&u32::from(eof).to_be_bytes());
        out[count_at + 8..count_at + 12].copy_from_slice(&filled32.to_be_bytes());
        None
    }

    fn write(
        &self,
        handle: &[u8],
        offset: u64,
        count: u32,
        stable: StableHow,
        data: &[u8],
        encoder: &mut Encoder<'_>,
    ) {
        let Some(mut object) = self.resolve_or_reply(handle, encoder, no_wcc_data) else {
            return;
        };
        let device = (u64::from(object.stat.dev_major) << 32) | u64::from(object.stat.dev_minor);
        let _exclusive = self.service.file_lock(device, object.stat.ino);
        // The attributes read at resolve time may predate a concurrent WRITE that has landed
        // since; the reply's pre-operation attributes must be the file right before this one.
        if let Ok(now) = sys::fstat(object.fd.as_fd()) {
            object.stat = now;
        }
        let identity = self.identity(object.export);
        let outcome = self
            .writable(object.export)
            .and_then(|()| require_regular(&object.stat))
            .and_then(|()| {
                let count = count as usize;
                let data = data.get(..count).ok_or(Status::Inval)?;
                as_caller(&identity, || {
                    let file = open_for_io(&object, &identity, libc::O_WRONLY)?;
                    file.write_all_at(data, offset)
                        .map_err(|e| Status::from_io(&e))?;
                    let committed = match stable {
                        StableHow::Unstable => StableHow::Unstable,
                        StableHow::DataSync => {
                            file.sync_data().map_err(|e| Status::from_io(&e))?;
                            StableHow::DataSync
                        }
                        StableHow::FileSync => {
                            file.sync_all().map_err(|e| Status::from_io(&e))?;
                            StableHow::FileSync
                        }
                    };
                    let after = sys::fstat(file.as_fd()).ok();
                    Ok((count, committed, after))
                })
            });
        match outcome {
            Ok((count, committed, after)) => {
                status(encoder, Status::Ok);
                wire::wcc_data(encoder, Some(&object.stat), after.as_ref(), object.fsid());
                encoder.u32(u32::try_from(count).unwrap_or(0));
                encoder.u32(committed as u32);
                encoder.fixed_opaque(&self.service.write_verifier());
            }
            Err(error) => {
                status(encoder, error);
                let after = sys::fstat(object.fd.as_fd()).ok();
                wire::wcc_data(encoder, Some(&object.stat), after.as_ref(), object.fsid());
            }
        }
    }

    /// Encodes a CREATE/MKDIR/SYMLINK/MKNOD result.
    fn created(
        &self,
        dir: &Object<'_>,
        outcome: OpResult<(HandleBytes, Stat)>,
        encoder: &mut Encoder<'_>,
    ) {
        let after = sys::fstat(dir.fd.as_fd()).ok();
        match outcome {
            Ok((handle, stat)) => {
                status(encoder, Status::Ok);
                wire::post_op_fh3(encoder, Some(&handle));
                wire::post_op_attr(encoder, Some(&stat), dir.fsid());
            }
            Err(error) => status(encoder, error),
        }
        wire::wcc_data(encoder, Some(&dir.stat), after.as_ref(), dir.fsid());
    }

    fn create(&self, place: DirOp<'_>, how: CreateHow, encoder: &mut Encoder<'_>) {
        let Some(dir) = self.resolve_or_reply(place.dir, encoder, no_wcc_data) else {
            return;
        };
        let identity = self.identity(dir.export);
        let outcome = self
            .writable(dir.export)
            .and_then(|()| require_dir(&dir.stat))
            .and_then(|()| checked_name(place.name, NameUse::Create))
            .and_then(|name| {
                as_caller(&identity, || {
                    let (exclusive, attributes, verifier) = match how {
                        CreateHow::Unchecked(attributes) => (false, attributes, None),
                        CreateHow::Guarded(attributes) => (true, attributes, None),
                        CreateHow::Exclusive(verifier) => {
                            (true, SetAttributes::default(), Some(verifier))
                        }
                    };
                    let mode = attributes.mode.unwrap_or(0o644) & 0o7777;
                    let created = sys::openat2(
                        dir.fd.as_fd(),
                        &name,
                        libc::O_CREAT | libc::O_EXCL | libc::O_RDONLY | libc::O_NOFOLLOW,
                        mode,
                        sys::RESOLVE_CONTAINED,
                    );
                    let fd = match created {
                        Ok(fd) => {
                            let stat = sys::fstat(fd.as_fd()).map_err(|e| Status::from_io(&e))?;
                            let rest = SetAttributes {
                                mode: None,
                                ..attributes
                            };
                            if let Some(verifier) = verifier {
                                // The verifier lives in the times until the client's SETATTR,
                                // as knfsd stores it, so a retransmitted CREATE finds it.
                                let (atime, mtime) = verifier_times(verifier);
                                sys::set_times(fd.as_fd(), SetTime::To(atime), SetTime::To(mtime))
                                    .map_err(|e| Status::from_io(&e))?;
                            } else if !rest.is_empty() {
                                apply_attributes(fd.as_fd(), &stat, &rest, &identity)?;
                            }
                            fd
                        }
                        Err(error) if error.raw_os_error() == Some(libc::EEXIST) && !exclusive => {
                            let fd = open_beneath(dir.fd.as_fd(), &name)
                                .map_err(|e| Status::from_io(&e))?;
                            let stat = sys::fstat(fd.as_fd()).map_err(|e| Status::from_io(&e))?;
                            if !stat.is_regular() {
                                return Err(Status::Exist);
                            }
                            // An existing file: only a size (truncation) is applied, as knfsd.
                            if attributes.size.is_some() {
                                let size_only = SetAttributes {
                                    size: attributes.size,
                                    ..SetAttributes::default()
                                };
                                apply_attributes(fd.as_fd(), &stat, &size_only, &identity)?;
                            }
                            fd
                        }
                        Err(error) if error.raw_os_error() == Some(libc::EEXIST) => {
                            let Some(verifier) = verifier else {
                                return Err(Status::Exist);
                            };
                            // A retransmitted exclusive CREATE finds its own verifier.
                            let fd = open_beneath(dir.fd.as_fd(), &name)
                                .map_err(|e| Status::from_io(&e))?;
                            let stat = sys::fstat(fd.as_fd()).map_err(|e| Status::from_io(&e))?;
                            let (atime, mtime) = verifier_times(verifier);
                            if !stat.is_regular()
                                || stat.atime.seconds != atime.seconds
                                || stat.mtime.seconds != mtime.seconds
                            {
                                return Err(Status::Exist);
                            }
                            fd
                        }
                        Err(error) => return Err(Status::from_io(&error)),
                    };
                    // Taken while the new file is open: it is alive after this reading.
                    let cache = cache_for(self.service, dir.export);
                    let stat = sys::fstat(fd.as_fd()).map_err(|e| Status::from_io(&e))?;
                    Ok((
                        cached_handle_of(dir.export, fd.as_fd(), &stat, cache)?,
                        stat,
                    ))
                })
            });
        self.created(&dir, outcome, encoder);
    }

    fn make(&self, place: DirOp<'_>, what: Make<'_>, encoder: &mut Encoder<'_>) {
        let Some(dir) = self.resolve_or_reply(place.dir, encoder, no_wcc_data) else {
            return;
        };
        let identity = self.identity(dir.export);
        let outcome = self
            .writable(dir.export)
            .and_then(|()| require_dir(&dir.stat))
            .and_then(|()| checked_name(place.name, NameUse::Create))
            .and_then(|name| {
                as_caller(&identity, || {
                    let io = |e: std::io::Error| Status::from_io(&e);
                    let attributes = match what {
                        Make::Dir(attributes) => {
                            let mode = attributes.mode.unwrap_or(0o755) & 0o7777;
                            sys::mkdirat(dir.fd.as_fd(), &name, mode).map_err(io)?;
                            SetAttributes {
                                mode: None,
                                ..attributes
                            }
                        }
                        Make::Symlink(attributes, target) => {
                            if target.len() > wire::MAX_PATH {
                                return Err(Status::NameTooLong);
                            }
                            let target = CString::new(target).map_err(|_| Status::Inval)?;
                            sys::symlinkat(&target, dir.fd.as_fd(), &name).map_err(io)?;
                            // A symbolic link's mode means nothing on Linux.
                            SetAttributes {
                                mode: None,
                                ..attributes
                            }
                        }
                        Make::Node(MknodData::Special { kind, attributes }) => {
                            let file_type = if kind == FileType::Fifo {
                                libc::S_IFIFO
                            } else {
                                libc::S_IFSOCK
                            };
                            let mode = attributes.mode.unwrap_or(0o644) & 0o7777;
                            sys::mknodat(dir.fd.as_fd(), &name, file_type | mode, 0).map_err(io)?;
                            SetAttributes {
                                mode: None,
                                ..attributes
                            }
                        }
                        // Device nodes would hand any client a door around every permission
                        // (the daemon holds CAP_MKNOD); the gateway does not create them.
                        Make::Node(MknodData::Device { .. } | MknodData::Other(_)) => {
                            return Err(Status::BadType);
                        }
                    };
                    let fd = open_beneath(dir.fd.as_fd(), &name).map_err(io)?;
                    let stat = sys::fstat(fd.as_fd()).map_err(io)?;
                    if !attributes.is_empty() {
                        apply_attributes(fd.as_fd(), &stat, &attributes, &identity)?;
                    }
                    let cache = cache_for(self.service, dir.export);
                    let stat = sys::fstat(fd.as_fd()).map_err(io)?;
                    Ok((
                        cached_handle_of(dir.export, fd.as_fd(), &stat, cache)?,
                        stat,
                    ))
                })
            });
        self.created(&dir, outcome, encoder);
    }

    fn remove(&self, place: DirOp<'_>, directory: bool, encoder: &mut Encoder<'_>) {
        let Some(dir) = self.resolve_or_reply(place.dir, encoder, no_wcc_data) else {
            return;
        };
        let identity = self.identity(dir.export);
        let outcome = self
            .writable(dir.export)
            .and_then(|()| require_dir(&dir.stat))
            .and_then(|()| checked_name(place.name, NameUse::Remove))
            .and_then(|name| {
                as_caller(&identity, || {
                    sys::unlinkat(dir.fd.as_fd(), &name, directory).map_err(|e| Status::from_io(&e))
                })
            });
        let after = sys::fstat(dir.fd.as_fd()).ok();
        status(encoder, outcome.err().unwrap_or(Status::Ok));
        wire::wcc_data(encoder, Some(&dir.stat), after.as_ref(), dir.fsid());
    }

    fn rename(&self, from: DirOp<'_>, to: DirOp<'_>, encoder: &mut Encoder<'_>) {
        let dirs = self
            .resolve(from.dir)
            .and_then(|from_dir| Ok((from_dir, self.resolve(to.dir)?)));
        let (from_dir, to_dir) = match dirs {
            Ok(dirs) => dirs,
            Err(error) => {
                status(encoder, error);
                wire::wcc_data(encoder, None, None, 0);
                wire::wcc_data(encoder, None, None, 0);
                return;
            }
        };
        let identity = self.identity(from_dir.export);
        let outcome = self
            .writable(from_dir.export)
            .and_then(|()| same_export(&from_dir, &to_dir))
            .and_then(|()| require_dir(&from_dir.stat))
            .and_then(|()| require_dir(&to_dir.stat))
            .and_then(|()| {
                let from_name = checked_name(from.name, NameUse::Remove)?;
                let to_name = checked_name(to.name, NameUse::Remove)?;
                as_caller(&identity, || {
                    sys::renameat(from_dir.fd.as_fd(), &from_name, to_dir.fd.as_fd(), &to_name)
                        .map_err(|e| Status::from_io(&e))
                })
            });
        status(encoder, outcome.err().unwrap_or(Status::Ok));
        for dir in [&from_dir, &to_dir] {
            let after = sys::fstat(dir.fd.as_fd()).ok();
            wire::wcc_data(encoder, Some(&dir.stat), after.as_ref(), dir.fsid());
        }
    }

    fn link(&self, file: &[u8], link: DirOp<'_>, encoder: &mut Encoder<'_>) {
        let objects = self
            .resolve(file)
            .and_then(|file| Ok((file, self.resolve(link.dir)?)));
        let (file, dir) = match objects {
            Ok(objects) => objects,
            Err(error) => {
                status(encoder, error);
                wire::post_op_attr(encoder, None, 0);
                wire::wcc_data(encoder, None, None, 0);
                return;
            }
        };
        let identity = self.identity(dir.export);
        let outcome = self
            .writable(dir.export)
            .and_then(|()| same_export(&file, &dir))
            .and_then(|()| require_dir(&dir.stat))
            .and_then(|()| {
                if file.stat.is_dir() {
                    return Err(Status::IsDir);
                }
                let name = checked_name(link.name, NameUse::Create)?;
                as_caller(&identity, || {
                    sys::link(file.fd.as_fd(), dir.fd.as_fd(), &name)
                        .map_err(|e| Status::from_io(&e))
                })
            });
        status(encoder, outcome.err().unwrap_or(Status::Ok));
        let file_after = sys::fstat(file.fd.as_fd()).ok();
        wire::post_op_attr(encoder, file_after.as_ref(), file.fsid());
        let dir_after = sys::fstat(dir.fd.as_fd()).ok();
        wire::wcc_data(encoder, Some(&dir.stat), dir_after.as_ref(), dir.fsid());
    }

    /// READDIR (`plus` = None) and READDIRPLUS. Cookies are the file system's own directory
    /// offsets (`d_off`), which depend only on the directory's contents on disk, so they stay
    /// valid on another node mounting the same volume; the cookie verifier is therefore always
    /// zero and never checked, as knfsd does.
    fn readdir(
        &self,
        handle: &[u8],
        cookie: u64,
        maxcount: u32,
        plus: Option<()>,
        encoder: &mut Encoder<'_>,
    ) {
        let Some(dir) = self.resolve_or_reply(handle, encoder, no_attributes) else {
            return;
        };
        let identity = self.identity(dir.export);
        let fsid = dir.fsid();
        let listing = require_dir(&dir.stat).and_then(|()| {
            as_caller(&identity, || {
                let opened = sys::reopen(dir.fd.as_fd(), libc::O_RDONLY | libc::O_DIRECTORY)
                    .map_err(|e| Status::from_io(&e))?;
                let Some(()) = plus else {
                    return list_directory(&dir, &opened, handle, cookie, maxcount, None, None);
                };
                let cache = cache_for(self.service, dir.export);
                let live = |recorder: Option<&mut Recorder>| {
                    list_directory(
                        &dir,
                        &opened,
                        handle,
                        cookie,
                        maxcount,
                        Some(cache),
                        recorder,
                    )
                };
                // The listing cache holds what any caller may see once it may search the
                // directory (a caller that may not gets no attributes or handles).
                let cached = self
                    .listing_key(&dir, handle, cookie)
                    .filter(|_| sys::may_search(opened.as_fd()));
                let Some((listings, key)) = cached else {
                    return live(None);
                };
                let (run, ticket) = listings.lookup(&key);
                let answer =
                    run.and_then(|run| list_from_run(&run, &dir, &opened, handle, maxcount, cache));
                listings.count(answer.is_some());
                if let Some(answer) = answer {
                    return answer;
                }
                let mut recorder = Recorder {
                    run: Run::default(),
                    objects: Vec::new(),
                    fsid: key.dir.fsid,
                };
                let listed = live(Some(&mut recorder))?;
                recorder.run.eof = listed.1;
                recorder.run.budget = entries_budget(maxcount);
                listings.store(ticket, key, recorder.run, recorder.objects);
                Ok(listed)
            })
        });
        match listing {
            Ok((entries, eof)) => {
                status(encoder, Status::Ok);
                wire::post_op_attr(encoder, Some(&dir.stat), fsid);
                encoder.fixed_opaque(&[0; 8]);
                encoder.raw(&entries);
                encoder.bool(false);
                encoder.bool(eof);
            }
            Err(error) => {
                status(encoder, error);
                wire::post_op_attr(encoder, Some(&dir.stat), fsid);
            }
        }
    }

    fn fsstat(&self, handle: &[u8], encoder: &mut Encoder<'_>) {
        let Some(object) = self.resolve_or_reply(handle, encoder, no_attributes) else {
            return;
        };
        match sys::fstatfs(object.fd.as_fd()) {
            Ok(fs) => {
                status(encoder, Status::Ok);
                wire::post_op_attr(encoder, Some(&object.stat), object.fsid());
                encoder.u64(fs.blocks.saturating_mul(fs.block_size));
                encoder.u64(fs.blocks_free.saturating_mul(fs.block_size));
                encoder.u64(fs.blocks_available.saturating_mul(fs.block_size));
                encoder.u64(fs.files);
                encoder.u64(fs.files_free);
                encoder.u64(fs.files_free);
                encoder.u32(0); // invarsec: the volume changes at any time
            }
            Err(error) => {
                status(encoder, Status::from_io(&error));
                wire::post_op_attr(encoder, Some(&object.stat), object.fsid());
            }
        }
    }

    fn fsinfo(&self, handle: &[u8], encoder: &mut Encoder<'_>) {
        let Some(object) = self.resolve_or_reply(handle, encoder, no_attributes) else {
            return;
        };
        status(encoder, Status::Ok);
        wire::post_op_attr(encoder, Some(&object.stat), object.fsid());
        encoder.u32(MAX_IO); // rtmax
        encoder.u32(MAX_IO); // rtpref
        encoder.u32(4096); // rtmult
        encoder.u32(MAX_IO); // wtmax
        encoder.u32(MAX_IO); // wtpref
        encoder.u32(4096); // wtmult
        encoder.u32(DIR_PREFERRED); // dtpref
        encoder.u64(i64::MAX as u64); // maxfilesize: off_t's limit
        encoder.u32(0); // time_delta: nanoseconds
        encoder.u32(1);
        // FSF3_LINK | FSF3_SYMLINK | FSF3_HOMOGENEOUS | FSF3_CANSETTIME
        encoder.u32(0x0001 | 0x0002 | 0x0008 | 0x0010);
    }

    fn pathconf(&self, handle: &[u8], encoder: &mut Encoder<'_>) {
        let Some(object) = self.resolve_or_reply(handle, encoder, no_attributes) else {
            return;
        };
        let name_max = sys::fstatfs(object.fd.as_fd())
            .map(|fs| u32::try_from(fs.name_max).unwrap_or(255))
            .unwrap_or(255);
        // SAFETY: fpathconf on a descriptor we hold; no memory arguments.
        let link_max = unsafe { libc::fpathconf(sys::raw(object.fd.as_fd()), libc::_PC_LINK_MAX) };
        status(encoder, Status::Ok);
        wire::post_op_attr(encoder, Some(&object.stat), object.fsid());
        encoder.u32(u32::try_from(link_max).unwrap_or(u32::MAX));
        encoder.u32(name_max);
        encoder.bool(true); // no_trunc: long names are refused, not cut
        encoder.bool(true); // chown_restricted
        encoder.bool(false); // case_insensitive
        encoder.bool(true); // case_preserving
    }

    fn commit(&self, handle: &[u8], encoder: &mut Encoder<'_>) {
        let Some(object) = self.resolve_or_reply(handle, encoder, no_wcc_data) else {
            return;
        };
        // Flushing is not a permission question (it changes no data), so it runs as the daemon
        // on a read-only descriptor; `fsync` flushes every writer's dirty pages of the file.
        let outcome = self
            .writable(object.export)
            .and_then(|()| require_regular(&object.stat))
            .and_then(|()| {
                let file = File::from(
                    sys::reopen(object.fd.as_fd(), libc::O_RDONLY)
                        .map_err(|e| Status::from_io(&e))?,
                );
                file.sync_all().map_err(|e| Status::from_io(&e))
            });
        let after = sys::fstat(object.fd.as_fd()).ok();
        status(encoder, outcome.err().unwrap_or(Status::Ok));
        wire::wcc_data(encoder, Some(&object.stat), after.as_ref(), object.fsid());
        if outcome.is_ok() {
            encoder.fixed_opaque(&self.service.write_verifier());
        }
    }
}

fn same_export(a: &Object<'_>, b: &Object<'_>) -> OpResult<()> {
    if a.export.id == b.export.id {
        Ok(())
    } else {
        Err(Status::XDev)
    }
}

/// The atime and mtime an exclusive CREATE's verifier is stored in.
fn verifier_times(verifier: [u8; 8]) -> (Time, Time) {
    let seconds = |bytes: &[u8]| {
        let mut word = [0u8; 4];
        word.copy_from_slice(bytes);
        // Kept within 31 bits so the value survives file systems with signed 32-bit times.
        i64::from(u32::from_be_bytes(word) & 0x7fff_ffff)
    };
    (
        Time {
            seconds: seconds(&verifier[..4]),
            nanoseconds: 0,
        },
        Time {
            seconds: seconds(&verifier[4..]),
            nanoseconds: 0,
        },
    )
}

impl Context<'_> {
    /// The listing cache and the key of `dir`'s run from `cookie`, when `dir`'s export uses
    /// the cache.
    fn listing_key(
        &self,
        dir: &Object<'_>,
        handle: &[u8],
        cookie: u64,
    ) -> Option<(&ListingCache, RunKey)> {
        let listings = self.service.listings.as_deref()?;
        let fsid = dir.export.listing_fsid?;
        let id = HandleBytes::new(handle)?.object_id()?;
        Some((
            listings,
            RunKey {
                dir: FsObject { fsid, id },
                export: dir.export.id,
                cookie,
            },
        ))
    }
}

/// What a live READDIRPLUS listing records for the listing cache: the run it encoded and the
/// objects whose attributes the run holds.
struct Recorder {
    run: Run,
    objects: Vec<FsObject>,
    fsid: u64,
}

impl Recorder {
    /// Records the entry `encoded` (name at `name`, attributes from `prefix_end`), described by
    /// `stat` and `handle`. Only regular files with one link, with both attributes and handle,
    /// are cached; every other entry stays fresh (`listing_cache`). (A symbolic link's access
    /// time moves when a path goes through it, with no event.)
    fn record(
        &mut self,
        encoded: &[u8],
        name: std::ops::Range<usize>,
        prefix_end: usize,
        stat: Option<&Stat>,
        handle: Option<&HandleBytes>,
    ) {
        let object = match (stat, handle) {
            (Some(stat), Some(handle)) if stat.nlink == 1 && stat.is_regular() => {
                handle.object_id()
            }
            _ => None,
        };
        self.run.push(encoded, name, prefix_end, object.is_none());
        if let Some(id) = object {
            self.objects.push(FsObject {
                fsid: self.fsid,
                id,
            });
        }
    }
}

/// Encodes a READDIRPLUS reply's entries from a cached `run` (its fresh entries' attributes and
/// handles read now), as [`list_directory`] would; `None` when the reply has room for more than
/// the run was listed for and the run does not reach the end of the directory (the caller
/// lists live). (A reply with fewer entries than would fit is valid: the client goes on from
/// its last cookie.)
fn list_from_run(
    run: &Run,
    dir: &Object<'_>,
    opened: &OwnedFd,
    dir_handle: &[u8],
    maxcount: u32,
    cache: Option<CacheUse<'_>>,
) -> Option<OpResult<(Vec<u8>, bool)>> {
    let fsid = dir.export.fsid();
    let budget = entries_budget(maxcount);
    let mut entries = Vec::with_capacity(run.bytes.len().min(budget) + MAX_ENTRY);
    for index in 0..run.entries.len() {
        let start = entries.len();
        let (bytes, fresh) = run.entry(index);
        entries.extend_from_slice(bytes);
        if let Some(name) = fresh {
            let name = std::ffi::CString::new(name).ok()?;
            let (stat, handle) = entry_attributes(dir, opened, dir_handle, &name, cache);
            let encoder = &mut Encoder::new(&mut entries);
            wire::post_op_attr(encoder, stat.as_ref(), fsid);
            wire::post_op_fh3(encoder, handle.as_ref().map(HandleBytes::as_bytes));
        }
        if entries.len() > budget {
            if index == 0 {
                return Some(Err(Status::TooSmall));
            }
            entries.truncate(start);
            return Some(Ok((entries, false)));
        }
    }
    if run.eof {
        Some(Ok((entries, true)))
    } else if budget <= run.budget {
        Some(Ok((entries, false)))
    } else {
        None
    }
}

/// The bytes a READDIR(PLUS) reply of `maxcount` has for its entries: all but the fixed parts
/// (status, directory attributes, verifier, the final FALSE and eof).
fn entries_budget(maxcount: u32) -> usize {
    let overhead = 4 + wire::POST_OP_ATTR_SIZE + 8 + 4 + 4;
    (maxcount.min(MAX_DIR_REPLY) as usize).saturating_sub(overhead)
}

/// Lists `opened` (the directory `dir`, open for reading) from `cookie`, encoding entries
/// (`entry3`, or `entryplus3` when `plus` is given, each preceded by TRUE) until the reply would
/// exceed `maxcount`. `plus` carries the handle cache, if the export may use one. Returns the
/// encoded entries and whether the end was reached.
fn list_directory(
    dir: &Object<'_>,
    opened: &OwnedFd,
    dir_handle: &[u8],
    cookie: u64,
    maxcount: u32,
    plus: Option<Option<CacheUse<'_>>>,
    mut recorder: Option<&mut Recorder>,
) -> OpResult<(Vec<u8>, bool)> {
    let export = dir.export;
    let fsid = export.fsid();
    let at_root = dir.stat.same_object(&export.root_stat);
    let budget = entries_budget(maxcount);
    // Entries are encoded in place; the one that does not fit is cut off again, so room for
    // one more than the budget means no reallocation.
    let mut entries = Vec::with_capacity(budget.min(64 * 1024) + MAX_ENTRY);
    let mut buffer = vec![0u8; DIRENT_BUFFER];
    // Directory records read but not used cost the file system's iteration for nothing (a
    // third of a READDIRPLUS listing's time on tmpfs, measured), so each `getdents64` asks for
    // about as many records as the rest of the reply will hold: a READDIRPLUS entry takes
    // about five times the bytes of its record, a READDIR entry about as many. After the first
    // batch, the ratio seen so far decides.
    let (mut records_used, mut encoded_used) = (0usize, 0usize);
    let guess_ratio = if plus.is_some() { 5 } else { 1 };
    let mut position = cookie;
    let mut count = 0usize;
    loop {
        let remaining = budget.saturating_sub(entries.len());
        let wanted = match remaining.checked_mul(records_used) {
            Some(scaled) if encoded_used > 0 => scaled / encoded_used,
            _ => remaining / guess_ratio,
        };
        let wanted = (wanted + DIRENT_SLACK).clamp(MIN_DIRENT_READ, DIRENT_BUFFER);
        let filled = sys::read_dir_raw_at(opened.as_fd(), position, &mut buffer[..wanted])
            .map_err(|error| match error.raw_os_error() {
                Some(libc::EINVAL) => Status::BadCookie,
                _ => Status::from_io(&error),
            })?;
        if filled == 0 {
            return Ok((entries, true));
        }
        for entry in sys::dirents(&buffer[..filled]) {
            let start = entries.len();
            let encoder = &mut Encoder::new(&mut entries);
            encoder.bool(true);
            let name = entry.name.to_bytes();
            // `..` of the export root is the root itself: nothing outside is ever named.
            let fileid = if name == b".." && at_root {
                export.root_stat.ino
            } else {
                entry.ino
            };
            encoder.u64(fileid);
            let name_start = encoder.position() + 4 - start;
            let _ = encoder.opaque(name, u32::MAX);
            encoder.u64(entry.next_offset);
            let prefix_end = encoder.position() - start;
            let mut described = None;
            if let Some(cache) = plus {
                let (stat, handle) = entry_attributes(dir, opened, dir_handle, entry.name, cache);
                wire::post_op_attr(encoder, stat.as_ref(), fsid);
                wire::post_op_fh3(encoder, handle.as_ref().map(HandleBytes::as_bytes));
                described = Some((stat, handle));
            }
            if entries.len() > budget {
                if count == 0 {
                    return Err(Status::TooSmall);
                }
                entries.truncate(start);
                return Ok((entries, false));
            }
            if let Some(recorder) = recorder.as_deref_mut() {
                let (stat, handle) = described.unwrap_or_default();
                recorder.record(
                    &entries[start..],
                    name_start..name_start + name.len(),
                    prefix_end,
                    stat.as_ref(),
                    handle.as_ref(),
                );
            }
            records_used += entry.record_length;
            encoded_used += entries.len() - start;
            count += 1;
            position = entry.next_offset;
        }
    }
}

/// The largest encoded directory entry: TRUE, file id, a 255-byte name, cookie, attributes and
/// a handle.
const MAX_ENTRY: usize = 4 + 8 + 4 + 256 + 8 + wire::POST_OP_ATTR_SIZE + 4 + 4 + MAX_HANDLE;

/// The largest `getdents64` read of one READDIR(PLUS) batch.
const DIRENT_BUFFER: usize = 32 * 1024;
/// The smallest: room for the largest record (a 255-byte name takes 280 bytes) and more.
const MIN_DIRENT_READ: usize = 1024;
/// Added to each estimate, so that a batch rarely falls one record short.
const DIRENT_SLACK: usize = 256;

/// Attributes and handle of one READDIRPLUS entry; `None` for entries on another mount or that
/// vanished meanwhile (both are allowed to be absent). The attributes are always read afresh;
/// the handle comes from `cache` when it holds this incarnation's.
fn entry_attributes(
    dir: &Object<'_>,
    opened: &OwnedFd,
    dir_handle: &[u8],
    name: &std::ffi::CStr,
    cache: Option<CacheUse<'_>>,
) -> (Option<Stat>, Option<HandleBytes>) {
    let export = dir.export;
    match name.to_bytes() {
        b"." => return (Some(dir.stat), HandleBytes::new(dir_handle)),
        b".." => {
            return match parent_of(dir) {
                Ok((fd, stat)) => (Some(stat), handle_of(export, fd.as_fd()).ok()),
                Err(_) => (None, None),
            };
        }
        _ => {}
    }
    let Ok(stat) = sys::statx(opened.as_fd(), name) else {
        return (None, None);
    };
    if stat.mount_id != export.root_stat.mount_id {
        return (None, None);
    }
    if let Some(cache) = cache
        && let Some(key) = cache.key(export, &stat)
    {
        if let Some(handle) = cache.cache.get(&key) {
            return (Some(stat), Some(handle));
        }
        // A miss the cache may keep: read the handle and the key from one descriptor (two
        // calls by name could see two files if a rename lands in between).
        if let Ok(fd) = open_beneath(opened.as_fd(), name)
            && let Ok(object) = export.resolver.object_id(fd.as_fd())
        {
            let handle = export.handle_for(object);
            if let Ok(again) = sys::fstat(fd.as_fd())
                && cache.key(export, &again) == Some(key)
            {
                cache.cache.insert(key, &handle, cache.now);
            }
            return (Some(stat), Some(handle));
        }
    }
    let handle = export
        .resolver
        .object_id_at(opened.as_fd(), name)
        .ok()
        .map(|object| export.handle_for(object));
    (Some(stat), handle)
}

/// The empty `post_op_attr` of a reply whose object could not be resolved.
fn no_attributes(encoder: &mut Encoder<'_>) {
    wire::post_op_attr(encoder, None, 0);
}

/// The empty `wcc_data` of a reply whose object could not be resolved.
fn no_wcc_data(encoder: &mut Encoder<'_>) {
    wire::wcc_data(encoder, None, None, 0);
}
