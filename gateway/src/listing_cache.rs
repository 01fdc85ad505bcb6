//! The READDIRPLUS listing cache of exports on local file systems: encoded runs of directory
//! entries (names, cookies, attributes and handles), kept coherent by the kernel's own change
//! notification ([`crate::fanotify`]).
//!
//! # Why it is coherent
//!
//! It is only used on file systems that change through this machine's kernel alone (ext4, xfs,
//! btrfs, tmpfs: [`crate::handle::changes_only_through_this_kernel`]), whole file systems are
//! watched (every mount, every namespace), and the kernel queues a change's event before the
//! system call that made the change returns. Every use of the cache first reads the queue and
//! drops what the events name, under the lock the lookup holds. So a listing answered from the
//! cache reflects every change that finished before the request was received — as a listing
//! read from the file system would — and a change racing with the request is ordered either
//! way, as it is for a live listing.
//!
//! A run is filled from a live listing. Changes during that listing are caught by a *ticket*:
//! the number of the last event read before the listing started. Storing the run reads the
//! queue again and refuses it when any event since the ticket named its directory or one of its
//! entries (the recent events are kept for this, a bounded number; a ticket older than that
//! record is refused too). A full kernel queue (`FAN_Q_OVERFLOW`) or an undecodable event
//! empties the cache.
//!
//! What an event drops: an event that changes a directory's entries (create, delete, move)
//! drops that directory's runs; an event about a file (data, attributes — a read, for its
//! access time, a change of its link count) drops the runs of the directory that listed it
//! (`objects`); a directory moved elsewhere drops its own runs (their `..` changed). Entries
//! whose attributes could change without an event reaching that directory are not cached but
//! read afresh at every use (*fresh* entries): `.` and `..`, subdirectories (their times change
//! with their own entries; a mount may cover them), files with more than one link (changed
//! through another name, the event names the other directory), symbolic links (a path through
//! one moves its access time, with no event), special files, and entries without attributes or
//! handle.
//!
//! What the kernel raises no event for, found by review and experiment on 6.18: writes with
//! native AIO (`io_submit`; io_uring does raise them), reads and writes through shared memory
//! maps (page faults), I/O through another fanotify listener's event descriptors
//! (`FMODE_NONOTIFY`: on-access scanners, HSM daemons), `chattr` (ctime), a mount placed over
//! a cached file, and block counts (`used`) that a file system changes on its own after
//! writeback or when it trims preallocation (xfs, at close and in the background). A run is
//! therefore used for [`RUN_LIFETIME`] at most: such a change shows in a listing within a
//! second, what every other change does at once (`gateway/tests/listing_cache.rs` checks an
//! AIO write).

use std::collections::{HashMap, HashSet, VecDeque};
use std::io;
use std::os::fd::{AsFd, BorrowedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use crate::export::ExportId;
use crate::fanotify::{self, Event, Fid, Watch};
use crate::handle::{ObjectId, kernel_object_id_of};

/// The default bound of the cache's memory (encoded entries and bookkeeping).
pub const DEFAULT_LIMIT: usize = 64 * 1024 * 1024;

/// How many recent events are remembered for checking fills.
const RECENT_EVENTS: usize = 4096;

/// How long a run is used: what the kernel reports no event for (module documentation) shows
/// in a listing at most this late.
pub const RUN_LIFETIME: Duration = Duration::from_secs(1);

/// At most this many runs per directory (a run per cookie a client started a reply at).
const RUNS_PER_DIRECTORY: usize = 256;

/// An object of a watched file system: `f_fsid` and its kernel object id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FsObject {
    pub fsid: u64,
    pub id: ObjectId,
}

impl FsObject {
    fn of(fid: &Fid<'_>) -> Option<FsObject> {
        Some(FsObject {
            fsid: fid.fsid,
            id: kernel_object_id_of(fid.handle_type, fid.handle)?,
        })
    }
}

/// Where a run starts: the directory, the export it was listed through (handles carry the
/// export) and the cookie.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunKey {
    pub dir: FsObject,
    pub export: ExportId,
    pub cookie: u64,
}

/// One entry of a [`Run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunEntry {
    /// Where the entry's bytes end in [`Run::bytes`].
    pub end: u32,
    /// Where its name starts and how long it is (for fresh entries).
    pub name_start: u32,
    pub name_length: u16,
    /// Whether only the entry's `entryplus3` prefix (value-follows, file id, name, cookie) is
    /// stored, its attributes and handle read again at every use.
    pub fresh: bool,
}

/// A run of encoded READDIRPLUS entries from one cookie on.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Run {
    pub bytes: Vec<u8>,
    pub entries: Vec<RunEntry>,
    /// Whether the run ends at the end of the directory.
    pub eof: bool,
    /// The entry bytes the reply it was listed for had room for (its next entry did not fit).
    pub budget: usize,
}

impl Run {
    /// Appends an entry encoded as `encoded`, whose name lies at `name` within it and whose
    /// attributes start at `prefix_end`; a fresh entry keeps only the bytes before that.
    pub fn push(
        &mut self,
        encoded: &[u8],
        name: std::ops::Range<usize>,
        prefix_end: usize,
        fresh: bool,
    ) {
        let start = self.bytes.len();
        let kept = if fresh {
            &encoded[..prefix_end]
        } else {
            encoded
        };
        self.bytes.extend_from_slice(kept);
        self.entries.push(RunEntry {
            end: u32::try_from(self.bytes.len()).unwrap_or(u32::MAX),
            name_start: u32::try_from(start + name.start).unwrap_or(u32::MAX),
            name_length: u16::try_from(name.len()).unwrap_or(u16::MAX),
            fresh,
        });
    }

    /// The entry's stored bytes and, for a fresh entry, its name.
    pub fn entry(&self, index: usize) -> (&[u8], Option<&[u8]>) {
        let entry = self.entries[index];
        let start = match index {
            0 => 0,
            _ => self.entries[index - 1].end as usize,
        };
        let bytes = &self.bytes[start..entry.end as usize];
        let name = entry.fresh.then(|| {
            let name_start = entry.name_start as usize;
            &self.bytes[name_start..name_start + usize::from(entry.name_length)]
        });
        (bytes, name)
    }

    fn footprint(&self, objects: usize) -> usize {
        self.bytes.len()
            + self.entries.len() * std::mem::size_of::<RunEntry>()
            + objects * 2 * std::mem::size_of::<FsObject>()
            + 256
    }
}

/// The event number a fill started after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ticket(u64);

/// Counters, for tests and logs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counters {
    /// Replies answered from a run.
    pub hits: u64,
    /// READDIRPLUS replies of watched exports listed live.
    pub misses: u64,
    pub stored: u64,
    /// Entries stored with their attributes (not fresh).
    pub cached_entries: u64,
    /// Fills refused because something they listed changed meanwhile.
    pub refused: u64,
    pub events: u64,
    /// Runs dropped by events.
    pub dropped: u64,
    /// Times the whole cache was emptied (queue overflow, undecodable event, memory bound).
    pub emptied: u64,
}

/// A stored run, the objects it holds attributes of, the memory it is counted for and when it
/// was stored.
#[derive(Debug)]
struct Stored {
    run: Arc<Run>,
    objects: Vec<FsObject>,
    footprint: usize,
    stored_at: Instant,
}

/// Where a run starts within its directory.
type Start = (ExportId, u64);

/// The pure state: runs, which directory listed which object, recent events.
#[derive(Debug)]
struct State {
    /// Number of the last event applied.
    seq: u64,
    /// Every event after this number is in `recent`.
    recent_since: u64,
    recent: VecDeque<(u64, FsObject)>,
    runs: HashMap<FsObject, HashMap<Start, Stored>>,
    /// Objects cached in a run (not fresh) → the directory whose runs hold them.
    objects: HashMap<FsObject, FsObject>,
    bytes: usize,
    limit: usize,
    counters: Counters,
}

impl State {
    fn new(limit: usize) -> State {
        State {
            seq: 0,
            recent_since: 0,
            recent: VecDeque::new(),
            runs: HashMap::new(),
            objects: HashMap::new(),
            bytes: 0,
            limit,
            counters: Counters::default(),
        }
    }

    fn remember(&mut self, object: FsObject) {
        if self.recent.len() == RECENT_EVENTS
            && let Some((seq, _)) = self.recent.pop_front()
        {
            self.recent_since = seq;
        }
        self.recent.push_back((self.seq, object));
    }

    /// Forgets one stored run of `dir`, and its objects where they still point at `dir`.
    fn forget(&mut self, dir: &FsObject, stored: Stored) {
        self.bytes -= stored.footprint;
        for object in &stored.objects {
            if self.objects.get(object) == Some(dir) {
                self.objects.remove(object);
            }
        }
        self.counters.dropped += 1;
    }

    fn drop_runs(&mut self, dir: &FsObject) {
        if let Some(runs) = self.runs.remove(dir) {
            for (_, stored) in runs {
                self.forget(dir, stored);
            }
        }
    }

    /// Drops every run, as when the memory bound is reached.
    fn clear_runs(&mut self) {
        self.runs.clear();
        self.objects.clear();
        self.bytes = 0;
        self.counters.emptied += 1;
    }

    /// Forgets everything, fills under way included: after lost or undecodable events,
    /// anything may have changed.
    fn empty(&mut self) {
        self.clear_runs();
        self.recent.clear();
        self.recent_since = self.seq;
    }

    /// Applies one event (module documentation, "What an event drops").
    fn apply(&mut self, event: &Event<'_>) {
        self.seq += 1;
        self.counters.events += 1;
        if event.is_overflow() {
            self.empty();
            return;
        }
        let entries_changed = event.mask & fanotify::ENTRY_CHANGES != 0;
        if event.mask & libc::FAN_ONDIR != 0 && !entries_changed {
            // A directory's own data or attributes: no run caches them. But a directory moved
            // elsewhere has another `..`, whose file id its runs hold.
            if event.mask & libc::FAN_MOVE_SELF != 0
                && let Some(dir) = event.dir.as_ref().and_then(FsObject::of)
            {
                self.remember(dir);
                self.drop_runs(&dir);
            }
            return;
        }
        if entries_changed && let Some(dir) = event.dir.as_ref().and_then(FsObject::of) {
            self.remember(dir);
            self.drop_runs(&dir);
        }
        if let Some(object) = event.object.as_ref().and_then(FsObject::of) {
            self.remember(object);
            if let Some(dir) = self.objects.remove(&object) {
                self.drop_runs(&dir);
            }
        }
    }

    fn undecodable(&mut self) {
        self.seq += 1;
        self.empty();
    }

    /// The run stored for `key`, unless it is older than [`RUN_LIFETIME`] at `now` (then it is
    /// dropped).
    fn lookup(&mut self, key: &RunKey, now: Instant) -> Option<Arc<Run>> {
        let runs = self.runs.get_mut(&key.dir)?;
        let start = (key.export, key.cookie);
        let stored = runs.get(&start)?;
        if now.saturating_duration_since(stored.stored_at) < RUN_LIFETIME {
            return Some(Arc::clone(&stored.run));
        }
        let expired = runs.remove(&start)?;
        if runs.is_empty() {
            self.runs.remove(&key.dir);
        }
        self.forget(&key.dir, expired);
        None
    }

    /// Whether an event since `ticket` named `dir` or one of `objects`.
    fn changed_since(&self, ticket: Ticket, dir: &FsObject, objects: &[FsObject]) -> bool {
        if ticket.0 < self.recent_since {
            return true;
        }
        let mut since = self
            .recent
            .iter()
            .rev()
            .take_while(|(seq, _)| *seq > ticket.0)
            .map(|(_, object)| object)
            .peekable();
        if since.peek().is_none() {
            return false;
        }
        let listed: HashSet<&FsObject> = objects.iter().collect();
        since.any(|object| object == dir || listed.contains(object))
    }

    fn store(
        &mut self,
        ticket: Ticket,
        key: RunKey,
        run: Run,
        objects: Vec<FsObject>,
        now: Instant,
    ) -> bool {
        if self.changed_since(ticket, &key.dir, &objects) {
            self.counters.refused += 1;
            return false;
        }
        let footprint = run.footprint(objects.len());
        if footprint > self.limit / 4 {
            return false;
        }
        if self.bytes + footprint > self.limit {
            // Simplest fair eviction: start over (what was in use fills again).
            self.clear_runs();
        }
        let start = (key.export, key.cookie);
        let full = self
            .runs
            .get(&key.dir)
            .is_some_and(|runs| runs.len() >= RUNS_PER_DIRECTORY && !runs.contains_key(&start));
        if full {
            // A client walking a directory by unusual cookies: start the directory over.
            self.drop_runs(&key.dir);
        }
        if let Some(old) = self
            .runs
            .get_mut(&key.dir)
            .and_then(|runs| runs.remove(&start))
        {
            self.forget(&key.dir, old);
        }
        self.bytes += footprint;
        self.counters.cached_entries += objects.len() as u64;
        for object in &objects {
            self.objects.insert(*object, key.dir);
        }
        self.runs.entry(key.dir).or_default().insert(
            start,
            Stored {
                run: Arc::new(run),
                objects,
                footprint,
                stored_at: now,
            },
        );
        self.counters.stored += 1;
        true
    }
}

/// The cache and its fanotify group.
#[derive(Debug)]
pub struct ListingCache {
    watch: Watch,
    state: Mutex<Locked>,
    hits: AtomicU64,
    misses: AtomicU64,
}

#[derive(Debug)]
struct Locked {
    state: State,
    buffer: Vec<u8>,
}

impl ListingCache {
    /// A cache bounded to about `limit` bytes, with no file system watched yet, and its
    /// thread that keeps the kernel's queue short between uses.
    pub fn start(limit: usize) -> io::Result<Arc<ListingCache>> {
        let cache = Arc::new(ListingCache {
            watch: Watch::new()?,
            state: Mutex::new(Locked {
                state: State::new(limit),
                buffer: vec![0; fanotify::READ_BUFFER],
            }),
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        });
        let polled = cache.watch.try_clone()?;
        let weak = Arc::downgrade(&cache);
        std::thread::Builder::new()
            .name("listing-watch".into())
            .spawn(move || keep_draining(&polled, &weak))?;
        Ok(cache)
    }

    /// Watches the file system `root` is on, whose kernel object id is `root_id`; returns its
    /// `f_fsid`. Checks that the kernel's events name objects as the file handles do: listing
    /// `root` must report `root_id` (else a change could go unnoticed, and the export must do
    /// without the cache).
    pub fn watch(&self, root: BorrowedFd<'_>, root_id: &ObjectId) -> io::Result<u64> {
        self.watch.add_filesystem(root)?;
        let fsid = crate::sys::fstatfs(root)?.fsid;
        let expected = FsObject { fsid, id: *root_id };
        let mut locked = self.locked();
        let opened = crate::sys::reopen(root, libc::O_RDONLY | libc::O_DIRECTORY)?;
        let mut records = [0u8; 1024];
        crate::sys::read_dir_raw_at(opened.as_fd(), 0, &mut records)?;
        let Locked { state, buffer } = &mut *locked;
        let mut reported = false;
        drain_seeing(&self.watch, state, buffer, |event| {
            reported |= event.mask & libc::FAN_ACCESS != 0
                && event.dir.as_ref().and_then(FsObject::of) == Some(expected);
        });
        if !reported {
            return Err(io::Error::other(
                "the kernel's change events do not name the export root as its file handle does",
            ));
        }
        Ok(fsid)
    }

    fn locked(&self) -> std::sync::MutexGuard<'_, Locked> {
        let mut locked = self
            .state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let Locked { state, buffer } = &mut *locked;
        drain(&self.watch, state, buffer);
        locked
    }

    /// The run stored for `key`, if any, after applying every queued event; and the ticket a
    /// fill started now would need.
    pub fn lookup(&self, key: &RunKey) -> (Option<Arc<Run>>, Ticket) {
        let mut locked = self.locked();
        let run = locked.state.lookup(key, Instant::now());
        (run, Ticket(locked.state.seq))
    }

    /// Stores a run listed after `ticket` was taken, whose cached entries are `objects`, unless
    /// something it lists changed since. Returns whether it was stored.
    pub fn store(&self, ticket: Ticket, key: RunKey, run: Run, objects: Vec<FsObject>) -> bool {
        self.locked()
            .state
            .store(ticket, key, run, objects, Instant::now())
    }

    /// Counts a reply answered from a run (`hit`) or listed live.
    pub fn count(&self, hit: bool) {
        let counter = if hit { &self.hits } else { &self.misses };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    pub fn counters(&self) -> Counters {
        Counters {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
            ..self.locked().state.counters
        }
    }
}

/// Applies every queued event.
fn drain(watch: &Watch, state: &mut State, buffer: &mut [u8]) {
    drain_seeing(watch, state, buffer, |_| {});
}

/// Applies every queued event, showing each to `seen` too.
fn drain_seeing(
    watch: &Watch,
    state: &mut State,
    buffer: &mut [u8],
    mut seen: impl FnMut(&Event<'_>),
) {
    // What is queued now, and no more: events that arrive meanwhile are of changes concurrent
    // with the request, and readers that outpace the drain must not keep it going.
    let mut queued = watch.queued().unwrap_or(usize::MAX);
    while queued > 0 {
        match watch.read(buffer) {
            Ok(0) => return,
            Ok(read) => {
                queued = queued.saturating_sub(read);
                for event in fanotify::events(&buffer[..read]) {
                    match event {
                        Ok(event) => {
                            seen(&event);
                            state.apply(&event);
                        }
                        Err(error) => {
                            tracing::warn!(%error, "listing cache emptied");
                            state.undecodable();
                        }
                    }
                }
            }
            Err(error) => {
                tracing::warn!(%error, "reading fanotify events failed; listing cache emptied");
                state.undecodable();
                return;
            }
        }
    }
}

/// The thread of [`ListingCache::start`]: waits for events and applies them, at most about
/// twenty times a second, until the cache is dropped.
fn keep_draining(polled: &Watch, cache: &Weak<ListingCache>) {
    loop {
        let ready = match polled.wait(Duration::from_secs(1)) {
            Ok(ready) => ready,
            Err(error) => {
                tracing::warn!(%error, "waiting for fanotify events failed");
                std::thread::sleep(Duration::from_secs(1));
                false
            }
        };
        let Some(cache) = cache.upgrade() else {
            return;
        };
        if ready {
            drop(cache.locked());
        }
        drop(cache);
        if ready {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FSID: u64 = 7;

    /// The clock reading every test stores and looks up at (within a run's lifetime).
    fn now() -> Instant {
        static NOW: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *NOW.get_or_init(Instant::now)
    }

    /// (what, event mask, its directory, its object, the expected outcome)
    type Case = (&'static str, u64, Option<u8>, Option<u8>, bool);

    fn id(n: u8) -> [u8; 8] {
        [n, 0, 0, 0, 1, 0, 0, 0]
    }

    fn object(n: u8) -> FsObject {
        FsObject {
            fsid: FSID,
            id: kernel_object_id_of(1, &id(n)).unwrap(),
        }
    }

    fn key(dir: u8) -> RunKey {
        RunKey {
            dir: object(dir),
            export: ExportId(3),
            cookie: 0,
        }
    }

    fn run(bytes: &[u8]) -> Run {
        let mut run = Run::default();
        run.push(bytes, 0..bytes.len(), bytes.len(), false);
        run.eof = true;
        run
    }

    /// An event: `mask`, the directory `dir` (with a name), and `object`.
    fn apply(state: &mut State, mask: u64, dir: Option<u8>, object: Option<u8>) {
        let dir_id = dir.map(id);
        let object_id = object.map(id);
        fn fid(handle: &[u8; 8]) -> Fid<'_> {
            Fid {
                fsid: FSID,
                handle_type: 1,
                handle: &handle[..],
            }
        }
        let event = Event {
            mask,
            dir: dir_id.as_ref().map(fid),
            name: Some(b"name"),
            object: object_id.as_ref().map(fid),
        };
        state.apply(&event);
    }

    /// A state holding a run of directory 1 that lists objects 10 and 11.
    fn filled() -> State {
        let mut state = State::new(1 << 20);
        let ticket = Ticket(state.seq);
        assert!(state.store(
            ticket,
            key(1),
            run(b"abc"),
            vec![object(10), object(11)],
            now()
        ));
        state
    }

    #[test]
    fn events_drop_the_runs_they_make_stale() {
        use libc::*;
        // (what, mask, dir, object, whether directory 1's run survives)
        let cases: &[Case] = &[
            (
                "write to a listed file",
                FAN_MODIFY,
                Some(1),
                Some(10),
                false,
            ),
            (
                "chmod of a listed file",
                FAN_ATTRIB,
                Some(1),
                Some(11),
                false,
            ),
            (
                "read of a listed file",
                FAN_ACCESS,
                Some(1),
                Some(10),
                false,
            ),
            (
                "a listed file linked elsewhere",
                FAN_ATTRIB,
                None,
                Some(10),
                false,
            ),
            (
                "a file created in the directory",
                FAN_CREATE,
                Some(1),
                Some(12),
                false,
            ),
            ("an entry deleted", FAN_DELETE, Some(1), Some(12), false),
            (
                "an entry moved out",
                FAN_MOVED_FROM,
                Some(1),
                Some(12),
                false,
            ),
            ("an entry moved in", FAN_MOVED_TO, Some(1), Some(12), false),
            (
                "a subdirectory made",
                FAN_CREATE | FAN_ONDIR,
                Some(1),
                Some(20),
                false,
            ),
            (
                "a file created elsewhere",
                FAN_CREATE,
                Some(2),
                Some(12),
                true,
            ),
            (
                "write to an unlisted file",
                FAN_MODIFY,
                Some(1),
                Some(12),
                true,
            ),
            (
                "the directory listed",
                FAN_ACCESS | FAN_ONDIR,
                Some(1),
                None,
                true,
            ),
            (
                "the directory's attributes",
                FAN_ATTRIB | FAN_ONDIR,
                Some(1),
                None,
                true,
            ),
            (
                "a subdirectory's attributes",
                FAN_ATTRIB | FAN_ONDIR,
                Some(1),
                Some(20),
                true,
            ),
            (
                "the directory moved elsewhere (its ..)",
                FAN_MOVE_SELF | FAN_ONDIR,
                Some(1),
                None,
                false,
            ),
            (
                "a subdirectory moved",
                FAN_MOVE_SELF | FAN_ONDIR,
                Some(2),
                None,
                true,
            ),
            ("an overflowed queue", FAN_Q_OVERFLOW, None, None, false),
        ];
        for &(what, mask, dir, changed, survives) in cases {
            let mut state = filled();
            apply(&mut state, mask, dir, changed);
            assert_eq!(state.lookup(&key(1), now()).is_some(), survives, "{what}");
            if !survives {
                assert_eq!(state.bytes, 0, "{what}: memory accounted");
            }
        }
    }

    #[test]
    fn a_fill_that_raced_with_a_change_is_refused() {
        // (what, the event during the fill, whether the run is stored)
        let cases: &[Case] = &[
            ("nothing happened", 0, None, None, true),
            (
                "a listed file written",
                libc::FAN_MODIFY,
                Some(1),
                Some(10),
                false,
            ),
            (
                "a listed file changed, no parent",
                libc::FAN_ATTRIB,
                None,
                Some(11),
                false,
            ),
            (
                "an entry created",
                libc::FAN_CREATE,
                Some(1),
                Some(12),
                false,
            ),
            (
                "another directory changed",
                libc::FAN_CREATE,
                Some(2),
                Some(12),
                true,
            ),
            (
                "an unlisted file written",
                libc::FAN_MODIFY,
                Some(2),
                Some(13),
                true,
            ),
            (
                "the queue overflowed",
                libc::FAN_Q_OVERFLOW,
                None,
                None,
                false,
            ),
        ];
        for &(what, mask, dir, changed, stored) in cases {
            let mut state = State::new(1 << 20);
            let ticket = Ticket(state.seq);
            if mask != 0 {
                apply(&mut state, mask, dir, changed);
            }
            assert_eq!(
                state.store(
                    ticket,
                    key(1),
                    run(b"abc"),
                    vec![object(10), object(11)],
                    now()
                ),
                stored,
                "{what}"
            );
            assert_eq!(state.lookup(&key(1), now()).is_some(), stored, "{what}");
        }
    }

    #[test]
    fn a_ticket_older_than_the_remembered_events_is_refused() {
        let mut state = State::new(1 << 20);
        let ticket = Ticket(state.seq);
        for _ in 0..RECENT_EVENTS {
            apply(&mut state, libc::FAN_MODIFY, Some(2), Some(13));
        }
        assert!(state.store(ticket, key(1), run(b"a"), vec![object(10)], now()));
        apply(&mut state, libc::FAN_MODIFY, Some(2), Some(13));
        assert!(!state.store(ticket, key(1), run(b"a"), vec![object(10)], now()));
        assert!(state.store(
            Ticket(state.seq),
            key(1),
            run(b"a"),
            vec![object(10)],
            now()
        ));
    }

    #[test]
    fn memory_stays_bounded_and_accounted() {
        let limit = 64 * 1024;
        let mut state = State::new(limit);
        for n in 0..200u8 {
            let ticket = Ticket(state.seq);
            assert!(state.store(ticket, key(n), run(&[n; 1000]), vec![object(n)], now()));
            assert!(state.bytes <= limit);
            let total: usize = state
                .runs
                .values()
                .flat_map(|runs| runs.values().map(|stored| stored.footprint))
                .sum();
            assert_eq!(total, state.bytes);
            let held: usize = state
                .runs
                .values()
                .flat_map(|runs| runs.values().map(|stored| stored.objects.len()))
                .sum();
            assert!(
                state.objects.len() <= held,
                "the object index outgrew the runs"
            );
        }
        assert!(state.counters.emptied > 0);
        // A run too big for the bound is not stored at all.
        let ticket = Ticket(state.seq);
        assert!(!state.store(ticket, key(1), run(&vec![0; limit]), vec![], now()));
        // Storing the same key again replaces the run.
        let mut state = State::new(limit);
        assert!(state.store(Ticket(0), key(1), run(b"one"), vec![], now()));
        let first = state.bytes;
        assert!(state.store(Ticket(0), key(1), run(b"two"), vec![], now()));
        assert_eq!(state.bytes, first);
        assert_eq!(state.lookup(&key(1), now()).unwrap().bytes, b"two");
    }

    #[test]
    fn runs_expire_and_take_their_objects_along() {
        let mut state = filled();
        assert!(state.lookup(&key(1), now() + RUN_LIFETIME / 2).is_some());
        assert!(state.lookup(&key(1), now() + RUN_LIFETIME).is_none());
        assert!(
            state.lookup(&key(1), now()).is_none(),
            "an expired run is dropped"
        );
        assert!(state.objects.is_empty());
        assert_eq!(state.bytes, 0);
    }

    #[test]
    fn dropped_runs_leave_no_objects_in_the_index() {
        let mut state = State::new(1 << 20);
        for dir in 1..=30u8 {
            let objects: Vec<FsObject> = (0..4).map(|n| object(100 + dir * 4 + n)).collect();
            assert!(state.store(Ticket(state.seq), key(dir), run(b"x"), objects, now()));
        }
        assert_eq!(state.objects.len(), 120);
        for dir in 1..=30u8 {
            // A read of one listed file drops its directory's run (its access time).
            apply(&mut state, libc::FAN_ACCESS, Some(dir), Some(100 + dir * 4));
        }
        assert!(state.objects.is_empty());
        assert!(state.runs.is_empty());
        assert_eq!(state.bytes, 0);
    }

    #[test]
    fn a_directory_holds_a_bounded_number_of_runs() {
        let mut state = State::new(1 << 30);
        for cookie in 0..(RUNS_PER_DIRECTORY as u64 * 3) {
            let at = RunKey { cookie, ..key(1) };
            assert!(state.store(Ticket(state.seq), at, run(b"x"), vec![], now()));
            assert!(state.runs[&key(1).dir].len() <= RUNS_PER_DIRECTORY);
        }
    }

    #[test]
    fn runs_keep_fresh_entries_as_their_prefix_and_name() {
        let mut run = Run::default();
        run.push(b"PREFIXnameATTRS", 6..10, 10, true);
        run.push(b"WHOLE", 0..2, 2, false);
        assert_eq!(run.bytes, b"PREFIXnameWHOLE");
        assert_eq!(run.entry(0), (&b"PREFIXname"[..], Some(&b"name"[..])));
        assert_eq!(run.entry(1), (&b"WHOLE"[..], None));
    }
}
