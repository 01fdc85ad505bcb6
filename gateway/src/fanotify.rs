//! Change notification for whole local file systems: a fanotify group (`fanotify(7)`) reporting
//! file ids, with a filesystem mark per watched file system, and the pure decoding of the events
//! it reports. [`crate::listing_cache`] uses it to know when a cached listing went stale.
//!
//! The group reports `FAN_REPORT_DIR_FID | FAN_REPORT_FID`: an event that changes a
//! directory's entries names that directory; an event about a file names the file and its
//! parent (by the path the change used); an event about a directory itself names the
//! directory. Each is a file system id (`fsid`) and a kernel file handle — the same bytes
//! `name_to_handle_at` gives, so they compare with the object ids of
//! [`crate::handle::KernelResolver`]. No names: the kernel need not copy them, and more events
//! merge in its queue. The kernel queues an event before the system call that caused it
//! returns, which is what makes "read the queue, then answer from the cache" see every change a
//! local program finished before the request arrived.

use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};

use crate::sys;

/// What a filesystem mark asks for: every change of a directory's entries, of a file's data or
/// attributes (`FAN_ACCESS` too: a read may move the access time), on directories as well, and
/// the move of a directory (its `..` changes). A file's deletion or move is also a change of
/// its directory's entries (`FAN_DELETE_SELF` would only add events), and a change of its link
/// count is `FAN_ATTRIB`.
pub const MASK: u64 = libc::FAN_ACCESS
    | libc::FAN_MODIFY
    | libc::FAN_ATTRIB
    | libc::FAN_CREATE
    | libc::FAN_DELETE
    | libc::FAN_MOVED_FROM
    | libc::FAN_MOVED_TO
    | libc::FAN_MOVE_SELF
    | libc::FAN_ONDIR;

/// The events that change which entries a directory has.
pub const ENTRY_CHANGES: u64 =
    libc::FAN_CREATE | libc::FAN_DELETE | libc::FAN_MOVED_FROM | libc::FAN_MOVED_TO;

/// A fanotify notification group. Its descriptor is non-blocking.
#[derive(Debug)]
pub struct Watch {
    fd: OwnedFd,
}

impl Watch {
    /// A new group (needs `CAP_SYS_ADMIN`; fails with `EINVAL` on kernels before 5.9, which
    /// lack `FAN_REPORT_DIR_FID`).
    pub fn new() -> io::Result<Watch> {
        let flags = libc::FAN_CLASS_NOTIF
            | libc::FAN_CLOEXEC
            | libc::FAN_NONBLOCK
            | libc::FAN_REPORT_DIR_FID
            | libc::FAN_REPORT_FID;
        // SAFETY: fanotify_init takes two flag words and returns a new descriptor or -1.
        let fd = unsafe { libc::fanotify_init(flags, libc::O_RDONLY as libc::c_uint) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `fd` was just returned by fanotify_init; nothing else owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Watch { fd })
    }

    /// Another descriptor of the same group (for a thread that waits on it).
    pub fn try_clone(&self) -> io::Result<Watch> {
        Ok(Watch {
            fd: self.fd.try_clone()?,
        })
    }

    /// Watches the whole file system `dir` is on (every mount of it, in every namespace).
    /// `dir` may be an `O_PATH` descriptor.
    pub fn add_filesystem(&self, dir: BorrowedFd<'_>) -> io::Result<()> {
        // fanotify_mark refuses `O_PATH` descriptors; their magic link names the same inode.
        let path = sys::proc_path(dir);
        // SAFETY: `path` is a NUL-terminated string that outlives the call; the other arguments
        // are plain integers.
        let result = unsafe {
            libc::fanotify_mark(
                self.fd.as_raw_fd(),
                libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                MASK,
                libc::AT_FDCWD,
                path.as_ptr(),
            )
        };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Reads queued events into `buffer` (at least [`READ_BUFFER`] bytes); `Ok(0)` when none
    /// are queued.
    pub fn read(&self, buffer: &mut [u8]) -> io::Result<usize> {
        loop {
            // SAFETY: `buffer` is valid for writes of its length.
            let read = unsafe {
                libc::read(
                    self.fd.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if let Ok(read) = usize::try_from(read) {
                return Ok(read);
            }
            // A signal is no reason to empty the cache: read again.
            let error = io::Error::last_os_error();
            match error.kind() {
                io::ErrorKind::WouldBlock => return Ok(0),
                io::ErrorKind::Interrupted => {}
                _ => return Err(error),
            }
        }
    }

    /// How many bytes of events are queued now (`FIONREAD`).
    pub fn queued(&self) -> io::Result<usize> {
        let mut queued: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int through the pointer.
        let result = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::FIONREAD, &mut queued) };
        if result < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(usize::try_from(queued).unwrap_or(0))
    }

    /// Waits until events are queued or `timeout` passed; `Ok(true)` when some are.
    pub fn wait(&self, timeout: std::time::Duration) -> io::Result<bool> {
        let [ready] = sys::poll_readable([self.fd.as_fd()], Some(timeout))?;
        Ok(ready)
    }
}

impl AsFd for Watch {
    fn as_fd(&self) -> BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

/// A read buffer that always holds at least one event (the kernel refuses smaller ones with
/// `EINVAL`: an event with a 255-byte name and two handles takes under 600 bytes).
pub const READ_BUFFER: usize = 64 * 1024;

/// A file system object as an event names it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Fid<'a> {
    /// `statfs`'s `f_fsid`, as [`sys::FsStat::fsid`] gives it.
    pub fsid: u64,
    pub handle_type: i32,
    pub handle: &'a [u8],
}

/// One event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Event<'a> {
    pub mask: u64,
    /// The directory: where an entry was created, deleted or moved, the parent (by the path
    /// used) of a changed file, or a changed directory itself.
    pub dir: Option<Fid<'a>>,
    /// The entry's name, when the group reports names (this one does not).
    pub name: Option<&'a [u8]>,
    /// The changed file.
    pub object: Option<Fid<'a>>,
}

impl Event<'_> {
    /// Whether the kernel dropped events since the last read (its queue was full).
    pub fn is_overflow(&self) -> bool {
        self.mask & libc::FAN_Q_OVERFLOW != 0
    }
}

/// The events could not be decoded: the caller must assume anything changed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("undecodable fanotify event at byte {offset}")]
pub struct Malformed {
    pub offset: usize,
}

/// `struct fanotify_event_metadata`.
const METADATA: usize = 24;
/// `struct fanotify_event_info_header` + `fsid` + `struct file_handle`'s two fields.
const FID_INFO: usize = 4 + 8 + 8;

/// Decodes the events of one read (pure; native byte order, as the kernel writes them).
pub fn events(buffer: &[u8]) -> impl Iterator<Item = Result<Event<'_>, Malformed>> + '_ {
    let mut offset = 0;
    std::iter::from_fn(move || {
        if offset >= buffer.len() {
            return None;
        }
        let start = offset;
        let event = decode_event(buffer, start);
        match event {
            Ok((event, length)) => {
                offset = start + length;
                Some(Ok(event))
            }
            Err(error) => {
                offset = buffer.len();
                Some(Err(error))
            }
        }
    })
}

fn u16_at(buffer: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(buffer.get(at..at + 2)?.try_into().ok()?))
}

fn u32_at(buffer: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(buffer.get(at..at + 4)?.try_into().ok()?))
}

fn u64_at(buffer: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(buffer.get(at..at + 8)?.try_into().ok()?))
}

/// One event at `start` and its length.
fn decode_event(buffer: &[u8], start: usize) -> Result<(Event<'_>, usize), Malformed> {
    let malformed = Malformed { offset: start };
    let length = u32_at(buffer, start).ok_or(malformed)? as usize;
    let version = *buffer.get(start + 4).ok_or(malformed)?;
    let metadata_length = usize::from(u16_at(buffer, start + 6).ok_or(malformed)?);
    let mask = u64_at(buffer, start + 8).ok_or(malformed)?;
    if version != libc::FANOTIFY_METADATA_VERSION
        || metadata_length < METADATA
        || length < metadata_length
    {
        return Err(malformed);
    }
    let event_bytes = buffer.get(start..start + length).ok_or(malformed)?;
    let mut event = Event {
        mask,
        dir: None,
        name: None,
        object: None,
    };
    let mut at = metadata_length;
    while at < event_bytes.len() {
        let info_type = event_bytes[at];
        let info_length = usize::from(u16_at(event_bytes, at + 2).ok_or(malformed)?);
        let info = event_bytes.get(at..at + info_length).ok_or(malformed)?;
        if info_length < FID_INFO {
            return Err(malformed);
        }
        match info_type {
            libc::FAN_EVENT_INFO_TYPE_FID => event.object = Some(decode_fid(info).0),
            libc::FAN_EVENT_INFO_TYPE_DFID => event.dir = Some(decode_fid(info).0),
            libc::FAN_EVENT_INFO_TYPE_DFID_NAME => {
                let (fid, rest) = decode_fid(info);
                let name = rest.split(|&byte| byte == 0).next().unwrap_or_default();
                event.dir = Some(fid);
                event.name = Some(name);
            }
            // Other records (pidfd, error, old/new names of FAN_RENAME) are never asked for.
            _ => {}
        }
        if event.dir.is_some_and(|fid| fid.handle.is_empty())
            || event.object.is_some_and(|fid| fid.handle.is_empty())
        {
            return Err(malformed);
        }
        at += info_length;
    }
    Ok((event, length))
}

/// The id in a FID record (checked to be at least [`FID_INFO`] long) and the bytes after the
/// handle; an empty handle when the record is too short for the handle it announces.
fn decode_fid(info: &[u8]) -> (Fid<'_>, &[u8]) {
    let word = |at| u32_at(info, at).unwrap_or_default();
    let fsid = u64::from(word(4)) | u64::from(word(8)) << 32;
    let handle_length = word(12) as usize;
    let handle_type = word(16) as i32;
    match info.get(FID_INFO..FID_INFO + handle_length) {
        Some(handle) => (
            Fid {
                fsid,
                handle_type,
                handle,
            },
            &info[FID_INFO + handle_length..],
        ),
        None => (
            Fid {
                fsid,
                handle_type,
                handle: &[],
            },
            &[],
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An encoded FID record (`info_type`, fsid words, handle, then `name` NUL-terminated),
    /// padded to four bytes as the kernel pads it.
    fn fid_record(info_type: u8, fsid: [u32; 2], handle_type: i32, handle: &[u8]) -> Vec<u8> {
        fid_record_named(info_type, fsid, handle_type, handle, None)
    }

    fn fid_record_named(
        info_type: u8,
        fsid: [u32; 2],
        handle_type: i32,
        handle: &[u8],
        name: Option<&[u8]>,
    ) -> Vec<u8> {
        let mut record = vec![info_type, 0, 0, 0];
        record.extend_from_slice(&fsid[0].to_ne_bytes());
        record.extend_from_slice(&fsid[1].to_ne_bytes());
        record.extend_from_slice(&(handle.len() as u32).to_ne_bytes());
        record.extend_from_slice(&handle_type.to_ne_bytes());
        record.extend_from_slice(handle);
        if let Some(name) = name {
            record.extend_from_slice(name);
            record.push(0);
        }
        while record.len() % 4 != 0 {
            record.push(0);
        }
        let length = record.len() as u16;
        record[2..4].copy_from_slice(&length.to_ne_bytes());
        record
    }

    fn event(mask: u64, records: &[Vec<u8>]) -> Vec<u8> {
        let body: Vec<u8> = records.concat();
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&((METADATA + body.len()) as u32).to_ne_bytes());
        bytes.push(libc::FANOTIFY_METADATA_VERSION);
        bytes.push(0);
        bytes.extend_from_slice(&(METADATA as u16).to_ne_bytes());
        bytes.extend_from_slice(&mask.to_ne_bytes());
        bytes.extend_from_slice(&libc::FAN_NOFD.to_ne_bytes());
        bytes.extend_from_slice(&0i32.to_ne_bytes());
        bytes.extend_from_slice(&body);
        bytes
    }

    #[test]
    fn events_with_a_directory_a_name_and_an_object_decode() {
        let dir_handle = [0x80, 0x40, 0x56, 0x4f, 2, 0, 0, 0, 0, 0, 0, 0];
        let file_handle = [0x90, 0xf1, 0x46, 0xf1, 3, 0, 0, 0, 0, 0, 0, 0];
        let mut buffer = event(
            libc::FAN_CREATE,
            &[
                fid_record_named(
                    libc::FAN_EVENT_INFO_TYPE_DFID_NAME,
                    [7, 9],
                    1,
                    &dir_handle,
                    Some(b"file"),
                ),
                fid_record(libc::FAN_EVENT_INFO_TYPE_FID, [7, 9], 1, &file_handle),
            ],
        );
        buffer.extend(event(libc::FAN_Q_OVERFLOW, &[]));
        buffer.extend(event(
            libc::FAN_MODIFY,
            &[
                fid_record(libc::FAN_EVENT_INFO_TYPE_DFID, [7, 9], 1, &dir_handle),
                fid_record(libc::FAN_EVENT_INFO_TYPE_FID, [7, 9], 1, &file_handle),
            ],
        ));
        buffer.extend(event(
            libc::FAN_ACCESS | libc::FAN_ONDIR,
            &[fid_record_named(
                libc::FAN_EVENT_INFO_TYPE_DFID_NAME,
                [7, 9],
                1,
                &dir_handle,
                Some(b"."),
            )],
        ));
        let decoded: Vec<_> = events(&buffer).collect::<Result<_, _>>().unwrap();
        let fsid = 7 | 9 << 32;
        assert_eq!(
            decoded,
            [
                Event {
                    mask: libc::FAN_CREATE,
                    dir: Some(Fid {
                        fsid,
                        handle_type: 1,
                        handle: &dir_handle
                    }),
                    name: Some(b"file"),
                    object: Some(Fid {
                        fsid,
                        handle_type: 1,
                        handle: &file_handle
                    }),
                },
                Event {
                    mask: libc::FAN_Q_OVERFLOW,
                    dir: None,
                    name: None,
                    object: None
                },
                Event {
                    mask: libc::FAN_MODIFY,
                    dir: Some(Fid {
                        fsid,
                        handle_type: 1,
                        handle: &dir_handle
                    }),
                    name: None,
                    object: Some(Fid {
                        fsid,
                        handle_type: 1,
                        handle: &file_handle
                    }),
                },
                Event {
                    mask: libc::FAN_ACCESS | libc::FAN_ONDIR,
                    dir: Some(Fid {
                        fsid,
                        handle_type: 1,
                        handle: &dir_handle
                    }),
                    name: Some(b"."),
                    object: None,
                },
            ]
        );
        assert!(decoded[1].is_overflow() && !decoded[0].is_overflow() && !decoded[2].is_overflow());
    }

    #[test]
    fn damaged_events_are_reported_and_end_the_batch() {
        let good = event(
            libc::FAN_MODIFY,
            &[fid_record(
                libc::FAN_EVENT_INFO_TYPE_FID,
                [1, 2],
                1,
                &[1; 8],
            )],
        );
        let mut cases: Vec<(&str, Vec<u8>)> = Vec::new();
        cases.push(("cut short", good[..good.len() - 3].to_vec()));
        let mut version = good.clone();
        version[4] = 2;
        cases.push(("old version", version));
        let mut length = good.clone();
        length[0..4].copy_from_slice(&10u32.to_ne_bytes());
        cases.push(("event shorter than its metadata", length));
        let mut handle = good.clone();
        handle[METADATA + 12..METADATA + 16].copy_from_slice(&200u32.to_ne_bytes());
        cases.push(("handle longer than its record", handle));
        let mut record = good.clone();
        record[METADATA + 2..METADATA + 4].copy_from_slice(&3u16.to_ne_bytes());
        cases.push(("record shorter than a FID", record));
        for (what, bytes) in cases {
            let mut buffer = good.clone();
            buffer.extend_from_slice(&bytes);
            let decoded: Vec<_> = events(&buffer).collect();
            assert_eq!(decoded.len(), 2, "{what}");
            assert!(decoded[0].is_ok(), "{what}");
            assert_eq!(decoded[1], Err(Malformed { offset: good.len() }), "{what}");
        }
    }

    proptest::proptest! {
        #[test]
        fn any_bytes_decode_without_panicking(bytes in proptest::collection::vec(0u8..=255, 0..400)) {
            for event in events(&bytes) {
                let _ = event;
            }
        }
    }
}
