//! The duplicate request cache: NFSv3 calls that are not idempotent (SETATTR, WRITE, CREATE,
//! MKDIR, SYMLINK, MKNOD, REMOVE, RMDIR, RENAME, LINK) are remembered with their reply for a
//! while, so that a call a client sends again — its connection broke before the reply came, and
//! it reconnected to the same node, which Linux clients do from the same source port — gets the
//! first reply instead of a second execution. Without it, a REMOVE that worked answers NOENT
//! the second time, a RENAME answers NOENT, an exclusive-less CREATE answers EXIST.
//!
//! Keyed as knfsd keys its cache: the client's address and port, the xid, program, version and
//! procedure, and a digest of the first [`DIGEST_BYTES`] bytes of the arguments (so that a
//! reused xid with other arguments is not mistaken for a duplicate) together with their length.
//! A duplicate that arrives while the first call still runs is dropped: the client sends it
//! again, and by then the reply is cached. Bounded by [`Limits::entries`] (oldest first out)
//! and [`Limits::lifetime`].
//!
//! The cache is per node. A call sent again to another node after its VIP moved runs again
//! there, as it does with knfsd or NFS-Ganesha under CTDB.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crate::rpc::{Call, NFS_PROGRAM};

/// How many argument bytes the digest covers (knfsd's `RC_CSUMLEN`).
pub const DIGEST_BYTES: usize = 256;

/// NFSv3 procedures whose replies are cached: those that change the file system in a way a
/// second execution would answer differently.
const CACHED_PROCEDURES: [u32; 10] = [
    2,  // SETATTR
    7,  // WRITE
    8,  // CREATE
    9,  // MKDIR
    10, // SYMLINK
    11, // MKNOD
    12, // REMOVE
    13, // RMDIR
    14, // RENAME
    15, // LINK
];

/// Whether replies of `call` are cached.
pub fn is_cached(call: &Call) -> bool {
    call.program == NFS_PROGRAM && call.version == 3 && CACHED_PROCEDURES.contains(&call.procedure)
}

/// The bounds of a [`DuplicateCache`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Calls remembered at most; the oldest goes first.
    pub entries: usize,
    /// How long a call is remembered.
    pub lifetime: Duration,
}

impl Default for Limits {
    /// 8,192 calls (their replies are a few hundred bytes: about 2.5 MiB) for 120 s, longer
    /// than a Linux client's retransmission of a call (`timeo` 60 s) after a reconnect.
    fn default() -> Self {
        Limits {
            entries: 8192,
            lifetime: Duration::from_secs(120),
        }
    }
}

/// What identifies one call of one client.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Key {
    client: SocketAddr,
    xid: u32,
    program: u32,
    version: u32,
    procedure: u32,
    arguments: u64,
}

impl Key {
    /// The key of `call` from `client` with `arguments` (the call's bytes after its header).
    pub fn new(client: SocketAddr, call: &Call, arguments: &[u8]) -> Key {
        let mut hasher = DefaultHasher::new();
        arguments.len().hash(&mut hasher);
        arguments[..arguments.len().min(DIGEST_BYTES)].hash(&mut hasher);
        Key {
            client,
            xid: call.xid,
            program: call.program,
            version: call.version,
            procedure: call.procedure,
            arguments: hasher.finish(),
        }
    }
}

/// What to do with a call, from [`DuplicateCache::begin`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A new call: run it, then [`DuplicateCache::finish`] (or [`DuplicateCache::abandon`]).
    Run,
    /// The same call is running now: drop this copy.
    Drop,
    /// The same call ran: send its reply again.
    Replay(Arc<[u8]>),
}

#[derive(Debug)]
enum Entry {
    Running,
    Done(Arc<[u8]>),
}

#[derive(Debug)]
struct Inner {
    entries: HashMap<Key, (Entry, Instant)>,
    /// Keys in the order they were first seen, with that time; may name keys already gone.
    order: VecDeque<(Key, Instant)>,
}

/// Caches of at least this many calls are split into [`SHARDS`] shards.
const SHARDED_FROM: usize = 1024;
/// Shards of a large cache: less contention between worker threads, and tables small enough
/// that no call ever makes an allocation of more than a few hundred KiB (the fuzz targets abort
/// on any over 1 MiB).
const SHARDS: usize = 16;

/// The duplicate request cache of one node: one or [`SHARDS`] shards, each a bounded table of
/// its share of the calls, chosen by the key.
#[derive(Debug)]
pub struct DuplicateCache {
    lifetime: Duration,
    /// Calls each shard remembers at most.
    per_shard: usize,
    shards: Box<[Mutex<Inner>]>,
}

impl DuplicateCache {
    pub fn new(limits: Limits) -> DuplicateCache {
        let entries = limits.entries.max(1);
        let shards = if entries >= SHARDED_FROM { SHARDS } else { 1 };
        let per_shard = entries / shards;
        // Sized now, so that a call never grows a table: a shard holds `per_shard` entries at
        // most, and its queue about as many (plus keys abandoned or re-seen meanwhile).
        let shard = || {
            Mutex::new(Inner {
                entries: HashMap::with_capacity(per_shard + 1),
                order: VecDeque::with_capacity(2 * per_shard),
            })
        };
        DuplicateCache {
            lifetime: limits.lifetime,
            per_shard,
            shards: (0..shards).map(|_| shard()).collect(),
        }
    }

    fn shard(&self, key: &Key) -> std::sync::MutexGuard<'_, Inner> {
        // The digest is a SipHash of the arguments; the xid varies between calls of one client.
        let mixed = key.arguments ^ u64::from(key.xid).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        let index = usize::try_from(mixed % self.shards.len() as u64).unwrap_or(0);
        self.shards[index]
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Looks `key` up at `now`: a new call is recorded as running.
    pub fn begin(&self, key: Key, now: Instant) -> Decision {
        let mut inner = self.shard(&key);
        self.expire(&mut inner, now);
        if let Some((entry, _)) = inner.entries.get(&key) {
            return match entry {
                Entry::Running => Decision::Drop,
                Entry::Done(reply) => Decision::Replay(reply.clone()),
            };
        }
        inner.entries.insert(key, (Entry::Running, now));
        inner.order.push_back((key, now));
        while inner.entries.len() > self.per_shard {
            let Some((oldest, seen)) = inner.order.pop_front() else {
                break;
            };
            if inner
                .entries
                .get(&oldest)
                .is_some_and(|(_, at)| *at == seen)
            {
                inner.entries.remove(&oldest);
            }
        }
        Decision::Run
    }

    /// Records the reply of a call [`DuplicateCache::begin`] said to run.
    pub fn finish(&self, key: Key, reply: &[u8]) {
        let mut inner = self.shard(&key);
        if let Some((entry, _)) = inner.entries.get_mut(&key) {
            *entry = Entry::Done(reply.into());
        }
    }

    /// Forgets a call that produced no reply, so that the client's next copy runs.
    pub fn abandon(&self, key: Key) {
        let mut inner = self.shard(&key);
        if matches!(inner.entries.get(&key), Some((Entry::Running, _))) {
            inner.entries.remove(&key);
        }
    }

    /// How many calls are remembered.
    pub fn len(&self) -> usize {
        self.shards
            .iter()
            .map(|shard| {
                shard
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .entries
                    .len()
            })
            .sum()
    }

    /// Whether no call is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expire(&self, inner: &mut Inner, now: Instant) {
        while let Some(&(key, seen)) = inner.order.front() {
            if now.saturating_duration_since(seen) < self.lifetime {
                break;
            }
            inner.order.pop_front();
            if inner.entries.get(&key).is_some_and(|(_, at)| *at == seen) {
                inner.entries.remove(&key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rpc::{Credential, OpaqueAuth};

    fn call(xid: u32, procedure: u32) -> Call {
        Call {
            xid,
            program: NFS_PROGRAM,
            version: 3,
            procedure,
            credential: Credential::None,
            verifier: OpaqueAuth::none(),
        }
    }

    fn client(port: u16) -> SocketAddr {
        SocketAddr::from(([192, 0, 2, 101], port))
    }

    const REMOVE: u32 = 12;

    #[test]
    fn only_calls_that_change_the_file_system_are_cached() {
        let cached: Vec<u32> = (0..22).filter(|&p| is_cached(&call(1, p))).collect();
        assert_eq!(cached, [2, 7, 8, 9, 10, 11, 12, 13, 14, 15]);
        let mut mount = call(1, 1);
        mount.program = crate::rpc::MOUNT_PROGRAM;
        assert!(!is_cached(&mount));
    }

    #[test]
    fn a_call_runs_once_and_its_copies_are_dropped_then_replayed() {
        let cache = DuplicateCache::new(Limits::default());
        let now = Instant::now();
        let key = Key::new(client(700), &call(7, REMOVE), b"handle and name");
        assert_eq!(cache.begin(key, now), Decision::Run);
        assert_eq!(cache.begin(key, now), Decision::Drop);
        cache.finish(key, b"the reply");
        assert_eq!(
            cache.begin(key, now + Duration::from_secs(1)),
            Decision::Replay(Arc::from(&b"the reply"[..]))
        );
    }

    #[test]
    fn another_client_port_xid_procedure_or_argument_is_another_call() {
        let cache = DuplicateCache::new(Limits::default());
        let now = Instant::now();
        let first = Key::new(client(700), &call(7, REMOVE), b"a");
        assert_eq!(cache.begin(first, now), Decision::Run);
        cache.finish(first, b"reply");
        for other in [
            Key::new(client(701), &call(7, REMOVE), b"a"),
            Key::new(client(700), &call(8, REMOVE), b"a"),
            Key::new(client(700), &call(7, 13), b"a"),
            Key::new(client(700), &call(7, REMOVE), b"b"),
            Key::new(client(700), &call(7, REMOVE), b"aa"),
        ] {
            assert_eq!(cache.begin(other, now), Decision::Run, "{other:?}");
        }
    }

    #[test]
    fn the_digest_covers_the_first_bytes_and_the_length() {
        let long = vec![1u8; 4096];
        let mut changed_late = long.clone();
        changed_late[DIGEST_BYTES + 10] = 2;
        let mut changed_early = long.clone();
        changed_early[10] = 2;
        let key = |arguments: &[u8]| Key::new(client(1), &call(1, 7), arguments);
        assert_eq!(key(&long), key(&changed_late));
        assert_ne!(key(&long), key(&changed_early));
        assert_ne!(key(&long), key(&long[..4095]));
    }

    #[test]
    fn calls_are_forgotten_after_their_lifetime() {
        let limits = Limits {
            entries: 100,
            lifetime: Duration::from_secs(120),
        };
        let cache = DuplicateCache::new(limits);
        let start = Instant::now();
        let key = Key::new(client(700), &call(7, REMOVE), b"a");
        assert_eq!(cache.begin(key, start), Decision::Run);
        cache.finish(key, b"reply");
        assert!(matches!(
            cache.begin(key, start + Duration::from_secs(119)),
            Decision::Replay(_)
        ));
        assert_eq!(
            cache.begin(key, start + Duration::from_secs(120)),
            Decision::Run
        );
        assert_eq!(cache.len(), 1);
    }

    #[test]
    fn the_oldest_call_goes_first_when_the_cache_is_full() {
        let limits = Limits {
            entries: 3,
            lifetime: Duration::from_secs(120),
        };
        let cache = DuplicateCache::new(limits);
        let now = Instant::now();
        let keys: Vec<Key> = (0..5)
            .map(|xid| Key::new(client(700), &call(xid, REMOVE), b"a"))
            .collect();
        for key in &keys {
            assert_eq!(cache.begin(*key, now), Decision::Run);
            cache.finish(*key, b"reply");
        }
        assert_eq!(cache.len(), 3);
        for key in &keys[2..] {
            assert!(matches!(cache.begin(*key, now), Decision::Replay(_)));
        }
        assert_eq!(cache.begin(keys[0], now), Decision::Run);
        assert_eq!(cache.len(), 3);
    }

    #[test]
    fn a_large_cache_is_sharded_and_stays_within_its_bound() {
        let limits = Limits::default();
        let cache = DuplicateCache::new(limits);
        assert_eq!(cache.shards.len(), SHARDS);
        let now = Instant::now();
        let key = |xid: u32| Key::new(client(700), &call(xid, REMOVE), &xid.to_be_bytes());
        for xid in 0..3 * limits.entries as u32 {
            assert_eq!(cache.begin(key(xid), now), Decision::Run);
            cache.finish(key(xid), b"reply");
        }
        let held = cache.len();
        assert!(held <= limits.entries, "{held}");
        // Every shard is full: the shards split the calls evenly enough.
        assert!(held > limits.entries - SHARDS, "{held}");
        let last = 3 * limits.entries as u32 - 1;
        assert!(matches!(cache.begin(key(last), now), Decision::Replay(_)));
        assert_eq!(cache.begin(key(0), now), Decision::Run);
    }

    #[test]
    fn an_abandoned_call_runs_again() {
        let cache = DuplicateCache::new(Limits::default());
        let now = Instant::now();
        let key = Key::new(client(700), &call(7, REMOVE), b"a");
        assert_eq!(cache.begin(key, now), Decision::Run);
        cache.abandon(key);
        assert!(cache.is_empty());
        assert_eq!(cache.begin(key, now), Decision::Run);
        // A finished call is not abandoned by a late copy's failure.
        cache.finish(key, b"reply");
        cache.abandon(key);
        assert!(matches!(cache.begin(key, now), Decision::Replay(_)));
    }
}
