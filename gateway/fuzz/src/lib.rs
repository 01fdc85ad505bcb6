//! What the gateway's fuzz targets check, shared by the libFuzzer binaries in `fuzz_targets/`,
//! the corpus replay test and the seed generator: an allocator that aborts on any single
//! allocation over a bound, and the two checks — [`check_record`] (one record through the
//! decoding the serving loop applies) and [`check_stream`] (a TCP byte stream through record
//! marking, then every record through [`check_record`]) — and [`serve::check_served`], the
//! whole serving path on an export in a temporary directory.
//!
//! The bounds asserted are the ones the gateway's documentation claims (DESIGN.md invariant 7):
//!
//! * the record decoder's buffer follows the bytes that arrived (at most twice them) and never
//!   exceeds [`DEFAULT_MAX_RECORD`], whatever lengths the headers announce;
//! * classifying a record allocates only the credential's and verifier's fields, each no larger
//!   than the part of the record it came from, so no single allocation exceeds the record;
//! * decoding the arguments of any portmap, MOUNT or NFSv3 procedure allocates nothing.
//!
//! A violated bound aborts the process from inside the allocator (a panic there could not
//! unwind safely), which libFuzzer reports as a crash and saves the input.

pub mod seeds;
pub mod serve;

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::Write;

use gateway::dispatch::{Arguments, Decoded, decode_arguments, decode_record};
use gateway::handle::{FileHandle, HandleKey};
use gateway::nfs3::wire::Args;
use gateway::record::{DEFAULT_MAX_RECORD, RecordDecoder, RecordError};
use gateway::rpc::{Classification, classify, decode_reply, encode_reply};
use gateway::service::PROGRAMS;
use gateway::xdr::Encoder;

/// Forwards to the system allocator, counting allocations and aborting on one over [`LIMIT`].
#[derive(Debug)]
pub struct BoundedAllocator;

thread_local! {
    // Per thread, so a test harness's other threads neither trip nor disturb a measurement.
    // Constant-initialised cells without destructors: touching them never allocates.
    /// The largest single allocation (or reallocation's new size) allowed right now.
    static LIMIT: Cell<usize> = const { Cell::new(usize::MAX) };
    /// Allocations and growing reallocations since [`bounded`] started.
    static ALLOCATIONS: Cell<usize> = const { Cell::new(0) };
    /// The largest single size requested since [`bounded`] started.
    static LARGEST: Cell<usize> = const { Cell::new(0) };
}

#[global_allocator]
static ALLOCATOR: BoundedAllocator = BoundedAllocator;

/// Checks one requested size; never allocates.
fn account(size: usize) {
    // `try_with` fails only while the thread is being torn down; nothing is measured then.
    let _ = ALLOCATIONS.try_with(|count| count.set(count.get() + 1));
    let _ = LARGEST.try_with(|largest| largest.set(largest.get().max(size)));
    let limit = LIMIT.try_with(Cell::get).unwrap_or(usize::MAX);
    if size > limit {
        // Formatting into a stack buffer and writing to the unbuffered stderr allocate nothing.
        let mut message = [0u8; 160];
        let mut cursor = std::io::Cursor::new(&mut message[..]);
        let _ = writeln!(
            cursor,
            "gateway-fuzz: allocation of {size} bytes is over the bound of {limit} bytes"
        );
        let written = usize::try_from(cursor.position()).unwrap_or(0);
        let _ = std::io::stderr().write_all(&message[..written]);
        std::process::abort();
    }
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so `System`
// upholds the `GlobalAlloc` contract; the bookkeeping only touches atomics and never allocates.
unsafe impl GlobalAlloc for BoundedAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        account(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        account(layout.size());
        // SAFETY: forwarded unchanged; the caller upholds `alloc_zeroed`'s contract.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(pointer, layout) }
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > layout.size() {
            account(new_size);
        }
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(pointer, layout, new_size) }
    }
}

/// What [`bounded`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Usage {
    /// Allocations and growing reallocations.
    pub allocations: usize,
    /// The largest size requested by any of them.
    pub largest: usize,
}

/// Runs `action` with every single allocation limited to `limit` bytes (the process aborts on
/// one over it) and reports what it allocated. Not reentrant; the targets are single-threaded.
pub fn bounded<T>(limit: usize, action: impl FnOnce() -> T) -> (T, Usage) {
    ALLOCATIONS.set(0);
    LARGEST.set(0);
    let previous = LIMIT.replace(limit);
    let result = action();
    LIMIT.set(previous);
    let usage = Usage {
        allocations: ALLOCATIONS.get(),
        largest: LARGEST.get(),
    };
    (result, usage)
}

/// Runs one complete record through the serving loop's decoding and checks it:
///
/// * [`classify`] allocates no single block larger than the record;
/// * argument decoding ([`decode_arguments`]) allocates nothing at all;
/// * [`decode_record`] agrees with those steps taken one by one;
/// * a decoded call header re-encodes to a record that decodes to the same call and arguments,
///   and every error reply encodes to a message that decodes back to itself;
/// * every NFSv3 file handle in the arguments goes through the handle check a procedure runs
///   first (`FileHandle::decode`, layout and MAC), allocating nothing; one that passes (only
///   possible with the seeds' key, [`handle_key`]) encodes back to the same bytes;
/// * decoding the record as a reply (what the gateway's own health probe does with answers)
///   does not panic either.
pub fn check_record(record: &[u8]) {
    let (classification, _) = bounded(record.len(), || classify(record));
    match &classification {
        Classification::Call { call, args_offset } => {
            let args = record.get(*args_offset..).unwrap_or_default();
            let (arguments, usage) = bounded(0, || decode_arguments(call, args));
            assert_eq!(usage.allocations, 0, "argument decoding allocated");
            if let Ok(Arguments::Nfs3(nfs3)) = &arguments {
                check_handles(nfs3);
            }
            let decoded = decode_record(PROGRAMS, record);
            if let Decoded::Call {
                arguments: whole, ..
            } = &decoded
            {
                assert_eq!(Ok(whole), arguments.as_ref(), "decode_record disagrees");
            }
            check_reencoded_call(call, args, &decoded);
        }
        Classification::Reject { reply, cause } => {
            assert_eq!(Some(reply.xid), cause.xid());
            assert_eq!(
                decode_record(PROGRAMS, record),
                Decoded::Reject(reply.clone())
            );
        }
        Classification::Drop(cause) => {
            assert_eq!(decode_record(PROGRAMS, record), Decoded::Drop(*cause));
        }
    }
    match decode_record(PROGRAMS, record) {
        Decoded::Reject(reply) | Decoded::BadArguments { reply, .. } => {
            let message = encode_reply(reply.xid, &reply.body, &[]);
            let decoded = decode_reply(&message).map(|(header, _)| header);
            assert_eq!(decoded.ok(), Some(reply), "reply does not round-trip");
        }
        Decoded::Drop(_) | Decoded::Call { .. } => {}
    }
    let _ = decode_reply(record);
}

/// The key the seed corpus seals its file handles with, so that mutated seeds reach both the
/// accepted and the forged paths of the handle check.
pub fn handle_key() -> HandleKey {
    HandleKey::from_cluster_secret(b"gateway-fuzz seed corpus")
}

/// The file handles an NFSv3 call carries.
pub fn nfs3_handles<'a>(args: &Args<'a>) -> Vec<&'a [u8]> {
    match *args {
        Args::Null => vec![],
        Args::GetAttr { object }
        | Args::SetAttr { object, .. }
        | Args::Access { object, .. }
        | Args::ReadLink { object }
        | Args::PathConf { object } => vec![object],
        Args::Read { file, .. } | Args::Write { file, .. } | Args::Commit { file, .. } => {
            vec![file]
        }
        Args::Lookup(place) | Args::Remove(place) | Args::RmDir(place) => vec![place.dir],
        Args::Create { place, .. }
        | Args::MkDir { place, .. }
        | Args::Symlink { place, .. }
        | Args::MkNod { place, .. } => vec![place.dir],
        Args::Rename { from, to } => vec![from.dir, to.dir],
        Args::Link { file, link } => vec![file, link.dir],
        Args::ReadDir { dir, .. } | Args::ReadDirPlus { dir, .. } => vec![dir],
        Args::FsStat { root } | Args::FsInfo { root } => vec![root],
    }
}

fn check_handles(args: &Args<'_>) {
    let key = handle_key();
    for handle in nfs3_handles(args) {
        let (decoded, usage) = bounded(0, || FileHandle::decode(handle, &key));
        assert_eq!(usage.allocations, 0, "handle decoding allocated");
        if let Ok(decoded) = decoded {
            let encoded = decoded.encode(&key);
            if handle.first() == Some(&gateway::handle::HANDLE_VERSION) {
                assert_eq!(encoded, handle, "handle does not round-trip");
            } else {
                // An older layout, still accepted: issued again in the current one, it names
                // the same object.
                assert_eq!(
                    FileHandle::decode(&encoded, &key),
                    Ok(decoded),
                    "an older handle re-sealed names another object"
                );
            }
        }
    }
}

/// The call header of `call` encoded afresh, then the same arguments, must decode to the same
/// outcome: decoding keeps everything that matters and the encoder writes what the decoder reads.
fn check_reencoded_call(call: &gateway::rpc::Call, args: &[u8], decoded: &Decoded<'_>) {
    let mut again = Vec::with_capacity(args.len() + 1024);
    call.encode(&mut Encoder::new(&mut again))
        .unwrap_or_else(|error| panic!("a decoded call does not encode: {error}"));
    again.extend_from_slice(args);
    assert_eq!(
        &decode_record(PROGRAMS, &again),
        decoded,
        "a re-encoded call decodes differently"
    );
}

/// Feeds `stream` to a record decoder as a connection task does, in pieces of `chunk` bytes
/// (all at once when 0), and returns the records and the error that ended it, if any. Each
/// decode step must not allocate a block over twice the bytes fed so far, nor over the record
/// limit.
fn decode_stream(stream: &[u8], chunk: usize) -> (Vec<Vec<u8>>, Option<RecordError>) {
    let mut decoder = RecordDecoder::new(DEFAULT_MAX_RECORD);
    let mut records = Vec::new();
    let mut arrived = 0usize;
    let chunk = if chunk == 0 {
        stream.len().max(1)
    } else {
        chunk
    };
    for piece in stream.chunks(chunk) {
        arrived += piece.len();
        let mut input = piece;
        loop {
            let limit = arrived.saturating_mul(2).min(DEFAULT_MAX_RECORD);
            let (step, _) = bounded(limit, || decoder.decode(&mut input));
            match step {
                Ok(Some(record)) => {
                    assert!(record.len() <= DEFAULT_MAX_RECORD);
                    records.push(record);
                }
                Ok(None) => {
                    assert!(input.is_empty(), "input left over without a record");
                    break;
                }
                Err(error) => {
                    // The stream is out of step for good.
                    assert_eq!(decoder.decode(&mut &[0x80, 0, 0, 0][..]), Err(error));
                    return (records, Some(error));
                }
            }
        }
        assert!(decoder.buffer_capacity() <= arrived.saturating_mul(2).min(DEFAULT_MAX_RECORD));
    }
    (records, None)
}

/// A TCP stream: the first byte chooses how the stream is cut into reads (0: one read; n: reads
/// of n bytes), the rest is the stream. The records and the final error must not depend on how
/// the stream was cut, and every record goes through [`check_record`].
pub fn check_stream(data: &[u8]) {
    let Some((&chunk, stream)) = data.split_first() else {
        return;
    };
    let (records, error) = decode_stream(stream, usize::from(chunk));
    if chunk != 0 {
        let whole = decode_stream(stream, 0);
        assert_eq!(
            (&records, &error),
            (&whole.0, &whole.1),
            "depends on chunking"
        );
    }
    for record in &records {
        check_record(record);
    }
}
