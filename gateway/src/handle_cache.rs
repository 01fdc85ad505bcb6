//! A bounded cache of sealed file handles, keyed by inode incarnation, so that READDIRPLUS (and
//! LOOKUP) need not ask the resolver (`name_to_handle_at`) and compute the handle's MAC for
//! every entry. It caches **handles only, never attributes**: several nodes serve one volume,
//! and NFS close-to-open consistency across nodes depends on GETATTR and post-operation
//! attributes being read from the file system every time.
//!
//! # Why a hit is never another file's handle
//!
//! The key is (export, device, inode number, birth time), all from the same `statx` the reply's
//! attributes come from; the value is the handle bytes the uncached path produced for that
//! object, byte for byte (so every node still issues and accepts the same handle: DESIGN.md
//! invariant 3). A kernel handle names one inode *incarnation* (inode number plus the file
//! system's generation number), and it is a function of that incarnation alone: the gateway asks
//! for non-connectable handles, which do not depend on the name or parent used to reach the
//! object. So the only way a hit can be wrong is when a *different* incarnation of the same
//! inode number carries the same birth time; the cached handle then names the dead incarnation,
//! and using it yields NFS3ERR_STALE — never another file's data, since the generation number
//! in the handle no longer matches.
//!
//! Even that is excluded by the admission rule: an entry is stored only when its birth time lies
//! at least [`BIRTH_MARGIN`] before `now`, a clock reading taken **before a moment the object is
//! known to be alive**: before the `statx` that produced the key, or while a descriptor of the
//! object is held (LOOKUP of `.`). An inode number is reused only after its current incarnation
//! is gone, so any later incarnation is born after `now`, that is at least [`BIRTH_MARGIN`]
//! after the cached one — a different birth time, a different key. The
//! margin covers the coarse timestamp clock (file systems stamp times with a clock that ticks
//! every few milliseconds), the clock skew between the nodes that create files on a shared
//! volume, and small clock steps.
//!
//! On a **local file system** (tmpfs, ext4, xfs, btrfs: [`Incarnation::LocalBirthTime`]) every
//! birth time is stamped by this machine's kernel, from the coarse clock that `now` reads
//! (`CLOCK_REALTIME_COARSE`; a birth may be later than that clock, never earlier), so no margin
//! is needed: an object is admitted once `now` is past its birth, however little
//! ([`LOCAL_CLOCK_MARGIN`]). A later incarnation is born after `now` was read, so it is stamped
//! at least `now`, which is after the cached birth time. Files are then cached a tick or two
//! after they were made, where a shared volume waits a second. A file system that reports no birth time gets no key, so no
//! caching at all, and a resolver whose ids are not a function of the incarnation
//! ([`crate::handle::ObjectResolver::incarnation`] is [`Incarnation::Untracked`]) is never
//! cached either.
//!
//! A resolver may instead say that the **inode number alone** names the incarnation
//! ([`Incarnation::InodeNumber`]): GlusterFS reports 64 bits of the object's GFID as `st_ino`,
//! and a GFID is drawn at random when the object is created and never reused. Those keys carry
//! no birth time and are admitted at once, new files included (a later object with the same
//! key would need the same 64 random bits); on GlusterFS, where reading a GFID is a round trip
//! to the glusterfs client, that saves one per listed entry.
//!
//! The value stored for a key must come from the object the key describes, which only holds
//! when both are read from **one descriptor**: `fstat` and `name_to_handle_at(AT_EMPTY_PATH)` on
//! the same open object. Two calls by name (a `statx` and a `name_to_handle_at` of `dir/name`)
//! can see two different files when a rename lands in between, and caching that pair would
//! hand out one live file's handle for another; so READDIRPLUS, which lists by name, opens the
//! entry (`O_PATH`) on a cache miss it wants to fill, and stores the handle only when the
//! descriptor's key equals the key of the attributes it replies with.
//!
//! Memory is bounded: two generations of at most `capacity / 2` entries each; when the current
//! generation fills, the previous one is dropped and the current one becomes previous, and a hit
//! in the previous generation moves the entry forward. A generation keeps its entries (key and
//! handle, 120 bytes) in a slab in the order they were stored — the entries of one directory,
//! stored by one listing, lie together, as the next listing reads them — and finds them through
//! an index of 8-byte words (32 bits of the key's hash and the slot; open addressing, 512 KiB
//! a generation by default, small enough to stay in a core's cache); a hit is confirmed by
//! comparing the whole key, so a hash collision costs a probe, never a wrong handle. With one
//! table of whole entries (113-byte buckets spread over 15 MB) the lookups were 11 % of a
//! listing's server CPU, mostly cache and TLB misses (measured). The default
//! [`DEFAULT_CAPACITY`] of 64 Ki handles takes about 9 MB.

use std::sync::Mutex;
use std::time::Duration;

use crate::export::ExportId;
#[cfg(test)]
use crate::handle::MAX_HANDLE;
use crate::handle::{HandleBytes, Incarnation};
use crate::sys::{Stat, Time};

/// How far in the past a birth time must lie, relative to a clock reading taken before the
/// `statx`, for its entry to be cached (module documentation).
pub const BIRTH_MARGIN: Duration = Duration::from_secs(1);

/// The margin of birth times stamped by this machine's clock: any, as long as the clock has
/// moved past them (module documentation).
pub const LOCAL_CLOCK_MARGIN: Duration = Duration::from_nanos(1);

/// The default number of cached handles: at most about 15 MB (113 bytes a bucket, and each
/// generation's table has up to twice as many buckets as entries).
pub const DEFAULT_CAPACITY: usize = 64 * 1024;

/// One inode incarnation within one export.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IncarnationKey {
    export: ExportId,
    device: (u32, u32),
    inode: u64,
    /// `None` when the inode number alone names the incarnation ([`Incarnation::InodeNumber`]).
    birth: Option<Time>,
    /// Whether the birth time was stamped by this machine's clock
    /// ([`Incarnation::LocalBirthTime`]).
    local_clock: bool,
}

impl IncarnationKey {
    /// The key of an object of `export` described by `stat`, as the export's resolver tells
    /// incarnations apart; `None` when it cannot be cached (no birth time where one is needed).
    pub fn of(export: ExportId, stat: &Stat, incarnation: Incarnation) -> Option<Self> {
        let birth = match incarnation {
            Incarnation::Untracked => return None,
            Incarnation::BirthTime | Incarnation::LocalBirthTime => Some(stat.birth?),
            Incarnation::InodeNumber => None,
        };
        Some(IncarnationKey {
            export,
            device: (stat.dev_major, stat.dev_minor),
            inode: stat.ino,
            birth,
            local_clock: incarnation == Incarnation::LocalBirthTime,
        })
    }
}

/// A clock reading, in the file system's time representation: `CLOCK_REALTIME_COARSE`, the
/// clock the kernel stamps file times with (module documentation).
pub fn now() -> Time {
    crate::sys::coarse_realtime()
}

/// Whether an object born at `birth` may be cached, given a clock reading `now` taken before
/// its `statx`: born at least `margin` earlier (module documentation).
pub fn admissible(birth: Time, now: Time, margin: Duration) -> bool {
    let as_nanoseconds =
        |time: Time| i128::from(time.seconds) * 1_000_000_000 + i128::from(time.nanoseconds);
    as_nanoseconds(birth) + margin.as_nanos() as i128 <= as_nanoseconds(now)
}

/// A multiply-rotate hash over the key's integer fields (as rustc's `FxHasher` does), with a
/// final mix. The standard SipHash cost a READDIRPLUS entry more than the table probe (measured);
/// flooding one bucket would need control over inode numbers and birth times, which belong to
/// the file system, not to clients, and would only slow lookups down.
#[derive(Debug, Default, Clone, Copy)]
struct IncarnationHasher(u64);

impl std::hash::Hasher for IncarnationHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut word = [0u8; 8];
            word[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(word));
        }
    }

    fn write_u64(&mut self, word: u64) {
        self.0 = (self.0.rotate_left(5) ^ word).wrapping_mul(0x517c_c1b7_2722_0a95);
    }

    fn write_u32(&mut self, word: u32) {
        self.write_u64(u64::from(word));
    }

    fn write_i64(&mut self, word: i64) {
        self.write_u64(word as u64);
    }

    fn finish(&self) -> u64 {
        // The table takes its bucket from the low bits and its tag from the high ones: mix both.
        let mixed = self.0 ^ (self.0 >> 29);
        mixed.wrapping_mul(0xbf58_476d_1ce4_e5b9) ^ (mixed >> 32)
    }
}

fn hash_of(key: &IncarnationKey) -> u64 {
    use std::hash::{BuildHasher, BuildHasherDefault};
    BuildHasherDefault::<IncarnationHasher>::default().hash_one(key)
}

/// One generation: entries in the order stored, and an index of them — open addressing with
/// linear probing over words of (upper 32 bits of the key's hash, slot + 1), 0 for empty, at
/// least twice as many words as the slab holds entries, so a probe always ends at an empty
/// word. Entries are only added until the generation is cleared; a key stored again takes its
/// old slot over.
#[derive(Debug)]
struct Generation {
    slab: Vec<(IncarnationKey, HandleBytes)>,
    index: Box<[u64]>,
}

impl Generation {
    fn with_capacity(entries: usize) -> Self {
        Generation {
            slab: Vec::with_capacity(entries),
            index: vec![0; (2 * entries).next_power_of_two()].into_boxed_slice(),
        }
    }

    /// The index position holding `key`, or the empty one where it would go.
    fn position(&self, hash: u64, key: &IncarnationKey) -> usize {
        let mask = self.index.len() - 1;
        let fingerprint = hash >> 32;
        let mut position = hash as usize & mask;
        loop {
            let word = self.index[position];
            if word == 0 {
                return position;
            }
            if word >> 32 == fingerprint
                && let Some((stored, _)) = self.slab.get(slot_of(word))
                && stored == key
            {
                return position;
            }
            position = (position + 1) & mask;
        }
    }

    fn get(&self, hash: u64, key: &IncarnationKey) -> Option<HandleBytes> {
        let word = self.index[self.position(hash, key)];
        (word != 0).then(|| self.slab[slot_of(word)].1)
    }

    /// Stores `key`; false when the generation is full (and `key` not in it).
    fn store(&mut self, hash: u64, key: IncarnationKey, handle: HandleBytes) -> bool {
        let position = self.position(hash, &key);
        let word = self.index[position];
        if word != 0 {
            self.slab[slot_of(word)] = (key, handle);
            return true;
        }
        if self.slab.len() == self.slab.capacity() {
            return false;
        }
        // Slots are below the capacity, a u32 (`HandleCache::with_margin` bounds it).
        self.index[position] = (hash >> 32) << 32 | (self.slab.len() as u64 + 1);
        self.slab.push((key, handle));
        true
    }

    fn len(&self) -> usize {
        self.slab.len()
    }

    fn clear(&mut self) {
        self.slab.clear();
        self.index.fill(0);
    }
}

fn slot_of(word: u64) -> usize {
    (word as u32 as usize).saturating_sub(1)
}

#[derive(Debug)]
struct Generations {
    current: Generation,
    previous: Generation,
}

/// The cache (module documentation). Shared by all worker threads.
#[derive(Debug)]
pub struct HandleCache {
    generations: Mutex<Generations>,
    margin: Duration,
}

impl HandleCache {
    /// A cache of at most `capacity` handles (at least 2), admitting births [`BIRTH_MARGIN`]
    /// before the clock reading.
    pub fn new(capacity: usize) -> Self {
        Self::with_margin(capacity, BIRTH_MARGIN)
    }

    /// As [`HandleCache::new`] with another admission margin (tests).
    pub fn with_margin(capacity: usize, margin: Duration) -> Self {
        // Slots are stored in 32 bits.
        let generation_size = (capacity / 2).clamp(1, u32::MAX as usize - 1);
        // Both generations get their full size now, so that no call ever grows one: a
        // generation of 32 Ki handles is several MiB, more than any one allocation a call may
        // make (the fuzz targets abort on that), and the rotation below keeps the allocations.
        HandleCache {
            generations: Mutex::new(Generations {
                current: Generation::with_capacity(generation_size),
                previous: Generation::with_capacity(generation_size),
            }),
            margin,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Generations> {
        // Nothing panics while the lock is held (plain data), and a half-updated generation
        // would still only hold correct entries: every hit compares the whole key.
        self.generations
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// Whether `key` may be stored given a clock reading `now` taken before its `statx` (only
    /// such keys can be in the cache, so others need not be looked up either). A key without
    /// a birth time names its incarnation by itself: always.
    pub fn admits(&self, key: &IncarnationKey, now: Time) -> bool {
        let margin = if key.local_clock {
            // The clock has ticked past the birth.
            LOCAL_CLOCK_MARGIN
        } else {
            self.margin
        };
        key.birth.is_none_or(|birth| admissible(birth, now, margin))
    }

    /// The cached handle of `key`, if any.
    pub fn get(&self, key: &IncarnationKey) -> Option<HandleBytes> {
        let hash = hash_of(key);
        let mut generations = self.lock();
        if let Some(handle) = generations.current.get(hash, key) {
            return Some(handle);
        }
        // A hit in the previous generation moves forward (the old copy goes with its
        // generation).
        let handle = generations.previous.get(hash, key)?;
        Self::store(&mut generations, hash, *key, handle);
        Some(handle)
    }

    /// Stores `handle` for `key` when the key's birth time is admissible against `now`, a clock
    /// reading taken before the `statx` that produced `key`. `handle` must have been read from
    /// the same descriptor as `key` (module documentation). Returns whether it was stored.
    pub fn insert(&self, key: IncarnationKey, handle: &[u8], now: Time) -> bool {
        if !self.admits(&key, now) {
            return false;
        }
        let Some(handle) = HandleBytes::new(handle) else {
            return false;
        };
        let hash = hash_of(&key);
        Self::store(&mut self.lock(), hash, key, handle);
        true
    }

    fn store(generations: &mut Generations, hash: u64, key: IncarnationKey, handle: HandleBytes) {
        if generations.current.store(hash, key, handle) {
            return;
        }
        // The full generation becomes the previous one; the old previous, emptied, is the new
        // current (its allocations keep their size).
        let Generations { current, previous } = generations;
        std::mem::swap(current, previous);
        current.clear();
        current.store(hash, key, handle);
    }

    /// How many handles are cached.
    pub fn len(&self) -> usize {
        let generations = self.lock();
        generations.current.len() + generations.previous.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64, nanoseconds: u32) -> Time {
        Time {
            seconds,
            nanoseconds,
        }
    }

    fn key(inode: u64, birth: Time) -> IncarnationKey {
        IncarnationKey {
            export: ExportId(7),
            device: (0, 42),
            inode,
            birth: Some(birth),
            local_clock: false,
        }
    }

    #[test]
    fn admission_needs_a_birth_comfortably_before_the_clock_reading() {
        let margin = Duration::from_secs(1);
        let table = [
            // (birth, now, admissible)
            (at(100, 0), at(101, 0), true),
            (at(100, 0), at(100, 999_999_999), false),
            (at(100, 500), at(101, 499), false),
            (at(100, 500), at(101, 500), true),
            (at(100, 0), at(100, 0), false),
            // A birth "in the future" (another node's clock ahead of ours).
            (at(200, 0), at(100, 0), false),
            (at(-5, 0), at(0, 0), true),
            (at(i64::MAX, 999_999_999), at(i64::MAX, 999_999_999), false),
            (at(i64::MIN, 0), at(i64::MAX, 0), true),
        ];
        for (birth, now, expected) in table {
            assert_eq!(
                admissible(birth, now, margin),
                expected,
                "birth {birth:?}, now {now:?}"
            );
        }
    }

    #[test]
    fn a_miss_then_an_identical_hit() {
        let cache = HandleCache::new(16);
        let old = key(5, at(100, 0));
        assert_eq!(cache.get(&old), None);
        let handle: Vec<u8> = (0..31).collect();
        assert!(cache.insert(old, &handle, at(200, 0)));
        assert_eq!(cache.get(&old).unwrap().as_bytes(), &handle[..]);
        // The same inode number with another birth time is another incarnation: a miss.
        assert_eq!(cache.get(&key(5, at(100, 1))), None);
        // Nor is the key of the same inode number without a birth time (another policy).
        let mut undated = old;
        undated.birth = None;
        assert_eq!(cache.get(&undated), None);
        // Another export, device or inode: misses.
        let mut other_export = old;
        other_export.export = ExportId(8);
        assert_eq!(cache.get(&other_export), None);
        let mut other_device = old;
        other_device.device = (0, 43);
        assert_eq!(cache.get(&other_device), None);
        assert_eq!(cache.get(&key(6, at(100, 0))), None);
    }

    #[test]
    fn fresh_births_are_never_stored() {
        let cache = HandleCache::new(16);
        let fresh = key(5, at(100, 0));
        assert!(!cache.insert(fresh, &[1; 20], at(100, 400_000_000)));
        assert_eq!(cache.get(&fresh), None);
        assert!(cache.is_empty());
        // The reuse the rule excludes: incarnation one (born at 100.0) is seen alive by a statx
        // after a clock reading of 100.4, so it is not stored; incarnation two, born in the same
        // tick, therefore finds nothing that names incarnation one.
        assert!(cache.insert(fresh, &[2; 20], at(101, 0)));
        assert_eq!(cache.get(&fresh).unwrap().as_bytes(), &[2; 20]);
    }

    #[test]
    fn keys_follow_the_resolver_s_notion_of_incarnation() {
        let undated = Stat {
            ino: 9,
            ..Stat::default()
        };
        let dated = Stat {
            birth: Some(at(3, 4)),
            ..undated
        };
        let expected = |birth, local_clock| IncarnationKey {
            export: ExportId(1),
            device: (0, 0),
            inode: 9,
            birth,
            local_clock,
        };
        let table = [
            // (stat, incarnation, key)
            (undated, Incarnation::Untracked, None),
            (dated, Incarnation::Untracked, None),
            // No birth time where one is needed: no key, no caching.
            (undated, Incarnation::BirthTime, None),
            (undated, Incarnation::LocalBirthTime, None),
            (
                dated,
                Incarnation::BirthTime,
                Some(expected(Some(at(3, 4)), false)),
            ),
            (
                dated,
                Incarnation::LocalBirthTime,
                Some(expected(Some(at(3, 4)), true)),
            ),
            // The inode number is enough, whatever the birth time says.
            (
                undated,
                Incarnation::InodeNumber,
                Some(expected(None, false)),
            ),
            (dated, Incarnation::InodeNumber, Some(expected(None, false))),
        ];
        for (stat, incarnation, key) in table {
            assert_eq!(
                IncarnationKey::of(ExportId(1), &stat, incarnation),
                key,
                "{incarnation:?}, birth {:?}",
                stat.birth
            );
        }
    }

    #[test]
    fn local_clock_births_are_admitted_once_the_clock_has_passed_them() {
        let cache = HandleCache::new(16);
        let stat = |birth| Stat {
            ino: 5,
            birth: Some(birth),
            ..Stat::default()
        };
        let local = |birth| {
            IncarnationKey::of(ExportId(7), &stat(birth), Incarnation::LocalBirthTime).unwrap()
        };
        let shared =
            |birth| IncarnationKey::of(ExportId(7), &stat(birth), Incarnation::BirthTime).unwrap();
        let table = [
            // (birth, clock reading, admitted on a local file system, on a shared one)
            (at(100, 0), at(100, 0), false, false),
            (at(100, 0), at(100, 1), true, false),
            (at(100, 4_000_000), at(100, 8_000_000), true, false),
            (at(100, 0), at(101, 0), true, true),
            // Born "after" the reading (a fine-grained stamp ahead of the coarse clock).
            (at(100, 5), at(100, 4), false, false),
        ];
        for (birth, now, on_local, on_shared) in table {
            assert_eq!(
                cache.admits(&local(birth), now),
                on_local,
                "{birth:?} {now:?}"
            );
            assert_eq!(
                cache.admits(&shared(birth), now),
                on_shared,
                "{birth:?} {now:?}"
            );
        }
        // The reuse the rule excludes: incarnation one, born at 100.000, seen alive after a
        // reading of 100.004 and cached; incarnation two, born after that reading, is stamped
        // 100.004 or later: another key.
        assert!(cache.insert(local(at(100, 0)), &[1; 20], at(100, 4_000_000)));
        assert_eq!(cache.get(&local(at(100, 4_000_000))), None);
        // The two notions of an incarnation never share entries.
        assert_eq!(cache.get(&shared(at(100, 0))), None);
    }

    #[test]
    fn inode_number_keys_are_admitted_at_once() {
        let cache = HandleCache::new(16);
        let stat = Stat {
            ino: 0x1234_5678_9abc_def0,
            birth: Some(at(100, 0)),
            ..Stat::default()
        };
        let key = IncarnationKey::of(ExportId(7), &stat, Incarnation::InodeNumber).unwrap();
        // Born "now", or with a clock reading before the birth (another node's clock ahead).
        assert!(cache.admits(&key, at(100, 0)));
        assert!(cache.insert(key, &[4; 24], at(50, 0)));
        assert_eq!(cache.get(&key).unwrap().as_bytes(), &[4; 24]);
        // The birth-time key of the same inode stays a miss until stored in its own right.
        let dated = IncarnationKey::of(ExportId(7), &stat, Incarnation::BirthTime).unwrap();
        assert_eq!(cache.get(&dated), None);
        assert!(!cache.insert(dated, &[5; 24], at(100, 0)));
    }

    #[test]
    fn a_hash_collision_is_a_miss_never_the_other_handle() {
        let mut generation = Generation::with_capacity(4);
        let (first, second, third) = (key(1, at(0, 0)), key(2, at(0, 0)), key(3, at(0, 0)));
        let handle = |byte| HandleBytes::new(&[byte; 20]).unwrap();
        // Three keys forced onto one hash: each keeps its own entry.
        assert!(generation.store(42, first, handle(1)));
        assert!(generation.store(42, second, handle(2)));
        assert_eq!(generation.get(42, &first), Some(handle(1)));
        assert_eq!(generation.get(42, &second), Some(handle(2)));
        assert_eq!(generation.get(42, &third), None);
        // Stored again: the same slot.
        assert!(generation.store(42, first, handle(7)));
        assert_eq!(generation.get(42, &first), Some(handle(7)));
        assert_eq!(generation.len(), 2);
        // Full: a new key is refused, a known one still updates.
        assert!(generation.store(7, third, handle(3)));
        assert!(generation.store(9, key(4, at(0, 0)), handle(4)));
        assert!(!generation.store(11, key(5, at(0, 0)), handle(5)));
        assert!(generation.store(42, second, handle(8)));
        assert_eq!(generation.get(11, &key(5, at(0, 0))), None);
        generation.clear();
        assert_eq!(generation.get(42, &first), None);
        assert_eq!(generation.len(), 0);
    }

    #[test]
    fn oversized_handles_are_refused() {
        let cache = HandleCache::new(16);
        assert!(!cache.insert(key(1, at(0, 0)), &[0; MAX_HANDLE + 1], at(10, 0)));
        assert!(cache.insert(key(1, at(0, 0)), &[0; MAX_HANDLE], at(10, 0)));
        assert!(cache.insert(key(2, at(0, 0)), &[], at(10, 0)));
        assert_eq!(cache.get(&key(2, at(0, 0))).unwrap().as_bytes(), &[]);
    }

    #[test]
    fn the_cache_stays_within_its_capacity_and_keeps_what_is_used() {
        let capacity = 100;
        let cache = HandleCache::new(capacity);
        let born = at(0, 0);
        let now = at(10, 0);
        assert!(cache.insert(key(0, born), &[0xaa; 8], now));
        for inode in 1..10_000u64 {
            assert!(cache.insert(key(inode, born), &inode.to_be_bytes(), now));
            assert!(cache.len() <= capacity, "{} entries", cache.len());
            // Inode 0 is used all the time: it survives every rotation.
            assert_eq!(cache.get(&key(0, born)).unwrap().as_bytes(), &[0xaa; 8]);
        }
        // The most recent entries are there, and what was not used for long is gone.
        for inode in 9_990..10_000u64 {
            assert_eq!(
                cache.get(&key(inode, born)).unwrap().as_bytes(),
                &inode.to_be_bytes()
            );
        }
        assert_eq!(cache.get(&key(1, born)), None);
        assert!(cache.len() <= capacity);
    }
}
