//! Properties of the ONC-RPC wire layer that must hold for every input (DESIGN.md invariant
//! 7): decoding arbitrary bytes never panics and never produces anything larger than its input;
//! what we encode decodes back to the same value; and the record decoder yields the same records
//! however the stream is cut into chunks.

// Strategy helpers are test code outside `#[test]` functions, which clippy.toml's test exemption
// does not reach; a broken generator should fail loudly, which is what unwrap does.
#![allow(clippy::unwrap_used)]

use gateway::record::{RecordDecoder, RecordError, encode_record};
use gateway::rpc::{
    AcceptStatus, AuthStat, AuthSys, Call, CallError, Classification, Credential, OpaqueAuth,
    RejectedReply, ReplyBody, ReplyHeader, classify, decode_reply, encode_reply,
};
use gateway::xdr::{Decoder, Encoder, XdrError};
use proptest::collection::vec;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// XDR

/// One XDR item with its value, for round trips.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    U32(u32),
    I32(i32),
    U64(u64),
    I64(i64),
    Bool(bool),
    Fixed(Vec<u8>),
    Opaque(Vec<u8>),
    Text(String),
    Array(Vec<u32>),
    Optional(Option<u32>),
}

const OPAQUE_MAX: u32 = 64;
const ARRAY_MAX: u32 = 32;

fn item() -> impl Strategy<Value = Item> {
    prop_oneof![
        any::<u32>().prop_map(Item::U32),
        any::<i32>().prop_map(Item::I32),
        any::<u64>().prop_map(Item::U64),
        any::<i64>().prop_map(Item::I64),
        any::<bool>().prop_map(Item::Bool),
        vec(any::<u8>(), 0..16).prop_map(Item::Fixed),
        vec(any::<u8>(), 0..=OPAQUE_MAX as usize).prop_map(Item::Opaque),
        // At most 16 characters of at most 4 bytes each: within OPAQUE_MAX.
        "\\PC{0,16}".prop_map(Item::Text),
        vec(any::<u32>(), 0..=ARRAY_MAX as usize).prop_map(Item::Array),
        any::<Option<u32>>().prop_map(Item::Optional),
    ]
}

fn encode_item(encoder: &mut Encoder<'_>, item: &Item) {
    match item {
        Item::U32(value) => encoder.u32(*value),
        Item::I32(value) => encoder.i32(*value),
        Item::U64(value) => encoder.u64(*value),
        Item::I64(value) => encoder.i64(*value),
        Item::Bool(value) => encoder.bool(*value),
        Item::Fixed(bytes) => encoder.fixed_opaque(bytes),
        Item::Opaque(bytes) => encoder.opaque(bytes, OPAQUE_MAX).unwrap(),
        Item::Text(text) => encoder.string(text, OPAQUE_MAX).unwrap(),
        Item::Array(values) => encoder
            .array(values, ARRAY_MAX, |encoder, value| {
                encoder.u32(*value);
                Ok(())
            })
            .unwrap(),
        Item::Optional(value) => encoder
            .optional(value.as_ref(), |encoder, value| {
                encoder.u32(*value);
                Ok(())
            })
            .unwrap(),
    }
}

/// Decodes an item shaped like `shape` (whose value is ignored except a fixed opaque's length).
fn decode_item(decoder: &mut Decoder<'_>, shape: &Item) -> Result<Item, XdrError> {
    Ok(match shape {
        Item::U32(_) => Item::U32(decoder.u32()?),
        Item::I32(_) => Item::I32(decoder.i32()?),
        Item::U64(_) => Item::U64(decoder.u64()?),
        Item::I64(_) => Item::I64(decoder.i64()?),
        Item::Bool(_) => Item::Bool(decoder.bool()?),
        Item::Fixed(bytes) => Item::Fixed(decoder.fixed_opaque(bytes.len())?.to_vec()),
        Item::Opaque(_) => Item::Opaque(decoder.opaque(OPAQUE_MAX)?.to_vec()),
        Item::Text(_) => Item::Text(decoder.string(OPAQUE_MAX)?.to_owned()),
        Item::Array(_) => Item::Array(decoder.array(ARRAY_MAX, Decoder::u32)?),
        Item::Optional(_) => Item::Optional(decoder.optional(Decoder::u32)?),
    })
}

/// A decoding step with caller limits, for feeding arbitrary bytes.
#[derive(Debug, Clone)]
enum Step {
    U32,
    U64,
    Bool,
    Fixed(usize),
    Opaque(u32),
    Text(u32),
    Array(u32),
    Optional,
}

fn step() -> impl Strategy<Value = Step> {
    let limit = prop_oneof![0..64u32, Just(u32::MAX), any::<u32>()];
    prop_oneof![
        Just(Step::U32),
        Just(Step::U64),
        Just(Step::Bool),
        (0..64usize).prop_map(Step::Fixed),
        limit.clone().prop_map(Step::Opaque),
        limit.clone().prop_map(Step::Text),
        limit.prop_map(Step::Array),
        Just(Step::Optional),
    ]
}

proptest! {
    #[test]
    fn xdr_round_trip(items in vec(item(), 0..24)) {
        let mut bytes = Vec::new();
        let mut encoder = Encoder::new(&mut bytes);
        for item in &items {
            encode_item(&mut encoder, item);
        }
        prop_assert_eq!(bytes.len() % 4, 0, "always whole units");
        let mut decoder = Decoder::new(&bytes);
        for item in &items {
            prop_assert_eq!(&decode_item(&mut decoder, item).unwrap(), item);
        }
        prop_assert_eq!(decoder.finish(), Ok(()));
    }

    #[test]
    fn xdr_decoding_arbitrary_bytes_is_bounded(
        input in vec(any::<u8>(), 0..256),
        steps in vec(step(), 1..16),
    ) {
        let mut decoder = Decoder::new(&input);
        for step in &steps {
            let remaining_before = decoder.remaining();
            // The size of what this step produced, in bytes.
            let produced = match step {
                Step::U32 => decoder.u32().map(|_| 4),
                Step::U64 => decoder.u64().map(|_| 8),
                Step::Bool => decoder.bool().map(|_| 4),
                Step::Fixed(length) => decoder.fixed_opaque(*length).map(<[u8]>::len),
                Step::Opaque(max) => decoder.opaque(*max).map(|bytes| {
                    assert!(bytes.len() <= *max as usize);
                    bytes.len()
                }),
                Step::Text(max) => decoder.string(*max).map(|text| {
                    assert!(text.len() <= *max as usize);
                    text.len()
                }),
                Step::Array(max) => decoder.array(*max, Decoder::u32).map(|values| {
                    assert!(values.len() <= *max as usize);
                    assert!(values.capacity() <= values.len().max(1), "exact reservation");
                    4 * values.len()
                }),
                Step::Optional => decoder
                    .optional(Decoder::u32)
                    .map(|value| 4 * usize::from(value.is_some())),
            };
            prop_assert_eq!(decoder.position() + decoder.remaining(), input.len());
            match produced {
                Ok(produced) => prop_assert!(produced <= remaining_before),
                Err(_) => break,
            }
        }
    }

    #[test]
    fn non_zero_padding_is_accepted_and_zero_padding_is_written(
        data in vec(any::<u8>(), 0..16),
        junk in any::<[u8; 3]>(),
    ) {
        let mut bytes = Vec::new();
        Encoder::new(&mut bytes).opaque(&data, 16).unwrap();
        let padding = bytes.len() - 4 - data.len();
        prop_assert!(bytes[4 + data.len()..].iter().all(|byte| *byte == 0));
        bytes[4 + data.len()..].copy_from_slice(&junk[..padding]);
        prop_assert_eq!(Decoder::new(&bytes).opaque(16), Ok(&data[..]));
    }
}

// ---------------------------------------------------------------------------------------------
// Record marking

/// Cuts `stream` into chunks of the given sizes (cycled), feeds them to a decoder and collects
/// the records, checking after every call that memory follows what has arrived.
fn feed_in_chunks(
    decoder: &mut RecordDecoder,
    stream: &[u8],
    chunk_sizes: &[usize],
) -> (Vec<Vec<u8>>, Option<RecordError>) {
    let mut records = Vec::new();
    let mut rest = stream;
    let mut sizes = chunk_sizes.iter().cycle();
    while !rest.is_empty() {
        let size = (*sizes.next().unwrap()).clamp(1, rest.len());
        let (chunk, tail) = rest.split_at(size);
        rest = tail;
        let mut input = chunk;
        loop {
            match decoder.decode(&mut input) {
                Ok(Some(record)) => {
                    assert!(record.len() <= decoder.max_record());
                    records.push(record);
                }
                Ok(None) => {
                    assert!(input.is_empty(), "Ok(None) only when the input is used up");
                    break;
                }
                Err(error) => return (records, Some(error)),
            }
            assert!(decoder.buffered() <= decoder.max_record());
            assert!(
                decoder.buffer_capacity() <= 2 * decoder.buffered(),
                "capacity {} for {} buffered bytes",
                decoder.buffer_capacity(),
                decoder.buffered()
            );
        }
        assert!(decoder.buffered() <= decoder.max_record());
        assert!(
            decoder.buffer_capacity() <= 2 * decoder.buffered(),
            "capacity {} for {} buffered bytes",
            decoder.buffer_capacity(),
            decoder.buffered()
        );
    }
    (records, None)
}

proptest! {
    #[test]
    fn records_survive_any_chunking(
        records in vec((vec(any::<u8>(), 0..300), 1..64usize), 0..8),
        chunk_sizes in vec(1..80usize, 1..8),
    ) {
        let mut stream = Vec::new();
        for (payload, max_fragment) in &records {
            encode_record(payload, *max_fragment, &mut stream);
        }
        let mut decoder = RecordDecoder::new(300);
        let (decoded, error) = feed_in_chunks(&mut decoder, &stream, &chunk_sizes);
        prop_assert_eq!(error, None);
        let expected: Vec<Vec<u8>> = records.into_iter().map(|(payload, _)| payload).collect();
        prop_assert_eq!(decoded, expected);
        prop_assert!(decoder.is_at_record_boundary());
    }

    #[test]
    fn oversized_records_fail_under_any_chunking(
        payload in vec(any::<u8>(), 101..400),
        max_fragment in 1..128usize,
        chunk_sizes in vec(1..80usize, 1..8),
    ) {
        let mut stream = Vec::new();
        encode_record(&payload, max_fragment, &mut stream);
        let mut decoder = RecordDecoder::new(100);
        let (decoded, error) = feed_in_chunks(&mut decoder, &stream, &chunk_sizes);
        prop_assert!(decoded.is_empty());
        let is_too_large = matches!(error, Some(RecordError::TooLarge { limit: 100, .. }));
        prop_assert!(is_too_large, "{:?}", error);
    }

    #[test]
    fn garbage_streams_give_errors_not_panics(
        stream in vec(any::<u8>(), 0..2048),
        chunk_sizes in vec(1..300usize, 1..8),
        max_record in prop_oneof![0..64usize, Just(gateway::record::DEFAULT_MAX_RECORD)],
    ) {
        let mut decoder = RecordDecoder::new(max_record);
        let (records, error) = feed_in_chunks(&mut decoder, &stream, &chunk_sizes);
        let decoded: usize = records.iter().map(Vec::len).sum();
        prop_assert!(decoded + decoder.buffered() <= stream.len());
        if let Some(error) = error {
            // A failed decoder keeps failing, without panicking.
            prop_assert_eq!(decoder.decode(&mut &[0x80, 0, 0, 0][..]), Err(error));
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RPC messages

fn auth_sys() -> impl Strategy<Value = AuthSys> {
    (
        any::<u32>(),
        vec(any::<u8>(), 0..=255),
        any::<u32>(),
        any::<u32>(),
        vec(any::<u32>(), 0..=16),
    )
        .prop_map(|(stamp, machinename, uid, gid, gids)| AuthSys {
            stamp,
            machinename,
            uid,
            gid,
            gids,
        })
}

fn credential() -> impl Strategy<Value = Credential> {
    prop_oneof![
        Just(Credential::None),
        auth_sys().prop_map(Credential::Sys),
        (2..=u32::MAX).prop_map(Credential::Unsupported),
    ]
}

fn opaque_auth() -> impl Strategy<Value = OpaqueAuth> {
    (any::<u32>(), vec(any::<u8>(), 0..=400))
        .prop_map(|(flavor, body)| OpaqueAuth::new(flavor, body).unwrap())
}

fn call() -> impl Strategy<Value = Call> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        credential(),
        opaque_auth(),
    )
        .prop_map(
            |(xid, program, version, procedure, credential, verifier)| Call {
                xid,
                program,
                version,
                procedure,
                credential,
                verifier,
            },
        )
}

fn reply_body() -> impl Strategy<Value = ReplyBody> {
    let accept_status = prop_oneof![
        Just(AcceptStatus::Success),
        Just(AcceptStatus::ProgUnavail),
        (any::<u32>(), any::<u32>())
            .prop_map(|(low, high)| AcceptStatus::ProgMismatch { low, high }),
        Just(AcceptStatus::ProcUnavail),
        Just(AcceptStatus::GarbageArgs),
        Just(AcceptStatus::SystemErr),
    ];
    prop_oneof![
        (opaque_auth(), accept_status)
            .prop_map(|(verifier, status)| ReplyBody::Accepted { verifier, status }),
        (any::<u32>(), any::<u32>())
            .prop_map(|(low, high)| ReplyBody::Denied(RejectedReply::RpcMismatch { low, high })),
        (0..=14u32).prop_map(|stat| ReplyBody::auth_error(AuthStat::try_from(stat).unwrap())),
    ]
}

fn encoded_call(call: &Call, args: &[u8]) -> Vec<u8> {
    let mut record = Vec::new();
    let mut encoder = Encoder::new(&mut record);
    call.encode(&mut encoder).unwrap();
    encoder.raw(args);
    record
}

/// Heap bytes a classification holds, which must never exceed the record it came from.
fn held_bytes(classification: &Classification) -> usize {
    match classification {
        Classification::Call { call, .. } => {
            let credential = match &call.credential {
                Credential::Sys(auth_sys) => auth_sys.machinename.len() + 4 * auth_sys.gids.len(),
                Credential::None | Credential::Unsupported(_) => 0,
            };
            credential + call.verifier.body().len()
        }
        Classification::Reject { reply, .. } => match &reply.body {
            ReplyBody::Accepted { verifier, .. } => verifier.body().len(),
            ReplyBody::Denied(_) => 0,
        },
        Classification::Drop(_) => 0,
    }
}

/// Checks what must hold of any classification of `record`.
fn check_classification(record: &[u8]) -> Classification {
    let classification = classify(record);
    assert!(held_bytes(&classification) <= record.len());
    let xid = record
        .get(..4)
        .map(|bytes| u32::from_be_bytes([bytes[0], bytes[1], bytes[2], bytes[3]]));
    match &classification {
        Classification::Call { args_offset, .. } => assert!(*args_offset <= record.len()),
        Classification::Reject { reply, cause } => {
            assert_eq!(Some(reply.xid), xid);
            assert_eq!(cause.xid(), xid);
            assert_eq!(cause.reply().as_ref(), Some(reply));
        }
        Classification::Drop(cause) => {
            assert_eq!(cause.xid(), xid);
            assert_eq!(matches!(cause, CallError::NoXid { .. }), record.len() < 4);
            assert_eq!(cause.reply(), None);
        }
    }
    classification
}

proptest! {
    #[test]
    fn classifying_arbitrary_bytes_never_panics(record in vec(any::<u8>(), 0..512)) {
        check_classification(&record);
    }

    #[test]
    fn calls_round_trip(call in call(), args in vec(any::<u8>(), 0..32)) {
        let record = encoded_call(&call, &args);
        match check_classification(&record) {
            Classification::Call { call: decoded, args_offset } => {
                prop_assert_eq!(decoded, call);
                prop_assert_eq!(&record[args_offset..], &args[..]);
            }
            other => prop_assert!(false, "{:?}", other),
        }
    }

    #[test]
    fn damaged_calls_never_panic(
        call in call(),
        cut in any::<prop::sample::Index>(),
        flips in vec((any::<prop::sample::Index>(), any::<u8>()), 0..4),
        words in vec(
            (
                any::<prop::sample::Index>(),
                prop_oneof![Just(0u32), Just(1), Just(17), Just(256), Just(401), Just(u32::MAX)],
            ),
            0..3,
        ),
    ) {
        let mut record = encoded_call(&call, &[]);
        for (index, value) in flips {
            let position = index.index(record.len());
            record[position] ^= value;
        }
        // Overwrite whole words with lengths and counts around the limits.
        for (index, value) in words {
            let word = index.index(record.len() / 4);
            record[word * 4..word * 4 + 4].copy_from_slice(&value.to_be_bytes());
        }
        let length = cut.index(record.len() + 1);
        check_classification(&record[..length]);
        check_classification(&record);
    }

    #[test]
    fn replies_round_trip(
        xid in any::<u32>(),
        body in reply_body(),
        results in vec(any::<u8>(), 0..32),
    ) {
        let results = if matches!(body, ReplyBody::Accepted { status: AcceptStatus::Success, .. }) {
            results
        } else {
            Vec::new()
        };
        let message = encode_reply(xid, &body, &results);
        let (header, results_offset) = decode_reply(&message).unwrap();
        prop_assert_eq!(header, ReplyHeader { xid, body });
        prop_assert_eq!(&message[results_offset..], &results[..]);
    }

    #[test]
    fn decoding_arbitrary_replies_never_panics(message in vec(any::<u8>(), 0..512)) {
        if let Ok((header, results_offset)) = decode_reply(&message) {
            prop_assert!(results_offset <= message.len());
            if let ReplyBody::Accepted { verifier, .. } = header.body {
                prop_assert!(verifier.body().len() <= message.len());
            }
        }
    }
}
