//! The byte layout of peer links, as pure functions: how a payload is cut into Noise messages,
//! how decrypted Noise messages are put back together into payloads, and the hello that names
//! both ends of a link. Nothing here does I/O or cryptography; `noise` seals and opens the
//! messages these functions describe.
//!
//! Inside the encrypted channel every Noise message carries one plaintext of at most
//! [`PLAINTEXT_MAX`] bytes. An empty plaintext is a keepalive. Otherwise it starts a record: a
//! big-endian `u32` payload length followed by the first payload bytes; when the payload does not
//! fit, the following Noise messages carry the rest, each non-empty, until the length is reached.
//! A record's length is checked against the receiver's limit before anything is allocated.

use std::ops::Range;

/// The largest Noise message, ciphertext and tag included (Noise specification §3).
pub(crate) const NOISE_MESSAGE_MAX: usize = 65535;
/// The authentication tag every ChaChaPoly ciphertext carries.
pub(crate) const TAG_LEN: usize = 16;
/// The largest plaintext one Noise transport message can carry.
pub(crate) const PLAINTEXT_MAX: usize = NOISE_MESSAGE_MAX - TAG_LEN;
/// The record header: the payload length as a big-endian `u32`.
pub(crate) const RECORD_HEADER_LEN: usize = 4;
/// Payload bytes that fit in the first message of a record, after its header.
pub(crate) const FIRST_CHUNK_MAX: usize = PLAINTEXT_MAX - RECORD_HEADER_LEN;

/// The payload ranges, in order, that the Noise messages of one record carry: the first (which
/// also carries the header, and exists even for an empty payload) holds up to
/// [`FIRST_CHUNK_MAX`] bytes, every following one up to [`PLAINTEXT_MAX`].
pub(crate) fn chunk_ranges(payload_len: usize) -> impl Iterator<Item = Range<usize>> {
    let first = 0..payload_len.min(FIRST_CHUNK_MAX);
    let rest_start = first.end;
    std::iter::once(first).chain(
        (rest_start..payload_len)
            .step_by(PLAINTEXT_MAX)
            .map(move |start| start..(start + PLAINTEXT_MAX).min(payload_len)),
    )
}

/// What one decrypted Noise message amounted to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Step {
    /// An empty message, sent so that an idle link is not taken for a dead one.
    Keepalive,
    /// Part of a record whose remaining bytes are still to come.
    Partial,
    /// A whole payload.
    Record(Vec<u8>),
}

/// Why a decrypted stream of messages is not a valid sequence of records. Any of these closes
/// the link: the peer is a member (it holds the secret) but does not speak this protocol.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum RecordError {
    #[error("record of {length} bytes exceeds the limit of {limit} bytes")]
    TooLong { length: u64, limit: usize },
    #[error("message of {0} bytes is too short for a record header")]
    ShortHeader(usize),
    #[error("message of {chunk} bytes overruns the record, which has {remaining} bytes left")]
    Overrun { chunk: usize, remaining: usize },
    #[error("empty message in the middle of a record")]
    EmptyContinuation,
}

/// Reassembles payloads from decrypted Noise messages. Memory held is bounded by the limit:
/// a record's buffer grows only as authenticated bytes arrive, and a length above the limit is
/// refused before any allocation.
#[derive(Debug)]
pub(crate) struct RecordAssembler {
    limit: usize,
    /// The record being received and the payload length its header announced.
    partial: Option<(Vec<u8>, usize)>,
}

impl RecordAssembler {
    /// An assembler accepting payloads of at most `limit` bytes.
    pub(crate) fn new(limit: usize) -> RecordAssembler {
        RecordAssembler {
            limit,
            partial: None,
        }
    }

    /// Takes the plaintext of the next Noise message.
    pub(crate) fn push(&mut self, plaintext: &[u8]) -> Result<Step, RecordError> {
        match self.partial.take() {
            None => self.start(plaintext),
            Some((mut payload, length)) => {
                let remaining = length - payload.len();
                if plaintext.is_empty() {
                    return Err(RecordError::EmptyContinuation);
                }
                if plaintext.len() > remaining {
                    return Err(RecordError::Overrun {
                        chunk: plaintext.len(),
                        remaining,
                    });
                }
                // The peer has now sent a second authenticated message of this record, so
                // reserving the whole announced length (already checked against the limit) is
                // no longer a promise taken on trust.
                payload.reserve_exact(remaining);
                payload.extend_from_slice(plaintext);
                Ok(self.finish_or_wait(payload, length))
            }
        }
    }

    fn start(&mut self, plaintext: &[u8]) -> Result<Step, RecordError> {
        if plaintext.is_empty() {
            return Ok(Step::Keepalive);
        }
        let Some((header, first_chunk)) = plaintext.split_first_chunk::<RECORD_HEADER_LEN>() else {
            return Err(RecordError::ShortHeader(plaintext.len()));
        };
        let announced = u32::from_be_bytes(*header);
        let length = usize::try_from(announced)
            .ok()
            .filter(|length| *length <= self.limit)
            .ok_or(RecordError::TooLong {
                length: u64::from(announced),
                limit: self.limit,
            })?;
        if first_chunk.len() > length {
            return Err(RecordError::Overrun {
                chunk: first_chunk.len(),
                remaining: length,
            });
        }
        let mut payload = Vec::with_capacity(length.min(PLAINTEXT_MAX));
        payload.extend_from_slice(first_chunk);
        Ok(self.finish_or_wait(payload, length))
    }

    fn finish_or_wait(&mut self, payload: Vec<u8>, length: usize) -> Step {
        if payload.len() == length {
            Step::Record(payload)
        } else {
            self.partial = Some((payload, length));
            Step::Partial
        }
    }
}

/// The first plaintext of each side of a handshake: who is speaking, and whom it believes it is
/// speaking to. Both are Raft node ids.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Hello {
    pub(crate) from: u64,
    pub(crate) to: u64,
}

/// The encoded length of a [`Hello`].
pub(crate) const HELLO_LEN: usize = 16;

impl Hello {
    /// Both ids, big-endian, `from` first.
    pub(crate) fn encode(self) -> [u8; HELLO_LEN] {
        let mut bytes = [0u8; HELLO_LEN];
        bytes[..8].copy_from_slice(&self.from.to_be_bytes());
        bytes[8..].copy_from_slice(&self.to.to_be_bytes());
        bytes
    }

    /// The hello in `bytes`, which must be exactly [`HELLO_LEN`] long.
    pub(crate) fn decode(bytes: &[u8]) -> Option<Hello> {
        let bytes: &[u8; HELLO_LEN] = bytes.try_into().ok()?;
        let (from, to) = bytes.split_at(8);
        Some(Hello {
            from: u64::from_be_bytes(from.try_into().ok()?),
            to: u64::from_be_bytes(to.try_into().ok()?),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The plaintexts a sender produces for `payload`, as the writer builds them.
    fn plaintexts(payload: &[u8]) -> Vec<Vec<u8>> {
        let length = u32::try_from(payload.len()).unwrap();
        chunk_ranges(payload.len())
            .enumerate()
            .map(|(index, range)| {
                let mut plaintext = Vec::new();
                if index == 0 {
                    plaintext.extend_from_slice(&length.to_be_bytes());
                }
                plaintext.extend_from_slice(&payload[range]);
                plaintext
            })
            .collect()
    }

    #[test]
    #[allow(
        clippy::single_range_in_vec_init,
        reason = "each row lists the ranges of one payload, and short payloads have one"
    )]
    fn chunk_ranges_cover_the_payload_in_bounded_pieces() {
        let table: &[(usize, &[Range<usize>])] = &[
            (0, &[0..0]),
            (1, &[0..1]),
            (FIRST_CHUNK_MAX, &[0..FIRST_CHUNK_MAX]),
            (
                FIRST_CHUNK_MAX + 1,
                &[0..FIRST_CHUNK_MAX, FIRST_CHUNK_MAX..FIRST_CHUNK_MAX + 1],
            ),
            (
                FIRST_CHUNK_MAX + PLAINTEXT_MAX,
                &[
                    0..FIRST_CHUNK_MAX,
                    FIRST_CHUNK_MAX..FIRST_CHUNK_MAX + PLAINTEXT_MAX,
                ],
            ),
            (
                FIRST_CHUNK_MAX + PLAINTEXT_MAX + 7,
                &[
                    0..FIRST_CHUNK_MAX,
                    FIRST_CHUNK_MAX..FIRST_CHUNK_MAX + PLAINTEXT_MAX,
                    FIRST_CHUNK_MAX + PLAINTEXT_MAX..FIRST_CHUNK_MAX + PLAINTEXT_MAX + 7,
                ],
            ),
        ];
        for (length, expected) in table {
            let ranges: Vec<_> = chunk_ranges(*length).collect();
            assert_eq!(&ranges, expected, "payload of {length} bytes");
        }
    }

    #[test]
    fn every_plaintext_fits_one_noise_message() {
        for length in [0, 1, 65_515, 65_516, 200_000, 5 << 20] {
            let payload = vec![7u8; length];
            for plaintext in plaintexts(&payload) {
                assert!(plaintext.len() <= PLAINTEXT_MAX, "length {length}");
                assert!(plaintext.len() + TAG_LEN <= NOISE_MESSAGE_MAX);
            }
        }
    }

    #[test]
    fn records_round_trip_through_the_assembler() {
        let payloads: Vec<Vec<u8>> = [
            0usize,
            1,
            100,
            FIRST_CHUNK_MAX,
            FIRST_CHUNK_MAX + 1,
            300_001,
        ]
        .iter()
        .map(|length| (0..*length).map(|index| (index % 251) as u8).collect())
        .collect();
        let mut assembler = RecordAssembler::new(1 << 20);
        for payload in &payloads {
            let messages = plaintexts(payload);
            let (last, init) = messages.split_last().unwrap();
            for message in init {
                assert_eq!(assembler.push(message), Ok(Step::Partial));
            }
            assert_eq!(assembler.push(last), Ok(Step::Record(payload.clone())));
            // Keepalives between records are fine.
            assert_eq!(assembler.push(&[]), Ok(Step::Keepalive));
        }
    }

    #[test]
    fn bad_sequences_are_refused() {
        let header = |length: u32| length.to_be_bytes().to_vec();
        let mut with_data = header(3);
        with_data.extend_from_slice(b"abcd");
        let table: Vec<(&str, Vec<Vec<u8>>, RecordError)> = vec![
            (
                "length over the limit",
                vec![header(1001)],
                RecordError::TooLong {
                    length: 1001,
                    limit: 1000,
                },
            ),
            (
                "largest u32 length",
                vec![header(u32::MAX)],
                RecordError::TooLong {
                    length: u64::from(u32::MAX),
                    limit: 1000,
                },
            ),
            (
                "three-byte header",
                vec![vec![0, 0, 1]],
                RecordError::ShortHeader(3),
            ),
            (
                "one-byte header",
                vec![vec![9]],
                RecordError::ShortHeader(1),
            ),
            (
                "first chunk longer than the record",
                vec![with_data],
                RecordError::Overrun {
                    chunk: 4,
                    remaining: 3,
                },
            ),
            (
                "continuation longer than what is left",
                vec![header(10), vec![1; 5], vec![2; 6]],
                RecordError::Overrun {
                    chunk: 6,
                    remaining: 5,
                },
            ),
            (
                "keepalive inside a record",
                vec![header(10), vec![]],
                RecordError::EmptyContinuation,
            ),
        ];
        for (name, messages, expected) in table {
            let mut assembler = RecordAssembler::new(1000);
            let (last, init) = messages.split_last().unwrap();
            for message in init {
                assert!(assembler.push(message).is_ok(), "{name}: early error");
            }
            assert_eq!(assembler.push(last), Err(expected), "{name}");
        }
    }

    #[test]
    fn a_refused_length_allocates_nothing_and_a_record_grows_with_its_bytes() {
        let mut assembler = RecordAssembler::new(16 << 20);
        assert_eq!(
            assembler.push(&(16u32 << 20).to_be_bytes()),
            Ok(Step::Partial)
        );
        let (payload, length) = assembler.partial.as_ref().unwrap();
        assert_eq!(*length, 16 << 20);
        assert!(
            payload.capacity() <= PLAINTEXT_MAX,
            "a bare header reserved {} bytes",
            payload.capacity()
        );
    }

    #[test]
    fn hello_round_trips_and_refuses_other_lengths() {
        let hello = Hello {
            from: 1,
            to: u64::MAX,
        };
        assert_eq!(Hello::decode(&hello.encode()), Some(hello));
        assert_eq!(
            hello.encode(),
            [
                0, 0, 0, 0, 0, 0, 0, 1, 255, 255, 255, 255, 255, 255, 255, 255
            ]
        );
        assert_eq!(Hello::decode(&[0; 15]), None);
        assert_eq!(Hello::decode(&[0; 17]), None);
        assert_eq!(Hello::decode(&[]), None);
    }
}
