//! Zero-copy READ replies over TCP: a READ's data goes from the page cache into a pipe
//! (`splice`: the pipe takes references to the cached pages, nothing is copied), and from the
//! pipe into the socket (`splice` again: the socket takes the page references), never through
//! user space. knfsd serves READ the same way; Ganesha copies twice (into its buffer, then into
//! the socket).
//!
//! A reply is then a [`Reply`]: the bytes of the record mark, RPC header and READ3resok header
//! (`head`), followed by the data waiting in a pipe (`tail`, a [`SplicedData`]) and its XDR
//! padding. The order in which a READ is built matters: the file is spliced into the pipe
//! first, which tells the exact byte count; then the header is encoded with that count and the
//! record mark with the real total length. The serving loop (`server`) writes the head (with
//! `MSG_MORE`), splices the pipe into the socket until it is empty, then writes the padding;
//! [`Layout::part`] and [`advance`] say where a partially written reply resumes.
//!
//! Pipes come from a [`PipePool`]: bounded (at most `limit` pipes exist, lent or idle; when all
//! are lent a READ takes the copy path), each sized with `F_SETPIPE_SZ` to hold a whole
//! `MAX_IO` READ. A pipe that cannot be sized is closed and that READ copies. A pipe goes back
//! to the pool only when it is known to be empty (every byte it took was spliced out, and
//! `FIONREAD` says 0): a reply dropped half-written (the peer closed) closes its pipe instead,
//! so the next READ can never send another READ's leftover bytes. Exports whose file system
//! cannot splice are remembered and copy from then on.

use std::io;
use std::ops::Range;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::record::{LAST_FRAGMENT, MAX_FRAGMENT_LENGTH};
use crate::sys;

/// Zero bytes for the XDR padding after spliced data.
pub const PADDING: [u8; 3] = [0; 3];

/// How many pipes a service keeps at most (lent and idle together): as many as calls run at
/// once over all connections by default, so that a busy node does not fall back to copying,
/// while each pipe costs two descriptors and a page array of its own in the kernel.
pub const DEFAULT_PIPES: usize = 128;

/// The XDR padding after `length` bytes of opaque data.
pub fn padding(length: usize) -> usize {
    (4 - length % 4) % 4
}

/// The record mark of a single-fragment reply of `head` bytes (the 4 of the mark included)
/// followed by `data` spliced bytes and their padding; `None` if it does not fit one fragment.
pub fn record_mark(head: usize, data: usize) -> Option<[u8; 4]> {
    let length = head
        .checked_sub(4)?
        .checked_add(data)?
        .checked_add(padding(data))?;
    let length = u32::try_from(length)
        .ok()
        .filter(|&length| length <= MAX_FRAGMENT_LENGTH)?;
    Some((LAST_FRAGMENT | length).to_be_bytes())
}

/// The three parts of a reply on the wire, by length: head bytes, spliced data, padding.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Layout {
    pub head: usize,
    pub data: usize,
    pub pad: usize,
}

/// What is left to write of a reply, `written` bytes into it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Part {
    /// These bytes of the head.
    Head(Range<usize>),
    /// This many bytes of spliced data, which are exactly what is left in the pipe.
    Data(usize),
    /// These bytes of [`PADDING`].
    Padding(Range<usize>),
    /// Nothing.
    Done,
}

impl Layout {
    /// A reply of `head` bytes and `data` spliced bytes (0 for a plain reply).
    pub fn new(head: usize, data: usize) -> Layout {
        Layout {
            head,
            data,
            pad: padding(data),
        }
    }

    pub fn total(&self) -> usize {
        self.head + self.data + self.pad
    }

    /// The part to write next once `written` bytes of the reply are written.
    pub fn part(&self, written: usize) -> Part {
        if written < self.head {
            Part::Head(written..self.head)
        } else if written < self.head + self.data {
            Part::Data(self.head + self.data - written)
        } else if written < self.total() {
            let from = written - self.head - self.data;
            Part::Padding(from..self.pad)
        } else {
            Part::Done
        }
    }
}

/// Progress over a queue of replies whose total lengths are `totals`, the first of them
/// `offset` bytes written, after `written` more bytes went out: how many replies are now
/// complete, and how far the next one got.
pub fn advance(
    totals: impl IntoIterator<Item = usize>,
    mut offset: usize,
    mut written: usize,
) -> (usize, usize) {
    let mut complete = 0;
    for total in totals {
        let left = total.saturating_sub(offset);
        if written < left {
            return (complete, offset + written);
        }
        written -= left;
        offset = 0;
        complete += 1;
    }
    (complete, 0)
}

/// A reply as a stream transport sends it: bytes, then possibly spliced data and its padding.
#[derive(Debug, Default)]
pub struct Reply {
    /// The record mark, the RPC header and the results; all of the reply unless `tail` is set.
    pub head: Vec<u8>,
    /// Data waiting in a pipe, sent after `head`, then padded to a multiple of 4.
    pub tail: Option<SplicedData>,
}

impl From<Vec<u8>> for Reply {
    fn from(head: Vec<u8>) -> Reply {
        Reply { head, tail: None }
    }
}

impl Reply {
    /// The duplicate request cache's "send nothing".
    pub fn is_empty(&self) -> bool {
        self.head.is_empty() && self.tail.is_none()
    }

    pub fn layout(&self) -> Layout {
        Layout::new(
            self.head.len(),
            self.tail.as_ref().map_or(0, SplicedData::len),
        )
    }

    /// The whole reply as bytes, the pipe read out (for tests and transports that cannot
    /// splice).
    pub fn into_bytes(mut self) -> io::Result<Vec<u8>> {
        let layout = self.layout();
        let mut bytes = std::mem::take(&mut self.head);
        if let Some(mut tail) = self.tail.take() {
            let start = bytes.len();
            bytes.resize(start + layout.data, 0);
            let mut filled = 0;
            while filled < layout.data {
                match tail.pipe.read_into(&mut bytes[start + filled..]) {
                    Ok(0) => return Err(io::Error::from(io::ErrorKind::UnexpectedEof)),
                    Ok(read) => filled += read,
                    Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                    Err(error) => return Err(error),
                }
            }
            bytes.extend_from_slice(&PADDING[..layout.pad]);
        }
        Ok(bytes)
    }
}

/// The data of a READ reply, waiting in a pipe lent by a [`PipePool`].
#[derive(Debug)]
pub struct SplicedData {
    pipe: LentPipe,
    length: usize,
}

impl SplicedData {
    /// The data `pipe` holds: everything it took so far.
    pub fn new(pipe: LentPipe) -> SplicedData {
        let length = pipe.held;
        SplicedData { pipe, length }
    }

    /// Bytes of data (without padding), as the reply's count says.
    pub fn len(&self) -> usize {
        self.length
    }

    pub fn is_empty(&self) -> bool {
        self.length == 0
    }

    /// Bytes still in the pipe.
    pub fn left(&self) -> usize {
        self.pipe.held
    }

    /// Splices what is left (or as much as the socket takes) into `socket`, which must be
    /// non-blocking; `more` says more bytes of this record follow (`SPLICE_F_MORE`).
    pub fn send_to(&mut self, socket: BorrowedFd<'_>, more: bool) -> io::Result<usize> {
        self.pipe.drain_to(socket, more)
    }
}

/// Counters of a [`PipePool`], for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipeStats {
    /// Pipes created so far.
    pub created: u64,
    /// Pipes in the pool now.
    pub idle: usize,
    /// Pipes lent out now (in replies being built, queued or written).
    pub lent: usize,
    /// Pipes closed instead of returned because data was left in them.
    pub discarded: u64,
    /// Pipes that could not be created or sized.
    pub failures: u64,
    /// Pipes filled with READ data so far.
    pub filled: u64,
}

/// A bounded pool of pipes for spliced READ replies (module documentation).
#[derive(Debug, Clone)]
pub struct PipePool {
    shared: Arc<Shared>,
}

#[derive(Debug)]
struct Shared {
    idle: Mutex<Vec<Pipe>>,
    /// Pipes that exist, lent or idle; never above `limit`.
    existing: AtomicUsize,
    limit: usize,
    /// Bytes each pipe holds.
    capacity: usize,
    /// The smallest READ worth splicing.
    min_read: usize,
    page: usize,
    /// Export ids whose file system refused to splice.
    refused: Mutex<Vec<u64>>,
    created: AtomicU64,
    discarded: AtomicU64,
    failures: AtomicU64,
    filled: AtomicU64,
}

#[derive(Debug)]
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl PipePool {
    /// A pool of at most `limit` pipes of `capacity` bytes each (rounded up to pages), for READs
    /// of at least `min_read` bytes.
    pub fn new(limit: usize, capacity: usize, min_read: usize) -> PipePool {
        let page = sys::page_size();
        PipePool {
            shared: Arc::new(Shared {
                idle: Mutex::new(Vec::with_capacity(limit)),
                existing: AtomicUsize::new(0),
                limit,
                capacity: capacity.next_multiple_of(page),
                min_read,
                page,
                refused: Mutex::new(Vec::new()),
                created: AtomicU64::new(0),
                discarded: AtomicU64::new(0),
                failures: AtomicU64::new(0),
                filled: AtomicU64::new(0),
            }),
        }
    }

    /// The smallest READ worth splicing; smaller ones copy.
    pub fn min_read(&self) -> usize {
        self.shared.min_read
    }

    /// Whether `count` bytes at `offset` fit one pipe: a pipe holds one page (or part of one)
    /// per slot, so a read that starts inside a page needs a slot more.
    pub fn fits(&self, offset: u64, count: usize) -> bool {
        let page = self.shared.page;
        let first = usize::try_from(offset % page as u64).unwrap_or(page);
        first
            .checked_add(count)
            .is_some_and(|span| span.div_ceil(page) * page <= self.shared.capacity)
    }

    /// Whether READs of export `export` may splice (its file system has not refused).
    pub fn splices(&self, export: u64) -> bool {
        !lock(&self.shared.refused).contains(&export)
    }

    /// Remembers that export `export`'s file system cannot splice: its READs copy from now on.
    pub fn refuse(&self, export: u64) {
        let mut refused = lock(&self.shared.refused);
        if !refused.contains(&export) {
            tracing::info!(
                export,
                "the export's file system cannot splice; its READs copy"
            );
            refused.push(export);
        }
    }

    /// An empty pipe: an idle one, or a new one while fewer than the limit exist. `None` when
    /// every pipe is lent or a new one cannot be made (the READ then copies).
    pub fn take(&self) -> Option<LentPipe> {
        let shared = &self.shared;
        let idle = lock(&shared.idle).pop();
        let pipe = match idle {
            Some(pipe) => pipe,
            None => {
                shared
                    .existing
                    .fetch_update(Ordering::AcqRel, Ordering::Acquire, |existing| {
                        (existing < shared.limit).then_some(existing + 1)
                    })
                    .ok()?;
                match new_pipe(shared.capacity) {
                    Ok(pipe) => {
                        shared.created.fetch_add(1, Ordering::Relaxed);
                        pipe
                    }
                    Err(error) => {
                        shared.existing.fetch_sub(1, Ordering::AcqRel);
                        if shared.failures.fetch_add(1, Ordering::Relaxed) == 0 {
                            tracing::warn!(%error, capacity = shared.capacity, "cannot make a pipe for READ replies; READs copy");
                        }
                        return None;
                    }
                }
            }
        };
        Some(LentPipe {
            pipe: Some(pipe),
            held: 0,
            shared: shared.clone(),
        })
    }

    pub fn stats(&self) -> PipeStats {
        let shared = &self.shared;
        let idle = lock(&shared.idle).len();
        PipeStats {
            created: shared.created.load(Ordering::Relaxed),
            idle,
            lent: shared.existing.load(Ordering::Acquire).saturating_sub(idle),
            discarded: shared.discarded.load(Ordering::Relaxed),
            failures: shared.failures.load(Ordering::Relaxed),
            filled: shared.filled.load(Ordering::Relaxed),
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while these locks are held; the data stays consistent either way.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// A pipe of at least `capacity` bytes.
fn new_pipe(capacity: usize) -> io::Result<Pipe> {
    let (read, write) = sys::pipe()?;
    let given = sys::set_pipe_size(write.as_fd(), capacity)?;
    if given < capacity {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    Ok(Pipe { read, write })
}

/// A pipe lent by a [`PipePool`], and how many bytes it holds. Dropped, it goes back to the
/// pool if it is empty, and is closed otherwise.
#[derive(Debug)]
pub struct LentPipe {
    pipe: Option<Pipe>,
    held: usize,
    shared: Arc<Shared>,
}

impl LentPipe {
    /// Splices up to `count` bytes of `file` from `offset` into the pipe, which must have room
    /// for them (see [`PipePool::fits`]). Returns how many it took; fewer than `count` at the
    /// end of the file. An error after some bytes keeps those.
    pub fn fill(&mut self, file: BorrowedFd<'_>, offset: u64, count: usize) -> io::Result<usize> {
        let Some(pipe) = &self.pipe else {
            return Ok(0);
        };
        let mut position =
            i64::try_from(offset).map_err(|_| io::Error::from_raw_os_error(libc::EINVAL))?;
        let mut filled = 0;
        while filled < count {
            match sys::splice(
                file,
                Some(&mut position),
                pipe.write.as_fd(),
                count - filled,
                libc::SPLICE_F_NONBLOCK,
            ) {
                Ok(0) => break,
                Ok(moved) => {
                    let moved = moved.min(count - filled);
                    filled += moved;
                    self.held += moved;
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) if filled == 0 => return Err(error),
                Err(_) => break,
            }
        }
        if filled > 0 {
            self.shared.filled.fetch_add(1, Ordering::Relaxed);
        }
        Ok(filled)
    }

    /// Bytes in the pipe.
    pub fn held(&self) -> usize {
        self.held
    }

    /// Splices what the pipe holds into `socket` (non-blocking), as much as it takes.
    fn drain_to(&mut self, socket: BorrowedFd<'_>, more: bool) -> io::Result<usize> {
        let Some(pipe) = &self.pipe else {
            return Ok(0);
        };
        if self.held == 0 {
            return Ok(0);
        }
        let flags = libc::SPLICE_F_NONBLOCK | if more { libc::SPLICE_F_MORE } else { 0 };
        let moved = sys::splice(pipe.read.as_fd(), None, socket, self.held, flags)?;
        self.held -= moved.min(self.held);
        Ok(moved)
    }

    /// Reads pipe bytes into `buffer` (for [`Reply::into_bytes`]).
    fn read_into(&mut self, buffer: &mut [u8]) -> io::Result<usize> {
        let Some(pipe) = &self.pipe else {
            return Ok(0);
        };
        let wanted = buffer.len().min(self.held);
        let read = sys::read(pipe.read.as_fd(), &mut buffer[..wanted])?;
        self.held -= read.min(self.held);
        Ok(read)
    }
}

impl Drop for LentPipe {
    fn drop(&mut self) {
        let Some(pipe) = self.pipe.take() else {
            return;
        };
        let empty = self.held == 0 && sys::pending_bytes(pipe.read.as_fd()).ok() == Some(0);
        if empty {
            lock(&self.shared.idle).push(pipe);
        } else {
            // Closing the pipe releases the page references it held.
            drop(pipe);
            self.shared.existing.fetch_sub(1, Ordering::AcqRel);
            self.shared.discarded.fetch_add(1, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn padding_and_record_marks() {
        let cases: &[(usize, usize, Option<u32>)] = &[
            // (head with mark, data, length in the mark)
            (4, 0, Some(0)),
            (120, 0, Some(116)),
            (120, 1, Some(116 + 4)),
            (120, 2, Some(116 + 4)),
            (120, 3, Some(116 + 4)),
            (120, 4, Some(116 + 4)),
            (120, 5, Some(116 + 8)),
            (120, 1 << 20, Some(116 + (1 << 20))),
            (120, (1 << 20) - 1, Some(116 + (1 << 20))),
            (3, 0, None),
            (4, 0x7fff_fffc, Some(0x7fff_fffc)),
            (4, 0x7fff_fffd, None),
            (8, usize::MAX, None),
        ];
        for &(head, data, expected) in cases {
            assert_eq!(
                record_mark(head, data),
                expected.map(|length| (LAST_FRAGMENT | length).to_be_bytes()),
                "head {head}, data {data}"
            );
        }
        assert_eq!(
            (0..9).map(padding).collect::<Vec<_>>(),
            [0, 3, 2, 1, 0, 3, 2, 1, 0]
        );
    }

    #[test]
    fn parts_of_a_reply_as_it_is_written() {
        let spliced = Layout::new(10, 5);
        assert_eq!(spliced.pad, 3);
        assert_eq!(spliced.total(), 18);
        let cases = [
            (0, Part::Head(0..10)),
            (9, Part::Head(9..10)),
            (10, Part::Data(5)),
            (14, Part::Data(1)),
            (15, Part::Padding(0..3)),
            (17, Part::Padding(2..3)),
            (18, Part::Done),
            (100, Part::Done),
        ];
        for (written, part) in cases {
            assert_eq!(spliced.part(written), part, "{written} written");
        }
        let aligned = Layout::new(10, 8);
        assert_eq!(aligned.part(18), Part::Done);
        let plain = Layout::new(7, 0);
        assert_eq!(plain.part(3), Part::Head(3..7));
        assert_eq!(plain.part(7), Part::Done);
    }

    #[test]
    fn advancing_over_queued_replies() {
        // (totals, offset into the first, bytes written, expected (complete, next offset))
        type Case<'a> = (&'a [usize], usize, usize, (usize, usize));
        let cases: &[Case<'_>] = &[
            (&[10, 20], 0, 0, (0, 0)),
            (&[10, 20], 0, 9, (0, 9)),
            (&[10, 20], 0, 10, (1, 0)),
            (&[10, 20], 4, 6, (1, 0)),
            (&[10, 20], 4, 7, (1, 1)),
            (&[10, 20], 4, 26, (2, 0)),
            (&[10, 20, 5], 0, 31, (2, 1)),
            (&[], 0, 0, (0, 0)),
        ];
        for &(totals, offset, written, expected) in cases {
            assert_eq!(
                advance(totals.iter().copied(), offset, written),
                expected,
                "{totals:?} from {offset}, {written} written"
            );
        }
    }

    #[test]
    fn what_fits_a_pipe() {
        let pool = PipePool::new(1, 1 << 20, 0);
        let page = sys::page_size() as u64;
        assert!(pool.fits(0, 1 << 20));
        assert!(pool.fits(page * 7, 1 << 20));
        assert!(!pool.fits(1, 1 << 20));
        assert!(pool.fits(1, (1 << 20) - page as usize));
        assert!(!pool.fits(0, (1 << 20) + 1));
        assert!(pool.fits(u64::MAX, 1));
        assert!(!pool.fits(u64::MAX, usize::MAX));
    }

    fn file_of(content: &[u8]) -> (tempfile::TempDir, std::fs::File) {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("file");
        std::fs::write(&path, content).unwrap();
        let file = std::fs::File::open(&path).unwrap();
        (directory, file)
    }

    fn content(length: usize) -> Vec<u8> {
        (0..length).map(|index| (index % 251) as u8).collect()
    }

    #[test]
    fn a_pipe_takes_file_data_and_goes_back_to_the_pool_only_when_empty() {
        let data = content(300_001);
        let (_directory, file) = file_of(&data);
        let pool = PipePool::new(2, 1 << 20, 0);
        let mut pipe = pool.take().unwrap();
        assert_eq!(pipe.fill(file.as_fd(), 5, 1000).unwrap(), 1000);
        let reply = Reply {
            head: b"head".to_vec(),
            tail: Some(SplicedData::new(pipe)),
        };
        assert_eq!(reply.layout(), Layout::new(4, 1000));
        let bytes = reply.into_bytes().unwrap();
        assert_eq!(&bytes[..4], b"head");
        assert_eq!(&bytes[4..], &data[5..1005]);
        let stats = pool.stats();
        assert_eq!((stats.created, stats.idle, stats.lent), (1, 1, 0));

        // At the end of the file: fewer bytes than asked, then none.
        let mut pipe = pool.take().unwrap();
        assert_eq!(pipe.fill(file.as_fd(), 300_000, 4096).unwrap(), 1);
        let mut empty = pool.take().unwrap();
        assert_eq!(empty.fill(file.as_fd(), 400_000, 4096).unwrap(), 0);
        assert_eq!(pool.stats().created, 2);
        // Both pipes are lent: a third is refused, not made.
        assert!(pool.take().is_none());
        drop(empty);
        assert_eq!(pool.stats().idle, 1);
        // A pipe with data left in it is closed, never pooled.
        drop(pipe);
        let stats = pool.stats();
        assert_eq!((stats.idle, stats.lent, stats.discarded), (1, 0, 1));
        // The pipe taken now is the empty one, and a new one can be made again.
        let reused = pool.take().unwrap();
        assert_eq!(
            sys::pending_bytes(reused.pipe.as_ref().unwrap().read.as_fd()).unwrap(),
            0
        );
        assert!(pool.take().is_some());
        assert_eq!(pool.stats().created, 3);
    }

    #[test]
    fn a_whole_megabyte_fits_and_drains_into_a_socket() {
        let data = content(3 << 20);
        let (_directory, file) = file_of(&data);
        let pool = PipePool::new(1, 1 << 20, 0);
        let page = sys::page_size();
        let mut pipe = pool.take().unwrap();
        assert_eq!(
            pipe.fill(file.as_fd(), page as u64, 1 << 20).unwrap(),
            1 << 20
        );
        let mut tail = SplicedData::new(pipe);
        // A blocking socket: each splice waits until the reader made room.
        let (sender, mut receiver) = std::os::unix::net::UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut received = Vec::new();
            receiver.read_to_end(&mut received).unwrap();
            received
        });
        while tail.left() > 0 {
            assert!(tail.send_to(sender.as_fd(), false).unwrap() > 0);
        }
        drop(sender);
        assert!(reader.join().unwrap() == data[page..page + (1 << 20)]);
        drop(tail);
        assert_eq!(pool.stats().idle, 1);
    }

    #[test]
    fn refused_exports_are_remembered() {
        let pool = PipePool::new(1, 1 << 20, 0);
        assert!(pool.splices(7));
        pool.refuse(7);
        pool.refuse(7);
        assert!(!pool.splices(7));
        assert!(pool.splices(8));
    }
}
