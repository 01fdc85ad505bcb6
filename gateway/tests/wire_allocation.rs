//! Measures, with a counting global allocator, the heap the wire layer really takes for hostile
//! input (DESIGN.md invariant 7): classifying a record never holds more heap than the record is
//! long, decoding XDR arrays never reserves more than the input could fill, and the record
//! decoder's memory follows the bytes that have arrived, not the lengths that were announced.
//!
//! The counters are per thread, so the test harness's other threads do not disturb them; each
//! measurement brackets a single call and nothing else.

// Strategy and measurement helpers are test code outside `#[test]` functions, which
// clippy.toml's test exemption does not reach.
#![allow(clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use gateway::nfs3::wire::decode_args;
use gateway::record::{DEFAULT_MAX_RECORD, RecordDecoder, encode_record};
use gateway::rpc::{AuthSys, Call, Credential, OpaqueAuth, classify};
use gateway::xdr::{Decoder, Encoder};
use proptest::collection::vec;
use proptest::prelude::*;

struct CountingAllocator;

thread_local! {
    // Constant-initialised cells without destructors: touching them never allocates, so the
    // allocator can use them without recursing into itself.
    static LIVE: Cell<isize> = const { Cell::new(0) };
    static PEAK: Cell<isize> = const { Cell::new(0) };
}

fn account(change: isize) {
    // `try_with` fails only while the thread is being torn down; nothing is measured then.
    let _ = LIVE.try_with(|live| {
        let now = live.get() + change;
        live.set(now);
        let _ = PEAK.try_with(|peak| peak.set(peak.get().max(now)));
    });
}

fn signed(size: usize) -> isize {
    isize::try_from(size).unwrap_or(isize::MAX)
}

// SAFETY: every method forwards to `System` with the caller's arguments unchanged, so the
// `GlobalAlloc` contract is upheld by `System`; the bookkeeping only touches thread-local cells.
unsafe impl GlobalAlloc for CountingAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `alloc`'s contract.
        let pointer = unsafe { System.alloc(layout) };
        if !pointer.is_null() {
            account(signed(layout.size()));
        }
        pointer
    }

    unsafe fn dealloc(&self, pointer: *mut u8, layout: Layout) {
        // SAFETY: forwarded unchanged; the caller upholds `dealloc`'s contract.
        unsafe { System.dealloc(pointer, layout) };
        account(-signed(layout.size()));
    }

    unsafe fn realloc(&self, pointer: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded unchanged; the caller upholds `realloc`'s contract.
        let new_pointer = unsafe { System.realloc(pointer, layout, new_size) };
        if !new_pointer.is_null() {
            account(signed(new_size) - signed(layout.size()));
        }
        new_pointer
    }
}

#[global_allocator]
static ALLOCATOR: CountingAllocator = CountingAllocator;

/// Runs `action` and returns its result with the largest amount of heap it held at once beyond
/// what was live when it started.
fn peak_heap<T>(action: impl FnOnce() -> T) -> (T, usize) {
    let start = LIVE.with(Cell::get);
    PEAK.with(|peak| peak.set(start));
    let result = action();
    let peak = PEAK.with(Cell::get);
    (result, usize::try_from(peak - start).unwrap_or(0))
}

#[test]
fn the_allocator_counts() {
    let (buffer, peak) = peak_heap(|| vec![0u8; 1000]);
    assert!(peak >= 1000, "{peak}");
    drop(buffer);
}

fn call_with_everything() -> Vec<u8> {
    let call = Call {
        xid: 1,
        program: 100_003,
        version: 3,
        procedure: 1,
        credential: Credential::Sys(AuthSys {
            stamp: 2,
            machinename: vec![b'm'; 255],
            uid: 1000,
            gid: 1000,
            gids: vec![7; 16],
        }),
        verifier: OpaqueAuth::new(6, vec![9; 400]).unwrap(),
    };
    let mut record = Vec::new();
    call.encode(&mut Encoder::new(&mut record)).unwrap();
    record
}

/// NFSv3 arguments that start like real ones: a handle of plausible length, then anything.
fn nfs3_arguments() -> impl Strategy<Value = Vec<u8>> {
    (0..=70u32, vec(any::<u8>(), 0..600)).prop_map(|(handle_length, tail)| {
        let mut bytes = handle_length.to_be_bytes().to_vec();
        bytes.extend(std::iter::repeat_n(
            7u8,
            handle_length.next_multiple_of(4) as usize,
        ));
        bytes.extend(tail);
        bytes
    })
}

proptest! {
    #[test]
    fn nfs3_arguments_decode_without_any_heap(
        procedure in 0..24u32,
        bytes in prop_oneof![vec(any::<u8>(), 0..600), nfs3_arguments()],
    ) {
        let (arguments, peak) = peak_heap(|| decode_args(procedure, &bytes).is_ok());
        prop_assert_eq!(peak, 0, "procedure {} decoded: {}", procedure, arguments);
    }

    #[test]
    fn classify_holds_no_more_heap_than_the_record(record in vec(any::<u8>(), 0..600)) {
        let (classification, peak) = peak_heap(|| classify(&record));
        prop_assert!(
            peak <= record.len(),
            "{} bytes of heap for a {}-byte record",
            peak,
            record.len()
        );
        drop(classification);
    }

    #[test]
    fn classify_of_damaged_calls_holds_no_more_heap_than_the_record(
        cut in any::<prop::sample::Index>(),
        word in any::<prop::sample::Index>(),
        value in prop_oneof![
            Just(0u32), Just(16), Just(17), Just(255), Just(256), Just(400), Just(401),
            Just(u32::MAX), any::<u32>(),
        ],
    ) {
        let mut record = call_with_everything();
        let word = word.index(record.len() / 4);
        record[word * 4..word * 4 + 4].copy_from_slice(&value.to_be_bytes());
        let record = &record[..cut.index(record.len() + 1)];
        let (classification, peak) = peak_heap(|| classify(record));
        prop_assert!(
            peak <= record.len(),
            "{} bytes of heap for a {}-byte record",
            peak,
            record.len()
        );
        drop(classification);
    }

    #[test]
    fn xdr_arrays_reserve_no_more_than_the_input(
        input in vec(any::<u8>(), 0..256),
        max in any::<u32>(),
    ) {
        let (values, peak) = peak_heap(|| Decoder::new(&input).array(max, Decoder::u32));
        prop_assert!(
            peak <= input.len(),
            "{} bytes of heap for {} bytes of input",
            peak,
            input.len()
        );
        drop(values);
    }

    #[test]
    fn record_decoder_memory_follows_arrived_bytes(
        announced in 0..=DEFAULT_MAX_RECORD as u32,
        last in any::<bool>(),
        body in vec(any::<u8>(), 0..4096),
        chunk in 1..512usize,
    ) {
        // A plausible first header announcing up to the maximum, then whatever follows (which
        // may hold more headers): random headers alone would nearly always be refused at once.
        let header = announced | if last { 0x8000_0000 } else { 0 };
        let stream = [&header.to_be_bytes()[..], &body].concat();
        let mut decoder = RecordDecoder::new(DEFAULT_MAX_RECORD);
        let start = LIVE.with(Cell::get);
        PEAK.with(|peak| peak.set(start));
        let mut arrived = 0;
        for piece in stream.chunks(chunk) {
            arrived += piece.len();
            let mut input = piece;
            while let Ok(Some(record)) = decoder.decode(&mut input) {
                drop(record);
            }
            let peak = usize::try_from(PEAK.with(Cell::get) - start).unwrap_or(0);
            prop_assert!(peak <= 2 * arrived, "{} bytes of heap after {} arrived", peak, arrived);
        }
    }
}

#[test]
fn announcing_a_megabyte_costs_nothing_until_it_arrives() {
    let mut decoder = RecordDecoder::new(DEFAULT_MAX_RECORD);
    let (_, peak) = peak_heap(|| {
        let mut input = &[0x80, 0x10, 0x00, 0x00, 0xaa, 0xbb][..];
        decoder.decode(&mut input).unwrap()
    });
    assert!(peak <= 4, "{peak} bytes held for 2 arrived");
    // And a whole maximum-size record, fed in 64 KiB reads as a socket would, peaks near its
    // size, not at some multiple of the announced length.
    let payload = vec![0x5a; DEFAULT_MAX_RECORD];
    let mut stream = Vec::new();
    encode_record(&payload, 4096, &mut stream);
    let mut decoder = RecordDecoder::new(DEFAULT_MAX_RECORD);
    let (records, peak) = peak_heap(|| {
        let mut records = Vec::new();
        for piece in stream.chunks(64 * 1024) {
            let mut input = piece;
            while let Some(record) = decoder.decode(&mut input).unwrap() {
                records.push(record);
            }
        }
        records
    });
    assert_eq!(records, vec![payload]);
    assert!(peak <= 2 * DEFAULT_MAX_RECORD, "{peak}");
}
