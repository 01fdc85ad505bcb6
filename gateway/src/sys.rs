//! Thin, safe wrappers over the Linux system calls the file server needs and `std` does not
//! offer: `openat2` with resolve flags, file handles (`name_to_handle_at`, `open_by_handle_at`),
//! `statx`, `getdents64`, the `*at` family on `O_PATH` descriptors, per-thread credentials, and
//! the pipe, `splice` and `sendmsg` calls of zero-copy READ replies.
//!
//! Every wrapper takes Rust types (borrowed descriptors, `CStr` names, slices), checks the
//! return value and turns `-1` into `io::Error::last_os_error()`; nothing here decides policy.
//! Operations that the kernel does not accept on an `O_PATH` descriptor go through the
//! descriptor's `/proc/self/fd/N` magic link, which the kernel follows to the very same inode
//! (this is how `O_PATH` is meant to be upgraded) and checks with the caller's credentials.

use std::ffi::{CStr, CString};
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

/// The largest kernel file handle (`MAX_HANDLE_SZ`).
pub const MAX_KERNEL_HANDLE: usize = 128;

fn check(result: libc::c_int) -> io::Result<libc::c_int> {
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(result)
    }
}

fn check_size(result: libc::ssize_t) -> io::Result<usize> {
    usize::try_from(result).map_err(|_| io::Error::last_os_error())
}

fn owned(fd: libc::c_int) -> io::Result<OwnedFd> {
    let fd = check(fd)?;
    // SAFETY: `fd` was just returned by a successful open-like call, so it is a valid descriptor
    // that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// The empty path, for `AT_EMPTY_PATH` calls on a descriptor itself.
const EMPTY: &CStr = c"";

/// `/proc/self/fd/N` for `fd`.
pub fn proc_path(fd: BorrowedFd<'_>) -> CString {
    // A decimal number never contains a NUL byte.
    CString::new(format!("/proc/self/fd/{}", fd.as_raw_fd())).unwrap_or_default()
}

/// The resolve flags every name lookup in an export uses (DESIGN.md invariant 4): stay beneath
/// the starting directory, never follow `/proc` magic links, never cross into another mount.
pub const RESOLVE_CONTAINED: u64 =
    libc::RESOLVE_BENEATH | libc::RESOLVE_NO_MAGICLINKS | libc::RESOLVE_NO_XDEV;

/// `openat2(dir, name, how)` with `resolve` flags; `O_CLOEXEC` is always added.
pub fn openat2(
    dir: BorrowedFd<'_>,
    name: &CStr,
    flags: libc::c_int,
    mode: u32,
    resolve: u64,
) -> io::Result<OwnedFd> {
    let mut how: libc::open_how = {
        // SAFETY: `open_how` is a plain C struct of integers, for which all-zero is valid.
        unsafe { std::mem::zeroed() }
    };
    how.flags = u64::try_from(flags | libc::O_CLOEXEC).unwrap_or(0);
    how.mode = u64::from(mode);
    how.resolve = resolve;
    // SAFETY: `name` is NUL-terminated, `how` is a valid `open_how` whose size we pass; the
    // kernel reads both and writes nothing.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_openat2,
            dir.as_raw_fd(),
            name.as_ptr(),
            &how as *const libc::open_how,
            std::mem::size_of::<libc::open_how>(),
        )
    };
    owned(libc::c_int::try_from(fd).unwrap_or(-1))
}

/// `openat(dir, name, flags)` without resolve restrictions, for `..` of a directory already known
/// to be inside an export and for opening an export root from configuration.
pub fn openat(dir: Option<BorrowedFd<'_>>, name: &CStr, flags: libc::c_int) -> io::Result<OwnedFd> {
    let dir = dir.map_or(libc::AT_FDCWD, |dir| dir.as_raw_fd());
    // SAFETY: `name` is NUL-terminated; the returned descriptor is checked and owned.
    owned(unsafe { libc::openat(dir, name.as_ptr(), flags | libc::O_CLOEXEC, 0) })
}

/// Opens the object `fd` refers to again with `flags` (e.g. `O_RDONLY` from an `O_PATH`
/// descriptor), through its `/proc/self/fd` link, with a full permission check as the caller.
pub fn reopen(fd: BorrowedFd<'_>, flags: libc::c_int) -> io::Result<OwnedFd> {
    let path = proc_path(fd);
    // SAFETY: `path` is NUL-terminated; the returned descriptor is checked and owned.
    owned(unsafe { libc::open(path.as_ptr(), flags | libc::O_CLOEXEC) })
}

/// Whether `fd` was opened `O_PATH` (it refers to an object without opening it).
pub fn is_path_only(fd: BorrowedFd<'_>) -> bool {
    // SAFETY: F_GETFL on a descriptor we borrow; no memory arguments.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    flags >= 0 && flags & libc::O_PATH != 0
}

/// A kernel file handle as `name_to_handle_at` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelHandle {
    pub handle_type: i32,
    length: usize,
    buffer: [u8; MAX_KERNEL_HANDLE],
    /// The mount the object was found on (not part of the handle: it differs between nodes).
    pub mount_id: i32,
}

/// `struct file_handle` with room for the largest handle.
#[repr(C)]
struct HandleBuffer {
    handle_bytes: u32,
    handle_type: libc::c_int,
    f_handle: [u8; MAX_KERNEL_HANDLE],
}

/// `name_to_handle_at(dir, name)`; with an empty `name` the handle of `dir` itself. Trailing
/// symbolic links are not followed.
pub fn name_to_handle(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<KernelHandle> {
    let mut buffer = HandleBuffer {
        handle_bytes: MAX_KERNEL_HANDLE as u32,
        handle_type: 0,
        f_handle: [0; MAX_KERNEL_HANDLE],
    };
    let mut mount_id: libc::c_int = 0;
    let flags = if name.is_empty() {
        libc::AT_EMPTY_PATH
    } else {
        0
    };
    // SAFETY: `buffer` starts with the `file_handle` header and has `handle_bytes` bytes of room
    // after it; `name` is NUL-terminated; `mount_id` is a valid out-pointer.
    check(unsafe {
        libc::name_to_handle_at(
            dir.as_raw_fd(),
            name.as_ptr(),
            (&mut buffer as *mut HandleBuffer).cast::<libc::file_handle>(),
            &mut mount_id,
            flags,
        )
    })?;
    let length = usize::try_from(buffer.handle_bytes)
        .unwrap_or(usize::MAX)
        .min(MAX_KERNEL_HANDLE);
    Ok(KernelHandle {
        handle_type: buffer.handle_type,
        length,
        buffer: buffer.f_handle,
        mount_id,
    })
}

impl KernelHandle {
    /// The handle bytes (`f_handle`).
    pub fn bytes(&self) -> &[u8] {
        &self.buffer[..self.length]
    }
}

/// `open_by_handle_at(mount, handle, flags)`; needs `CAP_DAC_READ_SEARCH`.
pub fn open_by_handle(
    mount: BorrowedFd<'_>,
    handle_type: i32,
    bytes: &[u8],
    flags: libc::c_int,
) -> io::Result<OwnedFd> {
    if bytes.len() > MAX_KERNEL_HANDLE {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    let mut buffer = HandleBuffer {
        handle_bytes: bytes.len() as u32,
        handle_type,
        f_handle: [0; MAX_KERNEL_HANDLE],
    };
    buffer.f_handle[..bytes.len()].copy_from_slice(bytes);
    // SAFETY: `buffer` is a valid `file_handle` header followed by `handle_bytes` bytes; the
    // returned descriptor is checked and owned.
    owned(unsafe {
        libc::open_by_handle_at(
            mount.as_raw_fd(),
            (&mut buffer as *mut HandleBuffer).cast::<libc::file_handle>(),
            flags | libc::O_CLOEXEC,
        )
    })
}

/// A point in time as the kernel reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Time {
    pub seconds: i64,
    pub nanoseconds: u32,
}

/// The process's soft limit on open descriptors (`RLIMIT_NOFILE`).
pub fn open_files_limit() -> Option<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: a valid out-pointer.
    (unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } == 0).then_some(limit.rlim_cur)
}

/// Raises the soft limit on open descriptors to the hard one, as servers do at start (the usual
/// soft limit, 1024, is a guard for `select` that the gateway does not use); returns the soft
/// limit now in force.
pub fn raise_open_files_limit() -> io::Result<u64> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: valid pointers to a `rlimit` for both calls.
    check(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) })?;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        check(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) })?;
        limit = raised;
    }
    Ok(limit.rlim_cur)
}

/// `clock_gettime(CLOCK_REALTIME_COARSE)`: the clock, updated once per kernel tick, that the
/// kernel stamps file times with (`current_time`); a finer reading could be ahead of a
/// timestamp the kernel stamps afterwards.
pub fn coarse_realtime() -> Time {
    let mut reading = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid out-pointer; CLOCK_REALTIME_COARSE exists on every kernel the gateway
    // runs on (since 2.6.32), and on failure the zero reading admits nothing new.
    unsafe { libc::clock_gettime(libc::CLOCK_REALTIME_COARSE, &mut reading) };
    Time {
        seconds: reading.tv_sec,
        nanoseconds: u32::try_from(reading.tv_nsec).unwrap_or(0),
    }
}

/// The attributes of an object (from `statx`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Stat {
    /// File type and permission bits, as `st_mode`.
    pub mode: u32,
    pub nlink: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    /// 512-byte blocks allocated.
    pub blocks: u64,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub ino: u64,
    pub atime: Time,
    pub mtime: Time,
    pub ctime: Time,
    pub mount_id: u64,
    /// When this inode incarnation was created, if the file system records it (ext4, xfs,
    /// btrfs, tmpfs, CephFS do): together with device and inode number it tells incarnations
    /// apart (`handle_cache`).
    pub birth: Option<Time>,
}

impl Stat {
    pub fn file_type(&self) -> u32 {
        self.mode & libc::S_IFMT
    }

    pub fn is_dir(&self) -> bool {
        self.file_type() == libc::S_IFDIR
    }

    pub fn is_regular(&self) -> bool {
        self.file_type() == libc::S_IFREG
    }

    pub fn is_symlink(&self) -> bool {
        self.file_type() == libc::S_IFLNK
    }

    /// Whether `other` is the same object (device and inode).
    pub fn same_object(&self, other: &Stat) -> bool {
        self.ino == other.ino
            && self.dev_major == other.dev_major
            && self.dev_minor == other.dev_minor
    }
}

fn time(timestamp: libc::statx_timestamp) -> Time {
    Time {
        seconds: timestamp.tv_sec,
        nanoseconds: timestamp.tv_nsec,
    }
}

/// `statx(dir, name)` without following a trailing symbolic link; an empty `name` means `dir`
/// itself.
pub fn statx(dir: BorrowedFd<'_>, name: &CStr) -> io::Result<Stat> {
    let mut buffer: libc::statx = {
        // SAFETY: `statx` is a plain C struct of integers, for which all-zero is valid.
        unsafe { std::mem::zeroed() }
    };
    let mut flags = libc::AT_SYMLINK_NOFOLLOW | libc::AT_STATX_SYNC_AS_STAT;
    if name.is_empty() {
        flags |= libc::AT_EMPTY_PATH;
    }
    // SAFETY: `name` is NUL-terminated and `buffer` is a valid out-pointer of the right type.
    check(unsafe {
        libc::statx(
            dir.as_raw_fd(),
            name.as_ptr(),
            flags,
            libc::STATX_BASIC_STATS | libc::STATX_MNT_ID | libc::STATX_BTIME,
            &mut buffer,
        )
    })?;
    Ok(Stat {
        mode: u32::from(buffer.stx_mode),
        nlink: buffer.stx_nlink,
        uid: buffer.stx_uid,
        gid: buffer.stx_gid,
        size: buffer.stx_size,
        blocks: buffer.stx_blocks,
        rdev_major: buffer.stx_rdev_major,
        rdev_minor: buffer.stx_rdev_minor,
        dev_major: buffer.stx_dev_major,
        dev_minor: buffer.stx_dev_minor,
        ino: buffer.stx_ino,
        atime: time(buffer.stx_atime),
        mtime: time(buffer.stx_mtime),
        ctime: time(buffer.stx_ctime),
        mount_id: buffer.stx_mnt_id,
        birth: (buffer.stx_mask & libc::STATX_BTIME != 0).then(|| time(buffer.stx_btime)),
    })
}

/// `fstat` of a descriptor (any kind, `O_PATH` included).
pub fn fstat(fd: BorrowedFd<'_>) -> io::Result<Stat> {
    statx(fd, EMPTY)
}

/// What `fstatfs` reports about a file system.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FsStat {
    pub magic: i64,
    pub block_size: u64,
    pub blocks: u64,
    pub blocks_free: u64,
    pub blocks_available: u64,
    pub files: u64,
    pub files_free: u64,
    pub name_max: u64,
    /// `f_fsid`, its two words as one number (how [`crate::fanotify`] reports it).
    pub fsid: u64,
}

/// A non-blocking eventfd, for waking a thread that waits in [`poll_readable`].
pub fn eventfd() -> io::Result<OwnedFd> {
    // SAFETY: eventfd takes two integers and returns a new descriptor or -1.
    owned(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })
}

/// Makes the eventfd `fd` readable (for good: nothing reads it back).
pub fn eventfd_signal(fd: BorrowedFd<'_>) {
    let one = 1u64.to_ne_bytes();
    // SAFETY: an 8-byte buffer, as eventfd writes need. Failure (the counter at its maximum)
    // leaves it readable anyway.
    let _ = unsafe { libc::write(fd.as_raw_fd(), one.as_ptr().cast(), one.len()) };
}

/// `poll` for input on `fds` (a hang-up or an error counts: a read will report it), for at most
/// `timeout` (`None`: no limit); which of them are readable. An interrupted wait starts again.
pub fn poll_readable<const N: usize>(
    fds: [BorrowedFd<'_>; N],
    timeout: Option<std::time::Duration>,
) -> io::Result<[bool; N]> {
    let mut polled = fds.map(|fd| libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN | libc::POLLRDHUP,
        revents: 0,
    });
    let millis = timeout.map_or(-1, |timeout| {
        libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX)
    });
    let count = libc::nfds_t::try_from(N).unwrap_or(0);
    loop {
        // SAFETY: `polled` holds N valid pollfd entries.
        let ready = unsafe { libc::poll(polled.as_mut_ptr(), count, millis) };
        if ready >= 0 {
            return Ok(polled.map(|fd| fd.revents != 0));
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// `recv(socket, buffer, MSG_DONTWAIT)`: `ErrorKind::WouldBlock` when nothing is there.
pub fn recv(socket: BorrowedFd<'_>, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buffer` is valid for writes of its length.
    check_size(unsafe {
        libc::recv(
            socket.as_raw_fd(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
            libc::MSG_DONTWAIT,
        )
    })
}

/// Whether the calling thread's file system credentials may search (look names up in) the
/// directory `dir`: `faccessat2(dir, "", X_OK, AT_EACCESS | AT_EMPTY_PATH)`, which checks with
/// the credentials in effect (the per-thread fsuid and groups), not the real ids.
pub fn may_search(dir: BorrowedFd<'_>) -> bool {
    // SAFETY: faccessat2 with an empty NUL-terminated path and integer arguments.
    let result = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            dir.as_raw_fd(),
            EMPTY.as_ptr(),
            libc::X_OK,
            libc::AT_EACCESS | libc::AT_EMPTY_PATH,
        )
    };
    result == 0
}

/// `fstatfs(fd)`; works on `O_PATH` descriptors.
pub fn fstatfs(fd: BorrowedFd<'_>) -> io::Result<FsStat> {
    let mut buffer: libc::statfs = {
        // SAFETY: `statfs` is a plain C struct of integers, for which all-zero is valid.
        unsafe { std::mem::zeroed() }
    };
    // SAFETY: `buffer` is a valid out-pointer of the right type.
    check(unsafe { libc::fstatfs(fd.as_raw_fd(), &mut buffer) })?;
    let unsigned = |value: i64| u64::try_from(value).unwrap_or(0);
    #[allow(
        clippy::unnecessary_cast,
        reason = "the statfs field types differ between architectures"
    )]
    Ok(FsStat {
        magic: buffer.f_type as i64,
        block_size: unsigned(buffer.f_bsize as i64),
        blocks: buffer.f_blocks as u64,
        blocks_free: buffer.f_bfree as u64,
        blocks_available: buffer.f_bavail as u64,
        files: buffer.f_files as u64,
        files_free: buffer.f_ffree as u64,
        name_max: unsigned(buffer.f_namelen as i64),
        fsid: {
            // SAFETY: `fsid_t` is two C ints (its field is private in the libc crate).
            let words: [u32; 2] = unsafe { std::mem::transmute(buffer.f_fsid) };
            u64::from(words[0]) | u64::from(words[1]) << 32
        },
    })
}

/// One entry of a directory as `getdents64` returns it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DirEntry {
    pub ino: u64,
    /// The position after this entry: where a listing resumes (the NFS cookie).
    pub next_offset: u64,
    pub name: Vec<u8>,
}

/// Positions `dir` (opened for reading) at `offset` and reads up to `buffer.len()` bytes of
/// entries; an empty result means the end of the directory.
pub fn read_dir_at(
    dir: BorrowedFd<'_>,
    offset: u64,
    buffer: &mut [u8],
) -> io::Result<Vec<DirEntry>> {
    let filled = read_dir_raw_at(dir, offset, buffer)?;
    Ok(parse_dirents(buffer.get(..filled).unwrap_or_default()))
}

/// As [`read_dir_at`], but returns how many bytes of `linux_dirent64` records it put into
/// `buffer` (0 at the end of the directory), for [`dirents`] to walk without copying names.
/// `getdents64` fails with EINVAL when `buffer` cannot hold the next record (at most 280
/// bytes).
pub fn read_dir_raw_at(dir: BorrowedFd<'_>, offset: u64, buffer: &mut [u8]) -> io::Result<usize> {
    let offset =
        libc::off_t::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: plain lseek on a descriptor we borrow.
    if unsafe { libc::lseek(dir.as_raw_fd(), offset, libc::SEEK_SET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `buffer` is valid for writes of `buffer.len()` bytes.
    check_size(unsafe {
        libc::syscall(
            libc::SYS_getdents64,
            dir.as_raw_fd(),
            buffer.as_mut_ptr(),
            buffer.len(),
        ) as libc::ssize_t
    })
}

/// One `linux_dirent64` record, borrowed from the buffer `getdents64` filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirEntryRef<'a> {
    pub ino: u64,
    /// The position after this entry: where a listing resumes (the NFS cookie).
    pub next_offset: u64,
    /// The name, NUL-terminated in the record itself (so no copy is needed to pass it on).
    pub name: &'a CStr,
    /// The record's length in the buffer.
    pub record_length: usize,
}

/// Walks `linux_dirent64` records: `d_ino` u64, `d_off` i64, `d_reclen` u16, `d_type` u8, then
/// the NUL-terminated name. Stops at the first malformed record (too short, longer than what
/// is left, or a name without its NUL) rather than trusting it.
pub fn dirents(bytes: &[u8]) -> impl Iterator<Item = DirEntryRef<'_>> {
    let mut rest = bytes;
    std::iter::from_fn(move || {
        let header = rest.get(..19)?;
        let ino = u64::from_ne_bytes(header[0..8].try_into().ok()?);
        let next_offset = i64::from_ne_bytes(header[8..16].try_into().ok()?);
        let record_length = usize::from(u16::from_ne_bytes(header[16..18].try_into().ok()?));
        let record = rest.get(..record_length).filter(|_| record_length > 19)?;
        let name = CStr::from_bytes_until_nul(&record[19..]).ok()?;
        rest = &rest[record_length..];
        Some(DirEntryRef {
            ino,
            next_offset: next_offset as u64,
            name,
            record_length,
        })
    })
}

/// Parses `linux_dirent64` records into owned entries (see [`dirents`]).
pub fn parse_dirents(bytes: &[u8]) -> Vec<DirEntry> {
    dirents(bytes)
        .map(|entry| DirEntry {
            ino: entry.ino,
            next_offset: entry.next_offset,
            name: entry.name.to_bytes().to_vec(),
        })
        .collect()
}

/// Reads up to `count` bytes of `file` at `offset` (`pread`, so no file position is used)
/// into the spare capacity of `buffer`, appending them; stops early only at the end of the file
/// or at an error after some bytes were read (those are kept). Returns how many were appended.
/// One system call per read, whatever the size: `Read::read_to_end` starts at 8 KiB and
/// doubles, which took eight calls per 1 MiB READ.
pub fn pread_append(
    file: BorrowedFd<'_>,
    buffer: &mut Vec<u8>,
    count: usize,
    offset: u64,
) -> io::Result<usize> {
    buffer.reserve_exact(count);
    let mut appended = 0;
    while appended < count {
        let Ok(position) = libc::off_t::try_from(offset.saturating_add(appended as u64)) else {
            break;
        };
        let spare = buffer.spare_capacity_mut();
        let wanted = (count - appended).min(spare.len());
        // SAFETY: `spare` is valid for writes of `wanted` bytes (it is the vector's spare
        // capacity, reserved above); the kernel writes at most that many.
        let result = unsafe {
            libc::pread(
                file.as_raw_fd(),
                spare.as_mut_ptr().cast::<libc::c_void>(),
                wanted,
                position,
            )
        };
        match check_size(result) {
            Ok(0) => break,
            Ok(read) => {
                let read = read.min(wanted);
                // SAFETY: the kernel initialised `read` bytes of the spare capacity.
                unsafe { buffer.set_len(buffer.len() + read) };
                appended += read;
            }
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) if appended == 0 => return Err(error),
            Err(_) => break,
        }
    }
    Ok(appended)
}

/// A new pipe, both ends close-on-exec and non-blocking: `(read end, write end)`.
pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [-1 as libc::c_int; 2];
    // SAFETY: `fds` is valid for writes of the two descriptors pipe2 returns.
    check(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) })?;
    // SAFETY: both descriptors were just created by a successful pipe2 and nothing else owns
    // them.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// `fcntl(F_SETPIPE_SZ)`: asks for a pipe of at least `size` bytes; returns the size the kernel
/// gave (a power of two pages). Refused (EPERM) above `/proc/sys/fs/pipe-max-size` or the
/// user's pipe page quota without `CAP_SYS_RESOURCE`.
pub fn set_pipe_size(pipe: BorrowedFd<'_>, size: usize) -> io::Result<usize> {
    let size =
        libc::c_int::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
    // SAFETY: F_SETPIPE_SZ takes an integer argument and touches no memory of ours.
    let given = check(unsafe { libc::fcntl(pipe.as_raw_fd(), libc::F_SETPIPE_SZ, size) })?;
    Ok(usize::try_from(given).unwrap_or(0))
}

/// `ioctl(FIONREAD)`: how many bytes wait in the pipe (or socket) `fd`.
pub fn pending_bytes(fd: BorrowedFd<'_>) -> io::Result<usize> {
    let mut pending: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int to the pointer it is given, which `pending` is.
    check(unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut pending) })?;
    Ok(usize::try_from(pending).unwrap_or(0))
}

/// `splice(from, offset, to, NULL, length, flags)`: moves up to `length` bytes from `from`
/// (a file at `*offset`, which is advanced, or a pipe with `None`) into `to` (a pipe, or a
/// socket when `from` is a pipe) without copying them through user space. Returns how many
/// moved; 0 at the end of a file.
pub fn splice(
    from: BorrowedFd<'_>,
    offset: Option<&mut i64>,
    to: BorrowedFd<'_>,
    length: usize,
    flags: libc::c_uint,
) -> io::Result<usize> {
    let offset = offset.map_or(std::ptr::null_mut(), |offset| offset as *mut i64);
    // SAFETY: `offset` is null or points to a live i64 (loff_t) the kernel reads and updates;
    // the descriptors are borrowed for the call; no other memory is passed.
    check_size(unsafe {
        libc::splice(
            from.as_raw_fd(),
            offset,
            to.as_raw_fd(),
            std::ptr::null_mut(),
            length,
            flags,
        )
    })
}

/// `sendmsg(socket, slices, MSG_DONTWAIT | MSG_NOSIGNAL | flags)`: a non-blocking gathered
/// write that never raises SIGPIPE; `flags` may add `MSG_MORE`.
pub fn send_vectored(
    socket: BorrowedFd<'_>,
    slices: &[io::IoSlice<'_>],
    flags: libc::c_int,
) -> io::Result<usize> {
    // SAFETY: `msghdr` is a plain C struct for which all-zero is valid (no address, no control).
    let mut message: libc::msghdr = unsafe { std::mem::zeroed() };
    // `IoSlice` is ABI-compatible with `iovec` on Unix (its documentation guarantees it); the
    // kernel only reads through the pointer.
    message.msg_iov = slices.as_ptr().cast_mut().cast::<libc::iovec>();
    message.msg_iovlen = slices.len();
    // SAFETY: `message` points at `slices.len()` valid iovecs that live for the call.
    check_size(unsafe {
        libc::sendmsg(
            socket.as_raw_fd(),
            &message,
            libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL | flags,
        )
    })
}

/// `read(fd, buffer)`.
pub fn read(fd: BorrowedFd<'_>, buffer: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buffer` is valid for writes of its length.
    check_size(unsafe { libc::read(fd.as_raw_fd(), buffer.as_mut_ptr().cast(), buffer.len()) })
}

/// The size of a memory page (a pipe holds at most one page per slot).
pub fn page_size() -> usize {
    // SAFETY: sysconf has no memory arguments.
    let size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    usize::try_from(size)
        .ok()
        .filter(|&size| size > 0)
        .unwrap_or(4096)
}

/// `readlinkat(fd, "")`: the target of the symbolic link `fd` (opened with `O_PATH|O_NOFOLLOW`).
pub fn read_link(fd: BorrowedFd<'_>) -> io::Result<Vec<u8>> {
    let mut buffer = vec![0u8; libc::PATH_MAX as usize];
    // SAFETY: `buffer` is valid for writes of its length; the empty path is NUL-terminated.
    let length = check_size(unsafe {
        libc::readlinkat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            buffer.as_mut_ptr().cast(),
            buffer.len(),
        )
    })?;
    buffer.truncate(length);
    Ok(buffer)
}

/// `mkdirat(dir, name, mode)`.
pub fn mkdirat(dir: BorrowedFd<'_>, name: &CStr, mode: u32) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), mode) }).map(drop)
}

/// `symlinkat(target, dir, name)`.
pub fn symlinkat(target: &CStr, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    // SAFETY: both strings are NUL-terminated.
    check(unsafe { libc::symlinkat(target.as_ptr(), dir.as_raw_fd(), name.as_ptr()) }).map(drop)
}

/// `mknodat(dir, name, mode, device)`.
pub fn mknodat(dir: BorrowedFd<'_>, name: &CStr, mode: u32, device: u64) -> io::Result<()> {
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::mknodat(dir.as_raw_fd(), name.as_ptr(), mode, device) }).map(drop)
}

/// `unlinkat(dir, name, flags)`.
pub fn unlinkat(dir: BorrowedFd<'_>, name: &CStr, remove_dir: bool) -> io::Result<()> {
    let flags = if remove_dir { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `name` is NUL-terminated.
    check(unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) }).map(drop)
}

/// `renameat(from_dir, from, to_dir, to)`, replacing an existing target as POSIX rename does.
pub fn renameat(
    from_dir: BorrowedFd<'_>,
    from: &CStr,
    to_dir: BorrowedFd<'_>,
    to: &CStr,
) -> io::Result<()> {
    // SAFETY: both names are NUL-terminated.
    check(unsafe {
        libc::renameat(
            from_dir.as_raw_fd(),
            from.as_ptr(),
            to_dir.as_raw_fd(),
            to.as_ptr(),
        )
    })
    .map(drop)
}

/// A new hard link `dir/name` to the object `file` refers to. Goes through `/proc/self/fd`
/// with `AT_SYMLINK_FOLLOW` because `AT_EMPTY_PATH` would need `CAP_DAC_READ_SEARCH`, which a
/// caller acting as an ordinary user does not have.
pub fn link(file: BorrowedFd<'_>, dir: BorrowedFd<'_>, name: &CStr) -> io::Result<()> {
    let path = proc_path(file);
    // SAFETY: both names are NUL-terminated.
    check(unsafe {
        libc::linkat(
            libc::AT_FDCWD,
            path.as_ptr(),
            dir.as_raw_fd(),
            name.as_ptr(),
            libc::AT_SYMLINK_FOLLOW,
        )
    })
    .map(drop)
}

/// `fchownat(fd, "", uid, gid, AT_EMPTY_PATH)`; `None` leaves that id unchanged.
pub fn chown(fd: BorrowedFd<'_>, uid: Option<u32>, gid: Option<u32>) -> io::Result<()> {
    // SAFETY: the empty path is NUL-terminated; -1 means "unchanged".
    check(unsafe {
        libc::fchownat(
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            uid.unwrap_or(u32::MAX),
            gid.unwrap_or(u32::MAX),
            libc::AT_EMPTY_PATH,
        )
    })
    .map(drop)
}

/// `chmod` of the object `fd` refers to (not a symbolic link).
pub fn chmod(fd: BorrowedFd<'_>, mode: u32) -> io::Result<()> {
    let path = proc_path(fd);
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::fchmodat(libc::AT_FDCWD, path.as_ptr(), mode, 0) }).map(drop)
}

/// `truncate` of the regular file `fd` refers to, as the caller (needs write permission).
pub fn truncate(fd: BorrowedFd<'_>, size: u64) -> io::Result<()> {
    let size =
        libc::off_t::try_from(size).map_err(|_| io::Error::from_raw_os_error(libc::EFBIG))?;
    let path = proc_path(fd);
    // SAFETY: `path` is NUL-terminated.
    check(unsafe { libc::truncate(path.as_ptr(), size) }).map(drop)
}

/// How to set one timestamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SetTime {
    Keep,
    Now,
    To(Time),
}

fn timespec(time: SetTime) -> libc::timespec {
    match time {
        SetTime::Keep => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_OMIT,
        },
        SetTime::Now => libc::timespec {
            tv_sec: 0,
            tv_nsec: libc::UTIME_NOW,
        },
        SetTime::To(time) => libc::timespec {
            tv_sec: time.seconds,
            tv_nsec: libc::c_long::from(time.nanoseconds.min(999_999_999) as i32),
        },
    }
}

/// Sets the access and modification times of the object `fd` refers to.
pub fn set_times(fd: BorrowedFd<'_>, atime: SetTime, mtime: SetTime) -> io::Result<()> {
    let times = [timespec(atime), timespec(mtime)];
    let path = proc_path(fd);
    // SAFETY: `path` is NUL-terminated and `times` holds the two entries utimensat reads.
    check(unsafe { libc::utimensat(libc::AT_FDCWD, path.as_ptr(), times.as_ptr(), 0) }).map(drop)
}

/// `faccessat2(fd, "", mode, AT_EACCESS | AT_EMPTY_PATH)`: whether the current *file system*
/// credentials (the caller's, see `creds`) may access the object with `mode`.
pub fn access(fd: BorrowedFd<'_>, mode: libc::c_int) -> bool {
    // SAFETY: the empty path is NUL-terminated.
    let result = unsafe {
        libc::syscall(
            libc::SYS_faccessat2,
            fd.as_raw_fd(),
            EMPTY.as_ptr(),
            mode,
            libc::AT_EACCESS | libc::AT_EMPTY_PATH,
        )
    };
    result == 0
}

/// 8 random bytes from the kernel.
pub fn random_u64() -> io::Result<u64> {
    let mut bytes = [0u8; 8];
    // SAFETY: `bytes` is valid for writes of 8 bytes.
    let filled = check_size(unsafe { libc::getrandom(bytes.as_mut_ptr().cast(), 8, 0) })?;
    if filled != 8 {
        return Err(io::Error::from_raw_os_error(libc::EAGAIN));
    }
    Ok(u64::from_ne_bytes(bytes))
}

/// Sets the calling thread's file-system user id and returns the previous one. The raw system
/// call changes only this thread (unlike glibc's `setuid` family, which changes every thread).
pub fn set_fsuid(uid: u32) -> u32 {
    // SAFETY: setfsuid has no memory arguments and cannot fail in a way that harms memory.
    let previous = unsafe { libc::syscall(libc::SYS_setfsuid, uid) };
    u32::try_from(previous).unwrap_or(u32::MAX)
}

/// Like [`set_fsuid`] for the group id.
pub fn set_fsgid(gid: u32) -> u32 {
    // SAFETY: setfsgid has no memory arguments.
    let previous = unsafe { libc::syscall(libc::SYS_setfsgid, gid) };
    u32::try_from(previous).unwrap_or(u32::MAX)
}

/// Sets the calling thread's supplementary groups with the raw system call (this thread only).
pub fn set_groups(groups: &[u32]) -> io::Result<()> {
    // SAFETY: `groups` is valid for reads of `groups.len()` gid_t values (u32 on Linux).
    let result = unsafe { libc::syscall(libc::SYS_setgroups, groups.len(), groups.as_ptr()) };
    if result < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// The calling thread's supplementary groups.
pub fn groups() -> io::Result<Vec<u32>> {
    // SAFETY: with a size of 0, getgroups only returns the count and writes nothing.
    let count = check(unsafe { libc::getgroups(0, std::ptr::null_mut()) })?;
    let mut groups = vec![0u32; usize::try_from(count).unwrap_or(0)];
    // SAFETY: `groups` is valid for writes of its length in gid_t values.
    let count = check(unsafe { libc::getgroups(count, groups.as_mut_ptr()) })?;
    groups.truncate(usize::try_from(count).unwrap_or(0));
    Ok(groups)
}

/// A raw descriptor for logging.
pub fn raw(fd: BorrowedFd<'_>) -> RawFd {
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    fn record(ino: u64, offset: i64, name: &[u8]) -> Vec<u8> {
        let length = (19 + name.len() + 1).next_multiple_of(8);
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&ino.to_ne_bytes());
        bytes.extend_from_slice(&offset.to_ne_bytes());
        bytes.extend_from_slice(&(length as u16).to_ne_bytes());
        bytes.push(0); // d_type
        bytes.extend_from_slice(name);
        bytes.resize(length, 0);
        bytes
    }

    #[test]
    fn pread_append_reads_at_an_offset_and_stops_at_the_end() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("file");
        let content: Vec<u8> = (0..100_000u32).map(|index| (index % 253) as u8).collect();
        std::fs::write(&path, &content).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        let mut buffer = b"head".to_vec();
        assert_eq!(
            pread_append(file.as_fd(), &mut buffer, 1000, 5).unwrap(),
            1000
        );
        assert_eq!(&buffer[..4], b"head");
        assert_eq!(&buffer[4..], &content[5..1005]);
        let mut buffer = Vec::new();
        assert_eq!(
            pread_append(file.as_fd(), &mut buffer, 10_000, 95_000).unwrap(),
            5_000
        );
        assert_eq!(buffer, &content[95_000..]);
        assert_eq!(
            pread_append(file.as_fd(), &mut buffer, 10, 1 << 40).unwrap(),
            0
        );
        assert_eq!(
            pread_append(file.as_fd(), &mut buffer, 10, u64::MAX).unwrap(),
            0
        );
        let directory_fd = std::fs::File::open(directory.path()).unwrap();
        assert!(pread_append(directory_fd.as_fd(), &mut Vec::new(), 10, 0).is_err());
    }

    #[test]
    fn dirents_parse_and_stop_at_garbage() {
        let mut bytes = record(5, 10, b"a");
        bytes.extend(record(6, 20, b"longer-name"));
        let entries = parse_dirents(&bytes);
        assert_eq!(entries.len(), 2);
        assert_eq!(entries[1].name, b"longer-name");
        assert_eq!(entries[1].next_offset, 20);
        // A record length of zero or beyond the buffer ends parsing without panicking.
        let mut broken = record(7, 30, b"x");
        broken[16..18].copy_from_slice(&0u16.to_ne_bytes());
        assert!(parse_dirents(&broken).is_empty());
        let mut broken = record(7, 30, b"x");
        broken[16..18].copy_from_slice(&500u16.to_ne_bytes());
        assert!(parse_dirents(&broken).is_empty());
        assert!(parse_dirents(&[0; 18]).is_empty());
        // A name that runs to the end of its record without a NUL.
        let mut broken = record(7, 30, b"1234");
        broken[19..].fill(b'x');
        assert!(parse_dirents(&broken).is_empty());
        let borrowed: Vec<_> = dirents(&bytes).collect();
        assert_eq!(borrowed[0].name, c"a");
        assert_eq!(borrowed[0].record_length, 24);
        assert_eq!(borrowed[1].ino, 6);
    }

    #[test]
    fn openat2_refuses_to_leave_the_directory() {
        let directory = tempfile::tempdir().unwrap();
        std::fs::create_dir(directory.path().join("inner")).unwrap();
        std::os::unix::fs::symlink("/etc", directory.path().join("inner/out")).unwrap();
        let root = std::fs::File::open(directory.path().join("inner")).unwrap();
        for name in [c"..", c"../inner", c"/etc", c"out/passwd"] {
            let error = openat2(root.as_fd(), name, libc::O_PATH, 0, RESOLVE_CONTAINED)
                .expect_err(&format!("{name:?} escaped"));
            assert_eq!(error.raw_os_error(), Some(libc::EXDEV), "{name:?}");
        }
        assert!(
            openat2(
                root.as_fd(),
                c"out",
                libc::O_PATH | libc::O_NOFOLLOW,
                0,
                RESOLVE_CONTAINED
            )
            .is_ok()
        );
    }
}
